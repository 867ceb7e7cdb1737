"""Evaluation: the device kNN matches a brute-force reference, the probe separates what is separable."""
import math

import pytest
import torch

from sslcourse.data import ImageDataset
from sslcourse.evaluate import (evaluate_encoder, extract_features, knn_accuracy, knn_predict, label_efficiency,
                                linear_probe, stratified_subset)
from sslcourse.models import ConvNet


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def knn_reference(train_f, train_y, test_f, k, temperature, num_classes):
    """Weighted kNN written out with Python loops, one test point at a time."""
    predictions = []
    for q in test_f.tolist():
        sims = []
        for i, f in enumerate(train_f.tolist()):
            dot = sum(a * b for a, b in zip(q, f))
            sims.append((dot / (math.sqrt(sum(a * a for a in q)) * math.sqrt(sum(b * b for b in f))), i))
        sims.sort(reverse=True)
        scores = [0.0] * num_classes
        for s, i in sims[:k]:
            scores[int(train_y[i])] += math.exp(s / temperature)
        predictions.append(max(range(num_classes), key=lambda c: scores[c]))
    return predictions


@pytest.mark.parametrize("k, temperature", [(1, 0.1), (5, 0.1), (7, 0.5), (40, 0.07)])
def test_knn_matches_brute_force_reference(k, temperature):
    g = torch.Generator().manual_seed(k)
    train_f, test_f = torch.randn(40, 6, generator=g), torch.randn(15, 6, generator=g)
    train_y = torch.randint(0, 3, (40,), generator=g)
    expected = knn_reference(train_f, train_y, test_f, k, temperature, 3)
    got = knn_predict(train_f, train_y, test_f, k=k, temperature=temperature, num_classes=3, chunk_size=4)
    assert got.dtype == torch.int64 and got.tolist() == expected


def test_knn_scores_are_the_weighted_votes():
    train_f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    train_y = torch.tensor([0, 1, 1])
    _, scores = knn_predict(train_f, train_y, torch.tensor([[2.0, 0.0]]), k=2, temperature=0.5, return_scores=True)
    # neighbours: [1, 0] (cos 1, class 0) and [1, 1] (cos 1/sqrt(2), class 1)
    torch.testing.assert_close(scores, torch.tensor([[math.exp(2.0), math.exp(2 / math.sqrt(2))]]))


def test_k_larger_than_training_set_is_clamped():
    g = torch.Generator().manual_seed(0)
    train_f, train_y, test_f = torch.randn(10, 4, generator=g), torch.randint(0, 2, (10,), generator=g), torch.randn(5, 4, generator=g)
    assert torch.equal(knn_predict(train_f, train_y, test_f, k=200), knn_predict(train_f, train_y, test_f, k=10))
    with pytest.raises(ValueError, match="positive int"):
        knn_predict(train_f, train_y, test_f, k=0)


def test_knn_rejects_mismatched_features():
    with pytest.raises(ValueError, match="dimensions"):
        knn_predict(torch.randn(10, 4), torch.zeros(10, dtype=torch.long), torch.randn(3, 5))
    with pytest.raises(ValueError, match="labels"):
        knn_accuracy(torch.randn(10, 4), torch.zeros(9, dtype=torch.long), torch.randn(3, 4), torch.zeros(3))


