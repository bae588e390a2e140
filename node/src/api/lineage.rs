//! Lineage (issue 7, F3): where a record came from (`GET /lineage/records/{id}`), who contributed
//! to an aggregate cell (`GET /datasets/{id}/aggregates/lineage`), and the ingestion runs as
//! OpenLineage events (`GET /lineage/openlineage`).
//!
//! Everything here is read from the replicated tables that `apply` keeps (`dtm_cluster::lineage`):
//! the record itself carries its source, channel, batch, receiving node, schema version, masking
//! and enrichment, request id and commit index; `rsup/` links each version to the next; `aggl/`
//! lists per finest cell the batches and real-time sources whose records it holds (at most
//! `CELL_CONTRIBUTORS_MAX` by name, the rest counted together).

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use axum::Json;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use dtm_cluster::aggregates::Cells;
use dtm_cluster::lineage;
use dtm_cluster::tables;
use dtm_dataset::AggregateQuery;
use dtm_dataset::DatasetDef;
use dtm_dataset::Problem;
use dtm_dataset::TimePoint;
use dtm_dataset::canonical_json;
use dtm_model::state;
use serde::Deserialize;
use serde_json::Value;
use serde_json::json;

use super::AppState;
use super::auth;
use super::error::ApiError;
use super::error::ApiResult;
use super::export::rfc3339;
use crate::limits::*;

#[derive(Deserialize)]
pub struct RecordLineageQuery {
    as_of_index: Option<u64>,
    as_of: Option<String>,
}

/// `GET /lineage/records/{id}`: the record's origin, transformations, place in the log and versions.
pub async fn get_record_lineage(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<RecordLineageQuery>,
) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &auth::LINEAGE_READ).await?;
    crate::audit::note_operation("lineage.read", &format!("record/{id}"));
    let not_found = || ApiError::not_found(format!("record `{id}` does not exist"));
    let found = super::versions::find(&state, &id).await?.ok_or_else(not_found)?;
    let r = found.record;
    let as_of = super::versions::as_of_index(&state, &r.dataset, q.as_of_index, q.as_of.as_deref()).await?;
    let n = as_of.unwrap_or(u64::MAX);
    if r.commit_index > n {
        return Err(ApiError::not_found(format!(
            "record `{id}` was committed at log index {}, after {n}",
            r.commit_index
        )));
    }
    let reader = &state.node.reader;
    let later: Vec<Value> = lineage::later_versions(reader, &r.id)
        .map_err(ApiError::internal)?
        .into_iter()
        .filter(|(_, index)| *index <= n)
        .map(|(id, index)| json!({"id": id, "commit_index": index}))
        .collect();
    let successor =
        reader.get_msg::<state::RecordSuccessor>(&tables::record_successor(&r.id)).map_err(ApiError::internal)?;
    let retracted = successor.map(|s| s.retracted_index).filter(|i| *i != 0 && *i <= n);
    let source = reader.get_msg::<state::Source>(&tables::source(&r.source)).map_err(ApiError::internal)?;
    let batch = if r.batch_id.is_empty() {
        Value::Null
    } else {
        match reader.get_msg::<state::BatchReceipt>(&tables::batch(&r.batch_id)).map_err(ApiError::internal)? {
            Some(b) => json!({"batch_id": b.batch_id, "format": b.format, "status": b.status,
                              "received": b.received, "accepted": b.accepted, "rejected": b.rejected,
                              "started_at": rfc3339(b.started_at_ms), "finished_at": rfc3339(b.finished_at_ms)}),
            None => json!({"batch_id": r.batch_id}),
        }
    };
    let correction = if r.correction_reason.is_empty() {
        Value::Null
    } else {
        json!({"reason": r.correction_reason, "corrected_by": r.corrected_by, "corrects_id": r.previous_id})
    };
    let latest_id = later.last().map_or(r.id.clone(), |v| v["id"].as_str().unwrap_or_default().to_string());
    Ok(Json(json!({
        "record_id": r.id,
        "dataset": r.dataset,
        "source": r.source,
        "source_name": source.as_ref().map(|s| s.name.clone()),
        "agency": source.as_ref().map(|s| s.agency.clone()),
        "channel": r.channel,
        "batch_id": if r.batch_id.is_empty() { Value::Null } else { json!(r.batch_id) },
        "batch": batch,
        "request_id": r.request_id,
        "received_on_node": r.received_on_node,
        "received_at": rfc3339(r.received_at_ms),
        "received_at_ms": r.received_at_ms,
        "schema_version": r.schema_version,
        "classification": r.classification,
        "masked_fields": r.masked_fields,
        "enriched_fields": r.enriched_fields,
        "content_sha256": hex::encode(&r.content_sha256),
        "commit_index": r.commit_index,
        "version": r.version,
        "previous_id": if r.previous_id.is_empty() { Value::Null } else { json!(r.previous_id) },
        "conflict": r.conflict,
        "correction": correction,
        "later_versions": later,
        "latest_id": latest_id,
        "counts_in_aggregates": !r.conflict && retracted.is_none(),
        "retracted_at_index": retracted,
        "as_of_index": as_of,
    })))
}

