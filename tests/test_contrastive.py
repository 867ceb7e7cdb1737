"""Tests of sslcourse.contrastive: split batch norm and batch shuffling."""
import copy

import pytest
import torch
from torch import nn

from sslcourse.contrastive import SplitBatchNorm, batch_shuffle, batch_unshuffle, convert_to_split_batchnorm
from sslcourse.models import ConvNet


def reference_split_bn(x, bn: nn.BatchNorm2d, splits: int):
    """Normalise sub-batch s = samples s, s+S, ... with its own statistics (ordinary BN, per split)."""
    out = torch.empty_like(x)
    means, variances = [], []
    for s in range(splits):
        part = copy.deepcopy(bn).train()
        out[s::splits] = part(x[s::splits])
        means.append(part.running_mean)
        variances.append(part.running_var)
    return out, torch.stack(means).mean(0), torch.stack(variances).mean(0)


@pytest.mark.parametrize("shape", [(16, 3, 5, 5), (12, 4)])
@pytest.mark.parametrize("splits", [1, 2, 4])
def test_split_bn_normalises_each_sub_batch_like_separate_devices(shape, splits):
    torch.manual_seed(0)
    x = torch.randn(*shape) * 3 + 1
    bn = nn.BatchNorm2d(shape[1]) if len(shape) == 4 else nn.BatchNorm1d(shape[1])
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    split = convert_to_split_batchnorm(copy.deepcopy(bn), splits)
    assert isinstance(split, SplitBatchNorm) and split.num_splits == splits
    got = split.train()(x)
    expected, mean, var = reference_split_bn(x, bn, splits)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(split.running_mean, mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(split.running_var, var, atol=1e-6, rtol=1e-5)


def test_split_bn_statistics_differ_from_full_batch_bn():
    torch.manual_seed(1)
    x = torch.randn(8, 2, 3, 3)
    x[::2] += 5  # the even samples (sub-batch 0 of 2) are shifted
    full = nn.BatchNorm2d(2).train()(x)
    split = SplitBatchNorm(2, num_splits=2).train()(x)
    # Each sub-batch is centred on its own mean, so the shift disappears within it.
    assert split[::2].mean().abs() < 1e-5 and split[1::2].mean().abs() < 1e-5
    assert full[::2].mean() > 0.5


def test_split_bn_gradients_match_reference():
    torch.manual_seed(2)
    x = torch.randn(8, 3, 4, 4, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    bn = nn.BatchNorm2d(3)
    split = convert_to_split_batchnorm(copy.deepcopy(bn), 4).train()
    (split(x) ** 2).sum().backward()
    out = torch.cat([copy.deepcopy(bn).train()(x_ref[s::4]) for s in range(4)])
    order = torch.cat([torch.arange(s, 8, 4) for s in range(4)])
    restored = torch.empty_like(out)
    restored[order] = out
    (restored ** 2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-4)


def test_split_bn_eval_mode_is_plain_bn_with_running_stats():
    torch.manual_seed(3)
    split = SplitBatchNorm(3, num_splits=4)
    for _ in range(5):
        split.train()(torch.randn(8, 3, 2, 2) * 2 + 1)
    plain = nn.BatchNorm2d(3)
    plain.load_state_dict(split.state_dict())
    x = torch.randn(5, 3, 2, 2)  # any batch size works in eval mode
    torch.testing.assert_close(split.eval()(x), plain.eval()(x))


def test_split_bn_keeps_channels_last():
    x = torch.randn(8, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    out = SplitBatchNorm(4, num_splits=4).train()(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, SplitBatchNorm(4, num_splits=4).train()(x.contiguous()))


def test_split_bn_rejects_indivisible_batch_and_bad_splits():
    with pytest.raises(ValueError, match="not divisible by num_splits=4"):
        SplitBatchNorm(3, num_splits=4).train()(torch.randn(6, 3, 2, 2))
    with pytest.raises(ValueError, match="positive int"):
        SplitBatchNorm(3, num_splits=0)
    with pytest.raises(ValueError, match=r"\[N, C\] or \[N, C, H, W\]"):
        SplitBatchNorm(3, num_splits=2)(torch.randn(4, 3, 2))


def test_convert_replaces_every_batchnorm_and_keeps_eval_outputs():
    torch.manual_seed(4)
    model = nn.Sequential(ConvNet(width=4), nn.Linear(32, 8), nn.BatchNorm1d(8))
    model.train()(torch.randn(8, 3, 16, 16))  # non-trivial running statistics
    model.eval()
    x = torch.randn(3, 3, 16, 16)
    before = model(x)
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    converted = convert_to_split_batchnorm(model, 4)
    assert converted is model
    splits = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(splits) == n_bn == 5 and all(isinstance(m, SplitBatchNorm) for m in splits)
    assert all(not m.training for m in splits)
    torch.testing.assert_close(model(x), before)


def test_batch_shuffle_round_trip_and_permutes():
    x = torch.arange(64).view(16, 4)
    g = torch.Generator().manual_seed(0)
    shuffled, unshuffle = batch_shuffle(x, g)
    assert not torch.equal(shuffled, x)
    assert torch.equal(torch.sort(shuffled[:, 0]).values, x[:, 0])
    assert torch.equal(batch_unshuffle(shuffled, unshuffle), x)
    again, _ = batch_shuffle(x, torch.Generator().manual_seed(0))
    assert torch.equal(again, shuffled)


def test_shuffled_split_bn_keys_come_back_in_order():
    """The key path of MoCo: shuffle, encode with split BN, unshuffle -> row i belongs to image i."""
    torch.manual_seed(5)
    encoder = convert_to_split_batchnorm(nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6)), 2).train()
    x = torch.randn(8, 6)
    shuffled, unshuffle = batch_shuffle(x, torch.Generator().manual_seed(1))
    keys = batch_unshuffle(encoder(shuffled), unshuffle)
    # Recompute each key from the sub-batch it was normalised with.
    position = unshuffle  # image i sits at row unshuffle[i] of the shuffled batch
    h = encoder[0](x)
    for i in range(8):
        members = torch.nonzero((position % 2) == (position[i] % 2)).flatten()
        mu, var = h[members].mean(0), h[members].var(0, unbiased=False)
        expected = (h[i] - mu) / torch.sqrt(var + 1e-5) * encoder[1].weight + encoder[1].bias
        torch.testing.assert_close(keys[i], expected, atol=1e-5, rtol=1e-4)


def test_batch_unshuffle_rejects_a_wrong_index():
    with pytest.raises(ValueError, match="unshuffle index"):
        batch_unshuffle(torch.zeros(4, 2), torch.arange(3))
