"""Autograde a class in parallel: N ``nbgrader autograde`` processes at once, each on its own students.

nbgrader grades one submission after another (its issue #174: a class taking "forever"). The work of
a submission is its notebook's kernel, and submissions share nothing but the gradebook, so
``sslcourse autograde ID --jobs N`` keeps N nbgrader processes busy, each grading a batch of
students, until every submission is graded. The grades are nbgrader's own: the same command, the
same preprocessors, the same gradebook writes, only several of them at the same time. Each of those
writes is a short transaction (sqlite serialises them, PostgreSQL takes them side by side); a batch
that a busy gradebook still stopped is graded again, one submission at a time, at the end.

**Resuming.** Without ``--force`` a submission is graded when nbgrader would grade it: it has no
autograded notebook yet (new, or its grading failed: nbgrader removes what it could not finish), or
its ``timestamp.txt`` is newer than the autograded one (the student resubmitted). A second call
after an interruption therefore grades only what is new or failed (:func:`to_grade`).

**Threads.** N kernels share the machine's cores: each gets ``OMP_NUM_THREADS = cores // N``
(at least 1) unless the caller set it, so N kernels do not each start one thread per core.

What each run leaves in ``reports/`` of the course: ``times/<ID>.json`` (seconds per submission,
for the class report) and ``autograde/<ID>/*.log`` (nbgrader's output, one file per batch).
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

__all__ = ["Graded", "default_jobs", "submissions", "to_grade", "batches", "grade_all"]

@dataclass(frozen=True)
class Graded:
    """How one submission's grading ended."""

    student: str
    graded: bool             # it has an autograded notebook now
    seconds: float           # its kernel's time (the sandbox's record), else its share of its batch's time


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


def batches(students: list[str], jobs: int, size: int | None = None) -> list[list[str]]:
    """Split the students into batches for ``jobs`` workers: about four per worker, 1 to 25 students each.

    One nbgrader process per batch, not per student: starting nbgrader costs about 4.5 s of imports
    on a laptop, a third of a small notebook's grading. Four batches per worker keep every worker
    busy to the end when some submissions take longer than others.
    """
    size = size or max(1, min(25, -(-len(students) // (4 * jobs))))
    return [students[i:i + size] for i in range(0, len(students), size)]


def _selects(batch: list[str], everyone: list[str]) -> list[str]:
    """nbgrader options that select exactly ``batch`` among ``everyone`` who submitted."""
    if len(batch) == 1:
        # glob.escape: nbgrader globs the student id, and "[" in a folder name is a pattern.
        return [f"--student={glob.escape(batch[0])}"]
    others = sorted(set(everyone) - set(batch))
    return ["--student=*", f"--CourseDirectory.student_id_exclude={','.join(others)}"]


def _batchable(student: str) -> bool:
    """nbgrader's exclude list is comma-separated, and its student glob is a pattern."""
    return "," not in student and glob.escape(student) == student


def _failed_alone(log_text: str, assignment: str, student: str) -> bool:
    """nbgrader tried this submission and it failed on its own (not a batch cut short)."""
    return f"There was an error processing assignment '{assignment}' for student '{student}'" in log_text


def grade_all(course: Path, assignment: str, command: list[str], *, env: dict[str, str], jobs: int,
              students: list[str], kernel_args=None, batch_size: int | None = None,
              echo=print) -> list[Graded]:
    """Grade ``students`` with ``command`` (``nbgrader autograde ID ...``), ``jobs`` processes at a time.

    Each process grades one batch (:func:`batches`). nbgrader goes on past a submission that fails,
    but stops the whole batch on a gradebook error (sqlite refusing a write while another process
    holds the lock) or a broken submission; whoever in a batch was not attempted is then graded
    again alone. ``kernel_args(worker)`` gives the extra options of worker 0..jobs-1 (the sandbox
    names each worker's kernel sockets apart).
    """
    course = Path(course)
    logs = course / "reports" / "autograde" / assignment
    logs.mkdir(parents=True, exist_ok=True)
    env = _threads_per_kernel(env, jobs)
    everyone = submissions(course, assignment)
    workers: queue.Queue[int] = queue.Queue()
    for worker in range(jobs):
        workers.put(worker)
    seconds: dict[str, float] = {}
    tried_alone: set[str] = set()
    for student in students:    # a record left by an earlier run must not pass for this one's
        (course / "reports" / "sandbox" / assignment / f"{student}.json").unlink(missing_ok=True)

    def run(batch: list[str]) -> None:
        worker = workers.get()
        try:
            extra = kernel_args(worker) if kernel_args else []
            log = logs / f"{batch[0]}.log" if len(batch) == 1 else logs / f"batch-{batch[0]}-{batch[-1]}.log"
            started = time.monotonic()
            with open(log, "w") as out:
                subprocess.run([*command, *extra, *_selects(batch, everyone)], cwd=course, env=env,
                               stdout=out, stderr=subprocess.STDOUT)
            elapsed = time.monotonic() - started
        finally:
            workers.put(worker)
        text = log.read_text(errors="replace")
        for student in batch:
            seconds[student] = _kernel_seconds(course, assignment, student, default=elapsed / len(batch))
            if not _is_graded(course, assignment, student) and _failed_alone(text, assignment, student):
                tried_alone.add(student)
        done = sum(_is_graded(course, assignment, s) for s in batch)
        echo(f"  {done}/{len(batch)} graded in {elapsed:.0f} s: {_names(batch)}", flush=True)

    batchable = [s for s in students if _batchable(s)]
    plan = batches(batchable, jobs, batch_size) + [[s] for s in students if not _batchable(s)]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(run, plan))
    again = [s for s in students if not _is_graded(course, assignment, s) and s not in tried_alone]
    if again:
        echo(f"sslcourse autograde: a batch stopped early (a busy gradebook or a broken submission); grading "
             f"{len(again)} submission(s) again, each on its own: {_names(again)}", flush=True)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(run, [[s] for s in again]))
    results = [Graded(s, _is_graded(course, assignment, s), round(seconds.get(s, 0.0), 1)) for s in students]
    _record_times(course, assignment, results)
    return results


def _names(students: list[str], shown: int = 6) -> str:
    return ", ".join(students[:shown]) + (f" and {len(students) - shown} more" if len(students) > shown else "")


def _is_graded(course: Path, assignment: str, student: str) -> bool:
    return any((course / "autograded" / student / assignment).glob("*.ipynb"))


def _kernel_seconds(course: Path, assignment: str, student: str, *, default: float) -> float:
    """The seconds the sandbox recorded for this submission's kernel, else ``default``."""
    record = course / "reports" / "sandbox" / assignment / f"{student}.json"
    try:
        return float(json.loads(record.read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return default


def _record_times(course: Path, assignment: str, results) -> None:
    """Merge the seconds of this run into ``reports/times/<assignment>.json`` ({student: seconds})."""
    path = course / "reports" / "times" / f"{assignment}.json"
    try:
        times = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        times = {}
    times.update({r.student: r.seconds for r in results if r.graded})
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(dict(sorted(times.items())), indent=1)))
