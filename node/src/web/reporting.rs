//! The reporting-regime pages (issue 9; C2(b), Art. 4.2(b)): a data-entry user's "Reports due",
//! the report form generated from the dataset's schema (save a draft, submit, correct), the
//! receipt shown after a submission, and the admin's "Reporting status" with its CSV export.
//!
//! The pages call the same service functions as the JSON API (`crate::api::reporting`), so the
//! access checks, the validator and its messages are the API's. A refused submission re-renders
//! the form with each message next to its field and a summary at the top linking to the fields
//! (WCAG 3.3.1, 3.3.3); that needs no JavaScript.

use std::collections::BTreeMap;

use askama::Template;
use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::Uri;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Redirect;
use axum::response::Response;
use axum::routing::get;
use serde_json::Value;

use super::Ctx;
use super::PageError;
use super::html;
use super::tk;
use super::with_status;
use crate::api::AppState;
use crate::api::auth;
use crate::api::auth::Role;
use crate::api::error::ApiError;
use crate::api::reporting as rep;
use crate::api::reporting::ReportRow;
use crate::api::reporting::ReportStatus;
use crate::api::reporting::form::Field;

const ENTRY: &[Role] = &[Role::DataEntry];
const STATUS_ROLES: &[Role] = &[Role::Admin, Role::Operator, Role::Auditor];
const ADMIN: &[Role] = &[Role::Admin];
/// Datasets offered in the obligation form.
const DATASETS_LISTED_MAX: usize = 1_000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui/reporting/due", get(due))
        .route("/ui/reporting/status", get(status))
        .route("/ui/reporting/obligations", get(obligations).post(obligation_post))
        .route("/ui/reporting/report/{dataset}/{period}", get(form_page).post(form_post))
        .route("/ui/reporting/report/{dataset}/{period}/receipt", get(receipt))
        .route("/ui/reporting/report/{dataset}/{period}/receipt.json", get(receipt_json))
}

/// The principal of the page's session (the same check every API call makes).
async fn principal(state: &AppState, ctx: &Ctx) -> Result<auth::Principal, ApiError> {
    auth::authenticate(state, &ctx.headers).await
}

fn status_key(s: ReportStatus) -> &'static str {
    match s {
        ReportStatus::Submitted => tk("reporting.status.submitted"),
        ReportStatus::Draft => tk("reporting.status.draft"),
        ReportStatus::Missing => tk("reporting.status.missing"),
        ReportStatus::Late => tk("reporting.status.late"),
    }
}

fn report_href(dataset: &str, period: &str) -> String {
    format!("/ui/reporting/report/{dataset}/{period}")
}

/// A report row with the texts a page shows.
pub struct RowView {
    pub row: ReportRow,
    pub href: String,
    pub status_text: &'static str,
    /// CSS class of the status: ok, bad, warn or none.
    pub status_class: &'static str,
}

fn row_view(ctx: &Ctx, row: ReportRow) -> RowView {
    let status_class = match (row.status, row.late) {
        (ReportStatus::Late, _) | (ReportStatus::Submitted, true) => "bad",
        (ReportStatus::Submitted, false) => "ok",
        _ if row.reminder => "warn",
        _ => "",
    };
    RowView {
        href: report_href(&row.dataset, &row.period),
        status_text: ctx.t(status_key(row.status)),
        status_class,
        row,
    }
}

#[derive(Template)]
#[template(path = "reporting/due.html")]
struct DuePage {
    ctx: Ctx,
    open: Vec<RowView>,
    done: Vec<RowView>,
}

