//! What an `IngestBatch` (one group-commit log entry) does to the tables; part of `apply`, so as
//! deterministic as the rest of `applier.rs`.
//!
//! Duplicates and conflicts are decided here (A1.5): each record's natural key arrives as an HMAC
//! computed by the proposer; the natural-key index keeps every version's content hash. A record
//! identical to a version already stored is counted as a duplicate and not stored again; one with
//! new content is stored as the next version and listed as a conflict, naming both sources. The
//! first version of a key is what the aggregates count: DTM cannot know which agency's figure is
//! right, so a conflicting figure waits for reconciliation instead of silently changing statistics.
//! A correction (issue 7) is different: the sender (or an admin) says the earlier figure was wrong,
//! so the correction replaces the counted version's contribution in its cell (see `correct` and
//! `lineage.rs`). Aggregate cells and their lineage (who contributed) are updated here, in the same
//! batch as the records, and the cells are staged for the in-memory view (`aggregates.rs`).

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use dtm_model::LogId;
use dtm_model::record_id;
use dtm_model::state;
use dtm_model::state::command_response::Result as Reply;
use dtm_storage::StoreError;
use dtm_storage::Txn;

use crate::DtmApplier;
use crate::limits::GROUP_COMMIT_SUBMISSIONS_MAX;
use crate::limits::IDEMPOTENCY_EXPIRY_PER_ENTRY_MAX;
use crate::limits::IDEMPOTENCY_RETENTION_MS;
use crate::limits::NATURAL_KEY_VERSIONS_MAX;
use crate::lineage;
use crate::tables;

fn failed(code: &str, message: impl Into<String>) -> state::SubmissionResult {
    state::SubmissionResult { error_code: code.into(), error_message: message.into(), ..Default::default() }
}

impl DtmApplier {
    /// Applies one group-commit entry: each submission in order, then every changed cell once.
    pub(crate) fn ingest(
        &self,
        txn: &mut Txn<'_>,
        log_id: &LogId,
        now_ms: u64,
        c: &state::IngestBatch,
    ) -> Result<state::CommandResponse, StoreError> {
        expire_idempotency_keys(txn, now_ms)?;
        let mut results = Vec::with_capacity(c.submissions.len());
        // Positions run over the whole entry so that records of different submissions never collide.
        let mut position: u32 = 0;
        let mut changed = Changed::default();
        let mut remembered = Remembered::default();
        for sub in &c.submissions {
            results.push(ingest_one(txn, log_id, sub, &mut position, &mut changed, &mut remembered)?);
        }
        if !remembered.keys.is_empty() {
            let k = tables::idempotency_expiry_of_entry(remembered.expires_at_ms, log_id.index);
            txn.put_msg(k, &state::IdempotencyExpiry { keys: remembered.keys });
        }
        // Each changed cell and its lineage are written once per entry, however many of its records
        // it holds. A cell a correction emptied is removed, as if it had never held anything.
        for ((dataset, cell_key), cell) in changed.cells {
            let k = tables::aggregate_cell(&dataset, &cell_key);
            if cell.count == 0 {
                self.view.stage_removed(&dataset, &cell_key);
                txn.remove(k);
            } else {
                self.view.stage(&dataset, &cell_key, &cell);
                txn.put_msg(k, &cell);
            }
        }
        for ((dataset, cell_key), contributors) in changed.lineage {
            let k = tables::cell_lineage(&dataset, &cell_key);
            if contributors.contributors.is_empty() && contributors.others == 0 {
                txn.remove(k);
            } else {
                txn.put_msg(k, &contributors);
            }
        }
        Ok(state::CommandResponse { result: Some(Reply::Ingest(state::IngestResults { results })) })
    }
}

/// Aggregate cells and their lineage changed by one entry, by (dataset, cell key), each dataset's
/// natural-key layout, and the catalog checks of its submissions, loaded from the tables when an
/// entry first touches them.
#[derive(Default)]
struct Changed {
    cells: BTreeMap<(String, Vec<u8>), state::AggCell>,
    lineage: BTreeMap<(String, Vec<u8>), state::CellLineage>,
    key_layouts: BTreeMap<String, usize>,
    catalog: Catalog,
}

