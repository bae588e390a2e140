//! `GET /datasets/{id}/schema.xsd` (A3.2): the XSD of a dataset version's XML form —
//! `<records><record><field>…</field>…</record>…</records>`, one element per top-level property —
//! generated from its JSON Schema, and enforced: XML batches are validated record by record against
//! this same text by libxml2 ([`validator`]).
//!
//! What carries over: element types from the property types (`integer` → `xs:integer`, `number` →
//! `xs:double`, which also takes JSON's exponent notation, `boolean` → `xs:boolean`, anything else
//! → `xs:string`); `enum` / `const` as enumerations (values that are not of the type are left
//! out, as no value could match them); numeric bounds as `minInclusive` / `minExclusive` /
//! `maxInclusive` / `maxExclusive` (integer bounds rounded to the integers they admit, the stronger
//! of an inclusive and an exclusive bound kept, as XSD allows only one); string lengths; a `pattern`
//! translated from ECMA-262 to XSD regular expressions where the translation is exact, else left
//! out (`xsd_pattern`; a pattern libxml2 still refuses drops the patterns, see
//! [`validator::published`]).
//!
//! The record: both elements are global, so a file validates as `<records>` and a single record
//! as `<record>`. With `additionalProperties: false` the record is an `xs:all` of its fields
//! (required ones `minOccurs="1"`): unknown, missing and repeated elements are refused. An open
//! record cannot say the same in XSD 1.0 (a wildcard next to named elements breaks the Unique
//! Particle Attribution rule, which libxml2 enforces): its content is a lax wildcard and the
//! declared fields are global elements, so their types and facets are checked wherever they
//! appear, while required fields are left to the JSON Schema. An empty element is an absent field
//! (as an empty CSV cell is), so the type of an optional field also admits the empty text. The
//! JSON Schema stays the authority and is checked after the XSD.

pub mod validator;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::response::Response;
use serde_json::Value;

use super::AppState;
use super::auth;
use super::error::ApiError;
use super::error::ApiResult;

/// XML-escapes text for an attribute value.
fn attr(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// An XML element name a property can have as it is (the XML form uses the property names).
fn xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.to_ascii_lowercase().starts_with("xml")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Base {
    Integer,
    Double,
    Boolean,
    String,
}

impl Base {
    fn of(schema: &Value) -> Base {
        let types: Vec<&str> = match schema.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect(),
            _ => Vec::new(),
        };
        // One non-null type, or text: a union of types takes any text and leaves it to the JSON Schema.
        match types.as_slice() {
            ["integer"] => Base::Integer,
            ["number"] => Base::Double,
            ["boolean"] => Base::Boolean,
            _ => Base::String,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Base::Integer => "xs:integer",
            Base::Double => "xs:double",
            Base::Boolean => "xs:boolean",
            Base::String => "xs:string",
        }
    }
}

/// An integral JSON number as an integer text (`1.0` → `1`), or `None`.
fn integer_text(v: &Value) -> Option<String> {
    if let Some(i) = v.as_i64() {
        return Some(i.to_string());
    }
    if let Some(u) = v.as_u64() {
        return Some(u.to_string());
    }
    let f = v.as_f64()?;
    (f.fract() == 0.0 && f.abs() < 9.0e15).then(|| (f as i64).to_string())
}

/// An enumeration value as the XML text of that base type, or `None` when no text of the type is it.
fn enum_text(base: Base, v: &Value) -> Option<String> {
    match (base, v) {
        (_, Value::Null) => None,
        (Base::Integer, v) => integer_text(v),
        (Base::Double, Value::Number(n)) => Some(n.to_string()),
        (Base::Boolean, Value::Bool(b)) => Some(b.to_string()),
        (Base::String, Value::String(s)) => Some(s.clone()),
        // Without a declared type the XML text stays text: the JSON Schema decides the rest.
        (Base::String, other) if other.is_number() || other.is_boolean() => Some(other.to_string()),
        _ => None,
    }
}

