//! Wire and disk formats of DTM, generated from the `.proto` files under `proto/`.
//!
//! `raft` holds what the consensus layer stores and sends between nodes (log entries, votes,
//! membership, snapshots, the node-to-node `RaftService`); `state` holds the replicated commands and
//! the values the state machine keeps; `v1` is the public `Ingest` service for source systems.
//! Everything persisted or replicated is a prost message, so a
//! field can be added without breaking nodes of the previous version (rolling upgrades).

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod raft {
    tonic::include_proto!("dtm.raft.v1");
}

pub mod state {
    tonic::include_proto!("dtm.state.v1");
}

/// The public gRPC API for source systems (`dtm.v1.Ingest`), served beside `RaftService`.
pub mod v1 {
    tonic::include_proto!("dtm.v1");
}
