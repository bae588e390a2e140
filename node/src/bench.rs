//! `dtm bench`: a load generator against a running cluster (a `demo.json`). For each concurrency
//! level it runs that many clients, each with its own HTTPS connection, posting one record per
//! request round-robin over the nodes for a fixed time, and reports records/s and p50/p99/max
//! latency. `--failover` then kills the leader with SIGKILL under load, measures the time until the
//! first write that started after the kill succeeds, and restarts the killed node with its `cmd`;
//! `--failover-pause` does the same with SIGSTOP and SIGCONT (a leader that hangs rather than dies).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use reqwest::Method;
use serde_json::Value;
use serde_json::json;

use crate::client::Client;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The cluster to load (a demo.json).
    #[arg(long, default_value = "dtm-demo/demo.json")]
    pub cluster: PathBuf,
    /// Concurrency levels to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "1,64,500")]
    pub clients: Vec<usize>,
    /// Seconds of load per level (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Payload bytes per record (a padding field).
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,
    /// Also measure failover time: kill -9 the leader under load, then restart it.
    #[arg(long)]
    pub failover: bool,
    /// Also measure failover from a leader that stops answering without dying: SIGSTOP it under
    /// load (its port still accepts connections, so only the leader lease and the pre-vote tell
    /// the others), then SIGCONT it.
    #[arg(long)]
    pub failover_pause: bool,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Clients speak HTTP/1.1 instead of negotiating HTTP/2.
    #[arg(long)]
    pub http1: bool,
    /// The dataset definition the records go to: `full` (JSON Schema, business rule, natural key,
    /// masking, time field, dimensions and measures) or `minimal` (any JSON object), to measure what
    /// validation, masking, deduplication and aggregation cost.
    #[arg(long, default_value = "full")]
    pub definition: String,
    /// Instead of the load levels: load this many events and measure aggregate query latency on
    /// one node (see `bench_aggregates.rs`).
    #[arg(long, default_value_t = 0)]
    pub aggregate_records: u64,
    /// With `--aggregate-records`: query this dataset of an earlier run instead of loading a new one.
    #[arg(long)]
    pub aggregate_dataset: Option<String>,
    /// Also measure a reference system in the same run, level by level: `etcd` (a 3-member
    /// cluster started on loopback; see `bench_etcd.rs`).
    #[arg(long)]
    pub reference: Option<String>,
    /// With `--reference etcd`: the etcd binary (default: `etcd` on PATH, Debian's etcd-server).
    #[arg(long)]
    pub etcd_bin: Option<PathBuf>,
    /// With `--reference etcd`: client ports P..P+2, peer ports P+100..P+102.
    #[arg(long, default_value_t = 23790)]
    pub etcd_base_port: u16,
    /// With `--reference`: rounds per level (each round runs both systems, order alternating).
    #[arg(long, default_value_t = 1)]
    pub reference_rounds: usize,
    /// Instead of the load levels: hold this many open TLS connections and post over all of them
    /// (see `bench_connections.rs`).
    #[arg(long, default_value_t = 0)]
    pub connections: usize,
    /// With `--connections`: seconds of posting over the open connections.
    #[arg(long, default_value_t = 60)]
    pub connection_secs: u64,
    /// With `--connections`: each connection posts one record this often.
    #[arg(long, default_value_t = 10.0)]
    pub connection_interval_secs: f64,
    /// With `--connections`: all connections to the first node instead of spread over the nodes.
    #[arg(long)]
    pub connections_one_node: bool,
    /// With `--connections`: source systems (API keys) the connections are spread over.
    #[arg(long, default_value_t = 100)]
    pub connection_sources: usize,
    /// Instead of the load levels: load this many records and report bytes on disk and memory per
    /// node (see `bench_disk.rs`).
    #[arg(long, default_value_t = 0)]
    pub disk_records: u64,
    /// With `--disk-records`: measure again this many seconds after the load was applied.
    #[arg(long, default_value_t = 30)]
    pub disk_settle_secs: u64,
    /// Instead of the load levels: source B's latency alone and while source A floods the same
    /// node (`--duration-secs` each; see `bench_bulkhead.rs`).
    #[arg(long)]
    pub bulkhead: bool,
    /// With `--bulkhead`: source A's connections.
    #[arg(long, default_value_t = 24)]
    pub bulkhead_flood: usize,
    /// Instead of measuring a cluster: what the parts DTM is built from do at most on this machine
    /// (no-op HTTPS servers, sled, Ed25519; see `bench_ceilings.rs`). Needs no cluster.
    #[arg(long)]
    pub ceilings: bool,
}

