#!/usr/bin/env bash
# Time from `shardgate-ctl apply` to every shard on the new version, for a config with ROUTES
# routes (10,000 by default), while the engine serves load.
#
# Method: start shardgate (all cores) on a small bootstrap config with the built-in mock model,
# keep it busy with `shardgate-bench load` (CONNS keep-alive connections, GET /v1/models),
# then apply two generated configs of ROUTES routes each in turn, RUNS times. Each apply
# changes every route's target, so each one is a full swap. Reported per run:
#   publish_ms  ctl's own figure: from the first frame published to the last shard reporting
#               the new version (each shard decodes, validates and builds its route table)
#   ctl_ms      the whole ctl process: read, validate (resolve), diff, publish, wait
# and the medians. The load's failed requests must stay 0.
#
# Usage: bench/scripts/apply-time.sh [OUT_DIR]
# Environment: ROUTES [10000]  RUNS [7]  CONNS [16]
#   SHARDGATE_BIN [<repo>/target/release/shardgate]  CTL_BIN [<repo>/target/release/shardgate-ctl]
#   BENCH_BIN [<repo>/target/release/shardgate-bench]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
ROUTES=${ROUTES:-10000}
RUNS=${RUNS:-7}
CONNS=${CONNS:-16}
SHARDGATE_BIN=${SHARDGATE_BIN:-$REPO/target/release/shardgate}
CTL_BIN=${CTL_BIN:-$REPO/target/release/shardgate-ctl}
BENCH_BIN=${BENCH_BIN:-$REPO/target/release/shardgate-bench}
OUT=${1:-${OUT:-/tmp/shardgate-apply-time-$(date +%Y%m%d-%H%M%S)}}
INSTANCE=apply-bench-$$
PORT=18095

die() { echo "apply-time: $*" >&2; exit 1; }
for b in "$SHARDGATE_BIN" "$CTL_BIN" "$BENCH_BIN"; do
    [[ -x $b ]] || die "$b missing (cargo build --release -p shardgate-engine -p shardgate-ctl -p shardgate-bench)"
done
[[ $ROUTES =~ ^[0-9]+$ && $RUNS =~ ^[0-9]+$ ]] || die "ROUTES and RUNS must be whole numbers"
mkdir -p "$OUT"

gen() { # file, upstream for every route
    {
        printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_listen = "off"\nauth = "none"\n\n' "$PORT"
        printf '[[upstreams]]\nname = "demo"\nprovider = "mock"\n\n'
        printf '[[upstreams]]\nname = "demo2"\nprovider = "mock"\n\n'
        printf '[[routes]]\npath_prefix = "/"\nupstream = "%s"\n\n' "$2"
        for ((i = 0; i < ROUTES; i++)); do
            printf '[[routes]]\npath_prefix = "/tenant-%05d/v1/"\nupstream = "%s"\n\n' "$i" "$2"
        done
    } >"$1"
}
gen "$OUT/a.toml" demo
gen "$OUT/b.toml" demo2
printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_listen = "off"\nauth = "none"\n\n[[upstreams]]\nname = "demo"\nprovider = "mock"\n\n[[routes]]\npath_prefix = "/"\nupstream = "demo"\n' "$PORT" >"$OUT/boot.toml"

"$SHARDGATE_BIN" --config "$OUT/boot.toml" --instance "$INSTANCE" >"$OUT/engine.log" 2>&1 &
ENGINE=$!
trap 'kill $ENGINE 2>/dev/null || true; kill ${LOAD:-} 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    grep -q "listening on" "$OUT/engine.log" && break
    sleep 0.1
done
grep -q "listening on" "$OUT/engine.log" || die "engine did not start: $(cat "$OUT/engine.log")"

DUR=$(( RUNS * 3 + 10 ))
"$BENCH_BIN" load "http://127.0.0.1:$PORT/v1/models" --connections "$CONNS" \
    --duration "${DUR}s" --json >"$OUT/load.json" 2>"$OUT/load.err" &
LOAD=$!
sleep 2

printf 'run\tconfig\tbytes\tpublish_ms\tctl_ms\n' >"$OUT/raw.tsv"
for ((r = 1; r <= RUNS; r++)); do
    f=$OUT/a.toml; (( r % 2 == 0 )) && f=$OUT/b.toml
    t0=$(date +%s%N)
    "$CTL_BIN" --instance "$INSTANCE" apply "$f" >"$OUT/apply-$r.txt" 2>&1 || die "apply $r failed: $(cat "$OUT/apply-$r.txt")"
    t1=$(date +%s%N)
    ms=$(sed -n 's/^applied version [0-9]* to [0-9]* shards* in \([0-9]*\) ms$/\1/p' "$OUT/apply-$r.txt")
    printf '%s\t%s\t%s\t%s\t%s\n' "$r" "$(basename "$f")" "$(stat -c %s "$f")" "$ms" $(( (t1 - t0) / 1000000 )) >>"$OUT/raw.tsv"
    sleep 1
done
wait "$LOAD" || true

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
{
    echo "routes: $ROUTES  config bytes: $(stat -c %s "$OUT/a.toml")  shards: $(grep -o '([0-9]* shards*' "$OUT/engine.log" | tr -d '(')"
    echo "publish → every shard on the new version, median ms: $(tail -n +2 "$OUT/raw.tsv" | cut -f4 | median)"
    echo "whole ctl apply (validate, diff, publish, wait), median ms: $(tail -n +2 "$OUT/raw.tsv" | cut -f5 | median)"
    echo "load during the applies: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); l=d.get("latency_us",{}); e=d.get("errors",{}); print("requests", d.get("requests"), "failed", sum(e.values()), "p99_us", l.get("p99"), "max_us", l.get("max"))' "$OUT/load.json" 2>/dev/null || echo "see $OUT/load.json")"
} | tee "$OUT/summary.txt"
