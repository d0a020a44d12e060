//! Rendering plans and run reports for people (aligned text) and tools
//! (`--json`). Output goes to stdout; logs and progress go to stderr.

use std::fmt::Write as _;

use serde_json::json;

use regferry::engine::execute::NOT_ATTEMPTED;
use regferry::engine::plan::{Action, CopyReason, Plan, SkipReason};
use regferry::engine::stats::human_bytes;
use regferry::registry::Reference;
use regferry::job::Report;

/// The dry-run plan, human form.
pub fn plan_text(plan: &Plan, source: &str, destination: &str) -> String {
    let mut out = String::new();
    let copy = plan.count_copy();
    // Tags left unchecked (immutable tags the destination lists) count as left alone.
    let up_to_date = plan.items.len() - copy + plan.unchecked;
    let _ = writeln!(out, "plan: {source} → {destination}");
    let _ = writeln!(
        out,
        "  {} repositories, {} tags: {} to copy, {} left alone, {} problems",
        plan.repositories,
        plan.items.len() + plan.problems.len() + plan.unchecked,
        copy,
        up_to_date,
        plan.problems.len()
    );
    for item in &plan.items {
        let why = match (item.action, item.dest_head()) {
            (Action::Copy(CopyReason::DigestDiffers), Some(d)) => {
                format!("digest differs: {} → {}", d.digest.short(), item.source.digest.short())
            }
            (Action::Copy(CopyReason::MediaTypeDiffers), Some(d)) => {
                format!("media type differs: {} → {}", d.media_type, item.source.media_type)
            }
            (action, _) => action.to_string(),
        };
        let why = match &item.platforms {
            Some(n) => format!("{why}; {}", n.describe(&item.source.digest)),
            None => why,
        };
        let verb = match item.action {
            Action::Copy(_) => "copy",
            Action::Skip(_) => "skip",
        };
        // Renamed (copy SRC DEST:TAG, repositories.rename, tags.rename): where it comes from.
        let from = match (item.source_reference(), item.action) {
            (_, Action::Skip(_)) => String::new(),
            (Reference::Tag(t), _) if t == item.tag && item.source_repo == item.dest_repo => String::new(),
            (reference, _) => {
                let at = if matches!(reference, Reference::Digest(_)) { "@" } else { ":" };
                format!("  from {}{at}{reference} ({}, {})", item.source_repo, item.source.digest.short(), item.source.media_type)
            }
        };
        if item.action != Action::Skip(SkipReason::UpToDate) {
            let _ = writeln!(out, "  {verb}  {}:{}  ({why}){from}", item.dest_repo, item.tag);
        }
    }
    for p in &plan.problems {
        let tag = p.tag.as_deref().map(|t| format!(":{t}")).unwrap_or_default();
        let _ = writeln!(out, "  fail  {}{tag}  ({})", p.source_repo, p.error);
    }
    out
}

/// The dry-run plan as JSON.
pub fn plan_json(plan: &Plan) -> serde_json::Value {
    json!({
        "repositories": plan.repositories,
        "unchecked": plan.unchecked,
        "items": plan.items.iter().map(|i| json!({
            "source_repository": i.source_repo.as_str(),
            "destination_repository": i.dest_repo.as_str(),
            "tag": i.tag.as_str(),
            "source_reference": i.source_reference().to_string(),
            "action": match i.action { Action::Copy(_) => "copy", Action::Skip(_) => "skip" },
            "reason": i.action.to_string(),
            "source_digest": i.source.digest.as_str(),
            "source_media_type": i.source.media_type,
            "destination_digest": i.dest_head().map(|d| d.digest.as_str()),
            "target_digest": i.target_digest().as_str(),
            "platforms": i.platforms.as_ref().map(|n| n.describe(&i.source.digest)),
        })).collect::<Vec<_>>(),
        "problems": plan.problems.iter().map(|p| json!({
            "repository": p.source_repo, "tag": p.tag, "error": p.error,
        })).collect::<Vec<_>>(),
    })
}

