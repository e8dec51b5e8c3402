//! A small HTTP helper for tests that talk to a spawned simulator with real requests.
// Each test crate uses a different subset of these helpers.
#![allow(dead_code, clippy::unwrap_used)]

use kapso_exporter::simulator::RunningSimulator;
use serde_json::Value;

/// A client for one running simulator and API key.
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    pub key: String,
}

/// One response, kept whole so tests can look at status, headers and raw text.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    /// The body as JSON (panics with the body if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Api {
    pub fn new(running: &RunningSimulator, key: &str) -> Api {
        Api {
            client: reqwest::Client::new(),
            base: running.base_url.as_str().trim_end_matches('/').to_owned(),
            key: key.to_owned(),
        }
    }

    /// `GET {base}/{path}?{query}` with this API's key.
    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> Reply {
        self.get_as(Some(&self.key), path, query).await
    }

    /// `GET` with an explicit key (or none).
    pub async fn get_as(&self, key: Option<&str>, path: &str, query: &[(&str, &str)]) -> Reply {
        let mut req = self
            .client
            .get(format!("{}/{}", self.base, path))
            .query(query);
        if let Some(key) = key {
            req = req.header("X-API-Key", key);
        }
        let resp = req.send().await.expect("request reaches the simulator");
        Reply {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            text: resp.text().await.expect("body"),
        }
    }

    /// Every row of a cursor-paged list, following `paging.next` until it is null.
    pub async fn all_rows(&self, path: &str, query: &[(&str, &str)]) -> Vec<Value> {
        let mut rows = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..10_000 {
            let mut q: Vec<(&str, &str)> = query.to_vec();
            if let Some(a) = &after {
                q.push(("after", a));
            }
            let reply = self.get(path, &q).await;
            assert_eq!(reply.status, 200, "{path}: {}", reply.text);
            let body = reply.json();
            rows.extend(body["data"].as_array().unwrap().iter().cloned());
            match body["paging"]["next"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => return rows,
            }
        }
        panic!("{path}: paging did not end");
    }
}
