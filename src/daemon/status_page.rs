//! The status page at `/`: every policy with its direction, last pass, lag,
//! outstanding and failing tags (with their errors), and one execution's
//! tasks at `/executions/{id}` with a retry button for the admin token.
//!
//! Plain server-rendered HTML that refreshes itself and needs no
//! JavaScript. It reads only the state database and the loaded policy set:
//! never a registry (rendering costs a handful of indexed queries, however
//! often it refreshes). Every value is HTML-escaped; no token is ever
//! written into a page.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use super::Shared;
use super::api::{PolicyDetail, policy_detail};
use crate::state::jobs::ExecutionRow;
use crate::state::now_ms;

/// Seconds between the page's own refreshes.
const REFRESH_SECONDS: u32 = 10;

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(overview))
        .route("/executions/{id}", get(execution))
        .route("/executions/{id}/retry", post(retry))
        .route("/policies/{name}/run", post(run_now))
}

/// `s` safe inside HTML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// "3m 20s" for a number of seconds.
fn span(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// "2m 5s ago (2026-12-01 20:56:09 UTC)" for a Unix ms timestamp.
fn when(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    let stamp = humantime::format_rfc3339_seconds(at).to_string().replace('T', " ").replace('Z', " UTC");
    let age = (now_ms() - ms) as f64 / 1000.0;
    if age >= 0.0 { format!("{} ago <span class=dim>({stamp})</span>", span(age)) } else { format!("in {} <span class=dim>({stamp})</span>", span(-age)) }
}

const STYLE: &str = "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d232a;background:#f5f6f8}\
header{background:#1d3a5f;color:#fff;padding:12px 24px}header h1{margin:0;font-size:20px}header a{color:#fff;text-decoration:none}\
header p{margin:2px 0 0;color:#c8d3e0;font-size:12px}main{padding:16px 24px;max-width:1200px}\
section{background:#fff;border:1px solid #d8dde3;border-radius:6px;padding:12px 16px;margin:0 0 16px}\
h2{margin:0 0 6px;font-size:17px}h3{margin:12px 0 4px;font-size:14px}\
table{border-collapse:collapse;width:100%;margin:6px 0}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eceff2;vertical-align:top}\
th{font-size:12px;color:#5a6470;font-weight:600}.err{font-family:ui-monospace,monospace;font-size:12px;color:#8a1c1c;word-break:break-word}\
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}\
.ok{background:#dcf3e3;color:#145a2c}.bad{background:#fbe0e0;color:#8a1c1c}.warn{background:#fff1cc;color:#6b4d00}.idle{background:#e6e9ed;color:#3d4650}\
.dim{color:#7a848f;font-size:12px}dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:6px 0}dt{color:#5a6470}dd{margin:0}\
form{display:inline-flex;gap:6px;align-items:center;margin:6px 0}input{padding:3px 6px}button{padding:3px 10px;cursor:pointer}\
a{color:#1d5fa8}.mono{font-family:ui-monospace,monospace;font-size:12px}";

fn page(title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>\
         <meta http-equiv=refresh content={REFRESH_SECONDS}>\
         <meta name=viewport content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>{STYLE}</style></head><body>\
         <header><h1><a href=\"/\">regferry</a> · {title}</h1><p>Read from the state database; refreshes every {REFRESH_SECONDS} s. \
         API: <a href=\"/api/openapi.json\">/api/openapi.json</a> · <a href=\"/metrics\">/metrics</a></p></header>\
         <main>{body}</main></body></html>\n",
        title = escape(title)
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], html).into_response()
}

fn status_badge(status: &str) -> String {
    let class = match status {
        "succeeded" => "ok",
        "failed" | "canceled" => "bad",
        "running" | "retrying" | "pending" | "unsigned" => "warn",
        _ => "idle",
    };
    format!("<span class=\"badge {class}\">{}</span>", escape(status))
}

