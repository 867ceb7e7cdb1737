"""Batches served from the training device: :class:`DeviceBatches`, and the two image conversions.

Training never touches a Python data loader: :class:`DeviceBatches` keeps the whole uint8
set on the training device and serves batches by indexing a per-epoch permutation (the
airbench approach: Jordan 2024, ``cifar10-airbench``).
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

__all__ = ["DeviceBatches", "to_float", "normalize"]


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` → float32 in [0, 1]."""
    if x.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 images, got {x.dtype}.")
    return x.float().div_(255)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Per-channel ``(x - mean) / std`` for float ``[B, C, H, W]``."""
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


class DeviceBatches:
    """Serve a uint8 image set from the training device, one shuffled batch at a time.

    The whole set lives on ``device`` once (CIFAR-10 is 150 MB as uint8), so a batch is one
    indexing operation plus augmentation on the device: no worker processes, no PIL.

    Args:
        images: uint8 ``[N, 3, H, W]``.  labels: int64 ``[N]``.
        augment: ``augment(x01, generator) -> x01``, applied per view with per-sample randomness.
        views: 1 yields ``(x, y)``; 2 yields ``((x1, x2), y)``, two independent augmentations of each image.
        mean, std: per-channel normalisation applied last (``None``: leave in [0, 1]).
        seed: the permutation and augmentation of epoch ``e`` depend only on ``(seed, e)``, so an epoch
            can be replayed exactly (this is what makes checkpoint/resume exact).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device | str,
                 *, augment: Callable | None = None, views: int = 1, mean=None, std=None, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise TypeError(f"DeviceBatches expects uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}.")
        if len(images) != len(labels):
            raise ValueError(f"DeviceBatches: {len(images)} images but {len(labels)} labels.")
        if views not in (1, 2):
            raise ValueError(f"views must be 1 or 2, got {views}.")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size = min(batch_size, len(images)) if not drop_last else batch_size
        if drop_last and len(images) < batch_size:
            raise ValueError(f"DeviceBatches: batch_size {batch_size} is larger than the {len(images)} images "
                             f"with drop_last=True: no batch would be served.")
        self.augment, self.views, self.mean, self.std = augment, views, mean, std
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def generator(self, epoch: int) -> torch.Generator:
        """The random stream of one epoch, on the loader's device."""
        return torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + epoch)

    def _view(self, x_uint8: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = to_float(x_uint8)
        if self.augment is not None:
            x = self.augment(x, generator)
        if self.mean is not None:
            x = normalize(x, self.mean, self.std)
        return x

    def epoch(self, epoch: int = 0) -> Iterator:
        """Yield the batches of epoch ``epoch``: ``(x, y)`` or ``((x1, x2), y)``."""
        g = self.generator(epoch)
        n = len(self.labels)
        order = torch.randperm(n, device=self.device, generator=g) if self.shuffle else torch.arange(n, device=self.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x, y = self.images[idx], self.labels[idx]
            if self.views == 1:
                yield self._view(x, g), y
            else:
                yield (self._view(x, g), self._view(x, g)), y

    def __iter__(self) -> Iterator:
        return self.epoch(0)
