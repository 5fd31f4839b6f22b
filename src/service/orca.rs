//! ORCA load reports (gRFC A51), which every node sends two ways:
//! - out of band, `xds.service.orca.v3.OpenRcaService`: a client's
//!   weighted round robin (gRFC A58, `balance = "weighted_round_robin"` in
//!   `svckit xds`) opens one stream per connection and weighs the node by
//!   the calls it answers per unit of CPU;
//! - per call, with `rpc_load_report_trailer`, in the
//!   `endpoint-load-metrics-bin` trailer of every gRPC answer
//!   ([`CallReports`], added by the layer that edits a call's status,
//!   [`super::limits::StatusLayer`]), which WRR reads when it is not asked
//!   to open streams, and which any client may read: the node's load over
//!   the last
//!   [`CALL_REPORT_REFRESH`] or so, the same report for every call in it
//!   (CPU, application utilization, calls and errors per second: what WRR
//!   reads, no more). Off by default: it costs about 5% of the calls per
//!   second of an empty call at 64 in flight.
//!
//! Each report covers the time since the last one (the stream's, or the
//! node's last per-call one):
//! - `cpu_utilization`: the process's CPU time over that time, as a share
//!   of the CPUs it may run on (a worker of several reports its own share
//!   of the node's CPUs, with its own calls, so their ratio holds);
//! - `rps_fractional` and `eps`: the API's calls answered and failed per
//!   second (the kit's own endpoints left out, as in `Base/Stats`);
//! - `utilization["in_flight"]`: calls in flight over the admission limit,
//!   and `named_metrics`: `in_flight`, `limit` and `limit_headroom` (the
//!   calls the limit still admits);
//! - `application_utilization`: the higher of the CPU's and the limit's,
//!   what the node runs out of first. WRR prefers it to the CPU's (and
//!   grpc-js reads nothing else), so a node that sheds, its CPU idle,
//!   weighs little too.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use http::HeaderValue;
use prost::Message;
use tonic::{Request, Response, Status};

use super::info::NodeInfo;
use crate::pb::xds::data::orca::v3::OrcaLoadReport;
use crate::pb::xds::service::orca::v3::open_rca_service_server::OpenRcaService;
use crate::pb::xds::service::orca::v3::OrcaLoadReportRequest;
use crate::sync::lock;
use crate::telemetry::metrics::LoadFigures;

/// Shortest interval between two reports on one stream.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The interval when the client names none.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

pub(super) struct OrcaApi {
    pub(super) node: Arc<NodeInfo>,
}

/// What a report is computed from: a reading of the process's CPU time
/// and the node's counts.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    cpu: Duration,
    calls: u64,
    errors: u64,
}

impl Sample {
    fn take(figures: &LoadFigures) -> Sample {
        let (calls, errors) = figures.calls_and_errors();
        Sample {
            at: Instant::now(),
            cpu: process_cpu(),
            calls,
            errors,
        }
    }
}

/// CPU time the process has used, user and system.
fn process_cpu() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::sys::time::TimeValLike;
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(usage) => {
            let micros =
                usage.user_time().num_microseconds() + usage.system_time().num_microseconds();
            Duration::from_micros(u64::try_from(micros).unwrap_or(0))
        }
        Err(_) => Duration::ZERO,
    }
}

/// The node's load between `then` and `now`.
fn report(figures: &LoadFigures, then: Sample, now: Sample) -> OrcaLoadReport {
    let seconds = now.at.duration_since(then.at).as_secs_f64().max(1e-3);
    let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let cpu = now.cpu.saturating_sub(then.cpu).as_secs_f64() / seconds / cpus;
    let (in_flight, limit) = figures.in_flight_and_limit();
    let in_flight = in_flight.max(0) as f64;
    let limit = limit.max(1) as f64;
    let in_flight_share = (in_flight / limit).min(1.0);
    OrcaLoadReport {
        cpu_utilization: cpu,
        application_utilization: cpu.max(in_flight_share),
        rps_fractional: now.calls.saturating_sub(then.calls) as f64 / seconds,
        eps: now.errors.saturating_sub(then.errors) as f64 / seconds,
        utilization: [("in_flight".to_string(), in_flight_share)].into(),
        named_metrics: [
            ("in_flight".to_string(), in_flight),
            ("limit".to_string(), limit),
            ("limit_headroom".to_string(), (limit - in_flight).max(0.0)),
        ]
        .into(),
        ..Default::default()
    }
}

