//! The official Python SDKs (`openai`, `anthropic`), pinned in `tests/python/requirements.txt`,
//! for tests that drive the gateway with them.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// The interpreter: `$SHARDGATE_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("SHARDGATE_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Where the SDKs are importable from: `None` when `python()` has them itself, else a
/// directory they were installed into (`pip install --target`, once per test run, under the
/// test's target directory) that goes on `PYTHONPATH`. `Err(None)`: skipped
/// (`SHARDGATE_SKIP_SDK_TESTS=1`); `Err(Some(why))`: neither worked, the test fails saying so.
pub fn sdk_path() -> Result<Option<PathBuf>, Option<String>> {
    static INSTALLED: Mutex<Option<Result<Option<PathBuf>, String>>> = Mutex::new(None);
    if std::env::var("SHARDGATE_SKIP_SDK_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("skipped: SHARDGATE_SKIP_SDK_TESTS=1");
        return Err(None);
    }
    let mut done = INSTALLED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = done.as_ref() {
        return r.clone().map_err(Some);
    }
    let py = python();
    let imports = |path: Option<&PathBuf>| {
        let mut cmd = Command::new(&py);
        cmd.args(["-c", "import openai, anthropic"])
            .stdin(Stdio::null());
        if let Some(p) = path {
            cmd.env("PYTHONPATH", p);
        }
        cmd.output()
    };
    let result = match imports(None) {
        Ok(o) if o.status.success() => Ok(None),
        Ok(_) => {
            // A fresh machine: install the pinned SDKs next to the test binaries.
            // Next to the built binaries (the target directory), kept between runs.
            let dir = crate::shardgate_bin()
                .parent()
                .map_or_else(std::env::temp_dir, PathBuf::from)
                .join("python-sdks");
            let reqs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/requirements.txt");
            let installed = match imports(Some(&dir)) {
                Ok(o) if o.status.success() => true,
                _ => Command::new(&py)
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                    ])
                    .arg("--target")
                    .arg(&dir)
                    .arg("-r")
                    .arg(&reqs)
                    .stdin(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
            };
            match imports(Some(&dir)) {
                Ok(o) if installed && o.status.success() => Ok(Some(dir)),
                _ => Err(format!(
                    "the Python SDKs are missing and `{py} -m pip install --target {} -r {}` did not \
                     make them importable;\nrun: {py} -m pip install -r tests/python/requirements.txt\n\
                     (or set SHARDGATE_SKIP_SDK_TESTS=1 to skip these tests)",
                    dir.display(),
                    reqs.display()
                )),
            }
        }
        Err(e) => Err(format!(
            "cannot run {py}: {e} (SHARDGATE_PYTHON names another interpreter)"
        )),
    };
    *done = Some(result.clone());
    result.map_err(Some)
}
