"""The class report (sslcourse/class_report.py) on a small course built with nbgrader's own Gradebook API.

No notebook is executed: the gradebook gets chosen auto scores, and ``submitted/`` and ``autograded/``
hold tiny notebooks that raise the flags the grading report looks for. The course:

student                      a1 (test cells worth 1, 2, 3)       a2 (one cell, 4)  flagged in a1 because
alice                        1 + 2 + 3 = 6                       4                 -
bob                          1 + 2 + 0 = 3                       no submission     his notebook lost its metadata
<script>alert("x")           1 + 1.5 + 0 = 2.5                   no submission     "tampering detected" at test time
carol                        no submission                       no submission     -

a1 also has a markdown cell graded by hand (2 points): not automatic points, so in no maximum.
a1's grading times are in reports/times/a1.json; a2 has none ("not recorded").
"""
from __future__ import annotations

import base64
import csv
import json
import shutil

import nbformat
import pytest

from sslcourse import cli
from sslcourse.class_report import read_gradebook, read_times, write_class_report
from sslcourse.grading import gradebook_url

# nbgrader's own add_submission trips SQLAlchemy's autoflush warnings; they are nbgrader's, not ours.
pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")

HOSTILE = '<script>alert("x")'
CELLS = {"a1": {"test_easy": 1.0, "test_mid": 2.0, "test_hard": 3.0}, "a2": {"test_only": 4.0}}
AUTO = {  # assignment -> student -> grade id -> auto_score
    "a1": {"alice": {"test_easy": 1.0, "test_mid": 2.0, "test_hard": 3.0},
           "bob": {"test_easy": 1.0, "test_mid": 2.0, "test_hard": 0.0},
           HOSTILE: {"test_easy": 1.0, "test_mid": 1.5, "test_hard": 0.0}},
    "a2": {"alice": {"test_only": 4.0}},
}
STUDENTS = ["alice", "bob", "carol", HOSTILE]
TIMES_A1 = {"alice": 12.5, "bob": 30.0, HOSTILE: 600.0}


def _build_gradebook(course):
    from nbgrader.api import Gradebook

    with Gradebook(gradebook_url(course)) as gb:
        for assignment, cells in CELLS.items():
            gb.add_assignment(assignment)
            gb.add_notebook(assignment, assignment)
            for name, points in cells.items():
                gb.add_grade_cell(name, assignment, assignment, max_score=points, cell_type="code")
        gb.add_grade_cell("explain", "a1", "a1", max_score=2.0, cell_type="markdown")
        for student in STUDENTS:
            gb.add_student(student)
        for assignment, by_student in AUTO.items():
            for student, cells in by_student.items():
                gb.add_submission(assignment, student)
                for name, score in cells.items():
                    gb.find_grade(name, assignment, assignment, student).auto_score = score
                if assignment == "a1":
                    gb.find_grade("explain", "a1", "a1", student).manual_score = 2.0
        gb.db.commit()


def _notebook(error: str | None = None, metadata: bool = True):
    """An a1 notebook with one graded test cell; ``error``: the evalue of an error output it shows."""
    cell = nbformat.v4.new_code_cell("check(answer)")
    if metadata:
        cell.metadata["nbgrader"] = {"grade": True, "grade_id": "test_easy", "locked": True, "points": 1,
                                     "schema_version": 3, "solution": False, "task": False}
    if error:
        cell.outputs = [nbformat.v4.new_output("error", ename="AssertionError", evalue=error, traceback=[])]
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("answer = 1"), cell])


def _submit(course, student, submitted, autograded):
    for folder, notebook in (("submitted", submitted), ("autograded", autograded)):
        path = course / folder / student / "a1" / "a1.ipynb"
        path.parent.mkdir(parents=True)
        nbformat.write(notebook, path)


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    course = tmp_path_factory.mktemp("course")
    _build_gradebook(course)
    _submit(course, "alice", _notebook(), _notebook())
    _submit(course, "bob", _notebook(metadata=False), _notebook(metadata=False))
    _submit(course, HOSTILE, _notebook(), _notebook(error="tampering detected: <img src=x onerror=alert(1)>"))
    times = course / "reports" / "times" / "a1.json"
    times.parent.mkdir(parents=True)
    times.write_text(json.dumps(TIMES_A1))
    write_class_report(course)
    return course


@pytest.fixture(scope="module")
def page(course):
    return (course / "reports" / "class.html").read_text(encoding="utf-8")