/// Whether a submission's dataset, source and API key allow it, decided once per entry for each
/// of them: a group-commit entry holds many submissions of the same few sources, and only an
/// `IngestBatch` is in it, so nothing in the entry changes the catalog between two of them.
#[derive(Default)]
struct Catalog {
    datasets: BTreeMap<String, bool>,
    /// A source's refusal (`None`: registered and not removed).
    sources: BTreeMap<String, Option<state::SubmissionResult>>,
    /// The source a key is issued to, by key id (`None`: no such key, or revoked).
    keys: BTreeMap<String, Option<String>>,
}

impl Catalog {
    /// Why the submission is refused before its records are looked at, if it is.
    fn refusal(
        &mut self,
        txn: &Txn<'_>,
        sub: &state::Submission,
    ) -> Result<Option<state::SubmissionResult>, StoreError> {
        let defined = match self.datasets.get(&sub.dataset) {
            Some(d) => *d,
            None => {
                let d = txn.get(&tables::dataset(&sub.dataset))?.is_some();
                self.datasets.insert(sub.dataset.clone(), d);
                d
            }
        };
        if !defined {
            return Ok(Some(failed("unknown_dataset", format!("dataset `{}` is not defined", sub.dataset))));
        }
        // Looked up before inserted, so that the many submissions that hit allocate nothing.
        if !self.sources.contains_key(&sub.source) {
            let refusal = match txn.get_msg::<state::Source>(&tables::source(&sub.source))? {
                None => Some(failed("unknown_source", format!("source `{}` is not registered", sub.source))),
                Some(s) if s.removed_at_ms != 0 => {
                    Some(failed("unknown_source", format!("source `{}` was removed", sub.source)))
                }
                Some(_) => None,
            };
            self.sources.insert(sub.source.clone(), refusal);
        }
        if let Some(Some(refusal)) = self.sources.get(&sub.source) {
            return Ok(Some(refusal.clone()));
        }
        if !sub.key_id.is_empty() {
            if !self.keys.contains_key(&sub.key_id) {
                let key = txn.get_msg::<state::IssueKey>(&tables::api_key(&sub.key_id))?;
                let owner = key.filter(|k| k.key.as_ref().is_some_and(|k| !k.revoked)).map(|k| k.source_id);
                self.keys.insert(sub.key_id.clone(), owner);
            }
            let valid = self.keys.get(&sub.key_id).is_some_and(|owner| owner.as_deref() == Some(sub.source.as_str()));
            if !valid {
                return Ok(Some(failed("key_revoked", "the API key was revoked before this submission was committed")));
            }
        }
        Ok(None)
    }
}

fn load<'m, M: prost::Message + Default>(
    map: &'m mut BTreeMap<(String, Vec<u8>), M>,
    txn: &Txn<'_>,
    table_key: impl FnOnce(&str, &[u8]) -> Vec<u8>,
    dataset: &str,
    cell_key: &[u8],
) -> Result<&'m mut M, StoreError> {
    Ok(match map.entry((dataset.to_string(), cell_key.to_vec())) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => e.insert(txn.get_msg::<M>(&table_key(dataset, cell_key))?.unwrap_or_default()),
    })
}

impl Changed {
    /// How many bytes of a key's HMAC name its entry in the dataset's natural-key index
    /// (`tables::NATURAL_KEY_LAYOUT`), read once per entry and dataset.
    fn natural_key_hash_bytes(&mut self, txn: &Txn<'_>, dataset: &str) -> Result<usize, StoreError> {
        if let Some(n) = self.key_layouts.get(dataset) {
            return Ok(*n);
        }
        let n = match txn.get(&tables::natural_key_layout(dataset))?.as_deref() {
            None => tables::NATURAL_KEY_HASH_BYTES_BEFORE_LAYOUT,
            Some(&[n]) if (16..=32).contains(&n) => usize::from(n),
            Some(other) => {
                return Err(StoreError::Invalid(format!("the natural-key layout of dataset `{dataset}` is {other:?}")));
            }
        };
        self.key_layouts.insert(dataset.to_string(), n);
        Ok(n)
    }

