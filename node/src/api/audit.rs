//! The audit trail's API (F8, F9, C4, A1.8), served by every node from its own copy of the
//! replicated trail:
//!
//! - `GET /audit`: entries, oldest first, paged (`limit` ≤ 1000, `next`), each with its hash and the
//!   previous hash. Without a period the pages follow the chain (`next` is a sequence number); with
//!   `from`/`to` they follow the time index (`next` is `<at_ms>.<seq>`). `principal`, `operation`
//!   and `target` filter exactly, or by prefix with a trailing `*`; a page examines at most
//!   `PAGE_SCAN_BUDGET` entries, so a rare match may come after pages with no entries but a `next`.
//! - `GET /audit/head`: size, head hash, Merkle root and the last checkpoint, to compare nodes.
//! - `GET /audit/export`: the same selection as JSON lines or CSV (streamed, up to
//!   `EXPORT_ENTRIES_MAX`), XLSX or DOCX (built in memory, smaller limits); more is refused with
//!   422 before anything is sent, with advice to narrow the period.
//! - `POST /audit/reports`, `GET /audit/reports`, `GET /audit/reports/{id}`: access, change and
//!   export reports (`crate::audit_reports`), stored in the trail's tables through the log.
//! - `GET /sources/{id}/connections`: the connection log of a source system per day (C4).

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
use dtm_cluster::tables;
use dtm_model::state;
use serde::Deserialize;
use serde_json::Value;
use serde_json::json;

use super::AppState;
use super::auth;
use super::error::ApiError;
use super::error::ApiResult;
use super::export;
use crate::audit_reports as trail;
use crate::audit_reports::Cursor;
use crate::audit_reports::Filter;
use crate::audit_reports::Pattern;

/// Entries per page by default and at most.
pub const PAGE_DEFAULT: usize = 100;
pub const PAGE_MAX: usize = 1_000;
/// Entries one page examines at most (filters that match rarely return `next` to continue).
pub const PAGE_SCAN_BUDGET: u64 = 20_000;
/// Entries an export (JSON lines, CSV) may hold; more is refused with advice to narrow the period.
pub const EXPORT_ENTRIES_MAX: usize = 1_000_000;
/// XLSX is built in memory.
pub const EXPORT_XLSX_ENTRIES_MAX: usize = 50_000;
/// Entries an export looks through to find its matches.
pub const EXPORT_SCAN_MAX: u64 = 5_000_000;
/// Entries per streamed piece of an export.
const EXPORT_CHUNK_ENTRIES: usize = 1_000;
/// Reports listed per page.
pub const REPORTS_PAGE_MAX: usize = 100;
/// A report request body.
const REPORT_REQUEST_BYTES_MAX: usize = 4 * 1024;
/// The longest period of a report or of one connection-log answer.
pub const PERIOD_DAYS_MAX: i64 = 400;

const _: () = assert!(PAGE_MAX as u64 <= PAGE_SCAN_BUDGET && EXPORT_ENTRIES_MAX as u64 <= EXPORT_SCAN_MAX);
const _: () =
    assert!(EXPORT_XLSX_ENTRIES_MAX <= EXPORT_ENTRIES_MAX && export::EXPORT_REPORT_ROWS_MAX <= EXPORT_XLSX_ENTRIES_MAX);

/// The columns of CSV, XLSX and DOCX exports (the JSON fields of an entry).
const COLUMNS: [&str; 20] = [
    "seq",
    "at",
    "at_ms",
    "principal",
    "organisation",
    "client_ip",
    "operation",
    "target",
    "outcome",
    "status",
    "channel",
    "node_id",
    "request_id",
    "records",
    "bytes_in",
    "count",
    "detail",
    "log_index",
    "hash",
    "prev_hash",
];

const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";
const DOCX: &str = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";

#[derive(Deserialize, Default)]
pub struct TrailQuery {
    from: Option<String>,
    to: Option<String>,
    principal: Option<String>,
    operation: Option<String>,
    target: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
    consistency: Option<String>,
    format: Option<String>,
}

