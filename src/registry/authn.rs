//! The authentication state machine of one registry: which challenge the
//! registry answered with, the credentials (asked of their source, again
//! before they can go stale), and bearer tokens per scope set, fetched from
//! the token service and cached.
//!
//! [`super::client`] only asks this module for the `Authorization` header
//! of a request and tells it about a `401`. Rules it keeps:
//!
//! - **No lock across the network for everybody.** Each scope set has its
//!   own slot: the tasks that need a token for the same scopes wait for one
//!   fetch (single flight); a slow token service never stalls requests that
//!   hold a valid token for other scopes, nor Basic requests.
//! - **Credentials are a source.** A fixed value stays; credentials from
//!   config files and credential helpers are asked for when first needed
//!   (so once per daemon pass, since each pass builds its clients), again
//!   after [`CREDENTIAL_MAX_AGE`], and once more when a freshly issued token
//!   or freshly sent password is refused. A failing helper is an error
//!   naming it, never anonymous access.
//! - **Refresh tokens** (`identitytoken`, helper answers for `<token>`) are
//!   exchanged with the OAuth2 `grant_type=refresh_token` `POST`, falling
//!   back to `GET` with Basic where the service does not take `POST`.
//! - **Diagnoses.** A refused fresh token says which scope was refused and
//!   the likely causes, read from the token's `access` claim (JWT), the
//!   granted `scope`, or the registry's `insufficient_scope` answer.
//!
//! This module never logs a header value, a token or a password, and never
//! puts one into an error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::Retryable;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use url::Url;

use super::auth::{Challenge, Grant, Scopes, TokenResponse, jwt_access, missing_actions, read_challenges};
use super::client::{RetryConfig, describe, read_limited};
use super::docker_config;
use super::endpoint::{CredentialSource, Credentials, Endpoint, RegistryUrl, Secret};
use super::error::{RegistryError, parse_error_body};

/// Credentials from a config file or helper are asked for again after this
/// long, so that a long run picks up rotated passwords and renewed cloud
/// tokens (ECR's last 12 h, GAR's 1 h) before they expire.
pub const CREDENTIAL_MAX_AGE: Duration = Duration::from_secs(10 * 60);

/// The `client_id` sent with OAuth2 token requests.
const CLIENT_ID: &str = "regferry";

/// Credentials as last asked of their source.
#[derive(Clone)]
struct Resolved {
    creds: Arc<Credentials>,
    generation: u64,
    at: Instant,
}

struct CachedToken {
    header: HeaderValue,
    valid_until: Instant,
    /// The credentials generation the token was issued for.
    generation: u64,
    /// What the token service granted, when it can be told.
    grants: Option<Vec<Grant>>,
}

type Slot = Arc<tokio::sync::Mutex<Option<CachedToken>>>;

/// Authentication for one registry.
pub struct Authenticator {
    registry: String,
    url: RegistryUrl,
    /// The registry is marked insecure: a realm may downgrade to http.
    insecure: bool,
    http: reqwest::Client,
    retry: RetryConfig,
    source: CredentialSource,
    credentials: tokio::sync::Mutex<Option<Resolved>>,
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<HashMap<String, Slot>>,
    requests: AtomicU64,
}

fn basic(username: &str, password: &str) -> Option<HeaderValue> {
    use base64::Engine;
    let raw = format!("{username}:{password}");
    let mut v = HeaderValue::from_str(&format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// The Basic header for `creds`, if they can make one.
fn basic_header(creds: &Credentials) -> Option<HeaderValue> {
    match creds {
        Credentials::Anonymous => None,
        Credentials::Basic { username, password } => basic(username, password.expose()),
        Credentials::IdentityToken { username, token } => basic(username.as_deref().unwrap_or("<token>"), token.expose()),
    }
}

fn bearer(token: &Secret) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose())).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// `scheme://host:port` of a URL, port always shown, for messages.
fn origin_with_port(u: &Url) -> String {
    let port = u.port_or_known_default().map(|p| format!(":{p}")).unwrap_or_default();
    format!("{}://{}{port}", u.scheme(), u.host_str().unwrap_or_default())
}

/// Grants read from an OAuth2 `scope` answer (`repository:a/b:pull push`
/// or space-separated `type:name:actions` entries).
fn grants_from_scope(scope: &str) -> Vec<Grant> {
    scope
        .split(' ')
        .filter_map(|s| {
            let (kind_name, actions) = s.rsplit_once(':')?;
            let (kind, name) = kind_name.split_once(':')?;
            Some(Grant { kind: kind.into(), name: name.into(), actions: actions.split(',').map(str::to_string).collect() })
        })
        .collect()
}

