//! What `--web.config.file` puts in front of every endpoint, in exporter-toolkit's order: the
//! rate limit (`429`), the configured response headers, then basic authentication (`401` with
//! `WWW-Authenticate: Basic`).
//!
//! bcrypt is slow on purpose (tens of milliseconds at cost 10), so as in exporter-toolkit a
//! verification result is cached per (user, hash, password) and only one verification runs at
//! a time, on a blocking thread: a flood of wrong passwords costs one core at most and never
//! delays a client whose credentials are cached. The cache keys are SHA-256 digests, so no
//! password is kept in memory. An unknown user is checked against a dummy hash of the same
//! cost, so response times do not reveal which users exist.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::web_config::{RateLimit, WebConfig};

/// Cached verification results; past this the cache is cleared (an attacker trying passwords
/// can only evict, never add a success).
const CACHE_SIZE: usize = 100;

struct Guard {
    users: HashMap<String, String>,
    /// A hash of no one's password, for unknown users.
    dummy_hash: String,
    cache: Mutex<HashMap<[u8; 32], bool>>,
    /// One bcrypt verification at a time.
    bcrypt: Semaphore,
    /// bcrypt verifications run so far.
    verifications: AtomicU64,
    headers: Vec<(HeaderName, HeaderValue)>,
    limiter: Option<Mutex<Bucket>>,
}

/// Wraps `router` with what `web` asks for; returns it unchanged when `web` asks for nothing.
pub fn protect(router: Router, web: &WebConfig) -> Router {
    if web.users.is_empty() && web.headers.is_empty() && web.rate_limit.is_none() {
        return router;
    }
    router.layer(axum::middleware::from_fn_with_state(
        Arc::new(Guard::new(web)),
        guard_request,
    ))
}

impl Guard {
    fn new(web: &WebConfig) -> Guard {
        let cost = web
            .users
            .values()
            .filter_map(|h| h.parse::<bcrypt::HashParts>().ok())
            .map(|p| p.get_cost())
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST);
        let dummy_hash = if web.users.is_empty() {
            String::new()
        } else {
            bcrypt::hash("kapso-exporter: no such user", cost).unwrap_or_default()
        };
        Guard {
            users: web.users.clone().into_iter().collect(),
            dummy_hash,
            cache: Mutex::new(HashMap::new()),
            bcrypt: Semaphore::new(1),
            verifications: AtomicU64::new(0),
            headers: web.headers.clone(),
            limiter: web.rate_limit.map(|r| Mutex::new(Bucket::new(r))),
        }
    }
}

async fn guard_request(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let mut response = if g.limiter.as_ref().is_some_and(|l| !lock(l).allow()) {
        (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n").into_response()
    } else if !g.users.is_empty() && !g.authorized(req.headers()).await {
        let mut r = (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
        r
    } else {
        next.run(req).await
    };
    for (name, value) in &g.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Guard {
    async fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some((user, password)) = credentials(headers) else {
            return false;
        };
        let (hash, known) = match self.users.get(&user) {
            Some(h) => (h.clone(), true),
            None => (self.dummy_hash.clone(), false),
        };
        let key = cache_key(&user, &hash, &password);
        if let Some(ok) = lock(&self.cache).get(&key) {
            return *ok && known;
        }
        let Ok(_slot) = self.bcrypt.acquire().await else {
            return false;
        };
        // Another request may have verified the same credentials while this one waited.
        if let Some(ok) = lock(&self.cache).get(&key) {
            return *ok && known;
        }
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let ok = tokio::task::spawn_blocking(move || {
            bcrypt::verify(password.as_bytes(), &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        let mut cache = lock(&self.cache);
        if cache.len() >= CACHE_SIZE {
            cache.clear();
        }
        cache.insert(key, ok);
        ok && known
    }
}

/// The user and password of an `Authorization: Basic` header.
fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn cache_key(user: &str, hash: &str, password: &str) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [user, hash, password] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

/// A token bucket like Go's `rate.Limiter`: `burst` tokens, one more every `interval`.
struct Bucket {
    limit: RateLimit,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(limit: RateLimit) -> Bucket {
        Bucket {
            limit,
            tokens: f64::from(limit.burst),
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let refill =
            now.duration_since(self.last).as_secs_f64() / self.limit.interval.as_secs_f64();
        self.tokens = (self.tokens + refill).min(f64::from(self.limit.burst));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn credentials_are_decoded_from_the_basic_header() {
        let mut h = HeaderMap::new();
        assert_eq!(credentials(&h), None);
        // "alice:pa:ss"
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("basic YWxpY2U6cGE6c3M="),
        );
        assert_eq!(
            credentials(&h),
            Some(("alice".to_owned(), "pa:ss".to_owned()))
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer YWxpY2U6cGE6c3M="),
        );
        assert_eq!(credentials(&h), None);
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {token}")).expect("header"),
        );
        h
    }

    #[tokio::test]
    async fn verifications_are_cached_and_never_run_twice_for_the_same_credentials() {
        let web = WebConfig {
            users: [("alice".to_owned(), bcrypt::hash("right", 4).expect("hash"))].into(),
            ..WebConfig::default()
        };
        let g = Arc::new(Guard::new(&web));
        let runs = |g: &Guard| g.verifications.load(Ordering::Relaxed);
        for _ in 0..5 {
            assert!(g.authorized(&basic("alice", "right")).await);
        }
        assert_eq!(runs(&g), 1);
        for _ in 0..3 {
            assert!(!g.authorized(&basic("alice", "wrong")).await);
        }
        assert_eq!(runs(&g), 2);
        // An unknown user costs a verification against the dummy hash, and never passes, even
        // with the dummy hash's own password.
        assert!(!g.authorized(&basic("mallory", "right")).await);
        assert!(
            !g.authorized(&basic("mallory", "kapso-exporter: no such user"))
                .await
        );
        assert_eq!(runs(&g), 4);
        assert!(!g.authorized(&HeaderMap::new()).await);
        assert_eq!(runs(&g), 4);

        // Ten concurrent first attempts with the same new credentials: one verification.
        let web = WebConfig {
            users: [("bob".to_owned(), bcrypt::hash("pw", 4).expect("hash"))].into(),
            ..WebConfig::default()
        };
        let g = Arc::new(Guard::new(&web));
        let attempts: Vec<_> = (0..10)
            .map(|_| {
                let g = g.clone();
                tokio::spawn(async move { g.authorized(&basic("bob", "pw")).await })
            })
            .collect();
        for a in attempts {
            assert!(a.await.expect("task"));
        }
        assert_eq!(runs(&g), 1);
    }

    #[test]
    fn cache_keys_separate_their_parts() {
        assert_ne!(cache_key("ab", "h", "c"), cache_key("a", "h", "bc"));
        assert_eq!(cache_key("a", "h", "b"), cache_key("a", "h", "b"));
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_bursts_then_one_per_interval() {
        let mut b = Bucket::new(RateLimit {
            interval: Duration::from_secs(1),
            burst: 2,
        });
        assert!(b.allow() && b.allow());
        assert!(!b.allow());
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert!(b.allow());
        assert!(!b.allow());
    }
}
