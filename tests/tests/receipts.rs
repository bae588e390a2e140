//! Signed receipts (issue 7, acceptance point 6: "a receipt verifies offline; a receipt with any
//! field changed does not"), on a real 3-node cluster: records posted over REST, SOAP and gRPC and
//! a batch each come back with a receipt signed by the answering node; `dtm receipt verify` accepts
//! them against the key list saved from `GET /api/v1/audit/keys` (read anonymously), refuses every
//! one with a field changed, and refuses a receipt validly signed by a key that is not the cluster's.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use dtm_proto::v1 as pb;
use dtm_proto::v1::ingest_client::IngestClient;
use dtm_tests::TestCluster;
use dtm_tests::dtm_bin;
use dtm_tests::eventually;
use reqwest::Method;
use serde_json::Value;
use serde_json::json;
use sha2::Digest;

/// `dtm receipt verify` with `args`: exit success, stdout and stderr.
fn verify(args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = Command::new(dtm_bin()).args(["receipt", "verify"]).args(args).output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn save(dir: &Path, name: &str, v: &Value) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(v)?)?;
    Ok(path.display().to_string())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The canonical payload as docs/api.md ("Receipts") describes it, written here independently of
/// the node's code: a receipt re-signed over it with any Ed25519 key must pass the signature check.
fn documented_payload(r: &Value) -> String {
    let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
    let n = |v: &Value| v.as_u64().map(|n| n.to_string()).unwrap_or_default();
    let ids: Vec<&str> = r["ids"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let mut out = String::from("dtm-receipt-v1\n");
    for (name, value) in [
        ("kind", s("kind")),
        ("source", s("source")),
        ("dataset", s("dataset")),
        ("request_id", s("request_id")),
        ("batch_id", s("batch_id")),
        ("content_sha256", s("content_sha256")),
        ("counts.received", n(&r["counts"]["received"])),
        ("counts.accepted", n(&r["counts"]["accepted"])),
        ("counts.stored", n(&r["counts"]["stored"])),
        ("counts.duplicates", n(&r["counts"]["duplicates"])),
        ("counts.conflicts", n(&r["counts"]["conflicts"])),
        ("counts.rejected", n(&r["counts"]["rejected"])),
        ("ids", ids.join(",")),
        ("commit_index", n(&r["commit_index"])),
        ("received_at", s("received_at")),
        ("received_at_ms", n(&r["received_at_ms"])),
        ("node_id", n(&r["node_id"])),
        ("public_key", s("public_key")),
    ] {
        out.push_str(&format!("{name}={value}\n"));
    }
    out
}

/// Posts `body` as it is to `path` on `node` as the source `key`: status and answer text.
async fn post(
    c: &TestCluster,
    node: u64,
    path: &str,
    key: &str,
    content_type: &str,
    request_id: &str,
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let resp = c
        .http
        .post(format!("{}{path}", c.url(node)))
        .header("x-api-key", key)
        .header("content-type", content_type)
        .header("x-request-id", request_id)
        .body(body.to_vec())
        .send()
        .await?;
    Ok((resp.status().as_u16(), resp.text().await?))
}

async fn anonymous_keys(c: &TestCluster, node: u64) -> anyhow::Result<(u16, Value)> {
    let resp = c.http.get(format!("{}/api/v1/audit/keys?consistency=linearizable", c.url(node))).send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

fn xml_text(doc: &str, tag: &str) -> Option<String> {
    let open = format!("<dtm:{tag}>");
    let start = doc.find(&open)? + open.len();
    let end = start + doc[start..].find(&format!("</dtm:{tag}>"))?;
    Some(
        doc[start..end]
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_verify_offline_and_any_changed_field_fails() -> anyhow::Result<()> {
    let c = TestCluster::start(3, &[]).await?;
    let key = c.create_source(1, "rcpt-src").await?;
    c.create_dataset(1, "rcpt").await?;
    let dir = tempfile::tempdir()?;
    let ca = c.tls_dir.join("ca.pem").display().to_string();

    // Every node registers its key; the list is public (read here without credentials).
    let keys = eventually("three registered node keys", Duration::from_secs(60), || async {
        match anonymous_keys(&c, 2).await {
            Ok((200, v)) if v["keys"].as_array().is_some_and(|k| k.len() == 3) => Some(v),
            _ => None,
        }
    })
    .await?;
    let keys_file = save(dir.path(), "keys.json", &keys)?;
    let mut key_nodes: Vec<u64> =
        keys["keys"].as_array().into_iter().flatten().filter_map(|k| k["node_id"].as_u64()).collect();
    key_nodes.sort();
    assert_eq!(key_nodes, vec![1, 2, 3], "{keys}");

    // Real-time records, posted to node 2 as exact bytes: the receipt hashes those bytes.
    let body = br#"[{"agency":"MOF","n":1},{"agency":"MOH","n":2}]"#;
    let (status, text) =
        post(&c, 2, "/api/v1/datasets/rcpt/records", &key, "application/json", "rcpt-req-1", body).await?;
    assert_eq!(status, 201, "{text}");
    let answer: Value = serde_json::from_str(&text)?;
    let r = &answer["receipt"];
    assert_eq!(r["version"], "dtm-receipt-v1", "{answer}");
    assert_eq!(r["kind"], "records");
    assert_eq!((r["source"].as_str(), r["dataset"].as_str()), (Some("rcpt-src"), Some("rcpt")));
    assert_eq!(r["request_id"], "rcpt-req-1");
    assert_eq!(r["content_sha256"].as_str(), Some(sha256_hex(body).as_str()));
    assert_eq!(r["ids"], answer["ids"]);
    assert_eq!(r["commit_index"], answer["commit_index"]);
    assert_eq!(
        r["counts"],
        json!({"received": 2, "accepted": 2, "stored": 2, "duplicates": 0, "conflicts": 0, "rejected": 0})
    );
    assert_eq!(r["node_id"], 2);
    for member in ["accepted", "ids", "commit_index", "schema_version", "stored", "duplicates", "conflicts", "outcomes"]
    {
        assert!(answer.get(member).is_some(), "the 201 answer lost `{member}`: {answer}");
    }
    // The whole 201 answer is a valid input.
    let records_file = save(dir.path(), "records-answer.json", &answer)?;

    // A batch uploaded to node 3, its status read from node 1: each answer signed by its node.
    let ndjson = b"{\"agency\":\"MOF\",\"n\":10}\n{\"agency\":\"MOIT\",\"n\":11}\n{\"agency\":\"MOF\",\"n\":12}\n";
    let (status, text) =
        post(&c, 3, "/api/v1/datasets/rcpt/batches", &key, "application/x-ndjson", "rcpt-req-2", ndjson).await?;
    assert_eq!(status, 201, "{text}");
    let batch: Value = serde_json::from_str(&text)?;
    let b = &batch["receipt"];
    assert_eq!((b["kind"].as_str(), b["node_id"].as_u64()), (Some("batch"), Some(3)), "{batch}");
    assert_eq!(b["batch_id"], batch["batch_id"]);
    assert_eq!(b["content_sha256"].as_str(), Some(sha256_hex(ndjson).as_str()));
    assert_eq!((b["counts"]["received"].as_u64(), b["counts"]["accepted"].as_u64()), (Some(3), Some(3)));
    let batch_file = save(dir.path(), "batch-receipt.json", b)?;
    let batch_id = batch["batch_id"].as_str().context("batch_id")?;
    let (s, status) = c.admin(Method::GET, 1, &format!("/api/v1/batches/{batch_id}"), None).await?;
    assert_eq!(s, 200, "{status}");
    assert_eq!(status["receipt"]["node_id"], 1, "{status}");
    assert_eq!(status["receipt"]["content_sha256"], b["content_sha256"]);
    let status_file = save(dir.path(), "batch-status.json", &status)?;

    // gRPC: the receipt travels as JSON text; it hashes the JSON array the records were joined into.
    let grpc_receipt = {
        let pem = tonic::transport::Certificate::from_pem(std::fs::read(c.tls_dir.join("ca.pem"))?);
        let ch = tonic::transport::Endpoint::from_shared(format!("https://{}", c.nodes[&1].grpc_addr))?
            .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(pem).domain_name("localhost"))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        let records = vec![r#"{"agency":"MOJ","n":20}"#.to_string(), r#"{"agency":"MOJ","n":21}"#.to_string()];
        let mut req = tonic::Request::new(pb::SubmitRequest {
            dataset: "rcpt".into(),
            records_json: records.clone(),
            ..Default::default()
        });
        req.metadata_mut().insert("x-api-key", key.parse()?);
        let answer = IngestClient::new(ch).submit(req).await?.into_inner();
        let r: Value = serde_json::from_str(&answer.receipt_json).context("receipt_json is JSON")?;
        assert_eq!(
            r["content_sha256"].as_str(),
            Some(sha256_hex(format!("[{}]", records.join(",")).as_bytes()).as_str())
        );
        assert_eq!(r["commit_index"].as_u64(), Some(answer.commit_index));
        r
    };
    let grpc_file = save(dir.path(), "grpc-receipt.json", &grpc_receipt)?;

    // SOAP: the receipt as JSON text in <dtm:Receipt>.
    let records_json = r#"{"agency":"MOET","n":30}"#;
    let envelope = format!(
        "<?xml version=\"1.0\"?><soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         xmlns:dtm=\"urn:dtm:soap:v1\"><soap:Body><dtm:SubmitRecords><dtm:Dataset>rcpt</dtm:Dataset>\
         <dtm:RecordsJson>{}</dtm:RecordsJson></dtm:SubmitRecords></soap:Body></soap:Envelope>",
        records_json.replace('"', "&quot;")
    );
    let (status, doc) =
        post(&c, 3, "/soap/v1", &key, "text/xml; charset=utf-8", "rcpt-req-3", envelope.as_bytes()).await?;
    assert_eq!(status, 200, "{doc}");
    let soap_receipt: Value = serde_json::from_str(&xml_text(&doc, "Receipt").context("<dtm:Receipt>")?)?;
    assert_eq!(soap_receipt["content_sha256"].as_str(), Some(sha256_hex(records_json.as_bytes()).as_str()));
    let soap_file = save(dir.path(), "soap-receipt.json", &soap_receipt)?;

    // All of them verify offline against the saved key list.
    for file in [&records_file, &batch_file, &status_file, &grpc_file, &soap_file] {
        let (ok, out, err) = verify(&[file, "--keys", &keys_file])?;
        assert!(ok, "{file}: {out} {err}");
        assert!(out.contains("receipt valid"), "{out}");
    }
    // Without a key list the signature is checked and the output says the key was not.
    let (ok, out, _) = verify(&[&records_file])?;
    assert!(ok && out.contains("NOT checked"), "{out}");
    // Against a live node's key list.
    let (ok, out, err) = verify(&[&batch_file, "--node", &c.url(2), "--ca-cert", &ca])?;
    assert!(ok, "{out} {err}");

    // Any one field changed: refused, naming why.
    let original = r.clone();
    let mut changed: Vec<(&str, Value)> = Vec::new();
    let mut set = |what: &'static str, f: &dyn Fn(&mut Value)| {
        let mut v = original.clone();
        f(&mut v);
        changed.push((what, v));
    };
    set("count", &|v| v["counts"]["accepted"] = json!(3));
    set("stored count", &|v| v["counts"]["stored"] = json!(1));
    set("commit index", &|v| v["commit_index"] = json!(v["commit_index"].as_u64().unwrap_or(0) + 1));
    set("content hash", &|v| v["content_sha256"] = json!(sha256_hex(b"something else")));
    set("dataset", &|v| v["dataset"] = json!("other"));
    set("source", &|v| v["source"] = json!("another-src"));
    set("ids", &|v| v["ids"][0] = json!("00000000-0000-0000-0000-000000000000"));
    set("received_at_ms", &|v| v["received_at_ms"] = json!(v["received_at_ms"].as_u64().unwrap_or(0) + 1));
    set("node_id", &|v| v["node_id"] = json!(1));
    set("signature", &|v| {
        let sig = v["signature"].as_str().unwrap_or_default();
        let flipped = match sig.strip_prefix('0') {
            Some(rest) => format!("1{rest}"),
            None => format!("0{}", sig.get(1..).unwrap_or_default()),
        };
        v["signature"] = json!(flipped);
    });
    for (what, v) in changed {
        let file = save(dir.path(), "changed.json", &v)?;
        let (ok, out, err) = verify(&[&file, "--keys", &keys_file])?;
        assert!(!ok, "a receipt with its {what} changed verified: {out}");
        assert!(err.contains("NOT valid") || err.contains("not one of"), "{what}: {err}");
        // Also without the key list: the signature alone catches it.
        let (ok, _, _) = verify(&[&file])?;
        assert!(!ok, "a receipt with its {what} changed verified without --keys");
    }

    // A forger re-signs a changed receipt with its own key over the documented payload: the
    // signature is valid (so the payload is the documented one), but the key is not the cluster's.
    let forger = {
        let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("randomness"))?;
        ring::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| anyhow::anyhow!("key"))?
    };
    let mut forged = original.clone();
    forged["counts"]["accepted"] = json!(200);
    forged["public_key"] = json!(hex::encode(ring::signature::KeyPair::public_key(&forger).as_ref()));
    forged["signature"] = json!(hex::encode(forger.sign(documented_payload(&forged).as_bytes()).as_ref()));
    let forged_file = save(dir.path(), "forged.json", &forged)?;
    let (ok, out, err) = verify(&[&forged_file])?;
    assert!(ok && out.contains("NOT checked"), "the documented payload differs from the node's: {out} {err}");
    let (ok, out, err) = verify(&[&forged_file, "--keys", &keys_file])?;
    assert!(!ok, "a receipt signed by a foreign key verified: {out}");
    assert!(err.contains("not one of the cluster's"), "{err}");
    let (ok, _, err) = verify(&[&forged_file, "--node", &c.url(1), "--ca-cert", &ca])?;
    assert!(!ok && err.contains("not one of the cluster's"), "{err}");

    // Not a receipt at all, and a file that is not JSON: refused with a message.
    let (ok, _, err) = verify(&[&save(dir.path(), "plain.json", &json!({"accepted": 1}))?])?;
    assert!(!ok && err.contains("no receipt"), "{err}");
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, b"not json")?;
    let (ok, _, err) = verify(&[&junk.display().to_string()])?;
    assert!(!ok && err.contains("not JSON"), "{err}");
    Ok(())
}
