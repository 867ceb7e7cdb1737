"""08_summary's reading of the student's runs (sslcourse/summary.py), and the notebook itself after every
method notebook has saved a run (test_notebooks.py runs it with none saved).

The saved runs are fake but valid (tests/fake_runs.py): made through save_run with the metric keys and
the kinds of encoder the notebooks save, so this runs in seconds instead of after eight notebooks.
"""
from __future__ import annotations

import json
import os
import shutil

import matplotlib
import nbformat
import pytest
import torch
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

from sslcourse import plots, summary
from sslcourse.budget import make_budget
from sslcourse.data import embedded_digits
from sslcourse.reference import METHODS, load_reference, primary

from conftest import SCRATCH_PATTERNS, SOLUTIONS, execute_timeout, tool_env
from fake_runs import save_fake_runs

SMOKE = make_budget("smoke")


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(0)
    return embedded_digits(96, 48)


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLCOURSE_RESULTS", str(tmp_path / "results"))
    for name in ("NBGRADER_EXECUTION", "SSLCOURSE_BUDGET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SSLCOURSE_FAST", "1")
    return tmp_path / "results"


def test_nothing_saved_says_which_notebook_to_run(results_dir, data, one_torch_thread):
    entries = summary.collect(SMOKE, "embedded")
    assert [e.method for e in entries] == list(METHODS)
    assert all(e.status == "missing" for e in entries)
    assert "run 04_patch_position to the end" in next(e for e in entries if e.method.key == "jigsaw").message
    features = summary.Features(SMOKE, data, "cpu")
    said = summary.complete(entries, features)
    random = entries[0]
    assert random.ok and set(random.label_efficiency) == {0.01, 0.1, 1.0} and "not run" in said[0]
    assert features.get(entries[2]) is None and "01_denoising_autoencoders" in features.skipped["denoising"]


def test_every_saved_encoder_is_rebuilt_and_probed(results_dir, data, one_torch_thread):
    save_fake_runs(SMOKE, "embedded")
    entries = summary.collect(SMOKE, "embedded")
    assert all(e.ok for e in entries), [(e.method.key, e.message) for e in entries]
    by_key = {e.method.key: e for e in entries}
    assert by_key["supervised"].knn == 40.0 and by_key["random_init"].label_efficiency[0.1] == 14.0
    assert by_key["moco"].efficiency_source == "saved by the notebook" and by_key["moco"].curve["knn"] == [16.0, 18.0]
    assert by_key["denoising"].random_init == {"knn": 14.0, "linear": 20.0} and by_key["denoising"].seconds == 3.0
    assert by_key["rotation"].device.startswith("cpu")
    features = summary.Features(SMOKE, data, "cpu")
    sizes = []
    encoder = summary.build_encoder(by_key["jigsaw"], SMOKE, data)
    encoder.module.register_forward_pre_hook(lambda module, inputs: sizes.append(tuple(inputs[0].shape[-2:])))
    summary.encoder_features(encoder, data.test_x[:4], data, "cpu")
    assert sizes == [(64, 64)], "04's encoders read images at 64 px, as their notebook probed them"
    said = summary.complete(entries, features)
    assert len(said) == 7 and all("measured here" in line for line in said)      # 01-06: 7 encoders without a curve
    for entry in entries:
        train_f, test_f = features.get(entry)
        assert train_f.shape[0] == len(data.train_x) and test_f.shape[0] == len(data.test_x)
        assert torch.isfinite(test_f).all() and entry.label_efficiency is not None
    split = features.cache["split_brain"][1]
    assert split.shape[1] == models_feature_dim(), "the split-brain halves are concatenated"
    assert not torch.allclose(features.cache["rotation"][1], features.cache["cpc"][1]), "each run its own weights"


def models_feature_dim():
    from sslcourse import models
    return models.make_backbone(SMOKE).feature_dim


def test_a_broken_or_foreign_run_is_set_aside_with_a_reason(results_dir, data):
    save_fake_runs(SMOKE, "embedded")
    (results_dir / "smoke" / "05_rotation.json").write_text("{broken")
    (results_dir / "smoke" / "07_moco.pt").unlink()
    record = json.loads((results_dir / "smoke" / "02_context_encoders.json").read_text())
    record["metrics"]["dataset"] = "cifar10"
    (results_dir / "smoke" / "02_context_encoders.json").write_text(json.dumps(record))
    by_key = {e.method.key: e for e in summary.collect(SMOKE, "embedded")}
    assert by_key["rotation"].status == "corrupted" and "Rerun 05_rotation" in by_key["rotation"].message
    assert by_key["moco"].status == "corrupted" and "07_moco.pt is missing" in by_key["moco"].message
    assert by_key["context_encoder"].status == "other dataset" and "'cifar10'" in by_key["context_encoder"].message
    with pytest.raises(ValueError, match="rerun 02_context_encoders"):
        summary.build_encoder(by_key["context_encoder"], SMOKE, data)
    with pytest.raises(ValueError, match="do not fit"):
        summary.build_encoder(by_key["supervised"], make_budget("cpu"), data)   # width 16 weights, width 32 backbone


