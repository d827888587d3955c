//! A [`Snapshot`] is one shard's resolved view of one config version: the validated
//! [`Config`] and the tables the shard derived from it (pool slots, counter slots, tenant
//! limits, fair-queue cells, balancers, TLS configs), each indexed by a typed id. A request
//! keeps the `Rc<Snapshot>` it started with to its end; a new config makes a new snapshot, and
//! [`Kept`] carries what outlives configs (leases, queues, balancers, TLS caches) by name.
//!
//! The ids are plain `usize`s under a type that says which table they index; an id is only
//! meaningful in the snapshot that handed it out. Callers go through the accessors, never
//! the tables:
//! - [`UpstreamId`]: an upstream (`cfg.upstreams`; its counters, cap, TLS client, round robin).
//! - [`EndpointIdx`]: an endpoint's index within its upstream (`UpstreamConfig::endpoints`).
//! - [`PoolSlot`]: the shard's pool slot of an endpoint ([`Pools`]; outlives snapshots).
//! - [`Target`]: where an attempt goes: an upstream, one of its endpoints, that endpoint's slot.
//! - [`RouteId`]: a route (`cfg.routes`).
//! - [`TenantId`]: a tenant (`cfg.tenants`; its limits, counters, connections, fair cell).
//! - [`GroupId`]: a model group (`cfg.models`; its balancer).
//! - [`DeploymentIdx`]: a deployment's index within its group (its quota; the balancer's
//!   index).
//! - [`StatSlot`]: a counter slot in the shard's block (an upstream's, a route's or a
//!   tenant's).
//! - [`FairSlot`]: a tenant's finish-tag cell in the fair queues.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use crate::admit::{Admitted, Locals, TenantLimits};
use crate::balance::{DeploymentSpec, Group, Policy};
use crate::builder::Reuse;
use crate::config::{Config, Endpoint, TlsFiles, UpstreamConfig};
use crate::control::shm::Region;
use crate::control::stats::ShardStats;
pub use crate::control::stats::StatSlot;
use crate::exchange::attempts::Groups;
use crate::exchange::call::World;
use crate::exchange::ledger::Books;
pub use crate::fair::FairSlot;
use crate::fair::{Capped, Fabric, Queues, UpstreamCap};
use crate::models::{Deployment, ModelGroup};
use crate::prices::Price;
use crate::route::Routes;
use crate::template::Templates;
use crate::tenant::{KeyMemo, TenantConfig, Tenants};
pub use crate::upstream::PoolSlot;
use crate::upstream::{Pools, TlsTarget};

index_type!(
    /// An upstream: its index in `cfg.upstreams`.
    UpstreamId
);
index_type!(
    /// An endpoint's index within its upstream's `endpoints`.
    EndpointIdx
);
index_type!(
    /// A route: its index in `cfg.routes`.
    RouteId
);
index_type!(
    /// A tenant: its index in `cfg.tenants`.
    TenantId
);
index_type!(
    /// A model group: its index in `cfg.models`.
    GroupId
);
index_type!(
    /// A deployment's index within its model group (the balancer's index too).
    DeploymentIdx
);

/// Where one attempt goes: an upstream, one of its endpoints, and that endpoint's pool slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub upstream: UpstreamId,
    pub endpoint: EndpointIdx,
    pub slot: PoolSlot,
}

