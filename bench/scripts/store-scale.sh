#!/usr/bin/env bash
# The tenant store at the scale of a large organisation: TENANTS tenants and KEYS keys in the
# store. Measures the engine's memory per key and what a change costs the shards under load.
#
# Method: a store file of TENANTS tenants (rpm 600 each) and KEYS keys spread evenly over them
# (their hashes are made up: only the load's key is used) is written, and shardgate starts on
# CORES shards (2) with the built-in mock model and one config tenant for the load (key
# sk-demo). Reported:
#   - the engine's RSS once started, against a run with an empty store: the difference over the
#     keys is the memory per key (keys, their tenants, the shards' per-tenant tables);
#   - wrk -t1 -c16 for DURATION s posting bench/peers/post.lua, with CHANGES `shardgate-ctl keys
#     create` made during it: the load's p99, p99.9 and max, and each shard's pause per change
#     (`paused_us` in the "config applied" log lines), and ctl's own time per change;
#   - before the load, IDLE_CHANGES `keys create` with nothing else running: ctl's time, from
#     its start to every shard running the change; and for every change, the builder's time
#     from reading it to its answer (the "tenant store: ... in N us" log lines).
#
# Usage: bench/scripts/store-scale.sh [OUT_DIR]
# Environment: TENANTS [10000]  KEYS [100000]  CHANGES [3]  IDLE_CHANGES [5]  DURATION [12]  CORES [2]
#   SHARDGATE_BIN [<repo>/target/release/shardgate]  CTL_BIN [<repo>/target/release/shardgate-ctl]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TENANTS=${TENANTS:-10000}
KEYS=${KEYS:-100000}
CHANGES=${CHANGES:-3}
IDLE_CHANGES=${IDLE_CHANGES:-5}
DURATION=${DURATION:-12}
CORES=${CORES:-2}
SHARDGATE_BIN=${SHARDGATE_BIN:-$REPO/target/release/shardgate}
CTL_BIN=${CTL_BIN:-$REPO/target/release/shardgate-ctl}
OUT=${1:-${OUT:-/tmp/shardgate-store-scale-$(date +%Y%m%d-%H%M%S)}}
PORT=18098

die() { echo "store-scale: $*" >&2; exit 1; }
for b in "$SHARDGATE_BIN" "$CTL_BIN"; do
    [[ -x $b ]] || die "$b missing (cargo build --release -p shardgate-engine -p shardgate-ctl)"
done
command -v wrk >/dev/null || die "wrk missing (apt-get install wrk)"
((TENANTS > 0)) || die "TENANTS must be at least 1"
mkdir -p "$OUT"
DEMO=$(printf %s sk-demo | sha256sum | cut -d' ' -f1)

store() { # file, tenants, keys
    {
        printf '{"format":1,"version":1,"tenants":{'
        for ((i = 0; i < $2; i++)); do
            ((i > 0)) && printf ','
            printf '"t%05d":{"rpm":600,"created_unix_ms":0}' "$i"
        done
        printf '},"keys":{'
        for ((k = 0; k < $3; k++)); do
            ((k > 0)) && printf ','
            printf '"key_%012x":{"tenant":"t%05d","prefix":"sk-sg-0000","sha256":"%064x","created_unix_ms":0}' \
                "$k" "$((k % $2))" "$((k + 1))"
        done
        printf '}}\n'
    } >"$1"
}

config() { # file, store
    printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_listen = "off"\nauth = "keys"\ncores = %s\n' \
        "$PORT" "$CORES" >"$1"
    printf 'tenant_store = "%s"\n\n[[upstreams]]\nname = "demo"\nprovider = "mock"\n\n' "$2" >>"$1"
    printf '[[routes]]\npath_prefix = "/"\nupstream = "demo"\n\n' >>"$1"
    printf '[[tenants]]\nname = "load"\nkeys = ["sha256:%s"]\n' "$DEMO" >>"$1"
}

