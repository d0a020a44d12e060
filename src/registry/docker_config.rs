//! Credentials from docker's `config.json` and podman's `auth.json`
//! (`auths`, `credHelpers`, `credsStore`), found through an explicit file
//! (`REGISTRY_AUTH_FILE`, `--authfile`) or the tools' default locations.
//!
//! Lookup follows the tools: for each file in order (podman's
//! `$XDG_RUNTIME_DIR/containers/auth.json`, `~/.config/containers/auth.json`,
//! then docker's `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`)
//! the first one that knows the registry answers; inside a file a
//! `credHelpers` entry wins over `credsStore`, which wins over `auths`;
//! namespaced keys (`quay.io/org-a`) match longest prefix first. Docker Hub
//! is filed under `https://index.docker.io/v1/` (and asked of helpers so).
//!
//! Lookup failures are errors with the file or helper name, never with a
//! credential: this module must never put a secret into an error or a log.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Deserialize;

use super::endpoint::{Credentials, RegistryUrl, Secret, is_docker_hub_host};

/// How long a credential helper may take before it is given up on.
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// Why credentials could not be read from a config file.
#[derive(Debug, thiserror::Error)]
pub enum DockerConfigError {
    #[error("cannot read docker config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("docker config {path} is not valid JSON: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("docker config {path}: the auth entry for {host} is not base64 of USER:PASSWORD")]
    BadAuth { path: PathBuf, host: String },
    #[error("credential helper docker-credential-{helper} failed for {host}: {message}")]
    Helper { helper: String, host: String, message: String },
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
    registrytoken: Option<String>,
}

/// The config files regferry reads when none is named, in order of
/// precedence: `REGISTRY_AUTH_FILE` alone when set, else podman's and
/// docker's default locations that exist.
pub fn default_paths() -> Vec<PathBuf> {
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|f| !f.is_empty()) {
        return vec![PathBuf::from(f)];
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let candidates = [
        std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()).map(|d| PathBuf::from(d).join("containers/auth.json")),
        std::env::var_os("XDG_CONFIG_HOME")
            .filter(|d| !d.is_empty())
            .map(|d| PathBuf::from(d).join("containers/auth.json"))
            .or_else(|| home.as_ref().map(|h| h.join(".config/containers/auth.json"))),
        std::env::var_os("DOCKER_CONFIG")
            .filter(|d| !d.is_empty())
            .map(|d| PathBuf::from(d).join("config.json"))
            .or_else(|| home.as_ref().map(|h| h.join(".docker/config.json"))),
    ];
    candidates.into_iter().flatten().filter(|p| p.is_file()).collect()
}

/// The first of [`default_paths`], if any.
pub fn default_path() -> Option<PathBuf> {
    default_paths().into_iter().next()
}

/// A config key (`https://host:port/v1/`, `host:port`, `host/ns`) as
/// `host[:port][/ns]`, with Docker Hub's names as `docker.io`.
fn normalise_key(key: &str) -> String {
    let no_scheme = key.split_once("://").map(|(_, r)| r).unwrap_or(key);
    let trimmed = no_scheme.trim_end_matches('/');
    let (host, path) = trimmed.split_once('/').unwrap_or((trimmed, ""));
    // docker's legacy keys end in /v1/ or /v2/: no namespace there
    let path = if path == "v1" || path == "v2" { "" } else { path };
    let host = if is_docker_hub_host(host) { "docker.io" } else { host };
    if path.is_empty() { host.to_string() } else { format!("{host}/{path}") }
}

/// What a registry is looked up as: `host[:port]` plus its namespace.
fn wanted(url: &RegistryUrl) -> String {
    let host = if url.is_docker_hub() { "docker.io".to_string() } else { url.host_port() };
    if url.prefix().is_empty() { host } else { format!("{host}/{}", url.prefix()) }
}

/// The entry of `map` whose key is the longest prefix (at a `/`) of `want`.
fn best_match<'a, V>(map: &'a HashMap<String, V>, want: &str) -> Option<(&'a String, &'a V)> {
    let host = want.split('/').next().unwrap_or(want);
    map.iter()
        .map(|(k, v)| (normalise_key(k), k, v))
        .filter(|(n, _, _)| n == want || (want.starts_with(n.as_str()) && want.as_bytes().get(n.len()) == Some(&b'/')))
        .filter(|(n, _, _)| n.split('/').next() == Some(host))
        // longest first; equal keys (two spellings of one registry) by name,
        // so the pick never depends on the map's order
        .max_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| b.1.cmp(a.1)))
        .map(|(_, k, v)| (k, v))
}

fn read(path: &Path) -> Result<ConfigFile, DockerConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| DockerConfigError::Read { path: path.into(), source })?;
    serde_json::from_str(&text)
        .map_err(|e| DockerConfigError::Parse { path: path.into(), message: format!("line {} column {}", e.line(), e.column()) })
}

