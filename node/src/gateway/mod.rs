//! The API gateway: what every request passes before a handler sees it, and the admin endpoints
//! that change it at run time. One layer (`protect`, installed in `api::router`) runs these steps
//! in order, cheapest first, so a refused request costs little:
//!
//! 1. header and URL sizes (431, 414);
//! 2. the client address (`ip.rs`: the peer, or behind a trusted proxy the rightmost untrusted
//!    `X-Forwarded-For` hop), then blocked addresses, global IP rules, per-credential IP rules and
//!    the country restriction (403);
//! 3. the rate limit of the credential (or address) for the request's operation group (429);
//! 4. the node's concurrency limit (503, before latency collapses);
//! 5. the nesting depth of a JSON body (400);
//! 6. the handler; a 401/403 answer counts towards blocking the address (`intrusion.rs`);
//! 7. security headers on every answer (`input.rs`).
//!
//! Rate limits, IP rules and blocks are replicated (`GatewayCommand`, `dtm-cluster`'s
//! `gateway.rs`); each node reloads them from its tables every `GATEWAY_REFRESH_INTERVAL` and right
//! after it committed a change itself. Counting is per node: see docs/operations.md.

pub mod api;
mod events;
mod input;
mod intrusion;
pub mod ip;
pub mod limiter;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::RwLock;
use std::time::Duration;
use std::time::Instant;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use dtm_cluster::tables;
use dtm_model::state;
use ipnet::IpNet;
use tokio::sync::Semaphore;

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::limits::BLOCKS_LOADED_MAX;
use crate::limits::GATEWAY_REFRESH_INTERVAL;
use crate::limits::GATEWAY_SHRINK_INTERVAL;
use ip::CountryRule;
use ip::RuleSet;
use limiter::Group;
use limiter::Limiter;
use limiter::RateLimit;

/// The gateway's options from the configuration file (and flags); the replicated rate limits
/// override `rate_limits` group by group.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Requests handled at once on this node; more are answered 503 at once.
    pub requests_in_flight_max: usize,
    /// Token buckets per operation group until the cluster sets others.
    pub rate_limits: BTreeMap<Group, RateLimit>,
    /// Peers whose `X-Forwarded-For` is believed (reverse proxies, load balancers). Empty: the
    /// header is ignored.
    pub trusted_proxies: Vec<IpNet>,
    /// A MaxMind-format country database; without one the country restriction is off.
    pub geoip_db: Option<PathBuf>,
    /// ISO codes of the countries clients may come from (empty: any).
    pub allowed_countries: Vec<String>,
    /// Authentication failures (401/403) from one address within `auth_failure_window` that get
    /// it blocked.
    pub auth_failures_max: u32,
    pub auth_failure_window: Duration,
    /// How long a detected address stays blocked.
    pub block_duration: Duration,
    /// Addresses never blocked automatically (the operator's own; default loopback, so that a
    /// local proxy without `trusted_proxies` cannot get every client blocked at once).
    pub block_exempt: Vec<IpNet>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            requests_in_flight_max: crate::limits::REQUESTS_IN_FLIGHT_DEFAULT,
            rate_limits: limiter::default_limits(),
            trusted_proxies: Vec::new(),
            geoip_db: None,
            allowed_countries: Vec::new(),
            auth_failures_max: 20,
            auth_failure_window: Duration::from_secs(60),
            block_duration: Duration::from_secs(15 * 60),
            block_exempt: ip::parse_nets(&["127.0.0.0/8".into(), "::1/128".into()]).unwrap_or_default(),
        }
    }
}

impl GatewayOptions {
    pub fn validate(&self) -> Result<(), String> {
        if self.requests_in_flight_max == 0 {
            return Err("gateway.requests_in_flight_max must be positive".into());
        }
        if self.rate_limits.values().any(|l| l.per_second == 0 || l.burst == 0) {
            return Err("gateway rate limits need per_second and burst above 0".into());
        }
        if self.auth_failures_max == 0 || self.auth_failure_window.is_zero() || self.block_duration.is_zero() {
            return Err("gateway.auth_failures_max, auth_failure_window_s and block_duration_s must be positive".into());
        }
        if self.allowed_countries.iter().any(|c| c.len() != 2 || !c.bytes().all(|b| b.is_ascii_alphabetic())) {
            return Err("gateway.allowed_countries takes ISO 3166-1 alpha-2 codes such as \"VN\"".into());
        }
        Ok(())
    }
}

