//! Time points: the time granularity a record's data has, bucketed for aggregates and laid out as
//! sortable storage keys.
//!
//! All civil time here is Vietnam time, a fixed UTC+07:00 (Vietnam has no daylight saving time), so
//! "which day" and "which month" mean what the agencies reporting the data mean. Date-times are
//! converted to it and truncated to the hour: the finest aggregate cell is one hour. Calendar
//! arithmetic is done on day numbers (days since 1970-01-01) so that it cannot fail for any value.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;
use time::Date;
use time::Month;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::offset;

/// Julian day number of 1970-01-01, the day number origin used here.
const UNIX_EPOCH_JULIAN_DAY: i64 = 2_440_588;
const MINUTES_PER_DAY: i64 = 24 * 60;
const SORT_KEY_LEN_BYTES: usize = 9;
const EXPECTED_FORMS: &str =
    "expected YYYY, YYYY-Qn, YYYY-MM, YYYY-Www, YYYY-MM-DD or an RFC 3339 date-time such as 2025-07-14T10:30:00+07:00";

/// A bucket width of an aggregate query, from the finest to the coarsest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Interval {
    Hour,
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

impl Interval {
    /// Every interval, finest first.
    pub const ALL: [Interval; 6] =
        [Interval::Hour, Interval::Day, Interval::Week, Interval::Month, Interval::Quarter, Interval::Year];

    /// The name used in queries and messages.
    pub fn name(self) -> &'static str {
        match self {
            Interval::Hour => "hour",
            Interval::Day => "day",
            Interval::Week => "week",
            Interval::Month => "month",
            Interval::Quarter => "quarter",
            Interval::Year => "year",
        }
    }

    /// Intervals that data of this granularity can be bucketed by (itself and every coarser one).
    fn supported_from(self) -> String {
        let names: Vec<&str> = Interval::ALL.iter().filter(|i| **i >= self).map(|i| i.name()).collect();
        names.join(", ")
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Interval {
    type Err = String;

    fn from_str(s: &str) -> Result<Interval, String> {
        Interval::ALL
            .into_iter()
            .find(|i| i.name() == s)
            .ok_or_else(|| format!("unknown interval `{s}`: expected one of hour, day, week, month, quarter, year"))
    }
}

/// A time point at the granularity the data has. Weeks are ISO weeks (Monday first, week 1 holds
/// the year's first Thursday) numbered within their ISO week-year.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimePoint {
    /// The dataset has no time field: every record falls in the single bucket "all".
    None,
    Year(i32),
    Quarter(i32, u8),
    Month(i32, u8),
    Week(i32, u8),
    Day(Date),
    /// A day and an hour (0–23) in Vietnam time.
    Hour(Date, u8),
}

impl TimePoint {
    /// Parses one of the accepted texts (see the module docs and `docs/datasets.md`).
    pub fn parse(text: &str) -> Result<TimePoint, String> {
        let b = text.as_bytes();
        let bad = || format!("`{}` is not a time point: {EXPECTED_FORMS}", shorten(text));
        let year = || digits(b.get(0..4)?).and_then(|y| i32::try_from(y).ok());
        match b.len() {
            4 => year().map(TimePoint::Year).ok_or_else(bad),
            7 if b[4] == b'-' && b[5] == b'Q' => {
                let (y, q) = year().zip(digits(&b[6..7])).ok_or_else(bad)?;
                if !(1..=4).contains(&q) {
                    return Err(format!("quarter must be 1 to 4 in `{text}`"));
                }
                Ok(TimePoint::Quarter(y, q as u8))
            }
            7 if b[4] == b'-' => {
                let (y, m) = year().zip(digits(&b[5..7])).ok_or_else(bad)?;
                if !(1..=12).contains(&m) {
                    return Err(format!("month must be 01 to 12 in `{text}`"));
                }
                Ok(TimePoint::Month(y, m as u8))
            }
            8 if b[4] == b'-' && b[5] == b'W' => {
                let (y, w) = year().zip(digits(&b[6..8])).ok_or_else(bad)?;
                if w < 1 || i64::from(w) > weeks_in_iso_year(i64::from(y)) {
                    return Err(format!("week {w:02} does not exist in ISO year {y} (`{text}`)"));
                }
                Ok(TimePoint::Week(y, w as u8))
            }
            10 if b[4] == b'-' && b[7] == b'-' => {
                let (y, m) = year().zip(digits(&b[5..7])).ok_or_else(bad)?;
                let d = digits(&b[8..10]).ok_or_else(bad)?;
                let month = u8::try_from(m).ok().and_then(|m| Month::try_from(m).ok()).ok_or_else(bad)?;
                let date = u8::try_from(d).ok().and_then(|d| Date::from_calendar_date(y, month, d).ok());
                date.map(TimePoint::Day).ok_or_else(|| format!("`{text}` is not a calendar date"))
            }
            n if n > 10 => parse_date_time(text).ok_or_else(bad),
            _ => Err(bad()),
        }
    }

