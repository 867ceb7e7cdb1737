"""Tests for sslcourse.augment: per-sample randomness, reproducibility, exactness of the simple
transforms, and agreement with torchvision where the two define the same operation."""
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from sslcourse import augment as A


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def photos(batch=8, size=32, seed=0):
    """Smooth random colour images in [0, 1] (upsampled noise, so crops and blurs change them)."""
    coarse = torch.rand(batch, 3, size // 4, size // 4, generator=generator(seed))
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def every_transform():
    return [
        A.RandomResizedCrop(32),
        A.RandomHorizontalFlip(0.5),
        A.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
        A.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8, hue_method="hsv"),
        A.RandomGrayscale(0.5),
        A.GaussianBlur(3, p=0.5),
        A.RandomCropWithPadding(32, 4),
        A.RandomCropWithPadding(32, 4, padding_mode="reflect"),
        A.RandomErasing(1.0),
        A.RandomErasing(1.0, value="random"),
        A.simclr_augment(32),
        A.simclr_augment(32, blur=True),
        A.moco_cifar_augment(32),
        A.flip_and_crop(32, 4),
    ]


# ------------------------------------------------------------------------------------------
# Properties every transform must have


@pytest.mark.parametrize("transform", every_transform(), ids=lambda t: type(t).__name__)
def test_shape_dtype_device_and_range_are_preserved(transform):
    x = photos()
    y = transform(x, generator())
    assert y.shape == x.shape
    assert y.dtype == torch.float32
    assert y.device == x.device
    assert y.min() >= 0 and y.max() <= 1
    assert torch.equal(x, photos()), "the input batch must not be modified in place"


@pytest.mark.parametrize("transform", every_transform(), ids=lambda t: type(t).__name__)
def test_same_seed_gives_same_batch_and_other_seeds_differ(transform):
    x = photos()
    first, again = transform(x, generator(1)), transform(x, generator(1))
    assert torch.equal(first, again)
    assert not torch.equal(first, transform(x, generator(2)))


@pytest.mark.parametrize("transform", [A.RandomResizedCrop(32), A.ColorJitter(0.4, 0.4, 0.4, 0.1),
                                       A.simclr_augment(32), A.moco_cifar_augment(32)],
                         ids=lambda t: type(t).__name__)
def test_copies_of_one_image_get_different_augmentations(transform):
    x = photos(batch=1).expand(16, -1, -1, -1).contiguous()
    y = transform(x, generator())
    distinct = {tuple(img.flatten()[::97].tolist()) for img in y}
    assert len(distinct) >= 12, f"only {len(distinct)} different outputs for 16 copies"


def test_crops_and_colours_differ_between_two_images_of_one_batch():
    x = photos(batch=1).expand(2, -1, -1, -1).contiguous()
    crop = A.RandomResizedCrop(32)
    boxes = crop.sample_boxes(2, 32, 32, generator())
    assert not torch.allclose(boxes[0], boxes[1])
    jittered = A.ColorJitter(0.4, 0.4, 0.4, 0.1)(x, generator())
    assert not torch.allclose(jittered[0].mean(dim=(1, 2)), jittered[1].mean(dim=(1, 2)))


def test_view_pairs_from_one_generator_are_independent():
    x = photos()
    augment, g = A.simclr_augment(32), generator()
    view1, view2 = augment(x, g), augment(x, g)
    assert not torch.equal(view1, view2)


# ------------------------------------------------------------------------------------------
# Geometry


def test_flip_with_p_0_and_p_1_is_exact():
    x = photos()
    assert torch.equal(A.RandomHorizontalFlip(0.0)(x, generator()), x)
    assert torch.equal(A.RandomHorizontalFlip(1.0)(x, generator()), x.flip(-1))


def test_flip_with_p_half_flips_about_half_the_images_each_exactly():
    x = photos(batch=400)
    y = A.RandomHorizontalFlip(0.5)(x, generator())
    flipped = torch.tensor([torch.equal(a, b.flip(-1)) for a, b in zip(y, x)])
    kept = torch.tensor([torch.equal(a, b) for a, b in zip(y, x)])
    assert bool((flipped ^ kept).all()), "every image must be either untouched or exactly mirrored"
    assert 150 < int(flipped.sum()) < 250


def test_resized_crop_of_the_whole_image_is_the_identity():
    x = photos()
    y = A.RandomResizedCrop(32, scale=(1.0, 1.0), ratio=(1.0, 1.0))(x, generator())
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)


