"""RotNet's training and probes, as ``05_rotation`` runs them (Gidaris, Singh & Komodakis, 2018,
"Unsupervised Representation Learning by Predicting Image Rotations", ICLR).

Read top to bottom: the rotation sets and the recipe table per preset, the model container
:class:`RotNet`, the loader, the optimizer and schedule, :func:`run`, then the probes of every
block and the pretext accuracy on held-out images.

The graded parts come in as arguments: ``rotate_batch(x, angles)``, ``rotnet_loss(model, x,
angles, rotate=)`` and ``block_features(encoder, x, block)``. They are passed at call time, so a
fix to one exercise reaches training without rerunning the cells that define the others.
``bench/bench_rotation.py`` calls the same functions with the solution notebook's exercises.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import augment, evaluate, models, train
from ..budget import Budget
from ..data import DeviceBatches, ImageDataset, normalize, to_float
from ..distributed import SINGLE, Replicas, ShardedBatches, device_batches

__all__ = ["ROTATION_SETS", "PAPER_CIFAR10", "RECIPE", "PROBE", "RotNet", "random_encoder", "rotnet_epochs",
           "train_images", "loader", "optimizer_and_schedule", "run", "probe_blocks", "rotation_predictions",
           "rotation_accuracy"]

ROTATION_SETS = {   # the rows of the lecture's table (Gidaris et al., 2018, Table 2)
    "4 rotations": (0, 90, 180, 270),
    "8 rotations": (0, 45, 90, 135, 180, 225, 270, 315),
    "0°+180°": (0, 180),
    "90°+270°": (90, 270),
}
PAPER_CIFAR10 = {"4 rotations": 89.06, "8 rotations": 88.51, "0°+180°": 87.46, "90°+270°": 85.52}

RECIPE = {   # every constant of the training recipe, one value per budget preset
    "epochs": {"smoke": 2, "cpu": 4, "gpu": 30},         # of the 4-rotation run (even: 8 rotations train half)
    "train_images": {"smoke": 64, "cpu": None, "gpu": None},   # pretext images (None: all of data.train_x)
    "lr": {"smoke": 0.05, "cpu": 0.05, "gpu": 0.1},      # for budget.batch_size rotated images per step
    "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,  # the paper's SGD settings
    "warmup": 0.05,                                      # fraction of the steps with a linear warm-up; then cosine to 0
    "flip": 0.5,                                         # horizontal flip probability
}
PROBE = {   # how the features are evaluated
    "blocks": {"smoke": (2, 4), "cpu": (1, 2, 3, 4), "gpu": (1, 2, 3, 4)},
    "linear_iterations": {"smoke": 10, "cpu": 100, "gpu": 100},  # L-BFGS iterations of the linear probe
    "knn_k": 200, "knn_temperature": 0.1,
}


class RotNet(nn.Module):
    """Backbone + linear rotation classifier: images ``[B, 3, H, W]`` -> logits ``[B, n_rotations]``."""

    def __init__(self, encoder: nn.Module, num_rotations: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, num_rotations)

    def forward(self, images):
        if images.is_cuda:   # the rotated batch comes out of torch.cat in the default layout
            images = images.contiguous(memory_format=torch.channels_last)
        return self.head(self.encoder(images))


def random_encoder(budget: Budget, seed: int) -> nn.Module:
    """The backbone at initialisation: exactly the weights RotNet training starts from."""
    torch.manual_seed(seed)
    return models.make_backbone(budget)


def rotnet_epochs(budget: Budget, angles) -> int:
    """Epochs for a rotation set: the same number of rotated images as the 4-rotation run."""
    epochs4 = budget.pick(**RECIPE["epochs"])
    if (epochs4 * 4) % len(angles):
        raise ValueError(f"RECIPE['epochs'] = {epochs4} cannot be split evenly for {len(angles)} rotations.")
    return epochs4 * 4 // len(angles)


def train_images(data: ImageDataset, budget: Budget) -> int:
    """How many images RotNet trains on under this budget (``RECIPE["train_images"]``; None means all)."""
    limit = budget.pick(**RECIPE["train_images"])
    return len(data.train_x) if limit is None else min(limit, len(data.train_x))


def loader(data: ImageDataset, budget: Budget, angles, device, seed: int = 0, *, replicas: Replicas = SINGLE,
           shards: int | None = None) -> DeviceBatches | ShardedBatches:
    """Flipped training images, ``budget.batch_size / n`` per step (each becomes n rotated images).
    With several processes (or ``shards``) each process serves its shards (``ShardedBatches``)."""
    n = train_images(data, budget)
    kwargs = dict(augment=augment.RandomHorizontalFlip(RECIPE["flip"]), mean=data.mean, std=data.std, seed=seed)
    return device_batches(data.train_x[:n], data.train_y[:n], budget.batch_size // len(angles), device, replicas,
                          shards=shards, **kwargs)


def optimizer_and_schedule(model: nn.Module, budget: Budget, epochs: int, steps_per_epoch: int):
    """SGD with Nesterov momentum (the paper's), a short linear warm-up, then cosine to 0."""
    optimizer = torch.optim.SGD(model.parameters(), lr=budget.pick(**RECIPE["lr"]), momentum=RECIPE["momentum"],
                                nesterov=RECIPE["nesterov"], weight_decay=RECIPE["weight_decay"])
    total = epochs * steps_per_epoch
    return optimizer, train.cosine_schedule(optimizer, total, warmup_steps=int(RECIPE["warmup"] * total))


def run(session, angles, *, rotate_batch: Callable, rotnet_loss: Callable, data: ImageDataset | None = None,
        epochs: int | None = None, live_plot: bool = True, progress: bool = True, desc: str | None = None,
        deadline_s: float | None = None, replicas: Replicas = SINGLE, shards: int | None = None,
        checkpoint=None) -> tuple[RotNet, train.History]:
    """Train RotNet on the rotation set ``angles`` with the student's loss; return ``(model, history)``.

    Args:
        session: what :func:`sslcourse.setup` returned (budget, device, seed, data).
        angles: the rotation set, e.g. ``ROTATION_SETS["4 rotations"]``.
        rotate_batch, rotnet_loss: exercises 1 and 2; ``rotnet_loss(model, x, angles, rotate=rotate_batch)``
            returns ``(loss, accuracy as a fraction)``, recorded as ``"rotation acc"``.
        data: default ``session.data``; ``epochs``: default :func:`rotnet_epochs`.
        live_plot, progress, desc, deadline_s, checkpoint: passed to :func:`sslcourse.train.fit`.
        replicas, shards: training on several processes (``sslcourse pretrain rotation`` under ``torchrun``).
    """
    data = data if data is not None else session.data
    budget, device = session.budget, session.device
    rotate_batch(to_float(data.train_x[:2]), angles)     # fail here, naming the exercise, not inside fit
    model = RotNet(random_encoder(budget, session.seed), len(angles))
    batches = loader(data, budget, angles, device, seed=session.seed, replicas=replicas, shards=shards)
    epochs = rotnet_epochs(budget, angles) if epochs is None else epochs
    optimizer, scheduler = optimizer_and_schedule(model, budget, epochs, len(batches))

    def loss_fn(model, batch):
        images, _class_labels = batch      # thrown away: only the rotations teach
        loss, accuracy = rotnet_loss(model, images, angles, rotate=rotate_batch)
        return loss, {"rotation acc": accuracy}

    history = train.fit(model, loss_fn, batches, optimizer, epochs, device=device, scheduler=scheduler,
                        live_plot=live_plot, progress=progress, desc=desc or f"RotNet {len(angles)} rotations",
                        deadline_s=deadline_s, replicas=replicas, checkpoint=checkpoint)
    return model, history


def probe_blocks(encoder: nn.Module, data: ImageDataset, device, budget: Budget, *,
                 block_features: Callable) -> dict:
    """``{block: {"knn": %, "linear": %}}``: kNN (k=200, T=0.1) and linear probe of each block's pooled
    features, as the student's ``block_features(encoder, x, block)`` computes them."""
    return {block: evaluate.evaluate_encoder(
                encoder, data, device, features=lambda enc, x, block=block: block_features(enc, x, block),
                k=PROBE["knn_k"], temperature=PROBE["knn_temperature"],
                linear_iterations=budget.pick(**PROBE["linear_iterations"]))
            for block in budget.pick(**PROBE["blocks"])}


@torch.no_grad()
def rotation_predictions(model: RotNet, images_uint8: torch.Tensor, angles, data: ImageDataset, device, *,
                         rotate_batch: Callable):
    """The pretext task on held-out images: (rotated images in [0, 1], true labels, softmax ``[n*B, n]``)."""
    model.to(device).eval()
    x01 = to_float(images_uint8.to(device))
    rotated01, labels = rotate_batch(x01, angles)
    probabilities = F.softmax(model(normalize(rotated01, data.mean, data.std)).float(), dim=1)
    return rotated01, labels, probabilities


def rotation_accuracy(model: RotNet, data: ImageDataset, angles, device, *, rotate_batch: Callable,
                      images: int = 2000) -> float:
    """Pretext accuracy (%) on the first ``images`` test images, every rotation of each."""
    correct = total = 0
    for start in range(0, min(images, len(data.test_x)), 500):
        _, labels, p = rotation_predictions(model, data.test_x[start:min(start + 500, images)], angles, data,
                                            device, rotate_batch=rotate_batch)
        correct += (p.argmax(1) == labels).sum().item()
        total += len(labels)
    return 100.0 * correct / total