    /// Adds a record's contribution to its cell and names its contributor in the cell's lineage.
    fn count_in(
        &mut self,
        txn: &Txn<'_>,
        dataset: &str,
        c: &state::AggContribution,
        contributor: &str,
        index: u64,
    ) -> Result<(), StoreError> {
        crate::aggregates::merge(
            load(&mut self.cells, txn, tables::aggregate_cell, dataset, &c.cell_key)?,
            &c.measures,
        );
        let lineage = load(&mut self.lineage, txn, tables::cell_lineage, dataset, &c.cell_key)?;
        lineage::add_contributor(lineage, contributor, index);
        Ok(())
    }

    /// Takes a record's contribution out of its cell (a correction) and out of the cell's lineage.
    fn count_out(
        &mut self,
        txn: &Txn<'_>,
        dataset: &str,
        c: &state::AggContribution,
        contributor: &str,
    ) -> Result<(), StoreError> {
        crate::aggregates::retract(
            load(&mut self.cells, txn, tables::aggregate_cell, dataset, &c.cell_key)?,
            &c.measures,
        );
        lineage::remove_contributor(
            load(&mut self.lineage, txn, tables::cell_lineage, dataset, &c.cell_key)?,
            contributor,
        );
        Ok(())
    }
}

/// Forgets idempotency entries older than `IDEMPOTENCY_RETENTION_MS`, at most
/// `IDEMPOTENCY_EXPIRY_PER_ENTRY_MAX` per entry (an expiry list holds the keys of one log entry, at
/// most `GROUP_COMMIT_SUBMISSIONS_MAX`; each entry adds at most one list and expires several, so the
/// index never grows behind). "Now" is the entry's proposal time, carried in the log, so every node
/// forgets the same entries at the same position.
fn expire_idempotency_keys(txn: &mut Txn<'_>, now_ms: u64) -> Result<(), StoreError> {
    let lists = txn.scan_range(
        tables::IDEMPOTENCY_EXPIRY_BY_ENTRY,
        &tables::idempotency_expired_before(tables::IDEMPOTENCY_EXPIRY_BY_ENTRY, now_ms),
        IDEMPOTENCY_EXPIRY_PER_ENTRY_MAX / GROUP_COMMIT_SUBMISSIONS_MAX,
    )?;
    for (index_key, list) in lists {
        let list = <state::IdempotencyExpiry as prost::Message>::decode(list.as_slice())
            .map_err(|e| StoreError::Invalid(format!("idempotency expiry list: {e}")))?;
        for idem_key in list.keys {
            txn.remove(idem_key);
        }
        txn.remove(index_key);
    }
    // Stores written before the per-entry index drain their one-key-per-submission index.
    let expired = txn.scan_range(
        tables::IDEMPOTENCY_EXPIRY,
        &tables::idempotency_expired_before(tables::IDEMPOTENCY_EXPIRY, now_ms),
        IDEMPOTENCY_EXPIRY_PER_ENTRY_MAX,
    )?;
    for (index_key, idem_key) in expired {
        txn.remove(index_key);
        txn.remove(idem_key);
    }
    Ok(())
}

/// The idempotency entries one log entry wrote, and when the last of them may be forgotten.
#[derive(Default)]
struct Remembered {
    keys: Vec<Vec<u8>>,
    expires_at_ms: u64,
}

/// What storing a submission's records gave: per record its id and outcome, and the counts.
#[derive(Default)]
struct Stored {
    ids: Vec<String>,
    outcomes: Vec<String>,
    delta: state::DatasetStats,
}

