"""Optimizer-state bytes and step time of Adam-mini, SCALE, Muon and NorMuon against optax.

What it measures
----------------
A Flax NNX causal transformer built from the standard modules (``nnx.Embed``,
``--layers`` blocks of ``nnx.LayerNorm`` + ``nnx.MultiHeadAttention`` +
``nnx.LayerNorm`` + an MLP of two ``nnx.Linear``, a final ``nnx.LayerNorm`` and
an ``nnx.Linear`` output head), as the pure dict of its ``nnx.Param`` state.

**State bytes.** The model and each optimizer's state are built *abstractly*
(``nnx.eval_shape``, ``jax.eval_shape(tx.init, params)``: no arrays are
allocated); a state's bytes are the sum of ``size * itemsize`` over its array
leaves, so GPT-2-size trees cost nothing to measure. Rows:

* ``optax.adamw`` (the baseline: ``mu`` and ``nu``, both full size);
* ``optax.sgd(momentum=0.9)`` (one full-size buffer, for scale);
* ``adam_mini (expected)``: a full first moment, one second moment per unit
  of ``adam_mini_blocks`` and a counter, computed from the partition;
* ``nlr.adam_mini`` (measured; it must equal the expected row up to a few
  scalars) and ``nlr.adam_mini(mu_dtype="bfloat16")`` (its first moment in
  bfloat16);
* ``nlr.scale_sgd`` (SCALE), the whole state, and its ``"hidden"`` group
  (every matrix but the output head) against ``optax.adamw``'s state on the
  same leaves;
* ``optax.contrib.muon`` given the same partition as ``nlr.muon`` (its
  ``muon_weight_dimension_numbers`` from :func:`optax_neuronlr.model_layout`:
  the hidden matrices on their matrix view, AdamW elsewhere), ``nlr.muon``,
  ``nlr.normuon`` and ``nlr.normuon(mu_dtype="bfloat16")``: NorMuon's state is
  Muon's plus one float per output neuron of each hidden matrix.

**Step time** (``--time``). The jitted step ``tx.update`` +
``optax.apply_updates`` on concrete float32 params on CPU (donated params and
state, fixed random gradients), for ``optax.adamw`` and each optimizer, as
``benchmarks/step_time.py`` does: every optimizer is compiled and warmed up,
then each round runs ``A X1 A X2 A`` chunks of ``--steps`` steps (``A`` =
adamw), in an order rotated per round, and each chunk of ``X`` is divided by
the mean of the adamw chunks around it (slow phases of a noisy 2-core machine
cancel). ``x adamw`` is the median of those ratios, ``min-max`` their range;
``ms/step`` the median and best chunk.

**Per device.** Each measured row also gives the state bytes on one device
of an abstract 8-device mesh (``jax.sharding.AbstractMesh``; no devices
needed): FSDP, each parameter's first axis divisible by 8 sharded, the state
sharded by ``nlr.state_shardings``.

Targets: Adam-mini's state at most 0.55x ``optax.adamw``'s (0.3x with a
bfloat16 first moment); SCALE's hidden
matrices at most 0.05x; step time at most 1.0x adamw's on CPU; ``nlr.muon``
and ``nlr.normuon`` no slower than ``optax.contrib.muon`` on the same tree
(``x optax muon``: the ratio of the medians of their ratios to adamw). The
lines under the tables say which are met.

How to run
----------
::

    python benchmarks/adam_mini_memory.py                    # small model, bytes only
    python benchmarks/adam_mini_memory.py --time             # + CPU step time (~1 min)
    python benchmarks/adam_mini_memory.py --time --device gpu    # on a GPU (CUDA jaxlib)
    python benchmarks/adam_mini_memory.py --preset gpt2-small
    python benchmarks/adam_mini_memory.py --d-model 512 --layers 8 --heads 8 --markdown
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
import warnings
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_neuronlr as nlr

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
  per_device: Optional[int] = None  # bytes per device on the FSDP mesh


MESH_DEVICES = 8


def fsdp_shardings(params: Any, mesh: Any) -> Any:
  """FSDP on ``mesh``'s one axis: each leaf's first axis divisible by the
  device count is sharded, else the leaf is replicated."""
  n = mesh.size

  def spec(x):
    axes = [None] * len(x.shape)
    for i, d in enumerate(x.shape):
      if d % n == 0:
        axes[i] = mesh.axis_names[0]
        break
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*axes))

  return jax.tree.map(spec, params)


def per_device_bytes(tx: optax.GradientTransformation, params: Any) -> int:
  """State bytes on one device of an abstract ``MESH_DEVICES``-device FSDP mesh,
  with the state sharded by :func:`optax_neuronlr.state_shardings` (the
  largest shard of each leaf)."""
  mesh = jax.sharding.AbstractMesh((MESH_DEVICES,), ("fsdp",))
  p_sh = fsdp_shardings(params, mesh)
  shapes = jax.eval_shape(tx.init, params)
  with warnings.catch_warnings():
    # optax.tree_utils.tree_map_params runs init on the tree of shardings, in
    # which scale_sgd's layout finds no head; the bytes do not depend on it.
    warnings.simplefilter("ignore", UserWarning)
    shardings = nlr.state_shardings(tx, params, p_sh)
  total = 0
  for x, sh in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)):
    if hasattr(x, "dtype"):
      total += int(np.prod(sh.shard_shape(x.shape))) * jnp.dtype(x.dtype).itemsize
  return total


def measured(name: str, tx: optax.GradientTransformation, params: Any) -> Row:
  return Row(name, nbytes(jax.eval_shape(tx.init, params)),
             per_device=per_device_bytes(tx, params))


def adam_mini_expected(params: Any) -> Row:
  """A full first moment + one second moment per unit + an int32 counter."""
  partition = nlr.adam_mini_partition(params, on_unrecognised="error")
  leaves = jax.tree.leaves(params)
  first = nbytes(params)
  itemsize = jnp.dtype(leaves[0].dtype).itemsize
  second = partition.num_units() * itemsize
  return Row("adam_mini (expected)", first + second + 4,
             f"{partition.num_units():,} second moments")


def hidden_rows(params: Any) -> list[Row]:
  """SCALE's "hidden" group against optax.adamw on the same leaves."""
  labels = nlr.scale_sgd_labels(params)
  hidden = jax.tree.map(lambda x, l: x if l == "hidden" else None, params, labels)
  state = jax.eval_shape(nlr.scale_sgd(1e-3).init, params)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(hidden))
  return [
      Row(f"{BASELINE}, hidden matrices only", nbytes(jax.eval_shape(
          optax.adamw(1e-3, weight_decay=0.1).init, hidden)), f"{n:,} params"),
      Row("nlr.scale_sgd, hidden matrices only", nbytes(state.inner_states["hidden"]),
          "one RMS per output neuron"),
  ]


