"""Batched image augmentation with per-sample random parameters.

Two-view methods (SimCLR, Chen et al. 2020; MoCo, He et al. 2020) need every image of a batch
to get its *own* random crop, flip and colour distortion. torchvision's transforms, applied to a
batch tensor, draw one set of parameters for the whole batch; applied image by image in a Python
loop they are correct but slow. Here each transform draws a vector of parameters, one per image,
and applies them with a handful of batched tensor operations, on whatever device the batch is on
(the airbench idea: keep the data on the device and augment whole batches there).

Every transform is a small class called as ``t(x, generator) -> x``:

- ``x`` is a float tensor ``[B, C, H, W]`` with values in ``[0, 1]`` (colour transforms need
  ``C == 3``); the output has the same dtype, device and value range.
- ``generator`` is a ``torch.Generator`` on the batch's device. All random numbers come from it,
  so the same seed gives the same batch. ``None`` uses torch's global generator.

The random parameters follow torchvision's definitions, so ``simclr_augment()`` is the recipe of
the papers; the one deliberate difference, how ``ColorJitter`` turns the hue, is explained there.

Example::

    augment = simclr_augment(size=32)
    g = torch.Generator(device=x.device).manual_seed(0)
    view1, view2 = augment(x, g), augment(x, g)      # two independent views of each image
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

__all__ = [
    "RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "RandomGrayscale", "GaussianBlur",
    "RandomCropWithPadding", "RandomErasing", "Compose",
    "rotate90", "rotate", "rgb_to_grayscale", "rgb_to_hsv", "hsv_to_rgb", "shift_hue",
    "rotate_hue",
    "simclr_augment", "moco_cifar_augment", "flip_and_crop",
]

# ITU-R 601-2 luma weights as torchvision rounds them in rgb_to_grayscale (PIL uses 0.299).
_LUMA = (0.2989, 0.587, 0.114)


# ----------------------------------------------------------------------------------------------
# Input checks and random draws


def _check_images(x: torch.Tensor, who: str, *, rgb: bool = False) -> None:
    """Raise a clear error unless ``x`` is a float batch ``[B, C, H, W]`` (``C == 3`` if ``rgb``)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: expected a torch.Tensor [B, C, H, W], got {type(x).__name__}.")
    if x.dim() != 4:
        hint = " (a single image? add a batch dimension with x.unsqueeze(0))" if x.dim() == 3 else ""
        raise ValueError(f"{who}: expected a 4-D batch [B, C, H, W], got shape {tuple(x.shape)}{hint}.")
    if not x.is_floating_point():
        raise TypeError(f"{who}: expected a float tensor with values in [0, 1], got dtype {x.dtype} "
                        f"(convert uint8 images with x.float() / 255).")
    if rgb and x.shape[1] != 3:
        raise ValueError(f"{who}: expected 3 (RGB) channels, got {x.shape[1]} in shape {tuple(x.shape)}.")


def _check_generator(generator: torch.Generator | None, x: torch.Tensor, who: str) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{who}: expected a torch.Generator or None, got {type(generator).__name__}.")
    g, d = generator.device, x.device
    if g.type != d.type or (g.index is not None and d.index is not None and g.index != d.index):
        raise ValueError(f"{who}: the generator is on {g} but the batch is on {d}; create it with "
                         f"torch.Generator(device=x.device).manual_seed(seed).")


def _uniform(shape, low: float, high: float, generator, device) -> torch.Tensor:
    """Float32 samples from U[low, high)."""
    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


def _coin(batch: int, p: float, generator, device) -> torch.Tensor:
    """Bool ``[batch]``: True with probability ``p`` per sample (exactly never for 0, always for 1)."""
    return torch.rand(batch, generator=generator, device=device) < p


