//! Client addresses and address rules: which address a request comes from (the socket's peer, or,
//! only behind a configured trusted proxy, the rightmost untrusted hop of `X-Forwarded-For`), CIDR
//! allow/deny lists, and the country restriction.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Parses a CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a bare address (a /32 or /128).
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>().map(IpNet::from).map_err(|_| format!("`{text}` is neither an IP address nor a CIDR"))
}

pub fn parse_nets(texts: &[String]) -> Result<Vec<IpNet>, String> {
    texts.iter().map(|t| parse_net(t)).collect()
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is the IPv4 address it carries, so that IPv4
/// rules match clients of a dual-stack listener.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn contains(nets: &[IpNet], ip: IpAddr) -> Option<u8> {
    nets.iter().filter(|n| n.contains(&ip)).map(IpNet::prefix_len).max()
}

/// One allow/deny list. The most specific matching entry decides, deny on a tie. When no entry
/// matches, the address is refused only if the set is a pure allow-list (allows and no denies).
/// So `allow` alone is an allow-list, `deny` alone a deny-list, and a denied range can have
/// allowed holes (`deny = ["0.0.0.0/0", "::/0"]` plus allows is an allow-list with exceptions).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleSet {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl RuleSet {
    pub fn parse(allow: &[String], deny: &[String]) -> Result<RuleSet, String> {
        Ok(RuleSet { allow: parse_nets(allow)?, deny: parse_nets(deny)? })
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (contains(&self.allow, ip), contains(&self.deny, ip)) {
            (Some(a), Some(d)) => a > d,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => self.allow.is_empty() || !self.deny.is_empty(),
        }
    }
}

/// The client's address. Without trusted proxies it is the socket's peer and `X-Forwarded-For` is
/// ignored (anyone can write it). When the peer is a trusted proxy, the `X-Forwarded-For` hops are
/// read from the right (the hop each proxy appended) and the first one that is not a trusted proxy
/// is the client; a malformed hop ends the walk there (the proxy that appended it is the client as
/// far as we can tell).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    let trusted = |ip: IpAddr| trusted_proxies.iter().any(|n| n.contains(&ip));
    if !trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let hops = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>();
    for hop in hops.iter().rev().flat_map(|v| v.rsplit(',')) {
        let Some(ip) = parse_hop(hop) else { return client };
        client = canonical(ip);
        if !trusted(client) {
            return client;
        }
    }
    client
}

/// A hop is an address, possibly with a port (`1.2.3.4:5678`, `[2001:db8::1]:443`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip())
}

/// Addresses that are never foreign: loopback, private, link-local, unique-local.
pub fn is_local(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xfe00) == 0xfc00 // fc00::/7
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // fe80::/10
        }
    }
}

/// The country of an address (ISO 3166-1 alpha-2), from a country database.
pub trait CountryLookup: Send + Sync {
    fn country(&self, ip: IpAddr) -> Option<String>;
}

/// A MaxMind-format database (`.mmdb`): GeoIP2/GeoLite2 Country, DB-IP Lite Country in MaxMind's
/// layout (`country.iso_code`) or in ip-location-db's (`country_code`).
pub struct MaxMindCountries(maxminddb::Reader<Vec<u8>>);

impl MaxMindCountries {
    pub fn open(path: &std::path::Path) -> Result<Self, maxminddb::MaxMindDbError> {
        maxminddb::Reader::open_readfile(path).map(MaxMindCountries)
    }
}

#[derive(serde::Deserialize)]
struct CountryRecord {
    #[serde(default)]
    country: Option<IsoCode>,
    #[serde(default)]
    country_code: Option<String>,
}

#[derive(serde::Deserialize)]
struct IsoCode {
    #[serde(default)]
    iso_code: Option<String>,
}

impl CountryLookup for MaxMindCountries {
    fn country(&self, ip: IpAddr) -> Option<String> {
        let found = self.0.lookup(ip).ok()?;
        let record: CountryRecord = found.decode().ok()??;
        record.country.and_then(|c| c.iso_code).or(record.country_code).map(|c| c.to_ascii_uppercase())
    }
}

/// The foreign-address restriction: an address whose country is not allowed is refused; local
/// addresses are never foreign; an address the database does not know is foreign.
pub struct CountryRule {
    pub lookup: Box<dyn CountryLookup>,
    pub allowed: Vec<String>,
}

