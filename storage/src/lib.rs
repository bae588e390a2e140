//! Durable storage of a DTM node on sled: the Raft log ([`LogStore`]) and the replicated state
//! machine ([`StateMachineStore`]), both implementing openraft 0.9's storage-v2 traits, plus a
//! read-only view of the application tables ([`StateReader`]) for the API.
//!
//! Data flow: openraft appends entries to the log (fsynced before the append is acknowledged), then
//! applies committed entries through the [`Applier`] supplied by `dtm-cluster`; the resulting table
//! changes and the last-applied id land in one atomic sled batch, after which the applier is told
//! (`Applier::committed`) so that state it derives in memory is published at that index; when the
//! tables are replaced (snapshot install) or opened, `Applier::reset` rebuilds it. Snapshots walk
//! the application tables at one applied index pair by pair into a zstd stream (`snapshot_body`):
//! that compressed data is what a leader sends and what `raft-snapshot.pb` holds (sealed), written
//! only after the store is flushed; a store found behind that file at start-up (rolled back) is refused. A snapshot
//! from the leader is installed in bounded batches under a mark; a store whose tables cannot
//! continue from its log (openraft purges before the install is durable) or whose install was cut
//! short is reset at start and catches up again when its log holds no entries, and refused
//! otherwise (`LogStore::check_start`). A store that starts with no data at all, or is reset, is
//! marked as catching up until it holds the log up to a commit of the current leader's term, and
//! does not vote while marked (`LogStore::catching_up`). Readers at default consistency can see
//! part of a snapshot while it installs; `StateReader::install_epoch` tells a reader that reads
//! many keys as one whole (the audit verification) that the tables were replaced under it.
//! A Bloom filter of the keys under the applier's miss-heavy prefixes (`absence.rs`) lets `Txn::get`
//! answer most misses without sled; it is rebuilt from the tables after they are replaced and
//! proves nothing until then.
//! `StateReader::watched_epoch` moves whenever a table under `Applier::watched_prefixes` may have
//! changed, so readers can cache those tables' values (the API's keys, sources and datasets).
//! Values of 256 bytes or more are compressed (zstd) before they are sealed (`Cipher::seal_value`); `Txn::append` lets `apply`
//! build one value (a block of records) piece by piece. A follower is sent at most `APPEND_ENTRIES_BYTES_MAX` per AppendEntries. sled stays behind this crate's API so
//! the engine can be replaced.

mod absence;
pub mod crypto;
mod error;
pub mod limits;
mod log_store;
mod sealed;
mod snapshot_body;
mod state_machine;

use std::path::Path;
use std::sync::Arc;

pub use absence::AbsenceStats;
pub use crypto::Cipher;
pub use crypto::KeyringStatus;
pub use crypto::MasterKey;
pub use error::StoreError;
pub use log_store::LogStore;
use prost::Message;
use sealed::SealedTree;
pub use state_machine::Applier;
pub use state_machine::RESERVED_PREFIX;
pub use state_machine::StateMachineStore;
pub use state_machine::Txn;

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

/// Sizes the snapshot policy needs: bytes appended to the log, where the log stood when the last
/// snapshot was taken, and how large that snapshot was — all as stored (sealed, and compressed
/// where that paid), so the file found at start weighs the same as the one just written. Counted since the process started (a
/// restart begins a new count, which only delays the next snapshot).
#[derive(Debug, Default)]
pub struct SnapshotStats {
    log_bytes_total: AtomicU64,
    log_bytes_at_snapshot: AtomicU64,
    snapshot_bytes: AtomicU64,
    /// Snapshot installs begun plus installs ended: odd while the tables are being replaced.
    installs: AtomicU64,
}

/// Held while a snapshot replaces the tables (`SnapshotStats::installing`).
pub(crate) struct Installing<'a>(&'a SnapshotStats);

impl Drop for Installing<'_> {
    fn drop(&mut self) {
        self.0.installs.fetch_add(1, Ordering::AcqRel);
    }
}

