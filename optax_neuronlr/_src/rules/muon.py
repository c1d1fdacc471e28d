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

Which leaves are matrices, and how, is a :class:`MatrixView` per leaf
(:func:`optax_neuronlr.model_layout` gives them for Flax trees): the fan-in
(``reduction_axes``) and output axes of a matrix; every other axis is a batch
axis (one matrix per index), and ``blocks=(axis, n)`` splits an output axis
into ``n`` equal matrices (the gates of a fused recurrent kernel). A
``(d, heads, head_dim)`` attention query kernel is one ``d x heads*head_dim``
matrix, as PyTorch's ``q_proj``.

:func:`scale_by_muon` returns $+d_t$; :func:`muon` trains the hidden
matrices with it (learning rate and decoupled weight decay as
``torch.optim.Muon``) and every other leaf with AdamW, split by
:func:`normuon_labels`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_neuronlr._src import engine
from optax_neuronlr._src import model_layout as layout_lib
from optax_neuronlr._src import paths as paths_lib
from optax_neuronlr._src import units as units_lib
from optax_neuronlr._src import validation
from optax_neuronlr._src.model_layout import MatrixView
from optax_neuronlr._src.rules import moments

HIDDEN = "hidden"
ADAMW = "adamw"
NS_COEFFS = (3.4445, -4.7750, 2.0315)


class ScaleByMuonState(NamedTuple):
  """State of :func:`scale_by_muon`.

  Attributes:
    mu: the momentum $B$, shaped like the params, in ``mu_dtype``.
  """

  mu: Any


# --------------------------------------------------------------------------
# Matrix views.


def _is_view(x: Any) -> bool:
  return x is None or isinstance(x, MatrixView)


def _check_view(view: MatrixView, shape: tuple[int, ...], where: str) -> MatrixView:
  """``view`` with non-negative axes, checked against ``shape``."""
  ndim = len(shape)

  def norm(axes, what):
    out = []
    for a in axes:
      if not -ndim <= a < ndim:
        raise ValueError(f"matrices: {what} {a} is out of range for leaf '{where}' of "
                         f"shape {shape}.")
      out.append(a % ndim)
    return tuple(out)

  red = norm(view.reduction_axes, "reduction axis")
  out = norm(view.output_axes, "output axis")
  if not red or not out or set(red) & set(out) or len(set(red + out)) != len(red + out):
    raise ValueError(
        f"matrices: the view of leaf '{where}' (shape {shape}) needs distinct, non-empty "
        f"reduction and output axes, got {view}.")
  blocks = view.blocks
  if blocks is not None:
    (axis,) = norm((blocks[0],), "blocks axis")
    if axis not in out or blocks[1] < 1 or shape[axis] % blocks[1]:
      raise ValueError(
          f"matrices: blocks={blocks} of leaf '{where}' (shape {shape}) must split an "
          "output axis into equal blocks.")
    blocks = (axis, int(blocks[1]))
  return MatrixView(red, out, blocks)


def _view_lookup(matrices: Any, tree: Any) -> Callable[[str], Any]:
  """``path -> MatrixView or None`` from ``matrices`` (see scale_by_muon)."""
  if callable(matrices) and not isinstance(matrices, MatrixView):
    matrices = matrices(tree)
  if isinstance(matrices, MatrixView):
    return lambda path: matrices
  flat = jax.tree_util.tree_flatten_with_path(matrices, is_leaf=_is_view)[0]
  table = {}
  for path, value in flat:
    if not _is_view(value):
      raise TypeError(
          f"matrices: expected a MatrixView or None at '{paths_lib.path_str(path)}', "
          f"got {type(value).__name__} {value!r}.")
    table[paths_lib.path_str(path)] = value
  def lookup(path):
    if path not in table:
      raise ValueError(f"matrices has no entry for leaf '{path}' (give a pytree shaped "
                       "like the params, or a callable params -> pytree).")
    return table[path]
  return lookup


