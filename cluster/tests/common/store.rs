//! A sealed sled store with the real applier in a temp dir, fed one command per log entry: what the
//! tests of a single replicated table (`audit_verify.rs`, `monitoring.rs`, `performance.rs`) need.

use std::sync::Arc;

use dtm_cluster::DtmApplier;
use dtm_model::state;
use dtm_model::state::command::Kind;
use dtm_storage::StateMachineStore;
use dtm_storage::StateReader;
use openraft::EntryPayload;
use openraft::storage::RaftStateMachine;

pub struct Store {
    _dir: tempfile::TempDir,
    pub sm: StateMachineStore,
    pub reader: StateReader,
    /// The index of the last entry applied.
    pub index: u64,
}

impl Store {
    pub fn open() -> Store {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_log, sm, reader) =
            dtm_storage::open(dir.path(), &dtm_storage::StoreOptions::for_tests(), Arc::new(DtmApplier::default()))
                .expect("open store");
        Store { _dir: dir, sm, reader, index: 0 }
    }

    /// Applies `kind` as the next entry (term 1, proposed by node 1 at `at_ms`) and returns its reply.
    pub async fn apply_at(&mut self, at_ms: u64, kind: Kind) -> state::CommandResponse {
        self.index += 1;
        let cmd = state::Command { actor: None, version: 1, proposed_at_ms: at_ms, origin_node: 1, kind: Some(kind) };
        let entry = openraft::Entry {
            log_id: openraft::LogId::new(openraft::LeaderId::new(1, 1), self.index),
            payload: EntryPayload::Normal(cmd),
        };
        self.sm.apply(vec![entry]).await.expect("apply").pop().expect("one reply")
    }
}
