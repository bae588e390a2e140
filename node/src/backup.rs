//! Backups and restores (A1.4, F6): `dtm backup create|verify`, `dtm restore`, `GET /api/v1/backup`
//! and scheduled backups.
//!
//! **Taking one.** A node copies its application tables exactly as of one applied log index with
//! the snapshot's copy-on-write window (`StateMachineStore::consistent_copy`): ingestion goes on
//! meanwhile. `GET /api/v1/backup` streams that copy (over HTTPS) as frames: a JSON header (index,
//! term, counts per table, aggregate digests per dataset), the snapshot meta, then the pairs in
//! bounded batches. The CLI writes it to a file, encrypting as it goes; a scheduled backup does the
//! same on the node itself.
//!
//! **The file** (`.dtmbak`): the magic `DTMBAK01`, a plaintext JSON header (format, index, time,
//! how the key is derived — never the key), then frames `[len u32][kind u8][nonce 12][AES-256-GCM
//! ciphertext+tag]`. Each frame's associated data is SHA-256(header) ‖ frame number ‖ kind, so a
//! changed header, a changed, dropped, reordered or swapped frame fails to open. Data frames carry
//! the stream's parts; the last frame is the manifest: every part's size and SHA-256, the counts
//! per table and the digests. A file without its manifest is truncated. The key comes from a
//! passphrase (Argon2id, m = 64 MiB, t = 3, p = 1, random salt) for off-site copies, or from a
//! 256-bit key file — a node's master key — (HMAC-SHA-256 with a random salt).
//!
//! **Restoring.** `dtm restore` opens and checks the whole file (parts, counts, the audit chain),
//! then builds a fresh data directory: the tables as of the backup's index, a membership holding
//! only the new node, and a vote in the backup's last term. `dtm serve` on that directory starts a
//! new one-node cluster (or a new site) at once — its first act as leader is to record its own
//! addresses in the membership — and other nodes join it with `dtm cluster add-node`. The audit
//! trail is carried whole and continues from its last entry.

use std::collections::BTreeMap;
use std::io::Read;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use anyhow::bail;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use dtm_cluster::tables;
use dtm_model::state;
use prost::Message;
use ring::aead;
use serde_json::Value;
use serde_json::json;
use sha2::Digest;
use sha2::Sha256;

use crate::api::AppState;
use crate::api::auth;
use crate::api::error::ApiError;
use crate::api::error::ApiResult;

const MAGIC: &[u8; 8] = b"DTMBAK01";
const FILE_FORMAT: &str = "dtm-backup-v1";
const STREAM_FORMAT: &str = "dtm-backup-stream-v1";
const KIND_DATA: u8 = 0;
const KIND_MANIFEST: u8 = 1;
const NONCE_BYTES: usize = 12;
/// Pairs per stream part: a part is at most about this many bytes.
const PART_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest frame a reader accepts (a part plus the largest single pair plus framing).
const FRAME_BYTES_MAX: usize = 80 * 1024 * 1024;
/// Largest plaintext header.
const HEADER_BYTES_MAX: usize = 64 * 1024;
/// Argon2id parameters for passphrase-derived keys (OWASP: at least m = 19 MiB, t = 2).
const ARGON2_M_KIB: u32 = 64 * 1024;
const ARGON2_T: u32 = 3;
const ARGON2_P: u32 = 1;
const PASSPHRASE_CHARS_MIN: usize = 12;

/// Where a backup's key comes from.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KeySource {
    /// A file holding the backup passphrase (at least 12 characters; off-site copies). Or set
    /// DTM_BACKUP_PASSPHRASE.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// A file holding a 256-bit key as 64 hex digits — e.g. a node's master key.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
}

enum Secret {
    Passphrase(String),
    Key(Vec<u8>),
}

impl KeySource {
    fn secret(&self) -> anyhow::Result<Secret> {
        match (&self.passphrase_file, &self.key_file) {
            (Some(_), Some(_)) => bail!("give --passphrase-file or --key-file, not both"),
            (Some(p), None) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                passphrase(text.trim_end_matches(['\r', '\n']).to_string())
            }
            (None, Some(k)) => {
                let text = std::fs::read_to_string(k).with_context(|| format!("reading {}", k.display()))?;
                let key = hex::decode(text.trim()).map_err(|_| anyhow::anyhow!("{}: not hex", k.display()))?;
                if key.len() != 32 {
                    bail!("{}: a key file holds 64 hex digits (256 bits)", k.display());
                }
                Ok(Secret::Key(key))
            }
            (None, None) => match std::env::var("DTM_BACKUP_PASSPHRASE") {
                Ok(p) => passphrase(p),
                Err(_) => bail!("no backup key: give --passphrase-file FILE, --key-file FILE or DTM_BACKUP_PASSPHRASE"),
            },
        }
    }
}

