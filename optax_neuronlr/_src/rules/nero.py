r"""Nero (Liu, Bernstein, Meister and Yue, 2021), a rule that sees the weights.

"Learning by Turning: Neural Architecture Aware Optimisation" (ICML 2021,
arXiv:2102.07227; reference code ``nero.py`` of jxbz/nero, and the ``Nero``
of pytorch-optimizer 4.1.0, whose ``eps`` this module follows) trains every
output neuron $n$ of each matrix (a row of PyTorch's ``(out, in)`` weight, an
index of the output axes of a Flax kernel) by turning it: the gradient is
normalised by an EMA of the neuron's squared gradient norm and scaled by the
typical norm $s$ of the layer's neurons at initialisation, and each neuron's
weights are then kept at zero mean and unit norm:

$$
v_{n,t} = \beta v_{n,t-1} + (1 - \beta) \|g_{n,t}\|^2, \qquad
r_{n,t} = \frac{\eta_t\, s}{\sqrt{v_{n,t} / (1 - \beta^t)} + \epsilon},
$$

$$
w_{n,t} = P\big(w_{n,t-1} - r_{n,t}\, g_{n,t}\big), \qquad
P(x) = \frac{x - \bar x}{\|x - \bar x\| + \epsilon}.
$$

$s$ is the mean over the leaf's neurons of $\|P(w_{n,0})\|$ with the
constraints (about 1), else of $\|w_{n,0}\|$; 0.01 where that mean is 0 (a
zero-initialised bias). The weights are projected once before the first step
too, as the reference does at construction. Leaves whose units hold one
element (biases and other vectors, 0-d leaves: the reference's 1-D tensors)
have one unit per element, $\|g_n\| = |g_n|$, and no constraint.

Here `Nero` is a `Rule` (``weights=("norm",
"centered_norm")`` gives it $s$ on the first step), so the per-neuron rates
$r_n$ are what `learning_rates` reads; the projection
$P$ is `project_neurons`, the last transform of `nero`, so that
``optax.apply_updates(params, updates)`` gives the projected weights.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_neuronlr._src import engine
from optax_neuronlr._src import units as units_lib
from optax_neuronlr._src import validation

ZERO_SCALE = 0.01  # the reference's scale of a leaf whose neurons all have norm 0


@dataclasses.dataclass(frozen=True)
class Nero(engine.Rule):
  r"""Nero's per-neuron rate $\eta\, s / (\sqrt{v_n / (1 - \beta^t)} + \epsilon)$.

  Unit statistic ``exp_avg_sq`` ($v_n$, the EMA of the squared norm of the
  direction over the unit: ``reduce="sum"``), leaf statistic ``scale``
  ($s$, set on the leaf's first update from the weights: the mean norm of the
  projected neurons when ``constraints`` and the units hold more than one
  element, else the mean norm of the neurons; 0.01 where it is 0).
  """

  constraints: bool = True
  unit_stats = ("exp_avg_sq",)
  leaf_stats = ("scale",)
  weights = ("norm", "centered_norm")
  hyperparams = {"beta": 0.999, "eps": 1e-8}
  reduce = "sum"
  state_name = "ScaleByNeroState"
  name = "nero"

  def check_hyperparams(self, values):
    validation.check_beta("beta", values["beta"], allow_none=True)
    validation.check_range("eps", values["eps"], low=0.0, low_open=True, allow_none=True)

  def observe(self, g, d, elements, hp):
    return (engine.abs_sq(d.astype(g.dtype)),)

  def update(self, stats, observed, hp, prev_hp, count):
    b = hp["beta"]
    return {"exp_avg_sq": b * stats["exp_avg_sq"] + (1 - b) * observed[0]}

  def update_leaf(self, stats, observed, hp, count, leaf):
    if self.constraints and leaf.unit_size > 1:
      n = stats["weight_centered_norm"]
      norms = n / (n + hp["eps"])
    else:
      norms = stats["weight_norm"]
    first = jnp.mean(norms)
    first = jnp.where(first == 0, jnp.asarray(ZERO_SCALE, first.dtype), first)
    # Set once, on the leaf's first update: a scale of 0 is never kept (0.01
    # replaces it), so 0 means "not yet set", also for a leaf added mid-run
    # (nlr.add_param_group, nlr.rebuild_state) or a reset group.
    return {"scale": jnp.where(stats["scale"] == 0, first, stats["scale"])}

  def rate(self, stats, hp, count):
    b = hp["beta"]
    den = jnp.sqrt(stats["exp_avg_sq"] / (1 - b**count)) + hp["eps"]
    return hp["learning_rate"] * stats["scale"] / den


ScaleByNeroState = Nero().state_class()


class ProjectNeuronsState(NamedTuple):
  """State of `project_neurons`: the number of updates so far."""

  count: jax.Array


def _project(layout: units_lib.Layout, x: jax.Array, eps: Any) -> jax.Array:
  r"""$P(x)$ per unit: zero mean, norm $\|x - \bar x\| / (\|x - \bar x\| + \epsilon)$."""
  real = jnp.finfo(x.dtype).dtype
  centred = x - layout.expand(layout.mean(x, x.dtype))
  norm = jnp.sqrt(layout.sum(engine.abs_sq(centred), real))
  return centred / layout.expand(norm + jnp.asarray(eps, real))


def project_neurons(
    eps: float = 1e-8,
    *,
    neuron_axes: Any = None,
) -> optax.GradientTransformation:
  r"""Nero's constraint: ``params + updates`` with zero-mean, unit-norm neurons.

  Returns $P(w + u) - w$ for every leaf whose neurons hold more than one
  element, with $P(x) = (x - \bar x) / (\|x - \bar x\| + \epsilon)$ per
  output neuron, so that ``optax.apply_updates`` gives the projected weights;
  on the first update $w$ is projected first, $P(P(w) + u) - w$ (the
  reference projects the weights before its first step). Other leaves'
  updates are unchanged. Put it last in a chain: it reads the final update.

  Args:
    eps: $\epsilon$, ``> 0``.
    neuron_axes: which axes of each leaf index neurons, as in
      `scale_by_rule` with ``granularity="neuron"``
      (None: the output axes of `model_layout`).

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    `ProjectNeuronsState`; its ``update`` needs ``params``.
  """
  validation.check_range("eps", eps, low=0.0, low_open=True)
  units_lib.check_granularity("neuron", neuron_axes)

  def init_fn(params):
    del params
    return ProjectNeuronsState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("project_neurons reads the weights: call "
                       "tx.update(grads, state, params) with the current parameters.")
    layouts, treedef = units_lib.tree_layouts(updates, "neuron", neuron_axes)
    first = state.count == 0
    out = []
    for layout, u, p in zip(layouts, treedef.flatten_up_to(updates),
                            treedef.flatten_up_to(params)):
      if layout.size <= 1:
        out.append(u)
        continue
      dtype = jnp.promote_types(jnp.result_type(p), jnp.float32)
      w = jnp.asarray(p).astype(dtype)
      start = jnp.where(first, _project(layout, w, eps), w)
      new = _project(layout, start + jnp.asarray(u).astype(dtype), eps)
      out.append((new - w).astype(jnp.result_type(u)))
    return treedef.unflatten(out), ProjectNeuronsState(jnp.asarray(optax.safe_increment(state.count)))

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_nero(
    learning_rate: optax.ScalarOrSchedule,
    beta: float = 0.999,
    *,
    constraints: bool = True,
    eps: float = 1e-8,
    min_lr: float = 0.0,
    max_lr: float = math.inf,
    neuron_axes: Any = None,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Nero's per-neuron scaling of the gradient (Liu et al., 2021).

  Returns $+r_{n,t}\, g$ with
  $r_{n,t} = \eta_t s / (\sqrt{v_{n,t} / (1 - \beta^t)} + \epsilon)$, the
  `Nero` rule run by `scale_by_rule` with one
  unit per output neuron (one per element of vectors). Without the
  projection: `nero` chains `project_neurons` after it.

  Args:
    learning_rate: $\eta$, a number ``>= 0`` or a schedule.
    beta: decay of the per-neuron EMA of the squared gradient norm, in ``[0, 1)``.
    constraints: whether the weights are projected (`nero`); here it
      chooses the weight scale $s$: the projected neurons' norm (True) or the
      initial weights' (False).
    eps: $\epsilon$ of the denominator, ``> 0``.
    min_lr: lower clamp of $r_n$ (the engine's; see
      `scale_by_rule`).
    max_lr: upper clamp of $r_n$.
    neuron_axes: the neurons of each leaf, as in
      `scale_by_rule` (None: the model layout's output axes).
    state_dtype: dtype of ``exp_avg_sq`` and ``scale``; see
      `scale_by_rule`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    ``ScaleByNeroState``; its ``update`` needs ``params``.
  """
  validation.check_flag("constraints", constraints)
  return engine.scale_by_rule(
      Nero(constraints=constraints), learning_rate, {"beta": beta, "eps": eps},
      min_lr=min_lr, max_lr=max_lr, granularity="neuron", neuron_axes=neuron_axes, state_dtype=state_dtype)


