//! Who may do what on the daemon's listener: read-only and admin API
//! tokens, and the legacy events token.
//!
//! A request carries its token as `Authorization: Bearer TOKEN`, or as the
//! password of HTTP Basic (what a browser sends for the status page).
//! Tokens are compared in constant time. This module never logs or echoes
//! a header or a token.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use crate::dr::events::constant_time_eq;
use crate::registry::Secret;

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read policies, executions, tasks and the status page; send push events.
    Read,
    /// Also retry, cancel and start passes.
    Admin,
}

/// The tokens the daemon was started with.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// Grants [`Role::Admin`].
    pub admin: Option<Secret>,
    /// Grants [`Role::Read`].
    pub read: Option<Secret>,
    /// The exact `Authorization` value a push event may carry instead of an
    /// API token (`--events-token`, kept for existing registry webhooks).
    pub events: Option<Secret>,
    /// Serve the status page without a token even when tokens are set.
    pub public_status: bool,
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No token, or not one of ours: 401.
    Unauthenticated,
    /// A valid token without the rights: 403.
    Forbidden,
    /// The admin API is off (no admin token configured): 403.
    AdminOff,
}

impl Denied {
    /// The refusal as a JSON response (API) — never echoing what was sent.
    pub fn json(self) -> Response {
        let (code, message) = self.parts();
        let mut resp = (code, axum::Json(serde_json::json!({ "error": message }))).into_response();
        if code == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"regferry\""));
        }
        resp
    }

    /// The refusal for a browser: a Basic challenge on 401 so it asks for the token.
    pub fn html(self) -> Response {
        let (code, message) = self.parts();
        let body = format!(
            "<!doctype html><meta charset=utf-8><title>regferry: {code}</title><p>{message}</p>\
             <p>Sign in with any user name and a read-only or admin API token as the password.</p>"
        );
        let mut resp = (code, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
        if code == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"regferry\", charset=\"UTF-8\""));
        }
        resp
    }

    fn parts(self) -> (StatusCode, &'static str) {
        match self {
            Denied::Unauthenticated => (StatusCode::UNAUTHORIZED, "missing or unknown API token"),
            Denied::Forbidden => (StatusCode::FORBIDDEN, "this token is read-only; this needs the admin token"),
            Denied::AdminOff => (StatusCode::FORBIDDEN, "the admin API is off: start the daemon with --api-token (or REGFERRY_API_TOKEN / --api-token-file)"),
        }
    }
}

/// The token a request presents: Bearer, or the password of Basic.
fn presented(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return text.split_once(':').map(|(_, password)| password.to_string());
    }
    None
}

impl Tokens {
    /// Whether any API token is configured (then reading needs one too).
    pub fn api_enabled(&self) -> bool {
        self.admin.is_some() || self.read.is_some()
    }

    /// The role a token grants.
    pub fn role_of(&self, token: &str) -> Option<Role> {
        let matches = |s: &Option<Secret>| s.as_ref().is_some_and(|s| constant_time_eq(token.as_bytes(), s.expose().as_bytes()));
        // Both compared, so the time taken does not tell which one matched.
        let (admin, read) = (matches(&self.admin), matches(&self.read));
        if admin {
            Some(Role::Admin)
        } else if read {
            Some(Role::Read)
        } else {
            None
        }
    }

    /// The role a request's `Authorization` header grants.
    pub fn role(&self, headers: &HeaderMap) -> Option<Role> {
        presented(headers).and_then(|t| self.role_of(&t))
    }

    /// May this request read? Without any API token configured, everyone may
    /// (like `/metrics`).
    pub fn check_read(&self, headers: &HeaderMap) -> Result<(), Denied> {
        if !self.api_enabled() || self.role(headers).is_some() {
            return Ok(());
        }
        Err(Denied::Unauthenticated)
    }

    /// May this request read the status page?
    pub fn check_status_page(&self, headers: &HeaderMap) -> Result<(), Denied> {
        if self.public_status { Ok(()) } else { self.check_read(headers) }
    }

    /// May this request act (retry, cancel, run)? Only with the admin token.
    pub fn check_admin(&self, headers: &HeaderMap) -> Result<(), Denied> {
        self.check_admin_token(presented(headers).as_deref())
    }

    /// May the holder of `token` act?
    pub fn check_admin_token(&self, token: Option<&str>) -> Result<(), Denied> {
        if self.admin.is_none() {
            return Err(Denied::AdminOff);
        }
        match token.and_then(|t| self.role_of(t)) {
            Some(Role::Admin) => Ok(()),
            Some(Role::Read) => Err(Denied::Forbidden),
            None => Err(Denied::Unauthenticated),
        }
    }

    /// May this request deliver a push event? Any API token, or exactly the
    /// events token; open only when no token of any kind is configured.
    pub fn check_event(&self, headers: &HeaderMap) -> Result<(), Denied> {
        if !self.api_enabled() && self.events.is_none() {
            return Ok(());
        }
        if let Some(events) = &self.events {
            let given = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default();
            if constant_time_eq(given, events.expose().as_bytes()) {
                return Ok(());
            }
        }
        if self.role(headers).is_some() { Ok(()) } else { Err(Denied::Unauthenticated) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn roles_follow_the_token_presented() {
        let t = Tokens { admin: Some(Secret::new("adm")), read: Some(Secret::new("ro")), ..Tokens::default() };
        assert_eq!(t.role(&headers("Bearer adm")), Some(Role::Admin));
        assert_eq!(t.role(&headers("bearer ro")), Some(Role::Read));
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:ro");
        assert_eq!(t.role(&headers(&format!("Basic {basic}"))), Some(Role::Read));
        assert_eq!(t.role(&headers("Bearer nope")), None);
        assert_eq!(t.check_read(&HeaderMap::new()), Err(Denied::Unauthenticated));
        assert_eq!(t.check_admin(&headers("Bearer ro")), Err(Denied::Forbidden));
        assert_eq!(t.check_admin(&headers("Bearer adm")), Ok(()));
        assert_eq!(t.check_event(&headers("Bearer ro")), Ok(()));
        assert_eq!(t.check_event(&HeaderMap::new()), Err(Denied::Unauthenticated));
    }

    #[test]
    fn without_tokens_reading_is_open_and_acting_is_off() {
        let t = Tokens::default();
        assert_eq!(t.check_read(&HeaderMap::new()), Ok(()));
        assert_eq!(t.check_event(&HeaderMap::new()), Ok(()));
        assert_eq!(t.check_admin(&headers("Bearer anything")), Err(Denied::AdminOff));
        let legacy = Tokens { events: Some(Secret::new("Token x")), ..Tokens::default() };
        assert_eq!(legacy.check_event(&headers("Token x")), Ok(()));
        assert_eq!(legacy.check_event(&headers("Token y")), Err(Denied::Unauthenticated));
    }
}
