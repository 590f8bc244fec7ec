//! Retention policies with restic's `forget` semantics, as pure functions over snapshot times and tags.
//!
//! Rules: snapshots are considered newest first. `last N` keeps the N newest. Each calendar rule (hourly,
//! daily, weekly (ISO weeks), monthly, yearly) with N keeps the newest snapshot of each of the N most recent
//! buckets that hold a snapshot, buckets taken in the snapshot's own local time (its stored UTC offset).
//! `within D` keeps every snapshot no older than the newest one minus D. `tags` keeps snapshots carrying any
//! of the tags. A snapshot is kept if any rule keeps it. An empty policy keeps everything; a policy that
//! [keeps nothing](KeepPolicy::keeps_nothing) (`--keep-last 0`) removes everything, which `forget` refuses
//! unless told otherwise (see [`crate::gc::forget`]).
//!
//! Time is taken as the snapshots give it: which snapshots to leave out because they are dated in the
//! future (a skewed clock) is the caller's decision, since "now" is not an input here.

use chrono::{DateTime, Datelike, FixedOffset, Months, Timelike};
use serde::Serialize;

use crate::error::{Error, Result};

/// A span like restic's `--keep-within`: `1y2m3d4h` (any subset, in that order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepDuration {
    pub years: u32,
    pub months: u32,
    pub days: u32,
    pub hours: u32,
}

impl std::str::FromStr for KeepDuration {
    type Err = Error;
    fn from_str(s: &str) -> Result<KeepDuration> {
        let bad = || Error::Invalid(format!("duration {s:?}: want e.g. 1y2m3d4h"));
        let mut d = KeepDuration::default();
        let mut num = String::new();
        let mut last_unit = 0;
        for c in s.chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let (rank, field) = match c {
                'y' => (1, &mut d.years),
                'm' => (2, &mut d.months),
                'd' => (3, &mut d.days),
                'h' => (4, &mut d.hours),
                _ => return Err(bad()),
            };
            if num.is_empty() || rank <= last_unit {
                return Err(bad());
            }
            *field = num.parse().map_err(|_| bad())?;
            num.clear();
            last_unit = rank;
        }
        if !num.is_empty() || last_unit == 0 {
            return Err(bad());
        }
        Ok(d)
    }
}

impl KeepDuration {
    /// `t` minus this span (calendar months and years, exact days and hours); `None` on overflow.
    pub fn before(&self, t: DateTime<FixedOffset>) -> Option<DateTime<FixedOffset>> {
        let months = self.years.checked_mul(12)?.checked_add(self.months)?;
        t.checked_sub_months(Months::new(months))?
            .checked_sub_signed(chrono::Duration::days(self.days as i64))?
            .checked_sub_signed(chrono::Duration::hours(self.hours as i64))
    }
}

/// What to keep. `None` rules are absent; `Some(0)` is an explicit "keep none by this rule".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: Option<u32>,
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
    pub yearly: Option<u32>,
    pub within: Option<KeepDuration>,
    pub tags: Vec<String>,
}

impl KeepPolicy {
    /// No rule at all.
    pub fn is_empty(&self) -> bool {
        *self == KeepPolicy::default()
    }

    /// Whether no rule can keep a snapshot: every count is zero (or absent), with neither `within` nor a
    /// tag rule. Applied, such a policy removes every snapshot of every group (restic calls it "no policy").
    pub fn keeps_nothing(&self) -> bool {
        let counts = [
            self.last,
            self.hourly,
            self.daily,
            self.weekly,
            self.monthly,
            self.yearly,
        ];
        self.within.is_none() && self.tags.is_empty() && counts.iter().all(|n| n.unwrap_or(0) == 0)
    }
}

/// A snapshot as the policy sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    pub time: DateTime<FixedOffset>,
    pub tags: Vec<String>,
}

/// The verdict on one snapshot, with the rules that kept it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: String,
    pub keep: bool,
    pub reasons: Vec<String>,
}

type BucketFn = fn(&DateTime<FixedOffset>) -> (i32, u32, u32, u32);

