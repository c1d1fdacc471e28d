"""Optimizer-state bytes of Adam-mini and per-neuron SGD against ``optax.adamw``.

What it measures
----------------
A Flax NNX causal transformer built from the standard modules (``nnx.Embed``,
``--layers`` blocks of ``nnx.LayerNorm`` + ``nnx.MultiHeadAttention`` +
``nnx.LayerNorm`` + an MLP of two ``nnx.Linear``, a final ``nnx.LayerNorm`` and
an ``nnx.Linear`` output head) is built *abstractly* (``nnx.eval_shape``: no
arrays are allocated), and each optimizer's state is built abstractly too
(``jax.eval_shape(tx.init, params)``). The state's bytes are the sum of
``size * itemsize`` over its array leaves, so GPT-2-size trees cost nothing
to measure. Each row gives the bytes and the ratio to ``optax.adamw``.

Rows:

* ``optax.adamw`` (the baseline: ``mu`` and ``nu``, both full size);
* ``optax.sgd(momentum=0.9)`` (one full-size buffer, for scale);
* ``adam_mini (expected)``: what Adam-mini must keep, computed from
  ``adam_mini_blocks`` (a full first moment, plus one second moment per unit of
  the partition, plus a step counter): the figure the measured row must meet;
* ``nlr.adam_mini`` and the per-neuron normalised SGD: measured once they
  exist (issue 12; the engine lands first). Until then they show ``pending``.

Issue 12's targets: Adam-mini at most 0.55x ``optax.adamw``; per-neuron SGD at
most 0.05x for its hidden matrices.

How to run
----------
::

    python benchmarks/adam_mini_memory.py                    # small default model
    python benchmarks/adam_mini_memory.py --preset gpt2-small
    python benchmarks/adam_mini_memory.py --d-model 512 --layers 8 --heads 8 --markdown
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from optax_neuronlr._src.rules.adam_mini import adam_mini_partition

BASELINE = "optax.adamw"
PRESETS = {
    "small": dict(d_model=256, layers=4, heads=4, vocab=8192, mlp_ratio=4),
    "gpt2-small": dict(d_model=768, layers=12, heads=12, vocab=50257, mlp_ratio=4),
}


# ---------------------------------------------------------------------------
# The model.


@dataclasses.dataclass(frozen=True)
class Config:
  d_model: int = 256
  layers: int = 4
  heads: int = 4
  vocab: int = 8192
  mlp_ratio: int = 4
  dtype: str = "float32"


class Block(nnx.Module):

  def __init__(self, c: Config, rngs: nnx.Rngs):
    d, dtype = c.d_model, jnp.dtype(c.dtype)
    self.ln_1 = nnx.LayerNorm(d, param_dtype=dtype, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads=c.heads, in_features=d, decode=False,
                                       param_dtype=dtype, keep_rngs=False, rngs=rngs)
    self.ln_2 = nnx.LayerNorm(d, param_dtype=dtype, rngs=rngs)
    self.fc_in = nnx.Linear(d, c.mlp_ratio * d, param_dtype=dtype, rngs=rngs)
    self.fc_out = nnx.Linear(c.mlp_ratio * d, d, param_dtype=dtype, rngs=rngs)


class Transformer(nnx.Module):

  def __init__(self, c: Config, rngs: nnx.Rngs):
    dtype = jnp.dtype(c.dtype)
    self.embed = nnx.Embed(c.vocab, c.d_model, param_dtype=dtype, rngs=rngs)
    self.blocks = nnx.List([Block(c, rngs) for _ in range(c.layers)])
    self.ln_f = nnx.LayerNorm(c.d_model, param_dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(c.d_model, c.vocab, param_dtype=dtype, rngs=rngs)


def abstract_params(c: Config) -> Any:
  """The ``nnx.Param`` state as a pure dict of ``jax.ShapeDtypeStruct``."""
  model = nnx.eval_shape(lambda: Transformer(c, nnx.Rngs(0)))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def nbytes(tree: Any) -> int:
  """Bytes of the array leaves of ``tree`` (concrete or ``ShapeDtypeStruct``)."""
  return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


# ---------------------------------------------------------------------------
# Rows.


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  state_bytes: Optional[int]  # None: pending
  note: str = ""


def measured(name: str, tx: optax.GradientTransformation, params: Any) -> Row:
  return Row(name, nbytes(jax.eval_shape(tx.init, params)))


def adam_mini_expected(params: Any) -> Row:
  """A full first moment + one second moment per unit + an int32 counter."""
  partition = adam_mini_partition(params, on_unrecognised="error")
  leaves = jax.tree.leaves(params)
  first = nbytes(params)
  itemsize = jnp.dtype(leaves[0].dtype).itemsize
  second = partition.num_units() * itemsize
  return Row("adam_mini (expected)", first + second + 4,
             f"{partition.num_units():,} second moments")


def pending(name: str, why: str) -> Row:
  return Row(name, None, why)


# TODO(issue 12): replace the pending rows with measured(...) of
#   nlr.adam_mini(1e-3, weight_decay=0.1) and the per-neuron SGD preset.
def rows(params: Any) -> list[Row]:
  return [
      measured(BASELINE, optax.adamw(1e-3, weight_decay=0.1), params),
      measured("optax.sgd(momentum=0.9)", optax.sgd(1e-3, momentum=0.9), params),
      adam_mini_expected(params),
      pending("nlr.adam_mini", "lands with the rule engine"),
      pending("per-neuron SGD", "issue 12 part 3"),
  ]


def format_table(rows: list[Row], markdown: bool) -> str:
  base = next(r.state_bytes for r in rows if r.name == BASELINE)
  cells = [("optimizer", "state bytes", "x adamw", "note")]
  for r in rows:
    if r.state_bytes is None:
      cells.append((r.name, "pending", "-", r.note))
    else:
      cells.append((r.name, f"{r.state_bytes:,}", f"{r.state_bytes / base:.3f}", r.note))
  if markdown:
    lines = ["| " + " | ".join(c) + " |" for c in cells]
    lines.insert(1, "| " + " | ".join("---" for _ in cells[0]) + " |")
    return "\n".join(lines)
  widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
  return "\n".join("  ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip() for c in cells)


def main(argv: Optional[list[str]] = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", choices=sorted(PRESETS), default="small")
  for name in ("d-model", "layers", "heads", "vocab", "mlp-ratio"):
    p.add_argument(f"--{name}", type=int, default=None)
  p.add_argument("--dtype", choices=("float32", "bfloat16", "float64"), default="float32")
  p.add_argument("--markdown", action="store_true")
  args = p.parse_args(argv)
  values = dict(PRESETS[args.preset])
  for key in values:
    given = getattr(args, key)
    if given is not None:
      values[key] = given
  c = Config(**values, dtype=args.dtype)
  with jax.enable_x64(args.dtype == "float64"):
    params = abstract_params(c)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    print(f"Transformer {c} : {n:,} parameters, {nbytes(params):,} bytes\n")
    print(format_table(rows(params), args.markdown))
  return 0


if __name__ == "__main__":
  sys.exit(main())
