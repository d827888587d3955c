//! Shards: one pinned thread per core, each with its own monoio runtime, SO_REUSEPORT listener,
//! upstream pools and counters. Nothing here is shared between shards: each reads new configs
//! from the shared-memory ring itself and writes only its own counter block; the process-wide
//! shutdown flag is read on a timer.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use monoio::net::TcpListener;

use crate::accesslog::ShardLog;
use crate::admit::{Locals, TenantLimits};
use crate::balance::{DeploymentSpec, Group, Policy};
use crate::config::UpstreamConfig;
use crate::config::{Config, DriverChoice, Overrides, TlsFiles};
use crate::control::shm::{Region, ShardInfo};
use crate::control::stats::{self, ShardStats};
use crate::control::ShardControl;
use crate::drain::DrainSignal;
use crate::fair::{Capped, Fabric, Queues, UpstreamCap, FAIR_NO_TENANT};
use crate::limits::{
    ACCESS_LOG_FLUSH_MS, CONTROL_POLL_MS, LISTEN_BACKLOG, SHUTDOWN_POLL_MS, WRITE_BUF_BYTES,
};
use crate::models::ModelGroup;
use crate::route::Routes;
pub use crate::runtime::DriverKind;
use crate::template::Templates;
use crate::tenant::Tenants;
use crate::upstream::Pools;

/// How often a shard gives back tenants' stale leases, ms.
const LEASE_CHECK_MS: u64 = 250;

/// Largest write buffer kept as a spare, bytes.
const SPARE_BUF_BYTES_MAX: usize = 256 * 1024;

/// Spare write buffers kept per shard.
const SPARE_BUFS_MAX: usize = 1024;

/// What a shard reports to the main thread once its listener is bound.
#[derive(Debug)]
pub struct Ready {
    pub shard: usize,
    pub result: Result<DriverKind, String>,
}

/// One config as a shard serves it: the validated config and what the shard derived from it.
/// A request keeps the `Rc<Snapshot>` it started with; a new config makes a new snapshot.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub cfg: Config,
    pub routes: Routes,
    /// First flat endpoint number of each upstream.
    pub endpoint_base: Vec<usize>,
    /// The shard's pool slot of each flat endpoint.
    pub pool_slot: Vec<usize>,
    /// The counter slot of each upstream and of each route.
    pub upstream_stats: Vec<usize>,
    pub route_stats: Vec<usize>,
    /// Round-robin position per upstream.
    pub rr: Vec<Cell<usize>>,
    /// Key hash → tenant index.
    pub tenants: Tenants,
    /// Per tenant: its limits (the cells shared by every shard, this shard's leases), and
    /// its counter slot.
    pub tenant_limits: Vec<TenantLimits>,
    pub tenant_stats: Vec<usize>,
    /// Per tenant: its finish-tag cell in the fair queues (its slot in the region's table).
    pub tenant_fair: Vec<usize>,
    /// Per upstream: its cap on requests in flight and this shard's fair queue in front of it.
    pub upstream_caps: Vec<UpstreamCap>,
    /// Model name → group index, and each group's balancer state on this shard (kept across
    /// configs while a group's deployments are unchanged; `None` only for a group that could
    /// not be built, which validation rules out).
    pub model_index: HashMap<String, usize>,
    pub groups: Vec<Option<Rc<Group>>>,
    /// Per group, per deployment: its rpm/tpm quota over all shards (None: no quota).
    pub deployment_limits: Vec<Vec<Option<TenantLimits>>>,
    /// Prompt templates, by name, model alias and route.
    pub templates: Templates,
    /// Per tenant: its open connections on this shard (kept across configs by name).
    pub tenant_conns: Vec<Rc<Cell<usize>>>,
    /// The certificates `listen` serves (`[[server.tls]]`); `None` without TLS.
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    /// Per upstream with `https://` endpoints: its TLS client config (its trust store, and
    /// this shard's session cache, kept across configs while its CA file is the same).
    pub tls_clients: Vec<Option<Arc<rustls::ClientConfig>>>,
}

