//! The outbox as a status check for the monitoring endpoints.

use super::Outbox;
use std::time::Duration;

/// The outbox as a [`StatusCheck`](event_bus::status::StatusCheck) for the
/// monitoring endpoints: ready while the oldest pending row is younger than
/// `max_age` and the status can be read; the details are the
/// [`OutboxStatus`]. Rows in the failure table, and the rows of their keys
/// that wait for them ([`OutboxStatus::blocked`]), do not make it unready
/// (taking the instance out of a load balancer fixes none of them): they
/// are in its summary and details, and in the `event_bus.outbox.failed_rows`
/// gauge to alert on. Built by [`Outbox::status_check`].
#[derive(Clone, Debug)]
pub struct OutboxCheck {
    outbox: Outbox,
    max_age: Duration,
}

impl Outbox {
    /// This outbox as a status check: not ready once a row has waited
    /// longer than `max_age` (the relay down, the bus unavailable, a long
    /// transaction holding delivery back); rows in the failure table and
    /// the rows blocked behind them are reported, not counted against
    /// readiness (see [`OutboxCheck`]).
    pub fn status_check(&self, max_age: Duration) -> OutboxCheck {
        OutboxCheck {
            outbox: self.clone(),
            max_age,
        }
    }
}

#[async_trait::async_trait]
impl event_bus::status::StatusCheck for OutboxCheck {
    fn name(&self) -> &str {
        "outbox"
    }

    async fn check(&self) -> event_bus::status::CheckReport {
        use event_bus::status::CheckReport;
        use serde_json::json;
        match self.outbox.status().await {
            Err(e) => CheckReport::new(
                false,
                format!("outbox {}: status unavailable: {e}", self.outbox.table()),
                json!({ "table": self.outbox.table(), "error": e.to_string() }),
            ),
            Ok(s) => {
                let age = s.oldest_pending_age.unwrap_or_default();
                let ready = age <= self.max_age;
                let mut summary = format!(
                    "outbox {}: {} pending (oldest {:.1} s, limit {:.1} s), {} failed",
                    self.outbox.table(),
                    s.pending,
                    age.as_secs_f64(),
                    self.max_age.as_secs_f64(),
                    s.failed
                );
                if s.blocked > 0 {
                    summary.push_str(&format!(
                        " ({} pending rows of their keys wait for them to be retried or discarded)",
                        s.blocked
                    ));
                }
                if let Some(b) = &s.held_by {
                    summary.push_str(&format!(
                        "; {} rows held back by session {} ({})",
                        s.held_back,
                        b.pid,
                        b.state.as_deref().unwrap_or("?")
                    ));
                }
                CheckReport::new(
                    ready,
                    summary,
                    json!({
                        "table": self.outbox.table(),
                        "pending": s.pending,
                        "oldest_pending_seconds": s.oldest_pending_age.map(|d| d.as_secs_f64()),
                        "held_back": s.held_back,
                        "failed": s.failed,
                        "blocked": s.blocked,
                        "held_by": s.held_by.as_ref().map(|b| json!({
                            "pid": b.pid,
                            "database": b.database,
                            "user": b.user,
                            "state": b.state,
                            "transaction_seconds": b.transaction_age.map(|d| d.as_secs_f64()),
                            "query_seconds": b.query_age.map(|d| d.as_secs_f64()),
                        })),
                        "prepared_transaction": s.prepared_transaction,
                        "relay": s.relay,
                        "max_age_seconds": self.max_age.as_secs_f64(),
                    }),
                )
            }
        }
    }
}
