//! Aggregates for analysts (F4), answered by any node from its in-memory aggregate view at a known
//! log index (`as_of_index`); `consistency=linearizable` first waits until the node has applied
//! everything the leader had committed. Also the digest that lets operators and tests compare nodes,
//! and the pipeline's statistics.

use axum::Json;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use serde_json::json;

use super::AppState;
use super::auth;
use super::error::ApiError;
use super::error::ApiResult;
use crate::limits::AGGREGATE_ROWS_MAX;

#[derive(Deserialize)]
pub struct AggregateParams {
    interval: Option<String>,
    group_by: Option<String>,
    from: Option<String>,
    to: Option<String>,
    consistency: Option<String>,
}

/// Waits for the read barrier when the caller asked for a linearizable answer.
pub(super) async fn consistency(state: &AppState, c: Option<&str>) -> ApiResult<()> {
    match c {
        None | Some("local") => Ok(()),
        Some("linearizable") => {
            state.node.linearizable_barrier().await?;
            Ok(())
        }
        Some(other) => Err(ApiError::bad_request(format!("unknown consistency `{other}` (local or linearizable)"))),
    }
}

pub async fn get_aggregates(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<AggregateParams>,
) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &auth::AGGREGATES_READ).await?;
    crate::audit::note_operation("aggregates.read", &format!("dataset/{id}"));
    consistency(&state, q.consistency.as_deref()).await?;
    let ds = super::catalog::dataset_version(&state, &id, None).await?;
    let compiled = state.catalog.compiled(&ds).map_err(ApiError::internal)?;
    let query = dtm_dataset::AggregateQuery::parse(
        &compiled.def,
        q.interval.as_deref(),
        q.group_by.as_deref(),
        q.from.as_deref(),
        q.to.as_deref(),
    )
    .map_err(|p| {
        let mut e = ApiError::bad_request(p.message.clone());
        e.details = vec![json!({"field": p.field, "message": p.message})];
        e
    })?;
    let (as_of_index, rows) = state.node.aggregates.read_flagged(&id, |index, cells, approximate| {
        let empty = dtm_cluster::aggregates::Cells::new();
        let cells = cells.unwrap_or(&empty);
        // Cells are ordered by time: only the from/to window is visited.
        let rows =
            dtm_dataset::aggregate_decoded(&compiled.def, cells.range(query.key_range()).map(|(_, c)| c), &query);
        let rows = match (rows, approximate) {
            (Ok(rows), Some(keys)) if !keys.is_empty() => {
                super::lineage::mark_approximate(&compiled.def, &query, rows, cells, keys)
            }
            (rows, _) => rows,
        };
        (index, rows)
    });
    let rows = rows.map_err(|p| ApiError::bad_request(p.message))?;
    if rows.len() > AGGREGATE_ROWS_MAX {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_rows",
            format!(
                "the answer would have {} rows (at most {AGGREGATE_ROWS_MAX}); narrow the period or group by fewer dimensions",
                rows.len()
            ),
        ));
    }
    Ok(Json(json!({
        "dataset": id,
        "as_of_index": as_of_index,
        "interval": q.interval.as_deref().unwrap_or("year"),
        "group_by": query.group_by,
        "rows": rows,
    })))
}

#[derive(Deserialize)]
pub struct DigestParams {
    consistency: Option<String>,
}

pub async fn get_digest(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<DigestParams>,
) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &auth::AGGREGATES_READ).await?;
    consistency(&state, q.consistency.as_deref()).await?;
    super::catalog::dataset_version(&state, &id, None).await?;
    let (as_of_index, sha) = state.node.aggregates.digest(&id);
    Ok(Json(json!({"dataset": id, "as_of_index": as_of_index, "sha256": hex::encode(sha)})))
}

/// `GET /pipeline`: each source's actors on this node (queue use, restarts, outcomes).
pub async fn get_pipeline(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &auth::OPERATE).await?;
    let stats = state.pipeline.stats();
    Ok(Json(json!({"node_id": state.node.id, "sources": serde_json::to_value(stats).map_err(ApiError::internal)?})))
}
