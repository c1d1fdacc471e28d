"""The study's statistics: each method's summary, the task's target and the verdicts.

A method's own summary comes from its runs (:func:`summarise`); everything that
depends on the other methods (the target, steps to it, ratios to AdamW, the
win/tie/loss verdict) is computed from the JSON-ready study, so that merged and
replotted studies agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from .settings import REFERENCE, WELCH_T
from .tuning import MethodResult


def summarise(r: MethodResult) -> dict[str, Any]:
  """The method's own summary (nothing that depends on the other methods)."""
  s = r.seeds
  rates, final, failed = r.tuning
  summary = {
      "rate": r.rate,
      "rate_at_grid_edge": r.rate in (min(rates), max(rates)),
      "val_loss_mean": float(np.mean(s.final_loss)),
      "val_loss_std": float(np.std(s.final_loss)),
      "seeds_failed": int(s.failed.sum()),
      "grid_spread": grid_spread(rates, final, failed),
      "grid_spread_below": grid_spread(rates, final, failed, up_to=r.rate),
      "grid_failed": int(failed.sum()),
      "grid_points": len(rates),
      "state_bytes_per_param": r.state_bytes,
      "ms_per_step": r.ms_per_step,
      "ms_source": r.ms_source,
      "ms_vs_adamw_paired": r.ms_vs_adamw,
  }
  for name, values in s.val.items():
    if name != "loss":
      summary[f"val_{name}_mean"] = float(np.mean(values[:, -1]))
      summary[f"val_{name}_std"] = float(np.std(values[:, -1]))
  for name, values in s.test.items():
    summary[f"test_{name}_mean"] = float(np.mean(values))
  if r.method.clamps:
    for name, values in s.clamps.items():
      summary[name] = float(np.mean(values))
  return summary


def grid_spread(rates: Sequence[float], final: np.ndarray, failed: np.ndarray,
                up_to: Optional[float] = None) -> Optional[float]:
  """max/min final validation loss over the non-failed tuning runs (``up_to``: only
  those at rates up to it: the sensitivity to a rate chosen too low)."""
  keep = ~failed & (np.asarray(rates) <= (np.inf if up_to is None else up_to))
  ok = final[keep]
  return float(ok.max() / ok.min()) if ok.size and ok.min() > 0 else None


def seed_curves(method: dict[str, Any]) -> np.ndarray:
  """(seeds, evals + 1) validation losses of a JSON method entry; NaN where missing."""
  return np.asarray([[np.nan if v is None else v for v in run["val_curve"]["loss"]]
                     for run in method["seeds"]], float)


def steps_to(method: dict[str, Any], eval_steps: Sequence[int],
             target: float) -> Optional[int]:
  """First evaluated step where the seeds' mean validation loss is at most ``target``."""
  mean = seed_curves(method).mean(axis=0)
  hit = np.flatnonzero(mean <= target * (1 + 1e-9))
  return int(eval_steps[hit[0]]) if hit.size else None


def finalise_task(task: dict[str, Any]) -> None:
  """Sets the task's target (the scheduled AdamW's final mean validation loss) and each
  method's steps to it and ratios to AdamW (time, state), from the JSON entry."""
  ms = task.get("methods") or {}
  ref = ms.get(REFERENCE)
  target_loss = ref["summary"]["val_loss_mean"] if ref else None
  task["target"] = ({"method": REFERENCE, "val_loss": target_loss}
                    if target_loss is not None else {})
  # The curves' mean at AdamW's last evaluation: its summary's mean, computed as the
  # curves' are (from the stored 6-digit values), so that AdamW reaches it at its end.
  curve_target = float(seed_curves(ref).mean(axis=0)[-1]) if ref else None
  for m in ms.values():
    s = m["summary"]
    s["steps_to_target"] = (steps_to(m, task["eval_steps"], curve_target)
                            if target_loss is not None else None)
    if ref is not None:
      r = ref["summary"]
      s["ms_vs_adamw"] = (s.get("ms_vs_adamw_paired")
                          or (s["ms_per_step"] / r["ms_per_step"] if r["ms_per_step"] else None))
      s["state_vs_adamw"] = (s["state_bytes_per_param"] / r["state_bytes_per_param"]
                             if r["state_bytes_per_param"] else None)


def seed_losses(method: dict[str, Any]) -> np.ndarray:
  """The final validation loss of each seed of a JSON method entry; NaN where missing."""
  return np.asarray([np.nan if run["final"]["val_loss"] is None else run["final"]["val_loss"]
                     for run in method["seeds"]], float)


def verdict(method: dict[str, Any], target: Optional[dict[str, Any]]) -> str:
  """``win`` / ``tie`` / ``loss`` against the target's seeds (Welch's t of the log
  losses beyond ``WELCH_T``), ``target`` for the target itself, ``fails`` if a seed
  failed; empty without a target."""
  if target is None:
    return ""
  if method is target:
    return "target"
  if any(run["failed"] for run in method["seeds"]):
    return "fails"
  a, b = np.log(seed_losses(method)), np.log(seed_losses(target))
  if not (np.isfinite(a).all() and np.isfinite(b).all()):
    return "fails" if not np.isfinite(a).all() else "win"
  var = lambda x: x.var(ddof=1) if x.size > 1 else 0.0
  se = math.sqrt(var(a) / a.size + var(b) / b.size)
  diff = a.mean() - b.mean()
  t = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
  return "win" if t < -WELCH_T else "loss" if t > WELCH_T else "tie"
