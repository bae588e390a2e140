//! The operations dashboard (A5.1): cluster health per site (leader, applied index, lag), per-source
//! ingestion and rejection counts today, this node's pipeline, and — from the monitoring module —
//! request rate, response-time percentiles, error rate, transactions per day and alerts. The live
//! part reloads itself every few seconds when scripts run (`data-refresh`); without scripts the
//! page is current when loaded.

use askama::Template;
use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::Uri;
use axum::response::Response;
use serde_json::Value;

use super::Ctx;
use super::PageError;
use super::for_web;
use super::html;
use crate::api::AppState;
use crate::api::auth::Role;

const ROLES: &[Role] = &[Role::Admin, Role::Operator];
/// Seconds between two reloads of the live part.
const REFRESH_SECONDS: u32 = 5;

pub struct MemberRow {
    pub id: u64,
    pub site: String,
    pub voter: bool,
    pub leader: bool,
    pub applied: Option<u64>,
    pub lag: Option<u64>,
}

pub struct SourceToday {
    pub id: String,
    pub requests: u64,
    pub successes: u64,
    pub failures: u64,
    pub records: u64,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    ctx: Ctx,
    refresh: u32,
    node_id: u64,
    leader: Option<u64>,
    term: u64,
    members: Vec<MemberRow>,
    sites: Vec<Value>,
    warnings: Vec<String>,
    /// `None` when this role may not read the connection log (operators).
    sources_today: Option<Vec<SourceToday>>,
    pipeline: Vec<Value>,
}

pub async fn page(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Result<Response, PageError> {
    let ctx = Ctx::load(&state, &headers, &uri, ROLES).await?;
    let status = match for_web::cluster_status(State(state.clone()), ctx.headers.clone()).await {
        Ok(j) => j.0,
        Err(e) => return Err(PageError::ApiIn(Box::new(ctx), e)),
    };
    let leader = status["leader_id"].as_u64();
    let members_json = status["members"].as_array().cloned().unwrap_or_default();
    let leader_applied = members_json
        .iter()
        .find(|m| Some(m["id"].as_u64().unwrap_or(0)) == leader)
        .and_then(|m| m["applied_index"].as_u64());
    let members = members_json
        .iter()
        .map(|m| {
            let id = m["id"].as_u64().unwrap_or(0);
            let applied = m["applied_index"].as_u64();
            MemberRow {
                id,
                site: m["site"].as_str().unwrap_or("").to_string(),
                voter: m["voter"].as_bool().unwrap_or(false),
                leader: Some(id) == leader,
                applied,
                lag: match (leader_applied, applied) {
                    (Some(l), Some(a)) => Some(l.saturating_sub(a)),
                    _ => None,
                },
            }
        })
        .collect();
    let pipeline = match for_web::get_pipeline(State(state.clone()), ctx.headers.clone()).await {
        Ok(j) => j.0["sources"].as_array().cloned().unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let sources_today = if ctx.has_role(Role::Admin) { Some(sources_today(&state, &ctx).await) } else { None };
    Ok(html(&DashboardPage {
        refresh: REFRESH_SECONDS,
        node_id: status["node_id"].as_u64().unwrap_or(0),
        leader,
        term: status["term"].as_u64().unwrap_or(0),
        members,
        sites: status["sites"].as_array().cloned().unwrap_or_default(),
        warnings: status["warnings"]
            .as_array()
            .map(|a| a.iter().filter_map(|w| w.as_str().map(str::to_string)).collect())
            .unwrap_or_default(),
        sources_today,
        pipeline,
        ctx,
    }))
}

/// Today's counts of every active source, from the replicated connection log (C4).
async fn sources_today(state: &AppState, ctx: &Ctx) -> Vec<SourceToday> {
    let Ok(sources) = super::catalog::sources_of(state) else { return Vec::new() };
    let d = dtm_cluster::audit::vietnam_day(crate::api::now_ms());
    let day = format!("{:04}-{:02}-{:02}", d / 10_000, (d / 100) % 100, d % 100);
    let today_query = format!("from={day}&to={day}");
    let mut out = Vec::new();
    for s in sources.into_iter().filter(|s| !s.removed) {
        let Ok(q) = serde_urlencoded::from_str(&today_query) else { continue };
        let answer =
            for_web::connections(State(state.clone()), ctx.headers.clone(), Path(s.id.clone()), axum::extract::Query(q));
        let Ok(v) = answer.await else { continue };
        let today = v.0["totals"].clone();
        let n = |k: &str| today[k].as_u64().unwrap_or(0);
        out.push(SourceToday {
            id: s.id,
            requests: n("requests"),
            successes: n("successes"),
            failures: n("failures"),
            records: n("records"),
        });
    }
    out
}
