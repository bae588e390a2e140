//! Live statistics for the dashboard and the alert rules (A5.1, F5): a small in-process rolling
//! window of the last 300 seconds, one slot per second, fed by the HTTP layer and the gRPC service
//! (`crate::metrics`). `live()` answers, for the last minute and the last five minutes, per
//! channel (REST, SOAP, gRPC, web pages and all together): requests, requests per second, errors,
//! error rate and the 50th/95th/99th percentile response time; per registered source: records
//! accepted and duplicated and submissions rejected.
//!
//! `GET /api/v1/monitoring/live` is this node's `LiveStats`; `GET /api/v1/monitoring/nodes` asks
//! every member for its own over HTTPS (the caller's credentials are passed on; one second each)
//! and says which did not answer. Both need a signed-in person or token with the admin, operator,
//! auditor or analyst role (`MONITORING_READ`).
//!
//! Percentiles come from a histogram of 80 logarithmic buckets (each about 19 % wider than the one
//! before, 0.1 ms to about 50 s); a percentile is the upper bound of its bucket, so it is at most
//! 19 % above the true value. Monitoring's own traffic (`/metrics`, `/api/v1/monitoring/*`) and
//! this node's probes are not counted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::Weak;
use std::time::Duration;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use dtm_cluster::ClusterNode;
use serde::Deserialize;
use serde::Serialize;

use crate::api::AppState;
use crate::api::auth::Access;
use crate::api::auth::Role;
use crate::api::error::ApiResult;

/// Who may read the live statistics and the probes' results: people and tokens that run or
/// watch the system (not source systems or data-entry users).
pub const MONITORING_READ: Access = Access {
    roles: &[Role::Admin, Role::Operator, Role::Auditor, Role::Analyst],
    scopes: &[],
    what: "the admin, operator, auditor or analyst role",
};

/// Seconds the window keeps.
pub const WINDOW_SECONDS: u64 = 300;
/// The windows `live()` reports.
pub const SHORT_WINDOW_SECONDS: u64 = 60;
/// Histogram buckets per channel and second.
const BUCKETS: usize = 80;
/// Upper bound of bucket 0; bucket `i` ends at `BUCKET_BASE_SECONDS * 2^((i + 1) / 4)`.
const BUCKET_BASE_SECONDS: f64 = 0.0001;
/// How long `/monitoring/nodes` waits for each member.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(1);
/// Sources tracked per second; more are counted under `SOURCE_OVERFLOW` (sources are registered,
/// so this only guards memory).
const SOURCES_PER_SLOT_MAX: usize = 1024;
const SOURCE_OVERFLOW: &str = "(other sources)";

/// How a request reached the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Rest,
    Soap,
    Grpc,
    Web,
}

impl Channel {
    pub const ALL: [Channel; 4] = [Channel::Rest, Channel::Soap, Channel::Grpc, Channel::Web];
    pub fn name(self) -> &'static str {
        match self {
            Channel::Rest => "rest",
            Channel::Soap => "soap",
            Channel::Grpc => "grpc",
            Channel::Web => "web",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// One node's live statistics.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveStats {
    pub node_id: u64,
    /// When these statistics were computed (ms since the epoch).
    pub at_ms: u64,
    /// False when `[metrics] enabled = false` on this node: the windows are then empty.
    pub enabled: bool,
    /// This node's view of the cluster.
    pub raft: RaftSummary,
    /// The last 60 seconds.
    pub last_minute: WindowStats,
    /// The last 300 seconds.
    pub last_5_minutes: WindowStats,
}

/// What this node knows of Raft.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RaftSummary {
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub state: String,
    pub term: u64,
    pub leader_id: Option<u64>,
    pub last_log_index: u64,
    pub applied_index: u64,
}

/// Statistics over one window.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WindowStats {
    pub seconds: u64,
    /// `rest`, `soap`, `grpc`, `web`, and `all` (every channel together). A channel appears once it
    /// has had a request in the window; `all` is always there.
    pub channels: BTreeMap<String, ChannelStats>,
    /// Per registered source with activity in the window.
    pub sources: BTreeMap<String, SourceCounts>,
}

/// Requests of one channel over a window.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChannelStats {
    pub requests: u64,
    pub requests_per_second: f64,
    /// Answers with a 5xx status (the node failed; what the error rate counts).
    pub server_errors: u64,
    /// Answers with a 4xx status (the request was refused).
    pub client_errors: u64,
    /// `server_errors / requests` (0 without requests).
    pub error_rate: f64,
    /// Response-time percentiles in seconds (None without requests).
    pub p50_seconds: Option<f64>,
    pub p95_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
}

