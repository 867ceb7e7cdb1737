"""Instructor helpers around nbgrader: find and repair submissions that lost their nbgrader metadata.

nbgrader recognises test and answer cells by the ``nbgrader`` entry of each cell's metadata.
A tool that rewrites a notebook without cell metadata makes nbgrader 0.9.6 autograde it to 0
with no error (and ``OverwriteCells.add_missing_cells`` crashes on it). Cell ids (nbformat ≥ 4.5)
usually survive such a rewrite, so the metadata can be copied back from the release.
"""
from __future__ import annotations

import copy
from pathlib import Path

import nbformat

_KEYS = ("nbgrader", "deletable", "editable")


def has_nbgrader_metadata(notebook: nbformat.NotebookNode) -> bool:
    """True when at least one cell carries nbgrader metadata."""
    return any("nbgrader" in cell.metadata for cell in notebook.cells)


def restore_nbgrader_metadata(submission: nbformat.NotebookNode,
                              release: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, int]:
    """Copy each cell's nbgrader metadata back from ``release``, matching cells by id.

    Returns the repaired copy and how many cells were matched. Cells whose id the release
    lacks are left as they are.
    """
    repaired = copy.deepcopy(submission)
    by_id = {cell.get("id"): cell for cell in release.cells if cell.get("id")}
    matched = 0
    for cell in repaired.cells:
        source = by_id.get(cell.get("id"))
        if source is None:
            continue
        matched += 1
        for key in _KEYS:
            if key in source.metadata:
                cell.metadata[key] = copy.deepcopy(source.metadata[key])
    return repaired, matched


def repair_file(submission: Path | str, release: Path | str) -> int:
    """Repair ``submission`` in place (keeping the original as ``<name>.ipynb.orig``); return the number of matched cells."""
    submission, release = Path(submission), Path(release)
    original = nbformat.read(submission, as_version=4)
    repaired, matched = restore_nbgrader_metadata(original, nbformat.read(release, as_version=4))
    if matched == 0:
        raise ValueError(f"No cell of {submission} has the id of a cell in {release}: paste the answers into a "
                         f"fresh copy of the release instead, then autograde that.")
    nbformat.write(original, submission.with_name(submission.name + ".orig"))
    nbformat.write(repaired, submission)
    return matched


def gradebook_url(course: Path | str, db_url: str | None = None) -> str:
    """The gradebook's SQLAlchemy URL, as nbgrader's ``CourseDirectory.db_url`` spells it.

    ``db_url`` wins (``--db`` on the command line: ``postgresql://user@host/course`` for a course
    graded by several people on JupyterHub); otherwise nbgrader's default, the sqlite file
    ``gradebook.db`` in the course folder.
    """
    if db_url:
        return db_url
    return f"sqlite:///{Path(course).resolve() / 'gradebook.db'}"
