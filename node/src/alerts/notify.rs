//! Sends the notifications of alert transitions this node recorded: e-mail over SMTP (`lettre`)
//! and JSON webhooks (`reqwest`, optionally HMAC-signed). A bounded queue feeds a worker that runs
//! each delivery in its own task (bounded), with bounded retries, backoff and a deadline per
//! attempt, so a slow or failing channel delays neither evaluation nor the other channels. Every
//! outcome is counted in `dtm_alert_notifications_total{channel,result}` and written back to the
//! transition's history entry (`RecordNotifications`), which is also how the leader knows a
//! transition whose recorder died was never delivered (`eval.rs`, takeover).

use std::sync::Arc;

use dtm_cluster::ClusterNode;
use dtm_cluster::monitoring;
use dtm_model::state;
use serde_json::Value;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::sync::mpsc;

use super::limits::*;

/// One transition to notify.
#[derive(Clone, Debug)]
pub struct Job {
    pub event_id: String,
    pub transition: state::AlertTransition,
    pub rule: state::AlertRule,
}

pub struct Notifier {
    tx: mpsc::Sender<Job>,
}

impl Notifier {
    /// Starts the worker; `ca_pem` (the cluster CA) is trusted by webhooks besides the system roots.
    pub fn start(node: Arc<ClusterNode>, ca_pem: &[u8]) -> Arc<Notifier> {
        let (tx, rx) = mpsc::channel(NOTIFY_QUEUE_MAX);
        let http = match webhook_client(ca_pem) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "no HTTPS client for alert webhooks; webhook notifications will fail");
                None
            }
        };
        let ca_pem = Arc::new(ca_pem.to_vec());
        let _ = SENDER.set((http.clone(), ca_pem.clone()));
        tokio::spawn(run(node, rx, http, ca_pem));
        Arc::new(Notifier { tx })
    }

    /// Queues a job; when the queue is full the job is not sent, and that is counted and logged.
    pub fn enqueue(&self, job: Job) {
        if let Err(e) = self.tx.try_send(job) {
            let (job, why) = match e {
                mpsc::error::TrySendError::Full(j) => (j, "alert notification queue full; notification dropped"),
                mpsc::error::TrySendError::Closed(j) => (j, "alert notifier stopped; notification dropped"),
            };
            metrics::counter!("dtm_alert_notifications_total", "channel" => "all", "result" => "dropped").increment(1);
            tracing::error!(event = %job.event_id, rule = %job.rule.id, "{why}");
        }
    }
}

/// The webhook client and the cluster CA, for test messages sent from the API.
static SENDER: std::sync::OnceLock<(Option<reqwest::Client>, Arc<Vec<u8>>)> = std::sync::OnceLock::new();

/// Sends a test message through `ch` once (no retries, not recorded, not counted), so an operator
/// can check a channel's settings and this node's secrets (`POST /alerts/channels/{id}/test`).
pub async fn send_test(node_id: u64, ch: &state::AlertChannel) -> state::NotificationResult {
    let (http, ca_pem) = SENDER.get().cloned().unwrap_or_default();
    let at_ms = crate::api::now_ms();
    let job = Job {
        event_id: format!("test-{at_ms}"),
        transition: state::AlertTransition {
            rule_id: "test".into(),
            subject: format!("node/{node_id}"),
            firing: true,
            at_ms,
            value: 0.0,
            severity: "info".into(),
            message: format!("a test notification from node {node_id}; no alert is firing"),
            node_id,
        },
        rule: state::AlertRule { id: "test".into(), description: "test notification".into(), ..Default::default() },
    };
    deliver(node_id, http.as_ref(), &ca_pem, ch, &job, 1, false).await
}

