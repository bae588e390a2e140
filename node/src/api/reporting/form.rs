//! A report form generated from a dataset's definition and its JSON Schema (issue 9): one input
//! per top-level property of the record schema.
//!
//! What is read (documented in docs/reporting.md):
//! - label: the property's `title`, else its name; help text: its `description`;
//! - unit: the property's `x-unit` annotation, else the definition's `units` entry;
//! - required: the schema's `required` list (the agency and period fields are filled in);
//! - input type: `type` (`integer`, `number` → number inputs with `step` 1 or any; `boolean` → a
//!   yes/no select; `string` with `format` `date`, `date-time`, `email` → date, datetime-local,
//!   email; `object`/`array` → a JSON text area), `enum` → a select;
//! - attributes: `minimum`/`maximum` (and the exclusive forms) → min/max, `minLength`/`maxLength`,
//!   `pattern`, `multipleOf` → step;
//! - order: the schema's `x-order` list when it has one, else the agency and period fields, the
//!   natural key, dimensions, measures, other required fields, then the rest by name.
//!
//! The values a user types are texts; `record` turns them into the record the API would receive
//! (numbers parsed, empty optional fields left out, the agency and period fields set from the
//! obligation). A text that does not parse is kept as text, so the dataset's own validator reports
//! it with the same message as for an API client.

use std::collections::BTreeMap;

use dtm_dataset::DatasetDef;
use serde::Serialize;
use serde_json::Map;
use serde_json::Value;

/// Properties a generated form shows at most (the rest are left out and said so).
pub const FORM_FIELDS_MAX: usize = 200;
/// Longest text one form value may have.
pub const VALUE_BYTES_MAX: usize = 16 * 1024;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Field {
    pub name: String,
    pub label: String,
    pub description: String,
    pub unit: String,
    /// HTML input type: text, number, date, datetime-local, email, select, textarea.
    pub input: &'static str,
    /// The JSON type the value is converted to: string, integer, number, boolean, json.
    pub json_type: &'static str,
    pub required: bool,
    /// The choices of a select (the enum's values as text).
    pub options: Vec<String>,
    pub min: Option<String>,
    pub max: Option<String>,
    pub step: Option<String>,
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
    pub pattern: Option<String>,
    /// Set for the agency and period fields: the value is filled in and cannot be changed.
    pub fixed: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Form {
    pub dataset: String,
    pub title: String,
    pub description: String,
    pub schema_version: u32,
    pub fields: Vec<Field>,
    /// Properties left out because the form reached `FORM_FIELDS_MAX`.
    pub omitted: usize,
}

/// The fields filled from the obligation: (field name, value).
pub struct Fixed<'a> {
    pub agency_field: &'a str,
    pub agency: &'a str,
    pub period_field: &'a str,
    pub period: &'a str,
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn first_type(schema: &Value) -> Option<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => Some(t.as_str()),
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null"),
        _ => None,
    }
}

fn number_text(v: Option<&Value>) -> Option<String> {
    v.filter(|v| v.is_number()).map(Value::to_string)
}

fn field(def: &DatasetDef, name: &str, p: &Value, required: bool, fixed: &Fixed<'_>) -> Field {
    let enum_values: Vec<&Value> =
        p.get("enum").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default();
    let ty = first_type(p).or_else(|| match enum_values.first() {
        Some(Value::String(_)) => Some("string"),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some("integer"),
        Some(Value::Number(_)) => Some("number"),
        Some(Value::Bool(_)) => Some("boolean"),
        _ => None,
    });
    let format = p.get("format").and_then(Value::as_str).unwrap_or("");
    let (input, json_type) = match (ty, format) {
        _ if !enum_values.is_empty() => ("select", ty.map_or("json", json_type_name)),
        (Some("integer"), _) => ("number", "integer"),
        (Some("number"), _) => ("number", "number"),
        (Some("boolean"), _) => ("select", "boolean"),
        (Some("object") | Some("array"), _) => ("textarea", "json"),
        (Some("string"), "date") => ("date", "string"),
        (Some("string"), "date-time") => ("datetime-local", "string"),
        (Some("string"), "email") => ("email", "string"),
        (Some("string"), _) => ("text", "string"),
        _ => ("text", "json"),
    };
    let options = if !enum_values.is_empty() {
        enum_values.iter().map(|v| text_of(v)).collect()
    } else if json_type == "boolean" {
        vec!["true".into(), "false".into()]
    } else {
        Vec::new()
    };
    let min = number_text(p.get("minimum")).or_else(|| number_text(p.get("exclusiveMinimum")));
    let max = number_text(p.get("maximum")).or_else(|| number_text(p.get("exclusiveMaximum")));
    let step = match json_type {
        "integer" => Some(number_text(p.get("multipleOf")).unwrap_or_else(|| "1".into())),
        "number" => Some(number_text(p.get("multipleOf")).unwrap_or_else(|| "any".into())),
        _ => None,
    };
    let fixed_value = if !fixed.agency_field.is_empty() && name == fixed.agency_field {
        Some(fixed.agency.to_string())
    } else if !fixed.period_field.is_empty() && name == fixed.period_field {
        Some(fixed.period.to_string())
    } else {
        None
    };
    let str_of = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let title = str_of("title");
    Field {
        name: name.to_string(),
        label: if title.is_empty() { name.to_string() } else { title },
        description: str_of("description"),
        unit: p
            .get("x-unit")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| def.units.get(name).cloned())
            .unwrap_or_default(),
        input,
        json_type,
        required,
        options,
        min,
        max,
        step,
        min_length: p.get("minLength").and_then(Value::as_u64),
        max_length: p.get("maxLength").and_then(Value::as_u64),
        pattern: p.get("pattern").and_then(Value::as_str).map(str::to_string),
        fixed: fixed_value,
    }
}