/// The replicated IP rules, parsed.
#[derive(Default)]
struct IpRules {
    global: RuleSet,
    credentials: HashMap<String, RuleSet>,
}

/// What this node last loaded from its tables.
#[derive(Default)]
struct Replicated {
    limits_raw: Option<Vec<u8>>,
    rules_raw: Option<Vec<u8>>,
    rules: Arc<IpRules>,
    blocks: Arc<HashMap<IpAddr, state::AddressBlock>>,
}

pub struct Gateway {
    opts: GatewayOptions,
    limiter: Limiter,
    in_flight: Arc<Semaphore>,
    countries: Option<CountryRule>,
    replicated: RwLock<Replicated>,
    /// Blocks this node detected and has not yet seen in its tables (the proposal is in flight or
    /// failed); they hold on this node until they expire.
    pending_blocks: Mutex<HashMap<IpAddr, state::AddressBlock>>,
    failures: intrusion::FailureTracker,
    events: events::Throttle,
}

impl Gateway {
    /// Proxies whose `X-Forwarded-For` is believed (for the client address the audit trail names).
    pub fn trusted_proxies(&self) -> &[ipnet::IpNet] {
        &self.opts.trusted_proxies
    }

    /// A gateway with `opts`; opens the country database, or warns that the restriction is off.
    pub fn new(opts: GatewayOptions) -> Result<Gateway, String> {
        opts.validate()?;
        let countries = match (&opts.geoip_db, opts.allowed_countries.is_empty()) {
            (_, true) => None,
            (None, false) => {
                tracing::warn!(
                    target: "security",
                    "gateway.allowed_countries is set but gateway.geoip_db is not: the foreign-address restriction is OFF"
                );
                None
            }
            (Some(path), false) => {
                let db = ip::MaxMindCountries::open(path)
                    .map_err(|e| format!("opening the country database {}: {e}", path.display()))?;
                tracing::info!(path = %path.display(), allowed = ?opts.allowed_countries, "country restriction on");
                Some(CountryRule { lookup: Box::new(db), allowed: opts.allowed_countries.clone() })
            }
        };
        Ok(Gateway {
            limiter: Limiter::new(&opts.rate_limits),
            in_flight: Arc::new(Semaphore::new(opts.requests_in_flight_max)),
            failures: intrusion::FailureTracker::new(opts.auth_failures_max, opts.auth_failure_window),
            countries,
            replicated: RwLock::default(),
            pending_blocks: Mutex::default(),
            events: events::Throttle::default(),
            opts,
        })
    }

    /// The gateway with default options (for routers built without a configuration).
    pub fn unconfigured() -> Gateway {
        let opts = GatewayOptions::default();
        Gateway {
            limiter: Limiter::new(&opts.rate_limits),
            in_flight: Arc::new(Semaphore::new(opts.requests_in_flight_max)),
            failures: intrusion::FailureTracker::new(opts.auth_failures_max, opts.auth_failure_window),
            countries: None,
            replicated: RwLock::default(),
            pending_blocks: Mutex::default(),
            events: events::Throttle::default(),
            opts,
        }
    }

