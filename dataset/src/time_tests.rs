//! Tests of time points (F2 aggregation, F4 statistics: the time axis of every statistic).

use super::*;
use serde_json::json;
use time::macros::date;

fn tp(s: &str) -> TimePoint {
    TimePoint::parse(s).unwrap()
}

/// F2: every accepted form parses to its granularity.
#[test]
fn f2_parses_each_form() {
    assert_eq!(tp("2025"), TimePoint::Year(2025));
    assert_eq!(tp("2025-Q3"), TimePoint::Quarter(2025, 3));
    assert_eq!(tp("2025-07"), TimePoint::Month(2025, 7));
    assert_eq!(tp("2025-W29"), TimePoint::Week(2025, 29));
    assert_eq!(tp("2025-07-14"), TimePoint::Day(date!(2025 - 07 - 14)));
    assert_eq!(tp("2025-07-14T10:59:59+07:00"), TimePoint::Hour(date!(2025 - 07 - 14), 10));
    assert_eq!(tp("2025-07-14T10:00+07:00"), TimePoint::Hour(date!(2025 - 07 - 14), 10));
    assert_eq!(TimePoint::from_value(&json!(2025)).unwrap(), TimePoint::Year(2025));
    assert_eq!(TimePoint::from_value(&json!("2025-07")).unwrap(), TimePoint::Month(2025, 7));
    for bad in
        ["", "25", "2025-13", "2025-Q5", "2025-W54", "2025-W53", "2025-02-30", "2025/07", "-2025", "2025-7-1", "x"]
    {
        assert!(TimePoint::parse(bad).is_err(), "{bad} should not parse");
    }
    assert!(TimePoint::parse("2020-W53").is_ok(), "2020 has 53 ISO weeks");
    assert!(TimePoint::from_value(&json!(true)).is_err());
    assert!(TimePoint::from_value(&json!(-1)).is_err());
}

/// F2: date-times are converted to Vietnam time (UTC+07:00) before truncation to the hour.
#[test]
fn f2_vietnam_time_day_boundary() {
    let p = tp("2025-07-13T18:30:00Z");
    assert_eq!(p, TimePoint::Hour(date!(2025 - 07 - 14), 1));
    assert_eq!(p.bucket(Interval::Day).unwrap(), "2025-07-14");
    assert_eq!(p.bucket(Interval::Hour).unwrap(), "2025-07-14T01:00+07:00");
    assert_eq!(tp("2025-07-13T16:59:59Z").bucket(Interval::Day).unwrap(), "2025-07-13");
    assert_eq!(tp("2025-12-31T17:00:00Z").bucket(Interval::Year).unwrap(), "2026");
    assert_eq!(tp("2025-07-14T05:00:00+09:00").bucket(Interval::Hour).unwrap(), "2025-07-14T03:00+07:00");
}

/// F2: bucket labels at every interval, including ISO weeks across year boundaries.
#[test]
fn f2_bucket_labels() {
    let p = tp("2025-07-14T10:15:00+07:00");
    let labels: Vec<String> = Interval::ALL.iter().map(|i| p.bucket(*i).unwrap()).collect();
    assert_eq!(labels, ["2025-07-14T10:00+07:00", "2025-07-14", "2025-W29", "2025-07", "2025-Q3", "2025"]);
    // 2024-12-30 is the Monday of ISO week 1 of 2025; 2021-01-03 is in week 53 of 2020.
    assert_eq!(tp("2024-12-30").bucket(Interval::Week).unwrap(), "2025-W01");
    assert_eq!(tp("2021-01-03").bucket(Interval::Week).unwrap(), "2020-W53");
    assert_eq!(tp("2021-01-04").bucket(Interval::Week).unwrap(), "2021-W01");
    assert_eq!(tp("2025-12-31").bucket(Interval::Quarter).unwrap(), "2025-Q4");
    assert_eq!(tp("2025-04").bucket(Interval::Quarter).unwrap(), "2025-Q2");
    assert_eq!(tp("2025-Q3").bucket(Interval::Year).unwrap(), "2025");
    // A week belongs to the month and year of its Thursday.
    assert_eq!(tp("2025-W01").bucket(Interval::Year).unwrap(), "2025");
    assert_eq!(tp("2020-W53").bucket(Interval::Month).unwrap(), "2020-12");
    assert_eq!(TimePoint::None.bucket(Interval::Day).unwrap(), "all");
}

