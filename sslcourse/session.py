"""A notebook's first call: :func:`setup` returns the :class:`Session` the rest of it uses.

``setup`` sits above the environment policy (:mod:`sslcourse.environment`), the presets
(:mod:`sslcourse.budget`) and the datasets (:mod:`sslcourse.data`), and below everything a
notebook does with them. Notebooks never use relative paths, because nbgrader autogrades them
from ``autograded/<student>/<id>/``; every path comes from :mod:`sslcourse.environment`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from . import environment
from .budget import Budget, choose_budget
from .data import ImageDataset, load_dataset

__all__ = ["Session", "setup", "choose_device", "seed_everything"]


def choose_device(prefer: str | None = None) -> torch.device:
    """CUDA if present, then Apple MPS, then the CPU. ``prefer`` or ``SSLCOURSE_DEVICE`` overrides."""
    prefer = prefer or environment.read().device
    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass
class Session:
    """What a notebook's setup cell hands to the rest of the notebook.

    Attributes:
        budget: the preset (:class:`sslcourse.budget.Budget`): epochs, image counts, batch sizes.
        device: where training runs.
        seed: the seed :func:`setup` used.
        data: the dataset, already cut to the budget's size.
    """

    budget: Budget
    device: torch.device
    seed: int
    data: ImageDataset


def setup(seed: int = 0, dataset: str = "auto", verbose: bool = True) -> Session:
    """Choose the budget preset and device, seed everything, and load the course dataset.

    Prints one line each for the preset, the device and the dataset (and, loudly,
    why the embedded dataset is used when it is).
    """
    budget = choose_budget()
    device = choose_device()
    if budget.name == "smoke":
        # Smoke work is tiny tensors; on a busy CPU (an autograde batch, CI) a second OpenMP
        # thread makes it many times slower, never faster (measured in bench/RESULTS.md).
        torch.set_num_threads(1)
    seed_everything(seed)
    data = load_dataset(dataset, budget=budget, verbose=verbose)
    if verbose:
        print(f"sslcourse: {budget}")
        print(f"sslcourse: device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
        if device.type == "cpu":
            from .cpu_bf16 import describe
            print(f"sslcourse: {describe()}")
        print(f"sslcourse: seed {seed}")
        note = environment.colab_results_note()
        if note:
            print(note)
    return Session(budget=budget, device=device, seed=seed, data=data)
