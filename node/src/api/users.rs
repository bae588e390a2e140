//! User accounts (admin): create, list, disable, change a password. Passwords follow ASVS 5.0 /
//! NIST 800-63B: 8 to 128 characters, any characters, no composition rules, refused when on the
//! built-in list of the most common passwords or equal to the username; stored as Argon2id
//! (m = 19 MiB, t = 2, p = 1) hashes computed by the receiving node.

use axum::Json;
use axum::body::Body;
use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use dtm_cluster::tables;
use dtm_model::state;
use dtm_model::state::security_command::Kind as SecKind;
use serde_json::Value;
use serde_json::json;

use super::AppState;
use super::auth;
use super::auth::Role;
use super::auth::Subject;
use super::error::ApiError;
use super::error::ApiResult;
use super::sessions::propose;
use crate::limits::AUTH_BODY_BYTES_MAX;
use crate::limits::PASSWORD_CHARS_MAX;
use crate::limits::PASSWORD_CHARS_MIN;
use crate::limits::USERNAME_BYTES_MAX;
use crate::limits::USERS_LISTED_MAX;

/// The most common passwords of at least 8 characters (from public breach corpora). Compared
/// case-insensitively.
const COMMON_PASSWORDS: &[&str] = &[
    "password",
    "12345678",
    "123456789",
    "1234567890",
    "12345678910",
    "qwertyuiop",
    "password1",
    "password123",
    "iloveyou",
    "11111111",
    "00000000",
    "987654321",
    "1q2w3e4r",
    "1q2w3e4r5t",
    "qwerty123",
    "qwerty12",
    "abcd1234",
    "abc12345",
    "123123123",
    "sunshine",
    "princess",
    "football",
    "baseball",
    "welcome1",
    "welcome",
    "superman",
    "trustno1",
    "starwars",
    "whatever",
    "dragon123",
    "passw0rd",
    "p@ssw0rd",
    "p@ssword",
    "letmein1",
    "zaq12wsx",
    "1qaz2wsx",
    "qazwsxedc",
    "asdfghjkl",
    "aa123456",
    "a1234567",
    "88888888",
    "12341234",
    "1234qwer",
    "q1w2e3r4",
    "q1w2e3r4t5",
    "computer",
    "michelle",
    "jennifer",
    "password!",
    "changeme",
    "administrator",
    "admin123",
    "admin1234",
    "adminadmin",
    "rootroot",
    "master123",
    "123qweasd",
    "qwe123qwe",
    "iloveyou1",
    "lovelove",
    "123456789a",
    "1234567a",
    "secret123",
    "welcome123",
    "internet",
    "samsung1",
    "monkey123",
    "shadow12",
    "chocolate",
    "liverpool",
    "qwertyui",
    "asdf1234",
    "matkhau123",
    "matkhau",
    "vietnam1",
    "anhyeuem",
    "123456a@",
    "12345679",
    "147258369",
    "987654321a",
];

fn check_username(name: &str) -> ApiResult<()> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= USERNAME_BYTES_MAX
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b'@'));
    if !ok {
        return Err(ApiError::bad_request(format!(
            "`username` must be 1-{USERNAME_BYTES_MAX} characters: letters, digits, `_`, `.`, `-`, `@`"
        )));
    }
    Ok(())
}

/// ASVS 6.2.1/6.2.9/6.2.11/6.2.12: length only, plus the blocklist and the username.
pub fn check_password(password: &str, username: &str) -> ApiResult<()> {
    let n = password.chars().count();
    if !(PASSWORD_CHARS_MIN..=PASSWORD_CHARS_MAX).contains(&n) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "weak_password",
            format!("a password has {PASSWORD_CHARS_MIN} to {PASSWORD_CHARS_MAX} characters"),
        ));
    }
    let lower = password.to_lowercase();
    if COMMON_PASSWORDS.contains(&lower.as_str()) || lower == username.to_lowercase() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "weak_password",
            "this password is too common (or is the username); choose another",
        ));
    }
    Ok(())
}

async fn body_object(headers: &HeaderMap, body: Body) -> ApiResult<Value> {
    let bytes = super::read_body(headers, body, AUTH_BODY_BYTES_MAX).await?;
    let v = super::parse_json(headers, &bytes)?;
    if !v.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    Ok(v)
}

fn string<'a>(v: &'a Value, name: &str) -> ApiResult<Option<&'a str>> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request(format!("`{name}` must be a string"))),
    }
}