OPTAX_MUON = "optax.contrib.muon"
MUON_ROWS = ("nlr.muon", "nlr.normuon", "nlr.normuon(mu_dtype=bf16)")


def muon_dimension_numbers(params: Any) -> Any:
  """``optax.contrib.muon``'s dimension numbers for ``nlr.muon``'s partition:
  the hidden matrices of :func:`optax_neuronlr.model_layout` on their matrix
  view, None (AdamW) elsewhere."""
  layout = nlr.model_layout(params)
  dims = [optax.contrib.MuonDimensionNumbers(l.matrix.reduction_axes, l.matrix.output_axes)
          if l.hidden and l.matrix.blocks is None else None for l in layout.leaves]
  return layout.treedef.unflatten(dims)


def optimizers() -> dict[str, optax.GradientTransformation]:
  """The optimizers compared, by row name (the baseline first)."""
  return {
      BASELINE: optax.adamw(1e-3, weight_decay=0.1),
      "optax.sgd(momentum=0.9)": optax.sgd(1e-3, momentum=0.9),
      "nlr.adam_mini": nlr.adam_mini(1e-3, weight_decay=0.1),
      "nlr.adam_mini(mu_dtype=bf16)": nlr.adam_mini(1e-3, weight_decay=0.1,
                                                    mu_dtype="bfloat16"),
      "nlr.scale_sgd": nlr.scale_sgd(1e-3, weight_decay=0.1),
      OPTAX_MUON: optax.contrib.muon(
          2e-2, weight_decay=0.1, adam_learning_rate=1e-3, adam_weight_decay=0.1,
          muon_weight_dimension_numbers=muon_dimension_numbers),
      "nlr.muon": nlr.muon(2e-2, weight_decay=0.1, adam_learning_rate=1e-3,
                           adam_weight_decay=0.1),
      "nlr.normuon": nlr.normuon(2e-2, weight_decay=0.1, adam_learning_rate=1e-3,
                                 adam_weight_decay=0.1),
      "nlr.normuon(mu_dtype=bf16)": nlr.normuon(
          2e-2, weight_decay=0.1, adam_learning_rate=1e-3, adam_weight_decay=0.1,
          mu_dtype="bfloat16"),
  }


