//! The web pages (issue 9): server-rendered HTML under `/ui/`, served by every node, that works
//! without JavaScript (A5.1 dashboard, catalog, analysis, administration, audit viewer, sign-in
//! with TOTP), in Vietnamese (default) and English (A1.2), for WCAG 2.1 AA (A1.9, F10).
//!
//! Pages call the JSON API's handlers in-process (`crate::api::for_web`) with the visitor's session
//! cookie, so a page shows exactly what the API answers, with the same access checks, and costs no
//! HTTP round trip. State-changing forms post `application/x-www-form-urlencoded` with the
//! session's CSRF token in the hidden field `csrf` (`Ctx::check_form`); the API's `X-CSRF-Token`
//! guard leaves `/ui/` to this check.
//!
//! # Adding a page (for page groups such as `reporting.rs`)
//! 1. A handler `async fn(State<AppState>, HeaderMap, Uri, …) -> Result<Response, PageError>` that
//!    starts with `let ctx = Ctx::load(&state, &headers, &uri, ROLES).await?;` (`ROLES` = the roles
//!    that may see it; a visitor without a session is sent to the sign-in page and back).
//! 2. A template `node/templates/<group>/<page>.html` that begins with
//!    `{% extends "layout.html" %}`, fills `{% block title %}` and `{% block main %}`, and a struct
//!    `#[derive(askama::Template)] #[template(path = "<group>/<page>.html")]` with a field `ctx: Ctx`
//!    (the layout reads it). Answer with `Ok(html(&page))`.
//! 3. Text only through `{{ ctx.t("nav.home") }}` (or `ctx.t(tk("nav.home"))` in Rust), keys added to both
//!    `node/i18n/vi.txt` and `en.txt`; numbers with `ctx.num(..)`/`ctx.val(..)`, times with
//!    `ctx.datetime(ms)`.
//! 4. Forms: `<input type="hidden" name="csrf" value="{{ ctx.csrf }}">`; the POST handler parses the
//!    body with `ctx.form::<T>(&headers, body).await?` (checks the token); errors as `FormErrors`,
//!    shown by `{% include "form_errors.html" %}` (a summary linking to each field).
//! 5. The route in `router` (or the group's own `routes()` merged there), the nav entry in `NAV`,
//!    and the page's URLs in `tests/web/pages.json` (the axe-core and untranslated-text checks
//!    visit every URL listed there, in both languages, at desktop and phone width).

mod admin;
mod analysis;
mod assets;
mod audit;
mod catalog;
mod dashboard;
pub mod i18n;
mod reporting;
mod signin;

use std::time::Instant;

use askama::Template;
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::Uri;
use axum::http::header;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Redirect;
use axum::response::Response;
use axum::routing::get;
use axum::routing::post;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::AppState;
use crate::api::auth::Principal;
use crate::api::auth::Role;
use crate::api::auth::Subject;
use crate::api::error::ApiError;
use crate::api::for_web;
pub use i18n::Lang;
pub use i18n::tk;

/// The language cookie (not secret; read by the server only).
pub const LANG_COOKIE: &str = "dtm_lang";
/// Form bodies are small: a sign-in, a user, a rule list.
pub const FORM_BYTES_MAX: usize = 64 * 1024;

/// Roles allowed on a page.
pub const ANY_ROLE: &[Role] = &[Role::Admin, Role::Operator, Role::Analyst, Role::Auditor, Role::DataEntry];
pub const ADMIN_ONLY: &[Role] = &[Role::Admin];

