//! The supervised actor pipeline of each node: one supervisor per source system with its ingest,
//! validate and aggregate actors, behind bounded queues (the next issue, "per-source supervised
//! actor pipeline").
//!
//! It holds no code yet. In the replicated core, submissions go from the HTTPS handler straight to
//! the group-commit batcher in `dtm-cluster`, whose bounded queue answers 429 when full; this crate
//! will sit between the two, parsing, validating and masking per source before records are
//! proposed.
