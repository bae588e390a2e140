//! Intrusion detection: an address that keeps failing authentication (401/403 answers) is
//! blocked. The tracker counts failures per address in a sliding window; the gateway blocks the
//! address on this node at once and proposes the block to the log so every node refuses it.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use crate::limits::FAILURE_TRACKED_ADDRESSES_MAX;

/// Failures per address within `window`; `record` says when an address reaches `max`.
pub struct FailureTracker {
    max: usize,
    window: Duration,
    /// The times of each address's recent failures (at most `max` each), oldest first.
    recent: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl FailureTracker {
    pub fn new(max: u32, window: Duration) -> Self {
        FailureTracker { max: max.max(1) as usize, window, recent: Mutex::default() }
    }

    /// Counts a failure of `ip` at `now`; true when this failure is the `max`-th within the window
    /// (the address's count then starts over, so it is reported once per burst).
    pub fn record(&self, ip: IpAddr, now: Instant) -> bool {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() >= FAILURE_TRACKED_ADDRESSES_MAX && !recent.contains_key(&ip) {
            let window = self.window;
            recent.retain(|_, times| times.back().is_some_and(|t| now.duration_since(*t) < window));
            if recent.len() >= FAILURE_TRACKED_ADDRESSES_MAX {
                // Full of addresses that are all failing right now: this one is not tracked; the
                // others will be blocked and make room.
                return false;
            }
        }
        let times = recent.entry(ip).or_default();
        while times.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
            times.pop_front();
        }
        times.push_back(now);
        if times.len() >= self.max {
            recent.remove(&ip);
            return true;
        }
        false
    }

    /// Drops addresses without a failure in the window.
    pub fn shrink(&self, now: Instant) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let window = self.window;
        recent.retain(|_, times| times.back().is_some_and(|t| now.duration_since(*t) < window));
        recent.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_reported_at_the_threshold_within_the_window() {
        let t = FailureTracker::new(3, Duration::from_secs(60));
        let (a, b): (IpAddr, IpAddr) = ("203.0.113.1".parse().expect("ip"), "203.0.113.2".parse().expect("ip"));
        let start = Instant::now();
        assert!(!t.record(a, start));
        assert!(!t.record(a, start + Duration::from_secs(1)));
        assert!(!t.record(b, start + Duration::from_secs(1)), "addresses are counted apart");
        assert!(t.record(a, start + Duration::from_secs(2)), "third failure within 60 s");
        assert!(!t.record(a, start + Duration::from_secs(3)), "reported once, then counted anew");
        // Failures spread wider than the window never add up.
        let slow = FailureTracker::new(3, Duration::from_secs(10));
        for i in 0..10 {
            assert!(!slow.record(a, start + Duration::from_secs(6 * i)));
        }
        slow.shrink(start + Duration::from_secs(1_000));
        assert!(slow.recent.lock().expect("lock").is_empty());
    }
}
