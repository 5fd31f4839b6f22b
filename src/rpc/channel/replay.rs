//! The headers of a whole request's attempts, kept for a retry or hedge
//! without a copy per call when they are the channel's usual ones.

use std::sync::OnceLock;

use http::HeaderMap;

/// The headers of a whole request's attempts: the first takes the call's
/// own; later ones (retries, hedges) take a copy of the channel's usual
/// headers when the call's are those, so that the usual call, answered at
/// its first attempt, copies none; else a copy of the call's own, kept.
pub(super) struct Replay<'a> {
    first: Option<HeaderMap>,
    later: Later<'a>,
}

enum Later<'a> {
    Usual(&'a HeaderMap),
    Kept(HeaderMap),
}

impl<'a> Replay<'a> {
    pub(super) fn new(usual: &'a OnceLock<HeaderMap>, headers: HeaderMap) -> Self {
        let usual = usual.get_or_init(|| headers.clone());
        if same_in_order(usual, &headers) {
            Replay {
                first: Some(headers),
                later: Later::Usual(usual),
            }
        } else {
            Replay {
                first: Some(headers.clone()),
                later: Later::Kept(headers),
            }
        }
    }

    /// The headers of the next attempt.
    pub(super) fn next(&mut self) -> HeaderMap {
        self.first.take().unwrap_or_else(|| match &self.later {
            Later::Usual(usual) => (*usual).clone(),
            Later::Kept(kept) => kept.clone(),
        })
    }
}

/// Whether two header sets hold the same entries in the same order: the
/// calls of one channel, made by one generated client, list them alike,
/// and comparing in order needs no hashing. Another order only costs a
/// copy.
fn same_in_order(a: &HeaderMap, b: &HeaderMap) -> bool {
    a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x == y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn every_attempt_carries_the_calls_own_headers() {
        let usual = OnceLock::new();
        let plain = headers(&[("te", "trailers"), ("grpc-timeout", "10S")]);
        // The first call sets the usual headers.
        let mut first = Replay::new(&usual, plain.clone());
        assert_eq!(first.next(), plain);
        assert_eq!(first.next(), plain);
        // A call with the same headers: nothing kept of its own, and a
        // retry gets the usual ones, which are its.
        let mut same = Replay::new(&usual, plain.clone());
        assert!(matches!(same.later, Later::Usual(_)));
        assert_eq!(same.next(), plain);
        assert_eq!(same.next(), plain);
        // A call with metadata of its own keeps it on every attempt.
        let own = headers(&[
            ("te", "trailers"),
            ("grpc-timeout", "10S"),
            ("x-request-id", "r1"),
        ]);
        let mut other = Replay::new(&usual, own.clone());
        assert!(matches!(other.later, Later::Kept(_)));
        assert_eq!(other.next(), own);
        assert_eq!(other.next(), own);
        // The same headers in another order are kept as the call's own.
        let reordered = headers(&[("grpc-timeout", "10S"), ("te", "trailers")]);
        let mut reordered_call = Replay::new(&usual, reordered.clone());
        assert!(matches!(reordered_call.later, Later::Kept(_)));
        assert_eq!(reordered_call.next(), reordered);
        assert_eq!(reordered_call.next(), reordered);
        // Fewer headers than the usual ones is another set, not the usual.
        let mut fewer = Replay::new(&usual, HeaderMap::new());
        assert!(fewer.next().is_empty());
        assert!(fewer.next().is_empty());
    }
}
