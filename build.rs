//! Embeds the git revision for `--version` and `kapso_exporter_build_info`.
fn main() {
    let revision = std::env::var("KAPSO_EXPORTER_REVISION")
        .ok()
        .or_else(|| {
            std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=KAPSO_EXPORTER_REVISION={revision}");
    println!("cargo:rerun-if-env-changed=KAPSO_EXPORTER_REVISION");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}