impl Snapshot {
    fn new(
        version: u64,
        cfg: Config,
        pools: &Pools,
        stats: &ShardStats,
        region: &'static Region,
        kept: &Kept,
    ) -> Self {
        let mut endpoint_base = Vec::with_capacity(cfg.upstreams.len());
        let mut addrs = Vec::new();
        for u in &cfg.upstreams {
            endpoint_base.push(addrs.len());
            addrs.extend(u.endpoints.iter().map(|e| (e.addr, e.tls_name.clone())));
        }
        Self {
            tenant_conns: cfg
                .tenants
                .iter()
                .map(|t| kept.tenant_conns(&t.name))
                .collect(),
            tls_server: kept.tls_server(&cfg),
            tls_clients: cfg.upstreams.iter().map(|u| kept.tls_client(u)).collect(),
            version,
            routes: Routes::new(&cfg.routes),
            pool_slot: pools.assign(&addrs),
            upstream_stats: cfg
                .upstreams
                .iter()
                .map(|u| stats.upstream_slot(&u.name))
                .collect(),
            route_stats: cfg
                .routes
                .iter()
                .map(|r| stats.route_slot(&r.path_prefix))
                .collect(),
            rr: cfg.upstreams.iter().map(|_| Cell::new(0)).collect(),
            tenants: Tenants::new(&cfg.tenants),
            tenant_limits: cfg
                .tenants
                .iter()
                .map(|t| TenantLimits::new(t, region.tenant(&t.name), kept.locals.get(&t.name)))
                .collect(),
            tenant_stats: cfg
                .tenants
                .iter()
                .map(|t| stats.tenant_slot(&t.name))
                .collect(),
            tenant_fair: cfg
                .tenants
                .iter()
                .map(|t| {
                    region
                        .tenant_slot(&t.name)
                        .map_or(FAIR_NO_TENANT, |(i, _)| i)
                })
                .collect(),
            templates: Templates::new(cfg.templates.clone()),
            model_index: cfg
                .models
                .iter()
                .enumerate()
                .map(|(i, m)| (m.name.clone(), i))
                .collect(),
            deployment_limits: cfg
                .models
                .iter()
                .map(|m| {
                    m.deployments
                        .iter()
                        .enumerate()
                        .map(|(i, d)| {
                            if d.rpm.is_none() && d.tpm.is_none() {
                                return None;
                            }
                            // Deployment quotas share the tenant table; \u{1} keeps them apart.
                            let key = format!("\u{1}deployment/{}/{i}", m.name);
                            Some(TenantLimits::rates(
                                d.rpm,
                                d.tpm,
                                region.tenant(&key),
                                kept.locals.get(&key),
                            ))
                        })
                        .collect()
                })
                .collect(),
            groups: cfg
                .models
                .iter()
                .map(|m| kept.balancers.get(m, &cfg.upstreams))
                .collect(),
            upstream_caps: cfg
                .upstreams
                .iter()
                .map(|u| UpstreamCap {
                    capped: u.max_concurrency.and_then(|max| {
                        // Upstream caps share the tenant table; \u{1} keeps their names apart
                        // (tenant names hold no control characters).
                        let (slot, cells) =
                            region.tenant_slot(&format!("\u{1}upstream/{}", u.name))?;
                        let shared = kept.fabric.upstream(slot)?;
                        let queue = kept.queues.get(&u.name, kept.shard, shared, &kept.fabric);
                        Some(Capped {
                            cells,
                            queue,
                            max,
                            headroom: u.headroom_slots,
                        })
                    }),
                })
                .collect(),
            endpoint_base,
            cfg,
        }
    }

    /// What connecting to endpoint `ep_index` of `upstream` needs for TLS (`None`: plain).
    pub fn tls_target(&self, upstream: usize, ep_index: usize) -> crate::upstream::TlsTarget<'_> {
        let name = self
            .cfg
            .upstreams
            .get(upstream)?
            .endpoints
            .get(ep_index)?
            .tls_name
            .as_deref()?;
        Some((self.tls_clients.get(upstream)?.as_ref()?, name))
    }

    /// The fair queues' cell of `tenant` (requests without one share [`FAIR_NO_TENANT`]).
    pub fn fair_slot(&self, tenant: Option<usize>) -> usize {
        tenant
            .and_then(|t| self.tenant_fair.get(t).copied())
            .unwrap_or(FAIR_NO_TENANT)
    }

    /// Pick the next endpoint of `upstream` round-robin: (pool slot, index in the upstream).
    pub fn pick_endpoint(&self, upstream: usize) -> (usize, usize) {
        let n = self.cfg.upstreams[upstream].endpoints.len().max(1);
        let i = self.rr[upstream].get() % n;
        self.rr[upstream].set(i + 1);
        (self.pool_slot[self.endpoint_base[upstream] + i], i)
    }
}