/// The numeric bound facets: one lower, one upper (XSD allows only one of inclusive/exclusive).
fn bounds(base: Base, schema: &Value) -> String {
    let num = |k: &str| schema.get(k).filter(|v| v.is_number());
    // Draft 4: `exclusiveMinimum: true` makes `minimum` exclusive.
    let old_exclusive = |k: &str| matches!(schema.get(k), Some(Value::Bool(true)));
    let mut out = String::new();
    for (inclusive, exclusive, lower) in [("minimum", "exclusiveMinimum", true), ("maximum", "exclusiveMaximum", false)]
    {
        let (mut inc, mut exc) = (num(inclusive), num(exclusive));
        if old_exclusive(exclusive) {
            (inc, exc) = (None, num(inclusive));
        }
        let (inc_f, exc_f) = (inc.and_then(Value::as_f64), exc.and_then(Value::as_f64));
        if base == Base::Integer {
            // x >= 2.5 is x >= 3, x > 2.5 is x >= 3, x > 2 is x >= 3: one inclusive integer bound.
            let from_inc = inc_f.map(|f| if lower { f.ceil() } else { f.floor() });
            let from_exc = exc_f.map(|f| if lower { f.floor() + 1.0 } else { f.ceil() - 1.0 });
            let bound = match (from_inc, from_exc) {
                (Some(a), Some(b)) => Some(if lower { a.max(b) } else { a.min(b) }),
                (a, b) => a.or(b),
            };
            if let Some(b) = bound.filter(|b| b.abs() < 9.0e15) {
                let facet = if lower { "minInclusive" } else { "maxInclusive" };
                out.push_str(&format!("<xs:{facet} value=\"{}\"/>", b as i64));
            }
            continue;
        }
        let exclusive_wins = match (inc_f, exc_f) {
            (Some(i), Some(e)) => (lower && e >= i) || (!lower && e <= i),
            (None, Some(_)) => true,
            _ => false,
        };
        let (facet, value) = match (exclusive_wins, lower) {
            (true, true) => ("minExclusive", exc),
            (true, false) => ("maxExclusive", exc),
            (false, true) => ("minInclusive", inc),
            (false, false) => ("maxInclusive", inc),
        };
        if let Some(v) = value {
            out.push_str(&format!("<xs:{facet} value=\"{v}\"/>"));
        }
    }
    out
}

/// The `<xs:simpleType>` of one property; an optional one also admits the empty text (an absent field).
fn simple_type(schema: &Value, optional: bool, patterns: bool) -> String {
    let base = Base::of(schema);
    let mut facets = String::new();
    let listed = match (schema.get("enum"), schema.get("const")) {
        (Some(Value::Array(values)), _) => Some(values.clone()),
        (None, Some(c)) => Some(vec![c.clone()]),
        _ => None,
    };
    let values: Vec<String> = listed.iter().flatten().filter_map(|v| enum_text(base, v)).collect();
    for v in &values {
        facets.push_str(&format!("<xs:enumeration value=\"{}\"/>", attr(v)));
    }
    match base {
        Base::Integer | Base::Double => facets.push_str(&bounds(base, schema)),
        Base::String => {
            let len = |k: &str| schema.get(k).and_then(Value::as_u64);
            let (min, max) = (len("minLength"), len("maxLength"));
            // Contradictory lengths admit nothing; XSD would refuse the schema itself.
            if min.zip(max).is_none_or(|(a, b)| a <= b) {
                if let Some(n) = min.filter(|n| *n > 0) {
                    facets.push_str(&format!("<xs:minLength value=\"{n}\"/>"));
                }
                if let Some(n) = max {
                    facets.push_str(&format!("<xs:maxLength value=\"{n}\"/>"));
                }
            }
            if patterns && let Some(p) = schema.get("pattern").and_then(Value::as_str).and_then(xsd_pattern) {
                facets.push_str(&format!("<xs:pattern value=\"{}\"/>", attr(&p)));
            }
        }
        Base::Boolean => {}
    }
    let restriction = format!("<xs:restriction base=\"{}\">{facets}</xs:restriction>", base.name());
    // Only where the type refuses the empty text: a union's errors say less than a facet's.
    let refuses_empty = match base {
        Base::String => listed.is_some() || facets.contains("<xs:minLength") || facets.contains("<xs:pattern"),
        _ => true,
    };
    if optional && refuses_empty {
        format!(
            "<xs:simpleType><xs:union><xs:simpleType>{restriction}</xs:simpleType><xs:simpleType>\
             <xs:restriction base=\"xs:string\"><xs:length value=\"0\"/></xs:restriction></xs:simpleType>\
             </xs:union></xs:simpleType>"
        )
    } else {
        format!("<xs:simpleType>{restriction}</xs:simpleType>")
    }
}

