//! XSD validation of XML input (A3.2) with libxml2, through the `libxml` crate: the XSD a dataset
//! version publishes (`GET /datasets/{id}/schema.xsd`, [`super::xsd_of`]) is the one XML batches
//! are checked against, record by record, as the streaming reader (`dtm_formats`, through
//! [`dtm_formats::XmlCheck`]) hands each `<record>` over as a small standalone document — a 1 GB
//! file never becomes a 1 GB libxml2 tree.
//!
//! libxml2 validation contexts are not thread-safe, so each thread compiles its own: a bounded
//! thread-local cache ([`VALIDATORS_PER_THREAD_MAX`] entries, least recently used out) keyed by
//! dataset, version and the XSD text's hash. A batch's parser thread compiles the schema once and
//! validates all of the batch's records with it.
//!
//! Nothing outside the document is ever read: records are parsed with `XML_PARSE_NONET` and without
//! `XML_PARSE_NOENT`, `XML_PARSE_DTDLOAD`, `XML_PARSE_DTDATTR`, `XML_PARSE_DTDVALID` or
//! `XML_PARSE_XINCLUDE` (the `libxml` crate's options cannot even express those), a document
//! holding `<!DOCTYPE` or `<!ENTITY` is refused before libxml2 sees it (the reader already refuses a
//! DOCTYPE anywhere in a file), and the schemas are generated here with no `xs:import`,
//! `xs:include` or `xs:redefine`, so compiling one opens nothing either.

use std::cell::RefCell;
use std::hash::Hash;
use std::hash::Hasher;
use std::rc::Rc;

use dtm_formats::RowProblem;
use libxml::error::StructuredError;
use libxml::parser::Parser;
use libxml::parser::ParserOptions;
use libxml::parser::XmlParseFailure;
use libxml::schemas::SchemaParserContext;
use libxml::schemas::SchemaValidationContext;
use serde_json::Value;

/// Compiled schemas kept per thread. Batches of a few datasets at a time are the norm; a thread that
/// sees more recompiles (a few milliseconds) instead of growing.
pub const VALIDATORS_PER_THREAD_MAX: usize = 16;

/// libxml2 messages quoted in one row error.
const MESSAGES_PER_ROW_MAX: usize = 3;

/// One compiled XSD with its validation context. Not `Send`: it stays on the thread that built it.
pub struct Validator {
    ctx: RefCell<SchemaValidationContext>,
}

/// Why a document is not valid: libxml2's messages, with the element each names when it names one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The element as a JSON Pointer (`/amount`), or empty for the record as a whole.
    pub field: String,
    pub message: String,
}

/// Quoted values longer than this are cut in messages (libxml2 quotes the whole offending value).
const QUOTED_CHARS_MAX: usize = 40;
/// A libxml2 message is cut at this many characters.
const MESSAGE_CHARS_MAX: usize = 400;

/// libxml2's message, trimmed, with long quoted values shortened (`'nnnn…' (65536 characters)`), so
/// that a 64 KiB value does not become a 64 KiB row error and the reason after it survives.
fn message_of(e: &StructuredError) -> String {
    let raw = e.message.as_deref().unwrap_or("invalid").trim();
    let mut out = String::new();
    for (i, part) in raw.split('\'').enumerate() {
        if i > 0 {
            out.push('\'');
        }
        let n = part.chars().count();
        if i % 2 == 1 && n > QUOTED_CHARS_MAX {
            out.extend(part.chars().take(QUOTED_CHARS_MAX - 8));
            out.push_str(&format!("… ({n} characters)"));
        } else {
            out.push_str(part);
        }
    }
    if out.chars().count() > MESSAGE_CHARS_MAX {
        out = out.chars().take(MESSAGE_CHARS_MAX).collect::<String>() + "…";
    }
    out
}

