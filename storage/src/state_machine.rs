//! The replicated state machine on sled. Application tables live in the `sm` tree; openraft's own
//! state (last applied log id, last membership) lives in the same tree under reserved keys, so that
//! the data of an `apply` call and its last-applied id are written in one atomic sled batch.
//!
//! What a command *means* is not decided here: the [`Applier`] given at open time (implemented in
//! `dtm-cluster`) turns each command into table changes inside a [`Txn`]. This keeps `storage` free
//! of domain logic and of any dependency on `cluster`.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use dtm_model::LogId;
use dtm_model::NodeId;
use dtm_model::SnapshotMeta;
use dtm_model::StoredMem;
use dtm_model::TypeConfig;
use dtm_model::pb;
use dtm_model::state::Command;
use dtm_model::state::CommandResponse;
use openraft::EntryPayload;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::StorageError;
use openraft::storage::RaftStateMachine;
use openraft::storage::Snapshot;
use prost::Message;

use crate::absence::AbsenceFilter;
use crate::crypto::Cipher;
use crate::error::StoreError;
use crate::error::sto;
use crate::limits::SNAPSHOT_BYTES_MAX;
use crate::log_store::LogStore;
use crate::sealed::SealedTree;
use crate::snapshot_body::Compressor;
use crate::snapshot_body::SNAPSHOT_FORMAT_VERSION;
use crate::snapshot_body::compress_body;
use crate::snapshot_body::for_each_pair;
use crate::snapshot_body::is_compressed;

/// Keys starting with this byte belong to the storage layer; application keys must not use it.
pub const RESERVED_PREFIX: u8 = 0x00;
const KEY_LAST_APPLIED: &[u8] = b"\x00meta/last_applied";
const KEY_MEMBERSHIP: &[u8] = b"\x00meta/membership";
/// Present while a snapshot from the leader replaces the tables (`install`).
pub(crate) const KEY_INSTALLING: &[u8] = b"\x00meta/installing";
/// Associated data of the sealed snapshot file.
const SNAPSHOT_FILE_AAD: &[u8] = b"dtm snapshot file";

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// The index of the last applied log entry recorded in `tree` (0 before the first).
pub(crate) fn read_applied_index(tree: &SealedTree) -> std::result::Result<u64, StoreError> {
    Ok(read_applied(tree)?.unwrap_or(0))
}

/// Decodes a `StoredSnapshot` and hands back its data in the buffer it came in (moved to the front),
/// instead of a copy of hundreds of MB.
fn split_stored_snapshot(mut plain: Vec<u8>) -> std::result::Result<(pb::SnapshotMeta, Vec<u8>), StoreError> {
    use prost::encoding::WireType;
    let (mut meta, mut data) = (None, None);
    let mut buf = plain.as_slice();
    while !buf.is_empty() {
        let (tag, wire) = prost::encoding::decode_key(&mut buf)?;
        match (tag, wire) {
            (1 | 2, WireType::LengthDelimited) => {
                let len = usize::try_from(prost::encoding::decode_varint(&mut buf)?).unwrap_or(usize::MAX);
                if len > buf.len() {
                    return Err(StoreError::Invalid("the snapshot file is truncated".into()));
                }
                if tag == 1 {
                    meta = Some(pb::SnapshotMeta::decode(&buf[..len])?);
                } else {
                    let start = plain.len() - buf.len();
                    data = Some(start..start + len);
                }
                buf = &buf[len..];
            }
            (tag, wire) => prost::encoding::skip_field(wire, tag, &mut buf, prost::encoding::DecodeContext::default())?,
        }
    }
    let meta = meta.ok_or_else(|| StoreError::Invalid("snapshot without meta".into()))?;
    match data {
        Some(r) => {
            plain.truncate(r.end);
            plain.drain(..r.start);
        }
        None => plain.clear(),
    }
    Ok((meta, plain))
}

/// The encoding of a `StoredSnapshot` up to its data: the meta, then the data field's key and
/// length. Followed by the data, it is the whole message.
fn stored_snapshot_prefix(meta: &SnapshotMeta, data_len: usize) -> Vec<u8> {
    use prost::encoding::WireType;
    let meta = dtm_model::snapshot_meta_to_pb(meta);
    let mut out = Vec::with_capacity(prost::encoding::message::encoded_len(1, &meta) + 16);
    prost::encoding::message::encode(1, &meta, &mut out);
    prost::encoding::encode_key(2, WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(data_len as u64, &mut out);
    out
}

/// The index of the last log entry applied to `tree`, if any.
pub(crate) fn read_applied(tree: &SealedTree) -> std::result::Result<Option<u64>, StoreError> {
    match tree.get(KEY_LAST_APPLIED)? {
        None => Ok(None),
        Some(v) => Ok(Some(pb::LogId::decode(v.as_ref())?.index)),
    }
}

/// Turns a replicated command into table changes. Implementations must be deterministic: the same
/// command on the same table contents gives the same changes and the same response on every node,
/// so they read no clock, no randomness and no configuration.
pub trait Applier: Send + Sync + 'static {
    fn apply(
        &self,
        txn: &mut Txn<'_>,
        log_id: &LogId,
        cmd: &Command,
    ) -> std::result::Result<CommandResponse, StoreError>;

    /// Called once the writes of an `apply` call have reached sled, with `write_lock` still held and
    /// the last log id applied. State the applier derives in memory (the aggregate view) publishes
    /// what it staged during `apply` here, so readers never see it ahead of or behind the tables.
    fn committed(&self, _last: &LogId) {}

    /// Called when the tables were replaced wholesale (a snapshot was installed) and when the store is
    /// opened: in-memory derived state must be rebuilt from `tables`.
    fn reset(&self, _tables: &crate::StateReader) -> std::result::Result<(), StoreError> {
        Ok(())
    }

    /// Key prefixes of tables whose lookups mostly miss (a new record's natural key, a new
    /// submission's idempotency key): the store keeps a filter of the keys under them so that a
    /// miss it can prove costs no sled lookup (`absence.rs`). Never changes what `apply` does.
    fn lookup_filtered_prefixes(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }

    /// Key prefixes of tables that readers cache (sources, keys, datasets): every `apply` that
    /// writes under one moves `StateReader::watched_epoch`, and so does every replacement of the
    /// tables.
    fn watched_prefixes(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }
}

/// Keys and what they become (`None`: removed), or what they were (pre-images).
type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A write transaction over the application tables: reads see the transaction's own writes; the
/// writes reach sled in one atomic batch together with the last-applied log id.
pub struct Txn<'a> {
    tree: &'a SealedTree,
    overlay: Overlay,
    /// Proves misses without sled; every key this transaction writes is noted in it first.
    absence: Option<&'a AbsenceFilter>,
}

impl<'a> Txn<'a> {
    #[cfg(test)]
    fn new(tree: &'a SealedTree) -> Self {
        Txn { tree, overlay: BTreeMap::new(), absence: None }
    }

    fn with_filter(tree: &'a SealedTree, absence: &'a AbsenceFilter) -> Self {
        Txn { tree, overlay: BTreeMap::new(), absence: Some(absence) }
    }

    pub fn get(&self, key: &[u8]) -> std::result::Result<Option<Vec<u8>>, StoreError> {
        if self.absence.is_some_and(|f| f.certainly_absent(key)) {
            return Ok(None);
        }
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        self.tree.get(key)
    }

    pub fn get_msg<M: Message + Default>(&self, key: &[u8]) -> std::result::Result<Option<M>, StoreError> {
        match self.get(key)? {
            None => Ok(None),
            Some(v) => Ok(Some(M::decode(v.as_slice())?)),
        }
    }

