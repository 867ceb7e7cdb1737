"""A CPU training step and feature extraction with glibc's malloc as it comes, and inside ``keep_freed_memory()``.

    python bench/bench_allocator.py [--batch 256] [--steps 8]

The step is the engine benchmark's: ConvNet(width=32) + SimCLR's projection head, NT-Xent on
two views (``2 * batch`` images), SGD, on random images, in NCHW and in channels_last. For each
it prints the median milliseconds per image and the minor page faults per step
(``getrusage``), which is what ``sslcourse.allocator`` removes: glibc unmaps large freed
blocks, so the same activations are faulted in and zeroed by the kernel again every step.
It also times ``sslcourse.evaluate.extract_features`` on 10,000 images (batches of 512,
channels_last) in each phase, first thing: with its own ``keep_freed_memory`` switched off
(while the process is still fresh, as a new notebook kernel is), then with it on, as it runs by default.

The settings are process-wide and what ``keep_freed_memory`` restores on exit differs from a
fresh process, so both layouts are measured as they come first, then both inside it.
Linux with glibc only.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_engine import load_average, make_model, make_optimizer, simclr_loss  # noqa: E402
from benchutil import machine_name  # noqa: E402
from sslcourse import allocator  # noqa: E402


class Step:
    """A model, its optimiser and one fixed two-view batch in one memory layout."""

    def __init__(self, channels_last: bool, batch: int):
        torch.manual_seed(0)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        self.model = make_model("convnet").to(memory_format=layout)
        self.optimizer = make_optimizer(self.model)
        views = [torch.randn(batch, 3, 32, 32).contiguous(memory_format=layout) for _ in range(2)]
        self.batch = (tuple(views), None)
        self.images = batch

    def run(self, steps: int) -> tuple[float, float]:
        """Median ms per image and mean minor page faults per step over ``steps`` steps."""
        times = []
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(steps):
            start = time.perf_counter()
            loss = simclr_loss(self.model, self.batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            times.append(time.perf_counter() - start)
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before) / steps
        return 1000 * statistics.median(times) / self.images, faults


def extraction_seconds(keep: bool, images: torch.Tensor) -> tuple[float, float]:
    """Median seconds of 3 ``extract_features`` runs over ``images`` and minor page faults per run."""
    from unittest import mock

    from sslcourse import evaluate
    from sslcourse.models import ConvNet

    encoder = ConvNet(width=32).to(memory_format=torch.channels_last)
    switch = evaluate.keep_freed_memory if keep else (lambda enabled=True: allocator.keep_freed_memory(False))
    times = []
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with mock.patch.object(evaluate, "keep_freed_memory", switch):
        for _ in range(3):
            start = time.perf_counter()
            evaluate.extract_features(encoder, images, mean=(0.5,) * 3, std=(0.25,) * 3, device="cpu")
            times.append(time.perf_counter() - start)
    return statistics.median(times), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before) / 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256, help="images per step (two views each)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement (after 2 warm-up)")
    args = parser.parse_args()
    if not allocator.available():
        raise SystemExit("bench_allocator: expected Linux with glibc; keep_freed_memory does nothing here.")

    print(f"# One training step: glibc malloc as it comes vs keep_freed_memory()")
    print(f"machine: {machine_name(torch.device('cpu'))}; torch {torch.__version__}; "
          f"load average before: {load_average()}")
    print(f"ConvNet(width=32) + projection head, NT-Xent, SGD; {args.batch} images = {2 * args.batch} views per step")
    print()
    steps = {"NCHW": Step(False, args.batch), "channels_last": Step(True, args.batch)}
    images = torch.randint(0, 256, (10_000, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    rows, extraction = [], {}
    for setting in ("glibc malloc as it comes", "inside keep_freed_memory()"):
        keep = setting.startswith("inside")
        extraction[setting] = extraction_seconds(keep, images)   # first: a fresh process, as a new kernel is
        with allocator.keep_freed_memory(enabled=keep):
            for layout, step in steps.items():
                step.run(2)   # warm-up: kernel selection; inside, the heap grows to the step's peak once
                ms, faults = step.run(args.steps)
                rows.append((layout, setting, ms, faults))
    print("| layout | allocator | ms per image | minor page faults per step |")
    print("|---|---|---:|---:|")
    for layout, setting, ms, faults in rows:
        print(f"| {layout} | {setting} | {ms:.2f} | {faults:,.0f} |")
    print()
    for layout in steps:
        stock, kept = (ms for lay, _, ms, _ in rows if lay == layout)
        print(f"{layout}: speed-up of the step inside keep_freed_memory: {stock / kept:.2f}x")
    (stock, stock_faults), (kept, kept_faults) = extraction.values()
    print(f"extract_features, 10,000 images (measured before the steps): {stock:.2f} s and {stock_faults:,.0f} "
          f"page faults without, {kept:.2f} s and {kept_faults:,.0f} inside keep_freed_memory (speed-up {stock / kept:.2f}x)")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
