#!/usr/bin/env bash
# Idle memory of shardgate (or nginx) and its memory cost per idle keep-alive connection.
#
# Starts shardgate with two shards (bench/peers/shardgate-2core.toml, 127.0.0.1:18084), waits for
# GET /health/liveness = 200, reports RSS (VmRSS summed over its processes), then opens CONNS idle
# keep-alive connections (bench/scripts/idle_conns.py: one complete GET /health/liveness each,
# answer read, connection kept open), reports RSS again and (RSS_after - RSS_idle) / CONNS.
# RSS is user-space memory only: kernel socket buffers are not in it; /proc/net/sockstat and the
# kernel's unreclaimable slab are recorded before and after (loopback: they cover both ends).
#
# More connections than one process may hold (the open-file hard limit, 20,000 in some sandboxes):
# INSTANCES=N runs N server processes on the one port (SO_REUSEPORT: the kernel spreads the
# connections over them) and RSS is summed over all of them; the clients are split over CLIENTS
# processes, client k connecting from its own loopback addresses (127.0.0.2, 127.0.0.3, ...).
#   CONNS=50000 INSTANCES=3 bench/scripts/idle-rss.sh /tmp/sg50k
#   CONNS=50000 INSTANCES=3 PEER=nginx bench/scripts/idle-rss.sh /tmp/nginx50k
#
# Usage: bench/scripts/idle-rss.sh [OUT_DIR]
# Environment: SHARDGATE_BIN [<repo>/target/release/shardgate]  CONNS [10000]
#              SETTLE [1] (seconds to wait before each RSS reading)
#              PEER [shardgate] or nginx (NGINX_BIN [nginx]): nginx answers GET /health/liveness
#                   itself (return 200), worker_rlimit_nofile and worker_connections 20000
#              INSTANCES [1] server processes on the port. shardgate: 1 runs CONFIG as it is (two
#                   shards); N > 1 runs N engines with cores = 1, instance idle-rss-<i> and no admin
#                   listener, on alternate CPUs. nginx: worker_processes N, listen ... reuseport.
#              CLIENTS [CONNS / 18000, rounded up] idle_conns.py processes
#              SOURCE_BASE [2] client k connects from 127.0.0.(SOURCE_BASE + k) (or a few addresses
#                   from there on): runs back to back take new bases, as the last run's client ports
#                   stay in TIME_WAIT for a minute
#              IDLE_TIMEOUT_S [3600] the server's keep-alive idle timeout for the run (shardgate
#                   idle_timeout_ms, nginx keepalive_timeout): nothing may close during the run
# Exits 0 with a SKIP line when the server binary is missing.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PEERS=$REPO/bench/peers
SHARDGATE_BIN=${SHARDGATE_BIN:-$REPO/target/release/shardgate}
NGINX_BIN=${NGINX_BIN:-nginx}
CONFIG=${CONFIG:-$PEERS/shardgate-2core.toml}
PEER=${PEER:-shardgate}
PORT=18084
CONNS=${CONNS:-10000}
SETTLE=${SETTLE:-1}
INSTANCES=${INSTANCES:-1}
CLIENTS=${CLIENTS:-$(( (CONNS + 17999) / 18000 ))}
IDLE_TIMEOUT_S=${IDLE_TIMEOUT_S:-3600}
SOURCE_BASE=${SOURCE_BASE:-2}
OUT=${1:-${OUT:-/tmp/$PEER-idle-rss-$(date +%Y%m%d-%H%M%S)}}

die() { echo "idle-rss: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

[[ $CONNS =~ ^[0-9]+$ ]] && (( CONNS >= 1 && CONNS <= 100000 )) || die "CONNS must be 1..100000"
[[ $INSTANCES =~ ^[0-9]+$ ]] && (( INSTANCES >= 1 && INSTANCES <= 16 )) || die "INSTANCES must be 1..16"
[[ $CLIENTS =~ ^[0-9]+$ ]] && (( CLIENTS >= 1 && CLIENTS <= 16 )) || die "CLIENTS must be 1..16"
[[ $IDLE_TIMEOUT_S =~ ^[0-9]+$ ]] && (( IDLE_TIMEOUT_S >= 1 && IDLE_TIMEOUT_S <= 86400 )) \
    || die "IDLE_TIMEOUT_S must be 1..86400"
case $PEER in
    shardgate)
        if [[ ! -x $SHARDGATE_BIN ]]; then
            echo "SKIP idle-rss: $SHARDGATE_BIN not found or not executable (cargo build --release -p shardgate-engine, or set SHARDGATE_BIN)"
            exit 0
        fi
        grep -q "127.0.0.1:$PORT" "$CONFIG" || die "$CONFIG does not listen on 127.0.0.1:$PORT"
        ;;
    nginx)
        if ! command -v "$NGINX_BIN" >/dev/null; then
            echo "SKIP idle-rss: $NGINX_BIN not found (apt-get install nginx-light, or set NGINX_BIN)"
            exit 0
        fi
        ;;
    *) die "PEER must be shardgate or nginx, got $PEER" ;;
