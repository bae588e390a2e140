//! Signed submission receipts (issue 7): every accepted real-time request and every completed batch
//! is answered with a `Receipt` — what arrived (the SHA-256 of the bytes), how it was counted, where
//! it is in the log (commit index), when, and which node says so — signed with that node's Ed25519
//! key (`crate::node_key`). A source keeps the receipt; `dtm receipt verify FILE` checks it offline
//! against the cluster's public keys (`GET /api/v1/audit/keys`), so the source can prove later what
//! it submitted and what DTM answered.
//!
//! The signature covers a canonical byte string built from the fields in a fixed order
//! (`Receipt::canonical_payload`, documented in docs/api.md), never the JSON text: a receipt can be
//! re-indented or have its members reordered and still verify, while any changed value does not.

use std::path::PathBuf;

use anyhow::Context;
use anyhow::bail;
use dtm_model::state;
use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;

use crate::api::AppState;
use crate::node_key::NodeKey;

/// The first line of the signed payload and the `version` member.
pub const VERSION: &str = "dtm-receipt-v1";
/// Largest receipt file (or 201 answer holding one) `dtm receipt verify` reads, in bytes. A records
/// receipt lists at most `RECORDS_PER_REQUEST_MAX` ids, well below this.
pub const RECEIPT_FILE_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Largest keys file (`GET /api/v1/audit/keys` saved) `dtm receipt verify --keys` reads, in bytes.
pub const KEYS_FILE_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// A signed receipt, exactly as it appears in JSON answers (`"receipt": {...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// Always `dtm-receipt-v1`.
    pub version: String,
    /// `records` (a real-time request) or `batch`.
    pub kind: String,
    pub source: String,
    pub dataset: String,
    /// The request's `X-Request-Id` (for batches: of the request that uploaded it).
    pub request_id: String,
    /// The batch id (batches only; absent for real-time requests).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub batch_id: String,
    /// Lowercase hex SHA-256 of the submitted bytes exactly as received.
    pub content_sha256: String,
    pub counts: Counts,
    /// The record ids of a real-time answer, in the order of the records (for a duplicate: the id
    /// of the earlier identical record). Absent for batches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    /// The log index the records were committed at (for batches: of the last chunk).
    pub commit_index: u64,
    /// When the node received the submission, RFC 3339 UTC with milliseconds; the same instant as
    /// `received_at_ms`.
    pub received_at: String,
    pub received_at_ms: u64,
    /// The node that signed (the one that answered).
    pub node_id: u64,
    /// Lowercase hex of the signing node's 32-byte Ed25519 public key.
    pub public_key: String,
    /// Lowercase hex of the 64-byte Ed25519 signature over `canonical_payload()`.
    pub signature: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    /// Records (or batch rows) that arrived.
    pub received: u64,
    /// Records accepted: stored, or recognised as duplicates of stored ones.
    pub accepted: u64,
    /// Records stored (new records and new versions of conflicting ones).
    pub stored: u64,
    pub duplicates: u64,
    pub conflicts: u64,
    /// Rows refused (batches; always 0 for an atomic real-time request).
    pub rejected: u64,
}

/// Why a receipt does not verify. The message names the field or check that failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReceiptError {
    #[error("`version` is `{0}`, not `{VERSION}`")]
    Version(String),
    #[error("`kind` is `{0}`, not `records` or `batch`")]
    Kind(String),
    #[error("`batch_id` must be set on a batch receipt and absent on a records receipt")]
    BatchId,
    #[error("`{0}` holds a control character, which a receipt never has")]
    ControlCharacter(&'static str),
    #[error("an id in `ids` is empty or holds a comma")]
    Id,
    #[error("`{field}` must be {what} in lowercase hex")]
    Hex { field: &'static str, what: &'static str },
    #[error("`received_at` ({received_at}) is not the instant of `received_at_ms` ({expected})")]
    ReceivedAt { received_at: String, expected: String },
    #[error("the signature does not match the receipt's fields and public key: the receipt was altered")]
    Signature,
}

/// `received_at_ms` as RFC 3339 UTC with milliseconds (`2025-11-28T01:02:03.456Z`).
pub fn rfc3339_ms(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        // Beyond year 9999: not a time any node reads from its clock.
        Err(_) => format!("@{ms}ms"),
    }
}

