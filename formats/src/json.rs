//! JSON batches: one array of objects, read element by element (never the whole body at once), and
//! NDJSON, one object per line. Each element or line is bounded by `RECORD_BYTES_MAX` and its
//! nesting by `JSON_DEPTH_MAX` before `serde_json` sees it.

use std::io::BufRead;
use std::io::BufReader;
use std::io::Read;
use std::ops::ControlFlow;

use serde_json::Value;

use crate::FormatError;
use crate::Item;
use crate::Position;
use crate::RowProblem;
use crate::Sink;
use crate::io_error;
use crate::limits::JSON_DEPTH_MAX;
use crate::limits::RECORD_BYTES_MAX;

const FORMAT: &str = "JSON";

/// A byte reader with its offset, over a buffered reader.
struct Bytes<R: Read> {
    inner: BufReader<R>,
    offset: u64,
}

impl<R: Read> Bytes<R> {
    fn peek(&mut self) -> Result<Option<u8>, FormatError> {
        Ok(self.inner.fill_buf().map_err(io_error)?.first().copied())
    }
    fn next(&mut self) -> Result<Option<u8>, FormatError> {
        let b = self.peek()?;
        if b.is_some() {
            self.inner.consume(1);
            self.offset += 1;
        }
        Ok(b)
    }
    fn skip_ws(&mut self) -> Result<Option<u8>, FormatError> {
        while let Some(b) = self.peek()? {
            if !matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
                return Ok(Some(b));
            }
            self.next()?;
        }
        Ok(None)
    }
}

fn malformed(position: impl Into<String>, message: impl Into<String>) -> FormatError {
    FormatError::Malformed { format: FORMAT, position: position.into(), message: message.into() }
}

fn record_of(value: Value) -> Item {
    match value {
        Value::Object(m) => Ok(m),
        other => Err(RowProblem {
            field: String::new(),
            message: format!("a record must be a JSON object, not {}", kind(&other)),
        }),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads `[ {…}, {…}, … ]`.
pub fn read_array(input: impl Read, sink: &mut Sink<'_>) -> Result<u64, FormatError> {
    let mut r = Bytes { inner: BufReader::with_capacity(64 * 1024, input), offset: 0 };
    // A UTF-8 byte order mark is tolerated (some exporters write one).
    if r.inner.fill_buf().map_err(io_error)?.starts_with(&[0xEF, 0xBB, 0xBF]) {
        r.inner.consume(3);
        r.offset += 3;
    }
    match r.skip_ws()? {
        Some(b'[') => {
            r.next()?;
        }
        None => return Err(malformed("byte 0", "the body is empty; a JSON batch is an array of objects")),
        Some(_) => return Err(malformed(format!("byte {}", r.offset), "a JSON batch is an array of objects")),
    }
    let mut count = 0u64;
    let mut element = Vec::new();
    if r.skip_ws()? == Some(b']') {
        r.next()?;
    } else {
        loop {
            let pointer = format!("/{count}");
            element.clear();
            capture_value(&mut r, &mut element, &pointer)?;
            let value: Value = serde_json::from_slice(&element).map_err(|e| malformed(&pointer, e.to_string()))?;
            count += 1;
            if sink(Position(pointer), record_of(value)).is_break() {
                return Err(FormatError::Stopped);
            }
            match r.skip_ws()? {
                Some(b',') => {
                    r.next()?;
                }
                Some(b']') => {
                    r.next()?;
                    break;
                }
                Some(b) => {
                    return Err(malformed(
                        format!("/{count} (byte {})", r.offset),
                        format!("expected `,` or `]` after an element, found `{}`", b as char),
                    ));
                }
                None => return Err(malformed(format!("/{count}"), "the file ends inside the array (truncated?)")),
            }
        }
    }
    if let Some(b) = r.skip_ws()? {
        return Err(malformed(format!("byte {}", r.offset), format!("content after the array: `{}`", b as char)));
    }
    Ok(count)
}

/// Copies one JSON value's bytes into `out`, tracking strings and nesting, without parsing it.
fn capture_value<R: Read>(r: &mut Bytes<R>, out: &mut Vec<u8>, pointer: &str) -> Result<(), FormatError> {
    let truncated = || malformed(pointer, "the file ends inside a record (truncated?)");
    let first = match r.skip_ws()? {
        None => return Err(truncated()),
        Some(b) => b,
    };
    let push = |out: &mut Vec<u8>, b: u8| -> Result<(), FormatError> {
        if out.len() >= RECORD_BYTES_MAX {
            return Err(FormatError::TooLarge {
                format: FORMAT,
                position: pointer.to_string(),
                message: format!("a record is larger than {RECORD_BYTES_MAX} bytes"),
            });
        }
        out.push(b);
        Ok(())
    };
    match first {
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut in_string = false;
            let mut escaped = false;
            loop {
                let b = r.next()?.ok_or_else(truncated)?;
                push(out, b)?;
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if b == b'\\' {
                        escaped = true;
                    } else if b == b'"' {
                        in_string = false;
                    }
                    continue;
                }
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => {
                        depth += 1;
                        if depth > JSON_DEPTH_MAX {
                            return Err(malformed(
                                pointer,
                                format!("a record nests arrays and objects deeper than {JSON_DEPTH_MAX} levels"),
                            ));
                        }
                    }
                    b'}' | b']' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            return Ok(());
                        }
                    }
                    _ => {}
                }
            }
        }
        b'"' => {
            r.next()?;
            push(out, b'"')?;
            let mut escaped = false;
            loop {
                let b = r.next()?.ok_or_else(truncated)?;
                push(out, b)?;
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    return Ok(());
                }
            }
        }
        b']' | b',' => Err(malformed(pointer, format!("expected a record, found `{}`", first as char))),
        _ => {
            while let Some(b) = r.peek()? {
                if matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b',' | b']' | b'}') {
                    break;
                }
                r.next()?;
                push(out, b)?;
            }
            Ok(())
        }
    }
}

