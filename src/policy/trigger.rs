//! When a policy runs: every `interval`, or at the times a five-field cron
//! expression names (minute hour day-of-month month day-of-week, in UTC).
//!
//! Pure time arithmetic; never sleeps and never reads a clock itself.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A policy's schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    Interval(Duration),
    Cron(Cron),
}

impl Trigger {
    /// The first time strictly after `after` that the policy should run.
    pub fn next_after(&self, after: SystemTime) -> SystemTime {
        match self {
            Trigger::Interval(d) => after + *d,
            Trigger::Cron(c) => c.next_after(after),
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Interval(d) => write!(f, "every {}", humantime::format_duration(*d)),
            Trigger::Cron(c) => write!(f, "cron \"{}\" (UTC)", c.text),
        }
    }
}

/// A parsed cron expression: the allowed values of each field as bit sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Both day fields restricted: a day matches if either does (cron's rule).
    either_day: bool,
}

const FIELDS: [(&str, u32, u32); 5] =
    [("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7)];

fn field(text: &str, name: &str, min: u32, max: u32) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().ok().filter(|&s| s > 0).ok_or(format!("bad step {s:?} in the {name} field"))?),
            None => (part, 1),
        };
        let number = |s: &str| {
            s.parse::<u32>().ok().filter(|v| (min..=max).contains(v)).ok_or(format!("{s:?} is out of range for the {name} field ({min}-{max})"))
        };
        let (lo, hi) = match range {
            "*" => (min, max),
            r => match r.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None if step > 1 => (number(r)?, max),
                None => {
                    let v = number(r)?;
                    (v, v)
                }
            },
        };
        if lo > hi {
            return Err(format!("range {range:?} runs backwards in the {name} field"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl std::str::FromStr for Cron {
    type Err = String;

    fn from_str(text: &str) -> Result<Cron, String> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(format!("expected 5 fields (minute hour day-of-month month day-of-week), found {}", parts.len()));
        }
        let mut sets = [0u64; 5];
        for (i, ((name, min, max), part)) in FIELDS.iter().zip(&parts).enumerate() {
            sets[i] = field(part, name, *min, *max)?;
        }
        // Sunday is 0 or 7.
        if sets[4] & (1 << 7) != 0 {
            sets[4] |= 1;
        }
        Ok(Cron {
            text: parts.join(" "),
            minutes: sets[0],
            hours: sets[1],
            days: sets[2],
            months: sets[3],
            weekdays: sets[4],
            either_day: parts[2] != "*" && parts[4] != "*",
        })
    }
}

/// Civil date from days since 1970-01-01 (proleptic Gregorian).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl Cron {
    fn day_matches(&self, days: i64) -> bool {
        let (_, month, day) = civil(days);
        let weekday = (days + 4).rem_euclid(7) as u32; // 1970-01-01 was a Thursday
        let dom = self.days & (1 << day) != 0;
        let dow = self.weekdays & (1 << weekday) != 0;
        self.months & (1 << month) != 0 && if self.either_day { dom || dow } else { dom && dow }
    }

    /// The first matching minute strictly after `after`.
    pub fn next_after(&self, after: SystemTime) -> SystemTime {
        let secs = after.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
        let mut minute = secs / 60 + 1;
        // Day by day, then hour by hour, then minute by minute: at most a few
        // thousand steps, and five years of days covers every satisfiable
        // expression (29 February included).
        let limit = minute + 5 * 366 * 24 * 60;
        while minute < limit {
            let days = minute.div_euclid(1440);
            if !self.day_matches(days) {
                minute = (days + 1) * 1440;
                continue;
            }
            let hour = (minute.rem_euclid(1440) / 60) as u32;
            if self.hours & (1 << hour) == 0 {
                minute = (minute / 60 + 1) * 60;
                continue;
            }
            if self.minutes & (1 << minute.rem_euclid(60)) != 0 {
                return UNIX_EPOCH + Duration::from_secs(minute as u64 * 60);
            }
            minute += 1;
        }
        // Unsatisfiable (e.g. 31 February): never.
        UNIX_EPOCH + Duration::from_secs(limit as u64 * 60 * 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_782), (2024, 2, 29));
    }

    #[test]
    fn every_six_hours() {
        let c: Cron = "0 */6 * * *".parse().unwrap();
        // 2024-02-29 01:30:00 UTC → 06:00
        assert_eq!(c.next_after(at(1_709_170_200)), at(1_709_186_400));
        // exactly 06:00 → 12:00 (strictly after)
        assert_eq!(c.next_after(at(1_709_186_400)), at(1_709_208_000));
    }

    #[test]
    fn weekdays_and_lists() {
        // Mondays at 03:15; 2024-02-29 was a Thursday → Monday 2024-03-04 03:15.
        let c: Cron = "15 3 * * 1".parse().unwrap();
        assert_eq!(c.next_after(at(1_709_170_200)), at(1_709_522_100));
        let c: Cron = "0,30 * * * 7".parse().unwrap();
        assert!(c.weekdays & 1 != 0, "7 is Sunday too");
    }

    #[test]
    fn bad_expressions_say_why() {
        assert!("* * *".parse::<Cron>().unwrap_err().contains("5 fields"));
        assert!("61 * * * *".parse::<Cron>().unwrap_err().contains("minute field"));
        assert!("* 5-2 * * *".parse::<Cron>().unwrap_err().contains("backwards"));
        assert!("*/0 * * * *".parse::<Cron>().unwrap_err().contains("step"));
    }
}
