//! The web pages in a real browser (issue 9, tests 2–4; A1.2 languages, A1.9 and F10 accessibility,
//! A5.1 dashboard, F2 charts): a 3-node cluster with a dataset, a source, records and one account per
//! role, then `tests/web/run.cjs` in headless Chromium (playwright-core, axe-core): keyboard-only
//! sign-in with TOTP enrollment and navigation with visible focus, zero WCAG 2.1 A/AA violations
//! on every page of `tests/web/pages.json` in Vietnamese and English at desktop and 360 px width,
//! and no untranslated text. Also plain HTTP checks of what the pages promise without a browser:
//! redirects, the language cookie, CSRF on forms, cache headers, session expiry.
//!
//! Needs Node and the packages of `tests/web/package.json` in `target/web-tools` and Chromium at
//! `/usr/bin/chromium` (or `CHROMIUM`); `scripts/ensure-tools.sh` installs them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use dtm_tests::TestCluster;
use reqwest::Method;
use serde_json::Value;
use serde_json::json;

const PASSWORD: &str = "web pages password 2026";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where the browser tools are; a clear error when `scripts/ensure-tools.sh` has not run.
fn tools() -> anyhow::Result<(PathBuf, PathBuf)> {
    let modules = std::env::var_os("DTM_WEB_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/web-tools"))
        .join("node_modules");
    let chromium = std::env::var_os("CHROMIUM").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/chromium".into());
    anyhow::ensure!(
        modules.join("playwright-core").exists() && modules.join("axe-core").exists(),
        "{} has no playwright-core/axe-core: run scripts/ensure-tools.sh",
        modules.display()
    );
    anyhow::ensure!(chromium.exists(), "no Chromium at {}: run scripts/ensure-tools.sh", chromium.display());
    Ok((modules, chromium))
}

/// An HTTPS client that trusts the cluster's CA and shows redirects instead of following them.
fn no_redirects(ca_pem: &[u8]) -> anyhow::Result<reqwest::Client> {
    use rustls::pki_types::pem::PemObject;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert?)?;
    }
    let cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()?)
}