/// F2: data coarser than the asked interval is an error naming both.
#[test]
fn f2_coarser_than_interval_is_refused() {
    let err = tp("2025-07").bucket(Interval::Day).unwrap_err();
    assert!(err.contains("month") && err.contains("day"), "{err}");
    assert!(err.contains("month, quarter, year"), "{err}");
    assert!(tp("2025-W29").bucket(Interval::Day).is_err());
    assert!(tp("2025").bucket(Interval::Quarter).is_err());
    assert!(tp("2025-07-14").bucket(Interval::Hour).is_err());
}

#[test]
fn f2_ranges_in_vietnam_minutes() {
    assert_eq!(tp("1970-01-01").range_minutes(), Some((0, 1440)));
    assert_eq!(tp("1970-01-01T00:00:00Z").range_minutes(), Some((420, 480)));
    let (s, e) = tp("2024-02").range_minutes().unwrap();
    assert_eq!(e - s, 29 * 1440);
    let (s, e) = tp("2024").range_minutes().unwrap();
    assert_eq!(e - s, 366 * 1440);
    let (s, e) = tp("2025-Q4").range_minutes().unwrap();
    assert_eq!((s, e), (tp("2025-10-01").range_minutes().unwrap().0, tp("2026-01-01").range_minutes().unwrap().0));
    assert_eq!(tp("2025-W01").range_minutes().unwrap().0, tp("2024-12-30").range_minutes().unwrap().0);
    assert_eq!(tp("9999").range_minutes().unwrap().1 - tp("9999").range_minutes().unwrap().0, 365 * 1440);
    assert_eq!(TimePoint::None.range_minutes(), None);
}

/// F2: storage keys round-trip and sort by start, then granularity (finer first).
#[test]
fn f2_sort_key_round_trip_and_order() {
    let points = [
        TimePoint::None,
        tp("1969-12-31T23:00:00+07:00"),
        tp("2025-01-01T00:00:00+07:00"),
        tp("2025-01-01"),
        tp("2025-01"),
        tp("2025-Q1"),
        tp("2025"),
        tp("2025-01-02"),
        tp("2025-W02"),
        tp("2025-02"),
    ];
    for p in points {
        assert_eq!(TimePoint::from_sort_key(&p.sort_key()).unwrap(), p);
    }
    for pair in points.windows(2) {
        assert!(pair[0].sort_key() < pair[1].sort_key(), "{} before {}", pair[0], pair[1]);
    }
    assert!(TimePoint::from_sort_key(&[1, 2, 3]).is_err());
    let mut bad = tp("2025-02").sort_key();
    bad[8] = 6; // a year that would start on 1 February
    assert!(TimePoint::from_sort_key(&bad).is_err());
    bad[8] = 9;
    assert!(TimePoint::from_sort_key(&bad).is_err());
}

#[test]
fn interval_names_parse_and_errors_list_allowed() {
    assert_eq!("quarter".parse::<Interval>().unwrap(), Interval::Quarter);
    let err = "fortnight".parse::<Interval>().unwrap_err();
    assert!(err.contains("hour, day, week, month, quarter, year"), "{err}");
}

#[test]
fn civil_day_numbers_round_trip() {
    for days in (-800_000..800_000).step_by(997) {
        let (y, m, d) = civil_from_days(days);
        assert_eq!(days_from_civil(y, m, d), days);
    }
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(days_from_civil(2000, 3, 1), 11_017);
}
