"""What every benchmark shares: one command line (``--out FILE``) and one result envelope.

Every ``bench/bench_*.py`` writes one JSON file::

    {"benchmark": name, "description": ..., "commit": ..., "dirty": ..., "date": ...,
     "machine": {...}, "arguments": {...}, "results": {...}}

``results["goals"]`` (when a benchmark sets targets) lists each one as
:func:`goal` writes it, met or missed; ``study.goals_table`` reads them into
notebook 05 and the README. ``machine`` says what ran it (versions, CPU, threads, load), ``commit`` and
``dirty`` which code did (``dirty``: tracked files other than ``results/`` and
``figures/`` differed from that commit). Run benchmarks on an idle machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torchvision

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
if str(ROOT) not in sys.path:  # the library, installed or not (a GPU machine's own Python has it uninstalled)
    sys.path.insert(0, str(ROOT))

from dynprune_lib._utils import atomic_write  # noqa: E402
from dynprune_lib.train import hardware_name  # noqa: E402


def machine_info() -> dict[str, Any]:
    """Versions, threads, CPU and load: enough to judge whether two runs compare."""
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hardware": hardware_name("cpu"),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15min": list(os.getloadavg()),
    }


def git_state() -> dict[str, Any]:
    """The commit this checkout is at and whether its code differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!results", ":!figures"))
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked archive)
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def bench_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The command line every benchmark starts from: its description and ``--out FILE``."""
    parser = argparse.ArgumentParser(
        prog=f"python bench/{name}.py",
        description=(doc or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=RESULTS / f"{name}.json", help="the JSON file to write")
    return parser


def goal(goal: str, required: float, measured: float, met: bool, **extra: Any) -> dict[str, Any]:
    """One target of a benchmark, in the form ``study.goals_table`` reads (``extra``: context columns)."""
    return {"goal": goal, "required": float(required), "measured": float(measured), "met": bool(met), **extra}


def write_result(args: argparse.Namespace, name: str, doc: str | None, results: dict[str, Any], **machine: Any) -> Path:
    """Write ``results`` to ``args.out`` in the envelope (``machine`` adds facts to the machine record)."""
    envelope = {
        "benchmark": name,
        "description": (doc or "").split("\n\n")[0].strip(),
        **git_state(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine_info(), **machine},
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "results": results,
    }
    path = atomic_write(args.out, json.dumps(envelope, indent=2) + "\n")
    print(f"wrote {path}")
    return path