def _per_sample(mask: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample ``[B]`` tensor to broadcast against ``[B, C, H, W]``."""
    return mask.view(-1, 1, 1, 1)


def _check_probability(name: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1], got {p}.")
    return float(p)


def _pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"{name}: expected a positive int or (height, width), got {size}.")
    return size


def _check_range(name: str, low_high: Sequence[float], lowest: float = 0.0) -> tuple[float, float]:
    low, high = (float(v) for v in low_high)
    if not lowest <= low <= high:
        raise ValueError(f"{name}: expected {lowest} <= low <= high, got ({low}, {high}).")
    return low, high


def _sample_box_sizes(batch: int, height: int, width: int, scale, ratio, generator, device,
                      attempts: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """``attempts`` candidate box sizes per sample, as torchvision draws them.

    The area is a fraction ``U(scale)`` of the image and the aspect ratio (w / h) is log-uniform
    in ``ratio``. Returns heights and widths ``[batch, attempts]`` (float, not yet rounded).
    The callers keep the first candidate that fits: that is torchvision's rejection loop, with
    all attempts drawn at once instead of in a Python loop.
    """
    area = height * width * _uniform((batch, attempts), *scale, generator, device)
    log_ratio = _uniform((batch, attempts), math.log(ratio[0]), math.log(ratio[1]), generator, device)
    aspect = torch.exp(log_ratio)
    return torch.sqrt(area / aspect), torch.sqrt(area * aspect)


def _first_true(candidates: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """For each row, the value of ``candidates`` at the first True of ``ok`` (column 0 if none)."""
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)
    return candidates.gather(1, first).squeeze(1)


# ----------------------------------------------------------------------------------------------
# Geometric transforms


@dataclass
class RandomResizedCrop:
    """Crop a random box from each image and resize it to ``size`` (the "random crop" of SimCLR).

    Box area is ``U(scale)`` of the image, aspect ratio log-uniform in ``ratio``, position uniform;
    after 10 rejected draws a sample falls back to a central crop (as in torchvision). Unlike
    torchvision the boxes are not rounded to whole pixels: ``torchvision.ops.roi_align`` resamples
    all boxes in one call, bilinearly, averaging several samples per output pixel when it shrinks
    (which acts as antialiasing).

    Shapes: ``[B, C, H, W] -> [B, C, size[0], size[1]]``.
    """

    size: int | tuple[int, int]
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __post_init__(self):
        self.size = _pair(self.size, "RandomResizedCrop size")
        self.scale = _check_range("RandomResizedCrop scale", self.scale)
        self.ratio = _check_range("RandomResizedCrop ratio", self.ratio, lowest=1e-6)
        if self.scale[0] <= 0 or self.scale[1] > 1:
            raise ValueError(f"RandomResizedCrop scale: expected 0 < low <= high <= 1, got {self.scale}.")

    def sample_boxes(self, batch: int, height: int, width: int, generator=None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
        """Random boxes ``[batch, 4]`` as ``(x1, y1, x2, y2)`` in pixel units (pixel i spans [i, i+1])."""
        h, w = _sample_box_sizes(batch, height, width, self.scale, self.ratio, generator, device)
        fits = (h <= height) & (w <= width)
        h, w = _first_true(h, fits), _first_true(w, fits)

        # Fallback when no draw fitted: the largest central box with an allowed aspect ratio.
        image_ratio = width / height
        if image_ratio < self.ratio[0]:
            fallback_w, fallback_h = width, width / self.ratio[0]
        elif image_ratio > self.ratio[1]:
            fallback_w, fallback_h = height * self.ratio[1], height
        else:
            fallback_w, fallback_h = width, height
        none_fit = ~fits.any(dim=1)
        h = torch.where(none_fit, torch.full_like(h, fallback_h), h)
        w = torch.where(none_fit, torch.full_like(w, fallback_w), w)

        # Position: uniform over the places where the box fits; the fallback box is centred.
        y1 = torch.rand(batch, generator=generator, device=device) * (height - h)
        x1 = torch.rand(batch, generator=generator, device=device) * (width - w)
        y1 = torch.where(none_fit, (height - h) / 2, y1)
        x1 = torch.where(none_fit, (width - w) / 2, x1)
        return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(x, "RandomResizedCrop")
        _check_generator(generator, x, "RandomResizedCrop")
        batch, _, height, width = x.shape
        boxes = self.sample_boxes(batch, height, width, generator, x.device).to(x.dtype)
        image_index = torch.arange(batch, device=x.device, dtype=x.dtype).unsqueeze(1)
        # aligned=True puts pixel centres at i + 0.5, so the box (0, 0, W, H) reproduces the image.
        return roi_align(x, torch.cat([image_index, boxes], dim=1), output_size=self.size,
                         spatial_scale=1.0, sampling_ratio=-1, aligned=True)


@dataclass
class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p``. Exact (no resampling)."""

    p: float = 0.5

    def __post_init__(self):
        self.p = _check_probability("RandomHorizontalFlip p", self.p)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(x, "RandomHorizontalFlip")
        _check_generator(generator, x, "RandomHorizontalFlip")
        flip = _coin(x.shape[0], self.p, generator, x.device)
        return torch.where(_per_sample(flip), x.flip(-1), x)


@dataclass
class RandomCropWithPadding:
    """The classic CIFAR crop: pad by ``padding`` pixels, then crop ``size`` at a random offset.

    ``padding_mode`` is ``"constant"`` (filled with ``fill``; torchvision's default) or
    ``"reflect"`` (what airbench uses). Offsets are whole pixels, so no value is interpolated.
    Shapes: ``[B, C, H, W] -> [B, C, size[0], size[1]]``.
    """

    size: int | tuple[int, int] = 32
    padding: int = 4
    fill: float = 0.0
    padding_mode: str = "constant"

    def __post_init__(self):
        self.size = _pair(self.size, "RandomCropWithPadding size")
        if self.padding < 0:
            raise ValueError(f"RandomCropWithPadding padding: expected >= 0, got {self.padding}.")
        if self.padding_mode not in ("constant", "reflect"):
            raise ValueError(f"RandomCropWithPadding padding_mode: expected 'constant' or 'reflect', "
                             f"got {self.padding_mode!r}.")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(x, "RandomCropWithPadding")
        _check_generator(generator, x, "RandomCropWithPadding")
        pad = self.padding
        padded = F.pad(x, (pad, pad, pad, pad), mode=self.padding_mode,
                       value=self.fill if self.padding_mode == "constant" else None)
        batch, _, padded_h, padded_w = padded.shape
        out_h, out_w = self.size
        if out_h > padded_h or out_w > padded_w:
            raise ValueError(f"RandomCropWithPadding: crop {self.size} is larger than the padded image "
                             f"{(padded_h, padded_w)}.")
        top = torch.randint(0, padded_h - out_h + 1, (batch,), generator=generator, device=x.device)
        left = torch.randint(0, padded_w - out_w + 1, (batch,), generator=generator, device=x.device)
        rows = top[:, None] + torch.arange(out_h, device=x.device)           # [B, out_h]
        cols = left[:, None] + torch.arange(out_w, device=x.device)          # [B, out_w]
        images = torch.arange(batch, device=x.device)[:, None, None]
        # Advanced indexing gathers each sample's window: [B, out_h, out_w, C].
        windows = padded.permute(0, 2, 3, 1)[images, rows[:, :, None], cols[:, None, :]]
        return windows.permute(0, 3, 1, 2).contiguous()


def rotate90(x: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """Rotate images by ``k * 90`` degrees counter-clockwise (as displayed), exactly.

    ``k`` is an int (same rotation for the batch) or a LongTensor ``[B]`` (one per image, any
    integers; taken mod 4). Per-sample rotation needs square images. This is RotNet's pretext
    transform (Gidaris et al., 2018). Shapes: ``[B, C, H, W] -> [B, C, H, W]`` (``[B, C, W, H]``
    for an odd int ``k`` on non-square images).
    """
    _check_images(x, "rotate90")
    if isinstance(k, int):
        return torch.rot90(x, k, dims=(-2, -1))
    if not isinstance(k, torch.Tensor) or k.is_floating_point() or k.dim() != 1 or k.numel() != x.shape[0]:
        got = f"shape {tuple(k.shape)}, dtype {k.dtype}" if isinstance(k, torch.Tensor) else type(k).__name__
        raise TypeError(f"rotate90: expected k as an int or an integer tensor of shape ({x.shape[0]},), "
                        f"got {got}.")
    if x.shape[-2] != x.shape[-1]:
        raise ValueError(f"rotate90: per-sample rotations need square images, got H×W = "
                         f"{x.shape[-2]}×{x.shape[-1]}.")
    quarter_turns = k.to(x.device) % 4
    out = x.clone()
    for turns in (1, 2, 3):
        chosen = quarter_turns == turns
        out[chosen] = torch.rot90(x[chosen], turns, dims=(-2, -1))
    return out


def rotate(x: torch.Tensor, degrees: float | torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Rotate each image about its centre by ``degrees`` counter-clockwise (as displayed).

    ``degrees`` is a number or a tensor ``[B]`` (one angle per image). Bilinear interpolation with
    ``F.affine_grid`` / ``F.grid_sample``; the output keeps the input size, so corners are cut off
    and the uncovered area is filled according to ``padding_mode``: ``"zeros"`` (black, like
    torchvision's ``rotate``), ``"border"`` (repeat the edge) or ``"reflection"`` (mirror the image).
    For multiples of 90° prefer :func:`rotate90`, which is exact.
    Shapes: ``[B, C, H, W] -> [B, C, H, W]``.
    """
    _check_images(x, "rotate")
    if padding_mode not in ("zeros", "border", "reflection"):
        raise ValueError(f"rotate: expected padding_mode 'zeros', 'border' or 'reflection', got {padding_mode!r}.")
    batch, _, height, width = x.shape
    angle = torch.as_tensor(degrees, dtype=x.dtype, device=x.device)
    if angle.dim() == 0:
        angle = angle.expand(batch)
    if angle.shape != (batch,):
        raise ValueError(f"rotate: expected a number or a tensor of shape ({batch},) of angles, "
                         f"got shape {tuple(angle.shape)}.")
    radians = torch.deg2rad(angle)
    cos, sin = torch.cos(radians), torch.sin(radians)
    # grid_sample asks, for each output pixel, where to read in the input: the inverse rotation.
    # In normalised coordinates x spans W pixels and y spans H, hence the aspect factors.
    zero = torch.zeros_like(cos)
    theta = torch.stack([
        torch.stack([cos, -sin * height / width, zero], dim=1),
        torch.stack([sin * width / height, cos, zero], dim=1),
    ], dim=1)                                                                  # [B, 2, 3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


# ----------------------------------------------------------------------------------------------
# Colour transforms


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma of RGB images: ``[B, 3, H, W] -> [B, 1, H, W]``."""
    r, g, b = x.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _hue_chroma_value(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue in turns [0, 1), chroma (max - min) and value (max) of RGB ``[B, 3, H, W]``, each ``[B, 1, H, W]``."""
    r, g, b = x.unbind(dim=1)
    value = x.amax(dim=1)
    chroma = value - x.amin(dim=1)
    # Hue in sixths of a turn, measured from whichever channel is largest (red wins ties).
    red_max = value == r
    green_max = (value == g) & ~red_max
    sixths = torch.where(red_max, g - b, torch.where(green_max, 2 * chroma + b - r, 4 * chroma + r - g))
    sixths = sixths / torch.where(chroma > 0, chroma, 1.0)       # grey pixels (chroma 0) get hue 0
    hue = torch.frac(sixths / 6 + 1)                             # wrap negative hues into [0, 1)
    return hue.unsqueeze(1), chroma.unsqueeze(1), value.unsqueeze(1)


def _rgb_from_hue_chroma_value(hue: torch.Tensor, chroma: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_hue_chroma_value`: ``[B, 1, H, W]`` each -> RGB ``[B, 3, H, W]``.

    Closed form: channel = ``value - chroma * clamp(min(k, 4 - k), 0, 1)`` with
    ``k = (n + 6 hue) mod 6`` and ``n = 5, 3, 1`` for red, green, blue.
    """
    n = torch.tensor([5.0, 3.0, 1.0], dtype=hue.dtype, device=hue.device).view(1, 3, 1, 1)
    k = 6 * torch.frac(n / 6 + hue)                              # frac: a cheaper `mod` for x >= 0
    return value - chroma * torch.minimum(k, 4 - k).clamp_(0, 1)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """RGB ``[B, 3, H, W]`` in [0, 1] to HSV, each channel in [0, 1] (hue in turns, not degrees)."""
    hue, chroma, value = _hue_chroma_value(x)
    saturation = chroma / torch.where(value > 0, value, 1.0)
    return torch.cat([hue, saturation, value], dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """HSV ``[B, 3, H, W]`` (all channels in [0, 1]) back to RGB in [0, 1]."""
    hue, saturation, value = x.split(1, dim=1)
    return _rgb_from_hue_chroma_value(hue, value * saturation, value)


def shift_hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of each RGB image by ``turns[i]`` of a full turn (torchvision's ``adjust_hue``).

    Saturation and value stay the same, so the conversion skips them: ``[B, 3, H, W]``, ``[B]`` -> ``[B, 3, H, W]``.
    """
    hue, chroma, value = _hue_chroma_value(x)
    hue = torch.frac(hue + _per_sample(turns.to(hue)) + 1)               # turns in [-0.5, 0.5]; +1 keeps it >= 0
    return _rgb_from_hue_chroma_value(hue, chroma, value)


def rotate_hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate the colours of each RGB image about the grey diagonal of the RGB cube by ``turns[i]``.

    HSV's hue is the angle around that diagonal (measured on a hexagon rather than a circle), so
    this rotation is a cheap stand-in for :func:`shift_hue`: a linear map, one 3×3 matrix per image
    (Rodrigues' formula), that agrees with the HSV shift for multiples of 1/3 turn, turns in the
    same direction (red -> green -> blue) and keeps each pixel's channel mean. Colours rotated out
    of the cube are clamped. ``[B, 3, H, W]``, ``[B]`` -> ``[B, 3, H, W]``.
    """
    angle = 2 * math.pi * turns.to(device=x.device, dtype=x.dtype)
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    identity = torch.eye(3, dtype=x.dtype, device=x.device)
    onto_grey = torch.full((3, 3), 1 / 3, dtype=x.dtype, device=x.device)       # projection on (1,1,1)
    cross_grey = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]],
                              dtype=x.dtype, device=x.device) / math.sqrt(3)    # v -> axis × v
    rotation = cos * identity + (1 - cos) * onto_grey + sin * cross_grey        # [B, 3, 3]
    return torch.einsum("bij,bjhw->bihw", rotation, x).clamp_(0, 1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor * x + (1 - factor) * other``, clamped to [0, 1]; ``factor`` is per sample ``[B]``.

    Factor 0 gives ``other``, 1 gives ``x``, and above 1 pushes ``x`` further away from ``other``.
    """
    return torch.lerp(other, x, _per_sample(factor)).clamp_(0, 1)


def _jitter_range(name: str, amount: float | tuple[float, float], centre: float, lowest: float):
    """torchvision's convention: a number ``a`` means ``[centre - a, centre + a]``, clipped below."""
    if isinstance(amount, (int, float)):
        if amount < 0:
            raise ValueError(f"ColorJitter {name}: expected a non-negative number, got {amount}.")
        return (max(lowest, centre - amount), centre + amount)
    return _check_range(f"ColorJitter {name}", amount, lowest=lowest)


@dataclass
class ColorJitter:
    """Random brightness, contrast, saturation and hue, drawn independently for each image.

    Factors follow torchvision: brightness ``b`` means a factor in ``[1 - b, 1 + b]``, and likewise
    for contrast and saturation; hue ``h <= 0.5`` turns the hue by ``U(-h, h)`` of a full turn.
    The whole jitter is applied to each image with probability ``p`` (SimCLR uses 0.8).

    Two differences from torchvision, both for speed:

    - The four adjustments run in a fixed order (brightness, contrast, saturation, hue) rather
      than a random one.
    - ``hue_method="rotation"`` (default) turns colours about the grey axis with one 3×3 matrix
      per image (:func:`rotate_hue`), a close relative of the HSV hue shift at a fraction of
      the cost; ``hue_method="hsv"`` converts to HSV and back (:func:`shift_hue`), and then each
      adjustment equals torchvision's (``adjust_brightness`` ... ``adjust_hue``) to float precision.
      ``bench/bench_augment.py`` times both.

    Needs RGB: ``[B, 3, H, W] -> [B, 3, H, W]``.
    """

    brightness: float | tuple[float, float] = 0.0
    contrast: float | tuple[float, float] = 0.0
    saturation: float | tuple[float, float] = 0.0
    hue: float | tuple[float, float] = 0.0
    p: float = 1.0
    hue_method: str = "rotation"

    def __post_init__(self):
        self.brightness = _jitter_range("brightness", self.brightness, 1.0, 0.0)
        self.contrast = _jitter_range("contrast", self.contrast, 1.0, 0.0)
        self.saturation = _jitter_range("saturation", self.saturation, 1.0, 0.0)
        self.hue = _jitter_range("hue", self.hue, 0.0, -0.5)
        self.p = _check_probability("ColorJitter p", self.p)
        if self.hue_method not in ("rotation", "hsv"):
            raise ValueError(f"ColorJitter hue_method: expected 'rotation' or 'hsv', got {self.hue_method!r}.")
        if self.hue[1] > 0.5:
            raise ValueError(f"ColorJitter hue: expected a shift of at most 0.5 turns, got {self.hue}.")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(x, "ColorJitter", rgb=True)
        _check_generator(generator, x, "ColorJitter")
        batch, device = x.shape[0], x.device
        apply = _coin(batch, self.p, generator, device)
        brightness = _uniform(batch, *self.brightness, generator, device)
        contrast = _uniform(batch, *self.contrast, generator, device)
        saturation = _uniform(batch, *self.saturation, generator, device)
        hue_shift = _uniform(batch, *self.hue, generator, device)

        out = x
        if self.brightness != (1.0, 1.0):
            out = (out * _per_sample(brightness)).clamp_(0, 1)
        if self.contrast != (1.0, 1.0):
            mean_luma = rgb_to_grayscale(out).mean(dim=(1, 2, 3), keepdim=True)
            out = _blend(out, mean_luma, contrast)
        if self.saturation != (1.0, 1.0):
            out = _blend(out, rgb_to_grayscale(out), saturation)
        if self.hue != (0.0, 0.0):
            out = rotate_hue(out, hue_shift) if self.hue_method == "rotation" else shift_hue(out, hue_shift)
        return torch.where(_per_sample(apply), out, x)


@dataclass
class RandomGrayscale:
    """Replace each image by its luma (copied to all 3 channels) with probability ``p``."""

    p: float = 0.1

    def __post_init__(self):
        self.p = _check_probability("RandomGrayscale p", self.p)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(x, "RandomGrayscale", rgb=True)
        _check_generator(generator, x, "RandomGrayscale")
        gray = _coin(x.shape[0], self.p, generator, x.device)
        return torch.where(_per_sample(gray), rgb_to_grayscale(x).expand_as(x), x)


@dataclass
class GaussianBlur:
    """Blur each image with probability ``p`` by a Gaussian of per-sample sigma ``U(sigma)``.

    SimCLR blurs ImageNet images with a kernel 10% of the image side and sigma in [0.1, 2.0]
    (and not CIFAR-10 images). The 2-D blur is two 1-D convolutions (the Gaussian is separable),
    done for the whole batch as one grouped convolution per direction, with reflect padding.
    """

    kernel_size: int
    sigma: tuple[float, float] = (0.1, 2.0)
    p: float = 0.5

    def __post_init__(self):
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"GaussianBlur kernel_size: expected a positive odd int, got {self.kernel_size}.")
        self.sigma = _check_range("GaussianBlur sigma", self.sigma, lowest=1e-6)
        self.p = _check_probability("GaussianBlur p", self.p)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(x, "GaussianBlur")
        _check_generator(generator, x, "GaussianBlur")
        batch, channels, height, width = x.shape
        radius = self.kernel_size // 2
        if radius >= min(height, width):
            raise ValueError(f"GaussianBlur: kernel_size {self.kernel_size} is too large for "
                             f"{height}×{width} images (reflect padding needs kernel_size < 2 * side).")
        apply = _coin(batch, self.p, generator, x.device)
        sigma = _uniform(batch, *self.sigma, generator, x.device).to(x.dtype)

        offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        kernels = torch.exp(-0.5 * (offsets / sigma[:, None]) ** 2)               # [B, k]
        kernels = kernels / kernels.sum(dim=1, keepdim=True)
        kernels = kernels.repeat_interleave(channels, dim=0)                      # [B*C, k]

        # Treat every (image, channel) pair as one group so each gets its own kernel.
        planes = F.pad(x, (radius, radius, radius, radius), mode="reflect")
        planes = planes.reshape(1, batch * channels, height + 2 * radius, width + 2 * radius)
        planes = F.conv2d(planes, kernels[:, None, None, :], groups=batch * channels)   # along W
        planes = F.conv2d(planes, kernels[:, None, :, None], groups=batch * channels)   # along H
        blurred = planes.reshape(batch, channels, height, width)
        return torch.where(_per_sample(apply), blurred, x)


@dataclass
class RandomErasing:
    """Erase one random rectangle per image with probability ``p`` (Zhong et al., 2020; Cutout).

    Rectangle area is ``U(scale)`` of the image and aspect ratio log-uniform in ``ratio``, rounded
    to whole pixels; an image whose 10 draws all fail to fit is left unchanged (as in torchvision).
    ``value`` is a number, one number per channel, or ``"random"`` (uniform noise in [0, 1]; note
    torchvision's ``"random"`` uses normal noise, which would leave [0, 1]).
    """

    p: float = 0.5
    scale: tuple[float, float] = (0.02, 0.33)
    ratio: tuple[float, float] = (0.3, 3.3)
    value: float | Sequence[float] | str = 0.0

    def __post_init__(self):
        self.p = _check_probability("RandomErasing p", self.p)
        self.scale = _check_range("RandomErasing scale", self.scale)
        self.ratio = _check_range("RandomErasing ratio", self.ratio, lowest=1e-6)
        if isinstance(self.value, str):
            if self.value != "random":
                raise ValueError(f"RandomErasing value: expected a number, a sequence or 'random', got {self.value!r}.")
        else:
            values = [self.value] if isinstance(self.value, (int, float)) else list(self.value)
            if not all(0.0 <= float(v) <= 1.0 for v in values):
                raise ValueError(f"RandomErasing value: expected values in [0, 1], got {self.value}.")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(x, "RandomErasing")
        _check_generator(generator, x, "RandomErasing")
        batch, channels, height, width = x.shape
        device = x.device
        apply = _coin(batch, self.p, generator, device)
        h, w = _sample_box_sizes(batch, height, width, self.scale, self.ratio, generator, device)
        h, w = h.round(), w.round()
        fits = (h < height) & (w < width) & (h > 0) & (w > 0)
        h, w = _first_true(h, fits), _first_true(w, fits)
        apply = apply & fits.any(dim=1)
        # Whole-pixel position, uniform over the places where the rectangle fits.
        top = (torch.rand(batch, generator=generator, device=device) * (height - h + 1)).floor()
        left = (torch.rand(batch, generator=generator, device=device) * (width - w + 1)).floor()

        rows = torch.arange(height, device=device).view(1, height, 1)
        cols = torch.arange(width, device=device).view(1, 1, width)
        inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + h).view(-1, 1, 1)) &
                  (cols >= left.view(-1, 1, 1)) & (cols < (left + w).view(-1, 1, 1)))   # [B, H, W]
        erase = (inside & apply.view(-1, 1, 1)).unsqueeze(1)                           # [B, 1, H, W]

        if self.value == "random":
            fill = torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype)
        else:
            values = [self.value] if isinstance(self.value, (int, float)) else list(self.value)
            if len(values) not in (1, channels):
                raise ValueError(f"RandomErasing value: expected 1 or {channels} values, got {len(values)}.")
            fill = torch.tensor(values, dtype=x.dtype, device=device).view(1, -1, 1, 1)
        return torch.where(erase, fill, x)


