//! `--web.config.file` (exporter-toolkit format): TLS scrapes, client certificates, basic
//! authentication, response headers, the rate limit, plain HTTP on the TLS port, and bad files
//! rejected by the binary with one line and exit code 64.
#![allow(clippy::unwrap_used)]

use crate::support;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{KEY, TempDir};
use kapso_exporter::app::{self, Running};
use kapso_exporter::clock::Clock;
use kapso_exporter::config::Config;
use kapso_exporter::simulator::{RunningSimulator, Simulator};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

const BIN: &str = env!("CARGO_BIN_EXE_kapso-exporter");

/// PEM files of a test PKI: a CA, a server certificate for 127.0.0.1 and localhost, a client
/// certificate from that CA and one from an unrelated CA.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client: String,
    /// From the CA too, but with the SAN `grafana` instead of `prometheus`.
    sibling: String,
    stranger: String,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A leaf certificate and key (PEM) signed by `issuer`.
fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, sans[0]);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let root = ca("kapso test CA");
    let (server_cert, server_key) = leaf(
        &root,
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) =
        leaf(&root, &["prometheus"], ExtendedKeyUsagePurpose::ClientAuth);
    let (sibling_cert, sibling_key) =
        leaf(&root, &["grafana"], ExtendedKeyUsagePurpose::ClientAuth);
    let other = ca("someone else's CA");
    let (stranger_cert, stranger_key) =
        leaf(&other, &["intruder"], ExtendedKeyUsagePurpose::ClientAuth);
    Pki {
        ca: root.pem(),
        server_cert,
        server_key,
        client: format!("{client_cert}{client_key}"),
        sibling: format!("{sibling_cert}{sibling_key}"),
        stranger: format!("{stranger_cert}{stranger_key}"),
    }
}

impl Pki {
    /// Writes the server's files and the CA into `dir`.
    fn write(&self, dir: &TempDir) {
        dir.write("server.crt", &self.server_cert);
        dir.write("server.key", &self.server_key);
        dir.write("ca.crt", &self.ca);
    }
}

/// The start of every TLS web config here: the server pair [`Pki::write`] puts in the folder.
const TLS: &str = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";

struct Exporter {
    running: Option<Running>,
    _sim: RunningSimulator,
}

impl Exporter {
    fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.running().addr
    }

    async fn stop(mut self) {
        self.running.take().unwrap().shutdown().await;
    }
}

/// The exporter on 127.0.0.1:0 with `args` and `tweak` applied, polling a simulator.
async fn start_with(args: &[&str], tweak: impl FnOnce(&mut Config)) -> Exporter {
    let sim = Simulator::empty(KEY, Clock::system());
    let server = sim.spawn().await.unwrap();
    let url = server.base_url.to_string();
    let mut all = vec![
        "--kapso.base-url",
        &url,
        "--web.listen-address",
        "127.0.0.1:0",
    ];
    all.extend_from_slice(args);
    let mut config = support::config(&all);
    tweak(&mut config);
    let running = app::start(config, Clock::system()).await.unwrap();
    Exporter {
        running: Some(running),
        _sim: server,
    }
}

/// The exporter on 127.0.0.1:0 with `--web.config.file web_config`, polling a simulator.
async fn start(web_config: &Path) -> Exporter {
    start_with(&["--web.config.file", web_config.to_str().unwrap()], |_| {}).await
}

/// The exporter with the web config [`TLS`] followed by `rest`, and its HTTPS URL of `path`.
async fn start_tls(dir: &TempDir, rest: &str, path: &str) -> (Exporter, String) {
    let web = dir.write("web.yml", &format!("{TLS}{rest}"));
    let exporter = start(&web).await;
    let url = format!("https://127.0.0.1:{}{path}", exporter.addr().port());
    (exporter, url)
}

/// The status `client` got from `url`, or `None` when it got no answer (a failed handshake).
async fn status(client: &reqwest::Client, url: &str) -> Option<u16> {
    let r = client.get(url).send().await.ok()?;
    Some(r.status().as_u16())
}