/// One config as a shard serves it: the validated config and what the shard derived from it.
/// A request keeps the `Rc<Snapshot>` it started with; a new config makes a new snapshot.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub cfg: Arc<Config>,
    routes: Routes,
    /// Per upstream: its first flat endpoint number (flat numbers index `pool_slot`).
    endpoint_base: Vec<usize>,
    /// The shard's pool slot of each flat endpoint.
    pool_slot: Vec<PoolSlot>,
    /// The counter slot of each upstream and of each route.
    upstream_stats: Vec<StatSlot>,
    route_stats: Vec<StatSlot>,
    /// Round-robin position per upstream.
    rr: Vec<Cell<usize>>,
    /// Key hash → tenant index.
    tenants: Arc<Tenants>,
    /// Per tenant: its limits (the cells shared by every shard, this shard's leases), its
    /// counter slot, its finish-tag cell in the fair queues and its open connections on this
    /// shard; shared with the previous snapshot when a change left the tenants as they were.
    tenant_parts: Rc<TenantParts>,
    /// Where the config goes when this snapshot is dropped: the builder's thread, which frees
    /// it if this was its last holder (a shard never frees a config of 100,000 keys).
    retire: Option<crate::builder::Builder>,
    /// Keys with limits of their own (`cfg.key_table.limited`, in its order): their limits,
    /// on cells shared by every shard under the key's lineage.
    key_limits: Vec<TenantLimits>,
    /// Per upstream: its cap on requests in flight and this shard's fair queue in front of it.
    upstream_caps: Vec<UpstreamCap>,
    /// Model name → group, and each group's balancer state on this shard (kept across
    /// configs while a group's deployments are unchanged; `None` only for a group that could
    /// not be built, which validation rules out).
    model_index: HashMap<String, GroupId>,
    groups: Vec<Option<Rc<Group>>>,
    /// Per group, per deployment: its rpm/tpm quota over all shards (None: no quota).
    deployment_limits: Vec<Vec<Option<TenantLimits>>>,
    /// Per group, per deployment: its price (its model's, else its group's); `None` unpriced.
    deployment_price: Vec<Vec<Option<Price>>>,
    /// Per group: the price a USD budget reserves at (the group name's, else its dearest
    /// deployment's).
    group_price: Vec<Option<Price>>,
    /// Prompt templates, by name, model alias and route.
    pub templates: Templates,
    /// The certificates `listen` serves (`[[server.tls]]`); `None` without TLS.
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    /// Per upstream with `https://` endpoints: its TLS client config (its trust store, and
    /// this shard's session cache, kept across configs while its CA file is the same).
    tls_clients: Vec<Option<Arc<rustls::ClientConfig>>>,
}

impl Snapshot {
    /// The snapshot of `cfg` on this shard. `carried`: the snapshot this shard runs and, for
    /// each tenant of `cfg`, its index there if it had one (`crate::builder::Reuse`): those
    /// tenants keep their shared cells, leases, counter slots, fair slots and connection
    /// counts without a lookup by name, so taking a change costs the shard a copy per tenant
    /// and a lookup only for the tenants that are new.
    pub fn new(
        version: u64,
        cfg: Arc<Config>,
        pools: &Pools,
        stats: &ShardStats,
        region: &'static Region,
        kept: &Kept,
        carried: Option<(&Snapshot, &Reuse)>,
    ) -> Self {
        let mut endpoint_base = Vec::with_capacity(cfg.upstreams.len());
        let mut addrs = Vec::new();
        for u in &cfg.upstreams {
            endpoint_base.push(addrs.len());
            addrs.extend(u.endpoints.iter().map(|e| (e.addr, e.tls_name.clone())));
        }
        let deployment_price: Vec<Vec<Option<Price>>> = cfg
            .models
            .iter()
            .map(|m| {
                m.deployments
                    .iter()
                    .map(|d| cfg.prices.get(&d.model).or_else(|| cfg.prices.get(&m.name)))
                    .collect()
            })
            .collect();
        let group_price = cfg
            .models
            .iter()
            .zip(&deployment_price)
            .map(|(m, prices)| {
                cfg.prices.get(&m.name).or_else(|| {
                    prices
                        .iter()
                        .flatten()
                        .copied()
                        .max_by_key(|p| p.output.max(p.reasoning).saturating_add(p.input))
                })
            })
            .collect();
        let tenants = TenantParts::new(&cfg, stats, region, kept, carried);
        Self {
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
            tenants: cfg.key_table.clone(),
            tenant_parts: tenants,
            retire: kept.retire.borrow().clone(),
            key_limits: key_limits(&cfg, region, kept),
            templates: Templates::new(cfg.templates.clone()),
            model_index: cfg
                .models
                .iter()
                .enumerate()
                .map(|(i, m)| (m.name.clone(), GroupId(i)))
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
            deployment_price,
            group_price,
            cfg,
        }
    }

    /// The price of deployment `idx` of `group` (its model's, else its group's).
    pub fn deployment_price(&self, group: GroupId, idx: DeploymentIdx) -> Option<Price> {
        self.deployment_price
            .get(group.0)
            .and_then(|d| d.get(idx.index()))
            .copied()
            .flatten()
    }

