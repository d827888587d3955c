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

/// How a script of `tests/python/` ended, and what it printed.
#[derive(Debug)]
pub struct ScriptRun {
    /// It exited with status 0.
    pub ok: bool,
    /// Its exit status, or that it was killed at the time limit.
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

impl ScriptRun {
    /// Everything, for an assertion's message.
    pub fn summary(&self) -> String {
        format!(
            "status {}\nstdout:\n{}\nstderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `tests/python/{script}` with `args` under [`python()`] (the SDKs on `PYTHONPATH` from
/// `sdk_dir`), killed after `wait`. Proxy variables and the SDKs' own base-URL settings are
/// removed: the gateway is on loopback, and a developer's settings must not redirect the SDKs.
pub fn run_script(
    script: &str,
    args: &[&str],
    sdk_dir: Option<&PathBuf>,
    wait: std::time::Duration,
) -> ScriptRun {
    use std::io::Read;
    use std::sync::Arc;
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let mut cmd = Command::new(python());
    if let Some(dir) = sdk_dir {
        cmd.env("PYTHONPATH", dir);
    }
    cmd.arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        cmd.env_remove(var).env_remove(var.to_ascii_lowercase());
    }
    for var in [
        "OPENAI_BASE_URL",
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_AUTH_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {} {}: {e}", python(), path.display()));
    let drain = |mut r: Box<dyn Read + Send>| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = buf.clone();
        let t = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = r.read(&mut chunk) {
                b.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&chunk[..n]);
            }
        });
        (buf, t)
    };
    let (out, t1) = drain(Box::new(child.stdout.take().expect("piped")));
    let (err, t2) = drain(Box::new(child.stderr.take().expect("piped")));
    let deadline = std::time::Instant::now() + wait;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let _ = (t1.join(), t2.join());
    let text = |b: &Arc<Mutex<Vec<u8>>>| {
        String::from_utf8_lossy(&b.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    };
    ScriptRun {
        ok: status.is_some_and(|s| s.success()),
        status: status.map_or_else(|| format!("killed after {wait:?}"), |s| s.to_string()),
        stdout: text(&out),
        stderr: text(&err),
    }
}
