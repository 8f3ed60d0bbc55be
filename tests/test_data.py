"""Tests for dynprune_lib.data: finding, decoding, caching CIFAR-10, and BatchLoader.

All fixtures are tiny data sets generated in tmp_path; one test loads the real
shared archive when it is available (cheap after the first run: it uses the
user's cache).
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import struct
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynprune_lib import data
from dynprune_lib.data import CIFAR10_CLASSES, BatchLoader, CIFAR10Data, DataError, load_cifar10

from conftest import synthetic_cifar

# Captured before any test changes the environment: the real-data test uses them.
_REAL_DATA = os.environ.get("DYNPRUNE_DATA") or "/work/shared/data/cifar10-jpeg.tar.gz"
_REAL_CACHE = data._cache_dir(None)  # $DYNPRUNE_CACHE or ~/.cache/dynprune

TRAIN_PER_CLASS, TEST_PER_CLASS = 2, 1


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Private cache, no DYNPRUNE_DATA, an empty working directory, no network."""
    monkeypatch.setenv("DYNPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DYNPRUNE_DATA", raising=False)
    monkeypatch.setenv("DYNPRUNE_PROGRESS", "0")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    def no_download(location):
        raise AssertionError(f"a test tried to download CIFAR-10 into {location}")

    monkeypatch.setattr(data, "_download", no_download)


# ------------------------------------------------------------------- fixtures


