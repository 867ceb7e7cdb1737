"""Environment policy: everything the course reads from environment variables, in one place.

This is the only module of ``sslcourse`` that reads ``os.environ``. Every other module
asks it, so the rules below are the whole story:

===========================  ================================================================
variable                     effect
===========================  ================================================================
``NBGRADER_EXECUTION``       set by nbgrader (``autograde``, ``validate``): the smoke preset,
                             no live plots, no downloads
``SSLCOURSE_FAST=1``         the smoke preset and no live plots (CI, quick checks)
``SSLCOURSE_BUDGET``         force a preset: ``smoke``, ``cpu`` or ``gpu`` (grading still wins)
``SSLCOURSE_DEVICE``         force a device, e.g. ``cpu`` or ``cuda:1``
``SSLCOURSE_DATASET``        what ``dataset="auto"`` means: ``embedded``, ``cifar10``, ...
``SSLCOURSE_HOME``           the folder holding ``data/`` and ``results/``
``SSLCOURSE_DATA``           the dataset cache (default ``<home>/data``)
``SSLCOURSE_RESULTS``        saved runs (default ``<home>/results``); on Colab
                             :func:`use_google_drive` sets it to a folder in Drive
``SSLCOURSE_CPU_BF16``       ``1``/``0``: force bf16 autocast on the CPU on or off (default: measured,
                             :mod:`sslcourse.cpu_bf16`)
``SSLCOURSE_REFERENCE``       where the instructor's reference checkpoints are: a folder or an
                             ``http(s)://`` URL holding ``manifest.json`` (:mod:`sslcourse.reference_encoders`)
``RANK``, ``WORLD_SIZE``,    set by ``torchrun`` for each process: ``sslcourse pretrain`` joins
``LOCAL_RANK``               a process group (:mod:`sslcourse.distributed`)
``LD_PRELOAD``,              a malloc the user chose (jemalloc, tcmalloc, mimalloc, glibc
``MALLOC_*_``,               tunables): :mod:`sslcourse.allocator` then leaves malloc alone
``GLIBC_TUNABLES``
===========================  ================================================================

:func:`read` takes a snapshot as an :class:`Environment`; passing a plain dict instead of the
process environment is how the tests exercise each rule.

On Google Colab (:func:`on_colab`) a runtime's disk is deleted when Colab recycles it, and with it
every saved run. :func:`use_google_drive` is the student's opt-in: it mounts their Google Drive
and sets ``SSLCOURSE_RESULTS`` to a folder there, so saved runs (metrics and encoder weights)
outlive the runtime and ``08_summary`` finds them in a later session.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

__all__ = ["Environment", "read", "course_home", "data_dir", "results_dir", "on_colab", "use_google_drive",
           "colab_results_note", "kernel_environment", "tool_environment", "torchrun_process", "reference_source"]

_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


@dataclass(frozen=True)
class Environment:
    """What the environment asks of the course (a snapshot; see the module docstring).

    Attributes:
        grading: nbgrader's ``NBGRADER_EXECUTION`` value (``"autograde"``, ``"validate"``) or ``None``.
        fast: ``SSLCOURSE_FAST`` is set to something other than ``""`` or ``"0"``.
        budget: the preset forced by ``SSLCOURSE_BUDGET`` (lower case), or ``None``.
        device: the device forced by ``SSLCOURSE_DEVICE``, or ``None``.
        dataset: what ``"auto"`` means when ``SSLCOURSE_DATASET`` is set, else ``None``.
        home, data_dir, results_dir: absolute paths.
        custom_allocator: the user preloaded or configured malloc.
        cpu_bf16: ``SSLCOURSE_CPU_BF16`` as a bool, or ``None`` (let :mod:`sslcourse.cpu_bf16` measure).
    """

    grading: str | None
    fast: bool
    budget: str | None
    device: str | None
    dataset: str | None
    home: Path
    data_dir: Path
    results_dir: Path
    custom_allocator: bool
    cpu_bf16: bool | None = None

    @property
    def live_plots_allowed(self) -> bool:
        """Live plots are for people: never under nbgrader or ``SSLCOURSE_FAST``."""
        return not self.grading and not self.fast


def _path(value: str) -> Path:
    return Path(value).expanduser().resolve()


def _default_home() -> Path:
    """The repository checkout that holds this package (an editable install), else ``~/sslcourse``."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").exists() and (checkout / "solutions").is_dir():
        return checkout
    return Path.home() / "sslcourse"


