//! Performance and connection reports (A5.3, F4, C8, C9; `docs/reports.md`).
//!
//! - The **system-performance report** of a period: data-submission transactions that succeeded
//!   and failed per source, dataset and channel, the causes of the failures, response-time
//!   percentiles per channel and availability per node and overall. Transactions and causes come
//!   from the audit trail (walked with `audit_reports::walk`, the same bounded walk as the audit
//!   reports); latencies and availability from the nodes' replicated samples (`crate::perf`).
//! - The **annual connection report**: per registered source system, its connection level, usage
//!   frequency, data volumes, the exploitation of its data (reads and exports of the datasets it
//!   feeds), security events, and recommendations made by fixed rules.
//!
//! Reports are computed on one node from its copy of the replicated tables (after catching up with
//! the leader) and stored through the log (`PerformanceCommand::StoreReport`), so every node
//! serves the same bytes. [`start_monthly`] has the leader store last month's performance report
//! (`performance-YYYY-MM`) and, in January, last year's connection report (`connections-YYYY`).
//! Every report renders as JSON, CSV (one row per value: section, row, field, value), XLSX (one
//! sheet per section) and DOCX (a heading and a table per section).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;

use dtm_cluster::ClusterNode;
use dtm_cluster::performance as perf_tables;
use dtm_cluster::tables;
use dtm_model::state;
use dtm_storage::StateReader;
use dtm_storage::StoreError;
use prost::Message;
use serde_json::Value;
use serde_json::json;

use crate::api::export::rfc3339;
use crate::audit_reports as trail;

/// Entries one report reads from the trail at most; a longer period is reported as `truncated`.
pub const REPORT_SCAN_MAX: u64 = trail::REPORT_SCAN_MAX;
/// Samples one report reads at most (a year of 5-minute samples from 9 nodes is about 950,000).
pub const SAMPLES_SCAN_MAX: usize = 2_000_000;
/// Distinct groups (source × dataset × channel, causes) counted; more fold into `(other)`.
const GROUPS_MAX: usize = 20_000;
/// Rows kept per section of a stored report (the largest first).
pub const SECTION_ROWS_MAX: usize = 500;
/// Sources one connection report covers at most.
const SOURCES_MAX: usize = 10_000;
/// Longest example message kept for a failure cause.
const EXAMPLE_BYTES_MAX: usize = 200;
/// A month's report is made this long after it ended (late samples and audit events are in it).
const MONTHLY_GRACE_MS: u64 = 10 * 60 * 1000;
/// Rules of the recommendations (`docs/reports.md`).
pub const REJECTION_RATE_HIGH: f64 = 0.10;
pub const DUPLICATE_RATE_HIGH: f64 = 0.20;
pub const AUTH_FAILURES_HIGH: u64 = 10;
pub const INACTIVE_DAYS: u64 = 90;

const _: () = assert!(SECTION_ROWS_MAX < GROUPS_MAX);

// ---- Sections and rendering ----

/// One table of a report.
#[derive(Debug, Clone)]
pub struct Section {
    /// Short name (the XLSX sheet and the JSON key).
    pub name: &'static str,
    pub title: &'static str,
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<Value>>,
}

impl Section {
    fn json(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|r| {
                    let mut o = serde_json::Map::new();
                    for (c, v) in self.columns.iter().zip(r) {
                        o.insert((*c).to_string(), v.clone());
                    }
                    Value::Object(o)
                })
                .collect(),
        )
    }
}

/// A section as read back from a stored report's JSON: name, title, columns, rows.
type StoredSection = (String, String, Vec<String>, Vec<Vec<Value>>);

/// The sections of a stored report's JSON, in the order its `sections` list names them.
fn sections_of(content: &Value) -> Vec<StoredSection> {
    let mut out = Vec::new();
    for s in content["sections"].as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or_default().to_string();
        let title = s["title"].as_str().unwrap_or_default().to_string();
        let columns: Vec<String> =
            s["columns"].as_array().into_iter().flatten().filter_map(|c| c.as_str().map(str::to_string)).collect();
        let rows = content[&name]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| columns.iter().map(|c| r[c].clone()).collect())
            .collect();
        out.push((name, title, columns, rows));
    }
    out
}

fn plain(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// CSV for machines: one line per value, `section,row,field,value`.
pub fn csv(content: &Value) -> String {
    let mut t = crate::api::export::Table {
        title: String::new(),
        period: String::new(),
        columns: ["section", "row", "field", "value"].iter().map(|s| s.to_string()).collect(),
        rows: Vec::new(),
        totals: None,
        summary: String::new(),
    };
    for (k, v) in content["summary"].as_object().into_iter().flatten() {
        t.rows.push(vec![json!("summary"), json!(0), json!(k), v.clone()]);
    }
    for (name, _, columns, rows) in sections_of(content) {
        for (i, r) in rows.iter().enumerate() {
            for (c, v) in columns.iter().zip(r) {
                t.rows.push(vec![json!(name), json!(i + 1), json!(c), v.clone()]);
            }
        }
    }
    crate::api::export::csv(&t)
}

/// XLSX for people: a summary sheet, then one sheet per section.
pub fn xlsx(content: &Value) -> Result<Vec<u8>, rust_xlsxwriter::XlsxError> {
    use crate::api::export::neutralise;
    let mut wb = rust_xlsxwriter::Workbook::new();
    let bold = rust_xlsxwriter::Format::new().set_bold();
    let put =
        |ws: &mut rust_xlsxwriter::Worksheet, r: u32, c: u16, v: &Value| -> Result<(), rust_xlsxwriter::XlsxError> {
            match v {
                Value::Null => {}
                Value::Number(n) => match n.as_f64().filter(|f| f.abs() < 9.007e15) {
                    Some(f) => {
                        ws.write_number(r, c, f)?;
                    }
                    None => {
                        ws.write_string(r, c, n.to_string())?;
                    }
                },
                Value::Bool(b) => {
                    ws.write_boolean(r, c, *b)?;
                }
                other => {
                    ws.write_string(r, c, neutralise(&plain(other)))?;
                }
            }
            Ok(())
        };
    let ws = wb.add_worksheet();
    ws.set_name("summary")?;
    ws.write_string_with_format(0, 0, neutralise(content["title"].as_str().unwrap_or("Report")), &bold)?;
    ws.write_string(1, 0, neutralise(&period_text(content)))?;
    for (r, (k, v)) in (3u32..).zip(content["summary"].as_object().into_iter().flatten()) {
        ws.write_string_with_format(r, 0, neutralise(k), &bold)?;
        put(ws, r, 1, v)?;
    }
    for (name, _, columns, rows) in sections_of(content) {
        let ws = wb.add_worksheet();
        ws.set_name(name.chars().take(31).collect::<String>())?;
        for (c, col) in columns.iter().enumerate() {
            ws.write_string_with_format(0, c as u16, neutralise(col), &bold)?;
        }
        for (i, row) in rows.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                put(ws, (i + 1) as u32, c as u16, v)?;
            }
        }
    }
    wb.save_to_buffer()
}

fn period_text(content: &Value) -> String {
    format!(
        "From {} to {} (UTC); generated {} by {}",
        content["from"].as_str().unwrap_or(""),
        content["to"].as_str().unwrap_or(""),
        content["generated_at"].as_str().unwrap_or(""),
        content["generated_by"].as_str().unwrap_or("")
    )
}

