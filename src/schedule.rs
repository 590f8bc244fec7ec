//! Schedules: when an instance is due, when it is overdue, and in which order due instances run.
//!
//! Pure functions of a time source, so tests drive them with a fake clock. Cron expressions are POSIX
//! five-field (`min hour day-of-month month day-of-week`), or six-field with a leading seconds field, parsed
//! and evaluated by the `croner` crate in the host's local time zone. Rules (issue "Instances"):
//! - an instance is due when the first schedule slot after its latest snapshot (or, with none, after it was
//!   created) has passed;
//! - it is overdue when a further slot plus a grace period has passed too, or when its last run failed;
//! - a run missed while the host was down is run once, not once per missed slot (due is a yes/no question);
//! - paused and manual instances are never due;
//! - a snapshot dated more than [`FUTURE_TOLERANCE_MINUTES`] after now (a `--force-time` typo, a skewed
//!   clock) is not trusted: it neither makes an instance look up to date nor postpones its next slot, until
//!   the clock reaches it;
//! - a schedule must fire within [`FIRE_HORIZON_YEARS`] (`0 0 31 2 *` never does; Feb 29 does, at most
//!   eight years apart across a non-leap century year);
//! - slots are whole seconds.

use std::str::FromStr;

use chrono::{DateTime, Duration, FixedOffset, Local, SubsecRound, TimeZone, Utc};
use croner::Cron;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How urgently an instance is backed up; also picks default schedule and retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    Medium,
    Low,
    Manual,
}

impl FromStr for Priority {
    type Err = Error;
    fn from_str(s: &str) -> Result<Priority> {
        match s {
            "high" => Ok(Priority::High),
            "medium" => Ok(Priority::Medium),
            "low" => Ok(Priority::Low),
            "manual" => Ok(Priority::Manual),
            _ => Err(Error::Invalid(format!(
                "priority {s:?}: want high, medium, low or manual"
            ))),
        }
    }
}

impl Priority {
    pub fn as_str(&self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
            Priority::Manual => "manual",
        }
    }

    /// The preset schedule: daily at 02:00 for high/medium, weekly on Sunday for low, none for manual.
    pub fn default_schedule(&self) -> Option<&'static str> {
        match self {
            Priority::High | Priority::Medium => Some("0 2 * * *"),
            Priority::Low => Some("0 3 * * 0"),
            Priority::Manual => None,
        }
    }

    /// The preset retention, as `forget` options: high keeps 30 daily snapshots plus 8 weekly and 6 monthly
    /// tiers; medium keeps 14 daily plus 4 weekly; low keeps everything from the last 7 days and at least the
    /// latest one; manual keeps the last 10.
    pub fn default_retention(&self) -> Retention {
        let mut r = Retention::default();
        match self {
            Priority::High => {
                r.daily = Some(30);
                r.weekly = Some(8);
                r.monthly = Some(6);
            }
            Priority::Medium => {
                r.daily = Some(14);
                r.weekly = Some(4);
            }
            Priority::Low => {
                r.within = Some("7d".into());
                r.last = Some(1);
            }
            Priority::Manual => r.last = Some(10),
        }
        r
    }
}

/// A retention policy as stored with an instance (the `--keep-*` options of `forget`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yearly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<String>,
}

impl Retention {
    /// The `forget` policy these rules describe, also keeping snapshots with any of `keep_tags`.
    pub fn policy(&self, keep_tags: Vec<String>) -> Result<crate::retention::KeepPolicy> {
        Ok(crate::retention::KeepPolicy {
            last: self.last,
            hourly: self.hourly,
            daily: self.daily,
            weekly: self.weekly,
            monthly: self.monthly,
            yearly: self.yearly,
            within: self.within.as_deref().map(str::parse).transpose()?,
            tags: keep_tags,
        })
    }

