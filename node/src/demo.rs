//! `dtm demo`: the main job on embedded defaults. Makes a CA and node certificates, starts N
//! `dtm serve` processes on 127.0.0.1 (each in a site of its own), forms one cluster with every
//! node a voter, registers demo sources and datasets, writes `DIR/demo.json`, and feeds realistic
//! records until Ctrl-C or SIGTERM, then stops its nodes cleanly. Run again on the same DIR it
//! resumes the same cluster with its data. It never restarts a node that somebody killed.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use reqwest::Method;
use serde_json::Value;
use serde_json::json;

use crate::client::Client;

const SITES: [&str; 6] = ["hanoi", "danang", "hcmc", "cantho", "haiphong", "hue"];
const START_DEADLINE: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(15);

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Number of nodes (voters), each in a site of its own.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=6))]
    pub nodes: u64,
    /// Where certificates, node data, logs and demo.json go.
    #[arg(long, default_value = "dtm-demo")]
    pub dir: PathBuf,
    /// HTTPS ports are P, P+1, …; gRPC ports P+100, P+101, …
    #[arg(long, default_value_t = 8443)]
    pub base_port: u16,
    /// Seconds between two rounds of sample submissions.
    #[arg(long, default_value_t = 1.0)]
    pub feed_interval_secs: f64,
}

struct DemoNode {
    id: u64,
    http: String,
    grpc: String,
    site: &'static str,
    data_dir: PathBuf,
    cmd: Vec<String>,
    child: tokio::process::Child,
}

fn node_cmd(exe: &Path, dir: &Path, id: u64, base: u16) -> anyhow::Result<(Vec<String>, String, String, &'static str)> {
    let offset = u16::try_from(id - 1)?;
    let http = format!("127.0.0.1:{}", base.checked_add(offset).context("port out of range")?);
    let grpc = format!("127.0.0.1:{}", base.checked_add(100 + offset).context("port out of range")?);
    let site = SITES[(id as usize - 1) % SITES.len()];
    let cmd = vec![
        exe.display().to_string(),
        "serve".into(),
        "--node-id".into(),
        id.to_string(),
        "--site".into(),
        site.into(),
        "--data-dir".into(),
        dir.join(format!("node-{id}")).display().to_string(),
        "--tls-dir".into(),
        dir.join("tls").display().to_string(),
        "--http-addr".into(),
        http.clone(),
        "--grpc-addr".into(),
        grpc.clone(),
    ];
    Ok((cmd, http, grpc, site))
}

fn spawn(cmd: &[String], extra: &[&str], data_dir: &Path) -> anyhow::Result<tokio::process::Child> {
    std::fs::create_dir_all(data_dir)?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(data_dir.join("node.log"))?;
    let child = tokio::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .args(extra)
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", cmd.join(" ")))?;
    Ok(child)
}

