//! The live compliance check (S2, A1.10; `dtm compliance`, `GET /api/v1/compliance`): checks a
//! running cluster against the Circular's requirements that can be checked from outside the code,
//! and answers one entry per requirement ID with `passed` and the evidence.
//!
//! Facts about each member's configuration (retention, encryption at rest, scheduled backups) come
//! from the members' replicated performance samples (`NodeFacts`, `crate::perf`), so any node
//! sees every member's; the rest comes from the replicated tables (users, rate limits, audit
//! trail, samples) and from connecting to every member's HTTPS port with each TLS version. The
//! list, with what each check looks at, is in `docs/reports.md`.

use std::sync::Arc;
use std::time::Duration;

use dtm_cluster::performance as perf_tables;
use dtm_cluster::tables;
use dtm_model::state;
use dtm_storage::StateReader;
use serde_json::Value;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

use crate::audit_reports as trail;

/// Audit, connection-log and monitoring data are kept at least this long (F8, A1.8, C4, A5.2).
pub const RETENTION_DAYS_MIN: u32 = crate::limits::AUDIT_RETENTION_DAYS_MIN;
/// A DR drill must have passed within this many days (A1.4).
pub const DRILL_DAYS_MAX: u64 = 365;
/// Default largest age of the newest backup, when no member schedules backups.
pub const BACKUP_AGE_DEFAULT: Duration = Duration::from_secs(2 * 86_400);
/// Availability asked for (A1.3) over the last `AVAILABILITY_DAYS`.
pub const AVAILABILITY_PERCENT_MIN: f64 = 99.0;
pub const AVAILABILITY_DAYS: u64 = 30;
/// Response times asked for (P5 mean of each main channel, P6 every operation) over the last day.
pub const MEAN_RESPONSE_MS_MAX: f64 = 2_500.0;
pub const MAX_RESPONSE_MS_MAX: f64 = 30_000.0;
/// The answering node verifies the whole trail itself up to this size (about 6 s in a release
/// build, `docs/benchmarks.md`); beyond it, the nodes' own periodic passes are the evidence.
pub const VERIFY_HERE_ENTRIES_MAX: u64 = 2_000_000;
/// A TLS probe gives up after this long.
const TLS_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Users looked at (every admin and operator must have MFA).
const USERS_SCAN_MAX: usize = 100_000;

/// One requirement's verdict.
#[derive(Debug, Clone)]
pub struct Check {
    pub id: &'static str,
    pub title: &'static str,
    pub passed: bool,
    pub evidence: Vec<String>,
}

impl Check {
    fn json(&self) -> Value {
        json!({"id": self.id, "title": self.title, "passed": self.passed, "evidence": self.evidence})
    }
}

/// The report: every check, and whether all passed.
pub fn report_json(checks: &[Check], node_id: u64, applied_index: u64) -> Value {
    let failed: Vec<&str> = checks.iter().filter(|c| !c.passed).map(|c| c.id).collect();
    json!({
        "generated_at": crate::api::export::rfc3339(crate::api::now_ms()),
        "checked_by_node": node_id,
        "as_of_index": applied_index,
        "passed": failed.is_empty(),
        "failed": failed,
        "checks": checks.iter().map(Check::json).collect::<Vec<_>>(),
    })
}

// ---- TLS versions ----

/// What a server did with a TLS handshake at one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsOutcome {
    Accepted,
    Refused,
    /// Could not connect at all.
    Unreachable,
}

