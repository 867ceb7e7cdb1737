"""Context encoders' training and probes, as ``02_context_encoders`` runs them (Pathak, Krähenbühl,
Donahue, Darrell & Efros, 2016, "Context Encoders: Feature Learning by Inpainting", CVPR).

Read top to bottom: the recipe table per preset, the model container :class:`ContextEncoder`, the
loader, the one optimizer over both networks, the divergence watch, :func:`run`, then the probe and
the fills the figures show.

**Two networks, one step.** A GAN is usually trained with two optimizers and two backward passes
per batch. Here the student's joint loss returns ``λ_rec L_rec + λ_adv L_G + L_D`` and routes the
gradients itself: the discriminator's loss sees the fill detached, so it reaches only the
discriminator; the generator's loss sees the discriminator frozen, so it reaches only the encoder
and decoder. One backward pass then gives each network the gradient of its own loss, and one Adam
with a parameter group per network (its own learning rate and betas, its own moments per
parameter) makes both updates. That is :func:`sslcourse.train.fit` unchanged, with its checkpoints,
deadline and Ctrl-C. The two updates are simultaneous (both read the same batch and the weights
before the step) where the paper's code alternates them; the difference is one step of staleness.

The graded parts come in as arguments at call time: a mask ``make_mask(batch, size, fraction,
generator) -> bool [B, 1, S, S]``, ``masked_input``, ``reconstruction_loss``, ``discriminator_loss``,
``generator_loss`` and the joint ``context_encoder_loss``. ``bench/bench_context_encoder.py``
calls the same functions with the solution notebook's exercises.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from . import count_train_images, flipped_batches, lookup_expected
from .. import evaluate, models, train
from ..budget import Budget
from ..distributed import SINGLE, Replicas
from ..data import DeviceBatches, ImageDataset, to_float
from ..plots import LivePlot
from ..train import NonFiniteLossError

__all__ = ["MASK_TYPES", "RECIPE", "PROBE", "EXPECTED", "expected", "ContextEncoder", "AdversarialDivergenceError",
           "DivergenceWatch", "random_encoder", "new_context_encoder", "train_images", "loader",
           "optimizer_and_schedule", "run", "probe", "fill_holes", "inpaint", "hole_mse", "discriminator_accuracy"]

MASK_TYPES = ("central", "random blocks", "random regions")

RECIPE = {   # every constant of the training recipe, one value per budget preset where it differs
    "epochs": {"smoke": 1, "cpu": 10, "gpu": 30},          # each of the two main runs (L2 only, joint)
    "sweep_epochs": {"smoke": 1, "cpu": 5, "gpu": 8},      # each run of the mask comparison
    "train_images": {"smoke": 256, "cpu": None, "gpu": None},   # None: all of data.train_x
    "mask": "random regions",                              # the main runs' mask (Pathak et al.: best features)
    "fraction": 0.25,                                      # of each image's pixels (the paper: up to 1/4)
    "lambda_rec": 1.0,
    "lambda_adv": 1.0,                                     # the joint run (the L2 run has 0); see the docstring of run
    "lr": 2e-3,                                            # Adam on the encoder and decoder, as in 01
    "betas": (0.9, 0.999),
    "lr_discriminator": 2e-4, "betas_discriminator": (0.5, 0.999),   # DCGAN's (Radford et al., 2016)
    "warmup": 0.05,                                        # fraction of the steps with a linear warm-up; then cosine to 0
    "flip": 0.5,                                           # horizontal flip probability
    "decoder_width": 32,                                   # channels of models.ConvDecoder's last stage
    "discriminator_width": 32,                             # channels of models.Discriminator's first stage
}
PROBE = {   # how the features are evaluated: the pooled last block, as in every method notebook
    "linear_iterations": {"smoke": 10, "cpu": 100, "gpu": 100},
    "knn_k": 200, "knn_temperature": 0.1,
}


class ContextEncoder(nn.Module):
    """The course's backbone as the encoder, a decoder back to the image, and the adversary.

    * ``encoder``: normalised images ``[B, 3, 32, 32]`` -> features ``[B, feature_dim]`` (the pooled last
      block, the representation every notebook probes);
    * ``decoder``: ``[B, feature_dim]`` -> logits ``[B, 3, 32, 32]``; ``torch.sigmoid`` turns them into
      the prediction F(·) in (0, 1), of the whole image (the loss reads only the hole);
    * ``discriminator``: images ``[B, 3, 32, 32]`` in [0, 1] -> ``[B]`` logits, real > 0 > fake;
    * ``mean``, ``std``: the dataset's per-channel statistics, for ``sslcourse.data.normalize``;
    * ``fill``: the dataset's mean colour in [0, 1], what the hole is filled with before encoding.

    It has no ``forward``: the student's ``context_encoder_loss`` writes the path.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, discriminator: nn.Module, mean, std):
        super().__init__()
        self.encoder, self.decoder, self.discriminator = encoder, decoder, discriminator
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.fill = self.mean

    def forward(self, *_):
        raise TypeError("ContextEncoder has no forward: call model.encoder, model.decoder and "
                        "model.discriminator (see context_encoder_loss in the notebook).")


