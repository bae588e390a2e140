//! Fast failover when the leader's process is gone.
//!
//! In openraft 0.9 a follower campaigns only after the leader lease (`election_timeout_max`) *and* a
//! random election timeout have passed since the last heartbeat, and refuses others' votes during the
//! lease: about 1.2–1.6 s with the default timings. When the leader has crashed (its gRPC port
//! actively refuses connections: the process is gone, not slow or partitioned away), waiting the
//! extra random timeout buys nothing. The lowest-id surviving voter then starts an election as soon
//! as the lease has expired; the others keep openraft's own timer, so they do not split the vote.
//! Starting an election is always safe in Raft; at worst it is unnecessary.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use dtm_model::NodeId;
use dtm_model::Raft;
use openraft::ServerState;

/// When this node last heard from a leader (an append-entries or heartbeat RPC).
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

pub(crate) async fn run(raft: Raft, contact: Arc<LastContact>, id: NodeId, heartbeat: Duration, lease: Duration) {
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
        if contact.since() < heartbeat * 3 {
            continue;
        }
        let membership = m.membership_config.membership();
        let first_survivor = membership.voter_ids().filter(|v| *v != leader).min();
        if first_survivor != Some(id) {
            continue;
        }
        let Some(addr) = membership.get_node(&leader).map(|n| n.grpc_addr.clone()) else { continue };
        if !refuses_connections(&addr).await {
            continue;
        }
        handled_term = m.current_term;
        // The other voters stop honouring the old leader's lease `lease` after their last heartbeat,
        // which came at about the same time as ours.
        let wait = lease.saturating_sub(contact.since()) + heartbeat / 2;
        tokio::time::sleep(wait).await;
        let still_gone = raft.metrics().borrow().current_leader == Some(leader) && contact.since() >= lease;
        if still_gone {
            tracing::warn!(leader, term = m.current_term, "leader's port refuses connections; starting an election");
            if let Err(e) = raft.trigger().elect().await {
                tracing::warn!(error = %e, "could not start an election");
            }
        }
    }
}
