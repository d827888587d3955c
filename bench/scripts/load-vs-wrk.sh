#!/usr/bin/env bash
# Requests/s from one core: `shardgate-bench load` vs wrk, against the same static target.
#
# Method: the target is nginx with bench/peers/upstream-nginx.conf (one worker, a fixed 352-byte
# chat.completion), on its own port, pinned to TARGET_CPU. Both generators run pinned to
# LOAD_CPU with one thread and CONNS keep-alive connections, sending the same request
# (POST /v1/chat/completions with the small OpenAI body and headers of bench/peers/post.lua).
# Runs alternate wrk / load, and the one going first alternates each round, for ROUNDS rounds.
# Per run: requests/s, the generator's own CPU per request (user+sys of the run, from the shell's
# `times`), the hypervisor's steal on both cores, and the CPU that anything else (a build, ...)
# used on the two cores (/proc/stat busy time minus the generator's and the target's); a run
# where that exceeds OTHER_MAX_PCT of a core is marked noisy. Prints per-run lines, the medians
# (over all runs, and over the quiet ones when some were noisy) and the load/wrk ratios.
#
# Usage: bench/scripts/load-vs-wrk.sh
# Environment (defaults in brackets):
#   ROUNDS [3]  DURATION [5] (seconds)  CONNS [64]  LOAD_CPU [0]  TARGET_CPU [1]  PORT [18090]
#   LOAD_BIN [<repo>/target/release/shardgate-bench]  WRK_BIN [wrk]  NGINX_BIN [nginx]
#   OTHER_MAX_PCT [10]  runs where other processes used more of a core than this are noisy
#   TARGET_URL  use this already running target instead of starting nginx (its CPU then counts
#               as "other")
# Needs: wrk, nginx (apt-get install -y wrk nginx-light), curl, taskset, awk.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PEERS=$REPO/bench/peers

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-64}
LOAD_CPU=${LOAD_CPU:-0}
TARGET_CPU=${TARGET_CPU:-1}
PORT=${PORT:-18090}
LOAD_BIN=${LOAD_BIN:-$REPO/target/release/shardgate-bench}
WRK_BIN=${WRK_BIN:-wrk}
NGINX_BIN=${NGINX_BIN:-nginx}
TARGET_URL=${TARGET_URL:-}
OTHER_MAX_PCT=${OTHER_MAX_PCT:-10}

BODY='{"model":"demo","messages":[{"role":"user","content":"Hello World!"}]}'
CLK_TCK=$(getconf CLK_TCK)

die() { echo "load-vs-wrk: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

[[ $ROUNDS =~ ^[0-9]+$ ]] && (( ROUNDS >= 1 && ROUNDS <= 100 )) || die "ROUNDS must be 1..100"
[[ $DURATION =~ ^[0-9]+$ ]] && (( DURATION >= 1 && DURATION <= 600 )) || die "DURATION must be 1..600 (seconds)"
[[ $CONNS =~ ^[0-9]+$ ]] && (( CONNS >= 1 )) || die "CONNS must be a positive integer"
[[ $PORT =~ ^[0-9]+$ ]] || die "PORT must be a number"
[[ $OTHER_MAX_PCT =~ ^[0-9]+$ ]] || die "OTHER_MAX_PCT must be a whole number"
[[ -x $LOAD_BIN ]] || die "$LOAD_BIN not found (cargo build --release -p shardgate-bench, or set LOAD_BIN)"
command -v "$WRK_BIN" >/dev/null || die "wrk not found (apt-get install -y wrk)"
command -v taskset >/dev/null || die "taskset not found (util-linux)"
command -v curl >/dev/null || die "curl not found"

WORK=$(mktemp -d /tmp/load-vs-wrk.XXXXXX)
STARTED_PIDS=()
TARGET_PID=""

stop_pid() { # TERM, wait up to 5 s, then KILL
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    for pid in "${STARTED_PIDS[@]}"; do stop_pid "$pid"; done
    STARTED_PIDS=()
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -z $TARGET_URL ]]; then
    command -v "$NGINX_BIN" >/dev/null || die "nginx not found (apt-get install -y nginx-light)"
    [[ -z $(ss -Htln "sport = :$PORT" 2>/dev/null) ]] || die "port $PORT is in use (set PORT)"
    mkdir -p "$WORK/nginx"
    sed "s/127\.0\.0\.1:18080/127.0.0.1:$PORT/" "$PEERS/upstream-nginx.conf" >"$WORK/nginx.conf"
    # nginx's master forks the worker; TERM to the master stops both.
    taskset -c "$TARGET_CPU" "$NGINX_BIN" -p "$WORK/nginx/" -e "$WORK/nginx/error.log" \
        -c "$WORK/nginx.conf" >"$WORK/nginx.log" 2>&1 &
    TARGET_PID=$!
    STARTED_PIDS+=("$TARGET_PID")
    TARGET_URL=http://127.0.0.1:$PORT/v1/chat/completions
    for i in $(seq 1 50); do
        curl -sf -o /dev/null --max-time 1 -X POST --data "$BODY" "$TARGET_URL" && break
        (( i == 50 )) && { cat "$WORK/nginx/error.log" >&2 || true; die "nginx did not answer on port $PORT"; }
        sleep 0.1
    done
    log "target: nginx on core $TARGET_CPU, $TARGET_URL"
