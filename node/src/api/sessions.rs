//! Password login, sessions, CSRF and TOTP (A4.3).
//!
//! A session id is 256 random bits, sent only in the `__Host-dtm_session` cookie (Secure, HttpOnly,
//! SameSite=Strict, Path=/); the replicated `Session` is keyed by its SHA-256, so the tables never
//! hold a usable id. Idle and absolute expiry are decided from times in the log (`OpenSession`,
//! `TouchSession`) and checked here against the clock. Logout removes the session through the log,
//! so every node refuses it once applied (a heartbeat later).
//!
//! CSRF: a state-changing request that authenticates with the session cookie must carry
//! `X-CSRF-Token` equal to the session's CSRF token, which is derived from the session id
//! (SHA-256 of a label and the id) and given to the client at login (body and `__Host-dtm_csrf`
//! cookie, readable by scripts). Requests with a header credential need no token: a browser does
//! not add those by itself.
//!
//! Admin and operator accounts (and any account with TOTP enrolled) get a full session only with a
//! TOTP code or a recovery code. Without an enrolled authenticator, their password opens a session
//! that may only enroll one (`mfa_pending`). Each TOTP step is accepted once per user: the step is
//! checked against the user's last one inside `apply`, so the same code on two nodes wins once.

use axum::Json;
use axum::body::Body;
use axum::extract::Request;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::Method;
use axum::http::header::SET_COOKIE;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use base64::Engine;
use dtm_cluster::tables;
use dtm_model::state;
use dtm_model::state::command_response::Result as Reply;
use dtm_model::state::security_command::Kind as SecKind;
use rand::RngCore;
use serde_json::Value;
use serde_json::json;
use sha2::Digest;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::AppState;
use super::auth;
use super::auth::Principal;
use super::auth::Role;
use super::auth::Subject;
use super::error::ApiError;
use super::error::ApiResult;
use crate::limits::AUTH_BODY_BYTES_MAX;
use crate::limits::RECOVERY_CODES;
use crate::limits::SESSION_TOUCH_INTERVAL;
use crate::limits::TOTP_SKEW_STEPS;
use crate::limits::TOTP_STEP_SECONDS;

pub const SESSION_COOKIE: &str = "__Host-dtm_session";
pub const CSRF_COOKIE: &str = "__Host-dtm_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The issuer name shown by authenticator apps.
const TOTP_ISSUER: &str = "DTM";

/// Proposes a security command and maps the reply.
pub async fn propose(state: &AppState, kind: SecKind) -> ApiResult<u64> {
    let cmd = super::command(state, state::command::Kind::Security(state::SecurityCommand { kind: Some(kind) }));
    let (resp, index) = state.node.write(cmd).await?;
    match resp.result {
        Some(Reply::Applied(_)) => Ok(index),
        Some(Reply::Rejected(r)) => Err(security_rejection(&r.code, r.message)),
        _ => Err(ApiError::internal("unexpected command response")),
    }
}

fn security_rejection(code: &str, message: String) -> ApiError {
    use axum::http::StatusCode;
    match code {
        "invalid_login" | "locked" => invalid_login(),
        "totp_replayed" => ApiError::new(StatusCode::UNAUTHORIZED, "totp_replayed", message),
        "totp_required" => ApiError::new(StatusCode::UNAUTHORIZED, "totp_required", message),
        other => super::error::rejected(other, message),
    }
}

/// The one answer to a failed login, whatever failed (unknown user, wrong password, locked,
/// disabled, wrong code), so that it reveals nothing about the account.
fn invalid_login() -> ApiError {
    ApiError::new(axum::http::StatusCode::UNAUTHORIZED, "invalid_login", "invalid username, password or code")
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

pub(crate) fn csrf_token(session_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"dtm-csrf-v1\0");
    h.update(session_id.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h.finalize())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_string())
}

pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    cookie(headers, SESSION_COOKIE).filter(|v| v.len() == 43)
}

