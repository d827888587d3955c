//! `shardgate-ctl`: the control plane. It validates config and pushes it to a running engine's
//! shards over shared memory, and reads their counters back for status and stats.
//!
//! # Layout
//! - `main.rs`: the command line, [`Failure`] and the exit statuses, the one blocking sleep.
//! - [`check`]: read and validate a config file (`check`, and the first step of `apply`).
//! - [`apply`]: diff against the running config, number and publish a version, wait for the
//!   shards; the pure pieces (`next_version`, `progress`) are unit-tested.
//! - [`diff`]: the semantic diff of two configs (pure).
//! - [`stall`]: the hidden `SHARDGATE_CTL_STALL_AFTER_FRAMES` test hook (a partial publish).
//! - [`status`]: the instance and shard table, text and JSON (pure over a snapshot).
//! - [`tenants`]: `tenants ...` and `keys ...`: a change to the tenant store written
//!   atomically, audited, and pushed to every shard (the store's rules are
//!   `shardgate_core::store`, I/O-free).
//! - [`access`]: `access ...`: tenants' access requests listed, approved and denied (changes
//!   made as `tenants` makes them).
//! - [`top`]: live per-upstream and per-route rates (pure over two counter reads).
//! - [`table`]: column-aligned tables and number formats.
//! - [`litellm`]: `import litellm`: a LiteLLM proxy config read as PyYAML reads it
//!   (`litellm::yaml`), its `include`s merged (`litellm::include`), and mapped to a shardgate
//!   config with a report (`litellm::map`, pure); its keys and teams as a tenant store
//!   (`litellm::keys`).
//!
//! Exit statuses: 0 success; 1 the instance is not running, or the apply was refused, timed out
//! or lost its engine; 2 the config file is unreadable or invalid, or the command line is wrong.

mod access;
mod apply;
mod check;
mod diff;
mod fleet;
mod litellm;
mod spend;
mod stall;
mod status;
mod table;
mod tenants;
mod top;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Parser, Subcommand};
use shardgate_core::config::check_instance_name;
use shardgate_core::control::shm::{pid_alive, region_path, Region};
use shardgate_core::limits::{APPLY_WAIT_MS_MAX, TIMEOUT_MS_MAX};
use shardgate_core::store::KeyHash;
use shardgate_core::store_op::StoreOp;

