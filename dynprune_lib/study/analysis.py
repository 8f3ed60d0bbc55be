"""The whole reproduction read back from ``results/``: paper vs ours, and what the paper never measured.

Notebook 05 calls these after notebooks 01-04 have written their tables. Nothing
here trains or measures; every number comes from a results file, and a file
that is missing raises an error naming the notebook that writes it.

* :func:`paper_vs_ours`: every number the paper reports (sections 3.1, 3.2 and
  the Figure 6 reading of section 4) beside ours, with the difference and the
  conditions ours were measured under; :func:`paper_vs_ours_markdown` formats
  it for the README.
* :func:`accuracy_sparsity_table`, :func:`storage_sparsity_table`,
  :func:`latency_sparsity_table`, :func:`training_time_table`: accuracy, model
  size, inference speed-up and training time against sparsity / per method.
* :func:`claims_table`: each of the paper's claims, the measurement that tests
  it and its verdict by a rule of :mod:`.rules`, over seeds.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .comparison import TRADITIONAL_NAME, check_paper_claims
from .experiments import at_chance
from .paper import PAPER, PAPER_CLAIMS
from .profiles import TIME_BUDGETS
from .results import RESULT_FILES, read_result, result_path
from .rules import RULES, Rule, Verdict, decide, holm, overfitting_signs

__all__ = [
    "accuracy_sentence",
    "accuracy_sparsity_table",
    "claims_summary",
    "claims_table",
    "cnn_claims",
    "figure6_claims",
    "final_per_seed",
    "goals_table",
    "latency_sparsity_table",
    "missed_goals_sentence",
    "mlp_claims",
    "paper_vs_ours",
    "paper_vs_ours_markdown",
    "storage_sparsity_table",
    "time_budget_goals",
    "training_time_table",
]

# --------------------------------------------------------------------------- paper vs ours


def paper_vs_ours(results_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Every number the paper reports beside ours.

    Sections 3.1 and 3.2 come from notebooks 01 and 02 (``paper``, ``ours``,
    ``difference`` as fractions or losses). Figure 6 has no numbers, only a
    reading (which side scores higher on each aspect): its rows give that
    reading in ``paper_claim``, our score difference (network minus traditional
    method) in ``ours`` and whether they agree in ``agrees``.
    """
    frames = []
    baseline = read_result(results_dir, "baseline_vs_paper")
    cnn = read_result(results_dir, "dynamic_cnn_vs_paper")
    # the DSR CNN's training precision (notebook 02's profile) belongs to its conditions
    dsr = read_result(results_dir, "dynamic_cnn_methods").set_index("method").loc["dsr"]
    cnn["conditions"] = cnn["conditions"] + f"; precision={dsr['precision']}"
    for key, table in (("baseline_vs_paper", baseline), ("dynamic_cnn_vs_paper", cnn)):
        frames.append(table.assign(paper_claim="", agrees="", source=RESULT_FILES[key].name))
    claims = _figure6_decided(results_dir)
    aspects = read_result(results_dir, "fig6_aspects")
    published = read_result(results_dir, "wrn_vs_published")
    conditions = (
        f"profile={';'.join(sorted(aspects['profile'].astype(str).unique()))}; "
        f"networks={', '.join(published['recipe'].unique())}; "
        f"epochs={', '.join(map(str, sorted(published['epochs'].unique())))}; "
        f"seeds={', '.join(map(str, sorted(aspects['seed'].unique())))}"
    )
    frames.append(
        pd.DataFrame(
            {
                "experiment": "wrn_vs_traditional",
                "metric": [
                    f"Figure 6 {a} score: {n} - traditional" for a, n in zip(claims["aspect"], claims["network"])
                ],
                "paper": math.nan,
                "ours": claims["network - traditional"],
                "ours_std": math.nan,
                "n": claims["n"],
                "difference": math.nan,
                "conditions": conditions,
                "paper_claim": [f"higher for {side}" for side in claims["paper: higher for"]],
                "agrees": claims["verdict"],
                "source": RESULT_FILES["fig6_aspects"].name,
            }
        )
    )
    columns = [
        "experiment",
        "metric",
        "paper",
        "paper_claim",
        "ours",
        "ours_std",
        "n",
        "difference",
        "agrees",
        "conditions",
        "source",
    ]
    return pd.concat(frames, ignore_index=True)[columns]


