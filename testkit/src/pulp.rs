//! Pulp's container registry (`pulp-container` on `pulpcore`, from PyPI) as
//! a second registry implementation of the test lab: a throwaway PostgreSQL
//! cluster ([`crate::postgres`]), the API server, the content app and one
//! task worker on free loopback ports, with basic or token auth, behind an
//! nginx front ([`crate::nginx`]: `/pulp/` to the content app, the rest to
//! the API, so blob redirects stay on the front's origin) or without one
//! (blob `GET`/`HEAD` then redirect to the content app's own port).
//!
//! Pulp is installed by `scripts/deps.sh --test` into a virtualenv
//! (`$REGFERRY_PULP_VENV`, default `~/.cache/regferry/pulp-venv`). Its
//! database schema is migrated once per installed version and kept as a
//! dump next to the virtualenv, so later starts restore it in a few seconds
//! instead of migrating for ~20 s. No Redis: Pulp's cache is off.
//!
//! The admin password is hashed with MD5 (Django's `PASSWORD_HASHERS`,
//! test-only): Pulp's default PBKDF2 costs ~0.35 s of CPU per basic-auth
//! request. Every process runs in its own process group, and dropping a
//! [`TestPulp`] kills the groups (gunicorn's workers and the task worker's
//! forks with them), the front and the database. Nothing here talks to
//! anything off the machine, and nothing here is used by regferry itself.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::nginx::{Front, Nginx};
use crate::postgres::{self, TestPostgres};
use crate::registry::free_port;

/// How clients authenticate to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PulpAuth {
    /// `TOKEN_AUTH_DISABLED = True`: HTTP basic on every request.
    #[default]
    Basic,
    /// Bearer tokens from Pulp's own token service (`/token/`, ES256).
    Token,
}

/// The shape of one lab Pulp.
#[derive(Debug, Clone, Default)]
pub struct PulpOptions {
    pub auth: PulpAuth,
    /// Put an nginx front before the API and the content app.
    pub front: bool,
}

/// A running Pulp registry.
pub struct TestPulp {
    dir: TempDir,
    children: Vec<(String, Child)>,
    front: Option<Nginx>,
    pg: TestPostgres,
    /// What clients use: the front, or the API server.
    pub url: String,
    /// The API server's own port (the registry `/v2/` and `/token/`).
    pub api_port: u16,
    /// The content app's own port (where blob redirects lead without a front).
    pub content_port: u16,
    pub user: String,
    pub password: String,
    pub options: PulpOptions,
}

impl std::fmt::Debug for TestPulp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPulp").field("url", &self.url).finish()
    }
}

/// The virtualenv Pulp is installed in.
pub fn venv() -> PathBuf {
    if let Some(v) = std::env::var_os("REGFERRY_PULP_VENV") {
        return PathBuf::from(v);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/regferry/pulp-venv")
}

/// Whether Pulp is installed (tests that need it say how to install it when not).
pub fn installed() -> bool {
    venv().join("bin/pulpcore-api").is_file()
}

/// `pulpcore-X.Y.Z+pulp_container-A.B.C` of the installed packages (the key of the schema dump).
fn versions() -> String {
    let mut found: Vec<String> = fs::read_dir(venv().join("lib"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|py| fs::read_dir(py.path().join("site-packages")).into_iter().flatten().flatten())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".dist-info")?;
            (stem.starts_with("pulpcore-") || stem.starts_with("pulp_container-")).then(|| stem.to_string())
        })
        .collect();
    found.sort();
    found.join("+")
}

fn py_str(s: &str) -> String {
    serde_json::to_string(s).expect("string serialises")
}

/// `GET path` over plain HTTP/1.0 with an optional basic credential; the
/// status and the body (no TLS, loopback only).
pub fn http_get(port: u16, path: &str, basic: Option<(&str, &str)>) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let auth = basic.map(|(u, p)| format!("Authorization: {}\r\n", crate::client::basic(u, p))).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n{auth}\r\n").ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

