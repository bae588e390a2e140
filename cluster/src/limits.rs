//! Named limits of the cluster layer. Units are last in every name; relations are checked below.

use std::time::Duration;

/// Largest gRPC message a node sends or accepts from a peer (an append-entries batch or a snapshot
/// chunk plus framing).
pub const GRPC_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Snapshot chunk size; openraft streams snapshots in chunks of this many bytes.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 4 * 1024 * 1024;

/// Log entries per append-entries RPC.
pub const APPEND_ENTRIES_MAX: u64 = 256;

/// A write that cannot be committed within this time (no leader, partition) fails with 503.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// Forwarding attempts per write (leader changes, unreachable leader) before giving up.
pub const FORWARD_ATTEMPTS_MAX: u32 = 40;

/// Back-off between forwarding attempts.
pub const FORWARD_BACKOFF_MIN: Duration = Duration::from_millis(20);
pub const FORWARD_BACKOFF_MAX: Duration = Duration::from_millis(250);

/// A follower answers a forwarded write only once it has applied it itself (read-your-writes on the
/// node the client talks to), waiting at most this long; the write is committed either way.
pub const LOCAL_APPLY_WAIT: Duration = Duration::from_secs(2);

/// Group commit: the most submissions, records and payload bytes in one log entry, and how long the
/// first submission of a batch waits for others to join it.
pub const GROUP_COMMIT_SUBMISSIONS_MAX: usize = 512;
pub const GROUP_COMMIT_RECORDS_MAX: usize = 10_000;
pub const GROUP_COMMIT_BYTES_MAX: usize = 8 * 1024 * 1024;
pub const GROUP_COMMIT_LINGER: Duration = Duration::from_millis(2);

/// Submissions waiting to join a batch on one node; a full queue answers 429 with Retry-After.
pub const GROUP_COMMIT_QUEUE_DEPTH: usize = 8192;

/// Batches proposed and not yet committed at once from one node (pipelining).
pub const GROUP_COMMIT_IN_FLIGHT_MAX: usize = 16;

/// How long `add-node` waits for a learner to catch up before promoting it.
pub const LEARNER_CATCH_UP_DEADLINE: Duration = Duration::from_secs(300);

const _: () = assert!(SNAPSHOT_CHUNK_BYTES as usize * 2 < GRPC_MESSAGE_BYTES_MAX);
const _: () = assert!(GROUP_COMMIT_BYTES_MAX * 2 < GRPC_MESSAGE_BYTES_MAX);
const _: () = assert!(GROUP_COMMIT_SUBMISSIONS_MAX <= GROUP_COMMIT_QUEUE_DEPTH);