# ----------------------------------------------------------------------------------------------
# Composition and the recipes from the papers


class Compose:
    """Apply transforms in order, each drawing from the same generator: ``Compose([t1, t2])(x, g)``."""

    def __init__(self, transforms: Sequence[Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]]):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"Compose: expected callables t(x, generator), got {type(t).__name__}.")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(x, "Compose")
        for t in self.transforms:
            x = t(x, generator)
        return x

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


def simclr_augment(size: int = 32, strength: float = 0.5, blur: bool | None = None) -> Compose:
    """SimCLR's augmentation (Chen et al., 2020, Appendix A) as one batched transform.

    Random resized crop (scale 0.08-1) with horizontal flip, colour distortion of ``strength`` s:
    ``ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)`` with p=0.8 and grayscale with p=0.2; s=0.5 is the
    paper's CIFAR-10 setting. Gaussian blur (kernel 10% of the side, p=0.5) is part of the ImageNet
    recipe only; ``blur=None`` turns it on for images larger than 32 pixels.
    """
    if blur is None:
        blur = size > 32
    transforms = [
        RandomResizedCrop(size, scale=(0.08, 1.0)),
        RandomHorizontalFlip(0.5),
        ColorJitter(0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength, p=0.8),
        RandomGrayscale(0.2),
    ]
    if blur:
        transforms.append(GaussianBlur(kernel_size=(size // 10) | 1, sigma=(0.1, 2.0), p=0.5))
    return Compose(transforms)


def moco_cifar_augment(size: int = 32, min_scale: float = 0.2) -> Compose:
    """The augmentation of the official MoCo CIFAR-10 demo (He et al., 2020; MoCo v2 style).

    ``RandomResizedCrop(32, scale=(min_scale, 1))`` (the demo's 0.2 by default),
    ``ColorJitter(0.4, 0.4, 0.4, 0.1)`` with p=0.8, ``RandomGrayscale(0.2)``, horizontal flip.
    """
    return Compose([
        RandomResizedCrop(size, scale=(min_scale, 1.0)),
        ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
        RandomGrayscale(0.2),
        RandomHorizontalFlip(0.5),
    ])


def flip_and_crop(size: int = 32, padding: int = 4) -> Compose:
    """The standard supervised CIFAR augmentation: pad-and-crop, then horizontal flip."""
    return Compose([RandomCropWithPadding(size, padding), RandomHorizontalFlip(0.5)])
