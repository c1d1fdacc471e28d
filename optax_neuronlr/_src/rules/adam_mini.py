"""Adam-mini for Flax parameter trees (Zhang et al. 2024, "Adam-mini"): blocks and optimizer.

Adam-mini keeps Adam's first moment in full and one second moment per *block*:
the mean of ``g**2`` over the block, averaged over time. The blocks follow the
Hessian's block structure of a transformer, and the reference (the PyTorch
package ``adam-mini==1.1.1``) chooses them from parameter *names* on PyTorch
``(out, in)`` weights. This module restates that partition for Flax layouts
(``(in, out)`` kernels, ``(vocab, d)`` embeddings, ``DenseGeneral`` attention
kernels) from each leaf's path and shape (:func:`adam_mini_blocks`), and runs
the optimizer on the rule engine: :class:`AdamMini` (the per-block second
moment, a :class:`~optax_neuronlr.Rule`) with the first moment as its
direction, :func:`scale_by_adam_mini` and :func:`adam_mini` (with decoupled
weight decay and the learning rate, as ``optax.adamw``).

Rules (the first that applies wins). A leaf's *name* is the last key of its path
(Flax NNX's trailing ``.value`` dropped) and its *module* the key before; module
names are matched whole and case-insensitively, never as substrings:

| leaf | shape | unit spec | decay |
| --- | --- | --- | --- |
| an ``overrides`` pattern matches its path | any | yours | [1] |
| ``bias`` (Dense, attention, LayerNorm, ...) | any | ``"element"`` | no |
| ``scale`` (LayerNorm, RMSNorm, GroupNorm) | ``(d,)`` | ``"tensor"`` | no |
| ``embedding`` (``nnx.Embed``, ``nn.Embed``) | ``(vocab, d)`` | ``Neurons(0)`` | yes |
| ``kernel`` of query/key [2] | ``(d, heads, head_dim)`` | ``Neurons(1)`` | yes |
| ``kernel`` of query/key [2], fused heads | ``(d, heads*head_dim)`` | ``Blocks(1, heads)`` [3] | yes |
| ``kernel`` of value [2] | ``(d, heads, head_dim)`` | ``Neurons((1, 2))`` | yes |
| ``kernel`` of value [2], fused heads | ``(d, heads*head_dim)`` | ``"neuron"`` | yes |
| ``kernel`` of the attention output [2] | ``(heads, head_dim, d)`` or ``(heads*head_dim, d)`` | ``"neuron"`` | yes |
| ``kernel`` of a fused q/k/v projection [2] | ``(d, (heads + 2*kv_heads)*head_dim)`` | ``Blocks(1, heads + 2*kv_heads)`` [3] | yes |
| any other 2-D ``kernel`` (MLP, output head) | ``(in, out)`` | ``"neuron"`` | yes |
| anything else | any | ``"element"`` [4] | [1] |

* ``"element"``: one unit per element, i.e. Adam; ``"tensor"``: one unit for the
  leaf; ``"neuron"``: one unit per index of the last axis (an output neuron; for
  the output head ``(d, vocab)`` that is one per token, as the reference);
  ``Neurons(axes)``: one unit per index of ``axes``, the other axes averaged;
  ``Blocks(axis, n)``: ``axis`` split into ``n`` equal contiguous blocks, one
  unit per block. Per head for query/key is one unit for each head's
  ``d * head_dim`` weights, exactly the reference's ``view(-1, dim*dim/n_heads)``
  on a PyTorch ``(heads*head_dim, d)`` weight.
* [1] Weight decay (the mask :func:`adam_mini_weight_decay_mask` gives) is True
  for kernels and embeddings and False for norm scales and every bias, as the
  reference (which decays every parameter whose name lacks ``norm``, ``ln`` and
  ``bias``). An override keeps the decay of the rule it replaces; a leaf no rule
  recognises is decayed when it has two or more dimensions and is not named
  ``bias`` or ``scale``.
* [2] Modules ``query``, ``q_proj``, ``wq``, ``q`` / ``key``, ``k_proj``, ``wk``,
  ``k`` (query/key); ``value``, ``v_proj``, ``wv``, ``v`` (value); ``out``,
  ``o_proj``, ``wo``, ``out_proj`` (output); ``qkv``, ``qkv_proj``, ``wqkv``,
  ``c_attn``, ``query_key_value``, ``in_proj`` (fused q/k/v). Flax's
  ``nnx.MultiHeadAttention`` and linen's ``nn.MultiHeadDotProductAttention``
  name theirs ``query``, ``key``, ``value``, ``out``.
* [3] Needs ``num_heads`` (and ``num_kv_heads`` under grouped-query attention,
  for the key and the fused projection); without it the leaf is unrecognised.
  A fused q/k/v kernel gets one unit per head of each of q, k and v: exactly
  the reference's blocks for q and k, and per head rather than per neuron for
  v (one spec cannot mix the two; the reference notes one block for all of v
  is also fine).
* [4] A leaf that no rule recognises (a 3-D or 4-D kernel outside attention,
  e.g. a convolution; a raw ``nnx.Param`` such as a positional embedding; a
  0-d scalar) is kept as full Adam (``"element"``) — never silently one block
  — and reported: ``on_unrecognised="warn"`` (default) warns listing every
  such path, ``"error"`` raises, ``"ignore"`` does neither. The list is always
  in :attr:`AdamMiniPartition.unrecognised`.

Overriding: pass ``overrides={selector: spec}``. Selectors are the package's
one path rule (:mod:`optax_neuronlr._src.paths`): a regular expression that
matches a leaf's whole path, keys joined by ``"/"``, or one of its
``/``-prefixes, the longest match winning; e.g.
``overrides={r".*/pos_embedding": nlr.Neurons(0), r"encoder/.*": "element"}``.
An overridden leaf is never reported as unrecognised. Or give Adam-mini your
own pytree of specs (or ``params -> pytree``) instead of this function.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_neuronlr._src import engine
from optax_neuronlr._src import model_layout
from optax_neuronlr._src import paths as paths_lib
from optax_neuronlr._src import units as units_lib
from optax_neuronlr._src import validation
from optax_neuronlr._src.rules import moments
from optax_neuronlr._src.units import Blocks
from optax_neuronlr._src.units import Neurons
from optax_neuronlr._src.units import UnitSpec

SPEC_STRINGS = ("element", "tensor", "neuron")
OnUnrecognised = Literal["warn", "error", "ignore"]

QUERY_NAMES = model_layout.QUERY_NAMES
KEY_NAMES = model_layout.KEY_NAMES
VALUE_NAMES = model_layout.VALUE_NAMES
OUT_NAMES = model_layout.OUT_NAMES
QKV_NAMES = model_layout.QKV_NAMES

# Kinds of leaves, as shown in reports.
QUERY_KEY = "query/key"
VALUE = "value"
ATTENTION_OUT = "attention out"
FUSED_QKV = "fused qkv"
EMBEDDING = "embedding"
DENSE = "dense"
NORM_SCALE = "norm scale"
BIAS = "bias"
UNRECOGNISED = "unrecognised"


@dataclasses.dataclass(frozen=True)
class AdamMiniLeaf:
  """How one leaf is partitioned.

  Attributes:
    path: the leaf's path, keys joined by ``"/"`` (NNX's ``.value`` dropped).
    shape: the leaf's shape.
    kind: what the rules took it for (``"query/key"``, ``"value"``,
      ``"attention out"``, ``"fused qkv"``, ``"embedding"``, ``"dense"``,
      ``"norm scale"``, ``"bias"`` or ``"unrecognised"``).
    spec: its unit spec.
    weight_decay: whether decoupled weight decay applies to it.
    num_units: how many second-moment entries it keeps.
    overridden: whether ``spec`` came from ``overrides``.
    reason: for an unrecognised leaf, why no rule applied.
  """

  path: str
  shape: tuple[int, ...]
  kind: str
  spec: UnitSpec
  weight_decay: bool
  num_units: int
  overridden: bool = False
  reason: str = ""


@dataclasses.dataclass(frozen=True)
class AdamMiniPartition:
  """Adam-mini's partition of a parameter tree.

  Attributes:
    specs: a tree shaped like the params, of unit specs.
    weight_decay_mask: a tree shaped like the params, of bools.
    leaves: one :class:`AdamMiniLeaf` per array leaf, in tree order.
  """

  specs: Any
  weight_decay_mask: Any
  leaves: tuple[AdamMiniLeaf, ...]

  @property
  def unrecognised(self) -> tuple[AdamMiniLeaf, ...]:
    """The leaves no rule (and no override) recognised; they are full Adam."""
    return tuple(l for l in self.leaves if l.kind == UNRECOGNISED and not l.overridden)

  def by_path(self) -> dict[str, AdamMiniLeaf]:
    return {l.path: l for l in self.leaves}

  def num_units(self) -> int:
    """Second-moment entries over the whole tree."""
    return sum(l.num_units for l in self.leaves)

  def table(self) -> str:
    """A plain-text table: path, shape, kind, spec, units, decay."""
    rows = [("path", "shape", "kind", "spec", "units", "decay")]
    for l in self.leaves:
      kind = l.kind + (" (override)" if l.overridden else "")
      rows.append((l.path, str(l.shape), kind, _spec_str(l.spec), str(l.num_units),
                   "yes" if l.weight_decay else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


# ---------------------------------------------------------------------------
# Paths.


def _path_keys(path: Sequence[Any]) -> list[str]:
  """The keys of a JAX key path as strings (NNX's trailing ``.value`` dropped)."""
  where = paths_lib.path_str(path)
  return where.split("/") if where else []


# ---------------------------------------------------------------------------
# Specs.


def _spec_str(spec: UnitSpec) -> str:
  if isinstance(spec, Blocks):
    return f"Blocks({spec.axis}, {spec.num_blocks})"
  if isinstance(spec, Neurons):
    axes = units_lib.neuron_axes_of(spec)
    axes = axes[0] if len(axes) == 1 else axes
    return f"Neurons({axes})"
  return repr(spec) if not isinstance(spec, str) else spec


def num_units(spec: UnitSpec, shape: Sequence[int], where: str = "leaf") -> int:
  """How many units ``spec`` makes of a leaf of ``shape``, as the engine lays it out.

  Raises:
    ValueError, TypeError: if ``spec`` is not a unit spec or does not fit
      ``shape`` (from ``units.leaf_layout``).
  """
  return math.prod(units_lib.leaf_layout(tuple(shape), spec, where).unit_shape)


# ---------------------------------------------------------------------------
# The rules.


def _classify(role: model_layout.LeafRole) -> tuple[str, Optional[UnitSpec], str]:
  """``(kind, spec, reason)`` of one leaf from its role in the model layout."""
  kind, ndim = role.kind, len(role.shape)
  if kind == model_layout.BIAS:
    return BIAS, "element", ""
  if kind == model_layout.NORM_SCALE:
    return NORM_SCALE, "tensor", ""
  if kind == model_layout.EMBEDDING:
    return EMBEDDING, Neurons(0), ""
  if kind in (model_layout.QUERY, model_layout.KEY):
    if ndim == 3:
      return QUERY_KEY, Neurons(1), ""
    if role.heads is None:
      return UNRECOGNISED, None, ("a 2-D query/key kernel (fused heads): pass num_heads "
                                  "(and num_kv_heads for grouped-query attention)")
    return QUERY_KEY, role.heads, ""
  if kind == model_layout.VALUE:
    return VALUE, Neurons((1, 2)) if ndim == 3 else "neuron", ""
  if kind == model_layout.ATTENTION_OUT:
    return ATTENTION_OUT, "neuron", ""
  if kind == model_layout.FUSED_QKV:
    if role.heads is None:
      return UNRECOGNISED, None, "a fused q/k/v kernel: pass num_heads"
    return FUSED_QKV, role.heads, ""
  if kind in (model_layout.MLP, model_layout.HEAD, model_layout.RECURRENT,
              model_layout.INPUT) and ndim == 2:
    return DENSE, "neuron", ""
  if kind == model_layout.CONV:
    return UNRECOGNISED, None, (f"a {ndim}-D kernel outside attention (e.g. a convolution or "
                                "a DenseGeneral); give it a spec in overrides")
  return UNRECOGNISED, None, role.reason or f"a {ndim}-D {kind} leaf"


def _check_positive(value: Optional[int], what: str) -> None:
  if value is None:
    return
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{what} must be an int >= 1 or None, got {value!r}.")


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
) -> AdamMiniPartition:
  """Adam-mini's blocks, weight-decay mask and a per-leaf report for ``params``.

  See the module docstring for the rules. Reads dicts of arrays, Flax linen
  params (``{"params": ...}`` included) and Flax NNX ``nnx.State`` (of
  variables, paths ending in ``.value``, or of arrays); only paths and shapes
  are read, so ``jax.ShapeDtypeStruct`` leaves work too.

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

  Returns:
    An :class:`AdamMiniPartition`.

  Raises:
    ValueError: for an invalid argument, a spec (built-in or override) that
      does not fit its leaf, or unrecognised leaves with ``on_unrecognised="error"``.
  """
  return _partition(params, num_heads, num_kv_heads, overrides, on_unrecognised, stacklevel=3)