/// Control a running shardgate instance: check and apply config, show status and live stats.
#[derive(Debug, Parser)]
#[command(name = "shardgate-ctl", version, arg_required_else_help = true)]
struct Cli {
    /// The engine instance to talk to (`[server] instance`).
    #[arg(
        long,
        global = true,
        default_value = "default",
        env = "SHARDGATE_INSTANCE",
        value_parser = instance_name
    )]
    instance: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a config file; print `FILE: ok` or each problem as `FILE: field: reason`.
    Check { file: PathBuf },
    /// Validate a config file, show what it changes, push it to every shard and wait for them.
    Apply {
        file: PathBuf,
        /// How long to wait for every shard to run the new version, ms.
        #[arg(
            long,
            default_value_t = APPLY_WAIT_MS_MAX,
            value_parser = clap::value_parser!(u64).range(1..=TIMEOUT_MS_MAX)
        )]
        timeout_ms: u64,
        /// Test hook: publish this many frames of the message, then hold the writer lock until
        /// killed.
        #[arg(long, hide = true, env = "SHARDGATE_CTL_STALL_AFTER_FRAMES")]
        stall_after_frames: Option<u64>,
    },
    /// Show the instance and each shard: config version, connections, requests, ring lag,
    /// refused configs.
    Status {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Manage the tenant store's tenants (`[server] tenant_store`); each change is in force on
    /// every shard when the command returns.
    Tenants {
        #[command(subcommand)]
        op: TenantOp,
        /// How long to wait for every shard to run the change, ms.
        #[arg(long, global = true, default_value_t = APPLY_WAIT_MS_MAX,
              value_parser = clap::value_parser!(u64).range(1..=TIMEOUT_MS_MAX))]
        timeout_ms: u64,
    },
    /// Manage the tenant store's keys: a new key is printed once and stored only as its hash.
    Keys {
        #[command(subcommand)]
        op: KeyOp,
        /// How long to wait for every shard to run the change, ms.
        #[arg(long, global = true, default_value_t = APPLY_WAIT_MS_MAX,
              value_parser = clap::value_parser!(u64).range(1..=TIMEOUT_MS_MAX))]
        timeout_ms: u64,
    },
    /// What tenants' requests cost in US dollars (usage × the price table): by tenant since
    /// the instance started, or with --since / --key from the access log by tenant, key and
    /// model, or with --fleet over every instance of the fleet.
    Spend {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this key (its id, `key_...`; read from the access log).
        #[arg(long)]
        key: Option<String>,
        /// Only the last this long, e.g. 7d (read from the access log).
        #[arg(long, value_parser = duration)]
        since: Option<Duration>,
        /// Over every instance of the fleet (`[fleet]`: the usage counters the instances keep
        /// in Redis, since it last started), by tenant.
        #[arg(long, conflicts_with_all = ["key", "since"])]
        fleet: bool,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Decide on tenants' requests for models (`POST /v1/access-requests`): an approval grants
    /// the model on every shard when the command returns.
    Access {
        #[command(subcommand)]
        op: access::AccessOp,
        /// How long to wait for every shard to run the change, ms.
        #[arg(long, global = true, default_value_t = APPLY_WAIT_MS_MAX,
              value_parser = clap::value_parser!(u64).range(1..=TIMEOUT_MS_MAX))]
        timeout_ms: u64,
    },
    /// The fleet (`[fleet]`): Redis as the engine reaches it, the instances seen, and the
    /// credit this instance holds of each limit.
    Fleet {
        #[command(subcommand)]
        op: FleetOp,
    },
    /// Write a shardgate config from another gateway's.
    Import {
        #[command(subcommand)]
        from: ImportFrom,
    },
    /// Show requests per second, errors, status classes, latency and bytes per upstream and
    /// route, refreshed every interval.
    Top {
        /// Time between screens, ms.
        #[arg(
            long,
            default_value_t = 1000,
            value_parser = clap::value_parser!(u64).range(10..=3_600_000)
        )]
        interval_ms: u64,
        /// Screens to show before exiting (default: until interrupted).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        iterations: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum ImportFrom {
    /// A LiteLLM proxy config (YAML, read as LiteLLM reads it): the shardgate config on stdout
    /// (or `--out`), what each setting became in `--report` (JSON), a summary on stderr.
    Litellm {
        config: PathBuf,
        /// Write the shardgate config here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write the report (every setting by key path: mapped, not imported and why, invalid).
        #[arg(long)]
        report: Option<PathBuf>,
        /// LiteLLM's virtual keys and teams (JSON: its `/key/list?return_full_object=true`
        /// answer, or `{"keys": [...], "teams": [...]}` from its database): written as a tenant
        /// store (`--store`) the config names.
        #[arg(long, requires = "store")]
        keys: Option<PathBuf>,
        /// Where the tenant store the keys become is written (a new file).
        #[arg(long, requires = "keys")]
        store: Option<PathBuf>,
        /// Where the config's literal secrets (`api_key`, `redis_password`) are written, as
        /// `NAME=value` lines the imported config reads (a new file, mode 0600). Default:
        /// `OUT.env` beside `--out`; without either they are reported, not imported.
        #[arg(long)]
        secrets: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum FleetOp {
    /// Redis's reachability and round trip, the instances seen and their last syncs, and this
    /// instance's credit, debt and use of each limit.
    Status,
}

/// A tenant's settings on the command line (`tenants add` and `tenants set`).
#[derive(Debug, clap::Args)]
struct TenantFlags {
    /// Models it may use, comma-separated (`*`: all).
    #[arg(long)]
    models: Option<String>,
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<i64>,
    /// Tokens per minute.
    #[arg(long)]
    tpm: Option<i64>,
    /// Requests in flight at once.
    #[arg(long)]
    max_concurrency: Option<i64>,
    /// Tokens per budget window.
    #[arg(long)]
    budget_tokens: Option<i64>,
    /// US dollars of spend per budget window (the model prices of `[[prices]]` and the
    /// default table).
    #[arg(long)]
    budget_usd: Option<f64>,
    /// The budget's window, e.g. 30d.
    #[arg(long)]
    budget_window: Option<String>,
}

#[derive(Debug, Subcommand)]
enum TenantOp {
    /// The store's tenants (and the config's `[[tenants]]`, as `config`).
    List,
    /// Add a tenant (it has no key until `keys create`).
    Add {
        name: String,
        #[command(flatten)]
        flags: TenantFlags,
    },
    /// Change a tenant's settings (those given; the rest stay).
    Set {
        name: String,
        #[command(flatten)]
        flags: TenantFlags,
    },
    /// Refuse every request of the tenant (403 `tenant_suspended`) until resumed.
    Suspend {
        name: String,
    },
    Resume {
        name: String,
    },
    /// Remove a tenant and all its keys.
    Remove {
        name: String,
    },
    /// Copy the config file's `[[tenants]]` (keys included) into the store, once: from then on
    /// the store's entries are in force and the file's are reported as drift.
    Import,
    /// Write the store as `[[tenants]]` TOML (keys as their SHA-256), to stdout or --out.
    Export {
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum KeyOp {
    /// Make a key for TENANT and print it (once).
    Create {
        tenant: String,
        /// A label to recognise it by.
        #[arg(long)]
        name: Option<String>,
        /// It stops working after this long, e.g. 90d.
        #[arg(long, value_parser = duration)]
        expires: Option<Duration>,
        /// Requests per minute of this key's own, within its tenant's.
        #[arg(long)]
        rpm: Option<i64>,
        /// Tokens per minute of this key's own.
        #[arg(long)]
        tpm: Option<i64>,
        /// US dollars this key may spend per its tenant's budget window (30 days without one).
        #[arg(long)]
        budget_usd: Option<f64>,
    },
    /// The store's keys (of TENANT), by id and prefix: never the keys.
    List { tenant: Option<String> },
    /// Make a new key for the same tenant; the old one keeps working for the grace only.
    Rotate {
        key_id: String,
        #[arg(long, value_parser = duration, default_value = "24h")]
        grace: Duration,
    },
    /// Remove a key: no shard admits it once the command returns.
    Revoke { key_id: String },
}

fn tenant_op(instance: &str, op: TenantOp, timeout_ms: u64) -> Result<(), Failure> {
    let timeout = Duration::from_millis(timeout_ms);
    let settings = |f: TenantFlags| {
        tenants::settings(
            f.models,
            f.rpm,
            f.tpm,
            f.max_concurrency,
            f.budget_tokens,
            f.budget_usd,
            f.budget_window,
        )
    };
    let (op, said): (StoreOp, tenants::Said) = match op {
        TenantOp::List => return tenants::show(instance, false, None),
        TenantOp::Export { out } => return tenants::export(instance, out.as_deref()),
        TenantOp::Add { name, flags } => (
            StoreOp::TenantAdd {
                name: name.clone(),
                settings: settings(flags),
            },
            Box::new(move |_| format!("added tenant {name}")),
        ),
        TenantOp::Set { name, flags } => (
            StoreOp::TenantSet {
                name: name.clone(),
                settings: settings(flags),
                suspended: None,
            },
            Box::new(move |_| format!("changed tenant {name}")),
        ),
        TenantOp::Suspend { name } => (
            StoreOp::TenantSuspend {
                name: name.clone(),
                suspended: true,
            },
            Box::new(move |_| format!("suspended tenant {name}")),
        ),
        TenantOp::Resume { name } => (
            StoreOp::TenantSuspend {
                name: name.clone(),
                suspended: false,
            },
            Box::new(move |_| format!("resumed tenant {name}")),
        ),
        TenantOp::Import => (
            StoreOp::TenantImport,
            Box::new(|said| {
                let names: Vec<&str> = said["imported"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                format!(
                    "imported {} tenant(s) from the config file: {}; remove their [[tenants]] \
                     entries from the file (the store's are the ones in force now)",
                    names.len(),
                    names.join(",")
                )
            }),
        ),
        TenantOp::Remove { name } => (
            StoreOp::TenantRemove { name: name.clone() },
            Box::new(move |_| format!("removed tenant {name} and its keys")),
        ),
    };
    tenants::change(instance, timeout, op, said)
}

fn key_op(instance: &str, op: KeyOp, timeout_ms: u64) -> Result<(), Failure> {
    let timeout = Duration::from_millis(timeout_ms);
    let (op, said): (StoreOp, tenants::Said) = match op {
        KeyOp::List { tenant } => return tenants::show(instance, true, tenant.as_deref()),
        KeyOp::Create {
            tenant,
            name,
            expires,
            rpm,
            tpm,
            budget_usd,
        } => {
            // The key is made and printed here; the engine gets its hash only.
            let (secret, key) = KeyHash::make(tenants::key_random()?);
            let limits = shardgate_core::store::KeySettings {
                rpm,
                tpm,
                budget_usd,
                ..Default::default()
            };
            (
                StoreOp::KeyCreate {
                    tenant: tenant.clone(),
                    name,
                    expires_in_ms: expires.map(tenants::ms),
                    limits,
                    key: key.clone(),
                },
                Box::new(move |_| {
                    format!(
                        "key {} for tenant {tenant} (shown once, store it now):\n{secret}",
                        key.id()
                    )
                }),
            )
        }
        KeyOp::Rotate { key_id, grace } => {
            let (secret, key) = KeyHash::make(tenants::key_random()?);
            (
                StoreOp::KeyRotate {
                    id: key_id.clone(),
                    grace_ms: tenants::ms(grace),
                    key: key.clone(),
                },
                Box::new(move |_| {
                    format!(
                        "key {key_id} rotated: it works for {} more; new key {} (shown once, \
                         store it now):\n{secret}",
                        humantime::format_duration(grace),
                        key.id()
                    )
                }),
            )
        }
        KeyOp::Revoke { key_id } => (
            StoreOp::KeyRevoke { id: key_id.clone() },
            Box::new(move |_| format!("revoked key {key_id}")),
        ),
    };
    tenants::change(instance, timeout, op, said)
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 90d, 24h, 30m)"))
}

fn instance_name(s: &str) -> Result<String, String> {
    check_instance_name(s).map(|()| s.to_owned())
}

/// Why a command failed: the text for stderr and the exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub status: u8,
    pub message: String,
}

impl Failure {
    /// The config file is unreadable or invalid (exit 2).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: 2,
            message: message.into(),
        }
    }

    /// Anything else: not running, refused, timed out (exit 1).
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            status: 1,
            message: message.into(),
        }
    }
}