/// A shard's state that outlives configs, found by name when a new config is applied.
#[derive(Debug)]
pub struct Kept {
    /// Tenants' leases, by tenant name.
    pub locals: Locals,
    /// Fair queues in front of capped upstreams, by upstream name.
    pub queues: Queues,
    /// This shard's number, and what it shares with the other shards for fair queueing.
    shard: usize,
    fabric: Arc<Fabric>,
    /// Model groups' balancers, by group name.
    pub balancers: Balancers,
    /// The system trust store (read once per process).
    pub roots: Arc<rustls::RootCertStore>,
    /// TLS client configs by upstream name, with the CA file each was built from.
    tls_clients: RefCell<TlsClients>,
    /// The last server config built, with the certificate files it was built from.
    tls_server: RefCell<Option<(Vec<TlsFiles>, Arc<rustls::ServerConfig>)>>,
    /// Open connections per tenant name on this shard.
    tenant_conns: RefCell<HashMap<String, Rc<Cell<usize>>>>,
}

type TlsClients = HashMap<String, (Option<(String, Vec<u8>)>, Arc<rustls::ClientConfig>)>;

impl Kept {
    pub fn new(roots: Arc<rustls::RootCertStore>, shard: usize, fabric: Arc<Fabric>) -> Self {
        Self {
            locals: Locals::default(),
            queues: Queues::default(),
            shard,
            fabric,
            balancers: Balancers::default(),
            roots,
            tls_clients: RefCell::new(HashMap::new()),
            tls_server: RefCell::new(None),
            tenant_conns: RefCell::new(HashMap::new()),
        }
    }

