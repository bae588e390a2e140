//! `dtm bench --connections N`: N open TLS connections to the cluster at once (issue 4: 10,000
//! with zero errors). The connections are spread round-robin over the nodes (or all on the first
//! node with `--connections-one-node`), opened at most `HANDSHAKES_IN_FLIGHT` at a time, and held
//! open together, each the connection of one of `--connection-sources` source systems (API keys;
//! one source's requests in progress per node are capped by the pipeline's queue depth, so one
//! key for 10,000 connections would measure that cap instead); then for `--connection-secs` every connection posts one record every
//! `--connection-interval-secs` (start times spread evenly over the interval) over its own
//! connection, HTTP/1.1 with keep-alive, written by hand so that a connection the server closes or
//! resets is seen as an error instead of being silently re-opened by a pooling client.
//!
//! An error is anything but a `201`: a refused, timed-out or failed connect or TLS handshake, a
//! connection closed or reset by the server, a response slower than `RESPONSE_TIMEOUT`, or another
//! status. It reports connections established, requests, errors by kind, latencies, and each
//! node's resident memory and open descriptors before, while holding the connections (sampled every
//! `SAMPLE_INTERVAL`), and after.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use hdrhistogram::Histogram;
use reqwest::Method;
use serde_json::Value;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::bench::BenchArgs;
use crate::bench::bench_record;
use crate::bench_env::DemoNode;
use crate::client::Client;

/// TCP connects + TLS handshakes in progress at once while opening.
const HANDSHAKES_IN_FLIGHT: usize = 200;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response head + body read.
const RESPONSE_BYTES_MAX: usize = 64 * 1024;
const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Tally {
    errors: BTreeMap<String, u64>,
    request_hist: Option<Histogram<u64>>,
    handshake_hist: Option<Histogram<u64>>,
}

impl Tally {
    fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }
}

fn hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("static bounds")
}

