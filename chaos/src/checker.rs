//! The checker: reads a history (requests, answers, faults and the final state of every node) and
//! says whether the cluster kept its promises, with the evidence for every broken one.
//!
//! Promises checked:
//! - every submission answered 201 is stored on every node, exactly once, under the ids it was
//!   answered with (`LostAcknowledged`, `Duplicated`);
//! - nothing is stored that was never sent, or that was refused with a definite 4xx
//!   (`Phantom`);
//! - a linearizable read never sees fewer records, or an older log index, than writes acknowledged
//!   before it began, and never goes back in time on a node (`LinearizableRegression`);
//! - every node holds the same records and the same aggregate digest at the same index
//!   (`Divergence`, `DigestMismatch`), and every node could be read after healing (`Unreadable`).
//!
//! Submissions that were never answered 201 (timeouts, 503 until the run ended) are indeterminate:
//! they may be stored, at most once, or not at all.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::Serialize;

use crate::history::Digest;
use crate::history::Event;
use crate::history::EventKind;
use crate::history::StoredRecord;
use crate::limits::EVIDENCE_PER_KIND_MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    LostAcknowledged,
    Duplicated,
    Phantom,
    LinearizableRegression,
    Divergence,
    DigestMismatch,
    AuditMismatch,
    Unreadable,
}

impl ViolationKind {
    pub fn name(self) -> &'static str {
        match self {
            ViolationKind::LostAcknowledged => "lost_acknowledged",
            ViolationKind::Duplicated => "duplicated",
            ViolationKind::Phantom => "phantom",
            ViolationKind::LinearizableRegression => "linearizable_regression",
            ViolationKind::Divergence => "divergence",
            ViolationKind::DigestMismatch => "digest_mismatch",
            ViolationKind::AuditMismatch => "audit_mismatch",
            ViolationKind::Unreadable => "unreadable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub kind: ViolationKind,
    pub node: Option<u64>,
    pub dataset: Option<String>,
    /// A sentence naming the submission, read or record and what was expected of it.
    pub evidence: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    pub submissions: usize,
    pub acknowledged: usize,
    pub indeterminate: usize,
    pub refused: usize,
    pub linearizable_reads: usize,
    pub faults: usize,
    pub nodes_checked: usize,
    pub violations: Vec<Violation>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn count(&self, kind: ViolationKind) -> usize {
        self.violations.iter().filter(|v| v.kind == kind).count()
    }

    /// The verdict line, the counts, and up to `EVIDENCE_PER_KIND_MAX` pieces of evidence per kind.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        let _ = writeln!(
            out,
            "VERDICT: {verdict}: {} submissions ({} acknowledged, {} indeterminate, {} refused), \
             {} linearizable reads, {} faults, {} nodes checked, {} violations",
            self.submissions,
            self.acknowledged,
            self.indeterminate,
            self.refused,
            self.linearizable_reads,
            self.faults,
            self.nodes_checked,
            self.violations.len()
        );
        let mut by_kind: BTreeMap<ViolationKind, Vec<&Violation>> = BTreeMap::new();
        for v in &self.violations {
            by_kind.entry(v.kind).or_default().push(v);
        }
        for (kind, vs) in by_kind {
            let _ = writeln!(out, "  {}: {}", kind.name(), vs.len());
            for v in vs.iter().take(EVIDENCE_PER_KIND_MAX) {
                let node = v.node.map(|n| format!("node {n}: ")).unwrap_or_default();
                let ds = v.dataset.as_deref().map(|d| format!("[{d}] ")).unwrap_or_default();
                let _ = writeln!(out, "    - {ds}{node}{}", v.evidence);
            }
            if vs.len() > EVIDENCE_PER_KIND_MAX {
                let _ = writeln!(out, "    … and {} more (see the report)", vs.len() - EVIDENCE_PER_KIND_MAX);
            }
        }
        out
    }
}

/// One submission: one idempotency key, however many attempts it took.
#[derive(Debug)]
struct Submission {
    writer: u64,
    seq: u64,
    n: u64,
    dataset: String,
    key: String,
    ack: Option<Ack>,
    /// The last attempt was refused with a definite 4xx and no attempt was acknowledged.
    refused: bool,
}

#[derive(Debug, Clone)]
struct Ack {
    t_ms: u64,
    node: u64,
    ids: Vec<String>,
    commit_index: u64,
}

