//! A pass-through byte stream that checks size and digest as the bytes go by
//! and withholds the final chunk until both are proven right.
//!
//! Because the last chunk is only released after verification, a receiver
//! that was promised `Content-Length` bytes never gets all of them when the
//! content is wrong, so it cannot commit bad content. Memory use is one
//! chunk, whatever the blob size.

use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;

use super::stats::Stats;
use crate::registry::Digest;
use crate::registry::digest::Verifier;

/// Why a verified stream stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamFailure {
    /// The source broke off (reset, stall, truncated body).
    Source(String),
    /// More or fewer bytes than promised.
    Size { expected: u64, actual: u64 },
    /// The bytes hash to something else.
    Digest { actual: Digest },
}

type Inner = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// See the module documentation.
pub struct VerifiedStream {
    inner: Inner,
    verifier: Verifier,
    expected_size: Option<u64>,
    held: Option<Bytes>,
    finished: bool,
    failure: Arc<Mutex<Option<StreamFailure>>>,
    progress: Arc<Stats>,
    counter: fn(&Stats) -> &AtomicU64,
}

impl VerifiedStream {
    /// Wrap `inner`, expecting `digest` and (if known) `size`; every byte
    /// passed on is added to the counter `counter` picks out of `progress`.
    /// The returned handle tells, after the fact, why the stream failed.
    pub fn new(
        inner: impl Stream<Item = Result<Bytes, String>> + Send + 'static,
        digest: &Digest,
        size: Option<u64>,
        progress: Arc<Stats>,
        counter: fn(&Stats) -> &AtomicU64,
    ) -> (VerifiedStream, Arc<Mutex<Option<StreamFailure>>>) {
        let failure = Arc::new(Mutex::new(None));
        let s = VerifiedStream {
            inner: Box::pin(inner),
            verifier: Verifier::new(digest),
            expected_size: size,
            held: None,
            finished: false,
            failure: failure.clone(),
            progress,
            counter,
        };
        (s, failure)
    }

    fn fail(&mut self, f: StreamFailure) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        self.finished = true;
        self.held = None;
        let message = format!("{f:?}");
        if let Ok(mut slot) = self.failure.lock() {
            *slot = Some(f);
        }
        Poll::Ready(Some(Err(std::io::Error::new(std::io::ErrorKind::InvalidData, message))))
    }
}

impl Stream for VerifiedStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.finished {
                return Poll::Ready(None);
            }
            match self.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    return self.fail(StreamFailure::Source(e));
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    self.verifier.update(&chunk);
                    if let Some(expected) = self.expected_size.filter(|&e| self.verifier.len() > e) {
                        let actual = self.verifier.len();
                        return self.fail(StreamFailure::Size { expected, actual });
                    }
                    Stats::add((self.counter)(&self.progress), chunk.len() as u64);
                    if let Some(previous) = self.held.replace(chunk) {
                        return Poll::Ready(Some(Ok(previous)));
                    }
                }
                Poll::Ready(None) => {
                    let actual_len = self.verifier.len();
                    if let Some(expected) = self.expected_size.filter(|&e| e != actual_len) {
                        return self.fail(StreamFailure::Size { expected, actual: actual_len });
                    }
                    if !self.verifier.matches() {
                        let actual = self.verifier.actual();
                        return self.fail(StreamFailure::Digest { actual });
                    }
                    self.finished = true;
                    return Poll::Ready(self.held.take().map(Ok));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, String>> + Send + 'static {
        futures::stream::iter(parts.iter().map(|p| Ok(Bytes::from_static(p))).collect::<Vec<_>>())
    }

    async fn run(parts: &[&'static [u8]], digest: &Digest, size: Option<u64>) -> (Vec<u8>, bool, Option<StreamFailure>) {
        let stats = Arc::new(Stats::default());
        let (mut s, failure) = VerifiedStream::new(chunks(parts), digest, size, stats, |s| &s.bytes_uploaded);
        let mut out = Vec::new();
        let mut errored = false;
        while let Some(item) = s.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(_) => errored = true,
            }
        }
        let f = failure.lock().unwrap().clone();
        (out, errored, f)
    }

    #[tokio::test]
    async fn good_bytes_pass_through() {
        let d = Digest::sha256_of(b"hello world");
        let (out, errored, f) = run(&[b"hello", b" ", b"world"], &d, Some(11)).await;
        assert_eq!(out, b"hello world");
        assert!(!errored && f.is_none());
    }

    #[tokio::test]
    async fn bad_bytes_never_complete() {
        let d = Digest::sha256_of(b"hello world");
        let (out, errored, f) = run(&[b"hello", b" ", b"WORLD"], &d, Some(11)).await;
        assert!(errored);
        assert!(out.len() < 11, "the last chunk must be withheld, got {} bytes", out.len());
        assert!(matches!(f, Some(StreamFailure::Digest { .. })));
    }

    #[tokio::test]
    async fn truncated_and_oversized_bodies_fail() {
        let d = Digest::sha256_of(b"hello world");
        let (_, errored, f) = run(&[b"hello"], &d, Some(11)).await;
        assert!(errored);
        assert_eq!(f, Some(StreamFailure::Size { expected: 11, actual: 5 }));
        let (_, errored, f) = run(&[b"hello world", b"!"], &d, Some(11)).await;
        assert!(errored);
        assert_eq!(f, Some(StreamFailure::Size { expected: 11, actual: 12 }));
    }

    #[tokio::test]
    async fn empty_blob() {
        let d = Digest::sha256_of(b"");
        let (out, errored, f) = run(&[], &d, Some(0)).await;
        assert!(out.is_empty() && !errored && f.is_none());
    }
}
