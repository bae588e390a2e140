//! [`Pipeline`]: the handle the node uses (admission, running jobs, source management, stats).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef, RpcReplyPort};
use tokio::sync::{OwnedSemaphorePermit, TryAcquireError};

use crate::job::Reply;
use crate::node_supervisor::{NodeMsg, NodeSupervisor, SourceMap, next_incarnation};
use crate::source::{SourceCore, SourceShared};
use crate::stage_actor::{IngestRole, send_to};
use crate::stats::{PipelineStats, SourceState};
use crate::{ActorsError, PipelineError, PipelineOptions, Stages, limits, metrics};

/// The right to run one job of one source. Dropping it frees the slot; `run` hands it back with the
/// result so the caller can hold it while it commits the output.
#[derive(Debug)]
pub struct Permit {
    core: Arc<SourceCore>,
    _permit: OwnedSemaphorePermit,
}

impl Permit {
    /// The source this permit admits a job for.
    pub fn source_id(&self) -> &str {
        &self.core.id
    }
}

/// The supervised per-source pipeline of a node. Cheap to clone.
pub struct Pipeline<S: Stages> {
    inner: Arc<Inner<S>>,
}

impl<S: Stages> Clone for Pipeline<S> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

struct Inner<S: Stages> {
    node: ActorRef<NodeMsg>,
    /// Asked, per job, whether it is light enough to run on the actors' own tasks.
    stages: Arc<S>,
    sources: SourceMap<S>,
    opts: Arc<PipelineOptions>,
    shutting_down: AtomicBool,
}

impl<S: Stages> Drop for Inner<S> {
    fn drop(&mut self) {
        // The last handle is gone without `shutdown`: do not leave the actors running.
        self.node.stop(Some("pipeline dropped".to_owned()));
    }
}

impl<S: Stages> Pipeline<S> {
    /// Validates `opts` and spawns the node supervisor (with no sources yet).
    pub async fn start(stages: Arc<S>, opts: PipelineOptions) -> Result<Self, ActorsError> {
        opts.validate().map_err(ActorsError::InvalidOptions)?;
        let opts = Arc::new(opts);
        let sources: SourceMap<S> = Arc::new(RwLock::new(HashMap::new()));
        let supervisor =
            NodeSupervisor { stages: Arc::clone(&stages), opts: Arc::clone(&opts), sources: Arc::clone(&sources) };
        let name = format!("dtm-actors/node/{}", next_incarnation());
        let (node, _join) = Actor::spawn(Some(name.clone()), supervisor, ())
            .await
            .map_err(|e| ActorsError::Spawn { what: name, detail: e.to_string() })?;
        Ok(Self { inner: Arc::new(Inner { node, stages, sources, opts, shutting_down: AtomicBool::new(false) }) })
    }

    /// Makes sure exactly these sources have a supervisor: creates missing ones, stops the others.
    /// A source that fails to start is retried by the node supervisor; the first such error is
    /// returned.
    pub async fn sync_sources(&self, source_ids: &[String]) -> Result<(), ActorsError> {
        let source_ids = source_ids.to_vec();
        self.control(|reply| NodeMsg::Sync { source_ids, reply }).await
    }

    /// Makes sure this source has a supervisor (idempotent).
    pub async fn add_source(&self, source_id: &str) -> Result<(), ActorsError> {
        let source_id = source_id.to_owned();
        self.control(|reply| NodeMsg::Add { source_id, reply }).await
    }

