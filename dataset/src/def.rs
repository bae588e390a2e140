//! Dataset definitions as posted by an admin (A3.2, F3): parsing with every problem reported at
//! once, each with a JSON Pointer into the posted definition, and the metadata published with the
//! schema.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::str::FromStr;

use serde_json::Map;
use serde_json::Value;
use serde_json::json;

use crate::error::Problem;
use crate::error::pointer;
use crate::error::pointer_join;
use crate::limits;
use crate::rules::Rule;

/// How a measure is rolled up. The record count of a cell always exists and needs no measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeasureOp {
    Sum,
    Min,
    Max,
    Avg,
}

impl MeasureOp {
    pub fn name(&self) -> &'static str {
        match self {
            MeasureOp::Sum => "sum",
            MeasureOp::Min => "min",
            MeasureOp::Max => "max",
            MeasureOp::Avg => "avg",
        }
    }
}

impl FromStr for MeasureOp {
    type Err = String;

    fn from_str(s: &str) -> Result<MeasureOp, String> {
        match s {
            "sum" => Ok(MeasureOp::Sum),
            "min" => Ok(MeasureOp::Min),
            "max" => Ok(MeasureOp::Max),
            "avg" => Ok(MeasureOp::Avg),
            "count" => Err("`count` is not a measure op: the record count is always reported".to_string()),
            other => Err(format!("unknown measure op `{other}`: expected sum, min, max or avg")),
        }
    }
}

/// How a field holding personal data is masked before it is stored (C7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MaskMethod {
    /// Keep `keep_start` first and `keep_end` last characters, hide the rest with `*`.
    Partial { keep_start: usize, keep_end: usize },
    /// Replace by a keyed hash, so equal values still join.
    Hash,
    /// Replace by `"[redacted]"`.
    Redact,
}

impl MaskMethod {
    pub fn name(&self) -> &'static str {
        match self {
            MaskMethod::Partial { .. } => "partial",
            MaskMethod::Hash => "hash",
            MaskMethod::Redact => "redact",
        }
    }
}

/// Whether a source sends personal data raw (we mask it) or already masked (we check it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceForm {
    Raw,
    Masked,
}

impl FromStr for SourceForm {
    type Err = String;

    fn from_str(s: &str) -> Result<SourceForm, String> {
        match s {
            "raw" => Ok(SourceForm::Raw),
            "masked" => Ok(SourceForm::Masked),
            other => Err(format!("unknown source form `{other}`: expected raw or masked")),
        }
    }
}

/// Enrichment from a reference dataset (F2): the record's `field` value is looked up as a key of
/// `reference`, and each reference column in `add` is copied into the record under a new name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    pub field: String,
    pub reference: String,
    /// New record field → reference column.
    pub add: BTreeMap<String, String>,
}

/// A parsed, checked dataset definition.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetDef {
    pub id: String,
    pub title: String,
    pub description: String,
    pub owner: String,
    /// Draft 2020-12 JSON Schema of one record.
    pub schema: Value,
    /// Fields whose values identify a record (duplicate detection, A1.5); may be empty.
    pub key: Vec<String>,
    pub time_field: Option<String>,
    pub dimensions: Vec<String>,
    pub measures: BTreeMap<String, MeasureOp>,
    pub units: BTreeMap<String, String>,
    pub masking: BTreeMap<String, MaskMethod>,
    pub classification: String,
    pub priority: String,
    pub rules: Vec<Rule>,
    pub lookups: Vec<Lookup>,
    /// Set when this dataset is a reference table, looked up by this field.
    pub reference_key: Option<String>,
}

/// Classifications, least protected first (the compatibility check relies on this order).
pub const CLASSIFICATIONS: [&str; 4] = ["public", "internal", "confidential", "secret"];
/// Priorities, lowest first.
pub const PRIORITIES: [&str; 4] = ["low", "normal", "high", "urgent"];
/// Top-level fields a definition may have; anything else is reported so that typos do not pass.
const DEFINITION_FIELDS: [&str; 17] = [
    "id",
    "title",
    "description",
    "owner",
    "schema",
    "key",
    "time_field",
    "dimensions",
    "measures",
    "units",
    "masking",
    "classification",
    "priority",
    "rules",
    "lookups",
    "reference",
    "version",
];
/// Names an aggregate answer row uses for itself, so dimensions and measures cannot take them.
const RESERVED_ROW_FIELDS: [&str; 2] = ["bucket", "count"];

