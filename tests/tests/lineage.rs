//! Lineage and versions (issue 7) on a real 3-node cluster.
//!
//! AC4: the lineage of a record posted over REST and of a record from a CSV batch leads back to the
//! source, channel, batch and receiving node; the lineage of an aggregate cell lists the batch and
//! the real-time source whose records it holds; the batch is an OpenLineage run.
//! AC5: a correction is stored as a new version and replaces the old figure in the aggregates;
//! as-of reads of records and aggregates before and after the correction's commit index see the old
//! and the new figure; a correction without a reason is 400, of a superseded version 409.

use std::time::Duration;

use dtm_tests::TestCluster;
use dtm_tests::eventually;
use reqwest::Method;
use serde_json::Value;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

fn definition() -> Value {
    json!({
        "id": "etx", "title": "E-transactions",
        "schema": {"type": "object", "properties": {
            "ref": {"type": "string"}, "agency": {"type": "string"}, "period": {"type": "string"},
            "channel": {"type": "string"}, "transactions": {"type": "integer"}, "peak": {"type": "integer"}},
            "required": ["ref", "agency", "period", "channel", "transactions"]},
        "key": ["ref"], "time_field": "period", "dimensions": ["agency", "channel"],
        "measures": {"transactions": "sum", "peak": "max"}
    })
}

fn record(reference: &str, transactions: u64) -> Value {
    json!({"ref": reference, "agency": "moj", "period": "2026-07", "channel": "web",
           "transactions": transactions, "peak": transactions})
}

async fn setup(c: &TestCluster, sources: &[&str]) -> anyhow::Result<Vec<String>> {
    let (s, v) = c.admin(Method::POST, 1, "/api/v1/datasets", Some(definition())).await?;
    anyhow::ensure!(s == 201, "define dataset: {s} {v}");
    let mut keys = Vec::new();
    for id in sources {
        keys.push(c.create_source(1, id).await?);
    }
    Ok(keys)
}

/// A request with a source's API key: status and JSON answer.
async fn as_source(
    c: &TestCluster,
    node: u64,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut req = c.http.request(method, format!("{}{path}", c.url(node))).header("x-api-key", key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    Ok((resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null)))
}

/// The id of the stored record whose `ref` is `reference` (read on `node`).
async fn id_of(c: &TestCluster, node: u64, reference: &str) -> anyhow::Result<String> {
    let records = c.records(node, "etx").await?;
    records
        .iter()
        .find(|(_, data)| data["ref"] == reference)
        .map(|(id, _)| id.clone())
        .ok_or_else(|| anyhow::anyhow!("no record with ref {reference}"))
}

/// GET as admin on `node`, expecting 200.
async fn get(c: &TestCluster, node: u64, path: &str) -> anyhow::Result<Value> {
    let (s, v) = c.admin(Method::GET, node, path, None).await?;
    anyhow::ensure!(s == 200, "GET {path} on node {node}: {s} {v}");
    Ok(v)
}

