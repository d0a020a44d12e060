//! Replication lag of a policy, from the state database: how long the
//! oldest source change that has not reached the destination has been
//! waiting (the recovery point an operator asks for after a disaster).
//!
//! A change is first seen when a pass plans its tag; it stays outstanding
//! while its task is pending, running, retrying, failed or canceled in the
//! latest execution of its job, or while the tag backs off in
//! `failing_tags`. Read-only queries; no registry access.

use serde::Serialize;
use super::{StateDb, StateError, now_ms};

/// The lag of one policy in its current direction.
#[derive(Debug, Clone, Serialize)]
pub struct Lag {
    pub policy: String,
    pub direction: String,
    /// When a pass of the policy last checked or copied (Unix ms); `None`: never ran.
    pub last_pass_at: Option<i64>,
    /// When the oldest outstanding change was first seen (Unix ms).
    pub oldest_outstanding_at: Option<i64>,
    /// Tags not yet at the destination, as of the latest passes.
    pub outstanding_tags: i64,
    /// Age of the oldest outstanding change; 0 when everything seen is
    /// replicated; `None` when the policy never ran in this direction.
    pub lag_seconds: Option<f64>,
}

impl StateDb {
    /// The replication lag of `policy` in its current direction.
    pub async fn replication_lag(&self, policy: &str) -> Result<Lag, StateError> {
        let reversed = self.is_reversed(policy).await?;
        let direction = if reversed { "reversed" } else { "forward" };
        let o = self.outstanding(policy, direction).await?;
        let last = o.last_pass_at;
        let oldest = [o.oldest_task_at, o.oldest_failing_at].into_iter().flatten().min();
        let outstanding = o.tasks.max(o.failing_tags);
        let lag_seconds = match (last, oldest) {
            (None, None) => None,
            (_, Some(t)) => Some((now_ms() - t).max(0) as f64 / 1000.0),
            (Some(_), None) => Some(0.0),
        };
        Ok(Lag {
            policy: policy.to_string(),
            direction: direction.into(),
            last_pass_at: last,
            oldest_outstanding_at: oldest,
            outstanding_tags: outstanding,
            lag_seconds,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::plan::{Action, CopyReason, Plan};
    use crate::registry::Digest;

    #[tokio::test]
    async fn lag_is_the_age_of_the_oldest_outstanding_tag() {
        let (_dir, db) = crate::state::testing::temp_state().await;
        let lag = db.replication_lag("p").await.unwrap();
        assert_eq!((lag.lag_seconds, lag.direction.as_str()), (None, "forward"), "never ran: unknown");

        let spec = crate::state::testing::spec("policy");
        let start = db.begin_execution(&spec).await.unwrap();
        let item = crate::state::testing::item("v1", &Digest::sha256_of(b"x"), Action::Copy(CopyReason::Missing));
        db.record_plan(start.id, &Plan { items: vec![item], repositories: 1, ..Plan::default() }).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        let lag = db.replication_lag("p").await.unwrap();
        assert_eq!(lag.outstanding_tags, 1);
        assert!(lag.lag_seconds.is_some_and(|s| s > 0.0), "{lag:?}");

        // Reversed: the forward backlog is not this direction's lag.
        db.set_reversed("p", true).await.unwrap();
        let lag = db.replication_lag("p").await.unwrap();
        assert_eq!((lag.lag_seconds, lag.outstanding_tags, lag.direction.as_str()), (None, 0, "reversed"));
    }
}