impl DatasetDef {
    /// Parses and checks a posted definition, reporting every problem at once.
    pub fn parse(v: &Value) -> Result<DatasetDef, Vec<Problem>> {
        let Some(obj) = v.as_object() else {
            return Err(vec![Problem::new("", "a dataset definition must be a JSON object")]);
        };
        let mut p = Vec::new();
        for k in obj.keys().filter(|k| !DEFINITION_FIELDS.contains(&k.as_str())) {
            p.push(Problem::new(pointer(k), format!("unknown definition field `{k}`")));
        }
        let id = string_field(obj, "id", true, &mut p).unwrap_or_default();
        if !id.is_empty()
            && (id.len() > limits::DATASET_ID_LEN_BYTES_MAX
                || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        {
            p.push(Problem::new(
                "/id",
                format!("`id` must be 1 to {} ASCII letters, digits, `_` or `-`", limits::DATASET_ID_LEN_BYTES_MAX),
            ));
        }
        let title = string_field(obj, "title", false, &mut p).unwrap_or_else(|| id.clone());
        let description = string_field(obj, "description", false, &mut p).unwrap_or_default();
        let owner = string_field(obj, "owner", false, &mut p).unwrap_or_default();
        let schema = obj.get("schema").cloned().unwrap_or(Value::Null);
        let props = check_schema(&schema, &mut p);
        let prop_problem = |p: &mut Vec<Problem>, at: String, name: &str, role: &str| {
            if !props.contains_key(name) {
                p.push(Problem::new(at, format!("{role} `{name}` is not a property of the schema")));
            }
        };

        let key = name_list(obj, "key", limits::KEY_FIELDS_MAX, &mut p);
        for (i, name) in key.iter().enumerate() {
            prop_problem(&mut p, format!("/key/{i}"), name, "key field");
        }
        let time_field = string_field(obj, "time_field", false, &mut p);
        if let Some(name) = &time_field {
            prop_problem(&mut p, "/time_field".to_string(), name, "time field");
        }
        let lookups = parse_lookups(obj, &props, &mut p);
        let enriched: BTreeSet<&str> = lookups.iter().flat_map(|l| l.add.keys().map(String::as_str)).collect();
        let dimensions = name_list(obj, "dimensions", limits::DIMENSIONS_MAX, &mut p);
        for (i, name) in dimensions.iter().enumerate() {
            if RESERVED_ROW_FIELDS.contains(&name.as_str()) {
                p.push(Problem::new(format!("/dimensions/{i}"), format!("`{name}` is reserved in aggregate rows")));
            } else if !enriched.contains(name.as_str()) {
                prop_problem(&mut p, format!("/dimensions/{i}"), name, "dimension");
            }
        }
        let measures = parse_measures(obj, &props, &mut p);
        let units = parse_units(obj, &measures, &mut p);
        let masking = parse_masking(obj, &mut p);
        let classification = choice(obj, "classification", &CLASSIFICATIONS, "internal", &mut p);
        let priority = choice(obj, "priority", &PRIORITIES, "normal", &mut p);
        let rules = parse_rules(obj, &mut p);
        let reference_key = parse_reference(obj, &mut p);
        if !p.is_empty() {
            return Err(p);
        }
        Ok(DatasetDef {
            id,
            title,
            description,
            owner,
            schema,
            key,
            time_field,
            dimensions,
            measures,
            units,
            masking,
            classification,
            priority,
            rules,
            lookups,
            reference_key,
        })
    }

    /// Metadata published with the schema, so that sources and readers know what the numbers mean.
    pub fn metadata(&self) -> Value {
        let names = |m: &BTreeMap<String, &str>| -> Value {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), Value::String((*v).to_string()))).collect())
        };
        let measures: BTreeMap<String, &str> = self.measures.iter().map(|(k, op)| (k.clone(), op.name())).collect();
        let masking: BTreeMap<String, &str> = self.masking.iter().map(|(k, m)| (k.clone(), m.name())).collect();
        let units: BTreeMap<String, &str> =
            self.measures.keys().filter_map(|k| self.units.get(k).map(|u| (k.clone(), u.as_str()))).collect();
        json!({
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "owner": self.owner,
            "classification": self.classification,
            "priority": self.priority,
            "key": self.key,
            "time_field": self.time_field,
            "dimensions": self.dimensions,
            "measures": names(&measures),
            "units": names(&units),
            "masking": names(&masking),
            "reference_key": self.reference_key,
        })
    }
}

