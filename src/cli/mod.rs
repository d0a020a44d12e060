//! The command line: argument definitions, and the translation of library
//! results into output and exit codes.
//!
//! This is the only place that prints for the user or picks an exit code;
//! library modules return typed errors. Secrets given on the command line
//! are taken from the environment when possible and never echoed.

pub mod copy;
pub mod daemon;
pub mod docs;
pub mod failover;
pub mod jobs;
pub mod logging;
pub mod migrate;
pub mod output;
pub mod policy;
pub mod progress;
pub mod run;
pub mod signals;
pub mod verify;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use regferry::policy::TimeoutOverrides;
use regferry::registry::docker_config;
use regferry::registry::{ClientOptions, CredentialSource, Credentials, Endpoint, Proxy, RegistryUrl, Tls};
use regferry::state::StateLocation;

/// Exit codes.
pub mod exit {
    /// Everything in scope succeeded.
    pub const OK: u8 = 0;
    /// The run happened but some tags failed, or a registry was unusable.
    pub const FAILED: u8 = 1;
    /// Bad input: flags, URLs, globs, files.
    pub const USAGE: u8 = 2;
    /// Stopped by Ctrl-C / SIGTERM.
    pub const INTERRUPTED: u8 = 130;
}

/// An error that ends the program: a message and an exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError { code: exit::USAGE, message: message.into() }
    }

    pub fn failed(message: impl Into<String>) -> CliError {
        CliError { code: exit::FAILED, message: message.into() }
    }
}

impl From<regferry::job::JobError> for CliError {
    fn from(e: regferry::job::JobError) -> Self {
        use regferry::engine::EngineError;
        use regferry::job::JobError;
        match &e {
            JobError::Engine(EngineError::Input(_)) => CliError::usage(e.to_string()),
            _ => CliError::failed(e.to_string()),
        }
    }
}