/// Marks the rows that hold a cell whose min and max are approximate (a correction retracted a
/// value equal to one of them) with `"extrema_exact": false`: the flagged cells are rolled up on
/// their own with the same query, and rows with the same bucket and group values are marked.
pub fn mark_approximate(
    def: &DatasetDef,
    query: &AggregateQuery,
    mut rows: Vec<Value>,
    cells: &Cells,
    flagged: &BTreeSet<Vec<u8>>,
) -> Result<Vec<Value>, Problem> {
    let group_key = |row: &Value| {
        let mut k = vec![row["bucket"].to_string()];
        k.extend(query.group_by.iter().map(|d| canonical_json(&row[d])));
        k
    };
    let only_flagged = cells.range(query.key_range()).filter(|(k, _)| flagged.contains(*k)).map(|(_, c)| c);
    let marked: BTreeSet<Vec<String>> =
        dtm_dataset::aggregate_decoded(def, only_flagged, query)?.iter().map(group_key).collect();
    for row in &mut rows {
        if marked.contains(&group_key(row)) {
            row["extrema_exact"] = json!(false);
        }
    }
    Ok(rows)
}

/// The cells a cell-lineage request names: a bucket (a time point, rolled up at `interval` or at
/// its own granularity) and values of some dimensions.
struct CellFilter {
    bucket: Option<(TimePoint, dtm_dataset::Interval)>,
    dims: Vec<(usize, String, String)>,
}

impl CellFilter {
    fn parse(def: &DatasetDef, params: &BTreeMap<String, String>) -> ApiResult<CellFilter> {
        let interval = match params.get("interval") {
            None => None,
            Some(i) => Some(i.parse::<dtm_dataset::Interval>().map_err(ApiError::bad_request)?),
        };
        let bucket = match params.get("bucket").filter(|b| !b.is_empty()) {
            None => None,
            Some(text) => {
                let t = TimePoint::parse(text).map_err(|e| ApiError::bad_request(format!("`bucket`: {e}")))?;
                let interval = interval
                    .or_else(|| t.granularity())
                    .ok_or_else(|| ApiError::bad_request("`bucket` needs an `interval`"))?;
                Some((t.truncate(interval).map_err(ApiError::bad_request)?, interval))
            }
        };
        let mut dims = Vec::new();
        for (name, value) in params {
            if matches!(name.as_str(), "bucket" | "interval" | "consistency") {
                continue;
            }
            let Some(i) = def.dimensions.iter().position(|d| d == name) else {
                return Err(ApiError::bad_request(format!(
                    "`{name}` is not a dimension of this dataset (dimensions: {}; also bucket, interval)",
                    def.dimensions.join(", ")
                )));
            };
            // A value matches as text, or as the JSON it spells (numbers, booleans, null).
            let as_json = serde_json::from_str::<Value>(value).map(|v| canonical_json(&v)).unwrap_or_default();
            dims.push((i, canonical_json(&Value::String(value.clone())), as_json));
        }
        Ok(CellFilter { bucket, dims })
    }

    fn matches(&self, cell: &dtm_dataset::DecodedCell) -> bool {
        let in_bucket = match &self.bucket {
            None => true,
            Some((bucket, interval)) => cell.time.truncate(*interval).is_ok_and(|t| t == *bucket),
        };
        in_bucket
            && self.dims.iter().all(|(i, text, json)| {
                cell.dims_canonical.get(*i).is_some_and(|v| v == text || (!json.is_empty() && v == json))
            })
    }
}

