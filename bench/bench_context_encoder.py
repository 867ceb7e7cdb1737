"""Benchmark: context encoders (Pathak et al., 2016) on real CIFAR-10, measured by kNN and linear probes.

    python bench/bench_context_encoder.py --preset cpu               # 10k/2k images, small ConvNet, ~8 min on 2 free cores
    python bench/bench_context_encoder.py --preset cpu --masks       # also the notebook's part 5 (three holes, short runs)
    python bench/bench_context_encoder.py --preset cpu --lambdas 0 0.1 1   # other adversarial weights
    python bench/bench_context_encoder.py --preset gpu --minutes 3   # 50k/10k images, CIFAR ResNet-18

**Same code path as the notebook.** Training and probes are ``sslcourse.recipes.context_encoder``
(``run``, ``probe``, ``hole_mse``, ``discriminator_accuracy``), the functions the notebook's locked
cells call, with every constant in its ``RECIPE`` and ``PROBE`` tables. The exercise functions (the
masks, the masked input, the three losses and the joint step) come from the solution notebook
through ``bench/solutions.py``.

What it prints: the kNN (k=200, T=0.1) and linear probe of the random-init encoder, and of a context
encoder for each λ_adv of ``--lambdas`` (default: 0, the L2-only run, and the recipe's), all with the
recipe's mask and the same budget; per run the error in the hole on 1,000 test images (holes of the
kind it trained on) and how often the run's own discriminator tells its fills from real images. ``--dae-json`` adds 01's saved DAE
probes to the table, for the lecture's comparison.

It never passes or fails on time. ``--minutes N`` caps each run's training with ``fit``'s deadline.
Data: ``--data`` (default ``../shared/data/cifar10-jpeg.npz``); the cpu preset uses
``.subset(10000, 2000)``, the gpu preset all images; ``--data embedded`` uses the offline digits.
On a shared CPU idle OpenMP threads spin and steal time, so ``OMP_WAIT_POLICY=PASSIVE`` is set
before torch starts.
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

from bench.benchutil import DEFAULT_DATA, add_record_flag, load_data, record_reference_row  # noqa: E402
from bench.solutions import solution_functions  # noqa: E402
from sslcourse.budget import make_budget  # noqa: E402
from sslcourse.recipes import context_encoder  # noqa: E402
from sslcourse.session import Session, seed_everything  # noqa: E402

MASKS = {"central": "central_mask", "random blocks": "random_block_mask", "random regions": "random_region_mask"}
LOSSES = ("masked_input", "reconstruction_loss", "discriminator_loss", "generator_loss", "context_encoder_loss")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("cpu", "gpu"), required=True)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="cifar10-jpeg.npz, or 'embedded'")
    parser.add_argument("--minutes", type=float, default=None, help="cap on each run's training time")
    parser.add_argument("--device", default=None, help="default: cpu for --preset cpu, cuda for --preset gpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's RECIPE['epochs']")
    parser.add_argument("--lambdas", type=float, nargs="+", default=None,
                        help="λ_adv of each run (default: 0 and RECIPE['lambda_adv'])")
    parser.add_argument("--masks", action="store_true", help="also the three holes, RECIPE['sweep_epochs'] each")
    parser.add_argument("--dae-json", default=None, help="01's saved run (results/<preset>/01_denoising_autoencoders.json)")
    add_record_flag(parser)
    args = parser.parse_args()

    started = time.perf_counter()
    device = torch.device(args.device or ("cuda" if args.preset == "gpu" else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_context_encoder: the gpu preset needs CUDA and none is available (pass --device cpu).")
    budget = make_budget(args.preset, reason="bench_context_encoder")
    solutions = solution_functions("02_context_encoders", (*MASKS.values(), *LOSSES))
    losses = {name: solutions[name] for name in LOSSES}
    threads = f", {torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu{threads}"
    print(f"bench_context_encoder: preset {budget.name}, device {where}, torch {torch.__version__}")

    t = time.perf_counter()
    data = load_data(args.data, args.preset, "bench_context_encoder")
    print(f"data: {data!r} ({data.note}); loaded in {time.perf_counter() - t:.1f} s")
    R, pick = context_encoder.RECIPE, budget.pick
    epochs = args.epochs or pick(**R["epochs"])
    lambdas = args.lambdas if args.lambdas is not None else [0.0, R["lambda_adv"]]
    print(f"recipe (sslcourse/recipes/context_encoder.py): backbone {budget.backbone}, {R['mask']} holes of "
          f"{R['fraction']:.0%}, λ_rec {R['lambda_rec']}, Adam lr {R['lr']} / discriminator {R['lr_discriminator']}, "
          f"batch {budget.batch_size}, {epochs} epochs, warm-up {R['warmup']:.0%} then cosine")

    seed_everything(args.seed)
    session = Session(budget=budget, device=device, seed=args.seed, data=data)
    t = time.perf_counter()
    random_probe = context_encoder.probe(context_encoder.random_encoder(budget, args.seed), data, device, budget)
    print(f"random init: kNN {random_probe['knn']:.1f}%, linear {random_probe['linear']:.1f}% ({time.perf_counter() - t:.1f} s)")
    rows = {"random init": {**random_probe, "hole mse": float("nan"), "spotted": float("nan"), "train_seconds": 0.0}}
    if args.dae_json:
        dae = json.loads(Path(args.dae_json).read_text())["metrics"]
        rows["01: denoising autoencoder (saved)"] = {"knn": dae["knn"], "linear": dae["linear"], "hole mse": float("nan"),
                                                    "spotted": float("nan"), "train_seconds": dae.get("train_seconds", 0.0)}
    sample = torch.randperm(len(data.test_x), generator=torch.Generator().manual_seed(args.seed))[:1000]
    size = data.test_x.shape[-1]

    def train_and_measure(name, mask_type, lambda_adv, run_epochs, record=False):
        make_mask = solutions[MASKS[mask_type]]
        t = time.perf_counter()
        model, history = context_encoder.run(session, make_mask, **losses, lambda_adv=lambda_adv, epochs=run_epochs,
                                             live_plot=False, progress=False,
                                             deadline_s=None if args.minutes is None else 60 * args.minutes)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = history.training_seconds
        holes = make_mask(len(sample), size, R["fraction"], torch.Generator().manual_seed(args.seed + 1))   # its own kind
        error = context_encoder.hole_mse(model, data.test_x[sample], holes, device, masked_input=losses["masked_input"])
        spotted = context_encoder.discriminator_accuracy(model, data.test_x[sample], holes, device,
                                                         masked_input=losses["masked_input"])
        result = {**context_encoder.probe(model.encoder, data, device, budget), "hole mse": error, "spotted": spotted,
                  "train_seconds": train_seconds}
        per_epoch = ", ".join(f"{e['hole mse']:.4f}/{e['discriminator']:.2f}/{e['generator']:.2f}" for e in history.epochs)
        print(f"{name}: {len(history.losses)} steps in {train_seconds:.0f} s ({time.perf_counter() - t:.0f} s with the "
              f"probes); per epoch hole mse / D loss / G loss: {per_epoch}")
        print(f"{name}: kNN {result['knn']:.1f}%, linear {result['linear']:.1f}%, test hole mse {error:.4f}, "
              f"its discriminator right {spotted:.1f}%")
        if record:
            record_reference_row(args.record_reference, "context_encoder", budget=budget, data=data, device=device,
                                 seed=args.seed, knn=result["knn"], linear=result["linear"], train_seconds=train_seconds,
                                 history=history, encoder=model.encoder, random_init=random_probe,
                                 script="bench/bench_context_encoder.py")
        return result

    for lambda_adv in lambdas:
        name = "L2 only (λ_adv 0)" if lambda_adv == 0 else f"joint (λ_adv {lambda_adv:g})"
        rows[name] = train_and_measure(name, R["mask"], lambda_adv, epochs, record=lambda_adv == R["lambda_adv"])
    if args.masks:
        for mask_type in MASKS:
            rows[f"masks: {mask_type}, {pick(**R['sweep_epochs'])} epochs"] = train_and_measure(
                f"masks: {mask_type}", mask_type, R["lambda_adv"], pick(**R["sweep_epochs"]))

    print(f"\n{'encoder':<40} {'kNN':>6} {'linear':>7} {'hole mse':>9} {'D right':>8} {'train s':>8}")
    for name, row in rows.items():
        print(f"{name:<40} {row['knn']:5.1f}% {row['linear']:6.1f}% {row['hole mse']:9.4f} {row['spotted']:7.1f}% "
              f"{row['train_seconds']:8.0f}")
    joint = [r for n, r in rows.items() if n.startswith("joint")]
    l2 = rows.get("L2 only (λ_adv 0)")
    summary = (f"RESULT preset={budget.name} {R['mask']} {R['fraction']}: kNN(k=200,T=0.1) random init "
               f"{random_probe['knn']:.1f}%, linear {random_probe['linear']:.1f}%")
    if l2:
        summary += f"; L2 only {l2['knn']:.1f}% / {l2['linear']:.1f}%"
    if joint:
        summary += f"; joint {joint[0]['knn']:.1f}% / {joint[0]['linear']:.1f}%"
    print(f"\n{summary} (seed {args.seed}); wall {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
