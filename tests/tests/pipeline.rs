//! The per-source pipeline on a real 3-node cluster (issue 3): validation before acceptance (A3.4)
//! with a JSON Pointer per problem, masking in the raw and masked collection forms (C7), security
//! fields (A3.3), duplicates and conflicts decided in `apply` (A1.5), enrichment from reference
//! tables (F2), schema versions with a compatibility check (F3, A3.2), and aggregates that every
//! node answers alike (F4), with a digest that survives a rebuild from a snapshot.

use std::time::Duration;

use dtm_tests::TestCluster;
use dtm_tests::eventually;
use reqwest::Method;
use serde_json::Value;
use serde_json::json;

const CITIZEN_ID: &str = "001203004567";

fn etx_definition() -> Value {
    json!({
        "id": "etx_monthly",
        "title": "E-transaction statistics, monthly",
        "description": "Transactions per agency, period and channel",
        "owner": "Bộ Khoa học và Công nghệ",
        "schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "agency": {"type": "string", "minLength": 2},
                "province": {"type": "string"},
                "period": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
                "channel": {"enum": ["web", "mobile", "counter"]},
                "transactions": {"type": "integer", "minimum": 0},
                "failed": {"type": "integer", "minimum": 0},
                "citizen_id": {"type": "string"},
                "email": {"type": "string"},
                "note": {"type": "string"}
            },
            "required": ["agency", "period", "channel", "transactions"]
        },
        "key": ["agency", "period", "channel"],
        "time_field": "period",
        "dimensions": ["agency", "channel", "region"],
        "measures": {"transactions": "sum", "failed": "sum"},
        "units": {"transactions": "transactions", "failed": "transactions"},
        "masking": {"citizen_id": "partial", "email": "hash", "note": "redact"},
        "classification": "confidential",
        "priority": "high",
        "rules": [
            {"field": "failed", "op": "<=", "other": "transactions", "message": "failed cannot exceed transactions"},
            {"field": "province", "in_reference": "provinces"}
        ],
        "lookups": [{"field": "province", "reference": "provinces", "add": {"region": "region"}}]
    })
}

fn provinces_definition() -> Value {
    json!({
        "id": "provinces",
        "title": "Provinces",
        "schema": {"type": "object", "properties": {"code": {"type": "string"}, "name": {"type": "string"},
                   "region": {"type": "string"}}, "required": ["code", "name", "region"]},
        "key": ["code"],
        "reference": {"key": "code"}
    })
}

fn record(agency: &str, period: &str, channel: &str, tx: i64, failed: i64) -> Value {
    json!({"agency": agency, "province": "HN", "period": period, "channel": channel,
           "transactions": tx, "failed": failed})
}

async fn define(c: &TestCluster, def: Value) -> anyhow::Result<Value> {
    let (s, v) = c.admin(Method::POST, 1, "/api/v1/datasets", Some(def)).await?;
    anyhow::ensure!(s == 201, "define dataset: {s} {v}");
    Ok(v)
}

async fn source(c: &TestCluster, node: u64, body: Value) -> anyhow::Result<String> {
    let (s, v) = c.admin(Method::POST, node, "/api/v1/sources", Some(body)).await?;
    anyhow::ensure!(s == 201, "create source: {s} {v}");
    Ok(v["api_key"].as_str().unwrap_or_default().to_string())
}

/// Sets up the reference table and the dataset, with one raw-form and one masked-form source.
async fn catalog(c: &TestCluster) -> anyhow::Result<(String, String)> {
    define(c, provinces_definition()).await?;
    let refs = source(c, 1, json!({"id": "gso", "name": "General Statistics Office"})).await?;
    let provinces = json!([{"code": "HN", "name": "Hà Nội", "region": "Bắc"},
                           {"code": "HCM", "name": "Hồ Chí Minh", "region": "Nam"}]);
    let (s, v, _) = c.post(1, "provinces", &refs, &provinces, None).await?;
    anyhow::ensure!(s == 201, "provinces: {s} {v}");
    define(c, etx_definition()).await?;
    let raw = source(c, 1, json!({"id": "moj", "name": "Bộ Tư pháp", "agency": "MOJ"})).await?;
    let masked = source(
        c,
        2,
        json!({"id": "hcm", "name": "UBND TP.HCM", "form": "masked", "allowed_datasets": ["etx_monthly"]}),
    )
    .await?;
    Ok((raw, masked))
}

