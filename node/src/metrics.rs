//! The node's metrics (F5, A5.1, A5.2): the Prometheus recorder (installed once per process),
//! `GET /metrics`, the HTTP layer that counts and times every request, the ingestion outcomes, and
//! the sampler that refreshes the gauges (Raft, source queues, storage, audit chain) every few
//! seconds. `docs/monitoring.md` lists every series with its meaning.
//!
//! Names are `dtm_<thing>_<unit>[_total]`. Labels are bounded: `route` is the matched route
//! template (never the raw path), `method` and `status` come from fixed sets, `source` and
//! `dataset` only ever name registered ones (they are set after the submission found both), and
//! `reason` is one of `REJECTION_REASONS`. The rolling window behind the dashboard and the alert
//! rules is `crate::live`; the synthetic probes are `crate::probes`.
//!
//! Who may read `/metrics`: anyone who reaches the node's HTTPS port, unless `[metrics]` sets
//! `token_file` (then `Authorization: Bearer <token>` is required) and/or `allow` (then only those
//! networks, by the TCP peer address). Scrapes are not audited (the audit layer skips the path)
//! and are not counted in the live window.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::extract::MatchedPath;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::Method;
use axum::http::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use dtm_cluster::ClusterNode;
use dtm_model::state;
use metrics_exporter_prometheus::Matcher;
use metrics_exporter_prometheus::PrometheusBuilder;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use sha2::Digest;
use tokio::sync::watch;

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::live::Channel;

mod series;
use series::describe;

/// Upper bounds of the latency histograms, in seconds. 0.6 s and 2.5 s are the Circular's response
/// time limits, so `le="0.6"` and `le="2.5"` answer "how many were within the limit" exactly.
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.6, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Default time between two refreshes of the sampled gauges.
pub const SAMPLE_INTERVAL_DEFAULT: Duration = Duration::from_secs(5);
pub const SAMPLE_INTERVAL_MIN: Duration = Duration::from_millis(200);
/// The storage walk looks at most this many files (a sled directory has a handful).
const STORAGE_WALK_FILES_MAX: usize = 10_000;

/// The reasons a submission is counted as rejected under; any other error code is `other`.
pub const REJECTION_REASONS: [&str; 16] = [
    "invalid_records",
    "malformed_json",
    "bad_request",
    "payload_too_large",
    "too_many_records",
    "source_busy",
    "pipeline_unavailable",
    "pipeline_timeout",
    "pipeline_failed",
    "unavailable",
    "overloaded",
    "idempotency_conflict",
    "conflict",
    "forbidden",
    "unauthorized",
    "internal",
];

/// `[metrics]` in the node's configuration file.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct MetricsFile {
    /// Record metrics, serve `/metrics` and the live statistics (default true).
    pub enabled: Option<bool>,
    /// A file holding the bearer token `/metrics` requires (default: none, open).
    pub token_file: Option<PathBuf>,
    /// Networks allowed to read `/metrics` (default: any).
    pub allow: Option<Vec<String>>,
    /// Milliseconds between refreshes of the sampled gauges (default 5000).
    pub sample_interval_ms: Option<u64>,
}

/// The resolved `[metrics]` options.
#[derive(Debug, Clone)]
pub struct MetricsOptions {
    pub enabled: bool,
    /// SHA-256 of the bearer token `/metrics` requires, if any (the token itself is not kept).
    pub token_sha256: Option<Vec<u8>>,
    /// Networks allowed to read `/metrics`; empty means any.
    pub allow: Vec<ipnet::IpNet>,
    pub sample_interval: Duration,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        MetricsOptions {
            enabled: true,
            token_sha256: None,
            allow: Vec::new(),
            sample_interval: SAMPLE_INTERVAL_DEFAULT,
        }
    }
}

