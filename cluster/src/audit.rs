//! The tamper-evident audit trail (F8, A1.8, C4), built in `apply` so every node holds the same one.
//!
//! Every applied command becomes zero or more audit entries: a state change is audited from the
//! command itself (who, from `Command.actor` or the submission; what, from its kind; the outcome from
//! its reply), and what changes nothing — reads, exports, refused requests — arrives as explicit
//! `AuditEvents` that each node batches (`node/src/audit.rs`). Entries form a hash chain
//! (`aud/<seq>`: each carries the previous hash) and an RFC 6962 Merkle tree whose frontier is kept
//! in the head (`audh/head`). Every `CHECKPOINT_EVERY_ENTRIES` entries, or when the leader asks
//! (`CloseCheckpoint`, about every ten seconds), `apply` closes a checkpoint (`audc/<size>`: size,
//! head hash, Merkle root). The leader then signs it with its Ed25519 node key (`SignCheckpoints`);
//! `apply` keeps a signature only if it verifies under a node key registered in the tables.
//!
//! Nothing deletes or edits an entry: no command does, compaction keeps the tables (snapshots carry
//! the trail), and [`Verifier`] recomputes the chain, the tree and every signature from the stored
//! entries, naming the first one that was changed, removed or reordered.
//!
//! Per source system and day, `apply` also counts requests, successes, failures by cause, bytes and
//! new connections (`conn/`, C4), from the same entries.

use dtm_model::LogId;
use dtm_model::state;
use dtm_model::state::command::Kind;
use dtm_model::state::command_response::Result as Reply;
use dtm_storage::StateReader;
use dtm_storage::StoreError;
use dtm_storage::Txn;
use prost::Message;
use sha2::Digest;
use sha2::Sha256;

use crate::applier::applied;
use crate::applier::rejected;
use crate::tables;

/// A checkpoint closes at least every this many entries.
pub const CHECKPOINT_EVERY_ENTRIES: u64 = 4096;
/// Signatures one `SignCheckpoints` command may carry.
pub const SIGNATURES_PER_COMMAND_MAX: usize = 256;
/// Signatures kept per checkpoint (one per node that signed).
pub const SIGNATURES_PER_CHECKPOINT_MAX: usize = 16;
/// Audit events one `AuditEvents` command may carry; more are refused.
pub const EVENTS_PER_COMMAND_MAX: usize = 4096;
/// Longest text field of an audit event; longer ones are cut (on a character boundary).
pub const EVENT_TEXT_BYTES_MAX: usize = 512;
/// Longest detail of an audit event.
pub const EVENT_DETAIL_BYTES_MAX: usize = 4096;
/// A block (the entries of one command, stored under one key) holds at most this many entries,
/// this many bytes, and events at most this far apart in time; a command that makes more is
/// stored in several blocks.
pub const BLOCK_ENTRIES_MAX: usize = 4096;
pub const BLOCK_BYTES_MAX: usize = 512 * 1024;
pub const BLOCK_SPAN_MS_MAX: u64 = 60_000;
/// Distinct failure causes counted per source and day; the rest are counted under `other`.
pub const CONNECTION_CAUSES_MAX: usize = 64;

const ENTRY_DOMAIN: &[u8] = b"dtm-audit-entry-v1";
const CHECKPOINT_DOMAIN: &[u8] = b"dtm-audit-checkpoint-v1";
/// Vietnam time (UTC+7) for the connection log's days.
const VIETNAM_OFFSET_S: i64 = 7 * 3600;

pub type Hash = [u8; 32];
pub const ZERO_HASH: Hash = [0u8; 32];

/// The hash of entry `seq` with body `body` following `prev`.
pub fn entry_hash(seq: u64, prev: &[u8], body: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(ENTRY_DOMAIN);
    h.update(seq.to_be_bytes());
    h.update(prev);
    h.update(body);
    h.finalize().into()
}

fn leaf_hash(entry_hash: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry_hash);
    h.finalize().into()
}

fn node_hash(left: &[u8], right: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The Merkle frontier of an RFC 6962 tree: the roots of its perfect subtrees, largest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    pub size: u64,
    pub roots: Vec<Hash>,
}

impl Frontier {
    pub fn push(&mut self, entry_hash: &[u8]) {
        let mut node = leaf_hash(entry_hash);
        let mut n = self.size;
        while n & 1 == 1 {
            let Some(left) = self.roots.pop() else { break };
            node = node_hash(&left, &node);
            n >>= 1;
        }
        self.roots.push(node);
        self.size += 1;
    }

    /// The tree's root (RFC 6962 `MTH`; the hash of nothing for an empty tree).
    pub fn root(&self) -> Hash {
        let mut it = self.roots.iter().rev();
        let Some(last) = it.next() else { return Sha256::digest(b"").into() };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }

    fn from_head(head: &state::AuditHead) -> Result<Frontier, String> {
        let roots = head
            .frontier
            .iter()
            .map(|r| Hash::try_from(r.as_slice()).map_err(|_| "a frontier hash is not 32 bytes".to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        if roots.len() != head.size.count_ones() as usize {
            return Err(format!("the frontier has {} roots for {} entries", roots.len(), head.size));
        }
        Ok(Frontier { size: head.size, roots })
    }
}

/// What a checkpoint's signature covers.
pub fn checkpoint_message(cp: &state::AuditCheckpoint) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 8 + 32 + 32 + 16);
    m.extend_from_slice(CHECKPOINT_DOMAIN);
    m.extend_from_slice(&cp.size.to_be_bytes());
    m.extend_from_slice(&cp.head_hash);
    m.extend_from_slice(&cp.merkle_root);
    m.extend_from_slice(&cp.log_index.to_be_bytes());
    m.extend_from_slice(&cp.at_ms.to_be_bytes());
    m
}

/// True when `signature` is `public_key`'s Ed25519 signature of `message`.
pub fn signature_valid(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key).verify(message, signature).is_ok()
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Bounds an event's text fields (events come from every node; none may grow the chain unboundedly).
fn bounded(mut e: state::AuditEvent) -> state::AuditEvent {
    for f in [&mut e.principal, &mut e.operation, &mut e.target, &mut e.outcome, &mut e.organisation] {
        if f.len() > EVENT_TEXT_BYTES_MAX {
            *f = cut(f, EVENT_TEXT_BYTES_MAX);
        }
    }
    e.client_ip = cut(&e.client_ip, 64);
    e.request_id = cut(&e.request_id, 128);
    e.channel = cut(&e.channel, 64);
    e.source = cut(&e.source, 128);
    if e.detail_json.len() > EVENT_DETAIL_BYTES_MAX {
        e.detail_json = serde_json::to_vec(&serde_json::json!({"truncated": true})).unwrap_or_default();
    }
    e.count = e.count.max(1);
    e
}

fn outcome_of(resp: &state::CommandResponse) -> String {
    match &resp.result {
        Some(Reply::Rejected(r)) => format!("rejected:{}", r.code),
        _ => "ok".into(),
    }
}

