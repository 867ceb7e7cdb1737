"""Backbones, heads and a decoder shared by every notebook.

Every method trains the same backbone and is evaluated the same way, so the
methods can be compared like for like. Two backbones share one interface:

* :class:`ConvNet`: a small 4-block network that trains in minutes on a laptop CPU;
* :class:`ResNet18`: the CIFAR variant of ResNet-18 (He et al., 2016) used on GPUs.

Both take normalised images ``[B, 3, H, W]`` (32×32 in the course) and offer

* ``forward(x) -> [B, feature_dim]``: the global-average-pooled last block (the
  representation that kNN and the linear probe evaluate);
* ``forward_blocks(x) -> [map1, map2, map3, map4]``: the four block outputs
  ``[B, C_k, H_k, W_k]``, e.g. for a probe per block (Gidaris et al., 2018, Table 1)
  or for a decoder that reconstructs from a feature map;
* ``block_features(x, block) -> [B, C_block]``: the pooled map of one block, 1-based.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvNet", "ResNet18", "make_backbone", "LinearHead", "ProjectionHead", "ConvDecoder", "Discriminator"]


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3×3 convolution (same padding), batch norm, ReLU: ``[B, C_in, H, W] -> [B, C_out, H, W]``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class _BlockBackbone(nn.Module):
    """What both backbones share: a stem, four blocks, global average pooling.

    Subclasses set ``self.stem`` (may be ``nn.Identity``), ``self.blocks`` (an
    ``nn.ModuleList`` of 4 modules), ``self.block_channels`` and ``self.feature_dim``.
    """

    stem: nn.Module
    blocks: nn.ModuleList
    block_channels: tuple[int, ...]
    feature_dim: int

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__} expects images [B, {self.in_channels}, H, W], got {got}.")
        if not x.is_floating_point():
            raise TypeError(f"{type(self).__name__} expects float images (normalised), got dtype {x.dtype}; "
                            "convert uint8 images with sslcourse.data.to_float and normalize first.")

    def forward_blocks(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """The block outputs ``[B, C_k, H_k, W_k]`` for k = 1..4 (or 1..``upto``)."""
        self._check_input(x)
        upto = len(self.blocks) if upto is None else upto
        maps = []
        h = self.stem(x)
        for block in self.blocks[:upto]:
            h = block(h)
            maps.append(h)
        return maps

    def block_features(self, x: torch.Tensor, block: int) -> torch.Tensor:
        """Global-average-pooled output of block ``block`` (1-based): ``[B, block_channels[block-1]]``.

        Only the blocks up to ``block`` run.
        """
        if not isinstance(block, int) or not 1 <= block <= len(self.blocks):
            raise ValueError(f"block must be an int from 1 to {len(self.blocks)} (1-based), got {block!r}.")
        return self.forward_blocks(x, upto=block)[-1].mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, feature_dim]``: the pooled last block."""
        return self.forward_blocks(x)[-1].mean(dim=(2, 3))


class ConvNet(_BlockBackbone):
    """A small 4-block ConvNet for 32×32 images that trains fast on a CPU.

    Block k is conv3x3-BN-ReLU with ``width · 2^(k-1)`` channels; a 2×2 max-pool
    halves the resolution before blocks 2, 3 and 4. For 32×32 inputs and
    ``width=32`` the block maps are ``[B, 32, 32, 32]``, ``[B, 64, 16, 16]``,
    ``[B, 128, 8, 8]`` and ``[B, 256, 4, 4]``, and ``feature_dim = 8 · width = 256``.
    Every block runs about the same number of multiply-adds (~4.7M per image at
    width 32, except the cheaper first one), so no single layer dominates.

    Args:
        width: channels of block 1.
        in_channels: channels of the input images.
    """

    def __init__(self, width: int = 32, in_channels: int = 3):
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}.")
        self.in_channels = in_channels
        self.width = width
        self.block_channels = tuple(width * 2**k for k in range(4))
        self.feature_dim = self.block_channels[-1]
        self.stem = nn.Identity()
        layers = []
        previous = in_channels
        for k, channels in enumerate(self.block_channels):
            pool = [nn.MaxPool2d(2)] if k > 0 else []
            layers.append(nn.Sequential(*pool, conv_bn_relu(previous, channels)))
            previous = channels
        self.blocks = nn.ModuleList(layers)

    def extra_repr(self) -> str:
        return f"width={self.width}, feature_dim={self.feature_dim}"


