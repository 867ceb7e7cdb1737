"""Benchmark: relative patch position (Doersch et al., 2015) and jigsaw puzzles (Noroozi & Favaro, 2016) on real
CIFAR-10, with and without the shortcut fixes, measured by pretext accuracy, kNN and linear probes.

    python bench/bench_patch_position.py --preset cpu               # 10k/2k images, the small ConvNet, ~8 min on 2 free cores
    python bench/bench_patch_position.py --preset cpu --seed 1      # a second seed: the run-to-run noise
    python bench/bench_patch_position.py --preset gpu --minutes 2   # 50k/10k images, the CIFAR ResNet-18, 2 min per run

**Same code path as the notebook.** Training and probes are ``sslcourse.recipes.patch_position``
(``run_relative_position``, ``run_jigsaw``, ``probe``, the pretext accuracies), the functions the notebook's locked
cells call, with every constant in its ``RECIPE``, ``SETTINGS`` and ``PROBE`` tables. The exercise functions (the grid,
the pairs, the pair logits, the Hamming set, the shuffle) come from the solution notebook through ``bench/solutions.py``.

What it prints: for random init, each relative-position setting (every fix; no colour dropping; no gap, no jitter and
no colour dropping: the shortcut) and the jigsaw, the held-out pretext accuracy, the kNN (k=200, T=0.1) and the linear
probe, and the training time; ``--earlier DIR`` adds the saved runs of 01, 02, 03, 05 and 07 in that results folder.

It never passes or fails on time. ``--minutes N`` caps each training run with ``fit``'s deadline. Data: ``--data``
(default ``../shared/data/cifar10-jpeg.npz``); ``--data embedded`` uses the offline digits. On a shared CPU idle
OpenMP threads spin and steal time, so ``OMP_WAIT_POLICY=PASSIVE`` is set before torch starts.
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
from sslcourse.recipes import patch_position  # noqa: E402
from sslcourse.session import Session, seed_everything  # noqa: E402

EXERCISES = ("grid_patches", "sample_pairs", "pair_logits", "hamming_permutations", "shuffle_tiles")
EARLIER = {"01_denoising_autoencoders": "01: denoising autoencoder", "02_context_encoders": "02: context encoder",
           "03_view_prediction": "03: split-brain", "05_rotation": "05: rotation", "07_moco": "07: MoCo"}


def record(args, method, row, history, model, rows, budget, data, device, argv) -> None:
    """``--record-reference``: the run's row for 08_summary's reference file, probed at 64 px as the notebook does."""
    record_reference_row(args.record_reference, method, budget=budget, data=data, device=device, seed=args.seed,
                         knn=row["knn"], linear=row["linear"], train_seconds=history.training_seconds, history=history,
                         encoder=model.encoder, features=patch_position.upsampled_features,
                         random_init=rows["random init"], script="bench/bench_patch_position.py", argv=argv)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("cpu", "gpu"), required=True)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="cifar10-jpeg.npz, or 'embedded'")
    parser.add_argument("--minutes", type=float, default=None, help="cap on each training run's time")
    parser.add_argument("--device", default=None, help="default: cpu for --preset cpu, cuda for --preset gpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's RECIPE['epochs']")
    parser.add_argument("--jigsaw-epochs", type=int, default=None, help="default: RECIPE['jigsaw_epochs']")
    parser.add_argument("--settings", default="all", help="'all', or comma-separated SETTINGS numbers (0, 1, 2)")
    parser.add_argument("--no-jigsaw", action="store_true")
    parser.add_argument("--earlier", default=None, help="a results folder with the saved runs of 01, 02, 03, 05, 07")
    add_record_flag(parser)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    device = torch.device(args.device or ("cuda" if args.preset == "gpu" else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_patch_position: the gpu preset needs CUDA and none is available (pass --device cpu).")
    budget = make_budget(args.preset, reason="bench_patch_position")
    solutions = solution_functions("04_patch_position", EXERCISES)
    print(f"bench_patch_position: preset {budget.name}, {machine_name(device)}, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY')}, torch {torch.__version__}")
    data = load_data(args.data, args.preset, "bench_patch_position")
    print(f"data: {data!r} ({data.note})")
    R = patch_position.RECIPE
    epochs = args.epochs or budget.pick(**R["epochs"])
    jigsaw_epochs = args.jigsaw_epochs or budget.pick(**R["jigsaw_epochs"])
    print(f"recipe (sslcourse/recipes/patch_position.py): {budget.backbone} on {patch_position.GEOMETRY['patch']}-px patches "
          f"of {R['image_size']}-px images, Adam lr {R['lr']}, batch {budget.batch_size}, {epochs} epochs per "
          f"relative-position run, {jigsaw_epochs} jigsaw epochs")
    pair = {name: solutions[name] for name in ("grid_patches", "sample_pairs", "pair_logits")}
    deadline = None if args.minutes is None else 60 * args.minutes

    seed_everything(args.seed)
    session = Session(budget=budget, device=device, seed=args.seed, data=data)
    rows = {"random init": {**patch_position.probe(patch_position.random_encoder(budget, args.seed), data, device, budget),
                            "pretext": None, "seconds": 0.0}}
    if args.earlier:
        for name, label in EARLIER.items():
            path = Path(args.earlier) / f"{name}.json"
            if path.exists():
                metrics = json.loads(path.read_text())["metrics"]
                rows[f"{label} (saved)"] = {"knn": metrics["knn"], "linear": metrics["linear"], "pretext": None, "seconds": None}
    names = list(patch_position.SETTINGS)
    chosen = names if args.settings == "all" else [names[int(i)] for i in args.settings.split(",")]
    for name in chosen:
        setting = patch_position.SETTINGS[name]
        model, history = patch_position.run_relative_position(session, setting, **pair, epochs=epochs, live_plot=False,
                                                              progress=False, deadline_s=deadline)
        pretext = patch_position.relative_position_accuracy(model, data, setting, device, **pair)
        rows[f"relative position: {name}"] = {**patch_position.probe(model.encoder, data, device, budget),
                                              "pretext": pretext, "seconds": history.training_seconds}
        print(f"{name}: {len(history.losses)} steps in {history.training_seconds:.0f} s; per-epoch position acc "
              + ", ".join(f"{e['position acc']:.1f}%" for e in history.epochs), flush=True)
        if name == "gap + jitter, full colour":   # the notebook's headline run, the one it saves for 08
            record(args, "relative_position", rows[f"relative position: {name}"], history, model, rows, budget, data,
                   device, argv)
    if not args.no_jigsaw:
        candidates = patch_position.candidate_permutations(R["candidates"], seed=args.seed)
        permutations = solutions["hamming_permutations"](candidates, budget.pick(**R["permutations"]))
        d = (permutations[:, None] != permutations[None]).sum(-1) + 9 * torch.eye(len(permutations), dtype=torch.long)
        model, history = patch_position.run_jigsaw(session, permutations, grid_patches=solutions["grid_patches"],
                                                   shuffle_tiles=solutions["shuffle_tiles"], epochs=jigsaw_epochs,
                                                   live_plot=False, progress=False, deadline_s=deadline)
        pretext = patch_position.jigsaw_accuracy(model, data, permutations, device, grid_patches=solutions["grid_patches"],
                                                 shuffle_tiles=solutions["shuffle_tiles"])
        rows[f"jigsaw, {len(permutations)} permutations (min Hamming {int(d.min())})"] = {
            **patch_position.probe(model.encoder, data, device, budget), "pretext": pretext,
            "seconds": history.training_seconds}
        print(f"jigsaw: {len(history.losses)} steps in {history.training_seconds:.0f} s; per-epoch jigsaw acc "
              + ", ".join(f"{e['jigsaw acc']:.1f}%" for e in history.epochs), flush=True)
        record(args, "jigsaw", list(rows.values())[-1], history, model, rows, budget, data, device, argv)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    else:
        print(cpu_bf16.describe())

    print(f"\n{'encoder':<72} {'pretext':>8} {'kNN':>6} {'linear':>7} {'train s':>8}")
    for name, row in rows.items():
        pretext = "—" if row["pretext"] is None else f"{row['pretext']:.1f}%"
        seconds = "—" if row["seconds"] is None else f"{row['seconds']:.0f}"
        print(f"{name:<72} {pretext:>8} {row['knn']:5.1f}% {row['linear']:6.1f}% {seconds:>8}")
    summary = []
    for name, row in rows.items():
        if not name.endswith("(saved)"):
            pretext = "" if row["pretext"] is None else f"{row['pretext']:.1f}% / "
            summary.append(f"{name} {pretext}{row['knn']:.1f}% / {row['linear']:.1f}%")
    print(f"\nRESULT preset={budget.name} seed={args.seed}: pretext / kNN(k=200,T=0.1) / linear: " + "; ".join(summary)
          + f"; wall {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