fn client(pki: &Pki, identity: Option<&str>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .tls_certs_only([reqwest::Certificate::from_pem(pki.ca.as_bytes()).unwrap()]);
    if let Some(id) = identity {
        b = b.identity(reqwest::Identity::from_pem(id.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// Sends raw bytes, returns everything the server answered before closing (or timing out).
fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[tokio::test]
async fn tls_scrape_works_and_plain_http_on_the_tls_port_is_refused_cleanly() {
    let pki = pki();
    let dir = TempDir::new("kx-web-tls");
    pki.write(&dir);
    // Relative paths are relative to the web config file, as in exporter-toolkit.
    let web = dir.write(
        "web.yml",
        &format!("{TLS}  min_version: TLS12\nhttp_server_config:\n  http2: true\n"),
    );
    let exporter = start(&web).await;
    let port = exporter.addr().port();
    let https = client(&pki, None);
    for host in ["127.0.0.1", "localhost"] {
        let r = https
            .get(format!("https://{host}:{port}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.text()
                .await
                .unwrap()
                .contains("kapso_up{project=\"default\"}")
        );
    }

    // Plain HTTP to the TLS port: a 400 that says why, then the connection closes.
    let addr = exporter.addr();
    let answer = tokio::task::spawn_blocking(move || {
        raw_exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    })
    .await
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.0 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("HTTP request to an HTTPS server"),
        "{answer}"
    );
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);

    // Garbage that is neither HTTP nor TLS: closed without an answer.
    let garbage = tokio::task::spawn_blocking(move || raw_exchange(addr, &[0x01, 0x02, 0x03]))
        .await
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&garbage).contains("HTTP/1."),
        "{garbage:?}"
    );

    // A client that does not trust the CA fails the handshake.
    let untrusting = reqwest::Client::builder()
        .tls_certs_only([])
        .build()
        .unwrap();
    assert!(
        untrusting
            .get(format!("https://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .is_err()
    );

    // The server kept serving through all of that.
    let r = https
        .get(format!("https://127.0.0.1:{port}/-/healthy"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    exporter.stop().await;
}

/// The CA a TLS client found on the exporter's port, by which `cas` it accepts.
async fn trusted_by(port: u16, cas: &[&str]) -> Vec<bool> {
    let mut out = Vec::new();
    for ca in cas {
        let c = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()])
            .build()
            .unwrap();
        let url = format!("https://127.0.0.1:{port}/-/healthy");
        out.push(status(&c, &url).await.is_some());
    }
    out
}

#[tokio::test]
async fn a_renewed_certificate_is_picked_up_and_a_broken_one_ignored() {
    let old = pki();
    let new = pki();
    let dir = TempDir::new("kx-web-renew");
    old.write(&dir);
    let web = dir.write("web.yml", TLS);
    let exporter = start(&web).await;
    let port = exporter.addr().port();
    assert_eq!(trusted_by(port, &[&old.ca, &new.ca]).await, [true, false]);

    new.write(&dir);
    let deadline = Instant::now() + Duration::from_secs(15);
    while trusted_by(port, &[&old.ca, &new.ca]).await != [false, true] {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A half-written renewal: the key no longer matches. The last good pair stays in use.
    dir.write("server.key", &old.server_key);
    // Past the once-a-second reload check, so these handshakes do look at the broken pair.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..3 {
        assert_eq!(trusted_by(port, &[&old.ca, &new.ca]).await, [false, true]);
    }
    exporter.stop().await;
}

#[tokio::test]
async fn client_certificates_are_required_and_verified() {
    let pki = pki();
    let dir = TempDir::new("kx-web-mtls");
    pki.write(&dir);
    let verify = "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n";
    let (exporter, url) = start_tls(&dir, verify, "/metrics").await;
    assert_eq!(
        status(&client(&pki, Some(&pki.client)), &url).await,
        Some(200)
    );
    assert_eq!(
        status(&client(&pki, None), &url).await,
        None,
        "served a client without a certificate"
    );
    assert_eq!(
        status(&client(&pki, Some(&pki.stranger)), &url).await,
        None,
        "served a client whose certificate comes from an unknown CA"
    );
    exporter.stop().await;

    // client_allowed_sans narrows the CA's clients down to named ones.
    let sans = format!("{verify}  client_allowed_sans: [prometheus, 10.0.0.1]\n");
    let (exporter, url) = start_tls(&dir, &sans, "/metrics").await;
    assert_eq!(
        status(&client(&pki, Some(&pki.client)), &url).await,
        Some(200)
    );
    assert_eq!(
        status(&client(&pki, Some(&pki.sibling)), &url).await,
        None,
        "served a client whose certificate has none of client_allowed_sans"
    );
    exporter.stop().await;

    // VerifyClientCertIfGiven: no certificate is fine, a foreign one is not.
    let if_given = "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n";
    let (exporter, url) = start_tls(&dir, if_given, "/metrics").await;
    assert_eq!(status(&client(&pki, None), &url).await, Some(200));
    assert_eq!(status(&client(&pki, Some(&pki.stranger)), &url).await, None);
    exporter.stop().await;
}

#[tokio::test]
async fn basic_auth_guards_every_endpoint_and_headers_are_added() {
    let pki = pki();
    let dir = TempDir::new("kx-web-auth");
    pki.write(&dir);
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let web = dir.write(
        "web.yml",
        &format!(
            "{TLS}basic_auth_users:\n  prometheus: '{hash}'\nhttp_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
        ),
    );
    let exporter = start(&web).await;
    let base = format!("https://127.0.0.1:{}", exporter.addr().port());
    let https = client(&pki, None);

    for path in ["/metrics", "/", "/-/healthy", "/-/ready", "/nope"] {
        let r = https.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without credentials");
        assert_eq!(r.headers()["www-authenticate"], "Basic");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    }
    let cases = [
        ("prometheus", "wrong", 401),
        ("nobody", "s3cret", 401),
        ("prometheus", "", 401),
        ("prometheus", "s3cret", 200),
    ];
    for (user, password, want) in cases {
        // Twice: the second answer comes from the verification cache and must agree.
        for _ in 0..2 {
            let r = https
                .get(format!("{base}/metrics"))
                .basic_auth(user, Some(password))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), want, "{user}:{password}");
            assert_eq!(r.headers()["x-content-type-options"], "nosniff");
            if want == 200 {
                assert!(r.text().await.unwrap().contains("kapso_up"));
            }
        }
    }
    exporter.stop().await;
}

#[tokio::test]
async fn rate_limit_answers_429_past_the_burst() {
    let dir = TempDir::new("kx-web-rate");
    let web = dir.write("web.yml", "rate_limit:\n  interval: 1h\n  burst: 2\n");
    let exporter = start(&web).await;
    let url = format!("http://{}/-/healthy", exporter.addr());
    let http = reqwest::Client::new();
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(http.get(&url).send().await.unwrap().status().as_u16());
    }
    assert_eq!(codes, [200, 200, 429]);
    exporter.stop().await;
}

