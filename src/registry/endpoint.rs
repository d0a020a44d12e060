//! Where a registry is and how to talk to it: URL (with an optional
//! repository prefix), credentials, TLS settings and how to upload to it.
//!
//! Secrets live in [`Secret`], whose `Debug` prints `***` and which has no
//! `Display`, so a credential can never be formatted into a log line or an
//! error by accident. This module never logs and never touches the network.

use std::fmt;
use std::path::PathBuf;

use url::Url;

use super::name::RepoName;

/// A string that must never be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for building an `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How to authenticate to a registry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic { username: String, password: Secret },
}

impl Credentials {
    /// Parse `USER:PASS` (the password may itself contain ':').
    pub fn from_user_pass(s: &str) -> Result<Credentials, EndpointError> {
        match s.split_once(':') {
            Some((u, p)) if !u.is_empty() => {
                Ok(Credentials::Basic { username: u.to_string(), password: Secret::new(p) })
            }
            _ => Err(EndpointError::Credentials),
        }
    }
}

/// Why a registry address or its settings were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("invalid registry URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("credentials must be given as USER:PASSWORD")]
    Credentials,
}

/// A registry base address with an optional repository prefix:
/// `https://host[:port][/prefix]` or `http://…` for plain-HTTP registries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryUrl {
    base: Url,
    prefix: String,
}

impl RegistryUrl {
    /// Parse a user-supplied registry address. No scheme means `https://`.
    /// User info in the URL is refused (credentials go in their own flag or
    /// file, where they cannot leak into logs with the URL).
    pub fn parse(input: &str) -> Result<RegistryUrl, EndpointError> {
        let err = |reason: &str| EndpointError::Url { url: redact_userinfo(input), reason: reason.to_string() };
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(err("empty"));
        }
        let with_scheme =
            if trimmed.contains("://") { trimmed.to_string() } else { format!("https://{trimmed}") };
        let url = Url::parse(&with_scheme).map_err(|e| err(&e.to_string()))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(err("scheme must be http or https"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(err("credentials in the URL are not accepted; use --from-creds/--to-creds, a policy's credentials, or a docker config.json"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(err("missing host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(err("a registry URL takes no query or fragment"));
        }
        // Take the path from the input itself: the URL parser would quietly
        // resolve `..` and percent-escapes, which must be refused instead.
        let after_scheme = &with_scheme[with_scheme.find("://").map(|i| i + 3).unwrap_or(0)..];
        let raw_path = after_scheme.find('/').map(|i| &after_scheme[i..]).unwrap_or("");
        let path = raw_path.trim_matches('/');
        let prefix = path.strip_prefix("v2").map(|p| p.trim_start_matches('/')).unwrap_or(path).to_string();
        if !prefix.is_empty() {
            prefix.parse::<RepoName>().map_err(|_| {
                err("the path after the host is a repository prefix and must follow the repository name grammar (lowercase, '/'-separated)")
            })?;
        }
        let mut base = url.clone();
        base.set_path("/");
        Ok(RegistryUrl { base, prefix })
    }

    /// `scheme://host[:port]/`
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The repository prefix (namespace), possibly empty.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn is_plain_http(&self) -> bool {
        self.base.scheme() == "http"
    }

    /// `host[:port]`, the key docker's config.json uses.
    pub fn host_port(&self) -> String {
        let host = self.base.host_str().unwrap_or_default();
        match self.base.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        }
    }

    /// The same registry with another prefix.
    pub fn with_prefix(&self, prefix: &str) -> RegistryUrl {
        RegistryUrl { base: self.base.clone(), prefix: prefix.trim_matches('/').to_string() }
    }
}

impl fmt::Display for RegistryUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.base.as_str().trim_end_matches('/');
        if self.prefix.is_empty() { write!(f, "{b}") } else { write!(f, "{b}/{}", self.prefix) }
    }
}

/// Remove `user:pass@` from something that looks like a URL, for messages.
pub fn redact_userinfo(s: &str) -> String {
    let (scheme, rest) = match s.find("://") {
        Some(i) => (&s[..i + 3], &s[i + 3..]),
        None => ("", s),
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => format!("{scheme}***@{}", &rest[at + 1..]),
        None => s.to_string(),
    }
}

/// TLS settings for one registry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tls {
    /// Skip certificate verification (explicit, per registry).
    pub insecure_skip_verify: bool,
    /// Extra PEM CA bundle to trust for this registry.
    pub ca_file: Option<PathBuf>,
}

