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
#                         OpenAI request and the answer translated (bench/peers/shardgate-translate.toml);
#                         "shardgate-gemini", "shardgate-bedrock" (SigV4-signed) and
#                         "shardgate-responses" likewise to a Gemini, Bedrock or OpenAI Responses
#                         upstream (bench/peers/shardgate-{gemini,bedrock,responses}.toml);
#                         "shardgate-full" is the full LLM path: tenant key, model check, shared
#                         limits, model group routing, usage accounting and metrics
#                         (bench/peers/shardgate-full.toml); "shardgate-full-log" the same with the
#                         access log on (written to OUT/run/access.log); "shardgate-base-full" and
#                         "shardgate-base-full-log" run SHARDGATE_BASE_BIN on those two configs;
#                         "shardgate-full-store" is shardgate-full with its tenant's key from the
#                         tenant store (bench/peers/shardgate-full-store.toml);
#                         "shardgate-full-trace0", "-trace1" and "-trace100" are shardgate-full
#                         with traces on ([telemetry], issue 22) at 0, 1 and 100 % sampling, the
#                         spans exported to the rig's upstream nginx (it answers any POST 200)
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
#   SOCK_ERR_MAX_PCT [1]  a run whose wrk "Socket errors" (connect+read+write+timeout) exceed this %
#                         of its completed requests is marked "sock_errors" and left out of the
#                         medians; every run's error count is in raw.tsv and the summary's sock_err
#
# TLS and new connections:
#   TLS [0]        1: wrk -> proxy is HTTPS (the upstream stays plain HTTP). At start the script
#                  makes one self-signed certificate (openssl CLI: EC P-256 key, CN and SAN
#                  "localhost", OUT/tls/cert.pem + key.pem) and every proxy serves it:
#                  nginx: a copy of nginx-proxy.conf with `listen ... ssl`, ssl_certificate(_key),
#                  ssl_protocols TLSv1.2 TLSv1.3, ssl_session_cache $NGINX_SSL_SESSION_CACHE,
#                  ssl_session_tickets on (OUT/run/nginx-proxy-tls.conf); HAProxy: haproxy.cfg with
#                  `bind ... ssl crt OUT/tls/haproxy.pem alpn http/1.1 ssl-min-ver TLSv1.2`
#                  (OUT/run/haproxy-tls.cfg); shardgate (every variant): its config with a
#                  [[server.tls]] entry appended (OUT/run/<variant>-tls.toml). The probe (curl)
#                  checks the certificate (--cacert, name localhost); wrk's URL is https://.
#                  The negotiated protocol, cipher, key exchange and signature of each proxy are
#                  written to OUT/tls/negotiated.txt (openssl s_client, first round).
#                  Keep-alive: each measured wrk run opens CONNS new connections, so CONNS full
#                  handshakes fall inside the measurement (64 among ~10^5 requests).
#   NEW_CONN [0]   1: every request on a new connection: wrk sends `Connection: close`, the proxy
#                  answers `connection: close` (checked by the probe before each run; a proxy
#                  that does not is not measured) and wrk reconnects after each answer, so with
#                  TLS=1 every request pays a TLS handshake. Requests = those wrk completed.
#                  Upstream connections stay pooled (keep-alive) in every proxy.
#   TLS_RESUME [0] with TLS=1 NEW_CONN=1: 0 = every handshake is a full one (ECDHE + certificate
#                  + ECDSA signature): wrk runs with bench/peers/tls-no-resume.c preloaded (built
#                  with cc into OUT/tls/), which drops the session wrk would otherwise offer on
#                  reconnect; 1 = wrk's own behaviour: it resumes its previous session (TLS 1.3
#                  ticket, PSK + ECDHE: no certificate, no signature). Before the rounds, a 1 s
#                  check against nginx with an access log of $ssl_session_reused and
#                  $connection_requests counts requests per connection and resumed handshakes
#                  (OUT/tls/handshake-check.txt).
#   NGINX_SSL_SESSION_CACHE [none]  nginx's ssl_session_cache (none = nginx's default; e.g.
#                  shared:SSL:10m). nginx's session tickets stay on (its default), as shardgate's.
# What the CPU figure covers: utime+stime of the proxy's own processes only (nginx: master and
# worker; HAProxy, shardgate: the process, all threads), so with TLS the handshakes, record
# encryption and decryption are in it; kernel time in the proxy's syscalls and the softirq time
# charged to it is in it too. wrk's and the upstream's CPU is not (upstream: raw.tsv column 10).
#
# Output: OUT/raw.tsv (one line per run), OUT/summary.txt, OUT/env.txt, OUT/wrk/*, OUT/run/* (logs),
# OUT/tls/* (TLS=1: certificate, negotiated parameters, handshake check).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PEERS=$REPO/bench/peers
# shellcheck source=bench/scripts/common.sh
. "$HERE/common.sh"

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
SOCK_ERR_MAX_PCT=${SOCK_ERR_MAX_PCT:-1}
TLS=${TLS:-0}
NEW_CONN=${NEW_CONN:-0}
TLS_RESUME=${TLS_RESUME:-0}
NGINX_SSL_SESSION_CACHE=${NGINX_SSL_SESSION_CACHE:-none}
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
[[ $SOCK_ERR_MAX_PCT =~ ^[0-9]+$ ]] || die "SOCK_ERR_MAX_PCT must be a whole number"
[[ $TLS == [01] && $NEW_CONN == [01] && $TLS_RESUME == [01] ]] || die "TLS, NEW_CONN and TLS_RESUME must be 0 or 1"
[[ $NGINX_SSL_SESSION_CACHE =~ ^[A-Za-z0-9:_.]+$ ]] || die "NGINX_SSL_SESSION_CACHE: one nginx ssl_session_cache value (none, off, shared:SSL:10m, ...)"
SCHEME=http; (( TLS )) && SCHEME=https
NO_RESUME_SO=""   # TLS=1 NEW_CONN=1 TLS_RESUME=0: the wrk shim (built below)
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
if (( TLS )); then
    command -v openssl >/dev/null || die "TLS=1 needs the openssl CLI (apt-get install -y openssl)"
    if (( NEW_CONN && !TLS_RESUME )); then
        command -v cc >/dev/null || die "TLS=1 NEW_CONN=1 TLS_RESUME=0 needs cc to build bench/peers/tls-no-resume.c (or set TLS_RESUME=1)"
    fi
