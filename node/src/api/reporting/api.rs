//! The reporting regime's JSON endpoints (routes in `api/mod.rs`):
//! - `PUT|GET /api/v1/datasets/{id}/obligation` (admin; GET also operator, auditor, data-entry);
//! - `GET /api/v1/reporting/due` (data-entry): the reports due for the user's agency;
//! - `GET /api/v1/reporting/forms/{dataset}/{period}` (data-entry): the generated form;
//! - `PUT|GET /api/v1/reporting/drafts/{dataset}/{period}` (data-entry) `{"values": {...}}`;
//! - `POST /api/v1/reporting/submissions/{dataset}/{period}` (data-entry)
//!   `{"values": {...}, "correction_reason"?}` → 201 with the report's account and signed receipt,
//!   200 + `Idempotent-Replayed` for the same values again, 422 with the validator's messages,
//!   409 when already submitted with other values and no correction reason;
//! - `GET /api/v1/reporting/submissions/{dataset}/{period}[?agency=]`: a report's versions;
//! - `GET /api/v1/reporting/status[?dataset=&period=&format=csv]` (admin, operator, auditor).

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Body;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;
use serde_json::json;

use super::REPORT_ENTRY;
use super::REPORTING_BODY_BYTES_MAX;
use super::REPORTING_STATUS;
use super::Submitted;
use crate::api::AppState;
use crate::api::auth;
use crate::api::error::ApiError;
use crate::api::error::ApiResult;

async fn json_body(headers: &HeaderMap, body: Body) -> ApiResult<Value> {
    let bytes = crate::api::read_body(headers, body, REPORTING_BODY_BYTES_MAX).await?;
    crate::api::parse_json(headers, &bytes)
}

/// The `values` object of a draft or submission: field name → text (numbers and booleans are
/// accepted and written as text).
fn values_of(v: &Value) -> ApiResult<BTreeMap<String, String>> {
    let Some(obj) = v.get("values").and_then(Value::as_object) else {
        return Err(ApiError::bad_request("`values` must be an object of field name to value"));
    };
    obj.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            Value::Number(_) | Value::Bool(_) => Ok((k.clone(), v.to_string())),
            _ => Err(ApiError::bad_request(format!("value `{k}` must be text, a number or a boolean"))),
        })
        .collect()
}

pub async fn put_obligation(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(dataset): Path<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let who = auth::require_admin(&state, &headers).await?;
    let v = json_body(&headers, body).await?;
    Ok(Json(super::set_obligation(&state, &who, &dataset, &v).await?))
}

pub async fn get_obligation(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(dataset): Path<String>,
) -> ApiResult<Json<Value>> {
    let who = auth::authenticate(&state, &headers).await?;
    if !REPORTING_STATUS.allows(&who) && !REPORT_ENTRY.allows(&who) {
        return Err(ApiError::forbidden("this operation needs the admin, operator, auditor or data-entry role"));
    }
    let o = super::obligation(&state, &dataset)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("dataset `{dataset}` has no reporting obligation")))?;
    if who.has_role(auth::Role::DataEntry) && !o.agencies.iter().any(|a| a.agency == who.agency) {
        return Err(ApiError::forbidden(format!("agency `{}` does not report dataset `{dataset}`", who.agency)));
    }
    Ok(Json(super::obligation_json(&o)))
}

pub async fn get_due(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let who = auth::require(&state, &headers, &REPORT_ENTRY).await?;
    crate::audit::note_operation("reporting.due.read", &format!("agency/{}", who.agency));
    let rows = super::due(&state, &who).await?;
    Ok(Json(json!({"agency": who.agency, "reports": rows})))
}

pub async fn get_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((dataset, period)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let who = auth::require(&state, &headers, &REPORT_ENTRY).await?;
    let view = super::form_view(&state, &who, &dataset, &period).await?;
    Ok(Json(serde_json::to_value(view).map_err(ApiError::internal)?))
}