/// Refuses a state-changing request made with the session cookie and without the matching
/// `X-CSRF-Token` (403 `csrf`). Layered over the whole router.
pub async fn csrf_guard(req: Request, next: Next) -> Response {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let h = req.headers();
    let header_credential = h.contains_key("x-api-key") || h.contains_key(axum::http::header::AUTHORIZATION);
    let login = req.uri().path() == "/api/v1/auth/login";
    // web-ui: the pages under /ui take the token from a form field and check it (`crate::web`).
    let web_form = req.uri().path().starts_with("/ui/");
    if !safe
        && !header_credential
        && !login
        && !web_form
        && let Some(id) = session_cookie(h)
    {
        let expected = csrf_token(&id);
        let got = h.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !bool::from(got.as_bytes().ct_eq(expected.as_bytes())) {
            return ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "csrf",
                "a request made with a session must carry its X-CSRF-Token",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// The session behind a cookie value: the principal, and whether the session may only enroll TOTP.
pub async fn authenticate_session(state: &AppState, id: &str) -> ApiResult<(Principal, bool)> {
    let hash = sha256(id.as_bytes());
    let refused = |detail| auth::refuse(state, "invalid_session", "", detail);
    let Some(session) = super::lookup_fresh::<state::Session>(state, &tables::session(&hash)).await? else {
        return Err(refused("this session is not valid (expired or logged out)"));
    };
    let now = super::now_ms();
    if now > session.expires_at_ms || now > session.last_seen_ms.saturating_add(session.idle_timeout_ms) {
        return Err(refused("this session has expired"));
    }
    let user =
        state.node.reader.get_msg::<state::User>(&tables::user(&session.username)).map_err(ApiError::internal)?;
    let Some(user) = user else { return Err(refused("this session is not valid (expired or logged out)")) };
    if user.disabled_at_ms != 0 || session.created_at_ms < user.sessions_valid_after_ms {
        return Err(refused("this session was ended (password change or disabled account)"));
    }
    let role = Role::parse(&user.role).ok_or_else(|| ApiError::internal("stored user with an unknown role"))?;
    if now.saturating_sub(session.last_seen_ms) > SESSION_TOUCH_INTERVAL.as_millis() as u64 {
        // Moves the idle clock in the replicated state; a failure only shortens the session.
        if let Err(e) =
            propose(state, SecKind::TouchSession(state::TouchSession { session_sha256: hash.clone() })).await
        {
            tracing::warn!(error = %e.message, "session touch failed");
        }
    }
    let p = Principal {
        subject: Subject::User { username: user.username.clone(), session_sha256: hash },
        role: Some(role),
        agency: user.agency,
        source_id: String::new(),
        scopes: Vec::new(),
    };
    Ok((p, session.mfa_pending))
}

/// The session of a request that may be one waiting for TOTP enrollment.
async fn any_session(state: &AppState, headers: &HeaderMap) -> ApiResult<(Principal, bool)> {
    if headers.contains_key("x-api-key") || headers.contains_key(axum::http::header::AUTHORIZATION) {
        return Err(ApiError::forbidden("this operation is for a signed-in user's session"));
    }
    let id =
        session_cookie(headers).ok_or_else(|| ApiError::unauthorized("sign in first (POST /api/v1/auth/login)"))?;
    authenticate_session(state, &id).await
}

async fn json_body(headers: &HeaderMap, body: Body) -> ApiResult<Value> {
    let bytes = super::read_body(headers, body, AUTH_BODY_BYTES_MAX).await?;
    let v = super::parse_json(headers, &bytes)?;
    if !v.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    Ok(v)
}

fn opt_str<'a>(v: &'a Value, name: &str) -> ApiResult<Option<&'a str>> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request(format!("`{name}` must be a string"))),
    }
}

pub fn totp_for(secret: &[u8], username: &str) -> ApiResult<totp_rs::Totp> {
    totp_rs::Builder::new()
        .with_secret(secret.to_vec())
        .with_skew(TOTP_SKEW_STEPS)
        .with_step_duration(TOTP_STEP_SECONDS)
        .with_account_name(username.replace(':', "_"))
        .with_issuer(Some(TOTP_ISSUER))
        .build()
        .map_err(ApiError::internal)
}

