//! The web configuration file (`--web.config.file`) in the Prometheus exporter-toolkit format:
//! TLS (`tls_server_config`), response headers (`http_server_config.headers`), basic
//! authentication (`basic_auth_users`, bcrypt hashes) and a request rate limit (`rate_limit`).
//!
//! The file is read and checked once at startup: certificates and keys are parsed, their pair
//! is matched, every password is a bcrypt hash. Only a renewed `cert_file`/`key_file` pair is
//! picked up later, by the next handshakes (see [`ServerCert`]). Relative paths are relative to the file's
//! directory, as in exporter-toolkit. A key the exporter cannot honour is an error naming it,
//! never silently ignored; the few accepted without effect are documented in the README.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderName, HeaderValue};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    SupportedProtocolVersion,
};
use serde::Deserialize;

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

/// How the server treats client certificates (Go's `tls.ClientAuthType` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientAuth {
    None,
    Request,
    RequireAny,
    VerifyIfGiven,
    RequireAndVerify,
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
) -> Result<Option<(Vec<u8>, String)>, String> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(format!(
            "tls_server_config: set {name} or {name}_file, not both"
        )),
        (Some(text), None) => Ok(Some((text.as_bytes().to_vec(), format!("{name} (inline)")))),
        (None, Some(path)) => {
            let path = resolve(base, path);
            let bytes = std::fs::read(&path)
                .map_err(|e| format!("cannot read {name}_file {}: {e}", path.display()))?;
            Ok(Some((bytes, format!("{name}_file {}", path.display()))))
        }
        (None, None) => Ok(None),
    }
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what} holds no PEM certificate"));
    }
    Ok(certs)
}