    fn replicated(&self) -> std::sync::RwLockReadGuard<'_, Replicated> {
        self.replicated.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the replicated limits, rules and blocks from this node's tables.
    pub fn refresh(&self, reader: &dtm_storage::StateReader) -> Result<(), dtm_storage::StoreError> {
        let limits_raw = reader.get(tables::GATEWAY_RATE_LIMITS)?;
        let rules_raw = reader.get(tables::GATEWAY_IP_RULES)?;
        let mut blocks = HashMap::new();
        for (_, v) in reader.scan(tables::GATEWAY_BLOCK, None, BLOCKS_LOADED_MAX)? {
            let b = <state::AddressBlock as prost::Message>::decode(v.as_slice())?;
            if let Ok(ip) = b.address.parse::<IpAddr>() {
                blocks.insert(ip::canonical(ip), b);
            }
        }
        let (limits_changed, rules_changed) = {
            let r = self.replicated();
            (r.limits_raw != limits_raw, r.rules_raw != rules_raw)
        };
        if limits_changed {
            let mut merged = self.opts.rate_limits.clone();
            if let Some(raw) = &limits_raw {
                let set = <state::RateLimits as prost::Message>::decode(raw.as_slice())?;
                for (name, l) in &set.groups {
                    if let Some(g) = Group::from_name(name) {
                        merged.insert(g, RateLimit { per_second: l.per_second, burst: l.burst });
                    }
                }
            }
            self.limiter.set(&merged);
            tracing::info!(target: "security", limits = ?merged, "rate limits loaded");
        }
        let rules = match (&rules_raw, rules_changed) {
            (_, false) => None,
            (None, true) => Some(Arc::new(IpRules::default())),
            (Some(raw), true) => {
                Some(Arc::new(parse_rules(&<state::IpRules as prost::Message>::decode(raw.as_slice())?)))
            }
        };
        let mut pending = self.pending_blocks.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|ip, _| !blocks.contains_key(ip));
        drop(pending);
        let mut r = self.replicated.write().unwrap_or_else(|p| p.into_inner());
        r.limits_raw = limits_raw;
        r.rules_raw = rules_raw;
        if let Some(rules) = rules {
            r.rules = rules;
        }
        r.blocks = Arc::new(blocks);
        Ok(())
    }

    /// The block in force for `ip` at `now_ms`, replicated or detected here.
    fn block_of(&self, ip: IpAddr, now_ms: u64) -> Option<state::AddressBlock> {
        let live = |b: &state::AddressBlock| b.expires_at_ms > now_ms;
        if let Some(b) = self.replicated().blocks.get(&ip).filter(|b| live(b)) {
            return Some(b.clone());
        }
        let mut pending = self.pending_blocks.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|_, b| live(b));
        pending.get(&ip).cloned()
    }

    /// Every block in force (replicated ones first), with whether it is replicated.
    pub fn blocks(&self, now_ms: u64) -> Vec<(state::AddressBlock, bool)> {
        let mut out: Vec<_> =
            self.replicated().blocks.values().filter(|b| b.expires_at_ms > now_ms).map(|b| (b.clone(), true)).collect();
        let pending = self.pending_blocks.lock().unwrap_or_else(|p| p.into_inner());
        out.extend(pending.values().filter(|b| b.expires_at_ms > now_ms).map(|b| (b.clone(), false)));
        out.sort_by(|a, b| a.0.address.cmp(&b.0.address));
        out
    }

    fn forget_pending_block(&self, ip: IpAddr) -> bool {
        self.pending_blocks.lock().unwrap_or_else(|p| p.into_inner()).remove(&ip).is_some()
    }

    pub fn rate_limits(&self) -> BTreeMap<Group, RateLimit> {
        self.limiter.current()
    }

    pub fn config_rate_limits(&self) -> &BTreeMap<Group, RateLimit> {
        &self.opts.rate_limits
    }

    /// Periodic upkeep: forget idle rate-limit buckets and old failure counts.
    fn shrink(&self) {
        self.limiter.shrink();
        self.failures.shrink(Instant::now());
    }
}

fn parse_rules(rules: &state::IpRules) -> IpRules {
    let parse = |set: &state::IpRuleSet| match RuleSet::parse(&set.allow, &set.deny) {
        Ok(r) => r,
        Err(e) => {
            // The API checks rules before proposing them; a bad entry here came from elsewhere.
            // Failing closed (refusing everyone) would lock the admins out, so the set is dropped.
            tracing::error!(target: "security", error = %e, "ignoring an IP rule set that does not parse");
            RuleSet::default()
        }
    };
    IpRules {
        global: rules.global.as_ref().map(parse).unwrap_or_default(),
        credentials: rules.credentials.iter().map(|(id, set)| (id.clone(), parse(set))).collect(),
    }
}

/// Reloads the replicated gateway state every `GATEWAY_REFRESH_INTERVAL` until shutdown.
pub async fn run(
    gateway: Arc<Gateway>,
    reader: dtm_storage::StateReader,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(GATEWAY_REFRESH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_shrink = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = gateway.refresh(&reader) {
            tracing::warn!(error = %e, "could not load the gateway's rate limits, IP rules and blocks");
        }
        if last_shrink.elapsed() >= GATEWAY_SHRINK_INTERVAL {
            gateway.shrink();
            last_shrink = Instant::now();
        }
    }
}

