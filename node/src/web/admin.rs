//! Administration (admin role): source systems and their API keys (register, issue, revoke, remove),
//! users and roles (create, disable), the gateway's rate limits, IP rules and address blocks, and
//! the cluster's members (add, remove). Every change goes through the API's own handler with the
//! admin's session, so validation, the log command and the audit entry are the API's. After a
//! change the page redirects to itself (`?m=saved`), except when it must show a new API key once.

use askama::Template;
use axum::body::Body;
use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::Method;
use axum::http::Uri;
use axum::response::Redirect;
use axum::response::Response;
use dtm_cluster::tables;
use dtm_model::state as st;
use serde_json::Value;
use serde_json::json;

use super::ADMIN_ONLY;
use super::Ctx;
use super::FormErrors;
use super::PageError;
use super::for_web;
use super::html;
use super::with_status;
use crate::api::AppState;
use crate::api::error::ApiError;

/// API keys listed on the sources page.
const KEYS_LISTED_MAX: usize = 5_000;
/// Roles a user can be given here (sources are systems, not users).
pub const USER_ROLES: [&str; 5] = ["admin", "operator", "analyst", "auditor", "data-entry"];
/// The gateway's operation groups (`crate::gateway::limiter::Group`).
pub const GROUPS: [&str; 6] = ["ingest", "batch", "query", "export", "admin", "login"];

type Pairs = Vec<(String, String)>;

fn field<'a>(pairs: &'a Pairs, name: &str) -> &'a str {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim()).unwrap_or("")
}

fn saved(path: &str) -> Response {
    axum::response::IntoResponse::into_response(Redirect::to(&format!("{path}?m=saved")))
}

/// A JSON body for an API handler.
fn body(v: Value) -> Body {
    Body::from(v.to_string())
}

// ---- Sources and keys ----

pub struct KeyRow {
    pub key_id: String,
    pub created_at_ms: u64,
    pub revoked: bool,
}

pub struct SourceAdminRow {
    pub source: super::catalog::SourceRow,
    pub keys: Vec<KeyRow>,
}

#[derive(Template)]
#[template(path = "admin/sources.html")]
struct SourcesPage {
    ctx: Ctx,
    sources: Vec<SourceAdminRow>,
    /// A key just issued: (source, full secret), shown once.
    new_key: Option<(String, String)>,
    form: Pairs,
    errors: FormErrors,
}

impl SourcesPage {
    fn value(&self, name: &str) -> &str {
        field(&self.form, name)
    }
    fn masked(&self) -> bool {
        field(&self.form, "form") == "masked"
    }
}

fn source_rows(state: &AppState) -> Result<Vec<SourceAdminRow>, ApiError> {
    let keys = state.node.reader.scan(tables::API_KEY, None, KEYS_LISTED_MAX).map_err(ApiError::internal)?;
    let keys: Vec<st::IssueKey> =
        keys.into_iter().filter_map(|(_, v)| prost::Message::decode(v.as_slice()).ok()).collect();
    Ok(super::catalog::sources_of(state)?
        .into_iter()
        .map(|source| {
            let keys = keys
                .iter()
                .filter(|k| k.source_id == source.id)
                .filter_map(|k| k.key.as_ref())
                .map(|k| KeyRow { key_id: k.key_id.clone(), created_at_ms: k.created_at_ms, revoked: k.revoked })
                .collect();
            SourceAdminRow { source, keys }
        })
        .collect())
}

async fn sources_page(
    state: &AppState,
    ctx: Ctx,
    form: Pairs,
    errors: FormErrors,
    new_key: Option<(String, String)>,
) -> Result<Response, PageError> {
    let status = errors.status();
    Ok(with_status(status, html(&SourcesPage { sources: source_rows(state)?, ctx, new_key, form, errors })))
}

