#!/usr/bin/env python3
"""Opens N idle Pusher connections (each subscribed to one channel) and
reports the server's RSS growth per connection, read from /proc/<pid>/status.

Usage: loadtest/idle_rss.py --pid PID --port 6001 --key app-key -n 10000

Kernel socket buffers are not part of a process's RSS; they are reported
apart from /proc/net/sockstat (TCP "mem", in pages) before and after.
Only the standard library is used; every wait is bounded.
"""
import argparse, asyncio, base64, json, os, sys, time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def tcp_mem_pages():
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                parts = line.split()
                return int(parts[parts.index("mem") + 1])
    return 0


async def open_one(host, port, key, channel, writers, sources):
    src = sources[len(writers) % len(sources)]
    r, w = await asyncio.wait_for(
        asyncio.open_connection(host, port, local_addr=(src, 0)), 10)
    k = base64.b64encode(os.urandom(16)).decode()
    w.write((f"GET /app/{key}?protocol=7&client=py&version=1 HTTP/1.1\r\n"
             f"Host: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             f"Sec-WebSocket-Key: {k}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
    hdr = await asyncio.wait_for(r.readexactly(2), 10)
    n = hdr[1] & 0x7F
    if n == 126:
        n = int.from_bytes(await r.readexactly(2), "big")
    await asyncio.wait_for(r.readexactly(n), 10)  # connection_established
    payload = json.dumps({"event": "pusher:subscribe", "data": {"channel": channel}}).encode()
    mask = os.urandom(4)
    frame = bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    w.write(frame)
    await w.drain()
    hdr = await asyncio.wait_for(r.readexactly(2), 10)
    await asyncio.wait_for(r.readexactly(hdr[1] & 0x7F), 10)  # subscription_succeeded
    writers.append((r, w))


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=6001)
    ap.add_argument("--key", default="app-key")
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=200)
    a = ap.parse_args()
    sources = [f"127.0.0.{i}" for i in range(2, 10)]
    before, tcp_before = rss_kib(a.pid), tcp_mem_pages()
    writers = []
    t0 = time.monotonic()
    while len(writers) < a.n:
        k = min(a.batch, a.n - len(writers))
        await asyncio.gather(*(open_one(a.host, a.port, a.key, f"idle-{i % 100}", writers, sources) for i in range(k)))
    elapsed = time.monotonic() - t0
    await asyncio.sleep(2)
    after, tcp_after = rss_kib(a.pid), tcp_mem_pages()
    per = (after - before) * 1024 / a.n
    print(json.dumps({
        "connections": a.n, "connect_seconds": round(elapsed, 2),
        "server_rss_before_kib": before, "server_rss_after_kib": after,
        "server_rss_bytes_per_connection": round(per),
        "kernel_tcp_mem_pages_delta": tcp_after - tcp_before,
    }))
    for _, w in writers:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
