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
