//! Performance samples and reports through `apply` (issue 10; A5.3, C8-C9): a sample is stored
//! once under its end and node, a retried one changes nothing, a node's facts only move forward in
//! time, malformed samples are refused at their log position, the first report stored under an id
//! wins, and storing a report is an audit entry while a sample is not.

#[path = "common/store.rs"]
mod store;

use store::Store;

use dtm_cluster::performance;
use dtm_model::state;
use dtm_model::state::command::Kind;
use dtm_model::state::command_response::Result as Reply;
use dtm_model::state::performance_command::Kind as P;

impl Store {
    async fn apply(&mut self, kind: P) -> state::CommandResponse {
        self.apply_at(1_000, Kind::Performance(state::PerformanceCommand { kind: Some(kind) })).await
    }

    fn audit_size(&self) -> u64 {
        self.reader.get_msg::<state::AuditHead>(dtm_cluster::tables::AUDIT_HEAD).expect("head").map_or(0, |h| h.size)
    }
}

fn sample(node: u64, to_ms: u64, reported_at_ms: u64, retention: u32) -> P {
    P::Sample(state::RecordPerformanceSample {
        sample: Some(state::PerformanceSample {
            node_id: node,
            from_ms: to_ms - 1_000,
            to_ms,
            ready_ms: 1_000,
            channels: vec![state::ChannelLatency {
                channel: "rest".into(),
                class: "ok".into(),
                count: 2,
                sum_us: 300,
                max_us: 200,
                buckets: vec![
                    state::LatencyBucket { upto_us: 100, count: 1 },
                    state::LatencyBucket { upto_us: 200, count: 1 },
                ],
            }],
            facts: Some(state::NodeFacts {
                node_id: node,
                audit_retention_days: retention,
                reported_at_ms,
                ..Default::default()
            }),
            ..Default::default()
        }),
    })
}

fn rejected(r: &state::CommandResponse) -> bool {
    matches!(r.result, Some(Reply::Rejected(_)))
}

#[tokio::test]
async fn samples_facts_and_reports_are_stored_once() {
    let mut s = Store::open();
    assert!(!rejected(&s.apply(sample(2, 10_000, 10_000, 400)).await));
    assert!(!rejected(&s.apply(sample(3, 10_000, 10_000, 365)).await));
    // A retried proposal of the same sample changes nothing.
    assert!(!rejected(&s.apply(sample(2, 10_000, 10_000, 400)).await));
    let samples = s.reader.scan(performance::SAMPLE, None, 100).expect("scan");
    assert_eq!(samples.len(), 2);
    assert_eq!(samples[0].0, performance::sample_key(10_000, 2));
    // A late sample with older facts keeps the newer facts.
    assert!(!rejected(&s.apply(sample(2, 20_000, 20_000, 30)).await));
    assert!(!rejected(&s.apply(sample(2, 15_000, 15_000, 500)).await));
    let facts: state::NodeFacts = s.reader.get_msg(&performance::facts_key(2)).expect("read").expect("facts");
    assert_eq!((facts.audit_retention_days, facts.reported_at_ms), (30, 20_000));
    // Samples are measurements: no audit entries.
    assert_eq!(s.audit_size(), 0);

    // Malformed samples are refused.
    let mut bad = sample(2, 30_000, 30_000, 400);
    if let P::Sample(r) = &mut bad
        && let Some(x) = r.sample.as_mut()
    {
        x.ready_ms = 5_000;
    }
    assert!(rejected(&s.apply(bad).await));
    assert!(rejected(&s.apply(sample(0, 30_000, 30_000, 400)).await));

    // Reports: the first one under an id wins; storing one is audited.
    let report = |content: &str| {
        P::StoreReport(state::StorePerformanceReport {
            report: Some(state::PerformanceReport {
                id: "performance-2026-10".into(),
                kind: "performance".into(),
                content_json: content.as_bytes().to_vec(),
                ..Default::default()
            }),
        })
    };
    assert!(!rejected(&s.apply(report("{\"first\":true}")).await));
    assert!(!rejected(&s.apply(report("{\"first\":false}")).await));
    let stored: state::PerformanceReport =
        s.reader.get_msg(&performance::report_key("performance-2026-10")).expect("read").expect("report");
    assert_eq!(stored.content_json, b"{\"first\":true}");
    assert_eq!(s.audit_size(), 2);
    let wrong_kind = P::StoreReport(state::StorePerformanceReport {
        report: Some(state::PerformanceReport { id: "x".into(), kind: "gossip".into(), ..Default::default() }),
    });
    assert!(rejected(&s.apply(wrong_kind).await));
}
