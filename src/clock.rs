//! The wall clock, injectable so that tests and the simulator can share one manual clock.
//!
//! Stall gauges are computed at scrape time from `last_event_at`, so "now" must come from one
//! place that tests control. Rate limiting and retries use tokio's monotonic time instead.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

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
}
