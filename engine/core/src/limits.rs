//! Compile-time limits and the defaults of configurable ones, in one place, units last in names.
//!
//! Runtime-configurable limits live in [`crate::config`]; their defaults and bounds are here so
//! the relations between them are checked once, at compile time.

/// Size of the stack array httparse parses header fields into; `headers_count_max` may not
/// exceed it.
pub const HEADERS_ARRAY_LEN: usize = 128;
/// Default for `[server] headers_count_max`.
pub const HEADERS_COUNT_MAX_DEFAULT: usize = 100;

/// Default for `[server] header_bytes_max` (request line and header fields).
pub const HEADER_BYTES_MAX_DEFAULT: usize = 16 * 1024;
/// Smallest and largest `header_bytes_max` accepted. Client read buffers are this size, so the
/// upper bound also bounds memory per connection.
pub const HEADER_BYTES_MAX_MIN: usize = 1024;
pub const HEADER_BYTES_MAX_MAX: usize = 64 * 1024;

/// Default for `[server] body_bytes_max`.
pub const BODY_BYTES_MAX_DEFAULT: u64 = 32 * 1024 * 1024;

/// Largest chunk-size line (size, extensions, CRLF) in a chunked body, bytes.
pub const CHUNK_LINE_BYTES_MAX: usize = 1024;
/// Largest trailer section of a chunked body, bytes. Trailers are parsed and dropped.
pub const TRAILER_BYTES_MAX: usize = 8 * 1024;
/// Largest number of hex digits in a chunk size (15 keeps the size below 2^60, no overflow).
pub const CHUNK_SIZE_DIGITS_MAX: usize = 15;

/// Response head from an upstream (status line and header fields), bytes.
pub const UPSTREAM_HEADER_BYTES_MAX: usize = 32 * 1024;
/// Buffer for reading an upstream's answer, bytes: lent from the shard's spares while a head
/// or a whole body is read, and per read to a stream (a stream waiting for its next token holds
/// none).
pub const RELAY_BUF_BYTES: usize = 32 * 1024;
/// A client connection's read buffer when it is made (grown to `header_bytes_max` when a head
/// or a streamed body needs it), bytes. Given back to the shard's spares while the connection
/// relays a stream.
pub const CLIENT_BUF_BYTES_INITIAL: usize = 4 * 1024;
/// Buffer for building the request head sent upstream, and local answers, bytes.
pub const WRITE_BUF_BYTES: usize = 20 * 1024;
/// Extra bytes shardgate may add to a forwarded request head (Host, X-Forwarded-*).
pub const HEAD_REWRITE_SLACK_BYTES: usize = 512;
/// Tokens a `Connection` header may list (each names a header not to forward).
pub const CONNECTION_TOKENS_MAX: usize = 16;
/// Interim (1xx) responses skipped before the final one.
pub const INTERIM_RESPONSES_MAX: usize = 8;

/// Defaults for `[server]` timeouts.
pub const HEADER_TIMEOUT_MS_DEFAULT: u64 = 10_000;
pub const BODY_TIMEOUT_MS_DEFAULT: u64 = 30_000;
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 60_000;
pub const SEND_TIMEOUT_MS_DEFAULT: u64 = 60_000;
pub const DRAIN_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// A TLS client that has not finished its handshake in this long is dropped.
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Most `[[server.tls]]` certificates.
pub const TLS_CERTS_MAX: usize = 64;
/// Largest certificate, key or CA file read, bytes.
pub const TLS_FILE_BYTES_MAX: usize = 256 * 1024;
/// Largest value any `*_timeout_ms` may take (one day).
pub const TIMEOUT_MS_MAX: u64 = 86_400_000;

