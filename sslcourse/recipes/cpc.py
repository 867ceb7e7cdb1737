"""Contrastive Predictive Coding, as ``06_cpc`` runs it (van den Oord, Li & Vinyals, 2018, "Representation
Learning with Contrastive Predictive Coding", arXiv:1807.03748).

Read top to bottom: the recipe table per preset, the sequence model :class:`CPCModel` (a strided 1-D
convolutional encoder, a GRU, one linear predictor per step), the loader of sequences, the CPC loss built from
the student's four functions, ``run`` for sequences, the probes of Table 1 (per-sequence speaker, per-step phone)
and their baselines (random init, the log-spectrogram, a supervised encoder), then CPC on images: a grid of
patches, each column read top to bottom by a GRU, rows predicted from the rows above (Sec. 3.2 of the paper,
with a GRU per column in place of its PixelCNN), probed like every other method of the course.

The graded parts come in as arguments at call time: ``encode_and_context(model, waves)``,
``step_scores(predictor, context, candidates)``, ``info_nce(scores)`` and
``sample_negatives(batch, steps, count, mode, generator)``. ``bench/bench_cpc.py`` calls the same functions
with the solution notebook's.

**Data.** The sequences are :func:`sslcourse.data.synthetic_speech` (see its module for the design and the
measurement behind it): deterministic, labelled per sequence (the speaker) and per 10-ms step (the phone), built in
seconds, so the notebook works offline and in the smoke preset.

**The cpu recipe, measured** (seed 0 unless said, linear probes phone / speaker; the log-spectrogram 52.7 / 63.4): at 4
epochs, K = 12 steps with 32 negatives per position, batches of 32, gave 50.3 / 25.2; K = 8 with 64 negatives, batches
of 16 (twice the updates per epoch) gave 53.4 / 26.4, the only setting tried that put CPC above the spectrogram on the
phone. Dropping the per-step ``ChannelNorm`` raised random init's speaker probe to 27.6 and CPC's gain over it fell
(48.2 / 35.4). **8 epochs (1,000 steps) instead of 4** then took the speaker probe from 24.8 to 58.0 (seed 1: 31.2 to
44.0): the voice is the slow feature CPC learns last. **A ChannelNorm after the encoder's last layer** (z at unit
scale) removed a plateau at the start of training: the loss had sat at log N for 150 to 250 steps, so Table 2's
250-step runs measured mostly when each left it (K = 12 with 32 negatives never did). With it (the recipe now): random
init 23.2 / 15.6, **CPC 53.0 / 61.0**, seed 1 random init 20.3 / 30.0, **CPC 46.6 / 62.2** against the spectrogram's
44.3 / 72.8, and Table 2's runs (2 epochs, 16 negatives, so that the seven fit in 10 minutes) show the paper's
shape. ``bench/RESULTS.md`` has the runs.

**Precision.** The scores, the InfoNCE loss and the probes' logits are computed in float32 (the cross-entropy of a
softmax over candidates loses its small differences in bf16); the encoder and the GRU may run under ``fit``'s
autocast.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import lookup_expected
from .patch_position import upsampled, upsampled_features   # images at 64 px, as 04 trains and probes them
from .. import augment, evaluate, models, train
from ..budget import Budget
from ..data import ImageDataset, normalize, to_float
from ..distributed import SINGLE, Replicas, device_batches
from ..data.speech import SpeechDataset, log_spectrogram, synthetic_speech

__all__ = ["RECIPE", "NEGATIVE_MODES", "PAPER", "PROBE", "EXPECTED", "expected", "CPCModel", "ChannelNorm",
           "speech_data", "new_cpc", "new_supervised", "SequenceBatches", "loader", "optimizer_and_schedule",
           "cpc_loss", "run", "held_out_steps", "future_scores", "run_supervised", "frame_features",
           "spectrogram_features", "probe_sequences",
           "zero_predictors", "ImageCPC", "patch_grid", "image_cpc_loss", "image_batch_size", "run_images", "probe_images", "random_image_encoder"]

NEGATIVE_MODES = {   # the negatives ablation (Table 2, lower half): what sample_negatives draws from
    "mixed": "any other step of any sequence in the batch (the paper's 'mixed speaker')",
    "same": "other steps of the same sequence only (the paper's 'current sequence only')",
    "other": "steps of the other sequences only (the paper's 'excluding current sequence')",
}

RECIPE = {   # every constant of the training recipe, one value per budget preset where it differs
    "speech": {"train": {"smoke": 64, "cpu": 2000, "gpu": 4000},     # sequences (synthetic_speech)
               "test": {"smoke": 64, "cpu": 500, "gpu": 1000},
               "seconds": {"smoke": 0.32, "cpu": 0.64, "gpu": 1.28}},
    "channels": {"smoke": 32, "cpu": 64, "gpu": 256},    # the encoder's width D (the paper: 512)
    "context": {"smoke": 32, "cpu": 64, "gpu": 256},     # the GRU's width H (the paper: 256)
    "steps_ahead": 8,                                     # K predictors W_1..W_K (the paper: 12; why 8: the docstring)
    "negatives": {"smoke": 8, "cpu": 64, "gpu": 128},     # N - 1 per positive
    "negative_mode": "mixed",
    "epochs": {"smoke": 1, "cpu": 8, "gpu": 20},          # cpu: 1,000 steps of 16 sequences
    "batch": {"smoke": 16, "cpu": 16, "gpu": 64},         # sequences per step
    "lr": 2e-3,                                           # Adam (the paper: 2e-4 at batch 256 per GPU x 8 GPUs)
    "warmup": 0.05,
    "step_ablation": {"smoke": (2, 4), "cpu": (2, 4, 8, 12, 16), "gpu": (2, 4, 8, 12, 16)},
    "ablation_epochs": {"smoke": 1, "cpu": 2, "gpu": 10},  # every run of Table 2 (7 of them): cpu a quarter of the main run's
    "ablation_negatives": {"smoke": 8, "cpu": 16, "gpu": 128},  # every run of Table 2: cpu a quarter of the main run's
    "supervised_epochs": {"smoke": 1, "cpu": 4, "gpu": 10},
    # CPC on images: 64-px images (resized as in 04) cut into a 4 x 4 grid of 16-px patches, no overlap.
    "image": {"patch": 16, "steps_ahead": 2, "negatives": {"smoke": 8, "cpu": 16, "gpu": 32},
              "epochs": {"smoke": 1, "cpu": 3, "gpu": 15}, "train_images": {"smoke": 128, "cpu": None, "gpu": None},
              "context": 256, "flip": 0.5, "lr": 2e-3, "weight_decay": 5e-4},
}
PROBE = {"linear_iterations": {"smoke": 10, "cpu": 100, "gpu": 100}, "knn_k": 200, "knn_temperature": 0.1,
         "frames_per_sequence": {"smoke": 8, "cpu": 16, "gpu": 16}}   # steps of each sequence the phone probe sees
PAPER = {   # van den Oord et al. (2018), LibriSpeech, linear classifiers on the 256-d context (Tables 1 and 2)
    "table1": {"random init": {"phone": 27.6, "speaker": 1.87}, "MFCC features": {"phone": 39.7, "speaker": 17.6},
               "CPC": {"phone": 64.6, "speaker": 97.4}, "supervised": {"phone": 74.6, "speaker": 98.5}},
    "steps": {2: 28.5, 4: 57.6, 8: 63.6, 12: 64.6, 16: 63.8},
    "negatives": {"mixed speaker": 64.6, "same speaker": 65.5, "mixed speaker, excluding current sequence": 57.3,
                  "same speaker, excluding current sequence": 64.6, "current sequence only": 65.2},
}


# ----------------------------------------------------------------------------------------------- the sequence model
class ChannelNorm(nn.Module):
    """Normalise each step's channels on their own, ``[B, D, T] -> [B, D, T]`` (a LayerNorm over D per step).

    Unlike batch norm or a norm over time, it mixes nothing across steps or sequences: z_t stays a function of
    its own stretch of signal, so no statistic of the future reaches c_t."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