    /// The open-connection count of tenant `name` on this shard.
    fn tenant_conns(&self, name: &str) -> Rc<Cell<usize>> {
        self.tenant_conns
            .borrow_mut()
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// The server config for `cfg`'s certificates: the previous one while they are the same
    /// (so its session cache lives on), a new one when they changed (session tickets still
    /// resume: the ticket key is the process's). Should building fail (validation checked
    /// every pair, so it should not), the previous one stays.
    fn tls_server(&self, cfg: &Config) -> Option<Arc<rustls::ServerConfig>> {
        let files = &cfg.server.tls;
        if files.is_empty() {
            return None;
        }
        let mut kept = self.tls_server.borrow_mut();
        if let Some((f, c)) = kept.as_ref() {
            if f == files {
                return Some(c.clone());
            }
        }
        let pairs: Vec<_> = files.iter().map(TlsFiles::as_cert_files).collect();
        match crate::tls::server_config(&pairs) {
            Ok(c) => {
                *kept = Some((files.clone(), c.clone()));
                Some(c)
            }
            Err(e) => {
                tracing::error!("TLS certificates not changed: {e}");
                kept.as_ref().map(|(_, c)| c.clone())
            }
        }
    }

    /// The TLS client config of upstream `u` (`None` without `https://` endpoints).
    fn tls_client(&self, u: &UpstreamConfig) -> Option<Arc<rustls::ClientConfig>> {
        if !u.endpoints.iter().any(|e| e.tls_name.is_some()) {
            return None;
        }
        let mut map = self.tls_clients.borrow_mut();
        if let Some((ca, c)) = map.get(&u.name) {
            if *ca == u.ca {
                return Some(c.clone());
            }
        }
        let ca = u.ca.as_ref().map(|(p, pem)| (p.as_str(), pem.as_slice()));
        match crate::tls::client_config(&self.roots, ca) {
            Ok(c) => {
                map.insert(u.name.clone(), (u.ca.clone(), c.clone()));
                Some(c)
            }
            Err(e) => {
                // Validation built this config once already; should it fail here, trust
                // nothing (every handshake fails with a 502) rather than fall back to plain.
                tracing::error!(upstream = %u.name, "TLS client config: {e}; trusting no certificate");
                crate::tls::client_config(
                    &std::sync::Arc::new(rustls::RootCertStore::empty()),
                    None,
                )
                .ok()
            }
        }
    }
}

/// Each model group's balancer on this shard, by group name, with the deployments it was built
/// for: a new config keeps a group's latency estimates and health while its deployments (and
/// strategy) stay the same.
#[derive(Debug, Default)]
pub struct Balancers {
    by_name: RefCell<HashMap<String, (String, Rc<Group>)>>,
}

impl Balancers {
    fn get(&self, m: &ModelGroup, upstreams: &[UpstreamConfig]) -> Option<Rc<Group>> {
        let fingerprint = format!(
            "{:?}|{:?}",
            m.strategy,
            m.deployments
                .iter()
                .map(|d| (
                    upstreams.get(d.upstream).map(|u| u.name.as_str()),
                    &d.model,
                    d.weight,
                    d.max_outstanding
                ))
                .collect::<Vec<_>>()
        );
        let mut map = self.by_name.borrow_mut();
        if let Some((fp, g)) = map.get(&m.name) {
            if *fp == fingerprint {
                return Some(g.clone());
            }
        }
        let policy = Policy {
            strategy: m.strategy,
            ..Policy::default()
        };
        let specs: Vec<DeploymentSpec> = m
            .deployments
            .iter()
            .map(|d| DeploymentSpec {
                weight: d.weight,
                max_outstanding: d.max_outstanding,
            })
            .collect();
        let g = Rc::new(Group::new(&policy, &specs, 0).ok()?);
        map.insert(m.name.clone(), (fingerprint, g.clone()));
        Some(g)
    }
}

/// Everything one shard owns. Lives in an `Rc` on the shard's thread only.
#[derive(Debug)]
pub struct ShardCtx {
    pub id: usize,
    snapshot: RefCell<Rc<Snapshot>>,
    pub pools: Pools,
    spare_bufs: RefCell<Vec<Vec<u8>>>,
    pub drain: DrainSignal,
    pub control: ShardControl,
    pub access_log: Option<ShardLog>,
    /// What a new config keeps of the old one's state.
    kept: Kept,
    /// The shard's random source (xorshift; for the balancers' random choices).
    rng: Cell<u64>,
    /// Buffers of LLM requests, lent per request.
    pub llm_pool: RefCell<Vec<crate::conn::LlmBufs>>,
    /// Open client connections (mirrored into the shared counters).
    connections: Cell<usize>,
    /// Requests being served (mirrored into the shared counters).
    requests_inflight: Cell<usize>,
    /// Connections past `connections_max` being answered 503 now.
    refusals_answering: Cell<usize>,
    /// Warnings about refused connections and failed accepts, one a second at most.
    refused_log: LogLimit,
    accept_error_log: LogLimit,
}

impl ShardCtx {
    pub fn new(
        id: usize,
        version: u64,
        cfg: Config,
        region: &'static Region,
        overrides: Overrides,
        access_log: Option<ShardLog>,
        kept: Kept,
    ) -> Self {
        let control = ShardControl::new(region, id, version, overrides);
        let pools = Pools::new();
        let snapshot = Snapshot::new(version, cfg, &pools, &control.stats, region, &kept);
        Self {
            id,
            snapshot: RefCell::new(Rc::new(snapshot)),
            pools,
            spare_bufs: RefCell::new(Vec::new()),
            drain: DrainSignal::new(),
            control,
            access_log,
            kept,
            rng: Cell::new(0x9e37_79b9_7f4a_7c15 ^ (id as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9)),
            llm_pool: RefCell::new(Vec::new()),
            connections: Cell::new(0),
            requests_inflight: Cell::new(0),
            refusals_answering: Cell::new(0),
            refused_log: LogLimit::default(),
            accept_error_log: LogLimit::default(),
        }
    }