/// The pages' routes, merged into `crate::api::router` (which adds the state and the common layers:
/// request ids, gateway, audit).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(home))
        .route("/ui/assets/{file}", get(assets::serve))
        .route("/ui/login", get(signin::login_page).post(signin::login_post))
        .route("/ui/logout", post(signin::logout))
        .route("/ui/mfa", get(signin::mfa_page).post(signin::mfa_start))
        .route("/ui/mfa/confirm", post(signin::mfa_confirm))
        .merge(reporting::routes())
        .route("/ui/catalog", get(catalog::list))
        .route("/ui/catalog/{id}", get(catalog::dataset))
        .route("/ui/sources", get(catalog::sources))
        .route("/ui/sources/{id}", get(catalog::source))
        .route("/ui/dashboard", get(dashboard::page))
        .route("/ui/analysis", get(analysis::page))
        .route("/ui/audit", get(audit::page))
        .route("/ui/admin", get(|| async { Redirect::to("/ui/admin/sources") }))
        .route("/ui/admin/sources", get(admin::sources).post(admin::sources_post))
        .route("/ui/admin/users", get(admin::users).post(admin::users_post))
        .route("/ui/admin/gateway", get(admin::gateway).post(admin::gateway_post))
        .route("/ui/admin/cluster", get(admin::cluster).post(admin::cluster_post))
        .route("/ui/{*rest}", get(not_found))
        .layer(axum::middleware::from_fn(page_layer))
}

/// A nav entry: where, its text key, who sees it.
pub struct NavEntry {
    pub href: &'static str,
    pub key: &'static str,
    pub roles: &'static [Role],
}

/// The main navigation, in order; each visitor sees the entries of their role.
pub const NAV: &[NavEntry] = &[
    NavEntry { href: "/ui/", key: tk("nav.home"), roles: ANY_ROLE },
    NavEntry { href: "/ui/dashboard", key: tk("nav.dashboard"), roles: &[Role::Admin, Role::Operator] },
    NavEntry { href: "/ui/reporting/due", key: tk("nav.reports_due"), roles: &[Role::DataEntry] },
    NavEntry { href: "/ui/catalog", key: tk("nav.catalog"), roles: ANY_ROLE },
    NavEntry { href: "/ui/sources", key: tk("nav.sources"), roles: &[Role::Admin, Role::Auditor] },
    NavEntry { href: "/ui/analysis", key: tk("nav.analysis"), roles: &[Role::Admin, Role::Analyst, Role::Auditor] },
    NavEntry { href: "/ui/reporting/status", key: tk("nav.reporting_status"), roles: ADMIN_ONLY },
    NavEntry { href: "/ui/admin/sources", key: tk("nav.admin"), roles: ADMIN_ONLY },
    NavEntry { href: "/ui/audit", key: tk("nav.audit"), roles: &[Role::Admin, Role::Auditor] },
];

/// The signed-in visitor.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub username: String,
    pub role: Role,
    /// A data-entry user's agency (empty otherwise).
    pub agency: String,
}

/// What every page template reads: language, visitor, CSRF token, current path, a notice.
pub struct Ctx {
    pub lang: Lang,
    pub user: Option<SignedIn>,
    /// The session's CSRF token, for the hidden `csrf` field of every form (empty when signed out).
    pub csrf: String,
    /// The request path (the nav marks its entry with `aria-current`).
    pub path: String,
    /// The query string, kept for the language switch.
    pub query: String,
    /// A message key shown above the page's content (`?m=` for messages after a redirect).
    pub notice: Option<&'static str>,
    /// The visitor's request headers (session cookie), for calling the API's handlers.
    pub headers: HeaderMap,
}

/// Messages a redirect may ask a page to show (`?m=<name>`): only these, so a link cannot make a
/// page say anything else.
const NOTICES: &[(&str, &str)] = &[
    ("expired", tk("notice.expired")),
    ("signed_out", tk("notice.signed_out")),
    ("saved", tk("notice.saved")),
    ("enrolled", tk("notice.enrolled")),
    ("forbidden", tk("notice.forbidden")),
];

