"""One module per method notebook: the method's training, read top to bottom.

Each recipe module holds the recipe table per preset, the model container, the loader, the
optimizer and schedule, and ``run(session, ..., deadline_s=None)``, which trains through
:func:`sslcourse.train.fit`. The functions students write come in as arguments, so graded
code stays in the notebook, and the notebook's locked cells and the ``bench/`` scripts call
the same ``run``: one implementation is measured, and it is the one students run.

* :mod:`.denoising`: ``01_denoising_autoencoders`` (Vincent et al., 2008, 2010);
* :mod:`.context_encoder`: ``02_context_encoders`` (Pathak et al., 2016);
* :mod:`.split_brain`: ``03_view_prediction`` (Zhang et al., 2016, 2017);
* :mod:`.patch_position`: ``04_patch_position`` (Doersch et al., 2015; Noroozi & Favaro, 2016);
* :mod:`.rotation`: ``05_rotation`` (RotNet, Gidaris et al., 2018);
* :mod:`.cpc`: ``06_cpc`` (Contrastive Predictive Coding, van den Oord et al., 2018);
* :mod:`.moco`: ``07_moco`` (MoCo v2, He et al., 2020; Chen et al., 2020).

Each module's ``EXPECTED`` table holds what the course measured per ``(preset, dataset)``, and
its ``expected(budget, dataset)`` reads it through :func:`lookup_expected`. The reconstructive
methods (01, 02, 03) share :func:`count_train_images` and :func:`flipped_batches`.
"""
from __future__ import annotations

from .. import augment
from ..distributed import SINGLE, device_batches


def lookup_expected(table: dict, budget, dataset: str) -> dict | None:
    """``table[(preset name, dataset)]``, or ``None`` where the course has no measured run.

    ``budget`` is a :class:`sslcourse.budget.Budget` or a preset name."""
    name = budget if isinstance(budget, str) else budget.name
    return table.get((name, dataset))


def count_train_images(data, budget, limits: dict) -> int:
    """How many training images a recipe uses: ``limits`` per preset (``RECIPE["train_images"]``), None for all."""
    limit = budget.pick(**limits)
    return len(data.train_x) if limit is None else min(limit, len(data.train_x))


def flipped_batches(data, budget, device, *, limits: dict, flip: float, seed: int = 0, replicas=SINGLE,
                    shards: int | None = None):
    """The first :func:`count_train_images` training images as a ``DeviceBatches`` of ``budget.batch_size``,
    in [0, 1] and not normalised (they are also the targets), each flipped horizontally with probability ``flip``.
    With several processes (``replicas``, under ``torchrun``) or ``shards``: a ``ShardedBatches`` instead."""
    n = count_train_images(data, budget, limits)
    return device_batches(data.train_x[:n], data.train_y[:n], min(budget.batch_size, n), device, replicas,
                          shards=shards, augment=augment.RandomHorizontalFlip(flip), seed=seed)
