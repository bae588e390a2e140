//! Fault injectors. Each fault picks its victims with the run's seeded generator, records a
//! `Fault` event, and is undone by `heal`, which records a `Heal` event. `heal_all` brings every
//! node back whatever happened before (it is also what ends a run).

use std::collections::BTreeSet;

use rand::Rng;
use rand::rngs::StdRng;
use serde::Serialize;

use crate::cluster::Cluster;
use crate::error::ChaosError;
use crate::error::Result;
use crate::history::EventKind;
use crate::history::History;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    KillLeader,
    KillFollower,
    KillRandom,
    PauseLeader,
    PauseFollower,
    PartitionMinority,
    PartitionLeader,
    WipeRejoin,
    Membership,
    /// Remove a node from the membership while it is cut off from its peers.
    MembershipPartition,
    /// Fill a node's data dir (a tmpfs) to the last byte.
    DiskFull,
    /// Restart a node with its wall clock skewed by libfaketime.
    ClockSkew,
}

impl FaultKind {
    pub const ALL: [FaultKind; 12] = [
        FaultKind::KillLeader,
        FaultKind::KillFollower,
        FaultKind::KillRandom,
        FaultKind::PauseLeader,
        FaultKind::PauseFollower,
        FaultKind::PartitionMinority,
        FaultKind::PartitionLeader,
        FaultKind::WipeRejoin,
        FaultKind::Membership,
        FaultKind::MembershipPartition,
        FaultKind::DiskFull,
        FaultKind::ClockSkew,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillFollower => "kill-follower",
            FaultKind::KillRandom => "kill-random",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::PauseFollower => "pause-follower",
            FaultKind::PartitionMinority => "partition-minority",
            FaultKind::PartitionLeader => "partition-leader",
            FaultKind::WipeRejoin => "wipe-rejoin",
            FaultKind::Membership => "membership",
            FaultKind::MembershipPartition => "membership-partition",
            FaultKind::DiskFull => "disk-full",
            FaultKind::ClockSkew => "clock-skew",
        }
    }

    pub fn parse(s: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Partitions need every node in its own network namespace.
    pub fn needs_namespaces(self) -> bool {
        matches!(self, FaultKind::PartitionMinority | FaultKind::PartitionLeader | FaultKind::MembershipPartition)
    }

    /// The disk-full fault needs every data dir on its own tmpfs (a run option).
    pub fn needs_tmpfs(self) -> bool {
        self == FaultKind::DiskFull
    }

    /// Faults the soak chooses from (given what the machine supports).
    pub fn in_soak(self) -> bool {
        !matches!(self, FaultKind::DiskFull | FaultKind::ClockSkew | FaultKind::MembershipPartition)
    }
}

/// Clock offsets the clock-skew fault chooses from (libfaketime `FAKETIME` syntax).
const CLOCK_SKEWS: [&str; 4] = ["+1h", "-1h", "+10m", "-10m"];
/// Where Debian's `faketime` package puts the library.
const LIBFAKETIME_PATHS: [&str; 2] =
    ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"];
/// How long a node whose Raft core stopped on a full disk may take to exit by itself.
const DISK_FULL_EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Size of one write of the disk filler.
const FILLER_CHUNK_BYTES: usize = 1 << 20;
/// Name of the filler file in a data dir.
const FILLER_FILE: &str = "chaos-disk-filler";

/// libfaketime, if installed.
pub fn libfaketime() -> Option<&'static str> {
    LIBFAKETIME_PATHS.into_iter().find(|p| std::path::Path::new(p).exists())
}

/// Writes zeros to `path` until the file system is full (or `max_bytes`); answers the bytes
/// written.
fn fill(path: &std::path::Path, max_bytes: u64) -> Result<u64> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| ChaosError::io("creating the disk filler", path, e))?;
    let chunk = vec![0u8; FILLER_CHUNK_BYTES];
    let mut written = 0u64;
    while written < max_bytes {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    let _ = f.sync_all();
    Ok(written)
}

/// A fault in force, to be healed.
#[derive(Debug, Clone, Serialize)]
pub struct Injected {
    pub kind: FaultKind,
    pub nodes: Vec<u64>,
    /// Length of the victim's log when the fault began, to find what it logged during the fault.
    pub log_mark: usize,
}