    // ----- config entries -----

    #[inline]
    pub fn upstream(&self, u: UpstreamId) -> &UpstreamConfig {
        &self.cfg.upstreams[u.0]
    }

    #[inline]
    pub fn endpoint(&self, u: UpstreamId, e: EndpointIdx) -> &Endpoint {
        &self.cfg.upstreams[u.0].endpoints[e.0]
    }

    #[inline]
    pub fn tenant(&self, t: TenantId) -> &TenantConfig {
        &self.cfg.tenants[t.0]
    }

    #[inline]
    pub fn group(&self, g: GroupId) -> &ModelGroup {
        &self.cfg.models[g.0]
    }

    #[inline]
    pub fn deployment(&self, g: GroupId, d: DeploymentIdx) -> &Deployment {
        &self.cfg.models[g.0].deployments[d.0]
    }

    /// The upstream route `r` sends to.
    #[inline]
    pub fn route_upstream(&self, r: RouteId) -> UpstreamId {
        UpstreamId(self.cfg.routes[r.0].upstream)
    }

    /// The upstream deployment `d` of group `g` sends to.
    #[inline]
    pub fn deployment_upstream(&self, g: GroupId, d: DeploymentIdx) -> UpstreamId {
        UpstreamId(self.cfg.models[g.0].deployments[d.0].upstream)
    }

    /// Group `g`'s fallback groups, in order.
    pub fn fallbacks(&self, g: GroupId) -> impl Iterator<Item = GroupId> + '_ {
        self.cfg.models[g.0].fallbacks.iter().map(|&f| GroupId(f))
    }

    // ----- lookups -----

    /// The route for `path` (query string included).
    #[inline]
    pub fn route_for(&self, path: &str) -> Option<RouteId> {
        self.routes.lookup(path).map(RouteId)
    }

    /// The tenant owning API key `key` (through the connection's memo).
    #[inline]
    pub fn tenant_by_key(
        &self,
        key: &[u8],
        now_unix_ms: u64,
        memo: &mut KeyMemo,
    ) -> Option<TenantId> {
        self.tenants
            .lookup_memo(key, now_unix_ms, memo)
            .map(TenantId)
    }

    /// The model group named `model`.
    #[inline]
    pub fn group_of(&self, model: &str) -> Option<GroupId> {
        self.model_index.get(model).copied()
    }

    // ----- derived tables -----

    #[inline]
    pub fn upstream_stat_slot(&self, u: UpstreamId) -> StatSlot {
        self.upstream_stats[u.0]
    }

    #[inline]
    pub fn route_stat_slot(&self, r: RouteId) -> StatSlot {
        self.route_stats[r.0]
    }

    #[inline]
    pub fn tenant_stat_slot(&self, t: TenantId) -> StatSlot {
        self.tenant_parts.stats[t.0]
    }

    #[inline]
    pub fn tenant_limits(&self, t: TenantId) -> Option<&TenantLimits> {
        self.tenant_parts.limits.get(t.0)
    }

    /// The limits of key `k`'s own (an index from the request's key memo).
    #[inline]
    /// Tenant `t` may call `model`, and so may its limited key `key` (whose own `models`, when
    /// it names them, narrow its tenant's).
    pub fn allows(&self, t: TenantId, key: Option<usize>, model: &str) -> bool {
        let key_models = key
            .and_then(|k| self.cfg.key_table.limited.get(k))
            .and_then(|k| k.limits.models.as_deref());
        self.tenant(t).models.allows(model)
            && key_models.is_none_or(|list| list.iter().any(|m| m == model))
    }

    pub fn key_limits(&self, k: usize) -> Option<&TenantLimits> {
        self.key_limits.get(k)
    }

    /// Tenant `t`'s open connections on this shard.
    #[inline]
    pub fn tenant_conns(&self, t: TenantId) -> Option<&Rc<Cell<usize>>> {
        self.tenant_parts.conns.get(t.0)
    }

    /// Upstream `u`'s cap on requests in flight (and this shard's fair queue in front of it).
    #[inline]
    pub fn upstream_cap(&self, u: UpstreamId) -> Option<&UpstreamCap> {
        self.upstream_caps.get(u.0)
    }

    /// Group `g`'s balancer on this shard.
    #[inline]
    pub fn balancer(&self, g: GroupId) -> Option<&Group> {
        self.groups.get(g.0).and_then(Option::as_deref)
    }

    /// Deployment `d` of group `g`'s rpm/tpm quota (`None`: it has none).
    #[inline]
    pub fn deployment_limits(&self, g: GroupId, d: DeploymentIdx) -> Option<&TenantLimits> {
        self.deployment_limits
            .get(g.0)
            .and_then(|v| v.get(d.0))
            .and_then(Option::as_ref)
    }

    /// What connecting to endpoint `e` of upstream `u` needs for TLS (`None`: plain).
    pub fn tls_target(&self, u: UpstreamId, e: EndpointIdx) -> TlsTarget<'_> {
        let name = self
            .cfg
            .upstreams
            .get(u.0)?
            .endpoints
            .get(e.0)?
            .tls_name
            .as_deref()?;
        Some((self.tls_clients.get(u.0)?.as_ref()?, name))
    }

    /// The fair queues' cell of `tenant` (requests without one share [`FairSlot::NO_TENANT`]).
    #[inline]
    pub fn fair_slot(&self, tenant: Option<TenantId>) -> FairSlot {
        tenant
            .and_then(|t| self.tenant_parts.fair.get(t.0).copied())
            .unwrap_or(FairSlot::NO_TENANT)
    }

    /// Pick the next endpoint of `upstream` round-robin.
    pub fn pick_endpoint(&self, upstream: UpstreamId) -> Target {
        let u = upstream.0;
        let n = self.cfg.upstreams[u].endpoints.len().max(1);
        let i = self.rr[u].get() % n;
        self.rr[u].set(i + 1);
        Target {
            upstream,
            endpoint: EndpointIdx(i),
            slot: self.pool_slot[self.endpoint_base[u] + i],
        }
    }

    // ----- the shard's timers -----

    /// Take slots handed to this shard and hand free ones to waiters, on every capped upstream.
    pub fn dispatch_caps(&self, now_ms: u64) {
        for cap in &self.upstream_caps {
            cap.dispatch(now_ms);
        }
    }

    /// Give back the leases of tenants and deployments unused for a while.
    pub fn return_stale_leases(&self, now_ns: u64) {
        for t in &self.tenant_parts.limits {
            t.return_stale(now_ns);
        }
        for d in self.deployment_limits.iter().flatten().flatten() {
            d.return_stale(now_ns);
        }
    }
}

