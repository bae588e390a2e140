//! Aggregates (F2, F4): each record contributes to one cell (its finest time point × its dimension
//! values); the query side rolls cells up into buckets of a coarser interval and a subset of the
//! dimensions. Cell keys sort by time first, so a from/to window is one range scan in storage.

use std::collections::BTreeMap;
use std::collections::HashMap;

use serde_json::Map;
use serde_json::Number;
use serde_json::Value;

use crate::canonical::canonical_json;
use crate::def::DatasetDef;
use crate::def::MeasureOp;
use crate::error::Problem;
use crate::limits;
use crate::time::Interval;
use crate::time::TimePoint;

/// Length of [`TimePoint::sort_key`], the first part of every cell key.
const TIME_KEY_LEN_BYTES: usize = 9;
/// Integral f64 values below this are exact and are written as JSON integers.
const EXACT_INTEGER_F64_MAX: f64 = 9_007_199_254_740_992.0;

/// One record's share of the aggregates.
#[derive(Clone, Debug, PartialEq)]
pub struct Contribution {
    pub time: TimePoint,
    /// One value per dimension, in definition order; absent → null.
    pub dims: Vec<Value>,
    /// Numeric measure values present in the record.
    pub measures: BTreeMap<String, f64>,
}

impl Contribution {
    /// Storage key of the cell: `time.sort_key()` + 0x00 + canonical JSON array of the dims.
    pub fn cell_key(&self) -> Vec<u8> {
        let dims = canonical_json(&Value::Array(self.dims.clone()));
        let mut key = self.time.sort_key();
        key.reserve(dims.len() + 1);
        key.push(0);
        key.extend_from_slice(dims.as_bytes());
        key
    }
}

/// The inverse of [`Contribution::cell_key`].
pub fn decode_cell_key(b: &[u8]) -> Result<(TimePoint, Vec<Value>), String> {
    if b.len() <= TIME_KEY_LEN_BYTES || b[TIME_KEY_LEN_BYTES] != 0 {
        return Err("not a cell key: expected 9 time bytes, 0x00, then a JSON array".to_string());
    }
    let time = TimePoint::from_sort_key(&b[..TIME_KEY_LEN_BYTES])?;
    match serde_json::from_slice(&b[TIME_KEY_LEN_BYTES + 1..]) {
        Ok(Value::Array(dims)) => Ok((time, dims)),
        _ => Err("cell key dimensions are not a JSON array".to_string()),
    }
}

/// A cell with its key decoded once (when it is stored in a query view), so that queries parse
/// nothing per cell.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedCell {
    pub time: TimePoint,
    pub dims: Vec<Value>,
    /// The canonical JSON of each dimension value: what rows are grouped by.
    pub dims_canonical: Vec<String>,
    pub cell: Cell,
}

impl DecodedCell {
    pub fn decode(key: &[u8], cell: Cell) -> Result<DecodedCell, String> {
        let (time, dims) = decode_cell_key(key)?;
        let dims_canonical = dims.iter().map(canonical_json).collect();
        Ok(DecodedCell { time, dims, dims_canonical, cell })
    }
}

/// The first bytes of the cell keys of time points starting at `minutes` (see `TimePoint::sort_key`).
fn key_bound(minutes: i64) -> Vec<u8> {
    let mut k = ((minutes as u64) ^ (1 << 63)).to_be_bytes().to_vec();
    k.push(0);
    k
}

/// Running statistics of one measure in one cell.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeasureStat {
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    /// How many values were seen (records without the measure do not count).
    pub n: u64,
}

impl MeasureStat {
    fn add(&mut self, v: f64) {
        self.merge(&MeasureStat { sum: v, min: v, max: v, n: 1 });
    }

    fn merge(&mut self, other: &MeasureStat) {
        if other.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = other.clone();
            return;
        }
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.n += other.n;
    }
}

/// The statistics of one cell.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cell {
    pub count: u64,
    pub measures: BTreeMap<String, MeasureStat>,
}

impl Cell {
    /// Adds one record's contribution.
    pub fn add(&mut self, c: &Contribution) {
        self.count += 1;
        for (name, v) in &c.measures {
            self.measures.entry(name.clone()).or_default().add(*v);
        }
    }

