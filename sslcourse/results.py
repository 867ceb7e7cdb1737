"""Save each notebook's results so that 08_summary can compare every method.

A run is two files under ``results_dir()/<preset>/``:

* ``<name>.json``: the metrics (any JSON-able dict: numbers, strings, lists, nested dicts)
  plus what produced them (preset, time, versions, the device);
* ``<name>.pt``: the encoder's ``state_dict`` (optional), read back with
  ``torch.load(..., weights_only=True)``, which cannot run code hidden in a file.

Both are written atomically (a temporary file, then ``os.replace``), so an interrupted
save never leaves half a file. Runs are kept per budget preset: a ``smoke`` run never
mixes with a ``gpu`` run in the summary table.

An instructor's reference encoders (``sslcourse pretrain``) are read with
:func:`load_reference_encoder`, from a folder or a URL holding their ``manifest.json``; each file is
checked against the sha256 the manifest gives before ``torch.load(..., weights_only=True)``.

Run names start with the notebook id that saves them (``05_rotation``,
``07_moco_queue4096``); error messages use that to say which notebook to rerun.
"""
from __future__ import annotations

import datetime
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .budget import Budget, choose_budget
from .environment import data_dir, reference_source, results_dir
from .files import atomic_write, file_sha256, to_plain, torch_save_atomic

__all__ = ["Run", "save_run", "load_run", "list_runs", "device_description", "RunNotFoundError", "CorruptedRunError",
           "load_reference_encoder", "ReferenceNotFoundError"]

NOTEBOOKS = ("00_foundations", "01_denoising_autoencoders", "02_context_encoders", "03_view_prediction",
             "04_patch_position", "05_rotation", "06_cpc", "07_moco", "08_summary")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_FLOAT = re.compile(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?")


class RunNotFoundError(FileNotFoundError):
    """No run of that name was saved under the current preset."""


class CorruptedRunError(RuntimeError):
    """A run's file exists but cannot be read (or does not match its manifest's sha256)."""


class ReferenceNotFoundError(FileNotFoundError):
    """No reference encoder is configured, or the manifest has none for this method and preset."""


@dataclass
class Run:
    """A saved run: its ``metrics`` dict and the encoder's ``state_dict`` (``None`` if none was saved)."""

    name: str
    metrics: dict
    state_dict: dict | None
    preset: str
    info: dict

    def load_encoder(self, encoder: nn.Module) -> nn.Module:
        """Load the saved weights into ``encoder`` (built the same way as when saved) and return it."""
        if self.state_dict is None:
            raise ValueError(f"Run {self.name!r} was saved without an encoder.")
        encoder.load_state_dict(self.state_dict)
        return encoder


def _preset_name(budget: Budget | str | None) -> str:
    if budget is None:
        return choose_budget().name
    return budget if isinstance(budget, str) else budget.name


def _run_dir(preset: str) -> Path:
    return results_dir() / preset


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"A run name must be letters, digits and _ . + - (a file name), got {name!r}.")


def _notebook_for(name: str) -> str:
    matches = [nb for nb in NOTEBOOKS if name.startswith(nb) or name.startswith(nb[:2] + "_")]
    return matches[0] if matches else "the notebook that saved it"


def _jsonable(value: Any, where: str) -> Any:
    """Plain JSON values: tensors and NumPy numbers become numbers or lists; NaN/Inf become None."""
    value = to_plain(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "losses") and hasattr(value, "epochs"):  # a train.History
        return {"losses": _jsonable(value.losses, where), "epochs": _jsonable(value.epochs, where)}
    raise TypeError(f"save_run: metrics{where} is a {type(value).__name__}, which JSON cannot hold; "
                    "use numbers, strings, lists and dicts.")