/// The limits of the keys that have their own, each on the cells of its lineage (found by
/// name once, then kept by lineage in `kept`).
fn key_limits(cfg: &Config, region: &'static Region, kept: &Kept) -> Vec<TenantLimits> {
    cfg.key_table
        .limited
        .iter()
        .map(|k| {
            let window = cfg.budget_window(k.tenant);
            let (cells, fleet, local) = kept.key_cells(region, k.limits.lineage);
            TenantLimits::key(&k.limits, window, cells, local).with_fleet(fleet)
        })
        .collect()
}

/// A snapshot's per-tenant tables, built together.
#[derive(Debug)]
struct TenantParts {
    limits: Vec<TenantLimits>,
    stats: Vec<StatSlot>,
    fair: Vec<FairSlot>,
    conns: Vec<Rc<Cell<usize>>>,
}

impl TenantParts {
    fn new(
        cfg: &Config,
        stats: &ShardStats,
        region: &'static Region,
        kept: &Kept,
        carried: Option<(&Snapshot, &Reuse)>,
    ) -> Rc<Self> {
        if let Some((prev, reuse)) = carried {
            if reuse.same {
                return prev.tenant_parts.clone();
            }
        }
        let n = cfg.tenants.len();
        let mut out = TenantParts {
            limits: Vec::with_capacity(n),
            stats: Vec::with_capacity(n),
            fair: Vec::with_capacity(n),
            conns: Vec::with_capacity(n),
        };
        for (i, t) in cfg.tenants.iter().enumerate() {
            let before = carried.and_then(|(prev, reuse)| {
                let j = usize::try_from(reuse.tenants.get(i).copied().flatten()?).ok()?;
                // The map was made for `prev`'s config: the same name at that index, else
                // (a map of another config) no carrying over.
                (prev.cfg.tenants.get(j)?.name == t.name).then_some((prev, j))
            });
            match before {
                Some((prev, j)) => {
                    let p = &prev.tenant_parts;
                    let old = &p.limits[j];
                    // Its settings may have changed: the limiters are made again (no lookup),
                    // on the same shared cells and leases.
                    out.limits.push(
                        TenantLimits::new(t, old.cells, old.local.clone()).with_fleet(old.fleet),
                    );
                    out.stats.push(p.stats[j]);
                    out.fair.push(p.fair[j]);
                    out.conns.push(p.conns[j].clone());
                }
                None => {
                    // Its cells in the shared table: one probe, for its limits and fair slot.
                    let slot = region.tenant_slot(&t.name);
                    out.limits.push(
                        TenantLimits::new(t, slot.map(|(_, c)| c), kept.locals.get(&t.name))
                            .with_fleet(slot.and_then(|(i, _)| region.fleet(i))),
                    );
                    out.stats.push(stats.tenant_slot(&t.name));
                    out.fair
                        .push(slot.map_or(FairSlot::NO_TENANT, |(i, _)| FairSlot::new(i)));
                    out.conns.push(kept.tenant_conns(&t.name));
                }
            }
        }
        Rc::new(out)
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if let Some(b) = &self.retire {
            b.retire(self.cfg.clone());
        }
    }
}