fn execution_rows(out: &mut String, rows: &[ExecutionRow]) {
    if rows.is_empty() {
        out.push_str("<p class=dim>No executions yet.</p>");
        return;
    }
    out.push_str("<table><tr><th>Execution</th><th>Status</th><th>Destination</th><th>Started</th><th>Tasks</th></tr>");
    for e in rows {
        let tasks: Vec<String> = e.tasks.iter().map(|(s, n)| format!("{n} {}", escape(s))).collect();
        let _ = write!(
            out,
            "<tr><td><a href=\"/executions/{id}\">#{id}</a></td><td>{}</td><td class=mono>{}{}</td><td>{}</td><td>{}</td></tr>",
            status_badge(&e.status),
            escape(&e.destination),
            if e.direction == "reversed" { " <span class=\"badge warn\">reversed</span>" } else { "" },
            when(e.started_at),
            if tasks.is_empty() { "none".to_string() } else { tasks.join(", ") },
            id = e.id,
        );
        if let Some(err) = &e.error {
            let _ = write!(out, "<tr><td></td><td colspan=4 class=err>{}</td></tr>", escape(err));
        }
    }
    out.push_str("</table>");
}

fn policy_section(out: &mut String, d: &PolicyDetail) {
    let p = &d.policy;
    let health = match (&p.health, p.last_pass_at) {
        (Some(h), _) if h.failing => format!("<span class=\"badge bad\">failing</span> <span class=dim>since {}</span>", when(h.since)),
        (_, None) => "<span class=\"badge idle\">no pass yet</span>".to_string(),
        (Some(h), _) => format!("<span class=\"badge ok\">healthy</span> <span class=dim>since {}</span>", when(h.since)),
        (None, Some(_)) => "<span class=\"badge ok\">ran</span>".to_string(),
    };
    let _ = write!(
        out,
        "<section id=\"policy-{name}\"><h2>{name} {health}</h2><dl>\
         <dt>Direction</dt><dd>{direction}</dd><dt>From</dt><dd class=mono>{source}</dd><dt>To</dt><dd class=mono>{dests}</dd>\
         <dt>Trigger</dt><dd>{trigger}</dd><dt>Last pass</dt><dd>{last}</dd><dt>Lag</dt><dd>{lag}</dd>\
         <dt>Outstanding tags</dt><dd>{outstanding}</dd><dt>Failing tags</dt><dd>{failing}</dd></dl>",
        name = escape(&p.name),
        direction = if p.direction == "reversed" { "<span class=\"badge warn\">reversed (after a failover)</span>" } else { "forward" },
        source = escape(&p.source),
        dests = p.destinations.iter().map(|d| escape(d)).collect::<Vec<_>>().join("<br>"),
        trigger = escape(&p.trigger),
        last = p.last_pass_at.map_or("never".to_string(), when),
        lag = p.lag_seconds.map_or("unknown (never ran)".to_string(), |s| if s == 0.0 { "caught up".to_string() } else { span(s) }),
        outstanding = p.outstanding_tags,
        failing = p.failing_tags,
    );
    // Why it fails when no tag says so (a pass refused before it started leaves no execution).
    let failing_now = p.health.as_ref().is_some_and(|h| h.failing);
    if !p.last_errors.is_empty() {
        out.push_str(if failing_now { "<h3>Why it fails</h3>" } else { "<h3>Last pass errors</h3>" });
        out.push_str("<table><tr><th>When</th><th>Destination</th><th>Error</th></tr>");
        for e in &p.last_errors {
            let _ = write!(
                out,
                "<tr><td>{}</td><td class=mono>{}</td><td class=err>{}</td></tr>",
                when(e.at),
                escape(&e.destination),
                escape(&e.error)
            );
        }
        out.push_str("</table>");
    }
    if !d.failing.is_empty() {
        out.push_str("<h3>Failing tags</h3><table><tr><th>Tag</th><th>Failed passes</th><th>Next attempt</th><th>Last error</th></tr>");
        for f in d.failing.iter().take(50) {
            let _ = write!(
                out,
                "<tr><td class=mono>{}:{}</td><td>{}</td><td>{}</td><td class=err>{}</td></tr>",
                escape(&f.source_repo),
                escape(&f.tag),
                f.failures,
                when(f.next_attempt_at),
                escape(f.last_error.as_deref().unwrap_or("")),
            );
        }
        out.push_str("</table>");
        if d.failing.len() > 50 {
            let _ = write!(out, "<p class=dim>…and {} more (see the API).</p>", d.failing.len() - 50);
        }
    }
    out.push_str("<h3>Latest executions</h3>");
    execution_rows(out, &p.latest_executions);
    let _ = write!(
        out,
        "<form method=post action=\"/policies/{}/run\"><input type=password name=token placeholder=\"admin token\" required \
         autocomplete=off aria-label=\"admin token\"><button type=submit>Run a pass now</button></form></section>",
        escape(&p.name)
    );
}

