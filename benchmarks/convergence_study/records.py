"""The JSON form of the study's runs: numbers cleaned, one record per run and method."""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from .stats import summarise
from .training import RunSet
from .tuning import MethodResult


def clean(x: Any) -> Any:
  """JSON-ready: arrays to lists, floats to 6 significant digits, non-finite to None."""
  if isinstance(x, dict):
    return {k: clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [clean(v) for v in x]
  if isinstance(x, np.ndarray):
    return clean(x.tolist())
  if isinstance(x, (bool, np.bool_)):
    return bool(x)
  if isinstance(x, (int, np.integer)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    return float(f"{x:.6g}") if math.isfinite(x) else None
  return x


def runset_json(runs: Optional[RunSet]) -> list[dict[str, Any]]:
  """One JSON record per run of ``runs`` (none for no runs)."""
  out = []
  if runs is None:
    return out
  for i, (rate, ratio, seed) in enumerate(zip(runs.rates, runs.ratios, runs.seeds)):
    out.append({
        "rate": rate, "ratio": ratio, "seed": seed, "failed": bool(runs.failed[i]),
        "final": {f"val_{k}": v[i, -1] for k, v in runs.val.items()}
                 | {f"test_{k}": v[i] for k, v in runs.test.items()},
        "val_curve": {k: v[i] for k, v in runs.val.items()},
        "train_loss": runs.train_loss[i],
        "clamps": {k: v[i] for k, v in runs.clamps.items()},
    })
  return out


def method_json(r: MethodResult) -> dict[str, Any]:
  """A method's JSON entry: what it is, every run, its summary."""
  return {"method": r.method.name, "schedule": r.method.schedule, "family": r.method.family,
          "settings": r.method.settings, "grid_kind": r.method.rates,
          "ratios": list(r.method.ratios), "fixed_rate": r.method.fixed,
          "grid": runset_json(r.grid),
          "extend": [run for s in r.extensions for run in runset_json(s)],
          "refine": runset_json(r.refine),
          "seeds": runset_json(r.seeds), "grid_seconds": r.grid.seconds,
          "refine_seconds": r.refine.seconds if r.refine else 0.0,
          "seed_seconds": r.seeds.seconds, "summary": summarise(r)}
