//! The reporting regime (issue 9; C2(b), Circular Art. 4.2(b): entry on the system under the
//! reporting regime). An admin gives a dataset an obligation (which agencies report, monthly,
//! quarterly or yearly, by how many days after the period, with how many days of reminder); a
//! data-entry user sees the reports due for their agency, fills a form generated from the
//! dataset's schema (`form.rs`), saves drafts (replicated, so any node serves them) and submits.
//! A submission is one record through the same path as `POST /datasets/{id}/records`
//! (`records::prepare` and `records::commit_amended`: the source's actors, the same validator and
//! messages, the same audit and lineage, channel `web`) under the idempotency key
//! `report:<dataset>:<agency>:<period>:v<version>`, so a double click stores nothing twice; a later
//! change is a correction (a new version of the record, `versions.rs`'s machinery). Admins see
//! per obligation, agency and period whether a report is submitted, a draft, missing or late.
//!
//! The service functions here are shared by the JSON API (`api.rs`) and the web pages
//! (`crate::web::reporting`); both check access the same way.

pub mod api;
pub mod form;
pub mod period;

use std::collections::BTreeMap;

use axum::http::StatusCode;
use dtm_cluster::lineage;
use dtm_cluster::reporting as tables;
use dtm_model::state;
use dtm_model::state::command_response::Result as Reply;
use serde::Serialize;
use serde_json::Value;
use serde_json::json;
use sha2::Digest;
use sha2::Sha256;

use self::period::Period;
use self::period::PeriodType;
use super::AppState;
use super::auth::Access;
use super::auth::Principal;
use super::auth::Role;
use super::error::ApiError;
use super::error::ApiResult;
use super::records;

/// Filling in and submitting reports: data-entry users.
pub const REPORT_ENTRY: Access = Access { roles: &[Role::DataEntry], scopes: &[], what: "the data-entry role" };
/// Seeing who has reported: admins, operators and auditors.
pub const REPORTING_STATUS: Access = Access {
    roles: &[Role::Admin, Role::Operator, Role::Auditor],
    scopes: &[],
    what: "the admin, operator or auditor role",
};

/// Obligations one listing reads at most.
pub const OBLIGATIONS_LISTED_MAX: usize = 1_000;
/// Periods of one obligation listed at most (the most recent ones).
pub const PERIODS_LISTED_MAX: usize = 24;
/// Versions of one report listed at most (the oldest ones; `versions_truncated` says when there
/// are more).
pub const VERSIONS_LISTED_MAX: usize = 240;
/// Rows of one status answer at most.
pub const STATUS_ROWS_MAX: usize = 10_000;
/// Deadlines and reminders at most a year after the period.
pub const DEADLINE_DAYS_MAX: u32 = 366;
/// Body of an obligation, a draft or a submission.
pub const REPORTING_BODY_BYTES_MAX: usize = 64 * 1024;
/// Longest correction reason.
pub const CORRECTION_REASON_BYTES_MAX: usize = 1_000;
const DAY_MS: u64 = 86_400_000;

/// Where one report stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportStatus {
    /// Submitted (possibly after its deadline: see `late`).
    Submitted,
    /// Not submitted, a draft saved, the deadline not passed.
    Draft,
    /// Nothing submitted yet, the deadline not passed.
    Missing,
    /// Not submitted and the deadline has passed.
    Late,
}

impl ReportStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportStatus::Submitted => "submitted",
            ReportStatus::Draft => "draft",
            ReportStatus::Missing => "missing",
            ReportStatus::Late => "late",
        }
    }
}

/// One report (dataset × agency × period) as a due list or a status table shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ReportRow {
    pub dataset: String,
    pub title: String,
    pub agency: String,
    pub period: String,
    pub period_type: &'static str,
    pub period_start: String,
    pub period_end: String,
    pub deadline: String,
    pub deadline_ms: u64,
    pub status: ReportStatus,
    /// Submitted after the deadline, or still missing after it.
    pub late: bool,
    /// Not submitted and the deadline is within the obligation's reminder days.
    pub reminder: bool,
    /// Whole days until the deadline (negative once passed).
    pub days_left: i64,
    pub draft_saved_at: Option<String>,
    pub draft_saved_by: Option<String>,
    pub submitted_at: Option<String>,
    pub submitted_by: Option<String>,
    /// The same times in milliseconds (0: none), for pages that format them per language.
    pub draft_saved_at_ms: u64,
    pub submitted_at_ms: u64,
    pub version: u32,
}

/// What a form page needs: the form, the values to show, and where the report stands.
#[derive(Debug, Clone, Serialize)]
pub struct FormView {
    pub form: form::Form,
    pub row: ReportRow,
    /// The draft's values, or the submitted record's as texts, or nothing.
    pub values: BTreeMap<String, String>,
    pub submission: Option<Value>,
}

