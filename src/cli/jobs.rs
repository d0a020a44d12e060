//! `regferry jobs`: what ran, what failed and why, and the operator's levers
//! (retry, cancel, prune) — all read from and written to the state database.

use std::fmt::Write as _;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;

use regferry::state::jobs::{CancelOutcome, ExecutionFilter, ExecutionRow, TaskRow};
use regferry::state::{ExecutionStatus, StateDb, TaskStatus, now_ms};

use super::{CliError, StateArgs, exit};

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List executions, newest first, with their task counts.
    List(ListArgs),
    /// Show one execution and every task: digest, attempts, and the exact last error.
    Show(ShowArgs),
    /// Queue failed tasks again: the next pass of the job (daemon, `run`, or the same
    /// `migrate`) resumes the execution at once, without waiting for backoff.
    Retry(RetryArgs),
    /// Cancel an execution: a running one stops starting new tags within seconds,
    /// one that is not running has its unfinished tasks marked canceled.
    Cancel(IdArgs),
    /// Delete finished executions older than a duration (the latest of each job is kept).
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Only executions of this policy.
    #[arg(long, value_name = "NAME")]
    pub policy: Option<String>,
    /// Only executions with this status, or with at least one task in it.
    #[arg(long, value_parser = parse_status, value_name = "STATUS")]
    pub status: Option<String>,
    /// Only executions that touched this repository (source or destination name).
    #[arg(long, value_name = "REPO")]
    pub repo: Option<String>,
    /// Only executions started within this long (e.g. 2h, 3d).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub since: Option<Duration>,
    /// At most this many executions.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub limit: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Execution id (from `jobs list`).
    pub id: i64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Execution id (from `jobs list`).
    pub id: i64,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["id", "failed"]))]
pub struct RetryArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Execution id (from `jobs list`).
    pub id: Option<i64>,
    /// Every job whose latest execution has failed tasks.
    #[arg(long)]
    pub failed: bool,
    /// With --failed: only this policy's.
    #[arg(long, value_name = "NAME", requires = "failed")]
    pub policy: Option<String>,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Delete executions that finished longer ago than this (e.g. 30d).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub older_than: Duration,
}

fn parse_status(s: &str) -> Result<String, String> {
    if s.parse::<TaskStatus>().is_ok() || s.parse::<ExecutionStatus>().is_ok() {
        Ok(s.to_string())
    } else {
        Err(format!(
            "unknown status {s:?} (expected one of: {})",
            TaskStatus::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ))
    }
}

/// `2026-11-23 02:10:10Z` from Unix milliseconds.
fn when(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.replacen('T', " ", 1)
}

fn counts(row: &ExecutionRow) -> String {
    let order = ["succeeded", "failed", "unsigned", "skipped", "pending", "running", "retrying", "canceled"];
    order.iter().filter_map(|s| row.tasks.get(*s).map(|n| format!("{n} {s}"))).collect::<Vec<_>>().join(", ")
}

fn list_text(rows: &[ExecutionRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:>5}  {:<10} {:<16} {:<20} {:<10}  TASKS / ROUTE", "ID", "STATUS", "POLICY", "STARTED", "DURATION");
    for r in rows {
        let duration = match r.finished_at {
            Some(f) => humantime::format_duration(Duration::from_secs(((f - r.started_at).max(0) / 1000) as u64)).to_string(),
            None => "-".into(),
        };
        let policy = r.policy.clone().unwrap_or_else(|| format!("({})", r.kind));
        let direction = if r.direction == "reversed" { " [reversed]" } else { "" };
        let _ = writeln!(out, "{:>5}  {:<10} {:<16} {:<20} {:<10}  {}", r.id, r.status, policy, when(r.started_at), duration, counts(r));
        let _ = writeln!(out, "{:>5}  {} → {}{direction}", "", r.source, r.destination);
    }
    if rows.is_empty() {
        out.push_str("no executions match\n");
    }
    out
}

