r"""Per-neuron normalised SGD and SCALE (Glentis et al., 2025), as rules.

SCALE ("Stochastic Column-normAlized Last-layer momEntum"; Glentis, Li, Han and
Hong, 2025, "A Minimalist Optimizer Design for LLM Pretraining",
arXiv:2506.16659) asks how little must be added to SGD to train a transformer
as well as Adam, and answers with two pieces:

* every weight matrix's gradient is normalised per output neuron: divided by
  its root mean square over the neuron's fan-in (a "column" of the paper's
  ``(in, out)`` matrices), so every neuron moves by the same amount whatever
  the scale of its gradient; no second moment is kept;
* first-order momentum only on the output layer, whose gradient is the
  noisiest; every other matrix uses the raw stochastic gradient.

Vectors (biases, norm scales) are trained with AdamW. The state is the output
head's momentum, Adam's two moments for the vectors, and one number per neuron
of every matrix (the last RMS, kept so that
`learning_rates` can show the applied rates).

Per unit $n$ (an output neuron) with direction $d$ ($g$, or the head's
momentum) and base rate $\eta_t$:

$$
\rho_{n,t} = \sqrt{\mathrm{mean}_{i \in n}\, d_{i,t}^2}, \qquad
u_{i,t} = \frac{\eta_t}{\max(\rho_{n,t}, \epsilon)}\, d_{i,t}.
$$

``max(rms, eps)`` is the reference's ``clamp_min(eps)`` (not ``rms + eps``).
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_neuronlr._src import engine
from optax_neuronlr._src import paths as paths_lib
from optax_neuronlr._src import user_warnings
from optax_neuronlr._src import validation
from optax_neuronlr._src.roles import axis_names as axis_names_lib
from optax_neuronlr._src.roles import kinds
from optax_neuronlr._src.roles import layout as layout_lib
from optax_neuronlr._src.roles import names as names_lib
from optax_neuronlr._src.rules import adam_mini as am
from optax_neuronlr._src.rules import moments
from optax_neuronlr._src.units import Neurons

HIDDEN = "hidden"
HEAD = "head"
VECTOR = "vector"
LABELS = (HIDDEN, HEAD, VECTOR)

HEAD_NAMES = names_lib.HEAD_NAMES


@dataclasses.dataclass(frozen=True)
class NeuronNorm(engine.Rule):
  r"""A rate per unit that normalises the direction's RMS over the unit.

  $\rho_t = \sqrt{\mathrm{mean}_{\text{unit}}\, d_t^2}$ (the last value only,
  no average over time; a non-finite $\rho_t$ keeps $\rho_{t-1}$) and rate
  $\eta_t / \max(\rho_t, \epsilon)$.
  """

  unit_stats = ("rms",)
  hyperparams = ("eps",)
  state_name = "ScaleByNeuronNormState"
  name = "neuron_norm"

  def observe(self, g, d, elements, hp):
    return (engine.abs_sq(d.astype(g.dtype)),)

  def update(self, stats, observed, hp, prev_hp, count):
    # A non-finite RMS (an overflowing direction) keeps the last finite one; this
    # also makes the update read the old statistic, so that a donated state
    # buffer is reused (jit drops unused inputs, and their donation with them).
    rms = jnp.sqrt(observed[0])
    return {"rms": jnp.where(jnp.isfinite(rms), rms, stats["rms"])}

  def rate(self, stats, hp, count):
    return hp["learning_rate"] / jnp.maximum(stats["rms"], hp["eps"])


ScaleByNeuronNormState = NeuronNorm().state_class()


def scale_by_neuron_norm(
    learning_rate: optax.ScalarOrSchedule,
    eps: float = 1e-8,
    *,
    granularity: Any = "neuron",
    neuron_axes: Any = None,
    axis_names: Any = None,
    state_dtype: Any = None,
    direction: Optional[optax.GradientTransformation] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Divides the direction by its RMS over each output neuron's fan-in.

  The normalisation of SCALE (Glentis et al., 2025): per unit $n$,

  $$
  \rho_{n,t} = \sqrt{\mathrm{mean}_{i \in n}\, d_{i,t}^2}, \qquad
  u_{i,t} = \frac{\eta_t}{\max(\rho_{n,t}, \epsilon)}\, d_{i,t},
  $$

  so every unit's update has RMS $\eta_t$ (unless $\rho < \epsilon$). No
  statistic is kept across steps; the state holds the last $\rho$ per unit,
  from which `learning_rates` recomputes the rates.

  With the default units (one per index of the last axis) a Flax ``(in,
  out)`` kernel is normalised per output neuron over its fan-in, a
  ``(vocab, d)`` embedding per feature over the vocabulary (as the
  reference does for embeddings), a 1-D leaf per element (sign descent: each
  element's $|d| / \rho = 1$).

  ``granularity``, ``neuron_axes``, ``axis_names``, ``state_dtype`` and ``direction``: the
  engine's shared arguments, see `scale_by_rule`.

  Args:
    learning_rate: $\eta$, a number or an optax schedule, first and required
      as in every ``scale_by_*`` of the package; 1.0 returns the normalised
      direction.
    eps: lower bound of $\rho$, ``> 0`` (guards all-zero units).
    state_dtype: dtype of the stored RMS.
    direction: the direction to normalise (e.g. a momentum,
      ``optax.ema(0.9, debias=False)``); None: the gradient.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` returning ``+u``; its state
    is a `ScaleByNeuronNormState`.
  """
  validation.check_range("eps", eps, low=0.0, low_open=True)
  return engine.scale_by_rule(
      NeuronNorm(), learning_rate, {"eps": eps}, granularity=granularity,
      neuron_axes=neuron_axes, axis_names=axis_names, state_dtype=state_dtype, direction=direction)


