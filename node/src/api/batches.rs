//! Batch uploads (`POST /datasets/{id}/batches`) and their receipts (`GET /batches/{batch_id}`).
//!
//! A batch is read as it arrives, never held whole: the body's frames go through a bounded queue to
//! a blocking parser (`dtm-formats`), which cuts the records into chunks of at most
//! `BATCH_CHUNK_RECORDS_MAX` records and `BATCH_CHUNK_BYTES_MAX` bytes. Each chunk goes through the
//! source's actors like a real-time request (validation, enrichment, masking, natural key) and is
//! proposed as one `Submission` through group commit, at most `BATCH_CHUNKS_IN_FLIGHT_MAX` at once,
//! with the idempotency key `batch:<batch id>:<chunk>`, so a retried chunk is never stored twice.
//! Rows that fail validation are left out of their chunk and listed in the receipt. XML records are
//! first validated by the parser against the XSD the dataset version publishes (A3.2,
//! `api::xsd::validator`, one record at a time); a record the XSD refuses is such a row.
//!
//! Three cases read the body twice, from a sealed spool file (`crate::spool`): Parquet and XLSX
//! (their readers start at the end of the file), `?on_error=reject` (everything is validated before
//! anything is stored) and a manifest (`X-Batch-Count`, `X-Batch-SHA256`: checked before anything is
//! stored). Every batch that got as far as reading ends with a `BatchReceipt` in the replicated state.

use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use bytes::Bytes;
use dtm_actors::PipelineError;
use dtm_cluster::tables;
use dtm_dataset::CompiledDataset;
use dtm_dataset::SourceForm;
use dtm_formats::Columns;
use dtm_formats::Format;
use dtm_formats::FormatError;
use dtm_model::state;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::Deserialize;
use serde_json::Value;
use serde_json::json;
use sha2::Digest;
use sha2::Sha256;
use tokio::sync::Semaphore;
use tokio::sync::mpsc;

use super::AppState;
use super::auth;
use super::error::ApiError;
use super::error::ApiResult;
use crate::limits::*;
use crate::pipeline::Job;
use crate::pipeline::Rejection;
use crate::spool::Spool;
use crate::spool::SpoolWriter;

/// What to do with invalid rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Store the valid rows, list the invalid ones (the default).
    Continue,
    /// All or nothing: any invalid row and nothing is stored.
    Reject,
}

impl OnError {
    fn name(self) -> &'static str {
        match self {
            OnError::Continue => "continue",
            OnError::Reject => "reject",
        }
    }
}

/// What the sender declared about the batch.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    pub count: Option<u64>,
    pub sha256: Option<[u8; 32]>,
}

impl Manifest {
    fn given(&self) -> bool {
        self.count.is_some() || self.sha256.is_some()
    }
}

/// One batch as a transport (REST, SOAP, gRPC) hands it over, after authentication.
#[derive(Debug, Clone)]
pub struct BatchRequest {
    pub source: String,
    /// The API key used (empty for other credentials); `apply` checks it is still valid.
    pub key_id: String,
    pub dataset: String,
    pub format: Format,
    pub on_error: OnError,
    pub manifest: Manifest,
    /// The sender's `Idempotency-Key`: the same key gives the same batch id and the first receipt.
    pub idempotency_key: Option<String>,
    pub request_id: String,
    /// Who sent it and from where (the audit context of the request that carried it).
    pub audit: crate::audit::Context,
}

/// The body as a stream of byte chunks; an `Err` means the upload broke off.
pub type BodyStream = BoxStream<'static, Result<Bytes, String>>;

/// Batches in progress on this node.
fn slots() -> &'static Arc<Semaphore> {
    static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    SLOTS.get_or_init(|| Arc::new(Semaphore::new(BATCHES_IN_FLIGHT_MAX)))
}

// ---- HTTP ----

#[derive(Deserialize)]
pub struct PostQuery {
    on_error: Option<String>,
    /// The source a data-entry user submits for.
    source: Option<String>,
}

