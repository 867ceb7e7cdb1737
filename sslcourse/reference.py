"""Reference runs: what the course's own benchmarks measured, shipped with the package for 08_summary.

``08_summary`` draws these rows as "ghost" rows and curves next to a student's own runs, so a run
that went wrong stands out. The rows live in ``reference_runs.json`` beside this module (package
data). Every row is one method, one preset, one dataset and one seed:

==================  ==========================================================================
field               meaning
==================  ==========================================================================
``method``          a key of :data:`METHODS` (``"rotation"``, ``"moco"``, ...)
``run``             the :func:`sslcourse.results.save_run` name the notebook saves it under
``notebook``        the notebook that trains it; ``family`` its family (see :data:`FAMILIES`)
``preset``          ``"cpu"`` or ``"gpu"`` (smoke numbers are noise and are never recorded)
``dataset``         the dataset's name (``"cifar10"``)
``measured``        ``false`` for a placeholder: nothing was measured yet (``note`` says why) and
                    every number below is ``null``
``device``          the machine, in words; ``minutes`` the pretraining time (``null``: unknown)
``knn``, ``linear`` percent: weighted kNN (k=200, T=0.1) and the linear probe of the frozen encoder
``label_efficiency``  ``{"0.01": %, "0.1": %, "1.0": %}`` (linear probe with that fraction of
                    the labels), or ``null``; a value may be ``null`` where it was not measured
``random_init``     ``{"knn": %, "linear": %}`` of the same notebook's random-init encoder, or ``null``
``curve``           ``{metric: [value per epoch]}`` (``"loss"``, ``"knn"``, ``"linear"``), or ``null``
``seed``, ``date``  the seed, and the day it was measured (ISO, ``YYYY-MM-DD``)
``script``          the ``bench/`` script (or notebook) that measures it; ``source`` where the
                    numbers come from: that script's command line, or "transcribed from
                    bench/RESULTS.md, <section>"
``note``            anything a reader must know (``null`` if nothing)
==================  ==========================================================================

:func:`load_reference` validates every row and fails with a message that names the row and the
field. :func:`record_reference` is what the benchmarks call (``--record-reference``): it validates a
row and replaces the row of the same method, preset, dataset and seed, atomically.
"""
from __future__ import annotations

import datetime
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from .files import atomic_write

__all__ = ["Method", "METHODS", "FAMILIES", "FRACTIONS", "REFERENCE_FILE", "ReferenceError", "ReferenceRow",
           "is_number", "method", "validate_row", "load_reference", "select", "primary", "record_reference", "make_row",
           "curve_from_history"]

REFERENCE_FILE = Path(__file__).with_name("reference_runs.json")
FORMAT = 1
FRACTIONS = (0.01, 0.1, 1.0)
PRESETS = ("cpu", "gpu")
# By objective: what the loss compares. The lecture's sections file 02-06 under "predictive methods" (4.2);
# Method.lecture_family keeps that filing, and 08_summary lets the student switch between the two.
FAMILIES = ("reconstructive", "predictive", "contrastive")


@dataclass(frozen=True)
class Method:
    """One encoder that 08_summary compares.

    ``key`` names it in the reference file; ``run`` is the saved run that holds it and ``part`` the
    key inside that run's metrics where its numbers sit (00_foundations saves two encoders' numbers
    in one run), ``None`` for the top level. ``family`` files it by objective (``"baseline"`` for the
    two yardsticks of 00); ``lecture_family`` by the lecture's sections.
    """

    key: str
    run: str
    notebook: str
    label: str
    family: str
    lecture_family: str
    part: str | None = None


METHODS: tuple[Method, ...] = (
    Method("random_init", "00_foundations", "00_foundations", "random-init encoder", "baseline", "baseline",
           "random_init"),
    Method("supervised", "00_foundations", "00_foundations", "supervised encoder", "baseline", "baseline",
           "supervised"),
    Method("denoising", "01_denoising_autoencoders", "01_denoising_autoencoders", "denoising autoencoder",
           "reconstructive", "reconstructive"),
    Method("context_encoder", "02_context_encoders", "02_context_encoders", "context encoder", "reconstructive",
           "predictive"),
    Method("split_brain", "03_view_prediction", "03_view_prediction", "split-brain autoencoder", "reconstructive",
           "predictive"),
    Method("relative_position", "04_patch_position", "04_patch_position", "relative patch position", "predictive",
           "predictive"),
    Method("jigsaw", "04_patch_position_jigsaw", "04_patch_position", "jigsaw puzzles", "predictive", "predictive"),
    Method("rotation", "05_rotation", "05_rotation", "rotation (RotNet)", "predictive", "predictive"),
    Method("cpc", "06_cpc", "06_cpc", "CPC on image patches", "contrastive", "predictive"),
    Method("moco", "07_moco", "07_moco", "MoCo", "contrastive", "contrastive"),
)
_BY_KEY = {m.key: m for m in METHODS}

