//! A small token service for `auth: token` registries: checks basic
//! credentials, grants the requested scopes, and signs ES256 JWTs that the
//! distribution registry verifies against the certificate it is given.
//!
//! Knobs make tokens short-lived (or lie about their lifetime) so refresh
//! and re-authentication are tested for real; every request is recorded.
//! Passwords can be changed while it runs (rotation), OAuth2 refresh tokens
//! are exchanged on `POST /token` (`grant_type=refresh_token`), some
//! repositories can be limited to pull (a robot account without push), and
//! answers can be slowed down (a slow token service).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Form;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::json;

/// The distribution registry accepts tokens up to this long past `exp`.
const REGISTRY_LEEWAY_SECS: u64 = 60;

/// One token request as the service saw it.
#[derive(Debug, Clone)]
pub struct Issued {
    pub user: Option<String>,
    /// `basic`, `anonymous`, `refresh_token` (the OAuth2 POST) or
    /// `basic-refresh-token` (a refresh token as a Basic password on GET).
    pub grant: String,
    pub scopes: Vec<String>,
    /// The token handed out (for tests that look for leaks).
    pub token: String,
}

/// See the module documentation.
pub struct TokenServer {
    pub port: u16,
    pub service: String,
    pub issuer: String,
    /// PEM certificate the registry must trust (its `rootcertbundle`).
    pub cert_pem: String,
    key: EcdsaKeyPair,
    x5c: String,
    users: Mutex<HashMap<String, String>>,
    refresh_tokens: Mutex<HashMap<String, String>>,
    pull_only: Mutex<HashSet<String>>,
    /// Milliseconds every answer is held back.
    pub delay_ms: AtomicU64,
    /// Token requests received (counted before the delay).
    pub received: AtomicUsize,
    /// Seconds a token is really valid at the registry.
    pub lifetime: AtomicU64,
    /// `expires_in` announced to clients (0: the truth).
    pub advertised: AtomicU64,
    issued: Mutex<Vec<Issued>>,
    refused: AtomicUsize,
    serial: AtomicU64,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `repository:team/app:pull,push` → (type, name, actions); names may hold ':'.
fn split_scope(scope: &str) -> Option<(&str, &str, &str)> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    Some((kind, name, actions))
}

