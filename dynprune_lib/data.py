"""CIFAR-10 as in-memory uint8 tensors, and a fast batch iterator over them.

``load_cifar10`` finds the data (``root`` argument, ``$DYNPRUNE_DATA`` or
``./data``), decodes it once, caches the arrays and returns a ``CIFAR10Data``.
``BatchLoader`` yields shuffled, normalised (and optionally augmented) float
batches with a checkpointable random state.

Accepted forms of the data:

* torchvision's ``cifar-10-batches-py`` folder (or a folder containing it), the
  original lossless pickled batches; downloaded with torchvision (md5-checked)
  into ``./data`` when nothing is found at the default location;
* an image-folder tree ``train/<class>/*`` and ``test/<class>/*`` (PNG, JPEG,
  ...), as a folder or as a ``.tar``/``.tar.gz`` archive, optionally under one
  top-level folder (e.g. the shared ``cifar10-jpeg.tar.gz``); a ``.tar.gz`` of
  ``cifar-10-batches-py`` (torchvision's download) is accepted as well.

Every problem with the data raises ``DataError``.
"""

from __future__ import annotations

import codecs
import functools
import io
import math
import os
import pickle
import tarfile
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ._utils import atomic_write, check_int, content_key, progress_enabled

__all__ = [
    "CIFAR10_CLASSES",
    "BatchLoader",
    "CIFAR10Data",
    "DataError",
    "channel_stats",
    "load_cifar10",
    "make_loaders",
    "stratified_indices",
]

#: Canonical CIFAR-10 label order (label i is ``CIFAR10_CLASSES[i]``); it is
#: also the alphabetical order, which is how image folders are mapped to labels.
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

_IMAGE_SHAPE = (3, 32, 32)
_SPLITS = ("train", "test")
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCHES = ("test_batch",)
_META_FILE = "batches.meta"
_BATCH_FILES = (*_TRAIN_BATCHES, *_TEST_BATCHES, _META_FILE)
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
# Pillow identifies a file by its content, not its name, and a few formats
# (EPS) run external programs when loaded; only these decoders are allowed.
_IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "PPM", "TIFF", "WEBP")
# Bump when the cache layout or the decoding changes: old caches are then ignored.
_CACHE_FORMAT_VERSION = 1

_HOW_TO_PROVIDE = (
    "Provide CIFAR-10 in one of three ways: pass load_cifar10(root=...), set the "
    "environment variable DYNPRUNE_DATA, or put it in ./data; accepted forms are "
    "torchvision's 'cifar-10-batches-py' folder, an image folder with "
    "train/<class>/ and test/<class>/, or a .tar/.tar.gz archive of either "
    "(e.g. /work/shared/data/cifar10-jpeg.tar.gz). With internet access, "
    "load_cifar10() with no root and DYNPRUNE_DATA unset downloads the original "
    "into ./data with torchvision."
)


class DataError(RuntimeError):
    """CIFAR-10 data is missing or malformed; the message names the path and the problem."""


def _error(where: object, problem: str) -> DataError:
    return DataError(f"{where}: {problem}.\n{_HOW_TO_PROVIDE}")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, eq=False)
