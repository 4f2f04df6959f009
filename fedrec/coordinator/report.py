"""Per-round bookkeeping: turn silos' metric sums and task summaries into metrics and a per-silo table (the
Prefect artifact of each round)."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field

from fedrec.core.metrics import MetricSums
from fedrec.core.objectives import objective
from fedrec.wire.messages import MetricReport


@dataclass
class RoundRecord:
    """One round at the coordinator: who contributed, who failed and why, loss, bytes, seconds, metrics."""

    round: int
    loss: float
    contributors: list[str]
    failures: dict[str, str]
    bytes_per_silo: dict[str, int]
    plaintext_bytes: int
    seconds: dict[str, float]  # train / encrypt / aggregate / decrypt / evaluate / round
    val: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    per_silo_val: dict[str, dict[str, float]] = field(default_factory=dict)
    per_silo_test: dict[str, dict[str, float]] = field(default_factory=dict)
    #: decryptors asked for the round's sum: 1, or more when one was gone or silent (0: nothing to decrypt)
    attempts: int = 1
    #: each contributor's own seconds: train / encrypt (records of older checkpoints have none)
    seconds_per_silo: dict[str, dict[str, float]] = field(default_factory=dict)
    #: cold-start items (fedrec.core.coldstart): HR/NDCG@k of each user's held-out cold item, summed over silos
    cold: dict[str, float] = field(default_factory=dict)
    #: the learning task (``ranking`` | ``rating``): which metrics the silos' sums hold
    task: str = "ranking"
    #: the round whose global model this round trained from (federation.guard_drop; -1: the previous round)
    base_round: int = -1
    #: federation.guard_drop: the silos that refused this round's model, and whether the round was rolled back
    refused: list[str] = field(default_factory=list)
    rolled_back: bool = False
    #: federation.robust_rule krum / norm_filter: the contributors whose group's mean is in the model, when the rule
    #: left a group out (empty: every contributor's)
    kept: list[str] = field(default_factory=list)
    #: federation.robust_rule vetted: the federation's validation score of each candidate model (candidate_0: every
    #: group; the others: the groups of fedrec.protocol.vetting.candidates)
    vetting: dict[str, float] = field(default_factory=dict)
    #: robust_rule vetted: the silos of each opened group, in the order the candidates count them
    vet_groups: list[list[str]] = field(default_factory=list)
    #: federation.groups > 1: the silos of each opened group (group testing tells twins apart by it)
    groups: list[list[str]] = field(default_factory=list)

    def with_evaluation(self, reports: list[MetricReport], k: int) -> "RoundRecord":
        """This record with the silos' metric sums added up (the federation's metrics) and each silo's means."""
        task = objective(self.task)
        val, test = task.empty_sums(), task.empty_sums()
        per_val, per_test = dict(self.per_silo_val), dict(self.per_silo_test)
        for o in reports:
            o_val, o_test = task.sums(o.val), task.sums(o.test)
            val, test = val + o_val, test + o_test
            per_val[o.silo_id] = o_val.means(k)
            per_test[o.silo_id] = o_test.means(k)
        cold = [MetricSums(**o.cold) for o in reports if getattr(o, "cold", None)]  # cold start: sums only
        return dataclasses.replace(self, val=val.means(k), test=test.means(k), per_silo_val=per_val,
                                   per_silo_test=per_test, cold=sum(cold, MetricSums()).means(k) if cold else self.cold)

    def mlflow_metrics(self) -> dict[str, float]:
        """The round's MLflow metrics. The few that matter come first (the run's Overview lists metrics in the order
        they were first logged) and stay ungrouped: train_loss, val_*, test_*; the rest are grouped by prefix, which
        the MLflow UI's charts turn into sections of their own:
        ``round/`` (contributors, failures, decrypt attempts), ``seconds/`` (per phase), ``bytes/`` (per silo),
        ``he/`` (encryption cost), ``cold/`` (cold-start items), ``silo/<id>/`` (each silo's metrics and times)."""
        m: dict[str, float] = {"train_loss": self.loss}
        m |= {f"val_{k}": v for k, v in self.val.items()} | {f"test_{k}": v for k, v in self.test.items()}
        m |= {"round/silos_contributing": len(self.contributors), "round/silos_failed": len(self.failures),
              "round/decrypt_attempts": self.attempts}
        m |= {f"seconds/{phase}": s for phase, s in self.seconds.items()}
        m |= {f"bytes/silo_{s}": b for s, b in self.bytes_per_silo.items()}
        if self.bytes_per_silo:
            m["bytes/mean"] = statistics.fmean(self.bytes_per_silo.values())
        m |= {f"he/{k}": v for k, v in self.he_cost().items()}
        m |= {f"cold/{k}": v for k, v in self.cold.items()}  # cold-start items
        for silo, secs in self.seconds_per_silo.items():
            m |= {f"silo/{silo}/seconds_{phase}": s for phase, s in secs.items()}
        for silo, metrics in self.per_silo_test.items():
            m |= {f"silo/{silo}/test_{k}": v for k, v in metrics.items()}
        for silo, metrics in self.per_silo_val.items():
            m |= {f"silo/{silo}/val_{k}": v for k, v in metrics.items()}
        return m

    def he_cost(self) -> dict[str, float]:
        """What the encrypted aggregation costs this round: seconds spent encrypting (all silos), summing
        ciphertexts and decrypting the sum; bytes on the wire per silo over the fp32 update's."""
        cost = {"seconds": sum(self.seconds.get(p, 0.0) for p in ("encrypt", "aggregate", "decrypt"))}
        if self.bytes_per_silo and self.plaintext_bytes:
            cost["bytes_expansion"] = statistics.fmean(self.bytes_per_silo.values()) / self.plaintext_bytes
        return cost

    def table(self, k: int) -> list[dict[str, object]]:
        """One row per silo (contributors, failures, evaluated silos) and one for the whole federation: bytes sent,
        seconds, and the task's validation and test metrics (HR@k / NDCG@k, or RMSE / MAE); JSON-safe (None where a
        silo has no value)."""
        def num(value, digits=4):
            return None if value is None else round(float(value), digits)

        columns = objective(self.task).table_columns(k)

        def row(silo, status, bytes_sent, secs, val, test):
            metrics = {"val": val, "test": test}
            return {"silo": silo, "status": status, "bytes_sent": bytes_sent, "train_s": num(secs.get("train"), 3),
                    "encrypt_s": num(secs.get("encrypt"), 3),
                    **{column: num(metrics[target].get(key)) for column, target, key in columns}}

        silos = sorted(set(self.bytes_per_silo) | set(self.per_silo_test) | set(self.failures))
        rows = [row(s, f"failed: {self.failures[s]}" if s in self.failures else "ok", self.bytes_per_silo.get(s),
                    self.seconds_per_silo.get(s, {}), self.per_silo_val.get(s, {}), self.per_silo_test.get(s, {}))
                for s in silos]
        rows.append(row("all", f"{len(self.contributors)} contributed", sum(self.bytes_per_silo.values()),
                        self.seconds, self.val, self.test))
        return rows

    def headline(self) -> str:
        """One markdown line: loss, contributors, failures, the coordinator's seconds."""
        return (f"**Round {self.round}**: loss {self.loss:.4f}; {len(self.contributors)} silos contributed"
                + (f"; failed: {', '.join(sorted(self.failures))}" if self.failures else "")
                + "; seconds: " + ", ".join(f"{p} {s:.2f}" for p, s in self.seconds.items() if not p.startswith("train")))


def rounds_figure(history: list[RoundRecord], k: int):
    """Validation and test HR@k / NDCG@k per evaluated round (logged to MLflow beside the numbers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evaluated = [h for h in history if h.val]
    rounds = [h.round for h in evaluated]
    fig, (hr_ax, ndcg_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    task = objective(history[0].task if history else "ranking")  # HR/NDCG@k, or RMSE and MAE (task: rating)
    for ax, metric in zip((hr_ax, ndcg_ax), task.curve_keys(k)):
        ax.plot(rounds, [h.val[metric] for h in evaluated], label="validation item")
        ax.plot(rounds, [h.test[metric] for h in evaluated], "--", label="test item")
        ax.set_xlabel("round")
        ax.set_ylabel(task.curve_label(metric))
        ax.grid(alpha=0.3)
    hr_ax.legend()
    fig.tight_layout()
    return fig
