"""Reference ``004_07f92684a478e55a.txt`` (TensorFlow) in optax.

TensorFlow is not a dependency, so the document's recipes are restated with
optax; Keras' ``Adam()`` is ``optax.adam(1e-3, eps=1e-7)`` here (Keras' default
rate and epsilon; Keras adds epsilon to ``sqrt(v)`` before the bias correction,
optax after it, a difference of the order of ``eps / |g|``).

* Example 1, separate optimizers: ``Adam(lr1)`` on ``var1`` and ``Adam(lr2)``
  on ``var2``. Each variable gets its own rate: `per_variable_adam`.
* Example 2 (and Example 3, the same under ``tf.function``): gradients scaled by
  ``lr1`` and ``lr2``, then one ``Adam()``: `scaled_gradients_adam`. Adam
  divides the first moment by the root of the second, so a constant scale of a
  variable's gradient cancels (up to ``eps``): both variables move at Adam's
  default rate ``1e-3`` as if nothing had been scaled, not at ``lr1``/``lr2``.
  The scale must come *after* the adaptive step (`adam_then_scale`), or
  the variables must get separate optimizers (``optax.multi_transform``).

`toy_problem` runs the document's own problem (``var1 = 1``, ``var2 = 2``,
loss ``var1**2 + var2**2``, 100 steps) with all three.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

import optax_neuronlr as nlr

KERAS_LEARNING_RATE = 1e-3
KERAS_EPSILON = 1e-7


def _multipliers(rates: Mapping[str, float]):
  """``params -> {group: {leaf: rate}}``: one rate for all leaves under a key."""
  return lambda params: {k: jax.tree.map(lambda _: rates[k], v) for k, v in params.items()}


def per_variable_adam(rates: Mapping[str, float], eps: float = KERAS_EPSILON
                      ) -> optax.GradientTransformation:
  """004 Example 1 (the intended rates): ``Adam(rates[k])`` on top-level key ``k``."""
  return optax.multi_transform(
      {k: optax.adam(lr, eps=eps) for k, lr in rates.items()},
      nlr.path_labels({rf"{k}(/.*)?": k for k in rates}),
  )


def scaled_gradients_adam(rates: Mapping[str, float],
                          learning_rate: float = KERAS_LEARNING_RATE,
                          eps: float = KERAS_EPSILON) -> optax.GradientTransformation:
  """004 Example 2 as written: ``g_k <- rates[k] * g_k``, then one Adam."""
  return optax.chain(nlr.scale_by_leaf(_multipliers(rates)),
                     optax.adam(learning_rate, eps=eps))


def adam_then_scale(rates: Mapping[str, float], eps: float = KERAS_EPSILON
                    ) -> optax.GradientTransformation:
  """004 Example 2 done right: Adam's direction, then ``rates[k]`` per variable."""
  return optax.chain(optax.scale_by_adam(eps=eps), nlr.scale_by_leaf(_multipliers(rates)),
                     optax.scale(-1.0))


TOY_RATES = {"var1": 0.01, "var2": 0.1}


def toy_problem(steps: int = 100) -> dict[str, dict[str, float]]:
  """The document's problem: ``var1 = 1, var2 = 2``, loss ``var1**2 + var2**2``.

  Returns:
    ``{recipe: {"var1": final value, "var2": final value}}`` for ``"ex1
    separate Adams"``, ``"ex2 scaled grads, one Adam"``, ``"one Adam, no
    scaling"`` and ``"nlr: Adam then scale_by_leaf"``, in float32.
  """
  recipes = {
      "ex1 separate Adams (intended)": per_variable_adam(TOY_RATES),
      "ex2 scaled grads, one Adam (as written)": scaled_gradients_adam(TOY_RATES),
      "one Adam(1e-3), no scaling": optax.adam(KERAS_LEARNING_RATE, eps=KERAS_EPSILON),
      "nlr: Adam, then scale_by_leaf": adam_then_scale(TOY_RATES),
  }
  loss = lambda p: p["var1"] ** 2 + p["var2"] ** 2
  out = {}
  for name, tx in recipes.items():
    params: Any = {"var1": jnp.asarray(1.0), "var2": jnp.asarray(2.0)}
    state = tx.init(params)

    @jax.jit
    def step(params, state, tx=tx):
      updates, state = tx.update(jax.grad(loss)(params), state, params)
      return optax.apply_updates(params, updates), state

    for _ in range(steps):
      params, state = step(params, state)
    out[name] = {k: float(v) for k, v in params.items()}
  return out


def format_toy(results: Mapping[str, Mapping[str, float]], steps: int = 100) -> str:
  """`toy_problem`'s results as a Markdown table."""
  lines = [f"| 004 on its own problem ({steps} steps from var1=1, var2=2) | var1 | var2 |",
           "| --- | --- | --- |"]
  lines += [f"| {name} | {v['var1']:.4f} | {v['var2']:.4f} |" for name, v in results.items()]
  return "\n".join(lines)
