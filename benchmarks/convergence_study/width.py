"""The width sweep: does a rate tuned on a narrow model still serve a wide one?

muP's question, asked of every method: the ``char_lm`` transformer at widths
``d`` (``--widths``; heads ``d / 8``, MLP ``4d``; depth, steps, batch and data
fixed: ``WIDTH_LAYERS`` layer, ``WIDTH_STEPS`` steps of ``WIDTH_BATCH`` x 32
characters, to fit 2 shared CPU cores up to d = 256), each method's peak rate tuned per width on the same grid (seed 0 and
``WIDTH_SEEDS - 1`` more seeds, the rate picked on the validation split, losses
reported on the test split). Reported per method: the best rate at each width,
its drift in decades per doubling of the width (the least-squares slope of
``log10(best rate)`` against ``log2(d)``), and the test loss at each width at the
rate tuned at the narrowest width (``loss_at_small_rate``; minus ``best_loss``:
what reusing the small model's rate costs).

Writes ``width.json`` (every run), ``width.csv`` (``WIDTH_COLUMNS``),
``width.md`` and ``width.png`` (loss against rate, one curve per width, a panel
per method) into ``--out``; runs of other widths or methods already there are
kept.
"""

from __future__ import annotations

import csv
import json
import math
import pathlib
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional

import jax
import numpy as np

from .methods import Method
from .protocol import Budget, rate_grid
from .records import clean
from .settings import (WIDTH_BATCH, WIDTH_COLUMNS, WIDTH_HEAD_DIM, WIDTH_LAYERS,
                       WIDTH_SEEDS, WIDTH_STEPS)
from .tasks import Problem, char_lm_problem, load_example
from .training import execute
from .tuning import prepare

Log = Callable[[str], None]
WIDTH_VERSION = 1


def width_problem(width: int, quick: bool) -> Problem:
  """The char_lm task at width ``width`` (heads ``width / WIDTH_HEAD_DIM``)."""
  if width < WIDTH_HEAD_DIM or width % WIDTH_HEAD_DIM:
    raise ValueError(f"--widths: {width} is not a positive multiple of {WIDTH_HEAD_DIM}")
  sizes = {"d_model": width, "heads": width // WIDTH_HEAD_DIM}
  return char_lm_problem(load_example("char_lm"), quick,
                         sizes if quick else {**sizes, "batch": WIDTH_BATCH,
                                              "layers": WIDTH_LAYERS},
                         steps=20 if quick else WIDTH_STEPS)


def sweep_method(method: Method, width: int, budget: Budget, seeds: int,
                 log: Log) -> tuple[dict[str, Any], dict[str, Any]]:
  """One method's grid at one width: its entry ``{"rates", "val", "test", "failed"}``
  (``val`` / ``test``: final losses, one row per seed; or ``{"error"}``) and the
  width's description."""
  t0 = time.perf_counter()
  problem = width_problem(width, budget.quick)
  shapes = jax.eval_shape(problem.init, jax.random.key(0))
  about = {"parameters": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)),
           "description": problem.description}
  rates = rate_grid(method.rates, budget.grid_points)
  try:
    compiled = prepare(problem, method, [budget.grid_points], False,
                       budget.evals).compiled[budget.grid_points]
    runs = [execute(compiled, problem, rates, [1.0] * len(rates), [seed] * len(rates),
                    budget.evals) for seed in range(seeds)]
  except Exception as e:  # pylint: disable=broad-except  (report it, go on)
    log(f"width {width:4d} {method.key:36s} failed: {type(e).__name__}: {e}")
    return {"error": f"{type(e).__name__}: {e}"}, about
  entry = {"rates": rates, "val": [r.final_loss for r in runs],
           "test": [r.final_test for r in runs], "failed": [r.failed for r in runs],
           "seconds": time.perf_counter() - t0}
  best = best_index(entry)
  log(f"width {width:4d} {method.key:36s} best rate "
      f"{'-' if best is None else rates[best]:<8} {time.perf_counter() - t0:.0f} s")
  return entry, about


