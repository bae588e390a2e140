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
    /// Group commit: most records in one log entry.
    #[arg(long, env = "DTM_GROUP_COMMIT_RECORDS_MAX")]
    pub group_commit_records_max: Option<usize>,
    /// Group commit: batches in flight at once from this node.
    #[arg(long, env = "DTM_GROUP_COMMIT_IN_FLIGHT_MAX")]
    pub group_commit_in_flight_max: Option<usize>,
    /// Group commit: microseconds a lone submission waits for company while batches are in flight.
    #[arg(long, env = "DTM_GROUP_COMMIT_LINGER_US")]
    pub group_commit_linger_us: Option<u64>,
    /// Requests of one source system in progress at once on this node (validation and commit);
    /// more are answered 429 with Retry-After, so one flooding source cannot starve the others.
    #[arg(long, env = "DTM_SOURCE_QUEUE_DEPTH")]
    pub source_queue_depth: Option<usize>,
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
    #[serde(default)]
    group_commit: FileGroupCommit,
    #[serde(default)]
    pipeline: FilePipeline,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FilePipeline {
    source_queue_depth: Option<usize>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileGroupCommit {
    records_max: Option<usize>,
    in_flight_max: Option<usize>,
    linger_us: Option<u64>,
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
    };
    let g = dtm_cluster::GroupCommitOptions::default();
    let group_commit = dtm_cluster::GroupCommitOptions {
        records_max: args.group_commit_records_max.or(file.group_commit.records_max).unwrap_or(g.records_max),
        in_flight_max: args.group_commit_in_flight_max.or(file.group_commit.in_flight_max).unwrap_or(g.in_flight_max),
        linger: args
            .group_commit_linger_us
            .or(file.group_commit.linger_us)
            .map(std::time::Duration::from_micros)
            .unwrap_or(g.linger),
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
        group_commit,
        pipeline,
    };
    Ok((opts, http_addr, grpc_addr))
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
        assert!(!opts.bootstrap);
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
