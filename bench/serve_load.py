"""Load test of `fedrec serve` (issue #23): p50 / p99 latency and requests per second of GET /recommend/{user} on
this machine, with the model swapped under load (as when a newer run or feedback lands), counting failed requests.

It serves one silo of a finished run (`make run` first, or any params whose state holds a run) in this process with
uvicorn (one worker), and drives it with an asyncio httpx client at a fixed concurrency for a fixed time; users are
drawn at random from the silo's own users. Writes results/serve_load.json and prints a one-line summary.

Usage: .venv/bin/python bench/serve_load.py [--silo 0] [--seconds 10] [--concurrency 16] [--swap-every 1.0]
       [-S key=value ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from pathlib import Path

from fedrec.core import env
from fedrec.core.config import load_config, parse_overrides


def main() -> None:
    env.apply_defaults()
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("-S", "--set", dest="sets", action="append", default=[])
    ap.add_argument("--silo", default="0")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--swap-every", type=float, default=1.0, help="seconds between forced model swaps (0: none)")
    ap.add_argument("--out", default="results/serve_load.json")
    args = ap.parse_args()
    import httpx
    import numpy as np
    import uvicorn

    from fedrec.orchestration.ops.procs import free_port
    from fedrec.silo.http import make_app

    cfg = load_config(args.params, parse_overrides(args.sets))
    app = make_app(cfg, args.silo)
    live = app.state.live
    users = sorted(live.current.model_users)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", workers=1))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    rng = np.random.default_rng(0)
    latencies: list[float] = []
    failures: dict[str, int] = {}
    swaps = 0
    stop_at = time.perf_counter() + args.seconds

    async def worker(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop_at:
            user = int(users[rng.integers(len(users))])
            start = time.perf_counter()
            try:
                response = await client.get(f"/recommend/{user}", params={"k": args.k})
                if response.status_code != 200:
                    failures[str(response.status_code)] = failures.get(str(response.status_code), 0) + 1
                    continue
            except httpx.HTTPError as exc:
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                continue
            latencies.append(time.perf_counter() - start)

    def swapper() -> None:
        nonlocal swaps
        while args.swap_every > 0 and time.perf_counter() + args.swap_every < stop_at:
            time.sleep(args.swap_every)
            live.current._loaded = None  # stale: the watcher's next look builds and swaps in a fresh recommender
            live.reload()
            swaps += 1

    async def run() -> None:
        limits = httpx.Limits(max_connections=args.concurrency)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30) as client:
            await asyncio.gather(*(worker(client) for _ in range(args.concurrency)))

    swap_thread = threading.Thread(target=swapper, daemon=True)
    started = time.perf_counter()
    swap_thread.start()
    asyncio.run(run())
    wall = time.perf_counter() - started
    swap_thread.join()
    server.should_exit = True
    ms = sorted(1000 * x for x in latencies)
    result = {"silo": args.silo, "items": int(live.current.catalogue.shape[0]), "users": len(users),
              "concurrency": args.concurrency, "seconds": wall, "requests": len(ms),
              "rps": len(ms) / wall, "p50_ms": statistics.median(ms) if ms else None,
              "p99_ms": float(np.percentile(ms, 99)) if ms else None, "failed": failures, "swaps": swaps}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
