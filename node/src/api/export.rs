//! Exports of records and aggregates: `GET /datasets/{id}/records` and `/aggregates` with
//! `?format=csv|xlsx|json|xml|docx` or an `Accept` header naming one of those media types. Without
//! either they answer the usual JSON (records paged).
//!
//! A records export pages through the dataset in commit order up to `EXPORT_RECORDS_MAX` records
//! (`X-Export-Truncated: true` and `"truncated": true` when there were more; page further with the
//! JSON API). A DOCX report holds at most `EXPORT_REPORT_ROWS_MAX` rows and says when it stops.
//! Strings that a spreadsheet would run as a formula (first character `=`, `+`, `-`, `@`, tab or CR)
//! are written with a leading `'` in CSV and XLSX; numbers stay numbers.

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
use serde::Deserialize;
use serde_json::Value;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::error::ApiResult;
use super::records::ReadQuery;
use crate::limits::RECORDS_PAGE_MAX;

/// Records in one export: about 25 MiB of JSON at 500 bytes a record, built in memory.
pub const EXPORT_RECORDS_MAX: usize = 50_000;
/// Rows in a DOCX report: it is a document to read, not a data dump.
pub const EXPORT_REPORT_ROWS_MAX: usize = 2_000;
const _: () = assert!(EXPORT_REPORT_ROWS_MAX <= EXPORT_RECORDS_MAX && RECORDS_PAGE_MAX <= EXPORT_RECORDS_MAX);

const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";
const DOCX: &str = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    Xlsx,
    Xml,
    Docx,
}

impl Format {
    fn parse(s: &str) -> Option<Format> {
        Some(match s {
            "json" => Format::Json,
            "csv" => Format::Csv,
            "xlsx" => Format::Xlsx,
            "xml" => Format::Xml,
            "docx" => Format::Docx,
            _ => return None,
        })
    }
    fn media_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Xlsx => XLSX,
            Format::Xml => "application/xml; charset=utf-8",
            Format::Docx => DOCX,
        }
    }
    fn extension(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Xlsx => "xlsx",
            Format::Xml => "xml",
            Format::Docx => "docx",
        }
    }
}

#[derive(Deserialize)]
pub struct FormatQuery {
    format: Option<String>,
}

/// The export asked for: `?format=` first, else an `Accept` naming an export media type; `None`
/// for the usual JSON answer.
fn requested(q: &FormatQuery, headers: &HeaderMap) -> ApiResult<Option<Format>> {
    if let Some(f) = &q.format {
        return Format::parse(f)
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("unknown format `{f}` (csv, xlsx, json, xml, docx)")));
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media: Vec<&str> = accept.split(',').map(|m| m.split(';').next().unwrap_or("").trim()).collect();
    Ok([
        ("text/csv", Format::Csv),
        (XLSX, Format::Xlsx),
        ("application/xml", Format::Xml),
        ("text/xml", Format::Xml),
        (DOCX, Format::Docx),
    ]
    .into_iter()
    .find(|(m, _)| media.contains(m))
    .map(|(_, f)| f))
}

pub async fn get_records(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(dataset): Path<String>,
    Query(q): Query<ReadQuery>,
    Query(f): Query<FormatQuery>,
) -> ApiResult<Response> {
    let Some(format) = requested(&f, &headers)? else {
        return Ok(super::records::get_records(State(state), headers, Path(dataset), Query(q)).await?.into_response());
    };
    let mut records = Vec::new();
    let mut after = None;
    let mut consistency = q.consistency.clone();
    let mut as_of_index = None;
    let last = loop {
        let page_query = ReadQuery {
            limit: Some(RECORDS_PAGE_MAX),
            after: after.take(),
            consistency: consistency.take(),
            as_of_index: as_of_index.or(q.as_of_index),
            as_of: if as_of_index.is_some() { None } else { q.as_of.clone() },
        };
        let Json(page) = super::records::get_records(
            State(state.clone()),
            headers.clone(),
            Path(dataset.clone()),
            Query(page_query),
        )
        .await?;
        if let Some(rs) = page["records"].as_array() {
            records.extend(rs.iter().cloned());
        }
        after = page["next"].as_str().map(String::from);
        // A historical export pages at the index its first page resolved (`as_of` is a time).
        if q.as_of_index.is_some() || q.as_of.is_some() {
            as_of_index = page["as_of_index"].as_u64();
        }
        if after.is_none() || records.len() >= EXPORT_RECORDS_MAX {
            break page;
        }
    };
    let truncated = records.len() > EXPORT_RECORDS_MAX || after.is_some();
    records.truncate(EXPORT_RECORDS_MAX);
    crate::audit::note_operation("records.export", &format!("dataset/{dataset}"));
    crate::audit::note_detail(json!({"format": format.extension(), "records": records.len(), "truncated": truncated}));
    let doc = json!({"dataset": dataset, "as_of_index": last["as_of_index"], "total": last["total"],
                     "truncated": truncated, "next": Value::Null, "records": records});
    let table = records_table(&doc);
    let mut resp = render(format, &doc, &table, &dataset, "records")?;
    resp.headers_mut().insert("x-export-truncated", HeaderValue::from_static(if truncated { "true" } else { "false" }));
    Ok(resp)
}