/// The XSD regular expression of an ECMA-262 `pattern`, or `None` when it has no exact XSD
/// translation (look-around, back-references, lazy quantifiers, word boundaries, `\s` and Unicode
/// classes, control characters). XSD expressions match the whole text, JSON Schema patterns
/// anywhere in it: an unanchored side gets `[\s\S]*`. `\d` and `\w` become their ASCII classes
/// (XSD's are Unicode-wide).
pub fn xsd_pattern(ecma: &str) -> Option<String> {
    let chars: Vec<char> = ecma.chars().collect();
    let mut i = 0;
    let start_anchor = chars.first() == Some(&'^');
    if start_anchor {
        i = 1;
    }
    let mut end = chars.len();
    let end_anchor = end > i && chars[end - 1] == '$' && {
        // `\$` at the end is a literal dollar: count the backslashes before it.
        let slashes = chars[i..end - 1].iter().rev().take_while(|c| **c == '\\').count();
        slashes % 2 == 0
    };
    if end_anchor {
        end -= 1;
    }
    let mut out = String::new();
    let mut after_quantifier = false;
    let (mut depth, mut top_alternation) = (0usize, false);
    while i < end {
        let c = chars[i];
        let quantifier = matches!(c, '*' | '+' | '?');
        if c == '?' && after_quantifier {
            return None; // lazy
        }
        match c {
            '\\' => {
                let (text, used) = escape(&chars[i + 1..end], false)?;
                out.push_str(&text);
                i += used;
            }
            '^' | '$' => return None,
            '(' => {
                if chars.get(i + 1) == Some(&'?') {
                    if chars.get(i + 2) != Some(&':') {
                        return None;
                    }
                    i += 2;
                }
                out.push('(');
                depth += 1;
            }
            ')' => {
                depth = depth.checked_sub(1)?;
                out.push(')');
            }
            '|' => {
                top_alternation |= depth == 0;
                out.push('|');
            }
            '[' => {
                let (text, used) = class(&chars[i + 1..end])?;
                out.push_str(&text);
                i += used;
            }
            '{' => {
                let close = chars[i..end].iter().position(|c| *c == '}').map(|p| i + p);
                let inner: Option<String> = close.map(|j| chars[i + 1..j].iter().collect());
                let ok = inner.as_deref().is_some_and(|t| {
                    let mut parts = t.splitn(2, ',');
                    let a = parts.next().unwrap_or("");
                    let b = parts.next();
                    let (lo, hi) =
                        (a.parse::<u32>().ok(), b.map(|b| if b.is_empty() { Ok(u32::MAX) } else { b.parse() }));
                    lo.is_some_and(|lo| match hi {
                        None => true,
                        Some(Ok(hi)) => lo <= hi,
                        Some(Err(_)) => false,
                    })
                });
                // `{3,2}` is an error in ECMA-262; a brace that is no quantifier at all is literal.
                let quantifier_like = inner.as_deref().is_some_and(|t| {
                    t.starts_with(|c: char| c.is_ascii_digit()) && t.chars().all(|c| c.is_ascii_digit() || c == ',')
                });
                if quantifier_like && !ok {
                    return None;
                }
                match (ok, close) {
                    (true, Some(j)) => {
                        out.extend(&chars[i..=j]);
                        i = j;
                        after_quantifier = true;
                        i += 1;
                        continue;
                    }
                    _ => out.push_str("\\{"),
                }
            }
            '}' => out.push_str("\\}"),
            ']' => out.push_str("\\]"),
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => return None,
            c => out.push(c),
        }
        after_quantifier = quantifier;
        i += 1;
    }
    // `^a|b$` is `(^a)|(b$)` in ECMA-262: anchors do not distribute over a top-level alternation.
    if top_alternation && (start_anchor || end_anchor) {
        return None;
    }
    let any = "[\\s\\S]*";
    Some(match (start_anchor, end_anchor) {
        (true, true) => out,
        (true, false) => format!("({out}){any}"),
        (false, true) => format!("{any}({out})"),
        (false, false) => format!("{any}({out}){any}"),
    })
}

