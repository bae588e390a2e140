//! Test harness: real `dtm serve` processes on loopback (port 0, real TLS, sled in temp dirs),
//! started, killed, wiped and restarted the way an operator would. Waits poll with a deadline.

pub mod mmdb;

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use serde_json::Value;
use serde_json::json;

/// The `dtm` binary: `DTM_BIN`, or `target/<profile>/dtm` beside the test executable.
pub fn dtm_bin() -> PathBuf {
    if let Ok(p) = std::env::var("DTM_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> -> target/debug/dtm
    let bin = exe.parent().and_then(Path::parent).map(|d| d.join("dtm")).expect("target dir");
    assert!(bin.exists(), "{} is missing: build it first (cargo build -p dtm-node)", bin.display());
    bin
}

pub fn https_client(ca_pem: &[u8]) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile_certs(ca_pem) {
        roots.add(c).expect("CA certificate");
    }
    let cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("https client")
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().expect("PEM certificates")
}

/// How often the waits below look again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Blocking form of `eventually`: polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

pub struct NodeProc {
    pub id: u64,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub http_addr: String,
    pub grpc_addr: String,
    pub site: String,
    child: std::sync::Mutex<Option<Child>>,
}

impl NodeProc {
    pub fn url(&self) -> String {
        format!("https://{}", self.http_addr)
    }
    pub fn pid(&self) -> Option<u32> {
        self.lock().as_ref().map(Child::id)
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn is_running(&self) -> bool {
        self.lock().is_some()
    }
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub tls_dir: PathBuf,
    pub nodes: BTreeMap<u64, NodeProc>,
    pub http: reqwest::Client,
    pub admin_token: String,
    /// Extra `dtm serve` flags for every node (e.g. a small snapshot threshold).
    pub serve_args: Vec<String>,
}

impl TestCluster {
    /// Starts `n` nodes: node 1 bootstraps the cluster, the others join as voters.
    pub async fn start(n: u64, serve_args: &[&str]) -> anyhow::Result<TestCluster> {
        let dir = tempfile::tempdir()?;
        let tls_dir = dir.path().join("tls");
        run_dtm(&["certs", "init", "--dir", &tls_dir.display().to_string(), "--nodes", &n.to_string()])?;
        let ca = std::fs::read(tls_dir.join("ca.pem"))?;
        let mut c = TestCluster {
            http: https_client(&ca),
            dir,
            tls_dir,
            nodes: BTreeMap::new(),
            admin_token: String::new(),
            serve_args: serve_args.iter().map(|s| s.to_string()).collect(),
        };
        c.spawn(1, true, None)?;
        let token_file = c.nodes[&1].data_dir.join("admin-token");
        c.admin_token = eventually("the bootstrap admin token", Duration::from_secs(30), || {
            let f = token_file.clone();
            async move { std::fs::read_to_string(f).ok().map(|s| s.trim().to_string()) }
        })
        .await?;
        for id in 2..=n {
            c.spawn(id, false, None)?;
            c.join(id, true).await?;
        }
        Ok(c)
    }

