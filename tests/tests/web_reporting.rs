//! Issue 9, browser tests 1 and 3 (C2(b), A4.3, A1.9, F10): headless Chromium (playwright-core,
//! `tests/web/reporting.cjs`) against a real 3-node cluster. A data-entry user whose TOTP was
//! enrolled through the API signs in with password and code, fills the report form generated from
//! the schema (a refused value first, its message next to the field), saves a draft, submits and
//! sees the signed receipt; then the same for the next period with the keyboard only, every focused
//! element showing a visible focus; an auditor finds both submitted values on the analysis page
//! and both reports submitted on the reporting status page.
//! On the way, axe-core checks the reporting pages (due list, form, form with errors, receipt) for
//! WCAG 2.1 A/AA violations in English and Vietnamese and at 360 px (issue 9 test 2).
//!
//! Needs `/usr/bin/chromium` and `target/web-tools/node_modules` (playwright-core), which
//! `scripts/ensure-tools.sh` installs.

use std::path::PathBuf;
use std::process::Command;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use dtm_tests::TestCluster;
use reqwest::Method;
use serde_json::Value;
use serde_json::json;

const PASSWORD: &str = "paper kite orange river";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The month before `period` (`YYYY-MM`).
fn month_before(period: &str) -> anyhow::Result<String> {
    let (y, m) = period.split_once('-').ok_or_else(|| anyhow::anyhow!("not a month: {period}"))?;
    let (y, m): (u32, u32) = (y.parse()?, m.parse()?);
    Ok(if m == 1 { format!("{:04}-12", y - 1) } else { format!("{y:04}-{:02}", m - 1) })
}