type Reports = Pin<Box<dyn Stream<Item = Result<OrcaLoadReport, Status>> + Send>>;

#[tonic::async_trait]
impl OpenRcaService for OrcaApi {
    type StreamCoreMetricsStream = Reports;

    async fn stream_core_metrics(
        &self,
        request: Request<OrcaLoadReportRequest>,
    ) -> Result<Response<Reports>, Status> {
        let interval = request
            .into_inner()
            .report_interval
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_INTERVAL)
            .max(MIN_INTERVAL);
        let node = self.node.clone();
        let figures = node.metrics().load_figures();
        let first = Sample::take(&figures);
        // The stream ends when the node stops, so that it does not hold
        // the connection's drain.
        let state = (node, figures, first, true);
        let reports =
            futures::stream::unfold(state, move |(node, figures, then, first)| async move {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = node.stopping() => return None,
                }
                let now = Sample::take(&figures);
                let report = report(&figures, then, now);
                if first {
                    tracing::debug!(
                        unix_ms = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis()),
                        rps = report.rps_fractional,
                        cpu = report.cpu_utilization,
                        "first load report of a stream"
                    );
                }
                Some((Ok(report), (node, figures, now, false)))
            });
        Ok(Response::new(Box::pin(reports)))
    }
}

/// The trailer of a per-call load report (gRFC A51), binary.
pub(crate) const CALL_REPORT_HEADER: &str = "endpoint-load-metrics-bin";
/// How long one per-call report serves before the next is computed.
pub(crate) const CALL_REPORT_REFRESH: Duration = Duration::from_millis(250);

/// The node's per-call report, computed at most once per
/// [`CALL_REPORT_REFRESH`] and shared by every call in between.
pub(crate) struct CallReports {
    figures: LoadFigures,
    last: Mutex<(Sample, Option<HeaderValue>)>,
}

impl CallReports {
    /// Reports from `figures`.
    pub(crate) fn new(figures: LoadFigures) -> Arc<CallReports> {
        let first = Sample::take(&figures);
        Arc::new(CallReports {
            figures,
            last: Mutex::new((first, None)),
        })
    }

    /// Adds the current report to a call's status headers or trailers.
    pub(crate) fn add_to(&self, headers: &mut http::HeaderMap) {
        if let Some(value) = self.current() {
            headers.insert(CALL_REPORT_HEADER, value);
        }
    }

    /// The report to send now, encoded as the trailer's value.
    fn current(&self) -> Option<HeaderValue> {
        let mut last = lock(&self.last);
        let (then, value) = &mut *last;
        if value.is_none() || then.at.elapsed() >= CALL_REPORT_REFRESH {
            let now = Sample::take(&self.figures);
            let full = report(&self.figures, *then, now);
            // What weighted round robin reads, and no more: the named
            // figures go out of band only, to keep every answer small.
            let report = OrcaLoadReport {
                cpu_utilization: full.cpu_utilization,
                application_utilization: full.application_utilization,
                rps_fractional: full.rps_fractional,
                eps: full.eps,
                ..Default::default()
            };
            *value = encode(&report);
            *then = now;
        }
        value.clone()
    }
}

/// A report as the value of a `-bin` header: base64, as gRPC sends binary
/// metadata over HTTP/2.
fn encode(report: &OrcaLoadReport) -> Option<HeaderValue> {
    let value = tonic::metadata::BinaryMetadataValue::from_bytes(&report.encode_to_vec());
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert_bin(CALL_REPORT_HEADER, value);
    metadata.into_headers().remove(CALL_REPORT_HEADER)
}
