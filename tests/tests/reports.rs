//! Performance and connection reports (issue 10, point 3; A5.3, F4, C8, C9): a scenario with known
//! successes and failures over REST, SOAP and a batch upload; the on-demand and stored reports
//! count them per channel, source and dataset with their causes, time the requests per channel and
//! state each node's availability; the leader makes last month's report by itself; the DOCX and
//! XLSX downloads are read back with python-docx and openpyxl (`tests/interop/report_check.py`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use dtm_tests::TestCluster;
use dtm_tests::eventually;
use reqwest::Method;
use serde_json::Value;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("DTM_INTEROP_PYTHON") {
        return PathBuf::from(p);
    }
    let p = workspace().join("target/interop-venv/bin/python");
    assert!(p.exists(), "{} is missing: run scripts/ensure-tools.sh", p.display());
    p
}

/// GET as the admin token; status and raw bytes.
async fn get_bytes(c: &TestCluster, node: u64, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let resp = c.http.get(format!("{}{path}", c.url(node))).bearer_auth(&c.admin_token).send().await?;
    Ok((resp.status().as_u16(), resp.bytes().await?.to_vec()))
}

/// The row of a section whose `key` column is `value`.
fn row<'a>(report: &'a Value, section: &str, key: &str, value: &str) -> Option<&'a Value> {
    report[section].as_array()?.iter().find(|r| r[key] == value)
}

fn counts(r: Option<&Value>) -> (u64, u64, u64) {
    let r = r.cloned().unwrap_or(Value::Null);
    (r["transactions"].as_u64().unwrap_or(0), r["ok"].as_u64().unwrap_or(0), r["failed"].as_u64().unwrap_or(0))
}

async fn soap_submit(c: &TestCluster, key: &str, records_json: &str) -> anyhow::Result<u16> {
    let envelope = format!(
        "<?xml version=\"1.0\"?><soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         xmlns:dtm=\"urn:dtm:soap:v1\"><soap:Body><dtm:SubmitRecords><dtm:Dataset>perf_ds</dtm:Dataset>\
         <dtm:RecordsJson>{}</dtm:RecordsJson></dtm:SubmitRecords></soap:Body></soap:Envelope>",
        records_json.replace('"', "&quot;")
    );
    let resp = c
        .http
        .post(format!("{}/soap/v1", c.url(2)))
        .header("x-api-key", key)
        .header("content-type", "text/xml; charset=utf-8")
        .body(envelope)
        .send()
        .await?;
    Ok(resp.status().as_u16())
}

/// (year, month, day) in Vietnam time (UTC+7) of a time in ms.
fn vietnam_date(ms: u64) -> (i64, u32, u32) {
    dtm_dataset::civil_from_days(((ms / 1000 + 7 * 3600) / 86_400) as i64)
}

