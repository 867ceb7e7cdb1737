"""The training loop: resume is exact, NaN stops with a clear error, Ctrl-C keeps the model."""
import pytest
import torch
import torch.nn.functional as F

from sslcourse.data import DeviceBatches
from sslcourse.models import ConvNet
from sslcourse.train import CheckpointError, History, NonFiniteLossError, cosine_schedule, fit

EPOCHS, STEPS = 3, 4  # 64 images, batch 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_flip(x, generator):
    """A tiny augmentation that draws from the loader's generator, like sslcourse.augment does."""
    flip = torch.rand(len(x), 1, 1, 1, generator=generator, device=x.device) < 0.5
    return torch.where(flip, x.flip(3), x)


def make_loader():
    g = torch.Generator().manual_seed(123)
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 4, (64,), generator=g)
    return DeviceBatches(images, labels, 16, "cpu", augment=random_flip, mean=(0.5,) * 3, std=(0.25,) * 3, seed=7)


class Classifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = ConvNet(width=4)
        self.head = torch.nn.Linear(self.backbone.feature_dim, 4)

    def forward(self, x):
        return self.head(self.backbone(x))


def noisy_loss(model, batch):
    """Uses the global RNG (input noise), so resuming must restore it too."""
    x, y = batch
    logits = model(x + 0.1 * torch.randn_like(x))
    return F.cross_entropy(logits, y), {"acc": (logits.argmax(1) == y).float().mean()}


def make_run(init_seed=0):
    torch.manual_seed(init_seed)
    model = Classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scheduler = cosine_schedule(optimizer, EPOCHS * STEPS, warmup_steps=2)
    return model, optimizer, scheduler


QUIET = dict(device="cpu", progress=False, live_plot=False)


def train(loss_fn=noisy_loss, epochs=EPOCHS, checkpoint=None, init_seed=0, **kwargs):
    model, optimizer, scheduler = make_run(init_seed)
    torch.manual_seed(1)  # the data-independent randomness of the run (noise in the loss)
    history = fit(model, loss_fn, make_loader(), optimizer, epochs, scheduler=scheduler,
                  checkpoint=checkpoint, **QUIET, **kwargs)
    return model, history


def interrupt_at(global_step, loss_fn=noisy_loss):
    calls = {"n": 0}

    def loss(model, batch):
        calls["n"] += 1
        if calls["n"] == global_step:
            raise KeyboardInterrupt
        return loss_fn(model, batch)
    return loss


@pytest.fixture(scope="module")
def uninterrupted():
    return train()


def test_history_records_steps_epochs_and_metrics(uninterrupted):
    _, history = uninterrupted
    assert isinstance(history, History) and not history.interrupted
    assert len(history.losses) == EPOCHS * STEPS
    assert [e["epoch"] for e in history.epochs] == [1, 2, 3]
    for record in history.epochs:
        assert {"loss", "acc", "lr", "time"} <= set(record)
        assert 0 <= record["acc"] <= 1
    assert history.epochs[0]["loss"] == pytest.approx(sum(history.losses[:STEPS]) / STEPS)
    assert history.metric("acc") == [e["acc"] for e in history.epochs]


def test_resumed_run_ends_identical_to_uninterrupted(tmp_path, uninterrupted):
    model_a, history_a = uninterrupted
    path = tmp_path / "run.pt"
    # Ctrl-C in the middle of epoch 2: the checkpoint holds epoch 1.
    _, partial = train(loss_fn=interrupt_at(STEPS + 2), checkpoint=path)
    assert partial.interrupted and len(partial.losses) == STEPS + 1
    # A fresh kernel: another initialisation, another global seed; the checkpoint decides.
    model_b, history_b = train(checkpoint=path, init_seed=99)
    assert not history_b.interrupted
    assert history_b.losses == history_a.losses
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resuming"


def test_rerun_of_a_finished_run_trains_nothing(tmp_path, capsys):
    path = tmp_path / "done.pt"
    _, first = train(epochs=1, checkpoint=path)
    model, again = train(epochs=1, checkpoint=path, loss_fn=lambda m, b: pytest.fail("trained again"))
    assert again.losses == first.losses
    assert "nothing to train" in capsys.readouterr().out


def test_nan_loss_raises_clear_error_and_keeps_last_good_checkpoint(tmp_path):
    path = tmp_path / "nan.pt"
    calls = {"n": 0}

    def exploding(model, batch):
        calls["n"] += 1
        loss, metrics = noisy_loss(model, batch)
        return (loss * float("nan") if calls["n"] == STEPS + 3 else loss), metrics

    with pytest.raises(NonFiniteLossError) as error:
        train(loss_fn=exploding, checkpoint=path)
    message = str(error.value)
    assert "epoch 2/3, step 3/4" in message
    for cause in ("learning rate", "log of 0", "zero norm", "returns NaN"):
        assert cause in message
    assert str(path) in message
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_ctrl_c_keeps_the_weights_trained_so_far(capsys):
    snapshot = {}

    def loss(model, batch):
        snapshot["calls"] = snapshot.get("calls", 0) + 1
        if snapshot["calls"] == 6:
            snapshot["weights"] = {k: v.clone() for k, v in model.state_dict().items()}
            raise KeyboardInterrupt
        return noisy_loss(model, batch)

    model, history = train(loss_fn=loss)
    assert history.interrupted
    assert len(history.losses) == 5 and len(history.epochs) == 1
    for name, value in model.state_dict().items():
        assert torch.equal(value, snapshot["weights"][name]), name
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "interrupted at epoch 2, step 2" in out[0]


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    path = tmp_path / "other.pt"
    train(epochs=1, checkpoint=path)
    model = ConvNet(width=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(CheckpointError, match="different model"):
        fit(model, lambda m, b: m(b[0]).mean(), make_loader(), optimizer, 2, checkpoint=path, **QUIET)


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="Delete it"):
        train(epochs=1, checkpoint=path)


