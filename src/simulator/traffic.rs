//! Per-key sliding-window rate limiting (docs/kapso-api.md §8) and the request statistics that tests
//! use to check a client's behaviour (budget kept, retries, endpoints hit).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::RequestStats;

/// The window the Platform API limit is counted over ("requests per minute").
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// The limiter's answer for one authenticated request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Served; `remaining` is what `X-RateLimit-Remaining` shows (`None` when unlimited).
    Accepted { limit: Option<u32>, remaining: u32 },
    /// Refused with 429; the client may retry after this many seconds.
    Limited { limit: u32, retry_after_secs: u64 },
}

/// Accepted-request windows per API key, plus counters.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    windows: HashMap<String, VecDeque<Instant>>,
    /// Per key, until when the last `Retry-After` holds.
    paused: HashMap<String, Instant>,
    stats: RequestStats,
}

impl Traffic {
    /// Admits or refuses a request by `key` at `now` under `limit` requests per 60 s.
    /// Accepted requests are remembered (also when unlimited, for `max_in_window`).
    pub fn admit(&mut self, key: &str, now: Instant, limit: Option<u32>) -> Admission {
        self.arrive(key, now);
        let window = match self.windows.get_mut(key) {
            Some(w) => w,
            None => self.windows.entry(key.to_owned()).or_default(),
        };
        while window
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= WINDOW)
        {
            window.pop_front();
        }
        if let Some(limit) = limit {
            if window.len() >= limit as usize {
                // Retry when the oldest accepted request leaves the window, at least 1 s.
                let wait = window.front().map_or(WINDOW, |&oldest| {
                    WINDOW.saturating_sub(now.saturating_duration_since(oldest))
                });
                let retry_after_secs = wait.as_millis().div_ceil(1000).max(1) as u64;
                return self.refuse(key, now, limit, retry_after_secs);
            }
        }
        window.push_back(now);
        let used = window.len() as u64;
        self.stats.max_in_window = self.stats.max_in_window.max(used);
        let remaining = limit.map_or(0, |l| l.saturating_sub(used as u32));
        Admission::Accepted { limit, remaining }
    }

    /// Refuses a request by `key` at `now` whatever the budget says (the 429-storm fault).
    pub fn throttle(
        &mut self,
        key: &str,
        now: Instant,
        limit: Option<u32>,
        retry_after_secs: u64,
    ) -> Admission {
        self.arrive(key, now);
        self.refuse(key, now, limit.unwrap_or(0), retry_after_secs)
    }

    /// Counts a request that arrives while a `Retry-After` given to its key still runs.
    fn arrive(&mut self, key: &str, now: Instant) {
        if self.paused.get(key).is_some_and(|&until| now < until) {
            self.stats.during_pause += 1;
        }
    }

    fn refuse(&mut self, key: &str, now: Instant, limit: u32, retry_after_secs: u64) -> Admission {
        self.stats.rate_limited += 1;
        let until = now + Duration::from_secs(retry_after_secs);
        let paused = self.paused.entry(key.to_owned()).or_insert(until);
        *paused = (*paused).max(until);
        Admission::Limited {
            limit,
            retry_after_secs,
        }
    }

    /// Counts one response.
    pub fn record(&mut self, endpoint: &'static str, status: u16) {
        self.stats.total += 1;
        *self
            .stats
            .by_endpoint
            .entry((endpoint.to_owned(), status))
            .or_default() += 1;
    }

    /// A copy of the statistics so far.
    pub fn stats(&self) -> RequestStats {
        self.stats.clone()
    }
}

/// Endpoint templates as [`RequestStats`] keys them (paths below `/platform/v1`).
pub mod endpoints {
    /// `GET /workflows`
    pub const WORKFLOWS: &str = "/workflows";
    /// `GET /workflows/{workflow_id}`
    pub const WORKFLOW: &str = "/workflows/{workflow_id}";
    /// `GET /workflows/{workflow_id}/executions`
    pub const WORKFLOW_EXECUTIONS: &str = "/workflows/{workflow_id}/executions";
    /// `GET /workflow_executions/{execution_id}`
    pub const EXECUTION: &str = "/workflow_executions/{execution_id}";
    /// `GET /whatsapp/conversations`
    pub const CONVERSATIONS: &str = "/whatsapp/conversations";
    /// `GET /whatsapp/conversations/{conversation_id}`
    pub const CONVERSATION: &str = "/whatsapp/conversations/{conversation_id}";
    /// `GET /whatsapp/conversations/{conversation_id}/flow_executions`
    pub const CONVERSATION_EXECUTIONS: &str =
        "/whatsapp/conversations/{conversation_id}/flow_executions";
    /// `GET|POST /whatsapp/webhooks`
    pub const WEBHOOKS: &str = "/whatsapp/webhooks";
    /// `DELETE /whatsapp/webhooks/{webhook_id}`
    pub const WEBHOOK: &str = "/whatsapp/webhooks/{webhook_id}";
    /// Any other path.
    pub const OTHER: &str = "other";
}

