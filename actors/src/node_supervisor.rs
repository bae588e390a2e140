//! The node supervisor: one per node, parent of every source supervisor. It creates and stops
//! sources on request and restarts a source whose supervisor escalated, after `backoff_max`.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::source::SourceShared;
use crate::source_supervisor::{SourceMsg, SourceSupervisor};
use crate::{ActorsError, PipelineOptions, Stages, limits, metrics};

/// Every source the node runs, read without the actor by `admit`, `run` and `stats`. Only the node
/// supervisor writes it.
pub(crate) type SourceMap<S> = Arc<RwLock<HashMap<String, Arc<SourceShared<S>>>>>;

/// Makes every actor name unique in the process (ractor's registry is global, and tests run many
/// pipelines in one process).
static INCARNATION: AtomicU64 = AtomicU64::new(0);

pub(crate) fn next_incarnation() -> u64 {
    INCARNATION.fetch_add(1, Ordering::Relaxed)
}

pub(crate) enum NodeMsg {
    /// Make exactly these sources run.
    Sync { source_ids: Vec<String>, reply: RpcReplyPort<Result<(), ActorsError>> },
    /// Make this source run (idempotent).
    Add { source_id: String, reply: RpcReplyPort<Result<(), ActorsError>> },
    /// The backoff after an escalation is over.
    RestartSource { source_id: String },
}

pub(crate) struct NodeSupervisor<S: Stages> {
    pub(crate) stages: Arc<S>,
    pub(crate) opts: Arc<PipelineOptions>,
    pub(crate) sources: SourceMap<S>,
}

/// The node supervisor's view of one source.
pub(crate) struct SourceEntry<S: Stages> {
    shared: Arc<SourceShared<S>>,
    /// The running source supervisor; `None` while the source waits to be restarted.
    supervisor: Option<ActorRef<SourceMsg>>,
}

pub(crate) struct NodeState<S: Stages> {
    entries: HashMap<String, SourceEntry<S>>,
}

/// Source ids name actors and appear in logs: refuse what would make either ambiguous.
fn check_source_id(source_id: &str) -> Result<(), ActorsError> {
    if source_id.is_empty() {
        return Err(ActorsError::InvalidSourceId("empty".to_owned()));
    }
    if source_id.len() > limits::SOURCE_ID_LEN_MAX_BYTES {
        return Err(ActorsError::InvalidSourceId(format!("longer than {} bytes", limits::SOURCE_ID_LEN_MAX_BYTES)));
    }
    if source_id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ActorsError::InvalidSourceId("contains whitespace or control characters".to_owned()));
    }
    Ok(())
}