pub async fn get_aggregates(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(dataset): Path<String>,
    Query(q): Query<super::aggregates::AggregateParams>,
    Query(f): Query<FormatQuery>,
    Query(period): Query<PeriodQuery>,
    Query(history): Query<super::versions::HistoryParams>,
) -> ApiResult<Response> {
    let format = requested(&f, &headers)?;
    let doc = if history.is_historical() {
        super::versions::aggregates_as_of(&state, &headers, &dataset, &history).await?
    } else {
        let live = super::aggregates::get_aggregates(State(state.clone()), headers, Path(dataset.clone()), Query(q));
        live.await?.0
    };
    let Some(format) = format else { return Ok(Json(doc).into_response()) };
    crate::audit::note_operation("aggregates.export", &format!("dataset/{dataset}"));
    crate::audit::note_detail(
        json!({"format": format.extension(), "rows": doc["rows"].as_array().map_or(0, Vec::len)}),
    );
    let ds = super::catalog::dataset_version(&state, &dataset, None).await?;
    let compiled = state.catalog.compiled(&ds).map_err(ApiError::internal)?;
    let sums: Vec<String> = compiled
        .def
        .measures
        .iter()
        .filter(|(_, op)| **op == dtm_dataset::MeasureOp::Sum)
        .map(|(m, _)| m.clone())
        .collect();
    let mut table = aggregates_table(&doc, &sums);
    table.title = format!("{}: aggregates", compiled.def.title);
    table.period = format!(
        "Period: {} to {}, by {}; as of log index {}",
        period.from.as_deref().unwrap_or("the first record"),
        period.to.as_deref().unwrap_or("the last record"),
        doc["interval"].as_str().unwrap_or("year"),
        doc["as_of_index"]
    );
    render(format, &doc, &table, &dataset, "aggregates")
}

#[derive(Deserialize)]
pub struct PeriodQuery {
    from: Option<String>,
    to: Option<String>,
}

/// A rectangular view of an answer, for every format but JSON (also the audit trail's exports).
pub(crate) struct Table {
    pub(crate) title: String,
    pub(crate) period: String,
    pub(crate) columns: Vec<String>,
    pub(crate) rows: Vec<Vec<Value>>,
    /// A last row of totals (aggregates: count and sum measures).
    pub(crate) totals: Option<Vec<Value>>,
    /// One line under the table.
    pub(crate) summary: String,
}

const RECORD_COLUMNS: [&str; 10] = [
    "id",
    "source",
    "commit_index",
    "received_at_ms",
    "schema_version",
    "version",
    "conflict",
    "channel",
    "classification",
    "priority",
];

