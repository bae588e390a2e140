//! What each replicated command does to the tables. Runs inside `apply` on every node, so it is
//! deterministic: ids and times come from the command (assigned once by the proposer), iteration is
//! over ordered maps, and nothing reads a clock, randomness or configuration.
//!
//! Ingest is where duplicates and conflicts are decided (A1.5): each record's natural key arrives as
//! an HMAC computed by the proposer; the natural-key index keeps every version's content hash. A
//! record identical to a version already stored is counted as a duplicate and not stored again; one
//! with new content is stored as the next version and listed as a conflict, naming both sources.
//! The first version of a key is what the aggregates count: DTM cannot know which agency's figure
//! is right, so a conflicting figure waits for reconciliation instead of silently changing
//! statistics. Aggregate cells are updated here, in the same batch as the records, and staged for
//! the in-memory view (`aggregates.rs`).

use dtm_model::LogId;
use dtm_model::state;
use dtm_model::state::command::Kind;
use dtm_model::state::command_response::Result as Reply;
use dtm_storage::Applier;
use dtm_storage::StoreError;
use dtm_storage::Txn;

use std::sync::Arc;

use crate::aggregates::AggregateView;
use crate::limits::IDEMPOTENCY_EXPIRY_PER_ENTRY_MAX;
use crate::limits::IDEMPOTENCY_RETENTION_MS;
use crate::limits::NATURAL_KEY_VERSIONS_MAX;
use crate::tables;

/// The state machine's meaning. Holds the aggregate view it keeps current; nothing else.
#[derive(Clone, Default)]
pub struct DtmApplier {
    pub view: Arc<AggregateView>,
}

/// The reply of a command that took effect (shared by every command module).
pub(crate) fn applied() -> state::CommandResponse {
    state::CommandResponse { result: Some(Reply::Applied(state::Applied {})) }
}

/// The deterministic refusal of a command, with a stable code.
pub(crate) fn rejected(code: &str, message: impl Into<String>) -> state::CommandResponse {
    state::CommandResponse {
        result: Some(Reply::Rejected(state::Rejected { code: code.into(), message: message.into() })),
    }
}

fn failed(code: &str, message: impl Into<String>) -> state::SubmissionResult {
    state::SubmissionResult { error_code: code.into(), error_message: message.into(), ..Default::default() }
}

impl Applier for DtmApplier {
    fn apply(
        &self,
        txn: &mut Txn<'_>,
        log_id: &LogId,
        cmd: &state::Command,
    ) -> Result<state::CommandResponse, StoreError> {
        if cmd.version > dtm_model::COMMAND_SET_VERSION {
            return Ok(rejected(
                "unsupported_command",
                format!("command set version {} is newer than this node", cmd.version),
            ));
        }
        let Some(kind) = &cmd.kind else {
            return Ok(rejected("unsupported_command", "command of an unknown kind"));
        };
        let resp = match kind {
            Kind::RegisterSource(c) => register_source(txn, c),
            Kind::IssueKey(c) => issue_key(txn, c),
            Kind::RevokeKey(c) => revoke_key(txn, c, cmd.proposed_at_ms),
            Kind::DefineDataset(c) => define_dataset(txn, c),
            Kind::Ingest(c) => self.ingest(txn, log_id, cmd.proposed_at_ms, c),
            Kind::IssueAdminToken(c) => issue_admin_token(txn, c),
            Kind::SetClusterSecrets(c) => set_cluster_secrets(txn, c),
            Kind::RemoveSource(c) => remove_source(txn, c, cmd.proposed_at_ms),
            Kind::Security(c) => crate::security::apply(txn, log_id, cmd.proposed_at_ms, c),
            Kind::Gateway(c) => crate::gateway::apply(txn, log_id, cmd.proposed_at_ms, c),
            Kind::RotateDataKeys(_) => rotate_data_keys(txn),
            Kind::Batch(c) => crate::batch::apply(txn, log_id, c),
            Kind::Audit(c) => match crate::audit::check_events(c) {
                Some(refusal) => return Ok(refusal),
                None => Ok(applied()),
            },
            Kind::AuditControl(c) => crate::audit::apply_control(txn, log_id, cmd.proposed_at_ms, c),
        }?;
        // Every command leaves its trace in the audit chain, in the same atomic batch.
        crate::audit::record(txn, log_id, cmd, &resp)?;
        Ok(resp)
    }

    fn committed(&self, last: &LogId) {
        self.view.publish(last.index);
    }

