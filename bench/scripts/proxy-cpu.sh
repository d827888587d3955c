#!/usr/bin/env bash
# Side-by-side CPU cost per proxied request: shardgate vs nginx vs HAProxy.
#
# Method: each proxy alone on core 0 (taskset -c 0); the mock upstream (nginx, one worker,
# bench/peers/upstream-nginx.conf) and wrk share core 1. 64 keep-alive connections, the request
# is POST /v1/chat/completions with a small OpenAI body (bench/peers/post.lua). Per run: start
# the proxy fresh, warm up, read utime+stime (/proc/PID/stat fields 14+15) of all its processes,
# run wrk, read them again, read VmRSS, stop the proxy. Proxies are interleaved round-robin
# (the starting proxy rotates each round) for ROUNDS rounds; the table shows medians.
#
# Usage: bench/scripts/proxy-cpu.sh [OUT_DIR]
# Environment (defaults in brackets):
#   ROUNDS [5]  DURATION [10s]  WARMUP [2s]  CONNS [64]
#   PROXIES ["nginx haproxy shardgate"]   a proxy whose binary is missing is skipped;
#                         "shardgate-epoll" adds shardgate forced onto monoio's epoll driver
#                         (SHARDGATE_DRIVER=epoll), to compare the drivers in the same run;
#                         "shardgate-log" runs it with the access log on (bench/peers/
#                         shardgate-log.toml, written under OUT/run); "shardgate-base" runs
#                         SHARDGATE_BASE_BIN (an older build, e.g. before a change) on the same
#                         config, to price a change in the same run; "shardgate-tenant" runs
#                         with a tenant: key, model check, limits and usage accounting
#                         (bench/peers/shardgate-tenant.toml); "shardgate-models" routes by the
#                         body's model through a model group (bench/peers/shardgate-models.toml);
#                         "shardgate-translate" does the same to an Anthropic upstream: the
#                         OpenAI request and the answer translated (bench/peers/shardgate-translate.toml)
#   SHARDGATE_BIN [<repo>/target/release/shardgate]   SHARDGATE_BASE_BIN [unset]
#   NGINX_BIN [nginx]  HAPROXY_BIN [haproxy]
#   WRK_BIN [wrk]  PROXY_CPU [0]  LOAD_CPU [1]  OUT [/tmp/shardgate-proxy-cpu-<timestamp>]
#   FOREIGN_MAX_PCT [10]  a run during which other processes (a cargo build, ...) used more than
#                         this % of a core on the two benchmark cores is marked "noisy" and left
#                         out of the medians (100 keeps every run)
#   STEAL_MAX_PCT [5]     a run during which the hypervisor stole more than this % of the proxy's
#                         core (steal time, /proc/stat) is marked "noisy" too
#   QUIET_WAIT_S [120]    before each run, wait up to this long for the two cores to be quiet
#   NOISY_RETRIES [2]     repeat a noisy run up to this many times (it stays in raw.tsv as noisy)
# Output: OUT/raw.tsv (one line per run), OUT/summary.txt, OUT/env.txt, OUT/wrk/*, OUT/run/* (logs).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PEERS=$REPO/bench/peers

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-64}
PROXIES=${PROXIES:-"nginx haproxy shardgate"}
SHARDGATE_BIN=${SHARDGATE_BIN:-$REPO/target/release/shardgate}
SHARDGATE_BASE_BIN=${SHARDGATE_BASE_BIN:-}
NGINX_BIN=${NGINX_BIN:-nginx}
HAPROXY_BIN=${HAPROXY_BIN:-haproxy}
WRK_BIN=${WRK_BIN:-wrk}
PROXY_CPU=${PROXY_CPU:-0}
FOREIGN_MAX_PCT=${FOREIGN_MAX_PCT:-10}
QUIET_WAIT_S=${QUIET_WAIT_S:-120}
STEAL_MAX_PCT=${STEAL_MAX_PCT:-5}
NOISY_RETRIES=${NOISY_RETRIES:-2}
LOAD_CPU=${LOAD_CPU:-1}
OUT=${1:-${OUT:-/tmp/shardgate-proxy-cpu-$(date +%Y%m%d-%H%M%S)}}

