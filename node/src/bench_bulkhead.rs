//! `dtm bench --bulkhead`: what a flooding source costs another source (issue 3, A1.3). Source B
//! posts single records one at a time to one node, first alone, then while source A floods the
//! same node over `--bulkhead-flood` connections, each sending its next request as soon as it has
//! an answer and honouring `Retry-After` when it is pushed back (429), as HTTP clients do. Reports
//! B's latency both ways and their ratio, and what A got. A's admitted share is the node's
//! `--source-queue-depth` (`DTM_SOURCE_QUEUE_DEPTH` in the environment of `dtm demo`).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use reqwest::Method;
use serde_json::json;

use crate::bench::BenchArgs;
use crate::bench::bench_record;
use crate::client::Client;

/// Longest `Retry-After` a flooding client honours (so the run ends on time).
const RETRY_AFTER_MAX: Duration = Duration::from_secs(5);

/// What the flooding source got.
#[derive(Default)]
struct Flood {
    accepted: AtomicU64,
    pushed_back: AtomicU64,
    other: AtomicU64,
}

/// A flooding client: posts as source A to `url` until `stop`.
async fn flood_client(
    http: reqwest::Client,
    url: String,
    key: String,
    padding: String,
    client: usize,
    stop: Arc<AtomicBool>,
    flood: Arc<Flood>,
) {
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let body = serde_json::to_vec(&bench_record(client, seq, &padding)).unwrap_or_default();
        let r = http
            .post(&url)
            .header("x-api-key", &key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        match r {
            Ok(resp) if resp.status().as_u16() == 201 => {
                flood.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(resp) if resp.status().as_u16() == 429 => {
                flood.pushed_back.fetch_add(1, Ordering::Relaxed);
                let after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .map_or(Duration::from_secs(1), Duration::from_secs)
                    .min(RETRY_AFTER_MAX);
                let deadline = tokio::time::Instant::now() + after;
                while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            _ => {
                flood.other.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

pub async fn run(
    args: &BenchArgs,
    admin: &Client,
    ca_pem: &[u8],
    urls: &[String],
    key_a: &str,
    dataset: &str,
    padding: &str,
) -> anyhow::Result<()> {
    let node = urls.get(1).or(urls.first()).context("no node to load")?.clone();
    let id_b = format!("{}-b", dataset.replace('_', "-"));
    let src = admin.expect(Method::POST, "/api/v1/sources", Some(&json!({"id": id_b, "name": "bulkhead B"}))).await?;
    let key_b = src["api_key"].as_str().context("no api_key")?.to_string();
    let duration = Duration::from_secs(args.duration_secs);
    let b_target = crate::bench_etcd::Target {
        system: crate::bench_etcd::System::Dtm,
        urls: std::slice::from_ref(&node),
        ca_pem,
        api_key: &key_b,
        dataset,
    };
    for h in crate::bench_env::header() {
        println!("# {h}");
    }
    println!(
        "node {node}; source B posts one record at a time; source A floods with {} connections",
        args.bulkhead_flood
    );
    let alone = crate::bench_etcd::load(&b_target, args.http1, padding, 1, duration, 0).await?;
    println!(
        "B alone:        p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} ok, {} errors)",
        alone.ms(0.5),
        alone.ms(0.99),
        alone.max_ms(),
        alone.ok,
        alone.errors
    );

    let stop = Arc::new(AtomicBool::new(false));
    let flood = Arc::new(Flood::default());
    let url = format!("{node}/api/v1/datasets/{dataset}/records");
    let mut tasks = Vec::new();
    for i in 0..args.bulkhead_flood {
        let http = crate::tls::https_client_with(ca_pem, args.http1)?;
        tasks.push(tokio::spawn(flood_client(
            http,
            url.clone(),
            key_a.to_string(),
            padding.to_string(),
            2_000_000 + i,
            stop.clone(),
            flood.clone(),
        )));
    }
    let loaded = crate::bench_etcd::load(&b_target, args.http1, padding, 1, duration, 1).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let loaded = loaded?;
    let (accepted, pushed_back, other) = (
        flood.accepted.load(Ordering::Relaxed),
        flood.pushed_back.load(Ordering::Relaxed),
        flood.other.load(Ordering::Relaxed),
    );
    println!(
        "B under flood:  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} ok, {} errors)",
        loaded.ms(0.5),
        loaded.ms(0.99),
        loaded.max_ms(),
        loaded.ok,
        loaded.errors
    );
    let (r50, r99) = (loaded.ms(0.5) / alone.ms(0.5).max(0.001), loaded.ms(0.99) / alone.ms(0.99).max(0.001));
    println!("B's latency under the flood: p50 ×{r50:.2}, p99 ×{r99:.2} (target: p99 within ×2, no errors)");
    println!("A: {accepted} accepted, {pushed_back} pushed back (429), {other} other answers");
    let report = json!({"header": crate::bench_env::header_json(), "node": node, "flood_connections": args.bulkhead_flood, "b_alone": alone.to_json(),
        "b_under_flood": loaded.to_json(), "p50_ratio": r50, "p99_ratio": r99,
        "a": {"accepted": accepted, "pushed_back": pushed_back, "other": other}});
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