class AdversarialDivergenceError(NonFiniteLossError):
    """Adversarial training diverged (a loss became NaN or Inf, or the discriminator won outright)."""


def random_encoder(budget: Budget, seed: int) -> nn.Module:
    """The backbone at initialisation: exactly the weights training starts from."""
    torch.manual_seed(seed)
    return models.make_backbone(budget)


def new_context_encoder(budget: Budget, data: ImageDataset, seed: int) -> ContextEncoder:
    """The encoder of :func:`random_encoder`, a fresh decoder and a fresh discriminator."""
    encoder = random_encoder(budget, seed)
    size = data.train_x.shape[-1]
    decoder = models.ConvDecoder(encoder.feature_dim, 3, size, width=RECIPE["decoder_width"])
    discriminator = models.Discriminator(3, size, width=RECIPE["discriminator_width"])
    return ContextEncoder(encoder, decoder, discriminator, data.mean, data.std)


def train_images(data: ImageDataset, budget: Budget) -> int:
    """How many images training uses under this budget (``RECIPE["train_images"]``; None means all)."""
    return count_train_images(data, budget, RECIPE["train_images"])


def loader(data: ImageDataset, budget: Budget, device, seed: int = 0, *, replicas: Replicas = SINGLE,
           shards: int | None = None) -> DeviceBatches:
    """Flipped training images in [0, 1] (not normalised: they are the targets), ``budget.batch_size`` per step."""
    return flipped_batches(data, budget, device, limits=RECIPE["train_images"], flip=RECIPE["flip"], seed=seed,
                           replicas=replicas, shards=shards)


def optimizer_and_schedule(model: ContextEncoder, epochs: int, steps_per_epoch: int, lr_scale: float = 1.0):
    """One Adam, two parameter groups: the encoder and decoder, and the discriminator, each with its own
    learning rate (times ``lr_scale``) and betas; a short linear warm-up, then cosine to 0 for both."""
    generator = [*model.encoder.parameters(), *model.decoder.parameters()]
    optimizer = torch.optim.Adam([
        {"params": generator, "lr": lr_scale * RECIPE["lr"], "betas": RECIPE["betas"]},
        {"params": list(model.discriminator.parameters()), "lr": lr_scale * RECIPE["lr_discriminator"],
         "betas": RECIPE["betas_discriminator"]},
    ])
    total = epochs * steps_per_epoch
    return optimizer, train.cosine_schedule(optimizer, total, warmup_steps=int(RECIPE["warmup"] * total))


