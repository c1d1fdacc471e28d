"""The README's main job runs end to end (a short configuration)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_compare_strategies_quick(tmp_path):
  out = tmp_path / "figure.png"
  result = subprocess.run(
      [sys.executable, str(ROOT / "examples" / "compare_strategies.py"),
       "--quick", "--out", str(out)],
      capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "test acc" in result.stdout
  for name in ("adam lr=1e-3", "grad_magnitude_lr", "grad_history_lr"):
    assert name in result.stdout
  assert out.stat().st_size > 10_000
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
