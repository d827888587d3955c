#!/usr/bin/env bash
# What `[fleet]` costs an instance: CPU per request on the full LLM path with and without it
# (same binary, interleaved rounds), and the traffic to Redis per 1,000 requests.
#
# Method: the mock upstream (bench/peers/upstream-nginx.conf, nginx) on core 1; shardgate on
# core 0 with bench/peers/shardgate-full.toml, then with bench/peers/shardgate-full-fleet.toml
# (the same, plus [fleet] on a redis-server this script starts on port 16379); each run
# `wrk -t1 -c8 -d DURATION` posting bench/peers/post.lua. Reported per run: requests, the
# engine's CPU time (utime + stime from /proc, all its threads: shards, builder, fleet agent)
# per request, and for the fleet runs the round trips Redis counted (INFO commandstats: script
# calls and MULTI/EXEC transactions, the agent's syncs and the usage pushes) per 1,000 requests. RPM overrides the tenant's rpm in both configs (default: the configs' 1e9, a
# lease of a million units; a lower one makes the shards take credit more often).
#
# Usage: bench/scripts/fleet-cost.sh [OUT_DIR]
# Environment: ROUNDS [3]  DURATION [10s]  RPM []  SHARDGATE_BIN [<repo>/target/release/shardgate]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
RPM=${RPM:-}
SHARDGATE_BIN=${SHARDGATE_BIN:-$REPO/target/release/shardgate}
OUT=${1:-${OUT:-/tmp/shardgate-fleet-cost-$(date +%Y%m%d-%H%M%S)}}
REDIS_PORT=16379

die() { echo "fleet-cost: $*" >&2; exit 1; }
for tool in wrk nginx taskset redis-server redis-cli; do
    command -v "$tool" >/dev/null || die "$tool missing"
done
[[ -x $SHARDGATE_BIN ]] || die "$SHARDGATE_BIN missing (cargo build --release -p shardgate-engine)"
mkdir -p "$OUT/upstream"

cleanup() {
    [[ -n ${ENGINE:-} ]] && kill "$ENGINE" 2>/dev/null || true
    [[ -n ${UP:-} ]] && kill "$UP" 2>/dev/null || true
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
}
trap cleanup EXIT

redis-server --port "$REDIS_PORT" --save '' --appendonly no --daemonize yes \
    --logfile "$OUT/redis.log" >/dev/null
taskset -c 1 nginx -p "$OUT/upstream" -e "$OUT/upstream/error.log" \
    -c "$REPO/bench/peers/upstream-nginx.conf" >"$OUT/upstream.log" 2>&1 &
UP=$!
sleep 1

for cfg in shardgate-full shardgate-full-fleet; do
    sed -e '/^access_log/d' "$REPO/bench/peers/$cfg.toml" >"$OUT/$cfg.toml"
    [[ -n $RPM ]] && sed -i "s/^rpm = .*/rpm = $RPM/" "$OUT/$cfg.toml"
done

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

printf 'config\tround\trequests\tcpu_us_per_request\tredis_calls_per_1000\n' | tee "$OUT/raw.tsv"
for ((r = 1; r <= ROUNDS; r++)); do
    for cfg in shardgate-full shardgate-full-fleet; do
        taskset -c 0 "$SHARDGATE_BIN" --config "$OUT/$cfg.toml" >"$OUT/$cfg.$r.log" 2>&1 &
        ENGINE=$!
        for _ in $(seq 1 100); do
            grep -q "listening on" "$OUT/$cfg.$r.log" && break
            sleep 0.1
        done
        wrk -t1 -c8 -d2s -s "$REPO/bench/peers/post.lua" http://127.0.0.1:18083/v1/chat/completions >/dev/null
        redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
        T0=$(cpu_ticks "$ENGINE")
        wrk -t1 -c8 -d"$DURATION" -s "$REPO/bench/peers/post.lua" \
            http://127.0.0.1:18083/v1/chat/completions >"$OUT/$cfg.$r.wrk" 2>&1
        T1=$(cpu_ticks "$ENGINE")
        CALLS=$(redis-cli -p "$REDIS_PORT" info commandstats |
            awk -F'[=,:]' '/^cmdstat_(eval|evalsha|exec):/ { n += $3 } END { print n + 0 }')
        kill "$ENGINE"; wait "$ENGINE" 2>/dev/null || true
        ENGINE=
        REQS=$(awk '/requests in/ { print $1 }' "$OUT/$cfg.$r.wrk")
        HZ=$(getconf CLK_TCK)
        awk -v c="$cfg" -v r="$r" -v n="$REQS" -v t=$((T1 - T0)) -v hz="$HZ" -v calls="$CALLS" \
            'BEGIN { printf "%s\t%d\t%d\t%.2f\t%.2f\n", c, r, n, t * 1e6 / hz / n, calls * 1000 / n }' |
            tee -a "$OUT/raw.tsv"
    done
done
echo "results: $OUT/raw.tsv"
