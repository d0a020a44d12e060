//! Typed errors of the registry transport, with enough context (registry,
//! method, path, status, the registry's own error code and message) for an
//! operator to act on the one line they read.
//!
//! Errors carry request paths but never query strings (upload locations hold
//! signed state) and never headers, so they cannot carry a credential.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::digest::{Digest, DigestError};
use super::manifest::ManifestError;
use super::name::NameError;

/// One entry of a registry's `{"errors":[…]}` body.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub detail: Option<serde_json::Value>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", if self.code.is_empty() { "UNKNOWN" } else { &self.code })?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        match &self.detail {
            Some(serde_json::Value::Object(map)) if !map.is_empty() => {
                let parts: Vec<String> = map
                    .iter()
                    .map(|(k, v)| {
                        let v = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
                        format!("{}={}", k.to_ascii_lowercase(), v)
                    })
                    .collect();
                write!(f, " ({})", parts.join(", "))
            }
            Some(serde_json::Value::String(s)) if !s.is_empty() => write!(f, " ({s})"),
            _ => Ok(()),
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ApiError>,
}

/// Parse a registry error body; a body that is not the usual JSON becomes a
/// single entry holding (the start of) its text.
pub fn parse_error_body(body: &[u8]) -> Vec<ApiError> {
    if body.is_empty() {
        return Vec::new();
    }
    if let Ok(b) = serde_json::from_slice::<ErrorBody>(body)
        && !b.errors.is_empty() {
            return b.errors;
        }
    let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() { Vec::new() } else { vec![ApiError { code: String::new(), message: text, detail: None }] }
}

/// What went wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached at all (DNS, refused, TLS).
    #[error("cannot reach {registry}: {message}")]
    Connect { registry: String, message: String },

    /// A TLS handshake that will not succeed by trying again: a
    /// certificate we do not trust, or a server that does not speak TLS.
    #[error("cannot reach {registry}: {message}")]
    Tls { registry: String, message: String },

    /// The connection broke or stalled during a request.
    #[error("{method} {path} at {registry}: {message}")]
    Transport { registry: String, method: String, path: String, message: String },

    /// The registry answered with an unexpected status.
    #[error("{method} {path} at {registry}: HTTP {status}{}{}", fmt_api_errors(errors), what_to_do(*status, errors))]
    Status {
        registry: String,
        method: String,
        path: String,
        status: u16,
        errors: Vec<ApiError>,
        retry_after: Option<Duration>,
    },

    /// Credentials missing or refused, or a token that keeps being refused.
    #[error("authentication to {registry} failed: {reason}")]
    Auth { registry: String, reason: String, retryable: bool },

    /// Bytes whose digest differs from the one asked for.
    #[error("{what} at {registry}: content digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { registry: String, what: String, expected: Digest, actual: Digest },

    /// A blob whose length differs from its descriptor.
    #[error("{what} at {registry}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch { registry: String, what: String, expected: u64, actual: u64 },

    /// A manifest that cannot be copied as it is.
    #[error("manifest {} at {registry}: {source}", name_ref(repo, reference))]
    Manifest { registry: String, repo: String, reference: String, source: ManifestError },

    /// A file of an OCI image layout (`oci:/path`) that could not be read or
    /// written (`path` is the file, `registry` the layout).
    #[error("{registry}: {path}: {message}")]
    Local { registry: String, path: String, message: String },

    /// The registry broke the protocol (missing Location, unparsable JSON…).
    #[error("{registry}: {message}")]
    Protocol { registry: String, message: String },

    /// The registry stopped answering (found by the breaker in
    /// [`super::gate`]): the remaining work on it is not attempted.
    #[error("{registry} is down: {reason}")]
    Down { registry: String, reason: String },

    /// The registry refuses every upload (`405`, e.g. maintenance mode).
    #[error("{registry} is read-only (maintenance mode?): {reason}")]
    ReadOnly { registry: String, reason: String },

    /// The registry's storage is full.
    #[error("{registry} is out of space: {reason}")]
    OutOfSpace { registry: String, reason: String },

    /// The registry's announced quota (`RateLimit-Remaining`) is nearly used up.
    #[error("{registry} allows only {remaining} more requests{}; no new work is started on it, waiting for the registry's quota (resets in {})", window.map(|w| format!(" in its {w}s rate-limit window")).unwrap_or_else(|| " under its rate limit".into()), resets_in.map(|d| humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()).unwrap_or_else(|| "an unknown time".into()))]
    QuotaLow { registry: String, remaining: u64, window: Option<u64>, resets_in: Option<Duration> },

    /// A transient failure that already used up its request's retries:
    /// callers further up do not retry it again (one budget, not one per level).
    #[error("{source} (gave up after {attempts} attempts)")]
    Exhausted { attempts: usize, source: Box<RegistryError> },

    #[error(transparent)]
    Name(#[from] NameError),

    #[error(transparent)]
    Digest(#[from] DigestError),
}

/// What a [`RegistryError::QuotaLow`] says about the work it stopped.
pub const QUOTA_WAIT: &str = "waiting for the registry's quota";

/// `repo:tag` or `repo@digest`.
fn name_ref(repo: &str, reference: &str) -> String {
    if reference.contains(':') { format!("{repo}@{reference}") } else { format!("{repo}:{reference}") }
}

/// What the operator should do about an answer that only a front (not the
/// registry) gives: nginx answers a TLS client without the client
/// certificate it requires with `400 No required SSL certificate was sent`
/// (and one it does not accept with `400 The SSL certificate error`).
fn what_to_do(status: u16, errors: &[ApiError]) -> &'static str {
    let says = |text: &str| errors.iter().any(|e| e.message.to_ascii_lowercase().contains(text));
    if status == 400 && (says("no required ssl certificate was sent") || says("the ssl certificate error")) {
        " — the registry requires a client certificate (--from-cert/--from-key or --to-cert/--to-key, \
         a policy's client_cert/client_key, or certs.d/<host>/client.cert and client.key)"
    } else {
        ""
    }
}

