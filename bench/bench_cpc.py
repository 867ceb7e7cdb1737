"""Benchmark: Contrastive Predictive Coding (van den Oord et al., 2018) on the synthetic speech set, the shape of
its Tables 1 and 2, and CPC on image patches of real CIFAR-10, probed like every method of the course.

    python bench/bench_cpc.py --preset cpu               # the notebook's cpu preset, ~25 min on 2 free cores
    python bench/bench_cpc.py --preset cpu --seed 1      # a second seed: the run-to-run noise
    python bench/bench_cpc.py --preset gpu --minutes 1   # the gpu preset, each training capped at 1 min
    python bench/bench_cpc.py --preset cpu --only-ablations --no-images   # Table 2 alone, with its own wall time

**Same code path as the notebook.** Training and probes are ``sslcourse.recipes.cpc`` (``run``, ``run_supervised``,
``held_out_steps``, ``probe_sequences``, ``run_images``, ``probe_images``), the functions the notebook's locked cells
call, with every constant in its ``RECIPE`` and ``PROBE`` tables. The exercise functions (the encoder-and-context pass,
the scores, InfoNCE, the negatives) come from the solution notebook through ``bench/solutions.py``.

What it prints: Table 1 (linear probes of the speaker and the phone for random init, the log-spectrogram, CPC and a
supervised encoder), Table 2 (the phone probe against the number of steps predicted, and against the source of the
negatives), the held-out prediction accuracy per step, and the image encoder's kNN (k=200, T=0.1) and linear probe
against random init. It never passes or fails on time. ``--minutes N`` caps each training run with ``fit``'s deadline.
Images: ``--data`` (default ``../shared/data/cifar10-jpeg.npz``); ``--data embedded`` uses the offline digits;
``--no-images`` skips them. On a shared CPU idle OpenMP threads spin and steal time, so ``OMP_WAIT_POLICY=PASSIVE`` is
set before torch starts.
"""
from __future__ import annotations

import argparse
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
from sslcourse.recipes import cpc  # noqa: E402
from sslcourse.session import Session, seed_everything  # noqa: E402

