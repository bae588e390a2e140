//! Who is calling, and what they may do. Credentials:
//! - `X-API-Key: dtmk.<key id>.<secret>`: a source system's API key (role `source`);
//! - `Authorization: Bearer dtma.<token id>.<secret>`: an admin token (role `admin`);
//! - `Authorization: Bearer <JWT>`: a token from `POST /oauth2/token` (an OAuth client; its scopes
//!   decide what it may do) or from a configured OpenID Connect issuer (its claims map to a role);
//! - the `__Host-dtm_session` cookie from `POST /auth/login` (a user; state-changing requests also
//!   need `X-CSRF-Token`, checked by `sessions::csrf_guard`).
//!
//! API keys and admin tokens are 256 random bits, stored only as SHA-256 in the replicated tables,
//! so every node verifies every credential and a revocation takes effect on a node as soon as it
//! has applied it. Every endpoint declares its `Access`: the roles it allows and, for OAuth
//! clients, the scope it needs; object-level checks (a data-entry user only for its agency) are
//! made by the handler.

use axum::http::HeaderMap;
use base64::Engine;
use dtm_cluster::tables;
use dtm_model::state;
use rand::RngCore;
use sha2::Digest;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use super::error::ApiResult;

const API_KEY_PREFIX: &str = "dtmk";
const ADMIN_TOKEN_PREFIX: &str = "dtma";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Admin,
    Operator,
    Analyst,
    Auditor,
    DataEntry,
    Source,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Analyst => "analyst",
            Role::Auditor => "auditor",
            Role::DataEntry => "data-entry",
            Role::Source => "source",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "admin" => Role::Admin,
            "operator" => Role::Operator,
            "analyst" => Role::Analyst,
            "auditor" => Role::Auditor,
            "data-entry" => Role::DataEntry,
            "source" => Role::Source,
            _ => return None,
        })
    }
}

/// What kind of credential the caller presented, with its identifiers.
#[derive(Debug, Clone)]
pub enum Subject {
    AdminToken { token_id: String },
    ApiKey { source_id: String, key_id: String },
    User { username: String, session_sha256: Vec<u8> },
    OAuthClient { client_id: String },
    External { issuer: String, subject: String },
}

#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: Subject,
    /// The caller's role; OAuth clients have none (their scopes decide).
    pub role: Option<Role>,
    /// The agency of a data-entry user (empty otherwise).
    pub agency: String,
    /// The source a source key or a `records:write` client submits as (empty otherwise).
    pub source_id: String,
    /// OAuth scopes of a client token.
    pub scopes: Vec<String>,
}

impl Principal {
    pub fn name(&self) -> String {
        match &self.subject {
            Subject::AdminToken { token_id } => format!("admin:{token_id}"),
            Subject::ApiKey { source_id, key_id } => format!("source:{source_id}/{key_id}"),
            Subject::User { username, .. } => format!("user:{username}"),
            Subject::OAuthClient { client_id } => format!("client:{client_id}"),
            Subject::External { issuer, subject } => format!("oidc:{issuer}#{subject}"),
        }
    }
    pub fn has_role(&self, role: Role) -> bool {
        self.role == Some(role)
    }
}

/// What an endpoint allows: these roles, or an OAuth client holding one of `scopes`.
pub struct Access {
    pub roles: &'static [Role],
    pub scopes: &'static [&'static str],
    /// For the 403 message: "this operation needs …".
    pub what: &'static str,
}

impl Access {
    pub fn allows(&self, p: &Principal) -> bool {
        p.role.is_some_and(|r| self.roles.contains(&r)) || self.scopes.iter().any(|s| p.scopes.iter().any(|x| x == s))
    }
}

pub const ADMIN: Access = Access { roles: &[Role::Admin], scopes: &[], what: "the admin role" };
pub const SIGNED_IN: Access = Access {
    roles: &[Role::Admin, Role::Operator, Role::Analyst, Role::Auditor, Role::DataEntry, Role::Source],
    scopes: &["records:write", "records:read", "aggregates:read", "audit:read"],
    what: "a signed-in caller with a role",
};
pub const OPERATE: Access =
    Access { roles: &[Role::Admin, Role::Operator], scopes: &[], what: "the admin or operator role" };
pub const RECORDS_READ: Access =
    Access { roles: &[Role::Analyst, Role::Admin], scopes: &["records:read"], what: "the analyst or admin role" };
pub const AGGREGATES_READ: Access = Access {
    roles: &[Role::Analyst, Role::Admin, Role::Auditor],
    scopes: &["aggregates:read"],
    what: "the analyst, auditor or admin role",
};
pub const CONFLICTS_READ: Access = Access {
    roles: &[Role::Analyst, Role::Admin, Role::Auditor],
    scopes: &["records:read"],
    what: "the analyst, auditor or admin role",
};
pub const SECURITY_EVENTS_READ: Access =
    Access { roles: &[Role::Admin, Role::Auditor], scopes: &["audit:read"], what: "the auditor or admin role" };
/// The audit trail, its exports, reports and the connection log (F8, F9, C4).
pub const AUDIT_READ: Access =
    Access { roles: &[Role::Admin, Role::Auditor], scopes: &["audit:read"], what: "the auditor or admin role" };