/// The audit events a command makes, given its reply. Pure; `record` stamps and chains them.
pub fn derive(cmd: &state::Command, resp: &state::CommandResponse) -> Vec<state::AuditEvent> {
    use state::audit_command::Kind as A;
    use state::gateway_command::Kind as G;
    use state::security_command::Kind as S;
    let actor = cmd.actor.clone().unwrap_or_default();
    let principal =
        if actor.principal.is_empty() { format!("system:node-{}", cmd.origin_node) } else { actor.principal.clone() };
    let base = |operation: &str, target: String| state::AuditEvent {
        principal: principal.clone(),
        organisation: actor.organisation.clone(),
        client_ip: actor.client_ip.clone(),
        request_id: actor.request_id.clone(),
        operation: operation.into(),
        target,
        outcome: outcome_of(resp),
        at_ms: cmd.proposed_at_ms,
        node_id: cmd.origin_node,
        channel: if actor.principal.is_empty() { "system".into() } else { "rest".into() },
        count: 1,
        ..Default::default()
    };
    let one = |operation: &str, target: String| vec![base(operation, target)];
    let Some(kind) = &cmd.kind else { return Vec::new() };
    match kind {
        Kind::RegisterSource(c) => {
            one("source.register", format!("source/{}", c.source.as_ref().map_or("", |s| s.id.as_str())))
        }
        Kind::IssueKey(c) => one(
            "source.key.issue",
            format!("source/{}/key/{}", c.source_id, c.key.as_ref().map_or("", |k| k.key_id.as_str())),
        ),
        Kind::RevokeKey(c) => one("source.key.revoke", format!("source/{}/key/{}", c.source_id, c.key_id)),
        Kind::DefineDataset(c) => {
            let (id, version) = c.dataset.as_ref().map_or(("", 0), |d| (d.id.as_str(), d.version));
            let mut e = base("dataset.define", format!("dataset/{id}"));
            e.detail_json = serde_json::to_vec(&serde_json::json!({ "version": version })).unwrap_or_default();
            vec![e]
        }
        Kind::RemoveSource(c) => one("source.remove", format!("source/{}", c.source_id)),
        Kind::IssueAdminToken(c) => {
            one("admin_token.issue", format!("admin-token/{}", c.token.as_ref().map_or("", |t| t.token_id.as_str())))
        }
        Kind::SetClusterSecrets(_) => one("cluster.secrets.set", "cluster".into()),
        Kind::RotateDataKeys(_) => one("keys.rotate", "cluster".into()),
        Kind::Ingest(b) => ingest_events(cmd, b, resp),
        Kind::Audit(a) => a.events.to_vec(),
        Kind::Batch(b) => match &b.kind {
            Some(state::batch_command::Kind::RecordReceipt(r)) => {
                let Some(rc) = &r.receipt else { return Vec::new() };
                let mut e = base("batch.receipt", format!("batch/{}", rc.batch_id));
                e.principal =
                    if actor.principal.is_empty() { format!("source:{}", rc.source) } else { principal.clone() };
                e.source = rc.source.clone();
                e.channel = format!("batch:{}", rc.format);
                e.records = rc.accepted;
                e.bytes_in = rc.content_bytes;
                e.outcome = if e.outcome == "ok" { rc.status.clone() } else { e.outcome };
                e.detail_json = serde_json::to_vec(&serde_json::json!({
                    "dataset": rc.dataset, "received": rc.received, "accepted": rc.accepted,
                    "rejected": rc.rejected, "duplicates": rc.duplicates,
                    "content_sha256": hex::encode(&rc.content_sha256), "reconciliation": rc.reconciliation,
                }))
                .unwrap_or_default();
                vec![e]
            }
            None => Vec::new(),
        },
        Kind::Security(s) => match &s.kind {
            Some(S::CreateUser(c)) => {
                one("user.create", format!("user/{}", c.user.as_ref().map_or("", |u| u.username.as_str())))
            }
            Some(S::SetPassword(c)) => one("user.password.set", format!("user/{}", c.username)),
            Some(S::DisableUser(c)) => one("user.disable", format!("user/{}", c.username)),
            Some(S::LoginFailed(c)) => {
                let mut e = base("auth.login", format!("user/{}", c.username));
                e.principal = format!("user:{}", c.username);
                e.outcome = "failed".into();
                vec![e]
            }
            Some(S::OpenSession(c)) => {
                let mut e = base("auth.login", format!("user/{}", c.username));
                e.principal = format!("user:{}", c.username);
                vec![e]
            }
            Some(S::CloseSession(_)) => one("auth.logout", "session".into()),
            Some(S::BeginTotp(c)) => one("auth.totp.enroll", format!("user/{}", c.username)),
            Some(S::ConfirmTotp(c)) => one("auth.totp.confirm", format!("user/{}", c.username)),
            Some(S::RegisterOauthClient(c)) => one(
                "oauth_client.register",
                format!("oauth-client/{}", c.client.as_ref().map_or("", |x| x.client_id.as_str())),
            ),
            Some(S::RevokeOauthClient(c)) => one("oauth_client.revoke", format!("oauth-client/{}", c.client_id)),
            Some(S::SetTokenSigningKey(_)) => one("cluster.token_key.set", "cluster".into()),
            Some(S::RecordSecurityEvents(r)) => r
                .events
                .iter()
                .map(|ev| state::AuditEvent {
                    principal: if ev.subject.is_empty() { "unknown".into() } else { ev.subject.clone() },
                    operation: format!("security.{}", ev.kind),
                    target: ev.subject.clone(),
                    outcome: "refused".into(),
                    at_ms: ev.at_ms,
                    node_id: ev.node_id,
                    channel: "rest".into(),
                    count: 1,
                    detail_json: serde_json::to_vec(&serde_json::json!({ "detail": ev.detail })).unwrap_or_default(),
                    ..Default::default()
                })
                .collect(),
            // Session touches keep a session alive; the request that caused one is audited itself.
            Some(S::TouchSession(_)) | None => Vec::new(),
        },
        Kind::Gateway(g) => match &g.kind {
            Some(G::SetRateLimits(_)) => one("gateway.rate_limits.set", "gateway".into()),
            Some(G::SetIpRules(_)) => one("gateway.ip_rules.set", "gateway".into()),
            Some(G::BlockAddress(b)) => {
                one("gateway.address.block", format!("address/{}", b.block.as_ref().map_or("", |x| x.address.as_str())))
            }
            Some(G::UnblockAddress(b)) => one("gateway.address.unblock", format!("address/{}", b.address)),
            Some(G::Noop(_)) | None => Vec::new(),
        },
        Kind::Reporting(r) => reporting_events(base, r),
        Kind::Monitoring(m) => monitoring_events(base, m, resp),
        Kind::AuditControl(a) => match &a.kind {
            Some(A::RegisterNodeKey(k)) => {
                one("cluster.node_key.register", format!("node/{}", k.key.as_ref().map_or(0, |k| k.node_id)))
            }
            Some(A::StoreReport(r)) => {
                one("audit.report.store", format!("audit-report/{}", r.report.as_ref().map_or("", |r| r.id.as_str())))
            }
            // Checkpoints and their signatures are about the chain itself, not events in it.
            Some(A::CloseCheckpoint(_)) | Some(A::SignCheckpoints(_)) | None => Vec::new(),
        },
        // Performance samples are measurements, not actions (like checkpoints); a stored report is.
        Kind::Performance(p) => match &p.kind {
            Some(state::performance_command::Kind::StoreReport(r)) => {
                let (id, kind) = r.report.as_ref().map_or(("", ""), |r| (r.id.as_str(), r.kind.as_str()));
                one(&format!("{kind}.report.store"), format!("report/{id}"))
            }
            Some(state::performance_command::Kind::Sample(_)) | None => Vec::new(),
        },
    }
}

