"""The recipes (sslcourse/recipes/) and the benchmarks that must run them, not copies of them.

The exercise functions come from the solution notebooks through bench/solutions.py, the same
loader the benchmarks use.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sslcourse.budget import make_budget
from sslcourse.data import ImageDataset
from sslcourse.recipes import context_encoder, cpc, denoising, moco, patch_position, rotation, split_brain
from sslcourse.session import Session

REPO = Path(__file__).resolve().parents[1]
CIFAR_NPZ = REPO.parent / "shared" / "data" / "cifar10-jpeg.npz"
sys.path.insert(0, str(REPO))
from bench.solutions import solution_functions  # noqa: E402


def tiny_session(n_train=128, n_test=40, seed=0) -> Session:
    g = torch.Generator().manual_seed(seed)
    data = ImageDataset("tiny", torch.randint(0, 256, (n_train, 3, 32, 32), dtype=torch.uint8, generator=g),
                        torch.arange(n_train) % 4, torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8,
                                                                 generator=g),
                        torch.arange(n_test) % 4, ["a", "b", "c", "d"])
    return Session(budget=make_budget("smoke", "test"), device=torch.device("cpu"), seed=seed, data=data)


@pytest.fixture(scope="module")
def moco_functions():
    found = solution_functions("07_moco", ("moco_step", "moco_infonce", "momentum_update", "enqueue_dequeue",
                                           "info_nce_in_batch"))
    return found


def run_kwargs(found):
    return dict(moco_step=found["moco_step"], infonce=found["moco_infonce"], update=found["momentum_update"],
                enqueue=found["enqueue_dequeue"])


# ------------------------------------------------------------------------------------ MoCo

def test_moco_recipe_presets():
    for name in ("smoke", "cpu", "gpu"):
        recipe = moco.moco_recipe(make_budget(name))
        assert isinstance(recipe, moco.MocoRecipe) and recipe == moco.moco_recipe(name)
        assert recipe.batch_size % recipe.bn_splits == 0
        assert 0 < recipe.momentum < 1 and recipe.temperature > 0 and recipe.queue_size >= recipe.batch_size
    with pytest.raises(ValueError, match="expected a budget"):
        moco.moco_recipe("laptop")


def test_moco_container_starts_with_a_frozen_copy_and_a_unit_queue():
    recipe = moco.moco_recipe("smoke")
    model = moco.new_moco(make_budget("smoke"), recipe, seed=3)
    assert model.queue.shape == (recipe.queue_size, recipe.projection_dim)
    torch.testing.assert_close(model.queue.norm(dim=1), torch.ones(recipe.queue_size))
    assert all(not p.requires_grad for p in model.key_encoder.parameters())
    for p_k, p_q in zip(model.key_encoder.parameters(), model.query_encoder.parameters()):
        assert torch.equal(p_k, p_q) and p_k.data_ptr() != p_q.data_ptr()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.query_encoder[1].modules())
    model.pointer = 17
    again = moco.new_moco(make_budget("smoke"), recipe, seed=3)
    again.load_state_dict(model.state_dict())
    assert again.pointer == 17                       # the pointer travels with the state dict (checkpoints)


def test_moco_run_trains_with_the_functions_passed_in(moco_functions):
    session = tiny_session()
    calls = []

    def counting_update(key_encoder, query_encoder, m):
        calls.append(m)
        return moco_functions["momentum_update"](key_encoder, query_encoder, m)

    kwargs = run_kwargs(moco_functions) | {"update": counting_update}
    model, history = moco.run(session, **kwargs, momentum=0.5, live_plot=False, progress=False)
    recipe = moco.moco_recipe("smoke")
    steps = recipe.epochs * (len(session.data.train_x) // recipe.batch_size)
    assert len(history.losses) == steps and calls == [0.5] * steps      # the ablation's m reaches the step
    assert [e["epoch"] for e in history.epochs] == list(range(1, recipe.epochs + 1))
    assert all("knn" in e and 0 <= e["knn"] <= 100 and 0 <= e["pretext_acc"] <= 100 for e in history.epochs)
    assert model.pointer == (steps * recipe.batch_size) % recipe.queue_size


def test_moco_run_stops_at_the_deadline(moco_functions):
    session = tiny_session(n_train=640)
    _, history = moco.run(session, **run_kwargs(moco_functions), epochs=50, monitor=False, live_plot=False,
                          progress=False, deadline_s=0.0)
    assert history.deadline_reached and len(history.epochs) == 1
    assert len(history.losses) < 50 * 10


def test_in_batch_row_uses_one_encoder_and_the_nt_xent_passed_in(moco_functions):
    session = tiny_session()
    seen = []

    def nt_xent(z1, z2, temperature):
        seen.append((z1.shape, temperature))
        return moco_functions["info_nce_in_batch"](z1, z2, temperature)

    backbone, history = moco.run_in_batch(session, info_nce_in_batch=nt_xent, progress=False)
    recipe = moco.moco_recipe("smoke")
    assert seen and all(shape == (recipe.batch_size, recipe.projection_dim) and t == recipe.temperature
                        for shape, t in seen)
    assert hasattr(backbone, "feature_dim") and history.losses


def test_expected_numbers_are_per_preset_and_dataset():
    assert moco.expected("cpu", "cifar10")["knn"] > moco.expected("cpu", "cifar10")["knn_random_init"]
    assert moco.expected("smoke", "cifar10") is None
    assert moco.expected(make_budget("cpu"), "no-such-dataset") is None


# ------------------------------------------------------------------------------------ RotNet

@pytest.fixture(scope="module")
def rotation_functions():
    return solution_functions("05_rotation", ("rotate_batch", "rotnet_loss", "block_features"))


def test_rotation_run_and_probe_use_the_functions_passed_in(rotation_functions):
    session = tiny_session()
    blocks_asked = []

    def block_features(encoder, x, block):
        blocks_asked.append(block)
        return rotation_functions["block_features"](encoder, x, block)

    angles = rotation.ROTATION_SETS["4 rotations"]
    model, history = rotation.run(session, angles, rotate_batch=rotation_functions["rotate_batch"],
                                  rotnet_loss=rotation_functions["rotnet_loss"], live_plot=False, progress=False)
    assert len(history.epochs) == rotation.rotnet_epochs(session.budget, angles)
    assert all(0 <= e["rotation acc"] <= 1 for e in history.epochs)
    probe = rotation.probe_blocks(model.encoder, session.data, "cpu", session.budget, block_features=block_features)
    assert list(probe) == list(session.budget.pick(**rotation.PROBE["blocks"]))
    assert set(blocks_asked) == set(probe)
    assert all(set(result) == {"knn", "linear"} for result in probe.values())
    accuracy = rotation.rotation_accuracy(model, session.data, angles, "cpu",
                                          rotate_batch=rotation_functions["rotate_batch"])
    assert 0 <= accuracy <= 100


# ------------------------------------------------------------------------------------ denoising autoencoders

@pytest.fixture(scope="module")
def denoising_functions():
    return solution_functions("01_denoising_autoencoders", ("masking_noise", "salt_and_pepper", "emphasized_mse",
                                                            "emphasized_cross_entropy", "dae_loss"))


def test_denoising_run_uses_the_functions_passed_in_and_monitors_the_probes(denoising_functions):
    session = tiny_session()
    seen = {"noise": [], "loss": [], "step": 0}

    def noise(x, level, generator):
        seen["noise"].append((level, generator.device.type))
        return denoising_functions["masking_noise"](x, level, generator)

    def loss(x, z, mask, alpha, beta):
        seen["loss"].append((z.dtype, torch.is_autocast_enabled("cpu"), alpha, beta))
        return denoising_functions["emphasized_cross_entropy"](x, z, mask, alpha, beta)

    def dae_loss(model, x, corrupt, loss_):
        seen["step"] += 1
        return denoising_functions["dae_loss"](model, x, corrupt, loss_)

    model, history = denoising.run(session, noise, 0.5, loss=loss, dae_loss=dae_loss, monitor=True, epochs=2,
                                   live_plot=False, progress=False)
    steps = len(history.losses)
    assert seen["step"] == steps == 2 * (denoising.train_images(session.data, session.budget) // session.budget.batch_size)
    assert all(level == 0.5 for level, _ in seen["noise"]) and len(seen["noise"]) == steps + 1   # + the early check
    assert all(dtype == torch.float32 and not autocast for dtype, autocast, _, _ in seen["loss"])
    assert {(a, b) for *_, a, b in seen["loss"]} == {(denoising.RECIPE["alpha"], denoising.RECIPE["beta"])}
    assert [set(e) >= {"knn", "linear", "pixel mse"} for e in history.epochs] == [True, True]
    probe = denoising.probe(model.encoder, session.data, "cpu", session.budget)
    assert probe == {"knn": history.epochs[-1]["knn"], "linear": history.epochs[-1]["linear"]}
    with pytest.raises(TypeError, match="no forward"):
        model(torch.zeros(1, 3, 32, 32))


def test_denoising_run_names_a_broken_corruption_before_training(denoising_functions):
    def broken(x, level, generator):
        raise ValueError("masking_noise: expected a fraction nu in [0, 1], got 3")

    with pytest.raises(ValueError, match="expected a fraction"):
        denoising.run(tiny_session(), broken, 3, loss=denoising_functions["emphasized_mse"],
                      dae_loss=denoising_functions["dae_loss"], live_plot=False, progress=False)


def test_neighbour_fill_and_the_corrupted_entry_error(denoising_functions):
    smooth = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(2, 3, 32, 32).contiguous()
    mask = torch.zeros_like(smooth, dtype=torch.bool)
    mask[:, :, 10, 10] = mask[:, :, 20, 5] = True                  # isolated holes in a linear ramp
    filled = denoising.neighbour_fill(smooth.masked_fill(mask, 0.0), mask)
    assert torch.equal(filled[~mask], smooth[~mask])
    assert ((filled - smooth)[mask].abs().max()) < 1e-6             # the mean of symmetric neighbours is exact
    isolated = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    isolated[..., :, :] = True
    isolated[..., 0, 0] = False
    x = torch.full((1, 1, 5, 5), 0.25)
    assert torch.allclose(denoising.neighbour_fill(x, isolated), x)   # no intact neighbour: the image's intact mean
    session = tiny_session()
    model = denoising.new_dae(session.budget, session.data, 0)
    corrupt = denoising.corruption(denoising_functions["salt_and_pepper"], 0.5, torch.Generator().manual_seed(0))
    errors = denoising.corrupted_entry_error(model, session.data.test_x[:8], corrupt, "cpu",
                                             dae_loss=denoising_functions["dae_loss"],
                                             loss=denoising_functions["emphasized_mse"])
    assert set(errors) == {"dae", "neighbour fill", "grey"} and all(0 <= v <= 1 for v in errors.values())


def test_layout_r2_reads_a_thumbnail_from_features_that_hold_it():
    g = torch.Generator().manual_seed(0)
    colours = lambda n: (torch.rand(n, 3, 2, 2, generator=g) * 255).to(torch.uint8).repeat_interleave(16, 2).repeat_interleave(16, 3)
    data = ImageDataset("blocks", colours(256), torch.arange(256) % 4, colours(64), torch.arange(64) % 4, list("abcd"))

    class Thumbnail(nn.Module):     # features = the 2×2 thumbnail itself: R² near 1 for size=2
        def forward(self, x):
            return nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)

    class Constant(nn.Module):
        def forward(self, x):
            return torch.zeros(len(x), 4)

    assert denoising.layout_r2(Thumbnail(), data, "cpu", size=2) > 0.95
    assert abs(denoising.layout_r2(Constant(), data, "cpu", size=2)) < 0.05


def test_first_layer_filters_are_scaled_per_filter():
    filters = denoising.first_layer_filters(denoising.random_encoder(make_budget("smoke"), 0))
    assert filters.shape == (16, 3, 3, 3)
    assert torch.allclose(filters.amin(dim=(1, 2, 3)), torch.zeros(16)) and torch.allclose(filters.amax(dim=(1, 2, 3)), torch.ones(16))


# ------------------------------------------------------------------------------------ context encoders

CE_LOSSES = ("masked_input", "reconstruction_loss", "discriminator_loss", "generator_loss", "context_encoder_loss")


@pytest.fixture(scope="module")
def ce_functions():
    return solution_functions("02_context_encoders", ("central_mask", "random_region_mask", *CE_LOSSES))


def ce_losses(found):
    return {name: found[name] for name in CE_LOSSES}


def test_context_encoder_run_uses_the_functions_passed_in(ce_functions):
    session = tiny_session()
    seen = {"masks": [], "rec": [], "disc": []}

    def make_mask(batch, size, fraction, generator):
        seen["masks"].append((batch, size, fraction))
        return ce_functions["random_region_mask"](batch, size, fraction, generator)

    def reconstruction_loss(x, prediction, mask):
        seen["rec"].append((x.dtype, prediction.dtype, torch.is_autocast_enabled("cpu")))
        return ce_functions["reconstruction_loss"](x, prediction, mask)

    def discriminator_loss(discriminator, real, fake):
        logits = discriminator(real)
        seen["disc"].append(logits.dtype)
        return ce_functions["discriminator_loss"](discriminator, real, fake)

    losses = {**ce_losses(ce_functions), "reconstruction_loss": reconstruction_loss, "discriminator_loss": discriminator_loss}
    model, history = context_encoder.run(session, make_mask, **losses, lambda_adv=0.5, fraction=0.3, epochs=2,
                                         live_plot=False, progress=False)
    steps = len(history.losses)
    assert steps == 2 * (context_encoder.train_images(session.data, session.budget) // session.budget.batch_size)
    assert seen["masks"][0] == (2, 32, 0.3) and len(seen["masks"]) == steps + 1        # + the early check
    assert all(batch == session.budget.batch_size for batch, _, _ in seen["masks"][1:])
    assert all(x == p == torch.float32 and not autocast for x, p, autocast in seen["rec"])
    assert set(seen["disc"]) == {torch.float32}                                       # float32 logits for the losses
    assert all({"reconstruction", "generator", "discriminator", "hole mse"} <= set(e) for e in history.epochs)
    with pytest.raises(TypeError, match="no forward"):
        model(torch.zeros(1, 3, 32, 32))


def test_one_backward_of_the_joint_loss_gives_each_network_its_own_gradient(ce_functions):
    """The documented alternative to two optimizers: grad(total) on D is grad(L_D), on the generator
    grad(λ_rec L_rec + λ_adv L_G), as two separate backward passes compute them."""
    session = tiny_session()
    model = context_encoder.new_context_encoder(session.budget, session.data, 0)
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mask = ce_functions["central_mask"](6, 32, 0.25, torch.Generator())
    kwargs = dict(ce_losses(ce_functions), lambda_rec=1.0, lambda_adv=0.7)
    del kwargs["context_encoder_loss"]
    step = ce_functions["context_encoder_loss"]
    discriminator = list(model.discriminator.parameters())
    generator = [*model.encoder.parameters(), *model.decoder.parameters()]

    def gradients(loss, parameters):
        grads = torch.autograd.grad(loss, parameters, allow_unused=True, retain_graph=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, grads)]

    torch.manual_seed(1)
    total, _ = step(model, x, mask, **kwargs)
    joint_d, joint_g = gradients(total, discriminator), gradients(total, generator)
    torch.manual_seed(1)
    _, parts = step(model, x, mask, **kwargs)
    own_d = gradients(parts["discriminator"], discriminator)
    own_g = gradients(parts["reconstruction"] + 0.7 * parts["generator"], generator)
    leak_d = gradients(parts["reconstruction"] + 0.7 * parts["generator"], discriminator)
    leak_g = gradients(parts["discriminator"], generator)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(joint_d, own_d))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(joint_g, own_g))
    assert all(float(g.abs().max()) == 0 for g in leak_d + leak_g)
    assert any(float(g.abs().max()) > 0 for g in own_d) and any(float(g.abs().max()) > 0 for g in own_g)


def test_a_diverging_adversarial_run_stops_with_a_clear_message(ce_functions):
    """A learning rate 10,000 times the recipe's, and λ_adv 10: within 30 steps the discriminator is certain of
    every image and the fills are noise. Training stops with AdversarialDivergenceError naming what happened
    and what to change, instead of running on with a generator loss of 500."""
    session = tiny_session(n_train=512)
    with pytest.raises(context_encoder.AdversarialDivergenceError, match="Adversarial training diverged") as caught:
        context_encoder.run(session, ce_functions["random_region_mask"], **ce_losses(ce_functions), lambda_adv=10.0,
                            epochs=60, lr_scale=1e4, live_plot=False, progress=False)
    message = str(caught.value)
    assert "learning rate" in message and "lambda_adv" in message


def test_the_divergence_watch_names_the_loss_and_spots_a_discriminator_that_won():
    def parts(rec, gen, disc):
        return {"reconstruction": torch.tensor(rec), "generator": torch.tensor(gen), "discriminator": torch.tensor(disc)}

    watch = context_encoder.DivergenceWatch(0.5, every=3)
    watch(parts(1.0, 0.7, 1.3))
    watch(parts(1.0, float("nan"), 1.3))                  # read back at the next check, named with its step
    with pytest.raises(context_encoder.AdversarialDivergenceError, match="at step 2: generator loss = nan"):
        watch(parts(1.0, 0.7, 1.3))
    won = context_encoder.DivergenceWatch(0.5, every=2, patience=3)
    for _ in range(5):                                    # checks at steps 2 and 4: two in a row, patience 3
        won(parts(1.0, 30.0, 1e-5))
    with pytest.raises(context_encoder.AdversarialDivergenceError, match="won outright"):
        won(parts(1.0, 30.0, 1e-5))
    recovered = context_encoder.DivergenceWatch(0.5, every=1, patience=2)
    for values in ((1.0, 30.0, 1e-5), (1.0, 0.8, 1.2), (1.0, 30.0, 1e-5), (1.0, 0.8, 1.2)):
        recovered(parts(*values))                         # never two checks in a row: no error
    l2_only = context_encoder.DivergenceWatch(0.0, every=1, patience=1)
    for _ in range(3):
        l2_only(parts(1.0, 30.0, 1e-5))                   # the generator ignores the adversary: winning is harmless


def test_context_encoder_run_checks_the_mask_before_training(ce_functions):
    def flat_mask(batch, size, fraction, generator):
        return torch.zeros(batch, size, size, dtype=torch.bool)

    with pytest.raises(ValueError, match=r"bool mask \[2, 1, 32, 32\], got torch.bool \(2, 32, 32\)"):
        context_encoder.run(tiny_session(), flat_mask, **ce_losses(ce_functions), live_plot=False, progress=False)


def test_fills_hole_error_and_the_discriminator_accuracy(ce_functions):
    session = tiny_session()
    model = context_encoder.new_context_encoder(session.budget, session.data, 0)
    images = session.data.test_x[:8]
    mask = ce_functions["random_region_mask"](8, 32, 0.25, torch.Generator().manual_seed(0))
    rows = context_encoder.inpaint({"a": model}, images, mask, "cpu", masked_input=ce_functions["masked_input"])
    assert list(rows) == ["input", "a", "ground truth"] and all(r.shape == (8, 3, 32, 32) for r in rows.values())
    hole = mask.expand(8, 3, 32, 32)
    assert torch.equal(rows["a"][~hole], rows["ground truth"][~hole])          # the context is kept exactly
    assert torch.allclose(rows["input"][:, 0][mask[:, 0]], torch.full((int(mask.sum()),), model.fill[0]))
    error = context_encoder.hole_mse(model, images, mask, "cpu", masked_input=ce_functions["masked_input"])
    assert error == pytest.approx(((rows["a"] - rows["ground truth"]) ** 2)[hole].mean().item(), rel=1e-5)
    accuracy = context_encoder.discriminator_accuracy(model, images, mask, "cpu", masked_input=ce_functions["masked_input"])
    assert 0 <= accuracy <= 100


# ------------------------------------------------------------------------------------ 03: split-brain

SB_EXERCISES = ("rgb_to_lab", "lab_to_rgb", "split_views", "regression_loss", "split_brain_loss", "split_brain_features")


@pytest.fixture(scope="module")
def sb_functions():
    return solution_functions("03_view_prediction", SB_EXERCISES)


def test_split_brain_halves_are_half_width_and_see_their_own_channels():
    model = split_brain.new_split_brain(make_budget("cpu"), 32, 0)
    whole = split_brain.models.make_backbone(make_budget("cpu"))
    assert model.encoder_L.in_channels == 1 and model.encoder_ab.in_channels == 2
    assert model.feature_dim == whole.feature_dim == 2 * model.encoder_L.feature_dim
    maps = model.encoder_L.forward_blocks(torch.randn(2, 1, 32, 32))[-1]
    assert model.decoder_ab(maps).shape == (2, 2, 32, 32)
    assert model.decoder_L(model.encoder_ab.forward_blocks(torch.randn(2, 2, 32, 32))[-1]).shape == (2, 1, 32, 32)
    with pytest.raises(TypeError, match="no forward"):
        model(torch.zeros(1, 3, 32, 32))


def test_split_brain_run_uses_the_functions_passed_in(sb_functions):
    session = tiny_session()
    seen = {"lab": [], "loss": []}

    def rgb_to_lab(rgb):
        seen["lab"].append((rgb.dtype, torch.is_autocast_enabled("cpu"), float(rgb.min()), float(rgb.max())))
        return sb_functions["rgb_to_lab"](rgb)

    def regression_loss(prediction, target):
        seen["loss"].append((prediction.dtype, target.dtype, torch.is_autocast_enabled("cpu"), prediction.shape[1]))
        return sb_functions["regression_loss"](prediction, target)

    model, history = split_brain.run(session, rgb_to_lab=rgb_to_lab, split_views=sb_functions["split_views"],
                                     regression_loss=regression_loss, split_brain_loss=sb_functions["split_brain_loss"],
                                     epochs=2, live_plot=False, progress=False)
    steps = len(history.losses)
    assert steps == 2 * (split_brain.train_images(session.data, session.budget) // session.budget.batch_size)
    assert len(seen["lab"]) == steps + 1                                     # + the early check
    assert all(dtype == torch.float32 and not autocast and 0 <= lo and hi <= 1 for dtype, autocast, lo, hi in seen["lab"])
    assert all(p == t == torch.float32 and not autocast for p, t, autocast, _ in seen["loss"])
    assert sorted({channels for *_, channels in seen["loss"]}) == [1, 2]     # both halves' losses
    assert all({"L→ab", "ab→L"} <= set(e) for e in history.epochs)
    assert all(torch.isfinite(torch.tensor([e["L→ab"], e["ab→L"]])).all() for e in history.epochs)


def test_split_brain_run_names_a_broken_conversion_before_training(sb_functions):
    kwargs = {n: sb_functions[n] for n in ("split_views", "regression_loss", "split_brain_loss")}
    with pytest.raises(ValueError, match=r"rgb_to_lab\(images \(2, 3, 32, 32\)\) must return a float tensor of the same shape"):
        split_brain.run(tiny_session(), rgb_to_lab=lambda rgb: rgb[:, :1], **kwargs, live_plot=False, progress=False)
    with pytest.raises(ValueError, match="NaN or Inf"):
        split_brain.run(tiny_session(), rgb_to_lab=lambda rgb: torch.log(rgb - 2), **kwargs, live_plot=False, progress=False)


def test_split_brain_probe_parts_are_the_columns_of_the_features(sb_functions):
    session = tiny_session()
    model = split_brain.new_split_brain(session.budget, 32, 0).eval()
    features = {n: sb_functions[n] for n in ("rgb_to_lab", "split_views", "split_brain_features")}
    data = session.data
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    from sslcourse.evaluate import extract_features
    columns = {part: extract_features(split_brain.ViewFeatures(model, part, mean=data.mean, std=data.std, **features),
                                      images, mean=data.mean, std=data.std, device="cpu", amp=False)
               for part in split_brain.PARTS}
    half = model.encoder_L.feature_dim
    assert columns["concatenation"].shape == (5, model.feature_dim)
    assert torch.allclose(columns["L→ab half"], columns["concatenation"][:, :half], atol=1e-5)
    assert torch.allclose(columns["ab→L half"], columns["concatenation"][:, half:], atol=1e-5)
    lab = sb_functions["rgb_to_lab"](images.float() / 255)
    L_view, _ = sb_functions["split_views"](lab)
    with torch.no_grad():
        assert torch.allclose(columns["L→ab half"], model.encoder_L(L_view), atol=1e-4)
    result = split_brain.probe(model, "concatenation", data, "cpu", session.budget, **features)
    assert set(result) == {"knn", "linear"} and all(0 <= v <= 100 for v in result.values())
    with pytest.raises(ValueError, match="part must be one of"):
        split_brain.ViewFeatures(model, "both", mean=data.mean, std=data.std, **features)


def test_colorize_rows_and_chroma(sb_functions):
    model = split_brain.new_split_brain(make_budget("smoke"), 32, 0)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    rows = split_brain.colorize(model, images, "cpu", rgb_to_lab=sb_functions["rgb_to_lab"],
                                lab_to_rgb=sb_functions["lab_to_rgb"], split_views=sb_functions["split_views"])
    for name in ("grey input", "colorized (L→ab)", "truth", "lightness from colour (ab→L)"):
        assert rows[name].shape == (3, 3, 32, 32) and 0 <= rows[name].min() and rows[name].max() <= 1
    grey = rows["grey input"]
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=2e-3) and torch.allclose(grey[:, 1], grey[:, 2], atol=2e-3)
    assert torch.allclose(rows["truth"], images.float() / 255)
    assert torch.allclose(rows["lab_colorized"][:, 0], rows["lab"][:, 0], atol=1e-4)    # the true L is kept
    lab = torch.zeros(2, 3, 4, 4)
    lab[:, 1], lab[:, 2] = 3.0, 4.0
    assert split_brain.chroma(lab) == pytest.approx(5.0)


# ------------------------------------------------------------------------------------ the benchmarks

# ------------------------------------------------------------------------------- 04: patch position

PP_EXERCISES = ("grid_patches", "sample_pairs", "pair_logits", "hamming_permutations", "shuffle_tiles")


@pytest.fixture(scope="module")
def pp_functions():
    return solution_functions("04_patch_position", PP_EXERCISES)


def test_colour_dropping_keeps_one_channel_per_patch_and_follows_the_generator():
    patches = torch.randn(200, 3, 4, 4, generator=torch.Generator().manual_seed(0)) + 5    # far from the noise
    dropped = patch_position.drop_colour(patches, torch.Generator().manual_seed(1))
    kept = (dropped == patches).flatten(2).all(dim=2)                                        # [200, 3]
    assert kept.sum(dim=1).tolist() == [1] * 200
    assert set(kept.float().argmax(dim=1).tolist()) == {0, 1, 2}
    assert dropped[~kept].abs().max() < 10 * patch_position.RECIPE["noise_std"]
    assert torch.equal(dropped, patch_position.drop_colour(patches, torch.Generator().manual_seed(1)))


def test_candidate_permutations_are_unique_permutations_with_the_identity_first():
    candidates = patch_position.candidate_permutations(500, seed=3)
    assert candidates.dtype == torch.int64 and candidates.shape[1] == 9
    assert torch.equal(candidates[0], torch.arange(9))
    assert len(torch.unique(candidates, dim=0)) == len(candidates) >= 490
    assert torch.equal(candidates.sort(dim=1).values, torch.arange(9).expand_as(candidates))
    assert torch.equal(candidates, patch_position.candidate_permutations(500, seed=3))


def test_relative_position_run_uses_the_functions_passed_in(pp_functions):
    session = tiny_session()
    seen = {"grid": [], "logits": []}

    def grid_patches(images, **kwargs):
        seen["grid"].append((tuple(images.shape), kwargs["patch"], kwargs["gap"], kwargs["jitter"]))
        return pp_functions["grid_patches"](images, **kwargs)

    def pair_logits(model, centre, neighbour):
        seen["logits"].append((tuple(centre.shape), tuple(neighbour.shape)))
        return pp_functions["pair_logits"](model, centre, neighbour)

    setting = patch_position.SETTINGS["no gap, no jitter, full colour (the shortcut)"]
    model, history = patch_position.run_relative_position(
        session, setting, grid_patches=grid_patches, sample_pairs=pp_functions["sample_pairs"], pair_logits=pair_logits,
        epochs=2, live_plot=False, progress=False)
    steps = len(history.losses)
    assert steps == 2 * (len(session.data.train_x) // session.budget.batch_size) and len(seen["grid"]) == steps
    assert all(shape[-2:] == (64, 64) and (patch, gap, jitter) == (16, 0, 0) for shape, patch, gap, jitter in seen["grid"])
    assert all(c[1:] == (3, 16, 16) and c == n for c, n in seen["logits"])
    assert 0 <= history.epochs[-1]["position acc"] <= 100   # percent, like the tables
    accuracy = patch_position.relative_position_accuracy(model, session.data, setting, "cpu", images=40,
                                                         **{k: pp_functions[k] for k in PP_EXERCISES[:3]})
    assert 0 <= accuracy <= 100


def test_a_wrong_grid_names_the_exercise_and_a_bad_setting_is_refused(pp_functions):
    session = tiny_session()
    functions = {"sample_pairs": pp_functions["sample_pairs"], "pair_logits": pp_functions["pair_logits"]}
    with pytest.raises(ValueError, match="exercise 1a"):
        patch_position.run_relative_position(session, {"gap": 6}, grid_patches=lambda images, **_: images,
                                             epochs=1, live_plot=False, progress=False, **functions)
    with pytest.raises(ValueError, match="keys gap, jitter and colour"):
        patch_position.run_relative_position(session, {"colour": "grey"}, grid_patches=pp_functions["grid_patches"],
                                             epochs=1, live_plot=False, progress=False, **functions)


def test_jigsaw_shares_one_encoder_over_the_tiles_and_trains(pp_functions):
    session = tiny_session()
    permutations = pp_functions["hamming_permutations"](patch_position.candidate_permutations(200, 0), 8)
    model, history = patch_position.run_jigsaw(session, permutations, grid_patches=pp_functions["grid_patches"],
                                               shuffle_tiles=pp_functions["shuffle_tiles"], epochs=1,
                                               live_plot=False, progress=False)
    assert model.head[-1].out_features == 8 and "jigsaw acc" in history.epochs[-1]
    calls = []
    model.encoder.register_forward_hook(lambda module, inputs, output: calls.append(tuple(inputs[0].shape)))
    logits = model.eval()(torch.randn(3, 9, 3, 16, 16))
    assert logits.shape == (3, 8) and calls == [(27, 3, 16, 16)]
    accuracy = patch_position.jigsaw_accuracy(model, session.data, permutations, "cpu", images=40,
                                              grid_patches=pp_functions["grid_patches"],
                                              shuffle_tiles=pp_functions["shuffle_tiles"])
    assert 0 <= accuracy <= 100


def test_patch_probe_feeds_whole_images_at_the_training_scale():
    session = tiny_session()
    sizes = []
    encoder = patch_position.random_encoder(session.budget, 0)
    encoder.register_forward_pre_hook(lambda module, inputs: sizes.append(tuple(inputs[0].shape[-2:])))
    result = patch_position.probe(encoder, session.data, "cpu", session.budget)
    assert set(sizes) == {(64, 64)} and set(result) == {"knn", "linear"}
    with pytest.raises(TypeError, match="no forward"):
        patch_position.new_relative_position(session.budget, 0)(torch.zeros(1, 3, 16, 16))


def _defined_and_called(path: Path):
    tree = ast.parse(path.read_text())
    classes = [node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    calls = {node.func.attr for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
    imports = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    return classes, calls, imports


@pytest.mark.parametrize("script, recipe", [("bench_moco.py", "sslcourse.recipes"),
                                            ("bench_rotation.py", "sslcourse.recipes"),
                                            ("bench_denoising.py", "sslcourse.recipes"),
                                            ("bench_context_encoder.py", "sslcourse.recipes"),
                                            ("bench_split_brain.py", "sslcourse.recipes"),
                                            ("bench_patch_position.py", "sslcourse.recipes"),
                                            ("bench_cpc.py", "sslcourse.recipes")])
def test_method_benchmarks_have_no_model_or_loop_of_their_own(script, recipe):
    """The benchmark of a method runs the recipe students run: no class, no backward, no optimiser step."""
    classes, calls, imports = _defined_and_called(REPO / "bench" / script)
    assert classes == [], f"{script} defines classes {classes}: models belong in sslcourse/recipes/"
    assert not calls & {"backward", "step", "zero_grad", "forward"}, \
        f"{script} calls {sorted(calls & {'backward', 'step', 'zero_grad', 'forward'})}: it has a loop of its own"
    assert recipe in imports and "bench.solutions" in imports


def test_solution_loader_refuses_a_student_release(tmp_path, monkeypatch):
    import bench.solutions as loader

    release = json.loads(loader.notebook_path("07_moco").read_text())
    for cell in release["cells"]:
        if cell.get("metadata", {}).get("nbgrader", {}).get("solution") and cell["cell_type"] == "code":
            cell["source"] = ["def moco_step(*args, **kwargs):\n", "    raise NotImplementedError()\n"]
    (tmp_path / "solutions" / "07_moco").mkdir(parents=True)
    (tmp_path / "solutions" / "07_moco" / "07_moco.ipynb").write_text(json.dumps(release))
    monkeypatch.setattr(loader, "ROOT", tmp_path)
    with pytest.raises(SystemExit, match="no solutions"):
        loader.solution_functions("07_moco", ["moco_step"])
    with pytest.raises(SystemExit, match="found no file"):
        loader.solution_functions("99_missing", ["anything"])


def _bench_module(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR_NPZ.exists(), reason="needs ../shared/data/cifar10-jpeg.npz")
def test_bench_moco_runs_end_to_end_on_a_tiny_cifar_subset(capsys):
    _bench_module("bench_moco").main(["--preset", "cpu", "--data", str(CIFAR_NPZ), "--train-images", "64",
                                      "--test-images", "32", "--batch-size", "32", "--queue-size", "64",
                                      "--epochs", "2", "--minutes", "5"])
    printed = capsys.readouterr().out
    assert "random init: kNN" in printed and "MoCo: kNN" in printed and "| cpu | cpu | cifar10 64 / 32 |" in printed
    assert "training: 2 epochs (calibrated" in printed


def test_augmentation_keeps_larger_crops_on_the_embedded_digits():
    """The demo's 0.2 minimum crop left MoCo below random init on the digits; they get 0.5."""
    def crop_scale(name):
        data = tiny_session().data
        data.name = name
        crop = moco.augmentation(data).transforms[0]
        return crop.scale

    assert crop_scale("embedded") == (0.5, 1.0)
    assert crop_scale("cifar10") == (0.2, 1.0)