/// A request's reservations are settled against the snapshot it started with.
impl Books for Snapshot {
    type Admission = Admitted;

    fn settle_tenant(
        &self,
        t: TenantId,
        adm: Admitted,
        now_ns: u64,
        used: Option<u64>,
        failed: bool,
    ) {
        if let Some((k, part)) = adm.key_part() {
            if let Some(key_limits) = self.key_limits.get(k) {
                adm.finish_key(part, key_limits, now_ns, used, failed);
            }
        }
        if let Some(limits) = self.tenant_limits(t) {
            adm.finish(limits, now_ns, used, failed);
        }
    }

    fn settle_deployment(
        &self,
        group: GroupId,
        idx: DeploymentIdx,
        adm: Admitted,
        now_ns: u64,
        used: Option<u64>,
        failed: bool,
    ) {
        if let Some(limits) = self.deployment_limits(group, idx) {
            adm.finish(limits, now_ns, used, failed);
        }
    }

    fn release_slot(&self, upstream: UpstreamId, fair: FairSlot, now_ms: u64) {
        if let Some(cap) = self.upstream_cap(upstream) {
            cap.release(fair, now_ms);
        }
    }
}

/// A shard's LLM calls check and admit against the snapshot, and pick deployments through its
/// balancers.
impl World for Snapshot {
    fn group_of(&self, model: &str) -> Option<GroupId> {
        Snapshot::group_of(self, model)
    }

    fn has_groups(&self) -> bool {
        !self.cfg.models.is_empty()
    }

    fn has_templates(&self) -> bool {
        !self.templates.is_empty()
    }

    fn allows(&self, t: TenantId, key: Option<usize>, model: &str) -> bool {
        Snapshot::allows(self, t, key, model)
    }

    fn context_window_fallback(&self, group: GroupId, nth: usize) -> Option<GroupId> {
        let m = self.cfg.models.get(group.0)?;
        m.context_window_fallbacks.get(nth).map(|&f| GroupId(f))
    }

    fn default_max_tokens(&self, t: Option<TenantId>) -> u64 {
        t.map_or(crate::tenant::DEFAULT_MAX_TOKENS_DEFAULT, |t| {
            self.tenant(t).default_max_tokens
        })
    }