/// A refused submission whose messages belong next to the form's fields.
#[derive(Debug, Clone, Serialize, Default)]
pub struct FieldErrors {
    /// Form field name → the validator's messages for it.
    pub fields: BTreeMap<String, Vec<String>>,
    /// Messages about the whole record.
    pub form: Vec<String>,
}

/// The outcome of a submission.
pub enum Submitted {
    /// The report's account (new, or the earlier one for the same values).
    Stored { submission: Value, replayed: bool },
    /// The validator refused the values (422 in the API; the form again on the page).
    Invalid { error: ApiError, errors: FieldErrors },
}

fn now_ms() -> u64 {
    super::now_ms()
}

fn rfc3339(ms: u64) -> String {
    crate::receipt::rfc3339_ms(ms)
}

/// Everything needed to work on one report: the obligation, the period, the agency's entry.
pub struct Context {
    pub obligation: state::Obligation,
    pub period: Period,
    pub agency: state::ReportingAgency,
    pub dataset: state::Dataset,
    pub def: std::sync::Arc<dtm_dataset::CompiledDataset>,
}

pub fn period_type(o: &state::Obligation) -> ApiResult<PeriodType> {
    PeriodType::parse(&o.period_type).ok_or_else(|| ApiError::internal("stored obligation with an unknown period type"))
}

/// The periods an obligation asks for up to `now_ms`: those that have ended, from its first
/// period, newest first, at most `PERIODS_LISTED_MAX`.
pub fn reportable_periods(o: &state::Obligation, now_ms: u64) -> ApiResult<Vec<Period>> {
    let kind = period_type(o)?;
    let first = Period::parse(kind, &o.first_period)
        .ok_or_else(|| ApiError::internal("stored obligation with a bad first period"))?;
    let mut p = Period::containing(kind, now_ms).prev();
    let mut out = Vec::new();
    while p >= first && out.len() < PERIODS_LISTED_MAX && p.end_ms() <= now_ms {
        out.push(p);
        let before = p.prev();
        if before == p {
            break;
        }
        p = before;
    }
    Ok(out)
}

/// The obligation of a dataset (looked up after a read barrier when this node has none).
pub async fn obligation(state: &AppState, dataset: &str) -> ApiResult<Option<state::Obligation>> {
    if !super::valid_id(dataset) {
        return Err(ApiError::unknown_dataset(dataset));
    }
    super::lookup_fresh::<state::Obligation>(state, &tables::obligation(dataset)).await
}

fn read_msg<M: prost::Message + Default>(state: &AppState, key: &[u8]) -> ApiResult<Option<M>> {
    state.node.reader.get_msg::<M>(key).map_err(ApiError::internal)
}

/// The row of one report as this node has applied it.
pub fn report_row(
    state: &AppState,
    o: &state::Obligation,
    title: &str,
    agency: &str,
    p: Period,
    now: u64,
) -> ApiResult<ReportRow> {
    let deadline_ms = p.deadline_ms(o.deadline_days);
    let text = p.to_string();
    let sub = read_msg::<state::ReportSubmission>(state, &tables::submission(&o.dataset, agency, &text))?;
    let draft = if sub.is_none() {
        read_msg::<state::ReportDraft>(state, &tables::draft(&o.dataset, agency, &text))?
    } else {
        None
    };
    let status = match (&sub, &draft) {
        (Some(_), _) => ReportStatus::Submitted,
        (None, _) if now >= deadline_ms => ReportStatus::Late,
        (None, Some(_)) => ReportStatus::Draft,
        (None, None) => ReportStatus::Missing,
    };
    let late = match &sub {
        // A report is late by its first version; corrections do not make it late.
        Some(s) => first_submitted_at(state, o, agency, &text, s)? > deadline_ms,
        None => now >= deadline_ms,
    };
    let reminder_from = deadline_ms.saturating_sub(u64::from(o.reminder_days) * DAY_MS);
    let days_left = (deadline_ms as i64 - now as i64).div_euclid(DAY_MS as i64);
    Ok(ReportRow {
        dataset: o.dataset.clone(),
        title: title.to_string(),
        agency: agency.to_string(),
        period: text,
        period_type: period_type(o)?.as_str(),
        period_start: rfc3339(p.start_ms()),
        period_end: rfc3339(p.end_ms()),
        deadline: rfc3339(deadline_ms),
        deadline_ms,
        status,
        late,
        reminder: sub.is_none() && now >= reminder_from && now < deadline_ms,
        days_left,
        draft_saved_at: draft.as_ref().map(|d| rfc3339(d.saved_at_ms)),
        draft_saved_by: draft.as_ref().map(|d| d.username.clone()),
        submitted_at: sub.as_ref().map(|s| rfc3339(s.submitted_at_ms)),
        submitted_by: sub.as_ref().map(|s| s.username.clone()),
        draft_saved_at_ms: draft.as_ref().map_or(0, |d| d.saved_at_ms),
        submitted_at_ms: sub.as_ref().map_or(0, |s| s.submitted_at_ms),
        version: sub.as_ref().map_or(0, |s| s.version),
    })
}

