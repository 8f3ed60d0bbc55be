"""Overhead of the library's data pipeline and training loop.

One epoch of BaselineCNN on CIFAR-10 at batch 32 on CPU, three ways, in one run:

* ``fit``: ``dp.fit`` over ``dp.BatchLoader`` (shuffling, [0,1] scaling,
  per-epoch test evaluation, checkpoint-free);
* ``minimal``: the shortest hand-written PyTorch loop over the same
  pre-loaded uint8 tensors doing the same work (shuffle, scale, train, then
  evaluate on the test split);
* ``torchvision``: the conventional pipeline, a ``Dataset`` that converts
  each sample through PIL and ``transforms.ToTensor()`` (what
  ``torchvision.datasets.CIFAR10`` does) behind a ``DataLoader``.

``fit`` and ``minimal`` run ``--repeats`` times each in an ABBA order, the
torchvision pipelines half as often after them; medians are reported. Target: ``fit`` within 5 %
of ``minimal``. Writes ``results/bench_training_loop.json``.

    python bench/bench_training_loop.py [--data PATH] [--repeats 4] [--train-images N]
"""

from __future__ import annotations

import json
import statistics
import time

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

import dynprune_lib as dp

from _common import bench_parser, goal, write_result  # bench/ is sys.path[0] when run as a script

NAME = "bench_training_loop"

BATCH = 32
TARGET_OVERHEAD = 0.05


def run_fit(data, seed: int) -> float:
    dp.set_seed(seed)
    model = dp.BaselineCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train = dp.BatchLoader(data.train_images, data.train_labels, batch_size=BATCH, shuffle=True, seed=seed)
    test = dp.BatchLoader(data.test_images, data.test_labels, batch_size=1000)
    start = time.perf_counter()
    dp.fit(model, train, test, epochs=1, optimizer=optimizer, device="cpu", progress=False, verbose=False)
    return time.perf_counter() - start


def run_minimal(data, seed: int) -> float:
    dp.set_seed(seed)
    model = dp.BaselineCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = data.train_images, data.train_labels
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for idx in torch.randperm(len(labels), generator=generator).split(BATCH):
        loss = F.cross_entropy(model(images[idx].float().div_(255)), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        for x, y in zip(data.test_images.split(1000), data.test_labels.split(1000)):
            F.cross_entropy(model(x.float().div_(255)), y)
    return time.perf_counter() - start


class PILDataset(Dataset):
    """Per-sample PIL conversion, as torchvision.datasets.CIFAR10.__getitem__ does."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images.permute(0, 2, 3, 1).numpy()  # HWC uint8, like CIFAR10.data
        self.labels = labels.tolist()
        self.transform = transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def run_torchvision(data, seed: int, workers: int) -> float:
    dp.set_seed(seed)
    model = dp.BaselineCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(
        PILDataset(data.train_images, data.train_labels),
        batch_size=BATCH,
        shuffle=True,
        generator=generator,
        num_workers=workers,
    )
    test = DataLoader(PILDataset(data.test_images, data.test_labels), batch_size=1000, num_workers=workers)
    start = time.perf_counter()
    model.train()
    for x, y in train:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        for x, y in test:
            F.cross_entropy(model(x), y)
    return time.perf_counter() - start


def main() -> None:
    parser = bench_parser(NAME, __doc__)
    parser.add_argument("--data", default=None, help="CIFAR-10 location (default: $DYNPRUNE_DATA, ./data)")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--train-images", type=int, default=None, help="epoch size (default: all 50,000)")
    args = parser.parse_args()

    data = dp.load_cifar10(args.data)
    if args.train_images:
        data = data.subset(args.train_images, None, seed=0)
    variants = {
        "fit": lambda s: run_fit(data, s),
        "minimal": lambda s: run_minimal(data, s),
        "torchvision_workers0": lambda s: run_torchvision(data, s, 0),
        "torchvision_workers2": lambda s: run_torchvision(data, s, 2),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    run_fit(data.subset(2000, 1000, seed=0), 0)  # warm-up: allocator, oneDNN primitives
    # fit and minimal, the pair the target compares, alternate in an ABBA order so
    # drift in machine speed cancels; the DataLoader pipelines run afterwards
    # (their worker processes slow whatever runs right after them).
    order = []
    for repeat in range(args.repeats):
        order += [("fit", repeat), ("minimal", repeat)][:: 1 if repeat % 2 == 0 else -1]
    order += [
        (name, r) for r in range(max(1, args.repeats // 2)) for name in variants if name.startswith("torchvision")
    ]
    for name, repeat in order:
        times[name].append(variants[name](repeat))
        print(f"{name} run {len(times[name])}: {times[name][-1]:.2f} s", flush=True)
    median = {name: statistics.median(t) for name, t in times.items()}
    overhead = median["fit"] / median["minimal"] - 1
    result = {
        "goals": [
            goal(
                f"fit's epoch within {TARGET_OVERHEAD:.0%} of a minimal hand-written loop (overhead, fraction)",
                TARGET_OVERHEAD,
                overhead,
                overhead <= TARGET_OVERHEAD,
                threads=torch.get_num_threads(),
            )
        ],
        "workload": "one epoch of BaselineCNN (notebook 01's network and protocol), batch 32, CPU, "
        "train + test evaluation",
        "train_images": int(len(data.train_labels)),
        "test_images": int(len(data.test_labels)),
        "repeats": args.repeats,
        "seconds": times,
        "median_seconds": median,
        "fit_overhead_vs_minimal": overhead,
        "target_overhead": TARGET_OVERHEAD,
        "target_met": overhead <= TARGET_OVERHEAD,
        "torchvision_pipeline_vs_fit": {
            name: median[name] / median["fit"] for name in median if name.startswith("torchvision")
        },
    }
    write_result(args, NAME, __doc__, result)
    print(
        json.dumps(
            {
                k: result[k]
                for k in ("median_seconds", "fit_overhead_vs_minimal", "target_met", "torchvision_pipeline_vs_fit")
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