/// The field an XSD message is about: `Element 'amount': …` → `/amount`. For the record element's
/// `Missing child element(s). Expected is ( agency ).` the one expected, or among several (libxml2
/// lists every element still allowed) the first required one.
fn field_of(message: &str, required: &[String]) -> String {
    let Some(rest) = message.strip_prefix("Element '") else { return String::new() };
    let Some((name, _)) = rest.split_once('\'') else { return String::new() };
    if name != "record" && name != "records" {
        return format!("/{name}");
    }
    let Some((_, expected)) = message.split_once("Expected is ") else { return String::new() };
    let expected = expected.strip_prefix("one of ").unwrap_or(expected);
    let Some(list) = expected.strip_prefix("( ").and_then(|e| e.split_once(" )")).map(|(l, _)| l) else {
        return String::new();
    };
    let names: Vec<&str> = list.split(',').map(str::trim).collect();
    match names.as_slice() {
        [one] => format!("/{one}"),
        many => many.iter().find(|n| required.iter().any(|r| r == *n)).map(|n| format!("/{n}")).unwrap_or_default(),
    }
}

fn invalid(errors: &[StructuredError], what: &str, required: &[String]) -> Invalid {
    let messages: Vec<String> = errors.iter().take(MESSAGES_PER_ROW_MAX).map(message_of).collect();
    let field = messages.first().map(|m| field_of(m, required)).unwrap_or_default();
    let more = errors.len().saturating_sub(MESSAGES_PER_ROW_MAX);
    let mut message = format!("{what}: {}", messages.join(" "));
    if more > 0 {
        message.push_str(&format!(" (and {more} more)"));
    }
    Invalid { field, message }
}

/// Compiles an XSD (no cache).
pub fn compile(xsd: &str) -> Result<Validator, String> {
    let mut parser = SchemaParserContext::from_buffer(xsd.as_bytes());
    match SchemaValidationContext::from_parser(&mut parser) {
        Ok(ctx) => Ok(Validator { ctx: RefCell::new(ctx) }),
        Err(errors) => {
            let messages: Vec<String> = errors.iter().take(MESSAGES_PER_ROW_MAX).map(message_of).collect();
            Err(format!("the XSD does not compile: {}", messages.join(" ")))
        }
    }
}

impl Validator {
    /// Parses `doc` (no network, no DTD, no entity expansion) and validates it.
    pub fn validate(&self, doc: &[u8]) -> Result<(), Invalid> {
        self.validate_naming(doc, &[])
    }

    /// [`Self::validate`], naming a missing element among `required` when libxml2 lists several.
    pub fn validate_naming(&self, doc: &[u8], required: &[String]) -> Result<(), Invalid> {
        let lower_has = |needle: &[u8]| doc.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle));
        if lower_has(b"<!doctype") || lower_has(b"<!entity") {
            return Err(Invalid {
                field: String::new(),
                message: "a DOCTYPE or entity declaration is not accepted".into(),
            });
        }
        let options = ParserOptions {
            recover: false,
            no_def_dtd: true,
            no_error: true,
            no_warning: true,
            no_net: true,
            ..ParserOptions::default()
        };
        let document = match Parser::default().parse_string_with_diagnostics(doc, options) {
            Ok((document, _warnings)) => document,
            Err(XmlParseFailure::ParseFailed(errors)) => return Err(invalid(&errors, "not well-formed XML", &[])),
            Err(other) => return Err(Invalid { field: String::new(), message: format!("not parsed: {other}") }),
        };
        let Ok(mut ctx) = self.ctx.try_borrow_mut() else {
            // Only reachable by re-entering from libxml2's callbacks, which do not call back here.
            return Err(Invalid { field: String::new(), message: "the XSD validator is busy".into() });
        };
        ctx.validate_document(&document).map_err(|errors| invalid(&errors, "not valid against the XSD", required))
    }
}

#[derive(Clone, PartialEq, Eq)]
struct Key {
    dataset: String,
    version: u32,
    hash: u64,
}

thread_local! {
    static VALIDATORS: RefCell<Vec<(Key, Rc<Validator>)>> = const { RefCell::new(Vec::new()) };
}

fn hash_of(xsd: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    xsd.hash(&mut h);
    h.finish()
}

/// This thread's validator for a dataset version's XSD, compiled on first use.
pub fn cached(dataset: &str, version: u32, xsd: &str) -> Result<Rc<Validator>, String> {
    let key = Key { dataset: dataset.to_string(), version, hash: hash_of(xsd) };
    let hit = VALIDATORS.with_borrow_mut(|cache| {
        let at = cache.iter().position(|(k, _)| *k == key)?;
        // Most recently used last.
        let entry = cache.remove(at);
        let v = entry.1.clone();
        cache.push(entry);
        Some(v)
    });
    if let Some(v) = hit {
        return Ok(v);
    }
    let v = Rc::new(compile(xsd)?);
    VALIDATORS.with_borrow_mut(|cache| {
        if cache.len() >= VALIDATORS_PER_THREAD_MAX {
            cache.remove(0);
        }
        cache.push((key, v.clone()));
    });
    Ok(v)
}

