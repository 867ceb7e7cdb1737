"""The gradebook on a real PostgreSQL server, one the test starts (tests/postgres.py): no sqlite anywhere.

A course graded by several people on JupyterHub keeps its gradebook in PostgreSQL; the instructor passes
its URL to nbgrader (``--CourseDirectory.db_url``) and to ``sslcourse autograde`` and ``sslcourse report``
(``--db``). One copy of the course, one assignment (00_foundations, the quickest to grade), two students:

=======  ==================================  ===========================
student  submits                             expected automatic score
=======  ==================================  ===========================
perfect  the solution notebook               every test cell's points
blank    the committed release, unanswered   0
=======  ==================================  ===========================

The expected scores are the points in the solution's cell metadata, which is what the default sqlite
gradebook records for these two submissions (tests/test_nbgrader.py grades them that way).
"""
from __future__ import annotations

import csv
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from conftest import copy_course, notebook_path, run_tool, tool_env

pytestmark = pytest.mark.slow

ASSIGNMENT = "00_foundations"


@dataclass
class Course:
    root: Path
    env: dict
    url: str          # the PostgreSQL gradebook


def submit(course: Path, student: str, notebook: Path) -> None:
    folder = course / "submitted" / student / ASSIGNMENT
    folder.mkdir(parents=True)
    shutil.copy2(notebook, folder / f"{ASSIGNMENT}.ipynb")


def autograded_points(course: Path) -> dict[str, float]:
    """Points of each autograded test cell of the assignment, from the solution's nbgrader metadata."""
    solution = nbformat.read(notebook_path(course / "solutions", ASSIGNMENT), as_version=4)
    return {cell.metadata.nbgrader.grade_id: float(cell.metadata.nbgrader.points) for cell in solution.cells
            if cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("grade")}


def postgres_grades(url: str) -> dict[str, dict[str, tuple[float | None, float]]]:
    """(automatic score, max score) of every graded code cell, by student, read from the gradebook at ``url``."""
    from nbgrader.api import Gradebook

    grades = {}
    with Gradebook(url) as gradebook:
        for submission in gradebook.assignment_submissions(ASSIGNMENT):
            grades[submission.student.id] = {grade.name: (grade.auto_score, grade.max_score)
                                             for notebook in submission.notebooks for grade in notebook.grades
                                             if grade.cell.cell_type == "code"}
    return grades


@pytest.fixture(scope="module")
def graded(postgres_url, tmp_path_factory, course_data_dir) -> Course:
    """The course released and autograded into the PostgreSQL gradebook, as an instructor would."""
    root = copy_course(tmp_path_factory.mktemp("course"))
    scratch = tmp_path_factory.mktemp("postgres-env")
    course_data_dir.chmod(0o755)  # the sandbox's uid reads the dataset cache
    env = tool_env(data=course_data_dir, results=scratch / "results", config_dir=scratch / "jupyter-config")
    # Registers the grade cells in the gradebook; students submit the committed release, so this one goes aside.
    run_tool(["nbgrader", "generate_assignment", ASSIGNMENT, "--force", f"--CourseDirectory.db_url={postgres_url}",
              "--CourseDirectory.release_directory=release_with_db"], cwd=root, env=env)
    submit(root, "perfect", notebook_path(root / "solutions", ASSIGNMENT))
    submit(root, "blank", notebook_path(root / "notebooks", ASSIGNMENT))
    run_tool([sys.executable, "-m", "sslcourse.cli", "autograde", ASSIGNMENT, "--course", str(root),
              "--db", postgres_url, "--jobs", "2"], cwd=root, env=env)
    return Course(root, env, postgres_url)


def test_no_sqlite_gradebook_was_made(graded):
    assert not (graded.root / "gradebook.db").exists(), "nbgrader or sslcourse wrote to sqlite despite --db"
    assert sorted(postgres_grades(graded.url)) == ["blank", "perfect"]


def test_perfect_submission_gets_every_point(graded):
    expected = autograded_points(graded.root)
    assert expected, f"{ASSIGNMENT} has no autograded test cell: pick another assignment"
    grades = postgres_grades(graded.url)["perfect"]
    assert grades == {name: (points, points) for name, points in expected.items()}


def test_blank_submission_gets_zero(graded):
    grades = postgres_grades(graded.url)["blank"]
    assert {name: auto for name, (auto, _) in grades.items()} == {name: 0.0 for name in autograded_points(graded.root)}


def test_report_reads_the_postgres_gradebook(graded):
    csv_path = graded.root / "reports" / f"{ASSIGNMENT}.csv"
    csv_path.unlink(missing_ok=True)      # `sslcourse autograde` wrote one already
    run_tool([sys.executable, "-m", "sslcourse.cli", "report", ASSIGNMENT, "--course", str(graded.root),
              "--db", graded.url], cwd=graded.root, env=graded.env)
    with open(csv_path, newline="") as f:
        rows = {row["student"]: (row["auto_score"], row["max_score"]) for row in csv.DictReader(f)}
    full = sum(autograded_points(graded.root).values())
    assert rows == {"perfect": (str(full), str(full)), "blank": ("0.0", str(full))}
