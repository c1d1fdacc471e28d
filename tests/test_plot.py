"""optax_neuronlr.plot: each figure renders to a PNG; matplotlib stays optional."""

from __future__ import annotations

import subprocess
import sys
import warnings

import jax
import numpy as np
import optax
import pytest

import optax_neuronlr as nlr
from optax_neuronlr._src.recorder import RateRecorder
from tests.test_recorder import fake_grads
from tests.test_recorder import mlp_params

pytest.importorskip("matplotlib")
from optax_neuronlr import plot  # pylint: disable=g-import-not-at-top

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_importing_the_package_does_not_import_matplotlib():
  code = (
      "import sys, optax_neuronlr, optax_neuronlr.plot\n"
      "from optax_neuronlr._src import recorder\n"
      "loaded = [m for m in sys.modules if m.split('.')[0] == 'matplotlib']\n"
      "assert not loaded, loaded\n"
  )
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.fixture(scope="module")
def trained():
  """State and recorder after 30 steps of sign_consistency_lr on a small MLP."""
  tx = nlr.sign_consistency_lr(1e-2, granularity="neuron", max_lr=0.05)
  params = mlp_params()
  state = tx.init(params)
  update = jax.jit(tx.update)
  recorder = RateRecorder(leaves=".*")
  for k in range(30):
    updates, state = update(fake_grads(params, k), state, params)
    params = optax.apply_updates(params, updates)
    recorder.record(k, state)
  return state, recorder


def check_png(fig, tmp_path, name: str) -> None:
  path = tmp_path / f"{name}.png"
  fig.savefig(path, dpi=60)
  data = path.read_bytes()
  assert data[:8] == PNG_MAGIC
  assert 5_000 < len(data) < 1_000_000
  width = int.from_bytes(data[16:20], "big")
  height = int.from_bytes(data[20:24], "big")
  assert 200 <= width <= 2000 and 100 <= height <= 2000, (width, height)


def titles(fig) -> str:
  return " | ".join(ax.get_title() for ax in fig.axes)


def test_rate_histograms(trained, tmp_path):
  state, recorder = trained
  fig = plot.rate_histograms(state)
  check_png(fig, tmp_path, "hist_state")
  assert len([ax for ax in fig.axes if ax.get_visible()]) == 4
  assert "Dense_0/kernel" in titles(fig) and "at max_lr" in titles(fig)
  assert fig.legends  # min_lr / max_lr lines.
  # A rates tree, a flat dict, a recorder and a subset of leaves.
  fig = plot.rate_histograms(nlr.learning_rates(state), log=False, bins=5)
  check_png(fig, tmp_path, "hist_tree")
  assert "at max_lr" not in titles(fig)
  fig = plot.rate_histograms(recorder, leaves=r".*kernel")
  assert len([ax for ax in fig.axes if ax.get_visible()]) == 2
  fig = plot.rate_histograms(state, leaves="Dense_1")  # A sub-tree, as elsewhere.
  assert "Dense_1/kernel" in titles(fig) and "Dense_1/bias" in titles(fig)
  assert "Dense_0" not in titles(fig)
  fig = plot.rate_histograms({"w": np.array([0.0, 1e-3, 1e-2])})
  assert "1 <= 0 not shown" in titles(fig)
  with pytest.raises(ValueError, match="leaves"):
    plot.rate_histograms(state, leaves="nothing")


def test_rate_heatmap(trained, tmp_path):
  state, recorder = trained
  del state
  fig = plot.rate_heatmap(recorder, "Dense_0/kernel")
  check_png(fig, tmp_path, "heatmap")
  ax = fig.axes[0]
  assert ax.get_xlabel() == "step" and ax.get_ylabel() == "unit"
  assert "Dense_0/kernel: 8 units, 30 steps" in ax.get_title()
  assert "max_lr" in fig.axes[1].get_ylabel()  # The colorbar.
  # An element-granularity array (2-D units), sorted, without clamps.
  rates = np.exp(np.random.default_rng(0).normal(size=(12, 6, 5)) - 5)
  fig = plot.rate_heatmap(rates, "w", steps=np.arange(0, 120, 10), sort_units=True)
  check_png(fig, tmp_path, "heatmap_array")
  assert "30 units, 12 steps" in fig.axes[0].get_title()
  assert "sorted" in fig.axes[0].get_ylabel()
  with pytest.raises(ValueError, match="choose path"):
    plot.rate_heatmap(recorder)