fn passphrase(p: String) -> anyhow::Result<Secret> {
    if p.chars().count() < PASSPHRASE_CHARS_MIN {
        bail!("a backup passphrase has at least {PASSPHRASE_CHARS_MIN} characters");
    }
    Ok(Secret::Passphrase(p))
}

fn derive_key(secret: &Secret, kdf: &Value) -> anyhow::Result<aead::LessSafeKey> {
    let salt = hex::decode(kdf["salt"].as_str().unwrap_or_default()).context("the header's salt is not hex")?;
    let mut key = [0u8; 32];
    match (secret, kdf["kind"].as_str()) {
        (Secret::Passphrase(p), Some("passphrase-argon2id")) => {
            let m = kdf["m_kib"].as_u64().and_then(|v| u32::try_from(v).ok()).unwrap_or(ARGON2_M_KIB);
            let t = kdf["t"].as_u64().and_then(|v| u32::try_from(v).ok()).unwrap_or(ARGON2_T);
            let par = kdf["p"].as_u64().and_then(|v| u32::try_from(v).ok()).unwrap_or(ARGON2_P);
            if m > 1024 * 1024 || t > 16 || par > 16 {
                bail!("the header asks for unreasonable Argon2 parameters");
            }
            let params = argon2::Params::new(m, t, par, Some(32)).map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into(p.as_bytes(), &salt, &mut key)
                .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
        }
        (Secret::Key(k), Some("key-file-hmac-sha256")) => {
            let hk = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k);
            let tag = ring::hmac::sign(&hk, &[b"dtm-backup-v1".as_slice(), &salt].concat());
            key.copy_from_slice(tag.as_ref());
        }
        (Secret::Passphrase(_), Some("key-file-hmac-sha256")) => {
            bail!("this backup was encrypted with a key file: give --key-file")
        }
        (Secret::Key(_), Some("passphrase-argon2id")) => {
            bail!("this backup was encrypted with a passphrase: give --passphrase-file")
        }
        (_, other) => bail!("unknown key derivation {other:?}"),
    }
    let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, &key).map_err(|_| anyhow::anyhow!("bad key"))?;
    Ok(aead::LessSafeKey::new(unbound))
}

fn new_kdf(secret: &Secret) -> anyhow::Result<Value> {
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    Ok(match secret {
        Secret::Passphrase(_) => json!({"kind": "passphrase-argon2id", "salt": hex::encode(salt),
            "m_kib": ARGON2_M_KIB, "t": ARGON2_T, "p": ARGON2_P}),
        Secret::Key(_) => json!({"kind": "key-file-hmac-sha256", "salt": hex::encode(salt)}),
    })
}

fn aad(header_sha: &[u8], frame: u64, kind: u8) -> Vec<u8> {
    [header_sha, &frame.to_be_bytes(), &[kind]].concat()
}

// ---- The stream a node serves ----

/// What a node's copy holds, for the stream header and the manifest.
fn summarise(meta: &dtm_model::SnapshotMeta, pairs: &[dtm_storage::Pair], node_id: u64) -> Value {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for (k, _) in pairs {
        let table =
            k.iter().position(|b| *b == b'/').map_or("?".to_string(), |i| String::from_utf8_lossy(&k[..i]).into());
        *counts.entry(table).or_default() += 1;
    }
    let index = meta.last_log_id.map_or(0, |l| l.index);
    let term = meta.last_log_id.map_or(0, |l| l.leader_id.term);
    json!({
        "format": STREAM_FORMAT,
        "node_id": node_id,
        "log_index": index,
        "term": term,
        "created_at_ms": crate::api::now_ms(),
        "pairs": pairs.len(),
        "counts": counts,
        "records": counts.get("rec").copied().unwrap_or(0),
        "audit_entries": audit_entries(pairs),
        "digests": digests(pairs),
    })
}

/// The audit entries in the copy (they are stored a block per command).
fn audit_entries(pairs: &[dtm_storage::Pair]) -> u64 {
    pairs
        .iter()
        .filter(|(k, _)| k.starts_with(tables::AUDIT_ENTRY))
        .filter_map(|(_, v)| state::AuditBlock::decode(v.as_slice()).ok())
        .map(|b| b.entries.len() as u64)
        .sum()
}

