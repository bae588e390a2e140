//! Sign-in (password, then a TOTP or recovery code when the account has an authenticator), TOTP
//! enrollment with a QR code and the manual secret, recovery codes, and sign-out (A4.3). Each step
//! calls the JSON API's handler (`POST /api/v1/auth/login`, `/auth/totp/enroll`, `/auth/totp/confirm`,
//! `/auth/logout`), so lockout, replay refusal and security events are the API's.
//!
//! The TOTP step posts the password again, from a hidden field of the second form: the API opens a
//! session only with both factors in one request, and keeping the password on the server between
//! the steps would tie the second step to one node. That page is never cached (`no-store`).

use askama::Template;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::Uri;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Redirect;
use axum::response::Response;
use dtm_cluster::tables;
use dtm_model::state as st;
use serde::Deserialize;
use serde_json::Value;
use serde_json::json;

use super::Ctx;
use super::FormErrors;
use super::PageError;
use super::for_web;
use super::html;
use super::json_of;
use super::tk;
use super::with_status;
use crate::api::AppState;
use crate::api::error::ApiError;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    ctx: Ctx,
    /// `password` or `code` (the second step).
    step: &'static str,
    username: String,
    /// Only on the second step, in a hidden field (see the module header).
    password: String,
    next: String,
    errors: FormErrors,
}

#[derive(Deserialize, Default)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    recovery: String,
    #[serde(default)]
    next: String,
}

/// Where to go after signing in: a page under `/ui/` only (never another site).
fn safe_next(next: &str) -> String {
    let ok =
        next.starts_with("/ui/") && !next.contains("//") && !next.contains('\\') && !next.starts_with("/ui/logout");
    if ok { next.to_string() } else { "/ui/".to_string() }
}

pub async fn login_page(headers: HeaderMap, uri: Uri) -> Response {
    let ctx = Ctx::anonymous(&headers, &uri);
    let next = safe_next(&ctx.param("next").unwrap_or_default());
    html(&LoginPage {
        ctx,
        step: "password",
        username: String::new(),
        password: String::new(),
        next,
        errors: FormErrors::default(),
    })
}

pub async fn login_post(State(state): State<AppState>, headers: HeaderMap, uri: Uri, body: Body) -> Response {
    let ctx = Ctx::anonymous(&headers, &uri);
    let form: LoginForm = match crate::api::read_body(&headers, body, super::FORM_BYTES_MAX).await {
        Ok(bytes) => serde_urlencoded::from_bytes(&bytes).unwrap_or_default(),
        Err(e) => return e.into_response(),
    };
    let next = safe_next(&form.next);
    let second_step = !form.code.trim().is_empty() || !form.recovery.trim().is_empty();
    let mut page = LoginPage {
        step: "password",
        username: form.username.clone(),
        password: String::new(),
        next: next.clone(),
        errors: FormErrors::default(),
        ctx,
    };
    if form.username.trim().is_empty() {
        page.errors.add("username", page.ctx.t("login.username_missing"));
    }
    if form.password.is_empty() {
        page.errors.add("password", page.ctx.t("login.password_missing"));
    }
    if !page.errors.is_empty() {
        return with_status(StatusCode::UNPROCESSABLE_ENTITY, html(&page));
    }
    let mut request = json!({"username": form.username.trim(), "password": form.password});
    if !form.code.trim().is_empty() {
        request["totp"] = json!(form.code.trim());
    } else if !form.recovery.trim().is_empty() {
        request["recovery_code"] = json!(form.recovery.trim());
    }
    let mut api_headers = page.ctx.json_headers();
    api_headers.remove(header::COOKIE);
    let answer = for_web::login(State(state), api_headers, Body::from(request.to_string())).await;
    match answer {
        Ok(resp) => {
            let cookies: Vec<HeaderValue> = resp.headers().get_all(header::SET_COOKIE).iter().cloned().collect();
            let v = json_of(resp).await.unwrap_or(Value::Null);
            let to = if v["mfa_enrollment_required"] == json!(true) { "/ui/mfa".to_string() } else { next };
            let mut out = Redirect::to(&to).into_response();
            for c in cookies {
                out.headers_mut().append(header::SET_COOKIE, c);
            }
            out
        }
        Err(e) if e.code == "totp_required" => {
            // The password was right: ask for the second factor.
            page.step = "code";
            page.password = form.password;
            html(&page)
        }
        Err(e) => {
            let field = if second_step { "code" } else { "password" };
            if second_step {
                page.step = "code";
                page.password = form.password;
            }
            let status = if e.status == StatusCode::TOO_MANY_REQUESTS { e.status } else { StatusCode::UNAUTHORIZED };
            page.errors = FormErrors::api(&page.ctx, field, &e);
            with_status(status, html(&page))
        }
    }
}

/// `POST /ui/logout`: ends the session on every node.
pub async fn logout(State(state): State<AppState>, headers: HeaderMap, uri: Uri, body: Body) -> Response {
    let ctx = match Ctx::load_session(&state, &headers, &uri).await {
        Ok((ctx, _)) => ctx,
        // Already signed out (or expired): nothing to end.
        Err(_) => return Redirect::to("/ui/login?m=signed_out").into_response(),
    };
    if let Err(e) = ctx.form::<Value>(&headers, body).await {
        return e.into_response();
    }
    let lang = ctx.lang.code();
    match for_web::logout(State(state), ctx.headers.clone()).await {
        Ok(resp) => {
            let cookies: Vec<HeaderValue> = resp.headers().get_all(header::SET_COOKIE).iter().cloned().collect();
            let mut out = Redirect::to(&format!("/ui/login?m=signed_out&lang={lang}")).into_response();
            for c in cookies {
                out.headers_mut().append(header::SET_COOKIE, c);
            }
            out
        }
        Err(e) => PageError::ApiIn(Box::new(ctx), e).into_response(),
    }
}

