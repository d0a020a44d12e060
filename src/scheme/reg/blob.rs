//! A registry's `blob` verb: the byte stream of one source blob, kept going across broken downloads:
//! when the body breaks (reset, cut short, no byte for the stall timeout)
//! after N bytes, it is continued with `Range: bytes=N-`, accepted only as a
//! `206` whose `Content-Range` starts at N (and agrees with the size);
//! a registry that ignores `Range` (`200`) is read again from the start and
//! the first N bytes are dropped. Resumes are bounded: a few in a row
//! without a byte gained, and a total per blob. The stall timeout runs only
//! while this stream is asked for bytes: a body left unread while a slow
//! destination takes a chunk is no stall. (The client downloads blobs
//! without a read timeout of its own, see `registry::client`.)
//!
//! This module only moves bytes in order: checking them against the digest
//! is the job of [`crate::engine::verify_stream`], which sees the one continuous
//! stream whatever happened underneath. It never buffers more than the
//! chunk in hand.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::{Response, StatusCode, header};

use crate::registry::{Digest, RegistryClient, RegistryError, RepoName};
use crate::scheme::ByteStream;

/// How often one blob download may be continued after a break without a
/// byte gained in between.
pub const MAX_RESUMES: u32 = 5;

/// How often one blob download may be continued after a break at all.
pub const MAX_TOTAL_RESUMES: u32 = 100;

/// Start downloading `repo@digest` from `client`. `expected` is the size
/// the manifest gives; returns the stream and the size, when known. Fails
/// when the registry announces another size than the manifest.
pub async fn open(
    client: Arc<RegistryClient>,
    repo: &RepoName,
    digest: &Digest,
    expected: Option<u64>,
) -> Result<(ByteStream, Option<u64>), RegistryError> {
    let resp = client.get_blob(repo, digest).await?;
    let size = match (expected, resp.content_length()) {
        (Some(expected), Some(actual)) if expected != actual => {
            return Err(RegistryError::SizeMismatch {
                registry: client.name().to_string(),
                what: format!("blob {repo}@{digest}"),
                expected,
                actual,
            });
        }
        (Some(s), _) | (None, Some(s)) => Some(s),
        (None, None) => None,
    };
    let state = State {
        stall: client.stall_timeout(),
        client,
        repo: repo.clone(),
        digest: digest.clone(),
        size,
        body: Some(resp),
        offset: 0,
        skip: 0,
        resumes: 0,
        in_a_row: 0,
        done: false,
    };
    Ok((Box::pin(futures::stream::unfold(state, State::next)), size))
}

struct State {
    client: Arc<RegistryClient>,
    repo: RepoName,
    digest: Digest,
    size: Option<u64>,
    stall: Duration,
    body: Option<Response>,
    /// Bytes handed on so far.
    offset: u64,
    /// Bytes still to drop from the current body (a `200` to a `Range`).
    skip: u64,
    /// Resumes so far, and since a byte was last gained.
    resumes: u32,
    in_a_row: u32,
    done: bool,
}

/// Whether `Content-Range: bytes <first>-<last>/<total>` continues at
/// `offset` (and agrees with `size`, when known).
fn continues_at(value: &str, offset: u64, size: Option<u64>) -> bool {
    let Some(rest) = value.trim().strip_prefix("bytes ") else { return false };
    let Some((range, total)) = rest.split_once('/') else { return false };
    let Some((first, last)) = range.split_once('-') else { return false };
    let (Ok(first), Ok(last)) = (first.trim().parse::<u64>(), last.trim().parse::<u64>()) else { return false };
    let total = total.trim();
    let total_ok = match (size, total) {
        (_, "*") => true,
        (Some(size), t) => t.parse::<u64>() == Ok(size) && last + 1 == size,
        (None, t) => t.parse::<u64>().is_ok_and(|t| last < t),
    };
    first == offset && last >= first && total_ok
}

impl State {
    async fn next(mut self) -> Option<(Result<Bytes, String>, State)> {
        loop {
            if self.done {
                return None;
            }
            let broke = match self.body.as_mut() {
                None => "no body".to_string(),
                Some(body) => match tokio::time::timeout(self.stall, body.chunk()).await {
                    Ok(Ok(Some(mut chunk))) => {
                        if self.skip > 0 {
                            let drop = self.skip.min(chunk.len() as u64);
                            self.skip -= drop;
                            chunk = chunk.slice(drop as usize..);
                            if chunk.is_empty() {
                                continue;
                            }
                        }
                        self.offset += chunk.len() as u64;
                        self.in_a_row = 0;
                        return Some((Ok(chunk), self));
                    }
                    Ok(Ok(None)) if self.skip == 0 && self.size.is_none_or(|s| self.offset >= s) => {
                        self.done = true;
                        return None;
                    }
                    Ok(Ok(None)) => format!("the body ended after {} bytes", self.offset),
                    Ok(Err(e)) => crate::registry::client::describe(&e),
                    Err(_) => format!("no byte for {} (stall timeout)", humantime::format_duration(self.stall)),
                },
            };
            self.body = None;
            if let Err(e) = self.resume(&broke).await {
                self.done = true;
                return Some((Err(e), self));
            }
        }
    }

    /// Replace the broken body with one that continues at `offset`.
    async fn resume(&mut self, broke: &str) -> Result<(), String> {
        let mut last = broke.to_string();
        while self.in_a_row < MAX_RESUMES && self.resumes < MAX_TOTAL_RESUMES {
            self.resumes += 1;
            self.in_a_row += 1;
            tracing::info!(
                blob = %self.digest.short(),
                error = %last,
                "source download broke after {} bytes; continuing from there (resume {})",
                self.offset,
                self.resumes
            );
            tokio::time::sleep(Duration::from_millis(100 * u64::from(self.in_a_row))).await;
            let resp = match self.client.get_blob_from(&self.repo, &self.digest, self.offset).await {
                Ok(resp) => resp,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let range = resp.headers().get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or("");
            match resp.status() {
                StatusCode::PARTIAL_CONTENT if continues_at(range, self.offset, self.size) => {
                    self.skip = 0;
                }
                StatusCode::OK if self.size.is_none_or(|s| resp.content_length().is_none_or(|l| l == s)) => {
                    // Range ignored: the whole blob again; drop what was passed on.
                    tracing::info!(blob = %self.digest.short(), "the source ignores Range; reading the blob again from the start");
                    self.skip = self.offset;
                }
                status => {
                    last = format!("resuming at byte {} was answered {status} {range}", self.offset);
                    continue;
                }
            }
            self.body = Some(resp);
            return Ok(());
        }
        Err(format!("{last} (after {} resumed downloads, {} in a row without progress)", self.resumes, self.in_a_row))
    }
}

#[cfg(test)]
mod tests {
    use super::continues_at;

    #[test]
    fn content_ranges_must_continue_where_the_stream_broke() {
        assert!(continues_at("bytes 100-199/200", 100, Some(200)));
        assert!(continues_at("bytes 100-199/*", 100, Some(200)));
        assert!(continues_at("bytes 100-199/200", 100, None));
        assert!(!continues_at("bytes 0-199/200", 100, Some(200)), "starts elsewhere");
        assert!(!continues_at("bytes 100-149/200", 100, Some(200)), "stops short");
        assert!(!continues_at("bytes 100-199/300", 100, Some(200)), "another size");
        assert!(!continues_at("100-199/200", 100, Some(200)));
        assert!(!continues_at("", 100, Some(200)));
    }
}
