"""The rules that decide each of the paper's claims, fixed in code before the three-seed runs.

A claim is tested as "a difference ``d`` (ours minus its reference, one value per
seed) lies above a threshold ``t``": ``t = 0`` for *better* / *beats*, ``t = -1``
point for *keeps accuracy*, ``t = 1`` for a ratio that must exceed one. A rule is
of one of three kinds:

* ``"mean"`` (a noisy measurement): the 95 % confidence interval of the mean
  difference over ``n`` seeds (Student's t, ``n - 1`` degrees of freedom);
* ``"exact"`` (a measurement with no seed-to-seed noise: a file size, a count of
  parameters or operations): its one value is its interval;
* ``"binomial"`` (an outcome each seed shows or not, 1 or 0): the exact
  (Clopper-Pearson) 95 % interval of the share of seeds that show it.

Then:

* **supported** when the whole interval lies above ``t``;
* **not supported** when the whole interval lies below ``t``;
* **inconclusive** otherwise, and always for a mean of a single seed (no interval), with ``n``.

A family of ``"mean"`` rows decided together (a notebook's accuracy differences,
:func:`holm`) is corrected for multiple comparisons by Holm's step-down method:
each row's two-sided p-value against ``t`` is adjusted, and a row stays decided
only if its adjusted p-value is below 5 %. :data:`RULES` names every rule the
claims table uses, with its threshold; the tests exercise each branch on
synthetic values.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["KINDS", "RULES", "Rule", "Verdict", "decide", "holm", "overfitting_signs"]

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"


KINDS = ("mean", "exact", "binomial")


@dataclass(frozen=True)
class Rule:
    """``d > threshold`` decided on an interval of ``d`` over seeds, as ``kind`` says (module docstring).

    ``unit``: ``"accuracy"`` (fractions, shown in points), ``"x"`` (a ratio),
    ``"score"`` or ``"share"`` (of seeds, each 0 or 1).
    """

    name: str
    threshold: float
    unit: str
    kind: str = "mean"
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"rule {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def exact(self) -> bool:
        return self.kind == "exact"

    def describe(self) -> str:
        """The rule in words, for the claims table."""
        shown = {
            "accuracy": f"{100 * self.threshold:+g} pt",
            "x": f"{self.threshold:g}x",
            "share": f"{self.threshold:g} of the seeds",
        }.get(self.unit, f"{self.threshold:+g}")
        if self.kind == "exact":
            return f"above {shown} (exact measurement)"
        if self.kind == "binomial":
            return f"exact {100 * self.confidence:g} % binomial CI of the share of seeds above {shown}"
        return f"{100 * self.confidence:g} % CI of the mean over seeds above {shown}"


@dataclass(frozen=True)
class Verdict:
    """What :func:`decide` found: the verdict, the mean difference, its interval and ``n``;
    ``p``: the two-sided p-value of a ``"mean"`` rule's t-test against the threshold (NaN for
    the other kinds and for one seed), ``p_holm`` the same after :func:`holm` (NaN before)."""

    verdict: str
    mean: float
    low: float
    high: float
    n: int
    p: float = math.nan
    p_holm: float = math.nan

    def interval(self, unit: str) -> str:
        """``mean [low, high], n=...`` in ``unit`` (see :class:`Rule`), for tables and sentences."""

        def fmt(v: float) -> str:
            if math.isinf(v):
                return "-inf" if v < 0 else "inf"
            return {"accuracy": f"{100 * v:+.2f} pt", "x": f"{v:.2f}x", "share": f"{v:.2f}"}.get(unit, f"{v:+.3f}")

        adjusted = "" if math.isnan(self.p_holm) else f", Holm-adjusted p {self.p_holm:.3g}"
        if self.low == self.high == self.mean:
            return f"{fmt(self.mean)} (n={self.n})"
        if math.isinf(self.low) and math.isinf(self.high):
            return f"{fmt(self.mean)} (n={self.n}, no interval)"
        return f"{fmt(self.mean)} [{fmt(self.low)}, {fmt(self.high)}] (n={self.n}{adjusted})"


def _verdict(low: float, high: float, threshold: float) -> str:
    if low > threshold:
        return SUPPORTED
    if high < threshold:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def decide(rule: Rule, differences: Sequence[float]) -> Verdict:
    """The verdict of ``rule`` on ``differences`` (one per seed; NaNs are errors, not skipped)."""
    values = np.asarray(list(differences), dtype=float)
    if values.size == 0:
        raise ValueError(f"rule {rule.name!r}: no measurement to decide on")
    if not np.isfinite(values).all():
        raise ValueError(f"rule {rule.name!r}: the differences must be finite, got {values.tolist()}")
    n, mean, p = int(values.size), float(values.mean()), math.nan
    if rule.kind == "exact":
        if n != 1 and not np.all(values == values[0]):
            raise ValueError(f"rule {rule.name!r} is exact, but the measurements differ: {values.tolist()}")
        low = high = mean
    elif rule.kind == "binomial":
        if not np.isin(values, (0.0, 1.0)).all():
            raise ValueError(f"rule {rule.name!r} decides outcomes of 0 or 1, got {values.tolist()}")
        ci = stats.binomtest(int(values.sum()), n).proportion_ci(confidence_level=rule.confidence, method="exact")
        low, high = float(ci.low), float(ci.high)
    elif n == 1:
        low, high = -math.inf, math.inf
    else:
        sem = values.std(ddof=1) / math.sqrt(n)
        half = float(stats.t.ppf(0.5 + rule.confidence / 2, n - 1) * sem)
        low, high = mean - half, mean + half
        if sem > 0:
            p = float(2 * stats.t.sf(abs(mean - rule.threshold) / sem, n - 1))
        else:  # every seed agrees: no doubt about the side, unless on the threshold itself
            p = 1.0 if mean == rule.threshold else 0.0
    return Verdict(_verdict(low, high, rule.threshold), mean, low, high, n, p)


def holm(rule_verdicts: Sequence[tuple[Rule, Verdict]]) -> list[Verdict]:
    """The verdicts of one family of rows, corrected by Holm's step-down method.

    Rows with a p-value (``"mean"`` rules over two seeds or more) form the family of ``m``;
    sorted by p, the ``i``-th (from 0) is adjusted to ``max over j <= i of min(1, (m - j) p_j)``.
    A row whose adjusted p is not below ``1 - confidence`` becomes "inconclusive" (the
    correction only withdraws decisions). Rows without a p-value pass unchanged.
    """
    tested = [i for i, (_, v) in enumerate(rule_verdicts) if not math.isnan(v.p)]
    out = [v for _, v in rule_verdicts]
    m, running = len(tested), 0.0
    for rank, i in enumerate(sorted(tested, key=lambda i: rule_verdicts[i][1].p)):
        rule, found = rule_verdicts[i]
        running = max(running, min(1.0, (m - rank) * found.p))
        verdict = found.verdict if running < 1.0 - rule.confidence else INCONCLUSIVE
        out[i] = dataclasses.replace(found, verdict=verdict, p_holm=running)
    return out


#: Every rule the claims table applies (the paper's claims, and the comparisons beyond it).
RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("reaches the reported accuracy", 0.0, "accuracy"),
        Rule("keeps accuracy", -0.01, "accuracy"),
        Rule("beats the other method", 0.0, "accuracy"),
        Rule("smaller", 1.0, "x", kind="exact"),
        Rule("faster", 1.0, "x"),
        Rule("higher score", 0.05, "score"),
        # a score computed from counts of parameters and operations: the same for every seed
        Rule("higher score (exact)", 0.05, "score", kind="exact"),
        # one value per seed: 1 when its curves show the symptom (overfitting_signs), else 0
        Rule("shows the symptom", 0.5, "share", kind="binomial"),
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
