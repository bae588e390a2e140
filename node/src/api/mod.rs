//! The HTTPS API (`/api/v1`), served by every node. `router` builds it with its layers; handlers
//! live in `records.rs` (ingest and read back), `catalog.rs` (sources, keys, datasets) and
//! `cluster.rs` (health, readiness, membership).

pub mod auth;
mod catalog;
mod cluster;
pub mod error;
mod records;

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
use dtm_cluster::ClusterNode;
use tower::ServiceBuilder;
use tower_http::request_id::MakeRequestUuid;
use tower_http::request_id::PropagateRequestIdLayer;
use tower_http::request_id::SetRequestIdLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::limits::OVERSIZED_BODY_DISCARD_BYTES_MAX;
use crate::limits::OVERSIZED_BODY_DISCARD_TIMEOUT;
use crate::limits::REQUEST_TIMEOUT;

use error::ApiError;
use error::ApiResult;

#[derive(Clone)]
pub struct AppState {
    pub node: Arc<ClusterNode>,
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/health", get(cluster::health))
        .route("/ready", get(cluster::ready))
        .route("/cluster", get(cluster::status))
        .route("/cluster/nodes", post(cluster::add_node))
        .route("/cluster/nodes/{id}", delete(cluster::remove_node))
        .route("/sources", post(catalog::create_source))
        .route("/sources/{id}/keys", post(catalog::issue_key))
        .route("/sources/{id}/keys/{key_id}", delete(catalog::revoke_key))
        .route("/datasets", post(catalog::create_dataset))
        .route("/datasets/{id}", get(catalog::get_dataset))
        .route("/datasets/{id}/schema", get(catalog::get_schema))
        .route("/datasets/{id}/records", post(records::post_records).get(records::get_records));
    Router::new()
        .nest("/api/v1", api)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<Body>| {
                    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
                }))
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::SERVICE_UNAVAILABLE, REQUEST_TIMEOUT)),
        )
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

async fn discard(mut body: Body, declared: u64) {
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

/// Requires a JSON content type (415 otherwise) and parses the body (400 with the parser's
/// position otherwise).
pub fn parse_json(headers: &HeaderMap, bytes: &[u8]) -> ApiResult<serde_json::Value> {
    let ct = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "this endpoint takes Content-Type: application/json",
        ));
    }
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
pub async fn lookup_fresh<M: prost::Message + Default>(state: &AppState, key: &[u8]) -> ApiResult<Option<M>> {
    if let Some(v) = state.node.reader.get_msg::<M>(key).map_err(ApiError::internal)? {
        return Ok(Some(v));
    }
    state.node.linearizable_barrier().await?;
    state.node.reader.get_msg::<M>(key).map_err(ApiError::internal)
}

/// Wraps a command with its envelope: version, proposal time and the proposing node.
pub fn command(state: &AppState, kind: dtm_model::state::command::Kind) -> dtm_model::state::Command {
    dtm_model::state::Command {
        version: dtm_model::COMMAND_SET_VERSION,
        proposed_at_ms: now_ms(),
        origin_node: state.node.id,
        kind: Some(kind),
    }
}