async fn overview(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(d) = shared.tokens.check_status_page(&headers) {
        return d.html();
    }
    let set = shared.policies();
    let mut details = Vec::new();
    for p in &set.policies {
        match policy_detail(&shared, p).await {
            Ok(d) => details.push(d),
            Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("state database: {e}\n")).into_response(),
        }
    }
    let mut body = String::new();
    let failing = details.iter().filter(|d| d.policy.health.as_ref().is_some_and(|h| h.failing)).count();
    let _ = write!(body, "<section><h2>{} polic{}, {failing} failing</h2><table><tr><th>Policy</th><th>State</th><th>Direction</th><th>Last pass</th><th>Lag</th><th>Outstanding</th><th>Failing tags</th></tr>",
        details.len(), if details.len() == 1 { "y" } else { "ies" });
    for d in &details {
        let p = &d.policy;
        let state = match &p.health {
            Some(h) if h.failing => "<span class=\"badge bad\">failing</span>",
            Some(_) => "<span class=\"badge ok\">healthy</span>",
            None => "<span class=\"badge idle\">no pass yet</span>",
        };
        let _ = write!(
            body,
            "<tr><td><a href=\"#policy-{n}\">{n}</a></td><td>{state}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&p.direction),
            p.last_pass_at.map_or("never".to_string(), when),
            p.lag_seconds.map_or("–".to_string(), |s| if s == 0.0 { "caught up".to_string() } else { span(s) }),
            p.outstanding_tags,
            p.failing_tags,
            n = escape(&p.name),
        );
    }
    body.push_str("</table></section>");
    for d in &details {
        policy_section(&mut body, d);
    }
    page("status", &body)
}

#[derive(Debug, Deserialize)]
struct Notice {
    retried: Option<u64>,
}

