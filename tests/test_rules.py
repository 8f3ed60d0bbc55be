"""The claim rules decide each branch as stated, on synthetic differences (oracle: scipy's t interval)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dynprune_lib.study import RULES, Rule, decide, holm, overfitting_signs

KEEP = RULES["keeps accuracy"]  # threshold -1 point


def test_interval_is_students_t_over_the_seeds():
    d = [0.004, -0.002, 0.006]
    low, high = stats.t.interval(0.95, len(d) - 1, loc=np.mean(d), scale=stats.sem(d))
    got = decide(KEEP, d)
    assert (got.n, got.mean) == (3, pytest.approx(np.mean(d)))
    assert (got.low, got.high) == (pytest.approx(low), pytest.approx(high))


@pytest.mark.parametrize(
    ("differences", "verdict"),
    [
        ([0.002, 0.004, 0.003], "supported"),  # the whole interval above -1 pt
        ([-0.03, -0.025, -0.035], "not supported"),  # the whole interval below -1 pt
        ([-0.02, 0.01, -0.005], "inconclusive"),  # the interval straddles -1 pt
        ([0.05], "inconclusive"),  # one seed: no interval, whatever the value
    ],
)
def test_each_branch(differences, verdict):
    assert decide(KEEP, differences).verdict == verdict


def test_a_difference_inside_the_noise_is_inconclusive_not_supported():
    beats = RULES["beats the other method"]
    assert decide(beats, [0.004, -0.003, 0.002]).verdict == "inconclusive"  # mean > 0, interval spans 0
    assert decide(beats, [0.004, 0.005, 0.006]).verdict == "supported"


def test_exact_measurements_decide_on_one_value_and_must_agree():
    smaller = RULES["smaller"]
    assert decide(smaller, [8.5]).verdict == "supported"
    assert decide(smaller, [0.9]).verdict == "not supported"
    assert decide(smaller, [1.0]).verdict == "inconclusive"  # on the threshold is not above it
    with pytest.raises(ValueError, match="exact"):
        decide(smaller, [8.5, 8.4])


def test_bad_input_is_an_error_naming_the_rule():
    with pytest.raises(ValueError, match="keeps accuracy.*no measurement"):
        decide(KEEP, [])
    with pytest.raises(ValueError, match="finite"):
        decide(KEEP, [0.1, math.nan])


def test_rules_describe_themselves():
    assert "-1 pt" in KEEP.describe() and "95 % CI" in KEEP.describe()
    assert "exact" in RULES["smaller"].describe()
    assert Rule("r", 1.0, "x").describe().endswith("above 1x")


def _history(train, test, loss):
    return pd.DataFrame({"epoch": range(1, len(train) + 1), "train_acc": train, "test_acc": test, "test_loss": loss})


def test_overfitting_is_the_papers_symptom_not_a_train_test_gap():
    rising = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9]
    # test accuracy stops improving and test loss turns up while training accuracy rises: the symptom
    assert overfitting_signs(_history(rising, [0.5, 0.6, 0.7, 0.72, 0.71, 0.7], [1.2, 1.0, 0.9, 0.92, 0.95, 1.0]))
    # a gap, but test accuracy and loss still improve: not the symptom
    assert not overfitting_signs(_history(rising, [0.45, 0.5, 0.55, 0.6, 0.62, 0.65], [1.3, 1.2, 1.1, 1.0, 0.95, 0.9]))
    # test accuracy stalls but its loss still falls: not the symptom
    assert not overfitting_signs(_history(rising, [0.5, 0.6, 0.7, 0.71, 0.7, 0.7], [1.2, 1.0, 0.9, 0.85, 0.8, 0.75]))
    with pytest.raises(ValueError, match="test_loss"):
        overfitting_signs(_history(rising, rising, rising).drop(columns="test_loss"))


def test_interval_text_shows_the_mean_the_interval_and_n():
    rule = RULES["keeps accuracy"]
    assert decide(rule, [0.01]).interval(rule.unit) == "+1.00 pt (n=1, no interval)"
    three = decide(rule, [0.01, 0.02, 0.03])
    assert three.interval(rule.unit).startswith("+2.00 pt [") and three.interval(rule.unit).endswith("(n=3)")
    exact = RULES["smaller"]
    assert decide(exact, [7.5]).interval(exact.unit) == "7.50x (n=1)"


def test_a_binary_outcome_is_decided_on_its_exact_binomial_interval():
    """Regression: 0 of 3 seeds showing the symptom got a Student-t interval [0, 0] and "not
    supported"; its exact (Clopper-Pearson) interval is [0, 0.71], which straddles 0.5."""
    symptom = RULES["shows the symptom"]
    none = decide(symptom, [0.0, 0.0, 0.0])
    assert (none.low, none.high) == (0.0, pytest.approx(1 - 0.025 ** (1 / 3)))  # the exact bound, by hand
    assert none.verdict == "inconclusive"
    ci = stats.binomtest(2, 3).proportion_ci(method="exact")
    two = decide(symptom, [1.0, 0.0, 1.0])
    assert (two.low, two.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert decide(symptom, [0.0] * 10).verdict == "not supported"  # upper bound 0.31
    assert decide(symptom, [1.0] * 10).verdict == "supported"
    with pytest.raises(ValueError, match="0 or 1"):
        decide(symptom, [0.5, 1.0])
    assert "binomial" in symptom.describe()
    with pytest.raises(ValueError, match="kind"):
        Rule("r", 0.0, "x", kind="bayes")


def test_p_value_of_a_mean_rule_is_the_t_test_against_its_threshold():
    d = [0.004, 0.001, 0.006]
    expected = stats.ttest_1samp(d, popmean=KEEP.threshold).pvalue
    assert decide(KEEP, d).p == pytest.approx(expected)
    assert math.isnan(decide(KEEP, [0.01]).p) and math.isnan(decide(RULES["smaller"], [2.0]).p)
    assert decide(KEEP, [0.02, 0.02]).p == 0.0  # no spread: no doubt about the side


def test_holm_adjusts_a_family_by_hand():
    """p = 0.01, 0.04, 0.03 (m = 3): adjusted 0.03, then max(0.03, 2 x 0.03) = 0.06 and
    max(0.06, 1 x 0.04) = 0.06; only the first stays decided at 5 %."""
    beats = RULES["beats the other method"]
    family = [(beats, decide(beats, d)) for d in ([0.01, 0.012, 0.011], [0.02, 0.0, 0.03], [0.01, 0.02, 0.005])]
    family = [(rule, dataclasses.replace(v, p=p)) for (rule, v), p in zip(family, (0.01, 0.04, 0.03))]
    family[1] = (beats, dataclasses.replace(family[1][1], verdict="supported"))  # as if its interval cleared 0
    adjusted = holm(family)
    assert [v.p_holm for v in adjusted] == pytest.approx([0.03, 0.06, 0.06])
    assert [v.verdict for v in adjusted] == [family[0][1].verdict, "inconclusive", "inconclusive"]
    assert "Holm-adjusted p 0.03" in adjusted[0].interval("accuracy")
    untested = decide(beats, [0.05])  # one seed: no p-value, passes unchanged
    assert holm([(beats, untested)]) == [untested]


@pytest.mark.parametrize("seed", range(20))
def test_holm_on_one_row_agrees_with_its_interval(seed):
    d = np.random.default_rng(seed).normal(0.003, 0.01, size=3)
    beats = RULES["beats the other method"]
    alone = decide(beats, d)
    assert holm([(beats, alone)])[0].verdict == alone.verdict
