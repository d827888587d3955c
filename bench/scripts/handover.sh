#!/usr/bin/env bash
# Requests lost across an upgrade and across a drain, side by side with nginx and HAProxy
# (issue 19; docs/benchmarks.md §18).
#
#   bench/scripts/handover.sh [SHARDGATE_BIN]
#
# Each proxy runs 2 workers (shardgate `cores = 2`, nginx `worker_processes 2`, HAProxy
# `nbthread 2`) in front of nginx answering a fixed chat completion; the client (2 threads, CONNS
# connections) posts the README's chat request for DURATION seconds, keep-alive or with
# `Connection: close` on every request. The client is `shardgate-bench load` (CLIENT=bench, the
# default: it tells a refused connect from a failed write) or wrk (CLIENT=wrk: wrk counts a
# refused connect as a write error). Three seconds in:
# - upgrade: shardgate starts a second instance on the same port and SIGTERMs the first 2 s
#   later; nginx gets `-s reload` (SIGHUP); HAProxy (master-worker, `expose-fd listeners`)
#   gets SIGUSR2, its seamless reload.
# - drain: the lone proxy is stopped gracefully: shardgate SIGTERM, nginx `-s quit` (SIGQUIT),
#   HAProxy SIGUSR1 (soft-stop). New connections are refused once it stops listening: those are
#   connect errors, not lost requests.
# - apply (shardgate only; for nginx and HAProxy a config change is their reload, the upgrade
#   case): three `shardgate-ctl apply` of a changed config, a second apart.
# Lost requests are read, write and timeout errors and non-2xx answers, per run.
#
# Environment: ROUNDS (3), DURATION (10), CONNS (64), PEERS ("shardgate nginx haproxy"),
# CASES ("upgrade drain"), MODES ("keepalive close"), CLIENT (bench), BENCH_BIN
# (target/release/shardgate-bench). Needs nginx, haproxy, and wrk for CLIENT=wrk.
# net.ipv4.tcp_migrate_req is set to 1 when it can be (shardgate's upgrades need it).
set -euo pipefail
cd "$(dirname "$0")/../.."
source bench/scripts/common.sh

BIN=${1:-target/release/shardgate}
BENCH_BIN=${BENCH_BIN:-target/release/shardgate-bench}
CLIENT=${CLIENT:-bench}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
PEERS=${PEERS:-shardgate nginx haproxy}
CASES=${CASES:-upgrade drain apply}
CTL_BIN=$(dirname "$BIN")/shardgate-ctl
MODES=${MODES:-keepalive close}
PORT=18090
UP_PORT=18080
for tool in wrk nginx haproxy; do
    command -v "$tool" >/dev/null || { echo "$tool is required (apt-get install wrk nginx-light haproxy)" >&2; exit 1; }
done
[[ -x $BIN ]] || { echo "no $BIN: cargo build --release first" >&2; exit 1; }
[[ $CLIENT == wrk || -x $BENCH_BIN ]] || { echo "no $BENCH_BIN: cargo build --release first" >&2; exit 1; }
BODY='{"model":"demo","messages":[{"role":"user","content":"Hello World!"}]}' 
if [[ $(cat /proc/sys/net/ipv4/tcp_migrate_req 2>/dev/null) != 1 ]]; then
    echo 1 >/proc/sys/net/ipv4/tcp_migrate_req 2>/dev/null \
        || echo "warning: net.ipv4.tcp_migrate_req is not 1: shardgate's upgrades reset queued connections" >&2
fi

RUN=$(mktemp -d /tmp/shardgate-handover.XXXXXX)
STARTED_PIDS=()
cleanup() {
    for p in "${STARTED_PIDS[@]}"; do stop_pid "$p"; done
    pkill -KILL -f "$RUN/" 2>/dev/null || true
    rm -rf "$RUN"
}
trap cleanup EXIT

# The upstream: nginx with a fixed answer.
mkdir -p "$RUN/upstream"
nginx -p "$RUN/upstream" -e "$RUN/upstream/error.log" -c "$PWD/bench/peers/upstream-nginx.conf" &
STARTED_PIDS+=($!)
wait_port "$UP_PORT" || { echo "upstream did not start" >&2; exit 1; }

shardgate_config() { # instance admin_port
    cat <<EOF
[server]
listen = "127.0.0.1:$PORT"
cores = 2
auth = "none"
instance = "$1"
admin_listen = "127.0.0.1:$2"
drain_timeout_ms = 10000

[[upstreams]]
name = "rig"
endpoints = ["http://127.0.0.1:$UP_PORT"]

[[routes]]
path_prefix = "/"
upstream = "rig"
EOF
}
shardgate_config blue 19911 >"$RUN/blue.toml"
shardgate_config green 19912 >"$RUN/green.toml"