impl Ctx {
    /// The context of a page that `roles` may see. Without a session: a redirect to the sign-in
    /// page (with "your session expired" when the cookie was one that no longer works); with a
    /// session that must first enroll TOTP: a redirect to the enrollment page; with another role:
    /// 403.
    pub async fn load(state: &AppState, headers: &HeaderMap, uri: &Uri, roles: &[Role]) -> Result<Ctx, PageError> {
        let (ctx, pending) = Ctx::load_session(state, headers, uri).await?;
        if pending {
            return Err(PageError::Redirect("/ui/mfa".into()));
        }
        match &ctx.user {
            Some(u) if roles.contains(&u.role) => Ok(ctx),
            _ => Err(PageError::Forbidden(Box::new(ctx))),
        }
    }

    /// The context of any valid session, also one that must first enroll TOTP (`true`).
    pub async fn load_session(state: &AppState, headers: &HeaderMap, uri: &Uri) -> Result<(Ctx, bool), PageError> {
        let mut ctx = Ctx::anonymous(headers, uri);
        let Some(id) = for_web::session_cookie(headers) else {
            return Err(PageError::SignIn { next: ctx.path_and_query(), expired: false, lang: ctx.lang });
        };
        let (p, pending) = match for_web::authenticate_session(state, &id).await {
            Ok(found) => found,
            Err(_) => return Err(PageError::SignIn { next: ctx.path_and_query(), expired: true, lang: ctx.lang }),
        };
        ctx.csrf = for_web::csrf_token(&id);
        ctx.user = signed_in(&p);
        crate::audit::note_principal(&p);
        Ok((ctx, pending))
    }

    /// The context of a page for visitors without a session (sign-in).
    pub fn anonymous(headers: &HeaderMap, uri: &Uri) -> Ctx {
        let query = uri.query().unwrap_or("").to_string();
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&query).unwrap_or_default();
        let param = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let lang =
            param("lang").and_then(Lang::parse).or_else(|| cookie(headers, LANG_COOKIE).and_then(|c| Lang::parse(&c)));
        let notice = param("m").and_then(|m| NOTICES.iter().find(|(n, _)| *n == m).map(|(_, k)| *k));
        Ctx {
            lang: lang.unwrap_or_default(),
            user: None,
            csrf: String::new(),
            path: uri.path().to_string(),
            query,
            notice,
            headers: api_headers(headers),
        }
    }

    /// The text of `key` in the page's language.
    pub fn t(&self, key: &str) -> &'static str {
        i18n::t(self.lang, key)
    }
    /// A number per language (at most two decimals).
    pub fn num(&self, n: impl Real) -> String {
        i18n::number(self.lang, n.real(), 2)
    }
    /// A whole number per language.
    pub fn int(&self, n: impl Whole) -> String {
        i18n::number(self.lang, n.whole() as f64, 0)
    }
    /// A JSON value as text (numbers per language).
    pub fn val(&self, v: &Value) -> String {
        i18n::value(self.lang, v)
    }
    /// A time (ms since the epoch) as a Vietnam date and time per language.
    pub fn datetime(&self, ms: impl Whole) -> String {
        i18n::datetime(self.lang, ms.whole())
    }
    /// A `yyyy-mm-dd` day per language.
    pub fn day(&self, iso: &str) -> String {
        i18n::day(self.lang, iso)
    }
    /// The role's name in the page's language.
    pub fn role_name(&self, role: &str) -> &'static str {
        self.t(role_key(role))
    }
    pub fn has_role(&self, role: Role) -> bool {
        self.user.as_ref().is_some_and(|u| u.role == role)
    }
    /// The nav entries this visitor sees, with whether each is the current page.
    pub fn nav(&self) -> Vec<(&'static str, &'static str, bool)> {
        let Some(u) = &self.user else { return Vec::new() };
        NAV.iter()
            .filter(|e| e.roles.contains(&u.role))
            .map(|e| {
                let current = if e.href == "/ui/" { self.path == "/ui/" } else { self.path.starts_with(e.href) };
                (e.href, self.t(e.key), current)
            })
            .collect()
    }
    /// This page in the other language (the header's switch).
    pub fn switch_href(&self) -> String {
        let mut pairs: Vec<(String, String)> = serde_urlencoded::from_str(&self.query).unwrap_or_default();
        pairs.retain(|(k, _)| k != "lang" && k != "m");
        pairs.push(("lang".into(), self.lang.other().code().into()));
        format!("{}?{}", self.path, serde_urlencoded::to_string(&pairs).unwrap_or_default())
    }
    /// A query parameter of this request.
    pub fn param(&self, name: &str) -> Option<String> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&self.query).unwrap_or_default();
        pairs.into_iter().find(|(k, _)| k == name).map(|(_, v)| v).filter(|v| !v.is_empty())
    }
    /// Every value of a repeated query parameter (checkboxes).
    pub fn params(&self, name: &str) -> Vec<String> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&self.query).unwrap_or_default();
        pairs.into_iter().filter(|(k, v)| k == name && !v.is_empty()).map(|(_, v)| v).collect()
    }
    fn path_and_query(&self) -> String {
        if self.query.is_empty() { self.path.clone() } else { format!("{}?{}", self.path, self.query) }
    }
    /// An asset's URL (content-hashed, cached for a year).
    pub fn asset(&self, name: &str) -> &'static str {
        assets::url(name)
    }

    /// Reads a posted form (`application/x-www-form-urlencoded`, at most `FORM_BYTES_MAX`) after
    /// checking its `csrf` field against the session's token (403 otherwise).
    pub async fn form<T: DeserializeOwned>(&self, headers: &HeaderMap, body: Body) -> Result<T, PageError> {
        let bytes = crate::api::read_body(headers, body, FORM_BYTES_MAX).await.map_err(PageError::Api)?;
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes)
            .map_err(|_| PageError::Api(ApiError::bad_request("malformed form")))?;
        let token = pairs.iter().find(|(k, _)| k == "csrf").map(|(_, v)| v.as_str()).unwrap_or("");
        if self.csrf.is_empty() || !constant_time_eq(token.as_bytes(), self.csrf.as_bytes()) {
            return Err(PageError::Api(ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf",
                "the form's token does not match",
            )));
        }
        serde_urlencoded::from_bytes(&bytes).map_err(|_| PageError::Api(ApiError::bad_request("malformed form")))
    }

    /// Headers for calling an API handler as this visitor with a JSON body.
    pub fn json_headers(&self) -> HeaderMap {
        let mut h = self.headers.clone();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h
    }
}

