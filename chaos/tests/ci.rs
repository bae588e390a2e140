//! The chaos suite's CI runs (issue 4): short runs of kill-leader, pause-follower,
//! partition-minority and wipe-rejoin pass the checker; the planted bug is caught; a corrupted
//! store is refused at start-up and the node recovers from its peers once its data is removed.
//!
//! Each test starts a three-node cluster and loads the machine's cores, so the tests take turns
//! through a lock file instead of running side by side (nextest runs each in its own process).

use std::path::PathBuf;
use std::time::Duration;

use chaos::checker::ViolationKind;
use chaos::faults::FaultKind;
use chaos::scenario::Report;
use chaos::scenario::RunOptions;
use chaos::scenario::Scenario;

/// Fault phase of each CI scenario run, and the time between two faults: two faults per run.
const CI_DURATION_S: u64 = 22;
const CI_FAULT_INTERVAL_S: u64 = 10;

/// Holds an exclusive `flock` on a file shared by every chaos test process until dropped.
struct Turn {
    _file: std::fs::File,
}

fn take_turn() -> anyhow::Result<Turn> {
    let path = std::env::temp_dir().join("dtm-chaos-ci.lock");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own; released when the file is closed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    anyhow::ensure!(rc == 0, "flock {}: {}", path.display(), std::io::Error::last_os_error());
    Ok(Turn { _file: file })
}

fn out_dir(name: &str) -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::Builder::new().prefix(&format!("chaos-ci-{name}-")).tempdir()?;
    let out = dir.path().to_path_buf();
    Ok((dir, out))
}

async fn run_scenario(scenario: Scenario, seed: u64, planted_bug: bool, duration_s: u64) -> anyhow::Result<Report> {
    let _turn = take_turn()?;
    let (dir, out) = out_dir(scenario.name())?;
    let report = chaos::scenario::run(RunOptions {
        scenario,
        duration: Duration::from_secs(duration_s),
        seed,
        writers: chaos::limits::WRITERS_DEFAULT,
        nodes: chaos::limits::NODES_DEFAULT,
        out_dir: out,
        planted_bug,
        fault_interval: Some(Duration::from_secs(CI_FAULT_INTERVAL_S)),
    })
    .await?;
    eprintln!("{}", report.render());
    // A failing run keeps its history and node logs, for the evidence beyond the verdict.
    if !report.verdict.passed() && !planted_bug {
        eprintln!("run directory kept: {}", dir.keep().display());
    }
    Ok(report)
}

async fn scenario_passes(kind: FaultKind, seed: u64) -> anyhow::Result<()> {
    let report = run_scenario(Scenario::Fault(kind), seed, false, CI_DURATION_S).await?;
    assert!(report.verdict.passed(), "{}", report.render());
    assert!(report.faults.len() >= 2, "two faults were injected: {}", report.render());
    assert!(report.fault_errors.is_empty(), "every fault was injected and healed: {:?}", report.fault_errors);
    assert!(report.verdict.acknowledged > 100, "the workload wrote: {}", report.render());
    assert!(report.verdict.linearizable_reads > 20, "the reader read: {}", report.render());
    assert_eq!(report.verdict.nodes_checked, 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_leader_passes_the_checker() -> anyhow::Result<()> {
    scenario_passes(FaultKind::KillLeader, 7).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_follower_passes_the_checker() -> anyhow::Result<()> {
    scenario_passes(FaultKind::PauseFollower, 11).await
}

/// Needs root, `ip` and `iptables` (scripts/ensure-tools.sh installs iproute2 and iptables).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_minority_passes_the_checker() -> anyhow::Result<()> {
    if let Err(why) = chaos::net::available() {
        anyhow::bail!("partition scenarios cannot run on this machine: {why}");
    }
    scenario_passes(FaultKind::PartitionMinority, 5).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wipe_rejoin_passes_the_checker() -> anyhow::Result<()> {
    scenario_passes(FaultKind::WipeRejoin, 3).await
}

/// The checker must be able to fail: nodes that answer one submission in 20 with a fake 201
/// (`DTM_PLANTED_BUG=ack-without-commit`) lose acknowledged records, and the verdict says so with
/// the submissions as evidence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planted_bug_is_caught() -> anyhow::Result<()> {
    let report = run_scenario(Scenario::Steady, 9, true, 8).await?;
    assert!(!report.verdict.passed(), "the planted bug went unnoticed: {}", report.render());
    let lost = report.verdict.count(ViolationKind::LostAcknowledged);
    assert!(lost >= 3, "fake acknowledgements are reported as lost on every node: {}", report.render());
    let evidence = &report.verdict.violations.iter().find(|v| v.kind == ViolationKind::LostAcknowledged);
    let evidence = evidence.map(|v| v.evidence.clone()).unwrap_or_default();
    assert!(evidence.contains("was answered 201") && evidence.contains("it is not stored"), "{evidence}");
    assert!(report.render().contains("VERDICT: FAIL"));
    Ok(())
}

/// A flipped byte in a stopped node's store: the node refuses to start with a storage error (it
/// never serves), and after the operator removes its data dir it starts empty and catches up from
/// its peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_store_is_refused_and_the_node_recovers_from_its_peers() -> anyhow::Result<()> {
    let _turn = take_turn()?;
    let (_dir, out) = out_dir("corrupt")?;
    let report = chaos::corruption::drill(13, "store/conf", &out).await?;
    eprintln!("{}", report.render());
    assert!(report.refused_to_start, "the damaged node started: {}", report.render());
    assert_eq!(report.served_damaged_data, None, "nothing was served from the damaged store");
    assert!(report.start_error.contains("storage"), "the operator sees a storage error: {}", report.start_error);
    // The error does not name the damaged file yet (reported to the owner); see docs/reliability.md.
    assert!(report.recovered, "the node caught up from its peers after its data dir was removed");
    assert_eq!(report.records, 1_000);
    Ok(())
}

/// A node whose disk fills up exits (non-zero) instead of lingering with a stopped Raft core, so a
/// supervisor restarts it once there is room; the cluster keeps acknowledging writes meanwhile and
/// loses none. Needs root (each data dir is a small tmpfs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_makes_the_node_exit_and_nothing_is_lost() -> anyhow::Result<()> {
    let report = run_scenario(Scenario::Fault(FaultKind::DiskFull), 1, false, CI_DURATION_S).await?;
    assert!(report.verdict.passed(), "{}", report.render());
    assert!(!report.faults.is_empty(), "a disk filled up: {}", report.render());
    assert!(
        report.heal_notes.iter().any(|n| n.contains("exited while its disk was full")),
        "the node exited on its own: {:?}",
        report.heal_notes
    );
    assert!(
        !report.heal_notes.iter().any(|n| n.contains("stayed up without a Raft core")),
        "no node lingered with a stopped Raft core: {:?}",
        report.heal_notes
    );
    assert!(report.verdict.acknowledged > 100, "the workload wrote: {}", report.render());
    Ok(())
}
