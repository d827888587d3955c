#!/usr/bin/env bash
# What a tenant change costs the requests being served: each shard's pause to take the new
# config, and the load's latency tail, with TENANTS tenants in the config.
#
# Method: shardgate on CORES shards (2) with the built-in mock model, auth = "keys", TENANTS
# `[[tenants]]` entries (one sha256 key each) plus the load's tenant (key sk-demo), and a tenant
# store. wrk -t1 -c16 posts bench/peers/post.lua for DURATION seconds; CHANGES changes are made
# during the run, evenly spaced (MODE=store: `shardgate-ctl keys create` of a store tenant;
# MODE=apply: `shardgate-ctl apply` of the same file with one tenant's rpm changed). A run with
# no change comes first, for the tail without changes. Reported per run: wrk's p99, p99.9 and
# max latency, and the shards' pauses (`paused_us` of each "config applied" log line: the
# shard's own part of taking the new config, wall time) and the CPU time the shard's thread
# spent in them (`paused_cpu_us`: the rest of a pause is time the kernel gave other threads).
#
# Usage: bench/scripts/apply-pause.sh [OUT_DIR]
# Environment: TENANTS ["100 1000 4000"]  CHANGES [3]  DURATION [12]  CORES [2]  MODE [store]
#   SHARDGATE_BIN [<repo>/target/release/shardgate]  CTL_BIN [<repo>/target/release/shardgate-ctl]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TENANTS=${TENANTS:-"100 1000 4000"}
CHANGES=${CHANGES:-3}
DURATION=${DURATION:-12}
CORES=${CORES:-2}
MODE=${MODE:-store}
SHARDGATE_BIN=${SHARDGATE_BIN:-$REPO/target/release/shardgate}
CTL_BIN=${CTL_BIN:-$REPO/target/release/shardgate-ctl}
OUT=${1:-${OUT:-/tmp/shardgate-apply-pause-$(date +%Y%m%d-%H%M%S)}}
PORT=18097

die() { echo "apply-pause: $*" >&2; exit 1; }
for b in "$SHARDGATE_BIN" "$CTL_BIN"; do
    [[ -x $b ]] || die "$b missing (cargo build --release -p shardgate-engine -p shardgate-ctl)"
done
command -v wrk >/dev/null || die "wrk missing (apt-get install wrk)"
[[ $MODE == store || $MODE == apply ]] || die "MODE must be store or apply"
mkdir -p "$OUT"

# SHA-256 of sk-demo, the load's key (post.lua).
DEMO=$(printf %s sk-demo | sha256sum | cut -d' ' -f1)

gen() { # file, tenants, rpm of tenant 0
    {
        printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_listen = "off"\nauth = "keys"\n' "$PORT"
        printf 'cores = %s\ntenant_store = "%s/tenants.json"\n\n' "$CORES" "$OUT"
        printf '[[upstreams]]\nname = "demo"\nprovider = "mock"\n\n'
        printf '[[routes]]\npath_prefix = "/"\nupstream = "demo"\n\n'
        printf '[[tenants]]\nname = "load"\nkeys = ["sha256:%s"]\n\n' "$DEMO"
        for ((i = 0; i < $2; i++)); do
            h=$(printf '%064x' "$((i + 1))")
            if ((i == 0)); then
                printf '[[tenants]]\nname = "t%05d"\nkeys = ["sha256:%s"]\nrpm = %s\n\n' "$i" "$h" "$3"
            else
                printf '[[tenants]]\nname = "t%05d"\nkeys = ["sha256:%s"]\nrpm = 600\n\n' "$i" "$h"
            fi
        done
    } >"$1"
}

run() { # label, tenants, changes
    local label=$1 n=$2 changes=$3
    local inst=pause-$$-$label
    rm -f "$OUT/tenants.json"
    gen "$OUT/$label.toml" "$n" 600
    "$SHARDGATE_BIN" --config "$OUT/$label.toml" --instance "$inst" >"$OUT/$label.engine.log" 2>&1 &
    local engine=$!
    for _ in $(seq 1 200); do
        grep -q "listening on" "$OUT/$label.engine.log" && break
        sleep 0.1
    done
    grep -q "listening on" "$OUT/$label.engine.log" || die "engine did not start: $OUT/$label.engine.log"
    "$CTL_BIN" --instance "$inst" tenants add store-t >/dev/null
    sleep 1
    wrk -t1 -c16 -d"${DURATION}s" --latency -s "$REPO/bench/peers/post.lua" \
        "http://127.0.0.1:$PORT/v1/chat/completions" >"$OUT/$label.wrk" 2>&1 &
    local load=$!
    local step=$((DURATION * 1000 / (changes + 1)))
    for ((c = 1; c <= changes; c++)); do
        sleep "$(awk -v ms="$step" 'BEGIN { printf "%.3f", ms / 1000 }')"
        if [[ $MODE == store ]]; then
            "$CTL_BIN" --instance "$inst" keys create store-t >/dev/null
        else
            gen "$OUT/$label.next.toml" "$n" $((600 + c))
            "$CTL_BIN" --instance "$inst" apply "$OUT/$label.next.toml" >/dev/null
        fi
    done
    wait "$load"
    kill "$engine" 2>/dev/null || true
    wait "$engine" 2>/dev/null || true
    local p99 tail pauses
    p99=$(awk '$1 == "99%" { print $2 }' "$OUT/$label.wrk")
    tail=$(grep -o 'tail_us: .*' "$OUT/$label.wrk" || true)
    pauses=$(grep -o 'paused_us=[0-9]*' "$OUT/$label.engine.log" | cut -d= -f2 | sort -n | tr '\n' ' ')
    cpu=$(grep -o 'paused_cpu_us=[0-9]*' "$OUT/$label.engine.log" | cut -d= -f2 | sort -n | tr '\n' ' ')
    printf '%-12s tenants %-6s changes %s  p99 %-9s %s  shard pauses (us): %s  their CPU (us): %s\n' \
        "$label" "$n" "$changes" "$p99" "$tail" "${pauses:-none}" "${cpu:-none}" | tee -a "$OUT/summary.txt"
}

for n in $TENANTS; do
    run "quiet-$n" "$n" 0
    run "$MODE-$n" "$n" "$CHANGES"
done
echo "results: $OUT/summary.txt"