/// The audit entries of a reporting-regime command (issue 9): who set an obligation, saved a draft
/// or submitted a report, for which dataset, agency and period, and how it went.
fn reporting_events(
    base: impl Fn(&str, String) -> state::AuditEvent,
    r: &state::ReportingCommand,
) -> Vec<state::AuditEvent> {
    use state::reporting_command::Kind as R;
    let detail = |v: serde_json::Value| serde_json::to_vec(&v).unwrap_or_default();
    match &r.kind {
        Some(R::SetObligation(c)) => {
            let Some(o) = &c.obligation else { return Vec::new() };
            let mut e = base("reporting.obligation.set", format!("dataset/{}", o.dataset));
            e.detail_json = detail(serde_json::json!({
                "period_type": o.period_type, "deadline_days": o.deadline_days, "reminder_days": o.reminder_days,
                "first_period": o.first_period, "agencies": o.agencies.len(), "active": o.active,
            }));
            vec![e]
        }
        Some(R::SaveDraft(c)) => {
            let Some(d) = &c.draft else { return Vec::new() };
            let mut e = base("reporting.draft.save", format!("report/{}/{}/{}", d.dataset, d.agency, d.period));
            e.channel = "web".into();
            e.organisation = d.agency.clone();
            e.bytes_in = d.values_json.len() as u64;
            vec![e]
        }
        Some(R::RecordReport(c)) => {
            let Some(s) = &c.submission else { return Vec::new() };
            let op = if s.version > 1 { "reporting.report.correct" } else { "reporting.report.submit" };
            let mut e = base(op, format!("report/{}/{}/{}", s.dataset, s.agency, s.period));
            e.channel = "web".into();
            e.organisation = s.agency.clone();
            e.source = s.source.clone();
            e.records = s.record_ids.len() as u64;
            e.detail_json = detail(serde_json::json!({
                "version": s.version, "record_ids": s.record_ids, "commit_index": s.commit_index,
                "late": s.deadline_ms != 0 && s.submitted_at_ms > s.deadline_ms,
                "correction_reason": s.correction_reason,
            }));
            vec![e]
        }
        None => Vec::new(),
    }
}

/// The audit entries of an alerting command (issue 10, A5.2): rule and channel changes by whom,
/// alerts that started or stopped firing, history prunes. Notification results are about delivery,
/// not events of their own, and a transition that changed nothing (`unchanged`) is not one either.
fn monitoring_events(
    base: impl Fn(&str, String) -> state::AuditEvent,
    m: &state::MonitoringCommand,
    resp: &state::CommandResponse,
) -> Vec<state::AuditEvent> {
    use state::monitoring_command::Kind as M;
    let detail = |v: serde_json::Value| serde_json::to_vec(&v).unwrap_or_default();
    match &m.kind {
        Some(M::PutRule(c)) => {
            vec![base("alert.rule.put", format!("alert-rule/{}", c.rule.as_ref().map_or("", |r| r.id.as_str())))]
        }
        Some(M::DeleteRule(c)) => vec![base("alert.rule.delete", format!("alert-rule/{}", c.id))],
        Some(M::PutChannel(c)) => {
            let (id, kind) = c.channel.as_ref().map_or(("", ""), |c| (c.id.as_str(), c.kind.as_str()));
            let mut e = base("alert.channel.put", format!("alert-channel/{id}"));
            e.detail_json = detail(serde_json::json!({ "kind": kind }));
            vec![e]
        }
        Some(M::DeleteChannel(c)) => vec![base("alert.channel.delete", format!("alert-channel/{}", c.id))],
        Some(M::Transition(t)) => {
            if matches!(&resp.result, Some(Reply::Rejected(r)) if r.code == "unchanged") {
                return Vec::new();
            }
            let op = if t.firing { "alert.fire" } else { "alert.resolve" };
            let mut e = base(op, format!("alert/{}/{}", t.rule_id, t.subject));
            e.detail_json = detail(serde_json::json!({ "value": t.value, "severity": t.severity, "node": t.node_id }));
            vec![e]
        }
        Some(M::Prune(c)) => {
            let mut e = base("alert.history.prune", "alert-history".into());
            e.detail_json = detail(serde_json::json!({ "before_ms": c.before_ms }));
            vec![e]
        }
        Some(M::Seed(c)) => {
            if matches!(&resp.result, Some(Reply::Rejected(r)) if r.code == "unchanged") {
                return Vec::new();
            }
            let mut e = base("alert.rule.seed", "alert-rules".into());
            e.detail_json = detail(serde_json::json!({ "version": c.version, "rules": c.rules.len() }));
            vec![e]
        }
        Some(M::Notifications(_)) | None => Vec::new(),
    }
}

fn ingest_events(
    cmd: &state::Command,
    b: &state::IngestBatch,
    resp: &state::CommandResponse,
) -> Vec<state::AuditEvent> {
    let results: &[state::SubmissionResult] = match &resp.result {
        Some(Reply::Ingest(r)) => &r.results,
        _ => &[],
    };
    b.submissions
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let r = results.get(i);
            let outcome = match (r, &resp.result) {
                (_, Some(Reply::Rejected(x))) => format!("rejected:{}", x.code),
                (Some(r), _) if !r.error_code.is_empty() => format!("error:{}", r.error_code),
                (Some(r), _) if r.replayed => "replayed".into(),
                _ => "ok".into(),
            };
            let (mut stored, mut duplicates, mut conflicts) = (0u64, 0u64, 0u64);
            for o in r.map_or(&[][..], |r| &r.outcomes[..]) {
                match o.as_str() {
                    "duplicate" => duplicates += 1,
                    "conflict" => conflicts += 1,
                    _ => stored += 1,
                }
            }
            let principal = if !s.principal.is_empty() {
                s.principal.clone()
            } else if !s.key_id.is_empty() {
                format!("source:{}/{}", s.source, s.key_id)
            } else {
                format!("source:{}", s.source)
            };
            state::AuditEvent {
                principal,
                source: s.source.clone(),
                organisation: s.organisation.clone(),
                client_ip: s.client_ip.clone(),
                request_id: s.request_id.clone(),
                operation: "records.ingest".into(),
                target: format!("dataset/{}", s.dataset),
                outcome,
                at_ms: if s.received_at_ms != 0 { s.received_at_ms } else { cmd.proposed_at_ms },
                node_id: s.received_on_node,
                channel: if s.channel.is_empty() { "rest".into() } else { s.channel.clone() },
                count: 1,
                bytes_in: s.request_bytes,
                records: stored + conflicts,
                new_connection: s.new_connection,
                detail_json: serde_json::to_vec(&serde_json::json!({
                    "source": s.source, "records": s.records.len(), "stored": stored,
                    "duplicates": duplicates, "conflicts": conflicts,
                    "commit_index": r.map_or(0, |r| r.commit_index),
                    "idempotency_key": s.idempotency_key,
                }))
                .unwrap_or_default(),
                ..Default::default()
            }
        })
        .collect()
}

