//! OAuth 2.0 client credentials and bearer JWTs.
//!
//! An admin registers clients (`POST /api/v1/oauth/clients`): a client id and a 256-bit secret
//! (shown once, stored as SHA-256), the scopes it may ask for (`records:write` needs a source,
//! which the client then submits as; `records:read`, `aggregates:read`, `audit:read`).
//! `POST /oauth2/token` (RFC 6749 4.4, form-encoded, client authentication by HTTP Basic or form
//! fields) answers a JWT signed with EdDSA (Ed25519) by the cluster's signing key: like the masking
//! key it is generated once and replicated, the first proposal in the log winning, so every node
//! signs and verifies with the same key. Its public half is at `GET /api/v1/auth/jwks`.
//!
//! Bearer JWTs are checked here: `alg` must be on an allow-list (EdDSA for DTM's own tokens; RS256,
//! ES256 or EdDSA as configured for an external OpenID Connect issuer; `none` and HS* never, so a
//! public key can never be used as an HMAC secret); the key is found by `iss` and `kid`; `iss`,
//! `aud`, `exp` and `nbf` are verified with `JWT_LEEWAY_SECONDS` of leeway.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use base64::Engine;
use dtm_cluster::tables;
use dtm_model::state;
use dtm_model::state::security_command::Kind as SecKind;
use jsonwebtoken::Algorithm;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::EncodingKey;
use jsonwebtoken::Header;
use jsonwebtoken::Validation;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::jwk::JwkSet;
use rand::RngCore;
use serde_json::Value;
use serde_json::json;

use super::AppState;
use super::auth;
use super::auth::Principal;
use super::auth::Role;
use super::auth::Subject;
use super::error::ApiError;
use super::error::ApiResult;
use super::sessions::propose;
use crate::limits::ACCESS_TOKEN_LIFETIME;
use crate::limits::AUTH_BODY_BYTES_MAX;
use crate::limits::OAUTH_SCOPES_MAX;

/// `iss` and `aud` of the tokens this cluster issues.
pub const TOKEN_ISSUER: &str = "urn:dtm:cluster";
pub const TOKEN_AUDIENCE: &str = "urn:dtm:api";
pub const SCOPES: &[&str] = &["records:write", "records:read", "aggregates:read", "audit:read"];

/// The cluster's Ed25519 signing key, ready to sign and verify.
pub struct SigningKey {
    pub kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    public_jwk: Value,
}

impl SigningKey {
    fn from_stored(k: &state::TokenSigningKey) -> ApiResult<Self> {
        let jwk: Jwk = serde_json::from_slice(&k.public_jwk_json).map_err(ApiError::internal)?;
        Ok(SigningKey {
            kid: k.kid.clone(),
            encoding: EncodingKey::from_ed_der(&k.pkcs8),
            decoding: DecodingKey::from_jwk(&jwk).map_err(ApiError::internal)?,
            public_jwk: serde_json::from_slice(&k.public_jwk_json).map_err(ApiError::internal)?,
        })
    }
}

