//! The load of `scripts/bench-overload`: `Spin` calls of a fixed CPU cost,
//! each with a deadline, over one connection.
//!
//! - `capacity`: a closed loop of `concurrency` callers for `secs`, each
//!   call with the deadline; the line is `capacity_per_s=… refused=…
//!   expired=…` (capacity: the calls answered within it, per second).
//! - `open`: calls due at `rate` per second for `secs`, whatever the
//!   answers; each call's latency counts from when it was due. The line is
//!   `offered_per_s=… goodput_per_s=… ok=… refused=… expired=… failed=…
//!   p50_us=… p99_us=… p99_after_1s_us=…`, the percentiles over the calls
//!   that succeeded (the last over those due after the first second: the
//!   overload's onset excluded). With `critical_every` N > 0, every Nth call
//!   is `svckit-criticality: critical` and the others `sheddable`, and the
//!   line adds `ok_critical=… refused_critical=… ok_sheddable=…
//!   refused_sheddable=… critical_after_1s=…` (the share of critical calls
//!   due after the first second that succeeded).

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
    critical_every: usize,
) -> String {
    let calls = (rate * secs) as usize;
    let is_critical = |i: usize| critical_every > 0 && i % critical_every == critical_every - 1;
    let mut index = 0_usize;
    let tasks = paced(calls, rate, |due| {
        let criticality = (critical_every > 0).then_some(if is_critical(index) {
            "critical"
        } else {
            "sheddable"
        });
        index += 1;
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
    // The calls due after the first second: past the overload's onset.
    let settled = rate as usize;
    let mut steady = Vec::new();
    // (ok, refused) of the sheddable calls, then of the critical ones.
    let mut by_class = [(0_u64, 0_u64); 2];
    let (mut critical_late, mut critical_late_ok) = (0_u64, 0_u64);
    for (i, task) in tasks.into_iter().enumerate() {
        let class = usize::from(is_critical(i));
        let outcome = task.await;
        if class == 1 && i >= settled {
            critical_late += 1;
            critical_late_ok += u64::from(matches!(outcome, Ok(Outcome::Ok(_))));
        }
        match outcome {
            Ok(Outcome::Ok(latency)) => {
                latencies.push(latency);
                if i >= settled {
                    steady.push(latency);
                }
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
    steady.sort_unstable();
    let pct = |p: f64| percentile_us(&latencies, p);
    let mut line = format!(
        "offered_per_s={:.0} goodput_per_s={:.0} ok={} refused={refused} expired={expired} failed={failed} p50_us={} p99_us={} p99_after_1s_us={}",
        rate,
        latencies.len() as f64 / secs,
        latencies.len(),
        pct(0.50),
        pct(0.99),
        percentile_us(&steady, 0.99),
    );
    if critical_every > 0 {
        let [(ok_s, refused_s), (ok_c, refused_c)] = by_class;
        line.push_str(&format!(
            " ok_critical={ok_c} refused_critical={refused_c} ok_sheddable={ok_s} refused_sheddable={refused_s} critical_after_1s={:.4}",
            critical_late_ok as f64 / critical_late.max(1) as f64
        ));
    }
    line
}
