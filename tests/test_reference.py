"""The reference runs of 08_summary (sslcourse/reference.py, sslcourse/reference_runs.json) and how the
benchmarks record them (bench/benchutil.py's --record-reference)."""
from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import pytest

from sslcourse import reference
from sslcourse.reference import (FRACTIONS, METHODS, REFERENCE_FILE, ReferenceError, load_reference, make_row,
                                 primary, record_reference, select, validate_row)
from sslcourse.train import History

REPO = Path(__file__).resolve().parents[1]
RESULTS_MD = REPO / "bench" / "RESULTS.md"
CIFAR_NPZ = REPO.parent / "shared" / "data" / "cifar10-jpeg.npz"


def raw_rows() -> list[dict]:
    return json.loads(REFERENCE_FILE.read_text(encoding="utf-8"))["rows"]


def measured_row(**changes) -> dict:
    row = make_row("rotation", preset="gpu", dataset="cifar10", device="cuda: a GPU", seed=0, source="a test",
                   script="bench/bench_rotation.py", minutes=5.0, knn=80.0, linear=85.0,
                   label_efficiency={0.01: 40.0, 0.1: 70.0, 1.0: 85.0}, random_init={"knn": 30.0, "linear": 40.0},
                   history=History([2.0, 1.0], [{"epoch": 1, "loss": 1.5, "lr": 0.1}, {"epoch": 2, "loss": 1.0}]))
    row.update(changes)
    return row


# --- the shipped file ---------------------------------------------------------------------------------

def test_the_package_file_is_valid_and_has_a_cpu_and_a_gpu_row_for_every_method():
    rows = load_reference()
    for m in METHODS:
        for preset in ("cpu", "gpu"):
            found = primary(rows, m.key, preset, "cifar10")
            assert found is not None, f"no {preset} row for {m.key}"
    assert all(not r.measured and r.note for r in select(rows, preset="gpu")), "a gpu row claims a measurement"
    cpu = select(rows, preset="cpu", dataset="cifar10")
    assert {r.method for r in cpu if r.measured} == {m.key for m in METHODS}, "every method has a measured cpu row"


def test_transcribed_numbers_are_the_ones_in_bench_results():
    """Every number of a row transcribed from bench/RESULTS.md appears there (no invented numbers)."""
    text = RESULTS_MD.read_text(encoding="utf-8")
    numbers = set(re.findall(r"\d+\.\d", text))
    for row in load_reference():
        if not row.source.startswith("transcribed from bench/RESULTS.md"):
            continue
        values = [row.knn, row.linear, *(row.label_efficiency or {}).values(), *(row.random_init or {}).values(),
                  *[v for values in (row.curve or {}).values() for v in values]]
        for value in values:
            if value is not None:
                assert f"{value:.1f}" in numbers, f"{row.method} seed {row.seed}: {value} is not in bench/RESULTS.md"


def test_the_file_ships_as_package_data():
    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'sslcourse = \[[^]]*"reference_runs.json"', section), section