# ------------------------------------------------------------------------------------------------ 06: CPC

CPC_EXERCISES = ("encode_and_context", "step_scores", "info_nce", "sample_negatives")


@pytest.fixture(scope="module")
def cpc_functions():
    return solution_functions("06_cpc", CPC_EXERCISES)


@pytest.fixture(scope="module")
def cpc_speech():
    return cpc.speech_data(make_budget("smoke", "test"), seed=0)


def test_cpc_run_uses_the_functions_passed_in_and_records_the_accuracies(cpc_functions, cpc_speech):
    session = Session(budget=make_budget("smoke", "test"), device=torch.device("cpu"), seed=0, data=None)
    seen = {"modes": [], "scores": 0}

    def sample_negatives(batch, steps, count, mode, generator):
        seen["modes"].append(mode)
        return cpc_functions["sample_negatives"](batch, steps, count, mode, generator)

    def step_scores(predictor, context, candidates):
        seen["scores"] += 1
        return cpc_functions["step_scores"](predictor, context, candidates)

    functions = {**cpc_functions, "sample_negatives": sample_negatives, "step_scores": step_scores}
    model, history = cpc.run(session, cpc_speech, steps_ahead=3, mode="same", epochs=1, live_plot=False,
                             progress=False, **functions)
    steps = len(history.losses)
    assert steps == len(cpc_speech.train_x) // cpc.RECIPE["batch"]["smoke"] and seen["modes"] == ["same"] * steps
    assert seen["scores"] == 3 * steps and len(model.predictors) == 3           # one W_k per step k, each step
    record = history.epochs[-1]
    assert {"acc k=1", "acc k=3", "acc"} <= set(record) and 0 <= record["acc"] <= 1
    with pytest.raises(ValueError, match="mode must be one of"):
        cpc.run(session, cpc_speech, mode="future", epochs=1, live_plot=False, progress=False, **cpc_functions)


