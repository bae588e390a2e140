//! `dtm audit verify`: recomputes the audit trail's hash chain, its Merkle tree and every
//! checkpoint signature (`dtm_cluster::audit::Verifier`) and names the first entry that was
//! changed, removed or reordered.
//!
//! - live (default): pages through `GET /api/v1/audit/chain` and `/audit/checkpoints` of a running
//!   node and verifies on this machine; the node's own verdict is not asked for.
//! - `--data-dir DIR`: opens a stopped node's store (`DIR/store`) with its master key and reads it
//!   in place; nothing is applied or written to its tables.
//! - `--backup FILE`: a `dtm backup create` file, opened with its key (`--passphrase-file` or
//!   `--key-file`) and checked whole before its trail is verified (`crate::backup`).
//!
//! Signatures are trusted when made by a key in `--keys KEYS.json` (the saved answer of
//! `GET /api/v1/audit/keys`), else by a node key registered in the trail's own tables (said in the
//! output: that only shows the trail is consistent with itself). Exit status: 0 verified, 1 the
//! trail is damaged (the first bad entry is printed), 2 it could not be verified (no store, wrong
//! master key, node unreachable, bad arguments).

use std::collections::VecDeque;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use base64::Engine;
use dtm_cluster::audit::Report;
use dtm_cluster::audit::TrustedKeys;
use dtm_cluster::audit::Verifier;
use dtm_model::state;
use prost::Message;
use reqwest::Method;
use serde_json::Value;
use serde_json::json;

use crate::client;

/// Largest keys file read.
const KEYS_FILE_BYTES_MAX: u64 = 1 << 20;
/// Most keys a keys file may pin.
const KEYS_MAX: usize = 10_000;
/// Progress is printed on stderr every this many entries.
const PROGRESS_EVERY_ENTRIES: u64 = 262_144;

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Verify the audit chain and its signed checkpoints of a live node (default), a stopped
    /// node's directory or a backup; exit ≠ 0 naming the first bad entry.
    // Boxed: the verify options are many and the bench's few (clippy::large_enum_variant).
    Verify(Box<VerifyArgs>),
    /// Measure `audit verify --data-dir`: build a store with N audit entries, then verify it.
    Bench(crate::bench_audit::BenchAuditArgs),
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// A stopped node's data directory (the one given to `dtm serve --data-dir`).
    #[arg(long, conflicts_with = "backup")]
    pub data_dir: Option<PathBuf>,
    /// A backup file made by `dtm backup create`.
    #[arg(long)]
    pub backup: Option<PathBuf>,
    /// Trust only these node keys (the saved JSON of GET /api/v1/audit/keys: node_id and
    /// public_key hex per key). Default: the keys registered in the trail's own tables.
    #[arg(long)]
    pub keys: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// With --data-dir: the node's master key file (default TLS_DIR/master.key; or DTM_MASTER_KEY).
    #[arg(long, env = "DTM_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// With --data-dir: the node's TLS directory, where master.key is by default.
    #[arg(long, env = "DTM_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// With --backup: the backup's key (its passphrase file or key file).
    #[command(flatten)]
    pub backup_key: crate::backup::KeySource,
    /// Live mode: entries and checkpoints asked for per request (at most 1,000; the server caps it).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=1_000), hide = true)]
    pub page: u64,
    #[command(flatten)]
    pub target: client::Target,
}

pub async fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify(args) => {
            let json = args.json;
            match verify(*args).await {
                Ok(out) => {
                    out.print(json);
                    if !out.report.ok() {
                        std::process::exit(1);
                    }
                    Ok(())
                }
                Err(e) => {
                    if json {
                        println!("{}", json!({"ok": false, "error": format!("{e:#}")}));
                    }
                    eprintln!("error: {e:#}");
                    std::process::exit(2);
                }
            }
        }
        AuditCommand::Bench(args) => crate::bench_audit::run(args).await,
    }
}

/// What was verified and how it went.
pub struct Outcome {
    /// "data-dir", "backup" or "live".
    pub mode: &'static str,
    /// The directory or node read.
    pub source: String,
    /// Where the trusted keys came from.
    pub keys: String,
    pub report: Report,
    pub took: std::time::Duration,
}