def _custom_allocator(env: Mapping[str, str]) -> bool:
    preload = env.get("LD_PRELOAD", "")
    if any(name in preload for name in _ALLOCATORS):
        return True
    if "glibc.malloc" in env.get("GLIBC_TUNABLES", ""):
        return True
    return any(key.startswith("MALLOC_") and key.endswith("_") for key in env)


def read(environ: Mapping[str, str] | None = None) -> Environment:
    """Read the course's settings from ``environ`` (default: the process environment, now)."""
    env = os.environ if environ is None else environ
    home = _path(env["SSLCOURSE_HOME"]) if env.get("SSLCOURSE_HOME") else _default_home()
    return Environment(
        grading=env.get("NBGRADER_EXECUTION") or None,
        fast=env.get("SSLCOURSE_FAST", "") not in ("", "0"),
        budget=env.get("SSLCOURSE_BUDGET", "").strip().lower() or None,
        device=env.get("SSLCOURSE_DEVICE") or None,
        dataset=env.get("SSLCOURSE_DATASET") or None,
        home=home,
        data_dir=_path(env["SSLCOURSE_DATA"]) if env.get("SSLCOURSE_DATA") else home / "data",
        results_dir=_path(env["SSLCOURSE_RESULTS"]) if env.get("SSLCOURSE_RESULTS") else home / "results",
        custom_allocator=_custom_allocator(env),
        cpu_bf16={"1": True, "0": False}.get(env.get("SSLCOURSE_CPU_BF16", "").strip()),
    )


def course_home() -> Path:
    """The folder that holds ``data/`` and ``results/``."""
    return read().home


def data_dir() -> Path:
    """Dataset cache: ``SSLCOURSE_DATA`` or ``<home>/data``."""
    return read().data_dir


def results_dir() -> Path:
    """Saved runs: ``SSLCOURSE_RESULTS`` or ``<home>/results``."""
    return read().results_dir