    fn reset(&self, tables: &dtm_storage::StateReader) -> Result<(), StoreError> {
        self.view.rebuild(tables)
    }
}

/// Raises the rotation epoch; each node rotates its own data keys when it sees it (the keys are
/// node-local and never in the log).
fn rotate_data_keys(txn: &mut Txn<'_>) -> Result<state::CommandResponse, StoreError> {
    let epoch = key_epoch(txn.get(tables::KEY_EPOCH)?.as_deref()) + 1;
    txn.put(tables::KEY_EPOCH.to_vec(), epoch.to_be_bytes().to_vec());
    Ok(applied())
}

/// The rotation epoch stored under `tables::KEY_EPOCH` (0 when none).
pub fn key_epoch(stored: Option<&[u8]>) -> u64 {
    stored.and_then(|v| <[u8; 8]>::try_from(v).ok()).map_or(0, u64::from_be_bytes)
}

fn set_cluster_secrets(txn: &mut Txn<'_>, c: &state::SetClusterSecrets) -> Result<state::CommandResponse, StoreError> {
    let Some(secrets) = &c.secrets else { return Ok(rejected("invalid_command", "cluster secrets missing")) };
    if secrets.masking_key.len() < 32 {
        return Ok(rejected("invalid_command", "the masking key must have at least 256 bits"));
    }
    // First proposal wins: several nodes may propose at once, all but one are no-ops, and every node
    // ends with the same key.
    if txn.get(tables::CLUSTER_SECRETS)?.is_none() {
        txn.put_msg(tables::CLUSTER_SECRETS.to_vec(), secrets);
    }
    Ok(applied())
}

fn register_source(txn: &mut Txn<'_>, c: &state::RegisterSource) -> Result<state::CommandResponse, StoreError> {
    let (Some(source), Some(key)) = (&c.source, &c.first_key) else {
        return Ok(rejected("invalid_command", "source registration without source or key"));
    };
    let k = tables::source(&source.id);
    if txn.get(&k)?.is_some() {
        return Ok(rejected("conflict", format!("source `{}` is already registered", source.id)));
    }
    txn.put_msg(k, source);
    txn.put_msg(
        tables::api_key(&key.key_id),
        &state::IssueKey { source_id: source.id.clone(), key: Some(key.clone()) },
    );
    Ok(applied())
}

fn remove_source(txn: &mut Txn<'_>, c: &state::RemoveSource, at_ms: u64) -> Result<state::CommandResponse, StoreError> {
    let k = tables::source(&c.source_id);
    let Some(mut source) = txn.get_msg::<state::Source>(&k)? else {
        return Ok(rejected("not_found", format!("source `{}` is not registered", c.source_id)));
    };
    if source.removed_at_ms == 0 {
        // The entry stays (ids are never reused, and records keep naming their source); the mark is
        // what refuses its keys, here in `apply` and at the gateway.
        source.removed_at_ms = at_ms.max(1);
        txn.put_msg(k, &source);
    }
    Ok(applied())
}

fn issue_key(txn: &mut Txn<'_>, c: &state::IssueKey) -> Result<state::CommandResponse, StoreError> {
    let Some(key) = &c.key else { return Ok(rejected("invalid_command", "key issue without key")) };
    match txn.get_msg::<state::Source>(&tables::source(&c.source_id))? {
        None => return Ok(rejected("not_found", format!("source `{}` is not registered", c.source_id))),
        Some(s) if s.removed_at_ms != 0 => {
            return Ok(rejected("not_found", format!("source `{}` was removed", c.source_id)));
        }
        Some(_) => {}
    }
    let k = tables::api_key(&key.key_id);
    if txn.get(&k)?.is_some() {
        return Ok(rejected("conflict", "key id already exists"));
    }
    txn.put_msg(k, c);
    Ok(applied())
}

fn revoke_key(txn: &mut Txn<'_>, c: &state::RevokeKey, at_ms: u64) -> Result<state::CommandResponse, StoreError> {
    let k = tables::api_key(&c.key_id);
    let Some(mut entry) = txn.get_msg::<state::IssueKey>(&k)? else {
        return Ok(rejected("not_found", format!("key `{}` does not exist", c.key_id)));
    };
    if entry.source_id != c.source_id {
        return Ok(rejected("not_found", format!("key `{}` does not belong to source `{}`", c.key_id, c.source_id)));
    }
    if let Some(key) = entry.key.as_mut()
        && !key.revoked
    {
        key.revoked = true;
        key.revoked_at_ms = at_ms;
    }
    txn.put_msg(k, &entry);
    Ok(applied())
}

