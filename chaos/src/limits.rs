//! Every limit of the chaos suite, named with its unit last. The relations between them are checked
//! at compile time.

/// How long a `dtm serve` process may take to write `node.json` after it was spawned.
pub const NODE_START_TIMEOUT_MS: u64 = 30_000;
/// How long a SIGTERMed node may take to exit cleanly before it is killed.
pub const NODE_STOP_TIMEOUT_MS: u64 = 20_000;
/// TCP+TLS connection set-up; a paused or partitioned node must not hold a writer for long.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// One write request. The server would hold a write up to 10 s for a quorum; a client that gives
/// up sooner and retries elsewhere with the same idempotency key is what exercises idempotency.
pub const WRITE_TIMEOUT_MS: u64 = 3_000;
/// One read or admin request.
pub const READ_TIMEOUT_MS: u64 = 5_000;
/// A submission is retried (same idempotency key) for at most this long, then left indeterminate.
pub const SUBMISSION_GIVE_UP_MS: u64 = 60_000;
/// A write without an answer after this long is also sent, with the same idempotency key, to a
/// second node (a hedged request): a paused or cut-off node then holds one attempt, not the
/// writer. Well above a healthy write's latency (tens of ms), below `WRITE_TIMEOUT_MS`.
pub const HEDGE_AFTER_MS: u64 = 500;
/// A writer sends nothing to a node for this long after a request to it failed.
pub const NODE_AVOID_MS: u64 = 5_000;
/// Pause between two attempts of one submission.
pub const RETRY_BACKOFF_MS: u64 = 150;
/// Pause between two reads of the linearizable reader.
pub const READ_PACE_MS: u64 = 100;
/// How often waits look again.
pub const POLL_INTERVAL_MS: u64 = 100;
/// After the faults stop: time for every node to be healthy and caught up again. A long soak grows
/// the state past a GB, and a node wiped by one of the last faults then installs a snapshot that
/// size (about 100 s for 1.3 GB on the 2-core machine) before it can be read; reading each node's
/// records takes a while too. 120 s was too short for that (the 80-minute soak of session 8 ended
/// with its last wiped node still installing). A healthy short run is done in seconds.
pub const HEAL_TIMEOUT_MS: u64 = 600_000;
/// Time for the cluster to elect a leader or accept a membership change.
pub const CLUSTER_CHANGE_TIMEOUT_MS: u64 = 60_000;
/// Records per page when reading the final state (the API's maximum).
pub const READ_PAGE_RECORDS_MAX: usize = 1_000;
/// Pages read per node and dataset before the final read gives up (a guard against a cursor loop).
pub const READ_PAGES_MAX: usize = 10_000;
/// Evidence lines printed per violation kind before the rest are only counted.
pub const EVIDENCE_PER_KIND_MAX: usize = 20;
/// Writers of the workload unless the command line says otherwise.
pub const WRITERS_DEFAULT: u64 = 4;
/// Most writers a run accepts (each is a task with its own sequence).
pub const WRITERS_MAX: u64 = 64;
/// Nodes of a chaos cluster. Three voters tolerate one fault at a time.
pub const NODES_DEFAULT: u64 = 3;
/// Most nodes: node addresses are `.1`–`.NODES_MAX` of a /24, the bridge is `.254`.
pub const NODES_MAX: u64 = 9;
/// Shortest and longest time a fault is held before it is healed.
pub const FAULT_HOLD_MS_MIN: u64 = 4_000;
pub const FAULT_HOLD_MS_MAX: u64 = 9_000;
/// Time between the starts of two faults in scenario runs and in the soak.
pub const FAULT_INTERVAL_MS_SCENARIO: u64 = 12_000;
pub const FAULT_INTERVAL_MS_SOAK: u64 = 30_000;
/// Load before the first fault, so that there is something to lose.
pub const WARMUP_ACKS_MIN: usize = 20;
pub const WARMUP_TIMEOUT_MS: u64 = 30_000;
/// Availability is measured over windows of this length.
pub const AVAILABILITY_WINDOW_MS: u64 = 1_000;
/// Snapshot policy of chaos clusters: small, so that wiped nodes catch up through a snapshot.
pub const SNAPSHOT_AFTER_LOGS: u64 = 300;
pub const LOGS_KEPT_AFTER_SNAPSHOT: u64 = 50;

const _: () = assert!(FAULT_HOLD_MS_MIN <= FAULT_HOLD_MS_MAX);
const _: () = assert!(FAULT_HOLD_MS_MAX < FAULT_INTERVAL_MS_SCENARIO);
const _: () = assert!(FAULT_INTERVAL_MS_SCENARIO <= FAULT_INTERVAL_MS_SOAK);
const _: () = assert!(CONNECT_TIMEOUT_MS < WRITE_TIMEOUT_MS);
const _: () = assert!(WRITE_TIMEOUT_MS < SUBMISSION_GIVE_UP_MS);
const _: () = assert!(HEDGE_AFTER_MS < WRITE_TIMEOUT_MS);
const _: () = assert!(WRITERS_DEFAULT <= WRITERS_MAX);
const _: () = assert!(NODES_DEFAULT <= NODES_MAX && NODES_MAX < 254);
const _: () = assert!(LOGS_KEPT_AFTER_SNAPSHOT < SNAPSHOT_AFTER_LOGS);
