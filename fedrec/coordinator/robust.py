"""Robust aggregation under encryption (federation.groups, federation.robust_rule; issue #20).

The coordinator never sees one silo's update: with ``federation.groups`` = G > 1 each round's silos are split at
random into G groups of >= ``min_silos``, each group its own masked, encrypted sum opened by one of its members, so
what is decrypted is still a sum over >= min_silos silos. The G group means are then combined here:

* ``mean``: weighted by the groups' samples, which is FedAvg over every silo (the grouping changes only rounding);
* ``median``: the coordinate-wise median of the group means. One malicious silo sits in one group; whatever it sends
  (scaled x100, sign-flipped, noise, a stale update, a promoted item's rows), it moves only its group's mean, and the
  median of three or more group means stays between honest groups' values on every coordinate.
"""

from __future__ import annotations

import numpy as np
import torch

from fedrec.crypto.updates import AggregateResult


def combine(results: list[AggregateResult], rule: str) -> AggregateResult | None:
    """One round's result from its groups' means (groups whose sum could not be opened are left out). ``median``
    needs three groups; with fewer it is the weighted mean (a median of two is their mean anyway)."""
    results = [r for r in results if r is not None]
    if not results:
        return None
    if len(results) == 1:
        return results[0]
    total = sum(r.total_samples for r in results)
    contributors = tuple(sorted(s for r in results for s in r.contributors))
    names = list(results[0].mean_delta)
    if rule == "median" and len(results) >= 3:
        mean = {k: torch.from_numpy(np.median(np.stack([r.mean_delta[k].double().numpy() for r in results]), axis=0))
                .to(results[0].mean_delta[k].dtype) for k in names}
    elif rule in ("mean", "median"):
        mean = {k: sum(r.mean_delta[k].double() * (r.total_samples / total) for r in results)
                .to(results[0].mean_delta[k].dtype) for k in names}
    else:
        raise ValueError(f"unknown robust rule {rule!r}")
    return AggregateResult(mean_delta=mean, total_samples=total, contributors=contributors)