async fn execution(State(shared): State<Arc<Shared>>, headers: HeaderMap, Path(id): Path<i64>, Query(notice): Query<Notice>) -> Response {
    if let Err(d) = shared.tokens.check_status_page(&headers) {
        return d.html();
    }
    let row = match shared.state.execution(id).await {
        Ok(Some(row)) => row,
        Ok(None) => return (StatusCode::NOT_FOUND, page("not found", &format!("<section><p>No execution {id}.</p></section>"))).into_response(),
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("state database: {e}\n")).into_response(),
    };
    let tasks = match shared.state.tasks(id).await {
        Ok(t) => t,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("state database: {e}\n")).into_response(),
    };
    let mut body = String::new();
    if let Some(n) = notice.retried {
        let _ = write!(body, "<section><span class=\"badge ok\">retry queued</span> {n} task(s) queued; the daemon resumes this execution within seconds.</section>");
    }
    let _ = write!(
        body,
        "<section><h2>Execution #{id} {}</h2><dl><dt>Policy</dt><dd>{}</dd><dt>From</dt><dd class=mono>{}</dd><dt>To</dt><dd class=mono>{}</dd>\
         <dt>Direction</dt><dd>{}</dd><dt>Started</dt><dd>{}</dd><dt>Finished</dt><dd>{}</dd></dl>",
        status_badge(&row.status),
        row.policy.as_deref().map_or("(migrate)".to_string(), |p| format!("<a href=\"/#policy-{0}\">{0}</a>", escape(p))),
        escape(&row.source),
        escape(&row.destination),
        escape(&row.direction),
        when(row.started_at),
        row.finished_at.map_or("not yet".to_string(), when),
    );
    if let Some(err) = &row.error {
        let _ = write!(body, "<p class=err>{}</p>", escape(err));
    }
    let failed = tasks.iter().filter(|t| t.status == "failed" || t.status == "canceled").count();
    if failed > 0 {
        let _ = write!(
            body,
            "<form method=post action=\"/executions/{id}/retry\"><input type=password name=token placeholder=\"admin token\" required \
             autocomplete=off aria-label=\"admin token\"><button type=submit>Retry {failed} failed task(s)</button></form>"
        );
    }
    body.push_str("</section><section><h2>Tasks</h2>");
    if tasks.is_empty() {
        body.push_str("<p class=dim>No tasks.</p>");
    } else {
        body.push_str("<table><tr><th>Status</th><th>Tag</th><th>Destination</th><th>Attempts</th><th>Reason</th><th>Error</th></tr>");
        for t in tasks.iter().take(2000) {
            let _ = write!(
                body,
                "<tr><td>{}</td><td class=mono>{}:{}</td><td class=mono>{}</td><td>{}</td><td>{}</td><td class=err>{}</td></tr>",
                status_badge(&t.status),
                escape(&t.source_repo),
                escape(&t.tag),
                escape(&t.dest_repo),
                t.attempts,
                escape(t.reason.as_deref().unwrap_or("")),
                escape(t.last_error.as_deref().unwrap_or("")),
            );
        }
        body.push_str("</table>");
        if tasks.len() > 2000 {
            let _ = write!(body, "<p class=dim>…and {} more (see the API).</p>", tasks.len() - 2000);
        }
    }
    body.push_str("</section>");
    page(&format!("execution {id}"), &body)
}

#[derive(Debug, Deserialize)]
struct TokenForm {
    #[serde(default)]
    token: String,
}

/// The token must come in the form itself (not from the browser's saved
/// credentials), so another site cannot make a signed-in browser act.
async fn retry(State(shared): State<Arc<Shared>>, Path(id): Path<i64>, Form(form): Form<TokenForm>) -> Response {
    if let Err(d) = shared.tokens.check_admin_token(Some(form.token.as_str()).filter(|t| !t.is_empty())) {
        return d.html();
    }
    match super::api::retry(&shared, id).await {
        Ok(Some(n)) => Redirect::to(&format!("/executions/{id}?retried={n}")).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, page("not found", &format!("<section><p>No execution {id}.</p></section>"))).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("state database: {e}\n")).into_response(),
    }
}

async fn run_now(State(shared): State<Arc<Shared>>, Path(name): Path<String>, Form(form): Form<TokenForm>) -> Response {
    if let Err(d) = shared.tokens.check_admin_token(Some(form.token.as_str()).filter(|t| !t.is_empty())) {
        return d.html();
    }
    if shared.policies().get(&name).is_none() {
        return (StatusCode::NOT_FOUND, page("not found", &format!("<section><p>No policy {}.</p></section>", escape(&name)))).into_response();
    }
    tracing::info!(policy = %name, "status page: pass requested");
    shared.request_pass(&name, None).await;
    Redirect::to(&format!("/#policy-{name}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_spans_read_well() {
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(span(5.2), "5s");
        assert_eq!(span(200.0), "3m 20s");
        assert_eq!(span(7300.0), "2h 1m");
        assert_eq!(span(90000.0), "1d 1h");
    }
}
