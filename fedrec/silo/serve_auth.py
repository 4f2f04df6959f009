"""API keys and rate limits of `fedrec serve` (issue #23): safe to expose beyond loopback.

Each client of a silo's endpoint gets its own bearer token (`fedrec serve-keys add --silo k --client NAME` prints it
once). Only its SHA-256 is kept, in ``state/silos/<k>/serve_keys.json`` (0600 in 0700, beside the silo's other
secrets): a stolen key file names clients but opens nothing. A key can be revoked by client name at any time (the
server reads the file again when it changes). Whenever keys exist every request but ``GET /health`` needs
``Authorization: Bearer <token>`` (401 otherwise), and `fedrec serve` refuses to bind beyond loopback without them.
Each key is rate-limited by a token bucket (429 with Retry-After when it is empty).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
import threading
import time
from pathlib import Path

from fedrec.core.config import Config
from fedrec.core.errors import ConfigError, FedrecError
from fedrec.core.fsperm import private_dir, write_private_bytes
from fedrec.wire.exchange import check_silo_id


class ServeKeyError(FedrecError):
    """A serve key operation that cannot be done (unknown or duplicate client, exposing serve without keys)."""


def keys_path(cfg: Config, silo_id: str) -> Path:
    return Path(cfg.federation.state_dir) / "silos" / check_silo_id(silo_id) / "serve_keys.json"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _read(path: Path) -> dict:
    if not path.exists():
        return {"clients": {}}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data.get("clients"), dict):
            raise ValueError("no clients")
        return data
    except (ValueError, OSError) as exc:
        raise ServeKeyError(f"{path}: not a serve key file ({exc}); restore it or delete it and add keys again") from exc


def _write(path: Path, data: dict) -> None:
    private_dir(path.parent, below=path.parent.parent)  # state/silos/<k>: 0700, as the silo's other secrets
    write_private_bytes(path, json.dumps(data, indent=2, sort_keys=True).encode(), below=path.parent.parent)


def add_key(cfg: Config, silo_id: str, client: str) -> str:
    """A new bearer token for ``client`` (returned once; only its hash is stored)."""
    if not client or not client.replace("-", "").replace("_", "").replace(".", "").isalnum() or len(client) > 64:
        raise ServeKeyError(f"client name {client!r}: use 1-64 letters, digits, '-', '_' or '.'")
    path = keys_path(cfg, silo_id)
    data = _read(path)
    if client in data["clients"] and not data["clients"][client].get("revoked"):
        raise ServeKeyError(f"client {client!r} already has a key for silo {silo_id!r}; revoke it first")
    token = "fsk_" + secrets.token_urlsafe(32)
    data["clients"][client] = {"sha256": _digest(token), "created": int(time.time()), "revoked": False}
    _write(path, data)
    return token


def revoke_key(cfg: Config, silo_id: str, client: str) -> None:
    path = keys_path(cfg, silo_id)
    data = _read(path)
    if client not in data["clients"]:
        raise ServeKeyError(f"silo {silo_id!r} has no key for client {client!r}")
    data["clients"][client]["revoked"] = True
    _write(path, data)


def list_keys(cfg: Config, silo_id: str) -> dict[str, dict]:
    """Client -> {created, revoked} (never the hashes)."""
    return {c: {"created": v.get("created"), "revoked": bool(v.get("revoked"))}
            for c, v in _read(keys_path(cfg, silo_id))["clients"].items()}


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Gate:
    """The serving side: who a bearer token belongs to (the key file re-read when it changes) and each client's
    token bucket (``rate`` requests per second, bursts of ``burst``)."""

    def __init__(self, cfg: Config, silo_id: str, rate: float = 200.0, burst: int = 400):
        self.path, self.rate, self.burst = keys_path(cfg, silo_id), rate, burst
        self._stamp: float | None = None
        self._active: dict[str, str] = {}  # sha256 -> client
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last refill)
        self._lock = threading.Lock()

    def active(self) -> dict[str, str]:
        stamp = self.path.stat().st_mtime_ns if self.path.exists() else None
        if stamp != self._stamp:
            clients = _read(self.path)["clients"]
            self._active = {v["sha256"]: c for c, v in clients.items() if not v.get("revoked")}
            self._stamp = stamp
        return self._active

    @property
    def required(self) -> bool:
        return bool(self.active())

    def client(self, authorization: str | None) -> str | None:
        """The client a valid ``Authorization: Bearer <token>`` header names, else None."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        digest = _digest(authorization[len("Bearer "):].strip())
        for known, client in self.active().items():
            if hmac.compare_digest(known, digest):
                return client
        return None

    def allow(self, client: str) -> float:
        """0 when ``client`` may make a request now (one token taken), else the seconds until it may."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[client] = (tokens - 1, now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate


def check_exposure(cfg: Config, silo_id: str, host: str) -> None:
    """`fedrec serve --host` beyond loopback needs at least one active key (ConfigError otherwise)."""
    if not is_loopback(host) and not Gate(cfg, silo_id).required:
        raise ConfigError(f"fedrec serve --host {host} would expose silo {silo_id!r}'s users' recommendations to the "
                          f"network without authentication: add a key first (`fedrec serve-keys add --silo {silo_id} "
                          "--client NAME`), or serve on loopback")