pub async fn put_draft(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((dataset, period)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let who = auth::require(&state, &headers, &REPORT_ENTRY).await?;
    let v = json_body(&headers, body).await?;
    Ok(Json(super::save_draft(&state, &who, &dataset, &period, values_of(&v)?).await?))
}

pub async fn get_draft(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((dataset, period)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let who = auth::require(&state, &headers, &REPORT_ENTRY).await?;
    super::get_draft(&state, &who, &dataset, &period)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no draft of `{dataset}` for {period}")))
}

pub async fn post_submission(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((dataset, period)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Response> {
    let who = auth::require(&state, &headers, &REPORT_ENTRY).await?;
    let v = json_body(&headers, body).await?;
    let reason = match v.get("correction_reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::bad_request("`correction_reason` must be text")),
    };
    let request_id = crate::api::request_id(&headers);
    match super::submit(&state, &who, &dataset, &period, values_of(&v)?, reason, request_id).await? {
        Submitted::Stored { submission, replayed } => {
            let status = if replayed { StatusCode::OK } else { StatusCode::CREATED };
            let mut resp = (status, Json(submission)).into_response();
            if replayed {
                resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            Ok(resp)
        }
        Submitted::Invalid { mut error, errors } => {
            // The records API's 422 as it is, with each problem's form field named too.
            for d in &mut error.details {
                let name = d
                    .get("field")
                    .and_then(Value::as_str)
                    .and_then(super::form::pointer_name)
                    .filter(|n| errors.fields.contains_key(n));
                d["input"] = name.map_or(Value::Null, |n| json!(n));
            }
            Err(error)
        }
    }
}

#[derive(Deserialize)]
pub struct SubmissionQuery {
    agency: Option<String>,
}

pub async fn get_submission(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((dataset, period)): Path<(String, String)>,
    Query(q): Query<SubmissionQuery>,
) -> ApiResult<Json<Value>> {
    let who = auth::authenticate(&state, &headers).await?;
    let agency = if REPORT_ENTRY.allows(&who) {
        who.agency.clone()
    } else if REPORTING_STATUS.allows(&who) {
        q.agency
            .filter(|a| crate::api::valid_id(a))
            .ok_or_else(|| ApiError::bad_request("name the agency with `?agency=`"))?
    } else {
        return Err(ApiError::forbidden("this operation needs the admin, operator, auditor or data-entry role"));
    };
    if !crate::api::valid_id(&dataset) || period.len() > 16 {
        return Err(ApiError::not_found("no such report"));
    }
    super::get_submission(&state, &dataset, &agency, &period)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no report of `{dataset}` for {period} from agency `{agency}`")))
}

#[derive(Deserialize)]
pub struct StatusQuery {
    dataset: Option<String>,
    period: Option<String>,
    format: Option<String>,
}

pub async fn get_status(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<StatusQuery>,
) -> ApiResult<Response> {
    auth::require(&state, &headers, &REPORTING_STATUS).await?;
    crate::audit::note_operation("reporting.status.read", &format!("dataset/{}", q.dataset.as_deref().unwrap_or("*")));
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => return Err(ApiError::bad_request(format!("unknown format `{other}` (json or csv)"))),
    };
    let rows = super::status(
        &state,
        q.dataset.as_deref().filter(|d| !d.is_empty()),
        q.period.as_deref().filter(|p| !p.is_empty()),
    )
    .await?;
    // The answer stops at STATUS_ROWS_MAX rows; say so rather than look complete.
    let truncated = rows.len() >= super::STATUS_ROWS_MAX;
    if csv {
        let headers = [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"reporting-status.csv\""),
        ];
        let mut resp = (headers, super::status_csv(&rows)).into_response();
        resp.headers_mut().insert("x-truncated", HeaderValue::from_static(if truncated { "true" } else { "false" }));
        return Ok(resp);
    }
    let count = |s: super::ReportStatus| rows.iter().filter(|r| r.status == s).count();
    let summary = json!({
        "submitted": count(super::ReportStatus::Submitted), "draft": count(super::ReportStatus::Draft),
        "missing": count(super::ReportStatus::Missing), "late": count(super::ReportStatus::Late),
        "submitted_late": rows.iter().filter(|r| r.status == super::ReportStatus::Submitted && r.late).count(),
    });
    Ok(Json(json!({"summary": summary, "reports": rows, "truncated": truncated})).into_response())
}
