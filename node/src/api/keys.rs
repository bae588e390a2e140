//! Data-encryption keys (A4.2): `POST /keys/rotate` raises the replicated rotation epoch, and every
//! node then seals new writes with a new key of its own (old data stays readable); `GET /keys`
//! shows this node's keyring (ids only, never key material).

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use dtm_cluster::tables;
use dtm_model::state;
use dtm_model::state::command_response::Result as Reply;
use serde_json::Value;
use serde_json::json;

use super::AppState;
use super::auth;
use super::error::ApiError;
use super::error::ApiResult;

/// Rotates this node's data key if the replicated epoch is ahead of its keyring. Returns the
/// keyring's epoch afterwards. Called after a rotation commits and by the node's sync loop.
pub fn catch_up(reader: &dtm_storage::StateReader) -> Result<u64, dtm_storage::StoreError> {
    let epoch = dtm_cluster::key_epoch(reader.get(tables::KEY_EPOCH)?.as_deref());
    let ring = reader.keyring();
    if epoch > ring.epoch {
        let id = reader.rotate_key(epoch)?;
        tracing::info!(epoch, key_id = id, "data-encryption key rotated; new writes use the new key");
    }
    Ok(epoch.max(ring.epoch))
}

fn status(state: &AppState) -> ApiResult<Value> {
    let ring = state.node.reader.keyring();
    let cluster_epoch =
        dtm_cluster::key_epoch(state.node.reader.get(tables::KEY_EPOCH).map_err(ApiError::internal)?.as_deref());
    Ok(json!({
        "node_id": state.node.id,
        "current_key_id": ring.current_key_id,
        "key_ids": ring.key_ids,
        "epoch": ring.epoch,
        "cluster_epoch": cluster_epoch,
    }))
}

pub async fn get_keys(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    auth::require_admin(&state, &headers).await?;
    Ok(Json(status(&state)?))
}

pub async fn rotate(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let who = auth::require_admin(&state, &headers).await?;
    tracing::info!(principal = %who.name(), operation = "rotate_data_keys", "key change");
    let cmd = super::command(&state, state::command::Kind::RotateDataKeys(state::RotateDataKeys {}));
    let (resp, index) = state.node.write(cmd).await?;
    if !matches!(resp.result, Some(Reply::Applied(_))) {
        return Err(ApiError::internal("unexpected answer to a key rotation"));
    }
    // This node rotates at once; the others within a second (their sync loop).
    catch_up(&state.node.reader).map_err(ApiError::internal)?;
    let mut body = status(&state)?;
    body["commit_index"] = json!(index);
    Ok(Json(body))
}