fi

mkdir -p "$OUT/wrk" "$OUT/run"
OUT=$(cd "$OUT" && pwd)

# ---------------------------------------------------------------- TLS material and configs
NGINX_CONF=$PEERS/nginx-proxy.conf
HAPROXY_CONF=$PEERS/haproxy.cfg
if (( TLS )); then
    mkdir -p "$OUT/tls"
    cat >"$OUT/tls/req.cnf" <<'EOF'
[req]
distinguished_name = dn
x509_extensions = leaf
prompt = no
[dn]
CN = localhost
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost
EOF
    # One EC P-256 key and self-signed leaf (not a CA: shardgate refuses a CA certificate as a
    # server certificate), used by every proxy.
    openssl req -x509 -config "$OUT/tls/req.cnf" -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$OUT/tls/key.pem" -out "$OUT/tls/cert.pem" -days 30 >"$OUT/tls/openssl.log" 2>&1 ||
        { cat "$OUT/tls/openssl.log" >&2; die "openssl could not make the certificate"; }
    cat "$OUT/tls/cert.pem" "$OUT/tls/key.pem" >"$OUT/tls/haproxy.pem"
    chmod 600 "$OUT/tls/key.pem" "$OUT/tls/haproxy.pem"

    # nginx: the plain config with the listener switched to TLS.
    NGINX_CONF=$OUT/run/nginx-proxy-tls.conf
    awk -v cert="$OUT/tls/cert.pem" -v key="$OUT/tls/key.pem" -v cache="$NGINX_SSL_SESSION_CACHE" '
        /^[[:space:]]*listen 127\.0\.0\.1:18081 / && !done {
            sub(/ backlog=/, " ssl backlog="); print
            print "        ssl_certificate " cert ";"
            print "        ssl_certificate_key " key ";"
            print "        ssl_protocols TLSv1.2 TLSv1.3;"
            print "        ssl_session_cache " cache ";"
            print "        ssl_session_tickets on;"
            done = 1; next }
        { print }
        END { if (!done) exit 1 }' "$PEERS/nginx-proxy.conf" >"$NGINX_CONF" ||
        die "nginx-proxy.conf has no 'listen 127.0.0.1:18081 ...' line to switch to TLS"

    # HAProxy: one PEM with the certificate and the key.
    HAPROXY_CONF=$OUT/run/haproxy-tls.cfg
    awk -v pem="$OUT/tls/haproxy.pem" '
        /^[[:space:]]*bind 127\.0\.0\.1:18082[[:space:]]*$/ && !done {
            sub(/[[:space:]]*$/, " ssl crt " pem " alpn http/1.1 ssl-min-ver TLSv1.2"); print; done = 1; next }
        { print }
        END { if (!done) exit 1 }' "$PEERS/haproxy.cfg" >"$HAPROXY_CONF" ||
        die "haproxy.cfg has no 'bind 127.0.0.1:18082' line to switch to TLS"

    if (( NEW_CONN && !TLS_RESUME )); then
        NO_RESUME_SO=$OUT/tls/tls-no-resume.so
        cc -O2 -shared -fPIC -o "$NO_RESUME_SO" "$PEERS/tls-no-resume.c" -ldl ||
            die "could not build $PEERS/tls-no-resume.c"
    fi
