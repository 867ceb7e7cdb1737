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

from . import environment, evaluate, models, results
from .budget import make_budget

__all__ = ["probe", "PROBE_INPUTS"]


def _upsampled(encoder, x):
    from .recipes.patch_position import upsampled

    return encoder(upsampled(x))


# How a method's encoder sees whole images when it is probed, where that is not the plain 32-px image: the
# manifest entry's "features" names one of these (04's encoder learned on patches of images resized to 64 px).
PROBE_INPUTS: dict[str, Callable] = {"upsampled to 64 px": _upsampled}


def probe(method: str, session, *, preset: str = "gpu", source: str | None = None) -> dict | None:
    """Probe the instructor's ``method`` encoder of ``preset`` on ``session.data``; ``None`` if there is none.

    Returns ``{"knn", "linear"}`` (percent, on the student's data) and ``"instructor"``: the metrics the
    instructor's run recorded on its own data (kNN, linear, label efficiency, processes, device).
    """
    if environment.read().grading:
        print("reference encoder: skipped while grading.")
        return None
    try:
        run = results.load_reference_encoder(method, preset, source=source)
        backbone = run.load_encoder(models.make_backbone(make_budget(run.preset)))
    except results.ReferenceNotFoundError as error:
        print(f"reference encoder: not loaded. {error}")
        return None
    except (results.CorruptedRunError, RuntimeError) as error:
        print(f"reference encoder: refused. {error}")
        return None
    data = session.data
    features = PROBE_INPUTS.get(run.info.get("features") or "")
    found = evaluate.evaluate_encoder(backbone, data, session.device, features=features,
                                      linear_iterations=session.budget.pick(smoke=10, cpu=100, gpu=100))
    theirs = run.metrics
    print(f"reference encoder '{method}/{run.preset}' ({run.info.get('backbone')}, trained on "
          f"{theirs.get('dataset', '?')} by {theirs.get('processes', '?')} process(es) on {theirs.get('device', '?')}):")
    print(f"  on the instructor's data: kNN {theirs.get('knn', float('nan')):.1f}%, "
          f"linear {theirs.get('linear', float('nan')):.1f}%")
    print(f"  on your data ({data.name}, {len(data.train_x)} / {len(data.test_x)} images): "
          f"kNN {found['knn']:.1f}%, linear {found['linear']:.1f}%")
    return {**found, "instructor": theirs}
