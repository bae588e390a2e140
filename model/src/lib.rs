//! Domain types shared below `cluster`: the openraft type configuration (declared once for the whole
//! workspace), the node descriptor, checked conversions between openraft's types and their
//! protobuf forms in `dtm-proto`, and the shape of record ids (`record_id.rs`).
//!
//! It sits under `storage` (which persists these types) and `cluster` (which sends them between
//! nodes). Conversions from bytes that came from a peer or the disk are `TryFrom` and never panic: a
//! missing required field is a [`DecodeError`].

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;
use std::io::Cursor;

use openraft::EntryPayload;
use openraft::LeaderId;
use openraft::Membership;
use openraft::StoredMembership;
use prost::Message;

pub mod record_id;

pub use dtm_proto::raft as pb;
pub use dtm_proto::state;

/// Node identifiers are small positive integers chosen by the operator (`--node-id`).
pub type NodeId = u64;

/// The version of the replicated command set this build proposes. A node applies every version up
/// to its own; see `state.proto` for the rule on unknown kinds.
pub const COMMAND_SET_VERSION: u32 = 2;

openraft::declare_raft_types!(
    /// The single openraft type configuration of DTM.
    pub TypeConfig:
        D = state::Command,
        R = state::CommandResponse,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type StoredMem = StoredMembership<NodeId, NodeInfo>;
pub type Mem = Membership<NodeId, NodeInfo>;
pub type StorageError = openraft::StorageError<NodeId>;

/// Where a member can be reached and which site it belongs to. Part of the replicated membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    /// HTTPS address of the node's API, `host:port`.
    pub http_addr: String,
    /// Address of the node's gRPC port (Raft, forwarding, ingest), `host:port`.
    pub grpc_addr: String,
    /// The site (data centre) the node runs in; voters spread over sites survive a site loss.
    pub site: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{} (https {})", self.grpc_addr, self.site, self.http_addr)
    }
}

/// A protobuf message from a peer or the disk lacked a required field or did not decode.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("malformed protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("invalid value: {0}")]
    Invalid(String),
}

fn req<T>(v: Option<T>, name: &'static str) -> Result<T, DecodeError> {
    v.ok_or(DecodeError::Missing(name))
}

// ---- LogId / Vote ------------------------------------------------------------------------------

pub fn log_id_to_pb(l: &LogId) -> pb::LogId {
    pb::LogId { term: l.leader_id.term, node_id: l.leader_id.node_id, index: l.index }
}

pub fn log_id_from_pb(l: &pb::LogId) -> LogId {
    openraft::LogId::new(LeaderId::new(l.term, l.node_id), l.index)
}

pub fn opt_log_id_to_pb(l: &Option<LogId>) -> Option<pb::LogId> {
    l.as_ref().map(log_id_to_pb)
}

pub fn opt_log_id_from_pb(l: &Option<pb::LogId>) -> Option<LogId> {
    l.as_ref().map(log_id_from_pb)
}

pub fn vote_to_pb(v: &Vote) -> pb::Vote {
    pb::Vote { term: v.leader_id.term, node_id: v.leader_id.node_id, committed: v.committed }
}

pub fn vote_from_pb(v: &pb::Vote) -> Vote {
    if v.committed { openraft::Vote::new_committed(v.term, v.node_id) } else { openraft::Vote::new(v.term, v.node_id) }
}

/// A vote field that a peer must send.
pub fn required_vote(v: Option<&pb::Vote>) -> Result<Vote, DecodeError> {
    Ok(vote_from_pb(req(v, "vote")?))
}

// ---- Membership ---------------------------------------------------------------------------------

pub fn node_to_pb(n: &NodeInfo) -> pb::NodeInfo {
    pb::NodeInfo { http_addr: n.http_addr.clone(), grpc_addr: n.grpc_addr.clone(), site: n.site.clone() }
}

pub fn node_from_pb(n: pb::NodeInfo) -> NodeInfo {
    NodeInfo { http_addr: n.http_addr, grpc_addr: n.grpc_addr, site: n.site }
}

pub fn membership_to_pb(m: &Mem) -> pb::Membership {
    pb::Membership {
        configs: m.get_joint_config().iter().map(|set| pb::NodeIdSet { ids: set.iter().copied().collect() }).collect(),
        nodes: m.nodes().map(|(id, n)| (*id, node_to_pb(n))).collect(),
    }
}

