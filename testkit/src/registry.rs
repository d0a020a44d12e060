//! Real `docker-registry` processes (the CNCF distribution registry, Debian
//! package) on free loopback ports with temporary storage.
//!
//! Each [`TestRegistry`] kills its process when dropped, so tests never
//! leave registries or ports behind. [`TestRegistry::restart_with`] starts
//! one again on the same port and storage with other settings (a password
//! rotated while a client runs). The access log is kept in a file so
//! tests can count the requests a registry really received.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::s3::S3Storage;

/// How the registry authenticates clients.
#[derive(Debug, Clone, Default)]
pub enum Auth {
    #[default]
    None,
    /// htpasswd basic auth with one user.
    Htpasswd { user: String, password: String },
    /// Bearer tokens from a token service (see [`crate::token::TokenServer`]).
    Token { realm: String, service: String, issuer: String, cert_pem: String },
}

/// Registry settings beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub auth: Auth,
    /// Send push/pull notifications to this URL.
    pub notify_url: Option<String>,
    /// Extra headers for notifications (e.g. Authorization).
    pub notify_headers: Vec<(String, String)>,
    /// Serve TLS with this certificate and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Keep the data on S3 (a bucket on a local `moto_server`, see
    /// [`crate::s3`]) instead of local disk: blob `HEAD`/`GET` then answer
    /// `307` to a presigned storage URL.
    pub s3: Option<S3Storage>,
    /// Maintenance read-only mode (`storage.maintenance.readonly`): reads
    /// work, every upload and manifest push is refused.
    pub read_only: bool,
    /// `catalog: maxentries:`: the largest catalog page the registry serves
    /// (a request for more is refused with `PAGINATION_NUMBER_INVALID`).
    pub catalog_max_entries: Option<u32>,
}

/// A running registry.
pub struct TestRegistry {
    child: Child,
    dir: TempDir,
    /// Keeps the S3 server alive while the registry uses it.
    _s3: Option<S3Storage>,
    pub port: u16,
    /// `http://127.0.0.1:PORT` (or https with TLS).
    pub url: String,
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free loopback port")
}

/// Wait up to `within` until something listens on loopback `port`; `Err`
/// says why not ("exited early (…)" when `exited` reports the process's
/// status, or "did not start listening on PORT").
pub(crate) fn wait_listening(port: u16, within: Duration, mut exited: impl FnMut() -> Option<std::process::ExitStatus>) -> Result<(), String> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = exited() {
            return Err(format!("exited early ({status})"));
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("did not start listening on {port}"))
}

