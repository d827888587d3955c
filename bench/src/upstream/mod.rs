//! `shardgate-bench upstream`: a mock OpenAI-compatible (and Anthropic `/v1/messages`) LLM
//! upstream, thread-per-core like the gateway, so that it is never the bottleneck of a benchmark
//! and can inject the latencies, streams and failures a gateway must cope with.
//!
//! # Layout
//! - this file: the command line, one pinned thread per `--threads` with its own monoio runtime
//!   and SO_REUSEPORT listener, start-up line, SIGTERM/SIGINT.
//! - [`server`]: the connection loop (the only code doing I/O).
//! - [`http`]: request parsing and body framing, sans-I/O.
//! - [`body`]: what is read from a JSON request body, without building a tree.
//! - [`answer`]: the responses, sans-I/O: a request, the knobs, random draws and a clock in;
//!   the bytes as timed frames out.
//! - [`rng`]: the seeded per-shard PRNG behind `--fail-rate` and `--reset-rate`.
//!
//! # Endpoints
//! `POST /v1/chat/completions`, `POST /v1/completions` (whole or `"stream": true` SSE with
//! `stream_options.include_usage`), `POST /v1/embeddings`, `GET /v1/models`, and Anthropic's
//! `POST /v1/messages` (whole or streamed events); Azure OpenAI's deployment paths
//! (`/openai/deployments/{name}/chat/completions`, `.../completions`, `.../embeddings`) answer as
//! the OpenAI ones. `usage.prompt_tokens` is the UTF-8 bytes of
//! the request's text content (message contents and text parts, `prompt`, `input`, `system`)
//! divided by 4, rounded up; `completion_tokens` is `--chunks` (one word per chunk).
//! With `--echo`, every request is answered with a JSON description of itself; with `--tools`,
//! chat requests with `tools` get a tool call, and those ending with its result a text quoting
//! it.

pub mod answer;
pub mod body;
pub mod http;
pub mod rng;
pub mod server;

use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::Context as _;
use monoio::net::{ListenerOpts, TcpListener};

use answer::{Knobs, CHUNKS_MAX};
use server::Shard;

/// Most threads (`--threads`).
pub const THREADS_MAX: u32 = 1024;
/// Listen backlog per thread: a burst of 10,000 proxied streams connects at once (the kernel
/// caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 16_384;
/// How often an idle thread looks at the shutdown flag, ms.
const SHUTDOWN_POLL_MS: u64 = 50;
/// Largest delay knob (one hour), ms.
const DELAY_MS_MAX: u64 = 3_600_000;

/// Command-line arguments of `shardgate-bench upstream`.
#[derive(Debug, clap::Args)]
pub struct UpstreamArgs {
    /// Address to listen on (port 0: pick a free port, shared by all threads).
    #[arg(long, default_value = "127.0.0.1:18080")]
    pub listen: SocketAddr,
    /// Threads, each pinned to one CPU of the allowed set, with its own runtime and listener.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(THREADS_MAX)))]
    pub threads: u32,
    /// Delay before a non-streaming answer, ms (injected failures and refusals go out at once).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(..=DELAY_MS_MAX))]
    pub latency_ms: u64,
    /// Delay before the first chunk of a stream (time to first token), ms.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(..=DELAY_MS_MAX))]
    pub ttft_ms: u64,
    /// Answer chunks (words): SSE content events of a stream, and `completion_tokens`.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=i64::from(CHUNKS_MAX)))]
    pub chunks: u32,
    /// Delay between stream chunks, ms.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(..=DELAY_MS_MAX))]
    pub chunk_interval_ms: u64,
    /// Fraction of requests (0..1), on any path and with --echo too, answered with
    /// --fail-status instead.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fail_rate: f64,
    /// Status of injected failures: 429 (with `Retry-After: 1`), 500 or 503.
    #[arg(long, default_value_t = 503, value_parser = parse_fail_status)]
    pub fail_status: u16,
    /// Fraction of streaming requests (0..1) whose connection is reset after half the chunks
    /// (RST through SO_LINGER 0; a plain close should the kernel refuse the option).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub reset_rate: f64,
    /// Answer every request with `{"method","path","headers":[[name,value],..],"body"}`.
    #[arg(long)]
    pub echo: bool,
    /// Chat answers carry a reasoning text as vLLM's `reasoning_content` (streamed: one event
    /// before the content), as reasoning models served by vLLM answer.
    #[arg(long)]
    pub reasoning: bool,
    /// Chat requests with `tools` are answered with a call of the first tool (arguments
    /// `{"query":"mock"}`; streamed in two pieces), unless their last message is a `tool`
    /// message: that one is answered with text quoting the tool result's first 40 characters.
    #[arg(long)]
    pub tools: bool,
    /// Seed of the per-thread PRNG behind --fail-rate and --reset-rate.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a fraction between 0 and 1")),
    }
}

