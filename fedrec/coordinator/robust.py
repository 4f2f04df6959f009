"""Robust aggregation under encryption (federation.groups, federation.robust_rule; issue #20).

The coordinator never sees one silo's update: with ``federation.groups`` = G > 1 each round's silos are split at
random into G groups of >= ``min_silos``, each group its own masked, encrypted sum opened by one of its members, so
what is decrypted is still a sum over >= min_silos silos. The G group means are then combined here:

* ``mean``: weighted by the groups' samples, which is FedAvg over every silo (the grouping changes only rounding);
* ``median``: the coordinate-wise median of the group means. One malicious silo sits in one group; whatever it sends
  (scaled x100, sign-flipped, noise, a stale update, a promoted item's rows), it moves only its group's mean, and the
  median of three or more group means stays between honest groups' values on every coordinate;
* ``krum``: Multi-Krum over the group means (the n - 1 that agree most, averaged by samples): with three groups the
  two that are closest, so a sign-flipped or scaled group is left out whole instead of pulling the median;
* ``outlier``: Multi-Krum's odd group left out only when it lies beyond ``federation.outlier_ratio`` times the
  kept groups' spread from their mean; otherwise every group (FedAvg), so a clean run loses nothing to it;
  A silo whose group is left out in nearly every round it takes part in (``federation.outlier_ban_rounds`` rounds
  at least) is left out from then on (:func:`repeated_outliers`): its honest group mates stop paying for it;
* ``vetted``: first the ``outlier`` test (a group mean far out of the others' spread is left out: a scaled update),
  then each item row is guarded (:func:`guard_rows`: a group's row far longer than the other groups' takes their mean: a
  promoted item's boosted rows, which barely move anyone's validation score); then, as far as ``federation.vet_drop``
  allows more, the silos vet the round (their own guard, before the model is published): the coordinator makes candidate
  models from every group (FedAvg) and from every group but one, each silo scores each candidate on its own validation
  users and sends the sums (a :class:`~fedrec.wire.messages.Vote`), and the group whose leaving out gains the
  federation's validation metric most (more than ``federation.vet_margin``) is left out. Whatever the attack (scaled,
  sign-flipped, noisy, stale, a small shift every round), if it harms the silos' users its group is left out; repeated,
  the silo is banned (:func:`repeated_outliers`). What is revealed: each candidate is a sum over >= min_silos silos, so
  each group mean (a difference of two candidates) is one too;
* ``federation.norm_filter`` (with any rule): group means longer than that multiple of the median group norm are
  dropped first, so a scaled or noisy update's group does not even bias the median towards it.
"""

from __future__ import annotations

import numpy as np
import torch

from fedrec.crypto.updates import AggregateResult
from fedrec.protocol.vetting import candidates


def norm(result: AggregateResult) -> float:
    return float(np.sqrt(sum(float(t.double().pow(2).sum()) for t in result.mean_delta.values())))


def _flat(result: AggregateResult) -> np.ndarray:
    return np.concatenate([t.double().numpy().ravel() for t in result.mean_delta.values()])


def multi_krum(results: list[AggregateResult], byzantine: int = 1) -> list[AggregateResult]:
    """Multi-Krum (Blanchard et al. NeurIPS'17) over group means: each scored by its squared distances to its
    n - byzantine - 2 nearest others (at least one), the n - byzantine best kept. With three groups: the closest
    pair, i.e. the two groups that agree, whatever the third sends."""
    return [results[i] for i in _krum_keep([_flat(r) for r in results], byzantine)]


def _krum_keep(flat: list[np.ndarray], byzantine: int = 1) -> list[int]:
    """The indices Multi-Krum keeps among the flattened group means ``flat``."""
    n = len(flat)
    dist = np.array([[float(((a - b) ** 2).sum()) for b in flat] for a in flat])
    near = max(1, n - byzantine - 2)
    scores = [float(np.sort(np.delete(dist[i], i))[:near].sum()) for i in range(n)]
    return sorted(np.argsort(scores, kind="stable")[:n - byzantine].tolist())