def test_csv_has_one_row_per_student_and_empty_cells_for_missing_submissions(course):
    with open(course / "reports" / "class.csv", newline="", encoding="utf-8") as f:
        rows = {row["student"]: row for row in csv.DictReader(f)}
    assert list(rows) == sorted(STUDENTS)
    assert rows["alice"] == {"student": "alice", "a1": "6", "a2": "4", "total": "10", "maximum": "10"}
    assert rows["bob"] == {"student": "bob", "a1": "3", "a2": "", "total": "3", "maximum": "10"}
    assert rows[HOSTILE]["a1"] == "2.5" and rows[HOSTILE]["a2"] == ""
    assert rows["carol"] == {"student": "carol", "a1": "", "a2": "", "total": "0", "maximum": "10"}


def test_pass_rate_is_the_share_of_submissions_with_the_cells_full_points(course, page):
    _, grades = read_gradebook(gradebook_url(course))
    a1 = next(g for g in grades if g.name == "a1")
    by_student = AUTO["a1"]
    expected = {cell: sum(scores[cell] == points for scores in by_student.values()) / len(by_student)
                for cell, points in CELLS["a1"].items()}
    assert expected == {"test_easy": 1.0, "test_mid": 2 / 3, "test_hard": 1 / 3}
    assert a1.pass_rates() == pytest.approx(expected)
    assert a1.max_score == 6.0                   # the hand-graded markdown cell is not automatic
    # The hardest cell is the one highlighted, and the table lists it first.
    assert "<tr class=hardest><td>test_hard</td>" in page
    assert page.index(">test_hard<") < page.index(">test_mid<") < page.index(">test_easy<")
    assert ">33%<" in page and ">67%<" in page and ">1/3<" in page


def test_page_is_self_contained_with_one_image_per_plot(page):
    images = page.split('src="data:image/png;base64,')[1:]
    # a1: scores, test cells, times; a2: scores, test cells (its times are not recorded)
    assert len(images) == 5
    for image in images:
        assert base64.b64decode(image[:image.index('"')]).startswith(b"\x89PNG\r\n\x1a\n")
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_hostile_strings_are_escaped_and_flagged_students_listed_with_why(page):
    assert HOSTILE not in page and "&lt;script&gt;alert(&quot;x&quot;)" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    a1 = page[page.index('<section id="a1">'):page.index('<section id="a2">')]
    review = a1[a1.index("<h3>Needs review</h3>"):]
    assert "2 of 3 submission(s)" in review
    bob = review[review.index("<td>bob</td>"):]
    assert "lost its nbgrader metadata" in bob[:bob.index("</tr>")]
    hostile = review[review.index("<td>&lt;script&gt;"):]
    assert "tamper: test_easy, at test time: tampering detected" in hostile[:hostile.index("</tr>")]
    assert "<td>alice</td>" not in review


def test_times_say_not_recorded_without_a_file_and_fall_back_to_the_sandbox(page, course, tmp_path):
    a2 = page[page.index('<section id="a2">'):]
    assert "Time per submission: not recorded." in a2
    assert "not recorded" not in page[:page.index('<section id="a2">')]
    assert "from reports/times/a1.json" in page
    assert read_times(course, "a1") == (TIMES_A1, "reports/times/a1.json")
    sandbox = tmp_path / "reports" / "sandbox" / "a3"
    sandbox.mkdir(parents=True)
    (sandbox / "dan.json").write_text(json.dumps({"student": "dan", "exit_code": 0, "seconds": 41.5}))
    (sandbox / "eve.json").write_text("{ half written")
    assert read_times(tmp_path, "a3") == ({"dan": 41.5}, "the sandbox's records, reports/sandbox/a3/")
    assert read_times(tmp_path, "a4") == ({}, "not recorded")


def test_command_writes_the_chosen_assignments_and_refuses_unknown_ones(course, tmp_path, capsys):
    course = shutil.copytree(course, tmp_path / "course")     # the other tests read the module's pages
    assert cli.main(["class-report", "a2", "--course", str(course)]) == 0
    assert "1 assignments, 0 submission(s) to review" in capsys.readouterr().out
    with open(course / "reports" / "class.csv", newline="", encoding="utf-8") as f:
        assert next(csv.reader(f)) == ["student", "a2", "total", "maximum"]
    with pytest.raises(SystemExit, match="not in the gradebook: a9"):
        cli.main(["class-report", "a9", "--course", str(course)])
    with pytest.raises(SystemExit, match="no gradebook"):
        cli.main(["class-report", "--course", str(course / "empty")])