fn plain(field: &'static str, value: &str) -> Result<(), ReceiptError> {
    if value.chars().any(char::is_control) {
        return Err(ReceiptError::ControlCharacter(field));
    }
    Ok(())
}

fn lower_hex(field: &'static str, what: &'static str, value: &str, len: usize) -> Result<Vec<u8>, ReceiptError> {
    let bad = || ReceiptError::Hex { field, what };
    let bytes = hex::decode(value).map_err(|_| bad())?;
    if bytes.len() != len || hex::encode(&bytes) != value {
        return Err(bad());
    }
    Ok(bytes)
}

impl Receipt {
    /// An unsigned receipt: `node_id`, `public_key` and `signature` are set by `sign`.
    #[allow(clippy::too_many_arguments)]
    fn unsigned(
        kind: &str,
        source: &str,
        dataset: &str,
        request_id: &str,
        batch_id: &str,
        content_sha256: &[u8],
        counts: Counts,
        ids: Vec<String>,
        commit_index: u64,
        received_at_ms: u64,
    ) -> Receipt {
        Receipt {
            version: VERSION.into(),
            kind: kind.into(),
            source: source.into(),
            dataset: dataset.into(),
            request_id: request_id.into(),
            batch_id: batch_id.into(),
            content_sha256: hex::encode(content_sha256),
            counts,
            ids,
            commit_index,
            received_at: rfc3339_ms(received_at_ms),
            received_at_ms,
            node_id: 0,
            public_key: String::new(),
            signature: String::new(),
        }
    }

