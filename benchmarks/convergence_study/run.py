"""Runs the study: the selected methods on each task, merged into the stored results.

:func:`run_task` gives one task's JSON entry (NAdamW, the target, first; the
methods compiled ahead in worker threads and run one at a time in the main
thread, then timed one at a time); :func:`study_config` the merged study's
configuration.
"""

from __future__ import annotations

import concurrent.futures
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import jax
import numpy as np
import optax

from .costs import time_step
from .methods import Method, builtin_methods
from .protocol import Budget, rate_grid
from .records import method_json
from .settings import RATE_RANGES, REFERENCE, USER, VERSION
from .tasks import TASKS, Problem, Task, build_problem
from .tuning import MethodResult, Prepared, prepare, program_sizes, run_method

Log = Callable[[str], None]


def machine() -> str:
  """The machine and the library versions, as stored with each run."""
  return (f"{platform.machine()} CPU, {os.cpu_count()} cores ({platform.system()}), "
          f"jax {jax.__version__}, optax {optax.__version__}")


def select(rows: Sequence[Any], pattern: Optional[str]) -> list[Any]:
  """The rows (tasks) whose ``name`` the regex ``pattern`` matches; all for none."""
  return [r for r in rows if pattern is None or re.search(pattern, r.name)]


def task_methods(task: Task, selected: Sequence[Method]) -> list[Method]:
  """The selected methods that the task runs (a variant runs only its ``only``, and
  every user method)."""
  return [m for m in selected if task.only is None or m.key in task.only or m.family == USER]


def reference_first(chosen: Sequence[Method], kept: dict[str, Any],
                    add: bool = True) -> list[Method]:
  """The methods to run, the target (NAdamW) first, added (with ``add``) unless chosen
  or kept."""
  chosen = list(chosen)
  if add and not any(m.key == REFERENCE for m in chosen) and REFERENCE not in kept:
    chosen = [next(m for m in builtin_methods() if m.key == REFERENCE)] + chosen
  return sorted(chosen, key=lambda m: m.key != REFERENCE)  # the target first, else in order


def run_methods(task: Task, problem: Problem, chosen: Sequence[Method], budget: Budget,
                seeds: int, kept: dict[str, Any], log: Log,
                on_result: Optional[Callable[[list[MethodResult], dict[str, str]], None]] = None,
                ) -> tuple[list[Prepared], list[MethodResult], dict[str, str]]:
  """Compiles the methods ahead in ``budget.jobs`` worker threads (XLA's compilation is
  single-threaded) and runs them in order in the main thread. Returns their programs,
  results and build or tuning errors (whose stale results are dropped from ``kept``);
  ``on_result(results, errors)`` after each method (a checkpoint)."""
  results, prepared, errors = [], [], {}
  with concurrent.futures.ThreadPoolExecutor(budget.jobs) as pool:
    futures = [pool.submit(prepare, problem, m, program_sizes(m, budget, seeds),
                           budget.timing, budget.evals) for m in chosen]
    for method, future in zip(chosen, futures):  # in order; later methods compile meanwhile
      t0 = time.perf_counter()
      try:
        p = future.result()
        r = run_method(problem, p, budget, seeds)
      except Exception as e:  # pylint: disable=broad-except  (an API mismatch: report it)
        errors[method.key] = f"{type(e).__name__}: {e}"
        kept.pop(method.key, None)  # no stale results beside the error
        log(f"{task.name:10s} {method.key:36s} failed: {errors[method.key]}")
        continue
      prepared.append(p)
      results.append(r)
      log(f"{task.name:10s} {method.key:36s} rate {r.rate:<8.3g} ratio {r.ratio:<4g} "
          f"val {np.mean(r.seeds.final_loss):<8.4g} test {np.mean(r.seeds.final_test):<8.4g}"
          f" tuning failed {int(r.tuning[2].sum())}  {time.perf_counter() - t0:.0f} s")
      if on_result is not None:
        on_result(results, errors)
  return prepared, results, errors


def time_methods(problem: Problem, prepared: Sequence[Prepared],
                 results: Sequence[MethodResult]) -> None:
  """Sets each result's ms/step (and its ratio to the target's) from the compiled
  single-run timers, one at a time."""
  ref = next(((p.timer, r.rate, r.ratio) for p, r in zip(prepared, results)
              if p.method.key == REFERENCE and p.timer is not None), None)
  for p, r in zip(prepared, results):
    if p.timer is not None:
      r.ms_per_step, r.ms_vs_target = time_step(problem, p.timer, r.rate, r.ratio, ref)
      r.ms_source = "single jitted run"


