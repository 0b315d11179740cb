//! When scheduled tasks fire: intervals and 5-field cron patterns in an IANA time zone.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, LocalResult, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use tlo_core::{Error, Result};

/// Most missed slots fired at once under [`MisfirePolicy::FireAll`].
pub const MAX_CATCH_UP: usize = 100;

/// What to do with slots missed while no scheduler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MisfirePolicy {
    /// Fire once, for the latest missed slot.
    #[default]
    FireOnce,
    /// Fire nothing for missed slots; wait for the next one.
    Skip,
    /// Fire every missed slot (the latest [`MAX_CATCH_UP`]).
    FireAll,
}

impl FromStr for MisfirePolicy {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "fire_once" => Ok(MisfirePolicy::FireOnce),
            "skip" => Ok(MisfirePolicy::Skip),
            "fire_all" => Ok(MisfirePolicy::FireAll),
            _ => Err(Error::InvalidSchedule {
                schedule: text.into(),
                message: "misfire policy must be one of fire_once, skip, fire_all".into(),
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Interval(Duration),
    Cron {
        cron: Box<Cron>,
        pattern: String,
        zone: Tz,
    },
}

/// When a scheduled task fires.
///
/// ```
/// use std::time::Duration;
/// use tlo::{MisfirePolicy, Schedule};
/// let every = Schedule::every(Duration::from_secs(300)).unwrap();
/// assert_eq!(every.describe(), "every 300s");
/// let nightly = Schedule::cron_in("0 3 * * *", "Europe/Kyiv").unwrap().misfire(MisfirePolicy::Skip);
/// assert!(Schedule::cron("0 3 * *").is_err());
/// assert!(Schedule::cron_in("0 3 * * *", "Mars/Base").is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    kind: Kind,
    misfire: MisfirePolicy,
    allow_overlap: bool,
    fire_on_start: bool,
}

/// What one scheduler tick should do for one schedule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlotDecision {
    /// Slots to fire now, oldest first (each claimed in the store before its job is enqueued).
    pub fire: Vec<DateTime<Utc>>,
    /// A slot to record as passed without firing (misfire `Skip`).
    pub skip_to: Option<DateTime<Utc>>,
    /// The next slot after these.
    pub next: Option<DateTime<Utc>>,
}

impl Schedule {
    /// Every `interval`; fires on the first tick when it never ran.
    pub fn every(interval: Duration) -> Result<Schedule> {
        if interval.is_zero() {
            return Err(Error::InvalidSchedule {
                schedule: format!("{interval:?}"),
                message: "interval must be positive".into(),
            });
        }
        Ok(Schedule {
            kind: Kind::Interval(interval),
            misfire: MisfirePolicy::default(),
            allow_overlap: false,
            fire_on_start: true,
        })
    }

    /// A 5-field cron pattern in UTC.
    pub fn cron(pattern: &str) -> Result<Schedule> {
        Self::cron_in(pattern, "UTC")
    }

    /// A 5-field cron pattern evaluated in the IANA `time_zone` (e.g. `Europe/Kyiv`).
    pub fn cron_in(pattern: &str, time_zone: &str) -> Result<Schedule> {
        let zone: Tz = time_zone.parse().map_err(|_| Error::InvalidSchedule {
            schedule: pattern.into(),
            message: format!("unknown time zone `{time_zone}`"),
        })?;
        let fields = pattern.split_whitespace().count();
        if fields != 5 && !pattern.trim_start().starts_with('@') {
            return Err(Error::InvalidSchedule {
                schedule: pattern.into(),
                message: format!(
                    "expected 5 fields (minute hour day month weekday), found {fields}"
                ),
            });
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|err| Error::InvalidSchedule {
                schedule: pattern.into(),
                message: err.to_string(),
            })?;
        Ok(Schedule {
            kind: Kind::Cron {
                cron: Box::new(cron),
                pattern: pattern.trim().into(),
                zone,
            },
            misfire: MisfirePolicy::default(),
            allow_overlap: false,
            fire_on_start: false,
        })
    }