/// Each dataset's aggregate digest computed from the copied cells, the way
/// `GET /datasets/{id}/aggregates/digest` computes it from the in-memory view.
fn digests(pairs: &[dtm_storage::Pair]) -> BTreeMap<String, String> {
    let mut by_dataset: BTreeMap<String, Sha256> = BTreeMap::new();
    for (k, v) in pairs {
        let Some(rest) = k.strip_prefix(tables::AGGREGATE) else { continue };
        let Some(sep) = rest.iter().position(|b| *b == 0) else { continue };
        let (dataset, cell_key) = (String::from_utf8_lossy(&rest[..sep]).into_owned(), &rest[sep + 1..]);
        let Ok(cell) = state::AggCell::decode(v.as_slice()) else { continue };
        dtm_cluster::aggregates::digest_cell(by_dataset.entry(dataset).or_default(), cell_key, &cell);
    }
    by_dataset.into_iter().map(|(d, h)| (d, hex::encode(h.finalize()))).collect()
}

fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// The stream's parts after the header: the snapshot meta, then the pairs in bounded batches.
fn parts(meta: &dtm_model::SnapshotMeta, pairs: Vec<dtm_storage::Pair>) -> impl Iterator<Item = Vec<u8>> + use<> {
    let first = dtm_model::snapshot_meta_to_pb(meta).encode_to_vec();
    let mut pairs = pairs.into_iter().peekable();
    let bodies = std::iter::from_fn(move || {
        pairs.peek()?;
        let mut body = dtm_proto::raft::SnapshotBody { format_version: 1, pairs: Vec::new() };
        let mut size = 0;
        while let Some((k, v)) = pairs.next_if(|_| size < PART_BYTES_MAX) {
            size += k.len() + v.len() + 8;
            body.pairs.push(dtm_proto::raft::SnapshotPair { key: k, value: v });
        }
        Some(body.encode_to_vec())
    });
    std::iter::once(first).chain(bodies)
}

/// `GET /api/v1/backup` (admin, operator): this node's tables as of one applied index, streamed.
/// Read after a barrier, so the copy holds everything committed before the request.
pub async fn get_backup(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    auth::require(&state, &headers, &auth::OPERATE).await?;
    crate::audit::note_operation("cluster.backup", "cluster");
    state.node.linearizable_barrier().await?;
    let (meta, pairs) = state.node.backup_copy().await?;
    let header = summarise(&meta, &pairs, state.node.id);
    crate::audit::note_detail(json!({"log_index": header["log_index"], "pairs": header["pairs"]}));
    let header = serde_json::to_vec(&header).map_err(ApiError::internal)?;
    let stream = std::iter::once(frame(&header))
        .chain(parts(&meta, pairs).map(|p| frame(&p)))
        .chain(std::iter::once(frame(&[])))
        .map(|b| Ok::<_, std::io::Error>(bytes::Bytes::from(b)));
    Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/vnd.dtm.backup-stream")
        .body(Body::from_stream(futures::stream::iter(stream)))
        .map_err(ApiError::internal)
}

// ---- The file ----

/// Writes a backup file frame by frame (encrypting as it goes) and keeps the manifest.
struct FileWriter<W: Write> {
    out: W,
    key: aead::LessSafeKey,
    header_sha: Vec<u8>,
    frame: u64,
    parts: Vec<Value>,
    rng: ring::rand::SystemRandom,
}

impl<W: Write> FileWriter<W> {
    fn start(mut out: W, secret: &Secret, info: &Value) -> anyhow::Result<Self> {
        let kdf = new_kdf(secret)?;
        let header = json!({
            "format": FILE_FORMAT, "cipher": "AES-256-GCM", "kdf": kdf,
            "log_index": info["log_index"], "term": info["term"], "node_id": info["node_id"],
            "created_at_ms": info["created_at_ms"],
        });
        let header = serde_json::to_vec(&header)?;
        out.write_all(MAGIC)?;
        out.write_all(&(header.len() as u32).to_be_bytes())?;
        out.write_all(&header)?;
        let key = derive_key(secret, &kdf)?;
        let header_sha = Sha256::digest(&header).to_vec();
        Ok(FileWriter { out, key, header_sha, frame: 0, parts: Vec::new(), rng: ring::rand::SystemRandom::new() })
    }