/// The id part of the request's credential (`dtmk.<id>.<secret>`, `dtma.<id>.<secret>`), not
/// verified: it names the bucket and the per-credential rules. Another bearer token (a JWT) or a
/// web session cookie is named by a hash of itself.
pub fn credential_id(headers: &HeaderMap) -> Option<String> {
    let short_hash = |text: &str| {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(text.as_bytes())[..8])
    };
    let text = match headers.get("x-api-key") {
        Some(v) => v.to_str().ok(),
        None => headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))),
    };
    let Some(text) = text else {
        return session_cookie(headers).map(|s| format!("s-{}", short_hash(s)));
    };
    let mut parts = text.trim().splitn(3, '.');
    let (prefix, id) = (parts.next()?, parts.next().unwrap_or(""));
    if matches!(prefix, "dtmk" | "dtma")
        && (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Some(id.to_ascii_lowercase());
    }
    Some(format!("t-{}", short_hash(text)))
}

/// The web session cookie (`api/sessions.rs`, `SESSION_COOKIE`), if the request has one.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    const SESSION_COOKIE: &str = "__Host-dtm_session";
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
}

/// The gateway layer (see the module header for its steps).
pub async fn protect(State(state): State<AppState>, req: Request<Body>, next: Next) -> Response {
    let mut resp = match admit(&state, req, next).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    };
    input::add_security_headers(&mut resp);
    resp
}

async fn admit(state: &AppState, req: Request<Body>, next: Next) -> Result<Response, ApiError> {
    let gw = &state.gateway;
    if let Err(e) = input::check_sizes(&req) {
        events::refused(&gw.events, "oversized_request", None, e.code);
        return Err(e);
    }
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let client = peer.map(|p| ip::client_ip(p, req.headers(), &gw.opts.trusted_proxies));
    let credential = credential_id(req.headers());
    if let Some(ip) = client {
        check_address(state, ip, credential.as_deref())?;
    }
    if let Some(group) = Group::of(req.method(), req.uri().path()) {
        let key: Arc<str> = match (&credential, client) {
            (Some(c), _) => Arc::from(format!("c:{c}")),
            (None, Some(ip)) => Arc::from(format!("ip:{ip}")),
            (None, None) => Arc::from("anonymous"),
        };
        if let Err(wait) = gw.limiter.check(group, &key) {
            events::rate_limited(&gw.events, group, &key, client);
            let after = limiter::retry_after_seconds(wait);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many {} requests for this credential; retry after {after} s", group.name()),
            )
            .with_retry_after(after));
        }
    }
    let Ok(_permit) = gw.in_flight.clone().try_acquire_owned() else {
        events::shed(&gw.events);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "this node is handling as many requests as it can; retry shortly or on another node",
        ));
    };
    // The handler's deadline (`REQUEST_TIMEOUT`, the layer inside this one) does not cover this
    // read, so it has its own: a client trickling a body cannot hold a slot for longer.
    let checked = tokio::time::timeout(crate::limits::REQUEST_TIMEOUT, input::check_json_depth(req)).await;
    let checked = checked.unwrap_or_else(|_| {
        Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", "the request body took too long to arrive"))
    });
    let req = match checked {
        Ok(req) => req,
        Err(e) => {
            let kind = if e.code == "json_too_deep" { "json_too_deep" } else { "bad_body" };
            events::refused(&gw.events, kind, client, e.code);
            return Err(e);
        }
    };
    let resp = next.run(req).await;
    if matches!(resp.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
        && let Some(ip) = client
    {
        auth_failed(state, ip);
    }
    Ok(resp)
}

/// The gateway's checks for a request that does not come through HTTP (gRPC `dtm.v1.Ingest`): the
/// address (blocks, IP rules, countries), the `ingest` rate limit of the credential, and the node's
/// concurrency limit. The permit is held while the request is handled. gRPC comes straight from the
/// socket, so `X-Forwarded-For` is never consulted.
pub fn admit_ingest(
    state: &AppState,
    peer: Option<IpAddr>,
    headers: &axum::http::HeaderMap,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    let gw = &state.gateway;
    let credential = credential_id(headers);
    if let Some(ip) = peer {
        check_address(state, ip, credential.as_deref())?;
    }
    let key: Arc<str> = match (&credential, peer) {
        (Some(c), _) => Arc::from(format!("c:{c}")),
        (None, Some(ip)) => Arc::from(format!("ip:{ip}")),
        (None, None) => Arc::from("anonymous"),
    };
    if let Err(wait) = gw.limiter.check(Group::Ingest, &key) {
        events::rate_limited(&gw.events, Group::Ingest, &key, peer);
        let after = limiter::retry_after_seconds(wait);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many ingest requests for this credential; retry after {after} s"),
        )
        .with_retry_after(after));
    }
    gw.in_flight.clone().try_acquire_owned().map_err(|_| {
        events::shed(&gw.events);
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "this node is handling as many requests as it can; retry shortly or on another node",
        )
    })
}