/// `POST /api/v1/users` (admin) `{username, role, agency?, password}`.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let who = auth::require_admin(&state, &headers).await?;
    let v = body_object(&headers, body).await?;
    let username = string(&v, "username")?.unwrap_or("");
    check_username(username)?;
    let role = string(&v, "role")?
        .and_then(Role::parse)
        .filter(|r| *r != Role::Source)
        .ok_or_else(|| ApiError::bad_request("`role` must be admin, operator, analyst, auditor or data-entry"))?;
    let agency = string(&v, "agency")?.unwrap_or("").trim();
    if role == Role::DataEntry && !super::valid_id(agency) {
        return Err(ApiError::bad_request("a data-entry user needs `agency` (an id: letters, digits, `_`, `.`, `-`)"));
    }
    let password = string(&v, "password")?.ok_or_else(|| ApiError::bad_request("`password` is required"))?;
    check_password(password, username)?;
    let hash = state.identity.hash_password(password.to_string()).await?;
    let user = state::User {
        username: username.into(),
        role: role.as_str().into(),
        agency: if role == Role::DataEntry { agency.into() } else { String::new() },
        password_hash: hash,
        ..Default::default()
    };
    propose(&state, SecKind::CreateUser(state::CreateUser { user: Some(user) })).await?;
    tracing::info!(target: "security", principal = %who.name(), user = username, role = role.as_str(), "user created");
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"username": username, "role": role.as_str(), "agency": (role == Role::DataEntry).then_some(agency)}),
        ),
    ))
}

/// `GET /api/v1/users` (admin): every account, without secrets.
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    auth::require_admin(&state, &headers).await?;
    let now = super::now_ms();
    let rows = state.node.reader.scan(tables::USER, None, USERS_LISTED_MAX).map_err(ApiError::internal)?;
    let mut users = Vec::with_capacity(rows.len());
    for (_, v) in rows {
        let u = <state::User as prost::Message>::decode(v.as_slice()).map_err(ApiError::internal)?;
        users.push(json!({
            "username": u.username,
            "role": u.role,
            "agency": (!u.agency.is_empty()).then_some(&u.agency),
            "created_at_ms": u.created_at_ms,
            "disabled": u.disabled_at_ms != 0,
            "locked": u.locked_until_ms > now,
            "totp_enrolled": !u.totp_secret.is_empty(),
            "recovery_codes_left": u.recovery_code_sha256.len(),
        }));
    }
    Ok(Json(json!({"users": users})))
}

/// `DELETE /api/v1/users/{name}` (admin): disables the account and ends its sessions everywhere.
pub async fn disable(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let who = auth::require_admin(&state, &headers).await?;
    propose(&state, SecKind::DisableUser(state::DisableUser { username: name.clone() })).await?;
    tracing::info!(target: "security", principal = %who.name(), user = %name, "user disabled");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/users/{name}/password` `{password, current_password?}`: an admin sets any user's
/// password; a user changes its own with its current password. Every session of the user ends.
pub async fn set_password(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult<StatusCode> {
    let who = auth::authenticate(&state, &headers).await?;
    let own = matches!(&who.subject, Subject::User { username, .. } if *username == name);
    if !own && !who.has_role(Role::Admin) {
        return Err(ApiError::forbidden("only an admin may set another user's password"));
    }
    let v = body_object(&headers, body).await?;
    let password = string(&v, "password")?.ok_or_else(|| ApiError::bad_request("`password` is required"))?;
    check_password(password, &name)?;
    let user = super::lookup_fresh::<state::User>(&state, &tables::user(&name))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user `{name}` does not exist")))?;
    if own && !who.has_role(Role::Admin) {
        let current = string(&v, "current_password")?.unwrap_or("").to_string();
        if !state.identity.verify_password(current, Some(user.password_hash.clone())).await? {
            state.identity.events.record("password_change_refused", &name, "wrong current password");
            return Err(ApiError::forbidden("`current_password` is wrong"));
        }
    }
    let hash = state.identity.hash_password(password.to_string()).await?;
    propose(&state, SecKind::SetPassword(state::SetPassword { username: name.clone(), password_hash: hash })).await?;
    tracing::info!(target: "security", principal = %who.name(), user = %name, "password changed");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_checked_for_length_and_commonness_only() {
        assert!(check_password("short", "u").is_err());
        assert!(check_password(&"x".repeat(129), "u").is_err());
        assert!(check_password("Password", "u").is_err());
        assert!(check_password("alice-the-admin", "alice-the-admin").is_err());
        assert!(check_password("lowercase only words", "u").is_ok());
        assert!(check_password(&"é".repeat(128), "u").is_ok());
    }
}