    /// The config new requests use. Cheap: a reference-count increment.
    pub fn snapshot(&self) -> Rc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Take a new config from the ring if one was published: one atomic load when none was.
    /// Called between requests and on the shard's timer.
    pub fn refresh(&self) {
        if !self.control.has_news() {
            return;
        }
        let current = self.snapshot();
        if let Some((version, cfg)) = self.control.poll(&current.cfg) {
            let next = Snapshot::new(
                version,
                cfg,
                &self.pools,
                &self.control.stats,
                self.control.region(),
                &self.kept,
            );
            *self.snapshot.borrow_mut() = Rc::new(next);
            // Pools of endpoints no longer named by the new config are closed; requests of
            // the old snapshot still in flight drop their connections instead of pooling.
            self.pools.retain_assigned();
            self.control.applied(version);
            tracing::info!(shard = self.id, version, "config applied");
        }
    }

    /// The next number of the shard's xorshift64 sequence.
    pub fn next_random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x
    }

    pub fn info(&self) -> &'static ShardInfo {
        self.control.stats.info()
    }

    pub fn open_connections(&self) -> usize {
        self.connections.get()
    }

    fn connection_opened(&self) {
        self.connections.set(self.connections.get() + 1);
        let info = self.info();
        stats::set(&info.connections, self.connections.get() as u64);
        stats::add(&info.connections_accepted, 1);
    }

    fn connection_closed(&self) {
        self.connections
            .set(self.connections.get().saturating_sub(1));
        stats::set(&self.info().connections, self.connections.get() as u64);
    }

    /// Count a request in flight until the guard drops, or `None` (shed it) when the shard
    /// already serves `requests_inflight_max`.
    pub fn begin_request(&self, max: usize) -> Option<InflightGuard<'_>> {
        let n = self.requests_inflight.get();
        if n >= max {
            stats::add(&self.info().requests_shed, 1);
            return None;
        }
        self.requests_inflight.set(n + 1);
        stats::set(&self.info().requests_inflight, n as u64 + 1);
        Some(InflightGuard(self))
    }

    /// A new connection past `connections_max`: counted, and logged at most once a second
    /// (an attack would otherwise flood the log).
    fn connection_refused(&self) {
        stats::add(&self.info().connections_refused, 1);
        if let Some(also) = self.refused_log.allow(Instant::now()) {
            tracing::warn!(
                shard = self.id,
                refused = self.info().connections_refused.load(Ordering::Relaxed),
                "connections_max reached; new connections are refused ({also} more since the last warning)"
            );
        }
    }

    /// An accept that failed (EMFILE and friends): logged at most once a second.
    fn accept_failed(&self, e: &std::io::Error) {
        if let Some(also) = self.accept_error_log.allow(Instant::now()) {
            tracing::warn!(
                shard = self.id,
                "accept failed: {e} ({also} more since the last warning)"
            );
        }
    }

    pub fn upstream_connected(&self) {
        stats::add(&self.info().upstream_connects, 1);
    }

    /// A cleared write buffer from the shard's spares (allocated only when none is spare).
    pub fn take_buf(&self) -> Vec<u8> {
        self.spare_bufs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(WRITE_BUF_BYTES))
    }

    pub fn put_buf(&self, mut buf: Vec<u8>) {
        let mut spare = self.spare_bufs.borrow_mut();
        // A buffer grown for a large request body is freed rather than kept idle.
        if spare.len() < SPARE_BUFS_MAX
            && buf.capacity() >= WRITE_BUF_BYTES
            && buf.capacity() <= SPARE_BUF_BYTES_MAX
        {
            buf.clear();
            spare.push(buf);
        }
    }
}

/// One log line a second at most for an event that repeats (an attack, exhausted
/// descriptors), counting the ones it holds back.
#[derive(Debug, Default)]
struct LogLimit {
    last: Cell<Option<Instant>>,
    held_back: Cell<u64>,
}

impl LogLimit {
    /// `Some(n)`: log now, `n` events went unlogged since the last line. `None`: hold back.
    fn allow(&self, now: Instant) -> Option<u64> {
        let due = self
            .last
            .get()
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if !due {
            self.held_back.set(self.held_back.get() + 1);
            return None;
        }
        self.last.set(Some(now));
        Some(self.held_back.replace(0))
    }
}

