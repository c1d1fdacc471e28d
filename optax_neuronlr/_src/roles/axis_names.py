"""Roles from a model's logical axis names (Flax's partitioning annotations).

Large models say what their axes are: ``nn.with_logical_partitioning`` /
``nnx.with_partitioning`` name each axis of a parameter, and ``nn.scan`` /
``nnx.vmap`` add the stack axis' name (``metadata_params=
{nn.PARTITION_NAME: "layers"}``, ``transform_metadata={nnx.PARTITION_NAME:
"layers"}``). ``nn.get_partition_spec(variables)["params"]`` and
``nnx.get_partition_spec(nnx.state(model, nnx.Param))`` return them, a
``PartitionSpec`` per leaf; `model_layout` reads that
tree (or one of tuples of names) as ``axis_names=``.

`AXIS_ROLES` maps each name to a role; ``axis_roles={"my_axis":
"stack"}`` adds or replaces names. An axis name neither knows is an error
naming the axis and the leaf: never a guess. A name ``activation_<x>`` takes
the role of ``<x>``.

Roles: ``"stack"`` (layers, pipeline stages: a batch axis, one matrix and
one set of units per index), ``"expert"`` (a batch axis too), ``"vocab"``,
``"embed"`` (the model width), ``"mlp"`` (any other feature axis: MLP width,
low-rank dimensions), ``"heads"``, ``"head_dim"``, ``"joined_heads"``
(``heads * head_dim`` in one axis), ``"norm"`` (a norm scale's axis) and
``"spatial"`` (a convolution window's axes). How the roles of a leaf's axes
(batch axes set aside) make its kind; the first row that matches wins:

| axis roles | kind | fan-in; output |
| --- | --- | --- |
| ``(norm,)``, or one axis of a leaf named ``scale`` [2] | ``norm_scale`` | - |
| any other single axis; ``(heads, head_dim)`` | ``bias`` | - |
| ``(vocab, embed)`` | ``embedding`` | - |
| ``(..., vocab)`` | ``head`` | ``(...; vocab)`` |
| ``(..., heads, head_dim)`` | ``query`` / ``key`` / ``value`` [1] | ``(...; heads, head_dim)`` |
| ``(..., joined_heads)`` | ``query`` / ``key`` / ``value`` [1], fused heads | ``(...; joined_heads)`` |
| ``(..., heads or head_dim or joined_heads..., embed)`` | ``attention_out`` | ``(...; embed)`` |
| ``(spatial..., ..., x)`` | ``conv`` | ``(...; x)`` |
| ``(a, b)`` of ``embed``/``mlp`` | ``mlp`` | ``(a; b)`` |
| anything else | ``other`` | - |

[1] Which of the three is read from the module's name (``query``, ``k_proj``,
``wv``, ...); failing that, a ``kv_heads`` axis makes a key and any other a
query (units per head for both).
[2] Axis names cannot tell a bias from a scale: a leaf named ``bias`` is a
bias whatever its axis' name.

A leaf whose names are all None (an unannotated ``LayerNorm``) or partly
None is read from its path and shape instead, and the table says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import jax

from optax_neuronlr._src import paths as paths_lib
from optax_neuronlr._src.roles import kinds as k
from optax_neuronlr._src.roles import names as names_lib
from optax_neuronlr._src.roles.core import Core
from optax_neuronlr._src.roles.views import MatrixView
from optax_neuronlr._src.units import Blocks
from optax_neuronlr._src.units import Neurons

VOCAB, EMBED, MLP_AXIS = "vocab", "embed", "mlp"
HEADS, HEAD_DIM, JOINED_HEADS = "heads", "head_dim", "joined_heads"
NORM, SPATIAL = "norm", "spatial"
ROLES: tuple[str, ...] = (k.STACK, k.EXPERT, VOCAB, EMBED, MLP_AXIS, HEADS, HEAD_DIM,
                          JOINED_HEADS, NORM, SPATIAL)
BATCH_ROLES = frozenset({k.STACK, k.EXPERT})

# The names of Flax's examples (lm1b, wmt), MaxText and NNX's transforms.
AXIS_ROLES: dict[str, str] = {
    # batch axes
    "layers": k.STACK, "layer": k.STACK, "stage": k.STACK, "stages": k.STACK,
    "scan": k.STACK, "layers_per_stage": k.STACK, "circular_repeats": k.STACK,
    "exp": k.EXPERT, "expert": k.EXPERT, "experts": k.EXPERT,
    # features
    "vocab": VOCAB,
    "embed": EMBED, "embed_no_exp": EMBED, "embed_tensor_transpose": EMBED, "hidden": EMBED,
    "model": EMBED,
    "mlp": MLP_AXIS, "mlp_no_fsdp": MLP_AXIS, "q_lora": MLP_AXIS, "kv_lora": MLP_AXIS,
    "heads": HEADS, "q_heads": HEADS, "kv_heads": HEADS,
    "kv": HEAD_DIM, "head_dim": HEAD_DIM, "kv_head_dim": HEAD_DIM, "qk_head_dim": HEAD_DIM,
    "v_head_dim": HEAD_DIM,
    "joined_kv": JOINED_HEADS,
    "norm": NORM,
    "conv_window": SPATIAL, "kernel_size": SPATIAL,
}
"""Logical axis names and their roles: the names of Flax's examples (lm1b, wmt),
MaxText and NNX's transforms (``layers``, ``stage``, ``exp``, ``vocab``,
``embed``, ``mlp``, ``heads``, ``q_heads``, ``kv_heads``, ``kv``,
``joined_kv``, ``norm``, ...). ``activation_<x>`` takes the role of ``<x>``.
Extend it per call with ``model_layout(..., axis_roles={"my_axis": "stack"})``."""


def check_axis_roles(axis_roles: Any) -> dict[str, str]:
  """The vocabulary with the user's ``axis_roles`` added."""
  if axis_roles is None:
    return dict(AXIS_ROLES)
  if not isinstance(axis_roles, Mapping):
    raise TypeError("axis_roles must be a mapping {axis name: role}, got "
                    f"{type(axis_roles).__name__}.")
  for name, role in axis_roles.items():
    if not isinstance(name, str) or role not in ROLES:
      raise ValueError(f"axis_roles maps axis names (str) to one of {ROLES}; got "
                       f"{name!r}: {role!r}.")
  return {**AXIS_ROLES, **axis_roles}