fn webhook_client(ca_pem: &[u8]) -> anyhow::Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        let _ = roots.add(c);
    }
    for c in rustls_pemfile::certs(&mut &ca_pem[..]).flatten() {
        let _ = roots.add(c);
    }
    let cfg = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .timeout(DELIVERY_TIMEOUT)
        .connect_timeout(DELIVERY_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

async fn run(node: Arc<ClusterNode>, mut rx: mpsc::Receiver<Job>, http: Option<reqwest::Client>, ca_pem: Arc<Vec<u8>>) {
    let jobs = Arc::new(Semaphore::new(DELIVERIES_IN_FLIGHT_MAX));
    while let Some(job) = rx.recv().await {
        let Ok(permit) = jobs.clone().acquire_owned().await else { return };
        let (node, http, ca_pem) = (node.clone(), http.clone(), ca_pem.clone());
        tokio::spawn(async move {
            deliver_job(&node, http.as_ref(), &ca_pem, job).await;
            drop(permit);
        });
    }
}

/// The channels a rule notifies: the ones it names, or every enabled channel.
pub fn channels_for(node: &ClusterNode, rule: &state::AlertRule) -> Vec<state::AlertChannel> {
    let all: Vec<state::AlertChannel> = match node.reader.scan(monitoring::CHANNEL, None, monitoring::CHANNELS_MAX) {
        Ok(pairs) => pairs.iter().filter_map(|(_, v)| prost::Message::decode(v.as_slice()).ok()).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "could not read the alert channels");
            Vec::new()
        }
    };
    all.into_iter().filter(|c| c.enabled && (rule.channels.is_empty() || rule.channels.contains(&c.id))).collect()
}

async fn deliver_job(node: &Arc<ClusterNode>, http: Option<&reqwest::Client>, ca_pem: &[u8], job: Job) {
    let channels = channels_for(node, &job.rule);
    let deliveries = channels.iter().map(|ch| deliver(node.id, http, ca_pem, ch, &job, DELIVERY_ATTEMPTS_MAX, true));
    let results = futures::future::join_all(deliveries).await;
    if results.is_empty() {
        return;
    }
    let cmd = state::Command {
        actor: None,
        version: dtm_model::COMMAND_SET_VERSION,
        proposed_at_ms: crate::api::now_ms(),
        origin_node: node.id,
        kind: Some(state::command::Kind::Monitoring(state::MonitoringCommand {
            kind: Some(state::monitoring_command::Kind::Notifications(state::RecordNotifications {
                event_id: job.event_id.clone(),
                results,
            })),
        })),
    };
    if let Err(e) = node.write(cmd).await {
        tracing::warn!(error = %e, event = %job.event_id, "could not record the alert's notification results");
    }
}

