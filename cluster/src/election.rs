//! Elections with a pre-vote (Raft thesis, section 9.6).
//!
//! openraft 0.9 has no pre-vote: a follower that stops hearing from the leader raises its term and
//! campaigns. When that follower was the one cut off (partitioned away, paused, stalled), the others
//! refuse it, but its higher term reaches the leader in the next append-entries answer and the leader
//! steps down: every healed fault would cost an election and a stall of writes. So openraft's own
//! election timer is off (`Config::enable_elect = false`) and this task starts elections instead:
//! once a voter has heard from no leader for the lease plus a random part of the election timeout,
//! it asks the other voters whether they would vote for it (`PreVote`, which changes nothing on
//! them) and campaigns only with a majority of yeses. A voter says yes when it has itself heard from
//! no leader for the lease (a leader: no quorum acknowledgement for the lease) and the candidate's
//! log is at least as up to date as its own, the same conditions under which openraft would grant
//! the real vote. The crash detector (`detector.rs`) still starts an early election when the
//! leader's process is gone.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use dtm_model::LogId;
use dtm_model::NodeId;
use dtm_model::Raft;
use dtm_model::pb;
use dtm_storage::LogStore;
use openraft::ServerState;
use openraft::storage::RaftLogStorage;

use crate::detector::LastContact;
use crate::network::PeerPool;

/// How long a candidate waits for each voter's pre-vote answer.
const PRE_VOTE_TIMEOUT: Duration = Duration::from_millis(300);

/// This node's last log id (`None`: empty; the last purged one when the log is empty after a
/// snapshot), or `None` when the log cannot be read.
async fn last_log_id(log: &LogStore) -> Option<Option<LogId>> {
    let mut log = log.clone();
    log.get_log_state().await.ok().map(|s| s.last_log_id)
}

/// What a voter knows when a pre-vote arrives.
struct Voter {
    leader: bool,
    /// As leader: since a quorum last acknowledged it (`None`: not yet measured).
    since_quorum_ack: Option<Duration>,
    /// Since the last append-entries or snapshot chunk from a leader.
    since_contact: Duration,
    /// Started without data and not caught up yet (`LogStore::catching_up`).
    catching_up: bool,
    last_log_id: Option<LogId>,
}

/// Would `voter` vote for a candidate whose last log id is `candidate_log`, under a leader lease of
/// `lease`? `Err` says why not.
fn decide(voter: &Voter, candidate_log: Option<LogId>, lease: Duration) -> Result<(), String> {
    if voter.catching_up {
        // As for real votes (the amnesia guard in `service.rs`).
        return Err("this node started without data and has not caught up with a leader yet".into());
    }
    if voter.leader {
        if voter.since_quorum_ack.is_none_or(|d| d < lease) {
            return Err("this node is the leader and a quorum acknowledges it".into());
        }
    } else if voter.since_contact < lease {
        return Err(format!("this node heard from the leader {} ms ago", voter.since_contact.as_millis()));
    }
    if candidate_log < voter.last_log_id {
        return Err("the candidate's log is behind this node's".into());
    }
    Ok(())
}

/// The answer to a candidate's pre-vote.
pub(crate) async fn answer(
    raft: &Raft,
    log: &LogStore,
    contact: &LastContact,
    candidate: NodeId,
    candidate_log: Option<LogId>,
) -> pb::PreVoteResponse {
    let lease = Duration::from_millis(raft.config().election_timeout_max);
    let (leader, since_quorum_ack) = {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        (m.state == ServerState::Leader, m.millis_since_quorum_ack.map(Duration::from_millis))
    };
    let Some(last_log_id) = last_log_id(log).await else {
        return pb::PreVoteResponse { granted: false, reason: "this node cannot read its log".into() };
    };
    let voter =
        Voter { leader, since_quorum_ack, since_contact: contact.since(), catching_up: log.catching_up(), last_log_id };
    match decide(&voter, candidate_log, lease) {
        Ok(()) => pb::PreVoteResponse { granted: true, reason: String::new() },
        Err(reason) => {
            tracing::debug!(candidate, %reason, "pre-vote refused");
            pb::PreVoteResponse { granted: false, reason }
        }
    }
}

/// A duration in `[0, span]`, at random.
fn jitter(span: Duration) -> Duration {
    let mut b = [0u8; 4];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        return span / 2;
    }
    let ms = span.as_millis() as u64;
    Duration::from_millis(if ms == 0 { 0 } else { u64::from(u32::from_le_bytes(b)) % (ms + 1) })
}