/// Ingestion of one source over a window.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceCounts {
    /// Records stored (new, or a new version of a natural key).
    pub accepted_records: u64,
    pub duplicate_records: u64,
    /// Submissions refused (a real-time request, or one row of a batch).
    pub rejected_submissions: u64,
}

#[derive(Clone)]
struct ChannelSlot {
    requests: u64,
    server_errors: u64,
    client_errors: u64,
    buckets: [u32; BUCKETS],
}

impl Default for ChannelSlot {
    fn default() -> Self {
        ChannelSlot { requests: 0, server_errors: 0, client_errors: 0, buckets: [0; BUCKETS] }
    }
}

#[derive(Clone, Default)]
struct Slot {
    /// The second (since the window's start) this slot holds; older contents are stale.
    second: u64,
    channels: [ChannelSlot; 4],
    sources: BTreeMap<String, SourceCounts>,
}

struct Window {
    origin: Instant,
    slots: Vec<Slot>,
}

impl Window {
    fn new() -> Self {
        Window { origin: Instant::now(), slots: vec![Slot::default(); WINDOW_SECONDS as usize] }
    }
    /// Seconds since the window started, plus one so that a fresh slot (second 0) is never current.
    fn now_second(&self) -> u64 {
        self.origin.elapsed().as_secs() + 1
    }
    fn current(&mut self) -> &mut Slot {
        let now = self.now_second();
        let slot = &mut self.slots[(now % WINDOW_SECONDS) as usize];
        if slot.second != now {
            *slot = Slot { second: now, ..Slot::default() };
        }
        slot
    }
}

static WINDOW: Mutex<Option<Window>> = Mutex::new(None);

fn with_window<T>(f: impl FnOnce(&mut Window) -> T) -> T {
    let mut w = WINDOW.lock().unwrap_or_else(|p| p.into_inner());
    f(w.get_or_insert_with(Window::new))
}

fn bucket_of(seconds: f64) -> usize {
    if seconds <= BUCKET_BASE_SECONDS {
        return 0;
    }
    let i = ((seconds / BUCKET_BASE_SECONDS).log2() * 4.0).ceil() as i64 - 1;
    i.clamp(0, BUCKETS as i64 - 1) as usize
}

fn bucket_upper_seconds(i: usize) -> f64 {
    BUCKET_BASE_SECONDS * 2f64.powf((i + 1) as f64 / 4.0)
}

/// Counts one answered request.
pub fn record_request(channel: Channel, status: u16, elapsed: Duration) {
    let b = bucket_of(elapsed.as_secs_f64());
    with_window(|w| {
        let c = &mut w.current().channels[channel.index()];
        c.requests += 1;
        c.buckets[b] = c.buckets[b].saturating_add(1);
        match status {
            500..=599 => c.server_errors += 1,
            400..=499 => c.client_errors += 1,
            _ => {}
        }
    });
}

/// Counts a registered source's ingestion outcome.
pub fn record_ingest(source: &str, accepted: u64, duplicates: u64, rejected: u64) {
    with_window(|w| {
        let slot = w.current();
        let key = if slot.sources.len() < SOURCES_PER_SLOT_MAX || slot.sources.contains_key(source) {
            source
        } else {
            SOURCE_OVERFLOW
        };
        let s = slot.sources.entry(key.to_string()).or_default();
        s.accepted_records += accepted;
        s.duplicate_records += duplicates;
        s.rejected_submissions += rejected;
    });
}

fn channel_stats(slots: &[&Slot], channels: &[Channel], seconds: u64) -> ChannelStats {
    let mut requests = 0;
    let mut server_errors = 0;
    let mut client_errors = 0;
    let mut buckets = [0u64; BUCKETS];
    for s in slots {
        for ch in channels {
            let c = &s.channels[ch.index()];
            requests += c.requests;
            server_errors += c.server_errors;
            client_errors += c.client_errors;
            for (acc, n) in buckets.iter_mut().zip(c.buckets.iter()) {
                *acc += u64::from(*n);
            }
        }
    }
    let quantile = |q: f64| -> Option<f64> {
        let total: u64 = buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_upper_seconds(i));
            }
        }
        Some(bucket_upper_seconds(BUCKETS - 1))
    };
    ChannelStats {
        requests,
        requests_per_second: requests as f64 / seconds as f64,
        server_errors,
        client_errors,
        error_rate: if requests == 0 { 0.0 } else { server_errors as f64 / requests as f64 },
        p50_seconds: quantile(0.50),
        p95_seconds: quantile(0.95),
        p99_seconds: quantile(0.99),
    }
}

