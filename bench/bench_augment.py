"""Time SimCLR-style augmentation of one batch, three ways, in one process.

    python bench/bench_augment.py [--device cuda] [--batch 512] [--repeats 10]

The pipeline is SimCLR's CIFAR-10 recipe (Chen et al., 2020): random resized crop (scale 0.08-1),
horizontal flip, colour jitter (0.4, 0.4, 0.4, 0.1) with p=0.8, grayscale with p=0.2.
Every side starts from the same uint8 batch [B, 3, 32, 32] on the device and ends with a float32
batch in [0, 1] on the device, each image with its own random parameters:

- torchvision v2, one image at a time in a Python loop (what a Dataset's transform does),
  once on uint8 images (the textbook order: augment, then convert) and once on float images;
- kornia.augmentation, batched;
- sslcourse.augment.simclr_augment, batched, with its default hue rotation about the grey axis
  and with the HSV hue shift that matches torchvision exactly (hue_method="hsv").

Prints the median time per batch and the speed-ups as a markdown table, then where sslcourse's
time goes, transform by transform. Uses real CIFAR-10 images from ../shared/data/cifar10-jpeg.npz
when that file exists (see --data), random images otherwise.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.transforms import v2

from benchutil import machine_name
from sslcourse import augment as A

REPO = Path(__file__).resolve().parents[1]
DATA_CANDIDATES = [
    REPO.parent / "shared" / "data" / "cifar10-jpeg.npz",
    REPO / "shared" / "data" / "cifar10-jpeg.npz",
    REPO / "bench" / "_carry" / "cifar10-jpeg.npz",
]


def load_images(batch: int, data: str | None) -> tuple[torch.Tensor, str]:
    """The first ``batch`` CIFAR-10 training images as uint8 [B, 3, 32, 32], and where they came from."""
    candidates = [Path(data)] if data else DATA_CANDIDATES
    for path in candidates:
        if path.is_file():
            archive = np.load(path)
            jpeg, offsets = archive["train_jpeg"], archive["train_offsets"]
            files = [torch.from_numpy(jpeg[offsets[i]:offsets[i + 1]].copy()) for i in range(batch)]
            images = torch.stack(torchvision.io.decode_jpeg(files, mode=torchvision.io.ImageReadMode.RGB))
            return images, f"CIFAR-10 train[:{batch}] from {path}"
    if data:
        raise FileNotFoundError(f"--data: expected a cifar10-jpeg.npz file, got {data!r} (not found).")
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return images, "random uint8 images (no cifar10-jpeg.npz found)"




def median_ms(sides: dict, device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    """Median wall time in milliseconds of each ``fn()`` in ``sides``, synchronising the GPU.

    The sides take turns (one run of each per round), so a load that comes and goes on a shared
    machine slows them all alike rather than whichever happened to be running.
    """
    def one_run(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for fn in sides.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            times[name].append(one_run(fn))
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def torchvision_per_sample(images_uint8: torch.Tensor, on_float: bool):
    """SimCLR's augmentation with torchvision v2, applied image by image."""
    jitter = v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)
    steps = [v2.RandomResizedCrop(32, scale=(0.08, 1.0), antialias=True), v2.RandomHorizontalFlip(), jitter,
             v2.RandomGrayscale(p=0.2)]
    if on_float:
        per_image = v2.Compose(steps)
        return lambda: torch.stack([per_image(img) for img in images_uint8.float() / 255])
    per_image = v2.Compose(steps + [v2.ToDtype(torch.float32, scale=True)])
    return lambda: torch.stack([per_image(img) for img in images_uint8])


def kornia_batched(images_uint8: torch.Tensor):
    import kornia.augmentation as K

    augment = torch.nn.Sequential(
        K.RandomResizedCrop((32, 32), scale=(0.08, 1.0)),
        K.RandomHorizontalFlip(),
        K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
        K.RandomGrayscale(p=0.2),
    ).to(images_uint8.device)
    return lambda: augment(images_uint8.float() / 255)


def sslcourse_batched(images_uint8: torch.Tensor, generator: torch.Generator, hue_method: str = "rotation"):
    augment = A.simclr_augment(32)
    jitter = next(t for t in augment.transforms if isinstance(t, A.ColorJitter))
    jitter.hue_method = hue_method
    return lambda: augment(images_uint8.float() / 255, generator)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per side (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--data", default=None, help="path to cifar10-jpeg.npz (default: look in ../shared/data)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: expected a CUDA GPU, got none (torch.cuda.is_available() is False).")
    torch.manual_seed(0)                                   # kornia draws from torch's global generator
    images, source = load_images(args.batch, args.data)
    images = images.to(device)
    generator = torch.Generator(device=device).manual_seed(0)

    try:
        import kornia
        kornia_version = kornia.__version__
    except ImportError:
        kornia_version = None

    print(f"# SimCLR-style augmentation of {args.batch} images 32×32 on {device.type}")
    print(f"machine: {machine_name(device)}")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, kornia {kornia_version or 'not installed'}")
    print(f"data: {source}; median of {args.repeats} runs after {args.warmup} warm-up runs\n")

    sides = {
        "torchvision v2, per sample, uint8 in": torchvision_per_sample(images, on_float=False),
        "torchvision v2, per sample, float in": torchvision_per_sample(images, on_float=True),
    }
    if kornia_version:
        sides["kornia, batched"] = kornia_batched(images)
    sides["sslcourse.augment, batched, HSV hue"] = sslcourse_batched(images, generator, hue_method="hsv")
    sides["sslcourse.augment, batched"] = sslcourse_batched(images, generator)
    timings = median_ms(sides, device, args.warmup, args.repeats)

    ours = timings["sslcourse.augment, batched"]
    print("| pipeline | ms / batch | images / s | sslcourse speed-up |")
    print("|---|---:|---:|---:|")
    for name, ms in timings.items():
        print(f"| {name} | {ms:.1f} | {args.batch / ms * 1000:,.0f} | {ms / ours:.1f}× |")
    fastest_torchvision = min(ms for name, ms in timings.items() if name.startswith("torchvision"))
    print(f"\nsslcourse vs per-sample torchvision (its faster variant): {fastest_torchvision / ours:.1f}×")
    if kornia_version:
        print(f"sslcourse vs kornia: {timings['kornia, batched'] / ours:.2f}×")

    x01 = images.float() / 255
    transforms = A.simclr_augment(32).transforms
    transforms.insert(3, A.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8, hue_method="hsv"))
    steps = {repr(t): (lambda t=t: t(x01, generator)) for t in transforms}
    print("\n| sslcourse transform | ms / batch |\n|---|---:|")
    for name, ms in median_ms(steps, device, args.warmup, args.repeats).items():
        print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
