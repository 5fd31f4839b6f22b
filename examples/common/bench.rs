//! The load loop shared by `echo_bench` and its raw-tonic baseline, so that
//! both sides of a comparison are measured by the same code.

use std::time::{Duration, Instant};

use tonic::client::GrpcService;

use super::echo::pb::echo_client::EchoClient;
use super::echo::pb::EchoRequest;

/// What one run measured.
pub struct Stats {
    pub calls: usize,
    pub concurrency: usize,
    pub secs: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub errors: usize,
}

impl Stats {
    /// The contract line: `calls=… conc=… secs=… calls_per_s=… p50_us=… p99_us=… errors=…`.
    pub fn line(&self) -> String {
        format!(
            "calls={} conc={} secs={:.3} calls_per_s={:.0} p50_us={} p99_us={} errors={}",
            self.calls,
            self.concurrency,
            self.secs,
            self.calls as f64 / self.secs.max(1e-9),
            self.p50_us,
            self.p99_us,
            self.errors
        )
    }
}

/// Runs `calls` Echo calls of `payload` bytes with `concurrency` callers,
/// after a short warm-up.
pub async fn run<T>(channel: T, calls: usize, concurrency: usize, payload: usize) -> Stats
where
    T: GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::ResponseBody: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
    T::Error: Into<tonic::codegen::StdError>,
{
    let concurrency = concurrency.max(1);
    let body = vec![0x5a_u8; payload];
    let mut warm = EchoClient::new(channel.clone());
    for _ in 0..(concurrency * 4).min(calls.max(1)) {
        let _ = warm
            .echo(EchoRequest {
                payload: body.clone(),
            })
            .await;
    }

    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let share = calls / concurrency + usize::from(i < calls % concurrency);
            let mut client = EchoClient::new(channel.clone());
            let body = body.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(share);
                let mut errors = 0;
                for _ in 0..share {
                    let t = Instant::now();
                    match client
                        .echo(EchoRequest {
                            payload: body.clone(),
                        })
                        .await
                    {
                        Ok(_) => latencies.push(t.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = Vec::with_capacity(calls);
    let mut errors = 0;
    for task in tasks {
        match task.await {
            Ok((l, e)) => {
                latencies.extend(l);
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0, |d| d.as_micros() as u64)
    };
    Stats {
        calls,
        concurrency,
        secs,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors,
    }
}
