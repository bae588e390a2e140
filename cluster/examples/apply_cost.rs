//! What `apply` costs per record, on a real (sealed) sled store, without the network or HTTPS:
//! group-commit entries of single-record submissions, as `dtm bench` makes them, each record with a
//! natural key and an aggregate contribution spread over a few hundred cells. Prints the best and
//! the median of several trials, so that a change to `apply` (an index, a table) can be measured on
//! a busy machine where end-to-end benchmarks vary by ±30 %.
//!
//! `cargo run --release -p dtm-cluster --example apply_cost -- [records] [trials] [single|batch] [uuid|submission] [conflicts]`
//!
//! `batch` makes entries of one 1,000-record submission (a batch upload's chunk) instead of 64
//! single-record submissions; `uuid` gives records ids of the old shape (indexed one `rid/` key per
//! record), `submission` (the default) the pipeline's `<submission>.<n>` (one `rsub/` key per
//! submission). `conflicts` applies the records once untimed, then times them sent again with
//! other content under the same natural keys: every record a conflict (a corrected batch sent
//! again).

#[path = "../tests/common/mod.rs"]
mod common;

use common::cmd;
use common::entry;

use std::sync::Arc;
use std::time::Instant;

use dtm_cluster::DtmApplier;
use dtm_model::state;
use dtm_model::state::command::Kind;
use openraft::storage::RaftStateMachine;

/// Submissions per log entry (what group commit makes at a few hundred clients).
const SUBMISSIONS_PER_ENTRY: usize = 64;
/// Records per submission in the `batch` shape (a batch upload's chunk).
const BATCH_RECORDS: usize = 1_000;

#[derive(Clone, Copy)]
struct Shape {
    batch: bool,
    uuid_ids: bool,
    conflicts: bool,
}
/// Distinct aggregate cells the records fall into.
const CELLS: usize = 360;

fn catalog() -> Vec<dtm_model::Entry> {
    let key = state::ApiKey { key_id: "k".into(), secret_sha256: vec![7; 32], ..Default::default() };
    let source = state::Source { id: "moj".into(), name: "MOJ".into(), ..Default::default() };
    let dataset =
        state::Dataset { id: "etx".into(), definition_json: b"{}".to_vec(), version: 1, ..Default::default() };
    vec![
        entry(1, cmd(Kind::RegisterSource(state::RegisterSource { source: Some(source), first_key: Some(key) }))),
        entry(2, cmd(Kind::DefineDataset(state::DefineDataset { dataset: Some(dataset) }))),
    ]
}

fn record(n: usize, id: String, salt: u8) -> state::RecordIn {
    let cell = n % CELLS;
    let contribution = dtm_dataset::Contribution {
        time: dtm_dataset::TimePoint::Month(2026, (cell % 12) as u8 + 1),
        dims: vec![serde_json::json!(format!("agency-{}", cell / 12)), serde_json::json!("web")],
        measures: [("transactions".to_string(), n as f64)].into(),
    };
    let payload = serde_json::json!({"ref": format!("r{n}"), "transactions": n, "padding": "x".repeat(200)});
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&(n as u64).to_be_bytes());
    state::RecordIn {
        id,
        payload_json: payload.to_string().into_bytes(),
        natural_key_hash: h.to_vec(),
        content_sha256: [&h[..31], &[salt]].concat(),
        contribution: Some(state::AggContribution {
            cell_key: contribution.cell_key(),
            measures: contribution.measures.into_iter().collect(),
        }),
        ..Default::default()
    }
}

/// splitmix64: a fixed, well-spread sequence, so that trials are repeatable.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn entries(records: usize, shape: Shape, first_index: u64, salt: u8) -> Vec<dtm_model::Entry> {
    let (submissions_per_entry, records_per_submission) =
        if shape.batch { (1, BATCH_RECORDS) } else { (SUBMISSIONS_PER_ENTRY, 1) };
    let mut out = Vec::new();
    let mut n = 0;
    let mut index = first_index;
    while n < records {
        let mut submissions = Vec::new();
        while submissions.len() < submissions_per_entry && n < records {
            let prefix = dtm_model::record_id::new_submission();
            let count = records_per_submission.min(records - n);
            let recs = (0..count)
                .map(|i| {
                    n += 1;
                    let id = if shape.uuid_ids {
                        // Random like the v4 UUIDs the pipeline gave records before.
                        let (a, b) = (mix(n as u64), mix(!(n as u64)));
                        format!(
                            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                            a >> 32,
                            a & 0xffff,
                            b >> 52,
                            (b >> 40) & 0xfff,
                            b & 0xffff_ffff_ffff
                        )
                    } else {
                        dtm_model::record_id::of(&prefix, i)
                    };
                    record(n, id, salt)
                })
                .collect();
            submissions.push(state::Submission {
                dataset: "etx".into(),
                source: "moj".into(),
                idempotency_key: format!("auto:{salt}:{n}"),
                fingerprint: vec![1; 32],
                key_id: "k".into(),
                channel: "rest".into(),
                records: recs,
                ..Default::default()
            });
        }
        out.push(entry(index, cmd(Kind::Ingest(state::IngestBatch { submissions }))));
        index += 1;
    }
    out
}

/// One trial on a fresh store: seconds spent applying `records` records.
async fn trial(records: usize, shape: Shape) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let applier = DtmApplier::default();
    let (_log, mut sm, _reader) =
        dtm_storage::open(dir.path(), &dtm_storage::StoreOptions::for_tests(), Arc::new(applier)).expect("open store");
    sm.apply(catalog()).await.expect("catalog");
    let mut next_index = 3;
    if shape.conflicts {
        let first = entries(records, shape, next_index, 0);
        next_index += first.len() as u64;
        for batch in first.chunks(16) {
            sm.apply(batch.to_vec()).await.expect("apply");
        }
    }
    let log = entries(records, shape, next_index, u8::from(shape.conflicts));
    let start = Instant::now();
    // Batches of 16 entries per `apply` call, as openraft hands them over under load.
    let mut log = log.into_iter().peekable();
    while log.peek().is_some() {
        let batch: Vec<_> = log.by_ref().take(16).collect();
        sm.apply(batch).await.expect("apply");
    }
    start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let records: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let trials: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(7).max(1);
    let batch = args.next().is_some_and(|a| a == "batch");
    let uuid_ids = args.next().is_some_and(|a| a == "uuid");
    let conflicts = args.next().is_some_and(|a| a == "conflicts");
    let shape = Shape { batch, uuid_ids, conflicts };
    let mut rates: Vec<f64> = Vec::new();
    for _ in 0..trials {
        rates.push(records as f64 / trial(records, shape).await);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "apply: {records} {}records in entries of {}, {} ids, {CELLS} cells: best {:.0} records/s, median {:.0} records/s ({trials} trials)",
        if conflicts { "conflicting " } else { "" },
        if batch { "one 1,000-record submission" } else { "64 single-record submissions" },
        if uuid_ids { "uuid" } else { "submission" },
        rates[trials - 1],
        rates[trials / 2]
    );
}
