"""End-to-end two-view SSL training throughput: the textbook pipeline against the sslcourse engine.

    python bench/bench_engine.py                          # CPU: ConvNet, batch 256
    python bench/bench_engine.py --device cuda --bf16     # GPU: ResNet-18, batch 512

Every side trains the same model (a backbone plus SimCLR's projection head) with the same
two-view InfoNCE loss (NT-Xent, Chen et al., 2020, temperature 0.5), batch size and optimiser,
in one process. The sides:

- textbook: what SimCLR/MoCo CIFAR code and the PyTorch tutorials do. A torchvision-CIFAR-style
  Dataset holds the images as a uint8 array, makes a PIL image per sample and applies SimCLR's
  CIFAR augmentation with ``torchvision.transforms`` twice (two views); ``torch.utils.data.DataLoader``
  serves it with ``num_workers`` = the number of cores (and ``pin_memory`` on CUDA); a plain
  training loop (default NCHW layout, ``loss.item()`` each step for the running loss).
- textbook data + sslcourse loop: the same DataLoader, trained by ``sslcourse.train.fit``. The
  difference from the engine is the data pipeline alone.
- sslcourse engine: ``sslcourse.data.DeviceBatches`` (the uint8 set on the device, ``views=2``)
  with ``sslcourse.augment.simclr_augment()`` (batched, per-sample parameters), trained by
  ``sslcourse.train.fit`` with its defaults (channels_last; bf16 autocast on CUDA; on a CPU,
  ``keep_memory``: see ``sslcourse.allocator``).
- model step alone: ``fit`` on one fixed batch, the ceiling for any data pipeline.

On a CPU ``fit`` retunes glibc's malloc for the process while it trains and leaves settings behind
that favour code run later, so the textbook side trains all its epochs first, in a process that
sslcourse has not touched yet, as a student's kernel would be; the other sides then take turns.

Autocast is the same on every side (``fit``'s default: bf16 on CUDA, none on the CPU; ``--bf16``
forces it everywhere), so a GPU textbook run is the modern mixed-precision textbook, not a float32 one.

Part (b) prints images per second (each image is two views) and the ratios, and the CPU time
spent per image (this process's threads plus the loader's workers), which a busy shared
machine distorts less than wall time.
Part (c) counts the FLOPs of one training step (forward and backward, with
``torch.utils.flop_counter.FlopCounterMode``) and divides FLOPs x steps by the measured time:
each side's achieved FLOP/s, as a fraction of this machine's measured peak (a large float32
matmul on the CPU; bfloat16 on CUDA).

Each side runs ``--epochs`` epochs over ``--images`` images; the first epoch is warm-up (worker
start-up, kernel selection) and the median of the others is reported. The sides take turns epoch
by epoch, so that a change in a shared machine's load hits all alike, except on a CPU with
``keep_memory``, where the textbook runs its epochs first (see above): there a change in load
between the two phases does enter the ratio, so run it more than once. Uses real CIFAR-10
from ``cifar10-jpeg.npz`` (``--data``; default: ../shared/data, then bench/_carry) when present,
random images otherwise. Timings on a shared machine are provisional: the load average is
printed before and after.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchutil import machine_name  # noqa: E402
from sslcourse import allocator, augment  # noqa: E402
from sslcourse.data import DeviceBatches  # noqa: E402
from sslcourse.models import ConvNet, ProjectionHead, ResNet18  # noqa: E402
from sslcourse.train import fit  # noqa: E402

DATA_CANDIDATES = [
    REPO.parent / "shared" / "data" / "cifar10-jpeg.npz",
    REPO / "bench" / "_carry" / "cifar10-jpeg.npz",
]


# ----------------------------------------------------------------------------- data

def load_images(n: int, data: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """``n`` training images as uint8 HWC ``[n, 32, 32, 3]`` (every class: a strided sample), labels, source."""
    candidates = [Path(data)] if data else DATA_CANDIDATES
    for path in candidates:
        if path.is_file():
            from PIL import Image

            with np.load(path) as archive:
                jpeg, offsets, labels = archive["train_jpeg"], archive["train_offsets"], archive["train_labels"]
                total = len(offsets) - 1
                picks = np.linspace(0, total - 1, min(n, total)).astype(int)
                images = np.stack([np.asarray(Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes()))
                                              .convert("RGB")) for i in picks])
                return images, labels[picks].astype(np.int64), f"CIFAR-10, {len(picks)} train images from {path}"
    if data:
        raise SystemExit(f"--data: expected a cifar10-jpeg.npz file, got {data!r} (not found).")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return images, rng.integers(0, 10, n), f"{n} random uint8 images (no cifar10-jpeg.npz found)"


class TwoViewCIFAR(torch.utils.data.Dataset):
    """What SimCLR/MoCo CIFAR code does: a uint8 array, ``Image.fromarray`` per sample, two random views.

    Mirrors ``torchvision.datasets.CIFAR10.__getitem__`` plus a two-crop wrapper.
    """

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform):
        self.data, self.targets, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        from PIL import Image

        image = Image.fromarray(self.data[i])
        return (self.transform(image), self.transform(image)), int(self.targets[i])


def textbook_transform(mean, std):
    """SimCLR's CIFAR-10 augmentation (Chen et al., 2020, s=0.5) with the classic torchvision transforms."""
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(32, scale=(0.08, 1.0)),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


