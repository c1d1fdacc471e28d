"""PyTorch parity: the reference documents' code against our JAX transforms.

``python -m optax_neuronlr.parity`` prints one table, a row per case: which
reference document and example it restates, what our JAX side is, the largest
parameter differences over ``--steps`` training steps in float64 and float32,
and the verdict (``exact``, ``documented divergence`` with its reason, or
``pending``). The exit status is 1 when a checked case fails its verdict.

This subpackage is the only part of ``optax_neuronlr`` that imports PyTorch
(an optional dependency, in the ``test`` extra); ``import optax_neuronlr`` does
not import it.

Modules:
  torch_reference: PyTorch optimizers restating the documents' update rules.
  seed004: the TensorFlow document's recipes, restated in optax.
  harness: the problem, the two training loops, comparison and verdicts.
  cases: the registry `CASES`, one `Case` per table row.
"""

try:
  import torch as _torch  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
  raise ImportError(
      "optax_neuronlr.parity needs PyTorch, an optional dependency: install "
      "torch (e.g. pip install -e '.[test]')."
  ) from e

from optax_neuronlr.parity.cases import CASES
from optax_neuronlr.parity.harness import Case
from optax_neuronlr.parity.harness import compare
from optax_neuronlr.parity.harness import Diff
from optax_neuronlr.parity.harness import DTYPES
from optax_neuronlr.parity.harness import exit_status
from optax_neuronlr.parity.harness import format_table
from optax_neuronlr.parity.harness import JaxSide
from optax_neuronlr.parity.harness import judge
from optax_neuronlr.parity.harness import Problem
from optax_neuronlr.parity.harness import Result
from optax_neuronlr.parity.harness import run_case
from optax_neuronlr.parity.harness import TOLERANCE
from optax_neuronlr.parity.harness import TorchSide
from optax_neuronlr.parity.harness import trajectory

__all__ = (
    "CASES",
    "Case",
    "DTYPES",
    "Diff",
    "JaxSide",
    "Problem",
    "Result",
    "TOLERANCE",
    "TorchSide",
    "compare",
    "exit_status",
    "format_table",
    "judge",
    "run_case",
    "trajectory",
)
