//! Named limits of the node: what the HTTPS gateway accepts. Units are last in every name.

use std::time::Duration;

/// Largest real-time request body (`POST .../records`), in bytes. Larger uploads use batches. A
/// real-time request is one log entry (it is atomic), and an entry must cross to a follower within
/// one heartbeat interval, so this stays small.
pub const RECORDS_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest body of an admin request (source, dataset definition), in bytes.
pub const ADMIN_BODY_BYTES_MAX: usize = 1024 * 1024;
/// How much of an oversized body is read and discarded so the client can read the 413, and for
/// how long; past either the connection is closed.
pub const OVERSIZED_BODY_DISCARD_BYTES_MAX: usize = 64 * 1024 * 1024;
pub const OVERSIZED_BODY_DISCARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Records in one real-time request.
pub const RECORDS_PER_REQUEST_MAX: usize = 10_000;
/// Records returned per page by `GET .../records`.
pub const RECORDS_PAGE_MAX: usize = 1_000;
pub const RECORDS_PAGE_DEFAULT: usize = 100;
/// Length of an `Idempotency-Key` header.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 200;
/// Open HTTPS connections per node; further connections wait in the kernel's accept queue.
pub const HTTP_CONNECTIONS_MAX: usize = 8_192;
/// TLS handshake deadline, so half-open connections cannot pin resources.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Whole-request deadline at the gateway.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Seconds a client is told to wait after 429 or 503.
pub const RETRY_AFTER_SECONDS: u64 = 1;
/// How long shutdown waits for in-flight requests before closing connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Compiled dataset definitions kept per node (one per dataset version in use).
pub const COMPILED_DATASETS_CACHED_MAX: usize = 1_024;
/// Versions listed by `GET /datasets/{id}`.
pub const DATASET_VERSIONS_LISTED_MAX: usize = 1_000;
/// Datasets one source may be allowed to send to.
pub const SOURCE_ALLOWED_DATASETS_MAX: usize = 1_000;
/// Aggregate rows one query may answer; a query that would give more is refused (narrow it).
pub const AGGREGATE_ROWS_MAX: usize = 100_000;
/// How often each node aligns its source actors with the replicated catalog.
pub const SOURCE_SYNC_INTERVAL: Duration = Duration::from_secs(1);

const _: () = assert!(RECORDS_PAGE_DEFAULT <= RECORDS_PAGE_MAX);
const _: () = assert!(ADMIN_BODY_BYTES_MAX <= RECORDS_BODY_BYTES_MAX);
const _: () = assert!(RECORDS_BODY_BYTES_MAX < OVERSIZED_BODY_DISCARD_BYTES_MAX);