fn tls_config(t: FileTls, base: &Path) -> Result<Option<Arc<ServerConfig>>, String> {
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
        // As in exporter-toolkit: without certificates or client auth, plain HTTP.
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
    let files = match (set(&t.cert_file), set(&t.key_file)) {
        (Some(c), Some(k)) => Some((resolve(base, c), resolve(base, k))),
        _ => None,
    };

    let client_auth = match set(&t.client_auth_type).unwrap_or("NoClientCert") {
        "NoClientCert" => ClientAuth::None,
        "RequestClientCert" => ClientAuth::Request,
        // "RequireClientCert" is exporter-toolkit's backwards-compatible alias.
        "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAny,
        "VerifyClientCertIfGiven" => ClientAuth::VerifyIfGiven,
        "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerify,
        other => {
            return Err(format!(
                "tls_server_config.client_auth_type {other:?} is not one of NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert"
            ));
        }
    };
    if client_ca.is_some() && client_auth == ClientAuth::None {
        return Err(
            "tls_server_config: client_ca_file is set but client_auth_type is NoClientCert (use RequireAndVerifyClientCert)"
                .to_owned(),
        );
    }
    let allowed_sans = t.client_allowed_sans.clone().unwrap_or_default();
    if t.client_allowed_sans.is_some()
        && !matches!(
            client_auth,
            ClientAuth::RequireAny | ClientAuth::RequireAndVerify
        )
    {
        return Err(
            "tls_server_config.client_allowed_sans needs client_auth_type RequireAnyClientCert or RequireAndVerifyClientCert"
                .to_owned(),
        );
    }
    let versions = protocol_versions(set(&t.min_version), set(&t.max_version))?;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if let Some(names) = &t.cipher_suites {
        provider.cipher_suites = cipher_suites(names)?;
    }
    if let Some(names) = &t.curve_preferences {
        provider.kx_groups = curves(names)?;
    }
    let provider = Arc::new(provider);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls_server_config: {e}"))?;
    let verifier: Option<Arc<dyn ClientCertVerifier>> = match client_auth {
        ClientAuth::None => None,
        ClientAuth::Request | ClientAuth::RequireAny => Some(Arc::new(AnyClientCert {
            mandatory: client_auth == ClientAuth::RequireAny,
            algorithms: provider.signature_verification_algorithms,
        })),
        ClientAuth::VerifyIfGiven | ClientAuth::RequireAndVerify => {
            let (pem, what) = client_ca.ok_or_else(|| {
                format!(
                    "tls_server_config: client_auth_type {} needs client_ca_file or client_ca",
                    set(&t.client_auth_type).unwrap_or_default()
                )
            })?;
            let mut roots = RootCertStore::empty();
            for ca in certificates(&pem, &what)? {
                roots
                    .add(ca)
                    .map_err(|e| format!("{what} holds an unusable CA certificate: {e}"))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = if client_auth == ClientAuth::VerifyIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            Some(
                verifier
                    .build()
                    .map_err(|e| format!("tls_server_config: {what}: {e}"))?,
            )
        }
    };
    let builder = match verifier {
        None => builder.with_no_client_auth(),
        Some(v) if t.client_allowed_sans.is_some() => {
            builder.with_client_cert_verifier(Arc::new(AllowedSans {
                inner: v,
                allowed: allowed_sans,
            }))
        }
        Some(v) => builder.with_client_cert_verifier(v),
    };
    let certified = certified_key(&cert.0, &cert.1, &key.0, &key.1, &provider)?;
    let mut config = builder.with_cert_resolver(Arc::new(ServerCert {
        provider: provider.clone(),
        files,
        current: Mutex::new(Current {
            cert_pem: cert.0,
            key_pem: key.0,
            key: certified,
            checked: Instant::now(),
        }),
    }));
    config.ignore_client_order = t.prefer_server_cipher_suites.unwrap_or(true);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// A certificate chain and its key, checked to belong together.
fn certified_key(
    cert_pem: &[u8],
    cert_what: &str,
    key_pem: &[u8],
    key_what: &str,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let chain = certificates(cert_pem, cert_what)?;
    let private_key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("{key_what} holds no usable PEM private key: {e}"))?;
    CertifiedKey::from_der(chain, private_key, provider)
        .map(Arc::new)
        .map_err(|e| format!("{cert_what} and {key_what} do not make a usable pair: {e}"))
}

/// How often a handshake may look for a renewed certificate.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// The server certificate. When it comes from `cert_file` and `key_file`, a handshake rereads
/// them (at most once per [`RELOAD_CHECK`]) and switches to a renewed pair, as exporter-toolkit
/// does; a pair that does not load is logged and the previous one kept.
struct ServerCert {
    provider: Arc<CryptoProvider>,
    files: Option<(PathBuf, PathBuf)>,
    current: Mutex<Current>,
}

struct Current {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    key: Arc<CertifiedKey>,
    checked: Instant,
}

impl fmt::Debug for ServerCert {
    // The key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCert")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerCert {
    fn reload(&self, current: &mut Current, cert_file: &Path, key_file: &Path) {
        let (Ok(cert_pem), Ok(key_pem)) = (std::fs::read(cert_file), std::fs::read(key_file))
        else {
            tracing::warn!(cert_file = %cert_file.display(), key_file = %key_file.display(), "cannot read the TLS certificate files; serving the previous certificate");
            return;
        };
        if cert_pem == current.cert_pem && key_pem == current.key_pem {
            return;
        }
        let cert_what = format!("cert_file {}", cert_file.display());
        let key_what = format!("key_file {}", key_file.display());
        match certified_key(&cert_pem, &cert_what, &key_pem, &key_what, &self.provider) {
            Ok(key) => {
                tracing::info!(cert_file = %cert_file.display(), "loaded a renewed TLS certificate");
                *current = Current {
                    cert_pem,
                    key_pem,
                    key,
                    checked: current.checked,
                };
            }
            Err(e) => {
                // Often a renewal caught half-written; the next check will see it whole.
                tracing::warn!(error = %e, "the changed TLS certificate does not load; serving the previous one");
            }
        }
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((cert_file, key_file)) = &self.files {
            if current.checked.elapsed() >= RELOAD_CHECK {
                current.checked = Instant::now();
                self.reload(&mut current, cert_file, key_file);
            }
        }
        Some(current.key.clone())
    }
}

fn protocol_versions(
    min: Option<&str>,
    max: Option<&str>,
) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
    let rank = |key: &str, v: &str| match v {
        "TLS12" => Ok(12),
        "TLS13" => Ok(13),
        "TLS10" | "TLS11" => Err(format!(
            "tls_server_config.{key} {v} is not supported: kapso-exporter speaks TLS12 and TLS13 only"
        )),
        other => Err(format!(
            "tls_server_config.{key} {other:?} is not one of TLS12, TLS13"
        )),
    };
    let min = min
        .map(|v| rank("min_version", v))
        .transpose()?
        .unwrap_or(12);
    let max = max
        .map(|v| rank("max_version", v))
        .transpose()?
        .unwrap_or(13);
    if min > max {
        return Err("tls_server_config: min_version is above max_version".to_owned());
    }
    let mut versions = Vec::new();
    if max >= 13 {
        versions.push(&rustls::version::TLS13);
    }
    if min <= 12 {
        versions.push(&rustls::version::TLS12);
    }
    Ok(versions)
}

