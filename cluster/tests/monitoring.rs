//! Alert state through `apply` (issue 10; A5.2): a transition is recorded once however often it is
//! proposed, so it is notified once; history keeps both transitions with their deliveries; history
//! younger than 365 days cannot be pruned; built-in rules are seeded once and a deleted one stays
//! deleted; deleting a rule resolves its firing alerts.

#[path = "common/store.rs"]
mod store;

use store::Store;

use dtm_cluster::monitoring;
use dtm_model::state;
use dtm_model::state::command::Kind;
use dtm_model::state::command_response::Result as Reply;
use dtm_model::state::monitoring_command::Kind as M;

const DAY_MS: u64 = 86_400_000;

impl Store {
    async fn apply_monitoring(&mut self, at_ms: u64, kind: M) -> state::CommandResponse {
        self.apply_at(at_ms, Kind::Monitoring(state::MonitoringCommand { kind: Some(kind) })).await
    }

    fn history(&self) -> Vec<state::AlertEvent> {
        self.reader
            .scan(monitoring::HISTORY, None, 1_000)
            .expect("scan")
            .iter()
            .map(|(_, v)| prost::Message::decode(v.as_slice()).expect("event"))
            .collect()
    }

    fn state(&self, rule: &str, subject: &str) -> Option<state::AlertState> {
        self.reader.get_msg(&monitoring::alert_state(rule, subject)).expect("get")
    }
}

fn code(r: &state::CommandResponse) -> &str {
    match &r.result {
        Some(Reply::Rejected(r)) => &r.code,
        Some(Reply::Applied(_)) => "applied",
        _ => "other",
    }
}

fn rule(id: &str) -> state::AlertRule {
    state::AlertRule {
        id: id.into(),
        kind: "threshold".into(),
        metric: "node_down".into(),
        op: ">=".into(),
        threshold: 1.0,
        severity: "critical".into(),
        enabled: true,
        ..Default::default()
    }
}

fn transition(firing: bool, at_ms: u64, node: u64) -> M {
    M::Transition(state::AlertTransition {
        rule_id: "node-down".into(),
        subject: "node/2".into(),
        firing,
        at_ms,
        value: if firing { 1.0 } else { 0.0 },
        severity: "critical".into(),
        message: String::new(),
        node_id: node,
    })
}

#[tokio::test]
async fn a5_2_a_transition_is_recorded_once_and_history_keeps_both_with_deliveries() {
    let mut s = Store::open();
    assert_eq!(code(&s.apply_monitoring(1_000, transition(true, 1_000, 1)).await), "not_found", "no rule yet");
    s.apply_monitoring(1_000, M::PutRule(state::PutAlertRule { rule: Some(rule("node-down")) })).await;
    assert_eq!(code(&s.apply_monitoring(2_000, transition(true, 2_000, 1)).await), "applied");
    // The same transition again (a retried write, a second evaluator after a leader change).
    assert_eq!(code(&s.apply_monitoring(2_100, transition(true, 2_100, 3)).await), "unchanged");
    let st = s.state("node-down", "node/2").expect("state");
    assert!(st.firing);
    assert_eq!((st.node_id, st.since_ms), (1, 2_000), "the first recorded transition is the one notified");
    assert_eq!(code(&s.apply_monitoring(5_000, transition(false, 5_000, 3)).await), "applied");
    assert_eq!(code(&s.apply_monitoring(5_100, transition(false, 5_100, 1)).await), "unchanged");
    let h = s.history();
    assert_eq!(h.len(), 2);
    let firing: Vec<bool> = h.iter().map(|e| e.transition.as_ref().expect("t").firing).collect();
    assert_eq!(firing, [true, false]);
    assert_eq!(h[0].id, monitoring::event_id(2_000, 0));

    let result = |ch: &str, r: &str| state::NotificationResult {
        channel_id: ch.into(),
        result: r.into(),
        attempts: 1,
        at_ms: 2_500,
        detail: String::new(),
        node_id: 1,
    };
    let record = |id: &str, results| M::Notifications(state::RecordNotifications { event_id: id.to_string(), results });
    let id = h[0].id.clone();
    s.apply_monitoring(2_500, record(&id, vec![result("mail", "failed")])).await;
    s.apply_monitoring(2_600, record(&id, vec![result("mail", "sent"), result("hook", "sent")])).await;
    let got: Vec<(String, String)> =
        s.history()[0].notifications.iter().map(|n| (n.channel_id.clone(), n.result.clone())).collect();
    assert_eq!(got, [("mail".into(), "sent".into()), ("hook".into(), "sent".into())], "latest result per channel");
    assert_eq!(code(&s.apply_monitoring(2_700, record("1-99", vec![])).await), "not_found");
}