impl From<regferry::state::StateError> for CliError {
    fn from(e: regferry::state::StateError) -> Self {
        CliError::failed(e.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// regferry replicates container images between OCI / Docker registries:
/// same digests, same media types, every blob pullable at the destination.
#[derive(Debug, Parser)]
#[command(name = "regferry", version, propagate_version = true, max_term_width = 100)]
#[command(after_help = "Log verbosity follows RUST_LOG (e.g. RUST_LOG=regferry=debug); -v and -q are shorthands.\n\
Exit codes: 0 success, 1 some tags failed or a registry was unusable, 2 bad input, 130 interrupted.")]
pub struct Cli {
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors (and the final summary).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Worker threads (TLS, hashing and I/O on several cores); 1 runs everything on one thread.
    /// Default: the cores available to the process.
    #[arg(long, global = true, env = "REGFERRY_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024), value_name = "N")]
    pub threads: Option<u16>,

    /// Tags per part of a large run: a scope of more tags is listed, planned and copied whole
    /// repositories at a time, at least this many tags per part, so memory stays flat on a
    /// registry of any size. Lower it on a small machine; a part never splits a repository.
    #[arg(long, global = true, env = "REGFERRY_PART_TAGS", value_parser = clap::value_parser!(u32).range(1..), value_name = "N",
          default_value_t = regferry::job::PART_TAGS as u32, hide_short_help = true)]
    pub part_tags: u32,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy every repository and tag (or those matching --repo) from one registry to another, once.
    #[command(long_about = "Copy every repository and tag (or those matching --repo) from one registry to another, once.\n\n\
Unchanged tags are recognised by one manifest HEAD per side and skipped; blobs already at the \
destination are skipped, blobs held by another destination repository are mounted, the rest are \
streamed and digest-checked. Every run is recorded in the state database; running the same command \
again after a crash or a partial failure resumes the same execution.\n\n\
Repository names: the --from path prefix is stripped, the --to path prefix is prepended\n\
(--from http://a --to http://b/mirror copies a/team/app to b/mirror/team/app).\n\n\
Air-gapped sites: oci:/path on either side is a directory of OCI image layouts, one per repository \
(/path/team/app/ holds team/app, its tags as org.opencontainers.image.ref.name annotations). Export, \
carry the directory, import; a second export writes only what changed.")]
    #[command(after_help = "Examples:\n  \
regferry migrate --from http://127.0.0.1:5001 --to http://127.0.0.1:5002/mirror\n  \
regferry migrate --from registry.old.example --to registry.new.example --repo 'team/**' --dry-run\n  \
REGFERRY_TO_CREDS=admin:secret regferry migrate --from src.example --to dst.example --concurrency 16\n  \
regferry migrate --from registry.example --repo 'base/**' --to oci:/media/usb/export   (then, at the site:)\n  \
regferry migrate --from oci:/media/usb/export --to dr.example")]
    Migrate(migrate::MigrateArgs),

    /// Copy one image (all its platforms, or those named) with its signatures and referrers.
    #[command(long_about = "Copy one image (all its platforms, or those named with --platform) with its \
signatures and referrers, as migrate copies a tag: same digest, same media type, unchanged images \
cost a HEAD per side, recorded and resumable. Exit codes and --json as for migrate.")]
    #[command(after_help = "Examples:\n  \
regferry copy docker.io/library/nginx:1.27 registry.example.com/mirror/nginx\n  \
regferry copy http://127.0.0.1:5001/team/app:v1 http://127.0.0.1:5002/team-app:v1 --platform linux/amd64")]
    Copy(copy::CopyArgs),

    /// Validate policy files.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),

    /// Run one pass of the policies (all, or those named) now, then exit.
    #[command(after_help = "Examples:\n  regferry run --policies policies/\n  regferry run --policies policies/ prod-to-dr --json")]
    Run(run::RunArgs),

    /// Run the policies on their triggers until SIGTERM/SIGINT; serve a status page, an API, /metrics and push events.
    #[command(long_about = "Run the policies on their triggers until SIGTERM/SIGINT.\n\n\
Each policy runs on its trigger (interval or cron), never two passes of one policy at once, at most \
--max-parallel passes overall. An unchanged source costs the tag listings and one manifest HEAD per \
tag per side. Tags that fail are retried on later passes with exponential backoff (the policy's \
`retry` section) and given up after `give_up_after` failed passes, with the error kept. SIGHUP or an \
edited policy file reloads the policies (an invalid set is refused and the old one stays). \
SIGTERM/SIGINT: no new tags are started, in-flight tags get --grace to finish, then the daemon exits 0.")]
    #[command(after_help = "Example:\n  regferry daemon --policies policies/ --state /var/lib/regferry/state.db --listen 0.0.0.0:9095")]
    Daemon(daemon::DaemonArgs),

    /// Inspect and steer executions: list, show, retry, cancel, prune.
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),

    /// Prove that a destination is identical to its source (and, with --deep, pullable).
    #[command(long_about = "Prove that a destination is identical to its source.\n\n\
Every in-scope source tag is compared with the destination by digest and media type (one HEAD per \
tag per side): identical (same digest), missing, digest differs; destination tags the source \
does not have are reported as only at destination. With --deep, every child manifest and every \
blob of every tag is checked at the destination (each distinct blob once): tag lists can agree \
while pulls fail. With --policies, each policy is verified in its current direction and its \
replication lag (age of the oldest change not yet replicated) is read from the state database.\n\n\
Exit 0 only when everything in scope is identical (and pullable with --deep), 1 otherwise, 2 for bad input.")]
    #[command(after_help = "Examples:\n  \
regferry verify --from https://registry.example.com --to https://dr.example.com/mirror --deep\n  \
regferry verify --policies policies/ prod-to-dr --json")]
    Verify(verify::VerifyArgs),

    /// Fail a policy over to its DR registry (its first destination): sync, then reverse the direction.
    #[command(long_about = "Fail a policy over to its DR registry (its first destination).\n\n\
When the primary (the policy's source) still answers, a last pass copies primary → DR first. \
The report gives the RPO (the replication lag at the moment of switching), and DR is deep-verified \
(against the primary, or on its own when the primary is gone): a DR site that is not pullable is \
refused unless --force. Then a fence is written into the registries (DR's \
<namespace>/regferry-fence:<policy>, and the primary's when it answers) and the direction is \
reversed in the state database (the policy file is not edited): `run` and the daemon replicate \
DR → primary, names mapped back (mirror/team/app → team/app). A state database that does not know \
a failover recorded by the fence (a lost or new state) refuses to replicate forward until \
`failover` (take the failed-over direction over) or `failback` is run. Nothing is deleted at the \
new destination unless the policy says `delete: true`.")]
    Failover(failover::SwitchArgs),

    /// Sync a failed-over policy's changes from DR back to the primary, then restore its direction.
    #[command(long_about = "Sync a failed-over policy's changes from DR back to the primary, then \
restore its direction and rewrite the fence as forward. Also works from a state database that lost \
the failover: the fence at DR tells it the policy runs reversed.")]
    Failback(failover::SwitchArgs),

    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "Example:\n  regferry completions bash > /etc/bash_completion.d/regferry")]
    Completions(docs::CompletionsArgs),

    /// Print the man page (or write one per subcommand with --dir).
    #[command(after_help = "Example:\n  regferry man --dir /usr/local/share/man/man1")]
    Man(docs::ManArgs),
}

/// Where the state database lives.
#[derive(Debug, Args, Clone)]
pub struct StateArgs {
    /// State database: a SQLite file path (created if missing; a relative path is resolved
    /// against the current directory and printed) or a postgres://user:password@host/db URL
    /// (a shared PostgreSQL database; the database must exist, its schema is created).
    /// Default: $XDG_STATE_HOME/regferry/regferry.db, else /var/lib/regferry/regferry.db as
    /// root, else ~/.local/state/regferry/regferry.db.
    #[arg(long, env = "REGFERRY_STATE", default_value_t = default_state(), hide_default_value = true, value_name = "PATH|URL",
          hide_env_values = true, value_parser = StateParser)]
    pub state: StateLocation,

    /// This process's name among the workers of one state (default: HOST:PID:RANDOM, six random hex digits); shown in
    /// `jobs show` and on /metrics.
    #[arg(long, env = "REGFERRY_WORKER_ID", value_name = "ID")]
    pub worker_id: Option<String>,

    /// A worker that stops renewing what it holds (a pass, a task) loses it after this long,
    /// and another worker takes over; renewed every third of it.
    #[arg(long, env = "REGFERRY_LEASE_TIME", default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub lease_time: std::time::Duration,
}

