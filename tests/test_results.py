"""Saved runs: round trip, per-preset folders, clear errors for missing and corrupted files."""
import json

import pytest
import torch

from sslcourse.models import ConvNet
from sslcourse.results import CorruptedRunError, RunNotFoundError, list_runs, load_run, save_run
from sslcourse.train import History


@pytest.fixture(autouse=True)
def results_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLCOURSE_RESULTS", str(tmp_path))
    monkeypatch.setenv("SSLCOURSE_BUDGET", "cpu")
    for name in ("NBGRADER_EXECUTION", "SSLCOURSE_FAST"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_round_trip_of_metrics_and_encoder(results_home):
    torch.manual_seed(0)
    encoder = ConvNet(width=4)
    metrics = {"knn": torch.tensor(41.5), "linear": 52.25, "label_efficiency": {0.01: 20.0, 0.1: 35.5, 1.0: 52.25},
               "per_block": {1: 30.0, 4: 41.0}, "history": History([1.0, 0.5], [{"epoch": 1, "loss": 0.75}]),
               "note": "rotation, 4 angles", "nan": float("nan")}
    path = save_run("05_rotation", metrics, encoder)
    assert path == results_home / "cpu" / "05_rotation.json"
    run = load_run("05_rotation")
    assert run.preset == "cpu" and run.info["encoder"] == "ConvNet"
    assert run.metrics["knn"] == 41.5 and run.metrics["linear"] == 52.25
    assert run.metrics["label_efficiency"] == {0.01: 20.0, 0.1: 35.5, 1.0: 52.25}
    assert run.metrics["per_block"] == {1: 30.0, 4: 41.0}
    assert run.metrics["history"] == {"losses": [1.0, 0.5], "epochs": [{"epoch": 1, "loss": 0.75}]}
    assert run.metrics["nan"] is None and run.metrics["note"] == "rotation, 4 angles"
    restored = run.load_encoder(ConvNet(width=4))
    for (name, a), b in zip(encoder.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), name
    assert not list(results_home.rglob("*.tmp"))


def test_runs_are_kept_per_preset(results_home):
    save_run("00_foundations_random", {"knn": 10.0})
    save_run("05_rotation", {"knn": 40.0}, budget="smoke")
    assert list_runs() == ["00_foundations_random"]
    assert list_runs("smoke") == ["05_rotation"]
    assert load_run("05_rotation", budget="smoke").state_dict is None


def test_missing_run_lists_the_runs_that_exist():
    save_run("07_moco", {"knn": 50.0})
    save_run("05_rotation", {"knn": 40.0})
    with pytest.raises(RunNotFoundError) as error:
        load_run("06_cpc")
    message = str(error.value)
    assert "05_rotation, 07_moco" in message and "06_cpc" in message and "'cpu'" in message


def test_corrupted_metrics_say_which_notebook_to_rerun(results_home):
    save_run("05_rotation_8angles", {"knn": 40.0})
    (results_home / "cpu" / "05_rotation_8angles.json").write_text('{"metrics": {"knn": 4')
    with pytest.raises(CorruptedRunError, match="corrupted.*Rerun 05_rotation"):
        load_run("05_rotation_8angles")


def test_corrupted_encoder_is_reported(results_home):
    save_run("07_moco", {"knn": 50.0}, ConvNet(width=4))
    weights = results_home / "cpu" / "07_moco.pt"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CorruptedRunError, match="07_moco.pt is corrupted.*Rerun 07_moco"):
        load_run("07_moco")
    weights.unlink()
    with pytest.raises(CorruptedRunError, match="missing"):
        load_run("07_moco")


def test_saving_without_encoder_removes_a_stale_one(results_home):
    save_run("01_denoising_autoencoders", {"knn": 1.0}, ConvNet(width=4))
    save_run("01_denoising_autoencoders", {"knn": 2.0})
    assert not (results_home / "cpu" / "01_denoising_autoencoders.pt").exists()
    assert json.loads((results_home / "cpu" / "01_denoising_autoencoders.json").read_text())["metrics"] == {"knn": 2.0}


@pytest.mark.parametrize("name", ["../escape", "", "a b", None])
def test_bad_names_are_rejected(name):
    with pytest.raises(ValueError, match="run name"):
        save_run(name, {})


def test_unserialisable_metric_is_a_clear_error():
    with pytest.raises(TypeError, match=r"metrics\['model'\]"):
        save_run("05_rotation", {"model": ConvNet(width=4)})