/// What a node logs when its Raft core stops on a storage error (it then answers 503 until it
/// is restarted).
const RAFT_CORE_QUIT: &str = "quit RaftCore::main on error";

fn pick(rng: &mut StdRng, from: &[u64]) -> Result<u64> {
    if from.is_empty() {
        return Err(ChaosError::Options("no node to inject the fault into".into()));
    }
    Ok(from[rng.random_range(0..from.len())])
}

pub async fn inject(c: &Cluster, kind: FaultKind, rng: &mut StdRng, h: &History) -> Result<Injected> {
    let leader = c.wait_leader().await?;
    let followers: Vec<u64> = c.ids().into_iter().filter(|i| *i != leader && c.is_up(*i)).collect();
    let target = match kind {
        FaultKind::KillLeader | FaultKind::PauseLeader | FaultKind::PartitionLeader => leader,
        FaultKind::KillFollower
        | FaultKind::PauseFollower
        | FaultKind::WipeRejoin
        | FaultKind::Membership
        | FaultKind::MembershipPartition => pick(rng, &followers)?,
        FaultKind::KillRandom | FaultKind::PartitionMinority | FaultKind::DiskFull | FaultKind::ClockSkew => {
            pick(rng, &c.ids())?
        }
    };
    let log_mark = c.log(target).len();
    let detail = match kind {
        FaultKind::KillLeader | FaultKind::KillFollower | FaultKind::KillRandom => {
            c.kill(target);
            format!("kill -9 node {target} (leader was {leader})")
        }
        FaultKind::PauseLeader | FaultKind::PauseFollower => {
            c.pause(target)?;
            format!("SIGSTOP node {target} (leader was {leader})")
        }
        FaultKind::PartitionMinority | FaultKind::PartitionLeader => {
            let net = c.network().ok_or(ChaosError::Options("partitions need network namespaces".into()))?;
            net.partition(&BTreeSet::from([target]))?;
            format!("node {target} cut off from its peers (leader was {leader})")
        }
        FaultKind::WipeRejoin => {
            c.kill(target);
            c.wipe(target)?;
            format!("kill -9 node {target} and delete its data dir; it restarts empty at heal")
        }
        FaultKind::Membership => {
            c.kill(target);
            if let Err(e) = c.remove(target).await {
                // Not injected, so no heal would follow: start the node again on its data before
                // saying so. (Should the removal still commit later, `heal_all` re-adds it.)
                c.restart(target).await?;
                return Err(e);
            }
            c.wipe(target)?;
            format!("kill -9 node {target}, remove it from the membership while down, wipe it; re-added empty at heal")
        }
        FaultKind::MembershipPartition => {
            let net = c.network().ok_or(ChaosError::Options("partitions need network namespaces".into()))?;
            net.partition(&BTreeSet::from([target]))?;
            if let Err(e) = c.remove(target).await {
                // As for `Membership`: undo what was done, since nothing will heal it.
                net.heal()?;
                return Err(e);
            }
            format!("node {target} cut off from its peers and removed from the membership; wiped and re-added at heal")
        }
        FaultKind::DiskFull => {
            let dir = &c.nodes[&target].data_dir;
            if !crate::cluster::is_mount_point(dir) {
                return Err(ChaosError::Options("disk-full needs data dirs on tmpfs".into()));
            }
            let bytes = fill(&dir.join(FILLER_FILE), u64::MAX)?;
            format!("filled node {target}'s data dir (tmpfs) with {bytes} bytes")
        }
        FaultKind::ClockSkew => {
            let lib = libfaketime().ok_or(ChaosError::Options("clock-skew needs libfaketime (apt faketime)".into()))?;
            let skew = CLOCK_SKEWS[rng.random_range(0..CLOCK_SKEWS.len())];
            c.kill(target);
            c.set_node_env(
                target,
                vec![
                    ("LD_PRELOAD".into(), lib.into()),
                    ("FAKETIME".into(), skew.into()),
                    ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
                ],
            );
            c.restart(target).await?;
            format!("node {target} restarted with its wall clock {skew}")
        }
    };
    h.record(EventKind::Fault { name: kind.name().into(), nodes: vec![target], detail });
    Ok(Injected { kind, nodes: vec![target], log_mark })
}