class CIFAR10Data:
    """Both CIFAR-10 splits in memory.

    Images are uint8 tensors (N, 3, 32, 32) in RGB, labels int64 tensors (N,)
    indexing ``classes``; ``source`` is where the data was read from.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        for split in _SPLITS:
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise ValueError(
                    f"{split}_images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}"
                )
            if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
                raise ValueError(
                    f"{split}_labels must be an int64 ({images.shape[0]},) tensor, "
                    f"got {labels.dtype} {tuple(labels.shape)}"
                )

    def __repr__(self) -> str:
        return (
            f"CIFAR10Data(train={tuple(self.train_images.shape)}, "
            f"test={tuple(self.test_images.shape)}, classes={len(self.classes)}, "
            f"source={self.source!r})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @functools.cached_property
    def channel_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (mean, std) of the training images in [0, 1] units; computed once."""
        return channel_stats(self.train_images)

    def subset(self, n_train: int | None, n_test: int | None, *, seed: int = 0) -> CIFAR10Data:
        """A seeded, class-stratified subset (class counts differ by at most one
        when the source is balanced), in the original order; for smoke tests.
        ``None`` keeps a split whole."""
        gen = torch.Generator().manual_seed(seed)
        train = stratified_indices(self.train_labels, n_train, gen)
        test = stratified_indices(self.test_labels, n_test, gen)
        return CIFAR10Data(
            self.train_images[train],
            self.train_labels[train],
            self.test_images[test],
            self.test_labels[test],
            self.classes,
            self.source,
        )


def stratified_indices(labels: torch.Tensor, n: int | None, gen: torch.Generator | int) -> torch.Tensor:
    """``n`` indices into ``labels``, sorted: a seeded round-robin over the classes, so class
    counts differ by at most one on balanced labels and, for one seed, a smaller ``n`` is a
    subset of a larger one. ``gen``: a CPU generator or a seed; ``n=None`` keeps every index."""
    if not isinstance(gen, torch.Generator):
        gen = torch.Generator().manual_seed(check_int(gen, "seed", None))
    total = labels.numel()
    if n is None:
        return torch.arange(total)
    if not 0 <= n <= total:
        raise ValueError(f"subset size {n} not in 0..{total}")
    perm = torch.randperm(total, generator=gen)
    perm_labels = labels[perm]
    by_class = torch.sort(perm_labels, stable=True).indices
    counts = torch.bincount(perm_labels)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.empty(total, dtype=torch.int64)  # rank of each perm entry within its class
    rank[by_class] = torch.arange(total) - first[perm_labels[by_class]]
    chosen = torch.sort(rank, stable=True).indices[:n]
    return torch.sort(perm[chosen]).values


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) std of uint8 NCHW images, in [0, 1] units.

    Computed from a 256-bin histogram per channel: exact, and several times
    faster than float sums over the 150 M values of CIFAR-10's training set.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[0] == 0:
        raise ValueError("channel_stats needs a non-empty uint8 (N, C, H, W) tensor")
    counts = (
        torch.stack([torch.bincount(images[:, c].reshape(-1), minlength=256) for c in range(images.shape[1])])
        .cpu()
        .double()
    )
    values = torch.arange(256, dtype=torch.float64) / 255
    mean = counts @ values / counts.sum(1)
    var = counts @ values.square() / counts.sum(1) - mean.square()
    return mean.float(), var.clamp_min(0).sqrt().float()


# ------------------------------------------------------------------ finding data


class _Source(NamedTuple):
    kind: Literal["batches", "images", "archive"]
    path: Path


def _default_location(root: str | os.PathLike[str] | None) -> tuple[Path, bool]:
    """(where to look, whether it is the default ./data that may be downloaded into)."""
    if root is not None:
        return Path(root).expanduser(), False
    env = os.environ.get("DYNPRUNE_DATA")
    if env:
        return Path(env).expanduser(), False
    return Path("data"), True


def _dir_kind(path: Path) -> Literal["batches", "images"] | None:
    if any((path / name).is_file() for name in _BATCH_FILES):
        return "batches"
    if any((path / split).is_dir() for split in _SPLITS):
        return "images"
    return None