def test_resized_crop_samples_inside_its_box():
    # On a horizontal ramp (value = column / W) bilinear resampling is exact, so each output column
    # tells where the crop sampled: pixel j of a 16-wide output from box [x1, x2] reads column
    # x1 + (j + 0.5) * (x2 - x1) / 16 - 0.5.
    batch, size = 6, 32
    ramp = (torch.arange(size, dtype=torch.float32) / size).expand(batch, 3, size, size).contiguous()
    crop = A.RandomResizedCrop(16, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    boxes = crop.sample_boxes(batch, size, size, generator(3))
    y = crop(ramp, generator(3))
    x1, x2 = boxes[:, 0:1], boxes[:, 2:3]
    assert torch.allclose(x2 - x1, torch.full_like(x1, 16.0))
    columns = x1 + (torch.arange(16) + 0.5) * (x2 - x1) / 16 - 0.5
    torch.testing.assert_close(y[:, 0, 0, :], columns / size, atol=1e-5, rtol=0)
    assert len(set(boxes[:, 0].tolist())) == batch


def test_resized_crop_boxes_respect_scale_ratio_and_image_bounds():
    crop = A.RandomResizedCrop(32, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3))
    boxes = crop.sample_boxes(2000, 32, 48, generator())
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 48 + 1e-4).all() and (boxes[:, 3] <= 32 + 1e-4).all()
    area = w * h / (32 * 48)
    assert (area >= 0.2 - 1e-4).all() and (area <= 1 + 1e-4).all()
    assert ((w / h) >= 3 / 4 - 1e-4).all() and ((w / h) <= 4 / 3 + 1e-4).all()


def test_resized_crop_falls_back_to_a_central_box_when_no_draw_fits():
    # On a 32×8 image no square box of at least half the area fits, so every sample falls back to
    # the largest centred box with the allowed ratio: 8×8 in the middle.
    crop = A.RandomResizedCrop(8, scale=(0.5, 1.0), ratio=(1.0, 1.0))
    boxes = crop.sample_boxes(5, 8, 32, generator())
    assert boxes.tolist() == [[12.0, 0.0, 20.0, 8.0]] * 5
    assert crop.sample_boxes(5, 32, 8, generator()).tolist() == [[0.0, 12.0, 8.0, 20.0]] * 5


def test_resized_crop_changes_the_output_size():
    y = A.RandomResizedCrop((24, 16))(photos(size=64), generator())
    assert y.shape == (8, 3, 24, 16)


def test_crop_with_padding_takes_whole_pixel_windows_of_the_padded_image():
    x = photos()
    y = A.RandomCropWithPadding(32, 4)(x, generator())
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    offsets = []
    for out, image in zip(y, padded):
        matches = [(i, j) for i in range(9) for j in range(9) if torch.equal(out, image[:, i:i + 32, j:j + 32])]
        assert matches, "each output must be an exact window of the zero-padded image"
        offsets.append(matches[0])
    assert len(set(offsets)) > 1


def test_crop_with_zero_padding_is_the_identity():
    x = photos()
    assert torch.equal(A.RandomCropWithPadding(32, 0)(x, generator()), x)


def test_rotate90_four_times_is_the_identity_and_matches_rot90_per_sample():
    x = photos()
    k = torch.tensor([0, 1, 2, 3, 4, -1, 5, 2])
    y = A.rotate90(x, k)
    for image, turns, out in zip(x, k.tolist(), y):
        assert torch.equal(out, torch.rot90(image, turns, dims=(-2, -1)))
    z = x
    for _ in range(4):
        z = A.rotate90(z, k)
    assert torch.equal(z, x)
    assert torch.equal(A.rotate90(x, 1), torch.rot90(x, 1, dims=(-2, -1)))


def test_rotate_by_zero_is_close_to_the_identity():
    x = photos()
    torch.testing.assert_close(A.rotate(x, 0.0), x, atol=1e-5, rtol=0)


def test_rotate_by_90_matches_rotate90_on_the_interior():
    x = photos()
    angles = torch.tensor([90.0, -90.0, 180.0, 270.0, 0.0, 90.0, 180.0, -270.0])
    quarter_turns = (angles / 90).round().long()
    interior = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    torch.testing.assert_close(A.rotate(x, angles)[interior], A.rotate90(x, quarter_turns)[interior],
                               atol=1e-4, rtol=0)


def test_rotate_by_45_is_not_a_quarter_turn_and_fills_corners_per_padding_mode():
    x = photos() * 0.5 + 0.5                                         # no black pixels inside
    zeros, reflected = A.rotate(x, 45.0), A.rotate(x, 45.0, padding_mode="reflection")
    assert (zeros[:, :, 0, 0] == 0).all(), "zeros padding must leave black corners"
    assert (reflected[:, :, 0, 0] > 0.4).all()
    assert not torch.allclose(zeros[..., 8:24, 8:24], A.rotate90(x, 1)[..., 8:24, 8:24], atol=1e-2)


# ------------------------------------------------------------------------------------------
# Colour


