//! The tests that run the exporter's binary (`CARGO_BIN_EXE_kapso-exporter`): its command
//! line, signals, restarts, secrets and TLS. `cargo test --test binary MODULE::` runs one module.
#![allow(clippy::unwrap_used)]

#[path = "../counting_support/mod.rs"]
mod counting_support;
#[path = "../support/mod.rs"]
mod support;

mod cli;
mod restart;
mod secrets;
mod web_config;
