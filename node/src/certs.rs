//! `dtm certs init`: a cluster CA and one certificate per node, used both for HTTPS and for mutual
//! TLS between nodes. Keys are written with mode 0600.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::DistinguishedName;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::IsCa;
use rcgen::Issuer;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;

const VALIDITY_DAYS: i64 = 825;

fn write_file(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(VALIDITY_DAYS);
}

/// The master key's file name in a certificates directory (the default `--master-key-file`).
pub const MASTER_KEY_FILE: &str = "master.key";

/// Creates `dir/ca.pem` (+ `ca-key.pem`) unless it exists, then `node-<id>.pem` and
/// `node-<id>-key.pem` for each id in 1..=nodes that has none yet, and `master.key` (mode 0600). `hosts` are added to every node's names, beside
/// `localhost`, `127.0.0.1`, `::1` and `dtm-node-<id>`.
pub fn init(dir: &Path, nodes: u64, hosts: &[String]) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // A master key for the nodes' encryption at rest, unless one exists. In production each node's
    // key belongs on a different medium than its data (docs/security.md).
    let master = dir.join(MASTER_KEY_FILE);
    if !master.exists() {
        let text = dtm_storage::MasterKey::generate_text().map_err(|e| anyhow::anyhow!("{e}"))?;
        write_file(&master, &text, 0o600)?;
    }
    let ca_cert_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca-key.pem");
    let issuer = if ca_cert_path.exists() && ca_key_path.exists() {
        let key = KeyPair::from_pem(&fs::read_to_string(&ca_key_path)?).context("reading CA key")?;
        Issuer::from_ca_cert_pem(&fs::read_to_string(&ca_cert_path)?, key).context("reading CA certificate")?
    } else {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "DTM cluster CA");
        dn.push(DnType::OrganizationName, "DTM");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key)?;
        write_file(&ca_cert_path, &cert.pem(), 0o644)?;
        write_file(&ca_key_path, &key.serialize_pem(), 0o600)?;
        Issuer::new(params, key)
    };
    for id in 1..=nodes {
        // Existing node certificates are kept: running nodes use them, and adding a node later
        // (`--nodes N+1`) only creates the new one.
        if dir.join(format!("node-{id}.pem")).exists() && dir.join(format!("node-{id}-key.pem")).exists() {
            continue;
        }
        let mut names =
            vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string(), format!("dtm-node-{id}")];
        names.extend(hosts.iter().cloned());
        let mut params = CertificateParams::new(names)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("dtm-node-{id}"));
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        write_file(&dir.join(format!("node-{id}.pem")), &cert.pem(), 0o644)?;
        write_file(&dir.join(format!("node-{id}-key.pem")), &key.serialize_pem(), 0o600)?;
    }
    Ok(())
}
