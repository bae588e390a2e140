//! The key layout of the application tables. Every key starts with a short ASCII table name and a
//! `/`; numbers are big-endian so that keys sort in log order. Ids are restricted at the API to
//! characters other than NUL, which separates the parts of compound keys.

pub const SOURCE: &[u8] = b"src/";
pub const API_KEY: &[u8] = b"key/";
pub const ADMIN_TOKEN: &[u8] = b"adm/";
pub const DATASET: &[u8] = b"ds/";
pub const RECORD: &[u8] = b"rec/";
pub const RECORD_BLOCK: &[u8] = b"recb/";
pub const IDEMPOTENCY: &[u8] = b"idem/";
pub const RECORD_COUNT: &[u8] = b"cnt/";
pub const IDEMPOTENCY_EXPIRY: &[u8] = b"idx/";
pub const IDEMPOTENCY_EXPIRY_BY_ENTRY: &[u8] = b"idxe/";

/// `<table><id>\0`: the prefix under which a table's keys for one dataset (or source) lie.
fn prefix_of(table: &[u8], id: &str) -> Vec<u8> {
    let mut k = join(table, &[id.as_bytes()]);
    k.push(0);
    k
}

fn join(table: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut k = table.to_vec();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

pub fn source(id: &str) -> Vec<u8> {
    join(SOURCE, &[id.as_bytes()])
}

pub fn api_key(key_id: &str) -> Vec<u8> {
    join(API_KEY, &[key_id.as_bytes()])
}

pub fn admin_token(token_id: &str) -> Vec<u8> {
    join(ADMIN_TOKEN, &[token_id.as_bytes()])
}

pub fn dataset(id: &str) -> Vec<u8> {
    join(DATASET, &[id.as_bytes()])
}

/// Records of a dataset in commit order: `rec/<dataset>\0<index be64><position be32>`.
pub fn record(dataset: &str, index: u64, position: u32) -> Vec<u8> {
    let mut k = records_of(dataset);
    k.extend_from_slice(&index.to_be_bytes());
    k.extend_from_slice(&position.to_be_bytes());
    k
}

/// The records one log entry stored in a dataset (`records.rs`): `recb/<dataset>\0<index be64>`.
pub fn record_block(dataset: &str, index: u64) -> Vec<u8> {
    let mut k = record_blocks_of(dataset);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// The prefix under which all record blocks of a dataset lie.
pub fn record_blocks_of(dataset: &str) -> Vec<u8> {
    prefix_of(RECORD_BLOCK, dataset)
}

/// The log index of a record block's key.
pub fn record_block_index(block_key: &[u8]) -> Option<u64> {
    let n = block_key.len();
    let tail = block_key.get(n.checked_sub(8)?..)?;
    Some(u64::from_be_bytes(tail.try_into().ok()?))
}

/// The dataset, log index and position a record's table key names.
pub fn split_record_key(table_key: &[u8]) -> Option<(&str, u64, u32)> {
    let rest = table_key.strip_prefix(RECORD)?;
    let n = rest.len().checked_sub(13)?;
    if rest[n] != 0 {
        return None;
    }
    let dataset = std::str::from_utf8(&rest[..n]).ok()?;
    let (index, position) = record_position(table_key)?;
    Some((dataset, index, position))
}

/// The prefix under which all records of a dataset lie.
pub fn records_of(dataset: &str) -> Vec<u8> {
    prefix_of(RECORD, dataset)
}

pub fn idempotency(source: &str, key: &str) -> Vec<u8> {
    join(IDEMPOTENCY, &[source.as_bytes(), key.as_bytes()])
}

pub fn record_count(dataset: &str) -> Vec<u8> {
    join(RECORD_COUNT, &[dataset.as_bytes()])
}

/// Expiry index of idempotency entries, one key per idempotency entry, as written before the
/// per-log-entry index (`idempotency_expiry_of_entry`): `idx/<expires_at_ms be64><idempotency
/// key>`; the value is the idempotency table key it expires. Still expired, so stores written by
/// older versions drain; nothing writes it any more.
pub fn idempotency_expiry(expires_at_ms: u64, idempotency_key: &[u8]) -> Vec<u8> {
    let mut k = IDEMPOTENCY_EXPIRY.to_vec();
    k.extend_from_slice(&expires_at_ms.to_be_bytes());
    k.extend_from_slice(idempotency_key);
    k
}

/// The end (exclusive) of the range of `table` (`IDEMPOTENCY_EXPIRY` or
/// `IDEMPOTENCY_EXPIRY_BY_ENTRY`) that has expired at `now_ms`.
pub fn idempotency_expired_before(table: &[u8], now_ms: u64) -> Vec<u8> {
    let mut k = table.to_vec();
    k.extend_from_slice(&now_ms.to_be_bytes());
    k
}

/// Expiry index of the idempotency entries one log entry wrote:
/// `idxe/<expires_at_ms be64><log index be64>`, the value an `IdempotencyExpiry` listing them. One
/// key per log entry, not per submission: a write fewer per submission.
pub fn idempotency_expiry_of_entry(expires_at_ms: u64, log_index: u64) -> Vec<u8> {
    let mut k = IDEMPOTENCY_EXPIRY_BY_ENTRY.to_vec();
    k.extend_from_slice(&expires_at_ms.to_be_bytes());
    k.extend_from_slice(&log_index.to_be_bytes());
    k
}

pub const DATASET_VERSION: &[u8] = b"dsv/";
pub const NATURAL_KEY: &[u8] = b"nk/";
/// How many bytes of the key's HMAC name an entry of a dataset's natural-key index:
/// `nkl/<dataset>` → one byte, written when the dataset is first defined. Datasets defined before
/// it existed have none and use the whole HMAC (32 bytes).
pub const NATURAL_KEY_LAYOUT: &[u8] = b"nkl/";
/// The HMAC bytes that name an index entry of a dataset defined since the layout is kept: 128 bits
/// of a keyed HMAC-SHA256, so that two natural keys share an entry with a chance of about 2^-64
/// after 2^32 keys, and nobody without the key can make them. The index holds an entry per
/// record; each byte of its key costs about four on disk (sled's tree).
pub const NATURAL_KEY_HASH_BYTES: u8 = 16;
/// The HMAC bytes that name an entry of a dataset without a layout (the whole HMAC-SHA256).
pub const NATURAL_KEY_HASH_BYTES_BEFORE_LAYOUT: usize = 32;
/// The bytes of a version's content SHA-256 that its natural-key index entry keeps (entries written
/// before kept all 32, and are compared whole). A record is a duplicate when these match: two
/// different contents under one natural key would have to agree on 128 bits, which nobody can
/// arrange for a record someone else sent (a second preimage), and a source arranging it for its
/// own records needs about 2^64 hashes to lose one of them.
pub const KEY_VERSION_CONTENT_BYTES: usize = 16;
pub const CONFLICT: &[u8] = b"conf/";
pub const DATASET_STATS: &[u8] = b"dst/";
pub const AGGREGATE: &[u8] = b"agg/";
pub const REFERENCE: &[u8] = b"ref/";
/// The cluster secrets (one key).
pub const CLUSTER_SECRETS: &[u8] = b"sec/cluster";
/// The data-key rotation epoch (u64 BE): every node rotates its own keys up to it.
pub const KEY_EPOCH: &[u8] = b"sec/key_epoch";

/// Every version of a dataset's definition: `dsv/<dataset>\0<version be32>`. `ds/<dataset>` holds
/// the latest.
pub fn dataset_version(dataset: &str, version: u32) -> Vec<u8> {
    let mut k = dataset_versions_of(dataset);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

pub fn dataset_versions_of(dataset: &str) -> Vec<u8> {
    prefix_of(DATASET_VERSION, dataset)
}

/// The natural-key index: `nk/<dataset>\0<hmac>`, the HMAC cut to `hash_bytes` (the dataset's
/// `natural_key_layout`). The key's raw value is never stored in a key.
pub fn natural_key(dataset: &str, hash: &[u8], hash_bytes: usize) -> Vec<u8> {
    join(NATURAL_KEY, &[dataset.as_bytes(), hash.get(..hash_bytes).unwrap_or(hash)])
}

pub fn natural_key_layout(dataset: &str) -> Vec<u8> {
    join(NATURAL_KEY_LAYOUT, &[dataset.as_bytes()])
}

/// Conflicts in commit order: `conf/<dataset>\0<index be64><position be32>`.
pub fn conflict(dataset: &str, index: u64, position: u32) -> Vec<u8> {
    let mut k = conflicts_of(dataset);
    k.extend_from_slice(&index.to_be_bytes());
    k.extend_from_slice(&position.to_be_bytes());
    k
}

pub fn conflicts_of(dataset: &str) -> Vec<u8> {
    prefix_of(CONFLICT, dataset)
}

pub fn dataset_stats(dataset: &str) -> Vec<u8> {
    join(DATASET_STATS, &[dataset.as_bytes()])
}

/// Aggregate cells: `agg/<dataset>\0<cell key>` (see `dtm_dataset::Contribution::cell_key`).
pub fn aggregate_cell(dataset: &str, cell_key: &[u8]) -> Vec<u8> {
    let mut k = aggregates_of(dataset);
    k.extend_from_slice(cell_key);
    k
}

pub fn aggregates_of(dataset: &str) -> Vec<u8> {
    prefix_of(AGGREGATE, dataset)
}

/// Reference tables: `ref/<dataset>\0<key value>` → the latest record with that key (JSON).
pub fn reference(dataset: &str, key: &str) -> Vec<u8> {
    join(REFERENCE, &[dataset.as_bytes(), key.as_bytes()])
}

// ---- Identity (issue 5): users, sessions, OAuth clients, token-signing key, security events. ----

pub const USER: &[u8] = b"usr/";
pub const SESSION: &[u8] = b"ses/";
pub const OAUTH_CLIENT: &[u8] = b"oac/";
/// Security events in commit order: `sev/<index be64><position be32>`.
pub const SECURITY_EVENT: &[u8] = b"sev/";
/// How many security events are kept (a big-endian u64); the oldest are trimmed past the limit.
pub const SECURITY_EVENT_COUNT: &[u8] = b"sevc/";
/// The cluster's token-signing key (one key).
pub const TOKEN_SIGNING_KEY: &[u8] = b"sec/token-signing";

pub fn user(username: &str) -> Vec<u8> {
    join(USER, &[username.as_bytes()])
}

/// Sessions by the SHA-256 of their id; the id itself is never stored.
pub fn session(session_sha256: &[u8]) -> Vec<u8> {
    join(SESSION, &[session_sha256])
}

pub fn oauth_client(client_id: &str) -> Vec<u8> {
    join(OAUTH_CLIENT, &[client_id.as_bytes()])
}

pub fn security_event(index: u64, position: u32) -> Vec<u8> {
    let mut k = SECURITY_EVENT.to_vec();
    k.extend_from_slice(&index.to_be_bytes());
    k.extend_from_slice(&position.to_be_bytes());
    k
}

// --- API gateway (issue 5): run-time rate limits, IP rules, blocked addresses. ---

/// The run-time rate limits (one key, a `RateLimits`).
pub const GATEWAY_RATE_LIMITS: &[u8] = b"gw/rate-limits";
/// The IP allow/deny rules (one key, an `IpRules`).
pub const GATEWAY_IP_RULES: &[u8] = b"gw/ip-rules";
/// Blocked addresses: `gwb/<address text>` → `AddressBlock`.
pub const GATEWAY_BLOCK: &[u8] = b"gwb/";

pub fn gateway_block(address: &str) -> Vec<u8> {
    join(GATEWAY_BLOCK, &[address.as_bytes()])
}

// --- Batch uploads (issue 6): receipts. ---

/// Batch receipts: `bat/<batch id>` → `BatchReceipt`.
pub const BATCH: &[u8] = b"bat/";

pub fn batch(batch_id: &str) -> Vec<u8> {
    join(BATCH, &[batch_id.as_bytes()])
}

// --- Audit trail (issue 7). ---

/// The chain, in blocks: `aud/<seq of the block's first entry be64>` → `AuditBlock`.
pub const AUDIT_ENTRY: &[u8] = b"aud/";
/// The chain's head and Merkle frontier (one key, an `AuditHead`).
pub const AUDIT_HEAD: &[u8] = b"audh/head";
/// Checkpoints: `audc/<size be64>` → `AuditCheckpoint`.
pub const AUDIT_CHECKPOINT: &[u8] = b"audc/";
/// Time index of the blocks: `audt/<latest at_ms in the block be64><first seq be64>` → the earliest
/// at_ms in the block (be64). A block spans at most `audit::BLOCK_SPAN_MS_MAX`.
pub const AUDIT_TIME: &[u8] = b"audt/";
/// Stored audit reports: `audr/<id>` → `AuditReport`.
pub const AUDIT_REPORT: &[u8] = b"audr/";
/// Node signing keys: `nkey/<node id be64><public key>` → `NodeKey`.
pub const NODE_KEY: &[u8] = b"nkey/";
/// The connection log: `conn/<source>\0<yyyymmdd be32>` → `ConnectionDay`.
pub const CONNECTION_DAY: &[u8] = b"conn/";

/// The key of the block whose first entry is `first_seq`.
pub fn audit_block(first_seq: u64) -> Vec<u8> {
    let mut k = AUDIT_ENTRY.to_vec();
    k.extend_from_slice(&first_seq.to_be_bytes());
    k
}

pub fn audit_checkpoint(size: u64) -> Vec<u8> {
    let mut k = AUDIT_CHECKPOINT.to_vec();
    k.extend_from_slice(&size.to_be_bytes());
    k
}

pub fn audit_by_time(latest_at_ms: u64, first_seq: u64) -> Vec<u8> {
    let mut k = AUDIT_TIME.to_vec();
    k.extend_from_slice(&latest_at_ms.to_be_bytes());
    k.extend_from_slice(&first_seq.to_be_bytes());
    k
}

pub fn audit_report(id: &str) -> Vec<u8> {
    join(AUDIT_REPORT, &[id.as_bytes()])
}

pub fn node_key(node_id: u64, public_key: &[u8]) -> Vec<u8> {
    let mut k = NODE_KEY.to_vec();
    k.extend_from_slice(&node_id.to_be_bytes());
    k.extend_from_slice(public_key);
    k
}

pub fn connection_day(source: &str, day: u32) -> Vec<u8> {
    let mut k = connection_days_of(source);
    k.extend_from_slice(&day.to_be_bytes());
    k
}

pub fn connection_days_of(source: &str) -> Vec<u8> {
    prefix_of(CONNECTION_DAY, source)
}

// --- Lineage and versions (issue 7). ---

/// Where each record is stored: `rid/<record id>` → its `rec/…` table key (raw bytes), for ids that
/// are not of the submission scheme (`rsub/` below; records stored before it existed). Record ids
/// are unique across datasets, so lineage can be asked by id alone.
pub const RECORD_ID: &[u8] = b"rid/";
/// Where a submission's records are stored, for ids `<submission id>.<n>`: `rsub/<submission id>` →
/// `RecordLocation` (see `dtm_model::record_id`; replaces `rid/` for such ids).
pub const RECORD_SUBMISSION: &[u8] = b"rsub/";
/// The version that follows a record: `rsup/<record id>` → `RecordSuccessor` (only for records
/// that a conflict or a correction followed).
pub const RECORD_SUCCESSOR: &[u8] = b"rsup/";
/// Who contributed to each aggregate cell: `aggl/<dataset>\0<cell key>` → `CellLineage`.
pub const CELL_LINEAGE: &[u8] = b"aggl/";

pub fn record_id(id: &str) -> Vec<u8> {
    join(RECORD_ID, &[id.as_bytes()])
}

pub fn record_submission(submission: &str) -> Vec<u8> {
    join(RECORD_SUBMISSION, &[submission.as_bytes()])
}

pub fn record_successor(id: &str) -> Vec<u8> {
    join(RECORD_SUCCESSOR, &[id.as_bytes()])
}

pub fn cell_lineage(dataset: &str, cell_key: &[u8]) -> Vec<u8> {
    let mut k = prefix_of(CELL_LINEAGE, dataset);
    k.extend_from_slice(cell_key);
    k
}

/// The commit index and position a record's table key ends with (`record`'s inverse for the tail).
pub fn record_position(table_key: &[u8]) -> Option<(u64, u32)> {
    let n = table_key.len();
    if n < 12 {
        return None;
    }
    let index = u64::from_be_bytes(table_key[n - 12..n - 4].try_into().ok()?);
    let position = u32::from_be_bytes(table_key[n - 4..].try_into().ok()?);
    Some((index, position))
}