def _partition(params, num_heads, num_kv_heads, overrides, on_unrecognised, stacklevel):
  _check_positive(num_heads, "num_heads")
  _check_positive(num_kv_heads, "num_kv_heads")
  if num_kv_heads is not None and num_heads is not None and num_heads % num_kv_heads:
    raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads "
                     f"({num_kv_heads}).")
  if on_unrecognised not in ("warn", "error", "ignore"):
    raise ValueError(f"on_unrecognised must be 'warn', 'error' or 'ignore', got "
                     f"{on_unrecognised!r}.")
  selection = _overrides(overrides)
  layout = model_layout.model_layout(params, num_heads=num_heads, num_kv_heads=num_kv_heads)
  treedef = layout.treedef
  leaves: list[AdamMiniLeaf] = []
  for role in layout.leaves:
    where, shape = role.path, role.shape
    kind, spec, reason = _classify(role)
    override = None if selection is None else selection.lookup(where, default=None)
    overridden = override is not None
    if overridden:
      spec = override
    if spec is None:
      spec = "element"
    leaves.append(AdamMiniLeaf(where, shape, kind, spec, role.weight_decay,
                               num_units(spec, shape, where), overridden, reason))
  specs = jax.tree_util.tree_unflatten(treedef, [l.spec for l in leaves])
  mask = jax.tree_util.tree_unflatten(treedef, [l.weight_decay for l in leaves])
  partition = AdamMiniPartition(specs, mask, tuple(leaves))

  missing = partition.unrecognised
  if missing and on_unrecognised != "ignore":
    message = _unrecognised_message(missing, "adam_mini_blocks",
                                    "a spec with overrides={path_regex: spec}")
    if on_unrecognised == "error":
      raise ValueError(message)
    warnings.warn(message, UserWarning, stacklevel=stacklevel)
  return partition


