//! The only code that knows Kapso's URLs and JSON: client, tolerant models, errors, limiter.

pub mod client;
pub mod error;
pub mod limiter;
pub mod models;

pub use client::{
    ApiKey, ApiStats, Client, ExecutionFilter, ExecutionPages, RetryPolicy, endpoint, shown_url,
};
pub use error::ApiError;
pub use models::{Execution, ExecutionStatus, Workflow};
