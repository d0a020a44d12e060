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
    regferry::job::set_part_tags(args.part_tags as usize);
    // --threads 1: one thread runs everything (SQLite keeps its own), the
    // cheapest in CPU when the registries need the machine's cores. More:
    // TLS on both sides and the sha256 of every streamed blob spread over
    // the cores (hashing happens chunk by chunk as bytes go by, tens of
    // microseconds per poll with the CPU's SHA extensions, so it never
    // holds a worker for long).
    let threads = args.threads.map(usize::from).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = if threads > 1 {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("regferry: cannot start the async runtime: {e}");
            return ExitCode::from(cli::exit::FAILED);
        }
    };
    let quiet = args.quiet;
    // The command runs as a task on the runtime, not in `block_on` on the
    // main thread: the connection tasks it spawns then start on the worker
    // that is running it, instead of every request and answer crossing
    // between the main thread and a worker (a thread wake-up each way).
    let command = async move {
        match args.command {
            Command::Migrate(a) => cli::migrate::run(a, quiet).await,
            Command::Copy(a) => cli::copy::run(a, quiet).await,
            Command::Policy(c) => cli::policy::run(c).await,
            Command::Run(a) => cli::run::run(a, quiet).await,
            Command::Daemon(a) => cli::daemon::run(a).await,
            Command::Jobs(c) => cli::jobs::run(c).await,
            Command::Verify(a) => cli::verify::run(a, quiet).await,
            Command::Failover(a) => cli::failover::run(a, regferry::dr::failover::Switch::Failover, quiet).await,
            Command::Failback(a) => cli::failover::run(a, regferry::dr::failover::Switch::Failback, quiet).await,
            Command::Completions(a) => cli::docs::completions(a),
            Command::Man(a) => cli::docs::man(a),
        }
    };
    let result = runtime.block_on(async move {
        match tokio::spawn(command).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(cli::CliError::failed(format!("the command's task ended early: {e}"))),
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
