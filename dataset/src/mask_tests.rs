//! Tests of masking (C7).

use serde_json::json;

use super::*;
use crate::test_support::compiled;
use crate::test_support::obj;

/// C7: partial keeps 3/3 of long values, 0/2 of short ones, and counts chars, not bytes.
#[test]
fn c7_partial_masking_by_chars() {
    assert_eq!(mask_partial("001203004567", 3, 3), "001******567");
    assert_eq!(mask_partial("Nguyễn Văn Ánh", 3, 3), "Ngu********Ánh");
    assert_eq!(mask_partial("Trần Thị", 3, 3), "Trầ**Thị");
    assert_eq!(mask_partial("Lê Văn", 3, 3), "****ăn");
    assert_eq!(mask_partial("Lý", 3, 3), "*ý");
    assert_eq!(mask_partial("", 3, 3), "");
    assert_eq!(mask_partial("0912345678", 0, 4), "******5678");
}

/// C7: raw form masks every masked field present; numbers are masked as text; null stays null.
#[test]
fn c7_raw_form_masks_fields() {
    let ds = compiled();
    let mut r = obj(json!({
        "agency": "Bộ Y tế", "citizen_id": "001203004567", "email": "an.nguyen@example.vn", "note": "gọi lại sau"
    }));
    let touched = ds.mask(0, &mut r, SourceForm::Raw, b"secret").unwrap();
    assert_eq!(touched, ["citizen_id", "email", "note"]);
    assert_eq!(r["citizen_id"], "001******567");
    assert_eq!(r["note"], REDACTED);
    let email = r["email"].as_str().unwrap();
    assert!(email.starts_with("hmac:") && email.len() == 5 + 32, "{email}");
    assert_eq!(r["agency"], "Bộ Y tế", "unmasked fields are untouched");

    let mut r = obj(json!({"citizen_id": 1203004567u64, "email": null}));
    assert_eq!(ds.mask(0, &mut r, SourceForm::Raw, b"secret").unwrap(), ["citizen_id"]);
    assert_eq!(r["citizen_id"], "120****567");
    assert_eq!(r["email"], Value::Null);
}

/// C7: equal values hash equally (so they still join); another key gives another hash.
#[test]
fn c7_hash_joins_and_depends_on_key() {
    let a = mask_hash(&json!("an.nguyen@example.vn"), b"k1");
    assert_eq!(a, mask_hash(&json!("an.nguyen@example.vn"), b"k1"));
    assert_ne!(a, mask_hash(&json!("an.nguyen@example.vn"), b"k2"));
    assert_ne!(a, mask_hash(&json!("binh@example.vn"), b"k1"));
    assert_ne!(mask_hash(&json!("1"), b"k1"), mask_hash(&json!(1), b"k1"), "hashes canonical JSON, so kinds differ");
}

/// C7: a "masked" source may not send raw citizen ids, phone numbers or e-mail addresses.
#[test]
fn c7_masked_form_refuses_raw_personal_data() {
    let ds = compiled();
    let cases = [
        ("citizen_id", json!("001203004567"), "citizen id"),
        ("citizen_id", json!("001.203.004.567"), "citizen id"),
        ("citizen_id", json!(123456789), "citizen id"),
        ("note", json!("+84 912 345 678"), "phone number"),
        ("note", json!("0912-345-678"), "phone number"),
        ("note", json!("(028) 3823 4567"), "phone number"),
        ("email", json!("an.nguyen@example.vn"), "e-mail address"),
        ("note", json!("liên hệ an@bo.gov.vn"), "e-mail address"),
        // A star does not make an address masked.
        ("email", json!("an.nguyen@example.vn*"), "e-mail address"),
    ];
    for (field, value, kind) in cases {
        let mut r = obj(json!({"agency": "A"}));
        r.insert(field.to_string(), value.clone());
        let problems = ds.mask(5, &mut r, SourceForm::Masked, b"k").unwrap_err();
        assert_eq!(problems.len(), 1, "{value}");
        assert_eq!((problems[0].record, problems[0].field.as_str()), (Some(5), format!("/{field}").as_str()));
        assert!(problems[0].message.contains(kind), "{value}: {}", problems[0].message);
        assert_eq!(r[field], value, "the record is left as it was");
    }
}

/// C7: values that look masked, and values that do not look personal, are accepted as they are.
#[test]
fn c7_masked_form_accepts_masked_values() {
    let ds = compiled();
    let mut r = obj(json!({
        "citizen_id": "001******567", "email": mask_hash(&json!("an@bo.gov.vn"), b"k"), "note": "[redacted]"
    }));
    let partially = obj(json!({"email": "a***@bo.gov.vn"}));
    assert!(ds.mask(0, &mut partially.clone(), SourceForm::Masked, b"k").is_ok(), "a partially masked address");
    let before = r.clone();
    assert_eq!(ds.mask(0, &mut r, SourceForm::Masked, b"k").unwrap(), ["citizen_id", "email", "note"]);
    assert_eq!(r, before);
    let mut r = obj(json!({"note": "tháng 7 tăng 12%", "citizen_id": "12345"}));
    assert!(ds.mask(0, &mut r, SourceForm::Masked, b"k").is_ok());
    let mut r = obj(json!({"citizen_id": "001203004567", "email": "a@b.vn"}));
    assert_eq!(ds.mask(0, &mut r, SourceForm::Masked, b"k").unwrap_err().len(), 2, "every field is reported");
}
