//! The gateway in front of gRPC `dtm.v1.Ingest` too (A2.3, A4.1, A2.8; issue 5's matrix over REST,
//! SOAP and gRPC): a credential denied from an address is refused over gRPC as over HTTPS, the
//! ingest rate limit applies, and repeated bad credentials over gRPC count towards blocking the
//! address.

use std::time::Duration;

use dtm_proto::v1 as pb;
use dtm_proto::v1::ingest_client::IngestClient;
use dtm_tests::TestCluster;
use reqwest::Method;
use serde_json::json;
use tonic::transport::Certificate;
use tonic::transport::ClientTlsConfig;
use tonic::transport::Endpoint;

async fn client(c: &TestCluster) -> anyhow::Result<IngestClient<tonic::transport::Channel>> {
    let ca = Certificate::from_pem(std::fs::read(c.tls_dir.join("ca.pem"))?);
    let ch = Endpoint::from_shared(format!("https://{}", c.nodes[&1].grpc_addr))?
        .tls_config(ClientTlsConfig::new().ca_certificate(ca).domain_name("localhost"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(IngestClient::new(ch))
}

async fn submit(
    cl: &mut IngestClient<tonic::transport::Channel>,
    key: &str,
    n: u64,
) -> Result<pb::SubmitResponse, tonic::Status> {
    let mut req = tonic::Request::new(pb::SubmitRequest {
        dataset: "etx".into(),
        records_json: vec![json!({"n": n}).to_string()],
        ..Default::default()
    });
    req.metadata_mut().insert("x-api-key", key.parse().map_err(|_| tonic::Status::internal("key"))?);
    cl.submit(req).await.map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_ingest_passes_the_same_gateway() -> anyhow::Result<()> {
    let c = TestCluster::start(1, &[]).await?;
    c.create_dataset(1, "etx").await?;
    let a = c.create_source(1, "a").await?;
    let b = c.create_source(1, "b").await?;
    let mut cl = client(&c).await?;
    submit(&mut cl, &a, 1).await?;

    // A's key may not be used from loopback: refused over gRPC, B still served.
    let id = a.split('.').nth(1).unwrap_or_default().to_string();
    let rules = json!({"credentials": {id: {"deny": ["127.0.0.0/8", "::1"]}}});
    let (s, v) = c.admin(Method::PUT, 1, "/api/v1/gateway/ip-rules", Some(rules)).await?;
    assert_eq!(s, 200, "{v}");
    let err = submit(&mut cl, &a, 2).await.expect_err("denied address");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert_eq!(err.metadata().get("dtm-error-code").and_then(|v| v.to_str().ok()), Some("address_denied"));
    submit(&mut cl, &b, 3).await?;

    // The ingest rate limit: a tiny bucket, then RESOURCE_EXHAUSTED with Retry-After.
    let (s, v) = c
        .admin(
            Method::PUT,
            1,
            "/api/v1/gateway/limits",
            Some(json!({"limits": {"ingest": {"per_second": 1, "burst": 2}}})),
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    let mut limited = None;
    for n in 0..20 {
        if let Err(e) = submit(&mut cl, &b, 100 + n).await {
            limited = Some(e);
            break;
        }
    }
    let e = limited.expect("the ingest limit applies to gRPC");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.metadata().get("retry-after").is_some(), "{e:?}");
    Ok(())
}
