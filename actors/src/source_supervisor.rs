//! The supervisor of one source: spawns the three stage actors linked to itself, restarts a failed
//! one after an exponential backoff, and escalates (fails itself, taking the subtree down) when one
//! stage fails more than `restart_max` times within `restart_window`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::source::{SourceShared, lock};
use crate::stage_actor::{AggregateRole, IngestRole, StageActor, StageRole, ValidateRole};
use crate::{ActorsError, PipelineOptions, StageId, Stages, metrics};

/// Messages of a source supervisor (besides supervision events).
#[derive(Debug)]
pub(crate) enum SourceMsg {
    /// The backoff of `stage` is over: spawn it again.
    Restart(StageId),
}

pub(crate) struct SourceSupervisor<S: Stages> {
    pub(crate) stages: Arc<S>,
    pub(crate) opts: Arc<PipelineOptions>,
    /// Unique per incarnation of this source, so actor names never collide with those of a
    /// previous incarnation that is still being torn down.
    pub(crate) incarnation: u64,
}

pub(crate) struct SourceSupervisorState<S: Stages> {
    shared: Arc<SourceShared<S>>,
    /// The live actor of each stage, `None` while it backs off.
    children: [Option<ActorId>; 3],
    /// Failure instants of each stage within the restart window, oldest first.
    failures: [VecDeque<Instant>; 3],
}

impl<S: Stages> SourceSupervisor<S> {
    async fn spawn_stage(
        &self,
        supervisor: ActorCell,
        shared: &Arc<SourceShared<S>>,
        stage: StageId,
    ) -> Result<ActorId, ActorsError> {
        match stage {
            StageId::Ingest => self.spawn_role::<IngestRole>(supervisor, shared).await,
            StageId::Validate => self.spawn_role::<ValidateRole>(supervisor, shared).await,
            StageId::Aggregate => self.spawn_role::<AggregateRole>(supervisor, shared).await,
        }
    }

    async fn spawn_role<R: StageRole<S>>(
        &self,
        supervisor: ActorCell,
        shared: &Arc<SourceShared<S>>,
    ) -> Result<ActorId, ActorsError> {
        let name = format!("dtm-actors/{}/{}/{}", shared.core.id, self.incarnation, R::ID.name());
        let actor = StageActor::<S, R>::new(Arc::clone(&self.stages), Arc::clone(shared));
        let (actor_ref, _join) = Actor::spawn_linked(Some(name.clone()), actor, (), supervisor)
            .await
            .map_err(|e| ActorsError::Spawn { what: name, detail: e.to_string() })?;
        let id = actor_ref.get_id();
        // Published only once linked: from now on a failure of this actor reaches us.
        *lock(R::slot(&shared.refs)) = Some(actor_ref);
        Ok(id)
    }

    /// Records a failure of `stage` and schedules its restart, or escalates.
    fn on_stage_down(
        &self,
        myself: &ActorRef<SourceMsg>,
        state: &mut SourceSupervisorState<S>,
        stage: StageId,
        detail: &str,
    ) -> Result<(), ActorProcessingErr> {
        let source = state.shared.core.id.as_str();
        let now = Instant::now();
        let failures = &mut state.failures[stage.index()];
        while failures.front().is_some_and(|at| now.duration_since(*at) > self.opts.restart_window) {
            failures.pop_front();
        }
        failures.push_back(now);
        let failures_in_window = failures.len();
        if failures_in_window > usize::try_from(self.opts.restart_max).unwrap_or(usize::MAX) {
            tracing::error!(
                source,
                stage = stage.name(),
                error = detail,
                failures_in_window,
                restart_max = self.opts.restart_max,
                "stage failed too often; escalating: the whole source is restarted after backoff_max"
            );
            metrics::source_escalated(stage);
            state.shared.core.escalations.fetch_add(1, Ordering::Relaxed);
            state.shared.core.set_retry_after(self.opts.backoff_max);
            state.shared.refs.clear_all();
            // Failing makes ractor kill our children (dropping their mailboxes, which answers every
            // queued caller) and report `ActorFailed` to the node supervisor, which restarts us.
            return Err(Box::new(ActorsError::Escalated {
                source_id: source.to_owned(),
                stage: stage.name(),
                restart_max: self.opts.restart_max,
            }));
        }
        let backoff = self.opts.backoff_for(failures_in_window);
        state.shared.core.set_retry_after(backoff);
        tracing::warn!(
            source,
            stage = stage.name(),
            error = detail,
            failures_in_window,
            backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
            "stage actor failed; restarting after backoff"
        );
        // If we die before the timer fires, the send fails and is ignored: nothing to restart.
        let _timer = myself.send_after(backoff, move || SourceMsg::Restart(stage));
        Ok(())
    }

    fn stage_of(state: &SourceSupervisorState<S>, id: ActorId) -> Option<StageId> {
        StageId::ALL.into_iter().find(|stage| state.children[stage.index()] == Some(id))
    }
}

impl<S: Stages> Actor for SourceSupervisor<S> {
    type Msg = SourceMsg;
    type State = SourceSupervisorState<S>;
    type Arguments = Arc<SourceShared<S>>;

    async fn pre_start(
        &self,
        myself: ActorRef<SourceMsg>,
        shared: Arc<SourceShared<S>>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut children = [None; 3];
        // Downstream first, so that by the time ingest accepts a job its successors exist.
        for stage in [StageId::Aggregate, StageId::Validate, StageId::Ingest] {
            match self.spawn_stage(myself.get_cell(), &shared, stage).await {
                Ok(id) => children[stage.index()] = Some(id),
                Err(e) => {
                    // ractor kills the children already linked when our start fails.
                    shared.refs.clear_all();
                    return Err(Box::new(e));
                }
            }
        }
        Ok(SourceSupervisorState { shared, children, failures: Default::default() })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SourceMsg>,
        state: &mut SourceSupervisorState<S>,
    ) -> Result<(), ActorProcessingErr> {
        state.shared.refs.clear_all();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SourceMsg>,
        message: SourceMsg,
        state: &mut SourceSupervisorState<S>,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SourceMsg::Restart(stage) => {
                if state.children[stage.index()].is_some() {
                    return Ok(());
                }
                let shared = Arc::clone(&state.shared);
                match self.spawn_stage(myself.get_cell(), &shared, stage).await {
                    Ok(id) => {
                        state.children[stage.index()] = Some(id);
                        shared.core.restarts[stage.index()].fetch_add(1, Ordering::Relaxed);
                        metrics::stage_restarted(stage);
                        tracing::info!(source = shared.core.id.as_str(), stage = stage.name(), "stage actor restarted");
                    }
                    // A failed restart counts as another failure: backoff grows, or we escalate.
                    Err(e) => self.on_stage_down(&myself, state, stage, &e.to_string())?,
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SourceMsg>,
        event: SupervisionEvent,
        state: &mut SourceSupervisorState<S>,
    ) -> Result<(), ActorProcessingErr> {
        let (id, detail) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell.get_id(), error.to_string()),
            // A stage actor never stops by itself; one that does (killed from outside) is down all
            // the same and is restarted like a failed one.
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell.get_id(), reason.unwrap_or_else(|| "stopped".to_owned()))
            }
            _ => return Ok(()),
        };
        let Some(stage) = Self::stage_of(state, id) else {
            return Ok(());
        };
        state.children[stage.index()] = None;
        state.shared.refs.clear_if(stage, id);
        self.on_stage_down(&myself, state, stage, &detail)
    }
}
