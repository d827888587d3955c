#!/usr/bin/env bash
# Slow and hostile clients, side by side: the p99 latency of well-behaved clients through
# shardgate and through nginx, quiet and while 1,000 hostile connections attack the same proxy.
#
# Method: each proxy alone on core 0 (taskset -c PROXY_CPU), one worker / one shard, with the
# same deadlines: a request head must complete within TIMEOUT_S (nginx client_header_timeout,
# shardgate header_timeout_ms), a body may stall at most TIMEOUT_S between pieces
# (client_body_timeout, body_timeout_ms), a write to a client that does not read may stall at
# most TIMEOUT_S (send_timeout, send_timeout_ms). Everything else shares core 1 (LOAD_CPU): the
# chat upstream (nginx answering a fixed OpenAI JSON, bench/peers/upstream-nginx.conf, :18080),
# the SSE upstream (`shardgate-bench upstream --chunks 10000 --chunk-interval-ms SSE_CHUNK_MS`,
# :18090: streams of 10,000 events at an LLM's pace, 20 a second by default, for the SSE
# attack), the well-behaved load and the attacker.
#
# Well-behaved load: `shardgate-bench load` open loop at RATE requests/s over CONNS keep-alive
# connections, POST /v1/chat/completions with a small body, for DURATION; latency measured from
# each request's intended send time (coordinated omission corrected). Per round and proxy: a
# quiet run, then one run per attack MODE, each with bench/scripts/slow_attack.py holding
# ATTACK_CONNS connections open for the whole run (reopening each one the proxy closes):
# Each attack connection drips at its own phase, so ATTACK_CONNS connections at a byte per
# INTERVAL_S are a steady trickle, not a burst:
#   slowloris  a head one byte every INTERVAL_S seconds, never finished
#   slowpost   a head announcing a 1 MB body, then the body one byte every INTERVAL_S seconds
#   sse        a streaming request to the SSE upstream whose answer is never read (4 KB receive
#              buffer): the proxy's writes stall until its send deadline cuts the stream
#   control    the slowloris attack aimed not at the proxy but at a sink beside it (a second
#              nginx on the proxy's core, :18098): what the attacker costs the rig itself (the
#              attacker and the load generator share a core), so attack - control is the
#              proxy's own share of the slowdown
# The attacker starts before the load and runs WARMUP_S seconds first, so the run sees the
# attack at full strength (and its connections' deadlines expiring and being reopened).
# Proxies are interleaved round-robin (the starting proxy rotates each round) for ROUNDS
# rounds; the summary shows medians and each attack's p99 as a ratio to the same proxy's quiet
# p99 in the same round.
#
# Usage: bench/scripts/slow-clients.sh [OUT_DIR]
# Environment (defaults in brackets):
#   ROUNDS [3]  DURATION [10s]  RATE [3000]  CONNS [32]  ATTACK_CONNS [1000]  INTERVAL_S [1]
#   WARMUP_S [3]  TIMEOUT_S [10]  SSE_CHUNK_MS [50]  MODES ["control slowloris slowpost sse"]
#   PROXIES ["nginx shardgate"]
#   SHARDGATE_BIN [<repo>/target/release/shardgate]
#   BENCH_BIN [<repo>/target/release/shardgate-bench]  NGINX_BIN [nginx]
#   PROXY_CPU [0]  LOAD_CPU [1]  OUT [/tmp/shardgate-slow-clients-<timestamp>]
#
# Output: OUT/raw.tsv (one line per run: round, proxy, mode, latency, errors, proxy CPU % of a
# core and RSS during the run, the attacker's counts), OUT/summary.txt, OUT/load/*.json,
# OUT/attack/*.txt, OUT/run/* (configs and logs).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PEERS=$REPO/bench/peers
# shellcheck source=bench/scripts/common.sh
. "$HERE/common.sh"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
RATE=${RATE:-3000}
CONNS=${CONNS:-32}
ATTACK_CONNS=${ATTACK_CONNS:-1000}
INTERVAL_S=${INTERVAL_S:-1}
WARMUP_S=${WARMUP_S:-3}
TIMEOUT_S=${TIMEOUT_S:-10}
SSE_CHUNK_MS=${SSE_CHUNK_MS:-50}
MODES=${MODES:-"control slowloris slowpost sse"}
PROXIES=${PROXIES:-"nginx shardgate"}
SHARDGATE_BIN=${SHARDGATE_BIN:-$REPO/target/release/shardgate}
BENCH_BIN=${BENCH_BIN:-$REPO/target/release/shardgate-bench}
NGINX_BIN=${NGINX_BIN:-nginx}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
OUT=${1:-${OUT:-/tmp/shardgate-slow-clients-$(date +%Y%m%d-%H%M%S)}}

