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
  it and a verdict by a stated rule.
"""

from __future__ import annotations

import math
import os

import pandas as pd

from .comparison import TRADITIONAL_NAME
from .results import RESULT_FILES, read_result

__all__ = [
    "KEEPS_ACCURACY_PT",
    "accuracy_sparsity_table",
    "claims_table",
    "latency_sparsity_table",
    "paper_vs_ours",
    "paper_vs_ours_markdown",
    "storage_sparsity_table",
    "training_time_table",
]

#: "Keeps accuracy" means at most this many percentage points below the dense model.
KEEPS_ACCURACY_PT = 1.0


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
    claims = read_result(results_dir, "fig6_paper_claims")
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
                "difference": math.nan,
                "conditions": conditions,
                "paper_claim": [f"higher for {side}" for side in claims["paper: higher for"]],
                "agrees": claims["measurement agrees"],
                "source": RESULT_FILES["fig6_paper_claims"].name,
            }
        )
    )
    columns = ["experiment", "metric", "paper", "paper_claim", "ours", "difference", "agrees", "conditions", "source"]
    return pd.concat(frames, ignore_index=True)[columns]


def _fmt(metric: str, value: float, *, diff: bool = False) -> str:
    if pd.isna(value):
        return ""
    if "acc" in metric and "score" not in metric:
        return f"{100 * value:+.2f} pt" if diff else f"{100 * value:.2f} %"
    return f"{value:+.4f}" if diff else f"{value:.4f}"


def paper_vs_ours_markdown(table: pd.DataFrame) -> str:
    """:func:`paper_vs_ours` as a Markdown table: accuracies in %, differences in points."""
    rows = pd.DataFrame(
        {
            "experiment": table["experiment"],
            "metric": table["metric"],
            "paper": [
                c if isinstance(c, str) and c else _fmt(m, v)
                for m, v, c in zip(table["metric"], table["paper"], table["paper_claim"])
            ],
            "ours": [_fmt(m, v) for m, v in zip(table["metric"], table["ours"])],
            "difference": [
                a if isinstance(a, str) and a else _fmt(m, v, diff=True)
                for m, v, a in zip(table["metric"], table["difference"], table["agrees"])
            ],
            "conditions": table["conditions"],
        }
    )
    rows["difference"] = rows["difference"].replace({"yes": "agrees", "no": "disagrees", "n/m": "not measured"})
    return rows.to_markdown(index=False)


# --------------------------------------------------------------------------- beyond the paper


def accuracy_sparsity_table(results_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Final test accuracy of every trained model against the sparsity measured on its weights.

    One row per (model, method, target sparsity), means over seeds: the CNN of
    notebook 02 (``sparsity`` = convolution weights) and the MLP of notebook 03
    (linear weights); dense models have sparsity 0.
    """
    cnn = read_result(results_dir, "dynamic_cnn_methods")
    cnn = cnn[cnn["method"] != "baseline"]
    mlp = read_result(results_dir, "dynamic_mlp_runs")
    mlp = (
        mlp.groupby(["method", "sparsity_target"], dropna=False, sort=False)
        .agg(
            final_test_acc=("final_test_acc", "mean"),
            final_test_acc_min=("final_test_acc", "min"),
            final_test_acc_max=("final_test_acc", "max"),
            sparsity=("linear_sparsity", "mean"),
            seeds=("seed", "size"),
        )
        .reset_index()
    )
    cnn = cnn.assign(model="CNN (notebook 02)", sparsity=cnn["conv_sparsity"])
    mlp = mlp.assign(model="MLP (notebook 03)")
    columns = ["model", "method", "sparsity", "final_test_acc", "final_test_acc_min", "final_test_acc_max", "seeds"]
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
    per batch size: every MLP run of notebook 03 and the DSR CNN of notebook 02."""
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


def _verdict(ok: bool | None) -> str:
    return "not measurable" if ok is None else ("supported" if ok else "not supported")


def claims_table(results_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Each claim of the paper, the measurement that tests it, and a verdict by the stated rule.

    Rules: an accuracy is *kept* when it is at most :data:`KEEPS_ACCURACY_PT`
    points below the reference; *better* means strictly higher; *smaller* /
    *faster* mean a ratio above 1. With one seed, differences of a few tenths
    of a point are within seed-to-seed noise (the table says how many seeds).
    """
    keep = KEEPS_ACCURACY_PT / 100
    cnn = read_result(results_dir, "dynamic_cnn_methods").set_index("method")
    paper_rows = read_result(results_dir, "dynamic_cnn_vs_paper").set_index("metric")
    storage = read_result(results_dir, "dynamic_cnn_storage")
    latency = read_result(results_dir, "dynamic_cnn_latency")
    claim = read_result(results_dir, "dynamic_mlp_sparsity_claim")
    figure6 = read_result(results_dir, "fig6_paper_claims")
    dsr, dense = cnn.loc["dsr"], cnn.loc["dense"]
    seeds = f"{int(dsr['seeds'])} seed(s)"
    rows = []

    def add(claim_text: str, measure: str, ours: float, ok: bool | None, unit: str = "") -> None:
        rows.append({"claim": claim_text, "measurement": measure, "ours": ours, "unit": unit, "verdict": _verdict(ok)})

    final, reported = (float(paper_rows.loc["final test_acc", c]) for c in ("ours", "paper"))
    epochs = int(dsr["epochs"])
    add(
        f"a DynamicConv2d CNN trained with DSR reaches the reported {reported:.2%} after {epochs} "
        f"epoch{'s' * (epochs != 1)}",
        f"our final test accuracy minus the paper's, DSR CNN at {dsr['conv_sparsity']:.1%} conv sparsity, {seeds}",
        final - reported,
        final >= reported,
        "accuracy",
    )
    add(
        "dynamic pruning keeps or improves accuracy",
        f"DSR minus dense final test accuracy, same CNN and budget, {seeds} (kept: >= -{KEEPS_ACCURACY_PT:g} pt)",
        dsr["final_test_acc"] - dense["final_test_acc"],
        dsr["final_test_acc"] - dense["final_test_acc"] >= -keep,
        "accuracy",
    )
    for other in ("magnitude_oneshot", "magnitude_gradual"):
        if other in cnn.index:
            diff = dsr["final_test_acc"] - cnn.loc[other, "final_test_acc"]
            add(
                "pruning during training beats traditional pruning after training",
                f"DSR minus {other} final test accuracy at the same sparsity and epochs, {seeds}",
                diff,
                diff > 0,
                "accuracy",
            )
    for other in ("set", "rigl"):
        if other in cnn.index:
            diff = dsr["final_test_acc"] - cnn.loc[other, "final_test_acc"]
            add(
                "(beyond the paper) DSR against other dynamic sparse training",
                f"DSR minus {other} final test accuracy, same sparsity and epochs, {seeds}",
                diff,
                None,
                "accuracy",
            )
    overfit = dsr["final_train_acc"] - dsr["final_test_acc"]
    add(
        "the dynamic-pruning CNN overfits somewhat",
        "DSR final training accuracy (augmented images, running mean) minus test accuracy",
        overfit,
        overfit > 0,
        "accuracy",
    )
    dense_bytes = float(storage.loc[storage["format"].str.startswith("dense"), "bytes"].iloc[0])
    csr_bytes = float(storage.loc[storage["format"].str.startswith("CSR float32"), "bytes"].iloc[0])
    add(
        "CSR storage shrinks the pruned model",
        "dense torch.save file / lossless CSR file (save_sparse), DSR CNN",
        dense_bytes / csr_bytes,
        dense_bytes / csr_bytes > 1,
        "x",
    )
    for r in latency.itertuples():
        add(
            "dynamic pruning improves inference speed",
            f"PyTorch dense / our sparse forward time, DSR CNN, batch {r.batch}, {r.threads} {r.device} thread(s)",
            r.speedup,
            r.speedup > 1,
            "x",
        )
    for column in [c for c in claim.columns if c.endswith(" - retrained")]:
        source = column.removesuffix(" - retrained")
        for sparsity, value in zip(claim["sparsity"], claim[column]):
            if pd.isna(value):
                continue
            add(
                "sparsity can be changed at inference (without retraining)",
                f"MLP at sparsity {sparsity:g}: {source} with sparsity raised at inference minus a model "
                f"retrained at it (kept: >= -{KEEPS_ACCURACY_PT:g} pt)",
                float(value),
                float(value) >= -keep,
                "accuracy",
            )
    for r in figure6.to_dict("records"):
        agrees = {"yes": True, "no": False}.get(r["measurement agrees"])
        add(
            f"Figure 6: {r['aspect']} is higher for {r['paper: higher for']}",
            f"{r['aspect']} score of {r['network']} minus {TRADITIONAL_NAME}",
            r["network - traditional"],
            agrees,
            "score",
        )
    table = pd.DataFrame(rows)
    table.insert(3, "ours_text", [_fmt_unit(v, u) for v, u in zip(table["ours"], table["unit"])])
    return table


def _fmt_unit(value: float, unit: str) -> str:
    if pd.isna(value):
        return "n/m"
    return {"accuracy": f"{100 * value:+.2f} pt", "x": f"{value:.2f}x", "score": f"{value:+.3f}"}.get(
        unit, f"{value:g}"
    )