/// DOCX for people: title, period, summary, then a heading and a table per section.
pub fn docx(content: &Value) -> Result<Vec<u8>, docx_rs::DocxError> {
    use docx_rs::*;
    let text = |s: &str| Paragraph::new().add_run(Run::new().add_text(s));
    let heading = |s: &str, size: usize| Paragraph::new().add_run(Run::new().add_text(s).bold().size(size));
    let cell = |s: &str, bold: bool| {
        let run = Run::new().add_text(s);
        TableCell::new().add_paragraph(Paragraph::new().add_run(if bold { run.bold() } else { run }))
    };
    let mut doc = Docx::new()
        .add_paragraph(heading(content["title"].as_str().unwrap_or("Report"), 32))
        .add_paragraph(text(&period_text(content)))
        .add_paragraph(heading("Summary", 26));
    let mut summary = vec![TableRow::new(vec![cell("Item", true), cell("Value", true)])];
    for (k, v) in content["summary"].as_object().into_iter().flatten() {
        summary.push(TableRow::new(vec![cell(k, false), cell(&plain(v), false)]));
    }
    doc = doc.add_table(Table::new(summary));
    for (_, title, columns, rows) in sections_of(content) {
        doc = doc.add_paragraph(heading(&title, 26));
        if rows.is_empty() {
            doc = doc.add_paragraph(text("Nothing in this period."));
            continue;
        }
        let mut t = vec![TableRow::new(columns.iter().map(|c| cell(c, true)).collect())];
        t.extend(
            rows.iter()
                .take(crate::api::export::EXPORT_REPORT_ROWS_MAX)
                .map(|r| TableRow::new(r.iter().map(|v| cell(&plain(v), false)).collect())),
        );
        doc = doc.add_table(Table::new(t));
    }
    let mut out = std::io::Cursor::new(Vec::new());
    doc.build().pack(&mut out)?;
    Ok(out.into_inner())
}

/// Puts the sections into a report's JSON (each as an array of objects, listed in `sections`).
fn with_sections(mut content: Value, sections: Vec<Section>) -> Value {
    let list: Vec<Value> =
        sections.iter().map(|s| json!({"name": s.name, "title": s.title, "columns": s.columns})).collect();
    for s in &sections {
        content[s.name] = s.json();
    }
    content["sections"] = Value::Array(list);
    content
}

// ---- What the trail says about submissions ----

/// A channel as the reports name it: rest, soap, grpc, batch, web.
pub fn channel_name(channel: &str) -> &str {
    match channel {
        c if c.starts_with("batch") => "batch",
        "form" | "web" => "web",
        "" | "system" => "rest",
        c => c,
    }
}

/// The dataset a submission event is about (`dataset/<id>`, a records or batches path, or the
/// batch receipt's detail).
fn dataset_of(e: &state::AuditEvent, detail: &Value) -> String {
    if let Some(d) = e.target.strip_prefix("dataset/") {
        return d.to_string();
    }
    if let Some(rest) = e.target.strip_prefix("/api/v1/datasets/")
        && let Some((d, _)) = rest.split_once('/')
    {
        return d.to_string();
    }
    detail["dataset"].as_str().map_or_else(|| "(unknown)".into(), str::to_string)
}

fn source_of_event(e: &state::AuditEvent, detail: &Value) -> String {
    if !e.source.is_empty() {
        return e.source.clone();
    }
    if let Some(s) = dtm_cluster::audit::source_of(&e.principal) {
        return s.to_string();
    }
    detail["source"].as_str().filter(|s| !s.is_empty()).map_or_else(|| e.principal.clone(), str::to_string)
}

/// What kind of submission event an entry is, if it is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Submission {
    /// A real-time submission that reached the log (`records.ingest`, not part of a batch).
    RealTime,
    /// A batch upload's receipt.
    Batch,
    /// A submission request refused before it reached the log (validation, credentials, limits).
    Refused,
}

fn submission_kind(e: &state::AuditEvent) -> Option<Submission> {
    match e.operation.as_str() {
        "records.ingest" if !e.channel.starts_with("batch") => Some(Submission::RealTime),
        "records.ingest" => None,
        "batch.receipt" => Some(Submission::Batch),
        _ if e.status >= 400 || e.outcome.starts_with("status:4") || e.outcome.starts_with("status:5") => {
            let t = e.target.as_str();
            let submission_path = (t.starts_with("/api/v1/datasets/")
                && (t.ends_with("/records") || t.ends_with("/batches")))
                || t == "/soap/v1"
                || t.starts_with("dtm.v1.Ingest/")
                || (e.operation == "records.ingest");
            (submission_path && e.operation.starts_with("http.post")).then_some(Submission::Refused)
        }
        _ => None,
    }
}

/// The failure cause of a failed submission: its stable error code when known, else its outcome.
fn cause_of(e: &state::AuditEvent, detail: &Value) -> String {
    let code = detail["error"].as_str().or_else(|| detail["error_code"].as_str());
    match (e.outcome.strip_prefix("status:"), code) {
        (Some(status), Some(code)) => format!("{status} {code}"),
        (Some(status), None) => format!("HTTP {status}"),
        (None, _) => e.outcome.clone(),
    }
}