struct Fetched {
    token: Secret,
    lifetime: Duration,
    grants: Option<Vec<Grant>>,
}

impl Authenticator {
    /// Authentication for `endpoint`, sending token requests with `http`.
    pub fn new(endpoint: &Endpoint, registry: &str, http: reqwest::Client, retry: RetryConfig) -> Authenticator {
        Authenticator {
            registry: registry.to_string(),
            url: endpoint.url.clone(),
            insecure: endpoint.tls.insecure_skip_verify,
            http,
            retry,
            source: endpoint.credentials.clone(),
            credentials: tokio::sync::Mutex::new(None),
            challenge: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
        }
    }

    /// Requests sent to token services so far.
    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn error(&self, reason: impl Into<String>) -> RegistryError {
        RegistryError::Auth { registry: self.registry.clone(), reason: reason.into(), retryable: false }
    }

    fn known_challenge(&self) -> Option<Challenge> {
        self.challenge.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn slot(&self, scopes: &Scopes) -> Slot {
        let mut map = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(scopes.key()).or_default().clone()
    }

    /// Forget the token cached for `scopes` (it was refused).
    pub async fn forget(&self, scopes: &Scopes) {
        *self.slot(scopes).lock().await = None;
    }

    /// The credentials, asked of their source when not yet known, older
    /// than [`CREDENTIAL_MAX_AGE`], or of generation `stale` (refused).
    /// One task asks at a time; the others take its answer.
    async fn credentials(&self, stale: Option<u64>) -> Result<Resolved, RegistryError> {
        let mut slot = self.credentials.lock().await;
        if let Some(r) = slot.as_ref() {
            let refused = stale == Some(r.generation) && self.source.can_change();
            let old = self.source.can_change() && r.at.elapsed() > CREDENTIAL_MAX_AGE;
            if !refused && !old {
                return Ok(r.clone());
            }
        }
        let creds = match &self.source {
            CredentialSource::Fixed(c) => c.clone(),
            CredentialSource::ConfigFiles { files } => {
                let (files, url) = (files.clone(), self.url.clone());
                tokio::task::spawn_blocking(move || docker_config::resolve(&files, &url))
                    .await
                    .map_err(|e| self.error(format!("credential lookup did not finish: {e}")))?
                    .map_err(|e| self.error(e.to_string()))?
            }
        };
        let generation = slot.as_ref().map_or(1, |r| r.generation + 1);
        let resolved = Resolved { creds: Arc::new(creds), generation, at: Instant::now() };
        *slot = Some(resolved.clone());
        Ok(resolved)
    }

    /// Whether no credentials are configured (asked of their source; a
    /// source that fails to answer is not "none").
    pub async fn is_anonymous(&self) -> bool {
        matches!(self.credentials(None).await, Ok(r) if matches!(*r.creds, Credentials::Anonymous))
    }

    /// The `Authorization` header for a request needing `scopes`, as far as
    /// the registry's challenge is known (none before the first `401`).
    pub async fn authorization(&self, scopes: &Scopes) -> Result<Option<HeaderValue>, RegistryError> {
        match self.known_challenge() {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(basic_header(&self.credentials(None).await?.creds)),
            Some(Challenge::Bearer { realm, service }) => {
                self.token(scopes, &realm, service.as_deref(), None, false).await.map(Some)
            }
        }
    }

    /// The request `method path` needing `scopes` was answered `401` with
    /// `headers`, after `round` earlier `401`s for it; `sent` is the
    /// `Authorization` it carried. Returns the header to try next, or the
    /// error that explains why there is none.
    pub async fn unauthorized(
        &self,
        scopes: &Scopes,
        sent: Option<&HeaderValue>,
        headers: &HeaderMap,
        round: u32,
        method: &Method,
        path: &str,
    ) -> Result<HeaderValue, RegistryError> {
        if round > 2 {
            return Err(self.error(format!("{method} {path} keeps being answered 401")));
        }
        let values = headers.get_all(header::WWW_AUTHENTICATE).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>();
        let offered = read_challenges(values, self.url.base());
        let challenge = match offered.chosen.clone() {
            Some(c) => {
                self.check_realm(&c)?;
                *self.challenge.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
                c
            }
            None => match self.known_challenge() {
                // A 401 without a usable header: the registry's challenge is known.
                Some(c) if offered.schemes.is_empty() => c,
                _ if offered.schemes.is_empty() => {
                    return Err(self.error(format!("{method} {path} was answered 401 without a WWW-Authenticate challenge")));
                }
                _ => {
                    return Err(self.error(format!(
                        "{method} {path} was answered 401 offering only {}; regferry answers Bearer and Basic challenges",
                        offered.schemes.join(", ")
                    )));
                }
            },
        };
        match challenge {
            Challenge::Basic => self.basic_after_401(sent, round, method, path).await,
            Challenge::Bearer { realm, service } => {
                if round == 0 {
                    // A token known to lack what the request needs will not
                    // do better when fetched again.
                    if sent.is_some()
                        && let Some(reason) = self.diagnose_grants(scopes, sent, &realm).await
                    {
                        return Err(self.error(reason));
                    }
                    // No token yet, or the one sent has expired or was revoked.
                    return self.token(scopes, &realm, service.as_deref(), sent, false).await;
                }
                // A token issued a moment ago was refused.
                if let Some(reason) = self.diagnose_scope(scopes, sent, &offered.error, &offered.scope, &realm).await {
                    return Err(self.error(reason));
                }
                if round == 1 && self.source.can_change() {
                    return self.token(scopes, &realm, service.as_deref(), sent, true).await;
                }
                let scope = scopes.key();
                let scope = if scope.is_empty() { String::new() } else { format!(" (scope {scope})") };
                Err(self.error(format!(
                    "{method} {path} refused a freshly issued token from the token service {}{scope}; check the clocks \
                     and the registry's token settings",
                    origin_with_port(&realm)
                )))
            }
        }
    }

    async fn basic_after_401(&self, sent: Option<&HeaderValue>, round: u32, method: &Method, path: &str) -> Result<HeaderValue, RegistryError> {
        let current = self.credentials(None).await?;
        let none_given = || {
            self.error(format!(
                "{method} {path} was refused (401): the registry requires credentials and none were given (use \
                 --from-creds/--to-creds, a policy's credentials, or docker login)"
            ))
        };
        let header = basic_header(&current.creds);
        if header.is_some() && header.as_ref() != sent {
            return header.ok_or_else(none_given);
        }
        if sent.is_none() {
            return Err(none_given());
        }
        // What was just sent was refused: ask the source once more.
        if round <= 1 && self.source.can_change() {
            let fresh = self.credentials(Some(current.generation)).await?;
            if let Some(h) = basic_header(&fresh.creds).filter(|h| Some(h) != sent) {
                return Ok(h);
            }
        }
        Err(self.error("username or password rejected"))
    }

    /// Why a fresh token was refused, when that can be told: the token
    /// lacks an action the request needs.
    async fn diagnose_scope(
        &self,
        scopes: &Scopes,
        sent: Option<&HeaderValue>,
        error: &Option<String>,
        needed: &Option<String>,
        realm: &Url,
    ) -> Option<String> {
        let service = origin_with_port(realm);
        if let Some(reason) = self.diagnose_grants(scopes, sent, realm).await {
            return Some(reason);
        }
        if error.as_deref() == Some("insufficient_scope") {
            let what = needed.clone().unwrap_or_else(|| scopes.key());
            let repo = what.split(':').nth(1).unwrap_or(&what).to_string();
            return Some(format!(
                "the registry refused the token from the token service {service} as insufficient for {what}: the account may \
                 lack the right (push), or the repository/project/namespace {repo} does not exist (Docker Hub: official \
                 images are library/NAME)"
            ));
        }
        None
    }

    /// The token `sent` (when it is the one cached for `scopes`) lacks an
    /// action the request needs, as far as its grants are known.
    async fn diagnose_grants(&self, scopes: &Scopes, sent: Option<&HeaderValue>, realm: &Url) -> Option<String> {
        let grants = {
            let slot = self.slot(scopes);
            let guard = slot.lock().await;
            guard.as_ref().filter(|t| Some(&t.header) == sent).and_then(|t| t.grants.clone())
        }?;
        let (kind, name, missing) = missing_actions(&self.api_scopes(scopes), &grants).into_iter().next()?;
        let service = origin_with_port(realm);
        if kind != "repository" {
            return Some(format!(
                "the token service {service} did not grant {kind}:{name}:{} (for the catalog: the account may not list \
                 every repository; name the repositories with --repo or a policy's source.repositories)",
                missing.join(",")
            ));
        }
        Some(refused_message(&service, &name, &missing, &grants))
    }

    /// `scopes` with repository names as the registry knows them.
    fn api_scopes(&self, scopes: &Scopes) -> Scopes {
        let mut out = Scopes::none();
        for s in scopes.iter() {
            out = out.with_raw(&self.api_scope(s));
        }
        out
    }

    fn api_scope(&self, scope: &str) -> String {
        match scope.strip_prefix("repository:").and_then(|r| r.rsplit_once(':')) {
            Some((name, actions)) => format!("repository:{}:{actions}", self.url.api_repository(name)),
            None => scope.to_string(),
        }
    }

    /// Refuse a realm that would send credentials over plain HTTP while the
    /// registry itself is HTTPS, unless the registry is marked insecure.
    fn check_realm(&self, c: &Challenge) -> Result<(), RegistryError> {
        if let Challenge::Bearer { realm, .. } = c
            && self.url.base().scheme() == "https"
            && realm.scheme() != "https"
            && !self.insecure
        {
            return Err(self.error(format!(
                "the token service {} is not HTTPS while the registry is; refused (mark the registry insecure to allow it)",
                origin_with_port(realm)
            )));
        }
        Ok(())
    }

    /// A token for `scopes`: the cached one unless it expired or is the
    /// `rejected` one; else one fetch, shared by every task that waits on
    /// the same scopes. `stale_credentials`: the credentials that earned
    /// the rejected token are to be asked for again first.
    async fn token(
        &self,
        scopes: &Scopes,
        realm: &Url,
        service: Option<&str>,
        rejected: Option<&HeaderValue>,
        stale_credentials: bool,
    ) -> Result<HeaderValue, RegistryError> {
        let slot = self.slot(scopes);
        let mut guard = slot.lock().await;
        if let Some(t) = guard.as_ref()
            && t.valid_until > Instant::now()
            && rejected.is_none_or(|r| *r != t.header)
        {
            return Ok(t.header.clone());
        }
        let stale = if stale_credentials { guard.as_ref().map(|t| t.generation) } else { None };
        let mut creds = self.credentials(stale).await?;
        let fetched = match self.fetch_token(&creds.creds, realm, service, scopes).await {
            // The token service refused credentials that may have changed
            // at their source since they were read: read them once more.
            Err(RegistryError::Auth { .. }) if self.source.can_change() && creds.at.elapsed() > Duration::from_secs(1) => {
                creds = self.credentials(Some(creds.generation)).await?;
                self.fetch_token(&creds.creds, realm, service, scopes).await?
            }
            other => other?,
        };
        let header = bearer(&fetched.token)
            .ok_or_else(|| self.error(format!("the token service {} issued a token that is not a valid header", origin_with_port(realm))))?;
        // Renew a little early so a token does not expire in flight.
        let margin = (fetched.lifetime / 5).min(Duration::from_secs(10));
        *guard = Some(CachedToken {
            header: header.clone(),
            valid_until: Instant::now() + fetched.lifetime - margin,
            generation: creds.generation,
            grants: fetched.grants,
        });
        Ok(header)
    }

    async fn fetch_token(
        &self,
        creds: &Credentials,
        realm: &Url,
        service: Option<&str>,
        scopes: &Scopes,
    ) -> Result<Fetched, RegistryError> {
        let scope_list: Vec<String> = scopes.iter().map(|s| self.api_scope(s)).collect();
        let attempt = || async {
            match creds {
                Credentials::IdentityToken { username, token } => {
                    match self.oauth_refresh(token, realm, service, &scope_list).await? {
                        Some(f) => Ok(f),
                        // The service does not take POST: GET with the token as a password.
                        None => self.get_token(basic(username.as_deref().unwrap_or("<token>"), token.expose()), "the identity token", realm, service, &scope_list).await,
                    }
                }
                Credentials::Basic { .. } => self.get_token(basic_header(creds), "the credentials", realm, service, &scope_list).await,
                Credentials::Anonymous => self.get_token(None, "anonymous access", realm, service, &scope_list).await,
            }
        };
        attempt.retry(self.retry.backoff()).when(RegistryError::is_transient).await
    }

    /// The OAuth2 refresh-token exchange; `None` when the service does not
    /// take `POST` (404, 405).
    async fn oauth_refresh(
        &self,
        token: &Secret,
        realm: &Url,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<Option<Fetched>, RegistryError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "refresh_token")
            .append_pair("refresh_token", token.expose())
            .append_pair("service", service.unwrap_or_default())
            .append_pair("scope", &scopes.join(" "))
            .append_pair("client_id", CLIENT_ID)
            .finish();
        self.requests.fetch_add(1, Ordering::Relaxed);
        let resp = self
            .http
            .post(realm.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(&Method::POST, realm, &e))?;
        match resp.status() {
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => return Ok(None),
            s if s.is_success() => {}
            StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(self.error(format!("the token service {} refused the identity token", origin_with_port(realm))));
            }
            _ => return Err(self.status_error(&Method::POST, realm, resp).await),
        }
        self.parse_token(resp, realm).await.map(Some)
    }

    async fn get_token(
        &self,
        auth: Option<HeaderValue>,
        who: &str,
        realm: &Url,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<Fetched, RegistryError> {
        let mut url = realm.clone();
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in scopes {
                q.append_pair("scope", s);
            }
        }
        let mut builder = self.http.get(url.clone());
        if let Some(h) = auth {
            builder = builder.header(header::AUTHORIZATION, h);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let resp = builder.send().await.map_err(|e| self.transport_error(&Method::GET, &url, &e))?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(self.error(format!("the token service {} refused {who}", origin_with_port(realm))));
            }
            _ => return Err(self.status_error(&Method::GET, &url, resp).await),
        }
        self.parse_token(resp, realm).await
    }

    async fn parse_token(&self, resp: reqwest::Response, realm: &Url) -> Result<Fetched, RegistryError> {
        let service = origin_with_port(realm);
        let body = read_limited(resp, 1024 * 1024).await?;
        let protocol = |message: String| RegistryError::Protocol { registry: self.registry.clone(), message };
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| protocol(format!("the token service {service} answered with something that is not a token")))?;
        let granted_scope = parsed.scope.clone();
        let (token, lifetime) =
            parsed.into_parts().ok_or_else(|| protocol(format!("the token service {service} answered without a token")))?;
        let grants = jwt_access(token.expose()).or_else(|| granted_scope.as_deref().map(grants_from_scope));
        Ok(Fetched { token, lifetime, grants })
    }

    fn transport_error(&self, method: &Method, url: &Url, e: &reqwest::Error) -> RegistryError {
        let message = format!("token service {}: {}", origin_with_port(url), describe(e));
        if e.is_connect() {
            RegistryError::Connect { registry: self.registry.clone(), message }
        } else {
            RegistryError::Transport { registry: self.registry.clone(), method: method.to_string(), path: url.path().to_string(), message }
        }
    }

    async fn status_error(&self, method: &Method, url: &Url, resp: reqwest::Response) -> RegistryError {
        let status = resp.status().as_u16();
        let body = read_limited(resp, 64 * 1024).await.unwrap_or_default();
        RegistryError::Status {
            registry: format!("{} (token service {})", self.registry, origin_with_port(url)),
            method: method.to_string(),
            path: url.path().to_string(),
            status,
            errors: parse_error_body(&body),
            retry_after: None,
        }
    }
}