CHAT_PORT=18080
SSE_PORT=18090
SINK_PORT=18098
REQ_PATH=/v1/chat/completions
BODY='{"model":"demo","messages":[{"role":"user","content":"Hello World!"}]}'
CLK_TCK=$(getconf CLK_TCK)

die() { echo "slow-clients: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

[[ $ROUNDS =~ ^[0-9]+$ ]] && (( ROUNDS >= 1 && ROUNDS <= 100 )) || die "ROUNDS must be 1..100"
[[ $RATE =~ ^[0-9]+$ && $CONNS =~ ^[0-9]+$ && $ATTACK_CONNS =~ ^[0-9]+$ ]] ||
    die "RATE, CONNS and ATTACK_CONNS must be whole numbers"
[[ $TIMEOUT_S =~ ^[0-9]+$ && $WARMUP_S =~ ^[0-9]+$ ]] && (( TIMEOUT_S >= 1 )) ||
    die "TIMEOUT_S (>= 1) and WARMUP_S must be whole seconds"
for m in $MODES; do [[ $m =~ ^(control|slowloris|slowpost|sse)$ ]] || die "unknown mode $m"; done
for p in $PROXIES; do [[ $p == nginx || $p == shardgate ]] || die "unknown proxy $p"; done
command -v "$NGINX_BIN" >/dev/null || die "nginx not found (apt-get install -y nginx-light)"
command -v curl >/dev/null || die "curl not found"
command -v taskset >/dev/null || die "taskset not found (util-linux)"
command -v python3 >/dev/null || die "python3 not found"
[[ -x $SHARDGATE_BIN && -x $BENCH_BIN ]] ||
    die "build first: cargo build --release -p shardgate-engine -p shardgate-bench"

# Each proxy holds ATTACK_CONNS + CONNS client connections and as many upstream ones.
need=$(( 2 * (ATTACK_CONNS + CONNS) + 1024 ))
ulimit -Sn "$need" 2>/dev/null || ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
(( $(ulimit -n) >= need )) || die "open-file limit $(ulimit -n) is below the $need needed"

mkdir -p "$OUT/load" "$OUT/attack" "$OUT/run"
OUT=$(cd "$OUT" && pwd)
RUN=$OUT/run

# ---------------------------------------------------------------- configs (same deadlines)
cat >"$RUN/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile $need;
daemon off;
master_process on;
pid nginx.pid;
error_log error.log warn;
events { worker_connections $need; multi_accept on; }
http {
    access_log off;
    server_tokens off;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
    client_header_timeout ${TIMEOUT_S}s;
    client_body_timeout ${TIMEOUT_S}s;
    send_timeout ${TIMEOUT_S}s;
    client_body_temp_path client_body;
    proxy_temp_path proxy_temp;
    fastcgi_temp_path fastcgi_temp;
    uwsgi_temp_path uwsgi_temp;
    scgi_temp_path scgi_temp;
    upstream rig { server 127.0.0.1:$CHAT_PORT; keepalive 64; keepalive_requests 1000000000; keepalive_timeout 300s; }
    upstream sse { server 127.0.0.1:$SSE_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:18081 backlog=4096;
        # SSE: unbuffered, as every nginx in front of an LLM stream is configured.
        location /v1/completions {
            proxy_pass http://sse;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
        location / {
            proxy_pass http://rig;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
cat >"$RUN/shardgate.toml" <<EOF
[server]
listen = "127.0.0.1:18083"
cores = 1
auth = "none"
admin_listen = "off"
header_timeout_ms = $(( TIMEOUT_S * 1000 ))
body_timeout_ms = $(( TIMEOUT_S * 1000 ))
send_timeout_ms = $(( TIMEOUT_S * 1000 ))

[[upstreams]]
name = "rig"
endpoints = ["http://127.0.0.1:$CHAT_PORT"]

[[upstreams]]
name = "sse"
endpoints = ["http://127.0.0.1:$SSE_PORT"]

[[routes]]
path_prefix = "/v1/completions"
upstream = "sse"

[[routes]]
path_prefix = "/"
upstream = "rig"
EOF

# The control's sink: answers nothing until a head completes, closes at the same deadline.
cat >"$RUN/sink.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile $need;
daemon off;
master_process on;
pid nginx.pid;
error_log error.log warn;
events { worker_connections $need; }
http {
    access_log off;
    client_header_timeout ${TIMEOUT_S}s;
    client_body_timeout ${TIMEOUT_S}s;
    server { listen 127.0.0.1:$SINK_PORT backlog=4096; location / { return 200 "sink\n"; } }
}
EOF

port_of() { case $1 in nginx) echo 18081 ;; shardgate) echo 18083 ;; esac; }

# ---------------------------------------------------------------- processes
STARTED_PIDS=()
cleanup() {
    local p
    for p in "${STARTED_PIDS[@]}"; do stop_pid "$p"; done
    STARTED_PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_ok() { # port: up to 10 s for the benchmark request to be answered 200
    local i code
    for i in $(seq 1 100); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -X POST \
            -H 'Content-Type: application/json' --data "$BODY" \
            "http://127.0.0.1:$1$REQ_PATH" 2>/dev/null || true)
        [[ $code == 200 ]] && return 0
        sleep 0.1
    done
    return 1
}

start_upstreams() {
    mkdir -p "$RUN/upstream"
    taskset -c "$LOAD_CPU" "$NGINX_BIN" -p "$RUN/upstream" -e "$RUN/upstream/error.log" \
        -c "$PEERS/upstream-nginx.conf" >"$RUN/upstream/stdout.log" 2>&1 &
    STARTED_PIDS+=($!)
    taskset -c "$LOAD_CPU" "$BENCH_BIN" upstream --listen "127.0.0.1:$SSE_PORT" --threads 1 \
        --chunks 10000 --chunk-interval-ms "$SSE_CHUNK_MS" >"$RUN/sse-upstream.log" 2>&1 &
    STARTED_PIDS+=($!)
    wait_ok "$CHAT_PORT" || die "the chat upstream did not answer"
    mkdir -p "$RUN/sink"
    taskset -c "$PROXY_CPU" "$NGINX_BIN" -p "$RUN/sink" -e "$RUN/sink/error.log" \
        -c "$RUN/sink.conf" >"$RUN/sink/stdout.log" 2>&1 &
    STARTED_PIDS+=($!)
    wait_ok "$SINK_PORT" || die "the control's sink did not answer"
}

PROXY_PID=""
start_proxy() {
    local proxy=$1 port
    port=$(port_of "$proxy")
    case $proxy in
        nginx)
            mkdir -p "$RUN/nginx"
            taskset -c "$PROXY_CPU" "$NGINX_BIN" -p "$RUN/nginx" -e "$RUN/nginx/error.log" \
                -c "$RUN/nginx.conf" >"$RUN/nginx/stdout.log" 2>&1 &
            ;;
        shardgate)
            taskset -c "$PROXY_CPU" "$SHARDGATE_BIN" --config "$RUN/shardgate.toml" \
                >"$RUN/shardgate.log" 2>&1 &
            ;;
    esac
    PROXY_PID=$!
    STARTED_PIDS+=("$PROXY_PID")
    wait_ok "$port" || die "$proxy did not answer on :$port (logs in $RUN)"
}

ATTACK_PID=""
start_attack() { # mode port tag
    local fifo=$RUN/attack.in
    rm -f "$fifo"; mkfifo "$fifo"
    taskset -c "$LOAD_CPU" python3 "$HERE/slow_attack.py" --port "$2" --mode "$1" \
        --conns "$ATTACK_CONNS" --interval "$INTERVAL_S" <"$fifo" >"$OUT/attack/$3.txt" 2>&1 &
    ATTACK_PID=$!
    exec 7>"$fifo"   # held open: the attacker stops at EOF or SIGTERM
    local i
    for i in $(seq 1 300); do
        grep -q '^OPEN' "$OUT/attack/$3.txt" && return 0
        kill -0 "$ATTACK_PID" 2>/dev/null || break
        sleep 0.1
    done
    die "the $1 attacker did not open its connections: $(cat "$OUT/attack/$3.txt")"
}

stop_attack() {
    exec 7>&-
    local i
    for i in $(seq 1 50); do kill -0 "$ATTACK_PID" 2>/dev/null || break; sleep 0.1; done
    kill -TERM "$ATTACK_PID" 2>/dev/null || true
    wait "$ATTACK_PID" 2>/dev/null || true
    ATTACK_PID=""
}

field() { # key line -> value of key=... in line
    sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$2"
}

json_num() { # file python-expression-on-v
    python3 -c "import json,sys; v=json.load(open(sys.argv[1])); print($2)" "$1"
}

# ---------------------------------------------------------------- runs
printf 'round\tproxy\tmode\tp50_us\tp99_us\tp999_us\tmax_us\trequests\terrors\tproxy_cpu_pct\tproxy_rss_kib\tattack_open\tattack_opened\tattack_closed\tattack_statuses\n' >"$OUT/raw.tsv"
{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "nginx: $("$NGINX_BIN" -v 2>&1)"
    echo "cpus: $(nproc); proxy on core $PROXY_CPU, everything else on core $LOAD_CPU"
    echo "rate $RATE/s over $CONNS connections, $DURATION per run; attack $ATTACK_CONNS connections, a byte per ${INTERVAL_S}s; deadlines ${TIMEOUT_S}s"
} >"$OUT/env.txt"

start_upstreams
read -r -a proxies <<<"$PROXIES"
for round in $(seq 1 "$ROUNDS"); do
    n=${#proxies[@]}
    for k in $(seq 0 $(( n - 1 ))); do
        proxy=${proxies[$(( (k + round - 1) % n ))]}
        port=$(port_of "$proxy")
        start_proxy "$proxy"
        for mode in quiet $MODES; do
            tag=r$round-$proxy-$mode
            case $mode in
                quiet) ;;
                control) start_attack slowloris "$SINK_PORT" "$tag"; sleep "$WARMUP_S" ;;
                *) start_attack "$mode" "$port" "$tag"; sleep "$WARMUP_S" ;;
            esac
            pids=$(descendants "$PROXY_PID")
            t0=$(cpu_ticks $pids); s0=$(date +%s%N)
            taskset -c "$LOAD_CPU" "$BENCH_BIN" load "http://127.0.0.1:$port$REQ_PATH" \
                --rate "$RATE" -c "$CONNS" -t 1 -d "$DURATION" --warmup 1s --json \
                -H 'Content-Type: application/json' --body "$BODY" >"$OUT/load/$tag.json" ||
                die "load failed ($tag)"
            t1=$(cpu_ticks $pids); s1=$(date +%s%N)
            rss=$(rss_kib $pids)
            cpu=$(awk -v t=$(( t1 - t0 )) -v hz="$CLK_TCK" -v ns=$(( s1 - s0 )) 'BEGIN {printf "%.1f", 100 * t / hz / (ns / 1e9)}')
            open=- opened=- closed=- statuses=-
            if [[ $mode != quiet ]]; then
                stop_attack
                line=$(grep '^DONE' "$OUT/attack/$tag.txt" || true)
                open=$(field open "$line"); opened=$(field opened "$line")
                closed=$(field closed_by_server "$line"); statuses=$(field statuses "$line")
                sleep 1
            fi
            f=$OUT/load/$tag.json
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$proxy" "$mode" \
                "$(json_num "$f" 'v["latency_us"]["p50"]')" "$(json_num "$f" 'v["latency_us"]["p99"]')" \
                "$(json_num "$f" 'v["latency_us"]["p999"]')" "$(json_num "$f" 'v["latency_us"]["max"]')" \
                "$(json_num "$f" 'v["requests"]')" "$(json_num "$f" 'sum(v["errors"].values())')" \
                "$cpu" "$rss" "${open:--}" "${opened:--}" "${closed:--}" "${statuses:--}" >>"$OUT/raw.tsv"
            log "$(tail -n 1 "$OUT/raw.tsv")"
        done
        stop_pid "$PROXY_PID"
        forget_pid "$PROXY_PID"
    done
