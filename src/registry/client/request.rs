//! One request to a registry, built so it can be sent (and re-sent after an
//! authentication challenge or a retry) as often as needed. It must never
//! hold a body that cannot be replayed: streamed bodies go through
//! `RegistryClient::send_stream`.

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{self, HeaderMap, HeaderValue};
use url::Url;

use crate::registry::auth::Scopes;

/// One request that can be sent (and re-sent) as often as needed.
pub struct Request {
    pub method: Method,
    pub url: Url,
    pub scopes: Scopes,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    /// Statuses besides 2xx the caller handles itself (e.g. 404 on HEAD).
    pub also_ok: &'static [u16],
    /// A blob download (`GET /v2/<name>/blobs/<digest>`, and every hop of
    /// its redirects), whose body is read by a reader that bounds its own
    /// waits: sent without a read timeout.
    pub download: bool,
}

impl Request {
    pub fn new(method: Method, url: Url, scopes: Scopes) -> Request {
        let path = url.path();
        let download = method == Method::GET && path.contains("/blobs/") && !path.contains("/blobs/uploads");
        Request { method, url, scopes, headers: HeaderMap::new(), body: None, also_ok: &[], download }
    }

    pub fn header(mut self, name: header::HeaderName, value: &str) -> Request {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }

    pub fn body(mut self, body: Bytes) -> Request {
        self.body = Some(body);
        self
    }

    pub fn also_ok(mut self, statuses: &'static [u16]) -> Request {
        self.also_ok = statuses;
        self
    }
}