/// Open the region of `instance`, refusing one whose engine has exited (a stale file).
pub fn open_running(instance: &str) -> Result<Region, Failure> {
    let region = Region::open(instance).map_err(Failure::failed)?;
    let pid = region.header().engine_pid.load(Ordering::Acquire);
    if !pid_alive(pid) {
        return Err(Failure::failed(format!(
            "no shardgate instance {instance:?} is running here: its engine (pid {pid}) has \
             exited, leaving {}",
            region_path(instance).display()
        )));
    }
    Ok(region)
}

/// ctl's one blocking sleep, between reads of the shared counters.
#[allow(
    clippy::disallowed_methods,
    reason = "ctl is a command-line process, not a shard: blocking it stalls no runtime"
)]
pub fn pause(d: Duration) {
    std::thread::sleep(d);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let instance = cli.instance.as_str();
    let result = match cli.command {
        Command::Check { file } => check::run(&file),
        Command::Apply {
            file,
            timeout_ms,
            stall_after_frames,
        } => apply::run(
            instance,
            &file,
            &apply::Options {
                timeout: Duration::from_millis(timeout_ms),
                stall_after_frames,
            },
        ),
        Command::Status { json } => status::run(instance, json),
        Command::Import {
            from:
                ImportFrom::Litellm {
                    config,
                    out,
                    report,
                    keys,
                    store,
                    secrets,
                },
        } => litellm::run(
            &config,
            out.as_ref(),
            report.as_ref(),
            keys.as_ref().zip(store.as_ref()),
            secrets.as_ref(),
        ),
        Command::Fleet {
            op: FleetOp::Status,
        } => fleet::status(instance),
        Command::Top {
            interval_ms,
            iterations,
        } => top::run(
            instance,
            &top::Options {
                interval: Duration::from_millis(interval_ms),
                iterations,
            },
        ),
        Command::Spend {
            tenant,
            key,
            since,
            fleet,
            json,
        } => spend::run(
            instance,
            &shardgate_core::spend::Query {
                tenant,
                key,
                since,
                fleet,
            },
            json,
        ),
        Command::Tenants { op, timeout_ms } => tenant_op(instance, op, timeout_ms),
        Command::Keys { op, timeout_ms } => key_op(instance, op, timeout_ms),
        Command::Access { op, timeout_ms } => {
            access::run(instance, op, Duration::from_millis(timeout_ms))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("{}", f.message);
            ExitCode::from(f.status)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_and_defaults() {
        let cli = Cli::try_parse_from(["shardgate-ctl", "apply", "x.toml"]).expect("parses");
        assert_eq!(cli.instance, "default");
        let Command::Apply {
            timeout_ms,
            stall_after_frames,
            ..
        } = cli.command
        else {
            panic!("not apply")
        };
        assert_eq!(timeout_ms, APPLY_WAIT_MS_MAX);
        assert_eq!(stall_after_frames, None);

        let cli = Cli::try_parse_from([
            "shardgate-ctl",
            "top",
            "--instance",
            "edge-1",
            "--interval-ms",
            "250",
            "--iterations",
            "3",
        ])
        .expect("parses");
        assert_eq!(cli.instance, "edge-1");
        let Command::Top {
            interval_ms,
            iterations,
        } = cli.command
        else {
            panic!("not top")
        };
        assert_eq!((interval_ms, iterations), (250, Some(3)));

        assert!(Cli::try_parse_from(["shardgate-ctl", "--instance", "../x", "status"]).is_err());
        // A denial needs its reason; an approval's limits are optional.
        assert!(Cli::try_parse_from(["shardgate-ctl", "access", "deny", "req_1"]).is_err());
        let cli =
            Cli::try_parse_from(["shardgate-ctl", "access", "approve", "req_1", "--rpm", "5"])
                .expect("parses");
        let Command::Access {
            op: access::AccessOp::Approve { id, rpm, tpm },
            ..
        } = cli.command
        else {
            panic!("not access approve")
        };
        assert_eq!((id.as_str(), rpm, tpm), ("req_1", Some(5), None));
        assert!(Cli::try_parse_from(["shardgate-ctl", "top", "--iterations", "0"]).is_err());
    }
}