impl SnapshotStats {
    /// Marks the tables as being replaced until the guard is dropped (`StateReader::install_epoch`).
    pub(crate) fn installing(&self) -> Installing<'_> {
        self.installs.fetch_add(1, Ordering::AcqRel);
        Installing(self)
    }

    pub(crate) fn appended(&self, bytes: u64) {
        self.log_bytes_total.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn snapshot_taken(&self, snapshot_bytes: u64) {
        self.log_bytes_at_snapshot.store(self.log_bytes_total.load(Ordering::Relaxed), Ordering::Relaxed);
        self.snapshot_bytes.store(snapshot_bytes, Ordering::Relaxed);
    }

    /// Log bytes appended since the last snapshot.
    pub fn log_bytes_since_snapshot(&self) -> u64 {
        self.log_bytes_total.load(Ordering::Relaxed).saturating_sub(self.log_bytes_at_snapshot.load(Ordering::Relaxed))
    }

    /// Size of the last snapshot built or installed (0 before the first).
    pub fn snapshot_bytes(&self) -> u64 {
        self.snapshot_bytes.load(Ordering::Relaxed)
    }
}

/// Options that matter for memory, durability and confidentiality, passed explicitly by the node.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub cache_capacity_bytes: u64,
    /// Wraps the data-encryption keys (`crypto.rs`). Required: a store is never written in clear.
    pub master_key: Option<MasterKey>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { cache_capacity_bytes: limits::SLED_CACHE_CAPACITY_BYTES_DEFAULT, master_key: None }
    }
}

impl StoreOptions {
    /// Defaults with a fresh random master key (tests).
    pub fn for_tests() -> Self {
        StoreOptions { master_key: Some(test_master_key()), ..Default::default() }
    }
}

/// A fresh random master key, for tests.
pub fn test_master_key() -> MasterKey {
    let text = MasterKey::generate_text().unwrap_or_else(|_| "00".repeat(32));
    MasterKey::parse(&text).unwrap_or_else(|_| unreachable!("64 hex digits parse"))
}

