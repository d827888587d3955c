//! The engine's process: parse the command line, load the config, start one pinned shard per
//! core, wait for SIGTERM/SIGINT, drain, exit. Shared by the two binaries, which differ only in
//! their global allocator:
//! - `shardgate` (`src/main.rs`): mimalloc; [`main`]`(None)`.
//! - `shardgate-counted` (`src/bin/shardgate-counted.rs`): the system allocator wrapped by
//!   `stats_alloc`, which counts every call; [`main`]`(Some(probe))`. The probe's counts are
//!   shown on the admin listener's `/metrics` (`shardgate_heap_*`) and printed at exit (the
//!   `count-alloc:` line `bench/scripts/alloc-per-request.sh` reads). The memory regression
//!   test of open streams (`tests/tests/stream_memory.rs`) and the allocations-per-request
//!   benchmark run it; it is never deployed (every allocation costs two atomic adds).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use crate::accesslog::AccessLog;
use crate::admin::{self, AdminState};
use crate::config::{Config, Cores, DriverChoice, Overrides, EMBEDDED_DEFAULT};
use crate::control::shm::Region;
use crate::control::{publish_config, unix_ms};
use crate::limits::{CONFIG_BYTES_MAX, SHUTDOWN_POLL_MS};
use crate::metrics::HeapProbe;
use crate::shard;
use clap::Parser;

/// A multi-tenant LLM gateway and L7 load balancer, thread-per-core on io_uring.
#[derive(Debug, Parser)]
#[command(name = "shardgate", version)]
struct Cli {
    /// TOML config file. Without it, the embedded default (a built-in demo model) runs.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the config and exit (0: valid; 2: each problem printed with its field).
    #[arg(long)]
    check: bool,
    /// Instance name, overriding `[server] instance` (names the shared-memory region
    /// `shardgate-ctl --instance` finds).
    #[arg(long, value_name = "NAME")]
    instance: Option<String>,
    /// Admin listener address (`/metrics`, health), or `off`; overrides `[server] admin_listen`.
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Tuning file written by `shardgate-tune`: its shard count, cores and driver are used
    /// (as with `[server] cores = "tuned"`, which reads `./tuning.toml` without this flag).
    #[arg(long, value_name = "FILE")]
    tuning: Option<PathBuf>,
}

impl Cli {
    fn overrides(&self) -> Result<Overrides, String> {
        if let Some(i) = &self.instance {
            crate::config::check_instance_name(i).map_err(|e| format!("--instance: {e}"))?;
        }
        let admin_listen = match self.admin_listen.as_deref() {
            None => None,
            Some("off") => Some(None),
            Some(a) => Some(Some(a.parse().map_err(|_| {
                format!("--admin-listen: {a:?} is not an IP:port address or \"off\"")
            })?)),
        };
        Ok(Overrides {
            instance: self.instance.clone(),
            admin_listen,
        })
    }
}

/// mimalloc options the `shardgate` binary runs with unless the environment already sets them.
///
/// `MIMALLOC_PURGE_DELAY=0`: pages a burst freed go back to the kernel at once. mimalloc purges
/// only from its own allocation paths after the delay has passed, so with its default (10 ms) a
/// shard whose traffic after a burst is streams' tokens (relayed without allocating) kept the
/// burst's freed pages: 1,000 streams opened at once held 17.6-18.4 KiB of RSS each, 14.0 with
/// the purge at once (docs/benchmarks.md §4). Plain proxying's CPU per request was unchanged
/// (12.30 against 12.26 µs, same run): its buffers come from the shard's spares.
pub const ALLOCATOR_ENV: [(&str, &str); 1] = [("MIMALLOC_PURGE_DELAY", "0")];

/// Run this process again with `vars` set where the environment does not set them: mimalloc
/// reads its options once, when the process loads, before `main`. The pid, arguments and
/// descriptors stay; nothing has started yet. Returns only when nothing was to be set or the
/// `exec` failed (the process then goes on with mimalloc's defaults, and says so).
pub fn exec_with_env(vars: &[(&str, &str)]) {
    use std::os::unix::process::CommandExt as _;
    let missing: Vec<_> = vars
        .iter()
        .filter(|(k, _)| std::env::var_os(k).is_none())
        .collect();
    if missing.is_empty() {
        return;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("shardgate: could not find this executable to run it again with the allocator's options ({e}); mimalloc keeps its defaults");
            return;
        }
    };
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new(exe);
    if let Some(argv0) = args.next() {
        cmd.arg0(argv0);
    }
    cmd.args(args);
    for (k, v) in &missing {
        cmd.env(k, v);
    }
    let err = cmd.exec();
    eprintln!("shardgate: could not run again with the allocator's options ({err}); mimalloc keeps its defaults");
}

