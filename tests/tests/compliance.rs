//! The live compliance check (issue 10, point 4; S2, A1.10): `dtm compliance` passes on a correctly
//! configured cluster and fails, naming the requirement, when an admin has no second factor (A4.3)
//! or a node's audit retention is set under a year (A1.8, C4). The short retention is made with
//! `--unsafe-audit-retention-days`, which exists only in `fault-injection` builds (a normal node
//! refuses to start with less than 365 days) and is itself named in the evidence.

use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use dtm_tests::TestCluster;
use dtm_tests::eventually;
use reqwest::Method;
use serde_json::Value;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);

/// Every requirement the check covers.
const IDS: [&str; 15] =
    ["A2.6", "A4.5", "A4.3", "A4.2", "F8", "A1.8", "C4", "A5.2", "F9", "F6", "A1.4", "A2.3", "A1.3", "P5", "P6"];

fn totp(secret_b32: &str, at_secs: u64) -> String {
    let secret = totp_rs::Secret::try_from_base32(secret_b32).expect("base32 secret");
    totp_rs::Builder::new().with_secret(secret).build_noncompliant().generate(at_secs).to_string()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Creates an admin user and, when `enroll`, enrolls TOTP through the user's own session.
async fn admin_user(c: &TestCluster, name: &str, enroll: bool) -> anyhow::Result<()> {
    let pw = "correct horse battery staple";
    let (s, v) = c
        .admin(Method::POST, 1, "/api/v1/users", Some(json!({"username": name, "role": "admin", "password": pw})))
        .await?;
    anyhow::ensure!(s == 201, "create user: {s} {v}");
    if !enroll {
        return Ok(());
    }
    let (cookie, csrf) = c.sign_in_with_csrf(2, name, pw).await?;
    let post = |path: &str, body: Option<Value>| {
        let mut req =
            c.http.post(format!("{}{path}", c.url(2))).header("cookie", &cookie).header("x-csrf-token", &csrf);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
    };
    let e: Value = post("/api/v1/auth/totp/enroll", None).await?.json().await?;
    let secret = e["secret"].as_str().context("totp secret")?.to_string();
    let r = post("/api/v1/auth/totp/confirm", Some(json!({"code": totp(&secret, now_secs())}))).await?;
    anyhow::ensure!(r.status().as_u16() == 200, "confirm: {}", r.text().await?);
    Ok(())
}

/// Runs `dtm compliance` against node `node`; exit status and the report it wrote.
fn compliance(c: &TestCluster, node: u64, dir: &std::path::Path) -> anyhow::Result<(bool, Value)> {
    let file = dir.join(format!("compliance-{}.json", now_secs()));
    let out = Command::new(dtm_tests::dtm_bin())
        .args(["compliance", "--node", &c.url(node), "--token", &c.admin_token, "--report"])
        .arg(&file)
        .arg("--ca-cert")
        .arg(c.tls_dir.join("ca.pem"))
        .output()?;
    let report: Value = serde_json::from_slice(
        &std::fs::read(&file)
            .with_context(|| format!("no report written: {}", String::from_utf8_lossy(&out.stderr)))?,
    )?;
    Ok((out.status.success(), report))
}

fn check<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["checks"].as_array().and_then(|a| a.iter().find(|c| c["id"] == id)).unwrap_or(&Value::Null)
}

