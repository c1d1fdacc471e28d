"""``--retime``: re-measures ms/step of a stored study, alone, and rewrites its files."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

from .costs import time_step
from .methods import Method, builtin_methods
from .outputs import read_study, write_outputs
from .run import Log, machine
from .settings import REFERENCE
from .tables import fmt
from .tasks import TASKS, build_problem
from .training import make_timer


def retime(out: pathlib.Path, log: Log, extra: Sequence[Method] = ()) -> None:
  """Re-measures ms/step of every (task, method) in ``out``'s JSON at its chosen rate
  and rewrites the files (``extra``: the user methods, which the JSON may hold)."""
  study = read_study(out)
  by_key = {m.key: m for m in [*builtin_methods(), *extra]}
  for task in TASKS:
    entry = study["tasks"].get(task.name)
    if not entry or not entry.get("methods"):
      continue
    problem = build_problem(task, False, entry["budget"]["evals"])
    timer = lambda key: make_timer(problem, by_key[key])
    target = entry["methods"].get(REFERENCE, {}).get("summary", {})
    ref = ((timer(REFERENCE), target["rate"], target.get("ratio", 1.0))
           if REFERENCE in entry["methods"] else None)
    for key, m in entry["methods"].items():
      if key not in by_key or not by_key[key].available():
        log(f"{task.name:10s} {key:36s} not retimed (unknown here)")
        continue
      s = m["summary"]
      s["ms_per_step"], s["ms_vs_target_paired"] = time_step(
          problem, timer(key), s["rate"], s.get("ratio", 1.0), ref)
      s["ms_source"] = "single jitted run (retimed)"
      log(f"{task.name:10s} {key:36s} {s['ms_per_step']:.2f} ms/step "
          f"({fmt(s['ms_vs_target_paired'], 3)}x nadamw)")
  study["config"]["retimed_on"] = machine()
  write_outputs(study, out)