/// `[metrics]` merged with `--metrics`/`DTM_METRICS` (which wins).
pub fn resolve(file: MetricsFile, enabled: Option<bool>) -> anyhow::Result<MetricsOptions> {
    let token_sha256 = match &file.token_file {
        None => None,
        Some(p) => Some(read_token(p)?),
    };
    let allow = crate::gateway::ip::parse_nets(&file.allow.unwrap_or_default())
        .map_err(|e| anyhow::anyhow!("metrics.allow: {e}"))?;
    let sample_interval = file.sample_interval_ms.map_or(SAMPLE_INTERVAL_DEFAULT, Duration::from_millis);
    if sample_interval < SAMPLE_INTERVAL_MIN {
        anyhow::bail!("metrics.sample_interval_ms must be at least {}", SAMPLE_INTERVAL_MIN.as_millis());
    }
    Ok(MetricsOptions { enabled: enabled.or(file.enabled).unwrap_or(true), token_sha256, allow, sample_interval })
}

fn read_token(path: &Path) -> anyhow::Result<Vec<u8>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("metrics.token_file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.len() < 16 {
        anyhow::bail!("metrics.token_file {}: the token must be at least 16 characters", path.display());
    }
    Ok(sha2::Sha256::digest(token.as_bytes()).to_vec())
}

/// Whether this process records metrics (set once by `install`).
static ENABLED: AtomicBool = AtomicBool::new(false);
static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
static ACCESS: OnceLock<MetricsOptions> = OnceLock::new();

/// True once `install` ran with metrics enabled.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Installs the Prometheus recorder (once per process; later calls only keep the first options)
/// and describes every series. With `enabled = false` nothing is installed and the `metrics`
/// macros throughout the code do nothing.
pub fn install(opts: &MetricsOptions) {
    let _ = ACCESS.set(opts.clone());
    if !opts.enabled {
        return;
    }
    let handle = HANDLE.get_or_init(|| {
        let built = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS_SECONDS)
            .and_then(|b| b.install_recorder());
        match built {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::error!(error = %e, "could not install the metrics recorder; /metrics is off");
                None
            }
        }
    });
    if handle.is_some() {
        describe();
        metrics::gauge!("dtm_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        metrics::gauge!("dtm_process_start_time_seconds").set(crate::api::now_ms() as f64 / 1000.0);
        ENABLED.store(true, Ordering::Relaxed);
    }
}

/// `GET /metrics`: the Prometheus text format. 404 when metrics are off; 401/403 when `[metrics]`
/// restricts who may read it.
pub async fn get_metrics(State(state): State<AppState>, req: axum::extract::Request) -> Response {
    let headers = req.headers();
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let Some(Some(handle)) = HANDLE.get() else {
        return ApiError::not_found("metrics are disabled on this node ([metrics] enabled = false)").into_response();
    };
    if let Some(opts) = ACCESS.get() {
        let ip = peer.map(|p| crate::gateway::ip::canonical(p.ip()));
        if !opts.allow.is_empty() && !ip.is_some_and(|ip| opts.allow.iter().any(|n| n.contains(&ip))) {
            return ApiError::forbidden("this address may not read /metrics").into_response();
        }
        if let Some(want) = &opts.token_sha256 {
            let given = headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !crate::api::auth::matches(want, given.trim()) {
                return ApiError::unauthorized("/metrics needs `Authorization: Bearer <metrics token>`")
                    .into_response();
            }
        }
    }
    refresh_raft(&state.node);
    let body = handle.render();
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    resp
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The channel of an HTTP route template: SOAP, web pages (the UI and the API docs), or REST.
fn channel_of(route: &str) -> Channel {
    if route.starts_with("/soap") {
        Channel::Soap
    } else if route.starts_with("/ui") || route.starts_with("/api/docs") || route == "/" {
        Channel::Web
    } else {
        Channel::Rest
    }
}

/// Routes that are monitoring's own traffic: counted in Prometheus, kept out of the live window so
/// that scrapes and dashboards polling do not show up as load.
fn is_monitoring(route: &str) -> bool {
    route == "/metrics" || route.starts_with("/api/v1/monitoring/")
}

/// The HTTP layer (outermost on the router): counts and times every answered request by its
/// route template, and feeds the live window. Requests of this node's own probes are left out
/// (they have their own series, `dtm_probe_*`).
pub async fn http_layer(req: Request<Body>, next: Next) -> Response {
    // One clock for every consumer of request timings: the Prometheus series and live window here,
    // the performance samples (A5.3, `perf`) and the alert rules' window (A5.2, `alerts`).
    let path = req.uri().path();
    let perf_channel = crate::perf::channel_of(path, req.method() == Method::POST);
    let alert_kind = crate::alerts::window::kind_of(path);
    let exported = enabled() && !crate::probes::is_own_probe(req.headers());
    let method = method_label(req.method());
    let route: Arc<str> = match req.extensions().get::<MatchedPath>() {
        Some(m) => Arc::from(m.as_str()),
        None => Arc::from("unmatched"),
    };
    let started = Instant::now();
    #[cfg(feature = "fault-injection")]
    if alert_kind != crate::alerts::window::RequestKind::NotCounted {
        let delay = crate::alerts::fault::DELAY_MS.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
    }
    let resp = next.run(req).await;
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    crate::perf::record(perf_channel, crate::perf::class_of(status), elapsed);
    crate::alerts::window::REQUESTS.record(alert_kind, status, elapsed);
    if !exported {
        return resp;
    }
    let channel = channel_of(&route);
    metrics::counter!("dtm_http_requests_total", "channel" => channel.name(), "method" => method,
        "route" => route.to_string(), "status" => status_label(status))
    .increment(1);
    metrics::histogram!("dtm_http_request_duration_seconds", "channel" => channel.name(), "method" => method,
        "route" => route.to_string())
    .record(elapsed.as_secs_f64());
    if !is_monitoring(&route) {
        crate::live::record_request(channel, status, elapsed);
    }
    resp
}

/// A status as a label: the three digits, from a bounded set (100-599).
fn status_label(status: u16) -> &'static str {
    const CODES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    match status {
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        301 => "301",
        302 => "302",
        303 => "303",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        406 => "406",
        408 => "408",
        409 => "409",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s => CODES.get(usize::from(s / 100).saturating_sub(1)).copied().unwrap_or("other"),
    }
}

