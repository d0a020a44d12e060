//! A chunked blob upload: the verified byte stream goes to an upload
//! session in `PATCH` requests of one chunk each (`Content-Range`,
//! `Content-Length`, at least the registry's `OCI-Chunk-Min-Length`, always
//! to the newest `Location`), then the session is closed with
//! `PUT ?digest=`.
//!
//! A failed chunk is resumed from the offset the registry reports for the
//! session (`GET` → `Range: 0-<last>`), not from byte 0; a chunk refused as
//! too large (`413`) is split. Memory use is one chunk: the chunk in hand is
//! kept until the registry holds it, nothing else. This module never closes
//! a session whose bytes did not pass the digest check: the verified stream
//! withholds the last bytes until they are proven right.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use url::Url;

use crate::registry::blobs::UploadSession;
use crate::registry::{Digest, RegistryClient, RegistryError, Scopes};

/// Failed chunk requests in a row (without the registry taking a byte)
/// before the upload gives up.
pub const MAX_CHUNK_FAILURES: u32 = 5;

/// How a chunked upload ended badly.
#[derive(Debug)]
pub enum ChunkedError {
    /// The byte stream failed (its own handle says why).
    Source,
    Registry(RegistryError),
}

impl From<RegistryError> for ChunkedError {
    fn from(e: RegistryError) -> Self {
        ChunkedError::Registry(e)
    }
}

/// Upload `body` (the blob `digest`) into `session` of `dst` in chunks of
/// `chunk` bytes. `location` follows the session's newest location, so the
/// caller can cancel it after a failure.
pub async fn upload(
    dst: &RegistryClient,
    session: UploadSession,
    location: &mut Url,
    scopes: &Scopes,
    digest: &Digest,
    body: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    chunk: u64,
) -> Result<(), ChunkedError> {
    let min = session.min_chunk.unwrap_or(0);
    let mut chunk = chunk.max(min).max(1);
    *location = session.location;
    let mut body = Box::pin(body);
    // The chunk in hand: bytes `start..start + window.len()` of the blob.
    let mut window = Bytes::new();
    let mut start: u64 = 0;
    // Bytes read from the source past the window (at most one source chunk).
    let mut carry = Bytes::new();
    let mut source_done = false;
    // What the registry holds: `0..held`.
    let mut held: u64 = 0;
    let mut failures: u32 = 0;
    loop {
        if held == start + window.len() as u64 {
            if source_done && carry.is_empty() {
                break;
            }
            start = held;
            window = fill(&mut body, &mut carry, &mut source_done, chunk as usize).await?;
            if window.is_empty() {
                continue;
            }
        }
        let from = (held - start) as usize;
        let piece = window.slice(from..(from + chunk as usize).min(window.len()));
        let piece_len = piece.len() as u64;
        match dst.patch_chunk(location.clone(), scopes, held, piece).await {
            Ok((next, reported)) => {
                *location = next;
                let end = reported.unwrap_or(held + piece_len);
                if end > held && end <= start + window.len() as u64 {
                    held = end;
                    failures = 0;
                    continue;
                }
                // The registry did not take the chunk (some answer 2xx and
                // drop it): ask where it stands.
                failures += 1;
                if failures >= MAX_CHUNK_FAILURES {
                    return Err(ChunkedError::Registry(RegistryError::Protocol {
                        registry: dst.name().to_string(),
                        message: format!("upload of {digest}: the registry does not take chunks (it holds {end} bytes after a chunk ending at {})", held + piece_len),
                    }));
                }
                held = resume_point(dst, location, scopes, start, window.len(), None).await?;
            }
            Err(e) if e.status() == Some(413) => match dst.note_chunk_refused(piece_len, min) {
                Some(smaller) => chunk = smaller,
                None => return Err(e.into()),
            },
            Err(e) if e.is_transient() || e.status() == Some(416) => {
                failures += 1;
                if failures >= MAX_CHUNK_FAILURES {
                    return Err(e.into());
                }
                tracing::info!(blob = %digest.short(), error = %e, "upload chunk at byte {held} failed; asking the registry where to resume");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
                held = resume_point(dst, location, scopes, start, window.len(), Some(e)).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Close the session; the bytes are all there, so a transient failure
    // of this one request is worth a few more tries of it alone.
    let mut tries = 0;
    loop {
        match dst.finish_upload(location.clone(), digest, scopes).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() && !e.has_code("BLOB_UPLOAD_UNKNOWN") && tries < 2 => {
                tries += 1;
                tracing::info!(blob = %digest.short(), error = %e, "closing the upload failed; trying again");
                tokio::time::sleep(Duration::from_millis(500 * tries)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Read the next chunk of `len` bytes (fewer at the end) from `body`,
/// keeping what overflows in `carry`.
async fn fill(
    body: &mut (impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin),
    carry: &mut Bytes,
    source_done: &mut bool,
    len: usize,
) -> Result<Bytes, ChunkedError> {
    let mut buf = BytesMut::with_capacity(len);
    loop {
        if !carry.is_empty() {
            let take = carry.len().min(len - buf.len());
            buf.extend_from_slice(&carry.split_to(take));
        }
        if buf.len() >= len || *source_done {
            return Ok(buf.freeze());
        }
        match body.next().await {
            Some(Ok(bytes)) => *carry = bytes,
            Some(Err(_)) => return Err(ChunkedError::Source),
            None => *source_done = true,
        }
    }
}

/// Where to go on after a failed chunk: the registry's count of bytes held,
/// which must lie within the chunk in hand (`start..start + len`). Updates
/// `location` when the registry gives a new one.
async fn resume_point(
    dst: &RegistryClient,
    location: &mut Url,
    scopes: &Scopes,
    start: u64,
    len: usize,
    failed: Option<RegistryError>,
) -> Result<u64, ChunkedError> {
    let (next, held) = match dst.upload_status(location.clone(), scopes).await {
        Ok(status) => status,
        // The session is gone: start over (the caller retries the blob).
        Err(e) => return Err(failed.unwrap_or(e).into()),
    };
    *location = next;
    if held < start || held > start + len as u64 {
        return Err(ChunkedError::Registry(RegistryError::Transport {
            registry: dst.name().to_string(),
            method: "PATCH".into(),
            path: location.path().to_string(),
            message: format!("the upload session holds {held} bytes, outside the chunk in hand ({start}..{}); starting over", start + len as u64),
        }));
    }
    Ok(held)
}
