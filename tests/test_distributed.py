"""Multi-process training: batch sharding, DDP + DSR against one process, the torchrun entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

import dynprune_lib as dp
from dynprune_lib.data import CIFAR10_CLASSES

from conftest import free_port, synthetic_images

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")


def _images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return synthetic_images(n, size=8, seed=seed)


# ------------------------------------------------------------------- ShardedLoader


@pytest.mark.parametrize(
    "n, batch, world, drop_last",
    [(50, 8, 2, False), (50, 12, 4, False), (49, 8, 2, True), (41, 8, 2, False), (17, 8, 4, False)],
)
def test_shards_partition_every_global_batch(n, batch, world, drop_last):
    images, labels = _images(n)
    make = lambda: dp.BatchLoader(images, labels, batch, shuffle=True, seed=3, drop_last=drop_last)  # noqa: E731
    global_batches = list(make())
    shards = [list(dp.ShardedLoader(make(), r, world)) for r in range(world)]
    kept = [b for b in global_batches if b[0].shape[0] >= world]
    assert all(len(s) == len(kept) == len(dp.ShardedLoader(make(), r, world)) for r, s in enumerate(shards))
    for k, (x, y) in enumerate(kept):
        parts = [shards[r][k] for r in range(world)]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)  # disjoint slices, in rank order, covering it
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
        if x.shape[0] == batch:
            assert all(p[0].shape[0] == batch // world for p in parts)


def test_batch_smaller_than_world_is_skipped_on_every_rank():
    images, labels = _images(17)  # batches of 8, 8, 1: the last cannot feed 4 ranks
    loaders = [dp.ShardedLoader(dp.BatchLoader(images, labels, 8), r, 4) for r in range(4)]
    assert [len(s) for s in loaders] == [2] * 4
    assert [sum(1 for _ in s) for s in loaders] == [2] * 4


def test_sharded_loader_resumes_through_the_wrapped_state():
    images, labels = _images(40)
    a = dp.ShardedLoader(dp.BatchLoader(images, labels, 8, shuffle=True, seed=1, augment=True), 1, 2)
    it = iter(a)
    next(it)
    state = a.state_dict()
    rest = [x for x, _ in it]
    b = dp.ShardedLoader(dp.BatchLoader(images, labels, 8, shuffle=True, seed=99, augment=True), 1, 2)
    b.load_state_dict(state)
    resumed = [x for x, _ in b]
    assert len(resumed) == len(rest) and all(torch.equal(p, q) for p, q in zip(rest, resumed))


def test_sharded_loader_rejects_bad_arguments():
    images, labels = _images(16)
    loader = dp.BatchLoader(images, labels, 6)
    with pytest.raises(ValueError, match="divisible by world_size"):
        dp.ShardedLoader(loader, 0, 4)
    with pytest.raises(ValueError, match="rank"):
        dp.ShardedLoader(loader, 2, 2)
    with pytest.raises(ValueError, match="world_size"):
        dp.ShardedLoader(loader, 0, 0)
    with pytest.raises(TypeError, match="BatchLoader"):
        dp.ShardedLoader([(images, labels)], 0, 2)


def test_single_process_context_without_torchrun(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = dp.init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.distributed, ctx.is_main) == (0, 1, False, True)
    model = nn.Linear(2, 2)
    assert dp.wrap_model(model, ctx) is model


# ------------------------------------------------- DDP + DSR == one process, same batches

GLOBAL_BATCH, EPOCHS = 16, 3


class _Float64(nn.Module):
    """The network in float64, so one process and two can be compared to 1e-10."""

    def __init__(self) -> None:
        super().__init__()
        self.net = dp.MLP(in_features=3 * 8 * 8, hidden=(48, 32), sparsity=0.8).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.double())


def _train(rank: int, world: int, out: Path) -> None:
    """Train with fit(): DDP over `world` ranks (world > 1) or one process (world == 1)."""
    images, labels = _images(64, seed=5)
    dp.set_seed(0)
    model = _Float64()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    pruner = dp.DSR(model, optimizer, n_prune=40, period=2, seed=0)
    train = dp.BatchLoader(images, labels, GLOBAL_BATCH, shuffle=True, seed=7, augment=True, padding=1)
    test = dp.BatchLoader(images[:16], labels[:16], 16)
    first_shard = None
    if world > 1:
        ctx = dp.distributed.DistContext(rank, world, rank, torch.device("cpu"))
        train = dp.ShardedLoader(train, rank, world)
        first_shard = next(
            iter(
                dp.ShardedLoader(
                    dp.BatchLoader(images, labels, GLOBAL_BATCH, shuffle=True, seed=7, augment=True, padding=1),
                    rank,
                    world,
                )
            )
        )[1]
        net = dp.wrap_model(model, ctx)
        assert isinstance(net, nn.parallel.DistributedDataParallel)
    else:
        net = model
    history = dp.fit(
        net,
        train,
        test,
        epochs=EPOCHS,
        optimizer=optimizer,
        pruner=pruner,
        device="cpu",
        checkpoint=out / f"ckpt_world{world}_rank{rank}.pt",
        progress=False,
        verbose=False,
    )
    torch.save(
        {
            "state": model.state_dict(),
            "threshold": pruner.threshold,
            "updates": int(sum(row["pruned"] for row in pruner.log)),
            "test_acc": history["test_acc"].tolist(),
            "first_shard": first_shard,
        },
        out / f"world{world}_rank{rank}.pt",
    )


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _train(rank, world, Path(out))
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_dsr_matches_one_process_on_the_same_global_batches(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    _train(0, 1, tmp_path)
    r0, r1, single = (
        torch.load(tmp_path / name, weights_only=True)
        for name in ("world2_rank0.pt", "world2_rank1.pt", "world1_rank0.pt")
    )
    assert single["updates"] > 0  # DSR did prune and regrow
    # each rank trained on its own half of the global batch
    first = next(
        iter(dp.BatchLoader(*_images(64, seed=5), GLOBAL_BATCH, shuffle=True, seed=7, augment=True, padding=1))
    )[1]
    assert torch.equal(torch.cat([r0["first_shard"], r1["first_shard"]]), first)
    assert len(r0["first_shard"]) == GLOBAL_BATCH // 2
    for key, value in single["state"].items():
        assert torch.equal(r0["state"][key], r1["state"][key]), f"{key} differs across ranks"
        if key.endswith("mask"):
            assert torch.equal(r0["state"][key], value), f"{key}: DDP mask differs from one process"
        else:
            torch.testing.assert_close(r0["state"][key], value, rtol=1e-10, atol=1e-12, msg=key)
    assert r0["threshold"] == r1["threshold"] == single["threshold"]
    assert r0["test_acc"] == r1["test_acc"] == single["test_acc"]


# ------------------------------------------------------------ torchrun entry point


def _write_tree(root: Path, per_class: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for label, name in enumerate(CIFAR10_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                image[..., label % 3] //= 2
                Image.fromarray(image).save(folder / f"{i}.png")


def test_torchrun_entry_point_trains_on_two_processes(tmp_path):
    data = tmp_path / "data"
    _write_tree(data, {"train": 4, "test": 2})
    run_dir = tmp_path / "runs"
    env = {**os.environ, "DYNPRUNE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "DYNPRUNE_PROGRESS": "0"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "dynprune_lib.study.ddp",
        "--recipe",
        "wrn-10-1-dsr-smoke",
        "--batch-size",
        "8",
        "--epochs",
        "2",
        "--data-root",
        str(data),
        "--run-dir",
        str(run_dir),
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    history = pd.read_csv(run_dir / "wrn-10-1-dsr-smoke_seed0.csv")
    assert list(history["epoch"]) == [1, 2] and set(history["world_size"]) == {2}
    ranks = [dp.load_checkpoint(run_dir / f"wrn-10-1-dsr-smoke_seed0.rank{r}.pt")["model"] for r in (0, 1)]
    masks = [k for k in ranks[0] if k.endswith("mask")]
    assert masks and all(k.startswith("module.") for k in ranks[0])  # trained inside DDP
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    # 40 images, global batch 8, 2 epochs: 10 steps, DSR (period 4) updated twice
    pruner = dp.load_checkpoint(run_dir / "wrn-10-1-dsr-smoke_seed0.rank0.pt")["pruner"]
    assert pruner["step_count"] == 10 and sum(row["step"] in (4, 8) for row in pruner["log"]) > 0
