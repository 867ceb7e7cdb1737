"""Distributed pretraining (sslcourse.distributed, sslcourse.pretrain) and the reference encoders students load.

The end-to-end tests start real processes: ``torchrun --nproc_per_node 2`` with the gloo backend on the
CPU, running ``python -m sslcourse pretrain moco`` on the smoke preset with the solution notebook's
functions. With the same global batch (``--shards 2``) and seed, one process and two processes must
record the same loss curve and kNN and end with the same weights, up to float rounding; a run killed
after its first checkpoint and started again must end where the uninterrupted run did.
"""
from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest
import torch

from conftest import ENV_BIN, REPO_ROOT, tool_env
from sslcourse import results
from sslcourse.budget import make_budget
from sslcourse.data import DeviceBatches
from sslcourse.distributed import Replicas, ShardedBatches, shard_indices
from sslcourse.models import make_backbone
from sslcourse.pretrain import add_to_manifest, functions_from_notebook
from sslcourse.files import file_sha256, torch_save_atomic
from sslcourse import augment

EPOCHS = 2


def _images(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8), torch.arange(n) % 10


# --------------------------------------------------------------------------- the sharded loader


def test_one_shard_serves_exactly_what_device_batches_serves():
    images, labels = _images()
    kwargs = dict(augment=augment.Compose([augment.RandomResizedCrop(8, (0.3, 1.0)), augment.RandomHorizontalFlip()]),
                  views=2, mean=(0.5,) * 3, std=(0.25,) * 3, seed=3)
    plain = DeviceBatches(images, labels, 16, "cpu", **kwargs)
    sharded = ShardedBatches(images, labels, 16, "cpu", Replicas(), **kwargs)
    assert len(plain) == len(sharded) == 3
    for ((a1, a2), ya), ((b1, b2), yb) in zip(plain.epoch(1), sharded.epoch(1)):
        assert torch.equal(a1, b1) and torch.equal(a2, b2) and torch.equal(ya, yb)