/// A new Ed25519 key as PKCS#8 v1 DER (RFC 8410: a fixed 16-byte header and the 32-byte seed).
fn new_signing_key() -> ApiResult<state::TokenSigningKey> {
    const PKCS8_ED25519_HEADER: [u8; 16] =
        [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let mut pkcs8 = PKCS8_ED25519_HEADER.to_vec();
    pkcs8.extend_from_slice(&seed);
    let mut kid = [0u8; 8];
    rand::rng().fill_bytes(&mut kid);
    let kid = hex::encode(kid);
    let mut jwk =
        Jwk::from_encoding_key(&EncodingKey::from_ed_der(&pkcs8), Algorithm::EdDSA).map_err(ApiError::internal)?;
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
    Ok(state::TokenSigningKey { kid, pkcs8, public_jwk_json: serde_json::to_vec(&jwk).map_err(ApiError::internal)? })
}

/// The cluster's signing key: read from the replicated tables, or proposed by this node when the
/// cluster has none yet (the first proposal in the log wins).
pub async fn signing_key(state: &AppState) -> ApiResult<Arc<SigningKey>> {
    let key = state
        .identity
        .signing_key
        .get_or_try_init(|| async {
            if let Some(k) = super::lookup_fresh::<state::TokenSigningKey>(state, tables::TOKEN_SIGNING_KEY).await? {
                return Ok(Arc::new(SigningKey::from_stored(&k)?));
            }
            let key = new_signing_key()?;
            propose(state, SecKind::SetTokenSigningKey(state::SetTokenSigningKey { key: Some(key) })).await?;
            match state.node.reader.get_msg::<state::TokenSigningKey>(tables::TOKEN_SIGNING_KEY) {
                Ok(Some(k)) => Ok(Arc::new(SigningKey::from_stored(&k)?)),
                Ok(None) => Err(ApiError::internal("token-signing key missing after it was committed")),
                Err(e) => Err(ApiError::internal(e)),
            }
        })
        .await?;
    Ok(key.clone())
}

/// `GET /api/v1/auth/jwks`: the public key(s) DTM's tokens are signed with.
pub async fn jwks(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let key = signing_key(&state).await?;
    Ok(Json(json!({"keys": [key.public_jwk]})))
}

/// `POST /api/v1/oauth/clients` (admin) `{name?, scopes: [...], source_id?}` → 201 with the
/// client id and secret (shown once).
pub async fn create_client(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let who = auth::require_admin(&state, &headers).await?;
    let bytes = super::read_body(&headers, body, AUTH_BODY_BYTES_MAX).await?;
    let v = super::parse_json(&headers, &bytes)?;
    let scopes: Vec<String> = match v.get("scopes") {
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= OAUTH_SCOPES_MAX => items
            .iter()
            .map(|s| s.as_str().filter(|s| SCOPES.contains(s)).map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::bad_request(format!("`scopes` are some of {}", SCOPES.join(", "))))?,
        _ => return Err(ApiError::bad_request(format!("`scopes` must list some of {}", SCOPES.join(", ")))),
    };
    let source_id = v.get("source_id").and_then(Value::as_str).unwrap_or("");
    if scopes.iter().any(|s| s == "records:write") == source_id.is_empty() {
        return Err(ApiError::bad_request(
            "`records:write` needs `source_id` (the source the client submits as), and only it",
        ));
    }
    if !source_id.is_empty() && !super::valid_id(source_id) {
        return Err(ApiError::bad_request("`source_id` is not a valid id"));
    }
    let name = v.get("name").and_then(Value::as_str).unwrap_or("").chars().take(200).collect::<String>();
    let mut id = [0u8; 8];
    rand::rng().fill_bytes(&mut id);
    let client_id = format!("dtmc-{}", hex::encode(id));
    let secret = auth::random_secret();
    let client = state::OAuthClient {
        client_id: client_id.clone(),
        secret_sha256: <sha2::Sha256 as sha2::Digest>::digest(secret.as_bytes()).to_vec(),
        scopes: scopes.clone(),
        source_id: source_id.into(),
        name,
        ..Default::default()
    };
    propose(&state, SecKind::RegisterOauthClient(state::RegisterOAuthClient { client: Some(client) })).await?;
    tracing::info!(target: "security", principal = %who.name(), client_id = %client_id, "OAuth client registered");
    Ok((
        StatusCode::CREATED,
        Json(json!({"client_id": client_id, "client_secret": secret, "scopes": scopes,
                    "source_id": (!source_id.is_empty()).then_some(source_id)})),
    ))
}

/// `DELETE /api/v1/oauth/clients/{id}` (admin): no new tokens, and its tokens are refused.
pub async fn revoke_client(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let who = auth::require_admin(&state, &headers).await?;
    propose(&state, SecKind::RevokeOauthClient(state::RevokeOAuthClient { client_id: id.clone() })).await?;
    tracing::info!(target: "security", principal = %who.name(), client_id = %id, "OAuth client revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// An RFC 6749 5.2 error answer.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut resp = (status, Json(json!({"error": error, "error_description": description}))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Basic realm=\"dtm\""));
    }
    resp.headers_mut().insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    resp
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic "))?;
    let text = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?).ok()?;
    let (id, secret) = text.split_once(':')?;
    // RFC 6749 2.3.1: both parts are form-urlencoded inside Basic.
    let decode =
        |s: &str| serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("v={s}")).ok()?.pop().map(|(_, v)| v);
    Some((decode(id)?, decode(secret)?))
}