/// A TLS 1.0 or 1.1 ClientHello (no `supported_versions` extension, so the server cannot move to
/// 1.2 or 1.3), with common CBC suites, written by hand: rustls has no client for these versions
/// and a system OpenSSL may refuse to send them.
fn legacy_client_hello(minor: u8) -> Vec<u8> {
    let mut body = vec![0x03, minor];
    body.extend((0..32u8).map(|i| i.wrapping_mul(37).wrapping_add(minor)));
    body.push(0); // no session id
    let suites: [u16; 6] = [0xc013, 0xc014, 0xc009, 0xc00a, 0x002f, 0x0035];
    body.extend(((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend(s.to_be_bytes());
    }
    body.extend([1, 0]); // compression: null
    let mut ext = Vec::new();
    // supported_groups: x25519, secp256r1; ec_point_formats: uncompressed.
    ext.extend([0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    ext.extend([0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hs = vec![0x01];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend((hs.len() as u16).to_be_bytes());
    rec.extend(hs);
    rec
}

/// Offers TLS 1.0 (`minor` 1) or 1.1 (`minor` 2) to `addr` and reads what comes back: a
/// ServerHello is acceptance; an alert or a closed connection is refusal.
pub async fn probe_legacy(addr: &str, minor: u8) -> TlsOutcome {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|_| TlsOutcome::Unreachable)?;
        s.write_all(&legacy_client_hello(minor)).await.map_err(|_| TlsOutcome::Refused)?;
        let mut head = [0u8; 6];
        let mut got = 0;
        while got < head.len() {
            match s.read(&mut head[got..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        // Record type 0x16 (handshake) whose first message is 0x02 (ServerHello).
        Ok::<_, TlsOutcome>(if got == head.len() && head[0] == 0x16 && head[5] == 0x02 {
            TlsOutcome::Accepted
        } else {
            TlsOutcome::Refused
        })
    };
    match tokio::time::timeout(TLS_PROBE_TIMEOUT, attempt).await {
        Ok(Ok(o)) | Ok(Err(o)) => o,
        Err(_) => TlsOutcome::Refused,
    }
}

/// Accepts any certificate: the probe checks protocol versions, not identity (the node's clients
/// check identity against the cluster CA).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Completes a handshake with `addr` offering only TLS 1.2 or only TLS 1.3.
pub async fn probe_modern(addr: &str, v13: bool) -> TlsOutcome {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let version: &'static rustls::SupportedProtocolVersion =
        if v13 { &rustls::version::TLS13 } else { &rustls::version::TLS12 };
    let Ok(builder) = rustls::ClientConfig::builder_with_provider(provider.clone()).with_protocol_versions(&[version])
    else {
        return TlsOutcome::Refused;
    };
    let cfg =
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))).with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_matches(['[', ']']);
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| rustls::pki_types::ServerName::try_from("localhost").expect("a valid DNS name"));
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|_| TlsOutcome::Unreachable)?;
        let tls = connector.connect(name, tcp).await.map_err(|_| TlsOutcome::Refused)?;
        let (_, conn) = tls.get_ref();
        let wanted = if v13 { rustls::ProtocolVersion::TLSv1_3 } else { rustls::ProtocolVersion::TLSv1_2 };
        Ok::<_, TlsOutcome>(if conn.protocol_version() == Some(wanted) {
            TlsOutcome::Accepted
        } else {
            TlsOutcome::Refused
        })
    };
    match tokio::time::timeout(TLS_PROBE_TIMEOUT, attempt).await {
        Ok(Ok(o)) | Ok(Err(o)) => o,
        Err(_) => TlsOutcome::Refused,
    }
}

/// `host:port` of an HTTPS address given as a URL or as `host:port`.
pub fn host_port(http: &str) -> String {
    let s = http.trim_start_matches("https://").trim_start_matches("http://");
    s.split('/').next().unwrap_or(s).to_string()
}

/// A2.6 (TLS 1.2 and 1.3 served) and A4.5 (TLS 1.0 and 1.1 refused) on every address.
pub async fn tls_checks(members: &[(u64, String)]) -> Vec<Check> {
    let mut modern = Check {
        id: "A2.6",
        title: "All traffic over HTTPS/TLS: every node completes TLS 1.2 and TLS 1.3 handshakes",
        passed: !members.is_empty(),
        evidence: vec![],
    };
    let mut legacy = Check {
        id: "A4.5",
        title: "Secure, up-to-date protocols: every node refuses TLS 1.0 and TLS 1.1",
        passed: !members.is_empty(),
        evidence: vec![],
    };
    for (id, http) in members {
        let addr = host_port(http);
        let (t10, t11, t12, t13) = tokio::join!(
            probe_legacy(&addr, 1),
            probe_legacy(&addr, 2),
            probe_modern(&addr, false),
            probe_modern(&addr, true)
        );
        let ok12 = t12 == TlsOutcome::Accepted && t13 == TlsOutcome::Accepted;
        let ok10 = t10 == TlsOutcome::Refused && t11 == TlsOutcome::Refused;
        modern.passed &= ok12;
        legacy.passed &= ok10;
        modern.evidence.push(format!("node {id} ({addr}): TLS 1.2 {t12:?}, TLS 1.3 {t13:?}"));
        legacy.evidence.push(format!("node {id} ({addr}): TLS 1.0 {t10:?}, TLS 1.1 {t11:?}"));
    }
    vec![modern, legacy]
}

// ---- The checks on the replicated tables ----

/// Every member's latest facts (None: it has not reported any).
fn facts_of(reader: &StateReader, members: &[(u64, String)]) -> Vec<(u64, Option<state::NodeFacts>)> {
    members
        .iter()
        .map(|(id, _)| (*id, reader.get_msg::<state::NodeFacts>(&perf_tables::facts_key(*id)).ok().flatten()))
        .collect()
}

fn per_node(
    id: &'static str,
    title: &'static str,
    facts: &[(u64, Option<state::NodeFacts>)],
    verdict: impl Fn(&state::NodeFacts) -> (bool, String),
) -> Check {
    let mut c = Check { id, title, passed: !facts.is_empty(), evidence: vec![] };
    for (node, f) in facts {
        match f {
            None => {
                c.passed = false;
                c.evidence.push(format!("node {node}: has reported no facts yet (no performance sample)"));
            }
            Some(f) => {
                let (ok, text) = verdict(f);
                c.passed &= ok;
                let overrides = if f.unsafe_overrides.is_empty() {
                    String::new()
                } else {
                    format!(" [unsafe overrides: {}]", f.unsafe_overrides.join(", "))
                };
                c.evidence.push(format!(
                    "node {node}: {text}{overrides} (reported {})",
                    crate::api::export::rfc3339(f.reported_at_ms)
                ));
            }
        }
    }
    c
}

/// The newest time an operation was recorded with a passing outcome in `[from_ms, now)`, with its
/// detail, and whether the walk was cut short.
fn latest(
    reader: &StateReader,
    operation: &str,
    from_ms: u64,
    ok: impl Fn(&state::AuditEvent) -> bool,
) -> (Option<(u64, Value)>, bool) {
    let filter = trail::Filter {
        from_ms: Some(from_ms),
        to_ms: None,
        operation: Some(trail::Pattern::Exact(operation.to_string())),
        ..Default::default()
    };
    let mut best: Option<(u64, Value)> = None;
    let walked = trail::walk(reader, &filter, None, trail::REPORT_SCAN_MAX, |f| {
        if ok(&f.event) && best.as_ref().is_none_or(|b| f.event.at_ms >= b.0) {
            let detail = serde_json::from_slice(&f.event.detail_json).unwrap_or(Value::Null);
            best = Some((f.event.at_ms, detail));
        }
        true
    });
    let truncated = walked.as_ref().map_or(true, |w| !w.done);
    (best, truncated)
}

/// The checks that read the tables (blocking: run on the blocking pool).
pub fn table_checks(
    reader: &StateReader,
    members: &[(u64, String)],
    rate_limits: &[(String, u32, u32)],
    now_ms: u64,
    backup_age_max: Option<Duration>,
) -> Vec<Check> {
    let mut out = Vec::new();
    let facts = facts_of(reader, members);

    // A4.3: MFA on every admin and operator.
    let mut mfa = Check {
        id: "A4.3",
        title: "MFA for administrator accounts: every enabled admin and operator user has TOTP enrolled",
        passed: true,
        evidence: vec![format!(
            "policy: roles {} get no full session without a second factor",
            dtm_cluster::security::MFA_ROLES.join(", ")
        )],
    };
    match reader.scan(tables::USER, None, USERS_SCAN_MAX) {
        Err(e) => {
            mfa.passed = false;
            mfa.evidence.push(format!("users could not be read: {e}"));
        }
        Ok(rows) => {
            let (mut privileged, mut enrolled) = (0, 0);
            for (_, v) in rows {
                let Ok(u) = <state::User as prost::Message>::decode(v.as_slice()) else { continue };
                if u.disabled_at_ms != 0 || !dtm_cluster::security::MFA_ROLES.contains(&u.role.as_str()) {
                    continue;
                }
                privileged += 1;
                if u.totp_secret.is_empty() {
                    mfa.passed = false;
                    mfa.evidence.push(format!("user `{}` ({}) has no TOTP enrolled", u.username, u.role));
                } else {
                    enrolled += 1;
                }
            }
            mfa.evidence.push(format!("{enrolled} of {privileged} admin/operator users have TOTP enrolled"));
        }
    }
    let tokens = reader.scan(tables::ADMIN_TOKEN, None, USERS_SCAN_MAX).map_or(0, |r| r.len());
    mfa.evidence.push(format!("{tokens} admin tokens (machine credentials, 256-bit secrets; not people)"));
    out.push(mfa);

    // A4.2: encryption at rest.
    out.push(per_node("A4.2", "Data at rest encrypted with AES-256 on every node", &facts, |f| {
        let ok = f.encryption_at_rest && f.encryption_algorithm == "AES-256-GCM";
        (
            ok,
            format!(
                "encryption at rest {} ({}, data key {} of {})",
                if f.encryption_at_rest { "on" } else { "OFF" },
                f.encryption_algorithm,
                f.current_data_key,
                f.data_keys
            ),
        )
    }));

    // F8: the trail verifies on this node (live) and no member's own verification failed.
    let mut f8 = Check {
        id: "F8",
        title: "System log cannot be modified: the audit chain and its signed checkpoints verify",
        passed: true,
        evidence: vec![],
    };
    let size = reader.get_msg::<state::AuditHead>(tables::AUDIT_HEAD).ok().flatten().map_or(0, |h| h.size);
    let verified_here = if size > VERIFY_HERE_ENTRIES_MAX {
        // A full pass here would outlast the request; every node's own periodic pass (below)
        // verifies the whole trail and continues from where it stopped.
        f8.evidence.push(format!(
            "the trail holds {size} entries (more than {VERIFY_HERE_ENTRIES_MAX}): not verified again here, see each node's own pass"
        ));
        None
    } else {
        // Head first, then the entries under it (entries appended meanwhile wait for the next
        // check); a snapshot installed during the pass makes it no verdict.
        let mut v = dtm_cluster::audit::Verifier::new(Default::default());
        let report = dtm_cluster::audit::verify_reader_unreplaced(reader, &mut v);
        if report.is_none() {
            f8.evidence.push(
                "a snapshot replaced this node's tables during the check: not verified here, see each node's own pass"
                    .into(),
            );
        }
        report
    };
    match verified_here {
        None => {
            let passes = facts.iter().filter_map(|(_, f)| f.as_ref()).filter(|f| f.audit_verified_entries > 0).count();
            f8.passed &= passes > 0;
        }
        Some(Ok(r)) => {
            f8.passed &= r.ok();
            f8.evidence.push(match &r.problem {
                None => format!(
                    "verified here: {} entries, {} checkpoints ({} signed), head {}",
                    r.entries, r.checkpoints, r.signed_checkpoints, r.head_hash
                ),
                Some(p) => format!("verification FAILED at entry {}: {}", p.seq, p.message),
            });
        }
        Some(Err(e)) => {
            f8.passed = false;
            f8.evidence.push(format!("the trail could not be read: {e}"));
        }
    }
    for (node, f) in &facts {
        if let Some(f) = f {
            f8.passed &= !f.audit_verification_failed;
            f8.evidence.push(match (f.audit_verification_failed, f.audit_verified_entries) {
                (true, n) => format!("node {node}: own periodic verification FAILED ({n} entries)"),
                (false, 0) => format!("node {node}: own periodic verification has not finished a pass yet"),
                (false, n) => format!("node {node}: own periodic verification ok ({n} entries)"),
            });
        }
    }
    out.push(f8);

    // A1.8 and C4: retention of the audit trail and the connection log (kept in it).
    let retention = |f: &state::NodeFacts| {
        (
            f.audit_retention_days >= RETENTION_DAYS_MIN,
            format!("audit retention {} days (minimum {RETENTION_DAYS_MIN})", f.audit_retention_days),
        )
    };
    out.push(per_node("A1.8", "Audit logs kept at least 1 year on every node", &facts, retention));
    out.push(per_node("C4", "Connection and sharing logs kept at least 1 year on every node", &facts, retention));
    let mut a52 = per_node(
        "A5.2",
        "Monitoring data kept at least 1 year on every node; alerts over e-mail or webhook besides the dashboard",
        &facts,
        |f| {
            (
                f.monitoring_retention_days >= RETENTION_DAYS_MIN,
                format!("monitoring retention {} days (minimum {RETENTION_DAYS_MIN})", f.monitoring_retention_days),
            )
        },
    );
    // The alert channels (replicated; `crate::alerts`): at least one enabled e-mail or webhook.
    let channels: Vec<state::AlertChannel> = reader
        .scan(dtm_cluster::monitoring::CHANNEL, None, dtm_cluster::monitoring::CHANNELS_MAX + 1)
        .map(|rows| rows.iter().filter_map(|(_, v)| prost::Message::decode(v.as_slice()).ok()).collect())
        .unwrap_or_default();
    let external: Vec<String> = channels
        .iter()
        .filter(|c| c.enabled && matches!(c.kind.as_str(), "email" | "webhook"))
        .map(|c| format!("{} ({})", c.id, c.kind))
        .collect();
    a52.passed &= !external.is_empty();
    a52.evidence.push(if external.is_empty() {
        "no enabled e-mail or webhook alert channel: alerts reach only the dashboard".to_string()
    } else {
        format!("alert channels besides the dashboard: {}", external.join(", "))
    });
    out.push(a52);
    out.push(per_node("F9", "Automatic audit reports are made (monthly)", &facts, |f| {
        (f.monthly_reports, format!("monthly reports {}", if f.monthly_reports { "on" } else { "OFF" }))
    }));

    // F6: a backup newer than the configured age.
    let scheduled: Vec<u64> = facts
        .iter()
        .filter_map(|(_, f)| f.as_ref())
        .filter(|f| f.backup_scheduled)
        .map(|f| f.backup_interval_s)
        .collect();
    let age_max = backup_age_max.unwrap_or_else(|| {
        scheduled.iter().min().map_or(BACKUP_AGE_DEFAULT, |s| Duration::from_secs(s.saturating_mul(2)))
    });
    let age_max_ms = age_max.as_millis() as u64;
    let newest_file =
        facts.iter().filter_map(|(n, f)| f.as_ref().map(|f| (*n, f.last_backup_at_ms))).max_by_key(|x| x.1);
    let (cli_backup, _) =
        latest(reader, "cluster.backup", now_ms.saturating_sub(age_max_ms), |e| trail::succeeded(&e.outcome));
    let mut f6 = Check {
        id: "F6",
        title: "Backups: the newest backup is newer than the configured age",
        passed: false,
        evidence: vec![],
    };
    f6.evidence.push(format!("largest age allowed: {} s", age_max.as_secs()));
    if let Some((node, at)) = newest_file.filter(|x| x.1 > 0) {
        let fresh = now_ms.saturating_sub(at) <= age_max_ms;
        f6.passed |= fresh;
        f6.evidence.push(format!("newest scheduled backup: node {node}, {}", crate::api::export::rfc3339(at)));
    } else {
        f6.evidence.push(format!(
            "scheduled backups on {} of {} nodes; none written yet",
            scheduled.len(),
            facts.len()
        ));
    }
    match cli_backup {
        Some((at, d)) => {
            f6.passed = true;
            f6.evidence.push(format!(
                "backup taken through the API at {} (log index {})",
                crate::api::export::rfc3339(at),
                d["log_index"]
            ));
        }
        None => f6.evidence.push("no backup taken through the API within that age".into()),
    }
    out.push(f6);

    // A1.4: a passing DR drill within the last year.
    let (drill, truncated) = latest(reader, "drill.report", now_ms.saturating_sub(DRILL_DAYS_MAX * 86_400_000), |e| {
        trail::succeeded(&e.outcome)
            && serde_json::from_slice::<Value>(&e.detail_json).is_ok_and(|d| d["passed"] == Value::Bool(true))
    });
    out.push(match drill {
        Some((at, d)) => Check {
            id: "A1.4",
            title: "Disaster recovery: a restore/DR drill passed within the last year",
            passed: true,
            evidence: vec![format!(
                "drill `{}` passed at {} (RTO {} ms, RPO {} records)",
                d["scenario"].as_str().unwrap_or("?"),
                crate::api::export::rfc3339(at),
                d["rto_ms"],
                d["rpo_records"]
            )],
        },
        None => Check {
            id: "A1.4",
            title: "Disaster recovery: a restore/DR drill passed within the last year",
            passed: false,
            evidence: vec![format!(
                "no passing drill recorded in the audit trail in the last {DRILL_DAYS_MAX} days{}",
                if truncated { " (the search was cut short)" } else { "" }
            )],
        },
    });

    // A2.3: rate limits configured for every operation group.
    let limited = rate_limits.iter().filter(|(_, p, b)| *p > 0 && *b > 0).count();
    out.push(Check {
        id: "A2.3",
        title: "Rate limiting configured per operation",
        passed: !rate_limits.is_empty() && limited == rate_limits.len(),
        evidence: rate_limits.iter().map(|(g, p, b)| format!("{g}: {p}/s, burst {b}")).collect(),
    });

    // A1.3, P5, P6 from the performance samples.
    let spec = |days: u64| crate::reports::Spec {
        id: "compliance".into(),
        from_ms: now_ms.saturating_sub(days * 86_400_000),
        to_ms: now_ms,
        created_by: "compliance".into(),
        created_at_ms: now_ms,
    };
    let availability = crate::reports::performance_with(reader, &spec(AVAILABILITY_DAYS), false);
    let day = crate::reports::performance_with(reader, &spec(1), false);
    out.push(match &availability {
        Ok(r) => {
            let c: Value = serde_json::from_slice(&r.content_json).unwrap_or(Value::Null);
            let s = &c["summary"];
            let pct = s["availability_percent"].as_f64();
            Check {
                id: "A1.3",
                title: "Availability at least 99 % (24/7)",
                passed: pct.is_some_and(|p| p >= AVAILABILITY_PERCENT_MIN),
                evidence: vec![format!(
                    "cluster availability {} % from {} to {} ({} samples from {} nodes)",
                    s["availability_percent"],
                    s["observed_from"].as_str().unwrap_or(""),
                    s["observed_to"].as_str().unwrap_or(""),
                    s["samples"],
                    s["nodes_reporting"]
                )],
            }
        }
        Err(e) => Check {
            id: "A1.3",
            title: "Availability at least 99 % (24/7)",
            passed: false,
            evidence: vec![e.to_string()],
        },
    });
    let rows = day
        .as_ref()
        .ok()
        .and_then(|r| serde_json::from_slice::<Value>(&r.content_json).ok())
        .map(|c| c["response_times"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default();
    let main = |ch: &str| matches!(ch, "rest" | "soap" | "grpc" | "web");
    let mut p5 = Check {
        id: "P5",
        title: "Average response time under 2.5 s for each main channel (last 24 hours)",
        passed: true,
        evidence: vec![],
    };
    let mut p6 = Check {
        id: "P6",
        title: "Maximum response time under 30 s (last 24 hours; batch file uploads excluded)",
        passed: true,
        evidence: vec![],
    };
    for r in &rows {
        let ch = r["channel"].as_str().unwrap_or("");
        let (mean, max) = (r["mean_ms"].as_f64().unwrap_or(0.0), r["max_ms"].as_f64().unwrap_or(0.0));
        if main(ch) {
            p5.passed &= mean < MEAN_RESPONSE_MS_MAX;
            p5.evidence.push(format!("{ch}: mean {mean} ms, p95 {} ms over {} requests", r["p95_ms"], r["requests"]));
            p6.passed &= max < MAX_RESPONSE_MS_MAX;
            p6.evidence.push(format!("{ch}: max {max} ms, p99 {} ms", r["p99_ms"]));
        }
    }
    if p5.evidence.is_empty() {
        p5.passed = false;
        p5.evidence.push("no request timings in the last 24 hours".into());
        p6.passed = false;
        p6.evidence.push("no request timings in the last 24 hours".into());
    }
    out.push(p5);
    out.push(p6);
    out
}

// ---- API ----

#[derive(serde::Deserialize, Default)]
pub struct ComplianceQuery {
    /// Largest age of the newest backup, seconds (default: twice the scheduled interval, else 2 days).
    backup_max_age_s: Option<u64>,
}

/// Runs every check from this node; the TLS checks connect to every member's HTTPS address.
pub async fn run_checks(state: &crate::api::AppState, q: &ComplianceQuery) -> crate::api::error::ApiResult<Value> {
    use crate::api::error::ApiError;
    state.node.linearizable_barrier().await?;
    let status = state.node.status().await;
    let members: Vec<(u64, String)> = status.members.iter().map(|m| (m.id, m.http.clone())).collect();
    let mut checks = tls_checks(&members).await;
    let limits: Vec<(String, u32, u32)> =
        state.gateway.rate_limits().iter().map(|(g, l)| (g.name().to_string(), l.per_second, l.burst)).collect();
    let reader = state.node.reader.clone();
    let age = q.backup_max_age_s.map(Duration::from_secs);
    let now = crate::api::now_ms();
    let rest = tokio::task::spawn_blocking(move || table_checks(&reader, &members, &limits, now, age))
        .await
        .map_err(ApiError::internal)?;
    checks.extend(rest);
    Ok(report_json(&checks, state.node.id, state.node.applied_index()))
}

/// `GET /api/v1/compliance` (admin, auditor): the report; 200 whether or not it passes.
pub async fn get_compliance(
    axum::extract::State(state): axum::extract::State<crate::api::AppState>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(q): axum::extract::Query<ComplianceQuery>,
) -> crate::api::error::ApiResult<axum::Json<Value>> {
    crate::api::auth::require(&state, &headers, &crate::api::auth::AUDIT_READ).await?;
    crate::audit::note_operation("compliance.check", "cluster");
    let report = run_checks(&state, &q).await?;
    crate::audit::note_detail(json!({"passed": report["passed"], "failed": report["failed"]}));
    Ok(axum::Json(report))
}

/// `GET /api/v1/compliance/facts` (admin, auditor, operator): this node's facts now, and every
/// member's as last replicated.
pub async fn get_facts(
    axum::extract::State(state): axum::extract::State<crate::api::AppState>,
    headers: axum::http::HeaderMap,
) -> crate::api::error::ApiResult<axum::Json<Value>> {
    let p = crate::api::auth::authenticate(&state, &headers).await?;
    if !crate::api::auth::AUDIT_READ.allows(&p) && !crate::api::auth::OPERATE.allows(&p) {
        return Err(crate::api::error::ApiError::forbidden("this operation needs the admin, operator or auditor role"));
    }
    crate::audit::note_operation("compliance.facts.read", "cluster");
    let status = state.node.status().await;
    let members: Vec<(u64, String)> = status.members.iter().map(|m| (m.id, m.http.clone())).collect();
    let nodes: Vec<Value> = facts_of(&state.node.reader, &members)
        .into_iter()
        .map(|(id, f)| match f {
            None => json!({"node_id": id, "reported": false}),
            Some(f) => facts_json(&f),
        })
        .collect();
    Ok(axum::Json(json!({"node_id": state.node.id, "nodes": nodes})))
}

fn facts_json(f: &state::NodeFacts) -> Value {
    json!({
        "node_id": f.node_id, "reported": true, "site": f.site, "version": f.version,
        "audit_retention_days": f.audit_retention_days, "monitoring_retention_days": f.monitoring_retention_days,
        "encryption_at_rest": f.encryption_at_rest, "encryption_algorithm": f.encryption_algorithm,
        "current_data_key": f.current_data_key, "data_keys": f.data_keys,
        "backup_scheduled": f.backup_scheduled, "backup_interval_s": f.backup_interval_s,
        "last_backup_at": if f.last_backup_at_ms > 0 { json!(crate::api::export::rfc3339(f.last_backup_at_ms)) } else { Value::Null },
        "tls_versions": f.tls_versions, "unsafe_overrides": f.unsafe_overrides, "monthly_reports": f.monthly_reports,
        "audit_verified_entries": f.audit_verified_entries, "audit_verification_failed": f.audit_verification_failed,
        "reported_at": crate::api::export::rfc3339(f.reported_at_ms),
    })
}

// ---- CLI ----

#[derive(clap::Args)]
pub struct ComplianceArgs {
    #[command(flatten)]
    pub target: crate::client::Target,
    /// Write the JSON report here (it is also printed).
    #[arg(long)]
    pub report: Option<std::path::PathBuf>,
    /// Largest age of the newest backup, in seconds.
    #[arg(long)]
    pub backup_max_age_s: Option<u64>,
}

/// `dtm compliance`: asks a node for the report, checks the TLS versions of every member from this
/// client as well (replacing the node's own view of them), writes the report, and fails when any
/// requirement fails.
pub async fn run(args: ComplianceArgs) -> anyhow::Result<()> {
    let client = crate::client::Client::from_target(&args.target)?;
    let path = match args.backup_max_age_s {
        Some(s) => format!("/api/v1/compliance?backup_max_age_s={s}"),
        None => "/api/v1/compliance".to_string(),
    };
    let mut report = client.expect(reqwest::Method::GET, &path, None).await?;
    let cluster = client.expect(reqwest::Method::GET, "/api/v1/cluster", None).await?;
    let members: Vec<(u64, String)> = cluster["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m["id"].as_u64()?, m["http"].as_str()?.to_string())))
        .collect();
    let tls = tls_checks(&members).await;
    if let Some(checks) = report["checks"].as_array_mut() {
        for c in checks.iter_mut() {
            if let Some(mine) = tls.iter().find(|t| c["id"] == t.id) {
                let mut v = mine.json();
                if let Some(e) = v["evidence"].as_array_mut() {
                    e.push(json!("checked from the client running `dtm compliance`"));
                }
                *c = v;
            }
        }
        let failed: Vec<Value> =
            checks.iter().filter(|c| c["passed"] != Value::Bool(true)).map(|c| c["id"].clone()).collect();
        report["passed"] = json!(failed.is_empty());
        report["failed"] = Value::Array(failed);
    }
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(p) = &args.report {
        std::fs::write(p, &text)?;
    }
    println!("{text}");
    if report["passed"] != Value::Bool(true) {
        anyhow::bail!("compliance check failed: {}", report["failed"]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_hello_is_well_formed() {
        let h = legacy_client_hello(2);
        assert_eq!(&h[..3], &[0x16, 0x03, 0x01]);
        let rec_len = u16::from_be_bytes([h[3], h[4]]) as usize;
        assert_eq!(rec_len, h.len() - 5);
        assert_eq!(h[5], 0x01, "ClientHello");
        let hs_len = u32::from_be_bytes([0, h[6], h[7], h[8]]) as usize;
        assert_eq!(hs_len, h.len() - 9);
        assert_eq!(&h[9..11], &[0x03, 0x02], "TLS 1.1");
        assert_eq!(host_port("https://127.0.0.1:8443/"), "127.0.0.1:8443");
        assert_eq!(host_port("127.0.0.1:8443"), "127.0.0.1:8443");
    }

    /// The legacy probe sees acceptance too: an OpenSSL server that speaks TLS 1.1 (only) answers
    /// its TLS 1.1 hello with a ServerHello and its TLS 1.0 hello with an alert. Needs the `openssl`
    /// CLI (installed by `scripts/ensure-tools.sh`).
    #[tokio::test]
    async fn legacy_probe_sees_a_server_that_accepts_tls_1_1() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let made = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("the openssl CLI (scripts/ensure-tools.sh installs it)");
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        // A free port: bound and released (openssl takes a port number, not a listener).
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let addr = format!("127.0.0.1:{port}");
        let mut server = std::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0", "-accept", &addr])
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "openssl s_server did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (t11, t10) = (probe_legacy(&addr, 2).await, probe_legacy(&addr, 1).await);
        let _ = server.kill();
        let _ = server.wait();
        assert_eq!((t11, t10), (TlsOutcome::Accepted, TlsOutcome::Refused));
    }

    /// A2.6, A4.5 against a rustls server configured like the node's (TLS 1.2 and 1.3 only).
    #[tokio::test]
    async fn tls_probes_tell_accepted_from_refused() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let cfg =
            rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .with_no_client_auth()
                .with_single_cert(vec![cert.cert.der().clone()], key)
                .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let a = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = a.accept(s).await {
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        assert_eq!(probe_legacy(&addr, 1).await, TlsOutcome::Refused);
        assert_eq!(probe_legacy(&addr, 2).await, TlsOutcome::Refused);
        assert_eq!(probe_modern(&addr, false).await, TlsOutcome::Accepted);
        assert_eq!(probe_modern(&addr, true).await, TlsOutcome::Accepted);
        assert_eq!(probe_modern("127.0.0.1:1", true).await, TlsOutcome::Unreachable);
    }
}
