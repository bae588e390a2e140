//! The evaluator: every `EVAL_INTERVAL`, each node evaluates the enabled rules over its local
//! metrics, and the leader also those over cluster metrics (`rules.rs`). A condition that holds for
//! the rule's `for_ms` becomes a proposed `AlertTransition` (firing); one that stops holding while the
//! alert fires becomes a resolution. `apply` records a transition only if it changes the alert's
//! replicated state, and only the node whose transition was recorded notifies (`notify.rs`).
//!
//! The leader also seeds the built-in rules once, prunes history older than the retention, and
//! takes over notifications of transitions whose recorder died before reporting any delivery.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::HashSet;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dtm_cluster::ClusterNode;
use dtm_cluster::monitoring;
use dtm_cluster::tables;
use dtm_model::state;
use dtm_model::state::monitoring_command::Kind as M;
use tokio::sync::watch;

use super::limits::*;
use super::notify::Job;
use super::notify::Notifier;
use super::rules;
use super::window::REQUESTS;

/// One observed value of a rule's metric for one subject.
struct Observation {
    subject: String,
    value: f64,
    /// Whether the rule's condition holds (None: no data, which counts as not holding).
    holds: bool,
    /// Threshold used, when it differs per subject (silent sources).
    note: String,
}

#[derive(Default)]
struct SourceSeen {
    day: u32,
    requests_today: u64,
    last_seen_ms: u64,
}

pub struct Evaluator {
    node: Arc<ClusterNode>,
    data_dir: PathBuf,
    cert: Option<Arc<crate::tls::ReloadingCert>>,
    notifier: Arc<Notifier>,
    /// (rule, subject) → when its condition started to hold (this evaluator's clock).
    pending: HashMap<(String, String), u64>,
    was_leader: bool,
    sources: HashMap<String, SourceSeen>,
    /// The last security event key read (leader only) and counts per read: (time, events).
    security_cursor: Option<Vec<u8>>,
    security_counts: VecDeque<(u64, u64)>,
    last_prune_ms: u64,
    last_takeover_ms: u64,
    taken_over: HashSet<String>,
}

fn now_ms() -> u64 {
    crate::api::now_ms()
}

fn command(node: &ClusterNode, kind: M) -> state::Command {
    state::Command {
        actor: None,
        version: dtm_model::COMMAND_SET_VERSION,
        proposed_at_ms: now_ms(),
        origin_node: node.id,
        kind: Some(state::command::Kind::Monitoring(state::MonitoringCommand { kind: Some(kind) })),
    }
}

fn decode_all<T: prost::Message + Default>(node: &ClusterNode, prefix: &[u8], max: usize) -> Vec<T> {
    match node.reader.scan(prefix, None, max) {
        Ok(pairs) => pairs.iter().filter_map(|(_, v)| T::decode(v.as_slice()).ok()).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "could not read the alert tables");
            Vec::new()
        }
    }
}

pub fn read_rules(node: &ClusterNode) -> Vec<state::AlertRule> {
    decode_all(node, monitoring::RULE, monitoring::RULES_MAX)
}

pub fn read_states(node: &ClusterNode) -> Vec<state::AlertState> {
    decode_all(node, monitoring::STATE, monitoring::STATES_MAX)
}