/// A whole number, however many references deep (templates pass fields by reference).
pub trait Whole {
    fn whole(&self) -> u64;
}
impl Whole for u64 {
    fn whole(&self) -> u64 {
        *self
    }
}
impl Whole for usize {
    fn whole(&self) -> u64 {
        *self as u64
    }
}
impl<T: Whole + ?Sized> Whole for &T {
    fn whole(&self) -> u64 {
        (**self).whole()
    }
}

/// A number, however many references deep.
pub trait Real {
    fn real(&self) -> f64;
}
impl Real for f64 {
    fn real(&self) -> f64 {
        *self
    }
}
impl<T: Real + ?Sized> Real for &T {
    fn real(&self) -> f64 {
        (**self).real()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The text key of a role name.
pub fn role_key(role: &str) -> &'static str {
    match role {
        "admin" => tk("role.admin"),
        "operator" => tk("role.operator"),
        "analyst" => tk("role.analyst"),
        "auditor" => tk("role.auditor"),
        "data-entry" => tk("role.data_entry"),
        _ => tk("role.source"),
    }
}

fn signed_in(p: &Principal) -> Option<SignedIn> {
    let Subject::User { username, .. } = &p.subject else { return None };
    Some(SignedIn { username: username.clone(), role: p.role?, agency: p.agency.clone() })
}

/// The headers an in-process API call needs from the visitor's request: the session cookie and the
/// request id (no body headers: the caller sets those).
fn api_headers(headers: &HeaderMap) -> HeaderMap {
    let mut h = HeaderMap::new();
    for name in [header::COOKIE, header::HeaderName::from_static("x-request-id")] {
        for v in headers.get_all(&name) {
            h.append(name.clone(), v.clone());
        }
    }
    h
}

pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_string())
}

