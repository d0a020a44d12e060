//! Registry push events: the distribution registry's notification envelope
//! and Harbor's webhook payload, reduced to "this repository (and tag) of
//! this registry changed", and matched against the policies whose current
//! source covers it.
//!
//! Pure parsing and matching: no I/O. The daemon turns matches into
//! (coalesced) pass requests.

use serde::Deserialize;

use crate::policy::Policy;
use crate::registry::{RegistryUrl, RepoName, Tag};
use crate::registry::manifest::kind_of;

/// One change at a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoEvent {
    /// `host[:port]` the change was made at, when the payload says.
    pub host: Option<String>,
    pub repository: String,
    pub tag: Option<String>,
    /// A deletion rather than a push.
    pub delete: bool,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    events: Vec<DistributionEvent>,
}

#[derive(Deserialize)]
struct DistributionEvent {
    #[serde(default)]
    action: String,
    #[serde(default)]
    target: Target,
    #[serde(default)]
    request: RequestInfo,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Target {
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    repository: String,
    #[serde(default)]
    url: String,
    tag: Option<String>,
}

#[derive(Deserialize, Default)]
struct RequestInfo {
    #[serde(default)]
    host: String,
}

/// `host[:port]` of a URL (or of a bare `host/path` as Harbor writes them).
fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split('/').next()?.rsplit('@').next()?.to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

/// The changes in a distribution notification envelope that matter for
/// replication: tagged manifest pushes and deletions. Blob pushes, pulls
/// and manifest pushes by digest only (the children of an index, pushed
/// before its tag) are left out.
pub fn parse_distribution(body: &[u8]) -> Result<Vec<RepoEvent>, String> {
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| format!("not a notification envelope: {e}"))?;
    let mut out = Vec::new();
    for e in envelope.events {
        let t = &e.target;
        if t.repository.is_empty() {
            continue;
        }
        let manifest = t.url.contains("/manifests/") || kind_of(&crate::registry::manifest::normalise_media_type(&t.media_type)).is_some();
        let tag = t.tag.clone().filter(|t| !t.is_empty());
        let delete = match e.action.as_str() {
            "push" if manifest && tag.is_some() => false,
            "delete" if !t.url.contains("/blobs/") => true,
            _ => continue,
        };
        let host = Some(e.request.host.to_ascii_lowercase()).filter(|h| !h.is_empty()).or_else(|| host_of(&t.url));
        out.push(RepoEvent { host, repository: t.repository.clone(), tag, delete });
    }
    Ok(out)
}

#[derive(Deserialize)]
struct HarborPayload {
    #[serde(rename = "type", default)]
    kind: String,
    event_data: Option<HarborData>,
}

#[derive(Deserialize)]
struct HarborData {
    #[serde(default)]
    resources: Vec<HarborResource>,
    repository: Option<HarborRepository>,
}

#[derive(Deserialize)]
struct HarborResource {
    tag: Option<String>,
    resource_url: Option<String>,
}

#[derive(Deserialize)]
struct HarborRepository {
    repo_full_name: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
}

