r"""Building blocks shared by Adam-mini and SCALE: a first moment and weight decay.

* `first_moment`: an EMA of the gradient, $m_t = \beta m_{t-1} + (1 -
  \beta) g_t$, optionally divided by $1 - \beta^t$, kept in the package's
  statistics dtype (float32 for bf16/f16 leaves unless ``state_dtype`` says
  otherwise), with ``optax.EmaState`` as its state. A rule takes it as its
  ``direction``. ``mu_dtype`` stores it in another dtype (optax's name).
* `decoupled_weight_decay`: adds $\eta_t \lambda p$ to the update, with
  $\eta_t$ a number or a schedule of the step count, for transforms whose
  output already carries the learning rate (AdamW's decay, $-\eta \lambda p$,
  once the alias negates the sum).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from optax._src import base  # pylint: disable=g-direct-tensorflow-import

from optax_neuronlr._src import engine


def _leaf_dtype(p: Any) -> jnp.dtype:
  """A leaf's dtype: Python-float leaves too, as optax; ShapeDtypeStructs
  (``jax.eval_shape``) as arrays."""
  return p.dtype if hasattr(p, "dtype") else jnp.asarray(p).dtype


def _moment_dtype(p: Any, state_dtype: Any) -> jnp.dtype:
  """The statistics dtype, complex for complex leaves (a moment keeps the
  imaginary part of the gradient)."""
  dtype = _leaf_dtype(p)
  return engine.element_dtype(dtype, engine.stat_dtype(dtype, state_dtype))


def first_moment(
    decay: Any, *, debias: bool, state_dtype: Any = None, mu_dtype: Any = None
) -> optax.GradientTransformation:
  r"""EMA of the updates, $m_t = \beta m_{t-1} + (1 - \beta) g_t$.

  Returns $m_t / (1 - \beta^t)$ with ``debias``, else $m_t$. ``decay`` may be
  traced (``optax.inject_hyperparams``).

  Dtypes: with ``mu_dtype=None`` the EMA is kept, computed and returned in
  ``engine.stat_dtype(leaf dtype, state_dtype)``. With ``mu_dtype`` (optax's
  name and meaning, as in ``optax.scale_by_adam``): the stored $m$ is in
  ``mu_dtype``, the arithmetic is in at least float32 (the statistics dtype
  promoted with float32), and the step uses the unrounded $m_t$; only the
  stored copy is rounded, $m^{\mathrm{stored}}_t = \mathrm{cast}(m_t)$. A
  bfloat16 ``mu_dtype`` halves the moment's bytes for float32 params.
  """
  mu_dtype = None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype)

  def stored(p):
    if mu_dtype is None:
      return _moment_dtype(p, state_dtype)
    return engine.element_dtype(_leaf_dtype(p), mu_dtype)  # complex stays complex

  def compute(g, m):
    if mu_dtype is None:
      return m.dtype
    return engine.element_dtype(_leaf_dtype(g), jnp.promote_types(
        engine.stat_dtype(_leaf_dtype(g), state_dtype), jnp.float32))

  def init_fn(params):
    return optax.EmaState(
        count=jnp.zeros([], jnp.int32),
        ema=jax.tree.map(  # zeros_like keeps the params' shardings (explicit meshes)
            lambda p: jnp.zeros_like(p, dtype=stored(p)), params))

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)

    def ema_of(g, m):
      dtype = compute(g, m)
      m = m.astype(dtype)
      return (decay * m + (1 - decay) * jnp.asarray(g, dtype)).astype(dtype)

    ema = jax.tree.map(ema_of, updates, state.ema)
    if debias:
      out = jax.tree.map(lambda m: (m / (1 - decay**count)).astype(m.dtype), ema)
    else:
      out = ema
    kept = jax.tree.map(lambda m, old: m.astype(old.dtype), ema, state.ema)
    return out, optax.EmaState(count=count, ema=kept)

  return optax.GradientTransformation(init_fn, update_fn)


def decoupled_weight_decay(
    learning_rate: optax.ScalarOrSchedule, weight_decay: Any, mask: Any = None
) -> optax.GradientTransformation:
  r"""Adds $\eta_t \lambda p$ to the updates (where ``mask`` is True).

  $\eta_t$ is ``learning_rate`` (a number, or a schedule evaluated at the step
  count before the update, as ``optax.scale_by_learning_rate``). The state is
  an ``optax.ScaleByScheduleState`` whether or not the rate is a schedule, so
  that ``optax.inject_hyperparams`` (which turns a number into a traced value)
  sees the same structure.
  """

  def init_fn(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(base.NO_PARAMS_MSG)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    scale = lr * weight_decay
    updates = jax.tree.map(lambda g, p: (g + scale * p).astype(g.dtype), updates, params)
    return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

  tx = optax.GradientTransformation(init_fn, update_fn)
  return tx if mask is None else optax.masked(tx, mask)


def keep_dtypes(new_updates: Any, updates: Any, new_state: Any, state: Any) -> tuple[Any, Any]:
  """``new_updates`` in the dtypes of ``updates``, ``new_state`` in those of
  ``state``.

  optax's own transforms (``optax.adamw``, ``optax.scale_by_learning_rate``)
  compute in the promotion of a leaf's dtype and the hyperparameters'. Python
  numbers are weakly typed and keep bfloat16 leaves bfloat16; the float32
  arrays of ``optax.inject_hyperparams(..., hyperparam_dtype=jnp.float32)``
  (and of ``nlr.param_groups``) would turn bfloat16 updates and moments into
  float32, and a jitted step would retrace on the state's new dtypes.
  """
  return optax.tree.cast_like(new_updates, updates), optax.tree.cast_like(new_state, state)