def _fmt(metric: str, value: float, *, diff: bool = False) -> str:
    if pd.isna(value):
        return ""
    if "acc" in metric and "score" not in metric:
        return f"{100 * value:+.2f} pt" if diff else f"{100 * value:.2f} %"
    return f"{value:+.4f}" if diff else f"{value:.4f}"


def paper_vs_ours_markdown(table: pd.DataFrame) -> str:
    """:func:`paper_vs_ours` as a Markdown table: accuracies in %, differences in points, ours as
    mean ± standard deviation over ``n`` seeds where there are several."""
    # a table written before seeds were counted has neither column: one run per row
    table = table.assign(ours_std=table.get("ours_std", math.nan), n=table.get("n", 1))
    rows = pd.DataFrame(
        {
            "experiment": table["experiment"],
            "metric": table["metric"],
            "paper": [
                c if isinstance(c, str) and c else _fmt(m, v)
                for m, v, c in zip(table["metric"], table["paper"], table["paper_claim"])
            ],
            "ours": [
                _fmt(m, v) + ("" if pd.isna(sd) else f" ± {_fmt(m, sd, diff=True).lstrip('+')} (n={n:g})")
                for m, v, sd, n in zip(table["metric"], table["ours"], table["ours_std"], table["n"])
            ],
            "difference": [
                a if isinstance(a, str) and a else _fmt(m, v, diff=True)
                for m, v, a in zip(table["metric"], table["difference"], table["agrees"])
            ],
            "conditions": table["conditions"],
        }
    )
    rows["difference"] = rows["difference"].replace({"n/m": "not measured"})
    return rows.to_markdown(index=False)


# --------------------------------------------------------------------------- beyond the paper