fi

sg_conf() { # config file for a shardgate variant -> the path to run it with (a TLS copy with TLS=1)
    local src=$1 dst
    (( TLS )) || { echo "$src"; return; }
    dst=$OUT/run/$(basename "${src%.toml}")-tls.toml
    { cat "$src"; printf '\n[[server.tls]]\ncert = "%s"\nkey = "%s"\n' "$OUT/tls/cert.pem" "$OUT/tls/key.pem"; } >"$dst"
    echo "$dst"
}

# ---------------------------------------------------------------- process bookkeeping
STARTED_PIDS=()

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

port_busy() { [[ -n $(ss -Htln "sport = :$1" 2>/dev/null) ]]; }

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

probe() { # port body-file [proxy]: POST the benchmark request once; prints the HTTP status.
    # With "proxy": over TLS when TLS=1 (the certificate checked, name localhost) and with
    # `Connection: close` when NEW_CONN=1; the response head goes to body-file.head.
    local url="http://127.0.0.1:$1$REQ_PATH" extra=()
    if [[ ${3:-} == proxy ]]; then
        if (( TLS )); then
            url="https://localhost:$1$REQ_PATH"
            extra+=(--cacert "$OUT/tls/cert.pem" --resolve "localhost:$1:127.0.0.1")
        fi
        (( NEW_CONN )) && extra+=(-H 'Connection: close')
    fi
    curl -s -o "$2" -D "$2.head" -w '%{http_code}' --max-time 2 -X POST "${extra[@]}" \
        -H 'Content-Type: application/json' -H 'Authorization: Bearer sk-demo' \
        --data "$BODY" "$url" 2>/dev/null || true
}

wait_ready() { # pid port log [proxy]: up to 10 s for a 200 carrying the upstream's JSON
    local pid=$1 port=$2 i code
    for i in $(seq 1 100); do
        is_running "$pid" || { log "process exited early; last log lines:"; tail -n 20 "$3" >&2; return 1; }
        code=$(probe "$port" "$OUT/run/probe.body" "${4:-}")
        if [[ $code == 200 ]] && grep -q '"chat.completion"' "$OUT/run/probe.body"; then
            # NEW_CONN=1: the proxy must say it closes, or wrk would keep the connection.
            if [[ ${4:-} == proxy ]] && (( NEW_CONN )) &&
                    ! grep -qi '^connection:[[:space:]]*close' "$OUT/run/probe.body.head"; then
                log "port $port answered a 'Connection: close' request without 'connection: close':"
                cat "$OUT/run/probe.body.head" >&2
                return 1
            fi
            return 0
        fi
        sleep 0.1
    done
    log "no 200 with the upstream body on port $port after 10 s (last status: ${code:-none}); last log lines:"
    tail -n 20 "$3" >&2
    return 1
}

negotiated() { # name port: what a TLS handshake with the proxy negotiates (openssl s_client)
    local out
    out=$(openssl s_client -connect "127.0.0.1:$2" -servername localhost -alpn http/1.1 \
        -CAfile "$OUT/tls/cert.pem" </dev/null 2>&1 || true)
    printf '%s: %s\n' "$1" "$(printf '%s\n' "$out" | awk '
        /^New, / { sub(/^New, /, ""); p = $0 }
        /^Peer signature type:/ { s = $NF }
        /^Peer signing digest:/ { d = $NF }
        /^Server Temp Key:/ { sub(/^Server Temp Key: /, ""); k = $0 }
        /^ALPN protocol:/ { a = $NF }
        /^Verify return code:/ { sub(/^Verify return code: /, ""); v = $0 }
        END { printf "%s; key exchange %s; signature %s %s; ALPN %s; verify %s", p, k, s, d, a, v }')"
}

# ---------------------------------------------------------------- proxies
proxy_port() {
    case $1 in nginx) echo 18081 ;; haproxy) echo 18082 ;; shardgate|shardgate-epoll|shardgate-log|shardgate-base|shardgate-tenant|shardgate-models|shardgate-translate|shardgate-gemini|shardgate-bedrock|shardgate-responses|shardgate-full|shardgate-full-log|shardgate-full-store|shardgate-full-trace0|shardgate-full-trace1|shardgate-full-trace100|shardgate-base-full|shardgate-base-full-log) echo 18083 ;; esac
}

