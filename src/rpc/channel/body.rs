//! Bodies around a call: the request body peeked to tell a whole unary
//! message (which may be sent again) from a stream (sent once, as it
//! comes), and the response body that keeps the call counted as load on
//! its node until the response ends.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use tokio::sync::oneshot;
use tonic::body::Body;
use tonic::Status;

use crate::body::{ended, Polled, Watch, Watched};

/// A request body up to this size, complete without waiting, is kept whole
/// so that a call that never reached a node can be sent to another.
const MAX_REPLAY_BYTES: usize = 1 << 20;

/// Frames looked at, without waiting, before a body counts as a stream.
const MAX_PEEK_FRAMES: usize = 4;

/// A request body, as far as the channel needs to know it.
pub(super) enum Payload {
    /// Complete and small: cheap to send again (a `Bytes` handle clone).
    Whole(Bytes),
    /// Anything else: streamed through once, as the caller produces it.
    Stream(Body),
}

/// Reads what the body has ready, never waiting: a unary call's body (one
/// encoded message, then the end) comes back whole, while a stream whose
/// next message is not produced yet (a bidirectional call waiting for a
/// reply) is handed on untouched, so it cannot deadlock here.
pub(super) fn peek(mut body: Body) -> Result<Payload, Status> {
    if body.is_end_stream() {
        return Ok(Payload::Whole(Bytes::new()));
    }
    // The usual unary body: one data frame, then the end; no allocation.
    let first = match body.frame().now_or_never() {
        None => return Ok(Payload::Stream(body)),
        Some(None) => return Ok(Payload::Whole(Bytes::new())),
        Some(Some(Err(status))) => return Err(status),
        Some(Some(Ok(frame))) => frame,
    };
    let single = |first: Frame<Bytes>| Ok(Payload::Whole(first.into_data().unwrap_or_default()));
    if first.is_data() && body.is_end_stream() {
        return single(first);
    }
    let mut seen = VecDeque::new();
    let mut size = first.data_ref().map_or(0, Bytes::len);
    let mut more = first.is_data() && size <= MAX_REPLAY_BYTES;
    if more {
        match body.frame().now_or_never() {
            Some(None) => return single(first),
            Some(Some(Err(status))) => return Err(status),
            Some(Some(Ok(frame))) => {
                size += frame.data_ref().map_or(0, Bytes::len);
                more = frame.is_data() && size <= MAX_REPLAY_BYTES;
                seen.push_back(first);
                seen.push_back(frame);
            }
            None => {
                seen.push_back(first);
                more = false;
            }
        }
    } else {
        seen.push_back(first);
    }
    while more && seen.len() < MAX_PEEK_FRAMES {
        if body.is_end_stream() {
            return Ok(Payload::Whole(join(seen)));
        }
        match body.frame().now_or_never() {
            Some(None) => return Ok(Payload::Whole(join(seen))),
            Some(Some(Err(status))) => return Err(status),
            Some(Some(Ok(frame))) => {
                size += frame.data_ref().map_or(0, Bytes::len);
                more = frame.is_data() && size <= MAX_REPLAY_BYTES;
                seen.push_back(frame);
            }
            None => more = false,
        }
    }
    Ok(Payload::Stream(Body::new(Prefixed { seen, rest: body })))
}

/// The data frames of a complete body, in one buffer (no copy for the
/// usual single frame).
fn join(mut frames: VecDeque<Frame<Bytes>>) -> Bytes {
    if frames.len() == 1 {
        if let Some(Ok(data)) = frames.pop_front().map(Frame::into_data) {
            return data;
        }
        return Bytes::new();
    }
    let mut all = BytesMut::new();
    for frame in frames {
        if let Some(data) = frame.data_ref() {
            all.extend_from_slice(data);
        }
    }
    all.freeze()
}

/// The frames already read while peeking, then the rest of the body.
struct Prefixed {
    seen: VecDeque<Frame<Bytes>>,
    rest: Body,
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(frame) = self.seen.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.seen.is_empty() && self.rest.is_end_stream()
    }
}

/// Counts a call as pending on its node while it is alive.
pub(super) struct PendingGuard(Arc<AtomicUsize>);