/// The benchmark's dataset definition (see `BenchArgs::definition`).
fn bench_definition(id: &str, kind: &str) -> anyhow::Result<Value> {
    match kind {
        "minimal" => Ok(json!({"id": id, "title": "benchmark (minimal)", "schema": {"type": "object"}})),
        "full" => Ok(json!({
            "id": id, "title": "benchmark (full pipeline)",
            "schema": {"type": "object", "required": ["client", "seq", "agency", "period", "channel", "transactions"],
                "properties": {"client": {"type": "integer"}, "seq": {"type": "integer"},
                    "agency": {"type": "string", "minLength": 2}, "period": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
                    "channel": {"enum": ["web", "mobile", "api", "kiosk"]},
                    "transactions": {"type": "integer", "minimum": 0}, "failed": {"type": "integer", "minimum": 0},
                    "citizen_id": {"type": "string"}, "pad": {"type": "string"}}},
            "key": ["client", "seq"], "time_field": "period", "dimensions": ["agency", "channel"],
            "measures": {"transactions": "sum", "failed": "max"},
            "masking": {"citizen_id": "partial"},
            "rules": [{"field": "failed", "op": "<=", "other": "transactions"}]
        })),
        other => anyhow::bail!("unknown --definition `{other}` (full or minimal)"),
    }
}

/// One benchmark record (about `padding` + 150 bytes), valid under both definitions.
pub(crate) fn bench_record(client: usize, seq: u64, padding: &str) -> Value {
    const CHANNELS: [&str; 4] = ["web", "mobile", "api", "kiosk"];
    json!({"client": client, "seq": seq, "agency": format!("AG{:02}", client % 20), "period": "2026-11",
           "channel": CHANNELS[(seq % 4) as usize], "transactions": 100 + seq % 900, "failed": seq % 7,
           "citizen_id": "001203004567", "pad": padding})
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.ceilings {
        return crate::bench_ceilings::run(&args).await;
    }
    let demo: Value = serde_json::from_slice(
        &std::fs::read(&args.cluster).with_context(|| format!("reading {}", args.cluster.display()))?,
    )?;
    let admin = Client::from_target(&crate::client::Target {
        nodes: vec![],
        ca_cert: None,
        token: None,
        cluster: Some(args.cluster.clone()),
    })?;
    let ca_pem = std::fs::read(demo["ca_cert"].as_str().context("demo.json has no ca_cert")?)?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let dataset = format!("bench_{run_id}");
    admin.expect(Method::POST, "/api/v1/datasets", Some(&bench_definition(&dataset, &args.definition)?)).await?;
    let src = admin
        .expect(Method::POST, "/api/v1/sources", Some(&json!({"id": format!("bench-{run_id}"), "name": "benchmark"})))
        .await?;
    let key = src["api_key"].as_str().context("no api_key")?.to_string();
    let urls = admin.nodes.clone();
    let padding = "x".repeat(args.payload_bytes);
    if args.reference.is_some() {
        return crate::bench_etcd::run(&args, &ca_pem, &urls, &key, &dataset, &padding).await;
    }
    if args.connections > 0 {
        return crate::bench_connections::run(&args, &demo, &admin, &ca_pem, &urls, &dataset, &padding).await;
    }
    if args.bulkhead {
        return crate::bench_bulkhead::run(&args, &admin, &ca_pem, &urls, &key, &dataset, &padding).await;
    }
    if args.disk_records > 0 {
        return crate::bench_disk::run(&args, &demo, &admin, &key, &dataset, &padding).await;
    }
    if args.aggregate_records > 0 {
        let report = crate::bench_aggregates::run(
            &admin,
            &key,
            &run_id,
            args.aggregate_records,
            args.aggregate_dataset.as_deref(),
        )
        .await?;
        if let Some(out) = &args.out {
            std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
        }
        return Ok(());
    }

    println!("{:>8} {:>12} {:>10} {:>10} {:>10} {:>8}", "clients", "records/s", "p50 ms", "p99 ms", "max ms", "errors");
    let mut results = Vec::new();
    let target = crate::bench_etcd::Target {
        system: crate::bench_etcd::System::Dtm,
        urls: &urls,
        ca_pem: &ca_pem,
        api_key: &key,
        dataset: &dataset,
    };
    for (tag, &c) in args.clients.iter().enumerate() {
        // The same load function as the reference runs; `tag` keeps natural keys unique per level.
        let duration = Duration::from_secs(args.duration_secs);
        let level = crate::bench_etcd::load(&target, args.http1, &padding, c, duration, tag).await?;
        println!(
            "{:>8} {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>8}",
            c,
            level.rate(),
            level.ms(0.5),
            level.ms(0.99),
            level.max_ms(),
            level.errors
        );
        results.push(json!({"clients": c, "records_per_s": level.rate(), "p50_ms": level.ms(0.5),
            "p99_ms": level.ms(0.99), "max_ms": level.max_ms(), "ok": level.ok, "errors": level.errors}));
    }
    let mut report = json!({"dataset": dataset, "definition": args.definition, "levels": results});
    if args.failover {
        let ms = failover(&admin, &demo, &ca_pem, &urls, &key, &dataset, &padding, Fault::Kill).await?;
        println!("failover: leader killed -> first successful write in {ms:.0} ms");
        report["failover_ms"] = json!(ms);
    }
    if args.failover_pause {
        let ms = failover(&admin, &demo, &ca_pem, &urls, &key, &dataset, &padding, Fault::Pause).await?;
        println!("failover: leader paused -> first successful write in {ms:.0} ms");
        report["failover_pause_ms"] = json!(ms);
    }
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

/// How `failover` takes the leader away.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// SIGKILL, then start it again with its own command line.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Pause,
}

