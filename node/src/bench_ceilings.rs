//! `dtm bench --ceilings`: what the parts DTM is built from can do at most on this machine, with
//! none of DTM's own work, so that a throughput target can be checked against the hardware before
//! it is chased (issues 2, 4 and 6; docs/benchmarks.md, "Ceilings").
//!
//! - **HTTPS transport**: three servers built exactly like a node's HTTPS port (`serve_https`:
//!   rustls with the node's configuration, hyper's HTTP/1.1 + HTTP/2 server, an axum router), each
//!   answering `POST /api/v1/datasets/{id}/records` with a fixed 201 JSON body of about the size of
//!   DTM's answer, and nothing else: no validation, no Raft, no storage. They run on their own
//!   two-worker runtime in this process and are loaded by the same client code as `dtm bench`
//!   (`bench_etcd::load`) at each `--clients` level. Their rate is the most any HTTPS service built
//!   on these crates can answer here, with the client sharing the machine as in every benchmark.
//! - **sled**: a store opened like a node's (`cache_capacity` 128 MiB, background flush every
//!   500 ms) in a temp directory, one tree. Random 32-byte keys with 100-byte values (the shape of
//!   natural-key entries) inserted in batches of 1,000 with a flush (fsync) after each, as `apply`
//!   writes a batch chunk; then lookups of keys that are not there, as each new record's natural
//!   key is looked up; then the same inserts with keys in ascending order (the shape of the record
//!   blocks and idempotency entries).
//! - **Ed25519**: receipt signatures per second on one thread (ring, as `node_key` signs).
//!
//! The printed arithmetic divides the two cores among the three nodes of the demo cluster, each of
//! which applies every record.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use rand::RngCore;
use serde_json::Value;
use serde_json::json;

use crate::bench::BenchArgs;

/// Servers in the transport measurement (the demo cluster's node count).
const SERVERS: usize = 3;
/// Worker threads of the servers' runtime (the machine's cores).
const SERVER_WORKERS: usize = 2;
/// Pairs written in the sled measurement, and per batch (a batch chunk's records).
const SLED_PAIRS: usize = 1_000_000;
const SLED_BATCH: usize = 1_000;
/// Lookups of absent keys in the sled measurement.
const SLED_MISSES: usize = 200_000;
/// sled's page cache, as a node opens it (`dtm_storage::limits::SLED_CACHE_CAPACITY_BYTES_DEFAULT`).
const SLED_CACHE_BYTES: u64 = 128 * 1024 * 1024;
/// How long the signature measurement runs.
const SIGN_FOR: Duration = Duration::from_secs(2);

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    for line in crate::bench_env::header() {
        println!("{line}");
    }
    let mut report = json!({"env": crate::bench_env::header_json()});

    println!(
        "\nHTTPS transport alone ({SERVERS} no-op servers like a node's HTTPS port, {SERVER_WORKERS} worker threads):"
    );
    println!("{:>8} {:>12} {:>10} {:>10} {:>8}", "clients", "requests/s", "p50 ms", "p99 ms", "errors");
    let servers = NoopServers::start().await?;
    let padding = "x".repeat(args.payload_bytes);
    let target = servers.target();
    let mut levels = Vec::new();
    for (tag, &c) in args.clients.iter().enumerate() {
        let level =
            crate::bench_etcd::load(&target, args.http1, &padding, c, Duration::from_secs(args.duration_secs), tag)
                .await?;
        println!(
            "{:>8} {:>12.0} {:>10.2} {:>10.2} {:>8}",
            c,
            level.rate(),
            level.ms(0.5),
            level.ms(0.99),
            level.errors
        );
        let mut l = level.to_json();
        l["clients"] = json!(c);
        levels.push(l);
    }
    servers.stop().await;
    report["https_noop"] = json!(levels);

    println!("\nsled alone (one store opened like a node's, one tree):");
    let sled_report = tokio::task::spawn_blocking(sled_ceiling).await??;
    report["sled"] = sled_report;

    let signs = tokio::task::spawn_blocking(sign_ceiling).await??;
    println!("\nEd25519 receipt signatures, one thread: {signs:.0}/s ({:.1} µs each)", 1e6 / signs);
    report["ed25519_signs_per_s"] = json!(signs);

    let caps = Caps::from_report(&report, signs);
    caps.print();
    report["caps"] = caps.to_json();

    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