/// Checks that the schema is an object schema that compiles as draft 2020-12 and returns its
/// top-level properties.
fn check_schema(schema: &Value, p: &mut Vec<Problem>) -> Map<String, Value> {
    match schema {
        Value::Null => {
            p.push(Problem::new("/schema", "a definition needs a `schema` (draft 2020-12 JSON Schema)"));
            return Map::new();
        }
        Value::Object(_) => {}
        _ => {
            p.push(Problem::new("/schema", "`schema` must be a JSON Schema object"));
            return Map::new();
        }
    }
    if let Err(e) = jsonschema::draft202012::new(schema) {
        p.push(Problem::new(
            format!("/schema{}", e.instance_path().as_str()),
            format!("schema does not compile as draft 2020-12: {e}"),
        ));
    }
    if schema.get("type").is_some_and(|t| t.as_str() != Some("object")) {
        p.push(Problem::new("/schema/type", "records are JSON objects: the schema `type` must be \"object\""));
    }
    match schema.get("properties") {
        Some(Value::Object(props)) => props.clone(),
        _ => Map::new(),
    }
}

/// An optional (or required) string field of the definition.
fn string_field(obj: &Map<String, Value>, name: &str, required: bool, p: &mut Vec<Problem>) -> Option<String> {
    match obj.get(name) {
        None | Some(Value::Null) if required => {
            p.push(Problem::new(pointer(name), format!("a definition needs `{name}`")));
            None
        }
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() || !required => Some(s.clone()),
        Some(_) => {
            p.push(Problem::new(pointer(name), format!("`{name}` must be a non-empty string")));
            None
        }
    }
}

fn check_name(name: &str, at: &str, p: &mut Vec<Problem>) -> bool {
    if name.is_empty() || name.len() > limits::FIELD_NAME_LEN_BYTES_MAX {
        p.push(Problem::new(at, format!("field names are 1 to {} bytes", limits::FIELD_NAME_LEN_BYTES_MAX)));
        return false;
    }
    true
}

/// A list of distinct field names, at most `max` long.
fn name_list(obj: &Map<String, Value>, name: &str, max: usize, p: &mut Vec<Problem>) -> Vec<String> {
    let at = pointer(name);
    let items = match obj.get(name) {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => {
            p.push(Problem::new(at, format!("`{name}` must be an array of field names")));
            return Vec::new();
        }
    };
    if items.len() > max {
        p.push(Problem::new(&at, format!("`{name}` has {} entries; at most {max} are allowed", items.len())));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_at = format!("{at}/{i}");
        match item.as_str() {
            Some(s) if out.iter().any(|o| o == s) => p.push(Problem::new(item_at, format!("`{s}` is listed twice"))),
            Some(s) if check_name(s, &item_at, p) => out.push(s.to_string()),
            Some(_) => {}
            None => p.push(Problem::new(item_at, "must be a field name (string)")),
        }
    }
    out
}

fn object_field<'a>(obj: &'a Map<String, Value>, name: &str, p: &mut Vec<Problem>) -> Option<&'a Map<String, Value>> {
    match obj.get(name) {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(_) => {
            p.push(Problem::new(pointer(name), format!("`{name}` must be an object")));
            None
        }
    }
}

fn parse_measures(
    obj: &Map<String, Value>,
    props: &Map<String, Value>,
    p: &mut Vec<Problem>,
) -> BTreeMap<String, MeasureOp> {
    let mut out = BTreeMap::new();
    let Some(m) = object_field(obj, "measures", p) else { return out };
    if m.len() > limits::MEASURES_MAX {
        p.push(Problem::new(
            "/measures",
            format!("{} measures; at most {} are allowed", m.len(), limits::MEASURES_MAX),
        ));
    }
    for (name, op) in m {
        let at = pointer_join("/measures", name);
        if !check_name(name, &at, p) {
            continue;
        }
        if RESERVED_ROW_FIELDS.contains(&name.as_str()) {
            p.push(Problem::new(&at, format!("`{name}` is reserved in aggregate rows")));
        }
        match props.get(name) {
            None => p.push(Problem::new(&at, format!("measure `{name}` is not a property of the schema"))),
            Some(prop) if !may_be_number(prop) => {
                p.push(Problem::new(&at, format!("measure `{name}` must be a number or integer in the schema")))
            }
            Some(_) => {}
        }
        match op.as_str().map(str::parse::<MeasureOp>) {
            Some(Ok(op)) => {
                out.insert(name.clone(), op);
            }
            Some(Err(e)) => p.push(Problem::new(&at, e)),
            None => p.push(Problem::new(&at, "a measure op must be a string: sum, min, max or avg")),
        }
    }
    out
}