def _unrecognised_message(missing: Sequence[AdamMiniLeaf], who: str, fix: str) -> str:
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
) -> Any:
  """Adam-mini's unit spec for each leaf of ``params``, a tree shaped like it.

  Per head for query/key, per output neuron for value, attention output and MLP
  kernels, per token for embeddings and the output head, one unit per norm
  scale, one per element (Adam) for every bias; see the module docstring for
  the rules and :func:`adam_mini_partition` for the arguments. Leaves it does
  not recognise stay per element and are reported (a warning by default).

  Use as Adam-mini's ``blocks`` (or any rule's ``granularity``); for other
  arguments than the defaults, bind them:
  ``functools.partial(adam_mini_blocks, num_heads=8)``.
  """
  return _partition(params, num_heads, num_kv_heads, overrides, on_unrecognised,
                    stacklevel=3).specs


def adam_mini_weight_decay_mask(params: Any) -> Any:
  """True for kernels and embeddings, False for norm scales and biases.

  The mask for ``optax.add_decayed_weights`` that matches the reference
  (``adam-mini`` decays every parameter whose name contains none of ``norm``,
  ``ln``, ``bias``). A leaf that no rule recognises is decayed when it has two
  or more dimensions and is not named ``bias`` or ``scale``.
  """
  return _partition(params, None, None, None, "ignore", stacklevel=3).weight_decay_mask