UPSTREAM_PORT=18080
REQ_PATH=/v1/chat/completions
BODY='{"model":"demo","messages":[{"role":"user","content":"Hello World!"}]}'
CLK_TCK=$(getconf CLK_TCK)

die() { echo "proxy-cpu: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

[[ $ROUNDS =~ ^[0-9]+$ ]] && (( ROUNDS >= 1 && ROUNDS <= 1000 )) || die "ROUNDS must be 1..1000"
[[ $FOREIGN_MAX_PCT =~ ^[0-9]+$ ]] || die "FOREIGN_MAX_PCT must be a whole number"
[[ $QUIET_WAIT_S =~ ^[0-9]+$ && $NOISY_RETRIES =~ ^[0-9]+$ ]] && (( NOISY_RETRIES <= 10 )) ||
    die "QUIET_WAIT_S must be a whole number, NOISY_RETRIES 0..10"
[[ $CONNS =~ ^[0-9]+$ ]] && (( CONNS >= 1 )) || die "CONNS must be a positive integer"
secs() { # "10s" / "10" / "1m" -> seconds
    local v=$1
    case $v in
        *m) echo $(( ${v%m} * 60 )) ;;
        *s) echo "${v%s}" ;;
        *) echo "$v" ;;
    esac
}
DUR_S=$(secs "$DURATION"); WARM_S=$(secs "$WARMUP")
[[ $DUR_S =~ ^[0-9]+$ && $WARM_S =~ ^[0-9]+$ ]] || die "DURATION/WARMUP must be whole seconds (e.g. 10s)"

command -v "$WRK_BIN" >/dev/null || die "wrk not found (apt-get install -y wrk)"
command -v curl >/dev/null || die "curl not found"
command -v taskset >/dev/null || die "taskset not found (util-linux)"
command -v "$NGINX_BIN" >/dev/null || die "nginx not found; it is needed for the upstream (apt-get install -y nginx-light)"

mkdir -p "$OUT/wrk" "$OUT/run"
OUT=$(cd "$OUT" && pwd)

# ---------------------------------------------------------------- process bookkeeping
STARTED_PIDS=()

