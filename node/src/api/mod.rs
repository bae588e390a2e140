//! The HTTPS API (`/api/v1`), served by every node. `router` builds it with its layers; handlers
//! live in `records.rs` (ingest and read back), `catalog.rs` (sources, keys, datasets) and
//! `cluster.rs` (health, readiness, membership).

mod aggregates;
pub(crate) mod audit;
mod audit_chain;
pub mod auth;
pub mod batches;
mod catalog;
mod cluster;
pub mod error;
mod events;
pub(crate) mod export;
pub mod identity;
pub mod keys;
mod lineage;
mod oauth;
mod openapi;
mod receipts;
pub mod records;
pub mod reporting;
mod sessions;
mod users;
mod versions;
mod xsd;

/// The handlers the web pages (`crate::web`) call in-process, so a page shows what the JSON API
/// answers, with the same checks (web-ui).
pub(crate) mod for_web {
    pub(crate) use super::aggregates::get_pipeline;
    pub(crate) use super::audit::{connections, head as audit_head, list as audit_list};
    pub(crate) use super::catalog::{create_source, get_dataset, issue_key, remove_source, revoke_key};
    pub(crate) use super::cluster::{add_node, remove_node, status as cluster_status};
    pub(crate) use super::sessions::{authenticate_session, csrf_token, login, logout, session_cookie};
    pub(crate) use super::sessions::{totp_confirm, totp_enroll, totp_for};
    pub(crate) use super::users::{create as create_user, disable as disable_user, list as list_users};
}

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use axum::Router;
use axum::body::Body;
use axum::http::HeaderMap;
use axum::http::Request;
use axum::http::header::CONTENT_LENGTH;
use axum::routing::delete;
use axum::routing::get;
use axum::routing::post;
use dtm_actors::Pipeline;
use dtm_actors::PipelineError;
use dtm_cluster::ClusterNode;
use dtm_cluster::tables;
use dtm_model::state;
use serde_json::json;

use crate::pipeline::Catalog;
use crate::pipeline::IngestStages;
use crate::pipeline::Job;
use crate::pipeline::Rejection;
use crate::pipeline::TableRefs;
use tower::ServiceBuilder;
use tower_http::request_id::MakeRequestUuid;
use tower_http::request_id::PropagateRequestIdLayer;
use tower_http::request_id::SetRequestIdLayer;
use tower_http::trace::TraceLayer;

use crate::limits::OVERSIZED_BODY_DISCARD_BYTES_MAX;
use crate::limits::OVERSIZED_BODY_DISCARD_TIMEOUT;

use error::ApiError;
use error::ApiResult;

#[derive(Clone)]
pub struct AppState {
    pub node: Arc<ClusterNode>,
    /// The per-source supervised actors that parse, validate, mask and prepare records.
    pub pipeline: Pipeline<IngestStages>,
    /// Compiled dataset definitions, one per version.
    pub catalog: Arc<Catalog>,
    /// Reference tables as this node has applied them (enrichment and membership rules).
    pub refs: Arc<TableRefs>,
    /// The cluster's masking key, read (or proposed) once.
    pub masking_key: Arc<tokio::sync::OnceCell<Arc<Vec<u8>>>>,
    /// Rate limits, IP rules, blocks and input limits (`crate::gateway`).
    pub gateway: Arc<crate::gateway::Gateway>,
    /// Users, sessions, tokens and security events (`identity.rs`).
    pub identity: Arc<identity::Identity>,
    /// The node's queue of audit events and its signing key (`crate::audit`).
    pub audit: Arc<crate::audit::Sink>,
    pub audit_options: crate::audit::AuditOptions,
    /// Keys, sources and dataset definitions as last read (`WatchedCache`).
    pub watched: Arc<WatchedCache>,
}

/// Values of the tables the applier watches (API keys, admin tokens, sources, dataset definitions:
/// `Applier::watched_prefixes`) as this node last read them, each kept only while the tables'
/// watched epoch has not moved since it was read — which it does after every applied change to
/// any of those tables and around every snapshot install. Every request reads its key, its source
/// and its dataset's definition, and each read opened (AES-GCM), decompressed and decoded the value
/// again: about 2.5 % of the machine at 500 clients.
#[derive(Default)]
pub struct WatchedCache {
    entries: std::sync::Mutex<WatchedEntries>,
}

/// Each table key's decoded value, with the watched epoch it was read at.
type WatchedEntries = HashMap<Vec<u8>, (u64, Arc<dyn std::any::Any + Send + Sync>)>;

