//! The reporting regime (issue 9; C2(b), Circular Art. 4.2(b): entry on the system under the
//! reporting regime) on a real 3-node cluster: an obligation set through one node is seen through
//! the others; a data-entry user's due list, drafts and submissions work through any node;
//! validation errors come back as 422 with the records API's per-field messages and store nothing;
//! a repeated submission stores nothing twice; corrections are new versions; admins see submitted,
//! draft, missing and late reports (JSON and CSV); every change is audited and the records carry
//! channel "web" in their lineage (F3, F8).

use std::time::Duration;

use dtm_tests::TestCluster;
use reqwest::Method;
use serde_json::Value;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

struct Session {
    cookie: String,
    csrf: String,
}

enum Auth<'a> {
    Admin,
    ApiKey(&'a str),
    User(&'a Session),
}

async fn send(
    c: &TestCluster,
    node: u64,
    method: Method,
    path: &str,
    auth: Auth<'_>,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value, bool)> {
    let mut req = c.http.request(method, format!("{}{}", c.url(node), path));
    req = match auth {
        Auth::Admin => req.bearer_auth(&c.admin_token),
        Auth::ApiKey(k) => req.header("x-api-key", k),
        Auth::User(s) => req.header("cookie", &s.cookie).header("x-csrf-token", &s.csrf),
    };
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let replayed = resp.headers().get("idempotent-replayed").is_some();
    Ok((status, resp.json::<Value>().await.unwrap_or(Value::Null), replayed))
}

async fn sign_in(c: &TestCluster, node: u64, user: &str, password: &str) -> anyhow::Result<Session> {
    let (cookie, csrf) = c.sign_in_with_csrf(node, user, password).await?;
    Ok(Session { cookie, csrf })
}

fn report_definition(id: &str) -> Value {
    json!({
        "id": id, "title": "Dịch vụ công trực tuyến / Online public services",
        "description": "Monthly report of each agency (Circular 12/2025, C2(b))",
        "schema": {
            "type": "object", "required": ["agency", "period", "received", "on_time"],
            "properties": {
                "agency": {"type": "string", "title": "Agency"},
                "period": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$", "title": "Period"},
                "received": {"type": "integer", "minimum": 0, "title": "Applications received", "x-unit": "applications"},
                "on_time": {"type": "integer", "minimum": 0, "title": "Processed on time"},
                "satisfaction": {"type": "number", "minimum": 0, "maximum": 100, "description": "Share of satisfied users", "x-unit": "%"},
                "channel": {"type": "string", "enum": ["portal", "kiosk"]},
                "note": {"type": "string", "maxLength": 200}
            }
        },
        "key": ["agency", "period"], "time_field": "period", "dimensions": ["agency"],
        "measures": {"received": "sum", "on_time": "sum"}, "units": {"on_time": "applications"},
        "rules": [{"field": "on_time", "op": "<=", "other": "received", "message": "on-time cannot exceed received"}]
    })
}

fn row<'a>(rows: &'a Value, dataset: &str, agency: &str) -> Option<&'a Value> {
    rows.as_array()?.iter().find(|r| r["dataset"] == dataset && r["agency"] == agency)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reporting_regime_c2b_obligation_drafts_submission_status_audit_lineage() -> anyhow::Result<()> {
    let c = TestCluster::start(3, &[]).await?;
    let r = async {
        for id in ["dvc_monthly", "dvc_late"] {
            let (s, v, _) =
                send(&c, 1, Method::POST, "/api/v1/datasets", Auth::Admin, Some(report_definition(id))).await?;
            anyhow::ensure!(s == 201, "define {id}: {s} {v}");
        }
        let mut keys = Vec::new();
        for (id, agency) in [("dvc-dn", "ubnd-dn"), ("dvc-hue", "ubnd-hue")] {
            let body = json!({"id": id, "name": id, "agency": agency});
            let (s, v, _) = send(&c, 1, Method::POST, "/api/v1/sources", Auth::Admin, Some(body)).await?;
            anyhow::ensure!(s == 201, "source {id}: {s} {v}");
            keys.push(v["api_key"].as_str().unwrap_or_default().to_string());
        }
        for (user, agency) in [("dn-entry", "ubnd-dn"), ("kb-entry", "ubnd-kb")] {
            let body = json!({"username": user, "role": "data-entry", "agency": agency, "password": "paper kite orange river"});
            let (s, v, _) = send(&c, 1, Method::POST, "/api/v1/users", Auth::Admin, Some(body)).await?;
            anyhow::ensure!(s == 201, "user {user}: {s} {v}");
        }

        // Obligations are checked: an agency without a source, an unknown period type, a field the
        // schema does not have, a caller without the admin role.
        let good = json!({"agencies": ["ubnd-dn", {"agency": "ubnd-hue", "source": "dvc-hue"}], "period_type": "month",
                          "deadline_days": 366, "reminder_days": 366, "agency_field": "agency", "period_field": "period"});
        for (bad, why) in [
            (json!({"agencies": ["ubnd-kb"], "period_type": "month"}), "no source"),
            (json!({"agencies": ["ubnd-dn"], "period_type": "week"}), "period type"),
            (json!({"agencies": ["ubnd-dn"], "period_type": "month", "agency_field": "nope"}), "field"),
            (json!({"agencies": ["ubnd-dn"], "period_type": "month", "deadline": 3}), "unknown member"),
        ] {
            let (s, v, _) =
                send(&c, 1, Method::PUT, "/api/v1/datasets/dvc_monthly/obligation", Auth::Admin, Some(bad)).await?;
            anyhow::ensure!(s == 400 && v["error"]["code"].is_string(), "{why}: {s} {v}");
        }
        let (s, v, _) =
            send(&c, 1, Method::PUT, "/api/v1/datasets/dvc_monthly/obligation", Auth::ApiKey(&keys[0]), Some(good.clone()))
                .await?;
        anyhow::ensure!(s == 403, "a source key may not set an obligation: {s} {v}");
        let (s, v, _) =
            send(&c, 1, Method::PUT, "/api/v1/datasets/dvc_monthly/obligation", Auth::Admin, Some(good)).await?;
        anyhow::ensure!(s == 200, "set obligation: {s} {v}");
        anyhow::ensure!(v["agencies"][0] == json!({"agency": "ubnd-dn", "source": "dvc-dn"}), "source resolved: {v}");
        let period = v["first_period"].as_str().unwrap_or_default().to_string();
        anyhow::ensure!(period.len() == 7, "first period defaults to the last month: {v}");
        // The late dataset: due when the period ended, so its last month is already late.
        let late = json!({"agencies": ["ubnd-dn", "ubnd-hue"], "period_type": "month", "deadline_days": 0,
                          "agency_field": "agency", "period_field": "period"});
        let (s, v, _) = send(&c, 1, Method::PUT, "/api/v1/datasets/dvc_late/obligation", Auth::Admin, Some(late)).await?;
        anyhow::ensure!(s == 200, "set late obligation: {s} {v}");

        // Set on node 1, seen on node 3.
        let (s, v, _) = send(&c, 3, Method::GET, "/api/v1/datasets/dvc_monthly/obligation", Auth::Admin, None).await?;
        anyhow::ensure!(s == 200 && v["period_type"] == "month" && v["deadline_days"] == 366, "obligation on node 3: {s} {v}");

        // The data-entry user signs in on node 2 and sees the reports due, with the reminder.
        let dn = sign_in(&c, 2, "dn-entry", "paper kite orange river").await?;
        let (s, v, _) = send(&c, 2, Method::GET, "/api/v1/reporting/due", Auth::User(&dn), None).await?;
        anyhow::ensure!(s == 200, "due: {s} {v}");
        let due = row(&v["reports"], "dvc_monthly", "ubnd-dn").ok_or_else(|| anyhow::anyhow!("dvc_monthly not due: {v}"))?;
        anyhow::ensure!(due["status"] == "missing" && due["reminder"] == true && due["period"] == period.as_str(), "{due}");
        let overdue = row(&v["reports"], "dvc_late", "ubnd-dn").ok_or_else(|| anyhow::anyhow!("dvc_late not due: {v}"))?;
        anyhow::ensure!(overdue["status"] == "late" && overdue["late"] == true, "{overdue}");

        // The form is generated from the schema: fixed agency and period, units, types, bounds.
        let form_path = format!("/api/v1/reporting/forms/dvc_monthly/{period}");
        let (s, v, _) = send(&c, 2, Method::GET, &form_path, Auth::User(&dn), None).await?;
        anyhow::ensure!(s == 200, "form: {s} {v}");
        let fields = v["form"]["fields"].as_array().cloned().unwrap_or_default();
        let field = |n: &str| fields.iter().find(|f| f["name"] == n).cloned().unwrap_or(Value::Null);
        anyhow::ensure!(field("agency")["fixed"] == "ubnd-dn" && field("period")["fixed"] == period.as_str(), "{v}");
        let received = field("received");
        anyhow::ensure!(
            received["unit"] == "applications" && received["input"] == "number" && received["required"] == true
                && received["min"] == "0" && received["label"] == "Applications received",
            "{received}"
        );
        anyhow::ensure!(field("satisfaction")["unit"] == "%" && field("satisfaction")["max"] == "100", "{v}");
        anyhow::ensure!(field("on_time")["unit"] == "applications", "unit from the definition: {v}");
        anyhow::ensure!(field("channel")["input"] == "select" && field("channel")["options"] == json!(["portal", "kiosk"]), "{v}");

        // A user of an agency the obligation does not name gets no form.
        let kb = sign_in(&c, 1, "kb-entry", "paper kite orange river").await?;
        let (s, v, _) = send(&c, 1, Method::GET, &form_path, Auth::User(&kb), None).await?;
        anyhow::ensure!(s == 403, "other agency: {s} {v}");

        // A draft saved through node 2 is served by node 3 and shows in the admin's status.
        let draft_path = format!("/api/v1/reporting/drafts/dvc_monthly/{period}");
        let draft = json!({"values": {"received": "120", "note": "chưa xong"}});
        let (s, v, _) = send(&c, 2, Method::PUT, &draft_path, Auth::User(&dn), Some(draft)).await?;
        anyhow::ensure!(s == 200 && v["saved_by"] == "dn-entry", "draft: {s} {v}");
        let (s, v, _) = send(&c, 3, Method::GET, &draft_path, Auth::User(&dn), None).await?;
        anyhow::ensure!(s == 200 && v["values"]["received"] == "120" && v["values"]["note"] == "chưa xong", "draft on node 3: {s} {v}");
        let status_path = format!("/api/v1/reporting/status?dataset=dvc_monthly&period={period}");
        let (s, v, _) = send(&c, 3, Method::GET, &status_path, Auth::Admin, None).await?;
        anyhow::ensure!(s == 200, "status: {s} {v}");
        anyhow::ensure!(row(&v["reports"], "dvc_monthly", "ubnd-dn").is_some_and(|r| r["status"] == "draft"), "{v}");
        anyhow::ensure!(row(&v["reports"], "dvc_monthly", "ubnd-hue").is_some_and(|r| r["status"] == "missing"), "{v}");

        // Invalid values: 422 with the validator's messages per field, the same as the records
        // API answers for the same record, and nothing stored.
        let submit_path = format!("/api/v1/reporting/submissions/dvc_monthly/{period}");
        let bad = json!({"values": {"received": "many", "on_time": "5", "satisfaction": "150"}});
        let (s, v, _) = send(&c, 3, Method::POST, &submit_path, Auth::User(&dn), Some(bad)).await?;
        anyhow::ensure!(s == 422 && v["error"]["code"] == "invalid_records", "invalid: {s} {v}");
        let details = v["error"]["details"].as_array().cloned().unwrap_or_default();
        anyhow::ensure!(details.iter().any(|d| d["field"] == "/received" && d["input"] == "received"), "{v}");
        anyhow::ensure!(details.iter().any(|d| d["field"] == "/satisfaction" && d["input"] == "satisfaction"), "{v}");
        let same = json!({"agency": "ubnd-dn", "period": period, "received": "many", "on_time": 5, "satisfaction": 150});
        let (s, rest, _) =
            send(&c, 3, Method::POST, "/api/v1/datasets/dvc_monthly/records", Auth::ApiKey(&keys[0]), Some(same)).await?;
        anyhow::ensure!(s == 422, "REST: {s} {rest}");
        let messages = |d: &Value| {
            let mut m: Vec<String> = d["error"]["details"]
                .as_array()
                .map(|a| a.iter().map(|x| format!("{} {}", x["field"], x["message"])).collect())
                .unwrap_or_default();
            m.sort();
            m
        };
        anyhow::ensure!(messages(&v) == messages(&rest), "same messages as REST: {v} vs {rest}");
        anyhow::ensure!(c.records(1, "dvc_monthly").await?.is_empty(), "an invalid report stored something");

        // A valid submission through node 2; the same values sent three times at once (a double
        // click) store one record.
        let values = json!({"values": {"received": "120", "on_time": "110", "satisfaction": "97,5", "channel": "portal"}});
        let sends = (0..3).map(|_| send(&c, 2, Method::POST, &submit_path, Auth::User(&dn), Some(values.clone())));
        let answers = futures::future::join_all(sends).await;
        let mut created = 0;
        let mut first: Option<Value> = None;
        for a in answers {
            let (s, v, replayed) = a?;
            anyhow::ensure!((s == 201 && !replayed) || (s == 200 && replayed), "submit: {s} {replayed} {v}");
            created += usize::from(s == 201);
            if let Some(f) = &first {
                anyhow::ensure!(f["record_ids"] == v["record_ids"], "one record for all: {f} {v}");
            } else {
                first = Some(v);
            }
        }
        let first = first.ok_or_else(|| anyhow::anyhow!("no answer"))?;
        anyhow::ensure!(created == 1 && first["version"] == 1 && first["late"] == false, "{created} {first}");
        anyhow::ensure!(first["answer"]["receipt"]["signature"].is_string(), "signed receipt: {first}");
        let record_id = first["record_ids"][0].as_str().unwrap_or_default().to_string();
        let stored = c.records(1, "dvc_monthly").await?;
        anyhow::ensure!(stored.len() == 1, "a double click stored {} records", stored.len());
        anyhow::ensure!(stored[0].1["received"] == 120 && stored[0].1["satisfaction"] == 97.5 && stored[0].1["agency"] == "ubnd-dn", "{:?}", stored[0]);
        // Once more later: answered from the report's account, 200 and replayed.
        let (s, v, replayed) = send(&c, 1, Method::POST, &submit_path, Auth::User(&dn), Some(values)).await?;
        anyhow::ensure!(s == 200 && replayed && v["record_ids"][0] == record_id.as_str(), "replay: {s} {v}");
        // The draft went with the submission.
        let (s, _, _) = send(&c, 3, Method::GET, &draft_path, Auth::User(&dn), None).await?;
        anyhow::ensure!(s == 404, "draft after submission: {s}");

        // Other values without a reason: 409; with a reason: a correction, version 2.
        let changed = json!({"values": {"received": "130", "on_time": "110"}});
        let (s, v, _) = send(&c, 3, Method::POST, &submit_path, Auth::User(&dn), Some(changed.clone())).await?;
        anyhow::ensure!(s == 409 && v["error"]["code"] == "already_submitted", "{s} {v}");
        let mut correction = changed;
        correction["correction_reason"] = json!("counted the kiosk too");
        let (s, v, _) = send(&c, 3, Method::POST, &submit_path, Auth::User(&dn), Some(correction)).await?;
        anyhow::ensure!(s == 201 && v["version"] == 2, "correction: {s} {v}");
        let corrected_id = v["record_ids"][0].as_str().unwrap_or_default().to_string();
        let (s, v, _) = send(&c, 1, Method::GET, &format!("{submit_path}?agency=ubnd-dn"), Auth::Admin, None).await?;
        anyhow::ensure!(s == 200 && v["versions"].as_array().map(Vec::len) == Some(2), "versions: {s} {v}");
        anyhow::ensure!(v["versions_truncated"] == false, "every version listed: {v}");

        // Lineage: channel web, the correction names what it corrects.
        let (s, v, _) = send(&c, 2, Method::GET, &format!("/api/v1/lineage/records/{record_id}"), Auth::Admin, None).await?;
        anyhow::ensure!(s == 200 && v["channel"] == "web" && v["source"] == "dvc-dn", "lineage: {s} {v}");
        let (s, v, _) =
            send(&c, 2, Method::GET, &format!("/api/v1/lineage/records/{corrected_id}"), Auth::Admin, None).await?;
        anyhow::ensure!(s == 200 && v["channel"] == "web" && v.to_string().contains(&record_id), "correction lineage: {s} {v}");

        // Status: submitted (not late), missing, late; CSV export.
        let (s, v, _) = send(&c, 2, Method::GET, "/api/v1/reporting/status", Auth::Admin, None).await?;
        anyhow::ensure!(s == 200, "status: {s} {v}");
        let r = row(&v["reports"], "dvc_monthly", "ubnd-dn").cloned().unwrap_or_default();
        anyhow::ensure!(r["status"] == "submitted" && r["late"] == false && r["submitted_by"] == "dn-entry" && r["version"] == 2, "{r}");
        anyhow::ensure!(row(&v["reports"], "dvc_late", "ubnd-hue").is_some_and(|r| r["status"] == "late"), "{v}");
        anyhow::ensure!(v["summary"]["late"].as_u64() >= Some(2) && v["summary"]["submitted"] == 1, "{v}");
        anyhow::ensure!(v["truncated"] == false, "a short answer is complete: {v}");
        let resp = c
            .http
            .get(format!("{}/api/v1/reporting/status?format=csv", c.url(3)))
            .bearer_auth(&c.admin_token)
            .send()
            .await?;
        anyhow::ensure!(resp.headers().get("content-type").is_some_and(|t| t.to_str().unwrap_or("").starts_with("text/csv")));
        anyhow::ensure!(resp.headers().get("x-truncated").is_some_and(|t| t == "false"), "X-Truncated");
        let csv = resp.text().await?;
        anyhow::ensure!(csv.starts_with("dataset,agency,period,status,late,"), "{csv}");
        anyhow::ensure!(csv.contains(&format!("dvc_late,ubnd-dn,{period},late,true,")), "{csv}");
        anyhow::ensure!(csv.contains(&format!("dvc_monthly,ubnd-dn,{period},submitted,false,")), "{csv}");
        // A submission after the deadline is submitted, and late.
        let late_values = json!({"values": {"received": "1", "on_time": "1"}});
        let (s, v, _) = send(
            &c,
            1,
            Method::POST,
            &format!("/api/v1/reporting/submissions/dvc_late/{period}"),
            Auth::User(&dn),
            Some(late_values),
        )
        .await?;
        anyhow::ensure!(s == 201 && v["late"] == true, "late submission: {s} {v}");
        // Data-entry users do not see the status table.
        let (s, _, _) = send(&c, 2, Method::GET, "/api/v1/reporting/status", Auth::User(&dn), None).await?;
        anyhow::ensure!(s == 403, "status as data-entry: {s}");

        // Audit: who set the obligation, saved the draft, submitted and corrected, and how it went.
        for (op, principal) in [
            ("reporting.obligation.set", "admin:"),
            ("reporting.draft.save", "user:dn-entry"),
            ("reporting.report.submit", "user:dn-entry"),
            ("reporting.report.correct", "user:dn-entry"),
        ] {
            let path = format!("/api/v1/audit?operation={op}&consistency=linearizable");
            let found = dtm_tests::eventually(op, WAIT, || async {
                let (s, v, _) = send(&c, 3, Method::GET, &path, Auth::Admin, None).await.ok()?;
                let entries = v["entries"].as_array()?.clone();
                (s == 200
                    && entries.iter().any(|e| {
                        e["operation"] == op
                            && e["principal"].as_str().unwrap_or("").starts_with(principal)
                            && e["outcome"] == "ok"
                    }))
                .then_some(entries)
            })
            .await?;
            if op.starts_with("reporting.report") {
                anyhow::ensure!(found.iter().any(|e| e["channel"] == "web" && e["target"] == format!("report/dvc_monthly/ubnd-dn/{period}")), "{found:?}");
            }
        }
        // The records were audited like API data, on channel web.
        let path = "/api/v1/audit?operation=records.ingest&consistency=linearizable";
        let (s, v, _) = send(&c, 3, Method::GET, path, Auth::Admin, None).await?;
        anyhow::ensure!(s == 200, "{s} {v}");
        anyhow::ensure!(
            v["entries"].as_array().is_some_and(|a| a.iter().any(|e| e["channel"] == "web" && e["principal"] == "user:dn-entry")),
            "records audit on channel web: {v}"
        );
        Ok(())
    }
    .await;
    if r.is_err() {
        c.dump_logs();
    }
    r
}