def mean_losses(entry: dict[str, Any], split: str) -> np.ndarray:
  """Mean over seeds of the final ``split`` loss at each rate; inf where a seed failed."""
  values = np.asarray([[np.inf if v is None else v for v in row] for row in entry[split]],
                      float)
  failed = np.asarray(entry["failed"], bool).any(axis=0)
  return np.where(failed | ~np.isfinite(values).all(axis=0), np.inf, values.mean(axis=0))


def best_index(entry: dict[str, Any]) -> Optional[int]:
  """The grid index of the lowest mean validation loss; None if every rate failed."""
  val = mean_losses(entry, "val")
  return int(np.argmin(val)) if np.isfinite(val).any() else None


def drift(widths: Sequence[int], rates: Sequence[float]) -> Optional[float]:
  """Decades of best rate per doubling of the width (least-squares slope)."""
  if len(widths) < 2:
    return None
  return round(float(np.polyfit(np.log2(widths), np.log10(rates), 1)[0]), 6) + 0.0


def width_rows(sweep: dict[str, Any]) -> list[dict[str, Any]]:
  """``width.csv``'s rows: one per method x width (widths ascending)."""
  rows = []
  widths = sorted(int(w) for w in sweep["widths"])
  keys = list(dict.fromkeys(k for w in widths for k in sweep["widths"][str(w)]["methods"]))
  for key in keys:
    entries = {w: sweep["widths"][str(w)]["methods"].get(key) for w in widths}
    entries = {w: e for w, e in entries.items() if e and "rates" in e
               and best_index(e) is not None}
    if not entries:
      continue
    best = {w: best_index(e) for w, e in entries.items()}
    small = min(entries)
    slope = drift(list(entries), [entries[w]["rates"][best[w]] for w in entries])
    for w, e in entries.items():
      test = mean_losses(e, "test")
      at_small = (test[best[small]] if e["rates"] == entries[small]["rates"] else math.nan)
      rows.append({"task": "char_lm", "width": w, "method": key,
                   "best_rate": e["rates"][best[w]],
                   "best_loss": f"{test[best[w]]:.6g}",
                   "loss_at_small_rate": f"{at_small:.6g}" if math.isfinite(at_small) else "",
                   "drift_decades": "" if slope is None else f"{slope:.3f}",
                   "at_edge": best[w] in (0, len(e["rates"]) - 1)})
  return rows


