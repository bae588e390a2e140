//! Tests of aggregation (F2 aggregation, F4 statistics).

use serde_json::json;

use super::*;
use crate::test_support::compiled;
use crate::test_support::etx_monthly;
use crate::test_support::obj;

/// Builds the stored cells from records, as the state machine does.
fn cells(records: &[Value]) -> BTreeMap<Vec<u8>, Cell> {
    let ds = compiled();
    let mut out: BTreeMap<Vec<u8>, Cell> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        let c = ds.contribution(i, &obj(r.clone())).unwrap();
        out.entry(c.cell_key()).or_default().add(&c);
    }
    out
}

fn run(cells: &BTreeMap<Vec<u8>, Cell>, q: &AggregateQuery) -> Result<Vec<Value>, Problem> {
    aggregate(&etx_monthly(), cells.iter().map(|(k, c)| (k.as_slice(), c)), q)
}

fn query(interval: Option<&str>, group_by: Option<&str>, from: Option<&str>, to: Option<&str>) -> AggregateQuery {
    AggregateQuery::parse(&etx_monthly(), interval, group_by, from, to).unwrap()
}

fn records() -> Vec<Value> {
    vec![
        json!({"agency": "A", "period": "2025-01", "channel": "web", "transactions": 10, "failed": 1}),
        json!({"agency": "A", "period": "2025-01", "channel": "mobile", "transactions": 20, "failed": 4}),
        json!({"agency": "B", "period": "2025-02", "channel": "web", "transactions": 5}),
        json!({"agency": "B", "period": "2025-04", "channel": "web", "transactions": 7, "failed": 2}),
        json!({"agency": "A", "period": "2024-12", "channel": "web", "transactions": 100, "failed": 0}),
    ]
}

/// F4: roll-up by quarter and one dimension, sums and counts, sorted by time then dimension.
#[test]
fn f4_roll_up_by_quarter_and_agency() {
    let rows = run(&cells(&records()), &query(Some("quarter"), Some("agency"), None, None)).unwrap();
    assert_eq!(
        rows,
        [
            json!({"bucket": "2024-Q4", "agency": "A", "count": 1, "transactions": 100, "failed": 0}),
            json!({"bucket": "2025-Q1", "agency": "A", "count": 2, "transactions": 30, "failed": 5}),
            json!({"bucket": "2025-Q1", "agency": "B", "count": 1, "transactions": 5, "failed": null}),
            json!({"bucket": "2025-Q2", "agency": "B", "count": 1, "transactions": 7, "failed": 2}),
        ]
    );
}

/// F4: group_by subsets (none, both), the default interval (year) and from/to filtering.
#[test]
fn f4_group_by_subsets_and_time_window() {
    let cells = cells(&records());
    let all = run(&cells, &query(None, None, None, None)).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1], json!({"bucket": "2025", "count": 4, "transactions": 42, "failed": 7}));
    let both = run(&cells, &query(Some("month"), Some("channel,agency"), Some("2025-01"), Some("2025-Q1"))).unwrap();
    assert_eq!(
        both,
        [
            json!({"bucket": "2025-01", "channel": "mobile", "agency": "A", "count": 1, "transactions": 20, "failed": 4}),
            json!({"bucket": "2025-01", "channel": "web", "agency": "A", "count": 1, "transactions": 10, "failed": 1}),
            json!({"bucket": "2025-02", "channel": "web", "agency": "B", "count": 1, "transactions": 5, "failed": null}),
        ]
    );
    let window = run(&cells, &query(Some("year"), None, Some("2025-02-01"), Some("2025-04"))).unwrap();
    assert_eq!(window, [json!({"bucket": "2025", "count": 2, "transactions": 12, "failed": 2})]);
}

/// F4: min, max and avg over the values seen.
#[test]
fn f4_min_max_avg() {
    let mut v = crate::test_support::etx_monthly_json();
    v["measures"] = json!({"transactions": "avg", "failed": "max"});
    v["schema"]["properties"]["duration"] = json!({"type": "number"});
    v["measures"]["duration"] = json!("min");
    let def = DatasetDef::parse(&v).unwrap();
    let ds = crate::CompiledDataset::compile(def.clone(), 1).unwrap();
    let mut cell_map: BTreeMap<Vec<u8>, Cell> = BTreeMap::new();
    for (t, f, d) in [(10, 1, 2.5), (20, 4, 0.5), (5, 0, 1.0)] {
        let r = json!({"agency": "A", "period": "2025-03", "channel": "web", "transactions": t, "failed": f, "duration": d});
        let c = ds.contribution(0, &obj(r)).unwrap();
        cell_map.entry(c.cell_key()).or_default().add(&c);
    }
    let q = AggregateQuery::parse(&def, Some("month"), None, None, None).unwrap();
    let rows = aggregate(&def, cell_map.iter().map(|(k, c)| (k.as_slice(), c)), &q).unwrap();
    assert_eq!(
        rows,
        [json!({"bucket": "2025-03", "count": 3, "transactions": 35.0 / 3.0, "failed": 4, "duration": 0.5})]
    );
    let stat = &cell_map.values().next().unwrap().measures["duration"];
    assert_eq!((stat.sum, stat.min, stat.max, stat.n), (4.0, 0.5, 2.5, 3));
}

