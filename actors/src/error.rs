//! The crate's error enum ([`ActorsError`], for control operations) and the per-job outcome
//! ([`PipelineError`]) that the HTTPS handler maps to a status code.

use std::time::Duration;

/// Why a control operation (start, source management) failed, or why an actor stopped.
#[derive(Debug, thiserror::Error)]
pub enum ActorsError {
    /// `PipelineOptions::validate` refused the options.
    #[error("invalid pipeline options: {0}")]
    InvalidOptions(String),
    /// A source id that cannot name actors (empty, too long, control characters).
    #[error("invalid source id: {0}")]
    InvalidSourceId(String),
    /// `sync_sources` / `add_source` would exceed `limits::SOURCES_MAX`.
    #[error("too many sources: {count} (limit {limit})")]
    TooManySources { count: usize, limit: usize },
    /// An actor could not be spawned. For a source, the node supervisor keeps retrying after
    /// `backoff_max`, so the source still comes up.
    #[error("failed to spawn {what}: {detail}")]
    Spawn { what: String, detail: String },
    /// The node supervisor did not answer a control call in time or dropped it.
    #[error("node supervisor did not answer: {0}")]
    Supervisor(String),
    /// The pipeline is shut down.
    #[error("the pipeline is shut down")]
    Stopped,
    /// A stage actor failed while running a `Stages` method (panic); reported to its supervisor.
    #[error("stage {stage} failed: {detail}")]
    StageFailed { stage: &'static str, detail: String },
    /// A source supervisor gave up restarting a stage and stops its subtree; reported to the node
    /// supervisor, which restarts the source after `backoff_max`.
    #[error("source {source_id} escalated: stage {stage} failed more than {restart_max} times in the window")]
    Escalated { source_id: String, stage: &'static str, restart_max: u32 },
}

/// The outcome of one job that did not produce an output. `R` is the node's rejection type.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError<R> {
    /// The source's admission queue is full: answer 429 with `Retry-After`.
    #[error("source queue full")]
    Busy { retry_after: Duration },
    /// A stage rejected the input (a client-side problem, e.g. 422 problems).
    #[error("rejected by a stage")]
    Rejected(R),
    /// The stage actor failed (panicked) while holding this job; it is being restarted. Answer 5xx.
    #[error("stage {stage} crashed while processing the job")]
    Crashed { stage: &'static str },
    /// The source's actors are restarting or backing off, or the source is not known: answer 503.
    #[error("source unavailable")]
    Unavailable { retry_after: Duration },
    /// The job took longer than `call_timeout`; it is abandoned and its result discarded.
    #[error("job timed out")]
    Timeout,
    /// The pipeline is shutting down.
    #[error("pipeline stopped")]
    Stopped,
}

impl<R> PipelineError<R> {
    /// The delay to suggest to the client (`Retry-After`), when the error is transient.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Busy { retry_after } | Self::Unavailable { retry_after } => Some(*retry_after),
            Self::Rejected(_) | Self::Crashed { .. } | Self::Timeout | Self::Stopped => None,
        }
    }
}