fn window_stats(w: &Window, seconds: u64) -> WindowStats {
    let now = w.now_second();
    // The current second is still filling: the window is the `seconds` full seconds before it
    // plus the current one, which makes rates slightly high at most by one second's worth.
    let slots: Vec<&Slot> = w.slots.iter().filter(|s| s.second != 0 && s.second + seconds > now).collect();
    let mut channels = BTreeMap::new();
    for ch in Channel::ALL {
        let st = channel_stats(&slots, &[ch], seconds);
        if st.requests > 0 {
            channels.insert(ch.name().to_string(), st);
        }
    }
    channels.insert("all".to_string(), channel_stats(&slots, &Channel::ALL, seconds));
    let mut sources: BTreeMap<String, SourceCounts> = BTreeMap::new();
    for s in &slots {
        for (id, c) in &s.sources {
            let e = sources.entry(id.clone()).or_default();
            e.accepted_records += c.accepted_records;
            e.duplicate_records += c.duplicate_records;
            e.rejected_submissions += c.rejected_submissions;
        }
    }
    WindowStats { seconds, channels, sources }
}

/// The node `live()` describes (set by `start`).
static NODE: OnceLock<Weak<ClusterNode>> = OnceLock::new();
/// An HTTPS client trusting the cluster CA, for `/monitoring/nodes`.
static PEERS: OnceLock<reqwest::Client> = OnceLock::new();

/// Remembers the node and the cluster CA (for asking peers). Called once by `server::serve`.
pub fn start(node: &Arc<ClusterNode>, ca_pem: &[u8]) {
    let _ = NODE.set(Arc::downgrade(node));
    match crate::tls::https_client(ca_pem) {
        Ok(c) => {
            let _ = PEERS.set(c);
        }
        Err(e) => tracing::warn!(error = %e, "monitoring: no HTTPS client for peers"),
    }
}

fn raft_summary(node: &ClusterNode) -> RaftSummary {
    let m = node.raft.metrics().borrow().clone();
    let state = match m.state {
        openraft::ServerState::Leader => "leader",
        openraft::ServerState::Follower => "follower",
        openraft::ServerState::Candidate => "candidate",
        openraft::ServerState::Learner => "learner",
        openraft::ServerState::Shutdown => "shutdown",
    };
    RaftSummary {
        state: state.into(),
        term: m.current_term,
        leader_id: m.current_leader,
        last_log_index: m.last_log_index.unwrap_or(0),
        applied_index: m.last_applied.map_or(0, |l| l.index),
    }
}

/// This node's live statistics now.
pub fn live() -> LiveStats {
    let node = NODE.get().and_then(Weak::upgrade);
    let (last_minute, last_5_minutes) =
        with_window(|w| (window_stats(w, SHORT_WINDOW_SECONDS), window_stats(w, WINDOW_SECONDS)));
    LiveStats {
        node_id: node.as_ref().map_or(0, |n| n.id),
        at_ms: crate::api::now_ms(),
        enabled: crate::metrics::enabled(),
        raft: node.as_deref().map(raft_summary).unwrap_or_default(),
        last_minute,
        last_5_minutes,
    }
}

/// `GET /api/v1/monitoring/live`: this node's `LiveStats`.
pub async fn get_live(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<LiveStats>> {
    crate::api::auth::require(&state, &headers, &MONITORING_READ).await?;
    Ok(Json(live()))
}

/// One member in `GET /api/v1/monitoring/nodes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeLive {
    pub node_id: u64,
    pub http_addr: String,
    pub site: String,
    pub voter: bool,
    /// The member answered within `PEER_TIMEOUT` with its statistics.
    pub reachable: bool,
    /// Seconds the member took to answer (None when it did not).
    pub response_seconds: Option<f64>,
    /// Why it is unreachable (connection refused, timeout, status).
    pub error: Option<String>,
    pub live: Option<LiveStats>,
}

/// Every member's `LiveStats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodesLive {
    /// The node that gathered the answers.
    pub asked_by: u64,
    pub at_ms: u64,
    pub nodes: Vec<NodeLive>,
}

/// The headers that carry the caller's credentials, passed on to the peers.
const FORWARDED_HEADERS: [&str; 3] = ["authorization", "x-api-key", "cookie"];