    /// Refuses rules that cannot be applied after a scheduled backup: a `within` that does not parse, and
    /// rules that keep no snapshot (all zero), which would forget every snapshot, the new one included.
    pub fn validate(&self) -> Result<()> {
        let policy = self.policy(Vec::new())?;
        if !policy.is_empty() && policy.keeps_nothing() {
            return Err(Error::Invalid(
                "retention keeps no snapshot (every --keep-* rule is 0): each scheduled run would forget \
                 every backup, the new one included; give at least one rule above 0"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// A validated cron schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    cron: Cron,
}

impl Schedule {
    /// Parses a five-field cron expression (or six, with seconds first).
    pub fn parse(expr: &str) -> Result<Schedule> {
        if !(5..=6).contains(&expr.split_whitespace().count()) {
            return Err(Error::Invalid(format!(
                "schedule {expr:?}: want five cron fields (minute hour day-of-month month day-of-week), or six with seconds first"
            )));
        }
        let cron =
            Cron::from_str(expr).map_err(|e| Error::Invalid(format!("schedule {expr:?}: {e}")))?;
        Ok(Schedule {
            expr: expr.to_string(),
            cron,
        })
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The first slot strictly after `t`, evaluated in local time, in whole seconds.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = Local.from_utc_datetime(&t.trunc_subsecs(0).naive_utc());
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|d| d.with_timezone(&Utc).trunc_subsecs(0))
    }

    /// Refuses a schedule with no slot within [`FIRE_HORIZON_YEARS`] of `now` (it would never run).
    pub fn check_fires(&self, now: DateTime<Utc>) -> Result<()> {
        let horizon = now + Duration::days(366 * FIRE_HORIZON_YEARS);
        match self.next_after(now) {
            Some(next) if next <= horizon => Ok(()),
            _ => Err(Error::Invalid(format!(
                "schedule {:?} never fires (no slot within {FIRE_HORIZON_YEARS} years)",
                self.expr
            ))),
        }
    }
}

/// A schedule must fire within this many years: Feb 29 schedules fire every four years, eight across a
/// non-leap century year (2096 to 2104).
pub const FIRE_HORIZON_YEARS: i64 = 9;

/// How far after now a snapshot time may lie and still be trusted (clock skew between hosts). A later one is
/// refused by `--time` unless `--force-time`, and ignored by scheduling, `health` and `latest`.
pub const FUTURE_TOLERANCE_MINUTES: i64 = 5;

/// Whether `t` is dated in the future: more than [`FUTURE_TOLERANCE_MINUTES`] after `now`.
pub fn is_future(t: DateTime<FixedOffset>, now: DateTime<Utc>) -> bool {
    t.with_timezone(&Utc) > now + Duration::minutes(FUTURE_TOLERANCE_MINUTES)
}

/// Refuses a snapshot time dated in the future unless `force`.
pub fn check_snapshot_time(
    t: DateTime<FixedOffset>,
    now: DateTime<Utc>,
    force: bool,
) -> Result<()> {
    if force || !is_future(t, now) {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "--time {} is in the future (more than {FUTURE_TOLERANCE_MINUTES} minutes after now, {}): such a \
         snapshot would be ignored by scheduling, health and `latest`; pass --force-time to store it anyway",
        t.to_rfc3339(),
        now.trunc_subsecs(0).to_rfc3339()
    )))
}

/// What the scheduler needs to know about one instance.
#[derive(Debug, Clone)]
pub struct ScheduleState {
    pub name: String,
    pub priority: Priority,
    pub schedule: Option<Schedule>,
    pub paused: bool,
    pub created: DateTime<Utc>,
    /// The newest snapshot not dated in the future.
    pub last_snapshot: Option<DateTime<Utc>>,
    /// Snapshots dated in the future, ignored by the rules above.
    pub future_snapshots: usize,
    pub last_run_failed: bool,
}

impl ScheduleState {
    /// The slot the next run is for: the first one after the latest snapshot (or creation).
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        if self.paused || self.priority == Priority::Manual {
            return None;
        }
        self.schedule
            .as_ref()?
            .next_after(self.last_snapshot.unwrap_or(self.created))
    }

    /// Due: that slot has passed.
    pub fn is_due(&self, now: DateTime<Utc>) -> bool {
        self.next_due().is_some_and(|slot| slot <= now)
    }

    /// Overdue: the last run failed, or the slot after the due one has passed, plus `grace`.
    pub fn is_overdue(&self, now: DateTime<Utc>, grace: Duration) -> bool {
        if self.paused || self.priority == Priority::Manual {
            return false;
        }
        if self.last_run_failed {
            return true;
        }
        let Some(due) = self.next_due() else {
            return false;
        };
        let further = self.schedule.as_ref().and_then(|s| s.next_after(due));
        further.is_some_and(|f| f + grace <= now)
    }
}

