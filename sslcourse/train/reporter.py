"""What a person sees while :func:`sslcourse.train.fit` trains: a progress bar and a live plot.

The bar is ``tqdm.auto`` (a widget in a notebook, text on stderr elsewhere); the plot is a
:class:`sslcourse.plots.LivePlot`, drawn only in a notebook kernel and never under nbgrader
or ``SSLCOURSE_FAST``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..plots import LivePlot, live_plot_allowed

__all__ = ["Reporter"]


class Reporter:
    """Progress bar plus live plot of one run.

    Args:
        desc: label of the bar and title of the plot.
        total_steps, done_steps: the run's steps, and those a checkpoint already holds.
        progress: show the bar.
        live_plot: ``True``/``False``, or a :class:`LivePlot` to draw into (its baselines and labels).
    """

    def __init__(self, desc: str, total_steps: int, done_steps: int, progress: bool, live_plot: bool | LivePlot):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total_steps, initial=done_steps, desc=desc, disable=not progress,
                        dynamic_ncols=True, unit="step")
        if isinstance(live_plot, LivePlot):
            self.live = live_plot
            self.live.enabled = self.live.enabled and live_plot_allowed()
        else:
            self.live = LivePlot(title=desc, enabled=bool(live_plot) and live_plot_allowed())

    def steps_done(self, values: Sequence[float], epoch: int, epochs: int, losses: Sequence[float],
                   records: Sequence[Mapping]) -> None:
        """Some steps' losses were read back."""
        if not values:
            return
        self.bar.update(len(values))
        self.bar.set_postfix_str(f"epoch {epoch + 1}/{epochs}, loss {np.mean(values):.4f}", refresh=False)
        self.live.update(losses, records)

    def epoch_done(self, record: Mapping, losses: Sequence[float], records: Sequence[Mapping]) -> None:
        self.bar.set_postfix_str(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in record.items() if k not in ("lr", "time")))
        self.live.update(losses, records)

    def close(self, losses: Sequence[float], records: Sequence[Mapping]) -> None:
        self.bar.close()
        self.live.close(losses, records)
