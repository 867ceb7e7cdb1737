"""Writing files that survive interruption, and values that files can hold.

* :func:`atomic_write` writes through a temporary file and ``os.replace``, so a crash or a
  Ctrl-C mid-write leaves the previous file intact (the dataset cache, checkpoints, saved runs);
* :func:`file_sha256` fingerprints a file (the manifest of the reference encoders);
* :func:`to_plain` turns tensors and NumPy values into Python numbers and lists (checkpoint
  histories, JSON metrics).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["atomic_write", "torch_save_atomic", "file_sha256", "to_plain"]


def atomic_write(path: Path | str, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it over ``path`` atomically.

    The parent folder is created. If ``write`` fails, the temporary file is removed and ``path``
    keeps what it held before.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def torch_save_atomic(obj: Any, path: Path | str) -> Path:
    """``torch.save(obj, path)``, atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def file_sha256(path: Path | str) -> str:
    """The sha256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def to_plain(value: Any) -> Any:
    """A tensor or NumPy value as a Python number (one element) or nested list; anything else unchanged."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (np.generic, np.ndarray)):
        return value.item() if value.size == 1 else value.tolist()
    return value
