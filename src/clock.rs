//! The wall clock, injectable so that tests and the simulator can share one manual clock.
//!
//! Stall gauges are computed at scrape time from `last_event_at`, so "now" must come from one
//! place that tests control. Rate limiting and retries use tokio's monotonic time instead.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

/// Unix microseconds: the unit of every instant the tracker and the metrics keep.
pub type Micros = i64;

/// One second, in [`Micros`].
pub const SECOND: Micros = 1_000_000;

/// How far ahead of the local clock a timestamp from Kapso may be and still be believed.
pub const FUTURE_TOLERANCE: Micros = 24 * 3600 * SECOND;
/// How far back a timestamp from Kapso may be and still be believed (Kapso is younger).
pub const PAST_TOLERANCE: Micros = 10 * 365 * 24 * 3600 * SECOND;

/// `t` in Unix microseconds, saturating (a year-9999 timestamp does not overflow).
pub fn micros(t: OffsetDateTime) -> Micros {
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// The instant of `m` Unix microseconds (the epoch for values `time` cannot represent).
pub fn from_micros(m: Micros) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(m) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// RFC 3339 in UTC to the second, as people read it (`2026-12-01T19:06:34Z`).
pub fn rfc3339_seconds(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// `t`, if it is a believable Kapso timestamp at local time `now`: not more than a day ahead
/// and not more than ten years back. Rows with `started_at` in the year 9999 or 1970 exist
/// in the wild; such a value must not move a watermark.
pub fn plausible(t: Option<OffsetDateTime>, now: Micros) -> Option<Micros> {
    let t = micros(t?);
    let lo = now.saturating_sub(PAST_TOLERANCE);
    let hi = now.saturating_add(FUTURE_TOLERANCE);
    (lo..=hi).contains(&t).then_some(t)
}

/// A source of the current UTC time.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<Arc<Mutex<OffsetDateTime>>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self { manual: None }
    }

    /// A clock that only moves when [`Clock::advance`] or [`Clock::set`] is called.
    pub fn manual(start: OffsetDateTime) -> Self {
        Self {
            manual: Some(Arc::new(Mutex::new(start))),
        }
    }

    /// The current time (UTC).
    pub fn now(&self) -> OffsetDateTime {
        match &self.manual {
            None => OffsetDateTime::now_utc(),
            Some(t) => *t.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Moves a manual clock forward; does nothing on the system clock.
    pub fn advance(&self, by: Duration) {
        if let Some(t) = &self.manual {
            let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
            *t += by;
        }
    }

    /// Sets a manual clock; does nothing on the system clock.
    pub fn set(&self, to: OffsetDateTime) {
        if let Some(t) = &self.manual {
            *t.lock().unwrap_or_else(|e| e.into_inner()) = to;
        }
    }

    /// Whether this clock is manual (tests) rather than the system clock.
    pub fn is_manual(&self) -> bool {
        self.manual.is_some()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_seconds_drops_the_fraction_and_the_offset() {
        let t = time::macros::datetime!(2026-12-01 21:06:34.189351611 +02:00);
        assert_eq!(super::rfc3339_seconds(t), "2026-12-01T19:06:34Z");
    }

    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let start = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("valid timestamp");
        let clock = Clock::manual(start);
        assert_eq!(clock.now(), start);
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now(), start + Duration::from_secs(90));
        let shared = clock.clone();
        shared.advance(Duration::from_secs(10));
        assert_eq!(clock.now(), start + Duration::from_secs(100));
    }

    #[test]
    fn absurd_timestamps_are_not_plausible() {
        let now = micros(OffsetDateTime::from_unix_timestamp(1_795_521_600).expect("valid"));
        let at = |s: &str| {
            Some(
                OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .expect("RFC 3339"),
            )
        };
        assert_eq!(plausible(None, now), None);
        assert_eq!(plausible(at("9999-12-31T23:59:59Z"), now), None);
        assert_eq!(plausible(at("1970-01-01T00:00:00Z"), now), None);
        assert_eq!(
            plausible(at("2026-11-24T12:00:00+05:30"), now),
            Some(now - 5 * 3600 * SECOND - 1800 * SECOND)
        );
        assert_eq!(micros(from_micros(now)), now);
        assert_eq!(from_micros(i64::MAX), OffsetDateTime::UNIX_EPOCH);
    }
}
