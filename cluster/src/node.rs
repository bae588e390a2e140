//! A node's membership in the Raft group: starting openraft on the sled store, writing a command
//! from any node (locally on the leader, forwarded over gRPC from a follower, retried across leader
//! changes within a deadline), linearizable read barriers, membership changes and cluster status.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use dtm_model::NodeId;
use dtm_model::NodeInfo;
use dtm_model::Raft;
use dtm_model::pb;
use dtm_model::state;
use dtm_storage::StateReader;
use dtm_storage::StoreOptions;
use openraft::ChangeMembers;
use openraft::Config;
use openraft::ServerState;
use openraft::SnapshotPolicy;
use openraft::error::CheckIsLeaderError;
use openraft::error::ClientWriteError;
use openraft::error::RaftError;
use prost::Message;
use serde::Serialize;

use crate::applier::DtmApplier;
use crate::batcher::Batcher;
use crate::detector::LastContact;
use crate::error::ClusterError;
use crate::limits::*;
use crate::network::Network;
use crate::network::PeerPool;
use crate::tls::NodeTls;

/// Raft timing and snapshot options. Safety-relevant, so written out and validated at start-up.
#[derive(Debug, Clone)]
pub struct RaftOptions {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A snapshot is built after this many log entries since the last one; the log behind a
    /// snapshot is then purged (keeping `logs_kept_after_snapshot` entries for slow followers).
    pub snapshot_after_logs: u64,
    pub logs_kept_after_snapshot: u64,
}

impl Default for RaftOptions {
    fn default() -> Self {
        RaftOptions {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 500,
            snapshot_after_logs: 5_000,
            logs_kept_after_snapshot: 1_000,
        }
    }
}

pub struct ClusterConfig {
    pub node_id: NodeId,
    pub node: NodeInfo,
    pub data_dir: PathBuf,
    pub tls: NodeTls,
    pub raft: RaftOptions,
    pub store: StoreOptions,
    pub group_commit: GroupCommitOptions,
}

/// What `dtm cluster status` and `GET /api/v1/cluster` show.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    /// The last log index this node has applied.
    pub applied_index: Option<u64>,
    pub members: Vec<MemberStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub site: String,
    pub http: String,
    pub grpc: String,
    pub voter: bool,
    /// Last applied log index as the member reports it; `None` when it did not answer.
    pub applied_index: Option<u64>,
    /// The member started without data (new, wiped or reset) and has not caught up with a leader
    /// yet, so it does not vote (`LogStore::catching_up`); `None` when it did not answer.
    pub catching_up: Option<bool>,
}

/// Writes commands from any node: the leader proposes, a follower forwards.
pub struct Writer {
    pub(crate) id: NodeId,
    pub(crate) raft: Raft,
    pub(crate) pool: Arc<PeerPool>,
    pub(crate) contact: Arc<LastContact>,
}

