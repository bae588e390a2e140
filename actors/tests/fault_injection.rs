//! The `fault-injection` helper drives a real crash and restart (built only with the feature).

#![cfg(feature = "fault-injection")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use dtm_actors::fault::FaultTrigger;
use dtm_actors::{Pipeline, PipelineError, PipelineOptions, SourceState, StageId, Stages};

/// Stages that pass the job through, consulting the trigger first.
#[derive(Default)]
struct Triggered {
    trigger: FaultTrigger,
}

impl Stages for Triggered {
    type Job = u32;
    type Parsed = u32;
    type Validated = u32;
    type Output = u32;
    type Rejection = ();

    fn ingest(&self, _source: &str, job: u32) -> Result<u32, ()> {
        self.trigger.check(StageId::Ingest);
        Ok(job)
    }
    fn validate(&self, _source: &str, parsed: u32) -> Result<u32, ()> {
        self.trigger.check(StageId::Validate);
        Ok(parsed)
    }
    fn aggregate(&self, _source: &str, validated: u32) -> Result<u32, ()> {
        self.trigger.check(StageId::Aggregate);
        Ok(validated + 1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_panic_crashes_one_job_and_the_stage_is_restarted() {
    let stages = Arc::new(Triggered::default());
    let opts = PipelineOptions { backoff_initial: Duration::from_millis(10), ..PipelineOptions::default() };
    let pipeline = Pipeline::start(Arc::clone(&stages), opts).await.expect("start");
    pipeline.add_source("tax").await.expect("add source");

    stages.trigger.arm_panic(StageId::Aggregate, 1);
    let permit = pipeline.admit("tax").expect("admit");
    let (permit, result) = pipeline.run(permit, 1).await;
    assert!(matches!(result, Err(PipelineError::Crashed { stage: "aggregate" })), "got {result:?}");
    drop(permit);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = pipeline.stats().source("tax").cloned().expect("stats of tax");
        if stats.restarts.aggregate == 1 && stats.state == SourceState::Running {
            break;
        }
        assert!(Instant::now() < deadline, "aggregate was not restarted: {stats:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let permit = pipeline.admit("tax").expect("admit");
    let (_permit, result) = pipeline.run(permit, 1).await;
    assert_eq!(result.expect("job succeeds after restart"), 2);
    pipeline.shutdown().await;
}