/// `GET /datasets/{id}/aggregates/lineage?bucket=…&<dimension>=<value>…`: the batches and the
/// real-time sources whose records the matching cells hold, with record counts and the first and
/// last commit index.
pub async fn get_cell_lineage(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &auth::LINEAGE_READ).await?;
    crate::audit::note_operation("lineage.read", &format!("dataset/{id}"));
    if let Some(c) = params.get("consistency") {
        match c.as_str() {
            "local" => {}
            "linearizable" => {
                state.node.linearizable_barrier().await?;
            }
            other => {
                return Err(ApiError::bad_request(format!("unknown consistency `{other}` (local or linearizable)")));
            }
        }
    }
    let ds = super::catalog::dataset_version(&state, &id, None).await?;
    let compiled = state.catalog.compiled(&ds).map_err(ApiError::internal)?;
    let filter = CellFilter::parse(&compiled.def, &params)?;
    let (as_of_index, keys, records) = state.node.aggregates.read(&id, |index, cells| {
        let mut keys = Vec::new();
        let mut records = 0u64;
        for (k, c) in cells.into_iter().flatten() {
            if filter.matches(c) {
                if keys.len() == CELL_LINEAGE_CELLS_MAX {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "too_many_cells",
                        format!("more than {CELL_LINEAGE_CELLS_MAX} cells match; name a bucket or more dimensions"),
                    ));
                }
                keys.push(k.clone());
                records += c.cell.count;
            }
        }
        Ok((index, keys, records))
    })?;
    let mut merged: BTreeMap<String, state::CellContributor> = BTreeMap::new();
    let mut others = 0u64;
    for k in &keys {
        let Some(l) = state
            .node
            .reader
            .get_msg::<state::CellLineage>(&tables::cell_lineage(&id, k))
            .map_err(ApiError::internal)?
        else {
            continue;
        };
        others += l.others;
        for (who, c) in l.contributors {
            let m = merged.entry(who).or_insert(state::CellContributor {
                records: 0,
                first_index: c.first_index,
                last_index: c.last_index,
            });
            m.records += c.records;
            m.first_index = m.first_index.min(c.first_index);
            m.last_index = m.last_index.max(c.last_index);
        }
    }
    let mut listed: Vec<(String, state::CellContributor)> = merged.into_iter().collect();
    listed.sort_by(|a, b| b.1.records.cmp(&a.1.records).then_with(|| a.0.cmp(&b.0)));
    if listed.len() > CELL_LINEAGE_LISTED_MAX {
        others += listed[CELL_LINEAGE_LISTED_MAX..].iter().map(|(_, c)| c.records).sum::<u64>();
        listed.truncate(CELL_LINEAGE_LISTED_MAX);
    }
    let mut contributors = Vec::with_capacity(listed.len());
    for (who, c) in listed {
        let mut v = json!({"contributor": who, "records": c.records,
                           "first_commit_index": c.first_index, "last_commit_index": c.last_index});
        if let Some(batch_id) = who.strip_prefix("batch:") {
            v["kind"] = json!("batch");
            v["batch_id"] = json!(batch_id);
            let receipt = state.node.reader.get_msg::<state::BatchReceipt>(&tables::batch(batch_id));
            if let Some(b) = receipt.map_err(ApiError::internal)? {
                v["source"] = json!(b.source);
                v["channel"] = json!(format!("batch:{}", b.format));
            }
        } else if let Some(source) = who.strip_prefix("source:") {
            v["kind"] = json!("real-time");
            v["source"] = json!(source);
        }
        contributors.push(v);
    }
    Ok(Json(json!({
        "dataset": id,
        "as_of_index": as_of_index,
        "cells": keys.len(),
        "records": records,
        "contributors": contributors,
        "others": others,
    })))
}

#[derive(Deserialize)]
pub struct OpenLineageQuery {
    from: Option<String>,
    to: Option<String>,
    format: Option<String>,
    /// Also the real-time records, as one run per source, dataset and day (scans the records).
    realtime: Option<bool>,
}

/// The OpenLineage schema the events follow, and the facets used.
const OPENLINEAGE_SCHEMA: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";
const ERROR_FACET_SCHEMA: &str =
    "https://openlineage.io/spec/facets/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet";
const OUTPUT_STATS_SCHEMA: &str = "https://openlineage.io/spec/facets/1-0-2/OutputStatisticsOutputDatasetFacet.json#/$defs/OutputStatisticsOutputDatasetFacet";

fn producer() -> String {
    format!("urn:dtm:{}", env!("CARGO_PKG_VERSION"))
}

