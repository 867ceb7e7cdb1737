"""A notebook with widgets runs under ipywidgets 7, the version Colab ships (7.7.1).

The course's ``.venv`` has ipywidgets 8. A second virtual environment, ``.venv-ipywidgets7/``
(gitignored; built once from PyPI, then reused), holds ipywidgets 7.7.1 and nothing else the
course's ``.venv`` already has: a ``.pth`` file adds ``.venv``'s site-packages after its own, so
torch, ipykernel and sslcourse come from ``.venv`` and are never reinstalled.
(``venv --system-site-packages`` cannot do this: made from a virtual environment's python, it
exposes the *base* interpreter's site-packages, not ``.venv``'s, so torch would be missing.)

A kernel on that interpreter runs ``03_view_prediction`` in the smoke preset (it has sliders, an
``Output`` and the one widget whose value changed shape between 7 and 8, a ``FileUpload``), then
picks a file the way ipywidgets 7's front end does and reads it back through
``sslcourse.uploads``. Skipped, with pip's reason, when the environment cannot be built (offline).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

from conftest import REPO_ROOT, SCRATCH_PATTERNS, SOLUTIONS, execute_timeout, tool_env

pytestmark = pytest.mark.slow

ENV_DIR = REPO_ROOT / ".venv-ipywidgets7"
# ipywidgets 7.7.1 as Colab has it, and the one package of its own that .venv lacks (ipywidgets 8
# dropped it). --no-deps: everything else it needs (ipykernel, traitlets, ...) is .venv's.
PACKAGES = ("ipywidgets==7.7.1", "ipython_genutils==0.2.0")
KERNEL = "python3-ipywidgets7"
ASSIGNMENT = "03_view_prediction"

# Appended to the notebook: what the kernel runs on, and an upload as ipywidgets 7's front end makes
# it (it syncs the files' metadata and contents, then bumps _counter, which fills `value`).
PROBE = '''
import io, json
import ipywidgets
from PIL import Image

picked = io.BytesIO()
Image.new("RGB", (48, 40), (30, 200, 90)).save(picked, format="PNG")
upload.set_trait("metadata", [{"name": "leaf.png", "type": "image/png", "size": len(picked.getvalue()),
                               "lastModified": 0}])
upload.set_trait("data", [picked.getvalue()])
upload.set_trait("_counter", upload._counter + 1)
name, image = uploads.latest_image(upload, size=S.data.test_x.shape[-1])
print("PROBE " + json.dumps({"ipywidgets": ipywidgets.__version__, "torch": torch.__file__,
                             "value_type": type(upload.value).__name__, "upload": [name, list(image.shape)]}))
'''


def _interpreter_report(python) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", "import ipywidgets, torch, sslcourse, ipykernel; print(ipywidgets.__version__)"],
                          capture_output=True, text=True, timeout=300)


def _build(target) -> None:
    """Create the environment at ``target``; raise CalledProcessError (with pip's output) on failure."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True, capture_output=True,
                   text=True, timeout=300)
    python = target / "bin" / "python"
    own_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
    # After its own site-packages, the new interpreter reads .venv's (and runs .venv's .pth files:
    # the editable sslcourse). pip, too, comes from .venv; it installs into the new environment.
    course_site = sysconfig.get_paths()["purelib"]
    with open(os.path.join(own_site, "_sslcourse_venv.pth"), "w") as pth:
        pth.write(f"import site; site.addsitedir({course_site!r})\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--ignore-installed", "--no-input",
                    "--disable-pip-version-check", "--timeout", "30", "-q", *PACKAGES],
                   check=True, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def ipywidgets7_python():
    """The interpreter of ``.venv-ipywidgets7/`` (built on first use); skips when it cannot be built."""
    python = ENV_DIR / "bin" / "python"
    if python.exists() and _interpreter_report(python).stdout.startswith("7."):
        return python
    shutil.rmtree(ENV_DIR, ignore_errors=True)
    partial = ENV_DIR.with_name(ENV_DIR.name + f".partial-{os.getpid()}")   # never leave a half-built cache
    try:
        _build(partial)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
        shutil.rmtree(partial, ignore_errors=True)
        said = (getattr(error, "stderr", None) or getattr(error, "stdout", None) or str(error)).strip()[-1500:]
        pytest.skip(f"cannot build an environment with {', '.join(PACKAGES)} (no network to PyPI?): {said}")
    partial.rename(ENV_DIR)
    report = _interpreter_report(python)
    if not report.stdout.startswith("7."):
        pytest.fail(f"{ENV_DIR} was built but does not import ipywidgets 7 with torch and sslcourse:\n"
                    f"{report.stdout}{report.stderr[-3000:]}")
    return python


@pytest.fixture
def ipywidgets7_kernel(ipywidgets7_python, tmp_path):
    """A kernelspec for that interpreter, in a folder for JUPYTER_PATH (nothing registered for the user)."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [str(ipywidgets7_python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipywidgets 7)", "language": "python"}))
    return tmp_path / "jupyter"


def _widget_views(nb) -> int:
    return sum("application/vnd.jupyter.widget-view+json" in output.get("data", {})
               for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs)


def test_a_notebook_with_widgets_runs_under_ipywidgets_7(ipywidgets7_kernel, tmp_path, course_data_dir, monkeypatch):
    workdir = tmp_path / ASSIGNMENT
    shutil.copytree(SOLUTIONS / ASSIGNMENT, workdir, ignore=shutil.ignore_patterns(*SCRATCH_PATTERNS))
    env = tool_env(data=course_data_dir, results=tmp_path / "results", SSLCOURSE_FAST="1",
                   JUPYTER_PATH=str(ipywidgets7_kernel))
    for name in set(os.environ) - set(env):      # the kernel inherits this process's environment
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    nb = nbformat.read(workdir / f"{ASSIGNMENT}.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    client = NotebookClient(nb, timeout=execute_timeout(), kernel_name=KERNEL,
                            resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError) as error:
        pytest.fail(f"{ASSIGNMENT} failed under ipywidgets 7:\n{str(error)[-4000:]}", pytrace=False)

    printed = "".join(output.get("text", "") for output in nb.cells[-1].outputs if output.output_type == "stream")
    probe = json.loads(printed.split("PROBE ", 1)[1])
    assert probe["ipywidgets"].startswith("7"), probe
    assert probe["torch"].startswith(sysconfig.get_paths()["purelib"]), f"torch should be .venv's: {probe['torch']}"
    assert probe["value_type"] == "dict" and probe["upload"] == ["leaf.png", [3, 32, 32]], probe

    assert _widget_views(nb) >= 2, "the notebook's interactive cells should display widgets"
    models = nb.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"].values()
    versions = {m["model_module_version"] for m in models if m["model_module"] == "@jupyter-widgets/controls"}
    assert versions == {"1.5.0"}, f"the stored widget state should be ipywidgets 7's controls 1.5.0, got {versions}"
