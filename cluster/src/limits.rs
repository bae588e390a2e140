//! Named limits of the cluster layer. Units are last in every name; relations are checked below.

use std::time::Duration;

/// Largest gRPC message a node sends or accepts from a peer (an append-entries batch or a snapshot
/// chunk plus framing).
pub const GRPC_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Snapshot chunk size; openraft streams snapshots in chunks of this many bytes.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 4 * 1024 * 1024;
/// How long one snapshot RPC may take (openraft's `install_snapshot_timeout`). The last chunk's
/// answer waits until the follower has installed the whole snapshot, which grows with the state:
/// about 10 s for a 71 MB snapshot (500,000 records) under write load on this machine, minutes for
/// a national system's years of data. At 10 s the last chunk timed out, its retry found the
/// transfer already finished and was told to start over, and the whole snapshot crossed the
/// network again (session 14). A follower that died or hangs is not waited for this long: the peer
/// channel's HTTP/2 keep-alive (`PEER_KEEP_ALIVE_*`) fails the call within about 15 s.
pub const SNAPSHOT_RPC_DEADLINE_MS: u64 = 30 * 60 * 1000;
/// HTTP/2 pings on each peer channel: sent after this long without a frame, and the connection
/// (with the calls on it) dropped when one is not answered within the timeout.
pub const PEER_KEEP_ALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
pub const PEER_KEEP_ALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// A backup copy waits for a snapshot that holds the copy window at most this many times.
pub const BACKUP_COPY_ATTEMPTS_MAX: u32 = 50;
pub const BACKUP_COPY_RETRY_DELAY: Duration = Duration::from_millis(200);

/// Log entries per append-entries RPC.
pub const APPEND_ENTRIES_MAX: u64 = 256;

/// A write that cannot be committed within this time (no leader, partition) fails with 503.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// A node that has heard nothing from a leader for this long (a follower or learner: no
/// append-entries; a leader: no acknowledgement from a quorum) is cut off: partitioned away, or the
/// cluster has lost its quorum. It answers writes and linearizable reads 503 at once, and in-flight
/// ones at this point, instead of holding them to `WRITE_DEADLINE`; `/ready` answers 503. Longer
/// than an election after a leader crash (about 1 s, docs/benchmarks.md "Failover"), so an ordinary
/// failover does not cut anyone off.
pub const CUT_OFF_AFTER: Duration = Duration::from_millis(2_500);
/// How often an in-flight write looks whether its node was cut off.
pub const CUT_OFF_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Forwarding attempts per write (leader changes, unreachable leader) before giving up.
pub const FORWARD_ATTEMPTS_MAX: u32 = 40;

/// Back-off between forwarding attempts.
pub const FORWARD_BACKOFF_MIN: Duration = Duration::from_millis(20);
pub const FORWARD_BACKOFF_MAX: Duration = Duration::from_millis(250);

/// A follower answers a forwarded write only once it has applied it itself (read-your-writes on the
/// node the client talks to), waiting at most this long; the write is committed either way.
pub const LOCAL_APPLY_WAIT: Duration = Duration::from_secs(2);

/// Group commit: the most submissions, records and payload bytes in one log entry. These are hard
/// upper bounds; `GroupCommitOptions` may lower them.
pub const GROUP_COMMIT_SUBMISSIONS_MAX: usize = 512;
pub const GROUP_COMMIT_RECORDS_MAX: usize = 10_000;
///
/// Bytes are bounded tightly: a log entry must reach a follower within one AppendEntries, which
/// openraft 0.9 gives one heartbeat interval (see `dtm_storage::limits::APPEND_ENTRIES_BYTES_MAX`).
/// A single submission larger than this still goes alone in one entry; the gateway bounds those
/// (`RECORDS_BODY_BYTES_MAX`).
pub const GROUP_COMMIT_BYTES_MAX: usize = 1024 * 1024;

/// Submissions waiting to join a batch on one node; a full queue answers 429 with Retry-After.
pub const GROUP_COMMIT_QUEUE_DEPTH: usize = 8192;

/// How long an idempotency key is remembered: a retry within this time returns the first answer, a
/// request after it is new. Part of the replicated semantics (every node expires the same entries at
/// the same log position), so changing it needs a command-set version bump.
pub const IDEMPOTENCY_RETENTION_MS: u64 = 24 * 60 * 60 * 1000;

