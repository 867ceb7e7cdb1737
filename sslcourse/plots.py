"""Figures the notebooks share: image grids, reconstructions, curves, similarity matrices,
embeddings, the label-efficiency plot, and the live loss curve that ``fit`` draws.

Every function draws with pyplot and returns the :class:`matplotlib.figure.Figure`.
In a notebook the inline backend shows it at the end of the cell; end the line with
``;`` (or assign the figure) so Jupyter does not show it a second time.
"""
from __future__ import annotations

import io
import time
from typing import Mapping, Sequence

import matplotlib
import numpy as np
import torch

from . import environment

__all__ = ["image_grid", "plot_reconstructions", "plot_curves", "plot_similarity", "plot_embedding",
           "plot_label_efficiency", "distinct_colours", "LivePlot", "in_notebook", "live_plot_allowed"]


def _pyplot():
    import matplotlib.pyplot as plt  # imported late: the backend is the notebook's (or Agg in tests)

    return plt


def distinct_colours(count: int):
    """A colormap of ``count`` distinct colours for categorical labels 0..count-1 (tab20, then tab20b: at most 40);
    draw with ``vmin=0, vmax=count - 1``."""
    from matplotlib.colors import ListedColormap
    plt = _pyplot()
    colours = plt.cm.tab20.colors + plt.cm.tab20b.colors
    if not 1 <= count <= len(colours):
        raise ValueError(f"distinct_colours: between 1 and {len(colours)} colours, got {count}")
    return ListedColormap(colours[:count])


def _to_hwc_images(images) -> np.ndarray:
    """uint8 or float [0, 1] images ``[N, C, H, W]`` (C = 1 or 3) -> float ``[N, H, W, C]`` in [0, 1]."""
    x = torch.as_tensor(images).detach().cpu()
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, 1 or 3, H, W], got shape {tuple(x.shape)}.")
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float().clamp(0, 1)
    return x.permute(0, 2, 3, 1).numpy()


