//! The OCI 1.1 referrers verbs: `GET /v2/<name>/referrers/<digest>` (with
//! the `artifactType` filter, `Link` paging) and what the referrers tag
//! schema needs to know — the fallback tag `sha256-<hex>` of a subject and
//! the OCI index it holds — plus the `OCI-Subject` answer of a manifest
//! `PUT`.
//!
//! Pure transport and document shapes: this module never decides which
//! referrers to copy and never writes a fallback tag itself (the engine
//! does that through the ordinary manifest verbs, so it works on any
//! backend). It never alters the bytes of a descriptor it passes on: entries
//! are kept as the JSON objects the registry sent (annotations and
//! `artifactType` included).

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{self, HeaderMap};
use serde_json::Value;

use super::auth::Scopes;
use super::client::{Request, RegistryClient, read_limited};
use super::digest::Digest;
use super::error::RegistryError;
use super::manifest::{MAX_MANIFEST_BYTES, OCI_INDEX, normalise_media_type};
use super::name::{Reference, RepoName, Tag};

/// Pages of a referrers listing followed at most (a loop guard).
const MAX_PAGES: usize = 100;

/// The referrers tag schema's tag for `subject`: `<alg>-<hex>` (truncated
/// to the 128 characters a tag may have).
pub fn fallback_tag(subject: &Digest) -> Tag {
    let mut name = subject.as_str().replacen(':', "-", 1);
    name.truncate(128);
    // A digest's algorithm and hex are tag characters; cannot fail.
    name.parse().unwrap_or_else(|_| "invalid".parse().expect("a literal tag"))
}

/// The subject whose fallback tag `tag` is (`sha256-<64 hex>`), if it is one.
pub fn fallback_subject(tag: &Tag) -> Option<Digest> {
    let hex = tag.as_str().strip_prefix("sha256-")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| format!("sha256:{hex}").parse().ok())
        .flatten()
}

/// The subject a cosign companion tag (`sha256-<hex>.sig|.att|.sbom`) belongs to.
pub fn companion_subject(tag: &Tag) -> Option<Digest> {
    if !tag.is_signature_companion() {
        return None;
    }
    let (base, _) = tag.as_str().rsplit_once('.')?;
    fallback_subject(&base.parse().ok()?)
}

/// A tag that only exists for another manifest: a referrers fallback tag
/// or a cosign companion. Returns that manifest's digest.
pub fn subject_of_tag(tag: &Tag) -> Option<Digest> {
    fallback_subject(tag).or_else(|| companion_subject(tag))
}

/// One entry of a referrers list: the descriptor as the registry wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferrerEntry {
    pub digest: Digest,
    pub media_type: Option<String>,
    pub artifact_type: Option<String>,
    /// The whole descriptor object, kept verbatim for the fallback index.
    pub raw: Value,
}

/// Why a referrers list could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferrersError {
    #[error("referrers list is not an OCI index: {0}")]
    NotAnIndex(String),
    #[error("referrers list entry {index} is unusable: {reason}")]
    BadEntry { index: usize, reason: String },
}

/// Parse the OCI index of a referrers response or fallback tag.
pub fn parse_index(bytes: &[u8]) -> Result<Vec<ReferrerEntry>, ReferrersError> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| ReferrersError::NotAnIndex(e.to_string()))?;
    if let Some(mt) = doc.get("mediaType").and_then(Value::as_str)
        && normalise_media_type(mt) != OCI_INDEX
    {
        return Err(ReferrersError::NotAnIndex(format!("mediaType is {mt:?}")));
    }
    let Some(list) = doc.get("manifests").and_then(Value::as_array) else {
        return Err(ReferrersError::NotAnIndex("no manifests array".into()));
    };
    let mut out = Vec::with_capacity(list.len());
    for (index, raw) in list.iter().enumerate() {
        let bad = |reason: String| ReferrersError::BadEntry { index, reason };
        let digest = raw.get("digest").and_then(Value::as_str).ok_or_else(|| bad("no digest".into()))?;
        let digest: Digest = digest.parse().map_err(|e: super::digest::DigestError| bad(e.to_string()))?;
        let text = |k: &str| raw.get(k).and_then(Value::as_str).map(str::to_string);
        out.push(ReferrerEntry { digest, media_type: text("mediaType"), artifact_type: text("artifactType"), raw: raw.clone() });
    }
    Ok(out)
}

