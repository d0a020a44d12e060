//! The policy file as written: YAML shapes with source positions.
//!
//! Only deserialization lives here — unknown fields are refused, and every
//! value that is checked later keeps its line so that errors can point at
//! it. Nothing here reads the environment or talks to a registry.

use serde::Deserialize;
use serde_saphyr::Spanned;

/// A value with the line it was written on.
pub type At<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub name: At<String>,
    pub source: RawSource,
    pub destinations: At<Vec<RawDestination>>,
    #[serde(default)]
    pub repositories: Option<RawRepositories>,
    #[serde(default)]
    pub tags: Option<RawTags>,
    #[serde(default)]
    pub signatures: Option<bool>,
    /// Copy only these platforms of multi-platform images (`linux/amd64`).
    #[serde(default)]
    pub platforms: Option<At<Vec<At<String>>>>,
    /// `rewrite` (default) or `sparse`: what is pushed for a narrowed index.
    #[serde(default)]
    pub platform_filter: Option<At<String>>,
    /// OCI referrers travel with their subjects (default true).
    #[serde(default)]
    pub referrers: Option<bool>,
    /// Only referrers with these `artifactType`s (all when absent).
    #[serde(default)]
    pub referrer_types: Option<Vec<At<String>>>,
    /// What a tag must have to be copied: a cosign signature by one of
    /// these keys, referrers of these types.
    #[serde(default)]
    pub require: Option<At<RawRequire>>,
    #[serde(default)]
    pub overwrite: Option<bool>,
    #[serde(default)]
    pub delete: Option<bool>,
    /// The deletion guard: `10%` of the in-scope tags (default) or a count.
    #[serde(default)]
    pub max_delete: Option<At<String>>,
    #[serde(default)]
    pub trigger: Option<RawTrigger>,
    #[serde(default)]
    pub retry: Option<RawRetry>,
    #[serde(default)]
    pub concurrency: Option<At<u32>>,
    /// A transfer fails when no byte moves for this long.
    #[serde(default)]
    pub stall_timeout: Option<At<String>>,
    /// How long a registry may take to answer after an upload's last byte.
    #[serde(default)]
    pub commit_timeout: Option<At<String>>,
    /// Local disk a pass with several destinations may use to read each
    /// source blob once for all of them (`0`: no spool).
    #[serde(default)]
    pub spool_budget: Option<At<String>>,
    /// Webhook receivers of this policy's notifications.
    #[serde(default)]
    pub notify: Option<Vec<At<super::notify::RawReceiver>>>,
}

/// `require: { signed_by: [KEY_FILE…], referrer_types: [TYPE…] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequire {
    /// cosign public key files (`cosign.pub`), relative to the policy file's directory.
    #[serde(default)]
    pub signed_by: Vec<At<String>>,
    #[serde(default)]
    pub referrer_types: Vec<At<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub registry: At<String>,
    #[serde(default)]
    pub credentials: Option<At<RawCredentials>>,
    #[serde(default)]
    pub repositories: Option<Vec<At<String>>>,
    #[serde(default)]
    pub ca_file: Option<At<String>>,
    #[serde(default)]
    pub insecure: Option<bool>,
    /// Client certificate (PEM) for mutual TLS.
    #[serde(default)]
    pub client_cert: Option<At<String>>,
    /// Its private key (PEM).
    #[serde(default)]
    pub client_key: Option<At<String>>,
    /// `none`, or an http(s) proxy URL for this registry.
    #[serde(default)]
    pub proxy: Option<At<String>>,
    /// At most this many requests per second to the registry.
    #[serde(default)]
    pub requests_per_second: Option<At<f64>>,
    /// At most this many blob bytes per second (`50MiB`, `800KiB`).
    #[serde(default)]
    pub bytes_per_second: Option<At<String>>,
    /// Upload blobs to this registry in chunks of this size (e.g. `8MiB`).
    #[serde(default)]
    pub chunk_size: Option<At<String>>,
    /// Other `host[:port]` names of this registry (an IP, a front's
    /// external hostname) that its push events may carry.
    #[serde(default)]
    pub aliases: Vec<At<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDestination {
    pub registry: At<String>,
    #[serde(default)]
    pub namespace: Option<At<String>>,
    #[serde(default)]
    pub credentials: Option<At<RawCredentials>>,
    #[serde(default)]
    pub ca_file: Option<At<String>>,
    #[serde(default)]
    pub insecure: Option<bool>,
    /// Client certificate (PEM) for mutual TLS.
    #[serde(default)]
    pub client_cert: Option<At<String>>,
    /// Its private key (PEM).
    #[serde(default)]
    pub client_key: Option<At<String>>,
    /// `none`, or an http(s) proxy URL for this registry.
    #[serde(default)]
    pub proxy: Option<At<String>>,
    /// At most this many requests per second to the registry.
    #[serde(default)]
    pub requests_per_second: Option<At<f64>>,
    /// At most this many blob bytes per second (`50MiB`, `800KiB`).
    #[serde(default)]
    pub bytes_per_second: Option<At<String>>,
    /// Upload blobs to this registry in chunks of this size (e.g. `8MiB`).
    #[serde(default)]
    pub chunk_size: Option<At<String>>,
    /// Other `host[:port]` names of this registry (an IP, a front's
    /// external hostname) that its push events may carry.
    #[serde(default)]
    pub aliases: Vec<At<String>>,
}

