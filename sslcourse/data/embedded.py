"""The embedded offline dataset: colour digits over blurred photographs, built from installed packages.

When there is no network and no cached CIFAR-10, the course still needs real-looking
images. This module draws a labelled, colour, 32×32 dataset in the style of
SynDigits (Ganin & Lempitsky, 2015, "Unsupervised Domain Adaptation by
Backpropagation"), using only files that ship inside installed packages:

* **digits** 0–9 as labels, drawn in the TrueType fonts that ship with matplotlib
  (DejaVu, STIX and Computer Modern: about 20 faces), in random colour, size,
  position, rotation and slant;
* **backgrounds** cut from the colour photographs that ship with scikit-image and
  scikit-learn, blurred by downsampling each crop to 8×8 and back to 32×32.

The blur is a measured design choice (see ``bench/RESULTS.md``): over sharp photo
crops the background dominates the features and self-supervised pretraining barely
beats random weights; over blurred backgrounds, with digits filling most of the
frame, shape carries the signal, and rotation, jigsaw, inpainting, colorization and
contrastive tasks all have something to learn.

Every image is drawn from its own random stream, seeded by ``(seed, split, index)``,
so the set is deterministic and any prefix of it can be generated alone.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

SIZE = 32
CLASSES = [str(d) for d in range(10)]

# matplotlib ships symbol-only and display faces too; these draw ordinary digits.
_FONT_PREFIXES = ("DejaVuSans.", "DejaVuSans-", "DejaVuSansMono", "DejaVuSerif.", "DejaVuSerif-",
                  "STIXGeneral", "STIXNonUni", "cmr10", "cmb10", "cmss10", "cmtt10", "cmti10", "cmmi10")
_PHOTOS_SKIMAGE = ("astronaut.png", "coffee.png", "chelsea.png", "hubble_deep_field.jpg", "retina.jpg",
                   "ihc.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png")
_PHOTOS_SKLEARN = ("china.jpg", "flower.jpg")


@lru_cache(maxsize=1)
def font_files() -> tuple[Path, ...]:
    """The TrueType faces shipped with matplotlib that draw the digits 0–9."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = tuple(sorted(p for p in folder.glob("*.ttf") if p.name.startswith(_FONT_PREFIXES)))
    if not fonts:
        raise RuntimeError(f"No usable fonts found in {folder}: expected matplotlib's DejaVu/STIX/cm fonts.")
    return fonts


@lru_cache(maxsize=1)
def photographs() -> tuple[np.ndarray, ...]:
    """The colour photographs shipped with scikit-image and scikit-learn, as uint8 ``[H, W, 3]`` arrays."""
    import skimage.data
    import sklearn.datasets

    paths = [Path(skimage.data.__file__).parent / name for name in _PHOTOS_SKIMAGE]
    paths += [Path(sklearn.datasets.__file__).parent / "images" / name for name in _PHOTOS_SKLEARN]
    photos = tuple(np.asarray(Image.open(p).convert("RGB")) for p in paths if p.exists())
    if len(photos) < 4:
        raise RuntimeError(f"Expected the sample photographs of scikit-image and scikit-learn, found {len(photos)}: "
                           "reinstall scikit-image and scikit-learn.")
    return photos


@lru_cache(maxsize=64)
def _font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size)


def _background(rng: np.random.Generator) -> Image.Image:
    """A blurred 32×32 crop of a random photograph."""
    photo = photographs()[rng.integers(len(photographs()))]
    h, w, _ = photo.shape
    side = int(rng.integers(24, max(25, min(h, w) // 3)))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[top:top + side, left:left + side])
    return crop.resize((8, 8), Image.BILINEAR).resize((SIZE, SIZE), Image.BILINEAR)


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    """A random colour whose luminance differs from the background's mean by at least 80/255."""
    bg_luma = float((background.reshape(-1, 3).mean(0) * (0.299, 0.587, 0.114)).sum())
    for _ in range(20):
        colour = rng.integers(0, 256, size=3)
        if abs(float((colour * (0.299, 0.587, 0.114)).sum()) - bg_luma) >= 80:
            break
    else:  # no luck: black on light, white on dark
        colour = np.zeros(3, int) if bg_luma > 127 else np.full(3, 255)
    return tuple(int(c) for c in colour)


def draw_digit(digit: int, rng: np.random.Generator) -> np.ndarray:
    """One 32×32 RGB image of ``digit`` over a blurred photograph, as uint8 ``[32, 32, 3]``.

    Drawn at 2× and downsampled, so strokes are anti-aliased.
    """
    scale = 2
    background = _background(rng)
    colour = _contrasting_colour(rng, np.asarray(background))
    font = _font(font_files()[rng.integers(len(font_files()))], int(rng.integers(22, 30)) * scale)

    glyph = Image.new("L", (SIZE * scale * 2, SIZE * scale * 2), 0)
    ImageDraw.Draw(glyph).text((SIZE * scale, SIZE * scale), str(digit), fill=255, font=font, anchor="mm")
    slant = float(rng.uniform(-0.3, 0.3))
    glyph = glyph.transform(glyph.size, Image.AFFINE, (1, slant, -slant * SIZE * scale, 0, 1, 0), Image.BILINEAR)
    glyph = glyph.rotate(float(rng.uniform(-15, 15)), Image.BILINEAR)
    box = glyph.getbbox()
    if box is not None:  # centre on the ink, then shift by a random offset
        glyph = glyph.crop(box)
    canvas = Image.new("L", (SIZE * scale, SIZE * scale), 0)
    max_dx = max(0, (SIZE * scale - glyph.width) // 2)
    max_dy = max(0, (SIZE * scale - glyph.height) // 2)
    x = (SIZE * scale - glyph.width) // 2 + int(rng.integers(-max_dx, max_dx + 1) * 0.6)
    y = (SIZE * scale - glyph.height) // 2 + int(rng.integers(-max_dy, max_dy + 1) * 0.6)
    canvas.paste(glyph, (x, y))
    mask = canvas.resize((SIZE, SIZE), Image.BILINEAR)

    image = background.copy()
    image.paste(Image.new("RGB", (SIZE, SIZE), colour), (0, 0), mask)
    return np.asarray(image)


def generate(count: int, split: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw the first ``count`` images of ``split`` ("train" or "test").

    Returns:
        images: uint8 ``[count, 3, 32, 32]``; labels: int64 ``[count]``, balanced (label = index mod 10,
        so any prefix of a multiple of 10 is exactly balanced).
    """
    split_id = {"train": 0, "test": 1}[split]
    images = np.empty((count, SIZE, SIZE, 3), np.uint8)
    labels = np.arange(count) % 10
    for i in range(count):
        images[i] = draw_digit(int(labels[i]), np.random.default_rng([seed, split_id, i]))
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels).long()
