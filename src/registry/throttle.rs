//! A byte-rate adapter for blob streams: each chunk is let through once
//! the registries' byte limits (`bytes_per_second`) have paid for it.
//!
//! It only delays chunks; it never buffers, splits, reorders or changes
//! them, and a stream without limits passes through untouched.

use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::gate::Pacer;

/// `stream`, no faster than every pacer in `pacers` allows (`None`s are
/// registries without a byte limit).
pub fn limit<E, S, const N: usize>(stream: S, pacers: [Option<Arc<Pacer>>; N]) -> futures::stream::BoxStream<'static, Result<Bytes, E>>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Send + 'static,
{
    let pacers: Vec<Arc<Pacer>> = pacers.into_iter().flatten().collect();
    if pacers.is_empty() {
        return stream.boxed();
    }
    stream
        .then(move |item| {
            let pacers = pacers.clone();
            async move {
                if let Ok(chunk) = &item {
                    for p in &pacers {
                        p.bytes(chunk.len()).await;
                    }
                }
                item
            }
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::TryStreamExt;
    use tokio::time::Instant;

    use super::*;

    #[tokio::test]
    async fn a_limited_stream_takes_at_least_bytes_over_rate() {
        let chunks: Vec<Result<Bytes, ()>> = (0..8).map(|_| Ok(Bytes::from(vec![7u8; 64 * 1024]))).collect();
        let start = Instant::now();
        let out: Vec<Bytes> = limit(futures::stream::iter(chunks), [Some(Arc::new(Pacer::new(1024.0 * 1024.0))), None])
            .try_collect()
            .await
            .unwrap();
        assert_eq!(out.iter().map(Bytes::len).sum::<usize>(), 512 * 1024);
        assert!(start.elapsed() >= Duration::from_millis(500), "{:?}", start.elapsed());
    }
}
