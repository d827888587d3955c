//! shardgate's data plane: a thread-per-core HTTP/1.1 gateway on io_uring (monoio).
//!
//! # Layout
//!
//! From `shardgate-core` (re-exported here at their old paths, so `crate::config::...` and
//! `shardgate_engine::config::...` name them as before). They are what `shardgate-ctl` shares
//! with the engine, in a crate of their own so that ctl links no monoio, io-uring, rustls or
//! connection code:
//! - [`config`]: TOML parsing and validation into resolved, typed values.
//! - [`tenant`]: tenants, their keys (by SHA-256) and approved models.
//! - [`models`]: `[[models]]` groups of deployments, validated.
//! - [`cert`]: certificate and key checks without rustls (PEM, the leaf's validity and names,
//!   whether the key is the certificate's), run by the config and built on by [`tls`].
//! - [`limits`]: every compile-time limit and the defaults of configurable ones.
//! - [`control`]: the control plane's shared memory with `shardgate-ctl`: the region, the
//!   config ring, per-shard counter blocks, a shard's poller (the only `unsafe`, in
//!   `control::shm`).
//! - `shardgate_core::template`: `[[templates]]` validated (the config-time half of
//!   [`template`], which re-exports it).
//!
//! I/O-free protocol logic (takes bytes, returns decisions; unit-tested, fuzzable):
//! - [`http`]: request and response heads (httparse into stack arrays), framing rules,
//!   the streaming chunked decoder, and `http::sse`: the one server-sent event splitter.
//! - [`route`]: longest-prefix route table.
//! - [`balance`]: load balancing within a model group, per shard: round robin, smooth
//!   weighted, least outstanding, and power of two choices by peak-EWMA latency; passive
//!   health (ejection with a doubling cool-down, half-open probes, `Retry-After`).
//! - [`limit`]: tenant limits across shards without locks: GCRA per-minute limits with
//!   shard-local leases, concurrency caps and windowed token budgets on shared-memory cells.
//! - [`llm`]: LLM bodies: what a request asks for (model, stream, max_tokens), the token
//!   estimate, the `include_usage` rewrite, usage scanning of JSON and SSE responses, and the
//!   SSE filter that hides the usage chunk from clients that did not ask for it. Its JSON
//!   scanner (`llm::json`) also walks template bodies, and its string writer escapes every
//!   JSON string written by hand.
//! - [`provider`]: translation between the clients' APIs (OpenAI chat, Anthropic Messages) and
//!   the upstreams' (Anthropic, Gemini, Bedrock's Converse, OpenAI's Responses; Azure's
//!   deployment paths): requests, responses, error bodies and event streams (SSE, and AWS's
//!   binary event stream); Bedrock's SigV4 signing.
//! - [`template`]: prompt templates at request time: the one a request selects, filled from
//!   its `variables` (escaped as JSON strings, never raw JSON), which never reach an upstream;
//!   the body is walked with `llm::json`.
//! - [`mock`]: the built-in demo model behind the embedded default config.
//! - [`exchange`]: one request's exchange decided without I/O: the head's action, body
//!   framing, the answer head and relay framing, the attempt loop over a model group's
//!   deployments with the one retry rule, a tenant's LLM call as a state machine (events in:
//!   the body, the template filled, an attempt ended; actions out: refuse, fill, send to the
//!   route or a deployment with its hedge), one attempt's failures (replay once, retry
//!   elsewhere, answer), and the ledger that settles every reservation once.
//! - [`clock`]: the data plane's one clock (`Now`), read by the driver and passed down.
//! - [`error`]: the one data-plane error type, mapped to a status and an OpenAI-style JSON body
//!   in one place.
//! - [`metrics`]: the region's counters rendered as Prometheus text.
//! - [`tls`]: rustls configs (ring): the downstream server config with certificates chosen by
//!   SNI, per-upstream client configs (system roots or a CA file), and the description of an
//!   upstream TLS failure.
//!
//! Observability:
//! - [`admin`]: `/metrics` and `/health/*` on a blocking std thread of its own, off the shards;
//!   [`admin_api`]: the admin API there (`/admin/v1/tenants`, `/admin/v1/keys`,
//!   `/admin/v1/access-requests`, admin tokens).
//! - [`access`]: the tenants' access requests of the data port (`/v1/access-requests`), filed
//!   and listed by a std thread of their own (the store is never touched by a shard).
//! - [`builder`]: the config builder thread: each new config version validated once, off the
//!   shards, and handed to each shard to build its own part.
//! - [`accesslog`]: per-shard batches of fixed-size records, written as JSON lines by a thread.
//! - [`telemetry`]: traces: W3C trace context and sampling (I/O-free), the fixed-size span
//!   records a shard batches, and the OTLP/HTTP exporter thread the batches go to.
//!
//! Per-shard traffic control (no I/O, but state shared with other shards through the region):
//! - [`admit`]: a tenant's (or a deployment's) admission and settlement against its shared
//!   limit cells; the `x-ratelimit-*` headers.
//! - [`fair`]: fair sharing of a saturated upstream over every shard (start-time fair queueing
//!   by estimated tokens, slots handed between shards with a bell).
//!
//! I/O (the only modules that touch monoio):
//! - [`runtime`]: driver choice (tuned io_uring → io_uring → epoll), shared with the bench.
//! - [`shard`]: one pinned thread per core with its own runtime, SO_REUSEPORT listener,
//!   pools and counters; driver selection (tuned io_uring → io_uring → epoll); draining.
//! - [`snapshot`]: one shard's resolved view of one config version (pool slots, counter
//!   slots, limits, balancers, TLS configs), its tables indexed by typed ids (`UpstreamId`,
//!   `PoolSlot`, `TenantId`, `GroupId`, ...) and read through accessors; what a shard keeps
//!   across configs.
//! - [`conn`]: the connection driver, running the request lifecycle phases, one file per phase
//!   (`mod`: the lifecycle top to bottom; `forward`, `relay`, `call` for LLM calls, `local` for
//!   our own answers, `io`; `translate`, answers relayed in the client's API; `hedge`, hedged
//!   streams). It performs I/O; it decides nothing [`exchange`] can decide.
//! - [`ctx`]: `ShardCtx`, what one shard owns, used by `conn` and `shard` alike.
//! - [`upstream`]: upstream connections (TCP, then TLS) and the per-shard keep-alive pools.
//! - [`stream`]: one connection type over plain TCP and TLS (client or upstream side).
//! - [`drain`]: the per-shard shutdown signal idle connections wait on.
//! - [`listen`]: handing a port over without losing a connection: shards listen only once
//!   every shard is ready; a draining listener stops taking SYNs (a socket filter) and settles,
//!   or closes at once when another instance takes its queues over (`tcp_migrate_req`).
//!
//! Threads beside the shards (blocking, never on the request path): [`builder`] (each config
//! version validated once; the tenant store held and changed as deltas), [`admin`] and
//! [`admin_api`] (the admin listener), [`access`] (tenants' access requests), [`fleet`] (the
//! fleet agent: each limit's share of a fleet leased from Redis into the region's credit cells),
//! [`fleet_store`] (the tenant store across a fleet, in Redis), [`fleet_usage`] (the fleet's
//! usage counters, in Redis), [`aws_keys`] (Bedrock credentials files read again when they
//! change or on `SIGHUP`, handed to each shard over a channel of its own).
//!
//! The process: [`launch`]: the command line, the config, the shards started and drained;
//! the `main` of both binaries (`shardgate` with mimalloc, `shardgate-counted` with a counting
//! allocator whose counts it shows on `/metrics`).
//!
//! Testing (only with the `fuzzing` feature):
//! - `fuzz_checks`: the invariants each fuzz target (`engine/fuzz`) asserts, one function per
//!   target, replayed over the seed corpora by `cargo test --workspace`.
//!
//! Nothing is shared between shards on the request path: each shard owns its state in `Rc`s
//! and `Cell`s on its own thread. See `docs/ARCHITECTURE.md`.

pub use shardgate_core::{
    cert, config, control, limits, manage, models, prices, spend, store, store_op, tenant,
};

// `index_type!`: the typed indices of [`snapshot`] (`UpstreamId`, `PoolSlot`, ...), made as
// shardgate-core makes its counter slots (`control::stats::StatSlot`).
#[macro_use]
extern crate shardgate_core;

pub mod access;
pub mod accesslog;
pub mod admin;
pub mod admin_api;
pub mod admit;
pub mod aws_keys;
pub mod balance;
pub mod builder;
pub mod clock;
pub mod conn;
pub mod ctx;
pub mod drain;
pub mod error;
pub mod exchange;
pub mod fair;
pub mod fleet;
pub mod fleet_store;
pub mod fleet_usage;
#[cfg(feature = "fuzzing")]
pub mod fuzz_checks;
pub mod http;
pub mod launch;
pub mod limit;
pub mod listen;
pub mod llm;
pub mod metrics;
pub mod mock;
pub mod provider;
pub mod route;
pub mod runtime;
pub mod shard;
pub mod snapshot;
pub mod stream;
pub mod telemetry;
pub mod template;
pub mod tls;
pub mod upstream;