/// Asks one voter for its pre-vote. A voter that does not know the call (an older version during a
/// rolling upgrade) counts as a yes: it would have campaigned itself without asking.
async fn ask(pool: &PeerPool, id: NodeId, addr: &str, req: pb::PreVoteRequest) -> (NodeId, Result<bool, String>) {
    let mut client = match pool.client(id, addr) {
        Ok(c) => c,
        Err(e) => return (id, Err(e.to_string())),
    };
    match tokio::time::timeout(PRE_VOTE_TIMEOUT, client.pre_vote(req)).await {
        Err(_) => (id, Err("no answer in time".into())),
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => (id, Ok(true)),
        Ok(Err(s)) => (id, Err(s.message().to_string())),
        Ok(Ok(r)) => {
            let r = r.into_inner();
            if !r.granted {
                tracing::debug!(voter = id, reason = %r.reason, "pre-vote refused");
            }
            (id, Ok(r.granted))
        }
    }
}

/// The election timer: runs for the life of the node.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    raft: Raft,
    log: LogStore,
    pool: Arc<PeerPool>,
    contact: Arc<LastContact>,
    id: NodeId,
    heartbeat: Duration,
    timeout_min: Duration,
    timeout_max: Duration,
) {
    let lease = timeout_max;
    let spread = timeout_max.saturating_sub(timeout_min);
    let mut last_leader: Option<NodeId> = None;
    let mut timeout = lease + jitter(spread);
    // Pre-votes change nothing on the voters, so a lost one is asked again soon; after an election
    // was started, the next waits a whole randomised timeout (as Raft's candidates do).
    let mut next_try = Instant::now();
    let mut tick = tokio::time::interval(heartbeat / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (state, leader, voters, configs) = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            let voters: Vec<(NodeId, String)> = membership
                .voter_ids()
                .map(|v| (v, membership.get_node(&v).map(|n| n.grpc_addr.clone()).unwrap_or_default()))
                .collect();
            (m.state, m.current_leader, voters, membership.get_joint_config().clone())
        };
        if state == ServerState::Leader || !voters.iter().any(|(v, _)| *v == id) {
            continue;
        }
        if leader.is_some() && leader != last_leader {
            // A new leader: this node's turn when it goes silent (see `stagger`).
            last_leader = leader;
            timeout = lease + stagger(id, last_leader, &voters, spread);
        }
        if contact.since() < timeout || Instant::now() < next_try {
            continue;
        }
        if log.catching_up() {
            // A candidate votes for itself: a node that started without data does not stand either
            // (the amnesia guard, `LogStore::catching_up`).
            continue;
        }
        let Some(mine) = last_log_id(&log).await else { continue };
        let req = pb::PreVoteRequest { candidate_id: id, last_log_id: dtm_model::opt_log_id_to_pb(&mine) };
        // Count the answers as they come: a hung voter (the very leader that went silent, often)
        // must not hold the decision to its timeout once a majority said yes.
        let mut asks: futures::stream::FuturesUnordered<_> =
            voters.iter().filter(|(v, _)| *v != id).map(|(v, addr)| ask(&pool, *v, addr, req)).collect();
        // A quorum as openraft counts it: a majority of every configuration (two during a
        // membership change), so a pre-vote never wins an election openraft cannot.
        let mut granted = std::collections::BTreeSet::from([id]);
        let mut refusals = Vec::new();
        while !is_quorum(&configs, &granted) {
            let Some((voter, answer)) = futures::StreamExt::next(&mut asks).await else { break };
            match answer {
                Ok(true) => {
                    granted.insert(voter);
                }
                other => refusals.push((voter, other)),
            }
        }
        let yes = granted.len();
        if !is_quorum(&configs, &granted) {
            tracing::debug!(yes, ?refusals, "pre-vote lost; not campaigning");
            next_try = Instant::now() + heartbeat;
            continue;
        }
        tracing::info!(yes, voters = voters.len(), "pre-vote won; starting an election");
        if let Err(e) = raft.trigger().elect().await {
            tracing::warn!(error = %e, "could not start an election");
            return;
        }
        next_try = Instant::now() + lease + jitter(spread);
    }
}

/// Whether `granted` holds a majority of every configuration in `configs`.
fn is_quorum(configs: &[std::collections::BTreeSet<NodeId>], granted: &std::collections::BTreeSet<NodeId>) -> bool {
    configs.iter().all(|c| c.iter().filter(|v| granted.contains(v)).count() * 2 > c.len())
}