/// The first byte offset where `bytes` nests arrays and objects deeper than `max`, outside strings.
fn too_deep(bytes: &[u8], max: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Some(i);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// Reads one JSON object per line; blank lines are skipped. A line that is not JSON stops the file
/// (the file is not what it claims to be); a line that is JSON but not an object is rejected alone.
pub fn read_lines(input: impl Read, sink: &mut Sink<'_>) -> Result<u64, FormatError> {
    let mut reader = BufReader::with_capacity(64 * 1024, input);
    let mut line = Vec::new();
    let mut number = 0u64;
    let mut count = 0u64;
    loop {
        line.clear();
        number += 1;
        let n = (&mut reader).take(RECORD_BYTES_MAX as u64 + 1).read_until(b'\n', &mut line).map_err(io_error)?;
        if n == 0 {
            return Ok(count);
        }
        if line.len() > RECORD_BYTES_MAX {
            return Err(FormatError::TooLarge {
                format: "NDJSON",
                position: format!("line {number}"),
                message: format!("a line is longer than {RECORD_BYTES_MAX} bytes"),
            });
        }
        let mut text: &[u8] = &line;
        if number == 1 && text.starts_with(&[0xEF, 0xBB, 0xBF]) {
            text = &text[3..];
        }
        if text.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let position = format!("line {number}");
        if too_deep(text, JSON_DEPTH_MAX).is_some() {
            return Err(FormatError::Malformed {
                format: "NDJSON",
                position,
                message: format!("a record nests arrays and objects deeper than {JSON_DEPTH_MAX} levels"),
            });
        }
        let value: Value = serde_json::from_slice(text).map_err(|e| FormatError::Malformed {
            format: "NDJSON",
            position: position.clone(),
            message: if line.last() != Some(&b'\n') && e.is_eof() {
                format!("the last line is cut off (truncated?): {e}")
            } else {
                e.to_string()
            },
        })?;
        count += 1;
        if let ControlFlow::Break(()) = sink(Position(position), record_of(value)) {
            return Err(FormatError::Stopped);
        }
    }
}