fn ingest_one(
    txn: &mut Txn<'_>,
    log_id: &LogId,
    sub: &state::Submission,
    position: &mut u32,
    changed: &mut Changed,
    remembered: &mut Remembered,
) -> Result<state::SubmissionResult, StoreError> {
    let idem_key = tables::idempotency(&sub.source, &sub.idempotency_key);
    if !sub.idempotency_key.is_empty()
        && let Some(prev) = txn.get_msg::<state::IdempotencyEntry>(&idem_key)?
    {
        if prev.fingerprint != sub.fingerprint || prev.dataset != sub.dataset {
            return Ok(failed("idempotency_conflict", "the Idempotency-Key was already used for a different request"));
        }
        let mut replay = prev.result.unwrap_or_default();
        replay.replayed = true;
        return Ok(replay);
    }
    if let Some(refusal) = changed.catalog.refusal(txn, sub)? {
        return Ok(refusal);
    }
    let Stored { ids, outcomes, delta } = if sub.corrects_id.is_empty() {
        store_records(txn, log_id, sub, position, changed)?
    } else {
        match correct(txn, log_id, sub, position, changed)? {
            Ok(stored) => stored,
            Err(refusal) => return Ok(refusal),
        }
    };
    let count_key = tables::record_count(&sub.dataset);
    let count = match txn.get(&count_key)? {
        Some(v) if v.len() == 8 => u64::from_be_bytes(v.as_slice().try_into().unwrap_or([0; 8])),
        _ => 0,
    };
    txn.put(count_key, (count + delta.stored).to_be_bytes().to_vec());
    if delta.duplicates > 0 || delta.conflicts > 0 || delta.corrections > 0 {
        let stats_key = tables::dataset_stats(&sub.dataset);
        let mut stats = txn.get_msg::<state::DatasetStats>(&stats_key)?.unwrap_or_default();
        stats.duplicates += delta.duplicates;
        stats.conflicts += delta.conflicts;
        stats.corrections += delta.corrections;
        txn.put_msg(stats_key, &stats);
    }
    let result = state::SubmissionResult { ids, outcomes, commit_index: log_id.index, ..Default::default() };
    if !sub.idempotency_key.is_empty() {
        let expires_at_ms = sub.received_at_ms.saturating_add(IDEMPOTENCY_RETENTION_MS);
        remembered.expires_at_ms = remembered.expires_at_ms.max(expires_at_ms);
        remembered.keys.push(idem_key.clone());
        txn.put_msg(
            idem_key,
            &state::IdempotencyEntry {
                fingerprint: sub.fingerprint.clone(),
                result: Some(result.clone()),
                dataset: sub.dataset.clone(),
            },
        );
    }
    Ok(result)
}

