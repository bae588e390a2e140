//! Metrics, live statistics and synthetic probes on real clusters (issue 10; F5, A5.1, A5.2).
//! Every node serves `/metrics` in a form `promtool check metrics` accepts (issue 10, point 5);
//! the counts move exactly with the writes, rejections and duplicates each node received, labelled
//! by route template, source, dataset and reason; Raft, storage and certificate gauges are there;
//! every node's probes measure the API and the web pages over HTTPS (point 2); the live window and
//! `/monitoring/nodes` answer for the dashboard and the alert rules, and say when a node is down.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use dtm_tests::TestCluster;
use dtm_tests::eventually;
use reqwest::Method;
use serde_json::Value;
use serde_json::json;

/// One sample of the text format: name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (comments skipped; label values with `\"` and `\\`).
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (head, value) = match line.rfind(' ') {
            Some(i) => (&line[..i], line[i + 1..].trim()),
            None => continue,
        };
        let value = match value {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        let (name, mut rest) = match head.find('{') {
            Some(i) => (&head[..i], &head[i + 1..head.len().saturating_sub(1)]),
            None => (head, ""),
        };
        let mut labels = BTreeMap::new();
        while let Some(eq) = rest.find("=\"") {
            let key = rest[..eq].trim_start_matches(',').to_string();
            let mut val = String::new();
            let mut chars = rest[eq + 2..].char_indices();
            let mut end = rest.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            val.push(if n == 'n' { '\n' } else { n });
                        }
                    }
                    '"' => {
                        end = eq + 2 + i + 1;
                        break;
                    }
                    c => val.push(c),
                }
            }
            labels.insert(key, val);
            rest = &rest[end.min(rest.len())..];
        }
        out.push(Sample { name: name.to_string(), labels, value });
    }
    out
}

/// The sum of the samples of `name` whose labels include `labels`.
fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    matching(samples, name, labels).iter().map(|s| s.value).sum()
}

fn matching<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .collect()
}

async fn scrape(c: &TestCluster, node: u64, token: Option<&str>) -> anyhow::Result<(u16, String)> {
    let mut req = c.http.get(format!("{}/metrics", c.url(node)));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    Ok((resp.status().as_u16(), resp.text().await?))
}

/// `promtool check metrics` on `text` (issue 10, point 5): Ok, or its complaints.
fn promtool_check(text: &str) -> anyhow::Result<()> {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (Debian package `prometheus`; scripts/ensure-tools.sh installs it)")?;
    child.stdin.take().context("promtool stdin")?.write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "promtool check metrics refused the output:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn write_config(dir: &Path, name: &str, text: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path.display().to_string())
}

