use super::*;
use clap::Parser as _;

fn cli(args: &[&str]) -> Cli {
    let mut all = vec!["kapso-exporter"];
    all.extend_from_slice(args);
    Cli::try_parse_from(all).expect("valid flags")
}

fn env_with_key(name: &str) -> Option<String> {
    (name == "KAPSO_API_KEY").then(|| "sk-test".to_owned())
}

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn defaults_watch_the_whole_project() {
    let config = Config::load(&cli(&[]), &env_with_key).expect("valid");
    let p = &config.projects[0];
    assert_eq!(p.name, "default");
    assert_eq!(p.base_url().expect("kapso").as_str(), DEFAULT_BASE_URL);
    assert_eq!(p.api_key().expect("kapso").expose(), "sk-test");
    assert_eq!(p.rate_limit, 80);
    assert_eq!(p.poll_interval, Duration::from_secs(60));
    assert_eq!(p.mode, Mode::Project);
    assert_eq!(config.listen_address.port(), 9853);
    assert_eq!(config.telemetry_path, "/metrics");
    assert_eq!(config.stall_thresholds.len(), 6);
}

#[test]
fn rejects_bad_values_with_one_line_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--poll.interval", "0s"], "--poll.interval"),
        (&["--kapso.timeout", "2m"], "--kapso.timeout"),
        (&["--kapso.timeout", "0s"], "--kapso.timeout"),
        (&["--kapso.rate-limit", "0"], "--kapso.rate-limit"),
        (&["--kapso.base-url", "ftp://x"], "--kapso.base-url"),
        (&["--web.telemetry-path", "metrics"], "--web.telemetry-path"),
        (&["--web.max-connections", "0"], "--web.max-connections"),
        (
            &["--web.config.file", "/nonexistent/web.yml"],
            "--web.config.file",
        ),
        (
            &["--metrics.max-steps-per-workflow", "0"],
            "--metrics.max-steps-per-workflow",
        ),
        (
            &["--metrics.stall-thresholds", "1500ms"],
            "--metrics.stall-thresholds",
        ),
        (
            &["--kapso.api-key-file", "/nonexistent/key"],
            "--kapso.api-key-file",
        ),
        (
            &["--kapso.conversation-id", "a b"],
            "--kapso.conversation-id",
        ),
        (
            &["--kapso.discover-conversations", "0s"],
            "--kapso.discover-conversations",
        ),
        (&["--storage.path", "/dev/null"], "--storage.path"),
    ];
    for (args, flag) in cases {
        let e = Config::load(&cli(args), &env_with_key).expect_err("invalid");
        assert_eq!(e.origin(), Some(&Origin::Flag(flag)), "{args:?}: {e}");
        let text = e.to_string();
        assert!(text.starts_with(&format!("{flag}: ")), "{args:?}: {text}");
        assert!(!text.contains('\n'), "{args:?}: not one line: {text}");
    }
    let e = Config::load(&cli(&[]), &no_env).expect_err("no key");
    assert!(e.to_string().contains("KAPSO_API_KEY"));
    assert_eq!(e.origin(), None);
}

#[test]
fn a_timeout_too_long_for_the_default_interval_blames_what_was_given() {
    let e = Config::load(&cli(&["--poll.interval", "5s"]), &env_with_key).expect_err("invalid");
    assert_eq!(e.origin(), Some(&Origin::Flag("--poll.interval")));
    assert!(e.to_string().contains("10s, the default"), "{e}");
    let e = Config::load(&cli(&["--kapso.timeout", "90s"]), &env_with_key).expect_err("invalid");
    assert_eq!(
        e.to_string(),
        "--kapso.timeout: the request timeout (1m 30s) must be shorter than the poll interval (1m, the default)"
    );
}

#[test]
fn the_api_key_flag_is_refused_with_a_hint_and_without_its_value() {
    for args in [
        &["--kapso.api-key", "sk-live-1"][..],
        &["--kapso.api-key=sk-live-1"][..],
    ] {
        let all = Config::load_all(&cli(args), &env_with_key).expect_err("refused");
        assert_eq!(all.len(), 1);
        let text = all[0].to_string();
        assert_eq!(all[0].origin(), Some(&Origin::Flag("--kapso.api-key")));
        assert!(
            text.contains("KAPSO_API_KEY") && text.contains("--kapso.api-key-file"),
            "{text}"
        );
        assert!(!text.contains("sk-live-1"), "{text}");
    }
}