/// The time step a code belongs to, if it is valid now (±`TOTP_SKEW_STEPS`).
fn totp_step(secret: &[u8], username: &str, code: &str) -> ApiResult<Option<u64>> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    Ok(totp_for(secret, username)?.check(code, super::now_ms() / 1000))
}

fn set_cookies(resp: &mut Response, session_id: &str, max_age_seconds: u64) -> ApiResult<()> {
    let session =
        format!("{SESSION_COOKIE}={session_id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age_seconds}");
    let csrf =
        format!("{CSRF_COOKIE}={}; Path=/; Secure; SameSite=Strict; Max-Age={max_age_seconds}", csrf_token(session_id));
    for c in [session, csrf] {
        resp.headers_mut().append(SET_COOKIE, HeaderValue::from_str(&c).map_err(ApiError::internal)?);
    }
    Ok(())
}

fn clear_cookies(resp: &mut Response) {
    for name in [SESSION_COOKIE, CSRF_COOKIE] {
        if let Ok(v) = HeaderValue::from_str(&format!("{name}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"))
        {
            resp.headers_mut().append(SET_COOKIE, v);
        }
    }
}

/// Counts a failed login in the replicated state (the lockout) and records the security events.
async fn login_failed(state: &AppState, username: &str, known: bool, reason: &'static str) -> ApiError {
    let events = &state.identity.events;
    events.record("login_failed", username, reason);
    let opts = &state.identity.opts;
    let before = state.node.reader.get_msg::<state::User>(&tables::user(username)).ok().flatten();
    let cmd = SecKind::LoginFailed(state::LoginFailed {
        username: username.into(),
        lockout_threshold: opts.lockout_threshold,
        lockout_ms: opts.lockout_ms,
    });
    // Proposed for unknown users too (a no-op in `apply`), so both take one commit.
    if let Err(e) = propose(state, cmd).await {
        return e;
    }
    if known {
        let after = state.node.reader.get_msg::<state::User>(&tables::user(username)).ok().flatten();
        let locked_now = after.map(|u| u.locked_until_ms).unwrap_or(0);
        if locked_now > before.map(|u| u.locked_until_ms).unwrap_or(0) {
            events.record("lockout", username, "too many failed logins; account locked");
        }
    }
    invalid_login()
}