impl StateArgs {
    /// This process as a worker of the state; `joins`: it helps with passes
    /// other workers hold (the daemon) instead of waiting for them.
    pub fn worker(&self, joins: bool) -> regferry::state::leases::Worker {
        regferry::state::leases::Worker {
            id: self.worker_id.clone().unwrap_or_else(regferry::state::leases::default_id),
            lease: self.lease_time.max(std::time::Duration::from_millis(300)),
            joins,
        }
    }
}

/// Parses `--state` without ever quoting the value in an error (a URL may
/// hold a password; clap's own errors repeat the value).
#[derive(Clone)]
struct StateParser;

impl clap::builder::TypedValueParser for StateParser {
    type Value = StateLocation;

    fn parse_ref(&self, _: &clap::Command, _: Option<&clap::Arg>, value: &std::ffi::OsStr) -> Result<StateLocation, clap::Error> {
        let invalid = |message: String| clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{message}\n"));
        let value = value.to_str().ok_or_else(|| invalid("--state is not valid UTF-8".into()))?;
        let location: StateLocation = value.parse().map_err(|e: regferry::state::LocationError| invalid(e.to_string()))?;
        // A relative path depends on where the command runs: resolve it once
        // and say where it points (a rerun from another directory would
        // otherwise start a half-done migration over in a new file).
        match location {
            StateLocation::Sqlite(path) if path.is_relative() => {
                let cwd = std::env::current_dir().map_err(|e| invalid(format!("--state is relative and the current directory is unknown: {e}")))?;
                let absolute = cwd.join(&path);
                eprintln!("regferry: state database {} (--state {} is relative to {})", absolute.display(), path.display(), cwd.display());
                Ok(StateLocation::Sqlite(absolute))
            }
            other => Ok(other),
        }
    }
}

