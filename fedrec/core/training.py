"""Device-agnostic training and evaluation loops shared by centralized and federated training.

Everything here works on one :class:`SiloData` (the centralized baseline is one big silo).
Randomness comes from explicit numpy / torch generators so silos can train in threads
deterministically.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import pandas as pd
import torch

from fedrec.core import recency
from fedrec.core.coldstart import (  # cold-start items
    ColdItems,
    cold_items_of,
    cold_metrics,
)
from fedrec.core.config import Config, ModelConfig, TrainingConfig
from fedrec.core.data.split import Split
from fedrec.core.item_text import (
    model_features,  # the hybrid model's item text embeddings
)
from fedrec.core.metrics import (
    EVAL_CHUNK_USERS,
    MetricSums,
)
from fedrec.core.objectives import objective, objective_of
from fedrec.models import RecModel, RecModelConfig, build_model, transitions


class Scorer(Protocol):
    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor: ...
    def full_sort_predict(self, users: torch.Tensor) -> torch.Tensor: ...


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


#: the GPU batch only pays when an epoch still has this many steps (ML-100K pooled: 60 at 8192); a smaller
#: silo (a region silo: 5-12) keeps the CPU's batch and learning rate, as its quality needs the steps
MIN_CUDA_STEPS = 32


def for_device(cfg: Config, device: torch.device, n_train: int) -> Config:
    """``cfg`` with the GPU's batch size and learning rate (training.cuda_batch_size / cuda_lr) on a CUDA device
    when ``n_train`` rows (with their negatives) make at least MIN_CUDA_STEPS such batches per epoch; else
    unchanged (always on the CPU)."""
    t = cfg.training
    per_epoch = n_train * objective(cfg.task).rows_per_interaction(t.n_negatives)
    if device.type != "cuda" or t.cuda_batch_size <= 0 or per_epoch < MIN_CUDA_STEPS * t.cuda_batch_size:
        return cfg
    return cfg.replace(**{"training.batch_size": t.cuda_batch_size, "training.lr": t.cuda_lr or t.lr})


@dataclass
class SiloData:
    """One silo's training and evaluation arrays, users re-indexed locally (row = local index).

    train_users / train_items: int64 [n_train]; val_items / test_items: int64 [n_users];
    negatives: int64 [n_users, n_neg]; all item values are catalogue indices.
    train_ratings: float32 [n_train]; val_ratings / test_ratings: float32 [n_users] (task: rating; None when the
    split predates them).
    """

    user_ids: np.ndarray
    train_users: np.ndarray
    train_items: np.ndarray
    val_items: np.ndarray
    test_items: np.ndarray
    negatives: np.ndarray
    n_items: int
    train_ratings: np.ndarray | None = None  # task: rating
    val_ratings: np.ndarray | None = None
    test_ratings: np.ndarray | None = None
    #: cold-start items (fedrec.core.coldstart): never training negatives; each user's cold target; None: none held out
    cold: ColdItems | None = None
    #: the refit view (:meth:`with_validation_in_train`): each user's validation item is its latest training row
    val_in_train: bool = False
    _seen_codes: np.ndarray = field(init=False, repr=False)
    _pairs: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._seen_codes = np.unique(self.train_users * self.n_items + self.train_items)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_train(self) -> int:
        return len(self.train_users)

    @classmethod
    def from_split(cls, split: Split, catalogue_ids: np.ndarray) -> "SiloData":
        catalogue_ids = np.asarray(catalogue_ids, dtype=np.int64)
        to_index = pd.Series(np.arange(len(catalogue_ids)), index=catalogue_ids)
        holdout = split.holdout.sort_values("user_id").reset_index(drop=True)
        local = pd.Series(np.arange(len(holdout)), index=holdout["user_id"].to_numpy())
        return cls(
            user_ids=holdout["user_id"].to_numpy(np.int64),
            train_users=local.loc[split.train["user_id"]].to_numpy(np.int64),
            train_items=to_index.loc[split.train["item_id"]].to_numpy(np.int64),
            val_items=to_index.loc[holdout["val_item"]].to_numpy(np.int64),
            test_items=to_index.loc[holdout["test_item"]].to_numpy(np.int64),
            negatives=to_index.loc[np.concatenate(holdout["negatives"].to_numpy())].to_numpy(np.int64)
            .reshape(len(holdout), -1),
            n_items=len(catalogue_ids),
            **_rating_arrays(split.train, holdout),
            **cold_items_of(split, holdout, to_index, len(catalogue_ids)),  # cold start
        )

    def with_validation_in_train(self) -> "SiloData":
        """The refit view: each user's validation item becomes a training positive."""
        return SiloData(user_ids=self.user_ids,
                        train_users=np.concatenate([self.train_users, np.arange(self.n_users)]),
                        train_items=np.concatenate([self.train_items, self.val_items]),
                        val_items=self.val_items, test_items=self.test_items, negatives=self.negatives,
                        n_items=self.n_items,
                        train_ratings=None if self.train_ratings is None
                        else np.concatenate([self.train_ratings, self.val_ratings]),
                        val_ratings=self.val_ratings, test_ratings=self.test_ratings, cold=self.cold,
                        val_in_train=True)

    def without_test(self) -> "SiloData":
        """A copy with no test items or ratings (None): what a hyper-parameter search gets, so nothing it runs can
        read the test item (any read fails)."""
        import dataclasses

        return dataclasses.replace(self, test_items=None, test_ratings=None)

    def transition_pairs(self, window: int) -> tuple[np.ndarray, np.ndarray]:
        """(before, after): items one user touched within ``window`` rows of each other, both orders
        (fedrec.models.transitions.pairs; computed once per window)."""
        if window not in self._pairs:
            self._pairs[window] = transitions.pairs(self.train_users, self.train_items, window)
        return self._pairs[window]

    def seen_mask(self, local_users: np.ndarray) -> np.ndarray:
        """bool [len(local_users), n_items]: items in each user's training data."""
        mask = np.zeros((len(local_users), self.n_items), dtype=bool)
        row_of = {u: r for r, u in enumerate(local_users)}
        sel = np.isin(self.train_users, local_users)
        rows = np.fromiter((row_of[u] for u in self.train_users[sel]), dtype=np.int64, count=int(sel.sum()))
        mask[rows, self.train_items[sel]] = True
        return mask

    def epoch_samples(self, n_neg: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positives plus ``n_neg`` uniformly drawn unseen items each, shuffled: users, items, labels."""
        neg_users = np.repeat(self.train_users, n_neg)
        draw = lambda n: rng.integers(0, self.n_items, size=n)  # noqa: E731
        if self.cold is not None:  # cold start: held-out items are not in training at all, not even as negatives
            warm = self.cold.warm_items(self.n_items)
            draw = lambda n: warm[rng.integers(0, len(warm), size=n)]  # noqa: E731
        neg_items = draw(len(neg_users))
        for _ in range(10):  # rejection: redraw negatives that hit a training positive
            clash = np.isin(neg_users * self.n_items + neg_items, self._seen_codes)
            if not clash.any():
                break
            neg_items[clash] = draw(int(clash.sum()))
        users = np.concatenate([self.train_users, neg_users])
        items = np.concatenate([self.train_items, neg_items])
        labels = np.concatenate([np.ones(self.n_train, np.float32), np.zeros(len(neg_users), np.float32)])
        order = rng.permutation(len(users))
        return users[order], items[order], labels[order]

    def rating_samples(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """task: rating: the observed (user, item, rating) rows only, no negatives, shuffled."""
        if self.train_ratings is None:
            raise ValueError("this split has no ratings (made before task: rating existed); run `fedrec split` again")
        order = rng.permutation(self.n_train)
        return self.train_users[order], self.train_items[order], self.train_ratings[order]


def _rating_arrays(train: pd.DataFrame, holdout: pd.DataFrame) -> dict[str, np.ndarray | None]:
    """The ratings of the training rows and of the held-out items, when the split has them (task: rating)."""
    if "rating" not in train.columns or not {"val_rating", "test_rating"} <= set(holdout.columns):
        return {}
    return {"train_ratings": train["rating"].to_numpy(np.float32),
            "val_ratings": holdout["val_rating"].to_numpy(np.float32),
            "test_ratings": holdout["test_rating"].to_numpy(np.float32)}


def model_config(cfg: ModelConfig, num_users: int, num_items: int, task: str = "ranking",
                 item_features: np.ndarray | None = None) -> RecModelConfig:
    """``item_features``: the hybrid model's item text embeddings (fedrec.core.item_text.model_features(cfg))."""
    return RecModelConfig(name=cfg.name, num_users=num_users, num_items=num_items,
                          embedding_dim=cfg.embedding_dim, mlp_layers=tuple(cfg.mlp_layers), dropout=cfg.dropout,
                          task=task, item_features=item_features, adapter_hidden=cfg.adapter_hidden,
                          id_dropout=cfg.id_dropout, transition_dim=cfg.transition_dim,
                          transition_window=cfg.transition_window, transition_lr=cfg.transition_lr,
                          transition_pairs=cfg.transition_pairs)


def make_optimizer(model: RecModel, cfg: TrainingConfig) -> torch.optim.Optimizer:
    """Adam; the fused kernel (one pass over all parameters per step) on CPU and CUDA: ~1.6x faster epochs here."""
    device = next(model.parameters()).device
    fused = device.type in ("cpu", "cuda")
    tables = transitions.of(model)
    if tables is None or not tables.lr:
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    own = {id(p) for p in tables.parameters()}  # the next-item tables at their own learning rate
    groups = [{"params": [p for p in model.parameters() if id(p) not in own]},
              {"params": list(tables.parameters()), "lr": tables.lr}]
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def proximal_term(model: RecModel, reference: dict[str, torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx: mu/2 * ||w - w_global||^2 over the shared (item-tower) parameters."""
    total = torch.zeros((), device=next(model.parameters()).device)
    for name, param in model.items.named_parameters():
        total = total + (param - reference[name]).pow(2).sum()
    return 0.5 * mu * total


def train_epoch(
    model: RecModel,
    optimizer: torch.optim.Optimizer,
    data: SiloData,
    cfg: TrainingConfig,
    rng: np.random.Generator,
    device: torch.device,
    proximal: tuple[float, dict[str, torch.Tensor]] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> float:
    """One pass over the silo's positives with fresh negatives; returns the mean BCE loss. A rating model
    (task: rating) passes over the observed ratings only and returns the mean squared error."""
    model.train()
    samples = objective_of(model).training_rows(data, cfg.n_negatives, rng)
    users, items, labels = (torch.from_numpy(a).to(device) for a in samples)
    n_batches = (len(users) + cfg.batch_size - 1) // cfg.batch_size
    total = torch.zeros((), device=device)
    for b in range(n_batches):
        sl = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
        if cfg.embedding_l2 > 0:
            bce, l2 = model.loss_and_l2(users[sl], items[sl], labels[sl])
            loss = bce + cfg.embedding_l2 * l2
        else:
            bce = loss = model.calculate_loss(users[sl], items[sl], labels[sl])
        total += bce.detach() * len(users[sl])
        if proximal is not None and proximal[0] > 0:
            loss = loss + proximal_term(model, proximal[1], proximal[0])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_batch is not None:
            on_batch(b + 1, n_batches)
    if (tables := transitions.of(model)) is not None:  # the shared next-item tables: as many pairs as rows
        before, after = data.transition_pairs(tables.window)
        allowed = None if data.cold is None else data.cold.warm_items(data.n_items)
        transitions.train_pairs(tables, optimizer, before, after, data.n_train * tables.pairs_per_row,
                                cfg.n_negatives, cfg.batch_size * tables.pairs_per_row, data.n_items, rng, device,
                                allowed)
    return float(total) / len(users)


@torch.no_grad()
def evaluate_targets(model: Scorer, data: SiloData, k: int, targets: tuple[str, ...] = ("val", "test"),
                     full: bool = True, device: torch.device | None = None,
                     chunk_users: int = EVAL_CHUNK_USERS) -> dict[str, MetricSums]:
    """The metric sums of ``model`` on each user's val and/or test item, as the model's task scores them
    (:mod:`fedrec.core.objectives`: ranking ranks the item among fixed negatives and, if ``full``, among all unseen
    items; rating scores the held-out ratings)."""
    if not targets or set(targets) - {"val", "test"}:
        raise ValueError("targets must be 'val' and/or 'test'")
    return objective_of(model).evaluate(model, data, k, targets, full, device, chunk_users)


@torch.no_grad()
def sampled_auc_sum(model: Scorer, data: SiloData, device: torch.device | None = None,
                    chunk_users: int = EVAL_CHUNK_USERS) -> float:
    """Sum over users of the share of its fixed sampled negatives that ``model`` scores below the user's validation
    item (ties count half): a smooth validation score with far less noise than HR@k, for comparing close models
    (federation.robust_rule vetted). Ranking task only."""
    if hasattr(model, "eval"):
        model.eval()
    device = device or torch.device("cpu")
    scorer = model.for_target("val") if hasattr(model, "for_target") else model
    total = 0.0
    for start in range(0, data.n_users, chunk_users):
        local = np.arange(start, min(start + chunk_users, data.n_users))
        cand = np.concatenate([data.val_items[local][:, None], data.negatives[local]], axis=1)
        users_t = torch.from_numpy(local).to(device).repeat_interleave(cand.shape[1])
        scores = scorer.predict(users_t, torch.from_numpy(cand.reshape(-1)).to(device)).view(len(local), -1)
        scores = scores.cpu().numpy()
        pos, neg = scores[:, :1], scores[:, 1:]
        total += float(((neg < pos).sum(axis=1) + 0.5 * (neg == pos).sum(axis=1)).sum() / neg.shape[1])
    return total


def evaluate(model: Scorer, data: SiloData, k: int, target: str = "val", full: bool = True,
             device: torch.device | None = None, chunk_users: int = EVAL_CHUNK_USERS) -> MetricSums:
    """:func:`evaluate_targets` for one target (``val`` or ``test``)."""
    if target not in ("val", "test"):
        raise ValueError("target must be 'val' or 'test'")
    return evaluate_targets(model, data, k, (target,), full, device, chunk_users)[target]


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    seconds: float
    val: dict[str, float]


@dataclass
class CentralizedResult:
    model_name: str
    seed: int
    best_epoch: int
    selection_metric: str
    val: dict[str, float]
    test: dict[str, float]
    history: list[EpochRecord]
    seconds_per_epoch: float
    model: object = field(repr=False, default=None)


def seeded_generators(seed: int) -> tuple[np.random.Generator, torch.Generator]:
    return np.random.default_rng(seed), torch.Generator().manual_seed(seed)


def _fresh_run(data: SiloData, cfg: Config, seed: int, device: torch.device):
    rng, gen = seeded_generators(seed)
    model = build_model(model_config(cfg.model, data.n_users, data.n_items, task=cfg.task,
                                     item_features=model_features(cfg)), gen).to(device)
    optimizer = make_optimizer(model, cfg.training)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.training.lr_decay)
    return rng, model, optimizer, scheduler


def refit(data: SiloData, cfg: Config, seed: int, epochs: int, device: torch.device,
          on_batch: Callable[[int, int], None] | None = None) -> RecModel:
    """Same seed and schedule, ``epochs`` epochs on train + validation items."""
    full = data.with_validation_in_train()
    rng, model, optimizer, scheduler = _fresh_run(full, cfg, seed, device)
    for _ in range(epochs):
        train_epoch(model, optimizer, full, cfg.training, rng, device, on_batch=on_batch)
        scheduler.step()
    return model


def _scorer(model: RecModel, data: SiloData, cfg: Config) -> Scorer:
    """What scores held-out items: the model, with the recency head when model.personalisation has it (the head
    reads the data's own histories, so a pooled or silo-alone model gets the same head a federated silo uses)."""
    return recency.for_evaluation(model, data, cfg) if "recency" in cfg.model.personalisation else model


def train_centralized(
    data: SiloData,
    cfg: Config,
    seed: int,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    evaluate_test: bool = True,
) -> CentralizedResult:
    """Train with early stopping on the validation item; test metrics come from the selected epoch only.
    ``evaluate_test=False`` (a hyper-parameter search) never reads the test items: ``test`` is then empty."""
    device = resolve_device(cfg.training.device)
    cfg = for_device(cfg, device, data.n_train)
    ev = cfg.evaluation
    task = objective(cfg.task)
    selection = task.selection(ev.selection_metric)  # task: rating -> rmse (lower is better)
    rng, model, optimizer, scheduler = _fresh_run(data, cfg, seed, device)
    history: list[EpochRecord] = []
    best_value, best_state, best_epoch, stale = -np.inf, None, 0, 0
    train_seconds = 0.0
    for epoch in range(1, cfg.training.epochs + 1):
        start = time.perf_counter()
        loss = train_epoch(model, optimizer, data, cfg.training, rng, device, on_batch=on_batch)
        scheduler.step()
        train_seconds += time.perf_counter() - start
        val = evaluate(_scorer(model, data, cfg), data, ev.k, "val",
                       ev.full_ranking or ev.selection_metric.startswith("full"), device).means(ev.k)
        record = EpochRecord(epoch, loss, time.perf_counter() - start, val)
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        value = task.score(val, selection, ev.k)
        if value > best_value:
            best_value, best_state, best_epoch, stale = value, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= cfg.training.patience:
                break
    model.load_state_dict(best_state)
    if cfg.training.refit:
        model = refit(data, cfg, seed, best_epoch, device, on_batch)
    test: dict[str, float] = {}
    if evaluate_test:
        scorer = _scorer(model, data, cfg)
        test = evaluate(scorer, data, ev.k, "test", ev.full_ranking, device).means(ev.k)
        test |= cold_metrics(scorer, data, ev.k, ev.full_ranking, device)  # cold-start items ({} when none)
    return CentralizedResult(
        model_name=cfg.model.name, seed=seed, best_epoch=best_epoch,
        selection_metric=task.selection_label(ev.selection_metric, ev.k),
        val=history[best_epoch - 1].val, test=test, history=history,
        seconds_per_epoch=train_seconds / len(history), model=model,
    )
