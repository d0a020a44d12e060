//! Cosign key-pair signatures made the way `cosign sign --key` makes them
//! (SIGNATURE_SPEC): a P-256 key whose public half is written as
//! `cosign.pub` (PEM `PUBLIC KEY`), the simple-signing payload naming the
//! image digest, an ASN.1 DER ECDSA-SHA256 signature in base64 on the
//! payload layer's `dev.cosignproject.cosign/signature` annotation; stored
//! either at the `sha256-<hex>.sig` tag or as an OCI 1.1 referrer of type
//! `application/vnd.dev.cosign.artifact.sig.v1+json`.
//!
//! Signs with `ring` — another implementation than the RustCrypto `p256`
//! regferry verifies with, so the two cannot share a bug.

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::json;

use crate::image::{Blob, Manifest, OCI_MANIFEST};
use crate::referrers::EMPTY_TYPE;

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const SIGNATURE_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

/// The DER SubjectPublicKeyInfo header of an uncompressed P-256 point
/// (id-ecPublicKey, prime256v1, BIT STRING of 66 bytes).
const SPKI_P256_PREFIX: [u8; 26] =
    [0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00];

/// A signing key pair.
pub struct CosignKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl CosignKey {
    /// A fresh random key.
    pub fn generate() -> CosignKey {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("generate a P-256 key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).expect("load the P-256 key");
        CosignKey { pair, rng }
    }

    /// `cosign.pub`: the public key as PEM `PUBLIC KEY`.
    pub fn public_pem(&self) -> String {
        let mut der = SPKI_P256_PREFIX.to_vec();
        der.extend_from_slice(self.pair.public_key().as_ref());
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64 is ascii")).collect();
        format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"))
    }

    /// The base64 DER signature of `payload`.
    pub fn sign(&self, payload: &[u8]) -> String {
        let sig = self.pair.sign(&self.rng, payload).expect("sign");
        base64::engine::general_purpose::STANDARD.encode(sig.as_ref())
    }
}

/// The simple-signing payload cosign signs for `reference@digest`.
pub fn payload(reference: &str, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "critical": {
            "identity": { "docker-reference": reference },
            "image": { "docker-manifest-digest": digest },
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .expect("payload serialises")
}

/// A signature manifest with one layer: `payload` carrying `signature`.
/// With `subject`, an OCI 1.1 referrer (artifactType, subject, empty
/// config); without, the `.sig` tag form.
pub fn signature_manifest(payload: Vec<u8>, signature: &str, subject: Option<&Manifest>) -> Manifest {
    let layer = Blob::new(SIMPLE_SIGNING, payload);
    let mut descriptor = layer.descriptor();
    descriptor["annotations"] = json!({ SIGNATURE_ANNOTATION: signature });
    let (value, config) = match subject {
        Some(s) => {
            let config = Blob::new(EMPTY_TYPE, b"{}".to_vec());
            let v = json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": SIGNATURE_ARTIFACT,
                "config": config.descriptor(),
                "layers": [descriptor],
                "subject": s.descriptor(),
            });
            (v, config)
        }
        None => {
            let config = Blob::new("application/vnd.oci.image.config.v1+json", br#"{"architecture":"","os":"","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec());
            let v = json!({ "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.descriptor(), "layers": [descriptor] });
            (v, config)
        }
    };
    let bytes = serde_json::to_vec(&value).expect("manifest serialises");
    let digest = crate::image::sha256(&bytes);
    Manifest { media_type: OCI_MANIFEST.to_string(), bytes, digest, blobs: vec![config, layer], children: Vec::new() }
}

/// `key`'s `.sig`-tag signature of `image` (named `reference`).
pub fn sign_image(key: &CosignKey, reference: &str, image: &Manifest) -> Manifest {
    let body = payload(reference, &image.digest);
    let sig = key.sign(&body);
    signature_manifest(body, &sig, None)
}
