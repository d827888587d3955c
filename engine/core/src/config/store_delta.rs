//! A change to the tenant store taken into a validated config as a delta: only the tenants it
//! touched are validated and built again; every other tenant is the running config's. The
//! result is the config a whole validation of the same text and store gives (a unit test
//! holds the two equal over random changes), in a few ms at 100,000 keys instead of the
//! whole store's hundreds.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::Config;
use crate::store::Store;
use crate::tenant::{self, TenantConfig, Tenants};

/// Most tenants a change may touch and still be taken as a delta (an import of the config
/// file's tenants can touch thousands: it is validated whole).
pub const DELTA_TENANTS_MAX: usize = 64;

/// What a change to the store makes of a config.
#[derive(Debug)]
pub enum StoreDelta {
    /// No tenant's config changed (an access request filed or denied).
    Unchanged,
    Built(Box<Config>),
    /// Validate the config whole: the change touched more than [`DELTA_TENANTS_MAX`] tenants,
    /// or a tenant the config file has too (removing it from the store puts the file's back).
    Whole,
}

impl Config {
    /// This config with the tenants named in `changed` as `store` has them now (added,
    /// changed, or gone when the store no longer has them). `Err`: why the store's tenants
    /// no longer validate (the change is to be taken back).
    pub fn with_store_tenants(
        &self,
        store: &Store,
        changed: &BTreeSet<String>,
    ) -> Result<StoreDelta, String> {
        if changed.is_empty() {
            return Ok(StoreDelta::Unchanged);
        }
        if changed.len() > DELTA_TENANTS_MAX
            || changed.iter().any(|n| self.store_shadows.contains(n))
            || self.server.tenant_store.is_none()
        {
            return Ok(StoreDelta::Whole);
        }
        // The file's tenants may not share a name with a new store tenant: the store refuses
        // such a name, but a config validated whole would shadow the file's entry.
        if self
            .file_tenants()
            .iter()
            .any(|t| changed.contains(&t.name) && store.tenants.contains_key(&t.name))
        {
            return Ok(StoreDelta::Whole);
        }
        let named = store.raw_tenants_named(changed);
        let mut errors = Vec::new();
        let (raws, extra): (Vec<_>, Vec<_>) = named
            .into_iter()
            .map(|(raw, keys, suspended)| (raw, (keys, suspended)))
            .unzip();
        let names: Vec<String> = raws.iter().map(|r| r.name().to_owned()).collect();
        let mut fresh = tenant::validate(
            raws,
            |i| {
                format!(
                    "tenant_store.tenants[{:?}]",
                    names.get(i).map_or("", String::as_str)
                )
            },
            |field, reason| errors.push(format!("{field}: {reason}")),
            |_| {},
        );
        crate::store::finish(&mut fresh, &extra);
        // What only the whole config shows: a key of another tenant, an admin token, counts.
        for t in &fresh {
            for k in &t.keys {
                if let Some(owner) = self.key_table.tenant_of(&k.hash) {
                    let other = self.tenants.get(owner).map_or("", |o| o.name.as_str());
                    if !changed.contains(other) {
                        errors.push(format!(
                            "tenant_store.tenants[{:?}]: key {} is also a key of {other:?}; a \
                             key names one tenant",
                            t.name,
                            tenant::key_alias(&k.hash)
                        ));
                    }
                }
                if self.server.admin_tokens.contains(&k.hash) {
                    errors.push(format!(
                        "tenant_store.tenants[{:?}]: a key is also an admin token",
                        t.name
                    ));
                }
            }
        }
        let store_tail = self.tenants.get(self.store_from..).unwrap_or(&[]);
        let mut tenants: Vec<TenantConfig> =
            Vec::with_capacity(self.store_from + store_tail.len() + fresh.len());
        tenants.extend_from_slice(self.file_tenants());
        // Both sorted by name: the store's tenants stay in the store's order.
        let mut fresh = fresh.into_iter().peekable();
        for t in store_tail {
            while let Some(f) = fresh.next_if(|f| f.name < t.name) {
                tenants.push(f);
            }
            if !changed.contains(&t.name) {
                tenants.push(t.clone());
            }
        }
        tenants.extend(fresh);
        if tenants.len() > tenant::TENANTS_MAX {
            errors.push(format!("tenants: at most {} tenants", tenant::TENANTS_MAX));
        }
        let limited: usize = tenants.iter().map(|t| t.key_limits.len()).sum();
        if limited > tenant::KEYS_LIMITED_MAX {
            errors.push(format!(
                "server.tenant_store: {limited} keys have limits of their own; at most {}",
                tenant::KEYS_LIMITED_MAX
            ));
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(StoreDelta::Built(Box::new(Config {
            server: self.server.clone(),
            upstreams: self.upstreams.clone(),
            routes: self.routes.clone(),
            key_table: Arc::new(Tenants::new(&tenants)),
            tenants,
            store_from: self.store_from,
            store_shadows: self.store_shadows.clone(),
            models: self.models.clone(),
            templates: self.templates.clone(),
            prices: self.prices.clone(),
            warnings: self.warnings.clone(),
        })))
    }
}
