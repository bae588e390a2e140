//! Tests of record validation (A3.4), enrichment (F2), natural keys (A1.5) and contributions (F4).

use serde_json::json;

use super::*;
use crate::test_support::MapRefs;
use crate::test_support::compiled;
use crate::test_support::etx_monthly_json;
use crate::test_support::obj;

fn good() -> Value {
    json!({"agency": "Bộ Y tế", "period": "2025-07", "channel": "web", "transactions": 120, "failed": 3, "province": "01"})
}

/// A3.4: a good record has no problems.
#[test]
fn a3_4_valid_record_passes() {
    assert_eq!(compiled().validate(0, &good(), &MapRefs::provinces()), []);
}

/// A3.4: every bad field is reported with its pointer, then the rule violations.
#[test]
fn a3_4_reports_every_bad_field_and_rule() {
    let ds = compiled();
    let record = json!({
        "period": "2019-05", "channel": "fax", "transactions": 5, "failed": 9, "email": 42, "province": "99"
    });
    let problems = ds.validate(7, &record, &MapRefs::provinces());
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    for want in ["/agency", "/channel", "/email", "/failed", "/period", "/province"] {
        assert!(fields.contains(&want), "missing {want}: {problems:#?}");
    }
    assert!(problems.iter().all(|p| p.record == Some(7)));
    // Schema errors come before rule violations.
    let first_rule = problems.iter().position(|p| p.field == "/failed").unwrap();
    assert!(problems[..first_rule].iter().all(|p| ["/agency", "/channel", "/email"].contains(&p.field.as_str())));
    let failed = &problems[first_rule];
    assert_eq!(failed.message, "failed cannot exceed transactions", "the rule's own message");
    let period = problems.iter().find(|p| p.field == "/period").unwrap();
    assert!(period.message.contains("between"), "{}", period.message);
    let province = problems.iter().find(|p| p.field == "/province").unwrap();
    assert!(province.message.contains("provinces"), "{}", province.message);
    // Messages never repeat the record's values (they may be personal data).
    assert!(problems.iter().all(|p| !p.message.contains("fax") && !p.message.contains("42")), "{problems:#?}");
}

/// A3.4: a non-object record is one problem for the whole record.
#[test]
fn a3_4_non_object_record() {
    let problems = compiled().validate(3, &json!([1, 2]), &NoReferences);
    assert_eq!(problems, [Problem::at(3, "", "a record must be a JSON object")]);
}

/// A3.4: rules skip absent fields, compare time points by instant and refuse mismatched kinds.
#[test]
fn a3_4_rule_semantics() {
    let mut v = etx_monthly_json();
    v["rules"] = json!([
        {"field": "period", "op": ">=", "value": "2025-01-01"},
        {"field": "note", "op": "<", "other": "transactions"},
        {"field": "failed", "op": "!=", "value": 7}
    ]);
    let ds = CompiledDataset::compile(DatasetDef::parse(&v).unwrap(), 2).unwrap();
    // Time points: "2025-01" starts at the same instant as "2025-01-01".
    let mut r = good();
    r["period"] = json!("2025-01");
    assert_eq!(ds.validate(0, &r, &NoReferences), []);
    r["period"] = json!("2024-12");
    let p = ds.validate(0, &r, &NoReferences);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].field, "/period");
    // A string against a number cannot be compared.
    r["period"] = json!("2025-02");
    r["note"] = json!("hello");
    let p = ds.validate(0, &r, &NoReferences);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].message.contains("cannot compare"), "{}", p[0].message);
    // Absent fields skip their rules.
    let r = json!({"agency": "A", "period": "2025-02", "channel": "web", "transactions": 1});
    assert_eq!(ds.validate(0, &r, &NoReferences), []);
    let mut r = good();
    r["failed"] = json!(7);
    assert_eq!(ds.validate(0, &r, &NoReferences).len(), 1);
}

