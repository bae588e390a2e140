//! Health, readiness, cluster status and membership changes.

use axum::Json;
use axum::body::Body;
use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use dtm_model::NodeInfo;
use serde_json::Value;
use serde_json::json;

use super::AppState;
use super::auth;
use super::error::ApiError;
use super::error::ApiResult;
use crate::limits::ADMIN_BODY_BYTES_MAX;

pub async fn health(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"status": "ok", "node_id": state.node.id}))
}

pub async fn ready(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    match state.node.not_ready_because() {
        None => Ok(Json(json!({"status": "ready", "node_id": state.node.id}))),
        Some(why) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", why)),
    }
}

pub async fn status(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &auth::SIGNED_IN).await?;
    let s = state.node.status().await;
    let mut v = serde_json::to_value(s).map_err(ApiError::internal)?;
    let (sites, warnings) = site_survival(v["members"].as_array().map(Vec::as_slice).unwrap_or_default());
    v["sites"] = Value::Array(sites);
    v["warnings"] = serde_json::json!(warnings);
    Ok(Json(v))
}

/// Per site: its voters and learners, and whether the voters of the other sites still make a
/// quorum when it is lost (A1.4: a whole site may be lost). A warning names each site whose loss
/// would stop writes.
pub fn site_survival(members: &[Value]) -> (Vec<Value>, Vec<String>) {
    let mut sites: std::collections::BTreeMap<String, (u64, u64)> = std::collections::BTreeMap::new();
    for m in members {
        let site = m["site"].as_str().unwrap_or("default").to_string();
        let e = sites.entry(site).or_default();
        if m["voter"].as_bool().unwrap_or(false) {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    let voters: u64 = sites.values().map(|(v, _)| v).sum();
    let quorum = voters / 2 + 1;
    let mut warnings = Vec::new();
    for m in members.iter().filter(|m| m["catching_up"] == true) {
        warnings.push(format!(
            "node {} started without data and does not vote until it has caught up with the leader",
            m["id"]
        ));
    }
    if sites.len() < 2 {
        warnings.push("all members are in one site: losing it loses the cluster".to_string());
    }
    let out = sites
        .iter()
        .map(|(site, (v, l))| {
            let left = voters - v;
            let survives = left >= quorum;
            if !survives && sites.len() > 1 {
                warnings.push(format!(
                    "losing site {site} ({v} of {voters} voters) leaves {left}, fewer than the quorum of {quorum}: \
                     writes would stop"
                ));
            }
            serde_json::json!({"site": site, "voters": v, "learners": l, "survives_loss": survives})
        })
        .collect();
    (out, warnings)
}

pub async fn add_node(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    auth::require(&state, &headers, &auth::OPERATE).await?;
    let bytes = super::read_body(&headers, body, ADMIN_BODY_BYTES_MAX).await?;
    let v = super::parse_json(&headers, &bytes)?;
    let id = v
        .get("id")
        .and_then(Value::as_u64)
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::bad_request("`id` must be a positive integer"))?;
    let field = |name: &str| -> ApiResult<String> {
        v.get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| ApiError::bad_request(format!("`{name}` must be a non-empty string")))
    };
    let node = NodeInfo {
        http_addr: field("http_addr")?,
        grpc_addr: field("grpc_addr")?,
        site: v.get("site").and_then(Value::as_str).unwrap_or("default").to_string(),
    };
    for addr in [&node.http_addr, &node.grpc_addr] {
        if addr.parse::<std::net::SocketAddr>().is_err() && !addr.contains(':') {
            return Err(ApiError::bad_request(format!("`{addr}` is not host:port")));
        }
    }
    let voter = v.get("voter").and_then(Value::as_bool).unwrap_or(false);
    let mut index = state.node.add_learner(id, node).await?;
    if voter {
        index = state.node.promote(id).await?;
    }
    Ok((StatusCode::CREATED, Json(json!({"id": id, "voter": voter, "commit_index": index}))))
}

pub async fn remove_node(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> ApiResult<Json<Value>> {
    auth::require(&state, &headers, &auth::OPERATE).await?;
    let known = state.node.raft.metrics().borrow().membership_config.membership().get_node(&id).is_some();
    if !known {
        return Err(ApiError::not_found(format!("node {id} is not a member")));
    }
    let index = state.node.remove(id).await?;
    Ok(Json(json!({"id": id, "removed": true, "commit_index": index})))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::site_survival;

    #[test]
    fn a_site_whose_loss_leaves_no_quorum_is_named() {
        let m = |id: u64, site: &str, voter: bool| json!({"id": id, "site": site, "voter": voter});
        let (_, w) = site_survival(&[m(1, "hanoi", true), m(2, "danang", true), m(3, "hcmc", true)]);
        assert!(w.is_empty(), "{w:?}");
        let (sites, w) =
            site_survival(&[m(1, "hanoi", true), m(2, "hanoi", true), m(3, "hcmc", true), m(4, "hcmc", false)]);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("hanoi"), "{w:?}");
        assert_eq!(sites[1]["learners"], 1);
        assert_eq!(sites[1]["survives_loss"], true);
        let (_, w) = site_survival(&[m(1, "x", true), m(2, "x", true), m(3, "x", true)]);
        assert!(w[0].contains("one site"), "{w:?}");
    }

    #[test]
    fn a_member_that_does_not_vote_yet_is_named() {
        let m = |id: u64, site: &str, catching_up: bool| json!({"id": id, "site": site, "voter": true, "catching_up": catching_up});
        let (_, w) = site_survival(&[m(1, "hanoi", false), m(2, "danang", true), m(3, "hcmc", false)]);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("node 2") && w[0].contains("does not vote"), "{w:?}");
    }
}
