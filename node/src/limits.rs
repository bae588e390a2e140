//! Named limits of the node: what the HTTPS gateway accepts. Units are last in every name.

use std::time::Duration;

/// Largest real-time request body (`POST .../records`), in bytes. Larger uploads use batches. A
/// real-time request is one log entry (it is atomic), and an entry must cross to a follower within
/// one heartbeat interval, so this stays small.
pub const RECORDS_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Default largest real-time body whose pipeline stages run on the stage actors' tasks instead of
/// the blocking pool (`IngestStages::runs_inline`, `[pipeline] inline_bytes_max`), in bytes. A few
/// records: parsing, validating and masking them takes tens of microseconds, less than handing
/// them to a pool thread and back three times (which cost about a fifth of the single-record
/// throughput, `docs/benchmarks.md`).
pub const PIPELINE_INLINE_BODY_BYTES_DEFAULT: usize = 16 * 1024;
/// The most `[pipeline] inline_bytes_max` may be: a body larger than this is not light work.
pub const PIPELINE_INLINE_BODY_BYTES_MAX: usize = 1024 * 1024;
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
/// Open HTTPS connections per node; further connections wait in the kernel's accept queue. An idle
/// TLS connection costs a node about 10 KB (docs/benchmarks.md, issue 4), so the bound is set by
/// descriptors: the node holds at most this many, and at most its open-files limit less
/// `HTTP_CONNECTIONS_FD_RESERVE` (`rlimit::connections_max`). 32,768 lets one node carry a
/// national system's 10,000 held connections alone, with room.
pub const HTTP_CONNECTIONS_MAX: usize = 32_768;
/// Descriptors kept for the store, the peers, gRPC and outgoing connections when the open-files
/// limit bounds the HTTPS connections.
pub const HTTP_CONNECTIONS_FD_RESERVE: u64 = 1_024;
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
/// How long a request waits for its source's actors while they start or restart, before 503.
pub const PIPELINE_START_WAIT: Duration = Duration::from_secs(2);
/// How often each node aligns its source actors with the replicated catalog.
pub const SOURCE_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Completed gRPC TLS handshakes waiting for tonic to take them.
pub const GRPC_HANDSHAKES_QUEUED: usize = 128;
/// Streams a gRPC peer may open and reset before the server has taken them, per connection. h2's
/// default (20) is a guard against "rapid reset" floods, but a node that was paused (SIGSTOP, a
/// long GC-like stall of its VM) wakes to every Raft RPC the leader sent and gave up on meanwhile,
/// heartbeats included, and at 20 the server tore down the leader's connection with GOAWAY
/// `too_many_resets` just as the node came back. This covers about a minute of a peer's RPCs.
pub const GRPC_PENDING_ACCEPT_RESETS_MAX: usize = 2048;
/// How long the gRPC port works on one call (Raft, forwarded writes, `dtm.v1.Ingest`) before it
/// answers DEADLINE_EXCEEDED; InstallSnapshot alone may take `dtm_cluster::limits::
/// SNAPSHOT_RPC_DEADLINE_MS` (its last chunk is answered once the whole snapshot is installed).
pub const GRPC_CALL_DEADLINE: Duration = Duration::from_secs(60);
/// How long one `dtm.v1.Ingest/SubmitStream` stream may stay open (a source then opens a new one);
/// each request on it waits for its commit as a `Submit` does. Before session 14 streams were cut
/// at 60 s by tonic's single server timeout.
pub const GRPC_STREAM_DEADLINE: Duration = Duration::from_secs(3600);
/// HTTP/2 pings on the gRPC port: a caller silent this long is pinged and dropped when it does not
/// answer within the timeout, so a vanished source does not hold a stream for its whole deadline.
pub const GRPC_PING_INTERVAL: Duration = Duration::from_secs(60);
pub const GRPC_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the HTTPS certificate files are checked for a renewal, and how long before its end a
/// certificate is reported as expiring.
pub const CERT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);
pub const CERT_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

const _: () = assert!(RECORDS_PAGE_DEFAULT <= RECORDS_PAGE_MAX);
const _: () = assert!(ADMIN_BODY_BYTES_MAX <= RECORDS_BODY_BYTES_MAX);
const _: () = assert!(RECORDS_BODY_BYTES_MAX < OVERSIZED_BODY_DISCARD_BYTES_MAX);

// ---- Identity (issue 5): users, sessions, MFA, OAuth and OIDC tokens, security events. ----

