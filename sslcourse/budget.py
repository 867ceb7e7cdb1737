"""Budget presets: how much training a notebook may do on this machine.

Every notebook sizes its experiments from one :class:`Budget`, chosen once per
kernel by :func:`choose_budget` and printed by the setup cell:

========  ===========================================  =======================================
preset    chosen when                                  aims at
========  ===========================================  =======================================
smoke     ``NBGRADER_EXECUTION`` is set (autograde,     whole notebook in seconds, offline,
          validate) or ``SSLCOURSE_FAST=1`` (CI)        deterministic
cpu       no accelerator                               a few minutes per experiment on a
                                                       2-core laptop
gpu       CUDA (or Apple MPS) is available             anchor-comparable CIFAR-10 results
                                                       in minutes
========  ===========================================  =======================================

``SSLCOURSE_BUDGET=smoke|cpu|gpu`` forces a preset (the grading rule still wins:
under nbgrader the preset is always ``smoke``, so autograding stays fast).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from . import environment

PRESETS = ("smoke", "cpu", "gpu")


@dataclass(frozen=True)
class Budget:
    """The sizes one preset allows.

    Attributes:
        name: ``"smoke"``, ``"cpu"`` or ``"gpu"``.
        reason: why this preset was chosen (printed by the setup cell).
        train_images: how many training images the notebooks use (``None`` = all).
        test_images: how many test images the evaluation uses (``None`` = all).
        batch_size: training batch size.
        backbone: ``"convnet"`` (small, CPU-friendly) or ``"resnet18"`` (CIFAR ResNet-18).
        width: channel width of the small ConvNet's first block.
        offline_only: never try a download (smoke runs must not touch the network).
    """

    name: str
    reason: str
    train_images: int | None
    test_images: int | None
    batch_size: int
    backbone: str
    width: int
    offline_only: bool

    def pick(self, *, smoke: Any, cpu: Any, gpu: Any) -> Any:
        """Return the value meant for this preset, e.g. ``epochs = budget.pick(smoke=1, cpu=5, gpu=40)``."""
        return {"smoke": smoke, "cpu": cpu, "gpu": gpu}[self.name]

    def __str__(self) -> str:
        size = "all" if self.train_images is None else f"{self.train_images:,}"
        return (f"budget preset '{self.name}' ({self.reason}): {size} training images, "
                f"batch {self.batch_size}, backbone {self.backbone}")


_SIZES = {
    #         train   test   batch  backbone    width offline
    "smoke": (1024,   512,   128,   "convnet",  16,   True),
    "cpu":   (10000,  2000,  256,   "convnet",  32,   False),
    "gpu":   (None,   None,  512,   "resnet18", 64,   False),
}


def make_budget(name: str, reason: str = "forced") -> Budget:
    """Build the preset called ``name`` (one of :data:`PRESETS`)."""
    if name not in _SIZES:
        raise ValueError(f"Unknown budget preset {name!r}: expected one of {', '.join(PRESETS)}.")
    train, test, batch, backbone, width, offline = _SIZES[name]
    return Budget(name, reason, train, test, batch, backbone, width, offline)


def accelerator_available() -> bool:
    """True when CUDA or Apple's MPS can run tensors."""
    import torch

    if torch.cuda.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def choose_budget(environ: "Mapping[str, str] | environment.Environment | None" = None,
                  has_accelerator: bool | None = None) -> Budget:
    """Choose the preset from the environment (:mod:`sslcourse.environment`) and the hardware.

    Order of precedence: grading (``NBGRADER_EXECUTION``) > ``SSLCOURSE_FAST`` >
    ``SSLCOURSE_BUDGET`` > the hardware.
    """
    env = environment.read(environ) if environ is None or isinstance(environ, Mapping) else environ
    if env.grading:
        return make_budget("smoke", f"running under nbgrader {env.grading}")
    if env.fast:
        return make_budget("smoke", "SSLCOURSE_FAST is set")
    if env.budget:
        if env.budget not in PRESETS:
            raise ValueError(f"SSLCOURSE_BUDGET={env.budget!r} is not a preset: expected one of {', '.join(PRESETS)}.")
        return make_budget(env.budget, "SSLCOURSE_BUDGET is set")
    if has_accelerator is None:
        has_accelerator = accelerator_available()
    if has_accelerator:
        return make_budget("gpu", "an accelerator is available")
    return make_budget("cpu", "no accelerator found")