pub async fn sources(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Result<Response, PageError> {
    let ctx = Ctx::load(&state, &headers, &uri, ADMIN_ONLY).await?;
    sources_page(&state, ctx, Vec::new(), FormErrors::default(), None).await
}

pub async fn sources_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    b: Body,
) -> Result<Response, PageError> {
    let ctx = Ctx::load(&state, &headers, &uri, ADMIN_ONLY).await?;
    let form: Pairs = ctx.form(&headers, b).await?;
    let source = field(&form, "source").to_string();
    let s = State(state.clone());
    let answer = match field(&form, "action") {
        "create" => {
            let mut errors = FormErrors::default();
            if !crate::api::valid_id(field(&form, "id")) {
                errors.add("source-id", ctx.t("admin.source_id_invalid"));
            }
            if field(&form, "name").is_empty() {
                errors.add("source-name", ctx.t("admin.source_name_missing"));
            }
            if !errors.is_empty() {
                return sources_page(&state, ctx, form, errors, None).await;
            }
            let v = json!({
                "id": field(&form, "id"), "name": field(&form, "name"), "agency": field(&form, "agency"),
                "contact": field(&form, "contact"), "form": if field(&form, "form") == "masked" { "masked" } else { "raw" },
            });
            match for_web::create_source(s, ctx.json_headers(), body(v)).await {
                Ok((_, j)) => {
                    let key = (field(&form, "id").to_string(), j.0["api_key"].as_str().unwrap_or("").to_string());
                    return sources_page(&state, ctx, Vec::new(), FormErrors::default(), Some(key)).await;
                }
                Err(e) => Err(e),
            }
        }
        "issue_key" => match for_web::issue_key(s, ctx.headers.clone(), Path(source.clone())).await {
            Ok((_, j)) => {
                let key = (source, j.0["api_key"].as_str().unwrap_or("").to_string());
                return sources_page(&state, ctx, Vec::new(), FormErrors::default(), Some(key)).await;
            }
            Err(e) => Err(e),
        },
        "revoke_key" => {
            let key = field(&form, "key").to_string();
            for_web::revoke_key(s, ctx.headers.clone(), Path((source, key))).await.map(|_| ())
        }
        "remove" => for_web::remove_source(s, ctx.headers.clone(), Path(source)).await.map(|_| ()),
        _ => Err(ApiError::bad_request("unknown action")),
    };
    match answer {
        Ok(()) => Ok(saved("/ui/admin/sources")),
        Err(e) => {
            let errors = FormErrors::api(&ctx, "", &e);
            sources_page(&state, ctx, form, errors, None).await
        }
    }
}

// ---- Users ----

#[derive(Template)]
#[template(path = "admin/users.html")]
struct UsersPage {
    ctx: Ctx,
    users: Vec<Value>,
    form: Pairs,
    errors: FormErrors,
}

impl UsersPage {
    fn value(&self, name: &str) -> &str {
        field(&self.form, name)
    }
    fn is_role(&self, role: &str) -> bool {
        field(&self.form, "role") == role
    }
}

async fn users_page(state: &AppState, ctx: Ctx, form: Pairs, errors: FormErrors) -> Result<Response, PageError> {
    let users = match for_web::list_users(State(state.clone()), ctx.headers.clone()).await {
        Ok(j) => j.0["users"].as_array().cloned().unwrap_or_default(),
        Err(e) => return Err(PageError::ApiIn(Box::new(ctx), e)),
    };
    Ok(with_status(errors.status(), html(&UsersPage { ctx, users, form, errors })))
}

pub async fn users(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Result<Response, PageError> {
    let ctx = Ctx::load(&state, &headers, &uri, ADMIN_ONLY).await?;
    users_page(&state, ctx, Vec::new(), FormErrors::default()).await
}

pub async fn users_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    b: Body,
) -> Result<Response, PageError> {
    let ctx = Ctx::load(&state, &headers, &uri, ADMIN_ONLY).await?;
    let form: Pairs = ctx.form(&headers, b).await?;
    let s = State(state.clone());
    let answer = match field(&form, "action") {
        "create" => {
            let mut errors = FormErrors::default();
            if field(&form, "username").is_empty() {
                errors.add("user-name", ctx.t("admin.username_missing"));
            }
            if field(&form, "role") == "data-entry" && !crate::api::valid_id(field(&form, "agency")) {
                errors.add("user-agency", ctx.t("admin.agency_missing"));
            }
            if field(&form, "password").chars().count() < 12 {
                errors.add("user-password", ctx.t("admin.password_short"));
            }
            if !errors.is_empty() {
                return users_page(&state, ctx, form, errors).await;
            }
            let v = json!({
                "username": field(&form, "username"), "role": field(&form, "role"),
                "agency": field(&form, "agency"), "password": field(&form, "password"),
            });
            for_web::create_user(s, ctx.json_headers(), body(v)).await.map(|_| ())
        }
        "disable" => {
            for_web::disable_user(s, ctx.headers.clone(), Path(field(&form, "username").to_string())).await.map(|_| ())
        }
        _ => Err(ApiError::bad_request("unknown action")),
    };
    match answer {
        Ok(()) => Ok(saved("/ui/admin/users")),
        Err(e) => {
            let errors = FormErrors::api(&ctx, "", &e);
            let mut form = form;
            form.retain(|(k, _)| k != "password");
            users_page(&state, ctx, form, errors).await
        }
    }
}

