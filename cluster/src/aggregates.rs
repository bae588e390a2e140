//! The aggregate view: every dataset's aggregate cells in memory, exactly as the applied tables hold
//! them, for analysts' queries on any node.
//!
//! The cells themselves are maintained by `apply` in the replicated tables (`agg/…`), so they are
//! persisted with the log index they reflect and travel in snapshots. Scanning them in sled for
//! every query would be slow and could mix two log positions while `apply` goes on; instead `apply`
//! stages each changed cell here and the store publishes the staged cells once the batch has reached
//! sled (`Applier::committed`), under the store's write lock. A reader therefore always sees the
//! cells of one log index, and says which (`as_of_index`). The view is rebuilt from the tables when
//! the store opens and when a snapshot is installed.
//!
//! A correction takes a record's contribution out of its cell (`retract`): count, sum and n are
//! exact, min and max are not (the second smallest value is not kept), so a cell whose min or max
//! may be stale carries `extrema_approximate`; the view keeps the set of such cells per dataset.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::RwLock;

use dtm_dataset::Cell;
use dtm_dataset::DecodedCell;
use dtm_dataset::MeasureStat;
use dtm_model::state;
use dtm_storage::StateReader;
use dtm_storage::StoreError;
use prost::Message;
use sha2::Digest;
use sha2::Sha256;

use crate::tables;

/// A dataset's cells are laid out afresh once it has gained at least this many new cells, and at
/// least 1/`COMPACTION_FRACTION_INVERSE` of its size, since the last time (`AggregateView::publish`):
/// at most an eighth of the cells are ever scattered, and each cell is copied about eight times
/// in all as the map grows.
const COMPACTION_CELLS_MIN: usize = 1_024;
const COMPACTION_FRACTION_INVERSE: usize = 8;

/// Copies `new` into `old` without allocating when the measures are the same ones (a measure a
/// correction emptied is dropped).
fn update_in_place(old: &mut Cell, new: &Cell) {
    old.count = new.count;
    if old.measures.keys().any(|name| !new.measures.contains_key(name)) {
        old.measures.retain(|name, _| new.measures.contains_key(name));
    }
    for (name, stat) in &new.measures {
        match old.measures.get_mut(name) {
            Some(m) => *m = stat.clone(),
            None => {
                old.measures.insert(name.clone(), stat.clone());
            }
        }
    }
}

/// Cells of one dataset, by cell key, decoded once when published so queries parse nothing.
pub type Cells = BTreeMap<Vec<u8>, DecodedCell>;

#[derive(Default)]
struct Published {
    /// The log index every cell reflects.
    index: u64,
    datasets: BTreeMap<String, Cells>,
    /// Keys of the cells whose min and max may be wider than their values (`retract`).
    approximate: BTreeMap<String, BTreeSet<Vec<u8>>>,
    /// Cells added to each dataset since its cells were last laid out afresh (see `publish`).
    added_since_compaction: BTreeMap<String, usize>,
}

#[derive(Default)]
pub struct AggregateView {
    published: RwLock<Published>,
    /// Cells changed by the `apply` call in progress; published by `publish`.
    staged: Mutex<Vec<(String, Vec<u8>, Staged)>>,
}

/// A change to one cell, waiting for `publish`.
enum Staged {
    Cell {
        cell: DecodedCell,
        extrema_approximate: bool,
    },
    /// A correction took the cell's last record out.
    Removed,
}

pub fn cell_from_pb(c: &state::AggCell) -> Cell {
    Cell {
        count: c.count,
        measures: c
            .measures
            .iter()
            .map(|(k, m)| (k.clone(), MeasureStat { sum: m.sum, min: m.min, max: m.max, n: m.n }))
            .collect(),
    }
}

pub fn cell_to_pb(c: &Cell) -> state::AggCell {
    state::AggCell {
        extrema_approximate: false,
        count: c.count,
        measures: c
            .measures
            .iter()
            .map(|(k, m)| (k.clone(), state::MeasureStat { sum: m.sum, min: m.min, max: m.max, n: m.n }))
            .collect(),
    }
}