async fn aggregates(c: &TestCluster, node: u64, query: &str) -> anyhow::Result<Value> {
    let (s, v) = c
        .admin(
            Method::GET,
            node,
            &format!("/api/v1/datasets/etx_monthly/aggregates?{query}&consistency=linearizable"),
            None,
        )
        .await?;
    anyhow::ensure!(s == 200, "aggregates from node {node}: {s} {v}");
    Ok(v)
}

/// AC1, AC2, AC3 (and A3.3): validation with every problem named, nothing stored on refusal;
/// masking in storage and answers; the masked form's check; duplicates and conflicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_validated_masked_and_deduplicated_on_every_node() -> anyhow::Result<()> {
    let c = TestCluster::start(3, &[]).await?;
    let (raw, masked) = catalog(&c).await?;

    // Valid records through a follower, with personal data that must be masked.
    let mut first = record("MOJ", "2026-10", "web", 120, 3);
    first["citizen_id"] = json!(CITIZEN_ID);
    first["email"] = json!("nguyen.van.a@moj.gov.vn");
    first["note"] = json!("gọi lại cho ông A");
    let batch = json!([first, record("MOJ", "2026-10", "mobile", 80, 1), record("MOJ", "2026-11", "web", 100, 0)]);
    let (s, v, _) = c.post(2, "etx_monthly", &raw, &batch, None).await?;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["accepted"], 3);
    assert_eq!(v["duplicates"], 0);

    // Two bad records: every problem is reported with its record and field; nothing is stored.
    let bad = json!([
        {"agency": "M", "period": "2026/10", "channel": "fax", "transactions": -1},
        record("MOJ", "2026-12", "web", 5, 9),
        {"agency": "MOJ", "province": "XX", "period": "2026-12", "channel": "web", "transactions": 1}
    ]);
    let (s, v, _) = c.post(3, "etx_monthly", &raw, &bad, None).await?;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "invalid_records");
    let problems: Vec<(i64, String)> = v["error"]["details"]
        .as_array()
        .map(|d| {
            d.iter().map(|p| (p["record"].as_i64().unwrap_or(-1), p["field"].as_str().unwrap_or("").into())).collect()
        })
        .unwrap_or_default();
    for want in
        [(0, "/agency"), (0, "/period"), (0, "/channel"), (0, "/transactions"), (1, "/failed"), (2, "/province")]
    {
        assert!(problems.contains(&(want.0, want.1.to_string())), "missing {want:?} in {problems:?}");
    }
    for node in 1..=3 {
        let n = eventually("three records", Duration::from_secs(10), || async {
            c.records(node, "etx_monthly").await.ok().filter(|r| r.len() == 3).map(|r| r.len())
        })
        .await?;
        assert_eq!(n, 3, "node {node}: the refused request stored nothing");
    }

    // Masked in every answer, on every node, with the security fields and the enrichment.
    for node in 1..=3 {
        let (s, v) =
            c.admin(Method::GET, node, "/api/v1/datasets/etx_monthly/records?consistency=linearizable", None).await?;
        assert_eq!(s, 200);
        let r = v["records"].as_array().and_then(|r| r.iter().find(|r| r["data"]["citizen_id"].is_string())).cloned();
        let r = r.expect("the record with personal data");
        assert_eq!(r["data"]["citizen_id"], "001******567", "partial keeps a readable prefix and suffix");
        assert!(r["data"]["email"].as_str().is_some_and(|e| e.starts_with("hmac:")), "{r}");
        assert_eq!(r["data"]["note"], "[redacted]");
        assert_eq!(r["data"]["region"], "Bắc", "enriched from the provinces reference table");
        assert_eq!(r["classification"], "confidential");
        assert_eq!(r["priority"], "high");
        assert_eq!(r["schema_version"], 1);
    }
    // ...and in storage: the raw citizen id reached no file of any node (it was masked before the log).
    for n in c.nodes.values() {
        assert!(!dir_contains(&n.data_dir, CITIZEN_ID.as_bytes())?, "node {} stored the raw citizen id", n.id);
    }

    // A masked-form source that sends raw personal data is refused; masked values are accepted.
    let mut leak = record("HCM", "2026-10", "web", 10, 0);
    leak["citizen_id"] = json!("079 203 004 567");
    leak["email"] = json!("tran.thi.b@hochiminhcity.gov.vn");
    let (s, v, _) = c.post(1, "etx_monthly", &masked, &leak, None).await?;
    assert_eq!(s, 422, "{v}");
    let fields: Vec<&str> = v["error"]["details"]
        .as_array()
        .map(|d| d.iter().filter_map(|p| p["field"].as_str()).collect())
        .unwrap_or_default();
    assert!(fields.contains(&"/citizen_id") && fields.contains(&"/email"), "{v}");
    leak["citizen_id"] = json!("079******567");
    leak["email"] = json!("hmac:0f1e2d3c4b5a69788796a5b4c3d2e1f0");
    let (s, v, _) = c.post(1, "etx_monthly", &masked, &leak, None).await?;
    assert_eq!(s, 201, "{v}");
    // The masked-form source may only send to the datasets it was registered for.
    let (s, v, _) = c.post(1, "provinces", &masked, &json!({"code": "X", "name": "X", "region": "X"}), None).await?;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")), "{v}");

    // Duplicates: the same record again (another node, another request) changes nothing.
    let before = aggregates(&c, 1, "interval=month&group_by=agency").await?;
    let again = json!([record("MOJ", "2026-10", "mobile", 80, 1)]);
    let (s, v, _) = c.post(3, "etx_monthly", &raw, &again, None).await?;
    assert_eq!((s, v["duplicates"].as_u64(), v["outcomes"][0].as_str()), (201, Some(1), Some("duplicate")), "{v}");
    // A conflict: the same natural key with other figures, from another source.
    let other = source(&c, 3, json!({"id": "mic", "name": "Bộ TT&TT"})).await?;
    let (s, v, _) = c.post(3, "etx_monthly", &other, &json!(record("MOJ", "2026-10", "mobile", 95, 1)), None).await?;
    assert_eq!((s, v["conflicts"].as_u64()), (201, Some(1)), "{v}");
    let after = aggregates(&c, 2, "interval=month&group_by=agency").await?;
    assert_eq!(before["rows"], after["rows"], "duplicates and unreconciled conflicts leave the statistics alone");
    let (s, v) = c.admin(Method::GET, 1, "/api/v1/datasets/etx_monthly/conflicts", None).await?;
    assert_eq!(s, 200, "{v}");
    let conflicts = v["conflicts"].as_array().cloned().unwrap_or_default();
    assert_eq!(conflicts.len(), 1, "{v}");
    assert_eq!(
        (conflicts[0]["first"]["source"].as_str(), conflicts[0]["new"]["source"].as_str()),
        (Some("moj"), Some("mic"))
    );
    let (_, ds) = c.admin(Method::GET, 2, "/api/v1/datasets/etx_monthly", None).await?;
    assert_eq!((ds["duplicates"].as_u64(), ds["conflicts"].as_u64()), (Some(1), Some(1)), "{ds}");

    // The statistics themselves: October MOJ = 120 + 80 transactions over two records.
    let rows = after["rows"].as_array().cloned().unwrap_or_default();
    let oct = rows.iter().find(|r| r["bucket"] == "2026-10" && r["agency"] == "MOJ").expect("October MOJ row");
    assert_eq!(
        (oct["count"].as_u64(), oct["transactions"].as_f64(), oct["failed"].as_f64()),
        (Some(2), Some(200.0), Some(4.0))
    );
    let by_region = aggregates(&c, 3, "interval=year&group_by=region").await?;
    let north = by_region["rows"].as_array().and_then(|r| r.iter().find(|r| r["region"] == "Bắc")).cloned();
    assert_eq!(north.and_then(|r| r["count"].as_u64()), Some(4), "{by_region}");
    Ok(())
}

