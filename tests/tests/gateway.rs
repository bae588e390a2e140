//! The API gateway (issue 5: A2.3, A2.4, A2.8, A4.1, F7) on real nodes over TLS: rate limits per
//! credential and operation group, changed at run time through the log; IP rules; blocking of an
//! address that keeps failing authentication, on every node, and lifting the block; header, URL
//! and JSON-depth limits; load shedding at the concurrency limit; security headers.
//!
//! Every test client is 127.0.0.1, so the tests that need other addresses configure loopback as a
//! trusted proxy and present an address in `X-Forwarded-For`, as a reverse proxy would.

use std::sync::Arc;
use std::time::Duration;

use dtm_tests::TestCluster;
use dtm_tests::eventually;
use reqwest::Method;
use serde_json::Value;
use serde_json::json;

/// Starts `n` nodes with `gateway_toml` as their configuration file (plus `extra` flags).
async fn start(n: u64, gateway_toml: &str, extra: &[&str]) -> anyhow::Result<(TestCluster, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("dtm.toml");
    std::fs::write(&path, gateway_toml)?;
    let mut args = vec!["--config".to_string(), path.display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args = args.iter().map(String::as_str).collect::<Vec<_>>();
    Ok((TestCluster::start(n, &args).await?, dir))
}

async fn setup(c: &TestCluster) -> anyhow::Result<(String, String)> {
    c.create_dataset(1, "etx").await?;
    Ok((c.create_source(1, "src-a").await?, c.create_source(1, "src-b").await?))
}

/// The `<id>` of `dtmk.<id>.<secret>`.
fn key_id(key: &str) -> String {
    key.split('.').nth(1).expect("key id").to_string()
}

/// Posts one record as `key` to `node`, optionally as if forwarded for `from`; returns the status,
/// the `Retry-After` header and the body.
async fn post(
    c: &TestCluster,
    node: u64,
    key: &str,
    from: Option<&str>,
    n: u64,
) -> anyhow::Result<(u16, Option<u64>, Value)> {
    let mut req = c
        .http
        .post(format!("{}/api/v1/datasets/etx/records", c.url(node)))
        .header("x-api-key", key)
        .json(&json!({"n": n}));
    if let Some(ip) = from {
        req = req.header("x-forwarded-for", ip);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
    Ok((status, after, resp.json().await.unwrap_or(Value::Null)))
}

/// A2.8: over its quota a credential gets 429 with Retry-After while another is served; a limit
/// set through the API reaches every node, loosening and tightening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quota_is_429_and_limits_set_at_run_time_reach_every_node() -> anyhow::Result<()> {
    let (c, _cfg) = start(3, "[gateway.rate_limits.ingest]\nper_second = 1\nburst = 3\n", &[]).await?;
    let (a, b) = setup(&c).await?;
    let mut limited = None;
    for i in 0..8 {
        let (s, after, v) = post(&c, 1, &a, None, i).await?;
        match s {
            201 => {}
            429 => {
                limited = Some((after, v));
                break;
            }
            other => anyhow::bail!("unexpected {other} {v}"),
        }
    }
    let (after, v) = limited.ok_or_else(|| anyhow::anyhow!("8 posts within a burst of 3 were never limited"))?;
    assert_eq!(v["error"]["code"], "rate_limited", "{v}");
    assert!(after.is_some_and(|s| (1..=2).contains(&s)), "Retry-After: {after:?}");
    let (s, _, v) = post(&c, 1, &b, None, 100).await?;
    assert_eq!(s, 201, "another credential is still served: {v}");

    // Loosen through node 2: every node lets A post freely.
    let body = json!({"limits": {"ingest": {"per_second": 10000, "burst": 10000}}});
    let (s, v) = c.admin(Method::PUT, 2, "/api/v1/gateway/limits", Some(body)).await?;
    assert_eq!(s, 200, "{v}");
    for node in 1..=3 {
        eventually(&format!("node {node} to apply the new limit"), Duration::from_secs(10), || async {
            for i in 0..10 {
                if post(&c, node, &a, None, 1_000 * node + i).await.ok()?.0 != 201 {
                    return None;
                }
            }
            Some(())
        })
        .await?;
    }
    let (s, v) = c.admin(Method::GET, 3, "/api/v1/gateway/limits", None).await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["limits"]["ingest"]["per_second"].as_u64(), v["limits"]["ingest"]["from"].as_str()),
        (Some(10000), Some("cluster"))
    );
    assert_eq!(v["limits"]["query"]["from"], "config", "{v}");

    // Tighten through node 1: node 3 refuses A's second post in a row.
    let body = json!({"limits": {"ingest": {"per_second": 1, "burst": 1}}});
    let (s, v) = c.admin(Method::PUT, 1, "/api/v1/gateway/limits", Some(body)).await?;
    assert_eq!(s, 200, "{v}");
    eventually("node 3 to apply the tighter limit", Duration::from_secs(10), || async {
        let first = post(&c, 3, &a, None, 5_000).await.ok()?.0;
        let second = post(&c, 3, &a, None, 5_001).await.ok()?.0;
        (first == 429 || second == 429).then_some(())
    })
    .await?;
    // Bad input to the endpoint is refused.
    let (s, _) = c
        .admin(
            Method::PUT,
            1,
            "/api/v1/gateway/limits",
            Some(json!({"limits": {"nosuch": {"per_second": 1, "burst": 1}}})),
        )
        .await?;
    assert_eq!(s, 400);
    let (s, _) = c
        .admin(
            Method::PUT,
            1,
            "/api/v1/gateway/limits",
            Some(json!({"limits": {"query": {"per_second": 0, "burst": 1}}})),
        )
        .await?;
    assert_eq!(s, 400);
    Ok(())
}

