"""The three neuron-specific strategies of reference 000.

Each is a short :class:`~optax_neuronlr._src.engine.Rule`; the engine supplies
granularity, clamps, schedules, dtypes and ``direction``. Every transform
``scale_by_<name>`` returns ``+rate * d`` and every alias ``<name>`` chains it
with ``optax.scale(-1.0)``, as ``optax.scale_by_rprop`` / ``optax.rprop`` do.

Notation, per unit ``i`` at step ``t``: ``m_t = mean_{unit}|g_t|``,
``s_t = mean_{unit} sign(g_t)``, ``eta_t`` the base learning rate (a number or
a schedule at step ``t - 1``), ``clip`` the clamp to ``[min_lr, max_lr]``.

Reference: ``000_9458a9ec8aeb2db5.txt`` ("How can I implement a dynamic
neuron-specific learning rate in PyTorch?"), Examples 1-3.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optax_neuronlr._src import engine
from optax_neuronlr._src import units as units_lib
from optax_neuronlr._src import validation


def _abs(g: jax.Array) -> tuple[jax.Array]:
  return (jnp.abs(g),)


def _abs_and_sign(g: jax.Array) -> tuple[jax.Array, jax.Array]:
  return jnp.abs(g), jnp.sign(g)


def _zeros(n: int):
  def init(shape, dtype, hp):
    del hp
    return tuple(jnp.zeros(shape, dtype) for _ in range(n))

  return init


def _ema(old: jax.Array, new: jax.Array, beta: jax.Array) -> jax.Array:
  return beta * old + (1 - beta) * new


def _debias(ema: jax.Array, beta: jax.Array, on: jax.Array, count) -> jax.Array:
  """``ema / (1 - beta**t)`` when bias correction is on, else ``ema``.

  The divisor is a scalar, and exactly 1 when the correction is off, so the
  default path is bitwise the reference's.
  """
  return ema / jnp.where(on > 0, 1 - beta**count, 1.0)


def _alias(scale_by: optax.GradientTransformationExtraArgs):
  return optax.chain(scale_by, optax.scale(-1.0))


# ---------------------------------------------------------------------------
# Example 1: rate accumulated from gradient magnitude.


class ScaleByGradMagnitudeLRState(NamedTuple):
  """State of :func:`scale_by_grad_magnitude_lr`."""

  count: jax.Array
  lr: optax.Updates
  hyperparams: dict[str, jax.Array]
  direction_state: optax.OptState
  units: units_lib.UnitAxes


def _magnitude_init(shape, dtype, hp):
  # A copy: for a 0-d leaf `full` would return the hyperparameter scalar itself,
  # and two state fields sharing one buffer break donation.
  return (jnp.array(jnp.full(shape, hp["learning_rate"], dtype), copy=True),)


def _magnitude_update(stats, observed, hp, previous_hp, count):
  del count
  (lr,), (m,) = stats, observed
  shift = hp["learning_rate"] - previous_hp["learning_rate"]
  return (engine.clamp(lr + shift + hp["alpha"] * m, hp),)


_MAGNITUDE = engine.register(
    engine.Rule(
        name="grad_magnitude_lr",
        state_cls=ScaleByGradMagnitudeLRState,
        stat_names=("lr",),
        observe=_abs,
        init=_magnitude_init,
        update=_magnitude_update,
        rate=lambda stats, hp, count: stats[0],
    )
)


def scale_by_grad_magnitude_lr(
    learning_rate: optax.ScalarOrSchedule,
    alpha: float = 0.01,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    *,
    granularity: str = "element",
    neuron_axes: units_lib.NeuronAxes = None,
    state_dtype: Any = None,
    direction: Optional[optax.GradientTransformation] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Per-unit rates that grow with the gradient magnitude (000, Example 1).

  Each unit keeps its own rate, starting at ``eta_0``; every step adds
  ``alpha`` times the unit's mean absolute gradient, then clamps:

  .. math::

    \mathrm{lr}_{i,t} = \mathrm{clip}(\mathrm{lr}_{i,t-1}
        + (\eta_t - \eta_{t-1}) + \alpha\, m_{i,t}), \qquad
    u_{i,t} = \mathrm{lr}_{i,t}\, d_{i,t}.

  With a constant ``learning_rate`` the shift ``eta_t - eta_{t-1}`` is zero and
  the rule is the reference code step for step; with a schedule (or a rate
  changed through ``optax.inject_hyperparams``) every unit's rate follows the
  change of the base rate, on top of what it has accumulated.

  Text versus code: the reference's *text* says a small gradient raises the
  rate and a large one lowers it; its *code* adds ``alpha * |g|``, so the rate
  only grows, fastest where gradients are large. This transform follows the
  code (a test pins that direction). Over a long run every unit drifts up to
  ``max_lr``: keep ``max_lr`` modest.

  Args:
    learning_rate: initial (base) rate ``eta``, a number or an optax schedule.
    alpha: growth per unit of mean absolute gradient, ``>= 0``.
    min_lr: lower clamp of every unit's rate, ``>= 0``.
    max_lr: upper clamp, ``>= min_lr`` (``inf`` disables it).
    granularity: ``"element"`` (the reference), ``"neuron"`` or ``"tensor"``.
    neuron_axes: which axes index neurons, for ``granularity="neuron"``: an
      int or a tuple of ints (several axes) for all leaves, a pytree of them
      (lists and dicts are containers; a spec for a sub-tree's path covers all
      its leaves), or a callable ``params -> pytree``; None means the last
      axis (Flax ``(in, out)`` kernels), use ``0`` for PyTorch ``(out, in)``
      weights. Under
      ``optax.inject_hyperparams`` list a callable here in ``static_args``.
    state_dtype: dtype of the per-unit rates; None keeps the leaf's dtype, or
      float32 for bf16/f16 leaves.
    direction: optax transform whose output the rates scale (e.g.
      ``optax.scale_by_adam()``); None scales the gradient itself.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` returning ``+lr * d``.
  """
  validation.check_range("alpha", alpha, low=0.0)
  return engine.scale_by_rule(
      _MAGNITUDE,
      learning_rate,
      {"alpha": alpha},
      min_lr=min_lr,
      max_lr=max_lr,
      granularity=granularity,
      neuron_axes=neuron_axes,
      state_dtype=state_dtype,
      direction=direction,
  )


