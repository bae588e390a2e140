//! The catalog (F1, C5): datasets with their schema versions, metadata, and JSON Schema and XSD
//! downloads; sources with their connection statistics (C4).

use askama::Template;
use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::Uri;
use axum::response::Response;
use dtm_cluster::tables;
use dtm_model::state as st;
use serde_json::Value;

use super::ANY_ROLE;
use super::Ctx;
use super::PageError;
use super::for_web;
use super::html;
use super::query;
use crate::api::AppState;
use crate::api::auth::Role;
use crate::api::error::ApiError;

/// Datasets and sources listed on one page: a catalog is a few hundred entries.
const LISTED_MAX: usize = 1_000;
const SOURCE_ROLES: &[Role] = &[Role::Admin, Role::Auditor];

pub struct DatasetRow {
    pub id: String,
    pub title: String,
    pub version: u32,
    pub defined_at_ms: u64,
}

#[derive(Template)]
#[template(path = "catalog/list.html")]
struct ListPage {
    ctx: Ctx,
    datasets: Vec<DatasetRow>,
}

pub async fn list(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Result<Response, PageError> {
    let ctx = Ctx::load(&state, &headers, &uri, ANY_ROLE).await?;
    let rows = state.node.reader.scan(tables::DATASET, None, LISTED_MAX).map_err(ApiError::internal)?;
    let datasets = rows
        .into_iter()
        .filter_map(|(_, v)| prost::Message::decode(v.as_slice()).ok())
        .map(|d: st::Dataset| {
            let def: Value = serde_json::from_slice(&d.definition_json).unwrap_or(Value::Null);
            DatasetRow {
                title: def["title"].as_str().unwrap_or(&d.id).to_string(),
                id: d.id,
                version: d.version,
                defined_at_ms: d.defined_at_ms,
            }
        })
        .collect();
    Ok(html(&ListPage { ctx, datasets }))
}

/// One field of a dataset's schema.
pub struct FieldRow {
    pub name: String,
    pub kind: String,
    pub required: bool,
    pub description: String,
    pub unit: String,
}

#[derive(Template)]
#[template(path = "catalog/dataset.html")]
struct DatasetPage {
    ctx: Ctx,
    id: String,
    version: u64,
    meta: Value,
    fields: Vec<FieldRow>,
    versions: Vec<(u64, u64, String)>,
    measures: Vec<(String, String, String)>,
    stats: (u64, u64, u64),
}

pub async fn dataset(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let ctx = Ctx::load(&state, &headers, &uri, ANY_ROLE).await?;
    let answer = for_web::get_dataset(State(state), ctx.headers.clone(), Path(id.clone()), query(&ctx)?).await;
    let v = match answer {
        Ok(j) => j.0,
        Err(e) => return Err(PageError::ApiIn(Box::new(ctx), e)),
    };
    let meta = v["metadata"].clone();
    let schema = &v["definition"]["schema"];
    let required: Vec<&str> =
        schema["required"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let units = &meta["units"];
    let fields = schema["properties"]
        .as_object()
        .map(|props| {
            props
                .iter()
                .map(|(name, p)| FieldRow {
                    name: name.clone(),
                    kind: match &p["type"] {
                        Value::String(s) => s.clone(),
                        Value::Array(a) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" | "),
                        _ => "–".into(),
                    },
                    required: required.contains(&name.as_str()),
                    description: p["description"].as_str().or(p["title"].as_str()).unwrap_or("").to_string(),
                    unit: units[name].as_str().unwrap_or("").to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    let versions = v["versions"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    (
                        x["version"].as_u64().unwrap_or(0),
                        x["defined_at_ms"].as_u64().unwrap_or(0),
                        x["defined_by"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let measures = meta["measures"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, op)| {
                    (k.clone(), op.as_str().unwrap_or("").to_string(), units[k].as_str().unwrap_or("").to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let version = v["version"].as_u64().unwrap_or(0);
    let stats = (
        v["duplicates"].as_u64().unwrap_or(0),
        v["conflicts"].as_u64().unwrap_or(0),
        v["corrections"].as_u64().unwrap_or(0),
    );
    Ok(html(&DatasetPage { ctx, id, version, meta, fields, versions, measures, stats }))
}

impl DatasetPage {
    /// Text of a metadata field (lists joined with commas).
    fn meta_text(&self, name: &str) -> String {
        match &self.meta[name] {
            Value::Array(a) => a.iter().map(|x| self.ctx.val(x)).collect::<Vec<_>>().join(", "),
            Value::Null => "–".into(),
            Value::String(s) if s.is_empty() => "–".into(),
            other => self.ctx.val(other),
        }
    }
}

pub struct SourceRow {
    pub id: String,
    pub name: String,
    pub agency: String,
    pub form: String,
    pub registered_at_ms: u64,
    pub removed: bool,
}

/// Every registered source (removed ones too), from the replicated tables.
pub(super) fn sources_of(state: &AppState) -> Result<Vec<SourceRow>, ApiError> {
    let rows = state.node.reader.scan(tables::SOURCE, None, LISTED_MAX).map_err(ApiError::internal)?;
    Ok(rows
        .into_iter()
        .filter_map(|(_, v)| prost::Message::decode(v.as_slice()).ok())
        .map(|s: st::Source| SourceRow {
            id: s.id,
            name: s.name,
            agency: s.agency,
            form: s.form,
            registered_at_ms: s.registered_at_ms,
            removed: s.removed_at_ms != 0,
        })
        .collect())
}

#[derive(Template)]
#[template(path = "catalog/sources.html")]
struct SourcesPage {
    ctx: Ctx,
    sources: Vec<SourceRow>,
}

pub async fn sources(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Result<Response, PageError> {
    let ctx = Ctx::load(&state, &headers, &uri, SOURCE_ROLES).await?;
    let sources = sources_of(&state)?;
    Ok(html(&SourcesPage { ctx, sources }))
}

#[derive(Template)]
#[template(path = "catalog/source.html")]
struct SourcePage {
    ctx: Ctx,
    id: String,
    from: String,
    to: String,
    days: Vec<Value>,
    totals: Value,
}

pub async fn source(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let ctx = Ctx::load(&state, &headers, &uri, SOURCE_ROLES).await?;
    let answer = for_web::connections(State(state), ctx.headers.clone(), Path(id.clone()), query(&ctx)?).await;
    let v = match answer {
        Ok(j) => j.0,
        Err(e) => return Err(PageError::ApiIn(Box::new(ctx), e)),
    };
    Ok(html(&SourcePage {
        from: v["from"].as_str().unwrap_or("").to_string(),
        to: v["to"].as_str().unwrap_or("").to_string(),
        days: v["days"].as_array().cloned().unwrap_or_default(),
        totals: v["totals"].clone(),
        ctx,
        id,
    }))
}

impl SourcePage {
    fn n(&self, v: &Value) -> String {
        self.ctx.int(v.as_u64().unwrap_or(0))
    }
    fn causes(&self, v: &Value) -> String {
        v.as_object()
            .map(|m| m.iter().map(|(k, n)| format!("{k}: {}", self.n(n))).collect::<Vec<_>>().join(", "))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "–".into())
    }
}
