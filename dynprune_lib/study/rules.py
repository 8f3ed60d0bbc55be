"""The rules that decide each of the paper's claims, fixed in code before the numbers exist.

A claim is tested as "a difference ``d`` (ours minus its reference, one value per
seed) lies above a threshold ``t``": ``t = 0`` for *better* / *beats*, ``t = -1``
point for *keeps accuracy*, ``t = 1`` for a ratio that must exceed one. Over
``n`` seeds the 95 % confidence interval of the mean difference (Student's t,
``n - 1`` degrees of freedom) decides:

* **supported** when the whole interval lies above ``t``;
* **not supported** when the whole interval lies below ``t``;
* **inconclusive** otherwise, and always with a single seed (no interval), with ``n``.

A measurement with no seed-to-seed noise (a file size) is *exact*: its one value
decides. :data:`RULES` names every rule the claims table uses, with its
threshold; the tests exercise each branch on synthetic differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["RULES", "Rule", "Verdict", "decide", "overfitting_signs"]

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"


@dataclass(frozen=True)
class Rule:
    """``d > threshold`` decided on the confidence interval of the mean of ``d`` over seeds.

    ``unit``: ``"accuracy"`` (fractions, shown in points), ``"x"`` (a ratio),
    ``"score"`` or ``"share"`` (of seeds, each 0 or 1); ``exact``: the measurement has no noise, so one value decides.
    """

    name: str
    threshold: float
    unit: str
    exact: bool = False
    confidence: float = 0.95

    def describe(self) -> str:
        """The rule in words, for the claims table."""
        shown = {
            "accuracy": f"{100 * self.threshold:+g} pt",
            "x": f"{self.threshold:g}x",
            "share": f"{self.threshold:g} of the seeds",
        }.get(self.unit, f"{self.threshold:+g}")
        if self.exact:
            return f"above {shown} (exact measurement)"
        return f"{100 * self.confidence:g} % CI of the mean over seeds above {shown}"


@dataclass(frozen=True)
class Verdict:
    """What :func:`decide` found: the verdict, the mean difference, its interval and ``n``."""

    verdict: str
    mean: float
    low: float
    high: float
    n: int

    def interval(self, unit: str) -> str:
        """``mean [low, high], n=...`` in ``unit`` (see :class:`Rule`), for tables and sentences."""

        def fmt(v: float) -> str:
            if math.isinf(v):
                return "-inf" if v < 0 else "inf"
            return {"accuracy": f"{100 * v:+.2f} pt", "x": f"{v:.2f}x", "share": f"{v:.2f}"}.get(unit, f"{v:+.3f}")

        if self.low == self.high == self.mean:
            return f"{fmt(self.mean)} (n={self.n})"
        if math.isinf(self.low) and math.isinf(self.high):
            return f"{fmt(self.mean)} (n={self.n}, no interval)"
        return f"{fmt(self.mean)} [{fmt(self.low)}, {fmt(self.high)}] (n={self.n})"


def decide(rule: Rule, differences: Sequence[float]) -> Verdict:
    """The verdict of ``rule`` on ``differences`` (one per seed; NaNs are errors, not skipped)."""
    values = np.asarray(list(differences), dtype=float)
    if values.size == 0:
        raise ValueError(f"rule {rule.name!r}: no measurement to decide on")
    if not np.isfinite(values).all():
        raise ValueError(f"rule {rule.name!r}: the differences must be finite, got {values.tolist()}")
    n, mean = int(values.size), float(values.mean())
    if rule.exact:
        if n != 1 and not np.all(values == values[0]):
            raise ValueError(f"rule {rule.name!r} is exact, but the measurements differ: {values.tolist()}")
        low = high = mean
    elif n == 1:
        low, high = -math.inf, math.inf
    else:
        half = float(stats.t.ppf(0.5 + rule.confidence / 2, n - 1) * values.std(ddof=1) / math.sqrt(n))
        low, high = mean - half, mean + half
    if low > rule.threshold:
        verdict = SUPPORTED
    elif high < rule.threshold:
        verdict = NOT_SUPPORTED
    else:
        verdict = INCONCLUSIVE
    return Verdict(verdict, mean, low, high, n)


#: Every rule the claims table applies (the paper's claims, and the comparisons beyond it).
RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("reaches the reported accuracy", 0.0, "accuracy"),
        Rule("keeps accuracy", -0.01, "accuracy"),
        Rule("beats the other method", 0.0, "accuracy"),
        Rule("smaller", 1.0, "x", exact=True),
        Rule("faster", 1.0, "x"),
        Rule("higher score", 0.05, "score"),
        # one value per seed: 1 when its curves show the symptom (overfitting_signs), else 0
        Rule("shows the symptom", 0.5, "share"),
    )
}


def overfitting_signs(history: pd.DataFrame, *, last: float = 0.5) -> bool:
    """The paper's symptom of overfitting in one run's per-epoch curves (sec. 3.2): over the last
    ``last`` of the epochs, training accuracy rises while test accuracy does not (its least-squares
    slope is at most zero, or its best epoch lies before the last) and test loss has no downward
    trend (slope at least zero). A positive train-test gap alone is not the symptom: it is almost
    always there."""
    needed = {"epoch", "train_acc", "test_acc", "test_loss"}
    if missing := needed - set(history.columns):
        raise ValueError(f"history lacks the columns {sorted(missing)}")
    tail = history.sort_values("epoch").iloc[-max(2, math.ceil(last * len(history))) :]
    if len(tail) < 2:
        raise ValueError("overfitting needs at least two epochs")

    def slope(column: str) -> float:
        return float(np.polyfit(tail["epoch"].to_numpy(float), tail[column].to_numpy(float), 1)[0])

    test_stalls = slope("test_acc") <= 0 or tail["test_acc"].to_numpy().argmax() < len(tail) - 1
    return slope("train_acc") > 0 and test_stalls and slope("test_loss") >= 0