    fn write_frame(&mut self, kind: u8, plain: &[u8]) -> anyhow::Result<()> {
        let mut nonce = [0u8; NONCE_BYTES];
        ring::rand::SecureRandom::fill(&self.rng, &mut nonce).map_err(|_| anyhow::anyhow!("no system randomness"))?;
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad(&self.header_sha, self.frame, kind)),
                &mut buf,
            )
            .map_err(|_| anyhow::anyhow!("encryption failed"))?;
        let len = u32::try_from(1 + NONCE_BYTES + buf.len()).context("frame too large")?;
        self.out.write_all(&len.to_be_bytes())?;
        self.out.write_all(&[kind])?;
        self.out.write_all(&nonce)?;
        self.out.write_all(&buf)?;
        self.frame += 1;
        Ok(())
    }

    fn part(&mut self, plain: &[u8]) -> anyhow::Result<()> {
        self.parts.push(json!({"bytes": plain.len(), "sha256": hex::encode(Sha256::digest(plain))}));
        self.write_frame(KIND_DATA, plain)
    }

    fn finish(mut self, info: Value) -> anyhow::Result<W> {
        let manifest = json!({"stream": info, "parts": self.parts});
        let bytes = serde_json::to_vec(&manifest)?;
        self.write_frame(KIND_MANIFEST, &bytes)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A backup file opened and checked: its header, manifest, snapshot meta and pairs.
pub struct Opened {
    pub header: Value,
    pub manifest: Value,
    pub meta: dtm_model::SnapshotMeta,
    pub pairs: Vec<dtm_storage::Pair>,
}

fn read_exact_or<R: Read>(r: &mut R, buf: &mut [u8], what: &str) -> anyhow::Result<()> {
    r.read_exact(buf).map_err(|e| anyhow::anyhow!("the backup is truncated ({what}): {e}"))
}

/// Opens a backup file and checks everything that can be checked without restoring: the header,
/// every frame's authenticity and order, the manifest (sizes, SHA-256 of every part, counts per
/// table). `progress` is told the bytes read.
pub fn open_file(path: &Path, keys: &KeySource, mut progress: impl FnMut(u64)) -> anyhow::Result<Opened> {
    let secret = keys.secret()?;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut r = std::io::BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    read_exact_or(&mut r, &mut magic, "magic")?;
    if &magic != MAGIC {
        bail!("{} is not a DTM backup", path.display());
    }
    let mut len = [0u8; 4];
    read_exact_or(&mut r, &mut len, "header length")?;
    let header_len = u32::from_be_bytes(len) as usize;
    if header_len > HEADER_BYTES_MAX {
        bail!("the backup header is larger than {HEADER_BYTES_MAX} bytes: damaged");
    }
    let mut header_bytes = vec![0u8; header_len];
    read_exact_or(&mut r, &mut header_bytes, "header")?;
    let header: Value = serde_json::from_slice(&header_bytes).context("the backup header is not JSON: damaged")?;
    if header["format"] != FILE_FORMAT {
        bail!("unsupported backup format {}", header["format"]);
    }
    let key = derive_key(&secret, &header["kdf"])?;
    let header_sha = Sha256::digest(&header_bytes).to_vec();
    let mut data_parts: Vec<Vec<u8>> = Vec::new();
    let mut manifest = None;
    let mut frame_no = 0u64;
    let mut read = 12 + header_len as u64;
    loop {
        let mut len = [0u8; 4];
        match r.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e).context("reading the backup"),
        }
        if manifest.is_some() {
            bail!("data follows the manifest (frame {frame_no}): the backup was altered");
        }
        let n = u32::from_be_bytes(len) as usize;
        if !(1 + NONCE_BYTES + 16..=FRAME_BYTES_MAX).contains(&n) {
            bail!("frame {frame_no} has an impossible length {n}: damaged");
        }
        let mut buf = vec![0u8; n];
        read_exact_or(&mut r, &mut buf, &format!("frame {frame_no}"))?;
        read += 4 + n as u64;
        progress(read);
        let kind = buf[0];
        let nonce: [u8; NONCE_BYTES] = buf[1..1 + NONCE_BYTES].try_into().context("nonce")?;
        let mut body = buf.split_off(1 + NONCE_BYTES);
        let plain = key
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad(&header_sha, frame_no, kind)),
                &mut body,
            )
            .map_err(|_| {
                anyhow::anyhow!(
                    "frame {frame_no} does not open: the backup was altered (or reordered), or the key is wrong"
                )
            })?;
        let plain = plain.to_vec();
        match kind {
            KIND_DATA => data_parts.push(plain),
            KIND_MANIFEST => {
                manifest = Some(serde_json::from_slice::<Value>(&plain).context("the manifest is not JSON")?);
            }
            other => bail!("frame {frame_no} has an unknown kind {other}"),
        }
        frame_no += 1;
    }
    let manifest = manifest.context("the backup has no manifest: it is truncated")?;
    let listed = manifest["parts"].as_array().context("the manifest lists no parts")?;
    if listed.len() != data_parts.len() {
        bail!("the manifest lists {} parts, the file holds {}", listed.len(), data_parts.len());
    }
    for (i, (p, want)) in data_parts.iter().zip(listed).enumerate() {
        if hex::encode(Sha256::digest(p)) != want["sha256"].as_str().unwrap_or_default() {
            bail!("part {i}: its SHA-256 differs from the manifest's");
        }
    }
    let mut parts = data_parts.into_iter();
    let meta_pb = dtm_proto::raft::SnapshotMeta::decode(parts.next().context("the backup has no meta")?.as_slice())
        .context("the backup's meta does not decode")?;
    let meta = dtm_model::snapshot_meta_from_pb(meta_pb).map_err(|e| anyhow::anyhow!("the backup's meta: {e}"))?;
    let mut pairs = Vec::new();
    for (i, p) in parts.enumerate() {
        let body = dtm_proto::raft::SnapshotBody::decode(p.as_slice())
            .with_context(|| format!("part {}: not a table part", i + 1))?;
        pairs.extend(body.pairs.into_iter().map(|p| (p.key, p.value)));
    }
    let stream = &manifest["stream"];
    if stream["pairs"].as_u64() != Some(pairs.len() as u64) {
        bail!("the manifest counts {} pairs, the parts hold {}", stream["pairs"], pairs.len());
    }
    let summary = summarise(&meta, &pairs, 0);
    if summary["counts"] != stream["counts"] {
        bail!("the counts per table differ from the manifest's");
    }
    if summary["digests"] != stream["digests"] {
        bail!("the aggregate digests differ from the manifest's");
    }
    if stream["log_index"].as_u64() != meta.last_log_id.map(|l| l.index) || header["log_index"] != stream["log_index"] {
        bail!("the log index in the header, the manifest and the meta differ");
    }
    Ok(Opened { header, manifest, meta, pairs })
}