esac
command -v curl >/dev/null || die "curl not found"
command -v python3 >/dev/null || die "python3 not found"
[[ -z $(ss -Htln "sport = :$PORT" 2>/dev/null) ]] || die "port $PORT is already in use"

# One descriptor per connection, in each server process and each client, and some more. The
# kernel's spread over INSTANCES is a hash, not exact: leave each process 10% room.
per_server=$(( (CONNS + INSTANCES - 1) / INSTANCES ))
per_client=$(( (CONNS + CLIENTS - 1) / CLIENTS ))
need_server=$(( per_server + per_server / 10 + 256 ))
need_client=$(( per_client + 64 ))
need=$(( need_server > need_client ? need_server : need_client ))
# The soft limit only: nginx's worker_rlimit_nofile raises its own up to the hard one.
ulimit -Sn "$need" 2>/dev/null || ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
(( $(ulimit -n) >= need_server )) \
    || die "open-file limit $(ulimit -n) (hard $(ulimit -Hn)) is too low for $per_server connections per server process: raise INSTANCES"
(( $(ulimit -n) >= need_client )) \
    || die "open-file limit $(ulimit -n) (hard $(ulimit -Hn)) is too low for $per_client connections per client: raise CLIENTS"
# Client k binds 127.0.0.(SOURCE_BASE + k*SOURCES) onwards; one address has ~28k ephemeral ports.
SOURCES=$(( per_client / 20000 + 1 ))
[[ $SOURCE_BASE =~ ^[0-9]+$ ]] && (( SOURCE_BASE >= 1 && SOURCE_BASE + CLIENTS * SOURCES <= 255 )) \
    || die "SOURCE_BASE must be 1.. with room for $CLIENTS clients x $SOURCES addresses below 127.0.0.255"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

SERVER_PIDS=()
CLIENT_PIDS=()
CLIENT_FDS=()
cleanup() {
    local p i
    for p in "${CLIENT_PIDS[@]}" "${SERVER_PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
        for i in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The server's processes: the started pids and their children (nginx's workers).
server_procs() {
    local p
    for p in "${SERVER_PIDS[@]}"; do echo "$p"; pgrep -P "$p" 2>/dev/null || true; done
}
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null || true; }
sum_kib() { # FIELD: summed over the server's processes
    local total=0 p v
    for p in $(server_procs); do v=$(status_kib "$p" "$1"); total=$(( total + ${v:-0} )); done
    echo "$total"
}
fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
listeners() { ss -Htln "sport = :$PORT" 2>/dev/null | wc -l; }
established() { ss -Htn state established "sport = :$PORT" 2>/dev/null | wc -l; }
sockstat_tcp() { awk '$1 == "TCP:" {print "inuse", $3, "alloc", $9, "mem", $11}' /proc/net/sockstat; }
sockstat_mem() { awk '$1 == "TCP:" {print $11}' /proc/net/sockstat; }
meminfo_kib() { awk -v k="$1:" '$1 == k {print $2}' /proc/meminfo; }
snapshot() { # NAME: kernel memory and each server process, into OUT
    cat /proc/net/sockstat >"$OUT/sockstat-$1.txt"
    cat /proc/meminfo >"$OUT/meminfo-$1.txt"
    [[ -r /proc/slabinfo ]] && cat /proc/slabinfo >"$OUT/slabinfo-$1.txt" 2>/dev/null || true
    local p
    for p in $(server_procs); do
        echo "$p $(status_kib "$p" VmRSS) $(status_kib "$p" VmHWM) $(fds "$p") $(status_kib "$p" Threads)"
    done >"$OUT/procs-$1.txt"
}

wait_ready() { # LISTENERS: until that many sockets listen on PORT and one answers 200
    local i code
    for i in $(seq 1 100); do
        for p in "${SERVER_PIDS[@]}"; do kill -0 "$p" 2>/dev/null || return 1; done
        if (( $(listeners) >= $1 )); then
            code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$PORT/health/liveness" || true)
            [[ $code == 200 ]] && return 0
        fi
        sleep 0.1
    done
    return 1
}