/// Sends `job` to `ch` with at most `attempts_max` attempts; `counted` adds the outcome to
/// `dtm_alert_notifications_total` (test messages are not counted).
async fn deliver(
    node_id: u64,
    http: Option<&reqwest::Client>,
    ca_pem: &[u8],
    ch: &state::AlertChannel,
    job: &Job,
    attempts_max: u32,
    counted: bool,
) -> state::NotificationResult {
    let kind: &'static str = match ch.kind.as_str() {
        "email" => "email",
        "webhook" => "webhook",
        _ => "dashboard",
    };
    let mut result = state::NotificationResult {
        channel_id: ch.id.clone(),
        node_id,
        result: "shown".into(),
        attempts: 0,
        at_ms: crate::api::now_ms(),
        detail: String::new(),
    };
    if kind == "dashboard" {
        // The dashboard reads the replicated alert state; nothing to send.
        return result;
    }
    let mut backoff = RETRY_BACKOFF_MIN;
    let mut last_error = String::new();
    for attempt in 1..=attempts_max {
        result.attempts = attempt;
        let sent = match kind {
            "email" => tokio::time::timeout(DELIVERY_TIMEOUT, send_email(ch, ca_pem, job)).await,
            _ => tokio::time::timeout(DELIVERY_TIMEOUT, send_webhook(http, ch, job)).await,
        };
        match sent {
            Ok(Ok(())) => {
                result.result = "sent".into();
                result.at_ms = crate::api::now_ms();
                result.detail = String::new();
                if counted {
                    metrics::counter!("dtm_alert_notifications_total", "channel" => kind, "result" => "sent")
                        .increment(1);
                }
                tracing::info!(channel = %ch.id, event = %job.event_id, attempt, "alert notification sent");
                return result;
            }
            Ok(Err(e)) => last_error = e,
            Err(_) => last_error = format!("no answer within {} s", DELIVERY_TIMEOUT.as_secs()),
        }
        tracing::warn!(channel = %ch.id, event = %job.event_id, attempt, error = %last_error, "alert notification failed");
        if attempt < attempts_max {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    result.result = "failed".into();
    result.at_ms = crate::api::now_ms();
    result.detail = last_error.chars().take(monitoring::TEXT_BYTES_MAX / 4).collect();
    if counted {
        metrics::counter!("dtm_alert_notifications_total", "channel" => kind, "result" => "failed").increment(1);
    }
    result
}

/// A secret named by `reference`, from this node's environment: `DTM_ALERT_SECRET_<REFERENCE>`
/// (upper case, other characters than letters and digits as `_`).
pub fn secret(reference: &str) -> Option<String> {
    let name: String =
        reference.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    std::env::var(format!("DTM_ALERT_SECRET_{name}")).ok().filter(|s| !s.is_empty())
}

fn status_word(t: &state::AlertTransition) -> &'static str {
    if t.firing { "firing" } else { "resolved" }
}

fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// The JSON a webhook receives (documented in docs/alerts.md).
pub fn payload(job: &Job) -> Value {
    let t = &job.transition;
    json!({
        "event_id": job.event_id,
        "status": status_word(t),
        "rule": {
            "id": job.rule.id, "kind": job.rule.kind, "metric": job.rule.metric, "op": job.rule.op,
            "threshold": job.rule.threshold, "description": job.rule.description,
        },
        "severity": t.severity,
        "subject": t.subject,
        "value": t.value,
        "message": t.message,
        "at_ms": t.at_ms,
        "at": rfc3339(t.at_ms),
        "node_id": t.node_id,
    })
}

fn subject_line(job: &Job) -> String {
    let t = &job.transition;
    if t.firing {
        format!("[DTM FIRING {}] {} on {}", t.severity, job.rule.id, t.subject)
    } else {
        format!("[DTM RESOLVED] {} on {}", job.rule.id, t.subject)
    }
}

fn text_body(job: &Job) -> String {
    let t = &job.transition;
    format!(
        "Alert {}: {}\nRule: {} ({})\nSubject: {}\nValue: {}\nAt: {} ({} ms)\nObserved by node {}\nEvent: {}\n{}\n",
        status_word(t),
        job.rule.id,
        job.rule.description,
        job.rule.metric,
        t.subject,
        t.value,
        rfc3339(t.at_ms),
        t.at_ms,
        t.node_id,
        job.event_id,
        t.message,
    )
}