def _encoder(channels: int) -> nn.Sequential:
    """Strided 1-D convolutions on the waveform ``[B, 1, T] -> [B, D, T / 80]``: strides 5, 4, 2, 2 (the paper:
    strides 5, 4, 2, 2, 2 at 16 kHz, 160 samples = 10 ms; here 80 samples = 10 ms at 8 kHz).
    Each padding keeps ``T / stride`` steps exactly."""
    layers, previous = [], 1
    for kernel, stride, padding in ((10, 5, 3), (8, 4, 2), (4, 2, 1), (4, 2, 1)):
        layers += [nn.Conv1d(previous, channels, kernel, stride, padding), ChannelNorm(channels), nn.ReLU(inplace=True)]
        previous = channels
    # A last mixing layer without a ReLU (z may be negative), then one more ChannelNorm: without it z came out of a
    # fresh encoder at a quarter of unit scale, the GRU's context barely moved, and the loss sat at log N for the
    # first 150 to 250 steps (measured: K = 12 with 32 negatives never left it in a 250-step run); with it the loss
    # falls from the tenth step.
    layers += [nn.Conv1d(channels, channels, 1), ChannelNorm(channels)]
    return nn.Sequential(*layers)


HOP = 80   # waveform samples per encoder step (the product of the strides above)


