//! Named limits of the file readers. Units are last in every name; relations are checked below.
//! Every limit is enforced where the bytes enter the reader, so no input makes a reader hold more.

/// One record's encoded size (a JSON element, an NDJSON line, a CSV row, an XML `<record>`), in
/// bytes. A record larger than this is a malformed batch, not something to buffer.
pub const RECORD_BYTES_MAX: usize = 256 * 1024;
/// Fields (columns) in one record.
pub const FIELDS_PER_RECORD_MAX: usize = 1_024;
/// Nesting of arrays and objects inside one JSON record (the record object is depth 1).
pub const JSON_DEPTH_MAX: usize = 32;
/// Length of a CSV header name, an XML element name or a Parquet/XLSX column name, in bytes.
pub const FIELD_NAME_BYTES_MAX: usize = 256;

/// XLSX is a zip archive: entries in it, their total uncompressed size, and how much larger than
/// its compressed form one entry may become. A zip bomb trips one of these before it is inflated.
pub const XLSX_ZIP_ENTRIES_MAX: usize = 10_000;
pub const XLSX_UNCOMPRESSED_BYTES_MAX: u64 = 512 * 1024 * 1024;
pub const XLSX_COMPRESSION_RATIO_MAX: u64 = 200;
/// Entries smaller than this are exempt from the ratio check (tiny XML parts compress very well).
pub const XLSX_RATIO_EXEMPT_BYTES_MAX: u64 = 64 * 1024;

/// Rows decoded at once from a Parquet row group.
pub const PARQUET_BATCH_ROWS: usize = 1_024;

const _: () = assert!(FIELD_NAME_BYTES_MAX < RECORD_BYTES_MAX);
const _: () = assert!(XLSX_RATIO_EXEMPT_BYTES_MAX < XLSX_UNCOMPRESSED_BYTES_MAX);
const _: () = assert!(JSON_DEPTH_MAX >= 2);
