//! Versions and corrections of records, and reads of the past (issue 7, A1.7).
//!
//! Records are never overwritten. `POST /datasets/{id}/records/{record_id}/corrections` sends a
//! corrected record through the same pipeline as a new one (validation, enrichment, masking) and
//! stores it as the next version of the record's chain, with the reason; `apply` then replaces the
//! chain's counted contribution in the aggregates (`dtm_cluster::lineage`). Only the latest version
//! can be corrected (409 naming it otherwise), by the source that sent it or an admin.
//!
//! As-of reads answer from the tables as they stood at a log index: `as_of_index=N` directly, or
//! `as_of=<RFC 3339>`, which is the commit index of the dataset's last record received at or before
//! that time (0 when there is none). Records: those committed at or before N, each chain by its
//! latest version at N. Aggregates (`as_of_commit=N`, or `as_of_index`/`as_of`): recomputed from
//! the records that counted at N with the dataset's definitions, so min and max are exact there.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use dtm_cluster::lineage;
use dtm_cluster::tables;
use dtm_dataset::CompiledDataset;
use dtm_model::state;
use dtm_storage::StateReader;
use serde::Deserialize;
use serde_json::Value;
use serde_json::json;

use super::AppState;
use super::auth;
use super::error::ApiError;
use super::error::ApiResult;
use super::records;
use crate::limits::*;

/// A stored record as the records API shows it.
pub fn record_json(r: &state::StoredRecord) -> ApiResult<Value> {
    let data: Value = serde_json::from_slice(&r.payload_json).map_err(ApiError::internal)?;
    Ok(json!({
        "id": r.id, "source": r.source, "commit_index": r.commit_index,
        "received_at_ms": r.received_at_ms, "data": data,
        "schema_version": r.schema_version, "classification": r.classification, "priority": r.priority,
        "version": r.version, "previous_id": r.previous_id, "conflict": r.conflict, "channel": r.channel,
        "masked_fields": r.masked_fields, "enriched_fields": r.enriched_fields,
        "batch_id": r.batch_id, "correction_reason": r.correction_reason,
    }))
}

fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

pub(super) fn too_many_records() -> ApiError {
    unprocessable(
        "too_many_records",
        format!("an as-of read visits at most {AS_OF_RECORDS_MAX} records; this dataset has more up to that point"),
    )
}

/// Milliseconds since the epoch of an RFC 3339 time (400 naming the parameter otherwise).
pub fn rfc3339_ms(name: &str, text: &str) -> ApiResult<u64> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(|_| {
        ApiError::bad_request(format!("`{name}` must be an RFC 3339 time such as 2026-07-14T09:30:00+07:00"))
    })?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| ApiError::bad_request(format!("`{name}` is before 1970")))
}

/// Runs blocking table work off the async workers.
pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(ApiError::internal)?
}

/// The log index an as-of read is at: `as_of_index` as given (it must be applied here), or for
/// `as_of` the commit index of the dataset's last record received at or before that time (0 when
/// none was); None when neither is given.
pub async fn as_of_index(
    state: &AppState,
    dataset: &str,
    index: Option<u64>,
    at: Option<&str>,
) -> ApiResult<Option<u64>> {
    let applied = state.node.applied_index();
    match (index, at) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(ApiError::bad_request("give `as_of_index` or `as_of`, not both")),
        (Some(n), None) if n > applied => Err(unprocessable(
            "index_not_applied",
            format!("log index {n} is not applied on this node yet (it has applied {applied})"),
        )),
        (Some(n), None) => Ok(Some(n)),
        (None, Some(text)) => {
            let at_ms = rfc3339_ms("as_of", text)?;
            let reader = state.node.reader.clone();
            let dataset = dataset.to_string();
            let n = blocking(move || {
                let mut last = 0;
                visit_records(&reader, &dataset, None, u64::MAX, AS_OF_RECORDS_MAX, |_, r| {
                    if r.received_at_ms <= at_ms {
                        last = last.max(r.commit_index);
                    }
                    Ok(true)
                })?
                .map_or(Ok(()), |_| Err(too_many_records()))?;
                Ok(last)
            })
            .await?;
            Ok(Some(n.min(applied)))
        }
    }
}

