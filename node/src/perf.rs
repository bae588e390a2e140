//! The node's performance samples (A5.3, F4, A1.3): what the reports need that the audit trail
//! lacks — response-time distributions and availability — measured here and replicated as compact
//! periodic samples (`dtm_cluster::performance`).
//!
//! - The node's one HTTP timing layer (`metrics::http_layer`, outermost) times every HTTPS request
//!   (REST, SOAP, batch uploads, web pages) until its answer's head is ready, and [`record`] adds the time to an
//!   HdrHistogram per channel × outcome class (gRPC submissions are timed in `grpc_ingest.rs`).
//!   Recording is one short mutex per series; nothing is allocated per request.
//! - [`start`] runs the sampler: every second it notes whether the node is a ready member (it has
//!   a leader and is in the membership); every `sample_interval` it swaps the histograms for empty
//!   ones and proposes one `PerformanceSample` — the histograms' non-empty buckets, the ready time,
//!   and the node's compliance facts ([`facts`]). A proposal that fails (no quorum) is kept and
//!   retried with the next one, at most `PENDING_SAMPLES_MAX` of them; older ones are dropped and
//!   counted, so a long outage costs bounded memory and shows as time not covered by any sample.
//!
//! Availability is therefore measured by the node itself: an interval counts as available time of
//! the node for the part of it during which the node was ready; a node that is down proposes no
//! sample, so its down time is simply not covered. `probes_ok`/`probes_failed` carry the results of
//! the node's latest synthetic-probe round (`crate::probes`) when one finished in the interval.

use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::Weak;
use std::time::Duration;
use std::time::Instant;

use dtm_cluster::ClusterNode;
use dtm_model::state;
use hdrhistogram::Histogram;

/// The channels a request can come through (the audit trail's names).
pub const CHANNELS: [&str; 5] = ["rest", "soap", "grpc", "batch", "web"];
/// Outcome classes: 1xx–3xx (and gRPC OK), 4xx, 5xx.
pub const CLASSES: [&str; 3] = ["ok", "client_error", "server_error"];
/// Largest latency recorded (longer ones count as this): one hour, in microseconds.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant digits of the histograms: buckets about 6 % wide, a few dozen per series.
const SIGNIFICANT_DIGITS: u8 = 1;
/// Samples kept while proposals fail; older ones are dropped (and counted).
pub const PENDING_SAMPLES_MAX: usize = 24;
/// How often the sampler checks readiness.
const READY_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The first sample comes this soon after start, so a new node's facts are visible at once.
const FIRST_SAMPLE_AFTER: Duration = Duration::from_secs(3);
/// Backup files looked at to find the newest scheduled backup.
const BACKUP_FILES_SCAN_MAX: usize = 10_000;

const _: () = assert!(CHANNELS.len() * CLASSES.len() <= dtm_cluster::performance::SAMPLE_SERIES_MAX);

// ---- Recording ----

struct Recorder {
    /// `[channel][class]`, each with its own lock so concurrent requests rarely meet.
    series: Vec<Mutex<Histogram<u64>>>,
    sums: Vec<Mutex<(u64, u64)>>,
}

fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; a failure here is a programming error.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGNIFICANT_DIGITS).expect("valid histogram bounds")
}

fn recorder() -> &'static Recorder {
    static R: OnceLock<Recorder> = OnceLock::new();
    R.get_or_init(|| {
        let n = CHANNELS.len() * CLASSES.len();
        Recorder {
            series: (0..n).map(|_| Mutex::new(new_histogram())).collect(),
            sums: (0..n).map(|_| Mutex::new((0, 0))).collect(),
        }
    })
}

fn index(channel: &str, class: &str) -> Option<usize> {
    let c = CHANNELS.iter().position(|x| *x == channel)?;
    let k = CLASSES.iter().position(|x| *x == class)?;
    Some(c * CLASSES.len() + k)
}

/// The outcome class of an HTTP status.
pub fn class_of(status: u16) -> &'static str {
    match status {
        500.. => "server_error",
        400..=499 => "client_error",
        _ => "ok",
    }
}

/// Adds one request's latency.
pub fn record(channel: &str, class: &str, latency: Duration) {
    let Some(i) = index(channel, class) else { return };
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(1, LATENCY_US_MAX);
    let r = recorder();
    if let Some(h) = r.series.get(i) {
        let _ = h.lock().unwrap_or_else(|p| p.into_inner()).record(us);
    }
    if let Some(s) = r.sums.get(i) {
        let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
        s.0 = s.0.saturating_add(us);
        s.1 = s.1.max(us);
    }
}

/// The channel of an HTTPS request, from its path.
pub fn channel_of(path: &str, is_post: bool) -> &'static str {
    if path.starts_with("/soap/") {
        "soap"
    } else if is_post && path.starts_with("/api/v1/datasets/") && path.ends_with("/batches") {
        "batch"
    } else if path.starts_with("/api/") || path.starts_with("/oauth2/") || path == "/metrics" {
        "rest"
    } else {
        "web"
    }
}

