"""The student's own runs read back for 08_summary: one entry per method, encoders rebuilt, figures.

Every method notebook (00-07) saves its run through :func:`sslcourse.results.save_run` with the same
metric keys (``knn``, ``linear``, ``train_seconds``, ``history``, and ``label_efficiency`` where the
notebook measured it). :func:`collect` reads them under the active preset and never fails because a
run is absent or unreadable: the entry then says which notebook to run. :func:`build_encoder`
rebuilds an encoder from its saved weights, with the input the notebook probed it on (whole images
at 64 px for 04 and 06, CIE Lab views for 03's split-brain halves), and the ``plot_*`` functions draw
08's figures, each with the reference runs of :mod:`sslcourse.reference` as grey "ghost" marks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from . import evaluate, models
from .budget import Budget
from .recipes.patch_position import upsampled_features
from .reference import FAMILIES, FRACTIONS, METHODS, Method, ReferenceRow, curve_from_history, is_number, primary
from .results import CorruptedRunError, Run, RunNotFoundError, device_description, load_run

__all__ = ["Entry", "Encoder", "collect", "references_for", "build_encoder", "encoder_features",
           "Features", "measure_label_efficiency", "complete", "format_table", "family_order", "FAMILY_COLOURS", "plot_probe_bars",
           "plot_label_efficiency", "plot_embeddings", "plot_retrieval", "plot_training_curves", "PAPERS",
           "pretext_evidence"]

FAMILY_COLOURS = {"baseline": "tab:gray", "reconstructive": "tab:orange", "predictive": "tab:blue",
                  "contrastive": "tab:green"}
GHOST = dict(facecolor="none", edgecolor="0.45", linestyle="--", linewidth=1.0)


@dataclass
class Entry:
    """One method's result in the student's saved runs.

    ``status`` is ``"ok"``, ``"missing"`` (no saved run), ``"corrupted"`` (a file cannot be read) or
    ``"other dataset"`` (saved on another dataset than this session's); ``message`` says what to do.
    ``label_efficiency`` maps 0.01 / 0.1 / 1.0 to accuracy (%); ``efficiency_source`` says whether the
    notebook saved it or 08 measured it from the saved encoder.
    """

    method: Method
    status: str
    message: str
    knn: float | None = None
    linear: float | None = None
    label_efficiency: dict | None = None
    efficiency_source: str | None = None
    random_init: dict | None = None
    seconds: float | None = None
    device: str | None = None
    dataset: str | None = None
    saved_at: str | None = None
    curve: dict | None = None
    run: Run | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def label(self) -> str:
        return self.method.label


def _number(value) -> float | None:
    return float(value) if is_number(value) else None


def _efficiency(value) -> dict | None:
    if not isinstance(value, Mapping):
        return None
    out = {}
    for key, accuracy in value.items():
        try:
            fraction = float(key)
        except (TypeError, ValueError):
            continue
        match = [f for f in FRACTIONS if math.isclose(f, fraction)]
        if match and _number(accuracy) is not None:
            out[match[0]] = float(accuracy)
    return out or None


def _entry_from_run(m: Method, run: Run, dataset: str | None) -> Entry:
    metrics = run.metrics
    part = metrics.get(m.part, {}) if m.part else metrics
    if not isinstance(part, Mapping):
        part = {}
    saved_on = metrics.get("dataset")
    device = run.info.get("device")
    entry = Entry(method=m, status="ok", message="", knn=_number(part.get("knn")), linear=_number(part.get("linear")),
                  dataset=saved_on, device=device, saved_at=run.info.get("saved_at"), run=run)
    entry.label_efficiency = _efficiency(part.get("label_efficiency"))
    entry.efficiency_source = "saved by the notebook" if entry.label_efficiency else None
    if m.key == "random_init":
        entry.seconds = 0.0
    else:
        entry.seconds = _number(part.get("train_seconds"))
        if m.part is None and _number(metrics.get("knn_random_init")) is not None:
            entry.random_init = {"knn": _number(metrics.get("knn_random_init")),
                                 "linear": _number(metrics.get("linear_random_init"))}
        if m.part is None and isinstance(metrics.get("history"), Mapping):
            entry.curve = curve_from_history(metrics["history"])
    if dataset is not None and saved_on is not None and saved_on != dataset:
        entry.status = "other dataset"
        entry.message = (f"saved on {saved_on!r}, but this session uses {dataset!r}: rerun {m.notebook} with "
                         f"the same dataset to compare it here")
    elif entry.knn is None and entry.linear is None:
        entry.status = "corrupted"
        entry.message = f"the saved run holds no kNN or linear-probe number: rerun {m.notebook} to the end"
    return entry


def collect(budget: Budget | str | None = None, dataset: str | None = None,
            methods: Sequence[Method] = METHODS) -> list[Entry]:
    """One :class:`Entry` per method, read from the saved runs of the active preset (or ``budget``).

    ``dataset``: this session's dataset name; a run saved on another dataset gets the status
    ``"other dataset"``. Never raises for a missing or unreadable run.
    """
    runs: dict[str, Run | Exception] = {}
    entries = []
    for m in methods:
        if m.run not in runs:
            try:
                runs[m.run] = load_run(m.run, budget=budget)
            except (RunNotFoundError, CorruptedRunError, ValueError) as error:
                runs[m.run] = error
        found = runs[m.run]
        if isinstance(found, RunNotFoundError):
            entries.append(Entry(m, "missing", f"no saved run {m.run!r}: run {m.notebook} to the end (its last "
                                               "cells save the run)"))
        elif isinstance(found, Exception):
            entries.append(Entry(m, "corrupted", f"{str(found).splitlines()[0]}"))
        else:
            entries.append(_entry_from_run(m, found, dataset))
    return entries


def references_for(rows: Iterable[ReferenceRow], preset: str, dataset: str) -> tuple[dict, str]:
    """``({method key: ReferenceRow}, caption)``: the reference rows to draw beside a student's runs.

    Under the smoke preset (whose numbers are noise) and where the course has no row for this
    preset and dataset, the cpu preset's CIFAR-10 rows are shown, and the caption says so.
    """
    rows = list(rows)
    chosen = {m.key: primary(rows, m.key, preset, dataset) for m in METHODS}
    if any(r is not None and r.measured for r in chosen.values()):
        return {k: r for k, r in chosen.items() if r is not None}, f"reference: the course's runs ({preset} preset, {dataset})"
    fallback = {m.key: primary(rows, m.key, "cpu", "cifar10") for m in METHODS}
    why = ("smoke numbers are noise" if preset == "smoke" else
           f"the course has no measured {preset}-preset run on {dataset} yet")
    return ({k: r for k, r in fallback.items() if r is not None},
            f"reference: the course's cpu-preset runs on CIFAR-10, for scale only ({why})")


# --------------------------------------------------------------------------- encoders and features

@dataclass
class Encoder:
    """A rebuilt encoder: ``module`` maps normalised RGB images to features, through ``features`` when set."""

    module: nn.Module
    features: Callable | None
    note: str


class _LabViews(nn.Module):
    """03's split-brain model as an encoder of normalised RGB: Lab from scikit-image, each half on its view,
    scaled as the student's own ``split_views`` scaled it (``scaling``: what 03 measured and saved with the run,
    :func:`sslcourse.recipes.split_brain.view_scaling`; the course's constants for a run saved without it)."""

    def __init__(self, model: nn.Module, mean, std, scaling: Mapping | None = None):
        super().__init__()
        from .recipes.split_brain import AB_SCALE, L_CENTER, L_SCALE
        known = isinstance(scaling, Mapping) and all(is_number(scaling.get(k)) and scaling[k] != 0
                                                     for k in ("L_scale", "ab_scale")) and is_number(
                                                         scaling.get("L_center"))
        self.model = model
        self.scale = ((float(scaling["L_center"]), float(scaling["L_scale"]), float(scaling["ab_scale"])) if known
                      else (L_CENTER, L_SCALE, AB_SCALE))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from skimage.color import rgb2lab
        rgb = (x.float() * self.std + self.mean).clamp(0, 1)
        lab = rgb2lab(rgb.permute(0, 2, 3, 1).cpu().double().numpy())
        lab = torch.from_numpy(lab).permute(0, 3, 1, 2).to(x.device, torch.float32)
        centre, l_scale, ab_scale = self.scale
        L_view, ab_view = (lab[:, :1] - centre) / l_scale, lab[:, 1:] / ab_scale
        return torch.cat([self.model.encoder_L(L_view), self.model.encoder_ab(ab_view)], dim=1).float()


def build_encoder(entry: Entry, budget: Budget, data, seed: int = 0) -> Encoder:
    """The encoder of ``entry`` with its saved weights, fed as its notebook probed it.

    The random-init encoder is rebuilt from ``seed`` (00 saves no weights for it).

    Raises:
        ValueError: the run saved no encoder, or its weights do not fit the preset's backbone;
            the message says why.
    """
    m = entry.method
    if m.key == "random_init":
        torch.manual_seed(seed)
        return Encoder(models.make_backbone(budget), None, f"the backbone at initialisation (seed {seed}), rebuilt here")
    if not entry.ok:
        raise ValueError(f"{m.label}: {entry.message}")
    if entry.run is None or entry.run.state_dict is None:
        raise ValueError(f"{m.label}: {m.notebook} saved no encoder weights with its run")
    if m.key == "split_brain":
        from .recipes.split_brain import new_split_brain
        module, features, note = new_split_brain(budget, data.train_x.shape[-1], seed), None, "L and ab views (CIE Lab)"
    else:
        module = models.make_backbone(budget)
        upsample = m.key in ("relative_position", "jigsaw", "cpc")
        features = upsampled_features if upsample else None
        note = "whole images resized to 64 px, as its notebook probed it" if upsample else "pooled last block"
    try:
        entry.run.load_encoder(module)
    except (RuntimeError, KeyError, ValueError) as error:
        raise ValueError(f"{m.label}: the saved weights do not fit the {budget.name} preset's backbone "
                         f"({str(error).splitlines()[0][:160]}); rerun {m.notebook}") from None
    if m.key == "split_brain":
        module = _LabViews(module, data.mean, data.std, entry.run.metrics.get("views"))
    return Encoder(module.eval(), features, note)


def encoder_features(encoder: Encoder, images_uint8: torch.Tensor, data, device) -> torch.Tensor:
    """Features ``[N, D]`` (float32, on ``device``) of uint8 images, as the encoder's notebook computed them."""
    return evaluate.extract_features(encoder.module, images_uint8, mean=data.mean, std=data.std, device=device,
                                     features=encoder.features)


class Features:
    """The train and test features of each method's encoder, computed once and shared by the label-efficiency
    probes, the embeddings and the retrieval. ``get(entry)`` returns ``(train_f, test_f)``, or ``None`` when
    the entry has no usable encoder; ``skipped[key]`` then says why."""

    def __init__(self, budget: Budget, data, device, seed: int = 0):
        self.budget, self.data, self.device, self.seed = budget, data, device, seed
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.skipped: dict[str, str] = {}
        self.notes: dict[str, str] = {}

    def get(self, entry: Entry) -> tuple[torch.Tensor, torch.Tensor] | None:
        key = entry.method.key
        if key not in self.cache and key not in self.skipped:
            try:
                encoder = build_encoder(entry, self.budget, self.data, self.seed)
            except ValueError as error:
                self.skipped[key] = str(error)
                return None
            self.cache[key] = (encoder_features(encoder, self.data.train_x, self.data, self.device),
                               encoder_features(encoder, self.data.test_x, self.data, self.device))
            self.notes[key] = encoder.note
        return self.cache.get(key)


def measure_label_efficiency(train_f: torch.Tensor, test_f: torch.Tensor, data, budget: Budget) -> dict:
    """``{0.01: %, 0.1: %, 1.0: %}``: linear probes of frozen features on class-balanced label subsets."""
    return evaluate.label_efficiency(train_f, data.train_y, test_f, data.test_y, fractions=FRACTIONS,
                                     iterations=budget.pick(smoke=10, cpu=100, gpu=100))


def complete(entries: Sequence[Entry], features: Features) -> list[str]:
    """Measure, from the saved encoders, what the notebooks did not save: the label-efficiency curve of every
    run without one and, when 00 was not run, the random-init encoder's kNN, linear probe and curve (it needs
    no training). Fills the entries in place; returns one line per encoder saying what happened."""
    said = []
    data, budget = features.data, features.budget
    for entry in entries:
        m = entry.method
        if m.key == "random_init" and not entry.ok:
            train_f, test_f = features.get(entry)
            entry.label_efficiency = measure_label_efficiency(train_f, test_f, data, budget)
            entry.knn = evaluate.knn_accuracy(train_f, data.train_y, test_f, data.test_y, k=200, temperature=0.1,
                                              num_classes=data.num_classes)
            entry.linear, entry.seconds = entry.label_efficiency[1.0], 0.0
            entry.status, entry.dataset, entry.efficiency_source = "ok", data.name, "measured here"
            entry.device = device_description()
            entry.message = f"00_foundations was not run: measured here on a random network (seed {features.seed})"
            said.append(f"{m.label}: {entry.message}")
            continue
        if not entry.ok or entry.label_efficiency or m.key == "supervised":
            continue
        found = features.get(entry)
        if found is None:
            said.append(f"{m.label}: no label-efficiency curve ({features.skipped[m.key]})")
            continue
        entry.label_efficiency = measure_label_efficiency(*found, data, budget)
        entry.efficiency_source = "measured here from the saved encoder"
        said.append(f"{m.label}: label efficiency measured here from the saved encoder: "
                    + ", ".join(f"{f:.0%} {a:.1f}%" for f, a in entry.label_efficiency.items()))
    return said


# --------------------------------------------------------------------------- the table

def family_order(method: Method, taxonomy: str = "objective") -> tuple[int, str]:
    family = method.family if taxonomy == "objective" else method.lecture_family
    return (["baseline", *FAMILIES].index(family), family)


def _pct(value) -> str:
    return "—" if value is None else f"{value:.1f}"


def _time(seconds) -> str:
    if seconds is None:
        return "—"
    return "none" if seconds == 0 else (f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s")


def _clipped(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, cut after a whole word and marked with an ellipsis."""
    if len(text) <= width:
        return text
    cut = text[:width - 1].rstrip(" ,;(")
    return (cut[:cut.rfind(" ")].rstrip(" ,;(") if " " in cut else cut) + "…"


def format_table(entries: Sequence[Entry], references: Mapping[str, ReferenceRow], reference_caption: str) -> str:
    """The summary table as text: for each method its family, pretraining time and device, kNN, linear
    probe and label efficiency at 1% / 10% / 100%; the student's row ("yours") above the reference's."""
    head = (f"{'method':<26}{'family':<16}{'':<6}{'pretraining':>12}  {'device':<34}{'kNN':>6}{'linear':>8}"
            f"{'1%':>7}{'10%':>7}{'100%':>7}")
    lines = [head, "-" * len(head)]
    for entry in entries:
        m = entry.method
        efficiency = entry.label_efficiency or {}
        if entry.ok:
            device = _clipped(entry.device or "not recorded", 32)
            mine = (f"{_time(entry.seconds):>12}  {device:<34}{_pct(entry.knn):>6}{_pct(entry.linear):>8}"
                    + "".join(f"{_pct(efficiency.get(f)):>7}" for f in FRACTIONS))
        else:
            mine = f"  {entry.status}: {entry.message}"
        lines.append(f"{m.label:<26}{m.family:<16}{'yours':<6}{mine}")
        ref = references.get(m.key)
        if ref is None:
            continue
        if ref.measured:
            ref_efficiency = ref.label_efficiency or {}
            minutes = None if ref.minutes is None else 60 * ref.minutes
            shown = (f"{_time(minutes):>12}  {_clipped(ref.device or '', 32):<34}{_pct(ref.knn):>6}"
                     f"{_pct(ref.linear):>8}" + "".join(f"{_pct(ref_efficiency.get(f)):>7}" for f in FRACTIONS))
        else:
            shown = f"  {ref.note}"
        lines.append(f"{'':<26}{'':<16}{'ref':<6}{shown}")
    lines.append("-" * len(head))
    lines.append(f"yours: your saved runs; ref: {reference_caption}. kNN: weighted kNN (k=200, T=0.1); linear, 1%, 10%, "
                 "100%: linear probe with that share of the labels (the supervised row: trained end to end on it).")
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures

def _pyplot():
    import matplotlib.pyplot as plt
    return plt


def plot_probe_bars(entries: Sequence[Entry], references: Mapping[str, ReferenceRow], *,
                    taxonomy: str = "objective", title: str | None = None):
    """kNN and linear probe per method, grouped and coloured by family; the reference as a dashed ghost
    bar beside each, and the random-init encoder as a dashed line."""
    plt = _pyplot()
    ordered = sorted(entries, key=lambda e: (family_order(e.method, taxonomy), METHODS.index(e.method)))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    x = np.arange(len(ordered))
    drawn_families: set[str] = set()
    random = next((e for e in entries if e.method.key == "random_init" and e.ok), None)
    baselines = (("yours", random), ("reference", references.get("random_init")))
    for ax, metric, name in zip(axes, ("knn", "linear"), ("kNN accuracy (%)", "linear-probe accuracy (%)")):
        # the random-init line: yours where you ran 00, else the reference's
        baseline, baseline_source = next(((getattr(row, metric), source) for source, row in baselines
                                          if row is not None and getattr(row, metric) is not None), (None, None))
        for i, entry in enumerate(ordered):
            family = entry.method.family if taxonomy == "objective" else entry.method.lecture_family
            value = getattr(entry, metric) if entry.ok else None
            if value is not None:
                ax.bar(i - 0.2, value, 0.4, color=FAMILY_COLOURS[family])
                ax.text(i - 0.2, value + 0.5, f"{value:.0f}", ha="center", fontsize=7)
                drawn_families.add(family)
            else:   # above the dotted line, so the two do not cross
                ax.text(i - 0.2, (baseline or 0) + 1.5, "not run", rotation=90, ha="center", va="bottom", fontsize=7,
                        color="0.4")
            ref = references.get(entry.method.key)
            if ref is not None and getattr(ref, metric) is not None:
                ax.bar(i + 0.2, getattr(ref, metric), 0.4, **GHOST)
                ax.text(i + 0.2, getattr(ref, metric) + 0.5, f"{getattr(ref, metric):.0f}", ha="center", fontsize=6,
                        color="0.45")
        if baseline is not None:
            ax.axhline(baseline, color="0.3", linestyle=":", linewidth=1)
        ax.set_xticks(x, [e.label for e in ordered], rotation=40, ha="right", fontsize=8)
        ax.set_ylabel(name)
        ax.set_title(name.split(" (")[0])
        ax.grid(axis="y", alpha=0.3)
    from matplotlib.patches import Patch
    from matplotlib.lines import Line2D
    used = sorted(drawn_families, key=lambda f: ["baseline", *FAMILIES].index(f))
    handles = [Patch(color=FAMILY_COLOURS[f], label=f"yours: {f}") for f in used]
    handles.append(Patch(label="reference (ghost)", **GHOST))
    if baseline_source is not None:
        handles.append(Line2D([], [], color="0.3", linestyle=":", label=f"random init ({baseline_source})"))
    axes[1].legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title or "Probe accuracy per method, grouped by family", fontsize=11)
    fig.tight_layout()
    return fig


def plot_label_efficiency(entries: Sequence[Entry], references: Mapping[str, ReferenceRow], title: str | None = None):
    """Linear-probe accuracy against the share of labels: each of your encoders (solid), the supervised
    baseline and the random-init encoder of 00 (black and grey, dashed), and the course's reference curves dotted in
    the same colours, each named in the legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    xs = [100 * f for f in FRACTIONS]
    drawn = 0
    for entry in entries:
        m = entry.method
        ref = references.get(m.key)
        if ref is not None and ref.label_efficiency and all(ref.label_efficiency.get(f) is not None for f in FRACTIONS):
            colour = {"supervised": "black", "random_init": "0.45"}.get(m.key, FAMILY_COLOURS.get(m.family, "0.6"))
            ax.plot(xs, [ref.label_efficiency[f] for f in FRACTIONS], color=colour, alpha=0.45, linestyle=":",
                    linewidth=1.2, label=f"reference: {m.label}")
        if not (entry.ok and entry.label_efficiency) or any(f not in entry.label_efficiency for f in FRACTIONS):
            continue
        style = {"supervised": dict(color="black", linestyle="--", linewidth=2),
                 "random_init": dict(color="0.45", linestyle="--", linewidth=2)}.get(
            m.key, dict(color=FAMILY_COLOURS[m.family], linewidth=1.5))
        ax.plot(xs, [entry.label_efficiency[f] for f in FRACTIONS], marker="o", label=m.label, **style)
        drawn += 1
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:g}%" for x in xs])
    ax.set_xlabel("labelled training images used by the probe")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "Label efficiency: the linear probe with 1%, 10% and 100% of the labels")
    if not drawn:
        ax.text(0.5, 0.5, "none of your runs has a label-efficiency curve yet", transform=ax.transAxes, ha="center",
                color="0.4")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def _project(features: torch.Tensor, how: str, seed: int) -> np.ndarray:
    f = features.detach().float().cpu()
    f = (f - f.mean(0)) / f.std(0).clamp_min(1e-6)
    if how == "pca":
        _, _, v = torch.linalg.svd(f, full_matrices=False)
        return (f @ v[:2].T).numpy()
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits
    perplexity = float(min(30, max(5, (len(f) - 1) // 4)))
    # One OpenMP thread: on a shared 2-core machine the second thread's spinning made t-SNE 10-50x slower
    # (128 points: 12 s with 2 threads, 0.2 s with one; 500 points: 24 s against 1.8 s).
    with threadpool_limits(1):
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                    max_iter=250 if len(f) <= 300 else 500).fit_transform(f.numpy())


def plot_embeddings(features: Mapping[str, torch.Tensor], labels: torch.Tensor, classes: Sequence[str], *,
                    how: str = "pca", seed: int = 0, title: str | None = None):
    """One panel per encoder: its features of the same test images in 2-D (``how`` = "pca" or "tsne",
    scikit-learn's t-SNE), coloured by class. Labels are used for the colours only."""
    plt = _pyplot()
    names = list(features)
    cols = min(5, max(1, len(names)))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.9 * cols, 2.8 * rows + 0.4), squeeze=False)
    y = torch.as_tensor(labels).cpu().numpy()
    for ax in axes.flat:
        ax.axis("off")
    points = None
    for ax, name in zip(axes.flat, names):
        xy = _project(features[name], how, seed)
        points = ax.scatter(xy[:, 0], xy[:, 1], c=y, cmap="tab10", vmin=-0.5, vmax=9.5, s=5)
        ax.set_title(name, fontsize=8)
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{'PC' if how == 'pca' else 't-SNE'} 1", fontsize=7)
        ax.set_ylabel(f"{'PC' if how == 'pca' else 't-SNE'} 2", fontsize=7)
    if points is not None:
        handles, _ = points.legend_elements()
        present = sorted(set(int(c) for c in y))
        fig.legend([handles[i] for i in range(len(present))], [classes[c] for c in present], fontsize=7,
                   loc="lower center", ncol=min(10, len(present)), bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(title or f"The same test images in each encoder's feature space ({how.upper()})", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def _framed_strip(images: torch.Tensor, colours: Sequence[tuple], pad: int = 2, gap: int = 4) -> np.ndarray:
    """uint8 images ``[n, 3, H, W]`` side by side in one RGB array, each in a frame of its colour (0-255)."""
    n, _, h, w = images.shape
    strip = np.full((h + 2 * pad, n * (w + 2 * pad + gap) - gap, 3), 255, dtype=np.uint8)
    for i in range(n):
        left = i * (w + 2 * pad + gap)
        strip[:, left:left + w + 2 * pad] = colours[i]
        strip[pad:pad + h, left + pad:left + pad + w] = images[i].permute(1, 2, 0).cpu().numpy()
    return strip


def plot_retrieval(query: torch.Tensor, query_label: int, neighbours: Mapping[str, tuple], classes: Sequence[str],
                   title: str | None = None):
    """The same query image (left, grey frame) and its nearest training images under each encoder (one row each);
    ``neighbours[name] = (images [k, 3, H, W] uint8, labels [k], similarities [k])``. A green frame marks a
    neighbour of the query's class, a red one another class; the count on the right sums them up.
    (One image per row, not one axes per picture: a figure of 10 × 7 axes took seconds to draw.)"""
    plt = _pyplot()
    names = list(neighbours)
    k = max((len(v[0]) for v in neighbours.values()), default=0)
    green, red, grey = (44, 160, 44), (214, 39, 40), (128, 128, 128)
    fig, axes = plt.subplots(max(1, len(names)), 1, figsize=(1.0 * (k + 1) + 2.6, 0.95 * max(1, len(names)) + 0.6),
                             squeeze=False)
    for row, name in enumerate(names):
        images, labels, _similarities = neighbours[name]
        same = [int(label) == int(query_label) for label in labels]
        strip = _framed_strip(torch.cat([query[None].cpu(), images.cpu()]),
                              [grey] + [green if s else red for s in same])
        ax = axes[row, 0]
        ax.imshow(strip)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
        ax.yaxis.set_label_position("left")
        ax.text(1.01, 0.5, f"{sum(same)}/{len(same)}", transform=ax.transAxes, va="center", fontsize=8)
    axes[0, 0].set_title(f"query ({classes[int(query_label)]}, grey frame), then its {k} nearest training images: "
                         "green = same class, red = another", fontsize=8)
    fig.suptitle(title or "Nearest training images of one query under each encoder (cosine similarity)", fontsize=10)
    fig.tight_layout()
    return fig


def _pick_metric(mine: Mapping | None, ghost: Mapping | None) -> str | None:
    """The curve to draw: a metric both have (kNN before the linear probe before the loss), else yours, else the
    reference's."""
    order = ("knn", "linear", "loss")
    for wanted in ((mine or {}).keys() & (ghost or {}).keys(), (mine or {}).keys(), (ghost or {}).keys()):
        for metric in order:
            if metric in wanted:
                return metric
    return None


def plot_training_curves(entries: Sequence[Entry], references: Mapping[str, ReferenceRow], title: str | None = None):
    """One panel per method with a saved history: your per-epoch curve (kNN, else the linear probe, else
    the loss) over the reference's curve of the same metric (grey, dashed) where the course has one."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    panels = []
    for entry in entries:
        if entry.method.family == "baseline":
            continue
        ref = references.get(entry.method.key)
        ghost = ref.curve if ref is not None else None
        mine = entry.curve if entry.ok else None
        metric = _pick_metric(mine, ghost)
        if metric is not None:
            panels.append((entry, metric, mine, ghost))
    if not panels:
        fig, ax = plt.subplots(figsize=(6, 1.6))
        ax.axis("off")
        ax.text(0.5, 0.5, "no training curve to show: none of your runs saved a history, and no reference has one",
                ha="center", va="center", fontsize=9)
        return fig
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.7 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (entry, metric, mine, ghost) in zip(axes.flat, panels):
        colour = FAMILY_COLOURS[entry.method.family]
        if ghost and metric in ghost:
            values = ghost[metric]
            ax.plot(range(1, len(values) + 1), values, color="0.55", linestyle="--", label="reference")
        if mine and metric in mine:
            values = mine[metric]
            ax.plot(range(1, len(values) + 1), values, color=colour, marker="o", markersize=3, label="yours")
        missing = [who for who, curve in (("yours", mine), ("reference", ghost)) if not (curve and metric in curve)]
        said = {"yours": "no curve of yours", "reference": "no reference curve"}
        ax.set_title(entry.label + (f"\n({', '.join(said[who] for who in missing)})" if missing else ""), fontsize=8)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel({"knn": "kNN (%)", "linear": "linear probe (%)", "loss": "training loss"}[metric], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or "Training curves per epoch: yours over the reference's (ghost)", fontsize=10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------- evidence for the reflection

# The papers' numbers the lecture quotes (../shared/LECTURE.md, sections 4.2.1, 4.2.4, 4.2.5; the ImageNet rows are the
# lecture's CPC and CPC v2 slides, ../shared/lecture/), for question 3.
PAPERS: tuple[tuple[str, dict[str, str]], ...] = (
    ("Pathak et al. (2016), context encoders: PASCAL VOC 2007 classification, AlexNet fine-tuned (%)",
     {"ImageNet labels": "78.2", "random Gaussian init": "53.3", "autoencoder": "53.8",
      "relative position (Doersch et al.)": "55.3", "context encoder": "56.5"}),
    ("Gidaris et al. (2018), RotNet on CIFAR-10: classifier on block 2 after 100 epochs (%)",
     {"4 rotations": "89.06", "8 rotations": "88.51", "0° + 180°": "87.46", "90° + 270°": "85.52"}),
    ("van den Oord et al. (2018), CPC on LibriSpeech: linear probes, phone / speaker (%)",
     {"random init": "27.6 / 1.87", "MFCC features": "39.7 / 17.6", "CPC": "64.6 / 97.4",
      "supervised": "74.6 / 98.5"}),
    ("van den Oord et al. (2018) and CPC v2 (Hénaff et al. 2019): ImageNet linear top-1, ResNet-101 unless noted (%)",
     {"relative position": "36.2", "colorization": "39.6", "CPC v1": "48.7",
      "rotation (RevNet-50 x4)": "55.4", "MoCo (ResNet-50 x4)": "68.6", "CPC v2 (ResNet-161)": "71.5"}),
)


def _row(name: str, pretext, knn, linear, course: str = "", width: int = 48) -> str:
    cells = (_pct(_number(value)) for value in (pretext, knn, linear))
    return f"  {_clipped(str(name), width):<{width}} " + " ".join(f"{c:>{w}}" for c, w in zip(cells, (8, 7, 7))) + f"  {course}"


def _pretext_rows(entry: Entry, course: Mapping | None) -> list[str]:
    """The rows of one saved run: each setting's pretext accuracy next to its probes."""
    metrics, key = entry.run.metrics, entry.method.key
    if key == "relative_position" and isinstance(metrics.get("settings"), Mapping):
        known = (course or {}).get("settings", {})
        return [_row(name, row.get("pretext_accuracy"), row.get("knn"), row.get("linear"),
                     _course_cell(known.get(name)))
                for name, row in metrics["settings"].items() if isinstance(row, Mapping)]
    if key == "jigsaw":
        return [_row("jigsaw", metrics.get("pretext_accuracy"), entry.knn, entry.linear,
                     _course_cell((course or {}).get("jigsaw")))]
    if key == "rotation" and isinstance(metrics.get("rotation_table"), Mapping):
        rows = []
        for name, row in metrics["rotation_table"].items():
            blocks = sorted(int(k[len("linear_block"):]) for k in row if k.startswith("linear_block"))
            last = blocks[-1] if blocks else None
            rows.append(_row(f"{name} (last block)", row.get("pretext"), row.get(f"knn_block{last}"),
                             row.get(f"linear_block{last}"), _paper_cell(row.get("paper_cifar10"))))
        return rows
    return []


def _paper_cell(value) -> str:
    # Gidaris et al.'s CIFAR-10 table trains a non-linear classifier on block 2, not a linear probe on the last block.
    return f"paper, non-linear on block 2: {value:g}" if is_number(value) else ""


def _course_cell(row) -> str:
    if not isinstance(row, Mapping):
        return ""
    return "course: " + " / ".join(_pct(_number(row.get(k))) for k in ("pretext_accuracy", "knn", "linear"))


def _gain_line(label: str, seconds, knn, linear, random_init, whose: str) -> str:
    minutes = seconds / 60 if is_number(seconds) and seconds > 0 else None
    parts = []
    for probe, value in (("kNN", knn), ("linear", linear)):
        base = (random_init or {}).get(probe.lower() if probe == "kNN" else probe)
        if is_number(value) and is_number(base):
            gain = value - base
            parts.append(f"{probe} {gain:+.1f}" + (f" ({gain / minutes:+.2f}/min)" if minutes else ""))
        else:
            parts.append(f"{probe} —")
    return f"  {label:<28} {_time(seconds):>8}  {'  '.join(parts)}  {whose}"


def pretext_evidence(entries: Sequence[Entry], references: Mapping[str, ReferenceRow], budget: Budget | str,
                     dataset: str) -> str:
    """What 08's questions 2 and 3 ask for and the one table does not show, as text.

    * the pretext accuracy of every setting of 04 (relative position, jigsaw) and 05 (rotation sets) next to its
      probes, from the student's saved runs, beside the course's measured numbers (04's ``EXPECTED`` for this
      preset and dataset) or the paper's (05); where a run is missing, the course's numbers, marked as such;
    * each method's probe gain over its own random init, and per minute of training (the student's run, or
      else the reference row ``references[key]``, marked as such);
    * the papers' numbers the lecture quotes (:data:`PAPERS`).
    """
    from .recipes import patch_position

    by_key = {e.method.key: e for e in entries}
    course = patch_position.expected(budget, dataset) or {}
    lines = ["Pretext accuracy against the probes (%):",
             f"  {'run / setting':<48} {'pretext':>8} {'kNN':>7} {'linear':>7}  beside it"]
    for key in ("relative_position", "jigsaw", "rotation"):
        entry = by_key.get(key)
        if entry is None:
            continue
        rows = _pretext_rows(entry, course) if entry.ok else []
        if rows:
            lines += rows
            continue
        lines.append(f"  {entry.label}: {entry.message or 'its run saved no pretext accuracy'}")
        if key == "relative_position":
            lines += [_row(name, row.get("pretext_accuracy"), row.get("knn"), row.get("linear"), "the course's run")
                      for name, row in course.get("settings", {}).items()]
        elif key == "jigsaw" and course.get("jigsaw"):
            row = course["jigsaw"]
            lines.append(_row("jigsaw", row.get("pretext_accuracy"), row.get("knn"), row.get("linear"),
                              "the course's run"))
    lines += ["  03's split-brain halves regress colour and lightness (no accuracy); 06 and 07 show theirs while "
              "training.", "", "Gain over each method's own random init, and per minute of training:"]
    for entry in entries:
        if entry.method.family == "baseline":
            continue
        if entry.ok:
            lines.append(_gain_line(entry.label, entry.seconds, entry.knn, entry.linear, entry.random_init, "yours"))
            continue
        row = references.get(entry.method.key)
        if row is not None and row.measured:
            seconds = row.minutes * 60 if is_number(row.minutes) else None
            lines.append(_gain_line(entry.label, seconds, row.knn, row.linear, row.random_init,
                                    f"reference run ({row.preset}, {row.dataset})"))
        else:
            lines.append(f"  {entry.label:<28} no run of yours and no reference row")
    lines += ["", "The papers' numbers (the lecture's tables; other data, networks and protocols than yours):"]
    for source, table in PAPERS:
        lines.append(f"  {source}")
        lines.append("    " + ";  ".join(f"{name} {value}" for name, value in table.items()))
    return "\n".join(lines)
