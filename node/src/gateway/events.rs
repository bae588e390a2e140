//! The gateway's security events: one log line (target `security`) and one increment of
//! `dtm_security_events_total{kind}` each. Labels are a fixed set of kinds, never addresses or
//! credentials. Refusals that can come in floods (rate limits, shedding, denied addresses) are
//! logged at most once per `EVENT_LOG_INTERVAL_MS` per node, with the count since the last line;
//! the counter counts every one.

use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use dtm_model::state;

use super::limiter::Group;

const EVENT_LOG_INTERVAL_MS: u64 = 1_000;

fn count(kind: &'static str) {
    metrics::counter!("dtm_security_events_total", "kind" => kind).increment(1);
}

/// Lets one log line through per interval and counts the ones held back.
#[derive(Default)]
pub struct Throttle {
    last_ms: AtomicU64,
    held_back: AtomicU64,
}

impl Throttle {
    /// `Some(held back since the last line)` when a line may be written now.
    fn pass(&self) -> Option<u64> {
        let now = crate::api::now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= EVENT_LOG_INTERVAL_MS
            && self.last_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// A request refused before its handler: `kind` is `oversized_request`, `json_too_deep`, `bad_body`,
/// `blocked_address`, `ip_denied` or `foreign_address`.
pub fn refused(throttle: &Throttle, kind: &'static str, ip: Option<IpAddr>, detail: &str) {
    count(kind);
    if let Some(held_back) = throttle.pass() {
        let ip = ip.map(|i| i.to_string()).unwrap_or_default();
        tracing::warn!(target: "security", kind, ip, detail, held_back, "request refused by the gateway");
    }
}

pub fn rate_limited(throttle: &Throttle, group: Group, key: &str, ip: Option<IpAddr>) {
    count("rate_limited");
    if let Some(held_back) = throttle.pass() {
        let ip = ip.map(|i| i.to_string()).unwrap_or_default();
        tracing::warn!(target: "security", kind = "rate_limited", group = group.name(), key, ip, held_back, "rate limit exceeded");
    }
}

pub fn shed(throttle: &Throttle) {
    count("shed");
    if let Some(held_back) = throttle.pass() {
        tracing::warn!(target: "security", kind = "shed", held_back, "concurrency limit reached; request shed with 503");
    }
}

pub fn address_blocked(b: &state::AddressBlock) {
    count("address_blocked");
    tracing::warn!(target: "security", kind = "address_blocked", ip = %b.address, expires_at_ms = b.expires_at_ms, reason = %b.reason, "address blocked");
}

pub fn admin_change(kind: &'static str, principal: &str, detail: &str) {
    count(kind);
    tracing::warn!(target: "security", kind, principal, detail, "gateway configuration changed");
}
