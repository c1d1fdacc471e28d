"""Property-based tests over random parameter trees (hypothesis)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optax_neuronlr as nlr
from tests.conftest import ALIASES

DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)

shapes = st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple)


@st.composite
def trees(draw):
  """A nested dict of 1..5 leaves with random shapes, dtypes and None leaves."""
  n = draw(st.integers(1, 5))
  tree, seed = {}, draw(st.integers(0, 2**16))
  rng = np.random.default_rng(seed)
  for i in range(n):
    shape = draw(shapes)
    dtype = draw(st.sampled_from(DTYPES))
    scale = 10.0 ** draw(st.integers(-6, 3))
    leaf = jnp.asarray(rng.normal(size=shape) * scale, dtype)
    tree.setdefault(f"m{i % 2}", {})[f"w{i}"] = leaf
  if draw(st.booleans()):
    tree["empty"] = None
  return tree


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    tree=trees(),
    rule=st.sampled_from(sorted(ALIASES)),
    granularity=st.sampled_from(nlr.GRANULARITIES),
    min_lr=st.sampled_from([0.0, 1e-6, 1e-3]),
    max_lr=st.sampled_from([1e-2, 1.0, float("inf")]),
    steps=st.integers(1, 3),
)
def test_shapes_dtypes_clamps_finiteness(tree, rule, granularity, min_lr, max_lr, steps):
  tx = ALIASES[rule](1e-3, min_lr=min_lr, max_lr=max_lr, granularity=granularity)
  state = tx.init(tree)
  for k in range(steps):
    grads = jax.tree.map(lambda x: x * (-1) ** k, tree)
    updates, state = tx.update(grads, state, tree)
  assert jax.tree.structure(updates) == jax.tree.structure(tree)
  for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(tree)):
    assert u.shape == p.shape and u.dtype == p.dtype
    assert bool(jnp.all(jnp.isfinite(u.astype(jnp.float32)))) or max_lr == float("inf")
  for r in jax.tree.leaves(nlr.learning_rates(state)):
    r = np.asarray(r, np.float64)
    assert np.all(r >= np.float32(min_lr) * (1 - 1e-6))
    assert np.all(r <= max_lr * (1 + 1e-6))