def leaf_views(tree: Any, matrices: Any = None, *, what: str = "scale_by_muon"
               ) -> list[MatrixView]:
  """The checked :class:`MatrixView` of every leaf of ``tree``, in order.

  ``matrices=None`` reads the views from :func:`optax_neuronlr.model_layout`.
  A leaf without a view is an error: Muon orthogonalises matrices only.
  """
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  if matrices is None:
    roles = layout_lib.model_layout(tree).leaves
    views = [r.matrix for r in roles]
  else:
    lookup = _view_lookup(matrices, tree)
    views = [lookup(paths_lib.path_str(p)) for p, _ in flat]
  out, missing = [], []
  for (path, leaf), view in zip(flat, views):
    where = paths_lib.path_str(path)
    if view is None:
      missing.append(f"'{where}' {tuple(jnp.shape(leaf))}")
      continue
    out.append(_check_view(view, tuple(jnp.shape(leaf)), where))
  if missing:
    raise ValueError(
        f"{what}: no matrix view for the leaves {', '.join(missing)}; Muon orthogonalises "
        "matrices only. Use nlr.muon / nlr.normuon (AdamW on such leaves), select the "
        "matrices with optax.partition or optax.masked, or give matrices=.")
  return out


def shape_scale(view: MatrixView, shape: Sequence[int]) -> float:
  r"""Muon's factor $\sqrt{\max(1, n_{out} / n_{in})}$ of one matrix of the view."""
  _, fan_in, fan_out = view.shapes(tuple(shape))
  return math.sqrt(max(1.0, fan_out / fan_in))


