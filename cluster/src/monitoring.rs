//! What alerting commands do to the tables (issue 10; A5.2, F5): alert rules (`alrule/<id>`),
//! notification channels (`alchan/<id>`), the state of every alert (`alst/<rule>\0<subject>`), its
//! history of transitions (`alh/<at_ms be64><seq be64>`) and the history's counter (`alm/meta`).
//!
//! The evaluators (`node/src/alerts/`) propose a transition when they see an alert start or stop
//! firing; `apply` records it only when it changes the alert's state. Two evaluators seeing the same
//! thing, or a write retried across a leader change, therefore make one history entry, and only
//! the node whose transition was recorded notifies. Deterministic like the rest of `apply`: times
//! and node ids come from the command.
//!
//! History is kept at least `HISTORY_RETENTION_MIN_MS` (365 days): a prune with a younger bound is
//! refused at its log position on every node.

use dtm_model::LogId;
use dtm_model::state;
use dtm_model::state::monitoring_command::Kind;
use dtm_storage::StoreError;
use dtm_storage::Txn;

use crate::applier::applied;
use crate::applier::rejected;

pub const RULE: &[u8] = b"alrule/";
pub const CHANNEL: &[u8] = b"alchan/";
pub const STATE: &[u8] = b"alst/";
pub const HISTORY: &[u8] = b"alh/";
pub const META: &[u8] = b"alm/meta";

/// Rules and channels a cluster may hold.
pub const RULES_MAX: usize = 256;
pub const CHANNELS_MAX: usize = 32;
/// Alert states (rule × subject) kept; a transition that would add one more is refused.
pub const STATES_MAX: usize = 10_000;
/// Longest id of a rule or a channel, and longest subject.
pub const ID_BYTES_MAX: usize = 64;
pub const SUBJECT_BYTES_MAX: usize = 128;
/// Longest message or description, and notification detail.
pub const TEXT_BYTES_MAX: usize = 1_024;
/// Recipients of one e-mail channel; labels of one rule; channels one rule names.
pub const RECIPIENTS_MAX: usize = 20;
pub const LABELS_MAX: usize = 8;
/// Notification results kept per history entry (one per channel and node, the latest wins).
pub const NOTIFICATIONS_PER_EVENT_MAX: usize = 64;
/// History entries one prune removes; the leader prunes again until nothing is left to remove.
pub const PRUNED_PER_COMMAND_MAX: usize = 1_024;
/// History younger than this is never removed (A5.2: monitoring data kept at least a year).
pub const HISTORY_RETENTION_MIN_MS: u64 = 365 * 24 * 3600 * 1000;

pub const RULE_KINDS: [&str; 2] = ["threshold", "anomaly"];
pub const OPERATORS: [&str; 4] = [">", ">=", "<", "<="];
pub const SEVERITIES: [&str; 3] = ["info", "warning", "critical"];
pub const CHANNEL_KINDS: [&str; 3] = ["email", "webhook", "dashboard"];
pub const EMAIL_SECURITY: [&str; 3] = ["starttls", "tls", "plain"];

fn join(table: &[u8], parts: &[&str]) -> Vec<u8> {
    let mut k = table.to_vec();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p.as_bytes());
    }
    k
}

pub fn rule(id: &str) -> Vec<u8> {
    join(RULE, &[id])
}

pub fn channel(id: &str) -> Vec<u8> {
    join(CHANNEL, &[id])
}

pub fn alert_state(rule_id: &str, subject: &str) -> Vec<u8> {
    join(STATE, &[rule_id, subject])
}

/// The states of one rule.
pub fn states_of(rule_id: &str) -> Vec<u8> {
    let mut k = join(STATE, &[rule_id]);
    k.push(0);
    k
}

