//! `dtm audit verify` (F8, A1.8; issue 7 acceptance points 2 and 3) on real nodes. A three-node
//! cluster with admin actions and records, checkpoints every 200 ms signed by the leader; one node
//! is stopped and copies of its data directory are damaged with sled directly, the way someone with
//! access to the disk (but not the master key) would: an untouched copy verifies; a flipped byte, a
//! deleted entry and two swapped entries are each named; a keys file that lacks the signer makes
//! the signed checkpoint fail; no or the wrong master key, or a running node's locked store, is a clear
//! error. The live mode verifies a running node's trail on the client, in pages of any size. A node started on a damaged trail finds it by itself
//! (`GET /audit/status`, a security event).

use std::path::Path;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use dtm_tests::TestCluster;
use dtm_tests::dtm_bin;
use dtm_tests::eventually;
use reqwest::Method;
use serde_json::Value;
use serde_json::json;

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn entry_key(seq: u64) -> Vec<u8> {
    let mut k = b"aud/".to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The stored block holding entry `seq` (entries are stored one block per command): its key and
/// the position of its first entry.
fn block_of(t: &sled::Tree, seq: u64) -> anyhow::Result<(Vec<u8>, u64)> {
    let (k, _) = t
        .range(b"aud/".to_vec()..=entry_key(seq))
        .next_back()
        .ok_or_else(|| anyhow::anyhow!("no block holds entry {seq}"))??;
    let first = u64::from_be_bytes(k[4..12].try_into()?);
    Ok((k.to_vec(), first))
}

fn tamper(data_dir: &Path, change: impl FnOnce(&sled::Tree) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let db = sled::open(data_dir.join("store"))?;
    let sm = db.open_tree("sm")?;
    change(&sm)?;
    sm.flush()?;
    db.flush()?;
    Ok(())
}

fn verify(args: &[&str], data_dir: Option<&Path>) -> anyhow::Result<(Output, Value)> {
    let mut cmd = std::process::Command::new(dtm_bin());
    cmd.args(["audit", "verify", "--json"]).args(args).env_remove("DTM_MASTER_KEY");
    if let Some(d) = data_dir {
        cmd.arg("--data-dir").arg(d);
    }
    let out = cmd.output()?;
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    Ok((out, v))
}

fn verify_text(args: &[&str], data_dir: &Path) -> anyhow::Result<(i32, String)> {
    let out = std::process::Command::new(dtm_bin())
        .args(["audit", "verify"])
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("DTM_MASTER_KEY")
        .output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.code().unwrap_or(-1), text))
}