/// Check that every file in `files` (or the default ones) can be read and
/// parsed, without running any helper: for loading a policy.
pub fn check(files: &[PathBuf]) -> Result<(), DockerConfigError> {
    let files = if files.is_empty() { default_paths() } else { files.to_vec() };
    for f in &files {
        read(f)?;
    }
    Ok(())
}

/// Credentials for `url` from `files` (the default locations when empty);
/// `Anonymous` when none of them knows the registry. Runs credential
/// helpers (blocking).
pub fn resolve(files: &[PathBuf], url: &RegistryUrl) -> Result<Credentials, DockerConfigError> {
    let files = if files.is_empty() { default_paths() } else { files.to_vec() };
    for f in &files {
        if let Some(c) = lookup_in(f, url)? {
            return Ok(c);
        }
    }
    Ok(Credentials::Anonymous)
}

/// Credentials for `host` (`host[:port]`) from the file at `path`;
/// `Anonymous` when the file has none for it.
pub fn lookup(path: &Path, host: &str) -> Result<Credentials, DockerConfigError> {
    let url = RegistryUrl::parse(host).map_err(|_| DockerConfigError::Parse { path: path.into(), message: format!("bad registry name {host}") })?;
    Ok(lookup_in(path, &url)?.unwrap_or_default())
}

/// Credentials for `url` from one file; `None` when it does not know it.
fn lookup_in(path: &Path, url: &RegistryUrl) -> Result<Option<Credentials>, DockerConfigError> {
    let cfg = read(path)?;
    let want = wanted(url);
    let helper_key = url.credential_key();
    if let Some((_, helper)) = best_match(&cfg.cred_helpers, &want) {
        return run_helper(helper, &helper_key);
    }
    if let Some(store) = cfg.creds_store.as_deref().filter(|s| !s.is_empty())
        && let Some(c) = run_helper(store, &helper_key)?
    {
        return Ok(Some(c));
    }
    let Some((key, entry)) = best_match(&cfg.auths, &want) else { return Ok(None) };
    let bad = || DockerConfigError::BadAuth { path: path.into(), host: normalise_key(key) };
    let (mut username, mut password) = (entry.username.clone(), entry.password.clone());
    if let Some(auth) = entry.auth.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD.decode(auth).map_err(|_| bad())?;
        let s = String::from_utf8(decoded).map_err(|_| bad())?;
        let (u, p) = s.split_once(':').ok_or_else(bad)?;
        username = Some(u.to_string());
        password = Some(p.to_string());
    }
    let token = entry.identitytoken.as_deref().or(entry.registrytoken.as_deref()).filter(|t| !t.is_empty());
    if let Some(token) = token {
        return Ok(Some(Credentials::IdentityToken { username: username.filter(|u| !u.is_empty()), token: Secret::new(token) }));
    }
    match (username, password) {
        (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credentials::Basic { username: u, password: Secret::new(p) })),
        // an entry without credentials (docker writes `{}` when a store holds them)
        (None, None) => Ok(None),
        _ => Err(bad()),
    }
}

#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// Ask `docker-credential-HELPER get` about `key`. `None` when it answers
/// "credentials not found"; any other failure is an error naming the helper.
fn run_helper(helper: &str, key: &str) -> Result<Option<Credentials>, DockerConfigError> {
    let program = format!("docker-credential-{helper}");
    let fail = |message: String| DockerConfigError::Helper { helper: helper.into(), host: key.into(), message };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading its input is judged by its
        // exit status below, not by this write.
        let _ = stdin.write_all(key.as_bytes());
    }
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > HELPER_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("no answer within {}s", HELPER_TIMEOUT.as_secs())));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(fail(e.to_string())),
        }
    };
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_end(&mut stdout);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_end(&mut stderr);
    }
    if !status.success() {
        let said = format!("{} {}", String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&stderr));
        // The helper protocol's ordinary miss.
        if said.to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        let quoted = filter_secrets(&String::from_utf8_lossy(&stderr));
        let message = if quoted.is_empty() { format!("{program} exited with {status}") } else { format!("{program} exited with {status}: {quoted}") };
        return Err(fail(message));
    }
    let answer: HelperAnswer = serde_json::from_slice(&stdout).map_err(|_| fail(format!("{program} gave an unreadable answer")))?;
    if answer.secret.is_empty() {
        return Ok(None);
    }
    if answer.username == "<token>" {
        return Ok(Some(Credentials::IdentityToken { username: None, token: Secret::new(answer.secret) }));
    }
    Ok(Some(Credentials::Basic { username: answer.username, password: Secret::new(answer.secret) }))
}

