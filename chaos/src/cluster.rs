//! A cluster of real `dtm serve` processes for the chaos suite, like `dtm_tests::TestCluster` but
//! able to put each node in its own network namespace (`net::Network`), on its own tmpfs, with its
//! own environment (a skewed clock), and to pause nodes. Every node has a temp data dir, real TLS
//! and an address picked by the OS (port 0); a restarted node gets its old ports back. The `dtm`
//! binary is copied into the run's dir at start. Waits poll with a deadline. The HTTPS side (admin
//! calls, writes, reads) is in `client.rs`.

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use serde_json::Value;

use crate::client::https_client;
use crate::error::ChaosError;
use crate::error::Result;
use crate::limits::NODE_START_TIMEOUT_MS;
use crate::limits::NODE_STOP_TIMEOUT_MS;
use crate::limits::NODES_MAX;
use crate::limits::POLL_INTERVAL_MS;
use crate::net::Network;

/// The `dtm` binary: `DTM_BIN`, or `dtm` beside the running executable (`target/debug/chaos`) or
/// one level up (`target/debug/deps/<test>`).
pub fn dtm_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("DTM_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| ChaosError::io("locating this executable", "", e))?;
    exe.ancestors().skip(1).take(2).map(|d| d.join("dtm")).find(|p| p.is_file()).ok_or_else(|| {
        ChaosError::Options(format!(
            "no `dtm` beside {}: run `cargo build -p dtm-node --features fault-injection` or set DTM_BIN",
            exe.display()
        ))
    })
}

/// Polls `f` until it returns `Some` or `timeout_ms` passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout_ms: u64, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(ChaosError::Timeout { what: what.to_string(), waited_ms: timeout_ms });
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
}

#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    pub nodes: u64,
    /// Run every node in its own network namespace (needed for partitions).
    pub namespaces: bool,
    /// Extra environment for every node (e.g. `DTM_PLANTED_BUG`).
    pub env: Vec<(String, String)>,
    /// Extra `dtm serve` flags for every node.
    pub serve_args: Vec<String>,
    /// Put every node's data dir on its own tmpfs of this size (the disk-full fault fills it).
    pub tmpfs_mib: Option<u64>,
}

pub struct Node {
    pub id: u64,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub http_addr: String,
    pub grpc_addr: String,
    child: Mutex<Option<Child>>,
    /// Set while the process is stopped with SIGSTOP.
    paused: AtomicBool,
    /// Environment for this node only (e.g. a skewed clock), added at every (re)start.
    env: Mutex<Vec<(String, String)>>,
}

impl Node {
    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn pid(&self) -> Option<u32> {
        self.child().as_ref().map(Child::id)
    }
    pub fn url(&self) -> String {
        format!("https://{}", self.http_addr)
    }
}