def _numeric_keys(value: Any) -> Any:
    """Undo JSON's str keys for numbers: ``{"0.01": 71.2}`` -> ``{0.01: 71.2}``, ``{"3": ..}`` -> ``{3: ..}``."""
    if isinstance(value, list):
        return [_numeric_keys(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, v in value.items():
        if re.fullmatch(r"[-+]?\d+", key):
            key = int(key)
        elif _FLOAT.fullmatch(key):
            key = float(key)
        out[key] = _numeric_keys(v)
    return out


def device_description() -> str:
    """The device the notebook trains on, in words (08_summary's table shows it): ``"cuda: NVIDIA H100"``,
    ``"cpu: AMD EPYC 7B13, 2 cores"``."""
    import os

    from .cpu_bf16 import cpu_name
    from .session import choose_device
    device = choose_device()
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    if device.type != "cpu":
        return device.type
    return f"cpu: {cpu_name()}, {os.cpu_count()} cores"


def save_run(name: str, metrics: Mapping[str, Any], encoder: nn.Module | None = None,
             budget: Budget | str | None = None) -> Path:
    """Save ``metrics`` (and the ``encoder``'s weights) as run ``name`` of the active preset.

    Saving again under the same name replaces the run. Numeric dict keys (e.g. the
    fractions of :func:`sslcourse.evaluate.label_efficiency`) come back as numbers.
    Returns the path of the JSON file.
    """
    _check_name(name)
    preset = _preset_name(budget)
    folder = _run_dir(preset)
    record = {
        "name": name,
        "preset": preset,
        "saved_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "device": device_description(),
        "encoder": type(encoder).__name__ if encoder is not None else None,
        "metrics": _jsonable(dict(metrics), ""),
    }
    weights = folder / f"{name}.pt"
    if encoder is not None:
        state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
        torch_save_atomic(state, weights)
    elif weights.exists():
        weights.unlink()  # a stale encoder from an earlier save under this name would mislead
    path = folder / f"{name}.json"
    atomic_write(path, lambda p: p.write_text(json.dumps(record, indent=1, allow_nan=False)))
    return path


def _load_state_dict(weights: Path, problem: str, advice: str) -> dict:
    """``torch.load(weights, weights_only=True)``, which runs no code from the file; anything but a state_dict,
    or a file that does not load, raises :class:`CorruptedRunError` with ``problem``, the cause and ``advice``."""
    try:
        state_dict = torch.load(weights, map_location="cpu", weights_only=True)
        if not isinstance(state_dict, dict):
            raise TypeError(f"expected a state_dict, found a {type(state_dict).__name__}")
    except Exception as error:
        cause = str(error).splitlines()[0] if str(error) else ""
        raise CorruptedRunError(f"{problem} ({type(error).__name__}: {cause}). {advice}".rstrip()) from error
    return state_dict


def list_runs(budget: Budget | str | None = None) -> list[str]:
    """Names of the runs saved under the active preset (or ``budget``), sorted."""
    folder = _run_dir(_preset_name(budget))
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def load_run(name: str, budget: Budget | str | None = None) -> Run:
    """Load run ``name`` of the active preset (or of ``budget``).

    Raises:
        RunNotFoundError: no such run; the message lists the runs that exist.
        CorruptedRunError: a file is unreadable; the message says which notebook to rerun.
    """
    _check_name(name)
    preset = _preset_name(budget)
    folder = _run_dir(preset)
    path = folder / f"{name}.json"
    notebook = _notebook_for(name)
    if not path.exists():
        existing = list_runs(preset)
        listing = ", ".join(existing) if existing else "none yet"
        raise RunNotFoundError(f"No saved run {name!r} for preset '{preset}' in {folder}. "
                               f"Runs saved there: {listing}. Run {notebook} to the end to create it.")
    redo = f"Rerun {notebook} to the end to save it again."
    try:
        record = json.loads(path.read_text())
        metrics = record["metrics"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise CorruptedRunError(f"The results file {path} is corrupted ({type(error).__name__}: {error}). "
                                f"{redo}") from error
    state_dict = None
    weights = folder / f"{name}.pt"
    if record.get("encoder") is not None:
        if not weights.exists():
            raise CorruptedRunError(f"Run {name!r} says it saved an encoder, but {weights} is missing. {redo}")
        state_dict = _load_state_dict(weights, f"The encoder file {weights} is corrupted", redo)
    info = {k: v for k, v in record.items() if k != "metrics"}
    return Run(name=name, metrics=_numeric_keys(metrics), state_dict=state_dict, preset=preset, info=info)


# --------------------------------------------------------------------------- reference encoders

def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://", "file://"))


def _fetch(source: str, name: str, timeout_s: float = 60) -> bytes:
    """The bytes of ``name`` in a folder or under a URL."""
    if _is_url(source):
        import urllib.request

        url = source.rstrip("/") + "/" + name
        with urllib.request.urlopen(url, timeout=timeout_s) as response:   # noqa: S310 (the instructor's URL)
            return response.read()
    return (Path(source).expanduser() / name).read_bytes()


def load_reference_encoder(method: str, budget: Budget | str | None = None, source: str | Path | None = None) -> Run:
    """The instructor's reference encoder of ``method`` (``sslcourse pretrain``), as a :class:`Run`.

    ``source`` (default: ``SSLCOURSE_REFERENCE``) is a folder or an ``http(s)://`` URL holding
    ``manifest.json``. The entry ``"<method>/<preset>"`` (preset: ``budget``, default ``gpu``, the
    instructor's usual) names the weights file and its sha256. A file from a URL is downloaded once
    into ``<data>/reference/``. Before loading, the file's sha256 must match the manifest's, and it is
    read with ``torch.load(..., weights_only=True)``. ``run.metrics`` holds the instructor's kNN,
    linear probe and label efficiency; ``run.load_encoder(backbone)`` loads the weights.

    Raises:
        ReferenceNotFoundError: no source configured, no manifest there, or no such entry.
        CorruptedRunError: the file's sha256 differs from the manifest's, or it cannot be loaded.
    """
    source = str(source) if source is not None else reference_source()
    if not source:
        raise ReferenceNotFoundError(
            "No reference encoders are configured: set SSLCOURSE_REFERENCE to the folder or URL your instructor "
            "gave (it holds manifest.json), or pass source=. Your own run does not need them.")
    preset = budget if isinstance(budget, str) else getattr(budget, "name", None) or "gpu"
    try:
        manifest = json.loads(_fetch(source, "manifest.json"))
        entries = manifest["encoders"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ReferenceNotFoundError(f"Cannot read manifest.json from {source} ({type(error).__name__}: {error}); "
                                     "check SSLCOURSE_REFERENCE.") from error
    key = f"{method}/{preset}"
    if key not in entries:
        raise ReferenceNotFoundError(f"{source}/manifest.json has no reference encoder {key!r}; it holds: "
                                     f"{', '.join(sorted(entries)) or 'none'}.")
    entry = entries[key]
    expected = str(entry.get("sha256", "")).lower()
    if _is_url(source):
        weights = data_dir() / "reference" / f"{expected[:16]}-{Path(entry['file']).name}"
        if not weights.exists() or file_sha256(weights) != expected:
            payload = _fetch(source, entry["file"])
            atomic_write(weights, lambda p: p.write_bytes(payload))
    else:
        weights = Path(source).expanduser() / entry["file"]
    if not weights.exists():
        raise ReferenceNotFoundError(f"The manifest in {source} names {entry['file']}, but there is no such file.")
    got = file_sha256(weights)
    if got != expected:
        raise CorruptedRunError(
            f"The reference encoder {weights} does not match its manifest: expected sha256 {expected}, got {got}. "
            "The file was damaged or replaced; it is not loaded. Delete it and load again, or ask your instructor.")
    state_dict = _load_state_dict(weights, f"The reference encoder {weights} cannot be loaded", "")
    info = {k: v for k, v in entry.items() if k != "metrics"} | {"source": source}
    return Run(name=f"reference {method}", metrics=_numeric_keys(dict(entry.get("metrics", {}))),
               state_dict=state_dict, preset=preset, info=info)
