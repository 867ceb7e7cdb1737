"""Colab as students meet it: a pinned install, a GPU runtime, and results kept in Google Drive.

* Every setup cell (solutions and the release) installs ``sslcourse`` at the git tag of the
  package's version (``sslcourse.colab.COLAB_INSTALL_SPEC``), never ``main``; its install branch
  is executed here with ``subprocess.run`` recording instead of running pip (no network).
* Every notebook's metadata asks Colab for a GPU runtime; the README badges open the same tag.
* Colab itself cannot run here, so a stand-in ``google.colab`` (``tests/fake_colab``, on
  ``PYTHONPATH`` of a subprocess) drives the Colab code path: the release's setup cell runs as a
  student's would, then ``sslcourse.use_google_drive()`` mounts the stand-in Drive and a saved run
  lands in it. The stand-in mounts only inside a temporary folder, never ``/content``.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
import types

import pytest
import torch

import sslcourse
from sslcourse import colab, environment
from conftest import RELEASE, REPO_ROOT, SOLUTIONS, assignment_ids, notebook_path, tool_env

FAKE_COLAB = REPO_ROOT / "tests" / "fake_colab"
NOTEBOOKS = [pytest.param(notebook_path(folder, assignment), id=f"{folder.name}/{assignment}")
             for folder in (SOLUTIONS, RELEASE) for assignment in assignment_ids(SOLUTIONS)]


def _setup_source(path) -> str:
    cell = colab.setup_cell(json.loads(path.read_text(encoding="utf-8")))
    return "".join(cell["source"])


def _install_branch(source: str) -> str:
    """The setup cell's statements up to and including its ``if "google.colab" in sys.modules:`` block."""
    tree = ast.parse(source)
    for index, node in enumerate(tree.body):
        if isinstance(node, ast.If) and "google.colab" in ast.unparse(node.test):
            return ast.unparse(ast.Module(body=tree.body[:index + 1], type_ignores=[]))
    pytest.fail(f'the setup cell has no `if "google.colab" in sys.modules:` install branch:\n{source}')


def _pip_calls(source: str, monkeypatch, *, on_colab: bool) -> list:
    """Run the install branch of ``source`` with ``subprocess.run`` recording its calls instead of running them."""
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda args, **kwargs: calls.append((args, kwargs)))
    if on_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(_install_branch(source), "<setup cell>", "exec"), {})
    return calls


def test_the_install_ref_is_the_tag_of_the_package_version():
    pyproject = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    version = re.search(r'^version\s*=\s*"([^"]+)"', pyproject, re.MULTILINE).group(1)
    assert sslcourse.__version__ == version, "sslcourse/__init__.py's __version__ must equal pyproject.toml's version"
    assert colab.COLAB_INSTALL_REF == f"v{version}"
    assert colab.COLAB_INSTALL_SPEC == f"sslcourse @ git+https://github.com/{colab.REPOSITORY}@v{version}"


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_the_setup_cell_installs_the_pinned_release_on_colab_only(path, monkeypatch):
    source = _setup_source(path)
    pinned = [([sys.executable, "-m", "pip", "install", "-q", colab.COLAB_INSTALL_SPEC], {"check": True})]
    assert _pip_calls(source, monkeypatch, on_colab=True) == pinned, (
        f"{path}: on Colab the setup cell must pip install {colab.COLAB_INSTALL_SPEC!r}; "
        f"run `make release` after bumping the version (it rewrites every setup cell)")
    assert _pip_calls(source, monkeypatch, on_colab=False) == [], f"{path}: off Colab the setup cell must not run pip"
    assert "sslcourse.use_google_drive()" in source, f"{path}: the setup cell should point to the Drive opt-in"


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_the_notebook_asks_colab_for_a_gpu_runtime(path):
    metadata = json.loads(path.read_text(encoding="utf-8"))["metadata"]
    assert metadata.get("accelerator") == "GPU", f"{path}: no \"accelerator\": \"GPU\" in the notebook metadata"
    assert metadata.get("colab", {}).get("gpuType") == "T4" and "provenance" in metadata["colab"], (
        f"{path}: the metadata's \"colab\" entry should be {colab.COLAB_METADATA['colab']}")


def test_the_readme_badges_open_the_pinned_release():
    links = re.findall(r"https://colab\.research\.google\.com/github/\S+?\.ipynb", (REPO_ROOT / "README.md").read_text())
    expected = {f"https://colab.research.google.com/github/{colab.REPOSITORY}/blob/{colab.COLAB_INSTALL_REF}/"
                f"notebooks/{a}/{a}.ipynb" for a in assignment_ids(SOLUTIONS)}
    assert set(links) == expected