#[tokio::test]
async fn request_client_cert_asks_without_verifying() {
    let pki = pki();
    let dir = TempDir::new("kx-web-anycert");
    pki.write(&dir);
    let any = "  client_auth_type: RequireAnyClientCert\n";
    let (exporter, url) = start_tls(&dir, any, "/-/healthy").await;
    // Any certificate will do, even one from an unknown CA; none will not.
    assert_eq!(
        status(&client(&pki, Some(&pki.stranger)), &url).await,
        Some(200)
    );
    assert_eq!(status(&client(&pki, None), &url).await, None);
    exporter.stop().await;
}

#[test]
fn bad_web_config_files_are_one_line_and_exit_64() {
    let pki = pki();
    let dir = TempDir::new("kx-web-bad");
    pki.write(&dir);
    let other = ca("other");
    let (other_cert, _) = leaf(&other, &["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    dir.write("other.crt", &other_cert);
    dir.write("garbage.crt", "not a certificate\n");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "bad-yaml.yml",
            "tls_server_config: [\n".to_owned(),
            "bad-yaml.yml",
        ),
        ("unknown-key.yml", format!("{TLS}  sni: x\n"), "sni"),
        (
            "plain-password.yml",
            "basic_auth_users:\n  alice: hunter2\n".to_owned(),
            "alice",
        ),
        (
            "missing-cert.yml",
            "tls_server_config:\n  cert_file: nowhere.crt\n  key_file: server.key\n".to_owned(),
            "nowhere.crt",
        ),
        (
            "garbage-cert.yml",
            "tls_server_config:\n  cert_file: garbage.crt\n  key_file: server.key\n".to_owned(),
            "garbage.crt",
        ),
        (
            "mismatched.yml",
            "tls_server_config:\n  cert_file: other.crt\n  key_file: server.key\n".to_owned(),
            "other.crt",
        ),
        (
            "bad-client-auth.yml",
            format!("{TLS}  client_auth_type: Sometimes\n"),
            "client_auth_type",
        ),
        (
            "ca-without-auth.yml",
            format!("{TLS}  client_ca_file: ca.crt\n"),
            "client_auth_type",
        ),
        (
            "verify-without-ca.yml",
            format!("{TLS}  client_auth_type: RequireAndVerifyClientCert\n"),
            "client_ca_file",
        ),
        (
            "sans.yml",
            format!("{TLS}  client_auth_type: RequestClientCert\n  client_allowed_sans: [a]\n"),
            "client_allowed_sans",
        ),
        (
            "old-tls.yml",
            format!("{TLS}  min_version: TLS10\n"),
            "min_version",
        ),
    ];
    let mut paths = vec![("/nonexistent/web.yml".to_owned(), "/nonexistent/web.yml")];
    for (name, text, needle) in &cases {
        paths.push((dir.write(name, text).to_str().unwrap().to_owned(), needle));
    }
    for (path, needle) in paths {
        let out = Command::new(BIN)
            .args([
                "--web.config.file",
                &path,
                "--web.listen-address",
                "127.0.0.1:0",
            ])
            .env("KAPSO_API_KEY", "k")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{path}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{path}: not one line: {stderr}");
        assert!(stderr.contains("--web.config.file"), "{path}: {stderr}");
        assert!(stderr.contains(needle), "{path}: {stderr}");
    }

    // A good file passes --config.check.
    let good = dir.write("good.yml", TLS);
    let out = Command::new(BIN)
        .args([
            "--config.check",
            "--web.config.file",
            good.to_str().unwrap(),
        ])
        .env("KAPSO_API_KEY", "k")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_silent_client_cannot_hold_the_tls_handshake() {
    let pki = pki();
    let dir = TempDir::new("kx-web-handshake");
    pki.write(&dir);
    let web = dir.write("web.yml", TLS);
    let exporter = start_with(&["--web.config.file", web.to_str().unwrap()], |config| {
        config.web_limits.tls_handshake_timeout = Duration::from_millis(300);
    })
    .await;
    let addr = exporter.addr();
    let started = Instant::now();
    let closed = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Says nothing; the server must give up on it.
        let mut buf = [0u8; 16];
        matches!(s.read(&mut buf), Ok(0) | Err(_))
    })
    .await
    .unwrap();
    assert!(closed);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        started.elapsed()
    );
    exporter.stop().await;
}

