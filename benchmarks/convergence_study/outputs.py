"""The ``--out`` folder: the study to merge into, and every file written from it.

:func:`load_study` reads ``convergence.json`` (if it can be merged into);
:func:`write_outputs` writes it back with ``summary.csv``, ``convergence.md`` and
the figures.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any

from .plots import plot_curves, plot_rates
from .records import clean
from .settings import VERSION
from .stats import finalise_task
from .tables import markdown, write_csv


def write_outputs(study: dict[str, Any], out: pathlib.Path) -> None:
  """convergence.json, summary.csv, convergence.md and the figures, from ``study``
  (its task-level numbers recomputed: see :func:`finalise_task`)."""
  out.mkdir(parents=True, exist_ok=True)
  study = clean(study)
  for task in study["tasks"].values():
    if "methods" in task:
      finalise_task(task)
  study = clean(study)
  (out / "convergence.json").write_text(json.dumps(study, separators=(",", ":")))
  write_csv(study, out / "summary.csv")
  (out / "convergence.md").write_text(markdown(study))
  for name, task in study["tasks"].items():
    if task.get("methods"):
      plot_curves(name, task, out / f"curves_{name}.png")
      plot_rates(name, task, out / f"rates_{name}.png")


def write_json(study: dict[str, Any], out: pathlib.Path) -> None:
  """``convergence.json`` alone (a checkpoint during a run; ``--replot`` writes the rest)."""
  out.mkdir(parents=True, exist_ok=True)
  (out / "convergence.json").write_text(json.dumps(clean(study), separators=(",", ":")))


def load_study(out: pathlib.Path, quick: bool,
               log: Callable[[str], None]) -> dict[str, Any]:
  """``out``'s study to merge into: empty if there is none, if it has another format
  (``VERSION``) or the other mode (quick or not)."""
  path = out / "convergence.json"
  empty = {"version": VERSION, "tasks": {}, "config": {}}
  if not path.exists():
    return empty
  study = json.loads(path.read_text())
  if study.get("version") != VERSION:
    log(f"{path}: an older format; replaced, not merged")
    return empty
  if study.get("config", {}).get("quick") != quick:
    log(f"{path}: a {'full' if quick else 'quick'} study; replaced, not merged")
    return empty
  return study


def merge_study(base: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
  """``base`` with ``other``'s tasks merged in: a task of the same steps and evaluations
  gets ``other``'s methods (they replace ``base``'s of the same key), runs and errors;
  any other task of ``other`` replaces ``base``'s. For studies run in parallel
  processes, each with its own ``--out``."""
  if base.get("version") != other.get("version"):
    raise ValueError("--merge: the two studies have different formats")
  for name, task in other["tasks"].items():
    mine = base["tasks"].get(name)
    if (mine is None or "methods" not in mine or "methods" not in task
        or mine["steps"] != task["steps"] or mine["budget"]["evals"] != task["budget"]["evals"]):
      base["tasks"][name] = task
      continue
    mine["methods"] = {**mine["methods"], **task["methods"]}
    mine["runs"] = mine.get("runs", []) + task.get("runs", [])
    mine["seconds"] = sum(r["seconds"] for r in mine["runs"])
    mine["errors"] = {**{k: v for k, v in mine.get("errors", {}).items()
                         if k not in task["methods"]}, **task.get("errors", {})}
  cfg, new = base.setdefault("config", {}), other.get("config", {})
  cfg["methods"] = {**cfg.get("methods", {}), **new.get("methods", {})}
  cfg["commands"] = cfg.get("commands", []) + new.get("commands", [])
  ran = {k for t in base["tasks"].values() for k in t.get("methods", {})}
  cfg["unavailable_methods"] = {k: v for k, v in {**cfg.get("unavailable_methods", {}),
                                                  **new.get("unavailable_methods", {})}.items()
                                if k not in ran}
  cfg["wall_seconds"] = sum(t.get("seconds", 0.0) for t in base["tasks"].values())
  return base


def read_study(out: pathlib.Path) -> dict[str, Any]:
  """``out``'s ``convergence.json`` as it is (for ``--replot`` and ``--retime``)."""
  return json.loads((out / "convergence.json").read_text())
