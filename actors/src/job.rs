//! A job travelling through the stage actors, and the reply it carries.
//!
//! The reply is a oneshot sender wrapped in [`Reply`], whose `Drop` answers the caller when nobody
//! else did. That is what makes "no caller hangs" hold by construction: a job dropped because its
//! stage panicked answers `Crashed { stage }`; a job dropped unread from the mailbox of a dead
//! actor, or refused by a closed mailbox, answers `Unavailable`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use crate::source::SourceCore;
use crate::{PipelineError, StageId, Stages};

/// What the caller of `run` receives.
pub(crate) type JobResult<S> = Result<<S as Stages>::Output, PipelineError<<S as Stages>::Rejection>>;

/// The message of a stage actor: the stage's input and the job's reply.
pub(crate) struct StageMsg<I, S: Stages> {
    pub(crate) input: I,
    pub(crate) reply: Reply<S>,
}

/// Counts a job in `SourceCore::in_pipeline` for as long as it exists.
struct InFlight(Arc<SourceCore>);

impl InFlight {
    fn enter(core: Arc<SourceCore>) -> Self {
        core.in_pipeline.fetch_add(1, Ordering::AcqRel);
        Self(core)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_pipeline.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The reply of one job; see the module docs for what dropping it answers.
pub(crate) struct Reply<S: Stages> {
    tx: Option<oneshot::Sender<JobResult<S>>>,
    /// The stage that holds the job now.
    stage: StageId,
    /// Whether that stage started working on the job (then a drop means it crashed).
    started: bool,
    /// Whether the stages run the job on their own tasks instead of the blocking pool
    /// (`Stages::runs_inline`).
    pub(crate) inline: bool,
    in_flight: InFlight,
}

impl<S: Stages> Reply<S> {
    pub(crate) fn new(core: Arc<SourceCore>, inline: bool) -> (Self, oneshot::Receiver<JobResult<S>>) {
        let (tx, rx) = oneshot::channel();
        let in_flight = InFlight::enter(core);
        (Self { tx: Some(tx), stage: StageId::Ingest, started: false, inline, in_flight }, rx)
    }

    /// Hands the job to `stage` (not yet started there).
    pub(crate) fn enter(&mut self, stage: StageId) {
        self.stage = stage;
        self.started = false;
    }

    /// The stage begins working on the job.
    pub(crate) fn start(&mut self) {
        self.started = true;
    }

    /// The caller stopped waiting (timeout or dropped future): the work would be thrown away.
    pub(crate) fn is_abandoned(&self) -> bool {
        self.tx.as_ref().is_none_or(oneshot::Sender::is_closed)
    }

    /// Answers the caller; a caller that gave up meanwhile simply does not receive it.
    pub(crate) fn finish(mut self, result: JobResult<S>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(result);
        }
    }

    /// Drops an abandoned job without answering.
    pub(crate) fn discard(mut self) {
        self.tx = None;
    }
}

impl<S: Stages> Drop for Reply<S> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let error = if self.started {
                PipelineError::Crashed { stage: self.stage.name() }
            } else {
                PipelineError::Unavailable { retry_after: self.in_flight.0.retry_after() }
            };
            let _ = tx.send(Err(error));
        }
    }
}
