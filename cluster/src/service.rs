//! The server side of node-to-node gRPC. Every call must come from a peer that presented a
//! certificate signed by the cluster CA (the TLS layer has already checked the signature); a caller
//! without one is refused with `UNAUTHENTICATED`. Messages from peers are converted with checked
//! conversions: a malformed message is `INVALID_ARGUMENT`, never a panic.

use dtm_model::NodeId;
use dtm_model::Raft;
use dtm_model::pb;
use dtm_model::pb::raft_service_server::RaftService;
use dtm_model::pb::raft_service_server::RaftServiceServer;
use dtm_model::state;
use openraft::ChangeMembers;
use openraft::error::ClientWriteError;
use openraft::error::InstallSnapshotError;
use openraft::error::RaftError;
use prost::Message;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use std::sync::Arc;

use crate::detector::LastContact;
use crate::limits::GRPC_MESSAGE_BYTES_MAX;
use crate::limits::LEARNER_CATCH_UP_DEADLINE;

pub struct RaftRpc {
    raft: Raft,
    log: dtm_storage::LogStore,
    contact: Arc<LastContact>,
}

pub(crate) fn server(raft: Raft, log: dtm_storage::LogStore, contact: Arc<LastContact>) -> RaftServiceServer<RaftRpc> {
    RaftServiceServer::new(RaftRpc { raft, log, contact })
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
}

fn require_node_cert<T>(req: &Request<T>) -> Result<(), Status> {
    match req.peer_certs() {
        Some(certs) if !certs.is_empty() => Ok(()),
        _ => Err(Status::unauthenticated("node-to-node calls need a certificate signed by the cluster CA")),
    }
}

fn bad(e: dtm_model::DecodeError) -> Status {
    Status::invalid_argument(format!("malformed message: {e}"))
}

fn raft_err<E: std::fmt::Display>(e: RaftError<NodeId, E>) -> Status {
    match e {
        RaftError::Fatal(f) => Status::unavailable(format!("node stopped: {f}")),
        RaftError::APIError(e) => Status::failed_precondition(e.to_string()),
    }
}

fn write_err(e: RaftError<NodeId, ClientWriteError<NodeId, dtm_model::NodeInfo>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => Status::invalid_argument(e.to_string()),
        other => raft_err(other),
    }
}