/// The bytes of an OCI index listing `entries` (a fallback tag's content).
pub fn index_bytes(entries: &[&Value]) -> Bytes {
    let doc = serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries });
    Bytes::from(serde_json::to_vec(&doc).unwrap_or_default())
}

/// Keep the entries whose `artifactType` is one of `types` (all when empty).
pub fn filter(entries: Vec<ReferrerEntry>, types: &[String]) -> Vec<ReferrerEntry> {
    if types.is_empty() {
        return entries;
    }
    entries.into_iter().filter(|e| e.artifact_type.as_ref().is_some_and(|t| types.iter().any(|x| x == t))).collect()
}

/// What the referrers API answered.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiAnswer {
    /// The registry serves the API: these are the referrers (already
    /// filtered when `filtered` is true).
    Listed { entries: Vec<ReferrerEntry>, filtered: bool },
    /// `404` (or an answer that is not a referrers index): the registry does
    /// not serve the API; use the fallback tag.
    Unsupported,
}

/// Classify one referrers API response (status, `Content-Type`, body).
pub fn classify(status: u16, content_type: &str, body: &[u8]) -> Result<Option<Vec<ReferrerEntry>>, ReferrersError> {
    if status == 404 {
        return Ok(None);
    }
    let ct = normalise_media_type(content_type);
    if ct != OCI_INDEX && ct != "application/json" {
        // A front answering with its own page, or a registry that routes
        // the path elsewhere: not the API.
        return Ok(None);
    }
    parse_index(body).map(Some)
}

impl RegistryClient {
    /// `GET /v2/<repo>/referrers/<subject>`, every page. `artifact_type`
    /// asks the registry to filter (it says with `OCI-Filters-Applied`
    /// whether it did). `Unsupported` on `404` or a non-index answer.
    pub async fn referrers(&self, repo: &RepoName, subject: &Digest, artifact_type: Option<&str>) -> Result<ApiAnswer, RegistryError> {
        let mut url = self.endpoint_url(&format!("/v2/{repo}/referrers/{subject}"));
        if let Some(t) = artifact_type {
            url.query_pairs_mut().append_pair("artifactType", t);
        }
        let protocol = |message: String| RegistryError::Protocol { registry: self.name().to_string(), message };
        let mut entries = Vec::new();
        let mut filtered = artifact_type.is_some();
        for _ in 0..MAX_PAGES {
            let req = Request::new(Method::GET, url.clone(), Scopes::pull(repo)).header(header::ACCEPT, OCI_INDEX).also_ok(&[404]);
            let resp = self.send(&req).await?;
            let status = resp.status().as_u16();
            let headers: HeaderMap = resp.headers().clone();
            let next = super::listing::next_link(&resp, &url);
            let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let applied = headers.get("oci-filters-applied").and_then(|v| v.to_str().ok()).unwrap_or("");
            filtered &= applied.split(',').any(|f| f.trim() == "artifactType");
            let body = read_limited(resp, MAX_MANIFEST_BYTES + 1).await?;
            match classify(status, &content_type, &body) {
                Ok(None) if entries.is_empty() => return Ok(ApiAnswer::Unsupported),
                Ok(None) => return Err(protocol(format!("{repo}: a referrers page of {subject} answered {status}"))),
                Ok(Some(page)) => entries.extend(page),
                Err(e) => return Err(protocol(format!("{repo}: referrers of {subject}: {e}"))),
            }
            match next {
                Some(n) => url = n,
                None => return Ok(ApiAnswer::Listed { entries, filtered }),
            }
        }
        Err(protocol(format!("{repo}: the referrers of {subject} span more than {MAX_PAGES} pages")))
    }

