//! kapso-exporter: a Prometheus exporter for Kapso workflow executions.
//!
//! Data flows one way: [`config`] -> [`app`] (wiring) -> [`poller`] -> [`kapso`] (HTTP client)
//! -> Kapso API or [`simulator`]; the poller writes snapshots into [`state`], which
//! [`metrics`] encodes at scrape time for [`http`]. [`supervisor`] watches the background tasks.

pub mod app;
pub mod clock;
pub mod config;
pub mod http;
pub mod kapso;
pub mod logging;
pub mod metrics;
pub mod poller;
pub mod simulator;
pub mod state;
pub mod storage;
pub mod supervisor;
pub mod web_config;
pub mod webhook;