def image_grid(images, labels: Sequence | None = None, nrow: int = 8, title: str | None = None,
               classes: Sequence[str] | None = None, scale: float = 1.2):
    """Show images ``[N, C, H, W]`` (uint8, or float in [0, 1]; C = 1 or 3) in a grid.

    Args:
        labels: one caption per image: strings, or ints looked up in ``classes`` when given.
        nrow: images per row.
        scale: inches per image.
    Returns:
        the Figure.
    """
    plt = _pyplot()
    x = _to_hwc_images(images)
    n = len(x)
    if labels is not None and len(labels) != n:
        raise ValueError(f"image_grid: {n} images but {len(labels)} labels.")
    ncol = min(nrow, n)
    rows = -(-n // ncol)
    fig, axes = plt.subplots(rows, ncol, figsize=(scale * ncol, scale * rows + (0.4 if title else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(x[i].squeeze(-1) if x.shape[-1] == 1 else x[i], cmap="gray" if x.shape[-1] == 1 else None,
                  vmin=0, vmax=1)
        if labels is not None:
            label = labels[i]
            label = label.item() if isinstance(label, torch.Tensor) else label
            if classes is not None and isinstance(label, (int, np.integer)):
                label = classes[int(label)]
            ax.set_title(str(label), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_reconstructions(rows: Mapping[str, object], n: int = 8, scale: float = 1.2, title: str | None = None):
    """One row of ``n`` images per entry of ``rows``, e.g. ``{"clean": x, "corrupted": x_tilde, "reconstructed": z}``.

    Each value is ``[N, C, H, W]`` uint8 or float in [0, 1] (apply ``torch.sigmoid`` to decoder
    logits first); each row is labelled with its key, and ``title`` heads the figure. Returns the Figure.
    """
    plt = _pyplot()
    named = [(name, _to_hwc_images(images)[:n]) for name, images in rows.items()]
    ncol = max(len(x) for _, x in named)
    fig, axes = plt.subplots(len(named), ncol, figsize=(scale * ncol, scale * len(named)), squeeze=False)
    for r, (name, x) in enumerate(named):
        for c in range(ncol):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(x):
                gray = x.shape[-1] == 1
                ax.imshow(x[c].squeeze(-1) if gray else x[c], cmap="gray" if gray else None, vmin=0, vmax=1)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_curves(curves, *, xlabel: str = "epoch", ylabel: str | None = None, title: str | None = None,
                logy: bool = False, ax=None, baselines: Mapping[str, float] | None = None,
                metrics: Sequence[str] | None = None):
    """Plot named curves: ``{"loss": [...], "kNN %": [...]}``, or a :class:`sslcourse.train.History`.

    A History draws its per-step loss (raw and smoothed) on the left and its per-epoch
    metrics on the right (``ylabel`` labels that panel), exactly as ``fit``'s live plot
    does, with the same colours; ``baselines`` adds dashed reference lines per metric, and
    ``metrics`` keeps only those per-epoch metrics. Returns the Figure.
    """
    plt = _pyplot()
    if hasattr(curves, "losses") and hasattr(curves, "epochs"):
        fig = plt.figure(figsize=(10, 3.5))
        _draw_history(fig, curves.losses, curves.epochs, title, baselines, ylabel, metrics)
        return fig
    if not isinstance(curves, Mapping):
        raise TypeError(f"plot_curves expects a dict of name -> values or a History, got {type(curves).__name__}.")
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.5))
    else:
        fig = ax.figure
    for name, values in curves.items():
        if isinstance(values, Mapping):
            xs, ys = zip(*sorted(values.items())) if values else ((), ())
        else:
            ys = [float(v) for v in values]
            xs = range(1, len(ys) + 1)
        ax.plot(list(xs), [float(y) for y in ys], marker="o" if len(ys) <= 30 else None, label=str(name))
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if len(curves) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_label_efficiency(results: Mapping[str, Mapping[float, float]], title: str | None = "Label efficiency"):
    """Accuracy against the fraction of labels used, one line per method.

    ``results`` maps a method name to ``{fraction: accuracy %}`` (as returned by
    :func:`sslcourse.evaluate.label_efficiency`). The x axis is logarithmic.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, curve in results.items():
        xs = sorted(float(f) for f in curve)
        by_fraction = {float(f): a for f, a in curve.items()}
        ax.plot([100 * f for f in xs], [by_fraction[f] for f in xs], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training images (%)")
    ax.set_ylabel("linear-probe accuracy (%)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_similarity(matrix, labels: Sequence[str] | None = None, title: str | None = None,
                    cmap: str = "viridis", annotate: bool | None = None):
    """Show a square (or rectangular) similarity matrix ``[N, M]`` as a heat map with a colour bar.

    ``annotate`` writes the values in the cells (default: when the matrix is at most 12×12).
    """
    plt = _pyplot()
    m = torch.as_tensor(matrix).detach().float().cpu().numpy()
    if m.ndim != 2:
        raise ValueError(f"plot_similarity expects a 2-D matrix, got shape {m.shape}.")
    fig, ax = plt.subplots(figsize=(max(3.5, 0.45 * m.shape[1] + 1.5), max(3, 0.45 * m.shape[0] + 1)))
    image = ax.imshow(m, cmap=cmap)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if labels is not None:
        ax.set_xticks(range(m.shape[1]), labels[:m.shape[1]], rotation=90, fontsize=8)
        ax.set_yticks(range(m.shape[0]), labels[:m.shape[0]], fontsize=8)
    if annotate is None:
        annotate = max(m.shape) <= 12
    if annotate:
        middle = (m.max() + m.min()) / 2
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if m[i, j] > middle else "white")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_embedding(features, labels, classes: Sequence[str] | None = None, title: str | None = None,
                   max_points: int = 2000):
    """Scatter features ``[N, D]`` projected on their first two principal components, coloured by label."""
    plt = _pyplot()
    f = torch.as_tensor(features).detach().float().cpu()[:max_points]
    y = torch.as_tensor(labels).cpu()[:max_points].numpy()
    f = f - f.mean(0)
    _, _, v = torch.linalg.svd(f, full_matrices=False)
    xy = (f @ v[:2].T).numpy()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    points = ax.scatter(xy[:, 0], xy[:, 1], c=y, cmap="tab10", s=6)
    if classes is not None:
        handles, _ = points.legend_elements()
        ax.legend(handles, [classes[int(c)] for c in np.unique(y)], fontsize=7, loc="best")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------- live plot

def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, classic notebook, Colab, VS Code)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False
    try:
        from ipykernel.zmqshell import ZMQInteractiveShell
    except ImportError:
        return "IPKernelApp" in getattr(shell, "config", {})
    return isinstance(shell, ZMQInteractiveShell) or "IPKernelApp" in getattr(shell, "config", {})


def live_plot_allowed(environ: Mapping[str, str] | None = None) -> bool:
    """A live plot is drawn only in a notebook kernel, and never under nbgrader or ``SSLCOURSE_FAST``
    (:attr:`sslcourse.environment.Environment.live_plots_allowed`; ``environ`` defaults to the process's)."""
    return environment.read(environ).live_plots_allowed and in_notebook()


def _smooth(values: Sequence[float], window: int) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if len(v) < window or window < 2:
        return v
    kernel = np.ones(window) / window
    return np.convolve(v, kernel, mode="valid")


def metric_names(epochs: Sequence[Mapping]) -> list[str]:
    """The numeric per-epoch metrics of a history, in order of first appearance (their colour order)."""
    names: list[str] = []
    for record in epochs:
        for key, value in record.items():
            if key not in ("epoch", "loss", "time", "lr", "steps", "partial") and key not in names \
                    and isinstance(value, (int, float)) and not isinstance(value, bool):
                names.append(key)
    return names


def _draw_history(fig, losses: Sequence[float], epochs: Sequence[Mapping], title: str | None,
                  baselines: Mapping[str, float] | None = None, ylabel: str | None = None,
                  metrics: Sequence[str] | None = None) -> None:
    """Left: loss per step (raw, faint; smoothed, solid). Right: per-epoch numeric metrics.

    Metric ``i`` is always drawn in colour ``C{i+1}`` (``C0`` is the loss), so the live plot and
    the final plot of a run agree. ``baselines`` maps a metric name to a reference value (e.g. the
    kNN accuracy of a random encoder), drawn as a dashed line in that metric's colour. ``metrics``
    keeps only those per-epoch metrics (all by default), e.g. the accuracies and not a pixel error.
    """
    names = [n for n in metric_names(epochs) if metrics is None or n in metrics]
    baselines = dict(baselines or {})
    axes = fig.subplots(1, 2 if names or baselines else 1, squeeze=False)[0]
    ax = axes[0]
    if len(losses):
        steps = np.arange(1, len(losses) + 1)
        ax.plot(steps, losses, alpha=0.3, color="C0", lw=0.8)
        window = max(1, len(losses) // 50)
        smooth = _smooth(losses, window)
        ax.plot(steps[len(steps) - len(smooth):], smooth, color="C0", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.set_title(title or "training loss")
    if names or baselines:
        ax = axes[1]
        xs = [e.get("epoch", i + 1) for i, e in enumerate(epochs)]
        order = names + [b for b in baselines if b not in names]
        for i, name in enumerate(order):
            colour = f"C{(i + 1) % 10}"
            if name in names:
                ax.plot(xs, [e.get(name, np.nan) for e in epochs], marker="o", color=colour, label=name)
            if name in baselines:
                ax.axhline(float(baselines[name]), color=colour, ls="--", lw=1.2, label=f"{name}, random init")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel or "per-epoch metrics")
        if xs:
            ax.set_xlim(0.5, max(xs) + 0.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()


class LivePlot:
    """A loss curve that redraws in place while ``fit`` trains, cheaply.

    It renders a PNG at most every ``min_interval`` seconds (less often if drawing is slow:
    at most ~5% of the time goes to drawing) and replaces the previous
    one through an IPython display handle (``display(..., display_id=True)`` then
    ``handle.update``), which works the same in JupyterLab, the classic notebook,
    Colab and VS Code, with ipywidgets 7 or 8 or none, and leaves a progress bar in
    the same cell alone. Outside a notebook kernel (or when disabled) every method
    is a no-op.

    Args:
        title: title of the loss panel.
        enabled: ``None`` = :func:`live_plot_allowed`.
        min_interval: seconds between two redraws.
        baselines: reference values per metric, drawn dashed (e.g. ``{"knn": random_init_knn}``).
        ylabel: label of the metrics panel, e.g. ``"accuracy (%)"``.
        metrics: the per-epoch metrics to draw (default all), e.g. ``("knn", "linear")``.
    """

    def __init__(self, title: str | None = None, enabled: bool | None = None, min_interval: float = 1.5,
                  baselines: Mapping[str, float] | None = None, ylabel: str | None = None,
                 metrics: Sequence[str] | None = None):
        self.title = title
        self.baselines, self.ylabel = dict(baselines or {}), ylabel
        self.metrics = None if metrics is None else tuple(metrics)
        self.enabled = live_plot_allowed() if enabled is None else enabled
        self.min_interval = min_interval
        self._handle = None
        self._last_draw = -float("inf")
        self._draw_seconds = 0.0
        self.draws = 0

    def _render(self, losses: Sequence[float], epochs: Sequence[Mapping]) -> bytes:
        from matplotlib.figure import Figure  # not pyplot: the inline backend must not show it again

        fig = Figure(figsize=(10, 3.2), dpi=72)
        _draw_history(fig, losses, epochs, self.title, self.baselines, self.ylabel, self.metrics)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()

    def update(self, losses: Sequence[float], epochs: Sequence[Mapping] = (), force: bool = False) -> bool:
        """Redraw if ``min_interval`` has passed (or ``force``). Returns True when it drew."""
        if not self.enabled or not len(losses):
            return False
        now = time.monotonic()
        # A slow machine draws less often: drawing never takes more than ~5% of the time.
        interval = max(self.min_interval, 20 * self._draw_seconds)
        if not force and now - self._last_draw < interval:
            return False
        from IPython.display import Image, display

        image = Image(data=self._render(losses, epochs), format="png")
        if self._handle is None:
            self._handle = display(image, display_id=True)
        else:
            self._handle.update(image)
        self._last_draw = time.monotonic()
        self._draw_seconds = self._last_draw - now
        self.draws += 1
        return True

    def close(self, losses: Sequence[float], epochs: Sequence[Mapping] = ()) -> None:
        """Draw the final state."""
        self.update(losses, epochs, force=True)


def use_agg_backend() -> None:
    """Switch matplotlib to the non-interactive Agg backend (tests, scripts)."""
    matplotlib.use("Agg")