    /// The bytes the signature covers: `dtm-receipt-v1\n`, then one `name=value\n` line per field in
    /// this order: kind, source, dataset, request_id, batch_id (empty for records), content_sha256,
    /// counts.received, counts.accepted, counts.stored, counts.duplicates, counts.conflicts,
    /// counts.rejected, ids (joined with `,`, empty for batches), commit_index, received_at,
    /// received_at_ms, node_id, public_key. Numbers are decimal; text is copied as it is in the
    /// JSON (UTF-8). Control characters are refused in every value and commas in ids, so the
    /// lines cannot be confused with one another.
    pub fn canonical_payload(&self) -> Result<Vec<u8>, ReceiptError> {
        if self.version != VERSION {
            return Err(ReceiptError::Version(self.version.clone()));
        }
        match (self.kind.as_str(), self.batch_id.is_empty()) {
            ("records", true) | ("batch", false) => {}
            ("records" | "batch", _) => return Err(ReceiptError::BatchId),
            (other, _) => return Err(ReceiptError::Kind(other.to_string())),
        }
        if self.ids.iter().any(|id| id.is_empty() || id.contains(',')) {
            return Err(ReceiptError::Id);
        }
        let c = &self.counts;
        let fields: [(&'static str, String); 18] = [
            ("kind", self.kind.clone()),
            ("source", self.source.clone()),
            ("dataset", self.dataset.clone()),
            ("request_id", self.request_id.clone()),
            ("batch_id", self.batch_id.clone()),
            ("content_sha256", self.content_sha256.clone()),
            ("counts.received", c.received.to_string()),
            ("counts.accepted", c.accepted.to_string()),
            ("counts.stored", c.stored.to_string()),
            ("counts.duplicates", c.duplicates.to_string()),
            ("counts.conflicts", c.conflicts.to_string()),
            ("counts.rejected", c.rejected.to_string()),
            ("ids", self.ids.join(",")),
            ("commit_index", self.commit_index.to_string()),
            ("received_at", self.received_at.clone()),
            ("received_at_ms", self.received_at_ms.to_string()),
            ("node_id", self.node_id.to_string()),
            ("public_key", self.public_key.clone()),
        ];
        let mut out = format!("{VERSION}\n");
        for (name, value) in &fields {
            plain(name, value)?;
            out.push_str(&format!("{name}={value}\n"));
        }
        Ok(out.into_bytes())
    }

    /// Signs with `sign` as node `node_id` holding `public_key`.
    pub fn sign_with(
        mut self,
        node_id: u64,
        public_key: &[u8],
        sign: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Result<Receipt, ReceiptError> {
        self.node_id = node_id;
        self.public_key = hex::encode(public_key);
        let payload = self.canonical_payload()?;
        self.signature = hex::encode(sign(&payload));
        Ok(self)
    }

    pub fn sign(self, key: &NodeKey) -> Result<Receipt, ReceiptError> {
        self.sign_with(key.node_id, &key.public_key(), |m| key.sign(m))
    }

    /// Checks the receipt's form and its signature with the public key it names. Whether that key
    /// is one of the cluster's is a separate question (`KeyList::check`).
    pub fn verify(&self) -> Result<(), ReceiptError> {
        let payload = self.canonical_payload()?;
        lower_hex("content_sha256", "a 32-byte SHA-256", &self.content_sha256, 32)?;
        let expected = rfc3339_ms(self.received_at_ms);
        if self.received_at != expected {
            return Err(ReceiptError::ReceivedAt { received_at: self.received_at.clone(), expected });
        }
        let public_key = lower_hex("public_key", "a 32-byte Ed25519 public key", &self.public_key, 32)?;
        let signature = lower_hex("signature", "a 64-byte Ed25519 signature", &self.signature, 64)?;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public_key)
            .verify(&payload, &signature)
            .map_err(|_| ReceiptError::Signature)
    }
}

// ---- Receipts in answers ----

/// What a real-time submission's receipt needs besides the answer's counts, taken before the
/// submission is proposed.
pub struct RecordsDraft {
    pub source: String,
    pub dataset: String,
    pub request_id: String,
    /// SHA-256 of the request body as received (for SOAP, of the `<dtm:RecordsJson>` text; for
    /// gRPC, of the JSON array the records were joined into).
    pub content_sha256: [u8; 32],
    pub received_at_ms: u64,
}

impl RecordsDraft {
    pub fn new(source: &str, dataset: &str, request_id: &str, body: &[u8], received_at_ms: u64) -> RecordsDraft {
        use sha2::Digest;
        RecordsDraft {
            source: source.into(),
            dataset: dataset.into(),
            request_id: request_id.into(),
            content_sha256: sha2::Sha256::digest(body).into(),
            received_at_ms,
        }
    }
}

/// Adds `"receipt"` to the answer of an accepted real-time request (`records::commit`'s body),
/// signed by this node; the counts, ids and commit index are the answer's own. Nothing is added
/// when the node has no signing key (in-process tests).
pub fn attach_records(state: &AppState, answer: &mut Value, draft: RecordsDraft) {
    let Some(key) = &state.audit.node_key else { return };
    let num = |k: &str| answer[k].as_u64().unwrap_or(0);
    let ids: Vec<String> =
        answer["ids"].as_array().into_iter().flatten().filter_map(Value::as_str).map(String::from).collect();
    let counts = Counts {
        received: ids.len() as u64,
        accepted: num("accepted"),
        stored: num("stored"),
        duplicates: num("duplicates"),
        conflicts: num("conflicts"),
        rejected: 0,
    };
    let r = Receipt::unsigned(
        "records",
        &draft.source,
        &draft.dataset,
        &draft.request_id,
        "",
        &draft.content_sha256,
        counts,
        ids,
        num("commit_index"),
        draft.received_at_ms,
    );
    attach(answer, key, r);
}

/// Adds `"receipt"` to a batch answer (`POST .../batches`, `GET /batches/{id}`, SOAP), signed at
/// answer time by the answering node. Only a completed batch gets one: a refused or aborted batch
/// is answered with an error, and its stored receipt says why.
pub fn attach_batch(state: &AppState, batch: &state::BatchReceipt, answer: &mut Value) {
    let Some(key) = &state.audit.node_key else { return };
    if batch.status != "completed" {
        return;
    }
    let counts = Counts {
        received: batch.received,
        accepted: batch.accepted,
        stored: batch.accepted.saturating_sub(batch.duplicates),
        duplicates: batch.duplicates,
        conflicts: batch.conflicts,
        rejected: batch.rejected,
    };
    let r = Receipt::unsigned(
        "batch",
        &batch.source,
        &batch.dataset,
        &batch.request_id,
        &batch.batch_id,
        &batch.content_sha256,
        counts,
        Vec::new(),
        batch.records_commit_index,
        batch.started_at_ms,
    );
    attach(answer, key, r);
}

fn attach(answer: &mut Value, key: &NodeKey, r: Receipt) {
    match r.sign(key).map(|r| serde_json::to_value(&r)) {
        Ok(Ok(v)) => answer["receipt"] = v,
        // Values come from HTTP headers and checked ids, which never hold control characters; a
        // receipt that cannot be signed is left out rather than signed ambiguously.
        Ok(Err(e)) => tracing::warn!(error = %e, "could not encode a receipt"),
        Err(e) => tracing::warn!(error = %e, "a receipt was left out of an answer"),
    }
}

/// The receipt of an answer as JSON text (gRPC `receipt_json`, SOAP `<dtm:Receipt>`); empty when
/// the answer has none.
pub fn text_of(answer: &Value) -> String {
    match answer.get("receipt") {
        Some(r) if r.is_object() => r.to_string(),
        _ => String::new(),
    }
}

/// The cluster's node keys as `GET /api/v1/audit/keys` lists them: (node id, public key hex).
pub struct KeyList(Vec<(u64, String)>);

impl KeyList {
    /// Reads the keys answer (`{"keys": [...]}`) or a bare array of its entries.
    pub fn from_json(v: &Value) -> anyhow::Result<KeyList> {
        let entries = match v {
            Value::Array(a) => a,
            _ => v["keys"].as_array().context("the key list has no `keys` array (save GET /api/v1/audit/keys)")?,
        };
        let mut keys = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let node_id = e["node_id"].as_u64().with_context(|| format!("key {i} has no numeric `node_id`"))?;
            let pk = e["public_key"].as_str().with_context(|| format!("key {i} has no `public_key` text"))?;
            keys.push((node_id, pk.to_ascii_lowercase()));
        }
        Ok(KeyList(keys))
    }