// ---- Gateway ----

/// Calls the gateway's admin routes (`crate::gateway::api`) in-process as this visitor.
async fn gateway_call(
    state: &AppState,
    ctx: &Ctx,
    method: Method,
    path: &str,
    v: Option<Value>,
) -> Result<Value, ApiError> {
    super::call_routes(crate::gateway::api::routes(), state, ctx, method, path, v).await
}

#[derive(Template)]
#[template(path = "admin/gateway.html")]
struct GatewayPage {
    ctx: Ctx,
    limits: Value,
    allow: String,
    deny: String,
    blocks: Vec<Value>,
    errors: FormErrors,
}

impl GatewayPage {
    fn limit(&self, group: &str, what: &str) -> String {
        match self.limits[group][what].as_u64() {
            Some(0) | None => String::new(),
            Some(n) => n.to_string(),
        }
    }
    fn origin(&self, group: &str) -> &'static str {
        match self.limits[group]["from"].as_str() {
            Some("cluster") => self.ctx.t("admin.from_cluster"),
            Some("config") => self.ctx.t("admin.from_config"),
            _ => self.ctx.t("admin.from_none"),
        }
    }
}

async fn gateway_page(state: &AppState, ctx: Ctx, errors: FormErrors) -> Result<Response, PageError> {
    let limits = gateway_call(state, &ctx, Method::GET, "/limits", None).await;
    let rules = gateway_call(state, &ctx, Method::GET, "/ip-rules", None).await;
    let blocks = gateway_call(state, &ctx, Method::GET, "/blocks", None).await;
    let (limits, rules, blocks) = match (limits, rules, blocks) {
        (Ok(l), Ok(r), Ok(b)) => (l, r, b),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return Err(PageError::ApiIn(Box::new(ctx), e)),
    };
    let lines = |v: &Value| {
        v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n")).unwrap_or_default()
    };
    let status = errors.status();
    let resp = html(&GatewayPage {
        limits: limits["limits"].clone(),
        allow: lines(&rules["global"]["allow"]),
        deny: lines(&rules["global"]["deny"]),
        blocks: blocks["blocks"].as_array().cloned().unwrap_or_default(),
        errors,
        ctx,
    });
    Ok(with_status(status, resp))
}

pub async fn gateway(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Result<Response, PageError> {
    let ctx = Ctx::load(&state, &headers, &uri, ADMIN_ONLY).await?;
    gateway_page(&state, ctx, FormErrors::default()).await
}

pub async fn gateway_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    b: Body,
) -> Result<Response, PageError> {
    let ctx = Ctx::load(&state, &headers, &uri, ADMIN_ONLY).await?;
    let form: Pairs = ctx.form(&headers, b).await?;
    let answer = match field(&form, "action") {
        "limits" => {
            let mut limits = serde_json::Map::new();
            let mut errors = FormErrors::default();
            for g in GROUPS {
                let (ps, burst) = (field(&form, &format!("ps-{g}")), field(&form, &format!("burst-{g}")));
                if ps.is_empty() && burst.is_empty() {
                    continue;
                }
                match (ps.parse::<u32>(), burst.parse::<u32>()) {
                    (Ok(p), Ok(b)) if p > 0 && b > 0 => {
                        limits.insert(g.to_string(), json!({"per_second": p, "burst": b}));
                    }
                    _ => errors.add(field_id(g), format!("{} {g}", ctx.t("admin.limit_invalid"))),
                }
            }
            if !errors.is_empty() {
                return gateway_page(&state, ctx, errors).await;
            }
            gateway_call(&state, &ctx, Method::PUT, "/limits", Some(json!({"limits": limits}))).await.map(|_| ())
        }
        "ip_rules" => {
            let list = |name: &str| -> Vec<String> {
                field(&form, name).lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect()
            };
            match gateway_call(&state, &ctx, Method::GET, "/ip-rules", None).await {
                Ok(current) => {
                    let v = json!({
                        "global": {"allow": list("allow"), "deny": list("deny")},
                        "credentials": current["credentials"].clone(),
                    });
                    gateway_call(&state, &ctx, Method::PUT, "/ip-rules", Some(v)).await.map(|_| ())
                }
                Err(e) => Err(e),
            }
        }
        "unblock" => {
            let ip = field(&form, "ip");
            if ip.parse::<std::net::IpAddr>().is_err() {
                Err(ApiError::bad_request("not an IP address"))
            } else {
                gateway_call(&state, &ctx, Method::DELETE, &format!("/blocks/{ip}"), None).await.map(|_| ())
            }
        }
        _ => Err(ApiError::bad_request("unknown action")),
    };
    match answer {
        Ok(()) => Ok(saved("/ui/admin/gateway")),
        Err(e) => {
            let errors = FormErrors::api(&ctx, "", &e);
            gateway_page(&state, ctx, errors).await
        }
    }
}