/// A run id (a UUID, as OpenLineage requires) that is the same for a batch on every node and every
/// export: the batch id itself when it is a UUID, else a name-based UUID from its SHA-256.
fn run_id(batch_id: &str) -> String {
    if let Ok(u) = uuid::Uuid::parse_str(batch_id) {
        return u.to_string();
    }
    let digest = <sha2::Sha256 as sha2::Digest>::digest(batch_id.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8: custom
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    uuid::Uuid::from_bytes(b).to_string()
}

/// The START and COMPLETE (or FAIL) events of one batch upload.
fn batch_events(b: &state::BatchReceipt) -> [Value; 2] {
    let run_id = run_id(&b.batch_id);
    let job = json!({"namespace": "dtm", "name": format!("ingest.{}.{}", b.source, b.dataset)});
    let input = json!({"namespace": "dtm-source", "name": b.source});
    let batch_facet = json!({
        "_producer": producer(),
        "_schemaURL": "urn:dtm:facets:batch",
        "batch_id": b.batch_id, "format": b.format, "status": b.status, "received_on_node": b.received_on_node,
        "received": b.received, "accepted": b.accepted, "rejected": b.rejected,
        "duplicates": b.duplicates, "conflicts": b.conflicts, "reconciliation": b.reconciliation,
        "records_commit_index": b.records_commit_index, "schema_version": b.schema_version,
        "content_sha256": hex::encode(&b.content_sha256),
    });
    let start = json!({
        "eventType": "START",
        "eventTime": rfc3339(b.started_at_ms),
        "run": {"runId": run_id, "facets": {"dtm_batch": batch_facet}},
        "job": job,
        "inputs": [input],
        "outputs": [{"namespace": "dtm", "name": b.dataset}],
        "producer": producer(),
        "schemaURL": OPENLINEAGE_SCHEMA,
    });
    let failed = matches!(b.status.as_str(), "rejected" | "refused" | "aborted");
    let mut run_facets = json!({"dtm_batch": batch_facet});
    if failed {
        run_facets["errorMessage"] = json!({
            "_producer": producer(), "_schemaURL": ERROR_FACET_SCHEMA,
            "message": if b.error_message.is_empty() { b.status.clone() } else { b.error_message.clone() },
            "programmingLanguage": "rust",
        });
    }
    let end = json!({
        "eventType": if failed { "FAIL" } else { "COMPLETE" },
        "eventTime": rfc3339(b.finished_at_ms.max(b.started_at_ms)),
        "run": {"runId": start["run"]["runId"], "facets": run_facets},
        "job": start["job"],
        "inputs": start["inputs"],
        "outputs": [{"namespace": "dtm", "name": b.dataset, "outputFacets": {"outputStatistics": {
            "_producer": producer(), "_schemaURL": OUTPUT_STATS_SCHEMA,
            "rowCount": b.accepted, "size": b.content_bytes,
        }}}],
        "producer": producer(),
        "schemaURL": OPENLINEAGE_SCHEMA,
    });
    [start, end]
}

/// One day of a source's real-time records into one dataset (Vietnam days, like the aggregates).
#[derive(Default)]
struct RealtimeDay {
    records: u64,
    first_ms: u64,
    last_ms: u64,
    first_index: u64,
    last_index: u64,
    channels: BTreeMap<String, u64>,
}

/// Milliseconds in a day, and Vietnam's offset from UTC (UTC+07:00, no daylight saving).
const DAY_MS: u64 = 86_400_000;
const VIETNAM_OFFSET_MS: u64 = 7 * 3_600_000;

/// The Vietnam day of a time, as days since the epoch.
fn vietnam_day(ms: u64) -> u64 {
    (ms + VIETNAM_OFFSET_MS) / DAY_MS
}

/// The real-time records received in `[from, to)`, by (source, dataset, Vietnam day): every
/// dataset's records are read (at most `AS_OF_RECORDS_MAX` in all; 422 past that).
fn realtime_days(
    reader: &dtm_storage::StateReader,
    from: u64,
    to: u64,
) -> ApiResult<BTreeMap<(String, String, u64), RealtimeDay>> {
    let mut datasets = Vec::new();
    reader
        .for_each_prefixed(tables::DATASET, |_, v| {
            datasets.push(<state::Dataset as prost::Message>::decode(v)?.id);
            Ok(())
        })
        .map_err(ApiError::internal)?;
    let mut days: BTreeMap<(String, String, u64), RealtimeDay> = BTreeMap::new();
    let mut budget = AS_OF_RECORDS_MAX;
    for dataset in datasets {
        let mut seen = 0usize;
        let cut = super::versions::visit_records(reader, &dataset, None, u64::MAX, budget, |_, r| {
            seen += 1;
            if !r.batch_id.is_empty() || r.received_at_ms < from || r.received_at_ms >= to {
                return Ok(true);
            }
            let day = days.entry((r.source.clone(), dataset.clone(), vietnam_day(r.received_at_ms))).or_default();
            if day.records == 0 {
                (day.first_ms, day.first_index) = (r.received_at_ms, r.commit_index);
            }
            day.records += 1;
            day.first_ms = day.first_ms.min(r.received_at_ms);
            day.last_ms = day.last_ms.max(r.received_at_ms);
            day.first_index = day.first_index.min(r.commit_index);
            day.last_index = day.last_index.max(r.commit_index);
            *day.channels.entry(r.channel).or_default() += 1;
            Ok(true)
        })?;
        if cut.is_some() {
            return Err(super::versions::too_many_records());
        }
        budget = budget.saturating_sub(seen);
    }
    Ok(days)
}

/// The events of one day's real-time run: START at its first record, then COMPLETE at its last,
/// or RUNNING while the day (`today`, a Vietnam day) is not over.
fn realtime_events(key: &(String, String, u64), day: &RealtimeDay, today: u64) -> [Value; 2] {
    let (source, dataset, day_number) = key;
    let date = rfc3339(day_number * DAY_MS).get(..10).unwrap_or_default().to_string();
    let run_id = run_id(&format!("realtime:{source}:{dataset}:{date}"));
    let facet = json!({
        "_producer": producer(), "_schemaURL": "urn:dtm:facets:realtime",
        "source": source, "dataset": dataset, "day": date, "records": day.records, "channels": day.channels,
        "first_commit_index": day.first_index, "last_commit_index": day.last_index,
    });
    let job = json!({"namespace": "dtm", "name": format!("ingest.{source}.{dataset}.realtime")});
    let event = |kind: &str, at_ms: u64, outputs: Value| {
        json!({
            "eventType": kind, "eventTime": rfc3339(at_ms),
            "run": {"runId": run_id, "facets": {"dtm_realtime": facet}},
            "job": job, "inputs": [{"namespace": "dtm-source", "name": source}], "outputs": outputs,
            "producer": producer(), "schemaURL": OPENLINEAGE_SCHEMA,
        })
    };
    let stats = json!([{"namespace": "dtm", "name": dataset, "outputFacets": {"outputStatistics": {
        "_producer": producer(), "_schemaURL": OUTPUT_STATS_SCHEMA, "rowCount": day.records}}}]);
    let end = if *day_number < today { "COMPLETE" } else { "RUNNING" };
    [event("START", day.first_ms, json!([{"namespace": "dtm", "name": dataset}])), event(end, day.last_ms, stats)]
}

/// `GET /lineage/openlineage?from=&to=`: every batch upload that started in the window, as
/// OpenLineage RunEvents (a JSON array, or JSON lines with `format=ndjson`), oldest first. With
/// `realtime=true` also one run per source, dataset and day of real-time records.
pub async fn get_openlineage(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<OpenLineageQuery>,
) -> ApiResult<Response> {
    auth::require(&state, &headers, &auth::LINEAGE_READ).await?;
    crate::audit::note_operation("lineage.export", "openlineage");
    let from = q.from.as_deref().map(|t| super::versions::rfc3339_ms("from", t)).transpose()?.unwrap_or(0);
    let to = q.to.as_deref().map(|t| super::versions::rfc3339_ms("to", t)).transpose()?.unwrap_or(u64::MAX);
    let ndjson = match q.format.as_deref() {
        None | Some("json") => false,
        Some("ndjson") => true,
        Some(other) => return Err(ApiError::bad_request(format!("unknown format `{other}` (json or ndjson)"))),
    };
    let mut receipts = Vec::new();
    let mut truncated = false;
    state
        .node
        .reader
        .for_each_prefixed(tables::BATCH, |_, v| {
            let b = <state::BatchReceipt as prost::Message>::decode(v)?;
            if b.started_at_ms >= from && b.started_at_ms < to {
                if receipts.len() == OPENLINEAGE_RUNS_MAX {
                    truncated = true;
                } else {
                    receipts.push(b);
                }
            }
            Ok(())
        })
        .map_err(ApiError::internal)?;
    receipts.sort_by(|a, b| a.started_at_ms.cmp(&b.started_at_ms).then_with(|| a.batch_id.cmp(&b.batch_id)));
    // One timeline of (time, event); a run's START never sorts after its end (stable sort).
    let mut timeline: Vec<(u64, Value)> = Vec::new();
    for b in &receipts {
        let [start, end] = batch_events(b);
        timeline.push((b.started_at_ms, start));
        timeline.push((b.finished_at_ms.max(b.started_at_ms), end));
    }
    if q.realtime == Some(true) {
        let reader = state.node.reader.clone();
        let days = super::versions::blocking(move || realtime_days(&reader, from, to)).await?;
        let today = vietnam_day(super::now_ms());
        for (k, d) in &days {
            let [start, end] = realtime_events(k, d, today);
            timeline.push((d.first_ms, start));
            timeline.push((d.last_ms, end));
        }
    }
    timeline.sort_by_key(|(at_ms, _)| *at_ms);
    let events: Vec<Value> = timeline.into_iter().map(|(_, e)| e).collect();
    let (body, media) = if ndjson {
        let mut out = String::new();
        for e in &events {
            out.push_str(&e.to_string());
            out.push('\n');
        }
        (out.into_bytes(), "application/x-ndjson")
    } else {
        (serde_json::to_vec(&events).map_err(ApiError::internal)?, "application/json")
    };
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    resp.headers_mut().insert("x-export-truncated", HeaderValue::from_static(if truncated { "true" } else { "false" }));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_stable_uuids() {
        assert_eq!(run_id("b1"), run_id("b1"));
        assert_ne!(run_id("b1"), run_id("b2"));
        let u = uuid::Uuid::parse_str(&run_id("b1")).expect("a UUID");
        assert_eq!(u.get_version_num(), 8);
        let given = "0191b5a4-7c2e-7a3b-9c1d-2e3f4a5b6c7d";
        assert_eq!(run_id(given), given);
    }

    #[test]
    fn cell_filters_match_buckets_and_dimension_values_as_text_or_json() {
        let schema = json!({"type": "object", "properties": {
            "day": {"type": "string"}, "agency": {"type": "string"}, "year": {"type": "integer"}}});
        let def = DatasetDef::parse(&json!({"id": "d", "title": "d", "schema": schema,
            "time_field": "day", "dimensions": ["agency", "year"]}))
        .expect("definition");
        let cell = |day: &str, agency: Value, year: Value| {
            let c = dtm_dataset::Contribution {
                time: TimePoint::parse(day).expect("day"),
                dims: vec![agency, year],
                measures: Default::default(),
            };
            dtm_dataset::DecodedCell::decode(&c.cell_key(), Default::default()).expect("cell")
        };
        let params = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let july = CellFilter::parse(&def, &params(&[("bucket", "2026-07"), ("agency", "moj"), ("year", "2026")]))
            .expect("filter");
        assert!(july.matches(&cell("2026-07-14", json!("moj"), json!(2026))), "a number matches its text");
        assert!(!july.matches(&cell("2026-08-01", json!("moj"), json!(2026))), "another month");
        assert!(!july.matches(&cell("2026-07-14", json!("mof"), json!(2026))), "another agency");
        let quarter = CellFilter::parse(&def, &params(&[("bucket", "2026-Q3")])).expect("filter");
        assert!(quarter.matches(&cell("2026-08-01", json!("mof"), json!(null))));
        assert!(CellFilter::parse(&def, &params(&[("colour", "red")])).is_err(), "not a dimension");
        assert!(CellFilter::parse(&def, &params(&[("bucket", "July")])).is_err(), "not a time point");
    }

    #[test]
    fn a_failed_batch_ends_with_fail_and_its_error() {
        let b = state::BatchReceipt {
            batch_id: "b".into(),
            source: "moj".into(),
            dataset: "etx".into(),
            status: "rejected".into(),
            error_message: "row 3 is invalid".into(),
            started_at_ms: 1_000,
            finished_at_ms: 2_000,
            ..Default::default()
        };
        let [start, end] = batch_events(&b);
        assert_eq!((start["eventType"].as_str(), end["eventType"].as_str()), (Some("START"), Some("FAIL")));
        assert_eq!(start["run"]["runId"], end["run"]["runId"]);
        assert_eq!(end["run"]["facets"]["errorMessage"]["message"], "row 3 is invalid");
        assert_eq!(start["inputs"][0]["name"], "moj");
        assert_eq!(start["outputs"][0]["name"], "etx");
        assert_eq!(start["job"]["namespace"], "dtm");
    }
}
