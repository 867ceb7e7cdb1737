"""Fake but valid saved runs of notebooks 00-07, for the tests of 08_summary.

Each run is saved through :func:`sslcourse.results.save_run` with the metric keys and the kind of
encoder its notebook saves (read from the ``save_run`` calls in ``solutions/*/*.ipynb``): the
backbone of the preset for most, 03's whole split-brain model, MoCo's backbone with its split batch
norm. The numbers are made up (and say so in ``method``); the encoders are untrained networks with
distinct seeds, so the features differ from method to method.
"""
from __future__ import annotations

import torch

from sslcourse import models, results
from sslcourse.recipes import moco, split_brain
from sslcourse.train import History


def _history(epochs: int, start: float, step: float, *, monitor: bool) -> History:
    records = []
    for e in range(1, epochs + 1):
        record = {"epoch": e, "loss": 2.0 / e, "lr": 0.1, "time": 1.5}
        if monitor:
            record["knn"] = start + step * e
        records.append(record)
    return History([2.0 / (1 + i) for i in range(4 * epochs)], records)


def _backbone(budget, seed: int):
    torch.manual_seed(seed)
    return models.make_backbone(budget)


def save_fake_runs(budget, dataset: str = "embedded", skip: tuple[str, ...] = ()) -> list[str]:
    """Save one fake run per notebook 00-07 (and 04's jigsaw) under ``budget``'s preset; returns the names."""
    saved = []

    def save(name, metrics, encoder):
        if name not in skip:
            results.save_run(name, {"method": f"fake {name}", "dataset": dataset, **metrics}, encoder, budget=budget)
            saved.append(name)

    random_curve = {0.01: 11.0, 0.1: 14.0, 1.0: 20.0}
    save("00_foundations", {
        "raw_pixels": {"knn": 12.0, "linear": 15.0},
        "random_init": {"knn": 14.0, "linear": 20.0, "label_efficiency": random_curve},
        "supervised": {"knn": 40.0, "linear": 45.0, "label_efficiency": {0.01: 15.0, 0.1: 30.0, 1.0: 45.0},
                       "steps": 8},
    }, _backbone(budget, 100))
    common = {"knn_random_init": 14.0, "linear_random_init": 20.0, "epochs": 2, "train_seconds": 3.0}
    for offset, name in enumerate(("01_denoising_autoencoders", "02_context_encoders")):
        save(name, {**common, "knn": 15.0 + offset, "linear": 21.0 + offset,
                    "history": _history(2, 14.0, 0.5, monitor=name.startswith("01"))}, _backbone(budget, 101 + offset))
    torch.manual_seed(103)
    save("03_view_prediction", {**common, "knn": 17.0, "linear": 23.0, "history": _history(2, 0, 0, monitor=False)},
         split_brain.new_split_brain(budget, 32, 103))
    settings = {"gap + jitter, full colour": {"pretext_accuracy": 41.0, "knn": 18.0, "linear": 24.0},
                "no gap, no jitter, full colour (the shortcut)": {"pretext_accuracy": 83.0, "knn": 13.0, "linear": 19.5}}
    save("04_patch_position", {**common, "knn": 18.0, "linear": 24.0, "pretext_accuracy": 41.0, "settings": settings,
                               "history": _history(2, 0, 0, monitor=False)}, _backbone(budget, 104))
    save("04_patch_position_jigsaw", {**common, "knn": 16.5, "linear": 22.0, "pretext_accuracy": 57.0,
                                      "history": _history(2, 0, 0, monitor=False)}, _backbone(budget, 105))
    rotation_table = {"4 rotations": {"pretext": 71.0, "paper_cifar10": 89.06, "linear_block1": 21.0,
                                      "linear_block4": 26.0, "knn_block1": 15.0, "knn_block4": 19.0}}
    save("05_rotation", {**common, "knn": 19.0, "linear": 26.0, "rotation_table": rotation_table,
                         "history": _history(2, 0, 0, monitor=False)}, _backbone(budget, 106))
    save("06_cpc", {**common, "knn": 17.5, "linear": 24.0, "history": _history(2, 0, 0, monitor=False)},
         _backbone(budget, 107))
    model = moco.new_moco(budget, moco.moco_recipe(budget), seed=108)
    save("07_moco", {**common, "knn": 21.0, "linear": 28.0, "label_efficiency": {0.01: 13.0, 0.1: 20.0, 1.0: 28.0},
                     "label_efficiency_random_init": random_curve, "history": _history(2, 14.0, 2.0, monitor=True)},
         model.backbone)
    return saved
