//! Sources, their API keys, and dataset definitions. Each change is a command through the log.

use axum::Json;
use axum::body::Body;
use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use dtm_cluster::tables;
use dtm_model::state;
use dtm_model::state::command::Kind;
use dtm_model::state::command_response::Result as Reply;
use serde_json::Value;
use serde_json::json;

use super::AppState;
use super::auth;
use super::error::ApiError;
use super::error::ApiResult;
use super::error::rejected;
use crate::limits::ADMIN_BODY_BYTES_MAX;
use crate::limits::DATASET_VERSIONS_LISTED_MAX;
use crate::limits::RECORDS_PAGE_DEFAULT;
use crate::limits::RECORDS_PAGE_MAX;
use crate::limits::SOURCE_ALLOWED_DATASETS_MAX;
use axum::extract::Query;
use dtm_dataset::CompiledDataset;
use dtm_dataset::DatasetDef;
use dtm_dataset::SourceForm;
use serde::Deserialize;

async fn write(state: &AppState, who: &auth::Principal, kind: Kind) -> ApiResult<u64> {
    tracing::info!(principal = %who.name(), operation = kind_name(&kind), "catalog change");
    let (resp, index) = state.node.write(super::command(state, kind)).await?;
    match resp.result {
        Some(Reply::Applied(_)) => Ok(index),
        Some(Reply::Rejected(r)) => Err(rejected(&r.code, r.message)),
        _ => Err(ApiError::internal("unexpected command response")),
    }
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::RegisterSource(_) => "register_source",
        Kind::IssueKey(_) => "issue_key",
        Kind::RevokeKey(_) => "revoke_key",
        Kind::DefineDataset(_) => "define_dataset",
        Kind::SetClusterSecrets(_) => "set_cluster_secrets",
        Kind::RemoveSource(_) => "remove_source",
        Kind::Security(_) => "security",
        Kind::Gateway(_) => "gateway",
        Kind::RotateDataKeys(_) => "rotate_data_keys",
        _ => "other",
    }
}

fn str_field<'a>(v: &'a Value, name: &str, required: bool) -> ApiResult<&'a str> {
    match v.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        None if !required => Ok(""),
        Some(Value::Null) if !required => Ok(""),
        _ => Err(ApiError::bad_request(format!("`{name}` must be a non-empty string"))),
    }
}

/// An admin request whose body is a JSON object: who sent it, the raw bytes (kept verbatim) and the
/// parsed object.
async fn admin_object(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<(auth::Principal, bytes::Bytes, Value)> {
    let who = auth::require_admin(state, headers).await?;
    let bytes = super::read_body(headers, body, ADMIN_BODY_BYTES_MAX).await?;
    let v = super::parse_json(headers, &bytes)?;
    if !v.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    Ok((who, bytes, v))
}

/// The object's `id`, checked against the id syntax.
fn object_id(v: &Value) -> ApiResult<&str> {
    let id = str_field(v, "id", true)?;
    if !super::valid_id(id) {
        return Err(ApiError::bad_request("`id` must be 1-64 characters: letters, digits, `_`, `.`, `-`"));
    }
    Ok(id)
}

fn new_key(now: u64) -> (auth::Issued, state::ApiKey) {
    let issued = auth::issue_api_key();
    let key = state::ApiKey {
        key_id: issued.id.clone(),
        secret_sha256: issued.secret_sha256.clone(),
        created_at_ms: now,
        ..Default::default()
    };
    (issued, key)
}

pub async fn create_source(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (who, bytes, v) = admin_object(&state, &headers, body).await?;
    let id = object_id(&v)?;
    let name = str_field(&v, "name", true)?;
    let agency = str_field(&v, "agency", false)?;
    let contact = str_field(&v, "contact", false)?;
    let form = match v.get("form") {
        None | Some(Value::Null) => "raw".to_string(),
        Some(Value::String(f)) if f.parse::<SourceForm>().is_ok() => f.clone(),
        Some(_) => return Err(ApiError::bad_request("`form` must be \"raw\" or \"masked\"")),
    };
    let allowed_datasets = match v.get("allowed_datasets") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|d| d.as_str().filter(|d| super::valid_id(d)).map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .filter(|l| l.len() <= SOURCE_ALLOWED_DATASETS_MAX)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`allowed_datasets` must be a list of at most {SOURCE_ALLOWED_DATASETS_MAX} dataset ids"
                ))
            })?,
        Some(_) => return Err(ApiError::bad_request("`allowed_datasets` must be a list of dataset ids")),
    };
    let now = super::now_ms();
    let (issued, key) = new_key(now);
    let source = state::Source {
        id: id.into(),
        name: name.into(),
        agency: agency.into(),
        contact: contact.into(),
        extra_json: bytes.to_vec(),
        registered_at_ms: now,
        allowed_datasets,
        form: form.clone(),
        removed_at_ms: 0,
    };
    let index =
        write(&state, &who, Kind::RegisterSource(state::RegisterSource { source: Some(source), first_key: Some(key) }))
            .await?;
    // This node starts the source's actors now; the others when they next sync with the catalog.
    if let Err(e) = state.pipeline.add_source(id).await {
        tracing::warn!(source = %id, error = %e, "could not start the source's actors yet");
    }
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"id": id, "key_id": issued.id, "api_key": issued.secret_text, "form": form, "commit_index": index}),
        ),
    ))
}

