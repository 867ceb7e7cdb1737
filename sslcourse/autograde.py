"""Autograde a class in parallel: one ``nbgrader autograde ID --student=S`` per submission, N at a time.

nbgrader grades one submission after another (its issue #174: a class taking "forever"). The work of
a submission is its notebook's kernel, and submissions share nothing but the gradebook, so
``sslcourse autograde ID --jobs N`` starts N nbgrader processes at once, each on one student, and
keeps them busy until every submission is graded. The grades are nbgrader's own: the same command,
the same preprocessors, the same gradebook writes, only several of them at the same time. Each of
those writes is a short transaction (sqlite serialises them, PostgreSQL takes them side by side),
and a process that still lost a race is graded again, alone, once the others are done.

**Resuming.** Without ``--force`` a submission is graded when nbgrader would grade it: it has no
autograded notebook yet (new, or its grading failed: nbgrader removes what it could not finish), or
its ``timestamp.txt`` is newer than the autograded one (the student resubmitted). A second call
after an interruption therefore grades only what is new or failed (:func:`to_grade`).

**Threads.** N kernels share the machine's cores: each gets ``OMP_NUM_THREADS = cores // N``
(at least 1) unless the caller set it, so N kernels do not each start one thread per core.

What each run leaves in ``reports/`` of the course: ``times/<ID>.json`` (seconds per submission,
for the class report) and ``autograde/<ID>/<student>.log`` (nbgrader's output for that submission).
"""
from __future__ import annotations

import glob
import json
import os
import queue
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .files import atomic_write

__all__ = ["Graded", "default_jobs", "to_grade", "grade_all"]

# nbgrader's message when sqlite refused a write because another process held the lock.
_LOCKED = "database is locked"


@dataclass(frozen=True)
class Graded:
    """How one submission's ``nbgrader autograde`` ended."""

    student: str
    exit_code: int
    seconds: float
    locked: bool = False     # it failed on a busy sqlite gradebook (graded again, alone)


def default_jobs() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                                   # not on Linux
        return max(1, os.cpu_count() or 1)


def _timestamp(folder: Path):
    """The parsed ``timestamp.txt`` of a submission folder, None when it has none (nbgrader's rule)."""
    from nbgrader.utils import parse_utc

    path = folder / "timestamp.txt"
    try:
        return parse_utc(path.read_text().strip()) if path.is_file() else None
    except (ValueError, OverflowError):
        return None


def submissions(course: Path, assignment: str) -> list[str]:
    """The students with a folder ``submitted/<student>/<assignment>/``, sorted."""
    return [folder.parent.name for folder in sorted((course / "submitted").glob(f"*/{assignment}"))
            if folder.is_dir()]


def to_grade(course: Path, assignment: str, *, force: bool = False) -> list[str]:
    """The students whose submission nbgrader would (re)grade: new, failed, or resubmitted.

    This is nbgrader's own rule (``BaseConverter.init_destination``), read from the folders, so a
    resumed run starts no process for a submission that is already graded.
    """
    students = submissions(course, assignment)
    if force:
        return students
    wanted = []
    for student in students:
        source = course / "submitted" / student / assignment
        graded = course / "autograded" / student / assignment
        notebooks = [path.name for path in source.glob("*.ipynb")]
        if not notebooks or any(not (graded / name).exists() for name in notebooks):
            wanted.append(student)
            continue
        new, old = _timestamp(source), _timestamp(graded)
        if new is not None and old is not None and new > old:
            wanted.append(student)
    return wanted


def _threads_per_kernel(env: dict[str, str], jobs: int) -> dict[str, str]:
    if "OMP_NUM_THREADS" in env:
        return env
    return {**env, "OMP_NUM_THREADS": str(max(1, default_jobs() // jobs))}


def _grade_one(command: list[str], student: str, *, course: Path, env: dict[str, str], log: Path) -> Graded:
    """``nbgrader autograde`` of one student; its output goes to ``log``."""
    started = time.monotonic()
    with open(log, "w") as out:
        # glob.escape: nbgrader globs the student id, and "[" in a folder name is a pattern.
        code = subprocess.run([*command, f"--student={glob.escape(student)}"], cwd=course, env=env,
                              stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = round(time.monotonic() - started, 1)
    locked = code != 0 and _LOCKED in log.read_text(errors="replace")
    return Graded(student, code, seconds, locked)


def grade_all(course: Path, assignment: str, command: list[str], *, env: dict[str, str], jobs: int,
              students: list[str], kernel_args=None, echo=print) -> list[Graded]:
    """Run ``command + ["--student=S"]`` for each student, ``jobs`` at a time; returns how each ended.

    ``kernel_args(slot)`` gives the extra nbgrader options of worker ``slot`` (0..jobs-1): the
    sandbox names each worker's kernel sockets apart, so two kernels started at the same moment
    never pick the same socket file. Submissions that failed on a locked sqlite gradebook are
    graded again one at a time at the end.
    """
    course = Path(course)
    logs = course / "reports" / "autograde" / assignment
    logs.mkdir(parents=True, exist_ok=True)
    env = _threads_per_kernel(env, jobs)
    slots: queue.Queue[int] = queue.Queue()
    for slot in range(jobs):
        slots.put(slot)

    def run(student: str) -> Graded:
        slot = slots.get()
        try:
            extra = kernel_args(slot) if kernel_args else []
            result = _grade_one([*command, *extra], student, course=course, env=env, log=logs / f"{student}.log")
        finally:
            slots.put(slot)
        echo(f"  {student}: {'graded' if result.exit_code == 0 else f'nbgrader exited with {result.exit_code}'} "
             f"in {result.seconds:.1f} s", flush=True)
        return result

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = {r.student: r for r in pool.map(run, students)}
    retry = [student for student, result in results.items() if result.locked]
    if retry:
        echo(f"sslcourse autograde: the gradebook was busy for {len(retry)} submission(s); grading them again "
             f"one at a time: {', '.join(retry)}", flush=True)
        for student in retry:
            results[student] = run(student)
    _record_times(course, assignment, results.values())
    return [results[student] for student in students]


def _record_times(course: Path, assignment: str, results) -> None:
    """Merge the seconds of this run into ``reports/times/<assignment>.json`` ({student: seconds})."""
    path = course / "reports" / "times" / f"{assignment}.json"
    try:
        times = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        times = {}
    times.update({r.student: r.seconds for r in results if r.exit_code == 0})
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(dict(sorted(times.items())), indent=1)))