/// How many validators this thread holds (for tests).
#[cfg(test)]
fn cached_count() -> usize {
    VALIDATORS.with_borrow(Vec::len)
}

/// The XSD a dataset version publishes and enforces: [`super::xsd_of`], checked to compile (and
/// kept in this thread's cache). Should libxml2 refuse a translated `pattern`, the XSD is published
/// without patterns (the JSON Schema still checks them) rather than broken.
pub fn published(dataset: &str, version: u32, title: &str, schema: &Value) -> Result<String, String> {
    let with_patterns = super::xsd_of(title, schema)?;
    match cached(dataset, version, &with_patterns) {
        Ok(_) => Ok(with_patterns),
        Err(first) => {
            let without = super::xsd_with(title, schema, false)?;
            if without == with_patterns {
                return Err(first);
            }
            tracing::warn!(dataset, version, error = %first, "the XSD's patterns do not compile; published without them");
            cached(dataset, version, &without).map(|_| without)
        }
    }
}

/// The check the XML reader runs on a batch: the root and each record against one version's XSD.
pub struct RecordCheck {
    validator: Rc<Validator>,
    version: u32,
    /// The JSON Schema's required properties, to name a missing one.
    required: Vec<String>,
}

impl RecordCheck {
    pub fn new(dataset: &str, version: u32, xsd: &str, required: Vec<String>) -> Result<RecordCheck, String> {
        Ok(RecordCheck { validator: cached(dataset, version, xsd)?, version, required })
    }
}

impl dtm_formats::XmlCheck for RecordCheck {
    fn root(&mut self, doc: &[u8]) -> Result<(), String> {
        self.validator.validate(doc).map_err(|e| format!("{} (dataset version {})", e.message, self.version))
    }