def _is_names(x: Any) -> bool:
  return x is None or isinstance(x, jax.sharding.PartitionSpec) or (
      type(x) is tuple and all(a is None or isinstance(a, (str, tuple)) for a in x))


def _entry(x: Any) -> Any:
  """An entry of the names tree; a Variable object left whole gives its value."""
  if not _is_names(x) and hasattr(x, "get_value"):
    x = x.get_value()
  return x


def names_by_path(axis_names: Any) -> dict[str, Any]:
  """``{path: per-axis names}`` of an ``axis_names`` tree."""
  flat = jax.tree_util.tree_flatten_with_path(axis_names, is_leaf=_is_names)[0]
  out = {}
  for path, x in flat:
    x = _entry(x)
    if not _is_names(x):
      raise TypeError(
          f"axis_names: the entry at '{paths_lib.path_str(path)}' is {type(x).__name__} "
          f"{x!r}; expected a PartitionSpec or a tuple of axis names (str or None), as "
          "nn.get_partition_spec / nnx.get_partition_spec return.")
    out[paths_lib.path_str(path)] = x
  return out


def check_axis_names(axis_names: Any, what: str = "axis_names") -> None:
  """Construction-time check: None, or a tree of PartitionSpecs / tuples of names."""
  if axis_names is None:
    return
  if isinstance(axis_names, str):
    raise TypeError(f"{what} must be None or a tree like the params of PartitionSpecs or "
                    f"tuples of axis names, got {type(axis_names).__name__} {axis_names!r}.")
  try:
    names_by_path(axis_names)
  except TypeError as e:
    raise TypeError(f"{what}: {e}") from None


def leaf_names(table: dict[str, Any], where: str, ndim: int) -> Optional[tuple]:
  """The names of the leaf at ``where`` (None: not in the tree), padded with
  None to ``ndim`` (a shorter PartitionSpec leaves the rest unnamed)."""
  for key in (where, where[len("params/"):] if where.startswith("params/") else None,
              "params/" + where):
    if key is not None and key in table:
      names = table[key]
      break
  else:
    return None
  names = tuple(() if names is None else names)
  if len(names) > ndim:
    raise ValueError(f"axis_names for leaf '{where}' name {len(names)} axes {names}, but "
                     f"the leaf has {ndim} dimensions.")
  return names + (None,) * (ndim - len(names))


