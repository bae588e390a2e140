//! What performance commands do to the tables (A5.3, F4, C8–C9, A1.3): each node's periodic
//! sample of its request latencies and readiness is stored under its interval's end, so a report
//! for any period reads only that period's samples; the latest facts of each node (retention,
//! encryption, backups) are kept once per node for the compliance check; computed reports are
//! stored under their id, the first one winning (a leader change cannot make two monthly reports).
//! Deterministic like the rest of `apply`: everything comes from the command, checked against
//! bounds so that no node can store an oversized sample.

use dtm_model::state;
use dtm_model::state::performance_command::Kind;
use dtm_storage::StoreError;
use dtm_storage::Txn;

use crate::applier::applied;
use crate::applier::rejected;

/// Samples: `pfs/<to_ms be64><node_id be64>` → `PerformanceSample` (time order, then node).
pub const SAMPLE: &[u8] = b"pfs/";
/// Each node's latest facts: `pff/<node_id be64>` → `NodeFacts`.
pub const FACTS: &[u8] = b"pff/";
/// Stored reports: `pfr/<id>` → `PerformanceReport`.
pub const REPORT: &[u8] = b"pfr/";

/// Channel × outcome-class series one sample may carry.
pub const SAMPLE_SERIES_MAX: usize = 64;
/// Histogram buckets one series may carry (1 significant digit over microseconds to an hour is
/// about 500 at most; a real interval fills far fewer).
pub const SERIES_BUCKETS_MAX: usize = 1_024;
/// Longest interval one sample may cover.
pub const SAMPLE_SPAN_MS_MAX: u64 = 24 * 3600 * 1000;
/// Largest stored report (JSON).
pub const REPORT_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Longest report id.
pub const REPORT_ID_BYTES_MAX: usize = 128;
/// Longest text field (channel, class, site, version, override).
const TEXT_BYTES_MAX: usize = 256;
/// Unsafe overrides and TLS versions one facts message may list.
const LIST_ITEMS_MAX: usize = 16;

pub fn sample_key(to_ms: u64, node_id: u64) -> Vec<u8> {
    let mut k = SAMPLE.to_vec();
    k.extend_from_slice(&to_ms.to_be_bytes());
    k.extend_from_slice(&node_id.to_be_bytes());
    k
}

pub fn facts_key(node_id: u64) -> Vec<u8> {
    let mut k = FACTS.to_vec();
    k.extend_from_slice(&node_id.to_be_bytes());
    k
}