/// The state database when none is given: `$XDG_STATE_HOME/regferry/regferry.db`,
/// else `/var/lib/regferry/regferry.db` for root, else
/// `~/.local/state/regferry/regferry.db` — always an absolute path.
pub fn default_state() -> StateLocation {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from).filter(|p| p.is_absolute());
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let dir = match (env("XDG_STATE_HOME"), root, env("HOME")) {
        (Some(xdg), _, _) => xdg.join("regferry"),
        (None, true, _) => PathBuf::from("/var/lib/regferry"),
        (None, false, Some(home)) => home.join(".local/state/regferry"),
        (None, false, None) => PathBuf::from("/var/tmp/regferry"),
    };
    StateLocation::sqlite(dir.join("regferry.db"))
}

/// Source and destination registries with their credentials and TLS settings.
#[derive(Debug, Args, Clone)]
pub struct RegistryArgs {
    /// Source registry: https://host[:port][/prefix] (https when no scheme), http:// for plain HTTP,
    /// or oci:/path, a directory of OCI image layouts (one per repository).
    #[arg(long, value_name = "URL")]
    pub from: String,

    /// Destination registry: https://host[:port][/prefix]; the prefix is prepended to repository names;
    /// or oci:/path (an export for an air-gapped site: oci:/path/REPO:TAG for skopeo).
    #[arg(long, value_name = "URL")]
    pub to: String,

    #[command(flatten)]
    pub access: AccessArgs,
}

/// Credentials and TLS settings for the `--from` and `--to` registries.
#[derive(Debug, Args, Clone)]
pub struct AccessArgs {
    /// Source credentials as USER:PASSWORD (default: docker config.json, else anonymous).
    #[arg(long, env = "REGFERRY_FROM_CREDS", hide_env_values = true, value_name = "USER:PASS")]
    pub from_creds: Option<String>,

    /// Destination credentials as USER:PASSWORD (default: docker config.json, else anonymous).
    #[arg(long, env = "REGFERRY_TO_CREDS", hide_env_values = true, value_name = "USER:PASS")]
    pub to_creds: Option<String>,

    /// Extra PEM CA bundle to trust for the source.
    #[arg(long, value_name = "FILE")]
    pub from_ca: Option<PathBuf>,

    /// Extra PEM CA bundle to trust for the destination.
    #[arg(long, value_name = "FILE")]
    pub to_ca: Option<PathBuf>,

    /// Do not verify the source's TLS certificate (dangerous).
    #[arg(long)]
    pub from_insecure: bool,

    /// Do not verify the destination's TLS certificate (dangerous).
    #[arg(long)]
    pub to_insecure: bool,

    /// Client certificate (PEM) for mutual TLS with the source; needs --from-key.
    #[arg(long, value_name = "FILE")]
    pub from_cert: Option<PathBuf>,

    /// Private key (PEM) of --from-cert.
    #[arg(long, value_name = "FILE")]
    pub from_key: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS with the destination; needs --to-key.
    #[arg(long, value_name = "FILE")]
    pub to_cert: Option<PathBuf>,

    /// Private key (PEM) of --to-cert.
    #[arg(long, value_name = "FILE")]
    pub to_key: Option<PathBuf>,

    /// Credentials file (docker config.json or podman auth.json) to read instead of the default locations.
    #[arg(long, env = "REGISTRY_AUTH_FILE", value_name = "FILE")]
    pub authfile: Option<PathBuf>,
}

