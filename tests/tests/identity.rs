//! Identity (issue 5, A4.3): users and roles, sessions with CSRF, TOTP for admins with single-use
//! codes across nodes, lockout and security events, OAuth client-credentials JWTs and OIDC bearer
//! tokens. Real `dtm serve` processes over TLS; replication matters, so three nodes.

use std::time::Duration;
use std::time::Instant;

use base64::Engine;
use dtm_tests::TestCluster;
use dtm_tests::eventually;
use jsonwebtoken::Algorithm;
use jsonwebtoken::EncodingKey;
use jsonwebtoken::Header;
use reqwest::Method;
use serde_json::Value;
use serde_json::json;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A signed-in user's session: its cookie and CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

struct Answer {
    status: u16,
    body: Value,
    set_cookies: Vec<String>,
}

async fn send(
    c: &TestCluster,
    node: u64,
    method: Method,
    path: &str,
    auth: Auth<'_>,
    body: Option<Value>,
) -> anyhow::Result<Answer> {
    let mut req = c.http.request(method, format!("{}{}", c.url(node), path));
    match auth {
        Auth::None => {}
        Auth::Bearer(t) => req = req.bearer_auth(t),
        Auth::ApiKey(k) => req = req.header("x-api-key", k),
        Auth::Session(s) => req = req.header("cookie", &s.cookie).header("x-csrf-token", &s.csrf),
        Auth::SessionNoCsrf(s) => req = req.header("cookie", &s.cookie),
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let set_cookies =
        resp.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).map(str::to_string).collect();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    Ok(Answer { status, body, set_cookies })
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Bearer(&'a str),
    ApiKey(&'a str),
    Session(&'a Session),
    SessionNoCsrf(&'a Session),
}

async fn login(c: &TestCluster, node: u64, body: Value) -> anyhow::Result<(Answer, Option<Session>)> {
    let a = send(c, node, Method::POST, "/api/v1/auth/login", Auth::None, Some(body)).await?;
    let session = a
        .set_cookies
        .iter()
        .find(|s| s.starts_with("__Host-dtm_session="))
        .map(|s| s.split(';').next().unwrap_or_default().to_string())
        .map(|cookie| Session { cookie, csrf: a.body["csrf_token"].as_str().unwrap_or_default().to_string() });
    Ok((a, session))
}

async fn create_user(c: &TestCluster, body: Value) -> anyhow::Result<()> {
    let (s, v) = c.admin(Method::POST, 1, "/api/v1/users", Some(body)).await?;
    anyhow::ensure!(s == 201, "create user: {s} {v}");
    Ok(())
}

async fn create_source_of(c: &TestCluster, id: &str, agency: &str) -> anyhow::Result<String> {
    let (s, v) =
        c.admin(Method::POST, 1, "/api/v1/sources", Some(json!({"id": id, "name": id, "agency": agency}))).await?;
    anyhow::ensure!(s == 201, "create source: {s} {v}");
    Ok(v["api_key"].as_str().unwrap_or_default().to_string())
}

fn totp(secret_b32: &str, at_secs: u64) -> String {
    let secret = totp_rs::Secret::try_from_base32(secret_b32).expect("base32 secret");
    let t = totp_rs::Builder::new().with_secret(secret).build_noncompliant();
    t.generate(at_secs).to_string()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Roles and object-level checks, sessions with CSRF, and logout on one node refusing the session
/// on another within a second. The bootstrap admin token stays an admin credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_sessions_csrf_and_logout_everywhere() -> anyhow::Result<()> {
    let c = TestCluster::start(3, &[]).await?;
    c.create_dataset(1, "ds").await?;
    let key_a = create_source_of(&c, "src-a", "agency-a").await?;
    create_source_of(&c, "src-b", "agency-b").await?;

    // No credentials: 401.
    for path in ["/api/v1/users", "/api/v1/datasets/ds/records", "/api/v1/auth/me"] {
        let a = send(&c, 2, Method::GET, path, Auth::None, None).await?;
        assert_eq!(a.status, 401, "{path}: {}", a.body);
    }
    // Passwords: length and a blocklist, no composition rules.
    let (s, v) = c
        .admin(
            Method::POST,
            1,
            "/api/v1/users",
            Some(json!({"username": "weak", "role": "analyst", "password": "password1"})),
        )
        .await?;
    assert_eq!(s, 422, "{v}");
    let (s, _) = c
        .admin(
            Method::POST,
            1,
            "/api/v1/users",
            Some(json!({"username": "short", "role": "analyst", "password": "abc"})),
        )
        .await?;
    assert_eq!(s, 422);
    create_user(&c, json!({"username": "ana", "role": "analyst", "password": "river stone quiet lamp"})).await?;
    create_user(
        &c,
        json!({"username": "dea", "role": "data-entry", "agency": "agency-a", "password": "paper kite orange"}),
    )
    .await?;

    // The analyst signs in on node 1 and uses the session on node 2.
    let (a, ana) = login(&c, 1, json!({"username": "ana", "password": "river stone quiet lamp"})).await?;
    assert_eq!(a.status, 200, "{}", a.body);
    let ana = ana.expect("session cookie");
    let cookie = a.set_cookies.iter().find(|s| s.starts_with("__Host-dtm_session=")).expect("cookie");
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "session cookie lacks {attr}: {cookie}");
    }
    let me = send(&c, 2, Method::GET, "/api/v1/auth/me", Auth::Session(&ana), None).await?;
    assert_eq!((me.status, me.body["role"].as_str()), (200, Some("analyst")), "{}", me.body);
    let r = send(&c, 2, Method::GET, "/api/v1/datasets/ds/records", Auth::Session(&ana), None).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    // Wrong role: 403. Missing CSRF token on a state-changing request: 403 too.
    let def = json!({"id": "ds2", "title": "x", "schema": {"type": "object"}});
    let r = send(&c, 2, Method::POST, "/api/v1/datasets", Auth::Session(&ana), Some(def.clone())).await?;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = send(&c, 2, Method::POST, "/api/v1/datasets", Auth::SessionNoCsrf(&ana), Some(def)).await?;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (403, Some("csrf")), "{}", r.body);
    let r = send(&c, 3, Method::GET, "/api/v1/users", Auth::Session(&ana), None).await?;
    assert_eq!(r.status, 403);
    // A source key may submit but not read records.
    let r = send(&c, 3, Method::GET, "/api/v1/datasets/ds/records", Auth::ApiKey(&key_a), None).await?;
    assert_eq!(r.status, 403, "{}", r.body);

    // A data-entry user submits for a source of its agency, not for another agency's.
    let (a, dea) = login(&c, 2, json!({"username": "dea", "password": "paper kite orange"})).await?;
    assert_eq!(a.status, 200, "{}", a.body);
    let dea = dea.expect("session");
    let rec = json!({"period": "2026-01", "n": 1});
    let r =
        send(&c, 3, Method::POST, "/api/v1/datasets/ds/records?source=src-a", Auth::Session(&dea), Some(rec.clone()))
            .await?;
    assert_eq!(r.status, 201, "{}", r.body);
    let r =
        send(&c, 3, Method::POST, "/api/v1/datasets/ds/records?source=src-b", Auth::Session(&dea), Some(rec)).await?;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = send(&c, 1, Method::GET, "/api/v1/datasets/ds/records", Auth::Session(&dea), None).await?;
    assert_eq!(r.status, 403);

    // Logout on node 1: node 2 refuses the session within a second.
    let r = send(&c, 1, Method::POST, "/api/v1/auth/logout", Auth::Session(&ana), None).await?;
    assert_eq!(r.status, 204, "{}", r.body);
    let started = Instant::now();
    eventually("node 2 to refuse the logged-out session", Duration::from_secs(1), || async {
        let r = send(&c, 2, Method::GET, "/api/v1/auth/me", Auth::Session(&ana), None).await.ok()?;
        (r.status == 401).then_some(())
    })
    .await?;
    assert!(started.elapsed() < Duration::from_secs(1));

    // Disabling a user (through node 2) ends its sessions everywhere (node 3 within a second).
    let (s, _) = c.admin(Method::DELETE, 2, "/api/v1/users/dea", None).await?;
    assert_eq!(s, 204);
    eventually("node 3 to refuse the disabled user's session", Duration::from_secs(1), || async {
        let r = send(&c, 3, Method::GET, "/api/v1/auth/me", Auth::Session(&dea), None).await.ok()?;
        (r.status == 401).then_some(())
    })
    .await?;
    let (a, _) = login(&c, 3, json!({"username": "dea", "password": "paper kite orange"})).await?;
    assert_eq!(a.status, 401);
    // The admin token is still an admin credential.
    let (s, v) = c.admin(Method::GET, 3, "/api/v1/users", None).await?;
    assert_eq!(s, 200);
    assert_eq!(v["users"].as_array().map(Vec::len), Some(2), "{v}");
    Ok(())
}

/// A4.3: an admin gets no session with the password alone; enrollment (otpauth URI, SVG QR code,
/// confirmation); a TOTP code is accepted once across nodes; recovery codes are single use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_totp_is_mandatory_and_single_use_across_nodes() -> anyhow::Result<()> {
    let c = TestCluster::start(3, &[]).await?;
    let pw = "correct horse battery staple";
    create_user(&c, json!({"username": "root1", "role": "admin", "password": pw})).await?;

    // Not enrolled yet: the password opens a session that may only enroll.
    let (a, pending) = login(&c, 1, json!({"username": "root1", "password": pw})).await?;
    assert_eq!((a.status, a.body["mfa_enrollment_required"].as_bool()), (200, Some(true)), "{}", a.body);
    let pending = pending.expect("enrollment session");
    let r = send(&c, 2, Method::GET, "/api/v1/users", Auth::Session(&pending), None).await?;
    assert_eq!(r.status, 403, "{}", r.body);
    let e = send(&c, 2, Method::POST, "/api/v1/auth/totp/enroll", Auth::Session(&pending), None).await?;
    assert_eq!(e.status, 200, "{}", e.body);
    let uri = e.body["otpauth_uri"].as_str().unwrap_or_default();
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    assert!(e.body["qr_svg"].as_str().unwrap_or_default().contains("<svg"));
    let secret = e.body["secret"].as_str().unwrap_or_default().to_string();
    let wrong = send(
        &c,
        2,
        Method::POST,
        "/api/v1/auth/totp/confirm",
        Auth::Session(&pending),
        Some(json!({"code": "000000"})),
    )
    .await?;
    assert_eq!(wrong.status, 422);
    let code = totp(&secret, now_secs());
    let ok =
        send(&c, 2, Method::POST, "/api/v1/auth/totp/confirm", Auth::Session(&pending), Some(json!({"code": code})))
            .await?;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let recovery: Vec<String> = ok.body["recovery_codes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    assert_eq!(recovery.len(), 10);
    let r = send(&c, 3, Method::GET, "/api/v1/users", Auth::Session(&pending), None).await?;
    assert_eq!(r.status, 200, "the confirming session is a full session now: {}", r.body);

    // Enrolled: the password alone gives no session.
    let (a, s) = login(&c, 1, json!({"username": "root1", "password": pw})).await?;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (401, Some("totp_required")), "{}", a.body);
    assert!(s.is_none() && a.set_cookies.is_empty());

    // The next step's code (within the accepted skew) on node 1; the same code on node 2 is refused.
    let next = totp(&secret, now_secs() + 30);
    let (a, s) = login(&c, 1, json!({"username": "root1", "password": pw, "totp": next})).await?;
    assert_eq!(a.status, 200, "{}", a.body);
    let admin = s.expect("session");
    let r = send(&c, 2, Method::GET, "/api/v1/users", Auth::Session(&admin), None).await?;
    assert_eq!(r.status, 200);
    let (a, s) = login(&c, 2, json!({"username": "root1", "password": pw, "totp": next})).await?;
    assert_eq!(a.status, 401, "a TOTP code must be accepted once: {}", a.body);
    assert!(s.is_none());

    // A recovery code works once.
    let (a, _) = login(&c, 3, json!({"username": "root1", "password": pw, "recovery_code": recovery[0]})).await?;
    assert_eq!(a.status, 200, "{}", a.body);
    let (a, _) = login(&c, 1, json!({"username": "root1", "password": pw, "recovery_code": recovery[0]})).await?;
    assert_eq!(a.status, 401, "{}", a.body);
    Ok(())
}

