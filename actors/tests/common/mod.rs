//! Shared test harness: a `Stages` implementation whose faults are chosen per job.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dtm_actors::{PipelineError, PipelineOptions, SourceStats, StageId, Stages};

/// What a test job does at one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    Reject(StageId),
    Panic(StageId),
    /// Blocks while `TestStages::hold` is set (at most `HOLD_MAX`).
    Block(StageId),
    /// Blocks like `Block`, then panics.
    BlockThenPanic(StageId),
}

/// The job, and what every stage passes on: the stages it went through, in order.
#[derive(Debug)]
pub struct Trail {
    pub value: u64,
    pub fault: Fault,
    pub stages: Vec<&'static str>,
    /// Whether the job asks to run on the actors' tasks (`Stages::runs_inline`).
    pub inline: bool,
    /// The thread each stage ran on.
    pub ran_on: Vec<std::thread::ThreadId>,
}

/// A stage never blocks longer than this, so a failing test cannot hang the suite.
const HOLD_MAX: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct TestStages {
    pub hold: AtomicBool,
    /// Calls that are blocked (or were) in `Block` / `BlockThenPanic`.
    pub blocked: AtomicUsize,
}

impl TestStages {
    fn step(&self, stage: StageId, mut trail: Trail) -> Result<Trail, String> {
        match trail.fault {
            Fault::Reject(at) if at == stage => return Err(format!("rejected by {}", stage.name())),
            Fault::Panic(at) if at == stage => panic!("test panic in {}", stage.name()),
            Fault::Block(at) | Fault::BlockThenPanic(at) if at == stage => {
                self.blocked.fetch_add(1, Ordering::SeqCst);
                let deadline = Instant::now() + HOLD_MAX;
                // The stage's own (simulated) slow work, not test synchronisation.
                while self.hold.load(Ordering::SeqCst) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                if matches!(trail.fault, Fault::BlockThenPanic(_)) {
                    panic!("test panic after blocking in {}", stage.name());
                }
            }
            _ => {}
        }
        trail.stages.push(stage.name());
        trail.ran_on.push(std::thread::current().id());
        Ok(trail)
    }
}

impl Stages for TestStages {
    type Job = Trail;
    type Parsed = Trail;
    type Validated = Trail;
    type Output = Trail;
    type Rejection = String;

    fn ingest(&self, _source: &str, job: Trail) -> Result<Trail, String> {
        self.step(StageId::Ingest, job)
    }
    fn validate(&self, _source: &str, parsed: Trail) -> Result<Trail, String> {
        self.step(StageId::Validate, parsed)
    }
    fn aggregate(&self, _source: &str, validated: Trail) -> Result<Trail, String> {
        self.step(StageId::Aggregate, validated)
    }
    fn runs_inline(&self, job: &Trail) -> bool {
        job.inline
    }
}

pub fn job(value: u64, fault: Fault) -> Trail {
    Trail { value, fault, stages: Vec::new(), inline: false, ran_on: Vec::new() }
}

/// A job light enough to run on the stage actors' own tasks.
pub fn inline_job(value: u64, fault: Fault) -> Trail {
    Trail { inline: true, ..job(value, fault) }
}

/// Options with short backoffs so restarts happen within a test.
pub fn fast_options() -> PipelineOptions {
    PipelineOptions {
        queue_depth_per_source: 8,
        restart_max: 2,
        restart_window: Duration::from_secs(30),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        call_timeout: Duration::from_secs(5),
    }
}

pub type TestPipeline = dtm_actors::Pipeline<TestStages>;

pub async fn start(opts: PipelineOptions) -> (TestPipeline, Arc<TestStages>) {
    let stages = Arc::new(TestStages::default());
    let pipeline = match TestPipeline::start(Arc::clone(&stages), opts).await {
        Ok(pipeline) => pipeline,
        Err(e) => panic!("pipeline did not start: {e}"),
    };
    (pipeline, stages)
}

/// Admits and runs one job, dropping the permit afterwards.
pub async fn run_one(pipeline: &TestPipeline, source: &str, trail: Trail) -> Result<Trail, PipelineError<String>> {
    let permit = pipeline.admit(source)?;
    let (_permit, result) = pipeline.run(permit, trail).await;
    result
}

pub fn source_stats(pipeline: &TestPipeline, source: &str) -> Option<SourceStats> {
    pipeline.stats().source(source).cloned()
}

/// Polls `condition` until it holds, failing the test after `deadline`.
pub async fn wait_until(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let give_up = Instant::now() + deadline;
    while !condition() {
        assert!(Instant::now() < give_up, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub const WAIT: Duration = Duration::from_secs(10);