def _find_source(path: Path) -> _Source | None:
    """The data at ``path`` (a folder, a folder holding one, or an archive), or None."""
    if path.is_file():
        return _Source("archive", path)
    if not path.is_dir():
        return None
    kind = _dir_kind(path)
    if kind is not None:
        return _Source(kind, path)
    try:
        entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise _error(path, f"cannot list the folder ({exc})") from exc
    found: dict[str, list[Path]] = {"batches": [], "images": [], "archive": []}
    for entry in entries:
        if entry.is_dir():
            sub_kind = _dir_kind(entry)
            if sub_kind is not None:
                found[sub_kind].append(entry)
        elif entry.is_file() and entry.name.lower().endswith(_ARCHIVE_SUFFIXES):
            found["archive"].append(entry)
    # The original lossless batches win over image folders, which win over archives.
    for found_kind in ("batches", "images", "archive"):
        candidates = found[found_kind]
        if len(candidates) == 1:
            return _Source(found_kind, candidates[0])  # type: ignore[arg-type]
        if len(candidates) > 1:
            names = ", ".join(p.name for p in candidates)
            raise _error(path, f"holds several candidate CIFAR-10 copies ({names}); pass root= to pick one")
    return None


def _download(location: Path) -> None:
    """Download torchvision's CIFAR-10 archive (md5-checked) and extract it into location."""
    # Imported here: torchvision takes over a second to import and is rarely needed.
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(
            CIFAR10.url,
            download_root=str(location),
            filename=CIFAR10.filename,
            md5=CIFAR10.tgz_md5,
            remove_finished=True,
        )
    except Exception as exc:  # offline, md5 mismatch, disk full, ...: all the same to the user
        raise _error(
            location.resolve(),
            f"no CIFAR-10 data found there, and downloading {CIFAR10.url} failed ({type(exc).__name__}: {exc})",
        ) from exc


# --------------------------------------------------------------------- decoding


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


# The callables a CIFAR-10 batch file names: numpy arrays pickle as
# _reconstruct(ndarray, shape, dtype) plus state. Python 2 wrote them under
# numpy.core, numpy 2 under numpy._core; Python 3 pickles at protocol 2 spell
# bytes as _codecs.encode(str, "latin1").
_RECONSTRUCT = np.zeros(0, np.uint8).__reduce__()[0]
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays: unpickling arbitrary files runs
    arbitrary code, and the batch files are whatever a user points us at."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(f"{module}.{name}") from None


def _unpickle_batch(raw: bytes, where: str) -> dict[str, Any]:
    try:
        obj = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _ForbiddenGlobal as exc:
        raise _error(
            where, f"the pickle refers to {exc}, which a CIFAR-10 batch file never needs; refusing to load it"
        ) from None
    except Exception as exc:
        raise _error(where, f"not a readable CIFAR-10 batch file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise _error(where, f"expected a pickled dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _parse_batches(raw: Mapping[str, bytes], where: str) -> dict[str, Any]:
    """Arrays from the cifar-10-batches-py files (name -> bytes)."""
    missing = [name for name in _BATCH_FILES if name not in raw]
    if missing:
        raise _error(where, f"not a complete cifar-10-batches-py folder: missing {', '.join(missing)}")
    meta = _unpickle_batch(raw[_META_FILE], f"{where}/{_META_FILE}")
    names = meta.get("label_names")
    if not isinstance(names, list):
        raise _error(f"{where}/{_META_FILE}", "no 'label_names' list")
    classes = tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)
    if classes != CIFAR10_CLASSES:
        raise _error(f"{where}/{_META_FILE}", f"label_names {list(classes)} are not the CIFAR-10 classes")
    out: dict[str, Any] = {"classes": list(classes)}
    for split, files in (("train", _TRAIN_BATCHES), ("test", _TEST_BATCHES)):
        images, labels = [], []
        for name in files:
            batch_where = f"{where}/{name}"
            batch = _unpickle_batch(raw[name], batch_where)
            data, batch_labels = batch.get("data"), batch.get("labels")
            if (
                not isinstance(data, np.ndarray)
                or data.dtype != np.uint8
                or data.ndim != 2
                or data.shape[1] != math.prod(_IMAGE_SHAPE)
            ):
                desc = (
                    f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
                )
                raise _error(batch_where, f"'data' must be a uint8 N x 3072 array, found {desc}")
            try:
                label_array = np.asarray(batch_labels)
            except (TypeError, ValueError):
                label_array = np.empty(0, dtype=object)
            if label_array.dtype.kind not in "iu" or label_array.shape != (data.shape[0],):
                raise _error(batch_where, f"'labels' must be {data.shape[0]} integers, one per image")
            if label_array.size and (label_array.min() < 0 or label_array.max() >= len(classes)):
                raise _error(batch_where, f"labels outside 0..{len(classes) - 1}")
            images.append(data.reshape(-1, *_IMAGE_SHAPE))
            labels.append(label_array.astype(np.int64))
        out[f"{split}_images"] = torch.from_numpy(np.concatenate(images))
        out[f"{split}_labels"] = torch.from_numpy(np.concatenate(labels))
    return out


