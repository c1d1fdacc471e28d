"""The command line of ``benchmarks/convergence.py``: arguments, then the study, a
re-timing or a re-plot written to ``--out``."""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
import time
from collections.abc import Sequence
from typing import Optional

import jax

from .methods import Method, builtin_methods, load_user_method
from .outputs import load_study, merge_study, read_study, write_json, write_outputs
from .protocol import Budget
from .reanalyse import reanalyse
from .retime import retime
from .run import Log, run_study, select
from .settings import (EVALS, EXTEND, GRID_POINTS, LONG_METHODS, LONG_SEEDS, QUICK_EVALS,
                       QUICK_GRID_POINTS, QUICK_RESULTS, QUICK_SEEDS, REFINE, RESULTS, SEEDS,
                       USER_RESULTS, WIDTH_METHODS, WIDTHS)
from .tasks import TASKS
from .width import merge_width, run_width

DESCRIPTION = ("Does it help? Every method against the scheduled NAdamW, tuned like "
               "practitioners tune.")


def default_out(quick: bool, user: bool = False) -> pathlib.Path:
  """Where the study writes without ``--out``: the committed results; for a quick
  study (whose numbers only show that everything runs) or one with ``--method-from``
  methods a git-ignored folder, so that it never writes into the committed study."""
  return QUICK_RESULTS if quick else USER_RESULTS if user else RESULTS


def positive_int(text: str) -> int:
  """An argument that must be an integer of at least 1."""
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def positive_float(text: str) -> float:
  """An argument that must be a positive number."""
  value = float(text)
  if not value > 0:
    raise argparse.ArgumentTypeError(f"must be positive, got {value}")
  return value


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """The command line's arguments; ``out`` resolved (:func:`default_out` unless given)."""
  p = argparse.ArgumentParser(
      description=DESCRIPTION,
      epilog="Your method: --method-from module:make_tx (or path/to/file.py:make_tx), where "
             "make_tx(learning_rate) gets the scheduled learning rate (an optax schedule: the "
             "peak under test times the warm-up-cosine shape; the peak is traced, use it only "
             "in arithmetic) and returns an optax.GradientTransformation. It is tuned and run "
             "like every method (grid, refinement, seeds), named after the function, on the "
             "Adam-like grid unless --grid LO HI; module:function=name names it. --methods "
             "none runs only it (and NAdamW, the target); without --out it writes to "
             f"{USER_RESULTS} (git-ignored). Results merge into --out's JSON: run the study "
             "one task at a time with --tasks '^digits$', '^rnn$', '^char_lm$', "
             "'^char_lm_x3$', and the width sweep with --widths.")
  p.add_argument("--out", type=pathlib.Path, default=None,
                 help="folder for the JSON, the CSV, the table and the figures; results "
                      f"already there are kept and merged (default: {RESULTS}, the committed "
                      f"study; with --quick, {QUICK_RESULTS}, and with --method-from, "
                      f"{USER_RESULTS}, both git-ignored)")
  p.add_argument("--quick", action="store_true",
                 help="every task x method, tiny: 2 grid rates, 2 refinement rates, 2 seeds, "
                      "a few steps")
  p.add_argument("--tasks", default=None,
                 help="regex: only the tasks it matches (" + ", ".join(t.name for t in TASKS)
                      + "; 'char_lm' matches both char_lm tasks, '^char_lm$' only the first; "
                      "char_lm_x3 runs " + ", ".join(LONG_METHODS) + " only)")
  p.add_argument("--methods", default=None,
                 help="regex: only the built-in methods whose key it matches (e.g. "
                      "'adamw|grad_history', 'none' for none of them, with --method-from); "
                      "NAdamW runs anyway unless --out holds it for the task; one that "
                      "matches nothing is an error")
  p.add_argument("--method-from", action="append", default=[],
                 metavar="MODULE:FUNCTION[=NAME]",
                 help="add your method: FUNCTION(learning_rate schedule) -> "
                      "optax.GradientTransformation, from MODULE (importable from the current "
                      "directory) or a file path.py, named NAME (default: FUNCTION); "
                      "repeatable, the names distinct")
  p.add_argument("--grid", nargs=2, type=positive_float, metavar=("LO", "HI"), default=None,
                 help=f"the --method-from methods' grid: {GRID_POINTS} log-spaced peak rates "
                      "from LO to HI (default: the Adam-like grid, 1e-4 to 0.1)")
  p.add_argument("--seeds", type=positive_int, default=None,
                 help=f"seeds per method (default {SEEDS}, {LONG_SEEDS} on char_lm_x3; "
                      f"{GRID_POINTS} reuses the grid's compiled program)")
  p.add_argument("--jobs", type=positive_int, default=2,
                 help="threads compiling ahead (default %(default)s); runs and timings are "
                      "one at a time")
  p.add_argument("--widths", nargs="+", type=positive_int, default=None, metavar="D",
                 help="run the width sweep (char_lm at these widths, e.g. "
                      f"{' '.join(map(str, WIDTHS))}, multiples of 8) instead of the tasks, for "
                      f"{', '.join(WIDTH_METHODS)} (--methods selects among every built-in) "
                      "and the --method-from methods; writes width.json/.csv/.md/.png")
  p.add_argument("--fast-compile", action="store_true",
                 help="compile without XLA's optimisations (as --quick does): faster "
                      "compilation, slower steps; the same model and optimizer (float "
                      "rounding may differ)")
  p.add_argument("--without-target", action="store_true",
                 help="do not add NAdamW (the target) to a task whose --out lacks it: for a "
                      "part of the study run in its own process and --merge'd later")
  p.add_argument("--merge", type=pathlib.Path, default=None, metavar="DIR",
                 help="merge the study in DIR (e.g. a task run in another process with its "
                      "own --out) into --out's, then rewrite --out's files")
  p.add_argument("--reanalyse", type=pathlib.Path, default=None, metavar="DIR",
                 help="recompute the verdicts of the study in DIR (e.g. benchmarks/results/v2, "
                      "against --reference) with Welch's degrees of freedom and Holm's "
                      "correction, into DIR/welch_holm.csv")
  p.add_argument("--reference", default="adamw",
                 help="the reference method of --reanalyse (default %(default)s)")
  p.add_argument("--retime", action="store_true",
                 help="re-measure ms/step of the study in --out and rewrite its files")
  p.add_argument("--replot", action="store_true",
                 help="rewrite the table, summary.csv and the figures from the JSON in --out")
  args = p.parse_args(argv)
  if args.grid is not None and not args.method_from:
    p.error("--grid sets the --method-from methods' grid; give --method-from too")
  if args.tasks is not None and not select(TASKS, args.tasks) and args.widths is None:
    p.error(f"--tasks {args.tasks!r} matches no task; tasks: "
            + ", ".join(t.name for t in TASKS))
  if args.methods is not None and not args.method_from and not any(
      re.search(args.methods, m.key) for m in builtin_methods()):
    p.error(f"--methods {args.methods!r} matches no method (and no --method-from is given)")
  if args.out is None:
    args.out = default_out(args.quick, bool(args.method_from))
  return args


