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
    /// changed, or gone when the store no longer has them); `keys`: the ids of the keys the
    /// change touched (a changed tenant's keys are the ones it has here and those). `Err`: why
    /// the store's tenants no longer validate (the change is to be taken back).
    pub fn with_store_tenants(
        &self,
        store: &Store,
        changed: &BTreeSet<String>,
        keys: &BTreeSet<String>,
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
        let store_tail = self.tenants.get(self.store_from..).unwrap_or(&[]);
        let mut candidates = keys.clone();
        for name in changed {
            if let Ok(i) = store_tail.binary_search_by(|t| t.name.as_str().cmp(name)) {
                candidates.extend(
                    store_tail[i]
                        .keys
                        .iter()
                        .map(|k| crate::store::key_id_of(&tenant::hex(&k.hash))),
                );
            }
        }
        let named = store.raw_tenants_named(changed, &candidates);
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
            fleet: self.fleet.clone(),
            telemetry: self.telemetry.clone(),
            warnings: self.warnings.clone(),
        })))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::control::message::ConfigMessage;
    use crate::store::{KeyHash, KeySettings, Settings, KEY_RANDOM_BYTES};
    use crate::store_op::{self, OpMessage, StoreOp};

    fn toml() -> String {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nauth = \"keys\"\n\
             tenant_store = \"/nonexistent/shardgate-delta-test/tenants.json\"\n\
             admin_tokens = [\"sha256:{}\"]\n\
             [[upstreams]]\nname = \"m\"\nprovider = \"mock\"\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"m\"\n\
             [[tenants]]\nname = \"t1\"\nkeys = [\"sha256:{}\"]\n\
             [[tenants]]\nname = \"file-b\"\nkeys = [\"sha256:{}\"]\n",
            "ad".repeat(32),
            "11".repeat(32),
            "22".repeat(32)
        )
    }

    /// The config validated whole with `store`, or why not.
    fn whole(store: &Store) -> Result<Config, String> {
        let m = ConfigMessage {
            toml: toml(),
            resolved: HashMap::new(),
            files: HashMap::new(),
            op: None,
        };
        Config::from_message_keeping_store(&m, Some(store.clone()))
            .0
            .map_err(|e| e.to_string())
    }

    /// The parts a store change may change, as text (`Tenants` prints its mapping sorted).
    fn tenants_of(c: &Config) -> String {
        format!(
            "{:?}\n{:?}\n{}\n{:?}",
            c.tenants, c.key_table, c.store_from, c.store_shadows
        )
    }

    /// xorshift64*: the same ops every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn random_op(r: &mut Rng, store: &Store) -> StoreOp {
        let tenant = format!("t{}", r.below(12));
        let key = || {
            let mut random = [0u8; KEY_RANDOM_BYTES];
            for (i, b) in random.iter_mut().enumerate() {
                *b = u8::try_from(i).unwrap_or(0);
            }
            random
        };
        let some_key = |r: &mut Rng| {
            let ids: Vec<&String> = store.keys.keys().collect();
            match ids.len() {
                0 => "key_000000000000".to_owned(),
                n => ids[usize::try_from(r.below(n as u64)).unwrap_or(0)].clone(),
            }
        };
        let some_request = |r: &mut Rng| {
            let ids: Vec<&String> = store.access_requests.keys().collect();
            match ids.len() {
                0 => "req_000000000001".to_owned(),
                n => ids[usize::try_from(r.below(n as u64)).unwrap_or(0)].clone(),
            }
        };
        let mut fresh = key();
        fresh[..8].copy_from_slice(&r.next().to_le_bytes());
        let (_, hash) = KeyHash::make(fresh);
        match r.below(13) {
            0 | 1 => StoreOp::TenantAdd {
                name: tenant,
                settings: Settings {
                    models: Some(vec!["gpt-4o".into()]),
                    rpm: Some(i64::try_from(r.below(100)).unwrap_or(1)),
                    ..Settings::default()
                },
            },
            2 => StoreOp::TenantSet {
                name: tenant,
                settings: Settings {
                    // 0 is refused: the change must be taken back.
                    tpm: Some(i64::try_from(r.below(5)).unwrap_or(1)),
                    ..Settings::default()
                },
                suspended: Some(r.below(2) == 0),
            },
            3 => StoreOp::TenantRemove { name: tenant },
            4 => StoreOp::TenantImport,
            5..=7 => StoreOp::KeyCreate {
                tenant,
                name: None,
                expires_in_ms: (r.below(2) == 0).then_some(60_000),
                limits: KeySettings {
                    rpm: (r.below(3) == 0).then_some(5),
                    ..KeySettings::default()
                },
                key: hash,
            },
            8 => StoreOp::KeyRotate {
                id: some_key(r),
                grace_ms: 1_000,
                key: hash,
            },
            9 => StoreOp::KeyRevoke { id: some_key(r) },
            10 => StoreOp::AccessRequest {
                tenant,
                model: format!("m{}", r.below(3)),
                reason: "evals".into(),
            },
            11 => StoreOp::AccessApprove {
                id: some_request(r),
                rpm: None,
                tpm: None,
            },
            _ => StoreOp::AccessDeny {
                id: some_request(r),
                reason: "no".into(),
            },
        }
    }

    #[test]
    fn a_change_taken_as_a_delta_gives_the_config_a_whole_validation_gives() {
        let mut r = Rng(0x5eed_1234_abcd_0001);
        let mut store = Store::default();
        let mut config = whole(&store).expect("valid");
        let (mut made, mut refused, mut deltas) = (0, 0, 0);
        for step in 0..1_500u64 {
            let op = random_op(&mut r, &store);
            let before = store.clone();
            let msg = OpMessage {
                op: op.clone(),
                actor: "test".into(),
            };
            let applied = match store_op::apply(&mut store, &msg, &config, 1_000 + step) {
                Ok(a) => a,
                Err(_) => {
                    assert_eq!(
                        store, before,
                        "step {step}: a refused {op:?} changed the store"
                    );
                    refused += 1;
                    continue;
                }
            };
            // The journal line is the whole difference, found without a copy of the store;
            // replayed it gives the store, and the undo gives the one before.
            let mut diff = store.diff(&before);
            diff.version = applied.delta.version;
            assert_eq!(applied.delta, diff, "step {step}: {op:?}");
            let mut replayed = before.clone();
            replayed.apply(applied.delta.clone());
            assert_eq!(replayed, store, "step {step}: {op:?}");
            let mut undone = store.clone();
            undone.restore(applied.undo.clone());
            assert_eq!(undone, before, "step {step}: {op:?}");
            let expected = whole(&store);
            let keys = applied.delta.keys.keys().cloned().collect();
            match (
                config.with_store_tenants(&store, &applied.tenants, &keys),
                expected,
            ) {
                (Ok(StoreDelta::Unchanged), Ok(w)) => {
                    assert_eq!(tenants_of(&config), tenants_of(&w), "step {step}: {op:?}");
                }
                (Ok(StoreDelta::Built(c)), Ok(w)) => {
                    assert_eq!(tenants_of(&c), tenants_of(&w), "step {step}: {op:?}");
                    config = *c;
                    deltas += 1;
                }
                (Ok(StoreDelta::Whole), Ok(w)) => config = w,
                (Err(_), Err(_)) => {
                    store.restore(applied.undo);
                    refused += 1;
                    continue;
                }
                (got, want) => panic!(
                    "step {step}: {op:?}: as a delta {:?}, whole {:?}",
                    got.map(|d| matches!(d, StoreDelta::Built(_))),
                    want.map(|_| ())
                ),
            }
            made += 1;
        }
        // The walk went through every kind of outcome.
        assert!(
            made > 300 && refused > 100 && deltas > 200,
            "{made} {refused} {deltas}"
        );
        assert!(store.tenants.len() > 3 && !store.keys.is_empty());
    }
}