/// F2: monthly data asked by day is refused, saying which intervals it supports.
#[test]
fn f2_coarser_cells_than_interval_refused() {
    let err = run(&cells(&records()), &query(Some("day"), None, None, None)).unwrap_err();
    assert_eq!(err.field, "/interval");
    assert!(err.message.contains("month, quarter, year"), "{}", err.message);
}

/// F2: query parameters are checked and name what is wrong.
#[test]
fn f2_query_parse_problems() {
    let def = etx_monthly();
    let e = AggregateQuery::parse(&def, None, Some("agency,province"), None, None).unwrap_err();
    assert_eq!(e.field, "/group_by");
    assert!(e.message.contains("province"));
    assert_eq!(AggregateQuery::parse(&def, Some("decade"), None, None, None).unwrap_err().field, "/interval");
    assert_eq!(AggregateQuery::parse(&def, None, None, Some("yesterday"), None).unwrap_err().field, "/from");
    assert_eq!(AggregateQuery::parse(&def, None, None, Some("2025-03"), Some("2025-02")).unwrap_err().field, "/from");
    let q = AggregateQuery::parse(&def, Some("week"), Some(" channel , agency "), Some("2025"), None).unwrap();
    assert_eq!(
        (q.interval, q.group_by.as_slice(), q.from),
        (Interval::Week, &["channel".to_string(), "agency".to_string()][..], Some(TimePoint::Year(2025)))
    );
}

/// F2: cell keys round-trip and sort by time first.
#[test]
fn f2_cell_key_round_trip_and_order() {
    let c = |time, dims: Vec<Value>| Contribution { time, dims, measures: BTreeMap::new() };
    let keys = [
        c(TimePoint::Month(2024, 12), vec![json!("Z"), json!(null)]),
        c(TimePoint::Month(2025, 1), vec![json!("A"), json!("web")]),
        c(TimePoint::Month(2025, 1), vec![json!("B"), json!("mobile")]),
        c(TimePoint::Quarter(2025, 1), vec![json!("A"), json!(3)]),
        c(TimePoint::Month(2025, 2), vec![json!("A"), json!({"x": [1, "é"]})]),
    ];
    for k in &keys {
        assert_eq!(decode_cell_key(&k.cell_key()).unwrap(), (k.time, k.dims.clone()));
    }
    for pair in keys.windows(2) {
        assert!(pair[0].cell_key() < pair[1].cell_key());
    }
    assert!(decode_cell_key(b"short").is_err());
    let mut bad = keys[0].cell_key();
    bad.truncate(10);
    bad.extend_from_slice(b"{}");
    assert!(decode_cell_key(&bad).is_err());
}

/// F4: visiting only `key_range` of cells ordered by key gives the same rows as checking every
/// cell, for windows that cut through the data, cover it, or miss it.
#[test]
fn f4_key_range_visits_exactly_the_window() {
    let cells = cells(&records());
    let decoded: BTreeMap<Vec<u8>, DecodedCell> =
        cells.iter().map(|(k, c)| (k.clone(), DecodedCell::decode(k, c.clone()).unwrap())).collect();
    for (from, to) in [
        (Some("2025-01"), Some("2025-02")),
        (Some("2025-02"), None),
        (None, Some("2025-01")),
        (Some("2024"), Some("2026")),
        (Some("2025-Q2"), Some("2025-Q2")),
        (Some("2030"), None),
    ] {
        let q = query(Some("month"), Some("agency"), from, to);
        let full = run(&cells, &q).unwrap();
        let ranged = aggregate_decoded(&etx_monthly(), decoded.range(q.key_range()).map(|(_, c)| c), &q).unwrap();
        assert_eq!(full, ranged, "window {from:?}..{to:?}");
    }
}
