"""Named datasets as uint8 tensors, their cache, and the loud offline fallback.

Datasets load once into an :class:`ImageDataset` of uint8 tensors ``[N, 3, H, W]``
(plus int64 labels) and are cached as one ``.pt`` file under :func:`sslcourse.data_dir`.
CIFAR-10 and STL-10 come through torchvision's own download code; image folders
through :class:`torchvision.datasets.ImageFolder`. With no network and no cache,
:func:`load_dataset` falls back to the embedded dataset of :mod:`sslcourse.data.embedded`
and says so loudly, with the way to bring CIFAR-10 in by hand.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .. import environment
from ..budget import Budget, choose_budget
from ..files import torch_save_atomic
from . import embedded

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
EMBEDDED_TRAIN, EMBEDDED_TEST = 10_000, 2_000
_CACHE_VERSION = 1


class DatasetError(RuntimeError):
    """A dataset is missing, corrupted or not what was asked for."""


@dataclass
class ImageDataset:
    """A labelled image dataset held as uint8 tensors on the CPU.

    Attributes:
        name: e.g. ``"cifar10"`` or ``"embedded"``.
        train_x, test_x: uint8 ``[N, 3, H, W]``.
        train_y, test_y: int64 ``[N]``.
        classes: class names, in label order.
        note: where it came from (and, after a fallback, why).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    note: str = ""
    mean: tuple[float, float, float] = field(init=False)
    std: tuple[float, float, float] = field(init=False)

    def __post_init__(self) -> None:
        for part in ("train_x", "test_x"):
            x = getattr(self, part)
            if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
                raise DatasetError(f"{self.name}.{part}: expected uint8 [N, 3, H, W], got {x.dtype} {tuple(x.shape)}.")
        for xs, ys in ((self.train_x, self.train_y), (self.test_x, self.test_y)):
            if len(xs) != len(ys):
                raise DatasetError(f"{self.name}: {len(xs)} images but {len(ys)} labels.")
        # A strided sample: some archives are sorted by class, so a prefix would be biased.
        sample = self.train_x[:: max(1, len(self.train_x) // 10_000)].float().div_(255)
        self.mean = tuple(sample.mean(dim=(0, 2, 3)).tolist())
        self.std = tuple(sample.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    def subset(self, train_images: int | None, test_images: int | None) -> "ImageDataset":
        """The first ``train_images`` / ``test_images`` of a class-balanced order (``None`` keeps all)."""
        def pick(x, y, n):
            if n is None or n >= len(y):
                return x, y
            # Interleave classes so that any prefix is (nearly) balanced, deterministically.
            order = torch.argsort(_rank_within_class(y) * (int(y.max()) + 1) + y, stable=True)[:n]
            order = order.sort().values
            return x[order], y[order]
        tx, ty = pick(self.train_x, self.train_y, train_images)
        vx, vy = pick(self.test_x, self.test_y, test_images)
        return ImageDataset(self.name, tx, ty, vx, vy, self.classes, self.note)

    def __repr__(self) -> str:
        return (f"ImageDataset({self.name}: {len(self.train_y):,} train / {len(self.test_y):,} test images, "
                f"{self.image_size}×{self.image_size}, {self.num_classes} classes)")


def _rank_within_class(y: torch.Tensor) -> torch.Tensor:
    """For each label, its occurrence index among labels of the same class."""
    rank = torch.empty_like(y)
    for c in y.unique():
        where = (y == c).nonzero().flatten()
        rank[where] = torch.arange(len(where))
    return rank


# ---------------------------------------------------------------- caching

def _cache_path(name: str, root: Path) -> Path:
    return root / f"{name}.v{_CACHE_VERSION}.pt"


def cache_path(name: str, root: Path | None = None) -> Path:
    """Where the dataset ``name`` is cached (``root`` defaults to :func:`sslcourse.data_dir`)."""
    return _cache_path(name, Path(root) if root is not None else environment.data_dir())


def save_cache(data: ImageDataset, path: Path) -> None:
    """Cache ``data`` at ``path`` atomically: an interrupted save never leaves a half-written cache."""
    torch_save_atomic({"name": data.name, "train_x": data.train_x, "train_y": data.train_y,
                       "test_x": data.test_x, "test_y": data.test_y, "classes": list(data.classes),
                       "note": data.note}, path)


def _load_cache(path: Path) -> ImageDataset:
    try:
        blob = torch.load(path, weights_only=True)
        return ImageDataset(blob["name"], blob["train_x"], blob["train_y"], blob["test_x"], blob["test_y"],
                            list(blob["classes"]), blob["note"])
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [""])[0][:120]
        raise DatasetError(f"The dataset cache {path} is corrupted ({type(error).__name__}: {first_line}). "
                           f"Delete it and run again to rebuild it.") from error


# ---------------------------------------------------------------- named datasets

def load_cifar10(root: Path | str | None = None, download: bool = True) -> ImageDataset:
    """CIFAR-10 (Krizhevsky, 2009) through :class:`torchvision.datasets.CIFAR10`: 50,000 / 10,000 images, 32×32."""
    from torchvision.datasets import CIFAR10

    root = Path(root) if root is not None else environment.data_dir()
    parts = [CIFAR10(str(root), train=train, download=download) for train in (True, False)]
    to_x = lambda d: torch.from_numpy(np.asarray(d.data)).permute(0, 3, 1, 2).contiguous()
    to_y = lambda d: torch.tensor(d.targets, dtype=torch.long)
    return ImageDataset("cifar10", to_x(parts[0]), to_y(parts[0]), to_x(parts[1]), to_y(parts[1]),
                        list(parts[0].classes), note=f"CIFAR-10 from {root}")


def load_stl10(root: Path | str | None = None, download: bool = True, size: int = 32) -> ImageDataset:
    """STL-10 (Coates et al., 2011) labelled splits through :class:`torchvision.datasets.STL10`, resized to ``size``."""
    from torchvision.datasets import STL10

    root = Path(root) if root is not None else environment.data_dir()
    parts = [STL10(str(root), split=split, download=download) for split in ("train", "test")]

    def to_x(d):
        x = torch.from_numpy(np.asarray(d.data))
        if x.shape[-1] != size:
            x = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True)
            x = x.round().clamp(0, 255).to(torch.uint8)
        return x.contiguous()

    return ImageDataset("stl10", to_x(parts[0]), torch.from_numpy(parts[0].labels).long(), to_x(parts[1]),
                        torch.from_numpy(parts[1].labels).long(), list(parts[0].classes), note=f"STL-10 from {root}")


def load_image_folder(path: Path | str, size: int = 32) -> ImageDataset:
    """Images in class folders, read by :class:`torchvision.datasets.ImageFolder` and resized to ``size``×``size``.

    ``path`` holds ``train/<class>/*`` and ``test/<class>/*`` (or just ``<class>/*``, then the
    last 20% of each class becomes the test split).
    """
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"Expected an image folder at {path}, found nothing there.")
    to_tensor = transforms.Compose([transforms.Resize((size, size)), transforms.PILToTensor()])

    def read(folder):
        ds = ImageFolder(str(folder), transform=to_tensor)
        x = torch.stack([ds[i][0] for i in range(len(ds))]) if len(ds) else torch.empty(0, 3, size, size, dtype=torch.uint8)
        return x, torch.tensor(ds.targets, dtype=torch.long), ds.classes

    if (path / "train").is_dir() and (path / "test").is_dir():
        tx, ty, classes = read(path / "train")
        vx, vy, test_classes = read(path / "test")
        if test_classes != classes:
            raise DatasetError(f"{path}: train classes {classes} differ from test classes {test_classes}.")
    else:
        x, y, classes = read(path)
        rank = _rank_within_class(y)
        counts = torch.bincount(y)[y]
        is_test = rank >= (counts * 0.8).long()
        tx, ty, vx, vy = x[~is_test], y[~is_test], x[is_test], y[is_test]
    return ImageDataset(f"folder:{path.name}", tx, ty, vx, vy, classes, note=f"image folder {path}")


