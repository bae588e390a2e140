//! The key layout of the application tables. Every key starts with a short ASCII table name and a
//! `/`; numbers are big-endian so that keys sort in log order. Ids are restricted at the API to
//! characters other than NUL, which separates the parts of compound keys.

pub const SOURCE: &[u8] = b"src/";
pub const API_KEY: &[u8] = b"key/";
pub const ADMIN_TOKEN: &[u8] = b"adm/";
pub const DATASET: &[u8] = b"ds/";
pub const RECORD: &[u8] = b"rec/";
pub const IDEMPOTENCY: &[u8] = b"idem/";
pub const RECORD_COUNT: &[u8] = b"cnt/";
pub const IDEMPOTENCY_EXPIRY: &[u8] = b"idx/";

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

/// The prefix under which all records of a dataset lie.
pub fn records_of(dataset: &str) -> Vec<u8> {
    let mut k = join(RECORD, &[dataset.as_bytes()]);
    k.push(0);
    k
}

pub fn idempotency(source: &str, key: &str) -> Vec<u8> {
    join(IDEMPOTENCY, &[source.as_bytes(), key.as_bytes()])
}

pub fn record_count(dataset: &str) -> Vec<u8> {
    join(RECORD_COUNT, &[dataset.as_bytes()])
}

/// Expiry index of idempotency entries: `idx/<expires_at_ms be64><idempotency key>`; the value is
/// the idempotency table key it expires.
pub fn idempotency_expiry(expires_at_ms: u64, idempotency_key: &[u8]) -> Vec<u8> {
    let mut k = IDEMPOTENCY_EXPIRY.to_vec();
    k.extend_from_slice(&expires_at_ms.to_be_bytes());
    k.extend_from_slice(idempotency_key);
    k
}

/// The end (exclusive) of the expiry index range that has expired at `now_ms`.
pub fn idempotency_expired_before(now_ms: u64) -> Vec<u8> {
    let mut k = IDEMPOTENCY_EXPIRY.to_vec();
    k.extend_from_slice(&now_ms.to_be_bytes());
    k
}

pub const DATASET_VERSION: &[u8] = b"dsv/";
pub const NATURAL_KEY: &[u8] = b"nk/";
pub const CONFLICT: &[u8] = b"conf/";
pub const DATASET_STATS: &[u8] = b"dst/";
pub const AGGREGATE: &[u8] = b"agg/";
pub const REFERENCE: &[u8] = b"ref/";
/// The cluster secrets (one key).
pub const CLUSTER_SECRETS: &[u8] = b"sec/cluster";

/// Every version of a dataset's definition: `dsv/<dataset>\0<version be32>`. `ds/<dataset>` holds
/// the latest.
pub fn dataset_version(dataset: &str, version: u32) -> Vec<u8> {
    let mut k = dataset_versions_of(dataset);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

pub fn dataset_versions_of(dataset: &str) -> Vec<u8> {
    let mut k = join(DATASET_VERSION, &[dataset.as_bytes()]);
    k.push(0);
    k
}

/// The natural-key index: `nk/<dataset>\0<hmac>`. The key's raw value is never stored in a key.
pub fn natural_key(dataset: &str, hash: &[u8]) -> Vec<u8> {
    join(NATURAL_KEY, &[dataset.as_bytes(), hash])
}

/// Conflicts in commit order: `conf/<dataset>\0<index be64><position be32>`.
pub fn conflict(dataset: &str, index: u64, position: u32) -> Vec<u8> {
    let mut k = conflicts_of(dataset);
    k.extend_from_slice(&index.to_be_bytes());
    k.extend_from_slice(&position.to_be_bytes());
    k
}

pub fn conflicts_of(dataset: &str) -> Vec<u8> {
    let mut k = join(CONFLICT, &[dataset.as_bytes()]);
    k.push(0);
    k
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
    let mut k = join(AGGREGATE, &[dataset.as_bytes()]);
    k.push(0);
    k
}

/// Reference tables: `ref/<dataset>\0<key value>` → the latest record with that key (JSON).
pub fn reference(dataset: &str, key: &str) -> Vec<u8> {
    join(REFERENCE, &[dataset.as_bytes(), key.as_bytes()])
}
