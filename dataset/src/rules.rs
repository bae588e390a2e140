//! Cross-field rules of a definition (A3.4): comparisons between two fields of a record or against a
//! constant, ranges, and membership in a reference dataset. The JSON Schema checks one field at a
//! time; these rules carry what it cannot say ("failed ≤ transactions", "province is a known code").

use std::cmp::Ordering;

use serde_json::Map;
use serde_json::Value;

use crate::canonical::canonical_json;
use crate::error::Problem;
use crate::error::pointer;
use crate::error::pointer_join;
use crate::time::TimePoint;
use crate::validate::References;
use crate::validate::reference_key;

/// A comparison operator of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CompareOp {
    /// The operator as written in definitions.
    pub fn symbol(self) -> &'static str {
        match self {
            CompareOp::Eq => "==",
            CompareOp::Ne => "!=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
        }
    }

    fn from_symbol(s: &str) -> Option<CompareOp> {
        [CompareOp::Eq, CompareOp::Ne, CompareOp::Lt, CompareOp::Le, CompareOp::Gt, CompareOp::Ge]
            .into_iter()
            .find(|op| op.symbol() == s)
    }

    fn holds(self, ord: Ordering) -> bool {
        match self {
            CompareOp::Eq => ord == Ordering::Equal,
            CompareOp::Ne => ord != Ordering::Equal,
            CompareOp::Lt => ord == Ordering::Less,
            CompareOp::Le => ord != Ordering::Greater,
            CompareOp::Gt => ord == Ordering::Greater,
            CompareOp::Ge => ord != Ordering::Less,
        }
    }
}

/// The right-hand side of a comparison.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    /// Another top-level field of the same record (`"other"`).
    Field(String),
    /// A constant (`"value"`).
    Value(Value),
}

/// What a rule checks about its field.
#[derive(Clone, Debug, PartialEq)]
pub enum RuleCheck {
    Compare {
        op: CompareOp,
        rhs: Operand,
    },
    /// Inclusive on both ends; for time points the upper end includes its whole period.
    Between {
        lo: Value,
        hi: Value,
    },
    /// The field's value must be a key of reference dataset `dataset`.
    InReference {
        dataset: String,
    },
}

/// One rule of a definition.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// The top-level record field the rule is about; problems point at it.
    pub field: String,
    pub check: RuleCheck,
    /// Shown instead of the generated message when the rule is broken.
    pub message: Option<String>,
}

const RULE_FIELDS: [&str; 6] = ["field", "op", "other", "value", "in_reference", "message"];

impl Rule {
    /// Parses rule `v` found at definition pointer `at`, adding every problem to `problems`.
    pub(crate) fn parse(v: &Value, at: &str, problems: &mut Vec<Problem>) -> Option<Rule> {
        let Some(obj) = v.as_object() else {
            problems.push(Problem::new(at, "a rule must be an object"));
            return None;
        };
        let before = problems.len();
        for k in obj.keys().filter(|k| !RULE_FIELDS.contains(&k.as_str())) {
            problems.push(Problem::new(pointer_join(at, k), format!("unknown rule field `{k}`")));
        }
        let string_at = |name: &str, problems: &mut Vec<Problem>| match obj.get(name) {
            None => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(_) => {
                problems.push(Problem::new(pointer_join(at, name), format!("`{name}` must be a non-empty string")));
                None
            }
        };
        let field = string_at("field", problems);
        if field.is_none() && !obj.contains_key("field") {
            problems.push(Problem::new(pointer_join(at, "field"), "a rule needs a `field`"));
        }
        let message = string_at("message", problems);
        let check = if obj.contains_key("in_reference") {
            for extra in ["op", "other", "value"].iter().filter(|k| obj.contains_key(**k)) {
                problems.push(Problem::new(pointer_join(at, extra), "`in_reference` rules take no op, other or value"));
            }
            string_at("in_reference", problems).map(|dataset| RuleCheck::InReference { dataset })
        } else {
            parse_comparison(obj, at, problems)
        };
        if problems.len() > before {
            return None;
        }
        Some(Rule { field: field?, check: check?, message })
    }

    /// The problem this rule finds in `record`, if any. A rule whose field (or other field) is
    /// absent or null is skipped: whether a field must be there is the schema's business.
    pub(crate) fn check(
        &self,
        index: usize,
        record: &Map<String, Value>,
        time_field: Option<&str>,
        refs: &dyn References,
    ) -> Option<Problem> {
        let value = record.get(&self.field).filter(|v| !v.is_null())?;
        let as_time = time_field == Some(self.field.as_str());
        let here = pointer(&self.field);
        let broken = |generated: String| Problem::at(index, &here, self.message.clone().unwrap_or(generated));
        match &self.check {
            RuleCheck::Compare { op, rhs } => {
                let (other, shown) = match rhs {
                    Operand::Field(name) => (record.get(name).filter(|v| !v.is_null())?, format!("`{name}`")),
                    Operand::Value(c) => (c, canonical_json(c)),
                };
                let as_time = as_time || matches!(rhs, Operand::Field(name) if time_field == Some(name.as_str()));
                match compare(value, other, as_time) {
                    Err(why) => {
                        Some(Problem::at(index, &here, format!("cannot compare `{}` with {shown}: {why}", self.field)))
                    }
                    Ok(ord) if op.holds(ord) => None,
                    Ok(_) => Some(broken(format!("`{}` must be {} {shown}", self.field, op.symbol()))),
                }
            }
            RuleCheck::Between { lo, hi } => match between(value, lo, hi, as_time) {
                Err(why) => {
                    Some(Problem::at(index, &here, format!("cannot compare `{}` with its range: {why}", self.field)))
                }
                Ok(true) => None,
                Ok(false) => Some(broken(format!(
                    "`{}` must be between {} and {}",
                    self.field,
                    canonical_json(lo),
                    canonical_json(hi)
                ))),
            },
            RuleCheck::InReference { dataset } => {
                let Some(key) = reference_key(value) else {
                    return Some(Problem::at(
                        index,
                        &here,
                        format!("`{}` must be a string or a number to be looked up", self.field),
                    ));
                };
                match refs.get(dataset, &key) {
                    Some(_) => None,
                    None => Some(broken(format!("`{}` is not a key of reference dataset `{dataset}`", self.field))),
                }
            }
        }
    }
}