impl TestPulp {
    /// Start a Pulp registry; panics (with the logs) when it is not ready within a minute.
    pub fn start(options: PulpOptions) -> TestPulp {
        assert!(
            installed(),
            "Pulp is not installed in {}: run scripts/deps.sh --test (pip install of pulp-container into that virtualenv)",
            venv().display()
        );
        let started = Instant::now();
        let dir = tempfile::Builder::new().prefix("regferry-pulp-").tempdir().expect("temp dir");
        let pg = TestPostgres::start();
        let (api_port, content_port) = (free_port(), free_port());
        let front = options.front.then(|| {
            let extra = format!("location /pulp/ {{ proxy_pass http://127.0.0.1:{content_port}; }}\n");
            Nginx::start(&format!("http://127.0.0.1:{api_port}"), Front { extra, ..Front::default() })
        });
        let url = front.as_ref().map(|f| f.url.clone()).unwrap_or_else(|| format!("http://127.0.0.1:{api_port}"));
        let content_origin = front.as_ref().map(|f| f.url.clone()).unwrap_or_else(|| format!("http://127.0.0.1:{content_port}"));
        let d = dir.path();
        for sub in ["media", "static", "work"] {
            fs::create_dir_all(d.join(sub)).expect("pulp dir");
        }
        fs::write(d.join("db.key"), "vJh2xMFoU3VvsDCvDnzAw1SY-oBRqsfGmIJclAUwHiw=\n").expect("db key");
        let mut settings = format!(
            "SECRET_KEY = \"regferry-test-only\"\n\
             DATABASES = {{\"default\": {{\"ENGINE\": \"django.db.backends.postgresql\", \"NAME\": \"pulp\", \"USER\": {user}, \
             \"PASSWORD\": {pw}, \"HOST\": \"127.0.0.1\", \"PORT\": {port}}}}}\n\
             CONTENT_ORIGIN = {origin}\n\
             MEDIA_ROOT = {media}\nSTATIC_ROOT = {static_}\nWORKING_DIRECTORY = {work}\nFILE_UPLOAD_TEMP_DIR = {work}\n\
             DB_ENCRYPTION_KEY = {key}\n\
             CACHE_ENABLED = False\nANALYTICS = False\nALLOWED_HOSTS = [\"*\"]\n\
             PASSWORD_HASHERS = [\"django.contrib.auth.hashers.MD5PasswordHasher\"]\n",
            user = py_str(postgres::USER),
            pw = py_str(&pg.password),
            port = pg.port,
            origin = py_str(&content_origin),
            media = py_str(&d.join("media").to_string_lossy()),
            static_ = py_str(&d.join("static").to_string_lossy()),
            work = py_str(&d.join("work").to_string_lossy()),
            key = py_str(&d.join("db.key").to_string_lossy()),
        );
        match options.auth {
            PulpAuth::Basic => settings.push_str("TOKEN_AUTH_DISABLED = True\n"),
            PulpAuth::Token => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("EC key");
                fs::write(d.join("token-private.pem"), key.serialize_pem()).expect("token key");
                fs::write(d.join("token-public.pem"), key.public_key_pem()).expect("token key");
                settings.push_str(&format!(
                    "TOKEN_AUTH_DISABLED = False\nTOKEN_SERVER = {}\nTOKEN_SIGNATURE_ALGORITHM = \"ES256\"\n\
                     PUBLIC_KEY_PATH = {}\nPRIVATE_KEY_PATH = {}\n",
                    py_str(&format!("{url}/token/")),
                    py_str(&d.join("token-public.pem").to_string_lossy()),
                    py_str(&d.join("token-private.pem").to_string_lossy()),
                ));
            }
        }
        fs::write(d.join("settings.py"), settings).expect("pulp settings");
        pg.psql("postgres", "CREATE DATABASE pulp");
        let mut pulp = TestPulp {
            dir,
            children: Vec::new(),
            front,
            pg: pg,
            url,
            api_port,
            content_port,
            user: "admin".into(),
            // Part of the cached schema dump (see `schema`).
            password: "admin-pw-for-tests".into(),
            options,
        };
        pulp.schema();
        eprintln!("pulp schema ready in {:.1}s", started.elapsed().as_secs_f64());
        let bind = |port: u16| format!("127.0.0.1:{port}");
        pulp.spawn("api", "pulpcore-api", &["--bind", &bind(api_port), "--workers", "1", "--timeout", "300"]);
        pulp.spawn("content", "pulpcore-content", &["--bind", &bind(content_port), "--workers", "1"]);
        pulp.spawn("worker", "pulpcore-worker", &[]);
        // (A loaded 2-core machine starting two at once needs ~90 s.)
        pulp.wait_ready(Instant::now() + Duration::from_secs(180));
        eprintln!("pulp ready at {} in {:.1}s", pulp.url, started.elapsed().as_secs_f64());
        pulp
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(venv().join("bin").join(program));
        c.env("PULP_SETTINGS", self.dir.path().join("settings.py"))
            .env("DJANGO_SETTINGS_MODULE", "pulpcore.app.settings")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("PULP_") && k != "PULP_SETTINGS" {
                c.env_remove(&key);
            }
        }
        c
    }

    /// `pulpcore-manager ARGS…`; panics with its output when it fails.
    fn manage(&self, args: &[&str]) -> String {
        let out = self.command("pulpcore-manager").args(args).output().expect("run pulpcore-manager");
        assert!(
            out.status.success(),
            "pulpcore-manager {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The migrated schema with the admin user: restored from the dump of
    /// this version, else migrated (and dumped for the next start).
    fn schema(&self) {
        let dump = venv().with_file_name(format!("pulp-schema-admin-{}.sql", versions()));
        // One process migrates and dumps; the others (tests starting a Pulp
        // at the same time) wait for its dump instead of migrating too.
        let lock = fs::OpenOptions::new().create(true).append(true).open(dump.with_extension("lock")).expect("schema lock file");
        // SAFETY: flock on a file descriptor we own; released when `lock` is closed.
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
        if dump.is_file() {
            self.pg.psql_file("pulp", &dump);
            return;
        }
        self.manage(&["migrate", "--noinput"]);
        self.manage(&["reset-admin-password", "--password", &self.password]);
        let tmp = dump.with_extension(format!("sql.{}", std::process::id()));
        if self.pg.dump("pulp", &tmp) {
            let _ = fs::rename(&tmp, &dump);
        }
        let _ = fs::remove_file(&tmp);
    }

    fn spawn(&mut self, name: &str, program: &str, args: &[&str]) {
        let log = fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("log file");
        let log2 = log.try_clone().expect("log file");
        let child = self
            .command(program)
            .args(args)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        self.children.push((name.to_string(), child));
    }

    fn wait_ready(&mut self, deadline: Instant) {
        let (api, content) = (self.api_port, self.content_port);
        loop {
            let exited = self.children.iter_mut().find_map(|(name, child)| child.try_wait().ok().flatten().map(|s| (name.clone(), s)));
            if let Some((name, status)) = exited {
                panic!("pulp {name} exited early ({status}); logs:\n{}", self.logs());
            }
            let api_up = http_get(api, "/pulp/api/v3/status/", None);
            let workers = api_up.as_ref().is_some_and(|(s, b)| *s == 200 && b.contains("\"online_workers\":[{"));
            let content_up = TcpStream::connect(("127.0.0.1", content)).is_ok();
            if workers && content_up {
                return;
            }
            if Instant::now() > deadline {
                panic!("pulp not ready (api {:?}, content {content_up}); logs:\n{}", api_up.map(|a| a.0), self.logs());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every log of the API, content app and worker (and the front).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["api", "content", "worker"] {
            let text = fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            out.push_str(&format!("--- {name} ---\n{}\n", tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
        }
        if let Some(f) = &self.front {
            out.push_str(&format!("--- front ---\n{}\n", f.error_log()));
        }
        out
    }

    /// The nginx front, if there is one (its access log counts requests).
    pub fn front(&self) -> Option<&Nginx> {
        self.front.as_ref()
    }

    /// `user:password` of the admin.
    pub fn creds(&self) -> String {
        format!("{}:{}", self.user, self.password)
    }

    /// Where Pulp keeps its files (artifacts under `media/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kill every process group now.
    pub fn stop(&mut self) {
        for (_, child) in &mut self.children {
            // SAFETY: signalling the process group of our own child.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
        if let Some(f) = &mut self.front {
            f.stop();
        }
    }
}

impl Drop for TestPulp {
    fn drop(&mut self) {
        self.stop();
    }
}
