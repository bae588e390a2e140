//! Transport security and bad input (A2.3, A2.5, A4.1, S1; issue 2 AC6 and "Bad input"): node-to-node
//! gRPC refuses callers without a certificate from the cluster CA; the API port refuses plain HTTP;
//! malformed requests get a JSON error, store nothing, and the node keeps serving; a malformed
//! message from a peer never takes a node down.

use std::time::Duration;

use dtm_proto::raft as pb;
use dtm_proto::raft::raft_service_client::RaftServiceClient;
use dtm_tests::TestCluster;
use dtm_tests::eventually;
use serde_json::Value;
use serde_json::json;
use tonic::transport::Certificate;
use tonic::transport::ClientTlsConfig;
use tonic::transport::Endpoint;
use tonic::transport::Identity;

async fn grpc_client(
    addr: &str,
    tls: ClientTlsConfig,
) -> Result<RaftServiceClient<tonic::transport::Channel>, tonic::transport::Error> {
    let ch = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(RaftServiceClient::new(ch))
}

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).expect("certificate file")
}

/// AC6: a gRPC client without a node certificate, or with one from another CA, is refused; plain
/// HTTP on the API port is refused; plain-text gRPC is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_refuses_callers_without_cluster_credentials() -> anyhow::Result<()> {
    let c = TestCluster::start(1, &[]).await?;
    let grpc = c.nodes[&1].grpc_addr.clone();
    let ca = Certificate::from_pem(read(&c.tls_dir.join("ca.pem")));

    // No client certificate: TLS succeeds (the port also serves source systems), the node-to-node
    // service refuses.
    let mut anon = grpc_client(&grpc, ClientTlsConfig::new().ca_certificate(ca.clone())).await?;
    let err = anon.node_status(pb::NodeStatusRequest {}).await.expect_err("refused without a certificate");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let err = anon.propose(pb::ProposeRequest { command: vec![] }).await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // A certificate from another CA: the handshake fails.
    let other = tempfile::tempdir()?;
    dtm_tests::run_dtm(&["certs", "init", "--dir", &other.path().display().to_string(), "--nodes", "1"])?;
    let foreign =
        Identity::from_pem(read(&other.path().join("node-1.pem")), read(&other.path().join("node-1-key.pem")));
    let refused = match grpc_client(&grpc, ClientTlsConfig::new().ca_certificate(ca.clone()).identity(foreign)).await {
        Err(_) => true,
        Ok(mut client) => client.node_status(pb::NodeStatusRequest {}).await.is_err(),
    };
    assert!(refused, "a certificate from another CA must be refused");

    // The cluster's own node certificate works (the control case, so the test can fail).
    let own = Identity::from_pem(read(&c.tls_dir.join("node-1.pem")), read(&c.tls_dir.join("node-1-key.pem")));
    let mut peer = grpc_client(&grpc, ClientTlsConfig::new().ca_certificate(ca).identity(own)).await?;
    let status = peer.node_status(pb::NodeStatusRequest {}).await?.into_inner();
    assert_eq!(status.node_id, 1);

    // Plain HTTP on the API port and plain-text HTTP/2 on the gRPC port get no answer.
    let plain = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let r = plain.get(format!("http://{}/api/v1/health", c.nodes[&1].http_addr)).send().await;
    assert!(r.is_err(), "plain HTTP must not be served: {r:?}");
    let h2c = Endpoint::from_shared(format!("http://{grpc}"))?.connect_timeout(Duration::from_secs(5));
    let refused = match h2c.connect().await {
        Err(_) => true,
        Ok(ch) => RaftServiceClient::new(ch).node_status(pb::NodeStatusRequest {}).await.is_err(),
    };
    assert!(refused, "plain-text gRPC must be refused");
    // And HTTPS still works.
    let (s, _) = c.admin(reqwest::Method::GET, 1, "/api/v1/health", None).await?;
    assert_eq!(s, 200);
    Ok(())
}