/// The changes in a Harbor webhook payload (`PUSH_ARTIFACT`,
/// `DELETE_ARTIFACT`); other event types give nothing.
pub fn parse_harbor(body: &[u8]) -> Result<Vec<RepoEvent>, String> {
    let p: HarborPayload = serde_json::from_slice(body).map_err(|e| format!("not a Harbor webhook payload: {e}"))?;
    let delete = match p.kind.as_str() {
        "PUSH_ARTIFACT" | "pushImage" => false,
        "DELETE_ARTIFACT" | "deleteImage" => true,
        _ => return Ok(Vec::new()),
    };
    let Some(data) = p.event_data else { return Ok(Vec::new()) };
    let repository = data.repository.and_then(|r| {
        r.repo_full_name.or_else(|| match (r.namespace, r.name) {
            (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
            (None, Some(n)) => Some(n),
            _ => None,
        })
    });
    let Some(repository) = repository else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for r in data.resources {
        let tag = r.tag.filter(|t| !t.is_empty());
        if tag.is_none() && !delete {
            continue;
        }
        let host = r.resource_url.as_deref().and_then(host_of);
        out.push(RepoEvent { host, repository: repository.clone(), tag, delete });
    }
    Ok(out)
}

/// Whether `host` names the registry at `url` (`host` and `host:443` are
/// the same https registry).
fn same_host(url: &RegistryUrl, host: &str) -> bool {
    same_name(url, &url.host_port(), host)
}

/// Whether `name` and `host` are one `host[:port]` of the registry at `url`
/// (its default port may be left out of either).
fn same_name(url: &RegistryUrl, name: &str, host: &str) -> bool {
    let default = if url.is_plain_http() { ":80" } else { ":443" };
    let strip = |h: &str| {
        let h = h.to_ascii_lowercase();
        h.strip_suffix(default).map(str::to_string).unwrap_or(h)
    };
    strip(name) == strip(host)
}

/// The repository name relative to the policy's current source prefix when
/// `event` is in the policy's scope; `None` otherwise. `reversed`: the
/// policy runs from its first destination back to its source.
pub fn relative_in_scope(policy: &Policy, reversed: bool, event: &RepoEvent) -> Option<String> {
    let (source, aliases) = match reversed {
        true => (policy.destinations.first()?.url(), &policy.destinations.first()?.aliases),
        false => (policy.source.url.clone(), &policy.source_aliases),
    };
    // The registry's own name, or another name of it (an IP, a front's hostname).
    if let Some(host) = &event.host
        && !same_host(&source, host)
        && !aliases.iter().any(|a| same_name(&source, a, host)) {
            return None;
        }
    let repo: RepoName = event.repository.parse().ok()?;
    let relative = repo.strip_prefix(source.prefix())?;
    // Globs match the names the policy's source gives (renames mapped back).
    let name = match reversed {
        true => policy.reverse(policy.destinations.first()?).scope.mapping.scope_name(relative.as_str()),
        false => relative.to_string(),
    };
    if !policy.repos.matches(&name) {
        return None;
    }
    if !reversed && !policy.source_repositories.is_empty() && !policy.source_repositories.iter().any(|r| r == relative.as_str()) {
        return None;
    }
    if let Some(tag) = &event.tag {
        // The rules name the policy's source's tags: a renamed DR tag by the
        // name it maps back to (`tags.rename`); one not fitting is not ours.
        let named = match (reversed, tag.parse::<Tag>()) {
            (true, Ok(t)) => policy.reverse(policy.destinations.first()?).scope.mapping.scope_tag(&t)?.to_string(),
            _ => tag.clone(),
        };
        if !policy.tags.covers(&named) {
            return None;
        }
    }
    Some(relative.to_string())
}

/// Compare two secrets in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_envelope_keeps_tagged_manifest_pushes_and_deletes() {
        let body = br#"{"events":[
          {"action":"push","target":{"mediaType":"application/octet-stream","repository":"team/app","url":"http://r:5000/v2/team/app/blobs/sha256:aa","digest":"sha256:aa"},"request":{"host":"r:5000"}},
          {"action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"team/app","url":"http://r:5000/v2/team/app/manifests/sha256:bb","digest":"sha256:bb"},"request":{"host":"r:5000"}},
          {"action":"push","target":{"mediaType":"application/vnd.oci.image.index.v1+json","repository":"team/app","url":"http://r:5000/v2/team/app/manifests/sha256:cc","tag":"v1"},"request":{"host":"R:5000"}},
          {"action":"pull","target":{"mediaType":"application/vnd.oci.image.index.v1+json","repository":"team/app","tag":"v1"}},
          {"action":"delete","target":{"repository":"team/old","digest":"sha256:dd"},"request":{"host":"r:5000"}}
        ]}"#;
        let events = parse_distribution(body).unwrap();
        assert_eq!(
            events,
            vec![
                RepoEvent { host: Some("r:5000".into()), repository: "team/app".into(), tag: Some("v1".into()), delete: false },
                RepoEvent { host: Some("r:5000".into()), repository: "team/old".into(), tag: None, delete: true },
            ]
        );
        assert!(parse_distribution(b"not json").is_err());
    }

    #[test]
    fn harbor_push_artifact() {
        let body = br#"{"type":"PUSH_ARTIFACT","occur_at":1,"operator":"admin","event_data":{
          "resources":[{"digest":"sha256:aa","tag":"v2","resource_url":"harbor.example.com/library/app:v2"}],
          "repository":{"name":"app","namespace":"library","repo_full_name":"library/app","repo_type":"private"}}}"#;
        let events = parse_harbor(body).unwrap();
        assert_eq!(
            events,
            vec![RepoEvent { host: Some("harbor.example.com".into()), repository: "library/app".into(), tag: Some("v2".into()), delete: false }]
        );
        assert!(parse_harbor(br#"{"type":"PULL_ARTIFACT","event_data":{}}"#).unwrap().is_empty());
    }

    #[test]
    fn events_for_another_name_of_the_registry_match_through_aliases() {
        let dir = tempfile::tempdir().unwrap();
        let text = "name: p\nsource:\n  registry: https://harbor.internal:8443\n  aliases: ['harbor.example.com', '10.0.0.5:8443']\n\
                    destinations:\n  - registry: https://dr.example.com\n    aliases: [10.0.0.9]\n";
        std::fs::write(dir.path().join("p.yaml"), text).unwrap();
        let set = crate::policy::load(dir.path(), &|_| None).unwrap();
        let policy = set.get("p").unwrap();
        let event = |host: &str| RepoEvent { host: Some(host.into()), repository: "team/app".into(), tag: Some("v1".into()), delete: false };
        for host in ["harbor.internal:8443", "harbor.example.com", "harbor.example.com:443", "10.0.0.5:8443"] {
            assert_eq!(relative_in_scope(policy, false, &event(host)).as_deref(), Some("team/app"), "{host}");
        }
        for host in ["harbor.internal", "10.0.0.5", "other.example.com", "10.0.0.9"] {
            assert_eq!(relative_in_scope(policy, false, &event(host)), None, "{host}");
        }
        // After a failover the DR registry's names count.
        assert_eq!(relative_in_scope(policy, true, &event("10.0.0.9")).as_deref(), Some("team/app"));
        let bad = "name: q\nsource:\n  registry: https://a\n  aliases: ['http://x/y']\ndestinations:\n  - registry: https://b\n";
        std::fs::write(dir.path().join("p.yaml"), bad).unwrap();
        let e = crate::policy::load(dir.path(), &|_| None).unwrap_err().to_string();
        assert!(e.contains("source.aliases[0]") && e.contains("is not a host[:port]"), "{e}");
    }

    #[test]
    fn a_failed_over_policy_matches_renamed_names_by_the_primary_s_globs() {
        let dir = tempfile::tempdir().unwrap();
        let text = "name: p\nsource: { registry: 'https://prod.example.com' }\ndestinations:\n  - { registry: 'https://dr.example.com', namespace: mirror }\n\
                    repositories:\n  include: ['team/**']\n  rename:\n    - { from: 'team/([^/]+)/([^/]+)', to: 'team-$1-$2' }\n";
        std::fs::write(dir.path().join("p.yaml"), text).unwrap();
        let set = crate::policy::load(dir.path(), &|_| None).unwrap();
        let policy = set.get("p").unwrap();
        let event = |host: &str, repo: &str| RepoEvent { host: Some(host.into()), repository: repo.into(), tag: Some("v1".into()), delete: false };
        // Forward: the primary's names; after a failover: DR's renamed names, matched as team/a/b.
        assert_eq!(relative_in_scope(policy, false, &event("prod.example.com", "team/a/b")).as_deref(), Some("team/a/b"));
        assert_eq!(relative_in_scope(policy, true, &event("dr.example.com", "mirror/team-a-b")).as_deref(), Some("team-a-b"));
        assert_eq!(relative_in_scope(policy, true, &event("dr.example.com", "mirror/other")), None, "other is outside team/**");
        let back = policy.reverse(&policy.destinations[0]);
        let name: crate::registry::RepoName = "mirror/team-a-b".parse().unwrap();
        assert_eq!(back.scope.mapping.map(&name).map(|n| n.to_string()).as_deref(), Some("team/a/b"));
    }

    #[test]
    fn a_failed_over_policy_matches_renamed_tags_by_the_primary_s_tag_rules() {
        let dir = tempfile::tempdir().unwrap();
        let text = "name: p\nsource: { registry: 'https://prod.example.com' }\ndestinations:\n  - { registry: 'https://dr.example.com' }\n\
                    tags:\n  include: ['v.*']\n  rename: '{tag}-dr'\n";
        std::fs::write(dir.path().join("p.yaml"), text).unwrap();
        let set = crate::policy::load(dir.path(), &|_| None).unwrap();
        let policy = set.get("p").unwrap();
        let event = |host: &str, tag: &str| RepoEvent { host: Some(host.into()), repository: "app".into(), tag: Some(tag.into()), delete: false };
        assert_eq!(relative_in_scope(policy, false, &event("prod.example.com", "v1")).as_deref(), Some("app"));
        assert_eq!(relative_in_scope(policy, false, &event("prod.example.com", "dev")), None);
        // After a failover DR's `v1-dr` is the primary's v1; DR's own tags are not the policy's.
        assert_eq!(relative_in_scope(policy, true, &event("dr.example.com", "v1-dr")).as_deref(), Some("app"));
        assert_eq!(relative_in_scope(policy, true, &event("dr.example.com", "v1")), None, "does not fit the template");
        assert_eq!(relative_in_scope(policy, true, &event("dr.example.com", "dev-dr")), None, "dev is outside the tag rules");
    }

    #[test]
    fn hosts_and_secrets() {
        let u = RegistryUrl::parse("https://reg.example.com/team").unwrap();
        assert!(same_host(&u, "REG.example.com:443"));
        assert!(!same_host(&u, "reg.example.com:5000"));
        assert!(constant_time_eq(b"Bearer x", b"Bearer x"));
        assert!(!constant_time_eq(b"Bearer x", b"Bearer y"));
        assert!(!constant_time_eq(b"Bearer", b"Bearer x"));
    }
}