/// Whether a property schema admits numbers (no `type`, or a type list naming number or integer).
fn may_be_number(prop: &Value) -> bool {
    match prop.get("type") {
        None => true,
        Some(Value::String(t)) => t == "number" || t == "integer",
        Some(Value::Array(ts)) => ts.iter().any(|t| matches!(t.as_str(), Some("number" | "integer"))),
        Some(_) => false,
    }
}

fn parse_units(
    obj: &Map<String, Value>,
    measures: &BTreeMap<String, MeasureOp>,
    p: &mut Vec<Problem>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(m) = object_field(obj, "units", p) else { return out };
    for (name, unit) in m {
        let at = pointer_join("/units", name);
        if !measures.contains_key(name) {
            p.push(Problem::new(&at, format!("`{name}` has a unit but is not a measure")));
        }
        match unit.as_str() {
            Some(u) => {
                out.insert(name.clone(), u.to_string());
            }
            None => p.push(Problem::new(&at, "a unit must be a string")),
        }
    }
    out
}

fn parse_masking(obj: &Map<String, Value>, p: &mut Vec<Problem>) -> BTreeMap<String, MaskMethod> {
    let mut out = BTreeMap::new();
    let Some(m) = object_field(obj, "masking", p) else { return out };
    for (name, method) in m {
        let at = pointer_join("/masking", name);
        if check_name(name, &at, p)
            && let Some(method) = parse_mask_method(method, &at, p)
        {
            out.insert(name.clone(), method);
        }
    }
    out
}

fn parse_mask_method(v: &Value, at: &str, p: &mut Vec<Problem>) -> Option<MaskMethod> {
    let default_partial = MaskMethod::Partial {
        keep_start: limits::PARTIAL_KEEP_START_DEFAULT_CHARS,
        keep_end: limits::PARTIAL_KEEP_END_DEFAULT_CHARS,
    };
    let by_name = |name: &str, at: &str, p: &mut Vec<Problem>| match name {
        "partial" => Some(default_partial.clone()),
        "hash" => Some(MaskMethod::Hash),
        "redact" => Some(MaskMethod::Redact),
        other => {
            p.push(Problem::new(at, format!("unknown masking method `{other}`: expected partial, hash or redact")));
            None
        }
    };
    let obj = match v {
        Value::String(name) => return by_name(name, at, p),
        Value::Object(obj) => obj,
        _ => {
            p.push(Problem::new(at, "a masking method is a name (partial, hash, redact) or an object with `method`"));
            return None;
        }
    };
    for k in obj.keys().filter(|k| !["method", "keep_start", "keep_end"].contains(&k.as_str())) {
        p.push(Problem::new(pointer_join(at, k), format!("unknown masking option `{k}`")));
    }
    let method_at = pointer_join(at, "method");
    let Some(name) = obj.get("method").and_then(Value::as_str) else {
        p.push(Problem::new(method_at, "`method` must be partial, hash or redact"));
        return None;
    };
    let method = by_name(name, &method_at, p)?;
    let keep = |k: &str, default: usize, p: &mut Vec<Problem>| match obj.get(k) {
        None => Some(default),
        Some(n) => match n.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(n) if n <= limits::FIELD_NAME_LEN_BYTES_MAX => Some(n),
            _ => {
                p.push(Problem::new(pointer_join(at, k), format!("`{k}` must be an integer from 0 to 128")));
                None
            }
        },
    };
    match method {
        MaskMethod::Partial { keep_start, keep_end } => {
            let start = keep("keep_start", keep_start, p);
            let end = keep("keep_end", keep_end, p);
            Some(MaskMethod::Partial { keep_start: start?, keep_end: end? })
        }
        other => {
            for k in ["keep_start", "keep_end"].iter().filter(|k| obj.contains_key(**k)) {
                p.push(Problem::new(pointer_join(at, k), format!("`{k}` applies to partial masking only")));
            }
            Some(other)
        }
    }
}

