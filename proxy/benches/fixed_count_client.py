#!/usr/bin/env python3
"""Fixed-count keep-alive HTTP/1.1 load: N requests over C connections (proxy/benches/callgrind.sh)."""
import asyncio, sys, time
N = int(sys.argv[1]); C = int(sys.argv[2]); PORT = int(sys.argv[3]) if len(sys.argv) > 3 else 18184
REQ = b"GET /bench/ok HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: fixedcount\r\nAccept: */*\r\n\r\n"
async def worker(n, stats):
    r, w = await asyncio.open_connection("127.0.0.1", PORT)
    for _ in range(n):
        w.write(REQ)
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
        status = head[9:12]
        cl = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                cl = int(line.split(b":")[1])
        if cl:
            await r.readexactly(cl)
        stats[status] = stats.get(status, 0) + 1
    w.close()
async def main():
    stats = {}
    t = time.time()
    await asyncio.wait_for(asyncio.gather(*[worker(N // C, stats) for _ in range(C)]), 600)
    print(stats, f"{time.time()-t:.1f}s", file=sys.stderr)
    # A count over refusals or errors would measure the wrong thing.
    if stats != {b"200": N // C * C}:
        sys.exit(f"expected {N // C * C} answers of 200, got {stats}")
asyncio.run(main())