@pytest.mark.parametrize("world", [2, 4])
def test_processes_together_serve_the_one_process_batch_interleaved(world):
    """Process r's batch is samples r, r + W, ... of the global batch one process serves with the same shards,
    augmentation included (each shard has its own random stream)."""
    images, labels = _images()
    kwargs = dict(augment=augment.RandomResizedCrop(8, (0.3, 1.0)), views=1, seed=5, shards=4)
    one = list(ShardedBatches(images, labels, 16, "cpu", Replicas(), **kwargs).epoch(2))
    parts = [list(ShardedBatches(images, labels, 16, "cpu", Replicas(rank=r, world=world), **kwargs).epoch(2))
             for r in range(world)]
    for b, (x, y) in enumerate(one):
        for r in range(world):
            xr, yr = parts[r][b]
            assert xr.shape == (16 // world, 3, 8, 8)
            assert torch.equal(xr, x[r::world]) and torch.equal(yr, y[r::world])
    # and each process holds only its shards: a quarter (or half) of the images
    assert len(ShardedBatches(images, labels, 16, "cpu", Replicas(rank=1, world=world), **kwargs).images) * 4 == 48


def test_every_image_once_per_epoch_and_clear_errors():
    images, labels = _images(n=40)
    seen = torch.cat([y for _, y in ShardedBatches(images, torch.arange(40), 8, "cpu", Replicas(), shards=2).epoch(0)])
    assert sorted(seen.tolist()) == list(range(40))
    with pytest.raises(ValueError, match="multiple of 3"):
        ShardedBatches(images, labels, 16, "cpu", Replicas(), shards=3)
    with pytest.raises(ValueError, match="multiple of the 2 processes"):
        ShardedBatches(images, labels, 16, "cpu", Replicas(rank=0, world=2), shards=3)


def test_shard_indices_cover_everything_once_after_the_gather():
    for count, world in [(10, 3), (9, 3), (5, 4)]:
        rows = [shard_indices(count, Replicas(rank=r, world=world)) for r in range(world)]
        assert len({len(r) for r in rows}) == 1
        gathered = torch.stack(rows, dim=1).reshape(-1)[:count]
        assert gathered.tolist() == list(range(count))


# --------------------------------------------------------------------------- two processes against one

def _pretrain(out: Path, env: dict, *extra: str, processes: int = 1, wait: bool = True, method: str = "moco"):
    command = ([str(ENV_BIN / "torchrun"), "--standalone", "--nproc_per_node", str(processes)]
               if processes > 1 else [sys.executable])
    command += ["-m", "sslcourse", "pretrain", method, "--preset", "smoke", "--out", str(out), "--shards", "2",
                "--epochs", str(EPOCHS), *extra]
    if not wait:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    proc = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process and two gloo processes, the same global batches and seed."""
    root = tmp_path_factory.mktemp("pretrain")
    env = tool_env(data=root / "data", results=root / "results", OMP_NUM_THREADS="1")
    one = _pretrain(root / "one", env)
    two = _pretrain(root / "two", env, processes=2)
    return root, env, one, two


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(pid: int) -> None:
    for victim in [pid, *_descendants(pid)]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "moco-smoke.json").read_text())


def _weights(folder: Path) -> dict:
    return torch.load(folder / "moco-smoke.pt", weights_only=True)


def test_two_processes_match_one_process(runs):
    root, _, one_log, two_log = runs
    assert "1 process(es) on cpu" in one_log and "2 process(es) on cpu (gloo)" in two_log
    one, two = _metrics(root / "one"), _metrics(root / "two")
    assert (one["processes"], two["processes"]) == (1, 2)
    assert len(one["curve"]) == len(two["curve"]) == EPOCHS
    for a, b in zip(one["curve"], two["curve"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-5)
        assert b["knn"] == a["knn"]
    assert two["knn"] == one["knn"] and two["linear"] == pytest.approx(one["linear"], abs=1.0)
    w1, w2 = _weights(root / "one"), _weights(root / "two")
    assert w1.keys() == w2.keys()
    for name in w1:
        if w1[name].is_floating_point():
            torch.testing.assert_close(w2[name], w1[name], rtol=1e-3, atol=1e-4, msg=name)
    # the weights moved: the comparison is not of two untouched networks
    torch.manual_seed(0)
    fresh = make_backbone(make_budget("smoke")).state_dict()
    assert any(not torch.allclose(fresh[k].float(), w1[k].float(), atol=1e-3) for k in w1 if w1[k].is_floating_point())


def test_a_killed_run_resumes_exactly(runs):
    root, env, _, _ = runs
    out = root / "killed"
    proc = _pretrain(out, env, "--epochs", "6", processes=2, wait=False)   # the later --epochs wins
    checkpoint = out / "moco-smoke.checkpoint.pt"
    deadline = time.monotonic() + 600
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    _kill_tree(proc.pid)                                # preemption: torchrun and its workers die at once
    log = proc.communicate(timeout=60)[0]
    assert checkpoint.exists(), log[-4000:]
    assert not (out / "moco-smoke.json").exists(), "the run finished before it was killed; nothing was tested"
    epochs_done = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= epochs_done < 6
    resumed = _pretrain(out, env, "--epochs", "6", processes=2)
    assert f"resuming from {checkpoint} after epoch {epochs_done} of 6" in resumed
    uninterrupted = root / "uninterrupted"
    _pretrain(uninterrupted, env, "--epochs", "6", processes=2)
    a, b = _metrics(uninterrupted), _metrics(out)
    assert [e["loss"] for e in b["curve"]] == pytest.approx([e["loss"] for e in a["curve"]], rel=1e-6)
    assert b["knn"] == a["knn"]
    wa, wb = _weights(uninterrupted), _weights(out)
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-5, atol=1e-6, msg=name)


# --------------------------------------------------------------------------- what students load

def test_students_load_the_reference_encoder_and_a_corrupted_one_is_refused(runs, tmp_path):
    root = runs[0]
    run = results.load_reference_encoder("moco", "smoke", source=root / "two")
    assert run.metrics["knn"] == _metrics(root / "two")["knn"] and run.metrics["processes"] == 2
    assert set(run.metrics["label_efficiency"]) == {0.01, 0.1, 1.0}
    backbone = run.load_encoder(make_backbone(make_budget("smoke")))
    assert torch.equal(backbone.state_dict()["blocks.0.0.0.weight"], _weights(root / "two")["blocks.0.0.0.weight"])

    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("manifest.json", "moco-smoke.pt"):
        (copy / name).write_bytes((root / "two" / name).read_bytes())
    damaged = bytearray((copy / "moco-smoke.pt").read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (copy / "moco-smoke.pt").write_bytes(bytes(damaged))
    expected = json.loads((copy / "manifest.json").read_text())["encoders"]["moco/smoke"]["sha256"]
    with pytest.raises(results.CorruptedRunError, match=f"expected sha256 {expected}, got [0-9a-f]{{64}}"):
        results.load_reference_encoder("moco", "smoke", source=copy)
    with pytest.raises(results.ReferenceNotFoundError, match="no reference encoder 'moco/gpu'.*moco/smoke"):
        results.load_reference_encoder("moco", "gpu", source=copy)


def test_no_source_configured_says_what_to_set(monkeypatch):
    monkeypatch.delenv("SSLCOURSE_REFERENCE", raising=False)
    with pytest.raises(results.ReferenceNotFoundError, match="set SSLCOURSE_REFERENCE"):
        results.load_reference_encoder("moco")


def test_a_pickle_that_runs_code_is_never_loaded(tmp_path):
    """Even with a matching sha256 (a malicious instructor URL), weights_only refuses objects that run code."""
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    add_to_manifest(tmp_path, "moco/gpu", {"file": "evil.pt", "sha256": file_sha256(tmp_path / "evil.pt")})
    with pytest.raises(results.CorruptedRunError, match="cannot be loaded"):
        results.load_reference_encoder("moco", "gpu", source=tmp_path)


def test_download_from_a_url_is_verified_and_cached(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    torch_save_atomic({"w": torch.arange(6.0)}, served / "moco-gpu.pt")
    add_to_manifest(served, "moco/gpu", {"file": "moco-gpu.pt", "sha256": file_sha256(served / "moco-gpu.pt"),
                                         "metrics": {"knn": 80.5}})
    monkeypatch.setenv("SSLCOURSE_DATA", str(tmp_path / "data"))
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        monkeypatch.setenv("SSLCOURSE_REFERENCE", url)
        run = results.load_reference_encoder("moco")
        assert run.metrics == {"knn": 80.5} and torch.equal(run.state_dict["w"], torch.arange(6.0))
        cached = list((tmp_path / "data" / "reference").glob("*moco-gpu.pt"))
        assert len(cached) == 1
        # the server now serves a replaced file under the old manifest: the cached copy is used
        (served / "moco-gpu.pt").write_bytes(b"not a checkpoint")
        assert torch.equal(results.load_reference_encoder("moco").state_dict["w"], torch.arange(6.0))
        # a damaged cache is fetched again, and what the server now serves fails the check
        cached[0].write_bytes(b"damaged")
        with pytest.raises(results.CorruptedRunError, match="does not match its manifest"):
            results.load_reference_encoder("moco")
    finally:
        server.shutdown()


def test_pretrain_refuses_a_student_release_and_names_the_solution_notebook(tmp_path):
    release = REPO_ROOT / "notebooks" / "07_moco" / "07_moco.ipynb"
    if release.exists():
        with pytest.raises(ValueError, match="holds no solutions"):
            functions_from_notebook(release, ["moco_step"])
    with pytest.raises(ValueError, match="found no file"):
        functions_from_notebook(tmp_path / "missing.ipynb", ["moco_step"])
    found = functions_from_notebook(REPO_ROOT / "solutions" / "07_moco" / "07_moco.ipynb", ["enqueue_dequeue"])
    assert callable(found["enqueue_dequeue"])


def test_the_notebook_cell_probes_the_reference_on_the_students_data(runs, monkeypatch, capsys):
    from types import SimpleNamespace

    from sslcourse import reference_encoder
    from sslcourse.data import embedded_digits

    session = SimpleNamespace(data=embedded_digits(256, 128), device=torch.device("cpu"), budget=make_budget("smoke"))
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    monkeypatch.setenv("SSLCOURSE_REFERENCE", str(runs[0] / "two"))
    found = reference_encoder.probe("moco", session, preset="smoke")
    out = capsys.readouterr().out
    assert found is not None and 0 <= found["knn"] <= 100 and 0 <= found["linear"] <= 100
    assert found["instructor"]["processes"] == 2
    assert "reference encoder 'moco/smoke'" in out and "on your data (embedded, 256 / 128 images)" in out
    # the student's kNN is the course's kNN of those weights, not a number copied from the manifest
    weights = _weights(runs[0] / "two")
    backbone = make_backbone(make_budget("smoke"))
    backbone.load_state_dict(weights)
    from sslcourse.evaluate import evaluate_encoder
    assert found["knn"] == evaluate_encoder(backbone, session.data, "cpu", linear=False)["knn"]

    assert reference_encoder.probe("rotation", session, preset="smoke") is None
    assert "no reference encoder 'rotation/smoke'" in capsys.readouterr().out
    monkeypatch.delenv("SSLCOURSE_REFERENCE")
    assert reference_encoder.probe("moco", session) is None
    assert "set SSLCOURSE_REFERENCE" in capsys.readouterr().out
    monkeypatch.setenv("SSLCOURSE_REFERENCE", str(runs[0] / "two"))
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert reference_encoder.probe("moco", session, preset="smoke") is None
    assert "skipped while grading" in capsys.readouterr().out


def test_rotation_pretrains_on_two_processes(runs):
    """RotNet's plain batch norm sees each process's half of the batch (DDP without SyncBatchNorm), so two
    processes follow one closely but not to the bit; the encoder lands in the same manifest format."""
    root, env, _, _ = runs
    out = root / "rotation"
    log = _pretrain(out, env, processes=2, method="rotation")
    assert "2 process(es) on cpu (gloo)" in log
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["encoders"]["rotation/smoke"]["sha256"] == file_sha256(out / "rotation-smoke.pt")
    one = _pretrain(root / "rotation-one", env, method="rotation")
    assert "1 process(es)" in one
    a = json.loads((root / "rotation-one" / "rotation-smoke.json").read_text())
    b = json.loads((out / "rotation-smoke.json").read_text())
    assert [e["loss"] for e in b["curve"]] == pytest.approx([e["loss"] for e in a["curve"]], rel=0.02)
    assert results.load_reference_encoder("rotation", "smoke", source=out).metrics["processes"] == 2


@pytest.mark.parametrize("method", ["denoising", "context_encoder", "relative_position", "cpc"])
def test_the_other_recipes_pretrain_on_two_processes(runs, method):
    """The joint GAN loss of 02 (three networks, one backward), 01's per-process corruptions, 04's per-process
    patch positions and 06's per-process negatives run under DDP; 04's and 06's manifests say their probes see
    images upsampled to 64 px (both encoders learned on 16-px patches of 64-px images)."""
    root, env, _, _ = runs
    out = root / method
    log = _pretrain(out, env, processes=2, method=method)
    assert "2 process(es) on cpu (gloo)" in log and f"sslcourse pretrain {method}: kNN" in log
    metrics = json.loads((out / f"{method}-smoke.json").read_text())
    assert metrics["processes"] == 2 and len(metrics["curve"]) >= 1
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in metrics["curve"])
    run = results.load_reference_encoder(method, "smoke", source=out)
    run.load_encoder(make_backbone(make_budget("smoke")))    # the encoder is the course's backbone
    assert run.info["model"] == "backbone"
    assert run.info["features"] == ("upsampled to 64 px" if method in ("relative_position", "cpc") else None)


def test_split_brain_pretrains_and_students_probe_both_halves_through_their_own_views(runs, monkeypatch, capsys):
    """03's weights are two half-networks and their decoders, not the course backbone: the manifest says so, and
    the notebook's probe reads them through the student's own Lab conversion, as 03 probes the student's run."""
    from types import SimpleNamespace

    from sslcourse import reference_encoder
    from sslcourse.data import embedded_digits
    from sslcourse.pretrain import METHODS
    from sslcourse.recipes import split_brain

    root, env, _, _ = runs
    out = root / "split_brain"
    log = _pretrain(out, env, processes=2, method="split_brain")
    assert "2 process(es) on cpu (gloo)" in log and "sslcourse pretrain split_brain: kNN" in log
    run = results.load_reference_encoder("split_brain", "smoke", source=out)
    assert run.info["model"] == "split_brain" and run.info["image_size"] == 32 and run.metrics["processes"] == 2
    with pytest.raises(RuntimeError):          # not the course backbone: the state dict does not fit one
        run.load_encoder(make_backbone(make_budget("smoke")))

    functions = functions_from_notebook(REPO_ROOT / "solutions" / "03_view_prediction" / "03_view_prediction.ipynb",
                                        METHODS["split_brain"].functions)
    views = {name: functions[name] for name in reference_encoder.PROBE_FUNCTIONS["split_brain"]}
    session = SimpleNamespace(data=embedded_digits(256, 128), device=torch.device("cpu"), budget=make_budget("smoke"))
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    monkeypatch.setenv("SSLCOURSE_REFERENCE", str(out))
    with pytest.raises(ValueError, match="needs the notebook's rgb_to_lab, split_views, split_brain_features"):
        reference_encoder.probe("split_brain", session, preset="smoke")
    found = reference_encoder.probe("split_brain", session, preset="smoke", functions=views)
    assert "reference encoder 'split_brain/smoke'" in capsys.readouterr().out
    model = run.load_encoder(split_brain.new_split_brain(make_budget("smoke"), 32, seed=0))
    expected = split_brain.probe(model, split_brain.PARTS[2], session.data, "cpu", make_budget("smoke"), **views)
    assert found["knn"] == expected["knn"]
