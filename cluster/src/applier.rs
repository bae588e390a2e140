//! What each replicated command does to the tables. Runs inside `apply` on every node, so it is
//! deterministic: ids and times come from the command (assigned once by the proposer), iteration is
//! over ordered maps, and nothing reads a clock, randomness or configuration.

use dtm_model::LogId;
use dtm_model::state;
use dtm_model::state::command::Kind;
use dtm_model::state::command_response::Result as Reply;
use dtm_storage::Applier;
use dtm_storage::StoreError;
use dtm_storage::Txn;

use crate::limits::IDEMPOTENCY_EXPIRY_PER_ENTRY_MAX;
use crate::limits::IDEMPOTENCY_RETENTION_MS;
use crate::tables;

pub struct DtmApplier;

fn applied() -> state::CommandResponse {
    state::CommandResponse { result: Some(Reply::Applied(state::Applied {})) }
}

fn rejected(code: &str, message: impl Into<String>) -> state::CommandResponse {
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
        match kind {
            Kind::RegisterSource(c) => register_source(txn, c),
            Kind::IssueKey(c) => issue_key(txn, c),
            Kind::RevokeKey(c) => revoke_key(txn, c, cmd.proposed_at_ms),
            Kind::DefineDataset(c) => define_dataset(txn, c),
            Kind::Ingest(c) => ingest(txn, log_id, cmd.proposed_at_ms, c),
            Kind::IssueAdminToken(c) => issue_admin_token(txn, c),
            // The audit trail arrives with its own issue; until then audit events are accepted and
            // kept only in the log.
            Kind::Audit(_) => Ok(applied()),
        }
    }
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

fn issue_key(txn: &mut Txn<'_>, c: &state::IssueKey) -> Result<state::CommandResponse, StoreError> {
    let Some(key) = &c.key else { return Ok(rejected("invalid_command", "key issue without key")) };
    if txn.get(&tables::source(&c.source_id))?.is_none() {
        return Ok(rejected("not_found", format!("source `{}` is not registered", c.source_id)));
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

fn define_dataset(txn: &mut Txn<'_>, c: &state::DefineDataset) -> Result<state::CommandResponse, StoreError> {
    let Some(ds) = &c.dataset else { return Ok(rejected("invalid_command", "dataset definition without dataset")) };
    let k = tables::dataset(&ds.id);
    if txn.get(&k)?.is_some() {
        return Ok(rejected("conflict", format!("dataset `{}` is already defined", ds.id)));
    }
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

fn ingest(
    txn: &mut Txn<'_>,
    log_id: &LogId,
    now_ms: u64,
    c: &state::IngestBatch,
) -> Result<state::CommandResponse, StoreError> {
    expire_idempotency_keys(txn, now_ms)?;
    let mut results = Vec::with_capacity(c.submissions.len());
    // Positions run over the whole entry so that records of different submissions never collide.
    let mut position: u32 = 0;
    for sub in &c.submissions {
        results.push(ingest_one(txn, log_id, sub, &mut position)?);
    }
    Ok(state::CommandResponse { result: Some(Reply::Ingest(state::IngestResults { results })) })
}

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
    if txn.get(&tables::source(&sub.source))?.is_none() {
        return Ok(failed("unknown_source", format!("source `{}` is not registered", sub.source)));
    }
    if !sub.key_id.is_empty() {
        let key = txn.get_msg::<state::IssueKey>(&tables::api_key(&sub.key_id))?;
        let valid = key.is_some_and(|k| k.source_id == sub.source && k.key.is_some_and(|k| !k.revoked));
        if !valid {
            return Ok(failed("key_revoked", "the API key was revoked before this submission was committed"));
        }
    }
    let mut ids = Vec::with_capacity(sub.records.len());
    for r in &sub.records {
        let key = tables::record(&sub.dataset, log_id.index, *position);
        *position = position.saturating_add(1);
        let stored = state::StoredRecord {
            id: r.id.clone(),
            dataset: sub.dataset.clone(),
            source: sub.source.clone(),
            payload_json: r.payload_json.clone(),
            received_at_ms: sub.received_at_ms,
            commit_index: log_id.index,
            request_id: sub.request_id.clone(),
            received_on_node: sub.received_on_node,
        };
        // No id -> key index yet: nothing reads records by id until lineage lands, and every extra
        // key per record costs a sled node copy (see docs/benchmarks.md).
        txn.put_msg(key, &stored);
        ids.push(r.id.clone());
    }
    let count_key = tables::record_count(&sub.dataset);
    let count = match txn.get(&count_key)? {
        Some(v) if v.len() == 8 => u64::from_be_bytes(v.as_slice().try_into().unwrap_or([0; 8])),
        _ => 0,
    };
    txn.put(count_key, (count + ids.len() as u64).to_be_bytes().to_vec());
    let result = state::SubmissionResult { ids, commit_index: log_id.index, ..Default::default() };
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
