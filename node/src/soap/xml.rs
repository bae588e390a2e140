//! A small, bounded XML reader for SOAP envelopes (quick-xml underneath) and the escaping used when
//! answers are written.
//!
//! The reader builds a tree of elements with resolved namespaces. It refuses what a SOAP message
//! has no use for and what XML attacks are made of: a document type declaration (so no entity can
//! be declared: no billion laughs, no external entities), entity references other than the five
//! predefined ones and character references, processing instructions other than the XML
//! declaration, nesting deeper than `DEPTH_MAX` and more than `ELEMENTS_MAX` elements.

use quick_xml::NsReader;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;

/// Nesting depth of elements: an envelope, a header or body, an operation and its fields need
/// far fewer levels.
pub const DEPTH_MAX: usize = 32;
/// Elements in one message (a `RecordsJson` string holds the records, not elements).
pub const ELEMENTS_MAX: usize = 10_000;

#[derive(Debug, Default)]
pub struct Element {
    /// The namespace URI, empty when the name is not in a namespace.
    pub ns: String,
    pub local: String,
    pub children: Vec<Element>,
    /// The text directly inside this element (entity and character references resolved).
    pub text: String,
}

impl Element {
    /// The first child with this namespace and local name.
    pub fn child(&self, ns: &str, local: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.ns == ns && c.local == local)
    }
    /// The first child with this local name, in any namespace (SOAP clients disagree on whether
    /// an operation's parts are qualified).
    pub fn child_any(&self, local: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.local == local)
    }
}

/// Why a message could not be read; the text is for the client (no internal detail in it).
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    #[error("the message is not UTF-8")]
    NotUtf8,
    #[error("document type declarations are not accepted")]
    Doctype,
    #[error("entity reference `&{0};` is not accepted (only &amp; &lt; &gt; &quot; &apos; and character references)")]
    Entity(String),
    #[error("processing instructions are not accepted")]
    ProcessingInstruction,
    #[error("elements are nested deeper than {DEPTH_MAX} levels")]
    TooDeep,
    #[error("the message has more than {ELEMENTS_MAX} elements")]
    TooManyElements,
    #[error("an element name uses an undeclared namespace prefix")]
    UnknownPrefix,
    #[error("the message has no root element")]
    Empty,
    #[error("malformed XML at byte {position}: {message}")]
    Malformed { position: u64, message: String },
}

/// Parses a whole document into its root element.
pub fn parse(bytes: &[u8]) -> Result<Element, XmlError> {
    let text = std::str::from_utf8(bytes).map_err(|_| XmlError::NotUtf8)?;
    let mut reader = NsReader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut elements = 0usize;
    loop {
        let position = reader.buffer_position();
        let (ns, event) =
            reader.read_resolved_event().map_err(|e| XmlError::Malformed { position, message: e.to_string() })?;
        let ns = match ns {
            ResolveResult::Bound(n) => n.as_ref().to_owned(),
            ResolveResult::Unbound => String::new(),
            ResolveResult::Unknown(_) => return Err(XmlError::UnknownPrefix),
        };
        match event {
            Event::Start(e) | Event::Empty(e) if root.is_some() => {
                let _ = e;
                return Err(XmlError::Malformed { position, message: "content after the root element".into() });
            }
            Event::Start(ref e) | Event::Empty(ref e) => {
                elements += 1;
                if elements > ELEMENTS_MAX {
                    return Err(XmlError::TooManyElements);
                }
                if stack.len() >= DEPTH_MAX {
                    return Err(XmlError::TooDeep);
                }
                let local = e.local_name().as_ref().to_owned();
                let el = Element { ns, local, ..Element::default() };
                if matches!(event, Event::Empty(_)) {
                    close(&mut stack, &mut root, el);
                } else {
                    stack.push(el);
                }
            }
            Event::End(_) => {
                let el = stack
                    .pop()
                    .ok_or_else(|| XmlError::Malformed { position, message: "unexpected end tag".into() })?;
                close(&mut stack, &mut root, el);
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.xml10_content());
                }
            }
            Event::CData(c) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&c.into_inner());
                }
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    Ok(None) => {
                        let name = r.xml10_content();
                        match name.as_ref() {
                            "amp" => '&',
                            "lt" => '<',
                            "gt" => '>',
                            "quot" => '"',
                            "apos" => '\'',
                            other => return Err(XmlError::Entity(other.chars().take(40).collect())),
                        }
                    }
                    Err(e) => return Err(XmlError::Malformed { position, message: e.to_string() }),
                };
                if let Some(top) = stack.last_mut() {
                    top.text.push(resolved);
                }
            }
            Event::DocType(_) => return Err(XmlError::Doctype),
            Event::PI(_) => return Err(XmlError::ProcessingInstruction),
            Event::Decl(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(XmlError::Malformed { position: reader.buffer_position(), message: "unclosed element".into() });
    }
    root.ok_or(XmlError::Empty)
}

fn close(stack: &mut [Element], root: &mut Option<Element>, el: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(el),
        None => *root = Some(el),
    }
}

/// Escapes text for element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 cannot carry at all become U+FFFD rather than an ill-formed answer.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_namespaces_text_and_references() {
        let doc = br#"<?xml version="1.0"?><s:E xmlns:s="urn:s" xmlns="urn:d"><s:B><a>x &amp; &#x41;<![CDATA[<y>]]></a><b/></s:B></s:E>"#;
        let root = parse(doc).expect("parses");
        assert_eq!((root.ns.as_str(), root.local.as_str()), ("urn:s", "E"));
        let body = root.child("urn:s", "B").expect("body");
        assert_eq!(body.child("urn:d", "a").expect("a").text, "x & A<y>");
        assert!(body.child("urn:d", "b").is_some());
    }

    #[test]
    fn refuses_doctype_entities_and_depth() {
        let bomb = br#"<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa">]><l>&a;</l>"#;
        assert!(matches!(parse(bomb), Err(XmlError::Doctype)));
        assert!(matches!(parse(b"<l>&a;</l>"), Err(XmlError::Entity(_))));
        let deep = "<a>".repeat(DEPTH_MAX + 1) + &"</a>".repeat(DEPTH_MAX + 1);
        assert!(matches!(parse(deep.as_bytes()), Err(XmlError::TooDeep)));
        assert!(parse(b"<a><b></a>").is_err());
        assert!(parse(b"").is_err());
        assert!(matches!(parse(b"<p:a/>"), Err(XmlError::UnknownPrefix)));
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("<a & 'b'>\u{1}"), "&lt;a &amp; &apos;b&apos;&gt;\u{FFFD}");
    }
}