/// A gRPC submission was answered (`status`: the HTTP equivalent of the answer).
pub fn observe_grpc(method: &'static str, status: u16, elapsed: Duration) {
    if !enabled() {
        return;
    }
    metrics::counter!("dtm_grpc_requests_total", "method" => method, "status" => status_label(status)).increment(1);
    metrics::histogram!("dtm_grpc_request_duration_seconds", "method" => method).record(elapsed.as_secs_f64());
    crate::live::record_request(Channel::Grpc, status, elapsed);
}

/// A rejection reason from the fixed set.
pub fn reason_label(code: &str) -> &'static str {
    REJECTION_REASONS.iter().find(|r| **r == code).copied().unwrap_or("other")
}

/// The outcome of a real-time submission for a registered source and dataset: the answer's counts
/// when accepted, the error's code when refused.
pub fn ingest_outcome(
    source: &str,
    dataset: &str,
    channel: &'static str,
    answer: Result<&serde_json::Value, &ApiError>,
) {
    if !enabled() {
        return;
    }
    match answer {
        Ok(body) => {
            let n = |k: &str| body[k].as_u64().unwrap_or(0);
            let (conflicts, duplicates) = (n("conflicts"), n("duplicates"));
            let stored = n("accepted").saturating_sub(conflicts + duplicates);
            count_records(source, dataset, channel, stored, duplicates, conflicts);
        }
        Err(e) => count_rejected(source, dataset, channel, reason_label(e.code), 1),
    }
}

/// A finished batch: its accepted, duplicate and conflicting records, its refused rows, and a
/// refusal of the whole batch.
pub fn batch_outcome(r: &state::BatchReceipt) {
    if !enabled() {
        return;
    }
    let stored = r.accepted.saturating_sub(r.duplicates + r.conflicts);
    count_records(&r.source, &r.dataset, "batch", stored, r.duplicates, r.conflicts);
    if r.rejected > 0 {
        count_rejected(&r.source, &r.dataset, "batch", "invalid_records", r.rejected);
    }
    if !r.error_code.is_empty() && r.error_code != "invalid_records" {
        count_rejected(&r.source, &r.dataset, "batch", reason_label(&r.error_code), 1);
    }
}

fn count_records(source: &str, dataset: &str, channel: &'static str, stored: u64, duplicates: u64, conflicts: u64) {
    for (outcome, n) in [("stored", stored), ("duplicate", duplicates), ("conflict", conflicts)] {
        if n > 0 {
            metrics::counter!("dtm_ingest_records_total", "source" => source.to_string(), "dataset" => dataset.to_string(),
                "channel" => channel, "outcome" => outcome)
            .increment(n);
        }
    }
    crate::live::record_ingest(source, stored + conflicts, duplicates, 0);
}