pub struct Cluster {
    /// A private copy of the `dtm` binary, so that a rebuild during a long run cannot change the
    /// program under test halfway.
    pub bin: PathBuf,
    pub tls_dir: PathBuf,
    pub nodes: BTreeMap<u64, Node>,
    pub http: reqwest::Client,
    pub admin_token: String,
    opts: ClusterOptions,
    // Dropped after the processes are killed (see `Drop`), in this order.
    net: Option<Network>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `opts.nodes` nodes: node 1 bootstraps the cluster, the others join as voters.
    pub async fn start(opts: ClusterOptions) -> Result<Cluster> {
        if opts.nodes == 0 || opts.nodes > NODES_MAX {
            return Err(ChaosError::Options(format!("{} nodes: choose 1–{NODES_MAX}", opts.nodes)));
        }
        let ids: Vec<u64> = (1..=opts.nodes).collect();
        let dir = tempfile::Builder::new()
            .prefix("dtm-chaos-")
            .tempdir()
            .map_err(|e| ChaosError::io("creating the run directory", std::env::temp_dir(), e))?;
        let net = if opts.namespaces { Some(Network::create(&ids)?) } else { None };
        let tls_dir = dir.path().join("tls");
        let mut certs = vec!["certs".to_string(), "init".into(), "--dir".into(), tls_dir.display().to_string()];
        certs.extend(["--nodes".into(), opts.nodes.to_string()]);
        if let Some(n) = &net {
            let hosts: Vec<String> = ids.iter().map(|i| n.node_ip(*i).to_string()).collect();
            certs.extend(["--hosts".into(), hosts.join(",")]);
        }
        let bin = dir.path().join("dtm");
        let source = dtm_bin()?;
        std::fs::copy(&source, &bin).map_err(|e| ChaosError::io("copying the dtm binary", &source, e))?;
        let certs: Vec<&str> = certs.iter().map(String::as_str).collect();
        crate::net::run(&bin.display().to_string(), &certs)?;
        let ca_path = tls_dir.join("ca.pem");
        let ca = std::fs::read(&ca_path).map_err(|e| ChaosError::io("reading the CA", &ca_path, e))?;
        let mut c = Cluster {
            bin,
            http: https_client(&ca)?,
            tls_dir,
            nodes: BTreeMap::new(),
            admin_token: String::new(),
            opts,
            net,
            dir,
        };
        c.spawn(1, true).await?;
        let token_file = c.nodes[&1].data_dir.join("admin-token");
        c.admin_token = eventually("the bootstrap admin token", NODE_START_TIMEOUT_MS, || {
            let f = token_file.clone();
            async move { std::fs::read_to_string(f).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()) }
        })
        .await?;
        for id in ids.into_iter().skip(1) {
            c.spawn(id, false).await?;
            c.join(id).await?;
        }
        Ok(c)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn network(&self) -> Option<&Network> {
        self.net.as_ref()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    async fn spawn(&mut self, id: u64, bootstrap: bool) -> Result<()> {
        let (child, http_addr, grpc_addr) = self.start_process(id, bootstrap, None).await?;
        let node = Node {
            id,
            data_dir: self.data_dir(id),
            log: self.dir.path().join(format!("node-{id}.log")),
            http_addr,
            grpc_addr,
            child: Mutex::new(Some(child)),
            paused: AtomicBool::new(false),
            env: Mutex::new(Vec::new()),
        };
        self.nodes.insert(id, node);
        Ok(())
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    fn listen_host(&self, id: u64) -> String {
        match &self.net {
            Some(n) => n.node_ip(id).to_string(),
            None => "127.0.0.1".into(),
        }
    }

    /// Spawns `dtm serve` for node `id` and waits for it to write `node.json` (or to exit, which is
    /// an error carrying the log's tail).
    async fn start_process(
        &self,
        id: u64,
        bootstrap: bool,
        addrs: Option<(String, String)>,
    ) -> Result<(Child, String, String)> {
        let data_dir = self.data_dir(id);
        std::fs::create_dir_all(&data_dir).map_err(|e| ChaosError::io("creating a data dir", &data_dir, e))?;
        if let Some(mib) = self.opts.tmpfs_mib
            && !is_mount_point(&data_dir)
        {
            let dir = data_dir.display().to_string();
            crate::net::run("mount", &["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs", &dir])?;
        }
        let facts_path = data_dir.join("node.json");
        let _ = std::fs::remove_file(&facts_path);
        let log = self.dir.path().join(format!("node-{id}.log"));
        let host = self.listen_host(id);
        let (http, grpc) = addrs.unwrap_or_else(|| (format!("{host}:0"), format!("{host}:0")));
        let bin = &self.bin;
        let mut cmd = match self.net.as_ref().and_then(|n| n.namespace(id)) {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["serve", "--node-id", &id.to_string(), "--site", &format!("site-{id}")])
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--tls-dir")
            .arg(&self.tls_dir)
            .args(["--http-addr", &http, "--grpc-addr", &grpc])
            .args(&self.opts.serve_args)
            .envs(self.opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if let Some(n) = self.nodes.get(&id) {
            cmd.envs(n.env.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        if bootstrap {
            cmd.arg("--bootstrap");
        }
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| ChaosError::io("opening a node log", &log, e))?;
        let logf2 = logf.try_clone().map_err(|e| ChaosError::io("opening a node log", &log, e))?;
        let mut child = cmd
            .stdout(logf2)
            .stderr(logf)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| ChaosError::Node { node: id, detail: format!("spawning dtm serve: {e}") })?;
        let deadline = Instant::now() + Duration::from_millis(NODE_START_TIMEOUT_MS);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(ChaosError::Node {
                    node: id,
                    detail: format!("exited at start-up with {status}; log tail:\n{}", tail(&log, 20)),
                });
            }
            let facts: Option<Value> = std::fs::read(&facts_path).ok().and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(f) = facts {
                let http_addr = f["http_addr"].as_str().map(str::to_string);
                let grpc_addr = f["grpc_addr"].as_str().map(str::to_string);
                if let (Some(h), Some(g)) = (http_addr, grpc_addr) {
                    return Ok((child, h, g));
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ChaosError::Node {
                    node: id,
                    detail: format!("did not start in {NODE_START_TIMEOUT_MS} ms; log tail:\n{}", tail(&log, 20)),
                });
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    /// Running and not paused.
    pub fn is_up(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.child().is_some() && !n.paused.load(Ordering::SeqCst))
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.child().is_some())
    }

    pub fn is_paused(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.paused.load(Ordering::SeqCst))
    }

    /// kill -9.
    pub fn kill(&self, id: u64) {
        let Some(n) = self.nodes.get(&id) else { return };
        if let Some(mut c) = n.child().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        n.paused.store(false, Ordering::SeqCst);
    }

    /// SIGTERM and wait for a clean exit; kill -9 after `NODE_STOP_TIMEOUT_MS`.
    pub async fn terminate(&self, id: u64) -> Result<()> {
        let Some(n) = self.nodes.get(&id) else { return Ok(()) };
        self.resume(id)?;
        let Some(mut c) = n.child().take() else { return Ok(()) };
        signal(id, c.id(), libc::SIGTERM)?;
        let exited = eventually(&format!("node {id} to exit"), NODE_STOP_TIMEOUT_MS, || {
            let done = c.try_wait().ok().flatten();
            async move { done }
        })
        .await;
        if exited.is_err() {
            let _ = c.kill();
            let _ = c.wait();
        }
        exited.map(|_| ())
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing.
    pub fn pause(&self, id: u64) -> Result<()> {
        let Some(n) = self.nodes.get(&id) else { return Ok(()) };
        if let Some(pid) = n.pid() {
            signal(id, pid, libc::SIGSTOP)?;
            n.paused.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&self, id: u64) -> Result<()> {
        let Some(n) = self.nodes.get(&id) else { return Ok(()) };
        if let Some(pid) = n.pid()
            && n.paused.load(Ordering::SeqCst)
        {
            signal(id, pid, libc::SIGCONT)?;
        }
        n.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Starts a stopped node again on its old ports and data (or on an empty dir after `wipe`).
    pub async fn restart(&self, id: u64) -> Result<()> {
        let n = self.nodes.get(&id).ok_or(ChaosError::Node { node: id, detail: "no such node".into() })?;
        if n.child().is_some() {
            return Err(ChaosError::Node { node: id, detail: "restart of a running node".into() });
        }
        let (child, _, _) = self.start_process(id, false, Some((n.http_addr.clone(), n.grpc_addr.clone()))).await?;
        *n.child() = Some(child);
        Ok(())
    }

    /// Deletes a stopped node's data (the directory, or its contents when it is a mount point).
    pub fn wipe(&self, id: u64) -> Result<()> {
        let n = self.nodes.get(&id).ok_or(ChaosError::Node { node: id, detail: "no such node".into() })?;
        if n.child().is_some() {
            return Err(ChaosError::Node { node: id, detail: "stop the node before wiping it".into() });
        }
        if !is_mount_point(&n.data_dir) {
            return std::fs::remove_dir_all(&n.data_dir)
                .map_err(|e| ChaosError::io("wiping a data dir", &n.data_dir, e));
        }
        let entries =
            std::fs::read_dir(&n.data_dir).map_err(|e| ChaosError::io("wiping a data dir", &n.data_dir, e))?;
        for e in entries.flatten() {
            let p = e.path();
            let removed = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            removed.map_err(|e| ChaosError::io("wiping a data dir", &p, e))?;
        }
        Ok(())
    }

    /// Sets the environment node `id` gets at its next start (empty: none of its own).
    pub fn set_node_env(&self, id: u64, env: Vec<(String, String)>) {
        if let Some(n) = self.nodes.get(&id) {
            *n.env.lock().unwrap_or_else(|p| p.into_inner()) = env;
        }
    }

    pub fn node_env(&self, id: u64) -> Vec<(String, String)> {
        self.nodes.get(&id).map(|n| n.env.lock().unwrap_or_else(|p| p.into_inner()).clone()).unwrap_or_default()
    }

    /// If node `id`'s process has exited on its own, reaps it and says how it ended.
    pub fn reap(&self, id: u64) -> Option<String> {
        let n = self.nodes.get(&id)?;
        let mut child = n.child();
        let status = child.as_mut()?.try_wait().ok().flatten()?;
        *child = None;
        n.paused.store(false, Ordering::SeqCst);
        Some(status.to_string())
    }

    pub fn log(&self, id: u64) -> String {
        self.nodes.get(&id).and_then(|n| std::fs::read_to_string(&n.log).ok()).unwrap_or_default()
    }

    /// Copies the node logs next to the history, so they outlive the temp dir.
    pub fn save_logs(&self, dir: &Path) -> Result<()> {
        for n in self.nodes.values() {
            let to = dir.join(format!("node-{}.log", n.id));
            std::fs::copy(&n.log, &to).map_err(|e| ChaosError::io("saving a node log", &to, e))?;
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in self.nodes.values() {
            if let Some(mut c) = n.child().take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // Every node that was ever mounted, including one whose start failed.
        for id in 1..=self.opts.nodes {
            let dir = self.data_dir(id);
            if is_mount_point(&dir) {
                let _ = crate::net::run("umount", &["-l", &dir.display().to_string()]);
            }
        }
    }
}

/// Whether `dir` is a mount point (its device differs from its parent's).
pub fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(me), Some(Ok(parent))) = (std::fs::metadata(dir), dir.parent().map(std::fs::metadata)) else {
        return false;
    };
    me.dev() != parent.dev()
}

fn signal(node: u64, pid: u32, sig: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| ChaosError::Node { node, detail: format!("pid {pid}") })?;
    // SAFETY: signalling our own child process, which we have not reaped.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc != 0 {
        return Err(ChaosError::Node { node, detail: format!("signal {sig}: {}", std::io::Error::last_os_error()) });
    }
    Ok(())
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
