//! Where a registry is and how to talk to it: URL (with an optional
//! repository prefix), where its credentials come from, TLS settings
//! (CA, client certificate), proxy, limits and how to upload to it.
//!
//! Docker Hub is one registry under three names: `docker.io`,
//! `index.docker.io` and `registry-1.docker.io` all mean
//! `https://registry-1.docker.io` (where its API lives), its credentials are
//! filed under `https://index.docker.io/v1/`, and a single-component
//! repository name there means `library/NAME` (as `docker pull` does).
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

/// How to authenticate to a registry, at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic { username: String, password: Secret },
    /// An OAuth2 refresh token (`identitytoken` in a config file, or a
    /// credential helper's answer with the user name `<token>`), exchanged at
    /// the token service with `grant_type=refresh_token`.
    IdentityToken { username: Option<String>, token: Secret },
}

/// Where a registry's credentials come from. Credentials that a config file
/// or a credential helper provide are looked up when a client needs them
/// (and again before they can go stale), never once for the life of the
/// process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// Given once (command line, environment, policy).
    Fixed(Credentials),
    /// docker / podman config files: the explicit `files` when not empty,
    /// else the default locations (see `docker_config::default_paths`).
    ConfigFiles { files: Vec<PathBuf> },
}

impl Default for CredentialSource {
    fn default() -> Self {
        CredentialSource::Fixed(Credentials::Anonymous)
    }
}

impl From<Credentials> for CredentialSource {
    fn from(c: Credentials) -> Self {
        CredentialSource::Fixed(c)
    }
}

impl CredentialSource {
    /// True when asking again may give other credentials.
    pub fn can_change(&self) -> bool {
        !matches!(self, CredentialSource::Fixed(_))
    }
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
/// `https://host[:port][/prefix]` or `http://…` for plain-HTTP registries;
/// or `oci:/path`, a directory of OCI image layouts (see
/// [`crate::scheme::ocidir`]), kept as a `file:` URL.
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
        if let Some(path) = trimmed.strip_prefix("oci:") {
            return RegistryUrl::layout(path).map_err(|reason| err(&reason));
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
        if is_docker_hub_host(base.host_str().unwrap_or_default()) && base.port().is_none() {
            // The names docker.io and index.docker.io answer the API with a
            // redirect to a web page; the API lives at registry-1.
            base = Url::parse(&format!("{}://{DOCKER_HUB_API}/", base.scheme())).map_err(|e| err(&e.to_string()))?;
        }
        Ok(RegistryUrl { base, prefix })
    }

    /// `oci:/path`: the directory (absolute; relative paths are taken from
    /// the current directory), which need not exist yet.
    fn layout(path: &str) -> Result<RegistryUrl, String> {
        if path.is_empty() {
            return Err("oci: needs a directory, as in oci:/srv/export".into());
        }
        if path.starts_with("//") && !path.starts_with("///") {
            return Err("write oci:/path (a directory), not oci://".into());
        }
        let path = std::path::Path::new(path);
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir().map_err(|e| format!("no current directory: {e}"))?.join(path)
        };
        if absolute.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err("the layout directory may not contain `..`".into());
        }
        let base = Url::from_directory_path(&absolute).map_err(|()| "not a usable directory path".to_string())?;
        Ok(RegistryUrl { base, prefix: String::new() })
    }

    /// True for `oci:/path` (a directory of OCI image layouts).
    pub fn is_layout(&self) -> bool {
        self.base.scheme() == "file"
    }

    /// The directory of an `oci:/path` address.
    pub fn layout_dir(&self) -> Option<std::path::PathBuf> {
        if self.is_layout() { self.base.to_file_path().ok() } else { None }
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

    /// True for Docker Hub (under any of its names).
    pub fn is_docker_hub(&self) -> bool {
        self.base.port().is_none() && self.base.host_str() == Some(DOCKER_HUB_API)
    }

    /// The key credentials for this registry are filed under in docker's
    /// config files and credential helpers: `https://index.docker.io/v1/`
    /// for Docker Hub, `host[:port]` otherwise.
    pub fn credential_key(&self) -> String {
        if self.is_docker_hub() { DOCKER_HUB_CREDENTIAL_KEY.to_string() } else { self.host_port() }
    }

    /// The path to request for the API path `path` (`/v2/NAME/...`): on
    /// Docker Hub a single-component repository name becomes
    /// `library/NAME`; elsewhere the path is unchanged.
    pub fn api_path(&self, path: &str) -> String {
        if !self.is_docker_hub() {
            return path.to_string();
        }
        match official_image_path(path) {
            Some(p) => p,
            None => path.to_string(),
        }
    }

    /// A repository name as the registry knows it (`library/NAME` for a
    /// single-component name on Docker Hub), for token scopes.
    pub fn api_repository(&self, name: &str) -> String {
        if self.is_docker_hub() && !name.is_empty() && !name.contains('/') { format!("library/{name}") } else { name.to_string() }
    }

    /// The same registry with another prefix.
    pub fn with_prefix(&self, prefix: &str) -> RegistryUrl {
        RegistryUrl { base: self.base.clone(), prefix: prefix.trim_matches('/').to_string() }
    }
}

