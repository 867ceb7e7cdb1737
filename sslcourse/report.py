"""The grading report: after ``nbgrader autograde``, one file that says what the instructor must look at.

For each submission of an assignment it lists the automatic score (from nbgrader's gradebook),
and what went wrong: cells that timed out, a kernel that died, errors in test cells, stripped
nbgrader metadata (graded 0 silently by nbgrader), duplicated or deleted grade cells, and tamper
flags, both from the static scan of the submitted code (:func:`sslcourse.tamper.scan_notebook`,
which runs here, outside the student's kernel) and from "tampering detected" failures at test time,
and what the sandbox of ``sslcourse autograde`` stopped (:func:`sandbox_findings`: denied files and
network, limits reached, output cut, and how the kernel ended, from ``reports/sandbox/<ID>/``).

``sslcourse report ID`` writes ``reports/<ID>.md`` and ``reports/<ID>.csv`` in the course folder.
"""
from __future__ import annotations

import csv
import io
import json
import re
import signal
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .files import atomic_write
from .grading import gradebook_url, has_nbgrader_metadata
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
    sandbox: list[str] = field(default_factory=list)     # what the sandbox stopped

    @property
    def needs_review(self) -> bool:
        return bool(self.timed_out or self.kernel_died or self.structure or self.tamper or self.sandbox
                    or self.score is None)


# (pattern in "ename: evalue", what the report says). The sandbox turns a forbidden act into one of these.
_SANDBOX_ERRORS = (
    (r"Read-only file system", "tried to write into a read-only folder"),
    (r"PermissionError", "was denied access to a file"),
    (r"Network is unreachable|Temporary failure in name resolution|gaierror|ConnectionRefusedError",
     "tried to open a network connection"),
    (r"File too large", "wrote a file past the size limit"),
    (r"BlockingIOError|Resource temporarily unavailable", "hit the process limit"),
    (r"MemoryError|Cannot allocate memory", "hit the memory limit"),
)
_SIGNALS = {int(sig): sig.name for sig in signal.Signals}
_PATH = re.compile(r"'(/[^']+)'")


def sandbox_findings(error: str, folder: Path) -> list[str]:
    """What one error output of a sandboxed kernel says the sandbox stopped (``folder``: the submission's own)."""
    found = [what for pattern, what in _SANDBOX_ERRORS if re.search(pattern, error)]
    if error.startswith(("FileNotFoundError", "NotADirectoryError")):
        outside = [p for p in _PATH.findall(error) if not Path(p).is_relative_to(folder)]
        found += [f"tried to reach {p} (not in its sandbox)" for p in outside]
    return found


def _died(record: dict) -> bool:
    """The launcher's record says the kernel ended abnormally, before the wall limit.

    SIGTERM is jupyter_client ending a kernel that was slow to shut down: the grader's doing, not the student's.
    """
    code = record.get("exit_code")
    return code not in (0, None, -signal.SIGTERM, 128 + signal.SIGTERM) and not record.get("wall_killed")


def _launcher_findings(record: dict) -> list[str]:
    found = []
    if record.get("wall_killed"):
        found.append(f"the kernel ran past the wall limit ({record['limits']['wall_s']} s) and was killed")
    code = record.get("exit_code")
    if _died(record):
        if code > 128 and code - 128 in _SIGNALS:    # bwrap reports a signal as 128 + its number
            found.append(f"the kernel was killed by {_SIGNALS[code - 128]} (a crash, or a limit)")
        elif code < 0 and -code in _SIGNALS:
            found.append(f"the kernel was killed by {_SIGNALS[-code]}")
        else:
            found.append(f"the kernel exited with code {code} (os._exit or a fatal error in a cell)")
    if record.get("terminal_bytes_dropped"):
        found.append(f"{record['terminal_bytes_dropped']} bytes of terminal output dropped")
    return found


def _grade_ids(nb) -> list[str]:
    return [cell.metadata["nbgrader"]["grade_id"] for cell in nb.cells
            if "nbgrader" in cell.metadata and cell.metadata["nbgrader"].get("grade_id")]