/// Password length in characters (ASVS 5.0 6.2.1 and 6.2.9): at least 8, at most 128; no
/// composition rules, a blocklist of common passwords instead.
pub const PASSWORD_CHARS_MIN: usize = 8;
pub const PASSWORD_CHARS_MAX: usize = 128;
/// Usernames: 1-64 characters of the id alphabet.
pub const USERNAME_BYTES_MAX: usize = 64;
/// Body of a login, password or TOTP request, in bytes.
pub const AUTH_BODY_BYTES_MAX: usize = 8 * 1024;
/// Argon2id hashes computed at once on a node (each takes 19 MiB for ~tens of ms); more requests
/// wait up to `PASSWORD_HASH_WAIT`, then get 503.
pub const PASSWORD_HASHES_IN_FLIGHT_MAX: usize = 4;
pub const PASSWORD_HASH_WAIT: Duration = Duration::from_secs(5);
/// Consecutive failed logins that lock an account.
pub const LOCKOUT_THRESHOLD: u32 = 10;
/// Default lockout, idle and absolute session lifetimes (configurable under `[identity]`).
pub const LOCKOUT_DEFAULT: Duration = Duration::from_secs(15 * 60);
pub const SESSION_IDLE_DEFAULT: Duration = Duration::from_secs(30 * 60);
pub const SESSION_ABSOLUTE_DEFAULT: Duration = Duration::from_secs(12 * 60 * 60);
/// A session's idle clock is moved forward in the replicated state at most this often, so a busy
/// session costs one log entry per interval, not one per request.
pub const SESSION_TOUCH_INTERVAL: Duration = Duration::from_secs(60);
/// TOTP: codes of the previous and the next 30-second step are accepted (clock drift).
pub const TOTP_STEP_SECONDS: u64 = 30;
pub const TOTP_SKEW_STEPS: u16 = 1;
/// Recovery codes issued at TOTP enrollment (each 80 random bits, single use).
pub const RECOVERY_CODES: usize = 10;
/// Lifetime of an access token from `POST /oauth2/token`.
pub const ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// Clock leeway when checking `exp` and `nbf` of a bearer JWT.
pub const JWT_LEEWAY_SECONDS: u64 = 30;
/// Longest bearer token accepted, in bytes.
pub const BEARER_TOKEN_BYTES_MAX: usize = 8 * 1024;
/// Scopes one OAuth client may hold.
pub const OAUTH_SCOPES_MAX: usize = 16;
/// A JWKS file is looked at again (and re-read when it changed) at most this often.
pub const JWKS_RECHECK_INTERVAL: Duration = Duration::from_secs(5);
pub const JWKS_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Security events waiting on a node to be replicated; when full, events are still logged and
/// counted but not kept in the replicated state (`dtm_security_events_dropped_total`).
pub const SECURITY_EVENT_QUEUE_DEPTH: usize = 4_096;
/// At most one `RecordSecurityEvents` command per node per interval.
pub const SECURITY_EVENT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
pub const SECURITY_EVENTS_PER_COMMAND_MAX: usize = 1_000;
/// Security events returned per page by `GET /security/events`.
pub const SECURITY_EVENTS_PAGE_MAX: usize = 1_000;
/// Users listed by `GET /users`.
pub const USERS_LISTED_MAX: usize = 10_000;

const _: () = assert!(PASSWORD_CHARS_MIN >= 8 && PASSWORD_CHARS_MAX >= 64);
const _: () = assert!(SECURITY_EVENTS_PER_COMMAND_MAX <= dtm_cluster::security::SECURITY_EVENTS_PER_COMMAND_MAX);
const _: () = assert!(SESSION_TOUCH_INTERVAL.as_millis() < SESSION_IDLE_DEFAULT.as_millis());

// --- API gateway (`gateway/`): input sizes, concurrency, rate-limit and detection bookkeeping. ---

