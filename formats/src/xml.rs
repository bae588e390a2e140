//! The dataset's XML form: `<records><record><field>text</field>…</record>…</records>`, one element
//! per field, text typed by the dataset's declared types. A DOCTYPE is refused outright (no
//! internal subset, hence no entity expansion and no external references), only the five
//! predefined entities and character references are resolved, and nothing nests deeper than a
//! field.

use std::io::BufReader;
use std::io::Read;

use quick_xml::events::Event;
use serde_json::Map;

use crate::Columns;
use crate::FormatError;
use crate::Position;
use crate::RowProblem;
use crate::Sink;
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

pub fn read(input: impl Read, columns: &Columns, sink: &mut Sink<'_>) -> Result<u64, FormatError> {
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
                match level {
                    Level::Document if name == "records" => level = Level::Records,
                    Level::Document => {
                        return Err(malformed("/", format!("the root element must be <records>, not <{name}>")));
                    }
                    Level::Records if name == "record" => {
                        level = Level::Record;
                        record = Map::new();
                        problem = None;
                        record_bytes = 0;
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
                let content = t.xml10_content();
                match level {
                    Level::Field => text.push_str(&content),
                    _ if content.trim().is_empty() => {}
                    _ => return Err(malformed(here(count, &level), "text outside a field")),
                }
            }
            Event::CData(t) => match level {
                Level::Field => text.push_str(&t.xml10_content()),
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
                    Level::Field => text.push(c),
                    _ => return Err(malformed(here(count, &level), "text outside a field")),
                }
            }
            Event::End(_) => match level {
                Level::Field => {
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
                    let item = match problem.take() {
                        Some(p) => Err(p),
                        None => Ok(std::mem::take(&mut record)),
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