/// Adds one record's contribution to a stored cell (deterministic: same order, same floats).
pub fn merge(cell: &mut state::AggCell, measures: &BTreeMap<String, f64>) {
    cell.count += 1;
    for (name, v) in measures {
        let m = cell.measures.entry(name.clone()).or_default();
        if m.n == 0 {
            m.min = *v;
            m.max = *v;
        } else {
            m.min = m.min.min(*v);
            m.max = m.max.max(*v);
        }
        m.sum += v;
        m.n += 1;
    }
}

/// Takes one record's contribution out of a stored cell (a correction replaced the record).
/// Deterministic like `merge`. Count, sum and n are exact (up to floating-point rounding of the
/// sum); a measure left with no value is dropped. Min and max cannot be retracted: when the value
/// taken out equals the cell's min or max (and other values remain), they are left as they are and
/// the cell is marked `extrema_approximate`.
pub fn retract(cell: &mut state::AggCell, measures: &BTreeMap<String, f64>) {
    cell.count = cell.count.saturating_sub(1);
    for (name, v) in measures {
        let Some(m) = cell.measures.get_mut(name) else { continue };
        if m.n <= 1 {
            cell.measures.remove(name);
            continue;
        }
        m.n -= 1;
        m.sum -= v;
        if *v <= m.min || *v >= m.max {
            cell.extrema_approximate = true;
        }
    }
}

impl AggregateView {
    /// Stages the removal of a cell that a correction emptied.
    pub fn stage_removed(&self, dataset: &str, cell_key: &[u8]) {
        let mut staged = self.staged.lock().unwrap_or_else(|p| p.into_inner());
        staged.push((dataset.to_string(), cell_key.to_vec(), Staged::Removed));
    }

    /// Stages a changed cell. A key that does not decode (written by a faulty proposer) stays in the
    /// tables and the digest but cannot be queried; it is logged, not fatal.
    pub fn stage(&self, dataset: &str, cell_key: &[u8], cell: &state::AggCell) {
        match DecodedCell::decode(cell_key, cell_from_pb(cell)) {
            Ok(decoded) => {
                let mut staged = self.staged.lock().unwrap_or_else(|p| p.into_inner());
                let change = Staged::Cell { cell: decoded, extrema_approximate: cell.extrema_approximate };
                staged.push((dataset.to_string(), cell_key.to_vec(), change));
            }
            Err(e) => tracing::error!(dataset, error = %e, "aggregate cell with an undecodable key"),
        }
    }

    /// Publishes the staged cells as the state at `index`.
    ///
    /// Queries walk every cell of a dataset, so where the cells lie in memory matters: measured
    /// with 115,000 cells, a query took 15 ms over cells laid out in key order (as `rebuild` leaves
    /// them) and 62 ms over cells allocated one by one among everything else the node allocates.
    /// So an existing cell is updated in place (no new allocation), and once a dataset has gained
    /// an eighth of its size in new cells since the last time, its cells are copied afresh in key
    /// order (amortised: each cell is copied a constant number of times as the map grows).
    pub fn publish(&self, index: u64) {
        let staged = std::mem::take(&mut *self.staged.lock().unwrap_or_else(|p| p.into_inner()));
        let mut guard = self.published.write().unwrap_or_else(|p| p.into_inner());
        let p = &mut *guard;
        for (dataset, key, change) in staged {
            let (cell, extrema_approximate) = match change {
                Staged::Cell { cell, extrema_approximate } => (cell, extrema_approximate),
                Staged::Removed => {
                    if let Some(cells) = p.datasets.get_mut(&dataset) {
                        cells.remove(&key);
                    }
                    if let Some(keys) = p.approximate.get_mut(&dataset) {
                        keys.remove(&key);
                    }
                    continue;
                }
            };
            if extrema_approximate {
                p.approximate.entry(dataset.clone()).or_default().insert(key.clone());
            }
            let cells = p.datasets.entry(dataset.clone()).or_default();
            match cells.get_mut(&key) {
                Some(existing) => update_in_place(&mut existing.cell, &cell.cell),
                None => {
                    cells.insert(key, cell);
                    *p.added_since_compaction.entry(dataset).or_default() += 1;
                }
            }
        }
        for (dataset, added) in p.added_since_compaction.iter_mut() {
            if let Some(cells) = p.datasets.get_mut(dataset)
                && *added >= COMPACTION_CELLS_MIN
                && *added * COMPACTION_FRACTION_INVERSE >= cells.len()
            {
                *cells = cells.iter().map(|(k, c)| (k.clone(), c.clone())).collect();
                *added = 0;
            }
        }
        p.index = p.index.max(index);
    }