done

# ---------------------------------------------------------------- summary
python3 - "$OUT/raw.tsv" "$MODES" "$PROXIES" >"$OUT/summary.txt" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
modes = ["quiet"] + sys.argv[2].split()
proxies = sys.argv[3].split()
base = lambda mode: {(r["round"], r["proxy"]): float(r["p99_us"]) for r in rows if r["mode"] == mode}
quiet, control = base("quiet"), base("control")
med = lambda xs: statistics.median(xs) if xs else float("nan")
print("median over rounds; x quiet, x control = p99 / the quiet (control) run's p99, same proxy and round")
print(f"{'proxy':<10} {'mode':<10} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'x quiet':>8} {'x control':>9} {'errors':>7} {'cpu %':>6} {'rss MiB':>8} {'attack reopened':>16}")
p99s = {}
for p in proxies:
    for m in modes:
        rs = [r for r in rows if r["proxy"] == p and r["mode"] == m]
        if not rs:
            continue
        p99 = med([float(r["p99_us"]) for r in rs])
        p99s[(p, m)] = p99
        ratio = med([float(r["p99_us"]) / quiet[(r["round"], p)] for r in rs if quiet.get((r["round"], p))])
        vs_control = med([float(r["p99_us"]) / control[(r["round"], p)] for r in rs if control.get((r["round"], p))])
        reopened = med([int(r["attack_opened"]) - int(r["attack_open"]) for r in rs if r["attack_opened"] != "-"]) if m != "quiet" else "-"
        print(f"{p:<10} {m:<10} {med([float(r['p50_us']) for r in rs]) / 1000:>8.2f} {p99 / 1000:>8.2f} "
              f"{med([float(r['p999_us']) for r in rs]) / 1000:>9.2f} {ratio:>8.2f} {vs_control:>9.2f} "
              f"{med([int(r['errors']) for r in rs]):>7} {med([float(r['proxy_cpu_pct']) for r in rs]):>6.1f} "
              f"{med([int(r['proxy_rss_kib']) for r in rs]) / 1024:>8.1f} {reopened:>16}")
if "nginx" in proxies and "shardgate" in proxies:
    print()
    print("shardgate p99 / nginx p99 (medians):")
    for m in modes:
        if ("nginx", m) in p99s and ("shardgate", m) in p99s:
            print(f"  {m:<10} {p99s[('shardgate', m)] / p99s[('nginx', m)]:.2f}")
EOF
cat "$OUT/summary.txt"
log "raw runs: $OUT/raw.tsv"