class DivergenceWatch:
    """Stops adversarial training with a clear message instead of NaN plots.

    It keeps each step's three losses on the device and, every ``every`` steps, reads them back in one
    transfer. It raises :class:`AdversarialDivergenceError`

    * when one of them is NaN or Inf at any step, naming it (before ``fit``'s generic check sees the sum);
    * when the discriminator has won outright: over the steps since the last check its mean loss is below
      ``won_below`` (it is sure of every real image and every fill) and the generator's mean adversarial
      loss above ``lost_above`` (a fill passes for real with probability about e^-lost_above), for
      ``patience`` checks in a row. From then on the adversarial gradient says only "this is fake", and
      with a large λ_adv it swamps the reconstruction.

    ``lambda_adv == 0`` (the L2 run) checks only for NaN: the generator ignores the adversary there.
    """

    NAMES = ("reconstruction", "generator", "discriminator")

    def __init__(self, lambda_adv: float, *, every: int = 10, won_below: float = 1e-3, lost_above: float = 10.0,
                 patience: int = 3):
        self.lambda_adv, self.every = lambda_adv, every
        self.won_below, self.lost_above, self.patience = won_below, lost_above, patience
        self.steps, self.won_for = 0, 0
        self._pending: list[torch.Tensor] = []

    def __call__(self, parts: dict) -> None:
        self.steps += 1
        self._pending.append(torch.stack([parts[n].detach().float() for n in self.NAMES]))
        if self.steps % self.every:
            return
        losses = torch.stack(self._pending).cpu()            # [steps since the last check, 3]
        self._pending.clear()
        finite = torch.isfinite(losses)
        if not finite.all():
            row = int((~finite.all(dim=1)).nonzero()[0])
            step = self.steps - len(losses) + 1 + row
            values = dict(zip(self.NAMES, losses[row].tolist()))
            bad = ", ".join(f"{n} loss = {v}" for n, v in values.items() if not math.isfinite(v))
            good = ", ".join(f"{n} {v:.4g}" for n, v in values.items() if math.isfinite(v))
            raise AdversarialDivergenceError(
                f"Adversarial training diverged at step {step}: {bad} (the others: {good or 'none'}). "
                "Likely causes: a learning rate too high for the discriminator or the generator; a log of 0 in "
                "discriminator_loss or generator_loss (compute them from logits with F.softplus or "
                "F.binary_cross_entropy_with_logits, which stay finite when the discriminator is saturated); "
                "lambda_adv too large next to lambda_rec.")
        mean = dict(zip(self.NAMES, losses.mean(dim=0).tolist()))
        won = self.lambda_adv > 0 and mean["discriminator"] < self.won_below and mean["generator"] > self.lost_above
        self.won_for = self.won_for + 1 if won else 0
        if self.won_for >= self.patience:
            raise AdversarialDivergenceError(
                f"Adversarial training diverged at step {self.steps}: the discriminator won outright. Over the last "
                f"{self.patience * self.every} steps its loss averaged below {self.won_below:g} (now "
                f"{mean['discriminator']:.2g}: it tells every fill from a real image with certainty) and the "
                f"generator's adversarial loss above {self.lost_above:g} (now {mean['generator']:.3g}). The "
                "adversarial gradient now says only 'fake', and the fills stop improving. Lower lambda_adv "
                f"(now {self.lambda_adv:g}) or the learning rate of the discriminator "
                f"(RECIPE['lr_discriminator'] = {RECIPE['lr_discriminator']:g}), and rerun.")