def grad_magnitude_lr(
    learning_rate: optax.ScalarOrSchedule,
    alpha: float = 0.01,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    *,
    granularity: str = "element",
    neuron_axes: units_lib.NeuronAxes = None,
    state_dtype: Any = None,
    direction: Optional[optax.GradientTransformation] = None,
) -> optax.GradientTransformationExtraArgs:
  """Optimizer of 000 Example 1: ``-lr * g`` with :func:`scale_by_grad_magnitude_lr`.

  See :func:`scale_by_grad_magnitude_lr` for the rule and the arguments.

  Example:
    >>> import optax_neuronlr as nlr
    >>> tx = nlr.grad_magnitude_lr(1e-3, alpha=0.01, granularity="neuron")
  """
  return _alias(
      scale_by_grad_magnitude_lr(
          learning_rate, alpha, min_lr, max_lr, granularity=granularity,
          neuron_axes=neuron_axes, state_dtype=state_dtype, direction=direction,
      )
  )


# ---------------------------------------------------------------------------
# Example 2: rate inversely proportional to an EMA of the gradient magnitude.


class ScaleByGradHistoryLRState(NamedTuple):
  """State of :func:`scale_by_grad_history_lr`."""

  count: jax.Array
  grad_ema: optax.Updates
  hyperparams: dict[str, jax.Array]
  direction_state: optax.OptState
  units: units_lib.UnitAxes


def _history_update(stats, observed, hp, previous_hp, count):
  del previous_hp, count
  return (_ema(stats[0], observed[0], hp["beta"]),)


def _history_rate(stats, hp, count):
  ema = _debias(stats[0], hp["beta"], hp["bias_correction"], count)
  return hp["learning_rate"] * (1.0 / (ema + hp["eps"]))


_HISTORY = engine.register(
    engine.Rule(
        name="grad_history_lr",
        state_cls=ScaleByGradHistoryLRState,
        stat_names=("grad_ema",),
        observe=_abs,
        init=_zeros(1),
        update=_history_update,
        rate=_history_rate,
    )
)


