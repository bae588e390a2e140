//! `dtm.v1.Ingest`: record submission over gRPC for source systems, served on the node's gRPC port
//! beside the node-to-node `RaftService`. It needs no client certificate (the port's TLS asks for
//! one but does not require it; `RaftService` refuses callers without one).
//!
//! Everything is the REST submit path (`api::records::submit`): the same credentials (metadata
//! `x-api-key` or `authorization`), validation and answers. `status` is the one place where
//! `ApiError`s become gRPC statuses.

use std::pin::Pin;
use std::sync::Arc;

use axum::http::HeaderMap;
use axum::http::StatusCode;
use dtm_proto::v1 as pb;
use futures::Stream;
use futures::StreamExt;
use serde_json::Value;
use serde_json::json;
use tonic::Code;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::metadata::MetadataMap;
use tonic::metadata::MetadataValue;

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::error::ApiResult;
use crate::api::records;
use crate::limits::RECORDS_BODY_BYTES_MAX;
use crate::limits::RECORDS_PER_REQUEST_MAX;

/// A request message: the records' JSON text plus a few bytes of framing per record.
pub const INGEST_MESSAGE_BYTES_MAX: usize = RECORDS_BODY_BYTES_MAX + 16 * RECORDS_PER_REQUEST_MAX + 64 * 1024;
/// Submissions of one stream in flight at once; answers still come in request order. More
/// requests wait in the HTTP/2 flow control window, so a fast sender is slowed, not buffered.
pub const STREAM_IN_FLIGHT_MAX: usize = 8;
/// Error details copied into the `dtm-error-details-bin` metadata of a failed `Submit`; clients
/// limit metadata (8 KiB by default in gRPC C core), so more are counted, not sent. `SubmitStream`
/// answers carry every detail in the message.
pub const METADATA_DETAILS_MAX: usize = 20;
pub const METADATA_DETAILS_BYTES_MAX: usize = 4 * 1024;

/// The service; its state is set once the node's API state exists (the gRPC port starts earlier,
/// for Raft). Until then calls are `UNAVAILABLE`.
pub struct IngestService {
    state: Arc<tokio::sync::OnceCell<AppState>>,
}