    /// Adds all of another cell (used when rolling cells up). Allocates only for a measure this
    /// cell has not seen yet.
    pub fn merge(&mut self, other: &Cell) {
        self.count += other.count;
        for (name, stat) in &other.measures {
            match self.measures.get_mut(name) {
                Some(m) => m.merge(stat),
                None => {
                    self.measures.insert(name.clone(), stat.clone());
                }
            }
        }
    }
}

/// A parsed aggregate query.
#[derive(Clone, Debug, PartialEq)]
pub struct AggregateQuery {
    pub interval: Interval,
    /// Dimensions kept in the answer, in the order asked; the others are summed over.
    pub group_by: Vec<String>,
    pub from: Option<TimePoint>,
    pub to: Option<TimePoint>,
}

impl AggregateQuery {
    /// Parses the query-string values. `interval` defaults to year, which every granularity
    /// supports; `group_by` is a comma-separated list of dimensions of `def`.
    pub fn parse(
        def: &DatasetDef,
        interval: Option<&str>,
        group_by: Option<&str>,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<AggregateQuery, Problem> {
        let interval = match interval {
            None | Some("") => Interval::Year,
            Some(s) => s.parse().map_err(|e| Problem::new("/interval", e))?,
        };
        let mut dims: Vec<String> = Vec::new();
        for name in group_by.unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if !def.dimensions.iter().any(|d| d == name) {
                let known = if def.dimensions.is_empty() { "none".to_string() } else { def.dimensions.join(", ") };
                return Err(Problem::new(
                    "/group_by",
                    format!("`{name}` is not a dimension of this dataset (dimensions: {known})"),
                ));
            }
            if dims.iter().any(|d| d == name) {
                return Err(Problem::new("/group_by", format!("`{name}` is listed twice")));
            }
            dims.push(name.to_string());
        }
        let point = |name: &str, text: Option<&str>| -> Result<Option<TimePoint>, Problem> {
            let Some(text) = text.filter(|t| !t.is_empty()) else { return Ok(None) };
            if def.time_field.is_none() {
                return Err(Problem::new(format!("/{name}"), "this dataset has no time field to filter on"));
            }
            TimePoint::parse(text).map(Some).map_err(|e| Problem::new(format!("/{name}"), e))
        };
        let (from, to) = (point("from", from)?, point("to", to)?);
        if let (Some((from_start, _)), Some((_, to_end))) =
            (from.and_then(|f| f.range_minutes()), to.and_then(|t| t.range_minutes()))
            && from_start >= to_end
        {
            return Err(Problem::new("/from", "`from` is after `to`"));
        }
        Ok(AggregateQuery { interval, group_by: dims, from, to })
    }

    /// The range of cell keys that can hold cells of this query's from/to window (cell keys sort by
    /// the start of their time point). Cells inside it are still checked exactly by `aggregate`.
    pub fn key_range(&self) -> (std::ops::Bound<Vec<u8>>, std::ops::Bound<Vec<u8>>) {
        use std::ops::Bound;
        let lower = match self.from.and_then(|f| f.range_minutes()) {
            Some((start, _)) => Bound::Included(key_bound(start)),
            None => Bound::Unbounded,
        };
        let upper = match self.to.and_then(|t| t.range_minutes()) {
            Some((_, end)) => Bound::Excluded(key_bound(end)),
            None => Bound::Unbounded,
        };
        (lower, upper)
    }
}