def scale_by_grad_history_lr(
    learning_rate: optax.ScalarOrSchedule,
    beta: float = 0.9,
    eps: float = 1e-8,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    *,
    bias_correction: bool = False,
    granularity: str = "element",
    neuron_axes: units_lib.NeuronAxes = None,
    state_dtype: Any = None,
    direction: Optional[optax.GradientTransformation] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Per-unit rates from an EMA of the gradient magnitude (000, Example 2).

  .. math::

    v_{i,t} = \beta\, v_{i,t-1} + (1 - \beta)\, m_{i,t}, \qquad
    \mathrm{lr}_{i,t} = \mathrm{clip}\Big(\eta_t \cdot
        \frac{1}{\hat v_{i,t} + \epsilon}\Big), \qquad
    u_{i,t} = \mathrm{lr}_{i,t}\, d_{i,t},

  with ``v_0 = 0`` and ``\hat v_t = v_t`` (the reference), or
  ``\hat v_t = v_t / (1 - \beta^t)`` with ``bias_correction=True``.

  Known weak spots of the reference defaults: without bias correction the
  first step's rate is about ``10 * eta / |g|``, and with ``max_lr=1.0`` the
  rate of small-gradient units sits at ``max_lr`` (plain SGD at rate 1). Use
  ``bias_correction=True`` and a ``max_lr`` suited to the model, and watch the
  clamp fractions of :func:`optax_neuronlr.rate_summary`.

  Args:
    learning_rate: base rate ``eta``, a number or an optax schedule.
    beta: EMA decay in ``[0, 1)``.
    eps: added to the EMA before inverting, ``> 0``.
    min_lr: lower clamp of every unit's rate, ``>= 0``.
    max_lr: upper clamp, ``>= min_lr`` (``inf`` disables it).
    bias_correction: divide the EMA by ``1 - beta**t`` (not in the reference).
    granularity: ``"element"`` (the reference), ``"neuron"`` or ``"tensor"``.
    neuron_axes: neuron axes; see :func:`scale_by_grad_magnitude_lr`.
    state_dtype: dtype of the EMA; None keeps the leaf's (float32 for half).
    direction: optax transform whose output the rates scale; None = gradient.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` returning ``+lr * d``.
  """
  validation.check_beta("beta", beta)
  validation.check_range("eps", eps, low=0.0, low_open=True)
  return engine.scale_by_rule(
      _HISTORY,
      learning_rate,
      {"beta": beta, "eps": eps, "bias_correction": float(bool(bias_correction))},
      min_lr=min_lr,
      max_lr=max_lr,
      granularity=granularity,
      neuron_axes=neuron_axes,
      state_dtype=state_dtype,
      direction=direction,
  )


def grad_history_lr(
    learning_rate: optax.ScalarOrSchedule,
    beta: float = 0.9,
    eps: float = 1e-8,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    *,
    bias_correction: bool = False,
    granularity: str = "element",
    neuron_axes: units_lib.NeuronAxes = None,
    state_dtype: Any = None,
    direction: Optional[optax.GradientTransformation] = None,
) -> optax.GradientTransformationExtraArgs:
  """Optimizer of 000 Example 2: ``-lr * g`` with :func:`scale_by_grad_history_lr`.

  See :func:`scale_by_grad_history_lr` for the rule and the arguments.

  Example:
    >>> import optax_neuronlr as nlr
    >>> tx = nlr.grad_history_lr(1e-3, bias_correction=True, max_lr=0.1)
  """
  return _alias(
      scale_by_grad_history_lr(
          learning_rate, beta, eps, min_lr, max_lr,
          bias_correction=bias_correction, granularity=granularity,
          neuron_axes=neuron_axes, state_dtype=state_dtype, direction=direction,
      )
  )


# ---------------------------------------------------------------------------
# Example 3: Example 2 times (1 + |EMA of the gradient sign|).


class ScaleBySignConsistencyLRState(NamedTuple):
  """State of :func:`scale_by_sign_consistency_lr`."""

  count: jax.Array
  grad_ema: optax.Updates
  sign_ema: optax.Updates
  hyperparams: dict[str, jax.Array]
  direction_state: optax.OptState
  units: units_lib.UnitAxes


def _sign_update(stats, observed, hp, previous_hp, count):
  del previous_hp, count
  (v, s), (m, sg) = stats, observed
  return _ema(v, m, hp["beta"]), _ema(s, sg, hp["sign_beta"])


def _sign_rate(stats, hp, count):
  on = hp["bias_correction"]
  v = _debias(stats[0], hp["beta"], on, count)
  s = _debias(stats[1], hp["sign_beta"], on, count)
  return hp["learning_rate"] * (1.0 / (v + hp["eps"]) * (1 + jnp.abs(s)))


_SIGN = engine.register(
    engine.Rule(
        name="sign_consistency_lr",
        state_cls=ScaleBySignConsistencyLRState,
        stat_names=("grad_ema", "sign_ema"),
        observe=_abs_and_sign,
        init=_zeros(2),
        update=_sign_update,
        rate=_sign_rate,
    )
)


def scale_by_sign_consistency_lr(
    learning_rate: optax.ScalarOrSchedule,
    beta: float = 0.9,
    sign_beta: float = 0.9,
    eps: float = 1e-8,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    *,
    bias_correction: bool = False,
    granularity: str = "element",
    neuron_axes: units_lib.NeuronAxes = None,
    state_dtype: Any = None,
    direction: Optional[optax.GradientTransformation] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Per-unit rates from gradient magnitude and sign consistency (000, Ex. 3).

  .. math::

    v_{i,t} = \beta v_{i,t-1} + (1-\beta) m_{i,t}, \qquad
    c_{i,t} = \beta_s c_{i,t-1} + (1-\beta_s) s_{i,t},

    \mathrm{lr}_{i,t} = \mathrm{clip}\Big(\eta_t \cdot
        \frac{1}{\hat v_{i,t} + \epsilon}\,(1 + |\hat c_{i,t}|)\Big), \qquad
    u_{i,t} = \mathrm{lr}_{i,t}\, d_{i,t},

  with ``v_0 = c_0 = 0``; ``\hat v, \hat c`` are the EMAs themselves (the
  reference) or divided by ``1 - beta**t`` and ``1 - sign_beta**t`` with
  ``bias_correction=True``. ``|c|`` near 1 means the unit's gradient kept its
  sign (up to twice the rate of :func:`scale_by_grad_history_lr`); near 0, that
  it oscillated. At neuron granularity ``s`` is the mean sign over the fan-in.
  The reference calls ``sign_beta`` ``sign_memory``.

  Args:
    learning_rate: base rate ``eta``, a number or an optax schedule.
    beta: decay of the magnitude EMA, in ``[0, 1)``.
    sign_beta: decay of the sign EMA, in ``[0, 1)``.
    eps: added to the magnitude EMA before inverting, ``> 0``.
    min_lr: lower clamp of every unit's rate, ``>= 0``.
    max_lr: upper clamp, ``>= min_lr`` (``inf`` disables it).
    bias_correction: debias both EMAs as Adam does (not in the reference).
    granularity: ``"element"`` (the reference), ``"neuron"`` or ``"tensor"``.
    neuron_axes: neuron axes; see :func:`scale_by_grad_magnitude_lr`.
    state_dtype: dtype of the EMAs; None keeps the leaf's (float32 for half).
    direction: optax transform whose output the rates scale; None = gradient.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` returning ``+lr * d``.
  """
  validation.check_beta("beta", beta)
  validation.check_beta("sign_beta", sign_beta)
  validation.check_range("eps", eps, low=0.0, low_open=True)
  return engine.scale_by_rule(
      _SIGN,
      learning_rate,
      {
          "beta": beta,
          "sign_beta": sign_beta,
          "eps": eps,
          "bias_correction": float(bool(bias_correction)),
      },
      min_lr=min_lr,
      max_lr=max_lr,
      granularity=granularity,
      neuron_axes=neuron_axes,
      state_dtype=state_dtype,
      direction=direction,
  )


def sign_consistency_lr(
    learning_rate: optax.ScalarOrSchedule,
    beta: float = 0.9,
    sign_beta: float = 0.9,
    eps: float = 1e-8,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    *,
    bias_correction: bool = False,
    granularity: str = "element",
    neuron_axes: units_lib.NeuronAxes = None,
    state_dtype: Any = None,
    direction: Optional[optax.GradientTransformation] = None,
) -> optax.GradientTransformationExtraArgs:
  """Optimizer of 000 Example 3: ``-lr * g`` with :func:`scale_by_sign_consistency_lr`.

  See :func:`scale_by_sign_consistency_lr` for the rule and the arguments.

  Example:
    >>> import optax, optax_neuronlr as nlr
    >>> tx = nlr.sign_consistency_lr(1e-3, granularity="neuron",
    ...                              direction=optax.scale_by_adam())
  """
  return _alias(
      scale_by_sign_consistency_lr(
          learning_rate, beta, sign_beta, eps, min_lr, max_lr,
          bias_correction=bias_correction, granularity=granularity,
          neuron_axes=neuron_axes, state_dtype=state_dtype, direction=direction,
      )
  )