impl fmt::Display for RegistryUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(dir) = self.layout_dir() {
            let dir = dir.display().to_string();
            let dir = if dir.len() > 1 { dir.trim_end_matches('/') } else { &dir };
            return if self.prefix.is_empty() { write!(f, "oci:{dir}") } else { write!(f, "oci:{dir}/{}", self.prefix) };
        }
        let b = self.base.as_str().trim_end_matches('/');
        if self.prefix.is_empty() { write!(f, "{b}") } else { write!(f, "{b}/{}", self.prefix) }
    }
}

/// Docker Hub's API host.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The key Docker Hub credentials are filed under by `docker login`.
pub const DOCKER_HUB_CREDENTIAL_KEY: &str = "https://index.docker.io/v1/";

/// True for the names Docker Hub goes by.
pub fn is_docker_hub_host(host: &str) -> bool {
    matches!(host, "docker.io" | "index.docker.io" | "registry-1.docker.io")
}

/// `/v2/NAME/<kind>/...` with a single-component `NAME` rewritten to
/// `/v2/library/NAME/...`; `None` when the path has another shape. The
/// shapes are matched by their exact length so that a multi-component name
/// whose second component happens to be `blobs` or `tags` is never taken
/// for a single-component one.
fn official_image_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v2/")?;
    let segs: Vec<&str> = rest.split('/').collect();
    let fits = matches!(segs.as_slice(), [_, "manifests" | "tags" | "referrers" | "blobs", _] | [_, "blobs", "uploads", _]);
    if !fits || segs[0].is_empty() {
        return None;
    }
    Some(format!("/v2/library/{rest}"))
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
    /// A client certificate (PEM, leaf first) for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub client_key: Option<PathBuf>,
}

/// How to reach a registry through an HTTP(S) proxy. `Debug` never shows a
/// proxy's user info.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Proxy {
    /// `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` / `NO_PROXY` from the
    /// environment (lower case too), as most tools read them.
    #[default]
    Environment,
    /// No proxy, whatever the environment says.
    Direct,
    /// This proxy for every request to the registry (and its token service).
    Url(Url),
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proxy::Environment => f.write_str("Environment"),
            Proxy::Direct => f.write_str("Direct"),
            Proxy::Url(u) => write!(f, "Url({})", redact_userinfo(u.as_str())),
        }
    }
}

impl Proxy {
    /// Parse a policy's `proxy:` value: `none` or an `http://` / `https://`
    /// URL. The error never repeats user info given in the URL.
    pub fn parse(s: &str) -> Result<Proxy, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("none") || s.eq_ignore_ascii_case("direct") {
            return Ok(Proxy::Direct);
        }
        let url = Url::parse(s).map_err(|e| format!("{} is not a proxy URL: {e}", redact_userinfo(s)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{} is not an http:// or https:// proxy URL", redact_userinfo(s)));
        }
        Ok(Proxy::Url(url))
    }
}