/// `GET /api/v1/monitoring/nodes`: every member's live statistics and whether it answered.
pub async fn get_nodes(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<NodesLive>> {
    crate::api::auth::require(&state, &headers, &MONITORING_READ).await?;
    let m = state.node.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership().clone();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let client = PEERS.get().cloned();
    let asks = membership.nodes().map(|(id, info)| {
        let (id, info, voter) = (*id, info.clone(), voters.contains(id));
        let (client, headers, own) = (client.clone(), headers.clone(), id == state.node.id);
        async move {
            let base = NodeLive {
                node_id: id,
                http_addr: info.http_addr.clone(),
                site: info.site.clone(),
                voter,
                reachable: false,
                response_seconds: None,
                error: None,
                live: None,
            };
            if own {
                return NodeLive { reachable: true, response_seconds: Some(0.0), live: Some(live()), ..base };
            }
            let Some(client) = client else {
                return NodeLive { error: Some("no HTTPS client".into()), ..base };
            };
            let started = Instant::now();
            match ask_peer(&client, &info.http_addr, &headers).await {
                Ok(l) => NodeLive {
                    reachable: true,
                    response_seconds: Some(started.elapsed().as_secs_f64()),
                    live: Some(l),
                    ..base
                },
                Err(e) => NodeLive { error: Some(e), ..base },
            }
        }
    });
    let nodes = futures::future::join_all(asks).await;
    Ok(Json(NodesLive { asked_by: state.node.id, at_ms: crate::api::now_ms(), nodes }))
}

async fn ask_peer(client: &reqwest::Client, addr: &str, headers: &HeaderMap) -> Result<LiveStats, String> {
    let mut req = client.get(format!("https://{addr}/api/v1/monitoring/live")).timeout(PEER_TIMEOUT);
    for name in FORWARDED_HEADERS {
        if let Some(v) = headers.get(name) {
            req = req.header(name, v.clone());
        }
    }
    let resp =
        req.send().await.map_err(|e| if e.is_timeout() { "timeout".to_string() } else { "unreachable".to_string() })?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("answered {}", status.as_u16()));
    }
    resp.json::<LiveStats>().await.map_err(|_| "answered something that is not live statistics".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_values() {
        for v in [0.00005, 0.0001, 0.0003, 0.001, 0.0123, 0.6, 2.5, 10.0, 49.0] {
            let b = bucket_of(v);
            assert!(bucket_upper_seconds(b) >= v * 0.999_999, "{v} -> bucket {b}");
            if b > 0 {
                assert!(bucket_upper_seconds(b - 1) < v, "{v} -> bucket {b} is not the first that holds it");
            }
            assert!(bucket_upper_seconds(b) <= v * 1.19 + BUCKET_BASE_SECONDS, "{v}: bucket too coarse");
        }
        assert_eq!(bucket_of(1e9), BUCKETS - 1);
    }

    #[test]
    fn percentiles_and_error_rate_over_the_window() {
        let mut w = Window::new();
        let now = w.now_second();
        let slot = w.current();
        assert_eq!(slot.second, now);
        let c = &mut slot.channels[Channel::Rest.index()];
        // 100 requests: 90 at 10 ms, 9 at 100 ms, 1 at 1 s; 2 of them 5xx, 3 of them 4xx.
        for (n, secs) in [(90, 0.010), (9, 0.100), (1, 1.0)] {
            c.requests += n;
            c.buckets[bucket_of(secs)] += n as u32;
        }
        c.server_errors = 2;
        c.client_errors = 3;
        let st = window_stats(&w, 60);
        let rest = &st.channels["rest"];
        assert_eq!(rest.requests, 100);
        assert!((rest.error_rate - 0.02).abs() < 1e-9);
        let p50 = rest.p50_seconds.expect("p50");
        let p95 = rest.p95_seconds.expect("p95");
        let p99 = rest.p99_seconds.expect("p99");
        assert!((0.010..0.012).contains(&p50), "{p50}");
        assert!((0.100..0.12).contains(&p95), "{p95}");
        assert!((0.100..0.12).contains(&p99), "{p99}");
        assert_eq!(st.channels["all"].requests, 100);
        assert!(!st.channels.contains_key("soap"));
    }

    #[test]
    fn old_seconds_leave_the_window() {
        let mut w = Window::new();
        w.origin = Instant::now().checked_sub(Duration::from_secs(400)).expect("a clock past 400 s");
        let now = w.now_second();
        for (ago, n) in [(61, 5), (10, 7), (WINDOW_SECONDS + 5, 100)] {
            let second = now - ago;
            let slot = &mut w.slots[(second % WINDOW_SECONDS) as usize];
            slot.second = second;
            slot.channels[Channel::Soap.index()].requests = n;
        }
        // The slot from 305 s ago shares its place with none of the others, and is too old anyway.
        assert_eq!(window_stats(&w, 60).channels["all"].requests, 7);
        assert_eq!(window_stats(&w, 300).channels["all"].requests, 12);
        assert_eq!(window_stats(&w, 300).channels["soap"].requests, 12);
    }
}
