//! A throwaway PostgreSQL cluster on a free loopback port, for tests and
//! benchmarks of regferry's PostgreSQL state: `initdb` into a temporary
//! directory (as the `postgres` user when running as root, since PostgreSQL
//! refuses to run as root), `pg_ctl start` on `127.0.0.1:PORT` with its
//! socket in that directory, and a database per user of it.
//!
//! The superuser has a password (TCP connections need it: scram-sha-256),
//! so tests can check that regferry never shows it. Dropping the cluster
//! stops the server (`pg_ctl stop -m immediate`) and removes the directory.
//! Nothing here talks to anything off the machine, and nothing here is used
//! by regferry itself. Needs Debian's `postgresql` package (scripts/deps.sh).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tempfile::TempDir;

use crate::registry::{free_port, wait_listening};

/// The superuser of every test cluster.
pub const USER: &str = "regferry";

/// A running PostgreSQL cluster.
pub struct TestPostgres {
    dir: TempDir,
    bin: PathBuf,
    pub port: u16,
    /// The superuser's password (part of every URL this cluster hands out).
    pub password: String,
    databases: AtomicU64,
    /// Whether commands run as the `postgres` user (we are root).
    as_postgres: bool,
}

impl std::fmt::Debug for TestPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPostgres").field("port", &self.port).finish()
    }
}

/// The directory holding `initdb` and `pg_ctl`: Debian's
/// /usr/lib/postgresql/<newest>/bin, else wherever `PATH` has them.
pub fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
            return dir;
        }
    }
    panic!("initdb/pg_ctl not found: install Debian's `postgresql` package (scripts/deps.sh --test does)");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl TestPostgres {
    /// initdb, start, and create the database `regferry`. Takes a second or two.
    pub fn start() -> TestPostgres {
        let dir = tempfile::Builder::new().prefix("regferry-pg-").tempdir().expect("temp dir");
        let as_postgres = is_root();
        let port = free_port();
        let password = format!("pw-{:016x}", rand_u64());
        let pg = TestPostgres { dir, bin: bin_dir(), port, password, databases: AtomicU64::new(0), as_postgres };
        if as_postgres {
            let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(pg.dir.path()).status().expect("chown");
            assert!(status.success(), "chown of the cluster directory to postgres failed");
        }
        let pwfile = pg.dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{}\n", pg.password)).expect("write pwfile");
        if as_postgres {
            let _ = Command::new("chown").args(["postgres:postgres"]).arg(&pwfile).status();
        }
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                USER.as_ref(),
                "--pwfile".as_ref(),
                pwfile.as_os_str(),
                "--auth-local=trust".as_ref(),
                "--auth-host=scram-sha-256".as_ref(),
                "--no-sync".as_ref(),
                "--locale=C".as_ref(),
                "--encoding=UTF8".as_ref(),
            ],
        );
        pg.start_server();
        pg.psql("postgres", "CREATE DATABASE regferry");
        pg
    }

    /// `pg_ctl start` on the cluster's port, waiting until it listens.
    fn start_server(&self) {
        let data = self.data();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        self.run(
            "pg_ctl",
            &["-D".as_ref(), data.as_os_str(), "-l".as_ref(), log.as_os_str(), "-w".as_ref(), "-o".as_ref(), options.as_ref(), "start".as_ref()],
        );
        if let Err(why) = wait_listening(self.port, Duration::from_secs(30), || None) {
            panic!("postgres {why}; log:\n{}", self.log());
        }
    }

    /// Stop the server (an outage: connections are cut, new ones refused)
    /// until [`TestPostgres::restart`].
    pub fn stop(&self) {
        let data = self.data();
        self.run("pg_ctl", &["-D".as_ref(), data.as_os_str(), "-m".as_ref(), "fast".as_ref(), "-w".as_ref(), "stop".as_ref()]);
    }

    /// Start the server again after [`TestPostgres::stop`], on the same port with the same data.
    pub fn restart(&self) {
        self.start_server();
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The cluster's directory (its socket lives here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        c.current_dir(self.dir.path()).stdin(Stdio::null());
        c
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> Output {
        let out = self.command(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} failed ({}):\n{}{}\nlog:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        out
    }

    /// Run SQL through `psql` on the cluster's socket (as the superuser,
    /// no password needed there); returns what it printed (unaligned, tuples only).
    pub fn psql(&self, database: &str, sql: &str) -> String {
        // `command` joins onto the bin directory: an absolute path stands as it is.
        let psql = if self.bin.join("psql").is_file() { "psql" } else { "/usr/bin/psql" };
        let dir = self.dir.path().to_string_lossy().into_owned();
        let port = self.port.to_string();
        let words = ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", &dir, "-p", &port, "-U", USER, "-d", database, "-c", sql];
        let args: Vec<&std::ffi::OsStr> = words.iter().map(|s| s.as_ref()).collect();
        String::from_utf8_lossy(&self.run(psql, &args).stdout).into_owned()
    }

    /// Run the SQL of `file` in `database` (read here and handed to
    /// `psql` on its standard input, so the file need not be readable by
    /// the `postgres` user); panics when it fails.
    pub fn psql_file(&self, database: &str, file: &Path) {
        let sql = std::fs::read(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        let psql = if self.bin.join("psql").is_file() { "psql" } else { "/usr/bin/psql" };
        let dir = self.dir.path().to_string_lossy().into_owned();
        let port = self.port.to_string();
        let mut child = self
            .command(psql)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", &dir, "-p", &port, "-U", USER, "-d", database])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql");
        let mut stdin = child.stdin.take().expect("psql stdin");
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&sql);
        });
        let out = child.wait_with_output().expect("psql");
        let _ = writer.join();
        assert!(out.status.success(), "psql -f {} failed: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    }

    /// `pg_dump` of `database` (no owners, no privileges) into `file`;
    /// `false` when it failed.
    pub fn dump(&self, database: &str, file: &Path) -> bool {
        let pg_dump = if self.bin.join("pg_dump").is_file() { "pg_dump" } else { "/usr/bin/pg_dump" };
        let dir = self.dir.path().to_string_lossy().into_owned();
        let port = self.port.to_string();
        let out = self
            .command(pg_dump)
            .args(["--no-owner", "--no-privileges", "-h", &dir, "-p", &port, "-U", USER, "-d", database])
            .stderr(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() && !o.stdout.is_empty() => std::fs::write(file, &o.stdout).is_ok(),
            _ => false,
        }
    }

    /// The URL of database `name` (with the password).
    pub fn url_of(&self, name: &str) -> String {
        format!("postgres://{USER}:{}@127.0.0.1:{}/{name}", self.password, self.port)
    }

    /// The URL of the database `regferry`, created at start.
    pub fn url(&self) -> String {
        self.url_of("regferry")
    }

    /// A new, empty database; returns its URL.
    pub fn database(&self) -> String {
        let name = format!("db{}", self.databases.fetch_add(1, Ordering::Relaxed));
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url_of(&name)
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.command("pg_ctl").args(["-D".as_ref(), data.as_os_str(), "-m".as_ref(), "immediate".as_ref(), "stop".as_ref()]).output();
    }
}

/// A random number from the OS (no extra crate for one password).
fn rand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    u64::from_le_bytes(bytes) ^ u64::from(std::process::id())
}
