//! `dtm serve` configuration: a TOML file (`--config`), overridden by `DTM_*` environment variables,
//! overridden by flags. Safety-relevant options (Raft timing, snapshot policy, cache size) are
//! explicit and validated at start-up.

use std::path::PathBuf;

use anyhow::Context;
use anyhow::bail;
use dtm_cluster::RaftOptions;
use dtm_storage::StoreOptions;
use serde::Deserialize;

use crate::server::ServeOptions;
use crate::tls::TlsFiles;

#[derive(clap::Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML configuration file; flags and DTM_* variables override it.
    #[arg(long, env = "DTM_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "DTM_NODE_ID")]
    pub node_id: Option<u64>,
    #[arg(long, env = "DTM_SITE")]
    pub site: Option<String>,
    #[arg(long, env = "DTM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTPS listen address, host:port (port 0 picks a free port; see DATA_DIR/node.json).
    #[arg(long, env = "DTM_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// gRPC listen address (node-to-node and source ingest), host:port.
    #[arg(long, env = "DTM_GRPC_ADDR")]
    pub grpc_addr: Option<String>,
    /// Directory with ca.pem, node-<id>.pem and node-<id>-key.pem.
    #[arg(long, env = "DTM_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Make this fresh node the first member of a new cluster (ignored when it has state).
    #[arg(long)]
    pub bootstrap: bool,
    /// Address others use to reach the HTTPS API (default: the bound address).
    #[arg(long, env = "DTM_ADVERTISE_HTTP")]
    pub advertise_http: Option<String>,
    /// Address others use to reach the gRPC port (default: the bound address).
    #[arg(long, env = "DTM_ADVERTISE_GRPC")]
    pub advertise_grpc: Option<String>,
    #[arg(long, env = "DTM_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    #[arg(long, env = "DTM_ELECTION_TIMEOUT_MIN_MS")]
    pub election_timeout_min_ms: Option<u64>,
    #[arg(long, env = "DTM_ELECTION_TIMEOUT_MAX_MS")]
    pub election_timeout_max_ms: Option<u64>,
    /// Build a snapshot (and purge the log behind it) after this many entries.
    #[arg(long, env = "DTM_SNAPSHOT_AFTER_LOGS")]
    pub snapshot_after_logs: Option<u64>,
    /// Log entries kept behind a snapshot for slow followers; older ones are purged.
    #[arg(long, env = "DTM_LOGS_KEPT_AFTER_SNAPSHOT")]
    pub logs_kept_after_snapshot: Option<u64>,
    #[arg(long, env = "DTM_CACHE_CAPACITY_BYTES")]
    pub cache_capacity_bytes: Option<u64>,
    /// File holding the node's master key (64 hex digits, mode 0600), which wraps the keys that
    /// encrypt the data directory. Keep it off the data disk. Default: `TLS_DIR/master.key`. The
    /// key itself may instead be given in `DTM_MASTER_KEY`.
    #[arg(long, env = "DTM_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Group commit: most records in one log entry.
    #[arg(long, env = "DTM_GROUP_COMMIT_RECORDS_MAX")]
    pub group_commit_records_max: Option<usize>,
    /// Group commit: batches in flight at once from this node.
    #[arg(long, env = "DTM_GROUP_COMMIT_IN_FLIGHT_MAX")]
    pub group_commit_in_flight_max: Option<usize>,
    /// Group commit: microseconds a lone submission waits for company while batches are in flight.
    #[arg(long, env = "DTM_GROUP_COMMIT_LINGER_US")]
    pub group_commit_linger_us: Option<u64>,
    /// Group commit: other batches in flight from this node before a lone submission lingers.
    #[arg(long, env = "DTM_GROUP_COMMIT_LINGER_AFTER_IN_FLIGHT")]
    pub group_commit_linger_after_in_flight: Option<usize>,
    /// Requests of one source system in progress at once on this node (validation and commit);
    /// more are answered 429 with Retry-After, so one flooding source cannot starve the others.
    #[arg(long, env = "DTM_SOURCE_QUEUE_DEPTH")]
    pub source_queue_depth: Option<usize>,
    /// Largest real-time body (bytes) whose parse, validation and masking run on the source's
    /// actors' own tasks instead of the blocking pool; 0: every body goes to the pool.
    #[arg(long, env = "DTM_PIPELINE_INLINE_BYTES_MAX")]
    pub pipeline_inline_bytes_max: Option<usize>,
    /// Requests handled at once on this node; more are shed with 503 and Retry-After.
    #[arg(long, env = "DTM_REQUESTS_IN_FLIGHT_MAX")]
    pub requests_in_flight_max: Option<usize>,
    /// F5: record metrics and serve /metrics and the live statistics (`[metrics] enabled`).
    #[arg(long, env = "DTM_METRICS")]
    pub metrics: Option<bool>,
    /// F5: run the synthetic probes (`[probes] enabled`).
    #[arg(long, env = "DTM_PROBES")]
    pub probes: Option<bool>,
    /// Milliseconds between audit checkpoints when entries are pending (the leader closes and signs one).
    #[arg(long, env = "DTM_AUDIT_CHECKPOINT_INTERVAL_MS")]
    pub audit_checkpoint_interval_ms: Option<u64>,
    /// Seconds between this node's own verifications of the audit chain.
    #[arg(long, env = "DTM_AUDIT_VERIFY_INTERVAL_S")]
    pub audit_verify_interval_s: Option<u64>,
    /// Seconds between this node's performance samples (`[performance]`, docs/reports.md).
    #[arg(long, env = "DTM_PERF_SAMPLE_INTERVAL_S")]
    pub perf_sample_interval_s: Option<u64>,
    /// Test builds only (feature `fault-injection`): runs the node with an audit retention under
    /// the 365-day floor, so that `dtm compliance` can be shown to fail; the node's facts name it.
    #[cfg(feature = "fault-injection")]
    #[arg(long)]
    pub unsafe_audit_retention_days: Option<u32>,
    /// Test builds only (feature `fault-injection`): every InstallSnapshot call this node
    /// receives waits this long first, as the last chunk of a large snapshot waits for its
    /// installation.
    #[cfg(feature = "fault-injection")]
    #[arg(long)]
    pub fault_snapshot_rpc_delay_ms: Option<u64>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<u64>,
    site: Option<String>,
    data_dir: Option<PathBuf>,
    http_addr: Option<String>,
    grpc_addr: Option<String>,
    tls_dir: Option<PathBuf>,
    bootstrap: Option<bool>,
    advertise_http: Option<String>,
    advertise_grpc: Option<String>,
    #[serde(default)]
    raft: FileRaft,
    cache_capacity_bytes: Option<u64>,
    master_key_file: Option<PathBuf>,
    #[serde(default)]
    group_commit: FileGroupCommit,
    #[serde(default)]
    pipeline: FilePipeline,
    #[serde(default)]
    gateway: FileGateway,
    /// F5: metrics and who may read them, and the synthetic probes (`docs/monitoring.md`).
    #[serde(default)]
    metrics: crate::metrics::MetricsFile,
    #[serde(default)]
    probes: crate::probes::ProbesFile,
    /// Lockout and session lifetimes (`docs/security.md`).
    #[serde(default)]
    identity: crate::api::identity::IdentityFile,
    /// External OpenID Connect issuers whose bearer tokens are accepted.
    #[serde(default)]
    oidc: crate::api::identity::OidcFile,
    /// The audit trail: retention, checkpoints, verification, reports (`docs/audit.md`).
    #[serde(default)]
    audit: crate::audit::AuditFile,
    /// Scheduled backups (`docs/operations.md`, "Backup and restore").
    #[serde(default)]
    backup: crate::backup::BackupFile,
    /// Performance samples for the reports (`docs/reports.md`).
    #[serde(default)]
    performance: crate::perf::PerfFile,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FilePipeline {
    source_queue_depth: Option<usize>,
    inline_bytes_max: Option<usize>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileGroupCommit {
    records_max: Option<usize>,
    in_flight_max: Option<usize>,
    linger_us: Option<u64>,
    linger_after_in_flight: Option<usize>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileRaft {
    heartbeat_interval_ms: Option<u64>,
    election_timeout_min_ms: Option<u64>,
    election_timeout_max_ms: Option<u64>,
    snapshot_after_logs: Option<u64>,
    logs_kept_after_snapshot: Option<u64>,
}

/// The master key: `DTM_MASTER_KEY` (64 hex digits), else the key file (flag, config, or
/// `TLS_DIR/master.key`). Never logged.
pub fn load_master_key(path: &std::path::Path) -> anyhow::Result<dtm_storage::MasterKey> {
    if let Ok(text) = std::env::var("DTM_MASTER_KEY") {
        return dtm_storage::MasterKey::parse(&text).map_err(|e| anyhow::anyhow!("DTM_MASTER_KEY: {e}"));
    }
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading the master key {} (the data directory is encrypted at rest; create a key with \
             `dtm certs init`, or pass --master-key-file or DTM_MASTER_KEY)",
            path.display()
        )
    })?;
    dtm_storage::MasterKey::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Merges file and flags; returns the options and the two listen addresses.
