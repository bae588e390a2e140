//! `/api/v1/alerts`: active alerts and their history (admin, operator, auditor), rules and
//! channels (read by the same roles, changed by admin or operator). Every change is a
//! `MonitoringCommand` through the log, so every node evaluates and notifies with the same rules.

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::routing::get;
use dtm_cluster::monitoring;
use dtm_model::state;
use dtm_model::state::command_response::Result as Reply;
use dtm_model::state::monitoring_command::Kind as M;
use serde::Deserialize;
use serde_json::Value;
use serde_json::json;

use super::limits::HISTORY_PAGE_MAX;
use super::rules;
use super::window::SECONDS_KEPT;
use crate::api::AppState;
use crate::api::auth;
use crate::api::auth::Role;
use crate::api::error::ApiError;
use crate::api::error::ApiResult;
use crate::limits::ADMIN_BODY_BYTES_MAX;

/// Reading alerts, history, rules and channels (A5.1, A5.2).
pub const ALERTS_READ: auth::Access = auth::Access {
    roles: &[Role::Admin, Role::Operator, Role::Auditor],
    scopes: &[],
    what: "the admin, operator or auditor role",
};

pub fn routes() -> Router<AppState> {
    let r = Router::new()
        .route("/", get(active))
        .route("/history", get(history))
        .route("/metrics", get(metric_catalogue))
        .route("/rules", get(list_rules))
        .route("/rules/{id}", get(get_rule).put(put_rule).delete(delete_rule))
        .route("/channels", get(list_channels))
        .route("/channels/{id}", get(get_channel).put(put_channel).delete(delete_channel))
        .route("/channels/{id}/test", axum::routing::post(test_channel));
    #[cfg(feature = "fault-injection")]
    let r = r.route("/fault/delay", axum::routing::put(put_fault_delay));
    r
}

async fn propose(state: &AppState, kind: M) -> ApiResult<u64> {
    let cmd =
        crate::api::command(state, state::command::Kind::Monitoring(state::MonitoringCommand { kind: Some(kind) }));
    let (resp, index) = state.node.write(cmd).await?;
    match resp.result {
        Some(Reply::Applied(_)) => Ok(index),
        Some(Reply::Rejected(r)) if r.code == "limit_exceeded" => {
            Err(ApiError::new(StatusCode::CONFLICT, "limit_exceeded", r.message))
        }
        Some(Reply::Rejected(r)) => Err(crate::api::error::rejected(&r.code, r.message)),
        _ => Err(ApiError::internal("unexpected command response")),
    }
}

async fn body_json<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: Body) -> ApiResult<T> {
    let bytes = crate::api::read_body(headers, body, ADMIN_BODY_BYTES_MAX).await?;
    let value = crate::api::parse_json(headers, &bytes)?;
    serde_json::from_value(value).map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))
}

fn check_id(id: &str, what: &str) -> ApiResult<()> {
    if monitoring::valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("a {what} id is 1-64 letters, digits, `_`, `.` or `-`")))
    }
}

// ---- Alerts and history ----

fn state_json(s: &state::AlertState, rule: Option<&state::AlertRule>) -> Value {
    json!({
        "rule_id": s.rule_id, "subject": s.subject, "status": if s.firing { "firing" } else { "resolved" },
        "severity": s.severity, "since_ms": s.since_ms, "value": s.value, "message": s.message,
        "event_id": s.event_id, "node_id": s.node_id,
        "description": rule.map(|r| r.description.as_str()).unwrap_or_default(),
    })
}

