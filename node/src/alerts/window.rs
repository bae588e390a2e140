//! This node's recent API requests, per second, for the alert rules over response time, error rate
//! and request rate: a ring of `SECONDS_KEPT` one-second slots, each with a count, the 5xx count
//! and a latency histogram (fixed buckets whose bounds include the Circular's 0.6 s and 2.5 s, so a
//! percentile compared with either limit is exact about which side of it it lies).
//!
//! Requests are split into "main" requests and "heavy" ones (exports, batch uploads, aggregate and
//! report queries: P5 excludes statistics and reports from the 2.5 s average and P4 asks 0.6 s per
//! request, so each kind is compared with its own limit). Long-running streams (backups, drills)
//! and the monitoring endpoints themselves are not counted.

use std::sync::LazyLock;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

/// Seconds of history: the longest window plus baseline an anomaly rule may ask for.
pub const SECONDS_KEPT: usize = 900;
/// Upper bounds of the latency buckets in milliseconds; the last bucket is open.
const BOUNDS_MS: [u32; 20] =
    [5, 10, 25, 50, 100, 200, 300, 400, 500, 600, 700, 800, 1_000, 1_500, 2_000, 2_500, 3_000, 5_000, 10_000, 30_000];
const BUCKETS: usize = BOUNDS_MS.len() + 1;

#[derive(Clone, Copy, Default)]
struct Slot {
    /// Seconds since the ring's start this slot holds (a slot of an older second is stale).
    second: u64,
    requests: u64,
    errors: u64,
    latency: [u32; BUCKETS],
    heavy_requests: u64,
    heavy_latency: [u32; BUCKETS],
}

pub struct RequestWindow {
    start: Instant,
    slots: Mutex<Vec<Slot>>,
}

/// The kind of a request by its path.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RequestKind {
    Main,
    Heavy,
    NotCounted,
}

pub fn kind_of(path: &str) -> RequestKind {
    const NOT_COUNTED: [&str; 5] =
        ["/api/v1/backup", "/api/v1/drills", "/metrics", "/api/v1/alerts", "/api/v1/monitoring"];
    const HEAVY: [&str; 6] = ["/batches", "/export", "/aggregates", "/reports", "/lineage", "/audit"];
    if NOT_COUNTED.iter().any(|p| path.starts_with(p)) {
        return RequestKind::NotCounted;
    }
    if HEAVY.iter().any(|p| path.contains(p)) {
        return RequestKind::Heavy;
    }
    RequestKind::Main
}

/// Counts over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    /// 95th percentile of main requests in seconds (the bucket's upper bound); None without any.
    pub p95_s: Option<f64>,
    pub heavy_requests: u64,
    pub heavy_p95_s: Option<f64>,
}

impl Default for RequestWindow {
    fn default() -> Self {
        RequestWindow { start: Instant::now(), slots: Mutex::new(vec![Slot::default(); SECONDS_KEPT]) }
    }
}

fn bucket_of(ms: u128) -> usize {
    BOUNDS_MS.iter().position(|b| ms <= u128::from(*b)).unwrap_or(BOUNDS_MS.len())
}

fn percentile(hist: &[u32; BUCKETS], total: u64, q: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0u64;
    for (i, n) in hist.iter().enumerate() {
        seen += u64::from(*n);
        if seen >= rank {
            // The open bucket reports twice the last bound: above every limit a rule can name.
            let ms = BOUNDS_MS.get(i).copied().unwrap_or(BOUNDS_MS[BOUNDS_MS.len() - 1] * 2);
            return Some(f64::from(ms) / 1000.0);
        }
    }
    None
}

