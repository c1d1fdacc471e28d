"""``--reanalyse DIR``: a stored study's verdicts recomputed with v3's statistics.

For a study of an earlier protocol (``benchmarks/results/v2/``: target AdamW,
validation scores, |t| > 2.2 whatever the degrees of freedom): Welch's test of
each method's seeds' log final losses (test if stored, else validation) against
the reference's, with its own degrees of freedom, and Holm's correction over
each task's verdicts. Written to ``DIR/welch_holm.csv``; the runs are not
touched.
"""

from __future__ import annotations

import csv
import json
import pathlib

import numpy as np

from .settings import ALPHA
from .stats import holm, seed_losses, welch

COLUMNS = ("task", "steps", "method", "schedule", "reference", "mean", "seeds", "t", "df",
           "p_value", "p_holm", "verdict")


def reanalyse(out: pathlib.Path, reference: str) -> list[dict[str, str]]:
  """The rows of ``out/welch_holm.csv`` (written), one per task x method."""
  study = json.loads((out / "convergence.json").read_text())
  rows = []
  for name, task in study["tasks"].items():
    ms = task.get("methods") or {}
    if reference not in ms:
      continue
    b = np.log(seed_losses(ms[reference]))
    tested = []
    for key, m in ms.items():
      if key == reference or any(run["failed"] for run in m["seeds"]):
        continue
      a = np.log(seed_losses(m))
      t, df, p = welch(a, b)
      tested.append((m, a, t, df, p))
    for (m, a, t, df, p), p_holm in zip(tested, holm([x[4] for x in tested])):
      rows.append({"task": task.get("task", name), "steps": task["steps"],
                   "method": m["method"], "schedule": m["schedule"], "reference": reference,
                   "mean": f"{np.exp(a).mean():.6g}", "seeds": a.size, "t": f"{t:.3f}",
                   "df": f"{df:.2f}", "p_value": f"{p:.3g}", "p_holm": f"{p_holm:.3g}",
                   "verdict": ("tie" if p_holm >= ALPHA else "win" if t < 0 else "loss")})
  with (out / "welch_holm.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
  return rows
