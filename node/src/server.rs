//! Runs one node: the Raft member (`dtm-cluster`), its gRPC port (node-to-node, mutual TLS) and its
//! HTTPS API. Entry point `serve` takes already-bound listeners and a shutdown future, so tests
//! bind port 0 and stop nodes cleanly; every accept loop selects on the same shutdown signal.

use std::future::Future;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dtm_cluster::ClusterConfig;
use dtm_cluster::ClusterNode;
use dtm_cluster::RaftOptions;
use dtm_model::NodeInfo;
use dtm_model::state;
use dtm_storage::StoreOptions;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::api;
use crate::limits::*;
use crate::tls::TlsFiles;

/// Everything `dtm serve` needs, after flags, environment and config file are merged.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub node_id: u64,
    pub site: String,
    pub data_dir: PathBuf,
    pub tls: TlsFiles,
    pub bootstrap: bool,
    /// Addresses other nodes and clients use; default: the bound addresses.
    pub advertise_http: Option<String>,
    pub advertise_grpc: Option<String>,
    pub raft: RaftOptions,
    pub store: StoreOptions,
    /// Where the master key is read from when the node starts (unless `DTM_MASTER_KEY` is set).
    pub master_key_file: PathBuf,
    pub group_commit: dtm_cluster::GroupCommitOptions,
    pub pipeline: dtm_actors::PipelineOptions,
    /// Largest real-time body run on the source actors' own tasks (`IngestStages`).
    pub pipeline_inline_bytes_max: usize,
    pub gateway: crate::gateway::GatewayOptions,
    /// F5: `[metrics]` and `[probes]` (`docs/monitoring.md`).
    pub metrics: crate::metrics::MetricsOptions,
    pub probes: crate::probes::ProbeOptions,
    /// Lockout, session lifetimes and OIDC issuers (`[identity]`, `[oidc]`).
    pub identity: crate::api::identity::IdentityOptions,
    /// Audit retention, checkpoint and verification intervals (`[audit]`).
    pub audit: crate::audit::AuditOptions,
    /// Scheduled backups (`[backup]`).
    pub backup: crate::backup::BackupOptions,
    /// Performance samples (`[performance]`).
    pub performance: crate::perf::PerfOptions,
    /// Test builds only (feature `fault-injection`, `--fault-snapshot-rpc-delay-ms`): every
    /// InstallSnapshot call this node receives waits this long first, as the last chunk of a large
    /// snapshot waits for its installation. Always `None` in a release build.
    pub fault_snapshot_rpc_delay: Option<Duration>,
}