impl WatchedCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, WatchedEntries> {
        // A cache: whatever a panicking holder left is either valid for its epoch or re-read.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value under `key` as this node has applied it: from the cache while the watched epoch
    /// has not moved since it was read, from the tables otherwise (and always for keys outside the
    /// watched tables). Misses are not kept.
    pub fn get<M: prost::Message + Default + Clone + Send + Sync + 'static>(
        &self,
        reader: &dtm_storage::StateReader,
        key: &[u8],
    ) -> Result<Option<M>, dtm_storage::StoreError> {
        if !reader.watches(key) {
            return reader.get_msg::<M>(key);
        }
        // Taken before the read: a change that lands after it moves the epoch past this one.
        let epoch = reader.watched_epoch();
        if let Some((seen, v)) = self.lock().get(key)
            && *seen == epoch
            && let Some(m) = v.downcast_ref::<M>()
        {
            return Ok(Some(m.clone()));
        }
        let value = reader.get_msg::<M>(key)?;
        if let Some(v) = &value {
            let mut entries = self.lock();
            if entries.len() >= crate::limits::WATCHED_CACHE_ENTRIES_MAX {
                entries.clear();
            }
            entries.insert(key.to_vec(), (epoch, Arc::new(v.clone())));
        }
        Ok(value)
    }
}

impl AppState {
    pub fn new(node: Arc<ClusterNode>, pipeline: Pipeline<IngestStages>) -> Self {
        let refs = Arc::new(TableRefs { reader: node.reader.clone() });
        let node_for_audit = node.clone();
        let events = events::SecurityEvents::start(&node);
        let identity = Arc::new(identity::Identity::new(identity::IdentityOptions::default(), events));
        AppState {
            node,
            pipeline,
            catalog: Arc::default(),
            refs,
            masking_key: Arc::default(),
            gateway: Arc::new(crate::gateway::Gateway::unconfigured()),
            identity,
            audit: crate::audit::Sink::start(&node_for_audit, None),
            audit_options: crate::audit::AuditOptions::default(),
            watched: Arc::default(),
        }
    }

