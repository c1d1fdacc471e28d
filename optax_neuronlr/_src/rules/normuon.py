r"""NorMuon (Li et al., 2025): Muon with a per-neuron second moment, as a rule.

NorMuon ("NorMuon: Making Muon more efficient and scalable", arXiv:2510.05491;
reference code ``normuon_update`` of the authors' repository
zichongli5/NorMuon) keeps Muon's orthogonalised momentum $O_t$ of each hidden
matrix and normalises it per output neuron $n$ (a row of PyTorch's
``(out, in)`` weight, an index of the output axes of a Flax kernel) by an EMA
of the neuron's mean square, then rescales the matrix back to $O_t$'s
Frobenius norm:

$$
v_{n,t} = \beta_2 v_{n,t-1} + (1 - \beta_2)\, \mathrm{mean}_{i \in n}\, O_{i,t}^2,
\qquad \hat O_{i,t} = \frac{O_{i,t}}{\sqrt{v_{n,t}} + \epsilon},
$$

$$
u_t = \eta_t \sqrt{\max(1, n_{out}/n_{in})}\;
      \frac{\|O_t\|_F}{\|\hat O_t\|_F + \epsilon}\; \hat O_t ,
\qquad p_t = p_{t-1}(1 - \eta_t \lambda) - u_t ,
$$

with $\epsilon = 10^{-10}$ in both places, as the reference. Here it is the
`NorMuon` rule run by `scale_by_rule` with Muon's
unscaled $O_t$ as the direction: the per-neuron rate
$r_n = \eta_t g_n / (\sqrt{v_n} + \epsilon)$, with $g_n$ the shape factor
times the norm ratio of neuron $n$'s matrix, is what
`learning_rates` reads. The state is Muon's momentum and
two floats per output neuron, $v_n$ and $g_n$ (the rescale depends on this
step's $O_t$, which ``v`` alone cannot give, so it is kept to read the
applied rates back exactly).

For a leaf of several matrices (batch axes: the layers of a scanned stack,
the experts of a mixture; or ``blocks`` such as the gates of a fused
recurrent kernel) Newton-Schulz, the second moment and the norm-preserving
rescale are each per matrix: a stacked ``(L, in, out)`` kernel gives exactly
the L per-layer results of L separate ``(in, out)`` kernels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from optax_neuronlr._src import engine
from optax_neuronlr._src import units as units_lib
from optax_neuronlr._src import validation
from optax_neuronlr._src.rules import moments
from optax_neuronlr._src.rules import muon as muon_lib
from optax_neuronlr._src.rules import muon_partition as plan_lib
from optax_neuronlr._src.units import Neurons


@dataclasses.dataclass(frozen=True)
class MatrixUnits:
  r"""How a leaf's NorMuon units (its output neurons) group into matrices.

  Attributes:
    scale: Muon's shape factor $\sqrt{\max(1, n_{out}/n_{in})}$ of a matrix.
    output_axes: the axes of the unit shape that index one matrix's output
      neurons (the others are batch axes: one matrix per index).
    blocks: ``(axis, n)``: unit axis ``axis`` holds ``n`` matrices side by
      side (the view's blocks); None: one.
  """

  scale: float
  output_axes: tuple[int, ...]
  blocks: Optional[tuple[int, int]] = None


def matrix_units(view: muon_lib.MatrixView, shape: Sequence[int],
                 consistent_rms: Optional[float] = None) -> MatrixUnits:
  """The `MatrixUnits` of a leaf of ``shape`` seen through ``view``
  (units: every axis but the fan-in, in order)."""
  unit_axes = [a for a in range(len(shape)) if a not in view.reduction_axes]
  blocks = None
  if view.blocks is not None:
    blocks = (unit_axes.index(view.blocks[0]), view.blocks[1])
  return MatrixUnits(muon_lib.shape_scale(view, shape, consistent_rms),
                     tuple(unit_axes.index(a) for a in view.output_axes), blocks)


def per_matrix_sum(x: jax.Array, units: Optional[MatrixUnits]) -> jax.Array:
  """Sums of ``x`` (shaped like the units) over each matrix's output neurons,
  broadcast back to ``x``'s shape; the whole ``x`` for ``units=None``."""
  if units is None:
    return jnp.broadcast_to(jnp.sum(x), x.shape)
  shape = x.shape
  axes = list(units.output_axes)
  if units.blocks is not None:
    p, n = units.blocks
    x = x.reshape(shape[:p] + (n, shape[p] // n) + shape[p + 1:])
    axes = [a + 1 if a >= p else a for a in axes]  # the block index stays a batch axis
  total = jnp.sum(x, axis=tuple(axes), keepdims=True)
  return jnp.broadcast_to(total, x.shape).reshape(shape)


@dataclasses.dataclass(frozen=True)
class NorMuon(engine.Rule):
  r"""NorMuon's per-neuron rate on an orthogonalised direction $O$.

  Unit statistics ``v`` (EMA of $\mathrm{mean}_{i \in n} O_i^2$ per neuron)
  and ``gain``, per matrix and kept on each of its neurons:
  $s\, \|O\|_F / (\|O / (\sqrt v + \epsilon)\|_F + \epsilon)$ with $s$
  Muon's shape factor, the norms over the matrix (one per layer of a stacked
  leaf, per block of a fused one) as the leaf's ``leaf_info``
  (`MatrixUnits`) says; without it, over the whole leaf with
  $s = 1$. Rate $\eta\, \mathrm{gain}_n / (\sqrt{v_n} + \epsilon)$.
  Needs units of one output neuron each (the fan-in reduced) and the
  direction to be $O$.
  """

  unit_stats = ("v", "gain")
  hyperparams = ("beta2", "eps")
  state_name = "ScaleByNorMuonState"
  name = "normuon"

  def observe(self, g, d, elements, hp):
    # Squares in at least float32: a float16 O's entries (about 1/sqrt(n))
    # square to float16 subnormals in large matrices.
    return (engine.abs_sq(d.astype(jnp.promote_types(g.dtype, jnp.float32))),)

  def update(self, stats, observed, hp, prev_hp, count):
    v = stats["v"]
    return {"v": v + (1 - hp["beta2"]) * (observed[0] - v), "gain": stats["gain"]}

  def update_leaf(self, stats, observed, hp, count, leaf):
    eps = hp["eps"]
    units = leaf.info if isinstance(leaf.info, MatrixUnits) else None
    mean_sq = observed[0]
    den = jnp.sqrt(stats["v"]) + eps
    norm = jnp.sqrt(per_matrix_sum(mean_sq, units) * leaf.unit_size)
    norm_new = jnp.sqrt(per_matrix_sum(mean_sq / (den * den), units) * leaf.unit_size)
    scale = 1.0 if units is None else units.scale
    gain = scale * (norm / (norm_new + eps))
    spec = units_lib.explicit_spec(stats["v"])
    if spec is not None:  # the sums are replicated; the statistic keeps v's sharding
      gain = jax.sharding.reshard(gain, units_lib.on_mesh_of(gain, spec))
    # count >= 1 here: the select reads the previous gain, so that a donated
    # state's buffer is updated in place rather than dropped by jit.
    return {"gain": jnp.where(count >= 1, gain, stats["gain"])}

  def rate(self, stats, hp, count):
    return hp["learning_rate"] * stats["gain"] / (jnp.sqrt(stats["v"]) + hp["eps"])


# The rule's state class, for isinstance checks (``nlr.ScaleByNorMuonState``).
ScaleByNorMuonState = NorMuon().state_class()


def scale_by_normuon(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.95,
    beta2: float = 0.95,
    eps: float = 1e-10,
    *,
    nesterov: bool = True,
    ns_steps: int = 5,
    ns_coeffs: Sequence[float] = muon_lib.NS_COEFFS,
    ns_eps: float = 1e-7,
    ns_dtype: Any = None,
    mu_dtype: Any = None,
    state_dtype: Any = None,
    matrices: Any = None,
    ns_mesh: Any = None,
    axis_names: Any = None,
    axis_roles: Any = None,
    layout: Any = None,
    consistent_rms: Optional[float] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""NorMuon's scaling of each matrix: per-neuron normalised Muon.

  With $O_t$ the orthogonalised (Nesterov) momentum of `scale_by_muon`
  before its shape factor, per output neuron $n$ of each matrix:

  $$
  v_{n,t} = \beta_2 v_{n,t-1} + (1 - \beta_2)\, \mathrm{mean}_{i \in n} O_{i,t}^2,
  \qquad
  u_{i,t} = \eta_t \sqrt{\max(1, \tfrac{n_{out}}{n_{in}})}
    \frac{\|O_t\|_F}{\|\hat O_t\|_F + \epsilon} \hat O_{i,t},
  \quad \hat O_{i,t} = \frac{O_{i,t}}{\sqrt{v_{n,t}} + \epsilon}
  $$

  (Li et al., 2025, reference ``normuon_update``). Returns $+u_t$. The
  per-neuron rate in front of $O_t$ is the `NorMuon` rule's, which
  `learning_rates` reads.

  Args:
    learning_rate: $\eta$, a number or a schedule, first and required as in
      every ``scale_by_*`` with a rate; 1.0 returns the direction itself
      (`normuon` passes its rate here, so that the rates read back are
      the applied ones).
    momentum: Muon's momentum $\mu$, in ``[0, 1)``.
    beta2: decay of the per-neuron second moment, in ``[0, 1)``.
    eps: $\epsilon$ of the normalisation and of the rescale, ``> 0``.
    nesterov: Nesterov momentum.
    ns_steps: Newton-Schulz iterations, an int ``>= 1``.
    ns_coeffs: the quintic's coefficients $(a, b, c)$.
    ns_eps: added to the Frobenius norm before Newton-Schulz, ``> 0``.
    ns_dtype: dtype of Newton-Schulz (None: the update's; ``"bfloat16"`` as
      the reference).
    mu_dtype: dtype of the stored momentum (None: the params').
    state_dtype: dtype of ``v`` and ``gain``; the engine's shared argument,
      see `scale_by_rule`.
    matrices: each leaf's matrix view, as in `scale_by_muon` (every
      leaf needs one); the output neurons are every axis but its fan-in.
    ns_mesh: where Newton-Schulz runs: None (each matrix where it lies) or a
      mesh whose devices each orthogonalise whole matrices; see
      `scale_by_muon`.
    axis_names: the model's logical axis names (see
      `scale_by_muon`).
    axis_roles: more axis names for the vocabulary, ``{name: role}``.
    layout: the full tree's `ModelLayout`, read by
      path (see `scale_by_muon`).
    consistent_rms: None: the shape factor $\sqrt{\max(1, n_{out}/n_{in})}$;
      a number $c$: $c\sqrt{\max(n_{in}, n_{out})}$ instead (see
      `normuon`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    ``ScaleByNorMuonState`` (``v``, ``gain``, and Muon's momentum in
    ``direction_state``).
  """
  validation.check_beta("beta2", beta2)
  validation.check_range("eps", eps, low=0.0, low_open=True)
  muon_lib.check_consistent_rms(consistent_rms)
  direction = muon_lib.muon_direction(
      momentum, nesterov=nesterov, ns_steps=ns_steps, ns_coeffs=ns_coeffs, eps=ns_eps,
      ns_dtype=ns_dtype, mu_dtype=mu_dtype, matrices=matrices, scaled=False,
      what="scale_by_normuon", ns_mesh=ns_mesh, layout=layout, axis_names=axis_names,
      axis_roles=axis_roles)
  plans = plan_lib.PlanCache("normuon", True, matrices=matrices, layout=layout,
                             axis_names=axis_names, axis_roles=axis_roles,
                             every_leaf=True)

  def views(tree):
    return jax.tree.structure(tree).unflatten([l.view for l in plans(tree).leaves])

  def units(tree):
    return jax.tree.map(lambda v, x: Neurons(tuple(
        a for a in range(jnp.ndim(x)) if a not in v.reduction_axes)),
        views(tree), tree, is_leaf=lambda v: isinstance(v, muon_lib.MatrixView))

  def scales(tree):
    return jax.tree.map(lambda v, x: matrix_units(v, jnp.shape(x), consistent_rms),
                        views(tree), tree,
                        is_leaf=lambda v: isinstance(v, muon_lib.MatrixView))

  return engine.scale_by_rule(
      NorMuon(), learning_rate, {"beta2": beta2, "eps": eps}, granularity=units,
      state_dtype=state_dtype, direction=direction, leaf_info=scales)


def normuon(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.95,
    beta2: float = 0.95,
    weight_decay: float = 0.0,
    *,
    eps: float = 1e-10,
    nesterov: bool = True,
    ns_steps: int = 5,
    ns_coeffs: Sequence[float] = muon_lib.NS_COEFFS,
    ns_eps: float = 1e-7,
    ns_dtype: Any = None,
    mu_dtype: Any = None,
    state_dtype: Any = None,
    adam_learning_rate: Optional[optax.ScalarOrSchedule] = None,
    b1: float = 0.9,
    b2: float = 0.999,
    adam_eps: float = 1e-8,
    adam_weight_decay: float = 0.0,
    hidden: Any = None,
    matrices: Any = None,
    ns_mesh: Any = None,
    axis_names: Any = None,
    axis_roles: Any = None,
    layout: Any = None,
    adam_nesterov: bool = False,
    consistent_rms: Optional[float] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""NorMuon (Li et al., 2025) on the hidden matrices, AdamW elsewhere.

  Hidden leaves (`normuon_labels`): with $u_t$ of
  `scale_by_normuon` at rate $\eta_t$ and decoupled weight decay
  $\lambda$, as the reference's ``SingleDeviceNorMuonWithAuxAdam``:

  $$
  p_t = p_{t-1} (1 - \eta_t \lambda) - u_t ;
  $$

  every other leaf (embeddings, output head, norm scales, biases) gets
  ``optax.adamw(adam_learning_rate, b1, b2, adam_eps, adam_weight_decay)``,
  its decay on embeddings and the head only, never on norm scales or biases
  (`model_layout`'s ``weight_decay``).
  The state is Muon's momentum on the hidden leaves, two floats per output
  neuron (the second moment and its matrix's gain), and AdamW's two moments
  on the rest.
  Agrees with the reference's ``normuon_update`` to float64 rounding
  (``python -m optax_neuronlr.parity --case normuon``).

  Args:
    learning_rate: $\eta$ of the hidden matrices, a number or a schedule, ``>= 0``.
    momentum: Muon's momentum, in ``[0, 1)``.
    beta2: decay of the per-neuron second moment, in ``[0, 1)``.
    weight_decay: $\lambda$ of the hidden matrices, ``>= 0``.
    eps: $\epsilon$ of the normalisation and rescale, ``> 0``.
    nesterov: Nesterov momentum.
    ns_steps: Newton-Schulz iterations, an int ``>= 1``.
    ns_coeffs: the quintic's coefficients $(a, b, c)$.
    ns_eps: added to the Frobenius norm before Newton-Schulz, ``> 0``.
    ns_dtype: dtype of Newton-Schulz (None: the update's; ``"bfloat16"`` as
      the reference).
    mu_dtype: dtype of the stored first moments, Muon's momentum and
      AdamW's $m$ (optax's ``mu_dtype``: the arithmetic stays in at least
      float32, only the stored copy is rounded); None: the params'.
    state_dtype: dtype of the per-neuron statistics; the engine's shared
      argument, see `scale_by_rule`.
    adam_learning_rate: AdamW's rate; None: ``learning_rate``.
    b1: AdamW's first-moment decay, in ``[0, 1)``.
    b2: AdamW's second-moment decay, in ``[0, 1)``.
    adam_eps: AdamW's $\epsilon$, ``>= 0``.
    adam_weight_decay: AdamW's decoupled weight decay, ``>= 0``.
    hidden: which leaves NorMuon trains: None (the hidden matrices of
      `model_layout`), a pytree of bools shaped like the
      params (a bool for a bare array), or a callable ``params -> pytree of
      bools``.
    matrices: the hidden leaves' matrix views, as `muon`'s
      (a leaf given a view in a pytree is a hidden matrix; None entries keep
      the layout's choice and view).
    ns_mesh: where Newton-Schulz runs: None (each matrix where it lies) or a
      mesh whose devices each orthogonalise whole matrices; see
      `scale_by_muon`.
    axis_names: the model's logical axis names (see
      `scale_by_muon`).
    axis_roles: more axis names for the vocabulary, ``{name: role}``.
    layout: the full tree's `ModelLayout`, read by
      path; pass ``nlr.model_layout(full_params)`` inside
      ``optax.multi_transform`` / ``optax.masked`` (see
      `muon`).
    adam_nesterov: Nesterov momentum in AdamW (NAdamW) on the other leaves.
    consistent_rms: None (default): the shape factor
      $\sqrt{\max(1, n_{out}/n_{in})}$; a number $c$ (Moonlight's 0.2):
      $c\sqrt{\max(n_{in}, n_{out})}$ instead, so that the hidden matrices'
      updates have about AdamW's RMS and one rate serves both parts (Liu et
      al., 2025, arXiv:2502.16982; ``optax.contrib.muon``'s ``consistent_rms``).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (an ``optax.partition``
    with the inner states ``"hidden"`` and ``"adamw"``).

  Example:
    >>> import optax_neuronlr as nlr
    >>> tx = nlr.normuon(0.02, weight_decay=0.1, adam_learning_rate=3e-4)
    >>> # optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  """
  validation.check_rate("learning_rate", learning_rate)
  validation.check_range("weight_decay", weight_decay, low=0.0)
  muon_lib.check_adamw_args(adam_learning_rate, b1, b2, adam_eps, adam_weight_decay)
  validation.check_beta("beta2", beta2)
  validation.check_range("eps", eps, low=0.0, low_open=True)
  validation.check_flag("nesterov", nesterov)
  muon_lib.check_muon_args(momentum, ns_steps, ns_coeffs, ns_eps, ns_dtype, mu_dtype)
  validation.check_dtype("state_dtype", state_dtype)
  muon_lib.check_ns_mesh(ns_mesh)
  validation.check_flag("adam_nesterov", adam_nesterov)
  muon_lib.check_consistent_rms(consistent_rms)
  adam_lr = learning_rate if adam_learning_rate is None else adam_learning_rate

  def hidden_tx(views):
    return optax.chain(
        scale_by_normuon(learning_rate, momentum, beta2, eps,
                         nesterov=nesterov, ns_steps=ns_steps, ns_coeffs=ns_coeffs,
                         ns_eps=ns_eps, ns_dtype=ns_dtype, mu_dtype=mu_dtype,
                         state_dtype=state_dtype, matrices=views, ns_mesh=ns_mesh,
                         consistent_rms=consistent_rms),
        moments.decoupled_weight_decay(learning_rate, weight_decay),
        optax.scale(-1.0))

  adamw_tx = muon_lib.adamw_leaves(adam_lr, b1, b2, adam_eps, adam_weight_decay, mu_dtype,
                                   adam_nesterov)
  return plan_lib.partitioned(hidden_tx, adamw_tx, hidden=hidden, matrices=matrices,
                              layout=layout, axis_names=axis_names,
                              axis_roles=axis_roles, who="normuon")

