//! `dtm drill --scenario S`: a disaster-recovery drill on a live cluster (A1.4: restore drills at
//! least once a year; A1.3 availability). A probe writes throughout; the drill injects the
//! disaster, measures how long writes fail (RTO) and how many acknowledged writes are missing
//! afterwards (RPO), brings the cluster back, checks that every node holds the same records,
//! aggregate digests and audit trail, and writes a report (JSON, and DOCX beside it) that is itself
//! recorded in the audit trail (`POST /api/v1/drills`).
//!
//! Scenarios: `leader-loss` (kill -9 the leader), `site-loss` (kill every node of one site; by
//! default the leader's), `partition` (cut one site off: on one host its nodes are frozen with
//! SIGSTOP, elsewhere `--isolate-cmd`/`--heal-cmd` run the operator's own firewall commands), and
//! `full-restore` (back up the live cluster, restore it into a fresh directory as a new one-node
//! cluster, and check it; the live cluster is not touched).
//!
//! Nodes are controlled through a `demo.json` (`--cluster`: each node's pid and the command that
//! starts it again; the file is updated with the new pids) or, for real deployments, through
//! `--kill-cmd` and `--start-cmd` templates (`{id}` and `{site}` are replaced), e.g.
//! `ssh {site}-dtm{id} systemctl kill -s KILL dtm`.
//!
//! RTO is the time from the fault until writes succeed again: the later of the first
//! acknowledgement of a write sent after the fault and the end of the last failed write. RPO is
//! the number of acknowledged probe records absent from some node once the cluster is back.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use reqwest::Method;
use serde_json::Value;
use serde_json::json;

use crate::client::Client;

const PROBE_SOURCE: &str = "drill-probe";
const PROBE_DATASET: &str = "drill_probe";
/// How long the drill waits for the cluster to recover, and then to heal, at most.
const RECOVER_DEADLINE: Duration = Duration::from_secs(60);
const HEAL_DEADLINE: Duration = Duration::from_secs(120);
/// A probe write gives up after this long (and is retried with the same idempotency key).
const PROBE_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of one probe write before it is counted as failed (about a minute of retries).
const PROBE_ATTEMPTS_MAX: u32 = 3_000;
/// Targets from the issue: leader loss ≤ 1 s, site loss ≤ 3 s.
const RTO_TARGET_LEADER_MS: u64 = 1_000;
const RTO_TARGET_SITE_MS: u64 = 3_000;

#[derive(clap::Args, Debug)]
pub struct DrillArgs {
    #[command(flatten)]
    pub target: crate::client::Target,
    /// leader-loss, site-loss, partition or full-restore.
    #[arg(long)]
    pub scenario: String,
    /// Where to write the JSON report (a DOCX with the same name beside it).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// The site to lose or isolate (default: the leader's).
    #[arg(long)]
    pub site: Option<String>,
    /// Probe writers.
    #[arg(long, default_value_t = 8)]
    pub writers: usize,
    /// Seconds of writing before the fault, and after recovery before healing.
    #[arg(long, default_value_t = 2.0)]
    pub settle_secs: f64,
    /// Command that kills node {id} of site {site} (real deployments; default: the demo.json pid).
    #[arg(long)]
    pub kill_cmd: Option<String>,
    /// Command that starts node {id} of site {site} again (default: the demo.json `cmd`).
    #[arg(long)]
    pub start_cmd: Option<String>,
    /// Command that cuts site {site} off the others (default on one host: SIGSTOP its nodes).
    #[arg(long)]
    pub isolate_cmd: Option<String>,
    /// Command that undoes `--isolate-cmd` (default on one host: SIGCONT).
    #[arg(long)]
    pub heal_cmd: Option<String>,
}

/// One node as the drill knows it.
#[derive(Debug, Clone)]
struct Member {
    id: u64,
    site: String,
    http: String,
    pid: Option<u32>,
    cmd: Vec<String>,
    data_dir: Option<PathBuf>,
}

/// One logical probe write (retried until acknowledged): when it was first sent, when it ended,
/// how many attempts it took, and what came back.
#[derive(Debug, Clone)]
struct Probe {
    sent_ms: u64,
    ended_ms: u64,
    attempts: u32,
    acked: Option<(String, u64)>,
}