fn show_text(e: &ExecutionRow, tasks: &[TaskRow]) -> String {
    let mut out = String::new();
    let what = match &e.policy {
        Some(p) => format!("policy {p}"),
        None => e.kind.clone(),
    };
    let _ = writeln!(out, "execution {} ({what}): {}", e.id, e.status);
    let _ = writeln!(out, "  route      {} → {}{}", e.source, e.destination, if e.direction == "reversed" { " (reversed)" } else { "" });
    let _ = writeln!(out, "  started    {}", when(e.started_at));
    if let Some(f) = e.finished_at {
        let _ = writeln!(out, "  finished   {}", when(f));
    }
    let _ = writeln!(out, "  tasks      {}", counts(e));
    if let Some(err) = &e.error {
        let _ = writeln!(out, "  error      {err}");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{:<10} {:>3}  {:<50} {:<22} {:<20} REASON / LAST ERROR", "STATUS", "TRY", "REPOSITORY:TAG", "DIGEST", "WORKER");
    for t in tasks {
        let digest = t.source_digest.as_deref().map(|d| d.chars().take(19).collect::<String>()).unwrap_or_else(|| "-".into());
        let name = format!("{}:{}", t.dest_repo, t.tag);
        let detail = match (&t.last_error, t.status.as_str()) {
            (Some(err), "failed" | "retrying" | "pending" | "canceled" | "unsigned") => err.clone(),
            _ => t.reason.clone().unwrap_or_default(),
        };
        // A narrowed index: say which platforms and what the destination holds.
        let detail = match (&t.platforms, &t.dest_digest) {
            (Some(p), Some(d)) if t.dest_digest != t.source_digest => format!("{detail}; {p} → {d}"),
            (Some(p), _) => format!("{detail}; {p}"),
            _ => detail,
        };
        let worker = t.worker.as_deref().unwrap_or("-");
        let _ = writeln!(out, "{:<10} {:>3}  {:<50} {:<22} {:<20} {}", t.status, t.attempts, name, digest, worker, detail);
    }
    out
}

pub async fn run(command: JobsCommand) -> Result<u8, CliError> {
    match command {
        JobsCommand::List(a) => {
            let db = StateDb::open(&a.state.state).await?;
            let filter = ExecutionFilter {
                policy: a.policy,
                status: a.status,
                repo: a.repo,
                since_ms: a.since.map(|d| now_ms() - d.as_millis() as i64),
                limit: a.limit,
            };
            let rows = db.list_executions(&filter).await?;
            if a.json {
                println!("{}", json!(rows));
            } else {
                print!("{}", list_text(&rows));
                // Why policies fail when no execution says so (a pass refused before it started).
                let errors = db.pass_errors(filter.policy.as_deref()).await?;
                if !errors.is_empty() {
                    println!("\nlast pass errors (newest first; a pass refused before it started has no execution):");
                    for e in errors {
                        let dest = if e.destination.is_empty() { String::new() } else { format!(" → {}", e.destination) };
                        println!("  {}  {}{dest}: {}", when(e.at), e.policy, e.error);
                    }
                }
            }
            Ok(exit::OK)
        }
        JobsCommand::Show(a) => {
            let db = StateDb::open(&a.state.state).await?;
            let Some(e) = db.execution(a.id).await? else {
                return Err(CliError::usage(format!("no execution {} in {}", a.id, a.state.state)));
            };
            let tasks = db.tasks(a.id).await?;
            if a.json {
                println!("{}", json!({ "execution": e, "tasks": tasks }));
            } else {
                print!("{}", show_text(&e, &tasks));
            }
            Ok(exit::OK)
        }
        JobsCommand::Retry(a) => {
            let db = StateDb::open(&a.state.state).await?;
            let ids = match a.id {
                Some(id) => vec![id],
                None => db.failed_executions(a.policy.as_deref()).await?,
            };
            if ids.is_empty() {
                println!("no failed executions to retry");
            }
            for id in ids {
                match db.request_retry(id).await? {
                    Some(n) => println!(
                        "execution {id}: {n} task(s) queued; the next pass of its job (the daemon within seconds, `regferry run`, or the same `migrate`) resumes it"
                    ),
                    None => return Err(CliError::usage(format!("no execution {id} in {}", a.state.state))),
                }
            }
            Ok(exit::OK)
        }
        JobsCommand::Cancel(a) => {
            let db = StateDb::open(&a.state.state).await?;
            match db.request_cancel(a.id).await? {
                Some(CancelOutcome::Requested) => {
                    println!("execution {}: cancel requested; the process running it starts no new tags and stops within seconds", a.id)
                }
                Some(CancelOutcome::Canceled(n)) => println!("execution {}: canceled ({n} unfinished task(s))", a.id),
                Some(CancelOutcome::Finished(s)) => println!("execution {} already {s}; nothing to cancel", a.id),
                None => return Err(CliError::usage(format!("no execution {} in {}", a.id, a.state.state))),
            }
            Ok(exit::OK)
        }
        JobsCommand::Prune(a) => {
            let db = StateDb::open(&a.state.state).await?;
            let n = db.prune(now_ms() - a.older_than.as_millis() as i64).await?;
            println!("pruned {n} execution(s)");
            Ok(exit::OK)
        }
    }
}
