"""Benchmark: a training step on the CPU in float32, in bf16 autocast, and compiled (torch.compile).

    python bench/bench_cpu_bf16.py                  # ConvNet w32 at batch 256, ResNet-18 at batch 64
    python bench/bench_cpu_bf16.py --steps 10 --no-compile

Both sides run in this one process, on the same inputs, alternating, so a change in the machine's
load hits both. A step is forward, cross-entropy, backward and an SGD step, channels_last, as
``sslcourse.train.fit`` runs it. Prints the median seconds per step and the ratio to float32, the
processor's native bf16 instructions (``sslcourse.cpu_bf16.native_bf16``) and the compile time.
Never passes or fails on time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the first import of torch
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sslcourse import cpu_bf16  # noqa: E402
from sslcourse.models import ConvNet, ResNet18  # noqa: E402


def make_step(model, bf16: bool):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss
    return step


def time_sides(sides: dict, x, y, steps: int) -> dict[str, float]:
    for step in sides.values():           # warm-up: oneDNN kernel choice, first allocations
        step(x, y)
    times = {name: [] for name in sides}
    for _ in range(steps):
        for name, step in sides.items():
            started = time.perf_counter()
            step(x, y)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args(argv)
    print(f"cpu: {cpu_bf16.cpu_name()}, native bf16: {cpu_bf16.native_bf16()}, "
          f"capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    for name, build, batch in (("ConvNet w32", lambda: ConvNet(width=32), 256), ("ResNet-18", ResNet18, 64)):
        torch.manual_seed(0)
        x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,))
        models = {side: build().to(memory_format=torch.channels_last) for side in ("float32", "bf16")}
        sides = {side: make_step(models[side], side == "bf16") for side in models}
        compile_seconds = {}
        if not args.no_compile:
            for side in ("float32", "bf16"):
                model = build().to(memory_format=torch.channels_last)
                compiled = torch.compile(model)
                step = make_step(compiled, side == "bf16")
                started = time.perf_counter()
                step(x, y)                 # the first call compiles
                compile_seconds[f"compiled {side}"] = time.perf_counter() - started
                sides[f"compiled {side}"] = step
        seconds = time_sides(sides, x, y, args.steps)
        base = seconds["float32"]
        print(f"\n{name}, batch {batch}, {args.steps} timed steps per side (median):")
        for side, value in seconds.items():
            extra = f", compile {compile_seconds[side]:.0f} s" if side in compile_seconds else ""
            print(f"  {side:<18} {value * 1000:8.1f} ms/step   {base / value:5.2f}x float32{extra}")


if __name__ == "__main__":
    main()
