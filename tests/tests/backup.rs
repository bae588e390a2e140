//! Backup and restore (issue 8; A1.4, F6), on real nodes:
//! - a backup taken while records are being written, restored into a fresh directory after the
//!   whole cluster is lost, gives a node that holds exactly the records acknowledged up to the
//!   backup's log index, the same aggregate digests, and an audit trail that verifies and goes on;
//!   the restored node starts a new cluster that accepts writes and that a new node joins;
//! - a tampered backup fails `dtm backup verify` and is refused by `dtm restore`.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use dtm_tests::TestCluster;
use dtm_tests::dtm_bin;
use dtm_tests::eventually;
use dtm_tests::run_dtm;
use serde_json::Value;
use serde_json::json;

fn key_file(dir: &Path) -> String {
    let p = dir.join("backup.key");
    std::fs::write(&p, "5a".repeat(32)).expect("write key file");
    p.display().to_string()
}

/// `dtm` with `args`: (exit success, stdout, stderr).
fn dtm(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(dtm_bin()).args(args).output().expect("run dtm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_under_writes_restores_a_cluster_that_holds_what_was_acknowledged() -> anyhow::Result<()> {
    let c = TestCluster::start(3, &["--audit-checkpoint-interval-ms", "200"]).await?;
    let key = c.create_source(1, "moh").await?;
    c.create_dataset(1, "fixed").await?;
    c.create_dataset(1, "live").await?;
    for i in 0..20 {
        let (s, v, _) = c.post(2, "fixed", &key, &json!({"records": [{"n": i, "unit": "hn"}]}), None).await?;
        anyhow::ensure!(s == 201, "fixed record: {s} {v}");
    }
    // A writer keeps posting while the backup is taken; it notes every acknowledged record.
    let c = Arc::new(c);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (c, key, stop) = (c.clone(), key.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked: Vec<(String, u64)> = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let node = 1 + i % 3;
                if let Ok((201, v, _)) = c.post(node, "live", &key, &json!({"records": [{"seq": i}]}), None).await
                    && let (Some(id), Some(ci)) = (v["ids"][0].as_str(), v["commit_index"].as_u64())
                {
                    acked.push((id.to_string(), ci));
                }
            }
            acked
        })
    };
    eventually("some live records", Duration::from_secs(10), || async {
        c.records(1, "live").await.ok().filter(|r| r.len() >= 20).map(|_| ())
    })
    .await?;

    let dir = tempfile::tempdir()?;
    let keyf = key_file(dir.path());
    let file = dir.path().join("cluster.dtmbak").display().to_string();
    let (ca, token, url) = (c.tls_dir.join("ca.pem").display().to_string(), c.admin_token.clone(), c.url(2));
    let args: Vec<String> =
        ["backup", "create", "--node", &url, "--ca-cert", &ca, "--token", &token, "--out", &file, "--key-file", &keyf]
            .map(String::from)
            .to_vec();
    let created =
        tokio::task::spawn_blocking(move || run_dtm(&args.iter().map(String::as_str).collect::<Vec<_>>())).await??;
    let created: Value = serde_json::from_str(created.trim())?;
    let index = created["log_index"].as_u64().expect("the backup names its log index");
    // Writes go on after the backup; then the writer stops.
    let later = c.records(1, "live").await?.len();
    eventually("writes after the backup", Duration::from_secs(10), || async {
        c.records(1, "live").await.ok().filter(|r| r.len() >= later + 10).map(|_| ())
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await?;
    let before: BTreeSet<String> = acked.iter().filter(|(_, ci)| *ci <= index).map(|(id, _)| id.clone()).collect();
    let after: BTreeSet<String> = acked.iter().filter(|(_, ci)| *ci > index).map(|(id, _)| id.clone()).collect();
    assert!(
        !before.is_empty() && !after.is_empty(),
        "the backup fell during the writes ({} before, {} after)",
        before.len(),
        after.len()
    );

    // `dtm backup verify` accepts it.
    let (ok, out, err) = dtm(&["backup", "verify", &file, "--key-file", &keyf, "--json"]);
    assert!(ok, "backup verify failed: {err}");
    let verified: Value = serde_json::from_str(&out)?;
    assert_eq!(verified["log_index"].as_u64(), Some(index));
    assert!(verified["audit"]["entries"].as_u64().unwrap_or(0) > 0, "the backup carries the audit trail: {verified}");
    let (ok, out, err) = dtm(&["audit", "verify", "--backup", &file, "--key-file", &keyf, "--json"]);
    assert!(ok, "audit verify --backup failed: {out}{err}");
    let audited: Value = serde_json::from_str(out.trim())?;
    assert_eq!(audited["mode"], "backup");
    assert!(audited["signed_checkpoints"].as_u64().unwrap_or(0) > 0, "signed checkpoints in the backup: {audited}");

    // The whole cluster is lost; node 1 is rebuilt from the backup in a fresh directory.
    let mut c = Arc::try_unwrap(c).map_err(|_| anyhow::anyhow!("cluster still shared"))?;
    for id in [1, 2, 3] {
        c.kill(id);
    }
    c.wipe(1)?;
    let data_dir = c.nodes[&1].data_dir.display().to_string();
    let master = c.tls_dir.join("master.key").display().to_string();
    let restored = run_dtm(&[
        "restore",
        "--from",
        &file,
        "--data-dir",
        &data_dir,
        "--node-id",
        "1",
        "--site",
        "site-1",
        "--master-key-file",
        &master,
        "--key-file",
        &keyf,
    ])?;
    let restored: Value = serde_json::from_str(restored.trim())?;
    assert_eq!(restored["log_index"].as_u64(), Some(index));
    c.spawn(1, false, None)?;
    eventually("the restored node leads its new cluster", Duration::from_secs(30), || async {
        c.status(1).await.ok().filter(|v| v["leader_id"] == 1).map(|_| ())
    })
    .await?;

    // Every record acknowledged up to the backup's index, none after it.
    let live: BTreeSet<String> = c.records(1, "live").await?.into_iter().map(|(id, _)| id).collect();
    let missing: Vec<&String> = before.difference(&live).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged records before the backup are missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );
    assert!(live.is_disjoint(&after), "records acknowledged after the backup's index came back");
    assert_eq!(c.records(1, "fixed").await?.len(), 20);
    // The same aggregate digests as the backup's manifest.
    for (dataset, digest) in created["digests"].as_object().expect("digests") {
        let (s, v) =
            c.admin(reqwest::Method::GET, 1, &format!("/api/v1/datasets/{dataset}/aggregates/digest"), None).await?;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["sha256"].as_str(), digest.as_str(), "digest of {dataset}");
    }

    // The restored cluster takes writes, and a new node joins it and catches up.
    let (s, v, _) = c.post(1, "live", &key, &json!({"records": [{"seq": 0}]}), None).await?;
    assert_eq!(s, 201, "{v}");
    c.wipe(2)?;
    c.spawn(2, false, None)?;
    c.join(2, true).await?;
    let want = live.len() + 1;
    eventually("the new node holds every record", Duration::from_secs(30), || async {
        c.records(2, "live").await.ok().filter(|r| r.len() == want).map(|_| ())
    })
    .await?;

    // The audit trail carried by the backup goes on and still verifies.
    let (s, v) = c.admin(reqwest::Method::GET, 1, "/api/v1/cluster", None).await?;
    assert_eq!(s, 200, "{v}");
    c.terminate(2)?;
    let node2 = c.nodes[&2].data_dir.display().to_string();
    let (ok, out, err) = dtm(&["audit", "verify", "--data-dir", &node2, "--master-key-file", &master]);
    assert!(ok, "the restored trail does not verify on the joined node: {out}{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_backup_fails_verification_and_is_refused_by_restore() -> anyhow::Result<()> {
    let c = TestCluster::start(1, &[]).await?;
    let key = c.create_source(1, "mof").await?;
    c.create_dataset(1, "d").await?;
    let (s, v, _) = c.post(1, "d", &key, &json!({"records": [{"n": 1}, {"n": 2}]}), None).await?;
    anyhow::ensure!(s == 201, "{s} {v}");
    let dir = tempfile::tempdir()?;
    let keyf = key_file(dir.path());
    let file = dir.path().join("b.dtmbak");
    let f = file.display().to_string();
    let (ca, url) = (c.tls_dir.join("ca.pem").display().to_string(), c.url(1));
    run_dtm(&[
        "backup",
        "create",
        "--node",
        &url,
        "--ca-cert",
        &ca,
        "--token",
        &c.admin_token,
        "--out",
        &f,
        "--key-file",
        &keyf,
    ])?;
    let (ok, _, err) = dtm(&["backup", "verify", &f, "--key-file", &keyf]);
    assert!(ok, "an untouched backup verifies: {err}");

    let bytes = std::fs::read(&file)?;
    let master = c.tls_dir.join("master.key").display().to_string();
    for (what, tampered) in [
        ("a flipped byte in the data", {
            let mut b = bytes.clone();
            let at = bytes.len() / 2;
            b[at] ^= 0x20;
            b
        }),
        ("a flipped byte in the header", {
            let mut b = bytes.clone();
            b[20] ^= 0x01;
            b
        }),
        ("the manifest cut off", bytes[..bytes.len() - 64].to_vec()),
    ] {
        std::fs::write(&file, &tampered)?;
        let (ok, _, err) = dtm(&["backup", "verify", &f, "--key-file", &keyf]);
        assert!(!ok, "{what}: verify accepted a tampered backup");
        assert!(!err.trim().is_empty(), "{what}: verify names no reason");
        let (ok, _, _) = dtm(&["audit", "verify", "--backup", &f, "--key-file", &keyf]);
        assert!(!ok, "{what}: audit verify accepted a tampered backup");
        let target = dir.path().join("restored");
        let t = target.display().to_string();
        let (ok, _, err) = dtm(&[
            "restore",
            "--from",
            &f,
            "--data-dir",
            &t,
            "--node-id",
            "1",
            "--master-key-file",
            &master,
            "--key-file",
            &keyf,
        ]);
        assert!(!ok, "{what}: restore accepted a tampered backup");
        assert!(!target.exists(), "{what}: a refused restore left a data directory behind: {err}");
    }
    // A wrong key is refused too, with a clear message.
    std::fs::write(&file, &bytes)?;
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, "77".repeat(32))?;
    let (ok, _, err) = dtm(&["backup", "verify", &f, "--key-file", &wrong.display().to_string()]);
    assert!(!ok && err.contains("key"), "a wrong key: {err}");
    Ok(())
}