# ---------------------------------------------------------------------------
# The optimizer: a rule for the second moment, the first moment as direction.


@dataclasses.dataclass(frozen=True)
class AdamMini(engine.Rule):
  r"""Adam-mini's second moment: one EMA of the mean of $g^2$ per unit (block).

  With the direction $\hat m_t$ (Adam's bias-corrected first moment), per unit
  $b$ at step $t$:

  $$
  v_{b,t} = \beta_2 v_{b,t-1} + (1 - \beta_2)\, \mathrm{mean}_{i \in b}\, g_{i,t}^2,
  \qquad
  r_{b,t} = \frac{\eta_t}{\sqrt{v_{b,t}} / \sqrt{1 - \beta_2^t} + \epsilon},
  $$

  and the update of every element of the unit is $r_{b,t}\, \hat m_t$ (Zhang
  et al., 2024; bias correction and $\epsilon$ placed as Adam's, as the
  reference ``adam-mini==1.1.1`` does). On ``"element"`` units this is Adam.
  """

  unit_stats = ("v",)
  hyperparams = ("b2", "eps")
  state_name = "ScaleByAdamMiniState"
  name = "adam_mini"

  def observe(self, g, d, elements, hp):
    return (engine.abs_sq(g),)

  def update(self, stats, observed, hp, prev_hp, count):
    b2 = hp["b2"]
    return {"v": b2 * stats["v"] + (1 - b2) * observed[0]}

  def rate(self, stats, hp, count):
    v = stats["v"]
    root = jnp.sqrt(v) / jnp.sqrt(1 - hp["b2"] ** count).astype(v.dtype)
    return hp["learning_rate"] / (root + hp["eps"])