    fn admit(
        &self,
        t: TenantId,
        key: Option<usize>,
        tokens: u64,
        usd_uusd: u64,
        now_ns: u64,
    ) -> Result<Option<Admitted>, crate::admit::Refused> {
        let Some(limits) = self.tenant_limits(t) else {
            return Ok(None);
        };
        let mut adm = crate::admit::admit(limits, now_ns, tokens, usd_uusd)?;
        // The key's own limits, within the tenant's: refused there, the tenant's part is
        // given back.
        if let Some((k, key_limits)) = key.and_then(|k| Some((k, self.key_limits.get(k)?))) {
            match crate::admit::admit(key_limits, now_ns, tokens, usd_uusd) {
                Ok(key_adm) => adm.attach_key(k, key_adm),
                Err(refused) => {
                    adm.finish(limits, now_ns, None, true);
                    return Err(refused);
                }
            }
        }
        Ok(Some(adm))
    }

    fn price(&self, group: Option<GroupId>, model: &str) -> Option<Price> {
        match group {
            Some(g) => self.group_price.get(g.0).copied().flatten(),
            None => self.cfg.prices.get(model),
        }
    }

    fn retries(&self, group: GroupId) -> usize {
        usize::try_from(self.group(group).retries).unwrap_or(usize::MAX)
    }

    fn take_quota(
        &self,
        group: GroupId,
        idx: DeploymentIdx,
        tokens: u64,
        now_ns: u64,
    ) -> Result<Option<Admitted>, ()> {
        let Some(limits) = self.deployment_limits(group, idx) else {
            return Ok(None);
        };
        crate::admit::admit(limits, now_ns, tokens, 0)
            .map(Some)
            .map_err(|_| ())
    }

    fn hedge_after(&self, group: GroupId) -> Option<std::time::Duration> {
        self.group(group).hedge_after
    }
}

impl Groups for Snapshot {
    fn pick(
        &self,
        group: GroupId,
        now_ns: u64,
        rng: &mut dyn FnMut() -> u64,
        tried: &[usize],
    ) -> Option<DeploymentIdx> {
        self.balancer(group)?
            .pick(now_ns, &mut || rng(), tried)
            .map(DeploymentIdx)
    }

    fn has_admitted(&self, group: GroupId, now_ns: u64) -> bool {
        self.balancer(group).is_some_and(|g| g.has_admitted(now_ns))
    }

    fn fallbacks(&self, group: GroupId) -> impl Iterator<Item = GroupId> + '_ {
        Snapshot::fallbacks(self, group)
    }

    fn deployments(&self, group: GroupId) -> usize {
        self.cfg
            .models
            .get(group.0)
            .map_or(0, |m| m.deployments.len())
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
    pub fabric: Arc<Fabric>,
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
    /// The builder, to which snapshots hand their config when dropped (`None` in tests).
    pub retire: RefCell<Option<crate::builder::Builder>>,
    /// Key lineages' shared cells and leases (keys' own limits), by lineage.
    key_cells: RefCell<HashMap<[u8; crate::tenant::KEY_ID_BYTES], KeyCells>>,
}

