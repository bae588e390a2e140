//! Version compatibility of definitions (A3.2, F3): a new version of a dataset is accepted only
//! when every record valid under the previous version stays valid and stored data keeps its
//! meaning. The checker is conservative: whatever it cannot prove safe, it refuses with "cannot
//! prove compatible", and the admin creates a new dataset instead.

use serde_json::Map;
use serde_json::Value;

use crate::def::CLASSIFICATIONS;
use crate::def::DatasetDef;
use crate::def::MaskMethod;
use crate::error::Problem;
use crate::error::pointer_join;
use crate::limits;

/// Keywords that only annotate a schema and never change what it accepts.
const ANNOTATIONS: [&str; 10] = [
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
];
/// Lower bounds: the new value may only decrease or vanish.
const LOWER_BOUNDS: [&str; 5] = ["minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"];
/// Upper bounds: the new value may only increase or vanish.
const UPPER_BOUNDS: [&str; 5] = ["maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"];
/// Keywords whose new value must equal the old one, or vanish.
const SAME_OR_GONE: [&str; 4] = ["pattern", "const", "multipleOf", "format"];

/// Is `next` a backward-compatible successor of `prev`? Err names the place and the reason.
pub fn check_compatible(prev: &DatasetDef, next: &DatasetDef) -> Result<(), Problem> {
    let same = |field: &str, equal: bool| {
        if equal {
            Ok(())
        } else {
            Err(Problem::new(
                format!("/{field}"),
                format!(
                    "`{field}` cannot change between versions: stored data is keyed and aggregated by it; define a new dataset"
                ),
            ))
        }
    };
    same("key", prev.key == next.key)?;
    same("time_field", prev.time_field == next.time_field)?;
    same("dimensions", prev.dimensions == next.dimensions)?;
    same("measures", prev.measures == next.measures)?;
    same("reference", prev.reference_key == next.reference_key)?;
    check_masking(prev, next)?;
    let rank = |c: &str| CLASSIFICATIONS.iter().position(|x| *x == c);
    if rank(&next.classification) < rank(&prev.classification) {
        return Err(Problem::new(
            "/classification",
            format!("classification cannot be lowered from {} to {}", prev.classification, next.classification),
        ));
    }
    for (i, rule) in next.rules.iter().enumerate() {
        if !prev.rules.contains(rule) {
            return Err(Problem::new(
                format!("/rules/{i}"),
                "a new rule could reject records valid under the previous version",
            ));
        }
    }
    for (i, lookup) in prev.lookups.iter().enumerate() {
        if !next.lookups.contains(lookup) {
            return Err(Problem::new(
                format!("/lookups/{i}"),
                "a lookup cannot change or go away: enriched fields of stored records would change meaning",
            ));
        }
    }
    check_schema(&prev.schema, &next.schema, "/schema", 0)
}

fn check_masking(prev: &DatasetDef, next: &DatasetDef) -> Result<(), Problem> {
    for (field, old) in &prev.masking {
        let at = pointer_join("/masking", field);
        let Some(new) = next.masking.get(field) else {
            return Err(Problem::new(at, format!("masking of `{field}` cannot be removed")));
        };
        let weaker = match (old, new) {
            (MaskMethod::Redact, MaskMethod::Redact) => false,
            (MaskMethod::Redact, _) => true,
            (MaskMethod::Hash, MaskMethod::Partial { .. }) => true,
            (MaskMethod::Hash, _) => false,
            (
                MaskMethod::Partial { keep_start: s0, keep_end: e0 },
                MaskMethod::Partial { keep_start: s1, keep_end: e1 },
            ) => s1 > s0 || e1 > e0,
            (MaskMethod::Partial { .. }, _) => false,
        };
        if weaker {
            return Err(Problem::new(
                at,
                format!("masking of `{field}` cannot be weakened ({} → {})", old.name(), new.name()),
            ));
        }
    }
    Ok(())
}

fn refuse(at: &str, why: impl Into<String>) -> Result<(), Problem> {
    Err(Problem::new(at, why))
}

/// Does every instance valid under `prev` stay valid under `next`? `at` is the pointer of `prev`
/// and `next` within the definition.
fn check_schema(prev: &Value, next: &Value, at: &str, depth: usize) -> Result<(), Problem> {
    if prev == next {
        return Ok(());
    }
    if depth > limits::SCHEMA_DEPTH_MAX {
        return refuse(at, "cannot prove compatible: schema nested too deeply");
    }
    let (p, n) = match (prev, next) {
        (_, Value::Bool(true)) | (Value::Bool(false), _) => return Ok(()),
        (Value::Object(p), Value::Object(n)) => (p, n),
        // `true` accepts everything; an object schema after it may not.
        _ => return refuse(at, "cannot prove compatible"),
    };
    check_type(p, n, at)?;
    check_enum(p, n, at)?;
    check_bounds(p, n, at)?;
    check_required(p, n, at)?;
    check_properties(p, n, at, depth)?;
    for kw in ["items", "additionalProperties"] {
        match (p.get(kw), n.get(kw)) {
            (_, None) | (_, Some(Value::Bool(true))) => {}
            (Some(Value::Bool(false)), _) => {}
            (None, Some(_)) => return refuse(&pointer_join(at, kw), format!("new `{kw}` could reject valid data")),
            (Some(a), Some(b)) => check_schema(a, b, &pointer_join(at, kw), depth + 1)?,
        }
    }
    let handled = |k: &str| {
        ANNOTATIONS.contains(&k)
            || LOWER_BOUNDS.contains(&k)
            || UPPER_BOUNDS.contains(&k)
            || SAME_OR_GONE.contains(&k)
            || ["type", "enum", "required", "properties", "items", "additionalProperties", "uniqueItems"].contains(&k)
    };
    for kw in SAME_OR_GONE {
        if let (Some(a), Some(b)) = (p.get(kw), n.get(kw))
            && a != b
        {
            return refuse(&pointer_join(at, kw), format!("cannot prove compatible: `{kw}` changed"));
        }
        if p.get(kw).is_none() && n.get(kw).is_some() {
            return refuse(&pointer_join(at, kw), format!("cannot prove compatible: new `{kw}`"));
        }
    }
    if n.get("uniqueItems") == Some(&Value::Bool(true)) && p.get("uniqueItems") != Some(&Value::Bool(true)) {
        return refuse(&pointer_join(at, "uniqueItems"), "new `uniqueItems` could reject valid data");
    }
    for k in p.keys().chain(n.keys()) {
        if !handled(k) && p.get(k) != n.get(k) {
            return refuse(&pointer_join(at, k), format!("cannot prove compatible: `{k}` differs"));
        }
    }
    Ok(())
}