/// `POST /api/v1/auth/login` `{username, password, totp?, recovery_code?}`.
pub async fn login(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let v = json_body(&headers, body).await?;
    let username = opt_str(&v, "username")?.unwrap_or("");
    let password = opt_str(&v, "password")?.unwrap_or("");
    let totp = opt_str(&v, "totp")?;
    let recovery = opt_str(&v, "recovery_code")?;
    if username.is_empty()
        || username.len() > crate::limits::USERNAME_BYTES_MAX
        || password.chars().count() > crate::limits::PASSWORD_CHARS_MAX
    {
        return Err(invalid_login());
    }
    // Always one read barrier, so that a user created elsewhere is found and the answer takes as
    // long whether or not the user exists.
    state.node.linearizable_barrier().await?;
    let user = state.node.reader.get_msg::<state::User>(&tables::user(username)).map_err(ApiError::internal)?;
    let known = user.is_some();
    let ok =
        state.identity.verify_password(password.to_string(), user.as_ref().map(|u| u.password_hash.clone())).await?;
    let Some(user) = user.filter(|_| ok) else {
        return Err(login_failed(&state, username, known, "wrong username or password").await);
    };
    let now = super::now_ms();
    if user.disabled_at_ms != 0 || user.locked_until_ms > now {
        state.identity.events.record(
            "login_refused",
            username,
            if user.disabled_at_ms != 0 { "disabled" } else { "locked" },
        );
        return Err(invalid_login());
    }
    let role = Role::parse(&user.role).ok_or_else(|| ApiError::internal("stored user with an unknown role"))?;
    let enrolled = !user.totp_secret.is_empty();
    let mfa_role = dtm_cluster::security::MFA_ROLES.contains(&user.role.as_str());
    let mut totp_step_used = 0;
    let mut recovery_sha = Vec::new();
    let mut mfa_pending = false;
    if enrolled {
        match (totp, recovery) {
            (Some(code), _) => match totp_step(&user.totp_secret, username, code)? {
                Some(step) if step > user.totp_last_step => totp_step_used = step,
                Some(_) => {
                    state.identity.events.record("totp_replayed", username, "a TOTP code was used again");
                    return Err(ApiError::new(
                        axum::http::StatusCode::UNAUTHORIZED,
                        "totp_replayed",
                        "this TOTP code was already used; wait for the next one",
                    ));
                }
                None => return Err(login_failed(&state, username, true, "wrong TOTP code").await),
            },
            (None, Some(code)) => recovery_sha = sha256(normalize_recovery(code).as_bytes()),
            (None, None) => {
                return Err(ApiError::new(
                    axum::http::StatusCode::UNAUTHORIZED,
                    "totp_required",
                    "this account needs a TOTP code (`totp`) or a recovery code (`recovery_code`)",
                ));
            }
        }
    } else if mfa_role {
        mfa_pending = true;
    }
    let mut id = [0u8; 32];
    rand::rng().fill_bytes(&mut id);
    let session_id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id);
    let opts = &state.identity.opts;
    let open = SecKind::OpenSession(state::OpenSession {
        username: username.into(),
        session_sha256: sha256(session_id.as_bytes()),
        totp_step: totp_step_used,
        recovery_code_sha256: recovery_sha.clone(),
        idle_timeout_ms: opts.session_idle_ms,
        absolute_timeout_ms: opts.session_absolute_ms,
        mfa_pending,
    });
    if let Err(e) = propose(&state, open).await {
        match e.code {
            "totp_replayed" => state.identity.events.record("totp_replayed", username, "a TOTP code was used again"),
            "invalid_login" if !recovery_sha.is_empty() => {
                return Err(login_failed(&state, username, true, "wrong or used recovery code").await);
            }
            _ => {}
        }
        return Err(e);
    }
    tracing::info!(target: "security", user = username, role = role.as_str(), mfa_pending, "login");
    let csrf = csrf_token(&session_id);
    let body = json!({
        "username": username,
        "role": role.as_str(),
        "agency": (!user.agency.is_empty()).then_some(&user.agency),
        "csrf_token": csrf,
        "mfa_enrollment_required": mfa_pending,
        "idle_timeout_seconds": opts.session_idle_ms / 1000,
        "expires_in": opts.session_absolute_ms / 1000,
    });
    let mut resp = Json(body).into_response();
    set_cookies(&mut resp, &session_id, opts.session_absolute_ms / 1000)?;
    Ok(resp)
}

fn normalize_recovery(code: &str) -> String {
    code.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect()
}

/// `POST /api/v1/auth/logout`: ends the session on every node.
pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let (p, _) = any_session(&state, &headers).await?;
    let Subject::User { session_sha256, .. } = &p.subject else {
        return Err(ApiError::internal("session without user"));
    };
    propose(&state, SecKind::CloseSession(state::CloseSession { session_sha256: session_sha256.clone() })).await?;
    tracing::info!(target: "security", principal = %p.name(), "logout");
    let mut resp = axum::http::StatusCode::NO_CONTENT.into_response();
    clear_cookies(&mut resp);
    Ok(resp)
}