/// `--webhook.config.file` puts TLS on the webhook listener only: a signed delivery over
/// HTTPS is accepted, `/metrics` stays plain HTTP on its own port.
#[tokio::test]
async fn the_webhook_listener_serves_tls_from_its_own_web_config() {
    let pki = pki();
    let dir = TempDir::new("kx-webhook-tls");
    pki.write(&dir);
    let web = dir.write("webhook-web.yml", TLS);
    let args = [
        "--webhook.listen-address",
        "127.0.0.1:0",
        "--webhook.config.file",
        web.to_str().unwrap(),
    ];
    let exporter = start_with(&args, |_| {}).await;
    let hooks = exporter.running().webhook_addr.unwrap().port();
    let body = br#"{"event":"whatsapp.phone_number.created"}"#;
    let signature = kapso_exporter::webhook::WebhookSecret::new(support::WEBHOOK_SECRET).sign(body);
    let r = client(&pki, None)
        .post(format!("https://localhost:{hooks}/webhooks/kapso"))
        .header("x-webhook-signature", signature)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap().trim(), "ignored");
    let plain = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{hooks}/webhooks/kapso"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400, "plain HTTP on the TLS webhook port");
    let metrics = reqwest::get(format!("http://{}/metrics", exporter.addr()))
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200, "/metrics stays plain");
    exporter.stop().await;
}
