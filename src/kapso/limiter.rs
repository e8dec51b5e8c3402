//! The client-side rate limiter of one API key.
//!
//! Kapso counts requests per key per minute (facts sheet §8) and does not say whether its
//! window is fixed or sliding; a sliding 60 s log is the conservative reading: the exporter
//! never sends more than `limit` requests in any 60 s span. A 429's `Retry-After` pauses every
//! request of the key, and `X-RateLimit-Remaining: 0` pauses it until our oldest request
//! leaves the window.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The length of Kapso's rate-limit window.
pub const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct RateLimiter {
    limit: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    sent: VecDeque<Instant>,
    paused_until: Option<Instant>,
}

impl RateLimiter {
    /// A limiter allowing `per_minute` requests in any 60 s window (at least one).
    pub fn new(per_minute: u32) -> Self {
        Self {
            limit: per_minute.max(1) as usize,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Waits until one more request fits in the budget, then records it as sent.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire(Instant::now()) {
                Ok(()) => return,
                Err(until) => tokio::time::sleep_until(until).await,
            }
        }
    }

    /// Records a request sent at `now` if it fits, else tells when to try again.
    pub fn try_acquire(&self, now: Instant) -> Result<(), Instant> {
        let mut inner = self.lock();
        if let Some(until) = inner.paused_until {
            if now < until {
                return Err(until);
            }
            inner.paused_until = None;
        }
        while inner.sent.front().is_some_and(|t| *t + WINDOW <= now) {
            inner.sent.pop_front();
        }
        if inner.sent.len() < self.limit {
            inner.sent.push_back(now);
            return Ok(());
        }
        Err(inner.sent.front().map_or(now, |t| *t + WINDOW))
    }

    /// Holds every request of this key until `until` (a 429's `Retry-After`).
    pub fn pause_until(&self, until: Instant) {
        let mut inner = self.lock();
        inner.paused_until = Some(inner.paused_until.map_or(until, |t| t.max(until)));
    }

    /// Reacts to `X-RateLimit-Remaining`: at zero, the next request would be refused, so wait
    /// until our oldest request leaves the window (at most one window).
    pub fn observe_remaining(&self, remaining: u64, now: Instant) {
        if remaining > 0 {
            return;
        }
        let until = {
            let inner = self.lock();
            inner.sent.front().map_or(now + WINDOW, |t| *t + WINDOW)
        };
        self.pause_until(until);
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
            limiter.acquire().await;
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
    async fn pause_holds_every_request_until_it_ends() {
        let limiter = RateLimiter::new(100);
        let start = Instant::now();
        limiter.pause_until(start + Duration::from_secs(30));
        assert_eq!(
            limiter.try_acquire(start),
            Err(start + Duration::from_secs(30))
        );
        limiter.acquire().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(30));
        // A shorter pause does not shorten a longer one.
        limiter.pause_until(Instant::now() + Duration::from_secs(10));
        limiter.pause_until(Instant::now() + Duration::from_secs(5));
        let before = Instant::now();
        limiter.acquire().await;
        assert_eq!(Instant::now() - before, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_remaining_waits_for_the_oldest_request_to_expire() {
        let limiter = RateLimiter::new(100);
        let start = Instant::now();
        limiter.acquire().await;
        tokio::time::advance(Duration::from_secs(20)).await;
        limiter.observe_remaining(0, Instant::now());
        limiter.acquire().await;
        assert_eq!(Instant::now() - start, WINDOW);
    }
}
