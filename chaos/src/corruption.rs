//! Corrupted stores: flip one byte in a stopped node's data files and see what the operator sees.
//! The drill starts a cluster, writes, stops a follower cleanly, damages one of its store files,
//! starts it again and records whether it refused to start (and whether the error names the file)
//! or started — and then whether it served the damaged data. Then it does what the runbook says
//! (remove the data dir, start the node empty) and checks that the node catches up from its peers.

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;

use rand::Rng;
use serde::Serialize;
use serde_json::json;

use crate::cluster::Cluster;
use crate::cluster::ClusterOptions;
use crate::cluster::eventually;
use crate::error::ChaosError;
use crate::error::Result;
use crate::limits::HEAL_TIMEOUT_MS;
use crate::limits::LOGS_KEPT_AFTER_SNAPSHOT;
use crate::limits::SNAPSHOT_AFTER_LOGS;
use crate::workload::task_rng;

const DATASET: &str = "corrupt";
/// Submissions written before the damage, each with `RECORDS_PER_SUBMISSION` records; enough for
/// a snapshot to exist.
const SUBMISSIONS: u64 = 40;
const RECORDS_PER_SUBMISSION: u64 = 25;
/// How long a damaged node that did start is watched for a late exit.
const STARTED_WATCH_MS: u64 = 5_000;

/// Flips (XOR 0xFF) the byte at `offset` of `path`.
pub fn flip_byte(path: &Path, offset: u64) -> Result<u8> {
    let mut bytes = std::fs::read(path).map_err(|e| ChaosError::io("reading a store file", path, e))?;
    let i = usize::try_from(offset).ok().filter(|i| *i < bytes.len()).ok_or_else(|| {
        ChaosError::Options(format!("offset {offset} is outside {} ({} bytes)", path.display(), bytes.len()))
    })?;
    let before = bytes[i];
    bytes[i] ^= 0xFF;
    std::fs::write(path, &bytes).map_err(|e| ChaosError::io("writing a store file", path, e))?;
    Ok(before)
}

/// Every regular, non-empty file under `dir`, sorted.
pub fn store_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) if m.is_file() && m.len() > 0 => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct CorruptionReport {
    pub node: u64,
    pub file: PathBuf,
    pub offset: u64,
    /// The node exited at start-up.
    pub refused_to_start: bool,
    /// The start-up error (the log's tail) names the damaged file.
    pub error_names_file: bool,
    pub start_error: String,
    /// When it started anyway: whether its records differed from its peers' (damaged data served).
    pub served_damaged_data: Option<bool>,
    /// After removing the data dir and starting empty, it held every record again.
    pub recovered: bool,
    pub records: usize,
    /// The node's store files (relative to its data dir) and their sizes, for the record.
    pub files: Vec<String>,
}

impl CorruptionReport {
    /// What the suite requires: refused with the file named, never served, and recovered.
    pub fn passed(&self) -> bool {
        self.refused_to_start && self.error_names_file && self.served_damaged_data != Some(true) && self.recovered
    }