    /// Like [`RegistryClient::put_manifest`], also returning the subject
    /// the registry says it indexed (`OCI-Subject` header): when present,
    /// the registry lists the manifest among its subject's referrers itself.
    pub async fn put_manifest_indexed(
        &self,
        repo: &RepoName,
        reference: &Reference,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<(Digest, Option<Digest>), RegistryError> {
        let (digest, headers) = self.put_manifest_headers(repo, reference, bytes, media_type).await?;
        let subject = headers.get("oci-subject").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
        Ok((digest, subject))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270";

    /// The example response of the distribution spec's "Listing Referrers".
    const SPEC_RESPONSE: &str = r#"{
      "schemaVersion": 2,
      "mediaType": "application/vnd.oci.image.index.v1+json",
      "manifests": [
        {
          "mediaType": "application/vnd.oci.image.manifest.v1+json",
          "size": 1234,
          "digest": "sha256:a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1",
          "artifactType": "application/vnd.example.sbom.v1",
          "annotations": { "org.opencontainers.image.created": "2022-01-01T14:42:55Z", "org.example.sbom.format": "json" }
        },
        {
          "mediaType": "application/vnd.oci.image.manifest.v1+json",
          "size": 1234,
          "digest": "sha256:a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2",
          "artifactType": "application/vnd.example.signature.v1",
          "annotations": { "org.opencontainers.image.created": "2022-01-01T07:21:33Z" }
        }
      ]
    }"#;

    #[test]
    fn tags_of_subjects() {
        let d: Digest = D.parse().unwrap();
        let t = fallback_tag(&d);
        assert_eq!(t.as_str(), D.replacen(':', "-", 1));
        assert_eq!(fallback_subject(&t), Some(d.clone()));
        assert_eq!(subject_of_tag(&t), Some(d.clone()));
        let sig: Tag = format!("{}.sig", t.as_str()).parse().unwrap();
        assert_eq!(fallback_subject(&sig), None);
        assert_eq!(companion_subject(&sig), Some(d.clone()));
        assert_eq!(subject_of_tag(&"latest".parse().unwrap()), None);
        assert_eq!(subject_of_tag(&"sha256-abc".parse().unwrap()), None);
        // Upper-case hex is not a digest.
        assert_eq!(fallback_subject(&D.replacen(':', "-", 1).to_uppercase().replacen("SHA256", "sha256", 1).parse().unwrap()), None);
    }

    #[test]
    fn the_spec_response_parses_and_filters() {
        let entries = parse_index(SPEC_RESPONSE.as_bytes()).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].artifact_type.as_deref(), Some("application/vnd.example.sbom.v1"));
        assert_eq!(entries[1].raw["annotations"]["org.opencontainers.image.created"], "2022-01-01T07:21:33Z");
        let sboms = filter(entries.clone(), &["application/vnd.example.sbom.v1".into()]);
        assert_eq!(sboms.len(), 1);
        assert_eq!(filter(entries.clone(), &[]).len(), 2);
        assert!(filter(entries, &["x/y".into()]).is_empty());
        // Rebuilt indexes keep the descriptors verbatim.
        let e = parse_index(SPEC_RESPONSE.as_bytes()).unwrap();
        let again = parse_index(&index_bytes(&e.iter().map(|e| &e.raw).collect::<Vec<_>>())).unwrap();
        assert_eq!(again, e);
    }

    #[test]
    fn status_codes_decide_support() {
        // Spec: a registry that does not serve the API answers 404.
        assert_eq!(classify(404, "text/plain", b"404 page not found"), Ok(None));
        // Spec: one that does answers 200 with an (possibly empty) index.
        let empty = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        assert_eq!(classify(200, OCI_INDEX, empty), Ok(Some(Vec::new())));
        assert_eq!(classify(200, OCI_INDEX, SPEC_RESPONSE.as_bytes()).unwrap().map(|e| e.len()), Some(2));
        // A front's HTML page is not the API.
        assert_eq!(classify(200, "text/html; charset=utf-8", b"<html>"), Ok(None));
        // An index that lies is an error, not an empty list.
        assert!(classify(200, OCI_INDEX, br#"{"manifests":[{"size":1}]}"#).is_err());
        assert!(classify(200, OCI_INDEX, br#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[]}"#).is_err());
    }
}