/// A4.1: per-credential and global IP rules, from loopback; a denied address gets 403 in JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_rules_deny_per_credential_and_globally() -> anyhow::Result<()> {
    let (c, _cfg) = start(1, "[gateway]\ntrusted_proxies = [\"127.0.0.0/8\"]\n", &[]).await?;
    let (a, b) = setup(&c).await?;

    // A's key may not be used from loopback; B's may.
    let rules = json!({"credentials": {key_id(&a): {"deny": ["127.0.0.0/8", "::1"]}}});
    let (s, v) = c.admin(Method::PUT, 1, "/api/v1/gateway/ip-rules", Some(rules)).await?;
    assert_eq!(s, 200, "{v}");
    let (s, _, v) = post(&c, 1, &a, None, 1).await?;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("address_denied")), "{v}");
    assert_eq!(post(&c, 1, &b, None, 2).await?.0, 201);

    // A global deny of a range with one allowed address in it.
    let rules = json!({"global": {"deny": ["203.0.113.0/24", "2001:db8::/32"], "allow": ["203.0.113.7"]}});
    let (s, v) = c.admin(Method::PUT, 1, "/api/v1/gateway/ip-rules", Some(rules)).await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(post(&c, 1, &a, None, 3).await?.0, 201, "the credential rule was replaced");
    let (s, _, v) = post(&c, 1, &b, Some("203.0.113.9"), 4).await?;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("address_denied")), "{v}");
    assert_eq!(post(&c, 1, &b, Some("2001:db8::5"), 5).await?.0, 403);
    assert_eq!(post(&c, 1, &b, Some("203.0.113.7"), 6).await?.0, 201, "the allowed hole");
    assert_eq!(post(&c, 1, &b, Some("198.51.100.1"), 7).await?.0, 201, "outside the denied range");
    // A client cannot escape by forging a hop on the left: the rightmost untrusted hop counts.
    assert_eq!(post(&c, 1, &b, Some("203.0.113.7, 203.0.113.9"), 8).await?.0, 403);

    let (s, v) = c.admin(Method::GET, 1, "/api/v1/gateway/ip-rules", None).await?;
    assert_eq!(s, 200);
    assert_eq!(v["global"]["allow"], json!(["203.0.113.7/32"]), "{v}");
    let (s, v) =
        c.admin(Method::PUT, 1, "/api/v1/gateway/ip-rules", Some(json!({"global": {"deny": ["10.0.0.0/33"]}}))).await?;
    assert_eq!(s, 400, "an invalid CIDR is refused: {v}");
    Ok(())
}