def neuron_norm_sgd(
    learning_rate: optax.ScalarOrSchedule,
    eps: float = 1e-8,
    *,
    granularity: Any = "neuron",
    neuron_axes: Any = None,
    axis_names: Any = None,
    state_dtype: Any = None,
    direction: Optional[optax.GradientTransformation] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Per-neuron normalised SGD on every leaf: `scale_by_neuron_norm`, negated.

  ``optax.chain(scale_by_neuron_norm(learning_rate, eps,
  ...), optax.scale(-1.0))``. Every leaf, 1-D ones included, is normalised
  (1-D leaves per element, i.e. sign descent, at the default units); for a
  transformer use `scale_sgd`, which trains vectors with AdamW.

  ``granularity``, ``neuron_axes``, ``axis_names``, ``state_dtype`` and ``direction``: the
  engine's shared arguments, see `scale_by_rule`.

  Args:
    learning_rate: $\eta$, a number or an optax schedule, ``>= 0``.
    eps: lower bound of the RMS, ``> 0``.
    state_dtype: dtype of the stored RMS.
    direction: the direction to normalise; None: the gradient.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import optax, optax_neuronlr as nlr
    >>> tx = nlr.neuron_norm_sgd(1e-2, direction=optax.ema(0.9, debias=False))
  """
  validation.check_rate("learning_rate", learning_rate)
  return optax.chain(
      scale_by_neuron_norm(learning_rate, eps, granularity=granularity,
                           neuron_axes=neuron_axes, axis_names=axis_names, state_dtype=state_dtype,
                           direction=direction),
      optax.scale(-1.0))


# ---------------------------------------------------------------------------
# SCALE for transformers: labels and units from paths and shapes.


def _units(layout: kinds.ModelLayout) -> dict[str, Any]:
  """Every leaf's output neurons by path: both head axes of a ``(d, heads,
  head_dim)`` query/key/value kernel, else the last axis; per layer in a stack."""
  return {l.path: Neurons(l.neuron_axes) if l.neuron_axes else "tensor"
          for l in layout.leaves}


def _label(role: kinds.LeafRole) -> str:
  core_ndim = len(role.shape) - len(role.batch_axes)
  name = role.path.split("/")[-1].lower()
  if core_ndim <= 1 or role.kind in (kinds.BIAS, kinds.NORM_SCALE) or name in ("bias",
                                                                                "scale"):
    return VECTOR
  return HEAD if role.kind == kinds.HEAD else HIDDEN


def scale_sgd_labels(params: Any, *, head: Any = None, axis_names: Any = None) -> Any:
  """`scale_sgd`'s label of each leaf: ``"hidden"``, ``"head"`` or ``"vector"``.

  * ``"vector"``: biases, norm scales and every leaf with at most one
    dimension besides its stack axes (the ``(heads, head_dim)`` biases of
    attention and the ``(layers, d)`` scales of a scanned stack included):
    AdamW;
  * ``"head"``: the output head's kernel: momentum, then normalised per
    output neuron (per token);
  * ``"hidden"``: every other leaf with two or more dimensions (attention,
    MLP and convolution kernels, embeddings): normalised, no momentum.

  Args:
    params: the parameter tree (arrays, ``jax.ShapeDtypeStruct``, Flax
      linen params or an NNX ``nnx.State``); only paths and shapes are read.
    head: which kernel is the output head. None (default): the head
      `model_layout` finds (the 2-D kernel of a module
      named ``lm_head``, ``head``, ``output``, ``classifier``, ... or a
      read-out ``out`` at the top of the tree; else the one top-level
      ``(d, vocab)`` kernel whose transpose is the shape of an
      ``embedding``; none in a tied model); a path selector (a regular
      expression matching a path or a ``/``-prefix of it); or False for none.
    axis_names: the model's logical axis names (see
      `model_layout`).

  Returns:
    A tree shaped like ``params``, of the strings above.
  """
  layout = layout_lib.model_layout(params, head=head, axis_names=axis_names)
  return layout.treedef.unflatten([_label(role) for role in layout.leaves])


class _Partition:
  """Labels and units of one `scale_sgd`, cached per tree signature.

  The layout is read once from the full tree (``optax.partition`` calls the
  labels on it); the units of each group's masked tree are looked up by path
  in it, so that they do not change with what the group holds.
  """

  def __init__(self, head: Any, axis_names: Any = None):
    self.head = head
    self.axis_names = axis_names
    self._cache: dict = {}
    self._units: dict[str, Any] = {}
    self._warned = False
    self._warner = user_warnings.OnceWarner()

  def _layout(self, tree: Any) -> tuple[Any, dict[str, Any]]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    key = (treedef, tuple(np.shape(x) for _, x in flat))
    try:
      return self._cache[key]
    except (KeyError, TypeError):
      pass
    layout = layout_lib.model_layout(tree, head=self.head, axis_names=self.axis_names)
    found = (layout.treedef.unflatten([_label(r) for r in layout.leaves]), _units(layout))
    try:
      self._cache[key] = found
    except TypeError:
      pass
    return found

  def labels(self, tree: Any) -> Any:
    labels, units = self._layout(tree)
    self._units = units
    return labels

  def units(self, tree: Any) -> Any:
    paths = paths_lib.leaf_paths(tree)
    if not all(p in self._units for p in paths):
      self._units = self._layout(tree)[1]
    flat, treedef = jax.tree_util.tree_flatten(tree)
    del flat
    return treedef.unflatten([self._units[p] for p in paths])

  def report(self, params: Any) -> None:
    layout = layout_lib.model_layout(params, head=self.head, axis_names=self.axis_names)
    guessed = [l for l in layout.leaves if user_warnings.changed_by_guess(l)]
    self._warner.warn([l.path for l in guessed],
                      user_warnings.guess_message("scale_sgd", guessed))
    if self.head is not None or self._warned:
      return
    if HEAD not in jax.tree.leaves(self.labels(params)):
      self._warned = True
      warnings.warn(
          "scale_sgd found no output head (no 2-D kernel of a module named one of "
          f"{sorted(HEAD_NAMES)}, nor one top-level (d, vocab) kernel matching an "
          "embedding): no leaf gets momentum. Pass head=<path regex>, or head=False to "
          "silence this.", UserWarning, stacklevel=user_warnings.user_stacklevel())


def scale_sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.9,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    *,
    adam_learning_rate: Optional[optax.ScalarOrSchedule] = None,
    b1: float = 0.9,
    b2: float = 0.999,
    adam_eps: float = 1e-8,
    adam_weight_decay: float = 0.0,
    head: Any = None,
    granularity: Any = None,
    state_dtype: Any = None,
    mu_dtype: Any = None,
    axis_names: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""SCALE (Glentis et al., 2025): per-neuron normalised SGD for transformers.

  Three groups of leaves (`scale_sgd_labels`), one
  ``optax.partition``:

  * ``"hidden"`` matrices (attention, MLP, embeddings): $u = \eta_t\, g /
    \max(\rho, \epsilon)$ with $\rho$ the RMS of $g$ over each output
    neuron's fan-in (`scale_by_neuron_norm`), no momentum;
  * the ``"head"`` (output layer): the same normalisation of the momentum
    $m_t = \mu m_{t-1} + (1 - \mu) g_t$ (the paper puts momentum only
    there, where the gradient is noisiest);
  * ``"vector"`` leaves (biases, norm scales): AdamW at
    ``adam_learning_rate`` (`scale_by_adam_mini` on element units,
    which is Adam).

  Decoupled weight decay $-\eta_t \lambda p$ on the matrices
  (``weight_decay``) and $-\eta^{adam}_t \lambda_{adam} p$ on the vectors
  (``adam_weight_decay``; the reference decays every parameter with one
  $\lambda$: pass ``adam_weight_decay=weight_decay`` for that). The state is
  the head's momentum, Adam's moments of the vectors and one number per
  neuron of each hidden matrix (the last RMS; about 0.002x AdamW's state on
  those matrices).

  Args:
    learning_rate: $\eta$ of the matrices, a number or an optax schedule,
      ``>= 0``. Each neuron's update has RMS $\eta$, as Adam's per element,
      so rates of Adam's order work.
    momentum: $\mu$ of the head's momentum, in ``[0, 1)``.
    eps: lower bound of $\rho$, ``> 0``.
    weight_decay: decoupled weight decay of the matrices, ``>= 0``.
    adam_learning_rate: AdamW's rate for the vectors, a number or a
      schedule; None (default): ``learning_rate``.
    b1: AdamW's first-moment decay, in ``[0, 1)``.
    b2: AdamW's second-moment decay, in ``[0, 1)``.
    adam_eps: AdamW's $\epsilon$, ``>= 0``.
    adam_weight_decay: decoupled weight decay of the vectors, ``>= 0``.
    head: which kernel is the output head: None (by name or shape, see
      `scale_sgd_labels`; a warning at ``init`` if none is found), a
      path selector, or False (none; no momentum anywhere).
    granularity: the matrices' units; None (default): one per output neuron
      (both head axes of a ``(d, heads, head_dim)`` query/key/value kernel,
      else the last axis); or any granularity of
      `scale_by_rule`.
    state_dtype: dtype of every statistic (momentum, Adam's moments, the
      RMS); None: float32 for bf16/f16 params, else the params' dtype.
    mu_dtype: dtype of the stored first moments (the head's momentum and
      the vectors' AdamW first moment; optax's ``mu_dtype``, the arithmetic
      in at least float32); None: as ``state_dtype``.
    axis_names: the model's logical axis names (``nn.get_partition_spec``,
      ``nnx.get_partition_spec``; see `model_layout`),
      for the labels and units: a scanned stack's units are per layer either
      way, read from the names rather than guessed.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    ``optax.partition`` state with the inner states ``"hidden"``, ``"head"``
    and ``"vector"``.

  Example:
    >>> import optax_neuronlr as nlr
    >>> tx = nlr.scale_sgd(1e-3)
    >>> # optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  """
  validation.check_rate("learning_rate", learning_rate)
  validation.check_beta("momentum", momentum)
  validation.check_range("weight_decay", weight_decay, low=0.0)
  validation.check_range("adam_weight_decay", adam_weight_decay, low=0.0)
  validation.check_range("adam_eps", adam_eps, low=0.0)
  validation.check_dtype("state_dtype", state_dtype)
  validation.check_dtype("mu_dtype", mu_dtype)
  if adam_learning_rate is None:
    adam_learning_rate = learning_rate
  else:
    validation.check_rate("adam_learning_rate", adam_learning_rate)
  validation.check_static("head", head, example="nlr.scale_sgd")
  validation.check_static("granularity", granularity, example="nlr.scale_sgd")
  validation.check_static("axis_names", axis_names, example="nlr.scale_sgd")
  axis_names_lib.check_axis_names(axis_names)
  if not (head is None or head is False or isinstance(head, (str, re.Pattern))):
    raise TypeError(f"head must be None, False or a path selector (a regular expression), "
                    f"got {type(head).__name__} {head!r}.")
  if isinstance(head, str):
    paths_lib.Selector(head, "head")  # An invalid regular expression fails here.
  partition = _Partition(head, axis_names)
  units = partition.units if granularity is None else granularity

  def normalised(direction):
    return optax.chain(
        scale_by_neuron_norm(learning_rate, eps, granularity=units,
                             state_dtype=state_dtype, direction=direction),
        moments.decoupled_weight_decay(learning_rate, weight_decay),
        optax.scale(-1.0))

  vector = optax.chain(
      am.scale_by_adam_mini(adam_learning_rate, b1, b2, adam_eps,
                            blocks="element", state_dtype=state_dtype,
                            mu_dtype=mu_dtype),
      moments.decoupled_weight_decay(adam_learning_rate, adam_weight_decay),
      optax.scale(-1.0))
  inner = optax.partition(
      {HIDDEN: normalised(None),
       HEAD: normalised(moments.first_moment(momentum, debias=False, state_dtype=state_dtype,
                                             mu_dtype=mu_dtype)),
       VECTOR: vector},
      partition.labels)

  def init_fn(params):
    partition.report(params)
    return inner.init(params)

  return optax.GradientTransformationExtraArgs(init_fn, inner.update)
