"""Benchmark: a class autograded serially by nbgrader, and in parallel by ``sslcourse autograde --jobs N``.

    python bench/bench_autograde.py                          # 100 submissions of 03_view_prediction, --jobs 2
    python bench/bench_autograde.py --submissions 12 --jobs 4 --assignment 00_foundations

A temporary copy of the course gets ``--submissions`` submissions of one assignment: three in ten are
the solution (perfect), two in ten the untouched release (blank), and half are realistic mistakes,
the mutants of ``tests/mutants.py`` (each one plausible student error in one exercise) in turn.
The class is graded twice, in one process: ``nbgrader autograde ID --force`` (nbgrader's serial
loop, plain kernels), then ``sslcourse autograde ID --jobs N -- --force`` (N nbgrader processes,
each kernel sandboxed: what an instructor runs). Before that, one plain smoke run of the solution
notebook (nbclient, kernel start included) gives the time of a single notebook.

Prints the wall time of each side, seconds per submission (wall / submissions), the mean time one
submission took inside the parallel run (``reports/times/ID.json``), the speed-up, and whether every
autograded cell got the same points both ways. Never passes or fails on time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from mutants import MUTANTS  # noqa: E402

GRADES = """
import json, sys
from nbgrader.api import Gradebook
with Gradebook(sys.argv[1]) as gb:
    print(json.dumps({s.student.id: {g.name: g.auto_score for nb in s.notebooks for g in nb.grades
                                     if g.cell_type == "code"} for s in gb.assignment_submissions(sys.argv[2])}))
"""


def mistaken(solution: nbformat.NotebookNode, mutant) -> nbformat.NotebookNode:
    """The solution with one mutant's edits made in its exercise cell."""
    nb = nbformat.from_dict(json.loads(json.dumps(solution)))
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == mutant.exercise)
    for old, new in mutant.edits:
        assert old in cell.source, f"mutant '{mutant.mistake}' does not apply to {mutant.exercise}"
        cell.source = cell.source.replace(old, new)
    return nb


def make_class(course: Path, assignment: str, count: int) -> dict[str, str]:
    """Write ``count`` submissions under ``course/submitted``; returns student -> what it is."""
    solution = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    release = nbformat.read(ROOT / "notebooks" / assignment / f"{assignment}.ipynb", as_version=4)
    mutants = MUTANTS.get(assignment, [])
    kinds = {}
    for n in range(count):
        slot = n % 10
        if slot < 3 or not mutants and slot >= 5:
            nb, kind = solution, "perfect"
        elif slot < 5:
            nb, kind = release, "blank"
        else:
            mutant = mutants[(n // 10 * 5 + slot - 5) % len(mutants)]
            nb, kind = mistaken(solution, mutant), f"mistake: {mutant.mistake}"
        student = f"student{n:03d}"
        folder = course / "submitted" / student / assignment
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{assignment}.ipynb")
        kinds[student] = kind
    return kinds


def timed(command: list[str], *, cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"`{' '.join(command)}` exited with {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return seconds


def grades(course: Path, assignment: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", GRADES, f"sqlite:///{course / 'gradebook.db'}", assignment],
                         capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def smoke_run(course: Path, assignment: str, env: dict) -> float:
    """One plain run of the solution notebook in the smoke preset, as a student's kernel runs it."""
    code = ("import nbformat, sys; from nbclient import NotebookClient; "
            "nb = nbformat.read(sys.argv[1], as_version=4); NotebookClient(nb, timeout=600).execute()")
    work = course / "smoke"
    shutil.copytree(course / "solutions" / assignment, work)
    return timed([sys.executable, "-c", code, str(work / f"{assignment}.ipynb")], cwd=work,
                 env={**env, "SSLCOURSE_FAST": "1"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assignment", default="03_view_prediction")
    parser.add_argument("--submissions", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-autograde-") as scratch:
        course = Path(scratch) / "course"
        for folder in ("solutions", "notebooks"):
            shutil.copytree(ROOT / folder, course / folder)
        shutil.copy2(ROOT / "nbgrader_config.py", course)
        kinds = make_class(course, args.assignment, args.submissions)
        data = Path(scratch) / "data"
        data.mkdir(mode=0o755)
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                   SSLCOURSE_DATA=str(data), SSLCOURSE_RESULTS=str(Path(scratch) / "results"),
                   JUPYTER_CONFIG_DIR=str(Path(scratch) / "jupyter-config"), PYTHONDONTWRITEBYTECODE="1")
        subprocess.run(["nbgrader", "generate_assignment", args.assignment, "--force",
                        "--CourseDirectory.release_directory=release_with_db"], cwd=course, env=env,
                       check=True, capture_output=True)
        smoke_run(course, args.assignment, env)                  # builds the smoke dataset cache once
        shutil.rmtree(course / "smoke")
        single = smoke_run(course, args.assignment, env)
        print(f"one smoke run of the solution notebook: {single:.1f} s", flush=True)
        load_before = os.getloadavg()[0]
        serial = timed(["nbgrader", "autograde", args.assignment, "--force"], cwd=course, env=env)
        serial_grades = grades(course, args.assignment, env)
        print(f"nbgrader autograde (serial): {serial:.1f} s", flush=True)
        parallel = timed([sys.executable, "-m", "sslcourse.cli", "autograde", args.assignment, "--course",
                          str(course), "--jobs", str(args.jobs), "--", "--force"], cwd=course, env=env)
        parallel_grades = grades(course, args.assignment, env)
        each = json.loads((course / "reports" / "times" / f"{args.assignment}.json").read_text())
        print(f"sslcourse autograde --jobs {args.jobs}: {parallel:.1f} s", flush=True)
        n = args.submissions
        counts = {k: sum(1 for v in kinds.values() if (v.split(":")[0] == k)) for k in ("perfect", "blank", "mistake")}
        print(f"\n{args.assignment}: {n} submissions ({counts['perfect']} perfect, {counts['blank']} blank, "
              f"{counts['mistake']} mistakes); {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
              f"load average {load_before:.1f} before grading, {os.getloadavg()[0]:.1f} after")
        print(f"single smoke run of the notebook         : {single:7.1f} s")
        print(f"nbgrader autograde, serial               : {serial:7.1f} s  ({serial / n:5.2f} s per submission)")
        print(f"sslcourse autograde --jobs {args.jobs} (sandboxed): {parallel:7.1f} s  ({parallel / n:5.2f} s per "
              f"submission; each one took {statistics.mean(each.values()):.1f} s on average)")
        print(f"speed-up serial / parallel               : {serial / parallel:7.2f}x")
        print(f"each submission's time / single smoke run: {statistics.mean(each.values()) / single:7.2f}")
        same = serial_grades == parallel_grades and len(serial_grades) == n
        print(f"identical grades, every cell, both ways  : {same}")
        if not same:
            differ = sorted(s for s in set(serial_grades) | set(parallel_grades)
                            if serial_grades.get(s) != parallel_grades.get(s))
            print(f"  differ for {differ[:10]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