/// A key lineage's shared cells, fleet cells (in a fleet) and this shard's leases.
type KeyCells = (
    Option<&'static crate::control::shm::TenantCells>,
    Option<&'static crate::control::shm::FleetCells>,
    Rc<crate::admit::TenantLocal>,
);

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
            key_cells: RefCell::new(HashMap::new()),
            retire: RefCell::new(None),
        }
    }

    /// The shared cells and this shard's leases of the key lineage `lineage` (its own
    /// limits), named `\u{1}key/` and its hex in the shared tenant table.
    fn key_cells(
        &self,
        region: &'static Region,
        lineage: [u8; crate::tenant::KEY_ID_BYTES],
    ) -> KeyCells {
        self.key_cells
            .borrow_mut()
            .entry(lineage)
            .or_insert_with(|| {
                let name = crate::tenant::key_cells_name(&lineage);
                let slot = region.tenant_slot(&name);
                (
                    slot.map(|(_, c)| c),
                    slot.and_then(|(i, _)| region.fleet(i)),
                    self.locals.get(&name),
                )
            })
            .clone()
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
            "{:?}|{:?}|{:?}|{:?}",
            m.strategy,
            m.eject_after_failures,
            m.cooldown,
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
        let mut policy = Policy {
            strategy: m.strategy,
            ..Policy::default()
        };
        if let Some(n) = m.eject_after_failures {
            policy.health.eject_after = n;
        }
        if let Some(c) = m.cooldown {
            policy.health.cooldown = c;
            policy.health.cooldown_max = policy.health.cooldown_max.max(c);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tenants: &[(&str, u64)]) -> Arc<Config> {
        let mut text = String::from(
            "[server]\n[[upstreams]]\nname = \"m\"\nprovider = \"mock\"\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"m\"\n",
        );
        for (i, (name, rpm)) in tenants.iter().enumerate() {
            text.push_str(&format!(
                "[[tenants]]\nname = \"{name}\"\nkeys = [\"sha256:{:064x}\"]\nrpm = {rpm}\n",
                i + 1
            ));
        }
        Arc::new(Config::from_toml(&text).expect("valid"))
    }

    /// Everything a tenant's state is: its shared cells, leases, counter slot, fair slot and
    /// connection count, by identity.
    fn parts(s: &Snapshot, name: &str) -> (usize, usize, usize, usize, *const Cell<usize>) {
        let i = s
            .cfg
            .tenants
            .iter()
            .position(|t| t.name == name)
            .expect("tenant");
        let p = &s.tenant_parts;
        let l = &p.limits[i];
        (
            l.cells.map_or(0, |c| c as *const _ as usize),
            Rc::as_ptr(&l.local) as usize,
            p.stats[i].index(),
            p.fair[i].index(),
            Rc::as_ptr(&p.conns[i]),
        )
    }

    #[test]
    fn a_change_carries_each_tenants_state_over_as_a_lookup_by_name_would() {
        let region: &'static Region =
            Box::leak(Box::new(Region::anonymous(1).expect("an anonymous region")));
        let stats = ShardStats::new(region.shard(0));
        let kept = Kept::new(
            Arc::new(rustls::RootCertStore::empty()),
            0,
            Fabric::silent(1),
        );
        let pools = Pools::new();
        let one = config(&[("a", 10), ("b", 20), ("c", 30)]);
        let s1 = Snapshot::new(1, one.clone(), &pools, &stats, region, &kept, None);
        // b removed, d added, a's rpm changed, the order shifted.
        let two = config(&[("d", 40), ("a", 11), ("c", 30)]);
        let reuse = Reuse::between(1, &one, &two);
        assert_eq!(reuse.tenants, [None, Some(0), Some(2)]);
        assert!(!reuse.same);
        let carried = Snapshot::new(
            2,
            two.clone(),
            &pools,
            &stats,
            region,
            &kept,
            Some((&s1, &reuse)),
        );
        let looked_up = Snapshot::new(2, two, &pools, &stats, region, &kept, None);
        for name in ["a", "c", "d"] {
            assert_eq!(parts(&carried, name), parts(&looked_up, name), "{name}");
        }
        assert_eq!(parts(&carried, "a"), parts(&s1, "a"));
        // The new settings are in force on the carried state.
        let a = carried
            .cfg
            .tenants
            .iter()
            .position(|t| t.name == "a")
            .expect("a");
        assert_eq!(
            carried.tenant_parts.limits[a].rpm.map(|g| g.limit()),
            Some(11)
        );
        // A map made for another config carries nothing over by mistake.
        let wrong = Reuse {
            from: 1,
            tenants: vec![Some(1), Some(1), Some(1)],
            same: false,
        };
        let other = config(&[("x", 1), ("y", 1), ("z", 1)]);
        let fresh = Snapshot::new(3, other, &pools, &stats, region, &kept, Some((&s1, &wrong)));
        assert_ne!(parts(&fresh, "y"), parts(&s1, "b"));
        // The same tenants with the same limits (a key made or revoked): the tables are kept
        // whole, shared with the snapshot before.
        let three = config(&[("d", 40), ("a", 11), ("c", 30)]);
        let same = Reuse::between(2, &carried.cfg, &three);
        assert!(same.same);
        let s3 = Snapshot::new(
            3,
            three,
            &pools,
            &stats,
            region,
            &kept,
            Some((&carried, &same)),
        );
        assert!(Rc::ptr_eq(&s3.tenant_parts, &carried.tenant_parts));
        // A limit changed: not the same.
        let four = config(&[("d", 40), ("a", 12), ("c", 30)]);
        assert!(!Reuse::between(3, &s3.cfg, &four).same);
    }
}
