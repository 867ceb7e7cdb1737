"""``sslcourse pretrain METHOD``: the course's reference recipe, on one process or many (``torchrun``).

An instructor with a GPU node pretrains a method's reference encoder once::

    torchrun --nproc_per_node=8 -m sslcourse pretrain moco --preset gpu --out reference/

and students load it (:func:`sslcourse.results.load_reference_encoder`) to probe the real
representation next to their own small run. The same command without ``torchrun`` runs on one
CPU or one GPU. Each process trains on its shards of the data (:mod:`sslcourse.distributed`); a
checkpoint is written after every epoch, and a rerun of the same command resumes from it, on the
same or another number of processes (keep ``--shards``).

The recipe's graded functions are the instructor's: they are read from the solution notebook
(``solutions/<assignment>/<assignment>.ipynb``; :func:`functions_from_notebook`), so the package
itself holds no solution. What the run leaves in ``--out``:

* ``<method>-<preset>.pt``: the backbone's ``state_dict`` (what students load, ``weights_only``; for
  ``split_brain`` the whole :class:`~sslcourse.recipes.split_brain.SplitBrain`: both halves and their decoders);
* ``<method>-<preset>.json``: the metrics (kNN, linear probe, label efficiency, the per-epoch
  curve, minutes, images per second, processes and device);
* ``manifest.json``: every encoder of the folder with its sha256, which the loader checks;
* ``<method>-<preset>.checkpoint.pt``: the training state, for resuming.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import distributed, evaluate
from .budget import make_budget
from .data import load_dataset
from .files import atomic_write, file_sha256, to_plain, torch_save_atomic
from .reference_encoder import PROBE_INPUTS, probe_encoder
from .session import Session, seed_everything

__all__ = ["Method", "METHODS", "functions_from_notebook", "pretrain", "MANIFEST", "add_to_manifest"]

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "sslcourse.reference/1"


@dataclass(frozen=True)
class Method:
    """A method ``sslcourse pretrain`` can run.

    Attributes:
        assignment: its notebook, whose solution cells hold ``functions``.
        functions: the graded functions its recipe needs.
        train: ``train(session, functions, replicas, shards, epochs, checkpoint) -> (backbone, history)``.
        images: ``images(session) -> ImageDataset``: what the recipe trains and is probed on.
        global_batch: ``global_batch(budget) -> int``: images per step, for images per second.
        probe_input: a key of :data:`sslcourse.reference_encoder.PROBE_INPUTS`, where the probe does not feed
            the saved network the plain 32-px image.
        model: a key of :data:`sslcourse.reference_encoder.MODELS`: what the saved weights belong to, where that
            is not the course backbone (03's two half-networks).
    """

    assignment: str
    functions: tuple[str, ...]
    train: Callable
    images: Callable
    global_batch: Callable
    probe_input: str | None = None
    model: str = "backbone"


def _moco_train(session, functions, replicas, shards, epochs, checkpoint):
    from .recipes import moco

    model, history = moco.run(session, moco_step=functions["moco_step"], infonce=functions["moco_infonce"],
                              update=functions["momentum_update"], enqueue=functions["enqueue_dequeue"],
                              data=moco.experiment_data(session), epochs=epochs, live_plot=False,
                              progress=replicas.is_main, desc="MoCo pretrain", replicas=replicas, shards=shards,
                              checkpoint=checkpoint)
    return model.backbone, history


def _moco_images(session):
    from .recipes import moco

    return moco.experiment_data(session)


def _moco_batch(budget):
    from .recipes import moco

    return moco.moco_recipe(budget).batch_size


def _rotation_train(session, functions, replicas, shards, epochs, checkpoint):
    from .recipes import rotation

    model, history = rotation.run(session, rotation.ROTATION_SETS["4 rotations"],
                                  rotate_batch=functions["rotate_batch"], rotnet_loss=functions["rotnet_loss"],
                                  epochs=epochs, live_plot=False, progress=replicas.is_main,
                                  desc="RotNet pretrain", replicas=replicas, shards=shards, checkpoint=checkpoint)
    return model.encoder, history


def _rotation_batch(budget):
    return budget.batch_size // 4 * 4        # a step sees batch_size / 4 images, each in 4 rotations


_NOISES = {"gaussian": "gaussian_noise", "masking": "masking_noise", "salt-and-pepper": "salt_and_pepper"}
_DAE_LOSSES = {"mse": "emphasized_mse", "cross-entropy": "emphasized_cross_entropy"}


def _denoising_train(session, functions, replicas, shards, epochs, checkpoint):
    from .recipes import denoising

    noise, level = denoising.RECIPE["main"]
    model, history = denoising.run(session, functions[_NOISES[noise]], level,
                                   loss=functions[_DAE_LOSSES[denoising.RECIPE["loss"]]],
                                   dae_loss=functions["dae_loss"], epochs=epochs, live_plot=False,
                                   progress=replicas.is_main, desc="DAE pretrain", replicas=replicas, shards=shards,
                                   checkpoint=checkpoint)
    return model.encoder, history


_MASKS = {"central": "central_mask", "random blocks": "random_block_mask", "random regions": "random_region_mask"}
_CONTEXT_LOSSES = ("masked_input", "reconstruction_loss", "discriminator_loss", "generator_loss",
                   "context_encoder_loss")


def _context_encoder_train(session, functions, replicas, shards, epochs, checkpoint):
    from .recipes import context_encoder

    model, history = context_encoder.run(session, functions[_MASKS[context_encoder.RECIPE["mask"]]],
                                         **{name: functions[name] for name in _CONTEXT_LOSSES}, epochs=epochs,
                                         live_plot=False, progress=replicas.is_main, desc="context encoder pretrain",
                                         replicas=replicas, shards=shards, checkpoint=checkpoint)
    return model.encoder, history


def _relative_position_train(session, functions, replicas, shards, epochs, checkpoint):
    from .recipes import patch_position

    model, history = patch_position.run_relative_position(
        session, patch_position.SETTINGS["gap + jitter, full colour"], grid_patches=functions["grid_patches"],
        sample_pairs=functions["sample_pairs"], pair_logits=functions["pair_logits"], epochs=epochs, live_plot=False,
        progress=replicas.is_main, desc="relative position pretrain", replicas=replicas, shards=shards,
        checkpoint=checkpoint)
    return model.encoder, history


def _split_brain_train(session, functions, replicas, shards, epochs, checkpoint):
    from .recipes import split_brain

    model, history = split_brain.run(session, **{name: functions[name] for name in _SPLIT_BRAIN_TRAINING},
                                     epochs=epochs, live_plot=False, progress=replicas.is_main,
                                     desc="split-brain pretrain", replicas=replicas, shards=shards,
                                     checkpoint=checkpoint)
    return model, history      # both halves and their decoders: the probe reads the halves through the Lab views


_SPLIT_BRAIN_TRAINING = ("rgb_to_lab", "split_views", "regression_loss", "split_brain_loss")


def _cpc_train(session, functions, replicas, shards, epochs, checkpoint):
    from .recipes import cpc

    model, history = cpc.run_images(session, **functions, epochs=epochs, live_plot=False, progress=replicas.is_main,
                                    desc="CPC on images pretrain", replicas=replicas, shards=shards,
                                    checkpoint=checkpoint)
    return model.encoder, history


def _cpc_batch(budget):
    from .recipes import cpc

    return cpc.image_batch_size(budget)


def _whole_set(session):
    return session.data


METHODS: dict[str, Method] = {
    "denoising": Method("01_denoising_autoencoders", (*_NOISES.values(), *_DAE_LOSSES.values(), "dae_loss"),
                        _denoising_train, _whole_set, lambda budget: budget.batch_size),
    "context_encoder": Method("02_context_encoders", (*_MASKS.values(), *_CONTEXT_LOSSES), _context_encoder_train,
                              _whole_set, lambda budget: budget.batch_size),
    "moco": Method("07_moco", ("moco_step", "moco_infonce", "momentum_update", "enqueue_dequeue"),
                   _moco_train, _moco_images, _moco_batch),
    "split_brain": Method("03_view_prediction", (*_SPLIT_BRAIN_TRAINING, "split_brain_features"),
                          _split_brain_train, _whole_set, lambda budget: budget.batch_size, model="split_brain"),
    "cpc": Method("06_cpc", ("step_scores", "info_nce", "sample_negatives"), _cpc_train, _whole_set, _cpc_batch,
                  probe_input="upsampled to 64 px"),
    "relative_position": Method("04_patch_position", ("grid_patches", "sample_pairs", "pair_logits"),
                                _relative_position_train, _whole_set, lambda budget: budget.batch_size,
                                probe_input="upsampled to 64 px"),
    "rotation": Method("05_rotation", ("rotate_batch", "rotnet_loss"), _rotation_train, _whole_set,
                       _rotation_batch),
}


# --------------------------------------------------------------------------- the solution functions

def functions_from_notebook(path: Path | str, names: tuple[str, ...] | list[str]) -> dict[str, Callable]:
    """``{name: function}`` as the solution cells of the notebook at ``path`` define them.

    Runs the notebook's imports cell and its solution cells (``nbgrader.solution: true``, code
    only) into a fresh namespace; no setup cell runs, so nothing is loaded or printed. The ipynb is
    read as plain JSON (no nbformat on a bare GPU node); tracebacks name ``<notebook>#<grade_id>``.

    Raises:
        ValueError: no file there, a student release (no solutions), or a function missing.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"expected the instructor's solution notebook at {path}, found no file "
                         "(run from the course repository, or pass --notebook PATH).")
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    namespace: dict = {"__name__": f"{path.stem}_solutions"}
    ran_solution = False
    for cell in cells:
        nbgrader = cell.get("metadata", {}).get("nbgrader", {})
        grade_id = nbgrader.get("grade_id", "?")
        if cell["cell_type"] != "code" or not (grade_id == "imports" or nbgrader.get("solution")):
            continue
        source = "".join(cell["source"])
        if nbgrader.get("solution"):
            if "### BEGIN SOLUTION" not in source:
                raise ValueError(f"{path} holds no solutions (a student release?); point it at the solution "
                                 f"notebook, solutions/{path.stem}/{path.name}.")
            ran_solution = True
        exec(compile(source, f"{path}#{grade_id}", "exec"), namespace)
    if not ran_solution:
        raise ValueError(f"{path} has no solution cells.")
    missing = [name for name in names if not callable(namespace.get(name))]
    if missing:
        raise ValueError(f"the solution cells of {path} define no function {', '.join(missing)}.")
    return {name: namespace[name] for name in names}