/// A time bound: RFC 3339, milliseconds since 1970, or a day, week, month, quarter or year in
/// Vietnam time (its start for `from`, its end for `to`).
pub fn instant(name: &str, text: &str, end: bool) -> ApiResult<u64> {
    let bad = || {
        ApiError::bad_request(format!(
            "`{name}` is not a time: use RFC 3339 (2026-11-28T09:00:00+07:00), a day (2026-11-28), a month \
             (2026-11) or a year in Vietnam time, or milliseconds since 1970"
        ))
    };
    if text.len() > 10 && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<u64>().map_err(|_| bad());
    }
    if let Ok(t) = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        return u64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| bad());
    }
    let point = dtm_dataset::TimePoint::parse(text).map_err(|_| bad())?;
    let (start, stop) = point.range_minutes().ok_or_else(bad)?;
    let minutes = if end { stop } else { start };
    u64::try_from(minutes * 60_000 - 7 * 3_600_000).map_err(|_| bad())
}

fn pattern(name: &str, v: &Option<String>) -> ApiResult<Option<Pattern>> {
    v.as_deref().map(|t| Pattern::parse(t).map_err(|e| ApiError::bad_request(format!("`{name}`: {e}")))).transpose()
}

fn filter(q: &TrailQuery) -> ApiResult<Filter> {
    let f = Filter {
        from_ms: q.from.as_deref().map(|t| instant("from", t, false)).transpose()?,
        to_ms: q.to.as_deref().map(|t| instant("to", t, true)).transpose()?,
        principal: pattern("principal", &q.principal)?,
        operation: pattern("operation", &q.operation)?,
        target: pattern("target", &q.target)?,
    };
    if let (Some(a), Some(b)) = (f.from_ms, f.to_ms)
        && a >= b
    {
        return Err(ApiError::bad_request("`from` must be before `to`"));
    }
    Ok(f)
}

fn cursor(q: &TrailQuery, f: &Filter) -> ApiResult<Option<Cursor>> {
    let Some(text) = &q.after else { return Ok(None) };
    match Cursor::parse(text) {
        Some(c @ Cursor::Time { .. }) if f.by_time() => Ok(Some(c)),
        Some(c @ Cursor::Seq(_)) if !f.by_time() => Ok(Some(c)),
        _ => Err(ApiError::bad_request("`after` is not the `next` of a previous page with the same from/to")),
    }
}

/// Runs blocking reads of the trail on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, dtm_storage::StoreError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(ApiError::internal)?.map_err(ApiError::internal)
}

/// `GET /audit`: a page of the trail.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<TrailQuery>,
) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &auth::AUDIT_READ).await?;
    crate::audit::note_operation("audit.read", "audit");
    let f = filter(&q)?;
    let after = cursor(&q, &f)?;
    let limit = q.limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
    super::aggregates::consistency(&state, q.consistency.as_deref()).await?;
    let as_of_index = state.node.applied_index();
    let reader = state.node.reader.clone();
    let (entries, w) = blocking(move || {
        let mut out = Vec::new();
        let w = trail::walk(&reader, &f, after, PAGE_SCAN_BUDGET, |found| {
            out.push(trail::entry_json(&found.entry, &found.event));
            out.len() < limit
        })?;
        Ok((out, w))
    })
    .await?;
    let next = if w.done { None } else { w.last.map(|c| c.text()) };
    Ok(Json(json!({"as_of_index": as_of_index, "examined": w.examined, "entries": entries, "next": next})))
}

#[derive(Deserialize)]
pub struct ConsistencyQuery {
    consistency: Option<String>,
}

