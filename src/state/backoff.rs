//! Tags that keep failing across passes of a job: how often they failed,
//! the last error, and when to try them again (exponential backoff with a
//! cap, decided by the caller's retry policy).
//!
//! Only bookkeeping: deciding to skip a tag is the caller's job.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::Row;

use super::{StateDb, StateError, now_ms};

/// A tag that failed on earlier passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failing {
    pub source_digest: Option<String>,
    pub failures: u32,
    pub last_error: Option<String>,
    /// Unix milliseconds.
    pub next_attempt_at: i64,
}

/// The outcome of one tag in a pass.
#[derive(Debug, Clone)]
pub enum Outcome<'a> {
    Succeeded { repo: &'a str, tag: &'a str },
    Failed { repo: &'a str, tag: &'a str, digest: Option<&'a str>, error: &'a str },
}

impl StateDb {
    /// Every failing tag of the job `scope_key`, by (source repository, tag).
    pub async fn failing_tags(&self, scope_key: &str) -> Result<HashMap<(String, String), Failing>, StateError> {
        let rows = sqlx::query("SELECT source_repo, tag, source_digest, failures, last_error, next_attempt_at FROM failing_tags WHERE scope_key = $1")
            .bind(scope_key)
            .fetch_all(self.pool())
            .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            let failures: i64 = r.try_get("failures")?;
            out.insert(
                (r.try_get("source_repo")?, r.try_get("tag")?),
                Failing {
                    source_digest: r.try_get("source_digest")?,
                    failures: u32::try_from(failures).unwrap_or(u32::MAX),
                    last_error: r.try_get("last_error")?,
                    next_attempt_at: r.try_get("next_attempt_at")?,
                },
            );
        }
        Ok(out)
    }

    /// File a pass's outcomes: successes clear a tag, failures count up and
    /// push its next attempt out by `delay(failures)`. One transaction.
    pub async fn record_outcomes(
        &self,
        scope_key: &str,
        outcomes: &[Outcome<'_>],
        delay: &(dyn Fn(u32) -> Duration + Sync),
    ) -> Result<(), StateError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        for o in outcomes {
            match o {
                Outcome::Succeeded { repo, tag } => {
                    sqlx::query("DELETE FROM failing_tags WHERE scope_key = $1 AND source_repo = $2 AND tag = $3")
                        .bind(scope_key)
                        .bind(repo)
                        .bind(tag)
                        .execute(&mut *tx)
                        .await?;
                }
                Outcome::Failed { repo, tag, digest, error } => {
                    // A new source digest starts the count again.
                    let previous: Option<(i64, Option<String>)> = sqlx::query(
                        "SELECT failures, source_digest FROM failing_tags WHERE scope_key = $1 AND source_repo = $2 AND tag = $3",
                    )
                    .bind(scope_key)
                    .bind(repo)
                    .bind(tag)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| Ok::<_, sqlx::Error>((r.try_get("failures")?, r.try_get("source_digest")?)))
                    .transpose()?;
                    let failures = match previous {
                        Some((n, d)) if d.as_deref() == *digest => n + 1,
                        _ => 1,
                    };
                    let wait = delay(u32::try_from(failures).unwrap_or(u32::MAX)).as_millis() as i64;
                    sqlx::query(
                        "INSERT INTO failing_tags (scope_key, source_repo, tag, source_digest, failures, last_error, first_failed_at, last_failed_at, next_attempt_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                         ON CONFLICT (scope_key, source_repo, tag) DO UPDATE SET source_digest = excluded.source_digest, \
                           failures = excluded.failures, last_error = excluded.last_error, last_failed_at = excluded.last_failed_at, \
                           next_attempt_at = excluded.next_attempt_at, \
                           first_failed_at = CASE WHEN excluded.failures = 1 THEN excluded.first_failed_at ELSE failing_tags.first_failed_at END",
                    )
                    .bind(scope_key)
                    .bind(repo)
                    .bind(tag)
                    .bind(digest)
                    .bind(failures)
                    .bind(error)
                    .bind(now)
                    .bind(now)
                    .bind(now + wait)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forget the failures of the given tags (an operator asked for a retry).
    pub async fn clear_failing(&self, tags: &[(String, String, String)]) -> Result<u64, StateError> {
        let mut tx = self.begin_write().await?;
        let mut n = 0;
        for (scope_key, repo, tag) in tags {
            n += sqlx::query("DELETE FROM failing_tags WHERE scope_key = $1 AND source_repo = $2 AND tag = $3")
                .bind(scope_key)
                .bind(repo)
                .bind(tag)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }
}
