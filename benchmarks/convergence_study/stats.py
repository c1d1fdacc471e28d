"""The study's statistics: each method's summary, the task's target and the verdicts.

A method's own summary comes from its runs (:func:`summarise`); everything that
depends on the other methods (the target, steps to it, ratios to NAdamW, the
win/tie/loss verdicts and their p-values) is computed from the JSON-ready study
(:func:`finalise_task`), so that merged and replotted studies agree.

Verdicts: Welch's t-test of the seeds' log test losses against the target's,
with its own (Welch-Satterthwaite) degrees of freedom, two-sided; Holm's
step-down correction over every verdict of a task (one task at one budget);
*win* / *loss* where the corrected p-value is below ``ALPHA``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
from scipy import stats as scipy_stats

from .settings import ALPHA, REFERENCE
from .tuning import MethodResult


def summarise(r: MethodResult) -> dict[str, Any]:
  """The method's own summary (nothing that depends on the other methods)."""
  s = r.seeds
  rates, final, failed = r.tuning
  summary = {
      "rate": r.rate,
      "ratio": r.ratio,
      "rate_at_grid_edge": bool(rates) and r.rate in (min(rates), max(rates)),
      "test_loss_mean": float(np.mean(s.final_test)),
      "test_loss_std": float(np.std(s.final_test, ddof=1)) if len(s.rates) > 1 else 0.0,
      "val_loss_mean": float(np.mean(s.final_loss)),
      "val_loss_std": float(np.std(s.final_loss, ddof=1)) if len(s.rates) > 1 else 0.0,
      "seeds_failed": int(s.failed.sum()),
      "grid_spread": grid_spread(rates, final, failed),
      "grid_spread_below": grid_spread(rates, final, failed, up_to=r.rate),
      "grid_failed": int(failed.sum()),
      "grid_points": len(rates),
      "grid_extended": sum(len(x.rates) for x in r.extensions),
      "state_bytes_per_param": r.state_bytes,
      "ms_per_step": r.ms_per_step,
      "ms_source": r.ms_source,
      "ms_vs_target_paired": r.ms_vs_target,
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
  """Steps until the seeds' mean validation curve reaches ``target``: linear between the
  evaluations around the first crossing, rounded up to 1% of the run; None if never."""
  mean = seed_curves(method).mean(axis=0)
  hit = np.flatnonzero(mean <= target * (1 + 1e-9))
  if not hit.size:
    return None
  k = int(hit[0])
  steps = float(eval_steps[k])
  if k > 0 and np.isfinite(mean[k - 1]) and mean[k - 1] > mean[k]:
    frac = (mean[k - 1] - target) / (mean[k - 1] - mean[k])
    steps = eval_steps[k - 1] + frac * (eval_steps[k] - eval_steps[k - 1])
  unit = eval_steps[-1] / 100
  return int(min(eval_steps[-1], math.ceil(steps / unit - 1e-9) * unit))


def seed_losses(method: dict[str, Any]) -> np.ndarray:
  """The reported loss of each seed of a JSON method entry (its test loss, else its
  validation loss); NaN where missing."""
  key = "test_loss" if all("test_loss" in run["final"] for run in method["seeds"]) \
      else "val_loss"
  return np.asarray([np.nan if run["final"][key] is None else run["final"][key]
                     for run in method["seeds"]], float)


def welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
  """Welch's t of ``mean(a) - mean(b)``, its Welch-Satterthwaite degrees of freedom and
  the two-sided p-value (``scipy.stats.ttest_ind(equal_var=False)``); both samples
  constant: t = 0 (p = 1) if the means agree, else infinite (p = 0)."""
  va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
  diff = float(a.mean() - b.mean())
  if va + vb == 0:
    return (0.0 if diff == 0 else math.copysign(math.inf, diff), math.nan,
            1.0 if diff == 0 else 0.0)
  df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
  res = scipy_stats.ttest_ind(a, b, equal_var=False)
  return float(res.statistic), float(df), float(res.pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
  """Holm's step-down adjusted p-values (family-wise error rate), in the given order."""
  p = np.asarray(pvalues, float)
  order = np.argsort(p, kind="stable")
  adjusted = np.empty_like(p)
  running = 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (p.size - rank) * p[i]))
    adjusted[i] = running
  return adjusted.tolist()


def compare(method: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
  """Welch's test of ``method``'s seeds against the target's (log losses); ``fails``
  if a seed failed."""
  if any(run["failed"] for run in method["seeds"]):
    return {"verdict": "fails"}
  a, b = np.log(seed_losses(method)), np.log(seed_losses(target))
  if not (np.isfinite(a).all() and np.isfinite(b).all()):
    return {"verdict": "fails" if not np.isfinite(a).all() else "win"}
  if a.size < 2 or b.size < 2:
    return {"verdict": "tie", "note": "one seed: no test"}
  t, df, p = welch(a, b)
  return {"welch_t": t, "welch_df": df, "p_value": p}


def finalise_task(task: dict[str, Any]) -> None:
  """Sets the task's target (the scheduled NAdamW's final mean test loss) and each
  method's steps to it, ratios to it (time, state) and verdict against it (Welch,
  Holm-corrected over the task), from the JSON entry."""
  ms = task.get("methods") or {}
  ref = ms.get(REFERENCE)
  target_loss = ref["summary"]["test_loss_mean"] if ref else None
  task["target"] = ({"method": REFERENCE, "test_loss": target_loss}
                    if target_loss is not None else {})
  # Steps to target on the validation curves: the curves' mean at NAdamW's last
  # evaluation, so that NAdamW reaches it at its end.
  curve_target = float(seed_curves(ref).mean(axis=0)[-1]) if ref else None
  tested = {}
  for key, m in ms.items():
    s = m["summary"]
    for k in ("verdict", "welch_t", "welch_df", "p_value", "p_holm", "note"):
      s.pop(k, None)
    s["steps_to_target"] = (steps_to(m, task["eval_steps"], curve_target)
                            if ref is not None else None)
    if ref is None:
      continue
    r = ref["summary"]
    s["ms_vs_target"] = (s.get("ms_vs_target_paired")
                         or (s["ms_per_step"] / r["ms_per_step"] if r["ms_per_step"] else None))
    s["state_vs_target"] = (s["state_bytes_per_param"] / r["state_bytes_per_param"]
                            if r["state_bytes_per_param"] else None)
    if m is ref:
      s["verdict"] = "target"
      continue
    s.update(compare(m, ref))
    if "p_value" in s:
      tested[key] = s
  adjusted = holm([s["p_value"] for s in tested.values()])
  for s, p in zip(tested.values(), adjusted):
    s["p_holm"] = p
    s["verdict"] = ("tie" if p >= ALPHA or s["welch_t"] == 0
                    else "win" if s["welch_t"] < 0 else "loss")


def verdict(method: dict[str, Any], target: Optional[dict[str, Any]] = None) -> str:
  """The verdict :func:`finalise_task` stored (empty without a target)."""
  del target
  return method["summary"].get("verdict", "")