/// `GET /api/v1/auth/me`: who the caller is (any credential).
pub async fn me(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let cookie_only = !headers.contains_key("x-api-key")
        && !headers.contains_key(axum::http::header::AUTHORIZATION)
        && session_cookie(&headers).is_some();
    let (p, pending) = match cookie_only {
        true => any_session(&state, &headers).await?,
        false => (auth::authenticate(&state, &headers).await?, false),
    };
    let kind = match &p.subject {
        Subject::AdminToken { .. } => "admin_token",
        Subject::ApiKey { .. } => "api_key",
        Subject::User { .. } => "session",
        Subject::OAuthClient { .. } => "oauth_client",
        Subject::External { .. } => "oidc",
    };
    Ok(Json(json!({
        "principal": p.name(),
        "credential": kind,
        "role": p.role.map(Role::as_str),
        "agency": (!p.agency.is_empty()).then_some(&p.agency),
        "source_id": (!p.source_id.is_empty()).then_some(&p.source_id),
        "scopes": p.scopes,
        "mfa_enrollment_required": pending,
    })))
}

/// `POST /api/v1/auth/totp/enroll`: a new TOTP secret for the signed-in user, waiting for its first
/// code. Answers the `otpauth://` URI and its QR code (SVG).
pub async fn totp_enroll(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let (p, _) = any_session(&state, &headers).await?;
    let Subject::User { username, .. } = &p.subject else { return Err(ApiError::internal("session without user")) };
    let mut secret = vec![0u8; 20];
    rand::rng().fill_bytes(&mut secret);
    let totp = totp_for(&secret, username)?;
    let uri = totp.to_url().map_err(ApiError::internal)?;
    let qr = qrcode::QrCode::new(uri.as_bytes()).map_err(ApiError::internal)?;
    let svg = qr.render::<qrcode::render::svg::Color<'_>>().min_dimensions(200, 200).build();
    propose(&state, SecKind::BeginTotp(state::BeginTotp { username: username.clone(), pending_secret: secret }))
        .await?;
    tracing::info!(target: "security", user = %username, "TOTP enrollment started");
    Ok(Json(json!({
        "otpauth_uri": uri,
        "secret": totp.secret().to_base32(),
        "qr_svg": svg,
        "confirm": "POST /api/v1/auth/totp/confirm {\"code\": \"123456\"}",
    })))
}

/// `POST /api/v1/auth/totp/confirm {code}`: activates the pending secret; answers the recovery
/// codes (shown once). The session that confirmed becomes a full session.
pub async fn totp_confirm(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult<Json<Value>> {
    let (p, _) = any_session(&state, &headers).await?;
    let Subject::User { username, session_sha256 } = &p.subject else {
        return Err(ApiError::internal("session without user"));
    };
    let v = json_body(&headers, body).await?;
    let code = opt_str(&v, "code")?.ok_or_else(|| ApiError::bad_request("`code` is required"))?;
    let user = state
        .node
        .reader
        .get_msg::<state::User>(&tables::user(username))
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::unauthorized("unknown user"))?;
    if user.totp_pending_secret.is_empty() {
        return Err(ApiError::conflict("no TOTP enrollment is waiting; POST /api/v1/auth/totp/enroll first"));
    }
    let Some(step) = totp_step(&user.totp_pending_secret, username, code)? else {
        state.identity.events.record("totp_failed", username, "wrong code at TOTP confirmation");
        return Err(ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_code",
            "this code does not match",
        ));
    };
    let codes: Vec<String> = (0..RECOVERY_CODES)
        .map(|_| {
            let mut b = [0u8; 10];
            rand::rng().fill_bytes(&mut b);
            let h = hex::encode(b);
            format!("{}-{}-{}-{}", &h[0..5], &h[5..10], &h[10..15], &h[15..20])
        })
        .collect();
    let hashes = codes.iter().map(|c| sha256(normalize_recovery(c).as_bytes())).collect();
    propose(
        &state,
        SecKind::ConfirmTotp(state::ConfirmTotp {
            username: username.clone(),
            totp_step: step,
            recovery_code_sha256: hashes,
            session_sha256: session_sha256.clone(),
        }),
    )
    .await?;
    tracing::info!(target: "security", user = %username, "TOTP enrolled");
    Ok(Json(json!({"enrolled": true, "recovery_codes": codes})))
}
