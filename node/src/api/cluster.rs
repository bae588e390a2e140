//! Health, readiness, cluster status and membership changes.

use axum::Json;
use axum::body::Body;
use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use dtm_model::NodeInfo;
use serde_json::Value;
use serde_json::json;

use super::AppState;
use super::auth;
use super::error::ApiError;
use super::error::ApiResult;
use crate::limits::ADMIN_BODY_BYTES_MAX;

pub async fn health(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"status": "ok", "node_id": state.node.id}))
}

pub async fn ready(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    if state.node.is_ready() {
        Ok(Json(json!({"status": "ready", "node_id": state.node.id})))
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "this node is not yet a member with a known leader",
        ))
    }
}

pub async fn status(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &auth::SIGNED_IN).await?;
    let s = state.node.status().await;
    Ok(Json(serde_json::to_value(s).map_err(ApiError::internal)?))
}

pub async fn add_node(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    auth::require(&state, &headers, &auth::OPERATE).await?;
    let bytes = super::read_body(&headers, body, ADMIN_BODY_BYTES_MAX).await?;
    let v = super::parse_json(&headers, &bytes)?;
    let id = v
        .get("id")
        .and_then(Value::as_u64)
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::bad_request("`id` must be a positive integer"))?;
    let field = |name: &str| -> ApiResult<String> {
        v.get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| ApiError::bad_request(format!("`{name}` must be a non-empty string")))
    };
    let node = NodeInfo {
        http_addr: field("http_addr")?,
        grpc_addr: field("grpc_addr")?,
        site: v.get("site").and_then(Value::as_str).unwrap_or("default").to_string(),
    };
    for addr in [&node.http_addr, &node.grpc_addr] {
        if addr.parse::<std::net::SocketAddr>().is_err() && !addr.contains(':') {
            return Err(ApiError::bad_request(format!("`{addr}` is not host:port")));
        }
    }
    let voter = v.get("voter").and_then(Value::as_bool).unwrap_or(false);
    let mut index = state.node.add_learner(id, node).await?;
    if voter {
        index = state.node.promote(id).await?;
    }
    Ok((StatusCode::CREATED, Json(json!({"id": id, "voter": voter, "commit_index": index}))))
}

pub async fn remove_node(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &auth::OPERATE).await?;
    let known = state.node.raft.metrics().borrow().membership_config.membership().get_node(&id).is_some();
    if !known {
        return Err(ApiError::not_found(format!("node {id} is not a member")));
    }
    let index = state.node.remove(id).await?;
    Ok(Json(json!({"id": id, "removed": true, "commit_index": index})))
}
