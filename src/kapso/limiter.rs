//! The client-side rate limiter of one API key.
//!
//! Kapso counts requests per key per minute (docs/kapso-api.md §8) and does not say whether its
//! window is fixed or sliding; a sliding 60 s log is the conservative reading: the exporter
//! never sends more than `limit` requests in any 60 s span. A 429's `Retry-After` pauses every
//! request of the key (for at most [`MAX_PAUSE`]), and `X-RateLimit-Remaining: 0` pauses it
//! until our oldest request leaves the window.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The length of Kapso's rate-limit window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The longest one pause of the key may last, whatever the server asks for.
///
/// Kapso documents `Retry-After: 60` on its 429s (docs/kapso-api.md §8). Fifteen times that leaves
/// room for a gateway in front of it that backs off longer, and still bounds what a corrupted
/// header (`Retry-After: 18446744073709551615`, a date in the year 9999) can do: the key
/// resumes within 15 minutes, and no instant is built that the clock cannot hold.
pub const MAX_PAUSE: Duration = Duration::from_secs(15 * 60);

/// A request occupies its slot of the budget from the moment it is allowed until 60 s after
/// its response arrived. Kapso counts it at some instant in between, unknown to us; counting
/// from the response keeps every 60 s window of Kapso's within the limit, however much the
/// network delays one request more than another.
#[derive(Debug)]
pub struct RateLimiter {
    limit: usize,
    inner: Mutex<Inner>,
    freed: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    /// Requests allowed whose response has not arrived yet.
    in_flight: usize,
    /// When the responses of the requests still in the window arrived.
    done: BinaryHeap<Reverse<Instant>>,
    paused_until: Option<Instant>,
}

/// One request's slot; dropping it (when the response arrived, or the request was given up)
/// starts its 60 s in the window.
#[derive(Debug)]
#[must_use = "the slot is released when the permit is dropped"]
pub struct Permit<'a> {
    limiter: &'a RateLimiter,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        {
            let mut inner = self.limiter.lock();
            inner.in_flight = inner.in_flight.saturating_sub(1);
            inner.done.push(Reverse(Instant::now()));
        }
        self.limiter.freed.notify_waiters();
    }
}

impl RateLimiter {
    /// A limiter allowing `per_minute` requests in any 60 s window (at least one).
    pub fn new(per_minute: u32) -> Self {
        Self {
            limit: per_minute.max(1) as usize,
            inner: Mutex::new(Inner::default()),
            freed: Notify::new(),
        }
    }