impl Writer {
    /// How long this node has been cut off from the cluster, when it is (see `CUT_OFF_AFTER`): a
    /// follower or learner that has had no append-entries from a leader, a candidate that has had
    /// none since the last leader, a leader without an acknowledgement from a quorum. A leader that
    /// is the only voter is never cut off.
    pub fn cut_off_for(&self) -> Option<Duration> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let silent = if m.state == ServerState::Leader {
            let mut voters = m.membership_config.membership().voter_ids();
            if voters.next() == Some(self.id) && voters.next().is_none() {
                return None;
            }
            // No acknowledgement yet: just elected, which took a quorum's votes.
            Duration::from_millis(m.millis_since_quorum_ack?)
        } else {
            self.contact.since()
        };
        (silent >= CUT_OFF_AFTER).then_some(silent)
    }

    /// Resolves once this node is cut off, with the error to answer.
    async fn until_cut_off(&self) -> ClusterError {
        loop {
            if let Some(d) = self.cut_off_for() {
                return ClusterError::CutOff { since_ms: d.as_millis() as u64 };
            }
            tokio::time::sleep(CUT_OFF_CHECK_INTERVAL).await;
        }
    }

    /// Runs `work` unless or until this node is cut off from the cluster: a request it cannot
    /// serve is answered 503 at once (or as soon as the node is cut off), so that the client and
    /// its load balancer take it to another node instead of waiting for `WRITE_DEADLINE`.
    pub(crate) async fn unless_cut_off<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, ClusterError>>,
    ) -> Result<T, ClusterError> {
        tokio::select! {
            r = work => r,
            e = self.until_cut_off() => Err(e),
        }
    }

    /// Proposes `cmd` and returns its result and log index once it is committed and applied on the
    /// leader (and, on a follower, applied locally or `LOCAL_APPLY_WAIT` has passed). Retries across
    /// leader changes within `WRITE_DEADLINE`; the client never sees "not leader". A node cut off
    /// from the cluster answers `CutOff` instead (see `CUT_OFF_AFTER`).
    pub async fn write(&self, cmd: state::Command) -> Result<(state::CommandResponse, u64), ClusterError> {
        self.unless_cut_off(self.write_within_deadline(cmd)).await
    }

    async fn write_within_deadline(&self, cmd: state::Command) -> Result<(state::CommandResponse, u64), ClusterError> {
        let idempotent = matches!(&cmd.kind, Some(state::command::Kind::Ingest(b))
            if b.submissions.iter().all(|s| !s.idempotency_key.is_empty()));
        let deadline = Instant::now() + WRITE_DEADLINE;
        let mut backoff = FORWARD_BACKOFF_MIN;
        for _ in 0..FORWARD_ATTEMPTS_MAX {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            match tokio::time::timeout(remaining, self.raft.client_write(cmd.clone())).await {
                Err(_) => break,
                Ok(Ok(resp)) => return Ok((resp.data, resp.log_id.index)),
                Ok(Err(RaftError::Fatal(f))) => return Err(ClusterError::Stopped(f.to_string())),
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                    return Err(ClusterError::BadRequest(e.to_string()));
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    if let (Some(leader), Some(node)) = (f.leader_id, f.leader_node)
                        && leader != self.id
                    {
                        let forwarded = if idempotent {
                            // A leader that stopped answering (paused, cut off) would hold this write
                            // to the deadline; once another leader is elected, send it there. Safe
                            // because every submission carries an idempotency key: if the old
                            // leader's copy commits too, `apply` answers it as a replay.
                            tokio::select! {
                                r = self.forward(leader, &node, &cmd, remaining) => Some(r),
                                () = self.until_leader_other_than(leader) => None,
                            }
                        } else {
                            Some(self.forward(leader, &node, &cmd, remaining).await)
                        };
                        match forwarded {
                            Some(Ok((resp, index))) => {
                                self.wait_applied(index, LOCAL_APPLY_WAIT).await;
                                return Ok((resp, index));
                            }
                            Some(Err(e)) => tracing::info!(leader, error = %e, "forwarding failed; retrying"),
                            None => {
                                tracing::info!(
                                    old_leader = leader,
                                    "a new leader was elected while forwarding; sending it there"
                                );
                                continue;
                            }
                        }
                    }
                }
            }
            self.wait_for_leader_change(backoff).await;
            backoff = (backoff * 2).min(FORWARD_BACKOFF_MAX);
        }
        Err(ClusterError::Unavailable)
    }

    /// Backs off for at most `max`, returning early when a leader other than the one we just tried
    /// becomes known (after an election), so that writes resume as soon as the cluster can take them.
    async fn wait_for_leader_change(&self, max: Duration) {
        let tried = self.raft.metrics().borrow().current_leader;
        let _ = self
            .raft
            .wait(Some(max))
            .metrics(|m| m.current_leader.is_some() && m.current_leader != tried, "a new leader")
            .await;
    }

    /// Resolves once a leader other than `leader` is known.
    async fn until_leader_other_than(&self, leader: NodeId) {
        let mut metrics = self.raft.metrics();
        while metrics.borrow().current_leader.is_none_or(|l| l == leader) {
            if metrics.changed().await.is_err() {
                // Raft stopped: the forward's own error or deadline ends the attempt.
                std::future::pending::<()>().await;
            }
        }
    }

    async fn forward(
        &self,
        leader: NodeId,
        node: &NodeInfo,
        cmd: &state::Command,
        timeout: Duration,
    ) -> Result<(state::CommandResponse, u64), ClusterError> {
        let mut client =
            self.pool.client(leader, &node.grpc_addr).map_err(|e| ClusterError::Internal(e.to_string()))?;
        let req = pb::ProposeRequest { command: cmd.encode_to_vec() };
        let resp = tokio::time::timeout(timeout, client.propose(req))
            .await
            .map_err(|_| ClusterError::Unavailable)?
            .map_err(|s| ClusterError::Internal(format!("forward to leader {leader}: {}", s.message())))?
            .into_inner();
        let decoded = state::CommandResponse::decode(resp.response.as_slice())
            .map_err(|e| ClusterError::Internal(format!("leader answered a malformed response: {e}")))?;
        Ok((decoded, resp.log_index))
    }

    /// Waits until this node has applied `index`, at most `timeout`. Returns whether it has.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        self.raft.wait(Some(timeout)).applied_index_at_least(Some(index), "wait for local apply").await.is_ok()
    }
}

