//! `dtm`: the one binary of the DTM cluster. `serve` runs a node; `demo` runs a local three-node
//! cluster with sample data; `certs`, `cluster` and `bench` are operator tools. Only this crate knows
//! axum and clap. A request enters at the HTTPS gateway (`api/`), goes through its source's actors
//! (`dtm-actors`, with the stages in `pipeline.rs` built on `dtm-dataset`) and is proposed through
//! `dtm-cluster`, which replicates it and applies it into `dtm-storage`.

mod alerts; // A5.2, F5: alert rules, evaluation, notifications
mod api;
mod audit;
mod audit_reports;
mod audit_verify;
mod audit_watch;
mod backup;
mod bench;
mod bench_aggregates;
mod bench_audit;
mod bench_bulkhead;
mod bench_ceilings;
mod bench_connections;
mod bench_disk;
mod bench_env;
mod bench_etcd;
mod certs;
mod client;
mod compliance;
mod config;
mod demo;
mod drill;
mod gateway;
mod grpc_ingest;
mod ingest;
mod limits;
mod live; // F5: rolling window for the dashboard and alerts
mod metrics; // F5: Prometheus /metrics
mod node_key;
mod perf;
mod pipeline;
mod probes; // F5: synthetic probes
mod receipt;
mod reports;
mod rlimit;
mod server;
mod soap;
mod spool;
mod tls;
mod web; // web-ui: server-rendered pages under /ui (issue 9)

use std::path::PathBuf;

/// jemalloc instead of glibc malloc: sled copies and frees whole tree nodes on every update; glibc's
/// allocator took about 30% of the leader's CPU under load, and mimalloc's eager purging made the
/// kernel zero fresh pages instead (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use anyhow::Context;
use clap::Parser;
use clap::Subcommand;
use reqwest::Method;
use serde_json::json;

#[derive(Parser)]
#[command(name = "dtm", version, about = "DTM: national e-transaction data cluster (Circular 12/2025/TT-BKHCN)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node.
    /// Boxed: the options are many and the other commands small (clippy::large_enum_variant).
    Serve(Box<config::ServeArgs>),
    /// Certificates for HTTPS and node-to-node mutual TLS.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Inspect and change cluster membership.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// A local cluster on 127.0.0.1 with demo sources and data, until Ctrl-C.
    Demo(demo::DemoArgs),
    /// Load generator: single-record posts at several concurrency levels, and failover time.
    Bench(bench::BenchArgs),
    /// Upload a file as a batch (format from the extension), with a progress bar and a manifest.
    Ingest(ingest::IngestArgs),
    /// Consistent, encrypted backups of a live cluster, and checking them.
    Backup {
        #[command(subcommand)]
        command: backup::BackupCommand,
    },
    /// Builds a node's data directory from a backup (a new cluster, or a new site).
    Restore(backup::RestoreArgs),
    /// A disaster-recovery drill on a live cluster: measures RTO and RPO, checks, reports.
    Drill(drill::DrillArgs),
    /// The audit trail: verify its hash chain and signed checkpoints.
    Audit {
        #[command(subcommand)]
        command: audit_verify::AuditCommand,
    },
    /// Data-encryption keys of the nodes.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Submission receipts: verify one offline against the cluster's node keys.
    Receipt {
        #[command(subcommand)]
        command: receipt::ReceiptCommand,
    },
    /// Checks a live cluster against the checkable requirements (S2, A1.10); JSON report, exit != 0
    /// when any fails.
    Compliance(compliance::ComplianceArgs),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Every node starts sealing new writes with a new data key; old data stays readable.
    Rotate {
        #[command(flatten)]
        target: client::Target,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// A CA and a certificate and key per node.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Extra host names or IPs for every node certificate.
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Leader, term and members with site, role, addresses and applied index.
    Status {
        #[command(flatten)]
        target: client::Target,
        #[arg(long)]
        json: bool,
    },
    /// Add a running, empty node as a learner; with --voter promote it once caught up.
    AddNode {
        #[command(flatten)]
        target: client::Target,
        #[arg(long)]
        id: u64,
        #[arg(long)]
        http_addr: String,
        #[arg(long)]
        grpc_addr: String,
        #[arg(long, default_value = "default")]
        site: String,
        #[arg(long)]
        voter: bool,
    },
    /// Remove a member; the cluster keeps serving.
    RemoveNode {
        #[command(flatten)]
        target: client::Target,
        #[arg(long)]
        id: u64,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DTM_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn,h2=warn,hyper=warn,tower_http=warn")
    });
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).init();
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled, so a signal that arrives during start-up is not lost (nor does it
/// kill the process with its default action).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::SignalKind;
    use tokio::signal::unix::signal;
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        match (interrupt, terminate) {
            (Ok(mut i), Ok(mut t)) => {
                tokio::select! { _ = i.recv() => {}, _ = t.recv() => {} }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Cluster { .. }) {
        // A report piped into `head` ends quietly when the reader goes away, as other command-line
        // tools do, instead of panicking on a failed print. Only for these short-lived commands:
        // a server must keep ignoring SIGPIPE (Rust's default), or a client that resets its
        // connection would kill it.
        // SAFETY: restoring the default disposition of one signal before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    tls::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            init_tracing();
            // Every connection is a descriptor: soft RLIMIT_NOFILE up to the hard limit.
            match rlimit::raise_open_files_limit() {
                Ok((before, after)) => tracing::info!(before, after, "open-files limit"),
                Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
            }
            let (opts, http_addr, grpc_addr) = config::resolve(*args)?;
            let http = tokio::net::TcpListener::bind(&http_addr)
                .await
                .with_context(|| format!("binding HTTPS on {http_addr}"))?;
            let grpc = tokio::net::TcpListener::bind(&grpc_addr)
                .await
                .with_context(|| format!("binding gRPC on {grpc_addr}"))?;
            server::serve(opts, http, grpc, shutdown_signal()).await
        }
        Command::Certs { command: CertsCommand::Init { dir, nodes, hosts } } => {
            certs::init(&dir, nodes, &hosts)?;
            println!("CA and {nodes} node certificates in {}", dir.display());
            Ok(())
        }
        Command::Cluster { command } => cluster_command(command).await,
        Command::Demo(args) => {
            init_tracing();
            demo::run(args).await
        }
        Command::Bench(args) => bench::run(args).await,
        Command::Ingest(args) => ingest::run(args).await,
        Command::Backup { command } => backup::run(command).await,
        Command::Restore(args) => backup::restore(args).await,
        Command::Drill(args) => drill::run(args).await,
        Command::Keys { command: KeysCommand::Rotate { target } } => keys_rotate(target).await,
        Command::Audit { command } => audit_verify::run(command).await,
        Command::Receipt { command } => receipt::run(command).await,
        Command::Compliance(args) => compliance::run(args).await,
    }
}

