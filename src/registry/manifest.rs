//! Manifest media types and the little of a manifest's JSON a mirror needs:
//! what it references (child manifests, config, layers, subject).
//!
//! Manifests are never re-serialised: the bytes that came from the source are
//! the bytes that go to the destination, so digests stay identical. This
//! module only reads them, and refuses what it cannot understand with a
//! precise reason rather than guessing.

use serde::Deserialize;

use super::digest::{Digest, DigestError};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const OCI_ARTIFACT: &str = "application/vnd.oci.artifact.manifest.v1+json";

/// The `Accept` header sent on every manifest `GET`/`HEAD`: every type we can
/// copy, so no registry feels entitled to convert.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.oci.artifact.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.5, \
application/vnd.docker.distribution.manifest.v1+json;q=0.5";

/// Registries refuse manifests above this size, and so do we.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Why a manifest could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    NotJson(String),
    #[error("manifest has no usable media type (no Content-Type, no mediaType field, and its shape is not recognisable)")]
    NoMediaType,
    #[error("unsupported manifest media type {0:?}")]
    UnknownMediaType(String),
    #[error("manifest lacks schemaVersion 2 (found {0:?})")]
    SchemaVersion(Option<i64>),
    #[error("manifest mediaType field {field:?} contradicts its Content-Type {header:?}")]
    MediaTypeConflict { field: String, header: String },
    #[error("manifest is {0} bytes, above the 4 MiB limit")]
    TooLarge(usize),
    #[error("manifest references a malformed digest {value:?}: {reason}")]
    BadDigest { value: String, reason: &'static str },
    #[error("manifest is missing required field {0:?}")]
    MissingField(&'static str),
}

/// What kind of document a manifest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// OCI index or Docker manifest list: references child manifests.
    Index,
    /// An image (or artifact) manifest: references blobs.
    Image,
}

/// The media type of a manifest, normalised (parameters stripped).
pub fn normalise_media_type(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Whether a manifest media type is one we know how to copy.
pub fn kind_of(media_type: &str) -> Option<Kind> {
    match media_type {
        OCI_INDEX | DOCKER_LIST => Some(Kind::Index),
        OCI_MANIFEST | DOCKER_MANIFEST | DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED | OCI_ARTIFACT => Some(Kind::Image),
        _ => None,
    }
}

/// A reference to content inside a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: Option<String>,
    pub digest: Digest,
    pub size: Option<u64>,
    /// A layer that names `urls`: clients fetch it from there, the registry
    /// need not hold it, and we do not copy it. A non-distributable media
    /// type alone does not make a layer foreign: without `urls` the
    /// registry serves it like any blob, and the destination refuses the
    /// manifest unless it holds it too.
    pub foreign: bool,
}

/// A parsed manifest: its kind, its media type, and what it references.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub kind: Kind,
    pub media_type: String,
    /// Child manifests (indexes only).
    pub manifests: Vec<Descriptor>,
    /// Blobs: config first, then layers (images only). Deduplicated.
    pub blobs: Vec<Descriptor>,
    /// The manifest this one refers to (OCI 1.1 `subject`), if any.
    pub subject: Option<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<serde_json::Value>,
    media_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
    blobs: Option<Vec<RawDescriptor>>,
    subject: Option<RawDescriptor>,
    fs_layers: Option<Vec<RawFsLayer>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: Option<String>,
    size: Option<i64>,
    urls: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawFsLayer {
    blob_sum: Option<String>,
}

fn is_generic(content_type: &str) -> bool {
    matches!(content_type, "" | "application/json" | "text/plain" | "application/octet-stream" | "binary/octet-stream")
}

fn bad_digest(e: DigestError) -> ManifestError {
    ManifestError::BadDigest { value: e.value, reason: e.reason }
}

fn descriptor(raw: RawDescriptor) -> Result<Descriptor, ManifestError> {
    let digest_str = raw.digest.ok_or(ManifestError::MissingField("digest"))?;
    let digest = digest_str.parse().map_err(bad_digest)?;
    let foreign = raw.urls.as_ref().is_some_and(|u| !u.is_empty());
    Ok(Descriptor { media_type: raw.media_type, digest, size: raw.size.and_then(|s| u64::try_from(s).ok()), foreign })
}

