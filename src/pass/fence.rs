//! The failover fence: a small marker that `failover` and `failback` write
//! into the registries themselves, so that the direction of a policy
//! survives the loss of the state database.
//!
//! The fence of policy `P` is an OCI artifact manifest (artifact type
//! [`ARTIFACT_TYPE`], an empty config, the facts in its annotations) tagged
//! `P` in the repository `<prefix>/regferry-fence` — inside the namespace
//! the policy already writes to, so the same credentials can write it. It
//! says which way the policy runs (`reversed` after a failover, `forward`
//! after a failback), when, and a generation that grows with every switch.
//! Every pass reads it at the DR site (one manifest `GET`) and refuses to
//! run when it contradicts the local state, or when the site does not
//! clearly say that there is none — the case of a fresh or restored
//! state database meeting a site that was failed over.
//!
//! The repository is reserved (`engine::discover::RESERVED_REPOSITORY`):
//! never replicated, verified or pruned. This module only reads and writes
//! the marker; it never decides a switch (that is `dr::failover`, above).

use bytes::Bytes;
use serde::Serialize;
use serde_json::json;

use crate::engine::discover::RESERVED_REPOSITORY;
use crate::policy::Policy;
use crate::registry::{ClientOptions, Digest, Endpoint, Reference, RegistryError, RepoName, Scopes, Tag};
use crate::scheme::Scheme;

/// The artifact type of a fence manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.regferry.fence.v1";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY: &[u8] = b"{}";
const KEY: &str = "io.regferry.fence";

/// What a fence says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fence {
    pub policy: String,
    /// The policy runs DR → primary (after a failover).
    pub reversed: bool,
    /// Grows by one with every switch written.
    pub generation: u64,
    /// When it was written (Unix ms).
    pub at: i64,
    /// The primary and the DR site as the policy names them (no credentials).
    pub primary: String,
    pub dr: String,
}

/// Why the fence could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("the fence repository name under {0:?} is not a valid repository name")]
    Name(String),
    #[error(transparent)]
    Registry(Box<RegistryError>),
    #[error("the fence {0} is not a regferry fence manifest")]
    Malformed(String),
}

impl From<RegistryError> for FenceError {
    fn from(e: RegistryError) -> FenceError {
        FenceError::Registry(Box::new(e))
    }
}

/// Where a site keeps fences: `<prefix>/regferry-fence`.
fn repository(prefix: &str) -> Result<RepoName, FenceError> {
    let name = if prefix.is_empty() { RESERVED_REPOSITORY.to_string() } else { format!("{prefix}/{RESERVED_REPOSITORY}") };
    name.parse().map_err(|_| FenceError::Name(prefix.to_string()))
}

/// The tag of `policy`'s fence (a policy name that cannot start a tag gets an `_`).
fn tag(policy: &str) -> Result<Tag, FenceError> {
    let starts_well = policy.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let name = if starts_well { policy.to_string() } else { format!("_{policy}") };
    name.parse().map_err(|_| FenceError::Name(policy.to_string()))
}

/// One side of a policy, as the fence sees it: its store (a registry or an
/// OCI layout) and the prefix.
pub struct Site {
    pub client: std::sync::Arc<dyn Scheme>,
    /// `registry/prefix`, for messages.
    pub url: String,
    /// The registry without the prefix.
    base: String,
    repo: RepoName,
}

impl Site {
    /// The site at `endpoint` (its URL carries the policy's prefix there).
    pub fn new(endpoint: &Endpoint, options: &ClientOptions) -> Result<Site, FenceError> {
        let client = crate::scheme::connect(endpoint, options, "fence")?;
        let repo = repository(endpoint.url.prefix())?;
        let base = endpoint.url.base().as_str().trim_end_matches('/').to_string();
        Ok(Site { client, url: endpoint.url.to_string(), base, repo })
    }

    /// The DR site of `policy` (its first destination, with its namespace).
    pub fn dr(policy: &Policy) -> Option<Result<Site, FenceError>> {
        let dr = policy.destinations.first()?;
        Some(Site::new(&policy.forward(dr).destination, &policy.client))
    }

    /// The primary of `policy` (its source, with its prefix).
    pub fn primary(policy: &Policy) -> Result<Site, FenceError> {
        Site::new(&policy.source, &policy.client)
    }

    /// Where the fence of `policy` lives here, e.g.
    /// `https://dr.example.com/mirror/regferry-fence:prod`.
    pub fn location(&self, policy: &str) -> String {
        match tag(policy) {
            Ok(t) => format!("{}/{}:{t}", self.base, self.repo),
            Err(_) => format!("{}/{}", self.base, self.repo),
        }
    }