pub fn server(state: Arc<tokio::sync::OnceCell<AppState>>) -> pb::ingest_server::IngestServer<IngestService> {
    pb::ingest_server::IngestServer::new(IngestService { state })
        .max_decoding_message_size(INGEST_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(INGEST_MESSAGE_BYTES_MAX)
}

impl IngestService {
    fn state(&self) -> Result<AppState, Status> {
        self.state.get().cloned().ok_or_else(|| Status::unavailable("this node is starting; retry"))
    }
}

/// The credentials of a call, as the HTTP headers the REST API reads.
fn credentials(metadata: &MetadataMap) -> HeaderMap {
    let all = metadata.clone().into_headers();
    let mut headers = HeaderMap::new();
    for name in ["x-api-key", "authorization", "x-request-id"] {
        if let Some(v) = all.get(name) {
            headers.insert(name, v.clone());
        }
    }
    headers
}

/// The records as the JSON array the REST API takes. Each entry must be exactly one JSON value, so
/// that joining them cannot change the array's shape.
fn records_body(records: &[String]) -> ApiResult<bytes::Bytes> {
    let mut problems = Vec::new();
    let mut body = Vec::with_capacity(records.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
    body.push(b'[');
    for (i, r) in records.iter().enumerate() {
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(r) {
            problems.push(json!({"record": i, "field": "", "message": format!("malformed JSON: {e}")}));
        }
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(r.as_bytes());
    }
    body.push(b']');
    if !problems.is_empty() {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", "some records are not JSON");
        e.details = problems;
        return Err(e);
    }
    Ok(body.into())
}

/// `submit_one` with an audit context: a stored submission carries its entry into the log; a
/// refused one is queued as an explicit event (gRPC has no HTTP layer to do it).
async fn audited(
    state: &AppState,
    peer: Option<std::net::IpAddr>,
    headers: &HeaderMap,
    r: pb::SubmitRequest,
) -> ApiResult<pb::SubmitResponse> {
    let metrics_started = std::time::Instant::now(); // F5
    let bytes_in = r.records_json.iter().map(|x| x.len() as u64).sum();
    let ip = peer.map(|p| crate::gateway::ip::client_ip(p, headers, state.gateway.trusted_proxies()).to_string());
    let ctx = crate::audit::Context::new("grpc", ip.unwrap_or_default(), crate::api::request_id(headers), bytes_in);
    let started = std::time::Instant::now();
    let (answer, mut ctx) = crate::audit::scope(ctx, submit_one(state, headers, r)).await;
    let code = answer.as_ref().err().map_or(200, |e| e.status.as_u16());
    crate::perf::record("grpc", crate::perf::class_of(code), started.elapsed()); // A5.3 response times
    if let Err(e) = &answer
        && ctx.detail.is_none()
    {
        ctx.detail = Some(serde_json::json!({"error": e.code})); // A5.3 failure cause
    }
    if let Some(event) = ctx.event(state.node.id, crate::api::now_ms(), "POST", "dtm.v1.Ingest/Submit", code) {
        state.audit.push(event);
    }
    crate::metrics::observe_grpc("Submit", code, metrics_started.elapsed()); // F5
    answer
}

async fn submit_one(state: &AppState, headers: &HeaderMap, r: pb::SubmitRequest) -> ApiResult<pb::SubmitResponse> {
    let requested = Some(r.source.as_str()).filter(|s| !s.is_empty());
    let submitter = records::Submitter::authenticate(state, headers, requested).await?;
    let idempotency_key =
        Some(r.idempotency_key.as_str()).filter(|k| !k.is_empty()).map(records::idempotency_key).transpose()?;
    let schema_version = Some(r.schema_version).filter(|v| *v > 0);
    let body = records_body(&r.records_json)?;
    let request_id = match crate::api::request_id(headers) {
        id if id.is_empty() => uuid::Uuid::new_v4().to_string(),
        id => id,
    };
    let how = records::Submit { idempotency_key, request_id, channel: "grpc" };
    let answer = records::submit(state, submitter, &r.dataset, schema_version, body, how).await?;
    let b = &answer.body;
    let num = |k: &str| b[k].as_u64().unwrap_or(0);
    let strings = |k: &str| {
        b[k].as_array().map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect()).unwrap_or_default()
    };
    Ok(pb::SubmitResponse {
        accepted: num("accepted"),
        ids: strings("ids"),
        commit_index: num("commit_index"),
        schema_version: u32::try_from(num("schema_version")).unwrap_or(0),
        stored: num("stored"),
        duplicates: num("duplicates"),
        conflicts: num("conflicts"),
        outcomes: strings("outcomes"),
        replayed: answer.replayed,
        receipt_json: crate::receipt::text_of(b),
    })
}

/// The error as a message (answers of `SubmitStream`), with every detail.
fn error_message(e: &ApiError) -> pb::Error {
    pb::Error {
        code: e.code.to_string(),
        message: e.message.clone(),
        details: e
            .details
            .iter()
            .map(|d| pb::RecordProblem {
                record: d.get("record").and_then(Value::as_i64).unwrap_or(-1),
                field: d.get("field").and_then(Value::as_str).unwrap_or_default().to_string(),
                message: d.get("message").and_then(Value::as_str).unwrap_or_default().to_string(),
            })
            .collect(),
        http_status: u32::from(e.status.as_u16()),
        retry_after_seconds: retry_after(e).unwrap_or(0),
    }
}

fn retry_after(e: &ApiError) -> Option<u64> {
    matches!(e.status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE)
        .then(|| e.retry_after_seconds.unwrap_or(crate::limits::RETRY_AFTER_SECONDS))
}

/// The one place where `ApiError`s become gRPC statuses. The metadata carries the REST error:
/// `dtm-error-code`, `dtm-http-status`, `retry-after` (429, 503) and the first details as JSON in
/// `dtm-error-details-bin`; the message names the first problems too.
pub fn status(e: &ApiError) -> Status {
    let code = match e.status {
        StatusCode::BAD_REQUEST
        | StatusCode::PAYLOAD_TOO_LARGE
        | StatusCode::UNSUPPORTED_MEDIA_TYPE
        | StatusCode::UNPROCESSABLE_ENTITY => Code::InvalidArgument,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::NotFound,
        // A reused idempotency key names something that exists; other conflicts (two concurrent
        // changes) can be retried after reading again.
        StatusCode::CONFLICT if e.code == "idempotency_conflict" => Code::AlreadyExists,
        StatusCode::CONFLICT => Code::Aborted,
        StatusCode::TOO_MANY_REQUESTS => Code::ResourceExhausted,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
        StatusCode::NOT_IMPLEMENTED => Code::Unimplemented,
        StatusCode::INTERNAL_SERVER_ERROR => Code::Internal,
        _ => Code::Unknown,
    };
    let mut message = format!("{}: {}", e.code, e.message);
    for d in e.details.iter().take(3) {
        let record = d.get("record").and_then(Value::as_i64).map(|r| format!("record {r} ")).unwrap_or_default();
        let field = d.get("field").and_then(Value::as_str).unwrap_or_default();
        let what = d.get("message").and_then(Value::as_str).unwrap_or_default();
        message.push_str(&format!("; {record}{field}: {what}"));
    }
    if e.details.len() > 3 {
        message.push_str(&format!("; and {} more", e.details.len() - 3));
    }
    let mut md = MetadataMap::new();
    if let Ok(v) = MetadataValue::try_from(e.code) {
        md.insert("dtm-error-code", v);
    }
    md.insert("dtm-http-status", MetadataValue::from(e.status.as_u16()));
    if let Some(after) = retry_after(e) {
        md.insert("retry-after", MetadataValue::from(after));
    }
    if !e.details.is_empty() {
        let mut shown: Vec<&Value> = e.details.iter().take(METADATA_DETAILS_MAX).collect();
        let mut bytes = serde_json::to_vec(&shown).unwrap_or_default();
        while bytes.len() > METADATA_DETAILS_BYTES_MAX && !shown.is_empty() {
            shown.pop();
            bytes = serde_json::to_vec(&shown).unwrap_or_default();
        }
        md.insert_bin("dtm-error-details-bin", tonic::metadata::MetadataValue::from_bytes(&bytes));
    }
    Status::with_metadata(code, message, md)
}

type AnswerStream = Pin<Box<dyn Stream<Item = Result<pb::SubmitStreamResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::ingest_server::Ingest for IngestService {
    async fn submit(&self, req: Request<pb::SubmitRequest>) -> Result<Response<pb::SubmitResponse>, Status> {
        let state = self.state()?;
        let peer = req.remote_addr().map(|a| a.ip());
        let headers = credentials(req.metadata());
        // The same gateway as HTTP: address rules and blocks, the ingest rate limit, shedding.
        let _permit = crate::gateway::admit_ingest(&state, peer, &headers).map_err(|e| status(&e))?;
        let answer = audited(&state, peer, &headers, req.into_inner()).await;
        if let Err(e) = &answer {
            crate::gateway::note_outcome(&state, peer, e);
        }
        answer.map(Response::new).map_err(|e| status(&e))
    }

    type SubmitStreamStream = AnswerStream;

    async fn submit_stream(
        &self,
        req: Request<tonic::Streaming<pb::SubmitRequest>>,
    ) -> Result<Response<AnswerStream>, Status> {
        let state = self.state()?;
        let peer = req.remote_addr().map(|a| a.ip());
        let headers = credentials(req.metadata());
        // A stream with no valid credential is refused before it starts; each submission is
        // checked again (a key revoked meanwhile is refused from its position in the log on), and
        // goes through the gateway like an HTTP request (address rules, rate limit, shedding).
        // Admission only: the permit is for each submission below, not for the whole stream.
        let admitted = crate::gateway::admit_ingest(&state, peer, &headers).map_err(|e| status(&e))?;
        drop(admitted);
        if let Err(e) = crate::api::auth::require(&state, &headers, &crate::api::auth::SUBMIT).await {
            crate::gateway::note_outcome(&state, peer, &e);
            return Err(status(&e));
        }
        let headers = Arc::new(headers);
        let answers = req
            .into_inner()
            .map(move |item| {
                let (state, headers) = (state.clone(), headers.clone());
                async move {
                    let r = item?;
                    let answer = match crate::gateway::admit_ingest(&state, peer, &headers) {
                        Ok(_permit) => audited(&state, peer, &headers, r).await,
                        Err(e) => Err(e),
                    };
                    Ok(match answer {
                        Ok(ok) => pb::submit_stream_response::Result::Ok(ok),
                        Err(e) => {
                            crate::gateway::note_outcome(&state, peer, &e);
                            pb::submit_stream_response::Result::Error(error_message(&e))
                        }
                    })
                }
            })
            .buffered(STREAM_IN_FLIGHT_MAX)
            .enumerate()
            .map(|(i, r): (usize, Result<_, Status>)| {
                r.map(|result| pb::SubmitStreamResponse { sequence: i as u64, result: Some(result) })
            });
        Ok(Response::new(Box::pin(answers)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_joined_only_when_each_is_one_value() {
        let ok = records_body(&["{\"a\":1}".into(), "{\"b\":2}".into()]).expect("valid");
        assert_eq!(&ok[..], b"[{\"a\":1},{\"b\":2}]");
        let err = records_body(&["{\"a\":1}],[{\"b\":2}".into()]).expect_err("two values in one entry");
        assert_eq!((err.code, err.details.len()), ("malformed_json", 1));
    }

    #[test]
    fn errors_map_to_codes_with_metadata() {
        let e = ApiError::unprocessable("invalid", vec![json!({"record": 2, "field": "/x", "message": "no"})]);
        let s = status(&e);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.metadata().get("dtm-error-code").and_then(|v| v.to_str().ok()), Some("invalid_records"));
        assert!(s.message().contains("record 2 /x: no"), "{}", s.message());
        assert_eq!(status(&ApiError::unauthorized("x")).code(), Code::Unauthenticated);
        assert_eq!(status(&ApiError::forbidden("x")).code(), Code::PermissionDenied);
        assert_eq!(status(&ApiError::unknown_dataset("d")).code(), Code::NotFound);
        let busy = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "source_busy", "busy").with_retry_after(2);
        let s = status(&busy);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.metadata().get("retry-after").and_then(|v| v.to_str().ok()), Some("2"));
        assert_eq!(status(&ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "u", "u")).code(), Code::Unavailable);
        assert_eq!(
            status(&ApiError::new(StatusCode::CONFLICT, "idempotency_conflict", "c")).code(),
            Code::AlreadyExists
        );
    }
}
