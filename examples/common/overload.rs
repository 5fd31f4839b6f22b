//! The load of `scripts/bench-overload`: `Spin` calls of a fixed CPU cost,
//! each with a deadline, over one connection.
//!
//! - `capacity`: a closed loop of `concurrency` callers for `secs`; the
//!   line is `capacity_per_s=…`.
//! - `open`: calls due at `rate` per second for `secs`, whatever the
//!   answers; each call's latency counts from when it was due. The line is
//!   `offered_per_s=… goodput_per_s=… ok=… refused=… expired=… failed=…
//!   p50_us=… p99_us=…`, the percentiles over the calls that succeeded.

use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::Code;

use super::bench::{paced, percentile_us};
use super::echo::pb::work_client::WorkClient;
use super::echo::pb::SpinRequest;

/// How one call ended.
enum Outcome {
    Ok(Duration),
    Refused,
    Expired,
    Failed,
}

async fn call(
    mut client: WorkClient<Channel>,
    micros: u64,
    deadline: Duration,
    due: tokio::time::Instant,
) -> Outcome {
    let mut request = tonic::Request::new(SpinRequest { micros });
    request.set_timeout(deadline);
    match tokio::time::timeout_at(due + deadline, client.spin(request)).await {
        Err(_) => Outcome::Expired,
        Ok(Ok(_)) => Outcome::Ok(due.elapsed()),
        Ok(Err(status)) => match status.code() {
            Code::Unavailable | Code::ResourceExhausted => Outcome::Refused,
            Code::DeadlineExceeded | Code::Cancelled => Outcome::Expired,
            _ => {
                // The first few, so that a failing run says why.
                static SHOWN: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(0);
                if SHOWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 3 {
                    eprintln!("call failed: {status}");
                }
                Outcome::Failed
            }
        },
    }
}

/// Calls/s of a closed loop of `concurrency` callers over `secs`.
pub async fn capacity(channel: Channel, micros: u64, concurrency: usize, secs: f64) -> String {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let callers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let client = WorkClient::new(channel.clone());
            tokio::spawn(async move {
                let mut ok = 0_u64;
                while Instant::now() < until {
                    let due = tokio::time::Instant::now();
                    if let Outcome::Ok(_) =
                        call(client.clone(), micros, Duration::from_secs(10), due).await
                    {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for caller in callers {
        ok += caller.await.unwrap_or(0);
    }
    format!("capacity_per_s={:.0}", ok as f64 / secs)
}

/// Calls due at `rate`/s for `secs`; see the module docs for the line.
pub async fn open(
    channel: Channel,
    micros: u64,
    rate: f64,
    secs: f64,
    deadline: Duration,
) -> String {
    let calls = (rate * secs) as usize;
    let tasks = paced(calls, rate, |due| {
        call(WorkClient::new(channel.clone()), micros, deadline, due)
    })
    .await;
    let (mut latencies, mut refused, mut expired, mut failed) = (Vec::new(), 0, 0, 0);
    for task in tasks {
        match task.await {
            Ok(Outcome::Ok(latency)) => latencies.push(latency),
            Ok(Outcome::Refused) => refused += 1,
            Ok(Outcome::Expired) => expired += 1,
            Ok(Outcome::Failed) | Err(_) => failed += 1,
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| percentile_us(&latencies, p);
    format!(
        "offered_per_s={:.0} goodput_per_s={:.0} ok={} refused={refused} expired={expired} failed={failed} p50_us={} p99_us={}",
        rate,
        latencies.len() as f64 / secs,
        latencies.len(),
        pct(0.50),
        pct(0.99),
    )
}