/// Default of `gateway.requests_in_flight_max`: requests handled at once per node; more are shed
/// with 503. Sized above the 500 concurrent clients the node must serve (docs/benchmarks.md), below
/// `HTTP_CONNECTIONS_MAX`.
pub const REQUESTS_IN_FLIGHT_DEFAULT: usize = 2_048;
/// Request line plus query, in bytes (414 beyond).
pub const REQUEST_URI_BYTES_MAX: usize = 8 * 1024;
/// All request headers together, in bytes (431 beyond, with a JSON body).
pub const REQUEST_HEADERS_BYTES_MAX: usize = 16 * 1024;
/// hyper's read buffer for an HTTP/1 request head; past it hyper itself answers 431 (without a
/// JSON body) and closes. Above `REQUEST_HEADERS_BYTES_MAX`, so the gateway answers first.
pub const HTTP1_BUFFER_BYTES_MAX: usize = 64 * 1024;
/// The HTTP/2 counterpart (decoded header list).
pub const HTTP2_HEADER_LIST_BYTES_MAX: u32 = 64 * 1024;
/// An HTTP/1.1 connection is closed after this long without a request, and a client has this long
/// to send a request head (slow-loris): hyper runs one timer for both, from the moment it waits for
/// a head. 75 s as nginx's `keepalive_timeout`: above the 60 s idle time common HTTP clients keep
/// pooled connections for, so a source posting once a minute reuses its connection instead of
/// racing the node's close (with 10 s, every connection idle for 10 s was closed and the next POST
/// on it failed; docs/benchmarks.md, "10,000 open connections"). Connections stay bounded by
/// `HTTP_CONNECTIONS_MAX` either way.
pub const HTTP1_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// What HTTP/1.1 answers advertise in `Keep-Alive: timeout=N`: a little under `HTTP1_IDLE_TIMEOUT`,
/// so clients that read it close an idle connection before the node does.
pub const HTTP1_KEEP_ALIVE_ADVERTISED: Duration = Duration::from_secs(70);
/// HTTP/2 connections are pinged after this long without a frame from the client, and closed when
/// the ping is not answered within `HTTP2_PING_TIMEOUT`: a client that vanished (power cut, a
/// dropped NAT entry) no longer holds a connection slot for ever.
pub const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(60);
pub const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Nesting of arrays and objects in a JSON body (400 beyond).
pub const JSON_DEPTH_MAX: usize = 64;
/// JSON bodies up to this size are checked for depth by the gateway; larger ones are refused by
/// every handler as too large before they are parsed.
pub const JSON_CHECKED_BODY_BYTES_MAX: usize = RECORDS_BODY_BYTES_MAX;
/// Keys (credentials, addresses) per rate-limit group before the group's buckets are forgotten.
pub const RATE_LIMIT_KEYS_MAX: usize = 100_000;
/// Addresses whose recent authentication failures are counted.
pub const FAILURE_TRACKED_ADDRESSES_MAX: usize = 100_000;
/// Replicated blocks a node loads (the table is pruned of expired ones on every block).
pub const BLOCKS_LOADED_MAX: usize = 100_000;
/// How often a node reloads the replicated rate limits, IP rules and blocks.
pub const GATEWAY_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// How often idle rate-limit buckets and old failure counts are forgotten.
pub const GATEWAY_SHRINK_INTERVAL: Duration = Duration::from_secs(60);

const _: () = assert!(REQUESTS_IN_FLIGHT_DEFAULT <= HTTP_CONNECTIONS_MAX);
const _: () = assert!(REQUEST_HEADERS_BYTES_MAX + REQUEST_URI_BYTES_MAX < HTTP1_BUFFER_BYTES_MAX);
const _: () = assert!(HTTP1_KEEP_ALIVE_ADVERTISED.as_secs() < HTTP1_IDLE_TIMEOUT.as_secs());
const _: () = assert!(JSON_CHECKED_BODY_BYTES_MAX >= RECORDS_BODY_BYTES_MAX);

// --- Batch uploads (issue 6): `POST /datasets/{id}/batches`, `dtm ingest`. ---

/// Records and JSON bytes per chunk of a batch. Each chunk is one `Submission` (one group-commit
/// member), well inside a log entry's `GROUP_COMMIT_BYTES_MAX` even after masking grows values.
pub const BATCH_CHUNK_RECORDS_MAX: usize = 1_000;
pub const BATCH_CHUNK_BYTES_MAX: usize = 512 * 1024;
/// Chunks of one batch validated or proposed at once (pipelining without unbounded memory).
pub const BATCH_CHUNKS_IN_FLIGHT_MAX: usize = 4;
/// Batches handled at once per node; more are answered 429 with Retry-After.
pub const BATCHES_IN_FLIGHT_MAX: usize = 4;
/// Body of a streamed batch (JSON, NDJSON, CSV, XML) read in one pass, in bytes.
pub const BATCH_STREAM_BYTES_MAX: u64 = 16 * 1024 * 1024 * 1024;
/// Body of a batch that is spooled first (Parquet, XLSX, `on_error=reject`, a manifest), in bytes.
pub const BATCH_SPOOL_BYTES_MAX: u64 = 2 * 1024 * 1024 * 1024;
/// Parquet and XLSX bodies, in bytes (their readers hold a row group or the shared strings).
pub const BATCH_RANDOM_ACCESS_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Sealed spool chunk (plaintext bytes per AES-GCM seal).
pub const BATCH_SPOOL_CHUNK_BYTES: usize = 64 * 1024;
/// Row errors listed in an answer and a receipt (all are counted).
pub const BATCH_ERRORS_LISTED_MAX: usize = 100;
/// Body frames buffered between the connection and the parser.
pub const BATCH_BODY_FRAMES_QUEUED_MAX: usize = 8;
/// Parsed chunks waiting for the pipeline.
pub const BATCH_CHUNKS_QUEUED_MAX: usize = 2;
/// A batch whose sender sends nothing for this long is abandoned.
pub const BATCH_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A whole batch request (replaces `REQUEST_TIMEOUT` for this one route).
pub const BATCH_REQUEST_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// Attempts to commit one chunk when the cluster is busy or without a leader, and to get a chunk
/// past a full source queue.
pub const BATCH_CHUNK_ATTEMPTS_MAX: u32 = 20;
/// Validation rounds for one chunk (each round drops the rows the previous one rejected).
pub const BATCH_VALIDATION_ROUNDS_MAX: usize = 3;

