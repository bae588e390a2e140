//! Synthetic probes (F5): every node measures itself the way a client does, over HTTPS to its own
//! advertised address with real TLS, on a schedule (`[probes]`): the health endpoint, an
//! authenticated read (`read_path`, with the credential in `credential_file`), each configured
//! web page (a 404 is a failure), and a light concurrency check (`concurrency` parallel requests
//! on fresh HTTP/1.1 connections; the slowest and the 95th percentile are reported). Results go to
//! `dtm_probe_*` (`crate::metrics`), to `GET /api/v1/monitoring/probes`, and from there to the
//! dashboard and the alert rules.
//!
//! The probes write nothing: a write workflow would leave a probe record in the log, the
//! aggregates and the audit trail every round, on every node, forever. The write path is measured
//! by the ingestion series (`dtm_http_request_duration_seconds` of the records route) instead.
//!
//! Each round runs in its own task under a supervising loop: a round that panics is counted
//! (`dtm_probe_task_restarts_total`), logged, and the next round runs on schedule. A tokio task,
//! not a ractor actor: `ractor` is known only to the `actors` crate (an architecture invariant),
//! and a probe round is a timer and a few HTTP calls with no state to recover.
//!
//! The probes' own requests carry `x-dtm-probe` with a secret made when the process starts, so
//! the HTTP series and the live window leave them out (they are the probe series) and nobody else
//! can hide requests that way. They are audited like any other request.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::watch;

use crate::api::AppState;
use crate::api::error::ApiResult;

pub const INTERVAL_DEFAULT: Duration = Duration::from_secs(30);
pub const INTERVAL_MIN: Duration = Duration::from_millis(200);
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
pub const CONCURRENCY_DEFAULT: usize = 8;
pub const CONCURRENCY_MAX: usize = 64;
pub const PAGES_MAX: usize = 32;
/// The first round waits this long (or the interval, if shorter) so that the HTTPS port is open.
const FIRST_ROUND_DELAY: Duration = Duration::from_secs(1);
/// Characters of an error kept in a result.
const ERROR_CHARS_MAX: usize = 200;
pub const PROBE_HEADER: &str = "x-dtm-probe";

/// `[probes]` in the node's configuration file.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct ProbesFile {
    /// Run the probes (default true).
    pub enabled: Option<bool>,
    /// Milliseconds between rounds (default 30000).
    pub interval_ms: Option<u64>,
    /// Milliseconds each request may take before it counts as failed (default 5000).
    pub timeout_ms: Option<u64>,
    /// A file holding the credential of the authenticated read: an API key (`dtmk.…`, sent as
    /// `X-API-Key`) or a token (sent as `Authorization: Bearer`). Read every round, so it may
    /// appear after the node starts. Without it the read is reported as skipped.
    pub credential_file: Option<PathBuf>,
    /// The authenticated read (default `/api/v1/cluster`).
    pub read_path: Option<String>,
    /// Web pages to load (default `/ui/`, `/ui/login`, `/api/docs/`); each must answer 2xx after
    /// redirects.
    pub pages: Option<Vec<String>>,
    /// Parallel requests of the concurrency check (default 8, at most 64; 0 turns it off).
    pub concurrency: Option<usize>,
    /// What the concurrency check asks for (default `/api/v1/health`).
    pub concurrency_path: Option<String>,
}

/// The resolved `[probes]` options.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub enabled: bool,
    pub interval: Duration,
    pub timeout: Duration,
    pub credential_file: Option<PathBuf>,
    pub read_path: String,
    pub pages: Vec<String>,
    pub concurrency: usize,
    pub concurrency_path: String,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            enabled: true,
            interval: INTERVAL_DEFAULT,
            timeout: TIMEOUT_DEFAULT,
            credential_file: None,
            read_path: "/api/v1/cluster".into(),
            pages: vec!["/ui/".into(), "/ui/login".into(), "/api/docs/".into()],
            concurrency: CONCURRENCY_DEFAULT,
            concurrency_path: "/api/v1/health".into(),
        }
    }
}

