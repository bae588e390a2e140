//! Rate limits: one token bucket (GCRA, `governor`) per credential and operation group, per node.
//! The limits come from the configuration file and are overridden at run time by the replicated
//! `RateLimits` (`PUT /api/v1/gateway/limits`); a changed group gets a fresh limiter.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use governor::DefaultKeyedRateLimiter;
use governor::Quota;
use governor::clock::Clock;
use governor::clock::DefaultClock;

use crate::limits::RATE_LIMIT_KEYS_MAX;

/// What a request does, for its rate limit. Each group has its own bucket per credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    Ingest,
    Batch,
    Query,
    Export,
    Admin,
    Login,
}

impl Group {
    pub const ALL: [Group; 6] = [Group::Ingest, Group::Batch, Group::Query, Group::Export, Group::Admin, Group::Login];

    pub fn name(self) -> &'static str {
        match self {
            Group::Ingest => "ingest",
            Group::Batch => "batch",
            Group::Query => "query",
            Group::Export => "export",
            Group::Admin => "admin",
            Group::Login => "login",
        }
    }

    pub fn from_name(name: &str) -> Option<Group> {
        Group::ALL.into_iter().find(|g| g.name() == name)
    }

    /// The group of a request, by method and path; `None` for the health and readiness probes,
    /// which are never rate limited (load balancers poll them).
    pub fn of(method: &Method, path: &str) -> Option<Group> {
        let p = path.strip_prefix("/api/v1").unwrap_or(path);
        let segments = p.split('/').filter(|s| !s.is_empty()).collect::<Vec<_>>();
        let has = |s: &str| segments.contains(&s);
        match segments.as_slice() {
            ["health"] | ["ready"] => return None,
            _ => {}
        }
        if has("auth") || has("login") || has("sessions") || has("token") || has("oauth") {
            return Some(Group::Login);
        }
        if has("batches") || has("batch") {
            return Some(Group::Batch);
        }
        if has("export") || has("exports") {
            return Some(Group::Export);
        }
        if let ["datasets", _, "records"] = segments.as_slice()
            && method == Method::POST
        {
            return Some(Group::Ingest);
        }
        // SOAP carries record submissions (and batch status reads); its WSDL is a read.
        if segments.first() == Some(&"soap") {
            return Some(if method == Method::POST { Group::Ingest } else { Group::Query });
        }
        if matches!(segments.first(), Some(&"openapi.json") | Some(&"api")) && method == Method::GET {
            return Some(Group::Query);
        }
        let reads = matches!(segments.first(), Some(&"datasets") | Some(&"pipeline"));
        if reads && method == Method::GET {
            return Some(Group::Query);
        }
        Some(Group::Admin)
    }
}

/// A token bucket's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl RateLimit {
    fn quota(self) -> Option<Quota> {
        Some(Quota::per_second(NonZeroU32::new(self.per_second)?).allow_burst(NonZeroU32::new(self.burst)?))
    }
}

/// The defaults: well above what one node serves to one credential in a debug build (about 2,000
/// single-record posts per second with 500 clients), so they shed only abuse; set real figures per
/// deployment (docs/operations.md).
pub fn default_limits() -> BTreeMap<Group, RateLimit> {
    let l = |per_second, burst| RateLimit { per_second, burst };
    BTreeMap::from([
        (Group::Ingest, l(20_000, 20_000)),
        (Group::Batch, l(100, 200)),
        (Group::Query, l(2_000, 4_000)),
        (Group::Export, l(50, 100)),
        (Group::Admin, l(1_000, 2_000)),
        (Group::Login, l(20, 40)),
    ])
}

struct Bucket {
    limit: RateLimit,
    limiter: DefaultKeyedRateLimiter<Arc<str>>,
}

/// Per-group keyed limiters. `check` is lock-free apart from a read lock on the group table.
pub struct Limiter {
    groups: std::sync::RwLock<BTreeMap<Group, Arc<Bucket>>>,
    clock: DefaultClock,
}

impl Limiter {
    pub fn new(limits: &BTreeMap<Group, RateLimit>) -> Limiter {
        let l = Limiter { groups: Default::default(), clock: DefaultClock::default() };
        l.set(limits);
        l
    }

    /// Applies `limits`; a group whose limit changed starts with full buckets.
    pub fn set(&self, limits: &BTreeMap<Group, RateLimit>) {
        let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
        for (group, limit) in limits {
            if groups.get(group).is_some_and(|b| b.limit == *limit) {
                continue;
            }
            match limit.quota() {
                Some(q) => {
                    groups
                        .insert(*group, Arc::new(Bucket { limit: *limit, limiter: DefaultKeyedRateLimiter::keyed(q) }));
                }
                None => {
                    groups.remove(group);
                }
            }
        }
    }