const _: () = assert!(BATCH_CHUNK_RECORDS_MAX <= RECORDS_PER_REQUEST_MAX);
const _: () = assert!(BATCH_CHUNK_BYTES_MAX * 2 <= dtm_cluster::limits::GROUP_COMMIT_BYTES_MAX);
const _: () = assert!(BATCH_CHUNK_BYTES_MAX > dtm_formats::limits::RECORD_BYTES_MAX);
const _: () = assert!(BATCH_ERRORS_LISTED_MAX <= dtm_cluster::batch::RECEIPT_ERRORS_MAX);
const _: () = assert!(BATCH_RANDOM_ACCESS_BYTES_MAX <= BATCH_SPOOL_BYTES_MAX);

// --- Audit trail (`audit.rs`). ---

/// Explicit audit events waiting on a node; at this depth new requests are answered 503 until the
/// queue drains (fail closed: nothing is served unaudited).
pub const AUDIT_QUEUE_EVENTS_MAX: usize = 65_536;
/// Events per `AuditEvents` command (bounded by `dtm_cluster::audit::EVENTS_PER_COMMAND_MAX`).
pub const AUDIT_EVENTS_PER_COMMAND_MAX: usize = 2_048;
/// Events reach the log at most this late (plus one proposal).
pub const AUDIT_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// The shortest audit retention a configuration may ask for (F8, A1.8: at least one year).
pub const AUDIT_RETENTION_DAYS_MIN: u32 = 365;

const _: () = assert!(AUDIT_EVENTS_PER_COMMAND_MAX <= dtm_cluster::audit::EVENTS_PER_COMMAND_MAX);

// --- Lineage, versions and as-of reads (issue 7). ---

/// Records an as-of read (historical aggregates, or resolving `as_of=<time>`) may visit; past it
/// the request is refused with 422 (narrow it with `as_of_index`, or ask a smaller dataset).
pub const AS_OF_RECORDS_MAX: usize = 2_000_000;
/// Records one page of an as-of records listing visits; a page that reaches it ends early with a
/// `next` cursor (it may hold fewer than `limit` records).
pub const AS_OF_PAGE_SCAN_MAX: usize = 100_000;
/// Characters of a correction's reason.
pub const CORRECTION_REASON_CHARS_MAX: usize = 2_000;
/// Record ids accepted in paths (the node makes UUIDs; anything longer is not an id).
pub const RECORD_ID_BYTES_MAX: usize = 128;
/// Finest cells one aggregate-cell lineage request may combine.
pub const CELL_LINEAGE_CELLS_MAX: usize = 100_000;
/// Contributors listed in one aggregate-cell lineage answer (the most records first); the others
/// are summed in `others`.
pub const CELL_LINEAGE_LISTED_MAX: usize = 1_000;
/// Ingestion runs (batches) in one OpenLineage export; more sets `X-Export-Truncated: true`.
pub const OPENLINEAGE_RUNS_MAX: usize = 10_000;
const _: () = assert!(AS_OF_PAGE_SCAN_MAX <= AS_OF_RECORDS_MAX && RECORDS_PAGE_MAX <= AS_OF_PAGE_SCAN_MAX);

/// Values a node's API keeps of the watched tables (keys, sources, datasets; `api::WatchedCache`).
/// Full, it starts again empty: a cluster with more keys and datasets than this in use at once
/// only reads them from the tables as before.
pub const WATCHED_CACHE_ENTRIES_MAX: usize = 16 * 1024;
