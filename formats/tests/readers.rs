//! The readers on good and adversarial input: every format gives the same records, and bad input
//! (truncated, a stray quote, billion laughs, deep nesting, a zip bomb, wrong types) is an error
//! naming where, never a panic.

use std::io::Write;
use std::ops::ControlFlow;
use std::sync::Arc;

use dtm_formats::Columns;
use dtm_formats::FieldType;
use dtm_formats::Format;
use dtm_formats::FormatError;
use dtm_formats::Item;
use dtm_formats::Position;
use serde_json::Value;
use serde_json::json;

fn columns() -> Columns {
    Columns::from_json_schema(&json!({"properties": {
        "agency": {"type": "string"}, "transactions": {"type": "integer"},
        "rate": {"type": "number"}, "ok": {"type": ["boolean", "null"]}, "note": {"type": "string"}}}))
}

fn read(format: Format, bytes: &[u8]) -> Result<Vec<(String, Item)>, FormatError> {
    let mut out = Vec::new();
    let mut sink = |p: Position, i: Item| {
        out.push((p.0, i));
        ControlFlow::Continue(())
    };
    let input: Arc<dyn dtm_formats::RandomRead> = Arc::new(bytes.to_vec());
    dtm_formats::read_random(format, input, &columns(), &mut sink)?;
    Ok(out)
}

fn records(format: Format, bytes: &[u8]) -> Vec<Value> {
    read(format, bytes).unwrap().into_iter().map(|(_, i)| Value::Object(i.unwrap())).collect()
}

fn expected() -> Vec<Value> {
    vec![
        json!({"agency": "Bộ Tài chính", "transactions": 12, "rate": 0.5, "ok": true, "note": "a, \"quoted\"\nline"}),
        json!({"agency": "UBND Hà Nội", "transactions": 7, "rate": 2, "ok": false}),
    ]
}

#[test]
fn streamed_formats_give_the_same_records() {
    let json_array = serde_json::to_vec(&expected()).unwrap();
    assert_eq!(records(Format::Json, &json_array), expected());
    let ndjson: String = expected().iter().map(|v| format!("{v}\n")).collect();
    assert_eq!(records(Format::Ndjson, ndjson.as_bytes()), expected());
    let csv = "\u{feff}agency,transactions,rate,ok,note\r\nBộ Tài chính,12,0.5,true,\"a, \"\"quoted\"\"\nline\"\r\nUBND Hà Nội,7,2,false,\r\n";
    assert_eq!(records(Format::Csv, csv.as_bytes()), expected());
    let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<records>\n<record><agency>Bộ Tài chính</agency><transactions>12</transactions><rate>0.5</rate><ok>true</ok><note>a, &quot;quoted&quot;&#10;line</note></record>\n<record><agency>UBND Hà Nội</agency><transactions>7</transactions><rate>2</rate><ok>false</ok><note/></record></records>";
    assert_eq!(records(Format::Xml, xml.as_bytes()), expected());
}

#[test]
fn positions_name_rows_pointers_and_xpaths() {
    let ps = |f, b: &[u8]| read(f, b).unwrap().into_iter().map(|(p, _)| p).collect::<Vec<_>>();
    assert_eq!(ps(Format::Json, b"[{\"a\":1},{\"a\":2}]"), ["/0", "/1"]);
    assert_eq!(ps(Format::Ndjson, b"{\"a\":1}\n\n{\"a\":2}"), ["line 1", "line 3"]);
    assert_eq!(ps(Format::Csv, b"a\n1\n2\n"), ["row 2", "row 3"]);
    assert_eq!(
        ps(Format::Xml, b"<records><record><a>1</a></record><record/></records>"),
        ["/records/record[1]", "/records/record[2]"]
    );
}

#[test]
fn values_that_do_not_fit_their_type_stay_text_for_validation_to_name() {
    let got = records(Format::Csv, b"transactions,ok\nmany,maybe\n");
    assert_eq!(got, vec![json!({"transactions": "many", "ok": "maybe"})]);
    assert_eq!(columns().get("transactions"), FieldType::Integer);
    assert_eq!(columns().typed("transactions", "12.0".into()), json!(12));
}

fn err(format: Format, bytes: &[u8]) -> FormatError {
    match read(format, bytes) {
        Err(e) => e,
        Ok(r) => panic!("{format:?} accepted bad input: {r:?}"),
    }
}

#[test]
fn csv_stray_quotes_name_row_and_column() {
    let e = err(Format::Csv, b"agency,note\nA,ok\nB,he said \"hi\"\n");
    assert_eq!(e.code(), "malformed_batch");
    assert!(e.to_string().contains("row 3, column 2 (`note`)"), "{e}");
    let e = err(Format::Csv, b"agency,note\nA,\"closed\"x\n");
    assert!(e.to_string().contains("row 2, column 2"), "{e}");
    let e = err(Format::Csv, b"agency,note\nA,\"never closed\n");
    assert!(e.to_string().contains("row 2") && e.to_string().contains("truncated"), "{e}");
}

#[test]
fn csv_rows_with_the_wrong_width_are_rejected_alone() {
    let got = read(Format::Csv, b"a,b\n1,2\n3\n4,5\n").unwrap();
    assert_eq!(got.len(), 3);
    assert!(got[1].1.as_ref().is_err_and(|p| p.message.contains("1 fields")));
}

