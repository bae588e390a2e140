//! The cluster crate's error. The HTTP and gRPC boundaries map it to statuses in one place each.

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No leader could be reached in time (election in progress, partition, quorum lost).
    #[error("the cluster has no reachable leader")]
    Unavailable,
    /// This node has heard from no leader (as a leader: from no quorum) for `since_ms`: it is cut off
    /// from the cluster, and another node may well be able to take the request.
    #[error("this node has had no contact with the cluster's leader for {since_ms} ms")]
    CutOff { since_ms: u64 },
    /// The local submission queue is full; the client should retry after a short wait.
    #[error("too many concurrent submissions on this node")]
    Overloaded,
    /// The state machine refused the command (deterministically, on every node).
    #[error("{code}: {message}")]
    Rejected { code: String, message: String },
    /// The request itself is invalid (e.g. a membership change that makes no sense).
    #[error("{0}")]
    BadRequest(String),
    /// The node is shutting down or its storage failed.
    #[error("node stopped: {0}")]
    Stopped(String),
    #[error("storage: {0}")]
    Storage(#[from] dtm_storage::StoreError),
    #[error("internal: {0}")]
    Internal(String),
}

impl ClusterError {
    /// The same error for each waiter of a failed batch (the storage cause is reduced to its text).
    pub fn duplicate(&self) -> ClusterError {
        match self {
            ClusterError::Unavailable => ClusterError::Unavailable,
            ClusterError::CutOff { since_ms } => ClusterError::CutOff { since_ms: *since_ms },
            ClusterError::Overloaded => ClusterError::Overloaded,
            ClusterError::Rejected { code, message } => {
                ClusterError::Rejected { code: code.clone(), message: message.clone() }
            }
            ClusterError::BadRequest(m) => ClusterError::BadRequest(m.clone()),
            ClusterError::Stopped(m) => ClusterError::Stopped(m.clone()),
            ClusterError::Storage(e) => ClusterError::Internal(e.to_string()),
            ClusterError::Internal(m) => ClusterError::Internal(m.clone()),
        }
    }
}