is_running() { # alive and not a zombie
    local st
    [[ -r /proc/$1/stat ]] || return 1
    st=$(<"/proc/$1/stat") 2>/dev/null || return 1
    st=${st##*) }
    [[ ${st%% *} != Z ]]
}

descendants() { # pid and all its descendants (bounded depth)
    local frontier=("$1") next=() all=("$1") depth p c
    for depth in 1 2 3 4; do
        next=()
        for p in "${frontier[@]}"; do
            for c in $(pgrep -P "$p" 2>/dev/null || true); do next+=("$c"); all+=("$c"); done
        done
        (( ${#next[@]} )) || break
        frontier=("${next[@]}")
    done
    echo "${all[@]}"
}

stop_pid() { # TERM the process tree, wait up to 5 s, then KILL what is left
    local pid=$1 tree i p
    tree=$(descendants "$pid")
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        is_running "$pid" || break
        sleep 0.1
    done
    for p in $tree; do
        is_running "$p" && kill -KILL "$p" 2>/dev/null || true
    done
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    for pid in "${STARTED_PIDS[@]}"; do
        stop_pid "$pid"
    done
    STARTED_PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

forget_pid() {
    local keep=() p
    for p in "${STARTED_PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    STARTED_PIDS=("${keep[@]}")
}

port_busy() { [[ -n $(ss -Htln "sport = :$1" 2>/dev/null) ]]; }

cpu_ticks() { # sum of utime+stime over the given pids; fails if one is gone
    local total=0 p st f
    for p in "$@"; do
        st=$(<"/proc/$p/stat") || return 1
        st=${st##*) }              # fields from 3 (state) on; comm may hold spaces
        read -r -a f <<<"$st"
        total=$(( total + f[11] + f[12] ))   # field 14 = f[11], field 15 = f[12]
    done
    echo "$total"
}

busy_ticks() { # user+nice+system+irq+softirq ticks of the proxy core and the load core (/proc/stat);
    # with tick accounting, softirq time is also in the interrupted task's stime
    awk -v a="cpu$PROXY_CPU" -v b="cpu$LOAD_CPU" '$1 == a || $1 == b {t += $2 + $3 + $4 + $7 + $8} END {print t}' /proc/stat
}

wrk_ticks() { # CPU ticks of the wrk run whose `times` output is in $1
    awk -v hz="$CLK_TCK" 'NR == 2 {
        t = 0
        for (i = 1; i <= 2; i++) { split($i, a, "m"); sub(/s$/, "", a[2]); t += a[1] * 60 + a[2] }
        printf "%.0f", t * hz }' "$1" 2>/dev/null
}

steal_ticks() { # steal time (ticks) of one CPU, from /proc/stat
    awk -v c="cpu$1" '$1 == c {print $9; exit}' /proc/stat
}

rss_kib() { # sum of VmRSS (kB) over the given pids
    local total=0 p v
    for p in "$@"; do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
        total=$(( total + ${v:-0} ))
    done
    echo "$total"
}

probe() { # POST the benchmark request once; prints the HTTP status, body to $2
    curl -s -o "$2" -w '%{http_code}' --max-time 2 -X POST \
        -H 'Content-Type: application/json' -H 'Authorization: Bearer sk-demo' \
        --data "$BODY" "http://127.0.0.1:$1$REQ_PATH" 2>/dev/null || true
}

wait_ready() { # pid port log: up to 10 s for a 200 carrying the upstream's JSON
    local pid=$1 port=$2 i code
    for i in $(seq 1 100); do
        is_running "$pid" || { log "process exited early; last log lines:"; tail -n 20 "$3" >&2; return 1; }
        code=$(probe "$port" "$OUT/run/probe.body")
        if [[ $code == 200 ]] && grep -q '"chat.completion"' "$OUT/run/probe.body"; then
            return 0
        fi
        sleep 0.1
    done
    log "no 200 with the upstream body on port $port after 10 s (last status: ${code:-none}); last log lines:"
    tail -n 20 "$3" >&2
    return 1
}

# ---------------------------------------------------------------- proxies
proxy_port() {
    case $1 in nginx) echo 18081 ;; haproxy) echo 18082 ;; shardgate|shardgate-epoll|shardgate-log|shardgate-base|shardgate-tenant|shardgate-models|shardgate-translate) echo 18083 ;; esac
}

proxy_available() {
    case $1 in
        nginx) command -v "$NGINX_BIN" >/dev/null ;;
        haproxy) command -v "$HAPROXY_BIN" >/dev/null ;;
        shardgate|shardgate-epoll|shardgate-log|shardgate-tenant|shardgate-models|shardgate-translate) [[ -x $SHARDGATE_BIN ]] ;;
        shardgate-base) [[ -n $SHARDGATE_BASE_BIN && -x $SHARDGATE_BASE_BIN ]] ;;
        *) return 1 ;;
    esac
}