/// `dtm keys rotate`: raises the rotation epoch through one node, then waits (at most 30 s) until
/// every member reports a keyring at that epoch, and prints each node's current key.
async fn keys_rotate(target: client::Target) -> anyhow::Result<()> {
    let c = client::Client::from_target(&target)?;
    let v = c.expect(Method::POST, "/api/v1/keys/rotate", None).await?;
    let epoch = v["cluster_epoch"].as_u64().unwrap_or(0);
    let cluster = c.expect(Method::GET, "/api/v1/cluster", None).await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for m in cluster["members"].as_array().into_iter().flatten() {
        let url = format!("https://{}", m["http"].as_str().unwrap_or_default());
        let one = client::Client { nodes: vec![url.clone()], token: c.token.clone(), http: c.http.clone() };
        loop {
            let (s, k) = one.call(Method::GET, "/api/v1/keys", None).await.unwrap_or((0, serde_json::Value::Null));
            if s == 200 && k["epoch"].as_u64().unwrap_or(0) >= epoch {
                println!("node {}: key {} (keys {}), epoch {}", m["id"], k["current_key_id"], k["key_ids"], k["epoch"]);
                break;
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!("node {} ({url}) has not rotated to epoch {epoch} within 30 s", m["id"]);
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

async fn cluster_command(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status { target, json } => {
            let c = client::Client::from_target(&target)?;
            let v = c.expect(Method::GET, "/api/v1/cluster", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!("leader: {}   term: {}", v["leader_id"], v["term"]);
            println!("{:<4} {:<10} {:<8} {:<22} {:<22} {:>10}", "ID", "SITE", "ROLE", "HTTPS", "GRPC", "APPLIED");
            // Grouped by site: the unit a disaster takes out.
            let mut members: Vec<&serde_json::Value> = v["members"].as_array().into_iter().flatten().collect();
            members.sort_by_key(|m| (m["site"].as_str().unwrap_or("").to_string(), m["id"].as_u64()));
            for m in members {
                let role = match (m["voter"].as_bool().unwrap_or(false), m["catching_up"] == true) {
                    (true, false) => "voter",
                    // Started without data: a voter that does not vote until it has caught up.
                    (true, true) => "voter*",
                    (false, _) => "learner",
                };
                let leader = if m["id"] == v["leader_id"] { "*" } else { "" };
                let applied = m["applied_index"].as_u64().map(|i| i.to_string()).unwrap_or_else(|| "-".into());
                println!(
                    "{:<4} {:<10} {:<8} {:<22} {:<22} {:>10}",
                    format!("{}{leader}", m["id"]),
                    m["site"].as_str().unwrap_or(""),
                    role,
                    m["http"].as_str().unwrap_or(""),
                    m["grpc"].as_str().unwrap_or(""),
                    applied
                );
            }
            for site in v["sites"].as_array().into_iter().flatten() {
                println!(
                    "site {:<10} {} voter(s), {} learner(s), survives its loss: {}",
                    site["site"].as_str().unwrap_or(""),
                    site["voters"],
                    site["learners"],
                    if site["survives_loss"] == true { "yes" } else { "NO" }
                );
            }
            for w in v["warnings"].as_array().into_iter().flatten() {
                println!("WARNING: {}", w.as_str().unwrap_or(""));
            }
            Ok(())
        }
        ClusterCommand::AddNode { target, id, http_addr, grpc_addr, site, voter } => {
            let c = client::Client::from_target(&target)?;
            let body = json!({"id": id, "http_addr": http_addr, "grpc_addr": grpc_addr, "site": site, "voter": voter});
            let v = c.expect(Method::POST, "/api/v1/cluster/nodes", Some(&body)).await?;
            println!(
                "node {id} added as {} (commit index {})",
                if voter { "voter" } else { "learner" },
                v["commit_index"]
            );
            Ok(())
        }
        ClusterCommand::RemoveNode { target, id } => {
            let c = client::Client::from_target(&target)?;
            let v = c.expect(Method::DELETE, &format!("/api/v1/cluster/nodes/{id}"), None).await?;
            println!("node {id} removed (commit index {})", v["commit_index"]);
            Ok(())
        }
    }
}
