"""Datasets: torchvision's real download path (served from loopback), the cache, the loud offline
fallback, image folders, the JPEG archive, the embedded set, and device-resident batches."""
from __future__ import annotations

import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslcourse.data import datasets as D
from sslcourse.data import embedded
from sslcourse.data.batches import DeviceBatches
from sslcourse.budget import make_budget

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


# ------------------------------------------------------------------ a CIFAR-10 server on loopback

def _batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": list(rng.integers(0, 10, n).tolist()), "batch_label": "fake"}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cifar_server(tmp_path, monkeypatch):
    """Write a CIFAR-10-format archive (python pickles, as the real one), serve it on 127.0.0.1, and point
    torchvision's CIFAR10 class at it, with checksums of the files this test built."""
    from torchvision.datasets import CIFAR10

    src = tmp_path / "build" / "cifar-10-batches-py"
    src.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        with open(src / name, "wb") as f:
            pickle.dump(_batch(20, i), f)
    with open(src / "batches.meta", "wb") as f:
        pickle.dump({"label_names": D.CIFAR10_CLASSES}, f)
    served = tmp_path / "www"
    served.mkdir()
    archive = served / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")

    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    monkeypatch.setattr(CIFAR10, "url", f"http://127.0.0.1:{server.server_port}/cifar-10-python.tar.gz")
    monkeypatch.setattr(CIFAR10, "tgz_md5", _md5(archive))
    monkeypatch.setattr(CIFAR10, "train_list", [[n, _md5(src / n)] for n in names[:5]])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", _md5(src / "test_batch")]])
    monkeypatch.setitem(CIFAR10.meta, "md5", _md5(src / "batches.meta"))
    yield server
    server.shutdown()


def test_cifar10_downloads_through_torchvision_and_is_cached(cifar_server, tmp_path, capsys):
    root = tmp_path / "data"
    data = D.load_dataset("cifar10", budget=make_budget("cpu"), root=root)
    assert data.name == "cifar10"
    assert data.train_x.shape == (100, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (20, 3, 32, 32)
    assert data.classes == D.CIFAR10_CLASSES
    assert (root / "cifar-10-python.tar.gz").exists(), "torchvision's downloader should have fetched the archive"
    # the pixels are the pickled ones, in [N, 3, H, W] order
    with open(root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="latin1")["data"].reshape(-1, 3, 32, 32)
    assert torch.equal(torch.sort(data.test_x.flatten(1), dim=0).values,
                       torch.sort(torch.from_numpy(raw).flatten(1), dim=0).values)
    cifar_server.shutdown()  # a second load must come from the cache, without the network
    again = D.load_dataset("cifar10", budget=make_budget("cpu"), root=root)
    assert torch.equal(again.train_x, data.train_x)
    assert "dataset ImageDataset(cifar10" in capsys.readouterr().out


def test_auto_uses_cifar10_when_download_works(cifar_server, tmp_path, capsys):
    data = D.load_dataset("auto", budget=make_budget("cpu"), root=tmp_path / "data")
    assert data.name == "cifar10"
    assert "EMBEDDED" not in capsys.readouterr().out


def test_offline_fallback_is_loud_and_serves_embedded(tmp_path, monkeypatch, capsys):
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "url", "http://127.0.0.1:9/unreachable.tar.gz")  # port 9: nothing listens
    budget = make_budget("cpu")
    small = budget.__class__(**{**budget.__dict__, "train_images": 50, "test_images": 20})
    monkeypatch.setattr(D, "EMBEDDED_TRAIN", 50)
    monkeypatch.setattr(D, "embedded_digits", lambda n_train=50, n_test=20, seed=0: D.ImageDataset(
        "embedded", *embedded.generate(50, "train"), *embedded.generate(20, "test"), list(embedded.CLASSES), "embedded"))
    data = D.load_dataset("auto", budget=small, root=tmp_path / "data")
    out = capsys.readouterr().out
    assert data.name == "embedded"
    assert "CIFAR-10 is not available" in out and "EMBEDDED" in out and "Reason:" in out
    assert "fallback" in data.note
    # ... and says how to bring CIFAR-10 in by hand: which file goes where, or the import command.
    assert "cifar-10-python.tar.gz" in out and str(tmp_path / "data") in out
    assert "sslcourse data cifar10 --import PATH" in out
    # ... what the embedded set is and how it differs from CIFAR-10, once: the next run says it in one line.
    assert "digits 0-9" in out and "How it differs from CIFAR-10" in out and "not CIFAR-10's" in out
    again = D.load_dataset("auto", budget=small, root=tmp_path / "data")
    out = capsys.readouterr().out
    assert again.name == "embedded" and "using the EMBEDDED dataset again" in out and "sslcourse doctor" in out
    assert "How it differs" not in out and out.count("=" * 78) == 0