class RepeatBatch:
    """A loader that serves one fixed batch ``steps`` times per epoch: the step with no data cost."""

    def __init__(self, batch, steps: int):
        self.batch, self.steps = batch, steps

    def __len__(self) -> int:
        return self.steps

    def epoch(self, e: int):
        for _ in range(self.steps):
            yield self.batch


# ----------------------------------------------------------------------------- model

def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent (InfoNCE over 2B views): ``[B, d], [B, d] -> scalar``."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)                       # [2B, d]
    logits = z @ z.T / temperature                                            # [2B, 2B]
    self_pairs = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pairs, float("-inf"))
    b = len(z1)
    positives = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, positives)


def simclr_loss(model: nn.Module, batch) -> torch.Tensor:
    (x1, x2), _ = batch
    z1, z2 = model(torch.cat([x1, x2])).chunk(2)
    return nt_xent(z1, z2)


def make_model(name: str) -> nn.Module:
    backbone = ConvNet(width=32) if name == "convnet" else ResNet18()
    return nn.Sequential(backbone, ProjectionHead(backbone.feature_dim, 128, hidden_dim=512, batch_norm=True))


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)


# ------------------------------------------------------------------------- measuring



def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def cpu_seconds(loader=None) -> float:
    """CPU time used so far by this process (all threads) and by the loader's worker processes.

    On a shared machine wall time depends on how much of the CPU each process is given; CPU time
    per image does much less. Worker times come from /proc (Linux); elsewhere they count as 0.
    """
    total = time.process_time()
    iterator = getattr(loader, "_iterator", None)
    for worker in getattr(iterator, "_workers", []) or []:
        try:
            fields = Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """FLOP/s of the best of ``repeats`` ``n×n @ n×n`` matmuls (2·n³ FLOPs each)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def step_flops(model: nn.Module, batch, device: torch.device, amp, channels_last: bool) -> int:
    """FLOPs of one training step's forward and backward (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    from sslcourse.train import _autocast, _move

    batch = _move(batch, device, channels_last)
    with FlopCounterMode(display=False) as counter:
        with _autocast(device, amp):
            loss = simclr_loss(model, batch)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def textbook_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, device: torch.device,
                   amp: bool | str) -> float:
    """One epoch of the plain training loop found in SSL tutorials and reference code; returns seconds.

    Model and batches stay in PyTorch's default layout (NCHW); the running loss is read with
    ``loss.item()`` every step, as such loops print or log it.
    """
    autocast = amp == "bf16" or (amp is True and device.type == "cuda")   # the same rule as fit's
    model.to(device).train()
    sync(device)
    start = time.perf_counter()
    running_loss = 0.0
    for (x1, x2), labels in loader:
        x1, x2 = x1.to(device, non_blocking=True), x2.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = simclr_loss(model, ((x1, x2), labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
    sync(device)
    if not np.isfinite(running_loss):
        raise FloatingPointError(f"textbook loop: the loss became {running_loss}")
    return time.perf_counter() - start


class Side:
    """One pipeline under test: its own model and optimiser, trained one epoch per call.

    ``loop`` is ``"fit"`` (``sslcourse.train.fit``) or ``"textbook"`` (:func:`textbook_epoch`).
    """

    def __init__(self, name: str, loader, loop: str, model_name: str, device: torch.device, args,
                 batch_size: int):
        torch.manual_seed(0)
        self.name, self.loader, self.loop, self.device, self.args = name, loader, loop, device, args
        self.model = make_model(model_name)
        self.optimizer = make_optimizer(self.model)
        self.images = len(loader) * batch_size
        self.steps = len(loader)
        self.times: list[float] = []
        self.cpu_times: list[float] = []

    def epoch(self) -> float:
        cpu_before = cpu_seconds(self.loader)
        if self.loop == "textbook":
            seconds = textbook_epoch(self.model, self.loader, self.optimizer, self.device, self.args.amp)
        else:
            history = fit(self.model, simclr_loss, self.loader, self.optimizer, 1, device=self.device,
                          amp=self.args.amp, channels_last=self.args.channels_last,
                          compile=self.args.compile, keep_memory=not self.args.no_keep_memory,
                          live_plot=False, progress=False)
            sync(self.device)
            seconds = history.epochs[-1]["time"]
        self.cpu_times.append(cpu_seconds(self.loader) - cpu_before)
        self.times.append(seconds)
        return seconds

    def cpu_seconds_per_image(self) -> float:
        return statistics.median(self.cpu_times[1:]) / self.images

    def images_per_second(self) -> float:
        return self.images / statistics.median(self.times[1:])   # the first epoch is warm-up

    def seconds_per_step(self) -> float:
        return statistics.median(self.times[1:]) / self.steps


# ------------------------------------------------------------------------------ main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    parser.add_argument("--model", choices=("convnet", "resnet18"), default=None,
                        help="default: convnet on the CPU, resnet18 on CUDA")
    parser.add_argument("--batch", type=int, default=None, help="default: 256 on the CPU, 512 on CUDA")
    parser.add_argument("--images", type=int, default=None, help="images per epoch (default: 3072 CPU, 50000 CUDA)")
    parser.add_argument("--epochs", type=int, default=4,
                        help="epochs per side, the sides taking turns; the first is warm-up")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers (default: cores)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the main process (default: torch's)")
    parser.add_argument("--bf16", action="store_true",
                        help="bfloat16 autocast on every side and device (default: fit's, bf16 on CUDA only)")
    parser.add_argument("--nchw", action="store_true",
                        help="train the fit sides in NCHW too (default: fit's channels_last)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (the fit sides)")
    parser.add_argument("--no-keep-memory", action="store_true",
                        help="fit sides: leave glibc's malloc as it is (default: fit's keep_memory, on a CPU)")
    parser.add_argument("--data", default=None, help="path to cifar10-jpeg.npz (default: ../shared/data, bench/_carry)")
    parser.add_argument("--skip-textbook", action="store_true", help="measure only the engine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first is warm-up).")
    args.amp = "bf16" if args.bf16 else True          # True: fit's default, bf16 autocast on CUDA only
    args.channels_last = not args.nchw

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: expected a CUDA GPU, got none (torch.cuda.is_available() is False).")
    on_gpu = device.type == "cuda"
    model_name = args.model or ("resnet18" if on_gpu else "convnet")
    batch_size = args.batch or (512 if on_gpu else 256)
    n_images = args.images or (50_000 if on_gpu else 3072)
    images_hwc, labels, source = load_images(n_images, args.data)
    n_images = len(images_hwc) // batch_size * batch_size
    if n_images == 0:
        raise SystemExit(f"--images: need at least one batch of {batch_size} images, got {len(images_hwc)}.")
    images_hwc, labels = images_hwc[:n_images], labels[:n_images]
    mean = tuple((images_hwc.reshape(-1, 3) / 255).mean(0).tolist())
    std = tuple((images_hwc.reshape(-1, 3) / 255).std(0).tolist())

    print(f"# Two-view SSL training throughput on {device.type}")
    print(f"machine: {machine_name(device)}; torch {torch.__version__}; load average before: {load_average()}")
    print(f"data: {source}")
    print(f"model: {model_name} + projection head (512, 128), NT-Xent, SGD; batch {batch_size} images "
          f"(= {2 * batch_size} views); {n_images} images per epoch; {args.epochs} epochs per side, first is warm-up; "
          f"autocast {'bf16' if args.bf16 or on_gpu else 'none'}, fit channels_last {args.channels_last}, "
          f"compile {args.compile}, keep_memory {not args.no_keep_memory}")
    print()

    # (b) throughput: the textbook pipeline, the textbook data in fit, the engine, and (c) the step alone
    # on one fixed batch. The sides take turns, one epoch each, so that a change in the machine's load
    # hits all alike.
    engine_loader = DeviceBatches(torch.from_numpy(images_hwc).permute(0, 3, 1, 2).contiguous(),
                                  torch.from_numpy(labels), batch_size, device, augment=augment.simclr_augment(32),
                                  views=2, mean=mean, std=std, seed=0)
    fixed_batch = next(iter(engine_loader.epoch(0)))

    def textbook_loader():
        dataset = TwoViewCIFAR(images_hwc, labels, textbook_transform(mean, std))
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                           num_workers=args.workers, pin_memory=on_gpu,
                                           persistent_workers=args.workers > 0)

    textbook_data = (f"PIL + torchvision transforms + DataLoader ({args.workers} workers"
                     f"{', pinned memory' if on_gpu else ''})")
    sides = {}
    if not args.skip_textbook:
        sides["textbook"] = Side(f"textbook: {textbook_data}, plain loop (NCHW)", textbook_loader(),
                                 "textbook", model_name, device, args, batch_size)
        sides["textbook data"] = Side(f"textbook data: {textbook_data}, in sslcourse.train.fit", textbook_loader(),
                                      "fit", model_name, device, args, batch_size)
    sides["engine"] = Side("sslcourse engine: DeviceBatches + simclr_augment (batched, on the device) + fit",
                           engine_loader, "fit", model_name, device, args, batch_size)
    sides["step"] = Side("model step alone: fit on one fixed batch, no data pipeline",
                         RepeatBatch(fixed_batch, len(engine_loader)), "fit", model_name, device, args, batch_size)
    # On a CPU, fit changes glibc's malloc settings for the whole process while it trains
    # (sslcourse.allocator), and what it restores afterwards favours later code. So that the
    # textbook runs as it would in a student's kernel, it trains all its epochs first, before any
    # fit; the other sides then take turns.
    allocator_tuned = device.type == "cpu" and not args.no_keep_memory and allocator.available()
    if allocator_tuned and "textbook" in sides:
        phases = [["textbook"], [key for key in sides if key != "textbook"]]
    else:
        phases = [list(sides)]
    for phase in phases:
        for round_ in range(args.epochs):
            for key in phase:
                seconds = sides[key].epoch()
                print(f"  round {round_ + 1}/{args.epochs}{' (warm-up)' if round_ == 0 else ''}: "
                      f"{key} {seconds:.2f} s", flush=True)
        print(f"  load average: {load_average()}")
    print()

    model = make_model(model_name).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    flops = step_flops(model, fixed_batch, device, args.amp, args.channels_last)
    peak_dtype = torch.bfloat16 if args.bf16 or on_gpu else torch.float32
    peak = matmul_peak(device, peak_dtype, 8192 if on_gpu else 2048)

    print("| pipeline | images/s | s/step | CPU ms/image | model TFLOP/s | of matmul peak |")
    print("|---|---:|---:|---:|---:|---:|")
    for side in sides.values():
        achieved = flops / side.seconds_per_step()
        print(f"| {side.name} | {side.images_per_second():,.0f} | {side.seconds_per_step():.3f} "
              f"| {1000 * side.cpu_seconds_per_image():.2f} | {achieved / 1e12:.3f} | {100 * achieved / peak:.1f}% |")
    print()
    engine = sides["engine"]
    if not args.skip_textbook:
        for key, what in (("textbook", "end to end, part (b)"), ("textbook data", "the data pipeline alone")):
            other = sides[key]
            print(f"engine / {key}: **{engine.images_per_second() / other.images_per_second():.2f}x** images per "
                  f"second, {other.cpu_seconds_per_image() / engine.cpu_seconds_per_image():.2f}x less CPU time "
                  f"per image ({what})")
        print(f"model step alone / textbook: {sides['step'].images_per_second() / sides['textbook'].images_per_second():.2f}x "
              f"(what a free data pipeline would reach)")
    print(f"one step = {flops / 1e9:.1f} GFLOP (forward + backward of {2 * batch_size} views, counted by "
          f"FlopCounterMode); matmul peak {peak / 1e12:.3f} TFLOP/s ({str(peak_dtype).replace('torch.', '')}, "
          f"{8192 if on_gpu else 2048}^3)")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
