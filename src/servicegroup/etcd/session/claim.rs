//! Claiming the liveness key: with our own lease, over our own earlier
//! lease, or over a holder found dead; a live holder is a duplicate.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};

use super::Session;
use crate::error::{Error, Result};
use crate::servicegroup::etcd::keys::AliveValue;
use crate::servicegroup::etcd::{encode, etcd_code, CAS_ATTEMPTS};
use crate::servicegroup::probe::{probe, Holder};
use crate::servicegroup::{rfc3339, ServiceRecord};

impl Session {
    /// Claims the liveness key with the process's lease; returns the
    /// revision of the claim. `previous` is our own earlier lease, which may
    /// still hold the key (after an etcd restart, say).
    pub(super) async fn register(&self, previous: Option<i64>) -> Result<i64> {
        let mut lease = self.shared.current().await?;
        let mut again = true;
        loop {
            match self.claim(lease, previous).await {
                Ok(revision) => {
                    self.lease.store(lease, Ordering::SeqCst);
                    return Ok(revision);
                }
                // etcd refuses a key for a lease it no longer knows: one
                // that expired before the claim (a start slowed by a
                // loaded etcd), or was revoked by hand. Once more, on the
                // lease the keeper grants instead.
                Err(e) if etcd_code(&e) == Some(tonic::Code::NotFound) => {
                    self.shared.gone(lease);
                    if !again {
                        // Two leases gone before they could be used: etcd
                        // answers slower than the TTL (a cluster in an
                        // election storm, a fleet's cold start on too
                        // little CPU). That is a registry unavailable, which
                        // callers retry, as a node's supervisor does; not a
                        // refusal.
                        return Err(Error::unavailable(
                            format!(
                                "etcd: two leases expired before {} could claim its key with them (etcd answers slower than the lease TTL)",
                                self.alive_key
                            ),
                            e,
                        ));
                    }
                    again = false;
                    lease = self.shared.replaced(lease).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn claim(&self, lease: i64, previous: Option<i64>) -> Result<i64> {
        let alive = encode(&AliveValue {
            pid: std::process::id(),
            lease: format!("{lease:x}"),
            since: rfc3339(SystemTime::now()),
            token: self.token,
            grpc: self.reg.advert.endpoints.grpc.clone(),
        })?;
        // The liveness key's mod revision when it is ours to take back.
        let mut ours: Option<i64> = None;
        let reg = self.registration();
        for _ in 0..CAS_ATTEMPTS {
            let found = self.inner.get(&self.record_key, None).await?;
            let now = SystemTime::now();
            let (record, record_rev) = match found.kvs().first() {
                Some(kv) => match serde_json::from_slice::<ServiceRecord>(kv.value()) {
                    Ok(mut record) => {
                        reg.refresh_record(&mut record, now);
                        (record, kv.mod_revision())
                    }
                    Err(_) => (reg.to_record(now), kv.mod_revision()),
                },
                None => (reg.to_record(now), 0),
            };
            let alive_guard = match ours {
                None => Compare::create_revision(self.alive_key.as_str(), CompareOp::Equal, 0),
                Some(rev) => Compare::mod_revision(self.alive_key.as_str(), CompareOp::Equal, rev),
            };
            let txn = Txn::new()
                .when([
                    alive_guard,
                    Compare::mod_revision(self.record_key.as_str(), CompareOp::Equal, record_rev),
                ])
                .and_then([
                    TxnOp::put(
                        self.alive_key.as_str(),
                        alive.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    ),
                    TxnOp::put(self.record_key.as_str(), encode(&record)?, None),
                ])
                .or_else([TxnOp::get(self.alive_key.as_str(), None)]);
            let resp = self.inner.txn(txn).await?;
            if resp.succeeded() {
                return Ok(resp.header().map_or(0, |h| h.revision()));
            }
            let holder = match resp.op_responses().first() {
                Some(TxnOpResponse::Get(get)) => get.kvs().first().cloned(),
                _ => None,
            };
            // Absent: only the record raced (an operator's change); retry.
            let Some(holder) = holder else {
                ours = None;
                continue;
            };
            let value = serde_json::from_slice::<AliveValue>(holder.value()).ok();
            let mine = value.as_ref().is_some_and(|v| v.token == self.token)
                || previous.is_some_and(|p| p == holder.lease());
            if !mine {
                let recorded = found
                    .kvs()
                    .first()
                    .and_then(|kv| serde_json::from_slice::<ServiceRecord>(kv.value()).ok())
                    .and_then(|r| r.advert.endpoints.grpc);
                self.take_over(&holder, value, recorded).await?;
                ours = None;
                continue;
            }
            ours = Some(holder.mod_revision());
        }
        Err(Error::registry_msg(format!(
            "{} kept changing concurrently; registration not applied",
            self.record_key
        )))
    }

    /// Deals with another lease holding our liveness key: asks the holder
    /// (its endpoint from its liveness value, else from the record) whether
    /// it serves. A holder that does not is dead: its key is deleted, guarded
    /// by its lease so that a holder that came back meanwhile keeps it, and
    /// the caller claims the key again. A serving holder is a duplicate.
    async fn take_over(
        &self,
        holder: &etcd_client::KeyValue,
        value: Option<AliveValue>,
        recorded: Option<String>,
    ) -> Result<()> {
        let member = format!("{}/{}", self.reg.advert.topic, self.reg.advert.host);
        let url = value.as_ref().and_then(|v| v.grpc.clone()).or(recorded);
        let answer = probe(url.as_deref(), self.reg.advert.endpoints.grpc.as_deref()).await;
        if answer != Holder::Dead {
            let who = value.map_or_else(
                || format!("lease {:x}", holder.lease()),
                |v| format!("pid {}, lease {}, since {}", v.pid, v.lease, v.since),
            );
            let at = url.map_or_else(
                || "no endpoint advertised".into(),
                |u| format!("serving at {u}"),
            );
            return Err(Error::duplicate(&member, &format!("{at}; {who}")));
        }
        tracing::warn!(
            %member,
            holder = url.as_deref().unwrap_or("-"),
            lease = %format!("{:x}", holder.lease()),
            "the node holding this identity does not answer; taking it over"
        );
        let key = self.alive_key.as_str();
        self.inner
            .txn(
                Txn::new()
                    .when([Compare::lease(key, CompareOp::Equal, holder.lease())])
                    .and_then([TxnOp::delete(key, None)]),
            )
            .await
            .map(drop)
    }
}
