//! Issue 5's matrix over the three ways in — the HTTPS API, the SOAP endpoint and gRPC Ingest —
//! on a 3-node cluster (A2.5, A2.8, A4.1): no credentials → 401 / UNAUTHENTICATED; a credential of
//! the wrong role → 403 / PERMISSION_DENIED; a denied address → 403 / PERMISSION_DENIED; a key
//! revoked through one node → refused on every node and every protocol within one second.

use std::time::Duration;
use std::time::Instant;

use dtm_proto::v1 as pb;
use dtm_proto::v1::ingest_client::IngestClient;
use dtm_tests::TestCluster;
use dtm_tests::eventually;
use reqwest::Method;
use serde_json::json;
use tonic::transport::Certificate;
use tonic::transport::ClientTlsConfig;
use tonic::transport::Endpoint;

/// The answer of one protocol, reduced to what the matrix compares.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Outcome {
    Accepted,
    Unauthenticated,
    Forbidden,
    Other(u16),
}

fn from_http(status: u16, ok: u16) -> Outcome {
    match status {
        s if s == ok => Outcome::Accepted,
        401 => Outcome::Unauthenticated,
        403 => Outcome::Forbidden,
        s => Outcome::Other(s),
    }
}

enum Cred<'a> {
    None,
    ApiKey(&'a str),
    Bearer(&'a str),
}

async fn rest(c: &TestCluster, node: u64, cred: &Cred<'_>, n: u64) -> anyhow::Result<Outcome> {
    let mut req = c.http.post(format!("{}/api/v1/datasets/etx/records", c.url(node))).json(&json!({"n": n}));
    req = match cred {
        Cred::None => req,
        Cred::ApiKey(k) => req.header("x-api-key", *k),
        Cred::Bearer(t) => req.bearer_auth(t),
    };
    Ok(from_http(req.send().await?.status().as_u16(), 201))
}

async fn soap(c: &TestCluster, node: u64, cred: &Cred<'_>, n: u64) -> anyhow::Result<Outcome> {
    let envelope = format!(
        "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:dtm=\"urn:dtm:soap:v1\">\
         <soap:Body><dtm:SubmitRecords><dtm:Dataset>etx</dtm:Dataset><dtm:RecordsJson>{{\"n\": {n}}}</dtm:RecordsJson>\
         </dtm:SubmitRecords></soap:Body></soap:Envelope>"
    );
    let mut req = c
        .http
        .post(format!("{}/soap/v1", c.url(node)))
        .header("content-type", "text/xml; charset=utf-8")
        .header("soapaction", "\"urn:dtm:soap:v1#SubmitRecords\"")
        .body(envelope);
    req = match cred {
        Cred::None => req,
        Cred::ApiKey(k) => req.header("x-api-key", *k),
        Cred::Bearer(t) => req.bearer_auth(t),
    };
    Ok(from_http(req.send().await?.status().as_u16(), 200))
}

async fn grpc(c: &TestCluster, node: u64, cred: &Cred<'_>, n: u64) -> anyhow::Result<Outcome> {
    let ca = Certificate::from_pem(std::fs::read(c.tls_dir.join("ca.pem"))?);
    let ch = Endpoint::from_shared(format!("https://{}", c.nodes[&node].grpc_addr))?
        .tls_config(ClientTlsConfig::new().ca_certificate(ca).domain_name("localhost"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let mut req = tonic::Request::new(pb::SubmitRequest {
        dataset: "etx".into(),
        records_json: vec![json!({"n": n}).to_string()],
        ..Default::default()
    });
    match cred {
        Cred::None => {}
        Cred::ApiKey(k) => {
            req.metadata_mut().insert("x-api-key", k.parse()?);
        }
        Cred::Bearer(t) => {
            req.metadata_mut().insert("authorization", format!("Bearer {t}").parse()?);
        }
    }
    Ok(match IngestClient::new(ch).submit(req).await {
        Ok(_) => Outcome::Accepted,
        Err(s) if s.code() == tonic::Code::Unauthenticated => Outcome::Unauthenticated,
        Err(s) if s.code() == tonic::Code::PermissionDenied => Outcome::Forbidden,
        Err(s) => Outcome::Other(s.code() as u16),
    })
}

/// The outcome of the same submission over REST, SOAP and gRPC.
async fn all(c: &TestCluster, node: u64, cred: &Cred<'_>, n: u64) -> anyhow::Result<[Outcome; 3]> {
    Ok([rest(c, node, cred, n).await?, soap(c, node, cred, n + 1).await?, grpc(c, node, cred, n + 2).await?])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocol_refuses_the_same_credentials() -> anyhow::Result<()> {
    let c = TestCluster::start(3, &[]).await?;
    c.create_dataset(1, "etx").await?;
    let a = c.create_source(1, "a").await?;
    let b = c.create_source(1, "b").await?;
    use Outcome::*;

    for node in 1..=3 {
        assert_eq!(all(&c, node, &Cred::None, 10).await?, [Unauthenticated; 3], "no credentials, node {node}");
        assert_eq!(all(&c, node, &Cred::ApiKey(&a), 20).await?, [Accepted; 3], "a valid key, node {node}");
        // An admin token is not a source: it may not submit records.
        assert_eq!(all(&c, node, &Cred::Bearer(&c.admin_token), 30).await?, [Forbidden; 3], "wrong role, node {node}");
    }

    // Revoked through node 1: refused by every node over every protocol within one second.
    let key_id = a.split('.').nth(1).unwrap_or_default().to_string();
    let revoked_at = Instant::now();
    let (s, v) = c.admin(Method::DELETE, 1, &format!("/api/v1/sources/a/keys/{key_id}"), None).await?;
    assert_eq!(s, 200, "{v}");
    for node in 1..=3 {
        let left = Duration::from_secs(1).saturating_sub(revoked_at.elapsed());
        eventually(&format!("node {node} to refuse the revoked key on every protocol"), left, || async {
            (all(&c, node, &Cred::ApiKey(&a), 40).await.ok()? == [Unauthenticated; 3]).then_some(())
        })
        .await?;
    }
    eprintln!("revocation refused everywhere {:?} after the request", revoked_at.elapsed());

    // B's key may not be used from loopback: a denied address, on every protocol.
    let b_id = b.split('.').nth(1).unwrap_or_default().to_string();
    let rules = json!({"credentials": {b_id: {"deny": ["127.0.0.0/8", "::1"]}}});
    let (s, v) = c.admin(Method::PUT, 1, "/api/v1/gateway/ip-rules", Some(rules)).await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(all(&c, 1, &Cred::ApiKey(&b), 50).await?, [Forbidden; 3], "a denied address");
    Ok(())
}