async fn wait_for<F, Fut>(what: &str, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + START_DEADLINE;
    while Instant::now() < deadline {
        if f().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("timed out waiting for {what}")
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    // Signals first: a Ctrl-C during start-up must stop the nodes already started, not orphan them.
    let stop_requested = crate::shutdown_signal();
    let exe = std::env::current_exe().context("locating the dtm binary")?;
    std::fs::create_dir_all(&args.dir)?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let demo_json = dir.join("demo.json");
    let previous: Option<Value> = match std::fs::read(&demo_json) {
        Ok(b) => {
            Some(serde_json::from_slice(&b).context("demo.json is damaged; remove the directory to start afresh")?)
        }
        Err(_) => None,
    };
    let resume = previous.is_some();
    let tls = dir.join("tls");
    crate::certs::init(&tls, args.nodes, &[])?;
    let ca_pem = std::fs::read(tls.join("ca.pem"))?;

    let mut nodes = Vec::new();
    for id in 1..=args.nodes {
        let (cmd, http, grpc, site) = node_cmd(&exe, &dir, id, args.base_port)?;
        let data_dir = dir.join(format!("node-{id}"));
        let extra: &[&str] = if id == 1 && !resume { &["--bootstrap"] } else { &[] };
        let child = spawn(&cmd, extra, &data_dir)?;
        nodes.push(DemoNode { id, http, grpc, site, data_dir, cmd, child });
    }
    let outcome = tokio::select! {
        r = drive(&args, &dir, &ca_pem, &mut nodes, previous) => r,
        _ = stop_requested => {
            println!("\nstopping the demo cluster…");
            Ok(())
        }
    };
    if let Err(e) = &outcome {
        eprintln!("demo: {e:#}");
    }
    stop(&mut nodes).await;
    outcome
}

async fn drive(
    args: &DemoArgs,
    dir: &Path,
    ca_pem: &[u8],
    nodes: &mut [DemoNode],
    previous: Option<Value>,
) -> anyhow::Result<()> {
    let http = crate::tls::https_client(ca_pem)?;
    let urls: Vec<String> = nodes.iter().map(|n| format!("https://{}", n.http)).collect();
    let token = match &previous {
        Some(p) => p["admin_token"].as_str().context("demo.json has no admin_token")?.to_string(),
        None => {
            let file = nodes[0].data_dir.join("admin-token");
            wait_for("the first node's admin token", || async { file.exists() }).await?;
            std::fs::read_to_string(&file)?.trim().to_string()
        }
    };
    let client = Client { nodes: urls.clone(), token: Some(token.clone()), http: http.clone() };
    for url in &urls {
        let ready = format!("{url}/api/v1/health");
        wait_for(&format!("{url} to answer"), || {
            let r = http.get(&ready).send();
            async move { r.await.map(|r| r.status().is_success()).unwrap_or(false) }
        })
        .await?;
    }

    let (sources, datasets) = match &previous {
        Some(p) => {
            let sources = p["sources"].as_array().cloned().unwrap_or_default();
            let datasets = p["datasets"].as_array().cloned().unwrap_or_default();
            (sources, datasets)
        }
        None => {
            for n in nodes.iter().skip(1) {
                let body = json!({"id": n.id, "http_addr": n.http, "grpc_addr": n.grpc, "site": n.site, "voter": true});
                client
                    .expect(Method::POST, "/api/v1/cluster/nodes", Some(&body))
                    .await
                    .with_context(|| format!("adding node {}", n.id))?;
            }
            setup_catalog(&client).await?
        }
    };
    let cluster = json!({
        "ca_cert": dir.join("tls/ca.pem").display().to_string(),
        "admin_token": token,
        "nodes": nodes.iter().map(|n| json!({
            "id": n.id, "pid": n.child.id(), "http": format!("https://{}", n.http), "grpc": n.grpc,
            "data_dir": n.data_dir.display().to_string(), "site": n.site, "cmd": n.cmd,
        })).collect::<Vec<_>>(),
        "sources": sources,
        "datasets": datasets,
    });
    crate::server::write_private(&dir.join("demo.json"), &serde_json::to_string_pretty(&cluster)?, 0o600)?;

    println!(
        "\nDTM demo cluster is up ({} nodes, {}).",
        nodes.len(),
        if previous.is_some() { "resumed" } else { "new" }
    );
    for n in nodes.iter() {
        println!("  node {} ({:<8}) https://{}   grpc {}", n.id, n.site, n.http, n.grpc);
    }
    println!("  CA certificate: {}", dir.join("tls/ca.pem").display());
    println!("  admin token:    {token}");
    for s in &sources {
        println!("  source {:<14} API key {}", s["id"].as_str().unwrap_or(""), s["api_key"].as_str().unwrap_or(""));
    }
    println!(
        "  cluster file:   {}   (try: dtm cluster status --cluster {})",
        dir.join("demo.json").display(),
        dir.join("demo.json").display()
    );
    println!("Feeding sample data; Ctrl-C stops the cluster cleanly.\n");

    feed(&http, &urls, &sources, Duration::from_secs_f64(args.feed_interval_secs.max(0.05))).await
}

async fn setup_catalog(client: &Client) -> anyhow::Result<(Vec<Value>, Vec<Value>)> {
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["agency", "period", "channel", "transactions", "failed"],
        "properties": {
            "agency": {"type": "string"}, "period": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
            "channel": {"type": "string", "enum": ["web", "mobile", "api", "kiosk"]},
            "transactions": {"type": "integer", "minimum": 0}, "failed": {"type": "integer", "minimum": 0},
            "citizen_id": {"type": "string"}, "email": {"type": "string"}, "note": {"type": "string"}
        }
    });
    let dataset = json!({
        "id": "etx_monthly", "title": "E-transaction statistics, monthly", "schema": schema,
        "key": ["agency", "period", "channel"], "time_field": "period", "dimensions": ["agency", "channel"],
        "measures": {"transactions": "sum", "failed": "sum"},
        "masking": {"citizen_id": "partial", "email": "hash", "note": "redact"},
        "classification": "internal", "priority": "normal"
    });
    let (status, v) = client.call(Method::POST, "/api/v1/datasets", Some(&dataset)).await?;
    // 409: defined by a first run that was interrupted before demo.json was written.
    anyhow::ensure!(status == 201 || status == 409, "defining etx_monthly: HTTP {status}: {v}");
    let mut sources = Vec::new();
    for (id, name, agency) in [
        ("moj-portal", "Cổng dịch vụ công Bộ Tư pháp", "Bộ Tư pháp"),
        ("hcmc-portal", "Cổng dịch vụ công TP. Hồ Chí Minh", "UBND TP. Hồ Chí Minh"),
    ] {
        let body = json!({"id": id, "name": name, "agency": agency, "contact": "cntt@example.gov.vn"});
        let v = client
            .expect(Method::POST, "/api/v1/sources", Some(&body))
            .await
            .with_context(|| format!("registering {id}"))?;
        sources.push(json!({"id": id, "agency": agency, "api_key": v["api_key"]}));
    }
    Ok((sources, vec![json!("etx_monthly")]))
}