/// S2, A1.10 with A2.6, A4.5, A4.3, A4.2, F8, A1.8, C4, A5.2, F9, F6, A1.4, A2.3, A1.3, P5, P6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compliance_passes_when_configured_and_names_what_fails() -> anyhow::Result<()> {
    let mut c = TestCluster::start(3, &["--perf-sample-interval-s", "1"]).await?;
    let dir = tempfile::tempdir()?;
    admin_user(&c, "root1", true).await?;
    // A backup taken through the API (F6) and a passing drill recorded in the trail (A1.4), as
    // `dtm backup create` and `dtm drill` do.
    let resp = c.http.get(format!("{}/api/v1/backup", c.url(1))).bearer_auth(&c.admin_token).send().await?;
    assert_eq!(resp.status().as_u16(), 200);
    let _ = resp.bytes().await?;
    let drill = json!({"scenario": "leader-loss", "passed": true, "rto_ms": 950, "rpo_records": 0,
                       "started_at": "2026-11-28T00:00:00Z", "cluster_healthy_after": true});
    let (s, v) = c.admin(Method::POST, 2, "/api/v1/drills", Some(drill)).await?;
    assert_eq!(s, 201, "{v}");
    // An alert channel besides the dashboard (A5.2).
    let hook = json!({"kind": "webhook", "webhook": {"url": "https://127.0.0.1:9/dtm-alerts"}});
    let (s, v) = c.admin(Method::PUT, 1, "/api/v1/alerts/channels/ops-hook", Some(hook)).await?;
    assert!(s == 200 || s == 201, "{s} {v}");
    // Some traffic, so response times exist (P5, P6).
    c.create_dataset(1, "cmp_ds").await?;
    let key = c.create_source(1, "cmp-src").await?;
    for i in 0..5 {
        let (s, v, _) = c.post(1 + i % 3, "cmp_ds", &key, &json!({"n": i}), None).await?;
        assert_eq!(s, 201, "{v}");
    }
    // Every member has reported its facts.
    eventually("every node's compliance facts", DEADLINE, || async {
        let (s, v) = c.admin(Method::GET, 3, "/api/v1/compliance/facts", None).await.ok()?;
        let nodes = v["nodes"].as_array()?;
        (s == 200 && nodes.len() == 3 && nodes.iter().all(|n| n["reported"] == true)).then_some(())
    })
    .await?;

    // A correctly configured cluster passes every check, each with evidence (polled: the first
    // samples of response times and availability may still be on their way).
    let passed = eventually("a passing compliance report", DEADLINE, || async {
        compliance(&c, 2, dir.path()).ok().filter(|(ok, _)| *ok).map(|(_, report)| report)
    })
    .await;
    let report = match passed {
        Ok(report) => report,
        Err(e) => panic!("{e}: {:#}", compliance(&c, 2, dir.path())?.1),
    };
    assert_eq!(report["passed"], true, "{report:#}");
    for id in IDS {
        let ch = check(&report, id);
        assert_eq!(ch["passed"], true, "{id}: {ch}");
        assert!(ch["evidence"].as_array().is_some_and(|e| !e.is_empty()), "{id}: {ch}");
    }
    let tls = check(&report, "A4.5")["evidence"].to_string();
    assert!(tls.contains("TLS 1.0 Refused, TLS 1.1 Refused") && tls.contains("checked from the client"), "{tls}");
    assert!(check(&report, "A2.6")["evidence"].to_string().contains("TLS 1.2 Accepted, TLS 1.3 Accepted"));
    // The same report from the API, on another node, for an auditor or admin.
    let (s, api) = c.admin(Method::GET, 3, "/api/v1/compliance", None).await?;
    assert!(s == 200 && api["passed"] == true, "{api:#}");

    // An admin without a second factor: A4.3 fails and names the user.
    admin_user(&c, "lax", false).await?;
    let (ok, report) = compliance(&c, 1, dir.path())?;
    assert!(!ok && report["passed"] == false, "{report:#}");
    assert_eq!(report["failed"], json!(["A4.3"]), "{report:#}");
    assert!(check(&report, "A4.3")["evidence"].to_string().contains("user `lax` (admin) has no TOTP enrolled"));
    let (s, _) = c.admin(Method::DELETE, 1, "/api/v1/users/lax", None).await?;
    assert_eq!(s, 204);

    // Node 3 restarted with a 30-day audit retention: A1.8 and C4 fail, naming node 3.
    c.terminate(3)?;
    c.serve_args.extend(["--unsafe-audit-retention-days".to_string(), "30".to_string()]);
    c.restart(3)?;
    eventually("node 3's new facts", DEADLINE, || async {
        let (_, v) = c.admin(Method::GET, 1, "/api/v1/compliance/facts", None).await.ok()?;
        let n3 = v["nodes"].as_array()?.iter().find(|n| n["node_id"] == 3)?.clone();
        (n3["audit_retention_days"] == 30).then_some(())
    })
    .await?;
    let (ok, report) = compliance(&c, 1, dir.path())?;
    assert!(!ok, "{report:#}");
    let failed: Vec<&str> = report["failed"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    assert!(failed.contains(&"A1.8") && failed.contains(&"C4") && !failed.contains(&"A4.3"), "{report:#}");
    let evidence = check(&report, "A1.8")["evidence"].to_string();
    assert!(
        evidence.contains("node 3: audit retention 30 days") && evidence.contains("unsafe_audit_retention_days=30"),
        "{evidence}"
    );
    assert!(evidence.contains("node 1: audit retention 365 days"), "{evidence}");

    // Only auditors and admins may run it.
    let r = c.http.get(format!("{}/api/v1/compliance", c.url(1))).header("x-api-key", &key).send().await?;
    assert_eq!(r.status().as_u16(), 403);
    Ok(())
}
