#!/usr/bin/env python3
"""Open N idle keep-alive HTTP/1.1 connections to HOST:PORT and hold them.

Each connection sends one complete `GET PATH HTTP/1.1` request, reads the whole answer
(Content-Length or chunked body), checks for a 200, and is then left open and idle.

Protocol with the caller (bench/scripts/idle-rss.sh), one line each on stdout:
  OPEN ok=<n> failed=<n> non200=<n> server_close=<n> seconds=<s>
then it waits for a line (or EOF) on stdin, bounded by --hold seconds, checks which
connections the server has closed meanwhile, prints
  STILL_OPEN <n>
and exits (closing everything). Plain sockets only; standard library only.
"""
import argparse
import resource
import select
import socket
import sys
import time


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        sys.exit(f"{sys.argv[0]}: open-file limit {soft} < {need} needed; raise ulimit -n")


def read_response(sock, deadline):
    """Read one HTTP/1.1 response; return (status, server_wants_close)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if time.monotonic() > deadline or len(buf) > 65536:
            raise TimeoutError("no complete response head")
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    close = headers.get(b"connection") == b"close"
    if b"chunked" in headers.get(b"transfer-encoding", b""):
        while not body.endswith(b"0\r\n\r\n"):  # good enough for a short local answer
            if time.monotonic() > deadline:
                raise TimeoutError("chunked body not finished")
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside the chunked body")
            body += chunk
    else:
        length = int(headers.get(b"content-length", b"0"))
        while len(body) < length:
            if time.monotonic() > deadline:
                raise TimeoutError("body not finished")
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside the body")
            body += chunk
    return status, close


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--path", default="/health/liveness")
    ap.add_argument("--timeout", type=float, default=5.0, help="per-connection seconds")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds for opening them all")
    ap.add_argument("--hold", type=float, default=600.0, help="max seconds to hold them")
    ap.add_argument("--sources", type=int, default=1,
                    help="spread connections over N source addresses 127.0.0.F..127.0.0.F+N-1 "
                         "(one loopback address has ~28k ephemeral ports)")
    ap.add_argument("--source-first", type=int, default=1, metavar="F",
                    help="last byte of the first source address (default 1: 127.0.0.1); "
                         "several clients at once use different ones")
    args = ap.parse_args()
    if args.host not in ("127.0.0.1", "localhost"):
        sys.exit("idle_conns: loopback only")
    if args.sources < 1 or not 1 <= args.source_first <= 255 - args.sources:
        sys.exit("idle_conns: source addresses must lie in 127.0.0.1..127.0.0.254")
    raise_nofile(args.count + 64)

    request = f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n\r\n".encode()
    socks, failed, non200, server_close = [], 0, 0, 0
    start = time.monotonic()
    for i in range(args.count):
        if time.monotonic() - start > args.budget:
            failed += 1
            continue
        try:
            bind = args.sources > 1 or args.source_first != 1
            source = (f"127.0.0.{args.source_first + i % args.sources}", 0) if bind else None
            s = socket.create_connection((args.host, args.port), timeout=args.timeout,
                                         source_address=source)
        except OSError as e:
            failed += 1
            if failed <= 3:
                print(f"idle_conns: connect failed: {e}", file=sys.stderr)
            continue
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(request)
            status, close = read_response(s, time.monotonic() + args.timeout)
        except (OSError, ValueError, IndexError) as e:
            failed += 1
            if failed <= 3:
                print(f"idle_conns: request failed: {e!r}", file=sys.stderr)
            s.close()
            continue
        if status != 200:
            non200 += 1
        if close:
            server_close += 1
        socks.append(s)
    took = time.monotonic() - start
    print(f"OPEN ok={len(socks)} failed={failed} non200={non200} "
          f"server_close={server_close} seconds={took:.2f}", flush=True)

    select.select([sys.stdin], [], [], args.hold)  # wait for the caller (bounded)

    still_open = 0
    for s in socks:
        s.setblocking(False)
        try:
            data = s.recv(1, socket.MSG_PEEK)
            if data:  # unexpected bytes, but the connection is open
                still_open += 1
        except BlockingIOError:
            still_open += 1
        except OSError:
            pass
    print(f"STILL_OPEN {still_open}", flush=True)
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