pub async fn due(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Result<Response, PageError> {
    let ctx = Ctx::load(&state, &headers, &uri, ENTRY).await?;
    let rows = match principal(&state, &ctx).await {
        Ok(p) => rep::due(&state, &p).await,
        Err(e) => Err(e),
    };
    let rows = match rows {
        Ok(r) => r,
        Err(e) => return Err(PageError::ApiIn(Box::new(ctx), e)),
    };
    let (done, open): (Vec<ReportRow>, Vec<ReportRow>) =
        rows.into_iter().partition(|r| r.status == ReportStatus::Submitted);
    let open = open.into_iter().map(|r| row_view(&ctx, r)).collect();
    let done = done.into_iter().map(|r| row_view(&ctx, r)).collect();
    Ok(html(&DuePage { ctx, open, done }))
}

/// One input of the form page.
pub struct FieldView {
    /// The element id (`f<index>`: property names need not be valid ids).
    pub id: String,
    /// The form name (`v.<property>`).
    pub name: String,
    pub field: Field,
    pub value: String,
    pub errors: Vec<String>,
}

impl FieldView {
    /// Whether the field has a hint (its description or its bounds).
    fn has_hint(&self) -> bool {
        !self.field.description.is_empty() || self.field.min.is_some() || self.field.max.is_some()
    }

    fn describedby(&self) -> String {
        let mut ids = Vec::new();
        if self.has_hint() {
            ids.push(format!("{}-hint", self.id));
        }
        if !self.errors.is_empty() {
            ids.push(format!("{}-error", self.id));
        }
        ids.join(" ")
    }
}

/// A message of the summary at the top of the form: the field's id and label (empty for the whole
/// form) and the text.
pub struct SummaryItem {
    pub id: String,
    pub label: String,
    pub message: String,
}

#[derive(Template)]
#[template(path = "reporting/form.html")]
struct FormPage {
    ctx: Ctx,
    title: String,
    description: String,
    dataset: String,
    period: String,
    agency: String,
    row: RowView,
    fixed: Vec<(String, String)>,
    fields: Vec<FieldView>,
    summary: Vec<SummaryItem>,
    submitted: bool,
    reason: String,
    omitted: usize,
}

fn form_page_of(
    ctx: Ctx,
    view: rep::FormView,
    values: &BTreeMap<String, String>,
    errors: &rep::FieldErrors,
    extra: Vec<String>,
    reason: String,
) -> FormPage {
    let mut fields = Vec::new();
    let mut fixed = Vec::new();
    let mut summary = Vec::new();
    for (i, f) in view.form.fields.into_iter().enumerate() {
        if let Some(v) = &f.fixed {
            // The agency has a line of its own.
            if *v != view.row.agency {
                fixed.push((f.label.clone(), v.clone()));
            }
            continue;
        }
        let id = format!("f{i}");
        let errs = errors.fields.get(&f.name).cloned().unwrap_or_default();
        for m in &errs {
            summary.push(SummaryItem { id: id.clone(), label: f.label.clone(), message: m.clone() });
        }
        fields.push(FieldView {
            name: format!("v.{}", f.name),
            value: values.get(&f.name).cloned().unwrap_or_default(),
            errors: errs,
            id,
            field: f,
        });
    }
    for m in errors.form.iter().chain(extra.iter()) {
        summary.push(SummaryItem { id: String::new(), label: String::new(), message: m.clone() });
    }
    let submitted = view.row.status == ReportStatus::Submitted;
    FormPage {
        title: view.form.title,
        description: view.form.description,
        dataset: view.row.dataset.clone(),
        period: view.row.period.clone(),
        agency: view.row.agency.clone(),
        row: row_view(&ctx, view.row),
        fixed,
        fields,
        summary,
        submitted,
        reason,
        omitted: view.form.omitted,
        ctx,
    }
}

pub async fn form_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path((dataset, period)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let ctx = Ctx::load(&state, &headers, &uri, ENTRY).await?;
    let view = match principal(&state, &ctx).await {
        Ok(p) => rep::form_view(&state, &p, &dataset, &period).await,
        Err(e) => Err(e),
    };
    let view = match view {
        Ok(v) => v,
        Err(e) => return Err(PageError::ApiIn(Box::new(ctx), e)),
    };
    let values = view.values.clone();
    Ok(html(&form_page_of(ctx, view, &values, &rep::FieldErrors::default(), Vec::new(), String::new())))
}

/// An API refusal as a message of the form's summary (translated for the codes a user meets).
fn refusal_text(ctx: &Ctx, e: &ApiError) -> String {
    let key = match e.code {
        "already_submitted" => tk("reporting.error.already_submitted"),
        "period_not_ended" => tk("reporting.error.period_not_ended"),
        "csrf" => tk("error.csrf"),
        "unavailable" => tk("error.unavailable"),
        _ => "",
    };
    if key.is_empty() { format!("{} {}", ctx.t("error.refused"), e.message) } else { ctx.t(key).to_string() }
}

pub async fn form_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path((dataset, period)): Path<(String, String)>,
    body: Body,
) -> Result<Response, PageError> {
    let ctx = Ctx::load(&state, &headers, &uri, ENTRY).await?;
    let pairs: Vec<(String, String)> = ctx.form(&headers, body).await?;
    let p = match principal(&state, &ctx).await {
        Ok(p) => p,
        Err(e) => return Err(PageError::ApiIn(Box::new(ctx), e)),
    };
    let mut values = BTreeMap::new();
    let mut action = String::new();
    let mut reason = String::new();
    for (k, v) in pairs {
        if let Some(name) = k.strip_prefix("v.") {
            values.insert(name.to_string(), v);
        } else if k == "action" {
            action = v;
        } else if k == "correction_reason" {
            reason = v;
        }
    }
    let here = report_href(&dataset, &period);
    let lang = ctx.lang.code();
    let outcome = match action.as_str() {
        "draft" => match rep::save_draft(&state, &p, &dataset, &period, values.clone()).await {
            Ok(_) => return Ok(Redirect::to(&format!("{here}?m=saved&lang={lang}")).into_response()),
            Err(e) => Err(e),
        },
        "submit" => {
            let reason_given = Some(reason.clone()).filter(|r| !r.trim().is_empty());
            let request_id = crate::api::request_id(&headers);
            match rep::submit(&state, &p, &dataset, &period, values.clone(), reason_given, request_id).await {
                Ok(rep::Submitted::Stored { .. }) => {
                    return Ok(Redirect::to(&format!("{here}/receipt?lang={lang}")).into_response());
                }
                Ok(rep::Submitted::Invalid { errors, .. }) => Ok(errors),
                Err(e) => Err(e),
            }
        }
        _ => Err(ApiError::bad_request("unknown form action")),
    };
    let view = match rep::form_view(&state, &p, &dataset, &period).await {
        Ok(v) => v,
        Err(e) => return Err(PageError::ApiIn(Box::new(ctx), e)),
    };
    let (errors, extra) = match outcome {
        Ok(errors) => (errors, Vec::new()),
        Err(e) => (rep::FieldErrors::default(), vec![refusal_text(&ctx, &e)]),
    };
    let page = form_page_of(ctx, view, &values, &errors, extra, reason);
    Ok(with_status(StatusCode::UNPROCESSABLE_ENTITY, html(&page)))
}