fn parse_fail_status(s: &str) -> Result<u16, String> {
    match s {
        "429" => Ok(429),
        "500" => Ok(500),
        "503" => Ok(503),
        _ => Err(format!("{s:?}: must be 429, 500 or 503")),
    }
}

impl UpstreamArgs {
    fn knobs(&self) -> Knobs {
        Knobs {
            latency_ms: self.latency_ms,
            ttft_ms: self.ttft_ms,
            chunks: self.chunks,
            chunk_interval_ms: self.chunk_interval_ms,
            fail_rate: self.fail_rate,
            fail_status: self.fail_status,
            reset_rate: self.reset_rate,
            echo: self.echo,
            reasoning: self.reasoning,
            tools: self.tools,
        }
    }
}

/// Run `shardgate-bench upstream` until SIGTERM or SIGINT.
pub fn run(args: UpstreamArgs) -> anyhow::Result<()> {
    // Thousands of proxied streams hold one connection each: the soft open-file limit up to the
    // hard one, as the engine does.
    shardgate_engine::runtime::raise_nofile();
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // A second signal exits at once, with status 1, should a thread not stop.
        signal_hook::flag::register_conditional_shutdown(signal, 1, shutdown.clone())
            .context("cannot install a signal handler")?;
        signal_hook::flag::register(signal, shutdown.clone())
            .context("cannot install a signal handler")?;
    }
    // Port 0: pick one free port now, so every thread's SO_REUSEPORT socket shares it.
    let mut listen = args.listen;
    if listen.port() == 0 {
        let probe = std::net::TcpListener::bind(listen)
            .with_context(|| format!("cannot listen on {listen}"))?;
        listen = probe.local_addr()?;
    }
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let knobs = args.knobs();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut threads = Vec::new();
    for id in 0..args.threads as usize {
        let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
        let (knobs, shutdown, ready) = (knobs.clone(), shutdown.clone(), ready_tx.clone());
        let seed = args.seed;
        let thread = std::thread::Builder::new()
            .name(format!("upstream-{id}"))
            .spawn(move || {
                if let Some(core) = core {
                    // Unpinned still works; only the measurement gets noisier.
                    let _ = core_affinity::set_for_current(core);
                }
                let shard = Rc::new(Shard::new(id, knobs, seed));
                run_thread(shard, listen, &shutdown, &ready);
            })
            .context("cannot start a thread")?;
        threads.push(thread);
    }
    drop(ready_tx);
    for _ in 0..threads.len() {
        let ready = ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("a thread stopped during start-up"));
        if let Err(e) = ready.and_then(|r| r.map_err(anyhow::Error::msg)) {
            shutdown.store(true, Ordering::Relaxed);
            return Err(e);
        }
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "shardgate-bench upstream listening on http://{listen}")?;
    out.flush()?;
    drop(out);
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// One thread: bind, report, serve until the shutdown flag is set.
fn run_thread(
    shard: Rc<Shard>,
    listen: SocketAddr,
    shutdown: &AtomicBool,
    ready: &mpsc::Sender<Result<(), String>>,
) {
    let serve = async move || {
        let opts = ListenerOpts::new()
            .reuse_port(true)
            .reuse_addr(true)
            .backlog(LISTEN_BACKLOG);
        let listener = match TcpListener::bind_with_config(listen, &opts) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!("cannot listen on {listen}: {e}")));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        monoio::spawn(server::accept_loop(shard.clone(), listener));
        // Returning drops the runtime, and with it every connection still open.
        while !shutdown.load(Ordering::Relaxed) {
            monoio::time::sleep(Duration::from_millis(SHUTDOWN_POLL_MS)).await;
        }
    };
    // The engine's driver choice: tuned io_uring, io_uring, then epoll.
    let auto = shardgate_engine::config::DriverChoice::Auto;
    if let Err(e) = shardgate_engine::runtime::block_on_best(auto, |_kind| serve()) {
        let _ = ready.send(Err(format!("cannot build a runtime: {e}")));
    }
}
