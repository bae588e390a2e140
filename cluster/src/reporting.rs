//! What reporting-regime commands do to the tables (issue 9; C2(b), Art. 4.2(b)): a dataset's
//! obligation (`rpo/<dataset>`), the draft of a report form (`rpd/<dataset>\0<agency>\0<period>`),
//! the latest submitted version of a report (`rps/…`, same key parts) and every version
//! (`rpv/…\0<version be32>`).
//!
//! The values are checked by the proposing node (`node/src/api/reporting.rs`); `apply` checks only
//! what keeps the tables bounded and well-formed and what must be decided in log order: a report's
//! versions follow each other (1, 2, …), the first command of a version wins and a repeated one
//! (a double click, a retry after a leader change) changes nothing. Deterministic like the rest of
//! `apply`: everything comes from the command.

use dtm_model::LogId;
use dtm_model::state;
use dtm_model::state::reporting_command::Kind;
use dtm_storage::StoreError;
use dtm_storage::Txn;

use crate::applier::applied;
use crate::applier::rejected;

pub const OBLIGATION: &[u8] = b"rpo/";
pub const DRAFT: &[u8] = b"rpd/";
pub const SUBMISSION: &[u8] = b"rps/";
pub const SUBMISSION_VERSION: &[u8] = b"rpv/";

/// Agencies one obligation may name.
pub const AGENCIES_PER_OBLIGATION_MAX: usize = 1_000;
/// Longest text of an id, an agency name, a period or a field name.
pub const TEXT_BYTES_MAX: usize = 256;
/// Largest saved draft (the form's values as JSON).
pub const DRAFT_BYTES_MAX: usize = 64 * 1024;
/// Largest stored answer of a submission (its signed receipt included).
pub const ANSWER_BYTES_MAX: usize = 64 * 1024;
/// Record ids one report may list.
pub const REPORT_RECORDS_MAX: usize = 1_000;
/// Versions one report may have (the first submission and its corrections); the API refuses the
/// next correction before writing anything.
pub const REPORT_VERSIONS_MAX: u32 = 1_000;
/// Period types an obligation may name.
pub const PERIOD_TYPES: [&str; 3] = ["month", "quarter", "year"];

fn join(table: &[u8], parts: &[&str]) -> Vec<u8> {
    let mut k = table.to_vec();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p.as_bytes());
    }
    k
}

pub fn obligation(dataset: &str) -> Vec<u8> {
    join(OBLIGATION, &[dataset])
}

pub fn draft(dataset: &str, agency: &str, period: &str) -> Vec<u8> {
    join(DRAFT, &[dataset, agency, period])
}

pub fn submission(dataset: &str, agency: &str, period: &str) -> Vec<u8> {
    join(SUBMISSION, &[dataset, agency, period])
}

/// The prefix of every submitted report of a dataset (`rps/<dataset>\0`).
pub fn submissions_of(dataset: &str) -> Vec<u8> {
    let mut k = join(SUBMISSION, &[dataset]);
    k.push(0);
    k
}

/// The prefix of every draft of a dataset (`rpd/<dataset>\0`).
pub fn drafts_of(dataset: &str) -> Vec<u8> {
    let mut k = join(DRAFT, &[dataset]);
    k.push(0);
    k
}

