//! Listing a topic (or every topic) at one revision, a page at a time.

use etcd_client::{GetOptions, Txn, TxnOp, TxnOpResponse};

use super::keys::{Kind, Snapshot};
use super::Inner;
use crate::error::{Error, Result};

/// Keys per read of a listing: about 400 KiB of service records.
const PAGE: i64 = 1000;

/// The end of the key range holding every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: every key from the prefix on.
    vec![0]
}

impl Inner {
    /// Records and liveness of one topic (or all) at one revision, read
    /// [`PAGE`] keys at a time: a client of a 10,000-node topic never holds
    /// the whole topic's bytes at once beside the records decoded from them.
    pub(super) async fn snapshot(&self, topic: Option<&str>) -> Result<Snapshot> {
        let ranges = [Kind::Record, Kind::Alive].map(|kind| {
            let start = self.layout.range(kind, topic);
            let end = prefix_end(&start);
            (start, end)
        });
        let page = |start: &str, end: &[u8], revision: i64| {
            let mut options = GetOptions::new().with_range(end).with_limit(PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            TxnOp::get(start, Some(options))
        };
        // The first pages of both ranges in one transaction: its revision
        // is the snapshot's, and every further page is read at it.
        let txn = Txn::new().and_then(ranges.each_ref().map(|(start, end)| page(start, end, 0)));
        let resp = self
            .call_with(
                || {
                    let (mut kv, txn) = (self.kv.clone(), txn.clone());
                    async move { kv.txn(txn).await }
                },
                false,
            )
            .await?;
        let mut snapshot = Snapshot {
            revision: resp.header().map_or(0, |h| h.revision()),
            term: resp.header().map_or(0, |h| h.raft_term()),
            ..Snapshot::default()
        };
        let firsts = resp.op_responses();
        if firsts.len() != ranges.len() {
            return Err(Error::registry_msg("unexpected etcd transaction response"));
        }
        for ((_, end), first) in ranges.iter().zip(firsts) {
            let TxnOpResponse::Get(mut got) = first else {
                return Err(Error::registry_msg("unexpected etcd transaction response"));
            };
            loop {
                for kv in got.kvs() {
                    snapshot.apply_put(&self.layout, kv);
                }
                let last = got.kvs().last().map(|kv| kv.key().to_vec());
                let (true, Some(mut after)) = (got.more(), last) else {
                    break;
                };
                // The smallest key after the last one read.
                after.push(0);
                let after = String::from_utf8_lossy(&after).into_owned();
                let options = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(PAGE)
                    .with_revision(snapshot.revision);
                got = self.get(&after, Some(options)).await?;
            }
        }
        Ok(snapshot)
    }
}