def test_the_evidence_for_the_reflection_shows_pretext_accuracy_beside_the_probes(results_dir):
    rows = load_reference()
    references, _ = summary.references_for(rows, "cpu", "cifar10")
    alone = summary.pretext_evidence(summary.collect("cpu", "cifar10"), references, "cpu", "cifar10")
    # no run of the student's: the course's measured settings of 04 and its reference gains, marked as such
    assert "run 04_patch_position to the end" in alone
    assert "no gap, no jitter, full colour (the shortcut)        84.2    30.5    48.9  the course's run" in alone
    moco = references["moco"]
    gain = moco.knn - moco.random_init["knn"]
    assert f"kNN {gain:+.1f} ({gain / moco.minutes:+.2f}/min)" in alone and "reference run (cpu, cifar10)" in alone
    assert "context encoder 56.5" in alone and "4 rotations 89.06" in alone and "CPC 64.6 / 97.4" in alone
    assert "colorization 39.6;  CPC v1 48.7" in alone     # the ImageNet figures 06's question 3 quotes

    save_fake_runs(SMOKE, "embedded")
    references, _ = summary.references_for(rows, "smoke", "embedded")
    shown = summary.pretext_evidence(summary.collect(SMOKE, "embedded"), references, SMOKE, "embedded")
    assert "no gap, no jitter, full colour (the shortcut)        83.0    13.0    19.5" in shown
    assert "jigsaw                                               57.0    16.5    22.0" in shown
    assert "4 rotations (last block)                             71.0    19.0    26.0  paper, non-linear on block 2: 89.06" in shown
    assert "kNN +4.0 (+80.00/min)  linear +4.0 (+80.00/min)  yours" in shown     # 04: 18 - 14, 24 - 20 in 3 s
    assert "the course's run" not in shown and "reference run" not in shown

    record = json.loads((results_dir / "smoke" / "05_rotation.json").read_text())
    record["metrics"]["rotation_table"]["4 rotations"]["pretext"] = "a lot"     # hand-edited: shown as unknown
    (results_dir / "smoke" / "05_rotation.json").write_text(json.dumps(record))
    shown = summary.pretext_evidence(summary.collect(SMOKE, "embedded"), references, SMOKE, "embedded")
    assert f"{'4 rotations (last block)':<48} {'—':>8} {'19.0':>7} {'26.0':>7}" in shown


def test_split_brain_halves_see_the_views_the_students_own_split_views_made(results_dir, data):
    """03 measures its split_views' scaling and saves it; 08 feeds the saved halves those views (and the course's
    scaling for a run saved without it), so the package does not answer the exercise for 08."""
    from sslcourse.recipes.split_brain import AB_SCALE, L_CENTER, L_SCALE, view_scaling

    def course_views(lab):
        return (lab[:, :1] - L_CENTER) / L_SCALE, lab[:, 1:] / AB_SCALE

    measured = view_scaling(course_views)
    assert measured == pytest.approx({"L_center": L_CENTER, "L_scale": L_SCALE, "ab_scale": AB_SCALE})
    assert view_scaling(lambda lab: (lab[:, :1] / 100, lab[:, 1:] / 128)) == pytest.approx(
        {"L_center": 0.0, "L_scale": 100.0, "ab_scale": 128.0})
    assert view_scaling(lambda lab: (torch.tanh(lab[:, :1]), lab[:, 1:])) is None         # not an affine scaling
    assert view_scaling(lambda lab: (_ for _ in ()).throw(NotImplementedError())) is None   # an unfinished exercise

    save_fake_runs(SMOKE, "embedded")
    entry = next(e for e in summary.collect(SMOKE, "embedded") if e.method.key == "split_brain")
    assert summary.build_encoder(entry, SMOKE, data).module.scale == (L_CENTER, L_SCALE, AB_SCALE)
    path = results_dir / "smoke" / "03_view_prediction.json"
    record = json.loads(path.read_text())
    record["metrics"]["views"] = {"L_center": 0.0, "L_scale": 100.0, "ab_scale": 128.0}
    path.write_text(json.dumps(record))
    entry = next(e for e in summary.collect(SMOKE, "embedded") if e.method.key == "split_brain")
    encoder = summary.build_encoder(entry, SMOKE, data)
    assert encoder.module.scale == (0.0, 100.0, 128.0)
    L_inputs = []
    encoder.module.model.encoder_L.register_forward_pre_hook(lambda module, inputs: L_inputs.append(inputs[0]))
    summary.encoder_features(encoder, data.test_x[:4], data, "cpu")
    assert L_inputs[0].min() >= 0 and L_inputs[0].max() <= 1.0, "L / 100 lies in [0, 1], not (L - 50) / 50"


