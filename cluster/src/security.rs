//! What security commands do to the tables: users and their lockout and TOTP state, sessions,
//! OAuth clients, the token-signing key and security events. Deterministic like the rest of
//! `apply`: times come from the command, secrets arrive hashed, and every check that decides
//! between two nodes (a TOTP step used once, a recovery code spent once, a lockout) is made here, at
//! the command's log position, so that the same code used on two nodes at once wins only once.

use dtm_model::LogId;
use dtm_model::state;
use dtm_model::state::security_command::Kind;
use dtm_storage::StoreError;
use dtm_storage::Txn;

use crate::tables;

/// Security events kept in the tables; older ones are trimmed (at most this many per entry, so a
/// trim never makes one entry expensive). The audit trail (issue 6) will take them over.
pub const SECURITY_EVENTS_KEPT_MAX: u64 = 100_000;
/// Events one `RecordSecurityEvents` command may carry; more are refused.
pub const SECURITY_EVENTS_PER_COMMAND_MAX: usize = 1_000;
/// Roles that cannot get a full session without a second factor (A4.3).
pub const MFA_ROLES: &[&str] = &["admin", "operator"];

use crate::applier::applied;
use crate::applier::rejected;

pub fn apply(
    txn: &mut Txn<'_>,
    log_id: &LogId,
    now_ms: u64,
    c: &state::SecurityCommand,
) -> Result<state::CommandResponse, StoreError> {
    match &c.kind {
        Some(Kind::CreateUser(c)) => create_user(txn, now_ms, c),
        Some(Kind::SetPassword(c)) => set_password(txn, now_ms, c),
        Some(Kind::DisableUser(c)) => disable_user(txn, now_ms, c),
        Some(Kind::LoginFailed(c)) => login_failed(txn, now_ms, c),
        Some(Kind::OpenSession(c)) => open_session(txn, now_ms, c),
        Some(Kind::CloseSession(c)) => {
            txn.remove(tables::session(&c.session_sha256));
            Ok(applied())
        }
        Some(Kind::TouchSession(c)) => touch_session(txn, now_ms, c),
        Some(Kind::BeginTotp(c)) => begin_totp(txn, c),
        Some(Kind::ConfirmTotp(c)) => confirm_totp(txn, c),
        Some(Kind::RegisterOauthClient(c)) => register_oauth_client(txn, now_ms, c),
        Some(Kind::RevokeOauthClient(c)) => revoke_oauth_client(txn, now_ms, c),
        Some(Kind::SetTokenSigningKey(c)) => set_token_signing_key(txn, c),
        Some(Kind::RecordSecurityEvents(c)) => record_security_events(txn, log_id, c),
        None => Ok(rejected("unsupported_command", "security command of an unknown kind")),
    }
}

fn load_user(txn: &Txn<'_>, username: &str) -> Result<Option<state::User>, StoreError> {
    txn.get_msg::<state::User>(&tables::user(username))
}

fn create_user(txn: &mut Txn<'_>, now_ms: u64, c: &state::CreateUser) -> Result<state::CommandResponse, StoreError> {
    let Some(user) = &c.user else { return Ok(rejected("invalid_command", "user creation without user")) };
    if user.username.is_empty() || user.password_hash.is_empty() {
        return Ok(rejected("invalid_command", "a user needs a name and a password hash"));
    }
    let k = tables::user(&user.username);
    if txn.get(&k)?.is_some() {
        return Ok(rejected("conflict", format!("user `{}` already exists", user.username)));
    }
    let mut user = user.clone();
    user.created_at_ms = now_ms;
    txn.put_msg(k, &user);
    Ok(applied())
}

fn set_password(txn: &mut Txn<'_>, now_ms: u64, c: &state::SetPassword) -> Result<state::CommandResponse, StoreError> {
    let Some(mut user) = load_user(txn, &c.username)? else {
        return Ok(rejected("not_found", format!("user `{}` does not exist", c.username)));
    };
    user.password_hash = c.password_hash.clone();
    // Every session opened with the old password ends here, on every node.
    user.sessions_valid_after_ms = now_ms;
    user.failed_logins = 0;
    txn.put_msg(tables::user(&c.username), &user);
    Ok(applied())
}

fn disable_user(txn: &mut Txn<'_>, now_ms: u64, c: &state::DisableUser) -> Result<state::CommandResponse, StoreError> {
    let Some(mut user) = load_user(txn, &c.username)? else {
        return Ok(rejected("not_found", format!("user `{}` does not exist", c.username)));
    };
    if user.disabled_at_ms == 0 {
        user.disabled_at_ms = now_ms.max(1);
        user.sessions_valid_after_ms = now_ms;
        txn.put_msg(tables::user(&c.username), &user);
    }
    Ok(applied())
}