fn assert_error(status: u16, want: u16, body: &Value, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

/// Bad input: malformed JSON, wrong content type, oversized bodies, unknown dataset, missing or
/// wrong or revoked key, non-object records. Each is a JSON error per the contract, nothing is
/// stored, and the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_json_errors_and_stores_nothing() -> anyhow::Result<()> {
    let c = TestCluster::start(3, &[]).await?;
    c.create_dataset(1, "etx").await?;
    let key = c.create_source(1, "moj").await?;
    let (s, v, _) = c.post(2, "etx", &key, &json!({"ok": 1}), None).await?;
    assert_eq!(s, 201, "{v}");
    let url = format!("{}/api/v1/datasets/etx/records", c.url(2));
    let send = |body: Vec<u8>, ct: &'static str, key: Option<String>| {
        let mut req = c.http.post(&url).header("content-type", ct).body(body);
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        async move {
            let resp = req.send().await.expect("request");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let k = || Some(key.clone());
    let (s, v) = send(b"{\"a\": ".to_vec(), "application/json", k()).await;
    assert_error(s, 400, &v, "malformed_json");
    let (s, v) = send(b"{}".to_vec(), "text/plain", k()).await;
    assert_error(s, 415, &v, "unsupported_media_type");
    let (s, v) = send(b"[1, {\"a\": 2}]".to_vec(), "application/json", k()).await;
    assert_error(s, 422, &v, "invalid_records");
    assert_eq!(v["error"]["details"][0]["record"], 0, "{v}");
    let (s, v) = send(b"[]".to_vec(), "application/json", k()).await;
    assert_error(s, 400, &v, "bad_request");
    let (s, v) = send(b"{}".to_vec(), "application/json", None).await;
    assert_error(s, 401, &v, "unauthorized");
    let (s, v) = send(
        b"{}".to_vec(),
        "application/json",
        Some("dtmk.0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
    )
    .await;
    assert_error(s, 401, &v, "unauthorized");
    let (s, v) = send(b"{}".to_vec(), "application/json", Some("not a key".into())).await;
    assert_error(s, 401, &v, "unauthorized");
    let big = vec![b' '; 17 * 1024 * 1024];
    let (s, v) = send(big, "application/json", k()).await;
    assert_error(s, 413, &v, "payload_too_large");
    let (s, v, _) = c.post(2, "no_such_dataset", &key, &json!({}), None).await?;
    assert_error(s, 404, &v, "unknown_dataset");
    // An admin token is not a source key.
    let resp = c.http.post(&url).bearer_auth(&c.admin_token).json(&json!({})).send().await?;
    assert_eq!(resp.status().as_u16(), 403);
    // An Idempotency-Key reused for a different body is a conflict, and stores nothing.
    let (s, _, _) = c.post(2, "etx", &key, &json!({"x": 1}), Some("k1")).await?;
    assert_eq!(s, 201);
    let (s, v, _) = c.post(3, "etx", &key, &json!({"x": 2}), Some("k1")).await?;
    assert_error(s, 409, &v, "idempotency_conflict");

    // Revocation through node 1 takes effect on node 3 within a second.
    let (s, v) = c.admin(reqwest::Method::POST, 1, "/api/v1/sources/moj/keys", None).await?;
    assert_eq!(s, 201, "{v}");
    let second = v["api_key"].as_str().expect("key").to_string();
    let key_id = v["key_id"].as_str().expect("key id").to_string();
    let (s, _, _) = c.post(3, "etx", &second, &json!({"second": 1}), None).await?;
    assert_eq!(s, 201, "a key issued on node 1 works on node 3 at once");
    let (s, v) = c.admin(reqwest::Method::DELETE, 1, &format!("/api/v1/sources/moj/keys/{key_id}"), None).await?;
    assert_eq!(s, 200, "{v}");
    eventually("revocation to reach node 3", Duration::from_secs(1), || async {
        let (s, _, _) = c.post(3, "etx", &second, &json!({"revoked": 1}), None).await.ok()?;
        (s == 401).then_some(())
    })
    .await?;
    let (s, _, _) = c.post(3, "etx", &key, &json!({"first key": "still valid"}), None).await?;
    assert_eq!(s, 201);

    // Nothing from the refused requests was stored, on any node.
    for node in [1, 2, 3] {
        let recs = eventually("node to catch up", Duration::from_secs(10), || async {
            let r = c.records(node, "etx").await.ok()?;
            (r.len() >= 4).then_some(r)
        })
        .await?;
        let datas: Vec<&Value> = recs.iter().map(|(_, d)| d).collect();
        assert_eq!(
            datas,
            vec![&json!({"ok": 1}), &json!({"x": 1}), &json!({"second": 1}), &json!({"first key": "still valid"})],
            "node {node}"
        );
    }
    for node in [1, 2, 3] {
        let (s, _) = c.admin(reqwest::Method::GET, node, "/api/v1/health", None).await?;
        assert_eq!(s, 200, "node {node} keeps serving");
    }
    Ok(())
}

/// A malformed or truncated message from a peer (with a valid node certificate) is refused with
/// INVALID_ARGUMENT and never panics the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_peer_messages_never_take_a_node_down() -> anyhow::Result<()> {
    let c = TestCluster::start(1, &[]).await?;
    let grpc = c.nodes[&1].grpc_addr.clone();
    let ca = Certificate::from_pem(read(&c.tls_dir.join("ca.pem")));
    let own = Identity::from_pem(read(&c.tls_dir.join("node-1.pem")), read(&c.tls_dir.join("node-1-key.pem")));
    let mut peer = grpc_client(&grpc, ClientTlsConfig::new().ca_certificate(ca).identity(own)).await?;

    let no_vote = pb::AppendEntriesRequest::default();
    assert_eq!(peer.append_entries(no_vote).await.expect_err("no vote").code(), tonic::Code::InvalidArgument);
    let garbage_entry = pb::AppendEntriesRequest {
        vote: Some(pb::Vote { term: 1, node_id: 9, committed: true }),
        entries: vec![pb::Entry {
            log_id: Some(pb::LogId { term: 1, node_id: 9, index: 1 }),
            payload: Some(pb::entry::Payload::Normal(vec![0xff, 0xff, 0xff, 0x01])),
        }],
        ..Default::default()
    };
    assert_eq!(peer.append_entries(garbage_entry).await.expect_err("garbage").code(), tonic::Code::InvalidArgument);
    let missing_payload = pb::AppendEntriesRequest {
        vote: Some(pb::Vote { term: 1, node_id: 9, committed: true }),
        entries: vec![pb::Entry { log_id: Some(pb::LogId { term: 1, node_id: 9, index: 1 }), payload: None }],
        ..Default::default()
    };
    assert_eq!(peer.append_entries(missing_payload).await.expect_err("missing").code(), tonic::Code::InvalidArgument);
    let bad_membership = pb::InstallSnapshotRequest {
        vote: Some(pb::Vote { term: 1, node_id: 9, committed: true }),
        meta: Some(pb::SnapshotMeta {
            last_log_id: None,
            last_membership: Some(pb::StoredMembership {
                log_id: None,
                membership: Some(pb::Membership {
                    configs: vec![pb::NodeIdSet { ids: vec![5] }],
                    nodes: Default::default(),
                }),
            }),
            snapshot_id: "x".into(),
        }),
        ..Default::default()
    };
    assert_eq!(peer.install_snapshot(bad_membership).await.expect_err("bad").code(), tonic::Code::InvalidArgument);
    let garbage_command = pb::ProposeRequest { command: vec![0xff; 7] };
    assert_eq!(peer.propose(garbage_command).await.expect_err("garbage").code(), tonic::Code::InvalidArgument);

    // The node still serves, and still leads its cluster.
    let (s, _) = c.admin(reqwest::Method::GET, 1, "/api/v1/health", None).await?;
    assert_eq!(s, 200);
    c.create_dataset(1, "after_garbage").await?;
    Ok(())
}