def odd_one_out(results: list[AggregateResult], ratio: float) -> list[AggregateResult]:
    """Multi-Krum only when it is needed: the group mean Krum would leave out is left out only if it lies farther
    from the kept groups' mean than ``ratio`` times the kept groups' own spread (their mean distance to that mean).
    Honest groups of random silos differ by sampling and data heterogeneity alone, so a clean round keeps every
    group (FedAvg: no clean cost); a scaled, sign-flipped, noisy or stale group lies far out and is dropped whole."""
    flat = [_flat(r) for r in results]
    keep = _krum_keep(flat)
    if len(keep) == len(results):
        return results
    (odd,) = set(range(len(results))) - set(keep)
    center = np.mean([flat[i] for i in keep], axis=0)
    spread = float(np.mean([np.linalg.norm(flat[i] - center) for i in keep]))
    return [results[i] for i in keep] if np.linalg.norm(flat[odd] - center) > ratio * max(spread, 1e-12) else results


def guard_rows(results: list[AggregateResult], n_items: int,
               ratio: float) -> tuple[list[AggregateResult], list[tuple[int, str, int]]]:
    """robust_rule vetted, per item row (``federation.row_guard``): in each item table (first dimension = the
    catalogue), a group whose row is more than ``ratio`` times as long as the median of the other groups' same row
    (and than the table's median row, so that rows nobody moved are no yardstick) takes the other groups' weighted
    mean for that row instead. Targeted promotion pushes one item's rows far beyond what any honest group moves
    them while the rest of its update is honest: the whole-update tests (odd group, vetting) need not see it, this
    does, and it changes nothing else. Returns the guarded results and the (group, table, row) it replaced."""
    if ratio <= 0 or len(results) < 2:
        return results, []
    tables = [k for k, t in results[0].mean_delta.items() if t.dim() == 2 and t.shape[0] == n_items]
    weights = np.array([r.total_samples for r in results], dtype=np.float64)
    deltas = [dict(r.mean_delta) for r in results]
    replaced: list[tuple[int, str, int]] = []
    for name in tables:
        stack = np.stack([r.mean_delta[name].double().numpy() for r in results])  # groups x rows x dims
        norms = np.linalg.norm(stack, axis=2)
        floor = float(np.median(norms))
        for g in range(len(results)):
            others = [h for h in range(len(results)) if h != g]
            bad = norms[g] > ratio * np.maximum(np.median(norms[others], axis=0), floor)
            if not bad.any():
                continue
            w = weights[others] / weights[others].sum()
            row = np.tensordot(w, stack[others][:, bad], axes=1)
            guarded = deltas[g][name].clone()
            guarded[torch.from_numpy(bad)] = torch.from_numpy(row).to(guarded.dtype)
            deltas[g][name] = guarded
            replaced += [(g, name, int(i)) for i in np.flatnonzero(bad)]
    if not replaced:
        return results, []
    return [AggregateResult(mean_delta=d, total_samples=r.total_samples, contributors=r.contributors)
            for d, r in zip(deltas, results)], replaced


