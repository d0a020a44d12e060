//! `regferry daemon`: run the policies on their triggers until stopped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::sync::Notify;

use regferry::daemon::{self, DaemonError, DaemonOptions};
use regferry::engine::execute::Cancel;
use regferry::registry::Secret;
use regferry::state::StateDb;

use super::{CliError, StateArgs, TimeoutArgs, exit, signals};

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Directory of policy files (or one file); reloaded on SIGHUP or when a file changes.
    #[arg(long, default_value = "policies", value_name = "PATH")]
    pub policies: PathBuf,

    #[command(flatten)]
    pub state: StateArgs,

    #[command(flatten)]
    pub timeouts: TimeoutArgs,

    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, default_value = "127.0.0.1:9095", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Policy passes running at once (each copies up to its own `concurrency` tags at once).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64), value_name = "N")]
    pub max_parallel: u16,

    /// Keep finished executions this long (e.g. 7d, 30d); older ones are pruned.
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub retention: Duration,

    /// On SIGTERM/SIGINT, in-flight tags get this long to finish before they are aborted.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub grace: Duration,

    /// Shared secret for POST /events/distribution and /events/harbor: requests whose
    /// Authorization header is not exactly this value get 401 (e.g. "Bearer s3cret").
    #[arg(long, env = "REGFERRY_EVENTS_TOKEN", hide_env_values = true, value_name = "VALUE")]
    pub events_token: Option<String>,
}

pub async fn run(args: DaemonArgs) -> Result<u8, CliError> {
    // Refuse an invalid policy set with the same report as `policy check`.
    super::policy::load(&args.policies)?;
    let state = StateDb::open(&args.state.state).await?;
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
        events_token: args.events_token.filter(|t| !t.is_empty()).map(Secret::new),
        timeouts: args.timeouts.overrides(),
    };
    match daemon::run(options, state, cancel, hangup).await {
        Ok(()) => Ok(exit::OK),
        Err(e @ DaemonError::Policy(_)) => Err(CliError::usage(e.to_string())),
        Err(e) => Err(CliError::failed(e.to_string())),
    }
}