/// `GET /audit/head`: the chain's size, head hash and Merkle root, and its last checkpoint.
pub async fn head(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ConsistencyQuery>,
) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &auth::AUDIT_READ).await?;
    crate::audit::note_operation("audit.head.read", "audit");
    super::aggregates::consistency(&state, q.consistency.as_deref()).await?;
    let as_of_index = state.node.applied_index();
    let reader = &state.node.reader;
    let head = reader.get_msg::<state::AuditHead>(tables::AUDIT_HEAD).map_err(ApiError::internal)?.unwrap_or_default();
    let roots = head
        .frontier
        .iter()
        .map(|r| dtm_cluster::audit::Hash::try_from(r.as_slice()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::internal)?;
    let root = dtm_cluster::audit::Frontier { size: head.size, roots }.root();
    let checkpoint = if head.last_checkpoint_size == 0 {
        None
    } else {
        reader
            .get_msg::<state::AuditCheckpoint>(&tables::audit_checkpoint(head.last_checkpoint_size))
            .map_err(ApiError::internal)?
    };
    let checkpoint = checkpoint.map(|cp| {
        json!({
            "size": cp.size, "head_hash": hex::encode(&cp.head_hash), "merkle_root": hex::encode(&cp.merkle_root),
            "log_index": cp.log_index, "at": export::rfc3339(cp.at_ms), "at_ms": cp.at_ms,
            "signatures": cp.signatures.iter().map(|s| json!({"node_id": s.node_id,
                "public_key": hex::encode(&s.public_key), "signed_at_ms": s.signed_at_ms})).collect::<Vec<_>>(),
        })
    });
    Ok(Json(json!({
        "as_of_index": as_of_index, "size": head.size, "head_hash": hex::encode(&head.head_hash),
        "merkle_root": hex::encode(root), "last_checkpoint": checkpoint, "signed_through": head.signed_through,
        "retention_days": state.audit_options.retention_days,
    })))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExportFormat {
    Jsonl,
    Csv,
    Xlsx,
    Docx,
}

impl ExportFormat {
    fn parse(s: &str) -> ApiResult<ExportFormat> {
        Ok(match s {
            "jsonl" | "ndjson" => ExportFormat::Jsonl,
            "csv" => ExportFormat::Csv,
            "xlsx" => ExportFormat::Xlsx,
            "docx" => ExportFormat::Docx,
            other => return Err(ApiError::bad_request(format!("unknown format `{other}` (jsonl, csv, xlsx, docx)"))),
        })
    }
    fn entries_max(self) -> usize {
        match self {
            ExportFormat::Jsonl | ExportFormat::Csv => EXPORT_ENTRIES_MAX,
            ExportFormat::Xlsx => EXPORT_XLSX_ENTRIES_MAX,
            ExportFormat::Docx => export::EXPORT_REPORT_ROWS_MAX,
        }
    }
    fn name(self) -> &'static str {
        match self {
            ExportFormat::Jsonl => "jsonl",
            ExportFormat::Csv => "csv",
            ExportFormat::Xlsx => "xlsx",
            ExportFormat::Docx => "docx",
        }
    }
    fn media_type(self) -> &'static str {
        match self {
            ExportFormat::Jsonl => "application/x-ndjson",
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::Xlsx => XLSX,
            ExportFormat::Docx => DOCX,
        }
    }
}

fn too_many(message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "export_too_large", message)
}

