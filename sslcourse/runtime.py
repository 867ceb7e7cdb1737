"""Where things live and what runs them: paths, device, seeds, and the notebooks' setup call.

Notebooks never use relative paths, because nbgrader autogrades them from
``autograded/<student>/<id>/``. Everything is found from here instead:

* ``SSLCOURSE_HOME`` if set, else the repository checkout that holds this package
  (an editable install), else ``~/sslcourse``;
* data under ``<home>/data`` (or ``SSLCOURSE_DATA``);
* results under ``<home>/results`` (or ``SSLCOURSE_RESULTS``).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .budget import Budget, choose_budget


def course_home() -> Path:
    """The folder that holds ``data/`` and ``results/``."""
    if os.environ.get("SSLCOURSE_HOME"):
        return Path(os.environ["SSLCOURSE_HOME"]).expanduser().resolve()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").exists() and (checkout / "solutions").is_dir():
        return checkout
    return Path.home() / "sslcourse"


def data_dir() -> Path:
    """Dataset cache: ``SSLCOURSE_DATA`` or ``<home>/data``."""
    if os.environ.get("SSLCOURSE_DATA"):
        return Path(os.environ["SSLCOURSE_DATA"]).expanduser().resolve()
    return course_home() / "data"


def results_dir() -> Path:
    """Saved runs: ``SSLCOURSE_RESULTS`` or ``<home>/results``."""
    if os.environ.get("SSLCOURSE_RESULTS"):
        return Path(os.environ["SSLCOURSE_RESULTS"]).expanduser().resolve()
    return course_home() / "results"


def choose_device(prefer: str | None = None) -> torch.device:
    """CUDA if present, then Apple MPS, then the CPU. ``SSLCOURSE_DEVICE`` or ``prefer`` overrides."""
    prefer = prefer or os.environ.get("SSLCOURSE_DEVICE")
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
    """What a notebook's setup cell hands to the rest of the notebook."""

    budget: Budget
    device: torch.device
    seed: int
    data: "object"  # sslcourse.data.ImageDataset, typed loosely to avoid an import cycle


def setup(seed: int = 0, dataset: str = "auto", verbose: bool = True) -> Session:
    """Choose the budget preset and device, seed everything, and load the course dataset.

    Prints one line each for the preset, the device and the dataset (and, loudly,
    why the embedded dataset is used when it is).
    """
    from .data import load_dataset

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
        print(f"sslcourse: seed {seed}")
    return Session(budget=budget, device=device, seed=seed, data=data)
