"""Benchmark: the split-brain autoencoder (Zhang et al., 2017) on real CIFAR-10, measured by kNN and linear probes.

    python bench/bench_split_brain.py --preset cpu               # 10k/2k images, half-width ConvNets, ~5 min on 2 free cores
    python bench/bench_split_brain.py --preset cpu --seed 1      # a second seed: the run-to-run noise
    python bench/bench_split_brain.py --preset gpu --minutes 4   # 50k/10k images, half-width CIFAR ResNet-18s

**Same code path as the notebook.** Training and probes are ``sslcourse.recipes.split_brain`` (``run``,
``probe``, ``colorize``, ``chroma``), the functions the notebook's locked cells call, with every constant in
its ``RECIPE`` and ``PROBE`` tables. The exercise functions (the colour conversions, the views, the loss,
the split-brain loss and features) come from the solution notebook through ``bench/solutions.py``.

What it prints: the kNN (k=200, T=0.1) and linear probe of the L→ab half, the ab→L half and their
concatenation, untrained and trained with the same seed; ``--earlier DIR`` adds the saved runs of 01, 02,
05 and 07 found in that results folder (e.g. ``results/cpu``). Also the mean chroma of the true and the
colorized test images (the desaturation of the L2 loss), and the training time.

It never passes or fails on time. ``--minutes N`` caps training with ``fit``'s deadline. Data: ``--data``
(default ``../shared/data/cifar10-jpeg.npz``); ``--data embedded`` uses the offline digits. On a shared CPU
idle OpenMP threads spin and steal time, so ``OMP_WAIT_POLICY=PASSIVE`` is set before torch starts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the first import of torch

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.benchutil import DEFAULT_DATA, add_record_flag, load_data, machine_name, record_reference_row  # noqa: E402
from bench.solutions import solution_functions  # noqa: E402
from sslcourse import cpu_bf16  # noqa: E402
from sslcourse.budget import make_budget  # noqa: E402
from sslcourse.recipes import split_brain  # noqa: E402
from sslcourse.session import Session, seed_everything  # noqa: E402

EXERCISES = ("rgb_to_lab", "lab_to_rgb", "split_views", "regression_loss", "split_brain_loss", "split_brain_features")
EARLIER = {"01_denoising_autoencoders": "01: denoising autoencoder", "02_context_encoders": "02: context encoder",
           "05_rotation": "05: rotation", "07_moco": "07: MoCo"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("cpu", "gpu"), required=True)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="cifar10-jpeg.npz, or 'embedded'")
    parser.add_argument("--minutes", type=float, default=None, help="cap on the training time")
    parser.add_argument("--device", default=None, help="default: cpu for --preset cpu, cuda for --preset gpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's RECIPE['epochs']")
    parser.add_argument("--earlier", default=None, help="a results folder with the saved runs of 01, 02, 05, 07")
    add_record_flag(parser)
    args = parser.parse_args()

    started = time.perf_counter()
    device = torch.device(args.device or ("cuda" if args.preset == "gpu" else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_split_brain: the gpu preset needs CUDA and none is available (pass --device cpu).")
    budget = make_budget(args.preset, reason="bench_split_brain")
    solutions = solution_functions("03_view_prediction", EXERCISES)
    print(f"bench_split_brain: preset {budget.name}, {machine_name(device)}, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY')}, torch {torch.__version__}")

    t = time.perf_counter()
    data = load_data(args.data, args.preset, "bench_split_brain")
    print(f"data: {data!r} ({data.note}); loaded in {time.perf_counter() - t:.1f} s")
    R = split_brain.RECIPE
    epochs = args.epochs or budget.pick(**R["epochs"])
    print(f"recipe (sslcourse/recipes/split_brain.py): half-width {budget.backbone} halves, Adam lr {R['lr']}, "
          f"batch {budget.batch_size}, {epochs} epochs, warm-up {R['warmup']:.0%} then cosine")
    features = {name: solutions[name] for name in ("rgb_to_lab", "split_views", "split_brain_features")}

    def probes(model):
        return {part: split_brain.probe(model, part, data, device, budget, **features) for part in split_brain.PARTS}

    seed_everything(args.seed)
    session = Session(budget=budget, device=device, seed=args.seed, data=data)
    t = time.perf_counter()
    rows = {f"random init, {part}": row
            for part, row in probes(split_brain.new_split_brain(budget, data.train_x.shape[-1], args.seed)).items()}
    print(f"random-init probes in {time.perf_counter() - t:.0f} s")
    if args.earlier:
        for name, label in EARLIER.items():
            path = Path(args.earlier) / f"{name}.json"
            if path.exists():
                metrics = json.loads(path.read_text())["metrics"]
                rows[f"{label} (saved)"] = {"knn": metrics["knn"], "linear": metrics["linear"]}

    t = time.perf_counter()
    model, history = split_brain.run(session, **{n: solutions[n] for n in ("rgb_to_lab", "split_views", "regression_loss",
                                                                       "split_brain_loss")},
                                     epochs=epochs, live_plot=False, progress=False,
                                     deadline_s=None if args.minutes is None else 60 * args.minutes)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    else:
        print(cpu_bf16.describe())
    per_epoch = ", ".join(f"{e['L→ab']:.1f}/{e['ab→L']:.1f}" for e in history.epochs)
    print(f"training: {len(history.losses)} steps in {history.training_seconds:.0f} s; per epoch L→ab / ab→L loss: {per_epoch}")
    t = time.perf_counter()
    rows.update({f"split-brain, {part}": row for part, row in probes(model).items()})
    print(f"trained probes in {time.perf_counter() - t:.0f} s")
    test = split_brain.colorize(model, data.test_x[:1000], device, rgb_to_lab=solutions["rgb_to_lab"],
                                lab_to_rgb=solutions["lab_to_rgb"], split_views=solutions["split_views"])
    truth, colorized = split_brain.chroma(test["lab"]), split_brain.chroma(test["lab_colorized"])

    print(f"\n{'encoder':<40} {'kNN':>6} {'linear':>7}")
    for name, row in rows.items():
        print(f"{name:<40} {row['knn']:5.1f}% {row['linear']:6.1f}%")
    print(f"mean chroma of 1,000 test images: truth {truth:.1f}, colorized {colorized:.1f} ({colorized / truth:.0%})")
    both = rows["split-brain, concatenation"]
    record_reference_row(args.record_reference, "split_brain", budget=budget, data=data, device=device, seed=args.seed,
                         knn=both["knn"], linear=both["linear"], train_seconds=history.training_seconds, history=history,
                         encoder=split_brain.ViewFeatures(model, "concatenation", mean=data.mean, std=data.std, **features),
                         random_init=rows["random init, concatenation"], script="bench/bench_split_brain.py")
    print(f"\nRESULT preset={budget.name} seed={args.seed}: kNN(k=200,T=0.1) / linear: "
          + "; ".join(f"{name} {row['knn']:.1f}% / {row['linear']:.1f}%" for name, row in rows.items()
                      if not name.endswith("(saved)"))
          + f"; concatenation beats both halves on linear: "
          f"{both['linear'] > max(rows['split-brain, L→ab half']['linear'], rows['split-brain, ab→L half']['linear'])}"
          f"; training {history.training_seconds:.0f} s; wall {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