# --- validation -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("seed"), "missing fields \\['seed'\\]"),
    (lambda r: r.update(colour="red"), "unknown fields \\['colour'\\]"),
    (lambda r: r.update(method="simclr"), "unknown method 'simclr'"),
    (lambda r: r.update(family="contrastive"), "family: expected 'predictive'"),
    (lambda r: r.update(run="05_rotation_8angles"), "run: expected '05_rotation'"),
    (lambda r: r.update(preset="smoke"), "preset: expected one of"),
    (lambda r: r.update(knn=120.0), "knn: expected a percentage"),
    (lambda r: r.update(linear="56.3"), "linear: expected a percentage"),
    (lambda r: r.update(label_efficiency={"0.01": 1.0, "0.1": 2.0}), "missing \\[1.0\\]"),
    (lambda r: r.update(label_efficiency={"0.5": 1.0, "0.1": 2.0, "1.0": 3.0}), "label fractions are"),
    (lambda r: r.update(random_init={"knn": 30.0}), "random_init: expected"),
    (lambda r: r.update(curve={"loss": []}), "curve\\['loss'\\]: expected a non-empty list"),
    (lambda r: r.update(minutes=-1), "minutes: expected a non-negative number"),
    (lambda r: r.update(date="4 Dec 2026"), "date: expected YYYY-MM-DD"),
    (lambda r: r.update(device=None), "names its device and date"),
    (lambda r: r.update(measured=False), "not measured holds no numbers"),
    (lambda r: r.update(source=""), "source: expected a non-empty string"),
    (lambda r: r.update(seed=True), "seed: expected an integer"),
])
def test_a_bad_row_is_refused_with_the_field_named(change, message):
    row = measured_row()
    validate_row(row)
    change(row)
    with pytest.raises(ReferenceError, match=message):
        validate_row(row, where="row 3")


def test_a_placeholder_says_why_it_holds_no_numbers():
    placeholder = copy.deepcopy(next(r for r in raw_rows() if not r["measured"]))
    validate_row(placeholder)
    placeholder["note"] = None
    with pytest.raises(ReferenceError, match="must say why"):
        validate_row(placeholder)


def test_a_broken_file_is_refused_clearly(tmp_path):
    path = tmp_path / "reference_runs.json"
    with pytest.raises(ReferenceError, match="is missing"):
        load_reference(path)
    path.write_text("{not json")
    with pytest.raises(ReferenceError, match="not valid JSON"):
        load_reference(path)
    path.write_text(json.dumps({"rows": []}))
    with pytest.raises(ReferenceError, match='"format": 1'):
        load_reference(path)
    rows = raw_rows()
    path.write_text(json.dumps({"format": 1, "rows": [rows[0], rows[0]]}))
    with pytest.raises(ReferenceError, match="repeats rows\\[0\\]"):
        load_reference(path)
    bad = copy.deepcopy(rows[3])
    bad["knn"] = -5
    path.write_text(json.dumps({"format": 1, "rows": [rows[0], bad]}))
    with pytest.raises(ReferenceError, match=r"rows\[1\] .*knn"):
        load_reference(path)


# --- recording ------------------------------------------------------------------------------------------

def test_recording_replaces_the_placeholder_and_then_its_own_row(tmp_path):
    path = tmp_path / "reference_runs.json"
    path.write_text(REFERENCE_FILE.read_text())
    before = load_reference(path)
    assert not primary(before, "rotation", "gpu", "cifar10").measured
    record_reference(measured_row(), path)
    after = load_reference(path)
    assert len(after) == len(before)
    row = primary(after, "rotation", "gpu", "cifar10")
    assert row.measured and row.knn == 80.0 and row.label_efficiency == {0.01: 40.0, 0.1: 70.0, 1.0: 85.0}
    assert row.curve == {"loss": [1.5, 1.0]}
    record_reference(measured_row(knn=81.0), path)
    record_reference(measured_row(knn=79.0, seed=1), path)
    again = load_reference(path)
    assert len(again) == len(before) + 1
    assert [r.knn for r in select(again, method="rotation", preset="gpu")] == [81.0, 79.0]
    order = [m.key for m in METHODS]
    assert [order.index(r.method) for r in again] == sorted(order.index(r.method) for r in again)
    assert not list(tmp_path.glob("*.tmp"))


def test_a_bad_row_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "reference_runs.json"
    path.write_text(REFERENCE_FILE.read_text())
    text = path.read_text()
    with pytest.raises(ReferenceError, match="knn"):
        record_reference(measured_row(knn=250.0), path)
    assert path.read_text() == text


def test_a_new_file_is_started_when_none_exists(tmp_path):
    path = tmp_path / "gpu_rows.json"
    record_reference(measured_row(), path)
    assert [r.method for r in load_reference(path)] == ["rotation"]


