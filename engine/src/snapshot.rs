//! A shard's view of one config: see [`Snapshot`].

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use crate::admit::{Locals, TenantLimits};
use crate::balance::{DeploymentSpec, Group, Policy};
use crate::config::{Config, TlsFiles, UpstreamConfig};
use crate::control::shm::Region;
use crate::control::stats::ShardStats;
use crate::fair::{Capped, Fabric, Queues, UpstreamCap, FAIR_NO_TENANT};
use crate::models::ModelGroup;
use crate::route::Routes;
use crate::template::Templates;
use crate::tenant::Tenants;
use crate::upstream::Pools;

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
    pub fn new(
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