/// Posts sample records round-robin over the nodes: small real-time submissions every interval and
/// a larger array every tenth round. Failures are reported and the feed goes on.
async fn feed(http: &reqwest::Client, urls: &[String], sources: &[Value], interval: Duration) -> anyhow::Result<()> {
    let channels = ["web", "mobile", "api", "kiosk"];
    let mut round: u64 = 0;
    let mut accepted: u64 = 0;
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        round += 1;
        for (i, s) in sources.iter().enumerate() {
            let (Some(key), Some(agency)) = (s["api_key"].as_str(), s["agency"].as_str()) else { continue };
            let n = if round.is_multiple_of(10) { 200 } else { 1 + (round % 5) as usize };
            let records: Vec<Value> = (0..n)
                .map(|j| {
                    let t = 100 + ((round * 37 + j as u64 * 11) % 900);
                    json!({
                        "agency": agency, "period": format!("2026-{:02}", 1 + (round / 60) % 12),
                        "channel": channels[(j + i) % channels.len()], "transactions": t, "failed": t / 50,
                        "citizen_id": format!("0792{:08}", (round * 1000 + j as u64) % 100_000_000),
                    })
                })
                .collect();
            let url = &urls[(round as usize + i) % urls.len()];
            let r = http
                .post(format!("{url}/api/v1/datasets/etx_monthly/records"))
                .header("x-api-key", key)
                .header(
                    "idempotency-key",
                    format!("demo-{}-{round}-{}", s["id"].as_str().unwrap_or(""), std::process::id()),
                )
                .json(&records)
                .send()
                .await;
            match r {
                Ok(resp) if resp.status().as_u16() == 201 => accepted += n as u64,
                Ok(resp) => eprintln!("feed: {url} answered {}", resp.status()),
                Err(e) => eprintln!("feed: {url}: {e}"),
            }
        }
        if round.is_multiple_of(20) {
            println!("fed {accepted} records so far");
        }
    }
}

async fn stop(nodes: &mut [DemoNode]) {
    for n in nodes.iter() {
        if let Some(pid) = n.child.id() {
            // SAFETY: sending a signal to our own child process by pid.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
    for n in nodes.iter_mut() {
        match tokio::time::timeout(STOP_GRACE, n.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("node {} did not stop in time; killing it", n.id);
                let _ = n.child.kill().await;
            }
        }
    }
}
