//! Data-encryption keys (A4.2): `POST /keys/rotate` raises the replicated rotation epoch, and every
//! node then seals new writes with a new key of its own (old data stays readable) and re-encrypts,
//! in the background, what older keys sealed, retiring them once nothing needs them; `GET /keys`
//! shows this node's keyring (ids only, never key material) and its last re-encryption.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use dtm_cluster::ClusterNode;
use dtm_cluster::tables;
use dtm_model::state;
use dtm_model::state::command_response::Result as Reply;
use serde_json::Value;
use serde_json::json;

use super::AppState;
use super::auth;
use super::error::ApiError;
use super::error::ApiResult;

/// The last re-encryption on this node (or the one running), for `GET /keys`.
static REENCRYPTION: std::sync::Mutex<Option<Value>> = std::sync::Mutex::new(None);

fn set_reencryption(v: Value) {
    *REENCRYPTION.lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
}

/// Rotates this node's data key if the replicated epoch is ahead of its keyring, then re-encrypts
/// in the background what older keys sealed and retires them. Returns the keyring's epoch
/// afterwards. Called after a rotation commits and by the node's sync loop.
pub fn catch_up(node: &Arc<ClusterNode>) -> Result<u64, dtm_storage::StoreError> {
    let reader = &node.reader;
    let epoch = dtm_cluster::key_epoch(reader.get(tables::KEY_EPOCH)?.as_deref());
    let ring = reader.keyring();
    if epoch > ring.epoch {
        let id = reader.rotate_key(epoch)?;
        tracing::info!(epoch, key_id = id, "data-encryption key rotated; new writes use the new key");
        let node = node.clone();
        set_reencryption(json!({"state": "running", "key_id": id}));
        tokio::spawn(async move {
            set_reencryption(reencrypt(&node).await);
        });
    }
    Ok(epoch.max(ring.epoch))
}

/// One re-encryption pass on this node, as JSON for `GET /keys`.
async fn reencrypt(node: &ClusterNode) -> Value {
    match node.reencrypt().await {
        Ok(r) => {
            tracing::info!(resealed = r.resealed, left = r.left, retired = ?r.retired, "re-encryption pass done");
            json!({"state": "done", "resealed": r.resealed, "left": r.left, "retired_key_ids": r.retired})
        }
        Err(e) => {
            tracing::error!(error = %e, "re-encryption failed; old keys stay in the keyring");
            json!({"state": "failed"})
        }
    }
}

/// `POST /keys/reencrypt` (admin): runs a re-encryption pass on this node now and answers with it
/// (a pass that finds values written during a rotation race leaves the old key until the next).
pub async fn reencrypt_now(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    auth::require_admin(&state, &headers).await?;
    let report = reencrypt(&state.node).await;
    set_reencryption(report.clone());
    let mut body = status(&state)?;
    body["reencryption"] = report;
    Ok(Json(body))
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
        "reencryption": REENCRYPTION.lock().unwrap_or_else(|p| p.into_inner()).clone(),
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
    catch_up(&state.node).map_err(ApiError::internal)?;
    let mut body = status(&state)?;
    body["commit_index"] = json!(index);
    Ok(Json(body))
}
