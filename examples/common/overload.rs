//! The load of `scripts/bench-overload`: `Spin` calls of a fixed CPU cost,
//! each with a deadline, over one connection.
//!
//! - `capacity`: a closed loop of `concurrency` callers for `secs`, each
//!   call with the deadline; the line is `capacity_per_s=… refused=…
//!   expired=…` (capacity: the calls answered within it, per second).
//! - `open`: calls due at `rate` per second for `secs`, whatever the
//!   answers; each call's latency counts from when it was due. The line is
//!   `offered_per_s=… goodput_per_s=… ok=… refused=… expired=… failed=…
//!   p50_us=… p99_us=…`, the percentiles over the calls that succeeded.
//!   With `mixed`, every other call is `svckit-criticality: sheddable` and
//!   the others `critical`, and the line adds `ok_critical=…
//!   refused_critical=… ok_sheddable=… refused_sheddable=…`.

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
    criticality: Option<&'static str>,
) -> Outcome {
    let mut request = tonic::Request::new(SpinRequest { micros });
    request.set_timeout(deadline);
    if let Some(criticality) = criticality {
        request.metadata_mut().insert(
            "svckit-criticality",
            tonic::metadata::MetadataValue::from_static(criticality),
        );
    }
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

/// Calls/s answered within `deadline` by a closed loop of `concurrency`
/// callers over `secs`, and the calls refused and expired.
pub async fn capacity(
    channel: Channel,
    micros: u64,
    concurrency: usize,
    secs: f64,
    deadline: Duration,
) -> String {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let callers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let client = WorkClient::new(channel.clone());
            tokio::spawn(async move {
                let (mut ok, mut refused, mut expired) = (0_u64, 0_u64, 0_u64);
                while Instant::now() < until {
                    let due = tokio::time::Instant::now();
                    match call(client.clone(), micros, deadline, due, None).await {
                        Outcome::Ok(_) => ok += 1,
                        Outcome::Refused => refused += 1,
                        Outcome::Expired => expired += 1,
                        Outcome::Failed => {}
                    }
                }
                (ok, refused, expired)
            })
        })
        .collect();
    let (mut ok, mut refused, mut expired) = (0, 0, 0);
    for caller in callers {
        let (o, r, e) = caller.await.unwrap_or_default();
        ok += o;
        refused += r;
        expired += e;
    }
    format!(
        "capacity_per_s={:.0} refused={refused} expired={expired}",
        ok as f64 / secs
    )
}

/// Calls due at `rate`/s for `secs`; see the module docs for the line.
pub async fn open(
    channel: Channel,
    micros: u64,
    rate: f64,
    secs: f64,
    deadline: Duration,
    mixed: bool,
) -> String {
    let calls = (rate * secs) as usize;
    let mut index = 0_usize;
    let tasks = paced(calls, rate, |due| {
        index += 1;
        let criticality = mixed.then_some(if index.is_multiple_of(2) {
            "critical"
        } else {
            "sheddable"
        });
        call(
            WorkClient::new(channel.clone()),
            micros,
            deadline,
            due,
            criticality,
        )
    })
    .await;
    let (mut latencies, mut refused, mut expired, mut failed) = (Vec::new(), 0, 0, 0);
    // (ok, refused) of the sheddable calls, then of the critical ones.
    let mut by_class = [(0_u64, 0_u64); 2];
    for (i, task) in tasks.into_iter().enumerate() {
        // The first call (index 1) was sheddable, the second critical.
        let class = i % 2;
        match task.await {
            Ok(Outcome::Ok(latency)) => {
                latencies.push(latency);
                by_class[class].0 += 1;
            }
            Ok(Outcome::Refused) => {
                refused += 1;
                by_class[class].1 += 1;
            }
            Ok(Outcome::Expired) => expired += 1,
            Ok(Outcome::Failed) | Err(_) => failed += 1,
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| percentile_us(&latencies, p);
    let mut line = format!(
        "offered_per_s={:.0} goodput_per_s={:.0} ok={} refused={refused} expired={expired} failed={failed} p50_us={} p99_us={}",
        rate,
        latencies.len() as f64 / secs,
        latencies.len(),
        pct(0.50),
        pct(0.99),
    );
    if mixed {
        let [(ok_s, refused_s), (ok_c, refused_c)] = by_class;
        line.push_str(&format!(
            " ok_critical={ok_c} refused_critical={refused_c} ok_sheddable={ok_s} refused_sheddable={refused_s}"
        ));
    }
    line
}