def _class_folders(split_tree: Mapping[str, list[tuple[str, Any]]], where: str) -> None:
    """Check that a split holds exactly the CIFAR-10 class folders, none empty."""
    unexpected = sorted(set(split_tree) - set(CIFAR10_CLASSES))
    if unexpected:
        raise _error(where, f"unexpected class folder(s) {unexpected}; expected exactly {list(CIFAR10_CLASSES)}")
    for name in CIFAR10_CLASSES:
        if name not in split_tree:
            raise _error(f"{where}/{name}", "class folder missing")
        if not split_tree[name]:
            raise _error(f"{where}/{name}", "class folder has no images")


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(_IMAGE_SUFFIXES)


def _decode_tree(
    tree: Mapping[str, Mapping[str, list[tuple[str, Any]]]], where: str, show_progress: bool
) -> dict[str, Any]:
    """Decode {split: {class: [(name, path-or-bytes)]}} into uint8 NCHW arrays.

    Labels follow CIFAR10_CLASSES; files are taken in sorted name order.
    """
    for split in _SPLITS:
        if split not in tree:
            raise _error(where, f"no '{split}/' folder (expected train/<class>/ and test/<class>/)")
        _class_folders(tree[split], f"{where}/{split}")
    total = sum(len(files) for split in _SPLITS for files in tree[split].values())
    out: dict[str, Any] = {"classes": list(CIFAR10_CLASSES)}
    height, width = _IMAGE_SHAPE[1:]
    with tqdm(total=total, desc="Decoding CIFAR-10 (once; cached)", unit="img", disable=not show_progress) as bar:
        for split in _SPLITS:
            files = [
                (label, f"{split}/{cls}/{name}", src)
                for label, cls in enumerate(CIFAR10_CLASSES)
                for name, src in sorted(tree[split][cls], key=lambda item: item[0])
            ]
            images = np.empty((len(files), height, width, 3), dtype=np.uint8)
            for i, (_, rel, src) in enumerate(files):
                images[i] = _decode_image(src, src if isinstance(src, Path) else f"{where}/{rel}")
                bar.update()
            out[f"{split}_images"] = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
            out[f"{split}_labels"] = torch.tensor([label for label, _, _ in files], dtype=torch.int64)
    return out


def _decode_image(src: Path | bytes, where: object) -> np.ndarray:
    try:
        with Image.open(src if isinstance(src, Path) else io.BytesIO(src), formats=_IMAGE_FORMATS) as im:
            size, mode = im.size, im.mode
            pixels = np.asarray(im) if (size, mode) == ((32, 32), "RGB") else None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
        raise _error(where, f"cannot decode image ({type(exc).__name__}: {exc})") from exc
    if pixels is None:
        raise _error(where, f"image is {size[0]}x{size[1]} {mode}, expected 32x32 RGB")
    return pixels


def _decode_dir_images(root: Path, show_progress: bool) -> dict[str, Any]:
    tree: dict[str, dict[str, list[tuple[str, Any]]]] = {}
    for split in _SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        tree[split] = {}
        for class_dir in split_dir.iterdir():
            if class_dir.is_dir() and not class_dir.name.startswith("."):
                tree[split][class_dir.name] = [
                    (f.name, f) for f in class_dir.iterdir() if _is_image_name(f.name) and f.is_file()
                ]
    return _decode_tree(tree, str(root), show_progress)