async fn send_email(ch: &state::AlertChannel, ca_pem: &[u8], job: &Job) -> Result<(), String> {
    use lettre::AsyncSmtpTransport;
    use lettre::AsyncTransport;
    use lettre::Message;
    use lettre::Tokio1Executor;
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::Certificate;
    use lettre::transport::smtp::client::Tls;
    use lettre::transport::smtp::client::TlsParameters;
    let Some(e) = &ch.email else { return Err("the channel has no e-mail settings".into()) };
    let port = u16::try_from(e.port).map_err(|_| "port out of range".to_string())?;
    // The server's certificate is checked against the system roots and the cluster CA (a relay
    // inside the deployment may carry a certificate of the cluster CA).
    let tls = || -> Result<TlsParameters, String> {
        let mut b = TlsParameters::builder(e.host.clone());
        if let Ok(ca) = Certificate::from_pem(ca_pem) {
            b = b.add_root_certificate(ca);
        }
        b.build_rustls().map_err(|x| format!("TLS: {x}"))
    };
    let builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&e.host);
    let builder = match e.security.as_str() {
        "starttls" => builder.tls(Tls::Required(tls()?)),
        "tls" => builder.tls(Tls::Wrapper(tls()?)),
        _ => builder,
    };
    let mut builder = builder.port(port).timeout(Some(DELIVERY_TIMEOUT));
    if let Some(problem) = plain_auth_problem(e) {
        return Err(problem.into());
    }
    if !e.username.is_empty() {
        let password =
            secret(&e.password_ref).ok_or_else(|| format!("secret `{}` is not set on this node", e.password_ref))?;
        builder = builder.credentials(Credentials::new(e.username.clone(), password));
    }
    let mut message = Message::builder()
        .from(e.from.parse().map_err(|x| format!("from: {x}"))?)
        .subject(subject_line(job))
        .header(ContentType::TEXT_PLAIN);
    for to in &e.to {
        message = message.to(to.parse().map_err(|x| format!("to `{to}`: {x}"))?);
    }
    let message = message.body(text_body(job)).map_err(|x| x.to_string())?;
    builder.build().send(message).await.map(|_| ()).map_err(|x| x.to_string())
}

/// A password would cross the network in clear text: `security: "plain"` with a user name to a
/// host other than loopback (lettre authenticates over any connection it is given).
pub fn plain_auth_problem(e: &state::EmailChannel) -> Option<&'static str> {
    let loopback = e.host == "localhost"
        || e.host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback());
    (e.security == "plain" && !e.username.is_empty() && !loopback)
        .then_some("email: a user name with security \"plain\" would send the password in clear text; use starttls or tls (plain is for a relay on loopback)")
}

async fn send_webhook(http: Option<&reqwest::Client>, ch: &state::AlertChannel, job: &Job) -> Result<(), String> {
    let Some(w) = &ch.webhook else { return Err("the channel has no webhook settings".into()) };
    let Some(http) = http else { return Err("no HTTPS client".into()) };
    let body = serde_json::to_vec(&payload(job)).map_err(|e| e.to_string())?;
    let mut req = http
        .post(&w.url)
        .header("content-type", "application/json")
        .header("x-dtm-event", "alert")
        .header("x-dtm-event-id", &job.event_id);
    if !w.secret_ref.is_empty() {
        let key = secret(&w.secret_ref).ok_or_else(|| format!("secret `{}` is not set on this node", w.secret_ref))?;
        req = req.header("x-dtm-signature", format!("sha256={}", sign(key.as_bytes(), &body)));
    }
    let resp = req.body(body).send().await.map_err(|e| e.to_string())?;
    if resp.status().is_success() { Ok(()) } else { Err(format!("the webhook answered {}", resp.status())) }
}

/// HMAC-SHA256 of `body` under `key`, hex.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    hex::encode(ring::hmac::sign(&key, body).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_password_is_never_sent_in_clear_text_off_loopback() {
        let e = |host: &str, security: &str, username: &str| state::EmailChannel {
            host: host.into(),
            security: security.into(),
            username: username.into(),
            ..Default::default()
        };
        assert!(plain_auth_problem(&e("smtp.example", "plain", "u")).is_some());
        assert!(plain_auth_problem(&e("10.0.0.5", "plain", "u")).is_some());
        assert_eq!(plain_auth_problem(&e("127.0.0.1", "plain", "u")), None);
        assert_eq!(plain_auth_problem(&e("[::1]", "plain", "u")), None);
        assert_eq!(plain_auth_problem(&e("localhost", "plain", "u")), None);
        assert_eq!(plain_auth_problem(&e("smtp.example", "plain", "")), None);
        assert_eq!(plain_auth_problem(&e("smtp.example", "starttls", "u")), None);
    }

    #[test]
    fn secrets_come_from_the_environment_by_reference() {
        assert_eq!(secret("never-set-in-any-environment.x"), None);
    }
}