/// `[probes]` merged with `--probes`/`DTM_PROBES` (which wins).
pub fn resolve(file: ProbesFile, enabled: Option<bool>) -> anyhow::Result<ProbeOptions> {
    let d = ProbeOptions::default();
    let path = |p: Option<String>, default: String, what: &str| -> anyhow::Result<String> {
        let p = p.unwrap_or(default);
        if !p.starts_with('/') || p.len() > 512 || p.chars().any(char::is_whitespace) {
            anyhow::bail!("probes.{what}: `{p}` must be a path starting with /");
        }
        Ok(p)
    };
    let mut pages = Vec::new();
    for p in file.pages.unwrap_or(d.pages) {
        pages.push(path(Some(p), String::new(), "pages")?);
    }
    if pages.len() > PAGES_MAX {
        anyhow::bail!("probes.pages: at most {PAGES_MAX} pages");
    }
    let opts = ProbeOptions {
        enabled: enabled.or(file.enabled).unwrap_or(d.enabled),
        interval: file.interval_ms.map_or(d.interval, Duration::from_millis),
        timeout: file.timeout_ms.map_or(d.timeout, Duration::from_millis),
        credential_file: file.credential_file,
        read_path: path(file.read_path, d.read_path, "read_path")?,
        pages,
        concurrency: file.concurrency.unwrap_or(d.concurrency),
        concurrency_path: path(file.concurrency_path, d.concurrency_path, "concurrency_path")?,
    };
    if opts.interval < INTERVAL_MIN {
        anyhow::bail!("probes.interval_ms must be at least {}", INTERVAL_MIN.as_millis());
    }
    if opts.timeout.is_zero() || opts.timeout > opts.interval.max(TIMEOUT_DEFAULT) {
        anyhow::bail!("probes.timeout_ms must be positive and at most the interval (or 5000)");
    }
    if opts.concurrency > CONCURRENCY_MAX {
        anyhow::bail!("probes.concurrency must be at most {CONCURRENCY_MAX}");
    }
    Ok(opts)
}

/// The secret this process's probes send in `x-dtm-probe`.
fn secret() -> &'static str {
    static SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SECRET.get_or_init(crate::api::auth::random_secret)
}

/// True for a request made by this process's probes.
pub fn is_own_probe(headers: &HeaderMap) -> bool {
    headers.get(PROBE_HEADER).is_some_and(|v| subtle::ConstantTimeEq::ct_eq(v.as_bytes(), secret().as_bytes()).into())
}

/// The result of one probe in one round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeResult {
    /// `health`, `api_read`, `page:<path>` or `concurrency`.
    pub probe: String,
    pub path: String,
    pub ok: bool,
    /// Not run (the authenticated read without a credential file).
    pub skipped: bool,
    /// The HTTP status of the answer (the worst one for the concurrency check).
    pub status: Option<u16>,
    /// Response time in seconds (the slowest request for the concurrency check).
    pub duration_seconds: f64,
    pub error: Option<String>,
    pub at_ms: u64,
}

/// The concurrency check of one round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConcurrencyResult {
    pub requests: usize,
    pub failures: usize,
    pub max_seconds: f64,
    pub p95_seconds: f64,
}

/// The latest round on this node (`GET /api/v1/monitoring/probes`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ProbeReport {
    pub node_id: u64,
    pub enabled: bool,
    pub interval_ms: u64,
    /// The URL the probes call (this node's advertised HTTPS address).
    pub target: String,
    /// Rounds finished since the node started.
    pub rounds: u64,
    pub last_round_at_ms: Option<u64>,
    pub results: Vec<ProbeResult>,
    pub concurrency: Option<ConcurrencyResult>,
}

static LATEST: Mutex<Option<ProbeReport>> = Mutex::new(None);

/// The latest probe results of this node.
pub fn latest() -> ProbeReport {
    LATEST.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default()
}