/// The message for a token that lacks `missing` on `repo`.
fn refused_message(service: &str, repo: &str, missing: &[String], grants: &[Grant]) -> String {
    let have: Vec<String> = grants.iter().filter(|g| g.name == repo).flat_map(|g| g.actions.clone()).collect();
    let granted = if have.is_empty() { "nothing".to_string() } else { format!("{} only", have.join(",")) };
    format!(
        "the token service {service} granted {granted} on {repo} (missing {}): the account may lack {} rights, or the \
         repository/project does not exist (Docker Hub: official images are library/NAME)",
        missing.join(","),
        missing.join("/")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_was_granted() {
        let grants = grants_from_scope("repository:team/app:pull");
        let m = refused_message("http://127.0.0.1:9000", "team/app", &["push".into()], &grants);
        assert!(m.starts_with("the token service http://127.0.0.1:9000 granted pull only on team/app"), "{m}");
        assert!(m.contains("library/NAME"), "{m}");
        assert_eq!(origin_with_port(&Url::parse("https://auth.docker.io/token").unwrap()), "https://auth.docker.io:443");
    }

    #[test]
    fn docker_hub_scopes_name_library() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = RegistryUrl::parse("docker.io").unwrap();
        let a = Authenticator::new(&Endpoint::new(url, Credentials::Anonymous), "x", reqwest::Client::new(), RetryConfig::default());
        assert_eq!(a.api_scope("repository:nginx:pull"), "repository:library/nginx:pull");
        assert_eq!(a.api_scope("repository:bitnami/nginx:pull,push"), "repository:bitnami/nginx:pull,push");
        assert_eq!(a.api_scope("registry:catalog:*"), "registry:catalog:*");
    }
}