case $PEER in
shardgate)
    # Every shard must admit all CONNS (connections_max is per shard); nothing may time out.
    RUN_CONFIG="$OUT/shardgate.toml"
    awk -v max="$(( CONNS + 1024 ))" -v idle="$(( IDLE_TIMEOUT_S * 1000 ))" -v one="$(( INSTANCES > 1 ))" '
        /^(connections_max|idle_timeout_ms) *=/ {next}
        one && /^cores *=/ {next}
        {print}
        /^\[server\]/ {print "connections_max = " max; print "idle_timeout_ms = " idle}
        /^\[server\]/ && one {print "cores = 1"}' \
        "$CONFIG" >"$RUN_CONFIG"
    if (( INSTANCES == 1 )); then
        "$SHARDGATE_BIN" --config "$RUN_CONFIG" >"$OUT/shardgate.log" 2>&1 &
        SERVER_PIDS+=("$!")
        expect=$(awk -F' *= *' '$1 == "cores" {print $2}' "$RUN_CONFIG")
        [[ $expect =~ ^[0-9]+$ ]] || expect=1
    else
        ncpu=$(nproc)
        for i in $(seq 0 $(( INSTANCES - 1 ))); do
            # cores = 1 pins the shard to the first allowed CPU: alternate them over the CPUs.
            taskset -c "$(( i % ncpu ))" "$SHARDGATE_BIN" --config "$RUN_CONFIG" \
                --instance "idle-rss-$i" --admin-listen off >"$OUT/shardgate-$i.log" 2>&1 &
            SERVER_PIDS+=("$!")
        done
        expect=$INSTANCES
    fi
    if ! wait_ready "$expect"; then
        tail -n 20 "$OUT"/shardgate*.log >&2
        die "shardgate did not listen ($expect sockets) and answer 200 on /health/liveness within 10 s"
    fi
    VERSION="$SHARDGATE_BIN ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'))  config: $CONFIG, $INSTANCES process(es)"
    ;;
nginx)
    mkdir -p "$OUT/nginx"
    RUN_CONFIG="$OUT/nginx/nginx.conf"
    cat >"$RUN_CONFIG" <<EOF
worker_processes $INSTANCES;
worker_rlimit_nofile 20000;
daemon off;
master_process on;
pid nginx.pid;
error_log error.log warn;
events {
    worker_connections 20000;
}
http {
    access_log off;
    server_tokens off;
    keepalive_requests 1000000000;
    keepalive_timeout ${IDLE_TIMEOUT_S}s;
    client_body_temp_path client_body;
    proxy_temp_path proxy_temp;
    fastcgi_temp_path fastcgi_temp;
    uwsgi_temp_path uwsgi_temp;
    scgi_temp_path scgi_temp;
    server {
        listen 127.0.0.1:$PORT reuseport backlog=4096;
        location / {
            default_type text/plain;
            return 200 "ok\n";
        }
    }
}
EOF
    "$NGINX_BIN" -p "$OUT/nginx" -e "$OUT/nginx/error.log" -c "$RUN_CONFIG" >"$OUT/nginx/stdout.log" 2>&1 &
    SERVER_PIDS+=("$!")
    if ! wait_ready "$INSTANCES"; then
        tail -n 20 "$OUT/nginx/error.log" "$OUT/nginx/stdout.log" >&2
        die "nginx did not listen ($INSTANCES sockets) and answer 200 on /health/liveness within 10 s"
    fi
    VERSION="$("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //')  worker_processes $INSTANCES"
    ;;
esac
sleep "$SETTLE"
rss_idle=$(sum_kib VmRSS)
mem_idle=$(sockstat_mem)
slab_idle=$(meminfo_kib SUnreclaim)
slab_all_idle=$(meminfo_kib Slab)
tcp_idle=$(sockstat_tcp)
snapshot idle
log "$PEER up ($(server_procs | wc -l) processes), idle RSS $rss_idle KiB; TCP $tcp_idle"

# The clients: client k holds its share, from 127.0.0.(SOURCE_BASE + k*SOURCES) onwards, and waits for a
# line on its FIFO before checking which connections are still open.
for k in $(seq 0 $(( CLIENTS - 1 ))); do
    count=$(( CONNS / CLIENTS + (k < CONNS % CLIENTS ? 1 : 0) ))
    rm -f "$OUT/client-$k.in"
    mkfifo "$OUT/client-$k.in"
    python3 "$HERE/idle_conns.py" --port "$PORT" --count "$count" --sources "$SOURCES" \
        --source-first "$(( SOURCE_BASE + k * SOURCES ))" --hold 900 \
        <"$OUT/client-$k.in" >"$OUT/client-$k.out" 2>"$OUT/client-$k.err" &
    CLIENT_PIDS+=("$!")
    exec {fd}>"$OUT/client-$k.in"
    CLIENT_FDS+=("$fd")
