//! Cosign key-pair signatures, checked offline: a public key file
//! (`cosign.pub`, PEM `PUBLIC KEY`, ECDSA P-256), and one signature layer
//! of a cosign signature manifest (the simple-signing payload and the
//! base64 `dev.cosignproject.cosign/signature` annotation), judged against
//! the digest of the tag it is meant to sign.
//!
//! Follows cosign's SIGNATURE_SPEC: ECDSA P-256 with SHA-256 over the
//! payload bytes, ASN.1 DER signature, payload
//! `{"critical":{"image":{"docker-manifest-digest":"sha256:…"},…},…}`.
//! Keyless signatures (Fulcio certificates, Rekor bundles) are out of
//! scope: a layer is judged by the configured keys alone.
//!
//! Pure: this module never reads the network, and never reads a file other
//! than the key file it is given.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde::Deserialize;

use crate::registry::Digest;

/// The annotation of a signature layer that holds the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// The media type of cosign's signed payload.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

/// The `artifactType` of a cosign signature stored as an OCI 1.1 referrer.
pub const SIGNATURE_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

/// A payload larger than this is not read (cosign's are a few hundred bytes).
pub const MAX_PAYLOAD: u64 = 64 * 1024;

/// A trusted public key, with the file it came from (for messages).
#[derive(Clone)]
pub struct TrustedKey {
    pub file: PathBuf,
    key: VerifyingKey,
}

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustedKey({})", self.file.display())
    }
}

impl PartialEq for TrustedKey {
    fn eq(&self, other: &TrustedKey) -> bool {
        self.key == other.key
    }
}

impl Eq for TrustedKey {}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {}: {source}", .file.display())]
    Read { file: PathBuf, source: std::io::Error },
    #[error(
        "{} is not an ECDSA P-256 public key in PEM (`-----BEGIN PUBLIC KEY-----`, as `cosign generate-key-pair` writes cosign.pub): {reason}",
        .file.display()
    )]
    NotAKey { file: PathBuf, reason: String },
}

impl TrustedKey {
    /// Read a cosign public key file.
    pub fn load(file: &Path) -> Result<TrustedKey, KeyError> {
        let text = std::fs::read_to_string(file).map_err(|source| KeyError::Read { file: file.to_path_buf(), source })?;
        TrustedKey::from_pem(file, &text)
    }

    /// A key from PEM text; `file` names it in messages.
    pub fn from_pem(file: &Path, text: &str) -> Result<TrustedKey, KeyError> {
        let key = VerifyingKey::from_public_key_pem(text.trim())
            .map_err(|e| KeyError::NotAKey { file: file.to_path_buf(), reason: e.to_string() })?;
        Ok(TrustedKey { file: file.to_path_buf(), key })
    }
}

/// What one signature layer says about a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Verified with this key, and its payload names the tag's digest.
    Signed { key: PathBuf },
    /// No configured key verifies the signature over these bytes: it was
    /// made with another key, or the payload was altered after signing.
    UnknownKeyOrAltered,
    /// A valid signature by a trusted key, of another manifest.
    OtherDigest { key: PathBuf, signed: String },
    /// Not a usable signature layer (the reason says what is wrong).
    Malformed(String),
}

