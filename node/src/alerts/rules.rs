//! The metrics alert rules can name, where each is evaluated, and the built-in default rules.
//!
//! A metric is either **local** (every node evaluates it over its own requests, disk, certificate
//! and audit verification; the subject is `node/<id>`) or **cluster** (only the current leader
//! evaluates it: members that do not answer, replication lag, silent sources, security events).
//! Each alert (rule × subject) therefore has exactly one evaluator at a time.

use dtm_model::state;

pub struct Metric {
    pub name: &'static str,
    pub cluster: bool,
    pub unit: &'static str,
    pub help: &'static str,
}

pub const METRICS: [Metric; 11] = [
    Metric {
        name: "http_request_p95_seconds",
        cluster: false,
        unit: "s",
        help: "95th percentile response time of main API requests on the node over the window (P4: 0.6 s)",
    },
    Metric {
        name: "http_heavy_request_p95_seconds",
        cluster: false,
        unit: "s",
        help: "95th percentile response time of exports, batches, aggregate and report queries (P5: 2.5 s)",
    },
    Metric {
        name: "http_error_ratio",
        cluster: false,
        unit: "ratio",
        help: "share of API requests answered 5xx over the window (at least 10 requests)",
    },
    Metric {
        name: "http_requests_per_second",
        cluster: false,
        unit: "1/s",
        help: "API requests per second over the window",
    },
    Metric {
        name: "disk_free_ratio",
        cluster: false,
        unit: "ratio",
        help: "free share of the file system holding the data directory (statvfs)",
    },
    Metric {
        name: "tls_certificate_expiry_days",
        cluster: false,
        unit: "days",
        help: "days until the node's HTTPS certificate expires",
    },
    Metric {
        name: "audit_verify_failed",
        cluster: false,
        unit: "bool",
        help: "1 when the node's last verification of its audit trail found a problem",
    },
    Metric {
        name: "node_down",
        cluster: true,
        unit: "bool",
        help: "1 for a member that does not answer the leader (gRPC status within 500 ms)",
    },
    Metric {
        name: "replication_lag_entries",
        cluster: true,
        unit: "entries",
        help: "log entries a member's applied index is behind the leader's",
    },
    Metric {
        name: "source_silent_seconds",
        cluster: true,
        unit: "s",
        help: "seconds since a source last sent anything; compared with the source's `expected_interval_s` when its registration names one",
    },
    Metric {
        name: "security_events",
        cluster: true,
        unit: "events",
        help: "security events recorded in the cluster over the window (refused credentials, lockouts, replayed codes, …; audit verification failures excluded) plus addresses the gateways blocked in it",
    },
];

pub fn metric(name: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|m| m.name == name)
}

/// Metrics an anomaly rule may name (series this node keeps per second).
pub const ANOMALY_METRICS: [&str; 2] = ["http_requests_per_second", "http_error_ratio"];

/// Bumped when the defaults change; the leader seeds rules of a newer version that are missing.
pub const DEFAULTS_VERSION: u32 = 1;

#[allow(clippy::too_many_arguments)]
fn threshold(
    id: &str,
    metric: &str,
    op: &str,
    value: f64,
    for_s: u64,
    window_s: u64,
    severity: &str,
    description: &str,
) -> state::AlertRule {
    state::AlertRule {
        id: id.into(),
        kind: "threshold".into(),
        metric: metric.into(),
        op: op.into(),
        threshold: value,
        for_ms: for_s * 1000,
        window_ms: window_s * 1000,
        severity: severity.into(),
        enabled: true,
        description: description.into(),
        builtin: true,
        ..Default::default()
    }
}