/// An XSD single-character escape for a character that needs one (in or outside a class).
fn literal(c: char, in_class: bool) -> Option<String> {
    if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') {
        return None;
    }
    Some(match c {
        '\t' => "\\t".into(),
        '\n' => "\\n".into(),
        '\r' => "\\r".into(),
        '\\' | '.' | '?' | '*' | '+' | '{' | '}' | '(' | ')' | '[' | ']' | '|' => format!("\\{c}"),
        '-' | '^' if in_class => format!("\\{c}"),
        c => c.to_string(),
    })
}

/// The escape after a backslash: its XSD text and how many characters it used (after the `\`).
fn escape(rest: &[char], in_class: bool) -> Option<(String, usize)> {
    let c = *rest.first()?;
    let hex = |n: usize| -> Option<char> {
        let digits: String = rest.get(1..=n)?.iter().collect();
        char::from_u32(u32::from_str_radix(&digits, 16).ok()?)
    };
    Some(match c {
        'd' if in_class => ("0-9".into(), 1),
        'd' => ("[0-9]".into(), 1),
        'w' if in_class => ("A-Za-z0-9_".into(), 1),
        'w' => ("[A-Za-z0-9_]".into(), 1),
        'D' if !in_class => ("[^0-9]".into(), 1),
        'W' if !in_class => ("[^A-Za-z0-9_]".into(), 1),
        't' => ("\\t".into(), 1),
        'n' => ("\\n".into(), 1),
        'r' => ("\\r".into(), 1),
        'u' if rest.get(1) != Some(&'{') => (literal(hex(4)?, in_class)?, 5),
        'x' => (literal(hex(2)?, in_class)?, 3),
        c if c.is_ascii_punctuation() => (literal(c, in_class)?, 1),
        // \s \S \b \B \p{…} back-references, \f \v \0 \cX, \D \W in a class: no exact translation.
        _ => return None,
    })
}

/// A character class after its `[`: its XSD text and how many characters it used (with the `]`).
fn class(rest: &[char]) -> Option<(String, usize)> {
    let mut i = 0;
    let mut out = String::from("[");
    if rest.first() == Some(&'^') {
        out.push('^');
        i = 1;
    }
    let first = i;
    // One class member: a single character (for ranges) or an escape's text.
    let member = |i: usize| -> Option<(String, Option<char>, usize)> {
        match *rest.get(i)? {
            '\\' => {
                let (text, used) = escape(&rest[i + 1..], true)?;
                let single = match rest.get(i + 1) {
                    Some(c) if c.is_ascii_punctuation() => Some(*c),
                    _ => None,
                };
                Some((text, single, used + 1))
            }
            c => Some((literal(c, true)?, Some(c), 1)),
        }
    };
    loop {
        match rest.get(i) {
            None => return None,
            Some(']') if i > first => break,
            Some(']') => return None, // `[]` and `[^]`
            Some(_) => {
                let (text, single, used) = member(i)?;
                i += used;
                if rest.get(i) == Some(&'-') && rest.get(i + 1).is_some_and(|c| *c != ']') {
                    let (to, to_single, to_used) = member(i + 1)?;
                    let (Some(a), Some(b)) = (single, to_single) else { return None };
                    if a > b {
                        return None;
                    }
                    out.push_str(&format!("{text}-{to}"));
                    i += 1 + to_used;
                } else {
                    out.push_str(&text);
                }
            }
        }
    }
    out.push(']');
    Some((out, i + 1))
}

/// The XSD document for a JSON Schema of flat records.
pub fn xsd_of(title: &str, schema: &Value) -> Result<String, String> {
    xsd_with(title, schema, true)
}

