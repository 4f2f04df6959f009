"""Where payloads travel between silos and the coordinator: any fsspec URL.

A local directory by default (``state/exchange``); ``s3://bucket/fedrec``, ``gs://...`` or
``memory://`` work the same, so silos on other machines share one bucket instead of an RPC.
Writes go to a temporary key first and are then moved, so a reader never sees half a payload.
"""

from __future__ import annotations

import uuid

import fsspec

from fedrec.errors import PayloadError


class Exchange:
    def __init__(self, url: str):
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key}"

    def put(self, key: str, data: bytes) -> int:
        path = self._path(key)
        parent = path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.{uuid.uuid4().hex}.tmp"
        with self.fs.open(tmp, "wb") as fh:
            fh.write(data)
        self.fs.mv(tmp, path)
        return len(data)

    def get(self, key: str) -> bytes:
        try:
            with self.fs.open(self._path(key), "rb") as fh:
                return fh.read()
        except FileNotFoundError as exc:
            raise PayloadError(f"{self.url}/{key} does not exist (was the producing task run?)") from exc

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(key))

    def keys(self, prefix: str = "") -> list[str]:
        base = self.root.rstrip("/") + "/"
        try:
            found = self.fs.find(self._path(prefix) if prefix else self.root)
        except FileNotFoundError:
            return []
        return sorted(p[len(base):] if p.startswith(base) else p for p in found)


def update_key(round_: int, silo_id: str) -> str:
    return f"round-{round_:04d}/updates/{silo_id}.bin"


def aggregate_key(round_: int) -> str:
    return f"round-{round_:04d}/aggregate.bin"


def global_key(round_: int) -> str:
    """Global (item-tower) parameters after ``round_`` rounds; round 0 is the initial model."""
    return f"global/round-{round_:04d}.bin"


PUBLIC_CONTEXT_KEY = "context/public.ctx"
