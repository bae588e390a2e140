//! `GET /datasets/{id}/schema.xsd` (A3.2): the XSD of a dataset version's XML form —
//! `<records><record><field>…</field>…</record>…</records>`, one element per top-level property —
//! generated from its JSON Schema: element types from the property types (`integer`, `number`,
//! `boolean`, `string`), `enum` as enumerations, numeric bounds and string lengths as facets,
//! required properties with `minOccurs="1"`. A JSON Schema `pattern` (ECMA-262 syntax) is not
//! carried over: XSD patterns use another regular-expression language, and the JSON Schema stays the
//! authority that XML input is validated against after it is read.

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

fn base_type(schema: &Value) -> &'static str {
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        // ["integer", "null"] and the like: the non-null type.
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null").unwrap_or("string"),
        _ => "string",
    };
    match ty {
        "integer" => "xs:integer",
        "number" => "xs:decimal",
        "boolean" => "xs:boolean",
        _ => "xs:string",
    }
}

/// The `<xs:simpleType>` of one property.
fn simple_type(schema: &Value) -> String {
    let base = base_type(schema);
    let mut facets = String::new();
    if let Some(Value::Array(values)) = schema.get("enum") {
        for v in values {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Null => continue,
                other => other.to_string(),
            };
            facets.push_str(&format!("<xs:enumeration value=\"{}\"/>", attr(&text)));
        }
    }
    let facet = |json: &str, xsd: &str, facets: &mut String| {
        if let Some(n) = schema.get(json).filter(|v| v.is_number()) {
            facets.push_str(&format!("<xs:{xsd} value=\"{n}\"/>"));
        }
    };
    if base != "xs:string" {
        facet("minimum", "minInclusive", &mut facets);
        facet("maximum", "maxInclusive", &mut facets);
        facet("exclusiveMinimum", "minExclusive", &mut facets);
        facet("exclusiveMaximum", "maxExclusive", &mut facets);
    } else {
        facet("minLength", "minLength", &mut facets);
        facet("maxLength", "maxLength", &mut facets);
    }
    format!("<xs:simpleType><xs:restriction base=\"{base}\">{facets}</xs:restriction></xs:simpleType>")
}

/// The XSD document for a JSON Schema of flat records.
pub fn xsd_of(title: &str, schema: &Value) -> Result<String, String> {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut fields = String::new();
    if let Some(Value::Object(props)) = schema.get("properties") {
        for (name, prop) in props {
            if !xml_name(name) {
                return Err(format!("property `{name}` is not a valid XML element name"));
            }
            let min = if required.contains(&name.as_str()) { 1 } else { 0 };
            fields.push_str(&format!(
                "<xs:element name=\"{}\" minOccurs=\"{min}\" maxOccurs=\"1\">{}</xs:element>",
                attr(name),
                simple_type(prop)
            ));
        }
    }
    // Properties beyond the declared ones, when the JSON Schema allows them.
    let open = !matches!(schema.get("additionalProperties"), Some(Value::Bool(false)));
    let any = if open { "<xs:any processContents=\"lax\" minOccurs=\"0\" maxOccurs=\"unbounded\"/>" } else { "" };
    // `xs:all` cannot hold `xs:any`: a choice repeated keeps the fields in any order.
    let body = if open {
        format!("<xs:choice minOccurs=\"0\" maxOccurs=\"unbounded\">{fields}{any}</xs:choice>")
    } else {
        format!("<xs:all>{fields}</xs:all>")
    };
    Ok(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<xs:schema xmlns:xs=\"http://www.w3.org/2001/XMLSchema\" \
         elementFormDefault=\"qualified\"><xs:annotation><xs:documentation>{}</xs:documentation></xs:annotation>\
         <xs:element name=\"records\"><xs:complexType><xs:sequence><xs:element name=\"record\" type=\"record\" \
         minOccurs=\"0\" maxOccurs=\"unbounded\"/></xs:sequence></xs:complexType></xs:element>\
         <xs:complexType name=\"record\">{body}</xs:complexType></xs:schema>\n",
        attr(title)
    ))
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
    let title = format!("{} (dataset {}, version {})", def["title"].as_str().unwrap_or(&id), id, ds.version);
    let xsd = xsd_of(&title, def.get("schema").unwrap_or(&Value::Null))
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
        let open = xsd_of("t", &json!({"type": "object", "properties": {"a": {}}})).expect("xsd");
        assert!(open.contains("xs:any"), "{open}");
        assert!(xsd_of("t", &json!({"properties": {"1bad": {}}})).is_err());
    }
}
