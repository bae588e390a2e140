//! A definition compiled for the per-source pipeline: record validation (A3.4), enrichment from
//! reference tables (F2), natural keys for duplicate detection (A1.5) and each record's share of
//! the aggregates (F4). Masking (C7) lives in `mask.rs`.

use hmac::Hmac;
use hmac::Mac;
use jsonschema::Validator;
use jsonschema::error::ValidationErrorKind;
use serde_json::Map;
use serde_json::Value;
use sha2::Sha256;

use crate::aggregate::Contribution;
use crate::canonical::canonical_json;
use crate::def::DatasetDef;
use crate::error::Problem;
use crate::error::pointer;
use crate::error::pointer_join;
use crate::limits;
use crate::time::TimePoint;

/// Domain separation for natural-key hashes, so they never equal an HMAC taken for another purpose
/// with the same key.
const NATURAL_KEY_CONTEXT: &[u8] = b"dtm-natural-key\0";

/// Read access to reference datasets, provided by the caller (the node reads its state machine).
pub trait References {
    /// The record of reference dataset `dataset` whose key field equals `key` (strings as is,
    /// numbers as their JSON text; see [`reference_key`]).
    fn get(&self, dataset: &str, key: &str) -> Option<Map<String, Value>>;
}

/// No reference data: every lookup misses.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoReferences;

impl References for NoReferences {
    fn get(&self, _dataset: &str, _key: &str) -> Option<Map<String, Value>> {
        None
    }
}

/// The text a value is looked up by in a reference table: strings as they are, numbers as their
/// JSON text; other kinds cannot be keys. Store reference records under the same text.
pub fn reference_key(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A definition with its schema compiled once, shared by every record of the dataset.
#[derive(Clone, Debug)]
pub struct CompiledDataset {
    pub def: DatasetDef,
    pub version: u32,
    validator: Validator,
}

impl CompiledDataset {
    /// Compiles the definition's schema as draft 2020-12.
    pub fn compile(def: DatasetDef, version: u32) -> Result<CompiledDataset, Vec<Problem>> {
        // Fixing the draft here keeps validation the same on every node whatever `$schema` says.
        match jsonschema::draft202012::new(&def.schema) {
            Ok(validator) => Ok(CompiledDataset { def, version, validator }),
            Err(e) => Err(vec![Problem::new(
                format!("/schema{}", e.instance_path().as_str()),
                format!("schema does not compile as draft 2020-12: {e}"),
            )]),
        }
    }

    /// All problems of one record: schema errors first, then rule violations.
    pub fn validate(&self, index: usize, record: &Value, refs: &dyn References) -> Vec<Problem> {
        let Some(obj) = record.as_object() else {
            return vec![Problem::at(index, "", "a record must be a JSON object")];
        };
        let mut out = Vec::new();
        for e in self.validator.iter_errors(record) {
            let mut field = e.instance_path().as_str().to_string();
            // A missing property is reported at the object holding it; point at the property itself.
            if let ValidationErrorKind::Required { property: Value::String(name) } = e.kind() {
                field = pointer_join(&field, name);
            }
            // The masked form never repeats the value, which may be personal data.
            out.push(Problem::at(index, field, e.masked().to_string()));
        }
        let time_field = self.def.time_field.as_deref();
        out.extend(self.def.rules.iter().filter_map(|r| r.check(index, obj, time_field, refs)));
        if out.len() > limits::PROBLEMS_PER_RECORD_MAX {
            let more = out.len() - limits::PROBLEMS_PER_RECORD_MAX + 1;
            out.truncate(limits::PROBLEMS_PER_RECORD_MAX - 1);
            out.push(Problem::at(index, "", format!("{more} more problems not shown")));
        }
        out
    }

    /// Adds the fields named by the lookups from the matching reference records (overwriting a
    /// field of the same name: the reference is authoritative). A missing reference record or
    /// column adds nothing. Returns the names of the added fields.
    pub fn enrich(&self, record: &mut Map<String, Value>, refs: &dyn References) -> Vec<String> {
        let mut added = Vec::new();
        for lookup in &self.def.lookups {
            let Some(key) = record.get(&lookup.field).and_then(reference_key) else { continue };
            let Some(row) = refs.get(&lookup.reference, &key) else { continue };
            for (new, column) in &lookup.add {
                if let Some(v) = row.get(column) {
                    record.insert(new.clone(), v.clone());
                    added.push(new.clone());
                }
            }
        }
        added
    }

    /// HMAC-SHA256 of the record's key values; `None` when the definition has no key. Keyed, so
    /// that a leaked index of natural keys does not reveal the key values by brute force.
    pub fn natural_key_hash(&self, record: &Map<String, Value>, key: &[u8]) -> Option<[u8; 32]> {
        if self.def.key.is_empty() {
            return None;
        }
        let values: Vec<Value> = self.def.key.iter().map(|k| record.get(k).cloned().unwrap_or(Value::Null)).collect();
        let mut mac = hmac_sha256(key);
        mac.update(NATURAL_KEY_CONTEXT);
        mac.update(canonical_json(&Value::Array(values)).as_bytes());
        Some(mac.finalize().into_bytes().into())
    }

    /// The record's share of the aggregates: its time point, dimension values and numeric measures.
    pub fn contribution(&self, index: usize, record: &Map<String, Value>) -> Result<Contribution, Problem> {
        let time = match &self.def.time_field {
            None => TimePoint::None,
            Some(f) => match record.get(f) {
                None | Some(Value::Null) => {
                    return Err(Problem::at(index, pointer(f), "the time field is needed to place the record in time"));
                }
                Some(v) => TimePoint::from_value(v).map_err(|_| {
                    Problem::at(
                        index,
                        pointer(f),
                        "not a time point: expected YYYY, YYYY-Qn, YYYY-MM, YYYY-Www, YYYY-MM-DD or an RFC 3339 date-time",
                    )
                })?,
            },
        };
        let dims = self.def.dimensions.iter().map(|d| record.get(d).cloned().unwrap_or(Value::Null)).collect();
        let mut measures = std::collections::BTreeMap::new();
        for name in self.def.measures.keys() {
            match record.get(name) {
                None | Some(Value::Null) => {}
                Some(Value::Number(n)) => {
                    let v = n.as_f64().ok_or_else(|| Problem::at(index, pointer(name), "number out of range"))?;
                    measures.insert(name.clone(), v);
                }
                Some(_) => return Err(Problem::at(index, pointer(name), "a measure must be a number")),
            }
        }
        Ok(Contribution { time, dims, measures })
    }
}

/// HMAC-SHA256 keyed with `key`; HMAC takes keys of any length, so this cannot fail.
pub(crate) fn hmac_sha256(key: &[u8]) -> Hmac<Sha256> {
    match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        // Unreachable: RFC 2104 HMAC hashes long keys and pads short ones.
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