fn first_submitted_at(
    state: &AppState,
    o: &state::Obligation,
    agency: &str,
    period: &str,
    latest: &state::ReportSubmission,
) -> ApiResult<u64> {
    if latest.version <= 1 {
        return Ok(latest.submitted_at_ms);
    }
    let first = read_msg::<state::ReportSubmission>(state, &tables::submission_version(&o.dataset, agency, period, 1))?;
    Ok(first.map_or(latest.submitted_at_ms, |f| f.submitted_at_ms))
}

fn dataset_title(state: &AppState, dataset: &str) -> ApiResult<String> {
    let d = read_msg::<state::Dataset>(state, &dtm_cluster::tables::dataset(dataset))?;
    Ok(d.and_then(|d| serde_json::from_slice::<Value>(&d.definition_json).ok())
        .and_then(|v| v.get("title").and_then(Value::as_str).map(str::to_string))
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| dataset.to_string()))
}

/// Every obligation as this node has applied it, by dataset id.
pub fn obligations(state: &AppState) -> ApiResult<Vec<state::Obligation>> {
    let rows = state.node.reader.scan(tables::OBLIGATION, None, OBLIGATIONS_LISTED_MAX).map_err(ApiError::internal)?;
    rows.into_iter()
        .map(|(_, v)| <state::Obligation as prost::Message>::decode(v.as_slice()).map_err(ApiError::internal))
        .collect()
}

/// The reports due for a data-entry user's agency: every active obligation that names it, every
/// period that has ended since the obligation's first one (newest first), with its status.
pub async fn due(state: &AppState, who: &Principal) -> ApiResult<Vec<ReportRow>> {
    if who.agency.is_empty() {
        return Err(ApiError::forbidden("this account has no agency"));
    }
    // Obligations set through another node a moment ago are seen here too.
    state.node.linearizable_barrier().await?;
    let now = now_ms();
    let mut rows = Vec::new();
    for o in obligations(state)? {
        if !o.active || !o.agencies.iter().any(|a| a.agency == who.agency) {
            continue;
        }
        let title = dataset_title(state, &o.dataset)?;
        for p in reportable_periods(&o, now)? {
            rows.push(report_row(state, &o, &title, &who.agency, p, now)?);
        }
    }
    // Open work first (late, then by deadline), then what is done.
    rows.sort_by_key(|r| (r.status == ReportStatus::Submitted, r.deadline_ms, r.dataset.clone()));
    Ok(rows)
}

/// The status of every report of the obligations (one dataset, or all) for one period or every
/// listed period: what an admin sees.
pub async fn status(state: &AppState, dataset: Option<&str>, period: Option<&str>) -> ApiResult<Vec<ReportRow>> {
    state.node.linearizable_barrier().await?;
    let now = now_ms();
    let obligations = match dataset {
        Some(d) => vec![
            obligation(state, d)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("dataset `{d}` has no reporting obligation")))?,
        ],
        None => obligations(state)?,
    };
    let mut rows = Vec::new();
    for o in obligations {
        let title = dataset_title(state, &o.dataset)?;
        let periods = match period {
            Some(text) => vec![Period::parse(period_type(&o)?, text).ok_or_else(|| {
                ApiError::bad_request(format!("`{text}` is not a {} period of dataset `{}`", o.period_type, o.dataset))
            })?],
            None => reportable_periods(&o, now)?,
        };
        for p in periods {
            for a in &o.agencies {
                if rows.len() >= STATUS_ROWS_MAX {
                    return Ok(rows);
                }
                rows.push(report_row(state, &o, &title, &a.agency, p, now)?);
            }
        }
    }
    Ok(rows)
}