/// What the measured parts allow (docs/benchmarks.md, "Ceilings"), for the demo cluster's three
/// nodes sharing this machine and for three machines like this one with a node each. Every node
/// applies every record; a new record costs each node one lookup of an absent natural key and one
/// random insert (in the grown tree), a single-record request also a record block and an
/// idempotency entry (ascending inserts) and, on the node that answers it, a receipt signature.
struct Caps {
    cores: f64,
    /// Core-µs of HTTPS per request at the last concurrency level (the whole machine's time per
    /// request, client included).
    https_us: f64,
    /// Per node and record: the natural-key lookup and insert (batch), plus two ascending inserts.
    batch_node_us: f64,
    realtime_node_us: f64,
    sign_us: f64,
}

impl Caps {
    fn from_report(report: &Value, signs_per_s: f64) -> Caps {
        let per_s = |v: &Value| v.as_f64().filter(|x| *x > 0.0).map_or(f64::INFINITY, |x| 1e6 / x);
        let sled = &report["sled"];
        let https = report["https_noop"]
            .as_array()
            .and_then(|l| l.last())
            .map_or(f64::INFINITY, |l| per_s(&l["records_per_s"]));
        let lookup = per_s(&sled["absent_lookups_per_s"]);
        let random = per_s(&sled["random_inserts_last_fifth_per_s"]);
        let ascending = per_s(&sled["ascending_inserts_last_fifth_per_s"]);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        Caps {
            cores,
            https_us: https * cores,
            batch_node_us: lookup + random,
            realtime_node_us: lookup + random + 2.0 * ascending,
            sign_us: 1e6 / signs_per_s.max(1.0),
        }
    }

    /// Records per second that `node_us` of every node's work and `shared_us` of work done once
    /// allow, with `machines` machines of `cores` cores for three nodes.
    fn cap(&self, node_us: f64, shared_us: f64, machines: f64) -> f64 {
        let per_record = 3.0 * node_us + shared_us;
        machines * self.cores * 1e6 / per_record
    }

    fn print(&self) {
        let realtime_shared = self.https_us + self.sign_us;
        println!("\nWhat these parts alone allow (every node applies every record; nothing else counted):");
        println!(
            "  batch, natural-key index ({:.1} µs per record per node): at most {:.0} records/s",
            self.batch_node_us,
            self.cap(self.batch_node_us, 0.0, 1.0)
        );
        println!(
            "    with 3 nodes on this machine, {:.0} with 3 machines like it",
            self.cap(self.batch_node_us, 0.0, 3.0)
        );
        println!(
            "  single-record requests (HTTPS {:.1} core-µs with the client, natural-key index and two ascending",
            self.https_us
        );
        println!(
            "    inserts {:.1} µs per node, a signature {:.1} µs): at most {:.0} requests/s with 3 nodes on this",
            self.realtime_node_us,
            self.sign_us,
            self.cap(self.realtime_node_us, realtime_shared, 1.0)
        );
        println!("    machine, {:.0} with 3 machines like it", self.cap(self.realtime_node_us, realtime_shared, 3.0));
        println!(
            "  a node applies records one after another: its natural-key index alone allows at most {:.0}",
            self.applier_cap()
        );
        println!("    records/s, however many cores it has");
    }

    /// Records per second one node's `apply`, a single thread in log order, can pass through the
    /// natural-key index, whatever the machine.
    fn applier_cap(&self) -> f64 {
        1e6 / self.batch_node_us
    }

    fn to_json(&self) -> Value {
        let realtime_shared = self.https_us + self.sign_us;
        json!({"cores": self.cores,
            "batch_records_per_s_one_machine": self.cap(self.batch_node_us, 0.0, 1.0),
            "batch_records_per_s_three_machines": self.cap(self.batch_node_us, 0.0, 3.0),
            "realtime_requests_per_s_one_machine": self.cap(self.realtime_node_us, realtime_shared, 1.0),
            "realtime_requests_per_s_three_machines": self.cap(self.realtime_node_us, realtime_shared, 3.0),
            "applier_records_per_s_any_machine": self.applier_cap()})
    }
}

