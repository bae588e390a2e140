//! The work of each source's actors (`dtm-actors` supplies the actors, their supervision and the
//! bounded admission): the ingest actor parses a request body into records, the validate actor
//! checks them against the dataset's compiled schema and business rules, enriches them from
//! reference tables and applies the masking policy, and the aggregate actor computes what `apply`
//! needs to decide duplicates and update aggregates (natural-key HMAC, content hash, the record's
//! aggregate contribution). The output is the list of records the handler proposes to Raft.
//!
//! Also here: the compiled-dataset cache (`Catalog`), the reference-table reader, and the cluster's
//! masking key.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;

use dtm_cluster::tables;
use dtm_dataset::CompiledDataset;
use dtm_dataset::DatasetDef;
use dtm_dataset::Problem;
use dtm_dataset::References;
use dtm_dataset::SourceForm;
use dtm_model::state;
use dtm_storage::StateReader;
use serde_json::Map;
use serde_json::Value;

use crate::limits::COMPILED_DATASETS_CACHED_MAX;
use crate::limits::RECORDS_PER_REQUEST_MAX;

/// One request for one dataset, as the handler hands it to the source's actors.
pub struct Job {
    pub dataset: Arc<CompiledDataset>,
    pub form: SourceForm,
    pub masking_key: Arc<Vec<u8>>,
    pub refs: Arc<TableRefs>,
    pub body: bytes::Bytes,
}

pub struct Parsed {
    job: Job,
    records: Vec<Value>,
}

/// A record after validation: its stored form, the fields masked and the fields added.
struct Checked {
    record: Map<String, Value>,
    masked_fields: Vec<String>,
    enriched_fields: Vec<String>,
}

pub struct Validated {
    job: Job,
    records: Vec<Checked>,
}

/// Why the stages refused a request: the client's problem, never the actor's.
#[derive(Debug)]
pub enum Rejection {
    /// 400: the body is not JSON.
    MalformedJson(String),
    /// 400: the body is not what the endpoint takes.
    BadRequest(String),
    /// 413: more records than one real-time request may carry.
    TooManyRecords,
    /// 422: one entry per problem, with the record index and a JSON Pointer.
    Invalid(Vec<Problem>),
}

pub struct IngestStages {
    /// Largest body whose stages run on the actors' own tasks (`runs_inline`; 0: none).
    pub inline_bytes_max: usize,
}

impl dtm_actors::Stages for IngestStages {
    type Job = Job;
    type Parsed = Parsed;
    type Validated = Validated;
    type Output = Vec<state::RecordIn>;
    type Rejection = Rejection;

    fn ingest(&self, _source: &str, job: Job) -> Result<Parsed, Rejection> {
        let value: Value =
            serde_json::from_slice(&job.body).map_err(|e| Rejection::MalformedJson(format!("malformed JSON: {e}")))?;
        let records = match value {
            Value::Array(items) => items,
            obj @ Value::Object(_) => vec![obj],
            _ => return Err(Rejection::BadRequest("the body must be a JSON object or an array of objects".into())),
        };
        if records.is_empty() {
            return Err(Rejection::BadRequest("the array holds no records".into()));
        }
        if records.len() > RECORDS_PER_REQUEST_MAX {
            return Err(Rejection::TooManyRecords);
        }
        Ok(Parsed { job, records })
    }

    fn validate(&self, _source: &str, parsed: Parsed) -> Result<Validated, Rejection> {
        let Parsed { job, records } = parsed;
        #[cfg(feature = "fault-injection")]
        fault::maybe_panic(&records);
        let ds = &job.dataset;
        let refs: &dyn References = job.refs.as_ref();
        let mut problems = Vec::new();
        for (i, r) in records.iter().enumerate() {
            problems.extend(ds.validate(i, r, refs));
        }
        if !problems.is_empty() {
            return Err(Rejection::Invalid(problems));
        }
        let mut out = Vec::with_capacity(records.len());
        for (i, r) in records.into_iter().enumerate() {
            let Value::Object(mut obj) = r else {
                problems.push(Problem {
                    record: Some(i),
                    field: String::new(),
                    message: "a record must be a JSON object".into(),
                });
                continue;
            };
            let enriched = ds.enrich(&mut obj, refs);
            match ds.mask(i, &mut obj, job.form, &job.masking_key) {
                Ok(masked_fields) => {
                    out.push(Checked { record: obj, masked_fields, enriched_fields: enriched });
                }
                Err(p) => problems.extend(p),
            }
        }
        if !problems.is_empty() {
            return Err(Rejection::Invalid(problems));
        }
        Ok(Validated { job, records: out })
    }

