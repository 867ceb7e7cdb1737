"""Benchmark: MoCo (He, Fan, Wu, Xie & Girshick, 2020, CVPR) on real CIFAR-10, measured by weighted kNN.

    python bench/bench_moco.py --preset cpu            # ≤ 9 min on a 2-core CPU: 10k/2k images, 7 min of training
    python bench/bench_moco.py --preset gpu            # CIFAR ResNet-18, 50k images, 8 min of training
    python bench/bench_moco.py --preset gpu --minutes 4 --compile

It runs the recipe of ``solutions/07_moco``: the same constants
(``sslcourse.contrastive.moco_recipe(preset)``: batch, lr, weight decay, K, m, τ, head, BN
splits), backbone (``sslcourse.models.make_backbone``), augmentation
(``sslcourse.augment.moco_cifar_augment``), device-resident batches
(``sslcourse.data.DeviceBatches``) and kNN monitor (``sslcourse.evaluate``, k=200, T=0.1).
The MoCo step here is a reference implementation, written out so this file stands alone;
the notebook's students write their own. The loop is not ``sslcourse.train.fit`` because
it must stop at a wall-clock budget: after a short probe it measures its own throughput and
plans the cosine schedule to end exactly when the budget does (re-planning each epoch).

Prints random-init and MoCo kNN accuracy and timings; never passes or fails on time.
On a shared CPU, idle OpenMP threads that spin steal time from everyone, so this script sets
``OMP_WAIT_POLICY=PASSIVE`` unless it is already set (as bench_rotation.py does).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the first import of torch
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sslcourse.augment import moco_cifar_augment  # noqa: E402
from sslcourse.budget import make_budget  # noqa: E402
from sslcourse.contrastive import (MocoRecipe, ProjectionHead, batch_shuffle, batch_unshuffle,  # noqa: E402
                                   convert_to_split_batchnorm, moco_recipe)
from sslcourse.data import DeviceBatches, load_cifar10_npz  # noqa: E402
from sslcourse.evaluate import extract_features, knn_accuracy  # noqa: E402
from sslcourse.models import make_backbone  # noqa: E402
from sslcourse.runtime import choose_device, seed_everything  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.npz"


class MoCo(nn.Module):
    """Query encoder, momentum key encoder and a queue of K keys (He et al., 2020, Algorithm 1).

    ``forward(x_q, x_k) -> (loss, pretext_accuracy)`` does one step's worth of MoCo, as in the
    official code: momentum update, keys through the shuffled key encoder, InfoNCE against the
    queue *before* it holds the current keys, then enqueue. The optimiser step is the caller's.
    """

    def __init__(self, backbone: nn.Module, recipe: MocoRecipe):
        super().__init__()
        head = ProjectionHead(backbone.feature_dim, recipe.projection_dim, recipe.hidden_dim)
        self.query_encoder = convert_to_split_batchnorm(nn.Sequential(backbone, head), recipe.bn_splits)
        self.key_encoder = copy.deepcopy(self.query_encoder).requires_grad_(False)  # θ_k = θ_q at the start
        self.momentum, self.temperature = recipe.momentum, recipe.temperature
        self.register_buffer("queue", F.normalize(torch.randn(recipe.queue_size, recipe.projection_dim), dim=1))
        self.pointer = 0  # the oldest row of the ring buffer: where the next keys go

    @property
    def backbone(self) -> nn.Module:
        return self.query_encoder[0]

    @torch.no_grad()
    def momentum_update(self) -> None:
        """θ_k ← m θ_k + (1 − m) θ_q, parameters only: the key encoder's BN keeps its own running stats."""
        for p_k, p_q in zip(self.key_encoder.parameters(), self.query_encoder.parameters()):
            p_k.lerp_(p_q.detach(), 1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Overwrite the oldest ``N`` rows of the queue with ``keys`` ``[N, D]`` (wrapping around)."""
        rows = (self.pointer + torch.arange(len(keys), device=keys.device)) % len(self.queue)
        self.queue[rows] = keys.to(self.queue.dtype)
        self.pointer = (self.pointer + len(keys)) % len(self.queue)

    def forward(self, x_q: torch.Tensor, x_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.query_encoder(x_q)                                            # [N, D]
        with torch.no_grad():
            self.momentum_update()
            shuffled, unshuffle = batch_shuffle(x_k)                           # shuffling BN, Sec. 3.3
            k = batch_unshuffle(self.key_encoder(shuffled), unshuffle)         # [N, D]
        # The logits in float32 even under bf16 autocast: q·k/τ spans ±1/τ and bf16 keeps ~3 digits.
        with torch.autocast(q.device.type, enabled=False):
            q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
            l_pos = (q * k).sum(dim=1, keepdim=True)                           # [N, 1]
            # A snapshot: autograd keeps the queue for backward, and enqueue() overwrites it before that.
            l_neg = q @ self.queue.clone().T                                   # [N, K]
            logits = torch.cat([l_pos, l_neg], dim=1) / self.temperature       # [N, 1 + K]
            labels = torch.zeros(len(q), dtype=torch.long, device=q.device)   # the positive is column 0
            loss = F.cross_entropy(logits, labels)
        self.enqueue(k)
        return loss, (logits.argmax(dim=1) == 0).float().mean()


class TimedCosine:
    """Learning-rate factor: linear warm-up for ``warmup`` steps, then cosine to 0 at ``total`` steps.

    ``total`` may be re-planned while training; the warm-up never takes more than a quarter of it.
    """

    def __init__(self, total: int, warmup: int):
        self.total, self.warmup = max(1, total), warmup

    def __call__(self, step: int) -> float:
        warmup_steps = min(self.warmup, self.total // 4)
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, self.total - warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * progress))


def knn(backbone: nn.Module, data, device) -> float:
    train_f = extract_features(backbone, data.train_x, mean=data.mean, std=data.std, device=device)
    test_f = extract_features(backbone, data.test_x, mean=data.mean, std=data.std, device=device)
    return knn_accuracy(train_f, data.train_y.to(device), test_f, data.test_y.to(device), k=200, temperature=0.1,
                        num_classes=data.num_classes)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(model: MoCo, loader: DeviceBatches, recipe: MocoRecipe, device: torch.device, *, max_epochs: int,
          seconds: float | None, amp: bool, compile: bool, monitor=None, monitor_every: int = 0) -> dict:
    """Train for ``max_epochs`` or until ``seconds`` of training have passed, whichever comes first.

    With a time budget, the cosine schedule is planned from the measured step rate after a
    probe and re-planned at each epoch's end so that it reaches 0 as the budget runs out.
    Time spent in the kNN monitor is excluded from the budget.
    """
    optimizer = torch.optim.SGD(model.query_encoder.parameters(), lr=recipe.lr, momentum=recipe.sgd_momentum,
                                weight_decay=recipe.weight_decay)
    steps_per_epoch = len(loader)
    planned = TimedCosine(max_epochs * steps_per_epoch, warmup=recipe.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, planned)
    if compile:  # the encoders only: the step mutates a Python int (the queue pointer) that dynamo would specialise on
        model.query_encoder.compile()
        model.key_encoder.compile()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
    probe_steps = 15 if compile else 5          # steps to skip before timing (compilation, cudnn autotune)
    step, monitor_log, losses = 0, [], []
    started = time.perf_counter()
    probe_at = None

    def replan() -> None:
        sync(device)
        elapsed = time.perf_counter() - started - trained_off
        rate = (step - probe_at[0]) / max(1e-9, elapsed - probe_at[1])
        remaining = max(0.0, seconds - elapsed)
        planned.total = min(max_epochs * steps_per_epoch, step + int(rate * remaining))

    trained_off = 0.0                           # seconds spent in the monitor, not charged to the budget
    model.train()
    out_of_time = False
    for epoch in range(max_epochs):
        epoch_losses = []
        for (x_q, x_k), _ in loader.epoch(epoch):
            x_q = x_q.contiguous(memory_format=torch.channels_last)
            x_k = x_k.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss, accuracy = model(x_q, x_k)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            epoch_losses.append(loss.detach())
            step += 1
            if seconds is not None:
                if step == probe_steps:
                    sync(device)
                    probe_at = (step, time.perf_counter() - started - trained_off)
                elif probe_at is not None and step == 2 * probe_steps + 10:
                    replan()
                if step % 10 == 0 and time.perf_counter() - started - trained_off > seconds:
                    out_of_time = True
            if step >= planned.total or out_of_time:
                break
        mean_loss = torch.stack(epoch_losses).float().mean().item()
        losses.append(mean_loss)
        if seconds is not None and probe_at is not None and step < planned.total and not out_of_time:
            replan()
        elapsed = time.perf_counter() - started - trained_off
        line = f"epoch {epoch + 1}: loss {mean_loss:.3f}, step {step}/{planned.total}, {elapsed:.0f}s"
        if monitor is not None and monitor_every and (epoch + 1) % monitor_every == 0:
            t0 = time.perf_counter()
            accuracy_knn = monitor(model.backbone)
            model.train()
            trained_off += time.perf_counter() - t0
            monitor_log.append((epoch + 1, accuracy_knn))
            line += f", kNN {accuracy_knn:.2f}%"
        print(line, flush=True)
        if step >= planned.total or out_of_time:
            break
    sync(device)
    return {"seconds": time.perf_counter() - started - trained_off, "steps": step, "epochs": step / steps_per_epoch,
            "losses": losses, "monitor": monitor_log}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="cifar10-jpeg.npz (see ../shared/data/README.md)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="training budget in minutes (default: 7 on cpu, 8 on gpu); the schedule is fitted to it")
    parser.add_argument("--epochs", type=int, default=None,
                        help="at most this many epochs (default: the recipe's on cpu, 200 on gpu)")
    parser.add_argument("--train-images", type=int, default=None, help="default: 10,000 on cpu, all 50,000 on gpu")
    parser.add_argument("--test-images", type=int, default=None, help="default: 2,000 on cpu, all 10,000 on gpu")
    parser.add_argument("--device", default=None, help="default: CUDA/MPS if present, else the CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the MoCo step")
    parser.add_argument("--monitor-every", type=int, default=None, help="kNN every N epochs (default: 0 = only at the end)")
    parser.add_argument("--seed", type=int, default=0)
    for field in ("batch_size", "lr", "warmup_epochs", "queue_size", "momentum", "temperature", "bn_splits", "hidden_dim",
                  "weight_decay"):
        parser.add_argument("--" + field.replace("_", "-"), type=float if field in ("lr", "momentum", "temperature",
                                                                                     "weight_decay") else int)
    args = parser.parse_args(argv)

    budget = make_budget(args.preset)
    overrides = {f: getattr(args, f) for f in ("batch_size", "lr", "warmup_epochs", "queue_size", "momentum", "temperature",
                                                "bn_splits", "hidden_dim", "weight_decay") if getattr(args, f) is not None}
    recipe = dataclasses.replace(moco_recipe(budget), **overrides)
    minutes = args.minutes if args.minutes is not None else (8.0 if args.preset == "gpu" else 7.0)
    # On the GPU the run is bounded by --minutes; 200 epochs is the official demo's length, an upper cap.
    max_epochs = args.epochs or (200 if args.preset == "gpu" else recipe.epochs)
    device = torch.device(args.device) if args.device else choose_device()
    amp = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    if not args.data.exists():
        raise SystemExit(f"No CIFAR-10 archive at {args.data}: pass --data PATH/cifar10-jpeg.npz.")
    t0 = time.perf_counter()
    data = load_cifar10_npz(args.data)
    train_n = args.train_images or (10_000 if args.preset == "cpu" else None)
    test_n = args.test_images or (2_000 if args.preset == "cpu" else None)
    data = data.subset(train_n, test_n)
    print(f"data: {len(data.train_x):,} train / {len(data.test_x):,} test CIFAR-10 images, "
          f"loaded in {time.perf_counter() - t0:.1f}s")
    print(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                 f", {torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"))
    print(f"recipe: backbone {budget.backbone}, {recipe}, max epochs {max_epochs}, "
          f"budget {'none' if minutes is None else f'{minutes:g} min'}, amp {amp}, compile {args.compile}")

    seed_everything(args.seed)
    model = MoCo(make_backbone(budget), recipe).to(device).to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    random_init = knn(model.backbone, data, device)
    print(f"random init: kNN {random_init:.2f}% ({time.perf_counter() - t0:.1f}s)")

    loader = DeviceBatches(data.train_x, data.train_y, recipe.batch_size, device, augment=moco_cifar_augment(),
                           views=2, mean=data.mean, std=data.std, seed=args.seed)
    monitor_every = args.monitor_every if args.monitor_every is not None else 0
    run = train(model, loader, recipe, device, max_epochs=max_epochs,
                seconds=None if minutes is None else 60 * minutes, amp=amp, compile=args.compile,
                monitor=lambda backbone: knn(backbone, data, device), monitor_every=monitor_every)
    t0 = time.perf_counter()
    final = knn(model.backbone, data, device)
    images = run["steps"] * recipe.batch_size
    print(f"MoCo: kNN {final:.2f}% after {run['epochs']:.1f} epochs ({run['steps']} steps) in "
          f"{run['seconds']:.0f}s of training ({images / run['seconds']:.0f} images/s); "
          f"evaluation {time.perf_counter() - t0:.1f}s")
    print(f"| {args.preset} | {device.type} | {len(data.train_x):,} / {len(data.test_x):,} | {run['epochs']:.1f} | "
          f"{run['seconds']:.0f} s | {random_init:.1f}% | {final:.1f}% | {final - random_init:+.1f} |")


if __name__ == "__main__":
    main()