/// Making an audit report (stored and replicated): people with the role, not OAuth clients.
pub const AUDIT_REPORT: Access =
    Access { roles: &[Role::Admin, Role::Auditor], scopes: &[], what: "the auditor or admin role" };
/// Lineage of records and aggregate cells, and the OpenLineage export (F3).
pub const LINEAGE_READ: Access = Access {
    roles: &[Role::Analyst, Role::Auditor, Role::Admin],
    scopes: &["records:read", "audit:read"],
    what: "the analyst, auditor or admin role",
};
pub const SUBMIT: Access =
    Access { roles: &[Role::Source, Role::DataEntry], scopes: &["records:write"], what: "a source credential" };

/// A freshly issued credential: the full secret (shown once) and what is stored.
pub struct Issued {
    pub id: String,
    pub secret_text: String,
    pub secret_sha256: Vec<u8>,
}

fn issue(prefix: &str) -> Issued {
    let mut rng = rand::rng();
    let mut id = [0u8; 8];
    rng.fill_bytes(&mut id);
    let id = hex::encode(id);
    let secret_b64 = random_secret();
    Issued {
        secret_text: format!("{prefix}.{id}.{secret_b64}"),
        secret_sha256: Sha256::digest(secret_b64.as_bytes()).to_vec(),
        id,
    }
}

/// 256 random bits, base64url without padding (43 characters).
pub fn random_secret() -> String {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
}

pub fn issue_api_key() -> Issued {
    issue(API_KEY_PREFIX)
}

pub fn issue_admin_token() -> Issued {
    issue(ADMIN_TOKEN_PREFIX)
}

fn parse(text: &str) -> Option<(&str, &str, &str)> {
    let mut parts = text.trim().splitn(3, '.');
    let (prefix, id, secret) = (parts.next()?, parts.next()?, parts.next()?);
    let id_ok = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());
    let secret_ok = secret.len() == 43 && secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some((prefix, id, secret))
}

enum Credential {
    ApiKey(String),
    Bearer(String),
    Session(String),
}

