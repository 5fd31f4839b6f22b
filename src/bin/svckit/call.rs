//! `svckit call … ping`: Base/Ping by topic, server or fanout, one JSON
//! line per node.

use std::io::Write;

use serde_json::{json, Value};
use tonic::Status;

use svckit::pb::base::v1::base_client::BaseClient;
use svckit::pb::base::v1::{PingRequest, PingResponse};
use svckit::rpc::{Rpc, Target};
use svckit::{Error, Result};

fn reply_json(host: &str, result: &Result<PingResponse, Status>) -> Value {
    match result {
        Ok(r) => json!({
            "host": host,
            "ok": { "service": r.service, "host": r.host, "topic": r.topic, "arg": r.arg, "pid": r.pid },
        }),
        Err(s) => json!({
            "host": host,
            "error": { "code": format!("{:?}", s.code()), "message": s.message() },
        }),
    }
}

pub(super) async fn ping(rpc: Rpc, target: Target, fanout: bool, arg: String) -> Result<()> {
    let replies: Vec<(String, Result<PingResponse, Status>)> = if fanout {
        rpc.fanout(&target, |ch| {
            let arg = arg.clone();
            async move {
                BaseClient::new(ch)
                    .ping(PingRequest { arg })
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await?
        .into_iter()
        .map(|r| (r.host, r.result))
        .collect()
    } else {
        let result = BaseClient::new(rpc.channel(target))
            .ping(PingRequest { arg })
            .await
            .map(|r| r.into_inner());
        match result {
            Ok(r) => vec![(r.host.clone(), Ok(r))],
            // Not reached any node: that is the command's error, not a reply.
            Err(s) if s.code() == tonic::Code::Unavailable => return Err(Error::from(s)),
            Err(s) => vec![(String::new(), Err(s))],
        }
    };
    let mut out = std::io::stdout().lock();
    let mut failed = 0;
    for (host, result) in &replies {
        failed += usize::from(result.is_err());
        writeln!(out, "{}", reply_json(host, result))?;
    }
    out.flush()?;
    if failed > 0 {
        return Err(Error::from(Status::unknown(format!(
            "{failed} of {} nodes failed",
            replies.len()
        ))));
    }
    Ok(())
}
