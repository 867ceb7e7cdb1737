"""What every benchmark prints about the machine it ran on, and the method benchmarks' data."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.npz"
SIZES = {"cpu": (10_000, 2_000), "gpu": (None, None)}   # (train, test) images per preset; None: all of them


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {os.cpu_count()} CPU cores"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads"


def load_data(spec: str, preset: str, script: str):
    """The method benchmarks' dataset: ``spec`` is a cifar10-jpeg.npz path or ``"embedded"``; the cpu preset
    takes ``.subset(10000, 2000)``, the gpu preset all images. ``script`` names the caller in messages."""
    from sslcourse.data import embedded_digits, load_cifar10_npz

    train_images, test_images = SIZES[preset]
    if spec == "embedded":
        print(f"{script}: WARNING: embedded digits, not CIFAR-10: the numbers are not comparable.")
        return embedded_digits(train_images or 50_000, test_images or 10_000)
    path = Path(spec)
    if not path.exists():
        raise SystemExit(f"{script}: expected the CIFAR-10 archive at {path}, found no file. "
                         f"Pass --data PATH_TO_NPZ (or --data embedded for the offline digits).")
    return load_cifar10_npz(path).subset(train_images, test_images)


def add_record_flag(parser) -> None:
    """``--record-reference [PATH]``: write the run's row into 08_summary's reference file (default: the
    package's ``sslcourse/reference_runs.json``; a PATH collects rows elsewhere, e.g. on a lent GPU machine,
    to merge later with ``python -m sslcourse.reference merge PATH``)."""
    from sslcourse.reference import REFERENCE_FILE

    parser.add_argument("--record-reference", nargs="?", const=str(REFERENCE_FILE), default=None, metavar="PATH",
                        help="record this run as a reference row of 08_summary (default file: %(const)s)")


def record_reference_row(path: str | None, method: str, *, budget, data, device, seed: int, knn: float,
                         linear: float, train_seconds: float | None, script: str, history=None, encoder=None,
                         features=None, label_efficiency=None, random_init=None, note: str | None = None,
                         argv: list[str] | None = None) -> None:
    """Record one reference row when ``path`` (the ``--record-reference`` value) is set; do nothing otherwise.

    The label-efficiency curve is measured here from ``encoder`` (fed through ``features(encoder, x)`` when
    given, as its notebook probes it) unless ``label_efficiency`` is passed. ``history`` gives the per-epoch
    curve. The row's source is this script's command line (``argv``, default ``sys.argv[1:]``); its device is
    :func:`machine_name`.
    """
    if not path:
        return
    import shlex
    import sys

    from sslcourse import evaluate
    from sslcourse.reference import make_row, record_reference

    device = torch.device(device)
    if label_efficiency is None and encoder is not None:
        train_f = evaluate.extract_features(encoder, data.train_x, mean=data.mean, std=data.std, device=device,
                                            features=features)
        test_f = evaluate.extract_features(encoder, data.test_x, mean=data.mean, std=data.std, device=device,
                                           features=features)
        label_efficiency = evaluate.label_efficiency(train_f, data.train_y, test_f, data.test_y,
                                                     iterations=budget.pick(smoke=10, cpu=100, gpu=100))
    command = "python " + " ".join(shlex.quote(a) for a in [script, *(sys.argv[1:] if argv is None else argv)])
    row = make_row(method, preset=budget.name, dataset=data.name, device=machine_name(device), seed=seed,
                   source=command, script=script, minutes=None if train_seconds is None else train_seconds / 60,
                   knn=knn, linear=linear, label_efficiency=label_efficiency, random_init=random_init,
                   history=history, note=note)
    written = record_reference(row, path)
    print(f"recorded the reference row {method} / {budget.name} / {data.name} / seed {seed} in {written}")
