//! What shardgate's data plane (`shardgate-engine`) and its control tool (`shardgate-ctl`)
//! share: the config, the shared-memory control region and the limits. No I/O runtime, no
//! server-side TLS, no connection code of the data plane: `shardgate-ctl` depends on this crate
//! and not on the engine, so it links no monoio or io-uring (`cargo tree -p shardgate-ctl -e
//! normal`); rustls only as the client of a fleet's Redis (`rediss://`, [`fleet`]).
//!
//! # Layout
//!
//! The config (its only I/O reads the files it names and resolves endpoint names, at start-up
//! or in ctl, never in a shard):
//! - [`config`]: TOML parsing (`config::raw`) and validation (`config::validate`) into
//!   resolved, typed values (`config::resolved`, `config::endpoint`); the embedded default.
//! - [`tenant`]: `[[tenants]]`: validation, keys by SHA-256 (with expiries) and their lookup,
//!   approved models.
//! - [`manage`]: a change to a running instance's tenant store, sent to the engine's config
//!   builder over the ring and waited for (blocking; ctl and the admin thread); the store's
//!   files (the document and its journal).
//! - [`store`]: the tenant store (`[server] tenant_store`): tenants and keys managed at run
//!   time, one JSON document plus a journal of changes; its operations are I/O-free.
//! - [`fleet`]: a fleet's Redis (`[fleet]`): the blocking connection (`redis://`, `rediss://`
//!   with rustls) and what its failures say, the instances announced.
//! - [`store_op`]: a change to the store as data, what it touches, made with its journal line
//!   and its undo (I/O-free; the builder runs it).
//! - [`models`]: `[[models]]` groups of deployments and the balancing [`models::Strategy`] each
//!   names, validated.
//! - [`prices`]: what models cost (`[[prices]]` over a default table), in integer
//!   picodollars per token; a request's cost and a USD budget's estimate.
//! - [`spend`]: spend by tenant from the shards' counters, or by tenant, key and model from
//!   the access log (`shardgate-ctl spend`, `GET /admin/v1/spend`).
//! - [`template`]: `[[templates]]` validated into pre-parsed templates (filled at request time
//!   by the engine's `template`).
//! - [`cert`]: certificate and key checks without a TLS stack (PEM, the leaf's validity and
//!   names, whether the key is the certificate's), so ctl refuses what the engine would.
//! - [`limits`]: every compile-time limit and the defaults of configurable ones.
//! - [`json`]: the one JSON string writer of the project (serde_json's escaping), used by
//!   [`template`] here and, re-exported as `llm::json::write_str`, everywhere in the engine.
//!
//! Control plane (shared memory between the shards and ctl; the only `unsafe`, allowed in
//! `control::shm` alone):
//! - [`control`]: the region, the config ring, a config message's body, the per-shard counter
//!   blocks, a shard's poller, the validation the engine's config builder runs
//!   (`control::build`), and publishing a version and waiting for the shards
//!   (`control::publish`, for ctl and the admin thread).
//!
//! The engine re-exports each of these modules at its old path (`shardgate_engine::config`,
//! ...), so its own code, the tests and the bench name them as before. See
//! `docs/ARCHITECTURE.md`.

/// A typed index: a plain `usize` (no cost over one) whose type says which table it indexes:
/// the counter slots of a shard's block here ([`control::stats::StatSlot`]), the ids of the
/// engine's per-shard snapshot (`shardgate_engine::snapshot`: `UpstreamId`, `PoolSlot`, ...).
#[macro_export]
macro_rules! index_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(transparent)]
        pub struct $name(usize);

        impl $name {
            #[inline]
            pub const fn new(index: usize) -> Self {
                Self(index)
            }

            /// The plain index.
            #[inline]
            pub const fn index(self) -> usize {
                self.0
            }
        }
    };
}

pub mod cert;
pub mod config;
pub mod control;
pub mod fleet;
pub mod json;
pub mod limits;
pub mod manage;
pub mod models;
pub mod prices;
pub mod spend;
pub mod store;
pub mod store_op;
pub mod telemetry_headers;
pub mod template;
pub mod tenant;
