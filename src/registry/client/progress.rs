//! How far a streamed request body has got, for the stall watchdog of
//! [`super::RegistryClient::send_stream`]: when the HTTP stack last asked
//! for more, whether it is waiting on the body's own source (not the
//! registry's stall), and when the last byte was handed over (from then on
//! the commit wait applies).
//!
//! This module only observes a stream; it never delays, buffers or changes
//! a byte.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;

/// See the module documentation.
#[derive(Debug)]
pub(super) struct Progress {
    /// When the HTTP stack last asked for more of the body.
    last_asked: Instant,
    /// It asked and the body's own source has not delivered yet.
    waiting_on_source: bool,
    /// When the last byte was handed over.
    finished: Option<Instant>,
    /// Bytes handed over so far, and how many make the whole body (when known).
    sent: u64,
    length: Option<u64>,
}

impl Progress {
    /// Why the request counts as stalled, if it does.
    pub(super) fn stalled(progress: &Mutex<Progress>, stall: Duration, commit: Duration) -> Option<String> {
        let p = progress.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match p.finished {
            Some(at) if now.duration_since(at) >= commit => Some(format!(
                "no answer within {} after the last byte was sent (commit timeout)",
                humantime::format_duration(commit)
            )),
            Some(_) => None,
            None if !p.waiting_on_source && now.duration_since(p.last_asked) >= stall => Some(format!(
                "the registry took no byte for {} (stall timeout)",
                humantime::format_duration(stall)
            )),
            None => None,
        }
    }
}

/// A request body that records its progress.
pub(super) struct Watched<S> {
    inner: Pin<Box<S>>,
    progress: Arc<Mutex<Progress>>,
}

impl<S> Watched<S> {
    pub(super) fn new(inner: S, length: Option<u64>) -> (Watched<S>, Arc<Mutex<Progress>>) {
        let now = Instant::now();
        let finished = (length == Some(0)).then_some(now);
        let progress = Arc::new(Mutex::new(Progress { last_asked: now, waiting_on_source: false, finished, sent: 0, length }));
        (Watched { inner: Box::pin(inner), progress: progress.clone() }, progress)
    }
}

impl<S: Stream<Item = Result<Bytes, std::io::Error>>> Stream for Watched<S> {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        p.last_asked = now;
        match &polled {
            Poll::Pending => p.waiting_on_source = true,
            Poll::Ready(Some(Ok(chunk))) => {
                p.waiting_on_source = false;
                p.sent += chunk.len() as u64;
                if p.length.is_some_and(|l| p.sent >= l) {
                    p.finished.get_or_insert(now);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                p.waiting_on_source = false;
                p.finished.get_or_insert(now);
            }
        }
        polled
    }
}