start_proxy() { # name logfile -> sets PROXY_PID (no subshell: the proxy stays our child)
    local name=$1 logf=$2 prefix
    case $name in
        nginx)
            prefix=$OUT/run/nginx; rm -rf "$prefix"; mkdir -p "$prefix"
            taskset -c "$PROXY_CPU" "$NGINX_BIN" -p "$prefix/" -e "$prefix/error.log" \
                -c "$PEERS/nginx-proxy.conf" >"$logf" 2>&1 &
            ;;
        haproxy)
            taskset -c "$PROXY_CPU" "$HAPROXY_BIN" -db -f "$PEERS/haproxy.cfg" >"$logf" 2>&1 &
            ;;
        shardgate)
            taskset -c "$PROXY_CPU" "$SHARDGATE_BIN" --config "$PEERS/shardgate.toml" >"$logf" 2>&1 &
            ;;
        shardgate-epoll)
            SHARDGATE_DRIVER=epoll taskset -c "$PROXY_CPU" "$SHARDGATE_BIN" \
                --config "$PEERS/shardgate.toml" >"$logf" 2>&1 &
            ;;
        shardgate-log)
            # The access log goes to OUT/run/access.log (the config names a fixed path;
            # point it there with a copy).
            sed "s|@ACCESS_LOG@|$OUT/run/access.log|" "$PEERS/shardgate-log.toml" \
                >"$OUT/run/shardgate-log.toml"
            rm -f "$OUT/run/access.log"
            taskset -c "$PROXY_CPU" "$SHARDGATE_BIN" --config "$OUT/run/shardgate-log.toml" \
                >"$logf" 2>&1 &
            ;;
        shardgate-base)
            taskset -c "$PROXY_CPU" "$SHARDGATE_BASE_BIN" --config "$PEERS/shardgate.toml" \
                >"$logf" 2>&1 &
            ;;
        shardgate-tenant)
            taskset -c "$PROXY_CPU" "$SHARDGATE_BIN" --config "$PEERS/shardgate-tenant.toml" \
                >"$logf" 2>&1 &
            ;;
        shardgate-models)
            taskset -c "$PROXY_CPU" "$SHARDGATE_BIN" --config "$PEERS/shardgate-models.toml" \
                >"$logf" 2>&1 &
            ;;
        shardgate-translate)
            SG_BENCH_ANTHROPIC_KEY=sk-bench taskset -c "$PROXY_CPU" "$SHARDGATE_BIN" \
                --config "$PEERS/shardgate-translate.toml" >"$logf" 2>&1 &
            ;;
    esac
    PROXY_PID=$!
}

proxy_version() {
    case $1 in
        nginx) "$NGINX_BIN" -v 2>&1 | head -n1 ;;
        haproxy) "$HAPROXY_BIN" -v 2>&1 | head -n1 ;;
        shardgate-base) echo "$SHARDGATE_BASE_BIN (built $(date -r "$SHARDGATE_BASE_BIN" '+%F %T'))" ;;
        shardgate|shardgate-epoll|shardgate-log|shardgate-tenant|shardgate-models|shardgate-translate)
            echo "$SHARDGATE_BIN ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet 2>/dev/null || echo '+dirty'), built $(date -r "$SHARDGATE_BIN" '+%F %T'))" ;;
    esac
}

# ---------------------------------------------------------------- wrk
run_wrk() { # port duration_s outfile; in the background + wait, so a signal is handled at once
    local wpid rc=0
    (   # a subshell, so that `times` can report wrk's CPU (reaped by timeout, then by us)
        trap - EXIT INT TERM
        rc=0
        timeout $(( $2 + 30 )) taskset -c "$LOAD_CPU" "$WRK_BIN" -t1 -c"$CONNS" -d"$2"s --latency \
            -s "$PEERS/post.lua" "http://127.0.0.1:$1$REQ_PATH" >"$3" 2>&1 || rc=$?
        times >"$3.times"
        exit "$rc"
    ) &
    wpid=$!
    STARTED_PIDS+=("$wpid")
    wait "$wpid" || rc=$?
    forget_pid "$wpid"
    return "$rc"
}

to_ms() { # wrk duration (123.45us / 1.23ms / 1.02s / 1.5m) -> ms
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.3f", v * 60000 }
        else printf "nan" }'
}

# ---------------------------------------------------------------- start
selected=()
for p in $PROXIES; do
    case $p in nginx|haproxy|shardgate|shardgate-epoll|shardgate-log|shardgate-base|shardgate-tenant|shardgate-models|shardgate-translate) ;; *) die "unknown proxy '$p' in PROXIES" ;; esac
    if proxy_available "$p"; then
        selected+=("$p")
    else
        case $p in
            shardgate-base) log "SKIP $p: set SHARDGATE_BASE_BIN to an executable" ;;
            shardgate|shardgate-epoll|shardgate-log|shardgate-tenant|shardgate-models|shardgate-translate) log "SKIP $p: $SHARDGATE_BIN not found or not executable (cargo build --release -p shardgate-engine, or set SHARDGATE_BIN)" ;;
            nginx) log "SKIP nginx: '$NGINX_BIN' not installed" ;;
            haproxy) log "SKIP haproxy: '$HAPROXY_BIN' not installed (apt-get install -y haproxy)" ;;
        esac
    fi