    /// Replaces the identity options (lockout, session lifetimes, OIDC issuers) from configuration.
    pub fn with_identity(mut self, opts: identity::IdentityOptions) -> Self {
        let events = self.identity.events.clone();
        self.identity = Arc::new(identity::Identity::new(opts, events));
        self
    }
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/health", get(cluster::health))
        .route("/ready", get(cluster::ready))
        .route("/cluster", get(cluster::status))
        .route("/cluster/nodes", post(cluster::add_node))
        .route("/cluster/nodes/{id}", delete(cluster::remove_node))
        .route("/sources", post(catalog::create_source))
        .route("/sources/{id}", delete(catalog::remove_source))
        .route("/sources/{id}/keys", post(catalog::issue_key))
        .route("/sources/{id}/keys/{key_id}", delete(catalog::revoke_key))
        .route("/datasets", post(catalog::create_dataset))
        .route("/datasets/{id}", get(catalog::get_dataset))
        .route("/datasets/{id}/versions", post(catalog::create_version))
        .route("/datasets/{id}/schema", get(catalog::get_schema))
        .route("/datasets/{id}/schema.xsd", get(xsd::get_xsd))
        .route("/datasets/{id}/conflicts", get(catalog::get_conflicts))
        .route("/datasets/{id}/aggregates", get(export::get_aggregates))
        .route("/datasets/{id}/aggregates/digest", get(aggregates::get_digest))
        .route("/pipeline", get(aggregates::get_pipeline))
        .route("/keys", get(keys::get_keys))
        .route("/keys/rotate", post(keys::rotate))
        .route("/backup", get(crate::backup::get_backup))
        .route("/drills", post(crate::drill::post_drill))
        // A5.3, F4, C8-C9: performance and connection reports; S2: the compliance check.
        .route("/reports", get(crate::reports::api::list))
        .route(
            "/reports/performance",
            get(crate::reports::api::performance_now).post(crate::reports::api::create_performance),
        )
        .route(
            "/reports/connections",
            get(crate::reports::api::connections_now).post(crate::reports::api::create_connections),
        )
        .route("/reports/{id}", get(crate::reports::api::get))
        .route("/compliance", get(crate::compliance::get_compliance))
        .route("/compliance/facts", get(crate::compliance::get_facts))
        .route("/keys/reencrypt", post(keys::reencrypt_now))
        .route("/datasets/{id}/records", post(records::post_records).get(export::get_records))
        .route("/openapi.json", get(openapi::get_openapi))
        .route("/datasets/{id}/batches", post(batches::post_batch))
        .route("/batches/{batch_id}", get(batches::get_batch))
        .route("/lineage/records/{id}", get(lineage::get_record_lineage))
        .route("/lineage/openlineage", get(lineage::get_openlineage))
        // F5: live statistics and probe results (`crate::live`, `crate::probes`).
        .route("/monitoring/live", get(crate::live::get_live))
        .route("/monitoring/nodes", get(crate::live::get_nodes))
        .route("/monitoring/probes", get(crate::probes::get_probes))
        .route("/datasets/{id}/aggregates/lineage", get(lineage::get_cell_lineage))
        .route("/datasets/{id}/records/{record_id}/corrections", post(versions::post_correction))
        .route("/audit/chain", get(audit_chain::chain))
        .route("/audit/checkpoints", get(audit_chain::checkpoints))
        .route("/audit/status", get(audit_chain::status))
        .route("/audit/keys", get(receipts::get_keys))
        .nest("/gateway", crate::gateway::api::routes())
        .nest("/alerts", crate::alerts::api::routes()) // A5.2
        .route("/auth/login", post(sessions::login))
        .route("/auth/logout", post(sessions::logout))
        .route("/auth/me", get(sessions::me))
        .route("/auth/totp/enroll", post(sessions::totp_enroll))
        .route("/auth/totp/confirm", post(sessions::totp_confirm))
        .route("/auth/jwks", get(oauth::jwks))
        .route("/users", post(users::create).get(users::list))
        .route("/users/{name}", delete(users::disable))
        .route("/users/{name}/password", post(users::set_password))
        .route("/oauth/clients", post(oauth::create_client))
        .route("/oauth/clients/{id}", delete(oauth::revoke_client))
        .route("/security/events", get(events::list))
        .route("/audit", get(audit::list))
        .route("/audit/head", get(audit::head))
        .route("/audit/export", get(audit::export_trail))
        .route("/audit/reports", post(audit::create_report).get(audit::list_reports))
        .route("/audit/reports/{id}", get(audit::get_report))
        .route("/sources/{id}/connections", get(audit::connections))
        // Reporting regime (issue 9, C2(b)): `reporting/api.rs`.
        .route("/datasets/{id}/obligation", get(reporting::api::get_obligation).put(reporting::api::put_obligation))
        .route("/reporting/due", get(reporting::api::get_due))
        .route("/reporting/status", get(reporting::api::get_status))
        .route("/reporting/forms/{dataset}/{period}", get(reporting::api::get_form))
        .route("/reporting/drafts/{dataset}/{period}", get(reporting::api::get_draft).put(reporting::api::put_draft))
        .route(
            "/reporting/submissions/{dataset}/{period}",
            get(reporting::api::get_submission).post(reporting::api::post_submission),
        );
    Router::new()
        .nest("/api/v1", api)
        .route("/metrics", get(crate::metrics::get_metrics)) // F5: Prometheus text format
        .route("/oauth2/token", post(oauth::token))
        .merge(crate::soap::routes())
        .merge(crate::web::router())
        .route("/api/docs", get(openapi::swagger_ui_root))
        .route("/api/docs/", get(openapi::swagger_ui_root))
        .route("/api/docs/{*file}", get(openapi::swagger_ui))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state.clone())
        .layer(axum::middleware::from_fn(json_rejections))
        .layer(axum::middleware::from_fn(sessions::csrf_guard))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<Body>| {
                    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
                }))
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(axum::middleware::from_fn_with_state(state.clone(), crate::gateway::protect))
                // `REQUEST_TIMEOUT`, or `BATCH_REQUEST_TIMEOUT` for batch uploads.
                .layer(axum::middleware::from_fn(batches::deadline)),
        )
        // Outermost but for the request id: every request is audited, refusals included.
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::audit::layer))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        // Outermost, so refusals by the gateway and the audit layer are counted and timed too; one
        // clock for the metrics (F5), the performance samples (A5.3) and the alert rules (A5.2),
        // and the fault-injection response delay.
        .layer(axum::middleware::from_fn(crate::metrics::http_layer))
}

