-- wrk script: the benchmark request, a small OpenAI chat completion.
--   wrk -t1 -c64 -d10s --latency -s bench/peers/post.lua http://127.0.0.1:PORT/v1/chat/completions
wrk.method = "POST"
wrk.body = '{"model":"demo","messages":[{"role":"user","content":"Hello World!"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-demo"

-- The tail beyond wrk's --latency table (50/75/90/99 %): proxy-cpu.sh reads these lines.
done = function(summary, latency, requests)
    io.write(string.format("tail_us: p99.9 %d p99.99 %d max %d\n",
        latency:percentile(99.9), latency:percentile(99.99), latency.max))
end
