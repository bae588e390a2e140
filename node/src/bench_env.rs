//! What every benchmark table is printed with (issue 4): the machine (CPU, nproc, RAM, kernel),
//! the dtm build (version, commit, profile) and the exact command; and what the benchmarks read
//! about the demo's node processes: their pids, resident memory (`/proc/PID/status`), open
//! descriptors and the bytes their data directories take on disk.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::path::PathBuf;

use serde_json::Value;
use serde_json::json;

/// The header lines: machine, build and command.
pub fn header() -> Vec<String> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let ram_gib = meminfo_kib("MemTotal").map(|k| k as f64 / 1024.0 / 1024.0).unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let command: Vec<String> = std::env::args().collect();
    vec![
        format!("machine: {cpu}, nproc {nproc}, RAM {ram_gib:.1} GiB, kernel {kernel}"),
        format!("dtm {} (commit {}), {} build", env!("CARGO_PKG_VERSION"), git_commit(), profile()),
        format!("command: {}", command.join(" ")),
    ]
}

pub fn header_json() -> Value {
    json!({"machine": header()[0], "build": header()[1], "command": std::env::args().collect::<Vec<_>>().join(" ")})
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) { "debug" } else { "release" }
}

/// The commit of the working tree the benchmark is run from (`git rev-parse`), marked `+dirty`
/// when it has uncommitted changes; `unknown` outside a checkout.
fn git_commit() -> String {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "--short", "HEAD"]) {
        Some(c) => {
            let dirty = run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty { format!("{c}+dirty") } else { c }
        }
        None => "unknown".into(),
    }
}

fn meminfo_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// VmRSS and VmHWM of `pid` in KiB.
pub fn memory_kib(pid: i32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        s.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Open descriptors of `pid`.
pub fn open_fds(pid: i32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// A node of the demo cluster, as the benchmarks see it.
pub struct DemoNode {
    pub id: u64,
    pub pid: i32,
    pub data_dir: PathBuf,
}

/// The demo's nodes: pid from the node's own `node.json` (fresh after a restart), else from
/// `demo.json`.
pub fn demo_nodes(demo: &Value) -> Vec<DemoNode> {
    let mut out = Vec::new();
    for n in demo["nodes"].as_array().into_iter().flatten() {
        let (Some(id), Some(dir)) = (n["id"].as_u64(), n["data_dir"].as_str()) else { continue };
        let data_dir = PathBuf::from(dir);
        let from_file = std::fs::read(data_dir.join("node.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["pid"].as_i64());
        let Some(pid) = from_file.or_else(|| n["pid"].as_i64()).and_then(|p| i32::try_from(p).ok()) else { continue };
        out.push(DemoNode { id, pid, data_dir });
    }
    out
}

/// Bytes on disk (allocated blocks, as `du` counts them) under `dir`, grouped by path relative to
/// `dir` down to `depth` components (deeper files count toward their ancestor at that depth).
pub fn disk_usage(dir: &Path, depth: usize) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(dir).unwrap_or(&path);
            let key: PathBuf = rel.components().take(depth).collect();
            *out.entry(key.display().to_string()).or_default() += meta.blocks() * 512;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_usage_groups_files_by_their_first_components() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("store/sub")).expect("mkdir");
        std::fs::write(dir.path().join("store/db"), vec![1u8; 100_000]).expect("write");
        std::fs::write(dir.path().join("store/sub/x"), vec![1u8; 10_000]).expect("write");
        std::fs::write(dir.path().join("node.log"), b"log").expect("write");
        let du = disk_usage(dir.path(), 2);
        assert!(du["store/db"] >= 100_000, "{du:?}");
        assert!(du["store/sub"] >= 10_000, "{du:?}");
        assert!(du.contains_key("node.log"), "{du:?}");
        let top = disk_usage(dir.path(), 1);
        assert!(top["store"] >= 110_000, "{top:?}");
    }

    #[test]
    fn own_process_memory_and_header_are_readable() {
        let (rss, hwm) = memory_kib(std::process::id() as i32).expect("/proc/self/status");
        assert!(rss > 0 && hwm >= rss);
        assert!(open_fds(std::process::id() as i32).is_some_and(|n| n > 0));
        let h = header();
        assert!(h[0].starts_with("machine: ") && h[0].contains("nproc"), "{h:?}");
        assert!(h[1].starts_with("dtm "), "{h:?}");
    }
}
