//! Civil dates, billing periods (calendar months) and the site's time zone, without a time-zone
//! database: `UTC`, or the EU central time of most French workshops (CET/CEST, EU summer-time rule:
//! from the last Sunday of March 01:00 UTC to the last Sunday of October 01:00 UTC).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Days since 1970-01-01 of a civil date (proleptic Gregorian), after Howard Hinnant.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number (inverse of [`days_from_civil`]).
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A civil date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Date {
    /// Year.
    pub y: i32,
    /// Month, 1 to 12.
    pub m: u8,
    /// Day, 1 to 31.
    pub d: u8,
}

impl Date {
    /// Parses `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Result<Date, String> {
        let bad = || format!("{s:?} is not a date like \"2026-11-01\"");
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return Err(bad());
        }
        let y: i32 = s[0..4].parse().map_err(|_| bad())?;
        let m: u8 = s[5..7].parse().map_err(|_| bad())?;
        let d: u8 = s[8..10].parse().map_err(|_| bad())?;
        let date = Date { y, m, d };
        if !(1..=12).contains(&m) || d == 0 || Date::from_days(date.days()) != date {
            return Err(bad());
        }
        Ok(date)
    }

    /// Days since 1970-01-01.
    pub fn days(self) -> i64 {
        days_from_civil(i64::from(self.y), i64::from(self.m), i64::from(self.d))
    }

    /// The date of a day number.
    pub fn from_days(z: i64) -> Date {
        let (y, m, d) = civil_from_days(z);
        Date {
            y: i32::try_from(y).unwrap_or(i32::MAX),
            m: u8::try_from(m).unwrap_or(1),
            d: u8::try_from(d).unwrap_or(1),
        }
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.y, self.m, self.d)
    }
}

impl TryFrom<String> for Date {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Date::parse(&s)
    }
}

impl From<Date> for String {
    fn from(d: Date) -> String {
        d.to_string()
    }
}

/// The time zone that decides days (daily caps) and months (periods).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Zone {
    /// UTC.
    Utc,
    /// EU central time: UTC+1, UTC+2 in summer (Europe/Paris and its neighbours).
    #[default]
    EuCentral,
}

const CENTRAL: [&str; 10] = [
    "Europe/Paris",
    "Europe/Brussels",
    "Europe/Luxembourg",
    "Europe/Monaco",
    "Europe/Berlin",
    "Europe/Madrid",
    "Europe/Rome",
    "Europe/Amsterdam",
    "Europe/Zurich",
    "CET",
];

impl Zone {
    /// Parses `UTC` or an EU central-time zone name (`Europe/Paris`, `CET`...).
    pub fn parse(s: &str) -> Result<Zone, String> {
        if s == "UTC" {
            Ok(Zone::Utc)
        } else if CENTRAL.contains(&s) {
            Ok(Zone::EuCentral)
        } else {
            Err(format!(
                "time zone {s:?} is not supported; use \"UTC\" or one of {}",
                CENTRAL.join(", ")
            ))
        }
    }

    /// Offset from UTC at an instant, ms.
    pub fn offset_ms(self, utc_ms: i64) -> i64 {
        match self {
            Zone::Utc => 0,
            Zone::EuCentral => {
                let (y, _, _) = civil_from_days(utc_ms.div_euclid(86_400_000));
                let last_sunday = |m: i64| {
                    let last = days_from_civil(y, m, 31);
                    // 1970-01-01 was a Thursday: weekday 0 = Sunday at day 3.
                    last - (last + 4).rem_euclid(7)
                };
                let start = last_sunday(3) * 86_400_000 + 3_600_000;
                let end = last_sunday(10) * 86_400_000 + 3_600_000;
                if (start..end).contains(&utc_ms) {
                    7_200_000
                } else {
                    3_600_000
                }
            }
        }
    }

    /// The local date of an instant.
    pub fn date_of(self, utc_ms: u64) -> Date {
        let t = i64::try_from(utc_ms).unwrap_or(i64::MAX);
        Date::from_days((t + self.offset_ms(t)).div_euclid(86_400_000))
    }

    /// The instant (UTC ms) of local midnight starting `date`.
    pub fn midnight(self, date: Date) -> u64 {
        let local = date.days() * 86_400_000;
        // Midnight is never inside a summer-time switch (01:00 UTC), so one correction suffices.
        let guess = local - self.offset_ms(local);
        let t = local - self.offset_ms(guess);
        u64::try_from(t).unwrap_or(0)
    }
}

/// A billing period: one calendar month in the site's zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Period {
    /// Year.
    pub year: i32,
    /// Month, 1 to 12.
    pub month: u8,
}

impl Period {
    /// Parses `YYYY-MM`.
    pub fn parse(s: &str) -> Result<Period, String> {
        let d = Date::parse(&format!("{s}-01"))
            .map_err(|_| format!("{s:?} is not a month like \"2026-11\""))?;
        Ok(Period {
            year: d.y,
            month: d.m,
        })
    }

    /// The period holding a date.
    pub fn of(date: Date) -> Period {
        Period {
            year: date.y,
            month: date.m,
        }
    }

    /// First day.
    pub fn first_day(self) -> Date {
        Date {
            y: self.year,
            m: self.month,
            d: 1,
        }
    }

    /// The next period.
    pub fn next(self) -> Period {
        if self.month == 12 {
            Period {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Period {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// The previous period.
    pub fn prev(self) -> Period {
        if self.month == 1 {
            Period {
                year: self.year - 1,
                month: 12,
            }
        } else {
            Period {
                year: self.year,
                month: self.month - 1,
            }
        }
    }

    /// `[start, end)` in UTC ms.
    pub fn bounds(self, zone: Zone) -> (u64, u64) {
        (
            zone.midnight(self.first_day()),
            zone.midnight(self.next().first_day()),
        )
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl TryFrom<String> for Period {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Period::parse(&s)
    }
}

impl From<Period> for String {
    fn from(p: Period) -> String {
        p.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_periods() {
        assert_eq!(
            Date::parse("2024-02-29").map(|d| d.to_string()).as_deref(),
            Ok("2024-02-29")
        );
        assert!(Date::parse("2025-02-29").is_err());
        assert!(Date::parse("2025-13-01").is_err());
        let p = Period::parse("2026-12").expect("period");
        assert_eq!(p.next().to_string(), "2027-01");
        assert_eq!(p.next().prev(), p);
        // 2026-11-01 00:00 in Paris is 2026-10-31T23:00:00Z (winter time).
        assert_eq!(p.prev().bounds(Zone::EuCentral).0, 1_793_487_600_000);
        // 2026-07-01 00:00 in Paris is 2026-06-30T22:00:00Z (summer time).
        let july = Period::parse("2026-07").expect("period");
        assert_eq!(july.bounds(Zone::EuCentral).0, 1_782_856_800_000);
        assert_eq!(july.bounds(Zone::Utc).0, 1_782_864_000_000);
        // Summer time 2026: from 2026-03-29T01:00Z to 2026-10-25T01:00Z.
        assert_eq!(Zone::EuCentral.offset_ms(1_774_745_999_000), 3_600_000);
        assert_eq!(Zone::EuCentral.offset_ms(1_774_746_000_000), 7_200_000);
        assert_eq!(Zone::EuCentral.offset_ms(1_792_890_000_000), 3_600_000);
        assert_eq!(
            Zone::EuCentral.date_of(1_793_487_600_000).to_string(),
            "2026-11-01"
        );
        assert_eq!(
            Zone::EuCentral.date_of(1_793_487_599_999).to_string(),
            "2026-10-31"
        );
    }
}