def test_the_archive_placed_by_hand_as_the_banner_says_loads_offline(cifar_server, tmp_path, capsys):
    """The offline banner's advice works: torchvision's archive in the data folder, no network."""
    import shutil

    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(tmp_path / "www" / "cifar-10-python.tar.gz", root / "cifar-10-python.tar.gz")
    cifar_server.shutdown()
    data = D.load_dataset("auto", budget=make_budget("cpu"), root=root)
    assert data.name == "cifar10" and len(data.train_x) == 100
    assert "EMBEDDED" not in capsys.readouterr().out


def test_smoke_preset_never_downloads(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("smoke must not try a download")
    monkeypatch.setattr(D, "load_cifar10", boom)
    data = D.load_dataset("auto", budget=make_budget("smoke"), root=tmp_path)
    assert data.name == "embedded"
    assert len(data.train_y) == make_budget("smoke").train_images


def test_corrupted_cache_says_so(tmp_path):
    path = D.cache_path("cifar10", tmp_path)
    path.write_bytes(b"not a torch file")
    with pytest.raises(D.DatasetError, match="corrupted.*Delete it"):
        D.load_dataset("cifar10", budget=make_budget("cpu"), root=tmp_path)


def test_unknown_name_is_a_clear_error(tmp_path):
    with pytest.raises(D.DatasetError, match="Unknown dataset 'mnist'"):
        D.load_dataset("mnist", budget=make_budget("cpu"), root=tmp_path)


# ------------------------------------------------------------------ other sources

def test_image_folder_with_train_and_test(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for c, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            folder = tmp_path / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40, 40), colour).save(folder / f"{i}.png")
    data = D.load_image_folder(tmp_path, size=32)
    assert data.classes == ["cat", "dog"]
    assert data.train_x.shape == (6, 3, 32, 32) and data.test_x.shape == (4, 3, 32, 32)
    red = data.train_x[data.train_y == 0].float().mean(dim=(0, 2, 3))
    assert red[0] > 250 and red[2] < 5


def test_image_folder_missing_is_a_clear_error(tmp_path):
    with pytest.raises(D.DatasetError, match="Expected an image folder"):
        D.load_image_folder(tmp_path / "nope")


def test_npz_archive_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("test", 4)):
        blobs, offsets = [], [0]
        for _ in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
            blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
            offsets.append(offsets[-1] + len(blobs[-1]))
        arrays[f"{split}_jpeg"] = np.concatenate(blobs)
        arrays[f"{split}_offsets"] = np.array(offsets, np.int64)
        arrays[f"{split}_labels"] = np.arange(n) % 10
    arrays["classes"] = np.array(D.CIFAR10_CLASSES)
    np.savez(tmp_path / "c.npz", **arrays)
    data = D.load_cifar10_npz(tmp_path / "c.npz")
    assert data.train_x.shape == (6, 3, 32, 32) and data.test_x.shape == (4, 3, 32, 32)
    assert data.classes == D.CIFAR10_CLASSES


@pytest.mark.shared_data
def test_shared_cifar10_npz_loads():
    path = SHARED / "cifar10-jpeg.npz"
    if not path.exists():
        pytest.skip("../shared/data is absent (a fresh clone has none)")
    data = D.load_cifar10_npz(path).subset(1000, 500)
    assert data.train_x.shape == (1000, 3, 32, 32)
    assert torch.bincount(data.train_y).tolist() == [100] * 10
    assert 0.4 < data.mean[0] < 0.6


