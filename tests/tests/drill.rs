//! `dtm drill` on a `dtm demo` cluster (three nodes in three sites), as an operator runs it
//! (issue 8, acceptance point 3): leader loss, site loss, a partition and a full restore each report RPO 0 and
//! a measured RTO, leave the cluster healthy, write a JSON and a DOCX report, and are recorded in the
//! audit trail. Stopping the demo afterwards also stops the nodes the drills started again.

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
        if (0..3).flat_map(|i| [p + i, p + 100 + i]).all(|q| TcpListener::bind(("127.0.0.1", q)).is_ok()) {
            return p;
        }
    }
    panic!("no free port range");
}

fn drill(demo_json: &str, scenario: &str, report: &std::path::Path) -> (bool, Value, String) {
    let out = Command::new(dtm_bin())
        .args(["drill", "--cluster", demo_json, "--scenario", scenario, "--settle-secs", "1", "--report"])
        .arg(report)
        .output()
        .expect("run dtm drill");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: Value = std::fs::read(report).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    (out.status.success(), report, stderr)
}

/// Stops the demo and every node it lists when the test ends, also when an assertion fails midway
/// (a failed run once left a demo and two nodes running for an hour).
struct DemoGuard {
    child: std::process::Child,
    demo_json: std::path::PathBuf,
}

impl Drop for DemoGuard {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: signalling our own child, as Ctrl-C would.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
            if dtm_tests::wait_until(Duration::from_secs(30), || self.child.try_wait().ok().flatten()).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        let demo: Option<Value> = std::fs::read(&self.demo_json).ok().and_then(|b| serde_json::from_slice(&b).ok());
        for n in demo.iter().flat_map(|d| d["nodes"].as_array().into_iter().flatten()) {
            if let Some(pid) = n["pid"].as_i64().and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 0) {
                // SAFETY: a node this test's demo started; gone already in a passing run.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_on_a_demo_cluster_report_rpo_zero_and_leave_it_healthy() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let demo_dir = dir.path().join("demo");
    let demo_json = demo_dir.join("demo.json");
    let mut guard = DemoGuard {
        child: Command::new(dtm_bin())
            .args(["demo", "--dir", &demo_dir.display().to_string(), "--base-port", &free_base_port().to_string()])
            .args(["--feed-interval-secs", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
        demo_json: demo_json.clone(),
    };
    let demo: Value = eventually("demo.json", Duration::from_secs(60), || async {
        serde_json::from_slice(&std::fs::read(&demo_json).ok()?).ok()
    })
    .await?;
    let dj = demo_json.display().to_string();

    for scenario in ["leader-loss", "site-loss", "partition", "full-restore"] {
        let report_path = dir.path().join(format!("{scenario}.json"));
        let (ok, r, stderr) = drill(&dj, scenario, &report_path);
        assert!(ok, "{scenario} drill failed: {stderr}\n{r:#}");
        assert_eq!(r["scenario"], scenario);
        assert_eq!(r["rpo_records"], 0, "{scenario}: {r:#}");
        assert!(r["rto_ms"].as_u64().is_some(), "{scenario}: RTO measured: {r:#}");
        assert_eq!(r["passed"], true, "{scenario}: {r:#}");
        assert_eq!(r["cluster_healthy_after"], true, "{scenario}: {r:#}");
        assert_eq!(r["recorded_in_audit_trail"], true, "{scenario}: {r:#}");
        assert!(r["writes"]["acknowledged"].as_u64().unwrap_or(0) > 0, "{scenario}: the probe wrote: {r:#}");
        if scenario != "full-restore" {
            assert_eq!(r["checks"]["records_equal"], true, "{scenario}: {r:#}");
            assert_eq!(r["checks"]["digests_equal"], true, "{scenario}: {r:#}");
            assert_eq!(r["checks"]["audit"]["equal"], true, "{scenario}: {r:#}");
        }
        let docx = std::fs::read(report_path.with_extension("docx"))?;
        assert!(docx.starts_with(b"PK"), "{scenario}: the DOCX report is a zip");
    }

    // The drills are in the audit trail.
    let http = https_client(&std::fs::read(demo["ca_cert"].as_str().expect("ca_cert"))?);
    let url =
        format!("{}/api/v1/audit?operation=drill.report&limit=100", demo["nodes"][0]["http"].as_str().expect("http"));
    let token = demo["admin_token"].as_str().expect("token").to_string();
    let entries = eventually("the drill reports in the audit trail", Duration::from_secs(20), || async {
        let v: Value = http.get(&url).bearer_auth(&token).send().await.ok()?.json().await.ok()?;
        v["entries"].as_array().filter(|e| e.len() >= 3).cloned()
    })
    .await?;
    assert!(entries.iter().all(|e| e["principal"].as_str().is_some_and(|p| p.starts_with("admin:"))), "{entries:?}");

    // Ctrl-C stops the demo and the nodes the drills started again (their pids are in demo.json).
    // SAFETY: signalling our own child, as Ctrl-C would.
    unsafe { libc::kill(guard.child.id() as i32, libc::SIGINT) };
    let exit = dtm_tests::wait_until(Duration::from_secs(60), || guard.child.try_wait().ok().flatten());
    assert!(exit.is_some_and(|e| e.success()), "the demo stops cleanly: {exit:?}");
    let after: Value = serde_json::from_slice(&std::fs::read(&demo_json)?)?;
    for n in after["nodes"].as_array().expect("nodes") {
        let pid = n["pid"].as_i64().expect("pid") as i32;
        let gone = dtm_tests::wait_until(Duration::from_secs(10), || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            (stat.is_empty() || zombie).then_some(())
        });
        assert!(gone.is_some(), "node {} (pid {pid}) still runs after the demo stopped", n["id"]);
    }
    Ok(())
}