#[derive(Default, Clone, Copy)]
struct Counts {
    transactions: u64,
    ok: u64,
    failed: u64,
    records_accepted: u64,
    records_rejected: u64,
    duplicates: u64,
    bytes_in: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.transactions += o.transactions;
        self.ok += o.ok;
        self.failed += o.failed;
        self.records_accepted += o.records_accepted;
        self.records_rejected += o.records_rejected;
        self.duplicates += o.duplicates;
        self.bytes_in += o.bytes_in;
    }

    fn row(&self) -> Vec<Value> {
        let rate = if self.transactions == 0 { 0.0 } else { self.ok as f64 * 100.0 / self.transactions as f64 };
        vec![
            json!(self.transactions),
            json!(self.ok),
            json!(self.failed),
            json!(round2(rate)),
            json!(self.records_accepted),
            json!(self.records_rejected),
        ]
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Bounded map of counts: past `GROUPS_MAX` keys, new keys count under `fold`.
struct Bounded<K: Ord, V>(BTreeMap<K, V>);

impl<K: Ord + Clone, V: Default> Bounded<K, V> {
    fn new() -> Self {
        Bounded(BTreeMap::new())
    }
    fn at(&mut self, key: K, fold: impl FnOnce() -> K) -> &mut V {
        let key = if self.0.len() < GROUPS_MAX || self.0.contains_key(&key) { key } else { fold() };
        self.0.entry(key).or_default()
    }
}

/// One failure cause with an example message.
#[derive(Default)]
struct Cause {
    count: u64,
    example: String,
}

/// What a walk of the trail over a period found about submissions.
struct Transactions {
    by_group: Bounded<(String, String, String), Counts>,
    causes: Bounded<(String, String, String, String), Cause>,
    examined: u64,
    truncated: bool,
    chain_size: u64,
}

fn cut(s: &str) -> String {
    if s.len() <= EXAMPLE_BYTES_MAX {
        return s.to_string();
    }
    let mut end = EXAMPLE_BYTES_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn transactions(reader: &StateReader, from_ms: u64, to_ms: u64) -> Result<Transactions, StoreError> {
    let head = reader.get_msg::<state::AuditHead>(tables::AUDIT_HEAD)?.unwrap_or_default();
    let filter = trail::Filter { from_ms: Some(from_ms), to_ms: Some(to_ms), ..Default::default() };
    let mut t = Transactions {
        by_group: Bounded::new(),
        causes: Bounded::new(),
        examined: 0,
        truncated: false,
        chain_size: head.size,
    };
    let other3 = || ("(other)".to_string(), "(other)".to_string(), "(other)".to_string());
    let walked = trail::walk(reader, &filter, None, REPORT_SCAN_MAX, |f| {
        if f.entry.seq > head.size {
            return true;
        }
        let e = &f.event;
        let Some(kind) = submission_kind(e) else { return true };
        let detail: Value = serde_json::from_slice(&e.detail_json).unwrap_or(Value::Null);
        let n = e.count.max(1);
        let key = (source_of_event(e, &detail), dataset_of(e, &detail), channel_name(&e.channel).to_string());
        let mut c = Counts { transactions: n, bytes_in: e.bytes_in, ..Default::default() };
        let ok = trail::succeeded(&e.outcome);
        match kind {
            Submission::RealTime | Submission::Refused => {
                if ok {
                    c.ok = n;
                    c.records_accepted = e.records;
                    c.duplicates = detail["duplicates"].as_u64().unwrap_or(0);
                } else {
                    c.failed = n;
                    c.records_rejected = detail["records"].as_u64().unwrap_or(0);
                }
            }
            Submission::Batch => {
                // A batch is one transaction; it failed when nothing of it could be stored as sent.
                c.records_accepted = detail["accepted"].as_u64().unwrap_or(e.records);
                c.records_rejected = detail["rejected"].as_u64().unwrap_or(0);
                c.duplicates = detail["duplicates"].as_u64().unwrap_or(0);
                if ok && c.records_rejected == 0 {
                    c.ok = n;
                } else if ok {
                    // Completed with some rows rejected: a success with rejected rows, counted
                    // under the rows' causes below.
                    c.ok = n;
                } else {
                    c.failed = n;
                }
            }
        }
        t.by_group.at(key.clone(), other3).add(&c);
        if !ok {
            let cause = cause_of(e, &detail);
            let example = detail["message"].as_str().unwrap_or_default();
            let entry = t.causes.at((cause, key.0.clone(), key.1.clone(), key.2.clone()), || {
                ("(other)".into(), "(other)".into(), "(other)".into(), "(other)".into())
            });
            entry.count += n;
            if entry.example.is_empty() {
                entry.example = cut(example);
            }
        }
        if kind == Submission::Batch && c.records_rejected > 0 {
            // The rows' own causes, from the stored receipt (its first errors).
            let batch_id = e.target.strip_prefix("batch/").unwrap_or_default();
            let receipt = reader.get_msg::<state::BatchReceipt>(&tables::batch(batch_id)).ok().flatten();
            let mut listed = 0u64;
            let mut by_field: BTreeMap<String, (u64, String)> = BTreeMap::new();
            for err in receipt.iter().flat_map(|r| &r.errors) {
                let field = if err.field.is_empty() { "(row)".to_string() } else { err.field.clone() };
                let slot = by_field.entry(format!("invalid row: {field}")).or_default();
                slot.0 += 1;
                if slot.1.is_empty() {
                    slot.1 = cut(&err.message);
                }
                listed += 1;
            }
            // Rows the receipt counts beyond the errors it lists.
            if c.records_rejected > listed {
                by_field.entry("invalid row: (not listed)".into()).or_default().0 += c.records_rejected - listed;
            }
            for (cause, (count, example)) in by_field {
                let entry = t.causes.at((cause, key.0.clone(), key.1.clone(), key.2.clone()), || {
                    ("(other)".into(), "(other)".into(), "(other)".into(), "(other)".into())
                });
                entry.count += count;
                if entry.example.is_empty() {
                    entry.example = example;
                }
            }
        }
        true
    })?;
    t.examined = walked.examined;
    t.truncated = !walked.done;
    Ok(t)
}

// ---- What the samples say about latency and availability ----

struct Latency {
    channels: BTreeMap<String, ChannelTimes>,
    /// node → (covered ms, ready ms, samples, probes ok, probes failed, first from, last to).
    nodes: BTreeMap<u64, NodeTime>,
    /// Merged intervals during which at least one node was up and ready (approximately: the
    /// intervals of samples whose node was ready for most of them).
    any_ready: Vec<(u64, u64)>,
    samples: u64,
    truncated: bool,
    /// The longest interval of a sample (or sample interval a node declared), and the latest end
    /// of a sample.
    span_max_ms: u64,
    latest_ms: u64,
}

/// One channel's requests over a period.
struct ChannelTimes {
    /// Every request's latency, merged from the samples.
    histogram: hdrhistogram::Histogram<u64>,
    /// Requests per outcome class.
    classes: BTreeMap<String, u64>,
    max_us: u64,
    sum_us: u64,
}

#[derive(Default, Clone, Copy)]
struct NodeTime {
    covered_ms: u64,
    ready_ms: u64,
    samples: u64,
    probes_ok: u64,
    probes_failed: u64,
    /// The start of the node's first sample in the period (a node that joined during it is
    /// counted from then).
    first_ms: u64,
}

fn latency(reader: &StateReader, from_ms: u64, to_ms: u64) -> Result<Latency, StoreError> {
    let mut l = Latency {
        channels: BTreeMap::new(),
        nodes: BTreeMap::new(),
        any_ready: Vec::new(),
        samples: 0,
        truncated: false,
        span_max_ms: 0,
        latest_ms: 0,
    };
    let start = perf_tables::sample_key(from_ms.saturating_add(1), 0);
    let mut intervals = Vec::new();
    reader.for_each_checked_from(perf_tables::SAMPLE, &start, |_, value| {
        let s = state::PerformanceSample::decode(value?.as_slice())?;
        // Samples are keyed by their end; the last one of the period may end after it.
        if s.from_ms >= to_ms {
            return Ok(false);
        }
        if l.samples as usize >= SAMPLES_SCAN_MAX {
            l.truncated = true;
            return Ok(false);
        }
        l.samples += 1;
        let (a, b) = (s.from_ms.max(from_ms), s.to_ms.min(to_ms));
        let span = s.to_ms.saturating_sub(s.from_ms).max(1);
        let part = b.saturating_sub(a);
        l.span_max_ms = l.span_max_ms.max(span).max(s.interval_ms);
        l.latest_ms = l.latest_ms.max(s.to_ms);
        let n = l.nodes.entry(s.node_id).or_default();
        n.covered_ms += part;
        // Ready time in proportion to the part of the interval inside the period.
        n.ready_ms += (s.ready_ms as u128 * part as u128 / span as u128) as u64;
        n.first_ms = if n.samples == 0 { a } else { n.first_ms.min(a) };
        n.samples += 1;
        n.probes_ok += s.probes_ok;
        n.probes_failed += s.probes_failed;
        if s.ready_ms * 2 >= span && part > 0 {
            intervals.push((a, b));
        }
        for c in &s.channels {
            let ch = l.channels.entry(channel_name(&c.channel).to_string()).or_insert_with(|| ChannelTimes {
                histogram: crate::perf::histogram_of(std::iter::empty()),
                classes: BTreeMap::new(),
                max_us: 0,
                sum_us: 0,
            });
            let _ = ch.histogram.add(crate::perf::histogram_of(&c.buckets));
            *ch.classes.entry(c.class.clone()).or_insert(0) += c.count;
            ch.max_us = ch.max_us.max(c.max_us);
            ch.sum_us = ch.sum_us.saturating_add(c.sum_us);
        }
        Ok(true)
    })?;
    intervals.sort_unstable();
    for (a, b) in intervals {
        match l.any_ready.last_mut() {
            // Samples of one node follow each other; a gap of up to a second is the same up time.
            Some(last) if a <= last.1 + 1_000 => last.1 = last.1.max(b),
            _ => l.any_ready.push((a, b)),
        }
    }
    Ok(l)
}

fn ms(us: u64) -> f64 {
    round2(us as f64 / 1000.0)
}

// ---- The performance report ----

/// A report's period and identity.
pub struct Spec {
    pub id: String,
    pub from_ms: u64,
    pub to_ms: u64,
    pub created_by: String,
    pub created_at_ms: u64,
}

/// Computes the system-performance report over `[from_ms, to_ms)` (blocking).
pub fn performance(reader: &StateReader, spec: &Spec) -> Result<state::PerformanceReport, StoreError> {
    performance_with(reader, spec, true)
}

/// The performance report, with or without the transactions (which walk the trail): the
/// compliance check needs only response times and availability.
pub fn performance_with(
    reader: &StateReader,
    spec: &Spec,
    with_transactions: bool,
) -> Result<state::PerformanceReport, StoreError> {
    let t = if with_transactions {
        transactions(reader, spec.from_ms, spec.to_ms)?
    } else {
        Transactions { by_group: Bounded::new(), causes: Bounded::new(), examined: 0, truncated: false, chain_size: 0 }
    };
    let l = latency(reader, spec.from_ms, spec.to_ms)?;

    let mut total = Counts::default();
    let mut by_source: BTreeMap<String, Counts> = BTreeMap::new();
    let mut by_dataset: BTreeMap<String, Counts> = BTreeMap::new();
    let mut by_channel: BTreeMap<String, Counts> = BTreeMap::new();
    for ((s, d, c), n) in &t.by_group.0 {
        total.add(n);
        by_source.entry(s.clone()).or_default().add(n);
        by_dataset.entry(d.clone()).or_default().add(n);
        by_channel.entry(c.clone()).or_default().add(n);
    }
    let counts_cols = ["transactions", "ok", "failed", "success_percent", "records_accepted", "records_rejected"];
    let section = |name, title, keys: Vec<&'static str>, map: Vec<(Vec<String>, Counts)>| {
        let mut rows: Vec<(Vec<String>, Counts)> = map;
        rows.sort_by(|a, b| b.1.transactions.cmp(&a.1.transactions).then_with(|| a.0.cmp(&b.0)));
        rows.truncate(SECTION_ROWS_MAX);
        let mut columns = keys.clone();
        columns.extend(counts_cols);
        Section {
            name,
            title,
            columns,
            rows: rows.into_iter().map(|(k, c)| k.into_iter().map(|x| json!(x)).chain(c.row()).collect()).collect(),
        }
    };
    let one = |m: BTreeMap<String, Counts>| m.into_iter().map(|(k, c)| (vec![k], c)).collect::<Vec<_>>();
    let mut sections = vec![
        section("by_channel", "Transactions by channel", vec!["channel"], one(by_channel.clone())),
        section("by_source", "Transactions by source system", vec!["source"], one(by_source)),
        section("by_dataset", "Transactions by dataset", vec!["dataset"], one(by_dataset)),
        section(
            "by_source_dataset_channel",
            "Transactions by source, dataset and channel",
            vec!["source", "dataset", "channel"],
            t.by_group.0.iter().map(|((s, d, c), n)| (vec![s.clone(), d.clone(), c.clone()], *n)).collect(),
        ),
    ];
    // Failure causes, largest first.
    let mut causes: Vec<_> = t.causes.0.iter().collect();
    causes.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(b.0)));
    let mut cause_totals: BTreeMap<&str, u64> = BTreeMap::new();
    for ((cause, ..), c) in &causes {
        *cause_totals.entry(cause.as_str()).or_insert(0) += c.count;
    }
    let mut totals: Vec<_> = cause_totals.into_iter().collect();
    totals.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    sections.push(Section {
        name: "failure_causes",
        title: "Causes of failures",
        columns: vec!["cause", "count"],
        rows: totals.iter().take(SECTION_ROWS_MAX).map(|(c, n)| vec![json!(c), json!(n)]).collect(),
    });
    sections.push(Section {
        name: "failure_causes_detail",
        title: "Causes of failures by source, dataset and channel",
        columns: vec!["cause", "source", "dataset", "channel", "count", "example"],
        rows: causes
            .iter()
            .take(SECTION_ROWS_MAX)
            .map(|((cause, s, d, ch), c)| {
                vec![json!(cause), json!(s), json!(d), json!(ch), json!(c.count), json!(c.example)]
            })
            .collect(),
    });
    // Response times per channel.
    let mut all = crate::perf::histogram_of(std::iter::empty());
    let mut rt_rows = Vec::new();
    let mut p95_by_channel = serde_json::Map::new();
    for (ch, ChannelTimes { histogram: h, classes, max_us, sum_us }) in &l.channels {
        let _ = all.add(h);
        let n = h.len();
        let q = |x: f64| if n == 0 { 0.0 } else { ms(h.value_at_quantile(x)) };
        p95_by_channel.insert(ch.clone(), json!(q(0.95)));
        rt_rows.push(vec![
            json!(ch),
            json!(n),
            json!(classes.get("ok").copied().unwrap_or(0)),
            json!(classes.get("client_error").copied().unwrap_or(0)),
            json!(classes.get("server_error").copied().unwrap_or(0)),
            json!(sum_us.checked_div(n).map_or(0.0, ms)),
            json!(q(0.5)),
            json!(q(0.95)),
            json!(q(0.99)),
            json!(ms(*max_us)),
        ]);
    }
    sections.push(Section {
        name: "response_times",
        title: "Response times by channel (milliseconds)",
        columns: vec![
            "channel",
            "requests",
            "ok",
            "client_error",
            "server_error",
            "mean_ms",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "max_ms",
        ],
        rows: rt_rows,
    });
    // Availability: per node over the observed window, and of the cluster (some node ready).
    // The last interval's samples are still on their way (a node proposes one per interval): the
    // window ends at the newest sample, or two spans before now when samples stopped coming, so
    // an outage of every node still counts once it is older than that.
    let now = spec.created_at_ms.max(spec.from_ms + 1);
    let settled = now.saturating_sub(l.span_max_ms.saturating_mul(2)).max(l.latest_ms);
    let window_to = spec.to_ms.min(now).min(settled.max(spec.from_ms + 1));
    let first = l.any_ready.first().map_or(window_to, |x| x.0);
    let window_from = spec.from_ms.max(first.min(window_to));
    let window = window_to.saturating_sub(window_from).max(1);
    let pct = |x: u64| round2((x.min(window) as f64) * 100.0 / window as f64);
    let mut av_rows = Vec::new();
    for (node, n) in &l.nodes {
        // Counted from the node's first sample in the period (it may have joined during it).
        let since = n.first_ms.clamp(window_from, window_to);
        let node_window = window_to.saturating_sub(since).max(1);
        let percent = round2((n.ready_ms.min(node_window) as f64) * 100.0 / node_window as f64);
        av_rows.push(vec![
            json!(node),
            json!(rfc3339(since)),
            json!(n.samples),
            json!(n.covered_ms),
            json!(n.ready_ms),
            json!(percent),
            json!(n.probes_ok),
            json!(n.probes_failed),
        ]);
    }
    // Nodes that reported facts before the period and no sample in it were down throughout.
    for (_, v) in reader.scan(perf_tables::FACTS, None, 10_000)? {
        let f = state::NodeFacts::decode(v.as_slice())?;
        if !l.nodes.contains_key(&f.node_id) && f.reported_at_ms < spec.from_ms {
            av_rows.push(vec![
                json!(f.node_id),
                json!(rfc3339(window_from)),
                json!(0),
                json!(0),
                json!(0),
                json!(0.0),
                json!(0),
                json!(0),
            ]);
        }
    }
    let any_ready_ms: u64 =
        l.any_ready.iter().map(|(a, b)| b.min(&window_to).saturating_sub(*a.max(&window_from))).sum();
    let overall = if l.samples == 0 { Value::Null } else { json!(pct(any_ready_ms)) };
    sections.push(Section {
        name: "availability",
        title: "Availability by node",
        columns: vec![
            "node",
            "counted_from",
            "samples",
            "covered_ms",
            "ready_ms",
            "availability_percent",
            "probes_ok",
            "probes_failed",
        ],
        rows: av_rows,
    });
    let success = if total.transactions == 0 {
        Value::Null
    } else {
        json!(round2(total.ok as f64 * 100.0 / total.transactions as f64))
    };
    let top_cause = totals.first().map(|(c, n)| format!("{c} ({n})")).unwrap_or_else(|| "none".into());
    let q_all = |x: f64| if all.is_empty() { Value::Null } else { json!(ms(all.value_at_quantile(x))) };
    let text = format!(
        "{} transactions ({} ok, {} failed; main failure cause: {}); {} requests timed, p95 {} ms; cluster availability {} % over the observed window",
        total.transactions,
        total.ok,
        total.failed,
        top_cause,
        all.len(),
        q_all(0.95),
        overall
    );
    let content = json!({
        "id": spec.id, "kind": "performance", "title": "System performance report",
        "from": rfc3339(spec.from_ms), "to": rfc3339(spec.to_ms), "from_ms": spec.from_ms, "to_ms": spec.to_ms,
        "generated_at": rfc3339(spec.created_at_ms), "generated_by": spec.created_by,
        "summary": {
            "transactions": total.transactions, "succeeded": total.ok, "failed": total.failed,
            "success_percent": success, "records_accepted": total.records_accepted,
            "records_rejected": total.records_rejected, "duplicates": total.duplicates,
            "main_failure_cause": top_cause,
            "requests_timed": all.len(), "p50_ms": q_all(0.5), "p95_ms": q_all(0.95), "p99_ms": q_all(0.99),
            "availability_percent": overall,
            "observed_from": rfc3339(window_from), "observed_to": rfc3339(window_to),
            "nodes_reporting": l.nodes.len(), "samples": l.samples,
            "audit_entries_examined": t.examined, "audit_chain_size": t.chain_size,
            "truncated": t.truncated || l.truncated,
            "text": text,
        },
        "p95_ms_by_channel": p95_by_channel,
    });
    let content = with_sections(content, sections);
    Ok(state::PerformanceReport {
        id: spec.id.clone(),
        kind: "performance".into(),
        from_ms: spec.from_ms,
        to_ms: spec.to_ms,
        created_at_ms: spec.created_at_ms,
        created_by: spec.created_by.clone(),
        content_json: serde_json::to_vec(&content).map_err(|e| StoreError::Invalid(e.to_string()))?,
    })
}