/// The types a schema admits; `None` means any type.
fn types(s: &Map<String, Value>) -> Result<Option<Vec<&str>>, ()> {
    match s.get("type") {
        None => Ok(None),
        Some(Value::String(t)) => Ok(Some(vec![t.as_str()])),
        Some(Value::Array(ts)) => ts.iter().map(|t| t.as_str().ok_or(())).collect::<Result<_, _>>().map(Some),
        Some(_) => Err(()),
    }
}

fn check_type(p: &Map<String, Value>, n: &Map<String, Value>, at: &str) -> Result<(), Problem> {
    let here = pointer_join(at, "type");
    let (Ok(old), Ok(new)) = (types(p), types(n)) else {
        return refuse(&here, "cannot prove compatible: `type` is not a name or a list of names");
    };
    let Some(new) = new else { return Ok(()) };
    let Some(old) = old else {
        return refuse(&here, format!("type narrowed from any to {}", new.join(", ")));
    };
    // Every integer is a number, so integer → number widens.
    let covered = |t: &str| new.contains(&t) || (t == "integer" && new.contains(&"number"));
    match old.iter().find(|t| !covered(t)) {
        None => Ok(()),
        Some(t) => refuse(&here, format!("type narrowed: {t} values of the previous version would be rejected")),
    }
}

fn check_enum(p: &Map<String, Value>, n: &Map<String, Value>, at: &str) -> Result<(), Problem> {
    let here = pointer_join(at, "enum");
    match (p.get("enum"), n.get("enum")) {
        (_, None) => Ok(()),
        (None, Some(_)) => refuse(&here, "new `enum` could reject valid data"),
        (Some(Value::Array(old)), Some(Value::Array(new))) => match old.iter().find(|v| !new.contains(v)) {
            None => Ok(()),
            Some(v) => refuse(&here, format!("enum value {v} was removed")),
        },
        _ => refuse(&here, "cannot prove compatible: `enum` is not an array"),
    }
}

fn check_bounds(p: &Map<String, Value>, n: &Map<String, Value>, at: &str) -> Result<(), Problem> {
    for (keywords, lower) in [(LOWER_BOUNDS, true), (UPPER_BOUNDS, false)] {
        for kw in keywords {
            let here = pointer_join(at, kw);
            match (p.get(kw).map(Value::as_f64), n.get(kw).map(Value::as_f64)) {
                (_, None) => {}
                (None, Some(_)) => return refuse(&here, format!("new `{kw}` could reject valid data")),
                (Some(Some(old)), Some(Some(new))) => {
                    if (lower && new > old) || (!lower && new < old) {
                        return refuse(&here, format!("`{kw}` tightened from {old} to {new}"));
                    }
                }
                _ => return refuse(&here, format!("cannot prove compatible: `{kw}` is not a number")),
            }
        }
    }
    Ok(())
}

fn check_required(p: &Map<String, Value>, n: &Map<String, Value>, at: &str) -> Result<(), Problem> {
    let names = |s: &Map<String, Value>| -> Vec<Value> {
        s.get("required").and_then(Value::as_array).cloned().unwrap_or_default()
    };
    let old = names(p);
    for (i, name) in names(n).iter().enumerate() {
        if !old.contains(name) {
            let shown = name.as_str().unwrap_or("?");
            return refuse(
                &format!("{}/{i}", pointer_join(at, "required")),
                format!("`{shown}` is newly required: records without it were valid"),
            );
        }
    }
    Ok(())
}

fn check_properties(p: &Map<String, Value>, n: &Map<String, Value>, at: &str, depth: usize) -> Result<(), Problem> {
    let empty = Map::new();
    let (old, new) = (properties_of(p, &empty, at)?, properties_of(n, &empty, at)?);
    let base = pointer_join(at, "properties");
    for (name, old_schema) in old {
        let here = pointer_join(&base, name);
        match new.get(name) {
            Some(new_schema) => check_schema(old_schema, new_schema, &here, depth + 1)?,
            // A removed property falls to additionalProperties: safe only when that accepts anything.
            None => match n.get("additionalProperties") {
                None | Some(Value::Bool(true)) => {}
                Some(_) => {
                    return refuse(
                        &here,
                        format!("property `{name}` removed while additionalProperties is restricted"),
                    );
                }
            },
        }
    }
    Ok(())
}

fn properties_of<'a>(
    s: &'a Map<String, Value>,
    empty: &'a Map<String, Value>,
    at: &str,
) -> Result<&'a Map<String, Value>, Problem> {
    match s.get("properties") {
        None => Ok(empty),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => {
            Err(Problem::new(pointer_join(at, "properties"), "cannot prove compatible: `properties` is not an object"))
        }
    }
}

#[cfg(test)]
#[path = "compat_tests.rs"]
mod tests;