pub async fn post_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(dataset): Path<String>,
    Query(q): Query<PostQuery>,
    body: Body,
) -> ApiResult<Response> {
    let req = match prepare(&state, &headers, dataset, q).await {
        Ok(req) => req,
        Err(e) => {
            // Refused before the body was read: read and drop it (bounded), so that a client still
            // uploading sees this answer instead of a connection closed under it.
            let declared = headers
                .get(axum::http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            super::discard(body, declared).await;
            return Err(e);
        }
    };
    let stream = body.into_data_stream().map(|r| r.map_err(|e| e.to_string())).boxed();
    let receipt = ingest_stream(&state, req, stream).await?;
    let mut answer = receipt_json(&receipt);
    crate::receipt::attach_batch(&state, &receipt, &mut answer);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// Everything a batch request is checked for before its body is read: the credential, the media
/// type, the options, the manifest headers, and that the dataset exists.
async fn prepare(state: &AppState, headers: &HeaderMap, dataset: String, q: PostQuery) -> ApiResult<BatchRequest> {
    let (source, key_id) = auth::require_submitter(state, headers, q.source.as_deref()).await?;
    let content_type = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let format = Format::from_media_type(content_type).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "a batch is one of: {} (got `{content_type}`)",
                Format::ALL.iter().map(|f| f.media_type()).collect::<Vec<_>>().join(", ")
            ),
        )
    })?;
    let on_error = match q.on_error.as_deref() {
        None | Some("continue") => OnError::Continue,
        Some("reject") => OnError::Reject,
        Some(other) => {
            return Err(ApiError::bad_request(format!("unknown on_error `{other}` (continue or reject)")));
        }
    };
    let manifest = manifest(headers)?;
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v.to_str().ok().filter(|k| !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_BYTES_MAX);
            Some(
                k.ok_or_else(|| ApiError::bad_request("Idempotency-Key must be 1-200 visible ASCII characters"))?
                    .to_string(),
            )
        }
    };
    if !super::valid_id(&dataset) {
        return Err(ApiError::unknown_dataset(&dataset));
    }
    super::catalog::dataset_version(state, &dataset, None).await?;
    Ok(BatchRequest {
        source,
        key_id,
        dataset,
        format,
        on_error,
        manifest,
        idempotency_key,
        request_id: super::request_id(headers),
        audit: crate::audit::current().unwrap_or_default(),
    })
}

fn manifest(headers: &HeaderMap) -> ApiResult<Manifest> {
    let text = |name: &str| headers.get(name).map(|v| v.to_str().map(str::trim));
    let count = match text("x-batch-count") {
        None => None,
        Some(v) => Some(
            v.ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("X-Batch-Count must be a number of records"))?,
        ),
    };
    let sha256 = match text("x-batch-sha256") {
        None => None,
        Some(v) => Some(
            v.ok()
                .and_then(|v| hex::decode(v).ok())
                .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                .ok_or_else(|| ApiError::bad_request("X-Batch-SHA256 must be 64 hex digits"))?,
        ),
    };
    Ok(Manifest { count, sha256 })
}

/// Who may read a receipt: the source that sent the batch, an admin, an auditor.
pub async fn get_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(batch_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let p = auth::authenticate(&state, &headers).await?;
    let privileged = p.has_role(auth::Role::Admin) || p.has_role(auth::Role::Auditor);
    if !privileged && p.source_id.is_empty() && !p.has_role(auth::Role::Source) {
        return Err(ApiError::forbidden("this operation needs the batch's source, the auditor or the admin role"));
    }
    crate::audit::note_operation("batch.read", &format!("batch/{batch_id}"));
    let not_found = || ApiError::not_found(format!("batch `{batch_id}` does not exist"));
    if batch_id.is_empty() || batch_id.len() > dtm_cluster::batch::BATCH_ID_BYTES_MAX || !super::valid_id(&batch_id) {
        return Err(not_found());
    }
    let receipt =
        super::lookup_fresh::<state::BatchReceipt>(&state, &tables::batch(&batch_id)).await?.ok_or_else(not_found)?;
    let own_source = match &p.subject {
        auth::Subject::ApiKey { source_id, .. } => source_id == &receipt.source,
        _ => !p.source_id.is_empty() && p.source_id == receipt.source,
    };
    // Another source's batch is as invisible as one that does not exist.
    if !privileged && !own_source {
        return Err(not_found());
    }
    let mut answer = receipt_json(&receipt);
    crate::receipt::attach_batch(&state, &receipt, &mut answer);
    Ok(Json(answer))
}

/// The receipt as clients see it.
pub fn receipt_json(r: &state::BatchReceipt) -> Value {
    let errors: Vec<Value> =
        r.errors.iter().map(|e| json!({"position": e.position, "field": e.field, "message": e.message})).collect();
    json!({
        "batch_id": r.batch_id,
        "status": r.status,
        "source": r.source,
        "dataset": r.dataset,
        "format": r.format,
        "on_error": r.on_error,
        "received": r.received,
        "accepted": r.accepted,
        "rejected": r.rejected,
        "duplicates": r.duplicates,
        "conflicts": r.conflicts,
        "stored": r.accepted.saturating_sub(r.duplicates),
        "errors": errors,
        "error_count": r.error_count,
        "commit_index": r.records_commit_index,
        "chunks": r.chunks,
        "content_sha256": hex::encode(&r.content_sha256),
        "content_bytes": r.content_bytes,
        "manifest": {
            "count": if r.manifest_count_given { Some(r.manifest_count) } else { None },
            "sha256": if r.manifest_sha256.is_empty() { None } else { Some(hex::encode(&r.manifest_sha256)) },
            "reconciliation": r.reconciliation,
        },
        "schema_version": r.schema_version,
        "received_on_node": r.received_on_node,
        "started_at_ms": r.started_at_ms,
        "finished_at_ms": r.finished_at_ms,
        "error": if r.error_code.is_empty() { Value::Null } else { json!({"code": r.error_code, "message": r.error_message}) },
    })
}

