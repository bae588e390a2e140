//! Batch file formats: pure, streaming readers that turn an uploaded file into records
//! (`serde_json::Map`) one at a time, each with its position in the file, for the batch API
//! (`node/src/api/batches.rs`). No I/O of their own beyond the reader they are given, no clock, no
//! panics on any input: bad input is a [`FormatError`] naming where it is.
//!
//! Streamed formats (JSON array, NDJSON, CSV, XML) read any [`std::io::Read`] front to back with
//! memory bounded by one record ([`limits::RECORD_BYTES_MAX`]). Parquet and XLSX need random
//! access; they read a [`RandomRead`] (the node gives them its sealed spool file).
//!
//! Text-based formats carry no types; values are typed by the dataset's JSON Schema property
//! types ([`Columns`]): `integer`, `number` and `boolean` properties are converted when the text
//! is one, everything else stays a string. A value that does not convert stays a string, so the
//! dataset's validation rejects that row with the field named, instead of the whole file failing.

mod csv;
mod json;
pub mod limits;
mod parquet;
mod random;
mod xlsx;
mod xml;

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::ControlFlow;

use serde_json::Map;
use serde_json::Value;

pub use random::RandomRead;

/// One record as a JSON object.
pub type Record = Map<String, Value>;

/// The formats a batch may come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    /// `application/json`: one array of objects.
    Json,
    /// `application/x-ndjson`: one object per line.
    Ndjson,
    /// `text/csv`: RFC 4180 with a header row, UTF-8.
    Csv,
    /// `application/xml`: `<records><record><field>…</field></record></records>`.
    Xml,
    /// `application/vnd.apache.parquet`.
    Parquet,
    /// `application/vnd.openxmlformats-officedocument.spreadsheetml.sheet`: first sheet, header row.
    Xlsx,
}

impl Format {
    pub const ALL: [Format; 6] =
        [Format::Json, Format::Ndjson, Format::Csv, Format::Xml, Format::Parquet, Format::Xlsx];

    /// The format of a `Content-Type` value (parameters such as `charset` are ignored).
    pub fn from_media_type(content_type: &str) -> Option<Format> {
        let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        Format::ALL.into_iter().find(|f| f.media_type() == mime).or(match mime.as_str() {
            "application/ndjson" | "application/jsonl" | "application/jsonlines" => Some(Format::Ndjson),
            "text/xml" => Some(Format::Xml),
            "application/x-parquet" => Some(Format::Parquet),
            _ => None,
        })
    }

    /// The format a file name's extension suggests.
    pub fn from_extension(path: &str) -> Option<Format> {
        let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase())?;
        Some(match ext.as_str() {
            "json" => Format::Json,
            "ndjson" | "jsonl" => Format::Ndjson,
            "csv" => Format::Csv,
            "xml" => Format::Xml,
            "parquet" | "pq" => Format::Parquet,
            "xlsx" => Format::Xlsx,
            _ => return None,
        })
    }

    /// Parses a format name as users write it (`json`, `ndjson`, `csv`, `xml`, `parquet`, `xlsx`).
    pub fn from_name(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name().eq_ignore_ascii_case(name))
    }

    pub fn media_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv",
            Format::Xml => "application/xml",
            Format::Parquet => "application/vnd.apache.parquet",
            Format::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Ndjson => "ndjson",
            Format::Csv => "csv",
            Format::Xml => "xml",
            Format::Parquet => "parquet",
            Format::Xlsx => "xlsx",
        }
    }

    /// Parquet and XLSX are read from their end (footer, zip directory), so they need the whole
    /// file at hand; the others are read front to back as they arrive.
    pub fn needs_random_access(self) -> bool {
        matches!(self, Format::Parquet | Format::Xlsx)
    }
}

/// The JSON type a dataset declares for a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    String,
    Integer,
    Number,
    Boolean,
    /// No single scalar type declared (objects, arrays, unions, enums): text stays text.
    Any,
}