# --------------------------------------------------------------------------- the manifest

def add_to_manifest(folder: Path, key: str, entry: dict) -> Path:
    """Add or replace ``key`` (``"<method>/<preset>"``) in ``folder/manifest.json`` (written atomically)."""
    path = folder / MANIFEST
    manifest = {"format": MANIFEST_FORMAT, "encoders": {}}
    if path.exists():
        manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["encoders"][key] = entry
    atomic_write(path, lambda p: p.write_text(json.dumps(manifest, indent=1, allow_nan=False)))
    return path


# --------------------------------------------------------------------------- the command

def pretrain(method: str, *, preset: str = "gpu", out: Path | str = "reference", notebook: Path | str | None = None,
             seed: int = 0, epochs: int | None = None, shards: int | None = None, dataset: str = "auto",
             device: str | None = None) -> dict | None:
    """Run ``method``'s reference recipe on this process and its ``torchrun`` peers; return the metrics (rank 0).

    Args:
        method: a key of :data:`METHODS`.
        preset: the budget preset whose recipe runs (``gpu`` for the instructor's reference encoders).
        out: the folder of the encoder, its metrics, the manifest and the resume checkpoint.
        notebook: the solution notebook (default ``solutions/<assignment>/<assignment>.ipynb`` here).
        epochs: default the recipe's.
        shards: how the data is cut (default: the number of processes); pass the same number to
            resume on another number of processes, or to compare one process with several.
        dataset: as :func:`sslcourse.data.load_dataset` (``auto``: CIFAR-10 outside the smoke preset).
    """
    if method not in METHODS:
        raise ValueError(f"sslcourse pretrain: expected a method among {', '.join(METHODS)}, got {method!r}.")
    spec = METHODS[method]
    replicas = distributed.start(device)
    try:
        notebook = Path(notebook) if notebook else Path("solutions") / spec.assignment / f"{spec.assignment}.ipynb"
        functions = functions_from_notebook(notebook, spec.functions)
        budget = make_budget(preset, "sslcourse pretrain")
        data = load_dataset(dataset, budget=budget, verbose=replicas.is_main)
        session = Session(budget, replicas.device, seed, data)
        seed_everything(seed)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        name = f"{method}-{preset}"
        if replicas.is_main:
            print(f"sslcourse pretrain {method}: preset {preset}, {replicas.world} process(es) on "
                  f"{replicas.device.type} ({replicas.backend or 'no process group'}), shards "
                  f"{shards or replicas.world}, seed {seed}, {data!r}")
        started = time.perf_counter()
        backbone, history = spec.train(session, functions, replicas, shards, epochs,
                                       out / f"{name}.checkpoint.pt")
        if history.interrupted:
            return None
        metrics = None
        if replicas.is_main:
            metrics = _evaluate_and_save(spec, method, name, backbone, functions, history, session, replicas,
                                         shards, out, time.perf_counter() - started)
        distributed.barrier(replicas)
        return metrics
    finally:
        distributed.stop(replicas)


