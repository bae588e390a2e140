//! Every node verifies its own copy of the audit trail (F8, A1.8) every `verify_interval`: a full
//! pass when the node starts and then once a day, and in between a pass that continues from the
//! last entry verified (the chain only grows, so only new entries and new signatures need work).
//! A continuing pass that finds anything wrong is redone from the first entry, which names the
//! first bad one. Passes run on the blocking pool and read only entries under the head read first,
//! so writes go on meanwhile. A pass during which a snapshot replaced the tables (a node catching
//! up after a restart) read parts of two states and is thrown away, not reported: the next pass,
//! a second later, verifies from the first entry.
//!
//! A failure is logged (target `audit`), counted (`dtm_audit_verify_failures_total`) and recorded
//! as a security event (`audit_verification_failed`, once per distinct problem); the last result is
//! `GET /api/v1/audit/status` (`api/audit_chain.rs`). Metrics: `dtm_audit_verified_entries`,
//! `dtm_audit_last_verify_timestamp_seconds`, `dtm_audit_verify_failures_total`.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::Weak;
use std::time::Duration;
use std::time::Instant;

use dtm_cluster::ClusterNode;
use dtm_cluster::audit::Problem;
use dtm_cluster::audit::Report;
use dtm_cluster::audit::TrustedKeys;
use dtm_cluster::audit::Verifier;
use serde::Serialize;

/// A full pass at least this often (a continuing pass does not reread old entries).
pub const FULL_PASS_EVERY: Duration = Duration::from_secs(24 * 3600);

/// How soon a pass is made again when a snapshot replaced the tables under the last one.
const REPLACED_RETRY: Duration = Duration::from_secs(1);

/// The last verification on this node, for `GET /api/v1/audit/status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub node_id: u64,
    /// When the pass finished (ms since the epoch).
    pub last_run_ms: u64,
    /// "full" (from the first entry) or "continued" (from the last entry verified before).
    pub pass: &'static str,
    pub took_ms: u64,
    /// Passes since the node started.
    pub runs: u64,
    pub interval_s: u64,
    #[serde(flatten)]
    pub report: Report,
    /// The pass could not read the tables (not a verdict on the trail).
    pub error: Option<String>,
}

static LAST: Mutex<Option<Status>> = Mutex::new(None);

/// The last verification's result (None before the first pass ended).
pub fn last() -> Option<Status> {
    LAST.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Starts the periodic verification of `node`'s trail. `on_failure` is told each distinct problem
/// (the node records it as a security event).
pub fn start(node: &Arc<ClusterNode>, interval: Duration, on_failure: impl Fn(&Problem) + Send + Sync + 'static) {
    tokio::spawn(run(Arc::downgrade(node), interval, on_failure));
}

async fn run(node: Weak<ClusterNode>, interval: Duration, on_failure: impl Fn(&Problem) + Send + Sync + 'static) {
    let mut verifier: Option<Verifier> = None;
    let mut last_full = Instant::now();
    let mut reported: Option<Problem> = None;
    let mut runs = 0u64;
    loop {
        let Some(n) = node.upgrade() else { return };
        let (node_id, reader) = (n.id, n.reader.clone());
        drop(n);
        let started = Instant::now();
        let continuing = verifier.take().filter(|_| last_full.elapsed() < FULL_PASS_EVERY);
        let full = continuing.is_none();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut v = continuing.unwrap_or_else(|| Verifier::new(TrustedKeys::default()));
            let first = dtm_cluster::audit::verify_reader_unreplaced(&reader, &mut v)?;
            if full || first.as_ref().is_ok_and(Report::ok) {
                return Some((first, v, full));
            }
            // Something is wrong after the point the last pass reached, or a page did not open:
            // verify from the start, which opens entries one by one and names the first bad one.
            let mut v = Verifier::new(TrustedKeys::default());
            Some((dtm_cluster::audit::verify_reader_unreplaced(&reader, &mut v)?, v, true))
        })
        .await;
        let outcome = match outcome {
            Ok(None) => {
                tracing::info!(target: "audit", "a snapshot replaced the tables during the audit verification; verifying again");
                verifier = None;
                tokio::time::sleep(interval.min(REPLACED_RETRY)).await;
                continue;
            }
            Ok(Some(x)) => Ok(x),
            Err(e) => Err(e),
        };
        runs += 1;
        let now_ms = crate::api::now_ms();
        let (result, v, full) = match outcome {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(target: "audit", error = %e, "the audit verification task failed");
                tokio::time::sleep(interval).await;
                continue;
            }
        };
        if full {
            last_full = Instant::now();
        }
        let mut status = Status {
            node_id,
            last_run_ms: now_ms,
            pass: if full { "full" } else { "continued" },
            took_ms: started.elapsed().as_millis() as u64,
            runs,
            interval_s: interval.as_secs(),
            report: Report::default(),
            error: None,
        };
        match result {
            Ok(report) => {
                metrics::gauge!("dtm_audit_verified_entries").set(report.entries as f64);
                metrics::gauge!("dtm_audit_last_verify_timestamp_seconds").set(now_ms as f64 / 1000.0);
                match &report.problem {
                    None => {
                        tracing::debug!(target: "audit", entries = report.entries, pass = status.pass,
                            "audit trail verified");
                        verifier = Some(v);
                        reported = None;
                    }
                    Some(p) => {
                        metrics::counter!("dtm_audit_verify_failures_total").increment(1);
                        tracing::error!(target: "audit", seq = p.seq, kind = %p.kind, problem = %p.message,
                            "AUDIT TRAIL VERIFICATION FAILED: the stored trail was altered (docs/operations.md)");
                        if reported.as_ref() != Some(p) {
                            on_failure(p);
                            reported = Some(p.clone());
                        }
                    }
                }
                status.report = report;
            }
            Err(e) => {
                metrics::counter!("dtm_audit_verify_failures_total").increment(1);
                tracing::error!(target: "audit", error = %e, "the audit trail could not be read for verification");
                status.error = Some(e.to_string());
            }
        }
        *LAST.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
        tokio::time::sleep(interval).await;
    }
}
