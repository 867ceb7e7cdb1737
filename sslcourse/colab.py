"""What makes a course notebook ready for Google Colab, and the command that keeps every notebook so.

A notebook opened on Colab has to install ``sslcourse`` before it can import it, so its setup
cell carries the install spec as a literal (:data:`COLAB_INSTALL_SPEC`)::

    sslcourse @ git+https://github.com/sslcourse/sslcourse@v0.1.0

The ref is the git tag of this package's version (:data:`COLAB_INSTALL_REF`), never ``main``: a
push to ``main`` in the middle of a term must not change the package under a class that is
working from an earlier release. The Colab badges in README.md open the notebooks at the same
tag, so a notebook and the package it installs always come from the same release. Every
notebook's metadata also asks Colab for a GPU runtime (:data:`COLAB_METADATA`, what Colab itself
writes when a student picks *Runtime → Change runtime type → T4 GPU*).

To release a new version: bump ``version`` in pyproject.toml and ``__version__`` in
``sslcourse/__init__.py``, run ``make release`` (it runs ``python -m sslcourse.colab`` first,
which writes the new ref into every solution's setup cell and into the README badges, then
regenerates notebooks/), commit, tag the commit ``v<version>`` and push the tag.
``tests/test_colab.py`` fails while a notebook or a badge disagrees with the version.

Where Colab keeps a student's results is the environment policy's business:
:func:`sslcourse.environment.use_google_drive`.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from . import __version__

__all__ = ["REPOSITORY", "COLAB_INSTALL_REF", "COLAB_INSTALL_SPEC", "COLAB_METADATA", "setup_cell",
           "prepare_notebook", "pin_badges", "main"]

REPOSITORY = "sslcourse/sslcourse"          # a fork changes this line, then runs `make release`
COLAB_INSTALL_REF = f"v{__version__}"
COLAB_INSTALL_SPEC = f"sslcourse @ git+https://github.com/{REPOSITORY}@{COLAB_INSTALL_REF}"
COLAB_METADATA = {"accelerator": "GPU", "colab": {"provenance": [], "gpuType": "T4"}}

# The quoted install spec in a setup cell, whatever repository and ref it names now.
_SPEC = re.compile(r'"sslcourse @ git\+https://github\.com/[^"]*"')
# A Colab badge's link into notebooks/, whatever repository and ref it names now.
_BADGE = re.compile(r"https://colab\.research\.google\.com/github/[^/\s]+/[^/\s]+/blob/[^/\s]+/notebooks/")


def setup_cell(notebook: dict) -> dict:
    """The notebook's setup cell: the one whose nbgrader ``grade_id`` is ``setup``."""
    for cell in notebook["cells"]:
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") == "setup":
            return cell
    raise ValueError("the notebook has no cell with grade_id 'setup' (docs/AUTHORING.md)")


def _pin_spec(cell: dict) -> None:
    """Rewrite the quoted install spec in the cell's source to :data:`COLAB_INSTALL_SPEC`."""
    lines = cell["source"] if isinstance(cell["source"], list) else [cell["source"]]
    if not any(_SPEC.search(line) for line in lines):
        raise ValueError('the setup cell has no "sslcourse @ git+https://github.com/..." install spec to pin')
    pinned = [_SPEC.sub(json.dumps(COLAB_INSTALL_SPEC), line) for line in lines]
    cell["source"] = pinned if isinstance(cell["source"], list) else pinned[0]


def _ask_for_a_gpu(metadata: dict) -> dict:
    """The notebook metadata with Colab's GPU request added; other keys (a Colab ``name``...) are kept."""
    metadata = dict(metadata, accelerator=COLAB_METADATA["accelerator"])
    colab = dict(metadata.get("colab", {}))
    colab.setdefault("provenance", [])
    colab["gpuType"] = COLAB_METADATA["colab"]["gpuType"]
    metadata["colab"] = colab
    return dict(sorted(metadata.items()))      # Jupyter writes metadata keys sorted; so do we


def prepare_notebook(path: Path | str) -> bool:
    """Pin the setup cell's install spec and ask Colab for a GPU, in place. True if the file changed.

    The file is written the way the course's notebooks are (one-space indent, UTF-8, a final
    newline), so its diff shows only what changed.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    notebook = json.loads(text)
    _pin_spec(setup_cell(notebook))
    notebook["metadata"] = _ask_for_a_gpu(notebook.get("metadata", {}))
    updated = json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"
    if updated == text:
        return False
    path.write_text(updated, encoding="utf-8")
    return True


def pin_badges(readme: Path | str) -> bool:
    """Point every Colab badge link in ``readme`` at :data:`COLAB_INSTALL_REF`, in place. True if it changed."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    updated = _BADGE.sub(f"https://colab.research.google.com/github/{REPOSITORY}/blob/{COLAB_INSTALL_REF}/notebooks/",
                         text)
    if updated == text:
        return False
    readme.write_text(updated, encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m sslcourse.colab [COURSE_ROOT]``: prepare every solution notebook and the README badges."""
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0]) if argv else Path.cwd()
    notebooks = sorted(p for p in (root / "solutions").glob("*/*.ipynb") if p.stem == p.parent.name)
    if not notebooks:
        print(f"sslcourse.colab: no solutions/<id>/<id>.ipynb under {root.resolve()}", file=sys.stderr)
        return 1
    changed = [str(p.relative_to(root)) for p in notebooks if prepare_notebook(p)]
    if (root / "README.md").exists() and pin_badges(root / "README.md"):
        changed.append("README.md")
    print(f"sslcourse.colab: Colab installs {COLAB_INSTALL_SPEC!r} and asks for a GPU; "
          + (f"updated {', '.join(changed)}" if changed else "every notebook and badge already did"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
