"""The house: the library stands without the study, a small public API, one name per object."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import tomllib

import dynprune_lib as dp
from dynprune_lib import study

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "dynprune_lib"
LIBRARY_MODULES = sorted(p for p in LIBRARY.glob("*.py"))


def _imports(path: Path) -> list[str]:
    """Every module a top-level library file imports, ``from . import x`` resolved to ``dynprune_lib.x``."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = ("dynprune_lib." if node.level else "") + (node.module or "")
            names.append(module.rstrip("."))
            names += [f"{module.rstrip('.')}.{alias.name}" for alias in node.names]
    return names


def test_no_library_module_imports_the_study():
    offenders = {p.name: [n for n in _imports(p) if n.startswith("dynprune_lib.study")] for p in LIBRARY_MODULES}
    assert not {name: found for name, found in offenders.items() if found}


def test_importing_the_library_loads_nothing_of_the_study():
    code = "import sys, dynprune_lib; print(sorted(m for m in sys.modules if m.startswith(('dynprune_lib', 'matp'))))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "dynprune_lib.layers" in loaded  # the check sees what was loaded
    assert "study" not in loaded and "matplotlib" not in loaded


def test_the_public_api_is_small_and_every_name_resolves():
    assert len(dp.__all__) <= 40 and len(set(dp.__all__)) == len(dp.__all__)
    assert all(getattr(dp, name) is not None for name in dp.__all__)
    for path in LIBRARY_MODULES:
        if path.name.startswith("_"):
            continue
        module = __import__(f"dynprune_lib.{path.stem}", fromlist=["__all__"])
        assert all(hasattr(module, name) for name in module.__all__), path.name


def test_the_study_namespace_has_one_object_per_name():
    for name in study.__all__:
        owners = [m for m in study._MODULES if name in m.__all__]
        assert len({id(getattr(m, name)) for m in owners}) == 1, (name, [m.__name__ for m in owners])
        assert getattr(study, name) is getattr(owners[0], name)


def test_version_is_the_projects():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert dp.__version__ == version
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert f"## {version}" in (ROOT / "CHANGELOG.md").read_text()


_DOTTED = re.compile(r"(?<![\w.])dynprune_lib(?:\.[A-Za-z_]\w*)+")


def _resolves(reference: str) -> bool:
    """Whether ``dynprune_lib.a.b.c`` names a module or an attribute of one."""
    parts = reference.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_every_dotted_reference_in_a_docstring_resolves():
    """A docstring that names ``dynprune_lib.x.y`` points at something that exists (modules moved
    into ``dynprune_lib.study`` left references to their old places behind)."""
    broken = []
    for path in sorted(LIBRARY.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node) or ""
                broken += [f"{path.relative_to(ROOT)}: {ref}" for ref in _DOTTED.findall(doc) if not _resolves(ref)]
    assert not broken
    assert not _resolves("dynprune_lib.experiments") and _resolves("dynprune_lib.study.experiments.run_table")
