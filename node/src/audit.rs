//! The node's side of the audit trail (F8, A1.8, C4): who is calling, what each request did, and
//! getting that into the replicated chain (`dtm_cluster::audit`) at most about a second late.
//!
//! - [`layer`] wraps every HTTPS request (REST, SOAP, docs) in a task-local [`Context`]: client
//!   address, request id, body size, receiving node, and whether this is the first request of its
//!   connection. `auth::authenticate` fills in the principal; handlers may name the operation and
//!   target and say how many records were read or exported. When the answer is ready the layer
//!   turns the context into an `AuditEvent`, unless the request's own command already carries it
//!   into the log (a write: `api::command` and the submissions take their `AuditActor` from the
//!   context, and `apply` derives the entry with the command's real outcome).
//! - [`Sink`] is the node's bounded queue of explicit events. A flush task proposes them as
//!   `AuditEvents` commands at least every `AUDIT_FLUSH_INTERVAL`, in bounded chunks; a proposal
//!   that fails is retried with the events kept. Identical refusals (401, 403, 413, 429, 503) from
//!   one address within a flush are one event with a count, so a flood costs one entry. When the
//!   queue is full the node fails closed: new requests are answered 503 until it drains, so nothing
//!   is served unaudited.
//! - [`start_signer`] registers this node's signing key and, while this node leads, closes a
//!   checkpoint when entries are pending and the last one is older than the configured interval,
//!   and signs every checkpoint that has no signature yet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::Weak;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::extract::State;
use axum::http::Request;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use dtm_cluster::ClusterNode;
use dtm_cluster::tables;
use dtm_model::state;
use prost::Message;

use crate::api::AppState;
use crate::api::auth::Principal;
use crate::api::error::ApiError;
use crate::limits::AUDIT_EVENTS_PER_COMMAND_MAX;
use crate::limits::AUDIT_FLUSH_INTERVAL;
use crate::limits::AUDIT_QUEUE_EVENTS_MAX;
use crate::node_key::NodeKey;

/// Marks a connection once a source system has authenticated on it (C4 counts connections).
#[derive(Debug, Clone, Default)]
pub struct ConnectionSeen(pub Arc<AtomicBool>);

/// What one request did, filled in while it runs.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub principal: String,
    pub organisation: String,
    pub client_ip: String,
    pub request_id: String,
    pub bytes_in: u64,
    /// "rest", "soap", "grpc".
    pub channel: &'static str,
    pub operation: Option<String>,
    pub target: Option<String>,
    pub records: u64,
    pub detail: Option<serde_json::Value>,
    /// True when the request's command carries its audit entry into the log itself.
    pub in_log: bool,
    /// True for a source's first authenticated request on its connection.
    pub new_connection: bool,
    connection: Option<ConnectionSeen>,
}

tokio::task_local! {
    static CONTEXT: Arc<Mutex<Context>>;
}

fn with<R>(f: impl FnOnce(&mut Context) -> R) -> Option<R> {
    CONTEXT.try_with(|c| f(&mut c.lock().unwrap_or_else(|p| p.into_inner()))).ok()
}

/// Records who is calling (called by `auth::authenticate` on success).
pub fn note_principal(p: &Principal) {
    with(|c| {
        c.principal = p.name();
        c.organisation = p.agency.clone();
        if !p.source_id.is_empty()
            && let Some(seen) = &c.connection
        {
            c.new_connection = !seen.0.swap(true, Ordering::Relaxed);
        }
    });
}

/// Names the operation and target of the current request (otherwise: method and path).
pub fn note_operation(operation: &str, target: &str) {
    with(|c| {
        c.operation = Some(operation.to_string());
        c.target = Some(target.to_string());
    });
}

/// Records read or exported by the current request.
pub fn note_records(n: u64) {
    with(|c| c.records += n);
}

/// Extra detail for the current request's entry (kept small: `EVENT_DETAIL_BYTES_MAX`).
pub fn note_detail(detail: serde_json::Value) {
    with(|c| c.detail = Some(detail));
}