/// The deadline of a request: batch uploads get `BATCH_REQUEST_TIMEOUT`, everything else
/// `REQUEST_TIMEOUT`. Past it the answer is 503.
pub async fn deadline(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let is_batch = req.method() == axum::http::Method::POST && req.uri().path().ends_with("/batches");
    let limit = if is_batch { BATCH_REQUEST_TIMEOUT } else { REQUEST_TIMEOUT };
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "the request took too long; retry")
            .into_response(),
    }
}

// ---- The batch itself ----

/// Everything the chunks of one batch share.
struct Ctx {
    state: AppState,
    req: BatchRequest,
    batch_id: String,
    compiled: Arc<CompiledDataset>,
    form: SourceForm,
    masking_key: Arc<Vec<u8>>,
    columns: Columns,
    /// The XSD an XML batch is validated against (`None` for the other formats).
    xsd: Option<Arc<XsdForm>>,
    started_at_ms: u64,
}

/// The published XSD of the dataset version a batch is checked against (A3.2).
struct XsdForm {
    dataset: String,
    version: u32,
    text: String,
    /// The required properties (to name a missing one).
    required: Vec<String>,
}

/// What the parser hands on: consecutive records of the file, as JSON elements, and the rows that
/// could not become records.
struct Chunk {
    number: u32,
    /// The records' JSON, one after another; `bounds` cuts them apart.
    json: Vec<u8>,
    bounds: Vec<(usize, usize)>,
    positions: Vec<String>,
    problems: Vec<state::BatchRowError>,
}

impl Chunk {
    fn rows(&self) -> u64 {
        (self.bounds.len() + self.problems.len()) as u64
    }

    /// A JSON array of the records at `keep`.
    fn array(&self, keep: &[usize]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.json.len() + keep.len() + 2);
        out.push(b'[');
        for (i, &k) in keep.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let (a, b) = self.bounds[k];
            out.extend_from_slice(&self.json[a..b]);
        }
        out.push(b']');
        out
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Count rows only (a manifest to check).
    Count,
    /// Run the pipeline, store nothing (`on_error=reject`, first pass).
    Validate,
    /// Run the pipeline and commit.
    Commit,
}

/// Counts over a pass.
#[derive(Default)]
struct Tally {
    received: u64,
    accepted: u64,
    rejected: u64,
    duplicates: u64,
    conflicts: u64,
    error_count: u64,
    errors: Vec<state::BatchRowError>,
    commit_index: u64,
    chunks: u32,
}

impl Tally {
    fn error(&mut self, e: state::BatchRowError) {
        self.error_count += 1;
        if self.errors.len() < BATCH_ERRORS_LISTED_MAX {
            self.errors.push(e);
        }
    }

    fn add(&mut self, o: ChunkOutcome) {
        self.received += o.rows;
        self.accepted += o.accepted;
        self.rejected += o.errors.len() as u64;
        self.duplicates += o.duplicates;
        self.conflicts += o.conflicts;
        self.commit_index = self.commit_index.max(o.commit_index);
        self.chunks += 1;
        for e in o.errors {
            self.error(e);
        }
    }
}

#[derive(Default)]
struct ChunkOutcome {
    rows: u64,
    accepted: u64,
    duplicates: u64,
    conflicts: u64,
    commit_index: u64,
    errors: Vec<state::BatchRowError>,
}

/// What came over the wire.
struct Arrived {
    sha256: [u8; 32],
    bytes: u64,
    spool: Option<Spool>,
}

