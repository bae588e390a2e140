//! `dtm bench --reference etcd`: the same single-record load against DTM and against a 3-member
//! etcd cluster started for the run on this machine (issue 4), so results are read as ratios that
//! survive a noisy machine.
//!
//! - etcd: the Debian `etcd-server` binary (`etcd` on PATH, or `--etcd-bin`), three members on
//!   loopback, each with its own data directory under a temp dir (fsync on, etcd's default), peer
//!   traffic over mutual TLS and clients over HTTPS, with certificates from a throwaway CA made for
//!   the run. The directory is removed afterwards.
//! - Load: one function (`load`) drives both systems: per client its own `reqwest` client and
//!   HTTPS connection (HTTP/2 negotiated, or HTTP/1.1 with `--http1`), the same ~250-byte JSON
//!   record, requests round-robin over the three members, counted when answered with the
//!   system's success code (DTM `201` after a quorum fsynced and the leader applied; etcd `200`
//!   after the same). etcd gets the record as the value of `POST /v3/kv/put` (its JSON gateway,
//!   key and value base64), under a fresh key per request.
//! - Order: per level both systems run back to back, DTM first on even levels and etcd first on odd
//!   ones (and swapped again each `--reference-rounds`), so drift hits both.
//! - Output: the header (machine, build, etcd version, command), then per level a table with
//!   records/s, p50/p99/max and errors of each, and the DTM/etcd ratios.

use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use base64::Engine;
use hdrhistogram::Histogram;
use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::DistinguishedName;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::IsCa;
use rcgen::Issuer;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;
use serde_json::Value;
use serde_json::json;

use crate::bench::BenchArgs;
use crate::bench::bench_record;

const MEMBERS: usize = 3;
const START_DEADLINE: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Which system a load runs against.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum System {
    Dtm,
    Etcd,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Dtm => "DTM",
            System::Etcd => "etcd",
        }
    }
}

/// What one load level measured.
pub struct LevelResult {
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
    pub record_bytes: u64,
    pub first_errors: Vec<String>,
}

impl LevelResult {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    pub fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
    pub fn max_ms(&self) -> f64 {
        self.hist.max() as f64 / 1000.0
    }
    pub fn to_json(&self) -> Value {
        json!({"records_per_s": self.rate(), "p50_ms": self.ms(0.5), "p99_ms": self.ms(0.99), "max_ms": self.max_ms(),
               "ok": self.ok, "errors": self.errors, "record_bytes": self.record_bytes, "first_errors": self.first_errors})
    }
}

/// Where a load goes: the endpoints, the CA that signed them and the DTM credentials.
pub struct Target<'a> {
    pub system: System,
    pub urls: &'a [String],
    pub ca_pem: &'a [u8],
    pub api_key: &'a str,
    pub dataset: &'a str,
}

/// `clients` clients, each with its own HTTPS client (one connection), posting one record per
/// request round-robin over `target.urls` for `duration` after one second of warm-up. `tag` keeps
/// natural keys unique across levels and rounds.
pub async fn load(
    target: &Target<'_>,
    http1: bool,
    padding: &str,
    clients: usize,
    duration: Duration,
    tag: usize,
) -> anyhow::Result<LevelResult> {
    let warmup = Duration::from_secs(1);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    for i in 0..clients {
        let http = crate::tls::https_client_with(target.ca_pem, http1)?;
        let member = &target.urls[i % target.urls.len()];
        let (system, url) = match target.system {
            System::Dtm => (System::Dtm, format!("{member}/api/v1/datasets/{}/records", target.dataset)),
            System::Etcd => (System::Etcd, format!("{member}/v3/kv/put")),
        };
        let (key, padding) = (target.api_key.to_string(), padding.to_string());
        let client_id = tag * 1_000_000 + i;
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("static bounds");
            let (mut ok, mut errors, mut seq, mut bytes) = (0u64, 0u64, 0u64, 0u64);
            let mut first_errors = Vec::new();
            while Instant::now() < end {
                seq += 1;
                let record = serde_json::to_vec(&bench_record(client_id, seq, &padding)).unwrap_or_default();
                bytes = record.len() as u64;
                let (request, want) = match system {
                    System::Dtm => (http.post(&url).header("x-api-key", &key).body(record), 201),
                    System::Etcd => {
                        let b64 = base64::engine::general_purpose::STANDARD;
                        let body = json!({"key": b64.encode(format!("bench/{client_id}/{seq}")), "value": b64.encode(&record)});
                        (http.post(&url).body(serde_json::to_vec(&body).unwrap_or_default()), 200)
                    }
                };
                let t0 = Instant::now();
                let r = request.header(reqwest::header::CONTENT_TYPE, "application/json").send().await;
                let outcome = match r {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let body = resp.bytes().await;
                        match body {
                            Ok(_) if status == want => Ok(()),
                            Ok(b) => Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&b[..b.len().min(200)]))),
                            Err(e) => Err(format!("reading the answer: {e}")),
                        }
                    }
                    Err(e) => Err(format!("{e:#}")),
                };
                if t0 >= measure_from {
                    let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                    match outcome {
                        Ok(()) => ok += 1,
                        Err(e) => {
                            errors += 1;
                            if first_errors.len() < 3 {
                                first_errors.push(e);
                            }
                        }
                    }
                }
            }
            (hist, ok, errors, bytes, first_errors)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let (mut ok, mut errors, mut record_bytes, mut first_errors) = (0, 0, 0, Vec::new());
    for t in tasks {
        let (h, o, e, b, f) = t.await?;
        hist.add(h)?;
        ok += o;
        errors += e;
        record_bytes = record_bytes.max(b);
        if first_errors.len() < 3 {
            first_errors.extend(f);
        }
    }
    first_errors.truncate(3);
    Ok(LevelResult { ok, errors, elapsed: duration, hist, record_bytes, first_errors })
}

