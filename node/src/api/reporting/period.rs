//! Reporting periods (months, quarters, years) in Vietnam civil time (UTC+07:00, no daylight
//! saving), written as the dataset time module writes them: `2026-03`, `2026-Q1`, `2026`. A
//! period's deadline is a number of days after its end.

use std::fmt;

/// Vietnam is UTC+07:00 all year.
const VIETNAM_OFFSET_MS: i64 = 7 * 3_600_000;
const DAY_MS: i64 = 86_400_000;
/// Years a period may name (keeps the arithmetic far from any overflow).
const YEAR_MIN: i32 = 1970;
const YEAR_MAX: i32 = 9999;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeriodType {
    Month,
    Quarter,
    Year,
}

impl PeriodType {
    pub fn parse(s: &str) -> Option<PeriodType> {
        Some(match s {
            "month" => PeriodType::Month,
            "quarter" => PeriodType::Quarter,
            "year" => PeriodType::Year,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            PeriodType::Month => "month",
            PeriodType::Quarter => "quarter",
            PeriodType::Year => "year",
        }
    }
    /// Periods per year.
    fn per_year(self) -> u32 {
        match self {
            PeriodType::Month => 12,
            PeriodType::Quarter => 4,
            PeriodType::Year => 1,
        }
    }
}

/// One period: its type, year and number within the year (1-based; 1 for a year).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Period {
    pub kind: PeriodType,
    pub year: i32,
    pub number: u32,
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PeriodType::Month => write!(f, "{:04}-{:02}", self.year, self.number),
            PeriodType::Quarter => write!(f, "{:04}-Q{}", self.year, self.number),
            PeriodType::Year => write!(f, "{:04}", self.year),
        }
    }
}

impl Period {
    /// Parses the text of a period of type `kind`; None when it is not one.
    pub fn parse(kind: PeriodType, text: &str) -> Option<Period> {
        let (year, rest) = match text.split_once('-') {
            Some((y, r)) => (y, Some(r)),
            None => (text, None),
        };
        if year.len() != 4 || !year.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let year: i32 = year.parse().ok()?;
        let number = match (kind, rest) {
            (PeriodType::Year, None) => 1,
            (PeriodType::Month, Some(m)) if m.len() == 2 && m.bytes().all(|b| b.is_ascii_digit()) => m.parse().ok()?,
            (PeriodType::Quarter, Some(q)) => {
                let n = q.strip_prefix('Q')?;
                if n.len() != 1 {
                    return None;
                }
                n.parse().ok()?
            }
            _ => return None,
        };
        let p = Period { kind, year, number };
        p.valid().then_some(p)
    }

    fn valid(&self) -> bool {
        (YEAR_MIN..=YEAR_MAX).contains(&self.year) && (1..=self.kind.per_year()).contains(&self.number)
    }

    /// The period that contains the instant `ms` (milliseconds since the Unix epoch).
    pub fn containing(kind: PeriodType, ms: u64) -> Period {
        let local_days = (ms as i64 + VIETNAM_OFFSET_MS).div_euclid(DAY_MS);
        let (year, month, _) = civil_from_days(local_days);
        let year = year.clamp(YEAR_MIN, YEAR_MAX);
        let number = match kind {
            PeriodType::Month => month,
            PeriodType::Quarter => (month - 1) / 3 + 1,
            PeriodType::Year => 1,
        };
        Period { kind, year, number }
    }

    #[cfg(test)]
    pub fn next(&self) -> Period {
        if self.number < self.kind.per_year() {
            Period { number: self.number + 1, ..*self }
        } else {
            Period { year: (self.year + 1).min(YEAR_MAX), number: 1, ..*self }
        }
    }

    pub fn prev(&self) -> Period {
        if self.number > 1 {
            Period { number: self.number - 1, ..*self }
        } else {
            Period { year: (self.year - 1).max(YEAR_MIN), number: self.kind.per_year(), ..*self }
        }
    }

