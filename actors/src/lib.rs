//! The supervised actor pipeline of each node: for every source system, an ingest, a validate and
//! an aggregate actor under a source supervisor, behind a bounded admission queue.
//!
//! # Where it sits in the data flow
//!
//! ```text
//! HTTPS handler ──admit(source)──▶ Permit ──run(permit, job)──▶ ingest ─▶ validate ─▶ aggregate
//!       ▲                                                                                │
//!       └───────────────── (Permit, Output) ◀────────────────────────────────────────────┘
//!       └── proposes the output to Raft through the group-commit batcher (`dtm-cluster`),
//!           still holding the permit, then drops it.
//! ```
//!
//! The crate is generic over the work: the node implements [`Stages`] (parsing, schema validation,
//! masking, hashing); this crate supplies supervision, bounded admission, routing, restarts,
//! timeouts and statistics. It depends on no other workspace crate.
//!
//! # Supervision tree (ractor)
//!
//! ```text
//! NodeSupervisor                          one per node; spawned by `Pipeline::start`
//! └── SourceSupervisor "<source>"         one per source, spawned linked (sync_sources / add_source)
//!     ├── StageActor<Ingest>              spawned linked in the source supervisor's `pre_start`
//!     ├── StageActor<Validate>
//!     └── StageActor<Aggregate>           replies to the caller
//! ```
//!
//! A job carries a oneshot reply wrapped in a guard (`job::Reply`) from actor to actor; each stage
//! actor runs its `Stages` method on tokio's blocking pool (or, for a job `Stages::runs_inline`
//! calls light, on its own task, a panic caught the same way) and sends the result to the next
//! stage's current actor. The guard answers the caller when dropped unanswered: `Crashed { stage }`
//! if that stage had started the job (it panicked), `Unavailable` if the job never got to run (the
//! stage was down, or its mailbox was dropped with the actor). No caller waits past `call_timeout`.
//!
//! # Admission
//!
//! ractor mailboxes are unbounded, so admission is what bounds them: [`Pipeline::admit`] takes one
//! permit of the source's semaphore (`queue_depth_per_source`) with `try_acquire` and answers
//! `Busy` at once when none is left. The permit travels back to the caller with the output and is
//! held while the caller commits, so it bounds all in-flight work of the source. A job whose caller
//! timed out frees its permit but keeps counting against the depth until it leaves the actors, so
//! a stuck stage cannot accumulate abandoned jobs. A stage skips jobs whose caller is gone.
//!
//! # Restart policy
//!
//! When a stage actor fails (a panic in a `Stages` call), its source supervisor unpublishes it (new
//! jobs of the source answer `Unavailable`), and restarts that stage after a backoff doubling from
//! `backoff_initial` up to `backoff_max` with each failure in the sliding `restart_window`. A
//! failure beyond `restart_max` in the window escalates: the source supervisor fails, ractor kills
//! its stage actors, and the node supervisor restarts the whole source after `backoff_max` — a
//! source of a national system is never left dead. Restarts are counted in
//! `dtm_actor_restarts_total{stage}` and per source in [`Pipeline::stats`]; restarts and
//! escalations are logged with source, stage and error. One source's failures never touch another
//! source's actors, permits or counters (bulkhead).

mod error;
#[cfg(feature = "fault-injection")]
pub mod fault;
mod job;
pub mod limits;
mod metrics;
mod node_supervisor;
mod options;
mod pipeline;
mod source;
mod source_supervisor;
mod stage_actor;
mod stages;
mod stats;

pub use error::{ActorsError, PipelineError};
pub use options::PipelineOptions;
pub use pipeline::{Permit, Pipeline};
pub use stages::{StageId, Stages};
pub use stats::{PipelineStats, SourceState, SourceStats, StageCounts};