_FIELDS = ("method", "run", "notebook", "family", "preset", "dataset", "measured", "device", "minutes", "knn",
           "linear", "label_efficiency", "random_init", "curve", "seed", "date", "script", "source", "note")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class ReferenceError(ValueError):
    """The reference file or a row is malformed; the message names the row and the field."""


@dataclass(frozen=True)
class ReferenceRow:
    """One validated row (see the module docstring); ``label_efficiency`` has float keys."""

    method: str
    run: str
    notebook: str
    family: str
    preset: str
    dataset: str
    measured: bool
    device: str | None
    minutes: float | None
    knn: float | None
    linear: float | None
    label_efficiency: dict | None
    random_init: dict | None
    curve: dict | None
    seed: int
    date: str | None
    script: str | None
    source: str
    note: str | None

    @property
    def label(self) -> str:
        return _BY_KEY[self.method].label


def method(key: str) -> Method:
    """The :class:`Method` of ``key``; a clear error lists the known keys."""
    if key not in _BY_KEY:
        raise ReferenceError(f"unknown method {key!r}; known: {', '.join(_BY_KEY)}")
    return _BY_KEY[key]


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): what a metric in a saved run or in the reference file may be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _percent(where: str, value: Any) -> float | None:
    if value is None:
        return None
    if not is_number(value) or not 0 <= value <= 100:
        raise ReferenceError(f"{where}: expected a percentage in [0, 100] or null, got {value!r}")
    return float(value)


def _fraction_key(where: str, key: Any) -> float:
    try:
        fraction = float(key)
    except (TypeError, ValueError):
        raise ReferenceError(f"{where}: a label fraction must be a number, got {key!r}") from None
    match = [f for f in FRACTIONS if math.isclose(f, fraction)]
    if not match:
        raise ReferenceError(f"{where}: label fractions are {FRACTIONS}, got {key!r}")
    return match[0]


def validate_row(row: Mapping[str, Any], where: str = "row") -> ReferenceRow:
    """Check one row (a dict as in the JSON file) and return it as a :class:`ReferenceRow`.

    Raises:
        ReferenceError: with ``where`` and the field in the message.
    """
    if not isinstance(row, Mapping):
        raise ReferenceError(f"{where}: expected an object, got {type(row).__name__}")
    missing = [name for name in _FIELDS if name not in row]
    unknown = [name for name in row if name not in _FIELDS]
    if missing or unknown:
        raise ReferenceError(f"{where}: " + "; ".join(
            part for part in (f"missing fields {missing}" if missing else "",
                              f"unknown fields {unknown}" if unknown else "") if part))
    m = method(row["method"]) if row["method"] in _BY_KEY else None
    if m is None:
        raise ReferenceError(f"{where}.method: unknown method {row['method']!r}; known: {', '.join(_BY_KEY)}")
    where = f"{where} ({row['method']}, {row.get('preset')}, seed {row.get('seed')})"
    for name, expected in (("run", m.run), ("notebook", m.notebook), ("family", m.family)):
        if row[name] != expected:
            raise ReferenceError(f"{where}.{name}: expected {expected!r} for method {m.key!r}, got {row[name]!r}")
    if row["preset"] not in PRESETS:
        raise ReferenceError(f"{where}.preset: expected one of {PRESETS}, got {row['preset']!r}")
    for name in ("dataset", "source"):
        if not isinstance(row[name], str) or not row[name].strip():
            raise ReferenceError(f"{where}.{name}: expected a non-empty string, got {row[name]!r}")
    for name in ("device", "script", "note", "date"):
        if row[name] is not None and not isinstance(row[name], str):
            raise ReferenceError(f"{where}.{name}: expected a string or null, got {row[name]!r}")
    if not isinstance(row["measured"], bool):
        raise ReferenceError(f"{where}.measured: expected true or false, got {row['measured']!r}")
    if not isinstance(row["seed"], int) or isinstance(row["seed"], bool):
        raise ReferenceError(f"{where}.seed: expected an integer, got {row['seed']!r}")
    if row["date"] is not None and not _DATE.match(row["date"]):
        raise ReferenceError(f"{where}.date: expected YYYY-MM-DD, got {row['date']!r}")
    minutes = row["minutes"]
    if minutes is not None and (not is_number(minutes) or minutes < 0):
        raise ReferenceError(f"{where}.minutes: expected a non-negative number or null, got {minutes!r}")
    knn, linear = _percent(f"{where}.knn", row["knn"]), _percent(f"{where}.linear", row["linear"])

    curve_le = row["label_efficiency"]
    efficiency = None
    if curve_le is not None:
        if not isinstance(curve_le, Mapping):
            raise ReferenceError(f"{where}.label_efficiency: expected an object or null, got {curve_le!r}")
        efficiency = {}
        for key, value in curve_le.items():
            fraction = _fraction_key(f"{where}.label_efficiency", key)
            efficiency[fraction] = _percent(f"{where}.label_efficiency[{key!r}]", value)
        absent = [f for f in FRACTIONS if f not in efficiency]
        if absent:
            raise ReferenceError(f"{where}.label_efficiency: expected the fractions {FRACTIONS}, missing {absent} "
                                 "(use null for a value that was not measured)")
    random_init = row["random_init"]
    if random_init is not None:
        if not isinstance(random_init, Mapping) or set(random_init) != {"knn", "linear"}:
            raise ReferenceError(f"{where}.random_init: expected {{\"knn\": %, \"linear\": %}} or null, "
                                 f"got {random_init!r}")
        random_init = {k: _percent(f"{where}.random_init.{k}", v) for k, v in random_init.items()}
    curve = row["curve"]
    if curve is not None:
        if not isinstance(curve, Mapping) or not curve:
            raise ReferenceError(f"{where}.curve: expected {{metric: [per-epoch values]}} or null, got {curve!r}")
        for metric, values in curve.items():
            if not isinstance(values, list) or not values or not all(v is None or is_number(v) for v in values):
                raise ReferenceError(f"{where}.curve[{metric!r}]: expected a non-empty list of numbers (null for a "
                                     f"missing epoch), got {values!r}")
        curve = {str(k): [None if v is None else float(v) for v in values] for k, values in curve.items()}
    if not row["measured"]:
        filled = [name for name in ("minutes", "knn", "linear", "label_efficiency", "random_init", "curve")
                  if row[name] is not None]
        if filled:
            raise ReferenceError(f"{where}: a row that was not measured holds no numbers, but {filled} are set")
        if not row["note"]:
            raise ReferenceError(f"{where}.note: a row that was not measured must say why in its note")
    elif row["device"] is None or row["date"] is None:
        raise ReferenceError(f"{where}: a measured row names its device and date")
    return ReferenceRow(method=row["method"], run=row["run"], notebook=row["notebook"], family=row["family"],
                        preset=row["preset"], dataset=row["dataset"], measured=row["measured"], device=row["device"],
                        minutes=None if minutes is None else float(minutes), knn=knn, linear=linear,
                        label_efficiency=efficiency, random_init=random_init, curve=curve, seed=row["seed"],
                        date=row["date"], script=row["script"], source=row["source"], note=row["note"])


