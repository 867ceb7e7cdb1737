"""The synthetic speech set of the CPC notebook: shapes, determinism, labels, alignment, errors."""
from __future__ import annotations

import pytest
import torch

from sslcourse.data import SpeechDataset, log_spectrogram, synthetic_speech

SMALL = dict(train=48, test=24, seconds=0.32, num_speakers=6, num_phones=8)


@pytest.fixture(scope="module")
def small() -> SpeechDataset:
    return synthetic_speech(**SMALL, seed=3)


def test_shapes_and_dtypes(small):
    t = int(0.32 * 8000) // 80 * 80
    assert small.train_x.shape == (48, t) and small.test_x.shape == (24, t)
    assert small.train_x.dtype == small.test_x.dtype == torch.float32
    assert small.train_speaker.shape == (48,) and small.test_speaker.shape == (24,)
    assert small.train_phone.shape == (48, t // 80) and small.test_phone.shape == (24, t // 80)
    for labels in (small.train_speaker, small.test_speaker, small.train_phone, small.test_phone):
        assert labels.dtype == torch.int64
    assert (small.sample_rate, small.hop, small.num_speakers, small.num_phones) == (8000, 80, 6, 8)
    assert small.frames == t // 80
    assert small.name and "6 speakers" in small.description
    assert torch.isfinite(small.train_x).all() and small.train_x.std() > 0


def test_same_seed_same_tensors_and_other_seed_differs(small):
    again = synthetic_speech(**SMALL, seed=3)
    other = synthetic_speech(**SMALL, seed=4)
    for part in ("train_x", "train_speaker", "train_phone", "test_x", "test_speaker", "test_phone"):
        assert torch.equal(getattr(small, part), getattr(again, part)), part
    assert not torch.equal(small.train_x, other.train_x)
    assert not torch.equal(small.train_phone, other.train_phone)


def test_train_does_not_depend_on_test_size(small):
    bigger = synthetic_speech(**{**SMALL, "test": 36}, seed=3)
    assert torch.equal(small.train_x, bigger.train_x) and torch.equal(small.train_phone, bigger.train_phone)


def test_labels_in_range_and_every_speaker_in_both_splits(small):
    for split in ("train", "test"):
        speaker, phone = getattr(small, f"{split}_speaker"), getattr(small, f"{split}_phone")
        assert speaker.min() >= 0 and speaker.max() < small.num_speakers
        assert phone.min() >= 0 and phone.max() < small.num_phones
        counts = torch.bincount(speaker, minlength=small.num_speakers)
        assert counts.min() > 0 and counts.max() - counts.min() <= 1  # balanced
    assert len(torch.unique(small.train_phone)) > small.num_phones // 2
    assert not torch.equal(small.train_x[:24], small.test_x)  # disjoint sequences


def test_phones_are_held_for_several_frames(small):
    phone = small.train_phone
    changes = (phone[:, 1:] != phone[:, :-1]).sum().item()
    assert 0 < changes < phone.numel() / 2  # runs of a phone, not one label per frame


def test_frame_labels_follow_the_signal():
    """Unvoiced phones (noise) and voiced ones (pulses) differ in zero-crossing rate, so the labels explain
    the per-frame rate best when read with no shift: labels and samples are aligned by ``hop``."""
    d = synthetic_speech(train=96, test=8, seconds=0.64, num_speakers=4, num_phones=8, snr_db=(30, 30), seed=1)
    frames = d.train_x.view(d.train_x.shape[0], d.frames, d.hop)
    rate = (frames[..., 1:].sign() != frames[..., :-1].sign()).float().mean(-1)  # [N, frames]

    def explained(shift: int) -> float:  # share of the variance of the rate explained by the phone label
        m = d.frames - 8
        y, r = d.train_phone[:, 4:4 + m].reshape(-1), rate[:, 4 + shift:4 + shift + m].reshape(-1)
        means = torch.zeros(d.num_phones).index_add_(0, y, r) / torch.bincount(y, minlength=d.num_phones).clamp(min=1)
        return 1 - (r - means[y]).var().item() / r.var().item()

    scores = {shift: explained(shift) for shift in range(-4, 5)}
    assert max(scores, key=scores.get) == 0, scores


def test_log_spectrogram_frames_match_labels(small):
    spec = log_spectrogram(small.train_x, n_fft=256, hop=80)
    assert spec.shape == (48, small.frames, 129) and spec.dtype == torch.float32
    assert torch.isfinite(spec).all()
    assert log_spectrogram(small.train_x[:, :1000], n_fft=128, hop=80).shape == (48, 12, 65)


def test_log_spectrogram_frame_is_centred_on_its_hop():
    x = torch.zeros(1, 800)
    x[0, 5 * 80 + 40] = 1.0  # a click in the middle of frame 5
    energy = log_spectrogram(x, n_fft=256, hop=80).exp().sum(-1)[0]
    assert energy.argmax().item() == 5


@pytest.mark.parametrize("kwargs, match", [
    (dict(train=4), "train >= num_speakers"),
    (dict(test=3), "test >= num_speakers"),
    (dict(num_speakers=1), "num_speakers >= 2"),
    (dict(num_phones=2), "num_phones >= 4"),
    (dict(seconds=0.01), "at least 8 frames"),
    (dict(snr_db=(10, 5)), "snr_db"),
    (dict(hop=300), "hop"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic_speech(**{**SMALL, **kwargs})


def test_log_spectrogram_bad_arguments():
    with pytest.raises(ValueError, match=r"expected waves \[N, T\]"):
        log_spectrogram(torch.zeros(800))
    with pytest.raises(ValueError, match="hop <= n_fft"):
        log_spectrogram(torch.zeros(1, 800), n_fft=64, hop=80)
    with pytest.raises(ValueError, match="at least hop"):
        log_spectrogram(torch.zeros(1, 40), hop=80)
