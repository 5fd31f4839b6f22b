//! How each node is doing, for the dashboard's per-row columns: the
//! dashboard asks every `up` node for its running totals (`Base/Stats`,
//! over gRPC, with a timeout), and turns two readings into calls/s,
//! errors/s, the p99 latency of the calls in between and the calls in
//! flight, with a history of calls/s for a sparkline. The browser reads
//! the result from the dashboard (`/api/figures`); it never reaches the
//! nodes.
//!
//! Each node is asked every [`INTERVAL`], or less often in a fleet so
//! large that this would pass [`MAX_ASKS_PER_SEC`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use super::live::Live;
use crate::pb::base::v1::base_client::BaseClient;
use crate::pb::base::v1::{StatsRequest, StatsResponse};
use crate::rpc::{Rpc, Target};
use crate::servicegroup::Member;

/// How often a node is asked, in a fleet small enough.
pub(super) const INTERVAL: Duration = Duration::from_secs(5);
/// How long a node has to answer before it shows as not answering.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The most nodes asked per second, whatever the fleet's size.
const MAX_ASKS_PER_SEC: usize = 200;
/// Nodes asked at once.
const CONCURRENT: usize = 64;
/// Readings kept for the sparkline: five minutes at [`INTERVAL`].
const HISTORY: usize = 60;

/// One node's figures, as the page shows them.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct NodeFigures {
    /// Calls and requests per second since the previous reading.
    calls_per_sec: Option<f64>,
    errors_per_sec: Option<f64>,
    /// The bucket bound under which 99% of the calls between the two
    /// readings ended, in ms; none without calls.
    p99_ms: Option<f64>,
    in_flight: Option<u64>,
    /// calls/s of the last readings, oldest first.
    history: VecDeque<f64>,
    /// Why the node gave no figures at its last reading.
    error: Option<String>,
    /// The process that answered (one of a supervisor's workers).
    pid: Option<u32>,
}

/// The last reading of a node and what was made of it.
struct Node {
    figures: NodeFigures,
    last: Option<(Instant, StatsResponse)>,
}