fn load_head(txn: &Txn<'_>) -> Result<state::AuditHead, StoreError> {
    Ok(txn.get_msg::<state::AuditHead>(tables::AUDIT_HEAD)?.unwrap_or_default())
}

/// Appends the command's audit entries to the chain, updates the connection log, and closes a
/// checkpoint when one is due (or asked for). Called by `apply` after the command took effect.
pub fn record(
    txn: &mut Txn<'_>,
    log_id: &LogId,
    cmd: &state::Command,
    resp: &state::CommandResponse,
) -> Result<(), StoreError> {
    let events = derive(cmd, resp);
    let close = matches!(
        &cmd.kind,
        Some(Kind::AuditControl(state::AuditCommand { kind: Some(state::audit_command::Kind::CloseCheckpoint(_)) }))
    );
    if events.is_empty() && !close {
        return Ok(());
    }
    let mut head = load_head(txn)?;
    let mut frontier = Frontier::from_head(&head).map_err(StoreError::Invalid)?;
    let mut prev: Vec<u8> = if head.size == 0 { ZERO_HASH.to_vec() } else { head.head_hash.clone() };
    let mut days = ConnectionDays::default();
    let mut block = Block::default();
    for event in events {
        let mut event = bounded(event);
        event.log_index = log_id.index;
        days.add(txn, &event)?;
        let body = event.encode_to_vec();
        let seq = head.size + 1;
        let hash = entry_hash(seq, &prev, &body);
        if !block.fits(body.len(), event.at_ms) {
            block.store(txn);
        }
        block.push(state::AuditEntry { seq, prev_hash: prev, hash: hash.to_vec(), body }, event.at_ms);
        frontier.push(&hash);
        head.size = seq;
        prev = hash.to_vec();
    }
    block.store(txn);
    days.store(txn);
    head.head_hash = prev;
    head.frontier = frontier.roots.iter().map(|r| r.to_vec()).collect();
    let pending = head.size - head.last_checkpoint_size;
    if pending > 0 && (close || pending >= CHECKPOINT_EVERY_ENTRIES) {
        let cp = state::AuditCheckpoint {
            size: head.size,
            head_hash: head.head_hash.clone(),
            merkle_root: frontier.root().to_vec(),
            log_index: log_id.index,
            at_ms: cmd.proposed_at_ms,
            signatures: Vec::new(),
        };
        txn.put_msg(tables::audit_checkpoint(cp.size), &cp);
        head.last_checkpoint_size = head.size;
        head.last_checkpoint_at_ms = cmd.proposed_at_ms;
    }
    txn.put_msg(tables::AUDIT_HEAD.to_vec(), &head);
    Ok(())
}

/// The day (Vietnam time) of a time in milliseconds, as `yyyymmdd`.
pub fn vietnam_day(at_ms: u64) -> u32 {
    let secs = i64::try_from(at_ms / 1000).unwrap_or(i64::MAX / 2) + VIETNAM_OFFSET_S;
    let days = secs.div_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (y * 10_000 + m * 100 + d).clamp(0, i64::from(u32::MAX)) as u32
}

/// The source system an event's principal names ("source:<id>" or "source:<id>/<key>").
pub fn source_of(principal: &str) -> Option<&str> {
    let rest = principal.strip_prefix("source:")?;
    Some(rest.split('/').next().unwrap_or(rest)).filter(|s| !s.is_empty())
}

/// The entries of one command on their way into one stored block.
#[derive(Default)]
struct Block {
    entries: Vec<state::AuditEntry>,
    bytes: usize,
    earliest_ms: u64,
    latest_ms: u64,
}

impl Block {
    /// Whether an entry of `body_bytes` at `at_ms` may join this block.
    fn fits(&self, body_bytes: usize, at_ms: u64) -> bool {
        self.entries.is_empty()
            || (self.entries.len() < BLOCK_ENTRIES_MAX
                && self.bytes + body_bytes <= BLOCK_BYTES_MAX
                && self.latest_ms.max(at_ms) - self.earliest_ms.min(at_ms) <= BLOCK_SPAN_MS_MAX)
    }

    fn push(&mut self, entry: state::AuditEntry, at_ms: u64) {
        if self.entries.is_empty() {
            (self.earliest_ms, self.latest_ms) = (at_ms, at_ms);
        }
        self.earliest_ms = self.earliest_ms.min(at_ms);
        self.latest_ms = self.latest_ms.max(at_ms);
        self.bytes += entry.body.len() + 80;
        self.entries.push(entry);
    }

    /// Writes the block and its time-index key, and starts an empty one.
    fn store(&mut self, txn: &mut Txn<'_>) {
        let Some(first) = self.entries.first().map(|e| e.seq) else { return };
        txn.put(tables::audit_by_time(self.latest_ms, first), self.earliest_ms.to_be_bytes().to_vec());
        let block = state::AuditBlock { entries: std::mem::take(&mut self.entries) };
        txn.put_msg(tables::audit_block(first), &block);
        *self = Block::default();
    }
}

/// The connection log's days a command touches, updated in memory and written once.
#[derive(Default)]
struct ConnectionDays {
    days: std::collections::BTreeMap<Vec<u8>, state::ConnectionDay>,
}

impl ConnectionDays {
    fn add(&mut self, txn: &Txn<'_>, e: &state::AuditEvent) -> Result<(), StoreError> {
        let source = if e.source.is_empty() { source_of(&e.principal) } else { Some(e.source.as_str()) };
        let Some(source) = source else { return Ok(()) };
        let key = tables::connection_day(source, vietnam_day(e.at_ms));
        let day = match self.days.entry(key) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                let stored = txn.get_msg::<state::ConnectionDay>(v.key())?.unwrap_or_default();
                v.insert(stored)
            }
        };
        count_in(day, e);
        Ok(())
    }

    fn store(self, txn: &mut Txn<'_>) {
        for (k, day) in self.days {
            txn.put_msg(k, &day);
        }
    }
}

