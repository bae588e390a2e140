//! The SOAP 1.1 and 1.2 binding of record submission and batch status (`POST /soap/v1`, WSDL at
//! `GET /soap/v1?wsdl`), for source systems whose integration platforms speak SOAP.
//!
//! It is a thin skin over the REST API: the same credentials (`X-API-Key` or `Authorization`
//! HTTP headers, or a `<dtm:ApiKey>` SOAP header element), the same submit path
//! (`api::records::submit`), the same answers, and every `ApiError` becomes a SOAP fault in one
//! place (`fault`) carrying the same stable code and per-record details. The content type decides
//! the version: `text/xml` is SOAP 1.1, `application/soap+xml` is SOAP 1.2.
//!
//! Records travel as JSON text in `<dtm:RecordsJson>` (one object or an array, exactly the REST
//! body): datasets are defined by JSON Schemas, so JSON is their exact form, while a per-dataset
//! XML form would need a WSDL per dataset and a lossy mapping of types. A `SubmitBatch` whose
//! `ContentType` is `application/xml` carries the dataset's XML form and goes through the batch
//! path like a REST upload: each record is validated against the version's published XSD
//! (`api::xsd::validator`) before the JSON Schema.

mod wsdl;
pub mod xml;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use serde_json::Value;

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::error::ApiResult;
use crate::api::records;
use crate::limits::RECORDS_BODY_BYTES_MAX;
use xml::Element;
use xml::escape;

/// The namespace of DTM's SOAP messages.
pub const NS: &str = "urn:dtm:soap:v1";
pub const SOAP11_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const SOAP12_NS: &str = "http://www.w3.org/2003/05/soap-envelope";

/// A SOAP request body: the records' JSON text with XML escaping and the envelope around it. Escaping
/// can grow text (`&` becomes `&amp;`), so the envelope may be twice the REST limit; the JSON
/// inside is then held to the REST limit itself.
pub const SOAP_BODY_BYTES_MAX: usize = 2 * RECORDS_BODY_BYTES_MAX;
const _: () = assert!(SOAP_BODY_BYTES_MAX >= RECORDS_BODY_BYTES_MAX);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Soap11,
    Soap12,
}

impl Version {
    fn envelope_ns(self) -> &'static str {
        match self {
            Version::Soap11 => SOAP11_NS,
            Version::Soap12 => SOAP12_NS,
        }
    }
    fn content_type(self) -> &'static str {
        match self {
            Version::Soap11 => "text/xml; charset=utf-8",
            Version::Soap12 => "application/soap+xml; charset=utf-8",
        }
    }
}

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new().route("/soap/v1", axum::routing::get(get_wsdl).post(post_soap))
}

/// `GET /soap/v1?wsdl` (any query): the WSDL 1.1 document, with the endpoint address taken from
/// the request's `Host`.
async fn get_wsdl(headers: HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.len() <= 255 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".:-[]".contains(&b)))
        .unwrap_or("localhost");
    let doc = wsdl::document(&format!("https://{host}/soap/v1"));
    ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], doc).into_response()
}

async fn post_soap(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let version = match media.as_str() {
        "text/xml" => Version::Soap11,
        "application/soap+xml" => Version::Soap12,
        _ => {
            let e = ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "SOAP 1.1 takes Content-Type: text/xml, SOAP 1.2 application/soap+xml",
            );
            return fault(Version::Soap11, e);
        }
    };
    match handle(&state, &headers, body, version).await {
        Ok(answer) => envelope(version, StatusCode::OK, &answer),
        Err(Refusal::Api(e)) => fault(version, e),
        Err(Refusal::VersionMismatch) => version_mismatch(),
    }
}

enum Refusal {
    Api(ApiError),
    /// The envelope is of another SOAP version than the content type says (or of none).
    VersionMismatch,
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Refusal::Api(e)
    }
}

