//! Named limits of the storage layer. Units are last in every name.

/// sled's page cache. sled's resident memory runs up to several times this value (DEPENDENCIES.md),
/// so it is set explicitly rather than left at sled's 1 GiB default.
pub const SLED_CACHE_CAPACITY_BYTES_DEFAULT: u64 = 128 * 1024 * 1024;

/// How many log entries one `try_get_log_entries` call may return. openraft asks for at most
/// `max_payload_entries` per replication round; this is a backstop against a runaway range.
pub const LOG_READ_ENTRIES_MAX: usize = 100_000;

/// The largest snapshot body (the tables as encoded, before compression) a node builds or reads
/// from a leader, in bytes. The compressed data, about a quarter of it, is held in memory while it is
/// built, sent and installed (see ARCHITECTURE.md, "Snapshots").
pub const SNAPSHOT_BYTES_MAX: usize = 4 * 1024 * 1024 * 1024 - 1;

/// The largest key or value a snapshot may carry, far above any table value (the largest, a log
/// entry's record block or idempotency answer, are a few MB): a damaged length is refused before
/// it is allocated.
pub const SNAPSHOT_PAIR_BYTES_MAX: usize = 256 * 1024 * 1024;

const _: () = assert!(LOG_READ_ENTRIES_MAX > 1024);

/// Encoded log bytes sent to a follower in one AppendEntries (at least one entry is always sent).
/// openraft 0.9 allows each AppendEntries one heartbeat interval (100 ms by default): 1 MiB crosses
/// TLS on loopback and is fsynced by a follower well within it, even on a busy 2-core machine.
pub const APPEND_ENTRIES_BYTES_MAX: usize = 1024 * 1024;

/// Purged log entries deleted per sled batch (`LogStore::purge` deletes them in the background).
/// One batch of the hundreds of thousands of entries a large snapshot covers held a node's Raft
/// core for seconds; batches of this size take milliseconds.
pub const PURGE_BATCH_ENTRIES: usize = 4 * 1024;

/// Pairs written per sled batch when a backup is restored into a new store (one batch of millions
/// of pairs takes sled minutes; batches of this size go at disk speed).
pub const RESTORE_BATCH_PAIRS: usize = 16 * 1024;

/// How long `reopen` waits for a store closed in this process to release its lock.
pub const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The most memory one lookup filter (`absence.rs`) may take, in bytes: about 170 million keys at
/// 12 bits each. Two filters exist while one is rebuilt. A filter that would need more stops
/// proving misses (every lookup goes to sled, as without it) until the node restarts.
pub const ABSENCE_FILTER_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Keys of a lookup filter's first layer (96 KiB); each further layer holds twice the last.
pub const ABSENCE_FIRST_LAYER_KEYS: u64 = 64 * 1024;

/// How long the lookup filter's build may scan after each `apply` call. The build runs on the
/// state machine's thread, so this is the most it adds to an `apply` while a build is on.
pub const ABSENCE_BUILD_SLICE: std::time::Duration = std::time::Duration::from_millis(2);