fn count_in(day: &mut state::ConnectionDay, e: &state::AuditEvent) {
    let n = e.count.max(1);
    day.requests += n;
    day.bytes_in += e.bytes_in;
    day.records += e.records;
    if e.new_connection {
        day.connections += 1;
    }
    if e.outcome == "ok" || e.outcome == "replayed" || e.outcome == "completed" || e.outcome.starts_with("status:2") {
        day.successes += n;
    } else {
        day.failures += n;
        let cause = if day.causes.len() < CONNECTION_CAUSES_MAX || day.causes.contains_key(&e.outcome) {
            e.outcome.clone()
        } else {
            "other".into()
        };
        *day.causes.entry(cause).or_insert(0) += n;
    }
}

/// Checkpoint signatures and node keys.
pub fn apply_control(
    txn: &mut Txn<'_>,
    log_id: &LogId,
    at_ms: u64,
    c: &state::AuditCommand,
) -> Result<state::CommandResponse, StoreError> {
    use state::audit_command::Kind as A;
    match &c.kind {
        Some(A::CloseCheckpoint(_)) => Ok(applied()),
        Some(A::RegisterNodeKey(r)) => {
            let Some(key) = &r.key else { return Ok(rejected("invalid_command", "node key missing")) };
            if key.public_key.len() != 32 {
                return Ok(rejected("invalid_command", "an Ed25519 public key has 32 bytes"));
            }
            let k = tables::node_key(key.node_id, &key.public_key);
            if txn.get(&k)?.is_none() {
                let stored = state::NodeKey { registered_at_ms: at_ms, log_index: log_id.index, ..key.clone() };
                txn.put_msg(k, &stored);
            }
            Ok(applied())
        }
        Some(A::SignCheckpoints(s)) => {
            if s.signed.len() > SIGNATURES_PER_COMMAND_MAX {
                return Ok(rejected("invalid_command", "too many signatures in one command"));
            }
            let mut refused = 0usize;
            for sc in &s.signed {
                let Some(sig) = &sc.signature else {
                    refused += 1;
                    continue;
                };
                let key = tables::audit_checkpoint(sc.size);
                let Some(mut cp) = txn.get_msg::<state::AuditCheckpoint>(&key)? else {
                    refused += 1;
                    continue;
                };
                let registered = txn.get(&tables::node_key(sig.node_id, &sig.public_key))?.is_some();
                if !registered || !signature_valid(&sig.public_key, &checkpoint_message(&cp), &sig.signature) {
                    refused += 1;
                    continue;
                }
                if cp.signatures.iter().any(|x| x.node_id == sig.node_id && x.public_key == sig.public_key)
                    || cp.signatures.len() >= SIGNATURES_PER_CHECKPOINT_MAX
                {
                    continue;
                }
                cp.signatures.push(sig.clone());
                txn.put_msg(key, &cp);
                let mut head = load_head(txn)?;
                if cp.size > head.signed_through {
                    head.signed_through = cp.size;
                    txn.put_msg(tables::AUDIT_HEAD.to_vec(), &head);
                }
            }
            if refused > 0 {
                return Ok(rejected(
                    "invalid_signature",
                    format!(
                        "{refused} checkpoint signature(s) refused: unknown checkpoint, unregistered key or bad signature"
                    ),
                ));
            }
            Ok(applied())
        }
        Some(A::StoreReport(r)) => {
            let Some(report) = &r.report else { return Ok(rejected("invalid_command", "report missing")) };
            if report.id.is_empty() || report.id.len() > 128 || report.id.contains('\0') {
                return Ok(rejected("invalid_command", "a report id is 1-128 characters"));
            }
            let k = tables::audit_report(&report.id);
            if txn.get(&k)?.is_none() {
                txn.put_msg(k, report);
            }
            Ok(applied())
        }
        None => Ok(rejected("unsupported_command", "audit command of an unknown kind")),
    }
}

/// Checks an `AuditEvents` command before it is applied: bounded, so one node cannot flood the chain.
pub fn check_events(c: &state::AuditEvents) -> Option<state::CommandResponse> {
    (c.events.len() > EVENTS_PER_COMMAND_MAX)
        .then(|| rejected("invalid_command", format!("at most {EVENTS_PER_COMMAND_MAX} audit events per command")))
}

// ---- Verification ----

/// The first thing found wrong with a trail.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The entry concerned (its position in the chain), or the checkpoint's size.
    pub seq: u64,
    /// "changed", "removed", "reordered", "checkpoint", "signature", "head".
    pub kind: String,
    pub message: String,
}

/// The result of a verification.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub entries: u64,
    pub checkpoints: u64,
    pub signed_checkpoints: u64,
    /// Entries after the last signed checkpoint (chained, not yet signed).
    pub unsigned_tail: u64,
    pub head_hash: String,
    pub merkle_root: String,
    pub problem: Option<Problem>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// Which keys a checkpoint signature may use.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    /// (node id, public key). Empty means: the node keys registered in the trail's own tables.
    pub keys: Vec<(u64, Vec<u8>)>,
}

impl TrustedKeys {
    fn trusts(&self, node_id: u64, pk: &[u8]) -> bool {
        self.keys.iter().any(|(n, k)| *n == node_id && k == pk)
    }
}

/// Recomputes a trail from its entries in order: the hash chain, the Merkle tree, and every
/// checkpoint (root, head hash, signatures). Feed entries with [`Verifier::entry`] and checkpoints
/// with [`Verifier::checkpoint`] when the chain reached their size; stops at the first problem.
#[derive(Clone)]
pub struct Verifier {
    keys: TrustedKeys,
    frontier: Frontier,
    prev: Hash,
    report: Report,
    last_signed: u64,
    /// The size of the last checkpoint fed (a continuing pass reads the checkpoints after it).
    checkpoint_size: u64,
    /// Checkpoints verified before they were signed: (size, the message a signature must cover).
    unsigned: std::collections::VecDeque<(u64, Vec<u8>)>,
}

impl Verifier {
    pub fn new(keys: TrustedKeys) -> Self {
        Verifier {
            keys,
            frontier: Frontier::default(),
            prev: ZERO_HASH,
            report: Report::default(),
            last_signed: 0,
            checkpoint_size: 0,
            unsigned: Default::default(),
        }
    }

    pub fn failed(&self) -> bool {
        self.report.problem.is_some()
    }

    pub fn size(&self) -> u64 {
        self.frontier.size
    }

    fn fail(&mut self, seq: u64, kind: &str, message: String) {
        if self.report.problem.is_none() {
            self.report.problem = Some(Problem { seq, kind: kind.into(), message });
        }
    }

    /// The next entry as bytes (an `AuditEntry`), with its position in the chain, or the error
    /// that kept it from being read.
    pub fn entry(&mut self, key_seq: u64, value: Result<Vec<u8>, String>) {
        if self.failed() || !self.expect(key_seq, "entry") {
            return;
        }
        let bytes = match value {
            Ok(b) => b,
            Err(e) => return self.fail(key_seq, "changed", format!("entry {key_seq} does not open: {e}")),
        };
        match state::AuditEntry::decode(bytes.as_slice()) {
            Ok(e) => self.entry_decoded(key_seq, e),
            Err(e) => self.fail(key_seq, "changed", format!("entry {key_seq} is not an audit entry: {e}")),
        }
    }