def _graded_ids(nb) -> set[str]:
    return {cell.metadata["nbgrader"]["grade_id"] for cell in nb.cells
            if cell.metadata.get("nbgrader", {}).get("grade") and cell.cell_type == "code"}


def _scores(course: Path, assignment: str, db_url: str | None = None) -> dict[str, tuple[float, float]]:
    url = gradebook_url(course, db_url)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        return {}
    from nbgrader.api import Gradebook, MissingEntry

    scores = {}
    with Gradebook(url) as gradebook:
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


def build_report(course: Path | str, assignment: str, db_url: str | None = None) -> list[SubmissionReport]:
    """One :class:`SubmissionReport` per folder under ``submitted/*/<assignment>/``, sorted by student."""
    course = Path(course)
    release = _read(course / "notebooks" / assignment / f"{assignment}.ipynb")
    scores = _scores(course, assignment, db_url)
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
        log = course / "reports" / "sandbox" / assignment / f"{student}.json"
        record = json.loads(log.read_text()) if log.exists() else {}
        entry.sandbox += _launcher_findings(record)
        entry.kernel_died = _died(record)
        graded = _read(autograded) if autograded.exists() else None
        if graded is None:
            entry.kernel_died = entry.kernel_died or autograded.exists()
            if not autograded.exists():
                entry.structure.append("no autograded notebook: nbgrader stopped on this submission (see its log)")
        else:
            for number, cell in enumerate(graded.cells, start=1):
                meta = cell.metadata.get("nbgrader", {})
                name = meta.get("grade_id", f"cell {number}")
                for output in cell.get("outputs", []):
                    if output.get("output_type") == "stream" and "[sslcourse sandbox: output stopped" in output.get(
                            "text", ""):
                        entry.sandbox.append(f"{name}: output cut at the sandbox's limit")
                    if output.get("output_type") != "error":
                        continue
                    text = f"{output.get('ename', '')}: {output.get('evalue', '')}"
                    entry.sandbox += [f"{name}: {what}" for what in sandbox_findings(text, autograded.parent.resolve())]
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
        if r.sandbox:
            why.append(f"sandbox: {len(r.sandbox)}")
        score = "not graded" if r.score is None else f"{r.score:g} / {r.max_score:g}"
        lines.append(f"| {r.student} | {score} | {'yes' if r.needs_review else 'no'} | {'; '.join(why) or '-'} |")
    for r in reports:
        if r.tamper or r.failed_tests or r.sandbox:
            lines += ["", f"## {r.student}"]
            if r.failed_tests:
                lines.append(f"- failed test cells: {', '.join(r.failed_tests)}")
            lines += [f"- tamper flag: {flag}" for flag in r.tamper]
            lines += [f"- sandbox: {what}" for what in r.sandbox]
    return "\n".join(lines) + "\n"


def _csv(reports: list[SubmissionReport]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["student", "auto_score", "max_score", "needs_review", "timed_out", "kernel_died",
                     "failed_tests", "structure", "tamper", "sandbox"])
    for r in reports:
        writer.writerow([r.student, "" if r.score is None else r.score, "" if r.max_score is None else r.max_score,
                         r.needs_review, ";".join(r.timed_out), r.kernel_died, ";".join(r.failed_tests),
                         " | ".join(r.structure), " | ".join(r.tamper), " | ".join(r.sandbox)])
    return buffer.getvalue()


def write_report(course: Path | str, assignment: str,
                 db_url: str | None = None) -> tuple[Path, list[SubmissionReport]]:
    """Write ``reports/<assignment>.md`` and ``.csv`` under ``course``; return the Markdown path and the reports."""
    course = Path(course)
    reports = build_report(course, assignment, db_url)
    markdown = course / "reports" / f"{assignment}.md"
    atomic_write(markdown, lambda tmp: tmp.write_text(_markdown(assignment, reports)))
    atomic_write(markdown.with_suffix(".csv"), lambda tmp: tmp.write_text(_csv(reports)))
    return markdown, reports