def _evaluate_and_save(spec: Method, method: str, name: str, backbone, functions, history, session, replicas,
                       shards, out: Path, seconds: float) -> dict:
    """Rank 0: kNN, linear probe and label efficiency of the saved network's features (as the students' probe
    reads them), then the weights, their metrics and the manifest."""
    images = spec.images(session)
    device, budget = session.device, session.budget
    features = PROBE_INPUTS[spec.probe_input] if spec.probe_input else None
    encoder = probe_encoder(spec.model, backbone, images, functions)
    train_f, test_f = (evaluate.extract_features(encoder, x, mean=images.mean, std=images.std, device=device,
                                                 features=features)
                       for x in (images.train_x, images.test_x))
    train_y, test_y = images.train_y.to(train_f.device), images.test_y.to(train_f.device)
    knn = evaluate.knn_accuracy(train_f, train_y, test_f, test_y, k=200, temperature=0.1,
                                num_classes=images.num_classes)
    curve = evaluate.label_efficiency(train_f, train_y, test_f, test_y,
                                      iterations=budget.pick(smoke=10, cpu=100, gpu=100))
    steps = len(history.losses)
    batch = spec.global_batch(budget)
    trained = history.training_seconds
    per_second = steps * batch / trained if trained > 0 else 0.0
    metrics = {
        "method": method, "preset": budget.name, "dataset": session.data.name, "seed": session.seed,
        "processes": replicas.world, "shards": shards or replicas.world, "device": _device_name(replicas.device),
        "knn": knn, "linear": curve[1.0], "label_efficiency": to_plain(curve),
        "curve": [{k: v for k, v in e.items() if k in ("epoch", "loss", "knn")} for e in history.epochs],
        "epochs": len(history.epochs), "steps": steps, "global_batch": batch,
        "training_minutes": trained / 60, "minutes": seconds / 60,
        "images_per_second": per_second, "images_per_second_per_process": per_second / replicas.world,
        "torch": torch.__version__,
    }
    weights = out / f"{name}.pt"
    torch_save_atomic({k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}, weights)
    atomic_write(out / f"{name}.json", lambda p: p.write_text(json.dumps(metrics, indent=1, allow_nan=False)))
    add_to_manifest(out, f"{method}/{budget.name}", {
        "file": weights.name, "sha256": file_sha256(weights), "backbone": budget.backbone, "width": budget.width,
        "model": spec.model, "image_size": images.image_size, "features": spec.probe_input,
        "metrics": {k: metrics[k] for k in ("knn", "linear", "label_efficiency", "dataset", "processes", "device",
                                            "epochs", "minutes")}})
    print(f"sslcourse pretrain {method}: kNN {knn:.1f}%, linear {curve[1.0]:.1f}%, {per_second:.0f} images/s "
          f"({per_second / replicas.world:.0f} per process); wrote {weights} and {out / MANIFEST}")
    return metrics


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from .cpu_bf16 import cpu_name

    return f"CPU: {cpu_name()}"