/// Default for `[server] connections_max` (per shard).
pub const CONNECTIONS_MAX_DEFAULT: usize = 16_384;
/// Default for `[server] requests_inflight_max` (per shard): past it a shard sheds new
/// requests with 503 instead of queueing more work behind the ones it serves.
pub const REQUESTS_INFLIGHT_MAX_DEFAULT: usize = 8_192;
/// Largest number of shards.
pub const SHARDS_MAX: usize = 1024;
/// Listen backlog per shard.
pub const LISTEN_BACKLOG: i32 = 4096;
/// io_uring submission queue entries per shard.
pub const URING_ENTRIES: u32 = 1024;

/// Defaults for `[[upstreams]]`.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 3_000;
pub const TTFB_TIMEOUT_MS_DEFAULT: u64 = 120_000;
pub const READ_TIMEOUT_MS_DEFAULT: u64 = 120_000;
pub const POOL_IDLE_TIMEOUT_MS_DEFAULT: u64 = 4_000;
pub const POOL_IDLE_MAX_DEFAULT: usize = 64;
/// Largest number of endpoints per upstream, and of upstreams and routes.
pub const ENDPOINTS_MAX: usize = 256;
/// Longest Azure `api_version`, bytes.
pub const API_VERSION_BYTES_MAX: usize = 32;
/// Longest Azure deployment name in a request path, bytes (Azure allows 64).
pub const AZURE_DEPLOYMENT_BYTES_MAX: usize = 64;
pub const UPSTREAMS_MAX: usize = 4096;
pub const ROUTES_MAX: usize = 65_536;

/// Defaults of `[server] queue_wait_ms_max` and `queue_depth_max` (fair queues in front of a
/// saturated upstream).
pub const QUEUE_WAIT_MS_MAX_DEFAULT: u64 = 30_000;
pub const QUEUE_DEPTH_MAX_DEFAULT: usize = 256;
/// Tries a shard makes to hand a freed slot to the smallest waiting head while the heads
/// change under it; past them the slot is freed and the next release or timer hands it on.
pub const FAIR_PASS_TRIES_MAX: usize = 64;
/// Default `headroom_slots` of a capped upstream: `max_concurrency / FAIR_HEADROOM_DIVISOR`
/// (2 of 16; none below 8, where a slot is too large a share to hold back).
pub const FAIR_HEADROOM_DIVISOR: u64 = 8;
/// How long after its last request a tenant counts as active on a capped upstream (others
/// then leave it the upstream's headroom), ms.
pub const FAIR_ACTIVE_MS: u64 = 1_000;

/// Default port of `[server] admin_listen` (on 127.0.0.1).
pub const ADMIN_PORT_DEFAULT: u16 = 9901;
/// Largest config text `shardgate-ctl apply` pushes (and the engine bootstraps from), bytes.
pub const CONFIG_BYTES_MAX: usize = 2_000_000;
/// Slots in the config ring, and 64-bit words per slot (one frame each).
pub const RING_SLOTS: usize = 64;
pub const RING_SLOT_WORDS: usize = 8 * 1024;
/// Named counter slots per shard (upstreams, routes; one kept for "(other)").
pub const STATS_SLOTS: usize = 1024;
/// Tenant slots in the shared region (limiter cells; at most half used, for short probes).
pub const TENANT_SLOTS: usize = 32_768;
/// Bytes of a counter slot's name; longer names are cut.
pub const STATS_NAME_BYTES: usize = 64;
/// Bytes of the last config error a shard reports to ctl.
pub const SHARD_ERROR_BYTES: usize = 256;