/// Reads the envelope, checks the credentials and runs the operation; the answer is the content
/// of the SOAP body.
async fn handle(state: &AppState, headers: &HeaderMap, body: Body, version: Version) -> Result<String, Refusal> {
    let bytes = crate::api::read_body(headers, body, SOAP_BODY_BYTES_MAX).await?;
    let root =
        xml::parse(&bytes).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_xml", e.to_string()))?;
    if root.local != "Envelope" || root.ns != version.envelope_ns() {
        return Err(Refusal::VersionMismatch);
    }
    let ns = version.envelope_ns();
    let soap_body = root
        .child(ns, "Body")
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "malformed_soap", "the envelope has no Body"))?;
    let op = soap_body
        .children
        .first()
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "malformed_soap", "the Body has no operation"))?;
    let credentials = credentials(headers, root.child(ns, "Header"))?;
    if op.ns != NS {
        return Err(unknown_operation(op).into());
    }
    match op.local.as_str() {
        "SubmitRecords" => Ok(submit_records(state, &credentials, op).await?),
        "SubmitBatch" => Ok(submit_batch(state, &credentials, op).await?),
        "GetBatchStatus" => Ok(get_batch_status(state, &credentials, op).await?),
        _ => Err(unknown_operation(op).into()),
    }
}

fn unknown_operation(op: &Element) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "unknown_operation",
        format!("unknown operation `{}` (SubmitRecords, SubmitBatch, GetBatchStatus in {NS})", op.local),
    )
}

/// The HTTP credentials, or the `<dtm:ApiKey>` SOAP header element when the HTTP request has none.
/// Both at once is refused: which one is meant would be a guess.
fn credentials(headers: &HeaderMap, soap_header: Option<&Element>) -> ApiResult<HeaderMap> {
    let mut headers = headers.clone();
    let Some(key) = soap_header.and_then(|h| h.child(NS, "ApiKey")) else { return Ok(headers) };
    if headers.contains_key("x-api-key") || headers.contains_key(header::AUTHORIZATION) {
        return Err(ApiError::bad_request("send the credential either in HTTP headers or in <dtm:ApiKey>, not both"));
    }
    let value =
        HeaderValue::from_str(key.text.trim()).map_err(|_| ApiError::unauthorized("<dtm:ApiKey> is not valid text"))?;
    headers.insert("x-api-key", value);
    Ok(headers)
}

fn text_of<'a>(op: &'a Element, name: &str) -> Option<&'a str> {
    op.child_any(name).map(|e| e.text.trim()).filter(|t| !t.is_empty())
}

async fn submit_records(state: &AppState, headers: &HeaderMap, op: &Element) -> ApiResult<String> {
    let submitter = records::Submitter::authenticate(state, headers, text_of(op, "Source")).await?;
    let dataset = text_of(op, "Dataset").ok_or_else(|| ApiError::bad_request("<dtm:Dataset> is required"))?;
    let idempotency_key = text_of(op, "IdempotencyKey").map(records::idempotency_key).transpose()?;
    let schema_version = text_of(op, "SchemaVersion")
        .map(|v| {
            v.parse::<u32>()
                .ok()
                .filter(|v| *v >= 1)
                .ok_or_else(|| ApiError::bad_request("<dtm:SchemaVersion> must be a version number (1, 2, ...)"))
        })
        .transpose()?;
    let json = op
        .child_any("RecordsJson")
        .map(|e| e.text.clone())
        .ok_or_else(|| ApiError::bad_request("<dtm:RecordsJson> is required"))?;
    let how = records::Submit { idempotency_key, request_id: crate::api::request_id(headers), channel: "soap" };
    let answer = records::submit(state, submitter, dataset, schema_version, json.into(), how).await?;
    Ok(submit_answer(&answer))
}