def rows(params: Any) -> list[Row]:
  txs = optimizers()
  out = [measured(BASELINE, txs[BASELINE], params),
         measured("optax.sgd(momentum=0.9)", txs["optax.sgd(momentum=0.9)"], params),
         adam_mini_expected(params)]
  out += [measured(name, txs[name], params)
          for name in ("nlr.adam_mini", "nlr.adam_mini(mu_dtype=bf16)", "nlr.scale_sgd")]
  out += [measured(name, txs[name], params) for name in (OPTAX_MUON,) + MUON_ROWS]
  out.append(normuon_expected(params))
  return out


def normuon_expected(params: Any) -> Row:
  """Muon's state (``nlr.muon``, measured) plus one float per output neuron of
  each hidden matrix."""
  muon = nbytes(jax.eval_shape(optimizers()["nlr.muon"].init, params))
  neurons = sum(l.num_neurons for l in nlr.model_layout(params).leaves if l.hidden)
  itemsize = jnp.dtype(jax.tree.leaves(params)[0].dtype).itemsize
  return Row("normuon (expected: muon + 1 per neuron)", muon + neurons * itemsize,
             f"{neurons:,} output neurons")


def memory_targets(all_rows: list[Row], hidden: list[Row]) -> list[str]:
  by_name = {r.name: r.state_bytes for r in all_rows + hidden}
  mini = by_name["nlr.adam_mini"] / by_name[BASELINE]
  scale = (by_name["nlr.scale_sgd, hidden matrices only"]
           / by_name[f"{BASELINE}, hidden matrices only"])
  normuon = by_name["nlr.normuon"] / by_name["normuon (expected: muon + 1 per neuron)"]
  mini_bf16 = by_name["nlr.adam_mini(mu_dtype=bf16)"] / by_name[BASELINE]
  return [_verdict("nlr.adam_mini state", mini, 0.55),
          _verdict("nlr.adam_mini(mu_dtype=bf16) state", mini_bf16, 0.3),
          _verdict("nlr.scale_sgd state on the hidden matrices", scale, 0.05),
          f"  {'met   ' if normuon <= 1.0 + 1e-3 else 'MISSED'} nlr.normuon state: "
          f"{normuon:.4f}x Muon's + one float per output neuron (target <= 1)"]


def _verdict(what: str, ratio: float, limit: float) -> str:
  return (f"  {'met   ' if ratio <= limit else 'MISSED'} {what}: {_ratio(ratio)}x "
          f"{BASELINE} (target <= {limit}x)")


def format_table(rows: list[Row], markdown: bool, base_name: str = BASELINE) -> str:
  base = next(r.state_bytes for r in rows if r.name == base_name)
  base_dev = next(r.per_device for r in rows if r.name == base_name)
  cells = [("optimizer", "state bytes", "x adamw",
            f"per device ({MESH_DEVICES}-device FSDP)", "x adamw", "note")]
  for r in rows:
    if r.state_bytes is None:
      cells.append((r.name, "pending", "-", "-", "-", r.note))
    else:
      dev = ("-", "-") if r.per_device is None or not base_dev else (
          f"{r.per_device:,}", _ratio(r.per_device / base_dev))
      cells.append((r.name, f"{r.state_bytes:,}", _ratio(r.state_bytes / base), *dev,
                    r.note))
  return _format(cells, markdown)


def _ratio(x: float) -> str:
  return f"{x:.3f}" if x >= 0.01 else f"{x:.1e}"


