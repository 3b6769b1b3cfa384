//! Records the git revision for `build_info{git_sha}` (`GIT_SHA` wins, e.g. in a container build).

fn main() {
    println!("cargo:rerun-if-env-changed=GIT_SHA");
    let sha = std::env::var("GIT_SHA").ok().filter(|s| !s.is_empty()).or_else(|| {
        let out = std::process::Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    println!("cargo:rustc-env=VK_GIT_SHA={}", sha.unwrap_or_else(|| "unknown".to_string()));
}