/// `SubmitBatch`: the batch upload of `POST /datasets/{id}/batches` with the file base64-encoded
/// in `<dtm:Content>` (so at most about 3/4 of `SOAP_BODY_BYTES_MAX`; larger files go over REST,
/// which streams them). `ContentType` is the media type REST takes in `Content-Type`.
async fn submit_batch(state: &AppState, headers: &HeaderMap, op: &Element) -> ApiResult<String> {
    use crate::api::batches;
    use base64::Engine;
    let submitter = records::Submitter::authenticate(state, headers, text_of(op, "Source")).await?;
    let dataset = text_of(op, "Dataset").ok_or_else(|| ApiError::bad_request("<dtm:Dataset> is required"))?;
    let content_type = text_of(op, "ContentType").unwrap_or("");
    let format = dtm_formats::Format::from_media_type(content_type).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("<dtm:ContentType> `{content_type}` is not a batch format"),
        )
    })?;
    let on_error = match text_of(op, "OnError") {
        None | Some("continue") => batches::OnError::Continue,
        Some("reject") => batches::OnError::Reject,
        Some(other) => return Err(ApiError::bad_request(format!("unknown OnError `{other}` (continue or reject)"))),
    };
    let count = text_of(op, "ExpectedCount")
        .map(|v| v.parse::<u64>().map_err(|_| ApiError::bad_request("<dtm:ExpectedCount> must be a number")))
        .transpose()?;
    let sha256 = text_of(op, "Sha256")
        .map(|v| {
            hex::decode(v)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                .ok_or_else(|| ApiError::bad_request("<dtm:Sha256> must be 64 hex digits"))
        })
        .transpose()?;
    let content: String = op.child_any("Content").map(|e| e.text.split_whitespace().collect()).unwrap_or_default();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(content.as_bytes())
        .map_err(|_| ApiError::bad_request("<dtm:Content> is not base64"))?;
    let idempotency_key = text_of(op, "IdempotencyKey").map(records::idempotency_key).transpose()?;
    let req = batches::BatchRequest {
        source: submitter.source_id,
        key_id: submitter.key_id,
        dataset: dataset.to_string(),
        format,
        on_error,
        manifest: batches::Manifest { count, sha256 },
        idempotency_key,
        request_id: crate::api::request_id(headers),
        audit: crate::audit::current().unwrap_or_default(),
    };
    let body = futures::StreamExt::boxed(futures::stream::once(async move { Ok(bytes::Bytes::from(bytes)) }));
    let receipt = batches::ingest_stream(state, req, body).await?;
    let mut answer = batches::receipt_json(&receipt);
    crate::receipt::attach_batch(state, &receipt, &mut answer);
    Ok(batch_answer("SubmitBatchResponse", &answer))
}

/// `GetBatchStatus`: the receipt of `GET /batches/{batch_id}`, with the same access rules.
async fn get_batch_status(state: &AppState, headers: &HeaderMap, op: &Element) -> ApiResult<String> {
    let batch_id = text_of(op, "BatchId").ok_or_else(|| ApiError::bad_request("<dtm:BatchId> is required"))?;
    let axum::Json(receipt) = crate::api::batches::get_batch(
        State(state.clone()),
        headers.clone(),
        axum::extract::Path(batch_id.to_string()),
    )
    .await?;
    Ok(batch_answer("GetBatchStatusResponse", &receipt))
}

/// A batch receipt: the main counts as elements, each row error as a `Problem` (its position as
/// `Record`), the signed receipt as JSON text in `Receipt` (when there is one), and the whole REST
/// answer as JSON text in `Json`.
fn batch_answer(tag: &str, r: &Value) -> String {
    let mut out = format!(
        "<dtm:{tag} xmlns:dtm=\"{NS}\"><dtm:BatchId>{}</dtm:BatchId>",
        escape(r["batch_id"].as_str().unwrap_or(""))
    );
    for (key, el) in [("accepted", "Accepted"), ("rejected", "Rejected"), ("commit_index", "CommitIndex")] {
        if let Some(n) = r[key].as_u64() {
            out.push_str(&format!("<dtm:{el}>{n}</dtm:{el}>"));
        }
    }
    for e in r["errors"].as_array().into_iter().flatten() {
        out.push_str("<dtm:Problem>");
        if let Some(p) = e["position"].as_i64() {
            out.push_str(&format!("<dtm:Record>{p}</dtm:Record>"));
        }
        for (key, el) in [("field", "Field"), ("message", "Message")] {
            if let Some(t) = e[key].as_str() {
                out.push_str(&format!("<dtm:{el}>{}</dtm:{el}>", escape(t)));
            }
        }
        out.push_str(&format!("<dtm:Json>{}</dtm:Json></dtm:Problem>", escape(&e.to_string())));
    }
    out.push_str(&receipt_element(r));
    out.push_str(&format!("<dtm:Json>{}</dtm:Json></dtm:{tag}>", escape(&r.to_string())));
    out
}