def _read(path: Path) -> dict:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReferenceError(f"The reference file {path} is missing: reinstall sslcourse, or regenerate it with "
                             "the bench/ scripts' --record-reference.") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ReferenceError(f"The reference file {path} is not valid JSON ({error}).") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or not isinstance(document.get("rows"), list):
        raise ReferenceError(f"The reference file {path} must be an object with \"format\": {FORMAT} and a \"rows\" list.")
    return document


def _identity(row) -> tuple:
    get = (lambda name: row[name]) if isinstance(row, Mapping) else (lambda name: getattr(row, name))
    return get("method"), get("preset"), get("dataset"), get("seed")


def load_reference(path: Path | str | None = None) -> list[ReferenceRow]:
    """Every row of the reference file (default: the package's), validated, in file order.

    Raises:
        ReferenceError: the file is missing or malformed, a row is invalid, or two rows share a
            method, preset, dataset and seed.
    """
    path = Path(path) if path is not None else REFERENCE_FILE
    rows, seen = [], {}
    for index, raw in enumerate(_read(path)["rows"]):
        row = validate_row(raw, where=f"{path.name}: rows[{index}]")
        if _identity(row) in seen:
            raise ReferenceError(f"{path.name}: rows[{index}] repeats rows[{seen[_identity(row)]}] "
                                 f"(method, preset, dataset, seed = {_identity(row)})")
        seen[_identity(row)] = index
        rows.append(row)
    return rows


def select(rows: Iterable[ReferenceRow], *, method: str | None = None, preset: str | None = None,
           dataset: str | None = None, measured: bool | None = None) -> list[ReferenceRow]:
    """The rows that match every given field."""
    return [r for r in rows if (method is None or r.method == method) and (preset is None or r.preset == preset)
            and (dataset is None or r.dataset == dataset) and (measured is None or r.measured == measured)]


def primary(rows: Iterable[ReferenceRow], method: str, preset: str, dataset: str) -> ReferenceRow | None:
    """The row 08_summary shows for a method: the measured one with the lowest seed, else the placeholder."""
    found = sorted(select(rows, method=method, preset=preset, dataset=dataset), key=lambda r: (not r.measured, r.seed))
    return found[0] if found else None