fn problem(v: &Value) -> (u64, String) {
    (v["problem"]["seq"].as_u64().unwrap_or(0), v["problem"]["kind"].as_str().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_the_first_bad_entry_and_refuses_foreign_signatures() -> anyhow::Result<()> {
    let mut c =
        TestCluster::start(3, &["--audit-checkpoint-interval-ms", "200", "--audit-verify-interval-s", "1"]).await?;
    let result = run(&mut c).await;
    if result.is_err() {
        c.dump_logs();
    }
    result
}

async fn run(c: &mut TestCluster) -> anyhow::Result<()> {
    c.create_dataset(1, "audited").await?;
    let key = c.create_source(2, "moj").await?;
    for i in 0..12 {
        let (s, v, _) = c.post(1 + i % 3, "audited", &key, &json!({"i": i}), None).await?;
        anyhow::ensure!(s == 201, "{v}");
    }
    let (s, v) = c.admin(Method::POST, 3, "/api/v1/sources/moj/keys", None).await?;
    anyhow::ensure!(s == 201, "issue key: {s} {v}");

    // Node 3 holds signed checkpoints (two at least), one over at least the admin actions above.
    let keys = eventually("a signed checkpoint on node 3", Duration::from_secs(30), || async {
        let (s, v) = c.admin(Method::GET, 3, "/api/v1/audit/checkpoints?limit=1000", None).await.ok()?;
        let signed: Vec<u64> = v["checkpoints"]
            .as_array()?
            .iter()
            .filter(|cp| cp["signatures"].as_array().is_some_and(|s| !s.is_empty()))
            .filter_map(|cp| cp["size"].as_u64())
            .collect();
        let signed = signed.len() >= 2 && signed.iter().any(|size| *size >= 10);
        (s == 200 && signed).then(|| v["keys"].clone())
    })
    .await?;
    let tls = c.tls_dir.display().to_string();
    let ca = c.tls_dir.join("ca.pem").display().to_string();

    // Live: the running node's trail, verified on the client.
    let (out, v) = verify(&["--node", &c.url(2), "--ca-cert", &ca, "--token", &c.admin_token], None)?;
    assert_eq!(out.status.code(), Some(0), "live verify: {v} {}", String::from_utf8_lossy(&out.stderr));
    assert!(v["entries"].as_u64().unwrap_or(0) >= 10 && v["signed_checkpoints"].as_u64().unwrap_or(0) >= 1, "{v}");
    assert_eq!(v["mode"], "live");
    // Small pages: the chain and the checkpoints are read over many requests, with the same verdict.
    let (out, paged) =
        verify(&["--node", &c.url(3), "--ca-cert", &ca, "--token", &c.admin_token, "--page", "1"], None)?;
    assert_eq!(out.status.code(), Some(0), "paged live verify: {paged} {}", String::from_utf8_lossy(&out.stderr));
    assert!(paged["entries"].as_u64().unwrap_or(0) >= 10, "{paged}");
    assert!(paged["signed_checkpoints"].as_u64().unwrap_or(0) >= 2, "several pages of checkpoints: {paged}");
    // A running node's store is locked: --data-dir refuses it with a hint.
    let (out, _) = verify(&["--tls-dir", &tls], Some(&c.nodes[&1].data_dir))?;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.code() == Some(2) && err.contains("still running"), "{err}");

    // The node's own periodic verification has run and found nothing.
    let status = eventually("node 1's own verification", Duration::from_secs(20), || async {
        let (s, v) = c.admin(Method::GET, 1, "/api/v1/audit/status", None).await.ok()?;
        (s == 200 && v["entries"].as_u64().unwrap_or(0) >= 10).then_some(v)
    })
    .await?;
    assert!(status["problem"].is_null() && status["error"].is_null(), "{status}");

    c.terminate(3)?;
    let stopped = c.nodes[&3].data_dir.clone();
    let work = tempfile::tempdir()?;
    let copy = |name: &str| -> anyhow::Result<PathBuf> {
        let d = work.path().join(name);
        copy_dir(&stopped, &d)?;
        Ok(d)
    };

    // (a) Untouched.
    let untouched = copy("untouched")?;
    let (out, v) = verify(&["--tls-dir", &tls], Some(&untouched))?;
    assert_eq!(out.status.code(), Some(0), "untouched: {v} {}", String::from_utf8_lossy(&out.stderr));
    let entries = v["entries"].as_u64().unwrap_or(0);
    assert!(entries >= 10 && v["signed_checkpoints"].as_u64().unwrap_or(0) >= 1, "{v}");
    assert!(v["keys"].as_str().unwrap_or("").contains("registered"), "says which keys it trusted: {v}");
    let (code, text) = verify_text(&["--tls-dir", &tls], &untouched)?;
    assert!(code == 0 && text.contains("OK") && text.contains(&format!("entries checked:    {entries}")), "{text}");

    // (b) One byte of the stored block holding entry 3 flipped: its first entry is named.
    let flipped = copy("flipped")?;
    let mut named = 0;
    tamper(&flipped, |t| {
        let (key, first) = block_of(t, 3)?;
        named = first;
        let mut v = t.get(&key)?.ok_or_else(|| anyhow::anyhow!("block stored"))?.to_vec();
        let mid = v.len() / 2;
        v[mid] ^= 0x01;
        t.insert(key, v)?;
        Ok(())
    })?;
    let (out, v) = verify(&["--tls-dir", &tls], Some(&flipped))?;
    assert_eq!(out.status.code(), Some(1), "flipped: {v}");
    assert_eq!(problem(&v), (named, "changed".into()), "{v}");
    let (code, text) = verify_text(&["--tls-dir", &tls], &flipped)?;
    assert!(code == 1 && text.contains(&format!("FAILED: entry {named} (changed)")), "{text}");

    // (c) The block holding entry 5 deleted: its first entry is named as missing.
    let deleted = copy("deleted")?;
    tamper(&deleted, |t| {
        let (key, first) = block_of(t, 5)?;
        named = first;
        t.remove(key)?;
        Ok(())
    })?;
    let (out, v) = verify(&["--tls-dir", &tls], Some(&deleted))?;
    assert_eq!(out.status.code(), Some(1), "deleted: {v}");
    assert_eq!(problem(&v), (named, "removed".into()), "{v}");

    // (d) Two stored blocks swapped: the first of them is named.
    let swapped = copy("swapped")?;
    tamper(&swapped, |t| {
        let (ka, first) = block_of(t, 2)?;
        let after = t.range(ka.clone()..).keys().nth(1).ok_or_else(|| anyhow::anyhow!("a second block"))??;
        named = first;
        let a = t.get(&ka)?.ok_or_else(|| anyhow::anyhow!("block a"))?;
        let b = t.get(&after)?.ok_or_else(|| anyhow::anyhow!("block b"))?;
        t.insert(ka, b)?;
        t.insert(after, a)?;
        Ok(())
    })?;
    let (out, v) = verify(&["--tls-dir", &tls], Some(&swapped))?;
    assert_eq!(out.status.code(), Some(1), "swapped: {v}");
    assert_eq!(problem(&v).0, named, "{v}");

    // Acceptance point 3: pinned keys. The cluster's own keys verify; keys lacking the signer make
    // the first signed checkpoint fail, named.
    let own = work.path().join("keys.json");
    std::fs::write(&own, serde_json::to_vec(&json!({ "keys": keys }))?)?;
    let (out, v) = verify(&["--tls-dir", &tls, "--keys", &own.display().to_string()], Some(&untouched))?;
    assert_eq!(out.status.code(), Some(0), "own keys: {v} {}", String::from_utf8_lossy(&out.stderr));
    assert!(v["keys"].as_str().unwrap_or("").contains("keys.json"), "{v}");
    let foreign: Vec<Value> =
        (1..=3).map(|n| json!({"node_id": n, "public_key": format!("{n:02x}").repeat(32)})).collect();
    let foreign_file = work.path().join("foreign.json");
    std::fs::write(&foreign_file, serde_json::to_vec(&foreign)?)?;
    let (out, v) = verify(&["--tls-dir", &tls, "--keys", &foreign_file.display().to_string()], Some(&untouched))?;
    assert_eq!(out.status.code(), Some(1), "foreign keys: {v}");
    let (seq, kind) = problem(&v);
    assert_eq!(kind, "signature", "{v}");
    assert!(v["problem"]["message"].as_str().unwrap_or("").contains(&format!("checkpoint {seq}")), "{v}");

    // The store needs its master key: none, or another one, is a clear error (exit 2).
    let (out, _) = verify(&[], Some(&untouched))?;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.code() == Some(2) && err.contains("master key"), "{err}");
    let other_key = work.path().join("other.key");
    std::fs::write(&other_key, "ab".repeat(32))?;
    let (out, _) = verify(&["--master-key-file", &other_key.display().to_string()], Some(&untouched))?;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.code() == Some(2) && err.contains("master key does not open"), "{err}");
    let (out, _) = verify(&["--tls-dir", &tls], Some(work.path()))?;
    assert_eq!(out.status.code(), Some(2), "not a data directory");
    let (out, _) = verify(&["--backup", "x.dtmbackup"], None)?;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.code() == Some(2) && err.contains("backup"), "{err}");

    // Node 3 started again on a damaged trail finds the damage by itself.
    let mut damaged = 0;
    tamper(&stopped, |t| {
        let (key, first) = block_of(t, 7)?;
        damaged = first;
        let mut v = t.get(&key)?.ok_or_else(|| anyhow::anyhow!("block stored"))?.to_vec();
        let last = v.len() - 1;
        v[last] ^= 0x80;
        t.insert(key, v)?;
        Ok(())
    })?;
    c.restart(3)?;
    let status = eventually("node 3's verification to find the damaged block", Duration::from_secs(30), || async {
        let (s, v) = c.admin(Method::GET, 3, "/api/v1/audit/status", None).await.ok()?;
        (s == 200 && v["problem"]["seq"].as_u64() == Some(damaged)).then_some(v)
    })
    .await?;
    assert_eq!(status["problem"]["kind"], "changed", "{status}");
    eventually("the audit_verification_failed security event", Duration::from_secs(30), || async {
        let (s, v) =
            c.admin(Method::GET, 1, "/api/v1/security/events?kind=audit_verification_failed", None).await.ok()?;
        (s == 200 && v["events"].as_array().is_some_and(|e| !e.is_empty())).then_some(())
    })
    .await?;
    Ok(())
}