def test_preparing_a_notebook_pins_it_and_changes_nothing_else(tmp_path):
    committed = notebook_path(SOLUTIONS, "05_rotation")
    copy = tmp_path / committed.name
    notebook = json.loads(committed.read_text(encoding="utf-8"))
    cell = colab.setup_cell(notebook)
    cell["source"] = [line.replace(colab.COLAB_INSTALL_SPEC, "sslcourse @ git+https://github.com/someone/fork")
                      for line in cell["source"]]
    del notebook["metadata"]["accelerator"], notebook["metadata"]["colab"]
    copy.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    assert colab.prepare_notebook(copy)
    assert copy.read_bytes() == committed.read_bytes(), "prepare_notebook should give back the committed file exactly"
    assert not colab.prepare_notebook(copy), "a prepared notebook is left alone"

    readme = tmp_path / "README.md"
    readme.write_text("[badge](https://colab.research.google.com/github/someone/fork/blob/main/notebooks/05_rotation/"
                      "05_rotation.ipynb)\n")
    assert colab.pin_badges(readme) and not colab.pin_badges(readme)
    assert f"github/{colab.REPOSITORY}/blob/{colab.COLAB_INSTALL_REF}/notebooks/" in readme.read_text()


def test_off_colab_use_google_drive_changes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setenv("SSLCOURSE_RESULTS", str(tmp_path / "results"))
    assert not sslcourse.on_colab()
    sslcourse.use_google_drive(mountpoint=tmp_path / "drive")
    assert "only works on Google Colab" in capsys.readouterr().out
    assert sslcourse.results_dir() == (tmp_path / "results").resolve()
    assert not (tmp_path / "drive").exists()
    assert environment.colab_results_note() is None


def test_the_stand_in_never_mounts_outside_its_root(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("fake_drive", FAKE_COLAB / "google" / "colab" / "drive.py")
    drive = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(drive)
    monkeypatch.setenv(drive.ROOT_VARIABLE, str(tmp_path))
    with pytest.raises(RuntimeError, match="mounts only inside"):
        drive.mount("/content/drive")
    drive.mount(str(tmp_path / "drive"))
    assert (tmp_path / "drive" / "MyDrive").is_dir()


# A student's first minutes on Colab, in a subprocess with the stand-in google.colab importable.
COLAB_SESSION = '''
import json, subprocess, sys
import google.colab                        # Colab's kernel imports it at start-up
pip_calls = []
subprocess.run = lambda args, **kwargs: pip_calls.append(args)   # record pip instead of running it: no network
setup_source, mountpoint = json.loads(sys.argv[1])
exec(setup_source)                         # the release's setup cell, as the student runs it
from sslcourse import results
before = str(sslcourse.results_dir())
sslcourse.use_google_drive(mountpoint=mountpoint)   # the student's opt-in, in a new cell
saved = results.save_run("00_foundations_colab", {"knn_accuracy": 0.5}, encoder=torch.nn.Linear(2, 2))
print(json.dumps({"on_colab": sslcourse.on_colab(), "pip_calls": pip_calls, "before": before,
                  "after": str(sslcourse.results_dir()), "saved": str(saved)}))
'''


def test_on_colab_the_setup_cell_installs_the_release_and_drive_keeps_the_runs(tmp_path, course_data_dir):
    colab_root = tmp_path / "colab"
    colab_root.mkdir()
    mountpoint = colab_root / "drive"
    local_results = tmp_path / "runtime-disk" / "results"
    env = tool_env(data=course_data_dir, results=local_results, SSLCOURSE_FAST="1",
                   PYTHONPATH=str(FAKE_COLAB), FAKE_COLAB_ROOT=str(colab_root))
    setup_source = _setup_source(notebook_path(RELEASE, "00_foundations"))
    proc = subprocess.run([sys.executable, "-c", COLAB_SESSION, json.dumps([setup_source, str(mountpoint)])],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])

    assert report["on_colab"]
    assert report["pip_calls"] == [[sys.executable, "-m", "pip", "install", "-q", colab.COLAB_INSTALL_SPEC]]
    assert "Colab deletes with the runtime" in proc.stdout, "setup() should warn that results are not in Drive"
    calls = [json.loads(line) for line in (colab_root / "mount_calls.jsonl").read_text().splitlines()]
    assert [call["mountpoint"] for call in calls] == [str(mountpoint)]
    drive_results = (mountpoint / "MyDrive" / "sslcourse" / "results").resolve()
    assert report["before"] == str(local_results.resolve()) and report["after"] == str(drive_results)
    assert "now go to" in proc.stdout and str(drive_results) in proc.stdout
    run = drive_results / "smoke" / "00_foundations_colab"
    assert report["saved"] == str(run.with_suffix(".json"))
    assert run.with_suffix(".json").is_file() and run.with_suffix(".pt").is_file()
    assert not local_results.exists(), "nothing should be saved on the runtime's own disk"
    loaded = torch.load(run.with_suffix(".pt"), weights_only=True)
    assert set(loaded) == {"weight", "bias"}