/// The final summary, human form.
pub fn report_text(report: &Report, title: &str) -> String {
    let c = &report.counts;
    let mut out = String::new();
    let execution = match report.execution {
        Some(id) if report.resumed => format!(" (execution {id}, resumed)"),
        Some(id) => format!(" (execution {id})"),
        None => String::new(),
    };
    let secs = report.elapsed.as_secs_f64();
    let rate = if secs > 0.0 { format!(" ({}/s)", human_bytes((c.bytes_uploaded as f64 / secs) as u64)) } else { String::new() };
    let _ = writeln!(out, "{title}: {}{execution}", report.status);
    let _ = writeln!(out, "  repositories  {}", c.repos_total);
    let _ = writeln!(
        out,
        "  tags          {} total: {} copied, {} skipped, {} failed",
        c.tags_total, c.tags_copied, c.tags_skipped, c.tags_failed
    );
    let _ = writeln!(
        out,
        "  blobs         {} uploaded, {} mounted, {} already present",
        c.blobs_uploaded, c.blobs_mounted, c.blobs_skipped
    );
    let _ = writeln!(out, "  manifests     {} pushed", c.manifests_pushed);
    if c.digest_mismatches > 0 {
        let _ = writeln!(
            out,
            "  warnings      {} source manifest(s) whose Docker-Content-Digest disagreed with their bytes (the bytes were copied)",
            c.digest_mismatches
        );
    }
    let _ = writeln!(out, "  bytes         {} uploaded", human_bytes(c.bytes_uploaded));
    let _ = writeln!(out, "  requests      {} to the source, {} to the destination", report.source_requests, report.destination_requests);
    for u in &report.usage {
        let n = &u.usage;
        if n == &Default::default() {
            continue;
        }
        let _ = writeln!(
            out,
            "  {:<13} {} pulls (manifest GETs), {} HEADs, {} read, {} written, {} answered 429",
            u.role,
            n.pulls,
            n.heads,
            human_bytes(n.blob_bytes_read),
            human_bytes(n.blob_bytes_written),
            n.throttled
        );
    }
    let _ = writeln!(out, "  time          {secs:.1}s{rate}");
    if !report.conditions.is_empty() {
        let _ = writeln!(out, "registry problems:");
        for c in &report.conditions {
            let _ = writeln!(out, "  {c}");
        }
        let in_flight = report.failures.iter().filter(|f| report.conditions.contains(&f.error)).count();
        if in_flight > 0 {
            let _ = writeln!(out, "  {in_flight} tag(s) in flight failed with it");
        }
        if report.not_attempted > 0 {
            let _ = writeln!(out, "  {} remaining tag(s) not attempted", report.not_attempted);
        }
    }
    if !report.unsigned.is_empty() {
        let _ = writeln!(out, "held back (the policy's require is not met; copied once it is):");
        for f in &report.unsigned {
            let _ = writeln!(out, "  {}:{}: unsigned: {}", f.repository, f.tag, f.error);
        }
    }
    // Tags that failed because of a registry condition are counted above,
    // not listed one by one.
    let listed: Vec<_> =
        report.failures.iter().filter(|f| !f.error.starts_with(NOT_ATTEMPTED) && !report.conditions.contains(&f.error)).collect();
    if !listed.is_empty() {
        let _ = writeln!(out, "failed tags:");
        for f in listed {
            let tag = if f.tag.is_empty() { String::new() } else { format!(":{}", f.tag) };
            let _ = writeln!(out, "  {}{tag}: {}", f.repository, f.error);
        }
    }
    out
}

/// The final summary as JSON.
pub fn report_json(report: &Report) -> serde_json::Value {
    json!({
        "status": report.status.as_str(),
        "execution": report.execution,
        "resumed": report.resumed,
        "counts": report.counts,
        "elapsed_seconds": report.elapsed.as_secs_f64(),
        "requests": { "source": report.source_requests, "destination": report.destination_requests },
        "conditions": report.conditions,
        "not_attempted": report.not_attempted,
        "registries": report.usage,
        "quota_resets_in_seconds": report.quota_resets_in.map(|d| d.as_secs()),
        "failures": report.failures.iter().map(|f| json!({
            "repository": f.repository, "tag": f.tag, "error": f.error,
        })).collect::<Vec<_>>(),
        "unsigned": report.unsigned.iter().map(|f| json!({
            "repository": f.repository, "tag": f.tag, "reason": f.error,
        })).collect::<Vec<_>>(),
    })
}