impl Tls {
    /// Check that a client certificate and key are readable PEM and belong
    /// together as far as can be told without a handshake. Messages name the
    /// files, never their content.
    pub fn check_client_identity(cert: &std::path::Path, key: &std::path::Path) -> Result<(), String> {
        client_identity(cert, key).map(|_| ())
    }

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

/// What docker's and podman's `certs.d/<host:port>/` directory holds for a
/// registry: `*.crt` files are CAs to trust, a `NAME.cert` with its
/// `NAME.key` is a client certificate. The directories looked at, in order:
/// `/etc/containers/certs.d`, `/etc/docker/certs.d`,
/// `~/.config/containers/certs.d`; the first with a directory for the
/// registry counts.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CertsD {
    pub cas: Vec<PathBuf>,
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl CertsD {
    pub fn find(host_port: &str) -> CertsD {
        let mut roots = vec![PathBuf::from("/etc/containers/certs.d"), PathBuf::from("/etc/docker/certs.d")];
        if let Some(home) = std::env::var_os("HOME") {
            roots.push(PathBuf::from(home).join(".config/containers/certs.d"));
        }
        roots.iter().map(|r| r.join(host_port)).find(|d| d.is_dir()).map(|d| CertsD::read(&d)).unwrap_or_default()
    }

    fn read(dir: &std::path::Path) -> CertsD {
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        names.sort();
        let ext = |p: &PathBuf, e: &str| p.extension().is_some_and(|x| x == e);
        let cas = names.iter().filter(|p| ext(p, "crt")).cloned().collect();
        let identity = names
            .iter()
            .filter(|p| ext(p, "cert"))
            .map(|c| (c.clone(), c.with_extension("key")))
            .find(|(_, k)| k.is_file());
        CertsD { cas, identity }
    }
}

/// The `reqwest` identity for a client certificate and key (PEM files).
pub fn client_identity(cert: &std::path::Path, key: &std::path::Path) -> Result<reqwest::Identity, String> {
    let cert_pem = std::fs::read(cert).map_err(|e| format!("client certificate {} is not a readable file: {e}", cert.display()))?;
    let key_pem = std::fs::read(key).map_err(|e| format!("client key {} is not a readable file: {e}", key.display()))?;
    if !String::from_utf8_lossy(&cert_pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("client certificate {} holds no PEM certificate", cert.display()));
    }
    if !String::from_utf8_lossy(&key_pem).contains("PRIVATE KEY-----") {
        return Err(format!("client key {} holds no PEM private key", key.display()));
    }
    let mut pem = cert_pem;
    pem.push(b'\n');
    pem.extend_from_slice(&key_pem);
    reqwest::Identity::from_pem(&pem)
        .map_err(|_| format!("client certificate {} and key {} are not a usable PEM pair", cert.display(), key.display()))
}

/// Everything needed to reach one registry.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub url: RegistryUrl,
    pub credentials: CredentialSource,
    pub tls: Tls,
    pub proxy: Proxy,
    /// Optional request and byte rates for this registry.
    pub limits: super::gate::Limits,
    /// Upload blobs to it in `PATCH` chunks of this many bytes (`None`:
    /// one streamed `PUT`, chunks only after it refused one with `413`).
    pub chunk_size: Option<u64>,
}