/// Expired idempotency entries removed per applied ingest entry. Larger than the submissions one
/// entry can add, so expiry keeps up with arrivals.
pub const IDEMPOTENCY_EXPIRY_PER_ENTRY_MAX: usize = 2048;

/// Upper bounds for the configurable parts of group commit.
pub const GROUP_COMMIT_IN_FLIGHT_MAX: usize = 256;
pub const GROUP_COMMIT_LINGER_MAX: Duration = Duration::from_millis(100);

/// Group-commit settings a node may choose (flags `--group-commit-*`). Defaults were chosen by
/// measurement (docs/benchmarks.md, "Group commit").
#[derive(Debug, Clone)]
pub struct GroupCommitOptions {
    /// Records in one log entry (at most `GROUP_COMMIT_RECORDS_MAX`).
    pub records_max: usize,
    /// Batches proposed and not yet committed at once from one node (pipelining).
    pub in_flight_max: usize,
    /// How long a lone submission waits for company, only while other batches are in flight.
    pub linger: Duration,
    /// How many other batches must be in flight before a submission lingers (at least 1). With
    /// fewer, the pipeline has room and company is unlikely to come: the submission goes at once.
    /// A value of `in_flight_max` or more turns lingering off.
    pub linger_after_in_flight: usize,
}

impl Default for GroupCommitOptions {
    fn default() -> Self {
        GroupCommitOptions {
            records_max: GROUP_COMMIT_RECORDS_MAX,
            in_flight_max: 16,
            linger: Duration::from_millis(2),
            linger_after_in_flight: 2,
        }
    }
}

impl GroupCommitOptions {
    pub fn validate(&self) -> Result<(), String> {
        if self.records_max == 0 || self.records_max > GROUP_COMMIT_RECORDS_MAX {
            return Err(format!("group commit records_max must be 1..={GROUP_COMMIT_RECORDS_MAX}"));
        }
        if self.in_flight_max == 0 || self.in_flight_max > GROUP_COMMIT_IN_FLIGHT_MAX {
            return Err(format!("group commit in_flight_max must be 1..={GROUP_COMMIT_IN_FLIGHT_MAX}"));
        }
        if self.linger_after_in_flight == 0 || self.linger_after_in_flight > GROUP_COMMIT_IN_FLIGHT_MAX {
            return Err(format!("group commit linger_after_in_flight must be 1..={GROUP_COMMIT_IN_FLIGHT_MAX}"));
        }
        if self.linger > GROUP_COMMIT_LINGER_MAX {
            return Err(format!("group commit linger must be at most {GROUP_COMMIT_LINGER_MAX:?}"));
        }
        Ok(())
    }
}

/// How often the snapshot policy looks at the log, and when it gives up waiting for a snapshot it
/// triggered.
pub const SNAPSHOT_POLICY_TICK: Duration = Duration::from_millis(500);
pub const SNAPSHOT_TRIGGER_RETRY: Duration = Duration::from_secs(120);

/// How long `add-node` waits for a learner to catch up before promoting it.
pub const LEARNER_CATCH_UP_DEADLINE: Duration = Duration::from_secs(300);

const _: () = assert!(SNAPSHOT_CHUNK_BYTES as usize * 2 < GRPC_MESSAGE_BYTES_MAX);
const _: () = assert!(GROUP_COMMIT_BYTES_MAX * 2 < GRPC_MESSAGE_BYTES_MAX);
const _: () = assert!(GROUP_COMMIT_SUBMISSIONS_MAX <= GROUP_COMMIT_QUEUE_DEPTH);
const _: () = assert!(IDEMPOTENCY_EXPIRY_PER_ENTRY_MAX > GROUP_COMMIT_SUBMISSIONS_MAX);

/// Versions of one natural key remembered in the index (the first and the latest ones): a record
/// identical to one of them is a duplicate. Bounds the index entry of a key that keeps changing.
pub const NATURAL_KEY_VERSIONS_MAX: usize = 64;

/// Distinct contributors remembered per aggregate cell (`lineage::add_contributor`); records of
/// further ones are counted together. Bounds the lineage value of a cell that many batches feed.
pub const CELL_CONTRIBUTORS_MAX: usize = 256;

/// Versions walked along one record's chain (corrections and conflicts) before giving up: a chain
/// is never walked without end, whatever the tables hold.
pub const VERSION_CHAIN_WALK_MAX: usize = 1_024;