    /// Whether `first_seq` is where the chain goes on; otherwise the gap is the problem.
    fn expect(&mut self, first_seq: u64, what: &str) -> bool {
        let expected = self.frontier.size + 1;
        if first_seq == expected {
            return true;
        }
        let msg = if first_seq > expected {
            format!("entry {expected} is missing (the next stored {what} starts at {first_seq}): removed")
        } else {
            format!("entry {first_seq} appears again after entry {}", expected - 1)
        };
        self.fail(expected, "removed", msg);
        false
    }

    /// Opens a stored block (the value under `aud/<first_seq>`) and returns its entries, or records
    /// why it cannot be read and returns none.
    pub fn open_block(&mut self, first_seq: u64, value: Result<Vec<u8>, String>) -> Vec<state::AuditEntry> {
        if self.failed() || !self.expect(first_seq, "block") {
            return Vec::new();
        }
        let block = match value.map_err(|e| format!("does not open: {e}")).and_then(|b| {
            state::AuditBlock::decode(b.as_slice()).map_err(|e| format!("is not a block of audit entries: {e}"))
        }) {
            Ok(b) if !b.entries.is_empty() => b,
            Ok(_) => {
                self.fail(first_seq, "changed", format!("the stored block of entry {first_seq} is empty"));
                return Vec::new();
            }
            Err(e) => {
                self.fail(first_seq, "changed", format!("entry {first_seq} (and the entries stored with it) {e}"));
                return Vec::new();
            }
        };
        block.entries
    }

    /// The entry at `key_seq` of the chain, decoded (from a block or from `entry`).
    pub fn entry_decoded(&mut self, key_seq: u64, entry: state::AuditEntry) {
        if self.failed() || !self.expect(key_seq, "entry") {
            return;
        }
        if entry.seq != key_seq {
            return self.fail(
                key_seq,
                "reordered",
                format!("position {key_seq} holds entry {} (entries were reordered)", entry.seq),
            );
        }
        if entry.prev_hash != self.prev {
            return self.fail(
                key_seq,
                "reordered",
                format!("entry {key_seq} does not follow entry {} (its previous hash differs)", key_seq - 1),
            );
        }
        let hash = entry_hash(entry.seq, &entry.prev_hash, &entry.body);
        if entry.hash != hash {
            return self.fail(
                key_seq,
                "changed",
                format!("entry {key_seq} was changed (its hash does not match its content)"),
            );
        }
        if let Err(e) = state::AuditEvent::decode(entry.body.as_slice()) {
            return self.fail(key_seq, "changed", format!("entry {key_seq} holds no audit event: {e}"));
        }
        self.frontier.push(&hash);
        self.prev = hash;
        self.report.entries += 1;
    }

    /// A checkpoint, once every entry up to its size was fed. `registered` are the node keys the
    /// trail's tables list (used when no keys were pinned).
    pub fn checkpoint(&mut self, cp: &state::AuditCheckpoint, registered: &[(u64, Vec<u8>)]) {
        if self.failed() {
            return;
        }
        self.checkpoint_size = cp.size;
        if cp.size != self.frontier.size {
            return self.fail(
                cp.size,
                "checkpoint",
                format!("checkpoint {} checked when the chain had {} entries", cp.size, self.frontier.size),
            );
        }
        if cp.head_hash != self.prev || cp.merkle_root != self.frontier.root() {
            return self.fail(
                cp.size,
                "checkpoint",
                format!(
                    "checkpoint {} does not match the entries before it (an entry up to {} was changed)",
                    cp.size, cp.size
                ),
            );
        }
        self.report.checkpoints += 1;
        let msg = checkpoint_message(cp);
        if cp.signatures.is_empty() {
            // Signed a moment later by the leader: a continuing pass looks at it again.
            if self.unsigned.len() >= UNSIGNED_KEPT_MAX {
                self.unsigned.pop_front();
            }
            self.unsigned.push_back((cp.size, msg));
            return;
        }
        self.signatures(cp, &msg, registered);
    }

    /// Checks a checkpoint's signatures against `msg` (what they must cover) and counts it signed.
    fn signatures(&mut self, cp: &state::AuditCheckpoint, msg: &[u8], registered: &[(u64, Vec<u8>)]) {
        for s in &cp.signatures {
            let trusted = if self.keys.keys.is_empty() {
                registered.iter().any(|(n, k)| *n == s.node_id && *k == s.public_key)
            } else {
                self.keys.trusts(s.node_id, &s.public_key)
            };
            if !trusted {
                return self.fail(
                    cp.size,
                    "signature",
                    format!("checkpoint {} is signed by a key that is not a cluster key (node {})", cp.size, s.node_id),
                );
            }
            if !signature_valid(&s.public_key, msg, &s.signature) {
                return self.fail(
                    cp.size,
                    "signature",
                    format!("checkpoint {}: node {}'s signature does not verify", cp.size, s.node_id),
                );
            }
        }
        self.report.signed_checkpoints += 1;
        self.last_signed = self.last_signed.max(cp.size);
    }

    /// Looks again at the checkpoints that were unsigned when verified (a continuing pass): one
    /// signed since is checked against what was verified then; one whose content changed fails.
    fn recheck_unsigned(&mut self, reader: &StateReader, registered: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
        let pending = std::mem::take(&mut self.unsigned);
        for (size, msg) in pending {
            if self.failed() {
                break;
            }
            let Some(cp) = reader.get_msg::<state::AuditCheckpoint>(&tables::audit_checkpoint(size))? else {
                self.fail(size, "checkpoint", format!("checkpoint {size} was removed after it was verified"));
                break;
            };
            if checkpoint_message(&cp) != msg {
                self.fail(size, "checkpoint", format!("checkpoint {size} was changed after it was verified"));
            } else if cp.signatures.is_empty() {
                self.unsigned.push_back((size, msg));
            } else {
                self.signatures(&cp, &msg, registered);
            }
        }
        Ok(())
    }

    /// The report, checking the stored head (when given) against the recomputed chain.
    pub fn finish(mut self, head: Option<&state::AuditHead>) -> Report {
        if let Some(h) = head
            && !self.failed()
        {
            if h.size != self.frontier.size {
                let n = self.frontier.size;
                self.fail(
                    n + 1,
                    "removed",
                    format!("the head says {} entries, {n} are stored: the last ones were removed", h.size),
                );
            } else if h.size > 0 && h.head_hash != self.prev {
                self.fail(h.size, "changed", format!("the head hash differs from entry {}'s", h.size));
            }
        }
        self.report.unsigned_tail = self.frontier.size - self.last_signed;
        self.report.head_hash = hex::encode(self.prev);
        self.report.merkle_root = hex::encode(self.frontier.root());
        self.report
    }
}

/// The sequence number of the first entry of the block stored under an `aud/` key.
pub fn seq_of_key(key: &[u8]) -> Option<u64> {
    let tail = key.strip_prefix(tables::AUDIT_ENTRY)?;
    Some(u64::from_be_bytes(tail.try_into().ok()?))
}

