//! The history: every request of the workload and its answer, every fault and heal, and the final
//! state read from every node, as one JSON object per line with the time since the run started.
//! The checker needs nothing but this file.

use std::io::BufRead;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;
use serde::Serialize;

use crate::error::ChaosError;
use crate::error::Result;

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the run started (monotonic clock of the chaos process).
    pub t_ms: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened. A submission (`op`) is one idempotency key; each of its attempts is a
/// `WriteInvoke` followed by a `WriteOk` or a `WriteFail`, except an attempt abandoned because the
/// other attempt of a hedged round was answered first (its outcome is unknown, like a timeout's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    WriteInvoke {
        op: u64,
        writer: u64,
        seq: u64,
        /// The `n` measure sent; with `writer` and `seq` it identifies the payload.
        n: u64,
        dataset: String,
        idempotency_key: String,
        node: u64,
        attempt: u32,
    },
    WriteOk {
        op: u64,
        node: u64,
        ids: Vec<String>,
        commit_index: u64,
        replayed: bool,
    },
    /// `definite` is true when the answer guarantees nothing was stored (a 4xx refusal).
    WriteFail {
        op: u64,
        node: u64,
        status: Option<u16>,
        error: String,
        definite: bool,
    },
    ReadInvoke {
        op: u64,
        node: u64,
        dataset: String,
    },
    /// A linearizable read: the log index it was answered at and the dataset's record count.
    ReadOk {
        op: u64,
        node: u64,
        as_of_index: u64,
        total: u64,
    },
    ReadFail {
        op: u64,
        node: u64,
        error: String,
    },
    Fault {
        name: String,
        nodes: Vec<u64>,
        detail: String,
    },
    Heal {
        name: String,
        nodes: Vec<u64>,
    },
    /// Something the healing found and did (e.g. a node stuck after a full disk, restarted).
    Note {
        name: String,
        nodes: Vec<u64>,
        detail: String,
    },
    /// What one node holds of one dataset after healing, read with `consistency=linearizable`.
    FinalState {
        node: u64,
        dataset: String,
        records: Vec<StoredRecord>,
        digest: Option<Digest>,
    },
    /// Each node's audit chain after healing: its length, the hash of the entry at the length all
    /// nodes have (`common`), and the problem its own periodic verification reported, if any.
    FinalAudit {
        node: u64,
        size: u64,
        common: u64,
        hash_at_common: String,
        verification_problem: Option<String>,
    },
    /// A node whose final state could not be read at all.
    FinalUnreadable {
        node: u64,
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRecord {
    pub id: String,
    /// The payload fields the workload sends; `None` when the stored record lacks them.
    pub writer: Option<u64>,
    pub seq: Option<u64>,
    pub n: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub as_of_index: u64,
    pub sha256: String,
}

/// An append-only history shared by the workload tasks: kept in memory for the checker and
/// appended (through an 8 KiB buffer) to a JSONL file as it grows, so a run that dies still leaves
/// all but its last few events on disk.
pub struct History {
    start: Instant,
    path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    file: std::io::BufWriter<std::fs::File>,
    events: Vec<Event>,
    /// The first write error; later events are still kept in memory.
    write_error: Option<std::io::Error>,
}

impl History {
    pub fn create(path: &Path) -> Result<History> {
        let file = std::fs::File::create(path).map_err(|e| ChaosError::io("creating the history", path, e))?;
        Ok(History {
            start: Instant::now(),
            path: path.to_path_buf(),
            inner: Mutex::new(Inner { file: std::io::BufWriter::new(file), events: Vec::new(), write_error: None }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Milliseconds since the run started.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn record(&self, kind: EventKind) {
        let event = Event { t_ms: self.now_ms(), kind };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.write_error.is_none() {
            let line = serde_json::to_string(&event).map_err(std::io::Error::other);
            let written = line.and_then(|l| writeln!(inner.file, "{l}"));
            if let Err(e) = written {
                inner.write_error = Some(e);
            }
        }
        inner.events.push(event);
    }

    /// Flushes the file and returns every event so far.
    pub fn finish(&self) -> Result<Vec<Event>> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = inner.write_error.take() {
            return Err(ChaosError::io("writing the history", &self.path, e));
        }
        inner.file.flush().map_err(|e| ChaosError::io("flushing the history", &self.path, e))?;
        Ok(inner.events.clone())
    }

    pub fn events(&self) -> Vec<Event> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).events.clone()
    }
}

/// Reads a history file written by `History`.
pub fn load(path: &Path) -> Result<Vec<Event>> {
    let file = std::fs::File::open(path).map_err(|e| ChaosError::io("opening the history", path, e))?;
    let mut events = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| ChaosError::io("reading the history", path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let event = serde_json::from_str(&line)
            .map_err(|e| ChaosError::Malformed { what: format!("history line {}", i + 1), detail: e.to_string() })?;
        events.push(event);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_reads_back_what_was_recorded() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("h.jsonl");
        let h = History::create(&path)?;
        h.record(EventKind::ReadOk { op: 1, node: 2, as_of_index: 3, total: 4 });
        h.record(EventKind::Fault { name: "kill".into(), nodes: vec![1], detail: "kill -9".into() });
        let events = h.finish()?;
        assert_eq!(load(&path)?, events);
        assert_eq!(events.len(), 2);
        Ok(())
    }
}
