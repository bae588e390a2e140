//! Tests of version compatibility (A3.2/F3 schemas).

use serde_json::json;

use super::*;
use crate::test_support::etx_monthly;
use crate::test_support::etx_monthly_json;

fn next_with(change: impl FnOnce(&mut Value)) -> Result<(), Problem> {
    let mut v = etx_monthly_json();
    change(&mut v);
    check_compatible(&etx_monthly(), &DatasetDef::parse(&v).unwrap())
}

/// F3: same definition, metadata edits, a new optional property, widening changes are compatible.
#[test]
fn f3_compatible_changes() {
    assert_eq!(check_compatible(&etx_monthly(), &etx_monthly()), Ok(()));
    assert_eq!(
        next_with(|v| {
            v["title"] = json!("New title");
            v["priority"] = json!("high");
            v["classification"] = json!("confidential");
            v["schema"]["properties"]["comment"] = json!({"type": "string", "maxLength": 200});
            v["schema"]["properties"]["transactions"]["type"] = json!("number");
            v["schema"]["properties"]["transactions"]["description"] = json!("count of transactions");
            v["schema"]["properties"]["channel"]["enum"] = json!(["web", "mobile", "counter", "kiosk"]);
            v["schema"]["properties"]["failed"].as_object_mut().unwrap().remove("minimum");
            v["masking"]["comment"] = json!("redact");
            v["masking"]["email"] = json!("redact");
            v["rules"].as_array_mut().unwrap().remove(0);
        }),
        Ok(())
    );
}

/// F3: a newly required property is refused, naming it.
#[test]
fn f3_new_required_property_refused() {
    let err = next_with(|v| v["schema"]["required"].as_array_mut().unwrap().push(json!("failed"))).unwrap_err();
    assert_eq!(err.field, "/schema/required/4");
    assert!(err.message.contains("failed"), "{}", err.message);
}

/// F3: narrowing a type is refused, naming the property.
#[test]
fn f3_type_narrowing_refused() {
    let mut v = etx_monthly_json();
    v["schema"]["properties"]["transactions"]["type"] = json!("number");
    let wide = DatasetDef::parse(&v).unwrap();
    v["schema"]["properties"]["transactions"]["type"] = json!("integer");
    let narrow = DatasetDef::parse(&v).unwrap();
    let err = check_compatible(&wide, &narrow).unwrap_err();
    assert_eq!(err.field, "/schema/properties/transactions/type");
    assert!(err.message.contains("number"), "{}", err.message);
    let err = next_with(|v| v["schema"]["properties"]["note"]["type"] = json!("integer")).unwrap_err();
    assert!(err.field.contains("/note"), "{}", err.field);
}

/// F3: key, time field, dimensions and measures cannot change.
#[test]
fn f3_key_and_structure_changes_refused() {
    let err = next_with(|v| v["key"] = json!(["agency", "period"])).unwrap_err();
    assert_eq!(err.field, "/key");
    assert!(err.message.contains("key"));
    assert_eq!(next_with(|v| v["dimensions"] = json!(["agency"])).unwrap_err().field, "/dimensions");
    assert_eq!(next_with(|v| v["measures"]["failed"] = json!("max")).unwrap_err().field, "/measures");
    assert_eq!(next_with(|v| v["time_field"] = json!("agency")).unwrap_err().field, "/time_field");
}

/// F3, C7: masking may not be removed or weakened; classification may not be lowered.
#[test]
fn f3_masking_and_classification_not_weakened() {
    let err = next_with(|v| {
        v["masking"].as_object_mut().unwrap().remove("note");
    })
    .unwrap_err();
    assert_eq!(err.field, "/masking/note");
    assert_eq!(next_with(|v| v["masking"]["email"] = json!("partial")).unwrap_err().field, "/masking/email");
    let wider = json!({"method": "partial", "keep_start": 4, "keep_end": 3});
    assert_eq!(next_with(|v| v["masking"]["citizen_id"] = wider).unwrap_err().field, "/masking/citizen_id");
    assert_eq!(next_with(|v| v["classification"] = json!("public")).unwrap_err().field, "/classification");
}

/// F3: schema tightenings and unknown changes are refused.
#[test]
fn f3_schema_tightenings_refused() {
    type Change = fn(&mut Value);
    let cases: [(Change, &str); 7] = [
        (
            |v| v["schema"]["properties"]["channel"]["enum"] = json!(["web", "mobile"]),
            "/schema/properties/channel/enum",
        ),
        (|v| v["schema"]["properties"]["failed"]["minimum"] = json!(1), "/schema/properties/failed/minimum"),
        (|v| v["schema"]["properties"]["note"]["maxLength"] = json!(10), "/schema/properties/note/maxLength"),
        (|v| v["schema"]["properties"]["email"]["format"] = json!("email"), "/schema/properties/email/format"),
        (|v| v["schema"]["properties"]["agency"]["pattern"] = json!("^B"), "/schema/properties/agency/pattern"),
        (|v| v["schema"]["properties"]["note"]["not"] = json!({"const": ""}), "/schema/properties/note/not"),
        (|v| v["rules"].as_array_mut().unwrap().push(json!({"field": "failed", "op": "<", "value": 9})), "/rules/3"),
    ];
    for (change, field) in cases {
        let err = next_with(change).unwrap_err();
        assert_eq!(err.field, field, "{}", err.message);
    }
    let err = next_with(|v| v["schema"]["properties"]["agency"]["pattern"] = json!("^B")).unwrap_err();
    assert!(err.message.contains("cannot prove compatible"), "{}", err.message);
}

/// F3: removing a property is fine unless additionalProperties is false; nested objects are checked.
#[test]
fn f3_removed_and_nested_properties() {
    assert_eq!(
        next_with(|v| {
            v["schema"]["properties"].as_object_mut().unwrap().remove("note");
        }),
        Ok(())
    );
    let mut v = etx_monthly_json();
    v["schema"]["additionalProperties"] = json!(false);
    v["schema"]["properties"]["address"] =
        json!({"type": "object", "properties": {"street": {"type": "string"}, "zip": {"type": "string"}}});
    let prev = DatasetDef::parse(&v).unwrap();
    let mut w = v.clone();
    w["schema"]["properties"].as_object_mut().unwrap().remove("note");
    assert_eq!(check_compatible(&prev, &DatasetDef::parse(&w).unwrap()).unwrap_err().field, "/schema/properties/note");
    let mut w = v.clone();
    w["schema"]["properties"]["address"]["properties"]["zip"]["type"] = json!("integer");
    let err = check_compatible(&prev, &DatasetDef::parse(&w).unwrap()).unwrap_err();
    assert_eq!(err.field, "/schema/properties/address/properties/zip/type");
    let mut w = v.clone();
    w["schema"]["properties"]["address"]["required"] = json!(["zip"]);
    let err = check_compatible(&prev, &DatasetDef::parse(&w).unwrap()).unwrap_err();
    assert_eq!(err.field, "/schema/properties/address/required/0");
    // With additionalProperties false, new properties could not have been in old records.
    let mut w = v.clone();
    w["schema"]["additionalProperties"] = json!(true);
    w["schema"]["properties"]["extra"] = json!({"type": "integer"});
    assert_eq!(check_compatible(&prev, &DatasetDef::parse(&w).unwrap()), Ok(()));
}