    /// Parses `"30s"`, `"5m"`, `"2h30m"`, `"500ms"`, `"1d"`; a plain number is seconds.
    pub fn parse_interval(text: &str) -> Result<Duration> {
        let bad = |message: &str| Error::InvalidSchedule {
            schedule: text.into(),
            message: message.into(),
        };
        let trimmed = text.trim();
        if let Ok(secs) = trimmed.parse::<f64>() {
            return if secs.is_finite() && secs > 0.0 {
                Ok(Duration::from_secs_f64(secs))
            } else {
                Err(bad("interval must be positive"))
            };
        }
        let mut total = Duration::ZERO;
        let mut rest = trimmed;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| bad("missing unit (ms, s, m, h, d)"))?;
            let value: f64 = rest[..digits]
                .parse()
                .map_err(|_| bad("expected a number before each unit, e.g. 1h30m"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = match &rest[..unit_len] {
                "ms" => 0.001,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                "d" => 86_400.0,
                other => return Err(bad(&format!("unknown unit `{other}` (use ms, s, m, h, d)"))),
            };
            total += Duration::from_secs_f64(value * unit);
            rest = &rest[unit_len..];
        }
        if total.is_zero() {
            return Err(bad("interval must be positive"));
        }
        Ok(total)
    }

    /// Sets the misfire policy.
    pub fn misfire(mut self, policy: MisfirePolicy) -> Self {
        self.misfire = policy;
        self
    }
    /// Allows a new run while the previous one is still active (default: no).
    pub fn allow_overlap(mut self, allow: bool) -> Self {
        self.allow_overlap = allow;
        self
    }
    /// Fires on the first tick when the task never ran (default: yes for intervals, no for cron).
    pub fn fire_on_start(mut self, fire: bool) -> Self {
        self.fire_on_start = fire;
        self
    }
    /// Whether a run may start while the previous one is active.
    pub fn overlap_allowed(&self) -> bool {
        self.allow_overlap
    }
    /// The misfire policy.
    pub fn misfire_policy(&self) -> MisfirePolicy {
        self.misfire
    }
    /// Whether a never-run task fires on the first tick.
    pub fn fires_on_start(&self) -> bool {
        self.fire_on_start
    }

    /// A short human description.
    pub fn describe(&self) -> String {
        self.to_string()
    }