#[derive(Template)]
#[template(path = "mfa.html")]
struct MfaPage {
    ctx: Ctx,
    /// `start`, `scan` (QR code and code form) or `done` (recovery codes).
    step: &'static str,
    qr_svg: String,
    secret: String,
    recovery_codes: Vec<String>,
    errors: FormErrors,
}

impl MfaPage {
    fn new(ctx: Ctx, step: &'static str) -> MfaPage {
        MfaPage {
            ctx,
            step,
            qr_svg: String::new(),
            secret: String::new(),
            recovery_codes: Vec::new(),
            errors: FormErrors::default(),
        }
    }
}

/// `GET /ui/mfa`: what an authenticator is for, and a button that starts the enrollment.
pub async fn mfa_page(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Result<Response, PageError> {
    let (ctx, _) = Ctx::load_session(&state, &headers, &uri).await?;
    Ok(html(&MfaPage::new(ctx, "start")))
}

/// The QR code as inline SVG, labelled for screen readers, without the XML prolog.
fn labelled_svg(svg: &str, label: &str) -> String {
    let body = svg.find("<svg").map_or(svg, |at| &svg[at..]);
    let label = label.replace(['"', '<', '>', '&'], "");
    body.replacen("<svg", &format!("<svg role=\"img\" aria-label=\"{label}\" class=\"qr\""), 1)
}

/// Groups a base32 secret in fours, easier to type.
fn grouped(secret: &str) -> String {
    secret.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join(" ")
}

/// `POST /ui/mfa`: a new secret (the API's enrollment); shows its QR code and the secret as text.
pub async fn mfa_start(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Response, PageError> {
    let (ctx, _) = Ctx::load_session(&state, &headers, &uri).await?;
    ctx.form::<Value>(&headers, body).await?;
    let v = match for_web::totp_enroll(State(state), ctx.headers.clone()).await {
        Ok(json) => json.0,
        Err(e) => return Err(PageError::ApiIn(Box::new(ctx), e)),
    };
    let mut page = MfaPage::new(ctx, "scan");
    page.qr_svg = labelled_svg(v["qr_svg"].as_str().unwrap_or(""), page.ctx.t("mfa.qr_label"));
    page.secret = grouped(v["secret"].as_str().unwrap_or(""));
    Ok(html(&page))
}

#[derive(Deserialize)]
pub struct ConfirmForm {
    #[serde(default)]
    code: String,
}

/// `POST /ui/mfa/confirm`: activates the authenticator with its first code and shows the recovery
/// codes once. A wrong code shows the same QR code again (the pending secret is the user's).
pub async fn mfa_confirm(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Response, PageError> {
    let (ctx, _) = Ctx::load_session(&state, &headers, &uri).await?;
    let form: ConfirmForm = ctx.form(&headers, body).await?;
    let code = form.code.trim().replace(' ', "");
    let answer = if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
        for_web::totp_confirm(State(state.clone()), ctx.json_headers(), Body::from(json!({"code": code}).to_string()))
            .await
            .map(|j| j.0)
    } else {
        Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_code", "not six digits"))
    };
    match answer {
        Ok(v) => {
            let mut page = MfaPage::new(ctx, "done");
            page.recovery_codes = v["recovery_codes"]
                .as_array()
                .map(|a| a.iter().filter_map(|c| c.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            Ok(html(&page))
        }
        Err(e) => {
            let username = ctx.user.as_ref().map(|u| u.username.clone()).unwrap_or_default();
            let user = state.node.reader.get_msg::<st::User>(&tables::user(&username)).map_err(ApiError::internal)?;
            let Some(secret) = user.map(|u| u.totp_pending_secret).filter(|s| !s.is_empty()) else {
                return Ok(html(&MfaPage::new(ctx, "start")));
            };
            let totp = for_web::totp_for(&secret, &username)?;
            let uri = totp.to_url().map_err(ApiError::internal)?;
            let qr = qrcode::QrCode::new(uri.as_bytes()).map_err(ApiError::internal)?;
            let svg = qr.render::<qrcode::render::svg::Color<'_>>().min_dimensions(200, 200).build();
            let mut page = MfaPage::new(ctx, "scan");
            page.qr_svg = labelled_svg(&svg, page.ctx.t("mfa.qr_label"));
            page.secret = grouped(&totp.secret().to_base32());
            page.errors = FormErrors::api(&page.ctx, "code", &e);
            if e.code != "invalid_code" && e.code != "totp_replayed" {
                page.errors = FormErrors::api(&page.ctx, "code", &e);
            } else {
                page.errors = FormErrors::default();
                page.errors.add("code", page.ctx.t(tk("error.invalid_code")));
            }
            Ok(with_status(StatusCode::UNPROCESSABLE_ENTITY, html(&page)))
        }
    }
}
