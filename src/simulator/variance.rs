//! API variance: behaviour the real Kapso API is free to show because its documents allow it
//! (or disagree with themselves), as opposed to the [`Faults`](super::Faults) that break it.
//!
//! Every setting is off by default, and a default [`Variance`] is exactly the simulator's
//! usual behaviour. Rendering settings (precision, offset, missing fields, duplicates, bad
//! rows) change only what goes on the wire: the world, its filters and
//! [`GroundTruth`](super::GroundTruth) keep full-precision truth. Settings that change
//! how the world evolves (stale live lists, and the tick-driven `unknown_statuses`,
//! `deletions` and `flaky_workflow_list`) keep ground truth exact as well.
//!
//! Presets for `--demo.variance` and tests come from [`Variance::parse_list`].

use std::time::Duration;

use time::{OffsetDateTime, UtcOffset};

use super::codec::derived_uuid;

const MILLI_US: i64 = 1_000;
const SECOND_US: i64 = 1_000_000;

/// How many digits of a timestamp survive (as in a Rails column of less precision, the rest
/// is truncated, not rounded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Microseconds, printed with six fractional digits or none when they are zero
    /// (the simulator's usual rendering).
    #[default]
    Micros,
    /// Milliseconds, always printed with three fractional digits (Rails' default JSON).
    Millis,
    /// Whole seconds, no fractional part (the spec's own examples).
    Seconds,
}

impl Precision {
    /// `us` (microseconds since the epoch) truncated towards the past to this precision.
    pub fn truncate_us(self, us: i64) -> i64 {
        match self {
            Precision::Micros => us,
            Precision::Millis => us - us.rem_euclid(MILLI_US),
            Precision::Seconds => us - us.rem_euclid(SECOND_US),
        }
    }

    /// `t` truncated to this precision: what a client reads back from a field rendered in it.
    pub fn truncate(self, t: OffsetDateTime) -> OffsetDateTime {
        let nanos = t.unix_timestamp_nanos();
        let unit: i128 = match self {
            Precision::Micros => 1_000,
            Precision::Millis => 1_000_000,
            Precision::Seconds => 1_000_000_000,
        };
        OffsetDateTime::from_unix_timestamp_nanos(nanos - nanos.rem_euclid(unit))
            .map_or(t, |u| u.to_offset(t.offset()))
    }
}

/// The precision of each timestamp field that Kapso's documents show with different
/// precisions (docs/kapso-api.md §7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Precisions {
    /// `last_executed_at` of workflows.
    pub workflow_last_executed_at: Precision,
    /// `created_at` of workflows.
    pub workflow_created_at: Precision,
    /// `started_at` of execution rows.
    pub started_at: Precision,
    /// `last_event_at` of execution rows.
    pub last_event_at: Precision,
    /// `ended_at` of execution rows.
    pub ended_at: Precision,
    /// The timestamp inside every paging cursor. The server still compares it with
    /// full-precision keys, like a keyset query whose cursor lost digits: see
    /// [`Variance::parse_list`]'s `seconds` preset and the README for what that does to pages.
    pub cursor: Precision,
}

impl Precisions {
    /// The same precision for every field.
    pub fn all(p: Precision) -> Precisions {
        Precisions {
            workflow_last_executed_at: p,
            workflow_created_at: p,
            started_at: p,
            last_event_at: p,
            ended_at: p,
            cursor: p,
        }
    }
}

/// Whether an optional field is on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Presence {
    /// Present with its value (the usual behaviour).
    #[default]
    Present,
    /// Left out of the object.
    Absent,
    /// Present as `null`.
    Null,
}

/// How one execution's `started_at` is rendered instead of its true value; the true start
/// still orders, filters and pages the row, and ground truth uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StartOverride {
    /// `started_at` left out of the row (a required field, so this breaks the schema).
    Missing,
    /// `started_at: null` (also outside the schema).
    Null,
    /// The true instant with its year replaced (clamped to -9999..=9999; 29 February
    /// becomes the 28th), e.g. 9999 or 1970.
    Year(i32),
}

