"""The loss log of :func:`sslcourse.train.fit`: deferred read-back from the device, and the NaN check.

Reading a loss with ``.item()`` after every step makes the CPU wait for the GPU each time.
The log keeps the step losses on the device and reads them back together every
``read_every`` steps, in one transfer; that is also where a NaN or Inf loss is caught.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..files import to_plain

__all__ = ["NonFiniteLossError", "LossLog"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped."""


def _non_finite_message(value: float, epoch: int, epochs: int, step: int, steps: int, global_step: int,
                        checkpoint: Path | None, saved_epochs: int) -> str:
    kept = ""
    if checkpoint is not None and saved_epochs > 0:
        kept = (f"\nThe checkpoint {checkpoint} still holds the last good state (after epoch {saved_epochs}); "
                "fix the cause and rerun to resume from there, or delete it to start over.")
    return (f"The loss became {value} at epoch {epoch}/{epochs}, step {step}/{steps} "
            f"(step {global_step} overall). Likely causes:\n"
            "  - the learning rate is too high (try 10x smaller, or a warm-up);\n"
            "  - a log of 0 (use F.log_softmax / F.cross_entropy, or add a small epsilon inside the log);\n"
            "  - a division by a zero norm (use F.normalize, which has an epsilon);\n"
            "  - the loss function returns NaN for some inputs (call it on one batch and check "
            "torch.isfinite on each intermediate)." + kept)


class LossLog:
    """Step losses and metrics of one run, read back from the device in groups.

    Args:
        losses: the history's list of step losses; read-back values are appended to it.
        epochs: the run's total epochs, and ``steps``: steps per epoch (for the NaN message).
        read_every: read back after this many pending steps.

    ``checkpoint`` and ``saved_epochs`` are kept up to date by ``fit`` so that the NaN message
    can say what the checkpoint still holds.
    """

    def __init__(self, losses: list[float], epochs: int, steps: int, read_every: int = 10):
        self.losses, self.epochs, self.steps, self.read_every = losses, epochs, steps, max(1, read_every)
        self.checkpoint: Path | None = None
        self.saved_epochs = 0
        self.epoch = 0                       # 0-based epoch being trained
        self.step = 0                        # 1-based step of the last pending loss
        self._pending: list[tuple[torch.Tensor, dict]] = []
        self.epoch_losses: list[float] = []
        self.epoch_metrics: dict[str, list[float]] = defaultdict(list)

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.step = epoch, 0
        self.epoch_losses, self.epoch_metrics = [], defaultdict(list)

    def add(self, step: int, loss: torch.Tensor, metrics: Mapping[str, Any]) -> list[float]:
        """Queue the loss of step ``step``; returns the values read back (empty if none were)."""
        self.step = step
        self._pending.append((loss.detach(), {k: v.detach() if isinstance(v, torch.Tensor) else v
                                              for k, v in metrics.items()}))
        return self.read_back() if len(self._pending) >= self.read_every else []

    def read_back(self) -> list[float]:
        """One device-to-host transfer for the pending losses; checks, records and returns them.

        Raises:
            NonFiniteLossError: one of them is NaN or Inf (the message names the step).
        """
        if not self._pending:
            return []
        values = torch.stack([loss.float() for loss, _ in self._pending]).tolist()
        first_step = self.step - len(self._pending) + 1
        for i, value in enumerate(values):
            if not math.isfinite(value):
                at = first_step + i
                self._pending.clear()
                raise NonFiniteLossError(_non_finite_message(
                    value, self.epoch + 1, self.epochs, at, self.steps, self.epoch * self.steps + at,
                    self.checkpoint, self.saved_epochs))
        for _, metrics in self._pending:
            for name, value in metrics.items():
                self.epoch_metrics[name].append(float(np.mean(to_plain(value))))
        self._pending.clear()
        self.losses.extend(values)
        self.epoch_losses.extend(values)
        return values

    def epoch_summary(self) -> dict[str, float]:
        """The epoch's mean loss and the mean of each metric ``loss_fn`` returned."""
        summary = {"loss": float(np.mean(self.epoch_losses)) if self.epoch_losses else float("nan")}
        summary.update({name: float(np.mean(values)) for name, values in self.epoch_metrics.items()})
        return summary