fn dir_contains(dir: &std::path::Path, needle: &[u8]) -> anyhow::Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if dir_contains(&path, needle)? {
                return Ok(true);
            }
        } else if std::fs::read(&path)?.windows(needle.len()).any(|w| w == needle) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// AC7: an incompatible version is refused with a reason naming the field; a compatible one is
/// accepted, and records are validated against the version they declare (default: the latest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_versions_are_checked_for_compatibility() -> anyhow::Result<()> {
    let c = TestCluster::start(3, &[]).await?;
    let (raw, _) = catalog(&c).await?;

    let mut breaking = etx_definition();
    breaking["schema"]["required"] = json!(["agency", "period", "channel", "transactions", "failed"]);
    let (s, v) = c.admin(Method::POST, 2, "/api/v1/datasets", Some(breaking)).await?;
    assert_eq!((s, v["error"]["code"].as_str()), (422, Some("incompatible_schema")), "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("failed")), "the reason names the field: {v}");
    let mut narrowing = etx_definition();
    narrowing["schema"]["properties"]["note"] = json!({"type": "integer"});
    let (s, v) = c.admin(Method::POST, 3, "/api/v1/datasets/etx_monthly/versions", Some(narrowing)).await?;
    assert_eq!(s, 422, "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("note")), "{v}");

    // Compatible: a new optional field with a stricter shape than version 1 would enforce.
    let mut v2 = etx_definition();
    v2["schema"]["properties"]["uptime_pct"] = json!({"type": "number", "minimum": 0, "maximum": 100});
    v2["schema"]["additionalProperties"] = json!(true);
    let (s, v) = c.admin(Method::POST, 2, "/api/v1/datasets/etx_monthly/versions", Some(v2)).await?;
    assert_eq!((s, v["version"].as_u64()), (201, Some(2)), "{v}");

    // A node validates "the latest" against the latest it has applied: wait until node 3 has v2.
    eventually("node 3 to apply version 2", Duration::from_secs(10), || async {
        let (s, v) = c.admin(Method::GET, 3, "/api/v1/datasets/etx_monthly", None).await.ok()?;
        (s == 200 && v["version"] == 2).then_some(())
    })
    .await?;
    let mut r = record("MOJ", "2026-09", "web", 10, 0);
    r["uptime_pct"] = json!(140);
    // Latest (2): the new field is checked.
    let (s, v, _) = c.post(3, "etx_monthly", &raw, &r, None).await?;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["details"][0]["field"], "/uptime_pct");
    // Declared version 1: the field is unknown there and allowed.
    let resp = c
        .http
        .post(format!("{}/api/v1/datasets/etx_monthly/records", c.url(1)))
        .header("x-api-key", &raw)
        .header("x-schema-version", "1")
        .json(&r)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await?;
    assert_eq!((status, body["schema_version"].as_u64()), (201, Some(1)), "{body}");
    let (s, v) = c.admin(Method::GET, 3, "/api/v1/datasets/etx_monthly", None).await?;
    assert_eq!(s, 200);
    assert_eq!(v["versions"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["metadata"]["units"]["transactions"], "transactions", "{v}");

    // A3.2: the XSD of the XML form, per version: version 1 has no `uptime_pct`, version 2 has it.
    let xsd = |version: u32| {
        let url = format!("{}/api/v1/datasets/etx_monthly/schema.xsd?version={version}", c.url(2));
        let req = c.http.get(url).bearer_auth(&c.admin_token);
        async move {
            let r = req.send().await?;
            anyhow::ensure!(r.status() == 200, "schema.xsd: {}", r.status());
            let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            anyhow::ensure!(ct.starts_with("application/xml"), "content type {ct}");
            Ok::<_, anyhow::Error>(r.text().await?)
        }
    };
    let (v1, v2) = (xsd(1).await?, xsd(2).await?);
    // Open records (additional properties allowed): the fields are global elements next to a lax
    // wildcard, as XSD 1.0 cannot mix named elements and a wildcard in one record (docs/formats.md).
    assert!(
        v1.contains(
            "<xs:element name=\"agency\"><xs:simpleType><xs:restriction base=\"xs:string\"><xs:minLength value=\"2\"/>"
        ),
        "{v1}"
    );
    assert!(v1.contains("<xs:enumeration value=\"counter\"/>"), "{v1}");
    assert!(!v1.contains("uptime_pct") && v2.contains("uptime_pct"), "{v2}");
    Ok(())
}

/// AC4: every node answers the same aggregates and the same digest at the same index, including a
/// node rebuilt from a snapshot after its data directory was wiped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_and_digests_agree_on_every_node_and_after_a_snapshot() -> anyhow::Result<()> {
    let c = TestCluster::start(3, &["--snapshot-after-logs", "20", "--logs-kept-after-snapshot", "5"]).await?;
    let (raw, _) = catalog(&c).await?;
    let channels = ["web", "mobile", "counter"];
    for i in 0..60 {
        let rec =
            record(&format!("AG{:02}", i % 7), &format!("2026-{:02}", 1 + i % 12), channels[i % 3], 10 + i as i64, 1);
        let (s, v, _) = c.post(1 + (i as u64 % 3), "etx_monthly", &raw, &rec, None).await?;
        assert_eq!(s, 201, "{v}");
    }
    let d = eventually("digests at one index", Duration::from_secs(20), || digests(&c)).await?;
    assert!(d.windows(2).all(|w| w[0] == w[1]), "digests differ: {d:?}");
    let mut answers = Vec::new();
    for node in 1..=3 {
        answers.push(aggregates(&c, node, "interval=quarter&group_by=channel").await?["rows"].clone());
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "aggregates differ between nodes: {answers:?}");
    let total: u64 = answers[0].as_array().map(|r| r.iter().filter_map(|r| r["count"].as_u64()).sum()).unwrap_or(0);
    assert_eq!(total, 60);

    // Wipe node 3; it comes back through a snapshot and must hold the same aggregate state.
    c.kill(3);
    c.wipe(3)?;
    for i in 0..30 {
        let rec = record("AG99", &format!("2025-{:02}", 1 + i % 12), "web", i as i64, 0);
        let (s, v, _) = c.post(1 + (i as u64 % 2), "etx_monthly", &raw, &rec, None).await?;
        assert_eq!(s, 201, "{v}");
    }
    c.restart(3)?;
    let d2 = eventually("digests after the rebuild", Duration::from_secs(60), || digests(&c)).await?;
    assert!(d2.windows(2).all(|w| w[0] == w[1]), "digests differ after the rebuild: {d2:?}");
    assert_ne!(d[0].1, d2[0].1, "the state moved on");
    assert!(c.log(3).contains("installed snapshot"), "node 3 was rebuilt from a snapshot");
    Ok(())
}

/// Each node's aggregate digest, when all three answer at the same index.
async fn digests(c: &TestCluster) -> Option<Vec<(u64, String)>> {
    let mut out = Vec::new();
    for node in 1..=3 {
        let (s, v) = c
            .admin(Method::GET, node, "/api/v1/datasets/etx_monthly/aggregates/digest?consistency=linearizable", None)
            .await
            .ok()?;
        if s != 200 {
            return None;
        }
        out.push((v["as_of_index"].as_u64()?, v["sha256"].as_str()?.to_string()));
    }
    out.windows(2).all(|w| w[0].0 == w[1].0).then_some(out)
}
