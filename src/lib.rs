//! kapso-exporter: a Prometheus exporter for Kapso workflow executions.
//!
//! Data flows one way: [`config`] -> [`app`] (wiring) -> [`poller`] -> [`kapso`] (HTTP client)
//! -> Kapso API or [`simulator`]; the poller writes snapshots into [`state`], which
//! [`metrics`] encodes at scrape time for [`http`].

pub mod clock;
pub mod simulator;