/// [`xsd_of`], with or without the `pattern` facets.
pub(crate) fn xsd_with(title: &str, schema: &Value, patterns: bool) -> Result<String, String> {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let closed = matches!(schema.get("additionalProperties"), Some(Value::Bool(false)));
    let mut fields = String::new();
    if let Some(Value::Object(props)) = schema.get("properties") {
        for (name, prop) in props {
            if !xml_name(name) {
                return Err(format!("property `{name}` is not a valid XML element name"));
            }
            let min = if required.contains(&name.as_str()) { 1 } else { 0 };
            let ty = simple_type(prop, min == 0, patterns);
            if closed {
                fields.push_str(&format!(
                    "<xs:element name=\"{}\" minOccurs=\"{min}\" maxOccurs=\"1\">{ty}</xs:element>",
                    attr(name)
                ));
            } else {
                if name == "record" || name == "records" {
                    return Err(format!(
                        "property `{name}` has the name of a record element; with additionalProperties \
                         allowed, the fields are global elements and cannot share it"
                    ));
                }
                fields.push_str(&format!("<xs:element name=\"{}\">{ty}</xs:element>", attr(name)));
            }
        }
    }
    let record = if closed {
        format!("<xs:complexType name=\"record\"><xs:all>{fields}</xs:all></xs:complexType>")
    } else {
        format!(
            "<xs:complexType name=\"record\"><xs:sequence><xs:any processContents=\"lax\" minOccurs=\"0\" \
             maxOccurs=\"unbounded\"/></xs:sequence></xs:complexType>{fields}"
        )
    };
    Ok(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<xs:schema xmlns:xs=\"http://www.w3.org/2001/XMLSchema\" \
         elementFormDefault=\"qualified\"><xs:annotation><xs:documentation>{}</xs:documentation></xs:annotation>\
         <xs:element name=\"records\"><xs:complexType><xs:sequence><xs:element ref=\"record\" \
         minOccurs=\"0\" maxOccurs=\"unbounded\"/></xs:sequence></xs:complexType></xs:element>\
         <xs:element name=\"record\" type=\"record\"/>{record}</xs:schema>\n",
        attr(title)
    ))
}

/// The title in the published XSD's annotation.
pub fn xsd_title(title: &str, id: &str, version: u32) -> String {
    format!("{} (dataset {id}, version {version})", if title.is_empty() { id } else { title })
}

#[derive(serde::Deserialize)]
pub struct VersionQuery {
    version: Option<u32>,
}