def repeated_outliers(history, min_rounds: int, share: float = 0.9, recent: bool = False) -> dict[str, str]:
    """Group testing across rounds (robust_rule outlier): groups are drawn afresh every round, so an honest silo shares
    the attacker's group now and then, while the attacker's own group is left out whenever it attacks. The silos
    whose group was left out in at least ``share`` of the >= ``min_rounds`` rounds they took part in (from the round
    records' ``contributors`` and ``kept``), with why; no single update is looked at. ``recent``: also in ``share``
    of the last ``min_rounds`` rounds they took part in alone, so a silo that was honest at first (a stale update,
    an attack switched on late) is not waited out for nine times its honest rounds. Two such silos that were in the
    same group in every round counted (twins: the rounds cannot tell them apart) wait until a round separates them,
    so a short ``min_rounds`` never bans an honest silo for having shared the attacker's groups."""
    events: dict[str, list[tuple[int, object, bool]]] = {}  # per silo and round: its group (none recorded: whether
    for record in history:                                   # it was left out), and whether it was left out
        out = set(record.contributors) - set(record.kept) if record.kept else set()
        for silo in record.contributors:
            group = next((frozenset(g) for g in getattr(record, "groups", ()) if silo in g), None)
            events.setdefault(silo, []).append((record.round, silo in out if group is None else group, silo in out))

    def named(window: int | None, why: str) -> dict[str, str]:
        seen = {s: e[-window:] if window else e for s, e in sorted(events.items()) if len(e) >= min_rounds}
        found = {s: e for s, e in seen.items() if sum(left for *_, left in e) >= share * len(e)}
        traces = {s: [(r, g) for r, g, _ in e] for s, e in found.items()}
        return {s: why.format(n=sum(left for *_, left in e), of=len(e))  # twins wait
                for s, e in found.items() if sum(t == traces[s] for t in traces.values()) == 1}

    lately = named(min_rounds, "its group's mean was left out as an outlier in {n} of its last {of} rounds") \
        if recent else {}
    return lately | named(None, "its group's mean was left out as an outlier in {n} of its {of} rounds")


def harm_estimates(history, drop: int = 1) -> dict[str, tuple[float, float]]:
    """robust_rule vetted, group testing across rounds: each silo's estimated harm (how much the federation's
    validation score rises when its group is left out) and its t-statistic, by least squares over every vetted round:
    each candidate's gain over candidate 0 (``record.vetting``) is the sum of the harms of the silos it leaves out
    (``record.vet_groups``). Groups are drawn afresh each round, so an honest silo that shares the attacker's group
    now and then is told apart from the attacker, which is in every group it leaves out. Only scores are read: no
    update, no group mean. Silos seen in fewer than two vetted rounds, or with too few rounds overall, are absent."""
    rows, gains, silos = [], [], sorted({s for r in history for g in getattr(r, "vet_groups", []) for s in g})
    index = {s: i for i, s in enumerate(silos)}
    for record in history:
        groups = getattr(record, "vet_groups", [])
        if not groups or not record.vetting:
            continue
        sets = candidates(len(groups), drop)
        base = record.vetting.get("candidate_0")
        for c, kept in enumerate(sets[1:], start=1):
            score = record.vetting.get(f"candidate_{c}")
            if score is None or base is None:
                continue
            row = np.zeros(len(silos))
            for g in set(range(len(groups))) - set(kept):
                for s in groups[g]:
                    row[index[s]] = 1.0
            rows.append(row)
            gains.append(score - base)
    if len(rows) <= len(silos) + 1:
        return {}
    x, y = np.array(rows), np.array(gains)
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    dof = len(y) - np.linalg.matrix_rank(x)
    sigma2 = float(((y - x @ beta) ** 2).sum()) / max(dof, 1)
    cov = sigma2 * np.linalg.pinv(x.T @ x)
    seen = x.sum(axis=0)
    return {s: (float(beta[i]), float(beta[i] / np.sqrt(cov[i, i])) if cov[i, i] > 0 else 0.0)
            for s, i in index.items() if seen[i] >= 2}


def harmful_silos(history, drop: int, z: float, min_rounds: int) -> dict[str, str]:
    """The silos whose estimated harm (:func:`harm_estimates`) is positive with a t-statistic above ``z``, once at
    least ``min_rounds`` vetted rounds are in, with why."""
    vetted = [r for r in history if getattr(r, "vet_groups", [])]
    if len(vetted) < max(min_rounds, 2):
        return {}
    return {s: f"leaving its group out raised the silos' validation score by {harm:+.4f} on average over "
               f"{len(vetted)} vetted rounds (t = {t:.1f} > {z})"
            for s, (harm, t) in harm_estimates(vetted, drop).items() if harm > 0 and t > z}