fn totp(secret_b32: &str, at_secs: u64) -> anyhow::Result<String> {
    let secret = totp_rs::Secret::try_from_base32(secret_b32).map_err(|e| anyhow::anyhow!("base32: {e:?}"))?;
    Ok(totp_rs::Builder::new().with_secret(secret).build_noncompliant().generate(at_secs).to_string())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

async fn create_user(c: &TestCluster, username: &str, role: &str, agency: Option<&str>) -> anyhow::Result<()> {
    let mut body = json!({"username": username, "role": role, "password": PASSWORD});
    if let Some(a) = agency {
        body["agency"] = json!(a);
    }
    let (s, v) = c.admin(Method::POST, 1, "/api/v1/users", Some(body)).await?;
    anyhow::ensure!(s == 201, "create user {username}: {s} {v}");
    Ok(())
}

/// Enrolls a TOTP authenticator for an admin or operator through the API; returns its secret.
async fn enroll(c: &TestCluster, username: &str) -> anyhow::Result<String> {
    let (cookie, csrf) = c.sign_in_with_csrf(1, username, PASSWORD).await?;
    let post = |path: &str, body: Value| {
        c.http
            .post(format!("{}{path}", c.url(1)))
            .header("cookie", cookie.clone())
            .header("x-csrf-token", csrf.clone())
            .json(&body)
    };
    let v: Value = post("/api/v1/auth/totp/enroll", json!({})).send().await?.json().await?;
    let secret = v["secret"].as_str().context("enroll: secret")?.to_string();
    let resp = post("/api/v1/auth/totp/confirm", json!({"code": totp(&secret, now_secs())?})).send().await?;
    anyhow::ensure!(resp.status() == 200, "confirm: {}", resp.status());
    Ok(secret)
}

fn dataset() -> Value {
    json!({
        "id": "giao-dich",
        "title": "Giao dịch dịch vụ công",
        "description": "Số giao dịch dịch vụ công trực tuyến theo cơ quan, kênh và tháng",
        "owner": "Cục Chuyển đổi số",
        "schema": {
            "type": "object",
            "properties": {
                "agency": {"type": "string", "description": "Cơ quan"},
                "period": {"type": "string", "description": "Tháng (YYYY-MM)"},
                "channel": {"type": "string", "enum": ["web", "mobile"]},
                "transactions": {"type": "integer", "minimum": 0, "description": "Số giao dịch"}
            },
            "required": ["agency", "period", "channel", "transactions"]
        },
        "key": ["agency", "period", "channel"],
        "time_field": "period",
        "dimensions": ["agency", "channel"],
        "measures": {"transactions": "sum"},
        "units": {"transactions": "giao dịch"}
    })
}

/// A1.9, F10, A1.2, A5.1 (issue 9 tests 2, 3, 4): the browser checks pass on a 3-node cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn web_pages_are_accessible_translated_and_keyboard_operable() -> anyhow::Result<()> {
    let (modules, chromium) = tools()?;
    let c = TestCluster::start(3, &[]).await?;
    let (s, v) = c.admin(Method::POST, 1, "/api/v1/datasets", Some(dataset())).await?;
    anyhow::ensure!(s == 201, "dataset: {s} {v}");
    let (s, v) = c
        .admin(
            Method::POST,
            1,
            "/api/v1/sources",
            Some(json!({"id": "cong-dv", "name": "Cổng dịch vụ công", "agency": "bo-tt"})),
        )
        .await?;
    anyhow::ensure!(s == 201, "source: {s} {v}");
    let key = v["api_key"].as_str().context("api_key")?.to_string();
    let records = json!([
        {"agency": "bo-tt", "period": "2026-09", "channel": "web", "transactions": 12500},
        {"agency": "bo-tt", "period": "2026-10", "channel": "mobile", "transactions": 8300},
        {"agency": "bo-yt", "period": "2026-10", "channel": "web", "transactions": 4100},
    ]);
    let (s, v, _) = c.post(2, "giao-dich", &key, &records, None).await?;
    anyhow::ensure!(s == 200 || s == 201, "records: {s} {v}");
    for (user, role, agency) in [
        ("qt-web", "admin", None),
        ("vh-web", "operator", None),
        ("pt-web", "analyst", None),
        ("kt-web", "auditor", None),
        ("nl-web", "data-entry", Some("bo-tt")),
    ] {
        create_user(&c, user, role, agency).await?;
    }
    let operator_secret = enroll(&c, "vh-web").await?;
    let fixture = json!({
        "base_url": c.url(2),
        "dataset": "giao-dich",
        "source": "cong-dv",
        "accounts": {
            "admin": {"username": "qt-web", "password": PASSWORD},
            "operator": {"username": "vh-web", "password": PASSWORD, "totp_secret": operator_secret},
            "analyst": {"username": "pt-web", "password": PASSWORD},
            "auditor": {"username": "kt-web", "password": PASSWORD},
            "data-entry": {"username": "nl-web", "password": PASSWORD},
        },
    });
    let fixture_path = c.dir.path().join("web-fixture.json");
    std::fs::write(&fixture_path, serde_json::to_vec_pretty(&fixture)?)?;
    let script = root().join("tests/web/run.cjs");
    let run = tokio::process::Command::new("node")
        .arg(&script)
        .env("NODE_PATH", &modules)
        .env("CHROMIUM", &chromium)
        .env("DTM_WEB_FIXTURE", &fixture_path)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(420), run)
        .await
        .context("the browser checks took over 7 minutes")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        c.dump_logs();
    }
    anyhow::ensure!(out.status.success(), "browser checks failed:\n{stdout}");
    anyhow::ensure!(stdout.contains("keyboard: signed in with TOTP"), "the keyboard flow did not finish");
    Ok(())
}