pub fn report_key(id: &str) -> Vec<u8> {
    let mut k = REPORT.to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

pub fn apply(txn: &mut Txn<'_>, c: &state::PerformanceCommand) -> Result<state::CommandResponse, StoreError> {
    match &c.kind {
        Some(Kind::Sample(s)) => record_sample(txn, s),
        Some(Kind::StoreReport(r)) => store_report(txn, r),
        None => Ok(rejected("unsupported_command", "performance command of an unknown kind")),
    }
}

/// Why a sample cannot be stored, if it cannot.
pub fn check_sample(s: &state::PerformanceSample) -> Option<String> {
    if s.node_id == 0 || s.to_ms <= s.from_ms || s.to_ms - s.from_ms > SAMPLE_SPAN_MS_MAX {
        return Some("a sample names its node and covers 1 ms to 24 hours".into());
    }
    if s.interval_ms > SAMPLE_SPAN_MS_MAX {
        return Some("a sample interval is at most 24 hours".into());
    }
    if s.ready_ms > s.to_ms - s.from_ms {
        return Some("a node cannot be ready longer than the interval".into());
    }
    if s.channels.len() > SAMPLE_SERIES_MAX {
        return Some(format!("a sample carries at most {SAMPLE_SERIES_MAX} series"));
    }
    for c in &s.channels {
        if c.channel.len() > TEXT_BYTES_MAX || c.class.len() > TEXT_BYTES_MAX || c.buckets.len() > SERIES_BUCKETS_MAX {
            return Some(format!("a series has short names and at most {SERIES_BUCKETS_MAX} buckets"));
        }
    }
    if let Some(f) = &s.facts {
        let long = [&f.site, &f.version, &f.encryption_algorithm].iter().any(|t| t.len() > TEXT_BYTES_MAX);
        let lists = f.tls_versions.len() > LIST_ITEMS_MAX || f.unsafe_overrides.len() > LIST_ITEMS_MAX;
        let items = f.tls_versions.iter().chain(&f.unsafe_overrides).any(|t| t.len() > TEXT_BYTES_MAX);
        if long || lists || items || f.node_id != s.node_id {
            return Some("the sample's facts are malformed or about another node".into());
        }
    }
    None
}

fn record_sample(txn: &mut Txn<'_>, c: &state::RecordPerformanceSample) -> Result<state::CommandResponse, StoreError> {
    let Some(s) = &c.sample else { return Ok(rejected("invalid_command", "sample missing")) };
    if let Some(problem) = check_sample(s) {
        return Ok(rejected("invalid_command", problem));
    }
    let k = sample_key(s.to_ms, s.node_id);
    // A retried proposal of the same sample keeps the first.
    if txn.get(&k)?.is_some() {
        return Ok(applied());
    }
    if let Some(f) = &s.facts {
        // Facts only move forward in time: a late retry of an old sample does not undo newer facts.
        let fk = facts_key(s.node_id);
        let newer = txn.get_msg::<state::NodeFacts>(&fk)?.is_some_and(|old| old.reported_at_ms > f.reported_at_ms);
        if !newer {
            txn.put_msg(fk, f);
        }
    }
    txn.put_msg(k, s);
    Ok(applied())
}

fn store_report(txn: &mut Txn<'_>, c: &state::StorePerformanceReport) -> Result<state::CommandResponse, StoreError> {
    let Some(r) = &c.report else { return Ok(rejected("invalid_command", "report missing")) };
    if r.id.is_empty() || r.id.len() > REPORT_ID_BYTES_MAX || r.id.contains('\0') {
        return Ok(rejected("invalid_command", format!("a report id is 1 to {REPORT_ID_BYTES_MAX} bytes")));
    }
    if r.content_json.len() > REPORT_BYTES_MAX || !matches!(r.kind.as_str(), "performance" | "connections") {
        return Ok(rejected("invalid_command", "a report is a performance or connections report of bounded size"));
    }
    let k = report_key(&r.id);
    if txn.get(&k)?.is_none() {
        txn.put_msg(k, r);
    }
    Ok(applied())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> state::PerformanceSample {
        state::PerformanceSample {
            node_id: 2,
            from_ms: 1_000,
            to_ms: 301_000,
            ready_ms: 300_000,
            channels: vec![state::ChannelLatency { channel: "rest".into(), class: "ok".into(), ..Default::default() }],
            facts: Some(state::NodeFacts { node_id: 2, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn samples_are_bounded() {
        assert_eq!(check_sample(&sample()), None);
        let bad = [
            state::PerformanceSample { to_ms: 1_000, ..sample() },
            state::PerformanceSample { ready_ms: 300_001, ..sample() },
            state::PerformanceSample { node_id: 0, ..sample() },
            state::PerformanceSample { facts: Some(state::NodeFacts { node_id: 3, ..Default::default() }), ..sample() },
            state::PerformanceSample { channels: vec![Default::default(); SAMPLE_SERIES_MAX + 1], ..sample() },
        ];
        for s in bad {
            assert!(check_sample(&s).is_some(), "{s:?}");
        }
    }

    #[test]
    fn sample_keys_sort_by_time_then_node() {
        assert!(sample_key(5, 9) < sample_key(6, 1));
        assert!(sample_key(5, 1) < sample_key(5, 2));
        assert!(sample_key(u64::MAX, u64::MAX).starts_with(SAMPLE));
    }
}
