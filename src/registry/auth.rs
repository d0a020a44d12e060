//! The pieces of registry authentication that are pure data: access scopes,
//! `WWW-Authenticate` challenges and token-service answers.
//!
//! The network side (asking the token service, caching and refreshing tokens)
//! lives in [`super::authn`]. Nothing here logs, and tokens only ever live
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

    /// Add a scope as the token service spells it (`type:name:actions`).
    pub fn with_raw(mut self, scope: &str) -> Scopes {
        self.0.insert(scope.to_string());
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

/// What the `WWW-Authenticate` headers of one response say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Challenges {
    /// The challenge to answer: Bearer if offered, else Basic.
    pub chosen: Option<Challenge>,
    /// Every scheme offered, in order (for messages).
    pub schemes: Vec<String>,
    /// A Bearer challenge's `error` (`insufficient_scope`, `invalid_token`).
    pub error: Option<String>,
    /// A Bearer challenge's `scope`: what the request needed.
    pub scope: Option<String>,
}

/// Read every challenge of every `WWW-Authenticate` header value (RFC 9110
/// §11.6.1: a header may carry several, and several headers may come),
/// with the `http-auth` crate's RFC 7235 parser. A syntax error ends the
/// reading of that header value only; the challenges before it count.
/// Bearer is preferred, then Basic; other schemes (`Negotiate`, `NTLM`) are
/// listed but never answered. `base` resolves a relative realm.
pub fn read_challenges<'a>(values: impl IntoIterator<Item = &'a str>, base: &Url) -> Challenges {
    let mut out = Challenges::default();
    let mut bearer = None;
    let mut basic = false;
    for value in values {
        for parsed in http_auth::parser::ChallengeParser::new(value) {
            let Ok(c) = parsed else { break };
            out.schemes.push(c.scheme.to_string());
            let get = |k: &str| c.params.iter().find(|(key, _)| key.eq_ignore_ascii_case(k)).map(|(_, v)| v.to_unescaped());
            if c.scheme.eq_ignore_ascii_case("bearer") {
                if bearer.is_some() {
                    continue;
                }
                let Some(realm) = get("realm").and_then(|r| base.join(&r).ok()) else { continue };
                out.error = get("error");
                out.scope = get("scope");
                bearer = Some(Challenge::Bearer { realm, service: get("service") });
            } else if c.scheme.eq_ignore_ascii_case("basic") {
                basic = true;
            }
        }
    }
    out.chosen = bearer.or(if basic { Some(Challenge::Basic) } else { None });
    out
}

/// Parse one `WWW-Authenticate` header value. `base` resolves a relative realm.
pub fn parse_challenge(header: &str, base: &Url) -> Option<Challenge> {
    read_challenges([header], base).chosen
}

/// One entry of a JWT's `access` claim (distribution's token format).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Grant {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub actions: Vec<String>,
}

/// The `access` claim of a JWT bearer token, or `None` when the token is not
/// a JWT with one (opaque tokens are common: then nothing is known).
/// Only decodes; never checks a signature and never prints the token.
pub fn jwt_access(token: &str) -> Option<Vec<Grant>> {
    use base64::Engine;
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    #[derive(Deserialize)]
    struct Claims {
        access: Option<Vec<Grant>>,
    }
    serde_json::from_slice::<Claims>(&bytes).ok()?.access
}

/// The scopes of `wanted` whose actions `granted` lacks, as
/// `(type, name, missing actions)`.
pub fn missing_actions(wanted: &Scopes, granted: &[Grant]) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for scope in wanted.iter() {
        let mut parts = scope.rsplitn(2, ':');
        let (Some(actions), Some(kind_name)) = (parts.next(), parts.next()) else { continue };
        let Some((kind, name)) = kind_name.split_once(':') else { continue };
        let have: Vec<&str> = granted
            .iter()
            .filter(|g| g.kind == kind && g.name == name)
            .flat_map(|g| g.actions.iter().map(String::as_str))
            .collect();
        let missing: Vec<String> =
            actions.split(',').filter(|a| !have.contains(a) && !have.contains(&"*")).map(str::to_string).collect();
        if !missing.is_empty() {
            out.push((kind.to_string(), name.to_string(), missing));
        }
    }
    out
}

/// A token service's answer.
#[derive(Deserialize)]
pub struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
    /// A new refresh token, when the service rotates them.
    pub refresh_token: Option<String>,
    /// The granted scope, when the service says (OAuth2 answers).
    pub scope: Option<String>,
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
    fn reads_every_challenge_of_every_header() {
        let base = Url::parse("https://r.example/").unwrap();
        let realm = Url::parse("https://auth.example/token").unwrap();
        let bearer = Challenge::Bearer { realm: realm.clone(), service: Some("r".into()) };
        let c = read_challenges([r#"Negotiate, Bearer realm="https://auth.example/token",service="r""#], &base);
        assert_eq!(c.chosen, Some(bearer.clone()));
        assert_eq!(c.schemes, ["Negotiate", "Bearer"]);
        // Basic first, Bearer later: Bearer wins
        let c = read_challenges([r#"Basic realm="x""#, r#"NTLM, bearer Realm="https://auth.example/token", service=r"#], &base);
        assert_eq!(c.chosen, Some(bearer));
        // Negotiate and Basic: Basic
        assert_eq!(read_challenges(["Negotiate", r#"Basic realm="x""#], &base).chosen, Some(Challenge::Basic));
        // Only unusable schemes, or nothing at all
        assert_eq!(read_challenges(["Negotiate", "NTLM"], &base).chosen, None);
        assert_eq!(read_challenges([], &base).chosen, None);
        // a syntax error after a good challenge keeps the good one
        assert_eq!(read_challenges([r#"Basic realm="x", error error"#], &base).chosen, Some(Challenge::Basic));
        // error and scope of an insufficient_scope answer
        let c = read_challenges(
            [r#"Bearer realm="/t",service="s",scope="repository:a/b:pull,push",error="insufficient_scope""#],
            &base,
        );
        assert_eq!(c.error.as_deref(), Some("insufficient_scope"));
        assert_eq!(c.scope.as_deref(), Some("repository:a/b:pull,push"));
    }

    #[test]
    fn decodes_jwt_access_and_finds_missing_push() {
        use base64::Engine;
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let payload = r#"{"iss":"x","access":[{"type":"repository","name":"a/b","actions":["pull"]}]}"#;
        let token = format!("{}.{}.{}", enc(r#"{"alg":"ES256"}"#), enc(payload), enc("sig"));
        let grants = jwt_access(&token).unwrap();
        let repo: RepoName = "a/b".parse().unwrap();
        assert_eq!(
            missing_actions(&Scopes::push(&repo), &grants),
            vec![("repository".to_string(), "a/b".to_string(), vec!["push".to_string()])]
        );
        assert_eq!(missing_actions(&Scopes::catalog(), &grants)[0].1, "catalog");
        assert!(missing_actions(&Scopes::pull(&repo), &grants).is_empty());
        assert_eq!(jwt_access("opaque-token"), None);
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