/// A running 3-member etcd cluster; stopped (SIGTERM, then SIGKILL) and its directory removed on
/// drop.
pub struct EtcdCluster {
    pub urls: Vec<String>,
    pub ca_pem: Vec<u8>,
    pub version: String,
    dir: PathBuf,
    children: Vec<Child>,
}

impl EtcdCluster {
    /// Starts member i with client port `client_ports[i]` and peer port `peer_ports[i]` and waits
    /// until every member reports itself healthy.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        client_ports: [u16; MEMBERS],
        peer_ports: [u16; MEMBERS],
    ) -> anyhow::Result<EtcdCluster> {
        let version_out = std::process::Command::new(bin)
            .arg("--version")
            .output()
            .with_context(|| format!("running {} --version (install Debian's etcd-server)", bin.display()))?;
        let version = String::from_utf8_lossy(&version_out.stdout).lines().take(3).collect::<Vec<_>>().join(", ");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (ca_pem, cert_pem, key_pem) = throwaway_certs()?;
        let (ca, cert, key) = (dir.join("ca.pem"), dir.join("etcd.pem"), dir.join("etcd-key.pem"));
        std::fs::write(&ca, &ca_pem)?;
        std::fs::write(&cert, &cert_pem)?;
        std::fs::write(&key, &key_pem)?;
        let client_port = |i: usize| client_ports[i];
        let peer_port = |i: usize| peer_ports[i];
        let initial: Vec<String> =
            (0..MEMBERS).map(|i| format!("m{}=https://127.0.0.1:{}", i + 1, peer_port(i))).collect();
        let mut cluster = EtcdCluster {
            urls: Vec::new(),
            ca_pem: ca_pem.into_bytes(),
            version,
            dir: dir.to_path_buf(),
            children: Vec::new(),
        };
        for i in 0..MEMBERS {
            let name = format!("m{}", i + 1);
            let client = format!("https://127.0.0.1:{}", client_port(i));
            let peer = format!("https://127.0.0.1:{}", peer_port(i));
            let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
            let child = std::process::Command::new(bin)
                .args(["--name", &name, "--data-dir"])
                .arg(dir.join(&name))
                .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "dtm-bench"])
                .arg("--cert-file")
                .arg(&cert)
                .arg("--key-file")
                .arg(&key)
                .arg("--peer-cert-file")
                .arg(&cert)
                .arg("--peer-key-file")
                .arg(&key)
                .arg("--peer-trusted-ca-file")
                .arg(&ca)
                .args(["--peer-client-cert-auth", "--logger", "zap", "--log-level", "warn"])
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            cluster.children.push(child);
            cluster.urls.push(client);
        }
        let http = crate::tls::https_client(&cluster.ca_pem)?;
        let deadline = Instant::now() + START_DEADLINE;
        for url in &cluster.urls {
            loop {
                let healthy = match http.get(format!("{url}/health")).send().await {
                    Ok(r) => r.json::<Value>().await.is_ok_and(|v| v["health"] == "true"),
                    Err(_) => false,
                };
                if healthy {
                    break;
                }
                for c in &mut cluster.children {
                    if let Ok(Some(status)) = c.try_wait() {
                        anyhow::bail!("an etcd member exited ({status}); see {}", dir.display());
                    }
                }
                anyhow::ensure!(Instant::now() < deadline, "etcd member {url} not healthy within {START_DEADLINE:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(cluster)
    }

    /// The members' pids.
    pub fn pids(&self) -> Vec<i32> {
        self.children.iter().map(|c| c.id() as i32).collect()
    }

    /// The members' data directories.
    pub fn data_dirs(&self) -> Vec<PathBuf> {
        (0..MEMBERS).map(|i| self.dir.join(format!("m{}", i + 1))).collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &self.children {
            // SAFETY: signalling our own child process by pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_GRACE;
        for c in &mut self.children {
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA and one certificate for 127.0.0.1/localhost, for both server and client use (etcd's
/// peers authenticate each other with it): (ca, cert, key) in PEM.
fn throwaway_certs() -> anyhow::Result<(String, String, String)> {
    let ca_key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "DTM benchmark throwaway CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(7);
    let ca = params.self_signed(&ca_key)?;
    let ca_pem = ca.pem();
    let issuer = Issuer::new(params, ca_key);
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "etcd-bench");
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(7);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((ca_pem, cert.pem(), key.serialize_pem()))
}

/// Finds the etcd binary: `--etcd-bin`, else `etcd` on PATH, else Debian's `/usr/bin/etcd`.
fn etcd_bin(args: &BenchArgs) -> PathBuf {
    args.etcd_bin.clone().unwrap_or_else(default_etcd_bin)
}

fn default_etcd_bin() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("etcd")).find(|c| c.is_file()))
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// The `--reference etcd` run.
pub async fn run(
    args: &BenchArgs,
    ca_pem: &[u8],
    urls: &[String],
    key: &str,
    dataset: &str,
    padding: &str,
) -> anyhow::Result<()> {
    let reference = args.reference.as_deref().unwrap_or("etcd");
    anyhow::ensure!(reference == "etcd", "unknown --reference `{reference}` (etcd)");
    let _ = crate::rlimit::raise_open_files_limit();
    let dir = std::env::temp_dir().join(format!("dtm-bench-etcd-{}", std::process::id()));
    let base = args.etcd_base_port;
    anyhow::ensure!(base <= u16::MAX - 102, "--etcd-base-port too high");
    let etcd =
        EtcdCluster::start(&etcd_bin(args), &dir, [base, base + 1, base + 2], [base + 100, base + 101, base + 102])
            .await?;
    let mut header = crate::bench_env::header();
    header.push(format!(
        "etcd: {} — 3 members on loopback, peer mTLS, client HTTPS, fsync on (default), JSON gateway POST /v3/kv/put",
        etcd.version
    ));
    header.push(format!(
        "load: definition `{}`, {} s per level after 1 s warm-up, {} per client (one connection each), round-robin over 3 members, {} round(s)",
        args.definition,
        args.duration_secs,
        if args.http1 { "HTTP/1.1" } else { "HTTP/2 (ALPN)" },
        args.reference_rounds
    ));
    for h in &header {
        println!("# {h}");
    }
    let dtm = Target { system: System::Dtm, urls, ca_pem, api_key: key, dataset };
    let reference_target =
        Target { system: System::Etcd, urls: &etcd.urls, ca_pem: &etcd.ca_pem, api_key: "", dataset: "" };
    let duration = Duration::from_secs(args.duration_secs);
    let mut levels = Vec::new();
    for (li, &clients) in args.clients.iter().enumerate() {
        let mut runs: Vec<(System, LevelResult)> = Vec::new();
        for round in 0..args.reference_rounds.max(1) {
            let order = if (li + round) % 2 == 0 { [&dtm, &reference_target] } else { [&reference_target, &dtm] };
            for t in order {
                let r = load(t, args.http1, padding, clients, duration, 100 + li * 10 + round).await?;
                runs.push((t.system, r));
            }
        }
        let order: Vec<&str> = runs.iter().map(|(s, _)| s.name()).collect();
        println!();
        println!("## {clients} clients (order: {})", order.join(", "));
        println!("| system | records/s | p50 ms | p99 ms | max ms | errors | record bytes |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for (s, r) in &runs {
            println!(
                "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |",
                s.name(),
                r.rate(),
                r.ms(0.5),
                r.ms(0.99),
                r.max_ms(),
                r.errors,
                r.record_bytes
            );
            for e in &r.first_errors {
                println!("  {} error: {e}", s.name());
            }
        }
        let mean = |sys: System, f: &dyn Fn(&LevelResult) -> f64| {
            let v: Vec<f64> = runs.iter().filter(|(s, _)| *s == sys).map(|(_, r)| f(r)).collect();
            v.iter().sum::<f64>() / v.len().max(1) as f64
        };
        let rate_ratio = mean(System::Dtm, &|r| r.rate()) / mean(System::Etcd, &|r| r.rate()).max(f64::MIN_POSITIVE);
        let p99_ratio = mean(System::Dtm, &|r| r.ms(0.99)) / mean(System::Etcd, &|r| r.ms(0.99)).max(f64::MIN_POSITIVE);
        println!("DTM/etcd: throughput ×{rate_ratio:.2}, p99 ×{p99_ratio:.2}");
        levels.push(json!({
            "clients": clients,
            "runs": runs.iter().map(|(s, r)| { let mut v = r.to_json(); v["system"] = json!(s.name()); v }).collect::<Vec<_>>(),
            "throughput_ratio": rate_ratio, "p99_ratio": p99_ratio,
        }));
    }
    let target_level = levels.iter().find(|l| l["clients"] == 500);
    if let Some(l) = target_level {
        let (t, p) = (l["throughput_ratio"].as_f64().unwrap_or(0.0), l["p99_ratio"].as_f64().unwrap_or(f64::MAX));
        println!();
        println!(
            "target at 500 clients (throughput ≥ 3× etcd's, lower p99): throughput ×{t:.2} {}, p99 ×{p:.2} {}",
            if t >= 3.0 { "met" } else { "NOT met" },
            if p < 1.0 { "met" } else { "NOT met" }
        );
    }
    let mut etcd_disk = Vec::new();
    for (pid, d) in etcd.pids().into_iter().zip(etcd.data_dirs()) {
        let bytes: u64 = crate::bench_env::disk_usage(&d, 1).values().sum();
        let (rss, hwm) = crate::bench_env::memory_kib(pid).unwrap_or_default();
        etcd_disk.push(json!({"data_dir_bytes": bytes, "rss_kib": rss, "hwm_kib": hwm}));
        println!(
            "etcd member pid {pid}: data dir {:.1} MB, VmRSS {} MiB, VmHWM {} MiB",
            bytes as f64 / 1e6,
            rss / 1024,
            hwm / 1024
        );
    }
    if let Some(out) = &args.out {
        let report = json!({"header": header, "etcd_version": etcd.version, "levels": levels, "etcd_members": etcd_disk,
                            "env": crate::bench_env::header_json()});
        std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throwaway_certificate_is_signed_by_its_ca_for_loopback() {
        let (ca, cert, key) = throwaway_certs().expect("certificates");
        assert!(ca.contains("BEGIN CERTIFICATE") && cert.contains("BEGIN CERTIFICATE") && key.contains("PRIVATE KEY"));
        // The client the benchmark uses accepts the CA.
        crate::tls::install_crypto_provider();
        crate::tls::https_client(ca.as_bytes()).expect("client trusting the throwaway CA");
    }

    /// Free loopback ports (bound, read, released: a small race with other processes).
    fn free_ports() -> [u16; MEMBERS] {
        let listeners: Vec<std::net::TcpListener> =
            (0..MEMBERS).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
        let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().expect("addr").port()).collect();
        [ports[0], ports[1], ports[2]]
    }

    /// Issue 4 (F5, the reference system): the etcd driver starts three members (Debian
    /// etcd-server, installed by scripts/ensure-tools.sh), the benchmark's load function puts
    /// records through its JSON gateway with no error, every acknowledged put is in the store, and
    /// dropping the cluster stops the members and removes their directory.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn f5_etcd_reference_cluster_takes_the_load_and_stops_cleanly() {
        crate::tls::install_crypto_provider();
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("etcd");
        let etcd = EtcdCluster::start(&default_etcd_bin(), &dir, free_ports(), free_ports())
            .await
            .expect("a 3-member etcd cluster (is Debian's etcd-server installed?)");
        assert_eq!(etcd.urls.len(), MEMBERS);
        let target = Target { system: System::Etcd, urls: &etcd.urls, ca_pem: &etcd.ca_pem, api_key: "", dataset: "" };
        let r = load(&target, false, "xx", 4, Duration::from_secs(1), 1).await.expect("load");
        assert!(r.ok > 0 && r.errors == 0, "ok {} errors {} {:?}", r.ok, r.errors, r.first_errors);
        assert!(r.record_bytes > 100, "{}", r.record_bytes);
        // Every acknowledged put is readable (warm-up puts too, so at least as many).
        let b64 = base64::engine::general_purpose::STANDARD;
        let http = crate::tls::https_client(&etcd.ca_pem).expect("client");
        let range = json!({"key": b64.encode("bench/"), "range_end": b64.encode("bench0"), "count_only": true});
        let v: Value = http
            .post(format!("{}/v3/kv/range", etcd.urls[2]))
            .json(&range)
            .send()
            .await
            .expect("range")
            .json()
            .await
            .expect("range JSON");
        let count: u64 = v["count"].as_str().and_then(|c| c.parse().ok()).unwrap_or(0);
        assert!(count >= r.ok, "{count} keys stored, {} puts acknowledged: {v}", r.ok);
        let pids = etcd.pids();
        drop(etcd);
        for pid in pids {
            // SAFETY: signal 0 only checks whether the process exists.
            let alive = unsafe { libc::kill(pid, 0) } == 0;
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"));
            assert!(!alive || zombie, "etcd member {pid} still running");
        }
        assert!(!dir.exists(), "{} not removed", dir.display());
    }
}
