//! Tests of definition parsing and metadata (A3.2/F3 schemas).

use serde_json::json;

use super::*;
use crate::test_support::etx_monthly;
use crate::test_support::etx_monthly_json;

fn fields(problems: &[Problem]) -> Vec<&str> {
    problems.iter().map(|p| p.field.as_str()).collect()
}

/// A3.2: the example definition parses with its defaults and structure.
#[test]
fn a3_2_example_definition_parses() {
    let def = etx_monthly();
    assert_eq!(def.id, "etx_monthly");
    assert_eq!(def.key, ["agency", "period", "channel"]);
    assert_eq!(def.time_field.as_deref(), Some("period"));
    assert_eq!(def.measures.get("failed"), Some(&MeasureOp::Sum));
    assert_eq!(def.masking.get("citizen_id"), Some(&MaskMethod::Partial { keep_start: 3, keep_end: 3 }));
    assert_eq!(def.masking.get("email"), Some(&MaskMethod::Hash));
    assert_eq!(def.rules.len(), 3);
    assert_eq!(def.lookups[0].add.get("province_name").map(String::as_str), Some("name"));
    assert_eq!(def.reference_key.as_deref(), Some("code"));

    let minimal = json!({"id": "m", "schema": {"type": "object", "properties": {"x": {"type": "number"}}}});
    let def = DatasetDef::parse(&minimal).unwrap();
    assert_eq!((def.classification.as_str(), def.priority.as_str()), ("internal", "normal"));
    assert_eq!(def.title, "m");
    assert!(def.key.is_empty() && def.time_field.is_none() && def.rules.is_empty());
}

/// A3.2: every problem is reported at once, each with a pointer into the definition.
#[test]
fn a3_2_all_definition_problems_are_reported_with_pointers() {
    let mut v = etx_monthly_json();
    v["key"] = json!(["agency", "nope"]);
    v["time_field"] = json!("when");
    v["dimensions"] = json!(["channel", "region", "ghost"]);
    v["measures"] = json!({"transactions": "median", "failed": "sum", "agency": "sum"});
    v["masking"] = json!({"citizen_id": "scramble", "email": {"method": "partial", "keep_start": -1}});
    v["classification"] = json!("top-secret");
    v["priority"] = json!("asap");
    v["rules"][0]["op"] = json!("=~");
    v["rules"][1] = json!({"field": "period", "op": "between", "value": ["2020-01"]});
    v["colour"] = json!("blue");
    let problems = DatasetDef::parse(&v).unwrap_err();
    let got = fields(&problems);
    for want in [
        "/key/1",
        "/time_field",
        "/dimensions/2",
        "/measures/transactions",
        "/measures/agency",
        "/masking/citizen_id",
        "/masking/email/keep_start",
        "/classification",
        "/priority",
        "/rules/0/op",
        "/rules/1/value",
        "/colour",
    ] {
        assert!(got.contains(&want), "missing problem at {want}; got {got:?}");
    }
    // `region` is an enriched field from the lookup, so it is a valid dimension.
    assert!(!got.contains(&"/dimensions/1"), "{got:?}");
    assert!(problems.iter().all(|p| p.record.is_none()));
    let median = problems.iter().find(|p| p.field == "/measures/transactions").unwrap();
    assert!(median.message.contains("median"), "{}", median.message);
}

/// A3.2: the schema must compile as draft 2020-12, and limits are enforced.
#[test]
fn a3_2_bad_schema_and_limits() {
    let mut v = etx_monthly_json();
    v["schema"]["properties"]["transactions"]["minimum"] = json!("zero");
    let problems = DatasetDef::parse(&v).unwrap_err();
    assert!(problems.iter().any(|p| p.field.starts_with("/schema")), "{problems:?}");

    let mut v = etx_monthly_json();
    let names: Vec<String> = (0..9).map(|i| format!("d{i}")).collect();
    for n in &names {
        v["schema"]["properties"][n] = json!({"type": "string"});
    }
    v["dimensions"] = json!(names);
    v["rules"] = json!((0..65).map(|_| json!({"field": "failed", "op": ">=", "value": 0})).collect::<Vec<_>>());
    let problems = DatasetDef::parse(&v).unwrap_err();
    let got = fields(&problems);
    assert!(got.contains(&"/dimensions") && got.contains(&"/rules"), "{got:?}");

    assert_eq!(fields(&DatasetDef::parse(&json!([1])).unwrap_err()), [""]);
    let no_schema = DatasetDef::parse(&json!({"id": "x"})).unwrap_err();
    assert_eq!(fields(&no_schema), ["/schema"]);
}

#[test]
fn a3_2_mask_method_objects_and_reserved_names() {
    let mut v = etx_monthly_json();
    v["masking"]["citizen_id"] = json!({"method": "partial", "keep_start": 0, "keep_end": 4});
    v["masking"]["email"] = json!({"method": "hash"});
    let def = DatasetDef::parse(&v).unwrap();
    assert_eq!(def.masking["citizen_id"], MaskMethod::Partial { keep_start: 0, keep_end: 4 });
    assert_eq!(def.masking["email"], MaskMethod::Hash);

    let mut v = etx_monthly_json();
    v["schema"]["properties"]["count"] = json!({"type": "integer"});
    v["measures"]["count"] = json!("sum");
    v["lookups"][0]["add"]["agency"] = json!("name");
    let got = DatasetDef::parse(&v).unwrap_err();
    assert!(fields(&got).contains(&"/measures/count"), "{got:?}");
    assert!(fields(&got).contains(&"/lookups/0/add/agency"), "{got:?}");
}

/// F3: metadata published with the schema.
#[test]
fn f3_metadata() {
    let m = etx_monthly().metadata();
    assert_eq!(m["title"], "E-transaction statistics, monthly");
    assert_eq!(m["owner"], "Bộ KH&CN");
    assert_eq!(m["classification"], "internal");
    assert_eq!(m["priority"], "normal");
    assert_eq!(m["units"]["transactions"], "transactions");
    assert_eq!(m["measures"], json!({"failed": "sum", "transactions": "sum"}));
    assert_eq!(m["masking"], json!({"citizen_id": "partial", "email": "hash", "note": "redact"}));
    assert_eq!(m["key"], json!(["agency", "period", "channel"]));
    assert_eq!(m["time_field"], "period");
    assert_eq!(m["dimensions"], json!(["agency", "channel"]));
}

#[test]
fn names_parse() {
    assert_eq!("masked".parse::<SourceForm>().unwrap(), SourceForm::Masked);
    assert_eq!("raw".parse::<SourceForm>().unwrap(), SourceForm::Raw);
    assert!("cooked".parse::<SourceForm>().is_err());
    assert_eq!("avg".parse::<MeasureOp>().unwrap().name(), "avg");
    assert!("count".parse::<MeasureOp>().unwrap_err().contains("always"));
}