    /// Starts node `id` (fresh or on its existing data). `addrs` pins its ports (for restarts);
    /// `None` lets the OS pick (port 0) and reads the bound ports from `DATA_DIR/node.json`.
    pub fn spawn(&mut self, id: u64, bootstrap: bool, addrs: Option<(String, String)>) -> anyhow::Result<()> {
        let (child, http_addr, grpc_addr) = self.start_process(id, bootstrap, addrs)?;
        let node = NodeProc {
            id,
            data_dir: self.data_dir(id),
            log: self.log_path(id),
            http_addr,
            grpc_addr,
            site: format!("site-{id}"),
            child: std::sync::Mutex::new(Some(child)),
        };
        self.nodes.insert(id, node);
        Ok(())
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

    fn start_process(
        &self,
        id: u64,
        bootstrap: bool,
        addrs: Option<(String, String)>,
    ) -> anyhow::Result<(Child, String, String)> {
        let data_dir = self.data_dir(id);
        std::fs::create_dir_all(&data_dir)?;
        let _ = std::fs::remove_file(data_dir.join("node.json"));
        let log = self.log_path(id);
        let (http, grpc) = addrs.unwrap_or_else(|| ("127.0.0.1:0".into(), "127.0.0.1:0".into()));
        let site = format!("site-{id}");
        let mut cmd = Command::new(dtm_bin());
        cmd.args(["serve", "--node-id", &id.to_string(), "--site", &site])
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--tls-dir")
            .arg(&self.tls_dir)
            .args(["--http-addr", &http, "--grpc-addr", &grpc])
            .args(&self.serve_args);
        if bootstrap {
            cmd.arg("--bootstrap");
        }
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let mut child =
            cmd.stdout(logf.try_clone()?).stderr(logf).stdin(Stdio::null()).spawn().context("spawning dtm serve")?;
        let facts_path = data_dir.join("node.json");
        let mut exited = false;
        let facts: Option<Value> = wait_until(Duration::from_secs(30), || {
            exited = exited || matches!(child.try_wait(), Ok(Some(_)));
            if exited {
                return Some(None);
            }
            let v = std::fs::read(&facts_path).ok().and_then(|b| serde_json::from_slice(&b).ok())?;
            Some(Some(v))
        })
        .flatten();
        let Some(facts) = facts else {
            let _ = child.kill();
            bail!("node {id} did not start; log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        };
        let http_addr = facts["http_addr"].as_str().context("http_addr")?.to_string();
        let grpc_addr = facts["grpc_addr"].as_str().context("grpc_addr")?.to_string();
        Ok((child, http_addr, grpc_addr))
    }

    /// Adds a started node to the cluster through the API of some other node.
    pub async fn join(&self, id: u64, voter: bool) -> anyhow::Result<()> {
        let n = &self.nodes[&id];
        let body =
            json!({"id": id, "http_addr": n.http_addr, "grpc_addr": n.grpc_addr, "site": n.site, "voter": voter});
        let via =
            self.nodes.keys().find(|k| **k != id && self.nodes[k].is_running()).copied().context("no other node")?;
        let (status, v) = self.admin(reqwest::Method::POST, via, "/api/v1/cluster/nodes", Some(body)).await?;
        if status != 201 {
            bail!("joining node {id}: {status} {v}");
        }
        Ok(())
    }

    pub fn url(&self, id: u64) -> String {
        self.nodes[&id].url()
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        node: u64,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{}", self.url(node), path)).bearer_auth(&self.admin_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let v = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, v))
    }

    /// Registers a source and returns its API key.
    pub async fn create_source(&self, node: u64, id: &str) -> anyhow::Result<String> {
        let (s, v) =
            self.admin(reqwest::Method::POST, node, "/api/v1/sources", Some(json!({"id": id, "name": id}))).await?;
        anyhow::ensure!(s == 201, "create source: {s} {v}");
        Ok(v["api_key"].as_str().context("api_key")?.to_string())
    }

    pub async fn create_dataset(&self, node: u64, id: &str) -> anyhow::Result<()> {
        let body = json!({"id": id, "title": id, "schema": {"type": "object"}});
        let (s, v) = self.admin(reqwest::Method::POST, node, "/api/v1/datasets", Some(body)).await?;
        anyhow::ensure!(s == 201, "create dataset: {s} {v}");
        Ok(())
    }

    /// Posts records as a source; returns status, body and whether the answer was a replay.
    pub async fn post(
        &self,
        node: u64,
        dataset: &str,
        key: &str,
        body: &Value,
        idem: Option<&str>,
    ) -> anyhow::Result<(u16, Value, bool)> {
        let mut req = self
            .http
            .post(format!("{}/api/v1/datasets/{dataset}/records", self.url(node)))
            .header("x-api-key", key)
            .json(body);
        if let Some(k) = idem {
            req = req.header("idempotency-key", k);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let replayed = resp.headers().get("idempotent-replayed").is_some();
        Ok((status, resp.json().await.unwrap_or(Value::Null), replayed))
    }

    /// Signs a user in on `node`; returns the session cookie (`name=value`) to send as `Cookie`.
    pub async fn sign_in(&self, node: u64, username: &str, password: &str) -> anyhow::Result<String> {
        Ok(self.sign_in_with_csrf(node, username, password).await?.0)
    }

    /// Signs a user in on `node`; returns the session cookie and the CSRF token that
    /// state-changing requests of that session send as `X-CSRF-Token`.
    pub async fn sign_in_with_csrf(
        &self,
        node: u64,
        username: &str,
        password: &str,
    ) -> anyhow::Result<(String, String)> {
        let resp = self
            .http
            .post(format!("{}/api/v1/auth/login", self.url(node)))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await?;
        let cookie = session_cookie(resp.headers());
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let cookie = cookie.with_context(|| format!("signing in as {username}: {status} {body}"))?;
        Ok((cookie, body["csrf_token"].as_str().unwrap_or_default().to_string()))
    }

    /// Every record of `dataset` on `node` (all pages), as (id, data).
    pub async fn records(&self, node: u64, dataset: &str) -> anyhow::Result<Vec<(String, Value)>> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/datasets/{dataset}/records?limit=1000");
            if let Some(a) = &after {
                path.push_str(&format!("&after={a}"));
            }
            let (s, v) = self.admin(reqwest::Method::GET, node, &path, None).await?;
            anyhow::ensure!(s == 200, "reading records from node {node}: {s} {v}");
            for r in v["records"].as_array().context("records")? {
                out.push((r["id"].as_str().context("id")?.to_string(), r["data"].clone()));
            }
            match v["next"].as_str() {
                Some(n) => after = Some(n.to_string()),
                None => return Ok(out),
            }
        }
    }

    pub async fn status(&self, node: u64) -> anyhow::Result<Value> {
        let (s, v) = self.admin(reqwest::Method::GET, node, "/api/v1/cluster", None).await?;
        anyhow::ensure!(s == 200, "cluster status: {s} {v}");
        Ok(v)
    }

    /// The leader as the running nodes agree on it.
    pub async fn leader(&self) -> anyhow::Result<u64> {
        eventually("a leader", Duration::from_secs(30), || async {
            for id in self.running() {
                if let Ok(v) = self.status(id).await
                    && let Some(l) = v["leader_id"].as_u64()
                    && self.nodes.get(&l).is_some_and(NodeProc::is_running)
                {
                    return Some(l);
                }
            }
            None
        })
        .await
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes.values().filter(|n| n.is_running()).map(|n| n.id).collect()
    }

    /// kill -9.
    pub fn kill(&self, id: u64) {
        if let Some(mut c) = self.nodes[&id].lock().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit (at most 20 s, then kill).
    pub fn terminate(&self, id: u64) -> anyhow::Result<()> {
        let Some(mut c) = self.nodes[&id].lock().take() else { return Ok(()) };
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        match wait_until(Duration::from_secs(20), || c.try_wait().ok().flatten()) {
            Some(status) => {
                anyhow::ensure!(status.success(), "node {id} exited with {status} after SIGTERM");
                Ok(())
            }
            None => {
                let _ = c.kill();
                bail!("node {id} did not stop within 20 s of SIGTERM");
            }
        }
    }

    /// Starts a stopped node again on the same ports and data.
    pub fn restart(&self, id: u64) -> anyhow::Result<()> {
        let n = &self.nodes[&id];
        anyhow::ensure!(!n.is_running(), "node {id} is running");
        let (child, _, _) = self.start_process(id, false, Some((n.http_addr.clone(), n.grpc_addr.clone())))?;
        *n.lock() = Some(child);
        Ok(())
    }

    /// Deletes a stopped node's data directory.
    pub fn wipe(&self, id: u64) -> anyhow::Result<()> {
        let n = &self.nodes[&id];
        anyhow::ensure!(!n.is_running(), "stop node {id} before wiping it");
        std::fs::remove_dir_all(&n.data_dir)?;
        Ok(())
    }

    /// Prints every node's log (nextest shows it for failed tests).
    pub fn dump_logs(&self) {
        for id in self.nodes.keys() {
            eprintln!("===== node {id} log =====\n{}", self.log(*id));
        }
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.nodes[&id].log).unwrap_or_default()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in self.nodes.values() {
            if let Some(mut c) = n.lock().take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

pub fn run_dtm(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(dtm_bin()).args(args).output()?;
    anyhow::ensure!(out.status.success(), "dtm {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A process's peak resident memory (`VmHWM`), in bytes.
pub fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).ok_or_else(|| anyhow::anyhow!("no VmHWM"))?;
    let kb: u64 = line.split_whitespace().nth(1).unwrap_or("0").parse()?;
    Ok(kb * 1024)
}

/// The `__Host-dtm_session=…` pair of a sign-in answer's `Set-Cookie` headers, ready to send back
/// as a `Cookie` header.
pub fn session_cookie(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__Host-dtm_session="))
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
}