/// The records of an ordinary submission: duplicates, conflicts (the next version of their natural
/// key, not counted in the aggregates) and new records (counted).
fn store_records(
    txn: &mut Txn<'_>,
    log_id: &LogId,
    sub: &state::Submission,
    position: &mut u32,
    changed: &mut Changed,
) -> Result<Stored, StoreError> {
    let mut out = Stored {
        ids: Vec::with_capacity(sub.records.len()),
        outcomes: Vec::with_capacity(sub.records.len()),
        delta: state::DatasetStats::default(),
    };
    let contributor = lineage::contributor(&sub.batch_id, &sub.source);
    let by_submission = index_submission(txn, log_id, sub, *position);
    let hash_bytes = match sub.records.iter().any(|r| !r.natural_key_hash.is_empty()) {
        true => changed.natural_key_hash_bytes(txn, &sub.dataset)?,
        false => tables::NATURAL_KEY_HASH_BYTES_BEFORE_LAYOUT,
    };
    for r in &sub.records {
        let here = *position;
        *position = position.saturating_add(1);
        let mut version = 1u32;
        let mut previous_id = String::new();
        if !r.natural_key_hash.is_empty() {
            let nk_key = tables::natural_key(&sub.dataset, &r.natural_key_hash, hash_bytes);
            let mut entry = txn.get_msg::<state::NaturalKeyEntry>(&nk_key)?.unwrap_or_default();
            if let Some(same) = entry.versions.iter().find(|v| same_content(&v.content_sha256, &r.content_sha256)) {
                out.ids.push(version_id(same)?);
                out.outcomes.push("duplicate".to_string());
                out.delta.duplicates += 1;
                continue;
            }
            if let Some(last) = entry.versions.last() {
                // The next version of the chain the key's latest version ends (which may be a
                // correction); numbered after it. A latest version stored before the id index
                // existed is numbered by the index entry instead.
                let last_id = version_id(last)?;
                version = if last.version > 0 {
                    last.version.saturating_add(1)
                } else {
                    match lineage::find_record(txn, &last_id)? {
                        Some(f) => f.record.version.saturating_add(1),
                        None => entry.versions.len() as u32 + 1,
                    }
                };
                previous_id = last_id;
                let first = entry.versions.first().unwrap_or(last);
                txn.put_msg(
                    tables::conflict(&sub.dataset, log_id.index, here),
                    &state::Conflict {
                        dataset: sub.dataset.clone(),
                        natural_key_hash: r.natural_key_hash.clone(),
                        first_id: version_id(first)?,
                        first_source: version_source(txn, first)?,
                        new_id: r.id.clone(),
                        new_source: sub.source.clone(),
                        version,
                        commit_index: log_id.index,
                    },
                );
                link_successor(txn, &previous_id, &r.id, log_id.index)?;
                out.delta.conflicts += 1;
            }
            push_key_version(&mut entry, r, version);
            txn.put_msg(nk_key, &entry);
        }
        let conflict = version > 1;
        if !conflict && let Some(c) = &r.contribution {
            changed.count_in(txn, &sub.dataset, c, &contributor, log_id.index)?;
        }
        if !r.reference_key.is_empty() {
            txn.put(tables::reference(&sub.dataset, &r.reference_key), r.payload_json.clone());
        }
        let mut stored = stored_record(sub, r, log_id, version, previous_id, conflict);
        put_record(txn, &mut stored, here, by_submission)?;
        out.ids.push(r.id.clone());
        out.outcomes.push(if conflict { "conflict" } else { "stored" }.to_string());
        out.delta.stored += 1;
    }
    Ok(out)
}