#[tokio::test]
async fn lineage_leads_records_and_cells_back_to_their_source_channel_batch_and_node() -> anyhow::Result<()> {
    let c = TestCluster::start(3, &[]).await?;
    let keys = setup(&c, &["rt", "bt"]).await?;
    let (rt, bt) = (&keys[0], &keys[1]);

    // One record in real time through node 2.
    let (s, posted, _) = c.post(2, "etx", rt, &record("r1", 10), None).await?;
    anyhow::ensure!(s == 201, "post: {s} {posted}");
    let r1 = posted["ids"][0].as_str().unwrap_or_default().to_string();
    let r1_index = posted["commit_index"].as_u64().unwrap_or_default();

    // Two records of the same cell in a CSV batch through node 3.
    let csv = "ref,agency,period,channel,transactions,peak\nb1,moj,2026-07,web,100,100\nb2,moj,2026-07,web,50,50\n";
    let resp = c
        .http
        .post(format!("{}/api/v1/datasets/etx/batches", c.url(3)))
        .header("x-api-key", bt)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let batch: Value = resp.json().await?;
    anyhow::ensure!(status == 201 && batch["accepted"] == 2, "batch: {status} {batch}");
    let batch_id = batch["batch_id"].as_str().unwrap_or_default().to_string();

    // The REST record, asked on node 1 (which did not receive it).
    let l = get(&c, 1, &format!("/api/v1/lineage/records/{r1}")).await?;
    assert_eq!(l["record_id"], r1.as_str());
    assert_eq!(l["dataset"], "etx");
    assert_eq!(l["source"], "rt");
    assert_eq!(l["channel"], "rest");
    assert_eq!(l["batch_id"], Value::Null);
    assert_eq!(l["received_on_node"], 2);
    assert_eq!(l["schema_version"], 1);
    assert_eq!(l["commit_index"], r1_index);
    assert_eq!(l["version"], 1);
    assert_eq!(l["counts_in_aggregates"], true);
    assert!(l["request_id"].as_str().is_some_and(|r| !r.is_empty()), "{l}");
    assert!(l["received_at"].as_str().is_some_and(|t| t.starts_with("20")), "{l}");

    // A batch record leads back to its batch, its format and the node that received the file.
    let b1 = eventually("the batch records on node 1", WAIT, || async { id_of(&c, 1, "b1").await.ok() }).await?;
    let l = get(&c, 1, &format!("/api/v1/lineage/records/{b1}")).await?;
    assert_eq!(l["source"], "bt");
    assert_eq!(l["channel"], "batch:csv");
    assert_eq!(l["batch_id"], batch_id.as_str());
    assert_eq!(l["batch"]["format"], "csv");
    assert_eq!(l["received_on_node"], 3);

    // The cell (July 2026, moj, web) holds the batch's two records and rt's one.
    let cell = get(
        &c,
        1,
        "/api/v1/datasets/etx/aggregates/lineage?bucket=2026-07&agency=moj&channel=web&consistency=linearizable",
    )
    .await?;
    assert_eq!((cell["cells"].as_u64(), cell["records"].as_u64()), (Some(1), Some(3)), "{cell}");
    let contributors = cell["contributors"].as_array().cloned().unwrap_or_default();
    let by = |who: &str| contributors.iter().find(|x| x["contributor"] == who).cloned();
    let from_batch = by(&format!("batch:{batch_id}")).ok_or_else(|| anyhow::anyhow!("no batch in {cell}"))?;
    assert_eq!((from_batch["kind"].as_str(), from_batch["records"].as_u64()), (Some("batch"), Some(2)));
    assert_eq!(from_batch["source"], "bt");
    assert_eq!(from_batch["channel"], "batch:csv");
    let real_time = by("source:rt").ok_or_else(|| anyhow::anyhow!("no real-time source in {cell}"))?;
    assert_eq!((real_time["kind"].as_str(), real_time["records"].as_u64()), (Some("real-time"), Some(1)));
    assert_eq!(real_time["first_commit_index"], r1_index);
    // A bucket with nothing in it has no contributors; a name that is not a dimension is a 400.
    let empty = get(&c, 1, "/api/v1/datasets/etx/aggregates/lineage?bucket=2025").await?;
    assert_eq!(empty["contributors"], json!([]));
    let (s, v) = c.admin(Method::GET, 1, "/api/v1/datasets/etx/aggregates/lineage?colour=red", None).await?;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_request")), "{v}");

    // The batch is an OpenLineage run: START, then COMPLETE, from the source to the dataset.
    let events = get(&c, 1, "/api/v1/lineage/openlineage").await?;
    let runs: Vec<&Value> = events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["run"]["facets"]["dtm_batch"]["batch_id"] == batch_id.as_str())
        .collect();
    let kinds: Vec<&str> = runs.iter().filter_map(|e| e["eventType"].as_str()).collect();
    assert_eq!(kinds, ["START", "COMPLETE"], "{events}");
    assert_eq!(runs[0]["run"]["runId"], runs[1]["run"]["runId"]);
    assert_eq!(runs[0]["job"]["namespace"], "dtm");
    assert_eq!(runs[0]["inputs"][0]["name"], "bt");
    assert_eq!(runs[1]["outputs"][0]["name"], "etx");
    assert_eq!(runs[1]["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"], 2);
    // With `realtime=true`, rt's record of today is a run of its own, still running.
    let events = get(&c, 1, "/api/v1/lineage/openlineage?realtime=true&format=json").await?;
    let realtime: Vec<&Value> =
        events.as_array().into_iter().flatten().filter(|e| e["job"]["name"] == "ingest.rt.etx.realtime").collect();
    let kinds: Vec<&str> = realtime.iter().filter_map(|e| e["eventType"].as_str()).collect();
    assert_eq!(kinds, ["START", "RUNNING"], "{events}");
    assert_eq!(realtime[1]["run"]["facets"]["dtm_realtime"]["records"], 1);
    assert_eq!(realtime[1]["run"]["facets"]["dtm_realtime"]["channels"]["rest"], 1);
    assert_eq!(realtime[0]["inputs"][0]["name"], "rt");

    // Lineage is for analysts, auditors and admins, not for sources.
    for (user, role) in [("ana", "analyst"), ("aud", "auditor")] {
        let password = "quiet harbour lantern";
        let body = json!({"username": user, "role": role, "password": password});
        let (s, v) = c.admin(Method::POST, 1, "/api/v1/users", Some(body)).await?;
        anyhow::ensure!(s == 201, "create {role}: {s} {v}");
        let cookie = c.sign_in(2, user, password).await?;
        let resp =
            c.http.get(format!("{}/api/v1/lineage/records/{b1}", c.url(2))).header("cookie", cookie).send().await?;
        assert_eq!(resp.status().as_u16(), 200, "{role} reads lineage");
    }
    let (s, _) = as_source(&c, 1, rt, Method::GET, &format!("/api/v1/lineage/records/{r1}"), None).await?;
    assert_eq!(s, 403);
    let (s, _) = c.admin(Method::GET, 1, "/api/v1/lineage/records/no-such-record", None).await?;
    assert_eq!(s, 404);
    Ok(())
}

