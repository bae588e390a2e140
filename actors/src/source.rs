//! The state of one source shared between the caller side (`admit`, `run`, `stats`) and its actors:
//! the admission semaphore, counters, and the current address of each stage actor.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ractor::{ActorId, ActorRef};
use tokio::sync::Semaphore;

use crate::job::StageMsg;
use crate::stats::{SourceState, SourceStats, StageCounts};
use crate::{StageId, Stages};

/// Locks a mutex that only ever guards plain data: no code panics while holding one of ours, and
/// the data (an `Option<ActorRef>`) is valid either way, so a poisoned lock is used as is.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The non-generic part of a source: what a [`crate::Permit`] points to.
#[derive(Debug)]
pub(crate) struct SourceCore {
    pub(crate) id: String,
    /// Admission: one permit per job, `try_acquire` only, so admission never waits.
    pub(crate) semaphore: Arc<Semaphore>,
    pub(crate) capacity: usize,
    /// Jobs inside the actors. A job whose caller timed out gives its permit back but stays here
    /// until it leaves the actors, and admission refuses new jobs while this reaches `capacity`,
    /// so abandoned jobs cannot pile up in a stuck stage's mailbox.
    pub(crate) in_pipeline: AtomicUsize,
    /// Set once when the source is removed or the pipeline shuts down; never cleared (a re-added
    /// source gets a new core).
    pub(crate) stopped: AtomicBool,
    /// The restart delay the supervisors scheduled last: the `Retry-After` of `Unavailable`.
    pub(crate) retry_after_ms: AtomicU64,
    pub(crate) restarts: [AtomicU64; 3],
    pub(crate) escalations: AtomicU64,
    pub(crate) source_restarts: AtomicU64,
    pub(crate) jobs_ok: AtomicU64,
    pub(crate) jobs_rejected: AtomicU64,
    pub(crate) jobs_crashed: AtomicU64,
    pub(crate) jobs_timed_out: AtomicU64,
    pub(crate) jobs_unavailable: AtomicU64,
}

impl SourceCore {
    fn new(id: String, capacity: usize, retry_after: Duration) -> Self {
        Self {
            id,
            semaphore: Arc::new(Semaphore::new(capacity)),
            capacity,
            in_pipeline: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            retry_after_ms: AtomicU64::new(duration_ms(retry_after)),
            restarts: Default::default(),
            escalations: AtomicU64::new(0),
            source_restarts: AtomicU64::new(0),
            jobs_ok: AtomicU64::new(0),
            jobs_rejected: AtomicU64::new(0),
            jobs_crashed: AtomicU64::new(0),
            jobs_timed_out: AtomicU64::new(0),
            jobs_unavailable: AtomicU64::new(0),
        }
    }

    pub(crate) fn retry_after(&self) -> Duration {
        Duration::from_millis(self.retry_after_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn set_retry_after(&self, delay: Duration) {
        self.retry_after_ms.store(duration_ms(delay), Ordering::Relaxed);
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    fn restarts_of(&self, stage: StageId) -> u64 {
        self.restarts[stage.index()].load(Ordering::Relaxed)
    }
}

fn duration_ms(delay: Duration) -> u64 {
    u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)
}

/// The address of a stage actor, `None` while it is down. Written by the source supervisor (and
/// cleared by a failing actor itself), read by whoever sends a job to the stage.
pub(crate) type Slot<M> = Mutex<Option<ActorRef<M>>>;

/// The current stage actors of a source.
pub(crate) struct StageRefs<S: Stages> {
    pub(crate) ingest: Slot<StageMsg<S::Job, S>>,
    pub(crate) validate: Slot<StageMsg<S::Parsed, S>>,
    pub(crate) aggregate: Slot<StageMsg<S::Validated, S>>,
}

impl<S: Stages> StageRefs<S> {
    fn new() -> Self {
        Self { ingest: Mutex::new(None), validate: Mutex::new(None), aggregate: Mutex::new(None) }
    }

    fn is_up(&self, stage: StageId) -> bool {
        match stage {
            StageId::Ingest => lock(&self.ingest).is_some(),
            StageId::Validate => lock(&self.validate).is_some(),
            StageId::Aggregate => lock(&self.aggregate).is_some(),
        }
    }

    /// Marks `stage` down if `id` is still the actor in its slot (a newer actor is left alone).
    pub(crate) fn clear_if(&self, stage: StageId, id: ActorId) {
        fn clear<M>(slot: &Slot<M>, id: ActorId) {
            let mut guard = lock(slot);
            if guard.as_ref().is_some_and(|actor| actor.get_id() == id) {
                *guard = None;
            }
        }
        match stage {
            StageId::Ingest => clear(&self.ingest, id),
            StageId::Validate => clear(&self.validate, id),
            StageId::Aggregate => clear(&self.aggregate, id),
        }
    }

    pub(crate) fn clear_all(&self) {
        *lock(&self.ingest) = None;
        *lock(&self.validate) = None;
        *lock(&self.aggregate) = None;
    }
}

/// Everything the pipeline knows about one source.
pub(crate) struct SourceShared<S: Stages> {
    pub(crate) core: Arc<SourceCore>,
    pub(crate) refs: StageRefs<S>,
}

impl<S: Stages> SourceShared<S> {
    pub(crate) fn new(id: String, capacity: usize, retry_after: Duration) -> Self {
        Self { core: Arc::new(SourceCore::new(id, capacity, retry_after)), refs: StageRefs::new() }
    }

    pub(crate) fn state(&self) -> SourceState {
        if self.core.is_stopped() {
            SourceState::Stopped
        } else if StageId::ALL.iter().all(|stage| self.refs.is_up(*stage)) {
            SourceState::Running
        } else {
            SourceState::BackingOff
        }
    }

    /// Stops accepting work for good: removal from the catalog or shutdown.
    pub(crate) fn mark_stopped(&self) {
        self.core.stopped.store(true, Ordering::Release);
        // Closing makes `try_acquire` fail; permits already handed out stay valid until dropped.
        self.core.semaphore.close();
        self.refs.clear_all();
    }

    pub(crate) fn snapshot(&self) -> SourceStats {
        let core = &self.core;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SourceStats {
            source: core.id.clone(),
            state: self.state(),
            queue_in_use: core.capacity.saturating_sub(core.semaphore.available_permits()),
            queue_capacity: core.capacity,
            jobs_in_pipeline: core.in_pipeline.load(Ordering::Relaxed),
            restarts: StageCounts {
                ingest: core.restarts_of(StageId::Ingest),
                validate: core.restarts_of(StageId::Validate),
                aggregate: core.restarts_of(StageId::Aggregate),
            },
            escalations: load(&core.escalations),
            source_restarts: load(&core.source_restarts),
            jobs_ok: load(&core.jobs_ok),
            jobs_rejected: load(&core.jobs_rejected),
            jobs_crashed: load(&core.jobs_crashed),
            jobs_timed_out: load(&core.jobs_timed_out),
            jobs_unavailable: load(&core.jobs_unavailable),
        }
    }
}