/// `GET /audit/export`: the selected entries as a file.
pub async fn export_trail(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<TrailQuery>,
) -> ApiResult<Response> {
    auth::require(&state, &headers, &auth::AUDIT_READ).await?;
    crate::audit::note_operation("audit.export", "audit");
    let format = ExportFormat::parse(q.format.as_deref().unwrap_or("jsonl"))?;
    let f = filter(&q)?;
    super::aggregates::consistency(&state, q.consistency.as_deref()).await?;
    let max = format.entries_max();
    let reader = state.node.reader.clone();
    let f2 = f.clone();
    // First pass: which entries (sequence numbers only), bounded, so a refusal comes before any byte.
    let (seqs, w) = blocking(move || {
        let mut seqs = Vec::new();
        let w = trail::walk(&reader, &f2, None, EXPORT_SCAN_MAX, |found| {
            seqs.push(found.entry.seq);
            seqs.len() <= max
        })?;
        Ok((seqs, w))
    })
    .await?;
    if seqs.len() > max {
        let hint = if max < EXPORT_ENTRIES_MAX { " or use format=csv or jsonl" } else { "" };
        return Err(too_many(format!(
            "more than {max} entries match, the most a {} export holds; narrow the period (from, to) or the filters{hint}",
            format.name()
        )));
    }
    if !w.done {
        return Err(too_many(format!(
            "the selection spans more than {EXPORT_SCAN_MAX} entries of the trail; narrow the period (from, to)"
        )));
    }
    crate::audit::note_detail(json!({"format": format.name(), "entries": seqs.len(),
        "from": q.from, "to": q.to, "principal": q.principal, "operation": q.operation, "target": q.target}));
    let name = format!("audit-{}.{}", state.node.applied_index(), format.name());
    let count = seqs.len();
    let body = match format {
        ExportFormat::Jsonl | ExportFormat::Csv => stream(state.node.reader.clone(), seqs, format),
        ExportFormat::Xlsx | ExportFormat::Docx => {
            let reader = state.node.reader.clone();
            let table = blocking(move || {
                let mut rows = Vec::with_capacity(seqs.len());
                for seq in seqs {
                    let (entry, event) = load(&reader, seq)?;
                    rows.push(row(&trail::entry_json(&entry, &event)));
                }
                Ok(table(rows, &f))
            })
            .await?;
            let bytes = if format == ExportFormat::Xlsx {
                export::xlsx(&table, "audit").map_err(ApiError::internal)?
            } else {
                export::docx(&table).map_err(ApiError::internal)?
            };
            Body::from(bytes)
        }
    };
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.media_type()));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert("x-audit-entries", HeaderValue::from(count));
    Ok(resp)
}

fn load(
    reader: &dtm_storage::StateReader,
    seq: u64,
) -> Result<(state::AuditEntry, state::AuditEvent), dtm_storage::StoreError> {
    let entry = dtm_cluster::audit::entry_at(reader, seq)?
        .ok_or_else(|| dtm_storage::StoreError::Invalid(format!("audit entry {seq} is not stored")))?;
    let event = prost::Message::decode(entry.body.as_slice())?;
    Ok((entry, event))
}

fn row(entry: &Value) -> Vec<Value> {
    COLUMNS
        .iter()
        .map(|c| match &entry[*c] {
            Value::Object(_) | Value::Array(_) => json!(entry[*c].to_string()),
            v => v.clone(),
        })
        .collect()
}

fn table(rows: Vec<Vec<Value>>, f: &Filter) -> export::Table {
    let bound = |b: Option<u64>, none: &str| b.map_or(none.to_string(), export::rfc3339);
    export::Table {
        title: "DTM audit trail".into(),
        period: format!("From {} to {} (UTC)", bound(f.from_ms, "the first entry"), bound(f.to_ms, "the last entry")),
        summary: format!("{} entries", rows.len()),
        columns: COLUMNS.iter().map(|c| c.to_string()).collect(),
        rows,
        totals: None,
    }
}

/// Streams JSON lines or CSV in pieces of `EXPORT_CHUNK_ENTRIES`, read on the blocking pool; a
/// client that goes away stops the reading.
fn stream(reader: dtm_storage::StateReader, seqs: Vec<u64>, format: ExportFormat) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let empty = table(Vec::new(), &Filter::default());
        if format == ExportFormat::Csv && tx.blocking_send(Ok(export::csv(&empty).into())).is_err() {
            return;
        }
        for chunk in seqs.chunks(EXPORT_CHUNK_ENTRIES) {
            let mut entries = Vec::with_capacity(chunk.len());
            for seq in chunk {
                match load(&reader, *seq) {
                    Ok((entry, event)) => entries.push(trail::entry_json(&entry, &event)),
                    Err(e) => {
                        tracing::error!(target: "audit", error = %e, seq, "audit export stopped");
                        let _ = tx.blocking_send(Err(std::io::Error::other("the audit export could not be completed")));
                        return;
                    }
                }
            }
            let piece = if format == ExportFormat::Csv {
                let t = table(entries.iter().map(row).collect(), &Filter::default());
                let text = export::csv(&t);
                // `csv` writes the header line first; it was sent once above.
                text.split_once("\r\n").map_or(String::new(), |(_, rows)| rows.to_string()).into_bytes()
            } else {
                let mut out = Vec::new();
                for e in &entries {
                    out.extend_from_slice(e.to_string().as_bytes());
                    out.push(b'\n');
                }
                out
            };
            if tx.blocking_send(Ok(piece.into())).is_err() {
                return;
            }
        }
    });
    Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
}