    pub fn current(&self) -> BTreeMap<Group, RateLimit> {
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        groups.iter().map(|(g, b)| (*g, b.limit)).collect()
    }

    /// Takes a token of `group` for `key`; `Err` carries how long until one is available.
    pub fn check(&self, group: Group, key: &Arc<str>) -> Result<(), Duration> {
        let bucket = {
            let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
            match groups.get(&group) {
                Some(b) => b.clone(),
                None => return Ok(()),
            }
        };
        bucket.limiter.check_key(key).map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets buckets that are full again (their keys have been idle), and all of a group whose
    /// key count still exceeds `RATE_LIMIT_KEYS_MAX` (many made-up credential ids): memory stays
    /// bounded, at the price of fresh buckets for that group.
    pub fn shrink(&self) {
        let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
        for (group, b) in groups.iter_mut() {
            b.limiter.retain_recent();
            b.limiter.shrink_to_fit();
            if b.limiter.len() > RATE_LIMIT_KEYS_MAX {
                tracing::warn!(target: "security", group = group.name(), keys = b.limiter.len(), "rate limiter forgot all keys of a group");
                if let Some(q) = b.limit.quota() {
                    *b = Arc::new(Bucket { limit: b.limit, limiter: DefaultKeyedRateLimiter::keyed(q) });
                }
            }
        }
    }
}

/// Seconds for `Retry-After`: the wait rounded up, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_says_how_long_to_wait() {
        let limits = BTreeMap::from([(Group::Ingest, RateLimit { per_second: 1, burst: 3 })]);
        let l = Limiter::new(&limits);
        let a: Arc<str> = Arc::from("k:a");
        let b: Arc<str> = Arc::from("k:b");
        for _ in 0..3 {
            assert!(l.check(Group::Ingest, &a).is_ok());
        }
        let wait = l.check(Group::Ingest, &a).expect_err("over the burst");
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert_eq!(retry_after_seconds(wait), 1);
        assert!(l.check(Group::Ingest, &b).is_ok(), "another credential has its own bucket");
        assert!(l.check(Group::Query, &a).is_ok(), "another group has its own bucket (none: unlimited)");
        // A new limit takes effect at once, with a full bucket. (One token a second: at 1,000 a
        // second, a millisecond's stall on a busy machine refilled one between two checks.)
        l.set(&BTreeMap::from([(Group::Ingest, RateLimit { per_second: 1, burst: 10 })]));
        for _ in 0..10 {
            assert!(l.check(Group::Ingest, &a).is_ok());
        }
        assert!(l.check(Group::Ingest, &a).is_err());
        assert_eq!(l.current()[&Group::Ingest], RateLimit { per_second: 1, burst: 10 });
        // An unchanged limit keeps its state.
        l.set(&BTreeMap::from([(Group::Ingest, RateLimit { per_second: 1, burst: 10 })]));
        assert!(l.check(Group::Ingest, &a).is_err());
    }

    #[test]
    fn requests_fall_into_their_operation_group() {
        let g = |m: Method, p: &str| Group::of(&m, p);
        assert_eq!(g(Method::POST, "/api/v1/datasets/etx/records"), Some(Group::Ingest));
        assert_eq!(g(Method::GET, "/api/v1/datasets/etx/records"), Some(Group::Query));
        assert_eq!(g(Method::GET, "/api/v1/datasets/etx/aggregates"), Some(Group::Query));
        assert_eq!(g(Method::POST, "/api/v1/datasets"), Some(Group::Admin));
        assert_eq!(g(Method::POST, "/api/v1/datasets/etx/batches"), Some(Group::Batch));
        assert_eq!(g(Method::GET, "/api/v1/datasets/etx/export"), Some(Group::Export));
        assert_eq!(g(Method::POST, "/api/v1/auth/login"), Some(Group::Login));
        assert_eq!(g(Method::PUT, "/api/v1/gateway/limits"), Some(Group::Admin));
        assert_eq!(g(Method::POST, "/soap/v1"), Some(Group::Ingest));
        assert_eq!(g(Method::GET, "/soap/v1"), Some(Group::Query));
        assert_eq!(g(Method::GET, "/api/v1/openapi.json"), Some(Group::Query));
        assert_eq!(g(Method::GET, "/api/v1/health"), None);
        assert_eq!(g(Method::GET, "/api/v1/ready"), None);
    }
}
