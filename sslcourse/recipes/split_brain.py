"""Colorization and the split-brain autoencoder, as ``03_view_prediction`` runs them (Zhang, Isola &
Efros, 2016, "Colorful Image Colorization", ECCV; 2017, "Split-Brain Autoencoders: Unsupervised
Learning by Cross-Channel Prediction", CVPR).

Read top to bottom: the recipe table per preset, the two views' scales, the model container
:class:`SplitBrain`, the loader, the optimiser, :func:`run`, then the probes and the pictures.

**Two views of one image.** An RGB image in [0, 1] becomes CIE Lab with the student's ``rgb_to_lab``;
``split_views`` cuts it into the lightness view ``L`` ``[B, 1, H, W]`` and the colour view ``ab``
``[B, 2, H, W]``, both scaled to about [-1, 1]. One half of the network sees only ``L`` and predicts
``ab`` (colorization); the other sees only ``ab`` and predicts ``L``. Each half is the course's backbone
with half the channels (``models.make_backbone(budget, in_channels=.., width_divisor=2)``), so the
concatenated representation is as wide as every other notebook's, as in Zhang et al. (2017, Sec. 3).
The decoders read the last block's feature map (``[B, C, 4, 4]`` for 32×32 images), not the pooled
vector, so the prediction keeps the image's layout; the probes read the pooled vectors.

The graded parts come in as arguments at call time: ``rgb_to_lab``, ``split_views``,
``regression_loss``, ``split_brain_loss`` and ``split_brain_features`` (and ``lab_to_rgb`` for the
pictures). ``bench/bench_split_brain.py`` calls the same functions with the solution notebook's.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from . import count_train_images, flipped_batches, lookup_expected
from .. import evaluate, models, train
from ..budget import Budget
from ..data import DeviceBatches, ImageDataset, to_float
from ..distributed import SINGLE, Replicas, ShardedBatches
from ..plots import LivePlot

__all__ = ["RECIPE", "PROBE", "L_CENTER", "L_SCALE", "AB_SCALE", "XYZ_FROM_RGB", "D65_WHITE", "PARTS", "EXPECTED",
           "expected", "SplitBrain", "new_split_brain", "train_images", "loader", "optimizer_and_schedule", "run",
           "ViewFeatures", "probe", "view_scaling", "join_views", "colorize", "chroma"]

RECIPE = {   # every constant of the training recipe, one value per budget preset where it differs
    "epochs": {"smoke": 1, "cpu": 15, "gpu": 30},
    "train_images": {"smoke": 256, "cpu": None, "gpu": None},   # None: all of data.train_x
    "lr": 2e-3,                                            # Adam, as in 01 and 02
    "betas": (0.9, 0.999),
    "weight_decay": 0.0,
    "warmup": 0.05,                                        # fraction of the steps with a linear warm-up; then cosine to 0
    "flip": 0.5,                                           # horizontal flip probability
    "decoder_width": 32,                                   # channels of models.ConvDecoder's last stage
}
PROBE = {   # how the features are evaluated: the pooled last blocks, as in every method notebook
    "linear_iterations": {"smoke": 10, "cpu": 100, "gpu": 100},
    "knn_k": 200, "knn_temperature": 0.1,
}

# The views' scales: L in [0, 100] -> (L - 50) / 50 in [-1, 1]; a, b in about [-110, 110] -> ab / 110.
L_CENTER, L_SCALE, AB_SCALE = 50.0, 50.0, 110.0
# sRGB (linear, D65) -> CIE XYZ, and the D65 white point (CIE 1931 2° observer): the constants of
# scikit-image's rgb2lab, so that the student's conversion can be checked against it.
XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423),
                (0.212671, 0.715160, 0.072169),
                (0.019334, 0.119193, 0.950227))
D65_WHITE = (0.95047, 1.0, 1.08883)
PARTS = ("L→ab half", "ab→L half", "concatenation")   # what ViewFeatures can return


class SplitBrain(nn.Module):
    """The two halves of a split-brain autoencoder and their decoders.

    * ``encoder_L``: the L view ``[B, 1, H, W]`` -> pooled features ``[B, D/2]`` (a backbone with half the
      channels); ``encoder_L.forward_blocks(L)[-1]`` is its last feature map ``[B, C, H/8, W/8]``;
    * ``decoder_ab``: that map -> the predicted ab view ``[B, 2, H, W]`` (unbounded: a regression);
    * ``encoder_ab``: the ab view ``[B, 2, H, W]`` -> ``[B, D/2]``, and its map likewise;
    * ``decoder_L``: its map -> the predicted L view ``[B, 1, H, W]``;
    * ``feature_dim``: D, the width of the concatenated representation.

    It has no ``forward``: the student's ``split_brain_loss`` and ``split_brain_features`` write the paths.
    """

    def __init__(self, encoder_L: nn.Module, encoder_ab: nn.Module, decoder_ab: nn.Module, decoder_L: nn.Module):
        super().__init__()
        self.encoder_L, self.encoder_ab = encoder_L, encoder_ab
        self.decoder_ab, self.decoder_L = decoder_ab, decoder_L
        self.feature_dim = encoder_L.feature_dim + encoder_ab.feature_dim

    def forward(self, *_):
        raise TypeError("SplitBrain has no forward: call model.encoder_L, model.decoder_ab, model.encoder_ab and "
                        "model.decoder_L (see split_brain_loss and split_brain_features in the notebook).")


def new_split_brain(budget: Budget, size: int, seed: int) -> SplitBrain:
    """Two half-width backbones (1 and 2 input channels) and two decoders from their last maps, seeded."""
    torch.manual_seed(seed)
    encoder_L = models.make_backbone(budget, in_channels=1, width_divisor=2)
    encoder_ab = models.make_backbone(budget, in_channels=2, width_divisor=2)
    map_channels, map_size = encoder_L.block_channels[-1], size // 8     # three 2x downsamplings in both backbones
    decoder_ab = models.ConvDecoder(map_channels, 2, size, in_size=map_size, width=RECIPE["decoder_width"])
    decoder_L = models.ConvDecoder(map_channels, 1, size, in_size=map_size, width=RECIPE["decoder_width"])
    return SplitBrain(encoder_L, encoder_ab, decoder_ab, decoder_L)


def train_images(data: ImageDataset, budget: Budget) -> int:
    """How many images training uses under this budget (``RECIPE["train_images"]``; None means all)."""
    return count_train_images(data, budget, RECIPE["train_images"])


def loader(data: ImageDataset, budget: Budget, device, seed: int = 0, *, replicas: Replicas = SINGLE,
           shards: int | None = None) -> DeviceBatches | ShardedBatches:
    """Flipped training images in [0, 1] (not normalised: they become Lab), ``budget.batch_size`` per step.
    With several processes (or ``shards``) each process serves its shards (``ShardedBatches``)."""
    return flipped_batches(data, budget, device, limits=RECIPE["train_images"], flip=RECIPE["flip"], seed=seed,
                           replicas=replicas, shards=shards)


def optimizer_and_schedule(model: SplitBrain, epochs: int, steps_per_epoch: int):
    """Adam over both halves and both decoders; a short linear warm-up, then cosine to 0."""
    optimizer = torch.optim.Adam(model.parameters(), lr=RECIPE["lr"], betas=RECIPE["betas"],
                                 weight_decay=RECIPE["weight_decay"])
    total = epochs * steps_per_epoch
    return optimizer, train.cosine_schedule(optimizer, total, warmup_steps=int(RECIPE["warmup"] * total))


def _float32(function: Callable) -> Callable:
    """``function`` run outside autocast on float32 inputs: the colour conversion's powers and the sums of
    squared errors need float32; the networks themselves run under bf16 autocast where that is faster."""
    def in_float32(*tensors):
        with torch.autocast(tensors[0].device.type, enabled=False):
            return function(*(t.float() for t in tensors))
    return in_float32


def _check_lab(lab, images: torch.Tensor) -> None:
    if not (isinstance(lab, torch.Tensor) and lab.shape == images.shape and lab.is_floating_point()):
        got = f"{lab.dtype} {tuple(lab.shape)}" if isinstance(lab, torch.Tensor) else type(lab).__name__
        raise ValueError(f"rgb_to_lab(images {tuple(images.shape)}) must return a float tensor of the same shape, "
                         f"got {got}.")
    if not torch.isfinite(lab).all():
        raise ValueError("rgb_to_lab returned NaN or Inf for images in [0, 1]; check the powers of negative or "
                         "zero values (the gamma curve and the cube root).")


def run(session, *, rgb_to_lab: Callable, split_views: Callable, regression_loss: Callable,
        split_brain_loss: Callable, data: ImageDataset | None = None, epochs: int | None = None,
        live_plot: bool = True, progress: bool = True, desc: str | None = None,
        deadline_s: float | None = None, replicas: Replicas = SINGLE, shards: int | None = None,
        checkpoint=None) -> tuple[SplitBrain, train.History]:
    """Train a split-brain autoencoder with the student's functions; return ``(model, history)``.

    Args:
        session: what :func:`sslcourse.setup` returned (budget, device, seed, data).
        rgb_to_lab: ``[B, 3, H, W]`` in [0, 1] -> Lab ``[B, 3, H, W]`` (exercise 1).
        split_views: Lab -> ``(L_view [B, 1, H, W], ab_view [B, 2, H, W])`` (exercise 2a).
        regression_loss: ``(prediction, target) -> scalar`` (exercise 2b), run in float32.
        split_brain_loss: ``(model, lab, *, split_views, regression_loss) -> (loss, parts)`` with
            ``parts["L→ab"]`` and ``parts["ab→L"]`` the two halves' losses (exercise 3a).
        data: default ``session.data``. ``epochs``: default ``RECIPE["epochs"]``.
        live_plot, progress, desc, deadline_s, checkpoint: passed to :func:`sslcourse.train.fit`.
        replicas, shards: several processes (``sslcourse pretrain split_brain`` under ``torchrun``).

    Records per step ``"L→ab"`` and ``"ab→L"``, the two halves' losses.
    """
    data = data if data is not None else session.data
    budget, device = session.budget, session.device
    size = data.train_x.shape[-1]
    model = new_split_brain(budget, size, session.seed)
    batches = loader(data, budget, device, seed=session.seed, replicas=replicas, shards=shards)
    epochs = budget.pick(**RECIPE["epochs"]) if epochs is None else epochs
    optimizer, scheduler = optimizer_and_schedule(model, epochs, len(batches))
    to_lab, loss32 = _float32(rgb_to_lab), _float32(regression_loss)
    _check_lab(to_lab(to_float(data.train_x[:2])), to_float(data.train_x[:2]))   # fail here, naming the exercise

    def loss_fn(model, batch):
        images, _class_labels = batch      # thrown away: the image's own channels are the targets
        value, parts = split_brain_loss(model, to_lab(images), split_views=split_views, regression_loss=loss32)
        return value, {name: parts[name].detach() for name in ("L→ab", "ab→L")}

    desc = desc or "split-brain autoencoder"
    plot = LivePlot(title=desc, ylabel="loss", metrics=("L→ab", "ab→L"), enabled=None if live_plot else False)
    history = train.fit(model, loss_fn, batches, optimizer, epochs, device=device, scheduler=scheduler,
                        live_plot=plot, progress=progress, desc=desc, deadline_s=deadline_s, replicas=replicas,
                        checkpoint=checkpoint)
    return model, history


class ViewFeatures(nn.Module):
    """The frozen split-brain model as an encoder of normalised RGB images, for :mod:`sslcourse.evaluate`.

    ``forward``: normalised RGB ``[B, 3, H, W]`` (as ``evaluate`` feeds every encoder) -> back to [0, 1] ->
    the student's ``rgb_to_lab`` -> ``split_brain_features(model, lab, split_views=)`` ``[B, D]``, of which
    ``part`` keeps the L→ab half's columns (the first D/2), the ab→L half's (the last D/2) or all of them.
    """

    def __init__(self, model: SplitBrain, part: str, *, mean, std, rgb_to_lab: Callable, split_views: Callable,
                 split_brain_features: Callable):
        super().__init__()
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r}.")
        self.model, self.part = model, part
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.to_lab, self.split_views, self.features = _float32(rgb_to_lab), split_views, split_brain_features
        self.feature_dim = model.feature_dim if part == PARTS[2] else model.encoder_L.feature_dim
        self.train(model.training)      # evaluate restores this mode afterwards: leave the model as it was

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = (x.float() * self.std + self.mean).clamp(0, 1)
        features = self.features(self.model, self.to_lab(rgb), split_views=self.split_views)
        half = self.model.encoder_L.feature_dim
        if self.part == PARTS[0]:
            return features[:, :half]
        if self.part == PARTS[1]:
            return features[:, half:]
        return features


def probe(model: SplitBrain, part: str, data: ImageDataset, device, budget: Budget, *, rgb_to_lab: Callable,
          split_views: Callable, split_brain_features: Callable) -> dict:
    """``{"knn": %, "linear": %}`` of one part (:data:`PARTS`): kNN (k=200, T=0.1) and the linear probe."""
    encoder = ViewFeatures(model, part, mean=data.mean, std=data.std, rgb_to_lab=rgb_to_lab, split_views=split_views,
                           split_brain_features=split_brain_features)
    return evaluate.evaluate_encoder(encoder, data, device, k=PROBE["knn_k"], temperature=PROBE["knn_temperature"],
                                     linear_iterations=budget.pick(**PROBE["linear_iterations"]))


def view_scaling(split_views: Callable) -> dict | None:
    """The affine scaling a ``split_views`` applies, measured: ``{"L_center", "L_scale", "ab_scale"}`` such that
    ``L_view = (L - L_center) / L_scale`` and ``ab_view = ab / ab_scale``; ``None`` where it is not such a map.

    03 saves it with the run, so that 08_summary feeds the saved halves the views the student's own
    ``split_views`` made, without the package holding the exercise's answer."""
    lab = torch.tensor([[0.0, 0.0, 0.0], [100.0, 100.0, -100.0], [50.0, -40.0, 60.0]]).view(3, 3, 1, 1)
    try:
        with torch.no_grad():
            L_view, ab_view = split_views(lab)
        L_view, ab_view = L_view.double().flatten(1)[:, 0], ab_view.double().flatten(2)[:, :, 0]
        L_scale = 100.0 / float(L_view[1] - L_view[0])
        L_center, ab_scale = -float(L_view[0]) * L_scale, 100.0 / float(ab_view[1, 0])
    except Exception:    # a student's unfinished split_views: 08 falls back to the course's scaling
        return None
    expected_L, expected_ab = (lab[:, 0, 0, 0].double() - L_center) / L_scale, lab[:, 1:, 0, 0].double() / ab_scale
    if not (torch.allclose(L_view, expected_L, atol=1e-4) and torch.allclose(ab_view, expected_ab, atol=1e-4)):
        return None
    return {"L_center": L_center, "L_scale": L_scale, "ab_scale": ab_scale}


