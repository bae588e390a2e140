//! The audit viewer for auditors (F8, F9): the trail's head (size, head hash, Merkle root, last
//! signed checkpoint), a filtered and paged list of entries with their hashes, and the API's exports
//! of the same selection. Entries come from `GET /api/v1/audit` (same filters, same paging cursor).

use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::Uri;
use axum::response::Response;
use serde_json::Value;

use super::Ctx;
use super::FormErrors;
use super::PageError;
use super::for_web;
use super::html;
use super::query_str;
use crate::api::AppState;
use crate::api::auth::Role;

const ROLES: &[Role] = &[Role::Admin, Role::Auditor];
/// Entries on one page.
const PAGE_ENTRIES: usize = 50;
const FILTERS: [&str; 5] = ["from", "to", "principal", "operation", "target"];

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    ctx: Ctx,
    filters: Vec<(&'static str, &'static str, String)>,
    head: Value,
    entries: Vec<Value>,
    next_href: Option<String>,
    first_href: Option<String>,
    exports: Vec<(&'static str, String)>,
    errors: FormErrors,
}

impl AuditPage {
    /// How many nodes signed the last checkpoint.
    fn signatures(&self) -> usize {
        self.head["last_checkpoint"]["signatures"].as_array().map_or(0, Vec::len)
    }
    /// The first 16 hex digits of a hash (the full one is in the exports).
    fn short(&self, v: &Value) -> String {
        v.as_str().map(|h| h.chars().take(16).collect()).unwrap_or_default()
    }
}

pub async fn page(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Result<Response, PageError> {
    let ctx = Ctx::load(&state, &headers, &uri, ROLES).await?;
    let labels = [
        ("from", super::tk("common.from")),
        ("to", super::tk("common.to")),
        ("principal", super::tk("audit.principal")),
        ("operation", super::tk("audit.operation")),
        ("target", super::tk("audit.target")),
    ];
    let values: Vec<(&str, String)> =
        FILTERS.iter().filter_map(|f| ctx.param(f).map(|v| (*f, v.trim().to_string()))).collect();
    let filter_query = serde_urlencoded::to_string(&values).unwrap_or_default();
    let after = ctx.param("after");
    let mut list_pairs = values.clone();
    list_pairs.push(("limit", PAGE_ENTRIES.to_string()));
    if let Some(a) = &after {
        list_pairs.push(("after", a.clone()));
    }
    let list_query = serde_urlencoded::to_string(&list_pairs).unwrap_or_default();
    let mut page = AuditPage {
        filters: labels
            .iter()
            .map(|(name, key)| {
                let v = values.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or_default();
                (*name, *key, v)
            })
            .collect(),
        head: Value::Null,
        entries: Vec::new(),
        next_href: None,
        first_href: after.as_ref().map(|_| format!("/ui/audit?{filter_query}")),
        exports: ["csv", "xlsx", "jsonl", "docx"]
            .iter()
            .map(|f| (*f, format!("/api/v1/audit/export?format={f}&{filter_query}")))
            .collect(),
        errors: FormErrors::default(),
        ctx,
    };
    if let Ok(h) = for_web::audit_head(State(state.clone()), page.ctx.headers.clone(), query_str("")?).await {
        page.head = h.0;
    }
    match for_web::audit_list(State(state), page.ctx.headers.clone(), query_str(&list_query)?).await {
        Ok(j) => {
            page.entries = j.0["entries"].as_array().cloned().unwrap_or_default();
            page.next_href = j.0["next"].as_str().map(|n| {
                let mut pairs = values.clone();
                pairs.push(("after", n.to_string()));
                format!("/ui/audit?{}", serde_urlencoded::to_string(&pairs).unwrap_or_default())
            });
        }
        Err(e) => {
            let field = FILTERS.iter().find(|f| e.message.contains(&format!("`{f}`"))).copied().unwrap_or("");
            let field = match field {
                "from" => "from",
                "to" => "to",
                "principal" => "principal",
                "operation" => "operation",
                "target" => "target",
                _ => "",
            };
            page.errors = FormErrors::api(&page.ctx, field, &e);
        }
    }
    Ok(html(&page))
}