#[tonic::async_trait]
impl RaftService for RaftRpc {
    async fn append_entries(
        &self,
        req: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        require_node_cert(&req)?;
        let r = req.into_inner();
        let entries =
            r.entries.into_iter().map(dtm_model::entry_from_pb).collect::<Result<Vec<_>, _>>().map_err(bad)?;
        let rpc = openraft::raft::AppendEntriesRequest {
            vote: dtm_model::required_vote(r.vote.as_ref()).map_err(bad)?,
            prev_log_id: dtm_model::opt_log_id_from_pb(&r.prev_log_id),
            entries,
            leader_commit: dtm_model::opt_log_id_from_pb(&r.leader_commit),
        };
        // What a success would prove this node holds: the leader's log up to here.
        let matched = rpc.entries.last().map(|e: &dtm_model::Entry| e.log_id).or(rpc.prev_log_id);
        let (leader_term, leader_commit) = (rpc.vote.leader_id.term, rpc.leader_commit);
        use openraft::raft::AppendEntriesResponse as A;
        use pb::append_entries_response::Result as R;
        let result = match self.raft.append_entries(rpc).await.map_err(raft_err)? {
            // Contact from a leader, as far as the crash detector is concerned.
            resp @ (A::Success | A::PartialSuccess(_) | A::Conflict) => {
                self.contact.touch();
                resp
            }
            other => other,
        };
        if matches!(result, A::Success) && self.log.catching_up() {
            // openraft answers an append only once it is flushed, so the log up to `matched` is on disk.
            match self.log.leader_contact_caught_up(leader_term, leader_commit, matched) {
                Ok(true) => tracing::info!(
                    matched = ?matched.map(|l| l.index),
                    "caught up with the leader after starting without data: this node votes again"
                ),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not record that this node caught up; it still does not vote")
                }
            }
        }
        let result = match result {
            A::Success => R::Success(pb::Blank {}),
            A::PartialSuccess(m) => R::PartialSuccess(pb::PartialSuccess { matching: dtm_model::opt_log_id_to_pb(&m) }),
            A::Conflict => R::Conflict(pb::Blank {}),
            A::HigherVote(v) => R::HigherVote(dtm_model::vote_to_pb(&v)),
        };
        Ok(Response::new(pb::AppendEntriesResponse { result: Some(result) }))
    }

    async fn request_vote(&self, req: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        require_node_cert(&req)?;
        // Amnesia guard: a node that started without data (new, wiped, or reset at start) may have
        // lost entries it acknowledged and votes it cast. If it granted votes it could help elect a
        // leader that lacks a committed write. It votes again once it holds the leader's log up to a
        // commit of the leader's own term (`LogStore::catching_up`); a log or a snapshot alone is not
        // enough. New members never need to vote while catching up: they join as learners.
        if self.log.catching_up() {
            tracing::warn!(
                node_id = self.raft.metrics().borrow().id,
                "refusing to vote: this node started without data and has not caught up with a leader yet"
            );
            return Err(Status::unavailable(
                "this node started without data and does not vote until it has caught up with a leader",
            ));
        }
        let r = req.into_inner();
        let rpc = openraft::raft::VoteRequest {
            vote: dtm_model::required_vote(r.vote.as_ref()).map_err(bad)?,
            last_log_id: dtm_model::opt_log_id_from_pb(&r.last_log_id),
        };
        let resp = self.raft.vote(rpc).await.map_err(raft_err)?;
        if resp.vote_granted {
            // Raft's election timer restarts when a vote is granted: this node waits for the
            // candidate it voted for instead of campaigning against it (`election.rs`).
            self.contact.touch();
        }
        Ok(Response::new(pb::VoteResponse {
            vote: Some(dtm_model::vote_to_pb(&resp.vote)),
            vote_granted: resp.vote_granted,
            last_log_id: dtm_model::opt_log_id_to_pb(&resp.last_log_id),
        }))
    }

    async fn install_snapshot(
        &self,
        req: Request<pb::InstallSnapshotRequest>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        require_node_cert(&req)?;
        let r = req.into_inner();
        let meta = r.meta.ok_or_else(|| bad(dtm_model::DecodeError::Missing("meta")))?;
        let vote = dtm_model::required_vote(r.vote.as_ref()).map_err(bad)?;
        let rpc = openraft::raft::InstallSnapshotRequest {
            vote,
            meta: dtm_model::snapshot_meta_from_pb(meta).map_err(bad)?,
            offset: r.offset,
            data: r.data,
            done: r.done,
        };
        use pb::install_snapshot_response::Result as R;
        let result = match self.raft.install_snapshot(rpc).await {
            Ok(resp) => {
                // A chunk accepted from the current leader is contact, as append-entries are.
                if resp.vote == vote {
                    self.contact.touch();
                }
                R::Vote(dtm_model::vote_to_pb(&resp.vote))
            }
            Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m))) => R::Mismatch(pb::SnapshotMismatch {
                expect_id: m.expect.id,
                expect_offset: m.expect.offset,
                got_id: m.got.id,
                got_offset: m.got.offset,
            }),
            Err(e) => return Err(raft_err(e)),
        };
        Ok(Response::new(pb::InstallSnapshotResponse { result: Some(result) }))
    }

    async fn propose(&self, req: Request<pb::ProposeRequest>) -> Result<Response<pb::ProposeResponse>, Status> {
        require_node_cert(&req)?;
        let cmd = state::Command::decode(req.into_inner().command.as_slice())
            .map_err(|e| Status::invalid_argument(format!("malformed command: {e}")))?;
        // No second hop: a node that is no longer leader says so and the follower retries.
        let resp = self.raft.client_write(cmd).await.map_err(write_err)?;
        Ok(Response::new(pb::ProposeResponse { response: resp.data.encode_to_vec(), log_index: resp.log_id.index }))
    }

    async fn read_index(&self, req: Request<pb::ReadIndexRequest>) -> Result<Response<pb::ReadIndexResponse>, Status> {
        require_node_cert(&req)?;
        let read = self.raft.ensure_linearizable().await.map_err(raft_err)?;
        Ok(Response::new(pb::ReadIndexResponse { read_index: read.map(|l| l.index).unwrap_or(0) }))
    }

    async fn add_learner(
        &self,
        req: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        require_node_cert(&req)?;
        let r = req.into_inner();
        let node = dtm_model::node_from_pb(r.node.ok_or_else(|| Status::invalid_argument("missing node"))?);
        let fut = crate::node::add_learner_once(&self.raft, r.node_id, node);
        let log_index = tokio::time::timeout(LEARNER_CATCH_UP_DEADLINE, fut)
            .await
            .map_err(|_| Status::deadline_exceeded("learner did not catch up in time"))?
            .map_err(write_err)?;
        Ok(Response::new(pb::MembershipResponse { log_index }))
    }

    async fn promote(&self, req: Request<pb::PromoteRequest>) -> Result<Response<pb::MembershipResponse>, Status> {
        require_node_cert(&req)?;
        let id = req.into_inner().node_id;
        let resp = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds(std::collections::BTreeSet::from([id])), true)
            .await
            .map_err(write_err)?;
        Ok(Response::new(pb::MembershipResponse { log_index: resp.log_id.index }))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        require_node_cert(&req)?;
        let index = crate::node::remove_member(&self.raft, req.into_inner().node_id).await.map_err(write_err)?;
        Ok(Response::new(pb::MembershipResponse { log_index: index }))
    }

    async fn pre_vote(&self, req: Request<pb::PreVoteRequest>) -> Result<Response<pb::PreVoteResponse>, Status> {
        require_node_cert(&req)?;
        let r = req.into_inner();
        let candidate_log = dtm_model::opt_log_id_from_pb(&r.last_log_id);
        Ok(Response::new(
            crate::election::answer(&self.raft, &self.log, &self.contact, r.candidate_id, candidate_log).await,
        ))
    }

    async fn node_status(
        &self,
        req: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        require_node_cert(&req)?;
        let m = self.raft.metrics().borrow().clone();
        Ok(Response::new(pb::NodeStatusResponse {
            node_id: m.id,
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            term: m.current_term,
            leader_id: m.current_leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            catching_up: self.log.catching_up(),
        }))
    }
}
