//! `svckit.base.v1.Base`, served by every node (nova's `BaseRPCAPI`).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::info::NodeInfo;
use crate::pb::base::v1::base_server::Base;
use crate::pb::base::v1::{
    PingRequest, PingResponse, ReportRequest, ReportResponse, StatsRequest, StatsResponse,
};

pub(super) struct BaseApi {
    pub(super) node: Arc<NodeInfo>,
}

#[tonic::async_trait]
impl Base for BaseApi {
    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {
            service: self.node.binary.clone(),
            host: self.node.host.clone(),
            topic: self.node.topic.clone(),
            pid: std::process::id(),
            arg: request.into_inner().arg,
        }))
    }

    async fn report(
        &self,
        _request: Request<ReportRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        let json = serde_json::to_string_pretty(&self.node.report().await)
            .map_err(|e| Status::internal(format!("report: {e}")))?;
        Ok(Response::new(ReportResponse { json }))
    }

    async fn stats(
        &self,
        _request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        let totals = self.node.metrics().totals();
        Ok(Response::new(StatsResponse {
            calls: totals.calls,
            errors: totals.errors,
            in_flight: u64::try_from(totals.in_flight).unwrap_or(0),
            bucket_bounds: crate::telemetry::metrics::latency_bounds(),
            bucket_counts: totals.buckets,
            pid: std::process::id(),
            uptime_secs: self.node.uptime().as_secs_f64(),
        }))
    }
}