ScaleByAdamMiniState = AdamMini().state_class()

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _library_dirs() -> tuple[str, ...]:
  dirs = [_PACKAGE_DIR]
  for name in ("optax", "jax", "flax"):
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    if file:
      dirs.append(os.path.dirname(os.path.abspath(file)))
  return tuple(d + os.sep for d in dirs)


def _user_stacklevel() -> int:
  """The ``stacklevel`` at which ``warnings.warn``, called by our caller, names
  the first frame outside this package, optax, jax and flax (the user's
  ``tx.init(params)`` or ``nnx.Optimizer(...)`` line)."""
  skip = _library_dirs()
  frame, level = sys._getframe(1), 1  # pylint: disable=protected-access
  while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(skip):
    frame, level = frame.f_back, level + 1
  return level


class _AutoBlocks:
  """``blocks=None``: :func:`adam_mini_blocks` of the tree each trace sees.

  A unit-spec callable for the engine (``tree -> tree of specs``). The engine
  calls it on every ``init`` and on every trace of ``update``, so the
  partition is computed once per tree signature (paths and shapes) and cached
  here, one cache per optimizer. Unrecognised leaves are reported by
  :meth:`report` at ``init``, once per optimizer, never per trace.
  """

  def __init__(self, num_heads: Optional[int], num_kv_heads: Optional[int]):
    self.num_heads = num_heads
    self.num_kv_heads = num_kv_heads
    self._cache: dict[tuple, AdamMiniPartition] = {}
    self._reported: set[str] = set()

  def partition(self, tree: Any) -> AdamMiniPartition:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    key = tuple((tuple(p), tuple(np.shape(x))) for p, x in flat)
    try:
      return self._cache[key]
    except (KeyError, TypeError):
      pass
    partition = _partition(tree, self.num_heads, self.num_kv_heads, None, "ignore",
                           stacklevel=2)
    try:
      self._cache[key] = partition
    except TypeError:  # an unhashable key: no caching
      pass
    return partition

  def __call__(self, tree: Any) -> Any:
    # A tree shaped like ``tree``: the engine then zips specs with leaves.
    specs = [l.spec for l in self.partition(tree).leaves]
    return jax.tree.structure(tree).unflatten(specs)

  def report(self, params: Any, on_unrecognised: str) -> None:
    missing = self.partition(params).unrecognised
    if on_unrecognised == "ignore" or not missing:
      return
    fix = ("a spec: blocks=functools.partial(nlr.adam_mini_blocks, overrides={path_regex: "
           "spec}); or on_unrecognised='ignore'")
    if on_unrecognised == "error":
      raise ValueError(_unrecognised_message(missing, "adam_mini", fix))
    new = [l for l in missing if l.path not in self._reported]
    if new:
      self._reported.update(l.path for l in new)
      warnings.warn(_unrecognised_message(new, "adam_mini", fix), UserWarning,
                    stacklevel=_user_stacklevel())


def _check_adam_args(b1: Any, b2: Any, eps: Any) -> None:
  validation.check_beta("b1", b1)
  validation.check_beta("b2", b2)
  validation.check_range("eps", eps, low=0.0)