fn parse_comparison(obj: &Map<String, Value>, at: &str, problems: &mut Vec<Problem>) -> Option<RuleCheck> {
    let op_at = pointer_join(at, "op");
    let Some(op) = obj.get("op") else {
        problems.push(Problem::new(op_at, "a rule needs an `op` (==, !=, <, <=, >, >=, between) or `in_reference`"));
        return None;
    };
    let Some(op) = op.as_str() else {
        problems.push(Problem::new(op_at, "`op` must be a string"));
        return None;
    };
    if op == "between" {
        if obj.contains_key("other") {
            problems.push(Problem::new(pointer_join(at, "other"), "`between` takes `value: [lo, hi]`, not `other`"));
        }
        return match obj.get("value").and_then(Value::as_array).map(Vec::as_slice) {
            Some([lo, hi]) if is_scalar(lo) && is_scalar(hi) => {
                Some(RuleCheck::Between { lo: lo.clone(), hi: hi.clone() })
            }
            _ => {
                problems.push(Problem::new(
                    pointer_join(at, "value"),
                    "`between` needs `value: [lo, hi]` of numbers or strings",
                ));
                None
            }
        };
    }
    let Some(op) = CompareOp::from_symbol(op) else {
        problems.push(Problem::new(op_at, format!("unknown op `{op}`: expected ==, !=, <, <=, >, >=, between")));
        return None;
    };
    let rhs = match (obj.get("other"), obj.get("value")) {
        (Some(Value::String(other)), None) if !other.is_empty() => Operand::Field(other.clone()),
        (None, Some(c)) if is_scalar(c) || c.is_boolean() => Operand::Value(c.clone()),
        (Some(_), Some(_)) => {
            problems.push(Problem::new(at, "a comparison takes either `other` or `value`, not both"));
            return None;
        }
        (Some(_), None) => {
            problems.push(Problem::new(pointer_join(at, "other"), "`other` must be a field name"));
            return None;
        }
        (None, Some(_)) => {
            problems.push(Problem::new(pointer_join(at, "value"), "`value` must be a number, a string or a boolean"));
            return None;
        }
        (None, None) => {
            problems.push(Problem::new(at, "a comparison needs `other` (a field) or `value` (a constant)"));
            return None;
        }
    };
    Some(RuleCheck::Compare { op, rhs })
}

fn is_scalar(v: &Value) -> bool {
    v.is_number() || v.is_string()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Orders two values: numbers numerically; time points (always for the time field, otherwise when
/// both sides parse as one) by start instant; strings and booleans as themselves.
fn compare(a: &Value, b: &Value, as_time: bool) -> Result<Ordering, String> {
    if let (Value::Number(x), Value::Number(y)) = (a, b) {
        return compare_numbers(x, y);
    }
    if let Some(ord) = compare_times(a, b, as_time)? {
        return Ok(ord);
    }
    match (a, b) {
        (Value::String(x), Value::String(y)) => Ok(x.as_bytes().cmp(y.as_bytes())),
        (Value::Bool(x), Value::Bool(y)) => Ok(x.cmp(y)),
        _ => Err(format!("a {} and a {} have no order", kind(a), kind(b))),
    }
}

fn compare_times(a: &Value, b: &Value, as_time: bool) -> Result<Option<Ordering>, String> {
    match (TimePoint::from_value(a), TimePoint::from_value(b)) {
        (Ok(x), Ok(y)) => Ok(x.range_minutes().zip(y.range_minutes()).map(|((xs, _), (ys, _))| xs.cmp(&ys))),
        (Err(e), _) | (_, Err(e)) if as_time => Err(e),
        _ => Ok(None),
    }
}

fn compare_numbers(x: &serde_json::Number, y: &serde_json::Number) -> Result<Ordering, String> {
    // Integers compare exactly; only mixed or fractional pairs go through f64.
    if let (Some(a), Some(b)) = (x.as_i64(), y.as_i64()) {
        return Ok(a.cmp(&b));
    }
    if let (Some(a), Some(b)) = (x.as_u64(), y.as_u64()) {
        return Ok(a.cmp(&b));
    }
    match (x.as_f64(), y.as_f64()) {
        (Some(a), Some(b)) => a.partial_cmp(&b).ok_or_else(|| "numbers without an order".to_string()),
        _ => Err("numbers out of range".to_string()),
    }
}

fn between(v: &Value, lo: &Value, hi: &Value, as_time: bool) -> Result<bool, String> {
    // A time point is inside [lo, hi] when it starts at or after lo's start and before hi's end, so
    // that "2035-12-15" lies in ["2020-01", "2035-12"].
    if (!v.is_number() || as_time)
        && let (Ok(t), Ok(l), Ok(h)) = (TimePoint::from_value(v), TimePoint::from_value(lo), TimePoint::from_value(hi))
        && let (Some((ts, _)), Some((ls, _)), Some((_, he))) = (t.range_minutes(), l.range_minutes(), h.range_minutes())
    {
        return Ok(ls <= ts && ts < he);
    }
    Ok(compare(v, lo, as_time)? != Ordering::Less && compare(v, hi, as_time)? != Ordering::Greater)
}
