//! Alerting (issue 10; A5.2 alerts over several channels, F5 early warning of threshold breaches
//! and anomalies). Rules, channels, alert states and their history are replicated
//! (`MonitoringCommand`, applied in `dtm-cluster`'s `monitoring.rs`); this module evaluates the
//! rules (`eval.rs` over `rules.rs`' metrics and this node's request window, `window.rs`), sends
//! notifications (`notify.rs`) and serves `/api/v1/alerts` (`api.rs`).
//!
//! Guarantee (docs/alerts.md): every alert (rule × subject) has one evaluator at a time (the node
//! itself for its local metrics, the leader for cluster metrics); a transition is notified by the
//! node whose proposal `apply` recorded, and only then, so a state change is notified once per
//! channel in normal operation, including across leader changes. A recorder that dies before
//! reporting delivery is covered by the leader after `TAKEOVER_AFTER` (at-least-once then).

pub mod api;
pub mod eval;
pub mod limits;
pub mod notify;
pub mod rules;
pub mod window;

use std::path::PathBuf;
use std::sync::Arc;

use dtm_cluster::ClusterNode;
use tokio::sync::watch;

/// Starts this node's evaluator and notifier.
pub fn start(
    node: &Arc<ClusterNode>,
    data_dir: PathBuf,
    cert: Option<Arc<crate::tls::ReloadingCert>>,
    ca_pem: &[u8],
    stop: watch::Receiver<bool>,
) {
    let notifier = notify::Notifier::start(node.clone(), ca_pem);
    let evaluator = eval::Evaluator::new(node.clone(), data_dir, cert, notifier);
    tokio::spawn(evaluator.run(stop));
}

/// Test-only response delay (feature `fault-injection`, never in a release build), set through
/// `PUT /api/v1/alerts/fault/delay` by an admin. Per node, not replicated.
#[cfg(feature = "fault-injection")]
pub mod fault {
    use std::sync::atomic::AtomicU64;

    /// Milliseconds every counted API request waits before it is handled (0: none).
    pub static DELAY_MS: AtomicU64 = AtomicU64::new(0);
    /// The largest delay the endpoint accepts.
    pub const DELAY_MS_MAX: u64 = 30_000;
}
