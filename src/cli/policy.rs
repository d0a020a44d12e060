//! `regferry policy check`: validate policy files without running anything.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use regferry::policy::{self, PolicyError};

use super::{CliError, exit};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check every policy file in a directory (or one file): fields, globs, regexes,
    /// semver ranges, durations, cron expressions, credentials' environment variables,
    /// unique names. Prints each problem as FILE:LINE: FIELD: MESSAGE; exit 2 on any.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// A directory of *.yaml / *.yml policy files, or one file.
    #[arg(default_value = "policies", value_name = "PATH")]
    pub path: PathBuf,

    /// Check without the secrets (e.g. in CI): credentials' environment variables,
    /// password files, auth files, CA bundles and client certificates need not exist.
    /// Everything else is checked as usual; no registry is contacted either way.
    #[arg(long)]
    pub offline: bool,
}

/// Load the policy set at `path`, turning problems into a usage error (exit 2).
pub fn load(path: &std::path::Path) -> Result<policy::PolicySet, CliError> {
    policy::load(path, &|k| std::env::var(k).ok()).map_err(|e| match e {
        PolicyError::Invalid(_) => CliError::usage(e.to_string()),
        other => CliError::usage(other.to_string()),
    })
}

pub async fn run(command: PolicyCommand) -> Result<u8, CliError> {
    match command {
        PolicyCommand::Check(args) => {
            let set = if args.offline {
                policy::load_offline(&args.path).map_err(|e| CliError::usage(e.to_string()))?
            } else {
                load(&args.path)?
            };
            for p in &set.policies {
                let destinations: Vec<String> = p.destinations.iter().map(|d| d.url().to_string()).collect();
                println!("ok  {:<24} {} → {}  ({})", p.name, p.source.url, destinations.join(", "), p.trigger);
            }
            println!("{} policies valid", set.policies.len());
            Ok(exit::OK)
        }
    }
}
