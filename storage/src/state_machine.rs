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

use crate::error::StoreError;
use crate::error::sto;
use crate::limits::SNAPSHOT_BYTES_MAX;

/// Keys starting with this byte belong to the storage layer; application keys must not use it.
pub const RESERVED_PREFIX: u8 = 0x00;
const KEY_LAST_APPLIED: &[u8] = b"\x00meta/last_applied";
const KEY_MEMBERSHIP: &[u8] = b"\x00meta/membership";
const KEY_CURRENT_SNAPSHOT: &[u8] = b"current";
const SNAPSHOT_FORMAT_VERSION: u32 = 1;

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

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
}

/// A write transaction over the application tables: reads see the transaction's own writes; the
/// writes reach sled in one atomic batch together with the last-applied log id.
pub struct Txn<'a> {
    tree: &'a sled::Tree,
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Txn<'a> {
    fn new(tree: &'a sled::Tree) -> Self {
        Txn { tree, overlay: BTreeMap::new() }
    }

    pub fn get(&self, key: &[u8]) -> std::result::Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
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
            merged.insert(k.to_vec(), v.to_vec());
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
        self.overlay.insert(key, Some(value));
    }

    pub fn put_msg<M: Message>(&mut self, key: Vec<u8>, value: &M) {
        self.put(key, value.encode_to_vec());
    }

    pub fn remove(&mut self, key: Vec<u8>) {
        self.overlay.insert(key, None);
    }

    fn into_batch(self) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (k, v) in self.overlay {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        batch
    }
}

struct Inner {
    db: sled::Db,
    tree: sled::Tree,
    snapshots: sled::Tree,
    applier: Arc<dyn Applier>,
    /// Held while a batch is written and while a snapshot copies the tables, so that a snapshot is
    /// taken at exactly one applied index even though openraft builds it concurrently with `apply`.
    write_lock: Mutex<()>,
    snapshot_seq: AtomicU64,
}

/// The state machine store. Cheap to clone.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

impl StateMachineStore {
    pub(crate) fn new(db: sled::Db, applier: Arc<dyn Applier>) -> std::result::Result<Self, StoreError> {
        let tree = db.open_tree("sm")?;
        let snapshots = db.open_tree("snapshot")?;
        Ok(StateMachineStore {
            inner: Arc::new(Inner {
                db,
                tree,
                snapshots,
                applier,
                write_lock: Mutex::new(()),
                snapshot_seq: AtomicU64::new(0),
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

    fn build_snapshot_now(&self) -> std::result::Result<(SnapshotMeta, Vec<u8>), StoreError> {
        let (body, applied, membership) = {
            let _g = self.lock();
            let (applied, membership) = self.read_applied()?;
            let mut pairs = Vec::new();
            let mut size = 0usize;
            for kv in self.inner.tree.iter() {
                let (k, v) = kv?;
                if k.first() == Some(&RESERVED_PREFIX) {
                    continue;
                }
                size += k.len() + v.len();
                if size > SNAPSHOT_BYTES_MAX {
                    return Err(StoreError::Invalid("state is larger than the snapshot limit".into()));
                }
                pairs.push(pb::SnapshotPair { key: k.to_vec(), value: v.to_vec() });
            }
            (pb::SnapshotBody { format_version: SNAPSHOT_FORMAT_VERSION, pairs }, applied, membership)
        };
        let data = body.encode_to_vec();
        let seq = self.inner.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match &applied {
            Some(l) => format!("{}-{}-{}-{seq}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => format!("0-0-0-{seq}"),
        };
        let meta = SnapshotMeta { last_log_id: applied, last_membership: membership, snapshot_id };
        Ok((meta, data))
    }

    fn store_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> std::result::Result<(), StoreError> {
        let stored = pb::StoredSnapshot { meta: Some(dtm_model::snapshot_meta_to_pb(meta)), data: data.to_vec() };
        self.inner.snapshots.insert(KEY_CURRENT_SNAPSHOT, stored.encode_to_vec())?;
        Ok(())
    }

    fn install(&self, meta: &SnapshotMeta, data: &[u8]) -> std::result::Result<(), StoreError> {
        let body = pb::SnapshotBody::decode(data)?;
        if body.format_version != SNAPSHOT_FORMAT_VERSION {
            return Err(StoreError::Invalid(format!("snapshot format {} is not supported", body.format_version)));
        }
        let _g = self.lock();
        // One sled batch replaces the whole table, so a crash leaves either the old state or the new.
        let mut batch = sled::Batch::default();
        for k in self.inner.tree.iter().keys() {
            batch.remove(k?);
        }
        for p in body.pairs {
            if p.key.first() == Some(&RESERVED_PREFIX) {
                return Err(StoreError::Invalid("snapshot carries a reserved key".into()));
            }
            batch.insert(p.key, p.value);
        }
        if let Some(l) = &meta.last_log_id {
            batch.insert(KEY_LAST_APPLIED, dtm_model::log_id_to_pb(l).encode_to_vec());
        }
        batch.insert(KEY_MEMBERSHIP, dtm_model::stored_membership_to_pb(&meta.last_membership).encode_to_vec());
        self.inner.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Every node flushes after install so that the log can be purged behind the snapshot.
    async fn flush(&self) -> std::result::Result<(), StoreError> {
        self.inner.db.flush_async().await?;
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let (meta, data) =
            self.build_snapshot_now().map_err(|e| sto(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        self.store_snapshot(&meta, &data)
            .map_err(|e| sto(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write, e))?;
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
        let mut txn = Txn::new(&tree);
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
        let mut batch = txn.into_batch();
        if let Some(l) = &last {
            batch.insert(KEY_LAST_APPLIED, dtm_model::log_id_to_pb(l).encode_to_vec());
        }
        if let Some(m) = &membership {
            batch.insert(KEY_MEMBERSHIP, dtm_model::stored_membership_to_pb(m).encode_to_vec());
        }
        {
            let _g = self.lock();
            tree.apply_batch(batch).map_err(|e| sto(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
        }
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
        self.install(meta, &data).map_err(|e| sto(subject(), ErrorVerb::Write, e))?;
        self.store_snapshot(meta, &data).map_err(|e| sto(subject(), ErrorVerb::Write, e))?;
        self.flush().await.map_err(|e| sto(subject(), ErrorVerb::Write, e))?;
        tracing::info!(snapshot_id = %meta.snapshot_id, bytes = data.len(), "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let v = self
            .inner
            .snapshots
            .get(KEY_CURRENT_SNAPSHOT)
            .map_err(|e| sto(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        let Some(v) = v else { return Ok(None) };
        let stored = pb::StoredSnapshot::decode(v.as_ref())
            .map_err(|e| sto(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        let meta_pb = stored.meta.ok_or_else(|| {
            sto(ErrorSubject::Snapshot(None), ErrorVerb::Read, StoreError::Invalid("snapshot without meta".into()))
        })?;
        let meta = dtm_model::snapshot_meta_from_pb(meta_pb)
            .map_err(|e| sto(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(stored.data)) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_range_sees_the_transactions_own_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new().path(dir.path()).open().expect("sled");
        let tree = db.open_tree("sm").expect("tree");
        for k in [&b"t/a"[..], b"t/b", b"t/c", b"t/d", b"u/x"] {
            tree.insert(k, b"tree").expect("insert");
        }
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
}