@pytest.mark.parametrize("bad, message", [
    (lambda m, b: m(b[0]).sum(1), "scalar loss"),
    (lambda m, b: m(b[0]).mean().detach(), "does not depend"),
])
def test_bad_loss_fn_is_a_clear_error(bad, message):
    with pytest.raises(TypeError, match=message):
        train(loss_fn=bad, epochs=1)


def test_on_epoch_end_and_plain_iterable_loader():
    torch.manual_seed(0)
    model = ConvNet(width=4)
    batches = [(torch.randn(8, 3, 16, 16), torch.zeros(8, dtype=torch.long)) for _ in range(3)]
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    seen = []

    def monitor(epoch, m):
        seen.append((epoch, m is model, m.training))
        m.eval()  # fit puts it back in train mode
        return {"knn": torch.tensor(12.5)}

    history = fit(model, lambda m, b: m(b[0]).square().mean(), batches, optimizer, 2, on_epoch_end=monitor,
                  log_every=2, **QUIET)
    assert seen == [(1, True, True), (2, True, True)]
    assert history.metric("knn") == [12.5, 12.5] and len(history.losses) == 6
    assert model.training


def test_bf16_autocast_on_cpu_when_asked():
    torch.manual_seed(0)
    model = ConvNet(width=4)
    dtypes = []

    def loss(m, b):
        out = m(b[0])
        dtypes.append(out.dtype)
        return out.float().square().mean()

    batches = [(torch.randn(4, 3, 16, 16),)]
    fit(model, loss, batches, torch.optim.SGD(model.parameters(), 0.1), 1, **QUIET)
    fit(model, loss, batches, torch.optim.SGD(model.parameters(), 0.1), 1, amp="bf16", **QUIET)
    assert dtypes == [torch.float32, torch.bfloat16]


def test_quiet_fit_writes_nothing_to_stderr(capfd):
    train(epochs=1)
    assert capfd.readouterr().err == ""


def slow_loss(seconds):
    import time

    def loss(model, batch):
        time.sleep(seconds)
        return noisy_loss(model, batch)
    return loss


def test_deadline_stops_after_the_current_read_back_and_records_a_partial_epoch(tmp_path, capsys):
    path = tmp_path / "deadline.pt"
    # 4 steps per epoch, losses read back every step; at least 0.05 s per step against a 0.34 s deadline: 7 steps
    # on an idle machine, and still inside the second epoch with up to 35 ms of overhead per step (a loaded one).
    _, history = train(loss_fn=slow_loss(0.05), epochs=EPOCHS, checkpoint=path, deadline_s=0.34, log_every=1)
    assert history.deadline_reached and not history.interrupted
    assert STEPS < len(history.losses) < EPOCHS * STEPS
    last = history.epochs[-1]
    assert last["partial"] and last["steps"] == len(history.losses) - STEPS * (len(history.epochs) - 1)
    assert "stopped at the deadline of 0.34 s" in capsys.readouterr().out
    # The checkpoint holds the last full epoch only, and resuming finishes the run exactly.
    assert torch.load(path, weights_only=True)["epoch"] == len(history.epochs) - 1
    _, resumed = train(checkpoint=path)
    assert len(resumed.epochs) == EPOCHS and not any(e.get("partial") for e in resumed.epochs)


def test_no_deadline_means_the_whole_run(uninterrupted):
    _, history = uninterrupted
    assert not history.deadline_reached and history.training_seconds > 0


def test_fit_draws_into_a_live_plot_it_is_given(monkeypatch):
    from sslcourse import plots

    drawn = []
    monkeypatch.setattr(plots, "in_notebook", lambda: True)
    monkeypatch.delenv("SSLCOURSE_FAST", raising=False)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    live = plots.LivePlot(title="mine", baselines={"acc": 0.25}, ylabel="accuracy", min_interval=0)
    monkeypatch.setattr(live, "update", lambda losses, epochs=(), force=False: drawn.append((len(losses), force)))
    model, optimizer, scheduler = make_run()
    fit(model, noisy_loss, make_loader(), optimizer, 1, scheduler=scheduler, device="cpu", progress=False,
        live_plot=live)
    assert drawn and drawn[-1] == (STEPS, True)      # the final state is drawn, forced