def load_cifar10_npz(path: Path | str) -> ImageDataset:
    """CIFAR-10 from the course's JPEG archive (``cifar10-jpeg.npz``: concatenated JPEGs plus offsets)."""
    from PIL import Image

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"Expected the CIFAR-10 JPEG archive at {path}, found no file.")
    with np.load(path) as blob:
        def decode(split):
            jpeg, offsets = blob[f"{split}_jpeg"], blob[f"{split}_offsets"]
            images = np.stack([np.asarray(Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
                               for i in range(len(offsets) - 1)])
            return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(blob[f"{split}_labels"]).long()
        tx, ty = decode("train")
        vx, vy = decode("test")
        classes = [str(c) for c in blob["classes"]]
    return ImageDataset("cifar10", tx, ty, vx, vy, classes, note=f"CIFAR-10 JPEG archive {path}")


def embedded_digits(n_train: int = EMBEDDED_TRAIN, n_test: int = EMBEDDED_TEST, seed: int = 0) -> ImageDataset:
    """The embedded offline dataset (see :mod:`sslcourse.embedded`): colour digits over blurred photographs."""
    tx, ty = embedded.generate(n_train, "train", seed)
    vx, vy = embedded.generate(n_test, "test", seed)
    return ImageDataset("embedded", tx, ty, vx, vy, list(embedded.CLASSES),
                        note="embedded digits (built offline from fonts and photographs shipped with installed packages)")


# ---------------------------------------------------------------- choosing one

def _cached_or_built(name: str, build: Callable[[], ImageDataset], root: Path) -> ImageDataset:
    path = _cache_path(name, root)
    if path.exists():
        return _load_cache(path)
    data = build()
    try:
        save_cache(data, path)
    except OSError:  # a read-only data folder only costs speed, never the run
        pass
    return data


def _embedded(budget: Budget, root: Path) -> ImageDataset:
    full = _cache_path("embedded", root)
    if budget.name == "smoke" and not full.exists():
        # Smoke runs need only a few images: draw just those (each image has its own seed, so
        # they equal the first images of the full set) and cache them on their own.
        n_train, n_test = budget.train_images, budget.test_images
        return _cached_or_built(f"embedded-{n_train}-{n_test}", lambda: embedded_digits(n_train, n_test), root)
    return _cached_or_built("embedded", embedded_digits, root)


# Written into the data folder once the whole explanation was shown: later runs print one line.
_EXPLAINED = ".embedded-explained"


def _explain_offline(reason: str, root: Path, say) -> None:
    """Tell a student once, in full, what the embedded set is and how to bring CIFAR-10 in; then one line."""
    marker = Path(root) / _EXPLAINED
    if marker.exists():
        say(f"sslcourse: CIFAR-10 is not available ({reason}); using the EMBEDDED dataset again "
            f"(`sslcourse doctor` says how to import CIFAR-10).")
        return
    say("=" * 78)
    say("sslcourse: CIFAR-10 is not available, so this notebook uses the EMBEDDED dataset.")
    say(f"  Reason: {reason}")
    say("  What it is: 32x32 colour images of the digits 0-9 drawn over blurred photographs, in the")
    say("    style of SynDigits, built on this machine from fonts and photos that ship with matplotlib,")
    say("    scikit-image and scikit-learn. Nothing is downloaded.")
    say("  How it differs from CIFAR-10: the 10 classes are digits, not objects, and shape alone names")
    say("    them. Every method trains on it and can be compared with the others on it, but the")
    say("    accuracies are not CIFAR-10's: do not compare them with the reference rows of 08_summary")
    say("    or with the papers, and expect a different ranking of the methods.")
    say("  To use CIFAR-10 later, connect to the internet and rerun, or bring it in by hand:")
    say("    - torchvision's archive: place cifar-10-python.tar.gz (or its folder")
    say(f"      cifar-10-batches-py/) in {root}, then rerun;")
    say("    - a folder of images (train/<class>/*.png, test/<class>/*.png) or the course's")
    say("      cifar10-jpeg.npz: run   sslcourse data cifar10 --import PATH   then rerun.")
    say("  (Shown once; later runs print one line.)")
    say("=" * 78)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"explained: {reason}\n")
    except OSError:   # a read-only data folder: the whole explanation comes back next time, which is fine
        pass