/// Verifies the audit chain carried by a backup's pairs (entries, checkpoints, signatures).
pub fn verify_audit(pairs: &[dtm_storage::Pair], keys: dtm_cluster::audit::TrustedKeys) -> dtm_cluster::audit::Report {
    use dtm_cluster::audit;
    let mut registered = Vec::new();
    let mut checkpoints = Vec::new();
    let mut head = None;
    for (k, v) in pairs {
        if k.starts_with(tables::NODE_KEY) {
            if let Ok(nk) = state::NodeKey::decode(v.as_slice()) {
                registered.push((nk.node_id, nk.public_key));
            }
        } else if k.starts_with(tables::AUDIT_CHECKPOINT) {
            if let Ok(cp) = state::AuditCheckpoint::decode(v.as_slice()) {
                checkpoints.push(cp);
            }
        } else if k.as_slice() == tables::AUDIT_HEAD {
            head = state::AuditHead::decode(v.as_slice()).ok();
        }
    }
    checkpoints.sort_by_key(|c| c.size);
    let mut next_cp = checkpoints.into_iter().peekable();
    let mut v = audit::Verifier::new(keys);
    for (k, value) in pairs.iter().filter(|(k, _)| k.starts_with(tables::AUDIT_ENTRY)) {
        let Some(first) = audit::seq_of_key(k) else { continue };
        for (i, entry) in v.open_block(first, Ok(value.clone())).into_iter().enumerate() {
            v.entry_decoded(first + i as u64, entry);
            while let Some(cp) = next_cp.next_if(|c| c.size <= v.size()) {
                v.checkpoint(&cp, &registered);
            }
        }
        if v.failed() {
            break;
        }
    }
    v.finish(head.as_ref())
}

// ---- CLI ----

#[derive(clap::Subcommand, Debug)]
pub enum BackupCommand {
    /// Takes a consistent, encrypted backup of a live cluster (ingestion goes on).
    Create {
        #[command(flatten)]
        target: crate::client::Target,
        /// Where to write the backup (a new file).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        keys: KeySource,
    },
    /// Checks a backup without restoring it; exit ≠ 0 when it is damaged or altered.
    Verify {
        file: PathBuf,
        #[command(flatten)]
        keys: KeySource,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(long)]
    pub from: PathBuf,
    /// The new node's data directory (must not exist or be empty).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The new node's id (the only member of the restored cluster until others join).
    #[arg(long, default_value_t = 1)]
    pub node_id: u64,
    #[arg(long, default_value = "default")]
    pub site: String,
    /// The new node's master key file (encrypts the restored data directory); or DTM_MASTER_KEY.
    #[arg(long, env = "DTM_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub keys: KeySource,
}

fn eprint_progress(label: &str, bytes: u64) {
    eprint!("\r{label}: {:.1} MB", bytes as f64 / 1e6);
}

