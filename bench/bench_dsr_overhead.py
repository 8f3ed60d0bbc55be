"""Cost of dynamic sparse training with DSR against dense training, as notebook 02 trains.

The DynamicCNN of notebook 02's ``cpu`` profile at its batch size, optimizer
(SGD, Nesterov momentum, weight decay) and precision (bfloat16 autocast), on
random CIFAR-sized inputs (the timing does not depend on the values), three ways
in one run:

* ``dense``: the network with masks of ones (notebook 02's ``dense`` method);
* ``masked``: the same weights with the uniform random masks DSR starts from at
  the profile's sparsity, no mask updates;
* ``dsr``: ``masked`` plus ``DSR.step()`` after every optimizer step with the
  schedule notebook 02 derives (``study.dsr_schedule``: ``N_p`` and the first,
  shortest update period), so the per-step times include the amortised updates.

The variants run interleaved in ``--rounds`` blocks of ``--steps`` steps after a
warm-up, in an order rotated every round, so drifting machine load affects all
alike. Reported: median and mean time per step, the median cost of one
``DSR.update()`` and an epoch estimate (steps per epoch x median step time, plus,
for DSR, the updates of an epoch at the shortest period x median update time;
the estimate from mean step times is reported too, but load spikes from other
processes inflate means). Target: the DSR epoch within 10 % of the dense one.
Writes ``results/bench_dsr_overhead.json``.

    python bench/bench_dsr_overhead.py [--rounds 5] [--steps 100] [--threads N]
"""

from __future__ import annotations

import copy
import os
import statistics
import time

import torch
import torch.nn.functional as F

import dynprune_lib as dp
from dynprune_lib import study

from _common import bench_parser, goal, write_result  # bench/ is sys.path[0] when run as a script

NAME = "bench_dsr_overhead"

TRAIN_IMAGES = 50_000
TARGET_OVERHEAD = 0.10


def make_variants(config: study.ExperimentConfig, steps_per_epoch: int, device: torch.device):
    """(model, optimizer, pruner) for dense, masked and DSR, from the same initial weights."""
    dp.set_seed(0)
    dense = study.build_model(config)
    masked = copy.deepcopy(dense)
    target = study.sparse_layer_target(masked, config.sparsity, config.sparsity_scope)
    generator = torch.Generator().manual_seed(0)
    study.init_random_masks(masked, target, distribution=config.distribution, generator=generator)
    variants = {}
    for name, model in (("dense", dense), ("masked", masked), ("dsr", copy.deepcopy(masked))):
        model.to(device)
        opt = study.experiment_optimizer(config, model)
        schedule = study.dsr_schedule(config, model, steps_per_epoch)
        pruner = dp.DSR(model, opt, seed=0, **schedule) if name == "dsr" else None
        variants[name] = (model, opt, pruner)
    return variants


def run_steps(model, opt, pruner, data, n: int, times: list[float] | None, precision: str) -> None:
    model.train()
    for i in range(n):
        x, y = data[i % len(data)]
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if pruner is not None:
            pruner.step()
        if x.is_cuda:
            torch.cuda.synchronize()
        if times is not None:
            times.append(time.perf_counter() - start)