/// Reads one HTTP/1.1 response (Content-Length or chunked) and returns its status.
pub(crate) async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<u16, String> {
    buf.clear();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > RESPONSE_BYTES_MAX {
            return Err("response head too large".into());
        }
        let n = stream.read(&mut chunk).await.map_err(io_kind)?;
        if n == 0 {
            return Err("closed by server".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {}", head.lines().next().unwrap_or_default()))?;
    let header = |name: &str| {
        head.lines()
            .find(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
            .map(|l| l[name.len() + 1..].trim().to_ascii_lowercase())
    };
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if len > RESPONSE_BYTES_MAX {
            return Err("response body too large".into());
        }
        while buf.len() < head_end + len {
            let n = stream.read(&mut chunk).await.map_err(io_kind)?;
            if n == 0 {
                return Err("closed by server mid-response".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        while !buf[head_end..].ends_with(b"0\r\n\r\n") {
            if buf.len() > RESPONSE_BYTES_MAX {
                return Err("response body too large".into());
            }
            let n = stream.read(&mut chunk).await.map_err(io_kind)?;
            if n == 0 {
                return Err("closed by server mid-response".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    Ok(status)
}

fn io_kind(e: std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionAborted => "connection aborted".into(),
        std::io::ErrorKind::BrokenPipe => "broken pipe".into(),
        std::io::ErrorKind::UnexpectedEof => "closed by server (unexpected EOF)".into(),
        k => format!("io: {k:?}"),
    }
}

/// A TLS connector that trusts `ca_pem` and offers only HTTP/1.1 (the hand-written client above).
pub(crate) fn http11_connector(ca_pem: &[u8]) -> anyhow::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots.add(c.context("parsing the CA certificate")?)?;
    }
    let mut cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(cfg)))
}

pub(crate) async fn open(connector: &TlsConnector, addr: &str) -> Result<TlsStream<TcpStream>, String> {
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Err(_) => return Err("connect timeout".into()),
        Ok(Err(e)) => return Err(format!("connect: {}", io_kind(e))),
        Ok(Ok(t)) => t,
    };
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp)).await {
        Err(_) => Err("TLS handshake timeout".into()),
        Ok(Err(e)) => Err(format!("TLS handshake: {}", io_kind(e))),
        Ok(Ok(s)) => Ok(s),
    }
}

fn sample(nodes: &[DemoNode]) -> Vec<Value> {
    nodes
        .iter()
        .map(|n| {
            let (rss, hwm) = crate::bench_env::memory_kib(n.pid).unwrap_or_default();
            json!({"node": n.id, "pid": n.pid, "rss_kib": rss, "hwm_kib": hwm, "fds": crate::bench_env::open_fds(n.pid)})
        })
        .collect()
}

/// Registers `count` benchmark sources and returns their API keys (admin calls answered 429 are
/// retried after a pause).
async fn sources(admin: &Client, dataset: &str, count: usize) -> anyhow::Result<Vec<String>> {
    let mut keys = Vec::with_capacity(count);
    for k in 0..count {
        let body = json!({"id": format!("{}-c{k}", dataset.replace('_', "-")), "name": "connections benchmark"});
        let mut tries = 0;
        loop {
            let (status, v) = admin.call(Method::POST, "/api/v1/sources", Some(&body)).await?;
            if status == 429 && tries < 20 {
                tries += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            anyhow::ensure!(status == 201 || status == 200, "creating a source: HTTP {status}: {v}");
            keys.push(v["api_key"].as_str().context("no api_key")?.to_string());
            break;
        }
    }
    Ok(keys)
}

/// The `--connections N` run.
pub async fn run(
    args: &BenchArgs,
    demo: &Value,
    admin: &Client,
    ca_pem: &[u8],
    urls: &[String],
    dataset: &str,
    padding: &str,
) -> anyhow::Result<()> {
    let n = args.connections;
    let keys = sources(admin, dataset, args.connection_sources.max(1)).await?;
    let (soft_before, soft) = crate::rlimit::raise_open_files_limit().context("raising RLIMIT_NOFILE")?;
    let header = crate::bench_env::header();
    for h in &header {
        println!("# {h}");
    }
    println!(
        "# {n} connections of {} sources, {} per node, one record every {} s per connection for {} s; bench RLIMIT_NOFILE {soft_before} -> {soft}",
        keys.len(),
        if args.connections_one_node { "all on node 1".to_string() } else { format!("~{}", n / urls.len().max(1)) },
        args.connection_interval_secs,
        args.connection_secs
    );
    anyhow::ensure!(
        (n as u64) + 100 < soft,
        "{n} connections need more descriptors than this process may open ({soft}); raise the hard limit (ulimit -Hn)"
    );
    let nodes = crate::bench_env::demo_nodes(demo);
    for s in sample(&nodes) {
        println!("before: {s}");
    }
    let before = sample(&nodes);

    let connector = http11_connector(ca_pem)?;
    let targets: Vec<String> = if args.connections_one_node { urls[..1].to_vec() } else { urls.to_vec() };
    let addrs: Vec<String> =
        targets.iter().map(|u| u.trim_start_matches("https://").trim_end_matches('/').to_string()).collect();

    let tally =
        Arc::new(Mutex::new(Tally { request_hist: Some(hist()), handshake_hist: Some(hist()), ..Tally::default() }));
    let established = Arc::new(AtomicU64::new(0));
    let alive = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_IN_FLIGHT));
    let (go_tx, go_rx) = tokio::sync::watch::channel::<Option<Instant>>(None);
    let interval = Duration::from_secs_f64(args.connection_interval_secs.max(0.001));
    let steady = Duration::from_secs(args.connection_secs);
    let open_started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (connector, addr) = (connector.clone(), addrs[i % addrs.len()].clone());
        let path = format!("/api/v1/datasets/{dataset}/records");
        let (key, padding) = (keys[i % keys.len()].clone(), padding.to_string());
        let (tally, established, alive, lost, ok, sent, handshakes, mut go_rx) = (
            tally.clone(),
            established.clone(),
            alive.clone(),
            lost.clone(),
            ok.clone(),
            sent.clone(),
            handshakes.clone(),
            go_rx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let permit = handshakes.acquire_owned().await;
            let opened = open(&connector, &addr).await;
            drop(permit);
            let mut stream = match opened {
                Ok(s) => s,
                Err(e) => {
                    tally.lock().unwrap_or_else(|p| p.into_inner()).error(e);
                    return;
                }
            };
            {
                let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(h) = t.handshake_hist.as_mut() {
                    let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
                }
            }
            established.fetch_add(1, Ordering::Relaxed);
            alive.fetch_add(1, Ordering::Relaxed);
            // Everyone starts together once every connection was tried.
            let Ok(go) = go_rx.wait_for(|g| g.is_some()).await.map(|g| g.unwrap_or_else(Instant::now)) else { return };
            let end = go + steady;
            let mut next = go + interval.mul_f64(i as f64 / n as f64);
            let mut buf = Vec::with_capacity(4096);
            let mut seq = 0u64;
            while next < end {
                tokio::time::sleep_until(next.into()).await;
                next += interval;
                seq += 1;
                let body = serde_json::to_vec(&bench_record(9_000_000 + i, seq, &padding)).unwrap_or_default();
                let head = format!(
                    "POST {path} HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                sent.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let result = tokio::time::timeout(RESPONSE_TIMEOUT, async {
                    stream.write_all(head.as_bytes()).await.map_err(io_kind)?;
                    stream.write_all(&body).await.map_err(io_kind)?;
                    stream.flush().await.map_err(io_kind)?;
                    read_response(&mut stream, &mut buf).await
                })
                .await;
                let elapsed = started.elapsed();
                let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(h) = t.request_hist.as_mut() {
                    let _ = h.record(elapsed.as_micros().max(1) as u64);
                }
                match result {
                    Ok(Ok(201)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(status @ (429 | 503))) => t.error(format!("HTTP {status} (refused with Retry-After)")),
                    Ok(Ok(status)) => t.error(format!("HTTP {status}")),
                    Ok(Err(e)) => {
                        t.error(e);
                        alive.fetch_sub(1, Ordering::Relaxed);
                        lost.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(_) => {
                        t.error("response timeout".into());
                        alive.fetch_sub(1, Ordering::Relaxed);
                        lost.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
            alive.fetch_sub(1, Ordering::Relaxed);
            let _ = stream.shutdown().await;
        }));
    }
    // Wait until every connection is open or failed, printing progress.
    loop {
        let tried = established.load(Ordering::Relaxed)
            + tally.lock().unwrap_or_else(|p| p.into_inner()).errors.values().sum::<u64>();
        if tried >= n as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if open_started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("opening {n} connections took more than 10 minutes");
        }
    }
    let open_s = open_started.elapsed().as_secs_f64();
    let opened = established.load(Ordering::Relaxed);
    println!("opened {opened} of {n} connections in {open_s:.1} s");
    let holding_idle = sample(&nodes);
    for s in &holding_idle {
        println!("holding (idle): {s}");
    }
    let go = Instant::now();
    let _ = go_tx.send(Some(go));
    let mut peak: Vec<Value> = holding_idle.clone();
    while go.elapsed() < steady {
        tokio::time::sleep(SAMPLE_INTERVAL.min(steady.saturating_sub(go.elapsed())).max(Duration::from_millis(10)))
            .await;
        let s = sample(&nodes);
        for (p, v) in peak.iter_mut().zip(&s) {
            if v["rss_kib"].as_u64() > p["rss_kib"].as_u64() {
                *p = v.clone();
            }
        }
        let a = alive.load(Ordering::Relaxed);
        let errs: u64 = tally.lock().unwrap_or_else(|p| p.into_inner()).errors.values().sum();
        println!(
            "t={:>4.0}s open {a}, sent {}, ok {}, errors {errs}, node RSS MiB {:?}, fds {:?}",
            go.elapsed().as_secs_f64(),
            sent.load(Ordering::Relaxed),
            ok.load(Ordering::Relaxed),
            s.iter().map(|v| v["rss_kib"].as_u64().unwrap_or(0) / 1024).collect::<Vec<_>>(),
            s.iter().map(|v| v["fds"].as_u64().unwrap_or(0)).collect::<Vec<_>>()
        );
    }
    for t in tasks {
        let _ = t.await;
    }
    let after = sample(&nodes);
    let t = tally.lock().unwrap_or_else(|p| p.into_inner());
    let req = t
        .request_hist
        .as_ref()
        .map(|h| (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max()))
        .unwrap_or_default();
    let hs = t
        .handshake_hist
        .as_ref()
        .map(|h| (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max()))
        .unwrap_or_default();
    let ms = |us: u64| us as f64 / 1000.0;
    let errors: u64 = t.errors.values().sum();
    let (sent, ok) = (sent.load(Ordering::Relaxed), ok.load(Ordering::Relaxed));
    println!();
    println!(
        "| connections | established | lost while open | requests | 201 | errors | request p50 / p99 / max ms | connect+TLS p50 / p99 / max ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---|---|");
    println!(
        "| {n} | {opened} | {} | {sent} | {ok} | {errors} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} |",
        lost.load(Ordering::Relaxed),
        ms(req.0),
        ms(req.1),
        ms(req.2),
        ms(hs.0),
        ms(hs.1),
        ms(hs.2)
    );
    for (k, v) in &t.errors {
        println!("error: {k} × {v}");
    }
    println!();
    println!(
        "| node | RSS before MiB | RSS holding (idle) MiB | RSS peak under load MiB | VmHWM MiB | fds before | fds holding |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (((b, h), p), a) in before.iter().zip(&holding_idle).zip(&peak).zip(&after) {
        let mib = |v: &Value, f: &str| v[f].as_u64().unwrap_or(0) / 1024;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            b["node"],
            mib(b, "rss_kib"),
            mib(h, "rss_kib"),
            mib(p, "rss_kib"),
            mib(a, "hwm_kib"),
            b["fds"],
            h["fds"]
        );
    }
    println!(
        "target (10,000 open connections with zero errors): {}",
        if n >= 10_000 && errors == 0 && opened == n as u64 {
            "met"
        } else if n < 10_000 {
            "not measured at 10,000"
        } else {
            "NOT met"
        }
    );
    if let Some(out) = &args.out {
        let report = json!({"header": header, "connections": n, "established": opened, "lost": lost.load(Ordering::Relaxed), "open_s": open_s, "requests": sent,
            "ok": ok, "errors": t.errors, "request_ms": [ms(req.0), ms(req.1), ms(req.2)],
            "handshake_ms": [ms(hs.0), ms(hs.1), ms(hs.2)], "nodes_before": before, "nodes_holding_idle": holding_idle,
            "nodes_peak": peak, "nodes_after": after});
        std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn responses_are_read_by_length_and_by_chunks() {
        let mut buf = Vec::new();
        let mut r: &[u8] = b"HTTP/1.1 201 Created\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(read_response(&mut r, &mut buf).await, Ok(201));
        let mut r: &[u8] =
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        assert_eq!(read_response(&mut r, &mut buf).await, Ok(503));
        let mut r: &[u8] = b"HTTP/1.1 201 Created\r\ncontent-length: 50\r\n\r\nshort";
        assert!(read_response(&mut r, &mut buf).await.is_err_and(|e| e.contains("closed")));
        let mut r: &[u8] = b"";
        assert_eq!(read_response(&mut r, &mut buf).await, Err("closed by server".into()));
    }
}