def test_grayscale_gives_equal_channels_and_p_0_is_the_identity():
    x = photos()
    y = A.RandomGrayscale(1.0)(x, generator())
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    torch.testing.assert_close(y[:, :1], TF.rgb_to_grayscale(x), atol=1e-6, rtol=0)
    assert torch.equal(A.RandomGrayscale(0.0)(x, generator()), x)


@pytest.mark.parametrize("factors", [dict(brightness=(1.3, 1.3)), dict(contrast=(0.6, 0.6)),
                                     dict(saturation=(1.4, 1.4)), dict(hue=(0.1, 0.1)),
                                     dict(hue=(-0.3, -0.3)),
                                     dict(brightness=(0.7, 0.7), contrast=(1.2, 1.2),
                                          saturation=(0.5, 0.5), hue=(0.05, 0.05))])
def test_color_jitter_with_fixed_factors_matches_torchvision(factors):
    x = photos()
    y = A.ColorJitter(**factors, hue_method="hsv")(x, generator())
    expected = x
    if "brightness" in factors:
        expected = TF.adjust_brightness(expected, factors["brightness"][0])
    if "contrast" in factors:
        expected = TF.adjust_contrast(expected, factors["contrast"][0])
    if "saturation" in factors:
        expected = TF.adjust_saturation(expected, factors["saturation"][0])
    if "hue" in factors:
        expected = TF.adjust_hue(expected, factors["hue"][0])
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=0)


def test_color_jitter_factors_are_per_sample_and_p_skips_images_exactly():
    x = photos(batch=1).expand(200, -1, -1, -1).contiguous()
    y = A.ColorJitter(brightness=0.4, p=0.5)(x, generator())
    untouched = torch.tensor([torch.equal(a, b) for a, b in zip(y, x)])
    assert 60 < int(untouched.sum()) < 140
    gains = (y[~untouched].mean(dim=(1, 2, 3)) / x[0].mean())
    assert gains.min() < 0.8 and gains.max() > 1.2
    assert torch.equal(A.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.0)(x, generator()), x)


@pytest.mark.parametrize("component, method", [("brightness", "rotation"), ("contrast", "rotation"),
                                               ("saturation", "rotation"), ("hue", "rotation"), ("hue", "hsv")])
def test_each_color_jitter_component_draws_one_factor_per_image(component, method):
    x = photos(batch=1).expand(16, -1, -1, -1).contiguous()
    y = A.ColorJitter(**{component: 0.1}, hue_method=method)(x, generator())
    distinct = {tuple(img.flatten()[::97].tolist()) for img in y}
    assert len(distinct) == 16