/// The current request's actor, for a command that carries its own audit entry; marks the request
/// as audited in the log. Outside a request (a node's own work): `None`.
pub fn actor_for_command() -> Option<state::AuditActor> {
    with(|c| {
        c.in_log = true;
        state::AuditActor {
            principal: c.principal.clone(),
            organisation: c.organisation.clone(),
            client_ip: c.client_ip.clone(),
            request_id: c.request_id.clone(),
        }
    })
}

/// The current request's context (for submissions, which carry the fields themselves).
pub fn current() -> Option<Context> {
    with(|c| c.clone())
}

/// Marks the current request as audited by its command (submissions).
pub fn mark_in_log() {
    with(|c| c.in_log = true);
}

/// Runs `fut` with an audit context (the gRPC Ingest service, which has no HTTP layer).
pub async fn scope<F: std::future::Future>(ctx: Context, fut: F) -> (F::Output, Context) {
    let cell = Arc::new(Mutex::new(ctx));
    let out = CONTEXT.scope(cell.clone(), fut).await;
    let ctx = cell.lock().unwrap_or_else(|p| p.into_inner()).clone();
    (out, ctx)
}

impl Context {
    pub fn new(channel: &'static str, client_ip: String, request_id: String, bytes_in: u64) -> Self {
        Context { channel, client_ip, request_id, bytes_in, ..Default::default() }
    }

    /// The event for a request answered with `status`, or `None` when its command carried it.
    pub fn event(self, node_id: u64, at_ms: u64, method: &str, path: &str, status: u16) -> Option<state::AuditEvent> {
        if self.in_log && (200..300).contains(&status) {
            return None;
        }
        let anonymous = self.principal.is_empty();
        // Anonymous probes of public endpoints (health, readiness, documentation, keys) change
        // nothing and reveal nothing; load balancers call them every second.
        if anonymous && status < 400 && is_public(path) {
            return None;
        }
        let operation = self.operation.unwrap_or_else(|| format!("http.{}", method.to_ascii_lowercase()));
        Some(state::AuditEvent {
            principal: if anonymous { "anonymous".into() } else { self.principal },
            organisation: self.organisation,
            client_ip: self.client_ip,
            request_id: self.request_id,
            operation,
            target: self.target.unwrap_or_else(|| path.to_string()),
            outcome: if status < 400 { "ok".into() } else { format!("status:{status}") },
            at_ms,
            node_id,
            channel: self.channel.into(),
            count: 1,
            bytes_in: self.bytes_in,
            status: u32::from(status),
            records: self.records,
            new_connection: self.new_connection,
            detail_json: self.detail.map(|d| serde_json::to_vec(&d).unwrap_or_default()).unwrap_or_default(),
            log_index: 0,
            source: String::new(),
        })
    }
}

fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/api/v1/health"
            | "/api/v1/ready"
            | "/api/v1/openapi.json"
            | "/api/v1/auth/jwks"
            | "/api/v1/audit/keys"
            | "/metrics"
    ) || path.starts_with("/api/docs")
        || path == "/soap/v1"
}

