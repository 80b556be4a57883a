"""A light HTTP/1.1 load generator for `bench/bench_serving.py`: run in a process of its own.

    python bench/load_gen.py SPEC.json          # prints one JSON line of results

SPEC: {"host", "port", "path", "bodies": [str, ...], "mode": "closed" | "open", "connections",
"rate" (open loop: requests/s), "seconds", "warmup"}.

It speaks HTTP/1.1 over keep-alive connections with asyncio protocols on uvloop: a request is
bytes prepared in advance, a response is read up to its Content-Length. That costs the
client a tenth to a thirtieth of what httpx does per request, so on a 2-core machine the cores go
to the server measured, not to its client.

- closed loop: `connections` clients, each sending its next request when the last one is
  answered; latency is from sending to the last byte of the answer.
- open loop: requests are due at a fixed rate, one every 1/rate s, whatever the server does;
  each goes on an idle connection (up to `connections`), or waits for one. Latency is from
  when the request was due, so time spent waiting behind a slow answer counts (no
  coordinated omission).

Only requests begun after the warm-up are recorded; a non-200 answer counts as an error.
"""

from __future__ import annotations

import asyncio
import collections
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np


class _Conn(asyncio.Protocol):
    "One keep-alive connection: one request at a time; `done` is called with (status, sent_at) when it is answered."

    def __init__(self, done):
        self.done, self.buf, self.need, self.status, self.sent = done, bytearray(), None, 0, 0.0
        self.transport = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)

    def send(self, request: bytes, due: float) -> None:
        self.sent = due
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buf[:end]).lower()
                self.status = int(head[9:12])
                at = head.find(b"content-length:")
                if at < 0:
                    raise RuntimeError(f"an answer without Content-Length: {head[:200]!r}")
                eol = head.find(b"\r\n", at)
                length = int(head[at + 15 : eol if eol > 0 else None])
                del self.buf[: end + 4]
                self.need = length
            if len(self.buf) < self.need:
                return
            del self.buf[: self.need]
            self.need = None
            self.done(self, self.status, self.sent)


def _requests(spec: dict) -> list[bytes]:
    head = f"POST {spec['path']} HTTP/1.1\r\nHost: {spec['host']}:{spec['port']}\r\nContent-Type: application/json\r\n"
    return [f"{head}Content-Length: {len(b.encode())}\r\n\r\n{b}".encode() for b in spec["bodies"]]


async def run(spec: dict) -> dict:
    loop = asyncio.get_running_loop()
    clock = time.perf_counter  # uvloop's loop.time() counts whole milliseconds
    requests = _requests(spec)
    n_conn, seconds, warmup = int(spec["connections"]), float(spec["seconds"]), float(spec.get("warmup", 1.0))
    latencies, errors, state = [], [0], {"i": 0}
    begin = clock() + warmup
    end = begin + seconds
    closed = spec["mode"] == "closed"
    idle: collections.deque = collections.deque()
    waiting: collections.deque = collections.deque()  # open loop: due times of requests with no idle connection
    finished = loop.create_future()

    def next_request() -> bytes:
        state["i"] += 1
        return requests[state["i"] % len(requests)]

    def done(conn: _Conn, status: int, due: float) -> None:
        now = clock()
        answered[0] += 1
        if due >= begin:
            latencies.append(now - due)
            errors[0] += status != 200
        if closed:
            if now < end:
                conn.send(next_request(), now)
            else:
                stopped[0] += 1
                if stopped[0] == n_conn:
                    finished.set_result(None)
        elif waiting:
            conn.send(next_request(), waiting.popleft())
        else:
            idle.append(conn)

    answered = [0]  # every answer, warm-up included (the server's CPU time is divided by it)
    stopped = [0]  # closed loop: connections that have sent their last request
    conns = []
    for _ in range(n_conn):
        _, proto = await loop.create_connection(lambda: _Conn(done), spec["host"], int(spec["port"]))
        conns.append(proto)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    if closed:
        start = clock()
        for c in conns:
            c.send(next_request(), start)
        await asyncio.wait_for(finished, warmup + seconds + 60)
        elapsed = seconds  # requests due in [begin, end): each connection's last one ends a little after `end`
    else:
        idle.extend(conns)
        rate = float(spec["rate"])
        start = clock()
        k = 0
        while True:
            now = clock()
            while start + k / rate <= now:  # every request due by now goes (late ones keep their due time)
                due = start + k / rate
                if due >= end:
                    break
                if idle:
                    idle.popleft().send(next_request(), due)
                else:
                    waiting.append(due)
                k += 1
            if start + k / rate >= end:
                break
            await asyncio.sleep(max(0.0, start + k / rate - clock()))
        deadline = clock() + 60
        while (waiting or len(idle) < n_conn) and clock() < deadline:
            await asyncio.sleep(0.005)
        elapsed = seconds
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    for c in conns:
        c.transport.close()
    lat = np.asarray(latencies) * 1000
    return {
        "rps": len(lat) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "p999_ms": float(np.percentile(lat, 99.9)),
        "max_ms": float(lat.max()),
        "errors": errors[0],
        "n": len(lat),
        "answered": answered[0],
        "client_cpu_us": 1e6 * (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / max(len(lat), 1),
    }


def main(argv=None) -> int:
    import uvloop

    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    t0 = time.perf_counter()
    out = uvloop.run(run(spec))
    out["wall_s"] = time.perf_counter() - t0
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
