//! What the kit changes in a gRPC call's status, in one layer: the status
//! of an oversized message, and the node's load report when
//! `rpc_load_report_trailer` is on ([`super::orca::CallReports`]).
//!
//! The status of an oversized gRPC message: RESOURCE_EXHAUSTED.
//!
//! tonic's decoder refuses a message over `max_message_size` with
//! OUT_OF_RANGE; the gRPC status-code spec, and the servers of the other
//! languages, answer RESOURCE_EXHAUSTED, which is what clients retry or
//! report on. [`MessageLimitLayer`] reads the length prefix of each message
//! as the request streams by (nothing is buffered), marks a call that
//! carries one over the limit, and turns that call's OUT_OF_RANGE into
//! RESOURCE_EXHAUSTED, in the headers of a trailers-only answer or in the
//! trailers. A handler's own OUT_OF_RANGE on a call within the limit passes
//! untouched.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures::future::BoxFuture;
use http::HeaderValue;
use http_body::Body;
use tower::{Layer, Service};

use super::orca::CallReports;
use crate::body::{edit_status, EditStatus, Polled, Trailed, Watch, Watched};
use crate::wire::GRPC_STATUS;

const OUT_OF_RANGE: &str = "11";
const RESOURCE_EXHAUSTED: HeaderValue = HeaderValue::from_static("8");

/// Maps the status of calls with a message over `max` bytes, and adds the
/// load report (see the module docs).
#[derive(Clone)]
pub(crate) struct StatusLayer {
    pub(crate) max: usize,
    pub(crate) reports: Option<Arc<CallReports>>,
}

impl<S> Layer<S> for StatusLayer {
    type Service = StatusEdits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StatusEdits {
            inner,
            max: self.max,
            reports: self.reports.clone(),
        }
    }
}

/// The service of [`StatusLayer`].
#[derive(Clone)]
pub(crate) struct StatusEdits<S> {
    inner: S,
    max: usize,
    reports: Option<Arc<CallReports>>,
}

impl<S, RB> Service<http::Request<tonic::body::Body>> for StatusEdits<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Body<Data = Bytes> + Send + 'static,
{
    type Response = http::Response<Trailed<RB, Edits>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let oversized = Arc::new(AtomicBool::new(false));
        let (max, flag) = (self.max, oversized.clone());
        let request =
            request.map(|body| tonic::body::Body::new(Scanned::new(body, Scanner::new(max, flag))));
        let future = self.inner.call(request);
        let reports = self.reports.clone();
        Box::pin(async move {
            let response = future.await?;
            Ok(edit_status(response, Edits { oversized, reports }))
        })
    }
}

/// A call's status edits: OUT_OF_RANGE → RESOURCE_EXHAUSTED when the call
/// carried an oversized message, and the load report when on.
pub(crate) struct Edits {
    oversized: Arc<AtomicBool>,
    reports: Option<Arc<CallReports>>,
}

impl EditStatus for Edits {
    fn edit(self, headers: &mut http::HeaderMap) {
        if self.oversized.load(Ordering::Relaxed)
            && headers.get(GRPC_STATUS).is_some_and(|v| v == OUT_OF_RANGE)
        {
            headers.insert(GRPC_STATUS, RESOURCE_EXHAUSTED);
        }
        if let Some(reports) = &self.reports {
            reports.add_to(headers);
        }
    }
}

/// A request body whose message length prefixes are read on the way.
type Scanned<B> = Watched<B, Scanner>;

/// Reads the 5-byte prefix of each gRPC message as the body streams by.
struct Scanner {
    max: usize,
    oversized: Arc<AtomicBool>,
    // The 5-byte prefix of the next message: flag, then length (BE).
    header: [u8; 5],
    filled: usize,
    // Payload bytes of the current message still to pass.
    skip: usize,
}

impl Scanner {
    fn new(max: usize, oversized: Arc<AtomicBool>) -> Self {
        Scanner {
            max,
            oversized,
            header: [0; 5],
            filled: 0,
            skip: 0,
        }
    }
}

impl<B: Body<Data = Bytes>> Watch<B> for Scanner {
    fn polled(&mut self, polled: &Polled<B>, _: &B) {
        let Poll::Ready(Some(Ok(frame))) = polled else {
            return;
        };
        if let Some(data) = frame.data_ref() {
            let mut data = data.clone();
            while data.has_remaining() {
                if self.skip > 0 {
                    let n = (self.skip).min(data.remaining());
                    data.advance(n);
                    self.skip -= n;
                    continue;
                }
                let n = (5 - self.filled).min(data.remaining());
                self.header[self.filled..self.filled + n].copy_from_slice(&data[..n]);
                data.advance(n);
                self.filled += n;
                if self.filled == 5 {
                    let len = u32::from_be_bytes([
                        self.header[1],
                        self.header[2],
                        self.header[3],
                        self.header[4],
                    ]) as usize;
                    if len > self.max {
                        self.oversized.store(true, Ordering::Relaxed);
                    }
                    self.filled = 0;
                    self.skip = len;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Frame;
    use http_body_util::BodyExt;

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len));
        m
    }

    async fn scan(chunks: Vec<Vec<u8>>, max: usize) -> bool {
        let oversized = Arc::new(AtomicBool::new(false));
        let stream = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(c)))),
        );
        let body = Scanned::new(
            http_body_util::StreamBody::new(stream),
            Scanner::new(max, oversized.clone()),
        );
        let _ = body.collect().await;
        oversized.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn finds_an_oversized_message_wherever_the_chunks_split() {
        let mut stream = message(10);
        stream.extend(message(100));
        for split in [1, 3, 5, 6, 14, 16, 50] {
            let (a, b) = stream.split_at(split);
            assert!(
                scan(vec![a.to_vec(), b.to_vec()], 64).await,
                "split at {split}"
            );
            assert!(
                !scan(vec![a.to_vec(), b.to_vec()], 100).await,
                "split at {split}"
            );
        }
    }

    #[test]
    fn only_out_of_range_of_an_oversized_call_is_remapped() {
        let remap = |oversized, code| {
            let mut headers = http::HeaderMap::new();
            headers.insert(GRPC_STATUS, HeaderValue::from_static(code));
            let edits = Edits {
                oversized: Arc::new(AtomicBool::new(oversized)),
                reports: None,
            };
            edits.edit(&mut headers);
            headers[GRPC_STATUS].clone()
        };
        assert_eq!(remap(true, "11"), "8");
        assert_eq!(remap(true, "3"), "3");
        assert_eq!(remap(false, "11"), "11");
    }
}