/// The alerts firing now.
async fn active(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &ALERTS_READ).await?;
    let rules: BTreeMap<String, state::AlertRule> =
        super::eval::read_rules(&state.node).into_iter().map(|r| (r.id.clone(), r)).collect();
    let alerts: Vec<Value> = super::eval::read_states(&state.node)
        .iter()
        .filter(|s| s.firing)
        .map(|s| state_json(s, rules.get(&s.rule_id)))
        .collect();
    Ok(Json(json!({"alerts": alerts, "node_id": state.node.id})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    /// Milliseconds since the epoch or RFC 3339, inclusive (default: the beginning).
    from: Option<String>,
    /// Milliseconds since the epoch or RFC 3339, exclusive (default: now).
    to: Option<String>,
    /// An event id: continue after it.
    after: Option<String>,
    limit: Option<usize>,
    rule: Option<String>,
    subject: Option<String>,
}

pub fn event_json(ev: &state::AlertEvent) -> Value {
    let t = ev.transition.clone().unwrap_or_default();
    let notifications: Vec<Value> = ev
        .notifications
        .iter()
        .map(|n| {
            json!({"channel_id": n.channel_id, "result": n.result, "attempts": n.attempts, "at_ms": n.at_ms,
                   "detail": n.detail, "node_id": n.node_id})
        })
        .collect();
    json!({
        "id": ev.id, "rule_id": t.rule_id, "subject": t.subject,
        "status": if t.firing { "firing" } else { "resolved" },
        "at_ms": t.at_ms, "value": t.value, "severity": t.severity, "message": t.message,
        "node_id": t.node_id, "log_index": ev.log_index, "notifications": notifications,
    })
}

/// A time as milliseconds since the epoch or RFC 3339.
fn time_ms(text: &str, what: &str) -> ApiResult<u64> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| ApiError::bad_request(format!("`{what}` is neither milliseconds since the epoch nor RFC 3339")))?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| ApiError::bad_request(format!("`{what}` is before 1970")))
}

/// Transitions in time order between `from` and `to`, paged (`after`, `limit`).
async fn history(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &ALERTS_READ).await?;
    let to = match &q.to {
        Some(t) => time_ms(t, "to")?,
        None => crate::api::now_ms().saturating_add(1),
    };
    let from = match &q.from {
        Some(t) => time_ms(t, "from")?,
        None => 0,
    };
    if from > to {
        return Err(ApiError::bad_request("`from` is after `to`"));
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=HISTORY_PAGE_MAX).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit must be 1-{HISTORY_PAGE_MAX}")));
    }
    let start = match &q.after {
        Some(id) => {
            let (at, seq) =
                monitoring::parse_event_id(id).ok_or_else(|| ApiError::bad_request("`after` is not an event id"))?;
            monitoring::history(at, seq)
        }
        None => {
            // `scan` starts after the key it is given; one below the first key of `from`.
            let mut k = monitoring::history_from(from);
            k.pop();
            k
        }
    };
    let end = monitoring::history_from(to);
    let mut events = Vec::new();
    let mut next_after = None;
    let mut cursor = start;
    // Filters may skip entries: pages through at most 10 × limit entries per request.
    let mut budget = limit * 10;
    'pages: while budget > 0 {
        let page = state
            .node
            .reader
            .scan(monitoring::HISTORY, Some(&cursor), limit.min(budget))
            .map_err(ApiError::internal)?;
        if page.is_empty() {
            break;
        }
        budget = budget.saturating_sub(page.len());
        for (k, v) in &page {
            cursor = k.clone();
            if *k >= end {
                break 'pages;
            }
            let ev = <state::AlertEvent as prost::Message>::decode(v.as_slice()).map_err(ApiError::internal)?;
            let t = ev.transition.clone().unwrap_or_default();
            if t.at_ms < from
                || q.rule.as_ref().is_some_and(|r| *r != t.rule_id)
                || q.subject.as_ref().is_some_and(|s| *s != t.subject)
            {
                continue;
            }
            events.push(event_json(&ev));
            if events.len() >= limit {
                next_after = Some(ev.id.clone());
                break 'pages;
            }
        }
    }
    Ok(Json(json!({"events": events, "next_after": next_after, "from": from, "to": to})))
}

async fn metric_catalogue(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &ALERTS_READ).await?;
    let metrics: Vec<Value> = rules::METRICS
        .iter()
        .map(|m| {
            json!({"name": m.name, "evaluated_on": if m.cluster { "leader" } else { "every node" },
                   "unit": m.unit, "help": m.help, "anomaly": rules::ANOMALY_METRICS.contains(&m.name)})
        })
        .collect();
    // How much request history this node has: an anomaly rule waits for its baseline until then.
    Ok(Json(json!({"metrics": metrics, "request_history_seconds": super::window::REQUESTS.history_seconds()})))
}