impl Outcome {
    fn print(&self, as_json: bool) {
        let r = &self.report;
        let secs = self.took.as_secs_f64();
        let rate = if secs > 0.0 { r.entries as f64 / secs } else { 0.0 };
        if as_json {
            let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
            v["ok"] = json!(r.ok());
            v["mode"] = json!(self.mode);
            v["source"] = json!(self.source);
            v["keys"] = json!(self.keys);
            v["took_ms"] = json!(self.took.as_millis() as u64);
            v["entries_per_second"] = json!(rate.round());
            println!("{v}");
            return;
        }
        println!("audit trail of {} ({})", self.source, self.mode);
        println!("trusted keys:       {}", self.keys);
        println!("entries checked:    {}", r.entries);
        println!("checkpoints:        {} ({} signed)", r.checkpoints, r.signed_checkpoints);
        println!("unsigned tail:      {} entries after the last signed checkpoint", r.unsigned_tail);
        println!("head hash:          {}", r.head_hash);
        println!("merkle root:        {}", r.merkle_root);
        println!("time:               {secs:.2} s ({rate:.0} entries/s)");
        match &r.problem {
            None => println!("OK: the hash chain, the Merkle tree and every checkpoint signature verify"),
            Some(p) => println!("FAILED: entry {} ({}): {}", p.seq, p.kind, p.message),
        }
    }
}

async fn verify(args: VerifyArgs) -> anyhow::Result<Outcome> {
    let (trusted, keys) = match &args.keys {
        Some(path) => (read_keys_file(path)?, format!("pinned by {}", path.display())),
        None => (TrustedKeys::default(), String::new()),
    };
    let default_keys = "the node keys registered in the trail's own tables (pin keys with --keys)";
    if let Some(b) = &args.backup {
        let started = Instant::now();
        let (file, with) = (b.clone(), args.backup_key.clone());
        // The whole backup is opened and checked first (frames, manifest, counts, digests).
        let opened = tokio::task::spawn_blocking(move || crate::backup::open_file(&file, &with, |_| {})).await??;
        let report = crate::backup::verify_audit(&opened.pairs, trusted);
        let keys = if keys.is_empty() { default_keys.to_string() } else { keys };
        return Ok(Outcome { mode: "backup", source: b.display().to_string(), keys, report, took: started.elapsed() });
    }
    let started = Instant::now();
    let out = match &args.data_dir {
        Some(dir) => {
            let keys = if keys.is_empty() { default_keys.to_string() } else { keys };
            let master = master_key(&args)?;
            let report = verify_data_dir(dir, master, trusted).await?;
            Outcome { mode: "data-dir", source: dir.display().to_string(), keys, report, took: started.elapsed() }
        }
        None => {
            let c = client::Client::from_target(&args.target)?;
            let (report, source, keys) = verify_live(&c, args.page, trusted, keys).await?;
            Outcome { mode: "live", source, keys, report, took: started.elapsed() }
        }
    };
    Ok(out)
}

fn master_key(args: &VerifyArgs) -> anyhow::Result<dtm_storage::MasterKey> {
    let path = match (&args.master_key_file, &args.tls_dir) {
        (Some(f), _) => f.clone(),
        (None, Some(t)) => t.join(crate::certs::MASTER_KEY_FILE),
        (None, None) if std::env::var_os("DTM_MASTER_KEY").is_some() => PathBuf::new(),
        (None, None) => bail!(
            "--data-dir needs the node's master key: --master-key-file FILE, --tls-dir DIR (for DIR/master.key) \
             or DTM_MASTER_KEY"
        ),
    };
    crate::config::load_master_key(&path)
}

