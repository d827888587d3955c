//! `import litellm CONFIG.yaml`: a LiteLLM proxy config read as LiteLLM reads it ([`yaml`]),
//! mapped to a shardgate config, with a report of every setting by its key path: what it
//! became, and what has no equivalent and why. Nothing is dropped without a line in the
//! report; no secret is printed or written to the report.
//!
//! What maps (docs/migrating-from-litellm.md has the whole table):
//! - each `model_list` entry: a deployment of the group its `model_name` names (entries of one
//!   name form one group wherever they stand), on an upstream of its own: the provider from the
//!   `litellm_params.model` prefix or LiteLLM's rule for a bare name, `api_base`, `api_version`,
//!   `api_key` (`os.environ/NAME` becomes `api_key_env`), `aws_region_name`, and `rpm`/`tpm`
//!   where LiteLLM reads them first ([`map`]);
//! - `router_settings` over `litellm_settings`, with LiteLLM's defaults: `routing_strategy`,
//!   `num_retries`, `timeout`, `fallbacks`, `model_group_alias`, `allowed_fails` and
//!   `cooldown_time` (each group's ejection), `redis_*` (`[fleet]`);
//! - `general_settings.master_key`: an admin token, and the key of a tenant that may call every
//!   group;
//! - a literal `api_key` or `redis_password`: a variable the config names, written with its
//!   value to a secrets file of its own (mode 0600, never printed);
//! - with `--keys`: LiteLLM's virtual keys and teams as a tenant store ([`keys`]);
//! - `include`: the files it names merged first, as LiteLLM merges them ([`include`]).
//!
//! Everything else is reported.

pub mod include;
pub mod keys;
pub mod map;
pub mod yaml;

use std::path::{Path, PathBuf};

use crate::Failure;

/// The `import litellm` command: read `config`, write the shardgate config to `out` (stdout
/// when `None`), its literal secrets to `secrets` (`OUT.env` when `None` and `out` is given)
/// and the report to `report` (stderr summary when `None`), check the result as
/// `shardgate --check` would.
pub fn run(
    config: &Path,
    out: Option<&PathBuf>,
    report: Option<&PathBuf>,
    keys: Option<(&PathBuf, &PathBuf)>,
    secrets: Option<&PathBuf>,
) -> Result<(), Failure> {
    let secrets_path = secrets.cloned().or_else(|| {
        out.map(|o| {
            let mut p = o.clone().into_os_string();
            p.push(".env");
            PathBuf::from(p)
        })
    });
    let text = std::fs::read_to_string(config)
        .map_err(|e| Failure::invalid(format!("{}: cannot read: {e}", config.display())))?;
    let doc =
        yaml::parse(&text).map_err(|e| Failure::invalid(format!("{}: {e}", config.display())))?;
    let (doc, included) = include::merge(doc, config, &|p| p.exists(), &|p| {
        std::fs::read_to_string(p).map_err(|e| format!("{}: cannot read: {e}", p.display()))
    })
    .map_err(|e| Failure::invalid(format!("{}: {e}", config.display())))?;
    let store_path = keys.map(|(_, store)| store.display().to_string());
    let mut imported = map::import_with_store(
        &doc,
        &|name| std::env::var(name).ok(),
        store_path.as_deref(),
        secrets_path.is_some(),
    )
    .map_err(|e| Failure::invalid(format!("{}: {e}", config.display())))?;
    if !included.is_empty() {
        let files: Vec<String> = included.iter().map(|p| p.display().to_string()).collect();
        imported.report.mapped(
            "include",
            format!(
                "merged first, as LiteLLM merges it (lists joined, other keys replaced; settings \
                 are named by their merged paths): {}",
                files.join(", ")
            ),
        );
    }
    // The keys: a tenant store of their own (never over an existing one), written before the
    // config is checked (the check reads it).
    if let Some((file, store_out)) = keys {
        let raw = std::fs::read_to_string(file)
            .map_err(|e| Failure::invalid(format!("{}: cannot read: {e}", file.display())))?;
        let export: serde_json::Value = serde_json::from_str(&raw)
            .map_err(|e| Failure::invalid(format!("{}: not JSON: {e}", file.display())))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let store = keys::import(&export, now, &mut imported.report)
            .map_err(|e| Failure::invalid(format!("{}: {e}", file.display())))?;
        if store_out.exists() {
            return Err(Failure::invalid(format!(
                "{}: exists: the import writes a new tenant store, never over one",
                store_out.display()
            )));
        }
        let json = serde_json::to_string_pretty(&store).unwrap_or_default();
        std::fs::write(store_out, json + "\n")
            .map_err(|e| Failure::invalid(format!("{}: cannot write: {e}", store_out.display())))?;
    }
    // The report first: it says why, when the result is refused.
    let json =
        serde_json::to_string_pretty(&imported.report.to_json(&config.display().to_string()))
            .unwrap_or_default();
    if let Some(p) = report {
        std::fs::write(p, json + "\n")
            .map_err(|e| Failure::invalid(format!("{}: cannot write: {e}", p.display())))?;
    }
    // The result must be a config shardgate accepts (endpoint names are not looked up here;
    // secrets are environment variables the engine reads).
    if let Err(errors) = shardgate_core::config::Config::from_toml_unresolved(&imported.toml) {
        let mut lines: Vec<String> = errors
            .0
            .iter()
            .map(|e| format!("imported config: {e}"))
            .collect();
        lines.push(imported.report.summary());
        return Err(Failure::invalid(lines.join("\n")));
    }
    if let (Some(p), false) = (&secrets_path, imported.secrets.is_empty()) {
        write_secrets(p, &imported.secrets)?;
        eprintln!(
            "{} literal secret(s) written to {} (mode 0600): put them in shardgate's environment (systemd EnvironmentFile=, docker --env-file)",
            imported.secrets.len(),
            p.display()
        );
    }
    match out {
        Some(p) => std::fs::write(p, &imported.toml)
            .map_err(|e| Failure::invalid(format!("{}: cannot write: {e}", p.display())))?,
        None => print!("{}", imported.toml),
    }
    eprintln!("{}", imported.report.summary());
    Ok(())
}

/// `NAME=value` lines, readable by the owner only, in a new file (never over one: it may be
/// another import's secrets).
fn write_secrets(path: &Path, secrets: &[(String, String)]) -> Result<(), Failure> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut text = String::from(
        "# Literal secrets of a LiteLLM config, imported by `shardgate-ctl import litellm`.\n",
    );
    for (var, value) in secrets {
        text.push_str(var);
        text.push('=');
        text.push_str(value);
        text.push('\n');
    }
    let cannot = |e: std::io::Error| {
        let why = if e.kind() == std::io::ErrorKind::AlreadyExists {
            "exists: the import writes a new secrets file, never over one".to_owned()
        } else {
            format!("cannot write: {e}")
        };
        Failure::invalid(format!("{}: {why}", path.display()))
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(cannot)?;
    f.write_all(text.as_bytes()).map_err(cannot)
}