/// Takes the recorded series (leaving empty ones) as sample series.
fn take_series() -> Vec<state::ChannelLatency> {
    let r = recorder();
    let mut out = Vec::new();
    for (i, (h, s)) in r.series.iter().zip(&r.sums).enumerate() {
        let hist = std::mem::replace(&mut *h.lock().unwrap_or_else(|p| p.into_inner()), new_histogram());
        let (sum_us, max_us) = std::mem::take(&mut *s.lock().unwrap_or_else(|p| p.into_inner()));
        if hist.is_empty() {
            continue;
        }
        let buckets = hist
            .iter_recorded()
            .map(|v| state::LatencyBucket { upto_us: v.value_iterated_to(), count: v.count_at_value() })
            .take(dtm_cluster::performance::SERIES_BUCKETS_MAX)
            .collect();
        out.push(state::ChannelLatency {
            channel: CHANNELS[i / CLASSES.len()].into(),
            class: CLASSES[i % CLASSES.len()].into(),
            count: hist.len(),
            sum_us,
            max_us,
            buckets,
        });
    }
    out
}

/// Rebuilds a histogram from stored buckets (the same layout, so merging is exact per bucket).
pub fn histogram_of<'a>(buckets: impl IntoIterator<Item = &'a state::LatencyBucket>) -> Histogram<u64> {
    let mut h = new_histogram();
    for b in buckets {
        let _ = h.record_n(b.upto_us.clamp(1, LATENCY_US_MAX), b.count);
    }
    h
}

// ---- Configuration ----

/// `[performance]`: samples for the performance reports.
#[derive(serde::Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct PerfFile {
    /// Seconds between samples (default 300).
    pub sample_interval_s: Option<u64>,
    /// Days monitoring data (samples, reports) is kept; at least 365 (A5.2). Nothing deletes it
    /// today, so this is the floor the node promises.
    pub monitoring_retention_days: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct PerfOptions {
    pub sample_interval: Duration,
    pub monitoring_retention_days: u32,
    /// Overrides that knowingly break a requirement (fault-injection builds only), named in the
    /// node's facts so that compliance reports them.
    pub unsafe_overrides: Vec<String>,
}

impl Default for PerfOptions {
    fn default() -> Self {
        PerfOptions {
            sample_interval: Duration::from_secs(300),
            monitoring_retention_days: 400,
            unsafe_overrides: vec![],
        }
    }
}

pub fn resolve(file: PerfFile, interval_flag: Option<u64>) -> anyhow::Result<PerfOptions> {
    let d = PerfOptions::default();
    let s = interval_flag.or(file.sample_interval_s).unwrap_or(d.sample_interval.as_secs());
    if !(1..=3600).contains(&s) {
        anyhow::bail!("[performance] sample_interval_s must be between 1 and 3600 (got {s})");
    }
    let days = file.monitoring_retention_days.unwrap_or(d.monitoring_retention_days);
    if days < crate::limits::AUDIT_RETENTION_DAYS_MIN {
        anyhow::bail!(
            "[performance] monitoring_retention_days = {days}: monitoring data is kept at least 365 days (A5.2)"
        );
    }
    Ok(PerfOptions {
        sample_interval: Duration::from_secs(s),
        monitoring_retention_days: days,
        unsafe_overrides: vec![],
    })
}

// ---- Facts ----

/// What the sampler needs to state the node's compliance facts.
#[derive(Debug, Clone)]
pub struct FactsInput {
    pub site: String,
    pub audit: crate::audit::AuditOptions,
    pub backup: crate::backup::BackupOptions,
    pub perf: PerfOptions,
}

/// The node's facts now.
pub fn facts(node: &ClusterNode, input: &FactsInput) -> state::NodeFacts {
    let keys = node.reader.keyring();
    let audit = crate::audit_watch::last();
    state::NodeFacts {
        node_id: node.id,
        site: input.site.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        audit_retention_days: input.audit.retention_days,
        monitoring_retention_days: input.perf.monitoring_retention_days,
        // Every value is sealed below the tables (`storage/src/sealed.rs`); there is no switch.
        encryption_at_rest: !keys.key_ids.is_empty(),
        encryption_algorithm: "AES-256-GCM".into(),
        current_data_key: keys.current_key_id,
        data_keys: keys.key_ids.len() as u32,
        backup_scheduled: input.backup.dir.is_some(),
        backup_interval_s: input.backup.interval.as_secs(),
        last_backup_at_ms: input.backup.dir.as_deref().map_or(0, newest_backup_ms),
        // The HTTPS listener's protocol versions (`tls.rs`).
        tls_versions: vec!["TLSv1.2".into(), "TLSv1.3".into()],
        unsafe_overrides: input.perf.unsafe_overrides.clone(),
        monthly_reports: input.audit.monthly_reports,
        audit_verified_entries: audit.as_ref().map_or(0, |s| s.report.entries),
        audit_verification_failed: audit.as_ref().is_some_and(|s| !s.report.ok()),
        reported_at_ms: crate::api::now_ms(),
    }
}