/// Errors of a page, each answered as a page or a redirect.
pub enum PageError {
    /// No (valid) session: to the sign-in page, then back to `next`.
    SignIn {
        next: String,
        expired: bool,
        lang: Lang,
    },
    Redirect(String),
    /// Signed in without the role for this page.
    Forbidden(Box<Ctx>),
    /// An API refusal outside a form (a bad id, an unknown dataset).
    Api(ApiError),
    /// An API refusal with the page's context, for a page of its own.
    ApiIn(Box<Ctx>, ApiError),
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError::Api(e)
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    ctx: Ctx,
    status: u16,
    title: &'static str,
    message: String,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::SignIn { next, expired, lang } => {
                let mut q = vec![("next", next), ("lang", lang.code().into())];
                if expired {
                    q.push(("m", "expired".into()));
                }
                let to = format!("/ui/login?{}", serde_urlencoded::to_string(&q).unwrap_or_default());
                Redirect::to(&to).into_response()
            }
            PageError::Redirect(to) => Redirect::to(&to).into_response(),
            PageError::Forbidden(ctx) => {
                let message = ctx.t("error.forbidden_text").to_string();
                let page = ErrorPage { title: ctx.t("error.forbidden"), ctx: *ctx, status: 403, message };
                with_status(StatusCode::FORBIDDEN, html(&page))
            }
            PageError::Api(e) => {
                let ctx = Ctx {
                    lang: Lang::default(),
                    user: None,
                    csrf: String::new(),
                    path: String::new(),
                    query: String::new(),
                    notice: None,
                    headers: HeaderMap::new(),
                };
                error_page(ctx, e)
            }
            PageError::ApiIn(ctx, e) => error_page(*ctx, e),
        }
    }
}

fn error_page(ctx: Ctx, e: ApiError) -> Response {
    let title = match e.status {
        StatusCode::NOT_FOUND => ctx.t("error.not_found"),
        StatusCode::FORBIDDEN => ctx.t("error.forbidden"),
        StatusCode::UNAUTHORIZED => ctx.t("error.unauthorized"),
        s if s.is_server_error() => ctx.t("error.server"),
        _ => ctx.t("error.bad_request"),
    };
    let status = e.status;
    let page = ErrorPage { ctx, status: status.as_u16(), title, message: e.message };
    with_status(status, html(&page))
}

/// A response with its status replaced (a page re-rendered with form errors answers 422).
pub(crate) fn with_status(status: StatusCode, mut resp: Response) -> Response {
    *resp.status_mut() = status;
    resp
}

