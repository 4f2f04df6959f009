"""A silo's private directory: its key store and its trained user tower. Only the silo's own process opens it.

``state/silos/<silo>/identity/identity.key`` holds its long-term private keys; ``state/silos/<silo>/<run>/`` holds
``keys/secret.ctx`` (the run's HE secret context, only at the key-holding silo, which made it; `fedrec silo
forget-keys` deletes it), ``model.pt`` (its users' embeddings + optimizer state, for recommendations after the run)
and ``coordinator.json`` (the coordinator's public identity it trusted). Everything under ``state/silos/<silo>/``
is 0600 in 0700 directories (:mod:`fedrec.core.fsperm`); write through the methods here, which set that.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from fedrec.core.config import Config
from fedrec.core.errors import ConfigError
from fedrec.core.fsperm import private_dir, private_file, write_private_bytes
from fedrec.wire.exchange import check_run_id, check_silo_id
from fedrec.wire.trust import write_private


def _is_run_id(name: str) -> bool:
    try:
        return check_run_id(name) == name
    except ConfigError:
        return False


def silo_seed(base: int, silo_id: str, *extra: int) -> list[int]:
    digest = int(hashlib.sha256(silo_id.encode()).hexdigest()[:8], 16)
    return [base, digest, *extra]


@dataclass(frozen=True)
class SiloStore:
    root: Path

    @classmethod
    def of(cls, cfg: Config, silo_id: str, run_id: str) -> "SiloStore":
        """The store of one silo's run; both ids are checked before they become path segments (ConfigError)."""
        return cls(Path(cfg.federation.state_dir) / "silos" / check_silo_id(silo_id) / check_run_id(run_id))

    @classmethod
    def runs_of(cls, cfg: Config, silo_id: str) -> list["SiloStore"]:
        """The stores of every run this silo keeps state of, by run id: the directories under
        ``state/silos/<silo>`` named like a run id (not ``identity``; a stray name is not a run)."""
        base = Path(cfg.federation.state_dir) / "silos" / check_silo_id(silo_id)
        names = sorted(p.name for p in base.iterdir() if p.is_dir() and p.name != "identity") if base.is_dir() else []
        return [cls(base / name) for name in names if _is_run_id(name)]

    @property
    def silo_dir(self) -> Path:
        """``state/silos/<silo>``: everything under it is this silo's private state."""
        return self.root.parent

    @property
    def identity_dir(self) -> Path:
        """The silo's long-term identity (Ed25519 + X25519 private keys): ``state/silos/<silo>/identity``."""
        return self.silo_dir / "identity"

    @property
    def model_path(self) -> Path:
        return self.root / "model.pt"

    @property
    def coordinator_path(self) -> Path:
        """The coordinator's public identity as this silo trusted it during the run."""
        return self.root / "coordinator.json"

    @property
    def secret_context_path(self) -> Path:
        return self.root / "keys" / "secret.ctx"

    def private_dir(self, path: Path | None = None) -> Path:
        """``path`` (default: this run's directory) made, and it and every directory up to ``state/silos/<silo>``
        set to 0700, before anything is written there."""
        return private_dir(self.root if path is None else path, below=self.silo_dir.parent)

    def forget_keys(self) -> bool:
        """Delete this run's HE key material; True if there was some."""
        keys = self.secret_context_path.parent
        if not keys.exists():
            return False
        for path in keys.iterdir():
            path.unlink()
        keys.rmdir()
        return True

    def save_secret_context(self, data: bytes) -> None:
        self.private_dir(self.secret_context_path.parent)
        write_private(self.secret_context_path, data)

    def save_model(self, state: dict) -> None:
        """``state`` (the users' embeddings and optimizer state) to ``model.pt`` with ``torch.save``: written to a
        temporary file created 0600, then renamed into place (a reader never sees part of one)."""
        import torch

        self.private_dir()
        with private_file(self.model_path) as fh:
            torch.save(state, fh)

    def save_coordinator(self, public_identity: dict) -> None:
        """The coordinator's public identity this silo trusted during the run (``coordinator.json``)."""
        self.private_dir()
        write_private_bytes(self.coordinator_path, json.dumps(public_identity).encode())