cat >"$RUN/nginx.conf" <<EOF
worker_processes 2;
daemon off;
master_process on;
pid $RUN/nginx.pid;
error_log $RUN/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
    client_body_temp_path $RUN/cb; proxy_temp_path $RUN/pt; fastcgi_temp_path $RUN/ft;
    uwsgi_temp_path $RUN/ut; scgi_temp_path $RUN/st;
    upstream rig { server 127.0.0.1:$UP_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:$PORT reuseport;
        location / { proxy_pass http://rig; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF

cat >"$RUN/haproxy.cfg" <<EOF
global
    nbthread 2
    maxconn 4096
    stats socket $RUN/haproxy.sock mode 600 expose-fd listeners level user
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-request 30s
    timeout http-keep-alive 300s
frontend fe
    bind 127.0.0.1:$PORT
    default_backend rig
backend rig
    server s1 127.0.0.1:$UP_PORT
EOF

# Starts PEER; prints its pid.
start_peer() {
    case $1 in
        shardgate) "$BIN" --config "$RUN/blue.toml" >"$RUN/blue.log" 2>&1 & ;;
        nginx) nginx -p "$RUN" -c "$RUN/nginx.conf" >"$RUN/nginx.out" 2>&1 & ;;
        haproxy) haproxy -W -db -f "$RUN/haproxy.cfg" >"$RUN/haproxy.log" 2>&1 & ;;
    esac
    echo $!
}

# The change, 3 s into the run.
change() { # peer case pid
    local peer=$1 kase=$2 pid=$3 green
    case $peer/$kase in
        shardgate/upgrade)
            "$BIN" --config "$RUN/green.toml" >"$RUN/green.log" 2>&1 &
            green=$!
            STARTED_PIDS+=("$green")
            sleep 2
            kill -TERM "$pid"
            echo "$green" >"$RUN/next.pid" ;;
        shardgate/drain) kill -TERM "$pid" ;;
        shardgate/apply)
            for t in 2000 3000 4000; do
                sed "s/^drain_timeout_ms = .*/&\nheader_timeout_ms = $t/" "$RUN/blue.toml" >"$RUN/apply.toml"
                "$CTL_BIN" --instance blue apply "$RUN/apply.toml" >"$RUN/apply.log" 2>&1 \
                    || { echo "apply failed:" >&2; cat "$RUN/apply.log" >&2; }
                sleep 1
            done ;;
        nginx/upgrade) kill -HUP "$pid" ;;
        nginx/drain) kill -QUIT "$pid" ;;
        haproxy/upgrade) kill -USR2 "$pid" ;;
        haproxy/drain) kill -USR1 "$pid" ;;
    esac
}

# The client's counts: requests connect read write timeout non2xx.
client_counts() {
    if [[ $CLIENT == wrk ]]; then
        awk '
            /requests in/ { req = $1 }
            /Socket errors:/ { gsub(",", ""); c = $4; r = $6; w = $8; t = $10 }
            /Non-2xx or 3xx responses:/ { n = $5 }
            END { printf "%d %d %d %d %d %d\n", req, c, r, w, t, n }' "$1"
    else
        python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
e = r["errors"]
print(r["requests"], e["connect"], e["read"], e["write"], e["timeout"], e["status_4xx"] + e["status_5xx"])
' "$1"
    fi
}

printf '%-10s %-8s %-10s %5s %9s %8s %5s %6s %8s %7s %5s\n' \
    proxy case mode round requests connect read write timeout non2xx lost
for peer in $PEERS; do
    for kase in $CASES; do
        [[ $kase == apply && $peer != shardgate ]] && continue
        for mode in $MODES; do
            for round in $(seq 1 "$ROUNDS"); do
                rm -f "$RUN/next.pid"
                pid=$(start_peer "$peer")
                STARTED_PIDS+=("$pid")
                wait_port "$PORT" || { echo "$peer did not start" >&2; cat "$RUN"/*.log >&2 || true; exit 1; }
                sleep 0.5
                hdr=()
                [[ $mode == close ]] && hdr=(-H "Connection: close")
                url="http://127.0.0.1:$PORT/v1/chat/completions"
                if [[ $CLIENT == wrk ]]; then
                    wrk -t2 -c"$CONNS" -d"${DURATION}s" -s bench/peers/post.lua "${hdr[@]}" \
                        "$url" >"$RUN/client.out" 2>&1 &
                else
                    "$BENCH_BIN" load "$url" -t2 -c"$CONNS" -d"${DURATION}s" --json --body "$BODY" \
                        -H 'Content-Type: application/json' -H 'Authorization: Bearer sk-demo' \
                        "${hdr[@]}" >"$RUN/client.out" 2>"$RUN/client.err" &
                fi
                client_pid=$!
                sleep 3
                change "$peer" "$kase" "$pid"
                wait "$client_pid" || true
                read -r req c r w t n < <(client_counts "$RUN/client.out")
                printf '%-10s %-8s %-10s %5s %9s %8s %5s %6s %8s %7s %5s\n' \
                    "$peer" "$kase" "$mode" "$round" "$req" "$c" "$r" "$w" "$t" "$n" $((r + w + t + n))
                # Stop whatever still serves the port before the next round.
                stop_pid "$pid"
                [[ -f $RUN/next.pid ]] && stop_pid "$(cat "$RUN/next.pid")"
                pkill -KILL -f "$RUN/nginx.conf" 2>/dev/null || true
                pkill -KILL -f "$RUN/haproxy.cfg" 2>/dev/null || true
                wait_port_closed "$PORT" || true
                sleep 0.5
            done
        done
    done
done