pub fn history(at_ms: u64, seq: u64) -> Vec<u8> {
    let mut k = HISTORY.to_vec();
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The first history key at or after `at_ms`.
pub fn history_from(at_ms: u64) -> Vec<u8> {
    let mut k = HISTORY.to_vec();
    k.extend_from_slice(&at_ms.to_be_bytes());
    k
}

/// A history entry's public id, `<at_ms>-<seq>`, and back.
pub fn event_id(at_ms: u64, seq: u64) -> String {
    format!("{at_ms}-{seq}")
}

pub fn parse_event_id(id: &str) -> Option<(u64, u64)> {
    let (a, s) = id.split_once('-')?;
    Some((a.parse().ok()?, s.parse().ok()?))
}

/// An id of a rule or channel: 1–64 of letters, digits, `_`, `.`, `-`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= ID_BYTES_MAX
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

pub fn apply(
    txn: &mut Txn<'_>,
    log_id: &LogId,
    now_ms: u64,
    origin_node: u64,
    c: &state::MonitoringCommand,
) -> Result<state::CommandResponse, StoreError> {
    match &c.kind {
        Some(Kind::PutRule(c)) => put_rule(txn, c),
        Some(Kind::DeleteRule(c)) => delete_rule(txn, log_id, now_ms, origin_node, c),
        Some(Kind::PutChannel(c)) => put_channel(txn, c),
        Some(Kind::DeleteChannel(c)) => delete_channel(txn, c),
        Some(Kind::Transition(t)) => transition(txn, log_id, t),
        Some(Kind::Notifications(c)) => notifications(txn, c),
        Some(Kind::Prune(c)) => prune(txn, now_ms, c),
        Some(Kind::Seed(c)) => seed(txn, c),
        None => Ok(rejected("unsupported_command", "monitoring command of an unknown kind")),
    }
}

fn count(txn: &Txn<'_>, prefix: &[u8], max: usize) -> Result<usize, StoreError> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    Ok(txn.scan_range(prefix, &end, max + 1)?.len())
}

/// Checks a rule's shape; `None` when it is well-formed.
pub fn rule_problem(r: &state::AlertRule) -> Option<String> {
    if !valid_id(&r.id) {
        return Some("a rule id is 1-64 letters, digits, `_`, `.` or `-`".into());
    }
    if !RULE_KINDS.contains(&r.kind.as_str()) {
        return Some(format!("kind must be one of {RULE_KINDS:?}"));
    }
    if r.kind == "threshold" && !OPERATORS.contains(&r.op.as_str()) {
        return Some(format!("op must be one of {OPERATORS:?}"));
    }
    if r.metric.is_empty() || r.metric.len() > ID_BYTES_MAX {
        return Some("metric is required".into());
    }
    if !r.threshold.is_finite() || !r.k_sigma.is_finite() || (r.kind == "anomaly" && r.k_sigma <= 0.0) {
        return Some("threshold and k_sigma must be finite numbers (k_sigma above 0 for anomaly rules)".into());
    }
    if !SEVERITIES.contains(&r.severity.as_str()) {
        return Some(format!("severity must be one of {SEVERITIES:?}"));
    }
    if r.channels.len() > CHANNELS_MAX || r.channels.iter().any(|c| !valid_id(c)) {
        return Some("channels must name at most 32 channel ids".into());
    }
    if r.labels.len() > LABELS_MAX || r.labels.iter().any(|(k, v)| k.len() > ID_BYTES_MAX || v.len() > ID_BYTES_MAX) {
        return Some("at most 8 labels of at most 64 bytes".into());
    }
    if r.description.len() > TEXT_BYTES_MAX {
        return Some("description too long".into());
    }
    None
}

fn put_rule(txn: &mut Txn<'_>, c: &state::PutAlertRule) -> Result<state::CommandResponse, StoreError> {
    let Some(r) = &c.rule else { return Ok(rejected("invalid_command", "rule missing")) };
    if let Some(problem) = rule_problem(r) {
        return Ok(rejected("invalid_command", problem));
    }
    let key = rule(&r.id);
    if txn.get(&key)?.is_none() && count(txn, RULE, RULES_MAX)? >= RULES_MAX {
        return Ok(rejected("limit_exceeded", format!("at most {RULES_MAX} alert rules")));
    }
    txn.put_msg(key, r);
    Ok(applied())
}

/// Deletes a rule and resolves its firing alerts in history (reason "rule deleted"); those
/// resolutions are not notified.
fn delete_rule(
    txn: &mut Txn<'_>,
    log_id: &LogId,
    now_ms: u64,
    origin_node: u64,
    c: &state::DeleteAlertRule,
) -> Result<state::CommandResponse, StoreError> {
    let key = rule(&c.id);
    if txn.get(&key)?.is_none() {
        return Ok(rejected("not_found", format!("no alert rule `{}`", c.id)));
    }
    txn.remove(key);
    let prefix = states_of(&c.id);
    let mut end = prefix.clone();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    // Bounded by STATES_MAX.
    for (k, v) in txn.scan_range(&prefix, &end, STATES_MAX)? {
        let Ok(s) = <state::AlertState as prost::Message>::decode(v.as_slice()) else {
            txn.remove(k);
            continue;
        };
        if s.firing {
            let t = state::AlertTransition {
                rule_id: s.rule_id.clone(),
                subject: s.subject.clone(),
                firing: false,
                at_ms: now_ms,
                value: s.value,
                severity: s.severity.clone(),
                message: "rule deleted".into(),
                node_id: origin_node,
            };
            append_history(txn, log_id, &t)?;
        }
        txn.remove(k);
    }
    Ok(applied())
}

/// Checks a channel's shape; `None` when it is well-formed.
pub fn channel_problem(ch: &state::AlertChannel) -> Option<String> {
    if !valid_id(&ch.id) {
        return Some("a channel id is 1-64 letters, digits, `_`, `.` or `-`".into());
    }
    match ch.kind.as_str() {
        "email" => {
            let Some(e) = &ch.email else { return Some("an email channel needs `email`".into()) };
            if e.host.is_empty() || e.host.len() > 255 || e.port == 0 || e.port > 65_535 {
                return Some("email: host and port (1-65535) are required".into());
            }
            if !EMAIL_SECURITY.contains(&e.security.as_str()) {
                return Some(format!("email: security must be one of {EMAIL_SECURITY:?}"));
            }
            if e.from.is_empty() || e.to.is_empty() || e.to.len() > RECIPIENTS_MAX {
                return Some(format!("email: from and 1-{RECIPIENTS_MAX} recipients are required"));
            }
            let long = |s: &String| s.len() > 320;
            if long(&e.from) || e.to.iter().any(long) || long(&e.username) || e.password_ref.len() > ID_BYTES_MAX {
                return Some("email: address, user name or password_ref too long".into());
            }
        }
        "webhook" => {
            let Some(w) = &ch.webhook else { return Some("a webhook channel needs `webhook`".into()) };
            let scheme_ok = w.url.starts_with("https://") || w.url.starts_with("http://");
            if !scheme_ok || w.url.len() > 2_048 || w.secret_ref.len() > ID_BYTES_MAX {
                return Some("webhook: an http(s) url of at most 2048 bytes is required".into());
            }
        }
        "dashboard" => {}
        _ => return Some(format!("kind must be one of {CHANNEL_KINDS:?}")),
    }
    None
}

fn put_channel(txn: &mut Txn<'_>, c: &state::PutAlertChannel) -> Result<state::CommandResponse, StoreError> {
    let Some(ch) = &c.channel else { return Ok(rejected("invalid_command", "channel missing")) };
    if let Some(problem) = channel_problem(ch) {
        return Ok(rejected("invalid_command", problem));
    }
    let key = channel(&ch.id);
    if txn.get(&key)?.is_none() && count(txn, CHANNEL, CHANNELS_MAX)? >= CHANNELS_MAX {
        return Ok(rejected("limit_exceeded", format!("at most {CHANNELS_MAX} alert channels")));
    }
    txn.put_msg(key, ch);
    Ok(applied())
}

fn delete_channel(txn: &mut Txn<'_>, c: &state::DeleteAlertChannel) -> Result<state::CommandResponse, StoreError> {
    let key = channel(&c.id);
    if txn.get(&key)?.is_none() {
        return Ok(rejected("not_found", format!("no alert channel `{}`", c.id)));
    }
    txn.remove(key);
    Ok(applied())
}

fn append_history(txn: &mut Txn<'_>, log_id: &LogId, t: &state::AlertTransition) -> Result<String, StoreError> {
    let mut meta = txn.get_msg::<state::AlertMeta>(META)?.unwrap_or_default();
    let seq = meta.next_seq;
    meta.next_seq += 1;
    txn.put_msg(META.to_vec(), &meta);
    let id = event_id(t.at_ms, seq);
    let event = state::AlertEvent {
        id: id.clone(),
        seq,
        transition: Some(t.clone()),
        log_index: log_id.index,
        notifications: Vec::new(),
    };
    txn.put_msg(history(t.at_ms, seq), &event);
    Ok(id)
}

/// Records a transition when it changes the alert's state; the same state again is refused with
/// `unchanged` (and the proposer does not notify).
fn transition(
    txn: &mut Txn<'_>,
    log_id: &LogId,
    t: &state::AlertTransition,
) -> Result<state::CommandResponse, StoreError> {
    if !valid_id(&t.rule_id) || t.subject.is_empty() || t.subject.len() > SUBJECT_BYTES_MAX {
        return Ok(rejected("invalid_command", "a transition needs a rule id and a subject"));
    }
    if t.message.len() > TEXT_BYTES_MAX || !SEVERITIES.contains(&t.severity.as_str()) {
        return Ok(rejected("invalid_command", "message too long or unknown severity"));
    }
    if txn.get(&rule(&t.rule_id))?.is_none() {
        return Ok(rejected("not_found", format!("no alert rule `{}`", t.rule_id)));
    }
    let key = alert_state(&t.rule_id, &t.subject);
    let current = txn.get_msg::<state::AlertState>(&key)?;
    let firing_now = current.as_ref().is_some_and(|s| s.firing);
    if firing_now == t.firing {
        return Ok(rejected("unchanged", "the alert is already in that state"));
    }
    if current.is_none() && count(txn, STATE, STATES_MAX)? >= STATES_MAX {
        return Ok(rejected("limit_exceeded", format!("at most {STATES_MAX} alert states")));
    }
    let id = append_history(txn, log_id, t)?;
    let s = state::AlertState {
        rule_id: t.rule_id.clone(),
        subject: t.subject.clone(),
        firing: t.firing,
        since_ms: t.at_ms,
        value: t.value,
        severity: t.severity.clone(),
        message: t.message.clone(),
        event_id: id,
        node_id: t.node_id,
    };
    txn.put_msg(key, &s);
    Ok(applied())
}

fn notifications(txn: &mut Txn<'_>, c: &state::RecordNotifications) -> Result<state::CommandResponse, StoreError> {
    let Some((at_ms, seq)) = parse_event_id(&c.event_id) else {
        return Ok(rejected("invalid_command", "malformed event id"));
    };
    let key = history(at_ms, seq);
    let Some(mut event) = txn.get_msg::<state::AlertEvent>(&key)? else {
        return Ok(rejected("not_found", format!("no alert event `{}`", c.event_id)));
    };
    for r in &c.results {
        if r.detail.len() > TEXT_BYTES_MAX || !valid_id(&r.channel_id) {
            return Ok(rejected("invalid_command", "malformed notification result"));
        }
        // The latest result per channel and node replaces an earlier one.
        event.notifications.retain(|x| !(x.channel_id == r.channel_id && x.node_id == r.node_id));
        if event.notifications.len() >= NOTIFICATIONS_PER_EVENT_MAX {
            return Ok(rejected("limit_exceeded", "too many notification results for one event"));
        }
        event.notifications.push(r.clone());
    }
    txn.put_msg(key, &event);
    Ok(applied())
}

/// Removes history entries older than `before_ms` (at most `PRUNED_PER_COMMAND_MAX`), never one
/// younger than `HISTORY_RETENTION_MIN_MS` by the command's time.
fn prune(txn: &mut Txn<'_>, now_ms: u64, c: &state::PruneAlertHistory) -> Result<state::CommandResponse, StoreError> {
    if c.before_ms > now_ms.saturating_sub(HISTORY_RETENTION_MIN_MS) {
        return Ok(rejected("retention", "alert history is kept at least 365 days"));
    }
    let page = txn.scan_range(HISTORY, &history_from(c.before_ms), PRUNED_PER_COMMAND_MAX)?;
    for (k, _) in page {
        txn.remove(k);
    }
    Ok(applied())
}

/// Puts the built-in rules of a newer version that do not exist yet; an older or equal version
/// changes nothing (every leader may propose it once it sees the tables behind).
fn seed(txn: &mut Txn<'_>, c: &state::SeedAlertRules) -> Result<state::CommandResponse, StoreError> {
    let mut meta = txn.get_msg::<state::AlertMeta>(META)?.unwrap_or_default();
    if c.version <= meta.defaults_version {
        return Ok(rejected("unchanged", "the built-in rules of this version were seeded already"));
    }
    if c.rules.len() > RULES_MAX {
        return Ok(rejected("invalid_command", "too many rules"));
    }
    for r in &c.rules {
        if let Some(problem) = rule_problem(r) {
            return Ok(rejected("invalid_command", problem));
        }
    }
    for r in &c.rules {
        let key = rule(&r.id);
        if txn.get(&key)?.is_none() && count(txn, RULE, RULES_MAX)? < RULES_MAX {
            txn.put_msg(key, r);
        }
    }
    meta.defaults_version = c.version;
    txn.put_msg(META.to_vec(), &meta);
    Ok(applied())
}