proxy_available() {
    case $1 in
        nginx) command -v "$NGINX_BIN" >/dev/null ;;
        haproxy) command -v "$HAPROXY_BIN" >/dev/null ;;
        shardgate|shardgate-epoll|shardgate-log|shardgate-tenant|shardgate-models|shardgate-translate|shardgate-gemini|shardgate-bedrock|shardgate-responses|shardgate-full|shardgate-full-log|shardgate-full-store|shardgate-full-trace0|shardgate-full-trace1|shardgate-full-trace100) [[ -x $SHARDGATE_BIN ]] ;;
        shardgate-base|shardgate-base-full|shardgate-base-full-log) [[ -n $SHARDGATE_BASE_BIN && -x $SHARDGATE_BASE_BIN ]] ;;
        *) return 1 ;;
    esac
}

start_proxy() { # name logfile -> sets PROXY_PID (no subshell: the proxy stays our child)
    local name=$1 logf=$2 prefix
    case $name in
        nginx)
            prefix=$OUT/run/nginx; rm -rf "$prefix"; mkdir -p "$prefix"
            taskset -c "$PROXY_CPU" "$NGINX_BIN" -p "$prefix/" -e "$prefix/error.log" \
                -c "$NGINX_CONF" >"$logf" 2>&1 &
            ;;
        haproxy)
            taskset -c "$PROXY_CPU" "$HAPROXY_BIN" -db -f "$HAPROXY_CONF" >"$logf" 2>&1 &
            ;;
        shardgate)
            taskset -c "$PROXY_CPU" "$SHARDGATE_BIN" --config "$(sg_conf "$PEERS/shardgate.toml")" >"$logf" 2>&1 &
            ;;
        shardgate-epoll)
            SHARDGATE_DRIVER=epoll taskset -c "$PROXY_CPU" "$SHARDGATE_BIN" \
                --config "$(sg_conf "$PEERS/shardgate.toml")" >"$logf" 2>&1 &
            ;;
        shardgate-log)
            # The access log goes to OUT/run/access.log (the config names a fixed path;
            # point it there with a copy).
            sed "s|@ACCESS_LOG@|$OUT/run/access.log|" "$PEERS/shardgate-log.toml" \
                >"$OUT/run/shardgate-log.toml"
            rm -f "$OUT/run/access.log"
            taskset -c "$PROXY_CPU" "$SHARDGATE_BIN" --config "$(sg_conf "$OUT/run/shardgate-log.toml")" \
                >"$logf" 2>&1 &
            ;;
        shardgate-base)
            taskset -c "$PROXY_CPU" "$SHARDGATE_BASE_BIN" --config "$(sg_conf "$PEERS/shardgate.toml")" \
                >"$logf" 2>&1 &
            ;;
        shardgate-tenant)
            taskset -c "$PROXY_CPU" "$SHARDGATE_BIN" --config "$(sg_conf "$PEERS/shardgate-tenant.toml")" \
                >"$logf" 2>&1 &
            ;;
        shardgate-models)
            taskset -c "$PROXY_CPU" "$SHARDGATE_BIN" --config "$(sg_conf "$PEERS/shardgate-models.toml")" \
                >"$logf" 2>&1 &
            ;;
        shardgate-full|shardgate-full-log|shardgate-base-full|shardgate-base-full-log)
            # The full LLM path: tenant key, model check, limits, model group, usage, metrics;
            # shardgate-full-log adds the access log (OUT/run/access.log, a copy of the config).
            local sink="" bin=$SHARDGATE_BIN
            [[ $name == *-log ]] && sink=$OUT/run/access.log
            [[ $name == shardgate-base-* ]] && bin=$SHARDGATE_BASE_BIN
            rm -f "$OUT/run/access.log"
            sed "s|^access_log = \"@ACCESS_LOG@\"|$( [[ -n $sink ]] && echo "access_log = \"$sink\"" )|" \
                "$PEERS/shardgate-full.toml" >"$OUT/run/$name.toml"
            taskset -c "$PROXY_CPU" "$bin" --config "$(sg_conf "$OUT/run/$name.toml")" \
                >"$logf" 2>&1 &
            ;;
        shardgate-full-trace0|shardgate-full-trace1|shardgate-full-trace100)
            # The full LLM path traced (issue 22): [telemetry] appended, sampling 0, 1 or 100 %
            # of requests; spans go to the rig's upstream nginx (it answers 200 to any POST,
            # /v1/traces included, on core 1 with wrk), in protobuf.
            local pct=${name#shardgate-full-trace} ratio
            ratio=$(awk -v p="$pct" 'BEGIN { printf "%.2f", p / 100 }')
            sed 's|^access_log = "@ACCESS_LOG@"||' "$PEERS/shardgate-full.toml" >"$OUT/run/$name.toml"
            printf '\n[telemetry]\notlp_endpoint = "http://127.0.0.1:18080"\nsample_ratio = %s\n' \
                "$ratio" >>"$OUT/run/$name.toml"
            taskset -c "$PROXY_CPU" "$SHARDGATE_BIN" --config "$(sg_conf "$OUT/run/$name.toml")" \
                >"$logf" 2>&1 &
            ;;
        shardgate-full-store)
            # The full LLM path with its tenant's key from the tenant store, not [[tenants]].
            sed -e 's|^access_log = "@ACCESS_LOG@"||' \
                -e "s|^tenant_store = .*|tenant_store = \"$PEERS/shardgate-full-store.json\"|" \
                "$PEERS/shardgate-full-store.toml" >"$OUT/run/$name.toml"
            taskset -c "$PROXY_CPU" "$SHARDGATE_BIN" --config "$(sg_conf "$OUT/run/$name.toml")" \
                >"$logf" 2>&1 &
            ;;
        shardgate-translate)
            SG_BENCH_ANTHROPIC_KEY=sk-bench taskset -c "$PROXY_CPU" "$SHARDGATE_BIN" \
                --config "$(sg_conf "$PEERS/shardgate-translate.toml")" >"$logf" 2>&1 &
            ;;
        shardgate-gemini|shardgate-bedrock|shardgate-responses)
            # Dummy credentials: the rig's nginx checks none.
            SG_BENCH_GEMINI_KEY=bench-gemini SG_BENCH_OPENAI_KEY=sk-bench \
                AWS_ACCESS_KEY_ID=AKIDBENCH AWS_SECRET_ACCESS_KEY=bench-secret \
                taskset -c "$PROXY_CPU" "$SHARDGATE_BIN" \
                --config "$(sg_conf "$PEERS/$name.toml")" >"$logf" 2>&1 &
            ;;
    esac
    PROXY_PID=$!
}

