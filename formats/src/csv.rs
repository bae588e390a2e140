//! CSV (RFC 4180) with a header row, UTF-8 with or without a byte order mark. A strict state
//! machine of its own rather than a lenient parser: a stray quote is an error naming its row and
//! column, not a silently different value. Fields are typed by the dataset's declared types; an
//! empty field is an absent field.

use std::io::BufRead;
use std::io::BufReader;
use std::io::Read;

use serde_json::Map;

use crate::Columns;
use crate::FormatError;
use crate::Position;
use crate::RowProblem;
use crate::Sink;
use crate::field_name_ok;
use crate::io_error;
use crate::limits::FIELDS_PER_RECORD_MAX;
use crate::limits::RECORD_BYTES_MAX;

const FORMAT: &str = "CSV";

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a field (after a comma or a line end).
    FieldStart,
    Unquoted,
    Quoted,
    /// Just saw a quote inside a quoted field: a second quote is a literal one, anything else ends it.
    QuoteInQuoted,
}

struct Parser<'c, 's, 'k> {
    columns: &'c Columns,
    sink: &'s mut Sink<'k>,
    state: State,
    field: Vec<u8>,
    fields: Vec<Vec<u8>>,
    record_bytes: usize,
    header: Option<Vec<String>>,
    /// Spreadsheet-style row number of the record being read (the header is row 1).
    row: u64,
    quoted_from_row: u64,
    skip_lf: bool,
    count: u64,
}

impl Parser<'_, '_, '_> {
    fn position(&self) -> String {
        let column = self.fields.len() + 1;
        match self.header.as_ref().and_then(|h| h.get(column - 1)) {
            Some(name) => format!("row {}, column {column} (`{name}`)", self.row),
            None => format!("row {}, column {column}", self.row),
        }
    }

    fn malformed(&self, message: &str) -> FormatError {
        FormatError::Malformed { format: FORMAT, position: self.position(), message: message.into() }
    }

    fn push_byte(&mut self, b: u8) -> Result<(), FormatError> {
        self.record_bytes += 1;
        if self.record_bytes > RECORD_BYTES_MAX {
            return Err(FormatError::TooLarge {
                format: FORMAT,
                position: format!("row {}", self.row),
                message: format!("a row is larger than {RECORD_BYTES_MAX} bytes"),
            });
        }
        self.field.push(b);
        Ok(())
    }

    fn end_field(&mut self) -> Result<(), FormatError> {
        if self.fields.len() >= FIELDS_PER_RECORD_MAX {
            return Err(FormatError::TooLarge {
                format: FORMAT,
                position: format!("row {}", self.row),
                message: format!("a row has more than {FIELDS_PER_RECORD_MAX} fields"),
            });
        }
        self.fields.push(std::mem::take(&mut self.field));
        self.state = State::FieldStart;
        Ok(())
    }

    fn end_record(&mut self) -> Result<(), FormatError> {
        self.end_field()?;
        let fields = std::mem::take(&mut self.fields);
        self.record_bytes = 0;
        let row = self.row;
        self.row += 1;
        // A blank line (one empty unquoted field) is not a record.
        if fields.len() == 1 && fields[0].is_empty() {
            return Ok(());
        }
        let Some(header) = &self.header else {
            let mut names = Vec::with_capacity(fields.len());
            for (i, f) in fields.into_iter().enumerate() {
                let name = String::from_utf8(f).map_err(|_| FormatError::Malformed {
                    format: FORMAT,
                    position: format!("row {row}, column {}", i + 1),
                    message: "the header is not UTF-8".into(),
                })?;
                let name = name.trim().to_string();
                field_name_ok(&name).map_err(|m| FormatError::WrongSchema {
                    format: FORMAT,
                    message: format!("header column {}: {m}", i + 1),
                })?;
                if names.contains(&name) {
                    return Err(FormatError::WrongSchema {
                        format: FORMAT,
                        message: format!("the header names column `{name}` twice"),
                    });
                }
                names.push(name);
            }
            self.header = Some(names);
            return Ok(());
        };
        let item = if fields.len() != header.len() {
            Err(RowProblem {
                field: String::new(),
                message: format!("the row has {} fields; the header has {}", fields.len(), header.len()),
            })
        } else {
            let mut record = Map::new();
            let mut problem = None;
            for (name, raw) in header.iter().zip(fields) {
                if raw.is_empty() {
                    continue;
                }
                match String::from_utf8(raw) {
                    Ok(text) => {
                        let value = self.columns.typed(name, text);
                        record.insert(name.clone(), value);
                    }
                    Err(_) => {
                        problem =
                            Some(RowProblem { field: format!("/{name}"), message: "the value is not UTF-8".into() });
                        break;
                    }
                }
            }
            match problem {
                Some(p) => Err(p),
                None => Ok(record),
            }
        };
        self.count += 1;
        if (self.sink)(Position(format!("row {row}")), item).is_break() {
            return Err(FormatError::Stopped);
        }
        Ok(())
    }

    fn byte(&mut self, b: u8) -> Result<(), FormatError> {
        if self.skip_lf {
            self.skip_lf = false;
            if b == b'\n' {
                return Ok(());
            }
        }
        match self.state {
            State::FieldStart => match b {
                b'"' => {
                    self.state = State::Quoted;
                    self.quoted_from_row = self.row;
                }
                b',' => self.end_field()?,
                b'\n' => self.end_record()?,
                b'\r' => {
                    self.skip_lf = true;
                    self.end_record()?;
                }
                _ => {
                    self.state = State::Unquoted;
                    self.push_byte(b)?;
                }
            },
            State::Unquoted => match b {
                b',' => self.end_field()?,
                b'\n' => self.end_record()?,
                b'\r' => {
                    self.skip_lf = true;
                    self.end_record()?;
                }
                b'"' => {
                    return Err(self.malformed(
                        "a stray quote in an unquoted field (RFC 4180: quote the whole field and double quotes inside it)",
                    ));
                }
                _ => self.push_byte(b)?,
            },
            State::Quoted => match b {
                b'"' => self.state = State::QuoteInQuoted,
                _ => self.push_byte(b)?,
            },
            State::QuoteInQuoted => match b {
                b'"' => {
                    self.push_byte(b'"')?;
                    self.state = State::Quoted;
                }
                b',' => self.end_field()?,
                b'\n' => self.end_record()?,
                b'\r' => {
                    self.skip_lf = true;
                    self.end_record()?;
                }
                _ => {
                    return Err(self.malformed(
                        "a stray quote: after the closing quote of a field only `,` or a line end may follow",
                    ));
                }
            },
        }
        Ok(())
    }
}

