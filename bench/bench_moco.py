"""Benchmark: MoCo (He, Fan, Wu, Xie & Girshick, 2020, CVPR) on real CIFAR-10, measured by weighted kNN.

    python bench/bench_moco.py --preset cpu            # ≤ 9 min on a 2-core CPU: 10k/2k images, ≤ 7 min of training
    python bench/bench_moco.py --preset gpu            # CIFAR ResNet-18, 50k images, ≤ 8 min of training
    python bench/bench_moco.py --preset cpu --data embedded   # the course's offline digits

**Same code path as the notebook.** Nothing about MoCo is written here. Training is
``sslcourse.recipes.moco.run``, the function the locked cells of ``07_moco`` call: the same
recipe table, container, augmentation, loader, optimiser, schedule and ``sslcourse.train.fit``
(bf16 autocast on CUDA, channels_last). The four exercise functions (``moco_step``,
``moco_infonce``, ``momentum_update``, ``enqueue_dequeue``) come from the solution notebook
through ``bench/solutions.py``. The kNN is ``recipes.moco.knn_monitor`` (k=200, T=0.1).

``--minutes`` caps the *training* time. A short calibration run through the same ``run``
measures the seconds per step; the number of epochs is then cut so that the cosine schedule
ends within the cap (the recipe's epochs, or ``--epochs``, are the upper limit), and ``fit``'s
``deadline_s`` stops the run at the cap should the machine slow down. Loading, calibration and
kNN come on top.

Prints random-init and MoCo kNN accuracy and timings; never passes or fails on time.
On a shared CPU, idle OpenMP threads that spin steal time from everyone, so this script sets
``OMP_WAIT_POLICY=PASSIVE`` unless it is already set (as bench_rotation.py does).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the first import of torch
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.benchutil import add_record_flag, record_reference_row  # noqa: E402
from bench.solutions import solution_functions  # noqa: E402
from sslcourse.budget import make_budget  # noqa: E402
from sslcourse.data import embedded_digits, load_cifar10_npz  # noqa: E402
from sslcourse.recipes import moco as recipe_module  # noqa: E402
from sslcourse.session import Session, choose_device, seed_everything  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.npz"
EXERCISES = ("moco_step", "moco_infonce", "momentum_update", "enqueue_dequeue")
CALIBRATION_STEPS = 12
OVERRIDABLE = ("batch_size", "lr", "warmup_epochs", "queue_size", "momentum", "temperature", "bn_splits",
               "hidden_dim", "weight_decay")


def exercise_functions() -> dict:
    """The keyword arguments ``recipes.moco.run`` takes for the graded functions, from the solutions."""
    found = solution_functions("07_moco", EXERCISES)
    return {"moco_step": found["moco_step"], "infonce": found["moco_infonce"],
            "update": found["momentum_update"], "enqueue": found["enqueue_dequeue"]}


def load_data(spec: str, train_images: int | None, test_images: int | None):
    if spec == "embedded":
        return embedded_digits().subset(train_images, test_images)
    path = Path(spec)
    if not path.exists():
        raise SystemExit(f"bench_moco: expected the CIFAR-10 archive at {path}, found no file. "
                         "Pass --data PATH/cifar10-jpeg.npz (or --data embedded for the offline digits).")
    return load_cifar10_npz(path).subset(train_images, test_images)


def plan_epochs(session: Session, functions: dict, recipe, max_epochs: int, minutes: float | None) -> tuple[int, str]:
    """``max_epochs``, or fewer so that the cosine schedule ends within ``minutes`` of training."""
    if minutes is None:
        return max_epochs, "no time cap"
    data = session.data
    calibration = data.subset(min(len(data.train_y), CALIBRATION_STEPS * recipe.batch_size), 10)
    # Two epochs on a slice, through the real training path: the first warms up (cuDNN autotuning,
    # the allocator), the second is timed.
    _, history = recipe_module.run(session, **functions, data=calibration, recipe=recipe, epochs=2, monitor=False,
                                   live_plot=False, progress=False, desc="calibration")
    seconds_per_step = history.epochs[1]["time"] / (len(history.losses) // 2)
    steps_per_epoch = len(data.train_y) // recipe.batch_size
    affordable = max(1, int(minutes * 60 / (seconds_per_step * steps_per_epoch)))
    note = (f"calibrated {seconds_per_step * 1000:.0f} ms/step × {steps_per_epoch} steps/epoch: "
            f"{affordable} epochs fit {minutes:g} min")
    return min(max_epochs, affordable), note


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="cifar10-jpeg.npz, or 'embedded'")
    parser.add_argument("--minutes", type=float, default=None,
                        help="cap on the training time (default: 7 on cpu, 8 on gpu; 0: no cap)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="at most this many epochs (default: the recipe's on cpu, 200 on gpu)")
    parser.add_argument("--train-images", type=int, default=None, help="default: 10,000 on cpu, all on gpu")
    parser.add_argument("--test-images", type=int, default=None, help="default: 2,000 on cpu, all on gpu")
    parser.add_argument("--device", default=None, help="default: CUDA/MPS if present, else the CPU")
    parser.add_argument("--monitor", action="store_true", help="kNN after every epoch (as the notebook does)")
    parser.add_argument("--seed", type=int, default=0)
    for name in OVERRIDABLE:
        kind = float if name in ("lr", "momentum", "temperature", "weight_decay") else int
        parser.add_argument("--" + name.replace("_", "-"), type=kind)
    add_record_flag(parser)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    budget = make_budget(args.preset, reason="bench_moco")
    overrides = {name: getattr(args, name) for name in OVERRIDABLE if getattr(args, name) is not None}
    recipe = dataclasses.replace(recipe_module.moco_recipe(budget), **overrides)
    minutes = args.minutes if args.minutes is not None else (8.0 if args.preset == "gpu" else 7.0)
    minutes = minutes or None
    # On the GPU the run is bounded by --minutes; 200 epochs is the official demo's length, an upper cap.
    max_epochs = args.epochs or (200 if args.preset == "gpu" else recipe.epochs)
    device = torch.device(args.device) if args.device else choose_device()
    functions = exercise_functions()

    t = time.perf_counter()
    train_n = args.train_images or (10_000 if args.preset == "cpu" else None)
    test_n = args.test_images or (2_000 if args.preset == "cpu" else None)
    data = load_data(args.data, train_n, test_n)
    print(f"data: {data!r} ({data.note}), loaded in {time.perf_counter() - t:.1f}s")
    print(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                 f", {torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"))
    print(f"recipe (sslcourse/recipes/moco.py): backbone {budget.backbone}, {recipe}, max epochs {max_epochs}, "
          f"cap {'none' if minutes is None else f'{minutes:g} min'}")
    seed_everything(args.seed)
    session = Session(budget=budget, device=device, seed=args.seed, data=data)

    t = time.perf_counter()
    random_init = recipe_module.knn_monitor(recipe_module.new_moco(budget, recipe, seed=args.seed).backbone,
                                            data, device)
    print(f"random init: kNN {random_init:.2f}% ({time.perf_counter() - t:.1f}s)")

    epochs, note = plan_epochs(session, functions, recipe, max_epochs, minutes)
    print(f"training: {epochs} epochs ({note})")
    moco, history = recipe_module.run(session, **functions, data=data, recipe=recipe, epochs=epochs,
                                      monitor=args.monitor, live_plot=False, progress=False,
                                      deadline_s=None if minutes is None else 60 * minutes)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = history.training_seconds
    steps = len(history.losses)
    for record in history.epochs:
        print(f"epoch {record['epoch']}: loss {record['loss']:.3f}, pretext acc {record['pretext_acc']:.1f}%"
              + (f", kNN {record['knn']:.2f}%" if "knn" in record else "") + (" (cut at the cap)" if record.get("partial") else ""))
    t = time.perf_counter()
    final = recipe_module.knn_monitor(moco.backbone, data, device)
    steps_per_epoch = len(data.train_y) // recipe.batch_size
    print(f"MoCo: kNN {final:.2f}% after {steps / steps_per_epoch:.1f} epochs ({steps} steps) in {seconds:.0f}s of "
          f"training ({steps * recipe.batch_size / seconds:.0f} images/s); evaluation {time.perf_counter() - t:.1f}s; "
          f"wall {time.perf_counter() - started:.0f}s")
    print(f"| {args.preset} | {device.type} | {data.name} {len(data.train_x):,} / {len(data.test_x):,} | "
          f"{steps / steps_per_epoch:.1f} | {seconds:.0f} s | {random_init:.1f}% | {final:.1f}% | {final - random_init:+.1f} |")
    if args.record_reference:   # the linear probe and label efficiency, as the notebook measures them
        linear, curve = recipe_module.probe(moco.backbone, data, device, budget)
        random_linear, _ = recipe_module.probe(recipe_module.new_moco(budget, recipe, seed=args.seed).backbone, data,
                                               device, budget)
        record_reference_row(args.record_reference, "moco", budget=budget, data=data, device=device, seed=args.seed,
                             knn=final, linear=linear, train_seconds=seconds, history=history, label_efficiency=curve,
                             random_init={"knn": random_init, "linear": random_linear}, script="bench/bench_moco.py",
                             argv=argv)


if __name__ == "__main__":
    main()
