//! `svckit report`: one node's state report (Base/Report), as JSON.

use std::io::Write;

use svckit::pb::base::v1::base_client::BaseClient;
use svckit::pb::base::v1::ReportRequest;
use svckit::rpc::{Rpc, Target};
use svckit::{Error, Result};

pub(super) async fn report(rpc: Rpc, topic: String, host: String) -> Result<()> {
    let target = Target::topic(topic).server(host);
    let reply = BaseClient::new(rpc.channel(target))
        .report(ReportRequest {})
        .await?
        .into_inner();
    // Re-encoded so the output is JSON whatever the node's formatting.
    let value: serde_json::Value = serde_json::from_str(&reply.json).map_err(|e| {
        Error::from(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the node's report is not JSON: {e}"),
        ))
    })?;
    let text = serde_json::to_string_pretty(&value).map_err(std::io::Error::from)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}
