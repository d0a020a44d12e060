//! `regferry daemon`: run the policies on their triggers until stopped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::sync::Notify;

use regferry::daemon::auth::Tokens;
use regferry::daemon::{self, DaemonError, DaemonOptions};
use regferry::engine::execute::Cancel;
use regferry::registry::Secret;
use regferry::state::StateDb;

use super::{CliError, StateArgs, TimeoutArgs, exit, signals};

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Directory of policy files (or one file); reloaded on SIGHUP or when a file changes.
    #[arg(long, env = "REGFERRY_POLICIES", default_value = "policies", value_name = "PATH")]
    pub policies: PathBuf,

    #[command(flatten)]
    pub state: StateArgs,

    #[command(flatten)]
    pub timeouts: TimeoutArgs,

    /// Address for the status page (/), the API (/api), /healthz, /readyz, /metrics and /events.
    #[arg(long, env = "REGFERRY_LISTEN", default_value = "127.0.0.1:9095", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Policy passes running at once (each copies up to its own `concurrency` tags at once).
    #[arg(long, env = "REGFERRY_MAX_PARALLEL", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64), value_name = "N")]
    pub max_parallel: u16,

    /// Keep finished executions this long (e.g. 7d, 30d); older ones are pruned.
    #[arg(long, env = "REGFERRY_RETENTION", default_value = "30d", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub retention: Duration,

    /// On SIGTERM/SIGINT, in-flight tags get this long to finish before they are aborted.
    #[arg(long, env = "REGFERRY_GRACE", default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub grace: Duration,

    /// Shared secret for POST /events/distribution and /events/harbor: requests whose
    /// Authorization header is not exactly this value (nor an API token) get 401.
    #[arg(long, env = "REGFERRY_EVENTS_TOKEN", hide_env_values = true, value_name = "VALUE")]
    pub events_token: Option<String>,

    /// Admin API token (Authorization: Bearer TOKEN): everything a read-only token may,
    /// plus retry, cancel and run-now. Prefer the environment or --api-token-file.
    #[arg(long, env = "REGFERRY_API_TOKEN", hide_env_values = true, value_name = "TOKEN", conflicts_with = "api_token_file")]
    pub api_token: Option<String>,

    /// File holding the admin API token (e.g. a mounted Secret).
    #[arg(long, env = "REGFERRY_API_TOKEN_FILE", value_name = "PATH")]
    pub api_token_file: Option<PathBuf>,

    /// Read-only API token: policies, executions, tasks, the status page and push events.
    #[arg(long, env = "REGFERRY_API_READ_TOKEN", hide_env_values = true, value_name = "TOKEN", conflicts_with = "api_read_token_file")]
    pub api_read_token: Option<String>,

    /// File holding the read-only API token.
    #[arg(long, env = "REGFERRY_API_READ_TOKEN_FILE", value_name = "PATH")]
    pub api_read_token_file: Option<PathBuf>,

    /// Serve the status page (/) without a token even when API tokens are set.
    #[arg(long, env = "REGFERRY_PUBLIC_STATUS")]
    pub public_status: bool,

    /// Local disk all passes running at once may use together to read each source blob
    /// once for the several destinations of a policy (files beside the state, removed
    /// when each pass ends); each pass also stays within its policy's spool_budget
    /// (default 2GiB). Over it, each destination reads the source itself. Default: no
    /// limit beyond the policies'; 0 turns the spool off.
    #[arg(long, env = "REGFERRY_SPOOL_BUDGET", value_parser = super::run::parse_spool_budget, value_name = "SIZE")]
    pub spool_budget: Option<u64>,
}

/// A token from its flag (or variable) or its file; empty means none.
fn token(value: Option<String>, file: Option<&PathBuf>, flag: &str) -> Result<Option<Secret>, CliError> {
    let text = match (value, file) {
        (Some(v), _) => v,
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| CliError::usage(format!("--{flag}-file {}: {e}", path.display())))?,
        (None, None) => return Ok(None),
    };
    let text = text.trim();
    if text.is_empty() {
        if file.is_some() {
            return Err(CliError::usage(format!("--{flag}-file: the file is empty")));
        }
        return Ok(None);
    }
    Ok(Some(Secret::new(text)))
}

pub async fn run(args: DaemonArgs) -> Result<u8, CliError> {
    // Refuse an invalid policy set with the same report as `policy check`.
    super::policy::load(&args.policies)?;
    let tokens = Tokens {
        admin: token(args.api_token, args.api_token_file.as_ref(), "api-token")?,
        read: token(args.api_read_token, args.api_read_token_file.as_ref(), "api-read-token")?,
        events: args.events_token.filter(|t| !t.is_empty()).map(Secret::new),
        public_status: args.public_status,
    };
    if let (Some(a), Some(r)) = (&tokens.admin, &tokens.read)
        && a == r
    {
        return Err(CliError::usage("the read-only and the admin API token must differ"));
    }
    if let Some(budget) = args.spool_budget {
        regferry::scheme::shared::spool::DiskBudget::process().set_limit(budget);
    }
    let state = StateDb::open_for(&args.state.state, 16).await?.with_worker(args.state.worker(true));
    tracing::info!(state = %state.location(), backend = state.backend().name(), worker = %state.worker().id, "state database ready");
    let cancel = Cancel::default();
    signals::watch(cancel.clone(), args.grace);
    let hangup = Arc::new(Notify::new());
    signals::watch_hangup(hangup.clone());
    let options = DaemonOptions {
        policies: args.policies,
        listen: args.listen,
        max_parallel: usize::from(args.max_parallel),
        retention: args.retention,
        poll: Duration::from_secs(2),
        tokens,
        timeouts: args.timeouts.overrides(),
    };
    match daemon::run(options, state, cancel, hangup).await {
        Ok(()) => Ok(exit::OK),
        Err(e @ DaemonError::Policy(_)) => Err(CliError::usage(e.to_string())),
        Err(e) => Err(CliError::failed(e.to_string())),
    }
}
