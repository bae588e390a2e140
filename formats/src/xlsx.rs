//! XLSX: the first sheet, its first row the header. An XLSX file is a zip archive, so before
//! calamine opens it every entry is inflated once into nothing, counting bytes: more entries,
//! more uncompressed bytes or a higher compression ratio than the limits allow refuse the file
//! (a zip bomb never reaches memory). Cells are then streamed row by row.

use std::io::Read;
use std::sync::Arc;

use calamine::DataRef;
use calamine::Reader;
use serde_json::Map;
use serde_json::Value;

use crate::Columns;
use crate::FormatError;
use crate::Position;
use crate::RandomRead;
use crate::RowProblem;
use crate::Sink;
use crate::field_name_ok;
use crate::limits::FIELDS_PER_RECORD_MAX;
use crate::limits::XLSX_COMPRESSION_RATIO_MAX;
use crate::limits::XLSX_RATIO_EXEMPT_BYTES_MAX;
use crate::limits::XLSX_UNCOMPRESSED_BYTES_MAX;
use crate::limits::XLSX_ZIP_ENTRIES_MAX;
use crate::random::At;

const FORMAT: &str = "XLSX";

fn malformed(position: impl Into<String>, message: impl Into<String>) -> FormatError {
    FormatError::Malformed { format: FORMAT, position: position.into(), message: message.into() }
}

fn bomb(message: String) -> FormatError {
    FormatError::Refused { format: FORMAT, message }
}

/// Inflates every entry into a counter: refuses archives past the entry, size or ratio limits.
pub fn check_archive(input: &Arc<dyn RandomRead>) -> Result<(), FormatError> {
    let mut zip = zip::ZipArchive::new(At::new(input.clone()))
        .map_err(|e| malformed("zip directory", format!("not an XLSX (zip) file: {e}")))?;
    if zip.len() > XLSX_ZIP_ENTRIES_MAX {
        return Err(bomb(format!("the archive has {} entries; at most {XLSX_ZIP_ENTRIES_MAX}", zip.len())));
    }
    let mut total = 0u64;
    let mut chunk = vec![0u8; 64 * 1024];
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| malformed("zip directory", format!("entry {i}: {e}")))?;
        let name = entry.name().map(|n| n.into_owned()).unwrap_or_else(|_| format!("#{i}"));
        let compressed = entry.compressed_size().max(1);
        let declared = entry.size();
        if total.saturating_add(declared) > XLSX_UNCOMPRESSED_BYTES_MAX {
            return Err(bomb(format!(
                "the archive unpacks to more than {XLSX_UNCOMPRESSED_BYTES_MAX} bytes (zip bomb?)"
            )));
        }
        // The declared size may lie: count what really comes out.
        let mut actual = 0u64;
        loop {
            let n = entry.read(&mut chunk).map_err(|e| malformed(format!("zip entry `{name}`"), e.to_string()))?;
            if n == 0 {
                break;
            }
            actual += n as u64;
            total += n as u64;
            if total > XLSX_UNCOMPRESSED_BYTES_MAX {
                return Err(bomb(format!(
                    "the archive unpacks to more than {XLSX_UNCOMPRESSED_BYTES_MAX} bytes (zip bomb?)"
                )));
            }
            if actual > XLSX_RATIO_EXEMPT_BYTES_MAX && actual / compressed > XLSX_COMPRESSION_RATIO_MAX {
                return Err(bomb(format!(
                    "entry `{name}` expands more than {XLSX_COMPRESSION_RATIO_MAX} times (zip bomb?)"
                )));
            }
        }
    }
    Ok(())
}