def make_arrays(seed: int = 0, train: int = TRAIN_PER_CLASS, test: int = TEST_PER_CLASS):
    """{split: (uint8 NHWC images, int64 labels)}, classes in order, random pixels."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, per_class in (("train", train), ("test", test)):
        labels = np.repeat(np.arange(10), per_class)
        out[split] = (rng.integers(0, 256, (labels.size, 32, 32, 3), dtype=np.uint8), labels)
    return out


def write_tree(root: Path, arrays, fmt: str = "png") -> Path:
    """train/<class>/NNNN.<fmt> and test/...; files written in reverse name order."""
    for split, (images, labels) in arrays.items():
        for i in reversed(range(len(labels))):
            folder = root / split / CIFAR10_CLASSES[labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            index = i - np.flatnonzero(labels == labels[i])[0]
            Image.fromarray(images[i]).save(folder / f"{index:04d}.{fmt}", quality=95)
    return root


def make_tar(src: Path, out: Path, top: str | None, mode: str) -> Path:
    with tarfile.open(out, mode) as tar:
        tar.add(src, arcname=top or ".")
    return out


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 str, as in the real CIFAR-10 batch files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def dump_batch(obj, flavor: str = "py2") -> bytes:
    if flavor == "py2":  # what Python 2 + numpy 1 wrote: numpy.core, py2 strings
        buf = io.BytesIO()
        Py2Pickler(buf, protocol=2).dump(obj)
        raw = buf.getvalue()
        old, new = b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n"
        assert (old in raw) == (b"_reconstruct" in raw)
        return raw.replace(old, new)
    return pickle.dumps(obj, protocol=2 if flavor == "py3-proto2" else 4)


def write_batches(folder: Path, arrays, flavor: str = "py2", label_names=CIFAR10_CLASSES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        images, labels = arrays[split]
        flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
        for part, name in zip(np.array_split(np.arange(len(images)), len(names)), names):
            batch = {
                b"batch_label": b"batch",
                b"labels": [int(v) for v in labels[part]],
                b"data": np.ascontiguousarray(flat[part]),
                b"filenames": [b"x.png"] * len(part),
            }
            (folder / name).write_bytes(dump_batch(batch, flavor))
    meta = {b"label_names": [n.encode() for n in label_names], b"num_vis": 3072, b"num_cases_per_batch": 10}
    (folder / "batches.meta").write_bytes(dump_batch(meta, flavor))
    return folder


def expected(arrays, split):
    images, labels = arrays[split]
    return torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels).long()


def assert_matches(loaded: CIFAR10Data, arrays):
    assert loaded.classes == CIFAR10_CLASSES
    for split in ("train", "test"):
        images, labels = getattr(loaded, f"{split}_images"), getattr(loaded, f"{split}_labels")
        want_images, want_labels = expected(arrays, split)
        assert images.dtype == torch.uint8 and images.shape == want_images.shape
        assert labels.dtype == torch.int64
        assert torch.equal(labels, want_labels)
        assert torch.equal(images, want_images)


def assert_same(a: CIFAR10Data, b: CIFAR10Data):
    assert a.classes == b.classes
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


# ------------------------------------------------------------------- loading


def test_png_folder_loads_exact_pixels_in_sorted_order(tmp_path):
    arrays = make_arrays()
    root = write_tree(tmp_path / "tree", arrays)
    loaded = load_cifar10(root)
    assert loaded.train_images.shape == (10 * TRAIN_PER_CLASS, 3, 32, 32)
    assert loaded.test_images.shape == (10 * TEST_PER_CLASS, 3, 32, 32)
    assert_matches(loaded, arrays)
    assert loaded.source == str(root.resolve())


def test_jpeg_folder_decodes_close_to_source(tmp_path):
    arrays = make_arrays()
    smooth = {s: (np.repeat(np.repeat(im[:, ::8, ::8], 8, 1), 8, 2), lab) for s, (im, lab) in arrays.items()}
    loaded = load_cifar10(write_tree(tmp_path / "tree", smooth, fmt="jpg"))
    want, _ = expected(smooth, "train")
    assert (loaded.train_images.float() - want.float()).abs().mean() < 8


@pytest.mark.parametrize(
    "top, mode, name",
    [
        (None, "w", "plain.tar"),
        ("cifar10-jpeg", "w", "top.tar"),
        ("cifar10-jpeg", "w:gz", "top.tar.gz"),
        (None, "w:gz", "plain.tgz"),
    ],
)
def test_folder_tar_and_targz_give_identical_tensors(tmp_path, top, mode, name):
    arrays = make_arrays()
    tree = write_tree(tmp_path / "tree", arrays)
    from_folder = load_cifar10(tree)
    archive = make_tar(tree, tmp_path / name, top, mode)
    from_archive = load_cifar10(archive)
    assert_same(from_folder, from_archive)
    assert from_archive.source == str(archive.resolve())


def test_folder_holding_the_tree_or_the_archive_is_accepted(tmp_path):
    arrays = make_arrays()
    write_tree(tmp_path / "outer" / "cifar10-jpeg", arrays)
    assert_matches(load_cifar10(tmp_path / "outer"), arrays)
    holder = tmp_path / "holder"
    holder.mkdir()
    make_tar(tmp_path / "outer" / "cifar10-jpeg", holder / "c.tar.gz", "cifar10-jpeg", "w:gz")
    (holder / "README.md").write_text("not data")
    assert_matches(load_cifar10(holder), arrays)


@pytest.mark.parametrize("flavor", ["py2", "py3-proto2", "py3-proto4"])
def test_batches_folder(tmp_path, flavor):
    arrays = make_arrays(train=3, test=2)
    folder = write_batches(tmp_path / "data" / "cifar-10-batches-py", arrays, flavor)
    assert_matches(load_cifar10(folder), arrays)
    parent = load_cifar10(tmp_path / "data")  # the folder containing cifar-10-batches-py
    assert_matches(parent, arrays)
    assert parent.source == str(folder.resolve())


def test_batches_archive_like_torchvision_download(tmp_path):
    arrays = make_arrays(train=3, test=2)
    folder = write_batches(tmp_path / "src" / "cifar-10-batches-py", arrays)
    archive = make_tar(folder, tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", "w:gz")
    assert_matches(load_cifar10(archive), arrays)


# --------------------------------------------------------------------- cache


def test_cache_is_reused_and_loaded_weights_only(tmp_path, monkeypatch):
    arrays = make_arrays()
    root = write_tree(tmp_path / "tree", arrays)
    first = load_cifar10(root)
    cache_files = list((tmp_path / "cache").iterdir())
    assert [p.suffix for p in cache_files] == [".pt"]  # no temp file left behind

    def decoder_must_not_run(*args):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(data, "_decode", decoder_must_not_run)
    calls = []
    real_load = torch.load

    def spy_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy_load)
    second = load_cifar10(root)
    assert_same(first, second)
    assert calls == [True]


def test_cache_dir_argument_overrides_env(tmp_path):
    root = write_tree(tmp_path / "tree", make_arrays())
    load_cifar10(root, cache_dir=tmp_path / "mine")
    assert len(list((tmp_path / "mine").glob("cifar10-*.pt"))) == 1
    assert not (tmp_path / "cache").exists()


def test_changed_image_invalidates_cache(tmp_path):
    arrays = make_arrays()
    root = write_tree(tmp_path / "tree", arrays)
    load_cifar10(root)
    changed = np.zeros((32, 32, 3), np.uint8)
    target = root / "train" / "bird" / "0001.png"
    Image.fromarray(changed).save(target)
    os.utime(target, ns=(1, 1))  # a different mtime even on coarse clocks
    reloaded = load_cifar10(root)
    index = 2 * TRAIN_PER_CLASS + 1
    assert torch.equal(reloaded.train_images[index], torch.zeros(3, 32, 32, dtype=torch.uint8))
    assert len(list((tmp_path / "cache").glob("cifar10-*.pt"))) == 1  # the stale one is gone


def test_same_size_rewrite_invalidates_cache_by_mtime(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    first, second = make_arrays(seed=1), make_arrays(seed=2)
    write_batches(folder, first)
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert_matches(load_cifar10(folder), first)
    write_batches(folder, second)  # same shapes, so byte-for-byte the same sizes
    assert {p.name: p.stat().st_size for p in folder.iterdir()} == sizes
    for p in folder.iterdir():
        os.utime(p, ns=(1, 1))
    assert_matches(load_cifar10(folder), second)


def test_changed_archive_invalidates_cache(tmp_path):
    first = make_arrays(seed=1)
    archive = make_tar(write_tree(tmp_path / "a", first), tmp_path / "c.tar.gz", "top", "w:gz")
    assert_matches(load_cifar10(archive), first)
    second = make_arrays(seed=2)
    make_tar(write_tree(tmp_path / "b", second), archive, "top", "w:gz")
    assert_matches(load_cifar10(archive), second)


def test_corrupt_cache_is_rebuilt_with_a_warning(tmp_path, monkeypatch):
    arrays = make_arrays()
    root = write_tree(tmp_path / "tree", arrays)
    load_cifar10(root)
    (cache_file,) = (tmp_path / "cache").glob("cifar10-*.pt")
    cache_file.write_bytes(cache_file.read_bytes()[:1000])
    with pytest.warns(RuntimeWarning, match="corrupt CIFAR-10 cache"):
        assert_matches(load_cifar10(root), arrays)
    monkeypatch.setattr(data, "_decode", lambda *a: pytest.fail("cache was not rewritten"))
    assert_matches(load_cifar10(root), arrays)


def test_unwritable_cache_warns_and_still_loads(tmp_path):
    arrays = make_arrays()
    root = write_tree(tmp_path / "tree", arrays)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.warns(RuntimeWarning, match="could not write"):
        assert_matches(load_cifar10(root, cache_dir=blocker), arrays)


# --------------------------------------------------------------- precedence


def test_root_then_env_then_local_data(tmp_path, monkeypatch):
    a, b, c = (write_tree(tmp_path / name, make_arrays(seed=i)) for i, name in enumerate("abc"))
    local = Path.cwd() / "data"
    local.symlink_to(c, target_is_directory=True)
    monkeypatch.setenv("DYNPRUNE_DATA", str(b))
    assert load_cifar10(a).source == str(a)
    assert load_cifar10().source == str(b)
    monkeypatch.delenv("DYNPRUNE_DATA")
    assert load_cifar10().source == str(c)
    assert_matches(load_cifar10(), make_arrays(seed=2))


def test_missing_env_path_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    write_tree(Path.cwd() / "data", make_arrays())
    monkeypatch.setenv("DYNPRUNE_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="nowhere"):
        load_cifar10()


# -------------------------------------------------------------------- errors


def _tree(tmp_path) -> Path:
    return write_tree(tmp_path / "tree", make_arrays(train=1, test=1))


def _targz(tmp_path) -> Path:
    return make_tar(_tree(tmp_path), tmp_path / "c.tar.gz", "top", "w:gz")


def _tree_with(edit):
    """A maker: a valid one-image-per-class tree, then edit(tree)."""

    def make(tmp_path):
        tree = _tree(tmp_path)
        edit(tree)
        return tree

    return make


def _batches_with(edit):
    """A maker: a valid cifar-10-batches-py folder, then edit(folder)."""

    def make(tmp_path):
        folder = write_batches(tmp_path / "cifar-10-batches-py", make_arrays(train=1, test=1))
        edit(folder)
        return folder

    return make


def _rewrite_batch(name, **changes):
    def edit(folder):
        batch = pickle.loads((folder / name).read_bytes(), encoding="bytes")
        batch.update({key.encode(): value for key, value in changes.items()})
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))

    return edit


def _truncate(path: Path, keep: int):
    path.write_bytes(path.read_bytes()[:keep])


def _empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def _corrupt_archive(tmp_path):
    path = tmp_path / "c.tar.gz"
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    return path


def _truncated_targz(tmp_path):
    path = _targz(tmp_path)
    _truncate(path, path.stat().st_size - 600)
    return path


def _archive_without_data(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.png").write_bytes(b"x")
    return make_tar(tmp_path / "stuff", tmp_path / "stuff.tar.gz", None, "w:gz")


def _two_archives(tmp_path):
    archive = _targz(tmp_path)
    holder = tmp_path / "holder"
    holder.mkdir()
    (holder / "one.tar.gz").write_bytes(archive.read_bytes())
    (holder / "two.tar").write_bytes(archive.read_bytes())
    return holder


ERROR_CASES = {
    # name: (make(tmp_path) -> the path to load, text the message must contain)
    "no such path": (lambda t: t / "missing", "no such file or folder"),
    "empty folder": (_empty_folder, "no CIFAR-10 data found"),
    "test split missing": (_tree_with(lambda t: shutil.rmtree(t / "test")), "no 'test/' folder"),
    "class folder missing": (_tree_with(lambda t: shutil.rmtree(t / "test" / "cat")), "class folder missing"),
    "unexpected class": (_tree_with(lambda t: (t / "train" / "unicorn").mkdir()), "unexpected class folder"),
    "empty class": (_tree_with(lambda t: (t / "train" / "dog" / "0000.png").unlink()), "class folder has no images"),
    "wrong size": (
        _tree_with(lambda t: Image.new("RGB", (33, 32)).save(t / "train/cat/0000.png")),
        "image is 33x32 RGB, expected 32x32 RGB",
    ),
    "grayscale": (_tree_with(lambda t: Image.new("L", (32, 32)).save(t / "test/frog/0000.png")), "image is 32x32 L"),
    "rgba": (_tree_with(lambda t: Image.new("RGBA", (32, 32)).save(t / "test/frog/0000.png")), "image is 32x32 RGBA"),
    "corrupt image": (_tree_with(lambda t: (t / "train/ship/0000.png").write_bytes(b"garbage")), "cannot decode image"),
    "truncated image": (_tree_with(lambda t: _truncate(t / "train/ship/0000.png", 200)), "cannot decode image"),
    "corrupt archive": (_corrupt_archive, "not a readable .tar/.tar.gz archive"),
    "truncated tar.gz": (_truncated_targz, "corrupt or truncated"),
    "archive without data": (_archive_without_data, "archive holds neither"),
    "several archives": (_two_archives, "several candidate"),
    "batch file missing": (_batches_with(lambda f: (f / "test_batch").unlink()), "missing test_batch"),
    "batch data shape": (
        _batches_with(_rewrite_batch("data_batch_2", data=np.zeros((2, 100), np.uint8))),
        "'data' must be a uint8 N x 3072 array",
    ),
    "batch data dtype": (
        _batches_with(_rewrite_batch("data_batch_2", data=np.zeros((2, 3072), np.float32))),
        "'data' must be a uint8 N x 3072 array",
    ),
    "label out of range": (_batches_with(_rewrite_batch("data_batch_1", labels=[10, 0])), "labels outside 0..9"),
    "label count": (_batches_with(_rewrite_batch("test_batch", labels=[1])), "integers, one per image"),
    "float labels": (_batches_with(_rewrite_batch("test_batch", labels=[1.5, 2.0])), "integers, one per image"),
    "not a dict": (
        _batches_with(lambda f: (f / "data_batch_3").write_bytes(pickle.dumps([1, 2]))),
        "expected a pickled dict",
    ),
    "not a pickle": (
        _batches_with(lambda f: (f / "data_batch_4").write_bytes(b"\x00junk")),
        "not a readable CIFAR-10 batch file",
    ),
    "wrong class names": (
        _batches_with(lambda f: (f / "batches.meta").write_bytes(dump_batch({b"label_names": [b"a"] * 10}))),
        "not the CIFAR-10 classes",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_data_raises_data_error_naming_the_path(tmp_path, case):
    make, text = ERROR_CASES[case]
    path = make(tmp_path)
    with pytest.raises(DataError) as info:
        load_cifar10(path)
    message = str(info.value)
    assert text in message
    assert str(path) in message or str(path.resolve()) in message
    for way in ("root=", "DYNPRUNE_DATA", "./data"):
        assert way in message
    assert not list((tmp_path / "cache").glob("*.pt"))  # nothing cached for bad data


def test_data_error_is_a_runtime_error():
    assert issubclass(DataError, RuntimeError)


def test_default_location_without_download_is_an_error():
    with pytest.raises(DataError, match=r"no CIFAR-10 data found there \(download=False\)") as info:
        load_cifar10(download=False)
    assert str(Path("data").resolve()) in str(info.value)


def _exploit_system(marker):
    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    return pickle.dumps({b"data": Exploit(), b"labels": []}, protocol=2)


def _exploit_exec(marker):
    class Exploit:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    return pickle.dumps({b"label_names": Exploit()}, protocol=4)


@pytest.mark.parametrize(
    "make, name, refers_to",
    [
        (_exploit_system, "data_batch_1", "posix.system"),
        (_exploit_exec, "batches.meta", "builtins.exec"),
    ],
)
def test_malicious_pickle_is_rejected_and_never_run(tmp_path, make, name, refers_to):
    marker = tmp_path / "pwned"
    folder = write_batches(tmp_path / "cifar-10-batches-py", make_arrays(train=1, test=1))
    (folder / name).write_bytes(make(marker))
    with pytest.raises(DataError, match=refers_to) as info:
        load_cifar10(folder)
    assert str(folder / name) in str(info.value)
    assert not marker.exists()


def _use_real_download(monkeypatch, fake_download_url):
    import torchvision.datasets.utils as tv_utils

    monkeypatch.setattr(data, "_download", _REAL_DOWNLOAD)
    monkeypatch.setattr(tv_utils, "download_url", fake_download_url)


_REAL_DOWNLOAD = data._download


def test_offline_download_raises_data_error(monkeypatch):
    calls = []

    def offline(url, root, filename=None, md5=None):
        calls.append((url, root, filename, md5))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    _use_real_download(monkeypatch, offline)
    with pytest.raises(DataError, match="downloading https://.*cifar-10-python.tar.gz failed") as info:
        load_cifar10()
    assert str(Path("data").resolve()) in str(info.value)
    assert calls == [
        (
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "data",
            "cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
        )
    ]


def test_download_into_local_data_when_nothing_found(tmp_path, monkeypatch):
    arrays = make_arrays(train=1, test=1)
    folder = write_batches(tmp_path / "src" / "cifar-10-batches-py", arrays)

    def fake_download_url(url, root, filename=None, md5=None):
        Path(root).mkdir(parents=True, exist_ok=True)
        make_tar(folder, Path(root) / filename, "cifar-10-batches-py", "w:gz")

    _use_real_download(monkeypatch, fake_download_url)
    loaded = load_cifar10()
    assert_matches(loaded, arrays)
    assert loaded.source == str((Path.cwd() / "data" / "cifar-10-batches-py").resolve())
    assert not (Path.cwd() / "data" / "cifar-10-python.tar.gz").exists()


def test_no_download_for_explicit_locations(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        load_cifar10(tmp_path / "empty")  # the autouse fixture fails the test on a download
    monkeypatch.setenv("DYNPRUNE_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError):
        load_cifar10()


# ---------------------------------------------------------- CIFAR10Data helpers


def test_subset_is_stratified_seeded_and_consistent():
    full = synthetic_cifar(300, 70, labels="balanced")
    sub = full.subset(50, 23, seed=1)
    assert sub.train_images.shape == (50, 3, 32, 32) and sub.test_labels.shape == (23,)
    assert torch.bincount(sub.train_labels, minlength=10).tolist() == [5] * 10
    assert set(torch.bincount(sub.test_labels, minlength=10).tolist()) == {2, 3}
    for images, labels in ((sub.train_images, sub.train_labels),):
        for image, label in zip(images, labels):  # every pair comes from the full set
            matches = (full.train_images == image).flatten(1).all(1)
            assert full.train_labels[matches].tolist() == [label.item()]
    again = full.subset(50, 23, seed=1)
    assert torch.equal(sub.train_images, again.train_images)
    other = full.subset(50, 23, seed=2)
    assert not torch.equal(sub.train_images, other.train_images)
    with pytest.raises(ValueError):
        full.subset(10_000, 1)
    whole_train = full.subset(None, 23, seed=1)
    assert torch.equal(whole_train.train_images, full.train_images)
    assert whole_train.test_labels.shape == (23,)


def test_channel_stats_match_direct_computation():
    full = synthetic_cifar(300, 70, labels="balanced")
    mean, std = full.channel_stats
    x = full.train_images.double() / 255
    assert torch.allclose(mean.double(), x.mean((0, 2, 3)), atol=1e-6)
    assert torch.allclose(std.double(), x.permute(1, 0, 2, 3).flatten(1).std(1, correction=0), atol=1e-6)


# --------------------------------------------------------------- BatchLoader


def _indexed(n=103, size=8, seed=0):
    """Images whose labels are their own indices, so a batch tells what it holds."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g), torch.arange(n)