/// `<dtm:Receipt>` holding the answer's signed receipt as JSON text (verified as it is with `dtm
/// receipt verify`), or nothing when the answer has none.
fn receipt_element(answer: &Value) -> String {
    match crate::receipt::text_of(answer) {
        text if text.is_empty() => String::new(),
        text => format!("<dtm:Receipt>{}</dtm:Receipt>", escape(&text)),
    }
}

/// `SubmitRecordsResponse`: the fields of the REST 201, in the order the WSDL declares them.
fn submit_answer(answer: &records::SubmitAnswer) -> String {
    let b = &answer.body;
    let num = |k: &str| b[k].as_u64().unwrap_or(0);
    let list = |k: &str, tag: &str| -> String {
        b[k].as_array()
            .map(|a| {
                a.iter().filter_map(Value::as_str).map(|v| format!("<dtm:{tag}>{}</dtm:{tag}>", escape(v))).collect()
            })
            .unwrap_or_default()
    };
    format!(
        "<dtm:SubmitRecordsResponse xmlns:dtm=\"{NS}\"><dtm:Accepted>{}</dtm:Accepted>{}\
         <dtm:CommitIndex>{}</dtm:CommitIndex><dtm:SchemaVersion>{}</dtm:SchemaVersion>\
         <dtm:Stored>{}</dtm:Stored><dtm:Duplicates>{}</dtm:Duplicates><dtm:Conflicts>{}</dtm:Conflicts>{}\
         <dtm:Replayed>{}</dtm:Replayed>{}</dtm:SubmitRecordsResponse>",
        num("accepted"),
        list("ids", "Id"),
        num("commit_index"),
        num("schema_version"),
        num("stored"),
        num("duplicates"),
        num("conflicts"),
        list("outcomes", "Outcome"),
        answer.replayed,
        receipt_element(b),
    )
}

fn envelope(version: Version, status: StatusCode, body: &str) -> Response {
    let ns = version.envelope_ns();
    let doc = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soap:Envelope xmlns:soap=\"{ns}\"><soap:Body>{body}</soap:Body></soap:Envelope>"
    );
    (status, [(header::CONTENT_TYPE, version.content_type())], doc).into_response()
}