def run(session, make_mask: Callable, *, masked_input: Callable, reconstruction_loss: Callable,
        discriminator_loss: Callable, generator_loss: Callable, context_encoder_loss: Callable,
        lambda_adv: float | None = None, lambda_rec: float | None = None, fraction: float | None = None,
        data: ImageDataset | None = None, epochs: int | None = None, lr_scale: float = 1.0,
        live_plot: bool = True, progress: bool = True, desc: str | None = None,
        deadline_s: float | None = None, replicas: Replicas = SINGLE, shards: int | None = None,
        checkpoint=None) -> tuple[ContextEncoder, train.History]:
    """Train a context encoder on holes from ``make_mask`` with the student's losses; return ``(model, history)``.

    Args:
        session: what :func:`sslcourse.setup` returned (budget, device, seed, data).
        make_mask: ``make_mask(batch, size, fraction, generator) -> bool [B, 1, S, S]`` (exercise 1).
        masked_input, reconstruction_loss (exercise 2), discriminator_loss, generator_loss and
            context_encoder_loss (exercise 3): the student's functions, passed through to
            ``context_encoder_loss(model, x, mask, masked_input=, reconstruction_loss=, discriminator_loss=,
            generator_loss=, lambda_rec=, lambda_adv=) -> (loss, parts)``.
        lambda_adv: default ``RECIPE["lambda_adv"]``; 0 trains the L2-only context encoder (the discriminator
            still learns, and its loss says how easily it tells the fills from real images).
        lambda_rec, fraction: default ``RECIPE``'s. ``data``: default ``session.data``.
        epochs: default ``RECIPE["epochs"]``. ``lr_scale`` multiplies both learning rates (the divergence test).
        live_plot, progress, desc, deadline_s, checkpoint: passed to :func:`sslcourse.train.fit`.
        replicas, shards: training on several processes (``sslcourse pretrain`` under ``torchrun``); each
            process draws its own corruptions (its own random stream) for its part of the batch.

    λ_adv: Pathak et al. used λ_rec = 0.999, λ_adv = 0.001 with a *mean* squared error over the hole. Our
    L_rec is the formula's sum over the hole (768 entries for a quarter of a 32×32 RGB image), so the same
    balance is λ_adv ≈ 0.001 · 768 ≈ 0.8 against λ_rec = 1; ``RECIPE["lambda_adv"]`` is set by measurement
    (bench/RESULTS.md).

    Records per step ``"reconstruction"``, ``"generator"`` and ``"discriminator"`` (the three losses) and
    ``"hole mse"``, the mean squared error per entry inside the hole, comparable between runs.

    Raises:
        AdversarialDivergenceError: a loss became NaN or Inf, or the discriminator won outright
            (:class:`DivergenceWatch`); the message says which and what to change.
    """
    data = data if data is not None else session.data
    budget, device = session.budget, session.device
    lambda_adv = RECIPE["lambda_adv"] if lambda_adv is None else lambda_adv
    lambda_rec = RECIPE["lambda_rec"] if lambda_rec is None else lambda_rec
    fraction = RECIPE["fraction"] if fraction is None else fraction
    size = data.train_x.shape[-1]
    probe_mask = make_mask(2, size, fraction, torch.Generator().manual_seed(0))   # fail here, naming the exercise
    if not (isinstance(probe_mask, torch.Tensor) and probe_mask.dtype == torch.bool
            and tuple(probe_mask.shape) == (2, 1, size, size)):
        got = f"{probe_mask.dtype} {tuple(probe_mask.shape)}" if isinstance(probe_mask, torch.Tensor) else type(probe_mask).__name__
        raise ValueError(f"make_mask(2, {size}, {fraction}, generator) must return a bool mask [2, 1, {size}, {size}], got {got}.")
    model = new_context_encoder(budget, data, session.seed)
    batches = loader(data, budget, device, seed=session.seed, replicas=replicas, shards=shards)
    epochs = budget.pick(**RECIPE["epochs"]) if epochs is None else epochs
    optimizer, scheduler = optimizer_and_schedule(model, epochs, len(batches), lr_scale)
    generator = torch.Generator(device=device).manual_seed(session.seed + 1 + 7919 * replicas.rank)   # the masks' own stream
    watch = DivergenceWatch(lambda_adv)

    def loss_fn(model, batch):
        images, _class_labels = batch      # thrown away: only the image itself teaches
        mask = make_mask(len(images), size, fraction, generator)
        value, parts = context_encoder_loss(model, images, mask, masked_input=masked_input,
                                            reconstruction_loss=float32(reconstruction_loss),
                                            discriminator_loss=float32(discriminator_loss, images_first=False),
                                            generator_loss=float32(generator_loss, images_first=False),
                                            lambda_rec=lambda_rec, lambda_adv=lambda_adv)
        watch(parts)
        hole = mask.expand_as(images)
        hole_mse = ((parts["prediction"].detach().float() - images.float()) ** 2)[hole].mean()
        metrics = {name: parts[name].detach() for name in ("reconstruction", "generator", "discriminator")}
        return value, {**metrics, "hole mse": hole_mse}

    desc = desc or f"context encoder, λ_adv {lambda_adv:g}"
    plot = LivePlot(title=desc, ylabel="loss", metrics=("reconstruction", "discriminator"),
                    enabled=None if live_plot else False)
    try:
        history = train.fit(model, loss_fn, batches, optimizer, epochs, device=device, scheduler=scheduler,
                            live_plot=plot, progress=progress, desc=desc, deadline_s=deadline_s,
                            replicas=replicas, checkpoint=checkpoint)
    except AdversarialDivergenceError:
        raise
    except NonFiniteLossError as error:        # the sum went non-finite between two reads of the watch
        raise AdversarialDivergenceError(f"Adversarial training diverged: {error}") from error
    return model, history


def float32(loss: Callable, images_first: bool = True) -> Callable:
    """The loss computed outside autocast. Training runs the networks under bfloat16 autocast where that is
    faster; a sum over 768 squared errors, and the logs of the adversarial losses, are computed in float32.
    With ``images_first=False`` the first argument is the discriminator, which still runs under autocast."""
    if images_first:
        def in_float32(x, prediction, mask):
            with torch.autocast(prediction.device.type, enabled=False):
                return loss(x.float(), prediction.float(), mask)
        return in_float32

    def logits_in_float32(discriminator, *images):
        return loss(_Float32Logits(discriminator), *images)
    return logits_in_float32


