"""The grading report: after ``nbgrader autograde``, one file that says what the instructor must look at.

For each submission of an assignment it lists the automatic score (from nbgrader's gradebook),
and what went wrong: cells that timed out, a kernel that died, errors in test cells, stripped
nbgrader metadata (graded 0 silently by nbgrader), duplicated or deleted grade cells, and tamper
flags, both from the static scan of the submitted code (:func:`sslcourse.tamper.scan_notebook`,
which runs here, outside the student's kernel) and from "tampering detected" failures at test time.

``sslcourse report ID`` writes ``reports/<ID>.md`` and ``reports/<ID>.csv`` in the course folder.
"""
from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .files import atomic_write
from .grading import has_nbgrader_metadata
from .tamper import scan_notebook

__all__ = ["SubmissionReport", "build_report", "write_report"]

_TIMEOUT_MARKERS = ("CellTimeoutError", "Cell execution timed out", "Timeout waiting for", "TimeoutError")
_DEAD_MARKERS = ("DeadKernelError", "Kernel died", "kernel died")


@dataclass
class SubmissionReport:
    """What the report says about one student's submission of one assignment."""

    student: str
    score: float | None = None          # automatic points (None: not in the gradebook)
    max_score: float | None = None
    timed_out: list[str] = field(default_factory=list)
    kernel_died: bool = False
    failed_tests: list[str] = field(default_factory=list)
    structure: list[str] = field(default_factory=list)   # stripped metadata, duplicated or deleted cells
    tamper: list[str] = field(default_factory=list)

    @property
    def needs_review(self) -> bool:
        return bool(self.timed_out or self.kernel_died or self.structure or self.tamper or self.score is None)


def _grade_ids(nb) -> list[str]:
    return [cell.metadata["nbgrader"]["grade_id"] for cell in nb.cells
            if "nbgrader" in cell.metadata and cell.metadata["nbgrader"].get("grade_id")]


def _graded_ids(nb) -> set[str]:
    return {cell.metadata["nbgrader"]["grade_id"] for cell in nb.cells
            if cell.metadata.get("nbgrader", {}).get("grade") and cell.cell_type == "code"}


def _scores(course: Path, assignment: str) -> dict[str, tuple[float, float]]:
    database = course / "gradebook.db"
    if not database.exists():
        return {}
    from nbgrader.api import Gradebook, MissingEntry

    scores = {}
    with Gradebook(f"sqlite:///{database}") as gradebook:
        try:
            submissions = gradebook.assignment_submissions(assignment)
        except MissingEntry:
            return {}
        for submission in submissions:
            auto = sum((grade.auto_score or 0.0) for notebook in submission.notebooks for grade in notebook.grades
                       if grade.cell.cell_type == "code")
            full = sum(grade.max_score for notebook in submission.notebooks for grade in notebook.grades
                       if grade.cell.cell_type == "code")
            scores[submission.student.id] = (auto, full)
    return scores


def _read(path: Path):
    try:
        return nbformat.read(path, as_version=4)
    except Exception:                                    # noqa: BLE001 (a mangled file is a finding)
        return None


