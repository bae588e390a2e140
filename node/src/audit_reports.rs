//! Reading the audit trail (F8, A1.8) and the automatic audit reports (F9).
//!
//! [`walk`] visits the chain in order — by sequence number, or through the time index
//! (`audt/<at_ms><seq>`) when a period is given — and examines at most a budget of entries per call,
//! so an API page, an export or a report never reads an unbounded part of the trail at once; it
//! says where it stopped ([`Cursor`]) so the caller can go on.
//!
//! [`compute`] turns a period of the trail into an access, change or export report (counts by
//! organisation and principal, by target, by outcome and by operation; for exports, who read or
//! exported which dataset and how many records). Reports are stored through
//! `AuditCommand::StoreReport`, so every node serves the same bytes. [`start_monthly`] has the
//! leader store the previous month's three reports once a month (`monthly-YYYY-MM-<kind>`; `apply`
//! keeps the first report stored under an id, so a leader change cannot make two).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;

use dtm_cluster::ClusterNode;
use dtm_cluster::tables;
use dtm_model::state;
use dtm_storage::StateReader;
use dtm_storage::StoreError;
use prost::Message;
use serde_json::Value;
use serde_json::json;

/// Longest filter text (principal, operation, target); events' own fields are at most 512 bytes.
pub const PATTERN_BYTES_MAX: usize = 512;
/// Entries one report reads at most; a longer period is reported as `truncated`.
pub const REPORT_SCAN_MAX: u64 = 5_000_000;
/// Distinct groups counted per table while a report is computed; more are counted as `(other)`.
const REPORT_GROUPS_MAX: usize = 100_000;
/// Rows kept per table of a stored report (the largest groups); the rest are one `(other)` row.
pub const REPORT_ROWS_MAX: usize = 500;
/// How often the leader looks whether last month's reports exist.
const MONTHLY_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// The first look, shortly after start.
const MONTHLY_FIRST_CHECK: Duration = Duration::from_secs(3);
/// A month's reports are made this long after it ended, so late events (a node flushes its
/// explicit events about a second late) are in them.
const MONTHLY_GRACE_MS: u64 = 10 * 60 * 1000;
/// Vietnam time (UTC+7): months and days of reports and the connection log.
const VIETNAM_OFFSET_MS: i64 = 7 * 3600 * 1000;

const _: () = assert!(REPORT_ROWS_MAX < REPORT_GROUPS_MAX);

/// The report kinds (F9): access (reads, exports, logins, refusals), change (everything that
/// changes state), export (exports and record reads: who shared which data).
pub const KINDS: [&str; 3] = ["access", "change", "export"];

// ---- Reading the trail ----

/// A filter on a text field: exact, or a prefix when written with a trailing `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if text.is_empty() || text.len() > PATTERN_BYTES_MAX {
            return Err(format!("a filter is 1 to {PATTERN_BYTES_MAX} bytes"));
        }
        Ok(match text.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.to_string()),
            None => Pattern::Exact(text.to_string()),
        })
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Exact(x) => value == x,
            Pattern::Prefix(p) => value.starts_with(p.as_str()),
        }
    }
}

/// Which entries to visit: a period (`from` inclusive, `to` exclusive, milliseconds) and filters.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    pub principal: Option<Pattern>,
    pub operation: Option<Pattern>,
    pub target: Option<Pattern>,
}

impl Filter {
    /// A period was given: the walk follows the time index.
    pub fn by_time(&self) -> bool {
        self.from_ms.is_some() || self.to_ms.is_some()
    }

    fn matches(&self, e: &state::AuditEvent) -> bool {
        let ok = |p: &Option<Pattern>, v: &str| p.as_ref().is_none_or(|p| p.matches(v));
        ok(&self.principal, &e.principal) && ok(&self.operation, &e.operation) && ok(&self.target, &e.target)
    }
}

/// A position in the trail: the last entry a walk examined. Written `<seq>` in sequence order and
/// `<at_ms>.<seq>` in time order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    Seq(u64),
    Time { at_ms: u64, seq: u64 },
}

impl Cursor {
    pub fn parse(text: &str) -> Option<Cursor> {
        match text.split_once('.') {
            None => text.parse().ok().map(Cursor::Seq),
            Some((at, seq)) => Some(Cursor::Time { at_ms: at.parse().ok()?, seq: seq.parse().ok()? }),
        }
    }

