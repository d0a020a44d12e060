//! OCI 1.1 referrers as clients such as `oras attach` make them: artifact
//! manifests carrying a `subject`, pushed by digest, then — on a registry
//! that does not answer the `PUT` with `OCI-Subject` — listed in the
//! subject's fallback tag `sha256-<hex>` (read, append, put back). And a
//! reader that lists referrers the spec's way: the referrers API, else the
//! fallback tag.
//!
//! Independent of regferry's code, so its checks cannot share a bug with it.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::client::Registry;
use crate::image::{Blob, Manifest, OCI_INDEX, OCI_MANIFEST, sha256};

/// The OCI empty descriptor's content type and bytes.
pub const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";

/// An artifact manifest of `artifact_type` about `subject`: config is the
/// empty descriptor, one layer of `payload`, `artifactType` set (OCI 1.1
/// image manifest, the form `oras attach` pushes).
pub fn artifact(subject: &Manifest, artifact_type: &str, payload: &str) -> Manifest {
    let config = Blob::new(EMPTY_TYPE, b"{}".to_vec());
    let layer = Blob::new(artifact_type, payload.as_bytes().to_vec());
    let value = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
        "subject": subject.descriptor(),
        "annotations": { "org.opencontainers.image.created": "2026-01-01T00:00:00Z" },
    });
    let bytes = serde_json::to_vec_pretty(&value).expect("manifest serialises");
    let digest = sha256(&bytes);
    Manifest { media_type: OCI_MANIFEST.to_string(), bytes, digest, blobs: vec![config, layer], children: Vec::new() }
}

/// `sha256-<hex>`: the fallback tag of `digest`.
pub fn fallback_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// The descriptor of `artifact` as a referrers list carries it.
pub fn referrer_descriptor(artifact: &Manifest, artifact_type: &str) -> Value {
    json!({
        "mediaType": artifact.media_type,
        "digest": artifact.digest,
        "size": artifact.bytes.len(),
        "artifactType": artifact_type,
        "annotations": { "org.opencontainers.image.created": "2026-01-01T00:00:00Z" },
    })
}

impl Registry {
    /// Attach `artifact` (whose subject is `subject_digest`) to `repo` like
    /// `oras attach`: blobs, the manifest by digest, then the fallback tag
    /// unless the registry answered `OCI-Subject`.
    pub async fn attach(&self, repo: &str, subject_digest: &str, artifact: &Manifest, artifact_type: &str) {
        for b in &artifact.blobs {
            self.push_blob(repo, b).await;
        }
        let resp = self.put_manifest(repo, &artifact.digest, &artifact.media_type, &artifact.bytes).await;
        let indexed = resp.headers().get("oci-subject").is_some();
        assert_eq!(resp.status(), StatusCode::CREATED, "attach {repo}@{}: {}", artifact.digest, resp.text().await.unwrap_or_default());
        if indexed {
            return;
        }
        let tag = fallback_tag(subject_digest);
        let mut entries: Vec<Value> = match self.get_manifest(repo, &tag).await {
            Some((bytes, _)) => serde_json::from_slice::<Value>(&bytes).expect("fallback index is JSON")["manifests"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            None => Vec::new(),
        };
        entries.push(referrer_descriptor(artifact, artifact_type));
        let index = serde_json::to_vec(&json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries })).expect("index");
        let resp = self.put_manifest(repo, &tag, OCI_INDEX, &index).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "fallback tag {repo}:{tag}: {}", resp.text().await.unwrap_or_default());
    }

    /// The referrers of `repo@subject_digest`, the spec's way: the API
    /// when the registry serves it, else the fallback tag's index.
    /// Returns the descriptors.
    pub async fn referrers(&self, repo: &str, subject_digest: &str) -> Vec<Value> {
        if let Some(list) = self.referrers_api(repo, subject_digest).await {
            return list;
        }
        match self.get_manifest(repo, &fallback_tag(subject_digest)).await {
            Some((bytes, _)) => serde_json::from_slice::<Value>(&bytes).expect("fallback index is JSON")["manifests"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// `GET /v2/<repo>/referrers/<digest>`: `None` when not served (404).
    pub async fn referrers_api(&self, repo: &str, subject_digest: &str) -> Option<Vec<Value>> {
        let url = format!("{}/v2/{repo}/referrers/{subject_digest}", self.base);
        let resp = reqwest::Client::new().get(url).header("accept", OCI_INDEX).send().await.expect("GET referrers");
        let is_index = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|c| c.starts_with(OCI_INDEX));
        if resp.status() != StatusCode::OK || !is_index {
            return None;
        }
        let doc: Value = resp.json().await.expect("referrers JSON");
        Some(doc["manifests"].as_array().cloned().unwrap_or_default())
    }
}

/// The digests of a referrers list.
pub fn digests(list: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = list.iter().filter_map(|d| d["digest"].as_str().map(str::to_string)).collect();
    out.sort();
    out
}