/// A request counted in flight on its shard ([`ShardCtx::begin_request`]) until dropped.
#[derive(Debug)]
pub struct InflightGuard<'a>(&'a ShardCtx);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        let n = self.0.requests_inflight.get().saturating_sub(1);
        self.0.requests_inflight.set(n);
        stats::set(&self.0.info().requests_inflight, n as u64);
    }
}

/// Connections past `connections_max` answered `503` at once, at most, per shard; the ones past
/// this are closed unanswered (as on a TLS listener, where a plain answer means nothing).
const REFUSALS_ANSWERING_MAX: usize = 64;

/// Accepts kept waiting on the listener at once, per shard, on io_uring.
const ACCEPTS_IN_FLIGHT: usize = 16;

/// Accept connections until draining starts, spawning a task per connection.
async fn accept_loop(ctx: Rc<ShardCtx>, listener: Rc<TcpListener>, tls: bool) {
    loop {
        monoio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if ctx.open_connections() >= ctx.snapshot().cfg.server.connections_max {
                        // A clear answer (503) while few refusals are under way; past that,
                        // a plain close: refusing must not cost more than serving.
                        ctx.connection_refused();
                        let answering = ctx.refusals_answering.get();
                        if !tls && answering < REFUSALS_ANSWERING_MAX {
                            ctx.refusals_answering.set(answering + 1);
                            let ctx = ctx.clone();
                            monoio::spawn(async move {
                                crate::conn::refuse(&ctx, stream).await;
                                ctx.refusals_answering
                                    .set(ctx.refusals_answering.get().saturating_sub(1));
                            });
                        }
                        continue;
                    }
                    spawn_connection(&ctx, stream, peer, tls);
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    ctx.accept_failed(&e);
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = ctx.drain.wait() => break,
        }
    }
}

/// Process-wide totals, summed from the shards when they stop (for the allocation benchmark).
pub static REQUESTS_SERVED: AtomicU64 = AtomicU64::new(0);
pub static CONNECTIONS_ACCEPTED: AtomicU64 = AtomicU64::new(0);
pub static UPSTREAM_CONNECTS: AtomicU64 = AtomicU64::new(0);

/// What a shard starts with.
#[derive(Debug)]
pub struct ShardStart {
    pub id: usize,
    /// The core it was pinned to, if any.
    pub core: Option<usize>,
    /// The bootstrap config and its version on the ring.
    pub cfg: Config,
    pub version: u64,
    pub region: &'static Region,
    /// This shard's end of the access log, when one is configured.
    pub access_log: Option<ShardLog>,
    /// Command-line settings every later config gets too.
    pub overrides: Overrides,
    pub listen: SocketAddr,
    /// A plain listener beside a TLS `listen`.
    pub listen_plain: Option<SocketAddr>,
    pub driver: DriverChoice,
    pub shutdown: Arc<AtomicBool>,
    /// The system trust store, read once by the main thread.
    pub roots: Arc<rustls::RootCertStore>,
    /// Fair queueing's cross-shard state, and the read end of this shard's bell.
    pub fabric: Arc<Fabric>,
    pub bell: std::os::unix::net::UnixStream,
}

