//! Bakes the git revision into the binary for `pullwatch version` (PULLWATCH_REVISION overrides,
//! for builds without a .git directory such as the Dockerfile's).

use std::process::Command;

fn main() {
    let revision = std::env::var("PULLWATCH_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| {
            let output = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            output
                .status
                .success()
                .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=PULLWATCH_REVISION={revision}");
    println!("cargo:rerun-if-env-changed=PULLWATCH_REVISION");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}
