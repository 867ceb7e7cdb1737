"""How long each solution notebook takes under the smoke preset, run directly and under nbgrader.

For every ``solutions/<id>/<id>.ipynb`` this measures, in a temporary copy of the course:

  (a) executing the notebook end to end with ``SSLCOURSE_FAST=1`` (nbclient, kernel start included);
  (b) ``nbgrader autograde <id>`` of a perfect submission (the solution notebook), which is what an
      instructor waits for per student.

The goal is under 60 s for each. The embedded smoke dataset is built once before timing (its
build time is printed separately), so every row measures the notebook itself. Prints a markdown
table and the machine it ran on; copy it into bench/RESULTS.md.

    python bench/bench_notebooks.py                 # every notebook
    python bench/bench_notebooks.py 05_rotation     # some of them
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 60
SCRATCH = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "*.pyc")


def assignment_ids() -> list[str]:
    return sorted(p.name for p in (REPO / "solutions").iterdir() if (p / f"{p.name}.ipynb").is_file())


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"{cpu}, {os.cpu_count()} cores{gpu}; Python {platform.python_version()}, torch {torch.__version__}; "
            f"load average at start {load}")


def course_env(scratch: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NBGRADER_EXECUTION", "SSLCOURSE_FAST", "SSLCOURSE_BUDGET", "SSLCOURSE_HOME")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               SSLCOURSE_DATA=str(scratch / "data"), SSLCOURSE_RESULTS=str(scratch / "results"),
               JUPYTER_CONFIG_DIR=str(scratch / "jupyter-config"))
    return env


def run(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(args)}` failed:\n{proc.stdout[-4000:]}")
    return seconds


def execute(assignment: str, scratch: Path, env: dict[str, str]) -> float:
    """Seconds to run the solution notebook from a copy of its folder, with SSLCOURSE_FAST=1."""
    workdir = scratch / "executed" / assignment
    shutil.copytree(REPO / "solutions" / assignment, workdir, ignore=SCRATCH)
    nb = nbformat.read(workdir / f"{assignment}.ipynb", as_version=4)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env, SSLCOURSE_FAST="1")  # the kernel inherits this environment
    try:
        start = time.perf_counter()
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(workdir)}}).execute()
        return time.perf_counter() - start
    except CellExecutionError as error:
        raise SystemExit(f"{assignment} failed under SSLCOURSE_FAST=1:\n{str(error)[-3000:]}")
    finally:
        os.environ.clear()
        os.environ.update(saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("assignments", nargs="*", help="assignment ids (default: every solution notebook)")
    args = parser.parse_args()
    ids = args.assignments or assignment_ids()
    if not ids:
        raise SystemExit("solutions/ holds no notebook yet")

    print(f"Machine: {machine()}\n")
    with tempfile.TemporaryDirectory(prefix="bench-notebooks-") as tmp:
        scratch = Path(tmp)
        env = course_env(scratch)
        build = run([sys.executable, "-c", "from sslcourse.budget import make_budget; from sslcourse.data import "
                     "load_dataset; load_dataset('auto', budget=make_budget('smoke'), verbose=False)"],
                    cwd=scratch, env=env)
        print(f"Smoke dataset built once in {build:.1f} s (cached for every row below).\n")

        course = scratch / "course"
        shutil.copytree(REPO / "solutions", course / "solutions", ignore=SCRATCH)
        shutil.copy2(REPO / "nbgrader_config.py", course)
        root = f"--CourseDirectory.root={course}"
        run(["nbgrader", "generate_assignment", "*", "--force", root], cwd=course, env=env)

        rows = []
        for assignment in ids:
            executed = execute(assignment, scratch, env)
            submitted = course / "submitted" / "bench" / assignment
            submitted.mkdir(parents=True)
            shutil.copy2(REPO / "solutions" / assignment / f"{assignment}.ipynb", submitted)
            graded = run(["nbgrader", "autograde", assignment, "--student=bench", "--force", root],
                         cwd=course, env=env)
            rows.append((assignment, executed, graded))
            print(f"  {assignment}: run {executed:.1f} s, autograde {graded:.1f} s", flush=True)

    print(f"\n| notebook | run, SSLCOURSE_FAST=1 (s) | nbgrader autograde, perfect submission (s) "
          f"| under {GOAL_SECONDS} s |")
    print("|---|---:|---:|:---:|")
    for assignment, executed, graded in rows:
        verdict = "yes" if max(executed, graded) < GOAL_SECONDS else "**no**"
        print(f"| {assignment} | {executed:.1f} | {graded:.1f} | {verdict} |")


if __name__ == "__main__":
    main()