/// The engine's `main`: runs until SIGTERM/SIGINT and a drain; the exit code is 2 for a bad
/// command line or config, 1 for a failed start. `heap` is the counting allocator's probe of
/// the `shardgate-counted` binary (None in `shardgate`): its counts go on `/metrics` and into
/// the exit report.
pub fn main(heap: Option<HeapProbe>) -> ExitCode {
    // No transparent huge pages for this process (issue 21): mimalloc madvises its heap for
    // THP, so under `enabled=madvise` every new 2 MiB of heap was one huge-page fault (zeroing
    // and compaction stalled a shard's first burst of 1,000 streams: TTFB p99 ~200 ms against
    // 88 ms without) and RSS grew in 2 MiB steps (53 KiB per open stream against 18 KiB).
    // Best effort: a kernel without the prctl keeps its default.
    let thp_off = rustix::thread::disable_transparent_huge_pages(true);
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if let Err(e) = thp_off {
        tracing::debug!("transparent huge pages not disabled: {e}");
    }
    let overrides = match cli.overrides() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("shardgate: {e}");
            return ExitCode::from(2);
        }
    };
    let (mut config, text, source) = match &cli.config {
        None => (
            Config::embedded_default(),
            EMBEDDED_DEFAULT.to_owned(),
            "embedded default".to_owned(),
        ),
        Some(path) => {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("shardgate: cannot read {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            };
            if text.len() > CONFIG_BYTES_MAX {
                eprintln!(
                    "{}: {} bytes; a config may have at most {CONFIG_BYTES_MAX}",
                    path.display(),
                    text.len()
                );
                return ExitCode::from(2);
            }
            match Config::from_toml(&text) {
                Ok(c) => (c, text, path.display().to_string()),
                Err(errors) => {
                    for e in &errors.0 {
                        eprintln!("{}: {e}", path.display());
                    }
                    return ExitCode::from(2);
                }
            }
        }
    };
    for w in &config.warnings {
        eprintln!("{source}: warning: {w}");
    }
    // In a fleet: whether Redis is there, and which of the address, password or database is
    // wrong. `--check` fails on it; a start goes on (the fleet agent keeps trying, and the
    // instance enforces its share of each limit meanwhile).
    if let Some(f) = &config.fleet {
        if let Err(why) = crate::fleet::check(f) {
            eprintln!("{source}: {why}");
            if cli.check {
                return ExitCode::from(2);
            }
        }
    }
    if cli.check {
        println!("{source}: ok");
        return ExitCode::SUCCESS;
    }
    config.apply_overrides(&overrides);
    // `cores = "tuned"` or --tuning: the shard count, cores and driver from the tuning file.
    let tuning = if cli.tuning.is_some() || config.server.cores == Cores::Tuned {
        let path = cli
            .tuning
            .clone()
            .unwrap_or_else(|| PathBuf::from(TUNING_FILE_DEFAULT));
        let read = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read: {e} (run shardgate-tune to write it)"))
            .and_then(|t| shardgate_tune::parse(&t));
        match read {
            Ok(t) => Some((path, t)),
            Err(e) => {
                eprintln!("shardgate: tuning file {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    match run(config, &text, &source, overrides, tuning, heap) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardgate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The tuning file read for `cores = "tuned"` without `--tuning`, relative to the working
/// directory.
const TUNING_FILE_DEFAULT: &str = "tuning.toml";

/// The embedded default's demo key, printed at start whenever a tenant holds it.
const DEMO_KEY: &str = "sk-demo";

/// Descriptors beyond two per connection: listeners, rings, the region, logs, upstream pools.
const NOFILE_SPARE: u64 = 1024;

/// The version the bootstrap config gets on the ring; `shardgate-ctl apply` numbers on from it.
const BOOTSTRAP_VERSION: u64 = 1;

fn run(
    config: Config,
    text: &str,
    source: &str,
    overrides: Overrides,
    tuning: Option<(PathBuf, shardgate_tune::Tuning)>,
    heap: Option<HeapProbe>,
) -> Result<(), String> {
    let mut cores = core_affinity::get_core_ids().unwrap_or_default();
    let shards = match (&tuning, config.server.cores) {
        (Some((path, t)), _) => {
            // Pin to the tuned cores, in order; each must be one this process may use.
            let allowed = cores.clone();
            cores = t
                .cores
                .iter()
                .map(|&id| {
                    allowed.iter().copied().find(|c| c.id == id).ok_or_else(|| {
                        format!(
                            "tuning file {}: core {id} is not available to this process",
                            path.display()
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
            t.shards
        }
        (None, Cores::Count(n)) => n,
        (None, Cores::Auto | Cores::Tuned) => cores.len().max(1),
    };
    let driver = match std::env::var("SHARDGATE_DRIVER") {
        Ok(v) => DriverChoice::parse(&v)
            .ok_or_else(|| format!("SHARDGATE_DRIVER={v:?}: must be auto, io_uring or epoll"))?,
        // A tuning file that found io_uring blocked means epoll; otherwise "auto" (which
        // prefers io_uring and still falls back). A driver named in the config wins.
        Err(_) => match (&tuning, config.server.driver) {
            (Some((_, t)), DriverChoice::Auto) if t.driver == shardgate_tune::Driver::Epoll => {
                DriverChoice::Epoll
            }
            (_, d) => d,
        },
    };
    // Every connection costs a descriptor, and a proxied one two (the client's and the
    // upstream's): take the whole hard limit at once (as nginx's worker_rlimit_nofile and Go
    // programs do), and say so when even that is below what `connections_max` allows.
    // An upgrade (a second instance on this port, then SIGTERM to this one) keeps the
    // connections queued in this one's listeners only with tcp_migrate_req on (issue 19).
    let migrate = std::fs::read_to_string(shardgate_tune::MIGRATE_REQ_PATH).ok();
    if let Some(why) = shardgate_tune::migrate_req_advice(migrate.as_deref()) {
        tracing::warn!("{why} (docs/operations.md, upgrades)");
    }
    let nofile = crate::runtime::raise_nofile();
    let nofile_wanted = (shards as u64)
        .saturating_mul(config.server.connections_max as u64)
        .saturating_mul(2)
        .saturating_add(NOFILE_SPARE);
    if nofile < nofile_wanted {
        tracing::warn!(
            "open-file limit {nofile} is below the {nofile_wanted} that {shards} shard(s) with \
             connections_max = {} may need (two per proxied connection); \
             past it, accepts and upstream connects fail: raise LimitNOFILE (docs/operations.md)",
            config.server.connections_max
        );
    }
    // Port 0: pick one free port now, so every shard's SO_REUSEPORT socket shares it. The
    // picking socket stays bound (never listening, so it takes no connections) for the
    // process's life: no other program can take the port before the shards bind it.
    let mut listen = config.server.listen;
    let _port_hold = if listen.port() == 0 {
        let (addr, hold) = hold_free_port(listen)?;
        listen = addr;
        Some(hold)
    } else {
        None
    };
    let mut listen_plain = config.server.listen_plain;
    let _plain_port_hold = match listen_plain {
        Some(addr) if addr.port() == 0 => {
            let (addr, hold) = hold_free_port(addr)?;
            listen_plain = Some(addr);
            Some(hold)
        }
        _ => None,
    };
    // The system trust store for https:// upstreams: read once, shared read-only by the shards.
    let roots = crate::tls::system_roots();

    // The shared-memory region: the config ring from shardgate-ctl and the shards' counters.
    // The bootstrap config goes on the ring first, so ctl can diff against it.
    let instance = config.server.instance.clone();
    let region = Region::create(&instance, shards, unix_ms())?;
    let region: &'static Region = Box::leak(Box::new(region));
    let _remove_region = RemoveOnDrop(region.path().map(Path::to_path_buf));
    if let Some((path, t)) = &tuning {
        let h = region.header();
        let shown = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        crate::control::shm::store_text(
            &h.tuning_path,
            &h.tuning_len,
            shown.display().to_string().as_bytes(),
        );
        h.tuning_created_unix
            .store(t.created_unix, Ordering::Relaxed);
    }
    publish_config(region, BOOTSTRAP_VERSION, text, &config)?;

    let shutdown = Arc::new(AtomicBool::new(false));
    // SIGHUP: reopen the access log (logrotate moves the file, then signals).
    let reopen = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reopen.clone())
        .map_err(|e| format!("cannot install signal handler: {e}"))?;
    // SIGHUP also reads Bedrock's credentials files again.
    let reread_keys = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reread_keys.clone())
        .map_err(|e| format!("cannot install signal handler: {e}"))?;
    let access_log = match &config.server.access_log {
        Some(path) => Some(AccessLog::start(path, reopen)?),
        None => None,
    };
    // The GenAI metrics: one block per shard, written by it, summed by `/metrics`.
    let genai: Vec<Arc<crate::telemetry::genai::Block>> =
        (0..shards).map(|_| Arc::default()).collect();
    // Traces: the hub the shards' span batches go through, and the exporter thread. As many
    // batches as `queue_spans_max` holds, plus the one each shard fills.
    let telemetry = match &config.telemetry {
        Some(t) => {
            let queued = usize::try_from(t.queue_spans_max / crate::limits::SPAN_BATCH_MAX as u64)
                .unwrap_or(1)
                .max(1);
            let hub = Arc::new(crate::telemetry::span::Hub::new(queued + shards));
            let exporter =
                crate::telemetry::export::spawn(t.clone(), hub.clone(), instance.clone())
                    .map_err(|e| format!("cannot start the OTLP exporter thread: {e}"))?;
            tracing::info!(
                "traces: {} ({}), sampled at {}",
                t.traces_url,
                match t.protocol {
                    crate::config::OtlpProtocol::Protobuf => "http/protobuf",
                    crate::config::OtlpProtocol::Json => "http/json",
                },
                t.sample_ratio
            );
            Some((hub, exporter, t.sample_ratio))
        }
        None => None,
    };
    // The admin listener: its own thread, reading the region; never on a shard.
    let draining = Arc::new(AtomicBool::new(false));
    let admin = match config.server.admin_listen {
        Some(addr) => {
            let listener = std::net::TcpListener::bind(addr)
                .map_err(|e| format!("cannot listen on {addr} (admin_listen): {e}"))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            region
                .header()
                .admin_port
                .store(u64::from(addr.port()), Ordering::Relaxed);
            let state = AdminState {
                region,
                instance: instance.clone(),
                draining: draining.clone(),
                fleet: config.fleet.clone(),
                heap,
                spans: telemetry.as_ref().map(|(hub, _, _)| hub.clone()),
                genai: genai.clone(),
            };
            admin::spawn(listener, state).map_err(|e| format!("cannot start admin thread: {e}"))?;
            Some(addr)
        }
        None => None,
    };
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // A second signal while draining exits at once, with status 1.
        signal_hook::flag::register_conditional_shutdown(signal, 1, shutdown.clone())
            .map_err(|e| format!("cannot install signal handler: {e}"))?;
        signal_hook::flag::register(signal, shutdown.clone())
            .map_err(|e| format!("cannot install signal handler: {e}"))?;
    }

    // In a fleet, the agent trading this instance's share of each limit with Redis; it works
    // from the newest config the builder built.
    let latest = config.fleet.as_ref().map(|_| {
        let l = Arc::new(crate::fleet::Latest::default());
        l.set(Arc::new(config.clone()));
        l
    });
    if let (Some(f), Some(l)) = (&config.fleet, &latest) {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let id = format!("{}/{}/{}", host.trim(), instance, std::process::id());
        crate::fleet::spawn(f.clone(), region, l.clone(), id)
            .map_err(|e| format!("cannot start the fleet agent thread: {e}"))?;
        // And the watcher that has the builder take the fleet's changes to the tenant store.
        crate::fleet_store::watch(region, instance.clone(), l.clone())
            .map_err(|e| format!("cannot start the fleet store thread: {e}"))?;
        // And the pusher of this instance's usage to the fleet's counters.
        crate::fleet_usage::spawn(f.clone(), region)
            .map_err(|e| format!("cannot start the fleet usage thread: {e}"))?;
    }
    // New configs are validated once, off the shards, by the builder thread.
    let builder = crate::builder::Builder::spawn(
        config.clone(),
        BOOTSTRAP_VERSION,
        overrides.clone(),
        shards,
        Some(region),
    )
    .map_err(|e| format!("cannot start the config builder thread: {e}"))?
    .with_latest(latest);
    // Tenants' access requests are filed in the store by a thread of their own, off the shards.
    let access = crate::access::Desk::spawn(region, instance.clone())
        .map_err(|e| format!("cannot start the access-request thread: {e}"))?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut threads = Vec::with_capacity(shards);
    // The shards listen once every one is ready; they drain when this thread says so.
    let handover = Arc::new(crate::listen::Handover::default());
    let (fabric, bells) = crate::fair::Fabric::new(shards)
        .map_err(|e| format!("cannot make the shards' bells: {e}"))?;
    let key_feeds = crate::aws_keys::start(
        crate::aws_keys::watched_files(&config),
        shards,
        reread_keys,
        shutdown.clone(),
    )
    .map_err(|e| format!("cannot start the aws-keys thread: {e}"))?;
    for ((id, bell), aws_keys) in bells.into_iter().enumerate().zip(key_feeds) {
        let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
        let start = shard::ShardStart {
            id,
            core: core.map(|c| c.id),
            cfg: config.clone(),
            version: BOOTSTRAP_VERSION,
            region,
            access_log: access_log
                .as_ref()
                .map(|l| l.shard_log(&region.shard(id).info.0.access_log_dropped))
                .transpose()?,
            builder: builder.clone(),
            access: access.clone(),
            listen,
            listen_plain,
            driver,
            handover: handover.clone(),
            roots: roots.clone(),
            fabric: fabric.clone(),
            bell,
            aws_keys,
            spans: telemetry.as_ref().map(|(hub, _, ratio)| {
                crate::telemetry::span::ShardSpans::new(hub.clone(), *ratio)
            }),
            genai: genai[id].clone(),
        };
        let ready = ready_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("shard-{id}"))
            .spawn(move || {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        tracing::warn!(shard = id, "could not pin to core {}", core.id);
                    }
                }
                shard::run(start, ready);
            })
            .map_err(|e| format!("cannot start shard thread: {e}"))?;
        threads.push((thread, core));
    }
    drop(ready_tx);
    // Calls the shards' start off if this thread returns early.
    let gate = GateGuard(&handover);
    let mut own_inodes = Vec::with_capacity(shards * 2);
    for _ in 0..shards {
        let ready = ready_rx
            .recv()
            .map_err(|_| "a shard stopped during start-up".to_owned())?;
        match ready.result {
            Ok(bound) => {
                own_inodes.extend(bound.inodes);
                let kind = bound.driver;
                let core = threads[ready.shard]
                    .1
                    .map_or("unpinned".to_owned(), |c| format!("core {}", c.id));
                tracing::info!(
                    "shard {} on {core}: {} driver",
                    ready.shard,
                    kind.describe()
                );
            }
            Err(e) => return Err(format!("shard {}: {e}", ready.shard)),
        }
    }
    // Every shard runs its config: all start listening now, and the start-up line waits for
    // them (a script that waits for it may connect at once).
    handover.open(true);
    drop(gate);
    while handover.listening() < shards && threads.iter().all(|(t, _)| !t.is_finished()) {
        wait_ms(1);
    }
    if let Some(addr) = admin {
        println!("admin listening on http://{addr} (/metrics, /health/readiness)");
    }
    let plural = if shards == 1 { "" } else { "s" };
    let scheme = if config.server.tls.is_empty() {
        "http"
    } else {
        "https"
    };
    // The plain listener's line comes first: the listening line is the last a script waits for.
    if let Some(plain) = listen_plain {
        println!("plain listener on http://{plain}");
    }
    println!(
        "shardgate listening on {scheme}://{listen} ({shards} shard{plural}, config: {source})"
    );
    println!(
        "try: curl -s {scheme}://{listen}/v1/chat/completions -H 'Content-Type: application/json' \
         -H 'Authorization: Bearer sk-demo' \
         -d '{{\"model\":\"demo\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello World!\"}}]}}'"
    );
    println!("instance {instance} (shardgate-ctl --instance {instance} status)");
    let demo = crate::tenant::hash_key(DEMO_KEY.as_bytes());
    if let Some(t) = config
        .tenants
        .iter()
        .find(|t| t.keys.iter().any(|k| k.hash == demo))
    {
        println!(
            "demo tenant {:?}: key {DEMO_KEY} (the embedded default's; replace it before exposing this gateway)",
            t.name
        );
    }
    // Wait for the signal, then tell readers (ctl, admin) the engine is draining.
    while !shutdown.load(Ordering::Relaxed) && threads.iter().any(|(t, _)| !t.is_finished()) {
        wait_ms(SHUTDOWN_POLL_MS);
    }
    region.header().draining.store(1, Ordering::Relaxed);
    draining.store(true, Ordering::Relaxed);
    // Whether another instance takes each listening address over (an upgrade), read once.
    let addrs: Vec<_> = std::iter::once(listen).chain(listen_plain).collect();
    let looked = std::time::Instant::now();
    let peers = crate::listen::peers_taking_over(&addrs, &own_inodes);
    tracing::info!(
        "draining; {} (looked for {} µs)",
        if peers.is_empty() {
            "no other instance takes the port over: new connections are refused".to_owned()
        } else {
            format!("another instance takes over {peers:?}")
        },
        looked.elapsed().as_micros()
    );
    handover.drain(peers);
    for (thread, _) in threads {
        let _ = thread.join();
    }
    // Every shard has written its access-log lines (it closed its ShardLog before it ended).
    if let Some(log) = access_log {
        log.stop();
    }
    // Every shard has handed over its last spans: the exporter sends them and ends.
    if let Some((hub, exporter, _)) = telemetry {
        hub.stop.store(true, Ordering::Release);
        let _ = exporter.join();
    }
    tracing::info!("drained; exiting");
    if let Some(probe) = heap {
        heap_report(probe);
    }
    Ok(())
}

/// Calls the shards' start off unless the gate was opened first (an early return of `main`
/// leaves no shard waiting at it).
struct GateGuard<'a>(&'a crate::listen::Handover);

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        self.0.open(false);
    }
}

/// Removes the region file when the engine exits normally (a crashed engine's file is replaced
/// by the next start of the same instance).
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The main thread's wait between looks at the shutdown flag (it serves no requests).
fn wait_ms(ms: u64) {
    #[allow(
        clippy::disallowed_methods,
        reason = "the main thread only waits for shards; it is not a shard"
    )]
    std::thread::sleep(std::time::Duration::from_millis(ms));
}