/// Rolls cells given by their stored keys up into answer rows (see [`aggregate_decoded`]).
pub fn aggregate<'a>(
    def: &DatasetDef,
    cells: impl IntoIterator<Item = (&'a [u8], &'a Cell)>,
    q: &AggregateQuery,
) -> Result<Vec<Value>, Problem> {
    let decoded = cells
        .into_iter()
        .map(|(k, c)| DecodedCell::decode(k, c.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Problem::new("", format!("stored cell key: {e}")))?;
    aggregate_decoded(def, decoded.iter(), q)
}

/// Rolls cells up into answer rows sorted by bucket (by time) and then by the grouped dimension
/// values (canonical JSON).
pub fn aggregate_decoded<'a>(
    def: &DatasetDef,
    cells: impl IntoIterator<Item = &'a DecodedCell>,
    q: &AggregateQuery,
) -> Result<Vec<Value>, Problem> {
    let mut positions = Vec::with_capacity(q.group_by.len());
    for name in &q.group_by {
        match def.dimensions.iter().position(|d| d == name) {
            Some(i) => positions.push(i),
            None => return Err(Problem::new("/group_by", format!("`{name}` is not a dimension of this dataset"))),
        }
    }
    let from_start = q.from.and_then(|f| f.range_minutes()).map(|(s, _)| s);
    let to_end = q.to.and_then(|t| t.range_minutes()).map(|(_, e)| e);
    // Hot loop over up to hundreds of thousands of cells: the bucket is computed once per distinct
    // time point (cells come ordered by time, so that is once per run of cells), groups are found
    // by hashing, and the answer is sorted once at the end.
    let mut bucket_ids: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    let mut buckets: Vec<(Vec<u8>, TimePoint)> = Vec::new();
    let mut index: HashMap<(u32, Vec<&'a str>), usize> = HashMap::new();
    let mut groups: Vec<(u32, Vec<&'a str>, Vec<Value>, Cell)> = Vec::new();
    // The current time point: (time, inside the window, its bucket id).
    let mut current: Option<(TimePoint, bool, u32)> = None;
    for decoded in cells {
        let DecodedCell { time, dims, dims_canonical, cell } = decoded;
        if dims.len() != def.dimensions.len() || dims_canonical.len() != dims.len() {
            return Err(Problem::new("", "stored cell key does not match the dataset's dimensions"));
        }
        let (inside, bucket_id) = match current {
            Some((t, inside, id)) if t == *time => (inside, id),
            _ => {
                let inside = match time.range_minutes() {
                    Some((start, _)) => !(from_start.is_some_and(|f| start < f) || to_end.is_some_and(|t| start >= t)),
                    None => true,
                };
                let bucket = time.truncate(q.interval).map_err(|e| Problem::new("/interval", e))?;
                let key = bucket.sort_key();
                let next_id = buckets.len() as u32;
                let id = *bucket_ids.entry(key.clone()).or_insert(next_id);
                if id == next_id {
                    buckets.push((key, bucket));
                }
                current = Some((*time, inside, id));
                (inside, id)
            }
        };
        if !inside {
            continue;
        }
        let group_key = (bucket_id, positions.iter().map(|i| dims_canonical[*i].as_str()).collect::<Vec<_>>());
        if let Some(&g) = index.get(&group_key) {
            groups[g].3.merge(cell);
            continue;
        }
        if groups.len() >= limits::AGGREGATE_ROWS_MAX {
            return Err(Problem::new(
                "",
                format!(
                    "more than {} rows; use a coarser interval, fewer group_by dimensions or a shorter from/to",
                    limits::AGGREGATE_ROWS_MAX
                ),
            ));
        }
        let values: Vec<Value> = positions.iter().map(|i| dims[*i].clone()).collect();
        index.insert(group_key.clone(), groups.len());
        groups.push((group_key.0, group_key.1, values, cell.clone()));
    }
    // Answer order: bucket by time, then the grouped values' canonical JSON.
    groups.sort_by(|a, b| buckets[a.0 as usize].0.cmp(&buckets[b.0 as usize].0).then_with(|| a.1.cmp(&b.1)));
    Ok(groups.into_iter().map(|(id, _, values, cell)| row(def, q, buckets[id as usize].1, values, &cell)).collect())
}

fn row(def: &DatasetDef, q: &AggregateQuery, bucket: TimePoint, values: Vec<Value>, cell: &Cell) -> Value {
    let mut row = Map::new();
    row.insert("bucket".to_string(), Value::String(bucket.to_string()));
    for (name, v) in q.group_by.iter().zip(values) {
        row.insert(name.clone(), v);
    }
    row.insert("count".to_string(), Value::from(cell.count));
    for (name, op) in &def.measures {
        let v = match cell.measures.get(name).filter(|s| s.n > 0) {
            None => Value::Null,
            Some(s) => number(match op {
                MeasureOp::Sum => s.sum,
                MeasureOp::Min => s.min,
                MeasureOp::Max => s.max,
                MeasureOp::Avg => s.sum / s.n as f64,
            }),
        };
        row.insert(name.clone(), v);
    }
    Value::Object(row)
}

/// Integral values as JSON integers (so a sum of counts reads `12`, not `12.0`); non-finite → null.
fn number(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < EXACT_INTEGER_F64_MAX {
        return Value::from(v as i64);
    }
    Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null)
}

#[cfg(test)]
#[path = "aggregate_tests.rs"]
mod tests;