/// A4.1, F7: an address that keeps presenting bad credentials is blocked on every node; an
/// admin lifts the block through any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_bad_credentials_block_the_address_on_every_node() -> anyhow::Result<()> {
    let cfg = "[gateway]\ntrusted_proxies = [\"127.0.0.0/8\"]\nauth_failures_max = 5\nblock_duration_s = 600\n";
    let (c, _cfg) = start(3, cfg, &[]).await?;
    let (_a, b) = setup(&c).await?;
    let attacker = "198.51.100.7";
    let bad = "dtmk.0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for i in 0..5 {
        let (s, _, v) = post(&c, 1, bad, Some(attacker), i).await?;
        assert_eq!(s, 401, "{v}");
    }
    // Blocked even with a valid key, on the detecting node at once and on the others once the
    // block is applied there; other addresses are served.
    for node in 1..=3 {
        eventually(&format!("node {node} to block {attacker}"), Duration::from_secs(10), || async {
            let (s, _, v) = post(&c, node, &b, Some(attacker), 100 + node).await.ok()?;
            (s == 403 && v["error"]["code"] == "address_blocked").then_some(())
        })
        .await?;
        assert_eq!(post(&c, node, &b, None, 200 + node).await?.0, 201);
        assert_eq!(post(&c, node, &b, Some("198.51.100.8"), 300 + node).await?.0, 201);
    }
    let (s, v) = c.admin(Method::GET, 2, "/api/v1/gateway/blocks", None).await?;
    assert_eq!(s, 200, "{v}");
    let listed = v["blocks"].as_array().cloned().unwrap_or_default();
    let entry = listed.iter().find(|b| b["ip"] == attacker).ok_or_else(|| anyhow::anyhow!("not listed: {v}"))?;
    assert_eq!((entry["replicated"].as_bool(), entry["node_id"].as_u64()), (Some(true), Some(1)), "{v}");
    let ttl = entry["expires_at_ms"].as_u64().unwrap_or(0).saturating_sub(entry["blocked_at_ms"].as_u64().unwrap_or(0));
    assert_eq!(ttl, 600_000, "the configured block duration travels in the command");

    let (s, v) = c.admin(Method::DELETE, 3, &format!("/api/v1/gateway/blocks/{attacker}"), None).await?;
    assert_eq!(s, 200, "{v}");
    for node in 1..=3 {
        eventually(&format!("node {node} to lift the block"), Duration::from_secs(10), || async {
            (post(&c, node, &b, Some(attacker), 400 + node).await.ok()?.0 == 201).then_some(())
        })
        .await?;
    }
    let (s, _) = c.admin(Method::DELETE, 1, "/api/v1/gateway/blocks/not-an-ip", None).await?;
    assert_eq!(s, 400);
    let (s, _) = c.admin(Method::DELETE, 1, &format!("/api/v1/gateway/blocks/{attacker}"), None).await?;
    assert_eq!(s, 404, "no longer blocked");
    Ok(())
}

