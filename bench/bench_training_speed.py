"""What could make the notebooks' training faster on this machine (issue 13's time budget).

For each network the ``cpu`` profiles train (notebook 01's BaselineCNN at batch
32 with Adam in float32; the DynamicCNN of 02, the MLP of 03 and the WRN-10-2 of
04 at batch 128 with SGD and bfloat16 autocast), one training step on a random
batch is timed, each way in its own process:

* ``eager``: as ``fit`` trains today, with every thread PyTorch uses here;
* ``two_processes``: two independent runs at once, one thread each (what
  training two seeds side by side would do); its throughput is two steps per
  the slower process's step time;
* ``compiled``: ``torch.compile(model)`` with every thread (compilation time
  reported apart; inductor needs a C++ compiler);

and the per-epoch test evaluation (10,000 images, float32 as ``fit`` does,
and under bfloat16 autocast). Speed-ups are against ``eager``. Goal: one of
them trains at least 1.5x faster than eager, what three seeds in the issue's
two hours need on the 2-core reference machine (about three hours measured).

``choices``: what each speed choice of the profiles buys, at one thread as the
notebooks train: a step as trained against a step with one choice undone
(``VARIANTS``), the two alternated in fresh processes, median of ``--repeats``.
Writes ``results/bench_training_speed.json``.

    python bench/bench_training_speed.py [--steps 40] [--networks cnn mlp]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import torch

NAME = "bench_training_speed"
NETWORKS = {
    "baseline": "BaselineCNN (notebook 01: batch 32, Adam, float32)",
    "cnn": "DynamicCNN (notebook 02, cpu profile)",
    "mlp": "MLP (notebook 03, cpu profile)",
    "wrn": "WRN-10-2 (notebook 04, cpu recipe)",
}
GOAL_SPEEDUP = 1.5
#: Per network, each speed choice its profile makes, undone: name -> what the step does instead.
VARIANTS = {
    "baseline": {"nchw": "NCHW instead of channels-last (BASELINE.channels_last)"},
    "cnn": {
        "conv2d_small_input": "F.conv2d for the 2x2 last stage instead of one matrix product (_small_conv)",
        "default_sgd": "PyTorch's default SGD instead of the fused kernel (fused_sgd)",
    },
    "mlp": {"default_sgd": "PyTorch's default SGD instead of the fused kernel (fused_sgd)"},
}


def _setup(network: str, variant: str = ""):
    """(model, optimizer, batch size, precision) as the notebook trains ``network``, or with
    ``variant`` (a key of ``VARIANTS[network]``) undone."""
    import dynprune_lib as dp
    from dynprune_lib import _small_conv, study

    dp.set_seed(0)
    if network == "baseline":
        model = dp.BaselineCNN(channels_last=study.BASELINE.channels_last and variant != "nchw")
        return model, torch.optim.Adam(model.parameters(), lr=study.BASELINE.lr), study.BASELINE.batch_size, "fp32"
    if network == "wrn":
        recipe = study.wrn_recipe("wrn-10-2-cpu")
        setup = study.build_training(recipe)
        return setup.model, setup.optimizer, recipe.batch_size, recipe.precision
    config = study.experiment_profile("dynamic_cnn" if network == "cnn" else "dynamic_mlp", "cpu")
    if variant == "default_sgd":
        config = config.replace(fused_sgd=False)
    if variant == "conv2d_small_input":
        _small_conv.applies = lambda layer, input: False  # this worker process only
    model = study.build_model(config)
    optimizer = study.experiment_optimizer(config, model)
    return model, optimizer, config.batch_size, config.precision


def worker(network: str, mode: str, threads: int, steps: int) -> dict:
    """Time ``steps`` training steps (after warm-up) of ``network``; runs in its own process.
    ``mode`` ``"variant:<name>"`` times the step with that choice undone."""
    torch.set_num_threads(threads)
    model, optimizer, batch, precision = _setup(
        network, mode.removeprefix("variant:") if mode.startswith("variant:") else ""
    )
    forward = torch.compile(model) if mode == "compiled" else model
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    for _ in range(3):
        step()
    warmup = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    result = {"ms_per_step": 1e3 * statistics.median(times), "warmup_s": warmup}
    if mode == "eager":
        model.eval()
        images = torch.rand(500, 3, 32, 32, generator=g)
        with torch.no_grad():
            for name, enabled in (("eval_10k_fp32_s", False), ("eval_10k_bf16_s", True)):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                    forward(images)
                    start = time.perf_counter()
                    for _ in range(4):
                        forward(images)
                result[name] = (time.perf_counter() - start) / 4 * 20
    return result


def _spawn(network: str, mode: str, threads: int, steps: int) -> subprocess.Popen:
    args = [sys.executable, __file__, "--worker", network, mode, str(threads), str(steps)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True)


def _collect(*procs: subprocess.Popen) -> list[dict]:
    out = []
    for proc in procs:
        stdout, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"benchmark worker {proc.args[-4:]} failed (exit {proc.returncode})")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    from _common import bench_parser, goal, write_result  # bench/ is sys.path[0] when run as a script

    parser = bench_parser(NAME, __doc__)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per network and way")
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--repeats", type=int, default=3, help="alternated runs of each choice and its undoing")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    rows, goals, choices = [], [], []
    for network in args.networks:
        (eager,) = _collect(_spawn(network, "eager", threads, args.steps))
        pair = _collect(*(_spawn(network, "two_processes", 1, args.steps) for _ in range(2)))
        (compiled,) = _collect(_spawn(network, "compiled", threads, args.steps))
        two = max(p["ms_per_step"] for p in pair) / 2  # two steps per the slower process's step
        row = {
            "network": NETWORKS[network],
            "threads": threads,
            "eager_ms_per_step": eager["ms_per_step"],
            "two_processes_ms_per_step_each": [p["ms_per_step"] for p in pair],
            "two_processes_speedup": eager["ms_per_step"] / two,
            "compiled_ms_per_step": compiled["ms_per_step"],
            "compiled_speedup": eager["ms_per_step"] / compiled["ms_per_step"],
            "compile_and_warmup_s": compiled["warmup_s"],
            "eval_10k_fp32_s": eager["eval_10k_fp32_s"],
            "eval_10k_bf16_s": eager["eval_10k_bf16_s"],
        }
        rows.append(row)
        best = max(row["two_processes_speedup"], row["compiled_speedup"])
        goals.append(
            goal(
                f"{NETWORKS[network]}: some way trains >= {GOAL_SPEEDUP}x faster than eager (best of two "
                "one-thread processes and torch.compile)",
                GOAL_SPEEDUP,
                best,
                best >= GOAL_SPEEDUP,
                threads=threads,
            )
        )
        print(
            f"{row['network']}: eager {row['eager_ms_per_step']:.1f} ms/step; two one-thread processes "
            f"{row['two_processes_speedup']:.2f}x; torch.compile {row['compiled_speedup']:.2f}x "
            f"(compiling {row['compile_and_warmup_s']:.0f} s); eval of 10k images {row['eval_10k_fp32_s']:.2f} s "
            f"fp32, {row['eval_10k_bf16_s']:.2f} s bf16",
            flush=True,
        )
        for variant, undone in VARIANTS.get(network, {}).items():
            times: dict[str, list[float]] = {"as_trained": [], "undone": []}
            for _ in range(args.repeats):
                for way, mode in (("as_trained", "eager"), ("undone", f"variant:{variant}")):
                    (result,) = _collect(_spawn(network, mode, 1, args.steps))
                    times[way].append(result["ms_per_step"])
            trained, without = statistics.median(times["as_trained"]), statistics.median(times["undone"])
            choices.append(
                {
                    "network": NETWORKS[network],
                    "choice_undone": variant,
                    "undone_means": undone,
                    "threads": 1,
                    "ms_per_step_as_trained": times["as_trained"],
                    "ms_per_step_undone": times["undone"],
                    "speedup_of_the_choice": without / trained,
                }
            )
            print(
                f"{NETWORKS[network]}: {undone}: {without:.1f} ms/step, as trained {trained:.1f} ms/step "
                f"({without / trained:.2f}x)",
                flush=True,
            )
    write_result(args, NAME, __doc__, {"goals": goals, "networks": rows, "choices": choices})


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        network, mode, threads, steps = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(worker(network, mode, threads, steps)))
    else:
        main()
