"""The learning-rate schedule the course uses: linear warm-up, then cosine decay."""
from __future__ import annotations

import math

import torch

__all__ = ["cosine_schedule"]


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                    final_fraction: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up for ``warmup_steps``, then cosine decay to ``final_fraction`` of the base lr
    (Loshchilov & Hutter, 2017, SGDR, without restarts).

    :func:`sslcourse.train.fit` steps the scheduler once per optimisation step, so pass
    ``total_steps = epochs * len(loader)``.
    """
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
