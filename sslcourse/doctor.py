"""``sslcourse doctor``: what this machine will run, and the fix for anything that is wrong.

Each check is a small function returning a :class:`Check`: a label, what was found, and, when
something is wrong or missing, the exact command or action that mends it. :func:`run` prints the
checks as an aligned list, each fix right under its line, then one summary line; its exit code is 1
when something a student needs is wrong. The grading sandbox matters only to instructors: a
machine that cannot make one gets a note, never a failure.

Doctor trains nothing. Beyond its imports (torch, JupyterLab, nbgrader), the slowest check is the
sandbox's, which starts one sandboxed Python (about a second).
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple

from . import environment

__all__ = ["Check", "all_checks", "run", "format_check", "summary"]

# What the course needs (pyproject.toml): module, minimum version, needed on Colab too.
# Colab has no JupyterLab and no Validate button, so JupyterLab and nbgrader are not needed there.
PACKAGES = (("torch", "2.1", True), ("torchvision", "0.16", True), ("ipywidgets", "7.6", True),
            ("jupyterlab", "4", False), ("nbgrader", "0.9.6", False))
NBGRADER_LAB = "@jupyter/nbgrader"                        # nbgrader's JupyterLab extension
VALIDATE_PLUGIN = "@jupyter/nbgrader:validate-assignment"  # its plugin that adds the Validate button
VALIDATE_SERVER = "nbgrader.server_extensions.validate_assignment"  # the server side the button calls
LABEL_WIDTH = 19


class Check(NamedTuple):
    """One line of the report.

    Attributes:
        label: what was checked (``"torch"``, ``"results folder"``).
        value: what was found.
        fix: the exact command or action that mends it; ``None`` when nothing is wrong.
        instructors_only: a problem for grading only (the sandbox): shown with its fix, never a failure.
    """

    label: str
    value: str
    fix: str | None = None
    instructors_only: bool = False


# ---------------------------------------------------------------- helpers

def colab_runtime() -> bool:
    """Whether this machine is a Google Colab runtime (no JupyterLab, no Validate button).

    Not :func:`sslcourse.environment.on_colab`, which asks whether a Colab *kernel* imported
    ``google.colab``: doctor runs as a command (``!sslcourse doctor`` in a cell), where nothing has.
    """
    try:
        return importlib.util.find_spec("google.colab") is not None
    except ImportError:                      # no ``google`` package at all
        return False


def version_tuple(version: str) -> tuple[int, ...]:
    """``"2.14.1+cu126"`` -> ``(2, 14, 1)``: the leading numbers, enough to compare with a minimum."""
    match = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(part) for part in match.group().split(".")) if match else ()


def writable(folder: Path) -> bool:
    """Whether files can be written in ``folder``, or in the folder that would be made for it.

    Tried for real, with a temporary file removed at once: permission bits say nothing for root
    or on a read-only mount. A path under a regular file can never be made.
    """
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return False
    try:
        with tempfile.TemporaryFile(dir=existing):
            return True
    except OSError:
        return False


def usable_device():
    """The device the notebooks will use (:func:`sslcourse.session.choose_device`), tried with one tensor.

    Raises what torch raises when it cannot be used (RuntimeError, or AssertionError from a torch
    built without CUDA).
    """
    import torch

    from .session import choose_device

    device = choose_device()
    torch.empty(1, device=device)
    return device


def preset_name() -> str | None:
    """The budget preset's name, or ``None`` when ``SSLCOURSE_BUDGET`` names no preset."""
    from .budget import choose_budget

    try:
        return choose_budget().name
    except ValueError:
        return None


def cached_datasets(folder: Path) -> dict[str, int]:
    """The datasets cached in ``folder``: name -> size in bytes."""
    from .data import cache_path

    pattern = cache_path("*", folder).name      # a cache file's name, any dataset
    return {path.name.split(".")[0]: path.stat().st_size for path in sorted(folder.glob(pattern))}


def labextension_level() -> str:
    """``"user"`` or ``"sys_prefix"``: the ``jupyter labextension --level`` that takes precedence here.

    jupyter_core puts the environment's configuration first in a virtual or conda environment,
    else the user's; an enable written there overrides whatever disabled the extension below it.
    """
    from jupyter_core.paths import jupyter_config_dir, jupyter_config_path

    return "user" if jupyter_config_path()[0] == jupyter_config_dir() else "sys_prefix"


