"""Adam-mini's blocks for a parameter tree (Zhang et al. 2024, "Adam-mini").

Adam-mini keeps one second moment per *block*; the blocks follow the
Hessian's block structure of a transformer, and the reference (the PyTorch
package ``adam-mini==1.1.1``) chooses them from parameter names on PyTorch
``(out, in)`` weights. This module restates that partition on the roles of
`model_layout` (Flax's ``(in, out)`` kernels, ``(vocab,
d)`` embeddings, ``DenseGeneral`` attention kernels; axis names where the
model gives them), with the layout's kinds:

| layout kind | shape (core) | unit spec | decay |
| --- | --- | --- | --- |
| an ``overrides`` pattern matches its path | any | yours | [1] |
| ``bias`` | any | ``"element"`` | no |
| ``norm_scale`` | ``(d,)`` | ``"tensor"`` | no |
| ``embedding`` | ``(vocab, d)`` | ``Neurons(0)`` (per token) | yes |
| ``query``, ``key`` | ``(d, heads, head_dim)`` | ``Neurons(1)`` (per head) | yes |
| ``query``, ``key``, fused heads | ``(d, heads*head_dim)`` | ``Blocks(1, heads)`` [2] | yes |
| ``value`` | ``(d, heads, head_dim)`` | ``Neurons((1, 2))`` | yes |
| ``value``, fused heads | ``(d, heads*head_dim)`` | ``"neuron"`` | yes |
| ``attention_out`` | ``(heads, head_dim, d)`` or ``(heads*head_dim, d)`` | ``"neuron"`` | yes |
| ``fused_qkv`` | ``(d, (heads + 2*kv_heads)*head_dim)`` | ``Blocks(1, heads + 2*kv_heads)`` [2] | yes |
| ``mlp``, ``head``, ``recurrent``, ``input`` | ``(in, out)`` | ``"neuron"`` (per token for the head) | yes |
| anything else (``conv``, ``matrix``, ``other``) | any | ``"element"`` [3] | [1] |

*Core* is the leaf less its stack and expert axes (``LeafRole.batch_axes``):
a scanned leaf gets the same blocks *per layer* (a ``(L, in, out)`` kernel
``Neurons((0, 2))``, a ``(L, d)`` norm scale ``Neurons(0)``, a fused
``(L, d, heads*head_dim)`` query ``Blocks(2, heads, batch_axes=(0,))``), so a
scanned model has exactly its unscanned twin's blocks.

* [1] Weight decay is the layout's ``weight_decay``: kernels and embeddings,
  not norm scales or biases, as the reference (which decays every parameter
  whose name lacks ``norm``, ``ln`` and ``bias``). An override keeps it.
* [2] Needs ``num_heads`` (and ``num_kv_heads`` under grouped-query
  attention); without it the leaf is unrecognised. A fused q/k/v kernel gets
  one unit per head of each of q, k and v.
* [3] A leaf no rule recognises (a convolution, a 2-D leaf without a Flax name
  -- ``(in, out)`` or PyTorch's ``(out, in)``? --, a raw ``nnx.Param``, a 0-d
  scalar) is kept as full Adam (``"element"``), never silently one block, and
  reported: ``on_unrecognised="warn"`` (default) warns listing every such
  path, ``"error"`` raises, ``"ignore"`` does neither. The list is always in
  `AdamMiniPartition.unrecognised`.

Overriding: ``overrides={selector: spec}`` (the package's one path rule,
`optax_neuronlr._src.paths`), e.g. ``overrides={r".*/pos_embedding":
nlr.Neurons(0), r"encoder/.*": "element"}``; an overridden leaf is never
reported. Or give Adam-mini your own pytree of specs (or ``params -> pytree``).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Optional

import jax
import numpy as np

from optax_neuronlr._src import paths as paths_lib
from optax_neuronlr._src import units as units_lib
from optax_neuronlr._src import user_warnings
from optax_neuronlr._src.roles import kinds as k
from optax_neuronlr._src.roles import layout as layout_lib
from optax_neuronlr._src.units import Blocks
from optax_neuronlr._src.units import Neurons
from optax_neuronlr._src.units import UnitSpec

OnUnrecognised = Literal["warn", "error", "ignore"]


@dataclasses.dataclass(frozen=True)
class AdamMiniLeaf:
  """How one leaf is partitioned.

  Attributes:
    path: the leaf's path, keys joined by ``"/"`` (NNX's ``.value`` dropped).
    shape: the leaf's shape.
    kind: its kind in `model_layout` (``"query"``,
      ``"mlp"``, ``"conv"``, ...).
    spec: its unit spec.
    weight_decay: whether decoupled weight decay applies to it.
    num_units: how many second-moment entries it keeps.
    overridden: whether ``spec`` came from ``overrides``.
    reason: for an unrecognised leaf, why no rule applied.
    recognised: whether a rule gave it blocks (else it is full Adam).
    source: the evidence that decided its role (the layout's ``source``).
  """

  path: str
  shape: tuple[int, ...]
  kind: str
  spec: UnitSpec
  weight_decay: bool
  num_units: int
  overridden: bool = False
  reason: str = ""
  recognised: bool = True
  source: str = k.NAME


@dataclasses.dataclass(frozen=True)
class AdamMiniPartition:
  """Adam-mini's partition of a parameter tree.

  Attributes:
    specs: a tree shaped like the params, of unit specs.
    weight_decay_mask: a tree shaped like the params, of bools.
    leaves: one `AdamMiniLeaf` per array leaf, in tree order.
  """

  specs: Any
  weight_decay_mask: Any
  leaves: tuple[AdamMiniLeaf, ...]

  @property
  def unrecognised(self) -> tuple[AdamMiniLeaf, ...]:
    """The leaves no rule (and no override) recognised; they are full Adam."""
    return tuple(l for l in self.leaves if not l.recognised and not l.overridden)

  def by_path(self) -> dict[str, AdamMiniLeaf]:
    return {l.path: l for l in self.leaves}

  def num_units(self) -> int:
    """Second-moment entries over the whole tree."""
    return sum(l.num_units for l in self.leaves)

  def table(self) -> str:
    """A plain-text table: path, shape, kind (the layout's), spec, units,
    decay, source and note."""
    rows = [("path", "shape", "kind", "spec", "units", "decay", "source", "note")]
    for l in self.leaves:
      note = "override" if l.overridden else ("" if l.recognised else
                                               f"full Adam: {l.reason}")
      rows.append((l.path, str(l.shape), l.kind, spec_str(l.spec), str(l.num_units),
                   "yes" if l.weight_decay else "no", l.source, note))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def spec_str(spec: UnitSpec) -> str:
  if isinstance(spec, Blocks):
    batch = f", batch_axes={spec.batch_axes}" if spec.batch_axes else ""
    return f"Blocks({spec.axis}, {spec.num_blocks}{batch})"
  if isinstance(spec, Neurons):
    axes = spec.axes if isinstance(spec.axes, int) or len(spec.axes) != 1 else spec.axes[0]
    return f"Neurons({axes})"
  return repr(spec) if not isinstance(spec, str) else spec


def num_units(spec: UnitSpec, shape: Sequence[int], where: str = "leaf") -> int:
  """How many units ``spec`` makes of a leaf of ``shape``, as the engine lays it out."""
  return math.prod(units_lib.leaf_layout(tuple(shape), spec, where).unit_shape)


def _neurons(role: k.LeafRole) -> UnitSpec:
  """One unit per output neuron (per layer for a stacked leaf)."""
  ndim = len(role.shape)
  if not role.batch_axes and role.neuron_axes == ((ndim - 1,) if ndim else ()):
    return "neuron"
  return Neurons(role.neuron_axes)


def blocks_of(role: k.LeafRole) -> tuple[Optional[UnitSpec], str]:
  """``(spec, reason)`` of one leaf from its role; spec None: unrecognised."""
  kind, batch = role.kind, role.batch_axes
  core = [a for a in range(len(role.shape)) if a not in batch]
  if kind == k.BIAS:
    return "element", ""
  if kind == k.NORM_SCALE:
    return (Neurons(batch) if batch else "tensor"), ""
  if kind == k.EMBEDDING:
    return Neurons(tuple(sorted(batch + (core[0],)))), ""
  if kind in (k.QUERY, k.KEY, k.FUSED_QKV):
    if role.heads is None:
      return None, (f"a {kind} kernel with fused heads: pass num_heads (and num_kv_heads "
                    "for grouped-query attention)")
    return role.heads, ""
  if kind in (k.VALUE, k.ATTENTION_OUT):
    return _neurons(role), ""
  if kind in (k.MLP, k.HEAD, k.RECURRENT, k.INPUT) and len(core) == 2:
    return _neurons(role), ""
  if kind == k.CONV:
    return None, (f"a {len(core)}-D convolution kernel; give it a spec in overrides")
  if kind == k.MATRIX:
    return None, ("a 2-D leaf without a Flax name: (in, out) or PyTorch's (out, in)? give "
                  "it a spec in overrides (Neurons(0) for (out, in))")
  return None, role.reason or f"a {len(role.shape)}-D {kind} leaf"


def check_positive(value: Optional[int], what: str) -> None:
  if value is None:
    return
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{what} must be an int >= 1 or None, got {value!r}.")


def check_heads(num_heads: Any, num_kv_heads: Any) -> None:
  check_positive(num_heads, "num_heads")
  check_positive(num_kv_heads, "num_kv_heads")
  if num_kv_heads is not None and num_heads is not None and num_heads % num_kv_heads:
    raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads "
                     f"({num_kv_heads}).")


def _overrides(overrides: Any) -> Optional[paths_lib.Selection]:
  if overrides is None:
    return None
  if not isinstance(overrides, Mapping):
    raise TypeError("overrides must be a mapping {path selector: unit spec}, got "
                    f"{type(overrides).__name__}.")
  return paths_lib.Selection(overrides, "adam_mini_blocks overrides")


def adam_mini_partition(
    params: Any,
    *,
    num_heads: Optional[int] = None,
    num_kv_heads: Optional[int] = None,
    overrides: Any = None,
    on_unrecognised: OnUnrecognised = "warn",
    axis_names: Any = None,
) -> AdamMiniPartition:
  """Adam-mini's blocks, weight-decay mask and a per-leaf report for ``params``.

  See the module docstring for the rules. Reads what
  `model_layout` reads (dicts of arrays, Flax linen
  params, NNX ``nnx.State``, ``jax.ShapeDtypeStruct`` leaves).

  Args:
    params: the parameter tree.
    num_heads: attention heads; needed for 2-D (fused-heads) query/key kernels
      and fused q/k/v kernels. ``(d, heads, head_dim)`` kernels do not need it.
    num_kv_heads: key/value heads under grouped-query attention (default:
      ``num_heads``).
    overrides: ``{selector: spec}``: the spec of every leaf a selector
      selects (a regular expression matching its path or a ``/``-prefix of
      it; the longest match wins), in place of the rules'.
    on_unrecognised: ``"warn"`` (default), ``"error"`` or ``"ignore"`` for
      leaves that no rule and no override recognises (they are full Adam).
    axis_names: the model's logical axis names (``nn.get_partition_spec`` /
      ``nnx.get_partition_spec``; see `model_layout`).

  Returns:
    An `AdamMiniPartition`.

  Raises:
    ValueError: for an invalid argument, a spec (built-in or override) that
      does not fit its leaf, or unrecognised leaves with ``on_unrecognised="error"``.
  """
  return partition(params, num_heads, num_kv_heads, overrides, on_unrecognised,
                   axis_names=axis_names, stacklevel=3)


def partition(params, num_heads, num_kv_heads, overrides, on_unrecognised, *,
              axis_names=None, layout=None, stacklevel=2) -> AdamMiniPartition:
  """`adam_mini_partition` with positional arguments; ``layout``: the
  full tree's layout, read by path (inside ``multi_transform``)."""
  check_heads(num_heads, num_kv_heads)
  if on_unrecognised not in ("warn", "error", "ignore"):
    raise ValueError(f"on_unrecognised must be 'warn', 'error' or 'ignore', got "
                     f"{on_unrecognised!r}.")
  selection = _overrides(overrides)
  own = layout_lib.model_layout(params, num_heads=num_heads, num_kv_heads=num_kv_heads,
                                axis_names=axis_names)
  given = {} if layout is None else layout.by_path()
  leaves: list[AdamMiniLeaf] = []
  for role in own.leaves:
    role = given.get(role.path, role)
    where, shape = role.path, role.shape
    spec, reason = blocks_of(role)
    recognised = spec is not None
    override = None if selection is None else selection.lookup(where, default=None)
    overridden = override is not None
    if overridden:
      spec = override
    if spec is None:
      spec = "element"
    leaves.append(AdamMiniLeaf(where, shape, role.kind, spec, role.weight_decay,
                               num_units(spec, shape, where), overridden, reason,
                               recognised, role.source))
  specs = jax.tree_util.tree_unflatten(own.treedef, [l.spec for l in leaves])
  mask = jax.tree_util.tree_unflatten(own.treedef, [l.weight_decay for l in leaves])
  result = AdamMiniPartition(specs, mask, tuple(leaves))

  missing = result.unrecognised
  if missing and on_unrecognised != "ignore":
    message = unrecognised_message(missing, "adam_mini_blocks",
                                   "a spec with overrides={path_regex: spec}")
    if on_unrecognised == "error":
      raise ValueError(message)
    warnings.warn(message, UserWarning, stacklevel=stacklevel)
  return result


def unrecognised_message(missing: Sequence[AdamMiniLeaf], who: str, fix: str) -> str:
  listing = "; ".join(f"'{l.path}' {l.shape}: {l.reason}" for l in missing)
  return (f"{who} recognised no Adam-mini block for {len(missing)} leaves, kept as "
          f"full Adam (one second moment per element): {listing}. Give them {fix}.")


def adam_mini_blocks(
    params: Any,
    *,
    num_heads: Optional[int] = None,
    num_kv_heads: Optional[int] = None,
    overrides: Any = None,
    on_unrecognised: OnUnrecognised = "warn",
    axis_names: Any = None,
) -> Any:
  """Adam-mini's unit spec for each leaf of ``params``, a tree shaped like it.

  Per head for query/key, per output neuron for value, attention output and MLP
  kernels, per token for embeddings and the output head, one unit per norm
  scale, one per element (Adam) for every bias, per layer in a scanned stack;
  see the module docstring for the rules and `adam_mini_partition` for
  the arguments. Leaves it does not recognise stay per element and are
  reported (a warning by default).

  Use as Adam-mini's ``blocks`` (or any rule's ``granularity``); for other
  arguments than the defaults, bind them:
  ``functools.partial(adam_mini_blocks, num_heads=8)``.
  """
  return partition(params, num_heads, num_kv_heads, overrides, on_unrecognised,
                   axis_names=axis_names, stacklevel=3).specs


def adam_mini_weight_decay_mask(params: Any, *, axis_names: Any = None) -> Any:
  """True for kernels and embeddings, False for norm scales and biases.

  The mask for ``optax.add_decayed_weights`` that matches the reference
  (``adam-mini`` decays every parameter whose name contains none of ``norm``,
  ``ln``, ``bias``): the layout's ``weight_decay``.
  """
  return partition(params, None, None, None, "ignore", axis_names=axis_names,
                   stacklevel=3).weight_decay_mask


class AutoBlocks:
  """``blocks=None``: `adam_mini_blocks` of the tree each trace sees.

  A unit-spec callable for the engine (``tree -> tree of specs``). The engine
  calls it on every ``init`` and on every trace of ``update``, so the
  partition is computed once per tree signature (paths and shapes) and cached
  here, one cache per optimizer. Unrecognised leaves are reported by
  `report` at ``init``, once per optimizer, never per trace.
  """

  def __init__(self, num_heads: Optional[int], num_kv_heads: Optional[int],
               axis_names: Any = None):
    self.num_heads = num_heads
    self.num_kv_heads = num_kv_heads
    self.axis_names = axis_names
    self._cache: dict[tuple, AdamMiniPartition] = {}
    self._warner = user_warnings.OnceWarner()

  def partition(self, tree: Any) -> AdamMiniPartition:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    key = tuple((tuple(p), tuple(np.shape(x))) for p, x in flat)
    try:
      return self._cache[key]
    except (KeyError, TypeError):
      pass
    result = partition(tree, self.num_heads, self.num_kv_heads, None, "ignore",
                       axis_names=self.axis_names, stacklevel=2)
    try:
      self._cache[key] = result
    except TypeError:  # an unhashable key: no caching
      pass
    return result

  def _layout_roles(self, tree: Any) -> tuple[k.LeafRole, ...]:
    return layout_lib.model_layout(tree, num_heads=self.num_heads,
                                   num_kv_heads=self.num_kv_heads,
                                   axis_names=self.axis_names).leaves

  def __call__(self, tree: Any) -> Any:
    # A tree shaped like ``tree``: the engine then zips specs with leaves.
    specs = [l.spec for l in self.partition(tree).leaves]
    return jax.tree.structure(tree).unflatten(specs)

  def report(self, params: Any, on_unrecognised: str) -> None:
    found = self.partition(params)
    guessed = [l for l in self._layout_roles(params) if user_warnings.changed_by_guess(l)
               and found.by_path()[l.path].recognised]
    self._warner.warn([l.path for l in guessed],
                      user_warnings.guess_message("adam_mini", guessed))
    missing = found.unrecognised
    if on_unrecognised == "ignore" or not missing:
      return
    fix = ("a spec: blocks=functools.partial(nlr.adam_mini_blocks, overrides={path_regex: "
           "spec}); or on_unrecognised='ignore'")
    if on_unrecognised == "error":
      raise ValueError(unrecognised_message(missing, "adam_mini", fix))
    new = self._warner.new("unrecognised:" + l.path for l in missing)
    if new:
      fresh = [l for l in missing if "unrecognised:" + l.path in new]
      warnings.warn(unrecognised_message(fresh, "adam_mini", fix), UserWarning,
                    stacklevel=user_warnings.user_stacklevel())
