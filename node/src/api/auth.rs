//! Credentials. API keys (`dtmk.<key id>.<secret>`) belong to source systems; admin tokens
//! (`dtma.<token id>.<secret>`) to administrators. Only the SHA-256 of a secret is stored (in the
//! replicated tables), so every node can verify every credential and a revocation takes effect on a
//! node as soon as it has applied it. Secrets are 256 random bits, so a fast hash is appropriate.

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

#[derive(Debug, Clone)]
pub enum Principal {
    Admin { token_id: String },
    Source { source_id: String, key_id: String },
}

impl Principal {
    pub fn name(&self) -> String {
        match self {
            Principal::Admin { token_id } => format!("admin:{token_id}"),
            Principal::Source { source_id, key_id } => format!("source:{source_id}/{key_id}"),
        }
    }
}

/// A freshly issued credential: the full secret (shown once) and what is stored.
pub struct Issued {
    pub id: String,
    pub secret_text: String,
    pub secret_sha256: Vec<u8>,
}

fn issue(prefix: &str) -> Issued {
    let mut rng = rand::rng();
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let id = hex::encode(id);
    let secret_b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    Issued {
        secret_text: format!("{prefix}.{id}.{secret_b64}"),
        secret_sha256: Sha256::digest(secret_b64.as_bytes()).to_vec(),
        id,
    }
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

fn credential(headers: &HeaderMap) -> ApiResult<Option<String>> {
    if let Some(v) = headers.get("x-api-key") {
        return Ok(Some(v.to_str().map_err(|_| ApiError::unauthorized("X-API-Key is not valid text"))?.to_string()));
    }
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
        let v = v.to_str().map_err(|_| ApiError::unauthorized("Authorization is not valid text"))?;
        let token = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer <token>`"))?;
        return Ok(Some(token.to_string()));
    }
    Ok(None)
}

fn matches(stored: &[u8], secret: &str) -> bool {
    let got = Sha256::digest(secret.as_bytes());
    stored.len() == got.len() && bool::from(stored.ct_eq(got.as_slice()))
}

/// Who is calling. A credential unknown on this node is looked up again after a read barrier, so a
/// key issued through another node a moment ago works here too.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> ApiResult<Principal> {
    let text = credential(headers)?
        .ok_or_else(|| ApiError::unauthorized("missing credentials (X-API-Key or Authorization: Bearer)"))?;
    let (prefix, id, secret) = parse(&text).ok_or_else(|| ApiError::unauthorized("malformed credential"))?;
    let invalid = || ApiError::unauthorized("invalid credential");
    match prefix {
        API_KEY_PREFIX => {
            let entry =
                super::lookup_fresh::<state::IssueKey>(state, &tables::api_key(id)).await?.ok_or_else(invalid)?;
            let key = entry.key.ok_or_else(|| ApiError::internal("stored key without key"))?;
            if !matches(&key.secret_sha256, secret) {
                return Err(invalid());
            }
            if key.revoked {
                return Err(ApiError::unauthorized("this API key has been revoked"));
            }
            let source = state.node.reader.get_msg::<state::Source>(&tables::source(&entry.source_id));
            if source.map_err(ApiError::internal)?.is_some_and(|s| s.removed_at_ms != 0) {
                return Err(ApiError::unauthorized("the source system of this API key was removed"));
            }
            Ok(Principal::Source { source_id: entry.source_id, key_id: key.key_id })
        }
        ADMIN_TOKEN_PREFIX => {
            let t =
                super::lookup_fresh::<state::AdminToken>(state, &tables::admin_token(id)).await?.ok_or_else(invalid)?;
            if !matches(&t.secret_sha256, secret) {
                return Err(invalid());
            }
            Ok(Principal::Admin { token_id: t.token_id })
        }
        _ => Err(invalid()),
    }
}

pub async fn require_admin(state: &AppState, headers: &HeaderMap) -> ApiResult<Principal> {
    let p = authenticate(state, headers).await?;
    match p {
        Principal::Admin { .. } => Ok(p),
        _ => Err(ApiError::forbidden("this operation needs an admin token")),
    }
}

pub async fn require_source(state: &AppState, headers: &HeaderMap) -> ApiResult<(String, String)> {
    match authenticate(state, headers).await? {
        Principal::Source { source_id, key_id } => Ok((source_id, key_id)),
        _ => Err(ApiError::forbidden("only a source system's API key may submit records")),
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
}