impl Endpoint {
    /// Put this registry's client certificate and proxy settings on a
    /// client builder. Messages name files, never their content, and never
    /// a proxy's user info.
    pub fn configure_transport(&self, mut builder: reqwest::ClientBuilder) -> Result<reqwest::ClientBuilder, String> {
        let certs_d = CertsD::find(&self.url.host_port());
        match (&self.tls.client_cert, &self.tls.client_key) {
            (Some(cert), Some(key)) => builder = builder.identity(client_identity(cert, key)?),
            (None, None) => {
                if let Some((cert, key)) = &certs_d.identity {
                    builder = builder.identity(client_identity(cert, key)?);
                }
            }
            _ => return Err("a client certificate needs its key, and a key its certificate".into()),
        }
        for ca in &certs_d.cas {
            let pem = std::fs::read(ca).map_err(|e| format!("cannot read CA bundle {}: {e}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("CA bundle {} is not PEM: {e}", ca.display()))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        match &self.proxy {
            Proxy::Environment => {}
            Proxy::Direct => builder = builder.no_proxy(),
            Proxy::Url(u) => {
                let proxy = reqwest::Proxy::all(u.as_str()).map_err(|e| format!("proxy {}: {e}", redact_userinfo(u.as_str())))?;
                builder = builder.proxy(proxy);
            }
        }
        Ok(builder)
    }

    pub fn new(url: RegistryUrl, credentials: impl Into<CredentialSource>) -> Endpoint {
        Endpoint { url, credentials: credentials.into(), tls: Tls::default(), proxy: Proxy::default(), limits: Default::default(), chunk_size: None }
    }
}

/// Parse a byte size such as `8MiB`, `1.5 KiB`, `800k` or `1048576`:
/// `k`/`m`/`g` and `KiB`/`MiB`/`GiB` are binary, `KB`/`MB`/`GB` decimal.
/// At least one byte, at most 1 PB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("{s:?} is not a size (write e.g. 50MiB, 800KiB, 1GB)"))?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        other => return Err(format!("unknown size unit {other:?} in {s:?} (use B, KiB, MiB, GiB, KB, MB, GB)")),
    };
    let bytes = (value * factor).round();
    if !(1.0..=1e15).contains(&bytes) {
        return Err(format!("{s:?} is out of range (1 byte to 1 PB)"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_addresses_are_layout_directories() {
        let u = RegistryUrl::parse("oci:/srv/export/").unwrap();
        assert!(u.is_layout());
        assert_eq!(u.layout_dir(), Some(std::path::PathBuf::from("/srv/export/")));
        assert_eq!(u.to_string(), "oci:/srv/export");
        assert_eq!(u.prefix(), "");
        assert_eq!(RegistryUrl::parse("oci:/srv/export").unwrap(), u, "one directory, one address");
        let relative = RegistryUrl::parse("oci:export").unwrap();
        assert_eq!(relative.layout_dir(), Some(std::env::current_dir().unwrap().join("export/")));
        assert_eq!(RegistryUrl::parse("oci:/a b").unwrap().to_string(), "oci:/a b");
        for bad in ["oci:", "oci://host/x", "oci:/a/../b"] {
            assert!(RegistryUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(!RegistryUrl::parse("http://127.0.0.1:5000").unwrap().is_layout());
    }

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
    fn docker_hub_is_one_registry() {
        for name in ["docker.io", "index.docker.io", "https://registry-1.docker.io", "docker.io/library"] {
            let u = RegistryUrl::parse(name).unwrap();
            assert_eq!(u.base().as_str(), "https://registry-1.docker.io/", "{name}");
            assert!(u.is_docker_hub());
            assert_eq!(u.credential_key(), "https://index.docker.io/v1/");
        }
        assert_eq!(RegistryUrl::parse("docker.io/library").unwrap().prefix(), "library");
        // another port is another registry
        let other = RegistryUrl::parse("docker.io:5000").unwrap();
        assert!(!other.is_docker_hub());
        assert_eq!(other.credential_key(), "docker.io:5000");
        assert_eq!(RegistryUrl::parse("ghcr.io").unwrap().credential_key(), "ghcr.io");
    }

    #[test]
    fn official_images_get_library() {
        let hub = RegistryUrl::parse("docker.io").unwrap();
        assert_eq!(hub.api_path("/v2/nginx/manifests/latest"), "/v2/library/nginx/manifests/latest");
        assert_eq!(hub.api_path("/v2/nginx/tags/list"), "/v2/library/nginx/tags/list");
        assert_eq!(hub.api_path("/v2/nginx/blobs/sha256:ab"), "/v2/library/nginx/blobs/sha256:ab");
        assert_eq!(hub.api_path("/v2/nginx/blobs/uploads/"), "/v2/library/nginx/blobs/uploads/");
        assert_eq!(hub.api_path("/v2/bitnami/nginx/manifests/1"), "/v2/bitnami/nginx/manifests/1");
        assert_eq!(hub.api_path("/v2/a/blobs/blobs/sha256:ab"), "/v2/a/blobs/blobs/sha256:ab");
        assert_eq!(hub.api_path("/v2/"), "/v2/");
        assert_eq!(hub.api_path("/v2/_catalog"), "/v2/_catalog");
        assert_eq!(hub.api_repository("nginx"), "library/nginx");
        assert_eq!(hub.api_repository("bitnami/nginx"), "bitnami/nginx");
        let other = RegistryUrl::parse("quay.io").unwrap();
        assert_eq!(other.api_path("/v2/nginx/manifests/latest"), "/v2/nginx/manifests/latest");
        assert_eq!(other.api_repository("nginx"), "nginx");
    }

    #[test]
    fn certs_d_follows_dockers_convention() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.crt", "extra.crt", "client.cert", "client.key", "orphan.cert", "README"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let found = CertsD::read(dir.path());
        assert_eq!(found.cas, vec![dir.path().join("ca.crt"), dir.path().join("extra.crt")]);
        assert_eq!(found.identity, Some((dir.path().join("client.cert"), dir.path().join("client.key"))));
    }

    #[test]
    fn proxies() {
        assert_eq!(Proxy::parse("none").unwrap(), Proxy::Direct);
        assert!(matches!(Proxy::parse("http://127.0.0.1:3128").unwrap(), Proxy::Url(_)));
        let e = Proxy::parse("socks9://u:hunter2@p").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        let p = Proxy::parse("http://u:hunter2@proxy.example:3128").unwrap();
        assert!(!format!("{p:?}").contains("hunter2"), "{p:?}");
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