/// Visits the records of `dataset` after the table key `after`, in commit order, up to those
/// committed at `until`; at most `budget` of them. `visit` returns false to stop. Returns the key of
/// the last record visited when the budget ran out before the end.
pub(super) fn visit_records(
    reader: &StateReader,
    dataset: &str,
    after: Option<Vec<u8>>,
    until: u64,
    budget: usize,
    mut visit: impl FnMut(&[u8], state::StoredRecord) -> ApiResult<bool>,
) -> ApiResult<Option<Vec<u8>>> {
    const CHUNK: usize = 1_000;
    let mut after = after;
    let mut seen = 0usize;
    loop {
        let rows = dtm_cluster::records::scan(reader, dataset, after.as_deref(), CHUNK).map_err(ApiError::internal)?;
        let done = rows.len() < CHUNK;
        for (k, r) in rows {
            if r.commit_index > until {
                return Ok(None);
            }
            if seen >= budget {
                return Ok(after);
            }
            seen += 1;
            if !visit(&k, r)? {
                return Ok(None);
            }
            after = Some(k);
        }
        if done {
            return Ok(None);
        }
    }
}

/// What happened to a record by log index `n`: a later version was committed (it no longer
/// shows), and a correction took it out of the aggregates.
fn fate(reader: &StateReader, id: &str, n: u64) -> ApiResult<(bool, bool)> {
    let s = reader.get_msg::<state::RecordSuccessor>(&tables::record_successor(id)).map_err(ApiError::internal)?;
    let by = |index: u64| index != 0 && index <= n;
    Ok(s.map_or((false, false), |s| (by(s.next_index), by(s.retracted_index))))
}

/// `GET /datasets/{id}/records?as_of_index=N`: the records committed at or before N, each chain by
/// its latest version at N, in commit order, paged like the current listing.
pub async fn records_as_of(state: &AppState, dataset: &str, q: &records::ReadQuery, n: u64) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(RECORDS_PAGE_DEFAULT).clamp(1, RECORDS_PAGE_MAX);
    let prefix = tables::records_of(dataset);
    let after = records::page_start(&prefix, q.after.as_deref())?;
    let reader = state.node.reader.clone();
    let scan_dataset = dataset.to_string();
    let (records, next) = blocking(move || {
        let mut records = Vec::new();
        let mut last_key: Option<Vec<u8>> = None;
        let mut full = false;
        let cut = visit_records(&reader, &scan_dataset, after, n, AS_OF_PAGE_SCAN_MAX, |k, r| {
            if records.len() == limit {
                full = true;
                return Ok(false);
            }
            last_key = Some(k.to_vec());
            if !fate(&reader, &r.id, n)?.0 {
                records.push(record_json(&r)?);
            }
            Ok(true)
        })?;
        let next = if full { last_key } else { cut };
        Ok((records, next))
    })
    .await?;
    let next = next.map(|k| hex::encode(&k[prefix.len()..]));
    crate::audit::note_records(records.len() as u64);
    Ok(Json(json!({"dataset": dataset, "as_of_index": n, "total": Value::Null, "records": records, "next": next})))
}

/// Every version of a dataset's definition, compiled (records carry the version they were
/// validated against, and their contribution is computed with it).
async fn compiled_versions(state: &AppState, dataset: &str) -> ApiResult<BTreeMap<u32, Arc<CompiledDataset>>> {
    let latest = super::catalog::dataset_version(state, dataset, None).await?;
    let mut out = BTreeMap::new();
    for v in 1..=latest.version {
        let ds = super::catalog::dataset_version(state, dataset, Some(v)).await?;
        out.insert(v, state.catalog.compiled(&ds).map_err(ApiError::internal)?);
    }
    Ok(out)
}

/// A stored record's contribution to the aggregates, computed again from its stored (masked,
/// enriched) payload with the definition it was validated against, as the pipeline did.
pub fn contribution_of(
    compiled: &CompiledDataset,
    r: &state::StoredRecord,
) -> Result<dtm_dataset::Contribution, String> {
    let Value::Object(obj) = serde_json::from_slice::<Value>(&r.payload_json).map_err(|e| e.to_string())? else {
        return Err("stored payload is not an object".into());
    };
    compiled.contribution(0, &obj).map_err(|p| p.message)
}

