"""Benchmark: denoising autoencoders (Vincent et al., 2008, 2010) on real CIFAR-10, measured by kNN and linear probes.

    python bench/bench_denoising.py --preset cpu               # 10k/2k images, small ConvNet, ~9 min on 2 free cores
    python bench/bench_denoising.py --preset cpu --seeds 1     # one seed, ~3 min
    python bench/bench_denoising.py --preset cpu --seeds 1 --epochs 12   # longer than the notebook trains
    python bench/bench_denoising.py --preset gpu --minutes 5   # 50k/10k images, CIFAR ResNet-18

**Same code path as the notebook.** Training and probes are ``sslcourse.recipes.denoising``
(``run``, ``probe``, ``corrupted_entry_error``, ``layout_r2``), the functions the notebook's locked
cells call, with every constant in its ``RECIPE`` and ``PROBE`` tables. The exercise functions
(the corruptions, the emphasized losses, ``dae_loss``) come from the solution notebook through
``bench/solutions.py``.

What it prints, for the main run of the recipe (``RECIPE["main"]`` noise, ``RECIPE["loss"]``):

* the kNN (k=200, T=0.1) and linear probe of the random-init encoder and of the DAE's encoder, after
  every epoch (the notebook's monitor) and at the end, for ``--seeds`` seeds, so the gap can be read
  against the run-to-run noise;
* two measurements of *why* the probe moves as it does: the error on the corrupted entries of the
  DAE against a training-free neighbour fill, and how much of a 4×4 thumbnail of each image a linear
  map reads from the features (R²), for the random-init and the trained encoder.

It never passes or fails on time. ``--minutes N`` caps each run's training with ``fit``'s deadline.
Data: ``--data`` (default ``../shared/data/cifar10-jpeg.npz``); the cpu preset uses
``.subset(10000, 2000)``, the gpu preset all images; ``--data embedded`` uses the offline digits.
On a shared CPU idle OpenMP threads spin and steal time, so ``OMP_WAIT_POLICY=PASSIVE`` is set
before torch starts.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the first import of torch

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.benchutil import DEFAULT_DATA, add_record_flag, load_data, record_reference_row  # noqa: E402
from bench.solutions import solution_functions  # noqa: E402
from sslcourse.budget import make_budget  # noqa: E402
from sslcourse.recipes import denoising  # noqa: E402
from sslcourse.session import Session, seed_everything  # noqa: E402

EXERCISES = ("gaussian_noise", "masking_noise", "salt_and_pepper", "emphasized_mse", "emphasized_cross_entropy",
             "dae_loss")
NOISE = {"gaussian": "gaussian_noise", "masking": "masking_noise", "salt-and-pepper": "salt_and_pepper"}
LOSS = {"mse": "emphasized_mse", "cross-entropy": "emphasized_cross_entropy"}


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return "one seed: no spread"
    return f"mean {statistics.mean(values):.1f}, range {max(values) - min(values):.1f} over {len(values)} seeds"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("cpu", "gpu"), required=True)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="cifar10-jpeg.npz, or 'embedded'")
    parser.add_argument("--minutes", type=float, default=None, help="cap on each run's training time")
    parser.add_argument("--device", default=None, help="default: cpu for --preset cpu, cuda for --preset gpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=2, help="main runs with seeds seed, seed+1, ...")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's RECIPE['epochs']")
    add_record_flag(parser)
    args = parser.parse_args()

    started = time.perf_counter()
    device = torch.device(args.device or ("cuda" if args.preset == "gpu" else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_denoising: the gpu preset needs CUDA and none is available (pass --device cpu).")
    budget = make_budget(args.preset, reason="bench_denoising")
    solutions = solution_functions("01_denoising_autoencoders", EXERCISES)
    threads = f", {torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu{threads}"
    print(f"bench_denoising: preset {budget.name}, device {where}, torch {torch.__version__}")

    t = time.perf_counter()
    data = load_data(args.data, args.preset, "bench_denoising")
    print(f"data: {data!r} ({data.note}); loaded in {time.perf_counter() - t:.1f} s")
    R, pick = denoising.RECIPE, budget.pick
    noise_type, level = R["main"]
    loss_kind = R["loss"]
    noise, loss = solutions[NOISE[noise_type]], solutions[LOSS[loss_kind]]
    print(f"recipe (sslcourse/recipes/denoising.py): backbone {budget.backbone}, {noise_type} noise at {level}, "
          f"emphasized {loss_kind} (alpha {R['alpha']}, beta {R['beta']}), Adam lr {pick(**R['lr'])}, "
          f"batch {budget.batch_size}, {args.epochs or pick(**R['epochs'])} epochs, warm-up {R['warmup']:.0%} then cosine")

    runs = []
    for seed in range(args.seed, args.seed + args.seeds):
        seed_everything(seed)
        session = Session(budget=budget, device=device, seed=seed, data=data)
        t = time.perf_counter()
        random_init = denoising.random_encoder(budget, seed)
        random_probe = denoising.probe(random_init, data, device, budget)
        random_layout = denoising.layout_r2(random_init, data, device)
        print(f"\nseed {seed}: random init kNN {random_probe['knn']:.1f}%, linear {random_probe['linear']:.1f}%, "
              f"layout R² {random_layout:.3f} ({time.perf_counter() - t:.1f} s)")
        t = time.perf_counter()
        model, history = denoising.run(session, noise, level, loss=loss, dae_loss=solutions["dae_loss"], monitor=True,
                                       epochs=args.epochs, live_plot=False, progress=False,
                                       deadline_s=None if args.minutes is None else 60 * args.minutes)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - t
        train_seconds = sum(e["time"] for e in history.epochs)
        print("epoch   pixel mse    kNN    linear")
        for record in history.epochs:
            print(f"{record['epoch']:5d}   {record['pixel mse']:9.4f}   {record['knn']:5.1f}%  {record['linear']:5.1f}%")
        final = history.epochs[-1]
        corrupt = denoising.corruption(noise, level, torch.Generator(device=device).manual_seed(seed + 7))
        errors = denoising.corrupted_entry_error(model, data.test_x[:1000], corrupt, device,
                                                 dae_loss=solutions["dae_loss"], loss=loss)
        layout = denoising.layout_r2(model.encoder, data, device)
        print(f"seed {seed}: trained {len(history.losses)} steps in {train_seconds:.0f} s ({wall:.0f} s with the "
              f"monitor); DAE kNN {final['knn']:.1f}%, linear {final['linear']:.1f}%, layout R² {layout:.3f}")
        print(f"seed {seed}: error on the corrupted entries of 1,000 test images: DAE {errors['dae']:.4f}, "
              f"neighbour fill {errors['neighbour fill']:.4f}, grey {errors['grey']:.4f}")
        runs.append({"random": random_probe, "dae": {"knn": final["knn"], "linear": final["linear"]},
                     "best_linear": max(e["linear"] for e in history.epochs), "layout": layout,
                     "random_layout": random_layout, "errors": errors, "train_seconds": train_seconds})
        record_reference_row(args.record_reference, "denoising", budget=budget, data=data, device=device, seed=seed,
                             knn=final["knn"], linear=final["linear"], train_seconds=train_seconds, history=history,
                             encoder=model.encoder, random_init=random_probe, script="bench/bench_denoising.py")

    print()
    for metric in ("knn", "linear"):
        gaps = [r["dae"][metric] - r["random"][metric] for r in runs]
        print(f"{metric:>6}: random init {spread([r['random'][metric] for r in runs])}; "
              f"DAE {spread([r['dae'][metric] for r in runs])}; gap per seed " + ", ".join(f"{g:+.1f}" for g in gaps))
    first = runs[0]
    print(f"\nRESULT preset={budget.name} {noise_type} {level} {loss_kind}: kNN(k=200,T=0.1) random init "
          f"{first['random']['knn']:.1f}% -> DAE {first['dae']['knn']:.1f}%; linear probe random init "
          f"{first['random']['linear']:.1f}% -> DAE {first['dae']['linear']:.1f}% (seed {args.seed}); "
          f"layout R² {first['random_layout']:.3f} -> {first['layout']:.3f}; corrupted-entry mse DAE "
          f"{first['errors']['dae']:.4f} vs neighbour fill {first['errors']['neighbour fill']:.4f}; "
          f"training {first['train_seconds']:.0f} s per run; wall {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
