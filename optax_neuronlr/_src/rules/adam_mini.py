"""Adam-mini (Zhang et al. 2024, "Adam-mini"): the optimizer.

Adam-mini keeps Adam's first moment in full and one second moment per
*block*: the mean of ``g**2`` over the block, averaged over time. The blocks
come from `adam_mini_blocks`
(`optax_neuronlr._src.rules.adam_mini_blocks`: per head for query/key,
per output neuron elsewhere, per token for embeddings and the head, per layer
in a scanned stack); this module runs the optimizer on the rule engine:
`AdamMini` (the per-block second moment, a
`Rule`) with the first moment as its direction,
`scale_by_adam_mini` and `adam_mini` (with decoupled weight decay
and the learning rate, as ``optax.adamw``). Its reference is the PyTorch
package ``adam-mini==1.1.1``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax.numpy as jnp
import optax

from optax_neuronlr._src import engine
from optax_neuronlr._src import paths as paths_lib
from optax_neuronlr._src import validation
from optax_neuronlr._src.roles import axis_names as axis_names_lib
from optax_neuronlr._src.roles.kinds import ATTENTION_OUT  # noqa: F401  (the layout's kinds)
from optax_neuronlr._src.roles.kinds import BIAS  # noqa: F401
from optax_neuronlr._src.roles.kinds import EMBEDDING  # noqa: F401
from optax_neuronlr._src.roles.kinds import NORM_SCALE  # noqa: F401
from optax_neuronlr._src.roles.kinds import VALUE  # noqa: F401
from optax_neuronlr._src.rules import moments
# The partition lives in its own module; these names stay importable from here.
from optax_neuronlr._src.rules.adam_mini_blocks import adam_mini_blocks
from optax_neuronlr._src.rules.adam_mini_blocks import adam_mini_partition
from optax_neuronlr._src.rules.adam_mini_blocks import adam_mini_weight_decay_mask
from optax_neuronlr._src.rules.adam_mini_blocks import AdamMiniLeaf
from optax_neuronlr._src.rules.adam_mini_blocks import AdamMiniPartition
from optax_neuronlr._src.rules.adam_mini_blocks import AutoBlocks
from optax_neuronlr._src.rules.adam_mini_blocks import check_heads
from optax_neuronlr._src.rules.adam_mini_blocks import num_units
from optax_neuronlr._src.rules.adam_mini_blocks import OnUnrecognised
from optax_neuronlr._src.units import Blocks  # noqa: F401
from optax_neuronlr._src.units import Neurons  # noqa: F401
from optax_neuronlr._src.user_warnings import user_stacklevel as _user_stacklevel

__all__ = ["AdamMini", "ScaleByAdamMiniState", "scale_by_adam_mini", "adam_mini",
           "adam_mini_blocks", "adam_mini_partition", "adam_mini_weight_decay_mask",
           "AdamMiniLeaf", "AdamMiniPartition", "num_units", "OnUnrecognised",
           "_user_stacklevel"]


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

def _check_adam_args(b1: Any, b2: Any, eps: Any) -> None:
  validation.check_beta("b1", b1)
  validation.check_beta("b2", b2)
  validation.check_range("eps", eps, low=0.0)


def _decay_mask(axis_names: Any) -> Any:
  if axis_names is None:
    return adam_mini_weight_decay_mask
  return lambda params: adam_mini_weight_decay_mask(params, axis_names=axis_names)


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
    axis_names: Any = None,
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
  `learning_rates` reads.

  Args:
    learning_rate: $\eta$, a number or an optax schedule, first and required
      as in every ``scale_by_*`` of the package; 1.0 returns the
      preconditioned direction, as ``optax.scale_by_adam`` does
      (`adam_mini` passes its learning rate here, so that the rates
      read back are the applied ones).
    b1: decay of the first moment, in ``[0, 1)``.
    b2: decay of the second moment, in ``[0, 1)``.
    eps: added to the bias-corrected root of ``v``, ``>= 0``.
    blocks: the blocks. None (default): `adam_mini_blocks` of the
      params, read from their paths and shapes at ``init`` and on each trace
      of ``update`` (cached); or any ``granularity`` of
      `scale_by_rule`: a unit spec, a pytree of specs
      selected by path, or a callable ``params -> pytree of specs`` such as
      ``functools.partial(nlr.adam_mini_blocks, overrides={...})``.
    num_heads: attention heads, for fused ``(d, heads*head_dim)`` query/key
      kernels and fused q/k/v kernels; only with ``blocks=None``. An int:
      under ``optax.inject_hyperparams`` list it in ``static_args``.
    num_kv_heads: key/value heads under grouped-query attention (default
      ``num_heads``); only with ``blocks=None``.
    on_unrecognised: with ``blocks=None``, what ``init`` does about leaves
      that `adam_mini_blocks` does not recognise (kept as full Adam,
      one second moment per element): ``"warn"`` (default; one warning per
      optimizer, listing every such path), ``"error"`` (``ValueError``) or
      ``"ignore"``. `optimizer_layout` shows every
      leaf's units either way.
    state_dtype: dtype of the per-block second moment ``v`` (and of the
      first moment when ``mu_dtype`` is None); the engine's shared argument,
      see `scale_by_rule`.
    mu_dtype: dtype of the stored first moment $m$ (optax's ``mu_dtype``):
      the arithmetic stays in at least float32 and only the stored copy is
      rounded; None: as ``state_dtype``. ``"bfloat16"`` takes Adam-mini's
      state from about 0.5x to about 0.25x AdamW's for float32 params.
    axis_names: with ``blocks=None``, the model's logical axis names
      (``nn.get_partition_spec(variables)["params"]``,
      ``nnx.get_partition_spec(nnx.state(model, nnx.Param))``; see
      `model_layout`): roles, stack and expert axes read
      from them rather than guessed. Blocks are per layer in a stack either way.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` returning ``+u``; its state
    is a `ScaleByAdamMiniState`.
  """
  _check_adam_args(b1, b2, eps)
  validation.check_choice("on_unrecognised", on_unrecognised, ("warn", "error", "ignore"))
  for name, value in (("blocks", blocks), ("num_heads", num_heads),
                      ("num_kv_heads", num_kv_heads), ("axis_names", axis_names)):
    validation.check_static(name, value)
  validation.check_dtype("state_dtype", state_dtype)
  validation.check_dtype("mu_dtype", mu_dtype)
  axis_names_lib.check_axis_names(axis_names)
  if blocks is None:
    check_heads(num_heads, num_kv_heads)
    auto = AutoBlocks(num_heads, num_kv_heads, axis_names)
    granularity = auto
  else:
    if num_heads is not None or num_kv_heads is not None or axis_names is not None:
      raise ValueError(
          "num_heads and num_kv_heads are read only with blocks=None (and so is "
          "axis_names); with your own blocks, bind them there: blocks=functools.partial("
          "nlr.adam_mini_blocks, num_heads=..., axis_names=...).")
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
    axis_names: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adam-mini (Zhang et al., 2024): AdamW with one second moment per block.

  `scale_by_adam_mini`, decoupled weight decay and the learning rate,
  as ``optax.adamw``: with $u$ the update of `scale_by_adam_mini` at
  rate $\eta_t$ and $\lambda$ the weight decay,

  $$
  p_t = p_{t-1} - u_t - \eta_t \lambda\, p_{t-1} \cdot \mathrm{mask}.
  $$

  ``blocks=None`` reads the blocks from the params' axis names, paths and shapes
  (`adam_mini_blocks`), so ``nlr.adam_mini(1e-3)`` is right as it is for
  a Flax NNX or linen transformer built from the standard modules
  (``Embed``, ``MultiHeadAttention``, ``Linear``/``Dense``, ``LayerNorm``,
  ``RMSNorm``). The weight decay applies to kernels and embeddings, not to
  norm scales or biases (`adam_mini_weight_decay_mask`), as the
  reference ``adam-mini==1.1.1``, with which it agrees to 1e-10 in float64
  (``python -m optax_neuronlr.parity --case adam-mini``).

  Args:
    learning_rate: $\eta$, a number or an optax schedule, ``>= 0``.
    b1: decay of the first moment, in ``[0, 1)``.
    b2: decay of the per-block second moment, in ``[0, 1)``.
    eps: added to the bias-corrected root of ``v``, ``>= 0``.
    weight_decay: $\lambda$, ``>= 0``; decoupled (scaled by $\eta_t$, not by
      the adaptive rate).
    blocks: the blocks; see `scale_by_adam_mini`.
    num_heads: heads of fused attention kernels; see
      `scale_by_adam_mini` (list it in ``static_args`` of
      ``optax.inject_hyperparams``).
    num_kv_heads: key/value heads under grouped-query attention.
    on_unrecognised: ``"warn"``, ``"error"`` or ``"ignore"``; see
      `scale_by_adam_mini`.
    mask: where weight decay applies: a tree of bools shaped like the params,
      or a callable ``params -> tree``; None (default):
      `adam_mini_weight_decay_mask` (kernels and embeddings).
    state_dtype: dtype of the second moment (and of the first when
      ``mu_dtype`` is None); the engine's shared argument, see
      `scale_by_rule`.
    mu_dtype: dtype of the stored first moment (optax's ``mu_dtype``; the
      arithmetic stays in at least float32); None: as ``state_dtype``.
    axis_names: the model's logical axis names, for the blocks and the
      weight-decay mask; see `scale_by_adam_mini`.

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
          state_dtype=state_dtype, mu_dtype=mu_dtype, axis_names=axis_names),
      moments.decoupled_weight_decay(
          learning_rate, weight_decay,
          _decay_mask(axis_names) if mask is None else mask),
      optax.scale(-1.0),
  )


def _path_keys(path: Any) -> list[str]:
  """The keys of a JAX key path as strings (NNX's trailing ``.value`` dropped)."""
  where = paths_lib.path_str(path)
  return where.split("/") if where else []