impl Evaluator {
    pub fn new(
        node: Arc<ClusterNode>,
        data_dir: PathBuf,
        cert: Option<Arc<crate::tls::ReloadingCert>>,
        notifier: Arc<Notifier>,
    ) -> Self {
        Evaluator {
            node,
            data_dir,
            cert,
            notifier,
            pending: HashMap::new(),
            was_leader: false,
            sources: HashMap::new(),
            security_cursor: None,
            security_counts: VecDeque::new(),
            last_prune_ms: 0,
            last_takeover_ms: 0,
            taken_over: HashSet::new(),
        }
    }

    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(EVAL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            self.tick().await;
        }
    }

    fn is_leader(&self) -> bool {
        self.node.raft.metrics().borrow().current_leader == Some(self.node.id)
    }

    fn own_subject(&self) -> String {
        format!("node/{}", self.node.id)
    }

    pub async fn tick(&mut self) {
        let leader = self.is_leader();
        if leader != self.was_leader {
            // A new leader starts its cluster-wide bookkeeping afresh; alerts already firing stay
            // firing in the replicated state, so nothing is notified twice.
            self.sources.clear();
            self.security_cursor = None;
            self.security_counts.clear();
            let cluster_rules: HashSet<String> = read_rules(&self.node)
                .into_iter()
                .filter(|r| rules::metric(&r.metric).is_some_and(|m| m.cluster))
                .map(|r| r.id)
                .collect();
            self.pending.retain(|(rule, _), _| !cluster_rules.contains(rule));
            self.was_leader = leader;
        }
        if leader {
            self.leader_chores().await;
        }
        let rules = read_rules(&self.node);
        let states: BTreeMap<(String, String), state::AlertState> =
            read_states(&self.node).into_iter().map(|s| ((s.rule_id.clone(), s.subject.clone()), s)).collect();
        let status = if leader
            && rules.iter().any(|r| r.enabled && matches!(r.metric.as_str(), "node_down" | "replication_lag_entries"))
        {
            Some(self.node.status().await)
        } else {
            None
        };
        if leader {
            self.read_security_events();
        }
        let now = now_ms();
        let members: HashSet<String> = self
            .node
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| format!("node/{id}"))
            .collect();
        // The (rule, subject) pairs observed this round: a pending condition of a rule deleted or
        // disabled, or of a subject no longer observed, is forgotten (else `pending` only grows).
        let mut observed: HashSet<(String, String)> = HashSet::new();
        for rule in rules.iter().filter(|r| r.enabled) {
            let Some(m) = rules::metric(&rule.metric) else { continue };
            if m.cluster && !leader {
                continue;
            }
            let observations = self.observe(rule, status.as_ref(), now);
            let seen: HashSet<&str> = observations.iter().map(|o| o.subject.as_str()).collect();
            observed.extend(observations.iter().map(|o| (rule.id.clone(), o.subject.clone())));
            for o in &observations {
                let key = (rule.id.clone(), o.subject.clone());
                let firing = states.get(&key).is_some_and(|s| s.firing);
                if o.holds {
                    let since = *self.pending.entry(key.clone()).or_insert(now);
                    if !firing && now.saturating_sub(since) >= rule.for_ms {
                        let condition = if rule.kind == "anomaly" {
                            format!("more than {} σ from its trailing mean", rule.k_sigma)
                        } else {
                            format!("{} {}", rule.op, rule.threshold)
                        };
                        let held_s = now.saturating_sub(since) as f64 / 1000.0;
                        let message =
                            format!("{} = {} ({condition}{}), held {held_s} s", rule.metric, round(o.value), o.note);
                        self.propose(rule, &o.subject, true, o.value, message).await;
                    }
                } else {
                    self.pending.remove(&key);
                    if firing {
                        let message = format!("{} = {} (back within the rule)", rule.metric, round(o.value));
                        self.propose(rule, &o.subject, false, o.value, message).await;
                    }
                }
            }
            // A firing alert this evaluator is responsible for whose subject is gone (a member
            // removed, a source deleted) resolves; the leader also resolves the local alerts of
            // nodes that are no longer members (nobody else would).
            let mine =
                |subject: &str| m.cluster || subject == self.own_subject() || (leader && !members.contains(subject));
            let gone: Vec<(String, f64)> = states
                .values()
                .filter(|s| s.rule_id == rule.id && s.firing && mine(&s.subject) && !seen.contains(s.subject.as_str()))
                .map(|s| (s.subject.clone(), s.value))
                .collect();
            for (subject, value) in gone {
                self.pending.remove(&(rule.id.clone(), subject.clone()));
                self.propose(rule, &subject, false, value, "no longer observed".into()).await;
            }
        }
        self.pending.retain(|key, _| observed.contains(key));
    }

    /// Proposes a transition; notifies when this node's transition is the one recorded.
    async fn propose(&self, rule: &state::AlertRule, subject: &str, firing: bool, value: f64, message: String) {
        let at_ms = now_ms();
        let t = state::AlertTransition {
            rule_id: rule.id.clone(),
            subject: subject.into(),
            firing,
            at_ms,
            value: if value.is_finite() { value } else { 0.0 },
            severity: rule.severity.clone(),
            message: message.chars().take(monitoring::TEXT_BYTES_MAX / 4).collect(),
            node_id: self.node.id,
        };
        let write = self.node.write(command(&self.node, M::Transition(t.clone())));
        let index = match tokio::time::timeout(Duration::from_secs(10), write).await {
            Ok(Ok((_, index))) => index,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, rule = %rule.id, subject, "could not record an alert transition; retried next round");
                return;
            }
            Err(_) => {
                tracing::warn!(rule = %rule.id, subject, "recording an alert transition timed out; retried next round");
                return;
            }
        };
        self.node.writer.wait_applied(index, Duration::from_secs(2)).await;
        // Whether the recorded state began with this very transition (a retried write whose first
        // attempt was recorded answers `unchanged`, yet is ours to notify).
        let key = monitoring::alert_state(&rule.id, subject);
        let Ok(Some(s)) = self.node.reader.get_msg::<state::AlertState>(&key) else { return };
        if s.node_id == self.node.id && s.since_ms == at_ms && s.firing == firing {
            tracing::info!(rule = %rule.id, subject, firing, event = %s.event_id, "alert transition recorded");
            self.notifier.enqueue(Job { event_id: s.event_id, transition: t, rule: rule.clone() });
        }
    }

    fn observe(
        &mut self,
        rule: &state::AlertRule,
        status: Option<&dtm_cluster::ClusterStatus>,
        now: u64,
    ) -> Vec<Observation> {
        let window = Duration::from_millis(rule.window_ms.max(1_000));
        let labelled_node = rule.labels.get("node");
        let threshold_rule = |subject: String, value: Option<f64>| {
            let holds = value.is_some_and(|v| rules::compare(&rule.op, v, rule.threshold));
            Observation { subject, value: value.unwrap_or(f64::NAN), holds, note: String::new() }
        };
        let local = |value: Option<f64>| -> Vec<Observation> {
            if labelled_node.is_some_and(|n| *n != self.node.id.to_string()) {
                return Vec::new();
            }
            vec![threshold_rule(format!("node/{}", self.node.id), value)]
        };
        if rule.kind == "anomaly" {
            if labelled_node.is_some_and(|n| *n != self.node.id.to_string()) {
                return Vec::new();
            }
            return vec![self.anomaly(rule)];
        }
        match rule.metric.as_str() {
            "http_request_p95_seconds" => local(REQUESTS.summary(window).p95_s),
            "http_heavy_request_p95_seconds" => local(REQUESTS.summary(window).heavy_p95_s),
            "http_error_ratio" => {
                let s = REQUESTS.summary(window);
                local((s.requests >= 10).then(|| s.errors as f64 / s.requests as f64))
            }
            "http_requests_per_second" => local(Some(REQUESTS.summary(window).requests as f64 / window.as_secs_f64())),
            "disk_free_ratio" => local(disk_free_ratio(&self.data_dir)),
            "tls_certificate_expiry_days" => local(self.cert.as_ref().map(|c| c.expires_in_s() as f64 / 86_400.0)),
            "audit_verify_failed" => {
                local(crate::audit_watch::last().map(|s| if s.report.problem.is_some() { 1.0 } else { 0.0 }))
            }
            "node_down" | "replication_lag_entries" => {
                let Some(status) = status else { return Vec::new() };
                let leader_applied = status.applied_index.unwrap_or(0);
                status
                    .members
                    .iter()
                    .filter(|m| m.id != self.node.id)
                    .filter(|m| labelled_node.is_none_or(|n| *n == m.id.to_string()))
                    .filter_map(|m| {
                        let value = if rule.metric == "node_down" {
                            Some(if m.applied_index.is_none() { 1.0 } else { 0.0 })
                        } else {
                            // An unreachable member's lag is unknown; node_down covers it.
                            m.applied_index.map(|a| leader_applied.saturating_sub(a) as f64)
                        };
                        value.map(|v| threshold_rule(format!("node/{}", m.id), Some(v)))
                    })
                    .collect()
            }
            "source_silent_seconds" => self.silent_sources(rule, now),
            "security_events" => {
                let from = now.saturating_sub(window.as_millis() as u64);
                let events: u64 = self.security_counts.iter().filter(|(at, _)| *at >= from).map(|(_, n)| n).sum();
                // Addresses the gateways blocked (intrusion detection) in the window: replicated
                // blocks, bounded by their expiry.
                let blocks = self
                    .node
                    .reader
                    .scan(tables::GATEWAY_BLOCK, None, SECURITY_EVENTS_PER_TICK_MAX)
                    .map(|pairs| {
                        pairs
                            .iter()
                            .filter_map(|(_, v)| <state::AddressBlock as prost::Message>::decode(v.as_slice()).ok())
                            .filter(|b| b.blocked_at_ms >= from)
                            .count() as u64
                    })
                    .unwrap_or(0);
                let n = events + blocks;
                vec![threshold_rule("cluster".into(), Some(n as f64))]
            }
            _ => Vec::new(),
        }
    }

    fn anomaly(&self, rule: &state::AlertRule) -> Observation {
        let step = Duration::from_millis(rule.window_ms.max(1_000));
        let steps = (rule.baseline_ms / step.as_millis().max(1) as u64).max(1) + 1;
        let series = REQUESTS.series(step, steps);
        let values: Vec<f64> = series
            .iter()
            .map(|s| match rule.metric.as_str() {
                "http_error_ratio" => {
                    if s.requests == 0 {
                        0.0
                    } else {
                        s.errors as f64 / s.requests as f64
                    }
                }
                _ => s.requests as f64 / step.as_secs_f64(),
            })
            .collect();
        let subject = format!("node/{}", self.node.id);
        let Some((last, baseline)) = values.split_last() else {
            return Observation { subject, value: f64::NAN, holds: false, note: String::new() };
        };
        let holds = rules::anomalous(baseline, *last, rule.k_sigma, rule.threshold).unwrap_or(false);
        let mean = if baseline.is_empty() { 0.0 } else { baseline.iter().sum::<f64>() / baseline.len() as f64 };
        Observation { subject, value: *last, holds, note: format!(", trailing mean {}", round(mean)) }
    }

    /// Seconds each active source has been silent, from this leader's view of the connection log:
    /// the day's request count growing means the source is alive. A new leader starts from the
    /// connection log's days (today: just seen; yesterday: since midnight; else since the later of
    /// its registration and yesterday's start), so after a leader change the value is a lower bound.
    fn silent_sources(&mut self, rule: &state::AlertRule, now: u64) -> Vec<Observation> {
        let ids = match crate::api::active_source_ids(&self.node.reader) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the sources");
                return Vec::new();
            }
        };
        let today = dtm_cluster::audit::vietnam_day(now);
        let yesterday = dtm_cluster::audit::vietnam_day(now.saturating_sub(86_400_000));
        let vietnam_midnight = now - (now + 7 * 3_600_000) % 86_400_000;
        let requests_on = |id: &str, day: u32| {
            self.node
                .reader
                .get_msg::<state::ConnectionDay>(&tables::connection_day(id, day))
                .ok()
                .flatten()
                .map_or(0, |d| d.requests)
        };
        let mut out = Vec::new();
        for id in ids {
            if rule.labels.get("source").is_some_and(|s| *s != id) {
                continue;
            }
            let source = self.node.reader.get_msg::<state::Source>(&tables::source(&id)).ok().flatten();
            let registered_at = source.as_ref().map_or(now, |s| s.registered_at_ms);
            let expected_s = source
                .as_ref()
                .and_then(|s| serde_json::from_slice::<serde_json::Value>(&s.extra_json).ok())
                .and_then(|v| v.get("expected_interval_s").and_then(serde_json::Value::as_f64))
                .filter(|v| *v > 0.0);
            let req_today = requests_on(&id, today);
            let seen = match self.sources.get_mut(&id) {
                Some(seen) => {
                    if seen.day != today {
                        seen.day = today;
                        seen.requests_today = 0;
                    }
                    if req_today > seen.requests_today {
                        seen.requests_today = req_today;
                        seen.last_seen_ms = now;
                    }
                    seen.last_seen_ms
                }
                None => {
                    let last_seen = if req_today > 0 {
                        now
                    } else if requests_on(&id, yesterday) > 0 {
                        vietnam_midnight
                    } else {
                        registered_at.max(vietnam_midnight.saturating_sub(86_400_000))
                    };
                    self.sources.insert(
                        id.clone(),
                        SourceSeen { day: today, requests_today: req_today, last_seen_ms: last_seen },
                    );
                    last_seen
                }
            };
            let silent_s = now.saturating_sub(seen) as f64 / 1000.0;
            let threshold = expected_s.unwrap_or(rule.threshold);
            out.push(Observation {
                subject: format!("source/{id}"),
                value: silent_s,
                holds: rules::compare(if rule.op.is_empty() { ">" } else { &rule.op }, silent_s, threshold),
                note: if expected_s.is_some() {
                    format!(", source expects every {threshold} s")
                } else {
                    String::new()
                },
            });
        }
        self.sources.retain(|id, _| {
            out.iter().any(|o| o.subject == format!("source/{id}")) || rule.labels.contains_key("source")
        });
        out
    }

    /// Reads security events recorded since the last round (bounded per round) and counts them by
    /// time, audit verification failures excluded (they have a rule of their own).
    fn read_security_events(&mut self) {
        let after = self.security_cursor.clone();
        let pairs = match self.node.reader.scan(tables::SECURITY_EVENT, after.as_deref(), SECURITY_EVENTS_PER_TICK_MAX)
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "could not read security events");
                return;
            }
        };
        let horizon = now_ms().saturating_sub(window_max_ms());
        let mut counted = 0u64;
        for (k, v) in &pairs {
            if let Ok(ev) = <state::SecurityEvent as prost::Message>::decode(v.as_slice())
                && ev.kind != "audit_verification_failed"
                && ev.at_ms >= horizon
            {
                counted += 1;
            }
            self.security_cursor = Some(k.clone());
        }
        let now = now_ms();
        if counted > 0 {
            self.security_counts.push_back((now, counted));
        }
        while self.security_counts.front().is_some_and(|(at, _)| *at < horizon) {
            self.security_counts.pop_front();
        }
    }

    async fn leader_chores(&mut self) {
        let now = now_ms();
        // Built-in rules, once per defaults version.
        let meta = self.node.reader.get_msg::<state::AlertMeta>(monitoring::META).ok().flatten().unwrap_or_default();
        if meta.defaults_version < rules::DEFAULTS_VERSION {
            let seed = state::SeedAlertRules { version: rules::DEFAULTS_VERSION, rules: rules::defaults() };
            match self.node.write(command(&self.node, M::Seed(seed))).await {
                Ok(_) => tracing::info!(version = rules::DEFAULTS_VERSION, "built-in alert rules seeded"),
                Err(e) => tracing::warn!(error = %e, "could not seed the built-in alert rules"),
            }
        }
        // Retention: daily, remove what is older than HISTORY_RETENTION (never younger than 365 d).
        if now.saturating_sub(self.last_prune_ms) >= 24 * 3_600_000 {
            let before_ms = now.saturating_sub(HISTORY_RETENTION.as_millis() as u64);
            let old = self.node.reader.scan(monitoring::HISTORY, None, 1).ok().and_then(|p| p.into_iter().next());
            let has_old = old.is_some_and(|(k, _)| k < monitoring::history_from(before_ms));
            if !has_old {
                self.last_prune_ms = now;
            } else if let Err(e) =
                self.node.write(command(&self.node, M::Prune(state::PruneAlertHistory { before_ms }))).await
            {
                tracing::warn!(error = %e, "could not prune the alert history");
            }
        }
        if now.saturating_sub(self.last_takeover_ms) >= 10_000 {
            self.last_takeover_ms = now;
            self.take_over(now);
        }
    }

    /// Notifies transitions another node recorded but never reported delivering within
    /// `TAKEOVER_AFTER` (it died or lost its queue). The one case that can notify twice: the
    /// recorder sent, then died before recording the result.
    fn take_over(&mut self, now: u64) {
        let from = monitoring::history_from(now.saturating_sub(TAKEOVER_LOOKBACK.as_millis() as u64));
        let Ok(pairs) = self.node.reader.scan(monitoring::HISTORY, Some(&from), HISTORY_PAGE_MAX) else { return };
        let rules: HashMap<String, state::AlertRule> =
            read_rules(&self.node).into_iter().map(|r| (r.id.clone(), r)).collect();
        for (_, v) in pairs {
            let Ok(ev) = <state::AlertEvent as prost::Message>::decode(v.as_slice()) else { continue };
            let Some(t) = ev.transition.clone() else { continue };
            let old_enough = now.saturating_sub(t.at_ms) >= TAKEOVER_AFTER.as_millis() as u64;
            if !old_enough
                || !ev.notifications.is_empty()
                || t.node_id == self.node.id
                || self.taken_over.contains(&ev.id)
            {
                continue;
            }
            // A rule without enabled channels has nothing to deliver, so no result either.
            let Some(rule) = rules.get(&t.rule_id) else { continue };
            if super::notify::channels_for(&self.node, rule).is_empty() {
                continue;
            }
            tracing::warn!(event = %ev.id, recorder = t.node_id, "alert transition never reported delivered; the leader notifies it");
            self.taken_over.insert(ev.id.clone());
            self.notifier.enqueue(Job { event_id: ev.id, transition: t, rule: rule.clone() });
        }
        if self.taken_over.len() > 10_000 {
            self.taken_over.clear();
        }
    }
}

/// The longest window a rule may ask for, which bounds what the leader keeps of security events.
pub fn window_max_ms() -> u64 {
    super::window::SECONDS_KEPT as u64 * 1000
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Free share of the file system holding `dir` (statvfs), None when it cannot be read.
pub fn disk_free_ratio(dir: &std::path::Path) -> Option<f64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `st` a writable statvfs.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    if rc != 0 || st.f_blocks == 0 {
        return None;
    }
    Some(st.f_bavail as f64 / st.f_blocks as f64)
}