start() { # label -> sets ENGINE, INST
    INST=scale-$$-$1
    "$SHARDGATE_BIN" --config "$OUT/$1.toml" --instance "$INST" >"$OUT/$1.engine.log" 2>&1 &
    ENGINE=$!
    for _ in $(seq 1 600); do
        grep -q "listening on" "$OUT/$1.engine.log" && return
        sleep 0.1
    done
    die "engine did not start: $OUT/$1.engine.log"
}

rss_kib() { awk '/VmRSS/ { print $2 }' "/proc/$1/status"; }

echo "writing a store of $TENANTS tenants and $KEYS keys"
store "$OUT/empty.json" 1 0
store "$OUT/big.json" "$TENANTS" "$KEYS"
config "$OUT/empty.toml" "$OUT/empty.json"
config "$OUT/big.toml" "$OUT/big.json"
ls -l "$OUT/big.json" | awk '{ printf "store file: %d bytes\n", $5 }' | tee "$OUT/summary.txt"

start empty
sleep 1
EMPTY_RSS=$(rss_kib "$ENGINE")
kill "$ENGINE"; wait "$ENGINE" 2>/dev/null || true

STARTED=$(date +%s%N)
start big
UP_MS=$(( ($(date +%s%N) - STARTED) / 1000000 ))
sleep 1
BIG_RSS=$(rss_kib "$ENGINE")
trap 'kill $ENGINE 2>/dev/null || true' EXIT
awk -v e="$EMPTY_RSS" -v b="$BIG_RSS" -v k="$KEYS" -v up="$UP_MS" 'BEGIN {
    printf "RSS empty store %d KiB, big store %d KiB: %.0f bytes per key (tenants included); start-up %d ms\n",
        e, b, (b - e) * 1024 / k, up }' | tee -a "$OUT/summary.txt"

# Changes with no load: ctl's time, from its start to every shard running the change.
for ((c = 1; c <= IDLE_CHANGES; c++)); do
    T0=$(date +%s%N)
    "$CTL_BIN" --instance "$INST" keys create "t$(printf %05d $((c % TENANTS)))" >/dev/null
    echo "idle change $c: ctl took $(( ($(date +%s%N) - T0) / 1000000 )) ms" | tee -a "$OUT/summary.txt"
    sleep 0.2
done

wrk -t1 -c16 -d"${DURATION}s" --latency -s "$REPO/bench/peers/post.lua" \
    "http://127.0.0.1:$PORT/v1/chat/completions" >"$OUT/wrk.txt" 2>&1 &
LOAD=$!
STEP=$((DURATION * 1000 / (CHANGES + 1)))
for ((c = 1; c <= CHANGES; c++)); do
    sleep "$(awk -v ms="$STEP" 'BEGIN { printf "%.3f", ms / 1000 }')"
    T0=$(date +%s%N)
    "$CTL_BIN" --instance "$INST" keys create t00000 >/dev/null
    echo "change $c: ctl took $(( ($(date +%s%N) - T0) / 1000000 )) ms" | tee -a "$OUT/summary.txt"
done
wait "$LOAD"
P99=$(awk '$1 == "99%" { print $2 }' "$OUT/wrk.txt")
TAIL=$(grep -o 'tail_us: .*' "$OUT/wrk.txt" || true)
PAUSES=$(grep -o 'paused_us=[0-9]*' "$OUT/big.engine.log" | cut -d= -f2 | sort -n | tr '\n' ' ')
MADE=$( (grep -o 'built again) in [0-9]* us' "$OUT/big.engine.log" || true) | awk '{ print $4 }' | sort -n | tr '\n' ' ')
echo "load p99 $P99 $TAIL; shard pauses (us): $PAUSES" | tee -a "$OUT/summary.txt"
echo "builder per change, from the change read to its answer (us): $MADE" | tee -a "$OUT/summary.txt"
echo "results: $OUT/summary.txt"