fn count_rejected(source: &str, dataset: &str, channel: &'static str, reason: &'static str, n: u64) {
    metrics::counter!("dtm_ingest_rejected_total", "source" => source.to_string(), "dataset" => dataset.to_string(),
        "channel" => channel, "reason" => reason)
    .increment(n);
    crate::live::record_ingest(source, 0, 0, n);
}

/// Followers whose lag this node has published while leading, so that their series can be set to
/// NaN when it stops leading or they leave.
static LAG_SERIES: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());

/// The Raft gauges, from openraft's metrics (cheap: a borrow of a watch channel).
pub fn refresh_raft(node: &ClusterNode) {
    if !enabled() {
        return;
    }
    let m = node.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let applied = m.last_applied.map_or(0, |l| l.index);
    let last_log = m.last_log_index.unwrap_or(0);
    metrics::gauge!("dtm_raft_term").set(m.current_term as f64);
    metrics::gauge!("dtm_raft_leader_id").set(m.current_leader.unwrap_or(0) as f64);
    metrics::gauge!("dtm_raft_is_leader").set(if m.current_leader == Some(node.id) { 1.0 } else { 0.0 });
    metrics::gauge!("dtm_raft_last_log_index").set(last_log as f64);
    metrics::gauge!("dtm_raft_applied_index").set(applied as f64);
    metrics::gauge!("dtm_raft_snapshot_index").set(m.snapshot.map_or(0, |l| l.index) as f64);
    metrics::gauge!("dtm_raft_members").set(membership.nodes().count() as f64);
    metrics::gauge!("dtm_raft_voters").set(voters.len() as f64);
    let mut seen = LAG_SERIES.lock().unwrap_or_else(|p| p.into_inner());
    let mut now_seen = BTreeSet::new();
    let mut commit = applied;
    if let Some(replication) = &m.replication {
        // The commit index is the highest index a majority of voters holds (the leader's own log
        // counts as matched up to its last index).
        let mut matched: Vec<u64> = voters
            .iter()
            .map(
                |v| if *v == node.id { last_log } else { replication.get(v).copied().flatten().map_or(0, |l| l.index) },
            )
            .collect();
        matched.sort_unstable_by(|a, b| b.cmp(a));
        if let Some(q) = matched.get(voters.len() / 2) {
            commit = commit.max(*q);
        }
        for (id, matched) in replication {
            if *id == node.id {
                continue;
            }
            let lag = last_log.saturating_sub(matched.map_or(0, |l| l.index));
            metrics::gauge!("dtm_raft_replication_lag_entries", "follower" => id.to_string()).set(lag as f64);
            now_seen.insert(*id);
        }
        if let Some(ms) = m.millis_since_quorum_ack {
            metrics::gauge!("dtm_raft_quorum_ack_age_seconds").set(ms as f64 / 1000.0);
        }
    }
    for gone in seen.difference(&now_seen) {
        metrics::gauge!("dtm_raft_replication_lag_entries", "follower" => gone.to_string()).set(f64::NAN);
    }
    *seen = now_seen;
    metrics::gauge!("dtm_raft_commit_index").set(commit as f64);
}

/// Sources whose queue gauges this node has published, so that a removed source's become NaN.
static SOURCE_SERIES: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn refresh_sources(pipeline: &dtm_actors::Pipeline<crate::pipeline::IngestStages>) {
    let stats = pipeline.stats();
    let mut seen = SOURCE_SERIES.lock().unwrap_or_else(|p| p.into_inner());
    let mut now_seen = BTreeSet::new();
    for s in &stats.sources {
        let l = || [("source", s.source.clone())];
        metrics::gauge!("dtm_source_queue_in_use", &l()).set(s.queue_in_use as f64);
        metrics::gauge!("dtm_source_queue_capacity", &l()).set(s.queue_capacity as f64);
        metrics::gauge!("dtm_source_jobs_in_pipeline", &l()).set(s.jobs_in_pipeline as f64);
        let running = matches!(s.state, dtm_actors::SourceState::Running);
        metrics::gauge!("dtm_source_running", &l()).set(if running { 1.0 } else { 0.0 });
        now_seen.insert(s.source.clone());
    }
    for gone in seen.difference(&now_seen) {
        for name in [
            "dtm_source_queue_in_use",
            "dtm_source_queue_capacity",
            "dtm_source_jobs_in_pipeline",
            "dtm_source_running",
        ] {
            metrics::gauge!(name, "source" => gone.clone()).set(f64::NAN);
        }
    }
    *seen = now_seen;
}