impl Verdict {
    /// The reason a tag is refused for this layer, for records and reports.
    pub fn reason(&self) -> String {
        match self {
            Verdict::Signed { key } => format!("signed by {}", key.display()),
            Verdict::UnknownKeyOrAltered => {
                "a signature that no key of signed_by verifies (made with another key, or its payload was altered)".to_string()
            }
            Verdict::OtherDigest { key, signed } => {
                format!("a signature by {} of another manifest ({signed}), not of this tag's digest", key.display())
            }
            Verdict::Malformed(why) => format!("a malformed signature ({why})"),
        }
    }
}

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    image: Image,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// Judge one signature layer: `payload` (the layer's bytes, already
/// checked against its descriptor's digest), `signature` (the annotation's
/// base64 text), for a tag at `digest`, with `keys`.
pub fn judge(payload: &[u8], signature: &str, digest: &Digest, keys: &[TrustedKey]) -> Verdict {
    let der = match base64::engine::general_purpose::STANDARD.decode(signature.trim()) {
        Ok(der) => der,
        Err(e) => return Verdict::Malformed(format!("the signature is not base64: {e}")),
    };
    let signature = match Signature::from_der(&der) {
        Ok(s) => s,
        Err(_) => return Verdict::Malformed("the signature is not an ASN.1 DER ECDSA P-256 signature".into()),
    };
    let Some(key) = keys.iter().find(|k| k.key.verify(payload, &signature).is_ok()) else {
        return Verdict::UnknownKeyOrAltered;
    };
    let signed = match serde_json::from_slice::<Payload>(payload) {
        Ok(p) => p.critical.image.docker_manifest_digest,
        Err(e) => return Verdict::Malformed(format!("the signed payload has no critical.image.docker-manifest-digest: {e}")),
    };
    if signed == digest.as_str() {
        Verdict::Signed { key: key.file.clone() }
    } else {
        Verdict::OtherDigest { key: key.file.clone(), signed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::{EncodePublicKey as _, LineEnding};

    fn key(seed: u8) -> (SigningKey, TrustedKey) {
        let signing = SigningKey::from_bytes(&[seed; 32].into()).unwrap();
        let pem = signing.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
        (signing, TrustedKey::from_pem(Path::new(&format!("key{seed}.pub")), &pem).unwrap())
    }

    fn sign(k: &SigningKey, payload: &[u8]) -> String {
        let s: Signature = k.sign(payload);
        base64::engine::general_purpose::STANDARD.encode(s.to_der().as_bytes())
    }

    fn payload(digest: &Digest) -> Vec<u8> {
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"r/a"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
        )
        .into_bytes()
    }

    #[test]
    fn each_signature_is_judged_with_its_reason() {
        let digest = Digest::sha256_of(b"image");
        let other = Digest::sha256_of(b"other image");
        let (signing, trusted) = key(7);
        let (stranger, _) = key(9);
        let body = payload(&digest);
        let keys = [trusted.clone()];
        assert_eq!(judge(&body, &sign(&signing, &body), &digest, &keys), Verdict::Signed { key: "key7.pub".into() });
        assert_eq!(judge(&body, &sign(&stranger, &body), &digest, &keys), Verdict::UnknownKeyOrAltered);
        let mut altered = body.clone();
        let at = altered.len() - 10;
        altered[at] ^= 1;
        assert_eq!(judge(&altered, &sign(&signing, &body), &digest, &keys), Verdict::UnknownKeyOrAltered);
        let theirs = payload(&other);
        let v = judge(&theirs, &sign(&signing, &theirs), &digest, &keys);
        assert_eq!(v, Verdict::OtherDigest { key: "key7.pub".into(), signed: other.to_string() });
        assert!(v.reason().contains(other.as_str()), "{}", v.reason());
        assert!(matches!(judge(&body, "not base64!", &digest, &keys), Verdict::Malformed(_)));
        assert!(matches!(judge(&body, "AAAA", &digest, &keys), Verdict::Malformed(_)));
        // A trusted key among others: the one that verifies is named.
        let (_, k3) = key(3);
        assert_eq!(judge(&body, &sign(&signing, &body), &digest, &[k3, trusted]), Verdict::Signed { key: "key7.pub".into() });
    }

    #[test]
    fn key_files_are_checked() {
        let e = TrustedKey::from_pem(Path::new("cosign.pub"), "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").unwrap_err();
        assert!(e.to_string().contains("cosign.pub") && e.to_string().contains("P-256"), "{e}");
        assert!(TrustedKey::load(Path::new("/nonexistent/cosign.pub")).unwrap_err().to_string().contains("cannot read"));
    }
}
