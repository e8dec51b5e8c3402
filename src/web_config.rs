//! The web configuration file (`--web.config.file`) in the Prometheus exporter-toolkit format:
//! TLS (`tls_server_config`), response headers (`http_server_config.headers`), basic
//! authentication (`basic_auth_users`, bcrypt hashes) and a request rate limit (`rate_limit`).
//!
//! This module owns the file's schema and its validation. The file is read and checked once at
//! startup: certificates and keys are parsed, their pair is matched (by [`crate::http::tls`],
//! which assembles the rustls configuration), every password is a bcrypt hash. Only a renewed
//! `cert_file`/`key_file` pair is picked up later, by the next handshakes. Relative paths are
//! relative to the file's directory, as in exporter-toolkit. A key the exporter cannot honour is an error naming it,
//! never silently ignored; the few accepted without effect are documented in the README.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use rustls::ServerConfig;
use serde::Deserialize;

use crate::http::tls::{self, ClientCerts, Pem, TlsSettings};

/// The validated web configuration.
#[derive(Clone, Default)]
pub struct WebConfig {
    /// Serve HTTPS with this configuration; plain HTTP when `None`.
    pub tls: Option<Arc<ServerConfig>>,
    /// Users and their bcrypt hashes; empty means no authentication.
    pub users: BTreeMap<String, String>,
    /// Headers added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub rate_limit: Option<RateLimit>,
}

impl fmt::Debug for WebConfig {
    // Hashes stay out of logs and panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("headers", &self.headers)
            .field("rate_limit", &self.rate_limit)
            .finish()
    }
}

/// A token bucket: one request per `interval`, bursts of up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub interval: Duration,
    pub burst: u32,
}

/// The headers exporter-toolkit lets a file set, with their allowed values (any if empty).
const ALLOWED_HEADERS: &[(&str, &[&str])] = &[
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<FileTls>,
    http_server_config: Option<FileHttp>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    rate_limit: Option<FileRateLimit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    curve_preferences: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHttp {
    /// Accepted for compatibility; the exporter speaks HTTP/1.1 only.
    #[expect(dead_code, reason = "accepted and documented as without effect")]
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRateLimit {
    interval: Option<String>,
    burst: Option<u32>,
}

impl WebConfig {
    /// Reads and validates the file at `path`. The error is one line without the path.
    pub fn load(path: &Path) -> Result<WebConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        WebConfig::parse(&text, &base)
    }

    /// Validates the text of a web configuration file whose relative paths start at `base`.
    pub fn parse(text: &str, base: &Path) -> Result<WebConfig, String> {
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_norway::from_str(text).map_err(|e| e.to_string().replace('\n', " "))?
        };
        let tls = match file.tls_server_config {
            Some(t) => tls_config(t, base)?,
            None => None,
        };
        let mut users = BTreeMap::new();
        for (user, hash) in file.basic_auth_users.unwrap_or_default() {
            if user.contains(':') {
                return Err(format!(
                    "basic_auth_users: user name {user:?} contains ':', which basic authentication cannot carry"
                ));
            }
            check_bcrypt(&hash).map_err(|e| {
                format!("basic_auth_users: the password of {user:?} is not a bcrypt hash ({e})")
            })?;
            users.insert(user, hash);
        }
        let mut headers = Vec::new();
        for (name, value) in file
            .http_server_config
            .and_then(|h| h.headers)
            .unwrap_or_default()
        {
            let Some((_, allowed)) = ALLOWED_HEADERS.iter().find(|(n, _)| *n == name) else {
                return Err(format!(
                    "http_server_config.headers: HTTP header {name:?} can not be configured (allowed: {})",
                    ALLOWED_HEADERS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            };
            if value.is_empty() {
                continue;
            }
            if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
                return Err(format!(
                    "http_server_config.headers: {name} must be one of {allowed:?}, not {value:?}"
                ));
            }
            let value = HeaderValue::from_str(&value).map_err(|_| {
                format!(
                    "http_server_config.headers: {name} value {value:?} is not a valid header value"
                )
            })?;
            headers.push((HeaderName::from_static(header_name(&name)), value));
        }
        let rate_limit = match file.rate_limit {
            Some(r) => rate_limit(r)?,
            None => None,
        };
        Ok(WebConfig {
            tls,
            users,
            headers,
            rate_limit,
        })
    }

    /// A short description for the startup log line.
    pub fn describe(&self) -> String {
        let mut parts = vec![
            if self.tls.is_some() {
                "TLS"
            } else {
                "plain HTTP"
            }
            .to_owned(),
        ];
        if !self.users.is_empty() {
            parts.push(format!("basic auth ({} users)", self.users.len()));
        }
        if let Some(r) = self.rate_limit {
            parts.push(format!(
                "rate limit 1 per {} (burst {})",
                humantime::format_duration(r.interval),
                r.burst
            ));
        }
        parts.join(", ")
    }
}

fn header_name(name: &str) -> &'static str {
    match name {
        "Strict-Transport-Security" => "strict-transport-security",
        "X-Content-Type-Options" => "x-content-type-options",
        "X-Frame-Options" => "x-frame-options",
        "X-XSS-Protection" => "x-xss-protection",
        _ => "content-security-policy",
    }
}