/// A first definition (version 1) or the next version of one. The proposer checked the new version's
/// compatibility against the latest it saw; `apply` only makes sure that nothing was defined in
/// between (the version must be exactly the next), so two concurrent changes cannot both win.
fn define_dataset(txn: &mut Txn<'_>, c: &state::DefineDataset) -> Result<state::CommandResponse, StoreError> {
    let Some(ds) = &c.dataset else { return Ok(rejected("invalid_command", "dataset definition without dataset")) };
    let k = tables::dataset(&ds.id);
    let current = txn.get_msg::<state::Dataset>(&k)?.map(|d| d.version).unwrap_or(0);
    if ds.version != current + 1 {
        let message = if current == 0 {
            format!("dataset `{}` has no version {}; define version 1 first", ds.id, ds.version.saturating_sub(1))
        } else if ds.version == 1 {
            format!("dataset `{}` is already defined", ds.id)
        } else {
            format!(
                "dataset `{}` changed meanwhile (now at version {current}); check the new definition against it",
                ds.id
            )
        };
        return Ok(rejected("conflict", message));
    }
    txn.put_msg(tables::dataset_version(&ds.id, ds.version), ds);
    txn.put_msg(k, ds);
    Ok(applied())
}

fn issue_admin_token(txn: &mut Txn<'_>, c: &state::IssueAdminToken) -> Result<state::CommandResponse, StoreError> {
    let Some(t) = &c.token else { return Ok(rejected("invalid_command", "admin token issue without token")) };
    let k = tables::admin_token(&t.token_id);
    if txn.get(&k)?.is_some() {
        return Ok(rejected("conflict", "admin token id already exists"));
    }
    txn.put_msg(k, t);
    Ok(applied())
}

impl DtmApplier {
    fn ingest(
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
        let mut cells = std::collections::BTreeMap::new();
        for sub in &c.submissions {
            results.push(ingest_one(txn, log_id, sub, &mut position, &mut cells)?);
        }
        // Each changed cell is written once per entry, however many of its records it holds.
        for ((dataset, cell_key), cell) in cells {
            self.view.stage(&dataset, &cell_key, &cell);
            txn.put_msg(tables::aggregate_cell(&dataset, &cell_key), &cell);
        }
        Ok(state::CommandResponse { result: Some(Reply::Ingest(state::IngestResults { results })) })
    }
}

/// Aggregate cells changed by one entry, by (dataset, cell key).
type ChangedCells = std::collections::BTreeMap<(String, Vec<u8>), state::AggCell>;

/// Forgets idempotency entries older than `IDEMPOTENCY_RETENTION_MS`, at most
/// `IDEMPOTENCY_EXPIRY_PER_ENTRY_MAX` per entry. "Now" is the entry's proposal time, carried in the
/// log, so every node forgets the same entries at the same position.
fn expire_idempotency_keys(txn: &mut Txn<'_>, now_ms: u64) -> Result<(), StoreError> {
    let expired = txn.scan_range(
        tables::IDEMPOTENCY_EXPIRY,
        &tables::idempotency_expired_before(now_ms),
        IDEMPOTENCY_EXPIRY_PER_ENTRY_MAX,
    )?;
    for (index_key, idem_key) in expired {
        txn.remove(index_key);
        txn.remove(idem_key);
    }
    Ok(())
}