#[test]
fn the_base_url_comes_from_the_environment_with_its_origin() {
    let env = |name: &str| match name {
        "KAPSO_API_KEY" => Some("sk".to_owned()),
        "KAPSO_BASE_URL" => Some("http://127.0.0.1:7/platform/v1".to_owned()),
        _ => None,
    };
    let config = Config::load(&cli(&[]), &env).expect("valid");
    assert_eq!(
        config.projects[0].base_url().map(Url::as_str),
        Some("http://127.0.0.1:7/platform/v1")
    );
    let bad = |name: &str| match name {
        "KAPSO_API_KEY" => Some("sk".to_owned()),
        "KAPSO_BASE_URL" => Some("ftp://x".to_owned()),
        _ => None,
    };
    let e = Config::load(&cli(&[]), &bad).expect_err("invalid");
    assert_eq!(e.origin(), Some(&Origin::Env("KAPSO_BASE_URL".into())));
    // The flag wins over the environment.
    let config =
        Config::load(&cli(&["--kapso.base-url", "https://k.example/v1"]), &bad).expect("valid");
    assert_eq!(
        config.projects[0].base_url().map(Url::as_str),
        Some("https://k.example/v1")
    );
}

#[test]
fn a_base_url_with_the_demo_is_an_error_wherever_it_came_from() {
    let e = Config::load(
        &cli(&["--demo", "--kapso.base-url", "http://x/v1"]),
        &no_env,
    )
    .expect_err("refused");
    assert_eq!(e.origin(), Some(&Origin::Flag("--kapso.base-url")));
    assert!(e.to_string().contains("--demo"), "{e}");
    let env = |name: &str| (name == "KAPSO_BASE_URL").then(|| "http://x/v1".to_owned());
    let e = Config::load(&cli(&["--demo"]), &env).expect_err("refused");
    assert_eq!(e.origin(), Some(&Origin::Env("KAPSO_BASE_URL".into())));
    let dir = TempDir::new("demo-base");
    let path = dir.write("c.yml", "kapso:\n  base_url: http://x/v1\n");
    let e = Config::load(&cli(&["--demo", "--config.file", &path]), &no_env).expect_err("refused");
    assert_eq!(
        e.to_string().split(": ").nth(1),
        Some("kapso.base_url"),
        "{e}"
    );
    assert!(e.to_string().starts_with(&format!("{path}:2: ")), "{e}");
}

#[test]
fn file_values_are_blamed_on_their_key_and_line_never_on_a_flag() {
    let dir = TempDir::new("file-origin");
    let path = dir.write(
        "config.yml",
        "poll:\n  interval: soon\nlog:\n  level: loud\nprojects:\n  - name: a\n    api_key_env: KAPSO_API_KEY\n  - name: b\n    api_key_env: KAPSO_API_KEY\n    poll_interval: 0s\n    rate_limit: 0\n",
    );
    let all = Config::load_all(&cli(&["--config.file", &path]), &env_with_key).expect_err("bad");
    let texts: Vec<String> = all.iter().map(ToString::to_string).collect();
    let wanted = [
        format!("{path}:2: poll.interval: \"soon\" is not a duration"),
        format!("{path}:10: projects[1].poll_interval: must be longer than zero"),
        format!("{path}:11: projects[1].rate_limit: must be at least 1"),
        format!("{path}:4: log.level: \"loud\" is not one of error, warn, info, debug, trace"),
    ];
    for w in &wanted {
        assert!(
            texts.iter().any(|t| t.starts_with(w.as_str())),
            "{w} not in {texts:#?}"
        );
    }
    assert_eq!(all.len(), wanted.len(), "{texts:#?}");
    for t in &texts {
        assert!(!t.contains("--"), "a flag named for a file value: {t}");
    }
    let wanted = Origin::File {
        path: path.clone().into(),
        key: "projects[1].poll_interval".into(),
        line: Some(10),
    };
    assert!(all.iter().any(|e| e.origin() == Some(&wanted)), "{all:#?}");
}

#[test]
fn a_file_key_of_the_wrong_shape_is_said_in_the_files_terms() {
    let dir = TempDir::new("file-shape");
    let path = dir.write("config.yml", "poll:\n  - 30s\n");
    let e = Config::load(&cli(&["--config.file", &path]), &env_with_key).expect_err("bad");
    assert_eq!(
        e.to_string(),
        format!("{path}:2: poll: expected a mapping with key interval, found a list")
    );
}