/// What was known when a read began: the reference it must not fall behind.
#[derive(Debug)]
struct ReadStart {
    node: u64,
    dataset: String,
    t_ms: u64,
    acked_before: usize,
    commit_index_before: u64,
    /// The last acknowledgement before the read, for the evidence.
    last_ack: Option<String>,
    /// The highest index a read on this node had answered at before this read began.
    node_index_before: u64,
}

type NodeStates = BTreeMap<u64, (Vec<StoredRecord>, Option<Digest>)>;

pub fn check(events: &[Event]) -> Verdict {
    let mut verdict = Verdict::default();
    let mut subs: BTreeMap<u64, Submission> = BTreeMap::new();
    // Per dataset: acknowledgements so far, in history order.
    let mut acked_count: BTreeMap<String, usize> = BTreeMap::new();
    let mut max_commit: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut node_index: BTreeMap<u64, u64> = BTreeMap::new();
    let mut reads: BTreeMap<u64, ReadStart> = BTreeMap::new();
    let mut finals: BTreeMap<String, NodeStates> = BTreeMap::new();
    let mut unreadable: BTreeMap<u64, String> = BTreeMap::new();
    let mut audits: BTreeMap<u64, (u64, String, Option<String>)> = BTreeMap::new();
    let mut nodes: BTreeSet<u64> = BTreeSet::new();

    for e in events {
        match &e.kind {
            EventKind::WriteInvoke { op, writer, seq, n, dataset, idempotency_key, .. } => {
                subs.entry(*op).or_insert_with(|| Submission {
                    writer: *writer,
                    seq: *seq,
                    n: *n,
                    dataset: dataset.clone(),
                    key: idempotency_key.clone(),
                    ack: None,
                    refused: false,
                });
            }
            EventKind::WriteOk { op, node, ids, commit_index, .. } => {
                let Some(s) = subs.get_mut(op) else { continue };
                if s.ack.is_some() {
                    continue;
                }
                s.refused = false;
                s.ack = Some(Ack { t_ms: e.t_ms, node: *node, ids: ids.clone(), commit_index: *commit_index });
                *acked_count.entry(s.dataset.clone()).or_default() += 1;
                let m = max_commit.entry(s.dataset.clone()).or_default();
                if *commit_index >= m.0 {
                    *m = (*commit_index, s.key.clone());
                }
            }
            EventKind::WriteFail { op, definite, .. } => {
                if let Some(s) = subs.get_mut(op)
                    && s.ack.is_none()
                {
                    s.refused = *definite;
                }
            }
            EventKind::ReadInvoke { op, node, dataset } => {
                let (commit_index_before, last_ack) = max_commit.get(dataset).cloned().unwrap_or_default();
                reads.insert(
                    *op,
                    ReadStart {
                        node: *node,
                        dataset: dataset.clone(),
                        t_ms: e.t_ms,
                        acked_before: acked_count.get(dataset).copied().unwrap_or(0),
                        commit_index_before,
                        last_ack: (!last_ack.is_empty()).then_some(last_ack),
                        node_index_before: node_index.get(node).copied().unwrap_or(0),
                    },
                );
            }
            EventKind::ReadOk { op, node, as_of_index, total } => {
                verdict.linearizable_reads += 1;
                if let Some(r) = reads.get(op) {
                    check_read(&mut verdict, *op, r, *as_of_index, *total, e.t_ms);
                }
                let m = node_index.entry(*node).or_default();
                *m = (*m).max(*as_of_index);
            }
            EventKind::ReadFail { .. } => {}
            EventKind::Fault { .. } => verdict.faults += 1,
            EventKind::Heal { .. } | EventKind::Note { .. } => {}
            EventKind::FinalState { node, dataset, records, digest } => {
                nodes.insert(*node);
                finals.entry(dataset.clone()).or_default().insert(*node, (records.clone(), digest.clone()));
            }
            EventKind::FinalUnreadable { node, error } => {
                nodes.insert(*node);
                unreadable.insert(*node, error.clone());
            }
            EventKind::FinalAudit { node, common, hash_at_common, verification_problem, .. } => {
                audits.insert(*node, (*common, hash_at_common.clone(), verification_problem.clone()));
            }
        }
    }
    check_audit(&mut verdict, &audits);

    verdict.submissions = subs.len();
    verdict.acknowledged = subs.values().filter(|s| s.ack.is_some()).count();
    verdict.refused = subs.values().filter(|s| s.refused).count();
    verdict.indeterminate = verdict.submissions - verdict.acknowledged - verdict.refused;
    verdict.nodes_checked = nodes.len();

    for (node, error) in &unreadable {
        verdict.violations.push(Violation {
            kind: ViolationKind::Unreadable,
            node: Some(*node),
            dataset: None,
            evidence: format!("the node could not be read after healing: {error}"),
        });
    }
    // Every dataset that was written to must have a final state on every readable node.
    let datasets: BTreeSet<String> = subs.values().map(|s| s.dataset.clone()).chain(finals.keys().cloned()).collect();
    for ds in &datasets {
        let states = finals.get(ds).cloned().unwrap_or_default();
        for node in nodes.iter().filter(|n| !unreadable.contains_key(n) && !states.contains_key(n)) {
            verdict.violations.push(Violation {
                kind: ViolationKind::Unreadable,
                node: Some(*node),
                dataset: Some(ds.clone()),
                evidence: "no final state was read for this dataset".into(),
            });
        }
        check_dataset(&mut verdict, ds, &subs, &states);
    }
    verdict
}