/// A bcrypt hash as `htpasswd -B` or Go's bcrypt writes it: `$2[abxy]$cost$salt+hash`.
fn check_bcrypt(hash: &str) -> Result<(), String> {
    let parts = bcrypt::HashParts::from_str(hash).map_err(|e| e.to_string())?;
    let cost = parts.get_cost();
    if !(4..=31).contains(&cost) {
        return Err(format!("cost {cost} is outside 4..31"));
    }
    Ok(())
}

fn rate_limit(r: FileRateLimit) -> Result<Option<RateLimit>, String> {
    let interval = match r.interval.as_deref().map(str::trim) {
        None | Some("") | Some("0") => Duration::ZERO,
        Some(v) => humantime::parse_duration(v).map_err(|e| {
            format!("rate_limit.interval {v:?} is not a duration like 1s or 100ms: {e}")
        })?,
    };
    if interval.is_zero() {
        // exporter-toolkit: an interval of 0 disables the limiter.
        return Ok(None);
    }
    let burst = r.burst.unwrap_or(0);
    if burst == 0 {
        return Err(
            "rate_limit.burst must be at least 1 (0 would refuse every request)".to_owned(),
        );
    }
    Ok(Some(RateLimit { interval, burst }))
}

/// Present and non-empty (Go treats an empty string as unset).
fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

fn resolve(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// PEM text from `name_file` (a path) or `name` (inline), never both.
fn pem_source(
    inline: Option<&str>,
    file: Option<&str>,
    name: &str,
    base: &Path,
) -> Result<Option<Pem>, String> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(format!(
            "tls_server_config: set {name} or {name}_file, not both"
        )),
        (Some(text), None) => Ok(Some(Pem {
            bytes: text.as_bytes().to_vec(),
            what: format!("{name} (inline)"),
        })),
        (None, Some(path)) => {
            let path = resolve(base, path);
            let bytes = std::fs::read(&path)
                .map_err(|e| format!("cannot read {name}_file {}: {e}", path.display()))?;
            Ok(Some(Pem {
                bytes,
                what: format!("{name}_file {}", path.display()),
            }))
        }
        (None, None) => Ok(None),
    }
}

/// The TLS server configuration of `tls_server_config`, `None` when it sets neither
/// certificates nor client authentication (plain HTTP, as in exporter-toolkit).
fn tls_config(t: FileTls, base: &Path) -> Result<Option<Arc<ServerConfig>>, String> {
    match tls_settings(t, base)? {
        Some(settings) => tls::server_config(settings).map(Some),
        None => Ok(None),
    }
}