def build_report(course: Path | str, assignment: str) -> list[SubmissionReport]:
    """One :class:`SubmissionReport` per folder under ``submitted/*/<assignment>/``, sorted by student."""
    course = Path(course)
    release = _read(course / "notebooks" / assignment / f"{assignment}.ipynb")
    scores = _scores(course, assignment)
    reports = []
    for folder in sorted((course / "submitted").glob(f"*/{assignment}")):
        student = folder.parent.name
        entry = SubmissionReport(student)
        if student in scores:
            entry.score, entry.max_score = scores[student]
        for path in sorted(folder.glob("*.ipynb")):
            submitted = _read(path)
            if submitted is None:
                entry.structure.append(f"{path.name} is not a readable notebook")
                continue
            if not has_nbgrader_metadata(submitted):
                entry.structure.append(f"{path.name} lost its nbgrader metadata (nbgrader grades it 0 silently): "
                                       f"run `sslcourse restore-metadata`")
            ids = Counter(_grade_ids(submitted))
            duplicated = sorted(name for name, count in ids.items() if count > 1)
            if duplicated:
                entry.structure.append(f"duplicated grade cells: {', '.join(duplicated)}")
            if release is not None and has_nbgrader_metadata(submitted):
                missing = sorted(_graded_ids(release) - set(ids))
                if missing:
                    entry.structure.append(f"deleted test cells: {', '.join(missing)}")
            entry.tamper += [f"{cell}, {finding}" for cell, finding in scan_notebook(submitted, release)]
        autograded = course / "autograded" / student / assignment / f"{assignment}.ipynb"
        graded = _read(autograded) if autograded.exists() else None
        if graded is None:
            entry.kernel_died = entry.kernel_died or autograded.exists()
            if not autograded.exists():
                entry.structure.append("no autograded notebook: nbgrader stopped on this submission (see its log)")
        else:
            for cell in graded.cells:
                meta = cell.metadata.get("nbgrader", {})
                for output in cell.get("outputs", []):
                    if output.get("output_type") != "error":
                        continue
                    text = f"{output.get('ename', '')}: {output.get('evalue', '')}"
                    name = meta.get("grade_id", "a cell")
                    if any(marker in text for marker in _TIMEOUT_MARKERS):
                        entry.timed_out.append(name)
                    elif any(marker in text for marker in _DEAD_MARKERS):
                        entry.kernel_died = True
                    elif meta.get("grade"):
                        entry.failed_tests.append(name)
                    if "tampering detected" in text:
                        entry.tamper.append(f"{name}, at test time: {output.get('evalue', '')[:200]}")
        reports.append(entry)
    return reports


def _markdown(assignment: str, reports: list[SubmissionReport]) -> str:
    review = [r for r in reports if r.needs_review]
    lines = [f"# Grading report: {assignment}", "",
             f"{len(reports)} submission(s); {len(review)} to review by hand (listed first).", "",
             "| student | automatic score | needs review | why |", "|---|---|---|---|"]
    for r in sorted(reports, key=lambda r: (not r.needs_review, r.student)):
        why = []
        if r.timed_out:
            why.append(f"timed out: {', '.join(r.timed_out)}")
        if r.kernel_died:
            why.append("the kernel died")
        why += r.structure
        if r.tamper:
            why.append(f"tamper flags: {len(r.tamper)}")
        score = "not graded" if r.score is None else f"{r.score:g} / {r.max_score:g}"
        lines.append(f"| {r.student} | {score} | {'yes' if r.needs_review else 'no'} | {'; '.join(why) or '-'} |")
    for r in reports:
        if r.tamper or r.failed_tests:
            lines += ["", f"## {r.student}"]
            if r.failed_tests:
                lines.append(f"- failed test cells: {', '.join(r.failed_tests)}")
            lines += [f"- tamper flag: {flag}" for flag in r.tamper]
    return "\n".join(lines) + "\n"


def _csv(reports: list[SubmissionReport]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["student", "auto_score", "max_score", "needs_review", "timed_out", "kernel_died",
                     "failed_tests", "structure", "tamper"])
    for r in reports:
        writer.writerow([r.student, "" if r.score is None else r.score, "" if r.max_score is None else r.max_score,
                         r.needs_review, ";".join(r.timed_out), r.kernel_died, ";".join(r.failed_tests),
                         " | ".join(r.structure), " | ".join(r.tamper)])
    return buffer.getvalue()


def write_report(course: Path | str, assignment: str) -> tuple[Path, list[SubmissionReport]]:
    """Write ``reports/<assignment>.md`` and ``.csv`` under ``course``; return the Markdown path and the reports."""
    course = Path(course)
    reports = build_report(course, assignment)
    markdown = course / "reports" / f"{assignment}.md"
    atomic_write(markdown, lambda tmp: tmp.write_text(_markdown(assignment, reports)))
    atomic_write(markdown.with_suffix(".csv"), lambda tmp: tmp.write_text(_csv(reports)))
    return markdown, reports