def test_clamp_fractions(trained, tmp_path):
  _, recorder = trained
  fig = plot.clamp_fractions(recorder)
  check_png(fig, tmp_path, "clamps")
  assert [ax.get_title() for ax in fig.axes] == ["units at min_lr", "units at max_lr"]
  assert len(fig.axes[1].get_lines()) == 4  # One line per leaf.
  np.testing.assert_array_equal(fig.axes[1].get_lines()[0].get_xdata(), recorder.steps)
  fig = plot.clamp_fractions(recorder.summaries(), max_leaves=2)  # Aggregated.
  check_png(fig, tmp_path, "clamps_mean")
  assert len(fig.axes[1].get_lines()) == 1
  with pytest.raises(ValueError, match="frac_at_min_lr"):
    plot.clamp_fractions({"w/min": [0.1]})


# ---------------------------------------------------------------------------
# Degenerate input: a figure that says so, no matplotlib error, no warnings.


def renders(fig, tmp_path, name: str) -> None:
  """Saves ``fig`` as PNG with every warning (NaN/inf arithmetic) an error."""
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    fig.savefig(tmp_path / f"{name}.png", dpi=40)
  assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG_MAGIC


def notes(fig) -> str:
  return " | ".join(t.get_text() for ax in fig.axes for t in ax.texts)


def strict(fn, *args, **kwargs):
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    return fn(*args, **kwargs)


def _recorded(tx, params, steps=3):
  state = tx.init(params)
  recorder = RateRecorder(leaves=".*")
  for k in range(steps):
    _, state = tx.update(params, state, params)
    recorder.record(k, state)
  return state, recorder


def test_empty_inputs_give_a_note(tmp_path):
  empty_state = nlr.grad_history_lr(1e-2).init({})
  for i, fig in enumerate([
      strict(plot.rate_histograms, {}),
      strict(plot.rate_histograms, empty_state),
      strict(plot.rate_histograms, RateRecorder(leaves=".*")),  # Nothing recorded yet.
      strict(plot.rate_heatmap, RateRecorder(leaves=".*")),
      strict(plot.rate_heatmap, np.zeros((0, 4))),
      strict(plot.clamp_fractions, RateRecorder()),
      strict(plot.clamp_fractions, {}),
      strict(plot.clamp_fractions, {"w/frac_at_min_lr": [], "w/frac_at_max_lr": []}),
  ]):
    renders(fig, tmp_path, f"empty_{i}")
    assert "no per-unit rates" in notes(fig) or "nothing recorded" in notes(fig) \
        or "no steps" in notes(fig), notes(fig)
  # Misconfiguration is still an error, not an empty figure.
  with pytest.raises(ValueError, match="leaves="):
    plot.rate_histograms(RateRecorder())
  with pytest.raises(ValueError, match="leaves="):
    plot.rate_heatmap(RateRecorder())
  with pytest.raises(ValueError, match="summary=False"):
    plot.clamp_fractions(RateRecorder(leaves=".*", summary=False))


def test_zero_size_leaves(tmp_path):
  params = {"w": jax.numpy.ones((0, 3)), "b": jax.numpy.ones((0,)),
            "v": jax.numpy.ones((2,))}
  state, recorder = _recorded(nlr.grad_history_lr(1e-2), params)
  fig = strict(plot.rate_histograms, state)
  renders(fig, tmp_path, "zero_hist")
  assert "b\n0 units" in titles(fig) and "no units" in notes(fig)
  fig = strict(plot.rate_histograms, {"w": np.zeros((0,))}, log=False)
  renders(fig, tmp_path, "zero_hist_tree")
  fig = strict(plot.rate_heatmap, recorder, "b")
  renders(fig, tmp_path, "zero_heat")
  assert "b: 0 units, 3 steps" in titles(fig) and "no units" in notes(fig)
  fig = strict(plot.rate_heatmap, np.zeros((3, 0)))
  assert "0 units, 3 steps" in titles(fig)
  renders(strict(plot.clamp_fractions, recorder), tmp_path, "zero_clamps")
  renders(strict(plot.rate_heatmap, recorder, "v"), tmp_path, "zero_heat_v")


