//! Helpers shared by the integration tests: run the binary, compare
//! registries tag by tag and deeply.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use testkit::dataset::Spec;
use testkit::{Access, Registry, TestRegistry};

/// What one `regferry` invocation did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout parsed as JSON (for `--json` runs).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }

    pub fn assert_ok(&self) -> &Run {
        assert_eq!(self.code, 0, "regferry failed\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
}

/// A scratch directory for a test's state database and config files.
pub struct Scratch {
    pub dir: TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch { dir: tempfile::Builder::new().prefix("regferry-test-").tempdir().expect("temp dir") }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn state(&self) -> String {
        self.path("state/regferry.db").to_string_lossy().into_owned()
    }
}

/// The binary under test: this build's, or `REGFERRY_TEST_BINARY` (to show
/// that a new test fails on an older build).
pub fn binary() -> &'static str {
    static BINARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| std::env::var("REGFERRY_TEST_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_regferry").to_string()))
}

/// `regferry ARGS` (one string, split by the shell) in a pseudo-terminal
/// from script(1), with the environment of [`command`]: whether it
/// succeeded, and what the terminal showed (progress lines included).
pub async fn in_terminal(scratch: &Scratch, args: &str) -> (bool, String) {
    let env = command(scratch, &[], &[]);
    let mut script = tokio::process::Command::new("script");
    script
        .args(["-qec", &format!("{} {args}", binary()), "/dev/null"])
        .envs(env.as_std().get_envs().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))))
        .env("TERM", "xterm")
        .stdin(Stdio::null());
    let out = tokio::time::timeout(Duration::from_secs(120), script.output()).await.expect("in time").expect("script");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `regferry args…` with `env`, isolated from the user's docker config and
/// environment, killed if dropped.
pub fn command(scratch: &Scratch, args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(binary());
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("REGFERRY_STATE")
        .env_remove("PGPASSWORD")
        .env_remove("REGFERRY_FROM_CREDS")
        .env_remove("REGFERRY_TO_CREDS")
        .env("HOME", scratch.dir.path())
        .env("XDG_STATE_HOME", scratch.path("xdg-state"))
        .env("DOCKER_CONFIG", scratch.path("no-docker-config"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// `regferry daemon --policies POLICIES --state … --listen 127.0.0.1:PORT`,
/// isolated from the user's docker config, its stderr in the scratch's
/// `daemon.log`, killed if dropped. The caller adds arguments and environment.
pub fn daemon_command(scratch: &Scratch, policies: &str, port: u16) -> tokio::process::Command {
    let state = scratch.state();
    let mut cmd = tokio::process::Command::new(binary());
    cmd.args(["daemon", "--policies", policies, "--state", &state, "--listen", &format!("127.0.0.1:{port}")])
        .env("DOCKER_CONFIG", scratch.path("none"))
        .env("HOME", scratch.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(scratch.path("daemon.log")).expect("log file"))
        .kill_on_drop(true);
    cmd
}

/// Stop a daemon with SIGTERM; it must exit 0 within 20 s. Returns its log.
pub async fn stop_daemon(mut daemon: tokio::process::Child, log: &std::path::Path) -> String {
    let pid = daemon.id().expect("pid") as libc::pid_t;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(20), daemon.wait()).await.expect("daemon stops").expect("wait");
    let log = std::fs::read_to_string(log).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{log}");
    log
}

/// Run `regferry args…` with `env`, isolated from the user's docker config.
/// `regferry VERB --policies POLICIES --state STATE EXTRA…`, with `--policy
/// POLICY` for `failover` and `failback`.
pub async fn policy_verb(scratch: &Scratch, policies: &str, state: &str, policy: &str, verb: &str, extra: &[&str]) -> Run {
    let mut args = vec![verb, "--policies", policies, "--state", state];
    if verb == "failover" || verb == "failback" {
        args.extend(["--policy", policy]);
    }
    args.extend_from_slice(extra);
    regferry(scratch, &args, &[]).await
}

pub async fn regferry(scratch: &Scratch, args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = tokio::time::timeout(Duration::from_secs(600), command(scratch, args, env).output())
        .await
        .expect("regferry did not finish within 10 minutes")
        .expect("run regferry");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The arguments of `regferry migrate --from SRC --to DST --state … --json EXTRA…`.
pub fn migrate_args(scratch: &Scratch, from: &str, to: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["migrate", "--from", from, "--to", to, "--state", &scratch.state(), "--json"].map(String::from).to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `regferry migrate --from SRC --to DST --state … --json EXTRA…`
pub async fn migrate(scratch: &Scratch, from: &str, to: &str, extra: &[&str]) -> Run {
    let args = migrate_args(scratch, from, to, extra);
    regferry(scratch, &args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).await
}

/// Every tag of every `repos` at `src` resolves at `dst` (under `prefix`)
/// to the same digest and media type, and everything it references is
/// there. Returns the number of tags compared.
pub async fn assert_mirrored(src: &Registry, dst: &Registry, repos: &[String], prefix: &str) -> usize {
    let mut compared = 0;
    for repo in repos {
        let dst_repo = if prefix.is_empty() { repo.clone() } else { format!("{prefix}/{repo}") };
        let want = src.tag_map(repo).await;
        let got = dst.tag_map(&dst_repo).await;
        assert!(!want.is_empty(), "source repository {repo} has no tags");
        assert_eq!(got, want, "tags of {dst_repo} differ from {repo} (tag → (digest, media type))");
        for (tag, (digest, _)) in &want {
            let missing = dst.missing_content(&dst_repo, digest).await;
            assert!(missing.is_empty(), "{dst_repo}:{tag} is not pullable: {missing:?}");
            compared += 1;
        }
    }
    compared
}

/// Distinct source repositories of a data set.
pub fn repos_of(items: &[testkit::dataset::Pushed]) -> Vec<String> {
    let mut r: Vec<String> = items.iter().map(|p| p.repo.clone()).collect();
    r.sort();
    r.dedup();
    r
}

/// Every blob a registry stores (under its storage root) hashes to the
/// digest it is stored as: nothing corrupt was ever committed. Returns the
/// number of blobs checked.
pub fn assert_blobs_intact(storage: &std::path::Path) -> usize {
    use sha2::Digest as _;
    let root = storage.join("docker/registry/v2/blobs/sha256");
    let mut checked = 0;
    for prefix in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        for blob in std::fs::read_dir(prefix.path()).into_iter().flatten().flatten() {
            let data = blob.path().join("data");
            let Ok(bytes) = std::fs::read(&data) else { continue };
            let name = blob.file_name().to_string_lossy().into_owned();
            assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), name, "stored blob {} does not match its digest", data.display());
            checked += 1;
        }
    }
    checked
}

/// Poll `check` every 50 ms until it holds; panic with `what` after `limit`.
pub async fn wait_until(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two anonymous plain-HTTP registries, source and destination, with a
/// test client for each.
pub fn registries() -> (TestRegistry, TestRegistry, Registry, Registry) {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    (src, dst, s, d)
}

/// `repos` × `tags` single-platform images with shared base layers, no
/// indexes, no signatures: the smallest data set that still mounts.
pub fn plain_images(repos: usize, tags: usize) -> Spec {
    Spec { repos, tags_per_repo: tags, multi_arch_every: 0, signatures: false, ..Spec::default() }
}
