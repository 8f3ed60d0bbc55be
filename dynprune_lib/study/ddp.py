"""Command line: train one of the study's Wide ResNet recipes, on one process or on N under ``torchrun``.

The library's multi-process pieces (:mod:`dynprune_lib.distributed`) put
together for the section-4 recipes (:data:`~.profiles.WRN_RECIPES`)::

    python -m dynprune_lib.study.ddp --recipe wrn-28-2-dsr0.9 --run-dir build/runs/ddp
    torchrun --nproc_per_node=4 -m dynprune_lib.study.ddp --recipe wrn-28-10 --run-dir build/runs/ddp

Each rank checkpoints to its own file (``<recipe>_seed<s>.rank<r>.pt``) after
every epoch, so an interrupted run resumes on every rank from the same state;
rank 0 writes the per-epoch history (``<recipe>_seed<s>.csv``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..data import load_cifar10
from ..distributed import ShardedLoader, init_distributed, wrap_model
from ..train import fit, set_seed
from .comparison import build_training, wrn_loaders
from .profiles import WRN_RECIPES, wrn_recipe

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dynprune_lib.study.ddp",
        description="Train a Wide ResNet recipe on CIFAR-10 on one process, or on N under "
        "torchrun --nproc_per_node=N (DistributedDataParallel; NCCL on CUDA, gloo on CPU).",
    )
    p.add_argument("--recipe", required=True, choices=sorted(WRN_RECIPES), help="training recipe")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs (milestones rescaled)")
    p.add_argument("--batch-size", type=int, help="override the global batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-subset", type=int, help="train on a class-balanced subset of this size")
    p.add_argument("--test-subset", type=int, help="evaluate on a class-balanced subset of this size")
    p.add_argument("--data-root", help="CIFAR-10 location (default: $DYNPRUNE_DATA, then ./data)")
    p.add_argument("--run-dir", default="build/runs/distributed", help="checkpoints and history go here")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across ranks (CUDA only)")
    p.add_argument("--threads", type=int, help="torch CPU threads per process")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status. Writes, under ``--run-dir``,
    ``<recipe>_seed<s>.rank<r>.pt`` (per-rank checkpoints) and, from rank 0,
    ``<recipe>_seed<s>.csv`` (the per-epoch history)."""
    args = _parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    overrides: dict[str, Any] = {}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    recipe = wrn_recipe(args.recipe, **overrides)
    ctx = init_distributed(args.device)
    try:
        data = load_cifar10(args.data_root).subset(args.train_subset, args.test_subset, seed=args.seed)
        set_seed(args.seed)
        setup = build_training(recipe, seed=args.seed, device=ctx.device)
        train_loader, test_loader = wrn_loaders(recipe, data, seed=args.seed, device=ctx.device)
        model = wrap_model(setup.model, ctx, sync_bn=args.sync_bn)
        if ctx.distributed:
            train_loader = ShardedLoader(train_loader, ctx.rank, ctx.world_size)
        run_dir = Path(args.run_dir)
        stem = f"{recipe.name}_seed{args.seed}"
        history = fit(
            model,
            train_loader,
            test_loader,
            epochs=recipe.epochs,
            optimizer=setup.optimizer,
            pruner=setup.pruner,
            lr_scheduler=setup.lr_scheduler,
            device=ctx.device,
            checkpoint=run_dir / f"{stem}.rank{ctx.rank}.pt",
            progress=False,
            verbose=ctx.is_main and not args.quiet,
            precision=recipe.precision,
        )
        if ctx.is_main:
            history.insert(0, "world_size", ctx.world_size)
            history.to_csv(run_dir / f"{stem}.csv", index=False)
            final = history["test_acc"].iloc[-1] if len(history) else float("nan")
            anchor = f" (published: {recipe.anchor:.4f})" if recipe.anchor is not None else ""
            print(
                f"{recipe.name} ({recipe.architecture}) on {ctx.world_size} process(es): "
                f"final test accuracy {final:.4f}{anchor}",
                flush=True,
            )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