def _epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_len_batch_sizes_and_plain_order():
    images, labels = _indexed()
    loader = BatchLoader(images, labels, 10)
    batches = _epoch(loader)
    assert len(loader) == len(batches) == 11
    assert [len(y) for _, y in batches] == [10] * 10 + [3]
    assert torch.equal(torch.cat([y for _, y in batches]), labels)
    assert len(BatchLoader(images, labels, 10, drop_last=True)) == 10
    assert [len(y) for _, y in BatchLoader(images, labels, 10, drop_last=True)] == [10] * 10


def test_shuffle_is_seeded_and_covers_every_sample_once():
    images, labels = _indexed()
    a = BatchLoader(images, labels, 16, shuffle=True, seed=5)
    b = BatchLoader(images, labels, 16, shuffle=True, generator=torch.Generator().manual_seed(5))
    c = BatchLoader(images, labels, 16, shuffle=True, seed=6)
    orders = {}
    for name, loader in (("a", a), ("b", b), ("c", c)):
        orders[name] = [torch.cat([y for _, y in loader]) for _ in range(2)]
    for order in orders["a"] + orders["c"]:
        assert torch.equal(order.sort().values, labels)
    assert all(torch.equal(x, y) for x, y in zip(orders["a"], orders["b"]))
    assert not torch.equal(orders["a"][0], orders["c"][0])
    assert not torch.equal(orders["a"][0], orders["a"][1])  # each epoch draws a new order
    assert not torch.equal(orders["a"][0], labels)


