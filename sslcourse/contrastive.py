"""Infrastructure for contrastive instance discrimination (MoCo, He et al., 2020, CVPR).

The graded parts of MoCo (the InfoNCE loss against a queue, the momentum update, the
queue itself, the training step) are written by students in ``07_moco``. This module
holds what surrounds them:

* :class:`SplitBatchNorm` and :func:`convert_to_split_batchnorm`: batch norm that
  normalises ``num_splits`` sub-batches separately, to imitate multi-GPU BN on one
  device, as the official MoCo CIFAR-10 demo does (``--bn-splits 8``);
* :func:`batch_shuffle` / :func:`batch_unshuffle`: MoCo's "shuffling BN" (Sec. 3.3).
  The key encoder sees its batch in a random order, so that each key lands in a
  different BN sub-batch than its query.

The projection head is :class:`sslcourse.models.ProjectionHead`; MoCo's recipe, container and
training are in :mod:`sslcourse.recipes.moco`.

Why shuffling matters. In training mode BN normalises every sample with statistics of
its sub-batch, so a sample's output carries a fingerprint of *which other samples* were
in its sub-batch. If query ``i`` and its key ``i`` sit in sub-batches made of the same
images, the network can match them by that fingerprint instead of by content: the
pretext loss drops, and the representation learns little (He et al., 2020, Sec. 3.3).
Shuffling the keys' order before the key encoder puts each key in a sub-batch
of *other* images than its query's; unshuffling afterwards restores the pairing.
Note that with one sub-batch per batch (``num_splits=1``) shuffling changes nothing:
every sample then shares the same statistics, which is the "global BN" remedy of
SimCLR (Chen et al., 2020, Sec. 2.3) for in-batch negatives. With a queue, the current
batch's keys would still share statistics that the queued keys lack, so MoCo on one
device keeps several splits and shuffles.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import Replicas, broadcast_, gather_interleaved

__all__ = ["SplitBatchNorm", "convert_to_split_batchnorm", "batch_shuffle", "batch_unshuffle",
           "batch_shuffle_across", "batch_unshuffle_across"]


class SplitBatchNorm(nn.BatchNorm2d):
    """Batch norm over ``num_splits`` interleaved sub-batches, with shared affine parameters.

    In training mode an input ``[N, C, H, W]`` (or ``[N, C]``) is cut into ``num_splits``
    sub-batches and each is normalised with its own mean and variance, exactly as
    ``num_splits`` GPUs with ordinary BN would do with ``N / num_splits`` samples each.
    Sub-batch ``s`` holds samples ``s, s + S, s + 2S, ...`` (``S = num_splits``): the
    official MoCo CIFAR-10 demo's layout, which lets one ``F.batch_norm`` call do the
    work by viewing the batch as ``[N/S, S·C, H, W]``. Which samples share a sub-batch
    does not matter as long as the batch order is random.

    The running statistics are the average of the sub-batches' running statistics, and
    evaluation mode is plain BN with them (as a model gathered from several GPUs).

    Args:
        num_features: channels ``C``.
        num_splits: sub-batches per batch; ``N`` must be divisible by it in training mode.
        **kwargs: passed to :class:`torch.nn.BatchNorm2d` (``eps``, ``momentum``, ``affine``).
    """

    def __init__(self, num_features: int, num_splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        if not isinstance(num_splits, int) or num_splits < 1:
            raise ValueError(f"num_splits must be a positive int, got {num_splits!r}.")
        if not self.track_running_stats:
            raise ValueError("SplitBatchNorm needs track_running_stats=True (it averages the "
                             "sub-batches' running statistics).")
        self.num_splits = num_splits

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 4):
            raise ValueError(f"SplitBatchNorm expects [N, C] or [N, C, H, W], got {tuple(x.shape)}.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W] -> [N, C, H, W]`` (or ``[N, C] -> [N, C]``)."""
        self._check_input_dim(x)
        splits = self.num_splits
        if not self.training or splits == 1:
            return super().forward(x)
        n, c = x.shape[:2]
        if n % splits:
            raise ValueError(f"SplitBatchNorm: the batch size {n} is not divisible by num_splits={splits}; "
                             "use a batch size that is a multiple of the number of splits.")
        if self.momentum is None:  # cumulative moving average, as nn.BatchNorm does
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            self.num_batches_tracked.add_(1)
            factor = self.momentum
        running_mean = self.running_mean.repeat(splits)
        running_var = self.running_var.repeat(splits)
        weight = self.weight.repeat(splits) if self.weight is not None else None
        bias = self.bias.repeat(splits) if self.bias is not None else None
        # [N, C, ...] -> [N/S, S·C, ...]: channel block s of row r is sample r·S + s.
        # reshape, not view: a channels_last input needs a copy here.
        grouped = x.reshape(n // splits, splits * c, *x.shape[2:])
        out = F.batch_norm(grouped, running_mean, running_var, weight, bias,
                           training=True, momentum=factor, eps=self.eps)
        with torch.no_grad():
            self.running_mean.copy_(running_mean.view(splits, c).mean(dim=0))
            self.running_var.copy_(running_var.view(splits, c).mean(dim=0))
        out = out.reshape(x.shape)
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", num_splits={self.num_splits}"


def convert_to_split_batchnorm(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every ``BatchNorm1d`` / ``BatchNorm2d`` in ``module`` by a :class:`SplitBatchNorm`.

    Weights, biases and running statistics are copied, so a trained model keeps its
    behaviour in evaluation mode. Works in place on the children and returns ``module``
    (or the replacement, when ``module`` itself is a batch-norm layer), like
    :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`.
    """
    if not isinstance(num_splits, int) or num_splits < 1:
        raise ValueError(f"num_splits must be a positive int, got {num_splits!r}.")
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and not isinstance(module, SplitBatchNorm):
        if not module.track_running_stats:
            raise ValueError(f"convert_to_split_batchnorm: {module} has track_running_stats=False; "
                             "SplitBatchNorm needs running statistics.")
        split = SplitBatchNorm(module.num_features, num_splits, eps=module.eps,
                               momentum=module.momentum, affine=module.affine)
        split = split.to(device=module.running_mean.device, dtype=module.running_mean.dtype)
        with torch.no_grad():
            if module.affine:
                split.weight.copy_(module.weight)
                split.bias.copy_(module.bias)
            split.running_mean.copy_(module.running_mean)
            split.running_var.copy_(module.running_var)
            split.num_batches_tracked.copy_(module.num_batches_tracked)
        split.train(module.training)
        return split
    for name, child in module.named_children():
        replacement = convert_to_split_batchnorm(child, num_splits)
        if replacement is not child:
            setattr(module, name, replacement)
    return module


def batch_shuffle(x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle a batch before the key encoder: ``[N, ...] -> ([N, ...], unshuffle_index [N])``.

    Returns the shuffled batch and the index that undoes the shuffle, to pass to
    :func:`batch_unshuffle` once the keys are computed (He et al., 2020, Sec. 3.3;
    ``_batch_shuffle_single_gpu`` in the official CIFAR-10 demo).
    ``generator`` (on ``x``'s device) makes the permutation reproducible.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"batch_shuffle expects a batch tensor [N, ...], got {type(x).__name__}.")
    order = torch.randperm(x.shape[0], device=x.device, generator=generator)
    return x[order], torch.argsort(order)


def batch_unshuffle(y: torch.Tensor, unshuffle_index: torch.Tensor) -> torch.Tensor:
    """Undo :func:`batch_shuffle` on the encoder's output: ``y[unshuffle_index]``, ``[N, ...]``."""
    if y.shape[0] != unshuffle_index.shape[0]:
        raise ValueError(f"batch_unshuffle: {y.shape[0]} rows but an unshuffle index of "
                         f"length {unshuffle_index.shape[0]}; pass the index batch_shuffle returned.")
    return y[unshuffle_index]


def batch_shuffle_across(x: torch.Tensor, replicas: Replicas) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffling BN across processes (He et al., 2020, Sec. 3.3; ``_batch_shuffle_ddp`` in the official code).

    Gathers every process's ``[n, ...]`` into the global batch (interleaved, see
    :mod:`sslcourse.distributed`), draws one permutation (rank 0's, broadcast), and returns this
    process's share of the shuffled global batch, ``[n, ...]``, with the permutation to pass to
    :func:`batch_unshuffle_across`. Each process's batch norm then sees images from every process.
    Every process draws the permutation from its default generator, so their random states stay equal.
    """
    everyone = gather_interleaved(x, replicas)
    order = broadcast_(torch.randperm(everyone.shape[0], device=x.device), replicas)
    return everyone[order[replicas.rank::replicas.world]], order


def batch_unshuffle_across(y: torch.Tensor, order: torch.Tensor, replicas: Replicas) -> torch.Tensor:
    """Undo :func:`batch_shuffle_across` on the key encoder's output: this process's own rows, ``[n, ...]``."""
    shuffled = gather_interleaved(y, replicas)               # row j: the output for everyone[order[j]]
    return shuffled[torch.argsort(order)][replicas.rank::replicas.world]