// ---- The annual connection report ----

#[derive(Default)]
struct SourceYear {
    channels: BTreeSet<String>,
    counts: Counts,
    datasets: BTreeSet<String>,
    batches: u64,
    conflicts: u64,
    auth_failures: u64,
    forbidden: u64,
    rate_limited: u64,
    other_security: u64,
    causes: BTreeMap<String, u64>,
    first_ms: u64,
    last_ms: u64,
}

/// The connection level of a source (`docs/reports.md`): from the collection methods of C2 and C6.
pub fn connection_level(channels: &BTreeSet<String>, ok: u64) -> (u8, &'static str) {
    let realtime = channels.iter().any(|c| matches!(c.as_str(), "rest" | "soap" | "grpc"));
    let batch = channels.contains("batch");
    let web = channels.contains("web");
    match (ok > 0, realtime, batch, web) {
        (false, ..) => (0, "registered, not sending"),
        (true, true, true, _) => (4, "automatic, real-time and batch (C2a, C6)"),
        (true, true, false, _) => (3, "automatic, real-time (C2a)"),
        (true, false, true, _) => (2, "automatic, batch (C2a)"),
        (true, false, false, true) => (1, "entry on the system (C2b)"),
        _ => (1, "other"),
    }
}

/// The recommendations the rules make for one source's year.
fn recommendations(s: &SourceYear, active_days: u64, days_since_last: Option<u64>, exploited: u64) -> Vec<String> {
    let mut out = Vec::new();
    let t = s.counts.transactions;
    if t > 0 && (s.counts.failed as f64) / (t as f64) > REJECTION_RATE_HIGH {
        let top = s.causes.iter().max_by_key(|(_, n)| **n).map(|(c, _)| c.as_str()).unwrap_or("unknown");
        out.push(format!(
            "High rejection rate ({:.1} %, main cause `{top}`): check the schema version the source sends against the dataset's current schema, and its validation errors.",
            s.counts.failed as f64 * 100.0 / t as f64
        ));
    }
    let recs = s.counts.records_accepted + s.counts.duplicates;
    if recs > 0 && (s.counts.duplicates as f64) / (recs as f64) > DUPLICATE_RATE_HIGH {
        out.push(
            "Many duplicates: check the source's retry logic and send an Idempotency-Key with each request.".into(),
        );
    }
    if s.auth_failures >= AUTH_FAILURES_HIGH || s.forbidden >= AUTH_FAILURES_HIGH {
        out.push(format!(
            "{} authentication failures and {} refused operations: review the source's credentials and rotate its API key.",
            s.auth_failures, s.forbidden
        ));
    }
    if s.rate_limited > 0 {
        out.push(format!("Rate-limited {} times: spread the load or agree a higher limit (A2.3).", s.rate_limited));
    }
    if s.counts.ok == 0 {
        out.push("Registered but sent no accepted data this year: confirm the connection is in use (C5) or plan its removal.".into());
    } else if days_since_last.is_some_and(|d| d >= INACTIVE_DAYS) {
        out.push(format!("No activity in the last {INACTIVE_DAYS} days of the period: check the connection with the source's operator."));
    }
    if s.counts.ok > 0 && !s.channels.iter().any(|c| matches!(c.as_str(), "rest" | "soap" | "grpc" | "batch")) {
        out.push("Data arrives only by entry on the system: connect the source's system through the API (C2a).".into());
    }
    if s.counts.ok > 0 && exploited == 0 {
        out.push("Its data was not read or exported this year: check with analysts whether it is still needed.".into());
    }
    if active_days > 0 && out.is_empty() {
        out.push("No action needed.".into());
    }
    out
}