/// The counting allocator's totals at exit, on stdout, in the one line
/// `bench/scripts/alloc-per-request.sh` parses (keep its field order):
/// `count-alloc: A allocations, R reallocations, N requests, C connections accepted, U upstream
/// connects`.
fn heap_report(probe: HeapProbe) {
    use shard::{CONNECTIONS_ACCEPTED, REQUESTS_SERVED, UPSTREAM_CONNECTS};
    let requests = REQUESTS_SERVED.load(Ordering::Relaxed);
    let heap = probe();
    println!(
        "count-alloc: {} allocations, {} reallocations, {requests} requests, \
         {} connections accepted, {} upstream connects",
        heap.allocations,
        heap.reallocations,
        CONNECTIONS_ACCEPTED.load(Ordering::Relaxed),
        UPSTREAM_CONNECTS.load(Ordering::Relaxed)
    );
}

/// Bind a socket with SO_REUSEPORT (and SO_REUSEADDR) to `addr` (port 0) without listening:
/// the port the kernel picked, and the socket holding it.
fn hold_free_port(
    addr: std::net::SocketAddr,
) -> Result<(std::net::SocketAddr, socket2::Socket), String> {
    use socket2::{Domain, Socket, Type};
    let fail = |e: std::io::Error| format!("cannot listen on {addr}: {e}");
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_reuse_port(true).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    let picked = socket
        .local_addr()
        .map_err(fail)?
        .as_socket()
        .ok_or_else(|| format!("cannot listen on {addr}: not an IP address"))?;
    Ok((picked, socket))
}
