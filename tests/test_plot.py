"""optax_neuronlr.plot: each figure renders to a PNG; matplotlib stays optional."""

from __future__ import annotations

import subprocess
import sys

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
