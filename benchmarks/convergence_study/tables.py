"""The study's tables: ``summary.csv`` and ``convergence.md``, from the JSON-ready study."""

from __future__ import annotations

import csv
import math
import pathlib
from typing import Any, Optional

from .settings import ALPHA, CSV_COLUMNS, GRID_POINTS, LONG_SEEDS, SEEDS
from .stats import verdict


def fmt(x: Optional[float], digits: int = 3) -> str:
  """``x`` to ``digits`` significant digits; ``-`` for none or non-finite."""
  if x is None or not math.isfinite(x):
    return "-"
  return f"{x:.{digits}g}"


def csv_rows(study: dict[str, Any]) -> list[dict[str, Any]]:
  """``summary.csv``'s rows: one per task x steps x method x schedule. ``mean`` / ``std``:
  the seeds' final test loss; ``p_value``: Welch's two-sided p against the target
  (uncorrected; the verdict is Holm-corrected over the task)."""
  rows = []
  for key, task in study["tasks"].items():
    ms = task.get("methods") or {}
    for m in ms.values():
      s = m["summary"]
      cell = lambda x: "" if x is None else x
      rows.append({
          "task": task.get("task", key), "steps": task["steps"], "method": m["method"],
          "schedule": m["schedule"], "rate": s["rate"], "mean": cell(s["test_loss_mean"]),
          "std": cell(s["test_loss_std"]), "seeds": len(m["seeds"]),
          "bytes_per_param": f"{s['state_bytes_per_param']:.4g}",
          "steps_to_target": cell(s.get("steps_to_target")), "verdict": verdict(m),
          "p_value": "" if s.get("p_value") is None else f"{s['p_value']:.3g}"})
  return rows


def write_csv(study: dict[str, Any], path: pathlib.Path) -> None:
  """Writes ``summary.csv`` (:func:`csv_rows`) to ``path``."""
  with path.open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(study))


