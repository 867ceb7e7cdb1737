"""Every solution notebook runs end to end under the smoke preset (``SSLCOURSE_FAST=1``).

Each notebook runs from a temporary copy of its folder, as autograde runs it from
``autograded/<student>/<id>/``, with data and results in temporary folders. Besides
"no cell fails", the run checks the rules that keep grading honest (DESIGN.md):
a graded test cell writes nothing to stderr and does not end in a bare value (nbgrader
scores either as 0 or as partial credit), and the notebook writes no file beside itself.

Run one notebook with ``pytest -m slow tests/test_notebooks.py -k 05_rotation``.
"""
from __future__ import annotations

import os
import re
import shutil

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

from conftest import SCRATCH_PATTERNS, SOLUTIONS, assignment_ids, execute_timeout, tool_env

pytestmark = pytest.mark.slow

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _grade_id(cell) -> str:
    return cell.metadata.get("nbgrader", {}).get("grade_id", "-")


def _is_test_cell(cell) -> bool:
    meta = cell.metadata.get("nbgrader", {})
    return cell.cell_type == "code" and bool(meta.get("grade")) and not meta.get("solution")


def _describe_failure(assignment: str, nb) -> str:
    """The first cell with an error output: its index, grade id, source and traceback."""
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                trace = ANSI.sub("", "\n".join(output.traceback))
                return (f"{assignment}: cell {index} (grade_id {_grade_id(cell)}) failed with "
                        f"{output.ename}: {output.evalue}\n"
                        f"--- cell source ---\n{cell.source}\n--- traceback ---\n{trace[-4000:]}")
    return f"{assignment}: execution failed, but no cell holds an error output"


def _files_beside(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if not any(p.match(pattern) or pattern in p.parts for pattern in SCRATCH_PATTERNS)}


@pytest.mark.parametrize("assignment", assignment_ids())
def test_solution_notebook_runs_under_smoke_preset(assignment, tmp_path, course_data_dir, monkeypatch):
    workdir = tmp_path / assignment
    shutil.copytree(SOLUTIONS / assignment, workdir, ignore=shutil.ignore_patterns(*SCRATCH_PATTERNS))
    before = _files_beside(workdir)
    # The kernel inherits this process's environment.
    env = tool_env(data=course_data_dir, results=tmp_path / "results", SSLCOURSE_FAST="1")
    for name in set(os.environ) - set(env):
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    nb = nbformat.read(workdir / f"{assignment}.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=execute_timeout(), kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError):
        pytest.fail(_describe_failure(assignment, nb), pytrace=False)

    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.outputs if o.output_type == "stream")
    assert "smoke" in printed, (
        f"{assignment}: the setup cell never printed the 'smoke' budget preset although "
        f"SSLCOURSE_FAST=1 was set; does it call sslcourse.setup()?")

    problems = []
    for index, cell in enumerate(nb.cells):
        if not _is_test_cell(cell):
            continue
        for output in cell.outputs:
            if output.output_type == "stream" and output.name == "stderr":
                problems.append(f"cell {index} ({_grade_id(cell)}) writes to stderr, which nbgrader scores "
                                f"as 0:\n{output.text[:500]}")
            if output.output_type == "execute_result":
                problems.append(f"cell {index} ({_grade_id(cell)}) ends in a bare expression, which nbgrader "
                                f"reads as partial credit: {output.data.get('text/plain', '')[:200]}")
    assert not problems, f"{assignment}: graded test cells break the grading rules:\n" + "\n".join(problems)

    written = _files_beside(workdir) - before
    assert not written, (f"{assignment}: the notebook wrote {sorted(written)} beside itself; "
                         f"save through sslcourse (results_dir(), data_dir()) instead of relative paths.")