fn check_read(verdict: &mut Verdict, op: u64, r: &ReadStart, as_of_index: u64, total: u64, done_ms: u64) {
    let mut push = |evidence: String| {
        verdict.violations.push(Violation {
            kind: ViolationKind::LinearizableRegression,
            node: Some(r.node),
            dataset: Some(r.dataset.clone()),
            evidence,
        })
    };
    let window = format!("read {op} (begun at {} ms, answered at {done_ms} ms)", r.t_ms);
    if (total as usize) < r.acked_before {
        push(format!(
            "{window} counted {total} records, but {} submissions had been acknowledged before it began",
            r.acked_before
        ));
    }
    if as_of_index < r.commit_index_before {
        push(format!(
            "{window} answered as of log index {as_of_index}, but submission {} had been acknowledged at \
             commit index {} before it began",
            r.last_ack.as_deref().unwrap_or("?"),
            r.commit_index_before
        ));
    }
    if as_of_index < r.node_index_before {
        push(format!(
            "{window} answered as of log index {as_of_index}, but an earlier read on this node had \
             answered as of {}",
            r.node_index_before
        ));
    }
}

fn check_dataset(verdict: &mut Verdict, ds: &str, subs: &BTreeMap<u64, Submission>, states: &NodeStates) {
    let sent: BTreeMap<(u64, u64), &Submission> =
        subs.values().filter(|s| s.dataset == ds).map(|s| ((s.writer, s.seq), s)).collect();
    let mut push = |kind, node: Option<u64>, evidence: String| {
        verdict.violations.push(Violation { kind, node, dataset: Some(ds.to_string()), evidence })
    };
    let mut lost_on: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for (node, (records, _)) in states {
        let mut by_payload: BTreeMap<(u64, u64), Vec<&StoredRecord>> = BTreeMap::new();
        let mut by_id: BTreeMap<&str, usize> = BTreeMap::new();
        for r in records {
            *by_id.entry(r.id.as_str()).or_default() += 1;
            let (Some(w), Some(s)) = (r.writer, r.seq) else {
                push(ViolationKind::Phantom, Some(*node), format!("record {} has no writer/seq: never sent", r.id));
                continue;
            };
            by_payload.entry((w, s)).or_default().push(r);
            match sent.get(&(w, s)) {
                None => push(
                    ViolationKind::Phantom,
                    Some(*node),
                    format!("record {} (writer {w}, seq {s}) was never sent to this dataset", r.id),
                ),
                Some(sub) if r.n != Some(sub.n) => push(
                    ViolationKind::Phantom,
                    Some(*node),
                    format!(
                        "record {} (writer {w}, seq {s}) holds n={:?}, but {} sent n={}",
                        r.id, r.n, sub.key, sub.n
                    ),
                ),
                Some(sub) if sub.refused => push(
                    ViolationKind::Phantom,
                    Some(*node),
                    format!("record {} is submission {}, which was refused with a 4xx", r.id, sub.key),
                ),
                Some(_) => {}
            }
        }
        for (id, count) in by_id.iter().filter(|(_, c)| **c > 1) {
            push(ViolationKind::Duplicated, Some(*node), format!("record id {id} is listed {count} times"));
        }
        for ((w, s), rs) in by_payload.iter().filter(|(_, rs)| rs.len() > 1) {
            let key = sent.get(&(*w, *s)).map(|s| s.key.as_str()).unwrap_or("?");
            let ids: Vec<&str> = rs.iter().map(|r| r.id.as_str()).collect();
            push(
                ViolationKind::Duplicated,
                Some(*node),
                format!("submission {key} (writer {w}, seq {s}) is stored {} times: ids {ids:?}", rs.len()),
            );
        }
        for sub in sent.values() {
            let Some(ack) = &sub.ack else { continue };
            let stored: BTreeSet<&str> =
                by_payload.get(&(sub.writer, sub.seq)).into_iter().flatten().map(|r| r.id.as_str()).collect();
            let missing: Vec<&String> = ack.ids.iter().filter(|i| !stored.contains(i.as_str())).collect();
            if stored.is_empty() || !missing.is_empty() {
                lost_on.entry(*node).or_default().extend(ack.ids.iter().cloned());
                let found = if stored.is_empty() {
                    "it is not stored".to_string()
                } else {
                    format!("it is stored under other ids {stored:?}")
                };
                push(
                    ViolationKind::LostAcknowledged,
                    Some(*node),
                    format!(
                        "submission {} (writer {}, seq {}) was answered 201 by node {} at {} ms with ids {:?} \
                         at commit index {}, but {found}",
                        sub.key, sub.writer, sub.seq, ack.node, ack.t_ms, ack.ids, ack.commit_index
                    ),
                );
            }
        }
    }
    // Divergence beyond the acknowledged records already reported: every node must hold the same ids.
    let all: BTreeSet<&str> = states.values().flat_map(|(rs, _)| rs.iter().map(|r| r.id.as_str())).collect();
    for (node, (records, _)) in states {
        let here: BTreeSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
        let lost = lost_on.get(node);
        let absent: Vec<&str> =
            all.difference(&here).copied().filter(|i| !lost.is_some_and(|l| l.contains(*i))).collect();
        if !absent.is_empty() {
            let shown: Vec<&str> = absent.iter().take(5).copied().collect();
            push(
                ViolationKind::Divergence,
                Some(*node),
                format!("{} record ids held by other nodes are absent here, e.g. {shown:?}", absent.len()),
            );
        }
    }
    let digests: BTreeMap<u64, Option<&Digest>> = states.iter().map(|(n, (_, d))| (*n, d.as_ref())).collect();
    // Equal digests read at different log indexes are the same aggregates (the entries between were
    // audit events or catalog changes); a node that lags with other aggregates differs in the hash.
    let distinct: BTreeSet<Option<&str>> = digests.values().map(|d| d.map(|d| d.sha256.as_str())).collect();
    if distinct.len() > 1 {
        let shown: Vec<String> = digests
            .iter()
            .map(|(n, d)| match d {
                Some(d) => format!("node {n}: {} at index {}", d.sha256, d.as_of_index),
                None => format!("node {n}: no digest"),
            })
            .collect();
        push(ViolationKind::DigestMismatch, None, format!("aggregate digests differ: {}", shown.join("; ")));
    }
}