    /// The first `limit` pairs with `start <= key < end`, as this transaction sees them (its own
    /// writes and removals included), so that the result does not depend on how entries were grouped
    /// into `apply` calls.
    pub fn scan_range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> std::result::Result<Vec<crate::Pair>, StoreError> {
        let bounds = start.to_vec()..end.to_vec();
        let removed_here = self.overlay.range(bounds.clone()).filter(|(_, v)| v.is_none()).count();
        let mut merged = BTreeMap::new();
        for kv in self.tree.range(bounds.clone()).take(limit.saturating_add(removed_here)) {
            let (k, v) = kv?;
            merged.insert(k.to_vec(), v);
        }
        for (k, v) in self.overlay.range(bounds) {
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        debug_assert!(key.first() != Some(&RESERVED_PREFIX), "application key in the reserved range");
        if let Some(f) = self.absence {
            f.note(&key);
        }
        self.overlay.insert(key, Some(value));
    }

    pub fn put_msg<M: Message>(&mut self, key: Vec<u8>, value: &M) {
        self.put(key, value.encode_to_vec());
    }

    /// Appends `bytes` to the value under `key` (an empty value if there is none): a value built up
    /// piece by piece within one transaction (a block of records) is written once, at commit.
    pub fn append(&mut self, key: Vec<u8>, bytes: &[u8]) -> std::result::Result<(), StoreError> {
        self.append_with(key, |v| v.extend_from_slice(bytes))
    }

    /// `append`, with `write` adding to the value in place (no intermediate buffer).
    pub fn append_with(
        &mut self,
        key: Vec<u8>,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> std::result::Result<(), StoreError> {
        debug_assert!(key.first() != Some(&RESERVED_PREFIX), "application key in the reserved range");
        if let Some(f) = self.absence {
            f.note(&key);
        }
        let value = match self.overlay.get_mut(&key) {
            Some(Some(v)) => v,
            Some(None) => self.overlay.entry(key).or_default().insert(Vec::new()),
            None => {
                let stored = self.tree.get(&key)?.unwrap_or_default();
                self.overlay.entry(key).or_default().insert(stored)
            }
        };
        write(value);
        Ok(())
    }

    pub fn remove(&mut self, key: Vec<u8>) {
        self.overlay.insert(key, None);
    }

    fn into_overlay(self) -> Overlay {
        self.overlay
    }
}

struct Inner {
    db: sled::Db,
    /// The application tables and openraft's state, sealed (`crypto.rs`).
    tree: SealedTree,
    /// The current snapshot (meta and data) as a file of its own: a snapshot of a large state kept
    /// in sled would sit in sled's log in front of every later append's fsync.
    snapshot_file: std::path::PathBuf,
    applier: Arc<dyn Applier>,
    /// Held while a batch is written, and briefly when a snapshot begins and ends.
    write_lock: Mutex<()>,
    /// Held while the snapshot file is written, so re-encryption never puts an older snapshot back.
    snapshot_file_lock: Mutex<()>,
    /// Open while a snapshot copies the tables: the value each key had when the snapshot began, for
    /// every key changed since. Lets the copy run without holding `write_lock` (see `snapshot_begin`).
    preimages: Mutex<Option<Overlay>>,
    snapshot_seq: AtomicU64,
    /// Whether the snapshot file was checked against the tables yet (`check_snapshot`).
    snapshot_checked: AtomicBool,
    stats: Arc<crate::SnapshotStats>,
    /// The keys of the applier's miss-heavy tables (`absence.rs`).
    absence: AbsenceFilter,
    watch: Arc<crate::TableWatch>,
}

/// The state machine store. Cheap to clone.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

impl StateMachineStore {
    pub(crate) fn new(
        db: sled::Db,
        tree: SealedTree,
        snapshot_file: std::path::PathBuf,
        applier: Arc<dyn Applier>,
        stats: Arc<crate::SnapshotStats>,
        watch: Arc<crate::TableWatch>,
    ) -> std::result::Result<Self, StoreError> {
        let absence = AbsenceFilter::new(applier.lookup_filtered_prefixes());
        Ok(StateMachineStore {
            inner: Arc::new(Inner {
                absence,
                watch,
                db,
                tree,
                snapshot_file,
                applier,
                write_lock: Mutex::new(()),
                snapshot_file_lock: Mutex::new(()),
                preimages: Mutex::new(None),
                snapshot_seq: AtomicU64::new(0),
                snapshot_checked: AtomicBool::new(false),
                stats,
            }),
        })
    }

    fn read_applied(&self) -> std::result::Result<(Option<LogId>, StoredMem), StoreError> {
        let t = &self.inner.tree;
        let applied = match t.get(KEY_LAST_APPLIED)? {
            None => None,
            Some(v) => Some(dtm_model::log_id_from_pb(&pb::LogId::decode(v.as_ref())?)),
        };
        let membership = match t.get(KEY_MEMBERSHIP)? {
            None => StoredMem::default(),
            Some(v) => dtm_model::stored_membership_from_pb(pb::StoredMembership::decode(v.as_ref())?)?,
        };
        Ok((applied, membership))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // A poisoned lock only means another apply panicked mid-batch; sled batches are atomic, so
        // the tables are still consistent and the guard can be taken over.
        self.inner.write_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records, while a snapshot window is open, the current value of each key about to change.
    /// Called with `write_lock` held, before the change is written.
    fn record_preimages<'k>(&self, keys: impl Iterator<Item = &'k Vec<u8>>) -> std::result::Result<(), StoreError> {
        let mut window = self.inner.preimages.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pre) = window.as_mut() {
            for k in keys {
                if k.first() != Some(&RESERVED_PREFIX) && !pre.contains_key(k) {
                    pre.insert(k.clone(), self.inner.tree.get(k)?);
                }
            }
        }
        Ok(())
    }

    /// Starts a snapshot: notes the applied state and opens the pre-image window, holding
    /// `write_lock` only for that.
    fn snapshot_begin(&self) -> std::result::Result<(Option<LogId>, StoredMem), StoreError> {
        let _g = self.lock();
        let mut window = self.inner.preimages.lock().unwrap_or_else(|p| p.into_inner());
        if window.is_some() {
            return Err(StoreError::Invalid("a snapshot is already being built".into()));
        }
        *window = Some(BTreeMap::new());
        self.read_applied()
    }

    /// Hands the application tables as of `snapshot_begin` to `emit`, in key order, one pair at a
    /// time, without holding `write_lock`. A key read from the live tree is replaced by its
    /// pre-image when a write changed it after the snapshot began: `record_preimages` runs before
    /// the write reaches the tree, so looking after the read finds it whichever came first. A key
    /// removed before the walk reached it is handed over from its pre-image in its place, and one
    /// added after the snapshot began is left out.
    fn snapshot_stream(
        &self,
        mut emit: impl FnMut(Vec<u8>, Vec<u8>) -> std::result::Result<(), StoreError>,
    ) -> std::result::Result<(), StoreError> {
        use std::ops::Bound;
        let mut size = 0usize;
        let mut emit = |k: Vec<u8>, v: Vec<u8>| {
            size += k.len() + v.len();
            if size > SNAPSHOT_BYTES_MAX {
                return Err(StoreError::Invalid("state is larger than the snapshot limit".into()));
            }
            emit(k, v)
        };
        // Pre-images of keys after `after` and before `before` (bounds excluded) that existed when
        // the snapshot began, and this key's own pre-image if it has one.
        type Found = (Vec<crate::Pair>, Option<Option<Vec<u8>>>);
        let look = |after: Option<&[u8]>, before: Option<&[u8]>| -> std::result::Result<Found, StoreError> {
            let window = self.inner.preimages.lock().unwrap_or_else(|p| p.into_inner());
            let pre = window.as_ref().ok_or_else(|| StoreError::Invalid("the snapshot window was closed".into()))?;
            if pre.is_empty() {
                return Ok((Vec::new(), None));
            }
            let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
            let upper = before.map_or(Bound::Unbounded, Bound::Excluded);
            let removed = pre
                .range::<[u8], _>((lower, upper))
                .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())))
                .collect();
            Ok((removed, before.and_then(|k| pre.get(k).cloned())))
        };
        let mut last: Option<Vec<u8>> = None;
        for kv in self.inner.tree.iter() {
            let (k, v) = kv?;
            if k.first() == Some(&RESERVED_PREFIX) {
                continue;
            }
            if last.as_deref().is_some_and(|l| l >= k.as_ref()) {
                return Err(StoreError::Invalid("the tables were not walked in key order".into()));
            }
            let (removed, own) = look(last.as_deref(), Some(k.as_ref()))?;
            for (pk, pv) in removed {
                emit(pk, pv)?;
            }
            let k = k.to_vec();
            match own {
                None => emit(k.clone(), v)?,
                Some(Some(pv)) => emit(k.clone(), pv)?,
                Some(None) => {}
            }
            last = Some(k);
        }
        let (removed, _) = look(last.as_deref(), None)?;
        for (pk, pv) in removed {
            emit(pk, pv)?;
        }
        Ok(())
    }

    /// Closes the window once the tables were handed over.
    fn snapshot_end(&self) {
        let _g = self.lock();
        *self.inner.preimages.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The tables as of one applied index, handed to `emit` pair by pair (`snapshot_stream`), with
    /// that index and membership; the window is closed whatever the outcome.
    fn consistent_stream(
        &self,
        emit: impl FnMut(Vec<u8>, Vec<u8>) -> std::result::Result<(), StoreError>,
    ) -> std::result::Result<(Option<LogId>, StoredMem), StoreError> {
        let begun = self.snapshot_begin()?;
        let streamed = self.snapshot_stream(emit);
        self.snapshot_end();
        streamed.map(|()| begun)
    }

    fn build_snapshot_now(&self) -> std::result::Result<(SnapshotMeta, Vec<u8>), StoreError> {
        let started = std::time::Instant::now();
        // About the last snapshot's size (the file is the compressed data), so the buffer rarely
        // grows while the tables are compressed into it.
        let expected = usize::try_from(self.inner.stats.snapshot_bytes()).unwrap_or(0);
        let mut data = Compressor::new(expected.saturating_add(expected / 8))?;
        let (applied, membership) = self.consistent_stream(|k, v| data.push(k, v))?;
        let data = data.finish()?;
        let seq = self.inner.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match &applied {
            Some(l) => format!("{}-{}-{}-{seq}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => format!("0-0-0-{seq}"),
        };
        let meta = SnapshotMeta { last_log_id: applied, last_membership: membership, snapshot_id };
        tracing::info!(snapshot_id = %meta.snapshot_id, bytes = data.len(), ms = started.elapsed().as_millis() as u64, "copied tables for a snapshot");
        Ok((meta, data))
    }

    /// The application tables exactly as of one applied index, without stopping writes (the same
    /// copy-on-write window as a snapshot), for a backup. Fails with `Busy`-like `Invalid` when a
    /// snapshot is being built at the same moment; the caller retries.
    pub fn consistent_copy(&self) -> std::result::Result<(SnapshotMeta, Vec<crate::Pair>), StoreError> {
        let mut pairs = Vec::new();
        let (applied, membership) = self.consistent_stream(|k, v| {
            pairs.push((k, v));
            Ok(())
        })?;
        let snapshot_id = match &applied {
            Some(l) => format!("backup-{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => "backup-0-0-0".to_string(),
        };
        Ok((SnapshotMeta { last_log_id: applied, last_membership: membership, snapshot_id }, pairs))
    }

    /// Fills a fresh store with `pairs` as of `meta` (a restore): the tables, the applied log id,
    /// the membership, and the snapshot file, so that followers that join later receive it.
    pub fn restore(&self, meta: &SnapshotMeta, pairs: Vec<crate::Pair>) -> std::result::Result<(), StoreError> {
        if self.inner.tree.raw.iter().next().is_some() {
            return Err(StoreError::Invalid("a restore needs an empty store".into()));
        }
        // In bounded batches (one sled batch of millions of pairs takes sled minutes): the store is
        // new and unused, and it becomes a state only with the applied log id, written last. The
        // CLI restores into a directory of its own and renames it into place when this returns.
        let tree = &self.inner.tree;
        let mut batch = tree.batch();
        let mut in_batch = 0usize;
        for (k, v) in &pairs {
            if k.first() == Some(&RESERVED_PREFIX) {
                return Err(StoreError::Invalid("a backup carries a reserved key".into()));
            }
            batch.insert(k, v)?;
            in_batch += 1;
            if in_batch == crate::limits::RESTORE_BATCH_PAIRS {
                tree.apply_batch(std::mem::replace(&mut batch, tree.batch()))?;
                in_batch = 0;
            }
        }
        if let Some(l) = &meta.last_log_id {
            batch.insert(KEY_LAST_APPLIED, &dtm_model::log_id_to_pb(l).encode_to_vec())?;
        }
        batch.insert(KEY_MEMBERSHIP, &dtm_model::stored_membership_to_pb(&meta.last_membership).encode_to_vec())?;
        tree.apply_batch(batch)?;
        self.inner.absence.reset();
        self.inner.watch.bump();
        self.inner.applier.reset(&self.reader())?;
        // The snapshot file, so that nodes that join receive the state at once.
        self.inner.db.flush()?;
        self.store_snapshot(meta, &compress_body(pairs)?)?;
        Ok(())
    }

    /// Writes the current snapshot atomically: a temporary file, fsynced, renamed over the old one,
    /// and the directory fsynced, so a crash leaves either the old snapshot or the new.
    /// The file is sealed as a whole (`crypto.rs`); the snapshot sent to a follower is plaintext in
    /// memory and over mutual TLS, and the follower seals it with its own keys. Compressed data
    /// (`snapshot_body`) is sealed as it is; plain data (from an older leader) is compressed first.
    fn store_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> std::result::Result<u64, StoreError> {
        let prefix = stored_snapshot_prefix(meta, data.len());
        let cipher = &self.inner.tree.cipher;
        let sealed = match is_compressed(data) {
            true => cipher.seal_parts(SNAPSHOT_FILE_AAD, &[&prefix, data])?,
            false => cipher.seal_value_parts(SNAPSHOT_FILE_AAD, &[&prefix, data])?,
        };
        self.write_snapshot_file(&sealed)
    }

    /// `store_snapshot` for a snapshot that is not needed afterwards (one just installed): sealed
    /// in its own buffer, so it is in memory once.
    fn store_snapshot_owned(&self, meta: &SnapshotMeta, data: Vec<u8>) -> std::result::Result<u64, StoreError> {
        let prefix = stored_snapshot_prefix(meta, data.len());
        let cipher = &self.inner.tree.cipher;
        let sealed = match is_compressed(&data) {
            true => cipher.seal_owned(SNAPSHOT_FILE_AAD, &prefix, data)?,
            false => cipher.seal_value_owned(SNAPSHOT_FILE_AAD, &prefix, data)?,
        };
        self.write_snapshot_file(&sealed)
    }

    /// Writes the sealed snapshot file; answers its length (what the snapshot policy weighs).
    fn write_snapshot_file(&self, sealed: &[u8]) -> std::result::Result<u64, StoreError> {
        let _file = self.inner.snapshot_file_lock.lock().unwrap_or_else(|p| p.into_inner());
        crate::crypto::write_atomically(&self.inner.snapshot_file, sealed)?;
        Ok(sealed.len() as u64)
    }

    /// Re-encryption (after a key rotation): re-seals every value of the tables, of the Raft log
    /// (`log`) and the snapshot file that an older data key sealed, then retires the older keys if
    /// nothing sealed with them is left. Runs alongside writes (compare-and-swap per value; the
    /// snapshot file under its lock). Returns what it did.
    pub fn reencrypt(&self, log: &LogStore) -> std::result::Result<crate::ReencryptReport, StoreError> {
        let cipher = &self.inner.tree.cipher;
        let below = cipher.status().current_key_id;
        let (sm_resealed, sm_left) = self.inner.tree.reseal_below(below)?;
        let (log_resealed, log_left) = log.log.reseal_below(below)?;
        let mut snapshot_left = false;
        {
            let _file = self.inner.snapshot_file_lock.lock().unwrap_or_else(|p| p.into_inner());
            match std::fs::read(&self.inner.snapshot_file) {
                Ok(bytes) if Cipher::key_id_of(&bytes).is_some_and(|id| id < below) => {
                    let plain = cipher.open(SNAPSHOT_FILE_AAD, &bytes)?;
                    let sealed = cipher.seal_value(SNAPSHOT_FILE_AAD, &plain)?;
                    crate::crypto::write_atomically(&self.inner.snapshot_file, &sealed)?;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the snapshot file to re-encrypt it");
                    snapshot_left = true;
                }
            }
        }
        let left = sm_left + log_left + u64::from(snapshot_left);
        let retired = if left == 0 { cipher.retire_below(below)? } else { Vec::new() };
        Ok(crate::ReencryptReport { resealed: sm_resealed + log_resealed, left, retired })
    }

    /// Replaces the tables with a snapshot received from the leader. In bounded batches: one sled
    /// batch of a large state (millions of pairs, decoded whole, copied into the batch, then into
    /// sled's pages) took a node past 12 GB of memory for a 280 MB snapshot. The snapshot is
    /// checked whole before anything changes; `KEY_INSTALLING` marks the tables as incomplete until
    /// the last batch writes the applied log id, so a node stopped halfway is reset at its next
    /// start (`LogStore::check_start`) and catches up again, never serving half a state as whole.
    /// Reads at default consistency on this node can see part of the snapshot while it installs;
    /// linearizable reads wait for it.
    fn install(&self, meta: &SnapshotMeta, data: &[u8]) -> std::result::Result<(), StoreError> {
        let format = for_each_pair(data, |p| {
            if p.key.first() == Some(&RESERVED_PREFIX) {
                return Err(StoreError::Invalid("snapshot carries a reserved key".into()));
            }
            Ok(())
        })?;
        if format != SNAPSHOT_FORMAT_VERSION {
            return Err(StoreError::Invalid(format!("snapshot format {format} is not supported")));
        }
        let _g = self.lock();
        let _installing = self.inner.stats.installing();
        self.inner.absence.reset();
        self.inner.watch.bump();
        let tree = &self.inner.tree;
        let mut mark = tree.batch();
        mark.insert(KEY_INSTALLING, meta.snapshot_id.as_bytes())?;
        mark.remove(KEY_LAST_APPLIED);
        tree.apply_batch(mark)?;
        self.inner.db.flush()?;
        // The old tables out, then the snapshot's in, each in bounded batches.
        tree.remove_all_but(Some(KEY_INSTALLING), |keys| self.record_preimages(keys.iter()))?;
        let mut chunk: Vec<pb::SnapshotPair> = Vec::with_capacity(crate::limits::RESTORE_BATCH_PAIRS);
        let write = |chunk: &mut Vec<pb::SnapshotPair>| -> std::result::Result<(), StoreError> {
            self.record_preimages(chunk.iter().map(|p| &p.key))?;
            let mut batch = tree.batch();
            for p in chunk.drain(..) {
                batch.insert(&p.key, &p.value)?;
            }
            tree.apply_batch(batch)
        };
        for_each_pair(data, |p| {
            chunk.push(p);
            if chunk.len() == crate::limits::RESTORE_BATCH_PAIRS {
                write(&mut chunk)?;
            }
            Ok(())
        })?;
        write(&mut chunk)?;
        let mut done = tree.batch();
        if let Some(l) = &meta.last_log_id {
            done.insert(KEY_LAST_APPLIED, &dtm_model::log_id_to_pb(l).encode_to_vec())?;
        }
        done.insert(KEY_MEMBERSHIP, &dtm_model::stored_membership_to_pb(&meta.last_membership).encode_to_vec())?;
        done.remove(KEY_INSTALLING);
        tree.apply_batch(done)?;
        self.inner.absence.reset();
        self.inner.watch.bump();
        self.inner.applier.reset(&self.reader())?;
        Ok(())
    }

    /// The first time the snapshot file is read (openraft does it while the node starts, after it
    /// re-applied the committed log): the store must have applied at least up to the snapshot, which
    /// it made durable before writing the file. Less means `store/db` went back in time — sled can
    /// open a damaged file and hand back an older state — and the node must not serve it.
    fn check_snapshot(&self, meta: &SnapshotMeta) -> std::result::Result<(), StoreError> {
        let (applied, _) = self.read_applied()?;
        let (snapshot_index, applied_index) = (meta.last_log_id.map(|l| l.index), applied.map(|l| l.index));
        if snapshot_index > applied_index {
            let dir = self.inner.snapshot_file.parent().unwrap_or(std::path::Path::new("."));
            return Err(StoreError::Invalid(format!(
                "{} is older than {} (applied index {} < snapshot index {}): the store went back in \
                 time (a damaged file?) and is not served; remove the node's data directory and start \
                 it again to recover from its peers",
                dir.join("db").display(),
                self.inner.snapshot_file.display(),
                applied_index.unwrap_or(0),
                snapshot_index.unwrap_or(0),
            )));
        }
        Ok(())
    }

    /// A read view of the same tables.
    pub(crate) fn reader(&self) -> crate::StateReader {
        crate::StateReader {
            tree: self.inner.tree.clone(),
            stats: self.inner.stats.clone(),
            watch: self.inner.watch.clone(),
        }
    }

    /// What the lookup filter holds (`absence.rs`).
    pub fn lookup_filter(&self) -> crate::AbsenceStats {
        self.inner.absence.stats()
    }

    /// The data keys (for rotation and status).
    pub fn cipher(&self) -> &crate::crypto::Cipher {
        &self.inner.tree.cipher
    }

    /// Every node flushes after install so that the log can be purged behind the snapshot.
    async fn flush(&self) -> std::result::Result<(), StoreError> {
        self.inner.db.flush_async().await?;
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        // Copying the tables takes seconds on a large state: keep it off the async workers.
        let this = self.clone();
        let built = tokio::task::spawn_blocking(move || {
            let (meta, data) = this.build_snapshot_now()?;
            // The tables and `committed` up to the snapshot's index are made durable before the file
            // says the snapshot exists, so the file is never ahead of the store (see `check_snapshot`).
            this.inner.db.flush()?;
            let stored = this.store_snapshot(&meta, &data)?;
            this.inner.stats.snapshot_taken(stored);
            Ok::<_, StoreError>((meta, data))
        })
        .await
        .map_err(|e| {
            sto(ErrorSubject::Snapshot(None), ErrorVerb::Read, StoreError::Invalid(format!("snapshot task: {e}")))
        })?;
        let (meta, data) = built.map_err(|e| sto(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        self.flush().await.map_err(|e| sto(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write, e))?;
        tracing::info!(snapshot_id = %meta.snapshot_id, bytes = data.len(), "built snapshot");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMem)> {
        self.read_applied().map_err(|e| sto(ErrorSubject::StateMachine, ErrorVerb::Read, e))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>>
    where
        I: IntoIterator<Item = dtm_model::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let tree = self.inner.tree.clone();
        let mut txn = Txn::with_filter(&tree, &self.inner.absence);
        let mut replies = Vec::new();
        let mut last: Option<LogId> = None;
        let mut membership: Option<StoredMem> = None;
        for entry in entries {
            let reply = match &entry.payload {
                EntryPayload::Blank => CommandResponse {
                    result: Some(dtm_model::state::command_response::Result::Applied(Default::default())),
                },
                EntryPayload::Normal(cmd) => self
                    .inner
                    .applier
                    .apply(&mut txn, &entry.log_id, cmd)
                    .map_err(|e| sto(ErrorSubject::Apply(entry.log_id), ErrorVerb::Write, e))?,
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMem::new(Some(entry.log_id), m.clone()));
                    CommandResponse {
                        result: Some(dtm_model::state::command_response::Result::Applied(Default::default())),
                    }
                }
            };
            last = Some(entry.log_id);
            replies.push(reply);
        }
        let overlay = txn.into_overlay();
        let watched = self.inner.watch.touched_by(&overlay);
        {
            let _g = self.lock();
            // Pre-images first (only while a snapshot window is open), then the writes themselves,
            // moved into the batch without copying.
            self.record_preimages(overlay.keys()).map_err(|e| sto(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
            let w = |e| sto(ErrorSubject::StateMachine, ErrorVerb::Write, e);
            let mut batch = tree.batch();
            for (k, v) in overlay {
                match v {
                    Some(v) => {
                        batch.insert(&k, &v).map_err(w)?;
                    }
                    None => batch.remove(k),
                }
            }
            if let Some(l) = &last {
                batch.insert(KEY_LAST_APPLIED, &dtm_model::log_id_to_pb(l).encode_to_vec()).map_err(w)?;
            }
            if let Some(m) = &membership {
                batch.insert(KEY_MEMBERSHIP, &dtm_model::stored_membership_to_pb(m).encode_to_vec()).map_err(w)?;
            }
            tree.apply_batch(batch).map_err(w)?;
            if watched {
                self.inner.watch.bump();
            }
            if let Some(l) = &last {
                self.inner.applier.committed(l);
            }
        }
        self.inner.absence.advance(&tree.raw);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<Cursor<Vec<u8>>>) -> Result<()> {
        let data = snapshot.into_inner();
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        // Replacing the tables takes seconds on a large state: keep it off the async workers.
        let (this, meta_copy, bytes) = (self.clone(), meta.clone(), data.len());
        tokio::task::spawn_blocking(move || {
            this.install(&meta_copy, &data)?;
            this.inner.db.flush()?;
            let stored = this.store_snapshot_owned(&meta_copy, data)?;
            this.inner.stats.snapshot_taken(stored);
            Ok::<_, StoreError>(())
        })
        .await
        .map_err(|e| sto(subject(), ErrorVerb::Write, StoreError::Invalid(format!("install task: {e}"))))?
        .map_err(|e| sto(subject(), ErrorVerb::Write, e))?;
        self.flush().await.map_err(|e| sto(subject(), ErrorVerb::Write, e))?;
        tracing::info!(snapshot_id = %meta.snapshot_id, bytes, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let bytes = match tokio::fs::read(&self.inner.snapshot_file).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(sto(ErrorSubject::Snapshot(None), ErrorVerb::Read, e)),
        };
        let file = self.inner.snapshot_file.display().to_string();
        let plain = self.inner.tree.cipher.open_owned(SNAPSHOT_FILE_AAD, bytes).map_err(|e| {
            sto(ErrorSubject::Snapshot(None), ErrorVerb::Read, StoreError::Invalid(format!("{file}: {e}")))
        })?;
        let (meta_pb, data) = split_stored_snapshot(plain).map_err(|e| {
            sto(ErrorSubject::Snapshot(None), ErrorVerb::Read, StoreError::Invalid(format!("{file}: {e}")))
        })?;
        let meta = dtm_model::snapshot_meta_from_pb(meta_pb)
            .map_err(|e| sto(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        if !self.inner.snapshot_checked.swap(true, Ordering::Relaxed) {
            self.check_snapshot(&meta).map_err(|e| sto(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        }
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test applier: `RegisterSource{id, name}` puts `id = name`, or removes `id` when `name` is
    /// empty.
    struct KvApplier;

    impl Applier for KvApplier {
        fn apply(
            &self,
            txn: &mut Txn<'_>,
            _log_id: &LogId,
            cmd: &Command,
        ) -> std::result::Result<CommandResponse, StoreError> {
            if let Some(dtm_model::state::command::Kind::RegisterSource(r)) = &cmd.kind {
                let s = r.source.clone().unwrap_or_default();
                if s.name.is_empty() {
                    txn.remove(s.id.into_bytes())
                } else {
                    txn.put(s.id.into_bytes(), s.name.into_bytes())
                }
            }
            Ok(CommandResponse::default())
        }
    }

    /// `KvApplier` that also says whether each key it writes was there (`Rejected("found")`), with
    /// its `t/` table behind the lookup filter (`absence.rs`).
    struct ProbingApplier;

    impl Applier for ProbingApplier {
        fn apply(
            &self,
            txn: &mut Txn<'_>,
            log_id: &LogId,
            cmd: &Command,
        ) -> std::result::Result<CommandResponse, StoreError> {
            let Some(dtm_model::state::command::Kind::RegisterSource(r)) = &cmd.kind else {
                return Ok(CommandResponse::default());
            };
            let found = txn.get(r.source.as_ref().map_or("", |s| s.id.as_str()).as_bytes())?.is_some();
            KvApplier.apply(txn, log_id, cmd)?;
            let result = match found {
                true => dtm_model::state::command_response::Result::Rejected(dtm_model::state::Rejected {
                    code: "found".into(),
                    message: String::new(),
                }),
                false => dtm_model::state::command_response::Result::Applied(Default::default()),
            };
            Ok(CommandResponse { result: Some(result) })
        }

        fn lookup_filtered_prefixes(&self) -> Vec<Vec<u8>> {
            vec![b"t/".to_vec()]
        }

        fn watched_prefixes(&self) -> Vec<Vec<u8>> {
            vec![b"w/".to_vec()]
        }
    }

    /// The watched epoch moves after every `apply` that wrote a watched table, and around a
    /// snapshot install, and at no other time; the values read after it moved are the new ones.
    #[tokio::test]
    async fn the_watched_epoch_moves_when_a_watched_table_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_log, mut sm, reader) =
            crate::open(dir.path(), &crate::StoreOptions::for_tests(), Arc::new(ProbingApplier)).expect("open");
        assert!(reader.watches(b"w/a") && !reader.watches(b"t/a"));
        let e0 = reader.watched_epoch();
        probe(&mut sm, 1, &["t/a".to_string(), "t/b".to_string()]).await;
        assert_eq!(reader.watched_epoch(), e0, "no watched table written");
        probe(&mut sm, 3, &["t/c".to_string(), "w/a".to_string()]).await;
        let e1 = reader.watched_epoch();
        assert!(e1 > e0, "a watched table written");
        assert_eq!(reader.get(b"w/a").expect("read").as_deref(), Some(&b"v"[..]));
        let body = pb::SnapshotBody {
            format_version: SNAPSHOT_FORMAT_VERSION,
            pairs: vec![pb::SnapshotPair { key: b"w/a".to_vec(), value: b"from the snapshot".to_vec() }],
        };
        let meta = SnapshotMeta {
            last_log_id: Some(kv(9, "t/x", "1").log_id),
            last_membership: StoredMem::default(),
            snapshot_id: "watch-1".into(),
        };
        sm.install_snapshot(&meta, Box::new(Cursor::new(body.encode_to_vec()))).await.expect("install");
        assert!(reader.watched_epoch() > e1, "the tables were replaced");
        assert_eq!(reader.get(b"w/a").expect("read").as_deref(), Some(&b"from the snapshot"[..]));
    }

    /// Whether `ProbingApplier` found each key, in order.
    async fn probe(sm: &mut StateMachineStore, first_index: u64, keys: &[String]) -> Vec<bool> {
        let entries = keys.iter().enumerate().map(|(i, k)| kv(first_index + i as u64, k, "v")).collect::<Vec<_>>();
        let replies = sm.apply(entries).await.expect("apply");
        replies
            .iter()
            .map(|r| matches!(r.result, Some(dtm_model::state::command_response::Result::Rejected(_))))
            .collect()
    }

    /// The lookup filter changes no answer of `apply`: keys written earlier, earlier in the same
    /// call, by a snapshot install, or before the store was reopened are all found, before and
    /// after the filter is built; and once built, it does answer the misses.
    #[tokio::test]
    async fn the_lookup_filter_never_hides_a_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = crate::StoreOptions::for_tests();
        let keys = |tag: &str, n: usize| (0..n).map(|i| format!("t/{tag}{i:05}")).collect::<Vec<_>>();
        let mut index = 1;
        {
            let (_log, mut sm, _reader) = crate::open(dir.path(), &opts, Arc::new(ProbingApplier)).expect("open");
            for chunk in keys("a", 3_000).chunks(100) {
                assert!(probe(&mut sm, index, chunk).await.iter().all(|f| !f), "new keys are missing");
                index += chunk.len() as u64;
            }
            let stats = sm.lookup_filter();
            assert!(stats.serving && stats.builds_completed == 1, "{stats:?}");
            assert!(stats.misses_proved > 0, "the built filter answers misses: {stats:?}");
            for chunk in keys("a", 3_000).chunks(500) {
                assert!(probe(&mut sm, index, chunk).await.iter().all(|f| *f), "written keys are found");
                index += chunk.len() as u64;
            }
            let twice = vec!["t/b1".to_string(), "t/b1".to_string()];
            assert_eq!(probe(&mut sm, index, &twice).await, [false, true], "a key written earlier in the call");
            index += 2;

            // A snapshot replaces the tables with keys the filter never saw.
            let body = pb::SnapshotBody {
                format_version: SNAPSHOT_FORMAT_VERSION,
                pairs: keys("s", 2_000)
                    .into_iter()
                    .map(|k| pb::SnapshotPair { key: k.into_bytes(), value: b"v".to_vec() })
                    .collect(),
            };
            let meta = SnapshotMeta {
                last_log_id: Some(kv(index, "t/x", "1").log_id),
                last_membership: StoredMem::default(),
                snapshot_id: "probe-1".into(),
            };
            sm.install_snapshot(&meta, Box::new(Cursor::new(body.encode_to_vec()))).await.expect("install");
            index += 1;
            assert!(!sm.lookup_filter().serving, "nothing is proved about the new tables before a build");
            let probes = [keys("s", 2_000)[1_234].clone(), "t/a00007".to_string()];
            assert_eq!(probe(&mut sm, index, &probes).await, [true, false], "installed found, replaced gone");
            index += 2;
            let mut rounds = 0;
            while !sm.lookup_filter().serving {
                probe(&mut sm, index, &[format!("t/c{index}")]).await;
                index += 1;
                rounds += 1;
                assert!(rounds < 10_000, "the build ends");
            }
            assert!(probe(&mut sm, index, &keys("s", 2_000)).await.iter().all(|f| *f), "after the build too");
            index += 2_000;
        }
        let (_log, mut sm, _reader) = crate::reopen(dir.path(), &opts, Arc::new(ProbingApplier)).await.expect("reopen");
        assert!(!sm.lookup_filter().serving);
        assert_eq!(probe(&mut sm, index, &["t/s00007".to_string(), "t/d0".to_string()]).await, [true, false]);
    }

    fn kv(index: u64, key: &str, value: &str) -> dtm_model::Entry {
        let source = dtm_model::state::Source { id: key.into(), name: value.into(), ..Default::default() };
        let kind = dtm_model::state::command::Kind::RegisterSource(dtm_model::state::RegisterSource {
            source: Some(source),
            first_key: None,
        });
        openraft::Entry {
            log_id: openraft::LogId::new(openraft::LeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command { kind: Some(kind), ..Default::default() }),
        }
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<crate::Pair> {
        p.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
    }

    /// A write as `apply` makes it: pre-image first (while a window is open), then the tree.
    fn write_now(sm: &StateMachineStore, key: &str, value: Option<&str>) {
        let _g = sm.lock();
        let k = key.as_bytes().to_vec();
        sm.record_preimages(std::iter::once(&k)).expect("pre-image");
        let mut batch = sm.inner.tree.batch();
        match value {
            Some(v) => {
                batch.insert(&k, v.as_bytes()).expect("insert");
            }
            None => batch.remove(k.clone()),
        }
        sm.inner.tree.apply_batch(batch).expect("write");
    }

    /// The tables are handed over pair by pair as they were when the snapshot began, whatever is
    /// written while they are walked: keys changed, removed or added behind the walk, ahead of
    /// it, and at its end.
    #[tokio::test]
    async fn a_snapshot_is_the_state_at_its_start_whatever_is_written_meanwhile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_log, mut sm, _reader) =
            crate::open(dir.path(), &crate::StoreOptions::for_tests(), Arc::new(KvApplier)).expect("open");
        sm.apply(vec![kv(1, "t/a", "1"), kv(2, "t/b", "2"), kv(3, "t/c", "3"), kv(4, "t/d", "4")])
            .await
            .expect("apply");

        let mut seen = Vec::new();
        let (applied, _) = sm
            .consistent_stream(|k, v| {
                match k.as_slice() {
                    b"t/a" => {
                        write_now(&sm, "t/a", Some("changed")); // behind the walk
                        write_now(&sm, "t/0", Some("added")); // added behind
                        write_now(&sm, "t/b", None); // removed ahead
                        write_now(&sm, "t/c", Some("changed")); // changed ahead
                        write_now(&sm, "t/bb", Some("added")); // added ahead
                    }
                    b"t/c" => {
                        write_now(&sm, "t/d", None); // the last key, removed
                        write_now(&sm, "t/d", Some("back")); // and put back
                        write_now(&sm, "t/e", Some("added")); // added after the end
                        write_now(&sm, "t/c", None); // removed once read
                    }
                    _ => {}
                }
                seen.push((k, v));
                Ok(())
            })
            .expect("stream");
        assert_eq!(applied.map(|l| l.index), Some(4));
        assert_eq!(seen, pairs(&[("t/a", "1"), ("t/b", "2"), ("t/c", "3"), ("t/d", "4")]));

        // The window is closed: the live tables moved on, and the next copy sees them.
        sm.apply(vec![kv(9, "t/f", "6")]).await.expect("apply");
        let (meta, copy) = sm.consistent_copy().expect("copy");
        assert_eq!(meta.last_log_id.map(|l| l.index), Some(9));
        let want = pairs(&[
            ("t/0", "added"),
            ("t/a", "changed"),
            ("t/bb", "added"),
            ("t/d", "back"),
            ("t/e", "added"),
            ("t/f", "6"),
        ]);
        assert_eq!(copy, want);

        // A walk that fails closes the window too: the next one begins.
        let failed = sm.consistent_stream(|_, _| Err(StoreError::Invalid("stop".into())));
        assert!(failed.is_err());
        assert_eq!(sm.consistent_copy().expect("copy after a failure").1, want);
    }

    /// P7 (issue 4): a store whose tables went back behind its snapshot file (sled can open a
    /// damaged `store/db` and hand back an older state) is refused when the node starts, naming
    /// the files, instead of being served; an intact store opens with its snapshot.
    #[tokio::test]
    async fn a_store_behind_its_snapshot_file_is_refused_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = crate::StoreOptions::for_tests();
        {
            let (_log, mut sm, _reader) = crate::open(dir.path(), &opts, Arc::new(KvApplier)).expect("open");
            sm.apply(vec![kv(1, "t/a", "1"), kv(2, "t/b", "2"), kv(3, "t/c", "3")]).await.expect("apply");
            let mut builder = sm.get_snapshot_builder().await;
            let snap = openraft::RaftSnapshotBuilder::build_snapshot(&mut builder).await.expect("snapshot");
            assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(3));
        }
        {
            let (_log, mut sm, _reader) = crate::reopen(dir.path(), &opts, Arc::new(KvApplier)).await.expect("reopen");
            let snap = sm.get_current_snapshot().await.expect("an intact store opens").expect("its snapshot");
            assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(3));
            // Now the tables go back to index 1, as a rolled-back store/db would hold them.
            let mut batch = sm.inner.tree.batch();
            let old = dtm_model::log_id_to_pb(&openraft::LogId::new(openraft::LeaderId::new(1, 1), 1));
            batch.insert(KEY_LAST_APPLIED, &old.encode_to_vec()).expect("batch");
            sm.inner.tree.apply_batch(batch).expect("write");
            sm.inner.db.flush().expect("flush");
        }
        let (_log, mut sm, _reader) = crate::reopen(dir.path(), &opts, Arc::new(KvApplier)).await.expect("reopen");
        let err = sm.get_current_snapshot().await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("went back in time") && err.contains("applied index 1 < snapshot index 3"), "{err}");
        assert!(err.contains(&dir.path().join("db").display().to_string()), "names the store: {err}");
        assert!(err.contains("raft-snapshot.pb"), "names the snapshot file: {err}");
    }

    /// A1.3 (found by the 5 s chaos soaks): openraft purges the log a snapshot covers, and takes
    /// the leader's next entries, before the state machine has installed the snapshot. A node
    /// killed in between held a purged log over an older state, and openraft stopped on it at
    /// every start. Without log entries such a store is reset at start (marks, tables, snapshot
    /// file; the vote stays), so the node catches up from the leader; with entries it is refused.
    /// Issue 2 (the log is purged after a snapshot): `purge` returns once the mark is written and
    /// the entries go in the background, in bounded batches, so a large purge never holds the
    /// Raft core. Purged entries are never read again, whether or not they are deleted yet; a
    /// purge past the last entry leaves the log empty at the mark; a restart deletes what a stop
    /// left behind and keeps the rest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn purged_entries_are_never_read_again_and_go_in_the_background_or_at_restart() {
        use openraft::RaftLogReader;
        use openraft::storage::RaftLogStorage;
        let write = |log: &crate::LogStore, range: std::ops::RangeInclusive<u64>| {
            let mut batch = log.log.batch();
            for index in range {
                batch.insert(&index.to_be_bytes(), &dtm_model::encode_entry(&kv(index, "t/x", "1"))).expect("insert");
            }
            log.log.apply_batch(batch).expect("write");
            log.db.flush().expect("flush");
        };
        let left_below = |log: &crate::LogStore, index: u64| log.log.raw.range(..index.to_be_bytes()).count();
        let entries = 3 * crate::limits::PURGE_BATCH_ENTRIES as u64;
        let opts = crate::StoreOptions::for_tests();
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut log, mut sm, _reader) = crate::open(dir.path(), &opts, Arc::new(KvApplier)).expect("open");
            // The state machine has applied the whole log, so a restart may continue from it.
            sm.apply(vec![kv(entries, "t/a", "1")]).await.expect("apply");
            write(&log, 1..=entries);
            let upto = kv(entries / 2, "t/x", "1").log_id;
            log.purge(upto).await.expect("purge");
            let state = log.get_log_state().await.expect("state");
            assert_eq!((state.last_purged_log_id, state.last_log_id.map(|l| l.index)), (Some(upto), Some(entries)));
            let read = log.try_get_log_entries(0..=entries).await.expect("read");
            assert_eq!(read.first().map(|e| e.log_id.index), Some(upto.index + 1), "nothing at or below the mark");
            assert_eq!(read.len() as u64, entries - upto.index);
            let sent = log.limited_get_log_entries(1, upto.index + 3).await.expect("read");
            assert_eq!(sent.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), [upto.index + 1, upto.index + 2]);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while left_below(&log, upto.index + 1) > 0 {
                assert!(std::time::Instant::now() < deadline, "the purged entries were not deleted");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert_eq!(log.log.raw.len() as u64, entries - upto.index, "the entries after the mark stay");
            // As if the node stopped before the deletion: entries below the mark are back.
            write(&log, 1..=10);
        }
        let (mut log, _sm, _reader) = crate::reopen(dir.path(), &opts, Arc::new(KvApplier)).await.expect("reopen");
        assert_eq!(left_below(&log, entries / 2 + 1), 0, "a restart deletes what a stop left");
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id.map(|l| l.index), Some(entries), "and keeps the log after the mark");
        // A purge past the last entry (a snapshot from the leader): the log is empty at the mark.
        let past = kv(entries + 100, "t/x", "1").log_id;
        log.purge(past).await.expect("purge");
        let state = log.get_log_state().await.expect("state");
        assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(past), Some(past)));
        assert!(log.try_get_log_entries(0..).await.expect("read").is_empty());
    }

    #[tokio::test]
    async fn a_log_the_state_machine_cannot_continue_from_is_reset_at_start() {
        async fn reopened_empty(dir: std::path::PathBuf, opts: &crate::StoreOptions) {
            let (mut log, mut sm, reader) = crate::reopen(&dir, opts, Arc::new(KvApplier)).await.expect("reopen");
            let state = openraft::storage::RaftLogStorage::get_log_state(&mut log).await.expect("state");
            assert_eq!((state.last_log_id, state.last_purged_log_id), (None, None), "the log is reset");
            assert_eq!(sm.applied_state().await.expect("applied").0, None, "the tables are reset");
            assert_eq!(reader.get(b"t/a").expect("read"), None);
            assert!(!dir.join("raft-snapshot.pb").exists(), "the snapshot file is removed");
            let kept = openraft::storage::RaftLogStorage::read_vote(&mut log).await.expect("vote");
            assert_eq!(kept, Some(openraft::Vote::new_committed(3, 1)), "the vote is kept");
            assert!(log.catching_up(), "a reset node does not vote until it has caught up");
        }
        let write = |log: &crate::LogStore, from: u64| {
            let mut batch = log.log.batch();
            for index in from..8u64 {
                let entry = kv(index, "t/x", "1");
                batch.insert(&index.to_be_bytes(), &dtm_model::encode_entry(&entry)).expect("insert");
            }
            log.log.apply_batch(batch).expect("write");
            log.db.flush().expect("flush");
        };
        let opts = crate::StoreOptions::for_tests();
        let vote = openraft::Vote::new_committed(3, 1);
        // Entries after a gap (over an empty state machine, or an older state), or entries under a
        // half-installed snapshot: entries the node may have acknowledged are not dropped unasked;
        // the store is refused, naming the fix.
        for (applied, from, half_installed) in [(false, 5, false), (true, 5, false), (false, 0, true)] {
            let dir = tempfile::tempdir().expect("tempdir");
            {
                let (log, mut sm, _reader) = crate::open(dir.path(), &opts, Arc::new(KvApplier)).expect("open");
                if applied {
                    sm.apply(vec![kv(1, "t/a", "1")]).await.expect("apply");
                }
                if half_installed {
                    let mut batch = sm.inner.tree.batch();
                    batch.insert(KEY_INSTALLING, b"test").expect("mark");
                    sm.inner.tree.apply_batch(batch).expect("write");
                }
                write(&log, from);
            }
            let err = crate::reopen(dir.path(), &opts, Arc::new(KvApplier)).await.err().map(|e| e.to_string());
            let err = err.unwrap_or_default();
            let first = format!("first entry Some({from})");
            assert!(err.contains(&first) && err.contains("wipe its data directory"), "{err}");
        }
        // The purge durable, the state behind it (applied 1, purged up to 4), with a snapshot file,
        // and no entries left: reset.
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut log, mut sm, _reader) = crate::open(dir.path(), &opts, Arc::new(KvApplier)).expect("open");
            openraft::storage::RaftLogStorage::save_vote(&mut log, &vote).await.expect("vote");
            sm.apply(vec![kv(1, "t/a", "1")]).await.expect("apply");
            let _ = RaftSnapshotBuilder::build_snapshot(&mut sm).await.expect("snapshot");
            assert!(dir.path().join("raft-snapshot.pb").exists());
            write(&log, 2);
            let upto = kv(7, "t/x", "1").log_id;
            openraft::storage::RaftLogStorage::purge(&mut log, upto).await.expect("purge");
        }
        reopened_empty(dir.path().to_path_buf(), &opts).await;
        // A consistent store is left alone.
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (log, mut sm, _reader) = crate::open(dir.path(), &opts, Arc::new(KvApplier)).expect("open");
            // Without the mark, as a store written before the mark existed.
            log.bootstrapped().expect("unmark");
            write(&log, 0);
            sm.apply(vec![kv(0, "t/a", "1"), kv(1, "t/b", "1")]).await.expect("apply");
        }
        let (mut log, mut sm, _reader) = crate::reopen(dir.path(), &opts, Arc::new(KvApplier)).await.expect("reopen");
        let state = openraft::storage::RaftLogStorage::get_log_state(&mut log).await.expect("state");
        assert_eq!(state.last_log_id.map(|l| l.index), Some(7));
        assert_eq!(sm.applied_state().await.expect("applied").0.map(|l| l.index), Some(1));
        assert!(!log.catching_up(), "a consistent store is not marked at start");
    }

    /// The snapshot file's message, written without prost's intermediate copies, is prost's
    /// encoding, and splits back into the same meta and data (the body's own encoding is tested in
    /// `snapshot_body`).
    #[test]
    fn the_stored_snapshot_built_in_place_is_prosts_encoding() {
        let body = compress_body(vec![(b"t/a".to_vec(), vec![1; 300])]).expect("body");
        let model_meta = SnapshotMeta {
            last_log_id: Some(kv(9, "t/a", "1").log_id),
            last_membership: StoredMem::default(),
            snapshot_id: "1-1-9-0".into(),
        };
        let meta = dtm_model::snapshot_meta_to_pb(&model_meta);
        let stored = pb::StoredSnapshot { meta: Some(meta.clone()), data: body.clone() }.encode_to_vec();
        let mut built = stored_snapshot_prefix(&model_meta, body.len());
        built.extend_from_slice(&body);
        assert_eq!(built, stored, "prefix and data are the message");
        let (m, data) = split_stored_snapshot(stored).expect("split");
        assert_eq!((m, data), (meta.clone(), body));
        let empty = pb::StoredSnapshot { meta: Some(meta.clone()), data: Vec::new() }.encode_to_vec();
        assert_eq!(split_stored_snapshot(empty).expect("split"), (meta.clone(), Vec::new()));
        let mut cut = pb::StoredSnapshot { meta: Some(meta), data: vec![7; 50] }.encode_to_vec();
        cut.truncate(cut.len() - 1);
        assert!(split_stored_snapshot(cut).is_err(), "a truncated file is an error");
        assert!(split_stored_snapshot(pb::StoredSnapshot::default().encode_to_vec()).is_err(), "no meta");
    }

    /// A store that keeps its snapshot knows its size after a restart, so the snapshot policy
    /// (which compares the log written since with it) does not copy the whole state again as soon
    /// as a few entries came in.
    #[tokio::test]
    async fn a_restarted_store_knows_the_size_of_its_snapshot() {
        let opts = crate::StoreOptions::for_tests();
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (_log, mut sm, reader) = crate::open(dir.path(), &opts, Arc::new(KvApplier)).expect("open");
            assert_eq!(reader.snapshot_stats().snapshot_bytes(), 0, "no snapshot yet");
            sm.apply(vec![kv(0, "t/a", "1"), kv(1, "t/b", "2")]).await.expect("apply");
            let _ = RaftSnapshotBuilder::build_snapshot(&mut sm).await.expect("snapshot");
        }
        let (_log, _sm, reader) = crate::reopen(dir.path(), &opts, Arc::new(KvApplier)).await.expect("reopen");
        let file = std::fs::metadata(dir.path().join("raft-snapshot.pb")).expect("file").len();
        assert!(file > 0);
        assert_eq!(reader.snapshot_stats().snapshot_bytes(), file);
        assert_eq!(reader.snapshot_stats().log_bytes_since_snapshot(), 0);
    }

    /// A snapshot's data is compressed as it is built: a leader holds and sends that, the file keeps
    /// it sealed without compressing it again, it reads back as built, and a follower installs it
    /// into the same tables.
    #[tokio::test]
    async fn a_snapshot_is_built_sent_and_kept_compressed() {
        let opts = crate::StoreOptions::for_tests();
        let dir = tempfile::tempdir().expect("tempdir");
        let (_log, mut sm, reader) = crate::open(dir.path(), &opts, Arc::new(KvApplier)).expect("open");
        let value = "{\"province\":\"Ha Noi\",\"transactions\":1200}".repeat(20);
        let entries: Vec<_> = (0..200u64).map(|i| kv(i, &format!("t/{i:04}"), &value)).collect();
        sm.apply(entries).await.expect("apply");
        let built = RaftSnapshotBuilder::build_snapshot(&mut sm).await.expect("snapshot");
        let data = built.snapshot.into_inner();
        assert!(is_compressed(&data));
        let plain = zstd::decode_all(data.as_slice()).expect("a zstd frame");
        assert!(data.len() * 5 < plain.len(), "{} bytes sent for a body of {}", data.len(), plain.len());
        let file = std::fs::metadata(dir.path().join("raft-snapshot.pb")).expect("file").len() as usize;
        assert!(file > data.len() && file < data.len() + 200, "file {file} bytes for data of {}", data.len());
        let current = sm.get_current_snapshot().await.expect("read").expect("a snapshot");
        assert_eq!(current.snapshot.into_inner(), data);

        let other = tempfile::tempdir().expect("tempdir");
        let (_log2, mut follower, follower_reader) =
            crate::open(other.path(), &opts, Arc::new(KvApplier)).expect("open");
        follower.install_snapshot(&built.meta, Box::new(Cursor::new(data.clone()))).await.expect("install");
        let tables = |r: &crate::StateReader| r.scan(b"t/", None, 1000).expect("scan");
        assert_eq!(tables(&follower_reader), tables(&reader));
        assert_eq!(tables(&reader).len(), 200);
        let kept = follower.get_current_snapshot().await.expect("read").expect("a snapshot");
        assert_eq!(kept.snapshot.into_inner(), data, "the follower keeps the data it received");
    }

    /// A1.3, the amnesia guard: a node that starts without data is marked as catching up, durably,
    /// until an append from the leader shows it holds the log up to a commit of the leader's term.
    #[tokio::test]
    async fn a_node_that_starts_without_data_votes_only_once_caught_up_with_a_leader() {
        let opts = crate::StoreOptions::for_tests();
        let dir = tempfile::tempdir().expect("tempdir");
        let id = |term: u64, index: u64| {
            Some(kv(index, "t/x", "1").log_id).map(|mut l| {
                l.leader_id = openraft::CommittedLeaderId::new(term, 1);
                l
            })
        };
        {
            let (log, _sm, _reader) = crate::open(dir.path(), &opts, Arc::new(KvApplier)).expect("open");
            assert!(log.catching_up(), "an empty store is marked");
            // A commit of an earlier term: entries committed before the wipe may lie beyond it.
            assert!(!log.leader_contact_caught_up(5, id(4, 100), id(5, 120)).expect("check"));
            // The leader's own commit, but this node's log does not reach it yet.
            assert!(!log.leader_contact_caught_up(5, id(5, 100), id(5, 99)).expect("check"));
            assert!(!log.leader_contact_caught_up(5, None, id(5, 99)).expect("check"));
            assert!(!log.leader_contact_caught_up(5, id(5, 100), None).expect("check"));
            assert!(log.catching_up());
        }
        // Killed while catching up: still marked after a restart, although it now has a log.
        {
            let (mut log, _sm, _reader) = crate::reopen(dir.path(), &opts, Arc::new(KvApplier)).await.expect("reopen");
            openraft::storage::RaftLogStorage::save_vote(&mut log, &openraft::Vote::new_committed(5, 1))
                .await
                .expect("vote");
            assert!(log.catching_up(), "the mark survives a restart");
            assert!(log.leader_contact_caught_up(5, id(5, 100), id(5, 100)).expect("check"));
            assert!(!log.catching_up());
        }
        let (log, _sm, _reader) = crate::reopen(dir.path(), &opts, Arc::new(KvApplier)).await.expect("reopen");
        assert!(!log.catching_up(), "caught up is durable too");
        // The first voter of a new cluster has nothing to catch up with.
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _sm, _reader) = crate::open(dir.path(), &opts, Arc::new(KvApplier)).expect("open");
        log.bootstrapped().expect("bootstrapped");
        assert!(!log.catching_up());
    }

    /// A snapshot larger than one write batch replaces the tables whole (old keys gone, every new
    /// pair present, the applied id its last entry); a malformed one changes nothing; a store whose
    /// install was cut short is reset at its next start.
    #[tokio::test]
    async fn a_large_snapshot_installs_in_batches_and_a_cut_short_install_is_reset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = crate::StoreOptions::for_tests();
        let n = 2 * crate::limits::RESTORE_BATCH_PAIRS + 7;
        let body = pb::SnapshotBody {
            format_version: SNAPSHOT_FORMAT_VERSION,
            pairs: (0..n)
                .map(|i| pb::SnapshotPair { key: format!("t/{i:06}").into_bytes(), value: vec![7; 40] })
                .collect(),
        };
        let meta = SnapshotMeta {
            last_log_id: Some(kv(9, "t/x", "1").log_id),
            last_membership: StoredMem::default(),
            snapshot_id: "test-1".into(),
        };
        {
            let (_log, mut sm, reader) = crate::open(dir.path(), &opts, Arc::new(KvApplier)).expect("open");
            sm.apply(vec![kv(1, "old/a", "1")]).await.expect("apply");
            let epoch = reader.install_epoch();
            assert!(reader.unchanged_since(epoch));
            // The plain body, as versions before compressed snapshot data sent it.
            let bad = Box::new(Cursor::new(body.encode_to_vec()[..1000].to_vec()));
            assert!(sm.install_snapshot(&meta, bad).await.is_err(), "a truncated snapshot is refused");
            assert_eq!(reader.get(b"old/a").expect("read"), Some(b"1".to_vec()), "and changes nothing");
            assert!(reader.unchanged_since(epoch), "a refused snapshot replaced nothing");
            sm.install_snapshot(&meta, Box::new(Cursor::new(body.encode_to_vec()))).await.expect("install");
            assert_eq!(reader.get(b"old/a").expect("read"), None);
            // A reader that read across the install is told so; one that starts after it is not.
            assert!(!reader.unchanged_since(epoch), "the tables were replaced");
            assert!(reader.unchanged_since(reader.install_epoch()));
            {
                let _installing = sm.inner.stats.installing();
                assert!(!reader.unchanged_since(reader.install_epoch()), "nothing read during an install is whole");
            }
            assert!(reader.unchanged_since(reader.install_epoch()));
            assert_eq!(reader.scan(b"t/", None, n + 10).expect("scan").len(), n);
            assert_eq!(sm.applied_state().await.expect("applied").0.map(|l| l.index), Some(9));
            // Cut short: the mark is left behind, as by a node killed halfway.
            let mut batch = sm.inner.tree.batch();
            batch.insert(KEY_INSTALLING, b"test-2").expect("mark");
            sm.inner.tree.apply_batch(batch).expect("write");
            sm.inner.db.flush().expect("flush");
        }
        let (_log, mut sm, reader) = crate::reopen(dir.path(), &opts, Arc::new(KvApplier)).await.expect("reopen");
        assert_eq!(sm.applied_state().await.expect("applied").0, None, "reset");
        assert!(reader.scan(b"t/", None, 10).expect("scan").is_empty());
        assert!(!dir.path().join("raft-snapshot.pb").exists());
    }

    /// A second `open` of a store that is open answers `InUse`, saying another process may hold
    /// it, not that the store is damaged.
    #[tokio::test]
    async fn a_store_in_use_is_named_as_such_not_as_damaged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = crate::StoreOptions::for_tests();
        let _open = crate::open(dir.path(), &opts, Arc::new(KvApplier)).expect("open");
        match crate::open(dir.path(), &opts, Arc::new(KvApplier)) {
            Err(StoreError::InUse(m)) => assert!(m.contains("in use by another process"), "{m}"),
            Err(e) => panic!("expected InUse, got {e}"),
            Ok(_) => panic!("a store was opened twice"),
        }
    }

    /// A4.2: values are sealed with the current data key; after a rotation new writes use the new
    /// key and what was written before still reads, also after a snapshot install.
    #[tokio::test]
    async fn new_writes_use_the_rotated_key_and_old_ones_still_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_log, mut sm, reader) =
            crate::open(dir.path(), &crate::StoreOptions::for_tests(), Arc::new(KvApplier)).expect("open");
        sm.apply(vec![kv(1, "t/a", "old")]).await.expect("apply");
        assert_eq!(reader.sealed_with(b"t/a").expect("read"), Some(1));
        assert_eq!(reader.rotate_key(1).expect("rotate"), 2);
        sm.apply(vec![kv(2, "t/b", "new")]).await.expect("apply");
        assert_eq!(reader.sealed_with(b"t/b").expect("read"), Some(2));
        assert_eq!(reader.get(b"t/a").expect("read").as_deref(), Some(&b"old"[..]));
        // A snapshot is plaintext in memory (for the follower to seal with its own keys) and sealed
        // in its file.
        let mut builder = sm.get_snapshot_builder().await;
        let snap = openraft::RaftSnapshotBuilder::build_snapshot(&mut builder).await.expect("snapshot");
        let file = std::fs::read(dir.path().join("raft-snapshot.pb")).expect("file");
        assert!(!file.windows(3).any(|w| w == b"old"), "the snapshot file is sealed");
        assert!(snap.snapshot.get_ref().windows(3).any(|w| w == b"old"));
        let current = sm.get_current_snapshot().await.expect("read").expect("a snapshot");
        assert_eq!(current.snapshot.into_inner(), snap.snapshot.into_inner());
    }

    /// A4.2: re-encryption re-seals what older keys sealed (tables, log, snapshot file) and retires
    /// them; everything still reads.
    #[tokio::test]
    async fn reencryption_retires_old_keys_and_keeps_everything_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, mut sm, reader) =
            crate::open(dir.path(), &crate::StoreOptions::for_tests(), Arc::new(KvApplier)).expect("open");
        let entries = vec![kv(1, "t/a", "one"), kv(2, "t/b", "two")];
        // The log as `append` writes it (openraft's flush callback cannot be made outside openraft).
        let mut batch = log.log.batch();
        for e in &entries {
            batch.insert(&e.log_id.index.to_be_bytes(), &dtm_model::encode_entry(e)).expect("seal");
        }
        log.log.apply_batch(batch).expect("write log");
        sm.apply(entries).await.expect("apply");
        let mut builder = sm.get_snapshot_builder().await;
        openraft::RaftSnapshotBuilder::build_snapshot(&mut builder).await.expect("snapshot");
        assert_eq!(reader.rotate_key(1).expect("rotate"), 2);

        let report = sm.reencrypt(&log).expect("reencrypt");
        assert!(report.resealed >= 4, "table values and log entries: {report:?}");
        assert_eq!((report.left, report.retired.as_slice()), (0, &[1][..]));
        assert_eq!(reader.keyring().key_ids, vec![2]);
        assert_eq!(reader.sealed_with(b"t/a").expect("read"), Some(2));
        assert_eq!(reader.get(b"t/b").expect("read").as_deref(), Some(&b"two"[..]));
        let logged = openraft::RaftLogReader::try_get_log_entries(&mut log, 1..3).await.expect("log");
        assert_eq!(logged.len(), 2);
        assert!(sm.get_current_snapshot().await.expect("snapshot reads").is_some());
    }

    /// A sealed tree in `dir`, without the rest of a store.
    fn sealed_tree(dir: &std::path::Path) -> SealedTree {
        let db = sled::Config::new().path(dir).open().expect("sled");
        let cipher = Arc::new(crate::crypto::Cipher::load(dir, crate::test_master_key(), 1).expect("keyring"));
        SealedTree::new(db.open_tree("sm").expect("tree"), cipher)
    }

    #[test]
    fn scan_range_sees_the_transactions_own_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = sealed_tree(dir.path());
        let mut batch = tree.batch();
        for k in [&b"t/a"[..], b"t/b", b"t/c", b"t/d", b"u/x"] {
            batch.insert(k, b"tree").expect("insert");
        }
        tree.apply_batch(batch).expect("apply");
        let mut txn = Txn::new(&tree);
        txn.remove(b"t/b".to_vec());
        txn.remove(b"t/c".to_vec());
        txn.put(b"t/bb".to_vec(), b"overlay".to_vec());
        txn.put(b"t/a".to_vec(), b"overwritten".to_vec());
        let keys = |limit| -> Vec<(Vec<u8>, Vec<u8>)> { txn.scan_range(b"t/", b"t0", limit).expect("scan") };
        assert_eq!(keys(2), vec![(b"t/a".to_vec(), b"overwritten".to_vec()), (b"t/bb".to_vec(), b"overlay".to_vec())]);
        let three: Vec<Vec<u8>> = keys(3).into_iter().map(|(k, _)| k).collect();
        assert_eq!(three, vec![b"t/a".to_vec(), b"t/bb".to_vec(), b"t/d".to_vec()]);
        assert_eq!(keys(10).len(), 3, "the range stops before `u/`");
    }

    #[test]
    fn append_builds_a_value_over_the_tree_and_the_overlay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = sealed_tree(dir.path());
        let mut batch = tree.batch();
        batch.insert(b"t/a", b"stored").expect("insert");
        tree.apply_batch(batch).expect("apply");
        let mut txn = Txn::new(&tree);
        txn.append(b"t/a".to_vec(), b"+1").expect("append");
        txn.append(b"t/a".to_vec(), b"+2").expect("append");
        txn.append(b"t/new".to_vec(), b"first").expect("append");
        txn.remove(b"t/gone".to_vec());
        txn.append(b"t/gone".to_vec(), b"again").expect("append");
        assert_eq!(txn.get(b"t/a").expect("get").as_deref(), Some(&b"stored+1+2"[..]));
        assert_eq!(txn.get(b"t/new").expect("get").as_deref(), Some(&b"first"[..]));
        assert_eq!(txn.get(b"t/gone").expect("get").as_deref(), Some(&b"again"[..]));
        assert_eq!(tree.get(b"t/a").expect("get").as_deref(), Some(&b"stored"[..]), "nothing written before commit");
    }
}