/// The endpoint template a request path belongs to.
pub(crate) fn endpoint_of(path: &str) -> &'static str {
    let Some(rest) = path.strip_prefix("/platform/v1/") else {
        return endpoints::OTHER;
    };
    let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    match segments.as_slice() {
        ["workflows"] => endpoints::WORKFLOWS,
        ["workflows", _] => endpoints::WORKFLOW,
        ["workflows", _, "executions"] => endpoints::WORKFLOW_EXECUTIONS,
        ["workflow_executions", _] => endpoints::EXECUTION,
        ["whatsapp", "conversations"] => endpoints::CONVERSATIONS,
        ["whatsapp", "conversations", _] => endpoints::CONVERSATION,
        ["whatsapp", "conversations", _, "flow_executions"] => endpoints::CONVERSATION_EXECUTIONS,
        ["whatsapp", "webhooks"] => endpoints::WEBHOOKS,
        ["whatsapp", "webhooks", _] => endpoints::WEBHOOK,
        _ => endpoints::OTHER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_limits_and_reports_retry_after() {
        let mut t = Traffic::default();
        let start = Instant::now();
        for i in 0..5u32 {
            let at = start + Duration::from_secs(u64::from(i) * 10);
            assert_eq!(
                t.admit("k", at, Some(5)),
                Admission::Accepted {
                    limit: Some(5),
                    remaining: 4 - i
                }
            );
        }
        // At t=45 s the oldest (t=0) leaves the window at t=60 s.
        let limited = t.admit("k", start + Duration::from_secs(45), Some(5));
        assert_eq!(
            limited,
            Admission::Limited {
                limit: 5,
                retry_after_secs: 15
            }
        );
        // Another key has its own budget.
        assert!(matches!(
            t.admit("other", start, Some(5)),
            Admission::Accepted { .. }
        ));
        // Once the oldest leaves, one request fits again.
        assert!(matches!(
            t.admit("k", start + Duration::from_secs(60), Some(5)),
            Admission::Accepted { remaining: 0, .. }
        ));
        let stats = t.stats();
        assert_eq!(stats.rate_limited, 1);
        assert_eq!(stats.max_in_window, 5);
        assert_eq!(stats.during_pause, 0);
    }

    #[test]
    fn requests_inside_a_retry_after_are_counted() {
        let mut t = Traffic::default();
        let start = Instant::now();
        assert!(matches!(
            t.throttle("k", start, None, 2),
            Admission::Limited {
                retry_after_secs: 2,
                ..
            }
        ));
        // Another key is not paused; the same key one second later is.
        t.admit("other", start + Duration::from_secs(1), None);
        assert_eq!(t.stats().during_pause, 0);
        t.admit("k", start + Duration::from_secs(1), None);
        assert_eq!(t.stats().during_pause, 1);
        // At the end of the pause, requests are welcome again.
        t.admit("k", start + Duration::from_secs(2), None);
        let stats = t.stats();
        assert_eq!((stats.during_pause, stats.rate_limited), (1, 1));
    }

    #[test]
    fn zero_limit_refuses_everything() {
        let mut t = Traffic::default();
        assert_eq!(
            t.admit("k", Instant::now(), Some(0)),
            Admission::Limited {
                limit: 0,
                retry_after_secs: 60
            }
        );
    }

    #[test]
    fn paths_map_to_templates() {
        assert_eq!(endpoint_of("/platform/v1/workflows"), endpoints::WORKFLOWS);
        assert_eq!(
            endpoint_of("/platform/v1/workflows/x/executions"),
            endpoints::WORKFLOW_EXECUTIONS
        );
        assert_eq!(
            endpoint_of("/platform/v1/whatsapp/conversations/x/flow_executions"),
            endpoints::CONVERSATION_EXECUTIONS
        );
        assert_eq!(endpoint_of("/metrics"), endpoints::OTHER);
    }
}