def _read_archive(path: Path) -> tuple[dict[str, bytes], set[str]]:
    """(file name -> bytes, folder names) of the members that may be CIFAR-10 data.

    Members are read into memory, never extracted, so hostile member names
    (absolute paths, '..') cannot write anywhere.
    """
    files: dict[str, bytes] = {}
    folders: set[str] = set()
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = "/".join(part for part in member.name.split("/") if part not in ("", "."))
                if member.isdir():
                    folders.add(name)
                    continue
                folders.update("/".join(name.split("/")[:i]) for i in range(1, name.count("/") + 1))
                base = name.rsplit("/", 1)[-1]
                if member.isfile() and (base in _BATCH_FILES or _is_image_name(base)):
                    handle = tar.extractfile(member)
                    assert handle is not None  # regular files always have one
                    files[name] = handle.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise _error(
            path, f"not a readable .tar/.tar.gz archive, corrupt or truncated ({type(exc).__name__}: {exc})"
        ) from exc
    return files, folders


def _decode_archive(path: Path, show_progress: bool) -> dict[str, Any]:
    files, folders = _read_archive(path)
    tops = sorted({name.split("/", 1)[0] for name in (*files, *folders) if "/" in name})
    for prefix in ("", *(top + "/" for top in tops)):
        where = f"{path}:{prefix.rstrip('/')}" if prefix else str(path)
        batch_names = {
            name[len(prefix) :]: raw
            for name, raw in files.items()
            if name.startswith(prefix) and name[len(prefix) :] in _BATCH_FILES
        }
        if batch_names:
            return _parse_batches(batch_names, where)
        if any(f"{prefix}{split}" in folders for split in _SPLITS):
            tree: dict[str, dict[str, list[tuple[str, Any]]]] = {}
            for split in _SPLITS:
                if f"{prefix}{split}" in folders:
                    tree[split] = {}
            for folder in folders:
                parts = folder[len(prefix) :].split("/") if folder.startswith(prefix) else []
                if len(parts) == 2 and parts[0] in tree and not parts[1].startswith("."):
                    tree[parts[0]].setdefault(parts[1], [])
            for name, raw in files.items():
                parts = name[len(prefix) :].split("/") if name.startswith(prefix) else []
                if len(parts) == 3 and parts[0] in tree and parts[1] in tree[parts[0]]:
                    tree[parts[0]][parts[1]].append((parts[2], raw))
            return _decode_tree(tree, where, show_progress)
    raise _error(
        path,
        "archive holds neither cifar-10-batches-py files nor train/<class>/ and "
        "test/<class>/ folders (at its top or under one top-level folder)",
    )


def _decode(source: _Source, show_progress: bool) -> dict[str, Any]:
    if source.kind == "archive":
        return _decode_archive(source.path, show_progress)
    if source.kind == "images":
        return _decode_dir_images(source.path, show_progress)
    raw: dict[str, bytes] = {}
    for name in _BATCH_FILES:
        try:
            raw[name] = (source.path / name).read_bytes()
        except FileNotFoundError:
            pass  # reported by _parse_batches, which names all missing files
        except OSError as exc:
            raise _error(source.path / name, f"cannot read ({exc})") from exc
    return _parse_batches(raw, str(source.path))


# ------------------------------------------------------------------------- cache


