"""The coordinator's run as a state machine over frozen state.

:class:`RunState` is everything the coordinator knows between two rounds: the last finished round, the global item
tower after it, the strategy's state, the samples each admitted silo declared (its updates' weights), the silos
left out for an undecodable update, and the finished rounds' records. A round is a transition
(:func:`fedrec.coordinator.round.run_round`: ``(state, coordinator) -> (state', record)``) that never changes the
state it is given; the checkpoint written after each round is exactly that state (plus what the orchestration
keeps beside it, e.g. its MLflow run), so a crashed coordinator resumes from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import torch

from fedrec.coordinator.report import RoundRecord
from fedrec.coordinator.strategy import ServerState


@dataclass(frozen=True)
class RunState:
    """The coordinator's state after round ``round`` (0: the federation is open, no round has run)."""

    round: int
    global_state: Mapping[str, torch.Tensor] = field(repr=False)
    server_state: ServerState = field(default_factory=ServerState, repr=False)
    n_train: Mapping[str, int] = field(default_factory=dict)
    #: silos whose update made a round's sum undecodable (a decryptor's signed verdict): left out from then on
    banned: Mapping[str, str] = field(default_factory=dict)
    history: tuple[RoundRecord, ...] = field(default=(), repr=False)
    #: the round whose model ``global_state`` is (federation.guard_drop: earlier than ``round`` after a roll-back;
    #: -1: ``round`` itself)
    base_round: int = -1

    def __post_init__(self) -> None:  # read-only views: a transition builds a new state, never edits this one
        for name in ("global_state", "n_train", "banned"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def replace(self, **changes: Any) -> "RunState":
        return dataclasses.replace(self, **changes)

    def save(self, path: Path, extra: dict | None = None) -> None:
        """The checkpoint: this state (and ``extra``), written atomically (temporary file, rename)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"round": self.round, "global_state": dict(self.global_state),
                    "momentum": self.server_state.momentum, "n_train": dict(self.n_train),
                    "banned": dict(self.banned), "history": [dataclasses.asdict(h) for h in self.history],
                    "base_round": self.base_round,
                    "extra": extra or {}}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> tuple["RunState", dict]:
        """A checkpoint back: (state, extra)."""
        saved = torch.load(path, weights_only=False)
        extra = saved.get("extra") or {}
        records = saved.get("history", extra.get("history", []))  # older checkpoints kept it in extra
        return cls(round=int(saved["round"]), global_state=saved["global_state"],
                   server_state=ServerState(momentum=saved["momentum"]), n_train=saved["n_train"],
                   banned=saved.get("banned", {}), history=tuple(RoundRecord(**r) for r in records),
                   base_round=int(saved.get("base_round", -1))), extra
