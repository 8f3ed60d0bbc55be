"""The GPU check: the CUDA tests and every notebook in the ``gpu`` profile, shortened, in minutes.

Run it on any machine with CUDA (``scripts/gpu_check.sh``; one NVIDIA H200 is the machine
it is sized for: at most 8 minutes there). It needs neither Jupyter nor papermill, nbformat
or IPython: each notebook's code cells are read from its JSON and run in order in a fresh
Python process, its parameters injected after its ``parameters`` cell as papermill would,
and the value of a cell's last expression printed as text. Only the library's own
dependencies (torch, numpy, pandas, matplotlib, scipy, scikit-learn, scikit-image, numba)
and pytest are needed, so the machine's own Python will do.

Stages, each in its own process with a time limit (a hang fails its stage, named):

1. ``cuda tests``: the tests marked ``cuda`` (``pytest -m cuda``);
2. ``notebook 01`` ... ``notebook 05``: the ``gpu`` profile shortened by :data:`SHORTENED`
   (two epochs, one seed, small learning-curve and measurement sizes), on the full data.

Everything the notebooks write goes under ``build/gpu_check/`` (never ``figures/``,
``results/`` or ``notebooks/``). The record, ``results/gpu_check.json``, holds the machine,
the commit, each stage's outcome and time, and every ``gpu`` workload's seconds per epoch
(read from the histories the notebooks saved). Without CUDA the check stops at once with
an error; ``--device cpu`` rehearses it on a CPU instead (for the harness itself: its record
then goes to ``build/gpu_check/`` and never to ``results/``).

    scripts/gpu_check.sh --data data/cifar10-jpeg.tar.gz
    scripts/gpu_check.sh --device cpu --subset 512 --only 01,02   # rehearse on a CPU
"""

from __future__ import annotations

import argparse
import ast
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
OUT = ROOT / "build" / "gpu_check"
RECORD = ROOT / "results" / "gpu_check.json"

#: How the check shortens the ``gpu`` profile: each notebook's injected parameters, and
#: the measurement sizes of its study profiles (fields of ``ExperimentConfig`` and
#: ``ComparisonProfile``, replaced in the notebook's process before its cells run).
SHORTENED: dict[str, Any] = {
    "parameters": {
        "01": {"epochs": 2, "seeds": [0]},
        "02": {"profile": "gpu", "epochs": 2, "seeds": [0]},
        "03": {
            "profile": "gpu",
            "epochs": 2,
            "seeds": [0],
            "sparsities": [0.5, 0.9],
            "inference_sparsities": [0.5, 0.9, 0.99],
        },
        "04": {"profile": "gpu", "epochs": 2, "seed": 0, "seeds": [0], "data_fractions": [0.1, 1.0]},
        "05": {"profile": "gpu"},
    },
    "experiments": {"latency_seconds": 0.05, "latency_sparsities": (0.5, 0.95)},
    "comparison": {
        "curve_min_steps": 100,
        "curve_monitor_images": 500,
        "gap_images": 5000,
        "interp_images": 50,
        "Cs": (0.1,),
    },
}
#: What a rehearsal on a subset (``--subset``) also changes: pruning schedules in steps, as the
#: smoke profile's, so that a few hundred steps hold every update they need, and sizes that a
#: CPU measures in minutes.
SUBSET: dict[str, Any] = {
    "experiments": {"dsr_period": ((0.0, 4),), "regrow_period": 4, "gradual_every": 2},
    "comparison": {"curve_min_steps": 4, "gap_images": 256, "interp_images": 4},
}
#: Seconds each stage may take before it is stopped and failed.
STAGE_LIMITS = {"cuda tests": 240, "01": 120, "02": 180, "03": 180, "04": 300, "05": 120}
#: Seconds all stages may take on the GPU: the check fits one 10-minute command with the start.
BUDGET_S = 480
#: A CPU rehearsal's stages may take this many times as long.
CPU_LIMIT_FACTOR = 10
#: The histories the notebooks save, and how a workload is named from a row of each.
HISTORIES = {
    "baseline.csv": lambda row: "baseline CNN",
    "dynamic_cnn_histories.csv": lambda row: f"DynamicCNN {_method(row)}",
    "dynamic_mlp_histories.csv": lambda row: f"MLP {_method(row)}",
    "wrn_history.csv": lambda row: str(row["run"]).rsplit(" seed ", 1)[0],
}