def roles_of(names: tuple, where: str, vocabulary: Mapping[str, str]) -> tuple:
  """Each axis' role (None for an unnamed axis); an unknown name is an error."""
  out = []
  for axis, name in enumerate(names):
    if name is None:
      out.append(None)
      continue
    if isinstance(name, tuple):
      raise ValueError(
          f"axis_names for leaf '{where}': axis {axis} is named {name!r}, several names "
          "(mesh axes?); give one logical name per axis.")
    role = vocabulary.get(name)
    if role is None and name.startswith("activation_"):
      role = vocabulary.get(name[len("activation_"):])
    if role is None:
      raise ValueError(
          f"axis_names: unknown axis name {name!r} (axis {axis} of leaf '{where}'). Known "
          f"names: {sorted(vocabulary)}. Say its role with axis_roles={{{name!r}: role}}, "
          f"a role of {ROLES}.")
    out.append(role)
  return tuple(out)


def _attention_kind(keys: Sequence[str], roles: tuple, names: tuple) -> str:
  module = keys[-2].lower() if len(keys) >= 2 else ""
  for kind, known in ((k.QUERY, names_lib.QUERY_NAMES), (k.KEY, names_lib.KEY_NAMES),
                      (k.VALUE, names_lib.VALUE_NAMES)):
    if module in known:
      return kind
  return k.KEY if "kv_heads" in names else k.QUERY


def classify(keys: Sequence[str], shape: tuple[int, ...], names: tuple, roles: tuple,
             num_heads: Optional[int], num_kv_heads: Optional[int]) -> tuple[
                 Core, tuple[int, ...], tuple[str, ...]]:
  """``(core role, batch axes, batch roles)`` of a leaf whose every axis is named."""
  batch = tuple(a for a, r in enumerate(roles) if r in BATCH_ROLES)
  core_roles = tuple(r for r in roles if r not in BATCH_ROLES)
  core_names = tuple(n for n, r in zip(names, roles) if r not in BATCH_ROLES)
  core = _core(keys, tuple(s for a, s in enumerate(shape) if a not in batch), core_roles,
               core_names, num_heads, num_kv_heads)
  return core, batch, tuple(roles[a] for a in batch)


def _core(keys, shape, roles, names, num_heads, num_kv_heads) -> Core:
  n = len(roles)
  src = k.AXIS_NAMES
  if n == 0:
    return Core(k.OTHER, (), source=src, decays=False, reason="a 0-d leaf")
  last = (n - 1,)
  if n == 1:
    # Axis names cannot tell a bias from a scale: the leaf's name does.
    leaf = keys[-1].lower() if keys else ""
    scale = leaf != "bias" and (roles == (NORM,) or leaf == "scale")
    return Core(k.NORM_SCALE if scale else k.BIAS, last, source=src)
  if roles == (HEADS, HEAD_DIM):
    return Core(k.BIAS, (0, 1), source=src)
  if roles == (VOCAB, EMBED):
    return Core(k.EMBEDDING, (1,), source=src)
  fan_in = tuple(range(n - 1))
  if roles[-1] == VOCAB:
    return Core(k.HEAD, last, matrix=MatrixView(fan_in, last), source=src)
  if roles[-2:] == (HEADS, HEAD_DIM):
    kind = _attention_kind(keys, roles, names)
    return Core(kind, (n - 2, n - 1), Neurons(n - 2), MatrixView(tuple(range(n - 2)),
                                                                  (n - 2, n - 1)),
                hidden=True, source=src)
  if roles[-1] == JOINED_HEADS:
    kind = _attention_kind(keys, roles, names)
    heads_n = num_heads if kind == k.QUERY or num_kv_heads is None else num_kv_heads
    heads = None if heads_n is None else Blocks(n - 1, heads_n)
    return Core(kind, last, heads, MatrixView(fan_in, last), hidden=True, source=src)
  if roles[-1] == EMBED and set(roles[:-1]) & {HEADS, HEAD_DIM, JOINED_HEADS}:
    heads = Neurons(roles.index(HEADS)) if HEADS in roles else (
        None if num_heads is None or roles[:-1] != (JOINED_HEADS,) else Blocks(0, num_heads))
    return Core(k.ATTENTION_OUT, last, heads, MatrixView(fan_in, last), hidden=True,
                source=src)
  if SPATIAL in roles[:-1]:
    return Core(k.CONV, last, matrix=MatrixView(fan_in, last), hidden=True, source=src)
  if n == 2 and set(roles) <= {EMBED, MLP_AXIS}:
    return Core(k.MLP, last, matrix=MatrixView((0,), (1,)), hidden=True, source=src)
  return Core(k.OTHER, last, source=src, decays=True,
              reason=f"no rule for the axis names {names}")
