//! Embeds the git revision for `--version` and `kapso_exporter_build_info`.
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=KAPSO_EXPORTER_REVISION");
    println!("cargo:rerun-if-changed=build.rs");
    let revision = std::env::var("KAPSO_EXPORTER_REVISION")
        .ok()
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=KAPSO_EXPORTER_REVISION={revision}");
}

/// The short hash of HEAD, watching what moves it: `HEAD`, `packed-refs` and the `refs/heads`
/// folder (cargo scans a folder's files). `git rev-parse --git-path` finds them in a worktree
/// too, where `.git` is a file; a watched path that does not exist would make cargo rerun this
/// script, and rebuild the crate, on every build.
fn git_revision() -> Option<String> {
    let revision = git(&["rev-parse", "--short=12", "HEAD"])?;
    for name in ["HEAD", "packed-refs", "refs/heads"] {
        if let Some(path) = git(&["rev-parse", "--git-path", name]) {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    Some(revision)
}

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (output.status.success() && !text.is_empty()).then(|| text.to_owned())
}
