#!/usr/bin/env bash
# Heap allocations per proxied request, measured on the whole request path.
#
# Builds `shardgate-counted` (the engine with a stats_alloc wrapper as its global allocator:
# every allocation counted; totals printed at exit and shown on /metrics), starts the benchmark
# upstream (bench/peers/upstream-nginx.conf), and runs the same wrk load (64 keep-alive
# connections, the chat request of post.lua) twice, for SHORT and LONG seconds, each against a
# fresh shardgate. Start-up and per-connection allocations are the same in both runs, so
#     allocations per request = (allocs_long - allocs_short) / (requests_long - requests_short)
# is what each additional request costs. The target is 0.
#
# Usage: bench/scripts/alloc-per-request.sh    Environment: SHORT [2] LONG [6] CONNS [64]
#   ACCESS_LOG [0]  1: run with the access log on (bench/peers/shardgate-log.toml, into WORK)
#   TENANT [0]      1: run as a tenant (bench/peers/shardgate-tenant.toml: key, body scan,
#                   limits, usage accounting)
#   FULL [0]        1: the full LLM path (bench/peers/shardgate-full.toml: tenant, limits, model
#                   group, usage, metrics), with the access log when ACCESS_LOG=1
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PEERS=$REPO/bench/peers
SHORT=${SHORT:-2}
LONG=${LONG:-6}
CONNS=${CONNS:-64}
ACCESS_LOG=${ACCESS_LOG:-0}
WORK=$(mktemp -d /tmp/shardgate-alloc.XXXXXX)
CONFIG=$PEERS/shardgate.toml
if [[ ${FULL:-0} == 1 ]]; then
    if [[ $ACCESS_LOG == 1 ]]; then
        sed "s|@ACCESS_LOG@|$WORK/access.log|" "$PEERS/shardgate-full.toml" >"$WORK/shardgate-full.toml"
    else
        grep -v '^access_log' "$PEERS/shardgate-full.toml" >"$WORK/shardgate-full.toml"
    fi
    CONFIG=$WORK/shardgate-full.toml
elif [[ ${TENANT:-0} == 1 ]]; then
    CONFIG=$PEERS/shardgate-tenant.toml
elif [[ $ACCESS_LOG == 1 ]]; then
    sed "s|@ACCESS_LOG@|$WORK/access.log|" "$PEERS/shardgate-log.toml" >"$WORK/shardgate-log.toml"
    CONFIG=$WORK/shardgate-log.toml
fi
BIN=$REPO/target/release/shardgate-counted

command -v wrk >/dev/null && command -v nginx >/dev/null ||
    { echo "SKIP: needs wrk and nginx (apt-get install -y wrk nginx-light)"; exit 0; }
(cd "$REPO" && cargo build --release -q -p shardgate-engine --bin shardgate-counted)

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

mkdir -p "$WORK/upstream"
taskset -c 1 nginx -p "$WORK/upstream/" -e "$WORK/upstream/error.log" \
    -c "$PEERS/upstream-nginx.conf" &
pids+=($!)
for _ in $(seq 50); do curl -sf -o /dev/null -X POST http://127.0.0.1:18080/ && break; sleep 0.1; done

run() { # seconds -> "allocations requests"
    taskset -c 0 "$BIN" --config "$CONFIG" >"$WORK/sg.out" 2>"$WORK/sg.err" &
    local pid=$!
    for _ in $(seq 100); do grep -q listening "$WORK/sg.out" 2>/dev/null && break; sleep 0.05; done
    taskset -c 1 wrk -t1 -c"$CONNS" -d"$1"s -s "$PEERS/post.lua" \
        http://127.0.0.1:18083/v1/chat/completions >"$WORK/wrk-$1.txt"
    kill -TERM "$pid"
    wait "$pid" || true
    # count-alloc: A allocations, R reallocations, N requests
    grep '^count-alloc:' "$WORK/sg.out" >&2
    awk '/^count-alloc:/ {print $2 + $4, $6}' "$WORK/sg.out"
}
read -r a1 n1 < <(run "$SHORT")
read -r a2 n2 < <(run "$LONG")
echo "short run: $n1 requests, $a1 allocations (incl. reallocations)"
echo "long run:  $n2 requests, $a2 allocations (incl. reallocations)"
awk -v a1="$a1" -v a2="$a2" -v n1="$n1" -v n2="$n2" 'BEGIN {
    printf "allocations per additional request: %.4f  ((%d - %d) / (%d - %d))\n",
           (a2 - a1) / (n2 - n1), a2, a1, n2, n1 }'
