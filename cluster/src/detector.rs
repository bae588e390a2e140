//! Fast failover when the leader's process is gone.
//!
//! In openraft 0.9 a follower campaigns only after the leader lease (`election_timeout_max`) *and* a
//! random election timeout have passed since the last heartbeat, and refuses others' votes during the
//! lease: about 1.2–1.6 s with the default timings. When the leader has crashed (its gRPC port
//! actively refuses connections: the process is gone, not slow or partitioned away), waiting the
//! extra random timeout buys nothing. The surviving voter with the longest log (ties: the lowest id)
//! then starts an election as soon as the lease has expired; the others keep openraft's own timer,
//! so they do not split the vote, and a lagging node (say, one just restarted) does not campaign with
//! a log the others must refuse.
//! Starting an election is always safe in Raft; at worst it is unnecessary.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use dtm_model::NodeId;
use dtm_model::Raft;
use openraft::ServerState;

use crate::network::PeerPool;

/// Elections the detector starts for one dead leader, and how long it waits for a leader after each.
const ELECTION_ATTEMPTS_MAX: u32 = 5;
const ELECTION_RETRY_AFTER: Duration = Duration::from_millis(150);

/// When this node last heard from a leader (an append-entries or heartbeat RPC, or a snapshot
/// chunk) or granted its vote to a candidate: Raft's election timer.
pub struct LastContact {
    start: Instant,
    last_ms: AtomicU64,
}

impl LastContact {
    pub fn new() -> Arc<Self> {
        Arc::new(LastContact { start: Instant::now(), last_ms: AtomicU64::new(0) })
    }

    pub fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn since(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// A connection attempt that the peer's kernel refuses: nobody listens on that port any more.
async fn refuses_connections(addr: &str) -> bool {
    match tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await {
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        _ => false,
    }
}

/// The last log index another voter reports, if it answers within a heartbeat or so.
async fn last_log_index_of(pool: &PeerPool, id: NodeId, addr: &str) -> Option<u64> {
    let mut client = pool.client(id, addr).ok()?;
    let ask = client.node_status(dtm_model::pb::NodeStatusRequest {});
    let answer = tokio::time::timeout(Duration::from_millis(150), ask).await.ok()?.ok()?;
    Some(answer.into_inner().last_log_index)
}

pub(crate) async fn run(
    raft: Raft,
    log: dtm_storage::LogStore,
    pool: Arc<PeerPool>,
    contact: Arc<LastContact>,
    id: NodeId,
    heartbeat: Duration,
    lease: Duration,
) {
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut handled_term = 0;
    loop {
        tick.tick().await;
        let m = raft.metrics().borrow().clone();
        let Some(leader) = m.current_leader else { continue };
        if m.state != ServerState::Follower || leader == id || m.current_term == handled_term {
            continue;
        }
        if log.catching_up() {
            // Not a candidate while it may have lost what it acknowledged (`LogStore::catching_up`).
            continue;
        }
        if contact.since() < heartbeat * 3 {
            continue;
        }
        let membership = m.membership_config.membership().clone();
        let Some(addr) = membership.get_node(&leader).map(|n| n.grpc_addr.clone()) else { continue };
        if !refuses_connections(&addr).await {
            continue;
        }
        // Only the survivor with the longest log (ties: the lowest id) campaigns early: it is the one
        // the others will vote for, and a single candidate does not split the vote.
        let mine = (m.last_log_index.unwrap_or(0), std::cmp::Reverse(id));
        let others = membership
            .voter_ids()
            .filter(|v| *v != leader && *v != id)
            .filter_map(|v| membership.get_node(&v).map(|n| (v, n.grpc_addr.clone())));
        let mut best = true;
        for (other, addr) in others {
            if let Some(index) = last_log_index_of(&pool, other, &addr).await
                && (index, std::cmp::Reverse(other)) > mine
            {
                best = false;
            }
        }
        if !best {
            continue;
        }
        handled_term = m.current_term;
        // The other voters stop honouring the old leader's lease `lease` after their last heartbeat,
        // which came at about the same time as ours.
        let wait = lease.saturating_sub(contact.since()) + heartbeat / 2;
        tokio::time::sleep(wait).await;
        // The other voters' last heartbeat may have come a little later than ours (CPU contention),
        // so a first election can still meet a lease: retry a few times, briefly, until a leader is
        // known. Each retry is an ordinary election at a higher term.
        for attempt in 1..=ELECTION_ATTEMPTS_MAX {
            let m = raft.metrics().borrow().clone();
            let leaderless = m.current_leader.is_none() || m.current_leader == Some(leader);
            if !leaderless || contact.since() < lease {
                break;
            }
            tracing::warn!(
                leader,
                term = m.current_term,
                attempt,
                "leader's port refuses connections; starting an election"
            );
            if let Err(e) = raft.trigger().elect().await {
                tracing::warn!(error = %e, "could not start an election");
                break;
            }
            let _ = raft
                .wait(Some(ELECTION_RETRY_AFTER))
                .metrics(|m| m.current_leader.is_some() && m.current_leader != Some(leader), "a new leader")
                .await;
        }
    }
}
