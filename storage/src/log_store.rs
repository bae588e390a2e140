//! The Raft log on sled: entries keyed by big-endian index in the `raft_log` tree, vote, committed
//! and last-purged ids in `raft_meta`. Appends, votes and truncations are fsynced (`flush_async`)
//! before they are reported done. A purge writes its mark and returns; the entries go in the
//! background (`Purged`).
//!
//! Each append waits for its own fsync: openraft 0.9 awaits the flush callback of an append before
//! it issues the next one (`RaftCore::append_to_log`), so a flusher task that groups fsyncs across
//! appends was tried and measured to gain nothing. Throughput comes from group commit above openraft
//! (many requests in one entry).

use std::fmt::Debug;
use std::ops::Bound;
use std::ops::RangeBounds;

use dtm_model::LogId;
use dtm_model::NodeId;
use dtm_model::TypeConfig;
use dtm_model::Vote;
use dtm_model::pb;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::StorageError;
use openraft::storage::LogFlushed;
use openraft::storage::RaftLogStorage;
use prost::Message;

use crate::error::StoreError;
use crate::error::sto;
use crate::limits::APPEND_ENTRIES_BYTES_MAX;
use crate::limits::LOG_READ_ENTRIES_MAX;
use crate::limits::PURGE_BATCH_ENTRIES;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
/// Present while this node is catching up after it started with no data (`LogStore::catching_up`).
const KEY_CATCHING_UP: &[u8] = b"catching_up";

/// The Raft log store. Cheap to clone: clones share the same sled trees.
#[derive(Clone)]
pub struct LogStore {
    pub(crate) db: sled::Db,
    /// Entries, sealed (`crypto.rs`).
    pub(crate) log: crate::sealed::SealedTree,
    pub(crate) meta: sled::Tree,
    stats: std::sync::Arc<crate::SnapshotStats>,
    /// `KEY_CATCHING_UP`, cached: read on every vote request.
    catching_up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Where the log starts, and the deletion of the entries before it (`purge`).
    purged: std::sync::Arc<Purged>,
}

