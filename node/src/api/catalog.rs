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
    let now = super::now_ms();
    let (issued, key) = new_key(now);
    let source = state::Source {
        id: id.into(),
        name: name.into(),
        agency: agency.into(),
        contact: contact.into(),
        extra_json: bytes.to_vec(),
        registered_at_ms: now,
    };
    let index =
        write(&state, &who, Kind::RegisterSource(state::RegisterSource { source: Some(source), first_key: Some(key) }))
            .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "key_id": issued.id, "api_key": issued.secret_text, "commit_index": index})),
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
    let id = object_id(&v)?;
    if !v.get("schema").is_some_and(Value::is_object) {
        return Err(ApiError::bad_request("`schema` must be a JSON Schema object"));
    }
    let ds =
        state::Dataset { id: id.into(), definition_json: bytes.to_vec(), version: 1, defined_at_ms: super::now_ms() };
    let index = write(&state, &who, Kind::DefineDataset(state::DefineDataset { dataset: Some(ds) })).await?;
    Ok((StatusCode::CREATED, Json(json!({"id": id, "version": 1, "commit_index": index}))))
}

async fn load_dataset(state: &AppState, id: &str) -> ApiResult<(state::Dataset, Value)> {
    let ds = super::lookup_fresh::<state::Dataset>(state, &tables::dataset(id))
        .await?
        .ok_or_else(|| ApiError::unknown_dataset(id))?;
    let def: Value = serde_json::from_slice(&ds.definition_json).map_err(ApiError::internal)?;
    Ok((ds, def))
}

pub async fn get_dataset(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    auth::authenticate(&state, &headers).await?;
    let (ds, def) = load_dataset(&state, &id).await?;
    Ok(Json(
        json!({"id": ds.id, "definition": def, "versions": [{"version": ds.version, "defined_at_ms": ds.defined_at_ms}]}),
    ))
}

pub async fn get_schema(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    auth::authenticate(&state, &headers).await?;
    let (_, def) = load_dataset(&state, &id).await?;
    Ok(Json(def.get("schema").cloned().unwrap_or(Value::Null)))
}