impl TokenServer {
    /// Start a token service on a free loopback port, with `users`
    /// (name → password). It runs on its own thread and runtime.
    pub fn start(users: &[(&str, &str)]) -> Arc<TokenServer> {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        let params = rcgen::CertificateParams::new(vec!["regferry-token".to_string()]).expect("cert params");
        let cert = params.self_signed(&key_pair).expect("self-signed cert");
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key_pair.serialize_der(), &rng).expect("ring key");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind token service");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let server = Arc::new(TokenServer {
            port,
            service: "regferry-test-registry".into(),
            issuer: "regferry-test-issuer".into(),
            cert_pem: cert.pem(),
            key,
            x5c: STANDARD.encode(cert.der()),
            users: Mutex::new(users.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect()),
            refresh_tokens: Mutex::new(HashMap::new()),
            pull_only: Mutex::new(HashSet::new()),
            delay_ms: AtomicU64::new(0),
            received: AtomicUsize::new(0),
            lifetime: AtomicU64::new(300),
            advertised: AtomicU64::new(0),
            issued: Mutex::new(Vec::new()),
            refused: AtomicUsize::new(0),
            serial: AtomicU64::new(0),
            runtime: Mutex::new(None),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let state = server.clone();
        runtime.spawn(async move {
            let app = axum::Router::new().route("/token", get(issue).post(exchange)).with_state(state);
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let _ = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await;
        });
        *server.runtime.lock().expect("runtime slot") = Some(runtime);
        server
    }

    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// Registry settings that trust this service.
    pub fn registry_auth(&self) -> crate::registry::Auth {
        crate::registry::Auth::Token {
            realm: self.realm(),
            service: self.service.clone(),
            issuer: self.issuer.clone(),
            cert_pem: self.cert_pem.clone(),
        }
    }

    /// Change (or add) a user's password; the old one is refused from now on.
    pub fn set_password(&self, user: &str, password: &str) {
        if let Ok(mut users) = self.users.lock() {
            users.insert(user.into(), password.into());
        }
    }

    /// Accept `token` as an OAuth2 refresh token for `user`.
    pub fn add_refresh_token(&self, token: &str, user: &str) {
        if let Ok(mut tokens) = self.refresh_tokens.lock() {
            tokens.insert(token.into(), user.into());
        }
    }

    /// Never grant more than pull on `repo` (whoever asks).
    pub fn grant_pull_only(&self, repo: &str) {
        if let Ok(mut set) = self.pull_only.lock() {
            set.insert(repo.into());
        }
    }

    /// Every token request so far.
    pub fn issued(&self) -> Vec<Issued> {
        self.issued.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Token requests refused (bad credentials).
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }

    /// Sign a token granting `access` entries of (type, name, actions), for
    /// the tests' own client: it lives a few minutes whatever `lifetime` says
    /// (the knob is for tokens regferry asks for), so checks made after a run
    /// never stumble over a token of their own that died in flight.
    pub fn mint(&self, access: &[(&str, &str, &str)]) -> String {
        self.sign_for(None, access.iter().map(|(t, n, a)| (t.to_string(), n.to_string(), a.to_string())).collect(), 300)
    }

    fn sign(&self, user: Option<&str>, access: Vec<(String, String, String)>) -> String {
        self.sign_for(user, access, self.lifetime.load(Ordering::Relaxed))
    }

    fn sign_for(&self, user: Option<&str>, access: Vec<(String, String, String)>, lifetime: u64) -> String {
        let issued_at = now();
        // The registry tolerates 60 s past `exp`; take that back so the
        // token really dies after `lifetime` seconds. Times are whole
        // seconds, so add one: a token issued at x.9 s must not die 0.1 s
        // later. A lifetime of 0 means dead on arrival.
        let exp = match lifetime {
            0 => issued_at.saturating_sub(REGISTRY_LEEWAY_SECS + 1),
            n => (issued_at + n + 1).saturating_sub(REGISTRY_LEEWAY_SECS),
        };
        let header = json!({ "typ": "JWT", "alg": "ES256", "x5c": [self.x5c] });
        let claims = json!({
            "iss": self.issuer,
            "sub": user.unwrap_or(""),
            "aud": self.service,
            "exp": exp,
            "nbf": issued_at.saturating_sub(5),
            "iat": issued_at,
            "jti": format!("t{}", self.serial.fetch_add(1, Ordering::Relaxed)),
            "access": access.iter().map(|(t, n, a)| json!({
                "type": t, "name": n, "actions": a.split(',').filter(|x| !x.is_empty()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("header")),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims"))
        );
        let sig = self.key.sign(&SystemRandom::new(), signing_input.as_bytes()).expect("sign");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.runtime.lock()
            && let Some(rt) = slot.take() {
                rt.shutdown_background();
            }
    }
}

/// The access granted to `user` (None: anonymous) for `scopes`.
fn grant(server: &TokenServer, user: Option<&str>, scopes: &[String]) -> Vec<(String, String, String)> {
    let pull_only = server.pull_only.lock().map(|s| s.clone()).unwrap_or_default();
    let mut access = Vec::new();
    for s in scopes {
        if let Some((kind, name, actions)) = split_scope(s) {
            // Anonymous clients, and everybody on a pull-only repository, may only pull.
            let limited = user.is_none() || pull_only.contains(name);
            let granted: Vec<&str> = actions.split(',').filter(|a| !limited || *a == "pull").collect();
            access.push((kind.to_string(), name.to_string(), granted.join(",")));
        }
    }
    access
}

fn answer(server: &TokenServer, user: Option<&str>, grant_kind: &str, scopes: Vec<String>) -> Response {
    let access = grant(server, user, &scopes);
    let token = server.sign(user, access);
    if let Ok(mut log) = server.issued.lock() {
        log.push(Issued { user: user.map(str::to_string), grant: grant_kind.into(), scopes, token: token.clone() });
    }
    let lifetime = server.lifetime.load(Ordering::Relaxed);
    let advertised = match server.advertised.load(Ordering::Relaxed) {
        0 => lifetime,
        a => a,
    };
    axum::Json(json!({ "token": token, "access_token": token, "expires_in": advertised })).into_response()
}

async fn hold(server: &TokenServer) {
    server.received.fetch_add(1, Ordering::Relaxed);
    let delay = server.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
}

async fn issue(State(server): State<Arc<TokenServer>>, headers: HeaderMap, Query(query): Query<Vec<(String, String)>>) -> Response {
    hold(&server).await;
    let user = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|raw| String::from_utf8(raw).ok());
    let (user, kind) = match user {
        Some(pair) => {
            let users = server.users.lock().map(|u| u.clone()).unwrap_or_default();
            let refresh = server.refresh_tokens.lock().map(|t| t.clone()).unwrap_or_default();
            match pair.split_once(':') {
                Some((u, p)) if users.get(u).is_some_and(|expected| expected == p) => (Some(u.to_string()), "basic"),
                // A refresh token as a Basic password (the GET fallback).
                Some((_, p)) if refresh.contains_key(p) => (refresh.get(p).cloned(), "basic-refresh-token"),
                _ => {
                    server.refused.fetch_add(1, Ordering::Relaxed);
                    return (StatusCode::UNAUTHORIZED, "invalid credentials").into_response();
                }
            }
        }
        None => (None, "anonymous"),
    };
    let scopes: Vec<String> = query.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.clone()).collect();
    answer(&server, user.as_deref(), kind, scopes)
}

/// `POST /token`: the OAuth2 refresh-token grant (space-separated `scope`).
async fn exchange(State(server): State<Arc<TokenServer>>, Form(form): Form<Vec<(String, String)>>) -> Response {
    hold(&server).await;
    let get = |k: &str| form.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    if get("grant_type").as_deref() != Some("refresh_token") || get("client_id").is_none_or(|c| c.is_empty()) {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": "unsupported_grant_type" }))).into_response();
    }
    let tokens = server.refresh_tokens.lock().map(|t| t.clone()).unwrap_or_default();
    let Some(user) = get("refresh_token").and_then(|t| tokens.get(&t).cloned()) else {
        server.refused.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": "invalid_grant" }))).into_response();
    };
    let scopes: Vec<String> = get("scope").unwrap_or_default().split(' ').filter(|s| !s.is_empty()).map(str::to_string).collect();
    answer(&server, Some(&user), "refresh_token", scopes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_split_on_the_outer_colons() {
        assert_eq!(split_scope("repository:a/b:pull,push"), Some(("repository", "a/b", "pull,push")));
        assert_eq!(split_scope("repository:host:5000/a:pull"), Some(("repository", "host:5000/a", "pull")));
        assert_eq!(split_scope("registry:catalog:*"), Some(("registry", "catalog", "*")));
    }
}