#[test]
fn truncated_files_are_malformed_with_a_position() {
    let e = err(Format::Json, b"[{\"a\": 1}, {\"a\": 2");
    assert!(e.to_string().contains("/1") && e.to_string().contains("truncated"), "{e}");
    let e = err(Format::Json, b"[{\"a\": 1},");
    assert_eq!(e.code(), "malformed_batch");
    let e = err(Format::Ndjson, b"{\"a\": 1}\n{\"a\": ");
    assert!(e.to_string().contains("line 2"), "{e}");
    let e = err(Format::Xml, b"<records><record><a>1</a></record><record><a>2</a>");
    assert!(e.to_string().contains("/records/record[2]"), "{e}");
    let e = err(Format::Parquet, b"PAR1 not really");
    assert_eq!(e.code(), "malformed_batch");
    let e = err(Format::Xlsx, b"PK\x03\x04 cut short");
    assert_eq!(e.code(), "malformed_batch");
}

#[test]
fn deep_nesting_is_refused_before_parsing() {
    let deep = format!("[{}{}]", "[".repeat(100_000), "]".repeat(100_000));
    let e = err(Format::Json, deep.as_bytes());
    assert!(e.to_string().contains("deeper than"), "{e}");
    let deep = format!("{{\"a\":{}1{}}}\n", "[".repeat(5_000), "]".repeat(5_000));
    assert!(err(Format::Ndjson, deep.as_bytes()).to_string().contains("deeper than"));
    let e = err(Format::Xml, b"<records><record><a><b>1</b></a></record></records>");
    assert!(e.to_string().contains("nothing nests deeper"), "{e}");
}

#[test]
fn doctype_and_billion_laughs_are_refused() {
    let laughs = br#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<records><record><a>&lol2;</a></record></records>"#;
    let e = err(Format::Xml, laughs);
    assert_eq!(e.code(), "refused_content");
    assert!(e.to_string().contains("DOCTYPE"), "{e}");
    let e = err(Format::Xml, b"<records><record><a>&lol;</a></record></records>");
    assert_eq!(e.code(), "refused_content");
}

#[test]
fn oversized_records_are_refused() {
    let big = format!("[{{\"a\": \"{}\"}}]", "x".repeat(dtm_formats::limits::RECORD_BYTES_MAX));
    assert_eq!(err(Format::Json, big.as_bytes()).code(), "record_too_large");
    let big = format!("{{\"a\": \"{}\"}}\n", "x".repeat(dtm_formats::limits::RECORD_BYTES_MAX));
    assert_eq!(err(Format::Ndjson, big.as_bytes()).code(), "record_too_large");
    let big = format!("a\n{}\n", "x".repeat(dtm_formats::limits::RECORD_BYTES_MAX + 1));
    assert_eq!(err(Format::Csv, big.as_bytes()).code(), "record_too_large");
    let big = format!("<records><record><a>{}</a></record></records>", "x".repeat(1_000_000));
    let e = err(Format::Xml, big.as_bytes());
    assert!(matches!(e.code(), "record_too_large" | "malformed_batch"), "{e}");
}

/// A zip whose one entry inflates 1000-fold: refused before calamine sees it.
#[test]
fn xlsx_zip_bombs_are_refused() {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("xl/worksheets/sheet1.xml", opts).unwrap();
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..64 {
        zip.write_all(&zeros).unwrap();
    }
    let bytes = zip.finish().unwrap().into_inner();
    assert!(bytes.len() < 1024 * 1024);
    let e = err(Format::Xlsx, &bytes);
    assert_eq!(e.code(), "refused_content");
    assert!(e.to_string().contains("zip bomb"), "{e}");
}

#[test]
fn nothing_panics_on_mangled_input() {
    let seeds: Vec<Vec<u8>> = vec![
        serde_json::to_vec(&expected()).unwrap(),
        b"agency,transactions\n\"a\",1\nb,2\n".to_vec(),
        b"<records><record><a>1</a></record></records>".to_vec(),
        b"{\"a\":1}\n{\"b\":[1,2,{\"c\":3}]}\n".to_vec(),
    ];
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for seed in &seeds {
        for _ in 0..400 {
            let mut b = seed.clone();
            for _ in 0..(rnd() % 4 + 1) {
                let i = (rnd() as usize) % b.len();
                match rnd() % 3 {
                    0 => b[i] = rnd() as u8,
                    1 => b.truncate(i),
                    _ => b.insert(i, b"\"<>[]{},\n&"[(rnd() % 10) as usize]),
                }
                if b.is_empty() {
                    break;
                }
            }
            for f in Format::ALL {
                let _ = read(f, &b);
            }
        }
    }
}

#[test]
fn formats_are_found_by_media_type_extension_and_name() {
    for f in Format::ALL {
        assert_eq!(Format::from_media_type(&format!("{}; charset=utf-8", f.media_type())), Some(f));
        assert_eq!(Format::from_name(f.name()), Some(f));
        assert_eq!(Format::from_extension(&format!("data.{}", f.name())), Some(f));
    }
    assert_eq!(Format::from_media_type("text/plain"), None);
}