/// The no-op HTTPS servers, on a runtime of their own.
struct NoopServers {
    urls: Vec<String>,
    ca_pem: Vec<u8>,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl NoopServers {
    async fn start() -> anyhow::Result<NoopServers> {
        let dir = tempfile::tempdir()?;
        let (acceptor, ca_pem) = crate::tls::throwaway_https(dir.path())?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(SERVER_WORKERS).enable_all().build()?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let mut urls = Vec::new();
                let mut servers = Vec::new();
                for _ in 0..SERVERS {
                    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(anyhow::Error::from(e)));
                            return;
                        }
                    };
                    match listener.local_addr() {
                        Ok(a) => urls.push(format!("https://localhost:{}", a.port())),
                        Err(e) => {
                            let _ = ready_tx.send(Err(anyhow::Error::from(e)));
                            return;
                        }
                    }
                    // Accept loops awaited here, as a node's `serve` awaits its own; connections are
                    // spawned onto the workers.
                    servers.push(crate::server::serve_https(
                        noop_router(),
                        listener,
                        acceptor.clone(),
                        crate::server::HttpTimeouts::NODE,
                        stop_rx.clone(),
                    ));
                }
                let _ = ready_tx.send(Ok(urls));
                futures::future::join_all(servers).await;
            })
        });
        let urls = ready_rx.await.context("the no-op servers' thread ended")??;
        Ok(NoopServers { urls, ca_pem, stop, thread: Some(thread), _dir: dir })
    }

    /// The servers as the benchmark's load function sees a cluster (any key and dataset will do).
    fn target(&self) -> crate::bench_etcd::Target<'_> {
        crate::bench_etcd::Target {
            system: crate::bench_etcd::System::Dtm,
            urls: &self.urls,
            ca_pem: &self.ca_pem,
            api_key: "ceiling",
            dataset: "ceiling",
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// A router that reads the body and answers 201 with a body the size of DTM's answer.
fn noop_router() -> axum::Router {
    let answer: Arc<[u8]> = Arc::from(
        json!({"ids": ["0195f0c1d2e3-a1b2c3d4e5f6.0"], "outcomes": ["stored"], "commit_index": 123456,
            "receipt": {"version": "dtm-receipt-v1", "padding": "x".repeat(560)}})
        .to_string()
        .into_bytes(),
    );
    axum::Router::new().route(
        "/api/v1/datasets/{id}/records",
        axum::routing::post(move |body: axum::body::Bytes| {
            let answer = answer.clone();
            async move {
                let _ = body.len();
                (
                    axum::http::StatusCode::CREATED,
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    answer.to_vec(),
                )
            }
        }),
    )
}

fn sled_ceiling() -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(SLED_CACHE_BYTES)
        .flush_every_ms(Some(500))
        .open()
        .context("opening sled")?;
    let tree = db.open_tree("ceiling")?;
    let mut rng = rand::rng();
    let mut key = [0u8; 32];

    let (random, random_last) = insert(&db, &tree, |_| {
        rng.fill_bytes(&mut key);
        key.to_vec()
    })?;
    println!(
        "  random 32-byte keys, 100-byte values, {SLED_BATCH} per batch + flush: {random:.0} inserts/s \
         ({:.1} µs each; the last fifth of {SLED_PAIRS} into the grown tree: {random_last:.0}/s)",
        1e6 / random
    );

    let t0 = Instant::now();
    let mut found = 0usize;
    for _ in 0..SLED_MISSES {
        rng.fill_bytes(&mut key);
        found += usize::from(tree.get(key)?.is_some());
    }
    let misses = SLED_MISSES as f64 / t0.elapsed().as_secs_f64();
    println!("  lookups of absent random keys in that tree: {misses:.0}/s ({:.1} µs each)", 1e6 / misses);
    anyhow::ensure!(found == 0, "random 32-byte keys were found");

    let seq_tree = db.open_tree("ceiling-ascending")?;
    let (ascending, ascending_last) = insert(&db, &seq_tree, |i| (i as u64).to_be_bytes().to_vec())?;
    println!(
        "  ascending keys, same values and batches: {ascending:.0} inserts/s ({:.1} µs each; last fifth {ascending_last:.0}/s)",
        1e6 / ascending
    );
    Ok(json!({"random_inserts_per_s": random, "random_inserts_last_fifth_per_s": random_last,
        "absent_lookups_per_s": misses, "ascending_inserts_per_s": ascending,
        "ascending_inserts_last_fifth_per_s": ascending_last, "pairs": SLED_PAIRS, "batch": SLED_BATCH}))
}