/// Computes the connection report of `[from_ms, to_ms)` (normally a year in Vietnam time).
pub fn connections(reader: &StateReader, spec: &Spec) -> Result<state::PerformanceReport, StoreError> {
    let head = reader.get_msg::<state::AuditHead>(tables::AUDIT_HEAD)?.unwrap_or_default();
    let mut sources: BTreeMap<String, (state::Source, SourceYear)> = BTreeMap::new();
    for (_, v) in reader.scan(tables::SOURCE, None, SOURCES_MAX)? {
        let s = state::Source::decode(v.as_slice())?;
        sources.insert(s.id.clone(), (s, SourceYear::default()));
    }
    // Reads and exports per dataset (exploitation), from the trail.
    let mut reads: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    let filter = trail::Filter { from_ms: Some(spec.from_ms), to_ms: Some(spec.to_ms), ..Default::default() };
    let walked = trail::walk(reader, &filter, None, REPORT_SCAN_MAX, |f| {
        if f.entry.seq > head.size {
            return true;
        }
        let e = &f.event;
        let detail: Value = serde_json::from_slice(&e.detail_json).unwrap_or(Value::Null);
        let n = e.count.max(1);
        if trail::is_export(&e.operation) || e.operation == "lineage.read" {
            if let Some(d) = e.target.strip_prefix("dataset/") {
                let r = reads.entry(d.to_string()).or_default();
                if e.operation.ends_with(".export") {
                    r.1 += n;
                } else {
                    r.0 += n;
                }
                r.2 += e.records;
            }
            return true;
        }
        let source = source_of_event(e, &detail);
        let Some((_, y)) = sources.get_mut(&source) else { return true };
        if let Some(kind) = submission_kind(e) {
            let ok = trail::succeeded(&e.outcome);
            let ch = channel_name(&e.channel).to_string();
            y.channels.insert(ch);
            y.datasets.insert(dataset_of(e, &detail));
            y.counts.transactions += n;
            y.counts.bytes_in += e.bytes_in;
            if kind == Submission::Batch {
                y.batches += 1;
                y.counts.records_accepted += detail["accepted"].as_u64().unwrap_or(e.records);
                y.counts.records_rejected += detail["rejected"].as_u64().unwrap_or(0);
                y.counts.duplicates += detail["duplicates"].as_u64().unwrap_or(0);
                y.conflicts += detail["conflicts"].as_u64().unwrap_or(0);
            } else if ok {
                y.counts.records_accepted += e.records;
                y.counts.duplicates += detail["duplicates"].as_u64().unwrap_or(0);
                y.conflicts += detail["conflicts"].as_u64().unwrap_or(0);
            }
            if ok {
                y.counts.ok += n;
                y.first_ms = if y.first_ms == 0 { e.at_ms } else { y.first_ms.min(e.at_ms) };
                y.last_ms = y.last_ms.max(e.at_ms);
            } else {
                y.counts.failed += n;
                let causes = y.causes.len();
                let cause = cause_of(e, &detail);
                if causes < 100 || y.causes.contains_key(&cause) {
                    *y.causes.entry(cause).or_insert(0) += n;
                }
            }
        }
        match e.status {
            401 => y.auth_failures += n,
            403 => y.forbidden += n,
            429 => y.rate_limited += n,
            _ if e.operation.starts_with("security.") => y.other_security += n,
            _ => {}
        }
        true
    })?;
    // Usage frequency from the connection log (C4): active days and connections.
    let (from_day, to_day) =
        (dtm_cluster::audit::vietnam_day(spec.from_ms), dtm_cluster::audit::vietnam_day(spec.to_ms.saturating_sub(1)));
    let mut rows = Vec::new();
    let mut recs_rows = Vec::new();
    let mut levels: BTreeMap<u8, u64> = BTreeMap::new();
    for (id, (src, y)) in &sources {
        let prefix = tables::connection_days_of(id);
        let (mut active_days, mut connections, mut requests, mut bytes) = (0u64, 0u64, 0u64, 0u64);
        let mut months = BTreeSet::new();
        let mut last_day = 0u32;
        for (k, v) in reader.scan(&prefix, None, 100_000)? {
            let Some(d) = k.get(prefix.len()..).and_then(|t| <[u8; 4]>::try_from(t).ok()).map(u32::from_be_bytes)
            else {
                continue;
            };
            if d < from_day || d > to_day {
                continue;
            }
            let c = state::ConnectionDay::decode(v.as_slice())?;
            active_days += 1;
            connections += c.connections;
            requests += c.requests;
            bytes += c.bytes_in;
            months.insert(d / 100);
            last_day = last_day.max(d);
        }
        let exploited: (u64, u64, u64) = y.datasets.iter().fold((0, 0, 0), |acc, d| {
            let r = reads.get(d).copied().unwrap_or_default();
            (acc.0 + r.0, acc.1 + r.1, acc.2 + r.2)
        });
        let days_since_last =
            (y.last_ms > 0).then(|| spec.to_ms.min(spec.created_at_ms).saturating_sub(y.last_ms) / 86_400_000);
        let (level, level_text) = connection_level(&y.channels, y.counts.ok);
        *levels.entry(level).or_insert(0) += 1;
        let recs = recommendations(y, active_days, days_since_last, exploited.0 + exploited.1);
        let rejection = if y.counts.transactions == 0 {
            0.0
        } else {
            round2(y.counts.failed as f64 * 100.0 / y.counts.transactions as f64)
        };
        rows.push(vec![
            json!(id),
            json!(src.name),
            json!(src.agency),
            json!(if src.removed_at_ms > 0 { "removed" } else { "active" }),
            json!(level),
            json!(level_text),
            json!(y.channels.iter().cloned().collect::<Vec<_>>().join(", ")),
            json!(active_days),
            json!(months.len()),
            json!(connections),
            json!(requests),
            json!(y.counts.transactions),
            json!(y.counts.ok),
            json!(y.counts.failed),
            json!(rejection),
            json!(y.counts.records_accepted),
            json!(y.counts.records_rejected),
            json!(y.counts.duplicates),
            json!(y.conflicts),
            json!(y.batches),
            json!(bytes.max(y.counts.bytes_in)),
            json!(y.datasets.iter().cloned().collect::<Vec<_>>().join(", ")),
            json!(exploited.0),
            json!(exploited.1),
            json!(exploited.2),
            json!(y.auth_failures),
            json!(y.forbidden),
            json!(y.rate_limited),
            json!(y.other_security),
            json!(if y.last_ms > 0 { rfc3339(y.last_ms) } else { String::new() }),
            json!(recs.join(" ")),
        ]);
        for r in recs {
            recs_rows.push(vec![json!(id), json!(r)]);
        }
    }
    let sections = vec![
        Section {
            name: "sources",
            title: "Connected systems",
            columns: vec![
                "source",
                "name",
                "agency",
                "status",
                "connection_level",
                "connection_level_text",
                "channels",
                "active_days",
                "active_months",
                "connections",
                "requests",
                "transactions",
                "succeeded",
                "failed",
                "rejection_percent",
                "records",
                "records_rejected",
                "duplicates",
                "conflicts",
                "batches",
                "bytes_in",
                "datasets",
                "reads_of_its_data",
                "exports_of_its_data",
                "records_read_or_exported",
                "auth_failures",
                "forbidden",
                "rate_limited",
                "other_security_events",
                "last_activity",
                "recommendations",
            ],
            rows,
        },
        Section {
            name: "recommendations",
            title: "Recommendations",
            columns: vec!["source", "recommendation"],
            rows: recs_rows,
        },
    ];
    let level_counts: serde_json::Map<String, Value> =
        levels.iter().map(|(k, v)| (format!("level_{k}"), json!(v))).collect();
    let content = json!({
        "id": spec.id, "kind": "connections", "title": "Annual connection report (C8, C9)",
        "from": rfc3339(spec.from_ms), "to": rfc3339(spec.to_ms), "from_ms": spec.from_ms, "to_ms": spec.to_ms,
        "generated_at": rfc3339(spec.created_at_ms), "generated_by": spec.created_by,
        "summary": {
            "sources": sources.len(),
            "sources_sending": sources.values().filter(|(_, y)| y.counts.ok > 0).count(),
            "connection_levels": level_counts,
            "audit_entries_examined": walked.examined, "audit_chain_size": head.size, "truncated": !walked.done,
        },
    });
    let content = with_sections(content, sections);
    Ok(state::PerformanceReport {
        id: spec.id.clone(),
        kind: "connections".into(),
        from_ms: spec.from_ms,
        to_ms: spec.to_ms,
        created_at_ms: spec.created_at_ms,
        created_by: spec.created_by.clone(),
        content_json: serde_json::to_vec(&content).map_err(|e| StoreError::Invalid(e.to_string()))?,
    })
}