def nero(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    beta: float = 0.999,
    *,
    constraints: bool = True,
    eps: float = 1e-8,
    neuron_axes: Any = None,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Nero (Liu, Bernstein, Meister and Yue, 2021, "Learning by Turning").

  Per output neuron $n$ of each matrix, with $s$ the mean norm of the
  leaf's (projected) neurons at the first step:

  $$
  v_{n,t} = \beta v_{n,t-1} + (1 - \beta) \|g_{n,t}\|^2, \quad
  w_{n,t} = P\Big(w_{n,t-1} - \frac{\eta_t\, s}{\sqrt{v_{n,t}/(1 - \beta^t)}
  + \epsilon}\, g_{n,t}\Big),
  $$

  $P$ centring each neuron and dividing it by its norm $+\,\epsilon$ (with
  ``constraints``; leaves with one element per unit, biases, are never
  projected and have one unit per element). ``chain(scale_by_nero,
  optax.scale(-1), project_neurons)``; agrees with pytorch-optimizer's
  ``Nero(lr, beta, constraints, eps, foreach=False)`` to float64 rounding
  (``python -m optax_neuronlr.parity --case nero``). The paper's claim is
  that the default rate, 0.01, trains many architectures untuned.

  A PyTorch weight with one input per neuron (``(out, 1)``) is projected by
  the reference to zero; here its units hold one element and it is not.

  Args:
    learning_rate: $\eta$, a number ``>= 0`` or a schedule.
    beta: decay of the per-neuron EMA, in ``[0, 1)``.
    constraints: project each neuron of every matrix to zero mean and unit norm.
    eps: $\epsilon$ of the denominator and of the projection, ``> 0``.
    neuron_axes: the neurons of each leaf (None: the model layout's output
      axes, the last axis of a Flax ``(in, out)`` kernel; ``0`` for PyTorch
      ``(out, in)`` weights).
    state_dtype: dtype of the per-neuron statistics.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its ``update`` needs ``params``.

  Example:
    >>> import optax_neuronlr as nlr
    >>> tx = nlr.nero()  # the paper's default rate, 0.01
  """
  validation.check_rate("learning_rate", learning_rate)
  steps = [scale_by_nero(learning_rate, beta, constraints=constraints, eps=eps,
                         neuron_axes=neuron_axes, state_dtype=state_dtype),
           optax.scale(-1.0)]
  if constraints:
    steps.append(project_neurons(eps, neuron_axes=neuron_axes))
  return optax.chain(*steps)