fn login_failed(txn: &mut Txn<'_>, now_ms: u64, c: &state::LoginFailed) -> Result<state::CommandResponse, StoreError> {
    // An unknown user: nothing to count (the command exists so that the answer takes as long).
    let Some(mut user) = load_user(txn, &c.username)? else { return Ok(applied()) };
    if user.locked_until_ms > now_ms {
        return Ok(applied());
    }
    user.failed_logins = user.failed_logins.saturating_add(1);
    if c.lockout_threshold > 0 && user.failed_logins >= c.lockout_threshold {
        user.locked_until_ms = now_ms.saturating_add(c.lockout_ms);
        user.failed_logins = 0;
    }
    txn.put_msg(tables::user(&c.username), &user);
    Ok(applied())
}

fn open_session(txn: &mut Txn<'_>, now_ms: u64, c: &state::OpenSession) -> Result<state::CommandResponse, StoreError> {
    let Some(mut user) = load_user(txn, &c.username)? else {
        return Ok(rejected("invalid_login", "invalid username or password"));
    };
    if user.disabled_at_ms != 0 {
        return Ok(rejected("invalid_login", "invalid username or password"));
    }
    if user.locked_until_ms > now_ms {
        return Ok(rejected("locked", "too many failed logins; the account is locked for a while"));
    }
    let second_factor = c.totp_step != 0 || !c.recovery_code_sha256.is_empty();
    let needs_mfa = MFA_ROLES.contains(&user.role.as_str()) || !user.totp_secret.is_empty();
    if needs_mfa && !second_factor && !(c.mfa_pending && user.totp_secret.is_empty()) {
        return Ok(rejected("totp_required", "this account needs a TOTP code"));
    }
    if c.totp_step != 0 {
        if user.totp_secret.is_empty() {
            return Ok(rejected("invalid_login", "this account has no TOTP enrolled"));
        }
        if c.totp_step <= user.totp_last_step {
            return Ok(rejected("totp_replayed", "this TOTP code was already used; wait for the next one"));
        }
        user.totp_last_step = c.totp_step;
    }
    if !c.recovery_code_sha256.is_empty() {
        let Some(pos) = user.recovery_code_sha256.iter().position(|h| h == &c.recovery_code_sha256) else {
            return Ok(rejected("invalid_login", "this recovery code is not valid or was already used"));
        };
        user.recovery_code_sha256.remove(pos);
    }
    let k = tables::session(&c.session_sha256);
    if c.session_sha256.len() != 32 || txn.get(&k)?.is_some() {
        return Ok(rejected("invalid_command", "bad session id"));
    }
    user.failed_logins = 0;
    txn.put_msg(tables::user(&c.username), &user);
    txn.put_msg(
        k,
        &state::Session {
            username: c.username.clone(),
            created_at_ms: now_ms,
            last_seen_ms: now_ms,
            idle_timeout_ms: c.idle_timeout_ms,
            expires_at_ms: now_ms.saturating_add(c.absolute_timeout_ms),
            mfa_pending: c.mfa_pending,
        },
    );
    Ok(applied())
}

fn touch_session(
    txn: &mut Txn<'_>,
    now_ms: u64,
    c: &state::TouchSession,
) -> Result<state::CommandResponse, StoreError> {
    let k = tables::session(&c.session_sha256);
    if let Some(mut s) = txn.get_msg::<state::Session>(&k)? {
        // An idle session is not revived by a late touch: expiry is decided here, from log times.
        if s.last_seen_ms.saturating_add(s.idle_timeout_ms) < now_ms || s.expires_at_ms < now_ms {
            txn.remove(k);
        } else if now_ms > s.last_seen_ms {
            s.last_seen_ms = now_ms;
            txn.put_msg(k, &s);
        }
    }
    Ok(applied())
}

fn begin_totp(txn: &mut Txn<'_>, c: &state::BeginTotp) -> Result<state::CommandResponse, StoreError> {
    let Some(mut user) = load_user(txn, &c.username)? else {
        return Ok(rejected("not_found", format!("user `{}` does not exist", c.username)));
    };
    if c.pending_secret.len() < 16 {
        return Ok(rejected("invalid_command", "a TOTP secret needs at least 128 bits"));
    }
    user.totp_pending_secret = c.pending_secret.clone();
    txn.put_msg(tables::user(&c.username), &user);
    Ok(applied())
}