fn choice(obj: &Map<String, Value>, name: &str, allowed: &[&str], default: &str, p: &mut Vec<Problem>) -> String {
    match obj.get(name) {
        None | Some(Value::Null) => default.to_string(),
        Some(Value::String(s)) if allowed.contains(&s.as_str()) => s.clone(),
        Some(_) => {
            p.push(Problem::new(pointer(name), format!("`{name}` must be one of {}", allowed.join(", "))));
            default.to_string()
        }
    }
}

fn array_field<'a>(obj: &'a Map<String, Value>, name: &str, max: usize, p: &mut Vec<Problem>) -> &'a [Value] {
    match obj.get(name) {
        None | Some(Value::Null) => &[],
        Some(Value::Array(items)) => {
            if items.len() > max {
                p.push(Problem::new(pointer(name), format!("{} {name}; at most {max} are allowed", items.len())));
            }
            items
        }
        Some(_) => {
            p.push(Problem::new(pointer(name), format!("`{name}` must be an array")));
            &[]
        }
    }
}

fn parse_rules(obj: &Map<String, Value>, p: &mut Vec<Problem>) -> Vec<Rule> {
    let items = array_field(obj, "rules", limits::RULES_MAX, p);
    items.iter().enumerate().filter_map(|(i, r)| Rule::parse(r, &format!("/rules/{i}"), p)).collect()
}

fn parse_lookups(obj: &Map<String, Value>, props: &Map<String, Value>, p: &mut Vec<Problem>) -> Vec<Lookup> {
    let items = array_field(obj, "lookups", limits::LOOKUPS_MAX, p);
    let mut out = Vec::new();
    let mut added_anywhere: BTreeSet<String> = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("/lookups/{i}");
        let Some(l) = item.as_object() else {
            p.push(Problem::new(at, "a lookup must be an object with `field`, `reference` and `add`"));
            continue;
        };
        for k in l.keys().filter(|k| !["field", "reference", "add"].contains(&k.as_str())) {
            p.push(Problem::new(pointer_join(&at, k), format!("unknown lookup field `{k}`")));
        }
        let text = |k: &str, p: &mut Vec<Problem>| match l.get(k).and_then(Value::as_str) {
            Some(s) if !s.is_empty() => Some(s.to_string()),
            _ => {
                p.push(Problem::new(pointer_join(&at, k), format!("`{k}` must be a non-empty string")));
                None
            }
        };
        let (field, reference) = (text("field", p), text("reference", p));
        let add_at = pointer_join(&at, "add");
        let mut add = BTreeMap::new();
        match l.get("add").and_then(Value::as_object) {
            Some(m) if !m.is_empty() && m.len() <= limits::LOOKUP_ADD_FIELDS_MAX => {
                for (new, column) in m {
                    let new_at = pointer_join(&add_at, new);
                    if !check_name(new, &new_at, p) {
                        continue;
                    }
                    if props.contains_key(new) {
                        // Enrichment overwrites; a schema property of the same name would be silently replaced.
                        p.push(Problem::new(
                            &new_at,
                            format!("`{new}` is a schema property; enriched fields need new names"),
                        ));
                    } else if !added_anywhere.insert(new.clone()) {
                        p.push(Problem::new(&new_at, format!("`{new}` is added by another lookup too")));
                    }
                    match column.as_str() {
                        Some(c) if !c.is_empty() => {
                            add.insert(new.clone(), c.to_string());
                        }
                        _ => p.push(Problem::new(&new_at, "must name a reference column (string)")),
                    }
                }
            }
            _ => p.push(Problem::new(
                add_at,
                format!("`add` must map 1 to {} new field names to reference columns", limits::LOOKUP_ADD_FIELDS_MAX),
            )),
        }
        if let (Some(field), Some(reference)) = (field, reference) {
            out.push(Lookup { field, reference, add });
        }
    }
    out
}

fn parse_reference(obj: &Map<String, Value>, p: &mut Vec<Problem>) -> Option<String> {
    let r = object_field(obj, "reference", p)?;
    for k in r.keys().filter(|k| k.as_str() != "key") {
        p.push(Problem::new(pointer_join("/reference", k), format!("unknown reference field `{k}`")));
    }
    match r.get("key").and_then(Value::as_str) {
        Some(k) if !k.is_empty() => Some(k.to_string()),
        _ => {
            p.push(Problem::new("/reference/key", "a reference table needs `key`: the field it is looked up by"));
            None
        }
    }
}

#[cfg(test)]
#[path = "def_tests.rs"]
mod tests;
