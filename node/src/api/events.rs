//! Security events (failed logins, lockouts, invalid or revoked credentials, refused tokens): each
//! is logged (`tracing` target `security`), counted (`dtm_security_events_total{kind}`) and queued
//! for the replicated state. A per-node batcher proposes at most one `RecordSecurityEvents`
//! command per `SECURITY_EVENT_FLUSH_INTERVAL`, so a flood of bad logins costs the log one entry per
//! second per node. The queue is bounded: when it is full an event is still logged and counted
//! (`dtm_security_events_dropped_total`) but not replicated. The audit issue moves these events
//! into its hash chain.

use std::sync::Arc;
use std::sync::Weak;

use axum::Json;
use axum::extract::Query;
use axum::extract::State;
use axum::http::HeaderMap;
use dtm_cluster::ClusterNode;
use dtm_cluster::tables;
use dtm_model::state;
use serde::Deserialize;
use serde_json::Value;
use serde_json::json;
use tokio::sync::mpsc;

use super::AppState;
use super::auth;
use super::error::ApiError;
use super::error::ApiResult;
use crate::limits::SECURITY_EVENT_FLUSH_INTERVAL;
use crate::limits::SECURITY_EVENT_QUEUE_DEPTH;
use crate::limits::SECURITY_EVENTS_PAGE_MAX;
use crate::limits::SECURITY_EVENTS_PER_COMMAND_MAX;

#[derive(Clone)]
pub struct SecurityEvents {
    node_id: u64,
    tx: mpsc::Sender<state::SecurityEvent>,
}

impl SecurityEvents {
    /// Starts the batcher for `node`. It holds the node weakly and stops when the node is gone or
    /// every sender is dropped.
    pub fn start(node: &Arc<ClusterNode>) -> Self {
        let (tx, rx) = mpsc::channel(SECURITY_EVENT_QUEUE_DEPTH);
        tokio::spawn(flush_loop(Arc::downgrade(node), rx));
        SecurityEvents { node_id: node.id, tx }
    }

    pub fn record(&self, kind: &'static str, subject: &str, detail: &str) {
        tracing::warn!(target: "security", kind, subject, detail, "security event");
        metrics::counter!("dtm_security_events_total", "kind" => kind).increment(1);
        let event = state::SecurityEvent {
            at_ms: super::now_ms(),
            node_id: self.node_id,
            kind: kind.into(),
            subject: subject.chars().take(200).collect(),
            detail: detail.chars().take(500).collect(),
        };
        if self.tx.try_send(event).is_err() {
            metrics::counter!("dtm_security_events_dropped_total").increment(1);
            tracing::error!(target: "security", kind, "security event queue full; event logged but not replicated");
        }
    }
}

async fn flush_loop(node: Weak<ClusterNode>, mut rx: mpsc::Receiver<state::SecurityEvent>) {
    let mut batch = Vec::with_capacity(SECURITY_EVENTS_PER_COMMAND_MAX);
    loop {
        if rx.recv_many(&mut batch, SECURITY_EVENTS_PER_COMMAND_MAX).await == 0 {
            return;
        }
        let Some(node) = node.upgrade() else { return };
        let kind = state::command::Kind::Security(state::SecurityCommand {
            kind: Some(state::security_command::Kind::RecordSecurityEvents(state::RecordSecurityEvents {
                events: std::mem::take(&mut batch),
            })),
        });
        let cmd = state::Command {
            actor: None,
            version: dtm_model::COMMAND_SET_VERSION,
            proposed_at_ms: super::now_ms(),
            origin_node: node.id,
            kind: Some(kind),
        };
        if let Err(e) = node.write(cmd).await {
            metrics::counter!("dtm_security_events_dropped_total").increment(1);
            tracing::error!(target: "security", error = %e, "security events could not be replicated");
        }
        drop(node);
        tokio::time::sleep(SECURITY_EVENT_FLUSH_INTERVAL).await;
    }
}

#[derive(Deserialize)]
pub struct EventsQuery {
    /// The `next` of the previous page.
    after: Option<String>,
    limit: Option<usize>,
    kind: Option<String>,
}

/// `GET /api/v1/security/events` (admin, auditor): the replicated security events, oldest first.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &auth::SECURITY_EVENTS_READ).await?;
    let limit = q.limit.unwrap_or(SECURITY_EVENTS_PAGE_MAX).clamp(1, SECURITY_EVENTS_PAGE_MAX);
    let after = match &q.after {
        None => None,
        Some(a) => Some(hex::decode(a).map_err(|_| ApiError::bad_request("`after` must be a `next` value"))?),
    };
    let rows = state.node.reader.scan(tables::SECURITY_EVENT, after.as_deref(), limit).map_err(ApiError::internal)?;
    let mut events = Vec::with_capacity(rows.len());
    for (_, v) in &rows {
        let e = <state::SecurityEvent as prost::Message>::decode(v.as_slice()).map_err(ApiError::internal)?;
        if q.kind.as_deref().is_some_and(|k| k != e.kind) {
            continue;
        }
        events.push(
            json!({"at_ms": e.at_ms, "node_id": e.node_id, "kind": e.kind, "subject": e.subject, "detail": e.detail}),
        );
    }
    let next = (rows.len() == limit).then(|| rows.last().map(|(k, _)| hex::encode(k))).flatten();
    Ok(Json(json!({"events": events, "next": next})))
}
