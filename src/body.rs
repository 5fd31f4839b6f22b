//! A body passed through unchanged while something watches its frames: the
//! one shape of the kit's body wrappers that only look (a pool slot held
//! until a response ends, a call's metrics or span closed by its trailers,
//! a request's message sizes read on the way).

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

/// Whether a poll ended the body: its end, or an error.
pub(crate) fn ended<B: Body>(polled: &Polled<B>) -> bool {
    matches!(polled, Poll::Ready(None | Some(Err(_))))
}