/// Inserts `SLED_PAIRS` pairs with keys from `key`, a batch of `SLED_BATCH` at a time, each batch
/// flushed; the overall rate and that of the last fifth.
fn insert(db: &sled::Db, tree: &sled::Tree, mut key: impl FnMut(usize) -> Vec<u8>) -> anyhow::Result<(f64, f64)> {
    let value = [7u8; 100];
    let t0 = Instant::now();
    let mut last_fifth = t0;
    for b in 0..SLED_PAIRS / SLED_BATCH {
        if b == (SLED_PAIRS / SLED_BATCH) * 4 / 5 {
            last_fifth = Instant::now();
        }
        let mut batch = sled::Batch::default();
        for i in 0..SLED_BATCH {
            batch.insert(key(b * SLED_BATCH + i), &value[..]);
        }
        tree.apply_batch(batch)?;
        db.flush()?;
    }
    let all = SLED_PAIRS as f64 / t0.elapsed().as_secs_f64();
    let last = (SLED_PAIRS / 5) as f64 / last_fifth.elapsed().as_secs_f64();
    Ok((all, last))
}

fn sign_ceiling() -> anyhow::Result<f64> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| anyhow::anyhow!("{e}"))?;
    let key = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let message = [b'r'; 400];
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < SIGN_FOR {
        for _ in 0..100 {
            std::hint::black_box(key.sign(std::hint::black_box(&message)));
        }
        n += 100;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The caps are the arithmetic of docs/benchmarks.md: with lookups at 8 µs and random inserts
    /// at 16 µs, three nodes on two cores apply at most 2,000,000 / (3 × 24) records/s.
    #[test]
    fn caps_divide_the_cores_among_three_nodes_that_each_apply_every_record() {
        let report = json!({
            "https_noop": [{"records_per_s": 50_000.0}, {"records_per_s": 25_000.0}],
            "sled": {"absent_lookups_per_s": 125_000.0, "random_inserts_last_fifth_per_s": 62_500.0,
                     "ascending_inserts_last_fifth_per_s": 200_000.0},
        });
        let mut caps = Caps::from_report(&report, 40_000.0);
        caps.cores = 2.0;
        caps.https_us = 80.0; // the last level: 25,000/s on two cores
        assert!((caps.batch_node_us - 24.0).abs() < 1e-9, "{}", caps.batch_node_us);
        assert!((caps.realtime_node_us - 34.0).abs() < 1e-9, "{}", caps.realtime_node_us);
        assert!((caps.sign_us - 25.0).abs() < 1e-9);
        assert!((caps.cap(caps.batch_node_us, 0.0, 1.0) - 2e6 / 72.0).abs() < 1e-6);
        // Real time: 3 × 34 per node, plus 80 of HTTPS and 25 of signing, once.
        assert!((caps.cap(caps.realtime_node_us, caps.https_us + caps.sign_us, 1.0) - 2e6 / 207.0).abs() < 1e-6);
        assert!((caps.cap(caps.batch_node_us, 0.0, 3.0) - 3.0 * 2e6 / 72.0).abs() < 1e-6);
        assert!((caps.applier_cap() - 1e6 / 24.0).abs() < 1e-6);
        // A part that was not measured counts as unaffordable: no cap is claimed from it.
        let empty = Caps::from_report(&json!({}), 40_000.0);
        assert_eq!(empty.cap(empty.batch_node_us, 0.0, 1.0), 0.0);
    }

    /// The transport measurement loads what it claims to: servers on the node's HTTPS stack that
    /// answer the benchmark's POST with 201 over HTTP/2, so every request counts and none fails.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_noop_servers_answer_the_benchmark_load_with_201_over_tls() {
        crate::tls::install_crypto_provider();
        let servers = NoopServers::start().await.expect("servers");
        assert_eq!(servers.urls.len(), SERVERS);
        let target = servers.target();
        let level =
            crate::bench_etcd::load(&target, false, "xx", 4, Duration::from_millis(500), 0).await.expect("load");
        assert!(level.ok > 0 && level.errors == 0, "ok {} errors {}: {:?}", level.ok, level.errors, level.first_errors);

        let http = crate::tls::https_client(&servers.ca_pem).expect("client");
        let answer =
            http.post(format!("{}/api/v1/datasets/d/records", servers.urls[0])).body("{}").send().await.expect("post");
        assert_eq!(answer.version(), reqwest::Version::HTTP_2);
        assert_eq!(answer.status().as_u16(), 201);
        let body: Value = answer.json().await.expect("json");
        assert_eq!(body["outcomes"][0], "stored");
        servers.stop().await;
    }
}
