//! Content digests (`sha256:<hex>`): parsing, validation and incremental
//! verification.
//!
//! A [`Digest`] can only be built from a string that passes the OCI digest
//! grammar, so the rest of the crate may put it into URLs without escaping.
//! This module never trusts a digest a server reports: [`Verifier`] recomputes
//! it from the bytes.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// Why a digest string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {value:?}: {reason}")]
pub struct DigestError {
    pub value: String,
    pub reason: &'static str,
}

/// A validated content digest such as `sha256:9f86d0…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

/// The hash algorithms regferry can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Digest {
    /// Digest of `bytes` with sha256.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn algorithm(&self) -> Algorithm {
        if self.0.starts_with("sha512:") {
            Algorithm::Sha512
        } else {
            Algorithm::Sha256
        }
    }

    /// The encoded part after the colon.
    pub fn hex(&self) -> &str {
        self.0.split_once(':').map(|(_, h)| h).unwrap_or("")
    }

    /// A short form for logs: `sha256:1234abcd5678`.
    pub fn short(&self) -> &str {
        let end = self.0.find(':').map(|i| i + 13).unwrap_or(0).min(self.0.len());
        &self.0[..end]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| DigestError { value: s.chars().take(100).collect(), reason };
        let (algo, encoded) = s.split_once(':').ok_or_else(|| err("missing ':'"))?;
        let hex_ok = |len: usize| {
            encoded.len() == len && encoded.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        match algo {
            "sha256" if hex_ok(64) => Ok(Digest(s.to_string())),
            "sha512" if hex_ok(128) => Ok(Digest(s.to_string())),
            "sha256" | "sha512" => Err(err("encoded part must be lowercase hex of the algorithm's length")),
            _ => Err(err("unsupported algorithm (sha256 and sha512 are supported)")),
        }
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental hash that checks bytes against an expected digest.
pub struct Verifier {
    expected: Digest,
    state: HashState,
    len: u64,
}

enum HashState {
    Sha256(Sha256),
    Sha512(Box<Sha512>),
}

impl Verifier {
    pub fn new(expected: &Digest) -> Verifier {
        let state = match expected.algorithm() {
            Algorithm::Sha256 => HashState::Sha256(Sha256::new()),
            Algorithm::Sha512 => HashState::Sha512(Box::new(Sha512::new())),
        };
        Verifier { expected: expected.clone(), state, len: 0 }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        match &mut self.state {
            HashState::Sha256(h) => h.update(bytes),
            HashState::Sha512(h) => h.update(bytes),
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of everything seen so far, in the expected algorithm.
    pub fn actual(&self) -> Digest {
        let hex = match &self.state {
            HashState::Sha256(h) => hex::encode(h.clone().finalize()),
            HashState::Sha512(h) => hex::encode((**h).clone().finalize()),
        };
        let algo = match self.expected.algorithm() {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        };
        Digest(format!("{algo}:{hex}"))
    }

    /// True when the bytes seen so far hash to the expected digest.
    pub fn matches(&self) -> bool {
        self.actual() == self.expected
    }
}

/// Digest of `bytes` computed in `expected`'s algorithm.
pub fn digest_like(expected: &Digest, bytes: &[u8]) -> Digest {
    let mut v = Verifier::new(expected);
    v.update(bytes);
    v.actual()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".parse().unwrap();
        assert_eq!(d, Digest::sha256_of(b""));
        assert_eq!(d.short(), "sha256:e3b0c44298fc");
        assert!("sha256:E3B0".parse::<Digest>().is_err());
        assert!("md5:abcd".parse::<Digest>().is_err());
        assert!("sha256:../../etc/passwd".parse::<Digest>().is_err());
        assert!("e3b0c44298fc".parse::<Digest>().is_err());
    }

    #[test]
    fn verifier_detects_mismatch() {
        let d = Digest::sha256_of(b"hello");
        let mut v = Verifier::new(&d);
        v.update(b"hel");
        assert!(!v.matches());
        v.update(b"lo");
        assert!(v.matches());
        assert_eq!(v.len(), 5);
        v.update(b"!");
        assert!(!v.matches());
    }
}