/// The block holding entry `seq`: its first entry's seq and its value.
fn block_of(reader: &StateReader, seq: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
    Ok(reader
        .last_at_or_before(tables::AUDIT_ENTRY, &tables::audit_block(seq))?
        .and_then(|(k, v)| seq_of_key(&k).map(|first| (first, v))))
}

/// The first entry of the block that holds entry `seq`.
pub fn block_first(reader: &StateReader, seq: u64) -> Result<Option<u64>, StoreError> {
    Ok(block_of(reader, seq)?.map(|(first, _)| first))
}

/// Entry `seq` of the chain, if stored.
pub fn entry_at(reader: &StateReader, seq: u64) -> Result<Option<state::AuditEntry>, StoreError> {
    let Some((first, value)) = block_of(reader, seq)? else { return Ok(None) };
    let block = state::AuditBlock::decode(value.as_slice())?;
    Ok(seq.checked_sub(first).and_then(|i| block.entries.into_iter().nth(i as usize)).filter(|e| e.seq == seq))
}

/// Visits the stored entries from `from_seq` on, in chain order, block by block: `visit` gets each
/// entry's position and the entry, or (for a block that does not open) the position of the block's
/// first entry and the error; it returns false to stop.
pub fn for_each_entry_from(
    reader: &StateReader,
    from_seq: u64,
    mut visit: impl FnMut(u64, Result<state::AuditEntry, String>) -> bool,
) -> Result<(), StoreError> {
    let start = match reader.last_at_or_before(tables::AUDIT_ENTRY, &tables::audit_block(from_seq.max(1)))? {
        Some((k, _)) => k,
        None => tables::AUDIT_ENTRY.to_vec(),
    };
    reader.for_each_checked_from(tables::AUDIT_ENTRY, &start, |k, value| {
        let Some(first) = seq_of_key(k) else { return Ok(true) };
        let block = value.map_err(|e| e.to_string()).and_then(|v| {
            state::AuditBlock::decode(v.as_slice()).map_err(|e| format!("not a block of audit entries: {e}"))
        });
        match block {
            Ok(block) => {
                for (i, e) in block.entries.into_iter().enumerate() {
                    let seq = first + i as u64;
                    if seq >= from_seq && !visit(seq, Ok(e)) {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Err(e) => Ok(visit(first, Err(e))),
        }
    })
}

/// The node keys registered in the tables.
pub fn registered_keys(reader: &StateReader) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let mut keys = Vec::new();
    reader.for_each_prefixed(tables::NODE_KEY, |_, v| {
        let k = state::NodeKey::decode(v)?;
        keys.push((k.node_id, k.public_key));
        Ok(())
    })?;
    Ok(keys)
}

/// Unsigned checkpoints a verifier remembers to look at again (older ones are only counted as
/// unsigned).
const UNSIGNED_KEPT_MAX: usize = 4096;

/// Checkpoints read from the tables at a time while verifying (they are streamed, not loaded whole:
/// a checkpoint every ten seconds is three million a year).
const CHECKPOINT_PAGE: usize = 1024;

/// The stored checkpoints in size order, read a page at a time.
struct StoredCheckpoints<'r> {
    reader: &'r StateReader,
    page: std::collections::VecDeque<state::AuditCheckpoint>,
    after: Option<Vec<u8>>,
    done: bool,
}

impl<'r> StoredCheckpoints<'r> {
    /// The checkpoints with a size above `after_size`.
    fn new(reader: &'r StateReader, after_size: u64) -> Self {
        let after = (after_size > 0).then(|| tables::audit_checkpoint(after_size));
        StoredCheckpoints { reader, page: Default::default(), after, done: false }
    }

    /// The next checkpoint if its size is at most `size`.
    fn next_upto(&mut self, size: u64) -> Result<Option<state::AuditCheckpoint>, StoreError> {
        if self.page.is_empty() && !self.done {
            let rows = self.reader.scan(tables::AUDIT_CHECKPOINT, self.after.as_deref(), CHECKPOINT_PAGE)?;
            self.done = rows.len() < CHECKPOINT_PAGE;
            self.after = rows.last().map(|(k, _)| k.clone()).or(self.after.take());
            for (_, v) in rows {
                self.page.push_back(state::AuditCheckpoint::decode(v.as_slice())?);
            }
        }
        Ok(self.page.front().is_some_and(|c| c.size <= size).then(|| self.page.pop_front()).flatten())
    }
}

/// Feeds `v` the stored entries after `v.size()` (up to `through`, when given) with the
/// checkpoints they reach, from the first entry when `v` is new. Entries are opened one by one, so
/// a value that does not open is named instead of ending the pass.
fn feed(
    reader: &StateReader,
    v: &mut Verifier,
    registered: &[(u64, Vec<u8>)],
    through: Option<u64>,
    progress: &mut impl FnMut(u64),
) -> Result<(), StoreError> {
    if v.size() > 0 {
        v.recheck_unsigned(reader, registered)?;
    }
    let start = v.size();
    let mut checkpoints = StoredCheckpoints::new(reader, v.checkpoint_size);
    let mut cp_error = None;
    {
        let mut visit = |k: &[u8], value: Result<Vec<u8>, StoreError>| {
            let Some(first) = seq_of_key(k) else { return Ok(true) };
            if through.is_some_and(|t| first > t) {
                return Ok(false);
            }
            let before = v.size();
            for (i, entry) in v.open_block(first, value.map_err(|e| e.to_string())).into_iter().enumerate() {
                v.entry_decoded(first + i as u64, entry);
                loop {
                    match checkpoints.next_upto(v.size()) {
                        Ok(Some(cp)) => v.checkpoint(&cp, registered),
                        Ok(None) => break,
                        Err(e) => {
                            cp_error = Some(e);
                            return Ok(false);
                        }
                    }
                }
            }
            if v.size() / 65_536 != before / 65_536 {
                progress(v.size());
            }
            Ok(!v.failed())
        };
        if start == 0 {
            reader.for_each_checked(tables::AUDIT_ENTRY, &mut visit)?;
        } else {
            // Continuing: entries after the last one checked, a page at a time. A page whose values
            // do not all open is an error for the caller, who then verifies from the start (that pass
            // opens entries one by one and names the bad one).
            let mut after = tables::audit_block(start);
            // `start` ends a block; the next block's key is the first one after the block holding
            // `start`.
            if let Some((k, _)) = reader.last_at_or_before(tables::AUDIT_ENTRY, &tables::audit_block(start))? {
                after = k;
            }
            loop {
                let rows = reader.scan(tables::AUDIT_ENTRY, Some(&after), CHECKPOINT_PAGE)?;
                let full = rows.len() == CHECKPOINT_PAGE;
                let mut go_on = true;
                for (k, value) in rows {
                    go_on = visit(&k, Ok(value))?;
                    after = k;
                    if !go_on {
                        break;
                    }
                }
                if !go_on || !full {
                    break;
                }
            }
        }
    }
    if let Some(e) = cp_error {
        return Err(e);
    }
    if !v.failed()
        && let Some(cp) = checkpoints.next_upto(through.unwrap_or(u64::MAX))?
    {
        v.fail(
            v.size() + 1,
            "removed",
            format!("checkpoint {} covers entries that are not stored (the chain ends at {})", cp.size, v.size()),
        );
    }
    Ok(())
}

/// Verifies the whole trail in a node's tables, calling `progress` every so often with the entries
/// checked.
pub fn verify_reader(
    reader: &StateReader,
    keys: TrustedKeys,
    mut progress: impl FnMut(u64),
) -> Result<Report, StoreError> {
    let registered = registered_keys(reader)?;
    let mut v = Verifier::new(keys);
    feed(reader, &mut v, &registered, None, &mut progress)?;
    let head = reader.get_msg::<state::AuditHead>(tables::AUDIT_HEAD)?;
    Ok(v.finish(head.as_ref()))
}

/// Verifies the trail of a store that is being written (a node checking its own tables): only
/// the entries under the head read first count, so entries appended during the pass wait for the
/// next one. With a `v` that verified an earlier pass, continues after its last entry (the
/// caller verifies from a fresh `Verifier` when this fails, to name the entry). Returns the report
/// so far; `v` keeps its state for the next call.
pub fn verify_reader_live(
    reader: &StateReader,
    v: &mut Verifier,
    mut progress: impl FnMut(u64),
) -> Result<Report, StoreError> {
    let head = reader.get_msg::<state::AuditHead>(tables::AUDIT_HEAD)?.unwrap_or_default();
    let registered = registered_keys(reader)?;
    feed(reader, v, &registered, Some(head.size), &mut progress)?;
    Ok(v.clone().finish(Some(&head)))
}

/// `verify_reader_live`, as a verdict only on one state of the tables: `None` when a snapshot
/// replaced them during the pass (a node catching up), which then read the head of one state and
/// the entries of another (`StateReader::install_epoch`).
pub fn verify_reader_unreplaced(reader: &StateReader, v: &mut Verifier) -> Option<Result<Report, StoreError>> {
    let epoch = reader.install_epoch();
    if !reader.unchanged_since(epoch) {
        return None;
    }
    let report = verify_reader_live(reader, v, |_| {});
    reader.unchanged_since(epoch).then_some(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => Sha256::digest(b"").into(),
            1 => leaf_hash(&leaves[0]),
            n => {
                let k = n.next_power_of_two() / 2;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn frontier_root_is_the_rfc6962_tree_hash_at_every_size() {
        let leaves: Vec<Hash> = (0u8..40).map(|i| Sha256::digest([i]).into()).collect();
        let mut f = Frontier::default();
        assert_eq!(f.root(), mth(&[]));
        for n in 1..=leaves.len() {
            f.push(&leaves[n - 1]);
            assert_eq!(f.root(), mth(&leaves[..n]), "size {n}");
            assert_eq!(f.roots.len(), n.count_ones() as usize);
        }
    }

    #[test]
    fn vietnam_days() {
        // 2026-11-27T17:00:00Z is 2026-11-28 00:00 in Vietnam.
        assert_eq!(vietnam_day(1_795_798_800_000), 20261128);
        assert_eq!(vietnam_day(1_795_798_799_999), 20261127);
        assert_eq!(vietnam_day(0), 19700101);
    }

    fn chain(n: u64) -> Vec<state::AuditEntry> {
        let mut prev = ZERO_HASH.to_vec();
        (1..=n)
            .map(|seq| {
                let body = state::AuditEvent { operation: format!("op{seq}"), ..Default::default() }.encode_to_vec();
                let hash = entry_hash(seq, &prev, &body);
                let e = state::AuditEntry { seq, prev_hash: prev.clone(), hash: hash.to_vec(), body };
                prev = hash.to_vec();
                e
            })
            .collect()
    }

    fn run(entries: &[(u64, state::AuditEntry)]) -> Report {
        let mut v = Verifier::new(TrustedKeys::default());
        for (k, e) in entries {
            v.entry(*k, Ok(e.encode_to_vec()));
        }
        v.finish(None)
    }

    #[test]
    fn verifier_names_changed_removed_and_reordered_entries() {
        let c: Vec<(u64, state::AuditEntry)> = chain(10).into_iter().map(|e| (e.seq, e)).collect();
        assert!(run(&c).ok());

        let mut changed = c.clone();
        changed[4].1.body = state::AuditEvent { operation: "forged".into(), ..Default::default() }.encode_to_vec();
        let p = run(&changed).problem.expect("changed entry found");
        assert_eq!((p.seq, p.kind.as_str()), (5, "changed"));

        let mut removed = c.clone();
        removed.remove(6);
        let p = run(&removed).problem.expect("removed entry found");
        assert_eq!((p.seq, p.kind.as_str()), (7, "removed"));

        let mut swapped = c.clone();
        let (a, b) = (swapped[2].1.clone(), swapped[3].1.clone());
        swapped[2].1 = b;
        swapped[3].1 = a;
        let p = run(&swapped).problem.expect("swapped entries found");
        assert_eq!((p.seq, p.kind.as_str()), (3, "reordered"));
    }

    #[test]
    fn checkpoint_signed_by_a_foreign_key_is_refused() {
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        let make = |rng: &ring::rand::SystemRandom| {
            let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(rng).expect("key");
            ring::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("key")
        };
        let (cluster, foreign) = (make(&rng), make(&rng));
        let entries = chain(5);
        let mut f = Frontier::default();
        for e in &entries {
            f.push(&e.hash);
        }
        let mut cp = state::AuditCheckpoint {
            size: 5,
            head_hash: entries[4].hash.clone(),
            merkle_root: f.root().to_vec(),
            log_index: 9,
            at_ms: 1,
            signatures: vec![],
        };
        let sign = |k: &ring::signature::Ed25519KeyPair, cp: &state::AuditCheckpoint| state::CheckpointSignature {
            node_id: 1,
            public_key: k.public_key().as_ref().to_vec(),
            signature: k.sign(&checkpoint_message(cp)).as_ref().to_vec(),
            signed_at_ms: 2,
        };
        let registered = vec![(1u64, cluster.public_key().as_ref().to_vec())];
        let check = |cp: &state::AuditCheckpoint| {
            let mut v = Verifier::new(TrustedKeys::default());
            for e in &entries {
                v.entry(e.seq, Ok(e.encode_to_vec()));
            }
            v.checkpoint(cp, &registered);
            v.finish(None)
        };
        cp.signatures = vec![sign(&cluster, &cp)];
        let r = check(&cp);
        assert!(r.ok(), "{:?}", r.problem);
        assert_eq!((r.signed_checkpoints, r.unsigned_tail), (1, 0));
        cp.signatures = vec![sign(&foreign, &cp)];
        let p = check(&cp).problem.expect("foreign key refused");
        assert_eq!(p.kind, "signature");
    }
}