/// Where a registry's credentials come from. Secrets are never written in
/// a policy file itself: they come from the environment, a file or docker's
/// `config.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredentials {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub username_env: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub password_file: Option<String>,
    #[serde(default)]
    pub docker_config: Option<bool>,
    /// A docker config.json / podman auth.json to read instead of the
    /// default locations (implies docker_config).
    #[serde(default)]
    pub auth_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRepositories {
    #[serde(default)]
    pub include: Vec<At<String>>,
    #[serde(default)]
    pub exclude: Vec<At<String>>,
    /// Ordered renaming rules, first match wins.
    #[serde(default)]
    pub rename: Vec<At<RawRename>>,
}

/// One renaming rule: `from` a regex over the name relative to the source
/// prefix, `to` a template (`$1`, `${name}`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRename {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTags {
    #[serde(default)]
    pub include: Vec<At<String>>,
    #[serde(default)]
    pub exclude: Vec<At<String>>,
    #[serde(default)]
    pub semver: Option<At<String>>,
    #[serde(default)]
    pub latest: Option<At<u32>>,
    /// A tag the destination already lists is never checked again.
    #[serde(default)]
    pub immutable: Option<bool>,
    /// The destination tag: a template holding `{tag}` once (`{tag}-mirror`).
    #[serde(default)]
    pub rename: Option<At<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrigger {
    #[serde(default)]
    pub interval: Option<At<String>>,
    #[serde(default)]
    pub cron: Option<At<String>>,
}

/// Retries: within a pass (`attempts`) and across passes (`backoff` doubling
/// up to `max_backoff`, giving up after `give_up_after` failed passes).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    #[serde(default)]
    pub attempts: Option<At<u32>>,
    #[serde(default)]
    pub backoff: Option<At<String>>,
    #[serde(default)]
    pub max_backoff: Option<At<String>>,
    #[serde(default)]
    pub give_up_after: Option<At<u32>>,
}

/// Parse one file's text. The error carries the line when the parser knows it.
pub fn parse(text: &str) -> Result<RawPolicy, (Option<u64>, String)> {
    serde_saphyr::from_str::<RawPolicy>(text).map_err(|e| {
        let line = e.location().map(|l| l.line()).filter(|&l| l > 0);
        (line, first_line(&e.to_string()))
    })
}

/// The parser's message without its source excerpt.
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or(message).trim().trim_start_matches("error: ");
    // A "line N column M: " prefix repeats what we print ourselves.
    match line.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") && head.contains(" column ") => rest.to_string(),
        _ => line.to_string(),
    }
}
