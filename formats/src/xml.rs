//! The dataset's XML form: `<records><record><field>text</field>…</record>…</records>`, one element
//! per field, text typed by the dataset's declared types. A DOCTYPE is refused outright (no
//! internal subset, hence no entity expansion and no external references), only the five
//! predefined entities and character references are resolved, and nothing nests deeper than a
//! field.
//!
//! With an [`XmlCheck`] (the node's XSD validator), the reader also hands over the root start tag
//! and each record's own text, rebuilt from its events (start tags as written, text and references
//! as written, CDATA, end tags; comments and processing instructions left out), as a standalone
//! `<record>` document carrying the root's namespace declarations. A record the check rejects is a
//! row problem with the check's reason; memory stays bounded by one record.

use std::io::BufReader;
use std::io::Read;

use quick_xml::events::Event;
use serde_json::Map;

use crate::Columns;
use crate::FormatError;
use crate::Position;
use crate::RowProblem;
use crate::Sink;
use crate::XmlCheck;
use crate::field_name_ok;
use crate::limits::FIELDS_PER_RECORD_MAX;
use crate::limits::RECORD_BYTES_MAX;

const FORMAT: &str = "XML";

fn malformed(position: impl Into<String>, message: impl Into<String>) -> FormatError {
    FormatError::Malformed { format: FORMAT, position: position.into(), message: message.into() }
}

/// Bytes one XML event may read (a tag or a text node): a record is at most `RECORD_BYTES_MAX`,
/// plus the read-ahead of the buffer.
const EVENT_BYTES_MAX: u64 = RECORD_BYTES_MAX as u64 + 128 * 1024;

/// A reader that fails once the current event's budget is spent.
struct Budgeted<R> {
    inner: R,
    budget: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.budget.get();
        if left == 0 {
            return Err(std::io::Error::other(format!("an element or text larger than {RECORD_BYTES_MAX} bytes")));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.budget.set(left - n as u64);
        Ok(n)
    }
}

enum Level {
    /// Before `<records>`.
    Document,
    /// Inside `<records>`.
    Records,
    /// Inside the n-th `<record>`.
    Record,
    /// Inside a field element.
    Field,
    /// After `</records>`.
    Done,
}

/// The text of the record being read, for the check: the record's events written back.
#[derive(Default)]
struct RawRecord {
    /// The root's `xmlns…` attributes, written out (` xmlns:p="…"`), with their names.
    namespaces: Vec<(String, String)>,
    text: String,
}

impl RawRecord {
    fn start(&mut self, tag: &str, record: bool, own_attributes: &[String]) {
        self.text.push('<');
        self.text.push_str(tag);
        if record {
            for (name, written) in &self.namespaces {
                if !own_attributes.iter().any(|a| a == name) {
                    self.text.push_str(written);
                }
            }
        }
        self.text.push('>');
    }
}

/// The `xmlns` / `xmlns:p` attributes of a start tag, as `(name, " name=\"value\"")`.
fn namespace_attributes(e: &quick_xml::events::BytesStart<'_>) -> Vec<(String, String)> {
    e.attributes()
        .filter_map(Result::ok)
        .filter(|a| {
            let k: &str = a.key.as_ref();
            k == "xmlns" || k.starts_with("xmlns:")
        })
        .map(|a| {
            let k: &str = a.key.as_ref();
            let quote = if a.value.contains('"') { '\'' } else { '"' };
            (k.to_string(), format!(" {k}={quote}{}{quote}", a.value))
        })
        .collect()
}

/// The attribute names of a start tag.
fn attribute_names(e: &quick_xml::events::BytesStart<'_>) -> Vec<String> {
    e.attributes().filter_map(Result::ok).map(|a| AsRef::<str>::as_ref(&a.key).to_string()).collect()
}

