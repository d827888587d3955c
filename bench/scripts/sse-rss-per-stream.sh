#!/bin/bash
# RSS per open SSE stream (issue 21), shardgate against nginx (proxy_buffering off) and HAProxy.
#
#   cargo build --release -p shardgate-bench -p shardgate-engine
#   bench/scripts/sse-rss-per-stream.sh            # N=1000 streams
#
# Each proxy starts fresh on core 0 (the peer configs of bench/peers/, ports moved to PORT_BASE),
# the mock upstream and the load generator share core 1. The mock answers a stream's head at
# once, its first token after 200 ms, then 20 tokens 200 ms apart (4.2 s a stream). After one
# request through the proxy its RSS (VmRSS of the proxy and its children) is read idle, then in
# the middle of the first batch of N streams (t = 2.0 s) and of the second one (t = 6.2 s, the
# upstream connections pooled by then). Per stream = (RSS - idle) / N. The load's JSON result
# (TTFB of both batches) is kept beside it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=${W:-$ROOT/target/release}
N=${N:-1000}
PORT_BASE=${PORT_BASE:-28080}
OUT=${OUT:-$(mktemp -d /tmp/sse-rss.XXXXXX)}
B='{"model":"demo","stream":true,"messages":[{"role":"user","content":"Hello World!"}]}'
up=$PORT_BASE
mkdir -p "$OUT/peers" "$OUT/nginx"
for f in shardgate-sse.toml nginx-proxy-sse.conf haproxy-sse.cfg; do
    sed -e "s/18080/$up/g; s/18081/$((up + 1))/g; s/18082/$((up + 2))/g; s/18083/$((up + 3))/g" \
        "$ROOT/bench/peers/$f" >"$OUT/peers/$f"
done
rss() {
    local s=0 r
    for p in $1 $(pgrep -P "$1" || true); do
        r=$(awk '/VmRSS/{print $2}' "/proc/$p/status" 2>/dev/null || true)
        s=$((s + ${r:-0}))
    done
    echo $s
}
taskset -c 1 "$W/shardgate-bench" upstream --listen "127.0.0.1:$up" --ttft-ms 200 --chunks 20 \
    --chunk-interval-ms 200 >"$OUT/upstream.log" 2>&1 &
UP=$!
trap 'kill $UP 2>/dev/null || true' EXIT
sleep 0.5
for proxy in shardgate nginx haproxy; do
    case $proxy in
    shardgate)
        taskset -c 0 "$W/shardgate" -c "$OUT/peers/shardgate-sse.toml" --admin-listen off --instance "sse-rss-$$" \
            >"$OUT/shardgate.log" 2>&1 &
        port=$((up + 3)) ;;
    nginx)
        command -v nginx >/dev/null || continue
        taskset -c 0 nginx -p "$OUT/nginx" -e "$OUT/nginx/error.log" \
            -c "$OUT/peers/nginx-proxy-sse.conf" &
        port=$((up + 1)) ;;
    haproxy)
        command -v haproxy >/dev/null || continue
        taskset -c 0 haproxy -db -f "$OUT/peers/haproxy-sse.cfg" >"$OUT/haproxy.log" 2>&1 &
        port=$((up + 2)) ;;
    esac
    px=$!
    sleep 1.5
    curl -s -o /dev/null "http://127.0.0.1:$port/v1/chat/completions" \
        -H 'Content-Type: application/json' -d "$B"
    sleep 0.3
    idle=$(rss $px)
    taskset -c 1 "$W/shardgate-bench" load -c "$N" -d 9s --warmup 0s --timeout-ms 30000 --stream \
        --json --method POST -H "Content-Type: application/json" -H "Authorization: Bearer sk-demo" \
        --body "$B" "http://127.0.0.1:$port/v1/chat/completions" >"$OUT/load-$proxy.json" 2>/dev/null &
    ld=$!
    sleep 2.0
    r1=$(rss $px)
    sleep 4.2
    r2=$(rss $px)
    wait $ld
    ttfb=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); s=d['stream']; print('streams', s['streams'], 'ttfb_p50_ms', s['ttfb_us']['p50']/1000, 'ttfb_p99_ms', s['ttfb_us']['p99']/1000, 'errors', sum(d['errors'].values()))" "$OUT/load-$proxy.json")
    echo "$proxy idle_kib=$idle batch1_kib=$r1 batch2_kib=$r2 per_stream_kib=$(((r1 - idle) / N)),$(((r2 - idle) / N)) $ttfb"
    kill $px
    sleep 1.5
done
echo "output: $OUT"
