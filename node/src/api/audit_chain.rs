//! The raw audit trail for independent verification (F8, A1.8): `GET /audit/chain` serves the
//! stored entries exactly as hashed, `GET /audit/checkpoints` the checkpoints with their signatures
//! and the registered node keys, so that `dtm audit verify` recomputes everything on the client
//! with `dtm_cluster::audit::Verifier` instead of trusting the node's verdict. `GET /audit/status`
//! is this node's own periodic verification (`crate::audit_watch`).

use axum::Json;
use axum::extract::Query;
use axum::extract::State;
use axum::http::HeaderMap;
use base64::Engine;
use dtm_cluster::tables;
use dtm_model::state;
use prost::Message;
use serde::Deserialize;
use serde_json::Value;
use serde_json::json;

use super::AppState;
use super::auth;
use super::error::ApiError;
use super::error::ApiResult;

/// Entries per page of `/audit/chain` (an entry is at most a few KB).
pub const CHAIN_PAGE_MAX: u64 = 1_000;
/// Checkpoints per page of `/audit/checkpoints`.
pub const CHECKPOINTS_PAGE_MAX: usize = 1_000;
/// Registered node keys listed with the checkpoints (two per node that ever signed, at most).
const KEYS_LISTED_MAX: usize = 1_024;

/// Who may read the raw trail and the verification status.
pub const AUDIT_VERIFY: auth::Access = auth::Access {
    roles: &[auth::Role::Admin, auth::Role::Auditor],
    scopes: &["audit:read"],
    what: "the auditor or admin role",
};

#[derive(Deserialize)]
pub struct PageQuery {
    /// Entries (or checkpoints) after this sequence number (or size); 0 for the first page.
    after: Option<u64>,
    limit: Option<u64>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `GET /api/v1/audit/chain?after=&limit=`: entries `after+1 ..` up to the head read first, each
/// with the stored `AuditEntry` bytes in base64, or `error` when the stored value does not open on
/// this node. A missing entry is simply absent (the verifier sees the gap).
pub async fn chain(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &AUDIT_VERIFY).await?;
    crate::audit::note_operation("audit.chain.read", "audit");
    let reader = &state.node.reader;
    let head = reader.get_msg::<state::AuditHead>(tables::AUDIT_HEAD).map_err(ApiError::internal)?.unwrap_or_default();
    let after = q.after.unwrap_or(0);
    let limit = q.limit.unwrap_or(CHAIN_PAGE_MAX).clamp(1, CHAIN_PAGE_MAX);
    let last = head.size.min(after.saturating_add(limit));
    let mut entries = Vec::new();
    // Entries are stored in blocks (one per command); each is served on its own, as the encoded
    // `AuditEntry`. A block that does not open is one `error` at its first entry's position.
    dtm_cluster::audit::for_each_entry_from(reader, after.saturating_add(1), |seq, entry| {
        if seq > last {
            return false;
        }
        entries.push(match entry {
            Ok(e) => json!({"seq": seq, "entry": b64(&prost::Message::encode_to_vec(&e))}),
            Err(e) => json!({"seq": seq, "error": format!("the stored entries do not open: {e}")}),
        });
        true
    })
    .map_err(ApiError::internal)?;
    crate::audit::note_records(entries.len() as u64);
    let next = (last < head.size).then_some(last);
    Ok(Json(json!({
        "node_id": state.node.id,
        "head": {"size": head.size, "head_hash": hex::encode(&head.head_hash)},
        "entries": entries,
        "next": next,
    })))
}

/// `GET /api/v1/audit/checkpoints?after=&limit=`: checkpoints with a size above `after`, in size
/// order: the fields, the signatures, and the stored bytes (`raw`, base64) that the verifier decodes;
/// plus the node keys registered in the trail's tables.
pub async fn checkpoints(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &AUDIT_VERIFY).await?;
    crate::audit::note_operation("audit.checkpoints.read", "audit");
    let reader = &state.node.reader;
    let limit = q.limit.map_or(CHECKPOINTS_PAGE_MAX, |l| l as usize).clamp(1, CHECKPOINTS_PAGE_MAX);
    let after = q.after.filter(|a| *a > 0).map(tables::audit_checkpoint);
    let rows = reader.scan(tables::AUDIT_CHECKPOINT, after.as_deref(), limit).map_err(ApiError::internal)?;
    let mut out = Vec::with_capacity(rows.len());
    for (_, v) in &rows {
        let cp = state::AuditCheckpoint::decode(v.as_slice()).map_err(ApiError::internal)?;
        let signatures: Vec<Value> = cp
            .signatures
            .iter()
            .map(|s| {
                json!({"node_id": s.node_id, "public_key": hex::encode(&s.public_key),
                       "signature": hex::encode(&s.signature), "signed_at_ms": s.signed_at_ms})
            })
            .collect();
        out.push(json!({
            "size": cp.size, "head_hash": hex::encode(&cp.head_hash), "merkle_root": hex::encode(&cp.merkle_root),
            "log_index": cp.log_index, "at_ms": cp.at_ms, "signatures": signatures, "raw": b64(v),
        }));
    }
    let mut keys = Vec::new();
    for (_, v) in reader.scan(tables::NODE_KEY, None, KEYS_LISTED_MAX).map_err(ApiError::internal)? {
        let k = state::NodeKey::decode(v.as_slice()).map_err(ApiError::internal)?;
        keys.push(json!({"node_id": k.node_id, "public_key": hex::encode(&k.public_key)}));
    }
    let next = (rows.len() == limit).then(|| out.last().and_then(|c| c["size"].as_u64())).flatten();
    Ok(Json(json!({"node_id": state.node.id, "checkpoints": out, "keys": keys, "next": next})))
}

/// `GET /api/v1/audit/status`: this node's last verification of its own trail.
pub async fn status(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &AUDIT_VERIFY).await?;
    let last = crate::audit_watch::last();
    let body = match last {
        Some(s) => serde_json::to_value(&s).map_err(ApiError::internal)?,
        None => json!({"node_id": state.node.id, "last_run_ms": null, "pending": true}),
    };
    Ok(Json(body))
}
