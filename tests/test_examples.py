"""The README's main job runs end to end (a short configuration)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_quick(script: str, tmp_path) -> str:
  """Runs ``examples/<script> --quick``; checks the figure; returns stdout."""
  out = tmp_path / "figure.png"
  result = subprocess.run(
      [sys.executable, str(ROOT / "examples" / script), "--quick", "--out", str(out)],
      capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert out.stat().st_size > 10_000
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  return result.stdout


def test_compare_strategies_quick(tmp_path):
  stdout = run_quick("compare_strategies.py", tmp_path)
  assert "test acc" in stdout
  for name in ("adam lr=1e-3", "grad_magnitude_lr", "grad_history_lr"):
    assert name in stdout


def test_hypergradient_digits_quick(tmp_path):
  stdout = run_quick("hypergradient_digits.py", tmp_path)
  assert "sgd-hd" in stdout and "adam-hd" in stdout


def test_rnn_time_series_quick(tmp_path):
  stdout = run_quick("rnn_time_series.py", tmp_path)
  assert "sign_consistency_lr" in stdout


def test_transfer_learning_quick(tmp_path):
  stdout = run_quick("transfer_learning.py", tmp_path)
  assert "global rate" in stdout


def test_linen_train_state_quick(tmp_path):
  stdout = run_quick("linen_train_state.py", tmp_path)
  assert "Dense_0/kernel" in stdout
