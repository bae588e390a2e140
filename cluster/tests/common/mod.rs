//! Log entries for tests and examples that drive `apply` directly (`apply.rs`,
//! `examples/apply_cost.rs`).

use dtm_model::state;
use dtm_model::state::command::Kind;
use openraft::EntryPayload;

/// A command proposed by node 1 at time 1,000 ms.
pub fn cmd(kind: Kind) -> state::Command {
    state::Command { actor: None, version: 1, proposed_at_ms: 1_000, origin_node: 1, kind: Some(kind) }
}

/// A normal entry of term 1 at `index`.
pub fn entry(index: u64, c: state::Command) -> dtm_model::Entry {
    openraft::Entry {
        log_id: openraft::LogId::new(openraft::LeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(c),
    }
}