def test_a_fresh_cpc_model_leaves_chance_from_its_first_steps(cpc_functions, cpc_speech):
    """The encoder ends in a ChannelNorm: z at unit scale, so the loss starts falling at once. Without it (z at a
    quarter of that scale) this run was still within 0.15 nats of log N after 32 steps, and a 250-step Table 2 run
    at K = 12 never left log N (bench/RESULTS.md, 06_cpc)."""
    session = Session(budget=make_budget("smoke", "test"), device=torch.device("cpu"), seed=0, data=None)
    model, history = cpc.run(session, cpc_speech, steps_ahead=4, negatives=16, epochs=8, live_plot=False,
                             progress=False, **cpc_functions)
    assert isinstance(model.encoder[-1], cpc.ChannelNorm)
    chance, last = math.log(17), sum(history.losses[-8:]) / 8
    assert last < chance - 0.3, f"the loss of the last 8 of 32 steps is {last:.3f}, chance is log 17 = {chance:.3f}"


def test_a_wrong_shape_from_a_student_function_names_the_exercise(cpc_functions, cpc_speech):
    model = cpc.new_cpc(make_budget("smoke", "test"), 0, 2)
    waves = cpc.standardised(cpc_speech.train_x[:4])
    def one_step_short(model, waves):
        z, c = cpc_functions["encode_and_context"](model, waves)
        return z[:, :-1], c

    broken = {**cpc_functions, "encode_and_context": one_step_short}
    with pytest.raises(ValueError, match=r"encode_and_context's z .*exercise 1"):
        cpc.cpc_loss(model, waves, torch.Generator().manual_seed(0), negatives=3, mode="mixed", **broken)
    broken = {**cpc_functions, "step_scores": lambda p, c, cand: cpc_functions["step_scores"](p, c, cand)[:, :-1]}
    with pytest.raises(ValueError, match=r"step_scores\(W_1, \.\.\.\) must be .*exercise 2"):
        cpc.cpc_loss(model, waves, torch.Generator().manual_seed(0), negatives=3, mode="mixed", **broken)