fn calendar_rules(p: &KeepPolicy) -> [(&'static str, Option<u32>, BucketFn); 5] {
    [
        ("hourly", p.hourly, |t| {
            (t.year(), t.month(), t.day(), t.hour())
        }),
        ("daily", p.daily, |t| (t.year(), t.month(), t.day(), 0)),
        ("weekly", p.weekly, |t| {
            (t.iso_week().year(), t.iso_week().week(), 0, 0)
        }),
        ("monthly", p.monthly, |t| (t.year(), t.month(), 0, 0)),
        ("yearly", p.yearly, |t| (t.year(), 0, 0, 0)),
    ]
}

/// Applies `policy` to one group of snapshots; decisions come newest first.
pub fn apply(policy: &KeepPolicy, snapshots: &[Candidate]) -> Vec<Decision> {
    let mut order: Vec<&Candidate> = snapshots.iter().collect();
    order.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| a.id.cmp(&b.id)));
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); order.len()];
    if let Some(n) = policy.last {
        for r in reasons.iter_mut().take(n as usize) {
            r.push("last".into());
        }
    }
    for (name, count, bucket) in calendar_rules(policy) {
        let Some(n) = count else { continue };
        let mut used = 0;
        // Every bucket already kept, not only the last one: snapshots taken in different time zones can
        // come back to a bucket out of time order (Sept 30 22:00 UTC is October at +02:00), and a month
        // keeps one snapshot, its newest.
        let mut kept = std::collections::HashSet::new();
        for (i, s) in order.iter().enumerate() {
            if used >= n {
                break;
            }
            if kept.insert(bucket(&s.time)) {
                used += 1;
                reasons[i].push(name.into());
            }
        }
    }
    if let (Some(d), Some(newest)) = (policy.within, order.first()) {
        if let Some(limit) = d.before(newest.time) {
            for (i, s) in order.iter().enumerate() {
                if s.time >= limit {
                    reasons[i].push("within".into());
                }
            }
        } else {
            reasons.iter_mut().for_each(|r| r.push("within".into()));
        }
    }
    for (i, s) in order.iter().enumerate() {
        for t in policy.tags.iter().filter(|t| s.tags.contains(t)) {
            reasons[i].push(format!("tag:{t}"));
        }
    }
    let empty = policy.is_empty();
    order
        .iter()
        .zip(reasons)
        .map(|(s, r)| Decision {
            id: s.id.clone(),
            keep: empty || !r.is_empty(),
            reasons: if empty {
                vec!["empty policy".into()]
            } else {
                r
            },
        })
        .collect()
}