/// The status rows as CSV (RFC 4180), with a header line. Texts a spreadsheet would run as a
/// formula (a user name may begin with `-` or `@`) get a leading `'`, as in the exports.
pub fn status_csv(rows: &[ReportRow]) -> String {
    fn cell(s: &str) -> String {
        let s = super::export::neutralise(s);
        if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.into_owned() }
    }
    let mut out = String::from(
        "dataset,agency,period,status,late,deadline,submitted_at,submitted_by,version,draft_saved_at,draft_saved_by\r\n",
    );
    for r in rows {
        let line = [
            cell(&r.dataset),
            cell(&r.agency),
            cell(&r.period),
            r.status.as_str().to_string(),
            r.late.to_string(),
            r.deadline.clone(),
            r.submitted_at.clone().unwrap_or_default(),
            cell(r.submitted_by.as_deref().unwrap_or("")),
            r.version.to_string(),
            r.draft_saved_at.clone().unwrap_or_default(),
            cell(r.draft_saved_by.as_deref().unwrap_or("")),
        ];
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

/// Checks that `who` may work on the report of `dataset` for `period_text` and gathers what it
/// needs. The agency is the user's own.
pub async fn context(state: &AppState, who: &Principal, dataset: &str, period_text: &str) -> ApiResult<Context> {
    if !who.has_role(Role::DataEntry) || who.agency.is_empty() {
        return Err(ApiError::forbidden("reports are filled in by data-entry users of an agency"));
    }
    let o = obligation(state, dataset)
        .await?
        .filter(|o| o.active)
        .ok_or_else(|| ApiError::not_found(format!("dataset `{dataset}` has no active reporting obligation")))?;
    let agency =
        o.agencies.iter().find(|a| a.agency == who.agency).cloned().ok_or_else(|| {
            ApiError::forbidden(format!("agency `{}` does not report dataset `{dataset}`", who.agency))
        })?;
    let kind = period_type(&o)?;
    let p = Period::parse(kind, period_text).ok_or_else(|| {
        ApiError::bad_request(format!("`{period_text}` is not a {} period (e.g. {})", o.period_type, example(kind)))
    })?;
    let first = Period::parse(kind, &o.first_period)
        .ok_or_else(|| ApiError::internal("stored obligation with a bad first period"))?;
    if p < first {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "period_not_required",
            format!("the obligation starts with {first}"),
        ));
    }
    if p.end_ms() > now_ms() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "period_not_ended",
            format!("the period {p} has not ended yet"),
        ));
    }
    let ds = super::catalog::dataset_version(state, dataset, None).await?;
    let def = state.catalog.compiled(&ds).map_err(ApiError::internal)?;
    Ok(Context { obligation: o, period: p, agency, dataset: ds, def })
}

fn example(kind: PeriodType) -> &'static str {
    match kind {
        PeriodType::Month => "2026-03",
        PeriodType::Quarter => "2026-Q1",
        PeriodType::Year => "2026",
    }
}

pub fn form_of(ctx: &Context) -> form::Form {
    let period = ctx.period.to_string();
    let fixed = form::Fixed {
        agency_field: &ctx.obligation.agency_field,
        agency: &ctx.agency.agency,
        period_field: &ctx.obligation.period_field,
        period: &period,
    };
    form::build(&ctx.def.def, ctx.def.version, &fixed)
}