fi

steal() { # steal ticks of the two cores
    awk -v a="cpu$LOAD_CPU" -v b="cpu$TARGET_CPU" '$1 == a || $1 == b {t += $9} END {print t}' /proc/stat
}

busy() { # user+nice+system+irq+softirq ticks of the two cores
    awk -v a="cpu$LOAD_CPU" -v b="cpu$TARGET_CPU" '$1 == a || $1 == b {t += $2 + $3 + $4 + $7 + $8} END {print t}' /proc/stat
}

target_ticks() { # utime+stime of the nginx we started (master and workers), 0 without one
    local t=0 p st f
    [[ -n $TARGET_PID ]] || { echo 0; return; }
    for p in "$TARGET_PID" $(pgrep -P "$TARGET_PID" 2>/dev/null || true); do
        st=$(<"/proc/$p/stat") 2>/dev/null || continue
        st=${st##*) }              # fields from 3 (state) on; comm may hold spaces
        read -r -a f <<<"$st"
        t=$(( t + f[11] + f[12] ))  # fields 14 and 15
    done
    echo "$t"
}

children_ticks() { # CPU ticks (user+sys) of the children, from the `times` output in $1
    awk -v hz="$CLK_TCK" 'NR == 2 {
        t = 0
        for (i = 1; i <= 2; i++) { split($i, a, "m"); sub(/s$/, "", a[2]); t += a[1] * 60 + a[2] }
        printf "%.0f", t * hz }' "$1" 2>/dev/null
}

# run_one tool outfile: one generator run, in a subshell whose `times` reports the generator's
# CPU; in the background + wait, so that a signal is handled at once.
run_one() {
    local tool=$1 out=$2 pid s0 s1 b0 b1 n0 n1 rc=0
    s0=$(steal); b0=$(busy); n0=$(target_ticks)
    (
        trap - EXIT INT TERM
        rc=0
        case $tool in
            wrk)
                timeout $(( DURATION + 30 )) taskset -c "$LOAD_CPU" "$WRK_BIN" -t1 -c"$CONNS" \
                    -d"$DURATION"s -s "$PEERS/post.lua" "$TARGET_URL" >"$out" 2>&1 || rc=$?
                ;;
            load)
                timeout $(( DURATION + 30 )) taskset -c "$LOAD_CPU" "$LOAD_BIN" load "$TARGET_URL" \
                    -t1 -c"$CONNS" -d"$DURATION"s --method POST -H 'Content-Type: application/json' \
                    -H 'Authorization: Bearer sk-demo' --body "$BODY" --json >"$out" 2>&1 || rc=$?
                ;;
        esac
        times >"$out.times"
        exit "$rc"
    ) &
    pid=$!
    STARTED_PIDS+=("$pid")
    wait "$pid" || rc=$?
    (( rc == 0 )) || log "$tool exited with status $rc"
    local keep=() p
    for p in "${STARTED_PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    STARTED_PIDS=("${keep[@]}")
    s1=$(steal); b1=$(busy); n1=$(target_ticks)
    RUN_TICKS=$(children_ticks "$out.times"); RUN_TICKS=${RUN_TICKS:-0}
    RUN_OTHER_PCT=$(awk -v d=$(( (b1 - b0) - RUN_TICKS - (n1 - n0) )) -v hz="$CLK_TCK" -v s="$DURATION" \
        'BEGIN {v = 100 * d / hz / s; if (v < 0) v = 0; printf "%.1f", v}')
    RUN_STEAL_PCT=$(awk -v d=$(( s1 - s0 )) -v hz="$CLK_TCK" -v s="$DURATION" 'BEGIN {printf "%.1f", 100 * d / hz / s / 2}')
}