/// `POST /oauth2/token`: the client-credentials grant.
pub async fn token(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    match token_inner(&state, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn token_inner(state: &AppState, headers: &HeaderMap, body: Body) -> ApiResult<Response> {
    let ct = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Ok(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let bytes = super::read_body(headers, body, AUTH_BODY_BYTES_MAX).await?;
    let Ok(form) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes) else {
        return Ok(oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "malformed form body"));
    };
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if field("grant_type").as_deref() != Some("client_credentials") {
        return Ok(oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only grant_type=client_credentials is supported",
        ));
    }
    let (client_id, secret) = match (basic_credentials(headers), field("client_id"), field("client_secret")) {
        (Some(c), _, _) => c,
        (None, Some(id), Some(secret)) => (id, secret),
        _ => return Ok(oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "client authentication is required")),
    };
    let client = if super::valid_id(&client_id) {
        super::lookup_fresh::<state::OAuthClient>(state, &tables::oauth_client(&client_id)).await?
    } else {
        None
    };
    let Some(client) = client.filter(|c| auth::matches(&c.secret_sha256, &secret)) else {
        state.identity.events.record("invalid_client", &client_id, "wrong OAuth client id or secret");
        return Ok(oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client or wrong secret"));
    };
    if client.revoked_at_ms != 0 {
        state.identity.events.record("revoked_credential", &client_id, "token request by a revoked OAuth client");
        return Ok(oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "this client was revoked"));
    }
    let scopes: Vec<String> = match field("scope") {
        None => client.scopes.clone(),
        Some(s) => {
            let asked: Vec<String> = s.split_whitespace().map(str::to_string).collect();
            if asked.is_empty() || asked.iter().any(|a| !client.scopes.contains(a)) {
                return Ok(oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    "a requested scope is not allowed for this client",
                ));
            }
            asked
        }
    };
    let key = signing_key(state).await?;
    let now = super::now_ms() / 1000;
    let lifetime = ACCESS_TOKEN_LIFETIME.as_secs();
    let claims = json!({
        "iss": TOKEN_ISSUER,
        "aud": TOKEN_AUDIENCE,
        "sub": client.client_id,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "jti": uuid::Uuid::new_v4().to_string(),
        "scope": scopes.join(" "),
    });
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(key.kid.clone());
    let jwt = jsonwebtoken::encode(&header, &claims, &key.encoding).map_err(ApiError::internal)?;
    tracing::info!(target: "security", client_id = %client.client_id, scope = %scopes.join(" "), "access token issued");
    let mut resp =
        Json(json!({"access_token": jwt, "token_type": "Bearer", "expires_in": lifetime, "scope": scopes.join(" ")}))
            .into_response();
    resp.headers_mut().insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    Ok(resp)
}

fn validation(alg: Algorithm, issuer: &str, audience: &str, leeway: u64) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = leeway;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v
}

