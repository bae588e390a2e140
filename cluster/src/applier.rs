//! What each replicated command does to the tables. Runs inside `apply` on every node, so it is
//! deterministic: ids and times come from the command (assigned once by the proposer), iteration is
//! over ordered maps, and nothing reads a clock, randomness or configuration.
//!
//! Ingest (records, duplicates, conflicts, corrections, aggregate cells and their lineage) is in
//! `ingest.rs`.

use dtm_model::LogId;
use dtm_model::state;
use dtm_model::state::command::Kind;
use dtm_model::state::command_response::Result as Reply;
use dtm_storage::Applier;
use dtm_storage::StoreError;
use dtm_storage::Txn;

use std::sync::Arc;

use crate::aggregates::AggregateView;
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
            Kind::Performance(c) => crate::performance::apply(txn, c),
            Kind::Reporting(c) => crate::reporting::apply(txn, log_id, cmd.proposed_at_ms, c),
            Kind::Monitoring(c) => crate::monitoring::apply(txn, log_id, cmd.proposed_at_ms, cmd.origin_node, c),
        }?;
        // Every command leaves its trace in the audit chain, in the same atomic batch.
        crate::audit::record(txn, log_id, cmd, &resp)?;
        Ok(resp)
    }

    /// A new record's natural key and a new submission's idempotency key are looked up and
    /// usually missing: the store proves most of those misses without sled.
    fn lookup_filtered_prefixes(&self) -> Vec<Vec<u8>> {
        vec![tables::NATURAL_KEY.to_vec(), tables::IDEMPOTENCY.to_vec()]
    }

    /// What every request reads before it is accepted (its key, its source, its dataset's
    /// definition): the API caches these while they do not change (`node/src/api/mod.rs`,
    /// `lookup_fresh`).
    fn watched_prefixes(&self) -> Vec<Vec<u8>> {
        [tables::API_KEY, tables::ADMIN_TOKEN, tables::SOURCE, tables::DATASET, tables::DATASET_VERSION]
            .iter()
            .map(|p| p.to_vec())
            .collect()
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
    if current == 0 {
        txn.put(tables::natural_key_layout(&ds.id), vec![tables::NATURAL_KEY_HASH_BYTES]);
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
