"""Inference latency of our sparse path against PyTorch dense and the peers, on the networks the notebooks train.

For the DynamicCNN of notebook 02 and the MLP of notebook 03 (their ``cpu``
profiles' widths), with uniformly random masks at every sparsity from 0.5 to
0.99 in every sparse layer: the forward time of PyTorch dense (masked weights
in plain layers, eager), ours (``to_sparse_inference``: BatchNorm folded,
epilogues fused, each layer on the kernel it measured faster), ONNX Runtime on
the dense graph ``export_onnx`` writes, and SparseProp
(``swap_modules_with_sparse``), at batch 1 and 64, on 1 and 2 threads
(``study.latency_sweep``). Also the time ``to_sparse_inference`` takes at batch
128, and, per layer, the speed-up notebook 02's trained DSR network gets (from its
checkpoint when ``./run_all.sh`` left one here, else random masks at the per-layer
sparsities its run ended with; ``dsr_cnn_layers``, each row saying which). The goals
(``study.LATENCY_GOALS``: speed-up over PyTorch dense or a peer) are checked
and every missed one is listed with its number. A peer that is not installed
is named in ``peers_missing`` and skipped. Run on an otherwise idle machine::

    python bench/bench_sparse_inference.py [--threads 1 2] [--seconds 0.3]
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

import dynprune_lib as dp
from dynprune_lib import study
from dynprune_lib.study import efficiency

from _common import bench_parser, write_result  # bench/ is sys.path[0] when run as a script

NAME = "bench_sparse_inference"
NETWORKS = {"DynamicCNN": "dynamic_cnn", "MLP": "dynamic_mlp"}  # -> the notebook experiment whose network it is
BATCHES = (1, 64)


def network(name: str) -> torch.nn.Module:
    """The ``cpu`` profile's network of ``name``, with BatchNorm statistics of one forward pass."""
    dp.set_seed(0)
    model = study.build_model(study.experiment_profile(NETWORKS[name], "cpu"))
    model.train()
    with torch.no_grad():
        model(torch.randn(64, 3, 32, 32))
    return model.eval()


ROOT = Path(__file__).resolve().parents[1]
#: Where ./run_all.sh leaves notebook 02's trained DSR run (seed 0), when it has run on this machine.
DSR_CHECKPOINTS = "build/runs/02_dynamic_cnn/cnn_dsr_s0.9_seed0_*.pt"


def dsr_network() -> tuple[torch.nn.Module, dict[str, float], str]:
    """Notebook 02's trained DSR DynamicCNN (seed 0) from its checkpoint when ``./run_all.sh`` left
    one here; else the same network with random masks at the per-layer sparsities that run ended
    with (``results/dynamic_cnn_sparsity.csv``; speed depends on each layer's density). Returns
    the model, its sparse layers' sparsities and where it came from."""
    checkpoints = sorted(ROOT.glob(DSR_CHECKPOINTS))
    if checkpoints:
        model = network("DynamicCNN")
        model.load_state_dict(dp.load_checkpoint(checkpoints[-1])["model"])
        model.eval()
        per_layer = {name: layer.sparsity for name, layer in dp.sparse_modules(model)}
        return model, per_layer, f"trained checkpoint {checkpoints[-1].name}"
    table = pd.read_csv(ROOT / "results" / "dynamic_cnn_sparsity.csv")
    per_layer = {r.layer: float(r.sparsity) for r in table.itertuples() if r.dynamic is True or r.dynamic == "True"}
    source = "random masks at the per-layer sparsities of results/dynamic_cnn_sparsity.csv (no checkpoint here)"
    return efficiency.with_random_masks(network("DynamicCNN"), per_layer), per_layer, source


def dsr_layers(seconds: float) -> list[dict]:
    """Per layer of the DSR network at batch 1 and 64: its sparsity, the dense and the sparse kernel's
    time (as ``to_sparse_inference`` measured them, layers one by one), and the whole network's."""
    model, per_layer, source = dsr_network()
    rows = []
    for batch in BATCHES:
        x = torch.randn(batch, 3, 32, 32)
        report: list[dp.LayerChoice] = []
        dp.to_sparse_inference(model, x, report=report, chain=False, budget_s=seconds)
        for c in report:
            rows.append(
                {
                    "batch": batch,
                    "layer": c.name,
                    "sparsity": per_layer.get(c.name, 1.0 - c.density),
                    "dense_ms": 1e3 * c.dense_seconds,
                    "sparse_ms": 1e3 * c.sparse_seconds,
                    "speedup": c.dense_seconds / c.sparse_seconds,
                    "backend": c.backend,
                    "source": source,
                }
            )
        whole = efficiency.latency_table(model, (batch,), seconds=seconds).iloc[0]
        rows.append(
            {
                "batch": batch,
                "layer": "whole network",
                "sparsity": None,
                "dense_ms": float(whole["dense_ms"]),
                "sparse_ms": float(whole["sparse_ms"]),
                "speedup": float(whole["speedup"]),
                "backend": whole["sparse_backends"],
                "source": source,
            }
        )
    return rows