/// The log's start, and the background deletion of the entries before it. openraft awaits `purge`
/// inside its Raft core; deleting the hundreds of thousands of entries a large snapshot covers in
/// one sled batch held a follower's core for about six seconds, past the leader's AppendEntries
/// deadlines, so a two-voter cluster could not commit (session 13's availability soak). `purge`
/// now records the mark and returns; a blocking-pool task deletes the entries in batches of
/// `PURGE_BATCH_ENTRIES`. Entries below the mark are no longer part of the log whether or not they
/// are deleted yet: the readers never return them, and a restart deletes what is left
/// (`check_start`).
#[derive(Default)]
struct Purged {
    /// One past the last purged index (0: nothing purged).
    below: std::sync::atomic::AtomicU64,
    /// Whether a deletion task is running (at most one is).
    deleting: std::sync::atomic::AtomicBool,
}

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl LogStore {
    pub(crate) fn new(
        db: sled::Db,
        cipher: std::sync::Arc<crate::crypto::Cipher>,
        stats: std::sync::Arc<crate::SnapshotStats>,
    ) -> std::result::Result<Self, StoreError> {
        let log = crate::sealed::SealedTree::new(db.open_tree("raft_log")?, cipher);
        let meta = db.open_tree("raft_meta")?;
        let catching_up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(meta.contains_key(KEY_CATCHING_UP)?));
        let store = LogStore { db, log, meta, stats, catching_up, purged: Default::default() };
        if let Some(p) = store.read_log_id(KEY_LAST_PURGED)? {
            store.purged.below.store(p.index.saturating_add(1), std::sync::atomic::Ordering::Release);
        }
        Ok(store)
    }

    /// The first index the log may hold: one past the last purged entry (0: nothing purged).
    fn start(&self) -> u64 {
        self.purged.below.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Deletes the entries before the log's start, `PURGE_BATCH_ENTRIES` per sled batch, until none
    /// is left (a purge that moves the start meanwhile is taken into account).
    fn delete_purged(&self) -> std::result::Result<(), StoreError> {
        loop {
            let keys: Vec<sled::IVec> = self
                .log
                .raw
                .range(..index_key(self.start()))
                .keys()
                .take(PURGE_BATCH_ENTRIES)
                .collect::<sled::Result<_>>()?;
            if keys.is_empty() {
                return Ok(());
            }
            let mut batch = sled::Batch::default();
            for k in keys {
                batch.remove(k);
            }
            self.log.raw.apply_batch(batch)?;
        }
    }

    /// Starts a task that deletes the purged entries, unless one is running (it goes on to the
    /// new start). Without a tokio runtime the entries are deleted here.
    fn delete_purged_in_background(&self) {
        use std::sync::atomic::Ordering;
        if self.purged.deleting.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = self.clone();
        let work = move || {
            loop {
                let result = store.delete_purged();
                store.purged.deleting.store(false, Ordering::Release);
                if let Err(e) = result {
                    // The entries stay, unread; the next purge or restart deletes them.
                    tracing::warn!(error = %e, "could not delete purged log entries");
                    return;
                }
                // A purge that came after the last batch found this task running and left its
                // entries to it: take them, unless another task has started meanwhile.
                let left = store.log.raw.range(..index_key(store.start())).next().is_some();
                if !left || store.purged.deleting.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(work)),
            Err(_) => work(),
        }
    }

    /// Whether this node is still catching up after it started without data (a new node, a wiped
    /// one, or one reset at start by `check_start`). Such a node must not vote: it cannot know
    /// which entries it acknowledged, or whom it voted for, before its data went, so a vote from
    /// it could elect a leader that lacks a committed write. Having some log is not enough (a
    /// wiped node that received half of the leader's log, or a snapshot, is still behind what it
    /// once acknowledged); it votes again once `leader_contact_caught_up` says so.
    pub fn catching_up(&self) -> bool {
        self.catching_up.load(std::sync::atomic::Ordering::Acquire)
    }

    /// At open: marks a store with no vote, no log, no purge mark and no applied state (nothing at
    /// all) as catching up, durably, so a restart during the catch-up keeps the mark.
    pub(crate) fn mark_if_empty(&self, state: &crate::sealed::SealedTree) -> std::result::Result<(), StoreError> {
        let empty = !self.meta.contains_key(KEY_VOTE)?
            && !self.meta.contains_key(KEY_LAST_PURGED)?
            && self.log.raw.first()?.is_none()
            && crate::state_machine::read_applied(state)?.is_none();
        if empty {
            self.set_catching_up(true)?;
        }
        Ok(())
    }

    fn set_catching_up(&self, on: bool) -> std::result::Result<(), StoreError> {
        if on {
            self.meta.insert(KEY_CATCHING_UP, &[])?;
        } else {
            self.meta.remove(KEY_CATCHING_UP)?;
        }
        self.db.flush()?;
        self.catching_up.store(on, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// This node is the first voter of a new cluster: there is nothing to catch up with.
    pub fn bootstrapped(&self) -> std::result::Result<(), StoreError> {
        if self.catching_up() { self.set_catching_up(false) } else { Ok(()) }
    }

    /// Called after an append-entries call from the leader of `leader_term` succeeded: this node's
    /// log now matches the leader's up to `matched` (the request's last entry, or its previous log
    /// id). Once the leader's commit index is an entry of its own term, everything committed before
    /// this node lost its data precedes it in the leader's log (a leader holds every committed
    /// entry, and commits an entry of its term only after all earlier ones); a node that holds the
    /// log up to there holds everything it ever acknowledged, and may vote again. Answers whether
    /// the mark was cleared by this call.
    pub fn leader_contact_caught_up(
        &self,
        leader_term: u64,
        leader_commit: Option<LogId>,
        matched: Option<LogId>,
    ) -> std::result::Result<bool, StoreError> {
        if !self.catching_up() || !caught_up(leader_term, leader_commit, matched) {
            return Ok(false);
        }
        self.set_catching_up(false)?;
        Ok(true)
    }

    fn read_log_id(&self, key: &[u8]) -> std::result::Result<Option<LogId>, StoreError> {
        match self.meta.get(key)? {
            None => Ok(None),
            Some(v) => Ok(Some(dtm_model::log_id_from_pb(&pb::LogId::decode(v.as_ref())?))),
        }
    }

    /// At start-up: the log and the state machine must agree. The log must go on from the last
    /// purged entry (or from the start), and the state machine must hold at least everything the
    /// log no longer does. openraft 0.9 breaks both on a follower that installs a snapshot: it
    /// purges the log the snapshot covers, and accepts the leader's next entries, without waiting
    /// for the state machine to finish installing it (`install_full_snapshot` in openraft's
    /// following handler). A node killed in between (the install of a large state takes seconds)
    /// holds a purged log, or entries after a gap, over an older state: openraft then stops on it
    /// at every start (`try to get log at index 0 but got Some(229671)`), a crash loop the chaos
    /// soaks hit twice. A snapshot whose install was cut short (`KEY_INSTALLING`) is incomplete
    /// too. When the log holds no entries (nothing this node acknowledged can be lost), such a node
    /// is reset: purge and commit marks and tables are cleared (the caller removes the snapshot
    /// file), keeping its vote, so it catches up from the leader as a wiped node does and, like
    /// one, does not vote until it has (`catching_up`). With entries in the log the store is refused, naming the
    /// fix: dropping entries the node acknowledged is not safe to do unasked. Returns whether it
    /// was reset.
    pub(crate) fn check_start(
        &self,
        dir: &std::path::Path,
        state: &crate::sealed::SealedTree,
    ) -> std::result::Result<bool, StoreError> {
        let last_purged = self.read_log_id(KEY_LAST_PURGED)?;
        // Entries purged before a stop may not all be deleted yet (`Purged`).
        self.delete_purged()?;
        let applied = crate::state_machine::read_applied(state)?;
        let first = match self.log.raw.first()? {
            Some((k, _)) => Some(
                key_index(&k)
                    .map_err(|_| StoreError::Invalid(format!("a log key of {} bytes in {}", k.len(), dir.display())))?,
            ),
            None => None,
        };
        let expected = last_purged.map_or(0, |l| l.index + 1);
        let purged_past_state = last_purged.is_some_and(|p| applied.is_none_or(|a| a < p.index));
        let gap = first.is_some_and(|f| f > expected);
        let half_installed = state.raw.contains_key(crate::state_machine::KEY_INSTALLING)?;
        if !purged_past_state && !gap && !half_installed {
            return Ok(false);
        }
        if first.is_some() {
            // Entries this node may have acknowledged to a leader: dropping them could lose a
            // committed write if other nodes fail too. Leave the decision to the operator.
            return Err(StoreError::Invalid(format!(
                "the Raft log in {} (first entry {first:?}, last purged {:?}) cannot be continued by the state \
                 machine (applied {applied:?}): the store is incomplete; remove this node from the cluster, \
                 wipe its data directory and add it again (docs/operations.md, \"A node lost its data\")",
                dir.display(),
                last_purged.map(|l| l.index),
            )));
        }
        tracing::warn!(
            first_entry = ?first,
            last_purged = ?last_purged.map(|l| l.index),
            applied = ?applied,
            half_installed,
            store = %dir.display(),
            "the log and the state machine disagree (the node stopped while it installed a snapshot): \
             resetting this node's log and tables; it catches up from the leader"
        );
        state.remove_all_but(None, |_| Ok(()))?;
        self.meta.remove(KEY_LAST_PURGED)?;
        self.purged.below.store(0, std::sync::atomic::Ordering::Release);
        self.meta.remove(KEY_COMMITTED)?;
        // Flushes all of the above.
        self.set_catching_up(true)?;
        Ok(true)
    }

    async fn flush(&self, subject: ErrorSubject<NodeId>, verb: ErrorVerb) -> Result<()> {
        self.db.flush_async().await.map_err(|e| sto(subject, verb, e))?;
        Ok(())
    }
}

/// The rule of `LogStore::leader_contact_caught_up`.
fn caught_up(leader_term: u64, leader_commit: Option<LogId>, matched: Option<LogId>) -> bool {
    match (leader_commit, matched) {
        (Some(c), Some(m)) => c.leader_id.term == leader_term && m.index >= c.index,
        _ => false,
    }
}

fn key_index(k: &[u8]) -> std::result::Result<u64, StoreError> {
    let bytes: [u8; 8] = k.try_into().map_err(|_| StoreError::Invalid("log key is not 8 bytes".into()))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Decodes the entry stored under `k`, checking that it carries the index of its key.
fn decode_at(k: &[u8], v: &[u8]) -> std::result::Result<dtm_model::Entry, StoreError> {
    let index = key_index(k)?;
    let entry = dtm_model::decode_entry(v)?;
    if entry.log_id.index != index {
        return Err(StoreError::Invalid(format!("log entry under key {index} carries index {}", entry.log_id.index)));
    }
    Ok(entry)
}

impl RaftLogReader<TypeConfig> for LogStore {
    /// What replication sends in one AppendEntries: entries from `start`, stopping before `end` or
    /// once `APPEND_ENTRIES_BYTES_MAX` bytes are reached (always at least one entry). openraft 0.9
    /// gives each AppendEntries RPC one heartbeat interval to complete; a follower that lags by many
    /// large group-commit entries would otherwise be sent more than it can take in that time, again
    /// and again, and never catch up.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<dtm_model::Entry>> {
        let start = start.max(self.start());
        let mut out = Vec::new();
        if start >= end {
            return Ok(out);
        }
        let mut bytes = 0usize;
        for kv in self.log.range(index_key(start)..index_key(end)) {
            let (k, v) = kv.map_err(|e| sto(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            if !out.is_empty() && bytes + v.len() > APPEND_ENTRIES_BYTES_MAX {
                break;
            }
            bytes += v.len();
            out.push(decode_at(&k, &v).map_err(|e| sto(ErrorSubject::Logs, ErrorVerb::Read, e))?);
        }
        Ok(out)
    }

    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<dtm_model::Entry>> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        }
        .max(self.start());
        let mut out = Vec::new();
        for kv in self.log.range(index_key(start)..) {
            let (k, v) = kv.map_err(|e| sto(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            let index = key_index(&k).map_err(|e| sto(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            if !range.contains(&index) || out.len() >= LOG_READ_ENTRIES_MAX {
                break;
            }
            out.push(decode_at(&k, &v).map_err(|e| sto(ErrorSubject::Logs, ErrorVerb::Read, e))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let last_purged =
            self.read_log_id(KEY_LAST_PURGED).map_err(|e| sto(ErrorSubject::Store, ErrorVerb::Read, e))?;
        let last = match self.log.last().map_err(|e| sto(ErrorSubject::Logs, ErrorVerb::Read, e))? {
            None => None,
            Some((_, v)) => {
                Some(dtm_model::decode_entry(&v).map_err(|e| sto(ErrorSubject::Logs, ErrorVerb::Read, e))?.log_id)
            }
        };
        // Entries below the log's start may still be there (`Purged`): the last entry counts only
        // if it is past the last purged one.
        let last_log_id = match (last, last_purged) {
            (Some(l), Some(p)) if l.index <= p.index => Some(p),
            (l, p) => l.or(p),
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<()> {
        self.meta
            .insert(KEY_VOTE, dtm_model::vote_to_pb(vote).encode_to_vec())
            .map_err(|e| sto(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        self.flush(ErrorSubject::Vote, ErrorVerb::Write).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>> {
        match self.meta.get(KEY_VOTE).map_err(|e| sto(ErrorSubject::Vote, ErrorVerb::Read, e))? {
            None => Ok(None),
            Some(v) => {
                let pbv = pb::Vote::decode(v.as_ref()).map_err(|e| sto(ErrorSubject::Vote, ErrorVerb::Read, e))?;
                Ok(Some(dtm_model::vote_from_pb(&pbv)))
            }
        }
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<()> {
        // Not flushed: a lost `committed` only means the node re-learns it from the leader.
        let r = match committed {
            Some(c) => self.meta.insert(KEY_COMMITTED, dtm_model::log_id_to_pb(&c).encode_to_vec()).map(|_| ()),
            None => self.meta.remove(KEY_COMMITTED).map(|_| ()),
        };
        r.map_err(|e| sto(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>> {
        self.read_log_id(KEY_COMMITTED).map_err(|e| sto(ErrorSubject::Store, ErrorVerb::Read, e))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = dtm_model::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = self.log.batch();
        let mut bytes = 0u64;
        for entry in entries {
            let encoded = dtm_model::encode_entry(&entry);
            // Counted as stored (sealed, compressed), like the snapshot file it is compared with.
            bytes += batch
                .insert(&index_key(entry.log_id.index), &encoded)
                .map_err(|e| sto(ErrorSubject::Logs, ErrorVerb::Write, e))? as u64;
        }
        self.stats.appended(bytes);
        self.log.apply_batch(batch).map_err(|e| sto(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        // Durable before acknowledged: openraft counts this node towards the quorum only after the
        // callback, so the callback fires after the fsync and carries its outcome.
        let flushed = self.db.flush_async().await.map(|_| ()).map_err(std::io::Error::other);
        callback.log_io_completed(flushed);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<()> {
        let mut batch = self.log.batch();
        for k in self.log.raw.range(index_key(log_id.index)..).keys() {
            batch.remove(k.map_err(|e| sto(ErrorSubject::Logs, ErrorVerb::Read, e))?);
        }
        self.log.apply_batch(batch).map_err(|e| sto(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        self.flush(ErrorSubject::Logs, ErrorVerb::Write).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<()> {
        // The last-purged id is written before the entries go. sled recovers a prefix of its writes,
        // so after a crash either both are visible or the entries are still there.
        self.meta
            .insert(KEY_LAST_PURGED, dtm_model::log_id_to_pb(&log_id).encode_to_vec())
            .map_err(|e| sto(ErrorSubject::Store, ErrorVerb::Write, e))?;
        // From here on the entries up to `log_id` are not read; they are deleted in the background.
        self.purged.below.fetch_max(log_id.index.saturating_add(1), std::sync::atomic::Ordering::AcqRel);
        self.delete_purged_in_background();
        Ok(())
    }
}