    /// Replaces the view with the cells in `tables`.
    pub fn rebuild(&self, tables: &StateReader) -> Result<(), StoreError> {
        let mut datasets: BTreeMap<String, Cells> = BTreeMap::new();
        let mut approximate: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
        tables.for_each_prefixed(tables::AGGREGATE, |k, v| {
            let rest = &k[tables::AGGREGATE.len()..];
            let Some(sep) = rest.iter().position(|b| *b == 0) else {
                return Err(StoreError::Invalid("aggregate key without dataset separator".into()));
            };
            let dataset = String::from_utf8(rest[..sep].to_vec())
                .map_err(|_| StoreError::Invalid("aggregate key with a non-UTF-8 dataset".into()))?;
            let cell = state::AggCell::decode(v)?;
            let key = &rest[sep + 1..];
            if cell.extrema_approximate {
                approximate.entry(dataset.clone()).or_default().insert(key.to_vec());
            }
            match DecodedCell::decode(key, cell_from_pb(&cell)) {
                Ok(decoded) => {
                    datasets.entry(dataset).or_default().insert(key.to_vec(), decoded);
                }
                Err(e) => tracing::error!(dataset, error = %e, "aggregate cell with an undecodable key"),
            }
            Ok(())
        })?;
        let index = tables.applied_index()?;
        self.staged.lock().unwrap_or_else(|p| p.into_inner()).clear();
        *self.published.write().unwrap_or_else(|p| p.into_inner()) =
            Published { index, datasets, approximate, added_since_compaction: BTreeMap::new() };
        Ok(())
    }

    /// Runs `f` over one dataset's cells (None: no cells yet) at the index they reflect.
    pub fn read<T>(&self, dataset: &str, f: impl FnOnce(u64, Option<&Cells>) -> T) -> T {
        let p = self.published.read().unwrap_or_else(|p| p.into_inner());
        f(p.index, p.datasets.get(dataset))
    }

    /// Like `read`, with the keys of the dataset's cells whose min and max are approximate.
    pub fn read_flagged<T>(
        &self,
        dataset: &str,
        f: impl FnOnce(u64, Option<&Cells>, Option<&BTreeSet<Vec<u8>>>) -> T,
    ) -> T {
        let p = self.published.read().unwrap_or_else(|p| p.into_inner());
        f(p.index, p.datasets.get(dataset), p.approximate.get(dataset))
    }

    /// SHA-256 over the dataset's whole aggregate state (each cell key and its stored encoding, in
    /// key order, length-prefixed), with the index it reflects. Equal on every node at one index.
    pub fn digest(&self, dataset: &str) -> (u64, [u8; 32]) {
        self.read_flagged(dataset, |index, cells, approximate| {
            let mut h = Sha256::new();
            for (k, c) in cells.into_iter().flatten() {
                let mut pb = cell_to_pb(&c.cell);
                pb.extrema_approximate = approximate.is_some_and(|a| a.contains(k));
                digest_cell(&mut h, k, &pb);
            }
            (index, h.finalize().into())
        })
    }
}