// ---- Reports ----

/// `POST /audit/reports {"kind", "from", "to"}`: computes a report from this node's trail (after
/// catching up with the leader) and stores it through the log; 201 with its id.
pub async fn create_report(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let p = auth::require(&state, &headers, &auth::AUDIT_REPORT).await?;
    let bytes = super::read_body(&headers, body, REPORT_REQUEST_BYTES_MAX).await?;
    let v = super::parse_json(&headers, &bytes)?;
    let text = |name: &str| {
        v.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request(format!("`{name}` is required (a string)")))
    };
    let kind = text("kind")?;
    if !trail::KINDS.contains(&kind) {
        return Err(ApiError::bad_request(format!("`kind` must be access, change or export (got `{kind}`)")));
    }
    let (from_ms, to_ms) = (instant("from", text("from")?, false)?, instant("to", text("to")?, true)?);
    if from_ms >= to_ms {
        return Err(ApiError::bad_request("`from` must be before `to`"));
    }
    if to_ms - from_ms > PERIOD_DAYS_MAX as u64 * 86_400_000 {
        return Err(ApiError::bad_request(format!("a report covers at most {PERIOD_DAYS_MAX} days")));
    }
    let id = format!("{kind}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    state.node.linearizable_barrier().await?;
    let spec = trail::ReportSpec {
        id: id.clone(),
        kind: kind.to_string(),
        from_ms,
        to_ms,
        created_by: p.name(),
        created_at_ms: super::now_ms(),
    };
    let reader = state.node.reader.clone();
    let report = blocking(move || trail::compute(&reader, &spec)).await?;
    let summary = report_summary(&report);
    let (resp, index) = state.node.write(super::command(&state, trail::store_command(report))).await?;
    if let Some(state::command_response::Result::Rejected(r)) = resp.result {
        return Err(super::error::rejected(&r.code, r.message));
    }
    let mut answer = summary;
    answer["commit_index"] = json!(index);
    Ok((StatusCode::CREATED, Json(answer)))
}

fn report_summary(r: &state::AuditReport) -> Value {
    let content: Value = serde_json::from_slice(&r.content_json).unwrap_or(Value::Null);
    json!({
        "id": r.id, "kind": r.kind, "from": export::rfc3339(r.from_ms), "to": export::rfc3339(r.to_ms),
        "from_ms": r.from_ms, "to_ms": r.to_ms, "created_at": export::rfc3339(r.created_at_ms),
        "created_by": r.created_by, "chain_size": r.chain_size, "totals": content["totals"],
        "truncated": content["truncated"],
    })
}

#[derive(Deserialize)]
pub struct ReportsQuery {
    kind: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
    consistency: Option<String>,
}

/// `GET /audit/reports`: stored reports in id order, paged.
pub async fn list_reports(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ReportsQuery>,
) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &auth::AUDIT_READ).await?;
    crate::audit::note_operation("audit.report.list", "audit-report");
    super::aggregates::consistency(&state, q.consistency.as_deref()).await?;
    let limit = q.limit.unwrap_or(REPORTS_PAGE_MAX).clamp(1, REPORTS_PAGE_MAX);
    let after = q.after.as_deref().map(tables::audit_report);
    let page = stored_reports_page(&state, tables::AUDIT_REPORT, after, limit, |r: &state::AuditReport| {
        (r.id.clone(), q.kind.as_deref().is_none_or(|k| k == r.kind).then(|| report_summary(r)))
    })?;
    Ok(Json(page))
}

