//! Parquet through arrow: typed columns become JSON values of the same type; nulls are absent
//! fields. Nested and binary columns, and columns whose type contradicts the dataset's declared
//! type, refuse the file before any row is read (`WrongSchema`).

use std::sync::Arc;

use arrow_array::Array;
use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_schema::DataType;
use arrow_schema::TimeUnit;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Map;
use serde_json::Value;

use crate::Columns;
use crate::FieldType;
use crate::FormatError;
use crate::Position;
use crate::RandomRead;
use crate::Sink;
use crate::field_name_ok;
use crate::limits::FIELDS_PER_RECORD_MAX;
use crate::limits::PARQUET_BATCH_ROWS;
use crate::random::Chunks;

const FORMAT: &str = "Parquet";

fn malformed(position: impl Into<String>, message: impl Into<String>) -> FormatError {
    FormatError::Malformed { format: FORMAT, position: position.into(), message: message.into() }
}

fn wrong(message: impl Into<String>) -> FormatError {
    FormatError::WrongSchema { format: FORMAT, message: message.into() }
}

/// Whether a column of type `t` may fill a field declared `want`.
fn fits(t: &DataType, want: FieldType) -> bool {
    let int = matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
    );
    let float = matches!(t, DataType::Float32 | DataType::Float64 | DataType::Decimal128(_, _));
    let text = matches!(
        t,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Date32
            | DataType::Date64
            | DataType::Timestamp(_, _)
    );
    match want {
        FieldType::Integer => int,
        FieldType::Number => int || float,
        FieldType::Boolean => matches!(t, DataType::Boolean),
        FieldType::String => text,
        FieldType::Any => int || float || text || matches!(t, DataType::Boolean | DataType::Null),
    }
}

pub fn read(input: Arc<dyn RandomRead>, columns: &Columns, sink: &mut Sink<'_>) -> Result<u64, FormatError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(Chunks(input))
        .map_err(|e| malformed("footer", format!("not a readable Parquet file: {e}")))?;
    let schema = builder.schema().clone();
    if schema.fields().len() > FIELDS_PER_RECORD_MAX {
        return Err(wrong(format!("more than {FIELDS_PER_RECORD_MAX} columns")));
    }
    for f in schema.fields() {
        field_name_ok(f.name()).map_err(wrong)?;
        let want = columns.get(f.name());
        if !fits(f.data_type(), want) {
            let declared = match want {
                FieldType::Integer => "integer",
                FieldType::Number => "number",
                FieldType::Boolean => "boolean",
                FieldType::String => "string",
                FieldType::Any => "a scalar (nested and binary columns are not records' fields)",
            };
            return Err(wrong(format!(
                "column `{}` is {} in the file; the dataset declares {declared}",
                f.name(),
                f.data_type()
            )));
        }
    }
    let reader = builder
        .with_batch_size(PARQUET_BATCH_ROWS)
        .build()
        .map_err(|e| malformed("footer", format!("not a readable Parquet file: {e}")))?;
    let mut count = 0u64;
    for batch in reader {
        let batch: RecordBatch = batch.map_err(|e| malformed(format!("row {}", count + 1), e.to_string()))?;
        for row in 0..batch.num_rows() {
            let mut record = Map::new();
            for (i, field) in schema.fields().iter().enumerate() {
                let col = batch.column(i);
                if let Some(v) = cell(col.as_ref(), row).map_err(|m| malformed(format!("row {}", count + 1), m))? {
                    record.insert(field.name().clone(), v);
                }
            }
            count += 1;
            if sink(Position(format!("row {count}")), Ok(record)).is_break() {
                return Err(FormatError::Stopped);
            }
        }
    }
    Ok(count)
}

fn number(f: f64) -> Value {
    serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)
}

/// One cell as JSON; `None` for a null.
fn cell(col: &dyn Array, row: usize) -> Result<Option<Value>, String> {
    if col.is_null(row) {
        return Ok(None);
    }
    let v = match col.data_type() {
        DataType::Null => return Ok(None),
        DataType::Boolean => Value::Bool(col.as_boolean().value(row)),
        DataType::Int8 => Value::from(col.as_primitive::<Int8Type>().value(row)),
        DataType::Int16 => Value::from(col.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => Value::from(col.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => Value::from(col.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => Value::from(col.as_primitive::<UInt8Type>().value(row)),
        DataType::UInt16 => Value::from(col.as_primitive::<UInt16Type>().value(row)),
        DataType::UInt32 => Value::from(col.as_primitive::<UInt32Type>().value(row)),
        DataType::UInt64 => Value::from(col.as_primitive::<UInt64Type>().value(row)),
        DataType::Float32 => number(col.as_primitive::<Float32Type>().value(row) as f64),
        DataType::Float64 => number(col.as_primitive::<Float64Type>().value(row)),
        DataType::Decimal128(_, scale) => {
            let raw = col.as_primitive::<Decimal128Type>().value(row);
            number(raw as f64 / 10f64.powi(*scale as i32))
        }
        DataType::Utf8 => Value::String(col.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => Value::String(col.as_string::<i64>().value(row).to_string()),
        DataType::Utf8View => Value::String(col.as_string_view().value(row).to_string()),
        DataType::Date32 => Value::String(date(col.as_primitive::<Date32Type>().value(row) as i64)),
        DataType::Date64 => {
            Value::String(date_time(col.as_primitive::<Date64Type>().value(row).div_euclid(1000), 0, true))
        }
        DataType::Timestamp(unit, _) => {
            let raw = match unit {
                TimeUnit::Second => col.as_primitive::<TimestampSecondType>().value(row),
                TimeUnit::Millisecond => col.as_primitive::<TimestampMillisecondType>().value(row),
                TimeUnit::Microsecond => col.as_primitive::<TimestampMicrosecondType>().value(row),
                TimeUnit::Nanosecond => col.as_primitive::<TimestampNanosecondType>().value(row),
            };
            let per_second: i64 = match unit {
                TimeUnit::Second => 1,
                TimeUnit::Millisecond => 1_000,
                TimeUnit::Microsecond => 1_000_000,
                TimeUnit::Nanosecond => 1_000_000_000,
            };
            Value::String(date_time(raw.div_euclid(per_second), 0, false))
        }
        other => return Err(format!("unsupported column type {other}")),
    };
    Ok(Some(v))
}

/// `YYYY-MM-DD` of a day count since 1970-01-01 (proleptic Gregorian; Howard Hinnant's algorithm).
pub(crate) fn date(days: i64) -> String {
    let (y, m, d) = civil(days);
    format!("{y:04}-{m:02}-{d:02}")
}

fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// RFC 3339 in UTC of seconds since the epoch (`date_only` drops a midnight time).
pub(crate) fn date_time(seconds: i64, _nanos: u32, date_only: bool) -> String {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    if date_only && secs == 0 {
        return date(days);
    }
    format!("{}T{:02}:{:02}:{:02}Z", date(days), secs / 3600, secs % 3600 / 60, secs % 60)
}
