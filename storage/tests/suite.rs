//! openraft's storage conformance suite against the sled store, in a fresh temp dir per case.

// The error type is openraft's, fixed by the suite's signature.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use dtm_model::LogId;
use dtm_model::TypeConfig;
use dtm_model::state::Command;
use dtm_model::state::CommandResponse;
use dtm_storage::Applier;
use dtm_storage::LogStore;
use dtm_storage::StateMachineStore;
use dtm_storage::StoreError;
use dtm_storage::StoreOptions;
use dtm_storage::Txn;
use openraft::StorageError;
use openraft::testing::StoreBuilder;
use openraft::testing::Suite;

struct NoopApplier;

impl Applier for NoopApplier {
    fn apply(&self, _txn: &mut Txn<'_>, _log_id: &LogId, _cmd: &Command) -> Result<CommandResponse, StoreError> {
        Ok(CommandResponse::default())
    }
}

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::IO { source: openraft::StorageIOError::read(&e) })?;
        let (log, sm, _reader) = dtm_storage::open(dir.path(), &StoreOptions::for_tests(), Arc::new(NoopApplier))
            .map_err(|e| StorageError::IO { source: openraft::StorageIOError::read(&e) })?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_sled() -> Result<(), StorageError<u64>> {
    Suite::test_all(SledBuilder)?;
    Ok(())
}
