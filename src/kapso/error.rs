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
    #[error("{endpoint} returned more than {pages} pages, the ceiling of one list; paging stopped")]
    TooManyPages {
        endpoint: &'static str,
        pages: usize,
    },
    #[error(
        "{endpoint} returned {pages} pages in a row with no new row but another cursor; paging stopped"
    )]
    NoProgress {
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
            Self::CursorLoop { .. } | Self::TooManyPages { .. } | Self::NoProgress { .. } => {
                "paging"
            }
        }
    }

    /// Whether the error concerns the whole API key or the API as a whole, rather than only
    /// the resource asked for.
    ///
    /// A rejected key and a 429 hold for every request of the key. 5xx answers, timeouts and
    /// transport failures are counted as key-wide too: after the retries they say that Kapso
    /// (or the way to it) is unwell, and the next request, for whatever resource, would most
    /// likely meet the same fate, so going on would spend budget and time for nothing. A 4xx
    /// other than 401/403/429, an undecodable body, a paging guard and an id that cannot be a
    /// path segment concern only the resource asked for: another workflow can still be read.
    pub fn is_key_wide(&self) -> bool {
        match self {
            Self::Unauthorized { .. }
            | Self::RateLimited { .. }
            | Self::Server { .. }
            | Self::Timeout { .. }
            | Self::Transport { .. } => true,
            Self::Client { .. }
            | Self::Decode { .. }
            | Self::CursorLoop { .. }
            | Self::InvalidId { .. }
            | Self::TooManyPages { .. }
            | Self::NoProgress { .. } => false,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One error of every variant, each with its expected kind and scope.
    fn every_variant() -> Vec<(ApiError, &'static str, bool)> {
        let endpoint = "/workflows/{workflow_id}/executions";
        let message = String::from("m");
        vec![
            (
                ApiError::Unauthorized {
                    endpoint,
                    status: 401,
                    message: message.clone(),
                },
                "unauthorized",
                true,
            ),
            (ApiError::RateLimited { endpoint }, "rate_limited", true),
            (
                ApiError::Server {
                    endpoint,
                    status: 503,
                    message: message.clone(),
                },
                "server_error",
                true,
            ),
            (ApiError::Timeout { endpoint }, "timeout", true),
            (
                ApiError::Transport {
                    endpoint,
                    message: message.clone(),
                },
                "transport",
                true,
            ),
            (
                ApiError::Client {
                    endpoint,
                    status: 404,
                    message: message.clone(),
                },
                "client_error",
                false,
            ),
            (
                ApiError::InvalidId {
                    endpoint,
                    id: "..".to_owned(),
                },
                "client_error",
                false,
            ),
            (ApiError::Decode { endpoint, message }, "decode", false),
            (ApiError::CursorLoop { endpoint }, "paging", false),
            (
                ApiError::TooManyPages {
                    endpoint,
                    pages: 10,
                },
                "paging",
                false,
            ),
            (ApiError::NoProgress { endpoint, pages: 3 }, "paging", false),
        ]
    }

    #[test]
    fn only_key_and_api_errors_are_key_wide() {
        for (err, kind, key_wide) in every_variant() {
            assert_eq!(err.kind(), kind, "{err:?}");
            assert!(ApiError::KINDS.contains(&err.kind()), "{err:?}");
            assert_eq!(err.is_key_wide(), key_wide, "{err:?}");
        }
    }

    #[test]
    fn paging_messages_name_the_guard() {
        let endpoint = "/workflows";
        let loop_ = ApiError::CursorLoop { endpoint }.to_string();
        assert!(loop_.contains("cursor it had already returned"), "{loop_}");
        let ceiling = ApiError::TooManyPages {
            endpoint,
            pages: 100,
        }
        .to_string();
        assert!(
            ceiling.contains("ceiling") && ceiling.contains("100"),
            "{ceiling}"
        );
        let stall = ApiError::NoProgress { endpoint, pages: 3 }.to_string();
        assert!(
            stall.contains("no new row") && stall.contains('3'),
            "{stall}"
        );
    }
}
