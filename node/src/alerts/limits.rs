//! Limits of alert evaluation and notification (units last).

use std::time::Duration;

/// How often each node evaluates its rules. With the node-down rule's 3 s `for` and one gRPC
/// status round (500 ms), a killed member is notified about 4-5 s after it died (target ≤ 10 s).
pub const EVAL_INTERVAL: Duration = Duration::from_secs(1);
/// Anomaly rules need at least this many baseline windows before they can fire.
pub const ANOMALY_BASELINE_STEPS_MIN: usize = 5;
/// Notifications waiting to be sent on this node; when full the notification is recorded as
/// `dropped` (metric and log), never silently lost, and evaluation goes on.
pub const NOTIFY_QUEUE_MAX: usize = 256;
/// Deliveries (notification × channel) in flight at once.
pub const DELIVERIES_IN_FLIGHT_MAX: usize = 16;
/// Attempts per delivery, with exponential backoff from `RETRY_BACKOFF_MIN`.
pub const DELIVERY_ATTEMPTS_MAX: u32 = 4;
pub const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// One attempt's deadline (connect, TLS, SMTP dialogue or HTTP exchange).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// The leader re-sends a transition another node recorded but never reported delivering after
/// this long (the recorder died). Longer than a whole retry budget: 4 × 10 s + backoff.
pub const TAKEOVER_AFTER: Duration = Duration::from_secs(60);
/// How far back the leader looks for such transitions.
pub const TAKEOVER_LOOKBACK: Duration = Duration::from_secs(15 * 60);
/// History entries one `GET /alerts/history` page returns at most.
pub const HISTORY_PAGE_MAX: usize = 1_000;
/// Alert history is kept this long (at least the 365 days `apply` enforces), pruned daily.
pub const HISTORY_RETENTION: Duration = Duration::from_secs(366 * 24 * 3600);
/// Security events the leader reads per evaluation.
pub const SECURITY_EVENTS_PER_TICK_MAX: usize = 10_000;

const _: () = assert!(HISTORY_RETENTION.as_millis() >= dtm_cluster::monitoring::HISTORY_RETENTION_MIN_MS as u128);
const _: () = assert!(TAKEOVER_AFTER.as_secs() > DELIVERY_TIMEOUT.as_secs() * DELIVERY_ATTEMPTS_MAX as u64);
