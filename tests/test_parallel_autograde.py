"""``sslcourse autograde --jobs N``: the grades of nbgrader's serial loop, and a second call that resumes.

One copy of the course, one assignment (03_view_prediction, among the quickest to grade), three students:

=======  ============================================  ==========================================
student  submits                                       then
=======  ============================================  ==========================================
perfect  the solution                                  nothing: a resumed run must not touch it
blank    the release, unanswered                       its grading "failed" (the folder is gone)
mutant   a plausible mistake (tests/mutants.py)        resubmits the solution, newer timestamp
late     (nothing yet)                                 submits the solution after the first run
=======  ============================================  ==========================================

The class is graded by plain serial ``nbgrader autograde`` and by ``sslcourse autograde --jobs 2``
(sandboxed kernels, where bubblewrap works) and every cell's points must agree. The resumed run
goes through :func:`sslcourse.autograde.grade_all` with batches of two, so that nbgrader's
exclude list (several students in one process) is exercised too.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from conftest import copy_course, notebook_path, run_tool, tool_env
from mutants import MUTANTS
from sslcourse.autograde import batches, grade_all, to_grade

ASSIGNMENT = "03_view_prediction"

GRADES = """
import json, sys
from nbgrader.api import Gradebook
with Gradebook(sys.argv[1]) as gb:
    print(json.dumps({s.student.id: {g.name: g.auto_score for nb in s.notebooks for g in nb.grades
                                     if g.cell_type == "code"} for s in gb.assignment_submissions(sys.argv[2])}))
