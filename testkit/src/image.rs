//! Synthetic images built in memory: deterministic layers (same seed, same
//! bytes, same digest), Docker schema2 and OCI manifests, Docker manifest
//! lists and OCI indexes, and cosign-style signature manifests.
//!
//! Layers are pseudo-random bytes, not real tarballs: registries do not look
//! inside blobs, and random bytes make every digest distinct.

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A blob with its bytes (shared, so images that reuse a layer do not copy it).
#[derive(Debug, Clone)]
pub struct Blob {
    pub media_type: String,
    pub bytes: bytes::Bytes,
    pub digest: String,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        let digest = sha256(&bytes);
        Blob { media_type: media_type.to_string(), bytes: bytes.into(), digest }
    }

    pub fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len() })
    }
}

/// Deterministic pseudo-random bytes (xorshift seeded from the seed's hash).
pub fn random_bytes(seed: &str, size: usize) -> Vec<u8> {
    let h = Sha256::digest(seed.as_bytes());
    let mut state = u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(size);
    out
}

/// Which flavour of image manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Docker,
    Oci,
}

impl Flavor {
    fn layer_type(self) -> &'static str {
        match self {
            Flavor::Docker => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Flavor::Oci => "application/vnd.oci.image.layer.v1.tar+gzip",
        }
    }

    fn config_type(self) -> &'static str {
        match self {
            Flavor::Docker => "application/vnd.docker.container.image.v1+json",
            Flavor::Oci => "application/vnd.oci.image.config.v1+json",
        }
    }

    pub fn manifest_type(self) -> &'static str {
        match self {
            Flavor::Docker => DOCKER_MANIFEST,
            Flavor::Oci => OCI_MANIFEST,
        }
    }

    pub fn index_type(self) -> &'static str {
        match self {
            Flavor::Docker => DOCKER_LIST,
            Flavor::Oci => OCI_INDEX,
        }
    }
}

/// A layer blob of `size` bytes from `seed`.
pub fn layer(flavor: Flavor, seed: &str, size: usize) -> Blob {
    Blob::new(flavor.layer_type(), random_bytes(seed, size))
}

/// A manifest (image or index) with its exact bytes and what it needs.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub digest: String,
    /// Blobs this manifest (not its children) references.
    pub blobs: Vec<Blob>,
    /// Child manifests (indexes).
    pub children: Vec<Manifest>,
}

impl Manifest {
    fn from_json(media_type: &str, value: &Value, blobs: Vec<Blob>, children: Vec<Manifest>) -> Manifest {
        let bytes = serde_json::to_vec_pretty(value).expect("manifest serialises");
        let digest = sha256(&bytes);
        Manifest { media_type: media_type.to_string(), bytes, digest, blobs, children }
    }

    pub fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len() })
    }

    /// Every blob in the tree, children included.
    pub fn all_blobs(&self) -> Vec<&Blob> {
        let mut out: Vec<&Blob> = self.blobs.iter().collect();
        for c in &self.children {
            out.extend(c.all_blobs());
        }
        out
    }
}

/// An image manifest with a config derived from `name` and the given layers.
pub fn image(flavor: Flavor, name: &str, layers: Vec<Blob>) -> Manifest {
    let descriptors = layers.iter().map(Blob::descriptor).collect();
    image_from(flavor, name, descriptors, layers)
}

/// An image whose layers are given as (digest, size) only, for blobs pushed
/// separately by streaming (the manifest carries just the config blob).
pub fn image_with_external_layers(flavor: Flavor, name: &str, layers: &[(String, u64)]) -> Manifest {
    let descriptors = layers.iter().map(|(d, s)| json!({ "mediaType": flavor.layer_type(), "digest": d, "size": s })).collect();
    image_from(flavor, name, descriptors, Vec::new())
}

