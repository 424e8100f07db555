//! Bakes the git revision into the binary for `pullwatch version` (PULLWATCH_REVISION overrides,
//! for builds without a .git directory such as the Dockerfile's), and generates the agent's own
//! API (proto/pullwatch/v1) with its descriptor set, which the schema test reads.
//!
//! The revision is read when this script runs (a target directory's first build, or a changed
//! proto or PULLWATCH_REVISION), not on every commit: watching `.git` made each commit rebuild
//! the whole crate, minutes for a release build. Release images pass PULLWATCH_REVISION, so
//! their stamp is always exact; a developer's incremental build may show an older revision.

use std::process::Command;

const PROTO: &str = "proto/pullwatch/v1/pullwatch.proto";

fn main() {
    let out_dir =
        std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    if let Err(error) = tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("pullwatch_v1_descriptor.bin"))
        .compile_protos(&[PROTO], &["proto"])
    {
        panic!("cannot compile {PROTO}: {error}");
    }

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
    // Any rerun-if-changed replaces cargo's default (rerun on any change in the package), so
    // the proto must be named too, or an edited API would keep its stale generated code.
    println!("cargo:rerun-if-changed={PROTO}");
}
