//! What batch commands do to the tables: a batch's receipt is recorded once, under its id. The
//! batch's records were committed before it as ordinary submissions; the receipt is the sender's
//! and the auditors' account of the whole upload (counts, content hash, manifest reconciliation).
//! Deterministic like the rest of `apply`: everything comes from the command.

use dtm_model::LogId;
use dtm_model::state;
use dtm_model::state::batch_command::Kind;
use dtm_storage::StoreError;
use dtm_storage::Txn;

use crate::tables;

/// Row errors one receipt may list (the count covers all of them).
pub const RECEIPT_ERRORS_MAX: usize = 100;
/// Longest batch id (the API makes UUIDs or hashes, 64 hex digits at most).
pub const BATCH_ID_BYTES_MAX: usize = 64;

use crate::applier::applied;
use crate::applier::rejected;

pub fn apply(
    txn: &mut Txn<'_>,
    _log_id: &LogId,
    c: &state::BatchCommand,
) -> Result<state::CommandResponse, StoreError> {
    match &c.kind {
        Some(Kind::RecordReceipt(c)) => record_receipt(txn, c),
        None => Ok(rejected("unsupported_command", "batch command of an unknown kind")),
    }
}

fn record_receipt(txn: &mut Txn<'_>, c: &state::RecordBatchReceipt) -> Result<state::CommandResponse, StoreError> {
    let Some(receipt) = &c.receipt else { return Ok(rejected("invalid_command", "batch receipt missing")) };
    if receipt.batch_id.is_empty() || receipt.batch_id.len() > BATCH_ID_BYTES_MAX || receipt.batch_id.contains('\0') {
        return Ok(rejected("invalid_command", "a batch id is 1-64 characters"));
    }
    if receipt.errors.len() > RECEIPT_ERRORS_MAX {
        return Ok(rejected("invalid_command", format!("a receipt lists at most {RECEIPT_ERRORS_MAX} errors")));
    }
    let k = tables::batch(&receipt.batch_id);
    // The first receipt of an id wins: a retried batch (same `Idempotency-Key`) keeps its account.
    if txn.get(&k)?.is_none() {
        txn.put_msg(k, receipt);
    }
    Ok(applied())
}