/// Ten bad logins lock the account on every node (even with the right password afterwards) and
/// leave security events; an unknown user gets the same answer as a wrong password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_logins_lock_the_account_and_leave_security_events() -> anyhow::Result<()> {
    let c = TestCluster::start(3, &[]).await?;
    create_user(&c, json!({"username": "ana", "role": "analyst", "password": "river stone quiet lamp"})).await?;
    let unknown = login(&c, 1, json!({"username": "nobody", "password": "whatever it is"})).await?.0;
    let wrong = login(&c, 1, json!({"username": "ana", "password": "not the password"})).await?.0;
    assert_eq!((unknown.status, wrong.status), (401, 401));
    assert_eq!(unknown.body, wrong.body, "unknown user and wrong password must look the same");
    for i in 1..10u64 {
        let (a, _) =
            login(&c, 1 + i % 3, json!({"username": "ana", "password": format!("wrong password {i}")})).await?;
        assert_eq!(a.status, 401);
    }
    for node in [2, 3] {
        let (a, s) = login(&c, node, json!({"username": "ana", "password": "river stone quiet lamp"})).await?;
        assert_eq!(a.status, 401, "locked account must refuse the right password on node {node}: {}", a.body);
        assert!(s.is_none());
    }
    let (s, v) = c.admin(Method::GET, 2, "/api/v1/users", None).await?;
    assert_eq!(s, 200);
    assert_eq!(v["users"][0]["locked"], json!(true), "{v}");
    let events = eventually("a replicated lockout event", Duration::from_secs(10), || async {
        let (s, v) = c.admin(Method::GET, 3, "/api/v1/security/events", None).await.ok()?;
        let list = v["events"].as_array()?.clone();
        let failed = list.iter().filter(|e| e["kind"] == "login_failed" && e["subject"] == "ana").count();
        let locked = list.iter().any(|e| e["kind"] == "lockout" && e["subject"] == "ana");
        // Each node batches its events (one command per second), so they arrive within a few seconds.
        (s == 200 && locked && failed >= 10).then_some(list)
    })
    .await?;
    assert!(events.iter().any(|e| e["kind"] == "login_failed" && e["subject"] == "nobody"));
    Ok(())
}

