"""``benchmarks/convergence.py --quick``: every task x method runs, its numbers, its files.

One quick study (2 rates, 2 seeds, a few steps per task and method; a few
minutes on 2 CPU cores) is shared by the tests of this module.
"""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "convergence.py"


def load_benchmark():
  """The benchmark as a module (its ``main`` does not run)."""
  spec = importlib.util.spec_from_file_location("benchmarks_convergence", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def bench():
  return load_benchmark()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  out = tmp_path_factory.mktemp("convergence")
  result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return out, json.loads((out / "convergence.json").read_text())


def finite(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)


def test_every_task_and_method(bench, study):
  _, data = study
  assert set(data["tasks"]) == {t.name for t in bench.TASKS}
  expected = {m.name for m in bench.methods() if m.available()}
  assert len(expected) >= 24
  for name, task in data["tasks"].items():
    assert "unavailable" not in task, (name, task.get("unavailable"))
    assert set(task["methods"]) == expected, name


def test_numbers_are_finite(study):
  """Every summary number is finite; a score may be missing only for a failed run."""
  _, data = study
  assert data["config"]["quick"] and data["config"]["grid_points"] == 2
  for name, task in data["tasks"].items():
    assert finite(task["target"]["val_loss"]), name
    evals = len(task["eval_steps"])
    for method, m in task["methods"].items():
      s = m["summary"]
      where = f"{name}/{method}"
      assert finite(s["rate"]) and s["rate"] > 0, where
      assert finite(s["state_bytes_per_param"]) and s["state_bytes_per_param"] >= 0, where
      assert finite(s["ms_per_step"]) and s["ms_per_step"] > 0, where
      assert s["seeds_failed"] > 0 or finite(s["val_loss_mean"]), where
      assert s["steps_to_target"] is None or s["steps_to_target"] >= 0, where
      if task["metric"] and not s["seeds_failed"]:
        assert finite(s[f"val_{task['metric']}_mean"]), where
      assert len(m["grid"]) == 2 and len(m["seeds"]) == 2, where
      for run in m["grid"] + m["seeds"]:
        assert len(run["val_curve"]["loss"]) == evals, where
        assert run["failed"] or finite(run["final"]["val_loss"]), where
      if m["family"].startswith("reference 000"):
        assert 0 <= s["at_min_lr"] <= 1 and 0 <= s["at_max_lr"] <= 1, where


def test_files(study):
  out, data = study
  table = (out / "convergence.md").read_text()
  for name, task in data["tasks"].items():
    for method in task["methods"]:
      assert f"| {method} |" in table, method
    for figure in (f"curves_{name}.png", f"rates_{name}.png"):
      assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure


def test_grids_are_log_spaced(bench):
  for kind in bench.RATE_RANGES:
    grid = bench.rate_grid(kind, bench.GRID_POINTS)
    assert len(grid) >= 5
    ratios = [b / a for a, b in zip(grid, grid[1:])]
    assert all(abs(r - 10**0.5) < 0.01 for r in ratios), (kind, grid)