/// A5.3, F4: known successes and failures are counted with their causes in the on-demand, stored
/// and monthly reports, with response times and availability; the downloads open in
/// independent readers. C8, C9: the annual connection report for the same source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn performance_report_counts_successes_and_failures_with_causes() -> anyhow::Result<()> {
    let c = TestCluster::start(3, &["--perf-sample-interval-s", "1"]).await?;
    let key = c.create_source(1, "perf-src").await?;
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]});
    let (s, v) = c
        .admin(Method::POST, 1, "/api/v1/datasets", Some(json!({"id": "perf_ds", "title": "perf", "schema": schema})))
        .await?;
    anyhow::ensure!(s == 201, "dataset: {s} {v}");
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;

    // REST: 7 accepted, 3 refused for a known reason (`n` is not an integer: 422 invalid_records).
    for i in 0..7 {
        let (s, v, _) = c.post(1 + i % 3, "perf_ds", &key, &json!({"n": i}), None).await?;
        assert_eq!(s, 201, "{v}");
    }
    for i in 0..3 {
        let (s, v, _) = c.post(1 + i % 3, "perf_ds", &key, &json!({"n": "seven"}), None).await?;
        assert_eq!((s, v["error"]["code"].as_str()), (422, Some("invalid_records")), "{v}");
    }
    // SOAP: 2 accepted, 1 refused.
    assert_eq!(soap_submit(&c, &key, r#"{"n":100}"#).await?, 200);
    assert_eq!(soap_submit(&c, &key, r#"{"n":101}"#).await?, 200);
    assert_ne!(soap_submit(&c, &key, r#"{"n":"x"}"#).await?, 200);
    // A batch: 7 rows accepted, 3 rejected (`/n`).
    let mut lines: Vec<String> = (0..7).map(|i| json!({"n": 200 + i}).to_string()).collect();
    lines.extend((0..3).map(|_| json!({"n": "bad"}).to_string()));
    let resp = c
        .http
        .post(format!("{}/api/v1/datasets/perf_ds/batches", c.url(3)))
        .header("x-api-key", &key)
        .header("content-type", "application/x-ndjson")
        .body(lines.join("\n"))
        .send()
        .await?;
    let batch: Value = resp.json().await?;
    assert_eq!((batch["accepted"].as_u64(), batch["rejected"].as_u64()), (Some(7), Some(3)), "{batch}");
    // Somebody reads the data (the connection report's exploitation index).
    let (s, _) = c.admin(Method::GET, 2, "/api/v1/datasets/perf_ds/records?limit=5", None).await?;
    assert_eq!(s, 200);

    // The on-demand report, once the refusals (queued audit events) and samples are replicated.
    let (from, to) = ((started - 60_000).to_string(), (started + 3_600_000).to_string());
    let path = format!("/api/v1/reports/performance?from={from}&to={to}");
    let report = eventually("the report to count every submission", DEADLINE, || async {
        let (s, v) = c.admin(Method::GET, 3, &path, None).await.ok()?;
        let ready = s == 200
            && counts(row(&v, "by_channel", "channel", "rest")) == (10, 7, 3)
            && counts(row(&v, "by_channel", "channel", "soap")) == (3, 2, 1)
            && row(&v, "response_times", "channel", "batch").is_some()
            && v["availability"].as_array().is_some_and(|a| a.len() == 3);
        ready.then_some(v)
    })
    .await?;
    let batch_row = row(&report, "by_channel", "channel", "batch").cloned().unwrap_or_default();
    assert_eq!(
        (
            batch_row["transactions"].as_u64(),
            batch_row["records_accepted"].as_u64(),
            batch_row["records_rejected"].as_u64()
        ),
        (Some(1), Some(7), Some(3)),
        "{report}"
    );
    let source = row(&report, "by_source", "source", "perf-src").cloned().unwrap_or_default();
    assert_eq!((source["transactions"].as_u64(), source["failed"].as_u64()), (Some(14), Some(4)), "{report}");
    assert!(row(&report, "by_dataset", "dataset", "perf_ds").is_some(), "{report}");
    let cause = |name: &str| row(&report, "failure_causes", "cause", name).and_then(|r| r["count"].as_u64());
    assert_eq!(cause("422 invalid_records"), Some(3), "{}", report["failure_causes"]);
    assert_eq!(cause("invalid row: /n"), Some(3), "{}", report["failure_causes"]);
    assert_eq!(cause("500 invalid_records"), Some(1), "a SOAP 1.1 fault: {}", report["failure_causes"]);
    let detail = report["failure_causes_detail"].as_array().cloned().unwrap_or_default();
    assert!(
        detail
            .iter()
            .any(|d| d["cause"] == "422 invalid_records" && d["source"] == "perf-src" && d["channel"] == "rest"),
        "{detail:?}"
    );
    // Response times per channel: every timed request, percentiles in order.
    let rest = row(&report, "response_times", "channel", "rest").cloned().unwrap_or_default();
    assert!(rest["requests"].as_u64() >= Some(10) && rest["client_error"].as_u64() >= Some(3), "{rest}");
    let (p50, p95, p99) = (rest["p50_ms"].as_f64(), rest["p95_ms"].as_f64(), rest["p99_ms"].as_f64());
    assert!(p50 > Some(0.0) && p50 <= p95 && p95 <= p99, "{rest}");
    // Availability of each node and of the cluster over the observed window.
    for n in report["availability"].as_array().into_iter().flatten() {
        assert!(n["availability_percent"].as_f64() > Some(50.0), "{n}");
    }
    assert!(report["summary"]["availability_percent"].as_f64() > Some(90.0), "{}", report["summary"]);
    assert_eq!(report["summary"]["transactions"], 14);

    // CSV for machines: one value per line.
    let (s, csv) = get_bytes(&c, 1, &format!("{path}&format=csv")).await?;
    let csv = String::from_utf8_lossy(&csv).to_string();
    assert!(s == 200 && csv.starts_with("section,row,field,value") && csv.contains("by_channel,"), "{csv}");

    // Stored through the log, listed and served by another node in four formats.
    let (s, stored) =
        c.admin(Method::POST, 1, "/api/v1/reports/performance", Some(json!({"from": from, "to": to}))).await?;
    assert_eq!(s, 201, "{stored}");
    let id = stored["id"].as_str().context("report id")?.to_string();
    assert_eq!(stored["summary"]["transactions"], 14, "{stored}");
    let (_, got) = c.admin(Method::GET, 2, &format!("/api/v1/reports/{id}"), None).await?;
    assert_eq!(counts(row(&got, "by_channel", "channel", "rest")), (10, 7, 3), "{got}");
    let kind = stored["kind"].as_str().context("report kind")?.to_string();
    let listed = eventually("the stored report listed on node 2", Duration::from_secs(10), || async {
        let (s, v) = c.admin(Method::GET, 2, &format!("/api/v1/reports?kind={kind}"), None).await.ok()?;
        (s == 200 && v["reports"].as_array()?.iter().any(|r| r["id"] == id.as_str())).then_some(v)
    })
    .await?;
    assert!(listed["reports"].as_array().is_some_and(|r| r.iter().all(|r| r["kind"] == kind.as_str())), "{listed}");
    let (_, other) = c.admin(Method::GET, 2, "/api/v1/reports?kind=no-such-kind", None).await?;
    assert_eq!(other["reports"], json!([]), "the kind filter leaves others out: {other}");
    let dir = tempfile::tempdir()?;
    let mut files = Vec::new();
    for format in ["docx", "xlsx"] {
        let (s, bytes) = get_bytes(&c, 3, &format!("/api/v1/reports/{id}?format={format}")).await?;
        assert!(s == 200 && bytes.starts_with(b"PK"), "{format}: {s}");
        let f = dir.path().join(format!("report.{format}"));
        std::fs::write(&f, bytes)?;
        files.push(f.display().to_string());
    }
    let out = Command::new(python())
        .arg(workspace().join("tests/interop/report_check.py"))
        .args(&files)
        .output()
        .context("running report_check.py")?;
    anyhow::ensure!(out.status.success(), "report_check.py: {}", String::from_utf8_lossy(&out.stderr));
    let read: Value =
        serde_json::from_slice(out.stdout.split(|b| *b == b'\n').find(|l| !l.is_empty()).unwrap_or(b"{}"))?;
    // DOCX: the channel table has rest with 10 transactions, 7 ok, 3 failed; causes are listed.
    let table = read["docx"]["tables"]["Transactions by channel"].as_array().cloned().unwrap_or_default();
    let rest_row = table.iter().find(|r| r[0] == "rest").cloned().unwrap_or_default();
    assert_eq!(
        (rest_row[1].as_str(), rest_row[2].as_str(), rest_row[3].as_str()),
        (Some("10"), Some("7"), Some("3")),
        "{read}"
    );
    let causes = read["docx"]["tables"]["Causes of failures"].to_string();
    assert!(causes.contains("422 invalid_records") && causes.contains("invalid row: /n"), "{causes}");
    // XLSX: a sheet per section with numbers as numbers.
    let sheet = read["xlsx"]["by_channel"].as_array().cloned().unwrap_or_default();
    assert_eq!(sheet.first().and_then(|h| h[0].as_str()), Some("channel"), "{read}");
    let soap = sheet.iter().find(|r| r[0] == "soap").cloned().unwrap_or_default();
    assert_eq!((soap[1].as_f64(), soap[2].as_f64(), soap[3].as_f64()), (Some(3.0), Some(2.0), Some(1.0)), "{read}");
    assert!(read["xlsx"]["response_times"].as_array().is_some_and(|r| r.len() >= 4), "{read}");
    assert!(read["xlsx"]["availability"].as_array().is_some_and(|r| r.len() == 4), "{read}");

    // C8, C9: the annual connection report of this year.
    let year = report["from"].as_str().unwrap_or("2026").get(..4).unwrap_or("2026").to_string();
    let (s, annual) = c.admin(Method::GET, 1, &format!("/api/v1/reports/connections?year={year}"), None).await?;
    assert_eq!(s, 200, "{annual}");
    let src = row(&annual, "sources", "source", "perf-src").cloned().unwrap_or_default();
    assert_eq!(src["connection_level"], 4, "REST and SOAP in real time, and a batch: {src}");
    assert_eq!((src["transactions"].as_u64(), src["failed"].as_u64()), (Some(14), Some(4)), "{src}");
    assert!(src["records"].as_u64() >= Some(16) && src["active_days"].as_u64() >= Some(1), "{src}");
    assert!(src["reads_of_its_data"].as_u64() >= Some(1), "{src}");
    let recs = src["recommendations"].as_str().unwrap_or_default();
    assert!(recs.contains("High rejection rate") && recs.contains("schema version"), "{recs}");
    let (s, stored) = c.admin(Method::POST, 2, "/api/v1/reports/connections", Some(json!({"year": year}))).await?;
    assert_eq!(s, 201, "{stored}");
    let cid = stored["id"].as_str().unwrap_or_default().to_string();
    for format in ["xlsx", "docx", "csv"] {
        let (s, bytes) = get_bytes(&c, 3, &format!("/api/v1/reports/{cid}?format={format}")).await?;
        assert!(s == 200 && !bytes.is_empty(), "{format}: {s}");
    }

    // Bad requests are 4xx JSON errors; reports need the auditor or admin role.
    let (s, v) = c.admin(Method::GET, 1, "/api/v1/reports/performance?from=2026-02&to=2026-01", None).await?;
    assert!(s == 400 && v["error"]["code"] == "bad_request", "{s} {v}");
    let (s, _) = c.admin(Method::GET, 1, "/api/v1/reports/nope", None).await?;
    assert_eq!(s, 404);
    let r = c.http.get(format!("{}{path}", c.url(1))).header("x-api-key", &key).send().await?;
    assert_eq!(r.status().as_u16(), 403);

    // The leader stored last month's report by itself, once (ten minutes after a month ends, so
    // not checked in a month's first quarter of an hour).
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    let (year, month, day) = vietnam_date(now_ms);
    let minute_of_day = (now_ms / 60_000 + 7 * 60) % (24 * 60);
    if day == 1 && minute_of_day < 15 {
        return Ok(());
    }
    let expected = if month == 1 {
        format!("performance-{}-12", year - 1)
    } else {
        format!("performance-{year}-{:02}", month - 1)
    };
    let monthly = eventually("last month's performance report", DEADLINE, || async {
        let (_, list) = c.admin(Method::GET, 2, "/api/v1/reports?kind=performance", None).await.ok()?;
        let ids: Vec<String> = list["reports"]
            .as_array()?
            .iter()
            .filter_map(|r| r["id"].as_str())
            .filter(|i| i.starts_with("performance-20"))
            .map(String::from)
            .collect();
        (ids.len() == 1).then_some(ids)
    })
    .await?;
    assert_eq!(monthly[0], expected);
    let (s, _) = c.admin(Method::GET, 1, &format!("/api/v1/reports/{}?format=docx", monthly[0]), None).await?;
    assert_eq!(s, 200);
    Ok(())
}