/// Ways the API may legitimately differ from the simulator's defaults; change them at any time
/// with [`Simulator::set_variance`](super::Simulator::set_variance).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Variance {
    /// Precision per timestamp field and of cursors.
    pub precision: Precisions,
    /// Render every timestamp (bodies and cursors) with this fixed offset instead of `Z`,
    /// for the same instant. `Some(UTC)` prints `+00:00`.
    pub utc_offset: Option<UtcOffset>,
    /// Whether workflows carry `execution_count`.
    pub execution_count: Presence,
    /// Whether workflows carry `last_executed_at` (with `Present`, `null` until the first run).
    pub last_executed_at: Presence,
    /// `execution_count` reflects only executions started at least this long ago: a new row
    /// is listed before the count includes it.
    pub execution_count_lag: Duration,
    /// `last_executed_at` reflects only executions started at least this long ago.
    pub last_executed_at_lag: Duration,
    /// `execution_count` is the number of executions that still exist, so it drops when
    /// executions are deleted (instead of counting every execution ever created).
    pub shrinking_count: bool,
    /// Every `GET /workflows` listing shows its first (newest) workflow a second time, at the
    /// end.
    pub duplicate_workflows: bool,
    /// An execution list fetched with an `after` cursor (and `limit` of 2 or more) starts with
    /// the row that cursor points to, if it still matches: the last row of one page is the
    /// first of the next. The page still holds at most `limit` rows.
    pub overlapping_pages: bool,
    /// An execution that moves from one live status to another stays listed under its previous
    /// live status too (with its current row), until its next status change, like a search
    /// index that lags the database it loads rows from. Applies to moves made while set.
    pub stale_live_lists: bool,
    /// Share (0 to 1) of execution rows, chosen by a hash of their id, whose `started_at` is
    /// rendered missing, or in the year 9999 or 1970 (see [`StartOverride`]); overrides set
    /// with [`Simulator::set_start_override`](super::Simulator::set_start_override) win.
    pub bad_start_rate: f64,
    /// Workflows are rendered without `created_at` (a required field); `created_after` and
    /// `created_before` still filter on it.
    pub omit_created_at: bool,
    /// [`Simulator::tick`](super::Simulator::tick) moves some live executions to `paused`
    /// (a status outside the spec's enum) and later back to `waiting` or `running`, or to
    /// `ended` or `failed`.
    pub unknown_statuses: bool,
    /// [`Simulator::tick`](super::Simulator::tick) deletes the oldest terminal executions
    /// (a retention job) and, now and then, a live one.
    pub deletions: bool,
    /// [`Simulator::tick`](super::Simulator::tick) now and then hides a workflow from the next
    /// one to three `GET /workflows` listings, or empties the next listing.
    pub flaky_workflow_list: bool,
}

/// The names [`Variance::parse_list`] accepts, in the order its doc comment lists them.
pub const PRESETS: [&str; 15] = [
    "seconds",
    "millis",
    "mixed-precision",
    "offset",
    "missing-counts",
    "lagging-counts",
    "shrinking-counts",
    "deletions",
    "unknown-statuses",
    "duplicates",
    "bad-rows",
    "flaky-workflow-list",
    "no-created-at",
    "none",
    "all",
];

/// The offset of the `offset` preset when none is given.
const DEFAULT_OFFSET: (i8, i8) = (5, 30);
/// The lag of the `lagging-counts` preset when none is given.
const DEFAULT_LAG: Duration = Duration::from_secs(60);