/// A correction (issue 7): its one record becomes the next version of the record it corrects,
/// which must still be the latest version of its chain. Unlike a conflict it changes the
/// statistics: the chain's counted version is taken out of its cell (the proposer sent that
/// contribution; it is used only if that version still counts) and the correction is counted in
/// its place. Every check comes before the first write, so a refusal leaves the tables as they
/// were.
fn correct(
    txn: &mut Txn<'_>,
    log_id: &LogId,
    sub: &state::Submission,
    position: &mut u32,
    changed: &mut Changed,
) -> Result<Result<Stored, state::SubmissionResult>, StoreError> {
    let refuse = |code: &str, message: String| Ok(Err(failed(code, message)));
    let [r] = sub.records.as_slice() else {
        return refuse("invalid_command", "a correction holds exactly one record".into());
    };
    let Some(target) = lineage::find_record(txn, &sub.corrects_id)? else {
        return refuse("not_found", format!("record `{}` does not exist", sub.corrects_id));
    };
    let t = target.record;
    if t.dataset != sub.dataset {
        return refuse("not_found", format!("record `{}` is not in dataset `{}`", t.id, sub.dataset));
    }
    if t.source != sub.source {
        return refuse("forbidden", format!("record `{}` belongs to source `{}`", t.id, t.source));
    }
    if let Some((latest, _)) = lineage::later_versions(txn, &t.id)?.last() {
        return refuse(
            "conflict",
            format!("record `{}` is not the latest version; the latest is `{latest}`: correct that one", t.id),
        );
    }
    if sub.correction_reason.trim().is_empty() {
        return refuse("invalid_correction", "a correction needs a reason".into());
    }
    if r.content_sha256 == t.content_sha256 {
        return refuse("no_change", format!("the correction is identical to record `{}`", t.id));
    }
    if r.natural_key_hash != t.natural_key_hash {
        return refuse(
            "invalid_correction",
            "a correction may not change the record's natural key; send it as a new record".into(),
        );
    }
    let counted = match lineage::counted_version(txn, &t)? {
        lineage::Counted::Version(c) => Some(c),
        lineage::Counted::Nothing => None,
        lineage::Counted::TooLong => {
            return refuse("invalid_correction", format!("the version chain of record `{}` is too long", t.id));
        }
    };
    let retract = match (&counted, &sub.retract) {
        (Some(c), Some(contribution)) if c.id == sub.retract_id => Some((c, contribution)),
        (None, None) if sub.retract_id.is_empty() => None,
        _ => {
            return refuse(
                "conflict",
                format!("the counted version of record `{}` changed while the correction was prepared; retry", t.id),
            );
        }
    };
    // Checks done: from here on the correction is applied.
    let here = *position;
    let by_submission = index_submission(txn, log_id, sub, here);
    *position = position.saturating_add(1);
    if let Some((c, contribution)) = retract {
        changed.count_out(txn, &sub.dataset, contribution, &lineage::contributor(&c.batch_id, &c.source))?;
        let k = tables::record_successor(&c.id);
        let mut successor = txn.get_msg::<state::RecordSuccessor>(&k)?.unwrap_or_default();
        successor.retracted_index = log_id.index;
        txn.put_msg(k, &successor);
    }
    if let Some(c) = &r.contribution {
        changed.count_in(txn, &sub.dataset, c, &lineage::contributor("", &sub.source), log_id.index)?;
    }
    link_successor(txn, &t.id, &r.id, log_id.index)?;
    if !r.natural_key_hash.is_empty() {
        let hash_bytes = changed.natural_key_hash_bytes(txn, &sub.dataset)?;
        let nk_key = tables::natural_key(&sub.dataset, &r.natural_key_hash, hash_bytes);
        let mut entry = txn.get_msg::<state::NaturalKeyEntry>(&nk_key)?.unwrap_or_default();
        push_key_version(&mut entry, r, t.version.saturating_add(1));
        txn.put_msg(nk_key, &entry);
    }
    if !r.reference_key.is_empty() {
        txn.put(tables::reference(&sub.dataset, &r.reference_key), r.payload_json.clone());
    }
    let mut stored = stored_record(sub, r, log_id, t.version.saturating_add(1), t.id.clone(), false);
    stored.correction_reason = sub.correction_reason.clone();
    stored.corrected_by = sub.principal.clone();
    put_record(txn, &mut stored, here, by_submission)?;
    let delta = state::DatasetStats { stored: 1, corrections: 1, ..Default::default() };
    Ok(Ok(Stored { ids: vec![r.id.clone()], outcomes: vec!["corrected".into()], delta }))
}

/// Notes in the natural-key index that a version with this content exists, so that the same
/// content sent again is a duplicate of it. Bounded: the first version and the latest ones are kept.
fn push_key_version(entry: &mut state::NaturalKeyEntry, r: &state::RecordIn, version: u32) {
    if entry.versions.len() >= NATURAL_KEY_VERSIONS_MAX {
        entry.versions.remove(1);
    }
    let (record_id, submission, place) = match record_id::pack(&r.id) {
        Some((submission, place)) => (String::new(), submission.to_vec(), place),
        None => (r.id.clone(), Vec::new(), 0),
    };
    entry.versions.push(state::KeyVersion {
        record_id,
        content_sha256: r.content_sha256.get(..tables::KEY_VERSION_CONTENT_BYTES).unwrap_or(&r.content_sha256).to_vec(),
        submission,
        place,
        version,
        ..Default::default()
    });
}

/// Whether a natural-key version kept (a prefix of) this content hash: the first
/// `KEY_VERSION_CONTENT_BYTES` of it, or all of it in entries written before.
fn same_content(kept: &[u8], sha: &[u8]) -> bool {
    sha.starts_with(kept) && (kept.len() == sha.len() || kept.len() >= tables::KEY_VERSION_CONTENT_BYTES)
}