/// The command that stores a report.
pub fn store_command(report: state::PerformanceReport) -> state::command::Kind {
    state::command::Kind::Performance(state::PerformanceCommand {
        kind: Some(state::performance_command::Kind::StoreReport(state::StorePerformanceReport {
            report: Some(report),
        })),
    })
}

// ---- Monthly and annual reports ----

pub fn monthly_id(year: i32, month: u8) -> String {
    format!("performance-{year:04}-{month:02}")
}

pub fn annual_id(year: i32) -> String {
    format!("connections-{year:04}")
}

/// Has the leader store last month's performance report and last year's connection report (when
/// `enabled`); the task ends with the node.
pub fn start_monthly(node: &Arc<ClusterNode>, enabled: bool) {
    if enabled {
        crate::audit_reports::start_leader_task(node, "periodic performance and connection reports", make_due);
    }
}

/// Stores the reports due at `now_ms` that do not exist yet.
async fn make_due(node: Arc<ClusterNode>, now_ms: u64) -> anyhow::Result<()> {
    let (y, m) = trail::vietnam_month(now_ms);
    let this_month = trail::month_start_ms(y, m);
    if now_ms < this_month + MONTHLY_GRACE_MS {
        return Ok(());
    }
    let (py, pm) = if m <= 1 { (y - 1, 12) } else { (y, m - 1) };
    let mut due = vec![(monthly_id(py, pm), "performance", trail::month_start_ms(py, pm), this_month)];
    if m == 1 {
        due.push((annual_id(y - 1), "connections", trail::month_start_ms(y - 1, 1), this_month));
    }
    for (id, kind, from_ms, to_ms) in due {
        if node.reader.get(&perf_tables::report_key(&id))?.is_some() {
            continue;
        }
        let spec = Spec {
            id: id.clone(),
            from_ms,
            to_ms,
            created_by: format!("system:node-{}", node.id),
            created_at_ms: now_ms,
        };
        let reader = node.reader.clone();
        let report = tokio::task::spawn_blocking(move || {
            if kind == "performance" { performance(&reader, &spec) } else { connections(&reader, &spec) }
        })
        .await??;
        let (resp, _) = node.write(crate::audit::system_command(&node, store_command(report))).await?;
        if let Some(state::command_response::Result::Rejected(r)) = resp.result {
            anyhow::bail!("report {id} refused: {}", r.message);
        }
        tracing::info!(target: "reports", report = %id, "periodic report stored");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(op: &str, target: &str, outcome: &str, channel: &str, status: u32) -> state::AuditEvent {
        state::AuditEvent {
            principal: "source:s1/k1".into(),
            operation: op.into(),
            target: target.into(),
            outcome: outcome.into(),
            channel: channel.into(),
            status,
            count: 1,
            ..Default::default()
        }
    }

    #[test]
    fn submissions_are_recognised_and_attributed() {
        let ok = event("records.ingest", "dataset/d", "ok", "soap", 0);
        assert_eq!(submission_kind(&ok), Some(Submission::RealTime));
        assert_eq!(submission_kind(&event("records.ingest", "dataset/d", "ok", "batch:csv", 0)), None);
        assert_eq!(
            submission_kind(&event("batch.receipt", "batch/b", "completed", "batch:csv", 0)),
            Some(Submission::Batch)
        );
        let refused = event("http.post", "/api/v1/datasets/d/records", "status:422", "rest", 422);
        assert_eq!(submission_kind(&refused), Some(Submission::Refused));
        assert_eq!(dataset_of(&refused, &Value::Null), "d");
        assert_eq!(source_of_event(&refused, &Value::Null), "s1");
        assert_eq!(cause_of(&refused, &json!({"error": "invalid_records"})), "422 invalid_records");
        assert_eq!(submission_kind(&event("http.get", "/api/v1/datasets/d/records", "status:404", "rest", 404)), None);
        assert_eq!(submission_kind(&event("records.read", "dataset/d", "ok", "rest", 200)), None);
        assert_eq!(channel_name("batch:xlsx"), "batch");
    }

    #[test]
    fn levels_and_recommendations_follow_the_rules() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(connection_level(&set(&["rest", "batch"]), 5).0, 4);
        assert_eq!(connection_level(&set(&["soap"]), 5).0, 3);
        assert_eq!(connection_level(&set(&["batch"]), 5).0, 2);
        assert_eq!(connection_level(&set(&["web"]), 5).0, 1);
        assert_eq!(connection_level(&set(&["rest"]), 0).0, 0);
        let mut y = SourceYear { channels: set(&["rest"]), ..Default::default() };
        y.counts = Counts { transactions: 10, ok: 7, failed: 3, records_accepted: 7, ..Default::default() };
        y.causes.insert("422 invalid_records".into(), 3);
        let r = recommendations(&y, 1, Some(0), 4);
        assert!(r.iter().any(|x| x.contains("High rejection rate (30.0 %") && x.contains("schema version")), "{r:?}");
        y.counts.failed = 0;
        y.counts.ok = 10;
        assert_eq!(recommendations(&y, 1, Some(0), 4), vec!["No action needed.".to_string()]);
        assert!(recommendations(&y, 1, Some(120), 4).iter().any(|x| x.contains("No activity")));
    }

    #[test]
    fn renderings_hold_every_section() {
        let content = with_sections(
            json!({"title": "T", "from": "a", "to": "b", "summary": {"transactions": 3}}),
            vec![Section {
                name: "by_channel",
                title: "By channel",
                columns: vec!["channel", "ok"],
                rows: vec![vec![json!("rest"), json!(2)], vec![json!("=cmd"), json!(1)]],
            }],
        );
        let c = csv(&content);
        assert!(c.starts_with("section,row,field,value\r\n"), "{c}");
        assert!(c.contains("by_channel,1,channel,rest") && c.contains("by_channel,2,channel,'=cmd"), "{c}");
        assert!(c.contains("summary,0,transactions,3"), "{c}");
        assert!(xlsx(&content).expect("xlsx").starts_with(b"PK"));
        assert!(docx(&content).expect("docx").starts_with(b"PK"));
    }
}