/// A bearer JWT: DTM's own (an OAuth client) or one from a configured OpenID Connect issuer.
pub async fn authenticate_jwt(state: &AppState, token: &str) -> ApiResult<Principal> {
    let refused = |detail: &'static str| auth::refuse(state, "token_refused", "", detail);
    let Ok(header) = jsonwebtoken::decode_header(token) else {
        // Includes `alg: none` and unknown algorithms.
        return Err(refused("malformed token or algorithm not allowed"));
    };
    if !matches!(header.alg, Algorithm::EdDSA | Algorithm::RS256 | Algorithm::ES256) {
        return Err(refused("token algorithm not allowed"));
    }
    let Ok(unverified) = jsonwebtoken::dangerous::insecure_decode::<Value>(token).map(|d| d.claims) else {
        return Err(refused("malformed token"));
    };
    let iss = unverified.get("iss").and_then(Value::as_str).unwrap_or("");
    if iss == TOKEN_ISSUER {
        if header.alg != Algorithm::EdDSA {
            return Err(refused("token algorithm not allowed"));
        }
        let key = signing_key(state).await?;
        if header.kid.as_deref() != Some(key.kid.as_str()) {
            return Err(refused("unknown token key"));
        }
        let v = validation(Algorithm::EdDSA, TOKEN_ISSUER, TOKEN_AUDIENCE, state.identity.leeway_seconds);
        let Ok(data) = jsonwebtoken::decode::<Value>(token, &key.decoding, &v) else {
            return Err(refused("invalid, expired or foreign token"));
        };
        let client_id = data.claims.get("sub").and_then(Value::as_str).unwrap_or("").to_string();
        let client = if super::valid_id(&client_id) {
            super::lookup_fresh::<state::OAuthClient>(state, &tables::oauth_client(&client_id)).await?
        } else {
            None
        };
        let Some(client) = client.filter(|c| c.revoked_at_ms == 0) else {
            return Err(auth::refuse(state, "revoked_credential", &client_id, "the client of this token was revoked"));
        };
        let scopes: Vec<String> = data
            .claims
            .get("scope")
            .and_then(Value::as_str)
            .unwrap_or("")
            .split_whitespace()
            .filter(|s| client.scopes.iter().any(|c| c == s))
            .map(str::to_string)
            .collect();
        let writes = scopes.iter().any(|s| s == "records:write");
        return Ok(Principal {
            subject: Subject::OAuthClient { client_id },
            role: None,
            agency: String::new(),
            source_id: if writes { client.source_id } else { String::new() },
            scopes,
        });
    }
    let Some(issuer) = state.identity.opts.oidc.iter().find(|i| i.issuer == iss) else {
        return Err(refused("token from an unknown issuer"));
    };
    if !issuer.algorithms.contains(&header.alg) {
        return Err(refused("token algorithm not allowed for this issuer"));
    }
    let Some(keys) = state.identity.jwks(issuer) else { return Err(refused("the issuer's keys are unavailable")) };
    let Some(jwk) = find_key(&keys, header.kid.as_deref()) else { return Err(refused("unknown token key")) };
    let Ok(key) = DecodingKey::from_jwk(jwk) else { return Err(refused("unusable issuer key")) };
    let v = validation(header.alg, &issuer.issuer, &issuer.audience, state.identity.leeway_seconds);
    let Ok(data) = jsonwebtoken::decode::<Value>(token, &key, &v) else {
        return Err(refused("invalid, expired or foreign token"));
    };
    let claims = data.claims;
    let values: Vec<&str> = match claims.get(&issuer.role_claim) {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    // The most privileged mapped role wins (Role orders admin first).
    let role = values.iter().filter_map(|v| issuer.roles.get(*v)).min().copied();
    let agency =
        issuer.agency_claim.as_ref().and_then(|c| claims.get(c)).and_then(Value::as_str).unwrap_or("").to_string();
    if role == Some(Role::DataEntry) && agency.is_empty() {
        return Err(refused("a data-entry token needs the agency claim"));
    }
    Ok(Principal {
        subject: Subject::External {
            issuer: issuer.issuer.clone(),
            subject: claims.get("sub").and_then(Value::as_str).unwrap_or("").to_string(),
        },
        role,
        agency,
        source_id: String::new(),
        scopes: Vec::new(),
    })
}

/// The key named by `kid`; without a `kid`, the set's only key.
fn find_key<'a>(keys: &'a JwkSet, kid: Option<&str>) -> Option<&'a Jwk> {
    match kid {
        Some(kid) => keys.find(kid),
        None if keys.keys.len() == 1 => keys.keys.first(),
        None => None,
    }
}
