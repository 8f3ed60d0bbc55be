"""Multi-process data-parallel training with ``torchrun`` and DistributedDataParallel.

For users who outgrow one device: the same training engine
(:func:`dynprune_lib.train.fit`) on one process or on ``N``. Inside a script
started by ``torchrun``::

    ctx = init_distributed()                         # rank, world size, device
    model = wrap_model(model, ctx)                   # DDP when there are several ranks
    loader = ShardedLoader(loader, ctx.rank, ctx.world_size)
    fit(model, loader, test_loader, ..., checkpoint=f"run.rank{ctx.rank}.pt")

(``python -m dynprune_lib.study.ddp`` is such a script for the study's Wide
ResNet recipes.) Every rank iterates the *same* global batches (identical loader seeds) and
trains on its own slice of each (:class:`ShardedLoader`), so the global batch
size is the recipe's whatever the number of processes. DDP averages the
gradients, which for equal slices equals the gradient of the global batch;
the pruning schedulers adopt rank 0's masks on every update, so masks and
weights stay identical on every rank. NCCL is used on CUDA, gloo on CPU.

Give each rank its own checkpoint file: then an interrupted run resumes on
every rank from the same state.
BatchNorm statistics are per rank unless ``--sync-bn`` (CUDA only) is given;
the training loss and accuracy in the history are rank 0's slice, while every
rank evaluates the whole test split (identical numbers on every rank).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ._utils import check_int
from .train import resolve_device

__all__ = ["DistContext", "ShardedLoader", "init_distributed", "wrap_model"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among ``world_size`` and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | torch.device | None = None, backend: str | None = None) -> DistContext:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); a lone process without them.

    ``device`` None/"auto" picks ``cuda:LOCAL_RANK`` when CUDA is available, else
    CPU; ``backend`` defaults to NCCL on CUDA and gloo on CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid torchrun environment: RANK={rank}, WORLD_SIZE={world_size}")
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        if backend is None:
            backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank, dev)


def wrap_model(model: nn.Module, ctx: DistContext, *, sync_bn: bool = False) -> nn.Module:
    """``model`` in DistributedDataParallel when ``ctx`` has several ranks, else unchanged.

    ``sync_bn`` converts BatchNorm to SyncBatchNorm (PyTorch supports it on CUDA only).
    Construction broadcasts rank 0's parameters and buffers (masks included).
    """
    if not ctx.distributed:
        return model
    if sync_bn:
        if ctx.device.type != "cuda":
            raise ValueError("sync_bn=True needs CUDA: PyTorch's SyncBatchNorm does not run on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


class ShardedLoader:
    """This rank's slice of every global batch of ``loader`` (a :class:`BatchLoader`).

    All ranks hold the same loader (same data, same seed), so they draw the same
    global batch; rank ``r`` keeps rows ``[r*b/W, (r+1)*b/W)``. The global batch
    size must be divisible by the world size, so every slice of a full batch has
    the same size and DDP's gradient average equals the global batch's gradient.
    A last, smaller batch is split as evenly as torch.tensor_split does (sizes
    differing by one); if it has fewer rows than ranks it is skipped on every rank.
    ``state_dict``/``load_state_dict`` are the wrapped loader's, so ``fit`` can
    checkpoint and resume.
    """

    def __init__(self, loader: Any, rank: int, world_size: int) -> None:
        for name in ("batch_size", "num_samples", "drop_last", "state_dict", "load_state_dict"):
            if not hasattr(loader, name):
                raise TypeError(f"loader must be a BatchLoader-like object with .{name}; got {type(loader).__name__}")
        check_int(world_size, "world_size", 1)
        if check_int(rank, "rank", 0) >= world_size:
            raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
        if loader.batch_size % world_size:
            raise ValueError(
                f"the global batch_size {loader.batch_size} of loader must be divisible by world_size={world_size}"
            )
        self.loader, self.rank, self.world_size = loader, rank, world_size

    @property
    def batch_size(self) -> int:
        """Rows per rank in a full batch."""
        return self.loader.batch_size // self.world_size

    def _last_is_skipped(self) -> bool:
        rest = self.loader.num_samples % self.loader.batch_size
        return not self.loader.drop_last and 0 < rest < self.world_size

    def __len__(self) -> int:
        return len(self.loader) - int(self._last_is_skipped())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.loader:
            if images.shape[0] < self.world_size:
                continue  # the same on every rank: all draw the same global batches
            yield images.tensor_split(self.world_size)[self.rank], labels.tensor_split(self.world_size)[self.rank]

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)
