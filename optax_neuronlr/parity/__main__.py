"""``python -m optax_neuronlr.parity``: the parity table.

Options: ``--steps N`` (default 50), ``--dtype float64|float32|both`` (default
both), ``--case NAME`` (repeatable; default every case). Prints one Markdown
table and, when every case runs, the TensorFlow document's own toy problem
(``004``); exits 1 when a checked case fails its verdict.

The rows ``003-add-group-sgd``, ``003-add-group-adam`` and ``003-reset-group``
change the optimizer halfway through the run (``optimizer.add_param_group`` for
a new head, ``optimizer.state[p].clear()`` for a group) against
``nlr.add_param_group`` and ``nlr.reset_param_group``
(`optax_neuronlr.parity.param_group_changes`).

The last row, ``adam-mini``, runs ``nlr.adam_mini`` against the PyTorch package
``adam-mini==1.1.1`` on a small GPT (`optax_neuronlr.parity.adam_mini`),
in float64 only; it needs ``pip install adam-mini==1.1.1`` (the ``test``
extra) and flax.

The rows ``muon`` and ``normuon`` run ``nlr.muon`` against ``torch.optim.Muon``
and ``nlr.normuon`` against the NorMuon reference's ``normuon_update`` (restated
in `optax_neuronlr.parity.normuon`), on plain matrices and on an NNX
transformer block with 3-D attention kernels, in float64 only.

The rows ``nero``, ``nero-unconstrained``, ``lars-tensor``,
``lars-tensor-default`` and ``lamb-tensor`` run the rules that see the
weights against pytorch-optimizer's ``Nero`` and optax's ``lars`` / ``lamb``
(`optax_neuronlr.parity.relative`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Optional

import jax
import torch

from optax_neuronlr.parity import param_group_changes
from optax_neuronlr.parity import relative
from optax_neuronlr.parity import seed004
from optax_neuronlr.parity.harness import Result
from optax_neuronlr.parity.cases import CASES
from optax_neuronlr.parity.harness import DTYPES, exit_status, format_table, run_case

DEFAULT_STEPS = 50
ADAM_MINI = "adam-mini"
MUON_ROWS = ("muon", "normuon")
# The README's order: by reference document (000 ... 004; a document's
# param-group rows after its other rows), then Muon and NorMuon, Nero,
# LARS and LAMB, then Adam-mini (the README gives it a table of its own).
NAMES = (*sorted((*CASES, *param_group_changes.NAMES), key=lambda name: name[:3]),
         *MUON_ROWS, *relative.NAMES, ADAM_MINI)


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
  return value


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m optax_neuronlr.parity",
      description="Runs the reference documents' PyTorch code and our JAX transforms "
                  "side by side and prints the parity table.")
  p.add_argument("--steps", type=_positive_int, default=DEFAULT_STEPS,
                 help=f"training steps per case (default {DEFAULT_STEPS})")
  p.add_argument("--dtype", choices=(*DTYPES, "both"), default="both",
                 help="precision to compare in (default both)")
  p.add_argument("--case", action="append", choices=list(NAMES), metavar="NAME",
                 help=f"run only this case (repeatable); one of: {', '.join(NAMES)}")
  return p


def _run(name: str, steps: int, dtypes: Sequence[str]) -> Result:
  if name == ADAM_MINI:
    from optax_neuronlr.parity import adam_mini  # pylint: disable=g-import-not-at-top
    return adam_mini.run_case(steps, dtypes)
  if name in MUON_ROWS:
    from optax_neuronlr.parity import normuon  # pylint: disable=g-import-not-at-top
    return normuon.run_case(name, steps, dtypes)
  if name in relative.CASES:
    return run_case(relative.CASES[name], steps, dtypes)
  if name in param_group_changes.ROWS:
    return param_group_changes.run_case(name, steps, tuple(dtypes))
  return run_case(CASES[name], steps, dtypes)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Parses ``argv``, prints the table, returns the exit status."""
  args = parser().parse_args(argv)
  dtypes = DTYPES if args.dtype == "both" else (args.dtype,)
  names = list(dict.fromkeys(args.case)) if args.case else list(NAMES)
  results = [_run(name, args.steps, dtypes) for name in names]
  print(f"PyTorch parity, {args.steps} steps (torch {torch.__version__}, "
        f"jax {jax.__version__})\n")
  print(format_table(results, dtypes))
  if not args.case:
    print()
    print(seed004.format_toy(seed004.toy_problem()))
  status = exit_status(results)
  if status:
    failed = [r.case.name for r in results if not r.ok]
    print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
  return status


if __name__ == "__main__":
  sys.exit(main())
