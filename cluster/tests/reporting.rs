//! The reporting regime's `apply` (issue 9, C2(b)): an obligation needs a defined dataset; report
//! versions follow each other and a repeated version changes nothing (a double click, a retry
//! after a leader change); a submission removes its draft and no draft is saved after it; every
//! command leaves an audit entry with its outcome.

mod common;

use common::cmd;
use common::entry;

use std::sync::Arc;

use dtm_cluster::DtmApplier;
use dtm_cluster::reporting as rt;
use dtm_model::state;
use dtm_model::state::command::Kind;
use dtm_model::state::command_response::Result as Reply;
use dtm_model::state::reporting_command::Kind as R;
use openraft::storage::RaftStateMachine;

fn reporting(kind: R) -> Kind {
    Kind::Reporting(state::ReportingCommand { kind: Some(kind) })
}

fn obligation(dataset: &str) -> Kind {
    reporting(R::SetObligation(state::SetObligation {
        obligation: Some(state::Obligation {
            dataset: dataset.into(),
            agencies: vec![state::ReportingAgency { agency: "ubnd-dn".into(), source: "dvc".into() }],
            period_type: "month".into(),
            deadline_days: 15,
            first_period: "2026-01".into(),
            active: true,
            ..Default::default()
        }),
    }))
}

fn draft(values: &str) -> Kind {
    reporting(R::SaveDraft(state::SaveReportDraft {
        draft: Some(state::ReportDraft {
            dataset: "dvc".into(),
            agency: "ubnd-dn".into(),
            period: "2026-03".into(),
            values_json: values.as_bytes().to_vec(),
            username: "dn-entry".into(),
            saved_at_ms: 0,
        }),
    }))
}

fn report(version: u32, record: &str) -> Kind {
    reporting(R::RecordReport(state::RecordReport {
        submission: Some(state::ReportSubmission {
            dataset: "dvc".into(),
            agency: "ubnd-dn".into(),
            period: "2026-03".into(),
            source: "dvc".into(),
            username: "dn-entry".into(),
            submitted_at_ms: 1_000,
            version,
            record_ids: vec![record.into()],
            ..Default::default()
        }),
    }))
}

fn code(r: &state::CommandResponse) -> String {
    match &r.result {
        Some(Reply::Applied(_)) => "applied".into(),
        Some(Reply::Rejected(r)) => r.code.clone(),
        other => format!("{other:?}"),
    }
}

#[tokio::test]
async fn report_versions_follow_each_other_and_repeats_change_nothing_c2b() {
    let dir = tempfile::tempdir().expect("tempdir");
    let applier = DtmApplier::default();
    let (_log, mut sm, reader) =
        dtm_storage::open(dir.path(), &dtm_storage::StoreOptions::for_tests(), Arc::new(applier)).expect("open store");
    let define = Kind::DefineDataset(state::DefineDataset {
        dataset: Some(state::Dataset {
            id: "dvc".into(),
            definition_json: b"{}".to_vec(),
            version: 1,
            defined_at_ms: 1,
            ..Default::default()
        }),
    });
    let kinds = vec![
        obligation("nope"),           // 1: no such dataset
        define,                       // 2
        obligation("dvc"),            // 3
        draft(r#"{"received":"1"}"#), // 4
        report(2, "r-x"),             // 5: does not follow version 0
        report(1, "r-1"),             // 6
        report(1, "r-other"),         // 7: a repeat of version 1: the first account stands
        draft(r#"{"received":"2"}"#), // 8: refused after the submission
        report(2, "r-2"),             // 9: a correction
    ];
    let log: Vec<_> = kinds.into_iter().enumerate().map(|(i, k)| entry(i as u64 + 1, cmd(k))).collect();
    let replies = sm.apply(log).await.expect("apply");
    let codes: Vec<String> = replies.iter().map(code).collect();
    assert_eq!(
        codes,
        [
            "not_found",
            "applied",
            "applied",
            "applied",
            "conflict",
            "applied",
            "applied",
            "already_submitted",
            "applied"
        ]
    );
    let o: state::Obligation = reader.get_msg(&rt::obligation("dvc")).expect("read").expect("obligation");
    assert_eq!((o.period_type.as_str(), o.updated_at_ms), ("month", 1_000), "the time comes from the command");
    let v1: state::ReportSubmission =
        reader.get_msg(&rt::submission_version("dvc", "ubnd-dn", "2026-03", 1)).expect("read").expect("v1");
    assert_eq!(v1.record_ids, ["r-1"], "the first account of a version stands");
    let latest: state::ReportSubmission =
        reader.get_msg(&rt::submission("dvc", "ubnd-dn", "2026-03")).expect("read").expect("latest");
    assert_eq!((latest.version, latest.record_ids.clone()), (2, vec!["r-2".to_string()]));
    assert!(
        reader.get(&rt::draft("dvc", "ubnd-dn", "2026-03")).expect("read").is_none(),
        "the submission removed the draft"
    );
    // Every reporting command is in the audit trail with its outcome.
    let mut ops = Vec::new();
    reader
        .for_each_prefixed(dtm_cluster::tables::AUDIT_ENTRY, |_, v| {
            let block = <state::AuditBlock as prost::Message>::decode(v)?;
            for e in block.entries {
                let ev = <state::AuditEvent as prost::Message>::decode(e.body.as_slice())?;
                if ev.operation.starts_with("reporting.") {
                    ops.push(format!("{} {} {}", ev.operation, ev.target, ev.outcome));
                }
            }
            Ok(())
        })
        .expect("audit");
    assert_eq!(
        ops,
        [
            "reporting.obligation.set dataset/nope rejected:not_found",
            "reporting.obligation.set dataset/dvc ok",
            "reporting.draft.save report/dvc/ubnd-dn/2026-03 ok",
            "reporting.report.correct report/dvc/ubnd-dn/2026-03 rejected:conflict",
            "reporting.report.submit report/dvc/ubnd-dn/2026-03 ok",
            "reporting.report.submit report/dvc/ubnd-dn/2026-03 ok",
            "reporting.draft.save report/dvc/ubnd-dn/2026-03 rejected:already_submitted",
            "reporting.report.correct report/dvc/ubnd-dn/2026-03 ok",
        ]
    );
}

#[tokio::test]
async fn a_report_has_a_bounded_number_of_versions_c2b() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_log, mut sm, reader) =
        dtm_storage::open(dir.path(), &dtm_storage::StoreOptions::for_tests(), Arc::new(DtmApplier::default()))
            .expect("open store");
    let max = rt::REPORT_VERSIONS_MAX;
    let log: Vec<_> = (1..=max + 1).map(|v| entry(u64::from(v), cmd(report(v, &format!("r-{v}"))))).collect();
    let replies = sm.apply(log).await.expect("apply");
    let codes: Vec<String> = replies.iter().map(code).collect();
    assert!(codes[..max as usize].iter().all(|c| c == "applied"), "every version up to the bound is kept");
    assert_eq!(codes[max as usize], "too_many_versions");
    let latest: state::ReportSubmission =
        reader.get_msg(&rt::submission("dvc", "ubnd-dn", "2026-03")).expect("read").expect("latest");
    assert_eq!(latest.version, max, "the refused version changed nothing");
}
