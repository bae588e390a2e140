//! The recording workload: writers that submit unique payloads `{"writer", "seq", "n"}` with one
//! idempotency key per submission, retrying ambiguous failures (timeouts, refused connections,
//! 5xx, 429) with the same key on a random node, and hedging a request that has no answer after
//! `HEDGE_AFTER_MS` by sending it to a second node as well; and a reader doing linearizable reads
//! on random nodes. Every request and every answer goes into the history.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::json;

use crate::cluster::Cluster;
use crate::history::EventKind;
use crate::history::History;
use crate::limits::HEDGE_AFTER_MS;
use crate::limits::NODE_AVOID_MS;
use crate::limits::READ_PACE_MS;
use crate::limits::RETRY_BACKOFF_MS;
use crate::limits::SUBMISSION_GIVE_UP_MS;

/// The reader's generator task number (writers use their own numbers).
const READER_TASK: u64 = u64::MAX;

#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    pub writers: u64,
    pub seed: u64,
    /// Writer `w` writes to `datasets[w % len]`.
    pub datasets: Vec<String>,
    pub api_key: String,
}

/// The running workload; `stop` ends every task and waits for them.
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A generator for one task of the run, derived from the run's seed, so that every task's choices
/// depend only on the seed.
pub fn task_rng(seed: u64, task: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ task.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

impl Workload {
    pub fn start(cluster: Arc<Cluster>, history: Arc<History>, spec: WorkloadSpec) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..spec.writers {
            let (c, h, s, st) = (cluster.clone(), history.clone(), spec.clone(), stop.clone());
            tasks.push(tokio::spawn(async move { writer(c, h, s, w, st).await }));
        }
        let (c, h, s, st) = (cluster, history, spec, stop.clone());
        tasks.push(tokio::spawn(async move { reader(c, h, s, st).await }));
        Workload { stop, tasks }
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Statuses that guarantee nothing was stored and that a retry cannot change.
fn definite_refusal(status: u16) -> bool {
    matches!(status, 400 | 403 | 409 | 413 | 422)
}

/// How one round of a submission ended.
enum Round {
    /// Answered 201, or refused with a definite 4xx: the submission is done.
    Done,
    /// Every attempt of the round failed ambiguously: retry.
    Retry,
}

async fn writer(c: Arc<Cluster>, h: Arc<History>, spec: WorkloadSpec, w: u64, stop: Arc<AtomicBool>) {
    let mut rng = task_rng(spec.seed, w);
    let nodes = c.ids();
    let dataset = spec.datasets[(w as usize) % spec.datasets.len()].clone();
    // Nodes that just failed a request are avoided for a while, as a client behind a health-checking
    // load balancer would; without it, availability would measure how often a random pick hits the
    // dead node rather than the cluster.
    let mut avoid_until: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        seq += 1;
        let sub = Sub {
            op: (w << 32) | seq,
            writer: w,
            seq,
            n: rng.random_range(1..=1_000),
            dataset: dataset.clone(),
            key: format!("s{}-w{w}-{seq}", spec.seed),
        };
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            let round = round(&c, &h, &spec, &sub, &nodes, &mut rng, &mut avoid_until, &mut attempt).await;
            if matches!(round, Round::Done)
                || stop.load(Ordering::SeqCst)
                || started.elapsed() > Duration::from_millis(SUBMISSION_GIVE_UP_MS)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(RETRY_BACKOFF_MS)).await;
        }
    }
}

/// One submission: its payload `{"writer", "seq", "n"}` and idempotency key.
struct Sub {
    op: u64,
    writer: u64,
    seq: u64,
    n: u64,
    dataset: String,
    key: String,
}

/// A node not being avoided, other than `except`, at random; any node when all are avoided.
fn pick(nodes: &[u64], avoid_until: &BTreeMap<u64, Instant>, except: Option<u64>, rng: &mut StdRng) -> Option<u64> {
    let now = Instant::now();
    let others: Vec<u64> = nodes.iter().copied().filter(|n| Some(*n) != except).collect();
    let healthy: Vec<u64> = others.iter().copied().filter(|n| avoid_until.get(n).is_none_or(|t| *t <= now)).collect();
    let choice = if healthy.is_empty() { &others } else { &healthy };
    (!choice.is_empty()).then(|| choice[rng.random_range(0..choice.len())])
}