/// A rendered page: HTML, never cached (pages carry personal data and the CSRF token).
pub fn html<T: Template>(page: &T) -> Response {
    match page.render() {
        Ok(body) => {
            let mut resp = (StatusCode::OK, body).into_response();
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(e) => ApiError::internal(format!("page template: {e}")).into_response(),
    }
}

/// An error shown next to a form field (`field` is the input's id; empty for the whole form).
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

/// The errors of a posted form, shown as a summary at the top of the form that links to each field
/// (WCAG 3.3.1) and next to the fields.
#[derive(Default)]
pub struct FormErrors(pub Vec<FieldError>);

impl FormErrors {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The status a page showing these errors answers: 200 without any, 422 with some.
    pub fn status(&self) -> StatusCode {
        if self.is_empty() { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY }
    }
    pub fn add(&mut self, field: &'static str, message: impl Into<String>) {
        self.0.push(FieldError { field, message: message.into() });
    }
    /// The message for a field, if any.
    pub fn of(&self, field: &str) -> Option<&str> {
        self.0.iter().find(|e| e.field == field).map(|e| e.message.as_str())
    }
    /// An API refusal as a form error: a known code gets its translated text, anything else the
    /// generic text followed by the API's own message.
    pub fn api(ctx: &Ctx, field: &'static str, e: &ApiError) -> FormErrors {
        let key = match e.code {
            "invalid_login" => tk("error.invalid_login"),
            "totp_replayed" => tk("error.totp_replayed"),
            "invalid_code" => tk("error.invalid_code"),
            "rate_limited" => tk("error.rate_limited"),
            "csrf" => tk("error.csrf"),
            "unavailable" => tk("error.unavailable"),
            _ => "",
        };
        let message =
            if key.is_empty() { format!("{} {}", ctx.t("error.refused"), e.message) } else { ctx.t(key).into() };
        FormErrors(vec![FieldError { field, message }])
    }
}

/// A handler result's JSON (`Json<Value>`, or `(StatusCode, Json<Value>)`).
pub fn json_of(resp: impl IntoResponse) -> impl std::future::Future<Output = Result<Value, ApiError>> {
    let resp = resp.into_response();
    async move {
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 16 * 1024 * 1024).await.map_err(ApiError::internal)?;
        if !status.is_success() {
            return Err(ApiError::internal(format!("unexpected status {status}")));
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(ApiError::internal)
    }
}

/// Calls a module's API routes that are not plain functions (`crate::gateway::api::routes()`,
/// `crate::alerts::api::routes()`) in-process as this visitor: only the module's router runs, not the
/// node's layers (the page's own request already went through them). A refusal keeps its status and
/// message.
pub async fn call_routes(
    routes: Router<AppState>,
    state: &AppState,
    ctx: &Ctx,
    method: axum::http::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, ApiError> {
    use tower::ServiceExt;
    let mut req = axum::http::Request::builder().method(method).uri(path);
    for (k, v) in ctx.headers.iter() {
        req = req.header(k, v);
    }
    let b = match body {
        Some(v) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let req = req.body(b).map_err(ApiError::internal)?;
    let resp = match routes.with_state(state.clone()).oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = resp.status();
    if status.is_success() {
        return json_of(resp).await;
    }
    let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024).await.map_err(ApiError::internal)?;
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let message = v["error"]["message"].as_str().unwrap_or("refused").to_string();
    Err(ApiError::new(status, "refused", message))
}

/// Sets the language cookie when a page is asked for with `?lang=`, and tells how long the server
/// took (`Server-Timing`, read by the benchmark).
async fn page_layer(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let lang = req
        .uri()
        .query()
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .and_then(|pairs| pairs.into_iter().find(|(k, _)| k == "lang").and_then(|(_, v)| Lang::parse(&v)));
    let mut resp = next.run(req).await;
    if let Some(lang) = lang
        && let Ok(v) = HeaderValue::from_str(&format!(
            "{LANG_COOKIE}={}; Path=/; Secure; SameSite=Lax; Max-Age=31536000",
            lang.code()
        ))
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("app;dur={:.2}", started.elapsed().as_secs_f64() * 1000.0)) {
        resp.headers_mut().insert("server-timing", v);
    }
    resp
}

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage {
    ctx: Ctx,
}

async fn home(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Result<Response, PageError> {
    let ctx = Ctx::load(&state, &headers, &uri, ANY_ROLE).await?;
    Ok(html(&HomePage { ctx }))
}

async fn not_found(headers: HeaderMap, uri: Uri) -> Response {
    let ctx = Ctx::anonymous(&headers, &uri);
    let message = ctx.t("error.not_found_text").to_string();
    error_page(ctx, ApiError::not_found(message))
}

/// This page's query string as an API handler's `Query<T>` (unknown parameters such as `lang` are
/// ignored by the API's query types).
pub fn query<T: DeserializeOwned>(ctx: &Ctx) -> Result<axum::extract::Query<T>, ApiError> {
    query_str(&ctx.query)
}

/// A query string as an API handler's `Query<T>`.
pub fn query_str<T: DeserializeOwned>(text: &str) -> Result<axum::extract::Query<T>, ApiError> {
    serde_urlencoded::from_str(text)
        .map(axum::extract::Query)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))
}