pub async fn get_xsd(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<VersionQuery>,
) -> ApiResult<Response> {
    auth::authenticate(&state, &headers).await?;
    let ds = super::catalog::dataset_version(&state, &id, q.version).await?;
    let def: Value = serde_json::from_slice(&ds.definition_json).map_err(ApiError::internal)?;
    let title = xsd_title(def["title"].as_str().unwrap_or(""), &id, ds.version);
    let xsd = validator::published(&id, ds.version, &title, def.get("schema").unwrap_or(&Value::Null))
        .map_err(|m| ApiError::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, "no_xml_form", m))?;
    let mut resp = xsd.into_response();
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/xml; charset=utf-8"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_enums_facets_and_required_fields_carry_over() {
        let schema = json!({"type": "object", "additionalProperties": false, "required": ["agency", "n"],
            "properties": {"agency": {"type": "string", "maxLength": 64}, "n": {"type": "integer", "minimum": 0},
                           "channel": {"enum": ["web", "mobile"]}, "ok": {"type": "boolean"}}});
        let x = xsd_of("t & t", &schema).expect("xsd");
        assert!(x.contains("<xs:element name=\"agency\" minOccurs=\"1\""), "{x}");
        assert!(x.contains("<xs:maxLength value=\"64\"/>"), "{x}");
        assert!(x.contains("base=\"xs:integer\"><xs:minInclusive value=\"0\"/>"), "{x}");
        assert!(x.contains("<xs:enumeration value=\"mobile\"/>"), "{x}");
        assert!(x.contains("<xs:element name=\"ok\" minOccurs=\"0\""), "{x}");
        assert!(x.contains("<xs:all>") && x.contains("t &amp; t"), "{x}");
        // Both the file and a single record validate against it.
        assert!(x.contains("<xs:element name=\"record\" type=\"record\"/>"), "{x}");
        assert!(x.contains("<xs:element ref=\"record\" minOccurs=\"0\" maxOccurs=\"unbounded\"/>"), "{x}");
        // Open records: a lax wildcard, the fields global (no UPA conflict).
        let open = xsd_of("t", &json!({"type": "object", "properties": {"a": {"type": "integer"}}})).expect("xsd");
        assert!(open.contains("<xs:any processContents=\"lax\""), "{open}");
        assert!(open.contains("</xs:complexType><xs:element name=\"a\">"), "{open}");
        assert!(xsd_of("t", &json!({"properties": {"1bad": {}}})).is_err());
        assert!(xsd_of("t", &json!({"properties": {"record": {}}})).is_err());
        assert!(xsd_of("t", &json!({"additionalProperties": false, "properties": {"record": {}}})).is_ok());
    }

    #[test]
    fn bounds_and_enumerations_stay_valid_xsd() {
        let x = |p: Value| {
            xsd_of("t", &json!({"additionalProperties": false, "required": ["v"], "properties": {"v": p}}))
                .expect("xsd")
        };
        // Integer bounds become the integers they admit; only one bound per side.
        let i = x(json!({"type": "integer", "minimum": 0.5, "exclusiveMaximum": 10, "maximum": 20.0}));
        assert!(i.contains("<xs:minInclusive value=\"1\"/><xs:maxInclusive value=\"9\"/>"), "{i}");
        let d = x(json!({"type": "number", "minimum": 0, "exclusiveMinimum": 0}));
        assert!(d.contains("<xs:minExclusive value=\"0\"/>") && !d.contains("minInclusive"), "{d}");
        let old = x(json!({"type": "number", "minimum": 1.5, "exclusiveMinimum": true}));
        assert!(old.contains("<xs:minExclusive value=\"1.5\"/>"), "{old}");
        // Values that are not of the type cannot match: left out rather than a broken schema.
        let e = x(json!({"type": "integer", "enum": [1, 2.0, 2.5, "3", null]}));
        assert!(e.contains("<xs:enumeration value=\"1\"/><xs:enumeration value=\"2\"/></xs:restriction>"), "{e}");
        let c = x(json!({"const": "only"}));
        assert!(c.contains("<xs:enumeration value=\"only\"/>"), "{c}");
        let l = x(json!({"type": "string", "minLength": 5, "maxLength": 2}));
        assert!(!l.contains("Length"), "{l}");
        let u = x(json!({"type": ["integer", "string"], "minimum": 3}));
        assert!(u.contains("<xs:restriction base=\"xs:string\"></xs:restriction>"), "{u}");
    }

    #[test]
    fn ecma_patterns_translate_exactly_or_not_at_all() {
        let cases = [
            ("^[0-9]{4}-[0-9]{2}$", Some("[0-9]{4}-[0-9]{2}")),
            ("^\\d+$", Some("[0-9]+")),
            ("^[\\w.-]+$", Some("[A-Za-z0-9_\\.\\-]+")),
            ("^a{3,2}$", None),
            ("abc", Some("[\\s\\S]*(abc)[\\s\\S]*")),
            ("^ab", Some("(ab)[\\s\\S]*")),
            ("^(?:a|b)c$", Some("(a|b)c")),
            ("^\\$\\.\\/x$", Some("$\\./x")),
            ("^a{2,}$", Some("a{2,}")),
            ("^[^a-c]$", Some("[^a-c]")),
            ("^a|b$", None),
            ("^\\s+$", None),
            ("^a+?$", None),
            ("^(?=a)a$", None),
            ("^(a)\\1$", None),
            ("\\bword\\b", None),
            ("^[]$", None),
            ("^\\p{L}+$", None),
        ];
        for (ecma, xsd) in cases {
            assert_eq!(xsd_pattern(ecma).as_deref(), xsd, "{ecma}");
        }
    }
}