/// The dashboard's figures of every node.
pub(super) struct Figures {
    nodes: Mutex<BTreeMap<(String, String), Node>>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Figures {
    fn drop(&mut self) {
        if let Some(task) = crate::sync::lock(&self.task).take() {
            task.abort();
        }
    }
}

impl Figures {
    /// Starts asking the up members `live` knows, through `rpc`.
    pub(super) fn start(live: Arc<Live>, rpc: Rpc) -> Arc<Figures> {
        let figures = Arc::new(Figures {
            nodes: Mutex::new(BTreeMap::new()),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(ask_all(Arc::downgrade(&figures), live, rpc));
        *crate::sync::lock(&figures.task) = Some(task.abort_handle());
        figures
    }

    /// Every node's figures, by `topic/host`.
    pub(super) fn snapshot(&self) -> HashMap<String, NodeFigures> {
        crate::sync::lock(&self.nodes)
            .iter()
            .map(|((topic, host), node)| (format!("{topic}/{host}"), node.figures.clone()))
            .collect()
    }

    /// Keeps the nodes that are up, forgets the others.
    fn keep(&self, up: &[Member]) {
        let wanted: std::collections::HashSet<(&str, &str)> = up
            .iter()
            .map(|m| {
                (
                    m.record.advert.topic.as_str(),
                    m.record.advert.host.as_str(),
                )
            })
            .collect();
        crate::sync::lock(&self.nodes)
            .retain(|(topic, host), _| wanted.contains(&(topic.as_str(), host.as_str())));
    }

    fn record(&self, member: &Member, answer: Result<StatsResponse, String>) {
        let now = Instant::now();
        let key = (
            member.record.advert.topic.clone(),
            member.record.advert.host.clone(),
        );
        let mut nodes = crate::sync::lock(&self.nodes);
        let node = nodes.entry(key).or_insert_with(|| Node {
            figures: NodeFigures::default(),
            last: None,
        });
        match answer {
            Err(error) => {
                let history = std::mem::take(&mut node.figures.history);
                node.figures = NodeFigures {
                    history,
                    error: Some(error),
                    ..NodeFigures::default()
                };
                node.last = None;
            }
            Ok(stats) => {
                let previous = node.last.take();
                node.figures.error = None;
                node.figures.in_flight = Some(stats.in_flight);
                node.figures.pid = Some(stats.pid);
                // Rates need two readings of the same process.
                let rates = previous
                    .filter(|(_, p)| p.pid == stats.pid && p.calls <= stats.calls)
                    .map(|(at, p)| rates(&p, &stats, now.duration_since(at)));
                if let Some((calls, errors, p99)) = rates {
                    node.figures.calls_per_sec = Some(calls);
                    node.figures.errors_per_sec = Some(errors);
                    node.figures.p99_ms = p99;
                    node.figures.history.push_back(calls);
                    while node.figures.history.len() > HISTORY {
                        node.figures.history.pop_front();
                    }
                }
                node.last = Some((now, stats));
            }
        }
    }
}

/// calls/s, errors/s and the p99 bound (ms) between two readings.
fn rates(before: &StatsResponse, after: &StatsResponse, took: Duration) -> (f64, f64, Option<f64>) {
    let secs = took.as_secs_f64().max(0.001);
    let calls = after.calls.saturating_sub(before.calls);
    let errors = after.errors.saturating_sub(before.errors);
    let mut p99 = None;
    if calls > 0 {
        let want = (calls as f64 * 0.99).ceil() as u64;
        let mut seen = 0;
        for (i, count) in after.bucket_counts.iter().enumerate() {
            seen += count.saturating_sub(before.bucket_counts.get(i).copied().unwrap_or(0));
            if seen >= want {
                // Past the last bound: the last bound is what can be said.
                let bound = after
                    .bucket_bounds
                    .get(i)
                    .or(after.bucket_bounds.last())
                    .copied()
                    .unwrap_or(0.0);
                p99 = Some(bound * 1000.0);
                break;
            }
        }
    }
    (calls as f64 / secs, errors as f64 / secs, p99)
}

/// Asks every up member, round after round, until the dashboard goes.
async fn ask_all(figures: Weak<Figures>, live: Arc<Live>, rpc: Rpc) {
    loop {
        let started = Instant::now();
        let up: Vec<Member> = live.members().0.into_iter().filter(|m| m.up).collect();
        {
            let Some(figures) = figures.upgrade() else {
                return;
            };
            figures.keep(&up);
        }
        let round = INTERVAL.max(Duration::from_secs_f64(
            up.len() as f64 / MAX_ASKS_PER_SEC as f64,
        ));
        let asks = futures::stream::iter(up.into_iter().map(|member| {
            let rpc = rpc.clone();
            async move {
                let answer = ask(&rpc, &member).await;
                (member, answer)
            }
        }))
        .buffer_unordered(CONCURRENT);
        tokio::pin!(asks);
        while let Some((member, answer)) = asks.next().await {
            let Some(figures) = figures.upgrade() else {
                return;
            };
            figures.record(&member, answer);
        }
        tokio::time::sleep(round.saturating_sub(started.elapsed())).await;
    }
}

/// One node's totals, or why there are none, in words.
async fn ask(rpc: &Rpc, member: &Member) -> Result<StatsResponse, String> {
    let mut target = Target::topic(member.record.advert.topic.clone());
    target.server = Some(member.record.advert.host.clone());
    // A disabled node still serves what it has.
    target.include_disabled = true;
    let mut request = tonic::Request::new(StatsRequest {});
    request.set_timeout(TIMEOUT);
    let mut client = BaseClient::new(rpc.channel(target));
    let silent = || {
        format!(
            "not answering: no reply within {}",
            humantime::format_duration(TIMEOUT)
        )
    };
    match tokio::time::timeout(TIMEOUT, client.stats(request)).await {
        Ok(Ok(answer)) => Ok(answer.into_inner()),
        Ok(Err(status)) => Err(match status.code() {
            tonic::Code::Unimplemented => {
                "no figures: the node's version does not serve Base/Stats".into()
            }
            tonic::Code::DeadlineExceeded => silent(),
            _ => format!("not answering: {}", status.message()),
        }),
        Err(_) => Err(silent()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_readings_give_rates_and_the_p99_bound() {
        let bounds = crate::telemetry::metrics::latency_bounds();
        let mut before = StatsResponse {
            bucket_bounds: bounds.clone(),
            bucket_counts: vec![0; bounds.len() + 1],
            ..Default::default()
        };
        before.calls = 100;
        let mut after = before.clone();
        after.calls = 300;
        after.errors = 10;
        // 198 calls under 0.8 ms, 2 under 51.2 ms.
        after.bucket_counts[3] = 198;
        after.bucket_counts[9] = 2;
        let (calls, errors, p99) = rates(&before, &after, Duration::from_secs(2));
        assert_eq!((calls, errors), (100.0, 5.0));
        assert!((p99.unwrap() - 0.8).abs() < 1e-9, "{p99:?}");
        after.bucket_counts[9] = 20;
        after.calls = 318;
        let (_, _, p99) = rates(&before, &after, Duration::from_secs(2));
        assert!((p99.unwrap() - 51.2).abs() < 1e-9, "{p99:?}");
    }
}