// ---- API ----

pub mod api {
    //! `POST /reports/performance`, `GET /reports/performance`, `POST /reports/connections`,
    //! `GET /reports/connections`, `GET /reports`, `GET /reports/{id}` (admin, auditor).

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
    use dtm_model::state;
    use serde::Deserialize;
    use serde_json::Value;
    use serde_json::json;

    use super::*;
    use crate::api::AppState;
    use crate::api::auth;
    use crate::api::error::ApiError;
    use crate::api::error::ApiResult;

    /// A report request body.
    const REQUEST_BYTES_MAX: usize = 4 * 1024;
    /// The longest period of one report.
    pub const PERIOD_DAYS_MAX: u64 = 400;
    /// Reports listed per page.
    const LIST_PAGE_MAX: usize = 100;
    const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";
    const DOCX: &str = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";

    #[derive(Deserialize, Default)]
    pub struct PeriodQuery {
        from: Option<String>,
        to: Option<String>,
        year: Option<String>,
        format: Option<String>,
    }

    /// The period of a request: `from`/`to` (RFC 3339, a day, month or year in Vietnam time, or
    /// ms), or `year` (connection reports: a calendar year in Vietnam time).
    fn period(kind: &str, from: Option<&str>, to: Option<&str>, year: Option<&str>) -> ApiResult<(u64, u64)> {
        let (from_ms, to_ms) = match (from, to, year) {
            (_, _, Some(y)) => {
                if y.len() != 4 || !y.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ApiError::bad_request("`year` is a year, e.g. 2026"));
                }
                (crate::api::audit::instant("year", y, false)?, crate::api::audit::instant("year", y, true)?)
            }
            (Some(f), Some(t), None) => {
                (crate::api::audit::instant("from", f, false)?, crate::api::audit::instant("to", t, true)?)
            }
            _ => {
                return Err(ApiError::bad_request(if kind == "connections" {
                    "give `year` (or `from` and `to`)"
                } else {
                    "give `from` and `to`"
                }));
            }
        };
        if from_ms >= to_ms {
            return Err(ApiError::bad_request("`from` must be before `to`"));
        }
        if to_ms - from_ms > PERIOD_DAYS_MAX * 86_400_000 {
            return Err(ApiError::bad_request(format!("a report covers at most {PERIOD_DAYS_MAX} days")));
        }
        Ok((from_ms, to_ms))
    }

    async fn compute(state: &AppState, kind: &'static str, spec: Spec) -> ApiResult<state::PerformanceReport> {
        state.node.linearizable_barrier().await?;
        let reader = state.node.reader.clone();
        tokio::task::spawn_blocking(move || {
            if kind == "performance" { performance(&reader, &spec) } else { connections(&reader, &spec) }
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
    }

    fn summary(r: &state::PerformanceReport) -> Value {
        let content: Value = serde_json::from_slice(&r.content_json).unwrap_or(Value::Null);
        json!({
            "id": r.id, "kind": r.kind, "from": rfc3339(r.from_ms), "to": rfc3339(r.to_ms),
            "created_at": rfc3339(r.created_at_ms), "created_by": r.created_by, "summary": content["summary"],
        })
    }

    /// The report in the asked format.
    fn render(id: &str, content_json: &[u8], format: Option<&str>) -> ApiResult<Response> {
        let format = format.unwrap_or("json");
        let content: Value = serde_json::from_slice(content_json).map_err(ApiError::internal)?;
        let (media, body): (&str, Vec<u8>) = match format {
            "json" => ("application/json", content_json.to_vec()),
            "csv" => ("text/csv; charset=utf-8", csv(&content).into_bytes()),
            "xlsx" => (XLSX, xlsx(&content).map_err(ApiError::internal)?),
            "docx" => (DOCX, docx(&content).map_err(ApiError::internal)?),
            other => return Err(ApiError::bad_request(format!("unknown format `{other}` (json, csv, xlsx, docx)"))),
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

    /// `GET /reports/performance?from=&to=&format=`.
    pub async fn performance_now(
        State(state): State<AppState>,
        headers: HeaderMap,
        Query(q): Query<PeriodQuery>,
    ) -> ApiResult<Response> {
        on_demand(state, headers, "performance", q).await
    }

    /// `GET /reports/connections?year=|from=&to=&format=`.
    pub async fn connections_now(
        State(state): State<AppState>,
        headers: HeaderMap,
        Query(q): Query<PeriodQuery>,
    ) -> ApiResult<Response> {
        on_demand(state, headers, "connections", q).await
    }

    /// `POST /reports/performance {"from","to"}`.
    pub async fn create_performance(
        State(state): State<AppState>,
        headers: HeaderMap,
        body: Body,
    ) -> ApiResult<(StatusCode, Json<Value>)> {
        create(state, headers, "performance", body).await
    }

    /// `POST /reports/connections {"year"} | {"from","to"}`.
    pub async fn create_connections(
        State(state): State<AppState>,
        headers: HeaderMap,
        body: Body,
    ) -> ApiResult<(StatusCode, Json<Value>)> {
        create(state, headers, "connections", body).await
    }

    /// A report of `kind` computed now over the asked period, not stored.
    async fn on_demand(state: AppState, headers: HeaderMap, kind: &'static str, q: PeriodQuery) -> ApiResult<Response> {
        let p = auth::require(&state, &headers, &auth::AUDIT_READ).await?;
        crate::audit::note_operation(&format!("{kind}.report.read"), &format!("report/{kind}"));
        if !matches!(q.format.as_deref(), None | Some("json" | "csv" | "xlsx" | "docx")) {
            return Err(ApiError::bad_request("`format` is json, csv, xlsx or docx"));
        }
        let (from_ms, to_ms) = period(kind, q.from.as_deref(), q.to.as_deref(), q.year.as_deref())?;
        let id = format!("{kind}-on-demand");
        let spec = Spec { id: id.clone(), from_ms, to_ms, created_by: p.name(), created_at_ms: crate::api::now_ms() };
        let report = compute(&state, kind, spec).await?;
        render(&id, &report.content_json, q.format.as_deref())
    }

    /// Computes a report of `kind` and stores it through the log; 201 with its id and summary.
    async fn create(
        state: AppState,
        headers: HeaderMap,
        kind: &'static str,
        body: Body,
    ) -> ApiResult<(StatusCode, Json<Value>)> {
        let p = auth::require(&state, &headers, &auth::AUDIT_REPORT).await?;
        let bytes = crate::api::read_body(&headers, body, REQUEST_BYTES_MAX).await?;
        let v = crate::api::parse_json(&headers, &bytes)?;
        let text = |name: &str| -> ApiResult<Option<String>> {
            match v.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(Value::Number(n)) if name == "year" => Ok(Some(n.to_string())),
                Some(_) => Err(ApiError::bad_request(format!("`{name}` must be a string"))),
            }
        };
        let (from, to, year) = (text("from")?, text("to")?, text("year")?);
        let (from_ms, to_ms) = period(kind, from.as_deref(), to.as_deref(), year.as_deref())?;
        let id = format!("{kind}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        crate::audit::note_operation(&format!("{kind}.report.create"), &format!("report/{id}"));
        let spec = Spec { id: id.clone(), from_ms, to_ms, created_by: p.name(), created_at_ms: crate::api::now_ms() };
        let report = compute(&state, kind, spec).await?;
        let answer = summary(&report);
        let (resp, index) = state.node.write(crate::api::command(&state, store_command(report))).await?;
        if let Some(state::command_response::Result::Rejected(r)) = resp.result {
            return Err(crate::api::error::rejected(&r.code, r.message));
        }
        let mut answer = answer;
        answer["commit_index"] = json!(index);
        Ok((StatusCode::CREATED, Json(answer)))
    }

    #[derive(Deserialize)]
    pub struct ListQuery {
        kind: Option<String>,
        after: Option<String>,
        limit: Option<usize>,
    }

    /// `GET /reports?kind=&after=&limit=`: stored reports in id order, paged.
    pub async fn list(
        State(state): State<AppState>,
        headers: HeaderMap,
        Query(q): Query<ListQuery>,
    ) -> ApiResult<Json<Value>> {
        auth::require(&state, &headers, &auth::AUDIT_READ).await?;
        crate::audit::note_operation("report.list", "report");
        let limit = q.limit.unwrap_or(LIST_PAGE_MAX).clamp(1, LIST_PAGE_MAX);
        let after = q.after.as_deref().map(perf_tables::report_key);
        let page = crate::api::audit::stored_reports_page(
            &state,
            perf_tables::REPORT,
            after,
            limit,
            |r: &state::PerformanceReport| {
                (r.id.clone(), q.kind.as_deref().is_none_or(|k| k == r.kind).then(|| summary(r)))
            },
        )?;
        Ok(Json(page))
    }

    #[derive(Deserialize)]
    pub struct FormatQuery {
        format: Option<String>,
    }

    /// `GET /reports/{id}?format=json|csv|xlsx|docx`: a stored report.
    pub async fn get(
        State(state): State<AppState>,
        headers: HeaderMap,
        Path(id): Path<String>,
        Query(q): Query<FormatQuery>,
    ) -> ApiResult<Response> {
        auth::require(&state, &headers, &auth::AUDIT_READ).await?;
        crate::audit::note_operation("report.download", &format!("report/{id}"));
        let not_found = || ApiError::not_found(format!("report `{id}` does not exist"));
        if !crate::api::valid_id(&id) {
            return Err(not_found());
        }
        let report = crate::api::lookup_fresh::<state::PerformanceReport>(&state, &perf_tables::report_key(&id))
            .await?
            .ok_or_else(not_found)?;
        render(&id, &report.content_json, q.format.as_deref())
    }
}
