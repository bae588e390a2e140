//! TLS on the API port (A2.6, A4.5, F7; issue 5), checked with an independent client (`openssl
//! s_client`): TLS 1.2 and 1.3 are served, TLS 1.0 and 1.1 handshakes fail even when the client
//! offers them with every cipher allowed; and a renewed certificate written over the node's files
//! is served without a restart, on the HTTPS port and on the gRPC port.

use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

use dtm_tests::TestCluster;
use dtm_tests::eventually;

/// Runs `openssl s_client` against `addr` with `args`; returns (handshake succeeded, output).
fn s_client(addr: &str, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-servername", "localhost"])
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // A completed handshake prints the negotiated cipher; a failed one "Cipher is (NONE)" or no
    // session at all.
    let ok = out.status.success() && text.contains("Cipher is") && !text.contains("Cipher is (NONE)");
    Ok((ok, text))
}

/// The serial number of the certificate the node serves.
fn served_serial(addr: &str) -> anyhow::Result<String> {
    let (ok, text) = s_client(addr, &["-showcerts"])?;
    anyhow::ensure!(ok, "handshake failed: {text}");
    let begin = text.find("-----BEGIN CERTIFICATE-----").ok_or_else(|| anyhow::anyhow!("no certificate"))?;
    let end = text[begin..].find("-----END CERTIFICATE-----").ok_or_else(|| anyhow::anyhow!("no certificate end"))?;
    let pem = &text[begin..begin + end + "-----END CERTIFICATE-----".len()];
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    use std::io::Write;
    child.stdin.take().ok_or_else(|| anyhow::anyhow!("stdin"))?.write_all(pem.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_tls_versions_are_refused_and_renewed_certificates_are_served_without_restart() -> anyhow::Result<()> {
    let c = TestCluster::start(1, &[]).await?;
    let addr = c.nodes[&1].http_addr.clone();

    let (ok, text) = s_client(&addr, &["-tls1_2"])?;
    assert!(ok && text.contains("TLSv1.2"), "TLS 1.2 is served: {text}");
    let (ok, text) = s_client(&addr, &["-tls1_3"])?;
    assert!(ok && text.contains("TLSv1.3"), "TLS 1.3 is served: {text}");
    for old in ["-tls1", "-tls1_1"] {
        // SECLEVEL=0 makes the client willing to use the old protocol: the refusal is the server's.
        let (ok, text) = s_client(&addr, &[old, "-cipher", "DEFAULT@SECLEVEL=0"])?;
        assert!(!ok, "{old} must be refused: {text}");
    }

    // Renew node 1's certificate with the same CA, write it over the live files, and wait for the
    // node to serve it.
    let grpc_addr = c.nodes[&1].grpc_addr.clone();
    let before = served_serial(&addr)?;
    assert_eq!(served_serial(&grpc_addr)?, before, "the gRPC port serves the same node certificate");
    let renew = tempfile::tempdir()?;
    for f in ["ca.pem", "ca-key.pem"] {
        std::fs::copy(c.tls_dir.join(f), renew.path().join(f))?;
    }
    dtm_tests::run_dtm(&["certs", "init", "--dir", &renew.path().display().to_string(), "--nodes", "1"])?;
    for f in ["node-1-key.pem", "node-1.pem"] {
        std::fs::copy(renew.path().join(f), c.tls_dir.join(f))?;
    }
    let after = eventually("the renewed certificate to be served", Duration::from_secs(30), || async {
        served_serial(&addr).ok().filter(|s| *s != before)
    })
    .await?;
    assert!(after.starts_with("serial="), "{after}");
    // The gRPC port (node-to-node and Ingest) serves the renewed certificate too.
    let grpc_after = eventually("the gRPC port to serve it", Duration::from_secs(30), || async {
        served_serial(&grpc_addr).ok().filter(|s| *s != before)
    })
    .await?;
    assert_eq!(grpc_after, after);
    assert!(c.log(1).contains("HTTPS certificate reloaded"));
    // The node kept serving throughout: the API answers over the new certificate.
    let (s, _) = c.admin(reqwest::Method::GET, 1, "/api/v1/health", None).await?;
    assert_eq!(s, 200);
    Ok(())
}