fn ingest_one(
    txn: &mut Txn<'_>,
    log_id: &LogId,
    sub: &state::Submission,
    position: &mut u32,
    cells: &mut ChangedCells,
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
    if txn.get(&tables::dataset(&sub.dataset))?.is_none() {
        return Ok(failed("unknown_dataset", format!("dataset `{}` is not defined", sub.dataset)));
    }
    match txn.get_msg::<state::Source>(&tables::source(&sub.source))? {
        None => return Ok(failed("unknown_source", format!("source `{}` is not registered", sub.source))),
        Some(s) if s.removed_at_ms != 0 => {
            return Ok(failed("unknown_source", format!("source `{}` was removed", sub.source)));
        }
        Some(_) => {}
    }
    if !sub.key_id.is_empty() {
        let key = txn.get_msg::<state::IssueKey>(&tables::api_key(&sub.key_id))?;
        let valid = key.is_some_and(|k| k.source_id == sub.source && k.key.is_some_and(|k| !k.revoked));
        if !valid {
            return Ok(failed("key_revoked", "the API key was revoked before this submission was committed"));
        }
    }
    let mut ids = Vec::with_capacity(sub.records.len());
    let mut outcomes = Vec::with_capacity(sub.records.len());
    let mut delta = state::DatasetStats::default();
    for r in &sub.records {
        let here = *position;
        *position = position.saturating_add(1);
        let mut version = 1u32;
        let mut previous_id = String::new();
        let nk_key = tables::natural_key(&sub.dataset, &r.natural_key_hash);
        let mut nk = None;
        if !r.natural_key_hash.is_empty() {
            let entry = txn.get_msg::<state::NaturalKeyEntry>(&nk_key)?.unwrap_or_default();
            if let Some(same) = entry.versions.iter().find(|v| v.content_sha256 == r.content_sha256) {
                ids.push(same.record_id.clone());
                outcomes.push("duplicate".to_string());
                delta.duplicates += 1;
                continue;
            }
            if let Some(last) = entry.versions.last() {
                version = entry.versions.len() as u32 + 1;
                previous_id = last.record_id.clone();
                let first = entry.versions.first().unwrap_or(last);
                txn.put_msg(
                    tables::conflict(&sub.dataset, log_id.index, here),
                    &state::Conflict {
                        dataset: sub.dataset.clone(),
                        natural_key_hash: r.natural_key_hash.clone(),
                        first_id: first.record_id.clone(),
                        first_source: first.source.clone(),
                        new_id: r.id.clone(),
                        new_source: sub.source.clone(),
                        version,
                        commit_index: log_id.index,
                    },
                );
                delta.conflicts += 1;
            }
            nk = Some(entry);
        }
        if let Some(mut entry) = nk {
            // Bounded: the first version (what aggregates count) and the latest ones are kept.
            if entry.versions.len() >= NATURAL_KEY_VERSIONS_MAX {
                entry.versions.remove(1);
            }
            entry.versions.push(state::KeyVersion {
                record_id: r.id.clone(),
                source: sub.source.clone(),
                content_sha256: r.content_sha256.clone(),
                commit_index: log_id.index,
            });
            txn.put_msg(nk_key, &entry);
        }
        if version == 1
            && let Some(c) = &r.contribution
        {
            let cell = match cells.entry((sub.dataset.clone(), c.cell_key.clone())) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let stored = txn.get_msg::<state::AggCell>(&tables::aggregate_cell(&sub.dataset, &c.cell_key))?;
                    e.insert(stored.unwrap_or_default())
                }
            };
            crate::aggregates::merge(cell, &c.measures);
        }
        if !r.reference_key.is_empty() {
            txn.put(tables::reference(&sub.dataset, &r.reference_key), r.payload_json.clone());
        }
        let stored = state::StoredRecord {
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
            conflict: version > 1,
            previous_id,
            natural_key_hash: r.natural_key_hash.clone(),
            channel: sub.channel.clone(),
            masked_fields: r.masked_fields.clone(),
            enriched_fields: r.enriched_fields.clone(),
            content_sha256: r.content_sha256.clone(),
        };
        // No id -> key index yet: nothing reads records by id until lineage lands, and every extra
        // key per record costs a sled node copy (see docs/benchmarks.md).
        txn.put_msg(tables::record(&sub.dataset, log_id.index, here), &stored);
        ids.push(r.id.clone());
        outcomes.push(if version > 1 { "conflict" } else { "stored" }.to_string());
        delta.stored += 1;
    }
    let count_key = tables::record_count(&sub.dataset);
    let count = match txn.get(&count_key)? {
        Some(v) if v.len() == 8 => u64::from_be_bytes(v.as_slice().try_into().unwrap_or([0; 8])),
        _ => 0,
    };
    txn.put(count_key, (count + delta.stored).to_be_bytes().to_vec());
    if delta.duplicates > 0 || delta.conflicts > 0 {
        let stats_key = tables::dataset_stats(&sub.dataset);
        let mut stats = txn.get_msg::<state::DatasetStats>(&stats_key)?.unwrap_or_default();
        stats.duplicates += delta.duplicates;
        stats.conflicts += delta.conflicts;
        txn.put_msg(stats_key, &stats);
    }
    let result = state::SubmissionResult { ids, outcomes, commit_index: log_id.index, ..Default::default() };
    if !sub.idempotency_key.is_empty() {
        let expires_at_ms = sub.received_at_ms.saturating_add(IDEMPOTENCY_RETENTION_MS);
        txn.put(tables::idempotency_expiry(expires_at_ms, &idem_key), idem_key.clone());
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
