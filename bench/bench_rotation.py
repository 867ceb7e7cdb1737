"""Benchmark: RotNet (Gidaris, Singh & Komodakis, 2018, ICLR) on real CIFAR-10, measured by kNN and linear probes.

    python bench/bench_rotation.py --preset cpu              # 10k/2k images, small ConvNet, ~5 min on 2 free cores
    python bench/bench_rotation.py --preset gpu --minutes 5  # 50k/10k images, CIFAR ResNet-18, bf16, channels_last

**Same code path as the notebook.** The recipe is not copied here: training and probes are
``sslcourse.recipes.rotation`` (``run``, ``probe_blocks``, ``rotation_accuracy``), the functions the
notebook's locked cells call, with every constant in its ``RECIPE`` and ``PROBE`` tables. The
exercise functions (``rotate_batch``, ``rotnet_loss``, ``block_features``) come from the solution
notebook through ``bench/solutions.py``. Change the recipe and the notebook and this benchmark
follow together.

What it prints: the kNN accuracy (k=200, T=0.1, cosine) of the random-init encoder and of the
RotNet encoder on the pooled last block (the features every method notebook reports), a
probe of every block (kNN and linear), the rotation accuracy on held-out images, and wall times.
It never passes or fails on time.

``--minutes N`` caps the *training* time. A short calibration run, through the same ``fit``,
measures the seconds per step. The number of epochs is then cut (to an even number, which the
8-rotation row needs) so that the cosine schedule ends within the cap. The recipe's own epoch
count is the upper limit. Loading, calibration and the probes come on top: about 1–2 minutes
on the gpu preset.

Data: ``--data`` (default ``../shared/data/cifar10-jpeg.npz``), loaded with
``sslcourse.data.load_cifar10_npz``. The cpu preset uses ``.subset(10000, 2000)``, the gpu preset
all 50,000/10,000 images. ``--data embedded`` uses the course's offline digits instead.

On a shared CPU, idle OpenMP threads spin and steal time from other processes. Small convolutions
then ran 5–30× slower here, so this script sets ``OMP_WAIT_POLICY=PASSIVE`` (unless it is already
set) before torch starts.
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

from bench.benchutil import add_record_flag, record_reference_row  # noqa: E402
from bench.solutions import solution_functions  # noqa: E402
from sslcourse.budget import make_budget  # noqa: E402
from sslcourse.data import embedded_digits, load_cifar10_npz  # noqa: E402
from sslcourse.recipes import rotation  # noqa: E402
from sslcourse.session import Session, seed_everything  # noqa: E402

EXERCISES = ("rotate_batch", "rotnet_loss", "block_features")
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.npz"
SIZES = {"cpu": (10_000, 2_000), "gpu": (None, None)}
CALIBRATION_STEPS = 30


def load_data(spec: str, preset: str):
    train_images, test_images = SIZES[preset]
    if spec == "embedded":
        data = embedded_digits(train_images or 50_000, test_images or 10_000)
        print("bench_rotation: WARNING: embedded digits, not CIFAR-10: the numbers are not comparable.")
        return data
    path = Path(spec)
    if not path.exists():
        raise SystemExit(f"bench_rotation: expected the CIFAR-10 archive at {path}, found no file. "
                         f"Pass --data PATH_TO_NPZ (or --data embedded for the offline digits).")
    return load_cifar10_npz(path).subset(train_images, test_images)


def plan_epochs(session: Session, solutions: dict, minutes: float | None) -> tuple[int, str]:
    """The recipe's epochs, or fewer (even, ≥ 2) so that training fits ``minutes``."""
    angles = rotation.ROTATION_SETS["4 rotations"]
    epochs = rotation.rotnet_epochs(session.budget, angles)
    if minutes is None:
        return epochs, "the recipe's epochs"
    data = session.data
    images_per_step = session.budget.batch_size // len(angles)
    calibration = data.subset(min(len(data.train_y), CALIBRATION_STEPS * images_per_step), 10)
    # Two epochs of the real training path on a slice of the data: the first warms up (cuDNN
    # autotuning, allocator), the second is timed.
    _, history = rotation.run(session, angles, rotate_batch=solutions["rotate_batch"],
                              rotnet_loss=solutions["rotnet_loss"], data=calibration, epochs=2,
                              live_plot=False, progress=False, desc="calibration")
    seconds_per_step = history.epochs[1]["time"] / (len(history.losses) // 2)
    steps_per_epoch = len(data.train_y) // images_per_step
    affordable = int(minutes * 60 / (seconds_per_step * steps_per_epoch))
    affordable = max(2, affordable - affordable % 2)
    note = (f"calibrated {seconds_per_step * 1000:.1f} ms/step × {steps_per_epoch} steps/epoch: "
            f"{affordable} epochs fit {minutes:g} min")
    return min(epochs, affordable), note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("cpu", "gpu"), required=True)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="cifar10-jpeg.npz, or 'embedded'")
    parser.add_argument("--minutes", type=float, default=None, help="cap on the training time")
    parser.add_argument("--device", default=None, help="default: cpu for --preset cpu, cuda for --preset gpu")
    parser.add_argument("--seed", type=int, default=0)
    add_record_flag(parser)
    args = parser.parse_args()

    started = time.perf_counter()
    device = torch.device(args.device or ("cuda" if args.preset == "gpu" else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_rotation: the gpu preset needs CUDA and none is available "
                         "(pass --device cpu to run it on the CPU anyway; it takes hours).")
    budget = make_budget(args.preset, reason="bench_rotation")
    solutions = solution_functions("05_rotation", EXERCISES)
    seed_everything(args.seed)
    threads = f", {torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu{threads}"
    print(f"bench_rotation: preset {budget.name}, device {where}, torch {torch.__version__}")

    t = time.perf_counter()
    data = load_data(args.data, args.preset)
    print(f"data: {data!r} ({data.note}); loaded in {time.perf_counter() - t:.1f} s")
    session = Session(budget=budget, device=device, seed=args.seed, data=data)

    R = rotation.RECIPE
    angles = rotation.ROTATION_SETS["4 rotations"]
    pick = budget.pick
    print(f"recipe (sslcourse/recipes/rotation.py): backbone {budget.backbone}, "
          f"{budget.batch_size} rotated images per step ({budget.batch_size // 4} images × 4 rotations), "
          f"SGD lr {pick(**R['lr'])} momentum {R['momentum']} nesterov {R['nesterov']} wd {R['weight_decay']}, "
          f"warm-up {R['warmup']:.0%} then cosine, flip p={R['flip']}, {pick(**R['epochs'])} epochs")

    t = time.perf_counter()
    random_probe = rotation.probe_blocks(rotation.random_encoder(budget, args.seed), data, device, budget,
                                         block_features=solutions["block_features"])
    print(f"random init probed in {time.perf_counter() - t:.1f} s")

    epochs, note = plan_epochs(session, solutions, args.minutes)
    print(f"training: {epochs} epochs ({note})")
    t = time.perf_counter()
    model, history = rotation.run(session, angles, rotate_batch=solutions["rotate_batch"],
                                  rotnet_loss=solutions["rotnet_loss"], epochs=epochs, live_plot=False, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_seconds = time.perf_counter() - t
    steps = len(history.losses)
    print(f"trained {len(history.epochs)} epochs, {steps} steps in {train_seconds:.1f} s "
          f"({steps / train_seconds:.2f} steps/s, {steps * budget.batch_size / train_seconds:,.0f} rotated images/s); "
          f"final loss {history.epochs[-1]['loss']:.3f}, training rotation acc {100 * history.epochs[-1]['rotation acc']:.1f}%")

    t = time.perf_counter()
    rotnet_probe = rotation.probe_blocks(model.encoder, data, device, budget,
                                         block_features=solutions["block_features"])
    pretext = rotation.rotation_accuracy(model, data, angles, device, rotate_batch=solutions["rotate_batch"])
    print(f"RotNet probed in {time.perf_counter() - t:.1f} s; rotation accuracy on held-out images {pretext:.1f}%")

    print()
    print("block   kNN random   kNN RotNet   linear random   linear RotNet")
    for block in rotnet_probe:
        r, o = random_probe[block], rotnet_probe[block]
        print(f"  {block}      {r['knn']:6.1f}%     {o['knn']:6.1f}%       {r['linear']:6.1f}%        {o['linear']:6.1f}%")
    last = max(rotnet_probe)
    gain = rotnet_probe[last]["knn"] - random_probe[last]["knn"]
    best = max(rotnet_probe, key=lambda b: rotnet_probe[b]["linear"])
    record_reference_row(args.record_reference, "rotation", budget=budget, data=data, device=device, seed=args.seed,
                         knn=rotnet_probe[last]["knn"], linear=rotnet_probe[last]["linear"], train_seconds=train_seconds,
                         history=history, encoder=model.encoder, random_init=random_probe[last],
                         script="bench/bench_rotation.py")
    print()
    print(f"RESULT preset={budget.name} kNN(k=200,T=0.1) random init {random_probe[last]['knn']:.1f}% -> "
          f"RotNet {rotnet_probe[last]['knn']:.1f}% ({gain:+.1f} points, pooled block {last}); "
          f"best linear probe {rotnet_probe[best]['linear']:.1f}% (block {best}); "
          f"training {train_seconds:.0f} s; wall {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