def main() -> None:
    parser = bench_parser(NAME, __doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100, help="steps per variant per round")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--updates", type=int, default=30, help="timed DSR.update() calls")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    config = study.experiment_profile("dynamic_cnn", "cpu")
    batch = config.batch_size
    steps_per_epoch = -(-TRAIN_IMAGES // batch)
    variants = make_variants(config, steps_per_epoch, device)
    g = torch.Generator().manual_seed(1)
    data = [
        (torch.rand(batch, 3, 32, 32, generator=g).to(device), torch.randint(0, 10, (batch,), generator=g).to(device))
        for _ in range(16)
    ]
    load_before = os.getloadavg()
    for model, opt, pruner in variants.values():
        run_steps(model, opt, pruner, data, args.warmup, None, config.precision)
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % 3 :] + names[: r % 3]:  # rotate the order: no position bias
            model, opt, pruner = variants[name]
            run_steps(model, opt, pruner, data, args.steps, times[name], config.precision)

    model, opt, pruner = variants["dsr"]
    updates_timed = len({row["step"] for row in pruner.log if row["step"] > args.warmup})
    update_times = []
    for _ in range(args.updates):
        start = time.perf_counter()
        pruner.update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        update_times.append(time.perf_counter() - start)
    load_after = os.getloadavg()

    update_s = statistics.median(update_times)
    updates_per_epoch = steps_per_epoch // pruner.current_period()
    summary = {}
    for name, t in times.items():
        # robust epoch estimate: median step (load spikes from other processes hit
        # the mean) plus, for DSR, the median update cost times updates per epoch
        extra = updates_per_epoch * update_s if name == "dsr" else 0.0
        summary[name] = {
            "median_step_ms": 1e3 * statistics.median(t),
            "mean_step_ms": 1e3 * statistics.fmean(t),
            "epoch_estimate_s": steps_per_epoch * statistics.median(t) + extra,
            "epoch_estimate_from_mean_s": steps_per_epoch * statistics.fmean(t),
            "steps_timed": len(t),
        }
    ratio = summary["dsr"]["epoch_estimate_s"] / summary["dense"]["epoch_estimate_s"]
    ratio_mean = summary["dsr"]["epoch_estimate_from_mean_s"] / summary["dense"]["epoch_estimate_from_mean_s"]
    layers = dict(dp.sparse_modules(model))
    result = {
        "goals": [
            goal(
                f"DSR epoch within {TARGET_OVERHEAD:.0%} of dense (notebook 02's network; DSR/dense time)",
                1.0 + TARGET_OVERHEAD,
                ratio,
                ratio <= 1.0 + TARGET_OVERHEAD,
                threads=torch.get_num_threads(),
            )
        ],
        "model": "DynamicCNN (notebook 02, cpu profile)",
        "widths": list(config.widths),
        "batch_size": batch,
        "optimizer": f"SGD(lr={config.lr}, momentum={config.momentum}, nesterov={config.nesterov}, "
        f"weight_decay={config.weight_decay})",
        "precision": config.precision,
        "sparsity": config.sparsity,
        "sparse_layers": {
            n: {"shape": list(m.weight.shape), "mask_sparsity": m.mask_sparsity} for n, m in layers.items()
        },
        "dsr": {"n_prune": pruner.n_prune, "period": pruner.period, "updates_during_timing": updates_timed},
        "variants": summary,
        "dsr_update_ms": {
            "median": 1e3 * statistics.median(update_times),
            "max": 1e3 * max(update_times),
            "calls": len(update_times),
        },
        "dsr_vs_dense_epoch_ratio": ratio,
        "dsr_vs_dense_epoch_ratio_from_means": ratio_mean,
        "dsr_updates_per_epoch": updates_per_epoch,
        "masked_vs_dense_median_step_ratio": summary["masked"]["median_step_ms"] / summary["dense"]["median_step_ms"],
        "target_ratio": 1.0 + TARGET_OVERHEAD,
        "meets_target": ratio <= 1.0 + TARGET_OVERHEAD,
    }
    write_result(args, NAME, __doc__, result, device=str(device), loadavg_before=load_before, loadavg_after=load_after)
    for name, s in summary.items():
        print(
            f"{name:7s} median {s['median_step_ms']:.2f} ms/step  mean {s['mean_step_ms']:.2f}  "
            f"epoch ~{s['epoch_estimate_s']:.1f} s"
        )
    print(f"DSR update: median {result['dsr_update_ms']['median']:.2f} ms")
    print(
        f"DSR/dense epoch ratio {ratio:.3f} (target <= {1 + TARGET_OVERHEAD:.2f}); "
        f"load {load_before[0]:.2f} -> {load_after[0]:.2f}"
    )


if __name__ == "__main__":
    main()