/// The source of the record a natural-key version names: kept in entries written before it moved
/// to the submission's location, then read from that location; the record itself is read only
/// for ids of other shapes and locations written before the source was kept there.
fn version_source(t: &Txn<'_>, v: &state::KeyVersion) -> Result<String, StoreError> {
    if !v.source.is_empty() {
        return Ok(v.source.clone());
    }
    let id = version_id(v)?;
    if let Some((submission, _)) = record_id::split(&id)
        && let Some(at) = t.get_msg::<state::RecordLocation>(&tables::record_submission(submission))?
        && !at.source.is_empty()
    {
        return Ok(at.source);
    }
    Ok(lineage::find_record(t, &id)?.map(|f| f.record.source).unwrap_or_default())
}

/// The id of the record a natural-key version names (stored whole, or packed by `push_key_version`).
fn version_id(v: &state::KeyVersion) -> Result<String, StoreError> {
    if !v.record_id.is_empty() {
        return Ok(v.record_id.clone());
    }
    record_id::unpack(&v.submission, v.place)
        .ok_or_else(|| StoreError::Invalid("a natural-key entry names no record".into()))
}

/// Records that `next_id` follows `previous_id` (keeping a retraction already noted there).
fn link_successor(txn: &mut Txn<'_>, previous_id: &str, next_id: &str, index: u64) -> Result<(), StoreError> {
    let k = tables::record_successor(previous_id);
    let mut successor = txn.get_msg::<state::RecordSuccessor>(&k)?.unwrap_or_default();
    successor.next_id = next_id.to_string();
    successor.next_index = index;
    txn.put_msg(k, &successor);
    Ok(())
}

fn stored_record(
    sub: &state::Submission,
    r: &state::RecordIn,
    log_id: &LogId,
    version: u32,
    previous_id: String,
    conflict: bool,
) -> state::StoredRecord {
    state::StoredRecord {
        id: r.id.clone(),
        dataset: sub.dataset.clone(),
        source: sub.source.clone(),
        payload_json: r.payload_json.clone(),
        received_at_ms: sub.received_at_ms,
        commit_index: log_id.index,
        request_id: sub.request_id.clone(),
        received_on_node: sub.received_on_node,
        schema_version: sub.schema_version,
        classification: sub.classification.clone(),
        priority: sub.priority.clone(),
        version,
        conflict,
        previous_id,
        natural_key_hash: r.natural_key_hash.clone(),
        channel: sub.channel.clone(),
        masked_fields: r.masked_fields.clone(),
        enriched_fields: r.enriched_fields.clone(),
        content_sha256: r.content_sha256.clone(),
        batch_id: sub.batch_id.clone(),
        correction_reason: String::new(),
        corrected_by: String::new(),
        position: 0,
    }
}

/// When the submission's record ids are `<s>.0`, `<s>.1`, … (as the pipeline names them), stores
/// where its records start (`rsub/<s>`), once, and returns true: their ids need no key of their own.
/// Record n lands at `first_position + n` because every record of a submission takes a position,
/// stored or not.
fn index_submission(txn: &mut Txn<'_>, log_id: &LogId, sub: &state::Submission, first_position: u32) -> bool {
    let Some(submission) = record_id::common_submission(sub.records.iter().map(|r| r.id.as_str())) else {
        return false;
    };
    let location = state::RecordLocation {
        dataset: sub.dataset.clone(),
        commit_index: log_id.index,
        first_position,
        source: sub.source.clone(),
    };
    txn.put_msg(tables::record_submission(submission), &location);
    true
}

/// Stores a record in commit order and, unless its submission's location already names it
/// (`index_submission`), indexes its id (lineage reads records by id).
fn put_record(
    txn: &mut Txn<'_>,
    stored: &mut state::StoredRecord,
    position: u32,
    by_submission: bool,
) -> Result<(), StoreError> {
    if !by_submission {
        txn.put(tables::record_id(&stored.id), tables::record(&stored.dataset, stored.commit_index, position));
    }
    crate::records::put(txn, stored, position)
}
