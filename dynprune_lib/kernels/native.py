"""The compiled kernels (``csrc/sparse_kernels.cpp``): built once at set-up, loaded without a compiler after.

``python -m dynprune_lib.kernels`` (the README's set-up runs it) compiles the
C++ extension with ``torch.utils.cpp_extension`` for the CPU it runs on
(``-march=native``), or, where that fails, for any CPU of the architecture (a
portable build). The library then only loads the shared object: importing it
never starts a compiler. A build is kept per source, flags, torch, Python and
CPU model (its directory name is their digest), so a changed source or a moved
environment is never served a stale binary.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

__all__ = ["BUILDS", "build", "build_dir", "build_info", "load", "main", "module"]

NAME = "dynprune_kernels"
SOURCE = Path(__file__).with_name("csrc") / "sparse_kernels.cpp"
_COMMON = ["-O3", "-ffp-contract=fast", "-fopenmp", "-fopenmp-simd", "-Wno-unused-function"]
#: The builds tried in order: for this machine's CPU, then for any CPU of its architecture.
BUILDS: dict[str, list[str]] = {"native": [*_COMMON, "-march=native"], "portable": _COMMON}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line  # the first of them: the model, or its feature flags on CPUs without a name
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_dir() -> Path:
    """Where the build for this source, torch, Python and CPU lives (``DYNPRUNE_KERNELS_DIR`` sets the root)."""
    root = Path(os.environ.get("DYNPRUNE_KERNELS_DIR") or Path.home() / ".cache" / "dynprune" / "kernels")
    key = json.dumps(
        [SOURCE.read_text(), BUILDS, torch.__version__, sys.version, platform.machine(), _cpu_model()]
    ).encode()
    return root / f"{NAME}-{hashlib.sha256(key).hexdigest()[:16]}"


def build(verbose: bool = False) -> dict:
    """Compile the extension (the native build, else the portable one) and return what was built."""
    from torch.utils.cpp_extension import load as compile_and_load

    directory = build_dir()
    directory.mkdir(parents=True, exist_ok=True)
    # ninja (a pip wheel) sits beside the interpreter, which need not be on PATH (an unactivated venv)
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    errors = {}
    for kind, flags in BUILDS.items():
        start = time.perf_counter()
        try:
            compile_and_load(
                NAME,
                [str(SOURCE)],
                extra_cflags=flags,
                extra_ldflags=["-fopenmp"],
                build_directory=str(directory),
                verbose=verbose,
            )
        except Exception as error:  # a compiler error, a missing compiler, a flag the compiler refuses
            errors[kind] = f"{type(error).__name__}: {str(error)[-400:]}"
            continue
        info = {"build": kind, "flags": flags, "seconds": round(time.perf_counter() - start, 1), "failed": errors}
        (directory / "build.json").write_text(json.dumps(info, indent=1))
        load.cache_clear()
        return info
    raise RuntimeError(f"the compiled kernels could not be built: {errors}")


@functools.cache
def load() -> tuple[object | None, str | None]:
    """The compiled module and None, or None and why it is not there (never compiles)."""
    directory = build_dir()
    path = directory / f"{NAME}{importlib.machinery.EXTENSION_SUFFIXES[-1]}"
    candidates = [p for p in directory.glob(f"{NAME}*.so")] if directory.is_dir() else []
    if not (directory / "build.json").is_file() or not candidates:
        return None, (
            "the compiled kernels are not built for this source, torch and CPU "
            "(python -m dynprune_lib.kernels builds them; the README's set-up does)"
        )
    path = candidates[0]
    try:
        spec = importlib.util.spec_from_file_location(NAME, path)
        extension = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(extension)
    except Exception as error:  # a build for another torch ABI, a missing runtime library
        return None, f"the compiled kernels in {directory} do not load ({type(error).__name__}: {error})"
    return extension, None


def module():
    """The compiled module, or None."""
    return load()[0]


def build_info() -> dict | None:
    """What :func:`build` recorded (build kind, flags, seconds), or None when nothing is built."""
    path = build_dir() / "build.json"
    return json.loads(path.read_text()) if path.is_file() else None


def main() -> None:
    """``python -m dynprune_lib.kernels [-v]``: build, and say what was built and how long it took."""
    info = build(verbose="-v" in sys.argv)
    print(f"dynprune: compiled kernels built ({info['build']}: {' '.join(info['flags'])}) in {info['seconds']} s")