    fn record(&mut self, doc: &[u8]) -> Result<(), RowProblem> {
        self.validator.validate_naming(doc, &self.required).map_err(|e| RowProblem {
            field: e.field,
            message: format!("{} (dataset version {})", e.message, self.version),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "additionalProperties": false, "required": ["agency", "n", "channel"],
            "properties": {"agency": {"type": "string", "minLength": 2, "maxLength": 8},
                           "n": {"type": "integer", "minimum": 0, "maximum": 100},
                           "rate": {"type": "number", "exclusiveMinimum": 0},
                           "channel": {"enum": ["web", "mobile"]}, "ok": {"type": "boolean"},
                           "period": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"}}})
    }

    fn validator() -> Validator {
        compile(&crate::api::xsd::xsd_of("t", &schema()).expect("xsd")).expect("compiles")
    }

    #[test]
    fn a_valid_record_and_a_whole_file_pass() {
        let v = validator();
        let rec = "<record><agency>MoF</agency><n>3</n><rate>1e-3</rate><channel>web</channel><ok>true</ok>\
                   <period>2024-01</period></record>";
        assert_eq!(v.validate(rec.as_bytes()), Ok(()));
        // Optional fields may be empty (absent) or left out; the order is free.
        let rec = "<record><channel>mobile</channel><ok/><n>0</n><agency>MoF</agency><rate></rate></record>";
        assert_eq!(v.validate(rec.as_bytes()), Ok(()));
        let file = format!("<?xml version=\"1.0\"?><records>{rec}{rec}</records>");
        assert_eq!(v.validate(file.as_bytes()), Ok(()));
        assert_eq!(v.validate(b"<records/>"), Ok(()));
    }

    #[test]
    fn each_violation_names_the_element_and_the_reason() {
        let v = validator();
        let cases = [
            ("<record><agency>MoF</agency><n>x</n><channel>web</channel></record>", "/n", "'x'"),
            ("<record><agency>MoF</agency><n>101</n><channel>web</channel></record>", "/n", "maxInclusive"),
            ("<record><agency>MoF</agency><n>1</n><channel>fax</channel></record>", "/channel", "enumeration"),
            ("<record><agency>MoF</agency><channel>web</channel></record>", "", "Missing child"),
            ("<record><agency>MoF</agency><n>1</n><channel>web</channel><x>1</x></record>", "/x", "not expected"),
            ("<record><agency>M</agency><n>1</n><channel>web</channel></record>", "/agency", "minLength"),
            ("<record><agency>MoF</agency><n>1</n><n>2</n><channel>web</channel></record>", "/n", "not expected"),
            (
                "<record><agency>MoF</agency><n>1</n><channel>web</channel><period>2024-1</period></record>",
                "/period",
                "'2024-1'",
            ),
            ("<record><agency>MoF</agency><n>1</n><channel>web</channel><rate>0</rate></record>", "/rate", "union"),
        ];
        for (doc, field, text) in cases {
            let e = v.validate(doc.as_bytes()).expect_err(doc);
            assert_eq!(e.field, field, "{doc}: {e:?}");
            assert!(e.message.contains(text), "{doc}: {e:?}");
            assert!(e.message.starts_with("not valid against the XSD: Element '"), "{e:?}");
        }
        // Among the elements libxml2 still expects, the required one is named.
        let missing = b"<record><agency>MoF</agency><channel>web</channel></record>";
        let e = v.validate_naming(missing, &["agency".into(), "n".into()]).expect_err("missing");
        assert_eq!(e.field, "/n", "{e:?}");
        // A long value does not make a long message; the reason stays.
        let long = format!("<record><agency>{}</agency><n>1</n><channel>web</channel></record>", "x".repeat(70_000));
        let e = v.validate(long.as_bytes()).expect_err("too long");
        assert!(e.message.len() < 600 && e.message.contains("maxLength"), "{e:?}");
        let long = format!(
            "<record><agency>MoF</agency><n>1</n><channel>web</channel><rate>{}</rate></record>",
            "y".repeat(70_000)
        );
        let e = v.validate(long.as_bytes()).expect_err("not a number");
        assert!(e.message.len() < 600 && e.message.contains("Element 'rate'"), "{e:?}");
        let e = v.validate(b"<record><agency>MoF</agency>").expect_err("truncated");
        assert!(e.message.starts_with("not well-formed XML"), "{e:?}");
    }

    #[test]
    fn dtds_and_external_entities_are_never_processed() {
        let v = validator();
        let xxe = "<?xml version=\"1.0\"?><!DOCTYPE record [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>\
                   <record><agency>&x;</agency><n>1</n><channel>web</channel></record>";
        let e = v.validate(xxe.as_bytes()).expect_err("refused");
        assert!(e.message.contains("DOCTYPE"), "{e:?}");
        assert!(!e.message.contains("root:"), "{e:?}");
        // Schema location hints are not followed (the XSD is given; nothing is fetched).
        let hinted = "<records xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
                      xsi:noNamespaceSchemaLocation=\"http://127.0.0.1:9/elsewhere.xsd\"/>";
        assert_eq!(v.validate(hinted.as_bytes()), Ok(()));
        // An undeclared entity is an error, not a lookup.
        let e = v.validate(b"<record><agency>&x;</agency><n>1</n><channel>web</channel></record>").expect_err("e");
        assert!(e.message.contains("not well-formed"), "{e:?}");
    }

    #[test]
    fn a_schema_that_does_not_compile_is_an_error_not_a_panic() {
        let e = compile("<xs:schema xmlns:xs=\"http://www.w3.org/2001/XMLSchema\"><xs:element name=\"a\" type=\"nope\"/></xs:schema>")
            .err()
            .expect("refused");
        assert!(e.starts_with("the XSD does not compile"), "{e}");
        assert!(compile("not xml").is_err());
        // A pattern libxml2 refuses: the published XSD drops the patterns rather than break.
        let s = json!({"type": "object", "properties": {"p": {"type": "string", "pattern": "^\\uFFFF$"}}});
        let xsd = published("ds_bad_pattern", 1, "t", &s).expect("published");
        assert!(!xsd.contains("xs:pattern"), "{xsd}");
    }

    #[test]
    fn threads_validate_at_the_same_time_each_with_its_own_validator() {
        let xsd = crate::api::xsd::xsd_of("t", &schema()).expect("xsd");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let xsd = xsd.clone();
                std::thread::spawn(move || {
                    let v = cached("ds_threads", 1, &xsd).expect("compiles");
                    let (mut ok, mut bad) = (0, 0);
                    for i in 0..2_000 {
                        let n = if i % 10 == 0 { "x".to_string() } else { (i % 100).to_string() };
                        let doc = format!("<record><agency>T{t}</agency><n>{n}</n><channel>web</channel></record>");
                        match v.validate(doc.as_bytes()) {
                            Ok(()) => ok += 1,
                            Err(e) if e.field == "/n" => bad += 1,
                            Err(e) => panic!("{e:?}"),
                        }
                    }
                    (ok, bad)
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().expect("thread"), (1_800, 200));
        }
    }

    #[test]
    fn the_thread_local_cache_is_bounded_and_reused() {
        std::thread::spawn(|| {
            let xsd = crate::api::xsd::xsd_of("t", &schema()).expect("xsd");
            let a = cached("ds_a", 1, &xsd).expect("a");
            let again = cached("ds_a", 1, &xsd).expect("a again");
            assert!(Rc::ptr_eq(&a, &again), "compiled once per version per thread");
            assert_eq!(cached_count(), 1);
            for version in 2..=(VALIDATORS_PER_THREAD_MAX as u32 + 5) {
                cached("ds_a", version, &xsd).expect("compiles");
            }
            assert_eq!(cached_count(), VALIDATORS_PER_THREAD_MAX);
            // Version 1 was the least recently used: it was evicted and is compiled anew.
            let fresh = cached("ds_a", 1, &xsd).expect("a");
            assert!(!Rc::ptr_eq(&a, &fresh));
            // Another thread has its own.
            std::thread::spawn(|| assert_eq!(cached_count(), 0)).join().expect("other thread");
        })
        .join()
        .expect("test thread");
    }

    /// The cost of the check per record: the XML reader over a generated file with and without it
    /// (every record must pass both ways). CI runs 2,000 records; the benchmark is
    /// `DTM_XSD_BENCH_RECORDS=50000 cargo test --release -p dtm-node --bin dtm xsd_cost_per_record -- --nocapture`.
    #[test]
    fn xsd_cost_per_record() {
        let n: usize = std::env::var("DTM_XSD_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000);
        let mut xml = String::from("<?xml version=\"1.0\"?>\n<records>\n");
        for i in 0..n {
            xml.push_str(&format!(
                "<record><agency>MoF</agency><n>{}</n><rate>{}.5</rate><channel>web</channel><ok>true</ok>\
                 <period>2024-{:02}</period></record>\n",
                i % 100,
                i,
                i % 12 + 1
            ));
        }
        xml.push_str("</records>\n");
        let columns = dtm_formats::Columns::from_json_schema(&schema());
        let run = |check: Option<&mut dyn dtm_formats::XmlCheck>| {
            let mut ok = 0usize;
            let mut sink = |_: dtm_formats::Position, item: dtm_formats::Item| {
                ok += usize::from(item.is_ok());
                std::ops::ControlFlow::Continue(())
            };
            let started = std::time::Instant::now();
            dtm_formats::read_stream_checked(dtm_formats::Format::Xml, xml.as_bytes(), &columns, check, &mut sink)
                .expect("read");
            (started.elapsed(), ok)
        };
        let xsd = crate::api::xsd::xsd_of("t", &schema()).expect("xsd");
        let compile_started = std::time::Instant::now();
        let mut check = RecordCheck::new("bench", 1, &xsd, Vec::new()).expect("compiles");
        let compile = compile_started.elapsed();
        let (plain, plain_ok) = run(None);
        let (checked, checked_ok) = run(Some(&mut check));
        assert_eq!((plain_ok, checked_ok), (n, n));
        let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / n as f64;
        eprintln!(
            "XML reader: {:.2} µs/record without the XSD, {:.2} µs/record with it (+{:.2} µs); \
             compiling the XSD: {:.2} ms; {n} records, {} bytes",
            per(plain),
            per(checked),
            per(checked) - per(plain),
            compile.as_secs_f64() * 1e3,
            xml.len()
        );
    }
}