fn credential(headers: &HeaderMap) -> ApiResult<Option<Credential>> {
    if let Some(v) = headers.get("x-api-key") {
        let v = v.to_str().map_err(|_| ApiError::unauthorized("X-API-Key is not valid text"))?;
        return Ok(Some(Credential::ApiKey(v.to_string())));
    }
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
        let v = v.to_str().map_err(|_| ApiError::unauthorized("Authorization is not valid text"))?;
        let token = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer <token>`"))?;
        return Ok(Some(Credential::Bearer(token.trim().to_string())));
    }
    Ok(super::sessions::session_cookie(headers).map(Credential::Session))
}

/// Constant-time comparison of a stored SHA-256 with the hash of `secret`.
pub fn matches(stored: &[u8], secret: &str) -> bool {
    let got = Sha256::digest(secret.as_bytes());
    stored.len() == got.len() && bool::from(stored.ct_eq(got.as_slice()))
}

/// A refusal that is also a security event.
pub fn refuse(state: &AppState, kind: &'static str, subject: &str, message: &'static str) -> ApiError {
    state.identity.events.record(kind, subject, message);
    ApiError::unauthorized(message)
}

/// Who is calling. A credential unknown on this node is looked up again after a read barrier, so a
/// key issued through another node a moment ago works here too. A session still waiting for its
/// TOTP enrollment is refused here (see `sessions::authenticate_session`).
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> ApiResult<Principal> {
    let p = authenticate_inner(state, headers).await?;
    crate::audit::note_principal(&p);
    Ok(p)
}

async fn authenticate_inner(state: &AppState, headers: &HeaderMap) -> ApiResult<Principal> {
    let cred = credential(headers)?
        .ok_or_else(|| ApiError::unauthorized("missing credentials (X-API-Key, Authorization: Bearer or a session)"))?;
    match cred {
        Credential::ApiKey(text) | Credential::Bearer(text) if parse(&text).is_some() => {
            secret_credential(state, &text).await
        }
        Credential::Bearer(text)
            if text.len() <= crate::limits::BEARER_TOKEN_BYTES_MAX && text.matches('.').count() == 2 =>
        {
            super::oauth::authenticate_jwt(state, &text).await
        }
        Credential::Session(id) => {
            let (p, pending) = super::sessions::authenticate_session(state, &id).await?;
            if pending {
                return Err(ApiError::forbidden(
                    "this account must enroll a TOTP authenticator first (POST /api/v1/auth/totp/enroll)",
                ));
            }
            Ok(p)
        }
        Credential::ApiKey(_) | Credential::Bearer(_) => {
            Err(refuse(state, "invalid_credential", "", "malformed credential"))
        }
    }
}

async fn secret_credential(state: &AppState, text: &str) -> ApiResult<Principal> {
    let Some((prefix, id, secret)) = parse(text) else {
        return Err(refuse(state, "invalid_credential", "", "malformed credential"));
    };
    match prefix {
        API_KEY_PREFIX => {
            let Some(entry) = super::lookup_fresh::<state::IssueKey>(state, &tables::api_key(id)).await? else {
                return Err(refuse(state, "invalid_credential", id, "invalid credential"));
            };
            let key = entry.key.ok_or_else(|| ApiError::internal("stored key without key"))?;
            if !matches(&key.secret_sha256, secret) {
                return Err(refuse(state, "invalid_credential", id, "invalid credential"));
            }
            if key.revoked {
                return Err(refuse(state, "revoked_credential", id, "this API key has been revoked"));
            }
            let source = state.node.reader.get_msg::<state::Source>(&tables::source(&entry.source_id));
            let source = source.map_err(ApiError::internal)?;
            if source.as_ref().is_some_and(|s| s.removed_at_ms != 0) {
                return Err(refuse(state, "revoked_credential", id, "the source system of this API key was removed"));
            }
            Ok(Principal {
                subject: Subject::ApiKey { source_id: entry.source_id.clone(), key_id: key.key_id },
                role: Some(Role::Source),
                agency: source.map(|s| s.agency).unwrap_or_default(),
                source_id: entry.source_id,
                scopes: Vec::new(),
            })
        }
        ADMIN_TOKEN_PREFIX => {
            let Some(t) = super::lookup_fresh::<state::AdminToken>(state, &tables::admin_token(id)).await? else {
                return Err(refuse(state, "invalid_credential", id, "invalid credential"));
            };
            if !matches(&t.secret_sha256, secret) {
                return Err(refuse(state, "invalid_credential", id, "invalid credential"));
            }
            Ok(Principal {
                subject: Subject::AdminToken { token_id: t.token_id },
                role: Some(Role::Admin),
                agency: String::new(),
                source_id: String::new(),
                scopes: Vec::new(),
            })
        }
        _ => Err(refuse(state, "invalid_credential", "", "invalid credential")),
    }
}

/// Authenticates and checks `access`: 401 without a valid credential, 403 with one that lacks the
/// role or scope.
pub async fn require(state: &AppState, headers: &HeaderMap, access: &Access) -> ApiResult<Principal> {
    let p = authenticate(state, headers).await?;
    if !access.allows(&p) {
        return Err(ApiError::forbidden(format!("this operation needs {}", access.what)));
    }
    Ok(p)
}

pub async fn require_admin(state: &AppState, headers: &HeaderMap) -> ApiResult<Principal> {
    require(state, headers, &ADMIN).await
}

/// The source a submission is made for, and the API key (empty for other credentials). A source key
/// or a `records:write` client submits as its own source; a data-entry user names the source with
/// `requested` and may only use a source of its own agency.
pub async fn require_submitter(
    state: &AppState,
    headers: &HeaderMap,
    requested: Option<&str>,
) -> ApiResult<(String, String)> {
    let p = require(state, headers, &SUBMIT).await?;
    match &p.subject {
        Subject::ApiKey { source_id, key_id } => Ok((source_id.clone(), key_id.clone())),
        Subject::OAuthClient { .. } if !p.source_id.is_empty() => Ok((p.source_id.clone(), String::new())),
        _ if p.has_role(Role::DataEntry) => {
            let Some(source_id) = requested.filter(|s| super::valid_id(s)) else {
                return Err(ApiError::bad_request("a data-entry user names the source with `?source=<id>`"));
            };
            let source = super::lookup_fresh::<state::Source>(state, &tables::source(source_id)).await?;
            match source {
                Some(s) if s.removed_at_ms == 0 && !p.agency.is_empty() && s.agency == p.agency => {
                    Ok((source_id.to_string(), String::new()))
                }
                _ => Err(ApiError::forbidden(format!(
                    "a data-entry user of agency `{}` may only submit for a source of that agency",
                    p.agency
                ))),
            }
        }
        _ => Err(ApiError::forbidden("only a source system's credential may submit records")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_credentials_parse_and_verify() {
        let k = issue_api_key();
        let (prefix, id, secret) = parse(&k.secret_text).expect("parses");
        assert_eq!((prefix, id), (API_KEY_PREFIX, k.id.as_str()));
        assert!(matches(&k.secret_sha256, secret));
        assert!(!matches(&k.secret_sha256, "x"));
        assert!(parse("dtmk.short.secret").is_none());
        assert!(parse("").is_none());
    }

    #[test]
    fn access_allows_by_role_or_scope() {
        let p = |role: Option<Role>, scopes: &[&str]| Principal {
            subject: Subject::OAuthClient { client_id: "c".into() },
            role,
            agency: String::new(),
            source_id: String::new(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        };
        assert!(RECORDS_READ.allows(&p(Some(Role::Analyst), &[])));
        assert!(!RECORDS_READ.allows(&p(Some(Role::Source), &[])));
        assert!(!RECORDS_READ.allows(&p(Some(Role::Auditor), &[])));
        assert!(RECORDS_READ.allows(&p(None, &["records:read"])));
        assert!(!RECORDS_READ.allows(&p(None, &["records:write"])));
        assert!(!ADMIN.allows(&p(None, &["records:read", "audit:read"])));
    }
}