/// A3.4: "between" includes the whole upper period; rules run on date-times too.
#[test]
fn a3_4_between_includes_upper_period() {
    let mut v = etx_monthly_json();
    v["rules"] = json!([{"field": "period", "op": "between", "value": ["2020-01", "2035-12"]}]);
    let ds = CompiledDataset::compile(DatasetDef::parse(&v).unwrap(), 1).unwrap();
    for (period, ok) in [
        ("2035-12-31", true),
        ("2036-01-01", false),
        ("2020-01-01T00:00:00+07:00", true),
        ("2019-12-31T16:59:00Z", false),
    ] {
        let mut r = good();
        r["period"] = json!(period);
        assert_eq!(ds.validate(0, &r, &NoReferences).is_empty(), ok, "{period}");
    }
}

/// F2: enrichment adds the looked-up columns, and nothing when the reference is missing.
#[test]
fn f2_enrich_from_reference() {
    let ds = compiled();
    let refs = MapRefs::provinces();
    let mut r = obj(good());
    let added = ds.enrich(&mut r, &refs);
    assert_eq!(added, ["province_name", "region"]);
    assert_eq!(r["province_name"], "Hà Nội");
    assert_eq!(r["region"], "Đồng bằng sông Hồng");
    let mut r = obj(good());
    r.insert("province".into(), json!("99"));
    assert!(ds.enrich(&mut r, &refs).is_empty());
    assert!(!r.contains_key("region"));
    assert!(ds.enrich(&mut obj(good()), &NoReferences).is_empty());
}

/// A1.5: the natural key depends on the key fields and the HMAC key only.
#[test]
fn a1_5_natural_key_hash() {
    let ds = compiled();
    let a = obj(good());
    let mut b = a.clone();
    b.insert("transactions".into(), json!(999));
    b.insert("note".into(), json!("re-sent"));
    let h = ds.natural_key_hash(&a, b"k1").unwrap();
    assert_eq!(h, ds.natural_key_hash(&b, b"k1").unwrap(), "non-key fields are ignored");
    assert_ne!(h, ds.natural_key_hash(&a, b"k2").unwrap(), "depends on the HMAC key");
    b.insert("channel".into(), json!("mobile"));
    assert_ne!(h, ds.natural_key_hash(&b, b"k1").unwrap(), "depends on key values");
    b.remove("channel");
    let mut c = b.clone();
    c.insert("channel".into(), Value::Null);
    assert_eq!(ds.natural_key_hash(&b, b"k1"), ds.natural_key_hash(&c, b"k1"), "absent is null");

    let mut v = etx_monthly_json();
    v["key"] = json!([]);
    let keyless = CompiledDataset::compile(DatasetDef::parse(&v).unwrap(), 1).unwrap();
    assert_eq!(keyless.natural_key_hash(&a, b"k1"), None);
}

/// F4: a record's contribution to the aggregates.
#[test]
fn f4_contribution() {
    let ds = compiled();
    let c = ds.contribution(0, &obj(good())).unwrap();
    assert_eq!(c.time, TimePoint::Month(2025, 7));
    assert_eq!(c.dims, [json!("Bộ Y tế"), json!("web")]);
    assert_eq!(c.measures.get("transactions"), Some(&120.0));
    assert_eq!(c.measures.get("failed"), Some(&3.0));

    let mut r = obj(good());
    r.remove("failed");
    r.remove("agency");
    let c = ds.contribution(0, &r).unwrap();
    assert!(!c.measures.contains_key("failed"));
    assert_eq!(c.dims[0], Value::Null);

    r.insert("period".into(), json!("July"));
    assert_eq!(ds.contribution(4, &r).unwrap_err().field, "/period");
    let mut r = obj(good());
    r.insert("failed".into(), json!("three"));
    let e = ds.contribution(4, &r).unwrap_err();
    assert_eq!((e.record, e.field.as_str()), (Some(4), "/failed"));
}

#[test]
fn problems_per_record_are_bounded() {
    let mut v = etx_monthly_json();
    let rules: Vec<Value> = (0..40).map(|i| json!({"field": "failed", "op": ">", "value": 100 + i})).collect();
    v["rules"] = json!(rules);
    let ds = CompiledDataset::compile(DatasetDef::parse(&v).unwrap(), 1).unwrap();
    let p = ds.validate(0, &good(), &NoReferences);
    assert_eq!(p.len(), limits::PROBLEMS_PER_RECORD_MAX);
    assert!(p.last().unwrap().message.contains("more problems"));
}
