"""A silo's private directory: its key store and its trained user tower. Only the silo's own process opens it.

``state/silos/<silo>/identity/identity.key`` holds its long-term private keys (0600 in a 0700 directory);
``state/silos/<silo>/<run>/`` holds ``keys/secret.ctx`` (0600 in a 0700 directory; the run's HE secret context,
only at the key-holding silo, which made it; `fedrec silo forget-keys` deletes it) and ``model.pt`` (user
tower + optimizer, for recommendations after the run).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from fedrec.config import Config
from fedrec.trust import write_private
from fedrec.wire.exchange import check_silo_id


def silo_seed(base: int, silo_id: str, *extra: int) -> list[int]:
    digest = int(hashlib.sha256(silo_id.encode()).hexdigest()[:8], 16)
    return [base, digest, *extra]


@dataclass(frozen=True)
class SiloStore:
    root: Path

    @classmethod
    def of(cls, cfg: Config, silo_id: str, run_id: str) -> "SiloStore":
        return cls(Path(cfg.federation.state_dir) / "silos" / check_silo_id(silo_id) / run_id)

    @property
    def identity_dir(self) -> Path:
        """The silo's long-term identity (Ed25519 + X25519 private keys): ``state/silos/<silo>/identity``."""
        return self.root.parent / "identity"

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
        write_private(self.secret_context_path, data)
