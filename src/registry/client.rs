//! The HTTP client for one registry: connection pool, retries with backoff
//! that honour `Retry-After`, and the calls into [`super::authn`] that
//! authenticate each request.
//!
//! Every request to a registry goes through [`RegistryClient::send`] (or
//! [`RegistryClient::send_stream`] for bodies that cannot be replayed).
//! Redirects of `GET` and `HEAD` are followed by [`redirect`] (credentials
//! stay on the registry's own origin); nothing else is ever redirected. This
//! module never logs a header value and never puts a query string into an
//! error.
//!
//! Timeouts are about progress, never a deadline on a whole transfer: an
//! ordinary request fails when no response (or no byte of its body) arrives
//! for the stall timeout; a streamed upload fails when the registry takes no
//! byte of the body for the stall timeout, or gives no answer within the
//! commit wait after the last byte (see [`progress`]).

mod options;
mod progress;
mod redirect;
mod request;
mod send;
mod transport;
pub use options::{ClientOptions, RetryConfig};
pub use request::Request;
pub(crate) use redirect::same_origin;
pub(crate) use transport::describe;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use reqwest::{Method, Response};
use url::Url;

use super::auth::Scopes;
use super::authn::Authenticator;
use super::endpoint::RegistryUrl;
use super::error::RegistryError;
use super::gate::Gate;
use super::usage::Usage;

/// A client for one registry.
pub struct RegistryClient {
    /// Ordinary requests: the stall timeout bounds the wait for the
    /// response and for each byte of its body.
    http: reqwest::Client,
    /// Streamed bodies: no read timeout. Uploads: the registry answers only
    /// after the whole body, [`RegistryClient::send_stream`] watches
    /// progress. Blob downloads: the wait for the response is bounded here,
    /// each wait for a body chunk by the reader (only while it reads, so a
    /// reader busy elsewhere is no stall).
    upload_http: reqwest::Client,
    stall_timeout: Duration,
    commit_timeout: Duration,
    /// Upload `PATCH` chunk size set for this registry (`None`: monolithic).
    chunk_size: Option<u64>,
    /// The registry refused a monolithic upload (`413`): upload in chunks.
    monolithic_refused: AtomicBool,
    /// The chunk size to stay within since the registry (or its front)
    /// refused a bigger chunk with `413`; 0 while none was refused.
    chunk_limit: AtomicU64,
    url: RegistryUrl,
    name: String,
    authn: Authenticator,
    retry: RetryConfig,
    requests: AtomicU64,
    /// Auth state of the other origins redirects led to.
    foreign: redirect::ForeignOrigins,
    /// Whether the registry answers `HEAD` on manifests.
    pub(super) manifest_head: super::manifests::HeadProbe,
    /// Shared by every task on this registry: pauses, rates, breaker.
    gate: Gate,
    /// What was asked of the registry (pulls, HEADs, bytes, 429s, retries).
    usage: Usage,
    /// Held by the one quota probe in flight (see [`RegistryClient::probe_quota`]).
    quota_probe: tokio::sync::Mutex<()>,
    /// The registry is marked insecure: an `http://` upload location of
    /// an `https://` registry is used (still without credentials).
    insecure: bool,
}

impl RegistryClient {
    /// Name the registry's role (`source`, `destination`) in the messages
    /// about its condition.
    pub fn with_role(mut self, role: &str) -> RegistryClient {
        self.gate.relabel(format!("{role} {}", self.name));
        self
    }

    /// The registry's gate: pauses, limits and condition (down, read-only…).
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// What was asked of this registry so far.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// `scheme://host[:port]`, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn url(&self) -> &RegistryUrl {
        &self.url
    }

    /// Requests sent so far (token requests included).
    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed) + self.authn.request_count()
    }

    /// Whether the registry is marked insecure (certificate checks off).
    pub fn insecure(&self) -> bool {
        self.insecure
    }

    /// The stall timeout this client applies.
    pub fn stall_timeout(&self) -> Duration {
        self.stall_timeout
    }

    /// Whether blobs go to this registry in `PATCH` chunks, and how big:
    /// the size set for it, or (once it refused a monolithic upload) the
    /// default; never above a size it refused.
    pub fn upload_chunk_size(&self) -> Option<u64> {
        let wanted = match self.chunk_size {
            Some(n) => n,
            None if self.monolithic_refused.load(Ordering::Relaxed) => DEFAULT_CHUNK_SIZE,
            None => return None,
        };
        let limit = self.chunk_limit.load(Ordering::Relaxed);
        Some(if limit > 0 { wanted.min(limit) } else { wanted })
    }

    /// Remember that the registry refused a monolithic upload as too large.
    pub fn note_monolithic_refused(&self) {
        if !self.monolithic_refused.swap(true, Ordering::Relaxed) {
            tracing::info!(registry = %self.name, "the registry refuses large monolithic uploads (413); uploading in chunks from now on");
        }
    }

    /// Remember that chunks of `refused` bytes are too large for the
    /// registry; returns the next size to try, if any above `min`.
    pub fn note_chunk_refused(&self, refused: u64, min: u64) -> Option<u64> {
        let next = (refused / 2).max(MIN_CHUNK_SIZE);
        if next >= refused || next < min {
            return None;
        }
        self.chunk_limit.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| Some(if cur == 0 { next } else { cur.min(next) })).ok();
        tracing::info!(registry = %self.name, "the registry refuses {refused}-byte chunks (413); trying {next}");
        Some(next)
    }

    /// Check that the registry answers `/v2/` and accepts our credentials.
    ///
    /// With no credentials configured, a refusal of `/v2/` (`401`) is not
    /// the end: some registries (Pulp, Artifactory, Nexus) refuse the
    /// anonymous probe yet serve public repositories anonymously. The
    /// repository requests then decide, and their errors name what was
    /// refused.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        match self.send(&Request::new(Method::GET, self.endpoint_url("/v2/"), Scopes::none())).await {
            Ok(_) => Ok(()),
            Err(e @ RegistryError::Auth { .. }) => {
                if !self.authn.is_anonymous().await {
                    return Err(e);
                }
                tracing::info!(
                    registry = %self.name, error = %e,
                    "the registry refuses anonymous access to /v2/; going on without credentials (the repository requests decide)"
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// `base` joined with an absolute path such as `/v2/x/tags/list`.
    pub fn endpoint_url(&self, path: &str) -> Url {
        let mut u = self.url.base().clone();
        u.set_path(&self.url.api_path(path));
        u
    }
}

/// The chunk size used once a registry refused a monolithic upload and no
/// size was set for it.
pub const DEFAULT_CHUNK_SIZE: u64 = 8 << 20;

/// The smallest chunk regferry sends (but the last one of a blob).
pub const MIN_CHUNK_SIZE: u64 = 256 << 10;

/// Read at most `limit` bytes of a response body.
pub(crate) async fn read_limited(mut resp: Response, limit: usize) -> Result<Vec<u8>, RegistryError> {
    let path = resp.url().path().to_string();
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit.saturating_sub(out.len());
                out.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
            Ok(None) => return Ok(out),
            Err(e) => {
                return Err(RegistryError::Transport {
                    registry: resp.url().origin().ascii_serialization(),
                    method: "GET".into(),
                    path,
                    message: describe(&e),
                });
            }
        }
    }
}