/// Opens a store this process closed a moment ago. sled lets go of the store's lock only when its
/// background threads are done with the closed instance, which on a busy machine can come a little
/// after the drop; this waits for that (at most `REOPEN_WAIT`) instead of failing with `InUse`.
/// For tests and in-process restarts; separate processes never need it (the kernel drops the lock
/// with the process).
pub async fn reopen(
    dir: &Path,
    opts: &StoreOptions,
    applier: Arc<dyn Applier>,
) -> Result<(LogStore, StateMachineStore, StateReader), StoreError> {
    let deadline = std::time::Instant::now() + limits::REOPEN_WAIT;
    loop {
        match open(dir, opts, applier.clone()) {
            Err(StoreError::InUse(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// Opens (or creates) the node's store in `dir`. A store that sled cannot read (a corrupted file)
/// is an error here: the node refuses to start rather than serve damaged data.
pub fn open(
    dir: &Path,
    opts: &StoreOptions,
    applier: Arc<dyn Applier>,
) -> Result<(LogStore, StateMachineStore, StateReader), StoreError> {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(opts.cache_capacity_bytes)
        // Durability comes from explicit flushes before acknowledging; the background flush only
        // bounds how much unflushed state-machine work a crash can cost.
        .flush_every_ms(Some(500))
        .open()
        .map_err(|e| match &e {
            // sled reports a held lock as an `Other` I/O error with this text (sled 0.34 config.rs).
            sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock") => StoreError::InUse(format!(
                "the store in {} is in use by another process (is another `dtm serve` running on this data \
                 directory?): {e}",
                dir.display()
            )),
            _ => StoreError::Invalid(format!(
                "the store in {} cannot be opened (a damaged file, or not a DTM store): {e}",
                dir.display()
            )),
        })?;
    let master = opts.master_key.clone().ok_or_else(|| {
        StoreError::Invalid("no master key: the store is encrypted at rest and needs one (see docs/security.md)".into())
    })?;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let cipher = Arc::new(Cipher::load(dir, master, now_ms)?);
    let stats = Arc::new(SnapshotStats::default());
    let log = LogStore::new(db.clone(), cipher.clone(), stats.clone())?;
    let tree = SealedTree::new(db.open_tree("sm")?, cipher);
    if log.check_start(dir, &tree)? {
        // The snapshot file describes state the reset removed; the node receives a new one.
        match std::fs::remove_file(dir.join("raft-snapshot.pb")) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    log.mark_if_empty(&tree)?;
    match std::fs::metadata(dir.join("raft-snapshot.pb")) {
        // The snapshot this store already holds, with the log counted from now. Without it a
        // restarted node saw a snapshot of 0 bytes and copied its whole state into a new one as
        // soon as `snapshot_after_logs` entries had come in, after every restart.
        Ok(m) => stats.snapshot_taken(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let watch = Arc::new(TableWatch::new(applier.watched_prefixes()));
    let sm = StateMachineStore::new(
        db.clone(),
        tree.clone(),
        dir.join("raft-snapshot.pb"),
        applier.clone(),
        stats.clone(),
        watch.clone(),
    )?;
    let reader = StateReader { tree, stats, watch };
    applier.reset(&reader)?;
    Ok((log, sm, reader))
}

/// A key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// What a re-encryption pass did (`StateMachineStore::reencrypt`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReencryptReport {
    /// Values re-sealed with the current data key.
    pub resealed: u64,
    /// Values still sealed with an older key (written under a race; the next pass takes them).
    pub left: u64,
    /// Data keys removed from the keyring because nothing sealed with them is left.
    pub retired: Vec<u32>,
}

/// A read-only view of the application tables, for the API and the CLI. It reads whatever has been
/// applied on this node; callers that need more wait on the Raft applied index first.
#[derive(Clone)]
pub struct StateReader {
    tree: SealedTree,
    stats: Arc<SnapshotStats>,
    watch: Arc<TableWatch>,
}

/// The tables whose readers cache what they read (`Applier::watched_prefixes`), and a counter
/// that moves whenever one of them may have changed: after every `apply` that wrote under one of
/// the prefixes, and when a snapshot or a restore starts and ends replacing the tables.
#[derive(Debug, Default)]
pub(crate) struct TableWatch {
    prefixes: Vec<Vec<u8>>,
    epoch: AtomicU64,
}

impl TableWatch {
    pub(crate) fn new(prefixes: Vec<Vec<u8>>) -> TableWatch {
        TableWatch { prefixes, epoch: AtomicU64::new(0) }
    }

    pub(crate) fn covers(&self, key: &[u8]) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p))
    }

    /// Whether any key of a set of changes (in key order) is under a watched prefix.
    pub(crate) fn touched_by<V>(&self, changes: &std::collections::BTreeMap<Vec<u8>, V>) -> bool {
        self.prefixes.iter().any(|p| {
            let from = (std::ops::Bound::Included(p.as_slice()), std::ops::Bound::Unbounded);
            changes.range::<[u8], _>(from).next().is_some_and(|(k, _)| k.starts_with(p))
        })
    }

    /// Called after the changes are visible to readers, so a reader that saw the old epoch and
    /// then read a value notices the change at its next look.
    pub(crate) fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }
}

impl StateReader {
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.tree.get(key)
    }

    pub fn get_msg<M: Message + Default>(&self, key: &[u8]) -> Result<Option<M>, StoreError> {
        match self.tree.get(key)? {
            None => Ok(None),
            Some(v) => Ok(Some(M::decode(v.as_slice())?)),
        }
    }

    /// This node's data keys: which one new writes use, which exist, and the rotation epoch.
    pub fn keyring(&self) -> KeyringStatus {
        self.tree.cipher.status()
    }

    /// Makes a new data key current for new writes (old data stays readable), recording the
    /// replicated rotation `epoch` it answers. Returns the new key's id.
    pub fn rotate_key(&self, epoch: u64) -> Result<u32, StoreError> {
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.tree.cipher.rotate(epoch, now_ms)
    }

    /// The id of the data key the stored value under `key` was sealed with (None: no such key).
    pub fn sealed_with(&self, key: &[u8]) -> Result<Option<u32>, StoreError> {
        Ok(self.tree.raw.get(key)?.and_then(|v| Cipher::key_id_of(&v)))
    }

    /// Up to `limit` pairs whose key starts with `prefix` and is greater than `after` (if given).
    pub fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>, StoreError> {
        let mut out = Vec::new();
        let iter = match after {
            Some(a) => {
                let mut start = a.to_vec();
                start.push(0);
                self.tree.range(start..)
            }
            None => self.tree.range(prefix.to_vec()..),
        };
        for kv in iter {
            let (k, v) = kv?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_vec(), v));
        }
        Ok(out)
    }

    /// Visits, in key order, every pair whose key starts with `prefix` (for rebuilding derived state;
    /// the API pages with `scan`).
    pub fn for_each_prefixed(
        &self,
        prefix: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for kv in self.tree.scan_prefix(prefix) {
            let (k, v) = kv?;
            visit(&k, &v)?;
        }
        Ok(())
    }

    /// Like `for_each_checked`, from the first key at or after `start` (which starts with `prefix`).
    pub fn for_each_checked_from(
        &self,
        prefix: &[u8],
        start: &[u8],
        mut visit: impl FnMut(&[u8], Result<Vec<u8>, StoreError>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        for kv in self.tree.raw.range(start.to_vec()..) {
            let (k, v) = kv?;
            if !k.starts_with(prefix) || !visit(&k, self.tree.cipher.open(&k, &v))? {
                break;
            }
        }
        Ok(())
    }

    /// The last pair whose key starts with `prefix` and is at most `key` (opened), if any.
    pub fn last_at_or_before(&self, prefix: &[u8], key: &[u8]) -> Result<Option<Pair>, StoreError> {
        match self.tree.range(prefix.to_vec()..=key.to_vec()).next_back() {
            None => Ok(None),
            Some(kv) => {
                let (k, v) = kv?;
                Ok(k.starts_with(prefix).then(|| (k.to_vec(), v)))
            }
        }
    }

    /// Visits, in key order, every pair whose key starts with `prefix`, opening each value on its
    /// own: a value that does not open (damaged, moved, another key) is handed over as an error
    /// with its key instead of ending the scan, so a verifier can name it. `visit` returns false to
    /// stop.
    pub fn for_each_checked(
        &self,
        prefix: &[u8],
        mut visit: impl FnMut(&[u8], Result<Vec<u8>, StoreError>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        for kv in self.tree.raw.scan_prefix(prefix) {
            let (k, v) = kv?;
            if !visit(&k, self.tree.cipher.open(&k, &v))? {
                break;
            }
        }
        Ok(())
    }

    /// The last log index applied to these tables (0 before the first).
    pub fn applied_index(&self) -> Result<u64, StoreError> {
        crate::state_machine::read_applied_index(&self.tree)
    }

    /// Changes whenever a snapshot starts or finishes replacing the tables, and is odd while one
    /// does. A reader that reads many keys as one whole (the audit trail's verification: its head,
    /// then every entry under it) takes it before and after: a pass that began during an install,
    /// or saw one begin or end, read part of one state and part of another, and is no verdict on
    /// either (`StateReader::unchanged_since`).
    pub fn install_epoch(&self) -> u64 {
        self.stats.installs.load(Ordering::Acquire)
    }

    /// Whether the tables were left alone by snapshot installs from `install_epoch` returning
    /// `epoch` until now.
    pub fn unchanged_since(&self, epoch: u64) -> bool {
        epoch.is_multiple_of(2) && self.install_epoch() == epoch
    }

    /// Whether `key` is in a table the applier asked to watch (`Applier::watched_prefixes`).
    pub fn watches(&self, key: &[u8]) -> bool {
        self.watch.covers(key)
    }

    /// Moves whenever a watched table may have changed. A cache of watched values takes it
    /// *before* reading a value and keeps the value only while it has not moved since.
    pub fn watched_epoch(&self) -> u64 {
        self.watch.epoch.load(Ordering::Acquire)
    }

    /// Log and snapshot sizes, for the snapshot policy.
    pub fn snapshot_stats(&self) -> &SnapshotStats {
        &self.stats
    }
}
