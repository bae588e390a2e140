//! Named limits of the actor pipeline, units last. Defaults of [`crate::PipelineOptions`] live here
//! with the reason for each value; the bounds that `PipelineOptions::validate` enforces do too.

/// Jobs of one source admitted at once on a node (in the actors, or committing with the caller's
/// permit). One source can be a ministry's portal with hundreds of concurrent users: 256 lets 500
/// concurrent clients spread over three nodes through, while still bounding what one flooding source
/// can hold (the node's other sources keep their own budgets).
pub const QUEUE_DEPTH_PER_SOURCE_DEFAULT: usize = 256;
/// Upper bound on the per-source depth: the mailboxes behind it are unbounded, so the depth is what
/// bounds memory (depth × sources × job size).
pub const QUEUE_DEPTH_PER_SOURCE_MAX: usize = 4_096;

/// Restarts of one stage actor allowed within the window before the whole source is restarted:
/// five poison inputs in ten seconds is a pattern, not bad luck.
pub const RESTART_MAX_DEFAULT: u32 = 5;
/// Upper bound on `restart_max`: beyond this a crash loop would never escalate in practice.
pub const RESTART_MAX_LIMIT: u32 = 1_000;
/// The sliding window over which stage restarts are counted.
pub const RESTART_WINDOW_DEFAULT_MS: u64 = 10_000;

/// First restart delay: short enough that a single poison input costs the source ~50 ms of 503s.
pub const BACKOFF_INITIAL_DEFAULT_MS: u64 = 50;
/// Longest restart delay, also the delay before a source is restarted after an escalation: long
/// enough for a crash loop not to burn the CPU, short enough that a national source is not left
/// down for more than seconds.
pub const BACKOFF_MAX_DEFAULT_MS: u64 = 5_000;
/// Upper bound on `backoff_max`: a source must never stay down longer than this between attempts.
pub const BACKOFF_MAX_LIMIT_MS: u64 = 600_000;

/// How long a caller waits for its job: parsing and validating the largest accepted payload takes
/// well under a second; ten seconds means the stage is stuck.
pub const CALL_TIMEOUT_DEFAULT_MS: u64 = 10_000;
/// Upper bound on `call_timeout`: HTTP clients and load balancers give up long before this.
pub const CALL_TIMEOUT_LIMIT_MS: u64 = 300_000;

/// `Retry-After` suggested with `Busy`: HTTP expresses it in whole seconds, and one second is the
/// order of magnitude in which a full queue of a source drains.
pub const BUSY_RETRY_AFTER_MS: u64 = 1_000;
/// `Retry-After` suggested for a source this node does not (yet) run: the catalog sync that creates
/// it runs on the order of seconds.
pub const UNKNOWN_SOURCE_RETRY_AFTER_MS: u64 = 1_000;

/// Sources one node supervises. Each costs four actors and a semaphore; the catalog of a national
/// system holds hundreds of agencies' systems, so ten thousand is far above need yet bounded.
pub const SOURCES_MAX: usize = 10_000;
/// Longest source id accepted: ids become part of actor names and log fields.
pub const SOURCE_ID_LEN_MAX_BYTES: usize = 128;

/// How long `sync_sources` / `add_source` wait for the node supervisor. Spawning one source takes
/// milliseconds; this bounds a sync of `SOURCES_MAX` sources on a loaded node.
pub const CONTROL_CALL_TIMEOUT_MS: u64 = 30_000;
/// How long `shutdown` waits for the supervision tree to stop before returning anyway.
pub const SHUTDOWN_WAIT_MS: u64 = 5_000;

const _: () = assert!(QUEUE_DEPTH_PER_SOURCE_DEFAULT >= 1);
const _: () = assert!(QUEUE_DEPTH_PER_SOURCE_DEFAULT <= QUEUE_DEPTH_PER_SOURCE_MAX);
// `tokio::sync::Semaphore` holds at most `usize::MAX >> 3` permits.
const _: () = assert!(QUEUE_DEPTH_PER_SOURCE_MAX <= usize::MAX >> 3);
const _: () = assert!(RESTART_MAX_DEFAULT <= RESTART_MAX_LIMIT);
const _: () = assert!(RESTART_WINDOW_DEFAULT_MS > 0);
const _: () = assert!(BACKOFF_INITIAL_DEFAULT_MS > 0);
const _: () = assert!(BACKOFF_INITIAL_DEFAULT_MS <= BACKOFF_MAX_DEFAULT_MS);
const _: () = assert!(BACKOFF_MAX_DEFAULT_MS <= BACKOFF_MAX_LIMIT_MS);
const _: () = assert!(CALL_TIMEOUT_DEFAULT_MS > 0);
const _: () = assert!(CALL_TIMEOUT_DEFAULT_MS <= CALL_TIMEOUT_LIMIT_MS);
// A restart must be able to happen well before a caller would time out waiting for it.
const _: () = assert!(BACKOFF_INITIAL_DEFAULT_MS < CALL_TIMEOUT_DEFAULT_MS);
