#!/usr/bin/env bash
# Issue 21's streaming matrix: shardgate, nginx (proxy_buffering off) and HAProxy holding 1,000 and
# 10,000 concurrent SSE streams, arriving in a burst and at a steady rate, through
# `shardgate-bench compare --scenarios sse` (one compare per stream count; both arrival modes in
# each). Per proxy: RSS per open stream (RSS sampled mid-stream minus the proxy's idle RSS before
# the load, over the streams), TTFB and time-to-first-event p50/p90/p99, CPU per stream, each
# with its ratio to nginx.
#
# Streams as in the issue: the first token after TTFT_MS (200), then CHUNKS (20) tokens INTERVAL_MS
# (200) apart: a stream lives TTFT_MS + CHUNKS x INTERVAL_MS = 4.2 s. Burst: every stream's first
# request at once. Steady: the first requests spread evenly over RAMP_MS (default: one stream's
# lifetime, so every stream is open from then on). RSS is sampled half a stream after the last
# stream arrived (burst 2.1 s, steady 6.3 s into the run); DURATION must exceed that. The warm-up's
# streams are let finish, and the proxy drained of them, before each measured run.
#
# Limits (compare checks them before any run and names the one that stops a proxy, instead of
# measuring it): each proxy needs 2 open files per stream plus ~128; the load generator and the
# mock 1 per stream. compare raises the soft and hard limit when it can (CAP_SYS_RESOURCE); where
# `ulimit -Hn` is 20,000 and cannot be raised (the 2-core VM), 10,000 streams fit no proxy (each
# holds at most 9,936): run STREAMS="1000 9900" there. A burst larger than net.core.somaxconn (4,096 here) overflows accept queues;
# connects past them wait for a SYN retransmission (1 s), which shows in TTFB: compare prints a
# note; `sysctl -w net.core.somaxconn=16384` (root) rules it out, but shardgate's own listen
# backlog is the engine's LISTEN_BACKLOG (4,096).
#
# Usage: bench/scripts/sse-streams.sh
# Environment (defaults in brackets):
#   STREAMS ["1000 10000"]  ARRIVALS [burst,steady]  ROUNDS [3]  DURATION [10s]  WARMUP [2s]
#   TTFT_MS [200]  CHUNKS [20]  INTERVAL_MS [200]  RAMP_MS [one stream's lifetime]
#   PROXIES [shardgate,nginx,haproxy]  PORT_BASE [28080]
#   OUT [/tmp/sse-streams-<UTC time>]  BENCH_BIN [<repo>/target/release/shardgate-bench]
#   EXTRA  more compare arguments (e.g. "--foreign-max-pct 20 --noisy-retries 1")
# Output: OUT/n<N>/ (compare's raw.tsv, runs.jsonl, result.json, summary.txt, logs), OUT/tables.md
# (compare's full tables) and OUT/matrix.md (the table for docs/benchmarks.md), both printed.
# Needs: cargo build --release -p shardgate-engine -p shardgate-bench; nginx, haproxy, taskset, jq.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

STREAMS=${STREAMS:-"1000 10000"}
ARRIVALS=${ARRIVALS:-burst,steady}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
TTFT_MS=${TTFT_MS:-200}
CHUNKS=${CHUNKS:-20}
INTERVAL_MS=${INTERVAL_MS:-200}
RAMP_MS=${RAMP_MS:-}
PROXIES=${PROXIES:-shardgate,nginx,haproxy}
PORT_BASE=${PORT_BASE:-28080}
OUT=${OUT:-/tmp/sse-streams-$(date -u +%Y%m%d-%H%M%S)}
BENCH_BIN=${BENCH_BIN:-$REPO/target/release/shardgate-bench}
EXTRA=${EXTRA:-}

