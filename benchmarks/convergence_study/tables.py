"""The study's tables: ``summary.csv`` and ``convergence.md``, from the JSON-ready study."""

from __future__ import annotations

import csv
import math
import pathlib
from typing import Any, Optional

from .settings import CSV_COLUMNS, GRID_POINTS, LONG_SEEDS, REFERENCE, SEEDS, WELCH_T
from .stats import verdict


def fmt(x: Optional[float], digits: int = 3) -> str:
  """``x`` to ``digits`` significant digits; ``-`` for none or non-finite."""
  if x is None or not math.isfinite(x):
    return "-"
  return f"{x:.{digits}g}"


def csv_rows(study: dict[str, Any]) -> list[dict[str, Any]]:
  """``summary.csv``'s rows: one per task x steps x method x schedule."""
  rows = []
  for key, task in study["tasks"].items():
    ms = task.get("methods") or {}
    ref = ms.get(REFERENCE)
    for m in ms.values():
      s = m["summary"]
      cell = lambda x: "" if x is None else x
      rows.append({
          "task": task.get("task", key), "steps": task["steps"], "method": m["method"],
          "schedule": m["schedule"], "rate": s["rate"], "mean": cell(s["val_loss_mean"]),
          "std": cell(s["val_loss_std"]), "seeds": len(m["seeds"]),
          "bytes_per_param": f"{s['state_bytes_per_param']:.4g}",
          "steps_to_target": cell(s.get("steps_to_target")), "verdict": verdict(m, ref)})
  return rows


def write_csv(study: dict[str, Any], path: pathlib.Path) -> None:
  """Writes ``summary.csv`` (:func:`csv_rows`) to ``path``."""
  with path.open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(study))


def summary_table(study: dict[str, Any]) -> list[str]:
  """Every method x task: final validation loss, its ratio to AdamW's and the verdict;
  grid spread and failures; state bytes per parameter."""
  tasks = {n: t for n, t in study["tasks"].items() if t.get("methods")}
  names = list(dict.fromkeys(m for t in tasks.values() for m in t["methods"]))
  short = " / ".join(tasks)
  head = ([f"{n}: val {t['loss']}" for n, t in tasks.items()]
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
      target = task["target"].get("val_loss")
      ratio = s["val_loss_mean"] / target if s["val_loss_mean"] and target else None
      v = verdict(m, task["methods"].get(REFERENCE))
      cells.append(f"{fmt(s['val_loss_mean'], 4)} "
                   + (f"({ratio:.2f}x, {v})" if ratio else f"({v or 'no target'})"))
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
      "# Convergence study (v2: scheduled, refined)",
      "",
      "Every method trains under the same schedule, "
      "`optax.warmup_cosine_decay_schedule(0.0, peak, steps // 10, steps, 0.1 * peak)`: "
      "linear warm-up over the first 10% of the steps, cosine decay to 10% of the peak. "
      "The peak rate is the one hyperparameter tuned: a grid of "
      f"{GRID_POINTS} rates half a decade apart by method kind (seed 0, chosen on the "
      "validation split), refined with the quarter-decade neighbours of its best "
      "(best x 10^-0.25 and x 10^0.25; the best of the 9 runs wins), then the chosen rate "
      f"from fresh seeds ({SEEDS}; {LONG_SEEDS} on the 3x-steps variant); scores are "
      "mean ± std over those seeds. Schedule `constant`: the reference-000 rules on the raw "
      "gradient at a constant rate (their rates are their own schedule), same tuning. "
      "Muon-family methods run their AdamW leaves at the scheduled AdamW's tuned peak on "
      "the same task. The target of each task is the scheduled AdamW's final mean "
      f"validation loss. Measured on {cfg['machine']}; "
      f"{cfg['wall_seconds'] / 60:.1f} min in all"
      + ("; ms/step re-measured alone afterwards (`--retime`)." if cfg.get("retimed_on")
         else "."),
      "",
      "Columns: *rate* the chosen peak rate (`*`: at the edge of the tuned rates); *steps to "
      "target* the first evaluated step where the mean validation loss reaches AdamW's "
      "final mean; *spread* max/min final validation loss over the non-failed grid and "
      "refinement rates / over those up to the chosen rate (too low a rate), *failed* "
      "how many of them ended non-finite or above the initial loss; *B/param* "
      "optimizer-state bytes per parameter; *ms/step* one jitted training step after "
      "compilation (x AdamW); *min/max clamp* fraction of units at `min_lr` / `max_lr` at "
      "the end (mean over governed leaves and seeds). The same numbers, one row per task x "
      "steps x method x schedule: `summary.csv`.",
      *(["Not run (their `nlr` names are missing): "
         + ", ".join(f"{k} ({v})" for k, v in cfg["unavailable_methods"].items()) + "."]
        if cfg.get("unavailable_methods") else []),
  ]


def summary_section(study: dict[str, Any]) -> list[str]:
  """``convergence.md``'s summary: how to read it, then :func:`summary_table`."""
  return [
      "## Summary",
      "",
      "Final validation loss, mean over seeds (its ratio to the scheduled AdamW's; *win* / "
      "*loss*: the log losses of the seeds lower / higher than AdamW's by "
      f"more than {WELCH_T:g} standard errors (Welch), else *tie*; *fails*: a seed "
      "failed). Grid spread: max/min final validation loss over the non-failed tuning "
      "rates, all of them / those up to the chosen rate (the cost of starting too low); "
      "failed rates: of the tuning runs.",
      "",
      *summary_table(study),
  ]


def task_row(key: str, m: dict[str, Any], task: dict[str, Any]) -> str:
  """One method's row of its task's table."""
  metric = task["metric"]
  s = m["summary"]
  loss = (f"{fmt(s['val_loss_mean'], 4)} ± {fmt(s['val_loss_std'], 2)}"
          + (f" ({s['seeds_failed']} failed)" if s["seeds_failed"] else ""))
  row = [key, m["schedule"], f"{s['rate']:.3g}" + ("*" if s["rate_at_grid_edge"] else ""),
         loss, verdict(m, task["methods"].get(REFERENCE)) or "-"]
  if metric:
    row += [f"{fmt(s.get(f'val_{metric}_mean'), 3)} ± {fmt(s.get(f'val_{metric}_std'), 1)}",
            fmt(s.get(f"test_{metric}_mean"), 3)]
  steps = s.get("steps_to_target")
  clamp = ("-" if "at_min_lr" not in s else
           f"{fmt(s['at_min_lr'], 2)} / {fmt(s.get('at_max_lr'), 2)}")
  row += ["never" if steps is None else str(steps),
          f"{fmt(s['grid_spread'])} / {fmt(s.get('grid_spread_below'))}",
          f"{s['grid_failed']}/{s['grid_points']}", f"{s['state_bytes_per_param']:.2f}",
          f"{fmt(s['ms_per_step'])} ({fmt(s.get('ms_vs_adamw'), 2)}x)", clamp]
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
      f"{budget_text(task['budget'])}. Target: the scheduled AdamW's final validation "
      f"{task['loss']} {fmt(target.get('val_loss'), 4)}.",
      *(["Failed to build: " + "; ".join(f"{k} ({v})" for k, v in task["errors"].items())
         + "."] if task.get("errors") else []),
      "",
  ]
  head = ["method", "schedule", "rate", f"val {task['loss']}", "verdict"]
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
