"""``model_layout``: every leaf's role, from the strongest evidence at hand.

Order of evidence: what the caller gives (``head=``), the model's logical axis
names (``axis_names=``, `.axis_names`), then paths (`.names`) and
shapes (`.shapes`). See the table of
`optax_neuronlr._src.model_layout`.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np

from optax_neuronlr._src import paths as paths_lib
from optax_neuronlr._src import user_warnings
from optax_neuronlr._src import validation
from optax_neuronlr._src.roles import axis_names as axis_names_lib
from optax_neuronlr._src.roles import kinds as k
from optax_neuronlr._src.roles import names as names_lib
from optax_neuronlr._src.roles import shapes as shapes_lib
from optax_neuronlr._src.roles.core import Core
from optax_neuronlr._src.roles.core import lift
from optax_neuronlr._src.roles.views import MatrixView


def _shape(x: Any) -> tuple[int, ...]:
  return tuple(int(s) for s in (x.shape if hasattr(x, "shape") else np.shape(x)))


def _check_heads(value: Optional[int], what: str) -> None:
  if value is None:
    return
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{what} must be an int >= 1 or None, got {value!r}.")


def check_arguments(num_heads: Any, num_kv_heads: Any, head: Any) -> None:
  _check_heads(num_heads, "num_heads")
  _check_heads(num_kv_heads, "num_kv_heads")
  if num_kv_heads is not None and num_heads is not None and num_heads % num_kv_heads:
    raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads "
                     f"({num_kv_heads}).")
  if not (head is None or head is False or isinstance(head, str)
          or hasattr(head, "fullmatch")):
    raise TypeError(f"head must be None, False or a path selector (a regular expression), "
                    f"got {type(head).__name__} {head!r}.")


def _as_head(core: Core, source: str) -> Core:
  """A kernel the caller named the head (``head=``)."""
  n = len(core.matrix.reduction_axes) + len(core.matrix.output_axes) if core.matrix else 0
  if core.matrix is None or n < 2:
    return Core(k.HEAD, core.neuron_axes, reason=core.reason, source=source, decays=True)
  return Core(k.HEAD, core.neuron_axes, matrix=core.matrix, source=source)


def _not_head(core: Core) -> Core:
  """``head=False`` on a leaf whose axis names make it the head: a hidden matrix."""
  if core.kind != k.HEAD or core.matrix is None:
    return core
  return Core(k.MLP, core.neuron_axes, matrix=core.matrix, hidden=True, source=k.GIVEN)


def model_layout(
    params: Any,
    *,
    num_heads: Optional[int] = None,
    num_kv_heads: Optional[int] = None,
    head: Any = None,
    axis_names: Any = None,
    axis_roles: Any = None,
) -> k.ModelLayout:
  """Classifies every leaf of ``params``: kind, output neurons, matrices, hidden.

  See the table of `optax_neuronlr._src.model_layout`. Reads dicts of
  arrays, Flax linen params (``{"params": ...}`` included), Flax NNX
  ``nnx.State`` (of variables, paths ending in ``.value``, or of arrays),
  lists and bare arrays; only paths and shapes are read, so
  ``jax.ShapeDtypeStruct`` leaves work.

  Args:
    params: the parameter tree.
    num_heads: attention heads, for the per-head units of fused
      ``(d, heads*head_dim)`` kernels (``(d, heads, head_dim)`` kernels show
      their heads).
    num_kv_heads: key/value heads under grouped-query attention (default
      ``num_heads``).
    head: which kernel is the output head: None (by name or shape, see the
      module docstring), a path selector (a regular expression matching a path
      or a ``/``-prefix of it), or False (none).
    axis_names: the model's logical axis names, a tree like ``params`` (the
      ``params`` of a linen ``{"params": ...}`` tree may be left out) of
      ``PartitionSpec``s or tuples of names: what
      ``nn.get_partition_spec(variables)["params"]`` or
      ``nnx.get_partition_spec(nnx.state(model, nnx.Param))`` return. A leaf
      with every axis named is read from its names alone
      (`optax_neuronlr._src.roles.axis_names`); others from their paths
      and shapes.
    axis_roles: more axis names, ``{name: role}`` (roles:
      ``optax_neuronlr._src.roles.axis_names.ROLES``, e.g. ``"stack"``),
      added to `AXIS_ROLES`.

  Returns:
    A `ModelLayout`; ``print(layout.table())`` shows it, with the
    evidence that decided each leaf (``source``).

  Raises:
    ValueError: for an axis name the vocabulary does not know (naming the
      axis and the leaf), axis names that do not fit a leaf, or an invalid
      argument.

  Example:
    >>> import jax.numpy as jnp, optax_neuronlr as nlr
    >>> params = {"embed": {"embedding": jnp.zeros((10, 4))},
    ...           "fc": {"kernel": jnp.zeros((4, 8)), "bias": jnp.zeros(8)},
    ...           "head": {"kernel": jnp.zeros((8, 10))}}
    >>> [(l.path, l.kind, l.hidden) for l in nlr.model_layout(params).leaves]
    [('embed/embedding', 'embedding', False), ('fc/bias', 'bias', False), ('fc/kernel', 'mlp', True), ('head/kernel', 'head', False)]
  """
  validation.check_params_tree("model_layout (and the functions of the params built "
                               "on it)", params)
  check_arguments(num_heads, num_kv_heads, head)
  vocabulary = axis_names_lib.check_axis_roles(axis_roles)
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  entries = []
  for path, leaf in flat:
    where = paths_lib.path_str(path)
    entries.append((where.split("/") if where else [], _shape(leaf)))
  table = None if axis_names is None else axis_names_lib.names_by_path(axis_names)

  named: dict[int, tuple] = {}
  partial: dict[int, tuple] = {}
  for i, (keys, shape) in enumerate(entries):
    if table is None:
      continue
    where = "/".join(keys)
    names = axis_names_lib.leaf_names(table, where, len(shape))
    if names is None:
      continue
    roles = axis_names_lib.roles_of(names, where, vocabulary)
    if names and all(n is not None for n in names):
      named[i] = (names, roles)
    elif any(n is not None for n in names):
      partial[i] = names

  stacks = shapes_lib.stack_axes(entries)
  context = names_lib.Context(entries)
  batches = {}
  cores = []
  for i, (keys, shape) in enumerate(entries):
    if i in named:
      batches[i] = None
      cores.append((keys, shape))
      continue
    batch, roles, note = shapes_lib.batch_of(keys, shape, stacks[i])
    batches[i] = (batch, roles, note)
    cores.append((keys, tuple(s for a, s in enumerate(shape) if a not in batch)))
  # A head named by its axes (..., vocab) is the head: no other is searched for.
  named_head = head is None and any(
      roles[-1] == axis_names_lib.VOCAB and sum(
          r not in axis_names_lib.BATCH_ROLES for r in roles) >= 2
      for _, roles in named.values())
  given = head is not None and head is not False
  head_paths, head_source, head_notes = shapes_lib.find_head(
      cores if given else [c for i, c in enumerate(cores) if i not in named],
      False if named_head else head, context)

  leaves = []
  for i, (keys, shape) in enumerate(entries):
    where = "/".join(keys)
    is_head = where in head_paths
    if i in named:
      names, roles = named[i]
      core, batch, batch_roles = axis_names_lib.classify(keys, shape, names, roles,
                                                         num_heads, num_kv_heads)
      if is_head and head_source == k.GIVEN:
        core = _as_head(core, k.GIVEN)
      elif head is False:
        core = _not_head(core)
      leaves.append(lift(where, shape, core, batch, batch_roles))
      continue
    batch, batch_roles, note = batches[i]
    core_shape = cores[i][1]
    core = names_lib.classify(keys, core_shape, context, is_head, num_heads, num_kv_heads,
                              expert=k.EXPERT in batch_roles)
    source = core.source
    if is_head:
      source = head_source
    notes = [n for n in (head_notes.get(where), note) if n]
    if batch and note:
      source = k.SHAPE
    if i in partial:
      notes.append(f"axis_names {partial[i]} leave axes unnamed: read by path and shape")
    leaves.append(lift(where, shape, core, batch, batch_roles, source, "; ".join(notes)))
  return k.ModelLayout(treedef, tuple(leaves))


def hidden_mask(params: Any, *, axis_names: Any = None) -> Any:
  """True for the hidden matrices of ``params`` (Muon's and NorMuon's leaves)."""
  return model_layout(params, axis_names=axis_names).tree("hidden")


def weight_decay_mask(params: Any, *, axis_names: Any = None) -> Any:
  """True where decoupled weight decay applies by default: kernels and
  embeddings, not norm scales or biases (the mask of every AdamW part)."""
  return model_layout(params, axis_names=axis_names).tree("weight_decay")


def default_neuron_axes(params: Any, *, axis_names: Any = None,
                        layout: Optional[k.ModelLayout] = None) -> dict[str, tuple[int, ...]]:
  """Each leaf's output-neuron axes by path (the default of ``granularity="neuron"``);
  from ``layout`` where given (a full tree's layout, read by path)."""
  if layout is None:
    layout = model_layout(params, axis_names=axis_names)
  return {l.path: l.neuron_axes for l in layout.leaves}


def neuron_defaults(granularity: Any, neuron_axes: Any, axis_names: Any) -> Any:
  """``tree -> {path: axes}``: the layout's neuron axes, the defaults of
  ``granularity="neuron"`` (a ``ModelLayout`` as ``neuron_axes`` is read by path)."""
  neuron = isinstance(granularity, str) and granularity == "neuron"
  axis_names_lib.check_axis_names(axis_names)
  if axis_names is not None and not neuron:
    raise ValueError(f"axis_names is given but granularity={granularity!r} ignores it; "
                     "it sets the default neuron axes of granularity='neuron'.")
  if isinstance(neuron_axes, k.ModelLayout):
    if not neuron:
      raise ValueError(f"neuron_axes is given but granularity={granularity!r} ignores it; "
                       "use granularity='neuron'.")
    if axis_names is not None:
      raise ValueError("axis_names and a ModelLayout as neuron_axes are both given; the "
                       "layout already holds the names: pass one.")
    by_path = {l.path: l.neuron_axes for l in neuron_axes.leaves}
    return lambda tree: by_path
  if not neuron:
    return None
  warner = user_warnings.OnceWarner()

  def default_axes(tree):
    layout = model_layout(tree, axis_names=axis_names)
    guessed = [l for l in layout.leaves if l.source == "shape" and l.batch_axes]
    warner.warn([l.path for l in guessed],
                user_warnings.guess_message("granularity='neuron'", guessed))
    return default_neuron_axes(tree, layout=layout)

  return default_axes


__all__ = ["MatrixView", "model_layout", "hidden_mask", "weight_decay_mask",
           "default_neuron_axes"]
