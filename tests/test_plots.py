"""Figures render (Agg backend) and the live plot redraws at most once per interval."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from sslcourse import plots  # noqa: E402
from sslcourse.train import History  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_image_grid_accepts_uint8_and_float_with_labels():
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    fig = plots.image_grid(images, labels=list(range(10)), nrow=4, title="t", classes=[str(c) * 2 for c in range(10)])
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 10 and shown[3].get_title() == "33"
    assert len(fig.axes) == 12  # 3 rows of 4
    plots.image_grid(torch.rand(4, 1, 8, 8))
    with pytest.raises(ValueError, match="labels"):
        plots.image_grid(images, labels=[1, 2])
    with pytest.raises(ValueError, match=r"\[N, 1 or 3, H, W\]"):
        plots.image_grid(torch.rand(4, 2, 8, 8))


def test_reconstructions_one_row_per_entry():
    x = torch.rand(5, 3, 8, 8)
    fig = plots.plot_reconstructions({"clean": x, "noisy": x, "reconstructed": x}, n=4)
    assert [ax.get_ylabel() for ax in fig.axes[::4]] == ["clean", "noisy", "reconstructed"]


def test_curves_from_dict_and_history():
    fig = plots.plot_curves({"rotation": [1, 2, 3], "moco": {1: 2.0, 2: 3.0}}, ylabel="kNN %")
    assert len(fig.axes[0].lines) == 2
    history = History(losses=[3.0, 2.0, 1.5, 1.0], epochs=[{"epoch": 1, "loss": 2.5, "knn": 20.0},
                                                           {"epoch": 2, "loss": 1.25, "knn": 30.0}])
    fig = plots.plot_curves(history)
    assert len(fig.axes) == 2  # loss per step, metrics per epoch


def test_similarity_embedding_and_label_efficiency():
    m = torch.eye(4)
    fig = plots.plot_similarity(m, labels=list("abcd"), title="cos")
    assert len(fig.axes[0].texts) == 16
    assert not plots.plot_similarity(torch.rand(20, 20)).axes[0].texts
    with pytest.raises(ValueError, match="2-D"):
        plots.plot_similarity(torch.rand(2, 2, 2))
    plots.plot_embedding(torch.randn(50, 8), torch.arange(50) % 3, classes=["a", "b", "c"])
    fig = plots.plot_label_efficiency({"random": {0.01: 20, 0.1: 30, 1.0: 40}, "moco": {1.0: 60, 0.01: 40}})
    assert [line.get_xdata().tolist() for line in fig.axes[0].lines][1] == [1.0, 100.0]


def test_live_plot_is_off_outside_notebooks_and_under_grading(monkeypatch):
    assert not plots.in_notebook()
    assert not plots.LivePlot().enabled
    assert not plots.live_plot_allowed({"NBGRADER_EXECUTION": "autograde"})
    assert not plots.live_plot_allowed({"SSLCOURSE_FAST": "1"})
    live = plots.LivePlot()
    assert not live.update([1.0, 2.0], force=True)


def test_live_plot_redraws_at_most_once_per_interval(monkeypatch):
    shown = []

    class Handle:
        def update(self, obj):
            shown.append(("update", obj))

    def display(obj, display_id=False):
        shown.append(("display", obj))
        return Handle()

    import IPython.display

    monkeypatch.setattr(IPython.display, "display", display)
    live = plots.LivePlot(enabled=True, min_interval=3600)
    assert live.update([1.0, 0.5])
    assert not live.update([1.0, 0.5, 0.4])  # within the interval: skipped
    assert live.update([1.0, 0.5, 0.4], [{"epoch": 1, "loss": 0.6, "knn": 10.0}], force=True)
    assert [kind for kind, _ in shown] == ["display", "update"]
    assert shown[0][1].data[:8] == b"\x89PNG\r\n\x1a\n"


def test_history_plot_keeps_one_colour_per_metric_and_draws_baselines():
    history = History(losses=[3.0, 2.0, 1.5, 1.0], epochs=[{"epoch": 1, "loss": 2.5, "pretext_acc": 50.0, "knn": 20.0},
                                                           {"epoch": 2, "loss": 1.25, "pretext_acc": 60.0, "knn": 30.0}])
    fig = plots.plot_curves(history, baselines={"knn": 16.0}, ylabel="accuracy (%)")
    metrics = fig.axes[1]
    assert metrics.get_ylabel() == "accuracy (%)"
    lines = {line.get_label(): line for line in metrics.lines}
    assert set(lines) == {"pretext_acc", "knn", "knn, random init"}
    assert lines["knn"].get_color() == lines["knn, random init"].get_color() != lines["pretext_acc"].get_color()
    assert lines["knn, random init"].get_linestyle() == "--"
    assert list(lines["knn, random init"].get_ydata()) == [16.0, 16.0]
    # The live plot draws the same figure: same metric order, hence the same colours.
    assert plots.metric_names(history.epochs) == ["pretext_acc", "knn"]


def test_distinct_colours_gives_one_colour_per_label():
    colours = plots.distinct_colours(24)
    assert colours.N == 24 and len({tuple(colours(i)) for i in range(24)}) == 24
    with pytest.raises(ValueError, match="between 1 and 40 colours, got 41"):
        plots.distinct_colours(41)