#[test]
fn every_problem_is_collected() {
    let all = Config::load_all(
        &cli(&[
            "--web.telemetry-path",
            "x",
            "--web.max-connections",
            "0",
            "--kapso.rate-limit",
            "0",
            "--kapso.timeout",
            "2m",
        ]),
        &no_env,
    )
    .expect_err("invalid");
    let origins: Vec<Option<&Origin>> = all.iter().map(ConfigError::origin).collect();
    assert_eq!(
        origins,
        [
            None,
            Some(&Origin::Flag("--kapso.rate-limit")),
            Some(&Origin::Flag("--kapso.timeout")),
            Some(&Origin::Flag("--web.telemetry-path")),
            Some(&Origin::Flag("--web.max-connections")),
        ],
        "{all:#?}"
    );
}

#[test]
fn the_summary_says_the_effective_settings_in_words() {
    let config = Config::load(
        &cli(&[
            "--kapso.conversation-id",
            "c-1",
            "--kapso.discover-conversations",
            "7d",
        ]),
        &env_with_key,
    )
    .expect("valid");
    let summary = config.summary().join("\n");
    assert!(
        summary.contains("project default: Kapso API at https://api.kapso.ai/platform/v1, 1 conversation + conversations active within 7 days, polled every 1m (timeout 10s), budget 80 requests per minute"),
        "{summary}"
    );
    assert!(
        summary.contains("stall thresholds 1m, 5m, 15m, 1h, 4h, 1 day"),
        "{summary}"
    );
    assert!(
        summary.contains("log level info, format logfmt"),
        "{summary}"
    );
    assert!(!summary.contains("sk-test"));
    let demo = Config::load(&cli(&["--demo"]), &no_env)
        .expect("valid")
        .summary();
    assert!(
        demo[0].contains("the embedded simulator (demo), every workflow, polled every 15s (timeout 10s), budget 800 requests"),
        "{demo:?}"
    );
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("kx-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn conversation_flags_select_conversation_mode() {
    let dir = std::env::temp_dir().join(format!("kx-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("conversations.txt");
    std::fs::write(&file, "# watched\nc-2\n\nc-3 # vip\nc-1\n").expect("write");
    let config = Config::load(
        &cli(&[
            "--kapso.conversation-id",
            "c-1",
            "--kapso.conversations-file",
            file.to_str().expect("utf-8"),
        ]),
        &env_with_key,
    )
    .expect("valid");
    assert_eq!(
        config.projects[0].mode,
        Mode::Conversations {
            ids: vec!["c-1".into(), "c-2".into(), "c-3".into()],
            discover: None
        }
    );
}

#[test]
fn file_declares_several_projects_and_flags_override_it() {
    let dir = std::env::temp_dir().join(format!("kx-conf-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("acme.key"), "sk-acme\n").expect("write");
    let path = dir.join("config.yml");
    std::fs::write(
        &path,
        "poll:\n  interval: 30s\nweb:\n  listen_address: 127.0.0.1:9999\nprojects:\n  - name: acme\n    api_key_file: acme.key\n    rate_limit: 400\n  - name: beta\n    api_key_env: BETA_KEY\n    base_url: http://127.0.0.1:1234/platform/v1\n    conversation_ids: [c-9]\n",
    )
    .expect("write");
    let env = |name: &str| (name == "BETA_KEY").then(|| "sk-beta".to_owned());
    let path_str = path.to_str().expect("utf-8");
    let config = Config::load(
        &cli(&["--config.file", path_str, "--kapso.timeout", "5s"]),
        &env,
    )
    .expect("valid");
    assert_eq!(config.listen_address.port(), 9999);
    let [acme, beta] = &config.projects[..] else {
        panic!("two projects expected")
    };
    assert_eq!(
        (
            acme.name.as_str(),
            acme.api_key().expect("kapso").expose(),
            acme.rate_limit
        ),
        ("acme", "sk-acme", 400)
    );
    assert_eq!(acme.poll_interval, Duration::from_secs(30));
    assert_eq!(acme.timeout, Duration::from_secs(5));
    assert_eq!(beta.api_key().expect("kapso").expose(), "sk-beta");
    assert_eq!(beta.rate_limit, DEFAULT_RATE_LIMIT);
    assert!(matches!(beta.mode, Mode::Conversations { .. }));

    std::fs::write(&path, "projects:\n  - name: acme\n    api_key_fille: x\n").expect("write");
    let e = Config::load(&cli(&["--config.file", path_str]), &env).expect_err("typo");
    assert!(e.to_string().contains("api_key_fille"), "{e}");
    assert!(!e.to_string().contains('\n'));
}

#[test]
fn web_settings_come_from_the_file_relative_to_it() {
    let dir = std::env::temp_dir().join(format!("kx-conf-web-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(
        dir.join("web.yml"),
        "rate_limit:\n  interval: 1s\n  burst: 3\n",
    )
    .expect("write");
    let path = dir.join("config.yml");
    std::fs::write(
        &path,
        "web:\n  config_file: web.yml\n  max_connections: 5\n",
    )
    .expect("write");
    let path = path.to_str().expect("utf-8");
    let config = Config::load(&cli(&["--config.file", path]), &env_with_key).expect("valid");
    assert_eq!(config.web_limits.max_connections, 5);
    assert_eq!(config.web.rate_limit.map(|r| r.burst), Some(3));
    let config = Config::load(
        &cli(&["--config.file", path, "--web.max-connections", "7"]),
        &env_with_key,
    )
    .expect("valid");
    assert_eq!(config.web_limits.max_connections, 7);
    let config = Config::load(&cli(&[]), &env_with_key).expect("valid");
    assert_eq!(config.web_limits, WebLimits::default());
    assert!(config.web.tls.is_none() && config.web.users.is_empty());
}

#[test]
fn demo_needs_no_key() {
    let config = Config::load(&cli(&["--demo"]), &no_env).expect("valid");
    assert!(config.demo);
    assert_eq!(config.projects[0].target, Target::Demo);
    assert_eq!(config.projects[0].rate_limit, DEMO_RATE_LIMIT);
    assert_eq!(config.projects[0].poll_interval, DEMO_POLL_INTERVAL);
    assert_eq!(config.projects.len(), 1);
    assert_eq!(config.demo_variance, Variance::default());
}

#[test]
fn demo_variance_needs_demo_and_known_presets() {
    let config =
        Config::load(&cli(&["--demo", "--demo.variance", "duplicates"]), &no_env).expect("valid");
    assert!(config.demo_variance.duplicate_workflows);
    for args in [
        &["--demo.variance", "seconds"][..],
        &["--demo", "--demo.variance", "nope"][..],
    ] {
        let e = Config::load(&cli(args), &env_with_key).expect_err("invalid");
        assert!(e.to_string().starts_with("--demo.variance"), "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}

#[test]
fn webhooks_need_a_secret_for_every_project_and_never_show_it() {
    let with = |name: &str| match name {
        "KAPSO_API_KEY" => Some("sk-test".to_owned()),
        "KAPSO_WEBHOOK_SECRET" => Some(" whsec-1 \n".to_owned()),
        _ => None,
    };
    let on = ["--webhook.listen-address", "127.0.0.1:9854"];
    let config = Config::load(&cli(&on), &with).expect("valid");
    let listener = config.webhook.as_ref().expect("on");
    assert_eq!(listener.address.port(), 9854);
    let secret = config.projects[0].webhook_secret.as_ref().expect("secret");
    assert_eq!(*secret, WebhookSecret::new("whsec-1"), "trimmed");
    assert!(!format!("{config:?}").contains("whsec-1"));
    // Off by default, even with a secret in the environment.
    assert!(
        Config::load(&cli(&[]), &with)
            .expect("valid")
            .webhook
            .is_none()
    );
    // The demo listens on a local port of its own.
    let demo = Config::load(&cli(&["--demo"]), &no_env).expect("valid");
    assert!(demo.webhook.is_some_and(|w| w.address.ip().is_loopback()));

    for (args, env, wanted) in [
        (
            &on[..],
            &env_with_key as &dyn Fn(&str) -> Option<String>,
            "no webhook secret",
        ),
        (
            &["--webhook.config.file", "/nonexistent.yml"][..],
            &with,
            "--webhook.config.file: is only valid with a webhook listener",
        ),
        (
            &["--webhook.listen-address", ":9853"][..],
            &with,
            "must differ from the metrics listen address (--web.listen-address)",
        ),
        (
            &[
                "--webhook.listen-address",
                ":9854",
                "--webhook.secret-file",
                "/nonexistent",
            ][..],
            &with,
            "cannot read webhook secret file",
        ),
    ] {
        let e = Config::load(&cli(args), env).expect_err("invalid");
        assert!(e.to_string().contains(wanted), "{args:?}: {e}");
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}

#[test]
fn webhook_secrets_and_storage_come_from_the_file_per_project() {
    let dir = std::env::temp_dir().join(format!("kx-conf-hooks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp file");
    std::fs::write(dir.join("a.secret"), "secret-a\n").expect("temp file");
    let file = dir.join("config.yml");
    std::fs::write(
        &file,
        "webhook: {listen_address: \"127.0.0.1:9854\"}\nstorage: {path: state}\nprojects:\n  - {name: a, api_key_env: KEY_A, webhook_secret_file: a.secret}\n  - {name: b, api_key_env: KEY_B, webhook_secret_env: HOOK_B}\n",
    )
    .expect("temp file");
    let env = |name: &str| match name {
        "KEY_A" | "KEY_B" => Some("sk".to_owned()),
        "HOOK_B" => Some("secret-b".to_owned()),
        _ => None,
    };
    let path = file.display().to_string();
    let config = Config::load(&cli(&["--config.file", &path]), &env).expect("valid");
    assert_eq!(config.storage_path, Some(dir.join("state")));
    let secrets: Vec<_> = config
        .projects
        .iter()
        .map(|p| p.webhook_secret.clone().expect("secret"))
        .collect();
    assert_eq!(
        secrets,
        [
            WebhookSecret::new("secret-a"),
            WebhookSecret::new("secret-b")
        ]
    );
    // A second project without a secret is refused, by name.
    let no_b = |name: &str| {
        (name != "HOOK_B")
            .then(|| "sk".to_owned())
            .filter(|_| name.starts_with("KEY"))
    };
    let e = Config::load(&cli(&["--config.file", &path]), &no_b).expect_err("invalid");
    assert!(e.to_string().contains("HOOK_B"), "{e}");
    // --storage.path must be a directory.
    let e = Config::load(&cli(&["--storage.path", &path]), &env_with_key).expect_err("file");
    assert!(e.to_string().contains("must be a directory"), "{e}");
    std::fs::remove_dir_all(&dir).expect("temp file");
}

#[test]
fn the_key_from_the_environment_is_trimmed() {
    let env = |name: &str| (name == "KAPSO_API_KEY").then(|| "sk-test\n".to_owned());
    let config = Config::load(&cli(&[]), &env).expect("valid");
    assert_eq!(config.projects[0].api_key(), Some(&ApiKey::new("sk-test")));
}

#[test]
fn a_key_no_header_can_carry_is_a_configuration_error() {
    let env = |name: &str| (name == "KAPSO_API_KEY").then(|| "sk-te\u{7}st".to_owned());
    let e = Config::load(&cli(&[]), &env).expect_err("invalid");
    assert!(e.to_string().contains("HTTP header"), "{e}");
    assert_eq!(e.origin(), Some(&Origin::Env("KAPSO_API_KEY".into())));
    assert!(
        !e.to_string().contains("sk-te"),
        "the key is not shown: {e}"
    );
}

#[test]
fn secrets_named_in_the_file_are_blamed_on_their_key() {
    let dir = TempDir::new("secret-origin");
    let path = dir.write(
        "config.yml",
        "projects:\n  - name: a\n    api_key_env: NOT_SET\n  - name: b\n    api_key_file: missing.key\n",
    );
    let all = Config::load_all(&cli(&["--config.file", &path]), &no_env).expect_err("bad");
    let texts: Vec<String> = all.iter().map(ToString::to_string).collect();
    assert_eq!(all.len(), 2, "{texts:#?}");
    assert!(
        texts[0].starts_with(&format!(
            "{path}:3: projects[0].api_key_env: environment variable NOT_SET is not set or empty"
        )),
        "{texts:#?}"
    );
    assert!(
        texts[1].starts_with(&format!(
            "{path}:5: projects[1].api_key_file: cannot read API key file "
        )),
        "{texts:#?}"
    );
    // A blank KAPSO_WEBHOOK_SECRET is no secret.
    let env = |name: &str| match name {
        "KAPSO_API_KEY" => Some("sk".to_owned()),
        "KAPSO_WEBHOOK_SECRET" => Some("  \n".to_owned()),
        _ => None,
    };
    let e = Config::load(&cli(&["--webhook.listen-address", "127.0.0.1:9854"]), &env)
        .expect_err("no secret");
    assert_eq!(e.origin(), Some(&Origin::Flag("--webhook.listen-address")));
    assert!(e.to_string().contains("no webhook secret"), "{e}");
}