impl Variance {
    /// Parses a comma-separated list of presets; later names override what earlier ones set.
    ///
    /// - `seconds`: every timestamp field and the cursors in whole seconds
    /// - `millis`: every timestamp field and the cursors in milliseconds
    /// - `mixed-precision`: workflow `last_executed_at` and row `ended_at` in seconds,
    ///   workflow `created_at`, row `last_event_at` and the cursors in milliseconds, row
    ///   `started_at` in microseconds
    /// - `offset` or `offset=±HH:MM`: every timestamp with a fixed offset (default `+05:30`)
    /// - `missing-counts`: workflows without `execution_count` and with `last_executed_at: null`
    /// - `lagging-counts` or `lagging-counts=DURATION`: `execution_count` and
    ///   `last_executed_at` lag new executions by DURATION (default 60s)
    /// - `shrinking-counts`: `execution_count` counts existing executions, and `deletions`
    /// - `deletions`: the ticker deletes old terminal executions and now and then a live one
    /// - `unknown-statuses`: the ticker moves some executions to `paused` and back
    /// - `duplicates`: a workflow listed twice, consecutive pages sharing a row, and
    ///   executions listed under their previous live status too
    /// - `bad-rows`: 2 % of rows without `started_at` or with it in the year 9999 or 1970
    /// - `flaky-workflow-list`: the ticker hides a workflow from some listings, or empties one
    /// - `no-created-at`: workflows without `created_at`
    /// - `none`: the default (no variance)
    /// - `all`: `mixed-precision`, `offset=-03:00`, `last_executed_at` null, a lagging (30s)
    ///   and shrinking `execution_count`, `deletions`, `unknown-statuses`, `duplicates`,
    ///   `bad-rows`, `flaky-workflow-list` and `no-created-at`
    ///
    /// The error is one line naming the bad item.
    pub fn parse_list(list: &str) -> Result<Variance, String> {
        if list.trim().is_empty() {
            return Err(format!(
                "the variance list is empty; name one or more of: {}",
                PRESETS.join(", ")
            ));
        }
        let mut v = Variance::default();
        for item in list.split(',') {
            let item = item.trim();
            let (name, arg) = match item.split_once('=') {
                Some((name, arg)) => (name.trim(), Some(arg.trim())),
                None => (item, None),
            };
            if arg.is_some() && !matches!(name, "offset" | "lagging-counts") {
                return Err(format!("variance {name:?} takes no value (in {item:?})"));
            }
            match name {
                "seconds" => v.precision = Precisions::all(Precision::Seconds),
                "millis" => v.precision = Precisions::all(Precision::Millis),
                "mixed-precision" => v.precision = mixed_precision(),
                "offset" => {
                    let offset = match arg {
                        Some(a) => parse_offset(a)?,
                        None => offset(DEFAULT_OFFSET),
                    };
                    v.utc_offset = Some(offset);
                }
                "missing-counts" => {
                    v.execution_count = Presence::Absent;
                    v.last_executed_at = Presence::Null;
                }
                "lagging-counts" => {
                    let lag = match arg {
                        Some(a) => humantime::parse_duration(a).map_err(|e| {
                            format!("lagging-counts={a}: not a duration like 30s or 2m: {e}")
                        })?,
                        None => DEFAULT_LAG,
                    };
                    v.execution_count_lag = lag;
                    v.last_executed_at_lag = lag;
                }
                "shrinking-counts" => {
                    v.shrinking_count = true;
                    v.deletions = true;
                }
                "deletions" => v.deletions = true,
                "unknown-statuses" => v.unknown_statuses = true,
                "duplicates" => {
                    v.duplicate_workflows = true;
                    v.overlapping_pages = true;
                    v.stale_live_lists = true;
                }
                "bad-rows" => v.bad_start_rate = 0.02,
                "flaky-workflow-list" => v.flaky_workflow_list = true,
                "no-created-at" => v.omit_created_at = true,
                "none" => v = Variance::default(),
                "all" => v = Variance::all(),
                "" => return Err(format!("empty item in the variance list {list:?}")),
                other => {
                    return Err(format!(
                        "unknown variance {other:?}; known: {}",
                        PRESETS.join(", ")
                    ));
                }
            }
        }
        Ok(v)
    }

    /// The `all` preset (see [`Variance::parse_list`]).
    pub fn all() -> Variance {
        Variance {
            precision: mixed_precision(),
            utc_offset: Some(offset((-3, 0))),
            execution_count: Presence::Present,
            last_executed_at: Presence::Null,
            execution_count_lag: Duration::from_secs(30),
            last_executed_at_lag: Duration::ZERO,
            shrinking_count: true,
            duplicate_workflows: true,
            overlapping_pages: true,
            stale_live_lists: true,
            bad_start_rate: 0.02,
            omit_created_at: true,
            unknown_statuses: true,
            deletions: true,
            flaky_workflow_list: true,
        }
    }

    /// The rendering override [`Variance::bad_start_rate`] picks for an execution id, if any.
    pub(crate) fn hashed_start_override(&self, id: u128) -> Option<StartOverride> {
        if !(self.bad_start_rate.is_finite() && self.bad_start_rate > 0.0) {
            return None;
        }
        // A hash of the id, not a draw, so the same rows stay bad on every request and the
        // fault RNG's sequence does not depend on how many rows were rendered.
        let h = derived_uuid(id, 0xBAD5_7A27);
        let roll = (h % 1_000_000) as f64 / 1_000_000.0;
        if roll >= self.bad_start_rate.min(1.0) {
            return None;
        }
        Some(match (h >> 64) % 3 {
            0 => StartOverride::Missing,
            1 => StartOverride::Year(9999),
            _ => StartOverride::Year(1970),
        })
    }
}

