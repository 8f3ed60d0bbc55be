"""Execute the numbered notebooks headlessly with papermill, resumably, then write the report.

Called by ``run_all.sh`` (execute) and ``run_tests.sh`` (``--prepare-only`` for
nbval, and the smoke profile end to end). One place decides what each profile
passes to the notebooks:

* ``smoke``: one epoch on a 2,000/500-image subset with each notebook's smoke
  workload; every output goes under ``build/smoke/`` (never the committed
  ``figures/`` and ``results/``).
* ``cpu`` / ``gpu``: the notebooks' full workloads, writing ``figures/`` and
  ``results/``; checkpoints stay in each notebook's own ``run_dir``. Each
  executed notebook is also written back to ``notebooks/`` with its outputs
  (volatile metadata stripped), so figures and tables show on a code host
  without a run.

A notebook is skipped when its executed copy exists and was produced from the
same cell sources, parameters, library source, data, earlier notebooks' runs
and benchmark results it declares it reads (a stamp beside it); its outputs do
not count, so writing them back does not make it stale. ``--force`` re-executes
it and deletes its training checkpoints first.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
PROFILES = ("smoke", "cpu", "gpu")
#: What the smoke profile changes beyond ``profile``: tiny data, one epoch.
SMOKE_PARAMETERS = {"epochs": 1, "train_subset": 2000, "test_subset": 500}


def default_profile() -> str:
    """``gpu`` when CUDA is available, else ``cpu``."""
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def select_notebooks(only: list[str] | None) -> list[Path]:
    """The numbered notebooks, in order; ``only`` keeps those whose number (``"02"``) is listed."""
    notebooks = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = {n.zfill(2) for n in only}
        unknown = wanted - {p.name[:2] for p in notebooks}
        if unknown:
            raise SystemExit(f"run_notebooks: no notebook numbered {', '.join(sorted(unknown))} in {NOTEBOOKS}")
        notebooks = [p for p in notebooks if p.name[:2] in wanted]
    return notebooks


@dataclass(frozen=True)
class Layout:
    """Where a profile's outputs go; ``runs`` None keeps each notebook's own ``run_dir``;
    ``published`` is where executed notebooks are written back with their outputs (None: nowhere)."""

    figures: Path
    results: Path
    notebooks: Path
    report: Path
    runs: Path | None
    published: Path | None = None


def layout(profile: str) -> Layout:
    """``build/smoke/...`` for the smoke profile (nothing written back to ``notebooks/``),
    the committed folders otherwise."""
    if profile == "smoke":
        base = ROOT / "build" / "smoke"
        return Layout(base / "figures", base / "results", base / "notebooks", base / "report.html", base / "runs")
    return Layout(
        ROOT / "figures",
        ROOT / "results",
        ROOT / "build" / "notebooks",
        ROOT / "build" / "report.html",
        None,
        published=NOTEBOOKS,
    )


def declared_parameters(notebook: Path) -> dict[str, object]:
    """The notebook's ``parameters`` cell as {name: default value}."""
    import papermill

    out = {}
    for name, info in papermill.inspect_notebook(str(notebook)).items():
        try:
            out[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            out[name] = info["default"]
    return out


def notebook_parameters(
    notebook: Path, profile: str, seeds: list[int] | None, *, precision: str | None = None
) -> dict[str, object]:
    """What papermill injects into ``notebook`` for ``profile``: only parameters it declares."""
    declared = declared_parameters(notebook)
    wanted: dict[str, object] = {"profile": profile}
    if profile == "smoke":
        where = layout(profile)
        wanted.update(
            SMOKE_PARAMETERS,
            figures_dir=str(where.figures),
            results_dir=str(where.results),
            run_dir=str(where.runs / notebook.stem),
        )
    if seeds:
        wanted.update(seeds=list(seeds), seed=seeds[0])
    if precision:
        wanted["precision"] = precision
    return {k: v for k, v in wanted.items() if k in declared}


def _folder_parameter(notebook: Path, parameters: dict[str, object], name: str) -> Path | None:
    """The folder ``notebook``'s parameter ``name`` names under ``parameters`` (None if it declares none)."""
    folder = parameters.get(name, declared_parameters(notebook).get(name))
    if not isinstance(folder, str):
        return None
    return (NOTEBOOKS / folder).resolve()  # notebooks run with notebooks/ as their working directory


def run_dir_of(notebook: Path, parameters: dict[str, object]) -> Path | None:
    """The folder holding ``notebook``'s checkpoints under ``parameters`` (None if it declares none)."""
    return _folder_parameter(notebook, parameters, "run_dir")


def _library_digest() -> str:
    """Digest of every Python file of the package, subpackages (the study) included."""
    package = ROOT / "dynprune_lib"
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


#: Tag papermill gives the cell it injects with the parameters.
INJECTED = "injected-parameters"


def source_digest(notebook: Path) -> str:
    """Digest of the notebook's cells as written: their kind and source, not their outputs,
    execution counts or metadata, and not a cell papermill injected."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    kept = [
        (c["cell_type"], "".join(c["source"])) for c in cells if INJECTED not in c.get("metadata", {}).get("tags", [])
    ]
    return hashlib.sha256(json.dumps(kept).encode()).hexdigest()


#: Metadata that changes on every execution (timestamps, durations, paths, widget ids):
#: removed before an executed notebook is written back to notebooks/.
_VOLATILE_NOTEBOOK = (
    "start_time",
    "end_time",
    "duration",
    "exception",
    "input_path",
    "output_path",
    "environment_variables",
    "version",
)
_VOLATILE_CELL = ("papermill", "execution", "ExecuteTime")


def publish(executed: Path, target: Path) -> Path:
    """Write the executed notebook to ``target`` with its outputs and without volatile metadata,
    so a re-run with the same results changes (almost) nothing in ``target``."""
    import nbformat

    from dynprune_lib._utils import atomic_write

    notebook = nbformat.read(executed, as_version=4)
    notebook.metadata.pop("widgets", None)
    papermill_meta = notebook.metadata.get("papermill", {})
    for key in _VOLATILE_NOTEBOOK:
        papermill_meta.pop(key, None)
    for cell in notebook.cells:
        for key in _VOLATILE_CELL:
            cell.metadata.pop(key, None)
    return atomic_write(target, nbformat.writes(notebook) + "\n")


def _stamp_path(executed_dir: Path, notebook: Path) -> Path:
    return executed_dir / f"{notebook.stem}.stamp.json"


def _recorded_inputs(stamp_path: Path) -> str | None:
    """The inputs an executed copy was made from, None if unknown (no stamp, or a damaged one)."""
    try:
        return json.loads(stamp_path.read_text())["inputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def upstream_digest(notebook: Path, executed_dir: Path) -> str:
    """Digest of the stamps of every earlier-numbered notebook: a later notebook reads their
    results (02 reads 01's baseline, 05 reads everything), so it is stale when one of them re-ran."""
    digest = hashlib.sha256()
    for earlier in select_notebooks(None):
        if earlier.name >= notebook.name:
            break
        stamp = _stamp_path(executed_dir, earlier)
        digest.update(earlier.name.encode() + b"\0" + (stamp.read_bytes() if stamp.exists() else b"never run"))
    return digest.hexdigest()


def read_results_digest(notebook: Path, parameters: dict[str, object]) -> str:
    """Digest of the result files no notebook writes that ``notebook`` declares it reads: the
    globs in its metadata's ``dynprune.reads``, in its results folder (05 reads the benchmarks'
    JSON), so a re-run benchmark makes it stale."""
    patterns = json.loads(notebook.read_text(encoding="utf-8"))["metadata"].get("dynprune", {}).get("reads", [])
    digest = hashlib.sha256()
    if not patterns:
        return digest.hexdigest()
    results = _folder_parameter(notebook, parameters, "results_dir")
    if results is None:
        raise ValueError(
            f"{notebook.name} declares dynprune.reads {patterns} but no results_dir parameter to read them in"
        )
    for path in sorted({p for pattern in patterns for p in results.glob(pattern)}):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def stamp_of(notebook: Path, parameters: dict[str, object], executed_dir: Path) -> str:
    """What an executed copy must have been made from to be reused."""
    return json.dumps(
        {
            "notebook": source_digest(notebook),
            "parameters": parameters,
            "library": _library_digest(),
            "data": os.environ.get("DYNPRUNE_DATA", ""),
            "upstream": upstream_digest(notebook, executed_dir),
            "reads": read_results_digest(notebook, parameters),
        },
        sort_keys=True,
    )


def _cell_count(notebook: Path) -> int:
    return len(json.loads(notebook.read_text(encoding="utf-8"))["cells"])


def _fmt_seconds(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def prepare(
    notebooks: list[Path], profile: str, out_dir: Path, seeds: list[int] | None, *, precision: str | None = None
) -> None:
    """Write each notebook with ``profile``'s parameters injected, unexecuted and without the
    committed outputs (for nbval)."""
    import nbformat
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    for notebook in notebooks:
        out = out_dir / notebook.name
        papermill.execute_notebook(
            str(notebook),
            str(out),
            parameters=notebook_parameters(notebook, profile, seeds, precision=precision),
            prepare_only=True,
            progress_bar=False,
        )
        prepared = nbformat.read(out, as_version=4)
        for cell in prepared.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nbformat.write(prepared, out)


def record_time(results_dir: Path, notebook: Path, profile: str, seconds: float, from_scratch: bool) -> Path:
    """Upsert the notebook's wall time into ``results_dir/run_times.csv``: one row per notebook,
    profile and whether its training runs started from scratch or resumed from checkpoints.
    Rows measured on another version of the notebook (other cell sources) are dropped: they
    timed other work."""
    import pandas as pd

    from dynprune_lib.study.results import RESULT_FILES
    from dynprune_lib.train import hardware_name

    path = results_dir / RESULT_FILES["run_times"].name
    row = {
        "notebook": notebook.name,
        "profile": profile,
        "from_scratch": from_scratch,
        "minutes": round(seconds / 60, 2),
        "hardware": hardware_name(),
        "notebook_sha256": source_digest(notebook)[:12],
    }
    table = pd.read_csv(path, dtype={"notebook_sha256": str}) if path.exists() else pd.DataFrame(columns=list(row))
    same = (table["notebook"] == row["notebook"]) & (table["profile"] == profile)
    stale = same & (table.get("notebook_sha256", pd.Series("", index=table.index)) != row["notebook_sha256"])
    replaced = same & (table["from_scratch"].astype(bool) == from_scratch)
    table = pd.concat([table[~(stale | replaced)], pd.DataFrame([row])], ignore_index=True).sort_values(
        ["profile", "notebook", "from_scratch"]
    )
    results_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return path


def _has_checkpoints(run_dir: Path | None) -> bool:
    return run_dir is not None and run_dir.exists() and any(run_dir.rglob("*.pt"))


class _Progress(logging.Filter):
    """Shows papermill's log as progress: ``cell N/M`` lines and what the cells print."""

    _NOISE = ("Ending Cell", "Input Notebook", "Output Notebook", "Working directory", "Executing notebook with")

    def __init__(self) -> None:
        super().__init__()
        self.cells = 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(self._NOISE):
            return False
        if message.startswith("Executing Cell "):
            record.msg, record.args = f"  cell {message.split()[2].rstrip('-')}/{self.cells}", ()
        return True


_PROGRESS = _Progress()


def _show_notebook_output() -> None:
    """Print what the notebooks print (one line per epoch) and which cell is running."""
    log = logging.getLogger("papermill")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(_PROGRESS)
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def execute(
    notebooks: list[Path],
    profile: str,
    *,
    seeds: list[int] | None,
    force: bool,
    kernel: str,
    report: bool,
    precision: str | None = None,
) -> int:
    """Execute ``notebooks`` in order (skipping up-to-date ones), then write the report."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    _show_notebook_output()

    where = layout(profile)
    where.notebooks.mkdir(parents=True, exist_ok=True)
    total = time.monotonic()
    print(
        f"run_all: profile {profile!r}, {len(notebooks)} notebook(s), seeds {seeds or 'as each notebook says'}, "
        f"data {os.environ.get('DYNPRUNE_DATA') or '(default ./data)'}",
        flush=True,
    )
    for i, notebook in enumerate(notebooks, 1):
        parameters = notebook_parameters(notebook, profile, seeds, precision=precision)
        executed = where.notebooks / notebook.name
        stamp_path = _stamp_path(where.notebooks, notebook)
        stamp = stamp_of(notebook, parameters, where.notebooks)
        head = f"[{i}/{len(notebooks)}] {notebook.name}"
        if not force and executed.exists() and _recorded_inputs(stamp_path) == stamp:
            print(f"==> {head}: up to date, skipped (--force re-executes it)", flush=True)
            continue
        run_dir = run_dir_of(notebook, parameters)
        if force and run_dir is not None and run_dir.exists():
            print(f"==> {head}: --force: deleting its checkpoints in {run_dir}", flush=True)
            shutil.rmtree(run_dir)
        from_scratch = not _has_checkpoints(run_dir)
        stamp_path.unlink(missing_ok=True)
        print(
            f"==> {head}: executing with {parameters or 'its defaults'}"
            f"{'' if from_scratch else ' (resuming from its checkpoints)'}",
            flush=True,
        )
        # Only values that differ from the parameters cell's are injected: a default run leaves
        # no injected cell in the notebook written back to notebooks/.
        declared = declared_parameters(notebook)
        injected = {k: v for k, v in parameters.items() if declared.get(k, object()) != v}
        _PROGRESS.cells = _cell_count(notebook) + bool(injected)  # papermill adds one cell for parameters
        start = time.monotonic()
        try:
            papermill.execute_notebook(
                str(notebook),
                str(executed),
                parameters=injected,
                kernel_name=kernel,
                cwd=str(NOTEBOOKS),
                log_output=True,
                progress_bar=sys.stderr.isatty(),
            )
        except PapermillExecutionError as error:
            first_line = (error.source or "").strip().splitlines()[:1]
            print(
                f"run_all: {notebook.name} FAILED after {_fmt_seconds(time.monotonic() - start)} in cell "
                f"{error.cell_index + 1} ({first_line[0] if first_line else 'empty'!r}): "
                f"{error.ename}: {error.evalue}\nexecuted copy with the traceback: {executed}",
                file=sys.stderr,
                flush=True,
            )
            return 1
        except Exception as error:  # the kernel died or could not start: say so, keep the checkpoints
            print(
                f"run_all: {notebook.name} FAILED after {_fmt_seconds(time.monotonic() - start)}: "
                f"{type(error).__name__}: {error}",
                file=sys.stderr,
                flush=True,
            )
            return 1
        seconds = time.monotonic() - start
        # A fresh run id makes later notebooks stale even when this one re-ran on the same inputs.
        stamp_path.write_text(json.dumps({"inputs": stamp, "run": uuid.uuid4().hex}))
        record_time(where.results, notebook, profile, seconds, from_scratch)
        if where.published is not None:
            publish(executed, where.published / notebook.name)
        print(
            f"<== {head}: done in {_fmt_seconds(seconds)}"
            + (f"; outputs written back to {where.published.name}/{notebook.name}" if where.published else ""),
            flush=True,
        )
    if profile != "smoke":
        import update_readme  # beside this script

        update_readme.main()
    if report:
        from report import build_report  # beside this script

        executed_all = [where.notebooks / p.name for p in select_notebooks(None) if (where.notebooks / p.name).exists()]
        path = build_report(executed_all, where.report, figures_dir=where.figures, results_dir=where.results)
        print(f"report: {path.relative_to(ROOT)} ({len(executed_all)} notebooks, every figure and table)")
    print(f"run_all: all done in {_fmt_seconds(time.monotonic() - total)}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=PROFILES, help="default: gpu when CUDA is available, else cpu")
    parser.add_argument("--only", action="append", metavar="NN", help="run notebook NN only (repeatable, or 01,03)")
    parser.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (default: each notebook's profile)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        help="training precision of notebooks 02-04 (default: each profile's, bf16; "
        "fp32 on a CPU without native bfloat16)",
    )
    parser.add_argument("--force", action="store_true", help="re-execute even up-to-date notebooks, retraining")
    parser.add_argument(
        "--prepare-only",
        metavar="DIR",
        type=Path,
        help="write the parameterised notebooks to DIR without executing them (for nbval)",
    )
    parser.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    parser.add_argument("--kernel", default=os.environ.get("DYNPRUNE_KERNEL", "dynprune"))
    args = parser.parse_args(argv)
    only = [n for item in args.only or [] for n in item.split(",") if n]
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    profile = args.profile or default_profile()
    notebooks = select_notebooks(only)
    if args.prepare_only:
        prepare(notebooks, profile, args.prepare_only, seeds, precision=args.precision)
        return 0
    return execute(
        notebooks,
        profile,
        seeds=seeds,
        force=args.force,
        kernel=args.kernel,
        report=not args.no_report,
        precision=args.precision,
    )


if __name__ == "__main__":
    sys.exit(main())