/// Bytes under `dir` (files only, at most `STORAGE_WALK_FILES_MAX` of them).
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut files = 0usize;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            files += 1;
            if files > STORAGE_WALK_FILES_MAX {
                return total;
            }
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// (available, capacity) bytes of the file system holding `dir`.
fn fs_space(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `st` a properly sized, writable struct.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    if rc != 0 {
        return None;
    }
    let frag = st.f_frsize as u64;
    Some((st.f_bavail as u64 * frag, st.f_blocks as u64 * frag))
}

fn refresh_storage(data_dir: &Path) {
    metrics::gauge!("dtm_storage_bytes").set(dir_bytes(data_dir) as f64);
    if let Some((available, capacity)) = fs_space(data_dir) {
        metrics::gauge!("dtm_storage_available_bytes").set(available as f64);
        metrics::gauge!("dtm_storage_capacity_bytes").set(capacity as f64);
    }
}

fn refresh_audit(node: &ClusterNode) {
    match node.reader.get_msg::<state::AuditHead>(dtm_cluster::tables::AUDIT_HEAD) {
        Ok(head) => {
            let head = head.unwrap_or_default();
            metrics::gauge!("dtm_audit_chain_entries").set(head.size as f64);
            metrics::gauge!("dtm_audit_signed_entries").set(head.signed_through as f64);
        }
        Err(e) => tracing::debug!(error = %e, "metrics: could not read the audit head"),
    }
    if let Some(last) = crate::audit_watch::last() {
        let ok = last.error.is_none() && last.report.problem.is_none();
        metrics::gauge!("dtm_audit_verify_ok").set(if ok { 1.0 } else { 0.0 });
    }
}

/// Starts the sampler: every `sample_interval`, the Raft, source-queue, storage and audit gauges
/// are refreshed and the exporter's upkeep runs (it drains histograms). Does nothing when metrics
/// are off.
pub fn start_sampler(
    node: Arc<ClusterNode>,
    pipeline: dtm_actors::Pipeline<crate::pipeline::IngestStages>,
    data_dir: PathBuf,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    if !enabled() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            refresh_raft(&node);
            refresh_sources(&pipeline);
            refresh_audit(&node);
            let dir = data_dir.clone();
            // A directory walk and statvfs: blocking calls, off the async workers.
            let _ = tokio::task::spawn_blocking(move || refresh_storage(&dir)).await;
            if let Some(Some(h)) = HANDLE.get() {
                h.run_upkeep();
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(reason_label("invalid_records"), "invalid_records");
        assert_eq!(reason_label("something new"), "other");
        assert_eq!(status_label(201), "201");
        assert_eq!(status_label(418), "4xx");
        assert_eq!(status_label(999), "other");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").expect("a method")), "other");
        assert!(matches!(channel_of("/soap/v1"), Channel::Soap));
        assert!(matches!(channel_of("/ui/login"), Channel::Web));
        assert!(matches!(channel_of("/api/v1/datasets/{id}/records"), Channel::Rest));
    }

    #[test]
    fn resolve_checks_the_options() {
        let o = resolve(MetricsFile::default(), None).expect("defaults");
        assert!(o.enabled && o.allow.is_empty() && o.token_sha256.is_none());
        assert!(!resolve(MetricsFile::default(), Some(false)).expect("off").enabled);
        let bad = MetricsFile { allow: Some(vec!["not a net".into()]), ..MetricsFile::default() };
        assert!(resolve(bad, None).is_err());
        let fast = MetricsFile { sample_interval_ms: Some(1), ..MetricsFile::default() };
        assert!(resolve(fast, None).is_err());
    }
}