/// Reads pinned keys: a JSON array of `{node_id, public_key}` (hex), or an object holding one
/// under `keys`.
pub fn read_keys_file(path: &Path) -> anyhow::Result<TrustedKeys> {
    let len = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    if len > KEYS_FILE_BYTES_MAX {
        bail!("{} is larger than {KEYS_FILE_BYTES_MAX} bytes: not a keys file", path.display());
    }
    let v: Value = serde_json::from_slice(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let keys = parse_keys(&v).with_context(|| format!("{}", path.display()))?;
    if keys.keys.is_empty() {
        bail!("{} pins no key: every signature would be refused", path.display());
    }
    Ok(keys)
}

/// Keys from the JSON of `GET /api/v1/audit/keys` (or a file holding it).
fn parse_keys(v: &Value) -> anyhow::Result<TrustedKeys> {
    let list = match v {
        Value::Array(a) => a,
        Value::Object(o) => o.get("keys").and_then(Value::as_array).context("no `keys` list")?,
        _ => bail!("expected a list of keys or an object with `keys`"),
    };
    if list.len() > KEYS_MAX {
        bail!("more than {KEYS_MAX} keys");
    }
    let mut keys = Vec::with_capacity(list.len());
    for (i, k) in list.iter().enumerate() {
        let node_id = k["node_id"].as_u64().with_context(|| format!("key {i}: no node_id"))?;
        let pk = k["public_key"].as_str().with_context(|| format!("key {i}: no public_key"))?;
        let pk = hex::decode(pk)
            .ok()
            .filter(|b| b.len() == 32)
            .with_context(|| format!("key {i}: public_key is not an Ed25519 public key in hex (64 hex digits)"))?;
        keys.push((node_id, pk));
    }
    Ok(TrustedKeys { keys })
}

/// An applier for a store opened only to be read: nothing is applied through it.
struct ReadOnly;

impl dtm_storage::Applier for ReadOnly {
    fn apply(
        &self,
        _txn: &mut dtm_storage::Txn<'_>,
        _log_id: &dtm_model::LogId,
        _cmd: &state::Command,
    ) -> Result<state::CommandResponse, dtm_storage::StoreError> {
        Err(dtm_storage::StoreError::Invalid("this store was opened read-only for verification".into()))
    }
}

/// Opens a stopped node's store for reading. The store must exist: `dtm_storage::open` would
/// otherwise create one (and a keyring) in whatever directory was named.
pub fn open_store(data_dir: &Path, master: dtm_storage::MasterKey) -> anyhow::Result<dtm_storage::StateReader> {
    let store = [data_dir.join("store"), data_dir.to_path_buf()]
        .into_iter()
        .find(|d| d.join("keyring.pb").is_file() && d.join("db").is_file())
        .with_context(|| {
            format!("{} is not a DTM node's data directory (no store/keyring.pb and store/db)", data_dir.display())
        })?;
    let opts = dtm_storage::StoreOptions { master_key: Some(master), ..Default::default() };
    let (_log, _sm, reader) = dtm_storage::open(&store, &opts, Arc::new(ReadOnly)).map_err(|e| {
        anyhow::anyhow!("{e} (is its node still running? stop it first, or verify the live node without --data-dir)")
    })?;
    Ok(reader)
}

async fn verify_data_dir(dir: &Path, master: dtm_storage::MasterKey, keys: TrustedKeys) -> anyhow::Result<Report> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let reader = open_store(&dir, master)?;
        let report = dtm_cluster::audit::verify_reader(&reader, keys, progress)
            .with_context(|| format!("reading the audit tables in {}", dir.display()))?;
        Ok(report)
    })
    .await?
}

fn progress(entries: u64) {
    if entries.is_multiple_of(PROGRESS_EVERY_ENTRIES) {
        eprintln!("… {entries} entries checked");
    }
}

/// The checkpoints of a live node, a page at a time as the chain reaches them.
struct RemoteCheckpoints<'c> {
    client: &'c client::Client,
    page_size: u64,
    page: VecDeque<state::AuditCheckpoint>,
    next: Option<u64>,
    /// The node keys registered in the trail's tables, as the first page listed them.
    registered: Vec<(u64, Vec<u8>)>,
}

