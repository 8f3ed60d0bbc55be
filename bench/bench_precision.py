"""Training-step time in float32 against bfloat16 autocast (``fit(precision=...)``).

The ``cpu`` profiles of notebooks 02-04 train with ``precision="bf16"``; this
measures what that buys on the machine it runs on. For each network those
profiles train (the DSR CNN of notebook 02, the MLP of notebook 03, the
WRN-10-2 of notebook 04), one SGD step on a random batch of 128 is timed in
each precision, the two alternating step by step for about ``--rounds`` x
``--seconds`` each; medians are reported, with the speed-up fp32 / bf16. Writes
``results/bench_precision.json``.

    python bench/bench_precision.py [--rounds 3] [--seconds 2]
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable

import torch

import dynprune_lib as dp
from dynprune_lib import study
from dynprune_lib.inference import time_interleaved

from _common import bench_parser, write_result  # bench/ is sys.path[0] when run as a script

NAME = "bench_precision"

BATCH = 128


def networks() -> dict[str, torch.nn.Module]:
    dp.set_seed(0)
    return {
        "DynamicCNN (notebook 02, cpu profile)": study.build_model(study.experiment_profile("dynamic_cnn", "cpu")),
        "MLP (notebook 03, cpu profile)": study.build_model(study.experiment_profile("dynamic_mlp", "cpu")),
        "WRN-10-2 (notebook 04, cpu recipe)": study.build_training(study.wrn_recipe("wrn-10-2-cpu")).model,
    }


def training_step(model: torch.nn.Module, precision: str) -> Callable[[], None]:
    """One optimizer step of ``model`` on a fixed batch, as the body of fit's training loop."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (BATCH,), generator=torch.Generator().manual_seed(1))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = bench_parser(NAME, __doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds of timing per network, precision and round")
    args = parser.parse_args()
    dp.train.check_precision("bf16", "cpu")  # warns here if this CPU has no native bfloat16
    rows = []
    for name, model in networks().items():
        # fp32 and bf16 steps alternate (one copy of the model each), so drift in machine speed hits both
        steps = {p: training_step(copy.deepcopy(model), p) for p in ("fp32", "bf16")}
        times = time_interleaved(steps, repeats=100_000, budget_s=2 * args.rounds * args.seconds, warmup=2)
        fp32, bf16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
        rows.append(
            {
                "network": name,
                "batch": BATCH,
                "fp32_ms_per_step": 1e3 * fp32,
                "bf16_ms_per_step": 1e3 * bf16,
                "speedup": fp32 / bf16,
            }
        )
        print(f"{name}: fp32 {1e3 * fp32:.1f} ms, bf16 {1e3 * bf16:.1f} ms per step ({fp32 / bf16:.2f}x)", flush=True)
    # native_cpu_bf16: the check behind fit's warning
    write_result(args, NAME, __doc__, {"networks": rows}, native_cpu_bf16=dp.train.cpu_has_native_bf16())


if __name__ == "__main__":
    main()