/// The instances to run now, in run order: due ones, highest priority first, then the longest waiting.
pub fn due_in_order(states: &[ScheduleState], now: DateTime<Utc>) -> Vec<String> {
    let mut due: Vec<&ScheduleState> = states.iter().filter(|s| s.is_due(now)).collect();
    due.sort_by_key(|s| (s.priority, s.next_due(), s.name.clone()));
    due.into_iter().map(|s| s.name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        // Tests run with TZ unset or UTC in CI; express times in UTC and use schedules that are
        // offset-independent where it matters (every hour / every 10 minutes).
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn state(name: &str, prio: Priority, expr: &str, last: Option<&str>) -> ScheduleState {
        ScheduleState {
            name: name.into(),
            priority: prio,
            schedule: Some(Schedule::parse(expr).unwrap()),
            paused: false,
            created: at("2026-01-01T00:00:00Z"),
            last_snapshot: last.map(at),
            future_snapshots: 0,
            last_run_failed: false,
        }
    }

    #[test]
    fn never_firing_schedules_are_refused_rare_ones_accepted() {
        let now = at("2097-03-01T00:00:00Z"); // the next Feb 29 is in 2104
        for never in ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4 *", "0 0 31 6,9,11 *"] {
            let s = Schedule::parse(never).unwrap();
            assert!(s.check_fires(now).is_err(), "{never}");
        }
        for rare in ["0 0 29 2 *", "0 0 31 1,2 *", "0 3 1 1 *"] {
            Schedule::parse(rare).unwrap().check_fires(now).unwrap();
        }
    }

    #[test]
    fn slots_are_whole_seconds_and_future_times_are_refused_unless_forced() {
        let s = Schedule::parse("*/10 * * * *").unwrap();
        let t = at("2026-03-01T10:03:07.123456789Z");
        assert_eq!(s.next_after(t), Some(at("2026-03-01T10:10:00Z")));
        let now = at("2026-03-01T10:00:00Z");
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap();
        assert!(check_snapshot_time(t("2026-03-01T10:05:00Z"), now, false).is_ok());
        assert!(check_snapshot_time(t("2026-03-01T10:05:01Z"), now, false).is_err());
        assert!(check_snapshot_time(t("2262-04-12T00:00:00Z"), now, true).is_ok());
    }

    #[test]
    fn bad_expressions_are_rejected() {
        for bad in ["", "* * *", "61 * * * *", "* * * * * * *", "a b c d e"] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Schedule::parse("*/10 * * * *").is_ok());
    }

    #[test]
    fn due_after_the_next_slot_passes() {
        let s = state(
            "a",
            Priority::High,
            "0 * * * *",
            Some("2026-03-01T10:30:00Z"),
        );
        assert!(!s.is_due(at("2026-03-01T10:59:00Z")));
        assert!(s.is_due(at("2026-03-01T11:00:00Z")));
    }

    #[test]
    fn downtime_yields_one_run_not_one_per_missed_slot() {
        let mut s = state(
            "a",
            Priority::High,
            "0 * * * *",
            Some("2026-03-01T10:30:00Z"),
        );
        let now = at("2026-03-02T10:00:00Z"); // 23 slots missed
        assert_eq!(due_in_order(std::slice::from_ref(&s), now), vec!["a"]);
        s.last_snapshot = Some(now);
        assert!(due_in_order(&[s], now).is_empty());
    }

    #[test]
    fn paused_and_manual_are_never_due_nor_overdue() {
        let mut p = state("p", Priority::High, "0 * * * *", None);
        p.paused = true;
        let m = ScheduleState {
            schedule: None,
            ..state("m", Priority::Manual, "0 * * * *", None)
        };
        let now = at("2027-01-01T00:00:00Z");
        assert!(!p.is_due(now) && !p.is_overdue(now, Duration::zero()));
        assert!(!m.is_due(now) && !m.is_overdue(now, Duration::zero()));
    }

    #[test]
    fn priority_order_then_waiting_time() {
        let now = at("2026-03-01T12:00:00Z");
        let states = vec![
            state(
                "low",
                Priority::Low,
                "0 * * * *",
                Some("2026-03-01T08:00:00Z"),
            ),
            state(
                "high-recent",
                Priority::High,
                "0 * * * *",
                Some("2026-03-01T10:30:00Z"),
            ),
            state(
                "high-old",
                Priority::High,
                "0 * * * *",
                Some("2026-03-01T09:30:00Z"),
            ),
            state(
                "medium",
                Priority::Medium,
                "0 * * * *",
                Some("2026-03-01T11:30:00Z"),
            ),
            state(
                "not-due",
                Priority::High,
                "0 * * * *",
                Some("2026-03-01T12:00:00Z"),
            ),
        ];
        assert_eq!(
            due_in_order(&states, now),
            vec!["high-old", "high-recent", "medium", "low"]
        );
    }

    #[test]
    fn overdue_after_a_further_slot_plus_grace_or_a_failure() {
        let mut s = state(
            "a",
            Priority::High,
            "0 * * * *",
            Some("2026-03-01T10:30:00Z"),
        );
        let grace = Duration::minutes(30);
        assert!(
            !s.is_overdue(at("2026-03-01T11:10:00Z"), grace),
            "due, not overdue"
        );
        assert!(
            !s.is_overdue(at("2026-03-01T12:20:00Z"), grace),
            "within grace"
        );
        assert!(s.is_overdue(at("2026-03-01T12:30:00Z"), grace));
        s.last_snapshot = Some(at("2026-03-01T12:31:00Z"));
        s.last_run_failed = true;
        assert!(s.is_overdue(at("2026-03-01T12:32:00Z"), grace));
    }

    #[test]
    fn presets() {
        assert_eq!(Priority::High.default_retention().daily, Some(30));
        assert_eq!(Priority::Medium.default_retention().daily, Some(14));
        assert_eq!(Priority::Low.default_schedule(), Some("0 3 * * 0"));
        assert_eq!(Priority::Manual.default_schedule(), None);
        for p in [Priority::High, Priority::Medium, Priority::Low] {
            Schedule::parse(p.default_schedule().unwrap()).unwrap();
        }
        assert!("urgent".parse::<Priority>().is_err());
    }
}
