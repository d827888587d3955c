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
//! - `general_settings.master_key`: a tenant that may call every group;
//! - with `--keys`: LiteLLM's virtual keys and teams as a tenant store ([`keys`]).
//!
//! Everything else is reported.

pub mod keys;
pub mod map;
pub mod yaml;

use std::path::{Path, PathBuf};

use crate::Failure;

/// The `import litellm` command: read `config`, write the shardgate config to `out` (stdout
/// when `None`) and the report to `report` (stderr summary when `None`), check the result as
/// `shardgate --check` would.
pub fn run(
    config: &Path,
    out: Option<&PathBuf>,
    report: Option<&PathBuf>,
    keys: Option<(&PathBuf, &PathBuf)>,
) -> Result<(), Failure> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| Failure::invalid(format!("{}: cannot read: {e}", config.display())))?;
    let doc =
        yaml::parse(&text).map_err(|e| Failure::invalid(format!("{}: {e}", config.display())))?;
    let store_path = keys.map(|(_, store)| store.display().to_string());
    let mut imported = map::import_with_store(
        &doc,
        &|name| std::env::var(name).ok(),
        store_path.as_deref(),
    )
    .map_err(|e| Failure::invalid(format!("{}: {e}", config.display())))?;
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
    match out {
        Some(p) => std::fs::write(p, &imported.toml)
            .map_err(|e| Failure::invalid(format!("{}: cannot write: {e}", p.display())))?,
        None => print!("{}", imported.toml),
    }
    eprintln!("{}", imported.report.summary());
    Ok(())
}