/// `GET /api/v1/monitoring/probes`.
pub async fn get_probes(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<ProbeReport>> {
    crate::api::auth::require(&state, &headers, &crate::live::MONITORING_READ).await?;
    let mut r = latest();
    r.node_id = state.node.id;
    Ok(Json(r))
}

/// Starts the probes of this node against `base_url` (`https://<advertised address>`).
pub fn start(opts: ProbeOptions, node_id: u64, base_url: String, ca_pem: Vec<u8>, mut stop: watch::Receiver<bool>) {
    *LATEST.lock().unwrap_or_else(|p| p.into_inner()) = Some(ProbeReport {
        node_id,
        enabled: opts.enabled,
        interval_ms: opts.interval.as_millis() as u64,
        target: base_url.clone(),
        ..ProbeReport::default()
    });
    if !opts.enabled {
        return;
    }
    tokio::spawn(async move {
        let first = tokio::time::Instant::now() + opts.interval.min(FIRST_ROUND_DELAY);
        let mut tick = tokio::time::interval_at(first, opts.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let round = tokio::spawn(run_round(opts.clone(), base_url.clone(), ca_pem.clone()));
            match round.await {
                Ok((results, concurrency)) => {
                    let mut latest = LATEST.lock().unwrap_or_else(|p| p.into_inner());
                    let r = latest.get_or_insert_with(ProbeReport::default);
                    r.rounds += 1;
                    r.last_round_at_ms = Some(crate::api::now_ms());
                    r.results = results;
                    r.concurrency = concurrency;
                    metrics::gauge!("dtm_probe_last_run_timestamp_seconds").set(crate::api::now_ms() as f64 / 1000.0);
                }
                Err(e) => {
                    metrics::counter!("dtm_probe_task_restarts_total").increment(1);
                    tracing::error!(error = %e, "a probe round failed; the next one runs on schedule");
                }
            }
        }
    });
}

/// The credential header for the authenticated read, from the credential file.
fn credential(opts: &ProbeOptions) -> Option<(&'static str, String)> {
    let text = std::fs::read_to_string(opts.credential_file.as_ref()?).ok()?;
    let text = text.trim();
    if text.is_empty() || text.len() > crate::limits::BEARER_TOKEN_BYTES_MAX {
        return None;
    }
    Some(if text.starts_with("dtmk.") {
        ("x-api-key", text.to_string())
    } else {
        ("authorization", format!("Bearer {text}"))
    })
}

fn short(e: impl std::fmt::Display) -> String {
    let mut s = e.to_string();
    if s.len() > ERROR_CHARS_MAX {
        let mut cut = ERROR_CHARS_MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// One request: (status, seconds, error).
async fn call(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    auth: Option<&(&'static str, String)>,
) -> (Option<u16>, f64, Option<String>) {
    let started = Instant::now();
    let mut req = client.get(url).timeout(timeout).header(PROBE_HEADER, secret());
    if let Some((name, value)) = auth {
        req = req.header(*name, value);
    }
    let answer = match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            // The whole body, as a browser or client would load it.
            match resp.bytes().await {
                Ok(_) => (Some(status), None),
                Err(e) => (Some(status), Some(short(e))),
            }
        }
        Err(e) => (None, Some(if e.is_timeout() { "timeout".to_string() } else { short(e) })),
    };
    let secs = started.elapsed().as_secs_f64();
    match answer {
        (Some(s), None) if (200..300).contains(&s) => (Some(s), secs, None),
        (Some(s), None) => (Some(s), secs, Some(format!("answered {s}"))),
        (s, e) => (s, secs, e),
    }
}

/// A probe's result from its answer, observed in the metrics.
fn result(probe: String, path: &str, (status, secs, error): (Option<u16>, f64, Option<String>)) -> ProbeResult {
    let r = ProbeResult {
        probe,
        path: path.to_string(),
        ok: error.is_none(),
        skipped: false,
        status,
        duration_seconds: secs,
        error,
        at_ms: crate::api::now_ms(),
    };
    observe(&r);
    r
}

fn observe(r: &ProbeResult) {
    if r.skipped {
        return;
    }
    let probe = r.probe.clone();
    metrics::counter!("dtm_probe_runs_total", "probe" => probe.clone()).increment(1);
    let failures = metrics::counter!("dtm_probe_failures_total", "probe" => probe.clone());
    failures.increment(if r.ok { 0 } else { 1 });
    metrics::gauge!("dtm_probe_success", "probe" => probe.clone()).set(if r.ok { 1.0 } else { 0.0 });
    metrics::gauge!("dtm_probe_last_duration_seconds", "probe" => probe.clone()).set(r.duration_seconds);
    metrics::histogram!("dtm_probe_duration_seconds", "probe" => probe).record(r.duration_seconds);
    if !r.ok {
        tracing::warn!(probe = %r.probe, status = ?r.status, error = ?r.error, seconds = r.duration_seconds, "probe failed");
    }
}

async fn run_round(opts: ProbeOptions, base: String, ca_pem: Vec<u8>) -> (Vec<ProbeResult>, Option<ConcurrencyResult>) {
    let mut results = Vec::new();
    // A new client each round: the first request pays a TLS handshake, as a new client does.
    let client = match crate::tls::https_client(&ca_pem) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "probes: no HTTPS client");
            return (results, None);
        }
    };
    let health = "/api/v1/health";
    results.push(result("health".into(), health, call(&client, &format!("{base}{health}"), opts.timeout, None).await));
    match credential(&opts) {
        Some(auth) => {
            let url = format!("{base}{}", opts.read_path);
            let answer = call(&client, &url, opts.timeout, Some(&auth)).await;
            results.push(result("api_read".into(), &opts.read_path, answer));
        }
        None => results.push(ProbeResult {
            probe: "api_read".into(),
            path: opts.read_path.clone(),
            ok: false,
            skipped: true,
            status: None,
            duration_seconds: 0.0,
            error: Some("no credential ([probes] credential_file)".into()),
            at_ms: crate::api::now_ms(),
        }),
    }
    for page in &opts.pages {
        let answer = call(&client, &format!("{base}{page}"), opts.timeout, None).await;
        results.push(result(format!("page:{page}"), page, answer));
    }
    let concurrency =
        if opts.concurrency > 0 { Some(concurrency(&opts, &base, &ca_pem, &mut results).await) } else { None };
    (results, concurrency)
}