impl AccessArgs {
    /// The endpoints for source URL `from` and destination URL `to`.
    pub fn endpoints(&self, from: &str, to: &str) -> Result<(Endpoint, Endpoint), CliError> {
        let mut src = endpoint(from, self.from_creds.as_deref(), self.authfile.as_ref(), self.from_ca.as_ref(), self.from_insecure, "from")?;
        let mut dst = endpoint(to, self.to_creds.as_deref(), self.authfile.as_ref(), self.to_ca.as_ref(), self.to_insecure, "to")?;
        src.tls.client_cert = self.from_cert.clone();
        src.tls.client_key = self.from_key.clone();
        dst.tls.client_cert = self.to_cert.clone();
        dst.tls.client_key = self.to_key.clone();
        for (e, flag) in [(&src, "from"), (&dst, "to")] {
            match (&e.tls.client_cert, &e.tls.client_key) {
                (Some(c), Some(k)) => Tls::check_client_identity(c, k).map_err(|m| CliError::usage(format!("--{flag}-cert: {m}")))?,
                (None, None) => {}
                _ => return Err(CliError::usage(format!("--{flag}-cert and --{flag}-key go together"))),
            }
        }
        Ok((src, dst))
    }
}

/// Build an endpoint from a URL, optional USER:PASS, and TLS flags; fall back
/// to docker's / podman's credential files (read when the registry asks).
fn endpoint(url: &str, creds: Option<&str>, authfile: Option<&PathBuf>, ca: Option<&PathBuf>, insecure: bool, flag: &str) -> Result<Endpoint, CliError> {
    let url = RegistryUrl::parse(url).map_err(|e| CliError::usage(format!("--{flag}: {e}")))?;
    let credentials = match creds {
        Some(c) => CredentialSource::Fixed(Credentials::from_user_pass(c).map_err(|e| CliError::usage(format!("--{flag}-creds: {e}")))?),
        None => {
            let files: Vec<PathBuf> = authfile.into_iter().cloned().collect();
            docker_config::check(&files).map_err(|e| CliError::usage(e.to_string()))?;
            CredentialSource::ConfigFiles { files }
        }
    };
    if let Some(ca) = ca {
        Tls::check_ca_file(ca).map_err(|e| CliError::usage(format!("--{flag}-ca: {e}")))?;
    }
    let tls = Tls { insecure_skip_verify: insecure, ca_file: ca.cloned(), ..Tls::default() };
    Ok(Endpoint { url, credentials, tls, proxy: Proxy::Environment, limits: Default::default(), chunk_size: None })
}

/// Transfer timeouts, for every command that talks to registries.
#[derive(Debug, Args, Clone, Default)]
pub struct TimeoutArgs {
    /// Give up on a transfer (and retry it) when no byte moves for this long: no response,
    /// no byte of a download, no byte of an upload taken. Not a deadline: a big layer takes
    /// as long as it takes. Default 60s (or a policy's stall_timeout).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub stall_timeout: Option<Duration>,

    /// How long a registry may take to answer after the last byte of an upload (it may be
    /// verifying and moving the blob). Default 5m, or the stall timeout when longer (or a
    /// policy's commit_timeout).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub commit_timeout: Option<Duration>,
}

impl TimeoutArgs {
    /// The timeouts given, to apply over a policy's own.
    pub fn overrides(&self) -> TimeoutOverrides {
        TimeoutOverrides { stall: self.stall_timeout, commit: self.commit_timeout }
    }

    /// Client settings: the defaults with the timeouts given.
    pub fn client_options(&self) -> ClientOptions {
        self.overrides().apply(&ClientOptions::default())
    }
}

/// A humantime duration (`90s`, `2m`, `1h 30m`), at least one second.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 30s, 2m, 1h)"))?;
    if d < Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(d)
}

/// A chunk size such as `8MiB` (256KiB to 1GiB).
pub fn parse_chunk_size(s: &str) -> Result<u64, String> {
    regferry::registry::endpoint::parse_size(s).and_then(regferry::policy::check_chunk_size)
}

impl RegistryArgs {
    pub fn endpoints(&self) -> Result<(Endpoint, Endpoint), CliError> {
        self.access.endpoints(&self.from, &self.to)
    }
}

/// Open the state database of `args` as a worker that waits for passes
/// other workers hold, its pool sized for `concurrency` tasks.
pub async fn open_state(args: &StateArgs, concurrency: usize) -> Result<regferry::state::StateDb, CliError> {
    Ok(regferry::state::StateDb::open_for(&args.state, concurrency).await?.with_worker(args.worker(false)))
}
