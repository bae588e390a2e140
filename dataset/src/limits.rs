//! Named limits of dataset definitions and of the work done per record or per query. Every limit is
//! enforced where the data enters this crate: definitions in [`crate::DatasetDef::parse`], records in
//! [`crate::CompiledDataset::validate`], queries in [`crate::AggregateQuery::parse`] and [`crate::aggregate`].

/// Key fields of one definition. A natural key wider than this is a sign of a mis-modelled dataset.
pub const KEY_FIELDS_MAX: usize = 16;
/// Dimensions of one definition. Each dimension multiplies the number of aggregate cells.
pub const DIMENSIONS_MAX: usize = 8;
/// Measures of one definition; every cell carries one statistic per measure.
pub const MEASURES_MAX: usize = 32;
/// Cross-field rules of one definition; all of them run on every record.
pub const RULES_MAX: usize = 64;
/// Reference lookups of one definition; each one is a reference read per record.
pub const LOOKUPS_MAX: usize = 16;
/// Fields one lookup may add to a record.
pub const LOOKUP_ADD_FIELDS_MAX: usize = 32;
/// Length of a dataset id: it appears in URLs, storage keys and metric labels.
pub const DATASET_ID_LEN_BYTES_MAX: usize = 64;
/// Length of a field name named by the definition (key, dimension, measure, rule, lookup, masking).
pub const FIELD_NAME_LEN_BYTES_MAX: usize = 128;
/// Nesting depth the compatibility checker follows into a schema before it gives up and refuses.
pub const SCHEMA_DEPTH_MAX: usize = 32;
/// Problems reported for one record; a record that breaks more is reported as such, so that one
/// garbage record cannot make a response or a log line unbounded.
pub const PROBLEMS_PER_RECORD_MAX: usize = 32;
/// Rows one aggregate query may return before the caller must narrow it (coarser interval, fewer
/// group-by dimensions, a shorter from/to window).
pub const AGGREGATE_ROWS_MAX: usize = 100_000;
/// Characters kept at the start and at the end by default partial masking of a long value.
pub const PARTIAL_KEEP_START_DEFAULT_CHARS: usize = 3;
/// See [`PARTIAL_KEEP_START_DEFAULT_CHARS`].
pub const PARTIAL_KEEP_END_DEFAULT_CHARS: usize = 3;
/// Characters kept at the end of a value that is too short for its configured partial mask.
pub const PARTIAL_KEEP_END_SHORT_CHARS: usize = 2;
/// Fewest characters partial masking hides before it falls back to the short form: with the
/// defaults, values shorter than 3 + 3 + 2 = 8 characters keep only their last 2.
pub const PARTIAL_HIDDEN_CHARS_MIN: usize = 2;
/// Bytes of the HMAC kept by hash masking: 128 bits keep collisions out of reach while the
/// masked value stays short.
pub const MASK_HASH_BYTES: usize = 16;

const _: () = assert!(PARTIAL_KEEP_END_SHORT_CHARS <= PARTIAL_KEEP_END_DEFAULT_CHARS);
const _: () = assert!(MASK_HASH_BYTES <= 32, "HMAC-SHA256 yields 32 bytes");