/// Sends the submission to one node; if no answer came within `HEDGE_AFTER_MS`, also to another
/// (same idempotency key: at most one of them stores it, the other is answered as a replay or
/// left). The first 201 or definite refusal ends the round and abandons the other attempt; an
/// ambiguous failure is recorded, its node avoided, and the round waits for the other attempt.
#[allow(clippy::too_many_arguments)]
async fn round(
    c: &Arc<Cluster>,
    h: &History,
    spec: &WorkloadSpec,
    sub: &Sub,
    nodes: &[u64],
    rng: &mut StdRng,
    avoid_until: &mut BTreeMap<u64, Instant>,
    attempt: &mut u32,
) -> Round {
    let body = json!({"writer": sub.writer, "seq": sub.seq, "n": sub.n});
    let mut inflight = tokio::task::JoinSet::new();
    let send = |node: u64, attempt: &mut u32, inflight: &mut tokio::task::JoinSet<_>| {
        *attempt += 1;
        h.record(EventKind::WriteInvoke {
            op: sub.op,
            writer: sub.writer,
            seq: sub.seq,
            n: sub.n,
            dataset: sub.dataset.clone(),
            idempotency_key: sub.key.clone(),
            node,
            attempt: *attempt,
        });
        let (c, dataset, api_key, body, key) =
            (c.clone(), sub.dataset.clone(), spec.api_key.clone(), body.clone(), sub.key.clone());
        inflight.spawn(async move { (node, c.post(node, &dataset, &api_key, &body, &key).await) });
    };
    let Some(first) = pick(nodes, avoid_until, None, rng) else { return Round::Retry };
    send(first, attempt, &mut inflight);
    let hedge = tokio::time::sleep(Duration::from_millis(HEDGE_AFTER_MS));
    tokio::pin!(hedge);
    let mut hedged = false;
    loop {
        tokio::select! {
            joined = inflight.join_next() => {
                let Some(Ok((node, answer))) = joined else { return Round::Retry };
                match answer {
                    Ok((201, v, replayed)) => {
                        let ids = v["ids"]
                            .as_array()
                            .map(|a| a.iter().filter_map(|i| i.as_str().map(str::to_string)).collect())
                            .unwrap_or_default();
                        let commit_index = v["commit_index"].as_u64().unwrap_or(0);
                        h.record(EventKind::WriteOk { op: sub.op, node, ids, commit_index, replayed });
                        return Round::Done;
                    }
                    Ok((s, v, _)) => {
                        let definite = definite_refusal(s);
                        h.record(EventKind::WriteFail { op: sub.op, node, status: Some(s), error: v.to_string(), definite });
                        if definite {
                            return Round::Done;
                        }
                    }
                    Err(e) => {
                        let error = if e.is_timeout() { format!("timeout: {e}") } else { e.to_string() };
                        h.record(EventKind::WriteFail { op: sub.op, node, status: None, error, definite: false });
                    }
                }
                avoid_until.insert(node, Instant::now() + Duration::from_millis(NODE_AVOID_MS));
                if inflight.is_empty() {
                    return Round::Retry;
                }
            }
            () = &mut hedge, if !hedged => {
                hedged = true;
                if let Some(other) = pick(nodes, avoid_until, Some(first), rng) {
                    send(other, attempt, &mut inflight);
                }
            }
        }
    }
}

async fn reader(c: Arc<Cluster>, h: Arc<History>, spec: WorkloadSpec, stop: Arc<AtomicBool>) {
    let mut rng = task_rng(spec.seed, READER_TASK);
    let nodes = c.ids();
    let mut pace = tokio::time::interval(Duration::from_millis(READ_PACE_MS));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut count = 0u64;
    while !stop.load(Ordering::SeqCst) {
        pace.tick().await;
        count += 1;
        let op = count;
        let node = nodes[rng.random_range(0..nodes.len())];
        let dataset = spec.datasets[rng.random_range(0..spec.datasets.len())].clone();
        h.record(EventKind::ReadInvoke { op, node, dataset: dataset.clone() });
        let path = format!("/api/v1/datasets/{dataset}/records?limit=1&consistency=linearizable");
        match c.admin(reqwest::Method::GET, node, &path, None).await {
            Ok((200, v)) => match (v["as_of_index"].as_u64(), v["total"].as_u64()) {
                (Some(as_of_index), Some(total)) => h.record(EventKind::ReadOk { op, node, as_of_index, total }),
                _ => h.record(EventKind::ReadFail { op, node, error: format!("malformed answer: {v}") }),
            },
            Ok((s, v)) => h.record(EventKind::ReadFail { op, node, error: format!("HTTP {s}: {v}") }),
            Err(e) => h.record(EventKind::ReadFail { op, node, error: e.to_string() }),
        }
    }
}