fn confirm_totp(txn: &mut Txn<'_>, c: &state::ConfirmTotp) -> Result<state::CommandResponse, StoreError> {
    let Some(mut user) = load_user(txn, &c.username)? else {
        return Ok(rejected("not_found", format!("user `{}` does not exist", c.username)));
    };
    if user.totp_pending_secret.is_empty() {
        return Ok(rejected("conflict", "no TOTP enrollment is waiting for confirmation"));
    }
    if c.totp_step <= user.totp_last_step {
        return Ok(rejected("totp_replayed", "this TOTP code was already used; wait for the next one"));
    }
    user.totp_secret = std::mem::take(&mut user.totp_pending_secret);
    user.totp_last_step = c.totp_step;
    user.recovery_code_sha256 = c.recovery_code_sha256.clone();
    txn.put_msg(tables::user(&c.username), &user);
    let k = tables::session(&c.session_sha256);
    if let Some(mut s) = txn.get_msg::<state::Session>(&k)?
        && s.username == c.username
    {
        s.mfa_pending = false;
        txn.put_msg(k, &s);
    }
    Ok(applied())
}

fn register_oauth_client(
    txn: &mut Txn<'_>,
    now_ms: u64,
    c: &state::RegisterOAuthClient,
) -> Result<state::CommandResponse, StoreError> {
    let Some(client) = &c.client else { return Ok(rejected("invalid_command", "registration without client")) };
    let k = tables::oauth_client(&client.client_id);
    if txn.get(&k)?.is_some() {
        return Ok(rejected("conflict", "client id already exists"));
    }
    if !client.source_id.is_empty() {
        match txn.get_msg::<state::Source>(&tables::source(&client.source_id))? {
            Some(s) if s.removed_at_ms == 0 => {}
            _ => return Ok(rejected("not_found", format!("source `{}` is not registered", client.source_id))),
        }
    }
    let mut client = client.clone();
    client.created_at_ms = now_ms;
    txn.put_msg(k, &client);
    Ok(applied())
}

fn revoke_oauth_client(
    txn: &mut Txn<'_>,
    now_ms: u64,
    c: &state::RevokeOAuthClient,
) -> Result<state::CommandResponse, StoreError> {
    let k = tables::oauth_client(&c.client_id);
    let Some(mut client) = txn.get_msg::<state::OAuthClient>(&k)? else {
        return Ok(rejected("not_found", format!("OAuth client `{}` does not exist", c.client_id)));
    };
    if client.revoked_at_ms == 0 {
        client.revoked_at_ms = now_ms.max(1);
        txn.put_msg(k, &client);
    }
    Ok(applied())
}

fn set_token_signing_key(
    txn: &mut Txn<'_>,
    c: &state::SetTokenSigningKey,
) -> Result<state::CommandResponse, StoreError> {
    let Some(key) = &c.key else { return Ok(rejected("invalid_command", "signing key missing")) };
    if key.pkcs8.len() != 48 || key.kid.is_empty() {
        return Ok(rejected("invalid_command", "the signing key must be an Ed25519 PKCS#8 key with a kid"));
    }
    // First proposal wins, as with the masking key: every node ends with the same key.
    if txn.get(tables::TOKEN_SIGNING_KEY)?.is_none() {
        txn.put_msg(tables::TOKEN_SIGNING_KEY.to_vec(), key);
    }
    Ok(applied())
}

fn record_security_events(
    txn: &mut Txn<'_>,
    log_id: &LogId,
    c: &state::RecordSecurityEvents,
) -> Result<state::CommandResponse, StoreError> {
    if c.events.len() > SECURITY_EVENTS_PER_COMMAND_MAX {
        return Ok(rejected("invalid_command", "too many security events in one command"));
    }
    let count = match txn.get(tables::SECURITY_EVENT_COUNT)? {
        Some(v) if v.len() == 8 => u64::from_be_bytes(v.as_slice().try_into().unwrap_or([0; 8])),
        _ => 0,
    };
    for (position, e) in c.events.iter().enumerate() {
        txn.put_msg(tables::security_event(log_id.index, position as u32), e);
    }
    let mut count = count + c.events.len() as u64;
    if count > SECURITY_EVENTS_KEPT_MAX {
        let excess = (count - SECURITY_EVENTS_KEPT_MAX) as usize;
        let end = tables::security_event(log_id.index, 0);
        for (k, _) in txn.scan_range(tables::SECURITY_EVENT, &end, excess.min(SECURITY_EVENTS_PER_COMMAND_MAX * 2))? {
            txn.remove(k);
            count -= 1;
        }
    }
    txn.put(tables::SECURITY_EVENT_COUNT.to_vec(), count.to_be_bytes().to_vec());
    Ok(applied())
}
