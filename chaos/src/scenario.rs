//! A scenario run: start a cluster, load it with the recording workload, inject faults on the
//! seeded schedule, heal, read every node's final state into the history, check it, and write
//! `history.jsonl`, `report.json` and the node logs to the output directory.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use rand::Rng;
use serde::Serialize;
use serde_json::json;

use crate::checker;
use crate::checker::Verdict;
use crate::cluster::Cluster;
use crate::cluster::ClusterOptions;
use crate::cluster::eventually;
use crate::error::ChaosError;
use crate::error::Result;
use crate::faults;
use crate::faults::FaultKind;
use crate::history::Digest;
use crate::history::Event;
use crate::history::EventKind;
use crate::history::History;
use crate::history::StoredRecord;
use crate::limits::AVAILABILITY_WINDOW_MS;
use crate::limits::FAULT_HOLD_MS_MAX;
use crate::limits::FAULT_HOLD_MS_MIN;
use crate::limits::FAULT_INTERVAL_MS_SCENARIO;
use crate::limits::FAULT_INTERVAL_MS_SOAK;
use crate::limits::HEAL_TIMEOUT_MS;
use crate::limits::LOGS_KEPT_AFTER_SNAPSHOT;
use crate::limits::POLL_INTERVAL_MS;
use crate::limits::SNAPSHOT_AFTER_LOGS;
use crate::limits::WARMUP_ACKS_MIN;
use crate::limits::WARMUP_TIMEOUT_MS;
use crate::limits::WRITERS_MAX;
use crate::workload::Workload;
use crate::workload::WorkloadSpec;
use crate::workload::task_rng;

/// The dataset with a natural key (a double store would show as a duplicate outcome) and the one
/// without (a double store would show as a second record).
pub const DATASET_KEYED: &str = "chaos";
pub const DATASET_PLAIN: &str = "chaos_raw";
/// Size of each node's tmpfs data dir in the disk-full scenario.
const DISK_FULL_TMPFS_MIB: u64 = 256;
/// The generator task that schedules faults (workload tasks use the writer numbers).
const FAULT_TASK: u64 = u64::MAX - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// The same fault again and again.
    Fault(FaultKind),
    /// A fault chosen by the seed from every kind this machine supports.
    Soak,
    /// No faults at all (the baseline, and the planted-bug check).
    Steady,
}