/// The audit layer (outermost: refusals by the gateway are audited too).
pub async fn layer(State(state): State<AppState>, req: Request<Body>, next: Next) -> Response {
    if !state.audit.has_room() {
        metrics::counter!("dtm_audit_refused_total").increment(1);
        return ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "audit_backlog",
            "this node cannot record more audit events right now; retry shortly or on another node",
        )
        .with_retry_after(1)
        .into_response();
    }
    // F5: this node's own anonymous probes (health, web pages, the concurrency check) are not
    // recorded, like anonymous reads of public endpoints: they change nothing, come every few
    // seconds, and their results are the `dtm_probe_*` series. The probe's authenticated read is.
    let headers = req.headers();
    let anonymous = !headers.contains_key("authorization") && !headers.contains_key("x-api-key");
    if anonymous && crate::probes::is_own_probe(headers) {
        return next.run(req).await;
    }
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let client =
        peer.map(|p| crate::gateway::ip::client_ip(p, req.headers(), state.gateway.trusted_proxies()).to_string());
    let bytes_in = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let path = req.uri().path().to_string();
    let method = req.method().as_str().to_string();
    let channel = if path.starts_with("/soap/") { "soap" } else { "rest" };
    let mut ctx = Context::new(channel, client.unwrap_or_default(), crate::api::request_id(req.headers()), bytes_in);
    ctx.connection = req.extensions().get::<ConnectionSeen>().cloned();
    let cell = Arc::new(Mutex::new(ctx));
    let resp = CONTEXT.scope(cell.clone(), next.run(req)).await;
    let mut ctx = cell.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // A5.3: the error's stable code is the failure cause the performance reports count.
    if ctx.detail.is_none()
        && let Some(code) = resp.extensions().get::<crate::api::error::ErrorCode>()
    {
        ctx.detail = Some(serde_json::json!({"error": code.0}));
    }
    if let Some(event) = ctx.event(state.node.id, crate::api::now_ms(), &method, &path, resp.status().as_u16()) {
        state.audit.push(event);
    }
    resp
}

#[derive(Default)]
struct Pending {
    events: Vec<state::AuditEvent>,
    /// Coalescing key of a refusal → its index in `events`.
    refusals: HashMap<(String, String, String, String, String), usize>,
}

/// The node's bounded queue of explicit audit events and its flush task.
pub struct Sink {
    pending: Mutex<Pending>,
    wake: tokio::sync::Notify,
    pub node_key: Option<NodeKey>,
}