/// Counts a refused credential towards blocking the address (for requests outside HTTP).
pub fn note_outcome(state: &AppState, peer: Option<IpAddr>, e: &ApiError) {
    if matches!(e.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
        && let Some(ip) = peer
    {
        auth_failed(state, ip);
    }
}

fn check_address(state: &AppState, ip: IpAddr, credential: Option<&str>) -> Result<(), ApiError> {
    let gw = &state.gateway;
    if let Some(b) = gw.block_of(ip, crate::api::now_ms()) {
        events::refused(&gw.events, "blocked_address", Some(ip), "blocked");
        let seconds = b.expires_at_ms.saturating_sub(crate::api::now_ms()).div_ceil(1000);
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "address_blocked",
            format!("requests from this address are blocked for {seconds} s after repeated failures"),
        ));
    }
    let rules = gw.replicated().rules.clone();
    let denied =
        || ApiError::new(StatusCode::FORBIDDEN, "address_denied", "requests from this address are not allowed");
    if !rules.global.permits(ip) {
        events::refused(&gw.events, "ip_denied", Some(ip), "global rule");
        return Err(denied());
    }
    if let Some(set) = credential.and_then(|c| rules.credentials.get(c))
        && !set.permits(ip)
    {
        events::refused(&gw.events, "ip_denied", Some(ip), "credential rule");
        return Err(denied());
    }
    if let Some(country) = gw.countries.as_ref().and_then(|c| c.refuses(ip)) {
        events::refused(&gw.events, "foreign_address", Some(ip), &country);
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "address_denied",
            "requests from this country are not allowed",
        ));
    }
    Ok(())
}

/// Counts an authentication failure of `ip`; at the threshold, blocks it here and proposes the
/// block to the log.
fn auth_failed(state: &AppState, ip: IpAddr) {
    let gw = &state.gateway;
    if !gw.failures.record(ip, Instant::now()) {
        return;
    }
    let window_s = gw.opts.auth_failure_window.as_secs();
    if gw.opts.block_exempt.iter().any(|n| n.contains(&ip)) {
        tracing::warn!(target: "security", ip = %ip, failures = gw.opts.auth_failures_max, window_s, "repeated authentication failures from an exempt address; not blocked");
        return;
    }
    let now_ms = crate::api::now_ms();
    let block = state::AddressBlock {
        address: ip.to_string(),
        blocked_at_ms: now_ms,
        expires_at_ms: now_ms + gw.opts.block_duration.as_millis() as u64,
        reason: format!("{} failed authentications within {window_s} s", gw.opts.auth_failures_max),
        node_id: state.node.id,
    };
    gw.pending_blocks.lock().unwrap_or_else(|p| p.into_inner()).insert(ip, block.clone());
    events::address_blocked(&block);
    let state = state.clone();
    tokio::spawn(async move {
        let kind = state::gateway_command::Kind::BlockAddress(state::BlockAddress { block: Some(block) });
        match api::propose(&state, kind).await {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(target: "security", ip = %ip, code = e.code, "could not replicate a block; it holds on this node only")
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_identity_is_the_credential_id_or_a_hash() {
        let h = |name: &str, value: &str| {
            let mut h = HeaderMap::new();
            h.insert(axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"), value.parse().expect("value"));
            h
        };
        assert_eq!(credential_id(&h("x-api-key", "dtmk.0123456789ABCDEF.secret")).as_deref(), Some("0123456789abcdef"));
        assert_eq!(credential_id(&h("authorization", "Bearer dtma.00aa.s")).as_deref(), Some("00aa"));
        let jwt = credential_id(&h("authorization", "Bearer eyJhbGciOi.eyJzdWIi.sig")).expect("jwt");
        assert!(jwt.starts_with("t-") && jwt.len() == 18, "{jwt}");
        let session = credential_id(&h("cookie", "a=b; __Host-dtm_session=abc; c=d")).expect("session");
        assert!(session.starts_with("s-"), "{session}");
        assert_eq!(credential_id(&h("cookie", "a=b")), None);
        assert_eq!(credential_id(&HeaderMap::new()), None);
    }
}