/// Go's names of TLS 1.2 suites, which are the IANA names rustls uses. As in Go, the list
/// restricts TLS 1.2 only; TLS 1.3 suites stay enabled (naming them is accepted).
fn cipher_suites(names: &[String]) -> Result<Vec<rustls::SupportedCipherSuite>, String> {
    let all = rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES;
    let mut tls12 = Vec::new();
    for name in names {
        if matches!(
            name.as_str(),
            "TLS_AES_128_GCM_SHA256" | "TLS_AES_256_GCM_SHA384" | "TLS_CHACHA20_POLY1305_SHA256"
        ) {
            continue;
        }
        // Go also knows the ChaCha20 suites without their hash suffix.
        let wanted = match name.as_str() {
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => {
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
            }
            other => other,
        };
        let suite = all
            .iter()
            .find(|s| {
                s.version() == &rustls::version::TLS12 && format!("{:?}", s.suite()) == wanted
            })
            .ok_or_else(|| {
                format!(
                    "tls_server_config.cipher_suites: {name:?} is not supported (supported: {})",
                    all.iter()
                        .filter(|s| s.version() == &rustls::version::TLS12)
                        .map(|s| format!("{:?}", s.suite()))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        tls12.push(*suite);
    }
    let mut suites: Vec<_> = all
        .iter()
        .filter(|s| s.version() == &rustls::version::TLS13)
        .copied()
        .collect();
    suites.extend(tls12);
    Ok(suites)
}

fn curves(names: &[String]) -> Result<Vec<&'static dyn rustls::crypto::SupportedKxGroup>, String> {
    use rustls::crypto::aws_lc_rs::kx_group;
    names
        .iter()
        .map(|name| match name.as_str() {
            "X25519" => Ok(kx_group::X25519),
            "CurveP256" => Ok(kx_group::SECP256R1),
            "CurveP384" => Ok(kx_group::SECP384R1),
            other => Err(format!(
                "tls_server_config.curve_preferences: {other:?} is not supported (supported: X25519, CurveP256, CurveP384)"
            )),
        })
        .collect()
}

/// `RequestClientCert` and `RequireAnyClientCert`: a client certificate is asked for (and
/// with `mandatory` required) but not verified against any CA, as in Go. Its signature over
/// the handshake is still checked, so the client holds the certificate's key.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `client_allowed_sans`: after `inner` accepted the certificate, one of its subject
/// alternative names (DNS, e-mail, IP or URI, as Go prints them) must be in `allowed`.
#[derive(Debug)]
struct AllowedSans {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

/// The subject alternative names of a DER certificate, as strings.
fn subject_alt_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                Some((*s).to_owned())
            }
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| std::net::Ipv4Addr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| std::net::Ipv6Addr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

impl ClientCertVerifier for AllowedSans {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if subject_alt_names(end_entity)
            .iter()
            .any(|san| self.allowed.contains(san))
        {
            Ok(verified)
        } else {
            Err(rustls::Error::General(
                "the client certificate has none of client_allowed_sans".to_owned(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
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

    #[test]
    fn subject_alt_names_are_printed_as_go_prints_them() {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec![
            "prometheus.example".to_owned(),
            "10.0.0.1".to_owned(),
            "::1".to_owned(),
        ])
        .expect("params");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(
            subject_alt_names(cert.der()),
            ["prometheus.example", "10.0.0.1", "::1"]
        );
        assert!(subject_alt_names(b"not a certificate").is_empty());
    }

    #[test]
    fn protocol_versions_follow_min_and_max() {
        assert_eq!(protocol_versions(None, None).expect("valid").len(), 2);
        let v = protocol_versions(Some("TLS13"), None).expect("valid");
        assert_eq!(v, [&rustls::version::TLS13]);
        let v = protocol_versions(None, Some("TLS12")).expect("valid");
        assert_eq!(v, [&rustls::version::TLS12]);
        assert!(
            protocol_versions(Some("TLS10"), None)
                .expect_err("old")
                .contains("TLS12 and TLS13 only")
        );
        assert!(protocol_versions(Some("TLS13"), Some("TLS12")).is_err());
    }

    #[test]
    fn cipher_suites_and_curves_map_go_names() {
        let suites = cipher_suites(&[
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".to_owned(),
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305".to_owned(),
            "TLS_AES_128_GCM_SHA256".to_owned(),
        ])
        .expect("valid");
        let tls12: Vec<String> = suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(
            tls12,
            [
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"
            ]
        );
        assert!(
            suites
                .iter()
                .any(|s| s.version() == &rustls::version::TLS13)
        );
        let e = cipher_suites(&["TLS_RSA_WITH_AES_128_CBC_SHA".to_owned()]).expect_err("cbc");
        assert!(e.contains("TLS_RSA_WITH_AES_128_CBC_SHA"), "{e}");
        assert_eq!(
            curves(&["X25519".to_owned(), "CurveP256".to_owned()])
                .expect("valid")
                .len(),
            2
        );
        assert!(curves(&["CurveP521".to_owned()]).is_err());
    }
}