impl Sink {
    /// Starts the flush task for `node` (held weakly: the task ends with the node).
    pub fn start(node: &Arc<ClusterNode>, node_key: Option<NodeKey>) -> Arc<Sink> {
        let sink = Arc::new(Sink { pending: Mutex::default(), wake: tokio::sync::Notify::new(), node_key });
        tokio::spawn(flush_loop(Arc::downgrade(node), Arc::downgrade(&sink)));
        sink
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn has_room(&self) -> bool {
        self.lock().events.len() < AUDIT_QUEUE_EVENTS_MAX
    }

    /// Queues an event (refusals coalesce). Past the queue's bound an event is still logged and
    /// counted; the layer refuses new requests meanwhile, so this happens only to the requests
    /// already running when the queue filled.
    pub fn push(&self, event: state::AuditEvent) {
        let mut p = self.lock();
        if matches!(event.status, 401 | 403 | 413 | 429 | 503) {
            let key = (
                event.principal.clone(),
                event.operation.clone(),
                event.target.clone(),
                event.outcome.clone(),
                event.client_ip.clone(),
            );
            if let Some(&i) = p.refusals.get(&key)
                && let Some(e) = p.events.get_mut(i)
            {
                e.count += 1;
                return;
            }
            let i = p.events.len();
            p.refusals.insert(key, i);
        }
        if p.events.len() >= AUDIT_QUEUE_EVENTS_MAX + AUDIT_EVENTS_PER_COMMAND_MAX {
            metrics::counter!("dtm_audit_events_dropped_total").increment(1);
            tracing::error!(target: "audit", operation = %event.operation, principal = %event.principal,
                "audit queue overfull; event logged here but not replicated");
            return;
        }
        p.events.push(event);
        metrics::gauge!("dtm_audit_queue_events").set(p.events.len() as f64);
        if p.events.len() >= AUDIT_EVENTS_PER_COMMAND_MAX {
            self.wake.notify_one();
        }
    }

    fn take(&self) -> Vec<state::AuditEvent> {
        let mut p = self.lock();
        p.refusals.clear();
        std::mem::take(&mut p.events)
    }

    /// Puts back events whose proposal failed, ahead of newer ones.
    fn restore(&self, mut events: Vec<state::AuditEvent>) {
        let mut p = self.lock();
        p.refusals.clear();
        events.append(&mut p.events);
        p.events = events;
    }
}

async fn flush_loop(node: Weak<ClusterNode>, sink: Weak<Sink>) {
    loop {
        {
            let Some(s) = sink.upgrade() else { return };
            let _ = tokio::time::timeout(AUDIT_FLUSH_INTERVAL, s.wake.notified()).await;
        }
        let (Some(node), Some(sink)) = (node.upgrade(), sink.upgrade()) else { return };
        let mut events = sink.take();
        while !events.is_empty() {
            let rest = events.split_off(events.len().min(AUDIT_EVENTS_PER_COMMAND_MAX));
            let cmd = system_command(&node, state::command::Kind::Audit(state::AuditEvents { events: events.clone() }));
            match node.write(cmd).await {
                Ok(_) => events = rest,
                Err(e) => {
                    tracing::warn!(target: "audit", error = %e, pending = events.len() + rest.len(),
                        "audit events not yet replicated; retrying");
                    events.extend(rest);
                    sink.restore(events);
                    break;
                }
            }
        }
        metrics::gauge!("dtm_audit_queue_events").set(sink.lock().events.len() as f64);
    }
}

/// A command a node proposes by itself (its entries name `system:node-<id>`).
pub fn system_command(node: &ClusterNode, kind: state::command::Kind) -> state::Command {
    state::Command {
        version: dtm_model::COMMAND_SET_VERSION,
        proposed_at_ms: crate::api::now_ms(),
        origin_node: node.id,
        actor: None,
        kind: Some(kind),
    }
}

/// Registers `key` in the cluster state and, while this node leads, closes and signs checkpoints.
pub fn start_signer(node: &Arc<ClusterNode>, key: NodeKey, checkpoint_interval: Duration) {
    tokio::spawn(signer_loop(Arc::downgrade(node), key, checkpoint_interval));
}

async fn signer_loop(node: Weak<ClusterNode>, key: NodeKey, interval: Duration) {
    let mut registered = false;
    let tick = interval.clamp(Duration::from_millis(200), Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        let Some(node) = node.upgrade() else { return };
        if !node.is_ready() {
            continue;
        }
        if !registered {
            registered = register_key(&node, &key).await;
        }
        if node.status().await.leader_id != Some(node.id) {
            continue;
        }
        if let Err(e) = leader_duties(&node, &key, interval).await {
            tracing::warn!(target: "audit", error = %e, "audit checkpoint work failed; retrying");
        }
    }
}

async fn register_key(node: &ClusterNode, key: &NodeKey) -> bool {
    let pk = key.public_key();
    if node.reader.get(&tables::node_key(node.id, &pk)).ok().flatten().is_some() {
        return true;
    }
    let k = state::NodeKey { node_id: node.id, public_key: pk, ..Default::default() };
    let kind = state::command::Kind::AuditControl(state::AuditCommand {
        kind: Some(state::audit_command::Kind::RegisterNodeKey(state::RegisterNodeKey { key: Some(k) })),
    });
    match node.write(system_command(node, kind)).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(target: "audit", error = %e, "could not register the node signing key yet");
            false
        }
    }
}

/// Checkpoints looked at per signing round.
const SIGN_PAGE: usize = 256;