    /// A time point from a record value: a string as in [`TimePoint::parse`], or an integer year.
    pub fn from_value(v: &Value) -> Result<TimePoint, String> {
        match v {
            Value::String(s) => TimePoint::parse(s),
            Value::Number(n) => match n.as_u64() {
                Some(y) if y <= 9999 => Ok(TimePoint::Year(y as i32)),
                _ => Err(format!("the number {n} is not a year (0 to 9999)")),
            },
            _ => Err(format!("a time point must be a string or an integer year: {EXPECTED_FORMS}")),
        }
    }

    /// The granularity of this point; `None` for [`TimePoint::None`].
    pub fn granularity(&self) -> Option<Interval> {
        match self {
            TimePoint::None => None,
            TimePoint::Year(_) => Some(Interval::Year),
            TimePoint::Quarter(..) => Some(Interval::Quarter),
            TimePoint::Month(..) => Some(Interval::Month),
            TimePoint::Week(..) => Some(Interval::Week),
            TimePoint::Day(_) => Some(Interval::Day),
            TimePoint::Hour(..) => Some(Interval::Hour),
        }
    }

    /// The bucket label of this point at `interval` (see [`TimePoint::truncate`]).
    pub fn bucket(&self, interval: Interval) -> Result<String, String> {
        Ok(self.truncate(interval)?.to_string())
    }

    /// The bucket this point falls in at `interval`, as a time point of that granularity. A week
    /// belongs to the month, quarter and year of its Thursday (the ISO rule for week-years), so that
    /// every week lands in exactly one coarser bucket. Err when the point is coarser than `interval`.
    pub fn truncate(&self, interval: Interval) -> Result<TimePoint, String> {
        let Some(own) = self.granularity() else {
            return Ok(TimePoint::None);
        };
        if interval < own {
            return Err(format!(
                "the data is by {own} and cannot be bucketed by {interval}; it supports {}",
                own.supported_from()
            ));
        }
        let days = match *self {
            TimePoint::Hour(d, _) | TimePoint::Day(d) => date_to_days(d),
            // Thursday of the ISO week decides its month and year.
            TimePoint::Week(y, w) => iso_week_start_days(i64::from(y), i64::from(w)) + 3,
            TimePoint::Month(y, m) => days_from_civil(i64::from(y), u32::from(m), 1),
            TimePoint::Quarter(y, q) => days_from_civil(i64::from(y), u32::from(q) * 3 - 2, 1),
            TimePoint::Year(y) => days_from_civil(i64::from(y), 1, 1),
            TimePoint::None => return Ok(TimePoint::None),
        };
        if interval == own {
            return Ok(*self);
        }
        let (y, m, _) = civil_from_days(days);
        let year = i32::try_from(y).map_err(|_| format!("year {y} is out of range"))?;
        Ok(match interval {
            Interval::Hour => *self,
            Interval::Day => TimePoint::Day(days_to_date(days)?),
            Interval::Week => {
                let (wy, w) = iso_week_of_days(days);
                TimePoint::Week(i32::try_from(wy).map_err(|_| format!("year {wy} is out of range"))?, w as u8)
            }
            Interval::Month => TimePoint::Month(year, m as u8),
            Interval::Quarter => TimePoint::Quarter(year, ((m - 1) / 3 + 1) as u8),
            Interval::Year => TimePoint::Year(year),
        })
    }