def server_extension_folder(name: str) -> str | None:
    """The Jupyter configuration folder whose setting of server extension ``name`` wins, or ``None``.

    ``jupyter server extension enable`` changes a setting only in a folder that already has one,
    so the fix must name the folder that decides: the first in Jupyter's search path with a setting.
    """
    from jupyter_core.paths import jupyter_config_path
    from jupyter_server.extension.config import ExtensionConfigManager

    for folder in jupyter_config_path():
        if name in ExtensionConfigManager(read_config_path=[folder]).get_jpserver_extensions():
            return folder
    return None


def server_level_flag(folder: str) -> str | None:
    """The ``jupyter server extension`` flag that writes in ``folder``, or ``None`` when none does."""
    from jupyter_core.paths import ENV_CONFIG_PATH, SYSTEM_CONFIG_PATH, jupyter_config_dir

    flags = {jupyter_config_dir(): "--user", ENV_CONFIG_PATH[0]: "--sys-prefix", SYSTEM_CONFIG_PATH[0]: "--system"}
    return {os.path.abspath(path): flag for path, flag in flags.items()}.get(os.path.abspath(folder))


def labextensions_path() -> list[str]:
    """Where JupyterLab looks for prebuilt extensions (its ``LabConfig.labextensions_path`` default)."""
    from jupyter_core.paths import jupyter_path

    return jupyter_path("labextensions")


def jupyter_missing() -> str | None:
    """Why the JupyterLab checks cannot run (Colab, or JupyterLab or nbgrader missing), or ``None``."""
    if colab_runtime():
        return "not used on Colab (no Validate button there)"
    for name in ("jupyterlab", "nbgrader"):
        try:
            importlib.import_module(name)
        except ImportError:
            return f"not checked: {name} is not installed (see above)"
    return None


def reinstall_nbgrader() -> str:
    """The command that puts nbgrader's extensions and their configuration files back."""
    return f'pip install --force-reinstall --no-deps "nbgrader=={importlib.metadata.version("nbgrader")}"'


def first_line(error: BaseException) -> str:
    """``"TypeName: first line of the message"``, for one line of the report."""
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:150]}"


# ---------------------------------------------------------------- the checks

def check_python() -> Check:
    """The interpreter running the course."""
    value = f"{platform.python_version()} ({sys.executable})"
    if sys.version_info < (3, 10):
        return Check("python", value, fix="install Python 3.10 or later and make the environment again (make venv)")
    return Check("python", value)


def check_package(name: str, minimum: str, needed_on_colab: bool = True) -> Check:
    """``name`` can be imported, at ``minimum`` or later."""
    try:
        module = importlib.import_module(name)
    except ImportError as error:
        if colab_runtime() and not needed_on_colab:
            return Check(name, "not installed (not needed on Colab)")
        return Check(name, f"not installed ({first_line(error)})", fix=f'pip install "{name}>={minimum}"')
    version = str(getattr(module, "__version__", "") or importlib.metadata.version(name))
    if version_tuple(version) < version_tuple(minimum):
        return Check(name, f"{version}, older than the course's {minimum}",
                     fix=f'pip install --upgrade "{name}>={minimum}"')
    return Check(name, version)


def check_device() -> Check:
    """The device the notebooks will train on: CUDA (its name), Apple's MPS, or the CPU."""
    import torch

    from .cpu_bf16 import cpu_name

    forced = environment.read().device
    try:
        device = usable_device()
    except Exception as error:  # whatever torch raises, the device is unusable
        if forced:
            return Check("device", f"SSLCOURSE_DEVICE={forced} cannot be used ({first_line(error)})",
                         fix="unset SSLCOURSE_DEVICE   (or set it to a device this machine has, e.g. cpu)")
        return Check("device", f"torch cannot use this machine's device ({first_line(error)})",
                     fix="install a torch build for this machine: https://pytorch.org/get-started/locally/")
    if device.type == "cuda":
        return Check("device", f"CUDA: {torch.cuda.get_device_name(device)}")
    if device.type == "mps":
        return Check("device", "MPS (Apple GPU)")
    value = f"CPU: {cpu_name()}"
    if not forced and shutil.which("nvidia-smi") and not torch.cuda.is_available():
        # The commonest slow-laptop mystery: an NVIDIA GPU, and a torch that cannot use it.
        return Check("device", f"{value}; an NVIDIA GPU is present but this torch cannot use it "
                               f"(torch {torch.__version__}, CUDA {torch.version.cuda})",
                     fix="install a CUDA build of torch that matches the driver (nvidia-smi shows its CUDA "
                         "version): https://pytorch.org/get-started/locally/")
    return Check("device", value)