/// The reporting pages without JavaScript (issue 9; C2(b), A1.9): the due list, the form generated
/// from the schema, the validator's messages next to each field with a summary linking to them
/// (nothing stored), a draft, a submission that ends on the receipt page, and the admin's status
/// page with its CSV link. Sessions made on one node are used on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reporting_pages_c2b_form_errors_draft_submit_receipt_status() -> anyhow::Result<()> {
    let c = TestCluster::start(3, &[]).await?;
    let r = async {
        let (s, v, _) =
            send(&c, 1, Method::POST, "/api/v1/datasets", Auth::Admin, Some(report_definition("dvc_monthly"))).await?;
        anyhow::ensure!(s == 201, "define: {s} {v}");
        let body = json!({"id": "dvc-dn", "name": "DVC Đà Nẵng", "agency": "ubnd-dn"});
        let (s, v, _) = send(&c, 1, Method::POST, "/api/v1/sources", Auth::Admin, Some(body)).await?;
        anyhow::ensure!(s == 201, "source: {s} {v}");
        let body = json!({"username": "dn-entry", "role": "data-entry", "agency": "ubnd-dn", "password": "paper kite orange river"});
        let (s, v, _) = send(&c, 1, Method::POST, "/api/v1/users", Auth::Admin, Some(body)).await?;
        anyhow::ensure!(s == 201, "user: {s} {v}");
        let ob = json!({"agencies": ["ubnd-dn"], "period_type": "month", "deadline_days": 366, "reminder_days": 3,
                        "agency_field": "agency", "period_field": "period"});
        let (s, v, _) = send(&c, 1, Method::PUT, "/api/v1/datasets/dvc_monthly/obligation", Auth::Admin, Some(ob)).await?;
        anyhow::ensure!(s == 200, "obligation: {s} {v}");
        let period = v["first_period"].as_str().unwrap_or_default().to_string();

        let dn = sign_in(&c, 2, "dn-entry", "paper kite orange river").await?;
        let page = |node: u64, path: String| {
            let req = c.http.get(format!("{}{path}", c.url(node))).header("cookie", &dn.cookie);
            async move {
                let resp = req.send().await?;
                let status = resp.status().as_u16();
                let url = resp.url().path().to_string();
                anyhow::Ok((status, url, resp.text().await?))
            }
        };
        let post = |node: u64, path: String, form: Vec<(&'static str, String)>| {
            let mut form = form;
            form.push(("csrf", dn.csrf.clone()));
            let req = c.http.post(format!("{}{path}", c.url(node))).header("cookie", &dn.cookie).form(&form);
            async move {
                let resp = req.send().await?;
                let status = resp.status().as_u16();
                let url = resp.url().path().to_string();
                anyhow::Ok((status, url, resp.text().await?))
            }
        };

        // The due list on node 3 (the session was opened on node 2), in English.
        let (s, _, html) = page(3, "/ui/reporting/due?lang=en".into()).await?;
        anyhow::ensure!(s == 200 && html.contains("Reports due") && html.contains(&period), "due page: {s} {html}");
        let form_path = format!("/ui/reporting/report/dvc_monthly/{period}");
        anyhow::ensure!(html.contains(&form_path), "the due list links to the form: {html}");

        // The form: a labelled input per property, unit and required mark, the agency filled in.
        let (s, _, html) = page(2, format!("{form_path}?lang=en")).await?;
        anyhow::ensure!(s == 200, "form page: {s} {html}");
        for needle in [
            "<fieldset>",
            "Applications received <span class=\"muted\">(applications)</span>",
            "name=\"v.received\"",
            "inputmode=\"numeric\"",
            "<select id=",
            "<option value=\"kiosk\"",
            "ubnd-dn",
            "name=\"csrf\"",
        ] {
            anyhow::ensure!(html.contains(needle), "the form lacks {needle}: {html}");
        }
        anyhow::ensure!(!html.contains("name=\"v.agency\""), "the agency is not an input: {html}");

        // Invalid values: 422, the form again with the validator's messages and a linked summary.
        let invalid = vec![("v.received", "-5".to_string()), ("v.on_time", "3".into()), ("action", "submit".into())];
        let (s, _, html) = post(2, format!("{form_path}?lang=en"), invalid).await?;
        anyhow::ensure!(s == 422, "invalid form: {s}");
        anyhow::ensure!(html.contains("id=\"error-summary\"") && html.contains("aria-invalid=\"true\""), "{html}");
        anyhow::ensure!(html.contains("value=\"-5\""), "the typed value stays: {html}");
        // The summary links to the input, whose message stands next to it.
        let field_id = html
            .split(" name=\"v.received\"")
            .next()
            .and_then(|before| before.rsplit("<input id=\"").next())
            .map(|id| id.split('"').next().unwrap_or("").to_string())
            .ok_or_else(|| anyhow::anyhow!("no received input: {html}"))?;
        let summary = html.split("id=\"error-summary\"").nth(1).and_then(|rest| rest.split("</div>").next()).unwrap_or("");
        anyhow::ensure!(
            summary.contains(&format!("href=\"#{field_id}\">Applications received: ")),
            "the summary links to the field {field_id}: {html}"
        );
        anyhow::ensure!(summary.contains("on-time cannot exceed received"), "the business rule's message: {html}");
        anyhow::ensure!(html.contains(&format!("id=\"{field_id}-error\"")), "message next to the field: {html}");
        anyhow::ensure!(c.records(1, "dvc_monthly").await?.is_empty(), "an invalid form stored something");

        // A draft, then the submission on another node, which ends on the receipt.
        let draft = vec![("v.received", "80".to_string()), ("action", "draft".into())];
        let (s, url, html) = post(2, form_path.clone(), draft).await?;
        anyhow::ensure!(s == 200 && url == form_path && html.contains("value=\"80\""), "draft: {s} {url} {html}");
        let values = vec![
            ("v.received", "80".to_string()),
            ("v.on_time", "75".into()),
            ("v.satisfaction", "92,5".into()),
            ("v.channel", "kiosk".into()),
            ("action", "submit".into()),
        ];
        let (s, url, html) = post(3, format!("{form_path}?lang=en"), values).await?;
        anyhow::ensure!(s == 200 && url.ends_with("/receipt"), "submit: {s} {url}");
        anyhow::ensure!(html.contains("Report received") && html.contains("Signature") && html.contains("dtm-receipt-v1"), "{html}");
        let stored = c.records(1, "dvc_monthly").await?;
        anyhow::ensure!(stored.len() == 1 && stored[0].1["satisfaction"] == 92.5 && stored[0].1["channel"] == "kiosk", "{stored:?}");
        let (s, _, text) = page(1, format!("{form_path}/receipt.json")).await?;
        let answer: Value = serde_json::from_str(&text)?;
        anyhow::ensure!(s == 200 && answer["receipt"]["signature"].is_string(), "receipt file: {s} {text}");

        // The admin's status page (a session of the admin role is not needed: an admin user).
        let body = json!({"username": "boss", "role": "auditor", "password": "paper kite orange river"});
        let (s, v, _) = send(&c, 1, Method::POST, "/api/v1/users", Auth::Admin, Some(body)).await?;
        anyhow::ensure!(s == 201, "auditor: {s} {v}");
        let aud = sign_in(&c, 1, "boss", "paper kite orange river").await?;
        let resp = c
            .http
            .get(format!("{}/ui/reporting/status?lang=en&dataset=dvc_monthly", c.url(2)))
            .header("cookie", &aud.cookie)
            .send()
            .await?;
        let (s, html) = (resp.status().as_u16(), resp.text().await?);
        anyhow::ensure!(s == 200 && html.contains("Reporting status") && html.contains("Submitted") && html.contains("dn-entry"), "{s} {html}");
        anyhow::ensure!(html.contains("/api/v1/reporting/status?format=csv&#38;dataset=dvc_monthly"), "CSV link: {html}");
        // A data-entry user may not see it.
        let (s, _, _) = page(2, "/ui/reporting/status".into()).await?;
        anyhow::ensure!(s == 403, "status page as data-entry: {s}");

        // An admin (TOTP enrolled through the API; the confirming session is a full one) changes
        // the obligation on its page; a refused change comes back with the reason.
        let body = json!({"username": "chief", "role": "admin", "password": "paper kite orange river"});
        let (s, v, _) = send(&c, 1, Method::POST, "/api/v1/users", Auth::Admin, Some(body)).await?;
        anyhow::ensure!(s == 201, "admin user: {s} {v}");
        let chief = sign_in(&c, 1, "chief", "paper kite orange river").await?;
        let (s, e, _) = send(&c, 1, Method::POST, "/api/v1/auth/totp/enroll", Auth::User(&chief), None).await?;
        anyhow::ensure!(s == 200, "enroll: {s} {e}");
        let secret = totp_rs::Secret::try_from_base32(e["secret"].as_str().unwrap_or_default())
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let totp = totp_rs::Builder::new().with_secret(secret).build_noncompliant();
        let code = totp.generate(now).to_string();
        let (s, v, _) =
            send(&c, 1, Method::POST, "/api/v1/auth/totp/confirm", Auth::User(&chief), Some(json!({"code": code}))).await?;
        anyhow::ensure!(s == 200, "confirm: {s} {v}");
        // Signed in again with password and the next step's code: a full session for the pages.
        let login = json!({"username": "chief", "password": "paper kite orange river", "totp": totp.generate(now + 30).to_string()});
        let resp = c.http.post(format!("{}/api/v1/auth/login", c.url(1))).json(&login).send().await?;
        let cookie = dtm_tests::session_cookie(resp.headers());
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let chief = Session {
            cookie: cookie.ok_or_else(|| anyhow::anyhow!("admin sign-in with TOTP: {body}"))?,
            csrf: body["csrf_token"].as_str().unwrap_or_default().to_string(),
        };
        let admin_page = |method: Method, path: &str, form: Option<Vec<(&'static str, String)>>| {
            let mut req = c.http.request(method, format!("{}{path}", c.url(3))).header("cookie", &chief.cookie);
            if let Some(mut f) = form {
                f.push(("csrf", chief.csrf.clone()));
                req = req.form(&f);
            }
            async move {
                let resp = req.send().await?;
                let status = resp.status().as_u16();
                let url = resp.url().clone();
                anyhow::Ok((status, url, resp.text().await?))
            }
        };
        let (s, _, html) = admin_page(Method::GET, "/ui/reporting/obligations?lang=en", None).await?;
        anyhow::ensure!(s == 200 && html.contains("Reporting obligations") && html.contains("ubnd-dn (dvc-dn)"), "{s} {html}");
        let form = |agencies: &str, deadline: &str| {
            vec![
                ("dataset", "dvc_monthly".to_string()),
                ("agencies", agencies.to_string()),
                ("period_type", "month".into()),
                ("deadline_days", deadline.to_string()),
                ("reminder_days", "3".into()),
                ("first_period", period.clone()),
                ("agency_field", "agency".into()),
                ("period_field", "period".into()),
            ]
        };
        let (s, _, html) =
            admin_page(Method::POST, "/ui/reporting/obligations?lang=en", Some(form("ubnd-nowhere", "10"))).await?;
        anyhow::ensure!(s == 422 && html.contains("id=\"error-summary\"") && html.contains("ubnd-nowhere"), "{s} {html}");
        let (s, url, _) = admin_page(Method::POST, "/ui/reporting/obligations", Some(form("ubnd-dn", "10"))).await?;
        anyhow::ensure!(s == 200 && url.path() == "/ui/reporting/status", "saved: {s} {url}");
        let (s, v, _) = send(&c, 2, Method::GET, "/api/v1/datasets/dvc_monthly/obligation", Auth::Admin, None).await?;
        anyhow::ensure!(s == 200 && v["deadline_days"] == 10 && v["updated_by"] == "user:chief", "{s} {v}");
        Ok(())
    }
    .await;
    if r.is_err() {
        c.dump_logs();
    }
    r
}
