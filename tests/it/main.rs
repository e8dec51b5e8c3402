//! The in-process tests, in one test binary (one link instead of twenty): the exporter, its
//! HTTP client and the simulator in this process, plus the checks of the shipped artefacts
//! (dashboards, alerts, manifests, chart). `cargo test --test it MODULE::` runs one module.
//! The tests that run the exporter's binary are in `tests/binary/`; the container image and
//! the Prometheus end-to-end tests have binaries of their own.
#![allow(clippy::unwrap_used)]

#[path = "../counting_support/mod.rs"]
mod counting_support;
#[path = "../grafana/mod.rs"]
mod grafana;
#[path = "../kube/mod.rs"]
mod kube;
#[path = "../sim_support/mod.rs"]
mod sim_support;
#[path = "../support/mod.rs"]
mod support;

mod artefacts;
mod client;
mod counting_model;
mod counting_regressions;
mod e2e_simulator;
mod exposition;
mod faults;
mod helm_chart;
mod http;
mod http_limits;
mod kubernetes_manifests;
mod proptest_decoding;
mod request_budget;
mod simulator_api;
mod simulator_contract;
mod simulator_variance;
mod simulator_webhooks;
mod steps;
mod supervision;
mod webhooks;
