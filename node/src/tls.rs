//! TLS for the HTTPS gateway (rustls with the ring provider, TLS 1.2 and 1.3 only, no
//! renegotiation: rustls never renegotiates) and for the CLI's HTTPS client.

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;

/// Installs ring as the process-wide crypto provider. Called once at start-up; a second call (a
/// test that starts several nodes in one process) is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Where a node's certificate files are, as `dtm certs init` writes them.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn in_dir(dir: &Path, node_id: u64) -> Self {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("node-{node_id}.pem")),
            key: dir.join(format!("node-{node_id}-key.pem")),
        }
    }

    pub fn read(&self) -> anyhow::Result<dtm_cluster::NodeTls> {
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        Ok(dtm_cluster::NodeTls { ca_pem: read(&self.ca)?, cert_pem: read(&self.cert)?, key_pem: read(&self.key)? })
    }
}

fn certs(pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs =
        rustls_pemfile::certs(&mut &pem[..]).collect::<Result<Vec<_>, _>>().context("parsing certificate PEM")?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in PEM");
    Ok(certs)
}

fn key(pem: &[u8]) -> anyhow::Result<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut &pem[..]).context("parsing key PEM")?.context("no private key in PEM")
}

/// The HTTPS server configuration: the node certificate, TLS 1.2 and 1.3, ALPN for h2 and
/// HTTP/1.1.
pub fn https_server_config(tls: &dtm_cluster::NodeTls) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut cfg =
        rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .with_no_client_auth()
            .with_single_cert(certs(&tls.cert_pem)?, key(&tls.key_pem)?)
            .context("node certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// An HTTPS client that trusts only the cluster CA.
pub fn https_client(ca_pem: &[u8]) -> anyhow::Result<reqwest::Client> {
    https_client_with(ca_pem, false)
}

/// Like `https_client`; with `http1_only` it does not offer HTTP/2.
pub fn https_client_with(ca_pem: &[u8], http1_only: bool) -> anyhow::Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_pem)? {
        roots.add(c).context("adding CA certificate")?;
    }
    let mut cfg =
        rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .with_root_certificates(roots)
            .with_no_client_auth();
    cfg.alpn_protocols =
        if http1_only { vec![b"http/1.1".to_vec()] } else { vec![b"h2".to_vec(), b"http/1.1".to_vec()] };
    let builder = reqwest::Client::builder();
    let builder = if http1_only { builder.http1_only() } else { builder };
    builder
        .use_preconfigured_tls(cfg)
        .timeout(std::time::Duration::from_secs(30))
        .connect_timeout(std::time::Duration::from_secs(5))
        .build()
        .context("building HTTPS client")
}