proxy_version() {
    case $1 in
        nginx) "$NGINX_BIN" -v 2>&1 | head -n1 ;;
        haproxy) "$HAPROXY_BIN" -v 2>&1 | head -n1 ;;
        shardgate-base|shardgate-base-full|shardgate-base-full-log) echo "$SHARDGATE_BASE_BIN (built $(date -r "$SHARDGATE_BASE_BIN" '+%F %T'))" ;;
        shardgate|shardgate-epoll|shardgate-log|shardgate-tenant|shardgate-models|shardgate-translate|shardgate-gemini|shardgate-bedrock|shardgate-responses|shardgate-full|shardgate-full-log|shardgate-full-store|shardgate-full-trace0|shardgate-full-trace1|shardgate-full-trace100)
            echo "$SHARDGATE_BIN ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet 2>/dev/null || echo '+dirty'), built $(date -r "$SHARDGATE_BIN" '+%F %T'))" ;;
    esac
}

# ---------------------------------------------------------------- wrk
WRK_EXTRA=()                        # NEW_CONN=1: a new connection per request
(( NEW_CONN )) && WRK_EXTRA+=(-H 'Connection: close')
WRK_ENV=()                          # TLS_RESUME=0: no session resumption by wrk
[[ -n $NO_RESUME_SO ]] && WRK_ENV+=("LD_PRELOAD=$NO_RESUME_SO")

run_wrk() { # port duration_s outfile; in the background + wait, so a signal is handled at once
    local wpid rc=0
    (   # a subshell, so that `times` can report wrk's CPU (reaped by timeout, then by us)
        trap - EXIT INT TERM
        rc=0
        timeout $(( $2 + 30 )) taskset -c "$LOAD_CPU" env "${WRK_ENV[@]}" "$WRK_BIN" -t1 -c"$CONNS" \
            -d"$2"s --latency "${WRK_EXTRA[@]}" \
            -s "$PEERS/post.lua" "$SCHEME://127.0.0.1:$1$REQ_PATH" >"$3" 2>&1 || rc=$?
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
    case $p in nginx|haproxy|shardgate|shardgate-epoll|shardgate-log|shardgate-base|shardgate-tenant|shardgate-models|shardgate-translate|shardgate-gemini|shardgate-bedrock|shardgate-responses|shardgate-full|shardgate-full-log|shardgate-full-store|shardgate-full-trace0|shardgate-full-trace1|shardgate-full-trace100|shardgate-base-full|shardgate-base-full-log) ;; *) die "unknown proxy '$p' in PROXIES" ;; esac
    if proxy_available "$p"; then
        selected+=("$p")
    else
        case $p in
            shardgate-base|shardgate-base-full|shardgate-base-full-log) log "SKIP $p: set SHARDGATE_BASE_BIN to an executable" ;;
            shardgate|shardgate-epoll|shardgate-log|shardgate-tenant|shardgate-models|shardgate-translate|shardgate-gemini|shardgate-bedrock|shardgate-responses|shardgate-full|shardgate-full-log|shardgate-full-store|shardgate-full-trace0|shardgate-full-trace1|shardgate-full-trace100) log "SKIP $p: $SHARDGATE_BIN not found or not executable (cargo build --release -p shardgate-engine, or set SHARDGATE_BIN)" ;;
            nginx) log "SKIP nginx: '$NGINX_BIN' not installed" ;;
            haproxy) log "SKIP haproxy: '$HAPROXY_BIN' not installed (apt-get install -y haproxy)" ;;
        esac
    fi