def _method(row: Any) -> str:
    """``dsr at 0.9``: a history row's method and target sparsity (none for dense)."""
    target = row["sparsity_target"]
    return row["method"] if target != target else f"{row['method']} at {target:g}"  # NaN: dense


# --------------------------------------------------------------------------- running a notebook as a script


#: The module the notebooks' ``from IPython.display import ...`` reads where IPython is missing.
DISPLAY_STAND_IN = "_gpu_check_display"


def ipython_stand_in() -> bool:
    """Where IPython is missing, register :data:`DISPLAY_STAND_IN`, with the two names the
    notebooks import from ``IPython.display`` (``Markdown``, ``display``), printing as text;
    True if it was needed. (Not registered as ``IPython`` itself: matplotlib inspects any
    module of that name it finds.)"""
    if importlib.util.find_spec("IPython") is not None:
        return False

    class Markdown:
        def __init__(self, data: str = "") -> None:
            self.data = data

        def _repr_markdown_(self) -> str:
            return self.data

    def display(*objects: object) -> None:
        for obj in objects:
            print(as_text(obj))

    module = types.ModuleType(DISPLAY_STAND_IN)
    module.Markdown, module.display = Markdown, display
    sys.modules[DISPLAY_STAND_IN] = module
    return True


def as_text(value: object, limit: int = 2000) -> str:
    """What a notebook would show for ``value``, as plain text (cut at ``limit`` characters)."""
    if hasattr(value, "_repr_markdown_"):
        text = value._repr_markdown_()
    elif hasattr(value, "to_string"):
        text = value.to_string(max_rows=20)
    else:
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + " ..."


def declared_parameters(notebook: Path) -> set[str]:
    """The names the notebook's cell tagged ``parameters`` assigns."""
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            body = ast.parse("".join(cell["source"])).body
            return {
                t.id for node in body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)
            }
    raise ValueError(f"{notebook.name} has no cell tagged 'parameters'")


def code_cells(notebook: Path, parameters: dict[str, Any]) -> list[tuple[int, str]]:
    """``(cell index, source)`` of each code cell, with an assignment of ``parameters`` after
    the cell tagged ``parameters`` (papermill's rule: they override its defaults). Refuses a
    parameter the notebook does not declare."""
    unknown = set(parameters) - declared_parameters(notebook)
    if unknown:
        raise ValueError(f"{notebook.name} declares no parameter {sorted(unknown)}")
    out: list[tuple[int, str]] = []
    for index, cell in enumerate(json.loads(notebook.read_text())["cells"]):
        if cell["cell_type"] != "code":
            continue
        out.append((index, "".join(cell["source"])))
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            injected = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
            out.append((index, f"# injected parameters\n{injected}"))
    return out


def run_cell(source: str, namespace: dict[str, Any]) -> object:
    """Execute ``source`` in ``namespace``; return its last expression's value (None if none)."""
    tree = ast.parse(source)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<cell>", "exec"), namespace)
    if last is None:
        return None
    return eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)


def shorten_profiles(profile: str, *, subset: bool = False) -> None:
    """Replace ``profile``'s study workloads by their shortened copies (:data:`SHORTENED`; with
    ``subset``, also :data:`SUBSET`)."""
    from dynprune_lib.study import profiles

    def overrides(part: str) -> dict[str, Any]:
        return {**SHORTENED[part], **(SUBSET[part] if subset else {})}

    for experiment in profiles.EXPERIMENTS.values():
        experiment[profile] = experiment[profile].replace(**overrides("experiments"))
    profiles.PROFILES[profile] = profiles.PROFILES[profile].replace(**overrides("comparison"))


def run_notebook(notebook: Path, parameters: dict[str, Any]) -> None:
    """Run ``notebook``'s code cells in this process, as Jupyter would, printing each cell's
    shown value; an exception names the cell and propagates."""
    stand_in = ipython_stand_in()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = code_cells(notebook, parameters)
    os.chdir(NOTEBOOKS)  # notebooks run with their folder as working directory
    namespace: dict[str, Any] = {"__name__": "__main__"}
    for number, (index, source) in enumerate(cells, start=1):
        if stand_in:
            source = source.replace("from IPython.display import", f"from {DISPLAY_STAND_IN} import")
        start = time.perf_counter()
        try:
            value = run_cell(source, namespace)
        except BaseException:
            print(f"[gpu_check] {notebook.name}: cell {index} failed:\n{source}", flush=True)
            raise
        if value is not None:
            print(as_text(value), flush=True)
        plt.close("all")
        print(
            f"[gpu_check] {notebook.name}: cell {index} done ({number}/{len(cells)}, "
            f"{time.perf_counter() - start:.1f} s)",
            flush=True,
        )


