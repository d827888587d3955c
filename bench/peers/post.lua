-- wrk script: the benchmark request, a small OpenAI chat completion.
--   wrk -t1 -c64 -d10s --latency -s bench/peers/post.lua http://127.0.0.1:PORT/v1/chat/completions
wrk.method = "POST"
wrk.body = '{"model":"demo","messages":[{"role":"user","content":"Hello World!"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-demo"