/// The time of the newest finished backup file in `dir` (0: none).
fn newest_backup_ms(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .take(BACKUP_FILES_SCAN_MAX)
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "dtmbak"))
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .filter_map(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .max()
        .unwrap_or(0)
}

// ---- Sampler ----

/// Starts the sampler of `node` (held weakly: it ends with the node).
pub fn start(node: &Arc<ClusterNode>, input: FactsInput) {
    tokio::spawn(sampler(Arc::downgrade(node), input));
}

async fn sampler(node: Weak<ClusterNode>, input: FactsInput) {
    let interval = input.perf.sample_interval;
    let mut from_ms = crate::api::now_ms();
    let mut ready_ms = 0u64;
    let mut last_check = Instant::now();
    let mut next_sample = Instant::now() + interval.min(FIRST_SAMPLE_AFTER);
    let mut pending: std::collections::VecDeque<state::PerformanceSample> = Default::default();
    let mut probe_rounds = 0u64;
    loop {
        tokio::time::sleep(READY_CHECK_INTERVAL.min(next_sample.saturating_duration_since(Instant::now()))).await;
        let Some(node) = node.upgrade() else { return };
        let now = Instant::now();
        let elapsed = now.duration_since(last_check).as_millis() as u64;
        last_check = now;
        if node.is_ready() {
            ready_ms += elapsed;
        }
        if now < next_sample {
            continue;
        }
        next_sample = now + interval;
        let to_ms = crate::api::now_ms().max(from_ms + 1);
        let mut sample = state::PerformanceSample {
            node_id: node.id,
            from_ms,
            to_ms,
            channels: take_series(),
            ready_ms: ready_ms.min(to_ms - from_ms),
            probes_ok: 0,
            probes_failed: 0,
            facts: Some(facts(&node, &input)),
            interval_ms: interval.as_millis() as u64,
        };
        // The synthetic probes' latest round, when one finished in this interval (F5).
        let probes = crate::probes::latest();
        if probes.rounds > probe_rounds {
            probe_rounds = probes.rounds;
            sample.probes_ok = probes.results.iter().filter(|r| r.ok && !r.skipped).count() as u64;
            sample.probes_failed = probes.results.iter().filter(|r| !r.ok && !r.skipped).count() as u64;
        }
        from_ms = to_ms;
        ready_ms = 0;
        pending.push_back(sample);
        while pending.len() > PENDING_SAMPLES_MAX {
            pending.pop_front();
            metrics::counter!("dtm_performance_samples_dropped_total").increment(1);
        }
        while let Some(s) = pending.front().cloned() {
            let cmd = crate::audit::system_command(
                &node,
                state::command::Kind::Performance(state::PerformanceCommand {
                    kind: Some(state::performance_command::Kind::Sample(state::RecordPerformanceSample {
                        sample: Some(s),
                    })),
                }),
            );
            match tokio::time::timeout(interval.max(Duration::from_secs(5)), node.write(cmd)).await {
                Ok(Ok((resp, _))) => {
                    if let Some(state::command_response::Result::Rejected(r)) = resp.result {
                        tracing::warn!(target: "performance", code = %r.code, message = %r.message, "sample refused");
                    }
                    pending.pop_front();
                }
                Ok(Err(e)) => {
                    tracing::debug!(target: "performance", error = %e, pending = pending.len(), "sample not replicated yet");
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_follow_the_path() {
        assert_eq!(channel_of("/soap/v1", true), "soap");
        assert_eq!(channel_of("/api/v1/datasets/d/batches", true), "batch");
        assert_eq!(channel_of("/api/v1/datasets/d/batches", false), "rest");
        assert_eq!(channel_of("/api/v1/datasets/d/records", true), "rest");
        assert_eq!(channel_of("/ui/login", false), "web");
        assert_eq!((class_of(201), class_of(422), class_of(503)), ("ok", "client_error", "server_error"));
    }

    #[test]
    fn buckets_merge_back_into_the_same_percentiles() {
        let mut h = new_histogram();
        for us in 1..=10_000u64 {
            h.record(us * 10).expect("in range");
        }
        let buckets: Vec<state::LatencyBucket> = h
            .iter_recorded()
            .map(|v| state::LatencyBucket { upto_us: v.value_iterated_to(), count: v.count_at_value() })
            .collect();
        assert!(buckets.len() < 200, "{} buckets", buckets.len());
        // Two samples of the same distribution merge into twice the count, same percentiles.
        let merged = histogram_of(buckets.iter().chain(&buckets));
        assert_eq!(merged.len(), 20_000);
        for q in [0.5, 0.95, 0.99] {
            let (a, b) = (h.value_at_quantile(q) as f64, merged.value_at_quantile(q) as f64);
            assert!((a - b).abs() / a < 0.07, "q{q}: {a} vs {b}");
        }
        assert!((merged.value_at_quantile(0.5) as f64 - 50_000.0).abs() < 50_000.0 * 0.07);
    }
}