    /// Whether the receipt's signer (node id and key) is one of the cluster's keys.
    pub fn check(&self, r: &Receipt) -> anyhow::Result<()> {
        if self.0.iter().any(|(n, pk)| *n == r.node_id && *pk == r.public_key) {
            return Ok(());
        }
        if self.0.iter().any(|(_, pk)| *pk == r.public_key) {
            bail!("the signing key is in the cluster's key list, but for another node than node {}", r.node_id);
        }
        bail!(
            "the signing key {} (node {}) is not one of the cluster's {} node keys: the receipt was not signed by this cluster",
            r.public_key,
            r.node_id,
            self.0.len()
        )
    }
}

// ---- `dtm receipt` ----

#[derive(clap::Subcommand)]
pub enum ReceiptCommand {
    /// Verify a submission receipt offline: exit 0 if valid, non-zero naming what failed.
    Verify(VerifyArgs),
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The receipt JSON, or a whole answer holding it as `receipt` (a REST 201, a batch status).
    pub file: PathBuf,
    /// The cluster's node keys: the saved answer of `GET /api/v1/audit/keys`. The receipt's key
    /// must be in it.
    #[arg(long, conflicts_with_all = ["nodes", "cluster"])]
    pub keys: Option<PathBuf>,
    /// Instead of --keys: read the key list from this node (HTTPS URL; repeatable).
    #[arg(long = "node", value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// The cluster CA certificate (PEM), with --node.
    #[arg(long, visible_alias = "ca", env = "DTM_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Instead of --keys: a demo.json giving the nodes and the CA.
    #[arg(long)]
    pub cluster: Option<PathBuf>,
}

fn read_limited(path: &std::path::Path, limit: u64, what: &str) -> anyhow::Result<Value> {
    use std::io::Read;
    let file = std::fs::File::open(path).with_context(|| format!("reading {what} {}", path.display()))?;
    let mut text = Vec::new();
    file.take(limit + 1).read_to_end(&mut text).with_context(|| format!("reading {what} {}", path.display()))?;
    if text.len() as u64 > limit {
        bail!("{what} {} is larger than {limit} bytes", path.display());
    }
    serde_json::from_slice(&text).with_context(|| format!("{what} {} is not JSON", path.display()))
}

/// The receipt in a file: the receipt itself or an answer with a `receipt` member.
pub fn receipt_of(v: Value) -> anyhow::Result<Receipt> {
    let v = match v.get("receipt") {
        Some(r) if r.is_object() => r.clone(),
        _ => v,
    };
    if v.get("signature").is_none() {
        bail!("no receipt here: neither a receipt nor an answer with a `receipt` member");
    }
    serde_json::from_value(v).context("the receipt's fields are not those of a dtm-receipt-v1 receipt")
}

