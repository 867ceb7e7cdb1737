"""The method notebooks' opt-in cell: the instructor's reference encoder, probed on the student's data.

A CPU laptop cannot pretrain MoCo to 80% kNN; an instructor with a GPU node can, once, with
``sslcourse pretrain`` (:mod:`sslcourse.pretrain`). When ``SSLCOURSE_REFERENCE`` names the folder or
URL the instructor shares, :func:`probe` loads that encoder (sha256-checked, ``weights_only``;
:func:`sslcourse.results.load_reference_encoder`) and runs the course's kNN and linear probe on the
student's own test images, so the student sees what the method's representation does at scale next
to their own small run. Without ``SSLCOURSE_REFERENCE``, and always under grading, it prints one line
and returns ``None``: the notebook never depends on it.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from . import environment, evaluate, models, results
from .budget import Budget, make_budget
from .recipes.patch_position import upsampled_features

__all__ = ["probe", "PROBE_INPUTS", "MODELS", "PROBE_FUNCTIONS", "probe_encoder"]


# How a method's encoder sees whole images when it is probed, where that is not the plain 32-px image: the
# manifest entry's "features" names one of these (04's encoder learned on patches of images resized to 64 px).
PROBE_INPUTS: dict[str, Callable] = {"upsampled to 64 px": upsampled_features}


def _split_brain(budget: Budget, image_size: int) -> nn.Module:
    from .recipes import split_brain

    return split_brain.new_split_brain(budget, image_size, seed=0)


# What a manifest entry's weights belong to ("model"): a new network of that shape, for load_state_dict.
MODELS: dict[str, Callable[[Budget, int], nn.Module]] = {
    "backbone": lambda budget, image_size: models.make_backbone(budget),
    "split_brain": _split_brain,       # 03: two half-width backbones (L and ab) and their decoders
}
# The notebook's graded functions a model's probe needs, where the weights alone do not make an image encoder.
PROBE_FUNCTIONS: dict[str, tuple[str, ...]] = {"split_brain": ("rgb_to_lab", "split_views", "split_brain_features")}


def probe_encoder(model_kind: str, network: nn.Module, data, functions: dict | None = None) -> nn.Module:
    """The image encoder the probes read: ``network`` itself, or for 03 both halves through the Lab views
    (:class:`sslcourse.recipes.split_brain.ViewFeatures`, with the notebook's own conversion functions)."""
    needed = PROBE_FUNCTIONS.get(model_kind, ())
    if not needed:
        return network
    missing = [name for name in needed if not callable((functions or {}).get(name))]
    if missing:
        raise ValueError(f"probing a {model_kind} encoder needs the notebook's {', '.join(needed)}; "
                         f"pass functions=dict({', '.join(f'{n}={n}' for n in needed)}) (missing: {', '.join(missing)}).")
    from .recipes import split_brain

    return split_brain.ViewFeatures(network, split_brain.PARTS[2], mean=data.mean, std=data.std,
                                    **{name: functions[name] for name in needed})


def probe(method: str, session, *, preset: str = "gpu", source: str | None = None,
          functions: dict | None = None) -> dict | None:
    """Probe the instructor's ``method`` encoder of ``preset`` on ``session.data``; ``None`` if there is none.

    ``functions``: the notebook's functions the probe needs to read the weights as an image encoder (03:
    ``rgb_to_lab``, ``split_views`` and ``split_brain_features``, the same ones that probe the student's run).

    Returns ``{"knn", "linear"}`` (percent, on the student's data) and ``"instructor"``: the metrics the
    instructor's run recorded on its own data (kNN, linear, label efficiency, processes, device).
    """
    if environment.read().grading:
        print("reference encoder: skipped while grading.")
        return None
    try:
        run = results.load_reference_encoder(method, preset, source=source)
        kind = run.info.get("model") or "backbone"
        if kind not in MODELS:
            raise RuntimeError(f"its manifest names a model {kind!r} this sslcourse does not know "
                               f"({', '.join(MODELS)}); update sslcourse.")
        network = run.load_encoder(MODELS[kind](make_budget(run.preset), int(run.info.get("image_size") or 32)))
    except results.ReferenceNotFoundError as error:
        print(f"reference encoder: not loaded. {error}")
        return None
    except (results.CorruptedRunError, RuntimeError) as error:
        print(f"reference encoder: refused. {error}")
        return None
    data = session.data
    features = PROBE_INPUTS.get(run.info.get("features") or "")
    encoder = probe_encoder(kind, network, data, functions)
    found = evaluate.evaluate_encoder(encoder, data, session.device, features=features,
                                      linear_iterations=session.budget.pick(smoke=10, cpu=100, gpu=100))
    theirs = run.metrics
    print(f"reference encoder '{method}/{run.preset}' ({run.info.get('backbone')}, trained on "
          f"{theirs.get('dataset', '?')} by {theirs.get('processes', '?')} process(es) on {theirs.get('device', '?')}):")
    print(f"  on the instructor's data: kNN {theirs.get('knn', float('nan')):.1f}%, "
          f"linear {theirs.get('linear', float('nan')):.1f}%")
    print(f"  on your data ({data.name}, {len(data.train_x)} / {len(data.test_x)} images): "
          f"kNN {found['knn']:.1f}%, linear {found['linear']:.1f}%")
    return {**found, "instructor": theirs}
