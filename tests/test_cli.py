"""The ``sslcourse`` command: doctor reports, data --import fills the cache that load_dataset reads."""
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from sslcourse import cli
from sslcourse.budget import make_budget
from sslcourse.data import load_dataset


def test_doctor_reports_preset_device_and_data(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SSLCOURSE_DATA", str(tmp_path))
    monkeypatch.setenv("SSLCOURSE_FAST", "1")
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "device" in out and "preset 'smoke'" in out
    assert str(tmp_path) in out and "none yet" in out


def test_data_import_folder_then_load_from_cache(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "imgs"
    for split in ("train", "test"):
        for c in range(2):
            (folder / split / f"c{c}").mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((32, 32, 3), 100 * c, np.uint8)).save(folder / split / f"c{c}" / f"{i}.png")
    cache = tmp_path / "cache"
    monkeypatch.setenv("SSLCOURSE_DATA", str(cache))
    assert cli.main(["data", "cifar10", "--import", str(folder)]) == 0
    data = load_dataset("cifar10", budget=make_budget("cpu"), root=cache)
    assert data.train_x.shape == (6, 3, 32, 32) and data.classes == ["c0", "c1"]
    assert torch.equal(data.train_x[data.train_y == 1], torch.full((3, 3, 32, 32), 100, dtype=torch.uint8))


def test_console_entry_point_is_installed():
    result = subprocess.run([sys.executable, "-m", "sslcourse.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "doctor" in result.stdout


def test_check_and_restore_stripped_submission(tmp_path, capsys):
    import nbformat

    release = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("assert True")])
    release.cells[0].metadata["nbgrader"] = {"grade": True, "grade_id": "t", "locked": True, "points": 1,
                                             "schema_version": 3, "solution": False, "task": False}
    nbformat.write(release, tmp_path / "release.ipynb")
    stripped = nbformat.from_dict(nbformat.reads(nbformat.writes(release), as_version=4))
    stripped.cells[0].metadata = {}
    target = tmp_path / "submitted" / "alice" / "a1" / "a1.ipynb"
    target.parent.mkdir(parents=True)
    nbformat.write(stripped, target)

    assert cli.main(["check-submissions", str(tmp_path / "submitted")]) == 1
    assert "alice" in capsys.readouterr().out
    assert cli.main(["restore-metadata", str(target), str(tmp_path / "release.ipynb")]) == 0
    assert nbformat.read(target, as_version=4).cells[0].metadata["nbgrader"]["grade_id"] == "t"
    assert target.with_name("a1.ipynb.orig").exists()
    assert cli.main(["check-submissions", str(tmp_path / "submitted")]) == 0
