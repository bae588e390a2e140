//! Behaviour of the supervised pipeline: routing, admission, crashes and restarts, escalation,
//! source management, timeouts and shutdown. Real actors, real panics, no sleeps as synchronisation.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Fault, WAIT, fast_options, inline_job, job, run_one, source_stats, start, wait_until};
use dtm_actors::{ActorsError, PipelineError, PipelineOptions, SourceState, StageCounts, StageId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_flow_through_the_three_stages_in_order_and_rejections_come_back() {
    let (pipeline, _stages) = start(fast_options()).await;
    pipeline.add_source("tax").await.expect("add source");

    let output = run_one(&pipeline, "tax", job(42, Fault::None)).await.expect("job succeeds");
    assert_eq!(output.value, 42);
    assert_eq!(output.stages, ["ingest", "validate", "aggregate"]);

    for stage in StageId::ALL {
        match run_one(&pipeline, "tax", job(1, Fault::Reject(stage))).await {
            Err(PipelineError::Rejected(problem)) => assert_eq!(problem, format!("rejected by {}", stage.name())),
            other => panic!("expected Rejected from {}, got {other:?}", stage.name()),
        }
    }

    let stats = source_stats(&pipeline, "tax").expect("stats of tax");
    assert_eq!(stats.state, SourceState::Running);
    assert_eq!(stats.jobs_ok, 1);
    assert_eq!(stats.jobs_rejected, 3);
    // A rejection is the client's problem, not a failure of the actor.
    assert_eq!(stats.restarts, StageCounts::default());
    assert_eq!(stats.queue_in_use, 0);
    pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_is_bounded_and_never_waits() {
    let opts = PipelineOptions { queue_depth_per_source: 3, ..fast_options() };
    let (pipeline, _stages) = start(opts).await;
    pipeline.sync_sources(&["tax".to_owned(), "customs".to_owned()]).await.expect("sync");

    let mut held: Vec<_> = (0..3).map(|_| pipeline.admit("tax").expect("admit within depth")).collect();
    assert!(held.iter().all(|permit| permit.source_id() == "tax"));
    let started = Instant::now();
    match pipeline.admit("tax") {
        Err(PipelineError::Busy { retry_after }) => assert!(retry_after > Duration::ZERO),
        other => panic!("expected Busy, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_millis(100), "admit must not wait");
    let stats = source_stats(&pipeline, "tax").expect("stats of tax");
    assert_eq!((stats.queue_in_use, stats.queue_capacity), (3, 3));

    // Another source has its own queue (bulkhead).
    let other = pipeline.admit("customs").expect("other source admits");

    held.pop();
    let permit = pipeline.admit("tax").expect("a released slot admits again");
    // A permit runs a job and is handed back, still holding its slot.
    let (permit, result) = pipeline.run(permit, job(7, Fault::None)).await;
    assert_eq!(result.expect("job succeeds").value, 7);
    assert!(matches!(pipeline.admit("tax"), Err(PipelineError::Busy { .. })));
    drop((permit, other, held));
    assert_eq!(source_stats(&pipeline, "tax").expect("stats").queue_in_use, 0);
    pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_stage_crashes_only_its_job_and_is_restarted() {
    let (pipeline, _stages) = start(fast_options()).await;
    pipeline.sync_sources(&["tax".to_owned(), "customs".to_owned()]).await.expect("sync");

    // The other source keeps working throughout.
    let other = {
        let pipeline = pipeline.clone();
        tokio::spawn(async move {
            let mut outputs = Vec::new();
            for value in 0..50 {
                outputs.push(run_one(&pipeline, "customs", job(value, Fault::None)).await.map(|t| t.value));
            }
            outputs
        })
    };

    match run_one(&pipeline, "tax", job(1, Fault::Panic(StageId::Validate))).await {
        Err(PipelineError::Crashed { stage }) => assert_eq!(stage, "validate"),
        other => panic!("expected Crashed in validate, got {other:?}"),
    }
    wait_until("validate restarted", WAIT, || {
        source_stats(&pipeline, "tax").is_some_and(|s| s.restarts.validate == 1 && s.state == SourceState::Running)
    })
    .await;
    let output = run_one(&pipeline, "tax", job(2, Fault::None)).await.expect("next job succeeds");
    assert_eq!(output.stages, ["ingest", "validate", "aggregate"]);

    let outputs = other.await.expect("other source task");
    assert_eq!(outputs.len(), 50);
    for (expected, output) in outputs.into_iter().enumerate() {
        assert_eq!(output.expect("other source unaffected"), expected as u64);
    }
    let tax = source_stats(&pipeline, "tax").expect("stats of tax");
    assert_eq!(tax.restarts, StageCounts { ingest: 0, validate: 1, aggregate: 0 });
    assert_eq!((tax.jobs_crashed, tax.jobs_ok, tax.escalations), (1, 1, 0));
    let customs = source_stats(&pipeline, "customs").expect("stats of customs");
    assert_eq!(customs.restarts, StageCounts::default());
    assert_eq!(customs.jobs_ok, 50);
    pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_queued_behind_a_crash_are_answered_not_left_hanging() {
    let (pipeline, stages) = start(fast_options()).await;
    pipeline.add_source("tax").await.expect("add source");

    stages.hold.store(true, Ordering::SeqCst);
    let first = {
        let pipeline = pipeline.clone();
        tokio::spawn(async move { run_one(&pipeline, "tax", job(1, Fault::BlockThenPanic(StageId::Ingest))).await })
    };
    wait_until("first job blocked in ingest", WAIT, || stages.blocked.load(Ordering::SeqCst) == 1).await;
    let queued: Vec<_> = (2..5)
        .map(|value| {
            let pipeline = pipeline.clone();
            tokio::spawn(async move { run_one(&pipeline, "tax", job(value, Fault::None)).await })
        })
        .collect();
    wait_until("jobs queued in the ingest mailbox", WAIT, || {
        source_stats(&pipeline, "tax").is_some_and(|s| s.jobs_in_pipeline == 4)
    })
    .await;
    let released = Instant::now();
    stages.hold.store(false, Ordering::SeqCst);

    match first.await.expect("first task") {
        Err(PipelineError::Crashed { stage }) => assert_eq!(stage, "ingest"),
        other => panic!("expected Crashed in ingest, got {other:?}"),
    }
    for task in queued {
        match task.await.expect("queued task") {
            Err(PipelineError::Unavailable { retry_after }) => assert!(retry_after > Duration::ZERO),
            other => panic!("expected Unavailable for a job dropped with the mailbox, got {other:?}"),
        }
    }
    // Answered by the crash, not by call_timeout (5 s).
    assert!(released.elapsed() < Duration::from_secs(2));
    wait_until("ingest restarted", WAIT, || {
        source_stats(&pipeline, "tax").is_some_and(|s| s.state == SourceState::Running && s.jobs_in_pipeline == 0)
    })
    .await;
    run_one(&pipeline, "tax", job(9, Fault::None)).await.expect("source serves again");
    pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_crashes_escalate_and_the_source_comes_back() {
    // restart_max = 2: the third failure within the window escalates.
    let opts = PipelineOptions { backoff_max: Duration::from_millis(1_000), ..fast_options() };
    let (pipeline, _stages) = start(opts).await;
    pipeline.sync_sources(&["tax".to_owned(), "customs".to_owned()]).await.expect("sync");

    for restart in 1..=2 {
        let result = run_one(&pipeline, "tax", job(restart, Fault::Panic(StageId::Validate))).await;
        assert!(matches!(result, Err(PipelineError::Crashed { stage: "validate" })), "got {result:?}");
        wait_until("validate restarted", WAIT, || {
            source_stats(&pipeline, "tax")
                .is_some_and(|s| s.restarts.validate == restart && s.state == SourceState::Running)
        })
        .await;
    }
    let result = run_one(&pipeline, "tax", job(3, Fault::Panic(StageId::Validate))).await;
    assert!(matches!(result, Err(PipelineError::Crashed { stage: "validate" })), "got {result:?}");
    wait_until("escalation recorded", WAIT, || source_stats(&pipeline, "tax").is_some_and(|s| s.escalations == 1))
        .await;

    // During the source's backoff it answers 503 with the backoff as Retry-After …
    match pipeline.admit("tax") {
        Err(PipelineError::Unavailable { retry_after }) => assert_eq!(retry_after, Duration::from_millis(1_000)),
        other => panic!("expected Unavailable while the source backs off, got {other:?}"),
    }
    assert_eq!(source_stats(&pipeline, "tax").expect("stats").state, SourceState::BackingOff);
    // … while the other source is untouched.
    run_one(&pipeline, "customs", job(1, Fault::None)).await.expect("other source unaffected");

    wait_until("source restarted by the node supervisor", WAIT, || {
        source_stats(&pipeline, "tax").is_some_and(|s| s.source_restarts == 1 && s.state == SourceState::Running)
    })
    .await;
    run_one(&pipeline, "tax", job(4, Fault::None)).await.expect("source serves again");
    let stats = source_stats(&pipeline, "tax").expect("stats");
    assert_eq!(stats.restarts.validate, 2);
    assert_eq!(stats.jobs_crashed, 3);
    assert_eq!(source_stats(&pipeline, "customs").expect("stats").escalations, 0);
    pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_sources_creates_and_stops_supervisors() {
    let (pipeline, _stages) = start(fast_options()).await;
    pipeline.sync_sources(&["a".to_owned(), "b".to_owned()]).await.expect("sync a, b");
    let names: Vec<_> = pipeline.stats().sources.into_iter().map(|s| s.source).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(pipeline.stats().sources.iter().all(|s| s.state == SourceState::Running));
    assert!(pipeline.has_source("a") && !pipeline.has_source("c"));

    let permit_of_b = pipeline.admit("b").expect("admit b");
    pipeline.sync_sources(&["c".to_owned(), "c".to_owned()]).await.expect("sync c");
    let names: Vec<_> = pipeline.stats().sources.into_iter().map(|s| s.source).collect();
    assert_eq!(names, ["c"]);
    assert!(!pipeline.has_source("a"));

    assert!(matches!(pipeline.admit("a"), Err(PipelineError::Unavailable { .. })));
    assert!(matches!(pipeline.admit("never-registered"), Err(PipelineError::Unavailable { .. })));
    // A permit taken before its source was stopped cannot run.
    let (permit_of_b, result) = pipeline.run(permit_of_b, job(1, Fault::None)).await;
    assert!(matches!(result, Err(PipelineError::Unavailable { .. })), "got {result:?}");
    drop(permit_of_b);

    run_one(&pipeline, "c", job(1, Fault::None)).await.expect("c serves");
    // Re-adding a stopped source gives it fresh actors; add_source is idempotent.
    pipeline.add_source("a").await.expect("re-add a");
    pipeline.add_source("a").await.expect("add a again");
    run_one(&pipeline, "a", job(2, Fault::None)).await.expect("a serves again");

    assert!(matches!(pipeline.add_source("").await, Err(ActorsError::InvalidSourceId(_))));
    assert!(matches!(pipeline.sync_sources(&["bad id".to_owned()]).await, Err(ActorsError::InvalidSourceId(_))));
    pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_stage_times_out_without_leaking_the_permit() {
    let opts =
        PipelineOptions { queue_depth_per_source: 1, call_timeout: Duration::from_millis(200), ..fast_options() };
    let (pipeline, stages) = start(opts).await;
    pipeline.add_source("tax").await.expect("add source");

    stages.hold.store(true, Ordering::SeqCst);
    let permit = pipeline.admit("tax").expect("admit");
    let started = Instant::now();
    let (permit, result) = pipeline.run(permit, job(1, Fault::Block(StageId::Aggregate))).await;
    assert!(matches!(result, Err(PipelineError::Timeout)), "got {result:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "the caller must not wait past call_timeout");
    assert_eq!(source_stats(&pipeline, "tax").expect("stats").queue_in_use, 1);
    drop(permit);
    let stats = source_stats(&pipeline, "tax").expect("stats");
    assert_eq!(stats.queue_in_use, 0, "the permit is released");
    // The abandoned job still occupies the stuck stage, and counts against the depth until it leaves.
    assert_eq!(stats.jobs_in_pipeline, 1);
    assert!(matches!(pipeline.admit("tax"), Err(PipelineError::Busy { .. })));

    stages.hold.store(false, Ordering::SeqCst);
    wait_until("abandoned job left the pipeline", WAIT, || {
        source_stats(&pipeline, "tax").is_some_and(|s| s.jobs_in_pipeline == 0)
    })
    .await;
    run_one(&pipeline, "tax", job(2, Fault::None)).await.expect("source serves again");
    let stats = source_stats(&pipeline, "tax").expect("stats");
    assert_eq!((stats.jobs_timed_out, stats.jobs_ok, stats.queue_in_use), (1, 1, 0));
    assert_eq!(stats.restarts, StageCounts::default(), "a slow stage is not a crashed one");
    pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_everything() {
    let (pipeline, _stages) = start(fast_options()).await;
    pipeline.add_source("tax").await.expect("add source");
    let permit = pipeline.admit("tax").expect("admit");
    pipeline.shutdown().await;
    pipeline.shutdown().await;

    assert!(matches!(pipeline.admit("tax"), Err(PipelineError::Stopped)));
    let (_permit, result) = pipeline.run(permit, job(1, Fault::None)).await;
    assert!(matches!(result, Err(PipelineError::Stopped)));
    assert!(matches!(pipeline.add_source("other").await, Err(ActorsError::Stopped)));
    assert_eq!(source_stats(&pipeline, "tax").expect("stats").state, SourceState::Stopped);
}

#[tokio::test]
async fn invalid_options_are_refused_at_start() {
    let opts = PipelineOptions { queue_depth_per_source: 0, ..PipelineOptions::default() };
    let stages = std::sync::Arc::new(common::TestStages::default());
    assert!(matches!(common::TestPipeline::start(stages, opts).await, Err(ActorsError::InvalidOptions(_))));
}

/// A job the node calls light (`Stages::runs_inline`) runs every stage on the actors' own task
/// instead of the blocking pool, and a panic there is handled exactly as one on the pool: the job
/// answers `Crashed`, the stage is restarted, the next job succeeds. On a current-thread runtime
/// the actors' tasks run on the test's thread, and the pool's calls on other threads.
#[tokio::test]
async fn light_jobs_run_on_the_actors_tasks_and_their_panics_are_handled_the_same() {
    let here = std::thread::current().id();
    let (pipeline, _stages) = start(fast_options()).await;
    pipeline.add_source("tax").await.expect("add source");

    let light = run_one(&pipeline, "tax", inline_job(1, Fault::None)).await.expect("light job succeeds");
    assert_eq!(light.stages, ["ingest", "validate", "aggregate"]);
    assert_eq!(light.ran_on, [here; 3], "every stage of a light job runs on the actors' task");
    let heavy = run_one(&pipeline, "tax", job(2, Fault::None)).await.expect("other job succeeds");
    assert_eq!(heavy.ran_on.len(), 3);
    assert!(heavy.ran_on.iter().all(|t| *t != here), "every stage of another job runs on the pool");

    match run_one(&pipeline, "tax", inline_job(3, Fault::Panic(StageId::Validate))).await {
        Err(PipelineError::Crashed { stage }) => assert_eq!(stage, "validate"),
        other => panic!("expected Crashed in validate, got {other:?}"),
    }
    wait_until("validate restarted", WAIT, || {
        source_stats(&pipeline, "tax").is_some_and(|s| s.restarts.validate == 1 && s.state == SourceState::Running)
    })
    .await;
    match run_one(&pipeline, "tax", inline_job(4, Fault::Reject(StageId::Aggregate))).await {
        Err(PipelineError::Rejected(problem)) => assert_eq!(problem, "rejected by aggregate"),
        other => panic!("expected Rejected from aggregate, got {other:?}"),
    }
    let after = run_one(&pipeline, "tax", inline_job(5, Fault::None)).await.expect("next light job succeeds");
    assert_eq!((after.value, after.ran_on), (5, vec![here; 3]));
    let tax = source_stats(&pipeline, "tax").expect("stats of tax");
    assert_eq!(tax.restarts, StageCounts { ingest: 0, validate: 1, aggregate: 0 });
    assert_eq!((tax.jobs_ok, tax.jobs_crashed, tax.jobs_rejected, tax.queue_in_use), (3, 1, 1, 0));
    pipeline.shutdown().await;
}