/// axum's extractors refuse a malformed query string, path or body with a plain-text answer; the
/// API promises JSON errors (and the OpenAPI document says so), so such answers are rewritten here,
/// in one place, keeping their status and text.
async fn json_rejections(req: Request<Body>, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    let resp = next.run(req).await;
    let plain = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !plain || !resp.status().is_client_error() {
        return resp;
    }
    let status = resp.status();
    let text = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap_or_default();
    let code = match status.as_u16() {
        404 => "not_found",
        405 => "method_not_allowed",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        422 => "unprocessable",
        _ => "bad_request",
    };
    ApiError::new(status, code, String::from_utf8_lossy(&text).trim().to_string()).into_response()
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub fn request_id(headers: &HeaderMap) -> String {
    headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

/// Reads a request body of at most `limit` bytes; more is 413. The rest of an oversized body is
/// read and thrown away (at most `OVERSIZED_BODY_DISCARD_BYTES_MAX`, within
/// `OVERSIZED_BODY_DISCARD_TIMEOUT`) so that a client still uploading sees the 413 instead of a
/// broken pipe; nothing of it is kept in memory.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> ApiResult<bytes::Bytes> {
    use http_body_util::BodyExt;
    let too_large = || {
        ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit} bytes"),
        )
    };
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let mut body = body;
    if declared.is_some_and(|len| len > limit as u64) {
        discard(body, declared.unwrap_or(0)).await;
        return Err(too_large());
    }
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ApiError::bad_request("the request body could not be read"))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                discard(body, 0).await;
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

pub(crate) async fn discard(mut body: Body, declared: u64) {
    use http_body_util::BodyExt;
    if declared > OVERSIZED_BODY_DISCARD_BYTES_MAX as u64 {
        return;
    }
    let drain = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > OVERSIZED_BODY_DISCARD_BYTES_MAX {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(OVERSIZED_BODY_DISCARD_TIMEOUT, drain).await;
}

/// Requires a JSON content type (415 otherwise).
pub fn require_json(headers: &HeaderMap) -> ApiResult<()> {
    let ct = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "this endpoint takes Content-Type: application/json",
        ));
    }
    Ok(())
}

/// Requires a JSON content type (415 otherwise) and parses the body (400 with the parser's
/// position otherwise).
pub fn parse_json(headers: &HeaderMap, bytes: &[u8]) -> ApiResult<serde_json::Value> {
    require_json(headers)?;
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(axum::http::StatusCode::BAD_REQUEST, "malformed_json", format!("malformed JSON: {e}"))
    })
}

/// Ids of sources and datasets: 1–64 characters, letters, digits, `_`, `.`, `-`, starting with a
/// letter or digit. They become parts of storage keys, so the rule is enforced here.
pub fn valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Reads a replicated value; when this node does not have it, waits until it has applied everything
/// the leader had committed and looks once more. Something created through another node a moment
/// ago (a key, a dataset) is thus found here too, and a miss costs one read barrier.
pub async fn lookup_fresh<M: prost::Message + Default + Clone + Send + Sync + 'static>(
    state: &AppState,
    key: &[u8],
) -> ApiResult<Option<M>> {
    if let Some(v) = state.watched.get::<M>(&state.node.reader, key).map_err(ApiError::internal)? {
        return Ok(Some(v));
    }
    state.node.linearizable_barrier().await?;
    state.watched.get::<M>(&state.node.reader, key).map_err(ApiError::internal)
}

/// Wraps a command with its envelope: version, proposal time and the proposing node.
pub fn command(state: &AppState, kind: dtm_model::state::command::Kind) -> dtm_model::state::Command {
    dtm_model::state::Command {
        // Who asked: the audit entry `apply` makes from this command names them.
        actor: crate::audit::actor_for_command(),
        version: dtm_model::COMMAND_SET_VERSION,
        proposed_at_ms: now_ms(),
        origin_node: state.node.id,
        kind: Some(kind),
    }
}

