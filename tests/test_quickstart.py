"""README's Quick start runs as written, and its optimizer adapts: its units
do not sit at the clamps (a rule whose units all sit at max_lr is its
direction at rate max_lr)."""

from __future__ import annotations

import pathlib
import re

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _quick_start_code() -> str:
  readme = (ROOT / "README.md").read_text()
  section = readme[readme.index("## Quick start"):]
  section = section[:section.index("\n## ", 1)]
  return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_quick_start_runs_and_its_rates_adapt(capsys):
  namespace: dict = {}
  exec(compile(_quick_start_code(), "README.md Quick start", "exec"), namespace)  # pylint: disable=exec-used
  assert "units at max_lr" in capsys.readouterr().out
  logs = {k: float(v) for k, v in namespace["logs"].items()}
  at_max = [v for k, v in logs.items() if k.endswith("/frac_at_max_lr")]
  at_min = [v for k, v in logs.items() if k.endswith("/frac_at_min_lr")]
  assert len(at_max) == 4
  assert np.mean(at_max) < 0.1 and max(at_max) < 0.25, logs
  assert np.mean(at_min) < 0.1, logs
  rates = np.asarray(namespace["rates"]["Dense_0"]["kernel"])
  assert rates.shape == (32,)
  assert rates.max() / rates.min() > 2.0, rates  # one rate per neuron, not one for all
  assert float(namespace["loss"]) < 0.05