def write_width(sweep: dict[str, Any], out: pathlib.Path) -> None:
  """``width.json``, ``width.csv``, ``width.md`` and ``width.png`` from ``sweep``."""
  from .plots import plot_width  # pylint: disable=g-import-not-at-top (matplotlib)
  out.mkdir(parents=True, exist_ok=True)
  sweep = clean(sweep)
  (out / "width.json").write_text(json.dumps(sweep, separators=(",", ":")))
  rows = width_rows(sweep)
  with (out / "width.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=WIDTH_COLUMNS, lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
  (out / "width.md").write_text(width_markdown(sweep, rows))
  plot_width(sweep, out / "width.png")


def width_table(rows: Sequence[dict[str, Any]]) -> list[str]:
  """One line per method: best rate per width, drift, loss lost at the widest width."""
  widths = sorted({r["width"] for r in rows})
  lines = ["| method | " + " | ".join(f"best rate d={w}" for w in widths)
           + " | drift (decades/doubling) | "
           + f"test loss at its widest d: tuned / at d={widths[0]}'s rate (lost) |",
           "|---" * (len(widths) + 3) + "|"]
  for key in dict.fromkeys(r["method"] for r in rows):
    mine = {r["width"]: r for r in rows if r["method"] == key}
    cells = [f"{mine[w]['best_rate']:.3g}" + ("*" if mine[w]["at_edge"] else "")
             if w in mine else "-" for w in widths]
    wide = mine[max(mine)]
    lost = "-"
    if len(mine) > 1 and wide["loss_at_small_rate"]:
      tuned, small = float(wide["best_loss"]), float(wide["loss_at_small_rate"])
      lost = f"d={max(mine)}: {tuned:.3f} / {small:.3f} ({small - tuned:+.3f})"
    drift_cell = next((r["drift_decades"] for r in mine.values()), "") or "-"
    lines.append(f"| {key} | " + " | ".join(cells) + f" | {drift_cell} | {lost} |")
  return lines


def width_markdown(sweep: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
  """``width.md``: the setup, then :func:`width_table`."""
  widths = sorted(int(w) for w in sweep["widths"])
  return "\n".join([
      "# Width sweep: one rate for every width?", "",
      f"The `char_lm` transformer at widths d = {', '.join(map(str, widths))} (heads d/8, "
      f"MLP 4d; {WIDTH_LAYERS} layer, {sweep['steps']} steps of {WIDTH_BATCH} x 32 characters, data "
      f"fixed); each method's "
      f"peak rate tuned per width on the same {sweep['grid_points']}-rate grid, "
      f"{sweep['seeds']} seed(s), picked on the validation split; test loss reported. "
      "`*`: the best rate sits on the grid's edge. Drift: least-squares slope of "
      "log10(best rate) against log2(d), over the widths the method ran. Last column: "
      "test loss at the method's widest width at its own best rate / at the rate tuned "
      "at the narrowest width, and the difference.",
      "", *width_table(rows), ""])


def load_width(out: pathlib.Path, steps: int, quick: bool, log: Log) -> dict[str, Any]:
  """``out``'s width sweep to merge into (empty if absent or of other steps/mode)."""
  empty = {"version": WIDTH_VERSION, "steps": steps, "quick": quick, "widths": {}}
  path = out / "width.json"
  if not path.exists():
    return empty
  old = json.loads(path.read_text())
  if (old.get("version"), old.get("steps"), old.get("quick")) != (WIDTH_VERSION, steps, quick):
    log(f"{path}: another sweep (version, steps or mode); replaced, not merged")
    return empty
  return old


def run_width(out: pathlib.Path, widths: Sequence[int], chosen: Sequence[Method],
              budget: Budget, command: str, log: Log, rerun: bool = False) -> dict[str, Any]:
  """The sweep over ``widths`` for the ``chosen`` methods (untuned ones skipped), merged
  into ``out``'s and written there; a (method, width) already there is kept unless
  ``rerun`` (so that an interrupted sweep resumes)."""
  seeds = min(WIDTH_SEEDS, budget.seeds) if budget.quick else WIDTH_SEEDS
  steps = 20 if budget.quick else WIDTH_STEPS
  sweep = load_width(out, steps, budget.quick, log)
  tuned = [m for m in chosen if m.fixed is None]
  sweep.update(grid_points=budget.grid_points, seeds=seeds, steps=steps,
               commands=sweep.get("commands", []) + [command])
  # One method at every width, then the next: a sweep cut short keeps whole methods;
  # written after each width.
  for method in tuned:
    for width in widths:
      done = sweep["widths"].get(str(width), {}).get("methods", {}).get(method.key, {})
      if "rates" in done and not rerun:
        log(f"width {width:4d} {method.key:36s} kept from {out}")
        continue
      entry, about = sweep_method(method, width, budget, seeds, log)
      slot = sweep["widths"].setdefault(str(width), {"methods": {}})
      slot.update(about)
      slot["methods"][method.key] = entry
      write_width(sweep, out)
  return sweep


def merge_width(out: pathlib.Path, other: pathlib.Path) -> bool:
  """Merges ``other``'s width sweep (same steps and mode) into ``out``'s and rewrites
  ``out``'s files; False if ``other`` has none."""
  path = other / "width.json"
  if not path.exists():
    return False
  new = json.loads(path.read_text())
  base = load_width(out, new["steps"], new["quick"], lambda text: None)
  for w, entry in new["widths"].items():
    old = base["widths"].get(w, {}).get("methods", {})
    base["widths"][w] = {**entry, "methods": {**old, **entry["methods"]}}
  base.update(grid_points=new["grid_points"], seeds=new["seeds"],
              commands=base.get("commands", []) + new.get("commands", []))
  write_width(base, out)
  return True