def pooled_scores(ballots: list[tuple[float, list[float]]], trim: int) -> list[float]:
    """robust_rule vetted: the federation's validation score of each candidate from the silos' ballots, each ``(users,
    [its users' mean score of candidate 0, 1, ...])``. Unclipped (``trim`` 0, or too few ballots) it is the users-
    weighted mean of the ballots (the pooled score: every silo's users count once). With ``trim`` = t >= 1 and more
    than 2t + 1 ballots, each silo's *gain* of a candidate over candidate 0 is first clipped to the t-th smallest and
    t-th largest gain of the other silos, so up to t lying voters move the pooled gain no further than honest silos'
    own gains reach: a silo that scores every candidate but 0 at nothing (to keep its own poisoned group in) or one
    candidate at everything (to have an honest group left out) counts as the most extreme honest silo does, not as
    its share of the users times the whole score range."""
    if not ballots:
        return []
    users = np.array([float(n) for n, _ in ballots])  # each > 0: the coordinator pools only votes over users
    scores = np.array([s for _, s in ballots], dtype=float)  # silos x candidates
    w = users / users.sum()
    base = float(w @ scores[:, 0])
    gains = scores - scores[:, :1]
    if trim >= 1 and len(ballots) > 2 * trim + 1:
        clipped = gains.copy()
        for i in range(len(ballots)):
            others = np.sort(np.delete(gains, i, axis=0), axis=0)
            clipped[i] = np.clip(gains[i], others[trim - 1], others[-trim])
        gains = clipped
    return [base + float(w @ gains[:, c]) for c in range(scores.shape[1])]


def pick(scores: list[float], margin: float) -> int:
    """robust_rule vetted: the candidate to publish from the federation's validation score of each (higher is
    better; candidate 0 has every group): the best of the others when it beats candidate 0 by more than
    ``margin``, else 0."""
    if len(scores) < 2:
        return 0
    best = 1 + int(np.argmax(scores[1:]))
    return best if scores[best] > scores[0] + margin else 0


def combine(results: list[AggregateResult], rule: str, norm_filter: float = 0.0,
            outlier_ratio: float = 3.0) -> AggregateResult | None:
    """One round's result from its groups' means (groups whose sum could not be opened are left out). ``median``
    needs three groups; with fewer it is the weighted mean (a median of two is their mean anyway). ``norm_filter``
    > 0 first drops each group mean whose L2 norm exceeds that multiple of the groups' median norm (a scaled or noisy
    update makes its group's mean far longer than honest ones; a median alone would still lean towards it)."""
    results = [r for r in results if r is not None]
    if not results:
        return None
    if norm_filter > 0 and len(results) >= 3:
        norms = [norm(r) for r in results]
        bound = norm_filter * float(np.median(norms))
        results = [r for r, n in zip(results, norms) if n <= bound] or results
    if len(results) == 1:
        return results[0]
    total = sum(r.total_samples for r in results)
    contributors = tuple(sorted(s for r in results for s in r.contributors))
    names = list(results[0].mean_delta)
    if rule in ("krum", "outlier") and len(results) >= 3:
        results = multi_krum(results) if rule == "krum" else odd_one_out(results, outlier_ratio)
        total = sum(r.total_samples for r in results)
        contributors = tuple(sorted(s for r in results for s in r.contributors))
        rule = "mean"
    if rule == "median" and len(results) >= 3:
        mean = {k: torch.from_numpy(np.median(np.stack([r.mean_delta[k].double().numpy() for r in results]), axis=0))
                .to(results[0].mean_delta[k].dtype) for k in names}
    elif rule in ("mean", "median", "krum", "outlier"):
        mean = {k: sum(r.mean_delta[k].double() * (r.total_samples / total) for r in results)
                .to(results[0].mean_delta[k].dtype) for k in names}
    else:
        raise ValueError(f"unknown robust rule {rule!r}")
    return AggregateResult(mean_delta=mean, total_samples=total, contributors=contributors)