def load_dataset(name: str = "auto", budget: Budget | None = None, verbose: bool = True,
                 root: Path | str | None = None) -> ImageDataset:
    """Load a dataset by name and cut it to the budget's size.

    Names: ``auto``, ``embedded``, ``cifar10``, ``stl10``, ``folder:<path>``, ``npz:<path>``.
    ``auto`` (or ``SSLCOURSE_DATASET``) means: the embedded set under the smoke preset; otherwise
    CIFAR-10 from the cache or torchvision's download, and if that fails, the embedded set, loudly.
    """
    budget = budget or choose_budget()
    env = environment.read()
    root = Path(root) if root is not None else env.data_dir
    name = (env.dataset or name) if name == "auto" else name
    say = print if verbose else (lambda *a, **k: None)

    if name == "auto" and budget.offline_only:
        name = "embedded"
    if name == "auto":
        try:
            data = _cached_or_built("cifar10", lambda: load_cifar10(root, download=True), root)
        except Exception as error:  # no network, a broken mirror, a full disk: the course goes on
            reason = f"{type(error).__name__}: {str(error)[:160]}"
            _explain_offline(reason, root, say)
            data = _embedded(budget, root)
            data.note += f"; fallback because CIFAR-10 failed to load ({reason})"
    elif name == "embedded":
        data = _embedded(budget, root)
    elif name == "cifar10":
        data = _cached_or_built("cifar10", lambda: load_cifar10(root, download=not budget.offline_only), root)
    elif name == "stl10":
        data = _cached_or_built("stl10", lambda: load_stl10(root, download=not budget.offline_only), root)
    elif name.startswith("folder:"):
        data = load_image_folder(name.split(":", 1)[1])
    elif name.startswith("npz:"):
        data = load_cifar10_npz(name.split(":", 1)[1])
    else:
        raise DatasetError(f"Unknown dataset {name!r}: expected auto, embedded, cifar10, stl10, folder:<path> or npz:<path>.")

    data = data.subset(budget.train_images, budget.test_images)
    say(f"sslcourse: dataset {data!r} — {data.note}")
    return data
