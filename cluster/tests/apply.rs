//! The state machine's `apply` (F2, A1.5, A2.5): commands through real sled stores, checking answers,
//! idempotency inside and across entries, revocation at its log position, and that two nodes
//! applying the same log end with byte-identical tables (determinism).

mod common;

use common::cmd;
use common::entry;

use std::sync::Arc;

use dtm_cluster::DtmApplier;
use dtm_model::state;
use dtm_model::state::command::Kind;
use dtm_model::state::command_response::Result as Reply;
use dtm_storage::StateMachineStore;
use dtm_storage::StateReader;
use openraft::storage::RaftStateMachine;

fn open() -> (tempfile::TempDir, StateMachineStore, StateReader, DtmApplier) {
    let dir = tempfile::tempdir().expect("tempdir");
    let applier = DtmApplier::default();
    let (_log, sm, reader) =
        dtm_storage::open(dir.path(), &dtm_storage::StoreOptions::for_tests(), Arc::new(applier.clone()))
            .expect("open store");
    (dir, sm, reader, applier)
}

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

fn key(id: &str) -> state::ApiKey {
    state::ApiKey { key_id: id.into(), secret_sha256: vec![7; 32], created_at_ms: 1, ..Default::default() }
}

fn submission(idem: &str, payloads: &[&str], key_id: &str) -> state::Submission {
    state::Submission {
        dataset: "etx".into(),
        source: "moj".into(),
        idempotency_key: idem.into(),
        fingerprint: payloads.concat().into_bytes(),
        key_id: key_id.into(),
        records: payloads
            .iter()
            .enumerate()
            .map(|(i, p)| state::RecordIn {
                id: format!("{idem}-{i}"),
                payload_json: p.as_bytes().to_vec(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn log() -> Vec<dtm_model::Entry> {
    vec![
        entry(
            1,
            cmd(Kind::RegisterSource(state::RegisterSource {
                source: Some(state::Source { id: "moj".into(), name: "MOJ".into(), ..Default::default() }),
                first_key: Some(key("k1")),
            })),
        ),
        entry(
            2,
            cmd(Kind::DefineDataset(state::DefineDataset {
                dataset: Some(state::Dataset {
                    id: "etx".into(),
                    definition_json: b"{}".to_vec(),
                    version: 1,
                    defined_at_ms: 1,
                    ..Default::default()
                }),
            })),
        ),
        // Two submissions with the same key in one entry: the second is a replay of the first.
        entry(
            3,
            cmd(Kind::Ingest(state::IngestBatch {
                submissions: vec![
                    submission("a", &["{\"n\":1}", "{\"n\":2}"], "k1"),
                    submission("a", &["{\"n\":1}", "{\"n\":2}"], "k1"),
                ],
            })),
        ),
        // Across entries: same key and body replays, same key and other body conflicts, unknown
        // dataset fails alone without affecting its neighbours.
        entry(
            4,
            cmd(Kind::Ingest(state::IngestBatch {
                submissions: vec![
                    submission("a", &["{\"n\":1}", "{\"n\":2}"], "k1"),
                    submission("a", &["{\"n\":3}"], "k1"),
                    state::Submission { dataset: "nope".into(), ..submission("b", &["{}"], "k1") },
                    submission("c", &["{\"n\":4}"], "k1"),
                ],
            })),
        ),
        entry(5, cmd(Kind::RevokeKey(state::RevokeKey { source_id: "moj".into(), key_id: "k1".into() }))),
        entry(6, cmd(Kind::Ingest(state::IngestBatch { submissions: vec![submission("d", &["{\"n\":5}"], "k1")] }))),
        entry(
            7,
            cmd(Kind::DefineDataset(state::DefineDataset {
                dataset: Some(state::Dataset {
                    id: "etx".into(),
                    definition_json: b"{}".to_vec(),
                    version: 1,
                    defined_at_ms: 2,
                    ..Default::default()
                }),
            })),
        ),
        entry(8, state::Command { version: 99, ..cmd(Kind::Audit(state::AuditEvents::default())) }),
        // A day later: the idempotency keys above have expired, so key `a` with another body is a new
        // request now (with a fresh API key, since k1 was revoked).
        entry(9, cmd(Kind::IssueKey(state::IssueKey { source_id: "moj".into(), key: Some(key("k2")) }))),
        entry(
            10,
            state::Command {
                proposed_at_ms: DAY_MS + 1_000,
                ..cmd(Kind::Ingest(state::IngestBatch { submissions: vec![submission("a", &["{\"n\":9}"], "k2")] }))
            },
        ),
        // Natural keys (A1.5): a new key, the identical record again (duplicate), the same key with
        // other content (conflict), another key in the same cell; then the duplicate again in a
        // later entry.
        entry(
            11,
            state::Command {
                proposed_at_ms: DAY_MS + 2_000,
                ..cmd(Kind::Ingest(state::IngestBatch {
                    submissions: vec![keyed("e", &[(1, 1, 10.0), (1, 1, 10.0), (1, 2, 99.0), (2, 3, 5.0)])],
                }))
            },
        ),
        entry(
            12,
            state::Command {
                proposed_at_ms: DAY_MS + 3_000,
                ..cmd(Kind::Ingest(state::IngestBatch { submissions: vec![keyed("f", &[(1, 1, 10.0)])] }))
            },
        ),
    ]
}

/// A submission of records given as (natural key, content, measure value), all in one cell.
fn keyed(idem: &str, records: &[(u8, u8, f64)]) -> state::Submission {
    state::Submission {
        records: records
            .iter()
            .enumerate()
            .map(|(i, (key, content, x))| state::RecordIn {
                id: format!("{idem}-{i}"),
                payload_json: format!("{{\"x\":{x}}}").into_bytes(),
                natural_key_hash: vec![*key; 32],
                content_sha256: vec![*content; 32],
                contribution: Some(state::AggContribution {
                    cell_key: b"cell".to_vec(),
                    measures: [("x".to_string(), *x)].into(),
                }),
                ..Default::default()
            })
            .collect(),
        ..submission(idem, &[], "k2")
    }
}

/// A correction of `target` (issue 7): one record given as (natural key, content, measure value),
/// retracting the named version's value.
fn correction(
    idem: &str,
    target: &str,
    retract: Option<(&str, f64)>,
    reason: &str,
    record: (u8, u8, f64),
) -> state::Submission {
    state::Submission {
        corrects_id: target.into(),
        correction_reason: reason.into(),
        retract_id: retract.map(|(id, _)| id.to_string()).unwrap_or_default(),
        retract: retract.map(|(_, x)| state::AggContribution {
            cell_key: b"cell".to_vec(),
            measures: [("x".to_string(), x)].into(),
        }),
        ..keyed(idem, &[record])
    }
}

/// `log()` and then corrections: e-2 (the latest version of key 1, a conflict) is corrected, which
/// takes the counted e-0 (10, the cell's max) out of the cell and counts the correction (4); then
/// refusals (a superseded version, no reason, a stale retraction) and the corrected content sent
/// again (a duplicate of the correction).
fn log_with_corrections() -> Vec<dtm_model::Entry> {
    let mut log = log();
    let at = |ms: u64, kind| state::Command { proposed_at_ms: DAY_MS + ms, ..cmd(kind) };
    log.push(entry(
        13,
        at(
            4_000,
            Kind::Ingest(state::IngestBatch {
                submissions: vec![correction("g", "e-2", Some(("e-0", 10.0)), "typo in x", (1, 7, 4.0))],
            }),
        ),
    ));
    log.push(entry(
        14,
        at(
            5_000,
            Kind::Ingest(state::IngestBatch {
                submissions: vec![
                    correction("h", "e-0", Some(("e-0", 10.0)), "again", (1, 8, 3.0)),
                    correction("i", "g-0", Some(("g-0", 4.0)), " ", (1, 8, 3.0)),
                    correction("j", "g-0", Some(("e-0", 10.0)), "stale", (1, 8, 3.0)),
                    keyed("k", &[(1, 7, 4.0)]),
                ],
            }),
        ),
    ));
    log
}

fn ingest_results(r: &state::CommandResponse) -> &[state::SubmissionResult] {
    match &r.result {
        Some(Reply::Ingest(i)) => &i.results,
        other => panic!("not an ingest answer: {other:?}"),
    }
}

#[tokio::test]
async fn apply_answers_idempotency_revocation_and_conflicts() {
    let (_dir, mut sm, reader, _) = open();
    let replies = sm.apply(log()).await.expect("apply");
    assert!(matches!(replies[0].result, Some(Reply::Applied(_))));
    assert!(matches!(replies[1].result, Some(Reply::Applied(_))));

    let e3 = ingest_results(&replies[2]);
    assert_eq!(e3[0].ids, ["a-0", "a-1"]);
    assert_eq!(e3[0].commit_index, 3);
    assert!(!e3[0].replayed);
    assert_eq!(e3[1].ids, e3[0].ids, "same key in the same entry is a replay");
    assert!(e3[1].replayed);

    let e4 = ingest_results(&replies[3]);
    assert!(e4[0].replayed && e4[0].ids == ["a-0", "a-1"] && e4[0].commit_index == 3, "{:?}", e4[0]);
    assert_eq!(e4[1].error_code, "idempotency_conflict");
    assert_eq!(e4[2].error_code, "unknown_dataset");
    assert_eq!(e4[3].ids, ["c-0"], "a failing neighbour does not affect the others");

    assert_eq!(ingest_results(&replies[5])[0].error_code, "key_revoked", "revocation applies at its log position");
    assert!(matches!(&replies[6].result, Some(Reply::Rejected(r)) if r.code == "conflict"));
    assert!(matches!(&replies[7].result, Some(Reply::Rejected(r)) if r.code == "unsupported_command"));

    let late = &ingest_results(&replies[9])[0];
    assert!(late.error_code.is_empty() && !late.replayed, "an expired key starts a new request: {late:?}");
    assert_eq!(late.commit_index, 10);

    let e11 = &ingest_results(&replies[10])[0];
    assert_eq!(e11.outcomes, ["stored", "duplicate", "conflict", "stored"]);
    assert_eq!(e11.ids, ["e-0", "e-0", "e-2", "e-3"], "a duplicate answers the id of the record it repeats");
    let e12 = &ingest_results(&replies[11])[0];
    assert_eq!(
        (e12.outcomes.as_slice(), e12.ids.as_slice()),
        (&["duplicate".to_string()][..], &["e-0".to_string()][..])
    );

    let records = dtm_cluster::records::scan(&reader, "etx", None, 100).expect("scan");
    assert_eq!(records.len(), 7, "a-0, a-1 and c-0 once each, the late request, e-0, e-2 (a version) and e-3");
    let conflicts = reader.scan(&dtm_cluster::tables::conflicts_of("etx"), None, 100).expect("scan");
    assert_eq!(conflicts.len(), 1);
    let c: state::Conflict = prost::Message::decode(conflicts[0].1.as_slice()).expect("conflict");
    assert_eq!((c.first_id.as_str(), c.new_id.as_str(), c.version), ("e-0", "e-2", 2));
    // The aggregates count the first version of each key once: e-0 (10) and e-3 (5), in one cell.
    let cell: state::AggCell =
        reader.get_msg(&dtm_cluster::tables::aggregate_cell("etx", b"cell")).expect("read").expect("cell");
    let x = &cell.measures["x"];
    assert_eq!((cell.count, x.sum, x.min, x.max), (2, 15.0, 5.0, 10.0));
    // Only the last request's idempotency entry (and its entry's expiry list) is left: the test
    // submissions were all received at time 0, so each later entry expires the ones before it.
    assert_eq!(reader.scan(dtm_cluster::tables::IDEMPOTENCY, None, 100).expect("scan").len(), 1);
    let lists = reader.scan(dtm_cluster::tables::IDEMPOTENCY_EXPIRY_BY_ENTRY, None, 100).expect("scan");
    assert_eq!(lists.len(), 1);
    assert_eq!(lists[0].0, dtm_cluster::tables::idempotency_expiry_of_entry(DAY_MS, 12));
    let list: state::IdempotencyExpiry = prost::Message::decode(lists[0].1.as_slice()).expect("list");
    assert_eq!(list.keys, vec![dtm_cluster::tables::idempotency("moj", "f")]);
    assert!(reader.scan(dtm_cluster::tables::IDEMPOTENCY_EXPIRY, None, 100).expect("scan").is_empty());
    let (applied, _) = sm.applied_state().await.expect("applied state");
    assert_eq!(applied.map(|l| l.index), Some(12));
}

#[tokio::test]
async fn corrections_replace_the_counted_contribution_and_refuse_what_is_not_latest() {
    let (_dir, mut sm, reader, _) = open();
    let replies = sm.apply(log_with_corrections()).await.expect("apply");
    let g = &ingest_results(&replies[12])[0];
    assert_eq!((g.outcomes.as_slice(), g.ids.as_slice()), (&["corrected".to_string()][..], &["g-0".to_string()][..]));
    let e14 = ingest_results(&replies[13]);
    assert_eq!(e14[0].error_code, "conflict", "e-0 is superseded: {:?}", e14[0]);
    assert!(e14[0].error_message.contains("`g-0`"), "the refusal names the latest version: {}", e14[0].error_message);
    assert_eq!(e14[1].error_code, "invalid_correction", "a blank reason is refused");
    assert_eq!(e14[2].error_code, "conflict", "g-0 counts now, not e-0: {:?}", e14[2]);
    assert_eq!((e14[3].outcomes[0].as_str(), e14[3].ids[0].as_str()), ("duplicate", "g-0"));

    // The cell held e-0 (10) and e-3 (5); the correction took 10 out and put 4 in. Count, sum and n
    // are exact; the max (10) was retracted, so the extrema are marked approximate.
    let cell: state::AggCell =
        reader.get_msg(&dtm_cluster::tables::aggregate_cell("etx", b"cell")).expect("read").expect("cell");
    let x = &cell.measures["x"];
    assert_eq!((cell.count, x.sum, x.n, x.min), (2, 9.0, 2, 4.0));
    assert!(cell.extrema_approximate);

    // Versions: g-0 follows e-2 and is version 3 of key 1; e-0 was retracted by the correction.
    let g0 = dtm_cluster::lineage::find_record(&reader, "g-0").expect("read").expect("g-0 indexed by id");
    assert_eq!((g0.record.version, g0.record.previous_id.as_str()), (3, "e-2"));
    assert_eq!(g0.record.correction_reason, "typo in x");
    assert!(!g0.record.conflict);
    let later = dtm_cluster::lineage::later_versions(&reader, "e-0").expect("read");
    assert_eq!(later, [("e-2".to_string(), 11), ("g-0".to_string(), 13)]);
    let e0: state::RecordSuccessor =
        reader.get_msg(&dtm_cluster::tables::record_successor("e-0")).expect("read").expect("successor");
    assert_eq!(e0.retracted_index, 13);
    // The cell's lineage: moj's real-time records e-0 and e-3 went in at 11, e-0 went out and the
    // correction came in at 13.
    let lineage: state::CellLineage =
        reader.get_msg(&dtm_cluster::tables::cell_lineage("etx", b"cell")).expect("read").expect("lineage");
    let moj = &lineage.contributors["source:moj"];
    assert_eq!((moj.records, moj.first_index, moj.last_index), (2, 11, 13));
}

#[tokio::test]
async fn two_nodes_applying_the_same_log_hold_identical_tables() {
    let (_d1, mut a, ra, va) = open();
    let (_d2, mut b, rb, vb) = open();
    // Different batching of the same entries into apply calls must not matter either.
    a.apply(log_with_corrections()).await.expect("apply");
    for e in log_with_corrections() {
        b.apply(vec![e]).await.expect("apply one");
    }
    let all_a = ra.scan(b"", None, usize::MAX).expect("scan a");
    let all_b = rb.scan(b"", None, usize::MAX).expect("scan b");
    assert!(!all_a.is_empty());
    assert_eq!(all_a, all_b);
    // The in-memory aggregate views agree too, at the same index, and with a view rebuilt from the
    // tables (what a restart or a snapshot install does).
    let (da, db) = (va.view.digest("etx"), vb.view.digest("etx"));
    assert_eq!(da, db);
    assert_eq!(da.0, 14);
    let rebuilt = dtm_cluster::aggregates::AggregateView::default();
    rebuilt.rebuild(&ra).expect("rebuild");
    assert_eq!(rebuilt.digest("etx"), da);
}

/// Record ids of the submission scheme (`<s>.<n>`, as the pipeline names them) are found through one
/// `rsub/` key per submission, including after a duplicate took a position inside the submission and
/// for a correction; ids of any other shape through their own `rid/` key (A2.5 lineage).
#[tokio::test]
async fn records_are_found_by_id_through_their_submission_or_their_own_index() {
    let (_dir, mut sm, reader, _) = open();
    let (s, t) = (dtm_model::record_id::new_submission(), dtm_model::record_id::new_submission());
    let id = |sub: &str, n: usize| dtm_model::record_id::of(sub, n);
    let mut batch = keyed("n", &[(5, 1, 1.0), (5, 1, 1.0), (6, 2, 2.0)]);
    for (n, r) in batch.records.iter_mut().enumerate() {
        r.id = id(&s, n);
    }
    let mut fix = correction("o", &id(&s, 2), Some((&id(&s, 2), 2.0)), "wrong value", (6, 3, 3.0));
    fix.records[0].id = id(&t, 0);
    let mut log = log();
    log.push(entry(13, cmd(Kind::Ingest(state::IngestBatch { submissions: vec![batch] }))));
    log.push(entry(14, cmd(Kind::Ingest(state::IngestBatch { submissions: vec![fix] }))));
    let replies = sm.apply(log).await.expect("apply");
    let stored = ingest_results(&replies[12]);
    assert_eq!(stored[0].ids, [id(&s, 0), id(&s, 0), id(&s, 2)], "the duplicate answers with the first id");
    let corrected = ingest_results(&replies[13]);
    assert_eq!(corrected[0].ids, [id(&t, 0)], "{corrected:?}");

    for (want, content) in [(id(&s, 0), 1u8), (id(&s, 2), 2), (id(&t, 0), 3)] {
        let found = dtm_cluster::lineage::find_record(&reader, &want).expect("read").expect("found");
        assert_eq!(found.record.id, want);
        assert_eq!(found.record.content_sha256, vec![content; 32]);
        assert_eq!(reader.get(&dtm_cluster::tables::record_id(&want)).expect("read"), None, "no rid/ key");
    }
    assert_eq!(dtm_cluster::lineage::later_versions(&reader, &id(&s, 2)).expect("read"), [(id(&t, 0), 14)]);
    // The position the duplicate took holds nothing, an unknown place nothing, another shape of id
    // its own index key.
    assert!(dtm_cluster::lineage::find_record(&reader, &id(&s, 1)).expect("read").is_none());
    assert!(dtm_cluster::lineage::find_record(&reader, &id(&s, 7)).expect("read").is_none());
    assert!(
        dtm_cluster::lineage::find_record(&reader, &id(&dtm_model::record_id::new_submission(), 0))
            .expect("read")
            .is_none()
    );
    let legacy = dtm_cluster::lineage::find_record(&reader, "e-0").expect("read").expect("found");
    assert_eq!(legacy.record.id, "e-0");
    assert!(reader.get(&dtm_cluster::tables::record_id("e-0")).expect("read").is_some());

    // The natural-key index holds such ids packed (16 bytes and the place), and neither the source
    // nor the commit index; it answers them whole: a conflict on key 5 names the first version by
    // its id, and its source from the submission's location.
    let nk: state::NaturalKeyEntry = reader
        .get_msg(&dtm_cluster::tables::natural_key("etx", &[5; 32], 16))
        .expect("read")
        .expect("key 5 is indexed");
    let packed = &nk.versions[0];
    assert_eq!((packed.record_id.as_str(), packed.submission.len(), packed.place), ("", 16, 0));
    assert_eq!((packed.source.as_str(), packed.commit_index), ("", 0));
    assert_eq!(packed.content_sha256, [1; 16], "the first 16 bytes of the content hash");
    let u = dtm_model::record_id::new_submission();
    let mut other = keyed("p", &[(5, 9, 9.0)]);
    other.records[0].id = id(&u, 0);
    let replies = sm
        .apply(vec![entry(15, cmd(Kind::Ingest(state::IngestBatch { submissions: vec![other] })))])
        .await
        .expect("apply");
    assert_eq!(ingest_results(&replies[0])[0].outcomes, ["conflict"]);
    let conflicts = reader.scan(&dtm_cluster::tables::conflicts_of("etx"), None, 100).expect("scan");
    let c: state::Conflict =
        prost::Message::decode(conflicts.last().expect("a conflict").1.as_slice()).expect("conflict");
    assert_eq!((c.first_id, c.new_id), (id(&s, 0), id(&u, 0)));
    assert_eq!((c.first_source.as_str(), c.new_source.as_str()), ("moj", "moj"));
    let successor = dtm_cluster::lineage::later_versions(&reader, &id(&s, 0)).expect("read");
    assert_eq!(successor, [(id(&u, 0), 15)], "the conflict follows the latest version, named whole");
    // Each version's number is kept in the index, so the next conflict numbers itself without
    // reading the latest record's block.
    let nk: state::NaturalKeyEntry =
        reader.get_msg(&dtm_cluster::tables::natural_key("etx", &[5; 32], 16)).expect("read").expect("indexed");
    assert_eq!(nk.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2]);
    let conflicting = dtm_cluster::lineage::find_record(&reader, &id(&u, 0)).expect("read").expect("found");
    assert_eq!(conflicting.record.version, 2);
}

/// A store written before the per-entry expiry index (one `idx/` key per idempotency entry) still
/// forgets those entries when they expire, beside the new lists.
#[tokio::test]
async fn idempotency_entries_indexed_the_old_way_still_expire() {
    let (_dir, mut sm, _reader, _) = open();
    let mut first = log();
    first.truncate(9);
    sm.apply(first).await.expect("apply");
    let (meta, mut pairs) = sm.consistent_copy().expect("copy");
    // The first request's entry, as an older version indexed it (received at 0: expires after a day).
    let idem_d = dtm_cluster::tables::idempotency("moj", "c");
    assert!(pairs.iter().any(|(k, _)| *k == idem_d));
    pairs.retain(|(k, _)| !k.starts_with(dtm_cluster::tables::IDEMPOTENCY_EXPIRY_BY_ENTRY));
    pairs.push((dtm_cluster::tables::idempotency_expiry(DAY_MS, &idem_d), idem_d.clone()));
    pairs.sort();
    let (_dir2, mut old, reader, _) = open();
    old.restore(&meta, pairs).expect("restore");
    assert!(reader.get(&idem_d).expect("read").is_some());
    let rest: Vec<_> = log().into_iter().skip(9).take(1).collect();
    old.apply(rest).await.expect("apply");
    assert!(reader.get(&idem_d).expect("read").is_none(), "the old index still expires its entry");
    assert!(reader.scan(dtm_cluster::tables::IDEMPOTENCY_EXPIRY, None, 100).expect("scan").is_empty());
}

/// A dataset defined now names its natural-key index entries by the first 16 bytes of the key's
/// HMAC; one defined before that layout was kept (no `nkl/` key) keeps the whole HMAC, and entries
/// that hold a whole content hash are compared whole, so a store written then still recognises
/// its duplicates and conflicts after the upgrade (A1.5).
#[tokio::test]
async fn natural_keys_indexed_by_the_whole_hmac_before_the_layout_are_still_found() {
    use dtm_cluster::tables::{NATURAL_KEY_LAYOUT, natural_key, natural_key_layout};
    let (_dir, mut sm, reader, _) = open();
    let mut log = log();
    log.push(entry(13, cmd(Kind::Ingest(state::IngestBatch { submissions: vec![keyed("p", &[(9, 1, 1.0)])] }))));
    sm.apply(log).await.expect("apply");
    assert_eq!(reader.get(&natural_key_layout("etx")).expect("read"), Some(vec![16]));
    assert!(reader.get(&natural_key("etx", &[9; 32], 16)).expect("read").is_some());
    assert!(reader.get(&natural_key("etx", &[9; 32], 32)).expect("read").is_none());

    // The same tables as an earlier version wrote them: no layout, entries named by the whole HMAC
    // and holding the whole content hash.
    let (meta, mut pairs) = sm.consistent_copy().expect("copy");
    pairs.retain(|(k, _)| !k.starts_with(NATURAL_KEY_LAYOUT));
    for (k, v) in pairs.iter_mut() {
        if *k == natural_key("etx", &[9; 32], 16) {
            *k = natural_key("etx", &[9; 32], 32);
            let mut nk: state::NaturalKeyEntry = prost::Message::decode(v.as_slice()).expect("entry");
            assert_eq!(nk.versions[0].content_sha256, [1; 16]);
            nk.versions[0].content_sha256 = vec![1; 32];
            *v = prost::Message::encode_to_vec(&nk);
        }
    }
    pairs.sort();
    let (_dir2, mut old, reader, _) = open();
    old.restore(&meta, pairs).expect("restore");
    let again = keyed("q", &[(9, 1, 1.0), (9, 2, 2.0)]);
    let replies = old
        .apply(vec![entry(14, cmd(Kind::Ingest(state::IngestBatch { submissions: vec![again] })))])
        .await
        .expect("apply");
    assert_eq!(ingest_results(&replies[0])[0].outcomes, ["duplicate", "conflict"]);
    assert!(reader.get(&natural_key("etx", &[9; 32], 16)).expect("read").is_none(), "nothing under the short name");
    let nk: state::NaturalKeyEntry =
        reader.get_msg(&natural_key("etx", &[9; 32], 32)).expect("read").expect("the whole-HMAC entry");
    assert_eq!(nk.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2]);
    let kept: Vec<_> = nk.versions.iter().map(|v| v.content_sha256.clone()).collect();
    assert_eq!(kept, [vec![1; 32], vec![2; 16]], "the old version whole, the new one cut");
}

/// After a restart (the store reopened, derived state rebuilt from the tables) a record sent again
/// is still a duplicate and a retried request still a replay (A1.5).
#[tokio::test]
async fn duplicates_and_replays_are_recognised_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = dtm_storage::StoreOptions::for_tests();
    let first = keyed("p", &[(9, 1, 1.0), (10, 2, 2.0)]);
    let stored = {
        let (_log, mut sm, _reader) =
            dtm_storage::open(dir.path(), &opts, Arc::new(DtmApplier::default())).expect("open");
        let mut log = log();
        log.push(entry(13, cmd(Kind::Ingest(state::IngestBatch { submissions: vec![first.clone()] }))));
        let replies = sm.apply(log).await.expect("apply");
        ingest_results(&replies[12])[0].clone()
    };
    assert_eq!(stored.outcomes, ["stored", "stored"]);
    let (_log, mut sm, _reader) =
        dtm_storage::reopen(dir.path(), &opts, Arc::new(DtmApplier::default())).await.expect("reopen");
    let again = keyed("q", &[(9, 1, 1.0), (11, 3, 3.0)]);
    let replies = sm
        .apply(vec![
            entry(14, cmd(Kind::Ingest(state::IngestBatch { submissions: vec![first] }))),
            entry(15, cmd(Kind::Ingest(state::IngestBatch { submissions: vec![again] }))),
        ])
        .await
        .expect("apply");
    let replay = &ingest_results(&replies[0])[0];
    assert!(replay.replayed, "{replay:?}");
    assert_eq!(replay.ids, stored.ids);
    let dup = &ingest_results(&replies[1])[0];
    assert_eq!(dup.outcomes, ["duplicate", "stored"], "{dup:?}");
    assert_eq!(dup.ids[0], stored.ids[0]);
}