def test_future_scores_score_one_context_against_every_step_and_only_its_past_matters(cpc_functions, cpc_speech):
    torch.manual_seed(0)
    model = cpc.new_cpc(make_budget("smoke", "test"), 0, 4)
    wave = cpc_speech.test_x[0]
    steps = wave.shape[0] // cpc.HOP
    kwargs = {k: cpc_functions[k] for k in ("encode_and_context", "step_scores")}
    out = cpc.future_scores(model, wave, steps - 2, "cpu", **kwargs)
    assert out["scores"].shape == out["probabilities"].shape == (4, steps)
    assert torch.allclose(out["probabilities"].sum(dim=1), torch.ones(4))
    assert out["targets"].tolist() == [steps - 1, -1, -1, -1]                   # the future past the end is -1
    # By hand: z_j^T W_k c_t, with the same standardisation as training.
    with torch.no_grad():
        z = model.encoder(cpc.standardised(wave[None])[:, None]).transpose(1, 2)[0]
        c = model.autoregressor(z[None])[0][0]
        by_hand = torch.stack([z @ predictor(c[5]) for predictor in model.predictors])
    assert torch.allclose(cpc.future_scores(model, wave, 5, "cpu", **kwargs)["scores"], by_hand, atol=1e-5)
    with pytest.raises(ValueError, match=r"position must be a step of the sequence, 0\.\.\d+, got"):
        cpc.future_scores(model, wave, steps, "cpu", **kwargs)
