"""Training-step time in float32 against bfloat16 autocast (``fit(precision=...)``).

The ``cpu`` profiles of notebooks 02-04 train with ``precision="bf16"``; this
measures what that buys on the machine it runs on. For each network those
profiles train (the DSR CNN of notebook 02, the MLP of notebook 03, the
WRN-10-2 of notebook 04), one SGD step on a random batch of 128 is timed with
``torch.utils.benchmark`` in each precision, alternately over ``--rounds``;
medians are reported, with the speed-up fp32 / bf16. Writes
``results/bench_precision.json``.

    python bench/bench_precision.py [--rounds 3] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from torch.utils import benchmark

import dynprune_lib as dp
from dynprune_lib import experiments as ex
from _common import machine_info  # bench/ is sys.path[0] when run as a script

BATCH = 128


def networks() -> dict[str, torch.nn.Module]:
    dp.set_seed(0)
    return {
        "DynamicCNN (notebook 02, cpu profile)": ex.build_model(ex.experiment_profile("dynamic_cnn", "cpu")),
        "MLP (notebook 03, cpu profile)": ex.build_model(ex.experiment_profile("dynamic_mlp", "cpu")),
        "WRN-10-2 (notebook 04, cpu recipe)": dp.build_training(dp.wrn_recipe("wrn-10-2-cpu")).model,
    }


def step_seconds(model: torch.nn.Module, precision: str, seconds: float) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (BATCH,), generator=torch.Generator().manual_seed(1))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:  # the body of fit's training loop
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: oneDNN primitive creation
    timer = benchmark.Timer("step()", globals={"step": step}, num_threads=torch.get_num_threads())  # default: 1
    return timer.blocked_autorange(min_run_time=seconds).median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per network, precision and round")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "results")
    args = parser.parse_args()
    dp.check_precision("bf16", "cpu")  # warns here if this CPU has no native bfloat16
    rows = []
    for name, model in networks().items():
        times: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(args.rounds):
            for precision in ("fp32", "bf16"):
                times[precision].append(step_seconds(model, precision, args.seconds))
        fp32, bf16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
        rows.append({"network": name, "batch": BATCH, "fp32_ms_per_step": 1e3 * fp32,
                     "bf16_ms_per_step": 1e3 * bf16, "speedup": fp32 / bf16})
        print(f"{name}: fp32 {1e3 * fp32:.1f} ms, bf16 {1e3 * bf16:.1f} ms per step ({fp32 / bf16:.2f}x)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bench_precision.json"
    native = dp.train._cpu_has_native_bf16()  # the check fit's warning uses
    path.write_text(json.dumps({"machine": machine_info(), "native_cpu_bf16": native, "results": rows}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