async fn leader_duties(node: &ClusterNode, key: &NodeKey, interval: Duration) -> anyhow::Result<()> {
    let head = node.reader.get_msg::<state::AuditHead>(tables::AUDIT_HEAD)?.unwrap_or_default();
    let now = crate::api::now_ms();
    let age_ms = now.saturating_sub(head.last_checkpoint_at_ms);
    if head.size > head.last_checkpoint_size && u128::from(age_ms) >= interval.as_millis() {
        let kind = state::command::Kind::AuditControl(state::AuditCommand {
            kind: Some(state::audit_command::Kind::CloseCheckpoint(state::CloseCheckpoint {})),
        });
        node.write(system_command(node, kind)).await?;
    }
    // Sign what is unsigned, newest first within a bounded page (older ones were signed before
    // unless this node just became leader).
    let pk = key.public_key();
    if node.reader.get(&tables::node_key(node.id, &pk))?.is_none() {
        return Ok(());
    }
    let mut signed = Vec::new();
    // Checkpoints after the last signed one (a bounded page per tick).
    let after = (head.signed_through > 0).then(|| tables::audit_checkpoint(head.signed_through));
    {
        let page = node.reader.scan(tables::AUDIT_CHECKPOINT, after.as_deref(), SIGN_PAGE)?;
        for (_, v) in &page {
            let cp = state::AuditCheckpoint::decode(v.as_slice())?;
            if cp.signatures.is_empty() && signed.len() < dtm_cluster::audit::SIGNATURES_PER_COMMAND_MAX {
                let signature = key.sign(&dtm_cluster::audit::checkpoint_message(&cp));
                signed.push(state::SignedCheckpoint {
                    size: cp.size,
                    signature: Some(state::CheckpointSignature {
                        node_id: node.id,
                        public_key: pk.clone(),
                        signature,
                        signed_at_ms: now,
                    }),
                });
            }
        }
    }
    if !signed.is_empty() {
        let kind = state::command::Kind::AuditControl(state::AuditCommand {
            kind: Some(state::audit_command::Kind::SignCheckpoints(state::SignCheckpoints { signed })),
        });
        node.write(system_command(node, kind)).await?;
    }
    Ok(())
}

/// `[audit]` in the configuration file.
#[derive(serde::Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct AuditFile {
    /// Days audit entries are kept; at least 365 (F8, A1.8). Nothing deletes entries today, so
    /// this is a floor the configuration may not lower.
    pub retention_days: Option<u32>,
    pub checkpoint_interval_ms: Option<u64>,
    pub verify_interval_s: Option<u64>,
    /// Automatic audit reports: "monthly" (default) or "off".
    pub report_schedule: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AuditOptions {
    pub retention_days: u32,
    pub checkpoint_interval: Duration,
    pub verify_interval: Duration,
    /// Whether the leader makes the monthly audit reports.
    pub monthly_reports: bool,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            retention_days: crate::limits::AUDIT_RETENTION_DAYS_MIN,
            checkpoint_interval: Duration::from_secs(10),
            verify_interval: Duration::from_secs(3600),
            monthly_reports: true,
        }
    }
}

/// Checks `[audit]` and the flags that override it; a retention under a year is refused.
pub fn resolve(file: AuditFile, checkpoint_ms: Option<u64>, verify_s: Option<u64>) -> anyhow::Result<AuditOptions> {
    let d = AuditOptions::default();
    let retention_days = file.retention_days.unwrap_or(d.retention_days);
    if retention_days < crate::limits::AUDIT_RETENTION_DAYS_MIN {
        anyhow::bail!(
            "[audit] retention_days = {retention_days}: audit logs are kept at least {} days (Circular 12/2025, F8 and A1.8)",
            crate::limits::AUDIT_RETENTION_DAYS_MIN
        );
    }
    let checkpoint_ms =
        checkpoint_ms.or(file.checkpoint_interval_ms).unwrap_or(d.checkpoint_interval.as_millis() as u64);
    if !(100..=3_600_000).contains(&checkpoint_ms) {
        anyhow::bail!("[audit] checkpoint_interval_ms must be between 100 and 3600000 (got {checkpoint_ms})");
    }
    let verify_s = verify_s.or(file.verify_interval_s).unwrap_or(d.verify_interval.as_secs());
    if !(1..=7 * 86_400).contains(&verify_s) {
        anyhow::bail!("[audit] verify_interval_s must be between 1 and 604800 (got {verify_s})");
    }
    let monthly_reports = match file.report_schedule.as_deref() {
        None | Some("monthly") => true,
        Some("off") => false,
        Some(other) => anyhow::bail!("[audit] report_schedule must be \"monthly\" or \"off\" (got {other:?})"),
    };
    Ok(AuditOptions {
        retention_days,
        checkpoint_interval: Duration::from_millis(checkpoint_ms),
        verify_interval: Duration::from_secs(verify_s),
        monthly_reports,
    })
}