/// Field types from a dataset's JSON Schema (`properties.<name>.type`).
#[derive(Debug, Clone, Default)]
pub struct Columns {
    types: BTreeMap<String, FieldType>,
}

impl Columns {
    /// Reads `properties.*.type` of a JSON Schema; `["integer", "null"]` counts as `integer`.
    pub fn from_json_schema(schema: &Value) -> Columns {
        let mut types = BTreeMap::new();
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                let declared = match prop.get("type") {
                    Some(Value::String(t)) => Some(t.as_str()),
                    Some(Value::Array(ts)) => {
                        let non_null: Vec<&str> =
                            ts.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect();
                        if non_null.len() == 1 { Some(non_null[0]) } else { None }
                    }
                    _ => None,
                };
                let t = match declared {
                    Some("string") => FieldType::String,
                    Some("integer") => FieldType::Integer,
                    Some("number") => FieldType::Number,
                    Some("boolean") => FieldType::Boolean,
                    _ => FieldType::Any,
                };
                types.insert(name.clone(), t);
            }
        }
        Columns { types }
    }

    pub fn with(mut self, name: &str, t: FieldType) -> Columns {
        self.types.insert(name.to_string(), t);
        self
    }

    pub fn get(&self, name: &str) -> FieldType {
        self.types.get(name).copied().unwrap_or(FieldType::Any)
    }

    /// A text value typed by the field's declared type. Text that is not of that type stays text,
    /// so that validation names the field.
    pub fn typed(&self, name: &str, text: String) -> Value {
        match self.get(name) {
            FieldType::Integer => match text.trim().parse::<i64>() {
                Ok(n) => Value::from(n),
                Err(_) => match text.trim().parse::<f64>() {
                    // "12.0" from a spreadsheet or a float column is still the integer 12.
                    Ok(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
                    _ => Value::String(text),
                },
            },
            FieldType::Number => match text.trim().parse::<f64>() {
                Ok(f) if f.is_finite() => {
                    if let Ok(n) = text.trim().parse::<i64>() {
                        Value::from(n)
                    } else {
                        serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::String(text))
                    }
                }
                _ => Value::String(text),
            },
            FieldType::Boolean => match text.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Value::Bool(true),
                "false" | "0" => Value::Bool(false),
                _ => Value::String(text),
            },
            FieldType::String | FieldType::Any => Value::String(text),
        }
    }
}

/// Where a record is in its file: `row 12` (CSV, XLSX, Parquet; row 1 is the header of CSV and
/// XLSX, so rows are numbered as a spreadsheet shows them), `line 7` (NDJSON), a JSON Pointer
/// `/41` (JSON array), or an XPath `/records/record[42]` (XML).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position(pub String);

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A problem with one record that does not stop the file: the record is rejected, the rest go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowProblem {
    /// The field as a JSON Pointer (`/transactions`), or empty for the whole record.
    pub field: String,
    pub message: String,
}

/// What a reader hands its consumer for each record.
pub type Item = Result<Record, RowProblem>;

