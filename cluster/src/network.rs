//! The client side of node-to-node gRPC: openraft's `RaftNetworkFactory` over one pooled, lazily
//! connected tonic channel per peer, with mutual TLS. Channels reconnect by themselves; openraft
//! bounds and backs off its own retries, and every call carries the deadline openraft gives it.
//!
//! Only a peer that cannot be reached at all (connection refused or reset, no channel) is reported
//! `Unreachable`, which makes openraft send that peer nothing, not even heartbeats, for
//! [`UNREACHABLE_BACKOFF`]. A call that merely ran out of time (a follower busy with a large append)
//! is a network error, retried at the next heartbeat: a backoff there would silence a live follower
//! for longer than the leader lease and invite a needless election.

// openraft's `RPCError` is large by design; boxing it would only add allocations on every RPC.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use dtm_model::NodeId;
use dtm_model::NodeInfo;
use dtm_model::TypeConfig;
use dtm_model::pb;
use dtm_model::pb::raft_service_client::RaftServiceClient;
use openraft::error::InstallSnapshotError;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::RemoteError;
use openraft::error::SnapshotMismatch;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::network::RaftNetwork;
use openraft::network::RaftNetworkFactory;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use tonic::transport::Channel;
use tonic::transport::ClientTlsConfig;
use tonic::transport::Endpoint;

use crate::limits::GRPC_MESSAGE_BYTES_MAX;
use crate::limits::PEER_KEEP_ALIVE_INTERVAL;
use crate::limits::PEER_KEEP_ALIVE_TIMEOUT;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long openraft waits before calling an unreachable peer again (openraft's default is 500 ms).
/// Shorter, so that a restarted node is caught up soon after it listens again; a refused
/// connection costs next to nothing.
pub const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(200);

/// One channel per peer, shared by Raft replication and write forwarding.
pub struct PeerPool {
    tls: ClientTlsConfig,
    channels: Mutex<BTreeMap<NodeId, (String, Channel)>>,
}

impl PeerPool {
    pub fn new(tls: ClientTlsConfig) -> Arc<Self> {
        Arc::new(PeerPool { tls, channels: Mutex::new(BTreeMap::new()) })
    }

    /// A client for `id` at `addr`; the channel is reused while the address stays the same.
    pub fn client(&self, id: NodeId, addr: &str) -> Result<RaftServiceClient<Channel>, tonic::transport::Error> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match map.get(&id) {
            Some((a, ch)) if a == addr => ch.clone(),
            _ => {
                let ch = Endpoint::from_shared(format!("https://{addr}"))?
                    .tls_config(self.tls.clone())?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(PEER_KEEP_ALIVE_INTERVAL)
                    .keep_alive_timeout(PEER_KEEP_ALIVE_TIMEOUT)
                    .connect_lazy();
                map.insert(id, (addr.to_string(), ch.clone()));
                ch
            }
        };
        Ok(RaftServiceClient::new(channel)
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX))
    }
}

#[derive(Clone)]
pub struct Network {
    pub pool: Arc<PeerPool>,
}

