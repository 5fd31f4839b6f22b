//! Reading a service record as a registry stores it: JSON that anyone with
//! `etcdctl` or a text editor may have written, so any byte string.

use super::ServiceRecord;
use crate::error::{Error, Result};

impl ServiceRecord {
    /// Decodes the record stored for `(topic, host)`. Refuses bytes that are
    /// not a JSON record (invalid JSON, another shape, empty), and a record
    /// naming another topic or host than the key or file it is stored at:
    /// that one would show up, and take calls, as a member it is not.
    ///
    /// ```
    /// use svckit::servicegroup::ServiceRecord;
    /// assert!(ServiceRecord::decode(b"{not json", "echo", "h1").is_err());
    /// assert!(ServiceRecord::decode(b"[1, 2]", "echo", "h1").is_err());
    /// assert!(ServiceRecord::decode(b"", "echo", "h1").is_err());
    /// ```
    pub fn decode(bytes: &[u8], topic: &str, host: &str) -> Result<Self> {
        let record: ServiceRecord = serde_json::from_slice(bytes)
            .map_err(|e| Error::registry(format!("{topic}/{host}: invalid service record"), e))?;
        if record.advert.topic != topic || record.advert.host != host {
            return Err(Error::registry_msg(format!(
                "{topic}/{host}: the service record names {:?}/{:?}",
                record.advert.topic, record.advert.host
            )));
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::servicegroup::Endpoints;

    fn record() -> ServiceRecord {
        ServiceRecord {
            advert: crate::servicegroup::Advert {
                topic: "echo".into(),
                host: "h1".into(),
                binary: "echo_node".into(),
                version: "1.0.0".into(),
                endpoints: Endpoints {
                    grpc: Some("http://127.0.0.1:7000".into()),
                    http: None,
                },
                services: vec!["svckit.examples.echo.v1.Echo".into()],
            },
            workers: 1,
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            disabled: false,
            disabled_reason: None,
            forced_down: false,
        }
    }

    #[test]
    fn decodes_what_it_stores() {
        let bytes = serde_json::to_vec(&record()).unwrap();
        assert_eq!(
            ServiceRecord::decode(&bytes, "echo", "h1").unwrap(),
            record()
        );
    }

    #[test]
    fn refuses_garbage_other_shapes_and_records_of_another_member() {
        let deep = "[".repeat(1 << 20);
        let long = format!("\"{}\"", "x".repeat(1 << 20));
        let mut fields = serde_json::to_value(record()).unwrap();
        fields["workers"] = serde_json::json!("many");
        let wrong_type = fields.to_string();
        for bad in [
            &b"{not json"[..],
            b"",
            b"null",
            b"{}",
            b"\xff\xfe",
            deep.as_bytes(),
            long.as_bytes(),
            wrong_type.as_bytes(),
        ] {
            match ServiceRecord::decode(bad, "echo", "h1") {
                Err(e)
                    if e.kind() == crate::ErrorKind::Registry
                        && std::error::Error::source(&e).is_some() => {}
                other => panic!(
                    "{:?}: {other:?}",
                    String::from_utf8_lossy(&bad[..bad.len().min(40)])
                ),
            }
        }
        let bytes = serde_json::to_vec(&record()).unwrap();
        for (topic, host) in [("echo", "h2"), ("other", "h1")] {
            assert!(matches!(
                ServiceRecord::decode(&bytes, topic, host),
                Err(e) if e.kind() == crate::ErrorKind::Registry
                    && std::error::Error::source(&e).is_none()
            ));
        }
    }
}