def test_hue_rotation_by_a_third_turn_permutes_channels_like_torchvision():
    x = photos()
    third = torch.full((8,), 1 / 3)
    torch.testing.assert_close(A.rotate_hue(x, third), x[:, [2, 0, 1]], atol=1e-5, rtol=0)
    torch.testing.assert_close(A.rotate_hue(x, third), TF.adjust_hue(x, 1 / 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(A.rotate_hue(x, torch.zeros(8)), x, atol=1e-6, rtol=0)


def test_hue_rotation_keeps_the_channel_mean_and_turns_like_the_hsv_shift():
    x = 0.5 + 0.2 * (photos() - 0.5)                                 # pale colours: no clamping
    turns = torch.linspace(-0.1, 0.1, 8)
    rotated, shifted = A.rotate_hue(x, turns), A.shift_hue(x, turns)
    torch.testing.assert_close(rotated.mean(dim=1), x.mean(dim=1), atol=1e-5, rtol=0)
    agreement = ((rotated - x) * (shifted - x)).sum(dim=(1, 2, 3))   # same direction of change
    assert (agreement[turns != 0] > 0).all()


def test_hsv_round_trip_including_greys():
    x = photos()
    x[0] = 0.5                                                       # grey: hue undefined, chroma 0
    x[1] = 0.0
    torch.testing.assert_close(A.hsv_to_rgb(A.rgb_to_hsv(x)), x, atol=1e-5, rtol=0)
    hsv = A.rgb_to_hsv(x)
    assert hsv.min() >= 0 and hsv.max() <= 1


def test_gaussian_blur_matches_torchvision_for_a_fixed_sigma():
    x = photos()
    y = A.GaussianBlur(5, sigma=(1.5, 1.5), p=1.0)(x, generator())
    torch.testing.assert_close(y, TF.gaussian_blur(x, [5, 5], [1.5, 1.5]), atol=1e-5, rtol=0)


def test_gaussian_blur_sigma_is_per_sample():
    x = photos(batch=1, seed=4).expand(8, -1, -1, -1).contiguous()
    y = A.GaussianBlur(9, sigma=(0.1, 3.0), p=1.0)(x, generator())
    sharpness = (y[..., 1:] - y[..., :-1]).abs().mean(dim=(1, 2, 3))
    assert sharpness.max() > 1.5 * sharpness.min()
    torch.testing.assert_close(A.GaussianBlur(3, sigma=(0.01, 0.01), p=1.0)(x, generator()), x)


# ------------------------------------------------------------------------------------------
# Erasing


def test_erasing_changes_exactly_one_rectangle_per_image():
    x = photos() * 0.8                                               # below 1, so erased pixels stand out
    y = A.RandomErasing(p=1.0, value=1.0)(x, generator())
    changed = (y != x).any(dim=1)                                    # [B, H, W]
    sizes = set()
    for mask, out in zip(changed, y):
        rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
        assert len(rows) > 0, "p=1 must erase something in every image"
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert mask[top:bottom, left:right].all(), "the changed pixels must fill their bounding box"
        assert int(mask.sum()) == int((bottom - top) * (right - left))
        assert (out[:, top:bottom, left:right] == 1.0).all()
        sizes.add((int(top), int(bottom), int(left), int(right)))
    assert len(sizes) > 1, "each image must get its own rectangle"


def test_erasing_rectangle_has_the_drawn_area_and_ratio():
    # scale 0.1 of 32×32 with a square ratio is a 10×10 rectangle after rounding.
    x = photos() * 0.8
    y = A.RandomErasing(p=1.0, scale=(0.1, 0.1), ratio=(1.0, 1.0), value=1.0)(x, generator())
    erased = (y != x).any(dim=1)
    assert erased.sum(dim=(1, 2)).tolist() == [100] * 8
    assert erased.any(dim=2).sum(dim=1).tolist() == [10] * 8


def test_erasing_with_p_0_is_the_identity():
    x = photos()
    assert torch.equal(A.RandomErasing(p=0.0)(x, generator()), x)


# ------------------------------------------------------------------------------------------
# Presets and errors


def test_presets_are_single_composed_objects_with_the_papers_parameters():
    moco = A.moco_cifar_augment(32)
    assert isinstance(moco, A.Compose)
    crop, jitter, gray, flip = moco.transforms
    assert crop.size == (32, 32) and crop.scale == (0.2, 1.0)
    assert jitter.brightness == (0.6, 1.4) and jitter.hue == (-0.1, 0.1) and jitter.p == 0.8
    assert gray.p == 0.2 and flip.p == 0.5
    simclr = A.simclr_augment(32)
    assert isinstance(simclr, A.Compose) and simclr.transforms[0].scale == (0.08, 1.0)
    assert not any(isinstance(t, A.GaussianBlur) for t in simclr.transforms)
    assert any(isinstance(t, A.GaussianBlur) for t in A.simclr_augment(96).transforms)
    assert [type(t) for t in A.flip_and_crop().transforms] == [A.RandomCropWithPadding, A.RandomHorizontalFlip]


def test_uint8_input_is_refused_with_expected_and_got():
    x = (photos() * 255).to(torch.uint8)
    with pytest.raises(TypeError, match=r"expected a float tensor.*got dtype torch.uint8"):
        A.simclr_augment()(x, generator())


@pytest.mark.parametrize("transform", every_transform() + [lambda x, g: A.rotate(x, 10.0),
                                                          lambda x, g: A.rotate90(x, 1)],
                         ids=lambda t: getattr(type(t), "__name__", "fn"))
def test_wrong_rank_is_refused_with_expected_and_got(transform):
    with pytest.raises(ValueError, match=r"expected a 4-D batch \[B, C, H, W\], got shape \(3, 32, 32\)"):
        transform(photos()[0], generator())


def test_colour_transforms_need_three_channels():
    with pytest.raises(ValueError, match=r"expected 3 \(RGB\) channels, got 1"):
        A.ColorJitter(0.4)(photos()[:, :1], generator())


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="odd"):
        A.GaussianBlur(4)
    with pytest.raises(ValueError, match="scale"):
        A.RandomResizedCrop(32, scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="hue"):
        A.ColorJitter(hue=0.7)
    with pytest.raises(ValueError, match="hue_method"):
        A.ColorJitter(hue=0.1, hue_method="yiq")
    with pytest.raises(ValueError, match=r"probability in \[0, 1\], got 1.5"):
        A.RandomHorizontalFlip(1.5)
    with pytest.raises(TypeError, match=r"integer tensor of shape \(8,\)"):
        A.rotate90(photos(), torch.ones(8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda_with_a_cuda_generator_and_refuses_a_cpu_one():
    x = photos().cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    y = A.simclr_augment()(x, g)
    assert y.device == x.device and y.shape == x.shape
    with pytest.raises(ValueError, match="generator is on cpu but the batch is on cuda"):
        A.simclr_augment()(x, generator())