def scale_by_adam_mini(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    blocks: Any = None,
    num_heads: Optional[int] = None,
    num_kv_heads: Optional[int] = None,
    on_unrecognised: OnUnrecognised = "warn",
    state_dtype: Any = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adam-mini's scaling: Adam with one second moment per block.

  Adam-mini (Zhang et al., 2024, "Adam-mini: Use Fewer Learning Rates To Gain
  More") keeps Adam's first moment in full and one second moment per block of
  parameters, the mean of $g^2$ over the block averaged over time; the blocks
  follow the Hessian's block structure of a transformer (one per attention
  head for query and key, one per output neuron elsewhere, one per token for
  embeddings and the output head). Per block $b$ and element $i \in b$:

  $$
  m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
  v_{b,t} = \beta_2 v_{b,t-1} + (1 - \beta_2)\, \mathrm{mean}_{i \in b}\, g_{i,t}^2,
  $$

  $$
  u_{i,t} = \frac{\eta_t}{\sqrt{v_{b,t}} / \sqrt{1 - \beta_2^t} + \epsilon}
      \cdot \frac{m_{i,t}}{1 - \beta_1^t}.
  $$

  The state is a full first moment (``direction_state``, an
  ``optax.EmaState``) and one ``v`` per block, about half of Adam's. The
  per-block rate $\eta_t / (\sqrt{\hat v_{b,t}} + \epsilon)$ is what
  :func:`optax_neuronlr.learning_rates` reads.

  Args:
    learning_rate: $\eta$, a number or an optax schedule, first and required
      as in every ``scale_by_*`` of the package; 1.0 returns the
      preconditioned direction, as ``optax.scale_by_adam`` does
      (:func:`adam_mini` passes its learning rate here, so that the rates
      read back are the applied ones).
    b1: decay of the first moment, in ``[0, 1)``.
    b2: decay of the second moment, in ``[0, 1)``.
    eps: added to the bias-corrected root of ``v``, ``>= 0``.
    blocks: the blocks. None (default): :func:`adam_mini_blocks` of the
      params, read from their paths and shapes at ``init`` and on each trace
      of ``update`` (cached); or any ``granularity`` of
      :func:`optax_neuronlr.scale_by_rule`: a unit spec, a pytree of specs
      selected by path, or a callable ``params -> pytree of specs`` such as
      ``functools.partial(nlr.adam_mini_blocks, overrides={...})``.
    num_heads: attention heads, for fused ``(d, heads*head_dim)`` query/key
      kernels and fused q/k/v kernels; only with ``blocks=None``. An int:
      under ``optax.inject_hyperparams`` list it in ``static_args``.
    num_kv_heads: key/value heads under grouped-query attention (default
      ``num_heads``); only with ``blocks=None``.
    on_unrecognised: with ``blocks=None``, what ``init`` does about leaves
      that :func:`adam_mini_blocks` does not recognise (kept as full Adam,
      one second moment per element): ``"warn"`` (default; one warning per
      optimizer, listing every such path), ``"error"`` (``ValueError``) or
      ``"ignore"``. :func:`optax_neuronlr.optimizer_layout` shows every
      leaf's units either way.
    state_dtype: dtype of the per-block second moment ``v`` (and of the
      first moment when ``mu_dtype`` is None); the engine's shared argument,
      see :func:`optax_neuronlr.scale_by_rule`.
    mu_dtype: dtype of the stored first moment $m$ (optax's ``mu_dtype``):
      the arithmetic stays in at least float32 and only the stored copy is
      rounded; None: as ``state_dtype``. ``"bfloat16"`` takes Adam-mini's
      state from about 0.5x to about 0.25x AdamW's for float32 params.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` returning ``+u``; its state
    is a :data:`ScaleByAdamMiniState`.
  """
  _check_adam_args(b1, b2, eps)
  validation.check_choice("on_unrecognised", on_unrecognised, ("warn", "error", "ignore"))
  for name, value in (("blocks", blocks), ("num_heads", num_heads),
                      ("num_kv_heads", num_kv_heads)):
    validation.check_static(name, value)
  validation.check_dtype("state_dtype", state_dtype)
  validation.check_dtype("mu_dtype", mu_dtype)
  if blocks is None:
    _check_positive(num_heads, "num_heads")
    _check_positive(num_kv_heads, "num_kv_heads")
    if num_kv_heads is not None and num_heads is not None and num_heads % num_kv_heads:
      raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads "
                       f"({num_kv_heads}).")
    auto = _AutoBlocks(num_heads, num_kv_heads)
    granularity = auto
  else:
    if num_heads is not None or num_kv_heads is not None:
      raise ValueError(
          "num_heads and num_kv_heads are read only with blocks=None; with your own "
          "blocks, bind them there: blocks=functools.partial(nlr.adam_mini_blocks, "
          "num_heads=...).")
    auto, granularity = None, blocks
  inner = engine.scale_by_rule(
      AdamMini(), learning_rate, {"b2": b2, "eps": eps}, granularity=granularity,
      state_dtype=state_dtype,
      direction=moments.first_moment(b1, debias=True, state_dtype=state_dtype,
                                     mu_dtype=mu_dtype))
  if auto is None:
    return inner

  def init_fn(params):
    auto.report(params, on_unrecognised)
    return inner.init(params)

  return optax.GradientTransformationExtraArgs(init_fn, inner.update)


def adam_mini(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    *,
    blocks: Any = None,
    num_heads: Optional[int] = None,
    num_kv_heads: Optional[int] = None,
    on_unrecognised: OnUnrecognised = "warn",
    mask: Any = None,
    state_dtype: Any = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adam-mini (Zhang et al., 2024): AdamW with one second moment per block.

  :func:`scale_by_adam_mini`, decoupled weight decay and the learning rate,
  as ``optax.adamw``: with $u$ the update of :func:`scale_by_adam_mini` at
  rate $\eta_t$ and $\lambda$ the weight decay,

  $$
  p_t = p_{t-1} - u_t - \eta_t \lambda\, p_{t-1} \cdot \mathrm{mask}.
  $$

  ``blocks=None`` reads the blocks from the params' paths and shapes
  (:func:`adam_mini_blocks`), so ``nlr.adam_mini(1e-3)`` is right as it is for
  a Flax NNX or linen transformer built from the standard modules
  (``Embed``, ``MultiHeadAttention``, ``Linear``/``Dense``, ``LayerNorm``,
  ``RMSNorm``). The weight decay applies to kernels and embeddings, not to
  norm scales or biases (:func:`adam_mini_weight_decay_mask`), as the
  reference ``adam-mini==1.1.1``, with which it agrees to 1e-10 in float64
  (``python -m optax_neuronlr.parity --case adam-mini``).

  Args:
    learning_rate: $\eta$, a number or an optax schedule, ``>= 0``.
    b1: decay of the first moment, in ``[0, 1)``.
    b2: decay of the per-block second moment, in ``[0, 1)``.
    eps: added to the bias-corrected root of ``v``, ``>= 0``.
    weight_decay: $\lambda$, ``>= 0``; decoupled (scaled by $\eta_t$, not by
      the adaptive rate).
    blocks: the blocks; see :func:`scale_by_adam_mini`.
    num_heads: heads of fused attention kernels; see
      :func:`scale_by_adam_mini` (list it in ``static_args`` of
      ``optax.inject_hyperparams``).
    num_kv_heads: key/value heads under grouped-query attention.
    on_unrecognised: ``"warn"``, ``"error"`` or ``"ignore"``; see
      :func:`scale_by_adam_mini`.
    mask: where weight decay applies: a tree of bools shaped like the params,
      or a callable ``params -> tree``; None (default):
      :func:`adam_mini_weight_decay_mask` (kernels and embeddings).
    state_dtype: dtype of the second moment (and of the first when
      ``mu_dtype`` is None); the engine's shared argument, see
      :func:`optax_neuronlr.scale_by_rule`.
    mu_dtype: dtype of the stored first moment (optax's ``mu_dtype``; the
      arithmetic stays in at least float32); None: as ``state_dtype``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import optax_neuronlr as nlr
    >>> tx = nlr.adam_mini(1e-3, weight_decay=0.1)
    >>> # optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  """
  validation.check_rate("learning_rate", learning_rate)
  validation.check_range("weight_decay", weight_decay, low=0.0)
  validation.check_mask("mask", mask)
  return optax.chain(
      scale_by_adam_mini(
          learning_rate, b1, b2, eps, blocks=blocks, num_heads=num_heads,
          num_kv_heads=num_kv_heads, on_unrecognised=on_unrecognised,
          state_dtype=state_dtype, mu_dtype=mu_dtype),
      moments.decoupled_weight_decay(
          learning_rate, weight_decay,
          adam_mini_weight_decay_mask if mask is None else mask),
      optax.scale(-1.0),
  )
