"""Test helper: an ASGI app served by uvicorn on a free loopback port, as `fedrec serve` does, and a client of it."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

import httpx

from fedrec.orchestration.ops.procs import free_port


@contextmanager
def serving(app) -> Iterator[httpx.Client]:
    """``app`` served by uvicorn on a free loopback port, as `fedrec serve` does; a client of it."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=10)