//! The `regferry` binary: parse the command line, set up logging, run the
//! command, and turn its outcome into output and an exit code. Nothing
//! below this edge prints or exits.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let args = Cli::parse();
    cli::logging::init(args.verbose, args.quiet, args.log_format);
    // One thread runs everything (SQLite keeps its own): regferry waits on
    // registries far more than it computes, and on the 2-core benchmark
    // machine a multi-threaded runtime spent about a third more CPU on
    // waking threads than this one, CPU the registries themselves need.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("regferry: cannot start the async runtime: {e}");
            return ExitCode::from(cli::exit::FAILED);
        }
    };
    let quiet = args.quiet;
    let result = runtime.block_on(async move {
        match args.command {
            Command::Migrate(a) => cli::migrate::run(a, quiet).await,
            Command::Policy(c) => cli::policy::run(c).await,
            Command::Run(a) => cli::run::run(a).await,
            Command::Daemon(a) => cli::daemon::run(a).await,
            Command::Jobs(c) => cli::jobs::run(c).await,
            Command::Verify(a) => cli::verify::run(a).await,
            Command::Failover(a) => cli::failover::run(a, regferry::dr::failover::Switch::Failover).await,
            Command::Failback(a) => cli::failover::run(a, regferry::dr::failover::Switch::Failback).await,
            Command::Completions(a) => cli::docs::completions(a),
            Command::Man(a) => cli::docs::man(a),
        }
    });
    // Do not wait for stray background tasks (signal watchers) on the way out.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("regferry: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
