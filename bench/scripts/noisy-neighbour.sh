#!/usr/bin/env bash
# Noisy neighbours on a saturated upstream, over every shard (issue 15).
#
# Method: the bench's mock upstream answers chat completions after --latency-ms (20 ms); the
# gateway caps it at max_concurrency = 16 (so it serves about 800 requests/s) and shares it
# between tenants by weight. For each shard count in CORES:
#   alone     tenant "quiet" alone: open loop, QUIET_RATE requests/s over 2 connections; then
#             tenant "hot" alone (HOT_CONNS connections, closed loop): the upstream's capacity
#   flood     the same quiet load while tenant "hot" floods closed-loop with HOT_CONNS
#             connections (new connections spread over the shards by SO_REUSEPORT), started
#             FLOOD_LEAD before the quiet run and ending after it
#   weights   tenants "heavy" (weight 3) and "light" (weight 1) flood together, WEIGHT_CONNS
#             connections each, same requests: completed requests should split 3:1
#   tokens    the same weights, but heavy asks max_tokens 50 and light max_tokens 500 (the
#             admission estimate is body bytes / 4 + max_tokens): estimated tokens should split
#             3:1, so light completes far fewer requests
# Every request is the README's chat request (POST /v1/chat/completions with a tenant key), so
# each goes the LLM path: key, model check, token estimate, fair queue, usage accounting.
# Rounds repeat the whole set ROUNDS times; the tables show medians over rounds, and every run
# is in OUT/raw.tsv.
#
# Usage: bench/scripts/noisy-neighbour.sh [OUT_DIR]
# Environment (defaults in brackets):
#   CORES ["1 2 auto"]  ROUNDS [3]  DURATION [20s]  FLOOD_LEAD [2]  QUIET_RATE [40]
#   HOT_CONNS [200]  WEIGHT_CONNS [32]  LATENCY_MS [20]  MAX_CONCURRENCY [16]
#   SHARDGATE_BIN [<repo>/target/release/shardgate]
#   BENCH_BIN [<repo>/target/release/shardgate-bench]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=common.sh
source "$here/common.sh"

CORES=${CORES:-"1 2 auto"}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-20s}
FLOOD_LEAD=${FLOOD_LEAD:-2}
QUIET_RATE=${QUIET_RATE:-40}
HOT_CONNS=${HOT_CONNS:-200}
WEIGHT_CONNS=${WEIGHT_CONNS:-32}
LATENCY_MS=${LATENCY_MS:-20}
MAX_CONCURRENCY=${MAX_CONCURRENCY:-16}
SHARDGATE_BIN=${SHARDGATE_BIN:-$repo/target/release/shardgate}
BENCH_BIN=${BENCH_BIN:-$repo/target/release/shardgate-bench}
OUT=${1:-${OUT:-/tmp/shardgate-noisy-$(date +%Y%m%d-%H%M%S)}}
mkdir -p "$OUT/run"
for b in "$SHARDGATE_BIN" "$BENCH_BIN"; do
    [[ -x $b ]] || { echo "missing $b: cargo build --release --workspace" >&2; exit 1; }
done

