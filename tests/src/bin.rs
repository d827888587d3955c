//! Locating (and building) the `shardgate` and `shardgate-bench` binaries.
//!
//! `CARGO_BIN_EXE_shardgate` only exists for tests inside the engine's own package, so this crate
//! builds the engine's binaries itself, once per test process, with a nested
//! `cargo build -p shardgate-engine --bins` in the same profile as the running test binary.
//! Cargo releases its build-directory lock before it runs test binaries, so the nested build does
//! not deadlock; when everything is fresh it costs a fraction of a second.
//!
//! `SHARDGATE_BIN=/path/to/shardgate` skips the build and uses that binary (for example a
//! release build, or a binary under test on another machine).
//!
//! [`shardgate_counted_bin`] finds `shardgate-counted` the same way (`SHARDGATE_COUNTED_BIN`).
//! [`bench_bin`] does the same for `shardgate-bench` (package `shardgate-bench`), with
//! `SHARDGATE_BENCH_BIN` as its override, [`ctl_bin`] for `shardgate-ctl`
//! (`SHARDGATE_CTL_BIN`), and [`shardgate_tune_bin`] for `shardgate-tune`
//! (`SHARDGATE_TUNE_BIN`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Path of the `shardgate` binary, built on first use (see the module docs).
pub fn shardgate_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| locate("SHARDGATE_BIN", "shardgate-engine", "shardgate"))
        .clone()
}

/// Path of the `shardgate-counted` binary (the engine with a counting allocator, its counts on
/// `/metrics`), built on first use (`SHARDGATE_COUNTED_BIN` overrides).
pub fn shardgate_counted_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        locate(
            "SHARDGATE_COUNTED_BIN",
            "shardgate-engine",
            "shardgate-counted",
        )
    })
    .clone()
}

/// Path of the `shardgate-bench` binary, built on first use (see the module docs).
pub fn bench_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| locate("SHARDGATE_BENCH_BIN", "shardgate-bench", "shardgate-bench"))
        .clone()
}

/// Path of the `shardgate-ctl` binary, built on first use (`SHARDGATE_CTL_BIN` overrides).
pub fn ctl_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| locate("SHARDGATE_CTL_BIN", "shardgate-ctl", "shardgate-ctl"))
        .clone()
}

/// Path of the `shardgate-tune` binary, built on first use (`SHARDGATE_TUNE_BIN` overrides).
pub fn shardgate_tune_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| locate("SHARDGATE_TUNE_BIN", "shardgate-tune", "shardgate-tune"))
        .clone()
}

/// The binary named by the environment variable `env`, or `bin` of `package`, built now.
fn locate(env: &str, package: &str, bin: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{env}={} is not a file", p.display());
        return p;
    }
    build(package, bin)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives one level below the workspace root")
        .to_path_buf()
}

/// The profile the running test binary was built with, read from its path
/// (`<target>/<profile dir>/deps/<test>-<hash>`): `debug` means the dev profile.
fn profile_args() -> Vec<String> {
    let dir = std::env::current_exe().ok().and_then(|exe| {
        let deps = exe.parent()?;
        if deps.file_name()? != "deps" {
            return None;
        }
        Some(deps.parent()?.file_name()?.to_string_lossy().into_owned())
    });
    match dir.as_deref() {
        None | Some("debug") => Vec::new(),
        Some("release") => vec!["--release".to_owned()],
        Some(other) => vec!["--profile".to_owned(), other.to_owned()],
    }
}

fn build(package: &str, bin: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = workspace_root();
    let out = Command::new(&cargo)
        .current_dir(&root)
        .args([
            "build",
            "-p",
            package,
            "--bins",
            "--message-format=json-render-diagnostics",
        ])
        .args(profile_args())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo:?} build: {e}"));
    assert!(
        out.status.success(),
        "cargo build -p {package} --bins failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Cargo names every executable it produced in a `compiler-artifact` message; that path is
    // right whatever the target dir, profile or `--target` triple is.
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" && msg["target"]["name"] == bin {
            if let Some(exe) = msg["executable"].as_str() {
                return PathBuf::from(exe);
            }
        }
    }
    // Fall back to the documented layout.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root.join(t) })
        .unwrap_or_else(|| root.join("target"));
    let exe = target.join("debug").join(bin);
    assert!(
        exe.is_file(),
        "cargo build succeeded but {} is missing",
        exe.display()
    );
    exe
}
