"""Load test of `fedrec serve` (issue #23): p50 / p99 latency and requests per second of GET /recommend/{user}?k=10
on this machine, with the model swapped under load, counting every failed request.

The server is the real thing: `fedrec serve --silo S` in its own process (uvicorn, one worker, uvloop + httptools),
over a finished federated run in a scratch workspace that this script trains first (`fedrec run`, a few rounds:
serving speed does not depend on the model's quality). The client is `wrk` (C, apt-get install wrk), one thread,
``--connections`` keep-alive connections, each request for a user drawn at random from the silo's own users. While
wrk runs, the silo's saved model file is touched every ``--swap-every`` seconds: the server's watcher sees a newer
state, builds a fresh recommender off the request path and swaps it in, as when a new run or feedback lands. A failed
request is any socket error, timeout or non-2xx answer wrk counts.

Catalogues (``--catalogue``): ``ml-100k`` (the region silos, 1,682 items) and ``27k`` (synthetic, 27,278 items as
ML-20M, 4,000 users in 4 IID silos). Each is measured with the server's answer cache (the default: an answer is
kept until the next swap, and a new snapshot answers the latest cached requests before it is swapped in) and
without it (``--answer-cache 0``: every request scored, top-K, explanations), each steady (no swap) and with swaps.
Writes results/serve_load.json and the ``serve_load`` section of BENCHMARKS.md.

Usage: FEDREC_DATA_DIR=../shared/datasets/ml-100k .venv/bin/python bench/serve_load.py [--seconds 10]
       [--connections 16] [--swap-every 1.0] [--catalogue ml-100k --catalogue 27k]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

from benchkit import (  # bench/benchkit.py (this script's directory is on sys.path)
    BENCH_MD,
    RESULTS,
    ROOT,
    ROW_TIMEOUT_S,
    BadArgument,
    Workspace,
    as_sets,
    begin,
    child_env,
    fedrec_cmd,
    init_store,
    machine,
    markdown_table,
    replace_section,
    run_fedrec_summary,
)

WORK = ROOT / ".bench" / "serve_load"
CATALOGUES = {
    "ml-100k": [],
    "27k": ["data.source=synthetic", "data.synthetic.n_users=4000", "data.synthetic.n_items=27278",
            "data.synthetic.interactions_per_user=40", "data.synthetic.n_factors=16", "partition.scheme=iid",
            "partition.n_silos=4"],
}
LUA = """
local users = {%s}
math.randomseed(%d)
request = function()
  return wrk.format("GET", "/recommend/" .. users[math.random(#users)] .. "?k=%d")
end
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * _UNITS[unit]


def parse_wrk(out: str) -> dict:
    """wrk --latency's text: requests, seconds, rps, p50/p90/p99, failures (socket errors and non-2xx)."""
    pct = {p: _ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", out, re.M)}
    done = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    seconds = _ms(done.group(2) + done.group(3)) / 1e3
    return {"requests": int(done.group(1)), "seconds": seconds, "rps": int(done.group(1)) / seconds,
            "p50_ms": pct.get("50"), "p90_ms": pct.get("90"), "p99_ms": pct.get("99"),
            "socket_errors": sum(map(int, socket.groups())) if socket else 0,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def wait_healthy(port: int, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"fedrec serve exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json().get("run_id"):
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError("fedrec serve did not answer /health in time")


def measure(ws: Workspace, sets: list[str], silo: str, users: list[int], model_file: Path, args, cache: int,
            swap_every: float, log: Path) -> dict:
    from fedrec.orchestration.ops.procs import free_port

    port = free_port()
    cmd = fedrec_cmd("serve", ["--silo", silo, "--port", str(port), "--answer-cache", str(cache)], ws, sets)
    with log.open("w") as fh:
        server = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_healthy(port, server)
        script = log.with_suffix(".lua")
        script.write_text(LUA % (", ".join(map(str, users)), args.seed, args.k))
        wrk = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--latency", "--timeout", "5s",
               "-s", str(script), f"http://127.0.0.1:{port}"]
        subprocess.run([*wrk[:3], "-d5s", *wrk[4:]], check=True, capture_output=True)  # warm-up (not counted)
        swaps, stop = [], threading.Event()

        def swapper() -> None:  # a newer saved state: the watcher rebuilds and swaps the recommender in
            while not stop.wait(swap_every):
                now = time.time()
                os.utime(model_file, (now, now))
                swaps.append(now)

        thread = threading.Thread(target=swapper, daemon=True)
        if swap_every > 0:
            thread.start()
        out = subprocess.run(wrk, check=True, capture_output=True, text=True).stdout
        stop.set()
        if thread.is_alive():
            thread.join(timeout=5)
    finally:
        server.terminate()
        server.wait(timeout=30)
    row = parse_wrk(out)
    row.update(answer_cache=cache, swaps=len(swaps), failed=row["socket_errors"] + row["non_2xx"])
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--catalogue", action="append", choices=sorted(CATALOGUES), help="default: both")
    ap.add_argument("--silo", default="0")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the run that is served")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--swap-every", type=float, default=1.0, help="seconds between model swaps (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "serve_load.json"))
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        raise BadArgument("wrk is not installed (apt-get install wrk): the load generator of this benchmark")
    command = begin(WORK, "serve_load.py", argv)

    from fedrec.core import env
    from fedrec.core.config import load_config, parse_overrides
    from fedrec.silo import data as pipeline
    from fedrec.silo.store import SiloStore

    env.apply_defaults()
    rows = []
    for name in args.catalogue or list(CATALOGUES):
        ws, logs = Workspace.under(WORK / name), WORK / name / "logs"
        logs.mkdir(parents=True)
        sets = CATALOGUES[name]
        init_store(ws.mlflow_db, logs / "store")
        summary, _ = run_fedrec_summary(args.rounds, True, ws, sets, logs / "run", ROW_TIMEOUT_S)
        cfg = load_config(str(ROOT / "params.yaml"), parse_overrides(ws.overrides()[1::2] + as_sets(sets)[1::2]))
        users = sorted(int(u) for u in pipeline.silo_interactions(cfg, args.silo)["user_id"].unique())
        model_file = SiloStore.of(cfg, args.silo, summary["run_id"]).model_path
        items = len(pipeline.catalogue_ids(cfg))
        for cache in (200_000, 0):
            for swap_every in sorted({0.0, args.swap_every}):
                row = measure(ws, sets, args.silo, users, model_file, args, cache, swap_every,
                              logs / f"serve-{cache}-{swap_every:g}.log")
                row.update(catalogue=name, items=items, users=len(users), silo=args.silo, swap_every_s=swap_every)
                rows.append(row)
                print(json.dumps(row))
    result = {"command": command, "machine": machine(), "connections": args.connections, "k": args.k,
              "seconds": args.seconds, "swap_every_s": args.swap_every, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    table = markdown_table(
        ["catalogue", "items", "silo users", "answer cache", "requests/s", "p50 ms", "p90 ms", "p99 ms", "requests",
         "model swaps", "failed"],
        [[r["catalogue"], f"{r['items']:,}", str(r["users"]), "on" if r["answer_cache"] else "off (every request "
          "scored)", f"{r['rps']:,.0f}", f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}",
          f"{r['requests']:,}", f"{r['swaps']} (every {r['swap_every_s']:g} s)" if r["swaps"] else "none",
          str(r["failed"])] for r in rows])
    replace_section(BENCH_MD, "serve_load", (
        "## Serving under load (issue #23)\n\n"
        f"`{command}` → `results/serve_load.json`: `fedrec serve` (one uvicorn worker) driven by `wrk` (1 thread, "
        f"{args.connections} connections, {args.seconds} s, GET /recommend/<random user of silo {args.silo}>?k="
        f"{args.k}), steady and with the model swapped every {args.swap_every:g} s under load; on this machine "
        f"({result['machine']['cores']} cores, client and server sharing them).\n\n" + table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
