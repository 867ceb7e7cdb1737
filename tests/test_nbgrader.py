"""nbgrader round trips on a temporary copy of the course: release, validate, autograde, feedback, export.

Everything runs in a copy of solutions/, notebooks/ and nbgrader_config.py, through nbgrader's
command line with this environment's ``bin`` first on ``PATH``; ``gradebook.db``, ``submitted/``
and ``autograded/`` never touch the work tree.

One course copy serves every grading test: for each assignment a handful of students submit,
and one ``sslcourse autograde <id>`` call (nbgrader autograde, each kernel sandboxed where the
machine allows it) grades them all:

==========  ===============================================================  =========================
student     submits                                                          expected
==========  ===============================================================  =========================
perfect     the solution notebook                                            full automatic score
release     the committed release, its first test cell replaced by ``pass``  0: the edited test is
                                                                             restored, the rest fail
raises      the solution, one graded function's body ``raise ValueError``    all but that exercise
mutant      the solution with the last exercise's first mutant of            all but that exercise
            ``tests/mutants.py`` (a plausible mistake, not a crash)
noisy       the solution, its first graded function also warns, prints to    full automatic score
            stderr, draws a tqdm bar and sleeps 0.2 s per call
tamper      the solution, its first graded function broken, and the check    no points for it; flagged
            helpers replaced by no-ops in the same cell                      in the grading report
stripped    the solution up to its first exercise's tests, without nbgrader  0, silently
            cell metadata (one assignment only)
restored    ``stripped`` after the repair: metadata copied back from the     that exercise's points
            release by cell id (one assignment only)
==========  ===============================================================  =========================

Three full runs per assignment (plus ``validate --invert``) keep the module to a few minutes per
notebook; the two metadata cases demonstrate nbgrader's behaviour, so a short prefix of one
notebook suffices for them.

Scores are read back through the gradebook (in a subprocess) and the CSV export; the autograded
notebooks are read only to explain a lost point.
"""
from __future__ import annotations

import ast
import copy
import csv
import filecmp
import html as htmllib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest

from sslcourse.grading import restore_nbgrader_metadata

from conftest import (RELEASE, SCRATCH_PATTERNS, SOLUTIONS, assignment_ids, copy_course, notebook_path,
                      run_tool, tool_env)
from mutants import MUTANTS

pytestmark = pytest.mark.slow

ASSIGNMENTS = assignment_ids()

# Per-cell grades of every submission, from nbgrader's gradebook, printed as JSON.
DUMP_GRADES = """
import json, sys
from nbgrader.api import Gradebook
grades = {}
with Gradebook(sys.argv[1]) as gb:
    for assignment in gb.assignments:
        for submission in gb.assignment_submissions(assignment.name):
            cells = grades.setdefault(assignment.name, {}).setdefault(submission.student.id, {})
            for notebook in submission.notebooks:
                for grade in notebook.grades:
                    cells[grade.name] = {"cell_type": grade.cell_type, "auto_score": grade.auto_score,
                                         "score": grade.score, "max_score": grade.max_score}
print(json.dumps(grades))
"""


# --- notebook surgery -----------------------------------------------------------------