def _to_matrices(x: jax.Array, view: MatrixView):
  """``x`` as a ``(matrices, fan_in, fan_out)`` stack, and the inverse map."""
  shape = x.shape
  red, out, axis_of_block = list(view.reduction_axes), list(view.output_axes), None
  if view.blocks is not None:
    a, n = view.blocks
    x = x.reshape(shape[:a] + (n, shape[a] // n) + shape[a + 1:])
    shift = lambda ax: ax if ax < a else ax + 1
    red, out = [shift(ax) for ax in red], [shift(ax) for ax in out]
    axis_of_block = a
  split_shape = x.shape
  used = set(red) | set(out) | ({axis_of_block} if axis_of_block is not None else set())
  batch = [ax for ax in range(x.ndim) if ax not in used]
  if axis_of_block is not None:
    batch.append(axis_of_block)
  perm = batch + red + out
  fan_in = math.prod(split_shape[ax] for ax in red)
  fan_out = math.prod(split_shape[ax] for ax in out)
  moved = jnp.transpose(x, perm)
  stack = moved.reshape(-1, fan_in, fan_out)
  inverse = [perm.index(ax) for ax in range(len(perm))]

  def back(y):
    return jnp.transpose(y.reshape(moved.shape), inverse).reshape(shape)

  return stack, back


def newton_schulz(
    x: jax.Array, ns_steps: Any = 5, ns_coeffs: Sequence[float] = NS_COEFFS,
    eps: Any = 1e-7,
) -> jax.Array:
  r"""Quintic Newton-Schulz orthogonalisation of a stack of matrices.

  ``x`` is ``(..., fan_in, fan_out)`` (Flax orientation; a PyTorch weight is
  its transpose). Each matrix is divided by its Frobenius norm plus ``eps``
  and iterated ``ns_steps`` times, $X \leftarrow a X + (b A + c A^2) X$ with
  $A = X X^\top$ ($X X^H$ for complex matrices, whose polar factor it
  then approaches), on the orientation with the smaller Gram matrix (as the
  references: PyTorch's ``(out, in)`` weight, transposed when
  ``out > in``). Computed in ``x``'s dtype; ``ns_steps`` may be traced.
  """
  a, b, c = (jnp.asarray(k, x.dtype) for k in ns_coeffs)
  adjoint = lambda m: jnp.conj(jnp.swapaxes(m, -1, -2))
  fan_in, fan_out = x.shape[-2:]
  flip = fan_out <= fan_in  # the PyTorch weight (out, in) itself: rows = fan_out
  if flip:
    x = jnp.swapaxes(x, -1, -2)
  norm = jnp.sqrt(jnp.sum(engine.abs_sq(x), axis=(-2, -1), keepdims=True))
  x = x / (norm + jnp.asarray(eps, x.dtype))

  def body(_, x):
    gram = x @ adjoint(x)
    poly = b * gram + c * (gram @ gram)
    return a * x + poly @ x

  x = jax.lax.fori_loop(0, ns_steps, body, x)
  return jnp.swapaxes(x, -1, -2) if flip else x


def orthogonalise(
    x: jax.Array, view: MatrixView, *, ns_steps: Any = 5,
    ns_coeffs: Sequence[float] = NS_COEFFS, eps: Any = 1e-7, ns_dtype: Any = None,
) -> jax.Array:
  """Newton-Schulz of each matrix of ``x`` under ``view`` (batch axes and blocks
  each a matrix), in ``ns_dtype`` (None: ``x``'s dtype); returns ``x``'s dtype."""
  spec = units_lib.explicit_spec(x)
  sharded = spec is not None and any(a is not None for a in spec)
  if sharded:
    # Newton-Schulz needs each whole matrix: on an explicit-sharding mesh the
    # leaf is gathered (one all-gather of its size), orthogonalised on every
    # device, and each device keeps its shard of the result.
    replicated = units_lib.on_mesh_of(x, ())
    x = jax.sharding.reshard(x, replicated)
  stack, back = _to_matrices(x, view)
  dtype = x.dtype if ns_dtype is None else engine.element_dtype(x.dtype, ns_dtype)
  o = newton_schulz(stack.astype(dtype), ns_steps, ns_coeffs, eps)
  out = back(o.astype(x.dtype))
  if spec is not None and sharded:
    out = jax.sharding.reshard(out, units_lib.on_mesh_of(out, spec))
  return out


def check_ns_mesh(ns_mesh: Any) -> None:
  if ns_mesh is not None and not isinstance(
      ns_mesh, (jax.sharding.Mesh, jax.sharding.AbstractMesh)):
    raise TypeError("ns_mesh must be None or a jax.sharding.Mesh (or AbstractMesh), got "
                    f"{type(ns_mesh).__name__} {ns_mesh!r}.")


def orthogonalise_on_owners(
    xs: Sequence[jax.Array], views: Sequence[MatrixView], mesh: Any, *, ns_steps: Any = 5,
    ns_coeffs: Sequence[float] = NS_COEFFS, eps: Any = 1e-7, ns_dtype: Any = None,
) -> list[jax.Array]:
  r"""Newton-Schulz of every matrix of ``xs``, each whole matrix on one device.

  The layout of distributed Muon implementations: instead of gathering each
  sharded matrix onto every device and orthogonalising it everywhere, the
  matrices of one shape (every leaf's matrices under its view, batch axes and
  blocks included) are stacked, the stack is sharded over all of ``mesh``'s
  devices along its matrix axis (whole matrices dealt round-robin to their
  owners, zero matrices padding the stack to a multiple of the device
  count), each device runs Newton-Schulz on the matrices it owns, and the
  results go back to the leaves' own shardings. The communication is a
  re-layout of the stack there and back (XLA: all-to-all or a gather to the
  owner and a slice back) instead of one all-gather of each matrix onto every
  device, and each device computes ``1 / devices`` of the Newton-Schulz work.
  Equal to :func:`orthogonalise` of each leaf up to float rounding.

  For automatic sharding (a mesh of ``AxisType.Auto`` axes, ``jax.jit``
  with shardings): the placement is a ``with_sharding_constraint``.
  """
  if any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types) or any(
      units_lib.explicit_spec(x) is not None for x in xs):
    raise ValueError(
        "ns_mesh is for automatic sharding (a mesh of AxisType.Auto axes and jax.jit "
        "with shardings); on an explicit-sharding mesh leave ns_mesh=None.")
  stacks = [_to_matrices(x, view) for x, view in zip(xs, views)]
  groups: dict[tuple, list[int]] = {}
  for i, (stack, _) in enumerate(stacks):
    dtype = stack.dtype if ns_dtype is None else jnp.dtype(ns_dtype)
    groups.setdefault((stack.shape[1:], jnp.dtype(dtype).name), []).append(i)
  owners = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(tuple(mesh.axis_names), None, None))
  n = math.prod(mesh.axis_sizes)
  out: list[Any] = [None] * len(xs)
  for (_, dtype), members in groups.items():
    parts = [stacks[i][0].astype(dtype) for i in members]
    sizes = [p.shape[0] for p in parts]
    total = sum(sizes)
    pad = -total % n
    if pad:
      parts.append(jnp.zeros((pad,) + parts[0].shape[1:], dtype))
    big = _place(jnp.concatenate(parts, axis=0), owners)
    o = _place(newton_schulz(big, ns_steps, ns_coeffs, eps), owners)
    start = 0
    for i, size in zip(members, sizes):
      back = stacks[i][1]
      out[i] = back(o[start:start + size].astype(xs[i].dtype))
      start += size
  return out