    fn aggregate(&self, _source: &str, v: Validated) -> Result<Vec<state::RecordIn>, Rejection> {
        let ds = &v.job.dataset;
        let mut out = Vec::with_capacity(v.records.len());
        let mut problems = Vec::new();
        // Ids `<submission>.<n>`: `apply` locates them by one key per submission (record_id.rs).
        let submission = dtm_model::record_id::new_submission();
        for (i, Checked { record: obj, masked_fields, enriched_fields }) in v.records.into_iter().enumerate() {
            let contribution = match ds.contribution(i, &obj) {
                Ok(c) => {
                    Some(state::AggContribution { cell_key: c.cell_key(), measures: c.measures.into_iter().collect() })
                }
                Err(p) => {
                    problems.push(p);
                    continue;
                }
            };
            let reference_key = match &ds.def.reference_key {
                Some(field) => obj.get(field).map(reference_key_text).unwrap_or_default(),
                None => String::new(),
            };
            out.push(state::RecordIn {
                id: dtm_model::record_id::of(&submission, i),
                natural_key_hash: ds.natural_key_hash(&obj, &v.job.masking_key).map(|h| h.to_vec()).unwrap_or_default(),
                content_sha256: dtm_dataset::content_sha256(&obj).to_vec(),
                payload_json: Value::Object(obj).to_string().into_bytes(),
                contribution,
                masked_fields,
                enriched_fields,
                reference_key,
            });
        }
        if !problems.is_empty() {
            return Err(Rejection::Invalid(problems));
        }
        Ok(out)
    }

    /// A body of at most `inline_bytes_max` (16 KiB by default: one record, or a few) is parsed,
    /// validated and masked on the stage actors' own tasks: the work is tens of microseconds,
    /// bounded by the body's size, and three hand-offs to the blocking pool cost more. Larger
    /// bodies (arrays of records, batch chunks) keep the pool, which keeps a slow job from
    /// holding a runtime worker.
    fn runs_inline(&self, job: &Job) -> bool {
        // 0 means none, not "empty bodies only", as `[pipeline] inline_bytes_max` documents.
        self.inline_bytes_max > 0 && job.body.len() <= self.inline_bytes_max
    }
}

/// How a key value is written in reference-table keys: strings as they are, anything else as JSON.
pub fn reference_key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Reference tables as this node has applied them.
pub struct TableRefs {
    pub reader: StateReader,
}

impl References for TableRefs {
    fn get(&self, dataset: &str, key: &str) -> Option<Map<String, Value>> {
        let bytes = self.reader.get(&tables::reference(dataset, key)).ok()??;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(m)) => Some(m),
            _ => None,
        }
    }
}

/// Compiled datasets by (id, version): a JSON Schema is compiled once per version, not per request.
#[derive(Default)]
pub struct Catalog {
    compiled: Mutex<BTreeMap<(String, u32), Arc<CompiledDataset>>>,
}

impl Catalog {
    /// The compiled form of a stored definition.
    pub fn compiled(&self, ds: &state::Dataset) -> Result<Arc<CompiledDataset>, String> {
        let key = (ds.id.clone(), ds.version);
        if let Some(c) = self.compiled.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(c.clone());
        }
        let def_json: Value = serde_json::from_slice(&ds.definition_json).map_err(|e| e.to_string())?;
        let def = DatasetDef::parse(&def_json).map_err(|p| problems_text(&p))?;
        let compiled = Arc::new(CompiledDataset::compile(def, ds.version).map_err(|p| problems_text(&p))?);
        let mut cache = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= COMPILED_DATASETS_CACHED_MAX {
            // Simple and bounded: definitions change rarely, so a full cache is rebuilt on demand.
            cache.clear();
        }
        cache.insert(key, compiled.clone());
        Ok(compiled)
    }
}

fn problems_text(p: &[Problem]) -> String {
    p.iter().map(|p| format!("{}: {}", p.field, p.message)).collect::<Vec<_>>().join("; ")
}

/// Test-only fault injection (feature `fault-injection`, never in a release build): a record with
/// `"__dtm_fault__": "panic-validate"` makes the validate actor panic, so tests can prove that the
/// supervisor restarts it and that other sources do not notice.
#[cfg(feature = "fault-injection")]
mod fault {
    use serde_json::Value;

    pub fn maybe_panic(records: &[Value]) {
        if records.iter().any(|r| r.get("__dtm_fault__").and_then(Value::as_str) == Some("panic-validate")) {
            panic!("fault injected into the validate stage (test build)");
        }
    }
}
