//! Identity configuration and the per-node state behind it: lockout and session lifetimes, the
//! external OpenID Connect issuers whose tokens this node accepts (with their JWKS files), the
//! cluster's token-signing key once read, the Argon2id hasher with its concurrency bound, and the
//! security-event batcher.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;
use std::time::SystemTime;

use anyhow::Context;
use anyhow::bail;
use argon2::PasswordHasher;
use argon2::PasswordVerifier;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;

use super::auth::Role;
use super::events::SecurityEvents;
use crate::limits::JWKS_FILE_BYTES_MAX;
use crate::limits::JWKS_RECHECK_INTERVAL;
use crate::limits::JWT_LEEWAY_SECONDS;
use crate::limits::LOCKOUT_DEFAULT;
use crate::limits::LOCKOUT_THRESHOLD;
use crate::limits::PASSWORD_HASH_WAIT;
use crate::limits::PASSWORD_HASHES_IN_FLIGHT_MAX;
use crate::limits::SESSION_ABSOLUTE_DEFAULT;
use crate::limits::SESSION_IDLE_DEFAULT;

/// `[identity]` in the node's TOML file.
#[derive(Deserialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    pub lockout_minutes: Option<u64>,
    pub session_idle_minutes: Option<u64>,
    pub session_absolute_minutes: Option<u64>,
}

/// `[oidc]` in the node's TOML file: `[[oidc.issuers]]` tables.
#[derive(Deserialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct OidcFile {
    #[serde(default)]
    pub issuers: Vec<OidcIssuerFile>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuerFile {
    /// Must equal the token's `iss`.
    pub issuer: String,
    /// Must be one of the token's `aud`.
    pub audience: String,
    /// The issuer's JWKS (JSON). Fetching keys over the network is not possible on these machines:
    /// an operator (or a cron job) replaces the file; the node re-reads it when it changes.
    pub jwks_file: PathBuf,
    /// Allowed algorithms: any of RS256, ES256, EdDSA (default: all three). `none` and HS* are
    /// always refused.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// The claim that carries the user's groups or roles (a string or an array of strings).
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
    /// Claim value → DTM role (admin, operator, analyst, auditor, data-entry).
    #[serde(default)]
    pub roles: BTreeMap<String, String>,
    /// The claim that carries a data-entry user's agency.
    #[serde(default)]
    pub agency_claim: Option<String>,
}

fn default_role_claim() -> String {
    "roles".into()
}

/// Resolved identity options.
#[derive(Debug, Clone)]
pub struct IdentityOptions {
    pub lockout_threshold: u32,
    pub lockout_ms: u64,
    pub session_idle_ms: u64,
    pub session_absolute_ms: u64,
    pub oidc: Vec<OidcIssuer>,
}