pub async fn run(command: ReceiptCommand) -> anyhow::Result<()> {
    let ReceiptCommand::Verify(args) = command;
    let receipt = receipt_of(read_limited(&args.file, RECEIPT_FILE_BYTES_MAX, "receipt")?)?;
    receipt.verify().map_err(|e| anyhow::anyhow!("receipt NOT valid: {e}"))?;
    let what = match receipt.kind.as_str() {
        "batch" => format!("batch {}", receipt.batch_id),
        _ => format!("{} records", receipt.counts.received),
    };
    let keys_from = if let Some(path) = &args.keys {
        let keys = KeyList::from_json(&read_limited(path, KEYS_FILE_BYTES_MAX, "keys file")?)?;
        keys.check(&receipt).map_err(|e| anyhow::anyhow!("receipt NOT valid: {e}"))?;
        Some(format!("the key list in {}", path.display()))
    } else if !args.nodes.is_empty() || args.cluster.is_some() {
        let target = crate::client::Target {
            nodes: args.nodes.clone(),
            ca_cert: args.ca_cert.clone(),
            token: None,
            cluster: args.cluster.clone(),
        };
        let client = crate::client::Client::from_target(&target)?;
        let v = client.expect(reqwest::Method::GET, "/api/v1/audit/keys?consistency=linearizable", None).await?;
        KeyList::from_json(&v)?.check(&receipt).map_err(|e| anyhow::anyhow!("receipt NOT valid: {e}"))?;
        Some("the cluster's key list (GET /api/v1/audit/keys)".to_string())
    } else {
        None
    };
    println!(
        "receipt valid: {what} of source `{}` to dataset `{}`, content sha256 {}, commit index {}, received {}, signed by node {}",
        receipt.source,
        receipt.dataset,
        receipt.content_sha256,
        receipt.commit_index,
        receipt.received_at,
        receipt.node_id
    );
    match keys_from {
        Some(from) => println!("signing key {} is node {}'s in {from}", receipt.public_key, receipt.node_id),
        None => println!(
            "WARNING: the signing key {} was NOT checked against the cluster's key list; \
             give --keys KEYS.json (saved from GET /api/v1/audit/keys) or --node URL to check it",
            receipt.public_key
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ring::signature::Ed25519KeyPair;
    use ring::signature::KeyPair;
    use serde_json::json;

    use super::*;

    fn key() -> Ed25519KeyPair {
        let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("randomness");
        Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("a fresh key")
    }

    fn signed(kind: &str, batch_id: &str, ids: Vec<String>, k: &Ed25519KeyPair) -> Receipt {
        let counts = Counts { received: 3, accepted: 3, stored: 2, duplicates: 1, conflicts: 0, rejected: 0 };
        Receipt::unsigned(kind, "src-a", "etx", "req-1", batch_id, &[7u8; 32], counts, ids, 42, 1_764_291_723_456)
            .sign_with(2, k.public_key().as_ref(), |m| k.sign(m).as_ref().to_vec())
            .expect("signable")
    }

    fn records(k: &Ed25519KeyPair) -> Receipt {
        signed("records", "", vec!["id-1".into(), "id-2".into(), "id-1".into()], k)
    }

    #[test]
    fn a_signed_receipt_verifies_and_survives_a_json_round_trip() {
        let k = key();
        for r in [records(&k), signed("batch", "b-1", Vec::new(), &k)] {
            assert_eq!(r.verify(), Ok(()));
            let text = serde_json::to_string_pretty(&r).expect("json");
            let back: Receipt = serde_json::from_str(&text).expect("parse");
            assert_eq!(back, r);
            assert_eq!(back.verify(), Ok(()));
        }
        assert_eq!(records(&k).received_at, "2025-11-28T01:02:03.456Z");
    }

    #[test]
    fn the_payload_is_the_documented_lines_in_order() {
        let k = key();
        let r = records(&k);
        let text = String::from_utf8(r.canonical_payload().expect("payload")).expect("utf-8");
        let expected = format!(
            "dtm-receipt-v1\nkind=records\nsource=src-a\ndataset=etx\nrequest_id=req-1\nbatch_id=\n\
             content_sha256={}\ncounts.received=3\ncounts.accepted=3\ncounts.stored=2\ncounts.duplicates=1\n\
             counts.conflicts=0\ncounts.rejected=0\nids=id-1,id-2,id-1\ncommit_index=42\n\
             received_at=2025-11-28T01:02:03.456Z\nreceived_at_ms=1764291723456\nnode_id=2\npublic_key={}\n",
            "07".repeat(32),
            hex::encode(k.public_key().as_ref())
        );
        assert_eq!(text, expected);
    }

    /// Every member of the JSON, changed alone, makes verification fail.
    #[test]
    fn any_changed_field_fails() {
        let k = key();
        let r = records(&k);
        let original = serde_json::to_value(&r).expect("json");
        let mut changes: Vec<(&str, Value)> = vec![
            ("version", json!("dtm-receipt-v2")),
            ("kind", json!("batch")),
            ("source", json!("src-b")),
            ("dataset", json!("etx2")),
            ("request_id", json!("req-2")),
            ("batch_id", json!("b-1")),
            ("content_sha256", json!("08".repeat(32))),
            ("ids", json!(["id-1", "id-2"])),
            ("ids", json!(["id-1", "id-2", "id-3"])),
            ("commit_index", json!(43)),
            ("received_at", json!("2025-11-28T01:02:03.457Z")),
            ("received_at_ms", json!(1_764_291_723_457u64)),
            ("node_id", json!(3)),
            ("public_key", json!(hex::encode(key().public_key().as_ref()))),
            ("signature", json!(hex::encode([0u8; 64]))),
            ("signature", json!(r.signature.to_uppercase())),
        ];
        for count in ["received", "accepted", "stored", "duplicates", "conflicts", "rejected"] {
            let mut counts = original["counts"].clone();
            counts[count] = json!(counts[count].as_u64().unwrap_or(0) + 1);
            changes.push(("counts", counts));
        }
        for (field, value) in changes {
            let mut v = original.clone();
            v[field] = value.clone();
            let outcome = serde_json::from_value::<Receipt>(v).map_err(|e| e.to_string()).and_then(|changed| {
                assert_ne!(changed, r, "{field} = {value} changed nothing");
                changed.verify().map_err(|e| e.to_string())
            });
            assert!(outcome.is_err(), "changing {field} to {value} still verifies");
        }
        // An added member is refused too: nothing unsigned can ride along.
        let mut v = original.clone();
        v["note"] = json!("added later");
        assert!(serde_json::from_value::<Receipt>(v).is_err());
    }

    #[test]
    fn a_valid_signature_by_a_key_outside_the_list_is_refused_by_the_list() {
        let ours = key();
        let theirs = key();
        let r = records(&ours);
        let list = json!({"keys": [{"node_id": 2, "public_key": hex::encode(ours.public_key().as_ref())}]});
        let keys = KeyList::from_json(&list).expect("key list");
        assert!(keys.check(&r).is_ok());
        let forged = records(&theirs);
        assert_eq!(forged.verify(), Ok(()));
        assert!(keys.check(&forged).is_err());
        let mut other_node = records(&ours);
        other_node.node_id = 1;
        assert!(keys.check(&other_node).is_err());
    }

    #[test]
    fn values_that_would_blur_the_payload_are_refused() {
        let k = key();
        let mut r = records(&k);
        r.request_id = "a\nkind=batch".into();
        assert_eq!(r.canonical_payload(), Err(ReceiptError::ControlCharacter("request_id")));
        let mut r = records(&k);
        r.ids = vec!["a,b".into()];
        assert_eq!(r.canonical_payload(), Err(ReceiptError::Id));
        let mut r = records(&k);
        r.batch_id = "b-1".into();
        assert_eq!(r.canonical_payload(), Err(ReceiptError::BatchId));
    }

    #[test]
    fn an_answer_holding_a_receipt_is_read_like_the_receipt() {
        let k = key();
        let r = records(&k);
        let answer = json!({"accepted": 3, "receipt": r});
        assert_eq!(receipt_of(answer).expect("receipt"), r);
        assert!(receipt_of(json!({"accepted": 3})).is_err());
    }
}