struct Drill {
    client: Client,
    members: Vec<Member>,
    demo_json: Option<PathBuf>,
    start: Instant,
    args: DrillArgs,
}

impl Drill {
    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    async fn admin(
        &self,
        node: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self.client.http.request(method, format!("{node}{path}")).timeout(Duration::from_secs(10));
        if let Some(t) = &self.client.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// The cluster status from the first node that answers.
    async fn status(&self) -> anyhow::Result<Value> {
        for m in &self.members {
            if let Ok((200, v)) = self.admin(&m.http, Method::GET, "/api/v1/cluster", None).await {
                return Ok(v);
            }
        }
        bail!("no node answers /api/v1/cluster")
    }

    async fn leader(&self) -> anyhow::Result<u64> {
        let deadline = Instant::now() + RECOVER_DEADLINE;
        loop {
            if let Ok(v) = self.status().await
                && let Some(l) = v["leader_id"].as_u64()
            {
                return Ok(l);
            }
            if Instant::now() > deadline {
                bail!("the cluster has no leader");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn run_template(&self, template: &str, m: &Member) -> anyhow::Result<()> {
        let cmd = template.replace("{id}", &m.id.to_string()).replace("{site}", &m.site);
        let status = std::process::Command::new("sh").arg("-c").arg(&cmd).status()?;
        if !status.success() {
            bail!("`{cmd}` failed with {status}");
        }
        Ok(())
    }

    fn signal(&self, m: &Member, sig: i32) -> anyhow::Result<()> {
        let pid = m.pid.with_context(|| {
            format!("node {} has no known pid (use --cluster demo.json or the *-cmd options)", m.id)
        })?;
        // SAFETY: sending a signal to a process named by the operator's cluster file.
        if unsafe { libc::kill(pid as i32, sig) } != 0 {
            bail!("signalling node {} (pid {pid}): {}", m.id, std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn kill(&self, m: &Member) -> anyhow::Result<()> {
        match &self.args.kill_cmd {
            Some(t) => self.run_template(t, m),
            None => self.signal(m, libc::SIGKILL),
        }
    }

    /// Starts a killed node again; returns its new pid when the drill started it itself.
    fn start_node(&self, m: &Member) -> anyhow::Result<Option<u32>> {
        if let Some(t) = &self.args.start_cmd {
            self.run_template(t, m)?;
            return Ok(None);
        }
        use std::os::unix::process::CommandExt;
        let (exe, rest) = m.cmd.split_first().with_context(|| format!("no command to start node {} again", m.id))?;
        let log_dir = m.data_dir.clone().unwrap_or_else(std::env::temp_dir);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log_dir.join("node.log"))?;
        let child = std::process::Command::new(exe)
            .args(rest)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(std::process::Stdio::null())
            // Its own process group: a Ctrl-C of the drill does not reach the node.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting node {} again", m.id))?;
        Ok(Some(child.id()))
    }

    /// Records a node's new pid in the demo.json, so later drills and `dtm demo` find it.
    fn note_pid(&mut self, id: u64, pid: u32) -> anyhow::Result<()> {
        if let Some(m) = self.members.iter_mut().find(|m| m.id == id) {
            m.pid = Some(pid);
        }
        let Some(path) = &self.demo_json else { return Ok(()) };
        let mut demo: Value = serde_json::from_slice(&std::fs::read(path)?)?;
        if let Some(nodes) = demo["nodes"].as_array_mut() {
            for n in nodes.iter_mut().filter(|n| n["id"] == id) {
                n["pid"] = json!(pid);
            }
        }
        crate::server::write_private(path, &serde_json::to_string_pretty(&demo)?, 0o600)
    }

    /// Every node answers ready and has applied what the leader committed.
    async fn healthy(&self) -> bool {
        let Ok(status) = self.status().await else { return false };
        let members = status["members"].as_array().cloned().unwrap_or_default();
        if members.len() < self.members.len() {
            return false;
        }
        let max = members.iter().filter_map(|m| m["applied_index"].as_u64()).max().unwrap_or(0);
        for m in &self.members {
            match self.admin(&m.http, Method::GET, "/api/v1/ready", None).await {
                Ok((200, _)) => {}
                _ => return false,
            }
            let applied = members.iter().find(|x| x["id"] == m.id).and_then(|x| x["applied_index"].as_u64());
            if applied.is_none_or(|a| a + 1_000 < max) {
                return false;
            }
        }
        status["leader_id"].as_u64().is_some()
    }
}

/// The probe's source key and dataset, created when missing.
async fn probe_setup(d: &Drill) -> anyhow::Result<String> {
    let http = &d.members[0].http;
    let (s, v) = d
        .admin(
            http,
            Method::POST,
            "/api/v1/sources",
            Some(&json!({"id": PROBE_SOURCE, "name": "DR drill probe", "agency": "DTM operations"})),
        )
        .await?;
    let key = match s {
        201 => v["api_key"].as_str().map(str::to_string),
        409 => {
            let (s, v) =
                d.admin(http, Method::POST, &format!("/api/v1/sources/{PROBE_SOURCE}/keys"), Some(&json!({}))).await?;
            anyhow::ensure!(s == 201, "issuing a probe key: {s} {v}");
            v["api_key"].as_str().map(str::to_string)
        }
        _ => bail!("registering the probe source: {s} {v}"),
    };
    let key = key.context("no API key in the answer")?;
    let ds = json!({"id": PROBE_DATASET, "title": "DR drill probe", "schema": {"type": "object"}});
    let (s, v) = d.admin(http, Method::POST, "/api/v1/datasets", Some(&ds)).await?;
    anyhow::ensure!(s == 201 || s == 409, "creating the probe dataset: {s} {v}");
    Ok(key)
}

/// Writers posting one record each, round-robin over the nodes, retrying a failed write with the
/// same idempotency key (so an acknowledgement is never counted twice).
fn start_probe(d: &Drill, key: String, run: String) -> (Arc<AtomicBool>, Vec<tokio::task::JoinHandle<Vec<Probe>>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let urls: Vec<String> = d.members.iter().map(|m| m.http.clone()).collect();
    let handles = (0..d.args.writers.max(1))
        .map(|w| {
            let (http, urls, key, run, stop, start) =
                (d.client.http.clone(), urls.clone(), key.clone(), run.clone(), stop.clone(), d.start);
            tokio::spawn(async move {
                let mut out = Vec::new();
                let mut seq = 0u64;
                let mut turn = w;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let sent_ms = start.elapsed().as_millis() as u64;
                    let mut attempts = 0u32;
                    let acked = loop {
                        attempts += 1;
                        turn += 1;
                        let url = &urls[turn % urls.len()];
                        let r = http
                            .post(format!("{url}/api/v1/datasets/{PROBE_DATASET}/records"))
                            .header("x-api-key", &key)
                            .header("idempotency-key", format!("drill:{run}:{w}:{seq}"))
                            .timeout(PROBE_REQUEST_TIMEOUT)
                            .json(&json!({"records": [{"drill": run, "writer": w, "seq": seq}]}))
                            .send()
                            .await;
                        if let Ok(resp) = r
                            && resp.status().as_u16() == 201
                        {
                            let v: Value = resp.json().await.unwrap_or_default();
                            break v["ids"][0]
                                .as_str()
                                .map(|id| (id.to_string(), v["commit_index"].as_u64().unwrap_or(0)));
                        }
                        if stop.load(Ordering::Relaxed) || attempts >= PROBE_ATTEMPTS_MAX {
                            break None;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    };
                    out.push(Probe { sent_ms, ended_ms: start.elapsed().as_millis() as u64, attempts, acked });
                }
                out
            })
        })
        .collect();
    (stop, handles)
}

/// RTO from the probes: the longest any write had to wait for its acknowledgement after the
/// fault (a write sent before the fault counts from the fault). A client that fails over to another
/// node at once is not kept waiting by a dead node; a write that waits for an election is.
fn rto_ms(probes: &[Probe], fault_ms: u64) -> Option<u64> {
    probes
        .iter()
        .filter(|p| p.acked.is_some() && p.ended_ms >= fault_ms)
        .map(|p| p.ended_ms - p.sent_ms.max(fault_ms))
        .max()
}

/// Every record of the probe dataset on one node (linearizable reads), as ids.
async fn node_records(d: &Drill, http: &str) -> anyhow::Result<BTreeSet<String>> {
    records_up_to(d, http, u64::MAX).await
}

/// The probe records a node holds with a commit index up to `index` (linearizable reads).
async fn records_up_to(d: &Drill, http: &str, index: u64) -> anyhow::Result<BTreeSet<String>> {
    let mut ids = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/datasets/{PROBE_DATASET}/records?limit=1000&consistency=linearizable");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let (s, v) = d.admin(http, Method::GET, &path, None).await?;
        anyhow::ensure!(s == 200, "reading records from {http}: {s} {v}");
        for r in v["records"].as_array().into_iter().flatten() {
            if r["commit_index"].as_u64().is_some_and(|c| c <= index)
                && let Some(id) = r["id"].as_str()
            {
                ids.insert(id.to_string());
            }
        }
        match v["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => return Ok(ids),
        }
    }
}

/// The checks after healing: equal records, digests and audit trails on every node, and the RPO.
async fn final_checks(d: &Drill, acked: &BTreeSet<String>) -> anyhow::Result<Value> {
    let deadline = Instant::now() + HEAL_DEADLINE;
    loop {
        let mut per_node = BTreeMap::new();
        let mut digests = BTreeMap::new();
        let mut heads = BTreeMap::new();
        let mut failures = Vec::new();
        for m in &d.members {
            match node_records(d, &m.http).await {
                Ok(ids) => {
                    per_node.insert(m.id, ids);
                }
                Err(e) => failures.push(format!("node {}: {e}", m.id)),
            }
            let path = format!("/api/v1/datasets/{PROBE_DATASET}/aggregates/digest?consistency=linearizable");
            if let Ok((200, v)) = d.admin(&m.http, Method::GET, &path, None).await {
                digests.insert(m.id, v["sha256"].as_str().unwrap_or_default().to_string());
            }
            if let Ok((200, v)) = d.admin(&m.http, Method::GET, "/api/v1/audit/head", None).await {
                heads.insert(m.id, v);
            }
        }
        let counts: BTreeMap<u64, usize> = per_node.iter().map(|(n, ids)| (*n, ids.len())).collect();
        let rpo = per_node.values().map(|ids| acked.difference(ids).count()).max().unwrap_or(acked.len());
        let records_equal = per_node.values().collect::<BTreeSet<_>>().len() == 1 && failures.is_empty();
        let digests_equal = digests.len() == d.members.len() && digests.values().collect::<BTreeSet<_>>().len() == 1;
        let audit = audit_agreement(d, &heads).await;
        let audit_ok = audit["equal"] == true;
        if (records_equal && digests_equal && audit_ok) || Instant::now() > deadline {
            return Ok(json!({
                "rpo_records": rpo, "acknowledged": acked.len(), "records_per_node": counts,
                "records_equal": records_equal, "digests_equal": digests_equal, "digests": digests,
                "audit": audit, "read_failures": failures,
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Whether every node's audit chain is the same: the entry at the shortest node's length has the
/// same hash everywhere (chains only grow, and each hash commits to everything before it), and no
/// node's own periodic verification reports a problem.
async fn audit_agreement(d: &Drill, heads: &BTreeMap<u64, Value>) -> Value {
    let Some(common) = heads.values().filter_map(|h| h["size"].as_u64()).min() else {
        return json!({"equal": false, "why": "no node answered /api/v1/audit/head"});
    };
    if heads.len() < d.members.len() || common == 0 {
        return json!({"equal": false, "why": "not every node answered with a trail", "common_size": common});
    }
    let mut hashes = BTreeMap::new();
    let mut problems = Vec::new();
    for m in &d.members {
        let path = format!("/api/v1/audit?after={}&limit=1", common - 1);
        if let Ok((200, v)) = d.admin(&m.http, Method::GET, &path, None).await {
            let e = v["entries"].get(0).cloned().unwrap_or_default();
            hashes.insert(m.id, e["hash"].as_str().unwrap_or_default().to_string());
        }
        if let Ok((200, v)) = d.admin(&m.http, Method::GET, "/api/v1/audit/status", None).await
            && !v["problem"].is_null()
        {
            problems.push(json!({"node": m.id, "problem": v["problem"]}));
        }
    }
    let equal =
        hashes.len() == d.members.len() && hashes.values().collect::<BTreeSet<_>>().len() == 1 && problems.is_empty();
    json!({"equal": equal, "common_size": common, "hash_at_common_size": hashes, "verification_problems": problems})
}

fn load_members(target: &crate::client::Target, status: &Value) -> anyhow::Result<(Vec<Member>, Option<PathBuf>)> {
    let demo: Option<Value> = match &target.cluster {
        Some(p) => {
            Some(serde_json::from_slice(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)?)
        }
        None => None,
    };
    let mut members = Vec::new();
    for m in status["members"].as_array().into_iter().flatten() {
        let id = m["id"].as_u64().context("member without id")?;
        let d =
            demo.as_ref().and_then(|d| d["nodes"].as_array().and_then(|n| n.iter().find(|n| n["id"] == id)).cloned());
        let http =
            m["http"].as_str().map(|h| if h.starts_with("https://") { h.to_string() } else { format!("https://{h}") });
        members.push(Member {
            id,
            site: m["site"].as_str().unwrap_or("default").to_string(),
            http: http.context("member without address")?,
            pid: d.as_ref().and_then(|d| d["pid"].as_u64()).and_then(|p| u32::try_from(p).ok()),
            cmd: d
                .as_ref()
                .and_then(|d| {
                    d["cmd"].as_array().map(|c| c.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                })
                .unwrap_or_default(),
            data_dir: d.as_ref().and_then(|d| d["data_dir"].as_str().map(PathBuf::from)),
        });
    }
    anyhow::ensure!(!members.is_empty(), "the cluster lists no members");
    Ok((members, target.cluster.clone()))
}

pub async fn run(args: DrillArgs) -> anyhow::Result<()> {
    let scenario = args.scenario.clone();
    anyhow::ensure!(
        ["leader-loss", "site-loss", "partition", "full-restore"].contains(&scenario.as_str()),
        "unknown scenario `{scenario}`: leader-loss, site-loss, partition or full-restore"
    );
    let client = Client::from_target(&args.target)?;
    let status = client.expect(Method::GET, "/api/v1/cluster", None).await.context("reading the cluster's status")?;
    let (members, demo_json) = load_members(&args.target, &status)?;
    let mut d = Drill { client, members, demo_json, start: Instant::now(), args };
    let started_at = crate::api::now_ms();
    let run = format!("{started_at}");
    let key = probe_setup(&d).await?;
    let (stop, writers) = start_probe(&d, key, run.clone());
    tokio::time::sleep(Duration::from_secs_f64(d.args.settle_secs.max(0.5))).await;

    let mut report = json!({"scenario": scenario, "started_at": crate::api::export::rfc3339(started_at), "run": run});
    let outcome = match scenario.as_str() {
        "full-restore" => full_restore(&d).await,
        _ => node_fault(&mut d, &scenario).await,
    };
    stop.store(true, Ordering::Relaxed);
    let mut probes = Vec::new();
    for w in writers {
        probes.extend(w.await.unwrap_or_default());
    }
    let (fault, fault_error) = match outcome {
        Ok(f) => (f, None),
        Err(e) => (json!({}), Some(format!("{e:#}"))),
    };
    let fault_ms = fault["at_ms"].as_u64().unwrap_or(0);
    let acked: BTreeSet<String> = probes.iter().filter_map(|p| p.acked.as_ref().map(|(id, _)| id.clone())).collect();
    let rto = if scenario == "full-restore" { fault["rto_ms"].as_u64() } else { rto_ms(&probes, fault_ms) };
    let checks = if scenario == "full-restore" {
        fault["checks"].clone()
    } else {
        final_checks(&d, &acked).await.unwrap_or_else(|e| json!({"error": e.to_string()}))
    };
    let healthy = d.healthy().await;
    let rpo = checks["rpo_records"].as_u64();
    let target_ms = match scenario.as_str() {
        "leader-loss" => Some(RTO_TARGET_LEADER_MS),
        "site-loss" | "partition" => Some(RTO_TARGET_SITE_MS),
        _ => None,
    };
    let checks_ok =
        checks["records_equal"] != false && checks["digests_equal"] != false && checks["audit"]["equal"] != false;
    let passed = fault_error.is_none() && rpo == Some(0) && rto.is_some() && healthy && checks_ok;
    report["fault"] = fault;
    report["rto_ms"] = json!(rto);
    report["rto_target_ms"] = json!(target_ms);
    report["rto_within_target"] = json!(match (rto, target_ms) {
        (Some(r), Some(t)) => Some(r <= t),
        _ => None,
    });
    report["rpo_records"] = json!(rpo);
    report["writes"] = json!({"writes": probes.len(), "acknowledged": acked.len(),
        "attempts": probes.iter().map(|p| u64::from(p.attempts)).sum::<u64>(),
        "never_acknowledged": probes.iter().filter(|p| p.acked.is_none()).count()});
    report["checks"] = checks;
    report["cluster_healthy_after"] = json!(healthy);
    report["error"] = json!(fault_error);
    report["passed"] = json!(passed);
    report["finished_at"] = json!(crate::api::export::rfc3339(crate::api::now_ms()));
    // The report is part of the audit trail.
    let recorded = d.client.call(Method::POST, "/api/v1/drills", Some(&report)).await;
    report["recorded_in_audit_trail"] = json!(matches!(recorded, Ok((201, _))));
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &d.args.report {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
        let docx = report_docx(&report)?;
        std::fs::write(path.with_extension("docx"), docx)?;
    }
    println!("{text}");
    if !passed {
        bail!("the drill failed: {}", summary(&report));
    }
    Ok(())
}

fn summary(r: &Value) -> String {
    format!(
        "scenario {}, RTO {} ms, RPO {} records, healthy after: {}, error: {}",
        r["scenario"], r["rto_ms"], r["rpo_records"], r["cluster_healthy_after"], r["error"]
    )
}

/// leader-loss, site-loss and partition: inject, wait for writes to succeed again, heal.
async fn node_fault(d: &mut Drill, scenario: &str) -> anyhow::Result<Value> {
    let leader = d.leader().await?;
    let leader_site = d.members.iter().find(|m| m.id == leader).map(|m| m.site.clone()).unwrap_or_default();
    let victims: Vec<Member> = match scenario {
        "leader-loss" => d.members.iter().filter(|m| m.id == leader).cloned().collect(),
        _ => {
            let site = d.args.site.clone().unwrap_or(leader_site);
            d.members.iter().filter(|m| m.site == site).cloned().collect()
        }
    };
    anyhow::ensure!(!victims.is_empty(), "no node to fail");
    let survivors = d.members.len() - victims.len();
    anyhow::ensure!(
        survivors * 2 > d.members.len(),
        "losing {} of {} nodes leaves no quorum: this drill would only prove that (see `dtm cluster status` warnings)",
        victims.len(),
        d.members.len()
    );
    let at_ms = d.ms();
    for v in &victims {
        match scenario {
            "partition" => match &d.args.isolate_cmd {
                Some(t) => d.run_template(t, v)?,
                None => d.signal(v, libc::SIGSTOP)?,
            },
            _ => d.kill(v)?,
        }
    }
    let ids: Vec<u64> = victims.iter().map(|v| v.id).collect();
    // Wait until a write sent after the fault is acknowledged (the probe measures it), then let
    // the cluster run on its survivors for a moment.
    let deadline = Instant::now() + RECOVER_DEADLINE;
    let survivor = d.members.iter().find(|m| !ids.contains(&m.id)).map(|m| m.http.clone()).context("no survivor")?;
    loop {
        if let Ok((200, v)) = d.admin(&survivor, Method::GET, "/api/v1/cluster", None).await
            && v["leader_id"].as_u64().is_some_and(|l| !ids.contains(&l))
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("no leader among the survivors within {} s", RECOVER_DEADLINE.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs_f64(d.args.settle_secs.max(0.5))).await;
    let healed_ms = d.ms();
    for v in &victims {
        match scenario {
            "partition" => match &d.args.heal_cmd {
                Some(t) => d.run_template(t, v)?,
                None => d.signal(v, libc::SIGCONT)?,
            },
            _ => {
                if let Some(pid) = d.start_node(v)? {
                    d.note_pid(v.id, pid)?;
                }
            }
        }
    }
    let deadline = Instant::now() + HEAL_DEADLINE;
    while !d.healthy().await {
        if Instant::now() > deadline {
            bail!("the cluster did not become healthy within {} s of healing", HEAL_DEADLINE.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs_f64(d.args.settle_secs.max(0.5))).await;
    Ok(json!({"what": scenario, "nodes": ids, "leader_before": leader, "at_ms": at_ms, "healed_at_ms": healed_ms,
              "healthy_at_ms": d.ms()}))
}

/// full-restore: back up the live cluster, restore the backup into a fresh directory as a new
/// one-node cluster on free ports, check it, and remove it again.
async fn full_restore(d: &Drill) -> anyhow::Result<Value> {
    let tmp = tempfile::tempdir()?;
    let key_file = tmp.path().join("drill.key");
    std::fs::write(&key_file, dtm_storage::MasterKey::generate_text()?)?;
    let master_file = tmp.path().join("master.key");
    std::fs::write(&master_file, dtm_storage::MasterKey::generate_text()?)?;
    let backup = tmp.path().join("drill.dtmbak");
    let exe = std::env::current_exe()?;
    let ca = d.args.target.ca_cert.clone().or_else(|| {
        let demo: Value = serde_json::from_slice(&std::fs::read(d.demo_json.as_ref()?).ok()?).ok()?;
        demo["ca_cert"].as_str().map(PathBuf::from)
    });
    let ca = ca.context("full-restore needs the CA (--ca-cert or --cluster)")?;
    let tls_dir = ca.parent().context("the CA's directory")?.to_path_buf();
    let token = d.client.token.clone().context("full-restore needs an admin token")?;
    let out = tokio::process::Command::new(&exe)
        .args(["backup", "create", "--node", &d.members[0].http, "--ca-cert"])
        .arg(&ca)
        .args(["--token", &token, "--out"])
        .arg(&backup)
        .arg("--key-file")
        .arg(&key_file)
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "backup failed: {}", String::from_utf8_lossy(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).context("the backup's answer")?;
    let index = created["log_index"].as_u64().unwrap_or(0);
    let at_ms = d.ms();
    let data_dir = tmp.path().join("restored");
    // Node id 1: the demo's certificates cover it; the restored cluster is a cluster of its own.
    let out = tokio::process::Command::new(&exe)
        .args(["restore", "--from"])
        .arg(&backup)
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--node-id", "1", "--site", "drill", "--master-key-file"])
        .arg(&master_file)
        .arg("--key-file")
        .arg(&key_file)
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut child = tokio::process::Command::new(&exe)
        .args(["serve", "--node-id", "1", "--site", "drill", "--data-dir"])
        .arg(&data_dir)
        .arg("--tls-dir")
        .arg(&tls_dir)
        .arg("--master-key-file")
        .arg(&master_file)
        .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let result = check_restored(d, &data_dir, index, &created, at_ms).await;
    // SAFETY: stopping the node this drill started.
    if let Some(pid) = child.id() {
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    result
}

async fn check_restored(d: &Drill, data_dir: &Path, index: u64, created: &Value, at_ms: u64) -> anyhow::Result<Value> {
    let facts_path = data_dir.join("node.json");
    let deadline = Instant::now() + RECOVER_DEADLINE;
    let url = loop {
        if let Ok(b) = std::fs::read(&facts_path)
            && let Ok(v) = serde_json::from_slice::<Value>(&b)
            && let Some(h) = v["http"].as_str()
        {
            break h.to_string();
        }
        anyhow::ensure!(Instant::now() < deadline, "the restored node did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // RTO: from the restore until the restored cluster acknowledges a write.
    loop {
        let (s, v) = d
            .admin(&url, Method::POST, &format!("/api/v1/sources/{PROBE_SOURCE}/keys"), Some(&json!({})))
            .await
            .unwrap_or((0, Value::Null));
        // Issuing a key is a write: it is acknowledged once the restored cluster commits it.
        if s == 201 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the restored node does not accept writes: {s} {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rto_ms = d.ms().saturating_sub(at_ms);
    let restored = node_records(d, &url).await?;
    // Every probe record acknowledged up to the backup's index must be there.
    let mut live = BTreeSet::new();
    for m in &d.members {
        if let Ok(ids) = node_records(d, &m.http).await {
            live = ids;
            break;
        }
    }
    let wanted = records_up_to(d, &d.members[0].http, index).await.unwrap_or_default();
    let rpo = wanted.difference(&restored).count();
    let mut digests_equal = true;
    for (dataset, digest) in created["digests"].as_object().into_iter().flatten() {
        let (_, v) = d.admin(&url, Method::GET, &format!("/api/v1/datasets/{dataset}/aggregates/digest"), None).await?;
        digests_equal &= v["sha256"] == *digest;
    }
    let (s, head) = d.admin(&url, Method::GET, "/api/v1/audit/head", None).await?;
    let audit_ok = s == 200 && head["size"].as_u64().unwrap_or(0) >= created["audit_entries"].as_u64().unwrap_or(0);
    Ok(json!({
        "what": "full-restore", "at_ms": at_ms, "rto_ms": rto_ms, "backup_log_index": index,
        "checks": {"rpo_records": rpo, "records_in_backup": wanted.len(), "records_restored": restored.len(),
                   "records_live": live.len(), "records_equal": rpo == 0, "digests_equal": digests_equal,
                   "audit": {"equal": audit_ok, "restored_head": head}},
    }))
}

fn report_docx(r: &Value) -> anyhow::Result<Vec<u8>> {
    let row = |k: &str, v: &Value| {
        vec![json!(k), json!(if let Some(s) = v.as_str() { s.to_string() } else { v.to_string() })]
    };
    let rows = vec![
        row("Scenario", &r["scenario"]),
        row("Started", &r["started_at"]),
        row("Finished", &r["finished_at"]),
        row("Fault", &r["fault"]),
        row("RTO (ms)", &r["rto_ms"]),
        row("RTO target (ms)", &r["rto_target_ms"]),
        row("RPO (acknowledged records missing)", &r["rpo_records"]),
        row("Writes", &r["writes"]),
        row("Records equal on every node", &r["checks"]["records_equal"]),
        row("Aggregate digests equal", &r["checks"]["digests_equal"]),
        row("Audit trails equal", &r["checks"]["audit"]["equal"]),
        row("Cluster healthy afterwards", &r["cluster_healthy_after"]),
        row("Passed", &r["passed"]),
    ];
    let table = crate::api::export::Table {
        title: format!("DTM disaster-recovery drill: {}", r["scenario"].as_str().unwrap_or("")),
        period: format!("{} – {}", r["started_at"].as_str().unwrap_or(""), r["finished_at"].as_str().unwrap_or("")),
        columns: vec!["Item".into(), "Result".into()],
        rows,
        totals: None,
        summary: summary(r),
    };
    crate::api::export::docx(&table).map_err(|e| anyhow::anyhow!("writing the DOCX report: {e}"))
}

/// `POST /api/v1/drills` (admin, operator): records a drill report in the audit trail.
pub async fn post_drill(
    axum::extract::State(state): axum::extract::State<crate::api::AppState>,
    headers: axum::http::HeaderMap,
    axum::Json(report): axum::Json<Value>,
) -> crate::api::error::ApiResult<(axum::http::StatusCode, axum::Json<Value>)> {
    crate::api::auth::require(&state, &headers, &crate::api::auth::OPERATE).await?;
    let scenario = report["scenario"].as_str().unwrap_or_default();
    if !["leader-loss", "site-loss", "partition", "full-restore"].contains(&scenario) {
        return Err(crate::api::error::ApiError::bad_request("`scenario` must name a drill scenario"));
    }
    crate::audit::note_operation("drill.report", &format!("drill/{scenario}"));
    crate::audit::note_detail(json!({
        "scenario": scenario, "rto_ms": report["rto_ms"], "rpo_records": report["rpo_records"],
        "passed": report["passed"], "started_at": report["started_at"], "cluster_healthy_after": report["cluster_healthy_after"],
    }));
    Ok((axum::http::StatusCode::CREATED, axum::Json(json!({"recorded": true}))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(sent: u64, ended: u64, ok: bool) -> Probe {
        Probe { sent_ms: sent, ended_ms: ended, attempts: 1, acked: ok.then(|| ("r".to_string(), 1)) }
    }

    #[test]
    fn rto_is_the_longest_wait_for_an_acknowledgement_after_the_fault() {
        // Fault at 1000: a write in flight since 900 is acked at 1700 (it waited for the election),
        // one sent at 1001 at 1800; one sent at 1020 failed over at once and was acked at 1030.
        let probes = vec![p(800, 850, true), p(900, 1700, true), p(1001, 1800, true), p(1020, 1030, true)];
        assert_eq!(rto_ms(&probes, 1000), Some(799));
        assert_eq!(rto_ms(&[p(1001, 1010, false)], 1000), None);
    }
}
