"""The federation's PNG plots: training curves per round, and each silo's HR@k (logged to MLflow and written to
<reports_dir>/<run id>/)."""

from __future__ import annotations

from pathlib import Path

from fedrec.coordinator.report import RoundRecord
from fedrec.core.objectives import Objective, objective


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _rounds_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.grid(alpha=0.3)


def training_curves(history: list[RoundRecord], k: int):
    """Training loss per round; validation and test HR@k and NDCG@k per evaluated round."""
    plt = _pyplot()
    evaluated = [h for h in history if h.val]
    fig, (loss_ax, hr_ax, ndcg_ax) = plt.subplots(1, 3, figsize=(13, 3.8))
    loss_ax.plot([h.round for h in history], [h.loss for h in history], marker=".", color="tab:red")
    loss_ax.set_title("training loss (sample-weighted)")
    task = _task(history)  # HR/NDCG@k against sampled negatives, or RMSE and MAE of the held-out ratings
    for ax, metric in zip((hr_ax, ndcg_ax), task.curve_keys(k)):
        rounds = [h.round for h in evaluated]
        ax.plot(rounds, [h.val[metric] for h in evaluated], marker=".", label="validation item")
        ax.plot(rounds, [h.test[metric] for h in evaluated], "--", marker=".", label="test item")
        ax.set_title(f"{metric} ({task.scored_against})")
    for ax in (loss_ax, hr_ax, ndcg_ax):
        _rounds_axis(ax)
    hr_ax.legend()
    fig.tight_layout()
    return fig


def per_silo_hr(history: list[RoundRecord], k: int, selected_round: int | None = None):
    """Each silo's test HR@k per evaluated round (left) and, at the selected round, its validation and test HR@k
    next to the federation's (right)."""
    plt = _pyplot()
    evaluated = [h for h in history if h.per_silo_test]
    metric = _task(history).headline(k)  # HR@k, or each silo's RMSE (task: rating)
    silos = sorted({s for h in evaluated for s in h.per_silo_test})
    fig, (line_ax, bar_ax) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    colours = plt.get_cmap("tab10" if len(silos) <= 10 else "tab20").colors  # one colour per silo
    for i, silo in enumerate(silos):
        points = [(h.round, h.per_silo_test[silo][metric]) for h in evaluated if silo in h.per_silo_test]
        line_ax.plot(*zip(*points), marker=".", label=f"silo {silo}", color=colours[i % len(colours)])
    _rounds_axis(line_ax)
    line_ax.set_title(f"test {metric} per silo")
    if silos:
        line_ax.legend(fontsize="small", ncol=2)
    chosen = next((h for h in evaluated if h.round == selected_round), evaluated[-1] if evaluated else None)
    if chosen is not None:
        names = [s for s in silos if s in chosen.per_silo_test] + ["all"]
        val = [chosen.per_silo_val.get(s, {}).get(metric, 0.0) for s in names[:-1]] + [chosen.val.get(metric, 0.0)]
        test = [chosen.per_silo_test[s][metric] for s in names[:-1]] + [chosen.test.get(metric, 0.0)]
        xs = range(len(names))
        bar_ax.bar([x - 0.2 for x in xs], val, width=0.4, label="validation")
        bar_ax.bar([x + 0.2 for x in xs], test, width=0.4, label="test")
        bar_ax.set_xticks(list(xs), names)
        bar_ax.set_xlabel("silo")
        bar_ax.set_title(f"{metric} per silo, round {chosen.round}")
        bar_ax.legend(fontsize="small")
        bar_ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def _task(history: list[RoundRecord]) -> Objective:
    """The rounds' learning task (fedrec.core.objectives)."""
    return objective(history[0].task if history else "ranking")


def figures(history: list[RoundRecord], k: int, selected_round: int | None = None) -> dict[str, object]:
    """File name -> matplotlib figure, for every plot of a federation run."""
    return {"training_curves.png": training_curves(history, k),
            f"per_silo_hr_at_{k}.png": per_silo_hr(history, k, selected_round)}


def save(figure, path: Path, dpi: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return path