class CPCModel(nn.Module):
    """CPC's three parts (van den Oord et al., 2018, Fig. 1):

    * ``encoder`` g_enc: waveforms ``[B, 1, T]`` -> ``[B, D, T']``, T' = T / 80 (one z_t per 10 ms);
    * ``autoregressor`` g_ar: ``nn.GRU(D, H, batch_first=True)``, ``[B, T', D]`` -> c ``[B, T', H]``;
    * ``predictors``: W_1 .. W_K, each ``nn.Linear(H, D, bias=False)``: W_k c_t predicts z_{t+k}.

    It has no ``forward``: the student's ``encode_and_context(model, waves)`` writes the path.
    """

    def __init__(self, channels: int, context: int, steps_ahead: int):
        super().__init__()
        self.encoder = _encoder(channels)
        self.autoregressor = nn.GRU(channels, context, batch_first=True)
        self.predictors = nn.ModuleList(nn.Linear(context, channels, bias=False) for _ in range(steps_ahead))
        self.channels, self.feature_dim = channels, context     # D (z) and H (c)

    def forward(self, *_):
        raise TypeError("CPCModel has no forward: call encode_and_context(model, waves) (exercise 1), "
                        "which uses model.encoder and model.autoregressor.")


def new_cpc(budget: Budget, seed: int, steps_ahead: int | None = None) -> CPCModel:
    """A fresh model; the same ``seed`` gives the same encoder and GRU whatever ``steps_ahead`` is."""
    torch.manual_seed(seed)
    model = CPCModel(budget.pick(**RECIPE["channels"]), budget.pick(**RECIPE["context"]), 1)
    torch.manual_seed(seed + 7919)
    k = RECIPE["steps_ahead"] if steps_ahead is None else steps_ahead
    model.predictors = nn.ModuleList(nn.Linear(model.feature_dim, model.channels, bias=False)
                                     for _ in range(k))
    zero_predictors(model)
    return model


def zero_predictors(model: nn.Module) -> None:
    """Start every W_k at 0: all scores equal, the loss exactly log N, and the gradient points at once towards the
    positive. With PyTorch's default initialisation the random scores of untrained z and c drowned the signal and
    the loss stayed at chance for hundreds of steps (measured while building this recipe)."""
    with torch.no_grad():
        for predictor in model.predictors:
            predictor.weight.zero_()


def speech_data(budget: Budget, seed: int = 0) -> SpeechDataset:
    """The synthetic speech set sized by the preset (``RECIPE["speech"]``)."""
    sizes = RECIPE["speech"]
    return synthetic_speech(train=budget.pick(**sizes["train"]), test=budget.pick(**sizes["test"]),
                            seconds=budget.pick(**sizes["seconds"]), seed=seed)


class SequenceBatches:
    """Shuffled batches ``(waves [B, T], speakers [B], phones [B, T'])`` of a sequence set, kept on ``device``.

    Each waveform is scaled to unit RMS (the speakers' loudness differs; the content does not). Epoch ``e``'s
    order depends only on ``(seed, e)``, so :func:`sslcourse.train.fit` can replay it on resume."""

    def __init__(self, waves: torch.Tensor, speakers: torch.Tensor, phones: torch.Tensor, batch_size: int, device,
                 *, seed: int = 0):
        if waves.ndim != 2 or not waves.is_floating_point():
            raise TypeError(f"SequenceBatches expects float waveforms [N, T], got {waves.dtype} {tuple(waves.shape)}.")
        if not (len(waves) == len(speakers) == len(phones)):
            raise ValueError(f"SequenceBatches: {len(waves)} waveforms, {len(speakers)} speakers, {len(phones)} phones.")
        if batch_size > len(waves):
            raise ValueError(f"SequenceBatches: batch_size {batch_size} is larger than the {len(waves)} sequences.")
        self.device = torch.device(device)
        self.waves = standardised(waves).to(self.device)
        self.speakers, self.phones = speakers.to(self.device), phones.to(self.device)
        self.batch_size, self.seed = batch_size, seed

    def __len__(self) -> int:
        return len(self.waves) // self.batch_size

    def epoch(self, epoch: int):
        order = torch.randperm(len(self.waves), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        for i in range(len(self)):
            index = order[i * self.batch_size:(i + 1) * self.batch_size].to(self.device)
            yield self.waves[index], self.speakers[index], self.phones[index]

    def __iter__(self):
        return self.epoch(0)


def standardised(waves: torch.Tensor) -> torch.Tensor:
    """Each waveform ``[N, T]`` divided by its root mean square."""
    return waves / waves.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-8)