/// The keys of `tls_server_config` checked against each other, PEM sources read.
fn tls_settings(t: FileTls, base: &Path) -> Result<Option<TlsSettings>, String> {
    let enabled = [
        &t.cert,
        &t.key,
        &t.client_ca,
        &t.cert_file,
        &t.key_file,
        &t.client_ca_file,
        &t.client_auth_type,
    ]
    .iter()
    .any(|v| set(v).is_some());
    if !enabled {
        return Ok(None);
    }
    if set(&t.cert).is_none() && set(&t.cert_file).is_none() {
        return Err("tls_server_config: missing one of cert or cert_file".to_owned());
    }
    if set(&t.key).is_none() && set(&t.key_file).is_none() {
        return Err("tls_server_config: missing one of key or key_file".to_owned());
    }
    let cert = pem_source(set(&t.cert), set(&t.cert_file), "cert", base)?
        .ok_or("tls_server_config: missing one of cert or cert_file")?;
    let key = pem_source(set(&t.key), set(&t.key_file), "key", base)?
        .ok_or("tls_server_config: missing one of key or key_file")?;
    let client_ca = pem_source(set(&t.client_ca), set(&t.client_ca_file), "client_ca", base)?;
    let reload_from = match (set(&t.cert_file), set(&t.key_file)) {
        (Some(c), Some(k)) => Some((resolve(base, c), resolve(base, k))),
        _ => None,
    };
    let auth_type = set(&t.client_auth_type).unwrap_or("NoClientCert");
    let (verified, mandatory) = match auth_type {
        "NoClientCert" => (None, false),
        "RequestClientCert" => (Some(false), false),
        // "RequireClientCert" is exporter-toolkit's backwards-compatible alias.
        "RequireAnyClientCert" | "RequireClientCert" => (Some(false), true),
        "VerifyClientCertIfGiven" => (Some(true), false),
        "RequireAndVerifyClientCert" => (Some(true), true),
        other => {
            return Err(format!(
                "tls_server_config.client_auth_type {other:?} is not one of NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert"
            ));
        }
    };
    if client_ca.is_some() && verified.is_none() {
        return Err(
            "tls_server_config: client_ca_file is set but client_auth_type is NoClientCert (use RequireAndVerifyClientCert)"
                .to_owned(),
        );
    }
    if t.client_allowed_sans.is_some() && !mandatory {
        return Err(
            "tls_server_config.client_allowed_sans needs client_auth_type RequireAnyClientCert or RequireAndVerifyClientCert"
                .to_owned(),
        );
    }
    let client_certs = match verified {
        None => ClientCerts::None,
        Some(false) => ClientCerts::Any { mandatory },
        Some(true) => ClientCerts::Verified {
            ca: client_ca.ok_or_else(|| {
                format!(
                    "tls_server_config: client_auth_type {auth_type} needs client_ca_file or client_ca"
                )
            })?,
            mandatory,
        },
    };
    Ok(Some(TlsSettings {
        cert,
        key,
        reload_from,
        client_certs,
        allowed_sans: t.client_allowed_sans,
        min_version: set(&t.min_version).map(str::to_owned),
        max_version: set(&t.max_version).map(str::to_owned),
        cipher_suites: t.cipher_suites,
        curve_preferences: t.curve_preferences,
        prefer_server_cipher_suites: t.prefer_server_cipher_suites.unwrap_or(true),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bcrypt of "secret" at cost 4.
    fn hash() -> String {
        bcrypt::hash("secret", 4).expect("hash")
    }

    #[test]
    fn empty_file_is_plain_http_without_auth() {
        let c = WebConfig::parse("", Path::new(".")).expect("valid");
        assert!(c.tls.is_none() && c.users.is_empty() && c.rate_limit.is_none());
        assert_eq!(c.describe(), "plain HTTP");
    }

    #[test]
    fn users_headers_and_rate_limit_are_read() {
        let text = format!(
            "basic_auth_users:\n  alice: '{}'\nhttp_server_config:\n  http2: true\n  headers:\n    X-Frame-Options: deny\n    Content-Security-Policy: ''\nrate_limit:\n  interval: 100ms\n  burst: 5\n",
            hash()
        );
        let c = WebConfig::parse(&text, Path::new(".")).expect("valid");
        assert_eq!(c.users.keys().collect::<Vec<_>>(), ["alice"]);
        assert_eq!(c.headers.len(), 1);
        assert_eq!(c.headers[0].0, "x-frame-options");
        assert_eq!(
            c.rate_limit,
            Some(RateLimit {
                interval: Duration::from_millis(100),
                burst: 5
            })
        );
        assert!(!format!("{c:?}").contains("$2"), "hash in Debug: {c:?}");
    }

    #[test]
    fn rejects_what_it_cannot_honour_with_one_line_naming_the_key() {
        let cases = [
            ("tls_server_config:\n  cert_fille: x\n", "cert_fille"),
            ("basic_auth_users:\n  bob: plain\n", "bob"),
            ("basic_auth_users:\n  'a:b': x\n", "':'"),
            (
                "http_server_config:\n  headers:\n    Server: x\n",
                "\"Server\"",
            ),
            (
                "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
                "X-Frame-Options",
            ),
            ("rate_limit:\n  interval: 1s\n", "rate_limit.burst"),
            (
                "rate_limit:\n  interval: often\n  burst: 1\n",
                "rate_limit.interval",
            ),
            (
                "tls_server_config:\n  cert_file: c.pem\n",
                "key or key_file",
            ),
            (
                "tls_server_config:\n  cert_file: /nonexistent/c.pem\n  key_file: k.pem\n",
                "/nonexistent/c.pem",
            ),
            (
                "tls_server_config:\n  cert: x\n  cert_file: y\n  key: z\n",
                "cert or cert_file",
            ),
            ("unknown_top: 1\n", "unknown_top"),
        ];
        for (text, needle) in cases {
            let e = WebConfig::parse(text, Path::new("/tmp")).expect_err(text);
            assert!(e.contains(needle), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{text:?}: not one line: {e}");
        }
    }
}