/// Writes `contents` to `path` atomically (temp file + rename) with `mode`.
pub fn write_private(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

pub async fn serve(
    opts: ServeOptions,
    http: TcpListener,
    grpc: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let node_tls = opts.tls.read()?;
    let https_cert = crate::tls::ReloadingCert::load(&opts.tls)?;
    let https_cfg = crate::tls::https_server_config(https_cert.clone());
    crate::metrics::install(&opts.metrics); // F5: before anything records a metric
    let http_addr = http.local_addr()?;
    let grpc_addr = grpc.local_addr()?;
    let info = NodeInfo {
        http_addr: opts.advertise_http.clone().unwrap_or_else(|| http_addr.to_string()),
        grpc_addr: opts.advertise_grpc.clone().unwrap_or_else(|| grpc_addr.to_string()),
        site: opts.site.clone(),
    };
    let mut store = opts.store.clone();
    store.master_key = Some(crate::config::load_master_key(&opts.master_key_file)?);
    let node = ClusterNode::start(ClusterConfig {
        node_id: opts.node_id,
        node: info.clone(),
        data_dir: opts.data_dir.clone(),
        tls: node_tls.clone(),
        raft: opts.raft.clone(),
        store,
        group_commit: opts.group_commit.clone(),
    })
    .await
    .context("starting the Raft node")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    // Stop on a signal, or when the Raft core has stopped for good (storage failure): then the
    // process exits non-zero instead of lingering as a node that answers 503 forever.
    let fatal = Arc::new(std::sync::OnceLock::<String>::new());
    {
        let (node, fatal) = (node.clone(), fatal.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown => {}
                e = node.fatal() => {
                    tracing::error!(error = %e, "the Raft core stopped on a fatal error; the node exits");
                    let _ = fatal.set(e);
                }
            }
            let _ = stop_tx.send(true);
        });
    }

    // Set once the API state exists; the Ingest service answers UNAVAILABLE until then.
    let ingest_state = Arc::new(tokio::sync::OnceCell::new());
    let grpc_task = {
        let mut stop = stop_rx.clone();
        let svc = node.grpc_service();
        // Source systems submit over `dtm.v1.Ingest` on the same port without a client certificate;
        // `RaftService` refuses such callers itself.
        let ingest = crate::grpc_ingest::server(ingest_state.clone());
        // TLS is terminated here rather than by tonic, with the same reloading certificate as
        // HTTPS: a renewed node certificate is served on this port too without a restart.
        let grpc_tls = crate::tls::grpc_server_config(https_cert.clone(), &node_tls.ca_pem)?;
        // Deadlines per call (`GrpcDeadlines`) rather than tonic's one timeout for every call.
        let deadlines = GrpcDeadlinesLayer { fault_snapshot_delay: opts.fault_snapshot_rpc_delay.unwrap_or_default() };
        let server = tonic::transport::Server::builder()
            .http2_max_pending_accept_reset_streams(Some(GRPC_PENDING_ACCEPT_RESETS_MAX))
            .http2_keepalive_interval(Some(GRPC_PING_INTERVAL))
            .http2_keepalive_timeout(Some(GRPC_PING_TIMEOUT))
            .layer(deadlines)
            .add_service(svc)
            .add_service(ingest);
        let incoming = tls_incoming(grpc, TlsAcceptor::from(grpc_tls));
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = server.serve_with_incoming_shutdown(incoming, stopped).await {
                tracing::error!(error = %e, "gRPC server stopped");
            }
        })
    };

    let facts = serde_json::json!({
        "node_id": opts.node_id, "pid": std::process::id(), "site": opts.site,
        "http": format!("https://{}", info.http_addr), "http_addr": info.http_addr, "grpc_addr": info.grpc_addr,
    });
    write_private(&opts.data_dir.join("node.json"), &facts.to_string(), 0o644)?;
    crate::spool::use_dir(opts.data_dir.join("spool"));
    tracing::info!(node_id = opts.node_id, http = %info.http_addr, grpc = %info.grpc_addr, site = %opts.site, "node serving");

    if opts.bootstrap {
        let node = node.clone();
        let dir = opts.data_dir.clone();
        tokio::spawn(async move {
            if let Err(e) = bootstrap(&node, &dir).await {
                tracing::error!(error = %e, "bootstrap failed");
            }
        });
    }

    let pipeline = dtm_actors::Pipeline::start(
        Arc::new(crate::pipeline::IngestStages { inline_bytes_max: opts.pipeline_inline_bytes_max }),
        opts.pipeline.clone(),
    )
    .await
    .context("starting the source actors")?;
    tokio::spawn(sync_source_actors(node.clone(), pipeline.clone(), stop_rx.clone()));
    let gateway = Arc::new(crate::gateway::Gateway::new(opts.gateway.clone()).map_err(anyhow::Error::msg)?);
    tokio::spawn(crate::gateway::run(gateway.clone(), node.reader.clone(), stop_rx.clone()));
    let master = crate::config::load_master_key(&opts.master_key_file)?;
    let node_key = crate::node_key::NodeKey::load_or_create(&opts.data_dir, opts.node_id, &master)?;
    crate::audit::start_signer(&node, node_key.clone(), opts.audit.checkpoint_interval);
    crate::backup::start_schedule(node.clone(), opts.backup.clone(), master.hex());
    tokio::spawn(refresh_own_address(node.clone(), stop_rx.clone()));
    crate::audit_reports::start_monthly(&node, opts.audit.monthly_reports);
    crate::perf::start(
        &node,
        crate::perf::FactsInput {
            site: opts.site.clone(),
            audit: opts.audit.clone(),
            backup: opts.backup.clone(),
            perf: opts.performance.clone(),
        },
    );
    crate::reports::start_monthly(&node, opts.audit.monthly_reports);
    crate::alerts::start(&node, opts.data_dir.clone(), Some(https_cert.clone()), &node_tls.ca_pem, stop_rx.clone()); // A5.2
    let state = api::AppState {
        gateway,
        audit: crate::audit::Sink::start(&node, Some(node_key)),
        audit_options: opts.audit.clone(),
        ..api::AppState::new(node.clone(), pipeline.clone()).with_identity(opts.identity.clone())
    };
    let events = state.identity.events.clone();
    crate::audit_watch::start(&node, opts.audit.verify_interval, move |p| {
        events.record("audit_verification_failed", &format!("audit entry {}", p.seq), &p.message)
    });
    let _ = ingest_state.set(state.clone());
    // F5: gauges sampler, live statistics, and the probes against this node's own HTTPS address.
    let sampled = (opts.data_dir.clone(), opts.metrics.sample_interval);
    crate::metrics::start_sampler(node.clone(), pipeline.clone(), sampled.0, sampled.1, stop_rx.clone());
    crate::live::start(&node, &node_tls.ca_pem);
    let own_url = format!("https://{}", info.http_addr);
    crate::probes::start(opts.probes.clone(), opts.node_id, own_url, node_tls.ca_pem.clone(), stop_rx.clone());
    tokio::spawn(https_cert.watch(stop_rx.clone()));
    serve_https(api::router(state), http, TlsAcceptor::from(https_cfg), HttpTimeouts::NODE, stop_rx.clone()).await;
    let _ = grpc_task.await;
    pipeline.shutdown().await;
    node.shutdown().await;
    if let Some(e) = fatal.get() {
        anyhow::bail!("the node stopped because its Raft core failed: {e}");
    }
    tracing::info!(node_id = opts.node_id, "node stopped");
    Ok(())
}