#[tokio::test]
async fn a5_2_history_younger_than_365_days_is_never_pruned() {
    let mut s = Store::open();
    s.apply_monitoring(0, M::PutRule(state::PutAlertRule { rule: Some(rule("node-down")) })).await;
    s.apply_monitoring(DAY_MS, transition(true, DAY_MS, 1)).await;
    s.apply_monitoring(300 * DAY_MS, transition(false, 300 * DAY_MS, 1)).await;
    let now = 400 * DAY_MS;
    // A bound that would remove the entry of day 300 (100 days old) is refused outright.
    let r = s.apply_monitoring(now, M::Prune(state::PruneAlertHistory { before_ms: 301 * DAY_MS })).await;
    assert_eq!(code(&r), "retention");
    assert_eq!(s.history().len(), 2);
    // 365 days before now removes only the entry of day 1.
    let r = s.apply_monitoring(now, M::Prune(state::PruneAlertHistory { before_ms: now - 365 * DAY_MS })).await;
    assert_eq!(code(&r), "applied");
    let left: Vec<u64> = s.history().iter().map(|e| e.transition.as_ref().expect("t").at_ms).collect();
    assert_eq!(left, [300 * DAY_MS]);
}

#[tokio::test]
async fn built_in_rules_are_seeded_once_and_a_deleted_one_stays_deleted() {
    let mut s = Store::open();
    let seed = |version| M::Seed(state::SeedAlertRules { version, rules: vec![rule("node-down"), rule("other")] });
    assert_eq!(code(&s.apply_monitoring(1, seed(1)).await), "applied");
    s.apply_monitoring(2, transition(true, 2, 1)).await;
    // Deleting a rule resolves its firing alert in history.
    assert_eq!(
        code(&s.apply_monitoring(3, M::DeleteRule(state::DeleteAlertRule { id: "node-down".into() })).await),
        "applied"
    );
    assert!(s.state("node-down", "node/2").is_none());
    let last = s.history().pop().expect("event");
    assert!(!last.transition.as_ref().expect("t").firing);
    assert_eq!(code(&s.apply_monitoring(4, seed(1)).await), "unchanged");
    assert!(s.reader.get(&monitoring::rule("node-down")).expect("get").is_none(), "stays deleted");
    assert_eq!(code(&s.apply_monitoring(5, seed(2)).await), "applied", "a newer version adds what is missing");
    assert!(s.reader.get(&monitoring::rule("node-down")).expect("get").is_some());
}

#[tokio::test]
async fn malformed_rules_and_channels_are_refused_in_apply() {
    let mut s = Store::open();
    let mut bad = rule("x");
    bad.op = "~".into();
    assert_eq!(
        code(&s.apply_monitoring(1, M::PutRule(state::PutAlertRule { rule: Some(bad) })).await),
        "invalid_command"
    );
    let channel = state::AlertChannel { id: "c".into(), kind: "email".into(), enabled: true, ..Default::default() };
    let r = s.apply_monitoring(2, M::PutChannel(state::PutAlertChannel { channel: Some(channel) })).await;
    assert_eq!(code(&r), "invalid_command", "an e-mail channel without settings");
}
