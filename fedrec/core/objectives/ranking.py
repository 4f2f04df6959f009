"""Implicit feedback (``task: ranking``): BCE on positives and sampled negatives; HR@k and NDCG@k of each user's
held-out item among fixed negatives (sampled protocol) and among every unseen item (full ranking)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np
import torch

from fedrec.core.metrics import EVAL_CHUNK_USERS, MetricSums, full_rank, sampled_rank
from fedrec.core.objectives.base import Objective

if TYPE_CHECKING:
    from fedrec.core.training import SiloData


class Ranking(Objective):
    name = "ranking"
    selectable = ("hr", "ndcg", "full_hr", "full_ndcg")
    scored_against = "sampled negatives"
    sums_type = MetricSums

    def curve_label(self, metric: str) -> str:
        return f"{metric} (sampled)"

    def rows_per_interaction(self, n_negatives: int) -> int:
        return 1 + n_negatives  # each positive with its sampled negatives

    def training_rows(self, data: "SiloData", n_negatives: int, rng: np.random.Generator):
        return data.epoch_samples(n_negatives, rng)

    @torch.no_grad()
    def evaluate(self, model, data: "SiloData", k: int, targets: tuple[str, ...] = ("val", "test"),
                 full: bool = True, device: torch.device | None = None, chunk_users: int = EVAL_CHUNK_USERS) -> dict[str, MetricSums]:
        """Rank each user's val and/or test item among its fixed negatives (and, if ``full``, among all unseen
        items), scoring every item once per user for all targets. For the test item the validation item counts as
        seen; the test item is never used for ``val``."""
        if hasattr(model, "eval"):
            model.eval()
        device = device or torch.device("cpu")
        items_of = {"val": data.val_items, "test": data.test_items}
        # a scorer that knows what was known before each target (fedrec.core.recency: the val item precedes test)
        scorer_of = {t: model.for_target(t) if hasattr(model, "for_target") else model for t in targets}
        sums = {t: MetricSums() for t in targets}
        for start in range(0, data.n_users, chunk_users):
            local = np.arange(start, min(start + chunk_users, data.n_users))
            users_t = torch.from_numpy(local).to(device)
            full_of: dict[int, np.ndarray] = {}  # each distinct scorer scores the catalogue once per chunk
            for target in targets:
                scorer = scorer_of[target]
                if full and id(scorer) not in full_of:
                    full_of[id(scorer)] = scorer.full_sort_predict(users_t).cpu().numpy()
                all_scores = full_of.get(id(scorer))
                wanted = items_of[target][local]
                cand = np.concatenate([wanted[:, None], data.negatives[local]], axis=1)
                scores = scorer.predict(users_t.repeat_interleave(cand.shape[1]),
                                        torch.from_numpy(cand.reshape(-1)).to(device)).view(len(local), -1).cpu().numpy()
                full_ranks = None
                if full:
                    excluded = data.seen_mask(local)
                    if target == "test":
                        excluded[np.arange(len(local)), data.val_items[local]] = True
                    full_ranks = full_rank(all_scores, wanted, excluded)
                sums[target] = sums[target] + MetricSums.from_ranks(sampled_rank(scores[:, 0], scores[:, 1:]),
                                                                    full_ranks, k)
        return sums

    def empty_sums(self) -> MetricSums:
        return MetricSums()

    def report_keys(self, k: int) -> tuple[str, ...]:
        return (f"hr@{k}", f"ndcg@{k}", f"full_hr@{k}", f"full_ndcg@{k}")

    def metric_name(self, metric: str, k: int) -> str:
        return f"{metric}@{k}"

    def score(self, metrics: Mapping[str, float], metric: str, k: int) -> float:
        return metrics[f"{metric}@{k}"]

    def table_columns(self, k: int) -> tuple[tuple[str, str, str], ...]:
        return super().table_columns(k) + ((f"test_full_hr@{k}", "test", f"full_hr@{k}"),)