/// The aggregate row of July 2026 (month buckets, grouped by agency).
async fn july(c: &TestCluster, node: u64, query: &str) -> anyhow::Result<Value> {
    let v = get(c, node, &format!("/api/v1/datasets/etx/aggregates?interval=month&group_by=agency{query}")).await?;
    v["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["bucket"] == "2026-07"))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no July row in {v}"))
}

/// The `transactions` of the records listed at a log index, by `ref`.
async fn listed(c: &TestCluster, node: u64, query: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let v = get(c, node, &format!("/api/v1/datasets/etx/records?{query}")).await?;
    let mut out: Vec<(String, u64)> = v["records"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (r["data"]["ref"].as_str().unwrap_or_default().to_string(), r["data"]["transactions"].as_u64().unwrap_or(0))
        })
        .collect();
    out.sort();
    Ok(out)
}

#[tokio::test]
async fn corrections_are_new_versions_and_as_of_reads_see_before_and_after() -> anyhow::Result<()> {
    let c = TestCluster::start(3, &[]).await?;
    let keys = setup(&c, &["rt", "other"]).await?;
    let (rt, other) = (&keys[0], &keys[1]);
    let (s, posted, _) = c.post(1, "etx", rt, &json!([record("r1", 10), record("r2", 5)]), None).await?;
    anyhow::ensure!(s == 201, "post: {s} {posted}");
    let r1 = posted["ids"][0].as_str().unwrap_or_default().to_string();
    let before = posted["commit_index"].as_u64().unwrap_or_default();

    let corrections = format!("/api/v1/datasets/etx/records/{r1}/corrections");
    // No reason: 400. Another source: 403. Nothing is stored.
    let (s, v) = as_source(&c, 2, rt, Method::POST, &corrections, Some(json!({"record": record("r1", 12)}))).await?;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("reason_required")), "{v}");
    let body = json!({"record": record("r1", 12), "reason": "10 was a typo for 12"});
    let (s, v) = as_source(&c, 2, other, Method::POST, &corrections, Some(body.clone())).await?;
    assert_eq!(s, 403, "{v}");

    // The correction, through node 2: a new version, counted instead of the old one.
    let (s, v) = as_source(&c, 2, rt, Method::POST, &corrections, Some(body)).await?;
    anyhow::ensure!(s == 201, "correction: {s} {v}");
    assert_eq!(v["outcomes"], json!(["corrected"]));
    assert_eq!((v["corrects_id"].as_str(), v["version"].as_u64()), (Some(r1.as_str()), Some(2)));
    let c1 = v["ids"][0].as_str().unwrap_or_default().to_string();
    let after = v["commit_index"].as_u64().unwrap_or_default();
    assert!(after > before);

    // r1 is superseded now: correcting it again is 409 naming the latest version.
    let again = json!({"record": record("r1", 13), "reason": "again"});
    let (s, v) = as_source(&c, 3, rt, Method::POST, &corrections, Some(again)).await?;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["details"][0]["latest_id"], c1.as_str(), "{v}");

    // Lineage of both versions.
    let l = get(&c, 3, &format!("/api/v1/lineage/records/{c1}")).await?;
    assert_eq!((l["version"].as_u64(), l["previous_id"].as_str()), (Some(2), Some(r1.as_str())));
    assert_eq!(l["correction"]["reason"], "10 was a typo for 12");
    assert_eq!(l["received_on_node"], 2);
    let old = get(&c, 3, &format!("/api/v1/lineage/records/{r1}")).await?;
    assert_eq!(old["later_versions"][0]["id"], c1.as_str());
    assert_eq!((old["latest_id"].as_str(), old["counts_in_aggregates"].as_bool()), (Some(c1.as_str()), Some(false)));
    let then = get(&c, 3, &format!("/api/v1/lineage/records/{r1}?as_of_index={before}")).await?;
    assert_eq!((then["later_versions"].clone(), then["counts_in_aggregates"].as_bool()), (json!([]), Some(true)));

    // Records as of each index: r1 with 10 before, its correction with 12 after.
    let node = 3;
    eventually("node 3 to apply the correction", WAIT, || async {
        get(&c, node, "/api/v1/datasets/etx/records?consistency=linearizable").await.ok()
    })
    .await?;
    let at_before = listed(&c, node, &format!("as_of_index={before}")).await?;
    assert_eq!(at_before, [("r1".to_string(), 10), ("r2".to_string(), 5)]);
    let at_after = listed(&c, node, &format!("as_of_index={after}")).await?;
    assert_eq!(at_after, [("r1".to_string(), 12), ("r2".to_string(), 5)]);
    let at_start = listed(&c, node, "as_of=2000-01-01T00:00:00Z").await?;
    assert!(at_start.is_empty(), "nothing had been received in 2000: {at_start:?}");
    let (s, _) = c.admin(Method::GET, node, "/api/v1/datasets/etx/records?as_of_index=999999999", None).await?;
    assert_eq!(s, 422, "an index this node has not applied is refused");

    // Aggregates: recomputed at each index; the live ones replaced 10 by 12 and say that the max
    // may be stale (10 was the max when it was retracted).
    let old_row = july(&c, node, &format!("&as_of_commit={before}")).await?;
    assert_eq!(
        (old_row["count"].as_u64(), old_row["transactions"].as_u64(), old_row["peak"].as_u64()),
        (Some(2), Some(15), Some(10))
    );
    let new_row = july(&c, node, &format!("&as_of_commit={after}")).await?;
    assert_eq!(
        (new_row["count"].as_u64(), new_row["transactions"].as_u64(), new_row["peak"].as_u64()),
        (Some(2), Some(17), Some(12))
    );
    assert_eq!(new_row.get("extrema_exact"), None, "recomputed extrema are exact");
    let live = july(&c, node, "&consistency=linearizable").await?;
    assert_eq!((live["count"].as_u64(), live["transactions"].as_u64()), (Some(2), Some(17)));
    assert_eq!(live["extrema_exact"], false, "{live}");
    // The correction's source is in the cell's lineage, with the index it came in at.
    let cell = get(&c, node, "/api/v1/datasets/etx/aggregates/lineage?bucket=2026-07&agency=moj").await?;
    let rt_row =
        cell["contributors"].as_array().and_then(|a| a.iter().find(|x| x["contributor"] == "source:rt")).cloned();
    let rt_row = rt_row.ok_or_else(|| anyhow::anyhow!("rt not in {cell}"))?;
    assert_eq!((rt_row["records"].as_u64(), rt_row["last_commit_index"].as_u64()), (Some(2), Some(after)));

    // An admin may correct any source's record; the superseded one still cannot be.
    let by_admin = json!({"record": record("r1", 11), "reason": "reconciled with the agency"});
    let (s, v) =
        c.admin(Method::POST, 1, &format!("/api/v1/datasets/etx/records/{c1}/corrections"), Some(by_admin)).await?;
    assert_eq!((s, v["version"].as_u64()), (201, Some(3)), "{v}");
    let live = july(&c, 1, "&consistency=linearizable").await?;
    assert_eq!(live["transactions"].as_u64(), Some(16));
    let dataset = get(&c, 1, "/api/v1/datasets/etx").await?;
    assert_eq!((dataset["corrections"].as_u64(), dataset["conflicts"].as_u64()), (Some(2), Some(0)), "{dataset}");
    Ok(())
}