/// Every node's audit chain must be the same: the entry at the length all of them reached has the
/// same hash everywhere (each hash commits to every entry before it), and no node's own
/// verification may report a problem.
fn check_audit(verdict: &mut Verdict, audits: &BTreeMap<u64, (u64, String, Option<String>)>) {
    for (node, (_, _, problem)) in audits {
        if let Some(p) = problem {
            verdict.violations.push(Violation {
                kind: ViolationKind::AuditMismatch,
                node: Some(*node),
                dataset: None,
                evidence: format!("the node's own audit verification failed: {p}"),
            });
        }
    }
    let distinct: BTreeSet<(u64, &str)> = audits.values().map(|(c, h, _)| (*c, h.as_str())).collect();
    if distinct.len() > 1 {
        let shown: Vec<String> =
            audits.iter().map(|(n, (c, h, _))| format!("node {n}: entry {c} has hash {h}")).collect();
        verdict.violations.push(Violation {
            kind: ViolationKind::AuditMismatch,
            node: None,
            dataset: None,
            evidence: format!("audit chains differ: {}", shown.join("; ")),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds synthetic histories in order; times advance by one millisecond per event.
    #[derive(Default)]
    struct H {
        events: Vec<Event>,
    }

    const DS: &str = "chaos";

    impl H {
        fn push(&mut self, kind: EventKind) -> &mut Self {
            let t_ms = self.events.len() as u64;
            self.events.push(Event { t_ms, kind });
            self
        }
        fn invoke(&mut self, op: u64) -> &mut Self {
            self.push(EventKind::WriteInvoke {
                op,
                writer: 1,
                seq: op,
                n: op * 10,
                dataset: DS.into(),
                idempotency_key: format!("w1-{op}"),
                node: 1,
                attempt: 1,
            })
        }
        fn ok(&mut self, op: u64, commit_index: u64) -> &mut Self {
            self.push(EventKind::WriteOk { op, node: 1, ids: vec![id(op)], commit_index, replayed: false })
        }
        fn fail(&mut self, op: u64, definite: bool) -> &mut Self {
            self.push(EventKind::WriteFail { op, node: 1, status: Some(503), error: "busy".into(), definite })
        }
        fn read(&mut self, op: u64, node: u64, as_of_index: u64, total: u64) -> &mut Self {
            self.push(EventKind::ReadInvoke { op, node, dataset: DS.into() });
            self.push(EventKind::ReadOk { op, node, as_of_index, total })
        }
        fn final_state(&mut self, node: u64, records: Vec<StoredRecord>, sha: &str) -> &mut Self {
            let digest = Some(Digest { as_of_index: 100, sha256: sha.into() });
            self.push(EventKind::FinalState { node, dataset: DS.into(), records, digest })
        }
        fn everywhere(&mut self, records: Vec<StoredRecord>) -> &mut Self {
            for node in 1..=3 {
                self.final_state(node, records.clone(), "d");
            }
            self
        }
        fn check(&self) -> Verdict {
            check(&self.events)
        }
    }

    fn id(op: u64) -> String {
        format!("id-{op}")
    }

    fn rec(op: u64) -> StoredRecord {
        StoredRecord { id: id(op), writer: Some(1), seq: Some(op), n: Some(op * 10) }
    }

    fn kinds(v: &Verdict) -> BTreeSet<ViolationKind> {
        v.violations.iter().map(|v| v.kind).collect()
    }

    #[test]
    fn a_clean_history_passes() {
        let mut h = H::default();
        h.invoke(1).ok(1, 5).invoke(2).fail(2, false).read(10, 2, 5, 1).invoke(3).ok(3, 6);
        h.read(11, 3, 6, 2).everywhere(vec![rec(1), rec(3)]);
        let v = h.check();
        assert!(v.passed(), "{}", v.render());
        assert_eq!((v.submissions, v.acknowledged, v.indeterminate, v.nodes_checked), (3, 2, 1, 3));
        assert!(v.render().starts_with("VERDICT: PASS"));
    }

    #[test]
    fn an_indeterminate_submission_may_be_stored_once() {
        let mut h = H::default();
        h.invoke(1).fail(1, false).everywhere(vec![rec(1)]);
        assert!(h.check().passed());
    }

    #[test]
    fn an_acknowledged_record_missing_on_one_node_is_lost() {
        let mut h = H::default();
        h.invoke(1).ok(1, 5).invoke(2).ok(2, 6);
        h.final_state(1, vec![rec(1), rec(2)], "d").final_state(2, vec![rec(1), rec(2)], "d");
        h.final_state(3, vec![rec(1)], "d");
        let v = h.check();
        assert_eq!(v.count(ViolationKind::LostAcknowledged), 1, "{}", v.render());
        let lost = &v.violations[0];
        assert_eq!(lost.node, Some(3));
        assert!(lost.evidence.contains("w1-2") && lost.evidence.contains("commit index 6"), "{}", lost.evidence);
        assert!(v.render().starts_with("VERDICT: FAIL"));
        assert_eq!(kinds(&v), BTreeSet::from([ViolationKind::LostAcknowledged]), "no double report as divergence");
    }

    #[test]
    fn an_acknowledged_record_stored_under_other_ids_is_lost() {
        let mut h = H::default();
        h.invoke(1).ok(1, 5).everywhere(vec![StoredRecord { id: "other".into(), ..rec(1) }]);
        assert_eq!(h.check().count(ViolationKind::LostAcknowledged), 3);
    }

    #[test]
    fn a_record_stored_twice_is_duplicated() {
        let mut h = H::default();
        let twice = StoredRecord { id: "id-1b".into(), ..rec(1) };
        h.invoke(1).ok(1, 5).everywhere(vec![rec(1), twice]);
        let v = h.check();
        assert_eq!(v.count(ViolationKind::Duplicated), 3, "{}", v.render());
        let mut h = H::default();
        h.invoke(1).ok(1, 5).everywhere(vec![rec(1), rec(1)]);
        assert!(h.check().count(ViolationKind::Duplicated) >= 3, "the same id listed twice");
    }

    #[test]
    fn a_record_never_sent_is_a_phantom() {
        let mut h = H::default();
        let other_payload = StoredRecord { id: "x".into(), writer: Some(9), seq: Some(9), n: Some(1) };
        let no_payload = StoredRecord { id: "y".into(), writer: None, seq: None, n: None };
        h.invoke(1).ok(1, 5).everywhere(vec![rec(1), other_payload, no_payload]);
        assert_eq!(h.check().count(ViolationKind::Phantom), 6);
    }

    #[test]
    fn a_changed_payload_or_a_refused_submission_stored_is_a_phantom() {
        let mut h = H::default();
        let changed = StoredRecord { n: Some(7), ..rec(1) };
        h.invoke(1).ok(1, 5).invoke(2).fail(2, true).everywhere(vec![changed, rec(2)]);
        let v = h.check();
        assert_eq!(v.count(ViolationKind::Phantom), 6, "{}", v.render());
        assert_eq!(v.refused, 1);
    }

    #[test]
    fn a_read_that_misses_acknowledged_writes_is_a_regression() {
        let mut h = H::default();
        h.invoke(1).ok(1, 5).invoke(2).ok(2, 6).read(10, 2, 6, 1).everywhere(vec![rec(1), rec(2)]);
        let v = h.check();
        assert_eq!(kinds(&v), BTreeSet::from([ViolationKind::LinearizableRegression]), "{}", v.render());
        let mut h = H::default();
        h.invoke(1).ok(1, 5).read(10, 2, 4, 1).everywhere(vec![rec(1)]);
        let v = h.check();
        assert!(v.violations[0].evidence.contains("commit index 5"), "{}", v.render());
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_miss_it() {
        let mut h = H::default();
        h.invoke(1).push(EventKind::ReadInvoke { op: 10, node: 2, dataset: DS.into() });
        h.ok(1, 5).push(EventKind::ReadOk { op: 10, node: 2, as_of_index: 4, total: 0 });
        h.everywhere(vec![rec(1)]);
        assert!(h.check().passed());
    }

    #[test]
    fn an_index_going_back_on_a_node_is_a_regression() {
        let mut h = H::default();
        h.read(10, 2, 9, 0).read(11, 3, 3, 0).read(12, 2, 8, 0).everywhere(vec![]);
        let v = h.check();
        assert_eq!(v.count(ViolationKind::LinearizableRegression), 1, "{}", v.render());
        assert_eq!(v.violations[0].node, Some(2));
    }

    #[test]
    fn different_digests_or_records_are_reported() {
        let mut h = H::default();
        h.invoke(1).fail(1, false);
        h.final_state(1, vec![rec(1)], "a").final_state(2, vec![rec(1)], "a").final_state(3, vec![], "b");
        let v = h.check();
        assert_eq!(
            kinds(&v),
            BTreeSet::from([ViolationKind::Divergence, ViolationKind::DigestMismatch]),
            "{}",
            v.render()
        );
    }

    #[test]
    fn an_unreadable_node_fails_the_run() {
        let mut h = H::default();
        h.invoke(1).ok(1, 5).final_state(1, vec![rec(1)], "d");
        h.push(EventKind::FinalUnreadable { node: 2, error: "connection refused".into() });
        let v = h.check();
        assert_eq!(v.count(ViolationKind::Unreadable), 1, "{}", v.render());
    }

    fn audit(node: u64, hash: &str, problem: Option<&str>) -> EventKind {
        EventKind::FinalAudit {
            node,
            size: 40 + node,
            common: 40,
            hash_at_common: hash.into(),
            verification_problem: problem.map(str::to_string),
        }
    }

    #[test]
    fn audit_chains_that_differ_or_fail_their_own_verification_are_reported() {
        let mut h = H::default();
        h.invoke(1).ok(1, 5).final_state(1, vec![rec(1)], "d").final_state(2, vec![rec(1)], "d");
        h.push(audit(1, "aa", None)).push(audit(2, "aa", None));
        assert!(h.check().passed(), "{}", h.check().render());
        h.push(audit(3, "bb", None));
        assert_eq!(h.check().count(ViolationKind::AuditMismatch), 1, "{}", h.check().render());
        let mut h = H::default();
        h.invoke(1).ok(1, 5).final_state(1, vec![rec(1)], "d");
        h.push(audit(1, "aa", Some("entry 7 (changed)")));
        assert_eq!(h.check().count(ViolationKind::AuditMismatch), 1);
    }
}