pub async fn issue_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(source_id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let who = auth::require_admin(&state, &headers).await?;
    let (issued, key) = new_key(super::now_ms());
    let index =
        write(&state, &who, Kind::IssueKey(state::IssueKey { source_id: source_id.clone(), key: Some(key) })).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"source_id": source_id, "key_id": issued.id, "api_key": issued.secret_text, "commit_index": index}),
        ),
    ))
}

/// `DELETE /sources/{id}`: the source's keys stop working on every node, its actors stop, its
/// records stay.
pub async fn remove_source(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(source_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let who = auth::require_admin(&state, &headers).await?;
    let index = write(&state, &who, Kind::RemoveSource(state::RemoveSource { source_id: source_id.clone() })).await?;
    if let Err(e) = state.pipeline.sync_sources(&super::active_sources(&state).map_err(ApiError::internal)?).await {
        tracing::warn!(source = %source_id, error = %e, "could not stop the source's actors yet");
    }
    Ok(Json(json!({"id": source_id, "removed": true, "commit_index": index})))
}

pub async fn revoke_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((source_id, key_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let who = auth::require_admin(&state, &headers).await?;
    let index =
        write(&state, &who, Kind::RevokeKey(state::RevokeKey { source_id: source_id.clone(), key_id: key_id.clone() }))
            .await?;
    Ok(Json(json!({"source_id": source_id, "key_id": key_id, "revoked": true, "commit_index": index})))
}

pub async fn create_dataset(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (who, bytes, v) = admin_object(&state, &headers, body).await?;
    let id = object_id(&v)?.to_string();
    define(&state, &who, &id, bytes, &v).await
}

/// `POST /datasets/{id}/versions`: the next version of an existing dataset (the body's `id`, if
/// any, must match the path).
pub async fn create_version(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (who, bytes, mut v) = admin_object(&state, &headers, body).await?;
    match v.get("id") {
        None => {
            if let Some(o) = v.as_object_mut() {
                o.insert("id".into(), Value::String(id.clone()));
            }
        }
        Some(Value::String(body_id)) if *body_id == id => {}
        Some(_) => return Err(ApiError::bad_request("the body's `id` must match the dataset in the path")),
    }
    if load_latest(&state, &id).await?.is_none() {
        return Err(ApiError::unknown_dataset(&id));
    }
    let bytes = if v.get("id").is_some() && serde_json::from_slice::<Value>(&bytes).ok().as_ref() == Some(&v) {
        bytes
    } else {
        bytes::Bytes::from(v.to_string().into_bytes())
    };
    define(&state, &who, &id, bytes, &v).await
}

/// Checks a definition and proposes it: version 1 of a new dataset, or the next version of an
/// existing one when it is backward compatible with the latest (422 naming the field otherwise).
async fn define(
    state: &AppState,
    who: &auth::Principal,
    id: &str,
    bytes: bytes::Bytes,
    v: &Value,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let def = DatasetDef::parse(v).map_err(|p| definition_problems("the dataset definition is invalid", p))?;
    CompiledDataset::compile(def.clone(), 1)
        .map_err(|p| definition_problems("the dataset definition is invalid", p))?;
    let latest = load_latest(state, id).await?;
    let version = match &latest {
        None => 1,
        Some(prev) => {
            let prev_compiled = state.catalog.compiled(prev).map_err(ApiError::internal)?;
            if let Err(p) = dtm_dataset::check_compatible(&prev_compiled.def, &def) {
                let mut e = definition_problems(
                    &format!(
                        "version {} would break senders of version {}: {} ({})",
                        prev.version + 1,
                        prev.version,
                        p.message,
                        if p.field.is_empty() { "definition" } else { p.field.as_str() }
                    ),
                    vec![p],
                );
                e.code = "incompatible_schema";
                return Err(e);
            }
            prev.version + 1
        }
    };
    let ds = state::Dataset {
        id: id.into(),
        definition_json: bytes.to_vec(),
        version,
        defined_at_ms: super::now_ms(),
        defined_by: who.name(),
    };
    let index = write(state, who, Kind::DefineDataset(state::DefineDataset { dataset: Some(ds) })).await?;
    Ok((StatusCode::CREATED, Json(json!({"id": id, "version": version, "commit_index": index}))))
}

fn definition_problems(message: &str, problems: Vec<dtm_dataset::Problem>) -> ApiError {
    let mut e = ApiError::unprocessable(
        message.to_string(),
        problems.into_iter().map(|p| json!({"field": p.field, "message": p.message})).collect(),
    );
    e.code = "invalid_definition";
    e
}

async fn load_latest(state: &AppState, id: &str) -> ApiResult<Option<state::Dataset>> {
    if !super::valid_id(id) {
        return Ok(None);
    }
    super::lookup_fresh::<state::Dataset>(state, &tables::dataset(id)).await
}

/// A dataset's definition at `version` (None: the latest); 404 naming what is missing.
pub async fn dataset_version(state: &AppState, id: &str, version: Option<u32>) -> ApiResult<state::Dataset> {
    let latest = load_latest(state, id).await?.ok_or_else(|| ApiError::unknown_dataset(id))?;
    match version {
        None => Ok(latest),
        Some(v) if v == latest.version => Ok(latest),
        Some(v) => {
            super::lookup_fresh::<state::Dataset>(state, &tables::dataset_version(id, v)).await?.ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_schema_version",
                    format!("dataset `{id}` has no version {v} (latest is {})", latest.version),
                )
            })
        }
    }
}