/// Keeps this node's addresses in the membership current while it leads (a node restored from a
/// backup starts with none; a node may have moved). Checks every few seconds; cheap when nothing
/// changed.
async fn refresh_own_address(node: Arc<ClusterNode>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        match node.refresh_own_address().await {
            Ok(true) => tracing::info!(node_id = node.id, "recorded this node's addresses in the membership"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not record this node's addresses yet"),
        }
    }
}

/// TLS connections accepted on `listener`, for tonic. Handshakes run in their own tasks (a slow
/// client holds up nobody) with a deadline; the stream ends when tonic drops it.
fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> tokio_stream::wrappers::ReceiverStream<
    Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(GRPC_HANDSHAKES_QUEUED);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let tcp = match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // tonic sets TCP_NODELAY only on connections it accepts itself. Without it, a Raft
            // answer written in two segments waits for the peer's delayed ACK (40 ms on Linux):
            // the one AppendEntries in flight per follower, and every forwarded write, stalled
            // that long now and then.
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "gRPC TLS handshake refused"),
                    Err(_) => tracing::debug!("gRPC TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Keeps this node's source supervisors equal to the registered, not removed sources (created when
/// a source is registered through any node, stopped when it is removed), and its data-encryption
/// key at the replicated rotation epoch, until shutdown.
async fn sync_source_actors(
    node: Arc<ClusterNode>,
    pipeline: dtm_actors::Pipeline<crate::pipeline::IngestStages>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(crate::limits::SOURCE_SYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let ids = match api::active_source_ids(&node.reader) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the sources to sync their actors");
                continue;
            }
        };
        if let Err(e) = pipeline.sync_sources(&ids).await {
            tracing::warn!(error = %e, "could not sync the source actors");
        }
        if let Err(e) = api::keys::catch_up(&node) {
            tracing::error!(error = %e, "could not rotate the data-encryption key");
        }
    }
}