    async fn control(
        &self,
        build: impl FnOnce(RpcReplyPort<Result<(), ActorsError>>) -> NodeMsg,
    ) -> Result<(), ActorsError> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(ActorsError::Stopped);
        }
        let timeout = Duration::from_millis(limits::CONTROL_CALL_TIMEOUT_MS);
        match self.inner.node.call(build, Some(timeout)).await {
            Ok(CallResult::Success(result)) => result,
            Ok(CallResult::Timeout) => Err(ActorsError::Supervisor("timed out".to_owned())),
            Ok(CallResult::SenderError) => Err(ActorsError::Supervisor("dropped the request".to_owned())),
            Err(_) => Err(ActorsError::Stopped),
        }
    }

    fn source(&self, source_id: &str) -> Option<Arc<SourceShared<S>>> {
        let map = self.inner.sources.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(source_id).cloned()
    }

    /// Whether this node runs (or is restarting) actors for the source; `false` for a source never
    /// added or since removed, which `admit` answers `Unavailable` until `add_source`.
    pub fn has_source(&self, source_id: &str) -> bool {
        self.source(source_id).is_some()
    }

    /// A permit for one job of this source, or `Busy` at once when `queue_depth_per_source` jobs
    /// are admitted; never waits. Unknown source → `Unavailable` (callers `add_source` first); a
    /// source whose actors are restarting → `Unavailable` with the remaining backoff as a hint.
    pub fn admit(&self, source_id: &str) -> Result<Permit, PipelineError<S::Rejection>> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            metrics::job_finished("stopped");
            return Err(PipelineError::Stopped);
        }
        let Some(shared) = self.source(source_id) else {
            metrics::job_finished("unavailable");
            return Err(PipelineError::Unavailable {
                retry_after: Duration::from_millis(limits::UNKNOWN_SOURCE_RETRY_AFTER_MS),
            });
        };
        let core = &shared.core;
        if shared.state() != SourceState::Running {
            core.jobs_unavailable.fetch_add(1, Ordering::Relaxed);
            metrics::job_finished("unavailable");
            return Err(PipelineError::Unavailable { retry_after: core.retry_after() });
        }
        let busy = PipelineError::Busy { retry_after: Duration::from_millis(limits::BUSY_RETRY_AFTER_MS) };
        // Abandoned (timed-out) jobs still inside the actors count against the depth too.
        if core.in_pipeline.load(Ordering::Acquire) >= core.capacity {
            metrics::job_finished("busy");
            return Err(busy);
        }
        match Arc::clone(&core.semaphore).try_acquire_owned() {
            Ok(permit) => Ok(Permit { core: Arc::clone(core), _permit: permit }),
            Err(TryAcquireError::NoPermits) => {
                metrics::job_finished("busy");
                Err(busy)
            }
            Err(TryAcquireError::Closed) => {
                metrics::job_finished("unavailable");
                Err(PipelineError::Unavailable { retry_after: core.retry_after() })
            }
        }
    }

    /// Runs the job through the ingest → validate → aggregate actors of the permit's source and
    /// waits at most `call_timeout`. The permit is handed back with the result.
    pub async fn run(&self, permit: Permit, job: S::Job) -> (Permit, Result<S::Output, PipelineError<S::Rejection>>) {
        let result = self.run_job(&permit, job).await;
        let core = &permit.core;
        let (counter, outcome) = match &result {
            Ok(_) => (Some(&core.jobs_ok), "ok"),
            Err(PipelineError::Rejected(_)) => (Some(&core.jobs_rejected), "rejected"),
            Err(PipelineError::Crashed { .. }) => (Some(&core.jobs_crashed), "crashed"),
            Err(PipelineError::Timeout) => (Some(&core.jobs_timed_out), "timeout"),
            Err(PipelineError::Unavailable { .. }) => (Some(&core.jobs_unavailable), "unavailable"),
            Err(PipelineError::Busy { .. }) => (None, "busy"),
            Err(PipelineError::Stopped) => (None, "stopped"),
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        metrics::job_finished(outcome);
        (permit, result)
    }

    async fn run_job(&self, permit: &Permit, job: S::Job) -> Result<S::Output, PipelineError<S::Rejection>> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(PipelineError::Stopped);
        }
        let unavailable = || PipelineError::Unavailable { retry_after: permit.core.retry_after() };
        // The permit must belong to the source as it is now: one removed (and maybe re-added) since
        // admission, or a permit of another pipeline, is refused.
        let shared = match self.source(&permit.core.id) {
            Some(shared) if Arc::ptr_eq(&shared.core, &permit.core) && !shared.core.is_stopped() => shared,
            _ => return Err(unavailable()),
        };
        let inline = self.inner.stages.runs_inline(&job);
        let (reply, rx) = Reply::<S>::new(Arc::clone(&shared.core), inline);
        send_to::<S, IngestRole>(&shared, job, reply);
        match tokio::time::timeout(self.inner.opts.call_timeout, rx).await {
            Ok(Ok(result)) => result,
            // Unreachable by construction (`Reply` answers when dropped); treated as a crash.
            Ok(Err(_)) => Err(PipelineError::Crashed { stage: "pipeline" }),
            // Dropping `rx` abandons the job: the next stage boundary discards it.
            Err(_) => Err(PipelineError::Timeout),
        }
    }

    /// A snapshot per source: queue use, restarts per stage, job outcomes, state.
    pub fn stats(&self) -> PipelineStats {
        let map = self.inner.sources.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut sources: Vec<_> = map.values().map(|shared| shared.snapshot()).collect();
        sources.sort_by(|a, b| a.source.cmp(&b.source));
        PipelineStats { sources }
    }

    /// Stops every actor. Jobs in flight answer `Unavailable` or `Crashed`; new calls answer
    /// `Stopped`. Waits at most `limits::SHUTDOWN_WAIT_MS`. Idempotent.
    pub async fn shutdown(&self) {
        if self.inner.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        {
            let map = self.inner.sources.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            for shared in map.values() {
                shared.mark_stopped();
            }
        }
        let wait = Duration::from_millis(limits::SHUTDOWN_WAIT_MS);
        if let Err(e) = self.inner.node.stop_and_wait(Some("shutdown".to_owned()), Some(wait)).await {
            tracing::warn!(error = %e, "actor pipeline did not stop in time");
        }
    }
}