#[derive(Deserialize)]
pub struct VersionQuery {
    version: Option<u32>,
}

pub async fn get_dataset(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<VersionQuery>,
) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &auth::SIGNED_IN).await?;
    crate::audit::note_operation("dataset.read", &format!("dataset/{id}"));
    let ds = dataset_version(&state, &id, q.version).await?;
    let def: Value = serde_json::from_slice(&ds.definition_json).map_err(ApiError::internal)?;
    let compiled = state.catalog.compiled(&ds).map_err(ApiError::internal)?;
    let versions = state
        .node
        .reader
        .scan(&tables::dataset_versions_of(&id), None, DATASET_VERSIONS_LISTED_MAX)
        .map_err(ApiError::internal)?
        .into_iter()
        .filter_map(|(_, v)| prost::Message::decode(v.as_slice()).ok())
        .map(|d: state::Dataset| json!({"version": d.version, "defined_at_ms": d.defined_at_ms, "defined_by": d.defined_by}))
        .collect::<Vec<_>>();
    let stats = state
        .node
        .reader
        .get_msg::<state::DatasetStats>(&tables::dataset_stats(&id))
        .map_err(ApiError::internal)?
        .unwrap_or_default();
    Ok(Json(json!({
        "id": ds.id,
        "version": ds.version,
        "definition": def,
        "metadata": compiled.def.metadata(),
        "versions": versions,
        "duplicates": stats.duplicates,
        "conflicts": stats.conflicts,
        "corrections": stats.corrections,
    })))
}

pub async fn get_schema(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<VersionQuery>,
) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &auth::SIGNED_IN).await?;
    let ds = dataset_version(&state, &id, q.version).await?;
    let def: Value = serde_json::from_slice(&ds.definition_json).map_err(ApiError::internal)?;
    Ok(Json(def.get("schema").cloned().unwrap_or(Value::Null)))
}

#[derive(Deserialize)]
pub struct PageQuery {
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /datasets/{id}/conflicts`: records whose natural key matched an earlier record with other
/// content, oldest first, paged — the reconciliation queue (A1.5, C8).
pub async fn get_conflicts(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &auth::CONFLICTS_READ).await?;
    crate::audit::note_operation("dataset.conflicts.read", &format!("dataset/{id}"));
    load_latest(&state, &id).await?.ok_or_else(|| ApiError::unknown_dataset(&id))?;
    let limit = q.limit.unwrap_or(RECORDS_PAGE_DEFAULT).clamp(1, RECORDS_PAGE_MAX);
    let prefix = tables::conflicts_of(&id);
    let after = match &q.after {
        None => None,
        Some(c) => {
            let suffix = hex::decode(c)
                .ok()
                .filter(|s| s.len() == 12)
                .ok_or_else(|| ApiError::bad_request("`after` is not a cursor from a previous page"))?;
            Some([prefix.as_slice(), &suffix].concat())
        }
    };
    let rows = state.node.reader.scan(&prefix, after.as_deref(), limit + 1).map_err(ApiError::internal)?;
    let more = rows.len() > limit;
    let mut out = Vec::new();
    let mut last = None;
    for (k, v) in rows.into_iter().take(limit) {
        let c: state::Conflict = prost::Message::decode(v.as_slice()).map_err(ApiError::internal)?;
        out.push(json!({
            "natural_key_hash": hex::encode(&c.natural_key_hash),
            "first": {"id": c.first_id, "source": c.first_source},
            "new": {"id": c.new_id, "source": c.new_source, "version": c.version},
            "commit_index": c.commit_index,
        }));
        last = Some(k);
    }
    let next = if more { last.map(|k| hex::encode(&k[prefix.len()..])) } else { None };
    Ok(Json(json!({"dataset": id, "as_of_index": state.node.applied_index(), "conflicts": out, "next": next})))
}
