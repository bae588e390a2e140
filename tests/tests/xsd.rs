//! XSD validation of XML input (A3.2, issue 6) on a real node: XML batches are checked record by
//! record against the XSD the dataset version publishes (`GET /datasets/{id}/schema.xsd`), by
//! libxml2 in the node. Files are written by an independent writer (Python's xml.etree) and the
//! published XSD is checked by an independent validator (Python's pure-Python `xmlschema`, not
//! libxml2): it flags exactly the rows the server rejects, so what is published is what is enforced.
//! DTDs and entities stay refused.
//!
//! The Python tools live in `target/batch-venv` (`scripts/ensure-tools.sh` installs them).

use std::path::Path;
use std::path::PathBuf;

use base64::Engine;
use dtm_tests::TestCluster;
use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;
use serde_json::json;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn python() -> anyhow::Result<PathBuf> {
    let python = workspace().join("target/batch-venv/bin/python");
    anyhow::ensure!(python.exists(), "{} is missing: run scripts/ensure-tools.sh", python.display());
    Ok(python)
}

/// Writes `rows` (objects; their keys in order become the elements) with xml.etree.
fn write_xml(path: &Path, rows: &[Value]) -> anyhow::Result<()> {
    const WRITER: &str = r#"
import json, sys, xml.etree.ElementTree as ET
root = ET.Element("records")
for r in json.loads(sys.argv[2]):
    rec = ET.SubElement(root, "record")
    for k, v in r.items():
        ET.SubElement(rec, k).text = str(v)
ET.ElementTree(root).write(sys.argv[1], encoding="utf-8", xml_declaration=True)
"#;
    let out = std::process::Command::new(python()?)
        .args(["-c", WRITER])
        .arg(path)
        .arg(serde_json::to_string(rows)?)
        .output()?;
    anyhow::ensure!(out.status.success(), "xml.etree writer: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Validates a whole file against an XSD with `xmlschema`; returns the 1-based positions of the
/// records it finds invalid (0 for an error outside any record).
fn xmlschema_invalid_records(xsd: &Path, xml: &Path) -> anyhow::Result<Vec<usize>> {
    const CHECKER: &str = r#"
import json, re, sys, xmlschema
schema = xmlschema.XMLSchema10(sys.argv[1])
bad = set()
for e in schema.iter_errors(sys.argv[2]):
    m = re.search(r"record\[(\d+)\]", e.path or "")
    bad.add(int(m.group(1)) if m else 0)
print(json.dumps(sorted(bad)))
"#;
    let out = std::process::Command::new(python()?).args(["-c", CHECKER]).arg(xsd).arg(xml).output()?;
    anyhow::ensure!(out.status.success(), "xmlschema: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn client(c: &TestCluster) -> anyhow::Result<reqwest::Client> {
    Ok(dtm_tests::https_client(&std::fs::read(c.tls_dir.join("ca.pem"))?))
}

async fn upload(
    c: &TestCluster,
    http: &reqwest::Client,
    key: &str,
    dataset: &str,
    body: Vec<u8>,
    query: &str,
) -> anyhow::Result<(u16, Value)> {
    let resp = http
        .post(format!("{}/api/v1/datasets/{dataset}/batches{query}", c.url(1)))
        .header("x-api-key", key)
        .header("content-type", "application/xml")
        .body(body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

/// The published XSD, saved to a file.
async fn save_xsd(c: &TestCluster, http: &reqwest::Client, key: &str, dataset: &str, to: &Path) -> anyhow::Result<()> {
    let resp =
        http.get(format!("{}/api/v1/datasets/{dataset}/schema.xsd", c.url(1))).header("x-api-key", key).send().await?;
    anyhow::ensure!(resp.status().as_u16() == 200, "schema.xsd: {}", resp.status());
    std::fs::write(to, resp.bytes().await?)?;
    Ok(())
}

fn closed_definition(id: &str) -> Value {
    json!({
        "id": id, "title": id,
        "schema": {"type": "object", "additionalProperties": false, "properties": {
            "ref": {"type": "string"}, "agency": {"type": "string", "minLength": 2},
            "period": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
            "channel": {"enum": ["web", "mobile", "counter"]},
            "transactions": {"type": "integer", "minimum": 0},
            "rate": {"type": "number"},
            // `\S` has no exact XSD translation: only the JSON Schema checks this one.
            "code": {"type": "string", "pattern": "^\\S+$"},
            "note": {"type": "string", "maxLength": 1000}},
            "required": ["ref", "agency", "period", "channel", "transactions"]},
        "key": ["ref"], "time_field": "period", "dimensions": ["agency", "channel"],
        "measures": {"transactions": "sum"}
    })
}

fn good(i: usize) -> Value {
    json!({"ref": format!("R{i:04}"), "agency": "Bộ Tài chính", "period": format!("2024-{:02}", i % 12 + 1),
           "channel": "web", "transactions": 100 + i, "rate": 0.25 * i as f64, "code": format!("C{i}")})
}

/// The rows the XSD refuses, by position (1-based), with the field and words of libxml2's reason.
fn xsd_breakers() -> Vec<(usize, Value, &'static str, &'static str)> {
    let mut wrong_type = good(5);
    wrong_type["transactions"] = json!("many");
    let mut not_listed = good(12);
    not_listed["channel"] = json!("fax");
    let mut missing = good(20);
    missing.as_object_mut().map(|o| o.remove("agency"));
    let mut unknown = good(33);
    unknown["colour"] = json!("blue");
    let mut negative = good(41);
    negative["transactions"] = json!(-3);
    vec![
        (5, wrong_type, "/transactions", "'many'"),
        (12, not_listed, "/channel", "enumeration"),
        (20, missing, "/agency", "Missing child"),
        (33, unknown, "/colour", "not expected"),
        (41, negative, "/transactions", "minInclusive"),
    ]
}

const ROWS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a3_2_xml_rows_breaking_the_published_xsd_are_named_and_the_rest_stored() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let c = TestCluster::start(1, &[]).await?;
    let key = c.create_source(1, "ministry").await?;
    let http = client(&c)?;
    for ds in ["xsd_rows", "xsd_all_or_nothing"] {
        let (s, v) = c.admin(Method::POST, 1, "/api/v1/datasets", Some(closed_definition(ds))).await?;
        anyhow::ensure!(s == 201, "define: {s} {v}");
    }

    // Row 27 passes the XSD but not the JSON Schema (a pattern XSD cannot say): both still run.
    let mut rows: Vec<Value> = (1..=ROWS).map(good).collect();
    for (at, row, _, _) in xsd_breakers() {
        rows[at - 1] = row;
    }
    rows[26]["code"] = json!("has space");
    let (bad_file, good_file, xsd_file) =
        (dir.path().join("bad.xml"), dir.path().join("good.xml"), dir.path().join("published.xsd"));
    write_xml(&bad_file, &rows)?;
    write_xml(&good_file, &(1..=ROWS).map(good).collect::<Vec<_>>())?;

    // The published XSD, read by an independent validator: the good file is valid as a whole, and in
    // the bad file exactly the rows the server will reject for XSD reasons are invalid.
    save_xsd(&c, &http, &key, "xsd_rows", &xsd_file).await?;
    assert_eq!(xmlschema_invalid_records(&xsd_file, &good_file)?, Vec::<usize>::new());
    let expected: Vec<usize> = xsd_breakers().iter().map(|b| b.0).collect();
    assert_eq!(xmlschema_invalid_records(&xsd_file, &bad_file)?, expected);

    // Per-row mode: the valid rows are stored, each bad one named with the XSD's reason.
    let (s, v) = upload(&c, &http, &key, "xsd_rows", std::fs::read(&bad_file)?, "").await?;
    assert_eq!(s, 201, "{v}");
    let n_bad = xsd_breakers().len() + 1;
    assert_eq!((v["accepted"].as_u64(), v["rejected"].as_u64()), (Some((ROWS - n_bad) as u64), Some(n_bad as u64)));
    let errors = v["errors"].as_array().cloned().unwrap_or_default();
    for (at, _, field, words) in xsd_breakers() {
        let position = format!("/records/record[{at}]");
        let e = errors.iter().find(|e| e["position"] == position.as_str());
        let e = e.unwrap_or_else(|| panic!("no error for {position}: {v}"));
        assert_eq!(e["field"], field, "{e}");
        let message = e["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("not valid against the XSD: Element '"), "{e}");
        assert!(message.contains(words) && message.contains("(dataset version 1)"), "{e}");
    }
    let json_schema_row = errors.iter().find(|e| e["position"] == "/records/record[27]");
    let json_schema_row = json_schema_row.unwrap_or_else(|| panic!("row 27 not rejected: {v}"));
    assert_eq!(json_schema_row["field"], "/code", "{json_schema_row}");
    assert!(!json_schema_row["message"].as_str().unwrap_or_default().contains("XSD"), "{json_schema_row}");
    let stored = c.records(1, "xsd_rows").await?;
    assert_eq!(stored.len(), ROWS - n_bad);
    assert!(stored.iter().all(|(_, d)| {
        !["R0005", "R0012", "R0020", "R0033", "R0041", "R0027"].contains(&d["ref"].as_str().unwrap_or_default())
    }));
    // Typed from the XML text as before.
    let r1 = stored.iter().find(|(_, d)| d["ref"] == "R0001").map(|(_, d)| d.clone()).unwrap_or_default();
    assert_eq!((r1["transactions"].clone(), r1["rate"].clone()), (json!(101), json!(0.25)), "{r1}");

    // All or nothing: the same file, nothing stored, the rows listed in the error.
    let (s, v) = upload(&c, &http, &key, "xsd_all_or_nothing", std::fs::read(&bad_file)?, "?on_error=reject").await?;
    assert_eq!((s, v["error"]["code"].as_str()), (422, Some("invalid_records")), "{v}");
    let details = v["error"]["details"].as_array().cloned().unwrap_or_default();
    assert!(
        details.iter().any(|d| d["position"] == "/records/record[12]"
            && d["message"].as_str().unwrap_or_default().contains("enumeration")),
        "{v}"
    );
    assert!(c.records(1, "xsd_all_or_nothing").await?.is_empty());
    // …and the good file alone goes in whole.
    let (s, v) = upload(&c, &http, &key, "xsd_all_or_nothing", std::fs::read(&good_file)?, "?on_error=reject").await?;
    assert_eq!((s, v["accepted"].as_u64()), (201, Some(ROWS as u64)), "{v}");

    // SOAP's SubmitBatch carries the same file to the same check.
    let soap = format!(
        "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body>\
         <dtm:SubmitBatch xmlns:dtm=\"urn:dtm:soap:v1\"><dtm:Dataset>xsd_rows</dtm:Dataset>\
         <dtm:ContentType>application/xml</dtm:ContentType><dtm:Content>{}</dtm:Content></dtm:SubmitBatch>\
         </soap:Body></soap:Envelope>",
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&bad_file)?)
    );
    let resp = http
        .post(format!("{}/soap/v1", c.url(1)))
        .header("x-api-key", &key)
        .header("content-type", "text/xml; charset=utf-8")
        .body(soap)
        .send()
        .await?;
    let (status, text) = (resp.status().as_u16(), resp.text().await?);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(&format!("<dtm:Rejected>{n_bad}</dtm:Rejected>")), "{text}");
    assert!(text.contains("Element &apos;channel&apos;") || text.contains("Element 'channel'"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a3_2_open_records_publish_a_valid_xsd_and_dtds_stay_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let c = TestCluster::start(1, &[]).await?;
    let key = c.create_source(1, "ministry").await?;
    let http = client(&c)?;
    // Open records (additional properties allowed), as most datasets are.
    let mut def = closed_definition("xsd_open");
    def["schema"].as_object_mut().map(|s| s.remove("additionalProperties"));
    let (s, v) = c.admin(Method::POST, 1, "/api/v1/datasets", Some(def)).await?;
    anyhow::ensure!(s == 201, "define: {s} {v}");
    let mut rows: Vec<Value> = (1..=10).map(good).collect();
    rows[2]["extra"] = json!("kept by the JSON Schema's rules, allowed by the XSD");
    rows[6]["transactions"] = json!("seven");
    let (file, xsd_file) = (dir.path().join("open.xml"), dir.path().join("open.xsd"));
    write_xml(&file, &rows)?;
    save_xsd(&c, &http, &key, "xsd_open", &xsd_file).await?;
    // It compiles for xmlschema (the former choice-with-wildcard broke Unique Particle Attribution)…
    assert_eq!(xmlschema_invalid_records(&xsd_file, &file)?, vec![7]);
    // …and the server agrees.
    let (s, v) = upload(&c, &http, &key, "xsd_open", std::fs::read(&file)?, "").await?;
    assert_eq!((s, v["accepted"].as_u64(), v["rejected"].as_u64()), (201, Some(9), Some(1)), "{v}");
    assert_eq!(v["errors"][0]["position"], "/records/record[7]", "{v}");
    assert_eq!(v["errors"][0]["field"], "/transactions", "{v}");

    // Hostile documents: a clear 4xx, nothing expanded, nothing fetched, nothing stored.
    let laughs = "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;&lol;\">]>\
                  <records><record><ref>&lol2;</ref></record></records>";
    let xxe = "<?xml version=\"1.0\"?><!DOCTYPE records [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>\
               <records><record><ref>&x;</ref></record></records>";
    let undeclared = "<records><record><ref>&x;</ref></record></records>";
    let namespaced = "<records xmlns=\"urn:elsewhere\"><record><ref>R1</ref></record></records>";
    let cases = [
        (laughs, 422, "refused_content", "DOCTYPE"),
        (xxe, 422, "refused_content", "DOCTYPE"),
        (undeclared, 422, "refused_content", "predefined"),
        (namespaced, 422, "wrong_schema", "XSD"),
    ];
    let before = c.records(1, "xsd_open").await?.len();
    for (doc, status, code, words) in cases {
        let (s, v) = upload(&c, &http, &key, "xsd_open", doc.as_bytes().to_vec(), "").await?;
        assert_eq!((s, v["error"]["code"].as_str()), (status, Some(code)), "{doc}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(words), "{doc}: {v}");
        assert!(!message.contains("root:"), "{v}");
    }
    assert_eq!(c.records(1, "xsd_open").await?.len(), before);
    Ok(())
}

/// A large XML batch, generated while it is sent, is validated record by record: libxml2 never holds
/// more than one record, so the node's peak RSS stays under 256 MB. Most records carry a 64 KiB note
/// the XSD refuses (`maxLength` 1000), so every byte crosses the validator; every 50th is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a3_2_a_large_xml_upload_is_validated_in_bounded_memory() -> anyhow::Result<()> {
    let mb: usize = std::env::var("DTM_XSD_TEST_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let c = TestCluster::start(1, &[]).await?;
    let key = c.create_source(1, "ministry").await?;
    let (s, v) = c.admin(Method::POST, 1, "/api/v1/datasets", Some(closed_definition("xsd_big"))).await?;
    anyhow::ensure!(s == 201, "define: {s} {v}");
    let http = client(&c)?;
    let pid = c.nodes[&1].pid().ok_or_else(|| anyhow::anyhow!("node 1 is not running"))?;
    let note = "n".repeat(64 * 1024);
    let rows = mb * 1024 * 1024 / (note.len() + 200);
    let record = move |i: usize| {
        let note = if i.is_multiple_of(50) { "ok" } else { note.as_str() };
        format!(
            "<record><ref>R{i:07}</ref><agency>Bộ Tài chính</agency><period>2024-{:02}</period>\
             <channel>web</channel><transactions>{i}</transactions><note>{note}</note></record>\n",
            i % 12 + 1
        )
        .into_bytes()
    };
    let parts = std::iter::once(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<records>\n".to_vec())
        .chain((0..rows).map(record))
        .chain(std::iter::once(b"</records>\n".to_vec()));
    let stream = futures::stream::iter(parts).map(Ok::<_, std::io::Error>);
    let started = std::time::Instant::now();
    let resp = http
        .post(format!("{}/api/v1/datasets/xsd_big/batches", c.url(1)))
        .header("x-api-key", &key)
        .header("content-type", "application/xml")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await?;
    let (s, v) = (resp.status().as_u16(), resp.json::<Value>().await.unwrap_or(Value::Null));
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(s, 201, "{v}");
    let stored_rows = rows.div_ceil(50);
    assert_eq!((v["received"].as_u64(), v["accepted"].as_u64()), (Some(rows as u64), Some(stored_rows as u64)), "{v}");
    assert_eq!(v["error_count"], rows - stored_rows, "{v}");
    let first = v["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(first.contains("Element 'note'") && first.contains("maxLength"), "{v}");
    let peak = dtm_tests::peak_rss(pid)?;
    eprintln!(
        "{mb} MB XML ({rows} records) in {secs:.1} s = {:.1} MB/s; node peak RSS {} MB",
        mb as f64 / secs,
        peak >> 20
    );
    assert!(peak < 256 * 1024 * 1024, "peak RSS {} MB", peak >> 20);
    Ok(())
}