impl Scenario {
    pub fn parse(s: &str) -> Option<Scenario> {
        match s {
            "soak" => Some(Scenario::Soak),
            "steady" => Some(Scenario::Steady),
            other => FaultKind::parse(other).map(Scenario::Fault),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fault(k) => k.name(),
            Scenario::Soak => "soak",
            Scenario::Steady => "steady",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub scenario: Scenario,
    /// How long faults are injected (the workload runs a little longer: warm-up and heal).
    pub duration: Duration,
    pub seed: u64,
    pub writers: u64,
    pub nodes: u64,
    pub out_dir: PathBuf,
    /// Start the nodes with `DTM_PLANTED_BUG=ack-without-commit`.
    pub planted_bug: bool,
    /// Time between the starts of two faults; default by scenario.
    pub fault_interval: Option<Duration>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub kind: FaultKind,
    pub nodes: Vec<u64>,
    pub injected_at_ms: u64,
    pub healed_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Availability {
    pub windows: u64,
    pub writable_windows: u64,
    pub fraction: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub duration_s: u64,
    pub nodes: u64,
    pub writers: u64,
    pub namespaces: bool,
    pub planted_bug: bool,
    pub faults: Vec<FaultRecord>,
    /// Notes the healing recorded (a node that exited or got stuck on a full disk).
    pub heal_notes: Vec<String>,
    /// Faults that could not be injected or healed, with the reason.
    pub fault_errors: Vec<String>,
    pub availability: Availability,
    pub verdict: Verdict,
    pub history: PathBuf,
    pub elapsed_s: u64,
}

impl Report {
    pub fn render(&self) -> String {
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &self.faults {
            *kinds.entry(f.kind.name()).or_default() += 1;
        }
        format!(
            "scenario {} seed {} ({} s of faults, {} nodes, {} writers, namespaces: {}, planted bug: {})\n\
             faults injected: {} {kinds:?}{}{}\n\
             writable one-second windows: {}/{} ({:.1}%)\n{}history: {}\n",
            self.scenario,
            self.seed,
            self.duration_s,
            self.nodes,
            self.writers,
            self.namespaces,
            self.planted_bug,
            self.faults.len(),
            if self.heal_notes.is_empty() { String::new() } else { format!("\nhealing notes: {:?}", self.heal_notes) },
            if self.fault_errors.is_empty() {
                String::new()
            } else {
                format!("\nfault errors: {:?}", self.fault_errors)
            },
            self.availability.writable_windows,
            self.availability.windows,
            self.availability.fraction * 100.0,
            self.verdict.render(),
            self.history.display()
        )
    }
}

/// The fraction of `AVAILABILITY_WINDOW_MS` windows in `[from_ms, to_ms)` in which at least one
/// write was acknowledged.
pub fn availability(events: &[Event], from_ms: u64, to_ms: u64) -> Availability {
    let windows = to_ms.saturating_sub(from_ms) / AVAILABILITY_WINDOW_MS;
    if windows == 0 {
        return Availability::default();
    }
    let mut writable = vec![false; windows as usize];
    for e in events {
        if matches!(e.kind, EventKind::WriteOk { .. }) && e.t_ms >= from_ms {
            let w = ((e.t_ms - from_ms) / AVAILABILITY_WINDOW_MS) as usize;
            if let Some(slot) = writable.get_mut(w) {
                *slot = true;
            }
        }
    }
    let writable_windows = writable.iter().filter(|w| **w).count() as u64;
    Availability { windows, writable_windows, fraction: writable_windows as f64 / windows as f64 }
}

fn acknowledged(h: &History) -> usize {
    h.events().iter().filter(|e| matches!(e.kind, EventKind::WriteOk { .. })).count()
}

pub async fn run(opts: RunOptions) -> Result<Report> {
    let began = Instant::now();
    if opts.writers == 0 || opts.writers > WRITERS_MAX {
        return Err(ChaosError::Options(format!("{} writers: choose 1–{WRITERS_MAX}", opts.writers)));
    }
    let namespaces_ok = crate::net::available();
    let namespaces = match opts.scenario {
        Scenario::Fault(k) if k.needs_namespaces() => {
            namespaces_ok.clone().map_err(|e| ChaosError::Options(format!("{}: {e}", k.name())))?;
            true
        }
        Scenario::Soak => namespaces_ok.is_ok(),
        _ => false,
    };
    if let (Scenario::Soak, Err(e)) = (opts.scenario, &namespaces_ok) {
        eprintln!("soak without partitions: {e}");
    }
    let soak_kinds: Vec<FaultKind> =
        FaultKind::ALL.into_iter().filter(|k| k.in_soak() && (namespaces || !k.needs_namespaces())).collect();
    let tmpfs_mib = match opts.scenario {
        Scenario::Fault(k) if k.needs_tmpfs() => Some(DISK_FULL_TMPFS_MIB),
        _ => None,
    };
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| ChaosError::io("creating the output dir", &opts.out_dir, e))?;
    let history = Arc::new(History::create(&opts.out_dir.join("history.jsonl"))?);

    let serve_args = vec![
        "--snapshot-after-logs".to_string(),
        SNAPSHOT_AFTER_LOGS.to_string(),
        "--logs-kept-after-snapshot".into(),
        LOGS_KEPT_AFTER_SNAPSHOT.to_string(),
    ];
    let env =
        if opts.planted_bug { vec![("DTM_PLANTED_BUG".to_string(), "ack-without-commit".to_string())] } else { vec![] };
    let cluster =
        Arc::new(Cluster::start(ClusterOptions { nodes: opts.nodes, namespaces, env, serve_args, tmpfs_mib }).await?);
    let outcome = drive(&cluster, &history, &opts, &soak_kinds).await;
    if let Err(e) = cluster.save_logs(&opts.out_dir) {
        eprintln!("could not save the node logs: {e}");
    }
    let (faults, fault_errors, window) = outcome?;
    let events = history.finish()?;
    let verdict = checker::check(&events);
    let report = Report {
        scenario: opts.scenario.name().into(),
        seed: opts.seed,
        duration_s: opts.duration.as_secs(),
        nodes: opts.nodes,
        writers: opts.writers,
        namespaces,
        planted_bug: opts.planted_bug,
        faults,
        heal_notes: events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Note { detail, .. } => Some(detail.clone()),
                _ => None,
            })
            .collect(),
        fault_errors,
        availability: availability(&events, window.0, window.1),
        verdict,
        history: history.path().to_path_buf(),
        elapsed_s: began.elapsed().as_secs(),
    };
    let report_path = opts.out_dir.join("report.json");
    let text = serde_json::to_string_pretty(&report)
        .map_err(|e| ChaosError::Malformed { what: "report".into(), detail: e.to_string() })?;
    std::fs::write(&report_path, text).map_err(|e| ChaosError::io("writing the report", &report_path, e))?;
    Ok(report)
}

type Driven = (Vec<FaultRecord>, Vec<String>, (u64, u64));

