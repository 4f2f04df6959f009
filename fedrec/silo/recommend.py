"""Top-K recommendations for one user, computed inside the user's silo.

Only the silo can do this: it alone holds the user's embedding (its private state from a federated run) and
history; the item tower is the federation's global model (the run's final global model, as signed by the
coordinator on the exchange). A user the silo knows but the model does not (registered with no interactions
yet, or whose first interactions arrived as feedback after the last training run) gets the silo's most popular
items, and the answer says so.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from fedrec.core import foldin, recency
from fedrec.core.config import Config
from fedrec.core.errors import ConfigError, FedrecError
from fedrec.core.item_text import model_features  # hybrid: the public item text embeddings
from fedrec.core.training import SiloData, model_config, resolve_device
from fedrec.models import build_model
from fedrec.protocol.reads import load_global
from fedrec.silo import data as pipeline
from fedrec.silo import personal
from fedrec.silo.store import SiloStore
from fedrec.wire.exchange import check_run_id, check_silo_id, run_exchange
from fedrec.wire.trust import PublicIdentity

MODEL, POPULARITY = "model", "popularity"
#: how many of a user's latest items an explanation looks at, and how many it names
EXPLAIN_HISTORY, EXPLAIN_ITEMS = 50, 3
#: answers a recommender keeps per snapshot (cleared when full)
ANSWER_CACHE = 200_000


class UnknownSiloError(FedrecError):
    """No silo of that id has data here (this machine holds only its own silo's data)."""


class UnknownUserError(FedrecError):
    """The user is neither registered at the silo nor in its interactions."""


class NoTrainedModelError(FedrecError):
    """The silo has taken part in no finished federated run yet (or its state was deleted)."""


@dataclass(frozen=True)
class Because:
    """An item of the user's own history that supports a recommendation (fedrec.core.recency.explain)."""

    item_id: int
    title: str
    weight: float


@dataclass(frozen=True)
class Recommendation:
    item_id: int
    title: str
    score: float
    #: the user's own items that most support this one, computed inside the silo (model recommendations only)
    because: tuple[Because, ...] = ()


@dataclass(frozen=True)
class Recommendations:
    silo: str
    user: int
    items: list[Recommendation]
    #: "model" (the user's embedding + the global item tower) or "popularity" (a new user of the silo)
    source: str
    run_id: str | None
    note: str = ""

    def to_dict(self) -> dict:
        items = [{"item_id": r.item_id, "title": r.title, "score": r.score,
                  "because": [{"item_id": b.item_id, "title": b.title, "weight": b.weight} for b in r.because]}
                 for r in self.items]
        body = {"silo": self.silo, "user": self.user, "items": items, "source": self.source, "run_id": self.run_id}
        return body | ({"note": self.note} if self.note else {})

    def to_json(self) -> bytes:
        """:meth:`to_dict` as compact UTF-8 JSON (what `fedrec serve` answers)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def latest_run_id(cfg: Config, silo_id: str) -> str | None:
    """The silo's most recent finished federated run (its saved state), or None."""
    runs = sorted((store for store in SiloStore.runs_of(cfg, silo_id) if store.model_path.exists()),
                  key=lambda store: store.model_path.stat().st_mtime)
    return runs[-1].root.name if runs else None


class SiloRecommender:
    """One silo's recommender: its data, its users' embeddings and the global item tower of a run. ``refresh()``
    picks up a newer run and new feedback (``fedrec serve`` calls it per request; it reloads only on change)."""

    def __init__(self, cfg: Config, silo_id: str, run_id: str | None = None, answer_cache: int = ANSWER_CACHE):
        self.answer_cache = answer_cache  # answers kept per snapshot (0: none, every request is scored)
        try:
            self.silo_id = check_silo_id(silo_id)
        except ConfigError as exc:
            raise UnknownSiloError(str(exc)) from exc
        self.cfg, self.pinned_run = cfg, None if run_id is None else check_run_id(run_id)  # before any path
        self.paths = pipeline.Paths.of(cfg)
        base = pipeline.silo_base_file(cfg, silo_id)
        if not base.exists():
            known = sorted(p.parent.name for p in base.parent.parent.glob("*/interactions.parquet"))
            raise UnknownSiloError(f"silo {silo_id!r} has no data under {base.parent.parent} (silos here: "
                                   f"{', '.join(known) or 'none'}; run `fedrec partition` or `fedrec run` first)")
        self.catalogue: pd.DataFrame = pipeline.read_catalogue(self.paths.catalogue)
        self._item_ids = self.catalogue["item_id"].to_numpy(np.int64).tolist()  # plain lists: O(1) per answer item
        self._titles = self.catalogue["title"].astype(str).tolist()
        self.device = resolve_device(cfg.training.device)
        self._loaded: tuple | None = None
        self.refresh()

    def _stamp(self) -> tuple:
        run = self.pinned_run or latest_run_id(self.cfg, self.silo_id)
        files = [pipeline.silo_base_file(self.cfg, self.silo_id),
                 *pipeline.feedback_batches(self.cfg, self.silo_id)]
        model = SiloStore.of(self.cfg, self.silo_id, run or "_").model_path
        return run, tuple((str(f), f.stat().st_mtime_ns) for f in files + ([model] if model.exists() else []))

    def refresh(self) -> None:
        stamp = self._stamp()
        if stamp == self._loaded:
            return
        run_id = stamp[0]
        interactions = pipeline.silo_interactions(self.cfg, self.silo_id)
        registry = self.paths.silo_data(self.silo_id) / "users.parquet"
        registered = pd.read_parquet(registry)["user_id"].to_numpy(np.int64) if registry.exists() else np.array([], np.int64)
        self.known_users = set(registered.tolist()) | set(interactions["user_id"].astype(np.int64).tolist())
        item_index = pd.Series(np.arange(len(self.catalogue)), index=self.catalogue["item_id"].to_numpy(np.int64))
        users = interactions["user_id"].to_numpy(np.int64)
        items = item_index.reindex(interactions["item_id"].to_numpy(np.int64)).to_numpy()
        ok = ~np.isnan(items)
        self.seen = pd.Series(items[ok].astype(np.int64)).groupby(users[ok]).agg(lambda s: s.to_numpy())
        newest = np.argsort(-interactions["timestamp"].to_numpy()[ok], kind="stable")  # each user's history, newest first
        self.history = pd.Series(items[ok].astype(np.int64)[newest]).groupby(users[ok][newest]).agg(
            lambda s: s.to_numpy()[:EXPLAIN_HISTORY])
        counts = np.bincount(items[ok].astype(np.int64), minlength=len(self.catalogue)).astype(np.float64)
        self.popularity = counts / max(1.0, counts.sum())
        self.run_id, self.model, self.model_users, self.personalised = run_id, None, {}, False
        self._space = None  # the loaded model's item space, for explanations (made on first use)
        self.folded_in: list[int] = []  # users whose feedback since the run was folded into their vectors
        self._answers: dict[tuple[int, int], Recommendations] = {}  # this snapshot's answers (it never changes)
        self._bodies: dict[tuple[int, int], bytes] = {}  # and the same as JSON
        if run_id is not None:
            self._load_model(run_id)
            self._fold_in_feedback(run_id)
            if personal.uses_recency(self.cfg) and self.cfg.task == "ranking":  # the latest items, feedback included
                self.model = self._with_recency(interactions, item_index)
        self._loaded = stamp

    def _load_model(self, run_id: str) -> None:
        store = SiloStore.of(self.cfg, self.silo_id, run_id)
        if not store.model_path.exists():
            raise NoTrainedModelError(f"silo {self.silo_id!r} has no saved state of run {run_id!r}")
        data: SiloData = pipeline.load_silo_data(self.cfg, self.silo_id)  # the users the run trained
        model = build_model(model_config(self.cfg.model, data.n_users, data.n_items, task=self.cfg.task,
                                         item_features=model_features(self.cfg))).to(self.device)
        saved = torch.load(store.model_path, map_location=self.device, weights_only=True)
        model.users.load_state_dict(saved["users"])
        exchange = run_exchange(self.cfg, run_id)
        coordinator = PublicIdentity.from_dict(json.loads(store.coordinator_path.read_text()),
                                               str(store.coordinator_path))
        last = _last_round(exchange)
        model.load_shared_state(load_global(exchange, last, coordinator))
        kept = saved.get("personal")
        self.personalised = kept is not None and kept["round"] == last
        scorer = model.eval()
        if self.personalised:  # model.personalisation: this silo's view of that model
            view = copy.deepcopy(model) if self.cfg.model.personal_blend > 0 else model  # a copy only to blend
            view.users.load_state_dict(kept["users"])
            view.items.load_state_dict(kept["items"])
            scorer = personal.blended(view.eval(), model, self.cfg)  # the global model beside it (personal_blend)
        self.model = scorer
        self.model_users = {int(u): i for i, u in enumerate(data.user_ids)}

    def _fold_in_feedback(self, run_id: str) -> None:
        """Feedback that arrived after the run's model was saved, folded into those users' private vectors at once
        (fedrec.core.foldin: their whole history, the item tower frozen); the next run trains on it as before."""
        saved = SiloStore.of(self.cfg, self.silo_id, run_id).model_path.stat().st_mtime
        fresh = [p for p in pipeline.feedback_batches(self.cfg, self.silo_id) if p.stat().st_mtime >= saved]
        users = sorted({int(u) for p in fresh for u in pd.read_parquet(p, columns=["user_id"])["user_id"]}
                       & set(self.model_users))
        if not users:
            return
        inner = getattr(self.model, "model", self.model)
        foldin.fold_in(inner, np.array([self.model_users[u] for u in users]), [self.seen[u] for u in users],
                       seed=len(fresh))
        self.folded_in = users

    def _with_recency(self, interactions: pd.DataFrame, item_index: pd.Series):
        """The loaded model with the recency head (model.personalisation: recency) over each trained user's own
        history in this silo, in time order: its training rows, held-out items and feedback since."""
        ordered = interactions.sort_values("timestamp", kind="mergesort")
        local = pd.Series(self.model_users, dtype="int64").reindex(ordered["user_id"].to_numpy(np.int64)).to_numpy()
        items = item_index.reindex(ordered["item_id"].to_numpy(np.int64)).to_numpy()
        ok = ~np.isnan(local) & ~np.isnan(items)
        history = recency.recent_items(local[ok].astype(np.int64), items[ok].astype(np.int64), len(self.model_users),
                                       self.cfg.model.recency_length)
        return personal.recency_head(self.model, history, self.cfg)

    def _because(self, history: np.ndarray | None, items: list[int]) -> list[tuple[Because, ...]]:
        """For each of ``items``, the user's own items that most support it in the global item space
        (fedrec.core.recency.explain_many: one matrix product for the whole answer)."""
        if history is None or not len(history):
            return [() for _ in items]
        if self._space is None:
            inner = getattr(self.model, "model", self.model)  # the recency head wraps the model
            self._space = recency.item_space(inner)
        return [tuple(Because(item_id=self._item_ids[h], title=self._titles[h], weight=round(w, 6)) for h, w in named)
                for named in recency.explain_many(self._space, history, items, self.cfg.model.recency_decay,
                                                  EXPLAIN_ITEMS)]

    def recommend(self, user_id: int, k: int = 10) -> Recommendations:
        """The k best unseen items for ``user_id``; answers are kept until the next reload (a snapshot's model, data
        and feedback never change in between), so a repeated request is a dictionary lookup."""
        return self._kept(self._answers, user_id, k, lambda: self._recommend(user_id, k))

    def warm(self, requests: list[tuple[int, int]], budget_s: float = 0.25) -> int:
        """Answer ``requests`` ((user, k) pairs, the first first) ahead into the cache for at most ``budget_s``
        seconds; a request that fails now is left out. Returns how many were answered."""
        deadline, done = time.perf_counter() + budget_s, 0
        for user_id, k in requests:
            if time.perf_counter() > deadline:
                break
            done += 1
            try:
                self.recommend_json(user_id, k)
            except FedrecError:
                continue
        return done

    def recommend_json(self, user_id: int, k: int = 10) -> bytes:
        """:meth:`recommend` as JSON bytes (`fedrec serve`'s body), kept like the answers: a repeated request is a
        dictionary lookup, nothing encoded again."""
        return self._kept(self._bodies, user_id, k, lambda: self._recommend(user_id, k).to_json())

    def _kept(self, cache: dict, user_id: int, k: int, make):
        """``cache[(user_id, k)]``, made once per snapshot (``answer_cache`` entries at most; 0: never kept)."""
        if self.answer_cache <= 0:
            return make()
        value = cache.get((user_id, k))
        if value is None:
            value = make()
            if len(cache) >= self.answer_cache:
                cache.clear()
            cache[(user_id, k)] = value
        return value

    def _recommend(self, user_id: int, k: int = 10) -> Recommendations:
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        if user_id not in self.known_users:
            raise UnknownUserError(f"user {user_id} is not a user of silo {self.silo_id!r} (neither registered "
                                   f"nor in its interactions)")
        if self.model is None:
            raise NoTrainedModelError(f"silo {self.silo_id!r} has no trained state under "
                                      f"{self.cfg.federation.state_dir}; run `fedrec run` first")
        local = self.model_users.get(user_id)
        if local is None:
            note = "new user (no interactions in the trained model yet): the silo's most popular items"
            scores, source = self.popularity.copy(), POPULARITY
        else:
            with torch.no_grad():
                scores = self.model.full_sort_predict(torch.tensor([local], device=self.device))[0].cpu().numpy()
            scores, source, note = scores.astype(np.float64), MODEL, ""
        if user_id in self.seen.index:  # everything the user interacted with, feedback since training included
            scores[self.seen[user_id]] = -np.inf
        top = [i for i in top_k(scores, k) if np.isfinite(scores[i])]
        history = self.history.get(user_id) if source == MODEL else None
        items = [Recommendation(item_id=self._item_ids[i], title=self._titles[i], score=float(scores[i]), because=why)
                 for i, why in zip(top, self._because(history, top))]
        return Recommendations(silo=self.silo_id, user=int(user_id), items=items, source=source,
                               run_id=self.run_id, note=note)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The indices of the k largest scores, best first (ties: the lower index first), in O(n + k log k)."""
    if k >= len(scores):
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k - 1)[:k]
    kth = scores[part].min()
    tied = np.flatnonzero(scores >= kth)  # every item tied with the k-th competes, as in a full stable sort
    return tied[np.argsort(-scores[tied], kind="stable")][:k]


def recommend(cfg: Config, silo_id: str, user_id: int, k: int = 10, run_id: str | None = None) -> Recommendations:
    """The k best unseen items for ``user_id`` (a user of ``silo_id``)."""
    return SiloRecommender(cfg, silo_id, run_id).recommend(user_id, k)


def _last_round(exchange) -> int:
    keys = [k for k in exchange.keys("global") if k.endswith(".bin")]
    if not keys:
        raise NoTrainedModelError("the run has no global model on the exchange")
    return max(int(k.rsplit("round-", 1)[1].split(".")[0]) for k in keys)