def _nbgrader(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def autograded_test_cells(nb) -> list[str]:
    """grade ids of the code cells nbgrader scores automatically."""
    return [_nbgrader(c)["grade_id"] for c in nb.cells
            if c.cell_type == "code" and _nbgrader(c).get("grade") and not _nbgrader(c).get("solution")]


def exercises(nb) -> list[tuple[int, list[str]]]:
    """(index of a solution code cell, grade ids of the test cells that follow it before the next one)."""
    found = []
    for index, cell in enumerate(nb.cells):
        meta = _nbgrader(cell)
        if cell.cell_type == "code" and meta.get("solution") and not meta.get("grade"):
            found.append((index, []))
        elif found and cell.cell_type == "code" and meta.get("grade") and not meta.get("solution"):
            found[-1][1].append(meta["grade_id"])
    return [(index, tests) for index, tests in found if tests]


def _function_to_break(tree: ast.Module) -> ast.FunctionDef | None:
    """The first top-level function of a cell, else the first method of its first class."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            return node
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            methods = [n for n in node.body if isinstance(n, ast.FunctionDef)]
            preferred = [m for m in methods if m.name in ("forward", "__call__")]
            if preferred or methods:
                return (preferred or methods)[0]
    return None


def break_one_exercise(solution) -> tuple[object, str, list[str]] | None:
    """Copy of the solution whose first gradable function raises ValueError("boom").

    Returns the notebook, the function's name and the grade ids of its exercise's test cells,
    or None when no solution cell defines a function followed by a test cell.
    """
    nb = copy.deepcopy(solution)
    for index, tests in exercises(nb):
        try:
            tree = ast.parse(nb.cells[index].source)
        except SyntaxError:  # IPython magics: not plain Python
            continue
        target = _function_to_break(tree)
        if target is not None:
            target.body = [ast.parse('raise ValueError("boom")').body[0]]
            nb.cells[index].source = ast.unparse(tree)
            return nb, target.name, tests
    return None


def mutate_last_exercise(solution, assignment: str) -> tuple[object, str, list[str]] | None:
    """Copy of the solution with the first mutant of its last exercise (tests/mutants.py) applied.

    Returns the notebook, the mistake and the grade ids of that exercise's test cells, or None.
    """
    nb = copy.deepcopy(solution)
    found = exercises(nb)
    if not found or assignment not in MUTANTS:
        return None
    index, tests = found[-1]
    grade_id = _nbgrader(nb.cells[index])["grade_id"]
    mutant = next((m for m in MUTANTS[assignment] if m.exercise == grade_id), None)
    if mutant is None:
        return None
    for old, new in mutant.edits:
        nb.cells[index].source = nb.cells[index].source.replace(old, new)
    return nb, mutant.mistake, tests


NOISE = """
import sys as _sys, time as _time, warnings as _warnings
from tqdm.auto import tqdm as _tqdm
_warnings.warn("debug: checking my shapes")
print("debug: called", file=_sys.stderr)
for _ in _tqdm(range(3), desc="my own loop"):
    pass
_time.sleep(0.2)
"""


def make_noisy(solution) -> tuple[object, str] | None:
    """Copy of the solution whose first gradable function warns, writes to stderr and is slow: still correct."""
    nb = copy.deepcopy(solution)
    for index, _tests in exercises(nb):
        try:
            tree = ast.parse(nb.cells[index].source)
        except SyntaxError:
            continue
        target = _function_to_break(tree)
        if target is not None:
            target.body[1:1] = ast.parse(NOISE).body     # after the docstring
            nb.cells[index].source = ast.unparse(tree)
            return nb, target.name
    return None


TAMPER = """
from sslcourse import checks as _quiet
_quiet.check_close = _quiet.check_true = _quiet.check_tensor = _quiet.check_equal = (lambda *args, **kwargs: None)
"""


def make_tamperer(solution) -> tuple[object, str, list[str]] | None:
    """Copy of the solution whose first graded function is wrong and whose cell silences the checks."""
    broken = break_one_exercise(solution)
    if broken is None:
        return None
    nb, name, tests = broken
    index = next(index for index, cell_tests in exercises(nb) if cell_tests == tests)
    nb.cells[index].source += "\n" + TAMPER
    return nb, name, tests


def replace_first_test_by_pass(release) -> tuple[object, str]:
    nb = copy.deepcopy(release)
    for cell in nb.cells:
        if cell.cell_type == "code" and _nbgrader(cell).get("grade") and not _nbgrader(cell).get("solution"):
            cell.source = "pass"
            return nb, _nbgrader(cell)["grade_id"]
    raise ValueError("the release has no autograded test cell")


def up_to_first_exercise(nb):
    """The notebook's cells up to the last test cell of its first exercise."""
    nb = copy.deepcopy(nb)
    found = exercises(nb)
    first_tests = found[0][1] if found else autograded_test_cells(nb)[:1]
    last = max(i for i, cell in enumerate(nb.cells) if _nbgrader(cell).get("grade_id") in first_tests)
    nb.cells = nb.cells[:last + 1]
    return nb, first_tests


def strip_nbgrader_metadata(nb):
    """What a tool that rewrites a notebook without its cell metadata does (some editors, converters and
    notebook-cleaning scripts): the cells keep their ids and sources but lose their nbgrader tags."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        cell.metadata.pop("nbgrader", None)
        cell.metadata.pop("deletable", None)
        cell.metadata.pop("editable", None)
    return nb


# --- the course copy ------------------------------------------------------------------

@dataclass
class GradedCourse:
    root: Path
    env: dict
    grades: dict  # grades[assignment][student][grade_id] = {"cell_type", "auto_score", "score", "max_score"}
    broken: dict = field(default_factory=dict)    # assignment -> (function name, test cells of its exercise)
    mutated: dict = field(default_factory=dict)   # assignment -> (the mistake, test cells of its exercise)
    noisy: dict = field(default_factory=dict)     # assignment -> the function that warns and prints to stderr
    tampered_checks: dict = field(default_factory=dict)  # assignment -> (function name, its test cells)
    tampered: dict = field(default_factory=dict)  # assignment -> grade id of the test cell replaced by pass
    stripped: tuple = ()  # (assignment, test cells the stripped submission holds), for one assignment

    def auto_scores(self, assignment: str, student: str) -> dict[str, float]:
        """Automatic score per autograded code cell (a cell nbgrader never graded counts 0)."""
        cells = self.grades[assignment][student]
        return {name: (g["auto_score"] or 0.0) for name, g in cells.items() if g["cell_type"] == "code"}

    def auto_max(self, assignment: str, student: str) -> dict[str, float]:
        cells = self.grades[assignment][student]
        return {name: g["max_score"] for name, g in cells.items() if g["cell_type"] == "code"}

    def report(self, assignment: str) -> dict[str, dict[str, str]]:
        """``sslcourse report`` of the assignment, run as the instructor would: the CSV rows by student."""
        run_tool([sys.executable, "-m", "sslcourse.cli", "report", assignment, "--course", str(self.root)],
                 cwd=self.root, env=self.env)
        with open(self.root / "reports" / f"{assignment}.csv", newline="") as f:
            return {row["student"]: row for row in csv.DictReader(f)}

    def cell_outputs(self, assignment: str, student: str, cells) -> str:
        """What the given test cells printed in the autograded notebook: the why behind a score."""
        path = notebook_path(self.root / "autograded" / student, assignment)
        nb = nbformat.read(path, as_version=4)
        report = [f"(autograded notebook: {path})"]
        for cell in nb.cells:
            if _nbgrader(cell).get("grade_id") in cells:
                shown = []
                for output in cell.get("outputs", []):
                    if output.output_type == "error":
                        shown.append(f"{output.ename}: {output.evalue}")
                    elif output.output_type == "stream" and output.name == "stderr":
                        shown.append(f"stderr: {output.text[:300]}")
                    elif output.output_type == "execute_result":
                        shown.append(f"ends in a value: {output.data.get('text/plain', '')[:100]}")
                report.append(f"  {_nbgrader(cell)['grade_id']}: " + ("; ".join(shown) or "no error output"))
        return "\n".join(report)


def nbgrader(course: Path, env: dict, *args: str, check: bool = True):
    return run_tool(["nbgrader", *args, f"--CourseDirectory.root={course}"], cwd=course, env=env, check=check)


def submit(course: Path, student: str, assignment: str, nb) -> None:
    folder = course / "submitted" / student / assignment
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / f"{assignment}.ipynb")


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    return copy_course(tmp_path_factory.mktemp("course"))


@pytest.fixture(scope="module")
def env(tmp_path_factory, course_data_dir) -> dict:
    scratch = tmp_path_factory.mktemp("nbgrader-env")
    course_data_dir.chmod(0o755)  # a dataset cache is readable by all (the sandbox's uid reads it)
    return tool_env(data=course_data_dir, results=scratch / "results", config_dir=scratch / "jupyter-config")


@pytest.fixture(scope="module")
def graded(course, env) -> GradedCourse:
    # Register every assignment's grade cells in the gradebook. That release goes to a folder
    # of its own: students submit the committed notebooks/, as they would.
    nbgrader(course, env, "generate_assignment", "*", "--force",
             "--CourseDirectory.release_directory=release_with_db")
    result = GradedCourse(root=course, env=env, grades={})
    for assignment in ASSIGNMENTS:
        solution = nbformat.read(notebook_path(course / "solutions", assignment), as_version=4)
        release_path = notebook_path(course / "notebooks", assignment)
        if not release_path.exists():  # test_committed_release_matches_solutions reports this
            release_path = notebook_path(course / "release_with_db", assignment)
        release = nbformat.read(release_path, as_version=4)
        submit(course, "perfect", assignment, solution)
        if not autograded_test_cells(solution):
            submit(course, "release", assignment, release)
        else:
            edited, result.tampered[assignment] = replace_first_test_by_pass(release)
            submit(course, "release", assignment, edited)
            broken = break_one_exercise(solution)
            if broken is not None:
                raises, name, tests = broken
                result.broken[assignment] = (name, tests)
                submit(course, "raises", assignment, raises)
            noisy = make_noisy(solution)
            if noisy is not None:
                result.noisy[assignment] = noisy[1]
                submit(course, "noisy", assignment, noisy[0])
            tamperer = make_tamperer(solution)
            if tamperer is not None:
                result.tampered_checks[assignment] = tamperer[1:]
                submit(course, "tamper", assignment, tamperer[0])
            mutated = mutate_last_exercise(solution, assignment)
            if mutated is not None:
                mutant_nb, mistake, tests = mutated
                result.mutated[assignment] = (mistake, tests)
                submit(course, "mutant", assignment, mutant_nb)
            if not result.stripped:
                prefix, tests = up_to_first_exercise(solution)
                result.stripped = (assignment, tests)
                stripped = strip_nbgrader_metadata(prefix)
                submit(course, "stripped", assignment, stripped)
                submit(course, "restored", assignment, restore_nbgrader_metadata(stripped, release)[0])
        # As an instructor grades: `sslcourse autograde`, each kernel in the sandbox where this
        # machine can build one (test_sandbox.py attacks it), then the grading report.
        run_tool([sys.executable, "-m", "sslcourse.cli", "autograde", assignment, "--course", str(course),
                  "--", "--force"], cwd=course, env=env)
    dump = run_tool([sys.executable, "-c", DUMP_GRADES, f"sqlite:///{course / 'gradebook.db'}"],
                    cwd=course, env=env)
    result.grades = json.loads(dump.stdout.strip().splitlines()[-1])
    return result


def _needs_tests(graded: GradedCourse, assignment: str) -> None:
    if assignment not in graded.tampered:
        pytest.skip(f"{assignment} has no autograded test cell (reflection only)")


# --- release ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def regenerated(course, env) -> Path:
    """The release regenerated from solutions/ into a separate folder, without a gradebook."""
    nbgrader(course, env, "generate_assignment", "*", "--no-db", "--force",
             "--CourseDirectory.release_directory=regenerated")
    return course / "regenerated"


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
            and not any(p.match(pattern) or pattern in p.parts for pattern in SCRATCH_PATTERNS)}


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_committed_release_matches_solutions(assignment, regenerated):
    committed = RELEASE / assignment
    assert committed.is_dir(), f"notebooks/{assignment}/ is missing: run `make release` and commit notebooks/."
    fresh = regenerated / assignment
    assert _tree(committed) == _tree(fresh), (
        f"notebooks/{assignment}/ holds {sorted(_tree(committed))} but solutions/{assignment}/ releases "
        f"{sorted(_tree(fresh))}: run `make release`.")
    differ = [name for name in sorted(_tree(fresh))
              if not filecmp.cmp(committed / name, fresh / name, shallow=False)]
    assert not differ, (f"notebooks/{assignment}/: {differ} differ from what solutions/{assignment}/ "
                        f"generates: run `make release` (never edit notebooks/ by hand).")


def test_every_release_has_a_solution():
    stale = sorted(set(assignment_ids(RELEASE)) - set(ASSIGNMENTS))
    assert not stale, f"notebooks/ holds {stale}, which solutions/ no longer has: delete them from notebooks/."


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_stubs_pass_no_test(assignment, course, env):
    """`nbgrader validate --invert`: no autograded test passes on the unanswered release."""
    released = notebook_path(course / "notebooks", assignment)
    if not released.exists():
        pytest.skip(f"notebooks/{assignment} is missing (test_committed_release_matches_solutions fails)")
    output = nbgrader(course, env, "validate", "--invert", str(released)).stdout
    assert "Success! The notebook does not pass any tests." in output, (
        f"{assignment}: a test passes on the release stubs, so it cannot tell an answer from none:\n"
        f"{output[-4000:]}")


# --- autograde ------------------------------------------------------------------------

@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_earns_full_automatic_score(assignment, graded):
    _needs_tests(graded, assignment)
    got, full = graded.auto_scores(assignment, "perfect"), graded.auto_max(assignment, "perfect")
    lost = {name: f"{got[name]:g} of {full[name]:g}" for name in full if got[name] != full[name]}
    assert not lost, (f"{assignment}: the solution loses points in {lost}.\n"
                      + graded.cell_outputs(assignment, "perfect", lost))


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_unanswered_release_scores_zero(assignment, graded):
    got = graded.auto_scores(assignment, "release")
    earned = {name: score for name, score in got.items() if score}
    assert not earned, f"{assignment}: the unanswered release earns points in {earned}"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_edited_test_cell_is_restored(assignment, graded):
    """A test cell replaced by `pass` would score full marks; nbgrader restores the original, which fails."""
    _needs_tests(graded, assignment)
    cell = graded.tampered[assignment]
    got = graded.auto_scores(assignment, "release")
    assert got[cell] == 0, (f"{assignment}: test cell {cell} was replaced by `pass` and scored {got[cell]:g}: "
                            f"nbgrader did not restore it")
    autograded = nbformat.read(notebook_path(graded.root / "autograded" / "release", assignment), as_version=4)
    solution = nbformat.read(notebook_path(SOLUTIONS, assignment), as_version=4)
    restored = {_nbgrader(c).get("grade_id"): c.source for c in autograded.cells}
    original = {_nbgrader(c).get("grade_id"): c.source for c in solution.cells}
    assert restored[cell] == original[cell], f"{assignment}: test cell {cell} was not restored with its hidden tests"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_exception_in_one_exercise_keeps_the_others_points(assignment, graded):
    _needs_tests(graded, assignment)
    if assignment not in graded.broken:
        pytest.skip(f"{assignment}: no solution cell defines a function followed by a test cell")
    name, broken_tests = graded.broken[assignment]
    got = graded.auto_scores(assignment, "raises")
    for cell in broken_tests:
        assert got[cell] == 0, f"{assignment}: {name} raises ValueError, yet its test cell {cell} scored {got[cell]:g}"
    _assert_no_other_points_lost(graded, assignment, "raises", broken_tests, f"{name} broken")


def _assert_no_other_points_lost(graded: GradedCourse, assignment: str, student: str, own_tests, what: str) -> None:
    """Every test cell outside ``own_tests`` kept its full score: a test cell checks its own exercise only."""
    got, full = graded.auto_scores(assignment, student), graded.auto_max(assignment, student)
    lost = {cell: f"{got[cell]:g} of {full[cell]:g}" for cell in full if cell not in own_tests and got[cell] != full[cell]}
    assert not lost, (f"{assignment}: with only {what}, other exercises lose points: {lost}. "
                      f"A test cell must check its own exercise only.\n" + graded.cell_outputs(assignment, student, lost))


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_warnings_stderr_and_slowness_cost_a_correct_answer_nothing(assignment, graded):
    """nbgrader scores a test cell that writes to stderr as 0; checks.student reports it on stdout instead."""
    _needs_tests(graded, assignment)
    if assignment not in graded.noisy:
        pytest.skip(f"{assignment}: no solution cell defines a function")
    got, full = graded.auto_scores(assignment, "noisy"), graded.auto_max(assignment, "noisy")
    lost = {cell: f"{got[cell]:g} of {full[cell]:g}" for cell in full if got[cell] != full[cell]}
    assert not lost, (f"{assignment}: a correct {graded.noisy[assignment]} that warns and prints to stderr lost "
                      f"points: {lost}\n" + graded.cell_outputs(assignment, "noisy", lost))


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_a_plausible_mistake_loses_its_exercise_points_only(assignment, graded):
    """One full autograde of a mutant from tests/mutants.py: the points of that exercise are lost, no others."""
    _needs_tests(graded, assignment)
    if assignment not in graded.mutated:
        pytest.skip(f"{assignment}: no mutant in tests/mutants.py for its last exercise")
    mistake, tests = graded.mutated[assignment]
    got, full = graded.auto_scores(assignment, "mutant"), graded.auto_max(assignment, "mutant")
    assert sum(got[cell] for cell in tests) < sum(full[cell] for cell in tests), \
        f"{assignment}: the mistake '{mistake}' kept every point of its exercise"
    _assert_no_other_points_lost(graded, assignment, "mutant", tests, f"the mistake '{mistake}'")


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_silenced_checks_collect_no_points_and_are_reported(assignment, graded):
    """A wrong answer whose cell replaces the check helpers by no-ops: its tests still fail, and the
    grading report (sslcourse report, run outside the kernel) flags the submission for review."""
    _needs_tests(graded, assignment)
    if assignment not in graded.tampered_checks:
        pytest.skip(f"{assignment}: no solution cell defines a function followed by a test cell")
    name, tests = graded.tampered_checks[assignment]
    got = graded.auto_scores(assignment, "tamper")
    collected = {cell: got[cell] for cell in tests if got[cell] > 0}
    assert not collected, f"{assignment}: a broken {name} with silenced checks collected points: {collected}"
    reports = graded.report(assignment)
    flags = reports["tamper"]["tamper"]
    assert "assigns _quiet.check_close" in flags and "at test time: tampering detected" in flags, flags
    assert reports["tamper"]["needs_review"] == "True" and reports["perfect"]["needs_review"] == "False"
    assert reports["perfect"]["auto_score"] == reports["perfect"]["max_score"]
    assert "lost its nbgrader metadata" in reports.get("stripped", {"structure": "lost its nbgrader metadata"})["structure"]


def test_stripped_metadata_scores_zero_silently(graded):
    """Documents nbgrader 0.9.6: a submission without nbgrader cell metadata is graded as 0 with no error.

    Its test cells are not recognised, so they are never scored (`nbgrader validate` even reports
    success on such a notebook). The repair, copying the metadata back from the release by cell
    id as `sslcourse.grading.restore_nbgrader_metadata` does, gives the student their points again.
    """
    if not graded.stripped:
        pytest.skip("no assignment with an autograded exercise in solutions/")
    assignment, first_tests = graded.stripped
    assert "stripped" in graded.grades[assignment], "the stripped submission was not recorded at all"
    stripped = graded.auto_scores(assignment, "stripped")
    assert sum(stripped.values()) == 0, f"nbgrader now scores a stripped submission: {stripped}; update the docs"
    restored, perfect = graded.auto_scores(assignment, "restored"), graded.auto_scores(assignment, "perfect")
    expected = {cell: (score if cell in first_tests else 0.0) for cell, score in perfect.items()}
    assert restored == expected, (f"{assignment}: after restoring the metadata the first exercise scores "
                                  f"{restored}, not {expected}")


# --- feedback and export ------------------------------------------------------------------

def page_text(html: str) -> str:
    """What a reader sees of an HTML page: tags dropped, entities decoded, whitespace collapsed."""
    return " ".join(htmllib.unescape(re.sub(r"<[^>]+>", "", html)).split())


def hidden_and_visible_test_lines(assignment: str) -> tuple[list[str], list[str]]:
    """Code lines (whitespace collapsed, 25+ characters, no comments) of the solution's test cells: those only in
    hidden regions, and those in visible ones. A hidden line that also occurs in the release or in a solution cell
    is no secret (a perfect submission holds the solutions)."""
    solution = nbformat.read(notebook_path(SOLUTIONS, assignment), as_version=4)
    release = nbformat.read(notebook_path(RELEASE, assignment), as_version=4)

    def is_test(cell) -> bool:
        return cell.cell_type == "code" and bool(_nbgrader(cell).get("grade")) and not _nbgrader(cell).get("solution")

    elsewhere = " ".join(" ".join(cell.source.split())
                         for cell in release.cells + [cell for cell in solution.cells if not is_test(cell)])
    hidden, visible = [], []
    for cell in filter(is_test, solution.cells):
        in_hidden = False
        for line in cell.source.splitlines():
            if "BEGIN HIDDEN TESTS" in line or "END HIDDEN TESTS" in line:
                in_hidden = "BEGIN" in line
                continue
            code = " ".join(line.split())
            if len(code) >= 25 and not code.startswith("#"):
                (hidden if in_hidden else visible).append(code)
    return [line for line in hidden if line not in visible and line not in elsewhere], visible


def test_feedback_and_grade_export(graded):
    if not ASSIGNMENTS:
        pytest.skip("no assignment in solutions/")
    course, env = graded.root, graded.env
    nbgrader(course, env, "generate_feedback", "*", "--force")
    for assignment in ASSIGNMENTS:
        for student in graded.grades[assignment]:
            report = course / "feedback" / student / assignment / f"{assignment}.html"
            assert report.is_file() and report.stat().st_size > 0, f"no feedback at {report}"
    first = ASSIGNMENTS[0]
    report = (course / "feedback" / "perfect" / first / f"{first}.html").read_text()
    auto = sum(graded.auto_scores(first, "perfect").values())
    total = sum(g["max_score"] for g in graded.grades[first]["perfect"].values())
    assert f"Score: {auto:.1f} / {total:.1f}" in report, f"the feedback for {first} does not state the score"
    for assignment in ASSIGNMENTS:
        hidden, visible = hidden_and_visible_test_lines(assignment)
        if not hidden:
            continue
        html = (course / "feedback" / "perfect" / assignment / f"{assignment}.html").read_text()
        shown = page_text(html)
        # The control: the same reading finds the visible tests' code, so the search below can fail.
        assert any(line in shown for line in visible), f"{assignment}: no visible test line found in the feedback"
        leaked = [line for line in hidden if line in shown]
        assert not leaked and "BEGIN HIDDEN TESTS" not in shown, (
            f"{assignment}: the feedback shows the hidden tests' source, e.g. {leaked[:2]}")

    nbgrader(course, env, "export", f"--to={course / 'grades.csv'}")
    with open(course / "grades.csv", newline="") as handle:
        rows = {(row["assignment"], row["student_id"]): row for row in csv.DictReader(handle)}
    for assignment in ASSIGNMENTS:
        for student in graded.grades[assignment]:
            assert (assignment, student) in rows, f"grades.csv lacks {student}'s {assignment}"
        perfect = sum(graded.auto_scores(assignment, "perfect").values())
        assert float(rows[(assignment, "perfect")]["score"]) == pytest.approx(perfect)
        assert float(rows[(assignment, "release")]["score"]) == 0


def test_add_missing_cells_crashes_on_stripped_metadata(graded):
    """Documents nbgrader 0.9.6: `--OverwriteCells.add_missing_cells=True` is no remedy; it fails with KeyError."""
    if not graded.stripped:
        pytest.skip("no assignment with an autograded exercise in solutions/")
    assignment = graded.stripped[0]
    stripped = nbformat.read(notebook_path(graded.root / "submitted" / "stripped", assignment), as_version=4)
    submit(graded.root, "stripped_again", assignment, stripped)
    proc = nbgrader(graded.root, graded.env, "autograde", assignment, "--student=stripped_again", "--force",
                    "--OverwriteCells.add_missing_cells=True", check=False)
    assert proc.returncode != 0 and "KeyError" in proc.stdout, (
        "nbgrader no longer crashes with add_missing_cells on a stripped submission: "
        f"update the instructor notes.\n{proc.stdout[-3000:]}")
