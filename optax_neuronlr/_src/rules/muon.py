r"""Muon's direction on the package's matrix views, and the Muon optimizer.

Muon (Jordan et al., 2024, "Muon: An optimizer for hidden layers in neural
networks", https://kellerjordan.github.io/posts/muon/) replaces each hidden
weight matrix's momentum by an approximation of its orthogonal polar factor,
computed with a few quintic Newton-Schulz iterations. For a gradient $G_t$,
momentum $\mu$ and the Newton-Schulz map $\mathrm{NS}$:

$$
B_t = \mu B_{t-1} + (1 - \mu) G_t, \qquad
\tilde B_t = (1 - \mu) G_t + \mu B_t \ \text{(Nesterov; else } B_t\text{)},
$$

$$
O_t = \mathrm{NS}_k^{(a, b, c)}\!\left(\frac{\tilde B_t}{\|\tilde B_t\|_F + \epsilon}\right),
\qquad d_t = \sqrt{\max(1, n_{out} / n_{in})}\; O_t ,
$$

with $X_{j+1} = a X_j + (b A_j + c A_j^2) X_j$, $A_j = X_j X_j^\top$, on the
orientation whose Gram matrix is the smaller one. These are the momentum form
(``buf.lerp_(grad, 1 - momentum)``, ``grad.lerp(buf, momentum)``) and scale
of ``torch.optim.Muon`` (its default ``adjust_lr_fn="original"``) and of the
NorMuon reference code.

Which leaves are matrices, and how, is a `MatrixView` per leaf
(`model_layout` gives them for Flax trees): the fan-in
(``reduction_axes``) and output axes of a matrix; every other axis is a batch
axis (one matrix per index), and ``blocks=(axis, n)`` splits an output axis
into ``n`` equal matrices (the gates of a fused recurrent kernel). A
``(d, heads, head_dim)`` attention query kernel is one ``d x heads*head_dim``
matrix, as PyTorch's ``q_proj``; a scanned ``(layers, in, out)`` kernel is
one matrix per layer.

`scale_by_muon` returns $+d_t$; `muon` trains the hidden
matrices with it (learning rate and decoupled weight decay as
``torch.optim.Muon``) and every other leaf with AdamW, split by
`normuon_labels`.

This module holds the direction and the optimizer; the Newton-Schulz
iteration and where it runs are in `optax_neuronlr._src.newton_schulz`,
checking user-given views in `optax_neuronlr._src.roles.matrix_views`, and
the choice of leaves and views (computed once per optimizer, read by path)
in `optax_neuronlr._src.rules.muon_partition`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Optional, cast

import jax
import jax.numpy as jnp
import optax

from optax_neuronlr._src import model_layout as layout_lib  # noqa: F401  (old import paths)
from optax_neuronlr._src import rate_record
from optax_neuronlr._src import validation
from optax_neuronlr._src.newton_schulz import (  # noqa: F401  (old import paths)
    NS_COEFFS,
    check_ns_mesh,
    newton_schulz,
    orthogonalise,
    orthogonalise_on_owners,
)
from optax_neuronlr._src.roles.matrix_views import shape_scale
from optax_neuronlr._src.roles.views import MatrixView
from optax_neuronlr._src.rules import moments
from optax_neuronlr._src.rules import muon_partition as plan_lib
from optax_neuronlr._src.rules.muon_partition import (  # noqa: F401  (old import paths)
    ADAMW,
    HIDDEN,
    normuon_labels,
)


def leaf_views(tree: Any, matrices: Any = None, *, what: str = "scale_by_muon",
               layout: Any = None, axis_names: Any = None, axis_roles: Any = None,
               ) -> list[MatrixView]:
  """The checked `MatrixView` of every leaf of ``tree``, in order.

  ``matrices=None`` (or a None entry) reads a leaf's view from
  `model_layout` (or ``layout``). A leaf without a view
  is an error: Muon orthogonalises matrices only.
  """
  plan = plan_lib.muon_plan(tree, matrices=matrices, layout=layout, axis_names=axis_names,
                            axis_roles=axis_roles, every_leaf=True,
                            who=what.removeprefix("scale_by_"))
  return [cast(MatrixView, l.view) for l in plan.leaves]  # every_leaf: no None


class ScaleByMuonState(NamedTuple):
  """State of `scale_by_muon`.

  Attributes:
    mu: the momentum $B$, shaped like the params, in ``mu_dtype``.
  """

  mu: Any


def check_consistent_rms(consistent_rms: Any) -> Optional[float]:
  """``consistent_rms``: None or a positive number (Moonlight's 0.2)."""
  if consistent_rms is not None:
    validation.check_range("consistent_rms", consistent_rms, low=0.0, low_open=True)
  return consistent_rms


# --------------------------------------------------------------------------
# The direction.


def check_muon_args(momentum, ns_steps, ns_coeffs, eps, ns_dtype, mu_dtype) -> None:
  validation.check_beta("momentum", momentum)
  validation.check_int("ns_steps", ns_steps, low=1)
  if not (isinstance(ns_coeffs, (tuple, list)) and len(ns_coeffs) == 3):
    raise ValueError(f"ns_coeffs must be a tuple of three numbers (a, b, c), got {ns_coeffs!r}.")
  for k, name in zip(ns_coeffs, ("a", "b", "c")):
    validation.check_range(f"ns_coeffs[{name}]", k)
  validation.check_range("eps", eps, low=0.0, low_open=True)
  validation.check_dtype("ns_dtype", ns_dtype)
  validation.check_dtype("mu_dtype", mu_dtype)


def muon_direction(
    momentum: Any = 0.95, *, nesterov: bool = True, ns_steps: Any = 5,
    ns_coeffs: Sequence[float] = NS_COEFFS, eps: Any = 1e-7, ns_dtype: Any = None,
    mu_dtype: Any = None, matrices: Any = None, scaled: bool = True,
    what: str = "scale_by_muon", ns_mesh: Any = None, layout: Any = None,
    axis_names: Any = None, axis_roles: Any = None,
    consistent_rms: Optional[float] = None,
) -> optax.GradientTransformationExtraArgs:
  """`scale_by_muon`, with ``scaled=False`` leaving out the shape factor
  (NorMuon applies it in its rate); ``consistent_rms``: see `muon`."""
  validation.check_flag("nesterov", nesterov)
  check_consistent_rms(consistent_rms)
  check_muon_args(momentum, ns_steps, ns_coeffs, eps, ns_dtype, mu_dtype)
  validation.check_static("matrices", matrices, example="nlr.scale_by_muon")
  plan_lib.check_layout(layout, axis_names, axis_roles)
  ns_coeffs = tuple(ns_coeffs)
  mu_dtype = None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype)
  check_ns_mesh(ns_mesh)
  plans = plan_lib.PlanCache(what.removeprefix("scale_by_"), True, matrices=matrices,
                             layout=layout, axis_names=axis_names, axis_roles=axis_roles,
                             every_leaf=True)

  def views_of(tree):
    return [cast(MatrixView, l.view) for l in plans(tree).leaves]  # every_leaf: no None

  def init_fn(params):
    plans.report(params)  # a clear error, or the one warning, at init
    return ScaleByMuonState(mu=jax.tree.map(
        lambda p: jnp.zeros_like(p, dtype=p.dtype if mu_dtype is None else mu_dtype),
        params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    views = views_of(updates)
    grads, treedef = jax.tree_util.tree_flatten(updates)
    mus = treedef.flatten_up_to(state.mu)
    ds, new_mu = [], []
    for g, m in zip(grads, mus):
      compute = jnp.promote_types(jnp.promote_types(g.dtype, m.dtype), jnp.float32)
      gc, mc = g.astype(compute), m.astype(compute)
      mc = mc + (1 - momentum) * (gc - mc)
      ds.append(gc + momentum * (mc - gc) if nesterov else mc)
      new_mu.append(mc.astype(m.dtype))
    ns = {"ns_steps": ns_steps, "ns_coeffs": ns_coeffs, "eps": eps, "ns_dtype": ns_dtype}
    if ns_mesh is None:
      os_ = [orthogonalise(d, view, **ns) for d, view in zip(ds, views)]
    else:
      os_ = orthogonalise_on_owners(ds, views, ns_mesh, **ns)
    outs = []
    for g, o, view in zip(grads, os_, views):
      if scaled:
        o = o * shape_scale(view, g.shape, consistent_rms)
      outs.append(o.astype(g.dtype))
    return treedef.unflatten(outs), ScaleByMuonState(mu=treedef.unflatten(new_mu))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_muon(
    momentum: float = 0.95,
    *,
    nesterov: bool = True,
    ns_steps: int = 5,
    ns_coeffs: Sequence[float] = NS_COEFFS,
    eps: float = 1e-7,
    ns_dtype: Any = None,
    mu_dtype: Any = None,
    matrices: Any = None,
    ns_mesh: Any = None,
    axis_names: Any = None,
    axis_roles: Any = None,
    layout: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Muon's direction: orthogonalised (Nesterov) momentum of each matrix.

  Per matrix $G_t$ of a leaf (Jordan et al., 2024; ``torch.optim.Muon``):

  $$
  B_t = \mu B_{t-1} + (1 - \mu) G_t, \quad
  \tilde B_t = (1 - \mu) G_t + \mu B_t, \quad
  d_t = \sqrt{\max(1, n_{out}/n_{in})}\;
        \mathrm{NS}_k\!\left(\tilde B_t / (\|\tilde B_t\|_F + \epsilon)\right),
  $$

  ($\tilde B_t = B_t$ without Nesterov). Returns $+d_t$, no learning rate:
  ``optax.chain(scale_by_muon(), optax.scale(-lr))`` is plain Muon.

  Args:
    momentum: $\mu$, in ``[0, 1)``.
    nesterov: use the Nesterov form $\tilde B_t$.
    ns_steps: Newton-Schulz iterations $k$, an int ``>= 1`` (may be traced).
    ns_coeffs: the quintic's coefficients $(a, b, c)$.
    eps: added to the Frobenius norm before dividing, ``> 0``.
    ns_dtype: dtype of the Newton-Schulz iterations (a float dtype or its
      name); None: the update's dtype. The references use ``"bfloat16"``.
    mu_dtype: dtype of the stored momentum (as optax's ``mu_dtype``); None:
      the params' dtype. The arithmetic is in at least float32.
    matrices: the matrix view of each leaf: None (default) reads them from
      `model_layout` (every leaf it sees as a matrix;
      stack and expert axes are batch axes, one matrix per layer or expert);
      a `MatrixView` for every leaf (ints read as
      1-tuples, as optax's ``MuonDimensionNumbers(0, 1)``, which is accepted
      too); a pytree of views shaped like the params, matched by path, where
      None means the layout's view; or a callable ``params -> pytree``. A
      leaf without a view (a bias, a norm scale) is a ``ValueError``: Muon is
      for matrices; select them with ``optax.partition`` / ``optax.masked``,
      or use `muon`. A zero-size matrix gets an empty (zero) update,
      as in optax.
    ns_mesh: None (default): each matrix is orthogonalised where it lies
      (a sharded matrix is gathered onto every device, which all run its
      Newton-Schulz); or a ``jax.sharding.Mesh``: the matrices are dealt,
      whole, round-robin over its devices, each orthogonalised on its owner
      (the layout of distributed Muon
      implementations). For automatic sharding (``AxisType.Auto``); see
      docs/scaling.md for what each layout communicates.
    axis_names: the model's logical axis names, a pytree like the params
      (what ``nn.get_partition_spec(variables)["params"]`` or
      ``nnx.get_partition_spec(state)`` return): the layout reads each
      named leaf's matrices from its names (``layers``/``stage`` stack axes
      and ``exp``/``expert`` axes are batch axes); see
      `model_layout`.
    axis_roles: more axis names for the vocabulary, ``{name: role}`` (e.g.
      ``{"my_layers": "stack"}``).
    layout: the `ModelLayout` to read the views from
      by path (e.g. ``nlr.model_layout(full_params)`` when this transform
      sees only a part of the tree, inside ``optax.partition``); None: the
      layout of the tree it is given.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    `ScaleByMuonState`.
  """
  return muon_direction(momentum, nesterov=nesterov, ns_steps=ns_steps,
                        ns_coeffs=ns_coeffs, eps=eps, ns_dtype=ns_dtype,
                        mu_dtype=mu_dtype, matrices=matrices, ns_mesh=ns_mesh,
                        layout=layout, axis_names=axis_names, axis_roles=axis_roles)


def adamw_leaves(adam_lr: Any, b1: Any, b2: Any, adam_eps: Any, adam_weight_decay: Any,
                 mu_dtype: Any, adam_nesterov: bool) -> Any:
  """``decay_mask -> transform``: AdamW (NAdamW with ``adam_nesterov``) on the
  leaves Muon and NorMuon do not train, its rate recorded for the readers."""
  def adamw_tx(decay_mask):
    return rate_record.with_recorded_rate(
        optax.adamw(adam_lr, b1, b2, adam_eps, mu_dtype=mu_dtype,
                    weight_decay=adam_weight_decay, mask=decay_mask,
                    nesterov=adam_nesterov),
        adam_lr)
  return adamw_tx


def check_adamw_args(adam_learning_rate, b1, b2, adam_eps, adam_weight_decay) -> None:
  if adam_learning_rate is not None:
    validation.check_rate("adam_learning_rate", adam_learning_rate)
  validation.check_beta("b1", b1)
  validation.check_beta("b2", b2)
  validation.check_range("adam_eps", adam_eps, low=0.0)
  validation.check_range("adam_weight_decay", adam_weight_decay, low=0.0)


def muon(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.95,
    weight_decay: float = 0.0,
    *,
    nesterov: bool = True,
    ns_steps: int = 5,
    ns_coeffs: Sequence[float] = NS_COEFFS,
    eps: float = 1e-7,
    ns_dtype: Any = None,
    mu_dtype: Any = None,
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
  r"""Muon on the hidden matrices, AdamW on every other leaf.

  Hidden leaves (`normuon_labels`) follow ``torch.optim.Muon`` with
  decoupled weight decay $\lambda$: with $d_t$ of `scale_by_muon`,

  $$
  p_t = p_{t-1} (1 - \eta_t \lambda) - \eta_t d_t ;
  $$

  the other leaves (embeddings, output head, norm scales, biases) get
  ``optax.adamw(adam_learning_rate, b1, b2, adam_eps, adam_weight_decay)``,
  its decay on embeddings and the head only, never on norm scales or biases
  (`model_layout`'s ``weight_decay``).
  Agrees with ``torch.optim.Muon`` to float64 rounding
  (``python -m optax_neuronlr.parity --case muon``).

  Args:
    learning_rate: $\eta$ of the hidden matrices, a number or a schedule, ``>= 0``.
    momentum: $\mu$, in ``[0, 1)``.
    weight_decay: $\lambda$ of the hidden matrices, ``>= 0``.
    nesterov: Nesterov momentum.
    ns_steps: Newton-Schulz iterations, an int ``>= 1``.
    ns_coeffs: the quintic's coefficients $(a, b, c)$.
    eps: added to the Frobenius norm before Newton-Schulz, ``> 0``.
    ns_dtype: dtype of Newton-Schulz (None: the update's; ``"bfloat16"`` as
      the references).
    mu_dtype: dtype of the stored first moments, Muon's momentum and
      AdamW's $m$ (optax's ``mu_dtype``: the arithmetic stays in at least
      float32, only the stored copy is rounded); None: the params'.
    adam_learning_rate: AdamW's rate; None: ``learning_rate``.
    b1: AdamW's first-moment decay, in ``[0, 1)``.
    b2: AdamW's second-moment decay, in ``[0, 1)``.
    adam_eps: AdamW's $\epsilon$, ``>= 0``.
    adam_weight_decay: AdamW's decoupled weight decay, ``>= 0``.
    hidden: which leaves Muon trains; see `normuon_labels` (a bool
      for a bare array param).
    matrices: the hidden leaves' matrix views (see `scale_by_muon`):
      None: from `model_layout`, else the last axis as
      the output; one view: for every hidden leaf; a pytree (or a callable
      returning one): a leaf given a view is a hidden matrix (as optax's
      dimension numbers), a None entry keeps the layout's choice and view.
    ns_mesh: where Newton-Schulz runs: None (each matrix where it lies) or a
      mesh whose devices each orthogonalise whole matrices; see
      `scale_by_muon`.
    axis_names: the model's logical axis names (see `scale_by_muon`):
      which leaves are hidden matrices and their views come from the names.
    axis_roles: more axis names for the vocabulary, ``{name: role}``.
    layout: the full tree's `ModelLayout`, read by
      path. The layout is computed once, from the tree this optimizer is
      given; inside ``optax.multi_transform`` / ``optax.masked`` that tree
      is a part (the other leaves ``optax.MaskedNode``, skipped), whose
      layout can differ from the whole model's (an output head found as the
      embedding's transpose): pass ``layout=nlr.model_layout(full_params)``.
    adam_nesterov: Nesterov momentum in AdamW (``optax.adamw(nesterov=True)``,
      i.e. NAdamW) on the non-hidden leaves.
    consistent_rms: None (default): Muon's shape factor
      $\sqrt{\max(1, n_{out}/n_{in})}$; a number $c$: Moonlight's
      "consistent RMS" factor $c\sqrt{\max(n_{in}, n_{out})}$ instead
      (Liu et al., 2025, "Muon is Scalable for LLM Training",
      arXiv:2502.16982; ``optax.contrib.muon``'s ``consistent_rms``), with
      $c = 0.2$ giving updates of AdamW's RMS, so that one rate can serve
      both parts (``adam_learning_rate=None``).

  A layout guessed from shapes (leaves without Flax names, stack axes found
  by shape) or one without any hidden matrix is reported by one warning at
  ``init``, naming the leaves and these arguments.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (an ``optax.partition``
    with the inner states ``"hidden"`` and ``"adamw"``).

  Example:
    >>> import jax.numpy as jnp, optax_neuronlr as nlr
    >>> params = {"embed": {"embedding": jnp.zeros((10, 4))},
    ...           "fc": {"kernel": jnp.zeros((4, 8))},
    ...           "head": {"kernel": jnp.zeros((8, 10))}}
    >>> tx = nlr.muon(0.02, weight_decay=0.1, adam_learning_rate=3e-4)
    >>> state = tx.init(params)
    >>> # Inside optax.multi_transform, give the full tree's layout:
    >>> tx = nlr.muon(0.02, layout=nlr.model_layout(params))
  """
  validation.check_rate("learning_rate", learning_rate)
  check_ns_mesh(ns_mesh)
  validation.check_flag("adam_nesterov", adam_nesterov)
  check_consistent_rms(consistent_rms)
  validation.check_range("weight_decay", weight_decay, low=0.0)
  check_adamw_args(adam_learning_rate, b1, b2, adam_eps, adam_weight_decay)
  validation.check_flag("nesterov", nesterov)
  check_muon_args(momentum, ns_steps, ns_coeffs, eps, ns_dtype, mu_dtype)
  adam_lr = learning_rate if adam_learning_rate is None else adam_learning_rate

  def hidden_tx(views):
    return optax.chain(
        muon_direction(momentum, nesterov=nesterov, ns_steps=ns_steps,
                       ns_coeffs=ns_coeffs, eps=eps, ns_dtype=ns_dtype,
                       mu_dtype=mu_dtype, matrices=views, ns_mesh=ns_mesh,
                       consistent_rms=consistent_rms),
        optax.scale_by_learning_rate(learning_rate, flip_sign=False),
        moments.decoupled_weight_decay(learning_rate, weight_decay),
        optax.scale(-1.0),
        rate_record.record_learning_rate(learning_rate))  # for the readers

  adamw_tx = adamw_leaves(adam_lr, b1, b2, adam_eps, adam_weight_decay, mu_dtype,
                          adam_nesterov)
  return plan_lib.partitioned(hidden_tx, adamw_tx, hidden=hidden, matrices=matrices,
                              layout=layout, axis_names=axis_names,
                              axis_roles=axis_roles, who="muon")

