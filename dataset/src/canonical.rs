//! Canonical JSON: the one byte form of a JSON value that every node computes alike. Content hashes,
//! natural keys, hash masking and cell keys are all taken over it, so it must not depend on the order
//! in which a client wrote object keys nor on serde_json features (`preserve_order`) enabled elsewhere.

use serde_json::Map;
use serde_json::Value;
use sha2::Digest;
use sha2::Sha256;

/// `v` with object keys sorted (by bytes) at every level, no whitespace, strings escaped as
/// serde_json escapes them and numbers printed as serde_json prints them.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(&mut out, v);
    out
}

/// SHA-256 of the canonical JSON of a record: the content identity used to recognise re-sent records.
pub fn content_sha256(record: &Map<String, Value>) -> [u8; 32] {
    let mut out = String::new();
    write_object(&mut out, record);
    Sha256::digest(out.as_bytes()).into()
}

fn write_canonical(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

fn write_object(out: &mut String, map: &Map<String, Value>) {
    // Sorting here, not relying on the map's own order, keeps the bytes the same even if some crate
    // in the build turns on serde_json's `preserve_order`.
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push('{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, k);
        out.push(':');
        write_canonical(out, v);
    }
    out.push('}');
}

fn write_string(out: &mut String, s: &str) {
    // Serialising a &str cannot fail; the fallback only keeps this free of unwrap().
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A1.5: the content hash must not depend on key order or whitespace.
    #[test]
    fn a1_5_canonical_json_sorts_keys_at_every_level() {
        let v = json!({"b": 1, "a": {"d": [1, 2.5, "x"], "c": null}, "é": true});
        assert_eq!(canonical_json(&v), r#"{"a":{"c":null,"d":[1,2.5,"x"]},"b":1,"é":true}"#);
        let a = json!({"x": 1, "y": "z"});
        let b: Value = serde_json::from_str("{ \"y\" : \"z\", \"x\" : 1 }").unwrap();
        assert_eq!(content_sha256(a.as_object().unwrap()), content_sha256(b.as_object().unwrap()));
        let c = json!({"x": 2, "y": "z"});
        assert_ne!(content_sha256(a.as_object().unwrap()), content_sha256(c.as_object().unwrap()));
    }
}