pub fn read(input: Arc<dyn RandomRead>, columns: &Columns, sink: &mut Sink<'_>) -> Result<u64, FormatError> {
    check_archive(&input)?;
    let mut book = calamine::Xlsx::new(At::new(input))
        .map_err(|e| malformed("workbook", format!("not a readable XLSX workbook: {e}")))?;
    let Some(sheet) = book.sheet_names().first().cloned() else {
        return Err(malformed("workbook", "the workbook has no sheet"));
    };
    let mut cells = book
        .worksheet_cells_reader(&sheet)
        .map_err(|e| malformed(format!("sheet `{sheet}`"), format!("unreadable: {e}")))?;
    let mut header: Option<Vec<Option<String>>> = None;
    let mut row_no: Option<u32> = None;
    let mut values: Vec<(u32, Value)> = Vec::new();
    let mut count = 0u64;
    let mut emit = |header: &Option<Vec<Option<String>>>,
                    row: u32,
                    values: &mut Vec<(u32, Value)>,
                    count: &mut u64|
     -> Result<Option<Vec<Option<String>>>, FormatError> {
        let vals = std::mem::take(values);
        let Some(names) = header else {
            // The first row with any cell is the header.
            let width = vals.iter().map(|(c, _)| *c as usize + 1).max().unwrap_or(0);
            if width > FIELDS_PER_RECORD_MAX {
                return Err(FormatError::WrongSchema {
                    format: FORMAT,
                    message: format!("more than {FIELDS_PER_RECORD_MAX} columns"),
                });
            }
            let mut names: Vec<Option<String>> = vec![None; width];
            for (c, v) in vals {
                let name = text(&v).trim().to_string();
                if name.is_empty() {
                    continue;
                }
                field_name_ok(&name).map_err(|m| FormatError::WrongSchema { format: FORMAT, message: m })?;
                if names.iter().flatten().any(|n| *n == name) {
                    return Err(FormatError::WrongSchema {
                        format: FORMAT,
                        message: format!("the header names column `{name}` twice"),
                    });
                }
                names[c as usize] = Some(name);
            }
            return Ok(Some(names));
        };
        let mut record = Map::new();
        let mut problem = None;
        for (c, v) in vals {
            match names.get(c as usize).and_then(|n| n.as_ref()) {
                Some(name) => {
                    let typed = match v {
                        Value::String(s) => columns.typed(name, s),
                        Value::Number(n) if columns.get(name) == crate::FieldType::String => {
                            Value::String(n.to_string())
                        }
                        Value::Number(n) => columns.typed(name, n.to_string()),
                        other => other,
                    };
                    record.insert(name.clone(), typed);
                }
                None => {
                    problem = Some(RowProblem {
                        field: String::new(),
                        message: format!("column {} has a value but no header", column_letters(c)),
                    });
                }
            }
        }
        *count += 1;
        let item = match problem {
            Some(p) => Err(p),
            None => Ok(record),
        };
        if sink(Position(format!("row {}", row + 1)), item).is_break() {
            return Err(FormatError::Stopped);
        }
        Ok(None)
    };
    loop {
        let next = cells
            .next_cell()
            .map_err(|e| malformed(format!("row {}", row_no.map_or(1, |r| r + 1)), format!("unreadable cell: {e}")))?;
        let Some(cell) = next else { break };
        let (r, c) = cell.get_position();
        if row_no.is_some_and(|cur| cur != r) && !values.is_empty() {
            let cur = row_no.unwrap_or(r);
            if let Some(h) = emit(&header, cur, &mut values, &mut count)? {
                header = Some(h);
            }
        }
        row_no = Some(r);
        if c as usize >= FIELDS_PER_RECORD_MAX {
            return Err(FormatError::TooLarge {
                format: FORMAT,
                position: format!("row {}", r + 1),
                message: format!("a row has more than {FIELDS_PER_RECORD_MAX} columns"),
            });
        }
        if let Some(v) = value(cell.get_value()) {
            values.push((c, v));
        }
    }
    if let Some(r) = row_no
        && !values.is_empty()
        && let Some(h) = emit(&header, r, &mut values, &mut count)?
    {
        header = Some(h);
    }
    if header.is_none() {
        return Err(malformed("row 1", "the first sheet is empty; an XLSX batch starts with a header row"));
    }
    Ok(count)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A cell as JSON; `None` for an empty cell. Dates become ISO 8601 text.
fn value(v: &DataRef<'_>) -> Option<Value> {
    Some(match v {
        DataRef::Empty => return None,
        DataRef::Int(i) => Value::from(*i),
        DataRef::Float(f) => {
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                Value::from(*f as i64)
            } else {
                serde_json::Number::from_f64(*f).map(Value::Number)?
            }
        }
        DataRef::String(s) => Value::String(s.clone()),
        DataRef::SharedString(s) => Value::String((*s).to_string()),
        DataRef::Bool(b) => Value::Bool(*b),
        DataRef::DateTime(d) => {
            // Excel serial days since 1899-12-30 (the 1900 leap-year bug is behind that epoch).
            let serial = d.as_f64();
            let seconds = ((serial - 25_569.0) * 86_400.0).round() as i64;
            Value::String(crate::parquet::date_time(seconds, 0, true))
        }
        DataRef::DateTimeIso(s) | DataRef::DurationIso(s) => Value::String(s.clone()),
        DataRef::Error(e) => Value::String(format!("#{e:?}")),
    })
}

fn column_letters(mut c: u32) -> String {
    let mut s = Vec::new();
    loop {
        s.push(b'A' + (c % 26) as u8);
        if c < 26 {
            break;
        }
        c = c / 26 - 1;
    }
    s.reverse();
    String::from_utf8_lossy(&s).into_owned()
}