    /// Start (inclusive) and end (exclusive) as minutes since 1970-01-01T00:00+07:00.
    pub fn range_minutes(&self) -> Option<(i64, i64)> {
        let (start_days, end_days) = match *self {
            TimePoint::None => return None,
            TimePoint::Hour(d, h) => {
                let start = date_to_days(d) * MINUTES_PER_DAY + i64::from(h) * 60;
                return Some((start, start + 60));
            }
            TimePoint::Day(d) => (date_to_days(d), date_to_days(d) + 1),
            TimePoint::Week(y, w) => {
                let start = iso_week_start_days(i64::from(y), i64::from(w));
                (start, start + 7)
            }
            TimePoint::Month(y, m) => {
                let (y, m) = (i64::from(y), u32::from(m));
                let (ny, nm) = if m >= 12 { (y + 1, 1) } else { (y, m + 1) };
                (days_from_civil(y, m, 1), days_from_civil(ny, nm, 1))
            }
            TimePoint::Quarter(y, q) => {
                let (y, first) = (i64::from(y), u32::from(q) * 3 - 2);
                let (ny, nm) = if first >= 10 { (y + 1, 1) } else { (y, first + 3) };
                (days_from_civil(y, first, 1), days_from_civil(ny, nm, 1))
            }
            TimePoint::Year(y) => (days_from_civil(i64::from(y), 1, 1), days_from_civil(i64::from(y) + 1, 1, 1)),
        };
        Some((start_days * MINUTES_PER_DAY, end_days * MINUTES_PER_DAY))
    }

    /// Nine bytes that sort like the start instant, then the granularity (finer first): the start in
    /// minutes as a big-endian i64 with the sign bit flipped, then a granularity tag. `None` is all
    /// zeros, which no real point produces because real tags start at 1.
    pub fn sort_key(&self) -> Vec<u8> {
        let Some((start, _)) = self.range_minutes() else {
            return vec![0; SORT_KEY_LEN_BYTES];
        };
        let mut out = Vec::with_capacity(SORT_KEY_LEN_BYTES);
        out.extend_from_slice(&((start as u64) ^ (1 << 63)).to_be_bytes());
        out.push(granularity_tag(self.granularity()));
        out
    }

    /// The inverse of [`TimePoint::sort_key`]; Err for bytes no time point produces.
    pub fn from_sort_key(b: &[u8]) -> Result<TimePoint, String> {
        let bytes: [u8; SORT_KEY_LEN_BYTES] =
            b.try_into().map_err(|_| format!("a time sort key has {SORT_KEY_LEN_BYTES} bytes, not {}", b.len()))?;
        if bytes == [0; SORT_KEY_LEN_BYTES] {
            return Ok(TimePoint::None);
        }
        let mut start = [0u8; 8];
        start.copy_from_slice(&bytes[..8]);
        let minutes = (u64::from_be_bytes(start) ^ (1 << 63)) as i64;
        let days = minutes.div_euclid(MINUTES_PER_DAY);
        let (y, m, _) = civil_from_days(days);
        let year = i32::try_from(y).map_err(|_| format!("year {y} is out of range"))?;
        let point = match bytes[8] {
            1 => TimePoint::Hour(days_to_date(days)?, (minutes.rem_euclid(MINUTES_PER_DAY) / 60) as u8),
            2 => TimePoint::Day(days_to_date(days)?),
            3 => {
                let (wy, w) = iso_week_of_days(days);
                TimePoint::Week(i32::try_from(wy).map_err(|_| format!("year {wy} is out of range"))?, w as u8)
            }
            4 => TimePoint::Month(year, m as u8),
            5 => TimePoint::Quarter(year, ((m - 1) / 3 + 1) as u8),
            6 => TimePoint::Year(year),
            tag => return Err(format!("unknown time granularity tag {tag}")),
        };
        // The start must be exactly the start of that point; anything else is not a key we wrote.
        if point.sort_key() != bytes {
            return Err("time sort key does not start on a boundary of its granularity".to_string());
        }
        Ok(point)
    }
}