    pub fn text(&self) -> String {
        match self {
            Cursor::Seq(s) => s.to_string(),
            Cursor::Time { at_ms, seq } => format!("{at_ms}.{seq}"),
        }
    }
}

/// Where a walk ended.
#[derive(Debug, Clone, Default)]
pub struct Walk {
    /// Entries examined (matching or not).
    pub examined: u64,
    /// The last entry examined.
    pub last: Option<Cursor>,
    /// True when the walk reached the end of the trail or of the period.
    pub done: bool,
}

/// One entry of the trail with its decoded event.
pub struct Found {
    pub entry: state::AuditEntry,
    pub event: state::AuditEvent,
}

/// Visits the entries after `after` that match `filter`, in order, examining at most `budget`
/// entries; `visit` returns false to stop (after the entry it was given).
///
/// Without a period the walk follows the chain. With one it follows the time index of the stored
/// blocks (each block is the entries of one command, at most `BLOCK_SPAN_MS_MAX` apart, indexed
/// by its latest time): blocks in order of their latest time, entries of a block in chain order,
/// each entry checked against the period exactly. A time cursor is `<block's latest ms>.<seq>`.
pub fn walk(
    reader: &StateReader,
    filter: &Filter,
    after: Option<Cursor>,
    budget: u64,
    mut visit: impl FnMut(Found) -> bool,
) -> Result<Walk, StoreError> {
    let mut w = Walk::default();
    let by_time = filter.by_time();
    match after {
        Some(Cursor::Time { .. }) if !by_time => {
            return Err(StoreError::Invalid("the cursor is of another kind of page".into()));
        }
        Some(Cursor::Seq(_)) if by_time => {
            return Err(StoreError::Invalid("the cursor is of another kind of page".into()));
        }
        _ => {}
    }
    let mut failure = None;
    if !by_time {
        let from = match after {
            Some(Cursor::Seq(s)) => s.saturating_add(1),
            _ => 1,
        };
        let mut stopped = false;
        dtm_cluster::audit::for_each_entry_from(reader, from, |seq, entry| {
            if w.examined >= budget {
                stopped = true;
                return false;
            }
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    failure = Some(StoreError::Invalid(format!("audit entry {seq}: {e}")));
                    return false;
                }
            };
            w.examined += 1;
            w.last = Some(Cursor::Seq(seq));
            let event = match state::AuditEvent::decode(entry.body.as_slice()) {
                Ok(event) => event,
                Err(e) => {
                    failure = Some(e.into());
                    return false;
                }
            };
            if filter.matches(&event) && !visit(Found { entry, event }) {
                stopped = true;
                return false;
            }
            true
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        w.done = !stopped;
        return Ok(w);
    }
    // By time: from the cursor's block (entries after its seq), or from the first block whose
    // latest time reaches `from`.
    let (start, skip_through) = match after {
        Some(Cursor::Time { at_ms, seq }) => {
            let first = dtm_cluster::audit::block_first(reader, seq)?.unwrap_or(seq);
            (tables::audit_by_time(at_ms, first), seq)
        }
        _ => (tables::audit_by_time(filter.from_ms.unwrap_or(0), 0), 0),
    };
    let span = dtm_cluster::audit::BLOCK_SPAN_MS_MAX;
    let mut stopped = false;
    reader.for_each_checked_from(tables::AUDIT_TIME, &start, |key, value| {
        let Some((latest, first)) = time_key(key) else { return Ok(true) };
        if filter.to_ms.is_some_and(|to| latest >= to.saturating_add(span)) {
            return Ok(false);
        }
        let earliest = value.ok().and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok()).map_or(0, u64::from_be_bytes);
        if filter.to_ms.is_some_and(|to| earliest >= to) || filter.from_ms.is_some_and(|f| latest < f) {
            return Ok(true);
        }
        let Some(value) = reader.get(&tables::audit_block(first))? else {
            return Err(StoreError::Invalid(format!("audit entry {first} is in the time index but not stored")));
        };
        let block = state::AuditBlock::decode(value.as_slice())?;
        for (i, entry) in block.entries.into_iter().enumerate() {
            let seq = first + i as u64;
            if seq <= skip_through {
                continue;
            }
            if w.examined >= budget {
                stopped = true;
                return Ok(false);
            }
            w.examined += 1;
            w.last = Some(Cursor::Time { at_ms: latest, seq });
            let event = state::AuditEvent::decode(entry.body.as_slice())?;
            let in_period =
                filter.from_ms.is_none_or(|f| event.at_ms >= f) && filter.to_ms.is_none_or(|t| event.at_ms < t);
            if in_period && filter.matches(&event) && !visit(Found { entry, event }) {
                stopped = true;
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    w.done = !stopped;
    Ok(w)
}

fn time_key(key: &[u8]) -> Option<(u64, u64)> {
    let tail = key.strip_prefix(tables::AUDIT_TIME)?;
    let at = u64::from_be_bytes(tail.get(0..8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(tail.get(8..16)?.try_into().ok()?);
    Some((at, seq))
}

/// An entry as the API shows it.
pub fn entry_json(entry: &state::AuditEntry, e: &state::AuditEvent) -> Value {
    let detail: Value = if e.detail_json.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&e.detail_json).unwrap_or_else(|_| json!(String::from_utf8_lossy(&e.detail_json)))
    };
    json!({
        "seq": entry.seq, "at": crate::api::export::rfc3339(e.at_ms), "at_ms": e.at_ms,
        "principal": e.principal, "source": e.source, "organisation": e.organisation, "client_ip": e.client_ip,
        "operation": e.operation, "target": e.target, "outcome": e.outcome, "status": e.status,
        "channel": e.channel, "node_id": e.node_id, "request_id": e.request_id, "records": e.records,
        "bytes_in": e.bytes_in, "count": e.count, "new_connection": e.new_connection, "detail": detail,
        "log_index": e.log_index, "hash": hex::encode(&entry.hash), "prev_hash": hex::encode(&entry.prev_hash),
    })
}

// ---- Classification ----

/// Reads, exports, listings, sign-ins and refused credentials.
pub fn is_access(operation: &str) -> bool {
    (operation.starts_with("auth.") && !operation.starts_with("auth.totp."))
        || operation.starts_with("security.")
        || operation.ends_with(".read")
        || operation.ends_with(".export")
        || operation.ends_with(".list")
        || operation.ends_with(".download")
        || matches!(operation, "http.get" | "http.head" | "http.options")
}

/// Everything else: catalog, users, credentials, gateway, cluster and data changes.
pub fn is_change(operation: &str) -> bool {
    !is_access(operation)
}

/// Data leaving the cluster: exports, and reads of records and aggregates.
pub fn is_export(operation: &str) -> bool {
    operation.ends_with(".export") || matches!(operation, "records.read" | "aggregates.read")
}

fn included(kind: &str, operation: &str) -> bool {
    match kind {
        "access" => is_access(operation),
        "change" => is_change(operation),
        _ => is_export(operation),
    }
}

/// An outcome that counts as a success.
pub fn succeeded(outcome: &str) -> bool {
    matches!(outcome, "ok" | "replayed" | "completed") || outcome.starts_with("status:2")
}

// ---- Reports ----

#[derive(Default, Clone, Copy)]
struct Tally {
    entries: u64,
    ok: u64,
    failed: u64,
    records: u64,
}

impl Tally {
    fn add(&mut self, e: &state::AuditEvent) {
        let n = e.count.max(1);
        self.entries += n;
        if succeeded(&e.outcome) {
            self.ok += n;
        } else {
            self.failed += n;
        }
        self.records += e.records;
    }
}

/// Counts per group, bounded: past `REPORT_GROUPS_MAX` groups the rest count as `(other)`.
#[derive(Default)]
struct Groups(BTreeMap<Vec<String>, Tally>);

impl Groups {
    fn add(&mut self, key: Vec<String>, e: &state::AuditEvent) {
        let key = if self.0.len() < REPORT_GROUPS_MAX || self.0.contains_key(&key) {
            key
        } else {
            key.iter().map(|_| "(other)".to_string()).collect()
        };
        self.0.entry(key).or_default().add(e);
    }

    /// The largest groups first (then by key), at most `REPORT_ROWS_MAX` rows, the rest folded.
    fn rows(self, names: &[&str]) -> Vec<Value> {
        let mut all: Vec<(Vec<String>, Tally)> = self.0.into_iter().collect();
        all.sort_by(|a, b| b.1.entries.cmp(&a.1.entries).then_with(|| a.0.cmp(&b.0)));
        let mut rest = Tally::default();
        let mut rest_groups = 0u64;
        for (_, t) in all.iter().skip(REPORT_ROWS_MAX) {
            rest.entries += t.entries;
            rest.ok += t.ok;
            rest.failed += t.failed;
            rest.records += t.records;
            rest_groups += 1;
        }
        all.truncate(REPORT_ROWS_MAX);
        if rest_groups > 0 {
            all.push((names.iter().map(|_| format!("(other: {rest_groups} groups)")).collect(), rest));
        }
        all.into_iter()
            .map(|(key, t)| {
                let mut row = serde_json::Map::new();
                for (n, k) in names.iter().zip(key) {
                    row.insert((*n).to_string(), json!(k));
                }
                row.insert("entries".into(), json!(t.entries));
                row.insert("ok".into(), json!(t.ok));
                row.insert("failed".into(), json!(t.failed));
                row.insert("records".into(), json!(t.records));
                Value::Object(row)
            })
            .collect()
    }
}

/// A report's period and identity.
pub struct ReportSpec {
    pub id: String,
    pub kind: String,
    pub from_ms: u64,
    pub to_ms: u64,
    pub created_by: String,
    pub created_at_ms: u64,
}

/// Computes a report over `[from_ms, to_ms)` from this node's trail (blocking: run it on the
/// blocking pool).
pub fn compute(reader: &StateReader, spec: &ReportSpec) -> Result<state::AuditReport, StoreError> {
    let head = reader.get_msg::<state::AuditHead>(tables::AUDIT_HEAD)?.unwrap_or_default();
    let filter = Filter { from_ms: Some(spec.from_ms), to_ms: Some(spec.to_ms), ..Filter::default() };
    let (mut by_org, mut by_target, mut by_outcome, mut by_op, mut exports) =
        (Groups::default(), Groups::default(), Groups::default(), Groups::default(), Groups::default());
    let mut total = Tally::default();
    let mut last_seq = 0u64;
    let walked = walk(reader, &filter, None, REPORT_SCAN_MAX, |f| {
        // Entries appended while the report runs are left out: it covers the chain up to `head`.
        if f.entry.seq > head.size || !included(&spec.kind, &f.event.operation) {
            return true;
        }
        let e = &f.event;
        last_seq = last_seq.max(f.entry.seq);
        total.add(e);
        by_org.add(vec![e.organisation.clone(), e.principal.clone()], e);
        by_target.add(vec![e.target.clone()], e);
        by_outcome.add(vec![e.outcome.clone()], e);
        by_op.add(vec![e.operation.clone()], e);
        if spec.kind == "export" {
            exports.add(vec![e.principal.clone(), e.organisation.clone(), e.target.clone(), e.operation.clone()], e);
        }
        true
    })?;
    let title = match spec.kind.as_str() {
        "access" => "Access to the system and its data",
        "change" => "Changes to data, catalog and configuration",
        _ => "Data shared: exports and record reads",
    };
    let mut content = json!({
        "id": spec.id, "kind": spec.kind, "title": title,
        "from": crate::api::export::rfc3339(spec.from_ms), "to": crate::api::export::rfc3339(spec.to_ms),
        "from_ms": spec.from_ms, "to_ms": spec.to_ms,
        "generated_at": crate::api::export::rfc3339(spec.created_at_ms), "generated_by": spec.created_by,
        "chain_size": head.size, "entries_examined": walked.examined, "truncated": !walked.done,
        "totals": {"entries": total.entries, "ok": total.ok, "failed": total.failed, "records": total.records},
        "by_organisation": by_org.rows(&["organisation", "principal"]),
        "by_target": by_target.rows(&["target"]),
        "by_outcome": by_outcome.rows(&["outcome"]),
        "by_operation": by_op.rows(&["operation"]),
    });
    if spec.kind == "export" {
        content["exports"] = json!(exports.rows(&["principal", "organisation", "target", "operation"]));
    }
    Ok(state::AuditReport {
        id: spec.id.clone(),
        kind: spec.kind.clone(),
        from_ms: spec.from_ms,
        to_ms: spec.to_ms,
        created_at_ms: spec.created_at_ms,
        created_by: spec.created_by.clone(),
        content_json: serde_json::to_vec(&content).map_err(|e| StoreError::Invalid(e.to_string()))?,
        chain_size: head.size,
    })
}

/// The command that stores a report.
pub fn store_command(report: state::AuditReport) -> state::command::Kind {
    state::command::Kind::AuditControl(state::AuditCommand {
        kind: Some(state::audit_command::Kind::StoreReport(state::StoreAuditReport { report: Some(report) })),
    })
}

/// The sections of a report as rows of one table (for CSV, XLSX and DOCX downloads).
pub fn report_table(report: &state::AuditReport) -> crate::api::export::Table {
    const COLUMNS: [&str; 10] = [
        "section",
        "organisation",
        "principal",
        "target",
        "operation",
        "outcome",
        "entries",
        "ok",
        "failed",
        "records",
    ];
    let content: Value = serde_json::from_slice(&report.content_json).unwrap_or(Value::Null);
    let mut rows = Vec::new();
    for section in ["by_organisation", "by_target", "by_outcome", "by_operation", "exports"] {
        for r in content[section].as_array().into_iter().flatten() {
            let mut row = vec![json!(section)];
            row.extend(COLUMNS[1..].iter().map(|c| r[*c].clone()));
            rows.push(row);
        }
    }
    let totals = &content["totals"];
    crate::api::export::Table {
        title: format!("Audit report {}: {}", report.id, content["title"].as_str().unwrap_or(&report.kind)),
        period: format!(
            "From {} to {} (UTC); generated {} by {} over the first {} entries of the trail",
            crate::api::export::rfc3339(report.from_ms),
            crate::api::export::rfc3339(report.to_ms),
            crate::api::export::rfc3339(report.created_at_ms),
            report.created_by,
            report.chain_size
        ),
        columns: COLUMNS.iter().map(|c| c.to_string()).collect(),
        rows,
        totals: None,
        summary: format!(
            "{} entries ({} ok, {} failed), {} records{}",
            totals["entries"],
            totals["ok"],
            totals["failed"],
            totals["records"],
            if content["truncated"] == true { "; the period held more entries than one report reads" } else { "" }
        ),
    }
}

// ---- Monthly reports ----

/// `(year, month)` of a time in Vietnam.
pub fn vietnam_month(at_ms: u64) -> (i32, u8) {
    let day = dtm_cluster::audit::vietnam_day(at_ms);
    ((day / 10_000) as i32, ((day / 100) % 100) as u8)
}

/// The first millisecond of a month in Vietnam time.
pub fn month_start_ms(year: i32, month: u8) -> u64 {
    let minutes = dtm_dataset::TimePoint::Month(year, month).range_minutes().map_or(0, |(start, _)| start);
    u64::try_from(minutes * 60_000 - VIETNAM_OFFSET_MS).unwrap_or(0)
}

fn previous_month(year: i32, month: u8) -> (i32, u8) {
    if month <= 1 { (year - 1, 12) } else { (year, month - 1) }
}

/// The id of a monthly report.
pub fn monthly_id(year: i32, month: u8, kind: &str) -> String {
    format!("monthly-{year:04}-{month:02}-{kind}")
}

/// Has the leader store last month's reports (when `enabled`); the task ends with the node.
pub fn start_monthly(node: &Arc<ClusterNode>, enabled: bool) {
    if enabled {
        start_leader_task(node, "monthly audit reports", make_monthly);
    }
}

/// Runs `make(node, now_ms)` on the leader a few seconds after start and then every minute, for
/// reports that are due on the calendar (a report that already exists is left alone by `make`); a
/// failure is logged and retried at the next check. The task ends with the node.
pub fn start_leader_task<F, Fut>(node: &Arc<ClusterNode>, what: &'static str, make: F)
where
    F: Fn(Arc<ClusterNode>, u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let node = Arc::downgrade(node);
    tokio::spawn(async move {
        let mut pause = MONTHLY_FIRST_CHECK;
        loop {
            tokio::time::sleep(pause).await;
            pause = MONTHLY_CHECK_INTERVAL;
            let Some(node) = Weak::upgrade(&node) else { return };
            if !node.is_ready() || node.status().await.leader_id != Some(node.id) {
                continue;
            }
            if let Err(e) = make(node, crate::api::now_ms()).await {
                tracing::warn!(target: "reports", error = %e, "{what} not made yet; retrying");
            }
        }
    });
}

/// Stores the reports of the month before `now_ms` that do not exist yet.
async fn make_monthly(node: Arc<ClusterNode>, now_ms: u64) -> anyhow::Result<()> {
    let (y, m) = vietnam_month(now_ms);
    let this_month = month_start_ms(y, m);
    if now_ms < this_month + MONTHLY_GRACE_MS {
        return Ok(());
    }
    let (py, pm) = previous_month(y, m);
    for kind in KINDS {
        let id = monthly_id(py, pm, kind);
        if node.reader.get(&tables::audit_report(&id))?.is_some() {
            continue;
        }
        let spec = ReportSpec {
            id: id.clone(),
            kind: kind.to_string(),
            from_ms: month_start_ms(py, pm),
            to_ms: this_month,
            created_by: format!("system:node-{}", node.id),
            created_at_ms: now_ms,
        };
        let reader = node.reader.clone();
        let report = tokio::task::spawn_blocking(move || compute(&reader, &spec)).await??;
        let (resp, _) = node.write(crate::audit::system_command(&node, store_command(report))).await?;
        if let Some(state::command_response::Result::Rejected(r)) = resp.result {
            anyhow::bail!("report {id} refused: {}", r.message);
        }
        tracing::info!(target: "audit", report = %id, "monthly audit report stored");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exactly_or_by_prefix() {
        let p = Pattern::parse("source:s1*").expect("pattern");
        assert!(p.matches("source:s1/k") && p.matches("source:s1") && !p.matches("source:s2"));
        let e = Pattern::parse("dataset/a").expect("pattern");
        assert!(e.matches("dataset/a") && !e.matches("dataset/ab"));
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse(&"x".repeat(PATTERN_BYTES_MAX + 1)).is_err());
    }

    #[test]
    fn cursors_round_trip() {
        for c in [Cursor::Seq(42), Cursor::Time { at_ms: 1_795_000_000_000, seq: 7 }] {
            assert_eq!(Cursor::parse(&c.text()), Some(c));
        }
        assert_eq!(Cursor::parse("x"), None);
        assert_eq!(Cursor::parse("1.x"), None);
    }

    #[test]
    fn months_are_vietnam_months() {
        // 2026-11-01 00:00 in Vietnam is 2026-10-31T17:00:00Z.
        assert_eq!(month_start_ms(2026, 11), 1_793_466_000_000);
        assert_eq!(vietnam_month(1_793_466_000_000), (2026, 11));
        assert_eq!(vietnam_month(1_793_466_000_000 - 1), (2026, 10));
        assert_eq!(previous_month(2027, 1), (2026, 12));
        assert_eq!(monthly_id(2026, 10, "access"), "monthly-2026-10-access");
    }

    /// A store with `n` audit entries applied the way a node applies them: entry `i` (from 0) is
    /// made at `T0 + i` seconds by `source:s<i % 3>/k`, operation `records.ingest` for even `i`
    /// and `records.read` for odd `i`, one record each.
    async fn store(n: u64) -> (tempfile::TempDir, StateReader) {
        use openraft::storage::RaftStateMachine;
        let dir = tempfile::tempdir().expect("temp dir");
        let opts = dtm_storage::StoreOptions::for_tests();
        let (_log, mut sm, reader) =
            dtm_storage::open(dir.path(), &opts, Arc::new(dtm_cluster::DtmApplier::default())).expect("store");
        let events = (0..n)
            .map(|i| state::AuditEvent {
                principal: format!("source:s{}/k", i % 3),
                operation: if i % 2 == 0 { "records.ingest" } else { "records.read" }.into(),
                target: "dataset/d".into(),
                outcome: if i == 1 { "status:404".into() } else { "ok".into() },
                at_ms: T0 + i * 1000,
                count: 1,
                records: 1,
                ..Default::default()
            })
            .collect();
        let cmd = state::Command {
            version: dtm_model::COMMAND_SET_VERSION,
            proposed_at_ms: T0,
            origin_node: 1,
            actor: None,
            kind: Some(state::command::Kind::Audit(state::AuditEvents { events })),
        };
        let entry = dtm_model::Entry {
            log_id: openraft::LogId::new(openraft::LeaderId::new(1, 1), 1),
            payload: openraft::EntryPayload::Normal(cmd),
        };
        sm.apply(vec![entry]).await.expect("applied");
        (dir, reader)
    }

    const T0: u64 = 1_795_000_000_000;

    fn seqs(reader: &StateReader, f: &Filter, after: Option<Cursor>, budget: u64, limit: usize) -> (Vec<u64>, Walk) {
        let mut out = Vec::new();
        let w = walk(reader, f, after, budget, |found| {
            out.push(found.entry.seq);
            out.len() < limit
        })
        .expect("walk");
        (out, w)
    }

    #[tokio::test]
    async fn walks_page_by_chain_or_time_within_their_budget() {
        let (_dir, reader) = store(1200).await;
        // Chain order, pages of 500, continuing from the cursor without gaps.
        let all = Filter::default();
        let (p1, w1) = seqs(&reader, &all, None, 10_000, 500);
        assert_eq!((p1.first(), p1.last(), w1.done, w1.last), (Some(&1), Some(&500), false, Some(Cursor::Seq(500))));
        let (p3, w3) = seqs(&reader, &all, Some(Cursor::Seq(1000)), 10_000, 500);
        assert_eq!((p3.len(), w3.done), (200, true));
        // A period through the time index: [T0 + 10 s, T0 + 20 s) holds entries 11 to 20.
        let period = Filter { from_ms: Some(T0 + 10_000), to_ms: Some(T0 + 20_000), ..Filter::default() };
        let (p, w) = seqs(&reader, &period, None, 10_000, 1000);
        assert_eq!((p, w.done), ((11..=20).collect::<Vec<_>>(), true));
        // A forged cursor before the period does not widen it.
        let (p, _) = seqs(&reader, &period, Some(Cursor::Time { at_ms: T0, seq: 1 }), 10_000, 1000);
        assert_eq!(p.first(), Some(&11));
        // Filters, and a budget that stops the walk with a cursor to go on from.
        let f = Filter {
            principal: Some(Pattern::Exact("source:s1/k".into())),
            operation: Some(Pattern::Prefix("records.r".into())),
            ..Filter::default()
        };
        let (p, w) = seqs(&reader, &f, None, 100, 1000);
        assert!(p.iter().all(|s| (s - 1) % 3 == 1 && (s - 1) % 2 == 1), "{p:?}");
        assert_eq!((w.examined, w.done, w.last), (100, false, Some(Cursor::Seq(100))));
        let (rest, w) = seqs(&reader, &f, w.last, 10_000, 1000);
        assert!(w.done && rest.first().is_some_and(|s| *s > 100));
        assert_eq!(p.len() + rest.len(), 200, "every sixth entry of 1200");
    }

    #[tokio::test]
    async fn reports_count_what_their_kind_covers() {
        let (_dir, reader) = store(60).await;
        let spec = |kind: &str| ReportSpec {
            id: format!("t-{kind}"),
            kind: kind.into(),
            from_ms: T0,
            to_ms: T0 + 30_000,
            created_by: "user:a".into(),
            created_at_ms: T0,
        };
        let report = |kind: &str| {
            let r = compute(&reader, &spec(kind)).expect("report");
            serde_json::from_slice::<Value>(&r.content_json).expect("json")
        };
        let export = report("export");
        // Entries 0..30 of the period, the odd ones are reads: 15, one of them failed.
        assert_eq!(export["totals"], json!({"entries": 15, "ok": 14, "failed": 1, "records": 15}));
        assert_eq!(export["exports"].as_array().map(Vec::len), Some(3), "{export}");
        assert_eq!(
            export["by_outcome"][0],
            json!({"outcome": "ok", "entries": 14, "ok": 14, "failed": 0, "records": 14})
        );
        let change = report("change");
        assert_eq!(change["totals"]["entries"], 15);
        assert_eq!(change["by_operation"][0]["operation"], "records.ingest");
        assert!(change.get("exports").is_none());
        assert_eq!((change["chain_size"].as_u64(), change["truncated"].as_bool()), (Some(60), Some(false)));
        let table = report_table(&compute(&reader, &spec("access")).expect("report"));
        assert_eq!(table.columns[0], "section");
        assert!(table.rows.iter().any(|r| r[0] == "by_target" && r[3] == "dataset/d"));
    }

    #[test]
    fn operations_are_classified() {
        for op in ["records.read", "records.export", "aggregates.read", "auth.login", "security.invalid_credential"] {
            assert!(is_access(op), "{op}");
        }
        for op in ["records.ingest", "dataset.define", "source.key.revoke", "user.create", "http.post"] {
            assert!(is_change(op), "{op}");
        }
        assert!(is_export("records.export") && is_export("records.read") && !is_export("dataset.read"));
        assert!(succeeded("ok") && succeeded("status:200") && !succeeded("status:401"));
    }
}
