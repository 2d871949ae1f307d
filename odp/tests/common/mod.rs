//! Helpers for tests that run part of themselves in a child process with
//! the interposition library preloaded.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Builds `libodp_preload.so` (with the profile and target directory of the
/// running test) and returns its path.
pub fn preload_library() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable");
        // target/<profile>/deps/<test>
        let profile_dir = exe
            .parent()
            .and_then(|d| d.parent())
            .expect("profile directory");
        let target_dir = profile_dir.parent().expect("target directory");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev",
            Some(other) => other,
            None => "dev",
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "odp-preload",
                "--profile",
                profile,
                "--target-dir",
            ])
            .arg(target_dir)
            .output()
            .expect("run cargo");
        assert!(
            out.status.success(),
            "building odp-preload failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lib = profile_dir.join("libodp_preload.so");
        assert!(lib.exists(), "{} missing after the build", lib.display());
        lib
    })
    .clone()
}

/// Whether a child runs with the interposition library.
#[derive(Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // each test binary uses its own subset
pub enum Preload {
    Yes,
    No,
}

/// Runs the ignored test `name` of this test binary in a child process of
/// its own (optionally with the interposition library preloaded).
pub fn run_child(name: &str, preload: Preload) -> Output {
    run_child_with(name, &[], preload)
}

/// [`run_child`] with extra environment variables for the child.
pub fn run_child_with(name: &str, env: &[(&str, &str)], preload: Preload) -> Output {
    let mut cmd = Command::new(std::env::current_exe().expect("test executable"));
    cmd.args([
        "--exact",
        name,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    cmd.envs(env.iter().copied());
    if preload == Preload::Yes {
        cmd.env("LD_PRELOAD", preload_library());
    }
    cmd.output().expect("spawn child test")
}

/// Asserts that a child test run passed, with its output on failure.
pub fn assert_child_passed(out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "child failed ({}):\n{}\n{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
}