pub fn resolve(args: ServeArgs) -> anyhow::Result<(ServeOptions, String, String)> {
    let file: FileConfig = match &args.config {
        None => FileConfig::default(),
        Some(p) => toml::from_str(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
            .with_context(|| format!("parsing {}", p.display()))?,
    };
    let node_id = args.node_id.or(file.node_id).context("--node-id is required")?;
    if node_id == 0 {
        bail!("--node-id must be a positive integer");
    }
    let data_dir = args.data_dir.or(file.data_dir).context("--data-dir is required")?;
    let tls_dir = args.tls_dir.or(file.tls_dir).context("--tls-dir is required")?;
    let http_addr = args.http_addr.or(file.http_addr).unwrap_or_else(|| "127.0.0.1:8443".into());
    let grpc_addr = args.grpc_addr.or(file.grpc_addr).unwrap_or_else(|| "127.0.0.1:8543".into());
    let d = RaftOptions::default();
    let raft = RaftOptions {
        heartbeat_interval_ms: args
            .heartbeat_interval_ms
            .or(file.raft.heartbeat_interval_ms)
            .unwrap_or(d.heartbeat_interval_ms),
        election_timeout_min_ms: args
            .election_timeout_min_ms
            .or(file.raft.election_timeout_min_ms)
            .unwrap_or(d.election_timeout_min_ms),
        election_timeout_max_ms: args
            .election_timeout_max_ms
            .or(file.raft.election_timeout_max_ms)
            .unwrap_or(d.election_timeout_max_ms),
        snapshot_after_logs: args
            .snapshot_after_logs
            .or(file.raft.snapshot_after_logs)
            .unwrap_or(d.snapshot_after_logs),
        logs_kept_after_snapshot: args
            .logs_kept_after_snapshot
            .or(file.raft.logs_kept_after_snapshot)
            .unwrap_or(d.logs_kept_after_snapshot),
    };
    if raft.heartbeat_interval_ms * 2 > raft.election_timeout_min_ms
        || raft.election_timeout_min_ms >= raft.election_timeout_max_ms
    {
        bail!("raft timing: need heartbeat_interval_ms * 2 <= election_timeout_min_ms < election_timeout_max_ms");
    }
    if raft.snapshot_after_logs == 0 {
        bail!("snapshot_after_logs must be positive");
    }
    let store = StoreOptions {
        cache_capacity_bytes: args
            .cache_capacity_bytes
            .or(file.cache_capacity_bytes)
            .unwrap_or(StoreOptions::default().cache_capacity_bytes),
        // Read when the node starts (`load_master_key`), not here: resolving options touches no secret.
        master_key: None,
    };
    let master_key_file =
        args.master_key_file.or(file.master_key_file).unwrap_or_else(|| tls_dir.join(crate::certs::MASTER_KEY_FILE));
    let g = dtm_cluster::GroupCommitOptions::default();
    let group_commit = dtm_cluster::GroupCommitOptions {
        records_max: args.group_commit_records_max.or(file.group_commit.records_max).unwrap_or(g.records_max),
        in_flight_max: args.group_commit_in_flight_max.or(file.group_commit.in_flight_max).unwrap_or(g.in_flight_max),
        linger: args
            .group_commit_linger_us
            .or(file.group_commit.linger_us)
            .map(std::time::Duration::from_micros)
            .unwrap_or(g.linger),
        linger_after_in_flight: args
            .group_commit_linger_after_in_flight
            .or(file.group_commit.linger_after_in_flight)
            .unwrap_or(g.linger_after_in_flight),
    };
    group_commit.validate().map_err(anyhow::Error::msg)?;
    let p = dtm_actors::PipelineOptions::default();
    let pipeline = dtm_actors::PipelineOptions {
        queue_depth_per_source: args
            .source_queue_depth
            .or(file.pipeline.source_queue_depth)
            .unwrap_or(p.queue_depth_per_source),
        ..p
    };
    pipeline.validate().map_err(anyhow::Error::msg)?;
    let pipeline_inline_bytes_max = args
        .pipeline_inline_bytes_max
        .or(file.pipeline.inline_bytes_max)
        .unwrap_or(crate::limits::PIPELINE_INLINE_BODY_BYTES_DEFAULT);
    if pipeline_inline_bytes_max > crate::limits::PIPELINE_INLINE_BODY_BYTES_MAX {
        anyhow::bail!(
            "pipeline inline_bytes_max is {pipeline_inline_bytes_max}; at most {} (larger bodies belong on the blocking pool)",
            crate::limits::PIPELINE_INLINE_BODY_BYTES_MAX
        );
    }
    let opts = ServeOptions {
        node_id,
        site: args.site.or(file.site).unwrap_or_else(|| "default".into()),
        tls: TlsFiles::in_dir(&tls_dir, node_id),
        data_dir,
        bootstrap: args.bootstrap || file.bootstrap.unwrap_or(false),
        advertise_http: args.advertise_http.or(file.advertise_http),
        advertise_grpc: args.advertise_grpc.or(file.advertise_grpc),
        raft,
        store,
        master_key_file,
        group_commit,
        pipeline,
        pipeline_inline_bytes_max,
        gateway: gateway_options(file.gateway, args.requests_in_flight_max)?,
        metrics: crate::metrics::resolve(file.metrics, args.metrics)?, // F5
        probes: crate::probes::resolve(file.probes, args.probes)?,
        identity: crate::api::identity::resolve(file.identity, file.oidc)?,
        backup: crate::backup::resolve(file.backup)?,
        audit: crate::audit::resolve(file.audit, args.audit_checkpoint_interval_ms, args.audit_verify_interval_s)?,
        performance: crate::perf::resolve(file.performance, args.perf_sample_interval_s)?,
        fault_snapshot_rpc_delay: None,
    };
    #[cfg(feature = "fault-injection")]
    let opts = {
        let mut opts = opts;
        if let Some(days) = args.unsafe_audit_retention_days {
            opts.audit.retention_days = days;
            opts.performance.unsafe_overrides.push(format!("unsafe_audit_retention_days={days}"));
        }
        opts.fault_snapshot_rpc_delay = args.fault_snapshot_rpc_delay_ms.map(std::time::Duration::from_millis);
        opts
    };
    Ok((opts, http_addr, grpc_addr))
}

/// `[gateway]`: the API gateway (docs/operations.md, "Gateway").
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileGateway {
    requests_in_flight_max: Option<usize>,
    trusted_proxies: Option<Vec<String>>,
    geoip_db: Option<PathBuf>,
    allowed_countries: Option<Vec<String>>,
    auth_failures_max: Option<u32>,
    auth_failure_window_s: Option<u64>,
    block_duration_s: Option<u64>,
    block_exempt: Option<Vec<String>>,
    /// `[gateway.rate_limits.<group>]` with `per_second` and `burst`.
    #[serde(default)]
    rate_limits: std::collections::BTreeMap<String, FileRateLimit>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileRateLimit {
    per_second: u32,
    burst: u32,
}

fn gateway_options(
    file: FileGateway,
    requests_in_flight_max: Option<usize>,
) -> anyhow::Result<crate::gateway::GatewayOptions> {
    use crate::gateway::ip::parse_nets;
    use crate::gateway::limiter::Group;
    use crate::gateway::limiter::RateLimit;
    let d = crate::gateway::GatewayOptions::default();
    let mut rate_limits = d.rate_limits;
    for (name, l) in file.rate_limits {
        let group = Group::from_name(&name).with_context(|| format!("gateway.rate_limits: unknown group `{name}`"))?;
        rate_limits.insert(group, RateLimit { per_second: l.per_second, burst: l.burst });
    }
    let nets = |v: Option<Vec<String>>, default: Vec<ipnet::IpNet>, what: &str| match v {
        None => Ok(default),
        Some(v) => parse_nets(&v).map_err(|e| anyhow::anyhow!("gateway.{what}: {e}")),
    };
    let opts = crate::gateway::GatewayOptions {
        requests_in_flight_max: requests_in_flight_max
            .or(file.requests_in_flight_max)
            .unwrap_or(d.requests_in_flight_max),
        rate_limits,
        trusted_proxies: nets(file.trusted_proxies, d.trusted_proxies, "trusted_proxies")?,
        geoip_db: file.geoip_db,
        allowed_countries: file.allowed_countries.unwrap_or(d.allowed_countries),
        auth_failures_max: file.auth_failures_max.unwrap_or(d.auth_failures_max),
        auth_failure_window: file.auth_failure_window_s.map_or(d.auth_failure_window, std::time::Duration::from_secs),
        block_duration: file.block_duration_s.map_or(d.block_duration, std::time::Duration::from_secs),
        block_exempt: nets(file.block_exempt, d.block_exempt, "block_exempt")?,
    };
    opts.validate().map_err(anyhow::Error::msg)?;
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(contents: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut f, contents.as_bytes()).expect("write");
        f
    }

    const CONFIG: &str = r#"
node_id = 2
site = "danang"
data_dir = "/var/lib/dtm"
tls_dir = "/etc/dtm/tls"
http_addr = "10.0.0.12:8443"
grpc_addr = "10.0.0.12:8543"

[raft]
election_timeout_min_ms = 500
election_timeout_max_ms = 900

[group_commit]
in_flight_max = 8
"#;

    #[test]
    fn flags_override_the_file_and_the_rest_comes_from_it() {
        let f = file(CONFIG);
        let args = ServeArgs {
            config: Some(f.path().to_path_buf()),
            site: Some("hue".into()),
            http_addr: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        let (opts, http, grpc) = resolve(args).expect("valid");
        assert_eq!((opts.node_id, opts.site.as_str()), (2, "hue"));
        assert_eq!((http.as_str(), grpc.as_str()), ("127.0.0.1:0", "10.0.0.12:8543"));
        assert_eq!(opts.tls.cert, PathBuf::from("/etc/dtm/tls/node-2.pem"));
        assert_eq!((opts.raft.election_timeout_min_ms, opts.raft.election_timeout_max_ms), (500, 900));
        assert_eq!(opts.raft.heartbeat_interval_ms, RaftOptions::default().heartbeat_interval_ms);
        assert_eq!(opts.group_commit.in_flight_max, 8);
        assert_eq!(opts.pipeline_inline_bytes_max, crate::limits::PIPELINE_INLINE_BODY_BYTES_DEFAULT);
        assert!(!opts.bootstrap);
    }

    #[test]
    fn every_example_configuration_in_deploy_is_accepted() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let mut files = Vec::new();
        for dir in [root.clone(), root.join("three-sites")] {
            for e in std::fs::read_dir(&dir).expect("deploy/examples") {
                let p = e.expect("entry").path();
                if p.extension().is_some_and(|x| x == "toml") {
                    files.push(p);
                }
            }
        }
        assert!(files.len() >= 9, "{files:?}");
        for f in files {
            let (opts, _, _) = resolve(ServeArgs { config: Some(f.clone()), ..Default::default() })
                .unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
            assert!(opts.node_id > 0 && !opts.site.is_empty(), "{}", f.display());
            assert!(opts.audit.retention_days >= 365, "{}", f.display());
        }
    }

    #[test]
    fn unsafe_or_unknown_settings_are_refused_at_start_up() {
        let base = |extra: &str| file(&format!("node_id = 1\ndata_dir = \"/d\"\ntls_dir = \"/t\"\n{extra}"));
        let refused = |extra: &str| {
            let f = base(extra);
            resolve(ServeArgs { config: Some(f.path().to_path_buf()), ..Default::default() }).is_err()
        };
        assert!(!refused(""), "a minimal file is fine");
        assert!(refused("[raft]\nelection_timeout_min_ms = 800\nelection_timeout_max_ms = 400"));
        assert!(refused("[raft]\nheartbeat_interval_ms = 300"), "heartbeat too close to the election timeout");
        assert!(refused("[group_commit]\nin_flight_max = 0"));
        assert!(refused("[group_commit]\nlinger_us = 1000000"));
        assert!(refused("[group_commit]\nlinger_after_in_flight = 0"));
        assert!(refused("[group_commit]\nlinger_after_in_flight = 257"));
        assert!(refused("[pipeline]\ninline_bytes_max = 1048577"), "a body of over 1 MiB is not light");
        assert!(!refused("[pipeline]\ninline_bytes_max = 0"), "0 sends every body to the pool");
        assert!(
            !refused("[group_commit]\nin_flight_max = 1"),
            "the default threshold does not refuse a pipeline of one"
        );
        assert!(refused("no_such_option = true"), "unknown keys are errors, not silently ignored");
        assert!(
            resolve(ServeArgs {
                node_id: Some(0),
                data_dir: Some("/d".into()),
                tls_dir: Some("/t".into()),
                ..Default::default()
            })
            .is_err()
        );
        assert!(resolve(ServeArgs::default()).is_err(), "node id, data dir and TLS dir are required");
    }
}

#[cfg(test)]
mod gateway_tests {
    use super::*;
    use crate::gateway::limiter::Group;

    fn gateway(toml_text: &str) -> anyhow::Result<crate::gateway::GatewayOptions> {
        let file: FileConfig = toml::from_str(toml_text)?;
        gateway_options(file.gateway, None)
    }

    #[test]
    fn the_gateway_section_is_read_and_checked() {
        let g = gateway(
            r#"
[gateway]
requests_in_flight_max = 64
trusted_proxies = ["10.0.0.0/8", "fd00::/8"]
allowed_countries = ["VN"]
auth_failures_max = 5
block_duration_s = 60

[gateway.rate_limits.ingest]
per_second = 100
burst = 200
"#,
        )
        .expect("valid");
        assert_eq!(g.requests_in_flight_max, 64);
        assert_eq!(g.trusted_proxies.len(), 2);
        assert_eq!((g.auth_failures_max, g.block_duration.as_secs()), (5, 60));
        assert_eq!((g.rate_limits[&Group::Ingest].per_second, g.rate_limits[&Group::Ingest].burst), (100, 200));
        assert_eq!(g.rate_limits[&Group::Query], crate::gateway::limiter::default_limits()[&Group::Query]);
        let defaults = gateway("").expect("defaults");
        assert_eq!(defaults.block_exempt.len(), 2, "loopback is exempt from automatic blocks by default");
        assert!(gateway("[gateway]\ntrusted_proxies = [\"10.0.0.0/40\"]").is_err());
        assert!(gateway("[gateway.rate_limits.nosuch]\nper_second = 1\nburst = 1").is_err());
        assert!(gateway("[gateway.rate_limits.query]\nper_second = 0\nburst = 1").is_err());
        assert!(gateway("[gateway]\nrequests_in_flight_max = 0").is_err());
        assert!(gateway("[gateway]\nallowed_countries = [\"Vietnam\"]").is_err());
        assert!(gateway("[gateway]\nno_such_option = 1").is_err());
        let flag = gateway_options(FileGateway::default(), Some(3)).expect("flag");
        assert_eq!(flag.requests_in_flight_max, 3, "the flag wins over the file");
    }
}