async fn admin(c: &TestCluster, method: Method, path: &str, body: Value) -> anyhow::Result<Value> {
    let (s, v) = c.admin(method, 1, path, Some(body)).await?;
    anyhow::ensure!((200..300).contains(&s), "{path}: {s} {v}");
    Ok(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn browser_reporting_with_totp_pointer_and_keyboard_only_issue9_tests_1_and_3() -> anyhow::Result<()> {
    // Where scripts/ensure-tools.sh installs the npm packages (`DTM_WEB_TOOLS`, default target/web-tools).
    let tools =
        std::env::var("DTM_WEB_TOOLS").map(PathBuf::from).unwrap_or_else(|_| workspace().join("target/web-tools"));
    let tools = if tools.is_relative() { workspace().join(tools) } else { tools };
    let modules = tools.join("node_modules");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    anyhow::ensure!(
        modules.join("playwright-core").exists() && PathBuf::from(&chromium).exists(),
        "playwright-core ({}) or Chromium ({chromium}) is missing: run scripts/ensure-tools.sh",
        modules.display()
    );
    let c = TestCluster::start(3, &[]).await?;
    let r = async {
        let def = json!({
            "id": "dvc_monthly", "title": "Online public services",
            "schema": {
                "type": "object", "required": ["agency", "period", "received", "on_time"],
                "x-order": ["received", "on_time", "satisfaction", "channel", "note"],
                "properties": {
                    "agency": {"type": "string", "title": "Agency"},
                    "period": {"type": "string", "title": "Period"},
                    "received": {"type": "integer", "minimum": 0, "title": "Applications received", "x-unit": "applications"},
                    "on_time": {"type": "integer", "minimum": 0, "title": "Processed on time"},
                    "satisfaction": {"type": "number", "minimum": 0, "maximum": 100, "x-unit": "%"},
                    "channel": {"type": "string", "enum": ["portal", "kiosk"]},
                    "note": {"type": "string", "maxLength": 200}
                }
            },
            "key": ["agency", "period"], "time_field": "period", "dimensions": ["agency", "channel"],
            "measures": {"received": "sum", "on_time": "sum"},
            "rules": [{"field": "on_time", "op": "<=", "other": "received", "message": "on-time cannot exceed received"}]
        });
        admin(&c, Method::POST, "/api/v1/datasets", def).await?;
        admin(&c, Method::POST, "/api/v1/sources", json!({"id": "dvc-dn", "name": "DVC", "agency": "ubnd-dn"})).await?;
        for (user, role) in [("dn-entry", "data-entry"), ("aud", "auditor")] {
            let body = json!({"username": user, "role": role, "agency": "ubnd-dn", "password": PASSWORD});
            admin(&c, Method::POST, "/api/v1/users", body).await?;
        }
        let mut ob = json!({"agencies": ["ubnd-dn"], "period_type": "month", "deadline_days": 366, "reminder_days": 0,
                            "agency_field": "agency", "period_field": "period"});
        let v = admin(&c, Method::PUT, "/api/v1/datasets/dvc_monthly/obligation", ob.clone()).await?;
        let last = v["first_period"].as_str().unwrap_or_default().to_string();
        let before = month_before(&last)?;
        ob["first_period"] = json!(before);
        admin(&c, Method::PUT, "/api/v1/datasets/dvc_monthly/obligation", ob).await?;

        // TOTP enrollment through the API; the confirming code is the previous time step's, so the
        // browser's sign-ins can use the current and the next one.
        let (cookie, csrf) = c.sign_in_with_csrf(2, "dn-entry", PASSWORD).await?;
        let enroll = c
            .http
            .post(format!("{}/api/v1/auth/totp/enroll", c.url(2)))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .send()
            .await?;
        let (s, e) = (enroll.status().as_u16(), enroll.json::<Value>().await?);
        anyhow::ensure!(s == 200, "enroll: {s} {e}");
        let secret = e["secret"].as_str().unwrap_or_default().to_string();
        let now_s = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let step = now_s / 30 - 1;
        let totp = totp_rs::Builder::new()
            .with_secret(totp_rs::Secret::try_from_base32(&secret).map_err(|e| anyhow::anyhow!("{e:?}"))?)
            .build_noncompliant();
        let code = totp.generate(step * 30).to_string();
        let confirm = c
            .http
            .post(format!("{}/api/v1/auth/totp/confirm", c.url(2)))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .json(&json!({"code": code}))
            .send()
            .await?;
        let (s, v) = (confirm.status().as_u16(), confirm.json::<Value>().await.unwrap_or(Value::Null));
        anyhow::ensure!(s == 200, "confirm: {s} {v}");
        // From now on the password alone does not sign the user in.
        let (s, v) = c
            .admin(Method::GET, 1, "/api/v1/users", None)
            .await
            .map(|(s, v)| (s, v["users"].clone()))?;
        anyhow::ensure!(
            s == 200 && v.as_array().is_some_and(|u| u.iter().any(|u| u["username"] == "dn-entry" && u["totp_enrolled"] == true)),
            "{v}"
        );

        let config = json!({
            "urls": [c.url(1), c.url(2), c.url(3)],
            "dataset": "dvc_monthly",
            "periods": [last, before],
            "entry": {"username": "dn-entry", "password": PASSWORD, "secret": secret, "last_step": step},
            "analyst": {"username": "aud", "password": PASSWORD},
            "values": [
                {"received": "4321", "on_time": "4000", "satisfaction": "97.5", "channel": "kiosk"},
                {"received": "1234", "on_time": "1200", "satisfaction": "88", "channel": "portal"}
            ],
            "analysis": true,
            "expected_in_analysis": ["4,321", "1,234"]
        });
        let out = Command::new("node")
            .arg(workspace().join("tests/web/reporting.cjs"))
            .env("NODE_PATH", &modules)
            .env("CHROMIUM", &chromium)
            .env("DTM_WEB_CONFIG", config.to_string())
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let result: Value = stdout.lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null);
        anyhow::ensure!(
            out.status.success() && result["ok"] == true,
            "browser test failed: {result}\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("reporting pages in Chromium: {}", result["timings_ms"]);
        anyhow::ensure!(result["focus_checks"].as_u64() >= Some(10), "too few focus checks: {result}");
        // axe-core ran on the due list, the form (clean, with errors, at 360 px) and the receipt.
        anyhow::ensure!(result["axe_checked"].as_array().map(Vec::len) >= Some(10), "axe did not run everywhere: {result}");

        // What the browser submitted is stored once per period, on channel web.
        let records = c.records(3, "dvc_monthly").await?;
        let received: Vec<i64> = records.iter().filter_map(|(_, r)| r["received"].as_i64()).collect();
        anyhow::ensure!(records.len() == 2 && received.contains(&4321) && received.contains(&1234), "{records:?}");
        Ok(())
    }
    .await;
    if r.is_err() {
        c.dump_logs();
    }
    r
}