fn mixed_precision() -> Precisions {
    Precisions {
        workflow_last_executed_at: Precision::Seconds,
        workflow_created_at: Precision::Millis,
        started_at: Precision::Micros,
        last_event_at: Precision::Millis,
        ended_at: Precision::Seconds,
        cursor: Precision::Millis,
    }
}

/// A whole-minute offset from constants that are known to be in range.
fn offset((hours, minutes): (i8, i8)) -> UtcOffset {
    UtcOffset::from_hms(hours, minutes, 0).unwrap_or(UtcOffset::UTC)
}

/// `+HH:MM` or `-HH:MM` (as RFC 3339 writes offsets), up to ±23:59.
fn parse_offset(s: &str) -> Result<UtcOffset, String> {
    let bad = || format!("offset={s}: not an offset like +05:30 or -03:00");
    let bytes = s.as_bytes();
    if bytes.len() != 6 || bytes[3] != b':' {
        return Err(bad());
    }
    let sign: i8 = match bytes[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return Err(bad()),
    };
    let hours: i8 = s[1..3].parse().map_err(|_| bad())?;
    let minutes: i8 = s[4..6].parse().map_err(|_| bad())?;
    if !s[1..3]
        .bytes()
        .chain(s[4..6].bytes())
        .all(|b| b.is_ascii_digit())
        || hours > 23
        || minutes > 59
    {
        return Err(bad());
    }
    UtcOffset::from_hms(sign * hours, sign * minutes, 0).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_goes_towards_the_past() {
        assert_eq!(Precision::Seconds.truncate_us(1_999_999), 1_000_000);
        assert_eq!(Precision::Millis.truncate_us(1_999_999), 1_999_000);
        assert_eq!(Precision::Micros.truncate_us(1_999_999), 1_999_999);
        // Before the epoch (the year 1970 override lands near it) truncation still floors.
        assert_eq!(Precision::Seconds.truncate_us(-1), -1_000_000);
        let t = time::macros::datetime!(2026-05-15 13:05:00.123456 +05:30);
        assert_eq!(
            Precision::Millis.truncate(t),
            time::macros::datetime!(2026-05-15 13:05:00.123 +05:30)
        );
    }

    #[test]
    fn presets_parse_and_combine() {
        assert_eq!(Variance::parse_list("none"), Ok(Variance::default()));
        let v = Variance::parse_list("seconds, offset=-03:00,duplicates").expect("valid");
        assert_eq!(v.precision, Precisions::all(Precision::Seconds));
        assert_eq!(v.utc_offset, UtcOffset::from_hms(-3, 0, 0).ok());
        assert!(v.duplicate_workflows && v.overlapping_pages && v.stale_live_lists);
        let v = Variance::parse_list("lagging-counts=2m").expect("valid");
        assert_eq!(v.execution_count_lag, Duration::from_secs(120));
        assert_eq!(Variance::parse_list("all,none"), Ok(Variance::default()));
        for name in PRESETS {
            assert!(Variance::parse_list(name).is_ok(), "{name}");
        }
        // Later names override earlier ones.
        let v = Variance::parse_list("seconds,mixed-precision").expect("valid");
        assert_eq!(v.precision.started_at, Precision::Micros);
    }

    #[test]
    fn bad_lists_are_one_line_errors() {
        for bad in [
            "",
            " ",
            "seconds,,offset",
            "sekonds",
            "offset=5:30",
            "offset=+24:00",
            "offset=+05:60",
            "offset=+0a:00",
            "lagging-counts=soon",
            "seconds=1",
        ] {
            let e = Variance::parse_list(bad).expect_err(bad);
            assert!(!e.contains('\n'), "{bad}: {e}");
        }
        let e = Variance::parse_list("sekonds").expect_err("unknown");
        assert!(
            e.contains("sekonds") && e.contains("mixed-precision"),
            "{e}"
        );
    }

    #[test]
    fn hashed_overrides_hit_about_the_rate() {
        let v = Variance {
            bad_start_rate: 0.1,
            ..Variance::default()
        };
        let hits = (0..10_000u128)
            .filter(|&i| v.hashed_start_override(i * 7919).is_some())
            .count();
        assert!((800..1200).contains(&hits), "{hits}");
        assert_eq!(Variance::default().hashed_start_override(1), None);
    }
}