def _cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("DYNPRUNE_CACHE"):
        return Path(os.environ["DYNPRUNE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dynprune"


def _fingerprint(source: _Source) -> list[Any]:
    """(name, size, mtime) of every file the source is read from."""

    def stat(path: Path, name: str) -> list[Any]:
        try:
            st = path.stat()
        except OSError:
            return [name, -1, -1]
        return [name, st.st_size, st.st_mtime_ns]

    if source.kind == "archive":
        return [stat(source.path, "")]
    if source.kind == "batches":
        return [stat(source.path / name, name) for name in _BATCH_FILES]
    entries = []
    for split in _SPLITS:
        for folder, dirs, files in os.walk(source.path / split):
            dirs.sort()
            rel = os.path.relpath(folder, source.path)
            entries.append(stat(Path(folder), rel))
            entries.extend(stat(Path(folder, f), f"{rel}/{f}") for f in sorted(files))
    return entries


def _cache_entry(source: _Source, cache_dir: Path) -> tuple[Path, str]:
    """Cache file for the source and the key it must hold (path + files' sizes and mtimes)."""
    resolved = str(source.path.resolve())
    key = content_key(_CACHE_FORMAT_VERSION, source.kind, resolved, _fingerprint(source), length=40)
    return cache_dir / f"cifar10-{content_key(resolved, length=12)}-{key[:16]}.pt", key


def _valid_arrays(arrays: Any) -> bool:
    try:
        if list(arrays["classes"]) != list(CIFAR10_CLASSES):
            return False
        for split in _SPLITS:
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            if images.dtype != torch.uint8 or tuple(images.shape[1:]) != _IMAGE_SHAPE:
                return False
            if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
                return False
            if labels.numel() and (labels.min() < 0 or labels.max() >= len(CIFAR10_CLASSES)):
                return False
        return True
    except (KeyError, TypeError, AttributeError):
        return False


def _read_cache(path: Path, key: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        arrays = torch.load(path, map_location="cpu", weights_only=True)
        if (
            not isinstance(arrays, dict)
            or arrays.get("format_version") != _CACHE_FORMAT_VERSION
            or arrays.get("key") != key
            or not _valid_arrays(arrays)
        ):
            raise ValueError("unexpected contents")
    except Exception as exc:  # any unreadable cache is rebuilt: it is derived data
        warnings.warn(
            f"ignoring corrupt CIFAR-10 cache {path} ({type(exc).__name__}: {exc}); decoding the source again",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return arrays


def _write_cache(path: Path, key: str, arrays: dict[str, Any]) -> None:
    """Write atomically and drop stale caches of the same source."""
    try:
        state = {**arrays, "format_version": _CACHE_FORMAT_VERSION, "key": key}
        atomic_write(path, lambda handle: torch.save(state, handle))
        path_id = path.stem.split("-")[1]
        for stale in path.parent.glob(f"cifar10-{path_id}-*.pt"):
            if stale != path:
                stale.unlink(missing_ok=True)
    except OSError as exc:  # a read-only or full disk only costs the next run a decode
        warnings.warn(
            f"could not write the CIFAR-10 cache {path} ({exc}); continuing without it", RuntimeWarning, stacklevel=3
        )


def load_cifar10(
    root: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: bool | None = None,
) -> CIFAR10Data:
    """Load CIFAR-10 from ``root``, else ``$DYNPRUNE_DATA``, else ``./data``.

    The decoded arrays are cached under ``cache_dir`` (default ``$DYNPRUNE_CACHE``,
    else ``~/.cache/dynprune``), keyed by the source's resolved path, file
    sizes and mtimes, so later calls skip decoding and a changed source is
    decoded again. Only when the default ``./data`` holds nothing and
    ``download`` is true is the original downloaded there with torchvision.
    ``progress``: show a bar while decoding (default: yes, except with
    ``$CI`` set or ``DYNPRUNE_PROGRESS=0``). Raises ``DataError``.
    """
    location, is_default = _default_location(root)
    source = _find_source(location)
    if source is None:
        if not location.exists() and not is_default:
            raise _error(location.absolute(), "no such file or folder")
        if not (is_default and download):
            raise _error(
                location.resolve(), "no CIFAR-10 data found there" + (" (download=False)" if is_default else "")
            )
        _download(location)
        source = _find_source(location)
        if source is None:
            raise _error(location.resolve(), "the downloaded archive did not yield CIFAR-10 data")
    cache_path, key = _cache_entry(source, _cache_dir(cache_dir))
    arrays = _read_cache(cache_path, key)
    if arrays is None:
        arrays = _decode(source, progress_enabled(progress))
        _write_cache(cache_path, key, arrays)
    return CIFAR10Data(
        arrays["train_images"],
        arrays["train_labels"],
        arrays["test_images"],
        arrays["test_labels"],
        tuple(arrays["classes"]),
        str(source.path.resolve()),
    )


# ---------------------------------------------------------------------- batches


class BatchLoader:
    """Iterate over in-memory uint8 images in float32 batches on ``device``.

    Each epoch draws its order (``shuffle``) and its augmentation from one CPU
    ``torch.Generator`` (``seed`` or ``generator``), all at the start of the
    epoch, so ``state_dict()`` taken anywhere, even mid-epoch, resumes with
    bit-identical batches. Images and labels move to ``device`` once; a batch
    costs one index, (the augmentation,) one float conversion and the scaling.

    normalize: ``"unit"`` divides by 255 (the paper); ``"standard"`` also
    subtracts ``mean`` and divides by ``std`` (per channel, [0, 1] units;
    computed from ``images`` when not given, so pass the training statistics
    to a test loader). augment: random crop after 4-px zero padding plus
    horizontal flip with probability 1/2, per sample.
    One iteration at a time per loader.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        device: str | torch.device = "cpu",
        normalize: Literal["unit", "standard"] = "unit",
        mean: Sequence[float] | torch.Tensor | None = None,
        std: Sequence[float] | torch.Tensor | None = None,
        augment: bool = False,
        padding: int = 4,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if normalize not in ("unit", "standard"):
            raise ValueError(f"normalize must be 'unit' or 'standard', got {normalize!r}")
        if seed is not None and generator is not None:
            raise ValueError("pass seed or generator, not both")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError("generator must be a CPU generator (its state is device-independent)")
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        self.padding = padding
        self.normalize = normalize
        self.device = torch.device(device)
        self._images = images.to(self.device)
        self._labels = labels.to(self.device, torch.int64)
        if generator is None:
            generator = torch.Generator()
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(seed)
        self._gen = generator
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self._standardize = normalize == "standard"
        if self._standardize:
            if mean is None or std is None:
                computed = channel_stats(images)
                mean = computed[0] if mean is None else mean
                std = computed[1] if std is None else std
            self.mean = torch.as_tensor(mean, dtype=torch.float32).flatten().cpu()
            self.std = torch.as_tensor(std, dtype=torch.float32).flatten().cpu()
            if self.mean.numel() != images.shape[1] or self.std.numel() != images.shape[1]:
                raise ValueError(f"mean and std need {images.shape[1]} values (one per channel)")
            if (self.std <= 0).any():
                raise ValueError("std must be positive")
            self._mean_dev = self.mean.view(1, -1, 1, 1).to(self.device)
            self._std_dev = self.std.view(1, -1, 1, 1).to(self.device)
        height, width = images.shape[2:]
        self._rows = torch.arange(height, device=self.device)
        self._cols = torch.arange(width, device=self.device)
        self._cols_flipped = self._cols.flip(0)
        # Iteration state, see state_dict().
        self._epoch = 0
        self._epoch_start: torch.Tensor | None = None
        self._batches_done = 0
        self._resume = False

    @property
    def num_samples(self) -> int:
        return self._images.shape[0]

    @property
    def epoch(self) -> int:
        """Number of epochs completed (counting one whose last batch was handed out)."""
        consumed = self._epoch_start is not None and self._batches_done == len(self)
        return self._epoch + int(consumed)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._resume:
            self._gen.set_state(self._epoch_start)
            skip, self._resume = self._batches_done, False
        else:
            if self._epoch_start is not None and self._batches_done == len(self):
                self._epoch += 1  # the previous epoch was consumed but its iterator not exhausted
            self._epoch_start, skip = self._gen.get_state(), 0
            self._batches_done = 0
        n, size = self.num_samples, self.batch_size
        order = torch.randperm(n, generator=self._gen).to(self.device) if self.shuffle else None
        if self.augment:
            offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=self._gen).to(self.device)
            flips = (torch.rand(n, generator=self._gen) < 0.5).to(self.device)
        for k in range(skip, len(self)):
            start, stop = k * size, min(k * size + size, n)
            if order is None:
                x, y = self._images[start:stop], self._labels[start:stop]
            else:
                idx = order[start:stop]
                x, y = self._images.index_select(0, idx), self._labels.index_select(0, idx)
            if self.augment:
                x = self._crop_flip(x, offsets[start:stop], flips[start:stop])
            x = x.float().div_(255)
            if self._standardize:
                x = x.sub_(self._mean_dev).div_(self._std_dev)
            self._batches_done = k + 1
            yield x, y
        self._epoch += 1
        self._epoch_start, self._batches_done = None, 0

    def _crop_flip(self, x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Per-sample random crop of the zero-padded images, then optional mirror.

        Hand-written because torchvision.transforms.v2 draws one crop and one
        flip per call, i.e. the same for the whole batch, and calling it per
        sample would be slow Python; two gathers do every sample at once.
        """
        b, c, h, w = x.shape
        p = self.padding
        padded = x.new_zeros((b, c, h + 2 * p, w + 2 * p))
        padded[:, :, p : p + h, p : p + w] = x
        rows = offsets[:, :1] + self._rows  # (b, h): source rows in the padded image
        cols = offsets[:, 1:] + torch.where(flips[:, None], self._cols_flipped, self._cols)
        x = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * p))
        return x.gather(3, cols[:, None, None, :].expand(b, c, h, w))

    def state_dict(self) -> dict[str, Any]:
        """Generator state and position; load_state_dict() continues from here.

        Mid-epoch, it holds the generator state at the start of the epoch and
        the number of batches already handed out, so the epoch is redrawn
        identically and those batches are skipped.
        """
        in_progress = self._epoch_start is not None and 0 < self._batches_done < len(self)
        return {
            "generator": (self._epoch_start if in_progress else self._gen.get_state()).clone(),
            "epoch": self.epoch,
            "batches_done": self._batches_done if in_progress else 0,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state_dict() of a loader over the same data and batch size."""
        for name in ("num_samples", "batch_size"):
            if state[name] != getattr(self, name):
                raise ValueError(f"state is for {name}={state[name]}, this loader has {getattr(self, name)}")
        done = int(state["batches_done"])
        if not 0 <= done < max(len(self), 1):
            raise ValueError(f"batches_done={done} out of range for {len(self)} batches")
        generator_state = state["generator"].to("cpu", copy=True)  # a CPU generator's state, wherever it was read
        self._gen.set_state(generator_state)
        self._epoch = int(state["epoch"])
        self._epoch_start = generator_state if done else None
        self._batches_done = done
        self._resume = bool(done)


def make_loaders(
    data: CIFAR10Data,
    batch_size: int,
    *,
    augment: bool = False,
    eval_batch_size: int = 500,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[BatchLoader, BatchLoader]:
    """Shuffled training loader (augmented if asked) and unshuffled test loader, both
    standardised per channel with the *training* split's statistics."""
    mean, std = data.channel_stats
    train = BatchLoader(
        data.train_images,
        data.train_labels,
        batch_size,
        shuffle=True,
        seed=seed,
        device=device,
        normalize="standard",
        mean=mean,
        std=std,
        augment=augment,
    )
    test = BatchLoader(
        data.test_images, data.test_labels, eval_batch_size, device=device, normalize="standard", mean=mean, std=std
    )
    return train, test