pub async fn heal(c: &Cluster, f: &Injected, h: &History) -> Result<()> {
    for id in &f.nodes {
        match f.kind {
            FaultKind::KillLeader | FaultKind::KillFollower | FaultKind::KillRandom | FaultKind::WipeRejoin => {
                c.restart(*id).await?
            }
            FaultKind::PauseLeader | FaultKind::PauseFollower => c.resume(*id)?,
            FaultKind::PartitionMinority | FaultKind::PartitionLeader => {
                if let Some(net) = c.network() {
                    net.heal()?;
                }
            }
            FaultKind::Membership => {
                c.restart(*id).await?;
                c.join(*id).await?;
            }
            FaultKind::MembershipPartition => {
                if let Some(net) = c.network() {
                    net.heal()?;
                }
                c.kill(*id);
                c.wipe(*id)?;
                c.restart(*id).await?;
                c.join(*id).await?;
            }
            FaultKind::DiskFull => {
                let filler = c.nodes[id].data_dir.join(FILLER_FILE);
                std::fs::remove_file(&filler).map_err(|e| ChaosError::io("removing the disk filler", &filler, e))?;
                let log = c.log(*id);
                let stuck = log.get(f.log_mark..).is_some_and(|l| l.contains(RAFT_CORE_QUIT));
                // A node whose Raft core stopped exits by itself after a graceful shutdown (at
                // most its shutdown grace): give it that time before calling it stuck.
                let deadline = std::time::Instant::now() + DISK_FULL_EXIT_WAIT;
                let mut exited = c.reap(*id);
                while stuck && exited.is_none() && std::time::Instant::now() < deadline {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    exited = c.reap(*id);
                }
                if let Some(status) = exited {
                    // The node stopped on a full disk: say so in the history, then start it again.
                    h.record(EventKind::Note {
                        name: "disk-full-exit".into(),
                        nodes: vec![*id],
                        detail: format!("node {id} exited while its disk was full: {status}"),
                    });
                    c.restart(*id).await?;
                } else if stuck {
                    // Its Raft core stopped on the write error and does not come back when space
                    // returns; the process stays up answering 503. An operator restarts it.
                    h.record(EventKind::Note {
                        name: "disk-full-stuck".into(),
                        nodes: vec![*id],
                        detail: format!(
                            "node {id} logged `{RAFT_CORE_QUIT}` and stayed up without a Raft core; restarted"
                        ),
                    });
                    c.kill(*id);
                    c.restart(*id).await?;
                }
            }
            FaultKind::ClockSkew => {
                c.kill(*id);
                c.set_node_env(*id, Vec::new());
                c.restart(*id).await?;
            }
        }
    }
    h.record(EventKind::Heal { name: f.kind.name().into(), nodes: f.nodes.clone() });
    Ok(())
}

/// Resumes paused nodes, removes partitions and restarts stopped nodes (empty ones rejoin through
/// `Membership` healing only when they were removed, so a stopped node is simply restarted).
pub async fn heal_all(c: &Cluster, h: &History) -> Result<()> {
    if let Some(net) = c.network() {
        net.heal()?;
    }
    for id in c.ids() {
        c.resume(id)?;
        let _ = std::fs::remove_file(c.nodes[&id].data_dir.join(FILLER_FILE));
        if !c.node_env(id).is_empty() {
            c.kill(id);
            c.set_node_env(id, Vec::new());
        }
        c.reap(id);
        if !c.is_running(id) {
            c.restart(id).await?;
        }
    }
    // A node whose removal went through although the call that asked for it gave up (a membership
    // fault that could not be injected) is running outside the cluster: bring it back in, empty,
    // as a membership fault's heal would.
    let mut members = None;
    if let Some(leader) = c.leader().await
        && let Ok(v) = c.status(leader).await
        && let Some(m) = v["members"].as_array()
    {
        members = Some(m.iter().filter_map(|m| m["id"].as_u64()).collect::<BTreeSet<u64>>());
    }
    for id in c.ids() {
        if members.as_ref().is_some_and(|m| !m.contains(&id)) {
            c.kill(id);
            c.wipe(id)?;
            c.restart(id).await?;
            c.join(id).await?;
        }
    }
    h.record(EventKind::Heal { name: "all".into(), nodes: c.ids() });
    Ok(())
}
