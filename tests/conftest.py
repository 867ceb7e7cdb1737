"""Shared helpers for the test suite: where the course lives, and how to run its tools.

The notebook and nbgrader tests never touch the work tree: they copy what they need into
temporary folders, point ``SSLCOURSE_DATA`` / ``SSLCOURSE_RESULTS`` there, and run
nbgrader and JupyterLab as subprocesses with this environment's ``bin`` first on
``PATH`` (nbgrader's gradebook shells out to ``alembic``; in-process nbgrader API calls
leave ``NBGRADER_EXECUTION`` behind).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = REPO_ROOT / "solutions"
RELEASE = REPO_ROOT / "notebooks"
NBGRADER_CONFIG = REPO_ROOT / "nbgrader_config.py"
# The interpreter running pytest is the course environment's; its bin holds nbgrader,
# jupyter and alembic.
ENV_BIN = Path(sys.executable).parent
# Never copied between course folders (nbgrader ignores them too, see nbgrader_config.py).
SCRATCH_PATTERNS = (".ipynb_checkpoints", "__pycache__", "*.pyc", ".pytest_cache")
# Unit tests train in float32 on every machine, so their numbers do not depend on the processor;
# tests/test_cpu_bf16.py exercises the measured choice itself.
os.environ.setdefault("SSLCOURSE_CPU_BF16", "0")


def assignment_ids(folder: Path = SOLUTIONS) -> list[str]:
    """Assignments in ``folder``: sub-folders ``<id>/`` holding ``<id>.ipynb``, sorted."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / f"{p.name}.ipynb").is_file())


def notebook_path(folder: Path, assignment: str) -> Path:
    return folder / assignment / f"{assignment}.ipynb"


def execute_timeout() -> int:
    """The per-cell timeout nbgrader uses (``Execute.timeout`` in nbgrader_config.py)."""
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader(NBGRADER_CONFIG.name, path=str(REPO_ROOT)).load_config()
    return int(config.Execute.timeout)


def tool_env(*, data: Path, results: Path, config_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """Environment for a subprocess (nbgrader, jupyter, a kernel) that stays off the work tree.

    ``config_dir`` becomes ``JUPYTER_CONFIG_DIR`` so that a user's ``~/.jupyter`` (which may
    point nbgrader at a real course) cannot leak into a test.
    """
    env = dict(os.environ)
    for name in ("NBGRADER_EXECUTION", "SSLCOURSE_FAST", "SSLCOURSE_BUDGET", "SSLCOURSE_HOME"):
        env.pop(name, None)
    env["PATH"] = f"{ENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["SSLCOURSE_DATA"] = str(data)
    env["SSLCOURSE_RESULTS"] = str(results)
    if config_dir is not None:
        env["JUPYTER_CONFIG_DIR"] = str(config_dir)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def run_tool(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 1800,
             check: bool = True) -> subprocess.CompletedProcess:
    """Run a command, capturing stdout and stderr together; fail the test with both on error."""
    proc = subprocess.run(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"`{' '.join(args)}` exited with {proc.returncode} (in {cwd}):\n{proc.stdout[-6000:]}",
                    pytrace=False)
    return proc


def copy_course(destination: Path) -> Path:
    """Copy solutions/, notebooks/ and nbgrader_config.py into ``destination`` (a fresh course root)."""
    ignore = shutil.ignore_patterns(*SCRATCH_PATTERNS)
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copytree(SOLUTIONS, destination / "solutions", ignore=ignore)
    if RELEASE.is_dir():
        shutil.copytree(RELEASE, destination / "notebooks", ignore=ignore)
    shutil.copy2(NBGRADER_CONFIG, destination / "nbgrader_config.py")
    return destination


@pytest.fixture(scope="session")
def course_data_dir(tmp_path_factory) -> Path:
    """A dataset cache shared by every notebook run of the session (the smoke set is built once)."""
    return tmp_path_factory.mktemp("sslcourse-data")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one thread avoids OpenMP start-up and barrier costs (large on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def postgres_url():
    """SQLAlchemy URL of a database on a throw-away PostgreSQL server (tests/postgres.py); skips without one."""
    from postgres import throwaway_server

    with throwaway_server() as url:
        yield url