done
(( ${#selected[@]} )) || die "no proxy to measure"

for port in $UPSTREAM_PORT $(for p in "${selected[@]}"; do proxy_port "$p"; done); do
    port_busy "$port" && die "port $port on 127.0.0.1 is already in use; stop whatever holds it first"
done

mode_line() {
    local m="keep-alive"
    (( NEW_CONN )) && m="new connection per request (Connection: close)"
    if (( TLS )); then
        m="TLS, $m"
        if (( NEW_CONN )); then
            (( TLS_RESUME )) && m="$m, resumed handshakes (wrk reuses its session)" ||
                m="$m, full handshakes (no resumption)"
        fi
    else
        m="plain HTTP, $m"
    fi
    echo "$m"
}

{
    echo "date: $(date -Is)"
    echo "kernel: $(uname -r)  cpus: $(nproc)  CLK_TCK: $CLK_TCK"
    echo "rounds: $ROUNDS  duration: ${DUR_S}s  warmup: ${WARM_S}s  conns: $CONNS  proxy cpu: $PROXY_CPU  load cpu: $LOAD_CPU"
    echo "mode: $(mode_line)"
    if (( TLS )); then
        echo "openssl: $(openssl version 2>&1)"
        echo "certificate: $(openssl x509 -in "$OUT/tls/cert.pem" -noout -subject -ext subjectAltName 2>/dev/null | tr '\n' ' ')key $(openssl pkey -in "$OUT/tls/key.pem" -noout -text 2>/dev/null | awk '/ASN1 OID|NIST CURVE/ {printf "%s ", $NF}')"
        echo "nginx TLS: ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache $NGINX_SSL_SESSION_CACHE; ssl_session_tickets on; other ssl_* at nginx defaults ($NGINX_CONF)"
        echo "haproxy TLS: bind ... ssl crt $OUT/tls/haproxy.pem alpn http/1.1 ssl-min-ver TLSv1.2 ($HAPROXY_CONF)"
    fi
    if (( NEW_CONN )); then
        echo "tcp: ip_local_port_range $(tr '\t' ' ' </proc/sys/net/ipv4/ip_local_port_range)  tcp_tw_reuse $(</proc/sys/net/ipv4/tcp_tw_reuse)"
    fi
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

handshake_check() { # TLS=1 NEW_CONN=1: how wrk's connections look to nginx (1 s, not measured)
    local conf=$OUT/run/nginx-handshake-check.conf prefix=$OUT/run/nginx-check pid port=18081 f
    f=$OUT/tls/handshake-check.txt
    port_busy "$port" && { log "handshake check skipped: port $port busy"; return 0; }
    awk -v logf="$prefix/handshakes.log" '
        /^[[:space:]]*access_log off;/ && !done {
            print "    log_format hs \"$ssl_protocol $ssl_cipher $ssl_session_reused $connection_requests\";"
            print "    access_log " logf " hs;"; done = 1; next }
        { print }' "$NGINX_CONF" >"$conf"
    rm -rf "$prefix"; mkdir -p "$prefix"
    taskset -c "$PROXY_CPU" "$NGINX_BIN" -p "$prefix/" -e "$prefix/error.log" -c "$conf" \
        >"$prefix/stdout.log" 2>&1 &
    pid=$!
    STARTED_PIDS+=("$pid")
    if wait_ready "$pid" "$port" "$prefix/error.log" proxy; then
        : >"$prefix/handshakes.log"
        run_wrk "$port" 1 "$OUT/wrk/handshake-check.txt" || true
    fi
    stop_pid "$pid"; forget_pid "$pid"
    awk -v mode="$(mode_line)" '
        { n++; proto[$1 " " $2]++; if ($3 == "r") r++; if ($4 == 1) one++ }
        END {
            printf "handshake check (nginx, wrk 1 s, %s): %d requests, %d of them the first on their connection, %d on a resumed session (%.1f%%)\n", mode, n, one, r, n ? 100 * r / n : 0
            for (k in proto) printf "  %s: %d\n", k, proto[k] }' "$prefix/handshakes.log" >"$f"
    cat "$f" >&2
    HS_REQ=$(awk '{n++} END {print n + 0}' "$prefix/handshakes.log")
    HS_FIRST=$(awk '$4 == 1 {n++} END {print n + 0}' "$prefix/handshakes.log")
    HS_RESUMED=$(awk '$3 == "r" {n++} END {print n + 0}' "$prefix/handshakes.log")
    (( HS_REQ > 0 )) || die "handshake check: no request logged (see $prefix/error.log, $OUT/wrk/handshake-check.txt)"
    (( HS_FIRST * 100 >= HS_REQ * 99 )) || die "handshake check: wrk did not make a new connection per request"
    if (( TLS_RESUME )); then
        (( HS_RESUMED * 100 >= HS_REQ * 90 )) || log "WARNING: TLS_RESUME=1 but only $HS_RESUMED of $HS_REQ handshakes were resumed"
    else
        (( HS_RESUMED * 100 <= HS_REQ )) || die "handshake check: TLS_RESUME=0 but $HS_RESUMED of $HS_REQ handshakes were resumed (the tls-no-resume shim did not work)"
    fi
    echo "handshake check: $(head -n1 "$f")" >>"$OUT/env.txt"
}
if (( TLS && NEW_CONN )); then
    wait_quiet
    handshake_check
fi

RAW=$OUT/raw.tsv
printf 'round\tproxy\trequests\treq_per_s\tp50_ms\tp99_ms\tproxy_ticks\tcpu_us_per_req\tproxy_cpu_pct\tupstream_cpu_us_per_req\trss_kib\tnprocs\tnon2xx\tsock_errors\tsteal_ticks_proxy_cpu\tsteal_ticks_load_cpu\tforeign_cpu_pct\tstatus\tp999_ms\n' >"$RAW"

one_run() { # round proxy
    local r=$1 name=$2 port logf pid pids t0 t1 u0 u1 up_pids wout req rps p50 p99 non2xx sockerr
    local rss cpu_us pct up_us s0p s0l s1p s1l b0 b1 wt foreign status=ok tw_proxy=0 tw_wrk=0
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
    if ! wait_ready "$pid" "$port" "$logf" proxy; then
        [[ $name == nginx ]] && tail -n 5 "$OUT/run/nginx/error.log" >&2 2>/dev/null
        stop_pid "$pid"; forget_pid "$pid"
        printf '%s\t%s\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\tstart_failed\n' "$r" "$name" >>"$RAW"
        return 1
    fi
    if (( TLS )) && ! grep -q "^$name: " "$OUT/tls/negotiated.txt" 2>/dev/null; then
        negotiated "$name" "$port" >>"$OUT/tls/negotiated.txt"
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
    # post.lua's done() prints the tail wrk's table leaves out (microseconds)
    p999=$(awk '$1 == "tail_us:" {printf "%.3f", $3 / 1000; exit}' "$wout"); p999=${p999:-nan}
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF; exit}' "$wout"); non2xx=${non2xx:-0}
    sockerr=$(awk '/Socket errors:/ {gsub(/,/, ""); print $4 + $6 + $8 + $10; exit}' "$wout"); sockerr=${sockerr:-0}
    if (( NEW_CONN )); then # who keeps the TIME_WAIT sockets (the side that closed first), ports left
        tw_proxy=$(ss -Htan state time-wait "sport = :$port" 2>/dev/null | wc -l)
        tw_wrk=$(ss -Htan state time-wait "dport = :$port" 2>/dev/null | wc -l)
        printf '%s\t%s\t%s\t%s\n' "$r" "$name" "$tw_proxy" "$tw_wrk" >>"$OUT/time-wait.tsv"
    fi
    if [[ $status == ok ]]; then
        if [[ -z $req || $req -eq 0 ]]; then status=no_requests
        elif (( non2xx > 0 )); then status=non2xx   # wrong answers are cheap: do not count the run
        elif (( sockerr * 100 > req * SOCK_ERR_MAX_PCT )); then status=sock_errors
        fi
    fi
    if [[ $status == ok || $status == non2xx || $status == sock_errors ]]; then
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
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$r" "$name" "${req:-}" "${rps:-}" "$p50" "$p99" "$(( ${t1:-0} - ${t0:-0} ))" "${cpu_us:-}" "${pct:-}" \
        "${up_us:-}" "$rss" "${#pids[@]}" "$non2xx" "$sockerr" "$(( s1p - s0p ))" "$(( s1l - s0l ))" "${foreign:-}" "$status" "$p999" >>"$RAW"
    LAST_STATUS=$status
    log "round $r $name: ${req:-?} req, ${rps:-?} req/s, p50 ${p50} ms, p99 ${p99} ms, p99.9 ${p999} ms, CPU ${cpu_us:-?} us/req (${pct:-?}% of core $PROXY_CPU), RSS ${rss} KiB, non-2xx $non2xx, socket errors $sockerr$( (( NEW_CONN )) && echo ", TIME_WAIT proxy side $tw_proxy / wrk side $tw_wrk"), other load ${foreign:-?}% [$status]"
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

nginx_cpu=nan; nginx_p999=nan
[[ " ${selected[*]} " == *" nginx "* ]] && { nginx_cpu=$(col nginx 8 | median); nginx_p999=$(col nginx 19 | median); }
{
    printf 'CPU per proxied request, medians over ok runs (proxy on core %s; upstream + wrk on core %s; %s conns, %ss per run)\n' \
        "$PROXY_CPU" "$LOAD_CPU" "$CONNS" "$DUR_S"
    printf 'mode: %s\n' "$(mode_line)"
    printf '%-19s %6s %10s %9s %9s %9s %12s %15s %8s %9s %9s %10s %9s\n' \
        proxy runs req/s p50_ms p99_ms p99.9_ms cpu_us/req cpu_min..max proxy% rss_MiB vs_nginx p99.9_vs_ng sock_err
    for p in "${selected[@]}"; do
        total=$(awk -F'\t' -v p="$p" 'NR > 1 && $2 == p' "$RAW" | wc -l)
        ok=$(col "$p" 8 | wc -l)
        cpu=$(col "$p" 8 | median)
        lo=$(col "$p" 8 | sort -g | head -n1); hi=$(col "$p" 8 | sort -g | tail -n1)
        ratio=$(awk -v a="$cpu" -v b="$nginx_cpu" 'BEGIN { if (a == "nan" || b == "nan" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }')
        rss=$(col "$p" 11 | median)
        rss=$(awk -v k="$rss" 'BEGIN { if (k == "nan") print "nan"; else printf "%.1f", k / 1024 }')
        serr=$(awk -F'\t' -v p="$p" 'NR > 1 && $2 == p && $14 != "" {n += $14} END {print n + 0}' "$RAW")
        p999=$(col "$p" 19 | median)
        p999_ratio=$(awk -v a="$p999" -v b="$nginx_p999" 'BEGIN { if (a == "nan" || b == "nan" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }')
        printf '%-19s %6s %10.0f %9.3f %9.3f %9.3f %12.2f %15s %8.1f %9s %9s %10s %9s\n' "$p" "$ok/$total" \
            "$(col "$p" 4 | median)" "$(col "$p" 5 | median)" "$(col "$p" 6 | median)" "$p999" \
            "$cpu" "${lo:-nan}..${hi:-nan}" "$(col "$p" 9 | median)" "$rss" "$ratio" "$p999_ratio" "$serr"
    done
    noisy=$(awk -F'\t' 'NR > 1 && $18 == "noisy"' "$RAW" | wc -l)
    (( noisy == 0 )) || printf 'NOTE: %s run(s) left out as noisy: other processes used > %s%% of a core, or steal took > %s%% of the proxy core, meanwhile (see foreign_cpu_pct, steal_ticks_proxy_cpu); rerun on a quiet machine, or FOREIGN_MAX_PCT=100 STEAL_MAX_PCT=100 to keep them\n' "$noisy" "$FOREIGN_MAX_PCT" "$STEAL_MAX_PCT"
    serr_runs=$(awk -F'\t' 'NR > 1 && $18 == "sock_errors"' "$RAW" | wc -l)
    (( serr_runs == 0 )) || printf 'NOTE: %s run(s) left out: wrk socket errors above %s%% of their requests (raw.tsv column 14, wrk/*.txt)\n' "$serr_runs" "$SOCK_ERR_MAX_PCT"
    printf 'p99.9_ms = wrk'"'"'s 99.9th latency percentile (post.lua'"'"'s done()); vs_nginx and p99.9_vs_ng = ratio of the medians to nginx'"'"'s in this run\n'
    printf 'sock_err = wrk "Socket errors" (connect+read+write+timeout) summed over all the proxy'"'"'s runs\n'
    printf 'proxy%% = share of core %s the proxy used during the run (near 100 = the proxy was the bottleneck)\n' "$PROXY_CPU"
    printf 'raw per-run numbers (incl. upstream CPU/req and steal ticks): %s\n' "$RAW"
} | tee "$OUT/summary.txt"
