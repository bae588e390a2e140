//! Encryption at rest (A4.2, F7; issue 5): after records carrying a unique marker are ingested,
//! replicated, snapshotted and the nodes stopped, no file under any node's data directory contains
//! the marker; `dtm keys rotate` gives every node a new data key, re-encrypts what the old one
//! sealed and retires it, while every record still reads; a node started with another master key
//! refuses to start and names its keyring.

use std::path::Path;
use std::time::Duration;

use dtm_tests::TestCluster;
use dtm_tests::eventually;
use serde_json::json;

fn files_containing(dir: &Path, needle: &[u8], out: &mut Vec<String>) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            bytes += files_containing(&path, needle, out)?;
        } else {
            let data = std::fs::read(&path)?;
            bytes += data.len() as u64;
            if data.windows(needle.len()).any(|w| w == needle) {
                out.push(path.display().to_string());
            }
        }
    }
    Ok(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_directories_hold_no_plaintext_and_keys_rotate() -> anyhow::Result<()> {
    let mut c = TestCluster::start(3, &["--snapshot-after-logs", "20", "--logs-kept-after-snapshot", "5"]).await?;
    c.create_dataset(1, "sealed_ds").await?;
    let key = c.create_source(1, "moj").await?;
    let marker = format!("MARKER-{}", uuid::Uuid::new_v4().simple());
    for i in 0..60 {
        let body = json!({"note": format!("{marker} record {i}"), "i": i});
        let (s, v, _) = c.post(1 + i % 3, "sealed_ds", &key, &body, None).await?;
        assert_eq!(s, 201, "{v}");
    }
    for node in 1..=3 {
        eventually("every record on every node", Duration::from_secs(20), || async {
            c.records(node, "sealed_ds").await.ok().filter(|r| r.len() == 60)
        })
        .await?;
    }
    assert!((1..=3).any(|n| c.log(n).contains("built snapshot")), "a snapshot file was written too");
    // Stop cleanly so that everything is on disk, then look at every byte of every data directory.
    for node in 1..=3 {
        c.terminate(node)?;
    }
    for n in c.nodes.values() {
        let mut found = Vec::new();
        let scanned = files_containing(&n.data_dir, marker.as_bytes(), &mut found)?;
        assert!(found.is_empty(), "node {}: the marker is in {found:?}", n.id);
        // The control: what is meant to be in clear (ids in table keys) is found by the same scan.
        let mut control = Vec::new();
        files_containing(&n.data_dir, b"sealed_ds", &mut control)?;
        assert!(!control.is_empty() && scanned > 100_000, "node {}: the scan sees the store ({scanned} bytes)", n.id);
    }

    // Restarted, the records read back; after a rotation every node uses a second key for new
    // writes, and the old records still read.
    for node in 1..=3 {
        c.restart(node)?;
    }
    let recs = eventually("records after the restart", Duration::from_secs(30), || async {
        c.records(2, "sealed_ds").await.ok().filter(|r| r.len() == 60)
    })
    .await?;
    assert!(recs.iter().all(|(_, d)| d["note"].as_str().is_some_and(|n| n.starts_with(&marker))));
    let out = dtm_tests::run_dtm(&[
        "keys",
        "rotate",
        "--node",
        &c.url(1),
        "--ca-cert",
        &c.tls_dir.join("ca.pem").display().to_string(),
        "--token",
        &c.admin_token,
    ])?;
    assert_eq!(out.lines().filter(|l| l.contains("key 2")).count(), 3, "every node rotated: {out}");
    let (s, v, _) = c.post(3, "sealed_ds", &key, &json!({"note": "after rotation"}), None).await?;
    assert_eq!(s, 201, "{v}");
    for node in 1..=3 {
        // Each node re-encrypts in the background what key 1 sealed, then retires key 1.
        let k = eventually("re-encryption to retire key 1", Duration::from_secs(30), || async {
            let (s, k) = c.admin(reqwest::Method::GET, node, "/api/v1/keys", None).await.ok()?;
            (s == 200 && k["reencryption"]["state"] == "done").then_some(k)
        })
        .await?;
        assert_eq!((k["current_key_id"].as_u64(), k["key_ids"].clone()), (Some(2), json!([2])), "{k}");
        assert!(k["reencryption"]["resealed"].as_u64().is_some_and(|n| n > 60), "{k}");
        let recs = eventually("all records", Duration::from_secs(10), || async {
            c.records(node, "sealed_ds").await.ok().filter(|r| r.len() == 61)
        })
        .await?;
        assert!(recs.iter().filter(|(_, d)| d["note"].as_str().is_some_and(|n| n.starts_with(&marker))).count() == 60);
    }

    // Another master key: the node refuses to start and says which file it cannot open.
    c.terminate(3)?;
    let wrong = c.dir.path().join("wrong.key");
    std::fs::write(&wrong, "11".repeat(32))?;
    c.serve_args.extend(["--master-key-file".to_string(), wrong.display().to_string()]);
    let refused = c.restart(3).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(refused.contains("keyring.pb") && refused.contains("master key"), "{refused}");
    Ok(())
}
