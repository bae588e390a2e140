//! Analysis (F2, F4): choose a dataset, a period, an interval and dimensions; the aggregates come
//! from the API's handler (`GET /datasets/{id}/aggregates`) and are shown as a table and as an SVG
//! bar chart with a title and a description, the table beside it carrying the same numbers for
//! screen readers. Downloads are the API's exports (CSV, XLSX, JSON, XML, DOCX) with the same query.

use askama::Template;
use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::Uri;
use axum::response::Response;
use dtm_cluster::tables;
use dtm_model::state as st;
use serde_json::Value;

use super::Ctx;
use super::FormErrors;
use super::PageError;
use super::for_web;
use super::html;
use super::json_of;
use super::query_str;
use crate::api::AppState;
use crate::api::auth::Role;
use crate::api::error::ApiError;

const ROLES: &[Role] = &[Role::Admin, Role::Analyst, Role::Auditor];
const DATASETS_LISTED_MAX: usize = 1_000;
/// Bars drawn; the table holds every row.
const CHART_BARS_MAX: usize = 40;
pub const INTERVALS: [&str; 6] = ["hour", "day", "week", "month", "quarter", "year"];
pub const FORMATS: [&str; 5] = ["csv", "xlsx", "json", "xml", "docx"];

/// One bar of the chart, in SVG user units.
pub struct Bar {
    pub label: String,
    pub value: String,
    pub y: u32,
    pub width: u32,
}

#[derive(Template)]
#[template(path = "analysis.html")]
struct AnalysisPage {
    ctx: Ctx,
    datasets: Vec<(String, String)>,
    dataset: String,
    interval: String,
    from: String,
    to: String,
    dimensions: Vec<(String, bool)>,
    measures: Vec<String>,
    measure: String,
    units: Value,
    /// Whether the form was submitted (a result or errors to show).
    asked: bool,
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
    bars: Vec<Bar>,
    chart_height: u32,
    more_rows: usize,
    as_of_index: u64,
    downloads: Vec<(&'static str, String)>,
    errors: FormErrors,
}

impl AnalysisPage {
    fn interval_name(&self, i: &str) -> &'static str {
        match i {
            "hour" => self.ctx.t("analysis.hour"),
            "day" => self.ctx.t("analysis.day"),
            "week" => self.ctx.t("analysis.week"),
            "month" => self.ctx.t("analysis.month"),
            "quarter" => self.ctx.t("analysis.quarter"),
            _ => self.ctx.t("analysis.year"),
        }
    }
    fn unit_of(&self, m: &str) -> String {
        self.units[m].as_str().map(|u| format!(" ({u})")).unwrap_or_default()
    }
}