def curve_from_history(history, metrics: Iterable[str] = ("loss", "knn", "linear")) -> dict | None:
    """``{metric: [value per epoch]}`` from a :class:`sslcourse.train.History` (or its saved dict form)."""
    epochs = history.get("epochs") if isinstance(history, Mapping) else getattr(history, "epochs", None)
    if not epochs:
        return None
    curve = {}
    for name in metrics:
        values = [e.get(name) for e in epochs if not e.get("partial")]
        values = [float(v) if is_number(v) else None for v in values]
        if any(v is not None for v in values):
            curve[name] = values
    return curve or None


def make_row(method_key: str, *, preset: str, dataset: str, device: str, seed: int, source: str,
             script: str | None, minutes: float | None, knn: float | None, linear: float | None,
             label_efficiency: Mapping | None = None, random_init: Mapping | None = None, history=None,
             curve: Mapping | None = None, note: str | None = None, date: str | None = None) -> dict:
    """A measured row as the JSON file holds it, with ``run``, ``notebook`` and ``family`` filled in."""
    m = method(method_key)
    if curve is None and history is not None:
        curve = curve_from_history(history)
    efficiency = None
    if label_efficiency is not None:
        by_fraction = {_fraction_key("label_efficiency", k): v for k, v in label_efficiency.items()}
        efficiency = {str(f): (None if by_fraction.get(f) is None else round(float(by_fraction[f]), 2))
                      for f in FRACTIONS}

    def pct(value):
        return None if value is None else round(float(value), 2)

    return {"method": m.key, "run": m.run, "notebook": m.notebook, "family": m.family, "preset": preset,
            "dataset": dataset, "measured": True, "device": device,
            "minutes": None if minutes is None else round(float(minutes), 2), "knn": pct(knn), "linear": pct(linear),
            "label_efficiency": efficiency,
            "random_init": None if random_init is None else {"knn": pct(random_init["knn"]),
                                                             "linear": pct(random_init["linear"])},
            "curve": None if curve is None else {k: [None if v is None else round(float(v), 4) for v in values]
                                                 for k, values in curve.items()},
            "seed": int(seed), "date": date or datetime.date.today().isoformat(), "script": script, "source": source,
            "note": note}


def record_reference(row: Mapping[str, Any], path: Path | str | None = None) -> Path:
    """Validate ``row`` and write it into the reference file, replacing the row of the same method,
    preset, dataset and seed (a measured row also replaces that method's "not measured" placeholder
    for the preset). Rows stay in :data:`METHODS` order, then preset, dataset and seed. Atomic.

    Returns the path written.
    """
    path = Path(path) if path is not None else REFERENCE_FILE
    new = validate_row(row, where="new row")
    document = _read(path) if path.exists() else {"format": FORMAT, "rows": []}
    for index, raw in enumerate(document["rows"]):
        validate_row(raw, where=f"{path.name}: rows[{index}]")
    kept = [r for r in document["rows"] if _identity(r) != _identity(new)
            and not (new.measured and not r["measured"] and (r["method"], r["preset"], r["dataset"])
                     == (new.method, new.preset, new.dataset))]
    order = {m.key: i for i, m in enumerate(METHODS)}
    rows = sorted([*kept, dict(row)], key=lambda r: (order[r["method"]], PRESETS.index(r["preset"]), r["dataset"],
                                                     r["seed"]))
    document["rows"] = rows
    text = json.dumps(document, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def _main(argv: list[str] | None = None) -> int:
    """``python -m sslcourse.reference [check [PATH] | merge PATH]``: validate and list a reference file, or
    merge the rows of another one (e.g. gathered on a lent GPU machine) into the package's."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sslcourse.reference", description=_main.__doc__)
    sub = parser.add_subparsers(dest="command")
    check = sub.add_parser("check", help="validate a reference file and list its rows")
    check.add_argument("path", nargs="?", default=str(REFERENCE_FILE))
    merge = sub.add_parser("merge", help="record every row of PATH into the package's file")
    merge.add_argument("path")
    args = parser.parse_args(argv)
    if args.command == "merge":
        rows = load_reference(args.path)
        for row in json.loads(Path(args.path).read_text(encoding="utf-8"))["rows"]:
            record_reference(row)
        print(f"merged {len(rows)} rows from {args.path} into {REFERENCE_FILE}")
        return 0
    path = getattr(args, "path", None) or str(REFERENCE_FILE)
    for row in load_reference(path):
        numbers = (f"kNN {row.knn}, linear {row.linear}, minutes {row.minutes}" if row.measured
                   else f"not measured ({row.note})")
        print(f"{row.method:<18} {row.preset:<4} {row.dataset:<8} seed {row.seed}: {numbers}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