def torchrun_process(environ: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` when ``torchrun`` started this process, else ``None``."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"]))
    except ValueError:
        raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them), got "
                         f"{env.get('RANK')!r}, {env.get('WORLD_SIZE')!r}, {env.get('LOCAL_RANK')!r}.") from None
    if not 0 <= rank < world:
        raise ValueError(f"RANK must be in [0, WORLD_SIZE), got RANK={rank}, WORLD_SIZE={world}.")
    return rank, world, local


def reference_source(environ: Mapping[str, str] | None = None) -> str | None:
    """The instructor's reference checkpoints: ``SSLCOURSE_REFERENCE`` (a folder or a URL), or ``None``."""
    env = os.environ if environ is None else environ
    return env.get("SSLCOURSE_REFERENCE") or None


# Where Colab mounts Google Drive: the path its own "Mount Drive" button uses.
COLAB_DRIVE_MOUNTPOINT = Path("/content/drive")


def on_colab() -> bool:
    """True inside a Google Colab kernel.

    Colab's kernel imports ``google.colab`` at start-up; the notebooks' setup cells test the same
    thing before sslcourse is installed. A ``google.colab`` that is merely installed (or a stand-in
    on ``PYTHONPATH``) does not count until something imports it.
    """
    return "google.colab" in sys.modules


def _in_folder(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def use_google_drive(folder: str = "sslcourse", *, mountpoint: Path | str = COLAB_DRIVE_MOUNTPOINT) -> None:
    """On Colab: keep saved runs in the student's Google Drive, ``MyDrive/<folder>/results``.

    Mounts Drive (Colab asks the student to allow it, the first time) and points
    :func:`results_dir` there for the rest of the session, by setting ``SSLCOURSE_RESULTS``
    (so commands the notebook starts see the same folder). Call it in every notebook whose runs
    should persist, ``08_summary`` included, so that it reads them from there.
    Outside Colab it says so and changes nothing. ``mountpoint`` is for tests (a stand-in Drive).
    """
    if not on_colab():
        print(f"sslcourse: use_google_drive() only works on Google Colab; nothing changed, "
              f"results stay in {results_dir()}.")
        return
    from google.colab import drive        # exists only on Colab (or as the tests' stand-in)

    mountpoint = Path(mountpoint)
    drive.mount(str(mountpoint))          # a no-op with a message when Drive is already mounted
    target = mountpoint / "MyDrive" / folder / "results"
    target.mkdir(parents=True, exist_ok=True)
    os.environ["SSLCOURSE_RESULTS"] = str(target)
    print(f"sslcourse: results and checkpoints now go to {target} in your Google Drive; "
          f"they stay there when Colab recycles this runtime.")


def colab_results_note(mountpoint: Path | str = COLAB_DRIVE_MOUNTPOINT) -> str | None:
    """On Colab, while results are not in Drive: a line saying they will be lost, and the fix."""
    if not on_colab() or _in_folder(results_dir(), Path(mountpoint).resolve()):
        return None
    return (f"sslcourse: results go to {results_dir()}, which Colab deletes with the runtime; "
            f"run sslcourse.use_google_drive() in a new cell to keep them in your Google Drive.")


# What a sandboxed grading kernel inherits (sslcourse.sandbox): the course's and nbgrader's own
# settings, thread counts, locale and malloc tunables. Nothing else: no credentials, tokens or paths.
_KERNEL_PASSES = ("NBGRADER_", "SSLCOURSE_", "OMP_", "MKL_", "OPENBLAS_", "LANG", "LC_", "TZ",
                  "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED", "MALLOC_", "GLIBC_TUNABLES")


def kernel_environment(*, python_bin: Path, package_parent: Path, data: Path,
                       environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a sandboxed grading kernel (:mod:`sslcourse.sandbox`).

    Passes on the variables named in ``_KERNEL_PASSES``; sets ``NBGRADER_EXECUTION`` (the kernel
    only ever autogrades), ``PATH``, ``HOME`` (its private
    ``/tmp``), ``PYTHONPATH`` (so ``import sslcourse`` finds this package), ``SSLCOURSE_DATA``
    (the read-only cache) and ``SSLCOURSE_RESULTS`` (in ``/tmp``), and drops ``SSLCOURSE_HOME``.
    """
    env = os.environ if environ is None else environ
    kept = {name: value for name, value in env.items() if name.startswith(_KERNEL_PASSES)}
    kept.pop("SSLCOURSE_HOME", None)
    # nbgrader sets NBGRADER_EXECUTION in its own process after this environment was made; the
    # sandboxed kernel serves autograde only, so it is set here (the smoke preset, offline).
    kept.update(NBGRADER_EXECUTION=env.get("NBGRADER_EXECUTION") or "autograde",
                PATH=f"{python_bin}:/usr/local/bin:/usr/bin:/bin", HOME="/tmp", PYTHONPATH=str(package_parent),
                SSLCOURSE_DATA=str(data), SSLCOURSE_RESULTS="/tmp/results", MPLCONFIGDIR="/tmp/matplotlib",
                PYTHONNOUSERSITE="1")
    return kept


def tool_environment() -> dict[str, str]:
    """A copy of the process environment, for a command the course starts (``nbgrader autograde``)."""
    return dict(os.environ)