/// The built-in rules, created once when the cluster first has a leader (A5.2, F5). They are
/// ordinary rules afterwards: an operator may change, disable or delete them.
pub fn defaults() -> Vec<state::AlertRule> {
    vec![
        threshold(
            "p95-response-time",
            "http_request_p95_seconds",
            ">",
            0.6,
            60,
            60,
            "warning",
            "95th percentile of API response times above the Circular's 0.6 s per request (P4)",
        ),
        threshold(
            "p95-heavy-response-time",
            "http_heavy_request_p95_seconds",
            ">",
            2.5,
            60,
            300,
            "warning",
            "95th percentile of exports, batches and report queries above 2.5 s (P5)",
        ),
        threshold(
            "error-rate",
            "http_error_ratio",
            ">",
            0.05,
            120,
            300,
            "warning",
            "more than 5 % of API requests answered with a server error",
        ),
        state::AlertRule {
            id: "request-rate-anomaly".into(),
            kind: "anomaly".into(),
            metric: "http_requests_per_second".into(),
            // The smallest deviation worth an alert, whatever the trailing spread.
            threshold: 5.0,
            k_sigma: 4.0,
            window_ms: 60_000,
            baseline_ms: 600_000,
            for_ms: 0,
            severity: "info".into(),
            enabled: true,
            description: "request rate more than 4 standard deviations from its trailing 10-minute mean".into(),
            builtin: true,
            ..Default::default()
        },
        threshold(
            "source-silent",
            "source_silent_seconds",
            ">",
            86_400.0,
            0,
            0,
            "warning",
            "a source sent nothing for longer than its expected interval (default a day)",
        ),
        threshold(
            "replication-lag",
            "replication_lag_entries",
            ">",
            10_000.0,
            60,
            0,
            "warning",
            "a member is more than 10,000 log entries behind the leader",
        ),
        threshold("node-down", "node_down", ">=", 1.0, 3, 0, "critical", "a cluster member does not answer"),
        threshold(
            "disk-filling",
            "disk_free_ratio",
            "<",
            0.10,
            60,
            0,
            "critical",
            "less than 10 % free on the data directory's file system",
        ),
        threshold(
            "certificate-expiry",
            "tls_certificate_expiry_days",
            "<",
            14.0,
            0,
            0,
            "warning",
            "the node's HTTPS certificate expires within 14 days",
        ),
        threshold(
            "audit-verification",
            "audit_verify_failed",
            ">=",
            1.0,
            0,
            0,
            "critical",
            "the node's periodic verification of the audit trail failed",
        ),
        threshold(
            "security-events",
            "security_events",
            ">",
            50.0,
            0,
            300,
            "warning",
            "more than 50 security events (refused credentials, lockouts, intrusions) in 5 minutes",
        ),
    ]
}

/// Whether `value op threshold`.
pub fn compare(op: &str, value: f64, threshold: f64) -> bool {
    match op {
        ">" => value > threshold,
        ">=" => value >= threshold,
        "<" => value < threshold,
        "<=" => value <= threshold,
        _ => false,
    }
}

/// Anomaly: the last value deviates from the mean of the `baseline` values by more than
/// `k_sigma` standard deviations and by more than `min_deviation`. None without enough baseline
/// (at least `ANOMALY_BASELINE_STEPS_MIN` values).
pub fn anomalous(baseline: &[f64], last: f64, k_sigma: f64, min_deviation: f64) -> Option<bool> {
    if baseline.len() < super::limits::ANOMALY_BASELINE_STEPS_MIN {
        return None;
    }
    let n = baseline.len() as f64;
    let mean = baseline.iter().sum::<f64>() / n;
    let var = baseline.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let deviation = (last - mean).abs();
    Some(deviation > k_sigma * var.sqrt() && deviation > min_deviation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_well_formed_and_name_known_metrics() {
        for r in defaults() {
            assert_eq!(dtm_cluster::monitoring::rule_problem(&r), None, "{}", r.id);
            assert!(metric(&r.metric).is_some(), "{}", r.metric);
        }
    }

    #[test]
    fn anomaly_needs_a_baseline_and_a_real_deviation() {
        let flat = [10.0, 10.0, 10.0, 10.0, 10.0, 10.0];
        assert_eq!(anomalous(&flat[..2], 100.0, 3.0, 1.0), None);
        assert_eq!(anomalous(&flat, 100.0, 3.0, 1.0), Some(true));
        // σ = 0 but the deviation is below the floor: not an anomaly.
        assert_eq!(anomalous(&flat, 10.5, 3.0, 1.0), Some(false));
        let noisy = [5.0, 15.0, 5.0, 15.0, 5.0, 15.0];
        assert_eq!(anomalous(&noisy, 20.0, 3.0, 1.0), Some(false));
        assert_eq!(anomalous(&noisy, 40.0, 3.0, 1.0), Some(true));
    }
}