/// Run a shard on the current thread until shutdown. Reports readiness (or the failure to
/// bind or build a runtime) on `ready`.
pub fn run(start: ShardStart, ready: mpsc::Sender<Ready>) {
    let id = start.id;
    let report = |result| {
        let _ = ready.send(Ready { shard: id, result });
    };
    let shard = async move |kind: DriverKind| {
        // `listen` serves TLS when the config has certificates; `listen_plain` is plain.
        let tls = !start.cfg.server.tls.is_empty();
        let mut listeners = Vec::with_capacity(2);
        for (addr, tls) in
            std::iter::once((start.listen, tls)).chain(start.listen_plain.map(|a| (a, false)))
        {
            match bind(addr) {
                Ok((l, spare)) => listeners.push((l, spare, tls)),
                Err(e) => {
                    report(Err(format!("cannot listen on {addr}: {e}")));
                    return;
                }
            }
        }
        let ctx = Rc::new(ShardCtx::new(
            id,
            start.version,
            start.cfg,
            start.region,
            start.overrides,
            start.access_log,
            Kept::new(start.roots, id, start.fabric),
        ));
        let info = ctx.info();
        stats::set(&info.core, start.core.map_or(u64::MAX, |c| c as u64));
        stats::set(&info.driver, stats::driver_code(kind));
        stats::set(&info.started_unix_ms, crate::control::unix_ms());
        info.running.store(1, Ordering::Release);
        report(Ok(kind));
        match monoio::net::UnixStream::from_std(start.bell) {
            Ok(bell) => {
                monoio::spawn(hear_bell(ctx.clone(), bell));
            }
            // Hand-offs then wait for the shard's timer (CONTROL_POLL_MS).
            Err(e) => tracing::warn!(shard = id, "fair-queue bell unavailable: {e}"),
        }
        serve(ctx, listeners, kind, start.shutdown).await;
    };
    if let Err(e) = crate::runtime::block_on_best(start.driver, shard) {
        report(Err(e));
    }
}

/// The shard's bell: another shard handed this one a slot of a capped upstream (for a waiter
/// with the smallest tag). Each byte read takes every hand-off and frees slots to waiters.
async fn hear_bell(ctx: Rc<ShardCtx>, mut bell: monoio::net::UnixStream) {
    use monoio::io::AsyncReadRent;
    let mut buf = vec![0u8; 64];
    loop {
        let (res, b) = bell.read(buf).await;
        buf = b;
        if !matches!(res, Ok(n) if n > 0) {
            return;
        }
        ctx.kept.fabric.heard(ctx.id);
        let now_ms = crate::fair::now_ms();
        for cap in &ctx.snapshot().upstream_caps {
            cap.dispatch(now_ms);
        }
    }
}