[[ -x $BENCH_BIN ]] || {
    echo "no $BENCH_BIN: cargo build --release -p shardgate-engine -p shardgate-bench" >&2
    exit 1
}
command -v jq >/dev/null || { echo "needs jq (apt-get install -y jq)" >&2; exit 1; }
mkdir -p "$OUT"
echo "sse-streams: streams [$STREAMS] x arrivals [$ARRIVALS] x [$PROXIES], $ROUNDS round(s); open files: soft $(ulimit -Sn), hard $(ulimit -Hn); somaxconn $(cat /proc/sys/net/core/somaxconn)" >&2

ramp=()
[[ -n $RAMP_MS ]] && ramp=(--sse-ramp-ms "$RAMP_MS")
: >"$OUT/tables.md"
for n in $STREAMS; do
    dir=$OUT/n$n
    echo "== $n streams -> $dir" >&2
    # shellcheck disable=SC2086 # EXTRA is a list of arguments
    if ! "$BENCH_BIN" compare --proxies "$PROXIES" --scenarios sse --rounds "$ROUNDS" \
        --duration "$DURATION" --warmup "$WARMUP" --sse-streams "$n" --sse-arrival "$ARRIVALS" \
        "${ramp[@]}" --sse-ttft-ms "$TTFT_MS" --sse-chunks "$CHUNKS" \
        --sse-chunk-interval-ms "$INTERVAL_MS" --port-base "$PORT_BASE" --out "$dir" $EXTRA \
        >"$dir.summary" 2>"$dir.log"; then
        echo "compare with $n streams failed; its log: $dir.log" >&2
        tail -5 "$dir.log" >&2
        continue
    fi
    { echo "### $n streams"; echo; cat "$dir.summary"; echo; } >>"$OUT/tables.md"
done

# One table over the whole matrix: per stream count, arrival and proxy, the medians and, in
# brackets, the ratio to nginx's median in the same compare.
{
    echo "| streams | arrival | proxy | runs ok | held | RSS KiB/stream | TTFB p50 / p90 / p99 ms | first event p50 / p90 / p99 ms | CPU µs/stream |"
    echo "|--:|---|---|--:|--:|--:|--:|--:|--:|"
    for n in $STREAMS; do
        f=$OUT/n$n/result.json
        [[ -f $f ]] || continue
        jq -r --arg n "$n" '
          def r(m): (.ratio_to_nginx[m] // null) as $x
            | if $x == null or .proxy == "nginx" then "" else " (\($x * 100 | round / 100))" end;
          def v(m; scale; d): (.median[m] // null) as $x
            | if $x == null then "-" else ($x * scale * pow(10; d) | round / pow(10; d) | tostring) end;
          .scenarios[] | select(.scenario == "sse") as $s | $s.proxies[]
          | "| \($n) | \($s.arrival // "burst") | \(.proxy) | \(.runs_ok)/\(.runs_total) | \(v("streams_held"; 1; 0)) | "
            + "\(v("rss_per_stream_kib"; 1; 1))\(r("rss_per_stream_kib")) | "
            + "\(v("ttfb_p50_us"; 0.001; 1)) / \(v("ttfb_p90_us"; 0.001; 1)) / \(v("ttfb_p99_us"; 0.001; 1))\(r("ttfb_p99_us")) | "
            + "\(v("ttfe_p50_us"; 0.001; 1)) / \(v("ttfe_p90_us"; 0.001; 1)) / \(v("ttfe_p99_us"; 0.001; 1))\(r("ttfe_p99_us")) | "
            + "\(v("cpu_us_per_req"; 1; 1))\(r("cpu_us_per_req")) |"' "$f"
        jq -r --arg n "$n" '.sse_skipped[]? | "| \($n) | all | \(.proxy) | skipped: \(.reason) | | | | | |"' "$f"
    done
    echo
    echo "(x.xx) = ratio to nginx in the same compare (RSS per stream, TTFB p99, first-event p99, CPU)."
} >"$OUT/matrix.md"
cat "$OUT/tables.md"
cat "$OUT/matrix.md"
echo "raw data under $OUT" >&2