/// The cluster's masking key (HMAC key of `hash` masking and of the natural-key index). Read from
/// the replicated tables; a cluster that has none yet gets one proposed by this node (the first
/// proposal in the log wins, so every node ends with the same key).
pub async fn masking_key(state: &AppState) -> ApiResult<Arc<Vec<u8>>> {
    let key = state
        .masking_key
        .get_or_try_init(|| async {
            let read = |state: &AppState| {
                state.node.reader.get_msg::<state::ClusterSecrets>(tables::CLUSTER_SECRETS).map_err(ApiError::internal)
            };
            if let Some(s) = lookup_fresh::<state::ClusterSecrets>(state, tables::CLUSTER_SECRETS).await? {
                return Ok(Arc::new(s.masking_key));
            }
            let mut key = vec![0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
            let secrets = state::ClusterSecrets { masking_key: key };
            let cmd = command(
                state,
                state::command::Kind::SetClusterSecrets(state::SetClusterSecrets { secrets: Some(secrets) }),
            );
            state.node.write(cmd).await?;
            match read(state)? {
                Some(s) => Ok(Arc::new(s.masking_key)),
                None => Err(ApiError::internal("cluster secrets missing after they were committed")),
            }
        })
        .await?;
    Ok(key.clone())
}

/// Runs a job through the source's actors: admission (429 when the source's queue is full), then
/// ingest → validate → aggregate. The permit is returned so the caller holds it until the commit.
pub async fn run_pipeline(
    state: &AppState,
    source_id: &str,
    job: Job,
) -> ApiResult<(dtm_actors::Permit, Vec<state::RecordIn>)> {
    let permit = admit(state, source_id).await?;
    let (permit, out) = state.pipeline.run(permit, job).await;
    Ok((permit, out.map_err(pipeline_error)?))
}

/// A permit for one job of the source. A source registered through another node a moment ago has
/// its actors started here on first use; a source whose actors are (re)starting — just created by
/// the sync loop, or restarted after a fault — is waited for briefly (`PIPELINE_START_WAIT`), since
/// that takes milliseconds; only past that is the caller told 503.
async fn admit(state: &AppState, source_id: &str) -> ApiResult<dtm_actors::Permit> {
    let deadline = tokio::time::Instant::now() + crate::limits::PIPELINE_START_WAIT;
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        match state.pipeline.admit(source_id) {
            Ok(p) => return Ok(p),
            Err(PipelineError::Unavailable { .. }) if !state.pipeline.has_source(source_id) => {
                state.pipeline.add_source(source_id).await.map_err(ApiError::internal)?;
            }
            Err(PipelineError::Unavailable { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            Err(e) => return Err(pipeline_error(e)),
        }
    }
}

fn retry_after(e: ApiError, after: std::time::Duration) -> ApiError {
    e.with_retry_after(after.as_secs_f64().ceil().max(1.0) as u64)
}

/// The one place where pipeline outcomes become HTTP statuses.
pub fn pipeline_error(e: PipelineError<Rejection>) -> ApiError {
    use axum::http::StatusCode;
    match e {
        PipelineError::Busy { retry_after: after } => retry_after(
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "source_busy",
                "this source has too many requests in progress on this node; retry after the indicated time",
            ),
            after,
        ),
        PipelineError::Rejected(Rejection::MalformedJson(m)) => {
            ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", m)
        }
        PipelineError::Rejected(Rejection::BadRequest(m)) => ApiError::bad_request(m),
        PipelineError::Rejected(Rejection::TooManyRecords) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_records",
            format!(
                "at most {} records per request; use a batch upload for more",
                crate::limits::RECORDS_PER_REQUEST_MAX
            ),
        ),
        PipelineError::Rejected(Rejection::Invalid(problems)) => ApiError::unprocessable(
            "some records are invalid; nothing was stored",
            problems.into_iter().map(|p| json!({"record": p.record, "field": p.field, "message": p.message})).collect(),
        ),
        PipelineError::Crashed { stage } => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "pipeline_failed",
            format!("the {stage} stage failed on this request and is being restarted; nothing was stored; retry"),
        ),
        PipelineError::Unavailable { retry_after: after } => retry_after(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "pipeline_unavailable",
                "this source's pipeline is restarting on this node; retry",
            ),
            after,
        ),
        PipelineError::Timeout => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "pipeline_timeout",
            "the request took too long to validate; nothing was stored; retry",
        ),
        PipelineError::Stopped => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this node is shutting down; retry on another node",
        ),
    }
}

/// The ids of the registered sources that have not been removed, as this node has applied them.
pub fn active_sources(state: &AppState) -> Result<Vec<String>, dtm_storage::StoreError> {
    active_source_ids(&state.node.reader)
}

pub fn active_source_ids(reader: &dtm_storage::StateReader) -> Result<Vec<String>, dtm_storage::StoreError> {
    let mut ids = Vec::new();
    reader.for_each_prefixed(tables::SOURCE, |_, v| {
        let s = <state::Source as prost::Message>::decode(v)?;
        if s.removed_at_ms == 0 {
            ids.push(s.id);
        }
        Ok(())
    })?;
    Ok(ids)
}