/// Bind a listener: the runtime's, and a second handle on the same socket (non-blocking) that
/// empties its accept queue when draining.
fn bind(listen: SocketAddr) -> std::io::Result<(TcpListener, std::net::TcpListener)> {
    use socket2::{Domain, Socket, Type};
    // SO_REUSEPORT: every shard binds its own socket on the same port; the kernel spreads
    // connections across them, so no shard ever hands a connection to another.
    let socket = Socket::new(Domain::for_address(listen), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&listen.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    let listener: std::net::TcpListener = socket.into();
    let spare = listener.try_clone()?;
    Ok((TcpListener::from_std(listener)?, spare))
}

/// When draining, before a listener closes: take every connection already in its accept queue
/// (the kernel completed their handshakes; closing the listener would reset them) and let each
/// end gracefully (an idle connection of a draining shard is closed with a FIN, what the client
/// sent read and dropped).
fn accept_backlog(ctx: &Rc<ShardCtx>, spare: &std::net::TcpListener, tls: bool) {
    while let Ok((stream, peer)) = spare.accept() {
        let Ok(stream) = stream
            .set_nonblocking(true)
            .and_then(|()| monoio::net::TcpStream::from_std(stream))
        else {
            continue;
        };
        spawn_connection(ctx, stream, peer, tls);
    }
}

/// Serve an accepted connection on its own task, counted open until it ends.
fn spawn_connection(
    ctx: &Rc<ShardCtx>,
    stream: monoio::net::TcpStream,
    peer: SocketAddr,
    tls: bool,
) {
    ctx.connection_opened();
    let ctx = ctx.clone();
    monoio::spawn(async move {
        crate::conn::serve(&ctx, stream, peer, tls).await;
        ctx.connection_closed();
    });
}

/// Accept until shutdown, then drain: no new connections, in-flight requests finish for at
/// most `drain_timeout`, idle keep-alive connections close at once.
async fn serve(
    ctx: Rc<ShardCtx>,
    listeners: Vec<(TcpListener, std::net::TcpListener, bool)>,
    kind: DriverKind,
    shutdown: Arc<AtomicBool>,
) {
    // The shard's timer: new configs reach an idle shard within CONTROL_POLL_MS (a busy one
    // finds them between requests), and the shutdown flag is read here.
    let watcher = {
        let ctx = ctx.clone();
        monoio::spawn(async move {
            let mut flushed = Instant::now();
            let mut leases_checked = Instant::now();
            while !shutdown.load(Ordering::Relaxed) {
                monoio::time::sleep(Duration::from_millis(CONTROL_POLL_MS)).await;
                ctx.refresh();
                // Slots freed on other shards reach this shard's waiters here.
                let now_ms = crate::fair::now_ms();
                for cap in &ctx.snapshot().upstream_caps {
                    cap.dispatch(now_ms);
                }
                // Leases unused for a while go back, so another shard can spend them.
                if leases_checked.elapsed() >= Duration::from_millis(LEASE_CHECK_MS) {
                    let now = crate::admit::now_ns();
                    let snap = ctx.snapshot();
                    for t in &snap.tenant_limits {
                        t.return_stale(now);
                    }
                    for d in snap.deployment_limits.iter().flatten().flatten() {
                        d.return_stale(now);
                    }
                    leases_checked = Instant::now();
                }
                if let Some(log) = &ctx.access_log {
                    if flushed.elapsed() >= Duration::from_millis(ACCESS_LOG_FLUSH_MS) {
                        log.flush();
                        flushed = Instant::now();
                    }
                }
            }
            ctx.drain.fire();
        })
    };
    // The access log's task: writes the lines requests formatted into the shard's buffer.
    let log_writer = ctx.access_log.is_some().then(|| {
        let ctx = ctx.clone();
        monoio::spawn(async move {
            if let Some(log) = &ctx.access_log {
                log.run().await;
            }
        })
    });
    // On io_uring several accepts wait on the listener at once, so a burst of new connections
    // completes in one ring pass instead of one accept per pass. The epoll driver tracks one
    // reader per socket, so it keeps a single accept loop.
    let accept_loops = if kind == DriverKind::Epoll {
        1
    } else {
        ACCEPTS_IN_FLIGHT
    };
    let listeners: Vec<_> = listeners
        .into_iter()
        .map(|(l, spare, tls)| (Rc::new(l), spare, tls))
        .collect();
    let loops: Vec<_> = listeners
        .iter()
        .flat_map(|(l, _, tls)| {
            (0..accept_loops).map(|_| monoio::spawn(accept_loop(ctx.clone(), l.clone(), *tls)))
        })
        .collect();
    for l in loops {
        l.await;
    }
    // Every accept loop has ended: empty the accept queues, then close the listening sockets.
    for (_, spare, tls) in &listeners {
        accept_backlog(&ctx, spare, *tls);
    }
    drop(listeners);
    let deadline = Instant::now() + ctx.snapshot().cfg.server.drain_timeout;
    while ctx.open_connections() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(SHUTDOWN_POLL_MS)).await;
    }
    if ctx.open_connections() > 0 {
        tracing::warn!(
            shard = ctx.id,
            open = ctx.open_connections(),
            "drain timeout: closing connections in flight"
        );
    }
    let _ = watcher.await;
    // Every line of this shard is written before the shard ends.
    if let Some(log) = &ctx.access_log {
        log.close();
    }
    if let Some(w) = log_writer {
        w.await;
    }
    let info = ctx.info();
    let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
    REQUESTS_SERVED.fetch_add(l(&info.requests), Ordering::Relaxed);
    CONNECTIONS_ACCEPTED.fetch_add(l(&info.connections_accepted), Ordering::Relaxed);
    UPSTREAM_CONNECTS.fetch_add(l(&info.upstream_connects), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_limit_lets_one_line_a_second_through_and_counts_the_rest() {
        let l = LogLimit::default();
        let t = Instant::now();
        assert_eq!(l.allow(t), Some(0));
        assert_eq!(l.allow(t + Duration::from_millis(10)), None);
        assert_eq!(l.allow(t + Duration::from_millis(999)), None);
        assert_eq!(l.allow(t + Duration::from_millis(1000)), Some(2));
        assert_eq!(l.allow(t + Duration::from_millis(1500)), None);
        assert_eq!(l.allow(t + Duration::from_millis(2100)), Some(1));
    }
}