def check_bf16() -> Check:
    """Whether the device multiplies bfloat16 natively (``fit`` trains under bf16 autocast where it pays)."""
    import torch

    from .cpu_bf16 import describe, native_bf16

    try:
        device = usable_device()
    except Exception:  # check_device reports why
        return Check("bf16", "unknown: no usable device (see device)")
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8:
            return Check("bf16", f"native (compute capability {major}.{minor}): training uses bf16 autocast")
        return Check("bf16", f"not native (compute capability {major}.{minor}; 8.0, Ampere, and later have it): "
                             "bf16 autocast is emulated, slower")
    if device.type == "mps":
        return Check("bf16", "not used on MPS: training runs in float32")
    if native_bf16() is None:
        return Check("bf16", "not native (this processor has neither AVX512-BF16 nor AMX): training stays in float32")
    return Check("bf16", describe().removeprefix("CPU bf16: "))


def check_threads() -> Check:
    """The threads torch computes with on the CPU."""
    import torch

    return Check("threads", f"{torch.get_num_threads()} (of {os.cpu_count()} cores)")


def check_budget() -> Check:
    """The budget preset the notebooks will pick, and why."""
    from .budget import choose_budget

    try:
        return Check("budget", str(choose_budget()).removeprefix("budget "))
    except ValueError as error:
        return Check("budget", str(error), fix="unset SSLCOURSE_BUDGET   (or set it to smoke, cpu or gpu)")


def check_data_folder() -> Check:
    """The dataset cache can take downloads and built datasets (or already holds CIFAR-10)."""
    folder = environment.data_dir()
    if writable(folder):
        return Check("data folder", f"{folder} ({'writable' if folder.exists() else 'made at first use'})")
    if "cifar10" in cached_datasets(folder):
        return Check("data folder", f"{folder} (read-only, CIFAR-10 already in it)")
    return Check("data folder", f"{folder} cannot be written: nothing can be downloaded or cached there",
                 fix="export SSLCOURSE_DATA=~/sslcourse-data   (any folder you can write)")


def check_cached() -> Check:
    """Which datasets are cached."""
    cached = cached_datasets(environment.data_dir())
    if not cached:
        return Check("cached datasets", "none yet (each is cached at first use)")
    return Check("cached datasets", ", ".join(f"{name} ({size / 2**20:.0f} MB)" for name, size in cached.items()))


def check_cifar10() -> Check:
    """CIFAR-10 is in the cache, or torchvision's files are there to build it from."""
    folder = environment.data_dir()
    if "cifar10" in cached_datasets(folder):
        return Check("CIFAR-10", "cached")
    for name in ("cifar-10-batches-py", "cifar-10-python.tar.gz"):
        if (folder / name).exists():
            return Check("CIFAR-10", f"torchvision's {name} is there (cached at first use)")
    if preset_name() == "smoke":
        return Check("CIFAR-10", "not there; the smoke preset needs only the embedded offline set")
    return Check("CIFAR-10", "not there: notebooks download it (170 MB) or, offline, fall back to the embedded set",
                 fix="sslcourse data cifar10   (offline: sslcourse data --import ~/Downloads/cifar-10, "
                     "an image folder or cifar10-jpeg.npz)")


def check_results() -> Check:
    """The results folder (saved runs, read back by 08_summary) can be written."""
    folder = environment.results_dir()
    if writable(folder):
        state = "writable" if folder.exists() else "made at the first saved run"
        return Check("results folder", f"{folder} ({state})")
    return Check("results folder", f"{folder} cannot be written: notebooks cannot save runs for 08_summary",
                 fix="export SSLCOURSE_RESULTS=~/sslcourse-results   (any folder you can write)")


def check_validate_button() -> Check:
    """nbgrader's JupyterLab extension, which adds the Validate button: installed and enabled.

    Read as ``jupyter labextension list`` reads it (``jupyterlab.commands.get_app_info``).
    """
    label = "Validate (lab)"
    missing = jupyter_missing()
    if missing:
        return Check(label, missing)
    import nbgrader
    from jupyterlab.commands import AppOptions, get_app_info

    info = get_app_info(AppOptions(labextensions_path=labextensions_path()))
    extension = info["federated_extensions"].get(NBGRADER_LAB)
    if extension is None:
        return Check(label, f"{NBGRADER_LAB}, nbgrader's lab extension, is not installed", fix=reinstall_nbgrader())
    if extension["version"] != nbgrader.__version__:
        return Check(label, f"{NBGRADER_LAB} {extension['version']} does not match nbgrader {nbgrader.__version__}",
                     fix=reinstall_nbgrader())
    for name in (NBGRADER_LAB, VALIDATE_PLUGIN):
        if info["disabled"].get(name):
            return Check(label, f"{name} is disabled",
                         fix=f"jupyter labextension enable --level={labextension_level()} {name}")
    return Check(label, f"{NBGRADER_LAB} {extension['version']} installed and enabled (the Validate button)")