/// Makes a fresh node the first member of a new cluster and writes the first admin token to
/// `DATA_DIR/admin-token` (0600). A node that already has state does not re-initialise; it only
/// finishes an interrupted bootstrap (no token file and no admin token in the cluster yet).
async fn bootstrap(node: &Arc<ClusterNode>, data_dir: &Path) -> anyhow::Result<()> {
    let token_file = data_dir.join("admin-token");
    if !node.bootstrap().await? {
        tracing::info!("node already has state; --bootstrap ignored");
    }
    if token_file.exists() {
        return Ok(());
    }
    node.raft
        .wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.current_leader.is_some(), "a leader after bootstrap")
        .await
        .context("no leader after bootstrap")?;
    node.linearizable_barrier().await?;
    if !node.reader.scan(dtm_cluster::tables::ADMIN_TOKEN, None, 1)?.is_empty() {
        tracing::warn!("cluster already has admin tokens; not issuing a bootstrap token");
        return Ok(());
    }
    let issued = api::auth::issue_admin_token();
    let token = state::AdminToken {
        token_id: issued.id.clone(),
        secret_sha256: issued.secret_sha256.clone(),
        created_at_ms: api::now_ms(),
        label: "bootstrap".into(),
    };
    let cmd = state::Command {
        actor: None,
        version: dtm_model::COMMAND_SET_VERSION,
        proposed_at_ms: api::now_ms(),
        origin_node: node.id,
        kind: Some(state::command::Kind::IssueAdminToken(state::IssueAdminToken { token: Some(token) })),
    };
    node.write(cmd).await?;
    write_private(&token_file, &issued.secret_text, 0o600)?;
    tracing::info!(path = %token_file.display(), "bootstrap admin token written");
    Ok(())
}

/// How long the gRPC port works on a call to `path` before answering DEADLINE_EXCEEDED: the last
/// chunk of a snapshot is answered only once the follower has installed all of it, which takes as
/// long as the state is large, so InstallSnapshot gets the leader's own deadline for it; a source's
/// `SubmitStream` may stay open `GRPC_STREAM_DEADLINE`; every other call gets `GRPC_CALL_DEADLINE`.
fn grpc_call_deadline(path: &str) -> Duration {
    if is_install_snapshot(path) {
        Duration::from_millis(dtm_cluster::limits::SNAPSHOT_RPC_DEADLINE_MS)
    } else if path.ends_with("/SubmitStream") {
        GRPC_STREAM_DEADLINE
    } else {
        GRPC_CALL_DEADLINE
    }
}

fn is_install_snapshot(path: &str) -> bool {
    path.ends_with("/InstallSnapshot")
}

/// Applies `grpc_call_deadline` to every call on the gRPC port. In test builds it can also hold
/// each InstallSnapshot call for a while first (`ServeOptions::fault_snapshot_rpc_delay`), as a
/// slow install holds the last chunk; zero otherwise.
#[derive(Clone, Copy)]
struct GrpcDeadlinesLayer {
    fault_snapshot_delay: Duration,
}

impl<S> tower::Layer<S> for GrpcDeadlinesLayer {
    type Service = GrpcDeadlines<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcDeadlines { inner, fault_snapshot_delay: self.fault_snapshot_delay }
    }
}

#[derive(Clone)]
struct GrpcDeadlines<S> {
    inner: S,
    fault_snapshot_delay: Duration,
}