/// The group a snapshot belongs to: its instance (one configuration, whichever host runs it), or else its
/// host with its sorted paths and stream names, as restic groups by host and paths: two hosts backing up
/// the same path into a shared repository have two histories, and a policy applies to each.
pub fn group_key(
    instance: Option<&str>,
    host: &str,
    paths: &[String],
    stream_names: &[String],
) -> String {
    match instance {
        Some(i) => format!("instance:{i}"),
        None => {
            let mut p = paths.to_vec();
            p.sort();
            let mut s = stream_names.to_vec();
            s.sort();
            format!(
                "host:{}|paths:{}|streams:{}",
                serde_json::json!(host),
                serde_json::json!(p),
                serde_json::json!(s)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn t(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    fn cand(id: &str, time: &str) -> Candidate {
        Candidate {
            id: id.into(),
            time: t(time),
            tags: vec![],
        }
    }

    fn kept(policy: &KeepPolicy, snaps: &[Candidate]) -> Vec<String> {
        apply(policy, snaps)
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| d.id)
            .collect()
    }

    #[test]
    fn durations_parse_like_restic() {
        assert_eq!(
            "1y2m3d4h".parse::<KeepDuration>().unwrap(),
            KeepDuration {
                years: 1,
                months: 2,
                days: 3,
                hours: 4
            }
        );
        assert_eq!("7d".parse::<KeepDuration>().unwrap().days, 7);
        for bad in ["", "1x", "y", "-1d", "1d1y", "1d2d", "99999999999y", "5"] {
            assert!(bad.parse::<KeepDuration>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn daily_keeps_the_newest_of_each_of_the_newest_days() {
        let snaps = [
            cand("a", "2026-11-20T08:00:00Z"),
            cand("b", "2026-11-20T20:00:00Z"),
            cand("c", "2026-11-21T09:00:00Z"),
            cand("d", "2026-11-22T01:00:00Z"),
            cand("e", "2026-11-22T23:00:00Z"),
        ];
        let p = KeepPolicy {
            daily: Some(2),
            ..Default::default()
        };
        assert_eq!(kept(&p, &snaps), ["e", "c"]);
    }

    #[test]
    fn weekly_buckets_follow_iso_weeks_across_the_year_end() {
        // 2026-12-31 (Thu) and 2027-01-03 (Sun) are in ISO week 2026-W53.
        let snaps = [
            cand("a", "2026-12-31T10:00:00Z"),
            cand("b", "2027-01-03T10:00:00Z"),
            cand("c", "2027-01-04T10:00:00Z"),
        ];
        let p = KeepPolicy {
            weekly: Some(5),
            ..Default::default()
        };
        assert_eq!(kept(&p, &snaps), ["c", "b"]);
    }

    #[test]
    fn buckets_use_the_snapshots_own_offset() {
        // 23:30 at +02:00 is the 20th locally, though the 20th at 21:30 UTC too; 00:30+02:00 is the 21st.
        let snaps = [
            cand("a", "2026-11-20T23:30:00+02:00"),
            cand("b", "2026-11-21T00:30:00+02:00"),
        ];
        let p = KeepPolicy {
            daily: Some(2),
            ..Default::default()
        };
        assert_eq!(kept(&p, &snaps), ["b", "a"]);
    }

    #[test]
    fn within_is_relative_to_the_newest_snapshot() {
        let snaps = [
            cand("old", "2020-01-01T00:00:00Z"),
            cand("a", "2020-02-25T00:00:00Z"),
            cand("new", "2020-03-01T00:00:00Z"),
        ];
        let p = KeepPolicy {
            within: Some("1m".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(kept(&p, &snaps), ["new", "a"]);
    }

    #[test]
    fn tags_and_empty_policy() {
        let mut s = cand("x", "2020-01-01T00:00:00Z");
        s.tags = vec!["safety".into()];
        let snaps = [s, cand("y", "2021-01-01T00:00:00Z")];
        let p = KeepPolicy {
            tags: vec!["safety".into()],
            ..Default::default()
        };
        assert_eq!(kept(&p, &snaps), ["x"]);
        assert_eq!(kept(&KeepPolicy::default(), &snaps).len(), 2);
        assert!(kept(
            &KeepPolicy {
                last: Some(0),
                ..Default::default()
            },
            &snaps
        )
        .is_empty());
    }

    /// The reference model: per rule, group by bucket, buckets newest first, keep each bucket's newest.
    fn reference(p: &KeepPolicy, snaps: &[Candidate]) -> BTreeSet<String> {
        if p.is_empty() {
            return snaps.iter().map(|s| s.id.clone()).collect();
        }
        let mut sorted: Vec<&Candidate> = snaps.iter().collect();
        sorted.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| a.id.cmp(&b.id)));
        let mut keep = BTreeSet::new();
        if let Some(n) = p.last {
            keep.extend(sorted.iter().take(n as usize).map(|s| s.id.clone()));
        }
        for (_, count, bucket) in calendar_rules(p) {
            let Some(n) = count else { continue };
            // Buckets in order of their newest snapshot (sorted is newest first, so first seen = newest).
            let mut seen: BTreeMap<(i32, u32, u32, u32), String> = BTreeMap::new();
            let mut order = Vec::new();
            for s in &sorted {
                let b = bucket(&s.time);
                if let std::collections::btree_map::Entry::Vacant(v) = seen.entry(b) {
                    v.insert(s.id.clone());
                    order.push(b);
                }
            }
            keep.extend(order.iter().take(n as usize).map(|b| seen[b].clone()));
        }
        if let (Some(d), Some(newest)) = (p.within, sorted.first()) {
            let limit = d.before(newest.time);
            keep.extend(
                sorted
                    .iter()
                    .filter(|s| limit.is_none_or(|l| s.time >= l))
                    .map(|s| s.id.clone()),
            );
        }
        keep.extend(
            sorted
                .iter()
                .filter(|s| s.tags.iter().any(|t| p.tags.contains(t)))
                .map(|s| s.id.clone()),
        );
        keep
    }

    fn timeline() -> impl Strategy<Value = Vec<Candidate>> {
        prop::collection::vec(
            (
                0i64..3 * 365 * 24 * 60,
                prop::sample::select(vec![0, 7200, -18000]),
                any::<bool>(),
            ),
            0..60,
        )
        .prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (minutes, off, tagged))| {
                    let utc = DateTime::from_timestamp(1_700_000_000 + minutes * 60, 0).unwrap();
                    Candidate {
                        id: format!("{i:03}"),
                        time: utc.with_timezone(&FixedOffset::east_opt(off).unwrap()),
                        tags: if tagged { vec!["t".into()] } else { vec![] },
                    }
                })
                .collect()
        })
    }

    fn policy() -> impl Strategy<Value = KeepPolicy> {
        let n = || prop::option::of(0u32..6);
        (
            n(),
            n(),
            n(),
            n(),
            n(),
            n(),
            prop::option::of((0u32..2, 0u32..3, 0u32..20)),
            any::<bool>(),
        )
            .prop_map(
                |(last, hourly, daily, weekly, monthly, yearly, within, tag)| KeepPolicy {
                    last,
                    hourly,
                    daily,
                    weekly,
                    monthly,
                    yearly,
                    within: within.map(|(y, m, d)| KeepDuration {
                        years: y,
                        months: m,
                        days: d,
                        hours: 0,
                    }),
                    tags: if tag { vec!["t".into()] } else { vec![] },
                },
            )
    }

    proptest! {
        #[test]
        fn matches_the_reference_model(snaps in timeline(), p in policy()) {
            let got: BTreeSet<String> = kept(&p, &snaps).into_iter().collect();
            prop_assert_eq!(got, reference(&p, &snaps));
        }

        #[test]
        fn adding_a_rule_never_removes_a_kept_snapshot(snaps in timeline(), p in policy(), extra in 1u32..5) {
            let before: BTreeSet<String> = kept(&p, &snaps).into_iter().collect();
            let mut more = p.clone();
            more.daily = Some(more.daily.unwrap_or(0) + extra);
            let after: BTreeSet<String> = kept(&more, &snaps).into_iter().collect();
            prop_assert!(p.is_empty() || before.is_subset(&after));
        }

        #[test]
        fn input_order_does_not_matter(snaps in timeline(), p in policy()) {
            let mut rev = snaps.clone();
            rev.reverse();
            prop_assert_eq!(apply(&p, &snaps), apply(&p, &rev));
        }

        #[test]
        fn last_n_keeps_exactly_n(snaps in timeline(), n in 0u32..70) {
            let p = KeepPolicy { last: Some(n), ..Default::default() };
            prop_assert_eq!(kept(&p, &snaps).len(), (n as usize).min(snaps.len()));
        }
    }
}
