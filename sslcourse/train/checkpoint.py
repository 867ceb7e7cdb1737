"""Checkpoints of :func:`sslcourse.train.fit`: everything needed to resume exactly.

A checkpoint holds the model, the optimizer, the scheduler, the history so far and every
global random state a ``loss_fn`` may draw from. Together with a loader that replays
epoch ``e`` exactly (:class:`sslcourse.data.DeviceBatches`), a resumed run ends where an
uninterrupted one would. Files are written atomically (:mod:`sslcourse.files`).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..files import torch_save_atomic

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint"]

FORMAT = "sslcourse.fit/1"


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not fit the model being trained."""


def _rng_state() -> dict:
    """The global random states a ``loss_fn`` may draw from (noise, masks, dropout)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_checkpoint(path: Path, epoch: int, model: nn.Module, optimizer, scheduler, history: dict) -> None:
    """Write the state after ``epoch`` finished epochs (atomically: a crash keeps the previous file)."""
    torch_save_atomic({
        "format": FORMAT, "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "history": history, "rng": _rng_state(),
    }, path)


def load_checkpoint(path: Path, model: nn.Module, optimizer, scheduler, device: torch.device) -> dict[str, Any]:
    """Load ``path`` into model, optimizer, scheduler and the random states; return the checkpoint.

    Raises:
        CheckpointError: the file is unreadable, or was written for another model or optimizer.
    """
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError("not a checkpoint written by sslcourse.train.fit")
    except Exception as error:
        raise CheckpointError(f"Cannot read the checkpoint {path} ({type(error).__name__}: {error}). "
                              "Delete it (or pass another checkpoint path) to train from scratch.") from error
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"The checkpoint {path} was written for a different model or optimizer "
                              f"({str(error).splitlines()[0]}). Delete it, or pass another checkpoint path, "
                              "to train this model from scratch.") from error
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return state
