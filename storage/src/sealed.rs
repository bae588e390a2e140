//! A sled tree whose values are sealed (`crypto.rs`) on the way in and opened on the way out, with
//! the value's key as associated data. Every tree that holds data (the Raft log, the state machine)
//! goes through it, so nothing above this file sees ciphertext and nothing below it sees plaintext.

use std::ops::RangeBounds;
use std::sync::Arc;

use crate::crypto::Cipher;
use crate::error::StoreError;

#[derive(Clone)]
pub(crate) struct SealedTree {
    /// The sled tree itself: for key-only operations (removing ranges) and batches.
    pub(crate) raw: sled::Tree,
    pub(crate) cipher: Arc<Cipher>,
}

/// Pairs as stored: the key, and the opened value.
pub(crate) type Opened = (sled::IVec, Vec<u8>);

impl SealedTree {
    pub(crate) fn new(raw: sled::Tree, cipher: Arc<Cipher>) -> Self {
        SealedTree { raw, cipher }
    }

    fn open_pair(&self, kv: Result<(sled::IVec, sled::IVec), sled::Error>) -> Result<Opened, StoreError> {
        let (k, v) = kv?;
        let plain = self.cipher.open(&k, &v)?;
        Ok((k, plain))
    }

    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.raw.get(key)? {
            None => Ok(None),
            Some(v) => Ok(Some(self.cipher.open(key, &v)?)),
        }
    }

    pub(crate) fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(
        &self,
        range: R,
    ) -> impl DoubleEndedIterator<Item = Result<Opened, StoreError>> + '_ {
        self.raw.range(range).map(|kv| self.open_pair(kv))
    }

    pub(crate) fn scan_prefix(&self, prefix: &[u8]) -> impl Iterator<Item = Result<Opened, StoreError>> + '_ {
        self.raw.scan_prefix(prefix).map(|kv| self.open_pair(kv))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = Result<Opened, StoreError>> + '_ {
        self.raw.iter().map(|kv| self.open_pair(kv))
    }

    pub(crate) fn last(&self) -> Result<Option<Opened>, StoreError> {
        self.raw.last().map_err(StoreError::from)?.map(|kv| self.open_pair(Ok(kv))).transpose()
    }

    /// Re-seals with the current data key every value sealed with a key older than `below`; a value
    /// that changes meanwhile is left to its writer (compare-and-swap), which seals with the current
    /// key anyway. Returns (values re-sealed, values still sealed with an older key afterwards).
    pub(crate) fn reseal_below(&self, below: u32) -> Result<(u64, u64), StoreError> {
        let mut resealed = 0u64;
        for kv in self.raw.iter() {
            let (k, v) = kv?;
            if Cipher::key_id_of(&v).is_some_and(|id| id < below) {
                let plain = self.cipher.open(&k, &v)?;
                let new = self.cipher.seal_value(&k, &plain)?;
                if self.raw.compare_and_swap(&k, Some(&v), Some(new))?.is_ok() {
                    resealed += 1;
                }
            }
        }
        let mut left = 0u64;
        for kv in self.raw.iter() {
            let (_, v) = kv?;
            if Cipher::key_id_of(&v).is_some_and(|id| id < below) {
                left += 1;
            }
        }
        Ok((resealed, left))
    }

    /// Removes every key but `keep`, in batches of at most `RESTORE_BATCH_PAIRS` (one sled batch of
    /// millions of keys takes sled minutes and gigabytes), calling `before` with each batch's keys
    /// before it is written.
    pub(crate) fn remove_all_but(
        &self,
        keep: Option<&[u8]>,
        mut before: impl FnMut(&[Vec<u8>]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        loop {
            let keys: Vec<Vec<u8>> = self
                .raw
                .iter()
                .keys()
                .filter(|k| k.as_ref().map_or(true, |k| Some(k.as_ref()) != keep))
                .take(crate::limits::RESTORE_BATCH_PAIRS)
                .map(|k| k.map(|k| k.to_vec()))
                .collect::<Result<_, _>>()?;
            if keys.is_empty() {
                return Ok(());
            }
            before(&keys)?;
            let mut batch = sled::Batch::default();
            for k in &keys {
                batch.remove(k.as_slice());
            }
            self.raw.apply_batch(batch)?;
        }
    }

    pub(crate) fn batch(&self) -> SealedBatch {
        SealedBatch { batch: sled::Batch::default(), cipher: self.cipher.clone() }
    }

    pub(crate) fn apply_batch(&self, b: SealedBatch) -> Result<(), StoreError> {
        self.raw.apply_batch(b.batch)?;
        Ok(())
    }
}

/// A sled batch whose inserted values are sealed.
pub(crate) struct SealedBatch {
    batch: sled::Batch,
    cipher: Arc<Cipher>,
}

impl SealedBatch {
    /// Inserts `plain` sealed (compressed first when that pays, `Cipher::seal_value`); answers the
    /// stored length.
    pub(crate) fn insert(&mut self, key: &[u8], plain: &[u8]) -> Result<usize, StoreError> {
        let sealed = self.cipher.seal_value(key, plain)?;
        let stored = sealed.len();
        self.batch.insert(key, sealed);
        Ok(stored)
    }

    pub(crate) fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.batch.remove(key.as_ref());
    }
}