/// One node of the cluster: the openraft instance, its store, and the write path.
pub struct ClusterNode {
    pub id: NodeId,
    pub info: NodeInfo,
    pub raft: Raft,
    pub reader: StateReader,
    /// Handles on this node's log and state machine for maintenance that runs beside Raft
    /// (re-encryption after a key rotation).
    stores: (dtm_storage::LogStore, dtm_storage::StateMachineStore),
    /// Every dataset's aggregate cells as of one applied index (see `aggregates.rs`).
    pub aggregates: Arc<crate::aggregates::AggregateView>,
    pub writer: Arc<Writer>,
    pub(crate) batcher: Batcher,
    pub(crate) pool: Arc<PeerPool>,
    contact: Arc<LastContact>,
}

impl ClusterNode {
    /// Opens the store in `cfg.data_dir` and starts the Raft instance. The node's gRPC service
    /// (`grpc_service`) must be served for it to take part in the cluster.
    pub async fn start(cfg: ClusterConfig) -> Result<Arc<Self>, ClusterError> {
        let raft_config = Config {
            cluster_name: "dtm".into(),
            heartbeat_interval: cfg.raft.heartbeat_interval_ms,
            election_timeout_min: cfg.raft.election_timeout_min_ms,
            election_timeout_max: cfg.raft.election_timeout_max_ms,
            install_snapshot_timeout: SNAPSHOT_RPC_DEADLINE_MS,
            max_payload_entries: APPEND_ENTRIES_MAX,
            // Snapshots are triggered by `snapshot_policy` below, which also weighs their cost.
            snapshot_policy: SnapshotPolicy::Never,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            max_in_snapshot_log_to_keep: cfg.raft.logs_kept_after_snapshot,
            // openraft purges only when at least this many entries can go; tie it to the snapshot
            // threshold so that a small threshold (tests, small deployments) really purges.
            purge_batch_size: (cfg.raft.snapshot_after_logs / 2).clamp(1, 256),
            replication_lag_threshold: 5_000,
            // Elections start from `election.rs`, after a pre-vote, not from openraft's timer.
            enable_elect: false,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::BadRequest(format!("raft options: {e}")))?;

        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| ClusterError::Internal(format!("data dir: {e}")))?;
        let applier = DtmApplier::default();
        let aggregates = applier.view.clone();
        let (log, sm, reader) = dtm_storage::open(&cfg.data_dir.join("store"), &cfg.store, Arc::new(applier))?;
        let stores = (log.clone(), sm.clone());
        let pool = PeerPool::new(cfg.tls.client_config());
        let raft = Raft::new(cfg.node_id, Arc::new(raft_config), Network { pool: pool.clone() }, log, sm)
            .await
            .map_err(|e| ClusterError::Stopped(e.to_string()))?;
        let contact = LastContact::new();
        let writer =
            Arc::new(Writer { id: cfg.node_id, raft: raft.clone(), pool: pool.clone(), contact: contact.clone() });
        cfg.group_commit.validate().map_err(ClusterError::BadRequest)?;
        let batcher = Batcher::start(writer.clone(), cfg.group_commit.clone());
        tokio::spawn(log_leader_changes(raft.clone()));
        tokio::spawn(snapshot_policy(raft.clone(), reader.clone(), cfg.raft.snapshot_after_logs));
        tokio::spawn(crate::election::run(
            raft.clone(),
            stores.0.clone(),
            pool.clone(),
            contact.clone(),
            cfg.node_id,
            Duration::from_millis(cfg.raft.heartbeat_interval_ms),
            Duration::from_millis(cfg.raft.election_timeout_min_ms),
            Duration::from_millis(cfg.raft.election_timeout_max_ms),
        ));
        tokio::spawn(crate::detector::run(
            raft.clone(),
            stores.0.clone(),
            pool.clone(),
            contact.clone(),
            cfg.node_id,
            Duration::from_millis(cfg.raft.heartbeat_interval_ms),
            Duration::from_millis(cfg.raft.election_timeout_max_ms),
        ));
        Ok(Arc::new(ClusterNode {
            id: cfg.node_id,
            info: cfg.node,
            raft,
            reader,
            stores,
            aggregates,
            writer,
            batcher,
            pool,
            contact,
        }))
    }

    /// The node-to-node gRPC service to serve on the gRPC port (mutual TLS).
    pub fn grpc_service(&self) -> pb::raft_service_server::RaftServiceServer<crate::service::RaftRpc> {
        crate::service::server(self.raft.clone(), self.stores.0.clone(), self.contact.clone())
    }

    /// Makes this fresh node the single voter of a new cluster. A node that already has state (a
    /// vote, a log or a membership) ignores the call and answers `false`.
    pub async fn bootstrap(&self) -> Result<bool, ClusterError> {
        if self.raft.is_initialized().await.map_err(|e| ClusterError::Stopped(e.to_string()))? {
            return Ok(false);
        }
        let members = std::collections::BTreeMap::from([(self.id, self.info.clone())]);
        // The first voter of a new cluster has nothing to catch up with (and votes for itself
        // without asking anyone). Should `initialize` fail, a restart finds the store empty and
        // marks it again.
        self.stores.0.bootstrapped().map_err(|e| ClusterError::Internal(e.to_string()))?;
        match self.raft.initialize(members).await {
            Ok(()) => Ok(true),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(false),
            Err(e) => Err(ClusterError::Internal(e.to_string())),
        }
    }

    /// Proposes a command (catalog changes and the like) and waits for its result.
    pub async fn write(&self, cmd: state::Command) -> Result<(state::CommandResponse, u64), ClusterError> {
        self.writer.write(cmd).await
    }

    /// Hands a submission to the group-commit batcher and waits for its committed result.
    pub async fn submit(&self, sub: state::Submission) -> Result<state::SubmissionResult, ClusterError> {
        self.batcher.submit(sub).await
    }

    /// Waits until this node has applied everything committed before the call (read index): reads
    /// that follow are linearizable. Returns the index the reads reflect at least.
    pub async fn linearizable_barrier(&self) -> Result<u64, ClusterError> {
        self.writer.unless_cut_off(self.read_index_barrier()).await
    }

    async fn read_index_barrier(&self) -> Result<u64, ClusterError> {
        let deadline = Instant::now() + WRITE_DEADLINE;
        let mut backoff = FORWARD_BACKOFF_MIN;
        while Instant::now() < deadline {
            let read_index = match self.raft.get_read_log_id().await {
                Ok((read, _)) => Some(read.map(|l| l.index).unwrap_or(0)),
                Err(RaftError::Fatal(f)) => return Err(ClusterError::Stopped(f.to_string())),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    match (f.leader_id, f.leader_node) {
                        (Some(l), Some(n)) if l != self.id => self.remote_read_index(l, &n).await.ok(),
                        _ => None,
                    }
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => None,
            };
            if let Some(index) = read_index {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if self.writer.wait_applied(index, remaining).await {
                    return Ok(index);
                }
                break;
            }
            self.writer.wait_for_leader_change(backoff).await;
            backoff = (backoff * 2).min(FORWARD_BACKOFF_MAX);
        }
        Err(ClusterError::Unavailable)
    }

    async fn remote_read_index(&self, leader: NodeId, node: &NodeInfo) -> Result<u64, ClusterError> {
        let mut c = self.pool.client(leader, &node.grpc_addr).map_err(|e| ClusterError::Internal(e.to_string()))?;
        let r = tokio::time::timeout(WRITE_DEADLINE, c.read_index(pb::ReadIndexRequest {}))
            .await
            .map_err(|_| ClusterError::Unavailable)?
            .map_err(|_| ClusterError::Unavailable)?;
        Ok(r.into_inner().read_index)
    }

    /// Resolves when this node's Raft core has stopped on a fatal error (a storage failure such as a
    /// full disk or a damaged store, or a broken invariant), with the error. A node in that state
    /// can neither vote nor serve, and never recovers by itself: the process must exit so that a
    /// supervisor (systemd, Kubernetes) restarts it, and the operator sees it.
    pub async fn fatal(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Err(e) = &metrics.borrow().running_state {
                return e.to_string();
            }
            if metrics.changed().await.is_err() {
                return "the Raft core is gone".to_string();
            }
        }
    }

    /// Re-seals with the current data key everything older keys sealed on this node, and retires
    /// those keys once nothing needs them (on the blocking pool: it reads the whole store).
    pub async fn reencrypt(&self) -> Result<dtm_storage::ReencryptReport, ClusterError> {
        let (log, sm) = self.stores.clone();
        tokio::task::spawn_blocking(move || sm.reencrypt(&log))
            .await
            .map_err(|e| ClusterError::Internal(format!("re-encryption task: {e}")))?
            .map_err(|e| ClusterError::Internal(format!("re-encryption: {e}")))
    }

    /// Makes the membership carry this node's current addresses when they differ (a node
    /// restored from a backup starts with none; a node may move). Only the leader can change the
    /// membership; answers whether a change was committed.
    pub async fn refresh_own_address(&self) -> Result<bool, ClusterError> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(self.id) {
            return Ok(false);
        }
        let known = metrics.membership_config.membership().get_node(&self.id).cloned();
        if known.as_ref() == Some(&self.info) {
            return Ok(false);
        }
        let nodes = std::collections::BTreeMap::from([(self.id, self.info.clone())]);
        self.raft
            .change_membership(openraft::ChangeMembers::SetNodes(nodes), false)
            .await
            .map_err(|e| ClusterError::Internal(format!("updating this node's addresses: {e}")))?;
        Ok(true)
    }

    /// The application tables as of one applied index, for a backup (writes go on meanwhile). A
    /// snapshot being built at the same moment holds the copy window: retried a bounded number of
    /// times.
    pub async fn backup_copy(&self) -> Result<(dtm_model::SnapshotMeta, Vec<dtm_storage::Pair>), ClusterError> {
        for attempt in 0..crate::limits::BACKUP_COPY_ATTEMPTS_MAX {
            let sm = self.stores.1.clone();
            let copied = tokio::task::spawn_blocking(move || sm.consistent_copy())
                .await
                .map_err(|e| ClusterError::Internal(format!("backup copy task: {e}")))?;
            match copied {
                Ok(c) => return Ok(c),
                Err(e) if attempt + 1 < crate::limits::BACKUP_COPY_ATTEMPTS_MAX => {
                    tracing::debug!(error = %e, attempt, "backup copy waits for a snapshot to finish");
                    tokio::time::sleep(crate::limits::BACKUP_COPY_RETRY_DELAY).await;
                }
                Err(e) => return Err(ClusterError::Internal(format!("backup copy: {e}"))),
            }
        }
        Err(ClusterError::Internal("backup copy: no attempt left".into()))
    }

    /// The last log index applied on this node.
    pub fn applied_index(&self) -> u64 {
        self.raft.metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0)
    }

    /// True once the node belongs to a cluster that has a leader it knows of.
    pub fn is_ready(&self) -> bool {
        self.not_ready_because().is_none()
    }

    /// Why this node cannot serve reads and take writes right now, if it cannot: not (yet) a
    /// member, no known leader, or cut off from the cluster (`CUT_OFF_AFTER`).
    pub fn not_ready_because(&self) -> Option<String> {
        let (member, leader) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (m.membership_config.membership().get_node(&self.id).is_some(), m.current_leader.is_some())
        };
        if !member {
            return Some("this node is not (yet) a member of the cluster".into());
        }
        if let Some(d) = self.writer.cut_off_for() {
            return Some(format!("this node has had no contact with the cluster's leader for {} ms", d.as_millis()));
        }
        (!leader).then(|| "this node knows no leader (an election is under way)".into())
    }

    fn leader(&self) -> Option<(NodeId, NodeInfo)> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        let node = m.membership_config.membership().get_node(&leader)?.clone();
        Some((leader, node))
    }

    /// Runs a membership change on the leader, locally or over gRPC, retrying across leader changes.
    async fn on_leader<L, LF, R, RF>(&self, local: L, remote: R) -> Result<u64, ClusterError>
    where
        L: Fn(Raft) -> LF,
        LF: std::future::Future<Output = Result<u64, RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>>>,
        R: Fn(pb::raft_service_client::RaftServiceClient<tonic::transport::Channel>) -> RF,
        RF: std::future::Future<Output = Result<tonic::Response<pb::MembershipResponse>, tonic::Status>>,
    {
        let deadline = Instant::now() + LEARNER_CATCH_UP_DEADLINE;
        let mut backoff = FORWARD_BACKOFF_MIN;
        for _ in 0..FORWARD_ATTEMPTS_MAX {
            if Instant::now() > deadline {
                break;
            }
            match self.leader() {
                Some((l, _)) if l == self.id => match local(self.raft.clone()).await {
                    Ok(i) => return Ok(i),
                    Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                        return Err(ClusterError::BadRequest(e.to_string()));
                    }
                    Err(RaftError::Fatal(f)) => return Err(ClusterError::Stopped(f.to_string())),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {}
                },
                Some((l, node)) => {
                    let client =
                        self.pool.client(l, &node.grpc_addr).map_err(|e| ClusterError::Internal(e.to_string()))?;
                    match remote(client).await {
                        Ok(r) => return Ok(r.into_inner().log_index),
                        Err(s) if s.code() == tonic::Code::InvalidArgument => {
                            return Err(ClusterError::BadRequest(s.message().to_string()));
                        }
                        Err(s) => {
                            tracing::debug!(leader = l, error = %s.message(), "membership change on leader failed; retrying")
                        }
                    }
                }
                None => {}
            }
            self.writer.wait_for_leader_change(backoff).await;
            backoff = (backoff * 2).min(FORWARD_BACKOFF_MAX);
        }
        Err(ClusterError::Unavailable)
    }

    /// Adds a running, empty node as a learner and waits until it has caught up with the log.
    pub async fn add_learner(&self, id: NodeId, node: NodeInfo) -> Result<u64, ClusterError> {
        let pbnode = dtm_model::node_to_pb(&node);
        self.on_leader(
            |raft| {
                let node = node.clone();
                async move { add_learner_once(&raft, id, node).await }
            },
            |mut c| {
                let req = pb::AddLearnerRequest { node_id: id, node: Some(pbnode.clone()) };
                async move { c.add_learner(req).await }
            },
        )
        .await
    }

    /// Promotes a learner to voter.
    pub async fn promote(&self, id: NodeId) -> Result<u64, ClusterError> {
        self.on_leader(
            |raft| async move {
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                    .await
                    .map(|r| r.log_id.index)
            },
            |mut c| async move { c.promote(pb::PromoteRequest { node_id: id }).await },
        )
        .await
    }

    /// Removes a member (voter or learner) from the cluster.
    pub async fn remove(&self, id: NodeId) -> Result<u64, ClusterError> {
        self.on_leader(
            |raft| async move { remove_member(&raft, id).await },
            |mut c| async move { c.remove_node(pb::RemoveNodeRequest { node_id: id }).await },
        )
        .await
    }

    /// The cluster as this node sees it, with each member's own applied index (asked over gRPC,
    /// briefly; a member that does not answer shows `None`).
    pub async fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let asks = membership.nodes().map(|(id, node)| {
            let id = *id;
            let client = if id == self.id { None } else { self.pool.client(id, &node.grpc_addr).ok() };
            async move {
                let mut c = client?;
                let ask = c.node_status(pb::NodeStatusRequest {});
                let r = tokio::time::timeout(Duration::from_millis(500), ask).await.ok()?.ok()?.into_inner();
                Some((r.applied_index, r.catching_up))
            }
        });
        let answers = futures::future::join_all(asks).await;
        let members = membership
            .nodes()
            .zip(answers)
            .map(|((id, node), answer)| MemberStatus {
                id: *id,
                site: node.site.clone(),
                http: node.http_addr.clone(),
                grpc: node.grpc_addr.clone(),
                voter: voters.contains(id),
                applied_index: if *id == self.id { m.last_applied.map(|l| l.index) } else { answer.map(|a| a.0) },
                catching_up: if *id == self.id { Some(self.stores.0.catching_up()) } else { answer.map(|a| a.1) },
            })
            .collect();
        ClusterStatus {
            node_id: self.id,
            leader_id: m.current_leader,
            term: m.current_term,
            applied_index: m.last_applied.map(|l| l.index),
            members,
        }
    }

    /// Stops Raft; the store is flushed by sled when the last handle drops.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