pub async fn run(cmd: BackupCommand) -> anyhow::Result<()> {
    match cmd {
        BackupCommand::Create { target, out, keys } => create(&target, &out, &keys).await,
        BackupCommand::Verify { file, keys, json } => {
            let report = tokio::task::spawn_blocking(move || verify_file(&file, &keys)).await??;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "backup verified: log index {}, {} pairs ({} records, {} audit entries), audit chain intact \
                     ({} checkpoints, {} signed)",
                    report["log_index"],
                    report["pairs"],
                    report["records"],
                    report["audit_entries"],
                    report["audit"]["checkpoints"],
                    report["audit"]["signed_checkpoints"]
                );
            }
            Ok(())
        }
    }
}

fn verify_file(file: &Path, keys: &KeySource) -> anyhow::Result<Value> {
    let opened = open_file(file, keys, |b| eprint_progress("verifying", b))?;
    eprintln!();
    let audit = verify_audit(&opened.pairs, dtm_cluster::audit::TrustedKeys::default());
    if let Some(p) = &audit.problem {
        bail!("the backup's audit trail does not verify: entry {} ({}): {}", p.seq, p.kind, p.message);
    }
    let s = &opened.manifest["stream"];
    Ok(json!({
        "file": file.display().to_string(), "log_index": s["log_index"], "term": s["term"],
        "node_id": s["node_id"], "created_at_ms": s["created_at_ms"], "pairs": s["pairs"],
        "encryption": {"cipher": opened.header["cipher"], "key": opened.header["kdf"]["kind"]},
        "records": s["records"], "audit_entries": s["audit_entries"], "counts": s["counts"],
        "digests": s["digests"], "audit": audit,
    }))
}

async fn create(target: &crate::client::Target, out: &Path, keys: &KeySource) -> anyhow::Result<()> {
    use futures::StreamExt;
    if out.exists() {
        bail!("{} exists: a backup never overwrites a file", out.display());
    }
    let secret = keys.secret()?;
    let c = crate::client::Client::from_target(target)?;
    let mut last_err = None;
    let mut resp = None;
    for node in &c.nodes {
        let mut req =
            c.http.get(format!("{}/api/v1/backup", node.trim_end_matches('/'))).timeout(Duration::from_secs(3600));
        if let Some(t) = &c.token {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => {
                resp = Some(r);
                break;
            }
            Ok(r) => {
                let status = r.status();
                let v: Value = r.json().await.unwrap_or_default();
                bail!("HTTP {status}: {}", v["error"]["message"].as_str().unwrap_or("backup refused"));
            }
            Err(e) => last_err = Some(anyhow::anyhow!("{node}: {e}")),
        }
    }
    let resp = resp.ok_or_else(|| last_err.unwrap_or_else(|| anyhow::anyhow!("no node answered")))?;
    let tmp = out.with_extension("partial");
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut received = 0u64;
    let mut writer: Option<FileWriter<std::io::BufWriter<std::fs::File>>> = None;
    let mut info = Value::Null;
    let mut done = false;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the backup stream broke off")?;
        received += chunk.len() as u64;
        eprint_progress("receiving", received);
        buf.extend_from_slice(&chunk);
        loop {
            if buf.len() < 4 {
                break;
            }
            let n = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if n > FRAME_BYTES_MAX {
                bail!("the node sent a part larger than {FRAME_BYTES_MAX} bytes");
            }
            if buf.len() < 4 + n {
                break;
            }
            let part: Vec<u8> = buf.drain(..4 + n).skip(4).collect();
            match writer.as_mut() {
                None => {
                    info = serde_json::from_slice(&part).context("the stream header is not JSON")?;
                    if info["format"] != STREAM_FORMAT {
                        bail!("the node speaks another backup stream format: {}", info["format"]);
                    }
                    let f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
                    writer = Some(FileWriter::start(std::io::BufWriter::new(f), &secret, &info)?);
                }
                Some(_) if part.is_empty() => done = true,
                Some(w) => w.part(&part)?,
            }
        }
    }
    eprintln!();
    let writer = writer.context("the node sent no backup")?;
    if !done || !buf.is_empty() {
        let _ = std::fs::remove_file(&tmp);
        bail!("the backup stream ended early; nothing was written");
    }
    let file = writer.finish(info.clone())?.into_inner().map_err(|e| anyhow::anyhow!("writing: {e}"))?;
    file.sync_all()?;
    std::fs::rename(&tmp, out)?;
    println!(
        "{}",
        json!({"file": out.display().to_string(), "log_index": info["log_index"], "term": info["term"],
               "node_id": info["node_id"], "pairs": info["pairs"], "records": info["records"],
               "audit_entries": info["audit_entries"], "digests": info["digests"], "bytes": received})
    );
    Ok(())
}

