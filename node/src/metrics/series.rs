//! Every series the node exports, with its kind and help text: the one list `describe` gives the
//! recorder (the exporter writes `# HELP` only for described series, and `promtool check metrics`
//! wants one), that `docs/monitoring.md` mirrors, and that the Grafana dashboard is checked against.

use metrics::describe_counter;
use metrics::describe_gauge;
use metrics::describe_histogram;

/// Every series this node exports, with its help text (the exporter writes `# HELP` only for
/// described series, and `promtool check metrics` requires one). Series other modules emit are
/// described here too, so the list is complete in one place.
pub const SERIES: &[(&str, Kind, &str)] = &[
    // HTTP, SOAP and gRPC.
    (
        "dtm_http_requests_total",
        Kind::Counter,
        "HTTP requests answered (REST, SOAP, web pages), by channel, method, route template and status.",
    ),
    (
        "dtm_http_request_duration_seconds",
        Kind::Histogram,
        "Time to answer an HTTP request (first byte of the answer), by channel, method and route template.",
    ),
    (
        "dtm_grpc_requests_total",
        Kind::Counter,
        "dtm.v1.Ingest submissions answered over gRPC, by method and HTTP-equivalent status.",
    ),
    ("dtm_grpc_request_duration_seconds", Kind::Histogram, "Time to answer a dtm.v1.Ingest submission, by method."),
    // Ingestion.
    (
        "dtm_ingest_records_total",
        Kind::Counter,
        "Records accepted into the log, by source, dataset, channel and outcome (stored, duplicate, conflict).",
    ),
    (
        "dtm_ingest_rejected_total",
        Kind::Counter,
        "Submissions refused (a real-time request, or one row of a batch), by source, dataset, channel and reason.",
    ),
    // Raft.
    ("dtm_raft_term", Kind::Gauge, "The Raft term this node is in."),
    ("dtm_raft_leader_id", Kind::Gauge, "The node id of the leader this node knows of (0: none)."),
    ("dtm_raft_is_leader", Kind::Gauge, "1 on the leader, 0 elsewhere."),
    ("dtm_raft_last_log_index", Kind::Gauge, "The last log index this node has appended."),
    ("dtm_raft_applied_index", Kind::Gauge, "The last log index this node has applied."),
    (
        "dtm_raft_commit_index",
        Kind::Gauge,
        "The commit index (on the leader: the index a quorum of voters has; elsewhere: the applied index).",
    ),
    ("dtm_raft_snapshot_index", Kind::Gauge, "The log index of this node's last snapshot."),
    ("dtm_raft_members", Kind::Gauge, "Members of the cluster (voters and learners) as this node knows it."),
    ("dtm_raft_voters", Kind::Gauge, "Voters of the cluster as this node knows it."),
    (
        "dtm_raft_replication_lag_entries",
        Kind::Gauge,
        "On the leader: log entries each follower is behind the leader's last log index (NaN when this node stopped leading).",
    ),
    ("dtm_raft_quorum_ack_age_seconds", Kind::Gauge, "On the leader: seconds since a quorum last acknowledged it."),
    // Actors.
    ("dtm_actor_restarts_total", Kind::Counter, "Stage actors restarted by their source supervisor, by stage."),
    (
        "dtm_actor_escalations_total",
        Kind::Counter,
        "Times a source supervisor gave up on a stage and the whole source restarted, by stage.",
    ),
    ("dtm_actor_source_restarts_total", Kind::Counter, "Restarts of a whole source by the node supervisor."),
    ("dtm_actor_jobs_total", Kind::Counter, "Jobs that left the source actors, by outcome."),
    (
        "dtm_source_queue_in_use",
        Kind::Gauge,
        "Admission permits of a source in use on this node (requests in its pipeline or committing).",
    ),
    (
        "dtm_source_queue_capacity",
        Kind::Gauge,
        "Admission permits of a source on this node; at the bound it answers 429.",
    ),
    ("dtm_source_jobs_in_pipeline", Kind::Gauge, "Jobs inside a source's actors on this node."),
    (
        "dtm_source_running",
        Kind::Gauge,
        "1 when a source's actors are running on this node, 0 while they back off or are stopped.",
    ),
    // Storage.
    (
        "dtm_storage_bytes",
        Kind::Gauge,
        "Bytes of the node's data directory on disk (log, state machine, snapshot, spool).",
    ),
    ("dtm_storage_available_bytes", Kind::Gauge, "Bytes available to the node on the data directory's file system."),
    ("dtm_storage_capacity_bytes", Kind::Gauge, "Size of the data directory's file system in bytes."),
    // Audit.
    ("dtm_audit_chain_entries", Kind::Gauge, "Entries in the audit chain as this node has applied it."),
    ("dtm_audit_signed_entries", Kind::Gauge, "Audit entries covered by a signed checkpoint."),
    ("dtm_audit_verified_entries", Kind::Gauge, "Audit entries checked by this node's last verification."),
    (
        "dtm_audit_last_verify_timestamp_seconds",
        Kind::Gauge,
        "When this node's last audit verification finished (Unix seconds).",
    ),
    (
        "dtm_audit_verify_ok",
        Kind::Gauge,
        "1 when this node's last audit verification found the chain intact, 0 when it found a problem.",
    ),
    (
        "dtm_audit_verify_failures_total",
        Kind::Counter,
        "Audit verifications that found a problem or could not read the tables.",
    ),
    ("dtm_audit_refused_total", Kind::Counter, "Requests answered 503 because the node's audit queue was full."),
    ("dtm_audit_events_dropped_total", Kind::Counter, "Audit events the node could not queue."),
    ("dtm_audit_queue_events", Kind::Gauge, "Audit events waiting on this node to be proposed."),
    // Security and the gateway.
    (
        "dtm_security_events_total",
        Kind::Counter,
        "Security events (rate limits, shedding, refused addresses, failed sign-ins, ...), by kind.",
    ),
    ("dtm_security_events_dropped_total", Kind::Counter, "Security events that could not be recorded."),
    ("dtm_tls_certificate_expiry_seconds", Kind::Gauge, "Seconds until the node's HTTPS certificate expires."),
    // Probes.
    ("dtm_probe_duration_seconds", Kind::Histogram, "Response time of a synthetic probe, by probe."),
    ("dtm_probe_last_duration_seconds", Kind::Gauge, "Response time of the last run of a synthetic probe, by probe."),
    ("dtm_probe_success", Kind::Gauge, "1 when the last run of a probe succeeded, 0 when it failed."),
    ("dtm_probe_failures_total", Kind::Counter, "Failed runs of a synthetic probe, by probe."),
    ("dtm_probe_runs_total", Kind::Counter, "Runs of a synthetic probe, by probe."),
    (
        "dtm_probe_concurrency_p95_seconds",
        Kind::Gauge,
        "95th percentile response time of the last concurrency probe's parallel requests.",
    ),
    (
        "dtm_probe_concurrency_max_seconds",
        Kind::Gauge,
        "Slowest response of the last concurrency probe's parallel requests.",
    ),
    ("dtm_probe_last_run_timestamp_seconds", Kind::Gauge, "When the probes last ran (Unix seconds)."),
    (
        "dtm_probe_task_restarts_total",
        Kind::Counter,
        "Times the probe task's supervisor restarted a round that panicked.",
    ),
    // Alerts (`crate::alerts`).
    (
        "dtm_alert_notifications_total",
        Kind::Counter,
        "Alert notifications by channel kind and result (sent, failed, dropped).",
    ),
    // Performance reports (`crate::perf`).
    (
        "dtm_performance_samples_dropped_total",
        Kind::Counter,
        "Performance samples dropped because too many were waiting to be recorded.",
    ),
    // The process.
    ("dtm_build_info", Kind::Gauge, "1, with the version of the running dtm binary as a label."),
    ("dtm_process_start_time_seconds", Kind::Gauge, "When this node process started (Unix seconds)."),
];

