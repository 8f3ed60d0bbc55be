"""Seconds per epoch of the published WRN-28-2 protocol on one GPU, dense and DSR at 0.9, per speed knob.

The ``gpu`` profile's Wide ResNets (:data:`dynprune_lib.study.WRN_RECIPES`) are trained by
``fit`` for ``--epochs`` epochs on ``--images`` random CIFAR-shaped images (the cost of an
epoch does not depend on the pixels; no data set needed) with a 10,000-image test pass after
each epoch, as notebook 04 trains them. Each variant sets the recipe's speed knobs
(:class:`~dynprune_lib.study.WRNRecipe`):

* ``reference``: float32, contiguous layout, PyTorch's default SGD, test batches of 500
  (how the recipes ran before the knobs);
* ``eager``: the recipe as the ``gpu`` profile sets it (bf16 autocast, channels_last,
  fused SGD, test batches of 1,000);
* ``compiled``: that, with ``torch.compile`` (default mode);
* ``cuda_graphs``: that, with ``torch.compile(mode="reduce-overhead")`` (CUDA graphs).

The last epoch's time is the steady one (the first holds warm-up and compilation).
Goal (issue 23): at most 1.5 s per epoch for dense and for DSR, at which the 200-epoch
protocol takes five minutes. Writes ``results/bench_gpu_training.json``; needs CUDA
(``--device cpu`` with few ``--images`` only rehearses it).

    python bench/bench_gpu_training.py [--variants eager compiled] [--networks dense dsr]
"""

from __future__ import annotations

import sys
import time

import torch

from _common import bench_parser, goal, write_result

NAME = "bench_gpu_training"
NETWORKS = {"dense": "wrn-28-2", "dsr": "wrn-28-2-dsr0.9"}
VARIANTS = {
    "reference": {"precision": "fp32", "channels_last": False, "fused_sgd": False, "eval_batch_size": 500},
    "eager": {},
    "compiled": {"compile": "default"},
    "cuda_graphs": {"compile": "reduce-overhead"},
}
GOAL_SECONDS = 1.5


def epoch_seconds(recipe_name: str, variant: str, *, images: int, test_images: int, epochs: int, device: str):
    """``fit``'s history of ``recipe_name`` with ``variant``'s knobs on random images."""
    import dynprune_lib as dp
    from dynprune_lib import study

    recipe = study.wrn_recipe(recipe_name, **VARIANTS[variant])
    generator = torch.Generator().manual_seed(0)
    data = dp.CIFAR10Data(
        torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=generator),
        torch.randint(0, 10, (images,), generator=generator),
        torch.randint(0, 256, (test_images, 3, 32, 32), dtype=torch.uint8, generator=generator),
        torch.randint(0, 10, (test_images,), generator=generator),
        dp.data.CIFAR10_CLASSES,
        "random images",
    )
    dp.set_seed(0)
    setup = study.build_training(recipe, seed=0, device=device)
    train, test = study.wrn_loaders(recipe, data, device=device, eval_batch_size=recipe.eval_batch_size)
    start = time.perf_counter()
    history = dp.fit(
        setup.model,
        train,
        test,
        epochs=epochs,
        optimizer=setup.optimizer,
        pruner=setup.pruner,
        lr_scheduler=setup.lr_scheduler,
        device=device,
        progress=False,
        verbose=False,
        precision=recipe.precision,
    )
    return {
        "recipe": recipe_name,
        "knobs": {
            k: getattr(recipe, k) for k in ("precision", "channels_last", "fused_sgd", "compile", "eval_batch_size")
        },
        "epoch_seconds": [round(float(s), 3) for s in history["seconds"]],
        "steady_epoch_s": round(float(history["seconds"].iloc[-1]), 3),
        "wall_s": round(time.perf_counter() - start, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(NAME, __doc__)
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--networks", nargs="+", choices=sorted(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run; the last one is the steady time")
    parser.add_argument("--images", type=int, default=50_000, help="training images per epoch (CIFAR-10: 50,000)")
    parser.add_argument("--test-images", type=int, default=10_000, help="images of the per-epoch test pass")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu only rehearses")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"{NAME}: no CUDA device here (torch {torch.__version__}); use --device cpu to rehearse")
    runs: dict[str, dict[str, dict]] = {}
    for network in args.networks:
        for variant in args.variants:
            run = epoch_seconds(
                NETWORKS[network],
                variant,
                images=args.images,
                test_images=args.test_images,
                epochs=args.epochs,
                device=args.device,
            )
            runs.setdefault(network, {})[variant] = run
            print(f"{network} {variant}: {run['epoch_seconds']} s per epoch ({run['wall_s']:.0f} s)", flush=True)
    goals = []
    if args.device == "cuda" and args.images == 50_000 and args.test_images == 10_000:
        for network, by_variant in runs.items():
            best = min(by_variant, key=lambda v: by_variant[v]["steady_epoch_s"])
            seconds = by_variant[best]["steady_epoch_s"]
            goals.append(
                goal(
                    f"WRN-28-2 {network}: seconds per epoch on one GPU (the published protocol in 5 minutes)",
                    GOAL_SECONDS,
                    seconds,
                    seconds <= GOAL_SECONDS,
                    best_variant=best,
                )
            )
    gpu = {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda} if args.device == "cuda" else {}
    write_result(args, NAME, __doc__, {"variants": VARIANTS, "runs": runs, "goals": goals}, **gpu)


if __name__ == "__main__":
    main()