/// `dtm restore`: builds a data directory from a backup (see the module header).
pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let from = args.from.clone();
    let keys = args.keys.clone();
    let opened =
        tokio::task::spawn_blocking(move || open_file(&from, &keys, |b| eprint_progress("reading", b))).await??;
    eprintln!();
    let audit = verify_audit(&opened.pairs, dtm_cluster::audit::TrustedKeys::default());
    if let Some(p) = &audit.problem {
        bail!("refusing to restore: the backup's audit trail does not verify: entry {}: {}", p.seq, p.message);
    }
    if args.data_dir.exists() && std::fs::read_dir(&args.data_dir)?.next().is_some() {
        bail!("{} is not empty: a restore builds a new data directory", args.data_dir.display());
    }
    let master = match &args.master_key_file {
        Some(p) => crate::config::load_master_key(p)?,
        None => match std::env::var("DTM_MASTER_KEY") {
            Ok(t) => dtm_storage::MasterKey::parse(&t).map_err(|e| anyhow::anyhow!("DTM_MASTER_KEY: {e}"))?,
            Err(_) => bail!("the new node needs a master key: --master-key-file FILE or DTM_MASTER_KEY"),
        },
    };
    let last = opened.meta.last_log_id.context("the backup holds no applied log position")?;
    let info = dtm_model::NodeInfo { http_addr: String::new(), grpc_addr: String::new(), site: args.site.clone() };
    let membership = openraft::Membership::new(
        vec![std::collections::BTreeSet::from([args.node_id])],
        BTreeMap::from([(args.node_id, info)]),
    );
    let meta = dtm_model::SnapshotMeta {
        last_log_id: Some(last),
        last_membership: openraft::StoredMembership::new(Some(last), membership),
        snapshot_id: format!("restore-{}-{}", last.leader_id.term, last.index),
    };
    // Built beside the target and renamed into place at the end: an interrupted restore never
    // leaves a directory that `dtm serve` would take for a node's state.
    let staging = args.data_dir.with_extension("restoring");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    let store_opts = dtm_storage::StoreOptions { master_key: Some(master), ..dtm_storage::StoreOptions::default() };
    let applier: Arc<dyn dtm_storage::Applier> = Arc::new(dtm_cluster::DtmApplier::default());
    let (mut log, sm, _reader) = dtm_storage::open(&staging.join("store"), &store_opts, applier)?;
    let pairs = opened.pairs;
    let records = opened.manifest["stream"]["records"].clone();
    let sm2 = sm.clone();
    let meta2 = meta.clone();
    tokio::task::spawn_blocking(move || sm2.restore(&meta2, pairs)).await??;
    // A vote (not a leadership) in the backup's last term: the node starts by campaigning in the
    // next term, so its first entry as leader comes after every entry the backup holds, whichever
    // node led the term the backup ends in.
    let vote = openraft::Vote::new(last.leader_id.term, args.node_id);
    openraft::storage::RaftLogStorage::save_vote(&mut log, &vote).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    // The first voter of a new cluster, as a bootstrapped node is: nothing to catch up with, so
    // the mark a store opened empty gets (the amnesia guard) goes.
    log.bootstrapped()?;
    drop((log, sm, _reader));
    if args.data_dir.exists() {
        std::fs::remove_dir(&args.data_dir)?;
    }
    std::fs::rename(&staging, &args.data_dir)?;
    println!(
        "{}",
        json!({"data_dir": args.data_dir.display().to_string(), "node_id": args.node_id, "log_index": last.index,
               "term": last.leader_id.term, "records": records, "audit_entries": audit.entries,
               "next": format!("dtm serve --data-dir {} --node-id {} …; then add nodes with dtm cluster add-node",
                               args.data_dir.display(), args.node_id)})
    );
    Ok(())
}

// ---- Scheduled backups ----

/// `[backup]`: scheduled backups written by the node itself.
#[derive(serde::Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct BackupFile {
    /// Where backups go (a directory; off the data disk). No directory, no scheduled backups.
    pub dir: Option<PathBuf>,
    /// Seconds between backups (default one day).
    pub interval_s: Option<u64>,
    /// Backups kept; older ones are deleted (default 7).
    pub keep: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub dir: Option<PathBuf>,
    pub interval: Duration,
    pub keep: usize,
}

pub fn resolve(file: BackupFile) -> anyhow::Result<BackupOptions> {
    let interval_s = file.interval_s.unwrap_or(86_400);
    if !(60..=31 * 86_400).contains(&interval_s) {
        bail!("[backup] interval_s must be between 60 and 2678400 (got {interval_s})");
    }
    let keep = file.keep.unwrap_or(7);
    if !(1..=1000).contains(&keep) {
        bail!("[backup] keep must be between 1 and 1000 (got {keep})");
    }
    Ok(BackupOptions { dir: file.dir, interval: Duration::from_secs(interval_s), keep })
}

