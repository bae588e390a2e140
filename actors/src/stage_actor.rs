//! The stage actors: one generic [`StageActor`] per role (ingest, validate, aggregate), each
//! running its [`Stages`] method for one job at a time and handing the result to the next stage.

use std::marker::PhantomData;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::job::{Reply, StageMsg};
use crate::source::{Slot, SourceShared, StageRefs, lock};
use crate::{ActorsError, PipelineError, StageId, Stages};

/// What distinguishes the three stage actors: their input, their call and where the result goes.
pub(crate) trait StageRole<S: Stages>: Send + Sync + 'static {
    const ID: StageId;
    type Input: Send + 'static;
    type Out: Send + 'static;
    fn call(stages: &S, source: &str, input: Self::Input) -> Result<Self::Out, S::Rejection>;
    /// Where this stage's actor is published.
    fn slot(refs: &StageRefs<S>) -> &Slot<StageMsg<Self::Input, S>>;
    /// Passes a successful result on: to the next stage, or to the caller.
    fn forward(shared: &SourceShared<S>, out: Self::Out, reply: Reply<S>);
}

pub(crate) struct IngestRole;
pub(crate) struct ValidateRole;
pub(crate) struct AggregateRole;

impl<S: Stages> StageRole<S> for IngestRole {
    const ID: StageId = StageId::Ingest;
    type Input = S::Job;
    type Out = S::Parsed;
    fn call(stages: &S, source: &str, input: S::Job) -> Result<S::Parsed, S::Rejection> {
        stages.ingest(source, input)
    }
    fn slot(refs: &StageRefs<S>) -> &Slot<StageMsg<S::Job, S>> {
        &refs.ingest
    }
    fn forward(shared: &SourceShared<S>, out: S::Parsed, reply: Reply<S>) {
        send_to::<S, ValidateRole>(shared, out, reply);
    }
}

impl<S: Stages> StageRole<S> for ValidateRole {
    const ID: StageId = StageId::Validate;
    type Input = S::Parsed;
    type Out = S::Validated;
    fn call(stages: &S, source: &str, input: S::Parsed) -> Result<S::Validated, S::Rejection> {
        stages.validate(source, input)
    }
    fn slot(refs: &StageRefs<S>) -> &Slot<StageMsg<S::Parsed, S>> {
        &refs.validate
    }
    fn forward(shared: &SourceShared<S>, out: S::Validated, reply: Reply<S>) {
        send_to::<S, AggregateRole>(shared, out, reply);
    }
}

impl<S: Stages> StageRole<S> for AggregateRole {
    const ID: StageId = StageId::Aggregate;
    type Input = S::Validated;
    type Out = S::Output;
    fn call(stages: &S, source: &str, input: S::Validated) -> Result<S::Output, S::Rejection> {
        stages.aggregate(source, input)
    }
    fn slot(refs: &StageRefs<S>) -> &Slot<StageMsg<S::Validated, S>> {
        &refs.aggregate
    }
    fn forward(_shared: &SourceShared<S>, out: S::Output, reply: Reply<S>) {
        reply.finish(Ok(out));
    }
}

/// Sends a job to the current actor of stage `R`. When the stage is down, or its mailbox closed
/// under us, the job is dropped here and its `Reply` answers `Unavailable`.
pub(crate) fn send_to<S: Stages, R: StageRole<S>>(shared: &SourceShared<S>, input: R::Input, mut reply: Reply<S>) {
    reply.enter(R::ID);
    let target = lock(R::slot(&shared.refs)).clone();
    match target {
        // Mailboxes are unbounded; what bounds them is admission (`queue_depth_per_source`).
        Some(actor) => {
            if let Err(refused) = actor.send_message(StageMsg { input, reply }) {
                drop(refused);
            }
        }
        None => drop(reply),
    }
}

/// A stage actor of role `R` for one source.
pub(crate) struct StageActor<S: Stages, R> {
    stages: Arc<S>,
    shared: Arc<SourceShared<S>>,
    role: PhantomData<fn() -> R>,
}

impl<S: Stages, R> StageActor<S, R> {
    pub(crate) fn new(stages: Arc<S>, shared: Arc<SourceShared<S>>) -> Self {
        Self { stages, shared, role: PhantomData }
    }
}

impl<S: Stages, R: StageRole<S>> Actor for StageActor<S, R> {
    type Msg = StageMsg<R::Input, S>;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, _args: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let StageMsg { input, mut reply } = message;
        // A job whose caller timed out is skipped at each stage boundary: nobody would read it.
        if reply.is_abandoned() {
            reply.discard();
            return Ok(());
        }
        reply.start();
        // The blocking pool keeps CPU-heavy or stuck calls off the runtime's workers, so timeouts
        // and other sources keep running; a job the node calls light runs here instead
        // (`Stages::runs_inline`). Either way a panic comes back as a value instead of unwinding
        // through this handler; returning it as an error makes ractor report `ActorFailed` to the
        // source supervisor exactly as a panic in `handle` would.
        let called = if reply.inline {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                R::call(&self.stages, &self.shared.core.id, input)
            }))
            .map_err(panic_message)
        } else {
            let stages = Arc::clone(&self.stages);
            let source = self.shared.core.id.clone();
            match tokio::task::spawn_blocking(move || R::call(&stages, &source, input)).await {
                Ok(result) => Ok(result),
                Err(join_error) if join_error.is_panic() => Err(panic_message(join_error.into_panic())),
                Err(_) => Err("the blocking task was cancelled".to_owned()),
            }
        };
        match called {
            Ok(Ok(out)) => R::forward(&self.shared, out, reply),
            Ok(Err(rejection)) => reply.finish(Err(PipelineError::Rejected(rejection))),
            Err(detail) => {
                // Unpublish this actor before the caller learns of the crash, so a retry is answered
                // `Unavailable` instead of landing in a mailbox that is about to be dropped.
                self.shared.refs.clear_if(R::ID, myself.get_id());
                // Dropping the started job answers `Crashed { stage }`; jobs still queued in this
                // mailbox are dropped with it and answer `Unavailable`.
                drop(reply);
                return Err(Box::new(ActorsError::StageFailed { stage: R::ID.name(), detail }));
            }
        }
        Ok(())
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_owned(),
            Err(_) => "panic with a non-string payload".to_owned(),
        },
    }
}