STARTED_PIDS=()
cleanup() { local p; for p in "${STARTED_PIDS[@]}"; do stop_pid "$p"; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

up_port=$(free_port)
"$BENCH_BIN" upstream --listen "127.0.0.1:$up_port" --latency-ms "$LATENCY_MS" >"$OUT/run/upstream.log" 2>&1 &
STARTED_PIDS+=($!)
wait_port "$up_port"

body() { # the README's chat request, with max_tokens
    printf '{"model":"gpt-4o","max_tokens":%s,"messages":[{"role":"user","content":"Hello World!"}]}' "$1"
}

config() { # $1 = cores, $2 = listen port, $3 = admin port
    cat <<EOF
[server]
listen = "127.0.0.1:$2"
admin_listen = "127.0.0.1:$3"
instance = "noisy-$$-$1"
cores = $( [[ $1 == auto ]] && echo '"auto"' || echo "$1" )
queue_depth_max = 1024

[[upstreams]]
name = "mock"
endpoints = ["http://127.0.0.1:$up_port"]
max_concurrency = $MAX_CONCURRENCY

[[routes]]
path_prefix = "/"
upstream = "mock"
EOF
    local t w
    for t in quiet:1 hot:1 heavy:3 light:1; do
        w=${t#*:}
        printf '\n[[tenants]]\nname = "%s"\nkeys = ["sk-%s"]\nweight = %s\n' "${t%:*}" "${t%:*}" "$w"
    done
}

load() { # $1 = tenant, $2 = out json, $3 = max_tokens, then extra load options
    local who=$1 out=$2 mt=$3
    shift 3
    "$BENCH_BIN" load --json --timeout-ms 30000 -H "Authorization: Bearer sk-$who" \
        -H 'Content-Type: application/json' --body "$(body "$mt")" "$@" \
        "http://127.0.0.1:$gw_port/v1/chat/completions" >"$out" 2>>"$OUT/run/load.err"
}

field() { # $1 = json file, $2 = python expression over j
    python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print($2)" "$1"
}

secs=${DURATION%s}
printf 'cores\tround\tscenario\tfield\tvalue\n' >"$OUT/raw.tsv"
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$OUT/raw.tsv"; }

for round in $(seq 1 "$ROUNDS"); do
    for cores in $CORES; do
        gw_port=$(free_port)
        admin_port=$(free_port)
        cfg="$OUT/run/gw-$cores.toml"
        config "$cores" "$gw_port" "$admin_port" >"$cfg"
        "$SHARDGATE_BIN" --config "$cfg" >"$OUT/run/gw-$cores-$round.log" 2>&1 &
        gw=$!
        STARTED_PIDS+=("$gw")
        wait_port "$gw_port"
        r="$OUT/run/$cores-$round"

        load quiet "$r-alone.json" 16 --rate "$QUIET_RATE" -c 2 -d "$DURATION" --warmup 1s
        record "$cores" "$round" alone p99_ms "$(field "$r-alone.json" 'j["latency_us"]["p99"]/1000')"

        load hot "$r-hot-alone.json" 16 -c "$HOT_CONNS" -d "$DURATION" --warmup 1s
        record "$cores" "$round" alone hot_rps "$(field "$r-hot-alone.json" 'j["rps"]')"

        load hot "$r-hot.json" 16 -c "$HOT_CONNS" -d "$(( secs + 2 * FLOOD_LEAD ))s" &
        hot=$!
        sleep "$FLOOD_LEAD"
        load quiet "$r-flood.json" 16 --rate "$QUIET_RATE" -c 2 -d "$DURATION"
        wait "$hot"
        # A quiet tenant starved of every answer has no p99: recorded as inf.
        record "$cores" "$round" flood p99_ms "$(field "$r-flood.json" 'j["latency_us"]["p99"]/1000 if j["requests"] else float("inf")')"
        record "$cores" "$round" flood quiet_requests "$(field "$r-flood.json" 'j["requests"]')"
        record "$cores" "$round" flood p90_ms "$(field "$r-flood.json" 'j["latency_us"]["p90"]/1000')"
        record "$cores" "$round" flood quiet_errors "$(field "$r-flood.json" 'sum(j["errors"].values())')"
        record "$cores" "$round" flood hot_rps "$(field "$r-hot.json" 'j["rps"]')"
        record "$cores" "$round" flood hot_errors "$(field "$r-hot.json" 'sum(j["errors"].values())')"

        for scen in weights tokens; do
            if [[ $scen == weights ]]; then hmt=16; lmt=16; else hmt=50; lmt=500; fi
            load heavy "$r-$scen-heavy.json" "$hmt" -c "$WEIGHT_CONNS" -d "$DURATION" --warmup 2s &
            h=$!
            load light "$r-$scen-light.json" "$lmt" -c "$WEIGHT_CONNS" -d "$DURATION" --warmup 2s
            wait "$h"
            hr=$(field "$r-$scen-heavy.json" 'j["requests"]')
            lr=$(field "$r-$scen-light.json" 'j["requests"]')
            # Estimated tokens a request: body bytes / 4 (rounded up) + max_tokens.
            he=$(( ($(body "$hmt" | wc -c) + 3) / 4 + hmt ))
            le=$(( ($(body "$lmt" | wc -c) + 3) / 4 + lmt ))
            record "$cores" "$round" "$scen" heavy_requests "$hr"
            record "$cores" "$round" "$scen" light_requests "$lr"
            record "$cores" "$round" "$scen" request_ratio "$(python3 -c "print(round($hr/max($lr,1),2))")"
            record "$cores" "$round" "$scen" token_ratio "$(python3 -c "print(round($hr*$he/max($lr*$le,1),2))")"
        done
        stop_pid "$gw"
        forget_pid "$gw"
    done
done

python3 - "$OUT/raw.tsv" "$QUIET_RATE" "$HOT_CONNS" "$MAX_CONCURRENCY" "$LATENCY_MS" <<'EOF' | tee "$OUT/summary.md"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def med(cores, scen, field):
    v = [float(r["value"]) for r in rows if r["cores"] == cores and r["scenario"] == scen and r["field"] == field]
    return statistics.median(v) if v else float("nan")
def spread(cores, scen, field):
    v = sorted(float(r["value"]) for r in rows if r["cores"] == cores and r["scenario"] == scen and r["field"] == field)
    return f"{v[0]:g} - {v[-1]:g}" if v else "-"
cores = list(dict.fromkeys(r["cores"] for r in rows))
rate, conns, cap, lat = sys.argv[2:6]
print(f"quiet: {rate} req/s open loop over 2 connections; hot: {conns} connections closed loop; "
      f"upstream: max_concurrency = {cap}, {lat} ms a request. Medians of rounds (range).\n")
print("| shards | quiet p99 alone | quiet p99 while hot floods | ratio | quiet p90 | quiet errors | hot req/s (share of hot alone) | hot errors |")
print("|---|---|---|---|---|---|---|---|")
for c in cores:
    a, f = med(c, "alone", "p99_ms"), med(c, "flood", "p99_ms")
    print(f"| `cores = {c}` | {a:.1f} ms | {f:.1f} ms ({spread(c,'flood','p99_ms')}) | {f/a:.2f}x | "
          f"{med(c,'flood','p90_ms'):.1f} ms | {med(c,'flood','quiet_errors'):g} | "
          f"{med(c,'flood','hot_rps'):.0f} ({med(c,'flood','hot_rps')/med(c,'alone','hot_rps'):.0%}) | "
          f"{med(c,'flood','hot_errors'):g} |")
print()
print("| shards | weights 3:1, same requests: completed | weights 3:1, light asks max_tokens 500 against 50: estimated tokens (requests) |")
print("|---|---|---|")
for c in cores:
    print(f"| `cores = {c}` | {med(c,'weights','request_ratio'):.2f} : 1 ({spread(c,'weights','request_ratio')}) | "
          f"{med(c,'tokens','token_ratio'):.2f} : 1 ({med(c,'tokens','request_ratio'):.1f} : 1) |")
EOF
echo "raw runs: $OUT/raw.tsv"
