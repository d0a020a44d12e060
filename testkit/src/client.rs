//! A deliberately simple registry client for tests and benchmarks: pushes
//! synthetic images and reads registries back to compare them.
//!
//! It shares no code with regferry's own transport, so a bug there cannot
//! hide itself in the checks made here.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;

use crate::image::{Blob, Manifest, random_bytes, sha256};
use crate::token::TokenServer;

pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// How the test client authenticates.
#[derive(Clone, Default)]
pub enum Access {
    #[default]
    Anonymous,
    Basic(String, String),
    /// Mint tokens straight from the test token service.
    Token(Arc<TokenServer>),
}

/// A test client for one registry.
#[derive(Clone)]
pub struct Registry {
    http: reqwest::Client,
    pub base: String,
    access: Access,
}

/// Tag → (digest, media type).
pub type TagMap = BTreeMap<String, (String, String)>;

fn ensure_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Registry {
    pub fn new(base: &str, access: Access) -> Registry {
        ensure_crypto();
        let http = reqwest::Client::builder()
            .user_agent("regferry-testkit")
            .danger_accept_invalid_certs(true)
            .pool_max_idle_per_host(16)
            .build()
            .expect("http client");
        Registry { http, base: base.trim_end_matches('/').to_string(), access }
    }

    fn auth(&self, repo: &str, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.access {
            Access::Anonymous => rb,
            Access::Basic(u, p) => rb.basic_auth(u, Some(p)),
            Access::Token(server) => {
                let token = if repo.is_empty() {
                    server.mint(&[("registry", "catalog", "*")])
                } else {
                    server.mint(&[("repository", repo, "pull,push,delete")])
                };
                rb.bearer_auth(token)
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn blob_exists(&self, repo: &str, digest: &str) -> bool {
        let resp = self.auth(repo, self.http.head(self.url(&format!("/v2/{repo}/blobs/{digest}")))).send().await.expect("HEAD blob");
        resp.status().is_success()
    }

    async fn upload(&self, repo: &str, digest: &str, size: u64, body: reqwest::Body) {
        let resp = self.auth(repo, self.http.post(self.url(&format!("/v2/{repo}/blobs/uploads/")))).send().await.expect("POST upload");
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "POST upload to {repo}");
        let location = resp.headers()["location"].to_str().expect("location").to_string();
        let mut url = reqwest::Url::parse(&self.base).expect("base").join(&location).expect("location url");
        url.query_pairs_mut().append_pair("digest", digest);
        let resp = self
            .auth(repo, self.http.put(url))
            .header("content-type", "application/octet-stream")
            .header("content-length", size)
            .body(body)
            .send()
            .await
            .expect("PUT upload");
        assert_eq!(resp.status(), StatusCode::CREATED, "PUT blob {digest} to {repo}: {}", resp.text().await.unwrap_or_default());
    }

    pub async fn push_blob(&self, repo: &str, blob: &Blob) {
        if self.blob_exists(repo, &blob.digest).await {
            return;
        }
        self.upload(repo, &blob.digest, blob.bytes.len() as u64, reqwest::Body::from(blob.bytes.clone())).await;
    }

    /// Push a large pseudo-random blob without holding it in memory.
    /// Returns its digest.
    pub async fn push_random_blob(&self, repo: &str, seed: &str, size: u64) -> String {
        const CHUNK: usize = 1 << 20;
        let seed = seed.to_string();
        let chunk_seed = move |i: u64| format!("{seed}/{i}");
        let chunks = size.div_ceil(CHUNK as u64);
        let mut hasher = sha2::Sha256::default();
        for i in 0..chunks {
            let len = (size - i * CHUNK as u64).min(CHUNK as u64) as usize;
            sha2::Digest::update(&mut hasher, random_bytes(&chunk_seed(i), len));
        }
        let digest = format!("sha256:{}", hex::encode(sha2::Digest::finalize(hasher)));
        if !self.blob_exists(repo, &digest).await {
            let chunk_seed = chunk_seed.clone();
            let stream = futures::stream::iter(0..chunks).map(move |i| {
                let len = (size - i * CHUNK as u64).min(CHUNK as u64) as usize;
                Ok::<_, std::io::Error>(bytes::Bytes::from(random_bytes(&chunk_seed(i), len)))
            });
            self.upload(repo, &digest, size, reqwest::Body::wrap_stream(stream)).await;
        }
        digest
    }

    pub async fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) -> reqwest::Response {
        self.auth(repo, self.http.put(self.url(&format!("/v2/{repo}/manifests/{reference}"))))
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .expect("PUT manifest")
    }

    /// Push a manifest tree (blobs, children by digest) and tag it.
    pub async fn push(&self, repo: &str, tag: &str, manifest: &Manifest) {
        self.push_tree(repo, manifest).await;
        let resp = self.put_manifest(repo, tag, &manifest.media_type, &manifest.bytes).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "push {repo}:{tag}: {}", resp.text().await.unwrap_or_default());
    }

    async fn push_tree(&self, repo: &str, manifest: &Manifest) {
        for b in &manifest.blobs {
            self.push_blob(repo, b).await;
        }
        for child in &manifest.children {
            Box::pin(self.push_tree(repo, child)).await;
            let resp = self.put_manifest(repo, &child.digest, &child.media_type, &child.bytes).await;
            assert_eq!(resp.status(), StatusCode::CREATED, "push child {}", child.digest);
        }
    }

    pub async fn delete_manifest(&self, repo: &str, digest: &str) {
        let resp = self.auth(repo, self.http.delete(self.url(&format!("/v2/{repo}/manifests/{digest}")))).send().await.expect("DELETE");
        assert!(resp.status().is_success(), "delete {repo}@{digest}: {}", resp.status());
    }

    pub async fn catalog(&self) -> Vec<String> {
        self.list("", "/v2/_catalog?n=1000", "repositories").await
    }

    pub async fn tags(&self, repo: &str) -> Vec<String> {
        let mut tags = self.list(repo, &format!("/v2/{repo}/tags/list?n=1000"), "tags").await;
        tags.sort();
        tags
    }

    /// Follow `Link: <next>; rel="next"` pages (registries cap `n` at 1000).
    async fn list(&self, repo: &str, first: &str, field: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut next = Some(first.to_string());
        while let Some(path) = next.take() {
            let resp = self.auth(repo, self.http.get(self.url(&path))).send().await.expect("listing");
            if resp.status() == StatusCode::NOT_FOUND {
                break;
            }
            assert!(resp.status().is_success(), "listing {path}: {}", resp.status());
            next = resp
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(|l| l.split(';').next())
                .map(|l| l.trim().trim_start_matches('<').trim_end_matches('>').to_string());
            let v: Value = resp.json().await.expect("listing json");
            out.extend(v[field].as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)));
        }
        out
    }

    /// Digest and media type of `repo:reference` by HEAD, or None.
    pub async fn head(&self, repo: &str, reference: &str) -> Option<(String, String)> {
        let resp = self
            .auth(repo, self.http.head(self.url(&format!("/v2/{repo}/manifests/{reference}"))))
            .header("accept", ACCEPT)
            .send()
            .await
            .expect("HEAD manifest");
        if !resp.status().is_success() {
            return None;
        }
        let h = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        Some((h("docker-content-digest"), h("content-type")))
    }

    /// Exact bytes and content type of a manifest.
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Option<(Vec<u8>, String)> {
        let resp = self
            .auth(repo, self.http.get(self.url(&format!("/v2/{repo}/manifests/{reference}"))))
            .header("accept", ACCEPT)
            .send()
            .await
            .expect("GET manifest");
        if !resp.status().is_success() {
            return None;
        }
        let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        Some((resp.bytes().await.expect("manifest body").to_vec(), ct))
    }

    /// Every tag of `repo` with digest and media type.
    pub async fn tag_map(&self, repo: &str) -> TagMap {
        let mut out = TagMap::new();
        for t in self.tags(repo).await {
            if let Some(h) = self.head(repo, &t).await {
                out.insert(t, h);
            }
        }
        out
    }

    /// Problems found walking `repo@reference` deeply: every child manifest
    /// and blob must exist (and manifests must hash to their digest).
    pub async fn missing_content(&self, repo: &str, reference: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let mut stack = vec![reference.to_string()];
        while let Some(r) = stack.pop() {
            let Some((bytes, _)) = self.get_manifest(repo, &r).await else {
                problems.push(format!("{repo}@{r}: manifest missing"));
                continue;
            };
            if r.starts_with("sha256:") && sha256(&bytes) != r {
                problems.push(format!("{repo}@{r}: manifest bytes do not match digest"));
            }
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if let Some(children) = v["manifests"].as_array() {
                stack.extend(children.iter().filter_map(|c| c["digest"].as_str().map(String::from)));
            }
            let mut blobs: Vec<String> = Vec::new();
            if let Some(d) = v["config"]["digest"].as_str() {
                blobs.push(d.to_string());
            }
            if let Some(layers) = v["layers"].as_array() {
                blobs.extend(layers.iter().filter_map(|l| l["digest"].as_str().map(String::from)));
            }
            for b in blobs {
                if !self.blob_exists(repo, &b).await {
                    problems.push(format!("{repo}@{r}: blob {b} missing"));
                }
            }
        }
        problems
    }
}

/// `user:pass` as a basic auth header value (for tests that need it raw).
pub fn basic(user: &str, pass: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
}