def check_validate_server() -> Check:
    """nbgrader's server extension that the Validate button calls: enabled.

    Read as the server reads it: ``jpserver_extensions`` merged over Jupyter's configuration folders.
    ``jupyter server extension enable --py nbgrader`` (nbgrader's documented command) enables the
    package as a whole, which loads the Validate handler too.
    """
    label = "Validate (server)"
    missing = jupyter_missing()
    if missing:
        return Check(label, missing)
    from jupyter_core.paths import jupyter_config_path
    from jupyter_server.extension.config import ExtensionConfigManager

    enabled = ExtensionConfigManager(read_config_path=jupyter_config_path()).get_jpserver_extensions()
    for name in (VALIDATE_SERVER, "nbgrader"):
        if enabled.get(name):
            return Check(label, f"{name} enabled")
    folder = server_extension_folder(VALIDATE_SERVER)
    if folder is None:                   # nbgrader's jupyter_server_config.d/nbgrader.json is gone
        return Check(label, f"{VALIDATE_SERVER} is not configured", fix=reinstall_nbgrader())
    flag = server_level_flag(folder)
    fix = (f"jupyter server extension enable {flag} {VALIDATE_SERVER}" if flag else
           f"set {VALIDATE_SERVER} to true in ServerApp.jpserver_extensions, in the configuration in {folder}")
    return Check(label, f"{VALIDATE_SERVER} is disabled (in {folder})", fix=fix)


def sandbox_fix(why: str) -> str:
    """The action for a reason of :func:`sslcourse.sandbox.why_not`."""
    from . import sandbox

    if why.startswith(f"{sandbox.BWRAP} is not installed"):
        return "apt-get install bubblewrap"
    if why.startswith(f"{sandbox.SETPRIV} is not installed"):
        return "apt-get install util-linux"
    if not sys.platform.startswith("linux"):
        return "grade on Linux, or in a Linux container with bubblewrap"
    return ("allow unprivileged user namespaces (Ubuntu 23.10+: "
            "sysctl kernel.apparmor_restrict_unprivileged_userns=0), or grade as root in a container "
            "(README, 'The sandbox')")


def check_sandbox() -> Check:
    """Whether ``sslcourse autograde`` can sandbox kernels here (instructors only)."""
    from . import sandbox

    why = sandbox.why_not()
    if why is None:
        return Check("grading sandbox", "can be made here (matters only to instructors)", instructors_only=True)
    return Check("grading sandbox", f"cannot be made: {why} (matters only to instructors who grade here)",
                 fix=sandbox_fix(why), instructors_only=True)


def all_checks() -> list[Callable[[], Check]]:
    """Every check, in the order of the report."""
    packages = [functools.partial(check_package, name, minimum, colab) for name, minimum, colab in PACKAGES]
    return [check_python, *packages, check_device, check_bf16, check_threads, check_budget, check_data_folder,
            check_cached, check_cifar10, check_results, check_validate_button, check_validate_server, check_sandbox]


# ---------------------------------------------------------------- the report

def run_check(check: Callable[[], Check]) -> Check:
    """Run one check; a check that crashes is reported as a problem rather than ending the report."""
    try:
        return check()
    except Exception as error:  # doctor runs on broken machines: report, go on
        name = getattr(check, "func", check).__name__.removeprefix("check_")
        return Check(name, f"the check itself failed ({first_line(error)})",
                     fix="send this output to your instructor")


def format_check(check: Check) -> str:
    """The check's line, and its fix right under the value."""
    line = f"{check.label:<{LABEL_WIDTH}}{check.value}"
    return line if check.fix is None else f"{line}\n{'':<{LABEL_WIDTH}}fix: {check.fix}"


def problems(checks: list[Check]) -> list[Check]:
    """The checks that failed for students (the instructors' notes left out)."""
    return [check for check in checks if check.fix is not None and not check.instructors_only]


def summary(checks: list[Check]) -> str:
    """``"N problem(s) found"`` or ``"everything looks fine"``, and how many notes for instructors."""
    found = problems(checks)
    notes = sum(check.fix is not None and check.instructors_only for check in checks)
    text = f"{len(found)} problem(s) found" if found else "everything looks fine"
    return text + (f" ({notes} note(s) for instructors above)" if notes else "")


def run(checks: list[Callable[[], Check]] | None = None) -> int:
    """Print each check as it is done, then the summary; 1 when something a student needs is wrong, else 0."""
    done = []
    for check in all_checks() if checks is None else checks:
        done.append(run_check(check))
        print(format_check(done[-1]), flush=True)
    print(summary(done))
    return 1 if problems(done) else 0
