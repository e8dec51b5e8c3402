//! TLS for the HTTP servers: the rustls configuration assembled from a validated
//! `tls_server_config` (see [`crate::web_config`], which owns the file's schema), the server
//! certificate that a handshake reloads when its files were renewed, and the one client
//! certificate verifier behind every `client_auth_type`.
//!
//! Go's names (protocol versions, cipher suites, curves) are mapped to rustls here; a name
//! rustls cannot honour is an error naming the key, found at startup.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// PEM text and where it came from (`cert_file /etc/x.pem`, `key (inline)`), for errors.
#[derive(Clone)]
pub(crate) struct Pem {
    pub bytes: Vec<u8>,
    pub what: String,
}

/// How the server treats client certificates (Go's `tls.ClientAuthType`).
pub(crate) enum ClientCerts {
    /// `NoClientCert`.
    None,
    /// `RequestClientCert` and (`mandatory`) `RequireAnyClientCert`: asked for, not verified
    /// against any CA, as in Go.
    Any { mandatory: bool },
    /// `VerifyClientCertIfGiven` and (`mandatory`) `RequireAndVerifyClientCert`: verified
    /// against the CA certificates of `ca`.
    Verified { ca: Pem, mandatory: bool },
}

/// A `tls_server_config` whose keys were checked against the schema; what is left to check
/// needs rustls (names it supports, certificates and keys that parse and match).
pub(crate) struct TlsSettings {
    pub cert: Pem,
    pub key: Pem,
    /// `cert_file` and `key_file`, when both are files: reread after renewals.
    pub reload_from: Option<(PathBuf, PathBuf)>,
    pub client_certs: ClientCerts,
    /// `client_allowed_sans`; only with a mandatory client certificate.
    pub allowed_sans: Option<Vec<String>>,
    pub min_version: Option<String>,
    pub max_version: Option<String>,
    pub cipher_suites: Option<Vec<String>>,
    pub curve_preferences: Option<Vec<String>>,
    pub prefer_server_cipher_suites: bool,
}

/// The rustls configuration of `settings`. The error is one line naming the key.
pub(crate) fn server_config(s: TlsSettings) -> Result<Arc<ServerConfig>, String> {
    let versions = protocol_versions(s.min_version.as_deref(), s.max_version.as_deref())?;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if let Some(names) = &s.cipher_suites {
        provider.cipher_suites = cipher_suites(names)?;
    }
    if let Some(names) = &s.curve_preferences {
        provider.kx_groups = curves(names)?;
    }
    let provider = Arc::new(provider);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls_server_config: {e}"))?;
    let builder = match ClientCertCheck::new(s.client_certs, s.allowed_sans, &provider)? {
        None => builder.with_no_client_auth(),
        Some(check) => builder.with_client_cert_verifier(Arc::new(check)),
    };
    let certified = certified_key(&s.cert, &s.key, &provider)?;
    let mut config = builder.with_cert_resolver(Arc::new(ServerCert {
        provider: provider.clone(),
        files: s.reload_from,
        current: Mutex::new(Current {
            cert_pem: s.cert.bytes,
            key_pem: s.key.bytes,
            key: certified,
            checked: Instant::now(),
        }),
    }));
    config.ignore_client_order = s.prefer_server_cipher_suites;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

pub(crate) fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what} holds no PEM certificate"));
    }
    Ok(certs)
}

/// A certificate chain and its key, checked to belong together.
fn certified_key(
    cert: &Pem,
    key: &Pem,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let chain = certificates(&cert.bytes, &cert.what)?;
    let private_key = PrivateKeyDer::from_pem_slice(&key.bytes)
        .map_err(|e| format!("{} holds no usable PEM private key: {e}", key.what))?;
    CertifiedKey::from_der(chain, private_key, provider)
        .map(Arc::new)
        .map_err(|e| {
            format!(
                "{} and {} do not make a usable pair: {e}",
                cert.what, key.what
            )
        })
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
        let cert = Pem {
            bytes: cert_pem,
            what: format!("cert_file {}", cert_file.display()),
        };
        let key = Pem {
            bytes: key_pem,
            what: format!("key_file {}", key_file.display()),
        };
        match certified_key(&cert, &key, &self.provider) {
            Ok(certified) => {
                tracing::info!(cert_file = %cert_file.display(), "loaded a renewed TLS certificate");
                *current = Current {
                    cert_pem: cert.bytes,
                    key_pem: key.bytes,
                    key: certified,
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

/// The client certificate verifier of every `client_auth_type` but `NoClientCert`.
///
/// With a CA (`chain`), the chain check, the handshake signatures and the root hints are
/// rustls's WebPKI verifier's; without one, any certificate is accepted, as in Go, and its
/// signature over the handshake is still checked, so the client holds the certificate's key.
/// With `client_allowed_sans`, one of the certificate's subject alternative names (DNS,
/// e-mail, IP or URI, as Go prints them) must be in the list, after the chain check.
#[derive(Debug)]
struct ClientCertCheck {
    chain: Option<Arc<dyn ClientCertVerifier>>,
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
    allowed_sans: Option<Vec<String>>,
}

impl ClientCertCheck {
    /// `None` for `ClientCerts::None`.
    fn new(
        certs: ClientCerts,
        allowed_sans: Option<Vec<String>>,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Option<ClientCertCheck>, String> {
        let (chain, mandatory) = match certs {
            ClientCerts::None => return Ok(None),
            ClientCerts::Any { mandatory } => (None, mandatory),
            ClientCerts::Verified { ca, mandatory } => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(&ca.bytes, &ca.what)? {
                    roots.add(cert).map_err(|e| {
                        format!("{} holds an unusable CA certificate: {e}", ca.what)
                    })?;
                }
                let builder =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                let builder = if mandatory {
                    builder
                } else {
                    builder.allow_unauthenticated()
                };
                let verifier = builder
                    .build()
                    .map_err(|e| format!("tls_server_config: {}: {e}", ca.what))?;
                (Some(verifier), mandatory)
            }
        };
        Ok(Some(ClientCertCheck {
            chain,
            mandatory,
            algorithms: provider.signature_verification_algorithms,
            allowed_sans,
        }))
    }
}

impl ClientCertVerifier for ClientCertCheck {
    fn offer_client_auth(&self) -> bool {
        self.chain.as_ref().is_none_or(|c| c.offer_client_auth())
    }

    fn client_auth_mandatory(&self) -> bool {
        self.chain
            .as_ref()
            .map_or(self.mandatory, |c| c.client_auth_mandatory())
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.as_ref().map_or(&[], |c| c.root_hint_subjects())
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = match &self.chain {
            Some(c) => c.verify_client_cert(end_entity, intermediates, now)?,
            None => ClientCertVerified::assertion(),
        };
        match &self.allowed_sans {
            Some(allowed)
                if !subject_alt_names(end_entity)
                    .iter()
                    .any(|san| allowed.contains(san)) =>
            {
                Err(rustls::Error::General(
                    "the client certificate has none of client_allowed_sans".to_owned(),
                ))
            }
            _ => Ok(verified),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match &self.chain {
            Some(c) => c.verify_tls12_signature(message, cert, dss),
            None => rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms),
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match &self.chain {
            Some(c) => c.verify_tls13_signature(message, cert, dss),
            None => rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.as_ref().map_or_else(
            || self.algorithms.supported_schemes(),
            |c| c.supported_verify_schemes(),
        )
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