rps_of() { # tool outfile
    case $1 in
        wrk) awk '/^Requests\/sec:/ {print $2; exit}' "$2" ;;
        load) grep -o '"rps":[0-9.]*' "$2" | head -n1 | cut -d: -f2 ;;
    esac
}

errors_of() { # tool outfile: non-2xx + socket errors
    case $1 in
        wrk) awk '/Non-2xx/ {n += $NF} /Socket errors:/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$2" ;;
        load) grep -o '"errors":{[^}]*}' "$2" | grep -o ':[0-9]\+' | tr -d : | awk '{n += $1} END {print n + 0}' ;;
    esac
}

RAW=$WORK/raw.tsv
: >"$RAW"
log "$ROUNDS rounds of ${DURATION}s per tool, $CONNS connections, generators on core $LOAD_CPU"
for (( r = 1; r <= ROUNDS; r++ )); do
    if (( r % 2 )); then order="wrk load"; else order="load wrk"; fi
    for tool in $order; do
        out=$WORK/$tool.r$r.txt
        run_one "$tool" "$out"
        rps=$(rps_of "$tool" "$out"); rps=${rps:-0}
        errs=$(errors_of "$tool" "$out")
        us=$(awk -v t="$RUN_TICKS" -v hz="$CLK_TCK" -v r="$rps" -v d="$DURATION" \
            'BEGIN { if (r > 0) printf "%.2f", t * 1e6 / hz / (r * d); else print "nan" }')
        cpu=$(awk -v t="$RUN_TICKS" -v hz="$CLK_TCK" -v d="$DURATION" 'BEGIN {printf "%.0f", 100 * t / hz / d}')
        status=ok
        awk -v o="$RUN_OTHER_PCT" -v m="$OTHER_MAX_PCT" 'BEGIN {exit !(o > m)}' && status=noisy
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$tool" "$rps" "$us" "$cpu" \
            "$RUN_STEAL_PCT" "$errs" "$RUN_OTHER_PCT" "$status" >>"$RAW"
        log "round $r $tool: $rps req/s, generator CPU ${cpu}% (${us} us/req), steal ${RUN_STEAL_PCT}%, other ${RUN_OTHER_PCT}% of a core, errors $errs [$status]"
        awk -v r="$rps" 'BEGIN {exit !(r > 0)}' || { cat "$out" >&2; die "$tool produced no requests/s"; }
        sleep 1
    done
done

median() { sort -g | awk '{a[NR] = $1} END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { # tool column [status]: that column over the tool's runs (with that status)
    awk -F'\t' -v t="$1" -v c="$2" -v st="${3:-}" '$2 == t && (st == "" || $9 == st) {print $c}' "$RAW"
}

summary() { # label status
    local wrk_rps load_rps wrk_us load_us
    wrk_rps=$(col wrk 3 "$2" | median); load_rps=$(col load 3 "$2" | median)
    wrk_us=$(col wrk 4 "$2" | median); load_us=$(col load 4 "$2" | median)
    printf '\nmedians over %s (%ss, %s connections, 1 thread, generator on core %s):\n' \
        "$1" "$DURATION" "$CONNS" "$LOAD_CPU"
    printf '  %-22s %6s %12s %16s\n' tool runs req/s cpu_us/req
    printf '  %-22s %6s %12.0f %16.2f\n' wrk "$(col wrk 3 "$2" | wc -l)" "$wrk_rps" "$wrk_us"
    printf '  %-22s %6s %12.0f %16.2f\n' "shardgate-bench load" "$(col load 3 "$2" | wc -l)" "$load_rps" "$load_us"
    awk -v a="$load_rps" -v b="$wrk_rps" -v c="$load_us" -v d="$wrk_us" 'BEGIN {
        if (a == "nan" || b == "nan" || b + 0 == 0) { print "  ratio load/wrk: n/a"; exit }
        printf "  ratio load/wrk: req/s %.3f, CPU per request %.3f\n", a / b, c / d }'
}

summary "all $ROUNDS rounds" ""
noisy=$(awk -F'\t' '$9 == "noisy"' "$RAW" | wc -l)
if (( noisy > 0 )); then
    summary "the quiet runs ($noisy noisy left out: other processes used > ${OTHER_MAX_PCT}% of a core)" ok
fi
printf '  highest steal during a run: %s%% (mean of the two cores); highest other load: %s%% of a core\n' \
    "$(cut -f6 "$RAW" | sort -g | tail -n1)" "$(cut -f8 "$RAW" | sort -g | tail -n1)"
