"""dtypes of a leaf's statistics, and the real and complex helpers rules share."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def stat_dtype(leaf_dtype: Any, state_dtype: Any) -> jnp.dtype:
  """dtype of a leaf's statistics: float32 for half-precision leaves."""
  canonical = jax.dtypes.canonicalize_dtype  # float64 -> float32 without x64
  if state_dtype is not None:
    return canonical(state_dtype)
  leaf_dtype = jnp.dtype(leaf_dtype)
  if leaf_dtype in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return jnp.dtype(jnp.float32)
  if not jnp.issubdtype(leaf_dtype, jnp.floating):  # complex leaves: real statistics
    return jnp.dtype(jnp.result_type(float))
  return canonical(leaf_dtype)


def abs_sq(x: jax.Array) -> jax.Array:
  r"""$|x|^2$, elementwise: ``x * x`` for real ``x``, ``Re(x * conj(x))`` for
  complex ``x`` (where ``x * x`` would keep $\mathrm{Re}(x^2) = a^2 - b^2$,
  negative when the imaginary part outweighs the real part)."""
  if jnp.iscomplexobj(x):
    return jnp.real(x * jnp.conj(x))
  return x * x


def element_dtype(leaf_dtype: Any, dtype: Any) -> jnp.dtype:
  """dtype of an element statistic (or a first moment) of a leaf: complex for
  complex leaves, so that a moment keeps the imaginary part."""
  if jnp.issubdtype(leaf_dtype, jnp.complexfloating):
    return jnp.promote_types(dtype, jnp.complex64)
  return jnp.dtype(dtype)


def real_part(x: jax.Array) -> jax.Array:
  """Per-unit statistics are real: observed complex quantities keep their real part."""
  return jnp.real(x) if jnp.iscomplexobj(x) else x