    /// Waits until one more request fits in the budget; the request holds the returned permit
    /// until its response arrived.
    pub async fn acquire(&self) -> Permit<'_> {
        loop {
            // Created before the check, so a slot freed in between still wakes us.
            let freed = self.freed.notified();
            match self.try_acquire(Instant::now()) {
                Ok(permit) => return permit,
                Err(until) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = freed => {}
                    }
                }
            }
        }
    }

    /// A permit if one more request fits at `now`, else when to try again (at the latest).
    pub fn try_acquire(&self, now: Instant) -> Result<Permit<'_>, Instant> {
        let mut inner = self.lock();
        if let Some(until) = inner.paused_until {
            if now < until {
                return Err(until);
            }
            inner.paused_until = None;
        }
        while inner.done.peek().is_some_and(|t| t.0 + WINDOW <= now) {
            inner.done.pop();
        }
        if inner.in_flight + inner.done.len() < self.limit {
            inner.in_flight += 1;
            return Ok(Permit { limiter: self });
        }
        // Every slot may be in flight: a response frees one sooner than this.
        Err(inner.done.peek().map_or(now + WINDOW, |t| t.0 + WINDOW))
    }

    /// Holds every request of this key until `until`; returns when the pause now ends (a
    /// shorter pause does not shorten a longer one).
    pub fn pause_until(&self, until: Instant) -> Instant {
        let mut inner = self.lock();
        let until = inner.paused_until.map_or(until, |t| t.max(until));
        inner.paused_until = Some(until);
        until
    }

    /// Holds every request of this key for `wait` from `now` (a 429's `Retry-After`), at most
    /// for [`MAX_PAUSE`]; returns when the pause now ends.
    pub fn pause_for(&self, wait: Duration, now: Instant) -> Instant {
        // `Instant + Duration` panics when the clock cannot hold the sum; capped first, the
        // sum always fits, and `checked_add` keeps even an exotic clock from panicking.
        let wait = wait.min(MAX_PAUSE);
        self.pause_until(now.checked_add(wait).unwrap_or(now))
    }

    /// Reacts to `X-RateLimit-Remaining`: at zero, the next request would be refused, so wait
    /// until our oldest request leaves the window (at most one window). Returns when the
    /// pause now ends, if this paused the key.
    pub fn observe_remaining(&self, remaining: u64, now: Instant) -> Option<Instant> {
        if remaining > 0 {
            return None;
        }
        let until = {
            let inner = self.lock();
            inner.done.peek().map_or(now + WINDOW, |t| t.0 + WINDOW)
        };
        Some(self.pause_until(until))
    }

    /// When a paused limiter resumes, if it is paused at `now`.
    pub fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.lock().paused_until.filter(|t| *t > now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn never_more_than_limit_in_any_window() {
        let limiter = RateLimiter::new(3);
        let start = Instant::now();
        let mut sent = Vec::new();
        for _ in 0..7 {
            drop(limiter.acquire().await);
            sent.push(Instant::now() - start);
        }
        // Three at once, three a window later, one two windows later.
        assert_eq!(sent[2], Duration::ZERO);
        assert_eq!(sent[3], WINDOW);
        assert_eq!(sent[5], WINDOW);
        assert_eq!(sent[6], WINDOW * 2);
        for (i, t) in sent.iter().enumerate() {
            let in_window = sent[..=i].iter().filter(|u| **u + WINDOW > *t).count();
            assert!(
                in_window <= 3,
                "{in_window} requests in the window ending at {t:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_counts_from_the_response() {
        let limiter = RateLimiter::new(2);
        let start = Instant::now();
        let slow = limiter.acquire().await;
        drop(limiter.acquire().await);
        // The slow request's response arrives 5 s later: its slot is taken until 65 s.
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(slow);
        drop(limiter.acquire().await);
        assert_eq!(Instant::now() - start, WINDOW);
        drop(limiter.acquire().await);
        assert_eq!(Instant::now() - start, WINDOW + Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_budget_in_flight_waits_for_a_response() {
        let limiter = std::sync::Arc::new(RateLimiter::new(1));
        let start = Instant::now();
        let first = limiter.acquire().await;
        let waiter = {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                drop(limiter.acquire().await);
                Instant::now()
            })
        };
        tokio::time::advance(Duration::from_secs(2)).await;
        drop(first);
        let got = waiter.await.expect("the waiter runs to the end");
        assert_eq!(got - start, WINDOW + Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn pause_holds_every_request_until_it_ends() {
        let limiter = RateLimiter::new(100);
        let start = Instant::now();
        limiter.pause_until(start + Duration::from_secs(30));
        assert_eq!(
            limiter.try_acquire(start).err(),
            Some(start + Duration::from_secs(30))
        );
        drop(limiter.acquire().await);
        assert_eq!(Instant::now() - start, Duration::from_secs(30));
        // A shorter pause does not shorten a longer one.
        limiter.pause_until(Instant::now() + Duration::from_secs(10));
        limiter.pause_until(Instant::now() + Duration::from_secs(5));
        let before = Instant::now();
        drop(limiter.acquire().await);
        assert_eq!(Instant::now() - before, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_is_capped_at_max_pause() {
        let limiter = RateLimiter::new(100);
        let start = Instant::now();
        // Neither panics on overflow nor pauses beyond the cap.
        assert_eq!(limiter.pause_for(Duration::MAX, start), start + MAX_PAUSE);
        assert_eq!(
            limiter.pause_for(Duration::from_secs(u64::MAX), start),
            start + MAX_PAUSE
        );
        assert_eq!(limiter.paused_until(start), Some(start + MAX_PAUSE));
        drop(limiter.acquire().await);
        assert_eq!(Instant::now() - start, MAX_PAUSE);
        // A short pause is taken as asked.
        let now = Instant::now();
        assert_eq!(
            limiter.pause_for(Duration::from_secs(3), now),
            now + Duration::from_secs(3)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn zero_remaining_waits_for_the_oldest_request_to_expire() {
        let limiter = RateLimiter::new(100);
        let start = Instant::now();
        drop(limiter.acquire().await);
        tokio::time::advance(Duration::from_secs(20)).await;
        limiter.observe_remaining(0, Instant::now());
        drop(limiter.acquire().await);
        assert_eq!(Instant::now() - start, WINDOW);
    }
}