impl PendingGuard {
    pub(super) fn new(pending: &Arc<AtomicUsize>) -> Self {
        pending.fetch_add(1, Ordering::Relaxed);
        PendingGuard(pending.clone())
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that holds its call's [`PendingGuard`] until the last
/// frame (or until it is dropped): a stream is load on its node for as long
/// as it runs, not only until its headers came.
pub(super) type Guarded = Watched<Body, Option<PendingGuard>>;

/// Wraps a response body in its call's guard.
pub(super) fn guarded(inner: Body, guard: PendingGuard) -> Body {
    Body::new(Guarded::new(inner, Some(guard)))
}

impl Watch<Body> for Option<PendingGuard> {
    fn polled(&mut self, polled: &Polled<Body>, body: &Body) {
        if ended::<Body>(polled)
            || (matches!(polled, Poll::Ready(Some(Ok(_)))) && body.is_end_stream())
        {
            *self = None;
        }
    }
}

/// Tells a waiting `cast` that its request was written to a node; the first
/// report wins.
pub(crate) struct SentSignal(Mutex<Option<oneshot::Sender<()>>>);

impl SentSignal {
    pub(crate) fn new() -> (Arc<Self>, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Arc::new(SentSignal(Mutex::new(Some(tx)))), rx)
    }

    fn fire(&self) {
        if let Some(tx) = crate::sync::lock(&self.0).take() {
            let _ = tx.send(());
        }
    }
}

/// A whole request body that reports, when the connection is done with
/// it, whether all of it was taken: the transport drops a request body once
/// it has written it out, or given up.
pub(super) type NotifySent = Watched<http_body_util::Full<Bytes>, SentWatch>;

/// What a [`NotifySent`] body watches: whether it was all taken, told to
/// its signal when the body is dropped.
pub(super) struct SentWatch {
    signal: Arc<SentSignal>,
    whole: bool,
}

impl SentWatch {
    /// `data` as a body that tells `signal` it was all written.
    pub(super) fn wrap(data: Bytes, signal: Arc<SentSignal>) -> Body {
        let whole = data.is_empty();
        Body::new(NotifySent::new(
            http_body_util::Full::new(data),
            SentWatch { signal, whole },
        ))
    }
}

impl Watch<http_body_util::Full<Bytes>> for SentWatch {
    fn polled(
        &mut self,
        _: &Polled<http_body_util::Full<Bytes>>,
        body: &http_body_util::Full<Bytes>,
    ) {
        self.whole = body.is_end_stream();
    }
}

impl Drop for SentWatch {
    fn drop(&mut self) {
        if self.whole {
            self.signal.fire();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complete_body_is_whole_without_a_copy() {
        let data = Bytes::from_static(b"\0\0\0\0\x01x");
        let Ok(Payload::Whole(whole)) = peek(Body::new(http_body_util::Full::new(data.clone())))
        else {
            panic!("a full body is whole");
        };
        assert_eq!(whole.as_ptr(), data.as_ptr(), "the same buffer");
    }

    #[tokio::test]
    async fn a_body_still_being_produced_streams_and_keeps_what_was_read() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Status>>(4);
        tx.send(Ok(Frame::data(Bytes::from_static(b"one"))))
            .await
            .unwrap();
        let body = Body::new(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
        let Ok(Payload::Stream(body)) = peek(body) else {
            panic!("an open stream is not whole");
        };
        tx.send(Ok(Frame::data(Bytes::from_static(b"two"))))
            .await
            .unwrap();
        drop(tx);
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"onetwo");
    }

    #[test]
    fn a_few_ready_frames_then_the_end_are_whole() {
        let frames = futures::stream::iter(
            [&b"ab"[..], b"cd"].map(|d| Ok::<_, Status>(Frame::data(Bytes::from_static(d)))),
        );
        let Ok(Payload::Whole(whole)) = peek(Body::new(http_body_util::StreamBody::new(frames)))
        else {
            panic!("a short complete stream is whole");
        };
        assert_eq!(&whole[..], b"abcd");
    }

    #[test]
    fn a_body_with_nothing_ready_streams() {
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Status>>(1);
        let body = Body::new(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
        assert!(matches!(peek(body), Ok(Payload::Stream(_))));
    }

    #[test]
    fn the_pending_count_lasts_until_the_response_ends() {
        let pending = Arc::new(AtomicUsize::new(0));
        let body = guarded(
            Body::new(http_body_util::Full::new(Bytes::from_static(b"reply"))),
            PendingGuard::new(&pending),
        );
        assert_eq!(pending.load(Ordering::Relaxed), 1);
        let collected = futures::executor::block_on(body.collect()).unwrap();
        assert_eq!(&collected.to_bytes()[..], b"reply");
        assert_eq!(pending.load(Ordering::Relaxed), 0);
    }
}