def test_references_fall_back_to_the_cpu_rows_with_a_caption():
    rows = load_reference()
    shown, caption = summary.references_for(rows, "smoke", "embedded")
    assert shown["moco"].preset == "cpu" and "for scale only" in caption and "smoke numbers are noise" in caption
    shown, caption = summary.references_for(rows, "gpu", "cifar10")
    assert shown["moco"].preset == "cpu" and "no measured gpu-preset run" in caption
    shown, caption = summary.references_for(rows, "cpu", "cifar10")
    rotation_seed0 = next(r for r in rows if (r.method, r.preset, r.seed) == ("rotation", "cpu", 0))
    assert shown["rotation"] == rotation_seed0 and shown["denoising"].seed == 0 and shown["cpc"].measured


def test_table_and_figures_with_and_without_runs(results_dir, data, one_torch_thread):
    plots.use_agg_backend()
    shown, caption = summary.references_for(load_reference(), "smoke", "embedded")
    shown = {**shown, "cpc": primary(load_reference(), "cpc", "gpu", "cifar10")}   # a reference not measured yet
    for saved in (False, True):
        if saved:
            save_fake_runs(SMOKE, "embedded", skip=("06_cpc",))
        entries = summary.collect(SMOKE, "embedded")
        features = summary.Features(SMOKE, data, "cpu")
        summary.complete(entries, features)
        table = summary.format_table(entries, shown, caption)
        assert "not measured: no GPU was lent" in table and "ref" in table   # the placeholder's note, in place of numbers
        assert ("run 06_cpc to the end" in table) and (("split-brain autoencoder" in table))
        for fig in (summary.plot_probe_bars(entries, shown), summary.plot_probe_bars(entries, shown, taxonomy="lecture"),
                    summary.plot_label_efficiency(entries, shown), summary.plot_training_curves(entries, shown)):
            assert fig.axes
            matplotlib.pyplot.close(fig)
        embedded = {e.label: features.get(e)[1] for e in entries if features.get(e) is not None}
        assert len(embedded) == (9 if saved else 1)
        for how in ("pca", "tsne"):
            matplotlib.pyplot.close(summary.plot_embeddings(embedded, data.test_y, data.classes, how=how))
        neighbours = {label: (data.train_x[:3], data.train_y[:3], torch.ones(3)) for label in embedded}
        matplotlib.pyplot.close(summary.plot_retrieval(data.test_x[0], int(data.test_y[0]), neighbours, data.classes))


@pytest.mark.slow
def test_summary_notebook_runs_after_every_method_notebook_saved_a_run(tmp_path, course_data_dir, monkeypatch):
    """The same run as test_notebooks.py, but with a saved run of every method notebook (fake, valid)."""
    assignment = "08_summary"
    workdir = tmp_path / assignment
    shutil.copytree(SOLUTIONS / assignment, workdir, ignore=shutil.ignore_patterns(*SCRATCH_PATTERNS))
    env = tool_env(data=course_data_dir, results=tmp_path / "results", SSLCOURSE_FAST="1")
    for name in set(os.environ) - set(env):
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    saved = save_fake_runs(SMOKE, "embedded")
    nb = nbformat.read(workdir / f"{assignment}.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=execute_timeout(), kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError) as error:
        pytest.fail(f"08_summary failed with saved runs: {str(error)[-3000:]}", pytrace=False)
    printed = {cell.metadata["nbgrader"]["grade_id"]: "".join(o.get("text", "") for o in cell.get("outputs", [])
                                                               if o.output_type == "stream")
               for cell in nb.cells if cell.cell_type == "code"}
    found = [line for line in printed["load_runs"].splitlines() if line.endswith(" found")]
    assert len(found) == 10 and "To complete the comparison" not in printed["load_runs"], printed["load_runs"]
    assert "label efficiency measured here from the saved encoder" in printed["table"]
    assert "10 encoders" in printed["embeddings"] and "skipped" not in printed["embeddings"]
    assert "MoCo" in printed["gains"] and "gap closed" in printed["gains"]
    assert len(saved) == 9 and sorted(p.name for p in workdir.iterdir()) == [f"{assignment}.ipynb"]
