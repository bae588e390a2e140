//! The contract between this crate and the node: [`Stages`], the work of each stage.

/// The work of the three stages, supplied by the node. Each call is synchronous CPU work (parsing,
/// schema validation, masking, hashing) and runs on tokio's blocking pool, so a slow call never
/// stalls the runtime's workers, unless `runs_inline` says the job is too small for that to pay.
/// A call may panic (a poison input): the stage actor holding the job fails, its caller gets
/// `Crashed`, and the source supervisor restarts the actor, wherever the call ran.
pub trait Stages: Send + Sync + 'static {
    /// What a handler submits (a parsed request for one dataset).
    type Job: Send + 'static;
    /// The output of `ingest`, the input of `validate`.
    type Parsed: Send + 'static;
    /// The output of `validate`, the input of `aggregate`.
    type Validated: Send + 'static;
    /// What the handler gets back (records ready to propose).
    type Output: Send + 'static;
    /// A client-side problem (e.g. 422 problems), not a failure of the actor.
    type Rejection: Send + 'static;

    /// Parses the job of source `source`.
    fn ingest(&self, source: &str, job: Self::Job) -> Result<Self::Parsed, Self::Rejection>;
    /// Checks the parsed input against the source's schema.
    fn validate(&self, source: &str, parsed: Self::Parsed) -> Result<Self::Validated, Self::Rejection>;
    /// Masks, hashes and groups the validated input into what is proposed to Raft.
    fn aggregate(&self, source: &str, validated: Self::Validated) -> Result<Self::Output, Self::Rejection>;

    /// Whether `job` is so small that its three calls are quicker run on the stage actors' own
    /// tasks than handed to the blocking pool: each hand-off wakes a pool thread and then the
    /// actor, which costs more than parsing and checking one small record. Decided once, at
    /// submission, for every stage of the job. Say yes only for jobs whose calls are bounded by
    /// their size and small; the default, never, keeps every call on the pool.
    fn runs_inline(&self, job: &Self::Job) -> bool {
        let _ = job;
        false
    }
}

/// One of the three stages of a source's pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StageId {
    /// Runs [`Stages::ingest`].
    Ingest,
    /// Runs [`Stages::validate`].
    Validate,
    /// Runs [`Stages::aggregate`].
    Aggregate,
}

impl StageId {
    /// Every stage, in the order a job flows through them.
    pub const ALL: [StageId; 3] = [StageId::Ingest, StageId::Validate, StageId::Aggregate];

    /// The stage's name in errors, logs, metrics labels and actor names.
    pub const fn name(self) -> &'static str {
        match self {
            StageId::Ingest => "ingest",
            StageId::Validate => "validate",
            StageId::Aggregate => "aggregate",
        }
    }

    pub(crate) const fn index(self) -> usize {
        match self {
            StageId::Ingest => 0,
            StageId::Validate => 1,
            StageId::Aggregate => 2,
        }
    }
}
