//! Every metric this crate emits. Labels are bounded sets (stage names, outcomes), never source
//! ids: the number of sources is only bounded by the catalog.

use crate::StageId;

/// A stage actor was restarted by its source supervisor.
pub(crate) fn stage_restarted(stage: StageId) {
    metrics::counter!("dtm_actor_restarts_total", "stage" => stage.name()).increment(1);
}

/// A source supervisor gave up on a stage and the whole source is restarted.
pub(crate) fn source_escalated(stage: StageId) {
    metrics::counter!("dtm_actor_escalations_total", "stage" => stage.name()).increment(1);
}

/// The node supervisor restarted a source after an escalation or an unexpected stop.
pub(crate) fn source_restarted() {
    metrics::counter!("dtm_actor_source_restarts_total").increment(1);
}

/// A job finished with `outcome` (`ok`, `rejected`, `crashed`, `timeout`, `unavailable`, `busy`, `stopped`).
pub(crate) fn job_finished(outcome: &'static str) {
    metrics::counter!("dtm_actor_jobs_total", "outcome" => outcome).increment(1);
}