/// Adds one cell to a dataset's digest (its key and its encoding, length-prefixed). A dataset's
/// digest is this over its cells in key order; a backup computes it the same way from the tables.
pub fn digest_cell(h: &mut Sha256, key: &[u8], cell: &state::AggCell) {
    let v = cell.encode_to_vec();
    h.update((key.len() as u64).to_be_bytes());
    h.update(key);
    h.update((v.len() as u64).to_be_bytes());
    h.update(&v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_cells_are_invisible_until_published() {
        let view = AggregateView::default();
        let mut cell = state::AggCell::default();
        merge(&mut cell, &BTreeMap::from([("x".to_string(), 2.0)]));
        let key = dtm_dataset::Contribution {
            time: dtm_dataset::TimePoint::Year(2026),
            dims: vec![],
            measures: BTreeMap::new(),
        }
        .cell_key();
        view.stage("d", &key, &cell);
        assert_eq!(view.read("d", |i, c| (i, c.is_none())), (0, true));
        view.publish(7);
        let (index, count) = view.read("d", |i, c| (i, c.and_then(|c| c.get(&key[..])).map(|c| c.cell.count)));
        assert_eq!((index, count), (7, Some(1)));
    }

    /// In-place updates and compactions change nothing a reader sees: the view equals one holding
    /// only the final cells.
    #[test]
    fn updates_in_place_and_compactions_keep_the_cells() {
        let key = |i: u32| {
            dtm_dataset::Contribution {
                time: dtm_dataset::TimePoint::Year(2000 + (i % 50) as i32),
                dims: vec![serde_json::json!(i)],
                measures: BTreeMap::new(),
            }
            .cell_key()
        };
        let (view, reference) = (AggregateView::default(), AggregateView::default());
        let mut cells: BTreeMap<u32, state::AggCell> = BTreeMap::new();
        for round in 0..6u32 {
            for i in 0..(1_000 * (round + 1)) {
                let cell = cells.entry(i).or_default();
                merge(cell, &BTreeMap::from([("x".to_string(), f64::from(i + round))]));
                view.stage("d", &key(i), cell);
            }
            view.publish(u64::from(round) + 1);
        }
        for (i, cell) in &cells {
            reference.stage("d", &key(*i), cell);
        }
        reference.publish(6);
        assert_eq!(view.digest("d"), reference.digest("d"));
        assert_eq!(view.read("d", |_, c| c.map(|c| c.len())), Some(6_000));
    }

    #[test]
    fn retract_takes_out_count_sum_and_n_and_flags_extrema_it_cannot_retract() {
        let x = |v: f64| BTreeMap::from([("x".to_string(), v)]);
        let mut cell = state::AggCell::default();
        for v in [5.0, -1.0, 3.0] {
            merge(&mut cell, &x(v));
        }
        retract(&mut cell, &x(3.0));
        let m = &cell.measures["x"];
        assert_eq!((cell.count, m.sum, m.n, m.min, m.max), (2, 4.0, 2, -1.0, 5.0));
        assert!(!cell.extrema_approximate, "3 was neither the min nor the max");
        retract(&mut cell, &x(5.0));
        let m = &cell.measures["x"];
        assert_eq!((cell.count, m.sum, m.n), (1, -1.0, 1));
        assert!(cell.extrema_approximate, "the max 5 cannot be retracted exactly");
        retract(&mut cell, &x(-1.0));
        assert_eq!(cell.count, 0);
        assert!(cell.measures.is_empty(), "a measure left without values is dropped");
    }

    #[test]
    fn an_emptied_cell_leaves_the_view_and_flags_follow_their_cells() {
        let view = AggregateView::default();
        let key = dtm_dataset::Contribution {
            time: dtm_dataset::TimePoint::Year(2026),
            dims: vec![],
            measures: BTreeMap::new(),
        }
        .cell_key();
        let mut cell = state::AggCell::default();
        merge(&mut cell, &BTreeMap::from([("x".to_string(), 2.0)]));
        cell.extrema_approximate = true;
        view.stage("d", &key, &cell);
        view.publish(1);
        assert_eq!(view.read_flagged("d", |_, c, f| (c.map(|c| c.len()), f.map(|f| f.len()))), (Some(1), Some(1)));
        let flagged_digest = view.digest("d");
        // A measure a correction emptied leaves the published cell too.
        let mut two = cell.clone();
        merge(&mut two, &BTreeMap::from([("y".to_string(), 1.0)]));
        view.stage("d", &key, &two);
        view.stage("d", &key, &cell);
        view.publish(2);
        let measures = view.read("d", |_, c| c.and_then(|c| c.get(&key[..])).map(|c| c.cell.measures.len()));
        assert_eq!(measures, Some(1));
        view.stage_removed("d", &key);
        view.publish(2);
        assert_eq!(view.read_flagged("d", |_, c, f| (c.map(|c| c.len()), f.map(|f| f.len()))), (Some(0), Some(0)));
        assert_ne!(view.digest("d").1, flagged_digest.1);
    }

    #[test]
    fn merge_keeps_min_max_sum_and_count() {
        let mut cell = state::AggCell::default();
        for v in [5.0, -1.0, 3.0] {
            merge(&mut cell, &BTreeMap::from([("x".to_string(), v)]));
        }
        let m = &cell.measures["x"];
        assert_eq!((cell.count, m.sum, m.min, m.max, m.n), (3, 7.0, -1.0, 5.0, 3));
    }
}
