//! `GET /api/v1/audit/keys`: the cluster's node signing keys, with which receipts (`crate::receipt`)
//! and audit checkpoints are verified offline. Public keys only, so any caller may read them,
//! signed in or not: a source verifying a receipt needs no account.

use axum::Json;
use axum::extract::Query;
use axum::extract::State;
use dtm_cluster::tables;
use dtm_model::state;
use serde::Deserialize;
use serde_json::Value;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::error::ApiResult;

/// Node keys listed. Keys are kept forever; a node gets a new one only when its data directory is
/// wiped, so a cluster has a few dozen at most.
pub const NODE_KEYS_LISTED_MAX: usize = 10_000;

#[derive(Deserialize)]
pub struct KeysQuery {
    consistency: Option<String>,
}

/// The keys as this node has applied them; `?consistency=linearizable` first catches up with the
/// leader (a key registered a moment ago through another node is then listed).
pub async fn get_keys(State(state): State<AppState>, Query(q): Query<KeysQuery>) -> ApiResult<Json<Value>> {
    super::aggregates::consistency(&state, q.consistency.as_deref()).await?;
    let as_of_index = state.node.applied_index();
    let rows = state.node.reader.scan(tables::NODE_KEY, None, NODE_KEYS_LISTED_MAX).map_err(ApiError::internal)?;
    let mut keys = Vec::with_capacity(rows.len());
    for (_, v) in rows {
        let k: state::NodeKey = prost::Message::decode(v.as_slice()).map_err(ApiError::internal)?;
        keys.push(json!({
            "node_id": k.node_id,
            "public_key": hex::encode(&k.public_key),
            "registered_at": crate::receipt::rfc3339_ms(k.registered_at_ms),
            "registered_at_ms": k.registered_at_ms,
            "log_index": k.log_index,
        }));
    }
    Ok(Json(json!({"as_of_index": as_of_index, "keys": keys})))
}