@pytest.mark.parametrize("min_lr, max_lr, lr, at", [
    (0.0, 1e-2, 1.0, "100% at max_lr"),       # Every unit at max_lr.
    (1e-2, 1.0, 1e-5, "100% at min_lr"),      # Every unit at min_lr.
    (0.0, 0.0, 1e-3, "100% at min_lr"),       # Both clamps 0.
    (0.0, np.inf, 0.0, "100% at min_lr"),     # At min_lr = 0, no upper clamp.
    (0.0, np.inf, 1e-2, "0% at max_lr"),      # max_lr = inf: never reached.
])
@pytest.mark.parametrize("log", [True, False])
def test_rates_at_clamps_and_clamps_at_zero_and_inf(tmp_path, min_lr, max_lr, lr, at, log):
  params = {"w": jax.numpy.ones((3, 4))}
  tx = nlr.grad_history_lr(lr, min_lr=min_lr, max_lr=max_lr, granularity="neuron")
  state, recorder = _recorded(tx, params)
  fig = strict(plot.rate_histograms, state, log=log)
  renders(fig, tmp_path, "clamp_hist")
  assert at in titles(fig)
  fig = strict(plot.rate_heatmap, recorder, log=log)
  renders(fig, tmp_path, "clamp_heat")
  if log and lr == 0.0 or log and max_lr == 0.0:
    assert "linear: no positive rate" in fig.axes[1].get_ylabel()
  renders(strict(plot.clamp_fractions, recorder), tmp_path, "clamp_frac")


def test_non_finite_rates(tmp_path):
  fig = strict(plot.rate_histograms, {"w": np.full(4, np.nan), "v": np.full(2, np.inf)})
  renders(fig, tmp_path, "nan_hist")
  assert "w\n4 units, 4 not finite" in titles(fig) and "no finite rate" in notes(fig)
  fig = strict(plot.rate_heatmap, np.full((3, 2), np.nan))
  renders(fig, tmp_path, "nan_heat")
  assert "6 cells not finite" in titles(fig)
  fig = strict(plot.rate_heatmap, np.zeros((3, 2)))  # log=True, nothing positive.
  renders(fig, tmp_path, "zero_rates_heat")


def test_argument_checks_and_one_step_summary(trained, tmp_path):
  state, recorder = trained
  for kwargs in (dict(bins=0), dict(ncols=0), dict(max_leaves=0), dict(bins=2.5)):
    with pytest.raises(ValueError, match="must be an int >= 1"):
      plot.rate_histograms(state, **kwargs)
  with pytest.raises(TypeError, match="log must be True or False"):
    plot.rate_histograms(state, log="yes")
  with pytest.raises(ValueError, match=r"steps must hold one value per recorded step \(3\)"):
    plot.rate_heatmap(np.ones((3, 2)), steps=[0, 1])
  with pytest.raises(ValueError, match=r"steps must hold one value per recorded step \(30\)"):
    plot.clamp_fractions(recorder, steps=np.arange(5))
  with pytest.raises(ValueError, match="max_lr must lie in"):
    plot.rate_heatmap(np.ones((3, 2)), max_lr=-1.0)
  with pytest.raises(ValueError, match="differ in length"):
    plot.clamp_fractions({"a/frac_at_min_lr": [0.0], "a/frac_at_max_lr": [0.0],
                          "b/frac_at_min_lr": [0.0, 1.0], "b/frac_at_max_lr": [0.0, 1.0]})
  # One step's rate_summary (0-d values) is a one-point series.
  fig = strict(plot.clamp_fractions, nlr.rate_summary(state))
  renders(fig, tmp_path, "one_step")
  assert len(fig.axes[1].get_lines()) == 4
