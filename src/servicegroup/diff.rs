//! What every driver's watch shares: the members a watcher last reported, and
//! the events that bring it to a newer picture, so that a resync after a lost
//! connection emits only what really changed.

use std::collections::BTreeMap;

use super::{Event, Member};
use crate::error::{Error, Result};

/// A member's identity: (topic, host).
pub(crate) type Key = (String, String);

pub(crate) fn key_of(member: &Member) -> Key {
    (
        member.record.advert.topic.clone(),
        member.record.advert.host.clone(),
    )
}

/// The members one watcher has reported so far.
#[derive(Debug, Default)]
pub(crate) struct View {
    members: BTreeMap<Key, Member>,
}

impl View {
    /// Moves the view to `snapshot` (the whole truth for this watcher) and
    /// returns the events between the two, ordered by (topic, host).
    pub(crate) fn resync(&mut self, snapshot: impl IntoIterator<Item = Member>) -> Vec<Event> {
        let mut next: BTreeMap<Key, Member> =
            snapshot.into_iter().map(|m| (key_of(&m), m)).collect();
        let mut keys: Vec<&Key> = self.members.keys().chain(next.keys()).collect();
        keys.sort();
        keys.dedup();
        let events = keys
            .into_iter()
            .filter_map(|k| Event::between(self.members.get(k), next.get(k)))
            .collect();
        std::mem::swap(&mut self.members, &mut next);
        events
    }

    /// Sets one member's state (`None`: no record) and returns its event.
    pub(crate) fn set(&mut self, key: Key, member: Option<Member>) -> Option<Event> {
        let event = Event::between(self.members.get(&key), member.as_ref());
        match member {
            Some(m) => self.members.insert(key, m),
            None => self.members.remove(&key),
        };
        event
    }
}

/// A topic or host name: safe as an etcd key segment and as a file name.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
}

/// What [`valid_name`] allows, for error messages.
pub const VALID_NAME: &str = "letters, digits and . _ - :";

/// Topic and host become path segments (etcd keys, file names), so they must
/// be plain names.
pub(crate) fn check_identity(topic: &str, host: &str) -> Result<()> {
    for (what, v) in [("topic", topic), ("host", host)] {
        if !valid_name(v) {
            return Err(Error::usage(format!(
                "invalid {what} {v:?}: it may only hold {VALID_NAME}"
            )));
        }
    }
    Ok(())
}

/// A member of topic `t` for unit tests of the service group.
#[cfg(test)]
pub(crate) fn test_member(host: &str, up: bool) -> Member {
    use std::time::{Duration, SystemTime};
    let record = crate::servicegroup::Registration {
        advert: crate::servicegroup::Advert {
            topic: "t".into(),
            host: host.into(),
            binary: "b".into(),
            version: "1".into(),
            endpoints: Default::default(),
            services: vec![],
        },
        workers: 1,
        report_interval: Duration::from_secs(1),
        service_down_time: Duration::from_secs(2),
        resume: None,
    }
    .to_record(SystemTime::UNIX_EPOCH);
    Member {
        record: std::sync::Arc::new(record),
        up,
    }
}

#[cfg(test)]
mod tests {
    use super::test_member as member;
    use super::*;

    #[test]
    fn resync_emits_only_differences() {
        let mut view = View::default();
        let first = view.resync([member("a", true), member("b", false)]);
        assert!(matches!(&first[..], [Event::Join(_), Event::Update(_)]));
        assert!(view
            .resync([member("a", true), member("b", false)])
            .is_empty());
        let next = view.resync([member("b", true), member("c", true)]);
        let hosts: Vec<_> = next
            .iter()
            .map(|e| {
                (
                    matches!(e, Event::Join(_)),
                    e.member().record.advert.host.clone(),
                )
            })
            .collect();
        assert_eq!(
            hosts,
            [(false, "a".into()), (true, "b".into()), (true, "c".into())]
        );
    }

    #[test]
    fn identities_must_be_plain_names() {
        assert!(check_identity("compute", "node-1.example").is_ok());
        for (t, h) in [
            ("", "h"),
            ("t", ""),
            ("a/b", "h"),
            ("t", ".."),
            ("t", "x/y"),
        ] {
            assert!(
                matches!(check_identity(t, h), Err(e) if e.kind() == crate::ErrorKind::Usage),
                "{t} {h}"
            );
        }
    }
}