def _format(cells: list[tuple[str, ...]], markdown: bool) -> str:
  if markdown:
    lines = ["| " + " | ".join(c) + " |" for c in cells]
    lines.insert(1, "| " + " | ".join("---" for _ in cells[0]) + " |")
    return "\n".join(lines)
  widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
  return "\n".join("  ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip() for c in cells)


# ---------------------------------------------------------------------------
# Step time (CPU), interleaved with the baseline as in step_time.py.


def concrete_params(c: Config) -> Any:
  model = Transformer(c, nnx.Rngs(0))
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def time_steps(c: Config, steps: int, repeats: int, warmup: int,
               device: jax.Device) -> dict[str, tuple[list, list]]:
  """Per optimizer: seconds per step of each chunk, and its ratio to adamw's."""
  import step_time  # benchmarks/step_time.py: Runner, make_runner, round_order

  warnings.filterwarnings("ignore", message=".*donated buffers.*")
  host = concrete_params(c)
  rng = np.random.default_rng(1)
  grads = jax.device_put(jax.tree.map(
      lambda x: (1e-3 * rng.standard_normal(x.shape)).astype(x.dtype), host), device)
  # The second call compiles again (the outputs' types differ from the first
  # inputs', for every optimizer, optax.adamw included): warm up past it.
  runners = {name: step_time.make_runner(tx, host, grads, device, max(warmup, 2))
             for name, tx in optimizers().items()}
  base = runners[BASELINE]
  others = [n for n in runners if n != BASELINE]
  out = {n: ([], []) for n in runners}
  for r in range(repeats):
    before = base.run(steps)
    out[BASELINE][0].append(before)
    for name in step_time.round_order(others, r):
      t = runners[name].run(steps)
      after = base.run(steps)
      out[name][0].append(t)
      out[name][1].append(t / (0.5 * (before + after)))
      out[BASELINE][0].append(after)
      out[BASELINE][1].append(after / before)
      before = after
  return out


def x_optax_muon(timed: dict[str, tuple[list, list]], name: str) -> Optional[float]:
  """``name``'s step time over optax.contrib.muon's: the ratio of the medians of
  their chunk ratios to the adamw chunks around them."""
  if name not in MUON_ROWS or OPTAX_MUON not in timed:
    return None
  return statistics.median(timed[name][1]) / statistics.median(timed[OPTAX_MUON][1])


def time_table(timed: dict[str, tuple[list, list]], markdown: bool) -> str:
  cells = [("optimizer", "ms/step (median)", "ms/step (best)", "x adamw", "x adamw min-max",
            "x optax muon")]
  for name, (times, ratios) in timed.items():
    vs_muon = x_optax_muon(timed, name)
    cells.append((name, f"{1e3 * statistics.median(times):.2f}", f"{1e3 * min(times):.2f}",
                  "1.00" if name == BASELINE else f"{statistics.median(ratios):.2f}",
                  f"{min(ratios):.2f}-{max(ratios):.2f}",
                  "-" if vs_muon is None else f"{vs_muon:.2f}"))
  return _format(cells, markdown)


def time_targets(timed: dict[str, tuple[list, list]]) -> list[str]:
  lines = [_verdict(f"{name} step time", statistics.median(timed[name][1]), 1.0)
           for name in ("nlr.adam_mini", "nlr.scale_sgd")]
  for name in ("nlr.muon", "nlr.normuon"):
    ratio = x_optax_muon(timed, name)
    lines.append(f"  {'met   ' if ratio <= 1.0 else 'MISSED'} {name} step time: "
                 f"{ratio:.2f}x {OPTAX_MUON} (target <= 1.0x)")
  return lines


def main(argv: Optional[list[str]] = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", choices=sorted(PRESETS), default="small")
  for name in ("d-model", "layers", "heads", "vocab", "mlp-ratio"):
    p.add_argument(f"--{name}", type=int, default=None)
  p.add_argument("--dtype", choices=("float32", "bfloat16", "float64"), default="float32")
  p.add_argument("--markdown", action="store_true")
  p.add_argument("--time", action="store_true", help="also time the step")
  p.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="for --time")
  p.add_argument("--steps", type=int, default=10, help="steps per timed chunk")
  p.add_argument("--repeats", type=int, default=9, help="timing rounds")
  p.add_argument("--warmup", type=int, default=3)
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
    print(f"Transformer {c} : {n:,} parameters, {nbytes(params):,} bytes; "
          f"jax {jax.__version__}, optax {optax.__version__}\n")
    all_rows, hidden = rows(params), hidden_rows(params)
    print(format_table(all_rows, args.markdown))
    print()
    print(format_table(hidden, args.markdown, f"{BASELINE}, hidden matrices only"))
    print("\nTargets:")
    print("\n".join(memory_targets(all_rows, hidden)))
  if args.time:
    if args.dtype != "float32":
      p.error("--time runs in float32 only")
    import step_time  # pylint: disable=g-import-not-at-top
    device = step_time.pick_device(args.device)
    start = time.perf_counter()
    with jax.default_device(device):
      timed = time_steps(c, args.steps, args.repeats, args.warmup, device)
    print(f"\nStep time on {device.platform} ({device.device_kind}; {os.cpu_count()} CPUs), "
          f"{args.repeats} rounds x {args.steps} steps per chunk, "
          f"{time.perf_counter() - start:.0f} s:\n")
    print(time_table(timed, args.markdown))
    print("\nTargets:")
    print("\n".join(time_targets(timed)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