// ---- Rules ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleBody {
    id: Option<String>,
    #[serde(default = "threshold_kind")]
    kind: String,
    metric: String,
    #[serde(default)]
    op: String,
    #[serde(default)]
    threshold: f64,
    #[serde(default)]
    for_ms: u64,
    #[serde(default)]
    window_ms: u64,
    #[serde(default)]
    k_sigma: f64,
    #[serde(default)]
    baseline_ms: u64,
    #[serde(default = "warning")]
    severity: String,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    description: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn threshold_kind() -> String {
    "threshold".into()
}
fn warning() -> String {
    "warning".into()
}
fn yes() -> bool {
    true
}

pub fn rule_json(r: &state::AlertRule) -> Value {
    json!({
        "id": r.id, "kind": r.kind, "metric": r.metric, "op": r.op, "threshold": r.threshold,
        "for_ms": r.for_ms, "window_ms": r.window_ms, "k_sigma": r.k_sigma, "baseline_ms": r.baseline_ms,
        "severity": r.severity, "channels": r.channels, "enabled": r.enabled, "description": r.description,
        "builtin": r.builtin, "updated_at_ms": r.updated_at_ms, "labels": r.labels,
    })
}

async fn list_rules(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &ALERTS_READ).await?;
    let rules: Vec<Value> = super::eval::read_rules(&state.node).iter().map(rule_json).collect();
    Ok(Json(json!({"rules": rules})))
}

async fn get_rule(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &ALERTS_READ).await?;
    check_id(&id, "rule")?;
    let r = state
        .node
        .reader
        .get_msg::<state::AlertRule>(&monitoring::rule(&id))
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no alert rule `{id}`")))?;
    Ok(Json(rule_json(&r)))
}

fn rule_from(id: &str, b: RuleBody, builtin: bool) -> ApiResult<state::AlertRule> {
    if b.id.as_deref().is_some_and(|x| x != id) {
        return Err(ApiError::bad_request("the body's id differs from the path's"));
    }
    let Some(metric) = rules::metric(&b.metric) else {
        let known: Vec<&str> = rules::METRICS.iter().map(|m| m.name).collect();
        return Err(ApiError::bad_request(format!("unknown metric `{}` (known: {})", b.metric, known.join(", "))));
    };
    if b.kind == "anomaly" && !rules::ANOMALY_METRICS.contains(&metric.name) {
        return Err(ApiError::bad_request(format!("anomaly rules work over {}", rules::ANOMALY_METRICS.join(" or "))));
    }
    let window_ms = if b.window_ms == 0 { 60_000 } else { b.window_ms };
    if window_ms < 1_000 || window_ms.saturating_add(b.baseline_ms) > (SECONDS_KEPT as u64 - 1) * 1000 {
        return Err(ApiError::bad_request(format!(
            "window_ms is at least 1000, and window_ms + baseline_ms at most {} (the node keeps {SECONDS_KEPT} s)",
            (SECONDS_KEPT - 1) * 1000
        )));
    }
    if b.kind == "anomaly" && b.baseline_ms < window_ms * super::limits::ANOMALY_BASELINE_STEPS_MIN as u64 {
        return Err(ApiError::bad_request(format!(
            "an anomaly rule's baseline_ms spans at least {} windows",
            super::limits::ANOMALY_BASELINE_STEPS_MIN
        )));
    }
    if b.for_ms > 7 * 24 * 3_600_000 {
        return Err(ApiError::bad_request("for_ms is at most 7 days"));
    }
    let rule = state::AlertRule {
        id: id.to_string(),
        kind: b.kind,
        metric: b.metric,
        op: if b.op.is_empty() { ">".into() } else { b.op },
        threshold: b.threshold,
        for_ms: b.for_ms,
        window_ms,
        k_sigma: b.k_sigma,
        baseline_ms: b.baseline_ms,
        severity: b.severity,
        channels: b.channels,
        enabled: b.enabled,
        description: b.description,
        builtin,
        updated_at_ms: crate::api::now_ms(),
        labels: b.labels,
    };
    if let Some(problem) = monitoring::rule_problem(&rule) {
        return Err(ApiError::bad_request(problem));
    }
    Ok(rule)
}

