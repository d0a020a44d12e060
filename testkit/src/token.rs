//! A small token service for `auth: token` registries: checks basic
//! credentials, grants the requested scopes, and signs ES256 JWTs that the
//! distribution registry verifies against the certificate it is given.
//!
//! Knobs make tokens short-lived (or lie about their lifetime) so refresh
//! and re-authentication are tested for real; every request is recorded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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
    users: HashMap<String, String>,
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
            users: users.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect(),
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
            let app = axum::Router::new().route("/token", get(issue)).with_state(state);
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

async fn issue(State(server): State<Arc<TokenServer>>, headers: HeaderMap, Query(query): Query<Vec<(String, String)>>) -> Response {
    let user = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|raw| String::from_utf8(raw).ok());
    let user = match user {
        Some(pair) => match pair.split_once(':') {
            Some((u, p)) if server.users.get(u).is_some_and(|expected| expected == p) => Some(u.to_string()),
            _ => {
                server.refused.fetch_add(1, Ordering::Relaxed);
                return (StatusCode::UNAUTHORIZED, "invalid credentials").into_response();
            }
        },
        None => None,
    };
    let scopes: Vec<String> = query.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.clone()).collect();
    let mut access = Vec::new();
    for s in &scopes {
        if let Some((kind, name, actions)) = split_scope(s) {
            // Anonymous clients may only pull.
            let granted: Vec<&str> = actions.split(',').filter(|a| user.is_some() || *a == "pull").collect();
            access.push((kind.to_string(), name.to_string(), granted.join(",")));
        }
    }
    let token = server.sign(user.as_deref(), access);
    if let Ok(mut log) = server.issued.lock() {
        log.push(Issued { user: user.clone(), scopes: scopes.clone(), token: token.clone() });
    }
    let lifetime = server.lifetime.load(Ordering::Relaxed);
    let advertised = match server.advertised.load(Ordering::Relaxed) {
        0 => lifetime,
        a => a,
    };
    axum::Json(json!({ "token": token, "access_token": token, "expires_in": advertised })).into_response()
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
