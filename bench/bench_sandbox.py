"""Benchmark: what the kernel sandbox of ``sslcourse autograde`` costs per submission.

    python bench/bench_sandbox.py                       # 05_rotation, 3 perfect submissions, 2 rounds
    python bench/bench_sandbox.py --assignment 07_moco --students 4 --rounds 3

A temporary copy of the course gets ``--students`` perfect submissions (the solution notebook)
of one assignment. Each round grades them twice with the real command an instructor runs, once
``sslcourse autograde ID --no-sandbox`` (plain nbgrader kernels) and once sandboxed (bubblewrap),
in alternating order, so a change in the machine's load hits both. Prints seconds per submission
for each side and the ratio, and checks that both sides gave every submission the same score.
Never passes or fails on time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sslcourse import sandbox  # noqa: E402

SCORES = """
import json, sys
from nbgrader.api import Gradebook
with Gradebook(sys.argv[1]) as gb:
    print(json.dumps({s.student.id: s.score for s in gb.assignment_submissions(sys.argv[2])}))
"""


def make_course(folder: Path, assignment: str, students: int) -> Path:
    course = folder / "course"
    shutil.copytree(ROOT / "solutions", course / "solutions")
    shutil.copytree(ROOT / "notebooks", course / "notebooks")
    shutil.copy2(ROOT / "nbgrader_config.py", course)
    solution = course / "solutions" / assignment / f"{assignment}.ipynb"
    for n in range(students):
        target = course / "submitted" / f"student{n:02d}" / assignment
        target.mkdir(parents=True)
        shutil.copy2(solution, target)
    return course


def grade(course: Path, assignment: str, env: dict, sandboxed: bool) -> tuple[float, dict]:
    shutil.rmtree(course / "autograded", ignore_errors=True)
    command = [sys.executable, "-m", "sslcourse.cli", "autograde", assignment, "--course", str(course)]
    if not sandboxed:
        command.append("--no-sandbox")
    start = time.perf_counter()
    proc = subprocess.run([*command, "--", "--force"], cwd=course, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"autograde failed ({'sandbox' if sandboxed else 'plain'}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    scores = subprocess.run([sys.executable, "-c", SCORES, f"sqlite:///{course / 'gradebook.db'}", assignment],
                            capture_output=True, text=True, env=env, check=True)
    return seconds, json.loads(scores.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assignment", default="05_rotation")
    parser.add_argument("--students", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    why = sandbox.why_not()
    if why is not None:
        print(f"no sandbox on this machine ({why}); nothing to compare")
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as scratch:
        course = make_course(Path(scratch), args.assignment, args.students)
        data = Path(scratch) / "data"
        data.mkdir(mode=0o755)
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                   SSLCOURSE_DATA=str(data), SSLCOURSE_RESULTS=str(Path(scratch) / "results"),
                   JUPYTER_CONFIG_DIR=str(Path(scratch) / "jupyter-config"))
        subprocess.run(["nbgrader", "generate_assignment", args.assignment, "--force",
                        "--CourseDirectory.release_directory=release_with_db"], cwd=course, env=env,
                       check=True, capture_output=True)
        grade(course, args.assignment, env, sandboxed=False)     # warm-up: the dataset cache, file caches
        times: dict[bool, list[float]] = {False: [], True: []}
        scores_by_side: dict[bool, dict] = {}
        for round_ in range(args.rounds):
            for sandboxed in ((False, True) if round_ % 2 == 0 else (True, False)):
                seconds, scores = grade(course, args.assignment, env, sandboxed)
                times[sandboxed].append(seconds / args.students)
                print(f"round {round_ + 1} {'sandbox' if sandboxed else 'plain  '}: {seconds:6.1f} s "
                      f"({seconds / args.students:5.1f} s per submission), scores {sorted(set(scores.values()))}",
                      flush=True)
                scores_by_side[sandboxed] = scores
        plain, boxed = statistics.median(times[False]), statistics.median(times[True])
        same = scores_by_side[False] == scores_by_side[True]
        print(f"\n{args.assignment}, {args.students} perfect submissions, {args.rounds} rounds, "
              f"{os.cpu_count()} CPUs")
        print(f"plain nbgrader kernels : {plain:6.2f} s per submission (median)")
        print(f"sandboxed kernels      : {boxed:6.2f} s per submission (median)")
        print(f"sandbox / plain        : {boxed / plain:6.3f}  ({(boxed / plain - 1) * 100:+.1f}%)")
        print(f"same scores both ways  : {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