pub fn read(
    input: impl Read,
    columns: &Columns,
    mut check: Option<&mut dyn XmlCheck>,
    sink: &mut Sink<'_>,
) -> Result<u64, FormatError> {
    // quick-xml buffers a whole event; the budget bounds how much one event may read.
    let budget = std::rc::Rc::new(std::cell::Cell::new(EVENT_BYTES_MAX));
    let guarded = Budgeted { inner: input, budget: budget.clone() };
    let mut reader = quick_xml::Reader::from_reader(BufReader::with_capacity(64 * 1024, guarded));
    {
        let config = reader.config_mut();
        config.check_end_names = true;
        config.expand_empty_elements = true;
    }
    let mut buf = Vec::new();
    let mut level = Level::Document;
    let mut count = 0u64;
    let mut record = Map::new();
    let mut problem: Option<RowProblem> = None;
    let mut field_name = String::new();
    let mut text = String::new();
    let mut record_bytes = 0usize;
    let mut raw = RawRecord::default();
    let checking = check.is_some();
    loop {
        buf.clear();
        budget.set(EVENT_BYTES_MAX);
        let before = reader.buffer_position();
        let here = |count: u64, level: &Level| match level {
            Level::Record | Level::Field => format!("/records/record[{}]", count + 1),
            Level::Records => "/records".to_string(),
            Level::Document | Level::Done => "/".to_string(),
        };
        let event = reader.read_event_into(&mut buf).map_err(|e| {
            malformed(format!("{} (byte {})", here(count, &level), reader.error_position()), e.to_string())
        })?;
        record_bytes += (reader.buffer_position() - before) as usize;
        if record_bytes > RECORD_BYTES_MAX {
            return Err(FormatError::TooLarge {
                format: FORMAT,
                position: here(count, &level),
                message: format!("a record is larger than {RECORD_BYTES_MAX} bytes"),
            });
        }
        match event {
            Event::DocType(_) => {
                return Err(FormatError::Refused {
                    format: FORMAT,
                    message: "a DOCTYPE is not accepted (no DTDs, entity declarations or external references)".into(),
                });
            }
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Start(e) => {
                let name = e.local_name().as_ref().to_string();
                if checking && matches!(level, Level::Record) {
                    raw.start(&e, false, &[]);
                }
                match level {
                    Level::Document if name == "records" => {
                        if let Some(check) = check.as_deref_mut() {
                            let tag: &str = &e;
                            check.root(format!("<{tag}/>").as_bytes()).map_err(|message| FormatError::WrongSchema {
                                format: FORMAT,
                                message: format!("<records>: {message}"),
                            })?;
                            raw.namespaces = namespace_attributes(&e);
                        }
                        level = Level::Records
                    }
                    Level::Document => {
                        return Err(malformed("/", format!("the root element must be <records>, not <{name}>")));
                    }
                    Level::Records if name == "record" => {
                        level = Level::Record;
                        record = Map::new();
                        problem = None;
                        record_bytes = 0;
                        if checking {
                            raw.text.clear();
                            raw.start(&e, true, &attribute_names(&e));
                        }
                    }
                    Level::Records => {
                        return Err(malformed(
                            format!("/records/{name}"),
                            format!("<records> holds <record> elements, not <{name}>"),
                        ));
                    }
                    Level::Record => {
                        let position = format!("/records/record[{}]/{name}", count + 1);
                        field_name_ok(&name).map_err(|m| malformed(&position, m))?;
                        if record.len() >= FIELDS_PER_RECORD_MAX {
                            return Err(FormatError::TooLarge {
                                format: FORMAT,
                                position,
                                message: format!("a record has more than {FIELDS_PER_RECORD_MAX} fields"),
                            });
                        }
                        field_name = name;
                        text.clear();
                        level = Level::Field;
                    }
                    Level::Field => {
                        return Err(malformed(
                            format!("/records/record[{}]/{field_name}/{name}", count + 1),
                            "a field holds text, not elements (nothing nests deeper than a field)",
                        ));
                    }
                    Level::Done => return Err(malformed("/", "content after </records>")),
                }
            }
            Event::Empty(_) => return Err(malformed(here(count, &level), "unexpected empty element")),
            Event::Text(t) => {
                if checking && matches!(level, Level::Record | Level::Field) {
                    raw.text.push_str(&t);
                }
                let content = t.xml10_content();
                match level {
                    Level::Field => text.push_str(&content),
                    _ if content.trim().is_empty() => {}
                    _ => return Err(malformed(here(count, &level), "text outside a field")),
                }
            }
            Event::CData(t) => match level {
                Level::Field => {
                    if checking {
                        raw.text.push_str("<![CDATA[");
                        raw.text.push_str(&t);
                        raw.text.push_str("]]>");
                    }
                    text.push_str(&t.xml10_content())
                }
                _ => return Err(malformed(here(count, &level), "CDATA outside a field")),
            },
            Event::GeneralRef(r) => {
                let resolved = if r.is_char_ref() {
                    r.resolve_char_ref().ok().flatten()
                } else {
                    match r.as_ref() {
                        "lt" => Some('<'),
                        "gt" => Some('>'),
                        "amp" => Some('&'),
                        "apos" => Some('\''),
                        "quot" => Some('"'),
                        _ => None,
                    }
                };
                let Some(c) = resolved else {
                    return Err(FormatError::Refused {
                        format: FORMAT,
                        message: format!(
                            "entity `&{};` at {} is not one of the predefined ones (no entity expansion)",
                            r.as_ref(),
                            here(count, &level)
                        ),
                    });
                };
                match level {
                    Level::Field => {
                        if checking {
                            raw.text.push('&');
                            raw.text.push_str(&r);
                            raw.text.push(';');
                        }
                        text.push(c)
                    }
                    _ => return Err(malformed(here(count, &level), "text outside a field")),
                }
            }
            Event::End(e) => match level {
                Level::Field => {
                    if checking {
                        raw.text.push_str("</");
                        raw.text.push_str(&e);
                        raw.text.push('>');
                    }
                    if record.contains_key(&field_name) && problem.is_none() {
                        problem = Some(RowProblem {
                            field: format!("/{field_name}"),
                            message: format!("the field <{field_name}> appears twice"),
                        });
                    }
                    // An empty element is an absent field, as an empty CSV cell is.
                    if !text.is_empty() {
                        let value = columns.typed(&field_name, std::mem::take(&mut text));
                        record.insert(std::mem::take(&mut field_name), value);
                    }
                    level = Level::Record;
                }
                Level::Record => {
                    count += 1;
                    // The XSD's reason first: it is the published contract of the XML form.
                    let checked = match check.as_deref_mut() {
                        Some(check) => {
                            raw.text.push_str("</");
                            raw.text.push_str(&e);
                            raw.text.push('>');
                            check.record(raw.text.as_bytes())
                        }
                        None => Ok(()),
                    };
                    let item = match (checked, problem.take()) {
                        (Err(p), _) | (Ok(()), Some(p)) => Err(p),
                        (Ok(()), None) => Ok(std::mem::take(&mut record)),
                    };
                    if sink(Position(format!("/records/record[{count}]")), item).is_break() {
                        return Err(FormatError::Stopped);
                    }
                    level = Level::Records;
                }
                Level::Records => level = Level::Done,
                Level::Document | Level::Done => return Err(malformed("/", "unbalanced end tag")),
            },
            Event::Eof => {
                return match level {
                    Level::Done => Ok(count),
                    Level::Document => Err(malformed("/", "the document is empty; the root element is <records>")),
                    _ => Err(malformed(
                        format!("/records/record[{}]", count + 1),
                        "the document ends before </records> (truncated?)",
                    )),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what it is handed; refuses records holding `bad`.
    #[derive(Default)]
    struct Seen {
        root: Vec<String>,
        records: Vec<String>,
    }

    impl XmlCheck for Seen {
        fn root(&mut self, doc: &[u8]) -> Result<(), String> {
            self.root.push(String::from_utf8_lossy(doc).into_owned());
            Ok(())
        }
        fn record(&mut self, doc: &[u8]) -> Result<(), RowProblem> {
            let text = String::from_utf8_lossy(doc).into_owned();
            self.records.push(text.clone());
            if text.contains("bad") {
                return Err(RowProblem { field: "/a".into(), message: "XSD says no".into() });
            }
            Ok(())
        }
    }

    #[test]
    fn each_record_reaches_the_check_as_its_own_document() {
        let xml = "<?xml version=\"1.0\"?><records xmlns:p=\"urn:p\" lang='x'>\n<!-- c -->\
                   <record><a>1 &amp; &#65;</a><p:b><![CDATA[<x>]]></p:b><c/></record>\
                   <record n=\"2\" xmlns:p=\"urn:q\"><a>bad</a></record></records>";
        let mut seen = Seen::default();
        let mut items = Vec::new();
        let mut sink = |p: Position, item: crate::Item| {
            items.push((p.0, item));
            std::ops::ControlFlow::Continue(())
        };
        let n = read(xml.as_bytes(), &Columns::default(), Some(&mut seen), &mut sink).expect("read");
        assert_eq!(n, 2);
        assert_eq!(seen.root, ["<records xmlns:p=\"urn:p\" lang='x'/>"]);
        assert_eq!(
            seen.records,
            [
                "<record xmlns:p=\"urn:p\"><a>1 &amp; &#65;</a><p:b><![CDATA[<x>]]></p:b><c></c></record>",
                // The record's own declaration wins over the root's.
                "<record n=\"2\" xmlns:p=\"urn:q\"><a>bad</a></record>",
            ]
        );
        assert!(items[0].1.is_ok(), "{items:?}");
        assert_eq!(items[1].0, "/records/record[2]");
        assert_eq!(items[1].1, Err(RowProblem { field: "/a".into(), message: "XSD says no".into() }));
    }

    #[test]
    fn a_root_the_check_refuses_refuses_the_file() {
        struct No;
        impl XmlCheck for No {
            fn root(&mut self, _: &[u8]) -> Result<(), String> {
                Err("no".into())
            }
            fn record(&mut self, _: &[u8]) -> Result<(), RowProblem> {
                Ok(())
            }
        }
        let mut sink = |_: Position, _: crate::Item| std::ops::ControlFlow::Continue(());
        let e = read(&b"<records x=\"1\"></records>"[..], &Columns::default(), Some(&mut No), &mut sink);
        assert!(matches!(e, Err(FormatError::WrongSchema { .. })), "{e:?}");
    }
}
