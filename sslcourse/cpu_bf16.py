"""bfloat16 on the CPU: use it where the processor has it natively and it measures faster.

Recent Intel Xeons (AVX512-BF16, AMX) and AMD Zen 4 and later (AVX512-BF16) multiply bf16
matrices natively; there, bf16 autocast can make a training step of the course's ConvNet about
twice as fast (``bench/bench_cpu_bf16.py``). Elsewhere bf16 is emulated and slower, so it is
never switched on blindly:

* :func:`native_bf16` names the instruction set, or returns ``None``;
* :func:`use_bf16` decides once per machine with a micro-benchmark (a few forward/backward
  steps of the ConvNet in float32 and in bf16 autocast), cached in the data folder, and says yes
  only if bf16 was at least 15% faster. A measurement taken while the machine was busy (a load
  average above half its cores: another training, a helper) decides for this process only and is
  not cached: under load it has said 0.53x on a machine where bf16 is 2.3x faster when quiet.
  ``SSLCOURSE_CPU_BF16=1`` or ``=0`` forces the answer;
  grading and ``SSLCOURSE_FAST`` always stay in float32 (no benchmark, identical on every machine).

What stays in float32 under autocast: PyTorch's CPU autocast runs convolutions, linear layers and
matrix products in bf16 and computes the losses (``cross_entropy``, ``mse_loss``,
``binary_cross_entropy_with_logits``) in float32; ``softmax``, ``normalize`` and norms follow their
input's dtype, so they stay bf16 after a bf16 matrix product (checked with torch 2.14);
:func:`sslcourse.train.fit` reads losses back as float32, and
:func:`sslcourse.evaluate.extract_features` returns float32 features, so kNN and the linear probe
never see bf16.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from . import environment
from .files import atomic_write

__all__ = ["native_bf16", "cpu_name", "use_bf16", "measure", "describe"]

_MIN_SPEEDUP = 1.15
_BUSY_LOAD = 0.5                 # load average per core above which a measurement is not cached
_uncached_decision: tuple[str, bool] | None = None
_CACHE_NAME = "cpu_bf16.json"


def native_bf16() -> str | None:
    """``"AMX"``, ``"AVX512-BF16"`` or ``None``: the processor's native bf16 instructions."""
    cpu = getattr(torch, "cpu", None)
    try:
        if cpu is not None and cpu._is_amx_tile_supported():
            return "AMX"
        if cpu is not None and cpu._is_avx512_bf16_supported():
            return "AVX512-BF16"
    except (AttributeError, RuntimeError):      # older torch: read the kernel's list of flags
        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        if " amx_bf16" in flags:
            return "AMX"
        if " avx512_bf16" in flags:
            return "AVX512-BF16"
    return None


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), or what ``platform`` knows of it."""
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def measure(steps: int = 4, batch: int = 128, width: int = 32) -> dict[str, float]:
    """Seconds per training step (forward, backward) of the ConvNet, float32 and bf16 autocast, on the CPU.

    The two sides alternate step by step and each keeps its fastest step, so a burst of load from
    another process slows one step of each side rather than a whole side. It runs with gradients
    enabled and leaves torch's global random state as it found it: the first call may come from
    inside feature extraction (``torch.no_grad``) in the middle of a seeded notebook.
    """
    from .models import ConvNet

    sides = (("float32", False), ("bf16", True))
    times: dict[str, list[float]] = {name: [] for name, _ in sides}
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(0)
        model = ConvNet(width=width).to(memory_format=torch.channels_last)
        x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        for step in range(steps + 1):
            for name, enabled in sides:
                started = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                    loss = model(x).float().square().mean()
                loss.backward()
                model.zero_grad(set_to_none=True)
                if step:                         # the first step of each warms up (oneDNN picks kernels)
                    times[name].append(time.perf_counter() - started)
    return {name: min(values) for name, values in times.items()}


def _cache_path() -> Path:
    return environment.read().data_dir / _CACHE_NAME


def use_bf16() -> bool:
    """Whether ``fit`` and feature extraction should use bf16 autocast on this CPU (see the module docstring)."""
    env = environment.read()
    if env.grading or env.fast:
        return False
    if env.cpu_bf16 is not None:
        return env.cpu_bf16
    native = native_bf16()
    if native is None:
        return False
    # "measure v2": decisions of the first measurement (a median per side, easily fooled by load) are redone
    key = f"{cpu_name()} | {native} | torch {torch.__version__} | {torch.get_num_threads()} threads | measure v2"
    path = _cache_path()
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return bool(cached["use_bf16"])
    except (OSError, ValueError, KeyError):
        pass
    global _uncached_decision
    if _uncached_decision is not None and _uncached_decision[0] == key:
        return _uncached_decision[1]
    load = _load_average()
    seconds = measure()
    decision = seconds["float32"] / seconds["bf16"] >= _MIN_SPEEDUP
    if load > _BUSY_LOAD * (os.cpu_count() or 1):
        _uncached_decision = (key, decision)     # a busy machine: decide for this process only
        return decision
    record = {"key": key, "use_bf16": decision, "seconds_per_step": seconds, "load_average": load}
    try:
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(record, indent=1)))
    except OSError:                             # a read-only data folder: decide again next time
        pass
    return decision


def _load_average() -> float:
    """The 1-minute load average, or 0 where the platform has none (Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def describe() -> str:
    """One line for the setup banner and ``sslcourse doctor``."""
    native = native_bf16()
    if native is None:
        return "CPU bf16: not native on this processor; training stays in float32"
    env = environment.read()
    if env.grading or env.fast:
        return f"CPU bf16: native ({native}); not used under grading or SSLCOURSE_FAST"
    if env.cpu_bf16 is not None:
        return f"CPU bf16: native ({native}); SSLCOURSE_CPU_BF16={int(env.cpu_bf16)} forces it {'on' if env.cpu_bf16 else 'off'}"
    cached = {}
    try:
        cached = json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        pass
    if "use_bf16" in cached:
        s = cached["seconds_per_step"]
        return (f"CPU bf16: native ({native}); measured {s['float32'] / s['bf16']:.2f}x a float32 step, "
                f"so {'used' if cached['use_bf16'] else 'not used'} (SSLCOURSE_CPU_BF16=0/1 to force)")
    if _uncached_decision is not None:
        return (f"CPU bf16: native ({native}); measured on a busy machine: {'used' if _uncached_decision[1] else 'not used'} "
                "for this session only, measured again next time (SSLCOURSE_CPU_BF16=0/1 to force)")
    return f"CPU bf16: native ({native}); measured at the first training step, used if faster"
