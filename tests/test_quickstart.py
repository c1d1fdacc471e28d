"""README's Quick start (NorMuon on an NNX transformer) and its port-and-study
block (a reference-000 rule) run as written, and their optimizers adapt: each
hidden matrix gets one rate per output neuron, and the reference rule's units
do not sit at the clamps (a rule whose units all sit at max_lr is its
direction at rate max_lr)."""

from __future__ import annotations

import pathlib
import re

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _first_python_block(heading: str) -> str:
  readme = (ROOT / "README.md").read_text()
  section = readme[readme.index(f"\n{heading}\n"):]
  section = section[:section.index("\n## ", 1)]
  return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def _run(heading: str) -> dict:
  namespace: dict = {}
  code = _first_python_block(heading)
  exec(compile(code, f"README.md {heading}", "exec"), namespace)  # pylint: disable=exec-used
  return namespace


def test_quick_start_is_normuon_on_an_nnx_transformer(capsys):
  code = _first_python_block("## Quick start")
  assert "nlr.normuon(" in code and "nnx.Optimizer(" in code
  namespace = _run("## Quick start")
  out = capsys.readouterr().out
  # The layout table (path, shape, kind, neurons, batch, matrices, hidden, ...):
  # hidden matrices (attention, MLP) against AdamW's leaves.
  def row(path):  # (kind, hidden) of the table's row for ``path``
    m = re.search(rf"^{re.escape(path)}\s+\([^)]*\)\s+(\w+)\s+\d+\s+\S+\s+(?:\S+ x \S+ x \S+|-)"
                  rf"\s+(yes|no)\b", out, flags=re.M)
    assert m, (path, out)
    return m.groups()
  assert row("attn/query/kernel") == ("query", "yes")
  assert row("fc1/kernel") == ("mlp", "yes")
  assert row("head/kernel") == ("head", "no")
  assert row("embed/embedding") == ("embedding", "no")
  assert "per-neuron rates: (128,)" in out
  losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", out)]
  assert losses[0] > 2.5 and losses[-1] < 0.3, losses
  rates = np.asarray(namespace["fc1_rates"])
  assert rates.shape == (128,) and np.all(np.isfinite(rates))
  assert rates.max() / rates.min() > 1.5, rates  # one rate per neuron, not one for all
  # The rates are the base rate times Muon's shape factor, normalised per neuron.
  assert 0.01 < np.median(rates) < 0.1, np.median(rates)
  assert set(namespace["rates"]) >= {"fc1", "fc2", "attn", "head", "embed"}


def test_port_and_study_block_runs_and_its_rates_adapt(capsys):
  namespace = _run("## Port and study: the reference-000 rules")
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
