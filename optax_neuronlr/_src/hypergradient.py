"""Learned per-unit learning rates: hypergradient descent (reference 001).

Reference 001 names "learned learning rates: the learning rates themselves are
treated as trainable parameters". Hypergradient descent (Baydin et al., ICLR
2018, "Online Learning Rate Adaptation with Hypergradient Descent") learns them
online: with ``theta_t = theta_{t-1} - alpha * d_{t-1}``, the derivative of the
loss at step ``t`` with respect to ``alpha`` is ``-<g_t, d_{t-1}>``, so one
gradient step on ``alpha`` adds ``hyper_lr * <g_t, d_{t-1}>``. It needs one
extra copy of the direction and one dot product per unit.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_neuronlr._src import engine
from optax_neuronlr._src import units as units_lib
from optax_neuronlr._src import validation

HD_GRANULARITIES = ("global",) + units_lib.GRANULARITIES


class HypergradientLRState(NamedTuple):
  """State of :func:`hypergradient_lr`.

  Attributes:
    count: number of updates.
    lr: the learned rates: a scalar for ``"global"`` granularity, else a tree
      of per-unit arrays shaped like the params' units.
    prev_direction: the direction ``d_{t-1}`` of the last update, per element.
    hyperparams: ``hyper_lr``, ``min_lr`` and ``max_lr`` of the last update.
    direction_state: the state of ``direction``.
    units: the axes each leaf's per-unit rates keep (static).
  """

  count: jax.Array
  lr: Any
  prev_direction: optax.Updates
  hyperparams: dict[str, jax.Array]
  direction_state: optax.OptState
  units: units_lib.UnitAxes


def _read(state: HypergradientLRState):
  """Rates per unit; the global rate is repeated for every leaf."""
  rates = state.lr
  if jax.tree.structure(rates) != jax.tree.structure(state.prev_direction):
    rates = jax.tree.map(lambda _: state.lr, state.prev_direction)
  hp = state.hyperparams
  return rates, hp["min_lr"], hp["max_lr"]


engine.register_state(
    HypergradientLRState, _read, unit_fields=("lr",), name="hypergradient_lr"
)


def _hypergradients(layouts, grads, prev, dtypes, multiplicative: bool):
  """Per unit: ``<g, d_prev>``, normalised by ``|g| |d_prev|`` if multiplicative."""
  dots, gg, dd = [], [], []
  for layout, g, d, dtype in zip(layouts, grads, prev, dtypes):
    g, d = g.astype(dtype), d.astype(dtype)
    dots.append(layout.sum(g * d, dtype))
    if multiplicative:
      gg.append(layout.sum(g * g, dtype))
      dd.append(layout.sum(d * d, dtype))
  return dots, gg, dd


def _normalised(dot, gg, dd):
  denom = jnp.sqrt(gg) * jnp.sqrt(dd)
  return jnp.where(denom > 0, dot / jnp.where(denom > 0, denom, 1), 0.0)


def hypergradient_lr(
    direction: optax.GradientTransformation,
    learning_rate: float,
    hyper_lr: float,
    *,
    granularity: str = "global",
    neuron_axes: units_lib.NeuronAxes = None,
    min_lr: float = 0.0,
    max_lr: float = math.inf,
    multiplicative: bool = False,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Learns the rate of any optax direction by hypergradient descent.

  With ``g_t`` the raw gradient and ``d_t`` = ``direction(g_t)``, per unit::

    h_t     = <g_t, d_{t-1}>                 (summed over the unit; d_0 = 0)
    alpha_t = clip(alpha_{t-1} + hyper_lr * h_t, min_lr, max_lr)
    u_t     = -alpha_t * d_t

  ``-h_t`` is the derivative of the loss at step ``t`` with respect to the
  unit's rate (Baydin et al., 2018), so the rate grows while successive
  directions agree with the gradient and shrinks when they oppose it. The first
  step leaves the rate at ``learning_rate``.

  ``multiplicative=True`` is the paper's multiplicative rule, which normalises
  the hypergradient so that ``hyper_lr`` is scale-free:
  ``alpha_t = alpha_{t-1} * (1 + hyper_lr * h_t / (|g_t| |d_{t-1}|))`` (norms
  over the unit; no change where either norm is zero).

  Args:
    direction: the optax transform giving the step direction, e.g.
      ``optax.identity()`` (SGD-HD) or ``optax.scale_by_adam()`` (Adam-HD).
    learning_rate: the initial rate ``alpha_0``, ``>= 0``.
    hyper_lr: the hypergradient step ``beta``, ``>= 0`` (the paper uses e.g.
      ``1e-3`` for SGD-HD and ``1e-7`` for Adam-HD on its tasks, with one
      global rate). ``h_t`` is a *sum* over the unit, so the same ``hyper_lr``
      moves a per-neuron or per-element rate far less than the global one;
      scale it up for finer granularities, or use ``multiplicative=True``,
      whose step does not depend on the unit's size.
    granularity: ``"global"`` (one rate for the whole model, the paper's
      form), ``"tensor"``, ``"neuron"`` or ``"element"``.
    neuron_axes: neuron axes for ``granularity="neuron"`` (see
      :func:`scale_by_grad_magnitude_lr`).
    min_lr: lower clamp of the rates, ``>= 0``.
    max_lr: upper clamp, ``>= min_lr`` (``inf``: none).
    multiplicative: use the multiplicative rule.
    state_dtype: dtype of the rates and the stored direction; None: float32
      for bf16/f16 params, else the params' dtype.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` returning ``-alpha * d``.
  """
  validation.check_rate("learning_rate", learning_rate)
  validation.check_range("hyper_lr", hyper_lr, low=0.0)
  validation.check_clamps(min_lr, max_lr)
  if granularity not in HD_GRANULARITIES:
    raise ValueError(
        f"granularity must be one of {HD_GRANULARITIES}, got {granularity!r}."
    )
  if not isinstance(direction, optax.GradientTransformation):
    raise TypeError(
        f"direction must be an optax.GradientTransformation, got {type(direction).__name__}."
    )
  direction = optax.with_extra_args_support(direction)
  unit_granularity = "tensor" if granularity == "global" else granularity

  def hd_scalars():
    return engine.scalars({"hyper_lr": hyper_lr, "min_lr": min_lr, "max_lr": max_lr})

  def init_fn(params):
    layouts, treedef = units_lib.tree_layouts(params, unit_granularity, neuron_axes)
    leaves = treedef.flatten_up_to(params)
    dtypes = [engine.stat_dtype(p.dtype, state_dtype) for p in leaves]
    hp = hd_scalars()
    if granularity == "global":
      lr = jnp.asarray(learning_rate, jnp.result_type(*dtypes) if dtypes else
                       engine.stat_dtype(jnp.float32, state_dtype))
    else:
      lr = treedef.unflatten(
          [jnp.full(l.unit_shape, learning_rate, dt) for l, dt in zip(layouts, dtypes)]
      )
    prev = treedef.unflatten(
        [jnp.zeros(p.shape, dt) for p, dt in zip(leaves, dtypes)]
    )
    return HypergradientLRState(
        count=jnp.zeros([], jnp.int32),
        lr=lr,
        prev_direction=prev,
        hyperparams=hp,
        direction_state=direction.init(params),
        units=units_lib.unit_axes(params, layouts, granularity),
    )

  def update_fn(updates, state, params=None, **extra_args):
    hp = hd_scalars()
    layouts, treedef = units_lib.tree_layouts(updates, unit_granularity, neuron_axes)
    grads = treedef.flatten_up_to(updates)
    prev = treedef.flatten_up_to(state.prev_direction)
    dtypes = [p.dtype for p in prev]
    d, direction_state = direction.update(
        updates, state.direction_state, params, **extra_args
    )
    dirs = treedef.flatten_up_to(d)
    dots, gg, dd = _hypergradients(layouts, grads, prev, dtypes, multiplicative)

    def step(alpha, dot, g2, d2):
      if multiplicative:
        new = alpha * (1 + hp["hyper_lr"] * _normalised(dot, g2, d2))
      else:
        new = alpha + hp["hyper_lr"] * dot
      return engine.clamp(new, hp).astype(alpha.dtype)

    if granularity == "global":
      total = lambda xs: sum(xs, jnp.zeros([], state.lr.dtype))
      lr = step(state.lr, total(dots), total(gg), total(dd))
      rates = [lr] * len(dirs)
    else:
      old = treedef.flatten_up_to(state.lr)
      rates = [
          step(a, dot, g2, d2)
          for a, dot, g2, d2 in zip(
              old, dots, gg or [None] * len(old), dd or [None] * len(old)
          )
      ]
      lr = treedef.unflatten(rates)
    outs = [
        (-layout.broadcast(r) * dk).astype(g.dtype)
        for layout, r, dk, g in zip(layouts, rates, dirs, grads)
    ]
    new_prev = [dk.astype(dt) for dk, dt in zip(dirs, dtypes)]
    return treedef.unflatten(outs), HypergradientLRState(
        count=optax.safe_increment(state.count),
        lr=lr,
        prev_direction=treedef.unflatten(new_prev),
        hyperparams=hp,
        direction_state=direction_state,
        units=state.units,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sgd_hd(
    learning_rate: float,
    hyper_lr: float,
    *,
    granularity: str = "global",
    neuron_axes: units_lib.NeuronAxes = None,
    min_lr: float = 0.0,
    max_lr: float = math.inf,
    multiplicative: bool = False,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """SGD-HD (Baydin et al., 2018, Algorithm 2): SGD with a learned rate.

  ``hypergradient_lr(optax.identity(), ...)``: ``h_t = <g_t, g_{t-1}>``.
  See :func:`hypergradient_lr` for the arguments.

  Example:
    >>> import optax_neuronlr as nlr
    >>> tx = nlr.sgd_hd(1e-2, hyper_lr=1e-3)
  """
  return hypergradient_lr(
      optax.identity(), learning_rate, hyper_lr, granularity=granularity,
      neuron_axes=neuron_axes, min_lr=min_lr, max_lr=max_lr,
      multiplicative=multiplicative, state_dtype=state_dtype,
  )


def adam_hd(
    learning_rate: float,
    hyper_lr: float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    granularity: str = "global",
    neuron_axes: units_lib.NeuronAxes = None,
    min_lr: float = 0.0,
    max_lr: float = math.inf,
    multiplicative: bool = False,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """Adam-HD (Baydin et al., 2018, Algorithm 3): Adam with a learned rate.

  ``hypergradient_lr(optax.scale_by_adam(b1, b2, eps), ...)``: ``h_t`` is the
  dot product of the gradient with Adam's previous bias-corrected direction
  ``m_hat / (sqrt(v_hat) + eps)``. See :func:`hypergradient_lr`.

  Example:
    >>> import optax_neuronlr as nlr
    >>> tx = nlr.adam_hd(1e-3, hyper_lr=1e-7)
  """
  validation.check_beta("b1", b1)
  validation.check_beta("b2", b2)
  validation.check_range("eps", eps, low=0.0)
  return hypergradient_lr(
      optax.scale_by_adam(b1, b2, eps), learning_rate, hyper_lr,
      granularity=granularity, neuron_axes=neuron_axes, min_lr=min_lr,
      max_lr=max_lr, multiplicative=multiplicative, state_dtype=state_dtype,
  )
