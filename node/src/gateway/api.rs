//! The gateway's admin endpoints (`/api/v1/gateway/...`): rate limits, IP rules and blocks. Every
//! change is a `GatewayCommand` through the log; the node that answers reloads its gateway state
//! before answering, the others within `GATEWAY_REFRESH_INTERVAL`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::delete;
use axum::routing::get;
use dtm_cluster::tables;
use dtm_model::state;
use dtm_model::state::command_response::Result as Reply;
use dtm_model::state::gateway_command::Kind;
use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;
use serde_json::json;

use super::events;
use super::ip;
use super::limiter::Group;
use crate::api::AppState;
use crate::api::auth;
use crate::api::error::ApiError;
use crate::api::error::ApiResult;
use crate::api::error::rejected;
use crate::limits::ADMIN_BODY_BYTES_MAX;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/limits", get(get_limits).put(put_limits))
        .route("/ip-rules", get(get_ip_rules).put(put_ip_rules))
        .route("/blocks", get(get_blocks))
        .route("/blocks/{ip}", delete(delete_block))
}

/// Proposes a gateway command; once committed (and applied here) reloads this node's gateway.
pub async fn propose(state: &AppState, kind: Kind) -> ApiResult<u64> {
    let cmd = crate::api::command(state, state::command::Kind::Gateway(state::GatewayCommand { kind: Some(kind) }));
    let (resp, index) = state.node.write(cmd).await?;
    if let Err(e) = state.gateway.refresh(&state.node.reader) {
        tracing::warn!(error = %e, "could not reload the gateway after a change");
    }
    match resp.result {
        Some(Reply::Applied(_)) => Ok(index),
        Some(Reply::Rejected(r)) => Err(rejected(&r.code, r.message)),
        _ => Err(ApiError::internal("unexpected command response")),
    }
}

async fn body_json<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: Body) -> ApiResult<T> {
    let bytes = crate::api::read_body(headers, body, ADMIN_BODY_BYTES_MAX).await?;
    let value = crate::api::parse_json(headers, &bytes)?;
    serde_json::from_value(value).map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))
}

#[derive(Deserialize, Serialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct LimitBody {
    per_second: u32,
    burst: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutLimits {
    limits: BTreeMap<String, LimitBody>,
}

async fn get_limits(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    auth::require_admin(&state, &headers).await?;
    let set =
        state.node.reader.get_msg::<state::RateLimits>(tables::GATEWAY_RATE_LIMITS).map_err(ApiError::internal)?;
    let from_cluster = set.as_ref().map(|s| s.groups.clone()).unwrap_or_default();
    let effective = state.gateway.rate_limits();
    let config = state.gateway.config_rate_limits();
    let limits: BTreeMap<&str, Value> = Group::ALL
        .iter()
        .map(|g| {
            let (l, origin) = match from_cluster.get(g.name()) {
                Some(l) => ((l.per_second, l.burst), "cluster"),
                None => config.get(g).map_or(((0, 0), "none"), |l| ((l.per_second, l.burst), "config")),
            };
            let applied = effective.get(g).map(|e| (e.per_second, e.burst));
            (g.name(), json!({"per_second": l.0, "burst": l.1, "from": origin, "in_force_here": applied == Some(l)}))
        })
        .collect();
    Ok(Json(json!({"limits": limits, "updated_at_ms": set.map(|s| s.updated_at_ms)})))
}