fn texts_of_record(record: &Value) -> BTreeMap<String, String> {
    record
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The form of one report with the values to show: the draft's, else the submitted record's.
pub async fn form_view(state: &AppState, who: &Principal, dataset: &str, period_text: &str) -> ApiResult<FormView> {
    let ctx = context(state, who, dataset, period_text).await?;
    let form = form_of(&ctx);
    let period = ctx.period.to_string();
    let title = form.title.clone();
    let row = report_row(state, &ctx.obligation, &title, &ctx.agency.agency, ctx.period, now_ms())?;
    let sub = read_msg::<state::ReportSubmission>(state, &tables::submission(dataset, &ctx.agency.agency, &period))?;
    let draft = read_msg::<state::ReportDraft>(state, &tables::draft(dataset, &ctx.agency.agency, &period))?;
    let mut values = BTreeMap::new();
    if let Some(d) = &draft {
        values = serde_json::from_slice(&d.values_json).unwrap_or_default();
    } else if let Some(id) = sub.as_ref().and_then(|s| s.record_ids.first())
        && let Some(found) = super::versions::find(state, id).await?
    {
        let latest = latest_version(state, &found.record)?;
        values = texts_of_record(&serde_json::from_slice::<Value>(&latest.payload_json).unwrap_or(Value::Null));
    }
    Ok(FormView { form, row, values, submission: sub.as_ref().map(submission_json) })
}

/// The newest version of a record (following its corrections).
fn latest_version(state: &AppState, r: &state::StoredRecord) -> ApiResult<state::StoredRecord> {
    let later = lineage::later_versions(&state.node.reader, &r.id).map_err(ApiError::internal)?;
    let Some((id, _)) = later.last() else { return Ok(r.clone()) };
    Ok(lineage::find_record(&state.node.reader, id)
        .map_err(ApiError::internal)?
        .map_or_else(|| r.clone(), |f| f.record))
}

/// The JSON of a report's account (the records answer with its signed receipt included).
pub fn submission_json(s: &state::ReportSubmission) -> Value {
    json!({
        "dataset": s.dataset, "agency": s.agency, "period": s.period, "source": s.source,
        "submitted_by": s.username, "submitted_at": rfc3339(s.submitted_at_ms), "submitted_at_ms": s.submitted_at_ms,
        "version": s.version, "record_ids": s.record_ids, "commit_index": s.commit_index,
        "request_id": s.request_id, "schema_version": s.schema_version,
        "late": s.deadline_ms != 0 && s.submitted_at_ms > s.deadline_ms,
        "deadline": rfc3339(s.deadline_ms),
        "correction_reason": (!s.correction_reason.is_empty()).then_some(&s.correction_reason),
        "answer": serde_json::from_slice::<Value>(&s.answer_json).unwrap_or(Value::Null),
    })
}

async fn propose(state: &AppState, kind: state::reporting_command::Kind) -> ApiResult<u64> {
    let cmd = super::command(state, state::command::Kind::Reporting(state::ReportingCommand { kind: Some(kind) }));
    let (resp, index) = state.node.write(cmd).await?;
    match resp.result {
        Some(Reply::Applied(_)) => Ok(index),
        Some(Reply::Rejected(r)) if r.code == "already_submitted" => {
            Err(ApiError::new(StatusCode::CONFLICT, "already_submitted", r.message))
        }
        Some(Reply::Rejected(r)) => Err(super::error::rejected(&r.code, r.message)),
        _ => Err(ApiError::internal("unexpected command response")),
    }
}

fn check_values(values: &BTreeMap<String, String>) -> ApiResult<()> {
    if values.len() > form::FORM_FIELDS_MAX || values.values().any(|v| v.len() > form::VALUE_BYTES_MAX) {
        return Err(ApiError::bad_request(format!(
            "at most {} values of at most {} bytes each",
            form::FORM_FIELDS_MAX,
            form::VALUE_BYTES_MAX
        )));
    }
    Ok(())
}

fn username(who: &Principal) -> String {
    match &who.subject {
        super::auth::Subject::User { username, .. } => username.clone(),
        _ => who.name(),
    }
}

/// Saves the draft of a report (replicated: any node shows it afterwards).
pub async fn save_draft(
    state: &AppState,
    who: &Principal,
    dataset: &str,
    period_text: &str,
    values: BTreeMap<String, String>,
) -> ApiResult<Value> {
    check_values(&values)?;
    let ctx = context(state, who, dataset, period_text).await?;
    let period = ctx.period.to_string();
    crate::audit::note_operation("reporting.draft.save", &format!("report/{dataset}/{}/{period}", ctx.agency.agency));
    let draft = state::ReportDraft {
        dataset: dataset.to_string(),
        agency: ctx.agency.agency.clone(),
        period: period.clone(),
        values_json: serde_json::to_vec(&values).map_err(ApiError::internal)?,
        username: username(who),
        saved_at_ms: 0,
    };
    propose(state, state::reporting_command::Kind::SaveDraft(state::SaveReportDraft { draft: Some(draft) })).await?;
    state.node.linearizable_barrier().await?;
    let saved = read_msg::<state::ReportDraft>(state, &tables::draft(dataset, &ctx.agency.agency, &period))?
        .ok_or_else(|| ApiError::internal("the draft is missing after it was saved"))?;
    Ok(draft_json(&saved))
}

pub fn draft_json(d: &state::ReportDraft) -> Value {
    json!({
        "dataset": d.dataset, "agency": d.agency, "period": d.period,
        "values": serde_json::from_slice::<Value>(&d.values_json).unwrap_or(Value::Null),
        "saved_by": d.username, "saved_at": rfc3339(d.saved_at_ms),
    })
}

/// The draft of a report, if one is saved.
pub async fn get_draft(
    state: &AppState,
    who: &Principal,
    dataset: &str,
    period_text: &str,
) -> ApiResult<Option<Value>> {
    let ctx = context(state, who, dataset, period_text).await?;
    let key = tables::draft(dataset, &ctx.agency.agency, &ctx.period.to_string());
    Ok(super::lookup_fresh::<state::ReportDraft>(state, &key).await?.as_ref().map(draft_json))
}

/// The latest account of a report and every version of it.
pub async fn get_submission(state: &AppState, dataset: &str, agency: &str, period: &str) -> ApiResult<Option<Value>> {
    let Some(latest) =
        super::lookup_fresh::<state::ReportSubmission>(state, &tables::submission(dataset, agency, period)).await?
    else {
        return Ok(None);
    };
    let prefix = tables::submission_versions_of(dataset, agency, period);
    let rows = state.node.reader.scan(&prefix, None, VERSIONS_LISTED_MAX + 1).map_err(ApiError::internal)?;
    let versions_truncated = rows.len() > VERSIONS_LISTED_MAX;
    let mut versions = Vec::new();
    for (_, v) in rows.into_iter().take(VERSIONS_LISTED_MAX) {
        let s = <state::ReportSubmission as prost::Message>::decode(v.as_slice()).map_err(ApiError::internal)?;
        versions
            .push(json!({"version": s.version, "submitted_at": rfc3339(s.submitted_at_ms), "submitted_by": s.username,
                              "record_ids": s.record_ids, "correction_reason": s.correction_reason}));
    }
    let mut out = submission_json(&latest);
    out["versions"] = Value::Array(versions);
    out["versions_truncated"] = Value::Bool(versions_truncated);
    Ok(Some(out))
}

/// The validator's problems (the 422 details of the records API) by form field.
pub fn field_errors(form: &form::Form, details: &[Value]) -> FieldErrors {
    let mut out = FieldErrors::default();
    for d in details {
        let message = d.get("message").and_then(Value::as_str).unwrap_or("invalid value").to_string();
        let pointer = d.get("field").and_then(Value::as_str).unwrap_or("");
        match form::field_of_pointer(form, pointer) {
            Some(name) => out.fields.entry(name.to_string()).or_default().push(message),
            None => out.form.push(message),
        }
    }
    out
}

/// Submits a report: the form's values become one record that goes through the records API's
/// path with channel `web`. The first submission is version 1; with `correction_reason` an
/// already submitted report gets a new version (a correction of its record). The same values
/// submitted again (a double click, a retry) answer the earlier account and store nothing.
pub async fn submit(
    state: &AppState,
    who: &Principal,
    dataset: &str,
    period_text: &str,
    values: BTreeMap<String, String>,
    correction_reason: Option<String>,
    request_id: String,
) -> ApiResult<Submitted> {
    check_values(&values)?;
    let reason = correction_reason.map(|r| r.trim().to_string()).filter(|r| !r.is_empty());
    if reason.as_ref().is_some_and(|r| r.len() > CORRECTION_REASON_BYTES_MAX) {
        return Err(ApiError::bad_request(format!(
            "a correction reason is at most {CORRECTION_REASON_BYTES_MAX} bytes"
        )));
    }
    let ctx = context(state, who, dataset, period_text).await?;
    let form = form_of(&ctx);
    let period = ctx.period.to_string();
    let agency = ctx.agency.agency.clone();
    crate::audit::note_operation("reporting.report.submit", &format!("report/{dataset}/{agency}/{period}"));
    let record = Value::Object(form::record(&form, &values));
    let bytes = serde_json::to_vec(&record).map_err(ApiError::internal)?;
    let content_sha256 = Sha256::digest(&bytes).to_vec();
    let existing =
        super::lookup_fresh::<state::ReportSubmission>(state, &tables::submission(dataset, &agency, &period)).await?;
    let (version, amend) = match (&existing, &reason) {
        (None, _) => (1, state::Submission::default()),
        (Some(e), _) if e.content_sha256 == content_sha256 => {
            return Ok(Submitted::Stored { submission: submission_json(e), replayed: true });
        }
        (Some(e), None) => {
            let mut err = ApiError::new(
                StatusCode::CONFLICT,
                "already_submitted",
                format!(
                    "the report for {period} was submitted on {}; to change it, submit a correction with a reason",
                    rfc3339(e.submitted_at_ms)
                ),
            );
            err.details = vec![json!({"version": e.version, "submitted_at": rfc3339(e.submitted_at_ms)})];
            return Err(err);
        }
        (Some(e), Some(_)) if e.version >= dtm_cluster::reporting::REPORT_VERSIONS_MAX => {
            // Checked before anything is written: `apply` would refuse the version after the
            // corrected record was stored.
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "too_many_versions",
                format!(
                    "the report for {period} already has {} versions, the most one report may have",
                    dtm_cluster::reporting::REPORT_VERSIONS_MAX
                ),
            ));
        }
        (Some(e), Some(r)) => (e.version + 1, correction_of(state, e, r).await?),
    };
    let submitter = records::Submitter { source_id: ctx.agency.source.clone(), key_id: String::new() };
    let target = records::prepare(state, &submitter, dataset, Some(ctx.dataset.version)).await?;
    let how = records::Submit {
        idempotency_key: Some(format!("report:{dataset}:{agency}:{period}:v{version}")),
        request_id: request_id.clone(),
        channel: "web",
    };
    let answer = match records::commit_amended(state, submitter, target, bytes.into(), how, amend).await {
        Ok(a) => a,
        Err(e) if e.status == StatusCode::UNPROCESSABLE_ENTITY => {
            let errors = field_errors(&form, &e.details);
            return Ok(Submitted::Invalid { error: e, errors });
        }
        Err(e) => return Err(e),
    };
    let ids: Vec<String> = answer.body["ids"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let account = state::ReportSubmission {
        dataset: dataset.to_string(),
        agency: agency.clone(),
        period: period.clone(),
        source: ctx.agency.source.clone(),
        username: username(who),
        submitted_at_ms: now_ms(),
        version,
        record_ids: ids,
        commit_index: answer.body["commit_index"].as_u64().unwrap_or(0),
        request_id,
        answer_json: serde_json::to_vec(&answer.body).map_err(ApiError::internal)?,
        correction_reason: reason.unwrap_or_default(),
        schema_version: ctx.dataset.version,
        deadline_ms: ctx.period.deadline_ms(ctx.obligation.deadline_days),
        content_sha256,
    };
    propose(state, state::reporting_command::Kind::RecordReport(state::RecordReport { submission: Some(account) }))
        .await?;
    state.node.linearizable_barrier().await?;
    // The account that the log kept: ours, or the first one of a concurrent identical submission.
    let stored =
        read_msg::<state::ReportSubmission>(state, &tables::submission_version(dataset, &agency, &period, version))?
            .ok_or_else(|| ApiError::internal("the report's account is missing after it was recorded"))?;
    Ok(Submitted::Stored { submission: submission_json(&stored), replayed: answer.replayed })
}