/// What the pages promise without a browser (A1.2, A4.3): `/` leads to `/ui/`, pages need a session
/// and an expired one says so, `?lang=` sets the cookie and `<html lang>`, forms without the CSRF
/// field are refused, assets are cached for a year and pages never.
#[tokio::test(flavor = "multi_thread")]
async fn pages_redirect_translate_and_guard_forms() -> anyhow::Result<()> {
    let c = TestCluster::start(1, &[]).await?;
    create_user(&c, "pt-http", "analyst", None).await?;
    let http = no_redirects(&std::fs::read(c.tls_dir.join("ca.pem"))?)?;
    let base = c.url(1);
    let get = |path: &str, cookie: Option<&str>| {
        let mut r = http.get(format!("{base}{path}"));
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        r.send()
    };
    let r = get("/", None).await?;
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str()?), (303, "/ui/"));
    let r = get("/ui/catalog", None).await?;
    assert_eq!(r.status().as_u16(), 303);
    assert!(r.headers()["location"].to_str()?.starts_with("/ui/login?next=%2Fui%2Fcatalog"), "{:?}", r.headers());
    // A cookie that is no session (anymore) is told so.
    let stale = format!("__Host-dtm_session={}", "A".repeat(43));
    let r = get("/ui/catalog", Some(&stale)).await?;
    assert!(r.headers()["location"].to_str()?.contains("m=expired"), "{:?}", r.headers());
    let r = get("/ui/login?m=expired", None).await?;
    let page = r.text().await?;
    assert!(page.contains("<html lang=\"vi\">") && page.contains("Phiên làm việc đã hết hạn"), "{page}");
    // English on request, remembered in a cookie.
    let r = get("/ui/login?lang=en", None).await?;
    let set = r.headers().get("set-cookie").map(|v| v.to_str().unwrap_or("").to_string()).unwrap_or_default();
    assert!(set.starts_with("dtm_lang=en;"), "{set}");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(r.text().await?.contains("<html lang=\"en\">"));
    let page = get("/ui/login", Some("dtm_lang=en")).await?.text().await?;
    assert!(page.contains("<html lang=\"en\">") && page.contains("Sign in"), "{page}");
    // Sign in through the form.
    let r = http
        .post(format!("{base}/ui/login"))
        .form(&[("username", "pt-http"), ("password", PASSWORD), ("next", "/ui/catalog")])
        .send()
        .await?;
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str()?), (303, "/ui/catalog"));
    let cookie = dtm_tests::session_cookie(r.headers()).context("session cookie")?;
    // A wrong password: the form again, with an error summary linked to the field.
    let r = http.post(format!("{base}/ui/login")).form(&[("username", "pt-http"), ("password", "nope")]).send().await?;
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.text().await?.contains("href=\"#password\""));
    // An off-site `next` is ignored.
    let r = http
        .post(format!("{base}/ui/login"))
        .form(&[("username", "pt-http"), ("password", PASSWORD), ("next", "//evil.example/")])
        .send()
        .await?;
    assert_eq!(r.headers()["location"], "/ui/");
    // Pages of another role are refused; numbers and dates follow the language.
    let r = get("/ui/admin/users", Some(&cookie)).await?;
    assert_eq!(r.status().as_u16(), 403);
    let r = get("/ui/catalog", Some(&cookie)).await?;
    assert_eq!(r.status().as_u16(), 200);
    let page = r.text().await?;
    let css = page.split("href=\"/ui/assets/app.").nth(1).and_then(|s| s.split('"').next()).context("css link")?;
    let r = get(&format!("/ui/assets/app.{css}"), None).await?;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["cache-control"], "public, max-age=31536000, immutable");
    assert_eq!(get("/ui/assets/app.0000000000.css", None).await?.status().as_u16(), 404);
    // Sign-out is a form: without the CSRF field it is refused and the session stays.
    let r = http.post(format!("{base}/ui/logout")).header("cookie", &cookie).form(&[("x", "y")]).send().await?;
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(get("/ui/", Some(&cookie)).await?.status().as_u16(), 200);
    let home = get("/ui/", Some(&cookie)).await?.text().await?;
    let csrf = home.split("name=\"csrf\" value=\"").nth(1).and_then(|s| s.split('"').next()).context("csrf field")?;
    let r = http.post(format!("{base}/ui/logout")).header("cookie", &cookie).form(&[("csrf", csrf)]).send().await?;
    assert_eq!(r.status().as_u16(), 303);
    assert!(r.headers()["location"].to_str()?.starts_with("/ui/login?m=signed_out"));
    // The session is over on the node (and, a heartbeat later, everywhere).
    let r = get("/ui/", Some(&cookie)).await?;
    assert!(r.headers()["location"].to_str()?.contains("m=expired"), "{:?}", r.headers());
    Ok(())
}