def in_table_order(methods: dict[str, Any]) -> dict[str, Any]:
  """JSON method entries in :func:`builtin_methods`' order, user methods last."""
  order = [m.key for m in builtin_methods()]
  return dict(sorted(methods.items(),
                     key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def run_task(task: Task, selected: Sequence[Method], budget: Budget,
             existing: Optional[dict[str, Any]], command: str, log: Log,
             checkpoint: Optional[Callable[[dict[str, Any]], None]] = None) -> dict[str, Any]:
  """The selected methods on one task, merged into ``existing`` (the task's entry in
  ``--out``'s JSON) when its steps and evaluations match; the task's JSON entry.

  NAdamW (the target) runs first; it is added when neither selected nor in
  ``existing``. ``budget.jobs`` worker threads
  compile the methods' programs ahead (XLA's compilation is single-threaded); the
  main thread runs them in order, then times every method's step alone;
  ``checkpoint(entry)`` gets the task's entry so far after each method.
  """
  try:
    problem = build_problem(task, budget.quick, budget.evals)
  except (FileNotFoundError, ImportError, AttributeError) as e:
    log(f"{task.name}: not run ({e})")
    return {"title": task.title, "task": task.csv_name,
            "unavailable": f"examples/{task.example}.py: {e}"}
  seeds = min(task.seeds or budget.seeds, budget.seeds)
  compatible = (existing is not None and existing.get("methods") is not None
                and existing.get("steps") == problem.steps
                and existing.get("budget", {}).get("evals") == budget.evals)
  if existing is not None and not compatible:
    log(f"{task.name}: replacing the stored results (other steps or evaluations)")
  kept = dict(existing["methods"]) if compatible else {}
  chosen = reference_first(task_methods(task, selected), kept, budget.add_target)
  start = time.perf_counter()
  entry = lambda results, errors: task_entry(task, problem, budget, seeds, existing, compatible,
                                             kept, results, errors, command,
                                             time.perf_counter() - start)
  on_result = None if checkpoint is None else lambda rs, es: checkpoint(entry(rs, es))
  prepared, results, errors = run_methods(task, problem, chosen, budget, seeds, kept, log,
                                          on_result)
  time_methods(problem, prepared, results)
  log(f"{task.name}: {time.perf_counter() - start:.0f} s")
  return entry(results, errors)


def task_entry(task: Task, problem: Problem, budget: Budget, seeds: int,
               existing: Optional[dict[str, Any]], compatible: bool, kept: dict[str, Any],
               results: Sequence[MethodResult], errors: dict[str, str], command: str,
               seconds: float) -> dict[str, Any]:
  """A task's JSON entry: the ``results`` run now, merged with the ``kept`` ones."""
  new = {r.method.key: method_json(r) for r in results}
  n_params = sum(x.size for x in jax.tree.leaves(jax.eval_shape(problem.init,
                                                                jax.random.key(0))))
  runs = (existing.get("runs", []) if compatible else []) + [
      {"command": command, "machine": machine(), "seconds": seconds, "methods": list(new),
       "budget": budget.json(seeds)}]
  return {
      "title": task.title, "task": task.csv_name, "description": problem.description,
      "loss": task.loss_name, "metric": task.metric, "steps": problem.steps,
      "parameters": n_params, "schedule": "warmup_cosine: linear warm-up over steps // 10, "
                                          "cosine decay to 0.1 x peak",
      "eval_steps": [k * (problem.steps // budget.evals) for k in range(budget.evals + 1)],
      "budget": budget.json(seeds), "seconds": sum(r["seconds"] for r in runs), "runs": runs,
      "errors": {**{k: v for k, v in (existing.get("errors", {}) if compatible else {}).items()
                    if k not in new}, **errors},
      "methods": in_table_order({**kept, **new}),
  }


def study_config(study: dict[str, Any], chosen: Sequence[Method], unavailable: dict[str, str],
                 budget: Budget, command: str) -> dict[str, Any]:
  """The merged study's configuration."""
  old = study.get("config", {})
  ran = {k for t in study["tasks"].values() for k in t.get("methods", {})}
  missing = {k: v for k, v in {**old.get("unavailable_methods", {}), **unavailable}.items()
             if k not in ran}
  methods_cfg = {**old.get("methods", {}),
                 **{m.key: {"method": m.name, "schedule": m.schedule, "family": m.family,
                            "settings": m.settings, "grid": m.rates, "ratios": list(m.ratios),
                            "fixed_rate": m.fixed} for m in chosen}}
  return {
      "quick": budget.quick, "grid_points": budget.grid_points, "refine": list(budget.refine),
      "seeds": budget.seeds, "evals": budget.evals, "extend": budget.extend,
      "schedule": "optax.warmup_cosine_decay_schedule(0.0, peak, steps // 10, steps, "
                  "0.1 * peak); constant: the peak",
      "grids": {k: rate_grid(k, budget.grid_points) for k in RATE_RANGES},
      "methods": methods_cfg, "unavailable_methods": missing,
      "commands": old.get("commands", []) + [command], "machine": machine(),
      "wall_seconds": sum(t.get("seconds", 0.0) for t in study["tasks"].values()),
      **({"retimed_on": old["retimed_on"]} if "retimed_on" in old else {}),
  }


def run_study(study: dict[str, Any], tasks: Sequence[Task], chosen: Sequence[Method],
              budget: Budget, command: str, log: Log,
              checkpoint: Optional[Callable[[dict[str, Any]], None]] = None
              ) -> dict[str, Any]:
  """``study`` (``--out``'s, :func:`outputs.load_study`) with the chosen methods run on
  ``tasks`` (those whose ``nlr`` names are missing listed, not run), its tasks in
  ``TASKS``' order and its configuration merged; ``checkpoint(study)`` after each
  method."""
  unavailable = {m.key: f"needs nlr.{', nlr.'.join(m.missing())}"
                 for m in chosen if not m.available()}
  def save(name: str, entry: dict[str, Any]) -> None:
    if checkpoint is not None:
      checkpoint({**study, "tasks": {**study["tasks"], name: entry}, "version": VERSION,
                  "config": study_config(study, chosen, unavailable, budget, command)})

  for task in tasks:
    study["tasks"][task.name] = run_task(
        task, [m for m in chosen if m.available()], budget, study["tasks"].get(task.name),
        command, log, lambda entry, name=task.name: save(name, entry))
  order = [t.name for t in TASKS]
  study["tasks"] = dict(sorted(study["tasks"].items(),
                               key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))
  study["version"] = VERSION
  study["config"] = study_config(study, chosen, unavailable, budget, command)
  return study