/// The kind of a series in `SERIES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

pub(super) fn describe() {
    for (name, kind, help) in SERIES {
        match kind {
            Kind::Counter => describe_counter!(*name, *help),
            Kind::Gauge => describe_gauge!(*name, *help),
            Kind::Histogram => describe_histogram!(*name, *help),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn series_names_follow_the_convention() {
        let mut names = BTreeSet::new();
        for (name, kind, help) in SERIES {
            assert!(name.starts_with("dtm_"), "{name}");
            assert!(names.insert(*name), "{name} listed twice");
            assert!(!help.is_empty());
            assert_eq!(
                name.ends_with("_total"),
                *kind == Kind::Counter,
                "{name}: counters and only counters end in _total"
            );
            if *kind == Kind::Histogram {
                assert!(name.ends_with("_seconds"), "{name}: histograms are latencies in seconds");
            }
        }
    }

    /// Every series the code emits (`counter!`, `gauge!`, `histogram!` with a literal name, in
    /// `node`, `actors` and `cluster`) is described here: an undescribed one has no `# HELP` line,
    /// which `promtool check metrics` refuses.
    #[test]
    fn every_emitted_series_is_described() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut dirs = vec![root.join("node/src"), root.join("actors/src"), root.join("cluster/src")];
        let mut emitted = BTreeSet::new();
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).expect("a source directory").flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&p).expect("a source file");
                    for mac in ["counter!(", "gauge!(", "histogram!("] {
                        for (i, _) in text.match_indices(mac) {
                            let rest = text[i + mac.len()..].trim_start();
                            let name = rest.strip_prefix('"').and_then(|r| r.split('"').next()).unwrap_or("");
                            // A metric name (this test's own list of macros is not one).
                            if !name.is_empty()
                                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                            {
                                emitted.insert(name.to_string());
                            }
                        }
                    }
                }
            }
        }
        assert!(emitted.len() > 20, "the scan found the code's series");
        for name in emitted {
            assert!(SERIES.iter().any(|(n, _, _)| *n == name), "`{name}` is emitted but not described in SERIES");
        }
    }

    /// Every query of the Grafana dashboard names series the node exports (or Prometheus's `up`),
    /// so a renamed series cannot leave a panel silently empty.
    #[test]
    fn the_grafana_dashboard_queries_exported_series() {
        let text = include_str!("../../../deploy/grafana/dashboard-dtm.json");
        let dashboard: serde_json::Value = serde_json::from_str(text).expect("the dashboard is valid JSON");
        let known: BTreeSet<&str> = SERIES.iter().map(|(n, _, _)| *n).collect();
        let mut exprs = Vec::new();
        fn walk<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(serde_json::Value::String(e)) = m.get("expr") {
                        out.push(e);
                    }
                    m.values().for_each(|v| walk(v, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        walk(&dashboard, &mut exprs);
        assert!(exprs.len() >= 20, "the dashboard has its panels");
        for e in exprs {
            let mut names = Vec::new();
            let b = e.as_bytes();
            let mut i = 0;
            while let Some(at) = e[i..].find("dtm_") {
                let start = i + at;
                let mut end = start;
                while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
                    end += 1;
                }
                if start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_') {
                    names.push(&e[start..end]);
                }
                i = end;
            }
            assert!(!names.is_empty() || e.contains("up{"), "{e}: names no DTM series");
            for n in names {
                let base = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| {
                        n.strip_suffix(s).filter(|b| SERIES.iter().any(|(x, k, _)| x == b && *k == Kind::Histogram))
                    })
                    .unwrap_or(n);
                assert!(known.contains(base), "{e}: `{n}` is not a series the node exports");
            }
        }
    }
}