/// `concurrency` requests at once, each on its own HTTP/1.1 connection (as that many clients).
async fn concurrency(
    opts: &ProbeOptions,
    base: &str,
    ca_pem: &[u8],
    results: &mut Vec<ProbeResult>,
) -> ConcurrencyResult {
    let url = format!("{base}{}", opts.concurrency_path);
    let client = crate::tls::https_client_with(ca_pem, true);
    let answers = match &client {
        Ok(c) => futures::future::join_all((0..opts.concurrency).map(|_| call(c, &url, opts.timeout, None))).await,
        Err(e) => vec![(None, 0.0, Some(short(e)))],
    };
    let mut times: Vec<f64> = answers.iter().map(|a| a.1).collect();
    times.sort_by(f64::total_cmp);
    let failures = answers.iter().filter(|a| a.2.is_some()).count();
    let max = times.last().copied().unwrap_or(0.0);
    let p95 = times.get(((times.len() as f64 * 0.95).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0.0);
    let worst = answers.iter().find(|a| a.2.is_some()).or(answers.first());
    let r = ProbeResult {
        probe: "concurrency".into(),
        path: opts.concurrency_path.clone(),
        ok: failures == 0,
        skipped: false,
        status: worst.and_then(|a| a.0),
        duration_seconds: max,
        error: worst.and_then(|a| a.2.clone()).map(|e| format!("{failures} of {} failed: {e}", answers.len())),
        at_ms: crate::api::now_ms(),
    };
    observe(&r);
    results.push(r);
    metrics::gauge!("dtm_probe_concurrency_p95_seconds").set(p95);
    metrics::gauge!("dtm_probe_concurrency_max_seconds").set(max);
    ConcurrencyResult { requests: answers.len(), failures, max_seconds: max, p95_seconds: p95 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_checks_the_options() {
        let d = resolve(ProbesFile::default(), None).expect("defaults");
        assert!(d.enabled);
        assert_eq!(d.interval, INTERVAL_DEFAULT);
        assert_eq!(d.pages, vec!["/ui/".to_string(), "/ui/login".to_string(), "/api/docs/".to_string()]);
        assert!(!resolve(ProbesFile::default(), Some(false)).expect("off").enabled);
        let bad_page = ProbesFile { pages: Some(vec!["ui".into()]), ..ProbesFile::default() };
        assert!(resolve(bad_page, None).is_err());
        let too_fast = ProbesFile { interval_ms: Some(10), ..ProbesFile::default() };
        assert!(resolve(too_fast, None).is_err());
        let too_many = ProbesFile { concurrency: Some(CONCURRENCY_MAX + 1), ..ProbesFile::default() };
        assert!(resolve(too_many, None).is_err());
        let fast = ProbesFile { interval_ms: Some(500), timeout_ms: Some(400), ..ProbesFile::default() };
        assert_eq!(resolve(fast, None).expect("fast").interval, Duration::from_millis(500));
    }

    #[test]
    fn only_this_process_probes_are_recognised() {
        let mut h = HeaderMap::new();
        assert!(!is_own_probe(&h));
        h.insert(PROBE_HEADER, axum::http::HeaderValue::from_static("guess"));
        assert!(!is_own_probe(&h));
        h.insert(PROBE_HEADER, axum::http::HeaderValue::from_str(secret()).expect("ascii"));
        assert!(is_own_probe(&h));
    }
}