/// Ingests one batch and returns its receipt (also recorded in the replicated state). The entry
/// point for every transport: REST here, SOAP and gRPC may call it with their own body stream.
pub async fn ingest_stream(state: &AppState, req: BatchRequest, body: BodyStream) -> ApiResult<state::BatchReceipt> {
    let Ok(_slot) = slots().clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "batches_busy",
            format!("this node is handling {BATCHES_IN_FLIGHT_MAX} batches; retry shortly or on another node"),
        ));
    };
    let source = super::lookup_fresh::<state::Source>(state, &tables::source(&req.source))
        .await?
        .ok_or_else(|| ApiError::unauthorized("the source of this key is not registered"))?;
    if !super::valid_id(&req.dataset) {
        return Err(ApiError::unknown_dataset(&req.dataset));
    }
    if !source.allowed_datasets.is_empty() && !source.allowed_datasets.iter().any(|d| d == &req.dataset) {
        return Err(ApiError::forbidden(format!("source `{}` may not send to dataset `{}`", req.source, req.dataset)));
    }
    let ds = super::catalog::dataset_version(state, &req.dataset, None).await?;
    let compiled = state.catalog.compiled(&ds).map_err(ApiError::internal)?;
    let batch_id = match &req.idempotency_key {
        Some(k) => {
            let mut h = Sha256::new();
            h.update(req.source.as_bytes());
            h.update([0]);
            h.update(k.as_bytes());
            hex::encode(&h.finalize()[..16])
        }
        None => uuid::Uuid::new_v4().simple().to_string(),
    };
    if req.idempotency_key.is_some()
        && let Some(prev) =
            state.node.reader.get_msg::<state::BatchReceipt>(&tables::batch(&batch_id)).map_err(ApiError::internal)?
    {
        // A retry of a finished batch: its first account, nothing read or stored again.
        return Ok(prev);
    }
    // XML is checked against the XSD the version publishes, record by record, before the JSON
    // Schema (which still runs: it is the authority, and business rules and masking follow it).
    let xsd = if req.format == Format::Xml {
        let title = super::xsd::xsd_title(&compiled.def.title, &req.dataset, compiled.version);
        let text = super::xsd::validator::published(&req.dataset, compiled.version, &title, &compiled.def.schema)
            .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "no_xml_form", m))?;
        let required = compiled.def.schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default();
        Some(Arc::new(XsdForm { dataset: req.dataset.clone(), version: compiled.version, text, required }))
    } else {
        None
    };
    let ctx = Arc::new(Ctx {
        state: state.clone(),
        columns: Columns::from_json_schema(&compiled.def.schema),
        xsd,
        form: source.form.parse::<SourceForm>().unwrap_or(SourceForm::Raw),
        masking_key: super::masking_key(state).await?,
        compiled,
        batch_id,
        req,
        started_at_ms: super::now_ms(),
    });
    let format = ctx.req.format;
    let spooled = format.needs_random_access() || ctx.req.on_error == OnError::Reject || ctx.req.manifest.given();
    if !spooled {
        // One pass: parse as it arrives, commit as it is parsed.
        let (bytes_tx, bytes_rx) = mpsc::channel(BATCH_BODY_FRAMES_QUEUED_MAX);
        let pump = tokio::spawn(pump(body, Some(bytes_tx), None, BATCH_STREAM_BYTES_MAX));
        let (tally, outcome) = run_pass(&ctx, Input::Stream(bytes_rx), Mode::Commit).await;
        let arrived = pump.await.map_err(ApiError::internal)?;
        return finish(&ctx, tally, outcome, arrived).await;
    }
    // Two passes. The first spools (and, for streamed formats, parses as it arrives).
    let limit = if format.needs_random_access() { BATCH_RANDOM_ACCESS_BYTES_MAX } else { BATCH_SPOOL_BYTES_MAX };
    let writer = SpoolWriter::create(limit).map_err(ApiError::internal)?;
    let first_mode = if ctx.req.on_error == OnError::Reject { Mode::Validate } else { Mode::Count };
    let (first, arrived) = if format.needs_random_access() {
        let arrived = pump(body, None, Some(writer), limit).await;
        let arrived = match arrived {
            Ok(a) => a,
            Err(e) => return Err(refuse(&ctx, Tally::default(), None, e).await),
        };
        let Some(spool) = arrived.spool else { return Err(ApiError::internal("spool missing")) };
        let spool = Arc::new(spool);
        let first = run_pass(&ctx, Input::Spool(spool.clone()), first_mode).await;
        (first, Arrived { sha256: arrived.sha256, bytes: arrived.bytes, spool: Arc::into_inner(spool) })
    } else {
        let (bytes_tx, bytes_rx) = mpsc::channel(BATCH_BODY_FRAMES_QUEUED_MAX);
        let pump = tokio::spawn(pump(body, Some(bytes_tx), Some(writer), limit));
        let first = run_pass(&ctx, Input::Stream(bytes_rx), first_mode).await;
        let arrived = match pump.await.map_err(ApiError::internal)? {
            Ok(a) => a,
            Err(e) => return Err(refuse(&ctx, first.0, None, e).await),
        };
        (first, arrived)
    };
    let (tally, outcome) = first;
    if let Err(e) = outcome {
        return Err(refuse(&ctx, tally, Some(&arrived), e).await);
    }
    let reconciliation = reconcile(&ctx.req.manifest, &tally, &arrived);
    if let Some(mismatch) = &reconciliation {
        let e = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "manifest_mismatch",
            format!("the batch does not match its manifest ({mismatch}); nothing was stored"),
        );
        return Err(refuse(&ctx, tally, Some(&arrived), e).await);
    }
    if ctx.req.on_error == OnError::Reject && tally.error_count > 0 {
        let mut e = ApiError::unprocessable(
            format!("{} rows are invalid; with on_error=reject nothing was stored", tally.error_count),
            Vec::new(),
        );
        e.details = tally
            .errors
            .iter()
            .map(|e| json!({"position": e.position, "field": e.field, "message": e.message}))
            .collect();
        return Err(refuse(&ctx, tally, Some(&arrived), e).await);
    }
    let Some(spool) = arrived.spool else { return Err(ApiError::internal("spool missing")) };
    let spool = Arc::new(spool);
    let (tally, outcome) = run_pass(&ctx, Input::Spool(spool.clone()), Mode::Commit).await;
    drop(spool);
    finish(&ctx, tally, outcome, Ok(Arrived { sha256: arrived.sha256, bytes: arrived.bytes, spool: None })).await
}