impl<S: Stages> NodeSupervisor<S> {
    fn write_map(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<SourceShared<S>>>> {
        self.sources.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Spawns the supervisor of a known source; on failure schedules another attempt.
    async fn start_source(
        &self,
        myself: &ActorRef<NodeMsg>,
        state: &mut NodeState<S>,
        source_id: &str,
    ) -> Result<(), ActorsError> {
        let Some(entry) = state.entries.get_mut(source_id) else {
            return Ok(());
        };
        let incarnation = next_incarnation();
        let name = format!("dtm-actors/{source_id}/{incarnation}");
        let supervisor =
            SourceSupervisor { stages: Arc::clone(&self.stages), opts: Arc::clone(&self.opts), incarnation };
        match Actor::spawn_linked(Some(name.clone()), supervisor, Arc::clone(&entry.shared), myself.get_cell()).await {
            Ok((actor_ref, _join)) => {
                entry.supervisor = Some(actor_ref);
                Ok(())
            }
            Err(e) => {
                let error = ActorsError::Spawn { what: name, detail: e.to_string() };
                tracing::error!(source = source_id, error = %error, "cannot start source; retrying after backoff_max");
                self.schedule_restart(myself, &entry.shared, source_id);
                Err(error)
            }
        }
    }

    fn schedule_restart(&self, myself: &ActorRef<NodeMsg>, shared: &SourceShared<S>, source_id: &str) {
        shared.core.set_retry_after(self.opts.backoff_max);
        let source_id = source_id.to_owned();
        let _timer = myself.send_after(self.opts.backoff_max, move || NodeMsg::RestartSource { source_id });
    }

    async fn add(
        &self,
        myself: &ActorRef<NodeMsg>,
        state: &mut NodeState<S>,
        source_id: &str,
    ) -> Result<(), ActorsError> {
        check_source_id(source_id)?;
        if state.entries.contains_key(source_id) {
            return Ok(());
        }
        if state.entries.len() >= limits::SOURCES_MAX {
            return Err(ActorsError::TooManySources { count: state.entries.len() + 1, limit: limits::SOURCES_MAX });
        }
        let shared = Arc::new(SourceShared::new(
            source_id.to_owned(),
            self.opts.queue_depth_per_source,
            self.opts.backoff_initial,
        ));
        self.write_map().insert(source_id.to_owned(), Arc::clone(&shared));
        state.entries.insert(source_id.to_owned(), SourceEntry { shared, supervisor: None });
        tracing::info!(source = source_id, "starting source supervisor");
        self.start_source(myself, state, source_id).await
    }

    fn remove(&self, state: &mut NodeState<S>, source_id: &str) {
        self.write_map().remove(source_id);
        if let Some(entry) = state.entries.remove(source_id) {
            // Stopped first, so `run` answers `Unavailable` rather than racing the teardown.
            entry.shared.mark_stopped();
            if let Some(supervisor) = entry.supervisor {
                supervisor.stop(Some("source removed".to_owned()));
            }
            tracing::info!(source = source_id, "source supervisor stopped");
        }
    }

    async fn sync(
        &self,
        myself: &ActorRef<NodeMsg>,
        state: &mut NodeState<S>,
        source_ids: Vec<String>,
    ) -> Result<(), ActorsError> {
        let wanted: BTreeSet<String> = source_ids.into_iter().collect();
        if wanted.len() > limits::SOURCES_MAX {
            return Err(ActorsError::TooManySources { count: wanted.len(), limit: limits::SOURCES_MAX });
        }
        for source_id in &wanted {
            check_source_id(source_id)?;
        }
        let stale: Vec<String> = state.entries.keys().filter(|id| !wanted.contains(*id)).cloned().collect();
        for source_id in stale {
            self.remove(state, &source_id);
        }
        // Every source is attempted; the first error is reported, the others are logged by
        // `start_source` and retried on their own.
        let mut first_error = None;
        for source_id in &wanted {
            if let Err(e) = self.add(myself, state, source_id).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl<S: Stages> Actor for NodeSupervisor<S> {
    type Msg = NodeMsg;
    type State = NodeState<S>;
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<NodeMsg>, _args: ()) -> Result<NodeState<S>, ActorProcessingErr> {
        Ok(NodeState { entries: HashMap::new() })
    }

    async fn post_stop(&self, _myself: ActorRef<NodeMsg>, state: &mut NodeState<S>) -> Result<(), ActorProcessingErr> {
        // ractor stops our children after this; mark every source stopped first so that no job is
        // sent into a mailbox that is going away.
        for entry in state.entries.values() {
            entry.shared.mark_stopped();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<NodeMsg>,
        message: NodeMsg,
        state: &mut NodeState<S>,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            NodeMsg::Sync { source_ids, reply } => {
                let result = self.sync(&myself, state, source_ids).await;
                // The caller may have timed out; the sync happened anyway.
                let _ = reply.send(result);
            }
            NodeMsg::Add { source_id, reply } => {
                let result = self.add(&myself, state, &source_id).await;
                let _ = reply.send(result);
            }
            NodeMsg::RestartSource { source_id } => {
                let needs_start = state.entries.get(&source_id).is_some_and(|entry| entry.supervisor.is_none());
                if needs_start && self.start_source(&myself, state, &source_id).await.is_ok() {
                    if let Some(entry) = state.entries.get(&source_id) {
                        entry.shared.core.source_restarts.fetch_add(1, Ordering::Relaxed);
                    }
                    metrics::source_restarted();
                    tracing::warn!(source = source_id.as_str(), "source restarted after escalation");
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<NodeMsg>,
        event: SupervisionEvent,
        state: &mut NodeState<S>,
    ) -> Result<(), ActorProcessingErr> {
        let (id, detail): (ActorId, String) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell.get_id(), error.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell.get_id(), reason.unwrap_or_else(|| "stopped".to_owned()))
            }
            _ => return Ok(()),
        };
        // A removed source is no longer in `entries`: its exit is expected and ignored.
        let found =
            state.entries.iter_mut().find(|(_, entry)| entry.supervisor.as_ref().is_some_and(|sup| sup.get_id() == id));
        let Some((source_id, entry)) = found else {
            return Ok(());
        };
        entry.supervisor = None;
        // The source supervisor clears these itself when it escalates; not if it died of a bug.
        entry.shared.refs.clear_all();
        tracing::error!(
            source = source_id.as_str(),
            error = detail.as_str(),
            backoff_ms = u64::try_from(self.opts.backoff_max.as_millis()).unwrap_or(u64::MAX),
            "source supervisor exited; restarting the source after backoff_max"
        );
        let source_id = source_id.clone();
        let shared = Arc::clone(&entry.shared);
        self.schedule_restart(&myself, &shared, &source_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::check_source_id;

    #[test]
    fn source_ids_are_checked() {
        assert!(check_source_id("tax-authority.vat").is_ok());
        assert!(check_source_id("").is_err());
        assert!(check_source_id("a b").is_err());
        assert!(check_source_id("a\nb").is_err());
        assert!(check_source_id(&"x".repeat(crate::limits::SOURCE_ID_LEN_MAX_BYTES + 1)).is_err());
    }
}