/// Query parameters of a historical aggregate query (besides the usual vocabulary).
#[derive(Deserialize, Default)]
pub struct HistoryParams {
    pub as_of_commit: Option<u64>,
    pub as_of_index: Option<u64>,
    pub as_of: Option<String>,
    interval: Option<String>,
    group_by: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

impl HistoryParams {
    pub fn is_historical(&self) -> bool {
        self.as_of_commit.is_some() || self.as_of_index.is_some() || self.as_of.is_some()
    }
}

/// `GET /datasets/{id}/aggregates?as_of_commit=N` (or `as_of_index=N`, `as_of=<time>`): the
/// aggregates as they stood at log index N, recomputed from the records that counted then (the
/// first version of each natural key, or its latest correction at N). Visits at most
/// `AS_OF_RECORDS_MAX` records (422 past that).
pub async fn aggregates_as_of(
    state: &AppState,
    headers: &HeaderMap,
    dataset: &str,
    p: &HistoryParams,
) -> ApiResult<Value> {
    auth::require(state, headers, &auth::AGGREGATES_READ).await?;
    crate::audit::note_operation("aggregates.read", &format!("dataset/{dataset}"));
    let index = match (p.as_of_commit, p.as_of_index) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::bad_request("`as_of_commit` and `as_of_index` name different indexes"));
        }
        (a, b) => a.or(b),
    };
    let versions = compiled_versions(state, dataset).await?;
    let Some(latest) = versions.values().next_back().cloned() else { return Err(ApiError::unknown_dataset(dataset)) };
    let query = dtm_dataset::AggregateQuery::parse(
        &latest.def,
        p.interval.as_deref(),
        p.group_by.as_deref(),
        p.from.as_deref(),
        p.to.as_deref(),
    )
    .map_err(|e| {
        let mut err = ApiError::bad_request(e.message.clone());
        err.details = vec![json!({"field": e.field, "message": e.message})];
        err
    })?;
    let Some(n) = as_of_index(state, dataset, index, p.as_of.as_deref()).await? else {
        return Err(ApiError::bad_request("give `as_of_commit`, `as_of_index` or `as_of`"));
    };
    let reader = state.node.reader.clone();
    let scan_dataset = dataset.to_string();
    let (cells, counted) = blocking(move || {
        let mut cells: BTreeMap<Vec<u8>, dtm_dataset::Cell> = BTreeMap::new();
        let mut counted = 0u64;
        let cut = visit_records(&reader, &scan_dataset, None, n, AS_OF_RECORDS_MAX, |_, r| {
            if r.conflict || fate(&reader, &r.id, n)?.1 {
                return Ok(true);
            }
            let Some(compiled) = versions.get(&r.schema_version) else { return Ok(true) };
            match contribution_of(compiled, &r) {
                Ok(c) => {
                    cells.entry(c.cell_key()).or_default().add(&c);
                    counted += 1;
                }
                Err(e) => tracing::warn!(record = %r.id, error = %e, "stored record without a contribution"),
            }
            Ok(true)
        })?;
        if cut.is_some() {
            return Err(too_many_records());
        }
        Ok((cells, counted))
    })
    .await?;
    let rows = dtm_dataset::aggregate(&latest.def, cells.iter().map(|(k, c)| (k.as_slice(), c)), &query)
        .map_err(|e| unprocessable("too_many_rows", e.message))?;
    Ok(json!({
        "dataset": dataset,
        "as_of_index": n,
        "historical": true,
        "records_counted": counted,
        "interval": p.interval.as_deref().unwrap_or("year"),
        "group_by": query.group_by,
        "rows": rows,
    }))
}

#[derive(Deserialize)]
pub struct CorrectionQuery {
    /// The source a data-entry user corrects for.
    source: Option<String>,
    schema_version: Option<u32>,
}

/// `POST /datasets/{id}/records/{record_id}/corrections` with `{"record": {...}, "reason": "..."}`.
/// The lineage fields of a correction of `t` (the latest version of its record): what it corrects,
/// why, and which counted version's contribution it retracts. Shared with the reporting regime's
/// corrections (`reporting::submit`).
pub async fn correction_amend(
    state: &AppState,
    t: &state::StoredRecord,
    reason: String,
) -> ApiResult<state::Submission> {
    let mut amend = state::Submission { corrects_id: t.id.clone(), correction_reason: reason, ..Default::default() };
    match lineage::counted_version(&state.node.reader, t).map_err(ApiError::internal)? {
        lineage::Counted::Version(c) => {
            let ds = super::catalog::dataset_version(state, &t.dataset, Some(c.schema_version)).await?;
            let compiled = state.catalog.compiled(&ds).map_err(ApiError::internal)?;
            let contribution = contribution_of(&compiled, &c).map_err(ApiError::internal)?;
            amend.retract_id = c.id.clone();
            amend.retract = Some(state::AggContribution {
                cell_key: contribution.cell_key(),
                measures: contribution.measures.into_iter().collect(),
            });
        }
        lineage::Counted::Nothing => {}
        lineage::Counted::TooLong => {
            return Err(unprocessable("version_chain_too_long", format!("record `{}` has too many versions", t.id)));
        }
    }
    Ok(amend)
}

