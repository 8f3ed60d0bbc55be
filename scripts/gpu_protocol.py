"""The published protocol on a GPU: WRN-28-2, dense and with DSR at 0.9, 200 epochs each.

One device command rarely holds both runs (at most 10 minutes a command), so each call trains
for at most ``--budget`` seconds and stops; the next call, given the same ``--state`` folder,
resumes where the last finished epoch left off. ``fit`` checkpoints after every epoch
(atomically), with the model, optimizer, DSR, learning-rate schedule, data order and random
generators, so a run split over calls follows the uninterrupted one exactly on the same machine
(``tests/test_gpu_protocol.py`` checks this on a CPU). Training runs in a child process that is
stopped at the deadline: at most the epoch in progress is lost.

Each call writes the record, one row per finished epoch of each recipe with the machine and
commit (``study.protocol_record``), to ``<state>/wrn_published_protocol.csv``; once every run
is complete it belongs in ``results/``, where notebook 04 reads it. ``--out DIR`` also copies
the checkpoints and the record there (the device tool's ``$OUT``: carry them back as
``--state`` for the next call).

    python3 scripts/gpu_protocol.py --data data/cifar10-jpeg.tar.gz --budget 540 --out $OUT
    python3 scripts/gpu_protocol.py --device cpu --subset 512 --epochs 3   # rehearse it on a CPU
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the library, installed or not

from gpu_check import commit, run_stage  # noqa: E402  (scripts/ is this script's folder)

STATE = ROOT / "build" / "gpu_protocol"
#: Seconds kept back from ``--budget`` to stop the child and write the record.
MARGIN_S = 20
MANIFEST = "manifest.json"


def recipes(names: list[str], epochs: int | None):
    """The named published recipes (``epochs`` shortens them for rehearsals, milestones rescaled)."""
    from dynprune_lib.study.profiles import wrn_recipe

    return [wrn_recipe(name) if epochs is None else wrn_recipe(name, epochs=epochs) for name in names]


def train(args: argparse.Namespace) -> None:
    """The child: every recipe in turn, resumable; first the manifest of where each checkpoint lives."""
    import dynprune_lib as dp
    from dynprune_lib.study.comparison import train_wrn, wrn_checkpoint

    data = dp.load_cifar10(args.data)
    if args.subset:
        data = data.subset(args.subset, max(args.subset // 4, 100), seed=args.seed)
    chosen = recipes(args.recipes, args.epochs)
    n_train = len(data.train_labels)
    manifest = {r.name: str(wrn_checkpoint(r, n_train, args.seed, args.state)) for r in chosen}
    (args.state / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    for recipe in chosen:
        print(f"== {recipe.label} ({recipe.name}), seed {args.seed}, {recipe.epochs} epochs", flush=True)
        train_wrn(recipe, data, seed=args.seed, device=args.device, run_dir=args.state, progress=False)


def write_record(args: argparse.Namespace) -> Path | None:
    """The record of every run the manifest names, from its checkpoint (None before any epoch)."""
    import pandas as pd
    import torch

    from dynprune_lib.study.protocol import protocol_record
    from dynprune_lib.study.results import result_path, write_result
    from dynprune_lib.train import hardware_name, load_checkpoint

    manifest_path = args.state / MANIFEST
    if not manifest_path.exists():
        return None
    manifest = json.loads(manifest_path.read_text())
    provenance = {
        "device": args.device,
        "hardware": hardware_name(args.device),
        "torch": torch.__version__,
        "commit": commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "train_images": args.subset or "all",
    }
    frames = [
        protocol_record(recipe, args.seed, load_checkpoint(manifest[recipe.name])["history"], provenance)
        for recipe in recipes(args.recipes, args.epochs)
        if Path(manifest[recipe.name]).exists()  # a run that has not finished an epoch has no checkpoint
    ]
    if not frames:
        return None
    write_result(pd.concat(frames, ignore_index=True), args.state, "wrn_published_protocol")
    return result_path(args.state, "wrn_published_protocol")


def main(argv: list[str] | None = None) -> int:
    from dynprune_lib.study.protocol import PROTOCOL_RECIPES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="CIFAR-10 (else $DYNPRUNE_DATA, then ./data)")
    parser.add_argument("--state", type=Path, default=STATE, help="checkpoints and record (carry it between calls)")
    parser.add_argument("--budget", type=float, default=540, help="seconds this call may train, all recipes together")
    parser.add_argument("--out", type=Path, help="also copy the checkpoints and the record here")
    parser.add_argument("--recipes", default=",".join(PROTOCOL_RECIPES), help="comma-separated recipe names")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu rehearses it")
    parser.add_argument("--subset", type=int, help="train on this many images (rehearsals)")
    parser.add_argument("--epochs", type=int, help="shorten every recipe to this many epochs (rehearsals)")
    parser.add_argument("--train", action="store_true", help=argparse.SUPPRESS)  # internal: the child
    args = parser.parse_args(argv)
    args.recipes = [name.strip() for name in args.recipes.split(",") if name.strip()]
    args.state = args.state.resolve()
    if args.data:
        args.data = str(Path(args.data).resolve())
    os.environ.setdefault("DYNPRUNE_PROGRESS", "0")

    if args.train:
        train(args)
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            f"gpu_protocol: no CUDA device here (torch {torch.__version__}): the published protocol is for a "
            "GPU. Use --device cpu --subset 512 --epochs 3 to rehearse it on a CPU.",
            file=sys.stderr,
        )
        return 2
    recipes(args.recipes, args.epochs)  # unknown names fail here, before any child starts
    if args.budget <= MARGIN_S:
        raise SystemExit(f"gpu_protocol: --budget must exceed {MARGIN_S} s (the time kept to stop and record)")
    args.state.mkdir(parents=True, exist_ok=True)
    child = [sys.executable, __file__, "--train", "--state", str(args.state), "--recipes", ",".join(args.recipes)]
    child += ["--seed", str(args.seed), "--device", args.device]
    for option in ("data", "subset", "epochs"):
        if getattr(args, option) is not None:
            child += [f"--{option}", str(getattr(args, option))]
    start = time.perf_counter()
    stage = run_stage("training", child, args.budget - MARGIN_S, args.state / "train.log", tag="gpu_protocol")
    record = write_record(args)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        for path in [*args.state.glob("*.pt"), *([record] if record else []), args.state / "train.log"]:
            shutil.copy2(path, args.out / path.name)
    stopped = stage["outcome"].startswith("timed out")  # at the budget: expected, the next call resumes
    message = summary(args.state, record, stage, stopped)
    print(f"[gpu_protocol] {message} ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0 if stage["passed"] or stopped else 1


def summary(state: Path, record: Path | None, stage: dict, stopped: bool) -> str:
    """The runs as recorded, and what to do next."""
    from dynprune_lib.study.protocol import published_protocol_table

    if record is None:
        return f"no epoch finished, nothing recorded: {stage['outcome']}"
    table = published_protocol_table(state)
    print(table[["method", "epochs", "planned_epochs", "test_acc", "median_epoch_s"]].to_string(index=False))
    if table["complete"].all():
        return f"every run is complete; the record for results/ is {record}"
    if stopped:
        return "stopped at the budget: run it again with the same --state to resume"
    return stage["outcome"]


if __name__ == "__main__":
    sys.exit(main())