#[allow(clippy::too_many_arguments)]
async fn failover(
    admin: &Client,
    demo: &Value,
    ca_pem: &[u8],
    urls: &[String],
    key: &str,
    dataset: &str,
    padding: &str,
    fault: Fault,
) -> anyhow::Result<f64> {
    let status = admin.expect(Method::GET, "/api/v1/cluster", None).await?;
    let leader = status["leader_id"].as_u64().context("no leader")?;
    let node = demo["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["id"].as_u64() == Some(leader))
        .context("leader not in demo.json")?;
    let data_dir = PathBuf::from(node["data_dir"].as_str().context("no data_dir")?);
    let facts: Value = serde_json::from_slice(&std::fs::read(data_dir.join("node.json"))?)?;
    let pid = facts["pid"].as_i64().context("no pid in node.json")? as i32;
    let leader_url = node["http"].as_str().unwrap_or_default().to_string();
    let targets: Vec<String> = urls.iter().filter(|u| **u != leader_url).cloned().collect();

    let stop = Arc::new(AtomicBool::new(false));
    let killed_at: Arc<std::sync::OnceLock<Instant>> = Arc::new(std::sync::OnceLock::new());
    let first_ok_after_kill_us = Arc::new(AtomicU64::new(u64::MAX));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let http = crate::tls::https_client(ca_pem)?;
        let url = format!("{}/api/v1/datasets/{dataset}/records", targets[i % targets.len()]);
        let (key, padding, stop, killed_at, first) =
            (key.to_string(), padding.to_string(), stop.clone(), killed_at.clone(), first_ok_after_kill_us.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let r = http
                    .post(&url)
                    .header("x-api-key", &key)
                    .json(&bench_record(1_000_000 + i, seq_failover(), &padding))
                    .send()
                    .await;
                if let (Ok(resp), Some(k)) = (r, killed_at.get())
                    && resp.status().as_u16() == 201
                    && t0 >= *k
                {
                    first.fetch_min(
                        t0.duration_since(*k).as_micros() as u64 + t0.elapsed().as_micros() as u64,
                        Ordering::Relaxed,
                    );
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = killed_at.set(Instant::now());
    let signal = if fault == Fault::Kill { libc::SIGKILL } else { libc::SIGSTOP };
    // SAFETY: signalling the leader process named in the cluster file, as an operator would.
    unsafe { libc::kill(pid, signal) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while first_ok_after_kill_us.load(Ordering::Relaxed) == u64::MAX && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    if fault == Fault::Pause {
        // SAFETY: as above; the paused leader continues (and becomes a follower).
        unsafe { libc::kill(pid, libc::SIGCONT) };
        println!("continued node {leader}");
    } else if let Some(cmd) = node["cmd"].as_array() {
        // Bring the killed node back with its own command line.
        let cmd: Vec<String> = cmd.iter().filter_map(|c| c.as_str().map(str::to_string)).collect();
        if let Some((exe, rest)) = cmd.split_first() {
            let log = std::fs::OpenOptions::new().create(true).append(true).open(data_dir.join("node.log"))?;
            std::process::Command::new(exe)
                .args(rest)
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("restarting the killed leader")?;
            println!("restarted node {leader}");
        }
    }
    let us = first_ok_after_kill_us.load(Ordering::Relaxed);
    anyhow::ensure!(us != u64::MAX, "no write succeeded within 30 s of the leader fault");
    Ok(us as f64 / 1000.0)
}

/// Sequence numbers for the failover writers, unique across them (natural keys must not repeat).
fn seq_failover() -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    SEQ.fetch_add(1, Ordering::Relaxed)
}