def loader(data: SpeechDataset, budget: Budget, device, *, seed: int = 0) -> SequenceBatches:
    return SequenceBatches(data.train_x, data.train_speaker, data.train_phone, budget.pick(**RECIPE["batch"]),
                           device, seed=seed)


def optimizer_and_schedule(model: nn.Module, epochs: int, steps_per_epoch: int, *, lr: float | None = None,
                           weight_decay: float = 0.0):
    """Adam; a short linear warm-up, then cosine to 0."""
    optimizer = torch.optim.Adam(model.parameters(), lr=RECIPE["lr"] if lr is None else lr, weight_decay=weight_decay)
    total = epochs * steps_per_epoch
    return optimizer, train.cosine_schedule(optimizer, total, warmup_steps=max(1, int(RECIPE["warmup"] * total)))


# ------------------------------------------------------------------------------------------------------ the loss
def _check(name: str, value, shape: tuple, exercise: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(shape):
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must be {list(shape)}, got {got} ({exercise}).")
    return value


def predict_steps(z: torch.Tensor, c: torch.Tensor, predictors: nn.ModuleList, negatives: torch.Tensor, *,
                  step_scores: Callable, info_nce: Callable) -> tuple[torch.Tensor, list[float]]:
    """CPC's loss over every step k = 1..K (van den Oord et al., 2018, Eq. 4), the mean over k of InfoNCE.

    z: ``[B, T', D]``; c: ``[B, T', H]``; negatives: ``[B, T', n]`` indices into ``z.flatten(0, 1)``, drawn for
    each *target* position. For step k, the contexts c_t (t < T' - k) are scored against their target z_{t+k}
    (column 0) and the negatives drawn for position t + k. Returns ``(losses [K'], accuracies per k)``, one loss per
    step k that fits in the sequence (K' = min(K, T' - 1)); the training loss is their mean.
    """
    batch, steps, dim = z.shape
    flat = z.reshape(batch * steps, dim)
    losses, accuracies = [], []
    for k, predictor in enumerate(predictors, start=1):
        if k >= steps:
            break
        context = c[:, :steps - k].reshape(-1, c.shape[-1])                          # c_t: [M, H]
        positive = z[:, k:].reshape(-1, 1, dim)                                       # z_{t+k}: [M, 1, D]
        index = negatives[:, k:].reshape(-1)
        # index_select rather than flat[index]: its backward is an index_add, faster on a CPU than the
        # accumulating index_put that plain indexing needs (measured: a cpu training step 0.43 s -> 0.36 s)
        drawn = flat.index_select(0, index).view(-1, negatives.shape[-1], dim)       # [M, n, D]
        candidates = torch.cat([positive, drawn], dim=1).float()
        with torch.autocast(z.device.type, enabled=False):   # the scores and the softmax over candidates in float32
            scores = _check(f"step_scores(W_{k}, ...)", step_scores(predictor, context.float(), candidates),
                            (len(context), candidates.shape[1]), "exercise 2")
            loss, accuracy = info_nce(scores)
        losses.append(_check("info_nce's loss", loss, (), "exercise 3"))
        accuracies.append(float(accuracy))
    if not losses:
        raise ValueError(f"sequences of {steps} steps are too short to predict even 1 step ahead.")
    return torch.stack(losses), accuracies


def cpc_loss(model: CPCModel, waves: torch.Tensor, generator: torch.Generator, *, encode_and_context: Callable,
             step_scores: Callable, info_nce: Callable, sample_negatives: Callable, negatives: int,
             mode: str) -> tuple[torch.Tensor, list[float]]:
    """The loss of one batch of waveforms ``[B, T]``: the student's four functions in CPC's order."""
    z, c = encode_and_context(model, waves)
    batch, steps = waves.shape[0], waves.shape[1] // HOP
    _check("encode_and_context's z", z, (batch, steps, model.channels), "exercise 1")
    _check("encode_and_context's c", c, (batch, steps, model.feature_dim), "exercise 1")
    drawn = _check("sample_negatives(...)", sample_negatives(batch, steps, negatives, mode, generator),
                   (batch, steps, negatives), "exercise 4").to(z.device)
    losses, accuracies = predict_steps(z, c, model.predictors, drawn, step_scores=step_scores, info_nce=info_nce)
    return losses.mean(), accuracies


def run(session, data: SpeechDataset, *, encode_and_context: Callable, step_scores: Callable, info_nce: Callable,
        sample_negatives: Callable, steps_ahead: int | None = None, mode: str | None = None,
        negatives: int | None = None, epochs: int | None = None, live_plot: bool = True, progress: bool = True,
        desc: str | None = None, deadline_s: float | None = None) -> tuple[CPCModel, train.History]:
    """Train CPC on ``data``'s training sequences; return ``(model, history)``.

    ``steps_ahead`` (K, default ``RECIPE["steps_ahead"]``) and ``mode`` (one of :data:`NEGATIVE_MODES`) are what
    the two ablations vary; ``negatives`` (N - 1, default ``RECIPE["negatives"]``) and ``epochs`` set their budget.
    Records per step ``"acc k=1"`` and ``"acc k=K"``, the prediction accuracies of the nearest and the farthest step,
    and ``"acc"`` their mean over k.
    """
    budget, device = session.budget, session.device
    k = RECIPE["steps_ahead"] if steps_ahead is None else steps_ahead
    mode = RECIPE["negative_mode"] if mode is None else mode
    if mode not in NEGATIVE_MODES:
        raise ValueError(f"mode must be one of {list(NEGATIVE_MODES)}, got {mode!r}.")
    model = new_cpc(budget, session.seed, k)
    batches = loader(data, budget, device, seed=session.seed)
    epochs = budget.pick(**RECIPE["epochs"]) if epochs is None else epochs
    optimizer, scheduler = optimizer_and_schedule(model, epochs, len(batches))
    generator = torch.Generator(device=device).manual_seed(session.seed + 3)
    count = budget.pick(**RECIPE["negatives"]) if negatives is None else negatives

    def loss_fn(model, batch):
        waves, _speakers, _phones = batch        # the labels are for the probes only
        loss, accuracies = cpc_loss(model, waves, generator, encode_and_context=encode_and_context,
                                    step_scores=step_scores, info_nce=info_nce, sample_negatives=sample_negatives,
                                    negatives=count, mode=mode)
        return loss, {"acc k=1": accuracies[0], f"acc k={len(accuracies)}": accuracies[-1],
                      "acc": sum(accuracies) / len(accuracies)}

    history = train.fit(model, loss_fn, batches, optimizer, epochs, device=device, scheduler=scheduler,
                        amp=device.type == "cuda", channels_last=False, live_plot=live_plot, progress=progress,
                        desc=desc or f"CPC, K={k}, {mode} negatives", deadline_s=deadline_s)
    return model, history


@torch.no_grad()
def held_out_steps(model: CPCModel, data: SpeechDataset, device, budget: Budget, *, encode_and_context: Callable,
                   step_scores: Callable, info_nce: Callable, sample_negatives: Callable,
                   mode: str | None = None, sequences: int = 256) -> dict:
    """The prediction accuracy and InfoNCE loss of every step k on held-out sequences, in eval mode:
    ``{"accuracy": [per k], "loss": [per k], "candidates": N}`` (the first ``sequences`` test sequences,
    in batches of the recipe's size, negatives drawn as in training)."""
    model.to(device).eval()
    count = budget.pick(**RECIPE["negatives"])
    mode = RECIPE["negative_mode"] if mode is None else mode
    generator = torch.Generator(device=device).manual_seed(0)
    batch = budget.pick(**RECIPE["batch"])
    waves = standardised(data.test_x[:sequences])
    accuracies, losses = [], []
    for start in range(0, len(waves) - batch + 1, batch):
        chunk = waves[start:start + batch].to(device)
        z, c = encode_and_context(model, chunk)
        drawn = sample_negatives(len(chunk), z.shape[1], count, mode, generator).to(device)
        step_losses, step_accuracies = predict_steps(z, c, model.predictors, drawn, step_scores=step_scores,
                                                     info_nce=info_nce)
        accuracies.append(step_accuracies)
        losses.append(step_losses.tolist())
    model.train()
    mean = lambda rows: [sum(r[i] for r in rows) / len(rows) for i in range(len(rows[0]))]
    return {"accuracy": mean(accuracies), "loss": mean(losses), "candidates": count + 1}


@torch.no_grad()
def future_scores(model: CPCModel, wave: torch.Tensor, position: int, device, *, encode_and_context: Callable,
                  step_scores: Callable) -> dict:
    """What the model expects after step ``position`` of one sequence: the scores ``z_j^T W_k c_t`` (Eq. 3) of
    the context ``c_t`` (t = ``position``) against **every** step j of the same sequence, for each k = 1..K.

    wave: one waveform ``[T]``. Returns ``{"scores": [K, T'], "probabilities": [K, T']`` (the softmax over j, as
    if every step were a candidate), ``"targets": [K]`` (the true j = t + k, -1 where it is past the end)``}``,
    in float32 on the CPU, through the student's ``encode_and_context`` and ``step_scores`` (exercises 1, 2).
    """
    model.to(device).eval()
    z, c = encode_and_context(model, standardised(wave.reshape(1, -1)).to(device))
    steps = z.shape[1]
    if not 0 <= position < steps:
        raise ValueError(f"position must be a step of the sequence, 0..{steps - 1}, got {position}.")
    rows = []
    for k, predictor in enumerate(model.predictors, start=1):
        row = step_scores(predictor, c[:, position].float(), z.float())              # [1, T']: c_t against each z_j
        rows.append(_check(f"step_scores(W_{k}, ...)", row, (1, steps), "exercise 2")[0])
    model.train()
    scores = torch.stack(rows).float().cpu()
    targets = torch.tensor([position + k if position + k < steps else -1 for k in range(1, len(rows) + 1)])
    return {"scores": scores, "probabilities": scores.softmax(dim=1), "targets": targets}


# ------------------------------------------------------------------------------------------- baselines and probes
class SupervisedSequenceModel(nn.Module):
    """The same encoder and GRU, trained with the labels: a phone classifier on every c_t and a speaker classifier
    on the mean of c over time (the paper's "supervised" rows, one network for both labels)."""

    def __init__(self, channels: int, context: int, num_phones: int, num_speakers: int):
        super().__init__()
        self.encoder = _encoder(channels)
        self.autoregressor = nn.GRU(channels, context, batch_first=True)
        self.phone_head = nn.Linear(context, num_phones)
        self.speaker_head = nn.Linear(context, num_speakers)
        self.feature_dim = context


def new_supervised(budget: Budget, seed: int, data: SpeechDataset) -> SupervisedSequenceModel:
    torch.manual_seed(seed)
    return SupervisedSequenceModel(budget.pick(**RECIPE["channels"]), budget.pick(**RECIPE["context"]),
                                   data.num_phones, data.num_speakers)


def run_supervised(session, data: SpeechDataset, *, encode_and_context: Callable, epochs: int | None = None,
                   live_plot: bool = True, progress: bool = True, deadline_s: float | None = None):
    """Train :class:`SupervisedSequenceModel` on phones and speakers at once; return ``(model, history)``.

    It has CPC's ``encoder`` and ``autoregressor``, so the student's ``encode_and_context`` (exercise 1) runs it."""
    budget, device = session.budget, session.device
    model = new_supervised(budget, session.seed, data)
    batches = loader(data, budget, device, seed=session.seed)
    epochs = budget.pick(**RECIPE["supervised_epochs"]) if epochs is None else epochs
    optimizer, scheduler = optimizer_and_schedule(model, epochs, len(batches))

    def loss_fn(model, batch):
        waves, speakers, phones = batch
        _z, c = encode_and_context(model, waves)
        with torch.autocast(c.device.type, enabled=False):
            phone_logits = model.phone_head(c.float())
            speaker_logits = model.speaker_head(c.float().mean(dim=1))
            phone_loss = F.cross_entropy(phone_logits.flatten(0, 1), phones.flatten())
            speaker_loss = F.cross_entropy(speaker_logits, speakers)
        return phone_loss + speaker_loss, {
            "phone acc": (phone_logits.argmax(-1) == phones).float().mean().detach(),
            "speaker acc": (speaker_logits.argmax(-1) == speakers).float().mean().detach()}

    history = train.fit(model, loss_fn, batches, optimizer, epochs, device=device, scheduler=scheduler,
                        amp=device.type == "cuda", channels_last=False, live_plot=live_plot, progress=progress,
                        desc="supervised (phones + speakers)",
                        deadline_s=deadline_s)
    return model, history


@torch.no_grad()
def frame_features(model: nn.Module, waves: torch.Tensor, device, *, encode_and_context: Callable, which: str = "c",
                   batch_size: int = 256) -> torch.Tensor:
    """The frozen features of every step, ``[N, T', H]`` (``which="c"``, the context) or ``[N, T', D]`` (``"z"``),
    in float32 on the CPU, through the student's ``encode_and_context`` (exercise 1). ``model`` has ``encoder``
    and ``autoregressor`` (CPC, supervised or untrained)."""
    model.to(device).eval()
    out = []
    for start in range(0, len(waves), batch_size):
        z, c = encode_and_context(model, standardised(waves[start:start + batch_size]).to(device))
        out.append((c if which == "c" else z).float().cpu())
    return torch.cat(out)


def spectrogram_features(waves: torch.Tensor) -> torch.Tensor:
    """The hand-crafted baseline: log-magnitude spectrogram frames ``[N, T', F]`` aligned with the steps."""
    return log_spectrogram(standardised(waves), hop=HOP)


def probe_sequences(train_f: torch.Tensor, test_f: torch.Tensor, data: SpeechDataset, budget: Budget) -> dict:
    """Table 1's two linear probes on frozen step features ``[N, T', F]``: ``{"phone": %, "speaker": %}``.

    *phone*: a linear classifier of the phone label of single steps (``PROBE["frames_per_sequence"]`` evenly
    spaced steps of every sequence); *speaker*: of the speaker label from the mean of the features over time."""
    iterations = budget.pick(**PROBE["linear_iterations"])
    per = budget.pick(**PROBE["frames_per_sequence"])

    def frames(features, phones):
        steps = torch.linspace(0, features.shape[1] - 1, per).round().long()
        return features[:, steps].flatten(0, 1), phones[:, steps].flatten()

    train_x, train_y = frames(train_f, data.train_phone)
    test_x, test_y = frames(test_f, data.test_phone)
    phone = evaluate.linear_probe(train_x, train_y, test_x, test_y, iterations=iterations, num_classes=data.num_phones)
    speaker = evaluate.linear_probe(train_f.mean(dim=1), data.train_speaker, test_f.mean(dim=1), data.test_speaker,
                                    iterations=iterations, num_classes=data.num_speakers)
    return {"phone": phone, "speaker": speaker}


# ------------------------------------------------------------------------------------------------- CPC on images
class ImageCPC(nn.Module):
    """CPC on a grid of image patches (van den Oord et al., 2018, Sec. 3.2, Fig. 4), kept small:

    * ``encoder``: the course backbone (``models.make_backbone``) on each 16-px patch -> ``[D]``;
    * ``autoregressor``: ``nn.GRU(D, H, batch_first=True)`` down each column of the grid: the context of patch
      (row i, column j) has read the patches of column j in rows 0..i (the paper uses a PixelCNN over the rows
      above; a GRU per column is the same idea with less code);
    * ``predictors``: W_1 .. W_K, ``nn.Linear(H, D, bias=False)``: the patch k rows below, same column.
    """

    def __init__(self, encoder: nn.Module, context: int, steps_ahead: int):
        super().__init__()
        self.encoder = encoder
        self.autoregressor = nn.GRU(encoder.feature_dim, context, batch_first=True)
        self.predictors = nn.ModuleList(nn.Linear(context, encoder.feature_dim, bias=False)
                                        for _ in range(steps_ahead))
        zero_predictors(self)


def random_image_encoder(budget: Budget, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return models.make_backbone(budget)


def patch_grid(images: torch.Tensor) -> torch.Tensor:
    """``[B, C, S, S]`` -> the non-overlapping patches ``[B, R, R, C, p, p]`` (R = S / p rows and columns)."""
    p = RECIPE["image"]["patch"]
    b, ch, s, _ = images.shape
    r = s // p
    return images.reshape(b, ch, r, p, r, p).permute(0, 2, 4, 1, 3, 5)


def image_cpc_loss(model: ImageCPC, images: torch.Tensor, generator: torch.Generator, *, step_scores: Callable,
                   info_nce: Callable, sample_negatives: Callable, negatives: int) -> tuple[torch.Tensor, list[float]]:
    """One batch of normalised images ``[B, 3, H, W]``: patches, their z, the GRU down each column, and the
    student's scores, InfoNCE and negatives (mode "mixed": any other patch of the batch)."""
    grid = patch_grid(upsampled(images))                                   # [B, R, R, C, p, p]
    b, rows, cols = grid.shape[:3]
    z = model.encoder(grid.flatten(0, 2).contiguous(memory_format=torch.channels_last))   # [B*R*R, D]
    z = z.view(b, rows, cols, -1).transpose(1, 2).reshape(b * cols, rows, -1)            # a column = a sequence
    c = model.autoregressor(z)[0]                                                          # [B*R, R, H]
    drawn = _check("sample_negatives(...)", sample_negatives(b * cols, rows, negatives, "mixed", generator),
                   (b * cols, rows, negatives), "exercise 4").to(z.device)
    losses, accuracies = predict_steps(z, c, model.predictors, drawn, step_scores=step_scores, info_nce=info_nce)
    return losses.mean(), accuracies


def image_batch_size(budget: Budget) -> int:
    """Images per step of CPC on images: a step encodes 16 patches per image, so a quarter of the budget's
    batch keeps a step near the cost of the other notebooks' (at least 8)."""
    return max(budget.batch_size // 4, 8)


def run_images(session, *, step_scores: Callable, info_nce: Callable, sample_negatives: Callable,
               data: ImageDataset | None = None, epochs: int | None = None, live_plot: bool = True,
               progress: bool = True, desc: str | None = None, deadline_s: float | None = None,
               replicas: Replicas = SINGLE, shards: int | None = None,
               checkpoint=None) -> tuple[ImageCPC, train.History]:
    """Train :class:`ImageCPC` on the course's images; return ``(model, history)``.

    ``replicas``, ``shards``: several processes (``sslcourse pretrain cpc`` under ``torchrun``); each process
    draws its negatives from its own part of the batch. ``live_plot``, ``progress``, ``desc``, ``deadline_s``
    and ``checkpoint`` go to :func:`sslcourse.train.fit`."""
    data = data if data is not None else session.data
    budget, device, cfg = session.budget, session.device, RECIPE["image"]
    model = ImageCPC(random_image_encoder(budget, session.seed), cfg["context"], cfg["steps_ahead"])
    limit = budget.pick(**cfg["train_images"])
    n = len(data.train_x) if limit is None else min(limit, len(data.train_x))
    batches = device_batches(data.train_x[:n], data.train_y[:n], image_batch_size(budget), device, replicas,
                             shards=shards, augment=augment.RandomHorizontalFlip(cfg["flip"]), mean=data.mean,
                             std=data.std, seed=session.seed)
    epochs = budget.pick(**cfg["epochs"]) if epochs is None else epochs
    optimizer, scheduler = optimizer_and_schedule(model, epochs, len(batches), lr=cfg["lr"],
                                                  weight_decay=cfg["weight_decay"])
    generator = torch.Generator(device=device).manual_seed(session.seed + 5 + 7919 * replicas.rank)
    count = budget.pick(**cfg["negatives"])

    def loss_fn(model, batch):
        images, _labels = batch
        loss, accuracies = image_cpc_loss(model, images, generator, step_scores=step_scores, info_nce=info_nce,
                                          sample_negatives=sample_negatives, negatives=count)
        return loss, {"acc row+1": accuracies[0], "acc": sum(accuracies) / len(accuracies)}

    history = train.fit(model, loss_fn, batches, optimizer, epochs, device=device, scheduler=scheduler,
                        live_plot=live_plot, progress=progress, desc=desc or "CPC on image patches",
                        deadline_s=deadline_s, replicas=replicas, checkpoint=checkpoint)
    return model, history


def probe_images(encoder: nn.Module, data: ImageDataset, device, budget: Budget) -> dict:
    """``{"knn": %, "linear": %}`` of the pooled encoder on whole images resized to 64 px, as in 04."""
    return evaluate.evaluate_encoder(encoder, data, device, features=upsampled_features,
                                     k=PROBE["knn_k"], temperature=PROBE["knn_temperature"],
                                     linear_iterations=budget.pick(**PROBE["linear_iterations"]))


EXPECTED = {   # measured with bench/bench_cpc.py (bench/RESULTS.md "06_cpc"), seed 0, float32
    ("cpu", "cifar10"): {
        "knn_random_init": 35.2, "linear_random_init": 50.5, "knn": 37.3, "linear": 49.3,   # CPC on image patches
        "table1": {"random init": {"phone": 23.2, "speaker": 15.6}, "spectrogram": {"phone": 52.7, "speaker": 63.4},
                   "CPC": {"phone": 53.0, "speaker": 61.0}, "supervised": {"phone": 57.1, "speaker": 48.4}},
        "steps": {2: {"phone": 41.7, "speaker": 20.4}, 4: {"phone": 48.9, "speaker": 26.4},
                  8: {"phone": 49.7, "speaker": 32.8}, 12: {"phone": 49.4, "speaker": 31.6},
                  16: {"phone": 47.7, "speaker": 25.4}},
        "negatives": {"mixed": {"phone": 49.7, "speaker": 32.8}, "same": {"phone": 49.5, "speaker": 22.6},
                      "other": {"phone": 49.7, "speaker": 42.2}},
        "summary": "Table 1, phone / speaker: random init 23.2% / 15.6%, spectrogram 52.7% / 63.4%, CPC (8 epochs) "
                   "53.0% / 61.0%, supervised (4 epochs) 57.1% / 48.4%; held-out accuracy from 95% one step ahead to 26% at eight "
                   "(chance 1.5%). Table 2 (2 epochs, 16 negatives each): phone 41.7, 48.9, 49.7, 49.4, 47.7% for K = 2, 4, 8, 12, "
                   "16; negatives mixed / same / other 49.7 / 49.5 / 49.7% phone, 32.8 / 22.6 / 42.2% speaker. CPC on image "
                   "patches: 96.8% of the patches one row down found (chance 5.9%), probes kNN 37.3% / linear 49.3% "
                   "against 35.2% / 50.5% at random init. The speech numbers do not depend on the image dataset.",
    },
}


def expected(budget: Budget | str, dataset: str) -> dict | None:
    """Our measured numbers for this preset and dataset (see :data:`EXPECTED`), or ``None``."""
    return lookup_expected(EXPECTED, budget, dataset)