/// Setup, workload, faults, healing and the final read; answers the faults, the fault errors and
/// the workload's time window.
async fn drive(c: &Arc<Cluster>, h: &Arc<History>, opts: &RunOptions, soak_kinds: &[FaultKind]) -> Result<Driven> {
    c.wait_leader().await?;
    let schema = json!({"type": "object", "required": ["writer", "seq", "n"], "properties": {
        "writer": {"type": "integer"}, "seq": {"type": "integer"}, "n": {"type": "integer"}}});
    let keyed = json!({"id": DATASET_KEYED, "title": DATASET_KEYED, "schema": schema,
                       "key": ["writer", "seq"], "dimensions": ["writer"], "measures": {"n": "sum"}});
    let plain = json!({"id": DATASET_PLAIN, "title": DATASET_PLAIN, "schema": schema,
                       "dimensions": ["writer"], "measures": {"n": "sum"}});
    c.create_dataset(1, keyed).await?;
    c.create_dataset(1, plain).await?;
    let api_key = c.create_source(1, "chaos").await?;
    let spec = WorkloadSpec {
        writers: opts.writers,
        seed: opts.seed,
        datasets: vec![DATASET_KEYED.into(), DATASET_PLAIN.into()],
        api_key,
    };
    let from_ms = h.now_ms();
    let workload = Workload::start(c.clone(), h.clone(), spec);
    let warm = eventually("the warm-up writes", WARMUP_TIMEOUT_MS, || async {
        (acknowledged(h) >= WARMUP_ACKS_MIN).then_some(())
    })
    .await;
    if let Err(e) = warm {
        workload.stop().await;
        return Err(e);
    }

    let mut rng = task_rng(opts.seed, FAULT_TASK);
    let interval = opts.fault_interval.unwrap_or(Duration::from_millis(match opts.scenario {
        Scenario::Soak => FAULT_INTERVAL_MS_SOAK,
        _ => FAULT_INTERVAL_MS_SCENARIO,
    }));
    // Faults are held 4-9 s; a faster schedule (`--fault-interval` under 12 s) holds each for at
    // most three quarters of its slot, so that it is healed before the next one starts.
    let slot_ms = interval.as_millis() as u64;
    let hold_max_ms = FAULT_HOLD_MS_MAX.min(slot_ms * 3 / 4);
    let hold_min_ms = FAULT_HOLD_MS_MIN.min(hold_max_ms / 2);
    let end = Instant::now() + opts.duration;
    let mut faults = Vec::new();
    let mut errors = Vec::new();
    loop {
        let slot = Instant::now();
        let hold = Duration::from_millis(rng.random_range(hold_min_ms..=hold_max_ms));
        let kind = match opts.scenario {
            Scenario::Fault(k) => Some(k),
            Scenario::Soak => Some(soak_kinds[rng.random_range(0..soak_kinds.len())]),
            Scenario::Steady => None,
        };
        let Some(kind) = kind.filter(|_| slot + hold < end) else {
            tokio::time::sleep_until(end.into()).await;
            break;
        };
        let injected_at_ms = h.now_ms();
        match faults::inject(c, kind, &mut rng, h).await {
            Ok(f) => {
                eprintln!("[{:>6} ms] {} on {:?}, held {} ms", injected_at_ms, kind.name(), f.nodes, hold.as_millis());
                // Holding the fault is the schedule, not a wait for a condition.
                tokio::time::sleep(hold).await;
                let healed = faults::heal(c, &f, h).await;
                let healed_at_ms = match healed {
                    Ok(()) => Some(h.now_ms()),
                    Err(e) => {
                        errors.push(format!("healing {} on {:?}: {e}", kind.name(), f.nodes));
                        None
                    }
                };
                faults.push(FaultRecord { kind, nodes: f.nodes, injected_at_ms, healed_at_ms });
            }
            Err(e) => errors.push(format!("injecting {}: {e}", kind.name())),
        }
        let next = slot + interval;
        if next >= end {
            tokio::time::sleep_until(end.into()).await;
            break;
        }
        tokio::time::sleep_until(next.into()).await;
    }
    let to_ms = h.now_ms();
    workload.stop().await;
    if let Err(e) = faults::heal_all(c, h).await {
        errors.push(format!("healing everything: {e}"));
    }
    final_state(c, h).await;
    Ok((faults, errors, (from_ms, to_ms)))
}

/// Per dataset: the records, the digest, and every log index the reads were answered at.
type NodeFinal = std::result::Result<BTreeMap<String, (Vec<StoredRecord>, Digest, BTreeSet<u64>)>, String>;