pub async fn page(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Result<Response, PageError> {
    let ctx = Ctx::load(&state, &headers, &uri, ROLES).await?;
    let rows = state.node.reader.scan(tables::DATASET, None, DATASETS_LISTED_MAX).map_err(ApiError::internal)?;
    let datasets: Vec<(String, String)> = rows
        .into_iter()
        .filter_map(|(_, v)| prost::Message::decode(v.as_slice()).ok())
        .map(|d: st::Dataset| {
            let def: Value = serde_json::from_slice(&d.definition_json).unwrap_or(Value::Null);
            let title = def["title"].as_str().unwrap_or(&d.id).to_string();
            (d.id, title)
        })
        .collect();
    let asked = ctx.param("dataset").is_some();
    let dataset = ctx.param("dataset").or_else(|| datasets.first().map(|d| d.0.clone())).unwrap_or_default();
    let interval = ctx.param("interval").filter(|i| INTERVALS.contains(&i.as_str())).unwrap_or_else(|| "month".into());
    let from = ctx.param("from").unwrap_or_default();
    let to = ctx.param("to").unwrap_or_default();
    let chosen_dims = ctx.params("dim");
    let mut page = AnalysisPage {
        datasets,
        dataset: dataset.clone(),
        interval: interval.clone(),
        from: from.clone(),
        to: to.clone(),
        dimensions: Vec::new(),
        measures: Vec::new(),
        measure: String::new(),
        units: Value::Null,
        asked,
        columns: Vec::new(),
        rows: Vec::new(),
        bars: Vec::new(),
        chart_height: 0,
        more_rows: 0,
        as_of_index: 0,
        downloads: Vec::new(),
        errors: FormErrors::default(),
        ctx,
    };
    if dataset.is_empty() {
        return Ok(html(&page));
    }
    // The dataset's dimensions and measures, for the form.
    let no_query = query_str("")?;
    let meta =
        match for_web::get_dataset(State(state.clone()), page.ctx.headers.clone(), Path(dataset.clone()), no_query)
            .await
        {
            Ok(j) => j.0["metadata"].clone(),
            Err(e) => return Err(PageError::ApiIn(Box::new(page.ctx), e)),
        };
    page.dimensions = meta["dimensions"]
        .as_array()
        .map(|a| {
            a.iter().filter_map(Value::as_str).map(|d| (d.to_string(), chosen_dims.iter().any(|c| c == d))).collect()
        })
        .unwrap_or_default();
    page.measures = meta["measures"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    page.units = meta["units"].clone();
    let wanted = page.ctx.param("measure");
    page.measure = wanted
        .filter(|m| m == "count" || page.measures.contains(m))
        .or_else(|| page.measures.first().cloned())
        .unwrap_or_else(|| "count".into());
    if !asked {
        return Ok(html(&page));
    }
    let group_by: Vec<&str> = page.dimensions.iter().filter(|(_, on)| *on).map(|(d, _)| d.as_str()).collect();
    let mut pairs: Vec<(&str, String)> = vec![("interval", interval.clone())];
    if !group_by.is_empty() {
        pairs.push(("group_by", group_by.join(",")));
    }
    if !from.is_empty() {
        pairs.push(("from", from.clone()));
    }
    if !to.is_empty() {
        pairs.push(("to", to.clone()));
    }
    let api_query = serde_urlencoded::to_string(&pairs).map_err(ApiError::internal)?;
    let answer = crate::api::export::get_aggregates(
        State(state.clone()),
        page.ctx.headers.clone(),
        Path(dataset.clone()),
        query_str(&api_query)?,
        query_str("")?,
        query_str(&api_query)?,
        query_str("")?,
    )
    .await;
    let doc = match answer {
        Ok(resp) => json_of(resp).await?,
        Err(e) => {
            let field = match e.details.first().and_then(|d| d["field"].as_str()) {
                Some("/from") => "from",
                Some("/to") => "to",
                Some("/group_by") => "dim-0",
                _ => "interval",
            };
            page.errors = FormErrors::api(&page.ctx, field, &e);
            return Ok(html(&page));
        }
    };
    page.as_of_index = doc["as_of_index"].as_u64().unwrap_or(0);
    let mut columns = vec!["bucket".to_string()];
    columns.extend(group_by.iter().map(|d| d.to_string()));
    columns.push("count".into());
    columns.extend(page.measures.iter().cloned());
    let rows: Vec<Value> = doc["rows"].as_array().cloned().unwrap_or_default();
    page.rows = rows.iter().map(|r| columns.iter().map(|c| r[c].clone()).collect()).collect();
    // The chart: one bar per row (the first `CHART_BARS_MAX`), scaled to the largest value.
    let values: Vec<f64> = rows.iter().map(|r| r[&page.measure].as_f64().unwrap_or(0.0)).collect();
    let max = values.iter().cloned().fold(0.0_f64, f64::max);
    page.bars = rows
        .iter()
        .zip(&values)
        .take(CHART_BARS_MAX)
        .enumerate()
        .map(|(i, (r, v))| {
            let mut label = r["bucket"].as_str().unwrap_or("").to_string();
            for d in &group_by {
                label.push_str(" · ");
                label.push_str(&page.ctx.val(&r[*d]));
            }
            Bar {
                label,
                value: page.ctx.num(*v),
                y: 10 + i as u32 * 26,
                width: if max > 0.0 { ((v.max(0.0) / max) * 300.0).round() as u32 } else { 0 },
            }
        })
        .collect();
    page.chart_height = 20 + page.bars.len() as u32 * 26;
    page.more_rows = rows.len().saturating_sub(CHART_BARS_MAX);
    page.columns = columns;
    page.downloads =
        FORMATS.iter().map(|f| (*f, format!("/api/v1/datasets/{dataset}/aggregates?format={f}&{api_query}"))).collect();
    Ok(html(&page))
}
