"""Malicious silos for the attack suite (bench/attacks.py, tests/adversarial): real SiloAgents whose update is
poisoned *before* it is weighted, quantised, masked and encrypted, so that everything downstream (the encoding's
range check, the masks, CKKS, the decryptor) sees a well-formed update, as a real attacker's would be.

Untargeted (issue #20): ``scale`` (×f, e.g. 100 or -100), ``signflip`` (×-1), ``noise`` (Gaussian noise of the
honest update's scale ×10 in its place), ``stale`` (the silo resends the update of its first round every round).
Targeted item promotion: ``promote`` (FedRecAttack/PipAttack-style model poisoning: each of the silo's users also
"likes" the target item in training, and the target item's rows of the update are boosted), ``fakeusers`` (data
poisoning: fake users, each with the target item and popular filler items, trained into the silo's update).
The yardstick for every defence that leaves a silo out: ``absent`` (the silo never joins: a federation of the
others, the best any such defence can give the honest silos' users, since a malicious silo's own honest data is
never sent). An attacker who knows the defence: ``lie`` (Little Is Enough, Baruch et al. NeurIPS'19: each value moved
against its own descent direction by ``factor`` times the tensor's mean magnitude, small enough to stay inside the
spread of honest updates that a median or a guard tolerates, every round), and ``sneak`` (promotion that knows the
row guard: as ``promote``, but the target rows scaled to ``factor`` times the median row of the silo's own honest
update, so that its group's row stays just inside ``federation.row_guard`` of the others'), and ``rig`` (a sign flip
whose silo also lies in every vetting vote: the every-group candidate scored perfect and every other at nothing, so
that its own group is never left out, the most a voter can move the pooled score within its users' share).

The in-process harness (:func:`run_in_process`) drives one coordinator and every silo agent in threads, as
tests/support/roundkit does, through the same protocol code a deployment runs (signed payloads, SecAgg masks, CKKS).
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import uuid
from typing import Callable

import numpy as np
import torch

from fedrec.coordinator.coordinator import Coordinator
from fedrec.coordinator.round import run_round
from fedrec.coordinator.summary import better
from fedrec.core.config import Config
from fedrec.core.training import SiloData, make_optimizer, train_epoch
from fedrec.crypto.updates import LocalUpdate
from fedrec.models import RecModel
from fedrec.models.base import UserTower
from fedrec.silo import data as pipeline
from fedrec.silo.agent import SiloAgent
from fedrec.wire.messages import FitInstructions, Vote

ATTACKS = ("none", "scale", "signflip", "noise", "stale", "promote", "fakeusers", "lie", "absent", "sneak", "rig")
TARGETED = ("promote", "fakeusers", "sneak")


@dataclasses.dataclass(frozen=True)
class Attack:
    """What a malicious silo does: ``kind`` (one of ATTACKS), ``factor`` (scale: the multiplier; noise: the noise's
    size in honest standard deviations; promote: the boost of the target rows; sneak: the target rows' length in
    medians of the silo's own honest rows), ``target`` (promote / fakeusers / sneak:
    the catalogue index of the item to push), ``fakes`` (fakeusers: how many fake users)."""

    kind: str = "none"
    factor: float = 100.0
    target: int = -1
    fakes: int = 50

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ValueError(f"attack must be one of {ATTACKS}, got {self.kind!r}")
        if self.kind in TARGETED and self.target < 0:
            raise ValueError(f"attack {self.kind!r} needs a target item")


def item_rows(delta: dict[str, torch.Tensor], n_items: int) -> list[str]:
    """The update's item embedding tables (first dimension = the catalogue)."""
    return [name for name, t in delta.items() if t.dim() == 2 and t.shape[0] == n_items]