/// One row per record: its metadata, then its fields (in name order; a field named like a
/// metadata column is shown as `data.<name>`).
fn records_table(doc: &Value) -> Table {
    let records = doc["records"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut fields = std::collections::BTreeSet::new();
    for r in records {
        if let Some(d) = r["data"].as_object() {
            fields.extend(d.keys().cloned());
        }
    }
    let mut columns: Vec<String> = RECORD_COLUMNS.iter().map(|c| c.to_string()).collect();
    columns.extend(
        fields.iter().map(|f| if RECORD_COLUMNS.contains(&f.as_str()) { format!("data.{f}") } else { f.clone() }),
    );
    let rows = records
        .iter()
        .map(|r| {
            let mut row: Vec<Value> = RECORD_COLUMNS.iter().map(|c| r[*c].clone()).collect();
            row.extend(fields.iter().map(|f| r["data"][f].clone()));
            row
        })
        .collect::<Vec<_>>();
    let received: Vec<u64> = records.iter().filter_map(|r| r["received_at_ms"].as_u64()).collect();
    let period = match (received.iter().min(), received.iter().max()) {
        (Some(a), Some(b)) => format!("Received from {} to {} (UTC)", rfc3339(*a), rfc3339(*b)),
        _ => "No records".to_string(),
    };
    Table {
        title: format!("{}: records", doc["dataset"].as_str().unwrap_or_default()),
        period: format!("{period}; as of log index {}", doc["as_of_index"]),
        summary: format!(
            "{} records exported of {} stored{}",
            rows.len(),
            doc["total"],
            if doc["truncated"] == true { " (the export limit was reached)" } else { "" }
        ),
        columns,
        rows,
        totals: None,
    }
}

pub(crate) fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// One row per aggregate row: bucket, the grouped dimensions, count, then the measures.
fn aggregates_table(doc: &Value, sums: &[String]) -> Table {
    let rows_in = doc["rows"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut columns = vec!["bucket".to_string()];
    columns.extend(doc["group_by"].as_array().into_iter().flatten().filter_map(Value::as_str).map(String::from));
    columns.push("count".into());
    let mut measures = std::collections::BTreeSet::new();
    for r in rows_in {
        if let Some(o) = r.as_object() {
            measures.extend(o.keys().filter(|k| !columns.contains(k)).cloned());
        }
    }
    columns.extend(measures);
    let rows: Vec<Vec<Value>> = rows_in.iter().map(|r| columns.iter().map(|c| r[c].clone()).collect()).collect();
    let totals = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i == 0 {
                json!("total")
            } else if c == "count" || sums.contains(c) {
                let sum: f64 = rows.iter().filter_map(|r| r[i].as_f64()).sum();
                serde_json::Number::from_f64(sum).map(Value::Number).unwrap_or(Value::Null)
            } else {
                Value::Null
            }
        })
        .collect();
    Table {
        title: String::new(),
        period: String::new(),
        summary: format!("{} rows", rows.len()),
        columns,
        rows,
        totals: Some(totals),
    }
}

fn render(format: Format, doc: &Value, table: &Table, dataset: &str, what: &str) -> ApiResult<Response> {
    let body = match format {
        Format::Json => serde_json::to_vec(doc).map_err(ApiError::internal)?,
        Format::Csv => csv(table).into_bytes(),
        Format::Xml => xml(table, dataset, what, doc).into_bytes(),
        Format::Xlsx => xlsx(table, what).map_err(ApiError::internal)?,
        Format::Docx => docx(table).map_err(ApiError::internal)?,
    };
    let disposition = format!("attachment; filename=\"{dataset}-{what}.{}\"", format.extension());
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.media_type()));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// A string a spreadsheet would execute, made inert with a leading `'` (OWASP CSV injection).
pub fn neutralise(s: &str) -> std::borrow::Cow<'_, str> {
    match s.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{s}").into(),
        _ => s.into(),
    }
}

/// A cell as text: strings neutralised, numbers and booleans as JSON writes them, null empty,
/// objects and arrays as JSON text (neutralised too).
fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => neutralise(s).into_owned(),
        Value::Number(_) | Value::Bool(_) => v.to_string(),
        other => neutralise(&other.to_string()).into_owned(),
    }
}

pub(crate) fn csv(t: &Table) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        out.push_str(&cells.iter().map(|c| field(c)).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    };
    line(t.columns.iter().map(|c| neutralise(c).into_owned()).collect(), &mut out);
    for r in t.rows.iter().chain(t.totals.as_ref()) {
        line(r.iter().map(cell_text).collect(), &mut out);
    }
    out
}

fn xml(t: &Table, dataset: &str, what: &str, doc: &Value) -> String {
    use crate::soap::xml::escape;
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<export dataset=\"{}\" kind=\"{what}\" as_of_index=\"{}\" truncated=\"{}\">\n",
        escape(dataset),
        doc["as_of_index"],
        doc["truncated"] == true
    );
    let row = |cells: &[Value], tag: &str, out: &mut String| {
        out.push_str(&format!("  <{tag}>"));
        for (name, v) in t.columns.iter().zip(cells) {
            let (kind, text) = match v {
                Value::Null => ("null", String::new()),
                Value::String(s) => ("string", s.clone()),
                Value::Number(_) => ("number", v.to_string()),
                Value::Bool(_) => ("boolean", v.to_string()),
                _ => ("json", v.to_string()),
            };
            out.push_str(&format!("<cell name=\"{}\" type=\"{kind}\">{}</cell>", escape(name), escape(&text)));
        }
        out.push_str(&format!("</{tag}>\n"));
    };
    for r in &t.rows {
        row(r, "row", &mut out);
    }
    if let Some(totals) = &t.totals {
        row(totals, "totals", &mut out);
    }
    out.push_str("</export>\n");
    out
}