/// Parse `bytes` as a manifest served with `content_type` (which may be
/// empty or generic, in which case the body decides).
pub fn parse(bytes: &[u8], content_type: &str) -> Result<Parsed, ManifestError> {
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge(bytes.len()));
    }
    let raw: RawManifest = serde_json::from_slice(bytes).map_err(|e| ManifestError::NotJson(e.to_string()))?;
    let header = normalise_media_type(content_type);
    let field = raw.media_type.as_deref().map(normalise_media_type);

    let media_type = if !is_generic(&header) {
        if let Some(f) = &field {
            // Docker schema1 bodies carry no mediaType; OCI bodies must agree.
            if f != &header && kind_of(f).is_some() {
                return Err(ManifestError::MediaTypeConflict { field: f.clone(), header });
            }
        }
        header
    } else if let Some(f) = field {
        f
    } else if raw.manifests.is_some() {
        OCI_INDEX.to_string()
    } else if raw.config.is_some() && raw.layers.is_some() {
        OCI_MANIFEST.to_string()
    } else {
        return Err(ManifestError::NoMediaType);
    };
    let kind = kind_of(&media_type).ok_or_else(|| ManifestError::UnknownMediaType(media_type.clone()))?;

    let schema1 = media_type == DOCKER_SCHEMA1 || media_type == DOCKER_SCHEMA1_SIGNED;
    let schema_version = raw.schema_version.as_ref().and_then(|v| v.as_i64());
    if media_type != OCI_ARTIFACT && !schema1 && schema_version != Some(2) {
        return Err(ManifestError::SchemaVersion(schema_version));
    }

    let subject = raw.subject.map(descriptor).transpose()?;
    let mut parsed = Parsed { kind, media_type: media_type.clone(), manifests: Vec::new(), blobs: Vec::new(), subject };
    match kind {
        Kind::Index => {
            let list = raw.manifests.ok_or(ManifestError::MissingField("manifests"))?;
            for d in list {
                parsed.manifests.push(descriptor(d)?);
            }
        }
        Kind::Image if schema1 => {
            for l in raw.fs_layers.ok_or(ManifestError::MissingField("fsLayers"))? {
                let s = l.blob_sum.ok_or(ManifestError::MissingField("blobSum"))?;
                let digest = s.parse().map_err(bad_digest)?;
                parsed.blobs.push(Descriptor { media_type: None, digest, size: None, foreign: false });
            }
        }
        Kind::Image if media_type == OCI_ARTIFACT => {
            for d in raw.blobs.unwrap_or_default() {
                parsed.blobs.push(descriptor(d)?);
            }
        }
        Kind::Image => {
            parsed.blobs.push(descriptor(raw.config.ok_or(ManifestError::MissingField("config"))?)?);
            for d in raw.layers.ok_or(ManifestError::MissingField("layers"))? {
                parsed.blobs.push(descriptor(d)?);
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    parsed.blobs.retain(|d| seen.insert(d.digest.clone()));
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn image_and_index() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"x","digest":"{D1}","size":3}},
            "layers":[{{"mediaType":"l","digest":"{D2}","size":5}},{{"mediaType":"l","digest":"{D2}","size":5}}]}}"#
        );
        let p = parse(body.as_bytes(), DOCKER_MANIFEST).unwrap();
        assert_eq!(p.kind, Kind::Image);
        assert_eq!(p.blobs.len(), 2, "duplicate layers are copied once");

        let idx = format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":10}}]}}"#);
        let p = parse(idx.as_bytes(), "application/json").unwrap();
        assert_eq!(p.media_type, OCI_INDEX);
        assert_eq!(p.manifests.len(), 1);
    }

    #[test]
    fn precise_failures() {
        assert!(matches!(parse(b"not json", OCI_MANIFEST), Err(ManifestError::NotJson(_))));
        assert_eq!(parse(br#"{"schemaVersion":2}"#, "").unwrap_err(), ManifestError::NoMediaType);
        assert_eq!(
            parse(br#"{"schemaVersion":2}"#, "application/x-weird").unwrap_err(),
            ManifestError::UnknownMediaType("application/x-weird".into())
        );
        let bad = r#"{"schemaVersion":2,"config":{"digest":"sha256:zz"},"layers":[]}"#.to_string();
        assert_eq!(
            parse(bad.as_bytes(), OCI_MANIFEST).unwrap_err().to_string(),
            r#"manifest references a malformed digest "sha256:zz": encoded part must be lowercase hex of the algorithm's length"#
        );
        let nov = format!(r#"{{"config":{{"digest":"{D1}"}},"layers":[]}}"#);
        assert_eq!(parse(nov.as_bytes(), OCI_MANIFEST).unwrap_err(), ManifestError::SchemaVersion(None));
        let big = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(parse(&big, OCI_MANIFEST), Err(ManifestError::TooLarge(_))));
    }

    #[test]
    fn foreign_layers_are_marked() {
        let body = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{D1}","size":1}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{D2}","size":5,"urls":["https://example.com/x"]}}]}}"#
        );
        let p = parse(body.as_bytes(), DOCKER_MANIFEST).unwrap();
        assert!(p.blobs[1].foreign);
        assert!(!p.blobs[0].foreign);

        // Non-distributable media type without urls: an ordinary blob to copy.
        let body = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{D1}","size":1}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip","digest":"{D2}","size":5}}]}}"#
        );
        let p = parse(body.as_bytes(), OCI_MANIFEST).unwrap();
        assert!(!p.blobs[1].foreign);
    }
}