/// The one place where `ApiError`s become SOAP faults. The detail holds the REST error: stable
/// `Code`, HTTP `Status`, `Message` and one `Problem` per detail (record, field, message, and the
/// detail as JSON). HTTP status: 401, 403, 429 and 503 keep their REST status (so that the gateway
/// counts failed authentications and clients see `Retry-After`); other faults answer 500 in SOAP
/// 1.1 (as the specification requires) and 400 (Sender) or 500 (Receiver) in SOAP 1.2.
pub fn fault(version: Version, e: ApiError) -> Response {
    let client = e.status.is_client_error();
    let detail = error_detail(&e);
    let message = escape(&e.message);
    let body = match version {
        Version::Soap11 => format!(
            "<soap:Fault><faultcode>soap:{}</faultcode><faultstring>{message}</faultstring><detail>{detail}</detail></soap:Fault>",
            if client { "Client" } else { "Server" },
        ),
        Version::Soap12 => format!(
            "<soap:Fault><soap:Code><soap:Value>soap:{}</soap:Value><soap:Subcode><soap:Value xmlns:dtm=\"{NS}\">dtm:{}</soap:Value></soap:Subcode></soap:Code>\
             <soap:Reason><soap:Text xml:lang=\"en\">{message}</soap:Text></soap:Reason><soap:Detail>{detail}</soap:Detail></soap:Fault>",
            if client { "Sender" } else { "Receiver" },
            e.code,
        ),
    };
    let status = match (e.status, version) {
        (s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS), _) => s,
        (StatusCode::SERVICE_UNAVAILABLE, _) => StatusCode::SERVICE_UNAVAILABLE,
        (_, Version::Soap12) if client => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut resp = envelope(version, status, &body);
    resp.extensions_mut().insert(crate::api::error::ErrorCode(e.code)); // A5.3: the cause in the trail
    if matches!(e.status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
        let after = e.retry_after_seconds.unwrap_or(crate::limits::RETRY_AFTER_SECONDS);
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(after));
    }
    resp
}

fn error_detail(e: &ApiError) -> String {
    let mut out = format!(
        "<dtm:Error xmlns:dtm=\"{NS}\"><dtm:Code>{}</dtm:Code><dtm:Status>{}</dtm:Status><dtm:Message>{}</dtm:Message>",
        escape(e.code),
        e.status.as_u16(),
        escape(&e.message)
    );
    for d in &e.details {
        out.push_str("<dtm:Problem>");
        if let Some(r) = d.get("record").and_then(Value::as_i64) {
            out.push_str(&format!("<dtm:Record>{r}</dtm:Record>"));
        }
        if let Some(f) = d.get("field").and_then(Value::as_str) {
            out.push_str(&format!("<dtm:Field>{}</dtm:Field>", escape(f)));
        }
        if let Some(m) = d.get("message").and_then(Value::as_str) {
            out.push_str(&format!("<dtm:Message>{}</dtm:Message>", escape(m)));
        }
        out.push_str(&format!("<dtm:Json>{}</dtm:Json></dtm:Problem>", escape(&d.to_string())));
    }
    out.push_str("</dtm:Error>");
    out
}

/// SOAP 1.1 section 4.4.1: an envelope of the wrong namespace is a `VersionMismatch` fault; a
/// SOAP 1.2 node adds the `Upgrade` header naming the envelopes it supports.
fn version_mismatch() -> Response {
    let body = format!(
        "<soap:Fault><faultcode>soap:VersionMismatch</faultcode><faultstring>the envelope must be SOAP 1.1 \
         ({SOAP11_NS}) with Content-Type text/xml, or SOAP 1.2 ({SOAP12_NS}) with application/soap+xml</faultstring></soap:Fault>"
    );
    envelope(Version::Soap11, StatusCode::INTERNAL_SERVER_ERROR, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_carry_code_status_and_problems() {
        let e = ApiError::unprocessable(
            "some records are invalid",
            vec![serde_json::json!({"record": 1, "field": "/x", "message": "bad <x>"})],
        );
        let detail = error_detail(&e);
        assert!(detail.contains("<dtm:Code>invalid_records</dtm:Code><dtm:Status>422</dtm:Status>"), "{detail}");
        assert!(detail.contains("<dtm:Record>1</dtm:Record><dtm:Field>/x</dtm:Field><dtm:Message>bad &lt;x&gt;"));
        let parsed = xml::parse(detail.as_bytes()).expect("the detail is well-formed");
        assert_eq!(parsed.child(NS, "Problem").and_then(|p| p.child(NS, "Record")).map(|r| r.text.as_str()), Some("1"));
    }

    #[test]
    fn the_wsdl_is_well_formed() {
        let doc = wsdl::document("https://127.0.0.1:8443/soap/v1");
        let root = xml::parse(doc.as_bytes()).expect("well-formed");
        assert_eq!(root.local, "definitions");
    }
}