def accuracy_sparsity_table(results_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Final test accuracy of every trained model against the sparsity measured on its weights.

    One row per (model, method, target sparsity), means over seeds: the CNN of
    notebook 02 (``sparsity`` = convolution weights) and the MLP of notebook 03
    (linear weights); dense models have sparsity 0. ``runs_at_chance`` counts the
    seeds that ended at chance (:func:`~.experiments.at_chance`; for the CNN, whose
    table holds no seeds, 1 when its worst seed did).
    """
    cnn = read_result(results_dir, "dynamic_cnn_methods")
    cnn = cnn[cnn["method"] != "baseline"]
    mlp = read_result(results_dir, "dynamic_mlp_runs")
    mlp = (
        mlp.assign(at_chance=at_chance(mlp["final_test_acc"]))
        .groupby(["method", "sparsity_target"], dropna=False, sort=False)
        .agg(
            final_test_acc=("final_test_acc", "mean"),
            final_test_acc_min=("final_test_acc", "min"),
            final_test_acc_max=("final_test_acc", "max"),
            sparsity=("linear_sparsity", "mean"),
            seeds=("seed", "size"),
            runs_at_chance=("at_chance", "sum"),
        )
        .reset_index()
    )
    cnn = cnn.assign(model="CNN (notebook 02)", sparsity=cnn["conv_sparsity"])
    cnn = cnn.assign(runs_at_chance=at_chance(cnn.get("final_test_acc_min", cnn["final_test_acc"])).astype(int))
    mlp = mlp.assign(model="MLP (notebook 03)")
    columns = ["model", "method", "sparsity", "final_test_acc", "final_test_acc_min", "final_test_acc_max", "seeds"]
    columns.append("runs_at_chance")
    return pd.concat([cnn[columns], mlp[columns]], ignore_index=True)


def storage_sparsity_table(results_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """File size of every stored model, dense and in CSR, against its sparsity.

    From ``dynamic_mlp_storage.csv`` (every MLP run of notebook 03) and
    ``dynamic_cnn_storage.csv`` (the DSR CNN of notebook 02).
    """
    mlp = read_result(results_dir, "dynamic_mlp_storage").assign(model="MLP (notebook 03)")
    cnn = read_result(results_dir, "dynamic_cnn_storage")
    methods = read_result(results_dir, "dynamic_cnn_methods").set_index("method")
    cnn = cnn.assign(
        model="CNN (notebook 02)", method="dsr", seed=-1, sparsity=float(methods.loc["dsr", "conv_sparsity"])
    )
    columns = ["model", "method", "sparsity", "format", "bytes", "ratio_to_dense"]
    return pd.concat([cnn[columns], mlp[columns]], ignore_index=True)


def latency_sparsity_table(
    results_dir: str | os.PathLike[str], *, methods: tuple[str, ...] = ("dense", "dsr")
) -> pd.DataFrame:
    """Dense vs sparse-kernel forward time of the trained models of ``methods`` against their sparsity,
    per batch size: every MLP run of notebook 03 and the DSR CNNs of notebook 02 (one per seed)."""
    mlp = read_result(results_dir, "dynamic_mlp_latency").assign(model="MLP (notebook 03)")
    mlp = mlp[mlp["method"].isin(methods)]
    cnn = read_result(results_dir, "dynamic_cnn_latency")
    methods = read_result(results_dir, "dynamic_cnn_methods").set_index("method")
    cnn = cnn.assign(model="CNN (notebook 02)", method="dsr", sparsity=float(methods.loc["dsr", "conv_sparsity"]))
    columns = ["model", "method", "sparsity", "batch", "dense_ms", "sparse_ms", "speedup", "threads", "device"]
    return pd.concat([cnn[columns], mlp[columns]], ignore_index=True)


def training_time_table(results_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Training wall time of every method (mean over seeds), with the device it ran on.

    The CNN methods of notebook 02 (and the paper's baseline CNN), the MLP runs of
    notebook 03 at the CNN's sparsity, the Wide ResNet and the traditional
    method of notebook 04 (its feature extraction and classifier search).
    """
    rows = []
    cnn = read_result(results_dir, "dynamic_cnn_methods")
    for r in cnn.itertuples():
        rows.append(
            {
                "model": "CNN (notebook 02)",
                "method": r.method,
                "minutes": r.train_minutes,
                "seconds_per_epoch": r.seconds_per_epoch,
                "epochs": r.epochs,
            }
        )
    mlp = read_result(results_dir, "dynamic_mlp_runs")
    for (method, target), part in mlp.groupby(["method", "sparsity_target"], dropna=False, sort=False):
        rows.append(
            {
                "model": "MLP (notebook 03)",
                "method": method if pd.isna(target) else f"{method} {target:g}",
                "minutes": part["train_minutes"].mean(),
                "seconds_per_epoch": part["seconds_per_epoch"].mean(),
                "epochs": int(part["epochs"].iloc[0]),
            }
        )
    aspects = read_result(results_dir, "fig6_aspects")
    published = read_result(results_dir, "wrn_vs_published").groupby("method")["epochs"].first()
    for method, part in aspects.groupby("method", sort=False):
        epochs = published.get(method, math.nan)
        minutes = part["train_seconds"].mean() / 60
        rows.append(
            {
                "model": "WRN vs traditional (notebook 04)",
                "method": method,
                "minutes": minutes,
                "seconds_per_epoch": 60 * minutes / epochs if epochs == epochs else math.nan,
                "epochs": epochs,
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the claims


def final_per_seed(histories: pd.DataFrame) -> pd.DataFrame:
    """The last epoch of every (method, target sparsity, seed) run in a long history table."""
    keys = [k for k in ("method", "sparsity_target", "seed") if k in histories.columns]
    last = histories.groupby(keys, dropna=False, sort=False)["epoch"].transform("max")
    return histories[histories["epoch"] == last].reset_index(drop=True)


def _paired(final: pd.DataFrame, method: str, other: str, column: str = "test_acc") -> pd.Series:
    """``method`` minus ``other`` in ``column``, one value per seed both ran."""
    a, b = (final[final["method"] == m].set_index("seed")[column] for m in (method, other))
    return (a - b.reindex(a.index)).dropna()


class _Claims:
    """Rows of the claims table, each decided by a rule of :data:`~.rules.RULES`; the accuracy
    differences among them are one family, corrected together by Holm's method (:func:`~.rules.holm`)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, object]] = []
        self.decided: list[tuple[int, Rule, Verdict]] = []  # rows decided here, to correct as a family

    def row(self, claim: str, measure: str, rule_name: str, **fields: object) -> None:
        """A row with its rule named and described; ``fields``: n, ours, low, high, ours_text, verdict."""
        rule = RULES[rule_name]
        blank = {"n": 0, "ours": math.nan, "low": math.nan, "high": math.nan, "p": math.nan, "p_holm": math.nan}
        self.rows.append(
            {"claim": claim, "measurement": measure, "rule": f"{rule_name}: {rule.describe()}", "unit": rule.unit}
            | blank
            | fields
        )

    def add(self, claim: str, measure: str, rule_name: str, values) -> None:
        """A row decided here by ``rule_name`` on ``values`` (one per seed)."""
        rule = RULES[rule_name]
        found = decide(rule, list(values))
        self.decided.append((len(self.rows), rule, found))
        self.row(claim, measure, rule_name, n=found.n, ours=found.mean, low=found.low, high=found.high)

    def not_measured(self, claim: str, measure: str, rule_name: str, why: str) -> None:
        self.row(claim, measure, rule_name, ours_text=f"n/m ({why})", verdict="not measured")

    def frame(self) -> pd.DataFrame:
        family = [(i, rule, found) for i, rule, found in self.decided if rule.unit == "accuracy"]
        corrected = dict(zip((i for i, _, _ in family), holm([(rule, found) for _, rule, found in family])))
        for i, rule, found in self.decided:
            found = corrected.get(i, found)
            self.rows[i].update(
                ours_text=found.interval(rule.unit), verdict=found.verdict, p=found.p, p_holm=found.p_holm
            )
        columns = ["claim", "measurement", "rule", "n", "ours", "low", "high", "ours_text", "unit", "verdict"]
        return pd.DataFrame(self.rows, columns=[*columns, "p", "p_holm"])


def cnn_claims(results_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The claims notebook 02 tests (section 3.2, the DSR CNN), rows as in :func:`claims_table`.

    Accuracy differences are paired by seed (same seed: same initial weights and data order).
    """
    histories = read_result(results_dir, "dynamic_cnn_histories")
    final = final_per_seed(histories)
    methods = set(final["method"])
    storage = read_result(results_dir, "dynamic_cnn_storage")
    latency = read_result(results_dir, "dynamic_cnn_latency")
    dsr = final[final["method"] == "dsr"]
    claims = _Claims()
    reported = PAPER["dynamic_cnn"]["final test_acc"]
    epochs = int(dsr["epoch"].max())
    reaches = f"a DynamicConv2d CNN trained with DSR reaches the reported {reported:.2%} after {epochs} epochs"
    overfit = (
        "the dynamic-pruning CNN overfits somewhat",
        "the paper's setup: DSR runs whose last half of the epochs shows the paper's symptom, training "
        "accuracy rising, test accuracy not, test loss not falling (1 = shown)",
        "shows the symptom",
    )
    _paper_setup_claims(claims, results_dir, reaches, overfit)
    ours = "our network and recipe (DynamicCNN, SGD one-cycle, augmentation, BatchNorm; chosen for this number)"
    claims.add(
        reaches,
        f"{ours}: final test accuracy minus the paper's, at {dsr['sparsity'].mean():.1%} sparse-layer sparsity",
        "reaches the reported accuracy",
        dsr["test_acc"] - reported,
    )
    if "dense" in methods:
        claims.add(
            "dynamic pruning keeps or improves accuracy",
            f"{ours}: DSR minus dense final test accuracy, same CNN, epochs and seed",
            "keeps accuracy",
            _paired(final, "dsr", "dense"),
        )
    for other in ("magnitude_oneshot", "magnitude_gradual"):
        if other in methods:
            claims.add(
                "pruning during training beats traditional pruning after training",
                f"DSR minus {other} final test accuracy, same sparsity, epochs and seed",
                "beats the other method",
                _paired(final, "dsr", other),
            )
    compute = _compute_per_method(results_dir)
    for other in ("set", "rigl", "set_erk", "rigl_erk"):
        if other in methods:
            claims.add(
                "(beyond the paper) DSR beats other dynamic sparse training",
                f"DSR minus {other} final test accuracy, same sparsity, epochs and seed; "
                f"{_compute_text(compute, 'dsr', other)}",
                "beats the other method",
                _paired(final, "dsr", other),
            )
    overfit = (overfit[0], f"{ours}: {overfit[1].split(': ', 1)[1]}", overfit[2])
    if epochs >= 2:
        claims.add(
            *overfit, [float(overfitting_signs(h)) for _, h in histories[histories["method"] == "dsr"].groupby("seed")]
        )
    else:
        claims.not_measured(*overfit, "a trend needs at least two epochs")
    dense_bytes = float(storage.loc[storage["format"].str.startswith("dense"), "bytes"].iloc[0])
    csr_bytes = float(storage.loc[storage["format"].str.startswith("CSR float32"), "bytes"].iloc[0])
    claims.add(
        "CSR storage shrinks the pruned model",
        "dense torch.save file / lossless CSR file (save_sparse), DSR CNN",
        "smaller",
        [dense_bytes / csr_bytes],
    )
    for (batch, threads, device), part in latency.groupby(["batch", "threads", "device"], sort=True):
        claims.add(
            "dynamic pruning improves inference speed",
            f"PyTorch dense / our sparse forward time, DSR CNN, batch {batch}, {threads} {device} thread(s)",
            "faster",
            part["speedup"],
        )
        # against the fastest dense runtime measured, not only eager PyTorch ("faster": ours wins;
        # "not supported": ONNX Runtime's dense graph does)
        fastest = part["onnxruntime_ms"] if "onnxruntime_ms" in part.columns else pd.Series(dtype=float)
        if fastest.notna().all() and len(fastest):
            claims.add(
                "dynamic pruning improves inference speed",
                f"ONNX Runtime dense / our sparse forward time, DSR CNN, batch {batch}, {threads} {device} "
                "thread(s) (above 1x: ours is faster than the fastest dense runtime measured)",
                "faster",
                fastest / part["sparse_ms"],
            )
    return claims.frame()


def _compute_per_method(results_dir: str | os.PathLike[str]) -> pd.Series:
    """Non-zero multiply-adds per image of each method of notebook 02 (empty for tables from
    before they were recorded)."""
    methods = read_result(results_dir, "dynamic_cnn_methods")
    if "nonzero_multiply_adds" not in methods.columns:
        return pd.Series(dtype=float)
    return methods.set_index("method")["nonzero_multiply_adds"]


def _compute_text(compute: pd.Series, method: str, other: str) -> str:
    """What each side of a comparison computes per image, for the claim's measurement."""
    if method not in compute.index or other not in compute.index:
        return "compute per image not recorded by this run"
    a, b = compute[method], compute[other]
    return f"non-zero multiply-adds per image: {method} {a / 1e6:.2f} M, {other} {b / 1e6:.2f} M ({a / b:.2f}x)"


def _paper_setup_claims(claims: _Claims, results_dir: str | os.PathLike[str], reaches: str, overfit: tuple) -> None:
    """The claims decided on the paper's own setup (notebook 02's first arm, ``paper_dsr_histories``):
    its section-3.1 CNN with DynamicConv2d, notebook 01's protocol, DSR at the sparsity every seed
    trained at, paired by seed with notebook 01's dense baseline."""
    keeps = ("dynamic pruning keeps or improves accuracy", "keeps accuracy")
    try:
        arm = read_result(results_dir, "paper_dsr_histories")
        baseline = read_result(results_dir, "baseline")
    except FileNotFoundError as missing:
        why = f"the paper's own arm was not run ({missing.args[0].split(':')[0]})"
        claims.not_measured(
            reaches, "the paper's setup: final test accuracy minus the paper's", "reaches the reported accuracy", why
        )
        claims.not_measured(keeps[0], "the paper's setup: DSR minus dense", keeps[1], why)
        claims.not_measured(*overfit, why)
        return
    final = final_per_seed(arm)
    seeds = final.groupby("sparsity_target")["seed"].nunique()
    target = float(seeds.idxmax())  # the sparsity every seed trained at
    at = final[np.isclose(final["sparsity_target"], target)].set_index("seed")
    setup = f"the paper's setup (its section-3.1 CNN with DynamicConv2d, notebook 01's protocol, DSR at {target:g})"
    reported = PAPER["dynamic_cnn"]["final test_acc"]
    claims.add(
        reaches,
        f"{setup}: final test accuracy minus the paper's final (which its text never calls a test accuracy, "
        f"and which lies above its own best, {PAPER['dynamic_cnn']['best test_acc']:.2%})",
        "reaches the reported accuracy",
        at["test_acc"] - reported,
    )
    dense = final_per_seed(baseline if "seed" in baseline.columns else baseline.assign(seed=0)).set_index("seed")
    claims.add(
        keeps[0],
        f"{setup}: DSR minus notebook 01's dense baseline, final test accuracy, same seed",
        keeps[1],
        (at["test_acc"] - dense["test_acc"].reindex(at.index)).dropna(),
    )
    runs = arm[np.isclose(arm["sparsity_target"], target)].groupby("seed")
    symptom = (overfit[0], f"{setup}: {overfit[1].split(': ', 1)[1]}", overfit[2])
    if int(arm["epoch"].max()) >= 2:
        claims.add(*symptom, [float(overfitting_signs(h)) for _, h in runs])
    else:
        claims.not_measured(*symptom, "a trend needs at least two epochs")


def mlp_claims(results_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The claim notebook 03 tests (sparsity changed at inference), rows as in :func:`claims_table`:
    one per (source, sparsity), paired by seed with DSR retrained at that sparsity."""
    claims = _Claims()
    for (source, target), part in read_result(results_dir, "dynamic_mlp_sparsity_claim").groupby(
        ["source", "sparsity"], sort=False
    ):
        claims.add(
            "sparsity can be changed at inference (without retraining)",
            f"MLP at sparsity {target:g}: {source} with sparsity raised at inference minus DSR retrained at it",
            "keeps accuracy",
            part["difference"],
        )
    return claims.frame()


def _figure6_decided(results_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """:func:`~.comparison.check_paper_claims` on notebook 04's per-seed scores (``fig6_aspects``)."""
    aspects = read_result(results_dir, "fig6_aspects")
    scores = aspects.rename(columns={f"score_{a}": a for a in PAPER_CLAIMS})
    return check_paper_claims(scores[["method", "seed", *PAPER_CLAIMS]])


def figure6_claims(results_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The Figure 6 readings decided on notebook 04's per-seed scores by the rule ``"higher score"``
    (:func:`~.comparison.check_paper_claims`), rows as in :func:`claims_table`."""
    claims = _Claims()
    for r in _figure6_decided(results_dir).to_dict("records"):
        claims.row(
            f"Figure 6: {r['aspect']} is higher for {r['paper: higher for']}",
            f"{r['aspect']} score of {r['network']} minus {TRADITIONAL_NAME}, shown as the paper's side's lead",
            "higher score",
            n=r["n"],
            ours=r["paper's side lead"],
            ours_text=r["paper's side leads by"] if isinstance(r.get("paper's side leads by"), str) else "n/m",
            verdict=r["verdict"],
        )
    return claims.frame()


def claims_table(results_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Each claim of the paper, the measurement that tests it and its verdict by a rule of
    :data:`~.rules.RULES`, fixed in code before the three-seed runs: the rule's 95 % interval over
    seeds (``n``, ``low``, ``high``; ``ours_text`` shows them) must clear its threshold, else the
    verdict is "inconclusive" (always so for a mean of one seed). Each notebook's accuracy
    differences are one family, corrected by Holm's method (``p``: a row's two-sided p-value,
    ``p_holm``: adjusted).

    :func:`cnn_claims` (notebook 02), :func:`mlp_claims` (03) and :func:`figure6_claims` (04).
    """
    return pd.concat([cnn_claims(results_dir), mlp_claims(results_dir), figure6_claims(results_dir)], ignore_index=True)


def claims_summary(claims: pd.DataFrame) -> str:
    """One sentence per claim (:func:`claims_table` rows grouped by claim): how many measurements
    were supported, not supported or inconclusive, with each one's interval."""
    sentences = []
    for claim, part in claims.groupby("claim", sort=False):
        counts = part["verdict"].value_counts()
        tally = ", ".join(f"{n} {v}" for v, n in counts.items())
        detail = "; ".join(
            f"{m}: {t} → {v}" for m, t, v in zip(part["measurement"], part["ours_text"], part["verdict"])
        )
        sentences.append(f"- **{claim}** ({tally}). {detail}.")
    return "\n".join(sentences)


def accuracy_sentence(runs: pd.DataFrame, sparsity: float) -> str:
    """Final test accuracy of every method at target ``sparsity`` and of the dense model, from a
    :func:`~.experiments.run_table`: mean ± standard deviation over ``n`` seeds, best first."""
    at = runs[np.isclose(runs["sparsity_target"].fillna(-1.0), sparsity) | (runs["method"] == "dense")]
    if at.empty:
        raise ValueError(f"no run at sparsity {sparsity:g}")
    stats = at.groupby("method")["final_test_acc"].agg(["mean", "std", "size"]).sort_values("mean", ascending=False)
    parts = [
        f"{method} {100 * r['mean']:.2f} %"
        + ("" if pd.isna(r["std"]) else f" ± {100 * r['std']:.2f} pt")
        + f" (n={int(r['size'])})"
        for method, r in stats.iterrows()
    ]
    return f"Final test accuracy at sparsity {sparsity:g} (dense: no pruning): " + ", ".join(parts) + "."


def goals_table(results_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Every goal this reproduction set before measuring, met or missed, with its number: the DSR
    CNN's targets (notebook 02), the latency goals of notebooks 02 and 03, and the goals of every
    benchmark JSON in ``results_dir`` that states some (with the commit it measured)."""
    frames = []
    targets = read_result(results_dir, "dynamic_cnn_goals")
    frames.append(
        pd.DataFrame(
            {
                "source": "notebook 02 (DSR CNN)",
                "goal": targets["criterion"],
                "required": targets["required"],
                "measured": targets["ours"],
                "met": targets["met"],
            }
        )
    )
    for key, notebook in (("dynamic_cnn_latency_goals", "notebook 02"), ("dynamic_mlp_latency_goals", "notebook 03")):
        goals = read_result(results_dir, key)
        frames.append(
            pd.DataFrame(
                {
                    "source": f"{notebook}, {goals['threads'].iloc[0]} thread(s)" if len(goals) else notebook,
                    "goal": goals["goal"],
                    "required": goals["required"],
                    "measured": goals["measured"],
                    "met": goals["met"],
                }
            )
        )
    for path in sorted(Path(results_dir).glob("bench_*.json")):
        bench = json.loads(path.read_text())
        if not isinstance(bench, dict) or "commit" not in bench or not isinstance(bench.get("results"), dict):
            raise ValueError(
                f"{path} is not in the benchmark format (commit, machine, results; bench/_common.py): "
                f"it predates it or was written by hand. Re-run bench/{path.stem}.py on an idle machine."
            )
        goals = pd.DataFrame(bench["results"].get("goals", []))
        if goals.empty:
            continue
        threads = goals["threads"].astype(str) if "threads" in goals.columns else "?"
        frames.append(
            pd.DataFrame(
                {
                    "source": f"{path.name} (commit {str(bench.get('commit', '?'))[:7]}), " + threads + " thread(s)",
                    "goal": goals["goal"],
                    "required": goals["required"],
                    "measured": goals["measured"],
                    "met": goals["met"],
                }
            )
        )
    frames.append(time_budget_goals(results_dir))
    return pd.concat(frames, ignore_index=True)


def time_budget_goals(results_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Each profile of :data:`~.profiles.TIME_BUDGETS` timed in ``run_times.csv``: the sum of its
    notebooks' from-scratch wall times against the budget. ``met`` stays empty until every notebook
    before this read-back (01-04) has a from-scratch time; the read-back's own, seconds, counts once
    ``run_all.sh`` has recorded it."""
    columns = ["source", "goal", "required", "measured", "met"]
    if not result_path(results_dir, "run_times").is_file():
        return pd.DataFrame(columns=columns)
    times = read_result(results_dir, "run_times")
    scratch = times[times["from_scratch"].astype(bool)]
    needed = {f"{f.writer}.ipynb" for f in RESULT_FILES.values() if f.notebook_number} - {
        f"{RESULT_FILES['goals'].writer}.ipynb"
    }
    rows = []
    for profile, budget in TIME_BUDGETS.items():
        part = scratch[scratch["profile"] == profile]
        if part.empty:
            continue
        missing = sorted(needed - set(part["notebook"]))
        measured = float(part["minutes"].sum())
        hardware = ", ".join(sorted(part["hardware"].astype(str).unique()))
        rows.append(
            {
                "source": f"run_all.sh, {profile} profile ({hardware})",
                "goal": f"every notebook from scratch, minutes (at most; sum of {part['notebook'].nunique()} notebooks"
                + (f", not yet timed: {', '.join(n[:2] for n in missing)})" if missing else ")"),
                "required": budget,
                "measured": measured,
                "met": None if missing else measured <= budget,
            }
        )
    return pd.DataFrame(rows, columns=columns)


def missed_goals_sentence(goals: pd.DataFrame) -> str:
    """How many goals of :func:`goals_table` were met, and every missed one with its numbers."""
    missed = goals[goals["met"] == False]  # noqa: E712  (bools, and None where not measured)
    head = f"{int((goals['met'] == True).sum())} of {len(goals)} goals met"  # noqa: E712
    if missed.empty:
        return head + "."
    items = "; ".join(f"{r.goal} [{r.source}]: {r.measured:.4g} against {r.required:.4g}" for r in missed.itertuples())
    return f"{head}. Missed: {items}."