async fn put_limits(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult<Json<Value>> {
    let who = auth::require_admin(&state, &headers).await?;
    let req: PutLimits = body_json(&headers, body).await?;
    let mut groups = BTreeMap::new();
    for (name, l) in &req.limits {
        if Group::from_name(name).is_none() {
            let known = Group::ALL.map(Group::name).join(", ");
            return Err(ApiError::bad_request(format!("unknown operation group `{name}` (known: {known})")));
        }
        if l.per_second == 0 || l.burst == 0 {
            return Err(ApiError::bad_request(format!("`{name}`: per_second and burst must be at least 1")));
        }
        groups.insert(name.clone(), state::RateLimit { per_second: l.per_second, burst: l.burst });
    }
    let limits = state::RateLimits { groups, updated_at_ms: crate::api::now_ms() };
    let detail = format!("{:?}", req.limits.iter().map(|(g, l)| (g, l.per_second, l.burst)).collect::<Vec<_>>());
    let index = propose(&state, Kind::SetRateLimits(state::SetRateLimits { limits: Some(limits) })).await?;
    events::admin_change("rate_limits_changed", &who.name(), &detail);
    Ok(Json(json!({"commit_index": index})))
}

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
struct RuleSetBody {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
struct IpRulesBody {
    #[serde(default)]
    global: RuleSetBody,
    #[serde(default)]
    credentials: BTreeMap<String, RuleSetBody>,
}

fn rule_set(body: &RuleSetBody, what: &str) -> ApiResult<state::IpRuleSet> {
    use dtm_cluster::gateway::IP_RULE_ENTRIES_MAX;
    if body.allow.len() > IP_RULE_ENTRIES_MAX || body.deny.len() > IP_RULE_ENTRIES_MAX {
        return Err(ApiError::bad_request(format!("{what}: at most {IP_RULE_ENTRIES_MAX} entries per list")));
    }
    let set = ip::RuleSet::parse(&body.allow, &body.deny).map_err(|e| ApiError::bad_request(format!("{what}: {e}")))?;
    // Stored in canonical form, so every node parses exactly what was checked here.
    let text = |nets: &[ipnet::IpNet]| nets.iter().map(ToString::to_string).collect();
    Ok(state::IpRuleSet { allow: text(&set.allow), deny: text(&set.deny) })
}

async fn get_ip_rules(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    auth::require_admin(&state, &headers).await?;
    let rules = state.node.reader.get_msg::<state::IpRules>(tables::GATEWAY_IP_RULES).map_err(ApiError::internal)?;
    let rules = rules.unwrap_or_default();
    let set = |s: &state::IpRuleSet| RuleSetBody { allow: s.allow.clone(), deny: s.deny.clone() };
    let body = IpRulesBody {
        global: rules.global.as_ref().map(set).unwrap_or_default(),
        credentials: rules.credentials.iter().map(|(k, v)| (k.clone(), set(v))).collect(),
    };
    let mut v = serde_json::to_value(body).map_err(ApiError::internal)?;
    v["updated_at_ms"] = json!(rules.updated_at_ms);
    Ok(Json(v))
}

async fn put_ip_rules(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult<Json<Value>> {
    let who = auth::require_admin(&state, &headers).await?;
    let req: IpRulesBody = body_json(&headers, body).await?;
    if req.credentials.len() > dtm_cluster::gateway::IP_RULE_CREDENTIALS_MAX {
        return Err(ApiError::bad_request("too many credentials with rules of their own"));
    }
    let mut credentials = BTreeMap::new();
    for (id, set) in &req.credentials {
        if !(1..=64).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ApiError::bad_request(format!(
                "`{id}` is not a credential id (the <id> of dtmk.<id>.<secret>)"
            )));
        }
        credentials.insert(id.to_ascii_lowercase(), rule_set(set, &format!("credentials.{id}"))?);
    }
    let rules = state::IpRules {
        global: Some(rule_set(&req.global, "global")?),
        credentials,
        updated_at_ms: crate::api::now_ms(),
    };
    let detail = format!(
        "global allow {} deny {}, {} credentials",
        req.global.allow.len(),
        req.global.deny.len(),
        req.credentials.len()
    );
    let index = propose(&state, Kind::SetIpRules(state::SetIpRules { rules: Some(rules) })).await?;
    events::admin_change("ip_rules_changed", &who.name(), &detail);
    Ok(Json(json!({"commit_index": index})))
}

async fn get_blocks(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    auth::require_admin(&state, &headers).await?;
    let blocks = state.gateway.blocks(crate::api::now_ms());
    let blocks: Vec<Value> = blocks
        .into_iter()
        .map(|(b, replicated)| {
            json!({"ip": b.address, "blocked_at_ms": b.blocked_at_ms, "expires_at_ms": b.expires_at_ms,
                   "reason": b.reason, "node_id": b.node_id, "replicated": replicated})
        })
        .collect();
    Ok(Json(json!({"blocks": blocks})))
}

async fn delete_block(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(ip): Path<String>,
) -> ApiResult<Json<Value>> {
    let who = auth::require_admin(&state, &headers).await?;
    let addr = ip
        .parse::<IpAddr>()
        .map(ip::canonical)
        .map_err(|_| ApiError::bad_request(format!("`{ip}` is not an IP address")))?;
    let was_pending = state.gateway.forget_pending_block(addr);
    let kind = Kind::UnblockAddress(state::UnblockAddress { address: addr.to_string() });
    let index = match propose(&state, kind).await {
        Ok(index) => Some(index),
        Err(e) if e.status == axum::http::StatusCode::NOT_FOUND && was_pending => None,
        Err(e) => return Err(e),
    };
    events::admin_change("address_unblocked", &who.name(), &addr.to_string());
    Ok(Json(json!({"ip": addr.to_string(), "commit_index": index})))
}