/// The lineage fields of a correction of a report's record: those of a correction of its latest
/// version (`versions::correction_amend`, as `POST …/corrections` sets them).
async fn correction_of(state: &AppState, e: &state::ReportSubmission, reason: &str) -> ApiResult<state::Submission> {
    let id =
        e.record_ids.first().ok_or_else(|| ApiError::conflict("the submitted report stored no record to correct"))?;
    let found =
        super::versions::find(state, id).await?.ok_or_else(|| ApiError::internal("a report's record is missing"))?;
    let latest = latest_version(state, &found.record)?;
    super::versions::correction_amend(state, &latest, reason.to_string()).await
}

/// Sets a dataset's obligation from its JSON (admin): checks everything and resolves each
/// agency's source.
pub async fn set_obligation(state: &AppState, who: &Principal, dataset: &str, v: &Value) -> ApiResult<Value> {
    let Some(obj) = v.as_object() else { return Err(ApiError::bad_request("an obligation is a JSON object")) };
    const FIELDS: [&str; 8] = [
        "agencies",
        "period_type",
        "deadline_days",
        "reminder_days",
        "first_period",
        "agency_field",
        "period_field",
        "active",
    ];
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str()) && k.as_str() != "dataset") {
        return Err(ApiError::bad_request(format!("unknown obligation field `{k}`")));
    }
    let ds = super::catalog::dataset_version(state, dataset, None).await?;
    let def = state.catalog.compiled(&ds).map_err(ApiError::internal)?;
    let kind_text = obj.get("period_type").and_then(Value::as_str).unwrap_or("");
    let kind = PeriodType::parse(kind_text)
        .ok_or_else(|| ApiError::bad_request("`period_type` must be month, quarter or year"))?;
    let days = |name: &str, default: u32| -> ApiResult<u32> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_u64().filter(|d| *d <= u64::from(DEADLINE_DAYS_MAX)).map(|d| d as u32).ok_or_else(|| {
                ApiError::bad_request(format!("`{name}` must be a whole number of days, 0-{DEADLINE_DAYS_MAX}"))
            }),
        }
    };
    let deadline_days = days("deadline_days", 15)?;
    let reminder_days = days("reminder_days", 5)?;
    let first_period = match obj.get("first_period") {
        None | Some(Value::Null) => Period::containing(kind, now_ms()).prev(),
        Some(Value::String(s)) => Period::parse(kind, s).ok_or_else(|| {
            ApiError::bad_request(format!("`first_period` must be a {kind_text} period such as {}", example(kind)))
        })?,
        Some(_) => return Err(ApiError::bad_request("`first_period` must be a string")),
    };
    let props = def.def.schema.get("properties").and_then(Value::as_object);
    let field = |name: &str| -> ApiResult<String> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(f)) if f.is_empty() || props.is_some_and(|p| p.contains_key(f)) => Ok(f.clone()),
            Some(_) => Err(ApiError::bad_request(format!("`{name}` must name a property of the dataset's schema"))),
        }
    };
    let agency_field = field("agency_field")?;
    let period_field = field("period_field")?;
    let active = match obj.get("active") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad_request("`active` must be true or false")),
    };
    let list = obj
        .get("agencies")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::bad_request("`agencies` must be a list"))?;
    if list.is_empty() || list.len() > tables::AGENCIES_PER_OBLIGATION_MAX {
        return Err(ApiError::bad_request(format!(
            "`agencies` lists 1-{} agencies",
            tables::AGENCIES_PER_OBLIGATION_MAX
        )));
    }
    let sources = all_sources(state)?;
    let mut agencies: Vec<state::ReportingAgency> = Vec::with_capacity(list.len());
    for (i, a) in list.iter().enumerate() {
        let (agency, source) = match a {
            Value::String(s) => (s.as_str(), None),
            Value::Object(o) => (
                o.get("agency").and_then(Value::as_str).unwrap_or(""),
                o.get("source").and_then(Value::as_str).filter(|s| !s.is_empty()),
            ),
            _ => ("", None),
        };
        if !super::valid_id(agency) {
            return Err(ApiError::bad_request(format!(
                "`agencies[{i}]` must name an agency id (letters, digits, `_`, `.`, `-`)"
            )));
        }
        if agencies.iter().any(|x| x.agency == agency) {
            return Err(ApiError::bad_request(format!("agency `{agency}` is listed twice")));
        }
        let usable = |s: &&state::Source| {
            s.removed_at_ms == 0
                && s.agency == agency
                && (s.allowed_datasets.is_empty() || s.allowed_datasets.iter().any(|d| d == dataset))
        };
        let source = match source {
            Some(id) => sources.iter().find(|s| s.id == id).filter(usable).map(|s| s.id.clone()).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "source `{id}` is not an active source of agency `{agency}` that may send to `{dataset}`"
                ))
            })?,
            None => sources.iter().find(usable).map(|s| s.id.clone()).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "agency `{agency}` has no active source that may send to `{dataset}`; register one first"
                ))
            })?,
        };
        agencies.push(state::ReportingAgency { agency: agency.to_string(), source });
    }
    let o = state::Obligation {
        dataset: dataset.to_string(),
        agencies,
        period_type: kind.as_str().into(),
        deadline_days,
        reminder_days,
        first_period: first_period.to_string(),
        agency_field,
        period_field,
        updated_at_ms: 0,
        updated_by: who.name(),
        active,
    };
    crate::audit::note_operation("reporting.obligation.set", &format!("dataset/{dataset}"));
    propose(state, state::reporting_command::Kind::SetObligation(state::SetObligation { obligation: Some(o) })).await?;
    state.node.linearizable_barrier().await?;
    let stored = read_msg::<state::Obligation>(state, &tables::obligation(dataset))?
        .ok_or_else(|| ApiError::internal("the obligation is missing after it was set"))?;
    Ok(obligation_json(&stored))
}