    /// The first slot strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Interval(interval) => Some(after + *interval),
            Kind::Cron { cron, zone, .. } => {
                let mut from = after.with_timezone(zone);
                for _ in 0..4 {
                    let next = cron.find_next_occurrence(&from, false).ok()?;
                    // In the fall-back hour a wall-clock time happens twice: fire at the first.
                    if let LocalResult::Ambiguous(_, later) =
                        zone.from_local_datetime(&next.naive_local())
                    {
                        if next == later {
                            from = next;
                            continue;
                        }
                    }
                    return Some(next.with_timezone(&Utc));
                }
                None
            }
        }
    }

    /// The decision for one tick: `last_slot` is the last slot recorded (fired or skipped),
    /// `first_seen` when this scheduler first saw the schedule.
    pub fn due(
        &self,
        last_slot: Option<DateTime<Utc>>,
        first_seen: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> SlotDecision {
        let start = match last_slot {
            None if self.fire_on_start => {
                return SlotDecision {
                    fire: vec![now],
                    skip_to: None,
                    next: self.next_after(now),
                };
            }
            None => match &self.kind {
                // The first interval slot is one interval after the scheduler started.
                Kind::Interval(_) => first_seen,
                Kind::Cron { .. } => first_seen - chrono::Duration::seconds(1),
            },
            Some(last) => last,
        };
        let (missed, count) = self.slots_between(start, now);
        let mut decision = SlotDecision::default();
        let Some(&latest) = missed.last() else {
            decision.next = self.next_after(start);
            return decision;
        };
        match (count, self.misfire) {
            (1, _) | (_, MisfirePolicy::FireOnce) => decision.fire = vec![latest],
            (_, MisfirePolicy::Skip) => decision.skip_to = Some(latest),
            (_, MisfirePolicy::FireAll) => decision.fire = missed,
        }
        decision.next = self.next_after(latest);
        decision
    }

    /// Slots in `(start, now]`: the latest [`MAX_CATCH_UP`] of them and how many there are.
    fn slots_between(
        &self,
        start: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> (Vec<DateTime<Utc>>, usize) {
        match &self.kind {
            Kind::Interval(interval) => {
                let step = chrono::Duration::from_std(*interval).unwrap_or(chrono::Duration::MAX);
                let elapsed = now - start;
                if elapsed < step {
                    return (Vec::new(), 0);
                }
                let step_us = step.num_microseconds().unwrap_or(i64::MAX).max(1);
                let count = (elapsed.num_microseconds().unwrap_or(i64::MAX) / step_us) as usize;
                let first = count.saturating_sub(MAX_CATCH_UP) + 1;
                let slots = (first..=count)
                    .map(|k| start + chrono::Duration::microseconds(step_us * k as i64))
                    .collect();
                (slots, count)
            }
            Kind::Cron { .. } => {
                let mut slots = std::collections::VecDeque::new();
                let mut count = 0;
                let mut cursor = start;
                while let Some(next) = self.next_after(cursor).filter(|n| *n <= now) {
                    count += 1;
                    if slots.len() == MAX_CATCH_UP {
                        slots.pop_front();
                    }
                    slots.push_back(next);
                    cursor = next;
                    if count > 100_000 {
                        break; // a minutely pattern after months of downtime: enough is known
                    }
                }
                (slots.into(), count)
            }
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Interval(interval) => write!(f, "every {}s", interval.as_secs_f64()),
            Kind::Cron { pattern, zone, .. } => write!(f, "cron `{pattern}` ({zone})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn interval_fires_on_first_tick_then_every_interval() {
        let s = Schedule::every(Duration::from_secs(60)).unwrap();
        let now = utc(2026, 1, 1, 0, 0);
        assert_eq!(s.due(None, now, now).fire, vec![now]);
        assert!(
            s.due(Some(now), now, now + chrono::Duration::seconds(59))
                .fire
                .is_empty()
        );
        let later = now + chrono::Duration::seconds(61);
        assert_eq!(
            s.due(Some(now), now, later).fire,
            vec![now + chrono::Duration::seconds(60)]
        );
    }

    #[test]
    fn interval_misfire_policies() {
        let base = Schedule::every(Duration::from_secs(60)).unwrap();
        let last = utc(2026, 1, 1, 0, 0);
        let now = last + chrono::Duration::seconds(60 * 5 + 10);
        let once = base.clone().due(Some(last), last, now);
        assert_eq!(once.fire, vec![last + chrono::Duration::seconds(300)]);
        let skip = base
            .clone()
            .misfire(MisfirePolicy::Skip)
            .due(Some(last), last, now);
        assert!(skip.fire.is_empty());
        assert_eq!(skip.skip_to, Some(last + chrono::Duration::seconds(300)));
        assert_eq!(skip.next, Some(last + chrono::Duration::seconds(360)));
        let all = base
            .clone()
            .misfire(MisfirePolicy::FireAll)
            .due(Some(last), last, now);
        assert_eq!(all.fire.len(), 5);
        let long = base.misfire(MisfirePolicy::FireAll).due(
            Some(last),
            last,
            last + chrono::Duration::days(1),
        );
        assert_eq!(long.fire.len(), MAX_CATCH_UP);
    }

    #[test]
    fn cron_waits_for_its_slot_and_fires_once_per_slot() {
        let s = Schedule::cron("*/15 * * * *").unwrap();
        let start = utc(2026, 1, 1, 0, 1);
        assert!(s.due(None, start, start).fire.is_empty());
        let now = utc(2026, 1, 1, 0, 16);
        assert_eq!(s.due(None, start, now).fire, vec![utc(2026, 1, 1, 0, 15)]);
        assert!(
            s.due(Some(utc(2026, 1, 1, 0, 15)), start, now)
                .fire
                .is_empty()
        );
        let missed = s.clone().misfire(MisfirePolicy::FireAll).due(
            Some(utc(2026, 1, 1, 0, 15)),
            start,
            utc(2026, 1, 1, 1, 0),
        );
        assert_eq!(missed.fire.len(), 3);
        let skipped = s.misfire(MisfirePolicy::Skip).due(
            Some(utc(2026, 1, 1, 0, 15)),
            start,
            utc(2026, 1, 1, 1, 0),
        );
        assert_eq!(skipped.skip_to, Some(utc(2026, 1, 1, 1, 0)));
    }

    /// Daily slots between two instants, in UTC.
    fn daily(s: &Schedule, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut cursor = from;
        while let Some(next) = s.next_after(cursor).filter(|n| *n <= to) {
            out.push(next);
            cursor = next;
        }
        out
    }

    #[test]
    fn spring_forward_does_not_skip_the_day() {
        // 2026-03-08 02:00 -> 03:00 in New York: 02:30 does not exist that day.
        let s = Schedule::cron_in("30 2 * * *", "America/New_York").unwrap();
        let runs = daily(&s, utc(2026, 3, 6, 12, 0), utc(2026, 3, 10, 12, 0));
        assert_eq!(runs.len(), 4, "{runs:?}");
        let days: Vec<_> = runs
            .iter()
            .map(|r| r.with_timezone(&chrono_tz::America::New_York).date_naive())
            .collect();
        let mut unique = days.clone();
        unique.dedup();
        assert_eq!(days, unique, "one run per local day");
    }

    #[test]
    fn fall_back_does_not_fire_twice() {
        // 2026-11-01 02:00 -> 01:00 in New York: 01:30 happens twice.
        let s = Schedule::cron_in("30 1 * * *", "America/New_York").unwrap();
        let runs = daily(&s, utc(2026, 10, 30, 12, 0), utc(2026, 11, 3, 12, 0));
        assert_eq!(runs.len(), 4, "{runs:?}");
        let kyiv = Schedule::cron_in("30 3 * * *", "Europe/Kyiv").unwrap();
        // Kyiv falls back on 2026-10-25 04:00 -> 03:00.
        let runs = daily(&kyiv, utc(2026, 10, 23, 12, 0), utc(2026, 10, 27, 12, 0));
        assert_eq!(runs.len(), 4, "{runs:?}");
    }

    #[test]
    fn invalid_schedules_are_refused() {
        assert!(Schedule::cron("61 * * * *").is_err());
        assert!(Schedule::cron("0 0 * * * *").is_err(), "6 fields");
        assert!(Schedule::cron("bogus").is_err());
        let err = Schedule::cron_in("0 3 * * *", "Mars/Base").unwrap_err();
        assert!(err.to_string().contains("Mars/Base"));
        assert!(Schedule::every(Duration::ZERO).is_err());
    }

    #[test]
    fn intervals_parse_with_units() {
        let p = |t| Schedule::parse_interval(t).unwrap();
        assert_eq!(p("30s"), Duration::from_secs(30));
        assert_eq!(p("5m"), Duration::from_secs(300));
        assert_eq!(p("2h30m"), Duration::from_secs(9000));
        assert_eq!(p("500ms"), Duration::from_millis(500));
        assert_eq!(p("1d"), Duration::from_secs(86_400));
        assert_eq!(p("1.5"), Duration::from_millis(1500));
        for bad in ["", "5x", "m", "0s", "-1"] {
            assert!(Schedule::parse_interval(bad).is_err(), "{bad}");
        }
        assert_eq!(
            "skip".parse::<MisfirePolicy>().unwrap(),
            MisfirePolicy::Skip
        );
        assert!(
            "later"
                .parse::<MisfirePolicy>()
                .unwrap_err()
                .to_string()
                .contains("fire_once")
        );
    }
}