async fn get_as(c: &TestCluster, node: u64, path: &str, header: (&str, &str)) -> anyhow::Result<(u16, Value)> {
    let resp = c.http.get(format!("{}{path}", c.url(node))).header(header.0, header.1).send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

/// Submits one record over gRPC `dtm.v1.Ingest` to node 1.
async fn grpc_submit(c: &TestCluster, key: &str, record: Value) -> anyhow::Result<()> {
    use tonic::transport::Certificate;
    use tonic::transport::ClientTlsConfig;
    use tonic::transport::Endpoint;
    let ca = Certificate::from_pem(std::fs::read(c.tls_dir.join("ca.pem"))?);
    let channel = Endpoint::from_shared(format!("https://{}", c.nodes[&1].grpc_addr))?
        .tls_config(ClientTlsConfig::new().ca_certificate(ca).domain_name("localhost"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let mut client = dtm_proto::v1::ingest_client::IngestClient::new(channel);
    let mut req = tonic::Request::new(dtm_proto::v1::SubmitRequest {
        dataset: DATASET.into(),
        records_json: vec![record.to_string()],
        ..Default::default()
    });
    req.metadata_mut().insert("x-api-key", key.parse()?);
    let answer = client.submit(req).await?.into_inner();
    anyhow::ensure!(answer.accepted == 1, "gRPC submit: {answer:?}");
    Ok(())
}

const DATASET: &str = "metrics_ds";
const SOURCE: &str = "metrics_src";
const PAGES: [&str; 3] = ["/ui/", "/ui/login", "/api/docs/"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f5_metrics_probes_and_live_statistics_on_every_node() -> anyhow::Result<()> {
    let conf_dir = tempfile::tempdir()?;
    let credential = conf_dir.path().join("probe-credential");
    let config = write_config(
        conf_dir.path(),
        "monitoring.toml",
        &format!(
            "[metrics]\nsample_interval_ms = 200\n\n[probes]\ninterval_ms = 500\ntimeout_ms = 3000\nconcurrency = 4\n\
             credential_file = \"{}\"\npages = [\"/ui/\", \"/ui/login\", \"/api/docs/\"]\n",
            credential.display()
        ),
    )?;
    let c = TestCluster::start(3, &["--config", &config]).await?;
    let result = scenario(&c, &credential).await;
    if result.is_err() {
        c.dump_logs();
    }
    result
}

async fn scenario(c: &TestCluster, credential: &Path) -> anyhow::Result<()> {
    // The probes' credential: the key of a source of their own, which may read the cluster status.
    let probe_key = c.create_source(1, "probe").await?;
    std::fs::write(credential, &probe_key)?;
    let key = c.create_source(1, SOURCE).await?;
    let def = json!({"id": DATASET, "title": "metrics", "key": ["k"],
        "schema": {"type": "object", "properties": {"k": {"type": "string"}, "v": {"type": "integer"}},
                   "required": ["k", "v"]}});
    let (s, v) = c.admin(Method::POST, 1, "/api/v1/datasets", Some(def)).await?;
    anyhow::ensure!(s == 201, "dataset: {s} {v}");

    // Node n receives n submissions of two new records, one duplicate and one invalid submission.
    for n in 1..=3u64 {
        for i in 0..n {
            let body = json!([{"k": format!("{n}-{i}-a"), "v": 1}, {"k": format!("{n}-{i}-b"), "v": 2}]);
            let (s, v, _) = c.post(n, DATASET, &key, &body, None).await?;
            anyhow::ensure!(s == 201, "post on node {n}: {s} {v}");
        }
        let (s, v, _) = c.post(n, DATASET, &key, &json!([{"k": format!("{n}-0-a"), "v": 1}]), None).await?;
        anyhow::ensure!(s == 201 && v["duplicates"] == 1, "duplicate on node {n}: {s} {v}");
        let (s, v, _) = c.post(n, DATASET, &key, &json!([{"k": "no value"}]), None).await?;
        anyhow::ensure!(s == 422, "invalid on node {n}: {s} {v}");
    }

    // Node 1 also receives one record over SOAP and one over gRPC.
    let envelope = "<?xml version=\"1.0\"?><soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         xmlns:dtm=\"urn:dtm:soap:v1\"><soap:Body><dtm:SubmitRecords><dtm:Dataset>metrics_ds</dtm:Dataset>\
         <dtm:RecordsJson>{&quot;k&quot;:&quot;1-soap&quot;,&quot;v&quot;:3}</dtm:RecordsJson></dtm:SubmitRecords>\
         </soap:Body></soap:Envelope>";
    let resp = c
        .http
        .post(format!("{}/soap/v1", c.url(1)))
        .header("x-api-key", &key)
        .header("content-type", "text/xml; charset=utf-8")
        .body(envelope)
        .send()
        .await?;
    let status = resp.status().as_u16();
    anyhow::ensure!(status == 200, "SOAP submit: {status} {}", resp.text().await.unwrap_or_default());
    grpc_submit(c, &key, json!({"k": "1-grpc", "v": 4})).await?;

    // The counts of every node are what it received (scraping is open by default).
    for n in 1..=3u64 {
        let (status, text) = scrape(c, n, None).await?;
        anyhow::ensure!(status == 200, "/metrics on node {n}: {status}");
        let m = parse(&text);
        let ingest = |outcome: &str| {
            sum(
                &m,
                "dtm_ingest_records_total",
                &[("source", SOURCE), ("dataset", DATASET), ("channel", "rest"), ("outcome", outcome)],
            )
        };
        assert_eq!(ingest("stored"), (2 * n) as f64, "node {n}: stored records");
        assert_eq!(ingest("duplicate"), 1.0, "node {n}: duplicate records");
        let rejected = [("source", SOURCE), ("dataset", DATASET), ("reason", "invalid_records")];
        assert_eq!(sum(&m, "dtm_ingest_rejected_total", &rejected), 1.0, "node {n}: rejected");
        let route = ("route", "/api/v1/datasets/{id}/records");
        let posts = |status: &str| {
            sum(&m, "dtm_http_requests_total", &[("channel", "rest"), ("method", "POST"), route, ("status", status)])
        };
        assert_eq!(posts("201"), (n + 1) as f64, "node {n}: 201 answers");
        assert_eq!(posts("422"), 1.0, "node {n}: 422 answers");
        let timed = sum(&m, "dtm_http_request_duration_seconds_count", &[("method", "POST"), route]);
        assert_eq!(timed, (n + 2) as f64, "node {n}: timed posts");
        let within_limit =
            sum(&m, "dtm_http_request_duration_seconds_bucket", &[("method", "POST"), route, ("le", "2.5")]);
        assert!(within_limit <= timed, "node {n}: the 2.5 s bucket holds at most every post");
        // Labels are templates, never raw paths.
        assert!(!text.contains(&format!("/datasets/{DATASET}")), "node {n}: a raw path in a label");
        // The probes' own requests are not counted as traffic (they have their own series).
        assert_eq!(sum(&m, "dtm_http_requests_total", &[("route", "/api/v1/health")]), 0.0, "node {n}: probe traffic");
        assert!(sum(&m, "dtm_tls_certificate_expiry_seconds", &[]) > 86_400.0, "node {n}: certificate expiry");
        assert_eq!(sum(&m, "dtm_build_info", &[]), 1.0, "node {n}: build info");
        if n == 1 {
            for channel in ["soap", "grpc"] {
                let stored = [("source", SOURCE), ("dataset", DATASET), ("channel", channel), ("outcome", "stored")];
                assert_eq!(sum(&m, "dtm_ingest_records_total", &stored), 1.0, "node 1: {channel} records");
            }
            let soap = [("channel", "soap"), ("method", "POST"), ("route", "/soap/v1"), ("status", "200")];
            assert_eq!(sum(&m, "dtm_http_requests_total", &soap), 1.0, "node 1: SOAP requests");
            let grpc = [("method", "Submit"), ("status", "200")];
            assert_eq!(sum(&m, "dtm_grpc_requests_total", &grpc), 1.0, "node 1: gRPC requests");
            assert_eq!(sum(&m, "dtm_grpc_request_duration_seconds_count", &[("method", "Submit")]), 1.0);
        }
        promtool_check(&text).with_context(|| format!("node {n}"))?;
    }
    // Exactly one node says it leads, and it is the leader the cluster names. The nodes are scraped
    // one after another, so an election between two scrapes (a busy CI machine) would count the old
    // and the new leader: such a round is read again.
    let leader = eventually("exactly one node saying it leads", Duration::from_secs(20), || async move {
        let leader = c.leader().await.ok()?;
        let mut leading = Vec::new();
        for n in 1..=3u64 {
            if sum(&parse(&scrape(c, n, None).await.ok()?.1), "dtm_raft_is_leader", &[]) == 1.0 {
                leading.push(n);
            }
        }
        (leading == [leader]).then_some(leader)
    })
    .await?;

    // Sampled gauges: Raft on every node, lag per follower on the leader, storage, audit chain.
    for n in 1..=3u64 {
        eventually(&format!("sampled gauges on node {n}"), Duration::from_secs(20), || async move {
            let m = parse(&scrape(c, n, None).await.ok()?.1);
            let members = sum(&m, "dtm_raft_members", &[]) == 3.0 && sum(&m, "dtm_raft_voters", &[]) == 3.0;
            let applied = sum(&m, "dtm_raft_applied_index", &[]) > 0.0 && sum(&m, "dtm_raft_term", &[]) > 0.0;
            let storage = sum(&m, "dtm_storage_bytes", &[]) > 0.0 && sum(&m, "dtm_storage_available_bytes", &[]) > 0.0;
            let audit = sum(&m, "dtm_audit_chain_entries", &[]) > 0.0;
            let queues = sum(&m, "dtm_source_queue_capacity", &[("source", SOURCE)]) > 0.0;
            let lag = matching(&m, "dtm_raft_replication_lag_entries", &[]);
            let lag_ok = if n == leader {
                lag.iter().filter(|s| s.value.is_finite()).count() == 2 && sum(&m, "dtm_raft_commit_index", &[]) > 0.0
            } else {
                lag.iter().all(|s| !s.value.is_finite())
            };
            (members && applied && storage && audit && queues && lag_ok).then_some(())
        })
        .await?;
    }

    // Probes (F5; issue 10 point 2): health, the authenticated read, every page and the
    // concurrency check succeed on every node, with response times in the metrics.
    for n in 1..=3u64 {
        let m = eventually(&format!("probe results on node {n}"), Duration::from_secs(30), || async move {
            let m = parse(&scrape(c, n, None).await.ok()?.1);
            let mut probes = vec!["health".to_string(), "api_read".into(), "concurrency".into()];
            probes.extend(PAGES.iter().map(|p| format!("page:{p}")));
            probes
                .iter()
                .all(|p| {
                    sum(&m, "dtm_probe_success", &[("probe", p)]) == 1.0
                        && sum(&m, "dtm_probe_duration_seconds_count", &[("probe", p)]) >= 1.0
                })
                .then_some(m)
        })
        .await?;
        for p in PAGES {
            let secs = sum(&m, "dtm_probe_last_duration_seconds", &[("probe", &format!("page:{p}"))]);
            assert!(secs > 0.0 && secs < 3.0, "node {n}: page {p} took {secs} s");
        }
        assert!(sum(&m, "dtm_probe_concurrency_max_seconds", &[]) > 0.0, "node {n}: concurrency timing");
        let (s, report) = c.admin(Method::GET, n, "/api/v1/monitoring/probes", None).await?;
        anyhow::ensure!(s == 200, "probes on node {n}: {s} {report}");
        assert_eq!(report["node_id"], n);
        let results = report["results"].as_array().context("results")?;
        for r in results {
            assert_eq!(r["ok"], true, "node {n}: {r}");
        }
        assert_eq!(results.len(), 2 + PAGES.len() + 1, "node {n}: {report}");
        assert_eq!(report["concurrency"]["requests"], 4);
    }

    // The live window (A5.1): node 1's own counts per source are exact.
    let (s, live) = c.admin(Method::GET, 1, "/api/v1/monitoring/live", None).await?;
    anyhow::ensure!(s == 200, "live: {s} {live}");
    assert_eq!(live["node_id"], 1);
    assert_eq!(live["enabled"], true);
    let src = &live["last_5_minutes"]["sources"][SOURCE];
    assert_eq!(*src, json!({"accepted_records": 4, "duplicate_records": 1, "rejected_submissions": 1}), "{live}");
    for channel in ["soap", "grpc"] {
        assert_eq!(live["last_5_minutes"]["channels"][channel]["requests"], 1, "{live}");
    }
    let rest = &live["last_minute"]["channels"]["rest"];
    assert!(rest["requests"].as_u64().unwrap_or(0) >= 3, "{live}");
    assert!(rest["client_errors"].as_u64().unwrap_or(0) >= 1, "{live}");
    assert!(rest["p95_seconds"].as_f64().is_some_and(|p| p > 0.0), "{live}");
    assert!(live["raft"]["term"].as_u64().unwrap_or(0) > 0, "{live}");

    // Who may read it: not a source system, not an anonymous caller.
    let (s, _) = get_as(c, 1, "/api/v1/monitoring/live", ("x-api-key", &key)).await?;
    assert_eq!(s, 403);
    let (s, _) = get_as(c, 1, "/api/v1/monitoring/live", ("x-request-id", "anonymous")).await?;
    assert_eq!(s, 401);

    // Every member's statistics through any node; a killed node is reported unreachable.
    let (s, all) = c.admin(Method::GET, 2, "/api/v1/monitoring/nodes", None).await?;
    anyhow::ensure!(s == 200, "nodes: {s} {all}");
    let nodes = all["nodes"].as_array().context("nodes")?;
    assert_eq!(nodes.len(), 3);
    for node in nodes {
        assert_eq!(node["reachable"], true, "{node}");
        assert_eq!(node["live"]["node_id"], node["node_id"], "{node}");
    }
    let victim = if leader == 3 { 2 } else { 3 };
    let asker = if victim == 2 { 3 } else { 2 };
    c.kill(victim);
    let after = eventually("the killed node reported unreachable", Duration::from_secs(20), || async move {
        let (s, all) = c.admin(Method::GET, asker, "/api/v1/monitoring/nodes", None).await.ok()?;
        (s == 200).then_some(())?;
        let nodes = all["nodes"].as_array()?.clone();
        let down = nodes.iter().find(|n| n["node_id"] == victim)?;
        (down["reachable"] == false && down["error"].is_string()).then_some(nodes)
    })
    .await?;
    for node in after.iter().filter(|n| n["node_id"] != victim) {
        assert_eq!(node["reachable"], true, "{node}");
    }
    Ok(())
}

/// `[metrics] token_file` and `allow` restrict `/metrics`; `--metrics false` and `--probes false`
/// turn them off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f5_metrics_access_and_switches() -> anyhow::Result<()> {
    let conf_dir = tempfile::tempdir()?;
    let token = "a-metrics-token-for-the-scraper";
    let token_file = conf_dir.path().join("metrics-token");
    std::fs::write(&token_file, format!("{token}\n"))?;
    let config = write_config(
        conf_dir.path(),
        "restricted.toml",
        &format!("[metrics]\ntoken_file = \"{}\"\nallow = [\"127.0.0.0/8\"]\n", token_file.display()),
    )?;
    let c = TestCluster::start(1, &["--config", &config, "--probes", "false"]).await?;
    assert_eq!(scrape(&c, 1, None).await?.0, 401);
    assert_eq!(scrape(&c, 1, Some("a-wrong-token-of-some-length")).await?.0, 401);
    let (s, text) = scrape(&c, 1, Some(token)).await?;
    assert_eq!(s, 200);
    assert!(!text.contains("dtm_probe_success"), "probes are off");
    let (s, report) = c.admin(Method::GET, 1, "/api/v1/monitoring/probes", None).await?;
    assert_eq!(s, 200);
    assert_eq!(report["enabled"], false);
    drop(c);

    let outside = write_config(conf_dir.path(), "outside.toml", "[metrics]\nallow = [\"10.0.0.0/8\"]\n")?;
    let c = TestCluster::start(1, &["--config", &outside]).await?;
    assert_eq!(scrape(&c, 1, None).await?.0, 403, "a loopback scraper outside the allowed network");
    drop(c);

    let c = TestCluster::start(1, &["--metrics", "false"]).await?;
    assert_eq!(scrape(&c, 1, None).await?.0, 404);
    let (s, live) = c.admin(Method::GET, 1, "/api/v1/monitoring/live", None).await?;
    assert_eq!(s, 200);
    assert_eq!(live["enabled"], false);
    Ok(())
}
