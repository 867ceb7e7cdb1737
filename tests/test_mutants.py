"""The mutation check: every plausible mistake in tests/mutants.py fails one of its exercise's test cells.

The solution notebook's cells run in this process, in order, up to its last test cell (under the
smoke preset, as graded). Then, for each mutant, the solution cell of one exercise is replaced by
the mutated one, in a copy of that namespace, and the exercise's test cells (hidden tests
included) run against it. A mutant that passes them all is a mistake the autograder would reward.
"""
from __future__ import annotations

import contextlib
import io
import json

import pytest

from conftest import SOLUTIONS, notebook_path
from mutants import MUTANTS


def _cells(assignment: str) -> list[dict]:
    return [c for c in json.loads(notebook_path(SOLUTIONS, assignment).read_text())["cells"] if c["cell_type"] == "code"]


def _grade_id(cell: dict) -> str:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "?")


def _is_test(cell: dict) -> bool:
    return bool(cell.get("metadata", {}).get("nbgrader", {}).get("grade"))


def _is_solution(cell: dict) -> bool:
    return bool(cell.get("metadata", {}).get("nbgrader", {}).get("solution"))


def exercise_tests(cells: list[dict]) -> dict[str, list[dict]]:
    """Each solution cell's grade_id -> the test cells that follow it, up to the next solution cell."""
    tests, current = {}, None
    for cell in cells:
        if _is_solution(cell):
            current = _grade_id(cell)
            tests[current] = []
        elif _is_test(cell) and current is not None:
            tests[current].append(cell)
    return tests


def _run(source: str, namespace: dict, name: str) -> str | None:
    """Execute a cell; None if it passed, else the first line of what it raised."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(source, name, "exec"), namespace)
    except Exception as error:                       # noqa: BLE001 (any error fails a test cell)
        return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:160]}"
    return None


_BASES: dict[str, dict] = {}


@pytest.fixture
def base_namespace(course_data_dir, tmp_path_factory, monkeypatch):
    """The namespace after the notebook's cells up to its last test cell, computed once per notebook."""
    def build(assignment: str) -> dict:
        if assignment not in _BASES:
            from sslcourse import plots
            plots.use_agg_backend()
            monkeypatch.setenv("SSLCOURSE_FAST", "1")
            monkeypatch.setenv("SSLCOURSE_DATA", str(course_data_dir))
            monkeypatch.setenv("SSLCOURSE_RESULTS", str(tmp_path_factory.mktemp("results")))
            cells = _cells(assignment)
            last_test = max(i for i, c in enumerate(cells) if _is_test(c))
            namespace: dict = {"__name__": "__main__"}
            for cell in cells[:last_test + 1]:
                failed = _run("".join(cell["source"]), namespace, f"{assignment}#{_grade_id(cell)}")
                assert failed is None, f"{assignment}: the solution fails its own cell {_grade_id(cell)}: {failed}"
            _BASES[assignment] = namespace
        return dict(_BASES[assignment])
    return build


@pytest.mark.parametrize("assignment", sorted(MUTANTS))
def test_every_notebook_has_ten_mutants_covering_every_exercise(assignment):
    exercises = set(exercise_tests(_cells(assignment)))
    mutated = {mutant.exercise for mutant in MUTANTS[assignment]}
    assert len(MUTANTS[assignment]) >= 10
    assert mutated == exercises, f"exercises without a mutant: {sorted(exercises - mutated)}"


CASES = [(assignment, mutant) for assignment in sorted(MUTANTS) for mutant in MUTANTS[assignment]]


@pytest.mark.parametrize("assignment, mutant", CASES,
                         ids=[f"{a}:{mutant.exercise}:{mutant.mistake}" for a, mutant in CASES])
def test_mutant_fails_a_test_cell_of_its_exercise(assignment, mutant, base_namespace):
    cells = _cells(assignment)
    solution = next(c for c in cells if _is_solution(c) and _grade_id(c) == mutant.exercise)
    source = "".join(solution["source"])
    for old, new in mutant.edits:
        assert old in source, f"{mutant.exercise}: the mutant's text {old!r} is no longer in the solution"
        source = source.replace(old, new)
    namespace = base_namespace(assignment)
    defined = _run(source, namespace, f"{assignment}#{mutant.exercise} (mutant)")
    assert defined is None, f"the mutant does not even define its function: {defined}"
    outcomes = {_grade_id(test): _run("".join(test["source"]), namespace, f"{assignment}#{_grade_id(test)}")
                for test in exercise_tests(cells)[mutant.exercise]}
    assert any(outcomes.values()), (f"{assignment}, {mutant.exercise}: the mistake '{mutant.mistake}' passes every "
                                    f"test cell ({', '.join(outcomes)}): a test must catch it")
