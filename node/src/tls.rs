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

/// The HTTPS server configuration: the node certificate (reloaded from its files when they change,
/// see `ReloadingCert`), TLS 1.2 and 1.3, ALPN for h2 and HTTP/1.1.
pub fn https_server_config(cert: Arc<ReloadingCert>) -> Arc<rustls::ServerConfig> {
    let mut cfg =
        rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .with_no_client_auth()
            .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// An HTTPS acceptor like a node's, with a CA and node certificate made in `dir` (`certs::init`),
/// and that CA's PEM: for servers that exist only for a measurement or a test.
pub fn throwaway_https(dir: &Path) -> anyhow::Result<(tokio_rustls::TlsAcceptor, Vec<u8>)> {
    crate::certs::init(dir, 1, &[])?;
    let files = TlsFiles::in_dir(dir, 1);
    let ca_pem = std::fs::read(&files.ca).context("reading the CA certificate")?;
    Ok((tokio_rustls::TlsAcceptor::from(https_server_config(ReloadingCert::load(&files)?)), ca_pem))
}

/// The gRPC port's TLS configuration: the node certificate (reloaded like the HTTPS one), TLS 1.2
/// and 1.3, ALPN h2, and client certificates verified against the cluster CA but optional — the
/// node-to-node service refuses a caller that presented none, source systems present none.
pub fn grpc_server_config(cert: Arc<ReloadingCert>, ca_pem: &[u8]) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_pem)? {
        roots.add(c).context("adding the cluster CA")?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .context("client certificate verifier")?;
    let mut cfg =
        rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// The node's HTTPS certificate, replaced without a restart when its files change (F7: an operator
/// renews a certificate by writing the new files; new connections get it within
/// `CERT_RELOAD_INTERVAL`). A pair of files that does not parse, or whose key does not match,
/// is refused with an error in the log and the current certificate stays.
#[derive(Debug)]
pub struct ReloadingCert {
    files: TlsFiles,
    current: std::sync::RwLock<Loaded>,
}

#[derive(Debug, Clone)]
struct Loaded {
    key: Arc<rustls::sign::CertifiedKey>,
    /// Modification times of the certificate and key files when they were read.
    stamp: (Option<std::time::SystemTime>, Option<std::time::SystemTime>),
    not_after_unix_s: i64,
}

fn modified(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The end of a certificate's validity, in seconds since the epoch.
fn not_after_unix_s(der: &[u8]) -> anyhow::Result<i64> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| anyhow::anyhow!("parsing certificate: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

impl ReloadingCert {
    pub fn load(files: &TlsFiles) -> anyhow::Result<Arc<ReloadingCert>> {
        let loaded = Self::read(files)?;
        Ok(Arc::new(ReloadingCert { files: files.clone(), current: std::sync::RwLock::new(loaded) }))
    }

    fn read(files: &TlsFiles) -> anyhow::Result<Loaded> {
        let stamp = (modified(&files.cert), modified(&files.key));
        let cert_pem = std::fs::read(&files.cert).with_context(|| format!("reading {}", files.cert.display()))?;
        let key_pem = std::fs::read(&files.key).with_context(|| format!("reading {}", files.key.display()))?;
        let chain = certs(&cert_pem)?;
        let not_after_unix_s = not_after_unix_s(&chain[0])?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key(&key_pem)?)
            .context("the node's private key is not a supported type")?;
        let key = rustls::sign::CertifiedKey::new(chain, signing);
        key.keys_match().context("node certificate and key do not match")?;
        Ok(Loaded { key: Arc::new(key), stamp, not_after_unix_s })
    }

    /// Reloads when either file changed since it was read. Returns whether a new certificate is
    /// now served.
    pub fn reload_if_changed(&self) -> bool {
        let stamp = (modified(&self.files.cert), modified(&self.files.key));
        if self.current.read().unwrap_or_else(|p| p.into_inner()).stamp == stamp {
            return false;
        }
        match Self::read(&self.files) {
            Ok(loaded) => {
                tracing::info!(cert = %self.files.cert.display(), not_after_unix_s = loaded.not_after_unix_s, "HTTPS certificate reloaded");
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = loaded;
                true
            }
            Err(e) => {
                // Keep serving the current certificate; note the stamp so the error is logged once.
                tracing::error!(cert = %self.files.cert.display(), error = %e, "new certificate files refused; keeping the current certificate");
                self.current.write().unwrap_or_else(|p| p.into_inner()).stamp = stamp;
                false
            }
        }
    }

    /// Seconds until the served certificate expires (negative once it has).
    pub fn expires_in_s(&self) -> i64 {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        self.current.read().unwrap_or_else(|p| p.into_inner()).not_after_unix_s - now
    }

    /// Until `stop`: reloads changed files every `CERT_RELOAD_INTERVAL`, publishes the time left in
    /// `dtm_tls_certificate_expiry_seconds`, and warns daily from `CERT_EXPIRY_WARNING` before the end.
    pub async fn watch(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(crate::limits::CERT_RELOAD_INTERVAL);
        let mut last_warning: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            self.reload_if_changed();
            let left = self.expires_in_s();
            metrics::gauge!("dtm_tls_certificate_expiry_seconds").set(left as f64);
            let warn_due = last_warning.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(24 * 3600));
            if left < crate::limits::CERT_EXPIRY_WARNING.as_secs() as i64 && warn_due {
                tracing::warn!(target: "security", cert = %self.files.cert.display(), days_left = left / 86_400, "the HTTPS certificate expires soon; renew it (the node reloads new files without a restart)");
                last_warning = Some(std::time::Instant::now());
            }
        }
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).key.clone())
    }
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