def test_unit_scaling_is_exact_and_batches_match_labels():
    images, labels = _indexed()
    for x, y in BatchLoader(images, labels, 32, shuffle=True, seed=0):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(x, images[y].float() / 255)


def test_standard_normalisation():
    images, labels = _indexed(n=200)
    images[:, 1] //= 4  # channels with different statistics
    loader = BatchLoader(images, labels, 64, normalize="standard")
    x = torch.cat([x for x, _ in loader]).double()
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3, dtype=torch.double), atol=1e-5)
    assert torch.allclose(
        x.permute(1, 0, 2, 3).flatten(1).std(1, correction=0), torch.ones(3, dtype=torch.double), atol=1e-5
    )
    given = BatchLoader(images, labels, 64, normalize="standard", mean=[0.5] * 3, std=[0.25] * 3)
    x, _ = next(iter(given))
    assert torch.allclose(x, (images[:64].float() / 255 - 0.5) / 0.25, atol=1e-6)


def _all_shift_flips(image: np.ndarray, pad: int) -> list[np.ndarray]:
    """Reference: every crop of the zero-padded image, mirrored or not (plain numpy)."""
    c, h, w = image.shape
    padded = np.zeros((c, h + 2 * pad, w + 2 * pad), image.dtype)
    padded[:, pad : pad + h, pad : pad + w] = image
    crops = [padded[:, dy : dy + h, dx : dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    return crops + [crop[:, :, ::-1] for crop in crops]


def test_augmentation_gives_shifted_or_flipped_copies_deterministically():
    images, labels = _indexed(n=64, size=12)
    loader = BatchLoader(images, labels, 16, augment=True, seed=3)
    batches = _epoch(loader)
    kinds = set()
    for x, y in batches:
        assert x.shape == (len(y), 3, 12, 12)
        for out, index in zip((x * 255).round().to(torch.uint8).numpy(), y.tolist()):
            variants = _all_shift_flips(images[index].numpy(), 4)
            hits = [i for i, v in enumerate(variants) if np.array_equal(out, v)]
            assert hits, f"sample {index} is no shift/flip of its input"
            kinds.update(("flip" if i >= 81 else "plain", i % 81 != 40) for i in hits)
    assert {("flip", True), ("plain", True)} <= kinds  # both mirrors and real shifts occur
    again = _epoch(BatchLoader(images, labels, 16, augment=True, seed=3))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    other = _epoch(BatchLoader(images, labels, 16, augment=True, seed=4))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(batches, other))


@pytest.mark.parametrize("stop_after", [3, 8])  # mid-epoch, and right after the last of 8 batches
def test_state_dict_resume_gives_identical_batches(tmp_path, stop_after):
    images, labels = _indexed(n=50)
    options = dict(shuffle=True, augment=True, normalize="standard")
    first = BatchLoader(images, labels, 7, seed=11, **options)
    _epoch(first)  # epoch 0
    it = iter(first)
    for _ in range(stop_after):
        next(it)
    torch.save(first.state_dict(), tmp_path / "state.pt")
    assert first.epoch == (2 if stop_after == len(first) else 1)
    rest = [(x.clone(), y.clone()) for x, y in it] + _epoch(first) + _epoch(first)

    resumed = BatchLoader(images, labels, 7, seed=999, **options)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    replay = _epoch(resumed) + _epoch(resumed)
    if stop_after < len(first):
        replay += _epoch(resumed)
    assert len(replay) == len(rest)
    for (xa, ya), (xb, yb) in zip(rest, replay):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    assert resumed.epoch == first.epoch == 4


def test_load_state_dict_rejects_other_data():
    images, labels = _indexed(n=50)
    state = BatchLoader(images, labels, 7, seed=1).state_dict()
    with pytest.raises(ValueError, match="num_samples"):
        BatchLoader(images[:40], labels[:40], 7).load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(images, labels, 8).load_state_dict(state)


def test_bad_loader_arguments():
    images, labels = _indexed(n=10)
    with pytest.raises(ValueError):
        BatchLoader(images.float(), labels, 4)
    with pytest.raises(ValueError):
        BatchLoader(images, labels[:5], 4)
    with pytest.raises(ValueError):
        BatchLoader(images, labels, 4, normalize="imagenet")
    with pytest.raises(ValueError):
        BatchLoader(images, labels, 4, seed=1, generator=torch.Generator())


@pytest.mark.cuda
def test_cuda_batches_equal_cpu_batches():
    images, labels = _indexed(n=64, size=32)
    options = dict(shuffle=True, augment=True, normalize="standard", seed=2)
    cpu = _epoch(BatchLoader(images, labels, 16, **options))
    gpu = _epoch(BatchLoader(images, labels, 16, device="cuda", **options))
    for (xa, ya), (xb, yb) in zip(cpu, gpu):
        assert xb.device.type == "cuda" and yb.device.type == "cuda"
        assert torch.equal(ya, yb.cpu())
        assert torch.allclose(xa, xb.cpu(), atol=1e-6)


# ----------------------------------------------------------------- real data


def test_real_shared_archive_if_present():
    """The full shared archive: 50,000/10,000 images, 5,000/1,000 per class.

    Uses the user's cache (DYNPRUNE_CACHE or ~/.cache/dynprune): the first run
    decodes 60,000 JPEGs (about 10 s), later runs take well under a second.
    """
    if not Path(_REAL_DATA).exists():
        pytest.skip(f"real CIFAR-10 not available at {_REAL_DATA} (set DYNPRUNE_DATA)")
    loaded = load_cifar10(_REAL_DATA, cache_dir=_REAL_CACHE)
    assert loaded.train_images.shape == (50_000, 3, 32, 32)
    assert loaded.test_images.shape == (10_000, 3, 32, 32)
    assert torch.bincount(loaded.train_labels).tolist() == [5_000] * 10
    assert torch.bincount(loaded.test_labels).tolist() == [1_000] * 10
    assert loaded.classes == CIFAR10_CLASSES
    mean, _ = loaded.channel_stats
    assert torch.allclose(mean, torch.tensor([0.4914, 0.4822, 0.4465]), atol=0.01)
