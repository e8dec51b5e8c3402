#![allow(clippy::unwrap_used)]
//! The container image: the Dockerfile's final stage is small, non-root and holds no secret;
//! hadolint finds nothing; and `packaging/build-image.sh` builds the image offline with buildah
//! from that Dockerfile and serves `/metrics` with `kapso_up 1` from inside it (`--demo`).
//!
//! The outside-program rule: when `hadolint` or `buildah` (and root, which buildah needs here) is
//! missing, the test fails under `CI=true` and otherwise prints `SKIPPED: ...` and passes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kapso_exporter::config::DEFAULT_LISTEN_ADDRESS;

mod support;
use support::{TempDir, has_command, require};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path))
        .unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs `cmd` with stdout and stderr in files of `dir`, and stops it at `deadline`: SIGTERM
/// first (the build script cleans up on it), SIGKILL 20 s later. Returns the exit status (None on
/// the deadline) and the combined output.
fn run_with_deadline(
    mut cmd: Command,
    dir: &Path,
    deadline: Duration,
) -> (Option<ExitStatus>, String) {
    let out_path = dir.join("output.log");
    let out = File::create(&out_path).unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > deadline {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let grace = Instant::now();
            while child.try_wait().unwrap().is_none() && grace.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (
        status,
        std::fs::read_to_string(&out_path).unwrap_or_default(),
    )
}

/// Instructions (upper-cased keyword, arguments) of the Dockerfile's last stage.
fn final_stage(dockerfile: &str) -> Vec<(String, String)> {
    let mut stage = Vec::new();
    for line in dockerfile.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            stage.clear();
        }
        stage.push((keyword, args.trim().to_owned()));
    }
    stage
}

fn instruction<'a>(stage: &'a [(String, String)], keyword: &str) -> &'a str {
    let found: Vec<&str> = stage
        .iter()
        .filter(|(k, _)| k == keyword)
        .map(|(_, a)| a.as_str())
        .collect();
    assert_eq!(found.len(), 1, "final stage needs exactly one {keyword}");
    found[0]
}

#[test]
fn dockerfile_final_stage_is_small_non_root_and_secret_free() {
    let dockerfile = read("Dockerfile");
    let froms = dockerfile
        .lines()
        .filter(|l| l.trim_start().to_ascii_uppercase().starts_with("FROM "))
        .count();
    assert!(froms >= 2, "the Dockerfile is multi-stage");

    let stage = final_stage(&dockerfile);
    let base = instruction(&stage, "FROM");
    assert!(
        base == "scratch" || base.starts_with("gcr.io/distroless/"),
        "final base {base} is neither scratch nor distroless"
    );
    let user = instruction(&stage, "USER");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().is_ok_and(|uid| uid != 0),
        "USER {user} is not a numeric non-root user"
    );
    let port = DEFAULT_LISTEN_ADDRESS.rsplit(':').next().unwrap();
    assert!(
        DEFAULT_LISTEN_ADDRESS.starts_with(':'),
        "the default listen address {DEFAULT_LISTEN_ADDRESS} must bind every interface in a container"
    );
    assert_eq!(instruction(&stage, "EXPOSE"), port);
    assert_eq!(instruction(&stage, "ENTRYPOINT"), r#"["/kapso-exporter"]"#);

    // No secret baked in: no instruction of any stage names a key, token or password.
    for line in dockerfile.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        let lower = line.to_ascii_lowercase();
        for word in ["api_key", "api-key", "apikey", "secret", "token", "passw"] {
            assert!(
                !lower.contains(word),
                "the Dockerfile mentions {word}: {line}"
            );
        }
    }

    // The build context holds only the sources: no target/, no .git, no stray key file.
    let ignore = read(".dockerignore");
    let rules: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        rules.first(),
        Some(&"*"),
        ".dockerignore starts by excluding everything"
    );
    for needed in ["!Cargo.toml", "!Cargo.lock", "!build.rs", "!src"] {
        assert!(rules.contains(&needed), ".dockerignore lacks {needed}");
    }
}

/// The paths `.dockerignore` lets into the build context (its `!` lines).
fn build_context_paths() -> Vec<String> {
    read(".dockerignore")
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .map(|p| p.trim_end_matches('/').to_owned())
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `path` relative to the repository root, with `.` and `..` resolved.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// `docker build` sees only what `.dockerignore` lets in: every file the release build reads must
/// be there, or the image build breaks although `cargo build` works in the repository.
#[test]
fn build_context_holds_what_the_release_build_needs() {
    let included = build_context_paths();
    let inside = |path: &Path| included.iter().any(|inc| path.starts_with(inc));
    for line in read("Cargo.toml").lines().map(str::trim) {
        assert!(
            !matches!(line, "[[test]]" | "[[example]]" | "[workspace]"),
            "Cargo.toml declares {line}, whose files the Docker build context lacks: \
             let them in through .dockerignore and adjust this test (a [[bench]] must name \
             its `path`, checked below)"
        );
        if let Some(path) = line.strip_prefix("path = ") {
            let path = Path::new(path.trim_matches('"'));
            assert!(
                inside(path),
                "{} is not in the Docker build context",
                path.display()
            );
        }
    }
    let root = repo_root();
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.push(root.join("build.rs"));
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (_, rest) in text
            .match_indices("include_str!(\"")
            .chain(text.match_indices("include_bytes!(\""))
            .map(|(i, m)| (i, &text[i + m.len()..]))
        {
            let literal = rest.split('"').next().unwrap();
            let target = normalize(&file.parent().unwrap().join(literal));
            let relative = target.strip_prefix(&root).unwrap_or(&target);
            assert!(
                inside(relative),
                "{} embeds {}, which the Docker build context lacks (.dockerignore)",
                file.display(),
                relative.display()
            );
        }
    }
}

#[test]
fn dockerfile_is_hadolint_clean() {
    if !require(has_command("hadolint", &["--version"]), "hadolint") {
        return;
    }
    let tmp = TempDir::new("kapso-hadolint");
    let mut cmd = Command::new("hadolint");
    cmd.args(["--no-color", "Dockerfile"])
        .current_dir(repo_root());
    let (status, output) = run_with_deadline(cmd, &tmp.0, Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "hadolint Dockerfile ({status:?}):\n{output}"
    );
}

#[test]
fn image_builds_offline_and_serves_metrics() {
    if !require(has_command("buildah", &["--version"]), "buildah") {
        return;
    }
    if !require(is_root(), "root (for buildah)") {
        return;
    }
    let tmp = TempDir::new("kapso-image-test");
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("packaging/build-image.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_kapso-exporter")])
        .args(["--timeout", "60"])
        // the script's own work dir (image storage, build context) lives under ours
        .env("TMPDIR", &tmp.0)
        .current_dir(repo_root());
    let started = Instant::now();
    let (status, output) = run_with_deadline(cmd, &tmp.0, Duration::from_secs(150));
    eprintln!("{output}");
    let status = status.unwrap_or_else(|| panic!("build-image.sh passed its deadline:\n{output}"));
    assert!(
        status.success(),
        "build-image.sh failed ({status}):\n{output}"
    );
    assert!(
        output.contains("OK: image built offline from Dockerfile"),
        "build-image.sh did not report success:\n{output}"
    );
    eprintln!("image built and run in {:.1?}", started.elapsed());
    // Nothing is left of the script's work dir but our log.
    let left: Vec<_> = std::fs::read_dir(&tmp.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name != "output.log")
        .collect();
    assert!(left.is_empty(), "build-image.sh left {left:?} behind");
}