pub fn submission_version(dataset: &str, agency: &str, period: &str, version: u32) -> Vec<u8> {
    let mut k = join(SUBMISSION_VERSION, &[dataset, agency, period]);
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// The prefix of every version of one report.
pub fn submission_versions_of(dataset: &str, agency: &str, period: &str) -> Vec<u8> {
    let mut k = join(SUBMISSION_VERSION, &[dataset, agency, period]);
    k.push(0);
    k
}

pub fn apply(
    txn: &mut Txn<'_>,
    _log_id: &LogId,
    at_ms: u64,
    c: &state::ReportingCommand,
) -> Result<state::CommandResponse, StoreError> {
    match &c.kind {
        Some(Kind::SetObligation(c)) => set_obligation(txn, at_ms, c),
        Some(Kind::SaveDraft(c)) => save_draft(txn, at_ms, c),
        Some(Kind::RecordReport(c)) => record_report(txn, c),
        None => Ok(rejected("unsupported_command", "reporting command of an unknown kind")),
    }
}

/// A text that can be part of a key: 1–`TEXT_BYTES_MAX` bytes without NUL.
fn key_part(s: &str) -> bool {
    !s.is_empty() && s.len() <= TEXT_BYTES_MAX && !s.contains('\0')
}

fn set_obligation(
    txn: &mut Txn<'_>,
    at_ms: u64,
    c: &state::SetObligation,
) -> Result<state::CommandResponse, StoreError> {
    let Some(o) = &c.obligation else { return Ok(rejected("invalid_command", "obligation missing")) };
    if !key_part(&o.dataset) || !PERIOD_TYPES.contains(&o.period_type.as_str()) {
        return Ok(rejected("invalid_command", "an obligation needs a dataset and a period type"));
    }
    if o.agencies.len() > AGENCIES_PER_OBLIGATION_MAX
        || o.agencies.iter().any(|a| !key_part(&a.agency) || a.source.len() > TEXT_BYTES_MAX)
    {
        return Ok(rejected("invalid_command", format!("at most {AGENCIES_PER_OBLIGATION_MAX} agencies, each named")));
    }
    if [&o.first_period, &o.agency_field, &o.period_field, &o.updated_by].iter().any(|s| s.len() > TEXT_BYTES_MAX) {
        return Ok(rejected("invalid_command", "an obligation's texts are at most 256 bytes"));
    }
    if txn.get(&crate::tables::dataset(&o.dataset))?.is_none() {
        return Ok(rejected("not_found", format!("dataset `{}` is not defined", o.dataset)));
    }
    let mut o = o.clone();
    o.updated_at_ms = at_ms;
    txn.put_msg(obligation(&o.dataset), &o);
    Ok(applied())
}

fn save_draft(txn: &mut Txn<'_>, at_ms: u64, c: &state::SaveReportDraft) -> Result<state::CommandResponse, StoreError> {
    let Some(d) = &c.draft else { return Ok(rejected("invalid_command", "draft missing")) };
    if !key_part(&d.dataset) || !key_part(&d.agency) || !key_part(&d.period) {
        return Ok(rejected("invalid_command", "a draft names its dataset, agency and period"));
    }
    if d.values_json.len() > DRAFT_BYTES_MAX {
        return Ok(rejected("invalid_command", format!("a draft is at most {DRAFT_BYTES_MAX} bytes")));
    }
    let k = submission(&d.dataset, &d.agency, &d.period);
    if txn.get(&k)?.is_some() {
        // A draft saved in a second tab after the report went in would look like unsent work.
        return Ok(rejected("already_submitted", "this report has been submitted; correct it instead"));
    }
    let mut d = d.clone();
    d.saved_at_ms = at_ms;
    txn.put_msg(draft(&d.dataset, &d.agency, &d.period), &d);
    Ok(applied())
}

fn record_report(txn: &mut Txn<'_>, c: &state::RecordReport) -> Result<state::CommandResponse, StoreError> {
    let Some(s) = &c.submission else { return Ok(rejected("invalid_command", "submission missing")) };
    if !key_part(&s.dataset) || !key_part(&s.agency) || !key_part(&s.period) || s.version == 0 {
        return Ok(rejected("invalid_command", "a report names its dataset, agency, period and version"));
    }
    if s.answer_json.len() > ANSWER_BYTES_MAX || s.record_ids.len() > REPORT_RECORDS_MAX {
        return Ok(rejected("invalid_command", "a report's answer or record list is too long"));
    }
    let latest_key = submission(&s.dataset, &s.agency, &s.period);
    let latest = txn.get_msg::<state::ReportSubmission>(&latest_key)?.map_or(0, |l| l.version);
    if s.version <= latest {
        // The same version again: its first account stands (idempotent).
        return Ok(applied());
    }
    if s.version > REPORT_VERSIONS_MAX {
        return Ok(rejected("too_many_versions", format!("a report has at most {REPORT_VERSIONS_MAX} versions")));
    }
    if s.version != latest + 1 {
        return Ok(rejected("conflict", format!("report version {} does not follow version {latest}", s.version)));
    }
    txn.put_msg(submission_version(&s.dataset, &s.agency, &s.period, s.version), s);
    txn.put_msg(latest_key, s);
    txn.remove(draft(&s.dataset, &s.agency, &s.period));
    Ok(applied())
}