impl CountryRule {
    /// `None` when the address may pass, else the country it was refused for (`"unknown"` if the
    /// database has none).
    pub fn refuses(&self, ip: IpAddr) -> Option<String> {
        let ip = canonical(ip);
        if is_local(ip) {
            return None;
        }
        match self.lookup.country(ip) {
            Some(c) if self.allowed.iter().any(|a| a.eq_ignore_ascii_case(&c)) => None,
            Some(c) => Some(c),
            None => Some("unknown".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn set(allow: &[&str], deny: &[&str]) -> RuleSet {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        RuleSet::parse(&s(allow), &s(deny)).expect("valid rules")
    }

    #[test]
    fn cidrs_parse_for_ipv4_and_ipv6_and_bad_ones_are_refused() {
        assert_eq!(parse_net("10.1.2.3/8").expect("v4").to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("2001:db8:abcd::1/32").expect("v6").to_string(), "2001:db8::/32");
        assert_eq!(parse_net("2001:db8::7").expect("bare v6").prefix_len(), 128);
        assert_eq!(parse_net(" 192.0.2.1 ").expect("bare v4").prefix_len(), 32);
        for bad in ["10.0.0.0/33", "2001:db8::/129", "example.org", "", "10.0.0/8"] {
            assert!(parse_net(bad).is_err(), "{bad} must be refused");
        }
        let v6 = set(&[], &["2001:db8::/32"]);
        assert!(!v6.permits(ip("2001:db8:1::5")));
        assert!(v6.permits(ip("2001:db9::5")));
        assert!(v6.permits(ip("10.0.0.1")), "an IPv6 rule does not touch IPv4");
    }

    #[test]
    fn the_most_specific_rule_decides() {
        let empty = RuleSet::default();
        assert!(empty.permits(ip("203.0.113.1")));
        let hole = set(&["127.0.0.1"], &["127.0.0.0/8"]);
        assert!(hole.permits(ip("127.0.0.1")));
        assert!(!hole.permits(ip("127.0.0.2")));
        assert!(hole.permits(ip("10.0.0.1")), "outside the denied range");
        let allow_only = set(&["10.0.0.0/8"], &[]);
        assert!(allow_only.permits(ip("10.9.9.9")));
        assert!(!allow_only.permits(ip("11.0.0.1")), "an allow list refuses what it does not name");
        let tie = set(&["192.0.2.0/24"], &["192.0.2.0/24"]);
        assert!(!tie.permits(ip("192.0.2.9")), "deny wins a tie");
        let mapped = set(&[], &["198.51.100.0/24"]);
        assert!(!mapped.permits(ip("::ffff:198.51.100.7")), "IPv4-mapped IPv6 matches IPv4 rules");
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().expect("header"));
        }
        h
    }

    #[test]
    fn forwarded_for_is_honoured_only_from_trusted_proxies() {
        let proxies = parse_nets(&["10.0.0.0/8".into(), "fd00::/8".into()]).expect("nets");
        let h = xff(&["203.0.113.9, 10.0.0.2"]);
        // The peer is not a proxy: the header is the client's own claim and is ignored.
        assert_eq!(client_ip(ip("198.51.100.1"), &h, &proxies), ip("198.51.100.1"));
        assert_eq!(client_ip(ip("198.51.100.1"), &h, &[]), ip("198.51.100.1"));
        // Behind two trusted proxies: the rightmost untrusted hop.
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &proxies), ip("203.0.113.9"));
        // A client that forges a hop on the left cannot choose its address.
        let forged = xff(&["1.1.1.1, 203.0.113.9"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &forged, &proxies), ip("203.0.113.9"));
        // Several headers are one list, in order; ports and IPv6 are understood.
        let split = xff(&["192.0.2.5", "[2001:db8::1]:443, 10.0.0.7:80"]);
        assert_eq!(client_ip(ip("fd00::1"), &split, &proxies), ip("2001:db8::1"));
        // Nothing but proxies: the leftmost proxy is the best we know.
        assert_eq!(client_ip(ip("10.0.0.1"), &xff(&["10.0.0.3"]), &proxies), ip("10.0.0.3"));
        // A malformed hop stops the walk at the proxy that appended it.
        assert_eq!(client_ip(ip("10.0.0.1"), &xff(&["203.0.113.9, junk"]), &proxies), ip("10.0.0.1"));
        // No header: the proxy itself.
        assert_eq!(client_ip(ip("10.0.0.1"), &HeaderMap::new(), &proxies), ip("10.0.0.1"));
    }

    struct Fake;
    impl CountryLookup for Fake {
        fn country(&self, ip: IpAddr) -> Option<String> {
            match ip.to_string().as_str() {
                "14.160.0.1" => Some("VN".into()),
                "8.8.8.8" => Some("US".into()),
                _ => None,
            }
        }
    }

    // The same hand-written database the process tests use (tests/src/mmdb.rs).
    include!("../../../tests/src/mmdb.rs");

    #[test]
    fn countries_are_read_from_a_maxmind_database_in_both_layouts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tiny.mmdb");
        std::fs::write(&path, tiny_mmdb()).expect("write");
        let db = MaxMindCountries::open(&path).expect("a valid database");
        assert_eq!(db.country(ip("1.2.3.4")).as_deref(), Some("VN"), "ip-location-db layout");
        assert_eq!(db.country(ip("8.8.8.8")).as_deref(), Some("US"), "MaxMind layout");
        assert_eq!(db.country(ip("9.9.9.9")), None);
        let rule = CountryRule { lookup: Box::new(db), allowed: vec!["VN".into()] };
        assert_eq!(rule.refuses(ip("1.2.3.4")), None);
        assert_eq!(rule.refuses(ip("8.8.8.8")).as_deref(), Some("US"));
        assert_eq!(rule.refuses(ip("192.168.0.1")), None);
    }

    #[test]
    fn foreign_addresses_are_refused_and_local_ones_never_are() {
        let rule = CountryRule { lookup: Box::new(Fake), allowed: vec!["vn".into()] };
        assert_eq!(rule.refuses(ip("14.160.0.1")), None);
        assert_eq!(rule.refuses(ip("8.8.8.8")).as_deref(), Some("US"));
        assert_eq!(rule.refuses(ip("203.0.113.1")).as_deref(), Some("unknown"));
        for local in ["127.0.0.1", "10.1.2.3", "192.168.1.1", "172.16.0.1", "::1", "fd12::1", "fe80::1"] {
            assert_eq!(rule.refuses(ip(local)), None, "{local} is local");
        }
    }
}