pub struct Connection {
    target: NodeId,
    addr: String,
    pool: Arc<PeerPool>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Connection {
        Connection { target, addr: node.grpc_addr.clone(), pool: self.pool.clone() }
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>;

/// A peer that cannot be reached makes openraft back off (`Unreachable`); anything else, a call that
/// ran out of time included, is a network error that openraft retries at the next heartbeat.
fn status_to_rpc<E: std::error::Error>(status: tonic::Status) -> RpcErr<E> {
    match status.code() {
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

fn decode_err<E: std::error::Error>(e: dtm_model::DecodeError) -> RpcErr<E> {
    RPCError::Network(NetworkError::new(&e))
}

impl Connection {
    fn client<E: std::error::Error>(&self) -> Result<RaftServiceClient<Channel>, RpcErr<E>> {
        self.pool.client(self.target, &self.addr).map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }
}

async fn with_deadline<T, E: std::error::Error>(
    option: &RPCOption,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, RpcErr<E>> {
    match tokio::time::timeout(option.hard_ttl(), fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(status_to_rpc(status)),
        Err(_) => Err(RPCError::Network(NetworkError::new(&tonic::Status::deadline_exceeded("rpc deadline")))),
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let req = pb::AppendEntriesRequest {
            vote: Some(dtm_model::vote_to_pb(&rpc.vote)),
            prev_log_id: dtm_model::opt_log_id_to_pb(&rpc.prev_log_id),
            entries: rpc.entries.iter().map(dtm_model::entry_to_pb).collect(),
            leader_commit: dtm_model::opt_log_id_to_pb(&rpc.leader_commit),
        };
        let mut c = self.client()?;
        let resp = with_deadline(&option, c.append_entries(req)).await?;
        use pb::append_entries_response::Result as R;
        match resp.result {
            Some(R::Success(_)) => Ok(AppendEntriesResponse::Success),
            Some(R::PartialSuccess(p)) => {
                Ok(AppendEntriesResponse::PartialSuccess(dtm_model::opt_log_id_from_pb(&p.matching)))
            }
            Some(R::Conflict(_)) => Ok(AppendEntriesResponse::Conflict),
            Some(R::HigherVote(v)) => Ok(AppendEntriesResponse::HigherVote(dtm_model::vote_from_pb(&v))),
            None => Err(decode_err(dtm_model::DecodeError::Missing("append_entries.result"))),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        let req = pb::InstallSnapshotRequest {
            vote: Some(dtm_model::vote_to_pb(&rpc.vote)),
            meta: Some(dtm_model::snapshot_meta_to_pb(&rpc.meta)),
            offset: rpc.offset,
            data: rpc.data,
            done: rpc.done,
        };
        let mut c = self.client()?;
        let resp = with_deadline(&option, c.install_snapshot(req)).await?;
        use pb::install_snapshot_response::Result as R;
        match resp.result {
            Some(R::Vote(v)) => Ok(InstallSnapshotResponse { vote: dtm_model::vote_from_pb(&v) }),
            Some(R::Mismatch(m)) => {
                let mismatch = SnapshotMismatch {
                    expect: openraft::SnapshotSegmentId { id: m.expect_id, offset: m.expect_offset },
                    got: openraft::SnapshotSegmentId { id: m.got_id, offset: m.got_offset },
                };
                Err(RPCError::RemoteError(RemoteError::new(
                    self.target,
                    RaftError::APIError(InstallSnapshotError::SnapshotMismatch(mismatch)),
                )))
            }
            None => Err(decode_err(dtm_model::DecodeError::Missing("install_snapshot.result"))),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RpcErr> {
        let req = pb::VoteRequest {
            vote: Some(dtm_model::vote_to_pb(&rpc.vote)),
            last_log_id: dtm_model::opt_log_id_to_pb(&rpc.last_log_id),
        };
        let mut c = self.client()?;
        let resp = with_deadline(&option, c.request_vote(req)).await?;
        let vote = dtm_model::required_vote(resp.vote.as_ref()).map_err(decode_err)?;
        Ok(VoteResponse {
            vote,
            vote_granted: resp.vote_granted,
            last_log_id: dtm_model::opt_log_id_from_pb(&resp.last_log_id),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a peer that cannot be reached makes openraft back off (and send it nothing, heartbeats
    /// included); a call that ran out of time is retried at the next heartbeat.
    #[test]
    fn only_an_unreachable_peer_is_backed_off() {
        let rpc = |code| status_to_rpc::<openraft::error::Infallible>(tonic::Status::new(code, "x"));
        assert!(matches!(rpc(tonic::Code::Unavailable), RPCError::Unreachable(_)));
        for code in [tonic::Code::DeadlineExceeded, tonic::Code::Cancelled, tonic::Code::Internal] {
            assert!(matches!(rpc(code), RPCError::Network(_)), "{code:?}");
        }
        let backoff: Vec<Duration> =
            Connection { target: 2, addr: String::new(), pool: PeerPool::new(ClientTlsConfig::new()) }
                .backoff()
                .take(2)
                .collect();
        assert_eq!(backoff, vec![UNREACHABLE_BACKOFF; 2]);
    }
}