/// A2.4: large headers (431), long URLs (414) and deeply nested JSON (400) are refused with JSON,
/// nothing is stored, the node keeps serving, and every answer carries the security headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_deeply_nested_input_is_refused_with_json() -> anyhow::Result<()> {
    let c = TestCluster::start(1, &[]).await?;
    let (a, _) = setup(&c).await?;
    let url = format!("{}/api/v1/datasets/etx/records", c.url(1));

    let resp = c.http.get(format!("{}/api/v1/health", c.url(1))).header("x-padding", "p".repeat(20_000)).send().await?;
    assert_eq!(resp.status().as_u16(), 431);
    let v: Value = resp.json().await?;
    assert_eq!(v["error"]["code"], "headers_too_large", "{v}");

    let resp = c.http.get(format!("{}/api/v1/health?pad={}", c.url(1), "q".repeat(9_000))).send().await?;
    assert_eq!(resp.status().as_u16(), 414);
    assert_eq!(resp.json::<Value>().await?["error"]["code"], "uri_too_long");

    let deep = format!(r#"{{"n": 1, "x": {}1{}}}"#, "[".repeat(100), "]".repeat(100));
    let resp = c
        .http
        .post(&url)
        .header("x-api-key", &a)
        .header("content-type", "application/json")
        .body(deep.clone())
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = resp.json().await?;
    assert_eq!(v["error"]["code"], "json_too_deep", "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("64"), "the message names the limit: {v}");
    // Admin bodies too.
    let resp = c
        .http
        .post(format!("{}/api/v1/datasets", c.url(1)))
        .bearer_auth(&c.admin_token)
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 400);
    // Within the limit is fine, and nothing of the refused requests was stored.
    let ok = format!(r#"{{"n": 1, "x": {}1{}}}"#, "[".repeat(60), "]".repeat(60));
    let resp =
        c.http.post(&url).header("x-api-key", &a).header("content-type", "application/json").body(ok).send().await?;
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(c.records(1, "etx").await?.len(), 1);

    // Security headers on a success, an error and a refusal by the gateway.
    for (path, status) in [("/api/v1/health", 200), ("/api/v1/nosuch", 404), ("/api/v1/sources", 401)] {
        let resp = if status == 401 {
            c.http.post(format!("{}{path}", c.url(1))).json(&json!({})).send().await?
        } else {
            c.http.get(format!("{}{path}", c.url(1))).send().await?
        };
        assert_eq!(resp.status().as_u16(), status, "{path}");
        let h = resp.headers();
        assert!(h.get("strict-transport-security").is_some_and(|v| v.to_str().unwrap_or("").contains("max-age=")));
        assert_eq!(h.get("x-content-type-options").and_then(|v| v.to_str().ok()), Some("nosniff"));
        assert_eq!(h.get("referrer-policy").and_then(|v| v.to_str().ok()), Some("no-referrer"));
    }
    Ok(())
}

/// A2.3: past the concurrency limit the node sheds with 503 and Retry-After instead of queueing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_limit_sheds_with_503() -> anyhow::Result<()> {
    let c = Arc::new(TestCluster::start(1, &["--requests-in-flight-max", "2"]).await?);
    let (a, _) = setup(&c).await?;
    let mut seen = (0, 0);
    for round in 0..20 {
        let mut tasks = Vec::new();
        for i in 0..48 {
            let (c, a) = (c.clone(), a.clone());
            tasks.push(tokio::spawn(async move { post(&c, 1, &a, None, round * 100 + i).await }));
        }
        for t in tasks {
            let (s, after, v) = t.await??;
            match s {
                201 => seen.0 += 1,
                503 => {
                    assert_eq!(v["error"]["code"], "overloaded", "{v}");
                    assert!(after.is_some(), "503 carries Retry-After");
                    seen.1 += 1;
                }
                other => anyhow::bail!("unexpected {other}: {v}"),
            }
        }
        if seen.0 > 0 && seen.1 > 0 {
            break;
        }
    }
    assert!(seen.0 > 0 && seen.1 > 0, "served {} and shed {}", seen.0, seen.1);
    let (s, _) = c.admin(Method::GET, 1, "/api/v1/health", None).await?;
    assert_eq!(s, 200, "the node serves again once the burst is over");
    Ok(())
}

/// A4.1: with a country database and `allowed_countries`, a foreign address is refused, an
/// allowed or local one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_addresses_are_refused_by_the_country_database() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("countries.mmdb");
    std::fs::write(&db, dtm_tests::mmdb::tiny_mmdb())?;
    let cfg = format!(
        "[gateway]\ntrusted_proxies = [\"127.0.0.0/8\"]\ngeoip_db = \"{}\"\nallowed_countries = [\"VN\"]\n",
        db.display()
    );
    let (c, _cfg) = start(1, &cfg, &[]).await?;
    let (a, _) = setup(&c).await?;
    assert_eq!(post(&c, 1, &a, Some("1.2.3.4"), 1).await?.0, 201, "VN is allowed");
    let (s, _, v) = post(&c, 1, &a, Some("8.8.8.8"), 2).await?;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("address_denied")), "{v}");
    assert_eq!(post(&c, 1, &a, Some("9.9.9.9"), 3).await?.0, 403, "unknown to the database is foreign");
    assert_eq!(post(&c, 1, &a, Some("10.1.2.3"), 4).await?.0, 201, "private addresses are never foreign");
    assert_eq!(post(&c, 1, &a, None, 5).await?.0, 201, "loopback is never foreign");
    Ok(())
}