impl Tls {
    /// Check that `path` is a readable PEM bundle with at least one
    /// certificate, so a wrong file is refused as bad input before any
    /// request. The message names the file, never its content.
    pub fn check_ca_file(path: &std::path::Path) -> Result<(), String> {
        let pem = std::fs::read(path).map_err(|e| format!("{} is not a readable file: {e}", path.display()))?;
        match reqwest::Certificate::from_pem_bundle(&pem) {
            Ok(certs) if !certs.is_empty() => Ok(()),
            Ok(_) => Err(format!("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())),
            Err(e) => Err(format!("{} is not a PEM certificate bundle: {e}", path.display())),
        }
    }
}

/// Everything needed to reach one registry.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub url: RegistryUrl,
    pub credentials: Credentials,
    pub tls: Tls,
    /// Upload blobs to it in `PATCH` chunks of this many bytes (`None`:
    /// one streamed `PUT`, chunks only after it refused one with `413`).
    pub chunk_size: Option<u64>,
}

impl Endpoint {
    pub fn new(url: RegistryUrl, credentials: Credentials) -> Endpoint {
        Endpoint { url, credentials, tls: Tls::default(), chunk_size: None }
    }
}

/// Parse a byte size such as `8MiB`, `512KiB`, `8M` or `1048576` (units
/// are binary; `k`/`m`/`g` and `KB`/`MB`/`GB` are read as KiB/MiB/GiB).
pub fn parse_size(input: &str) -> Result<u64, String> {
    let s = input.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{input:?} is not a size (write e.g. 8MiB, 512KiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("{input:?} has an unknown unit (write e.g. 8MiB, 512KiB)")),
    };
    number.checked_mul(1 << shift).ok_or_else(|| format!("{input:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_registry_urls() {
        let u = RegistryUrl::parse("http://127.0.0.1:5002/mirror").unwrap();
        assert_eq!(u.base().as_str(), "http://127.0.0.1:5002/");
        assert_eq!(u.prefix(), "mirror");
        assert!(u.is_plain_http());
        assert_eq!(u.to_string(), "http://127.0.0.1:5002/mirror");

        let u = RegistryUrl::parse("registry.example.com/team/sub/").unwrap();
        assert_eq!(u.base().as_str(), "https://registry.example.com/");
        assert_eq!(u.prefix(), "team/sub");
        assert_eq!(u.host_port(), "registry.example.com");

        assert_eq!(RegistryUrl::parse("https://h:5000/v2/").unwrap().prefix(), "");
    }

    #[test]
    fn refuses_bad_urls_without_leaking() {
        for bad in ["", "ftp://x", "http://", "http://h/UPPER", "http://h/a/../b", "http://h?x=1", "http://exa mple.com"] {
            assert!(RegistryUrl::parse(bad).is_err(), "{bad}");
        }
        let e = RegistryUrl::parse("https://bob:hunter2@h.example").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("***@h.example"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("8m"), Ok(8 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "MiB", "8 furlongs", "-1M", "99999999999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials() {
        let c = Credentials::from_user_pass("u:p:q").unwrap();
        assert_eq!(format!("{c:?}"), r#"Basic { username: "u", password: *** }"#);
        assert!(Credentials::from_user_pass("nopass").is_err());
        assert!(Credentials::from_user_pass(":p").is_err());
    }
}