    pub fn render(&self) -> String {
        format!(
            "corrupted node {} file {} at offset {}\nrefused to start: {} (error names the file: {})\n\
             start-up error: {}\nserved damaged data: {:?}\nrecovered from peers after the data dir was removed: {} \
             ({} records)\nstore files: {:?}\nVERDICT: {}\n",
            self.node,
            self.file.display(),
            self.offset,
            self.refused_to_start,
            self.error_names_file,
            self.start_error,
            self.served_damaged_data,
            self.recovered,
            self.records,
            self.files,
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

/// Every record on `node`: id → its data as JSON text, so that a changed byte in a payload shows.
async fn ids_on(c: &Cluster, node: u64) -> Result<BTreeMap<String, String>> {
    Ok(c.records(node, DATASET)
        .await?
        .iter()
        .filter_map(|r| r["id"].as_str().map(|id| (id.to_string(), r["data"].to_string())))
        .collect())
}

/// Runs the drill, damaging the file chosen by `choose` among the follower's store files (the
/// seed picks the offset).
pub async fn drill_with(
    seed: u64,
    out: &Path,
    payload: bool,
    choose: impl Fn(&[PathBuf]) -> Option<PathBuf>,
) -> Result<CorruptionReport> {
    std::fs::create_dir_all(out).map_err(|e| ChaosError::io("creating the output dir", out, e))?;
    let serve_args = vec![
        "--snapshot-after-logs".to_string(),
        (SNAPSHOT_AFTER_LOGS / 10).to_string(),
        "--logs-kept-after-snapshot".into(),
        (LOGS_KEPT_AFTER_SNAPSHOT / 10).to_string(),
    ];
    let c = Cluster::start(ClusterOptions { nodes: 3, namespaces: false, env: vec![], serve_args, tmpfs_mib: None })
        .await?;
    let result = drill_on(&c, seed, payload, choose).await;
    let _ = c.save_logs(out);
    result
}

/// Damages the first store file whose path (relative to the data dir) contains `target`
/// (`store/db`, `conf`, `blobs`, `raft-snapshot.pb`, …), at an offset the seed picks, or, with a
/// `@payload` suffix (`store/db@payload`), inside the last stored copy of a record payload, so that
/// the damage is certainly in live data.
pub async fn drill(seed: u64, target: &str, out: &Path) -> Result<CorruptionReport> {
    let (target, payload) = match target.strip_suffix("@payload") {
        Some(t) => (t, true),
        None => (target, false),
    };
    drill_with(seed, out, payload, |files| files.iter().find(|f| f.display().to_string().contains(target)).cloned())
        .await
}

/// The offset of a digit inside the last `"i":` of a file (a record payload of the drill).
fn at_payload(file: &Path) -> Option<u64> {
    let bytes = std::fs::read(file).ok()?;
    let needle = b"\"i\":";
    let at = bytes.windows(needle.len()).rposition(|w| w == needle)?;
    u64::try_from(at + needle.len()).ok()
}

async fn drill_on(
    c: &Cluster,
    seed: u64,
    payload: bool,
    choose: impl Fn(&[PathBuf]) -> Option<PathBuf>,
) -> Result<CorruptionReport> {
    let leader = c.wait_leader().await?;
    c.create_dataset(leader, json!({"id": DATASET, "title": DATASET, "schema": {"type": "object"}})).await?;
    let key = c.create_source(leader, "corrupt").await?;
    for s in 0..SUBMISSIONS {
        let body: Vec<_> = (0..RECORDS_PER_SUBMISSION).map(|i| json!({"s": s, "i": i})).collect();
        let (status, v, _) = c
            .post(leader, DATASET, &key, &json!(body), &format!("c-{s}"))
            .await
            .map_err(|source| ChaosError::Http { what: "writing before the damage".into(), source })?;
        if status != 201 {
            return Err(ChaosError::Api { what: "writing before the damage".into(), status, body: v.to_string() });
        }
    }
    let expected = ids_on(c, leader).await?;
    let victim = c.ids().into_iter().find(|i| *i != leader).ok_or(ChaosError::Options("no follower".into()))?;
    eventually("the follower to hold every record", HEAL_TIMEOUT_MS, || async {
        (ids_on(c, victim).await.ok()? == expected).then_some(())
    })
    .await?;
    c.terminate(victim).await?;
    let data_dir = c.nodes[&victim].data_dir.clone();
    let files = store_files(&data_dir);
    let file = choose(&files).ok_or(ChaosError::Options(format!("no store file under {}", data_dir.display())))?;
    let len = std::fs::metadata(&file).map_err(|e| ChaosError::io("sizing a store file", &file, e))?.len();
    let mut rng = task_rng(seed, 0);
    let offset = match at_payload(&file) {
        Some(o) if payload => o,
        _ => rng.random_range(0..len),
    };
    flip_byte(&file, offset)?;
    let log_before = c.log(victim).len();

    let start = c.restart(victim).await;
    let mut report = CorruptionReport {
        node: victim,
        file: file.clone(),
        offset,
        refused_to_start: false,
        error_names_file: false,
        start_error: String::new(),
        served_damaged_data: None,
        recovered: false,
        records: expected.len(),
        files: files
            .iter()
            .map(|f| {
                let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
                format!("{} ({size} bytes)", f.strip_prefix(&data_dir).unwrap_or(f).display())
            })
            .collect(),
    };
    let name = file.strip_prefix(&data_dir).unwrap_or(&file).display().to_string();
    match start {
        Err(_) => {
            report.refused_to_start = true;
            let log = c.log(victim);
            let tail = log.get(log_before..).unwrap_or_default();
            // What the operator reads: the error and its causes, without the backtrace.
            let message = tail.split("Stack backtrace:").next().unwrap_or_default();
            let message = message.find("Error:").map_or(message, |i| &message[i..]);
            report.error_names_file = message.contains(&name) || message.contains(&file.display().to_string());
            report.start_error =
                message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ");
        }
        Ok(()) => {
            // It started: watch it for a late exit, then compare what it serves.
            let exited = eventually("a late exit", STARTED_WATCH_MS, || {
                let gone = c.reap(victim);
                async move { gone }
            });
            if let Ok(status) = exited.await {
                report.start_error = format!("started, then exited with {status}; ");
            }
            let served = ids_on(c, victim).await;
            report.served_damaged_data = Some(match &served {
                Ok(ids) => *ids != expected,
                Err(_) => false,
            });
            report.start_error += &match served {
                Ok(ids) => format!("started and serves {} of {} records", ids.len(), expected.len()),
                Err(e) => format!("started but cannot answer: {e}"),
            };
            c.kill(victim);
        }
    }
    // The operator's remedy: remove the damaged data and start the node empty.
    c.kill(victim);
    c.wipe(victim)?;
    c.restart(victim).await?;
    report.recovered = eventually("the wiped node to catch up", HEAL_TIMEOUT_MS, || async {
        (ids_on(c, victim).await.ok()? == expected).then_some(())
    })
    .await
    .is_ok();
    Ok(report)
}