def join_views(L_view: torch.Tensor, ab_view: torch.Tensor) -> torch.Tensor:
    """The inverse of the views' scaling: ``[B, 1, H, W]`` and ``[B, 2, H, W]`` -> Lab ``[B, 3, H, W]``."""
    return torch.cat([L_view * L_SCALE + L_CENTER, ab_view * AB_SCALE], dim=1)


@torch.no_grad()
def colorize(model: SplitBrain, images_uint8: torch.Tensor, device, *, rgb_to_lab: Callable, lab_to_rgb: Callable,
             split_views: Callable) -> dict:
    """The rows of the colorization figure, each ``[B, 3, H, W]`` RGB in [0, 1] on the CPU, in eval mode:

    ``"grey input"`` (the L view with a = b = 0), ``"colorized (L→ab)"`` (the true L with the predicted ab),
    ``"truth"``, and ``"lightness from colour (ab→L)"`` (the predicted L with the true ab).
    Also ``"lab"``, ``"lab_colorized"``: the true and the colorized Lab, for :func:`chroma`.
    """
    model.to(device).eval()
    rgb = to_float(images_uint8.to(device))
    lab = _float32(rgb_to_lab)(rgb)
    L_view, ab_view = split_views(lab)
    ab_predicted = model.decoder_ab(model.encoder_L.forward_blocks(L_view)[-1]).float()
    L_predicted = model.decoder_L(model.encoder_ab.forward_blocks(ab_view)[-1]).float()
    to_rgb = _float32(lab_to_rgb)
    lab_colorized = join_views(L_view, ab_predicted)
    return {"grey input": to_rgb(join_views(L_view, torch.zeros_like(ab_view))).cpu(),
            "colorized (L→ab)": to_rgb(lab_colorized).cpu(),
            "truth": rgb.cpu(),
            "lightness from colour (ab→L)": to_rgb(join_views(L_predicted, ab_view)).cpu(),
            "lab": lab.cpu(), "lab_colorized": lab_colorized.cpu()}