def main() -> None:
    parser = bench_parser(NAME, __doc__)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99])
    parser.add_argument("--seconds", type=float, default=0.3, help="timing per variant and round (3 rounds)")
    parser.add_argument("--peers", nargs="*", default=list(study.PEERS))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")

    start = time.perf_counter()
    load_before = os.getloadavg()
    frames, goals, conversion = [], [], []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name in args.networks:
            model = network(name)
            sweep = efficiency.latency_sweep(
                model, args.sparsities, BATCHES, seconds=args.seconds, peers=tuple(args.peers)
            )
            frames.append(sweep.assign(network=name))
            goals.append(efficiency.latency_goals(sweep, name).assign(network=name))
            x = torch.randn(128, 3, 32, 32)
            t0 = time.perf_counter()
            dp.to_sparse_inference(efficiency.with_random_masks(model, 0.95), x)
            conversion.append(
                {
                    "network": name,
                    "threads": threads,
                    "batch": 128,
                    "sparsity": 0.95,
                    "seconds": time.perf_counter() - t0,
                }
            )
            for r in sweep.itertuples():
                peers = "  ".join(f"{p} x{getattr(r, f'{p}_speedup'):.2f}" for p in args.peers)
                print(
                    f"{threads} thr {name:10s} s={r.sparsity:.2f} b={r.batch:3d}: dense {r.dense_ms:8.3f} ms  "
                    f"ours {r.sparse_ms:8.3f} ms  x{r.speedup:5.2f}  {peers}  sparse layers {r.layers_sparse}/"
                    f"{r.layers}",
                    flush=True,
                )
    torch.set_num_threads(max(args.threads))
    dsr = dsr_layers(args.seconds)
    for r in dsr:
        sparsity = "" if r["sparsity"] is None else f"sparsity {r['sparsity']:.3f}"
        print(
            f"DSR CNN b={r['batch']:3d} {r['layer']:14s} {sparsity:14s}: dense "
            f"{r['dense_ms']:8.3f} ms  ours {r['sparse_ms']:8.3f} ms  x{r['speedup']:5.2f}  ({r['backend']})",
            flush=True,
        )
    load_after = os.getloadavg()
    rows = pd.concat(frames, ignore_index=True)
    goal_table = pd.concat(goals, ignore_index=True)
    conversion_goal = {
        "goal": "to_sparse_inference converts the CNN at batch 128 in at most 5 s",
        "measured_s": max(c["seconds"] for c in conversion if c["network"] == "DynamicCNN")
        if "DynamicCNN" in args.networks
        else None,
    }
    conversion_goal["met"] = conversion_goal["measured_s"] is not None and conversion_goal["measured_s"] <= 5.0
    result = {
        "rows": rows.to_dict("records"),
        "goals": goal_table.to_dict("records"),
        "goals_met": int((goal_table["met"] == True).sum()),  # noqa: E712  (bools and None)
        "goals_missed": [
            f"{g.goal} ({g.threads} threads): measured {g.measured:.2f}x"
            for g in goal_table.itertuples()
            if g.met is False
        ],
        "goals_sentence": efficiency.goals_sentence(goal_table),
        "dsr_cnn_layers": dsr,
        "dsr_cnn_threads": max(args.threads),
        "conversion": conversion,
        "conversion_goal": conversion_goal,
        "peers_missing": sorted({m for m in rows["peers_missing"] if m}),
        # More runnable processes than cores: timings include waiting for other processes.
        "machine_contended": max(load_before[0], load_after[0]) > (os.cpu_count() or 1),
        "seconds": time.perf_counter() - start,
    }
    write_result(
        args,
        NAME,
        __doc__,
        result,
        kernels=dp.kernels.backend(),
        kernels_build=dp.kernels.native.build_info(),
        loadavg_before=load_before,
        loadavg_after=load_after,
    )
    print(result["goals_sentence"])
    print(f"conversion at batch 128: {conversion_goal['measured_s']:.2f} s (goal <= 5 s)")
    if result["machine_contended"]:
        print("warning: the load average exceeded the number of cores; timings include other processes")


if __name__ == "__main__":
    main()
