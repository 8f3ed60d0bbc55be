"""The private helpers every module shares, each written once (dynprune_lib._utils)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dynprune_lib import _utils


def test_atomic_write_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "sub" / "file.bin"
    _utils.atomic_write(path, b"first")
    _utils.atomic_write(path, "second ü")
    assert path.read_text(encoding="utf-8") == "second ü"
    _utils.atomic_write(path, lambda handle: handle.write(b"third"))
    assert path.read_bytes() == b"third"

    def fails(handle):
        handle.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _utils.atomic_write(path, fails)
    assert path.read_bytes() == b"third"  # the old file survives a failed write
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.bin"]


def test_content_key_follows_content_not_identity_or_order():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert _utils.content_key(a) == _utils.content_key(a.copy()) == _utils.content_key(torch.from_numpy(a))
    assert _utils.content_key(a) != _utils.content_key(a.astype(np.float64))  # dtype counts
    assert _utils.content_key(a) != _utils.content_key(a.reshape(3, 2))  # shape counts
    assert _utils.content_key({"x": 1, "y": 2}) == _utils.content_key({"y": 2, "x": 1})
    assert _utils.content_key("ab", "c") != _utils.content_key("a", "bc")  # parts are delimited
    assert len(_utils.content_key(1, length=8)) == 8


@pytest.mark.parametrize(
    "env, ci, expected",
    [
        (None, None, True),
        (None, "true", False),
        ("0", None, False),
        ("off", None, False),
        ("1", "true", True),
        ("yes", None, True),
    ],
)
def test_progress_switch_reads_the_environment_one_way(monkeypatch, env, ci, expected):
    for name, value in (("DYNPRUNE_PROGRESS", env), ("CI", ci)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert _utils.progress_enabled() is expected
    assert _utils.progress_enabled(not expected) is (not expected)  # an explicit choice wins


def test_random_mask_has_exactly_n_zeros_and_follows_its_generator():
    mask = _utils.random_mask((4, 5), 7, generator=torch.Generator().manual_seed(3))
    assert mask.dtype == torch.bool and mask.shape == (4, 5) and int((~mask).sum()) == 7
    again = _utils.random_mask((4, 5), 7, generator=torch.Generator().manual_seed(3), device="cpu")
    assert torch.equal(mask, again)
    torch.manual_seed(1)
    first = _utils.random_mask((100,), 50)
    torch.manual_seed(1)
    assert torch.equal(first, _utils.random_mask((100,), 50))  # the global CPU generator otherwise
    assert bool(_utils.random_mask((3,), 0).all())


def test_n_zeros_rounds_as_torch_prune_and_keeps_a_weight():
    assert _utils.n_zeros(0.5, 5) == 2 and _utils.n_zeros(0.7, 5) == 4  # round half to even, like prune
    assert _utils.n_zeros(0.9999, 10) == 9 and _utils.n_zeros(0.9, 1) == 0


def test_time_interleaved_alternates_and_keeps_to_its_budget():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = _utils.time_interleaved(fns, repeats=5, warmup=2)
    assert calls == ["a", "b"] * 7 and [len(t) for t in times.values()] == [5, 5]
    slow = {"s": lambda: torch.ones(1).add_(1) and __import__("time").sleep(0.02)}
    assert len(_utils.time_interleaved(slow, repeats=1000, budget_s=0.1, warmup=0)["s"]) <= 6  # 0.1 s / 0.02 s
    assert len(_utils.time_interleaved(slow, repeats=1, warmup=0)["s"]) == 3  # at least three


def test_replace_module_nested_and_at_the_root():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 2)))
    new = nn.Identity()
    assert _utils.replace_module(model, "1.1", new) is model and model[1][1] is new
    assert _utils.replace_module(model, "", new) is new


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: _utils.check_int(True, "n"), TypeError, "n must be an int"),
        (lambda: _utils.check_int(0, "n", 1), ValueError, r"n must be an int >= 1, got 0"),
        (lambda: _utils.check_real("x", "lr"), TypeError, "lr must be a real number"),
        (lambda: _utils.check_real(float("nan"), "lr", 0, 1), ValueError, r"lr must be in \[0, 1\]"),
        (lambda: _utils.check_sparsity(1.0), ValueError, r"sparsity must be in \[0, 1\)"),
        (lambda: _utils.check_choice("x", "mode", ("a", "b")), ValueError, r"mode must be one of \('a', 'b'\)"),
        (lambda: _utils.check_bool(1, "flag"), TypeError, "flag must be a bool"),
    ],
)
def test_argument_checks_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()
