//! Dataset definitions and the pure functions over them and their records.
//!
//! An admin posts a [`DatasetDef`] (JSON Schema of a record, natural key, time field, dimensions,
//! measures, masking, rules, lookups). On the receiving node, the per-source actor pipeline runs
//! each record through a [`CompiledDataset`]: [`CompiledDataset::validate`] (schema and rules),
//! [`CompiledDataset::enrich`] (reference lookups), [`CompiledDataset::mask`] (personal data),
//! then [`CompiledDataset::natural_key_hash`], [`content_sha256`] and
//! [`CompiledDataset::contribution`] prepare what is proposed to Raft. The query side rolls stored
//! [`Cell`]s up with [`aggregate`]. New versions of a definition pass [`check_compatible`].
//!
//! Everything here is deterministic: no I/O, no clock, no randomness, and every byte produced
//! (canonical JSON, hashes, cell keys, answer rows) is independent of map iteration order, so all
//! nodes compute the same output from the same input.

mod aggregate;
mod canonical;
mod compat;
mod def;
mod error;
pub mod limits;
mod mask;
mod rules;
mod time;
mod validate;

pub use aggregate::AggregateQuery;
pub use aggregate::Cell;
pub use aggregate::Contribution;
pub use aggregate::DecodedCell;
pub use aggregate::MeasureStat;
pub use aggregate::aggregate;
pub use aggregate::aggregate_decoded;
pub use aggregate::decode_cell_key;
pub use canonical::canonical_json;
pub use canonical::content_sha256;
pub use compat::check_compatible;
pub use def::CLASSIFICATIONS;
pub use def::DatasetDef;
pub use def::Lookup;
pub use def::MaskMethod;
pub use def::MeasureOp;
pub use def::PRIORITIES;
pub use def::SourceForm;
pub use error::Problem;
pub use mask::HASH_PREFIX;
pub use mask::REDACTED;
pub use mask::looks_masked;
pub use mask::mask_hash;
pub use mask::mask_partial;
pub use mask::mask_value;
pub use mask::raw_personal_data_kind;
pub use rules::CompareOp;
pub use rules::Operand;
pub use rules::Rule;
pub use rules::RuleCheck;
pub use time::Interval;
pub use time::TimePoint;
pub use time::civil_from_days;
pub use time::days_from_civil;
pub use validate::CompiledDataset;
pub use validate::NoReferences;
pub use validate::References;
pub use validate::reference_key;

#[cfg(test)]
pub(crate) mod test_support;
