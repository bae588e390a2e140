//! The replicated core of DTM: one openraft group per cluster whose log carries every state change
//! (catalog, credentials, records, audit events) and whose state machine lives in `dtm-storage`.
//!
//! Data flow: the API hands a command to [`ClusterNode`]; ingest submissions go through the
//! group-commit batcher (`batcher.rs`), other commands straight to the [`Writer`]. The writer
//! proposes on the leader or forwards to it over mutual-TLS gRPC (`network.rs` client, `service.rs`
//! server), retrying across leader changes. Committed entries are applied on every node by
//! [`DtmApplier`] (`applier.rs`; records in `ingest.rs`) into the tables laid out in `tables.rs`:
//! catalog, records (one block per log entry and dataset, `records.rs`), the natural-key index
//! (duplicates and conflicts; entries named by 16 bytes of the key's HMAC in datasets defined since
//! the layout is kept, `nkl/`), versions and lineage
//! (`lineage.rs`) and aggregate cells, which `aggregates.rs` mirrors in memory for queries at a known
//! log index. After every command, `audit.rs` appends the audit
//! entries it makes to the hash-chained trail and closes checkpoints that the leader signs.
//!
//! Elections: openraft's own timer is off; `election.rs` campaigns only after a pre-vote won, and
//! `detector.rs` starts an early election when the leader's process is gone; neither runs, and
//! `service.rs` grants no vote, on a node still catching up after it started without data (the
//! amnesia guard, `LogStore::catching_up`). A node cut off from
//! the leader (or, as leader, from its quorum) answers writes and linearizable reads at once with
//! [`ClusterError::CutOff`] (`Writer::cut_off_for`).

pub mod aggregates;
mod applier;
pub mod audit;
pub mod batch;
mod batcher;
mod detector;
mod election;
mod error;
pub mod gateway;
mod ingest;
pub mod limits;
pub mod lineage;
pub mod monitoring;
mod network;
mod node;
pub mod performance;
pub mod records;
pub mod reporting;
pub mod security;
mod service;
pub mod tables;
mod tls;

pub use applier::DtmApplier;
pub use applier::key_epoch;
pub use error::ClusterError;
pub use limits::GroupCommitOptions;
pub use node::ClusterConfig;
pub use node::ClusterNode;
pub use node::ClusterStatus;
pub use node::MemberStatus;
pub use node::RaftOptions;
pub use node::Writer;
pub use service::RaftRpc;
pub use tls::NodeTls;