fn json_type_name(t: &str) -> &'static str {
    match t {
        "string" => "string",
        "integer" => "integer",
        "number" => "number",
        "boolean" => "boolean",
        _ => "json",
    }
}

/// The form of a dataset version for one agency and period.
pub fn build(def: &DatasetDef, schema_version: u32, fixed: &Fixed<'_>) -> Form {
    let empty = Map::new();
    let props = def.schema.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    let required: Vec<&str> = def
        .schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    // Rank of each property: its place in `x-order`, else by the role it plays in the definition.
    let explicit: Vec<&str> = def
        .schema
        .get("x-order")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let rank = |name: &str| -> (usize, usize) {
        if let Some(i) = explicit.iter().position(|n| *n == name) {
            return (0, i);
        }
        let group = if name == fixed.agency_field || name == fixed.period_field {
            1
        } else if def.key.iter().any(|k| k == name) {
            2
        } else if def.dimensions.iter().any(|k| k == name) {
            3
        } else if def.measures.contains_key(name) {
            4
        } else if required.contains(&name) {
            5
        } else {
            6
        };
        (group, 0)
    };
    let mut names: Vec<&String> = props.keys().collect();
    names.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    let omitted = names.len().saturating_sub(FORM_FIELDS_MAX);
    let fields = names
        .into_iter()
        .take(FORM_FIELDS_MAX)
        .map(|n| field(def, n, &props[n.as_str()], required.contains(&n.as_str()), fixed))
        .collect();
    Form {
        dataset: def.id.clone(),
        title: if def.title.is_empty() { def.id.clone() } else { def.title.clone() },
        description: def.description.clone(),
        schema_version,
        fields,
        omitted,
    }
}

/// A decimal written with a comma (Vietnamese style, `12,5`) as the JSON number text `12.5`.
fn decimal_text(s: &str) -> String {
    if !s.contains('.') && s.matches(',').count() == 1 { s.replace(',', ".") } else { s.to_string() }
}

/// The record the form's values make: typed values for the form's fields, the fixed fields set,
/// empty optional fields left out. Values for names the form does not have are ignored.
pub fn record(form: &Form, values: &BTreeMap<String, String>) -> Map<String, Value> {
    let mut out = Map::new();
    for f in &form.fields {
        if let Some(v) = &f.fixed {
            out.insert(f.name.clone(), Value::String(v.clone()));
            continue;
        }
        let Some(text) = values.get(&f.name) else { continue };
        let t = text.trim();
        if t.is_empty() {
            continue;
        }
        let value = match f.json_type {
            "integer" => t.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(t.into())),
            "number" => serde_json::from_str::<serde_json::Number>(&decimal_text(t))
                .map(Value::Number)
                .unwrap_or_else(|_| Value::String(t.into())),
            "boolean" => match t {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => Value::String(t.into()),
            },
            "json" => serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.into())),
            _ if f.input == "datetime-local" => Value::String(local_date_time(t)),
            _ => Value::String(text.clone()),
        };
        out.insert(f.name.clone(), value);
    }
    out
}