/// How long after the lease this voter waits before its first pre-vote once the leader went
/// silent: the voters other than the silent leader take turns by id, half the election timeout's
/// spread apart, each with a little randomness. The first in line usually wins at once (a pre-vote
/// costs nothing when it loses), instead of every voter waiting a random part of the whole spread,
/// so a hung leader is replaced about a fifth of a second sooner on average.
fn stagger(id: NodeId, leader: Option<NodeId>, voters: &[(NodeId, String)], spread: Duration) -> Duration {
    let mut others: Vec<NodeId> = voters.iter().map(|(v, _)| *v).filter(|v| Some(*v) != leader).collect();
    others.sort_unstable();
    let rank = others.iter().position(|v| *v == id).unwrap_or(0) as u32;
    spread / 2 * rank + jitter(spread / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(800);

    fn log_id(term: u64, index: u64) -> Option<LogId> {
        Some(LogId::new(openraft::CommittedLeaderId::new(term, 1), index))
    }

    fn follower(since_contact_ms: u64, last: Option<LogId>) -> Voter {
        Voter {
            leader: false,
            since_quorum_ack: None,
            since_contact: Duration::from_millis(since_contact_ms),
            catching_up: false,
            last_log_id: last,
        }
    }

    #[test]
    fn a_follower_that_hears_its_leader_refuses() {
        assert!(decide(&follower(100, log_id(2, 10)), log_id(2, 10), LEASE).is_err());
        assert!(decide(&follower(799, log_id(2, 10)), log_id(3, 20), LEASE).is_err());
    }

    #[test]
    fn a_follower_without_a_leader_grants_a_candidate_at_least_as_up_to_date() {
        assert!(decide(&follower(800, log_id(2, 10)), log_id(2, 10), LEASE).is_ok());
        assert!(decide(&follower(5_000, log_id(2, 10)), log_id(2, 11), LEASE).is_ok());
        assert!(decide(&follower(5_000, log_id(2, 10)), log_id(3, 1), LEASE).is_ok(), "a higher term wins");
        assert!(decide(&follower(5_000, log_id(2, 10)), log_id(2, 9), LEASE).is_err(), "a shorter log");
        assert!(decide(&follower(5_000, log_id(3, 1)), log_id(2, 50), LEASE).is_err(), "an older term");
        assert!(decide(&follower(5_000, log_id(2, 10)), None, LEASE).is_err(), "an empty candidate");
    }

    #[test]
    fn a_live_leader_refuses_and_one_without_its_quorum_grants() {
        let mut leader = follower(60_000, log_id(2, 10));
        leader.leader = true;
        leader.since_quorum_ack = Some(Duration::from_millis(50));
        assert!(decide(&leader, log_id(2, 10), LEASE).is_err());
        leader.since_quorum_ack = None;
        assert!(decide(&leader, log_id(2, 10), LEASE).is_err(), "just elected");
        leader.since_quorum_ack = Some(Duration::from_millis(3_000));
        assert!(decide(&leader, log_id(2, 10), LEASE).is_ok());
    }

    #[test]
    fn voters_take_turns_by_id_after_the_silent_leader() {
        let voters: Vec<(NodeId, String)> = [1, 2, 3].iter().map(|v| (*v, String::new())).collect();
        let spread = Duration::from_millis(400);
        for _ in 0..20 {
            let first = stagger(1, Some(3), &voters, spread);
            let second = stagger(2, Some(3), &voters, spread);
            assert!(first <= Duration::from_millis(100), "{first:?}");
            assert!(second >= Duration::from_millis(200) && second <= Duration::from_millis(300), "{second:?}");
        }
    }

    #[test]
    fn a_pre_vote_needs_a_majority_of_every_configuration() {
        use std::collections::BTreeSet;
        let one = vec![BTreeSet::from([1, 2, 3])];
        assert!(is_quorum(&one, &BTreeSet::from([1, 3])));
        assert!(!is_quorum(&one, &BTreeSet::from([3])));
        // Removing node 1 while node 2 is down: {1,2,3} and {2,3} both need a majority.
        let joint = vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([2, 3])];
        assert!(!is_quorum(&joint, &BTreeSet::from([1, 3])));
        assert!(is_quorum(&joint, &BTreeSet::from([2, 3])));
    }

    #[test]
    fn a_node_catching_up_never_grants() {
        let mut v = follower(60_000, None);
        v.catching_up = true;
        assert!(decide(&v, log_id(2, 10), LEASE).is_err());
        // Not even with a log of its own that the candidate's is ahead of.
        let mut v = follower(60_000, log_id(2, 5));
        v.catching_up = true;
        assert!(decide(&v, log_id(2, 10), LEASE).is_err());
    }
}