/// The answer to a change to the tenant store, as the engine's config builder leaves it in the
/// shared region for whoever asked (ctl, the admin API): the JSON of what changed, bytes.
pub const STORE_REPLY_BYTES: usize = 16 * 1024;
/// Request-duration histogram bucket bounds, ms (a last, unbounded bucket follows).
pub const DURATION_BUCKETS_MS: [u64; 15] = [
    1, 3, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000,
];
/// Bytes of each of a shard's two access-log buffers (one being filled while the other is
/// written); a record that finds the fill buffer full is dropped and counted. At 60,000
/// requests a second (about 14 MB/s of lines) one buffer holds about 70 ms of them.
pub const ACCESS_LOG_BUF_BYTES: usize = 1024 * 1024;
/// A shard writes its access-log lines once this many bytes are buffered (and on its timer).
pub const ACCESS_LOG_WRITE_BYTES: usize = 64 * 1024;
/// Bytes of a request path kept in an access-log record (longer paths are cut).
pub const ACCESS_LOG_PATH_BYTES: usize = 160;
/// How often a shard writes what its access log has buffered, however little, ms.
pub const ACCESS_LOG_FLUSH_MS: u64 = 200;
/// Spans in one of a shard's span batches (handed to the exporter whole).
pub const SPAN_BATCH_MAX: usize = 128;
/// How often a shard hands its span batch to the exporter, however few it holds, ms.
pub const SPAN_FLUSH_MS: u64 = 500;
/// Defaults of `[telemetry]`: one export's time limit (OpenTelemetry's default, 10 s), how
/// often the exporter sends what is queued, ms, and the spans queued at most.
pub const OTLP_EXPORT_TIMEOUT_MS_DEFAULT: u64 = 10_000;
pub const OTLP_EXPORT_INTERVAL_MS_DEFAULT: u64 = 1_000;
pub const OTLP_QUEUE_SPANS_MAX_DEFAULT: u64 = 16_384;
/// Header pairs an OTLP export sends at most, and bytes of the variable that holds them.
pub const OTLP_HEADERS_MAX: usize = 32;
pub const OTLP_HEADERS_BYTES_MAX: usize = 8 * 1024;
/// How long `shardgate-ctl apply` waits for every shard to take a new config, ms.
pub const APPLY_WAIT_MS_MAX: u64 = 10_000;

/// How often a shard's timer looks at the config ring (a busy shard also looks between
/// requests), ms.
pub const CONTROL_POLL_MS: u64 = 10;
/// How often an idle shard looks at the process-wide shutdown flag, ms.
pub const SHUTDOWN_POLL_MS: u64 = 50;

/// Largest request body the built-in mock model reads, bytes.
pub const MOCK_BODY_BYTES_MAX: usize = 1024 * 1024;

/// Longest model name, bytes (in a request body after decoding escapes, in `[[models]]` and in
/// a template's `models`).
pub const MODEL_BYTES_MAX: usize = 256;

const _: () = assert!(RING_SLOTS.is_power_of_two());
// The largest config fits in half the ring, so the previous message survives a new one.
const _: () = assert!(CONFIG_BYTES_MAX + 4096 <= (RING_SLOTS / 2) * (RING_SLOT_WORDS - 7) * 8);
const _: () = assert!(STATS_NAME_BYTES.is_multiple_of(8) && SHARD_ERROR_BYTES.is_multiple_of(8));
const _: () = assert!(STATS_SLOTS >= 2);
const _: () = assert!(crate::tenant::TENANTS_MAX * 2 <= TENANT_SLOTS);
const _: () = assert!(HEADERS_COUNT_MAX_DEFAULT <= HEADERS_ARRAY_LEN);
const _: () = assert!(HEADER_BYTES_MAX_MIN <= HEADER_BYTES_MAX_DEFAULT);
const _: () = assert!(HEADER_BYTES_MAX_DEFAULT <= HEADER_BYTES_MAX_MAX);
// A forwarded head under the default limit fits the write buffer without growing it.
const _: () = assert!(HEADER_BYTES_MAX_DEFAULT + HEAD_REWRITE_SLACK_BYTES <= WRITE_BUF_BYTES);
const _: () = assert!(CHUNK_LINE_BYTES_MAX < RELAY_BUF_BYTES);
const _: () = assert!(TRAILER_BYTES_MAX < RELAY_BUF_BYTES);
const _: () = assert!(UPSTREAM_HEADER_BYTES_MAX <= RELAY_BUF_BYTES);

/// How often an instance's fleet agent trades leases with Redis by default, ms (`[fleet]
/// sync_ms`).
pub const FLEET_SYNC_MS_DEFAULT: u64 = 20;