async fn put_rule(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &auth::OPERATE).await?;
    check_id(&id, "rule")?;
    let b: RuleBody = body_json(&headers, body).await?;
    // A changed built-in rule stays marked built-in (it came from the defaults).
    let builtin = state
        .node
        .reader
        .get_msg::<state::AlertRule>(&monitoring::rule(&id))
        .map_err(ApiError::internal)?
        .is_some_and(|r| r.builtin);
    let rule = rule_from(&id, b, builtin)?;
    // A mistyped channel id would make the rule notify nobody, silently.
    for ch in &rule.channels {
        if crate::api::lookup_fresh::<state::AlertChannel>(&state, &monitoring::channel(ch)).await?.is_none() {
            return Err(ApiError::bad_request(format!("no alert channel `{ch}`; create it first")));
        }
    }
    let index = propose(&state, M::PutRule(state::PutAlertRule { rule: Some(rule.clone()) })).await?;
    Ok(Json(json!({"rule": rule_json(&rule), "commit_index": index})))
}

async fn delete_rule(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &auth::OPERATE).await?;
    check_id(&id, "rule")?;
    let index = propose(&state, M::DeleteRule(state::DeleteAlertRule { id })).await?;
    Ok(Json(json!({"commit_index": index})))
}

// ---- Channels ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailBody {
    host: String,
    port: u32,
    #[serde(default = "starttls")]
    security: String,
    from: String,
    to: Vec<String>,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password_ref: String,
}

fn starttls() -> String {
    "starttls".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookBody {
    url: String,
    #[serde(default)]
    secret_ref: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelBody {
    id: Option<String>,
    kind: String,
    #[serde(default = "yes")]
    enabled: bool,
    email: Option<EmailBody>,
    webhook: Option<WebhookBody>,
}

pub fn channel_json(c: &state::AlertChannel) -> Value {
    let mut v = json!({"id": c.id, "kind": c.kind, "enabled": c.enabled, "updated_at_ms": c.updated_at_ms});
    if let Some(e) = &c.email {
        v["email"] = json!({"host": e.host, "port": e.port, "security": e.security, "from": e.from, "to": e.to,
                            "username": e.username, "password_ref": e.password_ref,
                            "password_set_here": !e.password_ref.is_empty() && super::notify::secret(&e.password_ref).is_some()});
    }
    if let Some(w) = &c.webhook {
        v["webhook"] = json!({"url": w.url, "secret_ref": w.secret_ref,
                              "secret_set_here": !w.secret_ref.is_empty() && super::notify::secret(&w.secret_ref).is_some()});
    }
    v
}

async fn list_channels(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &ALERTS_READ).await?;
    let pairs =
        state.node.reader.scan(monitoring::CHANNEL, None, monitoring::CHANNELS_MAX).map_err(ApiError::internal)?;
    let channels: Vec<Value> = pairs
        .iter()
        .filter_map(|(_, v)| <state::AlertChannel as prost::Message>::decode(v.as_slice()).ok())
        .map(|c| channel_json(&c))
        .collect();
    Ok(Json(json!({"channels": channels})))
}

/// The channel `id` as this node has applied it (400 for a malformed id, 404 when there is none).
fn stored_channel(state: &AppState, id: &str) -> ApiResult<state::AlertChannel> {
    check_id(id, "channel")?;
    state
        .node
        .reader
        .get_msg::<state::AlertChannel>(&monitoring::channel(id))
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no alert channel `{id}`")))
}

async fn get_channel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &ALERTS_READ).await?;
    Ok(Json(channel_json(&stored_channel(&state, &id)?)))
}