done
(( ${#selected[@]} )) || die "no proxy to measure"

for port in $UPSTREAM_PORT $(for p in "${selected[@]}"; do proxy_port "$p"; done); do
    port_busy "$port" && die "port $port on 127.0.0.1 is already in use; stop whatever holds it first"
done

{
    echo "date: $(date -Is)"
    echo "kernel: $(uname -r)  cpus: $(nproc)  CLK_TCK: $CLK_TCK"
    echo "rounds: $ROUNDS  duration: ${DUR_S}s  warmup: ${WARM_S}s  conns: $CONNS  proxy cpu: $PROXY_CPU  load cpu: $LOAD_CPU"
    echo "wrk: $("$WRK_BIN" --version 2>&1 | head -n1)"
    echo "upstream: $("$NGINX_BIN" -v 2>&1 | head -n1)"
    for p in "${selected[@]}"; do echo "$p: $(proxy_version "$p")"; done
} >"$OUT/env.txt"
cat "$OUT/env.txt" >&2

wait_quiet() { # up to QUIET_WAIT_S seconds for <= FOREIGN_MAX_PCT busy on the two cores over 1 s
    local a b pct i warned=""
    for (( i = 0; i <= QUIET_WAIT_S; i++ )); do
        a=$(busy_ticks); sleep 1; b=$(busy_ticks)
        pct=$(( (b - a) * 100 / CLK_TCK ))
        (( pct <= FOREIGN_MAX_PCT )) && return 0
        if [[ -z $warned ]]; then
            log "cores $PROXY_CPU,$LOAD_CPU busy (${pct}% of a core used by other processes; a build?): waiting up to ${QUIET_WAIT_S}s for quiet"
            ps -eo pid,pcpu,comm --sort=-pcpu | head -n 4 >&2
            warned=1
        fi
    done
    log "WARNING: still busy (${pct}%); running anyway, the run will likely be marked noisy"
    return 0
}

# Upstream: one nginx worker on the load core, for the whole run.
UP_PREFIX=$OUT/run/upstream; rm -rf "$UP_PREFIX"; mkdir -p "$UP_PREFIX"
taskset -c "$LOAD_CPU" "$NGINX_BIN" -p "$UP_PREFIX/" -e "$UP_PREFIX/error.log" \
    -c "$PEERS/upstream-nginx.conf" >"$OUT/run/upstream.log" 2>&1 &
UP_PID=$!
STARTED_PIDS+=("$UP_PID")
wait_ready "$UP_PID" "$UPSTREAM_PORT" "$UP_PREFIX/error.log" || die "upstream nginx did not start"
log "upstream nginx up (pid $UP_PID, core $LOAD_CPU)"

RAW=$OUT/raw.tsv
printf 'round\tproxy\trequests\treq_per_s\tp50_ms\tp99_ms\tproxy_ticks\tcpu_us_per_req\tproxy_cpu_pct\tupstream_cpu_us_per_req\trss_kib\tnprocs\tnon2xx\tsock_errors\tsteal_ticks_proxy_cpu\tsteal_ticks_load_cpu\tforeign_cpu_pct\tstatus\n' >"$RAW"

one_run() { # round proxy
    local r=$1 name=$2 port logf pid pids t0 t1 u0 u1 up_pids wout req rps p50 p99 non2xx sockerr
    local rss cpu_us pct up_us s0p s0l s1p s1l b0 b1 wt foreign status=ok
    port=$(proxy_port "$name")
    logf=$OUT/run/$name.r$r.log
    if port_busy "$port"; then
        log "round $r $name: port $port busy, run skipped"
        printf '%s\t%s\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\tport_busy\n' "$r" "$name" >>"$RAW"
        return 0
    fi
    start_proxy "$name" "$logf"
    pid=$PROXY_PID
    STARTED_PIDS+=("$pid")
    if ! wait_ready "$pid" "$port" "$logf"; then
        [[ $name == nginx ]] && tail -n 5 "$OUT/run/nginx/error.log" >&2 2>/dev/null
        stop_pid "$pid"; forget_pid "$pid"
        printf '%s\t%s\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\tstart_failed\n' "$r" "$name" >>"$RAW"
        return 1
    fi
    run_wrk "$port" "$WARM_S" "$OUT/wrk/$name.r$r.warmup.txt" || true

    read -r -a pids <<<"$(descendants "$pid")"
    read -r -a up_pids <<<"$(descendants "$UP_PID")"
    s0p=$(steal_ticks "$PROXY_CPU"); s0l=$(steal_ticks "$LOAD_CPU"); b0=$(busy_ticks)
    t0=$(cpu_ticks "${pids[@]}"); u0=$(cpu_ticks "${up_pids[@]}")
    wout=$OUT/wrk/$name.r$r.txt
    run_wrk "$port" "$DUR_S" "$wout" || status=wrk_failed
    t1=$(cpu_ticks "${pids[@]}") || status=proc_gone
    u1=$(cpu_ticks "${up_pids[@]}") || status=upstream_gone
    s1p=$(steal_ticks "$PROXY_CPU"); s1l=$(steal_ticks "$LOAD_CPU"); b1=$(busy_ticks)
    wt=$(wrk_ticks "$wout.times"); wt=${wt:-0}
    rss=$(rss_kib "${pids[@]}")
    stop_pid "$pid"; forget_pid "$pid"

    req=$(awk '/ requests in / {print $1; exit}' "$wout")
    rps=$(awk '/^Requests\/sec:/ {print $2; exit}' "$wout")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2; exit}' "$wout")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2; exit}' "$wout")")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF; exit}' "$wout"); non2xx=${non2xx:-0}
    sockerr=$(awk '/Socket errors:/ {gsub(/,/, ""); print $4 + $6 + $8 + $10; exit}' "$wout"); sockerr=${sockerr:-0}
    if [[ $status == ok ]]; then
        if [[ -z $req || $req -eq 0 ]]; then status=no_requests
        elif (( non2xx > 0 )); then status=non2xx   # wrong answers are cheap: do not count the run
        fi
    fi
    if [[ $status == ok || $status == non2xx ]]; then
        cpu_us=$(awk -v d=$(( t1 - t0 )) -v hz="$CLK_TCK" -v n="$req" 'BEGIN {printf "%.3f", d * 1e6 / hz / n}')
        pct=$(awk -v d=$(( t1 - t0 )) -v hz="$CLK_TCK" -v s="$DUR_S" 'BEGIN {printf "%.1f", 100 * d / hz / s}')
        up_us=$(awk -v d=$(( u1 - u0 )) -v hz="$CLK_TCK" -v n="$req" 'BEGIN {printf "%.3f", d * 1e6 / hz / n}')
        # CPU used on the two cores by anything but the proxy, the upstream and wrk (a build, ...)
        foreign=$(awk -v d=$(( (b1 - b0) - (t1 - t0) - (u1 - u0) - wt )) -v hz="$CLK_TCK" -v s="$DUR_S" \
            'BEGIN {printf "%.1f", 100 * d / hz / s}')
        if [[ $status == ok ]] && awk -v f="$foreign" -v m="$FOREIGN_MAX_PCT" 'BEGIN {exit !(f > m)}'; then
            status=noisy
        fi
        # The hypervisor took the proxy's core away (steal): CPU per request is then inflated.
        if [[ $status == ok ]] && awk -v d=$(( s1p - s0p )) -v hz="$CLK_TCK" -v s="$DUR_S" \
                -v m="$STEAL_MAX_PCT" 'BEGIN {exit !(100 * d / hz / s > m)}'; then
            status=noisy
        fi
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$r" "$name" "${req:-}" "${rps:-}" "$p50" "$p99" "$(( ${t1:-0} - ${t0:-0} ))" "${cpu_us:-}" "${pct:-}" \
        "${up_us:-}" "$rss" "${#pids[@]}" "$non2xx" "$sockerr" "$(( s1p - s0p ))" "$(( s1l - s0l ))" "${foreign:-}" "$status" >>"$RAW"
    LAST_STATUS=$status
    log "round $r $name: ${req:-?} req, ${rps:-?} req/s, p50 ${p50} ms, p99 ${p99} ms, CPU ${cpu_us:-?} us/req (${pct:-?}% of core $PROXY_CPU), RSS ${rss} KiB, non-2xx $non2xx, socket errors $sockerr, other load ${foreign:-?}% [$status]"
    sleep 1
}

n=${#selected[@]}
declare -A failed=()
for (( r = 1; r <= ROUNDS; r++ )); do
    for (( i = 0; i < n; i++ )); do
        name=${selected[$(( (i + r - 1) % n ))]}
        [[ -n ${failed[$name]:-} ]] && continue
        for (( attempt = 0; attempt <= NOISY_RETRIES; attempt++ )); do
            is_running "$UP_PID" || die "upstream nginx died; see $UP_PREFIX/error.log"
            wait_quiet
            LAST_STATUS=""
            if ! one_run "$r" "$name"; then
                log "SKIP $name from now on: it did not start and answer 200 (log: $OUT/run/$name.r$r.log)"
                failed[$name]=1
                break
            fi
            [[ $LAST_STATUS == noisy ]] || break
            (( attempt < NOISY_RETRIES )) && log "round $r $name: noisy, repeating"
        done
    done
done

# ---------------------------------------------------------------- summary
median() { sort -g | awk '{a[NR] = $1} END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { # proxy column-number: that column over the proxy's ok runs
    awk -F'\t' -v p="$1" -v c="$2" 'NR > 1 && $2 == p && $18 == "ok" {print $c}' "$RAW"
}

nginx_cpu=nan
[[ " ${selected[*]} " == *" nginx "* ]] && nginx_cpu=$(col nginx 8 | median)
{
    printf 'CPU per proxied request, medians over ok runs (proxy on core %s; upstream + wrk on core %s; %s conns, %ss per run)\n' \
        "$PROXY_CPU" "$LOAD_CPU" "$CONNS" "$DUR_S"
    printf '%-10s %6s %10s %9s %9s %12s %15s %8s %9s %9s\n' \
        proxy runs req/s p50_ms p99_ms cpu_us/req cpu_min..max proxy% rss_MiB vs_nginx
    for p in "${selected[@]}"; do
        total=$(awk -F'\t' -v p="$p" 'NR > 1 && $2 == p' "$RAW" | wc -l)
        ok=$(col "$p" 8 | wc -l)
        cpu=$(col "$p" 8 | median)
        lo=$(col "$p" 8 | sort -g | head -n1); hi=$(col "$p" 8 | sort -g | tail -n1)
        ratio=$(awk -v a="$cpu" -v b="$nginx_cpu" 'BEGIN { if (a == "nan" || b == "nan" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }')
        rss=$(col "$p" 11 | median)
        rss=$(awk -v k="$rss" 'BEGIN { if (k == "nan") print "nan"; else printf "%.1f", k / 1024 }')
        printf '%-10s %6s %10.0f %9.3f %9.3f %12.2f %15s %8.1f %9s %9s\n' "$p" "$ok/$total" \
            "$(col "$p" 4 | median)" "$(col "$p" 5 | median)" "$(col "$p" 6 | median)" \
            "$cpu" "${lo:-nan}..${hi:-nan}" "$(col "$p" 9 | median)" "$rss" "$ratio"
    done
    noisy=$(awk -F'\t' 'NR > 1 && $18 == "noisy"' "$RAW" | wc -l)
    (( noisy == 0 )) || printf 'NOTE: %s run(s) left out as noisy: other processes used > %s%% of a core, or steal took > %s%% of the proxy core, meanwhile (see foreign_cpu_pct, steal_ticks_proxy_cpu); rerun on a quiet machine, or FOREIGN_MAX_PCT=100 STEAL_MAX_PCT=100 to keep them\n' "$noisy" "$FOREIGN_MAX_PCT" "$STEAL_MAX_PCT"
    printf 'proxy%% = share of core %s the proxy used during the run (near 100 = the proxy was the bottleneck)\n' "$PROXY_CPU"
    printf 'raw per-run numbers (incl. upstream CPU/req and steal ticks): %s\n' "$RAW"
} | tee "$OUT/summary.txt"