done
wait_lines() { # PREFIX SECONDS: until every client printed a line starting with PREFIX
    local i k n
    for i in $(seq 1 $(( $2 * 10 ))); do
        n=0
        for k in $(seq 0 $(( CLIENTS - 1 ))); do
            grep -q "^$1" "$OUT/client-$k.out" 2>/dev/null && n=$(( n + 1 ))
        done
        (( n == CLIENTS )) && return 0
        sleep 0.1
    done
    return 1
}
wait_lines OPEN 330 || { cat "$OUT"/client-*.err >&2; die "not every idle_conns.py gave an OPEN line within 330 s"; }
opened=0; failed=0; non200=0; server_close=0
for k in $(seq 0 $(( CLIENTS - 1 ))); do
    line=$(grep '^OPEN' "$OUT/client-$k.out")
    log "client $k: $line"
    for f in ok failed non200 server_close; do
        v=$(sed -n "s/.* $f=\([0-9]*\).*/\1/p" <<<" $line")
        case $f in
            ok) opened=$(( opened + v )) ;; failed) failed=$(( failed + v )) ;;
            non200) non200=$(( non200 + v )) ;; server_close) server_close=$(( server_close + v )) ;;
        esac
    done
done
sleep "$SETTLE"
rss_after=$(sum_kib VmRSS)
hwm=$(sum_kib VmHWM)
mem_after=$(sockstat_mem)
slab_after=$(meminfo_kib SUnreclaim)
slab_all_after=$(meminfo_kib Slab)
tcp_after=$(sockstat_tcp)
est=$(established)
snapshot conns
for fd in "${CLIENT_FDS[@]}"; do echo done >&"$fd"; done
still=0
if wait_lines STILL_OPEN 60; then
    for k in $(seq 0 $(( CLIENTS - 1 ))); do
        v=$(awk '$1 == "STILL_OPEN" {print $2}' "$OUT/client-$k.out")
        still=$(( still + v ))
    done
else
    still="?"
fi
log "clients: STILL_OPEN $still"

per_conn=$(awk -v a="$rss_after" -v b="$rss_idle" -v n="$CONNS" 'BEGIN {printf "%.0f", (a - b) * 1024 / n}')
kernel_per_conn=$(awk -v a="$mem_after" -v b="$mem_idle" -v n="$CONNS" 'BEGIN {printf "%.0f", (a - b) * 4096 / n}')
slab_per_conn=$(awk -v a="$slab_after" -v b="$slab_idle" -v n="$CONNS" 'BEGIN {printf "%.0f", (a - b) * 1024 / n}')
slab_all_per_conn=$(awk -v a="$slab_all_after" -v b="$slab_all_idle" -v n="$CONNS" 'BEGIN {printf "%.0f", (a - b) * 1024 / n}')
spread=$(join <(sort "$OUT/procs-idle.txt") <(sort "$OUT/procs-conns.txt") \
    | awk '{printf "%s%s: %d conns, %d KiB", sep, $1, $8 - $4, $6; sep = "; "}')
{
    echo "$PEER: $VERSION"
    printf '%-28s %s KiB\n' "idle RSS:" "$rss_idle"
    printf '%-28s %s KiB (peak %s KiB)\n' "RSS with $CONNS conns:" "$rss_after" "$hwm"
    printf '%-28s %s of %s (failed %s, non-200 %s, server_close %s); STILL_OPEN %s after the RSS reading\n' \
        "connections opened ok:" "$opened" "$CONNS" "$failed" "$non200" "$server_close" "$still"
    printf '%-28s %s (server side, at the RSS reading)\n' "established on :$PORT:" "$est"
    printf '%-28s %s bytes  ((RSS_after - RSS_idle) / %s)\n' "per idle connection:" "$per_conn" "$CONNS"
    printf '%-28s %s\n' "per process (pid):" "$spread"
    printf '%-28s idle: %s; with conns: %s  (%s bytes/conn, both ends)\n' "sockstat TCP (mem pages):" \
        "$tcp_idle" "$tcp_after" "$kernel_per_conn"
    printf '%-28s %s -> %s KiB  (%s bytes/conn, both ends; machine-wide, noisy)\n' "SUnreclaim slab:" \
        "$slab_idle" "$slab_after" "$slab_per_conn"
    printf '%-28s %s -> %s KiB  (%s bytes/conn, both ends; machine-wide, noisy)\n' "Slab (all):" \
        "$slab_all_idle" "$slab_all_after" "$slab_all_per_conn"
} | tee "$OUT/idle-rss.txt"
(( opened == CONNS )) || { echo "WARNING: only $opened of $CONNS connections opened; the per-connection figure is not meaningful" >&2; exit 1; }
[[ $still == "$CONNS" ]] || { echo "WARNING: $still of $CONNS connections still open at the end" >&2; exit 1; }