fn fmt_api_errors(errors: &[ApiError]) -> String {
    if errors.is_empty() {
        String::new()
    } else {
        let parts: Vec<String> = errors.iter().map(ToString::to_string).collect();
        format!(" {}", parts.join("; "))
    }
}

impl RegistryError {
    /// HTTP status, if the registry answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            RegistryError::Status { status, .. } => Some(*status),
            RegistryError::Exhausted { source, .. } => source.status(),
            _ => None,
        }
    }

    /// True when the registry reported `code` among its errors.
    pub fn has_code(&self, code: &str) -> bool {
        match self {
            RegistryError::Status { errors, .. } => errors.iter().any(|e| e.code == code),
            RegistryError::Exhausted { source, .. } => source.has_code(code),
            _ => false,
        }
    }

    /// A transient failure whose request already used up its retries.
    pub fn gave_up(&self) -> bool {
        matches!(self, RegistryError::Exhausted { .. })
    }

    /// A condition of the whole registry (down, read-only, out of space,
    /// quota): the rest of the work on it fails the same way.
    pub fn is_registry_condition(&self) -> bool {
        matches!(
            self,
            RegistryError::Down { .. } | RegistryError::ReadOnly { .. } | RegistryError::OutOfSpace { .. } | RegistryError::QuotaLow { .. }
        )
    }

    /// Worth trying again after a pause: overload, gateway trouble, broken
    /// connections, corrupted downloads, a refused token that may be renewed.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Connect { .. } | RegistryError::Transport { .. } => true,
            RegistryError::DigestMismatch { .. } | RegistryError::SizeMismatch { .. } => true,
            RegistryError::Auth { retryable, .. } => *retryable,
            RegistryError::Status { status, .. } => {
                matches!(status, 408 | 425 | 429 | 500 | 502 | 503 | 504)
                    || self.has_code("BLOB_UPLOAD_UNKNOWN")
                    || self.has_code("TOOMANYREQUESTS")
            }
            _ => false,
        }
    }

    /// An upload session's `PATCH`/`PUT` answered `404` (with any code,
    /// or none: "Path not found") or `500`: the session is lost or not
    /// visible yet (an S3-backed registry behind a load balancer right
    /// after the `POST`); worth a new session after a short pause.
    pub fn upload_session_lost(&self) -> bool {
        match self {
            RegistryError::Status { status, path, method, .. } => {
                matches!(status, 404 | 500) && path.contains("/blobs/uploads/") && matches!(method.as_str(), "PATCH" | "PUT")
            }
            _ => false,
        }
    }

    /// The pause the registry asked for (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RegistryError::Status { retry_after, .. } => *retry_after,
            RegistryError::Exhausted { source, .. } => source.retry_after(),
            _ => None,
        }
    }

    /// How long to wait before trying again after this error: `backoff`,
    /// or longer when the registry asked for it with `Retry-After`.
    pub fn pause(&self, backoff: Duration) -> Duration {
        self.retry_after().map_or(backoff, |asked| asked.max(backoff))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registry_errors_verbatim() {
        let errors = parse_error_body(
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"v1.6.32"}}]}"#,
        );
        let e = RegistryError::Status {
            registry: "http://127.0.0.1:5001".into(),
            method: "GET".into(),
            path: "/v2/a/manifests/v1.6.32".into(),
            status: 404,
            errors,
            retry_after: None,
        };
        assert_eq!(
            e.to_string(),
            "GET /v2/a/manifests/v1.6.32 at http://127.0.0.1:5001: HTTP 404 MANIFEST_UNKNOWN: manifest unknown (tag=v1.6.32)"
        );
        assert!(!e.is_transient());
        assert!(e.has_code("MANIFEST_UNKNOWN"));
    }

    #[test]
    fn pauses_honour_retry_after() {
        let e = |retry_after| RegistryError::Status {
            registry: "r".into(),
            method: "PUT".into(),
            path: "/v2/a/blobs/uploads/x".into(),
            status: 429,
            errors: Vec::new(),
            retry_after,
        };
        let second = Duration::from_secs(1);
        assert_eq!(e(None).pause(second), second);
        assert_eq!(e(Some(Duration::from_secs(5))).pause(second), Duration::from_secs(5));
        assert_eq!(e(Some(Duration::from_millis(10))).pause(second), second, "never shorter than the backoff");
    }

    #[test]
    fn non_json_bodies_are_kept_short() {
        let errs = parse_error_body(b"<html>\n  <body>502 Bad Gateway</body></html>");
        assert_eq!(errs[0].to_string(), "UNKNOWN: <html> <body>502 Bad Gateway</body></html>");
        assert!(parse_error_body(b"").is_empty());
    }
}