def chroma(lab: torch.Tensor) -> float:
    """Mean chroma sqrt(a² + b²) over all pixels of Lab ``[B, 3, H, W]``: how saturated the colours are."""
    return lab[:, 1:].float().pow(2).sum(dim=1).sqrt().mean().item()


EXPECTED = {   # measured with bench/bench_split_brain.py (bench/RESULTS.md), seed 0
    ("cpu", "cifar10"): {
        "knn_random_init": 34.0, "linear_random_init": 49.9, "knn": 40.7, "linear": 53.7,
        "halves": {"L→ab half": {"knn": 37.5, "linear": 46.8}, "ab→L half": {"knn": 34.2, "linear": 39.8}},
        "summary": "after 15 epochs the L→ab half reached kNN 37.5% / linear 46.8% (random init 31.1% / 40.7%), the ab→L "
                   "half 34.2% / 39.8% (28.9% / 36.5%) and the concatenation 40.7% / 53.7% (34.0% / 49.9%): above "
                   "each half, above 01's denoising autoencoder (35.4% / 49.6%) and 02's context encoder (37.9% / 51.0%), "
                   "below 05's RotNet (43.5% / 56.3%). The colorizations kept 55% of the true chroma. Seed 1: concatenation 41.7% / 52.5% "
                   "(random init 34.5% / 49.5%): two seeds differ by 1 to 1.5 points.",
    },
}


def expected(budget: Budget | str, dataset: str) -> dict | None:
    """Our measured numbers for this preset and dataset (see :data:`EXPECTED`), or ``None``."""
    return lookup_expected(EXPECTED, budget, dataset)