/// The path of the registry binary (Debian's `docker-registry`, or `registry`).
pub fn registry_binary() -> PathBuf {
    for candidate in ["/usr/bin/docker-registry", "/usr/local/bin/registry", "/usr/bin/registry"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!("docker-registry is not installed: run `apt-get install -y docker-registry` (the test script does this)");
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string serialises")
}

impl TestRegistry {
    /// Start a registry with default settings (anonymous, plain HTTP).
    pub fn start() -> TestRegistry {
        TestRegistry::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> TestRegistry {
        let dir = tempfile::Builder::new().prefix("regferry-registry-").tempdir().expect("temp dir");
        let port = free_port();
        fs::create_dir_all(dir.path().join("data")).expect("data dir");
        let child = TestRegistry::spawn(dir.path(), port, &options);
        let scheme = if options.tls.is_some() { "https" } else { "http" };
        let mut registry = TestRegistry { child, dir, _s3: options.s3.clone(), port, url: format!("{scheme}://127.0.0.1:{port}") };
        registry.wait_ready();
        registry
    }

    /// Stop the registry and start it again with `options` on the same
    /// port, temporary directory and storage: what it held stays, and the
    /// access log goes on in the same file. The htpasswd file is written
    /// anew, so this is how a test rotates a password while a client runs.
    pub fn restart_with(&mut self, options: Options) {
        self.stop();
        self.child = TestRegistry::spawn(self.dir.path(), self.port, &options);
        if options.s3.is_some() {
            self._s3 = options.s3.clone();
        }
        let scheme = if options.tls.is_some() { "https" } else { "http" };
        self.url = format!("{scheme}://127.0.0.1:{}", self.port);
        self.wait_ready();
    }

    /// Write the configuration for `options` into `dir` and start the
    /// registry on `port` (storage in `dir/data`, log appended to
    /// `dir/registry.log`).
    fn spawn(dir: &Path, port: u16, options: &Options) -> Child {
        let data = dir.join("data");

        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n{backend}  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n    readonly:\n      enabled: {read_only}\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: regferry-test-secret\n",
            backend = match &options.s3 {
                Some(s3) => s3.yaml(),
                None => format!("  filesystem:\n    rootdirectory: {}\n", yaml_str(&data.to_string_lossy())),
            },
            read_only = options.read_only,
        );
        if let Some((cert, key)) = &options.tls {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                yaml_str(&cert.to_string_lossy()),
                yaml_str(&key.to_string_lossy())
            ));
        }
        if let Some(n) = options.catalog_max_entries {
            config.push_str(&format!("catalog:\n  maxentries: {n}\n"));
        }
        match &options.auth {
            Auth::None => {}
            Auth::Htpasswd { user, password } => {
                let hash = bcrypt::hash(password, 5).expect("bcrypt");
                let path = dir.join("htpasswd");
                fs::write(&path, format!("{user}:{hash}\n")).expect("htpasswd");
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: regferry-test\n    path: {}\n",
                    yaml_str(&path.to_string_lossy())
                ));
            }
            Auth::Token { realm, service, issuer, cert_pem } => {
                let path = dir.join("token-ca.pem");
                fs::write(&path, cert_pem).expect("token cert");
                config.push_str(&format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    yaml_str(realm),
                    yaml_str(service),
                    yaml_str(issuer),
                    yaml_str(&path.to_string_lossy())
                ));
            }
        }
        if let Some(url) = &options.notify_url {
            config.push_str(&format!(
                "notifications:\n  endpoints:\n    - name: regferry\n      url: {}\n      timeout: 2s\n      threshold: 5\n      backoff: 1s\n",
                yaml_str(url)
            ));
            if !options.notify_headers.is_empty() {
                config.push_str("      headers:\n");
                for (k, v) in &options.notify_headers {
                    config.push_str(&format!("        {}: [{}]\n", yaml_str(k), yaml_str(v)));
                }
            }
        }
        let config_path = dir.join("config.yml");
        fs::write(&config_path, config).expect("registry config");
        let log = fs::OpenOptions::new().create(true).append(true).open(dir.join("registry.log")).expect("log file");
        let log2 = log.try_clone().expect("log file");
        let mut command = Command::new(registry_binary());
        // The S3 driver refuses to start with AWS_CA_BUNDLE set, and other
        // AWS_* settings (profiles, real credentials) must not leak in.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("AWS_") {
                command.env_remove(&key);
            }
        }
        command
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .stdin(Stdio::null())
            .spawn()
            .expect("start docker-registry")
    }

    fn wait_ready(&mut self) {
        if let Err(why) = wait_listening(self.port, Duration::from_secs(20), || self.child.try_wait().ok().flatten()) {
            panic!("docker-registry {why}; log:\n{}", self.log());
        }
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's storage root (`docker/registry/v2/...` lives below).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory holding the blob `digest` (`sha256:<hex>`) in the
    /// registry's storage: remove it to make the registry lose that blob.
    pub fn blob_dir(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage().join(format!("docker/registry/v2/blobs/sha256/{}/{hex}", &hex[..2.min(hex.len())]))
    }

    /// The file the registry logs to (access log included).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The registry's process id (for reading its `/proc` counters).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the registry logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Access-log lines (`"METHOD /path HTTP/1.1" status`) received so far.
    pub fn access_lines(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("\" ") && l.contains(" HTTP/1.1\"") && !l.contains("level="))
            .map(str::to_string)
            .collect()
    }

    /// Requests received with `method` whose path contains `path_part`.
    pub fn count(&self, method: &str, path_part: &str) -> usize {
        let needle = format!("\"{method} ");
        self.access_lines().iter().filter(|l| l.contains(&needle) && l.contains(path_part)).count()
    }

    /// Access-log lines whose user agent starts with `agent` (e.g. `regferry/`).
    pub fn lines_by(&self, agent: &str) -> Vec<String> {
        let needle = format!("\"{agent}");
        self.access_lines().into_iter().filter(|l| l.contains(&needle)).collect()
    }

    /// Requests that change something (POST, PUT, PATCH, DELETE).
    pub fn writes(&self) -> usize {
        ["POST", "PUT", "PATCH", "DELETE"].iter().map(|m| self.count(m, "/v2/")).sum()
    }

    /// Stop the registry now.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}