impl<'c> RemoteCheckpoints<'c> {
    async fn new(client: &'c client::Client, page_size: u64) -> anyhow::Result<RemoteCheckpoints<'c>> {
        let mut me =
            RemoteCheckpoints { client, page_size, page: VecDeque::new(), next: Some(0), registered: Vec::new() };
        let first = me.fetch().await?;
        me.registered = parse_keys(&first["keys"]).context("the keys listed with the checkpoints")?.keys;
        Ok(me)
    }

    async fn fetch(&mut self) -> anyhow::Result<Value> {
        let Some(after) = self.next else { return Ok(Value::Null) };
        let v = self
            .client
            .expect(Method::GET, &format!("/api/v1/audit/checkpoints?after={after}&limit={}", self.page_size), None)
            .await?;
        for c in v["checkpoints"].as_array().into_iter().flatten() {
            let raw = c["raw"].as_str().context("a checkpoint without `raw`")?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(raw).context("a checkpoint's `raw`")?;
            self.page.push_back(state::AuditCheckpoint::decode(bytes.as_slice()).context("a checkpoint")?);
        }
        // A page must move forward, or a node answering the same page forever would loop.
        self.next = v["next"].as_u64().filter(|n| *n > after);
        Ok(v)
    }

    async fn next_upto(&mut self, size: u64) -> anyhow::Result<Option<state::AuditCheckpoint>> {
        if self.page.is_empty() && self.next.is_some() {
            self.fetch().await?;
        }
        Ok(self.page.front().is_some_and(|c| c.size <= size).then(|| self.page.pop_front()).flatten())
    }
}

/// Verifies a running node's trail on this machine, up to the head the first page reports.
async fn verify_live(
    c: &client::Client,
    page_size: u64,
    pinned: TrustedKeys,
    pinned_from: String,
) -> anyhow::Result<(Report, String, String)> {
    let mut checkpoints = RemoteCheckpoints::new(c, page_size).await?;
    let keys = if !pinned.keys.is_empty() {
        pinned_from
    } else {
        // The cluster's registered keys as the node lists them; pinning them with --keys makes the
        // check independent of what this node says.
        let (s, v) = c.call(Method::GET, "/api/v1/audit/keys", None).await?;
        match (s, parse_keys(&v)) {
            (200, Ok(k)) if !k.keys.is_empty() => {
                checkpoints.registered = k.keys;
                "the node keys registered in the trail's tables, from GET /api/v1/audit/keys (pin keys with --keys)"
                    .into()
            }
            _ => "the node keys registered in the trail's tables, as the node lists them (pin keys with --keys)".into(),
        }
    };
    let mut v = Verifier::new(pinned);
    let mut after = 0u64;
    let mut head: Option<state::AuditHead> = None;
    let mut node_id = 0;
    loop {
        let page = c.expect(Method::GET, &format!("/api/v1/audit/chain?after={after}&limit={page_size}"), None).await?;
        if head.is_none() {
            node_id = page["node_id"].as_u64().unwrap_or(0);
            let h = &page["head"];
            head = Some(state::AuditHead {
                size: h["size"].as_u64().context("the chain page has no head size")?,
                head_hash: hex::decode(h["head_hash"].as_str().unwrap_or_default()).context("the head hash")?,
                ..Default::default()
            });
        }
        let size_max = head.as_ref().map_or(0, |h| h.size);
        for e in page["entries"].as_array().into_iter().flatten() {
            let seq = e["seq"].as_u64().context("an entry without seq")?;
            if seq > size_max {
                break;
            }
            let value = match (e["entry"].as_str(), e["error"].as_str()) {
                (Some(b), _) => base64::engine::general_purpose::STANDARD.decode(b).map_err(|e| e.to_string()),
                (None, Some(err)) => Err(err.to_string()),
                (None, None) => Err("the node sent neither the entry nor an error".to_string()),
            };
            v.entry(seq, value);
            while let Some(cp) = checkpoints.next_upto(v.size()).await? {
                v.checkpoint(&cp, &checkpoints.registered);
            }
            progress(v.size());
            if v.failed() {
                break;
            }
        }
        match page["next"].as_u64() {
            Some(n) if n > after && n <= size_max && !v.failed() => after = n,
            _ => break,
        }
    }
    let url = c.nodes.first().cloned().unwrap_or_default();
    Ok((v.finish(head.as_ref()), format!("node {node_id} at {url}"), keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_from_the_keys_answer_or_a_plain_list() {
        let pk = "ab".repeat(32);
        let answer = json!({"as_of_index": 5, "keys": [{"node_id": 2, "public_key": pk, "log_index": 9}]});
        assert_eq!(parse_keys(&answer).expect("keys").keys, vec![(2, vec![0xab; 32])]);
        let list = json!([{"node_id": 1, "public_key": pk}, {"node_id": 3, "public_key": pk}]);
        assert_eq!(parse_keys(&list).expect("keys").keys.len(), 2);
        for bad in [
            json!([{"node_id": 1, "public_key": "ab"}]),
            json!([{"node_id": 1, "public_key": "zz".repeat(32)}]),
            json!([{"public_key": pk}]),
            json!({"nodes": []}),
            json!("keys"),
        ] {
            assert!(parse_keys(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_keys_file_that_pins_nothing_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("keys.json");
        std::fs::write(&empty, br#"{"keys": []}"#).expect("write");
        let err = read_keys_file(&empty).expect_err("refused").to_string();
        assert!(err.contains("pins no key"), "{err}");
        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; KEYS_FILE_BYTES_MAX as usize + 1]).expect("write");
        assert!(read_keys_file(&big).is_err());
    }
}