/// Why a file cannot be read (on). Every variant names where, when there is a where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The bytes are not the format: truncated, a stray quote, not JSON, …
    #[error("malformed {format} at {position}: {message}")]
    Malformed { format: &'static str, position: String, message: String },
    /// Something DTM refuses on principle: a DOCTYPE or entity declaration, a zip bomb.
    #[error("refused {format}: {message}")]
    Refused { format: &'static str, message: String },
    /// The file's own schema does not fit (a Parquet column type, a missing header).
    #[error("the {format} file's columns do not fit the dataset: {message}")]
    WrongSchema { format: &'static str, message: String },
    /// A record or a part is larger than the limits allow.
    #[error("{format} too large at {position}: {message}")]
    TooLarge { format: &'static str, position: String, message: String },
    /// The input could not be read (the upload broke off, the spool file failed).
    #[error("the input could not be read: {0}")]
    Io(String),
    /// The consumer asked to stop.
    #[error("stopped by the consumer")]
    Stopped,
}

impl FormatError {
    /// A stable code for clients.
    pub fn code(&self) -> &'static str {
        match self {
            FormatError::Malformed { .. } => "malformed_batch",
            FormatError::Refused { .. } => "refused_content",
            FormatError::WrongSchema { .. } => "wrong_schema",
            FormatError::TooLarge { .. } => "record_too_large",
            FormatError::Io(_) => "unreadable_body",
            FormatError::Stopped => "stopped",
        }
    }

    /// Where in the file, when known.
    pub fn position(&self) -> Option<&str> {
        match self {
            FormatError::Malformed { position, .. } | FormatError::TooLarge { position, .. } => Some(position),
            _ => None,
        }
    }
}

pub(crate) fn io_error(e: std::io::Error) -> FormatError {
    FormatError::Io(e.to_string())
}

/// The consumer of records: called once per record in file order; `Break` stops the reader.
pub type Sink<'a> = dyn FnMut(Position, Item) -> ControlFlow<()> + 'a;

/// A check of the XML form against the dataset's XSD, called by the XML reader while it streams.
/// The reader hands over the root start tag and then each record as a small standalone document,
/// so the whole file is never built in memory. The implementation lives outside this crate (the
/// node's `api::xsd::validator`, on libxml2), which keeps the readers pure Rust.
pub trait XmlCheck {
    /// The root element's start tag as an empty document (`<records …/>`); `Err` refuses the file.
    fn root(&mut self, doc: &[u8]) -> Result<(), String>;
    /// One record as a standalone document (`<record>…</record>`, with the root's namespace
    /// declarations copied onto it); `Err` rejects that row with the reason.
    fn record(&mut self, doc: &[u8]) -> Result<(), RowProblem>;
}

/// Reads a streamed format (JSON, NDJSON, CSV, XML) from `input` front to back, handing each
/// record to `sink`. Returns the number of records handed over.
pub fn read_stream(
    format: Format,
    input: impl Read,
    columns: &Columns,
    sink: &mut Sink<'_>,
) -> Result<u64, FormatError> {
    read_stream_checked(format, input, columns, None, sink)
}

/// [`read_stream`] with XML records checked by `xml` (ignored for the other formats).
pub fn read_stream_checked(
    format: Format,
    input: impl Read,
    columns: &Columns,
    xml: Option<&mut dyn XmlCheck>,
    sink: &mut Sink<'_>,
) -> Result<u64, FormatError> {
    match format {
        Format::Json => json::read_array(input, sink),
        Format::Ndjson => json::read_lines(input, sink),
        Format::Csv => csv::read(input, columns, sink),
        Format::Xml => xml::read(input, columns, xml, sink),
        Format::Parquet | Format::Xlsx => {
            Err(FormatError::Io(format!("{} needs random access; use read_random", format.name())))
        }
    }
}

/// Reads any format from a random-access source (Parquet and XLSX need one; the streamed formats
/// read it front to back).
pub fn read_random(
    format: Format,
    input: std::sync::Arc<dyn RandomRead>,
    columns: &Columns,
    sink: &mut Sink<'_>,
) -> Result<u64, FormatError> {
    read_random_checked(format, input, columns, None, sink)
}

/// [`read_random`] with XML records checked by `xml` (ignored for the other formats).
pub fn read_random_checked(
    format: Format,
    input: std::sync::Arc<dyn RandomRead>,
    columns: &Columns,
    xml: Option<&mut dyn XmlCheck>,
    sink: &mut Sink<'_>,
) -> Result<u64, FormatError> {
    match format {
        Format::Parquet => parquet::read(input, columns, sink),
        Format::Xlsx => xlsx::read(input, columns, sink),
        _ => read_stream_checked(format, random::At::new(input), columns, xml, sink),
    }
}

/// Checks a header or element name: not empty, not too long, no duplicates (the caller checks).
pub(crate) fn field_name_ok(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an empty column name".into());
    }
    if name.len() > limits::FIELD_NAME_BYTES_MAX {
        return Err(format!("a column name longer than {} bytes", limits::FIELD_NAME_BYTES_MAX));
    }
    Ok(())
}