impl<S, B, R> tower::Service<axum::http::Request<B>> for GrpcDeadlines<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        // The service that was polled ready serves this call; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = req.uri().path();
        let deadline = grpc_call_deadline(path);
        let delay = if is_install_snapshot(path) { self.fault_snapshot_delay } else { Duration::ZERO };
        Box::pin(async move {
            let call = async move {
                // A zero sleep still waits for the timer's next tick (about a millisecond), on
                // every Raft call: only the test-build fault sleeps.
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                inner.call(req).await
            };
            match tokio::time::timeout(deadline, call).await {
                Ok(answer) => answer,
                Err(_) => {
                    Ok(tonic::Status::deadline_exceeded(format!("the call took longer than {deadline:?}")).into_http())
                }
            }
        })
    }
}

/// How a node's HTTPS connections time out (`HttpTimeouts::NODE`; shorter ones in tests).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpTimeouts {
    /// HTTP/1.1: idle between requests, and the time to send a request head (one timer in hyper).
    pub idle: Duration,
    /// HTTP/1.1: what answers advertise in `Keep-Alive: timeout=N` (below `idle`).
    pub advertised_idle: Duration,
    /// HTTP/2: keep-alive pings, and how long an unanswered one is waited for.
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
}

impl HttpTimeouts {
    pub(crate) const NODE: HttpTimeouts = HttpTimeouts {
        idle: HTTP1_IDLE_TIMEOUT,
        advertised_idle: HTTP1_KEEP_ALIVE_ADVERTISED,
        ping_interval: HTTP2_PING_INTERVAL,
        ping_timeout: HTTP2_PING_TIMEOUT,
    };
}

/// Adds `Keep-Alive: timeout=N` to HTTP/1.1 answers that keep their connection, so a client closes
/// an idle connection before the node does instead of writing into one the node is closing.
async fn advertise_keep_alive(
    axum::extract::State(value): axum::extract::State<axum::http::HeaderValue>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let http11 = req.version() == axum::http::Version::HTTP_11;
    let mut resp = next.run(req).await;
    let closing =
        resp.headers().get(axum::http::header::CONNECTION).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    if http11 && !closing {
        resp.headers_mut().insert(axum::http::header::HeaderName::from_static("keep-alive"), value);
    }
    resp
}

