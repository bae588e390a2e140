//! The storage crate's own error, and its conversion into openraft's `StorageError`.

use dtm_model::DecodeError;
use dtm_model::NodeId;
use openraft::AnyError;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::StorageError;
use openraft::StorageIOError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt value in store: {0}")]
    Corrupt(#[from] DecodeError),
    #[error("{0}")]
    Invalid(String),
    /// Another process (or a store not yet fully closed in this one) holds the store's lock.
    #[error("{0}")]
    InUse(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl From<prost::DecodeError> for StoreError {
    fn from(e: prost::DecodeError) -> Self {
        StoreError::Corrupt(DecodeError::Protobuf(e))
    }
}

/// Wraps a storage failure for openraft. Any such error stops the Raft node (it is fatal by
/// design: a node that cannot trust its disk must not vote or serve).
pub(crate) fn sto(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl Into<StoreError>) -> StorageError<NodeId> {
    let e: StoreError = e.into();
    StorageError::IO { source: StorageIOError::new(subject, verb, AnyError::new(&e)) }
}