/// Adds `id` as a learner and waits until it has caught up with the log, unless it is already a
/// member at the same addresses: then it only waits. A retried request (say, from a client whose
/// own timeout ran out while a large snapshot streamed to the new node) must not append another
/// membership entry: openraft rebuilds a learner's replication on every one, aborting the snapshot
/// it was sending, so each retry started the catch-up again from nothing.
pub(crate) async fn add_learner_once(
    raft: &Raft,
    id: NodeId,
    node: NodeInfo,
) -> Result<u64, RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>> {
    let (me, known, membership_index, last_index) = {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        let mc = &m.membership_config;
        (m.id, mc.membership().get_node(&id) == Some(&node), mc.log_id().map_or(0, |l| l.index), m.last_log_index)
    };
    if !known {
        return raft.add_learner(id, node, true).await.map(|r| r.log_id.index);
    }
    let caught_up_or_deposed = raft
        .wait(Some(LEARNER_CATCH_UP_DEADLINE))
        .metrics(
            |m| {
                let matched = m.replication.as_ref().and_then(|r| r.get(&id).copied().flatten()).map(|l| l.index);
                m.current_leader != Some(me) || matched >= last_index
            },
            "the learner to catch up",
        )
        .await;
    match caught_up_or_deposed {
        Ok(m) if m.current_leader == Some(me) => Ok(membership_index),
        // Another node leads now (the caller asks it), or the deadline passed.
        _ => Err(RaftError::APIError(ClientWriteError::ForwardToLeader(openraft::error::ForwardToLeader::empty()))),
    }
}

