"""Shapes and interfaces of the shared backbones, heads and decoder."""
import pytest
import torch

from sslcourse.budget import make_budget
import sslcourse.models
from sslcourse.models import ConvDecoder, ConvNet, Discriminator, LinearHead, ProjectionHead, ResNet18, make_backbone


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("width", [8, 32])
def test_convnet_shapes(width):
    net = ConvNet(width=width)
    x = torch.randn(3, 3, 32, 32)
    assert net.feature_dim == 8 * width
    assert net(x).shape == (3, 8 * width)
    maps = net.forward_blocks(x)
    assert [tuple(m.shape) for m in maps] == [(3, width, 32, 32), (3, 2 * width, 16, 16),
                                              (3, 4 * width, 8, 8), (3, 8 * width, 4, 4)]
    for block, m in enumerate(maps, start=1):
        features = net.block_features(x, block)
        assert features.shape == (3, m.shape[1])
        torch.testing.assert_close(features, m.mean(dim=(2, 3)))
    torch.testing.assert_close(net(x), maps[-1].mean(dim=(2, 3)))


def test_resnet18_shapes():
    net = ResNet18().eval()
    x = torch.randn(1, 3, 32, 32)
    assert net.feature_dim == 512
    assert net(x).shape == (1, 512)
    assert [tuple(m.shape) for m in net.forward_blocks(x)] == [(1, 64, 32, 32), (1, 128, 16, 16),
                                                               (1, 256, 8, 8), (1, 512, 4, 4)]
    assert net.block_features(x, 3).shape == (1, 256)
    assert 11_000_000 < sum(p.numel() for p in net.parameters()) < 11_300_000  # the CIFAR ResNet-18's size


def test_channels_last_gives_the_same_features():
    net = ConvNet(width=8).eval()
    x = torch.randn(4, 3, 32, 32)
    expected = net(x)
    net = net.to(memory_format=torch.channels_last)
    torch.testing.assert_close(net(x.contiguous(memory_format=torch.channels_last)), expected,
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("block", [0, 5, 1.0])
def test_block_out_of_range_is_a_clear_error(block):
    with pytest.raises(ValueError, match="1 to 4"):
        ConvNet(width=4).block_features(torch.randn(1, 3, 32, 32), block)


def test_bad_input_is_a_clear_error():
    net = ConvNet(width=4)
    with pytest.raises(ValueError, match=r"expects images \[B, 3, H, W\]"):
        net(torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match="uint8"):
        net(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_make_backbone_follows_the_budget():
    cpu = make_budget("cpu")
    net = make_backbone(cpu)
    assert isinstance(net, ConvNet) and net.width == cpu.width
    assert isinstance(make_backbone(make_budget("gpu")), ResNet18)
    assert isinstance(make_backbone("resnet18"), ResNet18)
    with pytest.raises(ValueError, match="convnet"):
        make_backbone("vgg")


def test_make_backbone_builds_the_halves_of_a_split_brain():
    cpu = make_budget("cpu")
    whole = make_backbone(cpu)
    for in_channels in (1, 2):
        half = make_backbone(cpu, in_channels=in_channels, width_divisor=2)
        assert half.in_channels == in_channels and half.feature_dim == whole.feature_dim // 2
        assert half(torch.randn(2, in_channels, 32, 32)).shape == (2, whole.feature_dim // 2)
        with pytest.raises(ValueError, match=rf"expects images \[B, {in_channels}, H, W\]"):
            half(torch.randn(2, 3, 32, 32))
    resnet_half = make_backbone("resnet18", in_channels=1, width_divisor=2)
    assert resnet_half.block_channels == (32, 64, 128, 256) and resnet_half.feature_dim == 256
    assert resnet_half(torch.randn(2, 1, 32, 32)).shape == (2, 256)
    assert ResNet18().block_channels == (64, 128, 256, 512)       # the default is He et al.'s
    with pytest.raises(ValueError, match="width_divisor"):
        make_backbone(cpu, width_divisor=0)


def test_heads():
    assert LinearHead(16, 10)(torch.randn(5, 16)).shape == (5, 10)
    simclr = ProjectionHead(16, 8, hidden_dim=32, batch_norm=True)
    assert simclr(torch.randn(5, 16)).shape == (5, 8)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in simclr.modules())
    moco_v2 = ProjectionHead(16, 8, hidden_dim=32)
    assert moco_v2(torch.randn(5, 16)).shape == (5, 8)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in moco_v2.modules())
    assert isinstance(ProjectionHead(16, 8, hidden_dim=None).net, torch.nn.Linear)


def test_decoder_from_vector_and_from_map():
    from_vector = ConvDecoder(64)
    assert from_vector(torch.randn(2, 64)).shape == (2, 3, 32, 32)
    from_map = ConvDecoder(64, out_channels=2, in_size=4)
    assert from_map(torch.randn(2, 64, 4, 4)).shape == (2, 2, 32, 32)
    assert ConvDecoder(16, 1, image_size=64, in_size=8)(torch.randn(2, 16, 8, 8)).shape == (2, 1, 64, 64)
    with pytest.raises(ValueError, match=r"\[B, 64, 4, 4\]"):
        from_map(torch.randn(2, 64))
    with pytest.raises(ValueError, match="power of 2"):
        ConvDecoder(64, image_size=32, in_size=3)


def test_decoder_inverts_a_convnet_block_map():
    net = ConvNet(width=4)
    decoder = ConvDecoder(net.block_channels[-1], in_size=4)
    x = torch.randn(2, 3, 32, 32)
    assert decoder(net.forward_blocks(x)[-1]).shape == x.shape


@pytest.mark.parametrize("size", [8, 32, 64])
def test_discriminator_gives_one_logit_per_image_and_learns_to_tell_two_sets_apart(size):
    torch.manual_seed(0)
    discriminator = Discriminator(3, size, width=8)
    assert discriminator(torch.rand(5, 3, size, size)).shape == (5,)
    with pytest.raises(ValueError, match=rf"expects images \[B, 3, {size}, {size}\], got \(2, 3, 4, 4\)"):
        discriminator(torch.rand(2, 3, 4, 4))
    if size != 32:
        return
    bright, dark = 0.6 + 0.4 * torch.rand(64, 3, 32, 32), 0.4 * torch.rand(64, 3, 32, 32)
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=1e-3)
    for _ in range(30):
        loss = (torch.nn.functional.softplus(-discriminator(bright)).mean()
                + torch.nn.functional.softplus(discriminator(dark)).mean())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    discriminator.eval()
    assert (discriminator(bright) > 0).float().mean() > 0.9 and (discriminator(dark) < 0).float().mean() > 0.9


def test_discriminator_rejects_sizes_it_cannot_reduce_to_4x4():
    for size in (4, 12, 30):
        with pytest.raises(ValueError, match="power of 2 of at least 8"):
            Discriminator(3, size)


def test_the_models_module_exports_what_it_defines():
    assert all(hasattr(sslcourse.models, name) for name in sslcourse.models.__all__)