pub fn read(input: impl Read, columns: &Columns, sink: &mut Sink<'_>) -> Result<u64, FormatError> {
    let mut reader = BufReader::with_capacity(64 * 1024, input);
    let mut p = Parser {
        columns,
        sink,
        state: State::FieldStart,
        field: Vec::new(),
        fields: Vec::new(),
        record_bytes: 0,
        header: None,
        row: 1,
        quoted_from_row: 1,
        skip_lf: false,
        count: 0,
    };
    let mut first = true;
    loop {
        let buf = reader.fill_buf().map_err(io_error)?;
        if buf.is_empty() {
            break;
        }
        let mut start = 0;
        if first {
            first = false;
            if buf.starts_with(&[0xEF, 0xBB, 0xBF]) {
                start = 3;
            }
        }
        let n = buf.len();
        for &b in &buf[start..] {
            p.byte(b)?;
        }
        reader.consume(n);
    }
    match p.state {
        State::Quoted => {
            return Err(FormatError::Malformed {
                format: FORMAT,
                position: format!("row {}", p.quoted_from_row),
                message: "the file ends inside a quoted field that starts here (truncated, or a quote not closed)"
                    .into(),
            });
        }
        State::FieldStart if p.fields.is_empty() => {}
        _ => p.end_record()?,
    }
    if p.header.is_none() {
        return Err(FormatError::Malformed {
            format: FORMAT,
            position: "row 1".into(),
            message: "the file is empty; a CSV batch starts with a header row".into(),
        });
    }
    Ok(p.count)
}