    /// The fence of `policy` at this site; `None` only when the site clearly
    /// says there is no such manifest, and a `GET` confirms it (a front that
    /// answers `HEAD` with 404 for manifests that exist is not "no fence").
    /// Anything else — 401, 403, 5xx, a timeout, a body that is not a fence —
    /// is an error: the fence never fails open.
    pub async fn read(&self, policy: &str) -> Result<Option<Fence>, FenceError> {
        let tag = tag(policy)?;
        let reference = Reference::Tag(tag);
        let scopes = Scopes::pull(&self.repo);
        // One `GET` (never a `HEAD` alone: a front may answer it 404 for a
        // manifest that exists); a site without a fence costs what a `HEAD` would.
        let body = match self.client.get_manifest(&self.repo, &reference, &scopes).await {
            Ok(body) => body,
            Err(e) if absent(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        parse(&body.bytes).map(Some).ok_or_else(|| FenceError::Malformed(self.location(policy)))
    }

    /// Write `fence` here (replacing the one there).
    pub async fn write(&self, fence: &Fence) -> Result<(), FenceError> {
        let empty = Digest::sha256_of(EMPTY);
        let scopes = Scopes::push(&self.repo);
        if !self.client.blob_exists(&self.repo, &empty, &scopes).await? {
            let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(EMPTY))]);
            self.client.put_blob(&self.repo, &empty, Some(EMPTY.len() as u64), Box::pin(body)).await?;
        }
        let bytes = Bytes::from(manifest(fence, &empty));
        self.client.put_manifest(&self.repo, &Reference::Tag(tag(&fence.policy)?), bytes, MANIFEST_TYPE).await?;
        Ok(())
    }

    /// Whether this site answers at all.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        self.client.ping().await
    }

    /// Remove a fence (tests and operators cleaning up; a failback writes a
    /// `forward` fence instead of deleting, so that no delete permission is needed).
    pub async fn remove(&self, policy: &str) -> Result<(), FenceError> {
        let tag = tag(policy)?;
        let Some(head) = self.client.head_manifest(&self.repo, &Reference::Tag(tag), &Scopes::pull(&self.repo)).await? else { return Ok(()) };
        self.client.delete_manifest(&self.repo, &head.digest).await?;
        Ok(())
    }
}

/// A clear "no such manifest" (or repository): 404, or the registry's own
/// code for it. 401/403 are not: credentials that may not read the fence say
/// nothing about whether there is one.
fn absent(e: &RegistryError) -> bool {
    e.status() == Some(404) || ["MANIFEST_UNKNOWN", "NAME_UNKNOWN"].iter().any(|c| e.has_code(c))
}

fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The manifest bytes of `fence` (an OCI 1.1 artifact: empty config, one
/// empty layer, the facts in annotations — readable with any OCI tool).
fn manifest(fence: &Fence, empty: &Digest) -> Vec<u8> {
    let descriptor = json!({ "mediaType": EMPTY_TYPE, "digest": empty.as_str(), "size": EMPTY.len() });
    let v = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": descriptor,
        "layers": [descriptor],
        "annotations": {
            format!("{KEY}.policy"): fence.policy,
            format!("{KEY}.direction"): if fence.reversed { "reversed" } else { "forward" },
            format!("{KEY}.generation"): fence.generation.to_string(),
            format!("{KEY}.at"): fence.at.to_string(),
            format!("{KEY}.primary"): fence.primary,
            format!("{KEY}.dr"): fence.dr,
            "org.opencontainers.image.created": rfc3339(fence.at),
        },
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

fn parse(bytes: &[u8]) -> Option<Fence> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if v["artifactType"] != ARTIFACT_TYPE {
        return None;
    }
    let a = &v["annotations"];
    let get = |k: &str| a[format!("{KEY}.{k}")].as_str().map(str::to_string);
    Some(Fence {
        policy: get("policy")?,
        reversed: match get("direction")?.as_str() {
            "reversed" => true,
            "forward" => false,
            _ => return None,
        },
        generation: get("generation")?.parse().ok()?,
        at: get("at")?.parse().ok()?,
        primary: get("primary").unwrap_or_default(),
        dr: get("dr").unwrap_or_default(),
    })
}

/// Why a pass must not run with the local direction `reversed` when the DR
/// site's fence says otherwise; `None` when they agree.
pub fn refusal(fence: &Fence, reversed: bool, location: &str) -> Option<String> {
    if fence.reversed == reversed {
        return None;
    }
    let when = rfc3339(fence.at);
    let p = &fence.policy;
    Some(if fence.reversed {
        format!(
            "policy {p} was failed over to {} at {when} (fence {location}, generation {}), but this state database says it runs forward \
             (a new or restored state?): not replicating the old primary over the DR site. Run `regferry failover --policy {p}` to take over \
             the failed-over direction (DR → primary, no sync pass), or `regferry failback --policy {p}` to sync DR's changes back and run forward again",
            fence.dr, fence.generation
        )
    } else {
        format!(
            "policy {p} was failed back at {when} (fence {location}, generation {}), but this state database says it runs reversed \
             (a restored state?): not replicating the DR site over the primary. Run `regferry failback --policy {p}` to take over the forward direction (no sync pass)",
            fence.generation
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(reversed: bool) -> Fence {
        Fence { policy: "prod".into(), reversed, generation: 3, at: 1_700_000_000_000, primary: "http://p".into(), dr: "http://dr/m".into() }
    }

    #[test]
    fn a_fence_round_trips_through_its_manifest() {
        let f = fence(true);
        let bytes = manifest(&f, &Digest::sha256_of(EMPTY));
        assert_eq!(parse(&bytes), Some(f));
        assert_eq!(parse(br#"{"schemaVersion":2}"#), None, "another artifact is not a fence");
    }

    #[test]
    fn names_stay_inside_the_prefix_and_the_tag_grammar() {
        assert_eq!(repository("").unwrap().as_str(), "regferry-fence");
        assert_eq!(repository("mirror/team").unwrap().as_str(), "mirror/team/regferry-fence");
        assert_eq!(tag("prod").unwrap().as_str(), "prod");
        assert_eq!(tag(".hidden").unwrap().as_str(), "_.hidden");
    }

    #[test]
    fn a_pass_is_refused_only_when_the_fence_and_the_state_disagree() {
        assert!(refusal(&fence(true), true, "x").is_none());
        assert!(refusal(&fence(false), false, "x").is_none());
        let r = refusal(&fence(true), false, "m/regferry-fence:prod").unwrap();
        assert!(r.contains("regferry failover --policy prod") && r.contains("regferry failback --policy prod") && r.contains("generation 3"), "{r}");
        assert!(refusal(&fence(false), true, "x").unwrap().contains("failed back"));
    }
}
