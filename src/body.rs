//! A body passed through unchanged while something watches its frames: the
//! one shape of the kit's body wrappers that only look (a pool slot held
//! until a response ends, a call's metrics or span closed by its trailers,
//! a request's message sizes read on the way); and a gRPC response whose
//! status carrier is edited once ([`edit_status`]: a status remapped, a
//! load report added).

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};

/// What one poll of a body gave.
pub type Polled<B> = Poll<Option<Result<Frame<<B as Body>::Data>, <B as Body>::Error>>>;

/// Sees each poll of a [`Watched`] body.
pub trait Watch<B: Body> {
    /// `polled` is what the poll gave; `body`, the body after it.
    fn polled(&mut self, polled: &Polled<B>, body: &B);
}

pin_project_lite::pin_project! {
    /// `body`, each of its polls shown to `watch`.
    pub struct Watched<B, W> {
        #[pin]
        body: B,
        watch: W,
    }
}

impl<B, W> Watched<B, W> {
    pub(crate) fn new(body: B, watch: W) -> Self {
        Watched { body, watch }
    }
}

impl<B: Body, W: Watch<B>> Body for Watched<B, W> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled<B> {
        let mut this = self.project();
        let polled = this.body.as_mut().poll_frame(cx);
        this.watch.polled(&polled, this.body.as_ref().get_ref());
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A change to a gRPC call's status carrier (see [`edit_status`]).
pub(crate) trait EditStatus {
    fn edit(self, headers: &mut http::HeaderMap);
}

pin_project_lite::pin_project! {
    /// `body`, its trailers passed to `edit` once.
    pub struct Trailed<B, E> {
        #[pin]
        body: B,
        edit: Option<E>,
    }
}

impl<B: Body, E: EditStatus> Body for Trailed<B, E> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled<B> {
        let this = self.project();
        match this.body.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => match frame.into_trailers() {
                Ok(mut trailers) => {
                    if let Some(edit) = this.edit.take() {
                        edit.edit(&mut trailers);
                    }
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Applies `edit` to where a gRPC response carries its status: the headers
/// of a trailers-only answer (they hold `grpc-status`), else the trailers
/// when they come.
pub(crate) fn edit_status<B, E: EditStatus>(
    mut response: http::Response<B>,
    edit: E,
) -> http::Response<Trailed<B, E>> {
    let edit = if response.headers().contains_key(crate::wire::GRPC_STATUS) {
        edit.edit(response.headers_mut());
        None
    } else {
        Some(edit)
    };
    response.map(|body| Trailed { body, edit })
}

/// Whether a poll ended the body: its end, or an error.
pub(crate) fn ended<B: Body>(polled: &Polled<B>) -> bool {
    matches!(polled, Poll::Ready(None | Some(Err(_))))
}