# ------------------------------------------------------------------ the embedded dataset

def test_embedded_is_deterministic_balanced_colour_32px():
    x1, y1 = embedded.generate(30, "train", seed=0)
    x2, y2 = embedded.generate(20, "train", seed=0)
    assert x1.shape == (30, 3, 32, 32) and x1.dtype == torch.uint8
    assert torch.equal(x1[:20], x2) and torch.equal(y1[:20], y2), "a prefix must equal the smaller set"
    assert torch.bincount(y1).tolist() == [3] * 10
    assert (x1[:, 0].float() - x1[:, 1].float()).abs().mean() > 5, "images should be in colour"
    other, _ = embedded.generate(30, "train", seed=1)
    assert not torch.equal(other, x1)
    test_x, _ = embedded.generate(30, "test", seed=0)
    assert not torch.equal(test_x, x1), "train and test must be different images"


def test_embedded_digits_are_legible():
    """A digit is drawn in a colour far from the background: the image has real contrast."""
    x, _ = embedded.generate(50, "train")
    luma = (x.float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)
    spread = luma.flatten(1).quantile(0.95, dim=1) - luma.flatten(1).quantile(0.05, dim=1)
    assert (spread > 40).float().mean() > 0.9


def test_subset_is_balanced_prefix():
    y = torch.arange(100) % 10
    data = D.ImageDataset("t", torch.zeros(100, 3, 4, 4, dtype=torch.uint8), y,
                          torch.zeros(10, 3, 4, 4, dtype=torch.uint8), torch.arange(10), [str(i) for i in range(10)])
    sub = data.subset(30, None)
    assert torch.bincount(sub.train_y).tolist() == [3] * 10
    assert len(sub.test_y) == 10


def test_dataset_rejects_wrong_layout():
    with pytest.raises(D.DatasetError, match=r"expected uint8 \[N, 3, H, W\]"):
        D.ImageDataset("t", torch.zeros(4, 32, 32, 3, dtype=torch.uint8), torch.zeros(4, dtype=torch.long),
                       torch.zeros(1, 3, 2, 2, dtype=torch.uint8), torch.zeros(1, dtype=torch.long), ["a"])


# ------------------------------------------------------------------ device-resident batches

def _images(n=20):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g), torch.arange(n) % 10


def test_device_batches_cover_a_permutation_each_epoch():
    x, y = _images(20)
    loader = DeviceBatches(x, y, batch_size=5, device="cpu")
    assert len(loader) == 4
    seen = torch.cat([b[1] for b in loader.epoch(0)])
    assert sorted(seen.tolist()) == sorted(y.tolist())
    order0 = torch.cat([b[1] for b in loader.epoch(0)])
    order1 = torch.cat([b[1] for b in loader.epoch(1)])
    assert torch.equal(order0, torch.cat([b[1] for b in loader.epoch(0)])), "an epoch must replay exactly"
    assert not torch.equal(order0, order1)


def test_device_batches_two_views_and_normalisation():
    x, y = _images(16)
    flip = lambda v, g: torch.where(torch.rand(len(v), 1, 1, 1, generator=g, device=v.device) < 0.5, v.flip(-1), v)
    loader = DeviceBatches(x, y, 8, "cpu", augment=flip, views=2, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    (a, b), labels = next(iter(loader))
    assert a.shape == b.shape == (8, 3, 8, 8) and a.dtype == torch.float32
    assert labels.shape == (8,)
    assert a.min() >= -2.0 - 1e-6 and a.max() <= 2.0 + 1e-6
    assert not torch.equal(a, b), "two views should be augmented independently"


def test_device_batches_errors_say_what_was_expected():
    x, y = _images(4)
    with pytest.raises(TypeError, match="expects uint8"):
        DeviceBatches(x.float(), y, 2, "cpu")
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        DeviceBatches(x, y[:3], 2, "cpu")
    with pytest.raises(ValueError, match="larger than the 4 images"):
        DeviceBatches(x, y, 8, "cpu")