class BasicBlock(nn.Module):
    """ResNet basic block (He et al., 2016): two 3×3 convs and a shortcut.

    ``[B, C_in, H, W] -> [B, C_out, H / stride, W / stride]``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class ResNet18(_BlockBackbone):
    """ResNet-18, CIFAR variant: a 3×3 stride-1 stem and no max-pool.

    This is the backbone of the MoCo CIFAR-10 demo and most CIFAR SSL results.
    For 32×32 inputs the four stages ("blocks") give ``[B, 64, 32, 32]``,
    ``[B, 128, 16, 16]``, ``[B, 256, 8, 8]`` and ``[B, 512, 4, 4]``;
    ``feature_dim = 512``.

    Args:
        in_channels: channels of the input images.
        width: channels of the stem and the first stage (64 in He et al.); the stages have
            ``width · 2^(k-1)`` channels and ``feature_dim = 8 · width``.
    """

    def __init__(self, in_channels: int = 3, width: int = 64):
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}.")
        self.in_channels = in_channels
        self.width = width
        self.block_channels = tuple(width * 2**k for k in range(4))
        self.feature_dim = self.block_channels[-1]
        self.stem = conv_bn_relu(in_channels, width)
        stages = []
        previous = width
        for k, channels in enumerate(self.block_channels):
            stride = 1 if k == 0 else 2
            stages.append(nn.Sequential(BasicBlock(previous, channels, stride), BasicBlock(channels, channels)))
            previous = channels
        self.blocks = nn.ModuleList(stages)


def make_backbone(budget, *, in_channels: int = 3, width_divisor: int = 1) -> nn.Module:
    """The backbone a budget preset asks for: ``budget.backbone`` is ``"convnet"`` or ``"resnet18"``.

    ``budget`` is a :class:`sslcourse.budget.Budget` (its ``width`` sizes the ConvNet)
    or a backbone name. ``in_channels`` is the input's channels (3 for RGB; 1 and 2 for
    the L and ab views of 03). ``width_divisor=2`` builds the network with half the
    channels in every layer, and half the ``feature_dim``: the two halves of a split-brain
    autoencoder (Zhang et al., 2017), whose concatenated features are as wide as one backbone.
    """
    if not isinstance(width_divisor, int) or width_divisor < 1:
        raise ValueError(f"width_divisor must be a positive int, got {width_divisor!r}.")
    name = budget if isinstance(budget, str) else budget.backbone
    if name == "convnet":
        width = 32 if isinstance(budget, str) else budget.width
        return ConvNet(width=width // width_divisor, in_channels=in_channels)
    if name == "resnet18":
        return ResNet18(in_channels=in_channels, width=64 // width_divisor)
    raise ValueError(f"Unknown backbone {name!r}: expected 'convnet' or 'resnet18'.")


class LinearHead(nn.Module):
    """A linear classifier ``[B, in_dim] -> [B, num_classes]`` (logits)."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class ProjectionHead(nn.Module):
    """The projection head between a backbone and a contrastive loss: ``[B, in_dim] -> [B, out_dim]``.

    ``hidden_dim=None`` is a single Linear layer (MoCo v1: He et al., 2020). Otherwise it is
    Linear, [BatchNorm], ReLU, Linear:

    * ``batch_norm=False``: MoCo v2's head (Chen, Fan, Girshick & He, 2020), Linear-ReLU-Linear.
      It has no BN, so the head adds no path for batch statistics to leak between the
      samples of a batch (MoCo relies on shuffling BN for that in the backbone).
    * ``batch_norm=True``: SimCLR's head (Chen, Kornblith, Norouzi & Hinton, 2020, appendix B.9:
      BN after the hidden layer), also BYOL's projector (Grill et al., 2020).

    The loss is computed on the head's output; downstream tasks use the backbone's features,
    before the head.
    """

    def __init__(self, in_dim: int, out_dim: int = 128, hidden_dim: int | None = 512, batch_norm: bool = False):
        super().__init__()
        if hidden_dim is None:
            if batch_norm:
                raise ValueError("ProjectionHead: batch_norm=True needs a hidden layer (hidden_dim is None).")
            self.net = nn.Linear(in_dim, out_dim)
        else:
            hidden = [nn.Linear(in_dim, hidden_dim, bias=not batch_norm)]
            if batch_norm:
                hidden.append(nn.BatchNorm1d(hidden_dim))
            self.net = nn.Sequential(*hidden, nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """Decode a feature vector or a small feature map back into an image.

    Takes either a vector ``[B, in_channels]`` (e.g. ``backbone(x)``; built with
    ``in_size=1``, the default) or a square map ``[B, in_channels, in_size, in_size]``
    (e.g. ``backbone.forward_blocks(x)[-1]`` with ``in_size=4``), and returns
    ``[B, out_channels, image_size, image_size]``.

    Each of the ``log2(image_size / in_size)`` stages doubles the resolution with a
    4×4 stride-2 transposed convolution, BN and ReLU, halving the channels (as in
    the DCGAN generator that context encoders build on, Pathak et al., 2016);
    a final 3×3 convolution maps to ``out_channels``.

    The output is unbounded: apply ``torch.sigmoid`` for pixels in [0, 1] (or use it
    as logits in a cross-entropy loss), or compare it to normalised images directly.

    Args:
        in_channels: channels (or dimension) of the input.
        out_channels: channels of the output image (3 for RGB, 2 for Lab's ab).
        image_size: output height and width; ``image_size / in_size`` must be a power of 2.
        in_size: height and width of the input map (1 for a vector).
        width: channels of the last stage; earlier stages have up to 8× more.
    """

    def __init__(self, in_channels: int, out_channels: int = 3, image_size: int = 32, *,
                 in_size: int = 1, width: int = 32):
        super().__init__()
        ratio = image_size / in_size
        stages = round(math.log2(ratio)) if ratio >= 1 else -1
        if stages < 0 or 2**stages != ratio:
            raise ValueError(f"ConvDecoder: image_size / in_size must be a power of 2, "
                             f"got image_size={image_size}, in_size={in_size}.")
        self.in_channels, self.in_size, self.image_size = in_channels, in_size, image_size
        channels = [min(width * 2 ** (stages - 1 - i), 8 * width) for i in range(stages)]
        layers: list[nn.Module] = []
        previous = in_channels
        for c in channels:
            layers += [nn.ConvTranspose2d(previous, c, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            previous = c
        layers.append(nn.Conv2d(previous, out_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, in_channels]`` or ``[B, in_channels, in_size, in_size]`` -> ``[B, out_channels, S, S]``."""
        if z.ndim == 2 and self.in_size == 1:
            z = z[:, :, None, None]
        expected = (self.in_channels, self.in_size, self.in_size)
        if z.ndim != 4 or tuple(z.shape[1:]) != expected:
            vector = f"[B, {self.in_channels}] or " if self.in_size == 1 else ""
            raise ValueError(f"ConvDecoder expects {vector}[B, {', '.join(map(str, expected))}], "
                             f"got {tuple(z.shape)}. Build it with in_channels and in_size matching its input.")
        return self.net(z)


class Discriminator(nn.Module):
    """A DCGAN-style discriminator for small images: ``[B, C, S, S] -> [B]`` logits (real > 0 > fake).

    ``log2(S) - 2`` stages of a 4×4 stride-2 convolution and LeakyReLU(0.2) halve the resolution
    down to 4×4, doubling the channels from ``width`` (BatchNorm on every stage but the first, as
    in Radford, Metz & Chintala, 2016, whose discriminator the context encoder's adversary follows:
    Pathak et al., 2016, Sec. 3.2); a last 4×4 convolution gives one logit per image. It reads
    images in [0, 1] and centres them itself, so it can judge an image as it would be shown.

    Args:
        in_channels: channels of the images (3 for RGB).
        image_size: height and width ``S``; a power of 2, at least 8.
        width: channels of the first stage.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, *, width: int = 32):
        super().__init__()
        stages = round(math.log2(image_size)) - 2 if image_size >= 8 else 0
        if stages < 1 or 2 ** (stages + 2) != image_size:
            raise ValueError(f"Discriminator: image_size must be a power of 2 of at least 8, got {image_size}.")
        self.in_channels, self.image_size = in_channels, image_size
        layers: list[nn.Module] = []
        previous = in_channels
        for i in range(stages):
            channels = width * 2**i
            layers.append(nn.Conv2d(previous, channels, 4, stride=2, padding=1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(channels))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            previous = channels
        layers.append(nn.Conv2d(previous, 1, 4))          # 4×4 -> 1×1: one logit per image
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, S, S]`` images in [0, 1] -> ``[B]`` logits."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"Discriminator expects images [B, {', '.join(map(str, expected))}], "
                             f"got {tuple(images.shape)}.")
        return self.net(2 * images - 1).flatten()

