//! `dtm bench --disk-records N`: bytes on disk per record and node memory after N records (issue
//! 4: sled is known for space amplification — measured, target ≤ 3× the logical size). Loads N
//! benchmark records (the same ~250-byte records as the load levels, under `--definition`) in
//! arrays of `RECORDS_PER_REQUEST` through the real-time API, `REQUESTS_IN_FLIGHT` at once,
//! round-robin over the nodes, and sums the JSON bytes sent per record (the logical size). Once every
//! member has applied the leader's last index it reports, per node: the data directory by file
//! (`du`-style allocated bytes, before and after), the growth per record and its ratio to the
//! logical size, and VmRSS/VmHWM from `/proc/PID/status`; then again after `--disk-settle-secs`
//! (snapshots and log compaction may have run by then).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use reqwest::Method;
use serde_json::Value;
use serde_json::json;

use crate::bench::BenchArgs;
use crate::bench::bench_record;
use crate::bench_env::DemoNode;
use crate::client::Client;

const RECORDS_PER_REQUEST: u64 = 1_000;
const REQUESTS_IN_FLIGHT: usize = 8;
const APPLY_DEADLINE: Duration = Duration::from_secs(300);

/// One node's data directory by entry (two path components deep) and its (VmRSS, VmHWM) in KiB.
type NodeMeasure = (BTreeMap<String, u64>, (u64, u64));

/// Per node: data directory by entry and memory.
fn measure(nodes: &[DemoNode]) -> Vec<NodeMeasure> {
    nodes
        .iter()
        .map(|n| {
            (crate::bench_env::disk_usage(&n.data_dir, 2), crate::bench_env::memory_kib(n.pid).unwrap_or_default())
        })
        .collect()
}

fn report(
    label: &str,
    nodes: &[DemoNode],
    before: &[NodeMeasure],
    now: &[NodeMeasure],
    records: u64,
    logical: u64,
) -> Vec<Value> {
    println!();
    println!("### {label}");
    let mb = |b: u64| b as f64 / 1e6;
    let mut out = Vec::new();
    for ((n, (b, _)), (a, (rss, hwm))) in nodes.iter().zip(before).zip(now) {
        let total_before: u64 = b.values().sum();
        let total: u64 = a.values().sum();
        let growth = total.saturating_sub(total_before);
        println!(
            "node {} (pid {}): {:.1} MB on disk ({:.1} MB before), growth {:.0} bytes/record, ×{:.2} the logical size; VmRSS {} MiB, VmHWM {} MiB",
            n.id,
            n.pid,
            mb(total),
            mb(total_before),
            growth as f64 / records as f64,
            growth as f64 / logical as f64,
            rss / 1024,
            hwm / 1024
        );
        println!("| file | before MB | now MB |");
        println!("|---|---:|---:|");
        let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
        names.sort();
        names.dedup();
        for name in names {
            let (x, y) = (b.get(name).copied().unwrap_or(0), a.get(name).copied().unwrap_or(0));
            if x.max(y) >= 1_000_000 {
                println!("| {name} | {:.1} | {:.1} |", mb(x), mb(y));
            }
        }
        let small: u64 = a.values().filter(|v| **v < 1_000_000).sum();
        println!("| (files under 1 MB) | | {:.1} |", mb(small));
        out.push(
            json!({"node": n.id, "pid": n.pid, "bytes_before": total_before, "bytes": total, "growth_bytes": growth,
            "bytes_per_record": growth as f64 / records as f64, "ratio_to_logical": growth as f64 / logical as f64,
            "files": a, "rss_kib": rss, "hwm_kib": hwm}),
        );
    }
    out
}

/// Waits until every member has applied the index the first node reports as its own applied index.
async fn wait_applied(admin: &Client) -> anyhow::Result<()> {
    let status = admin.expect(Method::GET, "/api/v1/cluster", None).await?;
    let target = status["applied_index"].as_u64().context("no applied_index")?;
    let deadline = Instant::now() + APPLY_DEADLINE;
    loop {
        let s = admin.expect(Method::GET, "/api/v1/cluster", None).await?;
        let members = s["members"].as_array().cloned().unwrap_or_default();
        if !members.is_empty() && members.iter().all(|m| m["applied_index"].as_u64().is_some_and(|a| a >= target)) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "members did not apply index {target} within {APPLY_DEADLINE:?}: {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The `--disk-records N` run.
pub async fn run(
    args: &BenchArgs,
    demo: &Value,
    admin: &Client,
    key: &str,
    dataset: &str,
    padding: &str,
) -> anyhow::Result<()> {
    let records = args.disk_records;
    let header = crate::bench_env::header();
    for h in &header {
        println!("# {h}");
    }
    println!(
        "# {records} records, definition `{}`, arrays of {RECORDS_PER_REQUEST}, {REQUESTS_IN_FLIGHT} requests in flight",
        args.definition
    );
    let nodes = crate::bench_env::demo_nodes(demo);
    anyhow::ensure!(!nodes.is_empty(), "demo.json lists no nodes with pid and data_dir");
    let before = measure(&nodes);
    let started = Instant::now();
    let padding_text = padding.to_string();
    let make = Arc::new(move |n: u64| bench_record(8_000_000 + (n / 100_000) as usize, n, &padding_text));
    let logical = crate::bench_aggregates::load_arrays(
        admin,
        key,
        dataset,
        records,
        RECORDS_PER_REQUEST,
        REQUESTS_IN_FLIGHT,
        true,
        make,
    )
    .await?;
    let load_s = started.elapsed().as_secs_f64();
    println!(
        "loaded {records} records ({:.1} MB of JSON, {:.0} bytes/record) in {load_s:.1} s ({:.0} records/s)",
        logical as f64 / 1e6,
        logical as f64 / records as f64,
        records as f64 / load_s
    );
    wait_applied(admin).await?;
    let applied = measure(&nodes);
    let first = report("right after every node applied the load", &nodes, &before, &applied, records, logical);
    tokio::time::sleep(Duration::from_secs(args.disk_settle_secs)).await;
    let settled = measure(&nodes);
    let second = report(&format!("{} s later", args.disk_settle_secs), &nodes, &before, &settled, records, logical);
    let worst = second.iter().filter_map(|n| n["ratio_to_logical"].as_f64()).fold(0.0, f64::max);
    println!();
    println!(
        "target (bytes on disk ≤ 3× the logical size): worst node ×{worst:.2} — {}",
        if worst <= 3.0 { "met" } else { "NOT met" }
    );
    if let Some(out) = &args.out {
        let report = json!({"header": header, "records": records, "logical_bytes": logical, "load_s": load_s,
            "after_apply": first, "after_settle": second, "settle_s": args.disk_settle_secs});
        std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