/// `None` when the manifest (if any) matches what arrived, else what differs.
fn reconcile(m: &Manifest, tally: &Tally, arrived: &Arrived) -> Option<String> {
    let mut diffs = Vec::new();
    if let Some(n) = m.count
        && n != tally.received
    {
        diffs.push(format!("X-Batch-Count says {n} records, the body holds {}", tally.received));
    }
    if let Some(h) = m.sha256
        && h != arrived.sha256
    {
        diffs.push(format!("X-Batch-SHA256 says {}, the body's is {}", hex::encode(h), hex::encode(arrived.sha256)));
    }
    if diffs.is_empty() { None } else { Some(diffs.join("; ")) }
}

fn reconciliation_text(m: &Manifest, tally: &Tally, arrived: Option<&Arrived>) -> String {
    match (m.given(), arrived) {
        (false, _) => "none".into(),
        (true, None) => "not checked: the body did not arrive whole".into(),
        (true, Some(a)) => match reconcile(m, tally, a) {
            None => "matched".into(),
            Some(d) => format!("mismatch: {d}"),
        },
    }
}

/// Reads the body: hashes and counts it, spools it, hands it to the parser.
async fn pump(
    mut body: BodyStream,
    to_parser: Option<mpsc::Sender<Result<Bytes, String>>>,
    mut spool: Option<SpoolWriter>,
    limit: u64,
) -> ApiResult<Arrived> {
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let fail = |to_parser: &Option<mpsc::Sender<Result<Bytes, String>>>, e: ApiError| {
        if let Some(tx) = to_parser {
            let _ = tx.try_send(Err(e.message.clone()));
        }
        e
    };
    loop {
        let next = match tokio::time::timeout(BATCH_BODY_IDLE_TIMEOUT, body.next()).await {
            Ok(n) => n,
            Err(_) => {
                let e = ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", "the upload stalled");
                return Err(fail(&to_parser, e));
            }
        };
        let Some(frame) = next else { break };
        let frame = match frame {
            Ok(f) => f,
            Err(_) => {
                return Err(fail(&to_parser, ApiError::bad_request("the upload broke off before its end")));
            }
        };
        total += frame.len() as u64;
        if total > limit {
            let e = ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("a batch of this format is at most {limit} bytes"),
            );
            return Err(fail(&to_parser, e));
        }
        hasher.update(&frame);
        if let Some(w) = spool.as_mut()
            && let Err(e) = w.write(&frame)
        {
            return Err(fail(&to_parser, ApiError::internal(format!("batch spool: {e}"))));
        }
        if let Some(tx) = &to_parser
            && tx.send(Ok(frame)).await.is_err()
        {
            // The parser stopped (a malformed file); its error is the answer. Without a spool
            // to complete, nothing more of the body is needed.
            if spool.is_none() {
                break;
            }
        }
    }
    let spool = match spool {
        Some(w) => Some(w.finish().map_err(|e| ApiError::internal(format!("batch spool: {e}")))?),
        None => None,
    };
    Ok(Arrived { sha256: hasher.finalize().into(), bytes: total, spool })
}

enum Input {
    Stream(mpsc::Receiver<Result<Bytes, String>>),
    Spool(Arc<Spool>),
}

/// A blocking `Read` over the body frames the pump sends.
struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, String>>,
    current: Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// One pass over the file: a blocking parser cuts chunks, this task runs them with at most
/// `BATCH_CHUNKS_IN_FLIGHT_MAX` in flight. Returns the counts and how the pass ended.
async fn run_pass(ctx: &Arc<Ctx>, input: Input, mode: Mode) -> (Tally, ApiResult<()>) {
    let (chunk_tx, mut chunk_rx) = mpsc::channel::<Chunk>(BATCH_CHUNKS_QUEUED_MAX);
    let format = ctx.req.format;
    let columns = ctx.columns.clone();
    let xsd = ctx.xsd.clone();
    let parser = tokio::task::spawn_blocking(move || parse(format, input, &columns, xsd.as_deref(), chunk_tx));
    let mut tally = Tally::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut failure: Option<ApiError> = None;
    while let Some(chunk) = chunk_rx.recv().await {
        while tasks.len() >= BATCH_CHUNKS_IN_FLIGHT_MAX {
            if let Some(done) = tasks.join_next().await {
                collect(&mut tally, &mut failure, done);
            }
        }
        if failure.is_some() {
            break;
        }
        if mode == Mode::Count {
            tally.add(ChunkOutcome { rows: chunk.rows(), errors: chunk.problems, ..Default::default() });
            continue;
        }
        tasks.spawn(run_chunk(ctx.clone(), chunk, mode));
    }
    // Stops the parser if we broke off early.
    drop(chunk_rx);
    while let Some(done) = tasks.join_next().await {
        collect(&mut tally, &mut failure, done);
    }
    let parsed = parser.await.unwrap_or_else(|e| Err(FormatError::Io(format!("the parser failed: {e}"))));
    if let Some(f) = failure {
        return (tally, Err(f));
    }
    match parsed {
        Ok(_) | Err(FormatError::Stopped) => (tally, Ok(())),
        Err(e) => (tally, Err(format_error(e))),
    }
}

