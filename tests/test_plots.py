"""Every figure the package makes shows as a picture in a notebook, whatever the matplotlib backend."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell

from mlops_day28 import tracking as plots
from mlops_day28.training import History

_spec = importlib.util.spec_from_file_location("project_conftest", Path(__file__).resolve().parents[1] / "conftest.py")
conftest = importlib.util.module_from_spec(_spec)  # the project's root conftest.py: it checks what nbval's cells show
_spec.loader.exec_module(conftest)


@pytest.fixture(scope="module")
def shell():
    "A plain IPython shell: no `%matplotlib inline`, so no PNG printer registered for matplotlib's Figure."
    return InteractiveShell.instance()


def _figures():
    history = History(
        epochs=[
            {"epoch": e, "train_loss": 1 / e, "val_loss": 1 / e, "train_accuracy": 0.5, "val_accuracy": 0.5}
            for e in (1, 2)
        ],
        best_epoch=2,
    )
    table = pd.DataFrame(
        [
            {"a": a, "b": b, "c": c, "state": "complete", "final_val_accuracy": 0.5 + a / 10 + b / 100 + c / 1000}
            for a in (1, 2)
            for b in (3, 4)
            for c in (5, 6)
        ]
    )
    y = np.arange(10) % 3
    yield "plot_training_curves", plots.plot_training_curves(history)
    yield "plot_confusion_matrix", plots.plot_confusion_matrix(y, y)
    yield "plot_heatmaps", plots.plot_heatmaps(table, ["a", "b", "c"])
    yield "plot_parallel_coordinates", plots.plot_parallel_coordinates(table, ["a", "b", "c"])


def test_every_plot_helper_is_covered():
    helpers = {n for n in plots.__all__ if n.startswith("plot_")}
    assert helpers == {name for name, _ in _figures()}


@pytest.mark.parametrize("name,fig", list(_figures()), ids=lambda v: v if isinstance(v, str) else "")
def test_a_returned_figure_renders_as_png(name, fig, shell):
    data, _ = shell.display_formatter.format(fig)
    assert data["image/png"][:8] == b"\x89PNG\r\n\x1a\n", f"{name} shows as {data.get('text/plain')!r}"


def test_a_plain_figure_would_show_as_text(shell):
    "What the checks below guard against: matplotlib's own Figure, returned before `%matplotlib inline`."
    from matplotlib.figure import Figure

    fig = Figure()
    fig.subplots()
    data, _ = shell.display_formatter.format(fig)
    assert "image/png" not in data and data["text/plain"].startswith("<Figure size")


def test_the_notebook_output_check_names_a_figure_printed_as_text():
    as_text = {"output_type": "execute_result", "data": {"text/plain": "<Figure size 840x360 with 3 Axes>"}}
    shown = {"output_type": "execute_result", "data": {"text/plain": "<Figure size 8x3 with 1 Axes>", "image/png": ""}}
    warning = {"output_type": "stream", "name": "stderr", "text": "2026/12/05 WARNING mlflow.models: no artifacts\n"}
    assert conftest.shown_wrong([as_text], exercise=False) == [
        "a plot shows as text, not as an image: <Figure size 840x360 with 3 Axes>"
    ]
    assert conftest.shown_wrong([shown], exercise=True) == []
    assert conftest.shown_wrong([warning], exercise=False) == []  # reference notebooks may show library warnings
    assert conftest.shown_wrong([warning], exercise=True) == [
        "a WARNING on stderr: 2026/12/05 WARNING mlflow.models: no artifacts"
    ]