pub(crate) async fn serve_https(
    router: axum::Router,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    timeouts: HttpTimeouts,
    mut stop: watch::Receiver<bool>,
) {
    let keep_alive = axum::http::HeaderValue::from_str(&format!("timeout={}", timeouts.advertised_idle.as_secs()))
        .expect("`timeout=` and digits are a valid header value");
    let router = router.layer(axum::middleware::from_fn_with_state(keep_alive, advertise_keep_alive));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections_max = crate::rlimit::connections_max(HTTP_CONNECTIONS_MAX);
    tracing::info!(connections_max, "HTTPS connections held at most");
    let connections = Arc::new(Semaphore::new(connections_max));
    loop {
        let permit = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            p = connections.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        // The peer's address, for the gateway's address rules (`axum::extract::ConnectInfo`).
        let svc = TowerToHyperService::new(tower::ServiceExt::map_request(router.clone(), {
            // One marker per connection: the audit layer counts a source's new connections.
            let seen = crate::audit::ConnectionSeen::default();
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                req.extensions_mut().insert(seen.clone());
                req
            }
        }));
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // Plain HTTP, a bad handshake or a silent client ends here, before any request is read.
            let Ok(Ok(tls)) = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await else { return };
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(timeouts.idle)
                .max_buf_size(HTTP1_BUFFER_BYTES_MAX);
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(timeouts.ping_interval)
                .keep_alive_timeout(timeouts.ping_timeout)
                .max_header_list_size(HTTP2_HEADER_LIST_BYTES_MAX);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            let _ = watcher.watch(conn.into_owned()).await;
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!("connections still open after the shutdown grace period"),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    const REQUEST: &[u8] = b"POST /r HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}";

    /// Every gRPC call has a deadline; a snapshot's may be as long as the leader waits for it,
    /// since its last chunk is answered only once the whole snapshot is installed.
    #[test]
    fn snapshot_calls_may_take_as_long_as_the_leader_waits_streams_an_hour_and_others_a_minute() {
        let snapshot = Duration::from_millis(dtm_cluster::limits::SNAPSHOT_RPC_DEADLINE_MS);
        assert_eq!(grpc_call_deadline("/dtm.raft.v1.RaftService/InstallSnapshot"), snapshot);
        assert!(snapshot >= Duration::from_secs(600), "{snapshot:?}");
        assert_eq!(grpc_call_deadline("/dtm.v1.Ingest/SubmitStream"), GRPC_STREAM_DEADLINE);
        for other in
            ["/dtm.raft.v1.RaftService/AppendEntries", "/dtm.raft.v1.RaftService/Propose", "/dtm.v1.Ingest/Submit"]
        {
            assert_eq!(grpc_call_deadline(other), GRPC_CALL_DEADLINE, "{other}");
        }
    }

    /// An HTTPS server on the node's stack with the given timeouts; its URL host:port and CA.
    async fn server(timeouts: HttpTimeouts) -> (String, Vec<u8>, watch::Sender<bool>, tempfile::TempDir) {
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let (acceptor, ca) = crate::tls::throwaway_https(dir.path()).expect("tls");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let router =
            axum::Router::new().route("/r", axum::routing::post(|| async { (axum::http::StatusCode::CREATED, "{}") }));
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(serve_https(router, listener, acceptor, timeouts, stop_rx));
        (addr, ca, stop, dir)
    }

    /// An HTTP/1.1 connection stays open while idle for less than `idle`, its answers say how long
    /// (`Keep-Alive: timeout=N`, below `idle`), and the node closes it once idle for longer. HTTP/2
    /// answers carry no such header (it is forbidden there). With the node's own timeouts a source
    /// posting once a minute keeps its connection; before, every connection idle for 10 s was closed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_http11_connection_is_kept_for_the_advertised_time_then_closed() {
        let timeouts = HttpTimeouts {
            idle: Duration::from_millis(2_500),
            advertised_idle: Duration::from_secs(2),
            ping_interval: Duration::from_secs(1),
            ping_timeout: Duration::from_secs(1),
        };
        let (addr, ca, stop, _dir) = server(timeouts).await;
        let connector = crate::bench_connections::http11_connector(&ca).expect("connector");
        let mut conn = crate::bench_connections::open(&connector, &addr).await.expect("connect");
        let mut buf = Vec::new();
        conn.write_all(REQUEST).await.expect("write");
        assert_eq!(crate::bench_connections::read_response(&mut conn, &mut buf).await, Ok(201));
        let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        assert!(head.contains("\r\nkeep-alive: timeout=2\r\n"), "{head}");

        // Idle for less than the timeout: the same connection serves the next request.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        conn.write_all(REQUEST).await.expect("write after a short idle");
        assert_eq!(crate::bench_connections::read_response(&mut conn, &mut buf).await, Ok(201));

        // Idle for longer: the node has closed it (the read sees the end of the stream).
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut conn, &mut byte)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "the idle connection is still open: {n:?}");

        let http = crate::tls::https_client(&ca).expect("client");
        let answer = http.post(format!("https://{addr}/r")).body("{}").send().await.expect("h2 post");
        assert_eq!(answer.version(), reqwest::Version::HTTP_2);
        assert_eq!(answer.status().as_u16(), 201);
        assert!(answer.headers().get("keep-alive").is_none(), "{:?}", answer.headers());
        let _ = stop.send(true);

        let node = HttpTimeouts::NODE;
        assert!(node.idle >= Duration::from_secs(60) && node.advertised_idle < node.idle, "{node:?}");
    }
}