    fn first_month(&self) -> u32 {
        match self.kind {
            PeriodType::Month => self.number,
            PeriodType::Quarter => (self.number - 1) * 3 + 1,
            PeriodType::Year => 1,
        }
    }

    /// The first instant of the period (midnight Vietnam time of its first day).
    pub fn start_ms(&self) -> u64 {
        let days = days_from_civil(self.year, self.first_month(), 1);
        (days * DAY_MS - VIETNAM_OFFSET_MS).max(0) as u64
    }

    /// The first instant after the period.
    pub fn end_ms(&self) -> u64 {
        let (year, month) = match self.kind {
            PeriodType::Month if self.number == 12 => (self.year + 1, 1),
            PeriodType::Month => (self.year, self.number + 1),
            PeriodType::Quarter if self.number == 4 => (self.year + 1, 1),
            PeriodType::Quarter => (self.year, self.first_month() + 3),
            PeriodType::Year => (self.year + 1, 1),
        };
        (days_from_civil(year, month, 1) * DAY_MS - VIETNAM_OFFSET_MS).max(0) as u64
    }

    /// The deadline: `deadline_days` whole days after the period's end.
    pub fn deadline_ms(&self, deadline_days: u32) -> u64 {
        self.end_ms().saturating_add(u64::from(deadline_days) * DAY_MS as u64)
    }
}

/// Days since 1970-01-01 of a date (`dtm_dataset::days_from_civil`, for this module's `i32` years).
fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    dtm_dataset::days_from_civil(i64::from(y), m, d)
}

/// The date of a day number, with the year in this module's `i32`.
fn civil_from_days(z: i64) -> (i32, u32, u32) {
    let (y, m, d) = dtm_dataset::civil_from_days(z);
    (y.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_parse_and_print_as_the_time_module_writes_them() {
        for (kind, text) in
            [(PeriodType::Month, "2026-03"), (PeriodType::Quarter, "2026-Q4"), (PeriodType::Year, "2026")]
        {
            assert_eq!(Period::parse(kind, text).map(|p| p.to_string()).as_deref(), Some(text));
        }
        for (kind, text) in [
            (PeriodType::Month, "2026-13"),
            (PeriodType::Month, "2026-3"),
            (PeriodType::Quarter, "2026-Q5"),
            (PeriodType::Quarter, "2026-03"),
            (PeriodType::Year, "2026-01"),
            (PeriodType::Year, "26"),
        ] {
            assert_eq!(Period::parse(kind, text), None, "{text}");
        }
    }

    #[test]
    fn periods_are_in_vietnam_time() {
        // 2026-03-31T17:00:00Z is 2026-04-01T00:00:00+07:00: already April in Vietnam.
        let april_start = 1_774_976_400_000;
        assert_eq!(Period::containing(PeriodType::Month, april_start).to_string(), "2026-04");
        assert_eq!(Period::containing(PeriodType::Month, april_start - 1).to_string(), "2026-03");
        let march = Period::parse(PeriodType::Month, "2026-03").unwrap();
        assert_eq!(march.end_ms(), april_start);
        assert_eq!(march.next().start_ms(), april_start);
        assert_eq!(march.deadline_ms(15), april_start + 15 * 86_400_000);
        let q1 = Period::parse(PeriodType::Quarter, "2026-Q1").unwrap();
        assert_eq!(q1.end_ms(), april_start);
        assert_eq!(Period::containing(PeriodType::Quarter, april_start).to_string(), "2026-Q2");
        assert_eq!(Period::parse(PeriodType::Month, "2026-01").unwrap().prev().to_string(), "2025-12");
        assert_eq!(Period::parse(PeriodType::Quarter, "2026-Q4").unwrap().next().to_string(), "2027-Q1");
        assert_eq!(Period::parse(PeriodType::Year, "2026").unwrap().end_ms(), 1_798_736_400_000);
    }
}
