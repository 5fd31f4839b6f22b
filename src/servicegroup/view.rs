//! [`MemberView`]: a member as operators see it, the one JSON shape of
//! `svckit members list --json`, `members watch` and the dashboard's
//! `/api/members` and `/api/events`.

use serde::Serialize;

use super::{Event, Member};

/// A member flattened for operators. The field names are a contract
/// (docs/membership.md): scripts read them.
#[derive(Debug, Clone, Serialize)]
pub struct MemberView<'a> {
    /// The topic served.
    pub topic: &'a str,
    /// The node's host name.
    pub host: &'a str,
    /// The binary the node runs.
    pub binary: &'a str,
    /// The gRPC endpoint, when the node advertised one.
    pub endpoint: Option<&'a str>,
    /// `"up"` or `"down"`.
    pub state: &'static str,
    /// Admin state: no new client calls.
    pub disabled: bool,
    /// Why an operator disabled the node.
    pub disabled_reason: Option<&'a str>,
    /// Down whatever its heartbeats say.
    pub forced_down: bool,
    /// The node's software version.
    pub version: &'a str,
    /// Worker processes behind the endpoint.
    pub workers: u32,
    /// gRPC service names served.
    pub services: &'a [String],
    /// RFC 3339 time of the last registration or admin change.
    pub updated_at: &'a str,
}

impl<'a> From<&'a Member> for MemberView<'a> {
    fn from(m: &'a Member) -> Self {
        let r = &m.record;
        MemberView {
            topic: &r.advert.topic,
            host: &r.advert.host,
            binary: &r.advert.binary,
            endpoint: r.advert.endpoints.grpc.as_deref(),
            state: m.state(),
            disabled: r.disabled,
            disabled_reason: r.disabled_reason.as_deref(),
            forced_down: r.forced_down,
            version: &r.advert.version,
            workers: r.workers,
            services: &r.advert.services,
            updated_at: &r.updated_at,
        }
    }
}

/// One line of `svckit members watch` and one `member` message of the
/// dashboard's event stream: `{"event":"join","member":{…}}`.
#[derive(Debug, Clone, Serialize)]
pub struct EventView<'a> {
    /// `join`, `leave`, `update` or `delete` ([`Event::kind`]).
    pub event: &'static str,
    /// The member as it is now (for `delete`, as it was, marked down).
    pub member: MemberView<'a>,
}

impl<'a> From<&'a Event> for EventView<'a> {
    fn from(e: &'a Event) -> Self {
        EventView {
            event: e.kind(),
            member: MemberView::from(e.member()),
        }
    }
}

/// How long ago an RFC 3339 time was, for people: `42s`, `5m`, `3h12m`,
/// `4d`. `-` when the time does not parse; `0s` when it is in the future
/// (clocks of two machines disagree).
pub fn format_age(rfc3339: &str, now: std::time::SystemTime) -> String {
    let Ok(then) = humantime::parse_rfc3339_weak(rfc3339) else {
        return "-".into();
    };
    let secs = now.duration_since(then).map_or(0, |d| d.as_secs());
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d", secs / 86400),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::format_age;

    #[test]
    fn ages_read_as_people_say_them() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = humantime::format_rfc3339_millis(t0).to_string();
        let age = |secs| format_age(&at, t0 + Duration::from_secs(secs));
        assert_eq!(age(0), "0s");
        assert_eq!(age(59), "59s");
        assert_eq!(age(61), "1m");
        assert_eq!(age(3 * 3600 + 12 * 60 + 5), "3h12m");
        assert_eq!(age(4 * 86400 + 5), "4d");
        assert_eq!(format_age(&at, t0 - Duration::from_secs(5)), "0s");
        assert_eq!(format_age("yesterday", t0), "-");
    }
}
