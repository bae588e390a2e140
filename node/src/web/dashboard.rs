//! The operations dashboard (A5.1): per node the live request rate, response-time percentiles and
//! error rate of the last minute (`GET /api/v1/monitoring/nodes`, `crate::live`), cluster health per
//! member and site (leader, applied index, lag), the alerts firing now (`GET /api/v1/alerts`), records
//! and requests per day over the last week and per source today (the replicated connection log, C4),
//! and this node's pipeline. The live part reloads itself every few seconds when scripts run
//! (`data-refresh`); without scripts the page is current when loaded.

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
const REFRESH_SECONDS: u32 = 10;

pub struct MemberRow {
    pub id: u64,
    pub site: String,
    pub voter: bool,
    pub leader: bool,
    pub applied: Option<u64>,
    pub lag: Option<u64>,
}

/// One node's last minute (`crate::live`).
pub struct TrafficRow {
    pub node_id: u64,
    pub site: String,
    pub reachable: bool,
    pub rate: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub error_rate_percent: f64,
    pub requests: u64,
}

/// One day of the connection log, summed over the sources.
pub struct DayRow {
    pub day: String,
    pub requests: u64,
    pub failures: u64,
    pub records: u64,
    /// Bar length in the chart (SVG units).
    pub width: u32,
    pub y: u32,
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
    /// The last seven days (admins), oldest first.
    days: Option<Vec<DayRow>>,
    pipeline: Vec<Value>,
    /// `None` when the monitoring statistics could not be read.
    traffic: Option<Vec<TrafficRow>>,
    /// `None` when the alerts could not be read.
    alerts: Option<Vec<Value>>,
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
    let (sources_today, days) = if ctx.has_role(Role::Admin) {
        let (today, days) = connection_log(&state, &ctx).await;
        (Some(today), Some(days))
    } else {
        (None, None)
    };
    let traffic = match crate::live::get_nodes(State(state.clone()), ctx.headers.clone()).await {
        Ok(j) => Some(
            j.0.nodes
                .iter()
                .map(|n| {
                    let all =
                        n.live.as_ref().and_then(|l| l.last_minute.channels.get("all").cloned()).unwrap_or_default();
                    let ms = |s: Option<f64>| s.map(|s| s * 1000.0);
                    TrafficRow {
                        node_id: n.node_id,
                        site: n.site.clone(),
                        reachable: n.reachable,
                        rate: all.requests_per_second,
                        p50_ms: ms(all.p50_seconds),
                        p95_ms: ms(all.p95_seconds),
                        p99_ms: ms(all.p99_seconds),
                        error_rate_percent: all.error_rate * 100.0,
                        requests: all.requests,
                    }
                })
                .collect(),
        ),
        Err(e) => {
            tracing::warn!(error = %e.message, "dashboard: no monitoring statistics");
            None
        }
    };
    let alerts = super::call_routes(crate::alerts::api::routes(), &state, &ctx, axum::http::Method::GET, "/", None)
        .await
        .map(|v| v["alerts"].as_array().cloned().unwrap_or_default())
        .ok();
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
        days,
        pipeline,
        traffic,
        alerts,
        ctx,
    }))
}

impl DashboardPage {
    /// Milliseconds, or a dash without requests.
    fn opt_ms(&self, v: &Option<f64>) -> String {
        v.map_or_else(|| "–".into(), |ms| self.ctx.num(ms))
    }
}

/// Days shown in the records-per-day chart.
const DAYS_SHOWN: u64 = 7;

/// From the replicated connection log (C4): today's counts per active source, and requests, failures
/// and records per day over the last `DAYS_SHOWN` days, summed over the sources.
async fn connection_log(state: &AppState, ctx: &Ctx) -> (Vec<SourceToday>, Vec<DayRow>) {
    let Ok(sources) = super::catalog::sources_of(state) else { return (Vec::new(), Vec::new()) };
    let now = crate::api::now_ms();
    let iso = |ms: u64| {
        let d = dtm_cluster::audit::vietnam_day(ms);
        format!("{:04}-{:02}-{:02}", d / 10_000, (d / 100) % 100, d % 100)
    };
    let today = iso(now);
    let first = iso(now.saturating_sub((DAYS_SHOWN - 1) * 86_400_000));
    let days_query = format!("from={first}&to={today}");
    let mut per_day: std::collections::BTreeMap<String, (u64, u64, u64)> =
        (0..DAYS_SHOWN).map(|i| (iso(now.saturating_sub((DAYS_SHOWN - 1 - i) * 86_400_000)), (0, 0, 0))).collect();
    let mut out = Vec::new();
    for s in sources.into_iter().filter(|s| !s.removed) {
        let Ok(q) = super::query_str(&days_query) else { continue };
        let answer = for_web::connections(State(state.clone()), ctx.headers.clone(), Path(s.id.clone()), q);
        let Ok(v) = answer.await else { continue };
        let mut row = SourceToday { id: s.id, requests: 0, successes: 0, failures: 0, records: 0 };
        for d in v.0["days"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let n = |k: &str| d[k].as_u64().unwrap_or(0);
            let day = d["day"].as_str().unwrap_or("").to_string();
            if day == today {
                row = SourceToday {
                    requests: n("requests"),
                    successes: n("successes"),
                    failures: n("failures"),
                    records: n("records"),
                    ..row
                };
            }
            if let Some(e) = per_day.get_mut(&day) {
                e.0 += n("requests");
                e.1 += n("failures");
                e.2 += n("records");
            }
        }
        out.push(row);
    }
    let max = per_day.values().map(|e| e.2).max().unwrap_or(0);
    let days = per_day
        .into_iter()
        .enumerate()
        .map(|(i, (day, (requests, failures, records)))| DayRow {
            day,
            requests,
            failures,
            records,
            width: if max > 0 { ((records as f64 / max as f64) * 300.0).round() as u32 } else { 0 },
            y: 10 + i as u32 * 26,
        })
        .collect();
    (out, days)
}