def separable(n, seed, dim=16, classes=4):
    """Clusters around orthogonal directions: linearly separable, and the kNN finds them too."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = 5 * torch.eye(dim)[:classes]
    return centres[y] + 0.5 * torch.randn(n, dim, generator=g), y


def test_linear_probe_separates_separable_features():
    train_f, train_y = separable(200, 0)
    test_f, test_y = separable(100, 1)
    assert linear_probe(train_f, train_y, test_f, test_y) == pytest.approx(100.0)
    assert knn_accuracy(train_f, train_y, test_f, test_y) == pytest.approx(100.0)


def test_linear_probe_is_deterministic_and_near_chance_on_noise():
    g = torch.Generator().manual_seed(0)
    train_f, test_f = torch.randn(300, 8, generator=g), torch.randn(300, 8, generator=g)
    train_y, test_y = torch.randint(0, 3, (300,), generator=g), torch.randint(0, 3, (300,), generator=g)
    first = linear_probe(train_f, train_y, test_f, test_y)
    assert first == linear_probe(train_f, train_y, test_f, test_y)
    assert 20 < first < 47  # chance is 33%


def test_linear_probe_standardises_features():
    train_f, train_y = separable(200, 0)
    test_f, test_y = separable(100, 1)
    scaled = lambda f: 1000 + 1e-3 * f  # noqa: E731 -- badly scaled but the same information
    assert linear_probe(scaled(train_f), train_y, scaled(test_f), test_y) == pytest.approx(100.0)


def test_label_efficiency_uses_balanced_subsets():
    train_f, train_y = separable(400, 0)
    test_f, test_y = separable(100, 1)
    idx = stratified_subset(train_y, 0.1)
    assert len(idx) == 40 and torch.bincount(train_y[idx]).tolist() == [10, 10, 10, 10]
    assert len(stratified_subset(train_y, 0.001)) == 4  # at least one per class
    curve = label_efficiency(train_f, train_y, test_f, test_y, fractions=(0.01, 0.1, 1.0))
    assert list(curve) == [0.01, 0.1, 1.0]
    assert all(0 <= acc <= 100 for acc in curve.values()) and curve[1.0] == pytest.approx(100.0)


def tiny_dataset():
    g = torch.Generator().manual_seed(0)
    # Two classes that differ in colour: any encoder separates them.
    def images(n):
        y = torch.arange(n) % 2
        x = torch.randint(0, 80, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
        x[y == 1, 0] += 150
        return x, y
    tx, ty = images(64)
    vx, vy = images(32)
    return ImageDataset("tiny", tx, ty, vx, vy, ["dark", "red"])


def test_extract_features_restores_mode_and_matches_manual_forward():
    torch.manual_seed(0)
    data = tiny_dataset()
    encoder = ConvNet(width=4)
    encoder.train()
    features = extract_features(encoder, data.train_x, mean=data.mean, std=data.std, device="cpu", batch_size=10)
    assert features.shape == (64, 32) and features.dtype == torch.float32
    assert encoder.training
    encoder.eval()
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    with torch.no_grad():
        manual = encoder((data.train_x.float() / 255 - mean) / std)
    torch.testing.assert_close(features, manual, atol=1e-5, rtol=1e-4)
    block2 = extract_features(encoder, data.train_x, mean=data.mean, std=data.std, device="cpu", block=2)
    assert block2.shape == (64, 8) and not encoder.training
    with pytest.raises(TypeError, match="uint8"):
        extract_features(encoder, data.train_x.float(), mean=data.mean, std=data.std, device="cpu")


def test_evaluate_encoder_reports_knn_and_linear():
    torch.manual_seed(0)
    result = evaluate_encoder(ConvNet(width=4), tiny_dataset(), "cpu")
    assert set(result) == {"knn", "linear"}
    assert result["linear"] > 90 and result["knn"] > 90


def test_label_efficiency_rejects_mismatched_labels():
    train_f, train_y = separable(40, 0)
    test_f, test_y = separable(20, 1)
    with pytest.raises(ValueError, match=r"label_efficiency train_f: expected labels \[40\]"):
        label_efficiency(train_f, train_y[:4], test_f, test_y)
    with pytest.raises(ValueError, match=r"label_efficiency test_f: expected labels \[20\]"):
        label_efficiency(train_f, train_y, test_f, test_y[:19])


def test_evaluate_encoder_takes_a_features_function_and_a_knn_only_mode():
    torch.manual_seed(0)
    encoder, data, seen = ConvNet(width=4), tiny_dataset(), []

    def second_block(model, x):
        seen.append(x.shape)
        return model.forward_blocks(x)[1].mean(dim=(2, 3))

    result = evaluate_encoder(encoder, data, "cpu", features=second_block, linear_iterations=5)
    assert set(result) == {"knn", "linear"} and seen
    assert sum(shape[0] for shape in seen) == len(data.train_x) + len(data.test_x)
    assert set(evaluate_encoder(encoder, data, "cpu", linear=False)) == {"knn"}
    with pytest.raises(TypeError, match="not both"):
        evaluate_encoder(encoder, data, "cpu", block=2, features=second_block)
