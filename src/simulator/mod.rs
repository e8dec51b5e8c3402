//! TEMPORARY compile stub; replaced by the real simulator.
#![allow(missing_docs, clippy::unused_async)]
use crate::clock::Clock;
pub struct SimulatorConfig {
    pub api_key: String,
}
impl SimulatorConfig {
    pub fn demo() -> Self {
        Self {
            api_key: "demo".into(),
        }
    }
}
#[derive(Clone)]
pub struct Simulator;
pub struct RunningSimulator {
    pub base_url: url::Url,
}
impl Simulator {
    pub fn new(_c: SimulatorConfig, _clock: Clock) -> Self {
        Self
    }
    pub async fn spawn(&self) -> std::io::Result<RunningSimulator> {
        Err(std::io::Error::other("stub"))
    }
    pub fn tick(&self, _d: std::time::Duration) {}
}
