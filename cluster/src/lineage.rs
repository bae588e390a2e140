//! Lineage and versions (issue 7): where each record is stored (`rsub/` per submission, `rid/` for
//! ids of other shapes), which version follows it (`rsup/`), which version of a chain the
//! aggregates count, and who contributed to each aggregate cell (`aggl/`).
//!
//! Records are never rewritten. A conflicting record (same natural key, other content, from any
//! source) and a correction are both stored as the next version of the chain and linked from the
//! previous one. They differ in what they do to statistics: a conflict changes nothing (the version
//! that counted keeps counting, see `ingest.rs`), a correction takes the counted version's
//! contribution out of its cell and adds its own. The counted version of a chain is therefore the
//! latest version that is not a conflict; walking back from the latest finds it.
//!
//! These functions read through [`TableRead`], so `apply` (inside its transaction) and the API (on
//! a node's read view) walk chains the same way.

use dtm_model::record_id;
use dtm_model::state;
use dtm_storage::StateReader;
use dtm_storage::StoreError;
use dtm_storage::Txn;
use prost::Message;

use crate::limits::CELL_CONTRIBUTORS_MAX;
use crate::limits::VERSION_CHAIN_WALK_MAX;
use crate::tables;

/// Read access to the tables: the transaction `apply` runs in, or a node's read view.
pub trait TableRead {
    fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    fn get_pb<M: Message + Default>(&self, key: &[u8]) -> Result<Option<M>, StoreError> {
        match self.get_raw(key)? {
            None => Ok(None),
            Some(v) => Ok(Some(M::decode(v.as_slice())?)),
        }
    }
}

impl TableRead for Txn<'_> {
    fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(key)
    }
}

impl TableRead for StateReader {
    fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(key)
    }
}

/// A stored record found by its id, with its table key.
pub struct Found {
    pub table_key: Vec<u8>,
    pub record: state::StoredRecord,
}

/// The record with this id (None: no such record, or one stored before the id index existed). An
/// id of the submission scheme (`dtm_model::record_id`) is found from its submission's location;
/// any other id through its own index key.
pub fn find_record(t: &impl TableRead, id: &str) -> Result<Option<Found>, StoreError> {
    if let Some((submission, n)) = record_id::split(id)
        && let Some(at) = t.get_pb::<state::RecordLocation>(&tables::record_submission(submission))?
    {
        let table_key = tables::record(&at.dataset, at.commit_index, at.first_position.saturating_add(n));
        return Ok(match crate::records::get(t, &table_key)? {
            Some(record) if record.id == id => Some(Found { table_key, record }),
            _ => None,
        });
    }
    let Some(table_key) = t.get_raw(&tables::record_id(id))? else { return Ok(None) };
    let Some(record) = crate::records::get(t, &table_key)? else { return Ok(None) };
    Ok(Some(Found { table_key, record }))
}

/// The versions that follow `id`, in order, up to `VERSION_CHAIN_WALK_MAX`: (id, commit index).
pub fn later_versions(t: &impl TableRead, id: &str) -> Result<Vec<(String, u64)>, StoreError> {
    let mut out = Vec::new();
    let mut current = id.to_string();
    while out.len() < VERSION_CHAIN_WALK_MAX {
        match t.get_pb::<state::RecordSuccessor>(&tables::record_successor(&current))? {
            Some(s) if !s.next_id.is_empty() => {
                out.push((s.next_id.clone(), s.next_index));
                current = s.next_id;
            }
            _ => break,
        }
    }
    Ok(out)
}

/// The chain's counted version, as seen from its latest version.
pub enum Counted {
    /// This version's contribution is in the aggregates.
    Version(Box<state::StoredRecord>),
    /// No version counts (every one is a conflict, or the first one is missing).
    Nothing,
    /// The chain is longer than `VERSION_CHAIN_WALK_MAX`.
    TooLong,
}

/// The version of the chain ending at `latest` whose contribution the aggregates hold: the latest
/// version that is not a conflict (a correction retracts the one before it, so nothing older
/// counts once one is found).
pub fn counted_version(t: &impl TableRead, latest: &state::StoredRecord) -> Result<Counted, StoreError> {
    let mut current = latest.clone();
    for _ in 0..VERSION_CHAIN_WALK_MAX {
        if !current.conflict {
            return Ok(Counted::Version(Box::new(current)));
        }
        if current.previous_id.is_empty() {
            return Ok(Counted::Nothing);
        }
        match find_record(t, &current.previous_id)? {
            Some(f) => current = f.record,
            None => return Ok(Counted::Nothing),
        }
    }
    Ok(Counted::TooLong)
}

/// How a record is named in its cell's lineage: its batch, or its source for real-time records.
pub fn contributor(batch_id: &str, source: &str) -> String {
    if batch_id.is_empty() { format!("source:{source}") } else { format!("batch:{batch_id}") }
}

/// Counts one more record of `who` at log index `index`. Past `CELL_CONTRIBUTORS_MAX` distinct
/// contributors a new one is counted in `others`.
pub fn add_contributor(lineage: &mut state::CellLineage, who: &str, index: u64) {
    if let Some(c) = lineage.contributors.get_mut(who) {
        c.records += 1;
        c.last_index = c.last_index.max(index);
        return;
    }
    if lineage.contributors.len() >= CELL_CONTRIBUTORS_MAX {
        lineage.others += 1;
        return;
    }
    lineage
        .contributors
        .insert(who.to_string(), state::CellContributor { records: 1, first_index: index, last_index: index });
}

/// Takes one record of `who` away (a correction retracted it); a contributor left with none is
/// forgotten. A contributor that was never listed (counted in `others`) is taken from `others`.
pub fn remove_contributor(lineage: &mut state::CellLineage, who: &str) {
    match lineage.contributors.get_mut(who) {
        Some(c) if c.records > 1 => c.records -= 1,
        Some(_) => {
            lineage.contributors.remove(who);
        }
        None => lineage.others = lineage.others.saturating_sub(1),
    }
}