def _place(x: jax.Array, sharding: Any) -> jax.Array:
  return jax.lax.with_sharding_constraint(x, sharding)


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
    what: str = "scale_by_muon", ns_mesh: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """:func:`scale_by_muon`, with ``scaled=False`` leaving out the shape factor
  (NorMuon applies it in its rate)."""
  validation.check_flag("nesterov", nesterov)
  check_muon_args(momentum, ns_steps, ns_coeffs, eps, ns_dtype, mu_dtype)
  validation.check_static("matrices", matrices, example="nlr.scale_by_muon")
  ns_coeffs = tuple(ns_coeffs)
  mu_dtype = None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype)
  check_ns_mesh(ns_mesh)

  def init_fn(params):
    leaf_views(params, matrices, what=what)  # a clear error at init
    return ScaleByMuonState(mu=jax.tree.map(
        lambda p: jnp.zeros_like(p, dtype=p.dtype if mu_dtype is None else mu_dtype),
        params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    views = leaf_views(updates, matrices, what=what)
    grads, treedef = jax.tree_util.tree_flatten(updates)
    mus = treedef.flatten_up_to(state.mu)
    ds, new_mu = [], []
    for g, m in zip(grads, mus):
      compute = jnp.promote_types(jnp.promote_types(g.dtype, m.dtype), jnp.float32)
      gc, mc = g.astype(compute), m.astype(compute)
      mc = mc + (1 - momentum) * (gc - mc)
      ds.append(gc + momentum * (mc - gc) if nesterov else mc)
      new_mu.append(mc.astype(m.dtype))
    ns = dict(ns_steps=ns_steps, ns_coeffs=ns_coeffs, eps=eps, ns_dtype=ns_dtype)
    if ns_mesh is None:
      os_ = [orthogonalise(d, view, **ns) for d, view in zip(ds, views)]
    else:
      os_ = orthogonalise_on_owners(ds, views, ns_mesh, **ns)
    outs = []
    for g, o, view in zip(grads, os_, views):
      if scaled:
        o = o * shape_scale(view, g.shape)
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
      :func:`optax_neuronlr.model_layout` (every leaf it sees as a matrix);
      a :class:`~optax_neuronlr.MatrixView` for every leaf; a pytree of
      views (or None) shaped like the params, matched by path; or a callable
      ``params -> pytree``. A leaf without a view (a bias, a norm scale) is a
      ``ValueError``: Muon is for matrices; select them with
      ``optax.partition`` / ``optax.masked``, or use :func:`muon`.
    ns_mesh: None (default): each matrix is orthogonalised where it lies
      (a sharded matrix is gathered onto every device, which all run its
      Newton-Schulz); or a ``jax.sharding.Mesh``: the matrices are dealt,
      whole, round-robin over its devices, each orthogonalised on its owner
      (the layout of distributed Muon
      implementations). For automatic sharding (``AxisType.Auto``); see
      docs/scaling.md for what each layout communicates.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`ScaleByMuonState`.
  """
  return muon_direction(momentum, nesterov=nesterov, ns_steps=ns_steps,
                        ns_coeffs=ns_coeffs, eps=eps, ns_dtype=ns_dtype,
                        mu_dtype=mu_dtype, matrices=matrices, ns_mesh=ns_mesh)


# --------------------------------------------------------------------------
# Hidden leaves and the partition shared by muon and normuon.


def _hidden_mask(params: Any, hidden: Any) -> list[bool]:
  """``hidden`` as one bool per leaf of ``params``, checked."""
  treedef = jax.tree.structure(params)
  if hidden is None:
    return [r.hidden for r in layout_lib.model_layout(params).leaves]
  if callable(hidden):
    hidden = hidden(params)
  if isinstance(hidden, (bool, np.bool_)):
    raise TypeError(
        f"hidden must be None, a pytree of bools with the structure of the params, or "
        f"a callable params -> such a pytree; got the bare bool {hidden!r}. "
        + validation._static_hint("hidden", "nlr.normuon"))  # pylint: disable=protected-access
  try:
    flat = treedef.flatten_up_to(hidden)
  except (ValueError, TypeError) as e:
    raise ValueError(
        "hidden must be None, a pytree of bools with the structure of the params, or a "
        f"callable params -> such a pytree; its structure differs: {e}") from e
  for path, value in zip(paths_lib.leaf_paths(params), flat):
    if not isinstance(value, (bool, np.bool_)):
      raise TypeError(f"hidden: expected a bool for leaf '{path}', got "
                      f"{type(value).__name__} {value!r}.")
  return [bool(v) for v in flat]


def normuon_labels(params: Any, hidden: Any = None) -> Any:
  """``"hidden"`` or ``"adamw"`` per leaf: who trains it in :func:`muon` and
  :func:`~optax_neuronlr.normuon`.

  Args:
    params: the parameter tree (arrays, ``jax.ShapeDtypeStruct`` or an NNX state).
    hidden: None: the hidden matrices of :func:`optax_neuronlr.model_layout`
      (attention, MLP and recurrent kernels; not embeddings, the output head,
      norm scales or biases); a pytree of bools shaped like the params; or a
      callable ``params -> pytree of bools`` (``optax.masked``'s convention).

  Returns:
    A pytree of strings shaped like the params.
  """
  mask = _hidden_mask(params, hidden)
  return jax.tree.structure(params).unflatten([HIDDEN if h else ADAMW for h in mask])


def hidden_views(params: Any, hidden: Any, matrices: Any) -> dict[str, MatrixView]:
  """The matrix view of every hidden leaf, by path (from the whole tree)."""
  mask = _hidden_mask(params, hidden)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  if matrices is None:
    lookup = None
    roles = layout_lib.model_layout(params).leaves
  else:
    lookup = _view_lookup(matrices, params)
  out = {}
  for i, ((path, leaf), h) in enumerate(zip(flat, mask)):
    if not h:
      continue
    where = paths_lib.path_str(path)
    shape = tuple(jnp.shape(leaf))
    view = roles[i].matrix if lookup is None else lookup(where)
    if view is None:
      if len(shape) < 2:
        raise ValueError(f"hidden: leaf '{where}' of shape {shape} is not a matrix; "
                         "hidden leaves need two or more dimensions.")
      view = MatrixView(tuple(range(len(shape) - 1)), (len(shape) - 1,))
    out[where] = _check_view(view, shape, where)
  return out


def by_path(views: dict[str, MatrixView]) -> Callable[[Any], Any]:
  """A ``matrices`` callable that reads ``views`` by each leaf's path (works on
  the masked trees that ``optax.partition`` gives its inner transforms)."""
  def matrices(tree):
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return treedef.unflatten([views.get(paths_lib.path_str(p)) for p, _ in flat])
  return matrices


def partitioned(
    hidden_tx: Callable[[Callable[[Any], Any]], optax.GradientTransformation],
    adamw_tx: optax.GradientTransformation, hidden: Any, matrices: Any,
) -> optax.GradientTransformationExtraArgs:
  """``optax.partition`` of ``hidden_tx(matrices)`` on the hidden leaves and
  ``adamw_tx`` elsewhere; the hidden leaves' views come from the whole tree."""
  validation.check_static("hidden", hidden, example="nlr.normuon")
  validation.check_static("matrices", matrices, example="nlr.normuon")

  def inner(tree):
    views = hidden_views(tree, hidden, matrices)
    return optax.partition(
        {HIDDEN: hidden_tx(by_path(views)), ADAMW: adamw_tx},
        lambda t: normuon_labels(t, hidden))

  def init_fn(params):
    return inner(params).init(params)

  def update_fn(updates, state, params=None, **extra_args):
    return inner(updates).update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


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
) -> optax.GradientTransformationExtraArgs:
  r"""Muon on the hidden matrices, AdamW on every other leaf.

  Hidden leaves (:func:`normuon_labels`) follow ``torch.optim.Muon`` with
  decoupled weight decay $\lambda$: with $d_t$ of :func:`scale_by_muon`,

  $$
  p_t = p_{t-1} (1 - \eta_t \lambda) - \eta_t d_t ;
  $$

  the other leaves (embeddings, output head, norm scales, biases) get
  ``optax.adamw(adam_learning_rate, b1, b2, adam_eps, adam_weight_decay)``,
  its decay on embeddings and the head only, never on norm scales or biases
  (:func:`optax_neuronlr.model_layout`'s ``weight_decay``).
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
    hidden: which leaves Muon trains; see :func:`normuon_labels`.
    matrices: the hidden leaves' matrix views (see :func:`scale_by_muon`);
      None: from :func:`optax_neuronlr.model_layout`, else the last axis as
      the output.
    ns_mesh: where Newton-Schulz runs: None (each matrix where it lies) or a
      mesh whose devices each orthogonalise whole matrices; see
      :func:`scale_by_muon`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (an ``optax.partition``
    with the inner states ``"hidden"`` and ``"adamw"``).
  """
  validation.check_rate("learning_rate", learning_rate)
  check_ns_mesh(ns_mesh)
  validation.check_range("weight_decay", weight_decay, low=0.0)
  check_adamw_args(adam_learning_rate, b1, b2, adam_eps, adam_weight_decay)
  validation.check_flag("nesterov", nesterov)
  check_muon_args(momentum, ns_steps, ns_coeffs, eps, ns_dtype, mu_dtype)
  adam_lr = learning_rate if adam_learning_rate is None else adam_learning_rate

  def hidden_tx(views):
    return optax.chain(
        muon_direction(momentum, nesterov=nesterov, ns_steps=ns_steps,
                       ns_coeffs=ns_coeffs, eps=eps, ns_dtype=ns_dtype,
                       mu_dtype=mu_dtype, matrices=views, ns_mesh=ns_mesh),
        optax.scale_by_learning_rate(learning_rate, flip_sign=False),
        moments.decoupled_weight_decay(learning_rate, weight_decay),
        optax.scale(-1.0))

  adamw = optax.adamw(adam_lr, b1, b2, adam_eps, mu_dtype=mu_dtype,
                      weight_decay=adam_weight_decay, mask=layout_lib.weight_decay_mask)
  return partitioned(hidden_tx, adamw, hidden, matrices)