/// A `datetime-local` value (`2026-03-01T10:30`, no offset) read as Vietnam time, in RFC 3339.
fn local_date_time(t: &str) -> String {
    let has_offset = t.ends_with('Z') || t.get(19..).is_some_and(|rest| rest.contains('+') || rest.contains('-'));
    match (t.len(), has_offset) {
        (16, false) => format!("{t}:00+07:00"),
        (19, false) => format!("{t}+07:00"),
        _ => t.to_string(),
    }
}

/// The form field a validator problem is about (`/transactions` → `transactions`), if any.
pub fn field_of_pointer<'a>(form: &'a Form, pointer: &str) -> Option<&'a str> {
    let name = pointer_name(pointer)?;
    form.fields.iter().find(|f| f.name == name).map(|f| f.name.as_str())
}

/// The property a JSON pointer starts with (`/a~1b/0` → `a/b`), unescaped (RFC 6901).
pub fn pointer_name(pointer: &str) -> Option<String> {
    let first = pointer.strip_prefix('/')?.split('/').next()?;
    Some(first.replace("~1", "/").replace("~0", "~"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def() -> DatasetDef {
        DatasetDef::parse(&json!({
            "id": "dvc", "title": "Online public services", "description": "Monthly",
            "schema": {"type": "object", "required": ["agency", "period", "received", "rate"],
                "properties": {
                    "agency": {"type": "string"}, "period": {"type": "string"},
                    "received": {"type": "integer", "minimum": 0, "title": "Applications received", "x-unit": "applications"},
                    "rate": {"type": "number", "minimum": 0, "maximum": 100, "description": "On-time rate"},
                    "channel": {"enum": ["web", "kiosk"]}, "audited": {"type": "boolean"},
                    "day": {"type": "string", "format": "date"}, "note": {"type": "string", "maxLength": 500}
                }},
            "key": ["agency", "period"], "time_field": "period", "dimensions": ["agency", "channel"],
            "measures": {"received": "sum", "rate": "avg"}, "units": {"rate": "%"}
        }))
        .expect("valid definition")
    }

    const FIXED: Fixed<'static> =
        Fixed { agency_field: "agency", agency: "ubnd-dn", period_field: "period", period: "2026-03" };

    #[test]
    fn the_form_follows_the_schema_c2b() {
        let form = build(&def(), 3, &FIXED);
        let names: Vec<&str> = form.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["agency", "period", "channel", "rate", "received", "audited", "day", "note"]);
        let by = |n: &str| form.fields.iter().find(|f| f.name == n).expect("field");
        assert_eq!(by("agency").fixed.as_deref(), Some("ubnd-dn"));
        let received = by("received");
        assert_eq!(
            (received.label.as_str(), received.unit.as_str(), received.input),
            ("Applications received", "applications", "number")
        );
        assert_eq!(
            (received.min.as_deref(), received.step.as_deref(), received.required),
            (Some("0"), Some("1"), true)
        );
        let rate = by("rate");
        assert_eq!(
            (rate.unit.as_str(), rate.description.as_str(), rate.max.as_deref()),
            ("%", "On-time rate", Some("100"))
        );
        assert_eq!(rate.step.as_deref(), Some("any"));
        assert_eq!(
            (by("channel").input, by("channel").options.clone()),
            ("select", vec!["web".to_string(), "kiosk".into()])
        );
        assert_eq!((by("audited").input, by("audited").json_type), ("select", "boolean"));
        assert_eq!(by("day").input, "date");
        assert_eq!(by("note").max_length, Some(500));
        assert!(!by("note").required);
    }

    #[test]
    fn typed_values_make_the_record_and_bad_text_stays_text_for_the_validator() {
        let form = build(&def(), 1, &FIXED);
        let values: BTreeMap<String, String> = [
            ("agency", "someone-else"),
            ("received", "120"),
            ("rate", "97,5"),
            ("audited", "true"),
            ("note", ""),
            ("unknown", "x"),
            ("channel", "web"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let r = Value::Object(record(&form, &values));
        assert_eq!(
            r,
            json!({"agency": "ubnd-dn", "period": "2026-03", "received": 120, "rate": 97.5, "audited": true, "channel": "web"})
        );
        let bad: BTreeMap<String, String> = [("received".to_string(), "many".to_string())].into_iter().collect();
        assert_eq!(record(&form, &bad)["received"], json!("many"));
        assert_eq!(field_of_pointer(&form, "/received"), Some("received"));
        assert_eq!(field_of_pointer(&form, ""), None);
        assert_eq!(local_date_time("2026-03-01T10:30"), "2026-03-01T10:30:00+07:00");
    }
}