fn image_from(flavor: Flavor, name: &str, layer_descriptors: Vec<Value>, layers: Vec<Blob>) -> Manifest {
    let diff_ids: Vec<Value> = layer_descriptors.iter().map(|d| d["digest"].clone()).collect();
    let config = Blob::new(
        flavor.config_type(),
        serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "config": { "Labels": { "regferry.test": name } },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        }))
        .expect("config serialises"),
    );
    let value = json!({
        "schemaVersion": 2,
        "mediaType": flavor.manifest_type(),
        "config": config.descriptor(),
        "layers": layer_descriptors,
    });
    let mut blobs = vec![config];
    blobs.extend(layers);
    Manifest::from_json(flavor.manifest_type(), &value, blobs, Vec::new())
}

/// A multi-platform index over `children` (one per architecture).
pub fn index(flavor: Flavor, children: Vec<(Manifest, &str)>) -> Manifest {
    let entries: Vec<Value> = children
        .iter()
        .map(|(m, arch)| {
            let mut d = m.descriptor();
            d["platform"] = json!({ "architecture": arch, "os": "linux" });
            d
        })
        .collect();
    let value = json!({ "schemaVersion": 2, "mediaType": flavor.index_type(), "manifests": entries });
    Manifest::from_json(flavor.index_type(), &value, Vec::new(), children.into_iter().map(|(m, _)| m).collect())
}

/// An index over `children`, each with its platform written
/// `os/architecture[/variant]` (e.g. `linux/arm/v7`, `windows/amd64`).
pub fn platform_index(flavor: Flavor, children: Vec<(Manifest, &str)>) -> Manifest {
    let entries: Vec<Value> = children
        .iter()
        .map(|(m, platform)| {
            let parts: Vec<&str> = platform.split('/').collect();
            let mut p = json!({ "architecture": parts[1], "os": parts[0] });
            if let Some(v) = parts.get(2) {
                p["variant"] = json!(v);
            }
            let mut d = m.descriptor();
            d["platform"] = p;
            d
        })
        .collect();
    let value = json!({ "schemaVersion": 2, "mediaType": flavor.index_type(), "manifests": entries });
    Manifest::from_json(flavor.index_type(), &value, Vec::new(), children.into_iter().map(|(m, _)| m).collect())
}

/// A cosign-style signature: an OCI manifest whose layer is the signed
/// payload, carrying `subject` pointing at the signed manifest. Push it at
/// the tag from [`signature_tag`].
pub fn signature(subject: &Manifest) -> Manifest {
    let payload = Blob::new(
        "application/vnd.dev.cosign.simplesigning.v1+json",
        serde_json::to_vec(&json!({ "critical": { "image": { "docker-manifest-digest": subject.digest } } }))
            .expect("payload serialises"),
    );
    let config = Blob::new("application/vnd.oci.image.config.v1+json", b"{}".to_vec());
    let mut layer = payload.descriptor();
    layer["annotations"] = json!({ "dev.cosignproject.cosign/signature": "MEUCIQDfakesignature" });
    let value = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer],
        "subject": subject.descriptor(),
    });
    Manifest::from_json(OCI_MANIFEST, &value, vec![config, payload], Vec::new())
}

/// `sha256-<hex>.sig` for the manifest with `digest`.
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}

/// A raw manifest from arbitrary bytes (for bad-input tests).
pub fn raw(media_type: &str, bytes: Vec<u8>) -> Manifest {
    let digest = sha256(&bytes);
    Manifest { media_type: media_type.to_string(), bytes, digest, blobs: Vec::new(), children: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic() {
        assert_eq!(random_bytes("a", 100), random_bytes("a", 100));
        assert_ne!(random_bytes("a", 100), random_bytes("b", 100));
        let a = image(Flavor::Oci, "x", vec![layer(Flavor::Oci, "l", 10)]);
        let b = image(Flavor::Oci, "x", vec![layer(Flavor::Oci, "l", 10)]);
        assert_eq!(a.digest, b.digest);
    }
}
