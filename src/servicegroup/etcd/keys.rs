//! The etcd key layout and values (docs/membership.md documents them for operators):
//!
//! ```text
//! {prefix}/services/{topic}/{host}   ServiceRecord JSON, no lease
//! {prefix}/alive/{topic}/{host}      {"pid","lease","since","token","grpc"}, bound to the node's lease
//! ```
//!
//! and the picture of members a range over both prefixes gives.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use etcd_client::KeyValue;
use serde::{Deserialize, Serialize};

use crate::servicegroup::diff::Key;
use crate::servicegroup::{Member, ServiceRecord};

/// Which half of a member a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Record,
    Alive,
}

/// Key names under one deployment's prefix.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    prefix: String,
}

impl Layout {
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// Everything of this deployment (the trailing `/` keeps `/svckit2` out).
    pub(super) fn root(&self) -> String {
        format!("{}/", self.prefix)
    }

    fn dir(&self, kind: Kind) -> &'static str {
        match kind {
            Kind::Record => "services",
            Kind::Alive => "alive",
        }
    }

    /// The range prefix of one kind, for one topic or all.
    pub(super) fn range(&self, kind: Kind, topic: Option<&str>) -> String {
        match topic {
            Some(t) => format!("{}/{}/{t}/", self.prefix, self.dir(kind)),
            None => format!("{}/{}/", self.prefix, self.dir(kind)),
        }
    }

    pub(super) fn key(&self, kind: Kind, topic: &str, host: &str) -> String {
        format!("{}/{}/{topic}/{host}", self.prefix, self.dir(kind))
    }

    /// The kind and identity a key names, if it is one of ours.
    pub(super) fn parse(&self, key: &[u8]) -> Option<(Kind, Key)> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let (dir, rest) = rest.split_once('/')?;
        let kind = match dir {
            "services" => Kind::Record,
            "alive" => Kind::Alive,
            _ => return None,
        };
        let (topic, host) = rest.split_once('/')?;
        if topic.is_empty() || host.is_empty() || host.contains('/') {
            return None;
        }
        Some((kind, (topic.to_string(), host.to_string())))
    }
}

/// The value of a liveness key: who holds the (topic, host).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct AliveValue {
    pub pid: u32,
    /// The lease the key is bound to, in hex as etcdctl prints it.
    pub lease: String,
    /// RFC 3339 time of this registration.
    pub since: String,
    /// Identifies the membership across re-registrations, so that a node
    /// may take back a liveness key its own earlier lease still holds.
    pub token: u64,
    /// The holder's gRPC endpoint: where a node joining with the same
    /// identity asks whether the holder is still alive.
    #[serde(default)]
    pub grpc: Option<String>,
}

/// When a key's value was written, by its writer's clock: a record's
/// `updated_at`, a liveness key's `since`.
pub(super) fn written_at(layout: &Layout, kv: &KeyValue) -> Option<std::time::SystemTime> {
    #[derive(Deserialize)]
    struct Stamp<'a> {
        #[serde(borrow, default)]
        updated_at: Option<&'a str>,
        #[serde(borrow, default)]
        since: Option<&'a str>,
    }
    let (kind, _) = layout.parse(kv.key())?;
    let stamp: Stamp<'_> = serde_json::from_slice(kv.value()).ok()?;
    let text = match kind {
        Kind::Record => stamp.updated_at,
        Kind::Alive => stamp.since,
    }?;
    humantime::parse_rfc3339_weak(text).ok()
}

/// Records and liveness at one revision.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    pub revision: i64,
    /// The raft term etcd answered in: a term going backwards means a
    /// cluster rebuilt from nothing.
    pub term: u64,
    pub records: BTreeMap<Key, Arc<ServiceRecord>>,
    pub alive: BTreeSet<Key>,
}

impl Snapshot {
    pub(super) fn from_ranges(
        layout: &Layout,
        revision: i64,
        records: &[KeyValue],
        alive: &[KeyValue],
    ) -> Self {
        let mut snapshot = Snapshot {
            revision,
            ..Default::default()
        };
        for kv in records {
            snapshot.apply_put(layout, kv);
        }
        for kv in alive {
            snapshot.apply_put(layout, kv);
        }
        snapshot
    }

    /// Applies a put; returns the member it concerns.
    pub(super) fn apply_put(&mut self, layout: &Layout, kv: &KeyValue) -> Option<Key> {
        let (kind, key) = layout.parse(kv.key())?;
        match kind {
            Kind::Record => match ServiceRecord::decode(kv.value(), &key.0, &key.1) {
                Ok(record) => {
                    self.records.insert(key.clone(), Arc::new(record));
                }
                Err(e) => {
                    // Someone wrote garbage by hand: the member is unknown
                    // until a valid record appears.
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "ignoring an invalid service record");
                    self.records.remove(&key);
                }
            },
            Kind::Alive => {
                self.alive.insert(key.clone());
            }
        }
        Some(key)
    }

    /// Applies a delete; returns the member it concerns.
    pub(super) fn apply_delete(&mut self, layout: &Layout, raw_key: &[u8]) -> Option<Key> {
        let (kind, key) = layout.parse(raw_key)?;
        match kind {
            Kind::Record => self.records.remove(&key).map(|_| ()),
            Kind::Alive => self.alive.remove(&key).then_some(()),
        };
        Some(key)
    }

    pub(super) fn member(&self, key: &Key) -> Option<Member> {
        let record = self.records.get(key)?.clone();
        let up = self.alive.contains(key) && !record.forced_down;
        Some(Member { record, up })
    }

    /// Members ordered by (topic, host).
    pub(super) fn members(&self) -> Vec<Member> {
        self.records.keys().filter_map(|k| self.member(k)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_its_own_keys() {
        let layout = Layout::new("/svckit/");
        let key = layout.key(Kind::Alive, "compute", "node-1");
        assert_eq!(key, "/svckit/alive/compute/node-1");
        assert_eq!(
            layout.parse(key.as_bytes()),
            Some((Kind::Alive, ("compute".into(), "node-1".into())))
        );
        for other in [
            "/svckit2/alive/compute/node-1",
            "/svckit/other/compute/node-1",
            "/svckit/services/compute",
            "/svckit/services/compute/a/b",
        ] {
            assert_eq!(layout.parse(other.as_bytes()), None, "{other}");
        }
        assert_eq!(layout.range(Kind::Record, Some("c")), "/svckit/services/c/");
        assert_eq!(layout.root(), "/svckit/");
    }

    /// Members made from the listing share its records: a client of a
    /// 10,000-node topic holds each record once, not once per layer.
    #[test]
    fn members_share_the_listed_record() {
        let record = crate::servicegroup::diff::test_member("h1", true).record;
        let key: Key = (record.advert.topic.clone(), record.advert.host.clone());
        let mut snapshot = Snapshot::default();
        snapshot.records.insert(key.clone(), record);
        snapshot.alive.insert(key.clone());
        let member = snapshot.member(&key).expect("listed");
        assert!(member.up);
        assert!(Arc::ptr_eq(&member.record, &snapshot.records[&key]));
        let again = snapshot.members().remove(0);
        assert!(Arc::ptr_eq(&again.record, &member.record));
    }
}
