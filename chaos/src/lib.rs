//! Chaos suite (issue 4): runs a real multi-process DTM cluster on this machine, drives a recording
//! workload against it (every request and its answer, with ids and times, in a JSONL history),
//! injects faults on a seeded schedule (kill -9, SIGSTOP, network partitions in network namespaces,
//! wiped nodes, membership changes), heals, reads the final state of every node into the history
//! and checks it: no acknowledged record lost, none stored twice, none invented, linearizable reads
//! never going back in time, equal aggregate digests everywhere.
//!
//! Data flow: `scenario::run` starts a `cluster::Cluster` (optionally inside `net::Network`
//! namespaces), spawns `workload` writers and a reader that append to a `history::History`,
//! applies `faults`, then hands the history to `checker::check`, which needs nothing else, so a
//! saved history can be checked again offline (`chaos check FILE`).

pub mod checker;
pub mod client;
pub mod cluster;
pub mod corruption;
pub mod error;
pub mod faults;
pub mod history;
pub mod limits;
pub mod net;
pub mod scenario;
pub mod workload;

pub use error::ChaosError;