# --------------------------------------------------------------------------- the stages


def notebook_parameters(number: str, device: str, subset: int | None, epochs: int | None) -> dict[str, Any]:
    """What the check injects into notebook ``number``: the shortened profile, its output
    folders under ``build/gpu_check/``, the data and device."""
    parameters = dict(SHORTENED["parameters"][number])
    parameters.update(figures_dir=str(OUT / "figures"), results_dir=str(OUT / "results"))
    declared = declared_parameters(notebook_path(number))
    if "run_dir" in declared:
        parameters["run_dir"] = str(OUT / "runs" / number)
    if "device" in declared:
        parameters["device"] = device
    if "data_root" in declared and os.environ.get("DYNPRUNE_DATA"):
        parameters["data_root"] = os.environ["DYNPRUNE_DATA"]
    if subset and "train_subset" in declared:
        parameters.update(train_subset=subset, test_subset=max(subset // 4, 100))
    if epochs and "epochs" in declared:
        parameters["epochs"] = epochs
    return parameters


def notebook_path(number: str) -> Path:
    matches = sorted(NOTEBOOKS.glob(f"{number}_*.ipynb"))
    if not matches:
        raise SystemExit(f"gpu_check: no notebook numbered {number} in {NOTEBOOKS}")
    return matches[0]


def run_stage(name: str, command: list[str], limit: float, log: Path, *, tag: str = "gpu_check") -> dict[str, Any]:
    """Run ``command`` as stage ``name``, its output echoed and written to ``log``; stop it
    after ``limit`` seconds (a silent hang too) and fail the stage, saying so (lines from
    here start with ``[tag]``)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{tag}] {name}: started (limit {limit:.0f} s)", flush=True)
    start = time.perf_counter()
    with log.open("w") as handle:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def pump() -> None:  # echoed as it comes, so a long stage shows its progress
            for line in process.stdout:
                handle.write(line)
                print(f"  {line}", end="", flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            process.wait(timeout=limit)
            timed_out = False
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            timed_out = True
        reader.join(timeout=5)
    seconds = time.perf_counter() - start
    passed = process.returncode == 0 and not timed_out
    outcome = (
        "passed"
        if passed
        else (f"timed out after {limit:.0f} s" if timed_out else f"failed (exit {process.returncode})")
    )
    print(f"[{tag}] {name}: {outcome} in {seconds:.1f} s", flush=True)
    return {
        "stage": name,
        "passed": passed,
        "outcome": outcome,
        "seconds": round(seconds, 2),
        "log": str(log.relative_to(ROOT) if log.is_relative_to(ROOT) else log),
        **({} if passed else {"tail": log.read_text().splitlines()[-25:]}),
    }


def cuda_test_files() -> list[str]:
    """The test modules that hold tests marked ``cuda`` (the others may need Jupyter)."""
    return sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py") if "pytest.mark.cuda" in p.read_text()
    )


def epoch_times(results: Path, since: float = 0.0) -> dict[str, dict[str, Any]]:
    """Seconds per epoch of every workload whose history a notebook saved under ``results``
    (after ``since``, a ``time.time()``: this check's, not an earlier one's), as ``fit``
    records them (training plus the per-epoch test pass): all epochs, the first (it includes
    warm-up and any compilation) and the median of the others."""
    import pandas as pd

    out: dict[str, dict[str, Any]] = {}
    for file, name_of in HISTORIES.items():
        path = results / file
        if not path.exists() or path.stat().st_mtime < since:
            continue
        for _, row in pd.read_csv(path).iterrows():
            out.setdefault(name_of(row), {"source": file, "seconds": []})["seconds"].append(float(row["seconds"]))
    for record in out.values():
        seconds = record["seconds"]
        record["first_epoch_s"] = round(seconds[0], 3)
        later = sorted(seconds[1:])
        record["later_epochs_median_s"] = round(later[len(later) // 2], 3) if later else None
        record["seconds"] = [round(s, 3) for s in seconds]
    return out


def machine(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), gpus=torch.cuda.device_count())
    return info


def commit() -> str:
    """The commit checked, from git, else from ``$DYNPRUNE_COMMIT`` (a copy without ``.git``)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("DYNPRUNE_COMMIT", "unknown")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="CIFAR-10 (else $DYNPRUNE_DATA, then ./data)")
    parser.add_argument("--only", help="stages to run: 'tests' and/or notebook numbers, e.g. tests,02,03")
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cpu rehearses the check without a GPU (its record stays under build/)",
    )
    parser.add_argument("--subset", type=int, help="train on this many images (rehearsals; the check uses all)")
    parser.add_argument("--epochs", type=int, help="override the shortened profile's 2 epochs (rehearsals)")
    parser.add_argument("--record", type=Path, help=f"where the JSON goes (default {RECORD.relative_to(ROOT)})")
    parser.add_argument(
        "--budget",
        type=float,
        default=BUDGET_S,
        help="seconds for all stages (a CPU rehearsal gets ten times as many): a stage is stopped when it "
        "would run past it, later ones are not started, and the record is written all the same",
    )
    parser.add_argument("--notebook", help=argparse.SUPPRESS)  # internal: run one notebook in this process
    parser.add_argument("--parameters", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    data = args.data or os.environ.get("DYNPRUNE_DATA")
    if data:  # notebooks run in notebooks/: a relative path means relative to where the check was started
        os.environ["DYNPRUNE_DATA"] = str(Path(data).resolve())

    if args.notebook:  # one stage, in its own process
        parameters = json.loads(args.parameters)
        shorten_profiles(parameters.get("profile", "gpu"), subset="train_subset" in parameters)
        run_notebook(notebook_path(args.notebook), parameters)
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA device here (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda or 'none'}): this check is for a machine with a GPU. "
            "Use --device cpu to rehearse it on a CPU.",
            file=sys.stderr,
        )
        return 2
    wanted = (
        None
        if not args.only
        else {s.strip().zfill(2) if s.strip().isdigit() else s.strip() for s in args.only.split(",")}
    )
    stages: list[tuple[str, list[str]]] = []
    if wanted is None or "tests" in wanted:
        stages.append(
            (
                "cuda tests",
                [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", *cuda_test_files()],
            )
        )
    for number in SHORTENED["parameters"]:
        if wanted is None or number in wanted:
            parameters = notebook_parameters(number, args.device, args.subset, args.epochs)
            stages.append(
                (number, [sys.executable, __file__, "--notebook", number, "--parameters", json.dumps(parameters)])
            )
    if not stages:
        raise SystemExit(f"gpu_check: --only {args.only!r} names no stage (tests, 01-05)")

    record_path = args.record or (RECORD if args.device == "cuda" else OUT / "gpu_check.json")
    start, started_at = time.perf_counter(), time.time()
    results = []
    factor = 1 if args.device == "cuda" else CPU_LIMIT_FACTOR
    for name, command in stages:
        label = name if name == "cuda tests" else f"notebook {name}"
        left = args.budget * factor - (time.perf_counter() - start)
        if left < 10:
            results.append({"stage": label, "passed": False, "outcome": "not run: the budget was spent", "seconds": 0})
            continue
        limit = min(STAGE_LIMITS[name] * factor, left)
        results.append(run_stage(label, command, limit, OUT / "logs" / f"{name.replace(' ', '_')}.log"))
        if not results[-1]["passed"] and name != "cuda tests":
            break  # later notebooks read the results of earlier ones
    record = {
        "check": "scripts/gpu_check.sh: the cuda-marked tests and every notebook in the gpu profile, shortened",
        "device": args.device,
        "machine": machine(args.device),
        "commit": commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "shortened": SHORTENED,
        "subset": args.subset,
        "passed": all(r["passed"] for r in results) and len(results) == len(stages),
        "total_seconds": round(time.perf_counter() - start, 2),
        "stages": results,
        "epoch_seconds": epoch_times(OUT / "results", since=started_at),
    }
    record_path.parent.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"[gpu_check] {'passed' if record['passed'] else 'FAILED'} in {record['total_seconds']:.0f} s; "
        f"record: {record_path}",
        flush=True,
    )
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
