//! The pieces of registry authentication that are pure data: access scopes,
//! `WWW-Authenticate` challenges and token-service answers.
//!
//! The network side (asking the token service, caching and refreshing tokens)
//! lives in [`super::client`]. Nothing here logs, and tokens only ever live
//! inside [`Secret`].

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::endpoint::Secret;
use super::name::RepoName;

/// A set of access scopes, kept sorted so equal sets share a cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Scopes(BTreeSet<String>);

impl Scopes {
    pub fn none() -> Scopes {
        Scopes::default()
    }

    pub fn pull(repo: &RepoName) -> Scopes {
        Scopes::none().and_pull(repo)
    }

    pub fn push(repo: &RepoName) -> Scopes {
        Scopes::none().and_push(repo)
    }

    /// Deleting manifests of `repo` (token servers grant `delete` on its own).
    pub fn delete(repo: &RepoName) -> Scopes {
        let mut s = Scopes::none();
        s.0.insert(format!("repository:{repo}:delete"));
        s
    }

    pub fn catalog() -> Scopes {
        let mut s = Scopes::none();
        s.0.insert("registry:catalog:*".to_string());
        s
    }

    pub fn and_pull(mut self, repo: &RepoName) -> Scopes {
        // a push scope on the same repository already includes pull
        if !self.0.contains(&format!("repository:{repo}:pull,push")) {
            self.0.insert(format!("repository:{repo}:pull"));
        }
        self
    }

    pub fn and_push(mut self, repo: &RepoName) -> Scopes {
        self.0.remove(&format!("repository:{repo}:pull"));
        self.0.insert(format!("repository:{repo}:pull,push"));
        self
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub fn key(&self) -> String {
        self.0.iter().cloned().collect::<Vec<_>>().join(" ")
    }
}

/// What a `401` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: Url, service: Option<String> },
}

/// Split `key=value, key="quoted, value"` pairs (RFC 7235 auth-params).
fn auth_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_ascii_lowercase();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(q) = rest.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    _ => v.push(c),
                }
            }
            value = v;
            rest = q[end.min(q.len())..].trim_start();
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        rest = rest.trim_start_matches(',').trim_start();
        out.push((key, value));
    }
    out
}

/// Parse a `WWW-Authenticate` header value. `base` resolves a relative realm.
pub fn parse_challenge(header: &str, base: &Url) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => {
            let params = auth_params(params);
            let get = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
            let realm = base.join(&get("realm")?).ok()?;
            Some(Challenge::Bearer { realm, service: get("service") })
        }
        _ => None,
    }
}

/// A token service's answer.
#[derive(Deserialize)]
pub struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl TokenResponse {
    /// The token and how long it may be used (60 s when unspecified).
    pub fn into_parts(self) -> Option<(Secret, Duration)> {
        let token = self.token.filter(|t| !t.is_empty()).or(self.access_token.filter(|t| !t.is_empty()))?;
        let lifetime = Duration::from_secs(self.expires_in.filter(|&s| s > 0).unwrap_or(60));
        Some((Secret::new(token), lifetime))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let base = Url::parse("http://127.0.0.1:5000/").unwrap();
        let c = parse_challenge(
            r#"Bearer realm="http://127.0.0.1:9000/token",service="reg, test",scope="repository:a:pull",error="insufficient_scope""#,
            &base,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer { realm: Url::parse("http://127.0.0.1:9000/token").unwrap(), service: Some("reg, test".into()) }
        );
        let c = parse_challenge(r#"Bearer realm="/auth""#, &base).unwrap();
        assert_eq!(c, Challenge::Bearer { realm: Url::parse("http://127.0.0.1:5000/auth").unwrap(), service: None });
        assert_eq!(parse_challenge(r#"Basic realm="basic-realm""#, &base), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Negotiate", &base), None);
    }

    #[test]
    fn scopes_merge_and_key() {
        let a: RepoName = "mirror/app".parse().unwrap();
        let b: RepoName = "mirror/base".parse().unwrap();
        let s = Scopes::push(&a).and_pull(&b).and_pull(&a);
        assert_eq!(s.key(), "repository:mirror/app:pull,push repository:mirror/base:pull");
        let host_port: RepoName = "x/y".parse().unwrap();
        assert_eq!(Scopes::pull(&host_port).and_push(&host_port).key(), "repository:x/y:pull,push");
    }

    #[test]
    fn token_response_defaults() {
        let r: TokenResponse = serde_json::from_str(r#"{"access_token":"abc"}"#).unwrap();
        let (t, d) = r.into_parts().unwrap();
        assert_eq!(t.expose(), "abc");
        assert_eq!(d, Duration::from_secs(60));
        let r: TokenResponse = serde_json::from_str(r#"{"token":"","expires_in":5}"#).unwrap();
        assert!(r.into_parts().is_none());
    }
}