pub fn membership_from_pb(m: pb::Membership) -> Result<Mem, DecodeError> {
    let configs: Vec<BTreeSet<NodeId>> = m.configs.into_iter().map(|s| s.ids.into_iter().collect()).collect();
    let nodes: BTreeMap<NodeId, NodeInfo> = m.nodes.into_iter().map(|(id, n)| (id, node_from_pb(n))).collect();
    // `Membership::new` fills in a default node for a voter missing from `nodes`; a peer or a disk
    // that sends such a membership is malformed, so refuse it instead of inventing an address.
    for set in &configs {
        if let Some(id) = set.iter().find(|id| !nodes.contains_key(id)) {
            return Err(DecodeError::Invalid(format!("voter {id} has no node entry")));
        }
    }
    Ok(Membership::new(configs, nodes))
}

pub fn stored_membership_to_pb(m: &StoredMem) -> pb::StoredMembership {
    pb::StoredMembership { log_id: opt_log_id_to_pb(m.log_id()), membership: Some(membership_to_pb(m.membership())) }
}

pub fn stored_membership_from_pb(m: pb::StoredMembership) -> Result<StoredMem, DecodeError> {
    let log_id = opt_log_id_from_pb(&m.log_id);
    let membership = membership_from_pb(req(m.membership, "membership")?)?;
    Ok(StoredMembership::new(log_id, membership))
}

// ---- Entry --------------------------------------------------------------------------------------

pub fn entry_to_pb(e: &Entry) -> pb::Entry {
    let payload = match &e.payload {
        EntryPayload::Blank => pb::entry::Payload::Blank(pb::Blank {}),
        EntryPayload::Normal(cmd) => pb::entry::Payload::Normal(cmd.encode_to_vec()),
        EntryPayload::Membership(m) => pb::entry::Payload::Membership(membership_to_pb(m)),
    };
    pb::Entry { log_id: Some(log_id_to_pb(&e.log_id)), payload: Some(payload) }
}

pub fn entry_from_pb(e: pb::Entry) -> Result<Entry, DecodeError> {
    let log_id = log_id_from_pb(&req(e.log_id, "entry.log_id")?);
    let payload = match req(e.payload, "entry.payload")? {
        pb::entry::Payload::Blank(_) => EntryPayload::Blank,
        pb::entry::Payload::Normal(bytes) => EntryPayload::Normal(state::Command::decode(bytes.as_slice())?),
        pb::entry::Payload::Membership(m) => EntryPayload::Membership(membership_from_pb(m)?),
    };
    Ok(openraft::Entry { log_id, payload })
}

/// Encodes a log entry for the disk or the wire.
pub fn encode_entry(e: &Entry) -> Vec<u8> {
    entry_to_pb(e).encode_to_vec()
}

/// Decodes a log entry that came from the disk or a peer.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, DecodeError> {
    entry_from_pb(pb::Entry::decode(bytes)?)
}

// ---- Snapshot meta ------------------------------------------------------------------------------

pub fn snapshot_meta_to_pb(m: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        last_log_id: opt_log_id_to_pb(&m.last_log_id),
        last_membership: Some(stored_membership_to_pb(&m.last_membership)),
        snapshot_id: m.snapshot_id.clone(),
    }
}

pub fn snapshot_meta_from_pb(m: pb::SnapshotMeta) -> Result<SnapshotMeta, DecodeError> {
    Ok(openraft::SnapshotMeta {
        last_log_id: opt_log_id_from_pb(&m.last_log_id),
        last_membership: stored_membership_from_pb(req(m.last_membership, "meta.last_membership")?)?,
        snapshot_id: m.snapshot_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(p: u16) -> NodeInfo {
        NodeInfo {
            http_addr: format!("127.0.0.1:{p}"),
            grpc_addr: format!("127.0.0.1:{}", p + 100),
            site: "hanoi".into(),
        }
    }

    #[test]
    fn entry_round_trips_through_protobuf() {
        let mem =
            Membership::new(vec![BTreeSet::from([1, 2])], BTreeMap::from([(1, node(1)), (2, node(2)), (3, node(3))]));
        let cmd = state::Command { actor: None, version: 1, proposed_at_ms: 42, origin_node: 2, kind: None };
        for payload in [EntryPayload::Blank, EntryPayload::Normal(cmd), EntryPayload::Membership(mem)] {
            let e: Entry = openraft::Entry { log_id: openraft::LogId::new(LeaderId::new(3, 1), 9), payload };
            let back = decode_entry(&encode_entry(&e)).expect("round trip");
            assert_eq!(format!("{e:?}"), format!("{back:?}"));
        }
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert!(decode_entry(&[0xff, 0xff, 0xff]).is_err());
        assert!(matches!(decode_entry(&[]), Err(DecodeError::Missing(_))));
        let bad = pb::Membership { configs: vec![pb::NodeIdSet { ids: vec![7] }], nodes: Default::default() };
        assert!(membership_from_pb(bad).is_err());
    }
}
