#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: repeatable for the same
# binary and config whatever else the machine is doing (unlike CPU time on a shared VM).
#
# Method: the mock upstream (bench/peers/upstream-nginx.conf) on core 1; shardgate under
# `valgrind --tool=callgrind --instr-atstart=no` on core 0 with SHARDGATE_DRIVER=epoll (valgrind
# does not run io_uring); wrk -t1 -c8 warms up for WARMUP, then counting is switched on
# (`callgrind_control -i on`) for a DURATION run of bench/peers/post.lua and off again; the
# total Ir divided by the requests wrk completed is the figure. The kernel's share (about half
# of the CPU on this path) is not counted.
#
# Usage: bench/scripts/callgrind-per-request.sh BIN CONFIG [LABEL]
#   CONFIG: a shardgate config listening on 127.0.0.1:18083 with the upstream on :18080
#   (bench/peers/shardgate.toml, bench/peers/shardgate-full.toml, ...). An
#   `access_log = "@ACCESS_LOG@"` line is removed unless ACCESS_LOG=1 (then it logs to OUT).
# Environment: WARMUP [2s]  DURATION [6s]  CONNS [8]  OUT [/tmp/shardgate-callgrind-<time>]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BIN=${1:?usage: callgrind-per-request.sh BIN CONFIG [LABEL]}
CONFIG=${2:?usage: callgrind-per-request.sh BIN CONFIG [LABEL]}
LABEL=${3:-$(basename "$CONFIG" .toml)}
WARMUP=${WARMUP:-2s}
DURATION=${DURATION:-6s}
CONNS=${CONNS:-8}
OUT=${OUT:-/tmp/shardgate-callgrind-$(date +%Y%m%d-%H%M%S)}
URL=http://127.0.0.1:18083/v1/chat/completions

# `shardgate` runs itself again to set mimalloc's options when the environment does not
# (launch::ALLOCATOR_ENV); under valgrind that second start would leave callgrind behind. Set
# them here, as the engine would.
export MIMALLOC_PURGE_DELAY=${MIMALLOC_PURGE_DELAY:-0}

for tool in valgrind callgrind_control wrk nginx taskset; do
    command -v "$tool" >/dev/null || { echo "callgrind-per-request: $tool is required" >&2; exit 1; }
done
mkdir -p "$OUT/upstream"
cleanup() {
    [[ -n ${SG:-} ]] && kill "$SG" 2>/dev/null || true
    [[ -n ${UP:-} ]] && kill "$UP" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

taskset -c 1 nginx -p "$OUT/upstream" -e "$OUT/upstream/error.log" \
    -c "$REPO/bench/peers/upstream-nginx.conf" >"$OUT/upstream.log" 2>&1 &
UP=$!
if [[ ${ACCESS_LOG:-0} == 1 ]]; then
    sed "s|@ACCESS_LOG@|$OUT/access.log|" "$CONFIG" >"$OUT/config.toml"
else
    sed '/^access_log = "@ACCESS_LOG@"/d' "$CONFIG" >"$OUT/config.toml"
fi
SHARDGATE_DRIVER=epoll taskset -c 0 valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$OUT/callgrind.out" "$BIN" --config "$OUT/config.toml" \
    >"$OUT/shardgate.log" 2>&1 &
SG=$!
for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "http://127.0.0.1:18083/health/liveness" 2>/dev/null && break
    sleep 0.1
done
taskset -c 1 wrk -t1 -c"$CONNS" -d"$WARMUP" -s "$REPO/bench/peers/post.lua" "$URL" >/dev/null
callgrind_control -i on "$SG" >/dev/null
taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" -s "$REPO/bench/peers/post.lua" "$URL" >"$OUT/wrk.txt"
callgrind_control -i off "$SG" >/dev/null
callgrind_control -d "$SG" >/dev/null
kill -INT "$SG" 2>/dev/null || true
wait "$SG" 2>/dev/null || true
SG=
requests=$(awk '/requests in/ {print $1}' "$OUT/wrk.txt")
ir=$(cat "$OUT"/callgrind.out* 2>/dev/null | awk '/^totals:/ {s += $2} END {print s + 0}')
[[ ${requests:-0} -gt 0 && $ir -gt 0 ]] || { echo "callgrind-per-request: no figure (see $OUT)" >&2; exit 1; }
printf '%s\t%s\tIr=%s\trequests=%s\tIr/request=%s\n' "$LABEL" "$BIN" "$ir" "$requests" "$(( ir / requests ))"
