//! `dtm bench --aggregate-records N`: loads N transaction events (arrays of 1,000 records through
//! the real-time API, several requests at once) into a fresh dataset whose time field is a
//! date-time spread over 30 days (hourly cells × 20 agencies × 4 channels × 2 statuses), then asks
//! one node a mix of aggregate queries over HTTPS and reports their p50/p99/max latency.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context;
use hdrhistogram::Histogram;
use reqwest::Method;
use serde_json::Value;
use serde_json::json;

use crate::client::Client;

/// Records per request while loading, and requests in flight at once.
const LOAD_RECORDS_PER_REQUEST: u64 = 1_000;
const LOAD_REQUESTS_IN_FLIGHT: usize = 8;
/// Queries asked after loading (a rotating mix of shapes).
const QUERIES: usize = 300;

const AGENCIES: usize = 20;
const CHANNELS: [&str; 4] = ["web", "mobile", "api", "kiosk"];

fn definition(id: &str) -> Value {
    json!({
        "id": id, "title": "aggregate benchmark (events)",
        "schema": {"type": "object", "required": ["event_id", "time", "agency", "channel", "status", "duration_ms"],
            "properties": {"event_id": {"type": "string"}, "time": {"type": "string"}, "agency": {"type": "string"},
                "channel": {"type": "string"}, "status": {"enum": ["ok", "failed"]},
                "duration_ms": {"type": "integer", "minimum": 0}, "fee": {"type": "number"}}},
        "key": ["event_id"], "time_field": "time", "dimensions": ["agency", "channel", "status"],
        "measures": {"duration_ms": "avg", "fee": "sum"}
    })
}

/// Event `n` of the run: spread evenly over 30 days of November 2026 (Vietnam time).
fn event(run: &str, n: u64) -> Value {
    let minute = n % (30 * 24 * 60);
    let (day, hour, min) = (1 + minute / (24 * 60), (minute / 60) % 24, minute % 60);
    json!({"event_id": format!("{run}-{n}"), "time": format!("2026-11-{day:02}T{hour:02}:{min:02}:00+07:00"),
           "agency": format!("AG{:02}", n % AGENCIES as u64), "channel": CHANNELS[(n / 7 % 4) as usize],
           "status": if n.is_multiple_of(17) { "failed" } else { "ok" }, "duration_ms": 100 + n % 1_900,
           "fee": (n % 50) as f64 * 1_000.0})
}

pub async fn run(admin: &Client, key: &str, run: &str, records: u64, reuse: Option<&str>) -> anyhow::Result<Value> {
    if let Some(dataset) = reuse {
        return query(admin, dataset, records).await;
    }
    let dataset = format!("aggbench_{run}");
    admin.expect(Method::POST, "/api/v1/datasets", Some(&definition(&dataset))).await?;
    let started = Instant::now();
    let run_name = run.to_string();
    let make = Arc::new(move |n: u64| event(&run_name, n));
    load_arrays(admin, key, &dataset, records, LOAD_RECORDS_PER_REQUEST, LOAD_REQUESTS_IN_FLIGHT, false, make).await?;
    let load_s = started.elapsed().as_secs_f64();
    println!("loaded {records} events in {load_s:.1} s ({:.0} records/s)", records as f64 / load_s);
    let mut report = query(admin, &dataset, records).await?;
    report["load_records_per_s"] = json!(records as f64 / load_s);
    Ok(report)
}