/// One page of stored reports under `table` after the key `after`: `{"reports": […], "next": id}`.
/// `summary` gives each report's id (for `next`) and its summary when the report is listed (a kind
/// filter may skip it). Shared by the audit reports and the performance/connection reports.
pub(crate) fn stored_reports_page<M: prost::Message + Default>(
    state: &AppState,
    table: &[u8],
    after: Option<Vec<u8>>,
    limit: usize,
    summary: impl Fn(&M) -> (String, Option<Value>),
) -> ApiResult<Value> {
    let rows = state.node.reader.scan(table, after.as_deref(), limit + 1).map_err(ApiError::internal)?;
    let more = rows.len() > limit;
    let mut reports = Vec::new();
    let mut last = None;
    for (_, v) in rows.into_iter().take(limit) {
        let r = M::decode(v.as_slice()).map_err(ApiError::internal)?;
        let (id, listed) = summary(&r);
        last = Some(id);
        reports.extend(listed);
    }
    Ok(json!({"reports": reports, "next": if more { last } else { None }}))
}

#[derive(Deserialize)]
pub struct ReportFormat {
    format: Option<String>,
}

/// `GET /audit/reports/{id}?format=json|csv|xlsx|docx`.
pub async fn get_report(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ReportFormat>,
) -> ApiResult<Response> {
    auth::require(&state, &headers, &auth::AUDIT_READ).await?;
    crate::audit::note_operation("audit.report.download", &format!("audit-report/{id}"));
    let format = q.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "csv" | "xlsx" | "docx") {
        return Err(ApiError::bad_request(format!("unknown format `{format}` (json, csv, xlsx, docx)")));
    }
    let not_found = || ApiError::not_found(format!("audit report `{id}` does not exist"));
    if !super::valid_id(&id) {
        return Err(not_found());
    }
    let report =
        super::lookup_fresh::<state::AuditReport>(&state, &tables::audit_report(&id)).await?.ok_or_else(not_found)?;
    let (media, body): (&str, Vec<u8>) = match format {
        "json" => ("application/json", report.content_json.clone()),
        "csv" => ("text/csv; charset=utf-8", export::csv(&trail::report_table(&report)).into_bytes()),
        "xlsx" => (XLSX, export::xlsx(&trail::report_table(&report), "report").map_err(ApiError::internal)?),
        _ => (DOCX, export::docx(&trail::report_table(&report)).map_err(ApiError::internal)?),
    };
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    if format != "json"
        && let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{id}.{format}\""))
    {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

// ---- Connection log ----

#[derive(Deserialize)]
pub struct DaysQuery {
    from: Option<String>,
    to: Option<String>,
    consistency: Option<String>,
}

fn day(name: &str, text: &str) -> ApiResult<time::Date> {
    match dtm_dataset::TimePoint::parse(text) {
        Ok(dtm_dataset::TimePoint::Day(d)) => Ok(d),
        _ => Err(ApiError::bad_request(format!("`{name}` must be a day, YYYY-MM-DD (Vietnam time)"))),
    }
}

fn yyyymmdd(d: time::Date) -> u32 {
    (d.year().max(0) as u32) * 10_000 + u32::from(u8::from(d.month())) * 100 + u32::from(d.day())
}

/// `GET /sources/{id}/connections?from=&to=`: per day (Vietnam time) with activity, the source's
/// connections, requests, successes, failures by cause, bytes and records (C4). Admin, auditor, or
/// the source's own credential.
pub async fn connections(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<DaysQuery>,
) -> ApiResult<Json<Value>> {
    let p = auth::authenticate(&state, &headers).await?;
    if !auth::AUDIT_READ.allows(&p) && (p.source_id.is_empty() || p.source_id != id) {
        return Err(ApiError::forbidden("this operation needs the auditor or admin role, or the source's own key"));
    }
    crate::audit::note_operation("source.connections.read", &format!("source/{id}"));
    let unknown = || ApiError::not_found(format!("source `{id}` is not registered"));
    if !super::valid_id(&id) {
        return Err(unknown());
    }
    super::lookup_fresh::<state::Source>(&state, &tables::source(&id)).await?.ok_or_else(unknown)?;
    super::aggregates::consistency(&state, q.consistency.as_deref()).await?;
    let today = {
        let d = dtm_cluster::audit::vietnam_day(super::now_ms());
        day("to", &format!("{:04}-{:02}-{:02}", d / 10_000, (d / 100) % 100, d % 100))?
    };
    let to = q.to.as_deref().map(|t| day("to", t)).transpose()?.unwrap_or(today);
    let from = match q.from.as_deref() {
        Some(t) => day("from", t)?,
        None => to.checked_sub(time::Duration::days(29)).unwrap_or(to),
    };
    if from > to {
        return Err(ApiError::bad_request("`from` must not be after `to`"));
    }
    if (to - from).whole_days() >= PERIOD_DAYS_MAX {
        return Err(ApiError::bad_request(format!("at most {PERIOD_DAYS_MAX} days per request")));
    }
    let (from_day, to_day) = (yyyymmdd(from), yyyymmdd(to));
    let prefix = tables::connection_days_of(&id);
    let start = tables::connection_day(&id, from_day.saturating_sub(1));
    let rows =
        state.node.reader.scan(&prefix, Some(&start), PERIOD_DAYS_MAX as usize + 1).map_err(ApiError::internal)?;
    let mut days = Vec::new();
    let mut total = state::ConnectionDay::default();
    for (k, v) in rows {
        let Some(d) = k.get(prefix.len()..).and_then(|t| <[u8; 4]>::try_from(t).ok()).map(u32::from_be_bytes) else {
            continue;
        };
        if d < from_day || d > to_day {
            continue;
        }
        let c: state::ConnectionDay = prost::Message::decode(v.as_slice()).map_err(ApiError::internal)?;
        total.connections += c.connections;
        total.requests += c.requests;
        total.successes += c.successes;
        total.failures += c.failures;
        total.bytes_in += c.bytes_in;
        total.records += c.records;
        for (cause, n) in &c.causes {
            *total.causes.entry(cause.clone()).or_insert(0) += n;
        }
        days.push(day_json(Some(d), &c));
    }
    Ok(Json(json!({
        "source": id, "from": from.to_string(), "to": to.to_string(), "timezone": "+07:00",
        "as_of_index": state.node.applied_index(), "days": days, "totals": day_json(None, &total),
    })))
}

fn day_json(d: Option<u32>, c: &state::ConnectionDay) -> Value {
    let mut v = json!({
        "connections": c.connections, "requests": c.requests, "successes": c.successes, "failures": c.failures,
        "causes": c.causes, "bytes_in": c.bytes_in, "records": c.records,
    });
    if let Some(d) = d {
        v["day"] = json!(format!("{:04}-{:02}-{:02}", d / 10_000, (d / 100) % 100, d % 100));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_days_months_or_milliseconds() {
        assert_eq!(instant("from", "2026-11-28T00:00:00Z", false).expect("rfc3339"), 1_795_824_000_000);
        // A day in Vietnam time: from its start to its end.
        assert_eq!(instant("from", "2026-11-28", false).expect("day"), 1_795_798_800_000);
        assert_eq!(instant("to", "2026-11-28", true).expect("day"), 1_795_798_800_000 + 86_400_000);
        assert_eq!(instant("from", "2026-11", false).expect("month"), 1_793_466_000_000);
        assert_eq!(instant("from", "1795824000000", false).expect("ms"), 1_795_824_000_000);
        assert!(instant("from", "yesterday", false).is_err());
        assert_eq!(yyyymmdd(day("from", "2026-11-28").expect("day")), 20261128);
        assert!(day("from", "2026-11").is_err());
    }
}