async fn put_channel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &auth::OPERATE).await?;
    check_id(&id, "channel")?;
    let b: ChannelBody = body_json(&headers, body).await?;
    if b.id.as_deref().is_some_and(|x| x != id) {
        return Err(ApiError::bad_request("the body's id differs from the path's"));
    }
    let email = b.email.map(|e| state::EmailChannel {
        host: e.host,
        port: e.port,
        security: e.security,
        from: e.from,
        to: e.to,
        username: e.username,
        password_ref: e.password_ref,
    });
    if let Some(e) = &email {
        for address in std::iter::once(&e.from).chain(&e.to) {
            if address.parse::<lettre::message::Mailbox>().is_err() {
                return Err(ApiError::bad_request(format!("`{address}` is not an e-mail address")));
            }
        }
        if let Some(problem) = super::notify::plain_auth_problem(e) {
            return Err(ApiError::bad_request(problem));
        }
        if !e.username.is_empty() && e.password_ref.is_empty() {
            return Err(ApiError::bad_request(
                "a user name needs password_ref: the password is read from DTM_ALERT_SECRET_<REF> on each node, never stored",
            ));
        }
    }
    let channel = state::AlertChannel {
        id: id.clone(),
        kind: b.kind,
        enabled: b.enabled,
        email,
        webhook: b.webhook.map(|w| state::WebhookChannel { url: w.url, secret_ref: w.secret_ref }),
        updated_at_ms: crate::api::now_ms(),
    };
    if let Some(problem) = channel.webhook.as_ref().and_then(|w| webhook_url_problem(&w.url)) {
        return Err(ApiError::bad_request(problem));
    }
    if let Some(problem) = monitoring::channel_problem(&channel) {
        return Err(ApiError::bad_request(problem));
    }
    let index = propose(&state, M::PutChannel(state::PutAlertChannel { channel: Some(channel.clone()) })).await?;
    Ok(Json(json!({"channel": channel_json(&channel), "commit_index": index})))
}

/// What is wrong with a webhook URL, if anything. It is replicated and shown to every reader of
/// the channels, so it may not carry credentials.
fn webhook_url_problem(text: &str) -> Option<&'static str> {
    let Ok(url) = reqwest::Url::parse(text) else { return Some("webhook.url is not a URL") };
    if !url.username().is_empty() || url.password().is_some() {
        return Some(
            "webhook.url must not carry a user name or password (it is replicated and shown to readers); \
             sign the requests with secret_ref instead",
        );
    }
    None
}

async fn delete_channel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &auth::OPERATE).await?;
    check_id(&id, "channel")?;
    let index = propose(&state, M::DeleteChannel(state::DeleteAlertChannel { id })).await?;
    Ok(Json(json!({"commit_index": index})))
}

/// Sends a test message through a channel from the answering node, once, and says how it went.
async fn test_channel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &auth::OPERATE).await?;
    let c = stored_channel(&state, &id)?;
    let r = super::notify::send_test(state.node.id, &c).await;
    Ok(Json(json!({"channel_id": id, "result": r.result, "detail": r.detail, "node_id": state.node.id})))
}

// ---- Fault injection (tests only) ----

#[cfg(feature = "fault-injection")]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DelayBody {
    ms: u64,
}

/// Delays this node's API responses by `ms` (0 ends it). Admin only; only in builds with the
/// `fault-injection` feature.
#[cfg(feature = "fault-injection")]
async fn put_fault_delay(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult<Json<Value>> {
    auth::require_admin(&state, &headers).await?;
    let b: DelayBody = body_json(&headers, body).await?;
    if b.ms > super::fault::DELAY_MS_MAX {
        return Err(ApiError::bad_request(format!("ms is at most {}", super::fault::DELAY_MS_MAX)));
    }
    super::fault::DELAY_MS.store(b.ms, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(delay_ms = b.ms, "fault injection: API responses delayed");
    Ok(Json(json!({"delay_ms": b.ms, "node_id": state.node.id})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_and_baseline_that_overflow_are_refused() {
        let b: RuleBody = serde_json::from_value(json!({
            "kind": "anomaly", "metric": "http_requests_per_second", "k_sigma": 3.0,
            "window_ms": 1000, "baseline_ms": u64::MAX,
        }))
        .expect("a rule body");
        let e = rule_from("r", b, false).expect_err("refused");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn webhook_urls_with_credentials_are_refused() {
        assert_eq!(webhook_url_problem("https://hooks.example/x?y=1"), None);
        assert!(webhook_url_problem("https://user:pw@hooks.example/x").is_some());
        assert!(webhook_url_problem("https://user@hooks.example/x").is_some());
        assert!(webhook_url_problem("not a url").is_some());
    }
}
