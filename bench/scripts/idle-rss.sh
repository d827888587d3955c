#!/usr/bin/env bash
# Idle memory of shardgate and its memory cost per idle keep-alive connection.
#
# Starts shardgate with two shards (bench/peers/shardgate-2core.toml, 127.0.0.1:18084), waits for
# GET /health/liveness = 200, reports RSS (VmRSS summed over its processes), then opens CONNS idle
# keep-alive connections (bench/scripts/idle_conns.py: one complete GET /health/liveness each,
# answer read, connection kept open), reports RSS again and (RSS_after - RSS_idle) / CONNS.
# RSS is user-space memory only: kernel socket buffers are not in it.
#
# Usage: bench/scripts/idle-rss.sh [OUT_DIR]
# Environment: SHARDGATE_BIN [<repo>/target/release/shardgate]  CONNS [10000]
#              SETTLE [1] (seconds to wait before each RSS reading)
# Exits 0 with a SKIP line when the shardgate binary is missing.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PEERS=$REPO/bench/peers
SHARDGATE_BIN=${SHARDGATE_BIN:-$REPO/target/release/shardgate}
CONFIG=${CONFIG:-$PEERS/shardgate-2core.toml}
PORT=18084
CONNS=${CONNS:-10000}
SETTLE=${SETTLE:-1}
OUT=${1:-${OUT:-/tmp/shardgate-idle-rss-$(date +%Y%m%d-%H%M%S)}}

die() { echo "idle-rss: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

[[ $CONNS =~ ^[0-9]+$ ]] && (( CONNS >= 1 && CONNS <= 100000 )) || die "CONNS must be 1..100000"
if [[ ! -x $SHARDGATE_BIN ]]; then
    echo "SKIP idle-rss: $SHARDGATE_BIN not found or not executable (cargo build --release -p shardgate-engine, or set SHARDGATE_BIN)"
    exit 0
fi
command -v curl >/dev/null || die "curl not found"
command -v python3 >/dev/null || die "python3 not found"
grep -q "127.0.0.1:$PORT" "$CONFIG" || die "$CONFIG does not listen on 127.0.0.1:$PORT"
[[ -z $(ss -Htln "sport = :$PORT" 2>/dev/null) ]] || die "port $PORT is already in use"

# Both shardgate (one fd per connection) and the client need CONNS descriptors and some.
need=$(( CONNS + 1024 ))
ulimit -n "$need" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(( $(ulimit -n) >= CONNS + 64 )) || die "open-file limit $(ulimit -n) (hard $(ulimit -Hn)) is too low for $CONNS connections"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

SG_PID=""
PY_PID=""
cleanup() {
    local p i
    for p in $PY_PID $SG_PID; do
        kill -TERM "$p" 2>/dev/null || true
        for i in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rss_kib() { # VmRSS summed over pid and its children
    local total=0 p v
    for p in "$1" $(pgrep -P "$1" 2>/dev/null || true); do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
        total=$(( total + ${v:-0} ))
    done
    echo "$total"
}
threads() { awk '/^Threads:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo '?'; }

# The shards must admit CONNS connections between them (connections_max is per shard).
RUN_CONFIG="$OUT/shardgate.toml"
awk -v max="$(( CONNS + 1024 ))" '{print} /^\[server\]/ {print "connections_max = " max}' "$CONFIG" >"$RUN_CONFIG"
"$SHARDGATE_BIN" --config "$RUN_CONFIG" >"$OUT/shardgate.log" 2>&1 &
SG_PID=$!
ready=""
for i in $(seq 1 100); do
    kill -0 "$SG_PID" 2>/dev/null || break
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$PORT/health/liveness" || true)
    [[ $code == 200 ]] && { ready=1; break; }
    sleep 0.1
done
if [[ -z $ready ]]; then
    tail -n 20 "$OUT/shardgate.log" >&2
    die "shardgate did not answer 200 on /health/liveness within 10 s"
fi
sleep "$SETTLE"
rss_idle=$(rss_kib "$SG_PID")
log "shardgate up (pid $SG_PID, $(threads "$SG_PID") threads), idle RSS $rss_idle KiB"

# One loopback source address has ~28k ephemeral ports: spread larger counts over several.
SOURCES=$(( CONNS / 20000 + 1 ))
coproc PY { exec python3 "$HERE/idle_conns.py" --port "$PORT" --count "$CONNS" --sources "$SOURCES" --hold 600; }
PY_PID=$PY_PID
line=""
read -r -t 330 -u "${PY[0]}" line || die "idle_conns.py gave no OPEN line within 330 s"
log "client: $line"
[[ $line == OPEN* ]] || die "unexpected client output: $line"
opened=$(sed -n 's/.*ok=\([0-9]*\).*/\1/p' <<<"$line")
sleep "$SETTLE"
rss_after=$(rss_kib "$SG_PID")
hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$SG_PID/status")
echo done >&"${PY[1]}"
still=""
read -r -t 60 -u "${PY[0]}" still || true
log "client: ${still:-no STILL_OPEN line}"

per_conn=$(awk -v a="$rss_after" -v b="$rss_idle" -v n="$CONNS" 'BEGIN {printf "%.0f", (a - b) * 1024 / n}')
{
    echo "shardgate: $SHARDGATE_BIN ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'))  config: $CONFIG"
    printf '%-28s %s KiB\n' "idle RSS:" "$rss_idle"
    printf '%-28s %s KiB (peak %s KiB)\n' "RSS with $CONNS conns:" "$rss_after" "$hwm"
    printf '%-28s %s of %s; %s after the RSS reading\n' "connections opened ok:" "${opened:-?}" "$CONNS" "${still:-STILL_OPEN ?}"
    printf '%-28s %s bytes  ((RSS_after - RSS_idle) / %s)\n' "per idle connection:" "$per_conn" "$CONNS"
} | tee "$OUT/idle-rss.txt"
[[ ${opened:-0} -eq $CONNS ]] || { echo "WARNING: only ${opened:-0} of $CONNS connections opened; the per-connection figure is not meaningful" >&2; exit 1; }