/// How often one array is sent before the load gives up, and the pause between attempts.
const LOAD_ATTEMPTS_MAX: u32 = 30;
const LOAD_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Loads records `0..records` (record `n` made by `make`) through the real-time API in arrays of
/// `per_request`, `in_flight` requests at once round-robin over the nodes, each answered 201 (a 503
/// or 429 is sent again, up to `LOAD_ATTEMPTS_MAX` times) or the load fails. Returns the records'
/// logical size: the bytes of each one's JSON as it would be sent alone. With `progress`, prints a
/// line every 100 requests.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn load_arrays(
    admin: &Client,
    key: &str,
    dataset: &str,
    records: u64,
    per_request: u64,
    in_flight: usize,
    progress: bool,
    make: Arc<dyn Fn(u64) -> Value + Send + Sync>,
) -> anyhow::Result<u64> {
    let next = Arc::new(AtomicU64::new(0));
    let logical = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..in_flight {
        let (http, url) = (admin.http.clone(), admin.nodes[w % admin.nodes.len()].clone());
        let (key, dataset, next, logical, make) =
            (key.to_string(), dataset.to_string(), next.clone(), logical.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(per_request, Ordering::Relaxed);
                if from >= records {
                    return Ok::<_, anyhow::Error>(());
                }
                let to = (from + per_request).min(records);
                let body: Vec<Value> = (from..to).map(|n| make(n)).collect();
                let bytes: u64 = body.iter().map(|r| serde_json::to_vec(r).map(|v| v.len() as u64).unwrap_or(0)).sum();
                // As a source system would: a 503 (an election, a node cut off) or a 429 is sent
                // again after the time the node asks for, under the same idempotency key, so it is
                // stored once whatever happened to the first attempt.
                let idempotency_key = format!("load-{dataset}-{from}");
                let mut attempt = 0;
                loop {
                    let r = http
                        .post(format!("{url}/api/v1/datasets/{dataset}/records"))
                        .header("x-api-key", &key)
                        .header("idempotency-key", &idempotency_key)
                        .json(&body)
                        .send()
                        .await?;
                    let status = r.status().as_u16();
                    if status == 201 {
                        break;
                    }
                    attempt += 1;
                    let text = r.text().await.unwrap_or_default();
                    anyhow::ensure!(
                        matches!(status, 429 | 503) && attempt < LOAD_ATTEMPTS_MAX,
                        "loading: HTTP {status} (attempt {attempt}): {text}"
                    );
                    eprintln!("  HTTP {status} for records {from}..{to}, sending again (attempt {attempt})");
                    tokio::time::sleep(LOAD_RETRY_PAUSE).await;
                }
                logical.fetch_add(bytes, Ordering::Relaxed);
                if progress && (to / per_request).is_multiple_of(100) {
                    println!("  {to} records sent");
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(logical.load(Ordering::Relaxed))
}

/// Asks one node the query mix over `dataset` and reports the latency.
async fn query(admin: &Client, dataset: &str, records: u64) -> anyhow::Result<Value> {
    let node = admin.nodes.first().context("no node")?.clone();
    let token = admin.token.clone().context("no admin token")?;
    // Every node has applied everything before the clock starts.
    let (s, v) = admin
        .call(Method::GET, &format!("/api/v1/datasets/{dataset}/aggregates/digest?consistency=linearizable"), None)
        .await?;
    anyhow::ensure!(s == 200, "digest: {s} {v}");
    let shapes = [
        "interval=day&group_by=agency",
        "interval=month&group_by=agency,channel",
        "interval=hour&from=2026-11-15&to=2026-11-15",
        "interval=week&group_by=status",
        "interval=year&group_by=agency,channel,status",
    ];
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut cells_total = 0u64;
    for i in 0..QUERIES {
        let shape = shapes[i % shapes.len()];
        let t0 = Instant::now();
        let r = admin
            .http
            .get(format!("{node}/api/v1/datasets/{dataset}/aggregates?{shape}"))
            .bearer_auth(&token)
            .send()
            .await?;
        let status = r.status().as_u16();
        let body: Value = r.json().await?;
        hist.record(t0.elapsed().as_micros().max(1) as u64)?;
        anyhow::ensure!(status == 200, "query {shape}: {status} {body}");
        if i < shapes.len() {
            let rows = body["rows"].as_array().map(Vec::len).unwrap_or(0);
            let count: u64 =
                body["rows"].as_array().map(|r| r.iter().filter_map(|r| r["count"].as_u64()).sum()).unwrap_or(0);
            cells_total = cells_total.max(count);
            println!("  {shape}: {rows} rows, {count} records");
        }
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "aggregate queries on one node over {records} records: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({QUERIES} queries)",
        ms(0.5),
        ms(0.99),
        hist.max() as f64 / 1000.0
    );
    Ok(json!({"dataset": dataset, "records": records, "queries": QUERIES,
              "p50_ms": ms(0.5), "p99_ms": ms(0.99), "max_ms": hist.max() as f64 / 1000.0,
              "records_counted": cells_total}))
}