/// The id of a group's first input (error links point at it).
fn field_id(group: &str) -> &'static str {
    match group {
        "ingest" => "ps-ingest",
        "batch" => "ps-batch",
        "query" => "ps-query",
        "export" => "ps-export",
        "admin" => "ps-admin",
        _ => "ps-login",
    }
}

// ---- Cluster ----

#[derive(Template)]
#[template(path = "admin/cluster.html")]
struct ClusterPage {
    ctx: Ctx,
    leader: Option<u64>,
    members: Vec<Value>,
    form: Pairs,
    errors: FormErrors,
}

impl ClusterPage {
    fn value(&self, name: &str) -> &str {
        field(&self.form, name)
    }
    fn voter(&self) -> bool {
        field(&self.form, "voter") == "on"
    }
    fn is_leader(&self, member: &Value) -> bool {
        member["id"].as_u64().is_some_and(|id| Some(id) == self.leader)
    }
}

async fn cluster_page(state: &AppState, ctx: Ctx, form: Pairs, errors: FormErrors) -> Result<Response, PageError> {
    let status = match for_web::cluster_status(State(state.clone()), ctx.headers.clone()).await {
        Ok(j) => j.0,
        Err(e) => return Err(PageError::ApiIn(Box::new(ctx), e)),
    };
    let code = errors.status();
    let resp = html(&ClusterPage {
        leader: status["leader_id"].as_u64(),
        members: status["members"].as_array().cloned().unwrap_or_default(),
        ctx,
        form,
        errors,
    });
    Ok(with_status(code, resp))
}

pub async fn cluster(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Result<Response, PageError> {
    let ctx = Ctx::load(&state, &headers, &uri, ADMIN_ONLY).await?;
    cluster_page(&state, ctx, Vec::new(), FormErrors::default()).await
}

pub async fn cluster_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    b: Body,
) -> Result<Response, PageError> {
    let ctx = Ctx::load(&state, &headers, &uri, ADMIN_ONLY).await?;
    let form: Pairs = ctx.form(&headers, b).await?;
    let s = State(state.clone());
    let answer = match field(&form, "action") {
        "add" => {
            let Ok(id) = field(&form, "id").parse::<u64>() else {
                let mut errors = FormErrors::default();
                errors.add("node-id", ctx.t("admin.node_id_invalid"));
                return cluster_page(&state, ctx, form, errors).await;
            };
            let v = json!({
                "id": id, "http_addr": field(&form, "http_addr"), "grpc_addr": field(&form, "grpc_addr"),
                "site": field(&form, "site"), "voter": field(&form, "voter") == "on",
            });
            for_web::add_node(s, ctx.json_headers(), body(v)).await.map(|_| ())
        }
        "remove" => match field(&form, "id").parse::<u64>() {
            Ok(id) => for_web::remove_node(s, ctx.headers.clone(), Path(id)).await.map(|_| ()),
            Err(_) => Err(ApiError::bad_request("not a node id")),
        },
        _ => Err(ApiError::bad_request("unknown action")),
    };
    match answer {
        Ok(()) => Ok(saved("/ui/admin/cluster")),
        Err(e) => {
            let errors = FormErrors::api(&ctx, "", &e);
            cluster_page(&state, ctx, form, errors).await
        }
    }
}