impl Default for IdentityOptions {
    fn default() -> Self {
        IdentityOptions {
            lockout_threshold: LOCKOUT_THRESHOLD,
            lockout_ms: LOCKOUT_DEFAULT.as_millis() as u64,
            session_idle_ms: SESSION_IDLE_DEFAULT.as_millis() as u64,
            session_absolute_ms: SESSION_ABSOLUTE_DEFAULT.as_millis() as u64,
            oidc: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct OidcIssuer {
    pub issuer: String,
    pub audience: String,
    pub jwks_file: PathBuf,
    pub algorithms: Vec<Algorithm>,
    pub role_claim: String,
    pub roles: BTreeMap<String, Role>,
    pub agency_claim: Option<String>,
}

/// Checks the `[identity]` and `[oidc]` sections at start-up; a bad issuer or an unreadable JWKS
/// file stops the node instead of refusing every token later.
pub fn resolve(identity: IdentityFile, oidc: OidcFile) -> anyhow::Result<IdentityOptions> {
    let d = IdentityOptions::default();
    let minutes = |m: Option<u64>, default_ms: u64| m.map(|m| m.saturating_mul(60_000)).unwrap_or(default_ms);
    let mut opts = IdentityOptions {
        lockout_ms: minutes(identity.lockout_minutes, d.lockout_ms),
        session_idle_ms: minutes(identity.session_idle_minutes, d.session_idle_ms),
        session_absolute_ms: minutes(identity.session_absolute_minutes, d.session_absolute_ms),
        ..d
    };
    if opts.lockout_ms == 0 || opts.session_idle_ms == 0 || opts.session_idle_ms > opts.session_absolute_ms {
        bail!("[identity]: lockout and session lifetimes must be positive, idle <= absolute");
    }
    for i in oidc.issuers {
        if i.issuer.is_empty() || i.audience.is_empty() {
            bail!("[oidc]: every issuer needs `issuer` and `audience`");
        }
        if i.issuer == super::oauth::TOKEN_ISSUER {
            bail!("[oidc]: issuer `{}` is this cluster's own issuer", i.issuer);
        }
        let names = if i.algorithms.is_empty() {
            vec!["RS256".to_string(), "ES256".into(), "EdDSA".into()]
        } else {
            i.algorithms.clone()
        };
        let algorithms = names
            .iter()
            .map(|a| match a.as_str() {
                "RS256" => Ok(Algorithm::RS256),
                "ES256" => Ok(Algorithm::ES256),
                "EdDSA" => Ok(Algorithm::EdDSA),
                other => bail!("[oidc] {}: algorithm `{other}` is not allowed (RS256, ES256, EdDSA)", i.issuer),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let roles = i
            .roles
            .iter()
            .map(|(claim, role)| match Role::parse(role) {
                Some(r) if r != Role::Source => Ok((claim.clone(), r)),
                _ => bail!("[oidc] {}: `{role}` is not a user role", i.issuer),
            })
            .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
        read_jwks(&i.jwks_file).with_context(|| format!("[oidc] {}: JWKS file", i.issuer))?;
        opts.oidc.push(OidcIssuer {
            issuer: i.issuer,
            audience: i.audience,
            jwks_file: i.jwks_file,
            algorithms,
            role_claim: i.role_claim,
            roles,
            agency_claim: i.agency_claim,
        });
    }
    Ok(opts)
}

fn read_jwks(path: &std::path::Path) -> anyhow::Result<(JwkSet, Option<SystemTime>)> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > JWKS_FILE_BYTES_MAX {
        bail!("{} is larger than {JWKS_FILE_BYTES_MAX} bytes", path.display());
    }
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let set: JwkSet = serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok((set, meta.modified().ok()))
}

/// A JWKS file as last read, re-read when its modification time changes.
struct CachedJwks {
    checked_at: Instant,
    modified: Option<SystemTime>,
    set: Arc<JwkSet>,
}

/// Identity state shared by the handlers of one node.
pub struct Identity {
    pub opts: IdentityOptions,
    pub events: SecurityEvents,
    pub leeway_seconds: u64,
    jwks: Mutex<BTreeMap<String, CachedJwks>>,
    hashes: tokio::sync::Semaphore,
    dummy_hash: std::sync::OnceLock<String>,
    /// The cluster's token-signing key, read (or proposed) once.
    pub signing_key: tokio::sync::OnceCell<Arc<super::oauth::SigningKey>>,
}

impl Identity {
    pub fn new(opts: IdentityOptions, events: SecurityEvents) -> Self {
        Identity {
            opts,
            events,
            leeway_seconds: JWT_LEEWAY_SECONDS,
            jwks: Mutex::default(),
            hashes: tokio::sync::Semaphore::new(PASSWORD_HASHES_IN_FLIGHT_MAX),
            dummy_hash: std::sync::OnceLock::new(),
            signing_key: tokio::sync::OnceCell::new(),
        }
    }

    /// The issuer's current key set (re-read when the file changed; the last good set is kept when
    /// a new file does not parse).
    pub fn jwks(&self, issuer: &OidcIssuer) -> Option<Arc<JwkSet>> {
        let mut cache = self.jwks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get_mut(&issuer.issuer) {
            if c.checked_at.elapsed() < JWKS_RECHECK_INTERVAL {
                return Some(c.set.clone());
            }
            c.checked_at = Instant::now();
            let modified = std::fs::metadata(&issuer.jwks_file).ok().and_then(|m| m.modified().ok());
            if modified == c.modified {
                return Some(c.set.clone());
            }
        }
        match read_jwks(&issuer.jwks_file) {
            Ok((set, modified)) => {
                let set = Arc::new(set);
                cache.insert(
                    issuer.issuer.clone(),
                    CachedJwks { checked_at: Instant::now(), modified, set: set.clone() },
                );
                Some(set)
            }
            Err(e) => {
                tracing::warn!(target: "security", issuer = %issuer.issuer, error = %e, "JWKS file unreadable; keeping the last good keys");
                cache.get(&issuer.issuer).map(|c| c.set.clone())
            }
        }
    }

    /// Hashes a password with Argon2id (OWASP parameters), off the async threads and bounded.
    pub async fn hash_password(&self, password: String) -> Result<String, super::error::ApiError> {
        let _permit = self.hash_permit().await?;
        tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(super::error::ApiError::internal)?
            .map_err(super::error::ApiError::internal)
    }

    /// Checks a password against a stored hash, or against a dummy hash when there is none, so
    /// that a login for an unknown user takes as long as one for a known user.
    pub async fn verify_password(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, super::error::ApiError> {
        let _permit = self.hash_permit().await?;
        let dummy = match &stored {
            Some(_) => String::new(),
            None => self.dummy_hash.get_or_init(|| hash_password("not a password").unwrap_or_default()).clone(),
        };
        let ok = tokio::task::spawn_blocking(move || {
            let hash = stored.as_deref().unwrap_or(&dummy);
            argon2().verify_password(password.as_bytes(), hash).is_ok()
        })
        .await
        .map_err(super::error::ApiError::internal)?;
        Ok(ok)
    }

    async fn hash_permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, super::error::ApiError> {
        match tokio::time::timeout(PASSWORD_HASH_WAIT, self.hashes.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(super::error::ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many logins in progress on this node; retry",
            )),
        }
    }
}

/// Argon2id with the OWASP minimum parameters, written out: m = 19 MiB, t = 2, p = 1.
fn argon2() -> argon2::Argon2<'static> {
    let params = argon2::Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    Ok(argon2().hash_password(password.as_bytes())?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_hashes_carry_owasp_parameters_and_verify() {
        let h = hash_password("correct horse battery staple").expect("hash");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(argon2().verify_password(b"correct horse battery staple", h.as_str()).is_ok());
        assert!(argon2().verify_password(b"wrong", h.as_str()).is_err());
    }
}