def user_methods(specs: Sequence[str], grid: Optional[tuple[float, float]],
                 builtins: Sequence[Method]) -> list[Method]:
  """The ``--method-from`` methods, each named apart from the built-ins and the others."""
  user: list[Method] = []
  for spec in specs:
    user.append(load_user_method(spec, grid, taken=[m.key for m in builtins],
                                 users=[m.key for m in user]))
  return user


def budget_of(args: argparse.Namespace) -> Budget:
  """The budget of a full or ``--quick`` study (``--seeds``, ``--jobs`` applied)."""
  return Budget(grid_points=QUICK_GRID_POINTS if args.quick else GRID_POINTS,
                refine=REFINE, seeds=args.seeds or (QUICK_SEEDS if args.quick else SEEDS),
                evals=QUICK_EVALS if args.quick else EVALS,
                timing=not args.quick, quick=args.quick, jobs=args.jobs,
                extend=0 if args.quick else EXTEND, add_target=not args.without_target)


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Runs the command line ``argv`` (default: ``sys.argv[1:]``)."""
  args = parse_args(argv)
  log: Log = lambda text: print(text, flush=True)
  builtins = builtin_methods()
  user = user_methods(args.method_from, args.grid, builtins)
  if args.retime:
    retime(args.out, log, user)
    return
  if args.reanalyse is not None:
    rows = reanalyse(args.reanalyse, args.reference)
    log(f"{len(rows)} verdicts written to {args.reanalyse / 'welch_holm.csv'}")
    return
  if args.replot:
    write_outputs(read_study(args.out), args.out)
    return
  if args.merge is not None:
    if (args.merge / "convergence.json").exists():
      other = read_study(args.merge)
      base = (read_study(args.out) if (args.out / "convergence.json").exists()
              else {"version": other.get("version"), "tasks": {}, "config": {}})
      write_outputs(merge_study(base, other), args.out)
    merge_width(args.out, args.merge)
    log(f"merged {args.merge} into {args.out}")
    return
  if args.quick or args.fast_compile:
    # Compilation dominates the quick run: about 2x faster without XLA's optimisations.
    jax.config.update("jax_disable_most_optimizations", True)
  budget = budget_of(args)
  command = "python benchmarks/convergence.py " + " ".join(sys.argv[1:] if argv is None
                                                           else argv)
  start = time.perf_counter()
  if args.widths is not None:
    pool = [m for m in builtins if m.available() and (
        re.search(args.methods, m.key) if args.methods is not None else m.key in WIDTH_METHODS)]
    run_width(args.out, args.widths, pool + user, budget, command, log)
    log(f"\n{(time.perf_counter() - start) / 60:.1f} min; width sweep written to {args.out}")
    return
  chosen = [m for m in builtins if args.methods is None or re.search(args.methods, m.key)]
  chosen += user
  study = run_study(load_study(args.out, args.quick, log), select(TASKS, args.tasks), chosen,
                    budget, command, log, lambda partial: write_json(partial, args.out))
  write_outputs(study, args.out)
  log(f"\n{(time.perf_counter() - start) / 60:.1f} min; written to {args.out}")