pub(crate) fn xlsx(t: &Table, sheet: &str) -> Result<Vec<u8>, rust_xlsxwriter::XlsxError> {
    let mut wb = rust_xlsxwriter::Workbook::new();
    let ws = wb.add_worksheet();
    ws.set_name(sheet)?;
    let bold = rust_xlsxwriter::Format::new().set_bold();
    for (c, name) in t.columns.iter().enumerate() {
        ws.write_string_with_format(0, c as u16, neutralise(name), &bold)?;
    }
    for (r, cells) in t.rows.iter().chain(t.totals.as_ref()).enumerate() {
        let r = (r + 1) as u32;
        for (c, v) in cells.iter().enumerate() {
            let c = c as u16;
            match v {
                Value::Null => {}
                Value::Number(n) => {
                    // Integers beyond 2^53 (ids, times in ms are below) would lose digits as a number.
                    match n.as_f64().filter(|f| f.abs() < 9.007e15) {
                        Some(f) => ws.write_number(r, c, f)?,
                        None => ws.write_string(r, c, n.to_string())?,
                    };
                }
                Value::Bool(b) => {
                    ws.write_boolean(r, c, *b)?;
                }
                other => {
                    ws.write_string(r, c, cell_text(other))?;
                }
            }
        }
    }
    wb.save_to_buffer()
}

pub(crate) fn docx(t: &Table) -> Result<Vec<u8>, docx_rs::DocxError> {
    use docx_rs::*;
    let text = |s: &str| Paragraph::new().add_run(Run::new().add_text(s));
    let cell = |s: &str, bold: bool| {
        let run = Run::new().add_text(s);
        TableCell::new().add_paragraph(Paragraph::new().add_run(if bold { run.bold() } else { run }))
    };
    let plain = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut rows = vec![TableRow::new(t.columns.iter().map(|c| cell(c, true)).collect())];
    rows.extend(
        t.rows
            .iter()
            .take(EXPORT_REPORT_ROWS_MAX)
            .map(|r| TableRow::new(r.iter().map(|v| cell(&plain(v), false)).collect())),
    );
    if let Some(totals) = &t.totals {
        rows.push(TableRow::new(totals.iter().map(|v| cell(&plain(v), true)).collect()));
    }
    let mut doc = Docx::new()
        .add_paragraph(Paragraph::new().add_run(Run::new().add_text(&t.title).bold().size(32)))
        .add_paragraph(text(&t.period))
        .add_table(Table::new(rows));
    if t.rows.len() > EXPORT_REPORT_ROWS_MAX {
        doc = doc.add_paragraph(text(&format!(
            "The report shows the first {EXPORT_REPORT_ROWS_MAX} of {} rows; export CSV or XLSX for all of them.",
            t.rows.len()
        )));
    }
    doc = doc.add_paragraph(text(&format!("Totals: {}", t.summary)));
    let mut out = std::io::Cursor::new(Vec::new());
    doc.build().pack(&mut out)?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_neutralised_numbers_are_not() {
        assert_eq!(neutralise("=1+2"), "'=1+2");
        assert_eq!(neutralise("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(neutralise("-3"), "'-3");
        assert_eq!(neutralise("\tx"), "'\tx");
        assert_eq!(neutralise("plain"), "plain");
        assert_eq!(cell_text(&json!(-3)), "-3");
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let t = Table {
            title: String::new(),
            period: String::new(),
            columns: vec!["a".into(), "b".into()],
            rows: vec![vec![json!("x,\"y\""), json!("=cmd")]],
            totals: None,
            summary: String::new(),
        };
        assert_eq!(csv(&t), "a,b\r\n\"x,\"\"y\"\"\",'=cmd\r\n");
    }

    #[test]
    fn formats_come_from_the_query_or_accept() {
        let q = |f: Option<&str>| FormatQuery { format: f.map(String::from) };
        let mut h = HeaderMap::new();
        assert_eq!(requested(&q(None), &h).expect("ok"), None);
        assert_eq!(requested(&q(Some("xlsx")), &h).expect("ok"), Some(Format::Xlsx));
        assert!(requested(&q(Some("pdf")), &h).is_err());
        h.insert(header::ACCEPT, HeaderValue::from_static("text/csv"));
        assert_eq!(requested(&q(None), &h).expect("ok"), Some(Format::Csv));
    }
}