impl fmt::Display for TimePoint {
    /// The bucket label: `2025-07-14T10:00+07:00`, `2025-07-14`, `2025-W29`, `2025-07`, `2025-Q3`,
    /// `2025`, or `all` for [`TimePoint::None`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimePoint::None => f.write_str("all"),
            TimePoint::Year(y) => write!(f, "{y:04}"),
            TimePoint::Quarter(y, q) => write!(f, "{y:04}-Q{q}"),
            TimePoint::Month(y, m) => write!(f, "{y:04}-{m:02}"),
            TimePoint::Week(y, w) => write!(f, "{y:04}-W{w:02}"),
            TimePoint::Day(d) => write_date(f, *d),
            TimePoint::Hour(d, h) => {
                write_date(f, *d)?;
                write!(f, "T{h:02}:00+07:00")
            }
        }
    }
}

fn write_date(f: &mut fmt::Formatter<'_>, d: Date) -> fmt::Result {
    write!(f, "{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

fn granularity_tag(g: Option<Interval>) -> u8 {
    match g {
        None => 0,
        Some(Interval::Hour) => 1,
        Some(Interval::Day) => 2,
        Some(Interval::Week) => 3,
        Some(Interval::Month) => 4,
        Some(Interval::Quarter) => 5,
        Some(Interval::Year) => 6,
    }
}

/// An RFC 3339 date-time (seconds may be left out, as in our own hour labels), converted to
/// Vietnam time and truncated to the hour.
fn parse_date_time(text: &str) -> Option<TimePoint> {
    let parsed = OffsetDateTime::parse(text, &Rfc3339).ok().or_else(|| {
        let b = text.as_bytes();
        // "YYYY-MM-DDTHH:MM" followed directly by the offset: add ":00" seconds.
        if b.len() > 16 && b[13] == b':' && b[16] != b':' && text.is_char_boundary(16) {
            let with_seconds = format!("{}:00{}", &text[..16], &text[16..]);
            OffsetDateTime::parse(&with_seconds, &Rfc3339).ok()
        } else {
            None
        }
    })?;
    let local = parsed.checked_to_offset(offset!(+7))?;
    Some(TimePoint::Hour(local.date(), local.hour()))
}

/// A run of ASCII digits as a number; `None` for anything else (including signs).
fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 9 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')))
}

/// Keeps error messages bounded when a client sends a huge string.
fn shorten(text: &str) -> String {
    const SHOWN_CHARS_MAX: usize = 40;
    if text.chars().count() <= SHOWN_CHARS_MAX {
        return text.to_string();
    }
    let mut s: String = text.chars().take(SHOWN_CHARS_MAX).collect();
    s.push('…');
    s
}

fn date_to_days(d: Date) -> i64 {
    i64::from(d.to_julian_day()) - UNIX_EPOCH_JULIAN_DAY
}

fn days_to_date(days: i64) -> Result<Date, String> {
    i32::try_from(days + UNIX_EPOCH_JULIAN_DAY)
        .ok()
        .and_then(|j| Date::from_julian_day(j).ok())
        .ok_or_else(|| format!("day {days} is out of the supported date range"))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`]: (year, month 1–12, day 1–31).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Monday = 0 … Sunday = 6; 1970-01-01 was a Thursday.
fn weekday_from_monday(days: i64) -> i64 {
    (days + 3).rem_euclid(7)
}

/// Day number of the Monday of ISO week `w` of ISO week-year `y`.
fn iso_week_start_days(y: i64, w: i64) -> i64 {
    // Week 1 is the week that holds 4 January.
    let jan4 = days_from_civil(y, 1, 4);
    jan4 - weekday_from_monday(jan4) + (w - 1) * 7
}

/// (ISO week-year, ISO week) of a day: the week-year is the year of the week's Thursday.
fn iso_week_of_days(days: i64) -> (i64, u32) {
    let thursday = days - weekday_from_monday(days) + 3;
    let (year, _, _) = civil_from_days(thursday);
    let week = (thursday - days_from_civil(year, 1, 1)) / 7 + 1;
    (year, week as u32)
}

fn weeks_in_iso_year(y: i64) -> i64 {
    // 28 December always lies in the last ISO week of its year.
    i64::from(iso_week_of_days(days_from_civil(y, 12, 28)).1)
}

#[cfg(test)]
#[path = "time_tests.rs"]
mod tests;
