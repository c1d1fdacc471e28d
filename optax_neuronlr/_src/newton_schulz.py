r"""Newton-Schulz orthogonalisation of the matrices of a leaf.

Muon's direction (Jordan et al., 2024, "Muon: An optimizer for hidden layers
in neural networks", https://kellerjordan.github.io/posts/muon/) is the
orthogonal polar factor of each matrix's momentum, approximated by a few
quintic Newton-Schulz iterations on the matrix divided by its Frobenius norm:

$$
X_0 = \frac{M}{\|M\|_F + \epsilon}, \qquad
X_{j+1} = a X_j + (b A_j + c A_j^2) X_j, \quad A_j = X_j X_j^\top ,
$$

on the orientation whose Gram matrix $A_j$ is the smaller one. This module
holds the iteration (`newton_schulz`), the map from a leaf to its stack
of matrices under a `MatrixView`
(`to_matrices`), and the two places the iteration can run: where each
leaf lies (`orthogonalise`) or on owner devices that each take whole
matrices (`orthogonalise_on_owners`).

Low precision (``ns_dtype="bfloat16"`` or ``"float16"``): the matrices are
stored and multiplied in that dtype, but the Frobenius norm, the
normalisation and every sum of products accumulate in float32, and each
product of the iteration is rounded to the low dtype once, with the
coefficients applied exactly (as ``torch.addmm`` does in
``torch.optim.Muon``'s bfloat16 iteration). A float16 norm would overflow for
a 256 x 256 matrix of unit entries (a zero update) and underflow for
gradients near ``1e-4`` (an inf update); bfloat16 coefficients
(``3.4445 -> 3.4375``) would iterate a different polynomial.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from optax_neuronlr._src import engine
from optax_neuronlr._src import units as units_lib

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def accumulation_dtype(dtype: Any) -> jnp.dtype:
  """The dtype Newton-Schulz accumulates in for matrices of ``dtype``: at
  least float32 (complex64 for complex matrices)."""
  return jnp.promote_types(dtype, jnp.float32)


def to_matrices(x: jax.Array, view: Any) -> tuple[jax.Array, Callable[[jax.Array], jax.Array]]:
  """``x`` as a ``(matrices, fan_in, fan_out)`` stack under ``view`` (a checked
  `MatrixView`), and the map back to ``x``'s shape.

  Batch axes (in neither ``reduction_axes`` nor ``output_axes``) come first,
  in order, then the blocks of ``view.blocks``; one matrix per index.
  """
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
  stack = moved.reshape(math.prod(moved.shape[:len(batch)]), fan_in, fan_out)
  inverse = [perm.index(ax) for ax in range(len(perm))]

  def back(y):
    return jnp.transpose(y.reshape(moved.shape), inverse).reshape(shape)

  return stack, back


def newton_schulz(
    x: jax.Array, ns_steps: Any = 5, ns_coeffs: Sequence[Any] = NS_COEFFS,
    eps: Any = 1e-7,
) -> jax.Array:
  r"""Quintic Newton-Schulz orthogonalisation of a stack of matrices.

  ``x`` is ``(..., fan_in, fan_out)`` (Flax orientation; a PyTorch weight is
  its transpose). Each matrix is divided by its Frobenius norm plus ``eps``
  and iterated ``ns_steps`` times, $X \leftarrow a X + (b A + c A^2) X$ with
  $A = X X^\top$ ($X X^H$ for complex matrices, whose polar factor it
  then approaches), on the orientation with the smaller Gram matrix (as the
  references: PyTorch's ``(out, in)`` weight, transposed when
  ``out > in``).

  The iterates are kept in ``x``'s dtype; the norm, the division and every
  product accumulate in at least float32 and are rounded to ``x``'s dtype
  once each (`accumulation_dtype`), with the coefficients exact. For
  float32 and wider inputs this is the plain iteration. ``ns_steps`` and
  the coefficients may be traced.
  """
  dtype = x.dtype
  acc = accumulation_dtype(dtype)
  real = jnp.finfo(acc).dtype
  a, b, c = (jnp.asarray(k, real) for k in ns_coeffs)
  adjoint = lambda m: jnp.conj(jnp.swapaxes(m, -1, -2))
  mm = lambda p, q: jnp.matmul(p, q, preferred_element_type=acc)
  fan_in, fan_out = x.shape[-2:]
  flip = fan_out <= fan_in  # the PyTorch weight (out, in) itself: rows = fan_out
  if flip:
    x = jnp.swapaxes(x, -1, -2)
  wide = x.astype(acc)
  norm = jnp.sqrt(jnp.sum(engine.abs_sq(wide), axis=(-2, -1), keepdims=True))
  x = (wide / (norm + jnp.asarray(eps, real))).astype(dtype)

  def body(_, x):
    gram = mm(x, adjoint(x)).astype(dtype)
    poly = (b * gram.astype(acc) + c * mm(gram, gram)).astype(dtype)
    return (a * x.astype(acc) + mm(poly, x)).astype(dtype)

  x = jax.lax.fori_loop(0, ns_steps, body, x)
  return jnp.swapaxes(x, -1, -2) if flip else x


# On XLA:CPU a batched matmul streams the whole stack through the cache at
# every product; a deep stack (24 layers of (128, 512)) is then several times
# slower than its matrices one by one. There the stack runs in chunks of about
# this many bytes (one compiled body, ``lax.map``); accelerators take it whole.
CPU_CHUNK_BYTES = 1 << 20


def stacked_newton_schulz(
    stack: jax.Array, ns_steps: Any = 5, ns_coeffs: Sequence[Any] = NS_COEFFS,
    eps: Any = 1e-7,
) -> jax.Array:
  """`newton_schulz` of a ``(matrices, fan_in, fan_out)`` stack: one
  batched iteration, in chunks of `CPU_CHUNK_BYTES` on the CPU."""
  n = stack.shape[0]
  size = max(1, stack.shape[1] * stack.shape[2] * jnp.dtype(stack.dtype).itemsize)
  chunk = max(1, CPU_CHUNK_BYTES // size)
  if n <= chunk or jax.default_backend() != "cpu":
    return newton_schulz(stack, ns_steps, ns_coeffs, eps)
  return jax.lax.map(lambda m: newton_schulz(m, ns_steps, ns_coeffs, eps), stack,
                     batch_size=chunk)


def orthogonalise(
    x: jax.Array, view: Any, *, ns_steps: Any = 5,
    ns_coeffs: Sequence[Any] = NS_COEFFS, eps: Any = 1e-7, ns_dtype: Any = None,
) -> jax.Array:
  """Newton-Schulz of each matrix of ``x`` under ``view`` (batch axes and blocks
  each a matrix, all in one batched iteration), in ``ns_dtype`` (None:
  ``x``'s dtype); returns ``x``'s dtype."""
  spec = units_lib.explicit_spec(x)
  sharded = spec is not None and any(a is not None for a in spec)
  if sharded:
    # Newton-Schulz needs each whole matrix: on an explicit-sharding mesh the
    # leaf is gathered (one all-gather of its size), orthogonalised on every
    # device, and each device keeps its shard of the result.
    replicated = units_lib.on_mesh_of(x, ())
    x = jax.sharding.reshard(x, replicated)
  stack, back = to_matrices(x, view)
  dtype = x.dtype if ns_dtype is None else engine.element_dtype(x.dtype, ns_dtype)
  o = stacked_newton_schulz(stack.astype(dtype), ns_steps, ns_coeffs, eps)
  out = back(o.astype(x.dtype))
  if sharded:
    assert spec is not None
    out = jax.sharding.reshard(out, units_lib.on_mesh_of(out, spec))
  return out


def check_ns_mesh(ns_mesh: Any) -> None:
  """``ns_mesh`` is None or a mesh (a ``TypeError`` naming it otherwise)."""
  if ns_mesh is not None and not isinstance(
      ns_mesh, (jax.sharding.Mesh, jax.sharding.AbstractMesh)):
    raise TypeError("ns_mesh must be None or a jax.sharding.Mesh (or AbstractMesh), got "
                    f"{type(ns_mesh).__name__} {ns_mesh!r}.")


def orthogonalise_on_owners(
    xs: Sequence[jax.Array], views: Sequence[Any], mesh: Any, *, ns_steps: Any = 5,
    ns_coeffs: Sequence[Any] = NS_COEFFS, eps: Any = 1e-7, ns_dtype: Any = None,
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
  Equal to `orthogonalise` of each leaf up to float rounding.

  For automatic sharding (a mesh of ``AxisType.Auto`` axes, ``jax.jit``
  with shardings): the placement is a ``with_sharding_constraint``.
  """
  if any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types) or any(
      units_lib.explicit_spec(x) is not None for x in xs):
    raise ValueError(
        "ns_mesh is for automatic sharding (a mesh of AxisType.Auto axes and jax.jit "
        "with shardings); on an explicit-sharding mesh leave ns_mesh=None.")
  stacks = [to_matrices(x, view) for x, view in zip(xs, views)]
  groups: dict[tuple, list[int]] = {}
  for i, (stack, _) in enumerate(stacks):
    dtype = stack.dtype if ns_dtype is None else engine.element_dtype(stack.dtype, ns_dtype)
    groups.setdefault((stack.shape[1:], jnp.dtype(dtype).name), []).append(i)
  owners = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(tuple(mesh.axis_names), None, None))
  n = math.prod(mesh.axis_sizes)
  out: list[Any] = [None] * len(xs)
  for (_, dtype), members in groups.items():
    parts = [stacks[i][0].astype(dtype) for i in members]
    sizes = [p.shape[0] for p in parts]
    pad = -sum(sizes) % n
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
