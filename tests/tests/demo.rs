//! `dtm demo`, the README's main command, as a newcomer runs it: one command brings up a 3-node
//! cluster with sample data, writes demo.json, stops cleanly on Ctrl-C, and resumes with its data.

use std::net::TcpListener;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

use dtm_tests::dtm_bin;
use dtm_tests::eventually;
use dtm_tests::https_client;
use serde_json::Value;

/// A base port P such that P..P+3 and P+100..P+103 are free right now.
fn free_base_port() -> u16 {
    for _ in 0..200 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = l.local_addr().expect("addr").port();
        drop(l);
        if p > 60_000 {
            continue;
        }
        let all_free = (0..3).flat_map(|i| [p + i, p + 100 + i]).all(|q| TcpListener::bind(("127.0.0.1", q)).is_ok());
        if all_free {
            return p;
        }
    }
    panic!("no free port range");
}

async fn total_records(http: &reqwest::Client, demo: &Value) -> Option<u64> {
    let url = format!("{}/api/v1/datasets/etx_events/records?limit=1", demo["nodes"][1]["http"].as_str()?);
    let v: Value = http.get(url).bearer_auth(demo["admin_token"].as_str()?).send().await.ok()?.json().await.ok()?;
    v["total"].as_u64()
}

fn interrupt_and_wait(child: &mut std::process::Child) -> std::process::ExitStatus {
    // SAFETY: signalling our own child, as Ctrl-C would.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    dtm_tests::wait_until(Duration::from_secs(40), || child.try_wait().ok().flatten())
        .expect("demo stops within 40 s of Ctrl-C")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_a_three_node_cluster_with_data_and_resumes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let base = free_base_port().to_string();
    let demo_dir = dir.path().join("demo");
    let start = || {
        Command::new(dtm_bin())
            .args([
                "demo",
                "--dir",
                &demo_dir.display().to_string(),
                "--base-port",
                &base,
                "--feed-interval-secs",
                "0.2",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    };
    let mut child = start()?;
    let demo_json = demo_dir.join("demo.json");
    let demo: Value = eventually("demo.json", Duration::from_secs(60), || async {
        serde_json::from_slice(&std::fs::read(&demo_json).ok()?).ok()
    })
    .await?;
    assert_eq!(demo["nodes"].as_array().map(Vec::len), Some(3), "{demo}");
    let sites: Vec<&str> = demo["nodes"].as_array().expect("nodes").iter().filter_map(|n| n["site"].as_str()).collect();
    assert_eq!(sites, ["hanoi", "danang", "hcmc"]);
    assert!(demo["nodes"][0]["cmd"].as_array().is_some_and(|c| c.len() > 3), "each node has its command line");
    assert!(demo["sources"][0]["api_key"].as_str().is_some_and(|k| k.starts_with("dtmk.")));
    let http = https_client(&std::fs::read(demo["ca_cert"].as_str().expect("ca_cert"))?);
    let fed = eventually("sample data to arrive", Duration::from_secs(60), || async {
        total_records(&http, &demo).await.filter(|n| *n >= 20)
    })
    .await?;
    // `dtm cluster status --cluster demo.json` shows three voters in three sites.
    let out = dtm_tests::run_dtm(&["cluster", "status", "--cluster", &demo_json.display().to_string(), "--json"])?;
    let status: Value = serde_json::from_str(&out)?;
    assert_eq!(
        status["members"].as_array().map(|m| m.iter().filter(|m| m["voter"] == true).count()),
        Some(3),
        "{status}"
    );
    // The reporting regime (issue 9, C2(b)): the printed data-entry user has the demo report due.
    let reporting = &demo["reporting"];
    let url = demo["nodes"][0]["http"].as_str().expect("http");
    let login = serde_json::json!({"username": reporting["username"], "password": reporting["password"]});
    let resp = http.post(format!("{url}/api/v1/auth/login")).json(&login).send().await?;
    let cookie = dtm_tests::session_cookie(resp.headers()).expect("the reporting user signs in");
    let due: Value =
        http.get(format!("{url}/api/v1/reporting/due")).header("cookie", cookie).send().await?.json().await?;
    assert!(
        due["reports"].as_array().is_some_and(|r| r.iter().any(|r| r["dataset"] == "dvc_monthly")),
        "the demo's report is due: {due}"
    );
    // The web users it prints (issue 9): the analyst's password opens a full session; the admin's
    // opens one that may only enroll TOTP (A4.3).
    for (role, mfa_pending) in [("analyst", false), ("admin", true)] {
        let who = &reporting["web_users"][role];
        let login = serde_json::json!({"username": who["username"], "password": who["password"]});
        let resp = http.post(format!("{url}/api/v1/auth/login")).json(&login).send().await?;
        assert_eq!(resp.status().as_u16(), 200, "the demo's {role} signs in");
        let body: Value = resp.json().await?;
        assert_eq!(body["mfa_enrollment_required"].as_bool(), Some(mfa_pending), "{role}: {body}");
    }

    let exit = interrupt_and_wait(&mut child);
    assert!(exit.success(), "demo exits cleanly on Ctrl-C: {exit}");
    for n in demo["nodes"].as_array().expect("nodes") {
        let pid = n["pid"].as_i64().expect("pid") as i32;
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "node process {pid} was stopped with the demo");
    }

    // Run again on the same directory: the same cluster, its data, and the same credentials.
    let mut child = start()?;
    let resumed = eventually("the resumed cluster to serve its data", Duration::from_secs(60), || async {
        total_records(&http, &demo).await.filter(|n| *n >= fed)
    })
    .await?;
    assert!(resumed >= fed, "no record lost across the restart");
    let exit = interrupt_and_wait(&mut child);
    assert!(exit.success(), "{exit}");
    Ok(())
}
