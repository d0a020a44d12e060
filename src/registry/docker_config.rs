//! Credentials from a docker / podman `config.json` (`auths`, `credHelpers`,
//! `credsStore`), found through `REGISTRY_AUTH_FILE`, `DOCKER_CONFIG` or
//! `~/.docker/config.json`.
//!
//! Lookup failures are errors with the file name, never with the file's
//! content: this module must never put a credential into an error or a log.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde::Deserialize;

use super::endpoint::{Credentials, Secret};

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
}

/// The config file regferry reads, in order of precedence, if one exists.
pub fn default_path() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("REGISTRY_AUTH_FILE").map(PathBuf::from),
        std::env::var_os("DOCKER_CONFIG").map(|d| PathBuf::from(d).join("config.json")),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

/// Normalise a config key (`https://host:port/v1/`, `host:port`) to `host:port`.
fn key_host(key: &str) -> &str {
    let no_scheme = key.split_once("://").map(|(_, r)| r).unwrap_or(key);
    no_scheme.split('/').next().unwrap_or(no_scheme)
}

fn hosts_match(key: &str, host: &str) -> bool {
    let k = key_host(key);
    let docker_hub = |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    k == host || (docker_hub(k) && docker_hub(host))
}

/// Credentials for `host` (`host[:port]`) from the file at `path`;
/// `Anonymous` when the file has none for it.
pub fn lookup(path: &Path, host: &str) -> Result<Credentials, DockerConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| DockerConfigError::Read { path: path.into(), source })?;
    let cfg: ConfigFile = serde_json::from_str(&text)
        .map_err(|e| DockerConfigError::Parse { path: path.into(), message: format!("line {} column {}", e.line(), e.column()) })?;

    if let Some((_, helper)) = cfg.cred_helpers.iter().find(|(k, _)| hosts_match(k, host)) {
        return run_helper(helper, host);
    }
    if let Some((_, entry)) = cfg.auths.iter().find(|(k, _)| hosts_match(k, host)) {
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(Credentials::Basic { username: u.clone(), password: Secret::new(p.clone()) });
        }
        if let Some(auth) = &entry.auth {
            let bad = || DockerConfigError::BadAuth { path: path.into(), host: host.into() };
            let decoded = base64::engine::general_purpose::STANDARD.decode(auth.trim()).map_err(|_| bad())?;
            let s = String::from_utf8(decoded).map_err(|_| bad())?;
            return Credentials::from_user_pass(&s).map_err(|_| bad());
        }
    }
    if let Some(store) = &cfg.creds_store {
        return run_helper(store, host);
    }
    Ok(Credentials::Anonymous)
}

#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

fn run_helper(helper: &str, host: &str) -> Result<Credentials, DockerConfigError> {
    let fail = |message: String| DockerConfigError::Helper { helper: helper.into(), host: host.into(), message };
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(host.as_bytes()).map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        // "credentials not found" is an ordinary miss: go anonymous.
        return Ok(Credentials::Anonymous);
    }
    let answer: HelperAnswer =
        serde_json::from_slice(&out.stdout).map_err(|_| fail("unreadable answer".to_string()))?;
    Ok(Credentials::Basic { username: answer.username, password: Secret::new(answer.secret) })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn errors_name_the_file_not_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"auths":{"h":{"auth":"!!notbase64-hunter2"}}}"#).unwrap();
        let e = lookup(&path, "h").unwrap_err().to_string();
        assert!(e.contains("config.json") && !e.contains("hunter2"), "{e}");
    }
}