/// Writes a backup of this node's tables into `opts.dir` every `opts.interval`, encrypted with a
/// key derived from the node's master key, keeping the newest `opts.keep`.
pub fn start_schedule(node: Arc<dtm_cluster::ClusterNode>, opts: BackupOptions, master_key_hex: String) {
    let Some(dir) = opts.dir.clone() else { return };
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(opts.interval).await;
            match scheduled_backup(&node, &dir, &master_key_hex).await {
                Ok(path) => {
                    tracing::info!(target: "backup", file = %path.display(), "scheduled backup written");
                    if let Err(e) = prune(&dir, opts.keep) {
                        tracing::warn!(target: "backup", error = %e, "could not remove old backups");
                    }
                }
                Err(e) => tracing::error!(target: "backup", error = %e, "scheduled backup failed"),
            }
        }
    });
}

async fn scheduled_backup(node: &dtm_cluster::ClusterNode, dir: &Path, master_hex: &str) -> anyhow::Result<PathBuf> {
    let (meta, pairs) = node.backup_copy().await?;
    let dir = dir.to_path_buf();
    let secret = Secret::Key(hex::decode(master_hex).context("master key")?);
    let node_id = node.id;
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        let info = summarise(&meta, &pairs, node_id);
        let name = format!(
            "dtm-node{node_id}-{:020}-{}.dtmbak",
            info["log_index"].as_u64().unwrap_or(0),
            crate::api::now_ms()
        );
        let path = dir.join(name);
        let tmp = path.with_extension("partial");
        let f = std::fs::File::create(&tmp)?;
        let mut w = FileWriter::start(std::io::BufWriter::new(f), &secret, &info)?;
        for p in parts(&meta, pairs) {
            w.part(&p)?;
        }
        let f = w.finish(info)?.into_inner().map_err(|e| anyhow::anyhow!("writing: {e}"))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    })
    .await?
}

fn prune(dir: &Path, keep: usize) -> anyhow::Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "dtmbak"))
        .collect();
    files.sort();
    let excess = files.len().saturating_sub(keep);
    for f in files.into_iter().take(excess) {
        std::fs::remove_file(&f)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &Path) -> KeySource {
        let p = dir.join("k");
        std::fs::write(&p, "11".repeat(32)).expect("write key");
        KeySource { key_file: Some(p), passphrase_file: None }
    }

    fn sample(dir: &Path, keys: &KeySource) -> PathBuf {
        let meta = dtm_model::SnapshotMeta {
            last_log_id: Some(openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), 42)),
            ..Default::default()
        };
        let pairs: Vec<dtm_storage::Pair> =
            (0..100u32).map(|i| (format!("rec/d\0{i:04}").into_bytes(), vec![i as u8; 50])).collect();
        let mut info = summarise(&meta, &pairs, 1);
        info["created_at_ms"] = json!(1);
        let path = dir.join("b.dtmbak");
        let secret = keys.secret().expect("secret");
        let mut w = FileWriter::start(std::fs::File::create(&path).expect("create"), &secret, &info).expect("start");
        for p in parts(&meta, pairs) {
            w.part(&p).expect("part");
        }
        w.finish(info).expect("finish");
        path
    }

    #[test]
    fn a_backup_opens_and_any_flipped_byte_or_truncation_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = key_file(dir.path());
        let path = sample(dir.path(), &keys);
        let opened = open_file(&path, &keys, |_| {}).expect("opens");
        assert_eq!(opened.pairs.len(), 100);
        assert_eq!(opened.meta.last_log_id.map(|l| l.index), Some(42));
        let bytes = std::fs::read(&path).expect("read");
        for at in [10, 20, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x01;
            std::fs::write(&path, &bad).expect("write");
            assert!(open_file(&path, &keys, |_| {}).is_err(), "flipped byte {at} went unnoticed");
        }
        std::fs::write(&path, &bytes[..bytes.len() - 40]).expect("write");
        let err = open_file(&path, &keys, |_| {}).err().expect("truncation refused").to_string();
        assert!(err.contains("truncated") || err.contains("does not open"), "{err}");
        std::fs::write(&path, &bytes).expect("write");
        let other = dir.path().join("k2");
        std::fs::write(&other, "22".repeat(32)).expect("write key");
        let wrong = KeySource { key_file: Some(other), passphrase_file: None };
        assert!(open_file(&path, &wrong, |_| {}).is_err(), "a wrong key opened the backup");
    }
}