impl RequestWindow {
    fn now_second(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    /// Whole seconds of request history this node's window holds (at most the ring's length):
    /// an anomaly rule has a baseline only once this covers its window plus baseline.
    pub fn history_seconds(&self) -> u64 {
        self.now_second().min(SECONDS_KEPT as u64)
    }

    pub fn record(&self, kind: RequestKind, status: u16, elapsed: Duration) {
        if kind == RequestKind::NotCounted {
            return;
        }
        let second = self.now_second();
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut slots[(second % SECONDS_KEPT as u64) as usize];
        if slot.second != second {
            *slot = Slot { second, ..Slot::default() };
        }
        slot.requests += 1;
        if status >= 500 {
            slot.errors += 1;
        }
        let b = bucket_of(elapsed.as_millis());
        if kind == RequestKind::Heavy {
            slot.heavy_requests += 1;
            slot.heavy_latency[b] += 1;
        } else {
            slot.latency[b] += 1;
        }
    }

    /// The slots of the `seconds` seconds that end `skip` seconds before the current one (skip 0:
    /// up to and including the current, partial second), merged.
    fn merged(&self, skip: u64, seconds: u64) -> Slot {
        let now = self.now_second();
        let seconds = seconds.min(SECONDS_KEPT as u64 - 1);
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Slot::default();
        // With skip 0 the current second counts too: a slow-response alert need not wait for it.
        let last = now.saturating_sub(skip);
        let first = (last + 1).saturating_sub(seconds);
        for second in first..=last {
            let s = &slots[(second % SECONDS_KEPT as u64) as usize];
            if s.second != second || s.requests == 0 {
                continue;
            }
            out.requests += s.requests;
            out.errors += s.errors;
            out.heavy_requests += s.heavy_requests;
            for i in 0..BUCKETS {
                out.latency[i] += s.latency[i];
                out.heavy_latency[i] += s.heavy_latency[i];
            }
        }
        out
    }

    pub fn summary(&self, window: Duration) -> Summary {
        let s = self.merged(0, window.as_secs().max(1));
        let main = s.requests - s.heavy_requests;
        Summary {
            requests: s.requests,
            errors: s.errors,
            p95_s: percentile(&s.latency, main, 0.95),
            heavy_requests: s.heavy_requests,
            heavy_p95_s: percentile(&s.heavy_latency, s.heavy_requests, 0.95),
        }
    }

    /// `steps` consecutive windows of `step` each, oldest first, ending with the last complete
    /// second (a partial second would look like a drop in the rate); how long this node has been up
    /// bounds how many there are (a window before the start is not a window of no traffic).
    pub fn series(&self, step: Duration, steps: u64) -> Vec<Summary> {
        let step_s = step.as_secs().max(1);
        let up_steps = self.now_second() / step_s;
        // A replicated rule's window is not bounded by `apply`: one longer than the ring gives none.
        let steps = steps.min(up_steps).min((SECONDS_KEPT as u64 / step_s).saturating_sub(1));
        (0..steps)
            .rev()
            .map(|i| {
                let s = self.merged(1 + i * step_s, step_s);
                Summary {
                    requests: s.requests,
                    errors: s.errors,
                    heavy_requests: s.heavy_requests,
                    ..Summary::default()
                }
            })
            .collect()
    }
}

/// This node's window (one node per process).
pub static REQUESTS: LazyLock<RequestWindow> = LazyLock::new(RequestWindow::default);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p95_is_the_bucket_bound_and_sides_of_the_limits_are_exact() {
        let w = RequestWindow::default();
        for _ in 0..94 {
            w.record(RequestKind::Main, 200, Duration::from_millis(20));
        }
        for _ in 0..6 {
            w.record(RequestKind::Main, 200, Duration::from_millis(650));
        }
        let s = w.summary(Duration::from_secs(60));
        assert_eq!(s.requests, 100);
        // The 95th of 100 is one of the slow ones: (600, 700] → 0.7 s, above the 0.6 s limit.
        assert_eq!(s.p95_s, Some(0.7));
        w.record(RequestKind::Heavy, 503, Duration::from_millis(2_400));
        let s = w.summary(Duration::from_secs(60));
        assert_eq!((s.errors, s.heavy_requests, s.heavy_p95_s), (1, 1, Some(2.5)));
        assert_eq!(s.p95_s, Some(0.7), "heavy requests do not count towards the main percentile");
    }

    #[test]
    fn series_ends_with_the_last_complete_second_and_not_before_the_start() {
        let w = RequestWindow { start: Instant::now() - Duration::from_millis(3_500), ..RequestWindow::default() };
        // Three complete seconds since the start: at most three windows of a second.
        assert_eq!(w.series(Duration::from_secs(1), 10).len(), 3);
        w.record(RequestKind::Main, 200, Duration::from_millis(1));
        let last = w.series(Duration::from_secs(1), 10).pop().expect("a window");
        assert_eq!(last.requests, 0, "the current, partial second is not in the series");
        assert_eq!(w.summary(Duration::from_secs(1)).requests, 1, "but it is in a summary");
    }

    #[test]
    fn a_window_longer_than_the_ring_gives_no_series() {
        // A replicated rule is not bounded by `apply`: a step of 1000 s must not underflow.
        let w = RequestWindow::default();
        assert!(w.series(Duration::from_secs(1_000), 5).is_empty());
    }

    #[test]
    fn request_kinds() {
        assert_eq!(kind_of("/api/v1/datasets/x/records"), RequestKind::Main);
        assert_eq!(kind_of("/api/v1/datasets/x/batches"), RequestKind::Heavy);
        assert_eq!(kind_of("/api/v1/datasets/x/aggregates"), RequestKind::Heavy);
        assert_eq!(kind_of("/api/v1/backup"), RequestKind::NotCounted);
        assert_eq!(kind_of("/api/v1/alerts/history"), RequestKind::NotCounted);
    }
}
