"""A small HTTP load generator (the fallback where `wrk` is not installed).

    python -m bench._load URL SECONDS CONNECTIONS BODY_FILE [HEADER=VALUE ...]

Keeps CONNECTIONS requests in flight on keep-alive connections for SECONDS
and prints `requests=N seconds=S errors=E`. Slower than wrk (it is Python),
so the server it loads is less busy: figures from it understate ratios near
1 less than absolute rates, but prefer wrk.
"""

from __future__ import annotations

import asyncio
import sys
import time

import httpx


async def _run(url: str, seconds: float, conns: int, body: bytes, headers: dict[str, str]) -> None:
    done = errors = 0
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        end = time.perf_counter() + seconds
        start = time.perf_counter()

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < end:
                r = await client.post(url, content=body, headers=headers)
                done += 1
                if r.status_code != 200:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(conns)))
        took = time.perf_counter() - start
    print(f"requests={done} seconds={took:.3f} errors={errors}")


def main() -> None:
    url, seconds, conns, body_file, *hs = sys.argv[1:]
    with open(body_file, "rb") as f:
        body = f.read()
    headers = dict(h.split("=", 1) for h in hs)
    asyncio.run(_run(url, float(seconds), int(conns), body, headers))


if __name__ == "__main__":
    main()