pub(crate) async fn remove_member(
    raft: &Raft,
    id: NodeId,
) -> Result<u64, RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>> {
    let is_voter = raft.metrics().borrow().membership_config.membership().voter_ids().any(|v| v == id);
    let change = if is_voter {
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    raft.change_membership(change, false).await.map(|r| r.log_id.index)
}

/// Logs every change of leader or term as this node sees it: the operator's timeline of elections.
async fn log_leader_changes(raft: Raft) {
    let mut rx = raft.metrics();
    let mut last = (None, 0);
    loop {
        let now = {
            let m = rx.borrow_and_update();
            (m.current_leader, m.current_term)
        };
        if now != last {
            tracing::info!(leader = ?now.0, term = now.1, "leader changed");
            last = now;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Decides when to snapshot. A snapshot copies the whole state, so its cost grows with the data; a
/// fixed "every N entries" rule would eventually spend most of the machine on snapshots. One is
/// taken when at least `min_entries` entries *and* at least as many log bytes as the last snapshot's
/// size have been applied since it: snapshot work stays proportional to what is written, however
/// large the state grows (docs/benchmarks.md, "Snapshots").
async fn snapshot_policy(raft: Raft, reader: StateReader, min_entries: u64) {
    let mut tick = tokio::time::interval(SNAPSHOT_POLICY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: Option<(u64, Instant)> = None;
    loop {
        tick.tick().await;
        let (applied, snapshot) = {
            let m = raft.metrics().borrow().clone();
            if m.running_state.is_err() {
                return;
            }
            (m.last_applied.map(|l| l.index).unwrap_or(0), m.snapshot.map(|l| l.index).unwrap_or(0))
        };
        // A triggered snapshot that has not landed yet (openraft ignores triggers while building);
        // a trigger that came to nothing is retried after a while.
        if let Some((at, when)) = pending {
            if snapshot < at && when.elapsed() < SNAPSHOT_TRIGGER_RETRY {
                continue;
            }
            pending = None;
        }
        let stats = reader.snapshot_stats();
        if applied < snapshot.saturating_add(min_entries) || stats.log_bytes_since_snapshot() < stats.snapshot_bytes() {
            continue;
        }
        if raft.trigger().snapshot().await.is_err() {
            return;
        }
        pending = Some((applied, Instant::now()));
    }
}
