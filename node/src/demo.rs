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
    stop_restarted(&dir.join("demo.json"), &nodes).await;
    outcome
}

/// Whether `pid` is a running process (an exited one waiting to be reaped is not).
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only asks whether the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false);
    exists && !zombie
}

/// Stops the nodes that a drill or a fault tool started again after killing the demo's own
/// process (their new pids are in demo.json): the demo never restarts a node itself, but it does
/// not leave one running when it stops. Only a process whose command line is that node's
/// `dtm serve` is signalled.
async fn stop_restarted(demo_json: &Path, nodes: &[DemoNode]) {
    let Ok(bytes) = std::fs::read(demo_json) else { return };
    let Ok(demo) = serde_json::from_slice::<Value>(&bytes) else { return };
    let mut others = Vec::new();
    for n in nodes {
        let listed =
            demo["nodes"].as_array().and_then(|a| a.iter().find(|x| x["id"] == n.id)).and_then(|x| x["pid"].as_u64());
        let Some(pid) = listed.and_then(|p| i32::try_from(p).ok()) else { continue };
        if Some(pid as u32) == n.child.id() {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let data_dir = n.data_dir.display().to_string();
        let ours = cmdline.split(|b| *b == 0).any(|a| a == b"serve")
            && cmdline.split(|b| *b == 0).any(|a| a == data_dir.as_bytes());
        if ours {
            // SAFETY: signalling a node process of this demo (checked by its command line).
            unsafe { libc::kill(pid, libc::SIGTERM) };
            others.push(pid);
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    for pid in others {
        while alive(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if alive(pid) {
            eprintln!("node process {pid} did not stop in time; killing it");
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
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
    // The reporting regime (issue 9): a monthly report, an agency that owes it and its data-entry user.
    let reporting = match previous.as_ref().map(|p| p["reporting"].clone()).filter(|r| r.is_object()) {
        Some(r) => r,
        None => setup_reporting(&client).await?,
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
        "reporting": reporting,
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
        "  reporting:      sign in at https://{}/ui/ as {} / {} (data entry, agency {}): report `{}` is due",
        nodes[0].http,
        reporting["username"].as_str().unwrap_or(""),
        reporting["password"].as_str().unwrap_or(""),
        reporting["agency"].as_str().unwrap_or(""),
        reporting["dataset"].as_str().unwrap_or(""),
    );
    if let Some(people) = reporting["web_users"].as_object() {
        for (role, who) in people {
            println!(
                "  web {:<11} sign in at https://{}/ui/ as {} / {}{}",
                format!("{role}:"),
                nodes[0].http,
                who["username"].as_str().unwrap_or(""),
                who["password"].as_str().unwrap_or(""),
                if role == "admin" { " (enrolls TOTP at the first sign-in)" } else { "" }
            );
        }
    }
    println!(
        "  cluster file:   {}   (try: dtm cluster status --cluster {})",
        dir.join("demo.json").display(),
        dir.join("demo.json").display()
    );
    println!("Feeding sample data; Ctrl-C stops the cluster cleanly.\n");

    feed(&http, &urls, &sources, Duration::from_secs_f64(args.feed_interval_secs.max(0.05))).await
}

/// The demo catalog: a reference table of provinces, monthly statistics (natural key, rules,
/// masking, enrichment, measures) and real-time transaction events (hourly aggregates).
async fn setup_catalog(client: &Client) -> anyhow::Result<(Vec<Value>, Vec<Value>)> {
    let provinces = json!({
        "id": "provinces", "title": "Tỉnh, thành phố / Provinces", "owner": "Tổng cục Thống kê",
        "schema": {"type": "object", "required": ["code", "name", "region"],
                   "properties": {"code": {"type": "string"}, "name": {"type": "string"}, "region": {"type": "string"}}},
        "key": ["code"], "reference": {"key": "code"}, "classification": "public", "priority": "low"
    });
    let monthly = json!({
        "id": "etx_monthly", "title": "E-transaction statistics, monthly",
        "description": "Online transactions per agency, month and channel (Circular 12/2025, C3(b))",
        "owner": "Bộ Khoa học và Công nghệ",
        "schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
            "required": ["agency", "province", "period", "channel", "transactions", "failed"],
            "properties": {
                "agency": {"type": "string"}, "province": {"type": "string"},
                "period": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
                "channel": {"type": "string", "enum": ["web", "mobile", "api", "kiosk"]},
                "transactions": {"type": "integer", "minimum": 0}, "failed": {"type": "integer", "minimum": 0},
                "contact_email": {"type": "string"}, "note": {"type": "string"}
            }
        },
        "key": ["agency", "period", "channel"], "time_field": "period",
        "dimensions": ["agency", "channel", "region"],
        "measures": {"transactions": "sum", "failed": "sum"},
        "units": {"transactions": "transactions", "failed": "transactions"},
        "masking": {"contact_email": "hash", "note": "redact"},
        "rules": [{"field": "failed", "op": "<=", "other": "transactions", "message": "failed cannot exceed transactions"},
                  {"field": "province", "in_reference": "provinces"}],
        "lookups": [{"field": "province", "reference": "provinces", "add": {"region": "region"}}],
        "classification": "internal", "priority": "normal"
    });
    let events = json!({
        "id": "etx_events", "title": "E-transaction events, real time",
        "schema": {
            "type": "object", "required": ["event_id", "time", "agency", "service", "channel", "duration_ms", "status"],
            "properties": {
                "event_id": {"type": "string"}, "time": {"type": "string", "format": "date-time"},
                "agency": {"type": "string"}, "service": {"type": "string"},
                "channel": {"type": "string", "enum": ["web", "mobile", "api", "kiosk"]},
                "duration_ms": {"type": "integer", "minimum": 0}, "status": {"enum": ["ok", "failed"]},
                "citizen_id": {"type": "string"}
            }
        },
        "key": ["event_id"], "time_field": "time", "dimensions": ["agency", "channel", "status"],
        "measures": {"duration_ms": "avg"}, "units": {"duration_ms": "ms"},
        "masking": {"citizen_id": "partial"}, "classification": "confidential", "priority": "high"
    });
    for def in [&provinces, &monthly, &events] {
        let (status, v) = client.call(Method::POST, "/api/v1/datasets", Some(def)).await?;
        // 409: defined by a first run that was interrupted before demo.json was written.
        anyhow::ensure!(status == 201 || status == 409, "defining {}: HTTP {status}: {v}", def["id"]);
    }
    let mut sources = Vec::new();
    for (id, name, agency, province) in [
        ("gso", "Tổng cục Thống kê", "Tổng cục Thống kê", "HN"),
        ("moj-portal", "Cổng dịch vụ công Bộ Tư pháp", "Bộ Tư pháp", "HN"),
        ("hcmc-portal", "Cổng dịch vụ công TP. Hồ Chí Minh", "UBND TP. Hồ Chí Minh", "HCM"),
    ] {
        let body = json!({"id": id, "name": name, "agency": agency, "contact": "cntt@example.gov.vn"});
        let v = client
            .expect(Method::POST, "/api/v1/sources", Some(&body))
            .await
            .with_context(|| format!("registering {id}"))?;
        sources.push(json!({"id": id, "agency": agency, "province": province, "api_key": v["api_key"]}));
    }
    Ok((sources, vec![json!("provinces"), json!("etx_monthly"), json!("etx_events")]))
}

/// The reporting-regime demo (issue 9, C2(b)): a monthly report on online public services that the
/// Đà Nẵng people's committee owes from last month on (due 15 days after each month, marked 5 days
/// before), its source system and a data-entry user, whose password is generated and printed.
async fn setup_reporting(client: &Client) -> anyhow::Result<Value> {
    let report = json!({
        "id": "dvc_monthly", "title": "Dịch vụ công trực tuyến – báo cáo tháng / Online public services, monthly report",
        "description": "Số hồ sơ trực tuyến theo cơ quan và tháng (Thông tư 12/2025, C2(b)) / Online applications per agency and month",
        "owner": "Bộ Khoa học và Công nghệ",
        "schema": {
            "type": "object", "required": ["agency", "period", "received", "on_time"],
            "x-order": ["agency", "period", "received", "on_time", "late", "satisfaction", "channel", "note"],
            "properties": {
                "agency": {"type": "string", "title": "Cơ quan / Agency"},
                "period": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$", "title": "Kỳ / Period"},
                "received": {"type": "integer", "minimum": 0, "title": "Hồ sơ tiếp nhận / Applications received", "x-unit": "hồ sơ"},
                "on_time": {"type": "integer", "minimum": 0, "title": "Giải quyết đúng hạn / Processed on time", "x-unit": "hồ sơ"},
                "late": {"type": "integer", "minimum": 0, "title": "Giải quyết trễ hạn / Processed late", "x-unit": "hồ sơ"},
                "satisfaction": {"type": "number", "minimum": 0, "maximum": 100, "title": "Mức độ hài lòng / Satisfaction", "x-unit": "%"},
                "channel": {"type": "string", "enum": ["portal", "mobile", "kiosk"], "title": "Kênh chính / Main channel"},
                "note": {"type": "string", "maxLength": 500, "title": "Ghi chú / Note"}
            }
        },
        "key": ["agency", "period"], "time_field": "period", "dimensions": ["agency", "channel"],
        "measures": {"received": "sum", "on_time": "sum", "late": "sum"},
        "rules": [{"field": "on_time", "op": "<=", "other": "received", "message": "on-time cannot exceed received"}],
        "classification": "internal", "priority": "normal"
    });
    let (status, v) = client.call(Method::POST, "/api/v1/datasets", Some(&report)).await?;
    anyhow::ensure!(status == 201 || status == 409, "defining dvc_monthly: HTTP {status}: {v}");
    let agency = "ubnd-danang";
    let source = json!({"id": "dvc-danang", "name": "Cổng dịch vụ công Đà Nẵng", "agency": agency, "contact": "cntt@danang.gov.vn"});
    let (status, v) = client.call(Method::POST, "/api/v1/sources", Some(&source)).await?;
    anyhow::ensure!(status == 201 || status == 409, "registering dvc-danang: HTTP {status}: {v}");
    let password = format!("nhaplieu-{}", crate::api::auth::random_secret().get(..12).unwrap_or("danang-2026"));
    let username = "nhaplieu.danang";
    let user = json!({"username": username, "role": "data-entry", "agency": agency, "password": password});
    client.expect(Method::POST, "/api/v1/users", Some(&user)).await.context("creating the data-entry user")?;
    let obligation = json!({"agencies": [{"agency": agency, "source": "dvc-danang"}], "period_type": "month",
                            "deadline_days": 15, "reminder_days": 5, "agency_field": "agency", "period_field": "period"});
    client
        .expect(Method::PUT, "/api/v1/datasets/dvc_monthly/obligation", Some(&obligation))
        .await
        .context("setting the reporting obligation")?;
    // People for the web pages (issue 9): an admin, who enrolls TOTP at the first sign-in (A4.3), and
    // an analyst for the dashboard and the analysis page.
    let mut people = serde_json::Map::new();
    for (name, role) in [("quantri", "admin"), ("phantich", "analyst")] {
        let password = format!("{name}-{}", crate::api::auth::random_secret().get(..12).unwrap_or("demo-2026"));
        let user = json!({"username": name, "role": role, "password": password});
        client
            .expect(Method::POST, "/api/v1/users", Some(&user))
            .await
            .with_context(|| format!("creating the {role} user"))?;
        people.insert(role.to_string(), json!({"username": name, "password": password}));
    }
    Ok(
        json!({"dataset": "dvc_monthly", "agency": agency, "username": username, "password": password, "web_users": people}),
    )
}

const PROVINCES: [(&str, &str, &str); 5] = [
    ("HN", "Hà Nội", "Đồng bằng sông Hồng"),
    ("HCM", "TP. Hồ Chí Minh", "Đông Nam Bộ"),
    ("DN", "Đà Nẵng", "Duyên hải Nam Trung Bộ"),
    ("HP", "Hải Phòng", "Đồng bằng sông Hồng"),
    ("CT", "Cần Thơ", "Đồng bằng sông Cửu Long"),
];
const CHANNELS: [&str; 4] = ["web", "mobile", "api", "kiosk"];

/// Posts one request and says how it went (failures are printed; the feed goes on).
async fn post(http: &reqwest::Client, url: &str, dataset: &str, key: &str, idem: &str, body: &Value) -> Option<Value> {
    let r = http
        .post(format!("{url}/api/v1/datasets/{dataset}/records"))
        .header("x-api-key", key)
        .header("idempotency-key", idem)
        .json(body)
        .send()
        .await;
    match r {
        Ok(resp) if resp.status().as_u16() == 201 => resp.json().await.ok(),
        Ok(resp) => {
            eprintln!("feed: {url} answered {} for {dataset}", resp.status());
            None
        }
        Err(e) => {
            eprintln!("feed: {url}: {e}");
            None
        }
    }
}

/// The sample feed: the provinces reference table and a year of monthly statistics per agency (a
/// batch-like array), then real-time events every interval round-robin over the nodes. Every 25th
/// round an agency re-sends its latest monthly report, which DTM counts as duplicates.
async fn feed(http: &reqwest::Client, urls: &[String], sources: &[Value], interval: Duration) -> anyhow::Result<()> {
    let run = std::process::id();
    let key_of = |s: &Value| s["api_key"].as_str().unwrap_or("").to_string();
    if let Some(gso) = sources.iter().find(|s| s["id"] == "gso") {
        let rows: Vec<Value> = PROVINCES
            .iter()
            .map(|(code, name, region)| json!({"code": code, "name": name, "region": region}))
            .collect();
        post(http, &urls[0], "provinces", &key_of(gso), "demo-provinces", &json!(rows)).await;
    }
    let agencies: Vec<&Value> = sources.iter().filter(|s| s["id"] != "gso").collect();
    let monthly = |s: &Value, month: u64| -> Vec<Value> {
        CHANNELS
            .iter()
            .enumerate()
            .map(|(c, channel)| {
                let t = 5_000 + (month * 731 + c as u64 * 977) % 20_000;
                json!({"agency": s["agency"], "province": s["province"], "period": format!("2026-{month:02}"),
                       "channel": channel, "transactions": t, "failed": t / 40,
                       "contact_email": format!("thongke{month}@example.gov.vn")})
            })
            .collect()
    };
    for (i, s) in agencies.iter().enumerate() {
        let year: Vec<Value> = (1..=11).flat_map(|m| monthly(s, m)).collect();
        let idem = format!("demo-monthly-{}", s["id"].as_str().unwrap_or(""));
        post(http, &urls[i % urls.len()], "etx_monthly", &key_of(s), &idem, &json!(year)).await;
    }
    let services = ["khai-sinh", "ly-lich-tu-phap", "dang-ky-kinh-doanh", "cap-phep-xay-dung"];
    let mut round: u64 = 0;
    let mut accepted: u64 = 0;
    let mut duplicates: u64 = 0;
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        round += 1;
        for (i, s) in agencies.iter().enumerate() {
            let url = &urls[(round as usize + i) % urls.len()];
            let n = if round.is_multiple_of(10) { 200 } else { 1 + (round % 5) as usize };
            let now = time::OffsetDateTime::now_utc();
            let records: Vec<Value> = (0..n)
                .map(|j| {
                    let d = 150 + ((round * 37 + j as u64 * 11) % 2_000);
                    json!({
                        "event_id": format!("{}-{run}-{round}-{j}", s["id"].as_str().unwrap_or("")),
                        "time": now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                        "agency": s["agency"], "service": services[j % services.len()],
                        "channel": CHANNELS[(j + i) % CHANNELS.len()], "duration_ms": d,
                        "status": if d.is_multiple_of(23) { "failed" } else { "ok" },
                        "citizen_id": format!("0792{:08}", (round * 1000 + j as u64) % 100_000_000),
                    })
                })
                .collect();
            let idem = format!("demo-{}-{round}-{run}", s["id"].as_str().unwrap_or(""));
            if post(http, url, "etx_events", &key_of(s), &idem, &json!(records)).await.is_some() {
                accepted += n as u64;
            }
            if round.is_multiple_of(25) {
                let idem = format!("demo-resend-{}-{round}-{run}", s["id"].as_str().unwrap_or(""));
                if let Some(v) = post(http, url, "etx_monthly", &key_of(s), &idem, &json!(monthly(s, 11))).await {
                    duplicates += v["duplicates"].as_u64().unwrap_or(0);
                }
            }
        }
        if round.is_multiple_of(20) {
            println!("fed {accepted} events so far; {duplicates} re-sent monthly figures recognised as duplicates");
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