fn all_sources(state: &AppState) -> ApiResult<Vec<state::Source>> {
    let mut out = Vec::new();
    state
        .node
        .reader
        .for_each_prefixed(dtm_cluster::tables::SOURCE, |_, v| {
            out.push(<state::Source as prost::Message>::decode(v)?);
            Ok(())
        })
        .map_err(ApiError::internal)?;
    Ok(out)
}

pub fn obligation_json(o: &state::Obligation) -> Value {
    json!({
        "dataset": o.dataset,
        "agencies": o.agencies.iter().map(|a| json!({"agency": a.agency, "source": a.source})).collect::<Vec<_>>(),
        "period_type": o.period_type, "deadline_days": o.deadline_days, "reminder_days": o.reminder_days,
        "first_period": o.first_period, "agency_field": o.agency_field, "period_field": o.period_field,
        "active": o.active, "updated_at": rfc3339(o.updated_at_ms), "updated_by": o.updated_by,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_csv_quotes_and_neutralises_formulas() {
        let row = ReportRow {
            dataset: "d".into(),
            title: "D".into(),
            agency: "a".into(),
            period: "2026-03".into(),
            period_type: "month",
            period_start: String::new(),
            period_end: String::new(),
            deadline: "2026-04-15T17:00:00Z".into(),
            deadline_ms: 0,
            status: ReportStatus::Submitted,
            late: false,
            reminder: false,
            days_left: 0,
            draft_saved_at: None,
            draft_saved_by: None,
            submitted_at: None,
            submitted_by: Some("@cmd,x".into()),
            draft_saved_at_ms: 0,
            submitted_at_ms: 0,
            version: 1,
        };
        let csv = status_csv(&[row]);
        let line = csv.lines().nth(1).expect("a row");
        assert_eq!(line, "d,a,2026-03,submitted,false,2026-04-15T17:00:00Z,,\"'@cmd,x\",1,,");
    }
}
