//! The load loop shared by `echo_bench` and its raw-tonic baselines, so that
//! both sides of a comparison are measured by the same code.
//!
//! Closed loop (the default): `concurrency` callers, each sending its next
//! call when the last one is answered. Open loop (`rate`): calls are due at
//! fixed times whatever the answers, and each call's latency counts from
//! when it was due, so a stalled server shows in the tail instead of
//! slowing the load down (no coordinated omission).

use std::time::{Duration, Instant};

use tonic::client::GrpcService;

use super::echo::pb::echo_client::EchoClient;
use super::echo::pb::EchoRequest;

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub calls: usize,
    /// Callers at once (closed loop).
    pub concurrency: usize,
    pub payload: usize,
    /// Calls per second (open loop); `None` for a closed loop.
    pub rate: Option<f64>,
}

/// What one run measured.
pub struct Stats {
    pub calls: usize,
    pub concurrency: usize,
    pub secs: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub errors: usize,
}

impl Stats {
    /// The contract line: `calls=… conc=… secs=… calls_per_s=… p50_us=…
    /// p99_us=… p999_us=… max_us=… errors=…`. `calls_per_s` counts the
    /// calls answered: a call refused at once is not throughput.
    pub fn line(&self) -> String {
        format!(
            "calls={} conc={} secs={:.3} calls_per_s={:.0} p50_us={} p99_us={} p999_us={} max_us={} errors={}",
            self.calls,
            self.concurrency,
            self.secs,
            self.calls.saturating_sub(self.errors) as f64 / self.secs.max(1e-9),
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.errors
        )
    }
}

/// Runs the load of Echo calls, after a short warm-up.
pub async fn run<T>(channel: T, load: Load) -> Stats
where
    T: GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::ResponseBody: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
    T::Error: Into<tonic::codegen::StdError>,
{
    let concurrency = load.concurrency.max(1);
    let body = vec![0x5a_u8; load.payload];
    let mut warm = EchoClient::new(channel.clone());
    for _ in 0..(concurrency * 4).min(load.calls.max(1)) {
        let _ = warm
            .echo(EchoRequest {
                payload: body.clone(),
            })
            .await;
    }

    let started = Instant::now();
    let (mut latencies, errors) = match load.rate {
        None => closed_loop(channel, load.calls, concurrency, body).await,
        Some(rate) => open_loop(channel, load.calls, rate, body).await,
    };
    let secs = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| percentile_us(&latencies, p);
    Stats {
        calls: load.calls,
        concurrency,
        secs,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        max_us: latencies.last().map_or(0, |d| d.as_micros() as u64),
        errors,
    }
}

async fn closed_loop<T>(
    channel: T,
    calls: usize,
    concurrency: usize,
    body: Vec<u8>,
) -> (Vec<Duration>, usize)
where
    T: GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::ResponseBody: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
    T::Error: Into<tonic::codegen::StdError>,
{
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
    let mut latencies = Vec::with_capacity(calls);
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
    (latencies, errors)
}

async fn open_loop<T>(channel: T, calls: usize, rate: f64, body: Vec<u8>) -> (Vec<Duration>, usize)
where
    T: GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::ResponseBody: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
    T::Error: Into<tonic::codegen::StdError>,
{
    let tasks = paced(calls, rate, |due| {
        let mut client = EchoClient::new(channel.clone());
        let payload = body.clone();
        async move {
            let result = client.echo(EchoRequest { payload }).await;
            result.ok().map(|_| due.elapsed())
        }
    })
    .await;
    let mut latencies = Vec::with_capacity(calls);
    let mut errors = 0;
    for task in tasks {
        match task.await {
            Ok(Some(latency)) => latencies.push(latency),
            _ => errors += 1,
        }
    }
    (latencies, errors)
}

/// Starts `calls` calls due at `rate` per second, each as it falls due,
/// whatever the answers (an open loop); `call(due)` makes one. Returns the
/// running calls in order.
pub async fn paced<F, Fut>(
    calls: usize,
    rate: f64,
    mut call: F,
) -> Vec<tokio::task::JoinHandle<Fut::Output>>
where
    F: FnMut(tokio::time::Instant) -> Fut,
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(calls);
    for i in 0..calls {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        tasks.push(tokio::spawn(call(due)));
    }
    tasks
}

/// The `p` quantile of sorted latencies, in µs; 0 when there are none.
pub fn percentile_us(sorted: &[Duration], p: f64) -> u64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .map_or(0, |d| d.as_micros() as u64)
}
