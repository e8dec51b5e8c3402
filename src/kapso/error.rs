//! Errors of the Kapso client, each with the `kind` label used by `kapso_poll_errors_total`.

/// Why a Kapso request (after its retries) failed. Messages never contain the API key.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Kapso rejected the API key on {endpoint} (HTTP {status}): {message}")]
    Unauthorized {
        endpoint: &'static str,
        status: u16,
        message: String,
    },
    #[error("Kapso rate-limited {endpoint} (HTTP 429) and retries are exhausted")]
    RateLimited { endpoint: &'static str },
    #[error("Kapso answered HTTP {status} on {endpoint}: {message}")]
    Server {
        endpoint: &'static str,
        status: u16,
        message: String,
    },
    #[error("Kapso answered HTTP {status} on {endpoint}: {message}")]
    Client {
        endpoint: &'static str,
        status: u16,
        message: String,
    },
    #[error("request to {endpoint} timed out")]
    Timeout { endpoint: &'static str },
    #[error("cannot reach Kapso for {endpoint}: {message}")]
    Transport {
        endpoint: &'static str,
        message: String,
    },
    #[error("cannot decode the response of {endpoint}: {message}")]
    Decode {
        endpoint: &'static str,
        message: String,
    },
    #[error("{endpoint} returned a cursor it had already returned; paging stopped")]
    CursorLoop { endpoint: &'static str },
    #[error("refusing to request {endpoint} for the id {id:?}: not usable as a path segment")]
    InvalidId { endpoint: &'static str, id: String },
    #[error("{endpoint} returned more than {pages} pages; paging stopped")]
    TooManyPages {
        endpoint: &'static str,
        pages: usize,
    },
}

impl ApiError {
    /// A short, bounded label value for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unauthorized { .. } => "unauthorized",
            Self::RateLimited { .. } => "rate_limited",
            Self::Server { .. } => "server_error",
            Self::Client { .. } | Self::InvalidId { .. } => "client_error",
            Self::Timeout { .. } => "timeout",
            Self::Transport { .. } => "transport",
            Self::Decode { .. } => "decode",
            Self::CursorLoop { .. } | Self::TooManyPages { .. } => "paging",
        }
    }

    /// SHIM (replaced by the client branch): whether the error concerns the whole key.
    pub fn is_key_wide(&self) -> bool {
        matches!(
            self,
            Self::Unauthorized { .. }
                | Self::RateLimited { .. }
                | Self::Server { .. }
                | Self::Timeout { .. }
                | Self::Transport { .. }
        )
    }

    /// All error kinds, so the error counter can be zero-filled.
    pub const KINDS: [&'static str; 8] = [
        "unauthorized",
        "rate_limited",
        "server_error",
        "client_error",
        "timeout",
        "transport",
        "decode",
        "paging",
    ];
}