async fn read_node(c: &Cluster, node: u64) -> NodeFinal {
    let mut out = BTreeMap::new();
    for ds in [DATASET_KEYED, DATASET_PLAIN] {
        let (records, mut indexes) = c.records_at(node, ds).await.map_err(|e| e.to_string())?;
        let records = records
            .iter()
            .map(|r| StoredRecord {
                id: r["id"].as_str().unwrap_or_default().to_string(),
                writer: r["data"]["writer"].as_u64(),
                seq: r["data"]["seq"].as_u64(),
                n: r["data"]["n"].as_u64(),
            })
            .collect();
        let (as_of_index, sha256) = c.digest(node, ds).await.map_err(|e| e.to_string())?;
        indexes.insert(as_of_index);
        out.insert(ds.to_string(), (records, Digest { as_of_index, sha256 }, indexes));
    }
    Ok(out)
}

/// Reads every node until all are readable and every read (each page of records, each digest) of
/// every node was answered at one log index, or until `HEAL_TIMEOUT_MS`; then records what was
/// read. The workload has stopped, but a submission whose client gave up may still be committed
/// after the heal, so one round can straddle a commit: it is then read again.
async fn final_state(c: &Cluster, h: &History) {
    let deadline = Instant::now() + Duration::from_millis(HEAL_TIMEOUT_MS);
    let mut last: BTreeMap<u64, NodeFinal> = BTreeMap::new();
    loop {
        last.clear();
        for id in c.ids() {
            last.insert(id, read_node(c, id).await);
        }
        let mut indexes = BTreeSet::new();
        let mut readable = true;
        for state in last.values() {
            match state {
                Ok(s) => indexes.extend(s.values().flat_map(|(_, _, i)| i.iter().copied())),
                Err(_) => readable = false,
            }
        }
        // The log never stands still for long (every read is audited, and the audit events are
        // committed within a second), so a round whose pages were answered at several indexes is
        // still settled when every node holds the same records and digests: nothing that changes
        // them was committed in between.
        let same: BTreeSet<Vec<(&String, Vec<&str>, &str)>> = last
            .values()
            .filter_map(|s| s.as_ref().ok())
            .map(|s| {
                s.iter()
                    .map(|(ds, (r, d, _))| (ds, r.iter().map(|x| x.id.as_str()).collect(), d.sha256.as_str()))
                    .collect()
            })
            .collect();
        if (readable && (indexes.len() == 1 || same.len() == 1)) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
    let readable: Vec<u64> = last.iter().filter(|(_, s)| s.is_ok()).map(|(n, _)| *n).collect();
    for (node, state) in last {
        match state {
            Ok(datasets) => {
                for (dataset, (records, digest, _)) in datasets {
                    h.record(EventKind::FinalState { node, dataset, records, digest: Some(digest) });
                }
            }
            Err(error) => h.record(EventKind::FinalUnreadable { node, error }),
        }
    }
    final_audit(c, h, &readable).await;
}

/// Records every readable node's audit chain at the length all of them reached (the trail keeps
/// growing while it is read: reads are audited too), and its own verification's verdict.
async fn final_audit(c: &Cluster, h: &History, nodes: &[u64]) {
    let mut sizes = BTreeMap::new();
    for &id in nodes {
        if let Ok((200, v)) = c.admin(reqwest::Method::GET, id, "/api/v1/audit/head", None).await
            && let Some(size) = v["size"].as_u64()
        {
            sizes.insert(id, size);
        }
    }
    let Some(common) = sizes.values().min().copied().filter(|c| *c > 0) else { return };
    for (&node, &size) in &sizes {
        let path = format!("/api/v1/audit?after={}&limit=1", common - 1);
        let hash = match c.admin(reqwest::Method::GET, node, &path, None).await {
            Ok((200, v)) => v["entries"][0]["hash"].as_str().unwrap_or_default().to_string(),
            Ok((s, v)) => format!("unreadable: {s} {v}"),
            Err(e) => format!("unreadable: {e}"),
        };
        let verification_problem = match c.admin(reqwest::Method::GET, node, "/api/v1/audit/status", None).await {
            Ok((200, v)) if !v["problem"].is_null() => Some(v["problem"].to_string()),
            _ => None,
        };
        h.record(EventKind::FinalAudit { node, size, common, hash_at_common: hash, verification_problem });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_counts_windows_with_an_acknowledged_write() {
        let ok = |t_ms| Event {
            t_ms,
            kind: EventKind::WriteOk { op: 1, node: 1, ids: vec![], commit_index: 1, replayed: false },
        };
        let events = vec![ok(1_500), ok(1_600), ok(3_100), ok(9_999)];
        let a = availability(&events, 1_000, 5_000);
        assert_eq!((a.windows, a.writable_windows), (4, 2));
        assert!((a.fraction - 0.5).abs() < 1e-9);
    }

    #[test]
    fn scenarios_parse_by_name() {
        for k in FaultKind::ALL {
            assert_eq!(Scenario::parse(k.name()), Some(Scenario::Fault(k)));
        }
        assert_eq!(Scenario::parse("soak"), Some(Scenario::Soak));
        assert_eq!(Scenario::parse("nope"), None);
    }
}