"""


# --- without nbgrader: how students are split and selected ------------------------------------

def test_batches_cover_every_student_once_about_four_per_worker():
    students = [f"s{n:03d}" for n in range(100)]
    plan = batches(students, jobs=2)
    assert [s for batch in plan for s in batch] == students
    assert len(plan) == 8 and max(map(len, plan)) == 13          # ceil(100 / (4 * 2))
    assert batches(students[:3], jobs=2) == [["s000"], ["s001"], ["s002"]]
    assert max(map(len, batches(students * 30, jobs=2))) == 25    # a batch never grows past 25


def test_to_grade_follows_nbgrader_rule(tmp_path):
    def folder(step: str, student: str, stamp: str | None = None) -> Path:
        path = tmp_path / step / student / ASSIGNMENT
        path.mkdir(parents=True)
        (path / f"{ASSIGNMENT}.ipynb").write_text("{}")
        if stamp:
            (path / "timestamp.txt").write_text(stamp)
        return path

    folder("submitted", "done", "2026-12-01 10:00:00 UTC"), folder("autograded", "done", "2026-12-01 10:00:00 UTC")
    folder("submitted", "again", "2026-12-02 10:00:00 UTC"), folder("autograded", "again", "2026-12-01 10:00:00 UTC")
    folder("submitted", "new")
    folder("submitted", "failed"), (tmp_path / "autograded" / "failed" / ASSIGNMENT).mkdir(parents=True)
    assert to_grade(tmp_path, ASSIGNMENT) == ["again", "failed", "new"]
    assert to_grade(tmp_path, ASSIGNMENT, force=True) == ["again", "done", "failed", "new"]


# --- with nbgrader -----------------------------------------------------------------------------

@dataclass
class Course:
    root: Path
    env: dict

    def grades(self) -> dict[str, dict[str, float]]:
        out = run_tool([sys.executable, "-c", GRADES, f"sqlite:///{self.root / 'gradebook.db'}", ASSIGNMENT],
                       cwd=self.root, env=self.env).stdout
        return json.loads(out.strip().splitlines()[-1])

    def submit(self, student: str, nb, stamp: str) -> None:
        folder = self.root / "submitted" / student / ASSIGNMENT
        folder.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, folder / f"{ASSIGNMENT}.ipynb")
        (folder / "timestamp.txt").write_text(stamp)

    def autograded(self, student: str) -> Path:
        return notebook_path(self.root / "autograded" / student, ASSIGNMENT)


def mistaken(solution):
    """The solution with the first mutant of the assignment (one plausible mistake)."""
    mutant = MUTANTS[ASSIGNMENT][0]
    nb = nbformat.from_dict(json.loads(json.dumps(solution)))
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == mutant.exercise)
    for old, new in mutant.edits:
        cell.source = cell.source.replace(old, new)
    return nb


@pytest.fixture(scope="module")
def course(tmp_path_factory, course_data_dir) -> Course:
    root = copy_course(tmp_path_factory.mktemp("course"))
    scratch = tmp_path_factory.mktemp("parallel-env")
    course_data_dir.chmod(0o755)   # the sandbox's uid reads the dataset cache
    env = tool_env(data=course_data_dir, results=scratch / "results", config_dir=scratch / "jupyter-config")
    run_tool(["nbgrader", "generate_assignment", ASSIGNMENT, "--force",
              "--CourseDirectory.release_directory=release_with_db"], cwd=root, env=env)
    course = Course(root, env)
    solution = nbformat.read(notebook_path(root / "solutions", ASSIGNMENT), as_version=4)
    release = nbformat.read(notebook_path(root / "notebooks", ASSIGNMENT), as_version=4)
    course.submit("perfect", solution, "2026-12-01 10:00:00.000000 UTC")
    course.submit("blank", release, "2026-12-01 10:00:00.000000 UTC")
    course.submit("mutant", mistaken(solution), "2026-12-01 10:00:00.000000 UTC")
    return course


def sslcourse_autograde(course: Course, *args: str) -> str:
    return run_tool([sys.executable, "-m", "sslcourse.cli", "autograde", ASSIGNMENT, "--course", str(course.root),
                     *args], cwd=course.root, env=course.env).stdout


@pytest.mark.slow
def test_parallel_grades_equal_serial_nbgrader_then_resume(course):
    # nbgrader's own serial loop, plain kernels.
    run_tool(["nbgrader", "autograde", ASSIGNMENT, "--force"], cwd=course.root, env=course.env)
    serial = course.grades()
    full = {cell: score for cell, score in serial["perfect"].items()}
    assert all(score > 0 for score in full.values()), serial
    assert all(score == 0 for score in serial["blank"].values()), serial
    assert sum(serial["mutant"].values()) < sum(full.values()), "the mutant must lose points, or equality proves little"

    out = sslcourse_autograde(course, "--jobs", "2", "--", "--force")
    assert "3 submission(s) to grade" in out, out
    assert course.grades() == serial, "--jobs 2 must give every cell exactly nbgrader's serial points"
    times = json.loads((course.root / "reports" / "times" / f"{ASSIGNMENT}.json").read_text())
    assert sorted(times) == ["blank", "mutant", "perfect"] and all(t > 0 for t in times.values()), times

    # Resumed with nothing new: no submission is graded again.
    untouched = {s: os.stat(course.autograded(s)).st_mtime_ns for s in ("perfect", "blank", "mutant")}
    out = sslcourse_autograde(course, "--jobs", "2")
    assert "0 submission(s) to grade, 3 already graded and unchanged" in out, out
    assert {s: os.stat(course.autograded(s)).st_mtime_ns for s in untouched} == untouched

    # A late submission, a grading that failed (nbgrader removes what it could not finish), a resubmission.
    solution = nbformat.read(notebook_path(course.root / "solutions", ASSIGNMENT), as_version=4)
    course.submit("late", solution, "2026-12-03 10:00:00.000000 UTC")
    shutil.rmtree(course.root / "autograded" / "blank")
    course.submit("mutant", solution, "2026-12-02 10:00:00.000000 UTC")
    todo = to_grade(course.root, ASSIGNMENT)
    assert todo == ["blank", "late", "mutant"], todo
    results = grade_all(course.root, ASSIGNMENT, ["nbgrader", "autograde", ASSIGNMENT], env=course.env, jobs=2,
                        students=todo, batch_size=2, echo=lambda *a, **k: None)
    assert [(r.student, r.graded) for r in results] == [("blank", True), ("late", True), ("mutant", True)]
    logs = sorted(p.name for p in (course.root / "reports" / "autograde" / ASSIGNMENT).glob("batch-*.log"))
    assert "batch-blank-late.log" in logs, logs         # two students in one nbgrader process
    after = course.grades()
    assert after["perfect"] == serial["perfect"] and after["blank"] == serial["blank"]
    assert after["mutant"] == full and after["late"] == full, "the resubmission and the late one earn full points"
    assert os.stat(course.autograded("perfect")).st_mtime_ns == untouched["perfect"]