def test_make_row_takes_numeric_or_string_fractions_and_partial_curves():
    row = make_row("moco", preset="cpu", dataset="cifar10", device="cpu", seed=0, source="x", script=None,
                   minutes=None, knn=48.456, linear=None, label_efficiency={"0.01": 30.0, 1.0: 56.5})
    assert row["label_efficiency"] == {"0.01": 30.0, "0.1": None, "1.0": 56.5} and row["knn"] == 48.46
    assert validate_row(row).label_efficiency == {0.01: 30.0, 0.1: None, 1.0: 56.5}
    curve = reference.curve_from_history({"epochs": [{"epoch": 1, "loss": 2.0, "knn": 30.0},
                                                     {"epoch": 2, "loss": 1.0, "partial": True}]})
    assert curve == {"loss": [2.0], "knn": [30.0]}


def test_every_method_benchmark_can_record_its_row():
    """Every method notebook's benchmark can write its reference row (--record-reference)."""
    for script in ("bench_denoising.py", "bench_context_encoder.py", "bench_split_brain.py", "bench_patch_position.py",
                   "bench_rotation.py", "bench_cpc.py", "bench_moco.py"):
        text = (REPO / "bench" / script).read_text()
        assert "add_record_flag(parser)" in text and "record_reference_row(" in text, script


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.skipif(not CIFAR_NPZ.exists(), reason="needs ../shared/data/cifar10-jpeg.npz")
def test_bench_moco_records_its_row_on_a_tiny_cifar_subset(tmp_path, capsys):
    import importlib.util
    sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location("bench_moco", REPO / "bench" / "bench_moco.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = tmp_path / "rows.json"
    module.main(["--preset", "cpu", "--data", str(CIFAR_NPZ), "--train-images", "64", "--test-images", "32",
                 "--batch-size", "32", "--queue-size", "64", "--epochs", "1", "--minutes", "0",
                 "--record-reference", str(path)])
    assert "recorded the reference row moco / cpu / cifar10 / seed 0" in capsys.readouterr().out
    (row,) = load_reference(path)
    assert row.measured and row.dataset == "cifar10" and row.script == "bench/bench_moco.py"
    assert set(row.label_efficiency) == set(FRACTIONS) and row.random_init is not None
    assert "--record-reference" in row.source and row.curve is not None


def test_rows_from_saved_notebook_runs_and_a_merge(tmp_path, monkeypatch, capsys):
    """00 has no bench script: bench/record_reference.py records its rows from the run the notebook saved."""
    import importlib.util
    from fake_runs import save_fake_runs
    from sslcourse.budget import make_budget

    monkeypatch.setenv("SSLCOURSE_RESULTS", str(tmp_path / "results"))
    save_fake_runs(make_budget("cpu"), "cifar10", skip=("07_moco",))
    spec = importlib.util.spec_from_file_location("record_reference", REPO / "bench" / "record_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows_path = tmp_path / "rows.json"
    module.main(["00_foundations", "07_moco", "--preset", "cpu", "--to", str(rows_path)])
    assert "MoCo: not recorded (no saved run '07_moco'" in capsys.readouterr().out
    rows = {r.method: r for r in load_reference(rows_path)}
    assert set(rows) == {"random_init", "supervised"}
    assert rows["supervised"].label_efficiency == {0.01: 15.0, 0.1: 30.0, 1.0: 45.0}
    assert rows["random_init"].minutes == 0.0 and rows["supervised"].device.startswith("cpu")
    package = tmp_path / "package.json"
    package.write_text(REFERENCE_FILE.read_text())
    monkeypatch.setattr(reference, "REFERENCE_FILE", package)
    reference._main(["merge", str(rows_path)])
    merged = load_reference(package)
    assert primary(merged, "supervised", "cpu", "cifar10").knn == 40.0 and len(merged) == len(load_reference())