def malicious_agent(attack: Attack) -> type[SiloAgent]:
    """A SiloAgent subclass that carries out ``attack`` on its update (and, for fakeusers, on its training data)."""

    class MaliciousAgent(SiloAgent):
        _first: dict[str, torch.Tensor] | None = None
        honest_delta: dict[str, torch.Tensor] | None = None
        sent_delta: dict[str, torch.Tensor] | None = None

        def _train(self, ins: FitInstructions, start_global: dict[str, torch.Tensor]) -> tuple[LocalUpdate, float]:
            update, loss = super()._train(ins, start_global)
            self.honest_delta = update.delta  # what an honest silo would have sent (tests compare against it)
            delta = {k: v.clone() for k, v in update.delta.items()}
            rng = np.random.default_rng(ins.round)
            if attack.kind == "scale":
                delta = {k: v * attack.factor for k, v in delta.items()}
            elif attack.kind in ("signflip", "rig"):
                delta = {k: -v for k, v in delta.items()}
            elif attack.kind == "noise":
                delta = {k: torch.from_numpy(rng.normal(0.0, attack.factor * float(v.std()) + 1e-12, v.shape))
                         .to(v.dtype) for k, v in delta.items()}
            elif attack.kind == "lie":
                delta = {k: v - attack.factor * v.abs().mean() * torch.sign(v) for k, v in delta.items()}
            elif attack.kind == "stale":
                if self._first is None:
                    self._first = delta
                delta = {k: v.clone() for k, v in self._first.items()}
            elif attack.kind in TARGETED:
                delta = self._poison(ins, start_global, delta)
            # kept inside the range the silo's own encoding check accepts, so nothing downstream notices
            c = self.cfg.crypto
            limit = 0.999 * 2.0 ** (c.lane_bits - 1 - c.quantization_bits)
            delta = {k: v.clamp(-limit, limit) for k, v in delta.items()}
            self.sent_delta = delta  # what it sent instead
            return dataclasses.replace(update, delta=delta), loss

        def _ballot(self, vote: Vote) -> Vote:
            if attack.kind != "rig":
                return vote
            best = [{f: (v if f == "n" else (vote.val[0]["n"] if c == 0 else 0)) for f, v in val.items()}
                    for c, val in enumerate(vote.val)]
            return dataclasses.replace(vote, val=best, auc=[float(vote.val[0]["n"]) if c == 0 else 0.0
                                                            for c in range(len(vote.auc))])

        def _poison(self, ins: FitInstructions, start_global: dict[str, torch.Tensor],
                    honest: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            """Train a copy of the global item tower on poisoned rows; its change joins the honest update."""
            data = self.data
            if attack.kind in ("promote", "sneak"):  # every real user of this silo also "likes" the target
                users = np.arange(data.n_users, dtype=np.int64)
                poisoned = dataclasses.replace(data, train_users=np.concatenate([data.train_users, users]),
                                               train_items=np.concatenate([data.train_items,
                                                                           np.full(len(users), attack.target)]))
                tower = copy.deepcopy(self.model.users)
            else:  # fake users: the target plus popular filler items each
                poisoned, tower = self._fake_users(ins.round)
            model = RecModel(tower, copy.deepcopy(self.model.items))
            model.load_shared_state(start_global)
            optimizer = make_optimizer(model, self.cfg.training)
            train_epoch(model, optimizer, poisoned, self.cfg.training, np.random.default_rng(ins.round), self.device)
            change = {k: v - start_global[k] for k, v in model.shared_state().items()}
            out = {k: honest[k] + change[k] for k in honest}
            for name in item_rows(out, data.n_items):  # boost the target item's rows
                row = change[name][attack.target]
                if attack.kind == "sneak":  # as long as factor x the silo's own median honest row, no longer
                    typical = float(honest[name].norm(dim=1).median())
                    out[name][attack.target] = row * (attack.factor * typical / max(float(row.norm()), 1e-12))
                else:
                    out[name][attack.target] = row * attack.factor
            return out

        def _fake_users(self, server_round: int) -> tuple[SiloData, UserTower]:
            data = self.data
            rng = np.random.default_rng(1000 + server_round)
            popular = np.argsort(-np.bincount(data.train_items, minlength=data.n_items), kind="stable")[:50]
            per = 10
            users = np.repeat(np.arange(attack.fakes, dtype=np.int64), per + 1)
            items = np.concatenate([np.concatenate([[attack.target], rng.choice(popular, per, replace=False)])
                                    for _ in range(attack.fakes)])
            zeros = np.zeros(attack.fakes, dtype=np.int64)
            fake = SiloData(user_ids=np.arange(attack.fakes, dtype=np.int64), train_users=users, train_items=items,
                            val_items=zeros, test_items=zeros, negatives=zeros[:, None], n_items=data.n_items)
            tower = UserTower(attack.fakes, self.model.items.user_dims)
            tower.reset_parameters(torch.Generator().manual_seed(server_round))
            return fake, tower.to(self.device)

    MaliciousAgent.__name__ = f"MaliciousAgent[{attack.kind}]"
    return MaliciousAgent


def agent_loop(agent: SiloAgent, errors: dict) -> None:
    """What the silo_agent flow does per round, without Prefect; an error is kept in ``errors`` and the agent leaves."""
    rounds = 0
    try:
        while (ins := agent.next_instructions(rounds)) is not None:
            if agent.fit(ins) is not None:
                agent.settle(ins)
            if ins.evaluate:
                agent.evaluate(ins.round)
            rounds = ins.round
    except BaseException as exc:  # noqa: BLE001 - recorded for the caller to look at
        errors[agent.silo_id] = exc
        agent.leave(rounds, exc)


def exposure(agents: dict[str, SiloAgent], global_state: dict[str, torch.Tensor], target: int, k: int) -> float:
    """ER@k of ``target``: the share of the honest silos' users (those who never touched it) with it in their top k
    of ``global_state`` (full ranking over unseen items). Simulation only: it reads every silo's model in one
    process, which no deployed party can."""
    hits = users = 0
    for agent in agents.values():
        data, model = agent.data, copy.deepcopy(agent.model)
        model.load_shared_state(global_state)
        model.eval()
        local = np.arange(data.n_users)
        with torch.no_grad():
            scores = model.full_sort_predict(torch.from_numpy(local).to(agent.device)).cpu().numpy()
        seen = data.seen_mask(local)
        scores[seen] = -np.inf
        fresh = ~seen[:, target]
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        hits += int(((top == target).any(axis=1) & fresh).sum())
        users += int(fresh.sum())
    return hits / max(users, 1)


def run_in_process(cfg: Config, malicious: dict[str, Attack] | None = None, rounds: int | None = None,
                   on_round: Callable[[object], None] | None = None, target: int = -1,
                   agents_out: dict | None = None, agent_classes: dict[str, type[SiloAgent]] | None = None) -> dict:
    """One federation of every silo of ``cfg``'s partition, agents in threads (``malicious``: silo -> attack);
    evaluation every round. Returns the test metrics at the round chosen on validation, the last round's, and
    (``target`` >= 0) the target item's exposure ER@k under the last global model. ``agents_out`` receives the
    agents (tests look at what a malicious one would honestly have sent)."""
    absent = {s for s, a in (malicious or {}).items() if a.kind == "absent"}
    silos = [s for s in pipeline.ensure_data(cfg) if s not in absent]
    malicious = {s: a for s, a in (malicious or {}).items() if s not in absent}  # a dict from here on
    rounds = rounds or cfg.federation.rounds
    run_id = f"attack-{uuid.uuid4().hex[:12]}"
    coord = Coordinator(cfg, run_id, n_items=len(pipeline.catalogue_ids(cfg)))
    classes = {s: malicious_agent(a) for s, a in malicious.items()} | (agent_classes or {})
    agents = {s: classes.get(s, SiloAgent)(cfg, s, run_id) for s in silos}
    if agents_out is not None:
        agents_out.update(agents)
    for agent in agents.values():
        agent.validate()
    admission = coord.admit(list(silos))
    for agent in agents.values():
        agent.await_admission()
    for silo in sorted(agents, key=lambda s: s != admission.key_holder):  # the key holder seals first
        agents[silo].setup()
    coord.open_context()
    coord.init_global()
    errors: dict[str, BaseException] = {}

    threads = [threading.Thread(target=agent_loop, args=(a, errors), daemon=True) for a in agents.values()]
    for t in threads:
        t.start()
    best = last = None
    defence: list[dict] = []  # per round: whose group means the model kept, the vetting scores, who is banned
    try:
        for r in range(1, rounds + 1):
            _, record = run_round(coord.state, coord, r, True)
            last = record
            defence.append({"round": r, "left_out": sorted(set(record.contributors) - set(record.kept))
                            if record.kept else [], "vetting": record.vetting, "groups": coord.groups.get(r, []),
                            "banned": sorted(coord.state.banned)})
            if better(cfg, record, best):
                best = record
            if on_round is not None:
                on_round(record)
    finally:
        coord.stop("finished", rounds)
        for t in threads:
            t.join(timeout=120)
    result = {"run_id": run_id, "selected_round": best.round, "selected": best.test, "last": last.test,
              "errors": {s: repr(e) for s, e in errors.items()}, "defence": defence,
              "per_silo_selected": best.per_silo_test, "silo_users": {s: a.data.n_users for s, a in agents.items()}}
    if target >= 0:
        honest = {s: a for s, a in agents.items() if s not in malicious}
        result["exposure"] = exposure(honest, dict(coord.global_state), target, cfg.evaluation.k)
    return result