class _Float32Logits(nn.Module):
    """A view of a discriminator whose logits come back in float32 (the network itself may run in bf16)."""

    def __init__(self, discriminator: nn.Module):
        super().__init__()
        self.inner = discriminator

    def forward(self, images):
        return self.inner(images).float()


def probe(encoder: nn.Module, data: ImageDataset, device, budget: Budget) -> dict:
    """``{"knn": %, "linear": %}`` of the pooled last block: kNN (k=200, T=0.1) and the linear probe."""
    return evaluate.evaluate_encoder(encoder, data, device, k=PROBE["knn_k"], temperature=PROBE["knn_temperature"],
                                     linear_iterations=budget.pick(**PROBE["linear_iterations"]))


@torch.no_grad()
def fill_holes(model: ContextEncoder, images_uint8: torch.Tensor, mask: torch.Tensor, device, *,
         masked_input: Callable) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(clean, masked, filled)``, each ``[B, 3, H, W]`` in [0, 1] on the CPU, in eval mode: the student's
    ``masked_input`` with the dataset's mean colour in the hole, and the clean context with the model's
    prediction pasted into the hole (what the discriminator judges)."""
    from ..data import normalize

    model.to(device).eval()
    clean = to_float(images_uint8.to(device))
    mask = mask.to(device)
    masked = masked_input(clean, mask, model.fill)
    prediction = torch.sigmoid(model.decoder(model.encoder(normalize(masked, model.mean, model.std)))).float()
    return clean.cpu(), masked.float().cpu(), torch.where(mask, prediction, clean).cpu()


@torch.no_grad()
def inpaint(models_by_name: dict, images_uint8: torch.Tensor, mask: torch.Tensor, device, *,
            masked_input: Callable) -> dict:
    """The rows of the lecture's comparison: ``{"input": masked, name: filled, ..., "ground truth": clean}``."""
    rows = {}
    for name, model in models_by_name.items():
        clean, masked, filled = fill_holes(model, images_uint8, mask, device, masked_input=masked_input)
        rows.setdefault("input", masked)
        rows[name] = filled
    rows["ground truth"] = clean
    return rows


@torch.no_grad()
def hole_mse(model: ContextEncoder, images_uint8: torch.Tensor, mask: torch.Tensor, device, *,
             masked_input: Callable) -> float:
    """The mean squared error per entry inside the hole, in eval mode: comparable between runs and hole sizes."""
    clean, _, filled = fill_holes(model, images_uint8, mask, device, masked_input=masked_input)
    return ((filled - clean) ** 2)[mask.cpu().expand_as(clean)].mean().item()


@torch.no_grad()
def discriminator_accuracy(model: ContextEncoder, images_uint8: torch.Tensor, mask: torch.Tensor, device, *,
                           masked_input: Callable) -> float:
    """How often (%) the trained discriminator tells real from filled: real scored > 0, fills < 0, half each."""
    clean, _, filled = fill_holes(model, images_uint8, mask, device, masked_input=masked_input)
    real = model.discriminator(clean.to(device)).float() > 0
    fake = model.discriminator(filled.to(device)).float() < 0
    return 100.0 * (real.float().mean().item() + fake.float().mean().item()) / 2


EXPECTED = {   # measured with bench/bench_context_encoder.py and the notebook itself (bench/RESULTS.md), seed 0
    ("cpu", "cifar10"): {
        "knn_random_init": 35.5, "linear_random_init": 48.2, "knn_l2": 37.3, "linear_l2": 50.2, "knn": 37.9, "linear": 51.0,
        "summary": "random init kNN 35.5%, linear 48.2%; after 10 epochs on random regions the L2-only context encoder "
                   "37.3% / 50.2% and the joint one (λ_adv 1) 37.9% / 51.0%, both above 01's denoising autoencoder "
                   "(35.4% / 49.6%). Error in the hole 0.025 for both; the L2 run's discriminator spotted its fills 60% "
                   "of the time, the joint run's 49%. Mask table (5 epochs each): central 50.6%, random blocks 49.7%, "
                   "random regions 47.9% linear. Seed 1: random init 35.5% / 50.0%, L2 36.3% / 48.9%, joint 36.6% / 48.7%: "
                   "the gain over random init is about the size of the seed-to-seed noise.",
    },
}


def expected(budget: Budget | str, dataset: str) -> dict | None:
    """Our measured numbers for this preset and dataset (see :data:`EXPECTED`), or ``None``."""
    return lookup_expected(EXPECTED, budget, dataset)
