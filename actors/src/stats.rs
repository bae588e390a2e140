//! The statistics [`crate::Pipeline::stats`] returns: a snapshot per source. They serialize (serde)
//! as the node's admin API shows them: a list of sources, states in `snake_case`.

use serde::Serialize;

/// The lifecycle state of a source's actors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    /// All three stage actors are up and accept jobs.
    Running,
    /// A stage actor (or the whole source, after an escalation) is waiting to be restarted; jobs
    /// are answered `Unavailable`.
    BackingOff,
    /// The source was removed or the pipeline shut down.
    Stopped,
}

/// A count per stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StageCounts {
    pub ingest: u64,
    pub validate: u64,
    pub aggregate: u64,
}

/// A snapshot of one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceStats {
    /// The source id.
    pub source: String,
    pub state: SourceState,
    /// Permits taken (jobs in the pipeline or held by callers that are committing).
    pub queue_in_use: usize,
    /// `queue_depth_per_source`.
    pub queue_capacity: usize,
    /// Jobs inside the actors, including ones whose caller timed out and which have not yet left.
    pub jobs_in_pipeline: usize,
    /// Stage actor restarts performed by the source supervisor.
    pub restarts: StageCounts,
    /// Times the source supervisor gave up and the whole source was restarted.
    pub escalations: u64,
    /// Restarts of the whole source by the node supervisor.
    pub source_restarts: u64,
    pub jobs_ok: u64,
    pub jobs_rejected: u64,
    pub jobs_crashed: u64,
    pub jobs_timed_out: u64,
    pub jobs_unavailable: u64,
}

/// A snapshot of every source the pipeline knows, ordered by source id. Serializes as the list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct PipelineStats {
    pub sources: Vec<SourceStats>,
}

impl PipelineStats {
    /// The snapshot of one source, if the pipeline knows it.
    pub fn source(&self, source_id: &str) -> Option<&SourceStats> {
        self.sources.binary_search_by(|s| s.source.as_str().cmp(source_id)).ok().and_then(|i| self.sources.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_of(source: &str) -> SourceStats {
        SourceStats {
            source: source.to_owned(),
            state: SourceState::BackingOff,
            queue_in_use: 1,
            queue_capacity: 64,
            jobs_in_pipeline: 1,
            restarts: StageCounts { ingest: 0, validate: 2, aggregate: 0 },
            escalations: 0,
            source_restarts: 0,
            jobs_ok: 3,
            jobs_rejected: 0,
            jobs_crashed: 2,
            jobs_timed_out: 0,
            jobs_unavailable: 0,
        }
    }

    #[test]
    fn serializes_as_a_list_of_sources() {
        let stats = PipelineStats { sources: vec![stats_of("a"), stats_of("b")] };
        let value = serde_json::to_value(&stats).expect("stats serialize");
        assert_eq!(value[1]["source"], "b");
        assert_eq!(value[0]["restarts"]["validate"], 2);
        assert_eq!(value[0]["state"], "backing_off");
        assert_eq!(stats.source("b").map(|s| s.source.as_str()), Some("b"));
        assert!(stats.source("c").is_none());
    }
}