fn collect(
    tally: &mut Tally,
    failure: &mut Option<ApiError>,
    done: Result<ApiResult<ChunkOutcome>, tokio::task::JoinError>,
) {
    match done {
        Ok(Ok(o)) => tally.add(o),
        Ok(Err(e)) => {
            failure.get_or_insert(e);
        }
        Err(e) => {
            failure.get_or_insert(ApiError::internal(format!("a batch chunk task failed: {e}")));
        }
    }
}

/// The one place where format errors become HTTP statuses.
fn format_error(e: FormatError) -> ApiError {
    let status = match &e {
        FormatError::Malformed { .. } | FormatError::Io(_) => StatusCode::BAD_REQUEST,
        FormatError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        FormatError::Refused { .. } | FormatError::WrongSchema { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        FormatError::Stopped => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut err = ApiError::new(status, e.code(), e.to_string());
    if let Some(p) = e.position() {
        err.details = vec![json!({"position": p})];
    }
    err
}

/// The blocking parser: records into chunks, chunks into the channel.
fn parse(
    format: Format,
    input: Input,
    columns: &Columns,
    xsd: Option<&XsdForm>,
    tx: mpsc::Sender<Chunk>,
) -> Result<u64, FormatError> {
    // Compiled once per version on this thread (libxml2 contexts stay on their thread).
    let mut check = match xsd {
        Some(x) => Some(
            super::xsd::validator::RecordCheck::new(&x.dataset, x.version, &x.text, x.required.clone())
                .map_err(|message| FormatError::Refused { format: "XML", message })?,
        ),
        None => None,
    };
    let check = check.as_mut().map(|c| c as &mut dyn dtm_formats::XmlCheck);
    let new_chunk =
        |number| Chunk { number, json: Vec::new(), bounds: Vec::new(), positions: Vec::new(), problems: Vec::new() };
    let mut chunk = new_chunk(0);
    let mut closed = false;
    let send = |chunk: &mut Chunk, closed: &mut bool| {
        let next = new_chunk(chunk.number + 1);
        let full = std::mem::replace(chunk, next);
        if tx.blocking_send(full).is_err() {
            *closed = true;
        }
    };
    let mut sink = |position: dtm_formats::Position, item: dtm_formats::Item| {
        match item {
            Ok(record) => {
                let bytes = serde_json::to_vec(&record).unwrap_or_default();
                if chunk.bounds.len() >= BATCH_CHUNK_RECORDS_MAX
                    || chunk.json.len() + bytes.len() > BATCH_CHUNK_BYTES_MAX
                {
                    send(&mut chunk, &mut closed);
                }
                let start = chunk.json.len();
                chunk.json.extend_from_slice(&bytes);
                chunk.bounds.push((start, chunk.json.len()));
                chunk.positions.push(position.0);
            }
            Err(p) => {
                if chunk.problems.len() >= BATCH_CHUNK_RECORDS_MAX {
                    send(&mut chunk, &mut closed);
                }
                chunk.problems.push(state::BatchRowError { position: position.0, field: p.field, message: p.message });
            }
        }
        if closed { std::ops::ControlFlow::Break(()) } else { std::ops::ControlFlow::Continue(()) }
    };
    let n = match input {
        Input::Stream(rx) => dtm_formats::read_stream_checked(
            format,
            ChannelReader { rx, current: Bytes::new() },
            columns,
            check,
            &mut sink,
        )?,
        Input::Spool(spool) => dtm_formats::read_random_checked(format, spool, columns, check, &mut sink)?,
    };
    if !chunk.bounds.is_empty() || !chunk.problems.is_empty() {
        let _ = tx.blocking_send(chunk);
    }
    Ok(n)
}

/// One chunk through the source's actors (dropping invalid rows) and, in `Commit` mode, into the log.
async fn run_chunk(ctx: Arc<Ctx>, chunk: Chunk, mode: Mode) -> ApiResult<ChunkOutcome> {
    let mut out = ChunkOutcome { rows: chunk.rows(), ..Default::default() };
    out.errors.extend(chunk.problems.iter().cloned());
    let mut keep: Vec<usize> = (0..chunk.bounds.len()).collect();
    let mut validated = None;
    for _round in 0..BATCH_VALIDATION_ROUNDS_MAX {
        if keep.is_empty() {
            break;
        }
        let job = Job {
            dataset: ctx.compiled.clone(),
            form: ctx.form,
            masking_key: ctx.masking_key.clone(),
            refs: ctx.state.refs.clone(),
            body: Bytes::from(chunk.array(&keep)),
        };
        let (permit, result) = run_job(&ctx, job).await?;
        match result {
            Ok(records) => {
                validated = Some((permit, records));
                break;
            }
            Err(problems) => {
                drop(permit);
                // One entry per rejected row (its first problem), so `rejected` counts rows.
                let mut bad = std::collections::BTreeSet::new();
                for p in problems {
                    let local = p.record.unwrap_or(0).min(keep.len().saturating_sub(1));
                    let row = keep[local];
                    if bad.insert(row) {
                        out.errors.push(state::BatchRowError {
                            position: chunk.positions[row].clone(),
                            field: p.field,
                            message: p.message,
                        });
                    }
                }
                keep.retain(|r| !bad.contains(r));
            }
        }
    }
    let Some((permit, records)) = validated else {
        for &row in &keep {
            out.errors.push(state::BatchRowError {
                position: chunk.positions[row].clone(),
                field: String::new(),
                message: "the row could not be validated".into(),
            });
        }
        return Ok(out);
    };
    if mode == Mode::Validate {
        out.accepted = records.len() as u64;
        return Ok(out);
    }
    let mut fingerprint = Sha256::new();
    fingerprint.update(ctx.req.dataset.as_bytes());
    fingerprint.update([0]);
    fingerprint.update(&chunk.json);
    let submission = state::Submission {
        dataset: ctx.req.dataset.clone(),
        source: ctx.req.source.clone(),
        idempotency_key: format!("batch:{}:{}", ctx.batch_id, chunk.number),
        fingerprint: fingerprint.finalize().to_vec(),
        request_id: ctx.req.request_id.clone(),
        received_at_ms: super::now_ms(),
        received_on_node: ctx.state.node.id,
        records,
        key_id: ctx.req.key_id.clone(),
        schema_version: ctx.compiled.version,
        classification: ctx.compiled.def.classification.clone(),
        priority: ctx.compiled.def.priority.clone(),
        channel: format!("batch:{}", ctx.req.format.name()),
        principal: ctx.req.audit.principal.clone(),
        client_ip: ctx.req.audit.client_ip.clone(),
        request_bytes: chunk.json.len() as u64,
        organisation: ctx.req.audit.organisation.clone(),
        new_connection: ctx.req.audit.new_connection && chunk.number == 0,
        batch_id: ctx.batch_id.clone(),
        ..Default::default()
    };
    let mut attempt = 0;
    let result = loop {
        attempt += 1;
        match ctx.state.node.submit(submission.clone()).await {
            Ok(r) => break r,
            Err(
                e @ (dtm_cluster::ClusterError::Unavailable
                | dtm_cluster::ClusterError::CutOff { .. }
                | dtm_cluster::ClusterError::Overloaded),
            ) if attempt < BATCH_CHUNK_ATTEMPTS_MAX => {
                tracing::debug!(error = %e, attempt, batch = %ctx.batch_id, "retrying a batch chunk");
                tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    drop(permit);
    if !result.error_code.is_empty() {
        return Err(super::error::rejected(&result.error_code, result.error_message));
    }
    for o in &result.outcomes {
        match o.as_str() {
            "duplicate" => out.duplicates += 1,
            "conflict" => out.conflicts += 1,
            _ => {}
        }
    }
    out.accepted = result.ids.len() as u64;
    out.commit_index = result.commit_index;
    Ok(out)
}

/// Admission and the three stages, waiting out a full source queue. `Err(problems)` inside is a
/// chunk with invalid rows; the outer error ends the batch.
async fn run_job(
    ctx: &Ctx,
    job: Job,
) -> ApiResult<(dtm_actors::Permit, Result<Vec<state::RecordIn>, Vec<dtm_dataset::Problem>>)> {
    let state = &ctx.state;
    let source = &ctx.req.source;
    let mut job = Some(job);
    for attempt in 1..=BATCH_CHUNK_ATTEMPTS_MAX {
        let permit = match state.pipeline.admit(source) {
            Ok(p) => p,
            Err(PipelineError::Unavailable { .. }) if !state.pipeline.has_source(source) => {
                state.pipeline.add_source(source).await.map_err(ApiError::internal)?;
                continue;
            }
            Err(PipelineError::Busy { retry_after } | PipelineError::Unavailable { retry_after }) => {
                tokio::time::sleep(retry_after.min(Duration::from_millis(50 * attempt as u64))).await;
                continue;
            }
            Err(e) => return Err(super::pipeline_error(e)),
        };
        let Some(j) = job.take() else { break };
        let (permit, out) = state.pipeline.run(permit, j).await;
        return match out {
            Ok(records) => Ok((permit, Ok(records))),
            Err(PipelineError::Rejected(Rejection::Invalid(problems))) => Ok((permit, Err(problems))),
            Err(PipelineError::Rejected(other)) => {
                // The body is built here; anything else than invalid rows is this node's fault.
                Err(ApiError::internal(format!("a batch chunk was refused: {other:?}")))
            }
            Err(e) => Err(super::pipeline_error(e)),
        };
    }
    Err(super::pipeline_error(PipelineError::Busy { retry_after: Duration::from_secs(RETRY_AFTER_SECONDS) }))
}

fn receipt(
    ctx: &Ctx,
    tally: &Tally,
    arrived: Option<&Arrived>,
    status: &str,
    error: Option<&ApiError>,
) -> state::BatchReceipt {
    let m = &ctx.req.manifest;
    state::BatchReceipt {
        batch_id: ctx.batch_id.clone(),
        source: ctx.req.source.clone(),
        dataset: ctx.req.dataset.clone(),
        format: ctx.req.format.name().into(),
        status: status.into(),
        received: tally.received,
        accepted: tally.accepted,
        rejected: tally.rejected,
        duplicates: tally.duplicates,
        conflicts: tally.conflicts,
        content_sha256: arrived.map(|a| a.sha256.to_vec()).unwrap_or_default(),
        content_bytes: arrived.map_or(0, |a| a.bytes),
        manifest_count_given: m.count.is_some(),
        manifest_count: m.count.unwrap_or(0),
        manifest_sha256: m.sha256.map(|h| h.to_vec()).unwrap_or_default(),
        reconciliation: reconciliation_text(m, tally, arrived),
        records_commit_index: tally.commit_index,
        started_at_ms: ctx.started_at_ms,
        finished_at_ms: super::now_ms(),
        received_on_node: ctx.state.node.id,
        chunks: tally.chunks,
        error_count: tally.error_count,
        errors: tally.errors.clone(),
        on_error: ctx.req.on_error.name().into(),
        error_code: error.map(|e| e.code.to_string()).unwrap_or_default(),
        error_message: error.map(|e| e.message.clone()).unwrap_or_default(),
        schema_version: ctx.compiled.version,
        request_id: ctx.req.request_id.clone(),
    }
}

async fn record(ctx: &Ctx, r: &state::BatchReceipt) -> ApiResult<()> {
    crate::metrics::batch_outcome(r); // F5: ingestion counts by source, dataset and reason
    let cmd = super::command(
        &ctx.state,
        state::command::Kind::Batch(state::BatchCommand {
            kind: Some(state::batch_command::Kind::RecordReceipt(state::RecordBatchReceipt {
                receipt: Some(r.clone()),
            })),
        }),
    );
    let (resp, _) = ctx.state.node.write(cmd).await?;
    if let Some(state::command_response::Result::Rejected(r)) = resp.result {
        return Err(ApiError::internal(format!("batch receipt refused: {} {}", r.code, r.message)));
    }
    Ok(())
}

/// A batch refused before anything was stored (or aborted after some chunks were): the receipt is
/// recorded and the error names the batch.
async fn refuse(ctx: &Ctx, tally: Tally, arrived: Option<&Arrived>, mut e: ApiError) -> ApiError {
    let status = if tally.commit_index > 0 {
        "aborted"
    } else if e.code == "invalid_records" {
        "rejected"
    } else {
        "refused"
    };
    let r = receipt(ctx, &tally, arrived, status, Some(&e));
    if let Err(re) = record(ctx, &r).await {
        tracing::warn!(error = %re.message, batch = %ctx.batch_id, "could not record the receipt of a refused batch");
    }
    e.details.push(json!({"batch_id": ctx.batch_id, "status": status, "accepted": tally.accepted,
                          "commit_index": tally.commit_index}));
    e
}

async fn finish(
    ctx: &Ctx,
    tally: Tally,
    outcome: ApiResult<()>,
    arrived: ApiResult<Arrived>,
) -> ApiResult<state::BatchReceipt> {
    // A broken upload (stall, break, too large) explains a parse error that followed it.
    let arrived = match (arrived, outcome) {
        (Err(e), _) => return Err(refuse(ctx, tally, None, e).await),
        (Ok(a), Err(e)) => return Err(refuse(ctx, tally, Some(&a), e).await),
        (Ok(a), Ok(())) => a,
    };
    let r = receipt(ctx, &tally, Some(&arrived), "completed", None);
    record(ctx, &r).await?;
    tracing::info!(batch = %ctx.batch_id, source = %ctx.req.source, dataset = %ctx.req.dataset,
                   format = ctx.req.format.name(), received = tally.received, accepted = tally.accepted,
                   rejected = tally.rejected, "batch ingested");
    Ok(r)
}