def summary_table(study: dict[str, Any]) -> list[str]:
  """Every method x task: final test loss, its ratio to NAdamW's and the verdict;
  grid spread and failures; state bytes per parameter."""
  tasks = {n: t for n, t in study["tasks"].items() if t.get("methods")}
  names = list(dict.fromkeys(m for t in tasks.values() for m in t["methods"]))
  short = " / ".join(tasks)
  head = ([f"{n}: test {t['loss']}" for n, t in tasks.items()]
          + [f"grid spread, all/low ({'; '.join(tasks)})", f"failed rates ({short})",
             f"B/param ({short})"])
  lines = ["| method | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
  for name in names:
    cells, spread, failed, nbytes = [], [], [], []
    for task in tasks.values():
      m = task["methods"].get(name)
      if m is None:
        cells.append("-")
        spread.append("-")
        failed.append("-")
        nbytes.append("-")
        continue
      s = m["summary"]
      target = task["target"].get("test_loss")
      ratio = s["test_loss_mean"] / target if s["test_loss_mean"] and target else None
      v = verdict(m) + (f", p={fmt(s['p_holm'], 2)}" if s.get("p_holm") is not None else "")
      cells.append(f"{fmt(s['test_loss_mean'], 4)} "
                   + (f"({ratio:.3f}x, {v})" if ratio else f"({v or 'no target'})"))
      spread.append(f"{fmt(s['grid_spread'], 2)}/{fmt(s.get('grid_spread_below'), 2)}")
      failed.append(f"{s['grid_failed']}/{s['grid_points']}")
      nbytes.append(f"{s['state_bytes_per_param']:.2f}")
    cells += ["; ".join(spread), " / ".join(failed), " / ".join(nbytes)]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines


def budget_text(b: dict[str, Any]) -> str:
  """A task's budget (its JSON ``budget``) in words."""
  refine = (f", refined with {len(b['refine'])} rates around the best (x"
            + ", x".join(f"10^{math.log10(f):+.2g}" for f in b["refine"]) + ")"
            if b["refine"] else ", no refinement")
  return (f"{b['grid_points']} grid rates{refine}, {b['seeds']} seeds, "
          f"{b['evals']} evaluations")


def intro(cfg: dict[str, Any]) -> list[str]:
  """``convergence.md``'s title, protocol and columns, from the study's configuration."""
  return [
      "# Convergence study (v3: NAdamW target, held-out test split, Welch + Holm)",
      "",
      "Every method trains under the same schedule, "
      "`optax.warmup_cosine_decay_schedule(0.0, peak, steps // 10, steps, 0.1 * peak)`: "
      "linear warm-up over the first 10% of the steps, cosine decay to 10% of the peak. "
      "The peak rate is the one hyperparameter tuned (with the AdamW leaves' ratio for the "
      "`adam_ratio` rows): a grid of "
      f"{GRID_POINTS} rates half a decade apart by method kind (seed 0, chosen on the "
      "validation split), extended by two rates while its best sits on its edge, refined "
      "with the quarter-decade neighbours of its best (x 10^-0.25 and x 10^0.25), then the "
      f"chosen rate from fresh seeds ({SEEDS}; {LONG_SEEDS} on the 3x-steps variant). "
      "Scores are the seeds' final losses on a test split the rate was not picked on, mean "
      "± std. The target of each task is the scheduled NAdamW's final mean test loss; "
      "Muon-family methods run their AdamW leaves at the Muon rate (the library's default) "
      "unless the row says otherwise. A method with a *fixed* rate is run untuned at it. "
      f"Measured on {cfg['machine']}; {cfg['wall_seconds'] / 60:.1f} min in all"
      + ("; ms/step re-measured alone afterwards (`--retime`)." if cfg.get("retimed_on")
         else "."),
      "",
      "Columns: *rate* the chosen peak rate (`*`: at the edge of the tuned rates), *ratio* "
      "the AdamW leaves' rate over it; *verdict* against NAdamW, *p* Welch's two-sided "
      "p-value (its own degrees of freedom) and *p Holm* Holm-corrected over the task's "
      "verdicts; *steps to target* the step (1% of the run, interpolated between "
      "evaluations) where the mean validation curve reaches NAdamW's final mean; *spread* "
      "max/min final validation loss over the non-failed tuning rates / over those up to "
      "the chosen rate, *failed* how many of them ended non-finite or above the initial "
      "loss; *B/param* optimizer-state bytes per parameter; *ms/step* one jitted training "
      "step after compilation (x NAdamW); *min/max clamp* fraction of units at `min_lr` / "
      "`max_lr` at the end. The same numbers, one row per task x steps x method x "
      "schedule: `summary.csv` (`mean`, `std`: test loss; `p_value`: uncorrected).",
      *(["Not run (their `nlr` names are missing): "
         + ", ".join(f"{k} ({v})" for k, v in cfg["unavailable_methods"].items()) + "."]
        if cfg.get("unavailable_methods") else []),
  ]


def summary_section(study: dict[str, Any]) -> list[str]:
  """``convergence.md``'s summary: how to read it, then :func:`summary_table`."""
  return [
      "## Summary",
      "",
      "Final test loss, mean over seeds (its ratio to the scheduled NAdamW's; *win* / "
      "*loss*: the seeds' log losses lower / higher than NAdamW's, Welch's test with "
      f"Holm's correction over the task at family-wise {ALPHA:g} (p: Holm-corrected), else "
      "*tie*; *fails*: a seed failed). Grid spread: max/min final validation loss over "
      "the non-failed tuning "
      "rates, all of them / those up to the chosen rate (the cost of starting too low); "
      "failed rates: of the tuning runs.",
      "",
      *summary_table(study),
  ]


def task_row(key: str, m: dict[str, Any], task: dict[str, Any]) -> str:
  """One method's row of its task's table."""
  metric = task["metric"]
  s = m["summary"]
  loss = (f"{fmt(s['test_loss_mean'], 4)} ± {fmt(s['test_loss_std'], 2)}"
          + (f" ({s['seeds_failed']} failed)" if s["seeds_failed"] else ""))
  rate = (f"{s['rate']:.3g}" + ("*" if s["rate_at_grid_edge"] else "")
          + (" fixed" if m.get("fixed_rate") is not None else ""))
  row = [key, m["schedule"], rate, f"{s.get('ratio', 1.0):g}", loss,
         fmt(s.get("val_loss_mean"), 4), verdict(m) or "-", fmt(s.get("p_value"), 2),
         fmt(s.get("p_holm"), 2)]
  if metric:
    row += [f"{fmt(s.get(f'val_{metric}_mean'), 3)} ± {fmt(s.get(f'val_{metric}_std'), 1)}",
            fmt(s.get(f"test_{metric}_mean"), 3)]
  steps = s.get("steps_to_target")
  clamp = ("-" if "at_min_lr" not in s else
           f"{fmt(s['at_min_lr'], 2)} / {fmt(s.get('at_max_lr'), 2)}")
  row += ["never" if steps is None else str(steps),
          f"{fmt(s['grid_spread'])} / {fmt(s.get('grid_spread_below'))}",
          f"{s['grid_failed']}/{s['grid_points']}", f"{s['state_bytes_per_param']:.2f}",
          f"{fmt(s['ms_per_step'])} ({fmt(s.get('ms_vs_target'), 2)}x)", clamp]
  return "| " + " | ".join(row) + " |"


def task_section(name: str, task: dict[str, Any]) -> list[str]:
  """One task's section of ``convergence.md``: what it is, its budget and target, then
  one row per method (or why it did not run)."""
  if "unavailable" in task:
    return ["", f"## {name}", "", f"Not run: {task['unavailable']}"]
  target = task["target"]
  metric = task["metric"]
  lines = [
      "", f"## {task['title']} (`{name}`)", "",
      f"{task['description']}; {task['steps']} steps, {task['parameters']:,} parameters; "
      f"{budget_text(task['budget'])}. Target: the scheduled NAdamW's final test "
      f"{task['loss']} {fmt(target.get('test_loss'), 4)}.",
      *(["Failed to build: " + "; ".join(f"{k} ({v})" for k, v in task["errors"].items())
         + "."] if task.get("errors") else []),
      "",
  ]
  head = ["method", "schedule", "rate", "ratio", f"test {task['loss']}", "val", "verdict",
          "p", "p Holm"]
  if metric:
    head += [f"val {metric}", f"test {metric}"]
  head += ["steps to target", "spread", "failed", "B/param", "ms/step", "min/max clamp"]
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines += [task_row(key, m, task) for key, m in task["methods"].items()]
  return lines


def markdown(study: dict[str, Any]) -> str:
  """A summary table, then one table per task, from the JSON-ready study."""
  lines = [*intro(study["config"]), "", *summary_section(study)]
  for name, task in study["tasks"].items():
    lines += task_section(name, task)
  return "\n".join(lines) + "\n"