EXERCISES = ("encode_and_context", "step_scores", "info_nce", "sample_negatives")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("cpu", "gpu"), required=True)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="cifar10-jpeg.npz, or 'embedded' (for the image part)")
    parser.add_argument("--minutes", type=float, default=None, help="cap on each training run's time")
    parser.add_argument("--device", default=None, help="default: cpu for --preset cpu, cuda for --preset gpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's RECIPE['epochs']")
    parser.add_argument("--no-ablations", action="store_true", help="only the main run and Table 1")
    parser.add_argument("--only-ablations", action="store_true", help="only Table 2 (no main run, no Table 1)")
    parser.add_argument("--no-images", action="store_true")
    add_record_flag(parser)
    args = parser.parse_args(argv)
    if args.no_ablations and args.only_ablations:
        parser.error("--no-ablations and --only-ablations exclude each other")

    started = time.perf_counter()
    device = torch.device(args.device or ("cuda" if args.preset == "gpu" else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_cpc: the gpu preset needs CUDA and none is available (pass --device cpu).")
    budget = make_budget(args.preset, reason="bench_cpc")
    fns = solution_functions("06_cpc", EXERCISES)
    print(f"bench_cpc: preset {budget.name}, {machine_name(device)}, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY')}, torch {torch.__version__}")
    R = cpc.RECIPE
    generated = time.perf_counter()
    speech = cpc.speech_data(budget, seed=args.seed)
    print(f"speech: {speech.description} (generated in {time.perf_counter() - generated:.1f} s)")
    images = None if args.no_images else load_data(args.data, args.preset, "bench_cpc")
    deadline = None if args.minutes is None else 60 * args.minutes
    quiet = {"live_plot": False, "progress": False, "deadline_s": deadline}

    seed_everything(args.seed)
    session = Session(budget=budget, device=device, seed=args.seed, data=images)

    def probe(model):
        features = {split: cpc.frame_features(model, getattr(speech, f"{split}_x"), device,
                                              encode_and_context=fns["encode_and_context"]) for split in ("train", "test")}
        return cpc.probe_sequences(features["train"], features["test"], speech, budget)

    def train(**kwargs):
        kwargs.setdefault("epochs", args.epochs)
        model, history = cpc.run(session, speech, **fns, **quiet, **kwargs)
        last = history.epochs[-1]
        name = ", ".join(f"{key}={value}" for key, value in kwargs.items() if key not in ("epochs", "negatives")) or "main"
        print(f"  CPC {name}: {len(history.losses)} steps in {history.training_seconds:.0f} s, last epoch "
              f"loss {last['loss']:.3f}, acc k=1 {last['acc k=1']:.3f}, mean acc {last['acc']:.3f}", flush=True)
        return model, history

    table1, per_step = {}, None
    if not args.only_ablations:
        main_model, main_history = train()
        per_step = cpc.held_out_steps(main_model, speech, device, budget, **fns)
        supervised, supervised_history = cpc.run_supervised(session, speech, encode_and_context=fns["encode_and_context"],
                                                            **quiet)
        print(f"  supervised: {supervised_history.training_seconds:.0f} s, last epoch phone acc "
              f"{supervised_history.epochs[-1]['phone acc']:.3f}, speaker acc "
              f"{supervised_history.epochs[-1]['speaker acc']:.3f}")
        table1 = {"random init": probe(cpc.new_cpc(budget, args.seed)),
                  "spectrogram": cpc.probe_sequences(cpc.spectrogram_features(speech.train_x),
                                                     cpc.spectrogram_features(speech.test_x), speech, budget),
                  "CPC": probe(main_model), "supervised": probe(supervised)}
    steps, negatives, table2_seconds = {}, {}, None
    if not args.no_ablations:   # every run of Table 2 at the ablation budget, the recipe's K and mode included
        table2_started = time.perf_counter()
        ablation = {"epochs": budget.pick(**R["ablation_epochs"]), "negatives": budget.pick(**R["ablation_negatives"])}
        for k in budget.pick(**R["step_ablation"]):
            steps[k] = probe(train(steps_ahead=k, **ablation)[0])
        for mode in cpc.NEGATIVE_MODES:
            negatives[mode] = steps[R["steps_ahead"]] if mode == R["negative_mode"] and R["steps_ahead"] in steps \
                else probe(train(mode=mode, **ablation)[0])
        table2_seconds = time.perf_counter() - table2_started
    image_rows = {}
    if images is not None:
        print(f"images: {images!r} ({images.note})")
        image_rows["random init (64-px probe)"] = cpc.probe_images(cpc.random_image_encoder(budget, args.seed), images,
                                                                   device, budget)
        image_model, image_history = cpc.run_images(session, **{k: fns[k] for k in EXERCISES[1:]}, **quiet)
        image_rows["CPC on 4x4 patches"] = {**cpc.probe_images(image_model.encoder, images, device, budget),
                                            "seconds": image_history.training_seconds,
                                            "row+1 acc": image_history.epochs[-1]["acc row+1"]}
        record_reference_row(args.record_reference, "cpc", budget=budget, data=images, device=device, seed=args.seed,
                             knn=image_rows["CPC on 4x4 patches"]["knn"], linear=image_rows["CPC on 4x4 patches"]["linear"],
                             train_seconds=image_history.training_seconds, history=image_history,
                             encoder=image_model.encoder, features=cpc.upsampled_features,
                             random_init=image_rows["random init (64-px probe)"], script="bench/bench_cpc.py", argv=argv)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    else:
        print(cpu_bf16.describe())

    print(f"\n{speech.num_phones} phones, {speech.num_speakers} speakers; chance {100 / speech.num_phones:.1f}% "
          f"and {100 / speech.num_speakers:.1f}%")
    if table1:
        print(f"Table 1\n{'features':<14} {'phone':>7} {'speaker':>8}")
        for name, row in table1.items():
            print(f"{name:<14} {row['phone']:6.1f}% {row['speaker']:7.1f}%")
        print(f"main run: {main_history.training_seconds:.0f} s; held-out accuracy per step k: "
              + ", ".join(f"{100 * a:.1f}" for a in per_step["accuracy"]) + f" (chance {100 / per_step['candidates']:.1f}%)")
    if steps:
        print(f"\nTable 2 ({ablation['epochs']} epochs, {ablation['negatives']} negatives per run; wall {table2_seconds:.0f} s), "
              "steps predicted: " + "; ".join(f"K={k}: phone {r['phone']:.1f}%, speaker {r['speaker']:.1f}%"
                                                      for k, r in steps.items()))
        print("Table 2, negatives: " + "; ".join(f"{m}: phone {r['phone']:.1f}%, speaker {r['speaker']:.1f}%"
                                                 for m, r in negatives.items()))
    for name, row in image_rows.items():
        extra = f", {row['seconds']:.0f} s, row+1 acc {row['row+1 acc']:.3f}" if "seconds" in row else ""
        print(f"images, {name}: kNN {row['knn']:.1f}%, linear {row['linear']:.1f}%{extra}")
    print(f"\nRESULT preset={budget.name} seed={args.seed}: phone/speaker " +
          "; ".join(f"{n} {r['phone']:.1f}/{r['speaker']:.1f}" for n, r in table1.items()) +
          "".join(f"; images {n} {r['knn']:.1f}/{r['linear']:.1f}" for n, r in image_rows.items()) +
          f"; wall {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