#[derive(Template)]
#[template(path = "reporting/receipt.html")]
struct ReceiptPage {
    ctx: Ctx,
    title: String,
    dataset: String,
    period: String,
    submission: Value,
    receipt: Value,
    receipt_text: String,
    record_ids: Vec<String>,
    submitted_at_ms: u64,
    late: bool,
}

async fn submission_of(state: &AppState, ctx: &Ctx, dataset: &str, period: &str) -> Result<(String, Value), ApiError> {
    let p = principal(state, ctx).await?;
    // The obligation and the agency are checked as for the form.
    let view = rep::form_view(state, &p, dataset, period).await?;
    let s = rep::get_submission(state, dataset, &view.row.agency, &view.row.period)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no report of `{dataset}` for {period} has been submitted")))?;
    Ok((view.form.title, s))
}

pub async fn receipt(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path((dataset, period)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let ctx = Ctx::load(&state, &headers, &uri, ENTRY).await?;
    let (title, submission) = match submission_of(&state, &ctx, &dataset, &period).await {
        Ok(x) => x,
        Err(e) => return Err(PageError::ApiIn(Box::new(ctx), e)),
    };
    let receipt = submission["answer"]["receipt"].clone();
    let receipt_text = serde_json::to_string_pretty(&receipt).unwrap_or_default();
    let record_ids = submission["record_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    let submitted_at_ms = submission["submitted_at_ms"].as_u64().unwrap_or(0);
    let late = submission["late"] == true;
    Ok(html(&ReceiptPage {
        ctx,
        title,
        dataset,
        period,
        submission,
        receipt,
        receipt_text,
        record_ids,
        submitted_at_ms,
        late,
    }))
}

/// The signed receipt as a file (`dtm receipt verify FILE` checks it offline).
pub async fn receipt_json(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path((dataset, period)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let ctx = Ctx::load(&state, &headers, &uri, ENTRY).await?;
    let (_, submission) = match submission_of(&state, &ctx, &dataset, &period).await {
        Ok(x) => x,
        Err(e) => return Err(PageError::ApiIn(Box::new(ctx), e)),
    };
    let text = serde_json::to_string_pretty(&submission["answer"]).unwrap_or_default();
    let mut resp = (StatusCode::OK, text).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"receipt-{dataset}-{period}.json\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

#[derive(Template)]
#[template(path = "reporting/status.html")]
struct StatusPage {
    ctx: Ctx,
    datasets: Vec<String>,
    dataset: String,
    period: String,
    rows: Vec<RowView>,
    counts: [(&'static str, usize); 4],
    csv_href: String,
    error: Option<String>,
}

pub async fn status(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Result<Response, PageError> {
    let ctx = Ctx::load(&state, &headers, &uri, STATUS_ROLES).await?;
    let dataset = ctx.param("dataset").unwrap_or_default();
    let period = ctx.param("period").unwrap_or_default();
    let datasets = match rep::obligations(&state) {
        Ok(o) => o.into_iter().map(|o| o.dataset).collect(),
        Err(e) => return Err(PageError::ApiIn(Box::new(ctx), e)),
    };
    let (rows, error) = match rep::status(
        &state,
        Some(dataset.as_str()).filter(|d| !d.is_empty()),
        Some(period.as_str()).filter(|p| !p.is_empty()),
    )
    .await
    {
        Ok(rows) => (rows, None),
        Err(e) if e.status.is_client_error() => (Vec::new(), Some(format!("{} {}", ctx.t("error.refused"), e.message))),
        Err(e) => return Err(PageError::ApiIn(Box::new(ctx), e)),
    };
    let count = |s: ReportStatus| rows.iter().filter(|r| r.status == s).count();
    let counts = [
        (tk("reporting.status.submitted"), count(ReportStatus::Submitted)),
        (tk("reporting.status.draft"), count(ReportStatus::Draft)),
        (tk("reporting.status.missing"), count(ReportStatus::Missing)),
        (tk("reporting.status.late"), count(ReportStatus::Late)),
    ];
    let mut q = vec![("format", "csv".to_string())];
    if !dataset.is_empty() {
        q.push(("dataset", dataset.clone()));
    }
    if !period.is_empty() {
        q.push(("period", period.clone()));
    }
    let csv_href = format!("/api/v1/reporting/status?{}", serde_urlencoded::to_string(&q).unwrap_or_default());
    let rows = rows.into_iter().map(|r| row_view(&ctx, r)).collect();
    Ok(html(&StatusPage { ctx, datasets, dataset, period, rows, counts, csv_href, error }))
}

/// An obligation as the obligations page lists it.
pub struct ObligationRow {
    pub dataset: String,
    pub agencies: String,
    pub period_type: String,
    pub deadline_days: u32,
    pub reminder_days: u32,
    pub first_period: String,
    pub active: bool,
}

/// The values of the obligation form (as typed, to show them again after a refusal).
#[derive(serde::Deserialize, Default)]
pub struct ObligationForm {
    #[serde(default)]
    dataset: String,
    #[serde(default)]
    agencies: String,
    #[serde(default)]
    period_type: String,
    #[serde(default)]
    deadline_days: String,
    #[serde(default)]
    reminder_days: String,
    #[serde(default)]
    first_period: String,
    #[serde(default)]
    agency_field: String,
    #[serde(default)]
    period_field: String,
}

#[derive(Template)]
#[template(path = "reporting/obligations.html")]
struct ObligationsPage {
    ctx: Ctx,
    rows: Vec<ObligationRow>,
    datasets: Vec<String>,
    form: ObligationForm,
    error: Option<String>,
}

/// The obligations page, or the context back with the error (for an error page).
fn obligations_page(
    state: &AppState,
    ctx: Ctx,
    form: ObligationForm,
    error: Option<String>,
) -> Result<ObligationsPage, (Box<Ctx>, ApiError)> {
    let listed = rep::obligations(state).and_then(|o| {
        let ds = state
            .node
            .reader
            .scan(dtm_cluster::tables::DATASET, None, DATASETS_LISTED_MAX)
            .map_err(ApiError::internal)?;
        Ok((o, ds))
    });
    let (obligations, datasets) = match listed {
        Ok(x) => x,
        Err(e) => return Err((Box::new(ctx), e)),
    };
    let rows = obligations
        .into_iter()
        .map(|o| ObligationRow {
            agencies: o.agencies.iter().map(|a| format!("{} ({})", a.agency, a.source)).collect::<Vec<_>>().join(", "),
            dataset: o.dataset,
            period_type: o.period_type,
            deadline_days: o.deadline_days,
            reminder_days: o.reminder_days,
            first_period: o.first_period,
            active: o.active,
        })
        .collect();
    let datasets = datasets
        .into_iter()
        .filter_map(|(_, v)| <dtm_model::state::Dataset as prost::Message>::decode(v.as_slice()).ok())
        .map(|d| d.id)
        .collect();
    Ok(ObligationsPage { ctx, rows, datasets, form, error })
}

/// `GET /ui/reporting/obligations` (admin): every obligation and a form to set one.
pub async fn obligations(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Result<Response, PageError> {
    let ctx = Ctx::load(&state, &headers, &uri, ADMIN).await?;
    let form = ObligationForm {
        dataset: ctx.param("dataset").unwrap_or_default(),
        period_type: "month".into(),
        deadline_days: "15".into(),
        reminder_days: "5".into(),
        ..Default::default()
    };
    obligations_page(&state, ctx, form, None).map(|page| html(&page)).map_err(|(ctx, e)| PageError::ApiIn(ctx, e))
}

/// `POST /ui/reporting/obligations` (admin): sets an obligation through the API's own function.
pub async fn obligation_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Response, PageError> {
    let ctx = Ctx::load(&state, &headers, &uri, ADMIN).await?;
    let form: ObligationForm = ctx.form(&headers, body).await?;
    let days = |t: &str| -> Value {
        match t.trim().parse::<u64>() {
            Ok(n) => Value::from(n),
            Err(_) if t.trim().is_empty() => Value::Null,
            Err(_) => Value::String(t.to_string()),
        }
    };
    let text = |t: &str| if t.trim().is_empty() { Value::Null } else { Value::String(t.trim().to_string()) };
    let agencies: Vec<Value> = form
        .agencies
        .split([',', ' ', '\n', '\r', ';'])
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| match a.split_once('=') {
            Some((agency, source)) => serde_json::json!({"agency": agency, "source": source}),
            None => Value::String(a.to_string()),
        })
        .collect();
    let v = serde_json::json!({
        "agencies": agencies, "period_type": form.period_type, "deadline_days": days(&form.deadline_days),
        "reminder_days": days(&form.reminder_days), "first_period": text(&form.first_period),
        "agency_field": text(&form.agency_field), "period_field": text(&form.period_field),
    });
    let result = match principal(&state, &ctx).await {
        Ok(p) => rep::set_obligation(&state, &p, &form.dataset, &v).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => {
            let q = serde_urlencoded::to_string([
                ("dataset", form.dataset.as_str()),
                ("m", "saved"),
                ("lang", ctx.lang.code()),
            ])
            .unwrap_or_default();
            Ok(Redirect::to(&format!("/ui/reporting/status?{q}")).into_response())
        }
        Err(e) => {
            let message = refusal_text(&ctx, &e);
            let page =
                obligations_page(&state, ctx, form, Some(message)).map_err(|(ctx, e)| PageError::ApiIn(ctx, e))?;
            Ok(with_status(StatusCode::UNPROCESSABLE_ENTITY, html(&page)))
        }
    }
}