fn ed25519_key(seed_byte: u8) -> Vec<u8> {
    let mut der = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    der.extend((0..32u8).map(|i| i.wrapping_mul(7).wrapping_add(seed_byte)));
    der
}

fn sign(claims: &Value, alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, key).expect("sign")
}

/// OAuth client credentials: a JWT that every node accepts, with scopes as permissions; forged
/// tokens (`alg: none`, HS256 with the public key, another key, expired, wrong audience) are
/// refused; an OIDC token signed by a key of the configured JWKS file gets the mapped role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_tokens_and_oidc_tokens_are_verified_on_every_node() -> anyhow::Result<()> {
    let cfg = tempfile::tempdir()?;
    let idp = EncodingKey::from_ed_der(&ed25519_key(1));
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&idp, Algorithm::EdDSA)?;
    jwk.common.key_id = Some("idp-1".into());
    let jwks = cfg.path().join("idp-jwks.json");
    std::fs::write(&jwks, serde_json::to_vec(&json!({"keys": [jwk]}))?)?;
    let config = cfg.path().join("dtm.toml");
    std::fs::write(
        &config,
        format!(
            "[[oidc.issuers]]\nissuer = \"https://idp.test\"\naudience = \"dtm\"\njwks_file = \"{}\"\n\
             algorithms = [\"EdDSA\", \"ES256\"]\nrole_claim = \"groups\"\n[oidc.issuers.roles]\n\
             \"stats-team\" = \"analyst\"\n",
            jwks.display()
        ),
    )?;
    let c = TestCluster::start(3, &["--config", &config.display().to_string()]).await?;
    c.create_dataset(1, "ds").await?;
    c.create_source(1, "src-a").await?;

    let (s, reader) = c
        .admin(
            Method::POST,
            1,
            "/api/v1/oauth/clients",
            Some(json!({"name": "bi", "scopes": ["records:read", "aggregates:read"]})),
        )
        .await?;
    assert_eq!(s, 201, "{reader}");
    let (s, writer) = c
        .admin(
            Method::POST,
            2,
            "/api/v1/oauth/clients",
            Some(json!({"scopes": ["records:write"], "source_id": "src-a"})),
        )
        .await?;
    assert_eq!(s, 201, "{writer}");
    let (s, _) = c.admin(Method::POST, 2, "/api/v1/oauth/clients", Some(json!({"scopes": ["records:write"]}))).await?;
    assert_eq!(s, 400, "records:write needs a source");

    // Token by HTTP Basic on node 3 (the client was registered through node 1).
    let id = reader["client_id"].as_str().unwrap_or_default();
    let secret = reader["client_secret"].as_str().unwrap_or_default();
    let resp = c
        .http
        .post(format!("{}/oauth2/token", c.url(3)))
        .basic_auth(id, Some(secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let t: Value = resp.json().await?;
    assert_eq!((t["token_type"].as_str(), t["expires_in"].as_u64()), (Some("Bearer"), Some(300)), "{t}");
    assert_eq!(t["scope"], "records:read aggregates:read");
    let token = t["access_token"].as_str().unwrap_or_default().to_string();
    let header: Value = serde_json::from_slice(&B64.decode(token.split('.').next().unwrap_or_default())?)?;
    assert_eq!(header["alg"], "EdDSA");
    for node in 1..=3 {
        let r = send(&c, node, Method::GET, "/api/v1/datasets/ds/records", Auth::Bearer(&token), None).await?;
        assert_eq!(r.status, 200, "node {node}: {}", r.body);
    }
    let r = send(&c, 2, Method::GET, "/api/v1/users", Auth::Bearer(&token), None).await?;
    assert_eq!(r.status, 403);
    // Wrong secret, form-field authentication.
    let form = |id: &str, secret: &str| format!("grant_type=client_credentials&client_id={id}&client_secret={secret}");
    let bad = c
        .http
        .post(format!("{}/oauth2/token", c.url(1)))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(id, "wrong"))
        .send()
        .await?;
    assert_eq!(bad.status(), 401);
    // The write client submits as its source.
    let wid = writer["client_id"].as_str().unwrap_or_default();
    let wsecret = writer["client_secret"].as_str().unwrap_or_default();
    let resp = c
        .http
        .post(format!("{}/oauth2/token", c.url(2)))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(wid, wsecret))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let wtoken = resp.json::<Value>().await?["access_token"].as_str().unwrap_or_default().to_string();
    let r =
        send(&c, 3, Method::POST, "/api/v1/datasets/ds/records", Auth::Bearer(&wtoken), Some(json!({"n": 1}))).await?;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = send(&c, 3, Method::GET, "/api/v1/datasets/ds/records", Auth::Bearer(&wtoken), None).await?;
    assert_eq!(r.status, 403);

    // Forgeries against DTM's own issuer: alg none, HS256 keyed with the published public key.
    let jwks_pub = send(&c, 1, Method::GET, "/api/v1/auth/jwks", Auth::None, None).await?.body;
    let dtm_jwk = &jwks_pub["keys"][0];
    let kid = dtm_jwk["kid"].as_str().unwrap_or_default();
    let now = now_secs();
    let claims = json!({"iss": "urn:dtm:cluster", "aud": "urn:dtm:api", "sub": id, "iat": now, "exp": now + 300,
                        "scope": "records:read aggregates:read"});
    let none = format!(
        "{}.{}.",
        B64.encode(serde_json::to_vec(&json!({"alg": "none", "typ": "JWT", "kid": kid}))?),
        B64.encode(serde_json::to_vec(&claims)?)
    );
    let public_x = B64.decode(dtm_jwk["x"].as_str().unwrap_or_default())?;
    let hs_raw = sign(&claims, Algorithm::HS256, Some(kid), &EncodingKey::from_secret(&public_x));
    let hs_json = sign(&claims, Algorithm::HS256, Some(kid), &EncodingKey::from_secret(&serde_json::to_vec(dtm_jwk)?));
    let other_key = sign(&claims, Algorithm::EdDSA, Some(kid), &EncodingKey::from_ed_der(&ed25519_key(9)));
    let mut tampered = token.split('.').map(str::to_string).collect::<Vec<_>>();
    tampered[1] = B64.encode(serde_json::to_vec(&json!({"iss": "urn:dtm:cluster", "aud": "urn:dtm:api", "sub": id,
        "iat": now, "exp": now + 300, "scope": "records:read audit:read"}))?);
    let tampered = tampered.join(".");
    for (what, forged) in [
        ("alg none", &none),
        ("HS256 raw", &hs_raw),
        ("HS256 jwk", &hs_json),
        ("other key", &other_key),
        ("tampered", &tampered),
    ] {
        let r = send(&c, 2, Method::GET, "/api/v1/datasets/ds/records", Auth::Bearer(forged), None).await?;
        assert_eq!(r.status, 401, "{what}: {}", r.body);
    }

    // OIDC: a token from the configured issuer, signed by the JWKS key, gets the mapped role.
    let oidc = |aud: &str, exp: u64, groups: &[&str]| json!({"iss": "https://idp.test", "aud": aud, "sub": "lan@agency", "iat": now, "nbf": now - 5, "exp": exp, "groups": groups});
    let good = sign(&oidc("dtm", now + 300, &["stats-team"]), Algorithm::EdDSA, Some("idp-1"), &idp);
    for node in 1..=3 {
        let me = send(&c, node, Method::GET, "/api/v1/auth/me", Auth::Bearer(&good), None).await?;
        assert_eq!((me.status, me.body["role"].as_str()), (200, Some("analyst")), "node {node}: {}", me.body);
    }
    let r = send(&c, 1, Method::GET, "/api/v1/datasets/ds/records", Auth::Bearer(&good), None).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = send(&c, 1, Method::POST, "/api/v1/datasets", Auth::Bearer(&good), Some(json!({"id": "x"}))).await?;
    assert_eq!(r.status, 403);
    let unmapped = sign(&oidc("dtm", now + 300, &["visitors"]), Algorithm::EdDSA, Some("idp-1"), &idp);
    let r = send(&c, 1, Method::GET, "/api/v1/datasets/ds/records", Auth::Bearer(&unmapped), None).await?;
    assert_eq!(r.status, 403, "a token without a mapped role has no rights: {}", r.body);
    let refused = [
        (
            "other key",
            sign(
                &oidc("dtm", now + 300, &["stats-team"]),
                Algorithm::EdDSA,
                Some("idp-1"),
                &EncodingKey::from_ed_der(&ed25519_key(5)),
            ),
        ),
        (
            "wrong audience",
            sign(&oidc("someone-else", now + 300, &["stats-team"]), Algorithm::EdDSA, Some("idp-1"), &idp),
        ),
        ("expired", sign(&oidc("dtm", now - 600, &["stats-team"]), Algorithm::EdDSA, Some("idp-1"), &idp)),
        ("unknown kid", sign(&oidc("dtm", now + 300, &["stats-team"]), Algorithm::EdDSA, Some("idp-2"), &idp)),
        (
            "HS256 with the JWKS key",
            sign(
                &oidc("dtm", now + 300, &["stats-team"]),
                Algorithm::HS256,
                Some("idp-1"),
                &EncodingKey::from_secret(&B64.decode(jwk_x(&jwks)?)?),
            ),
        ),
        ("DTM issuer, IdP key", sign(&claims, Algorithm::EdDSA, Some(kid), &idp)),
    ];
    for (what, t) in &refused {
        let r = send(&c, 3, Method::GET, "/api/v1/auth/me", Auth::Bearer(t), None).await?;
        assert_eq!(r.status, 401, "{what}: {}", r.body);
    }
    // Revoking the client through node 1 refuses its tokens on node 2 within a second (the
    // revocation reaches node 2 when it applies that log entry, a heartbeat or so later).
    let (s, _) = c.admin(Method::DELETE, 1, &format!("/api/v1/oauth/clients/{id}"), None).await?;
    assert_eq!(s, 204);
    eventually("node 2 to refuse the revoked client's token", Duration::from_secs(1), || async {
        let r = send(&c, 2, Method::GET, "/api/v1/datasets/ds/records", Auth::Bearer(&token), None).await.ok()?;
        (r.status == 401).then_some(())
    })
    .await?;
    Ok(())
}

fn jwk_x(path: &std::path::Path) -> anyhow::Result<String> {
    let v: Value = serde_json::from_slice(&std::fs::read(path)?)?;
    Ok(v["keys"][0]["x"].as_str().unwrap_or_default().to_string())
}