pub async fn post_correction(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((dataset, record_id)): Path<(String, String)>,
    Query(q): Query<CorrectionQuery>,
    body: Body,
) -> ApiResult<Response> {
    let principal = auth::authenticate(&state, &headers).await?;
    let submitter = if principal.has_role(auth::Role::Admin) {
        None
    } else {
        Some(records::Submitter::authenticate(&state, &headers, q.source.as_deref()).await?)
    };
    crate::audit::note_operation("records.correct", &format!("record/{record_id}"));
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(records::idempotency_key(
            v.to_str().map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?,
        )?),
    };
    if !super::valid_id(&dataset) {
        return Err(ApiError::unknown_dataset(&dataset));
    }
    let bytes = super::read_body(&headers, body, RECORDS_BODY_BYTES_MAX).await?;
    let (record, reason) = correction_body(&super::parse_json(&headers, &bytes)?)?;
    let target = find(&state, &record_id)
        .await?
        .filter(|f| f.record.dataset == dataset)
        .ok_or_else(|| ApiError::not_found(format!("record `{record_id}` does not exist in dataset `{dataset}`")))?;
    let t = target.record;
    let submitter = match submitter {
        None => records::Submitter { source_id: t.source.clone(), key_id: String::new() },
        Some(s) if s.source_id == t.source => s,
        Some(s) => {
            return Err(ApiError::forbidden(format!(
                "record `{}` was sent by source `{}`; only that source or an admin may correct it (you are `{}`)",
                t.id, t.source, s.source_id
            )));
        }
    };
    let later = lineage::later_versions(&state.node.reader, &t.id).map_err(ApiError::internal)?;
    if let Some((latest, _)) = later.last() {
        let mut e = ApiError::new(
            StatusCode::CONFLICT,
            "not_latest_version",
            format!("record `{}` is not the latest version; the latest is `{latest}`: correct that one", t.id),
        );
        e.details = vec![json!({"latest_id": latest})];
        return Err(e);
    }
    let amend = correction_amend(&state, &t, reason).await?;
    let version = records::schema_version(&headers, q.schema_version)?;
    let prepared = records::prepare(&state, &submitter, &dataset, version).await?;
    let bytes = serde_json::to_vec(&record).map_err(ApiError::internal)?;
    let how = records::Submit { idempotency_key, request_id: super::request_id(&headers), channel: "rest" };
    let answer = records::commit_amended(&state, submitter, prepared, bytes.into(), how, amend).await?;
    let mut body = answer.body;
    body["corrects_id"] = json!(t.id);
    body["version"] = json!(t.version.saturating_add(1));
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    if answer.replayed {
        resp.headers_mut().insert("idempotent-replayed", axum::http::HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// The record and the reason of a correction's body (400 naming what is wrong).
fn correction_body(v: &Value) -> ApiResult<(Value, String)> {
    let Some(obj) = v.as_object() else {
        return Err(ApiError::bad_request("the body must be an object {\"record\": {...}, \"reason\": \"...\"}"));
    };
    if let Some(other) = obj.keys().find(|k| *k != "record" && *k != "reason") {
        return Err(ApiError::bad_request(format!("unknown field `{other}` (record, reason)")));
    }
    let record = match obj.get("record") {
        Some(r @ Value::Object(_)) => r.clone(),
        Some(_) => return Err(ApiError::bad_request("`record` must be one JSON object")),
        None => return Err(ApiError::bad_request("`record` is missing: the corrected record")),
    };
    let reason = match obj.get("reason") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(Value::String(_)) | None => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "reason_required",
                "a correction needs a `reason`: why the record was wrong",
            ));
        }
        Some(_) => return Err(ApiError::bad_request("`reason` must be a string")),
    };
    if reason.chars().count() > CORRECTION_REASON_CHARS_MAX {
        return Err(ApiError::bad_request(format!("`reason` is longer than {CORRECTION_REASON_CHARS_MAX} characters")));
    }
    Ok((record, reason))
}

/// A record by id; one read barrier when this node does not have it (it may have been written
/// through another node a moment ago).
pub async fn find(state: &AppState, id: &str) -> ApiResult<Option<lineage::Found>> {
    if id.is_empty() || id.len() > RECORD_ID_BYTES_MAX || id.contains('\0') {
        return Ok(None);
    }
    if let Some(f) = lineage::find_record(&state.node.reader, id).map_err(ApiError::internal)? {
        return Ok(Some(f));
    }
    state.node.linearizable_barrier().await?;
    lineage::find_record(&state.node.reader, id).map_err(ApiError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_correction_needs_a_record_and_a_reason() {
        assert!(correction_body(&json!({"record": {"a": 1}, "reason": "typo"})).is_ok());
        let e = correction_body(&json!({"record": {"a": 1}})).expect_err("no reason");
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "reason_required"));
        let e = correction_body(&json!({"record": {"a": 1}, "reason": "  "})).expect_err("blank reason");
        assert_eq!(e.code, "reason_required");
        assert!(correction_body(&json!({"record": [1], "reason": "x"})).is_err());
        assert!(correction_body(&json!({"record": {}, "reason": "x", "extra": 1})).is_err());
    }
}