/// A helper's stderr for an error message: the first 300 characters on one
/// line, with every word that could be a secret (long runs of token
/// characters, anything after `password`/`secret`/`token`) masked.
fn filter_secrets(s: &str) -> String {
    let mut out = Vec::new();
    let mut mask_next = false;
    for word in s.split_whitespace() {
        let tokenish = word.len() >= 16 && word.chars().all(|c| c.is_ascii_alphanumeric() || "+/=_-.:".contains(c));
        let lower = word.to_ascii_lowercase();
        if mask_next || tokenish {
            out.push("***".to_string());
        } else {
            out.push(word.to_string());
        }
        mask_next = ["password", "secret", "token", "passwd", "pass"].iter().any(|k| lower.trim_end_matches([':', '=']).ends_with(k))
            || lower.contains('=') && ["password", "secret", "token"].iter().any(|k| lower.contains(k));
        if lower.contains('=') && ["password", "secret", "token"].iter().any(|k| lower.contains(k)) {
            out.pop();
            out.push("***".to_string());
        }
    }
    let joined = out.join(" ");
    joined.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> RegistryUrl {
        RegistryUrl::parse(s).unwrap()
    }

    #[test]
    fn reads_auths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:x");
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"https://127.0.0.1:5001/v1/":{{"auth":"{auth}"}},"other:1":{{"username":"u","password":"p"}}}}}}"#),
        )
        .unwrap();
        assert_eq!(
            lookup(&path, "127.0.0.1:5001").unwrap(),
            Credentials::Basic { username: "alice".into(), password: Secret::new("s3cret:x") }
        );
        assert_eq!(lookup(&path, "other:1").unwrap(), Credentials::Basic { username: "u".into(), password: Secret::new("p") });
        assert_eq!(lookup(&path, "127.0.0.1:5002").unwrap(), Credentials::Anonymous);
    }

    #[test]
    fn docker_hub_credentials_are_filed_under_index_docker_io() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("hubuser:hubpass");
        std::fs::write(&path, format!(r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}}}}}}"#)).unwrap();
        let want = Credentials::Basic { username: "hubuser".into(), password: Secret::new("hubpass") };
        for name in ["docker.io", "index.docker.io", "registry-1.docker.io", "docker.io/library"] {
            assert_eq!(resolve(std::slice::from_ref(&path), &url(name)).unwrap(), want, "{name}");
        }
        assert_eq!(resolve(std::slice::from_ref(&path), &url("quay.io")).unwrap(), Credentials::Anonymous);
    }

    #[test]
    fn namespaced_keys_match_longest_prefix_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        std::fs::write(
            &path,
            format!(
                r#"{{"auths":{{"quay.io":{{"auth":"{}"}},"quay.io/org-a":{{"auth":"{}"}},"quay.io/org-a/team":{{"auth":"{}"}},"quay.io/org-b":{{"auth":"{}"}},"quay.io/org":{{"auth":"{}"}}}}}}"#,
                enc("host:1"),
                enc("a:2"),
                enc("team:3"),
                enc("b:4"),
                enc("org:5")
            ),
        )
        .unwrap();
        let user = |u: &str| match resolve(std::slice::from_ref(&path), &url(u)).unwrap() {
            Credentials::Basic { username, .. } => username,
            other => panic!("{other:?}"),
        };
        for _ in 0..20 {
            assert_eq!(user("quay.io/org-a"), "a");
            assert_eq!(user("quay.io/org-a/team/x"), "team");
            assert_eq!(user("quay.io/org-a/other"), "a");
            assert_eq!(user("quay.io/org-b"), "b");
            assert_eq!(user("quay.io/org-c"), "host");
            assert_eq!(user("quay.io"), "host");
        }
    }

    #[test]
    fn identity_tokens_and_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("auth.json");
        let second = dir.path().join("config.json");
        std::fs::write(&first, r#"{"auths":{"a.example":{"identitytoken":"refresh-xyz","username":"00000000-0000-0000-0000-000000000000"}}}"#).unwrap();
        std::fs::write(&second, r#"{"auths":{"a.example":{"username":"u","password":"p"},"b.example":{"username":"v","password":"q"}}}"#).unwrap();
        let files = vec![first, second];
        assert_eq!(
            resolve(&files, &url("a.example")).unwrap(),
            Credentials::IdentityToken { username: Some("00000000-0000-0000-0000-000000000000".into()), token: Secret::new("refresh-xyz") }
        );
        assert_eq!(resolve(&files, &url("b.example")).unwrap(), Credentials::Basic { username: "v".into(), password: Secret::new("q") });
    }

    #[test]
    fn errors_name_the_file_not_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"auths":{"h":{"auth":"!!notbase64-hunter2"}}}"#).unwrap();
        let e = lookup(&path, "h").unwrap_err().to_string();
        assert!(e.contains("config.json") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn helper_stderr_is_filtered() {
        let s = filter_secrets("error: token=abc123 rejected; password hunter2 for AKIAIOSFODNN7EXAMPLEKEY");
        assert!(!s.contains("abc123") && !s.contains("hunter2") && !s.contains("AKIAIOSFODNN7EXAMPLEKEY"), "{s}");
        assert!(s.starts_with("error:"), "{s}");
    }
}
