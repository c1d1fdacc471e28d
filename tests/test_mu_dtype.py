"""``mu_dtype``: the first moment stored in another dtype, the math in float32.

The reference for every optimizer is the same optimizer in float32 whose
first moments are rounded to ``mu_dtype`` (and kept in float32) after each
step: a bfloat16 first moment must give exactly that trajectory, with the
stored leaves in bfloat16 and every other statistic in float32.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_neuronlr as nlr

STEPS = 4
# Paths (as strings) of the state leaves that hold a first moment.
MOMENT_FIELDS = ("ema", "mu")


def make_params(seed=0):
  rng = np.random.default_rng(seed)
  shapes = {"embed": {"embedding": (11, 6)},
            "attn": {"query": {"kernel": (6, 2, 3)}, "out": {"kernel": (2, 3, 6)}},
            "mlp": {"fc1": {"kernel": (6, 12), "bias": (12,)}, "fc2": {"kernel": (12, 6)}},
            "norm": {"scale": (6,)}, "head": {"kernel": (6, 11)}}
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                      is_leaf=lambda s: isinstance(s, tuple))


def grads_at(k, params):
  rng = np.random.default_rng(100 + k)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 10.0 ** (k % 3 - 1),
                                            p.dtype), params)


def _is_moment(path) -> bool:
  return any(getattr(k, "name", None) in MOMENT_FIELDS for k in path)


def moment_leaves(state) -> dict[str, jax.Array]:
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  return {jax.tree_util.keystr(p): x for p, x in flat if _is_moment(p)}


def round_moments(state, dtype):
  """The float32 reference's state with its first moments rounded to ``dtype``."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: x.astype(dtype).astype(x.dtype) if _is_moment(p) else x, state)


def other_leaves(state) -> dict[str, jax.Array]:
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  return {jax.tree_util.keystr(p): x for p, x in flat
          if not _is_moment(p) and jnp.issubdtype(x.dtype, jnp.floating) and x.ndim}


# Where the first moment is optax's own (``optax.scale_by_adam(mu_dtype=...)``:
# AdamW's leaves in muon/normuon, Adam's direction in adam_hd), optax computes
# ``b1 * m`` in the stored dtype before adding in float32, so those updates
# match the reference to bfloat16 rounding of that product, not exactly.
OPTAX_MOMENT = {
    "muon": lambda path: not path.startswith(("['attn']", "['mlp']['fc")) or "bias" in path,
    "normuon": lambda path: not path.startswith(("['attn']", "['mlp']['fc")) or "bias" in path,
    "adam_hd": lambda path: True,
}

OPTIMIZERS = {
    "adam_mini": lambda **k: nlr.adam_mini(1e-2, weight_decay=0.1, on_unrecognised="ignore",
                                           **k),
    "scale_by_adam_mini": lambda **k: nlr.scale_by_adam_mini(1.0, on_unrecognised="ignore", **k),
    "normuon": lambda **k: nlr.normuon(2e-2, weight_decay=0.1, **k),
    "muon": lambda **k: nlr.muon(2e-2, weight_decay=0.1, **k),
    "scale_sgd": lambda **k: nlr.scale_sgd(1e-2, weight_decay=0.1, **k),
    "adam_hd": lambda **k: nlr.adam_hd(1e-2, 1e-4, granularity="neuron", **k),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_bf16_first_moment_is_float32_math_rounded(name):
  make = OPTIMIZERS[name]
  params = make_params()
  tx, ref = make(mu_dtype=jnp.bfloat16), make()
  state, ref_state = tx.init(params), ref.init(params)
  moments = moment_leaves(state)
  assert moments, "no first moment found"
  for path, leaf in moments.items():
    assert leaf.dtype == jnp.bfloat16, path
  for path, leaf in other_leaves(state).items():
    assert leaf.dtype == jnp.float32, path  # second moments, rates: untouched
  step, ref_step = jax.jit(tx.update), jax.jit(ref.update)
  p, ref_p = params, params
  for k in range(STEPS):
    u, state = step(grads_at(k, p), state, p)
    ref_u, ref_state = ref_step(grads_at(k, ref_p), ref_state, ref_p)
    ref_state = round_moments(ref_state, jnp.bfloat16)
    loose = OPTAX_MOMENT.get(name, lambda path: False)
    ref_flat = dict(jax.tree_util.tree_flatten_with_path(ref_u)[0])
    for path, a in jax.tree_util.tree_flatten_with_path(u)[0]:
      assert a.dtype == jnp.float32
      where = jax.tree_util.keystr(path)
      scale = float(jnp.max(jnp.abs(ref_flat[path])))
      tol = (dict(rtol=0, atol=2e-2 * scale) if loose(where)
             else dict(rtol=2e-6, atol=1e-7))
      np.testing.assert_allclose(a, ref_flat[path], err_msg=where, **tol)
    p, ref_p = optax.apply_updates(p, u), optax.apply_updates(ref_p, ref_u)
  for path, leaf in moment_leaves(state).items():
    assert leaf.dtype == jnp.bfloat16, path
    want = moment_leaves(ref_state)[path]
    if name in OPTAX_MOMENT:
      np.testing.assert_allclose(leaf.astype(jnp.float32), want, rtol=0,
                                 atol=2e-2 * float(jnp.max(jnp.abs(want))), err_msg=path)
    else:
      np.testing.assert_array_equal(leaf.astype(jnp.float32), want, err_msg=path)
  # The bf16 moment changes the trajectory (else the test would see nothing).
  plain_state, plain_p = make().init(params), params
  for k in range(STEPS):
    plain_u, plain_state = ref_step(grads_at(k, plain_p), plain_state, plain_p)
    plain_p = optax.apply_updates(plain_p, plain_u)
  assert max(float(jnp.max(jnp.abs(a - b))) for a, b in
             zip(jax.tree.leaves(p), jax.tree.leaves(plain_p))) > 0


def test_first_moment_default_is_unchanged():
  """Without ``mu_dtype`` the moment keeps the statistics dtype (bf16 params:
  float32) and ``state_dtype`` still sets it."""
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), make_params())
  for leaf in moment_leaves(nlr.adam_mini(1e-3, on_unrecognised="ignore").init(params)).values():
    assert leaf.dtype == jnp.float32
  tx = nlr.adam_mini(1e-3, on_unrecognised="ignore", state_dtype=jnp.bfloat16,
                     mu_dtype=jnp.float32)
  state = tx.init(params)
  for leaf in moment_leaves(state).values():
    assert leaf.dtype == jnp.float32
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state[0].v))


def test_state_bytes_halve():
  params = make_params()
  size = lambda s: sum(x.nbytes for x in jax.tree.leaves(s))
  for name, make in OPTIMIZERS.items():
    full, half = make().init(params), make(mu_dtype="bfloat16").init(params)
    moment = sum(x.nbytes for x in moment_leaves(full).values())
    assert size(full) - size(half) == moment // 2, name


def test_adam_hd_mu_dtype_is_keyword_only():
  sig = inspect.signature(nlr.adam_hd)
  assert sig.parameters["mu_dtype"].kind is inspect.Parameter.KEYWORD_ONLY
  positional = [n for n, p in sig.parameters.items()
                if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
  assert positional[:5] == ["learning_rate", "hyper_lr", "b1", "b2", "eps"]


def test_state_shardings_of_bf16_moments():
  mesh = jax.make_mesh((1,), ("x",))
  params = make_params()
  p_sh = jax.tree.map(lambda _: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
                      params)
  tx = nlr.adam_mini(1e-3, mu_dtype="bfloat16", on_unrecognised="ignore")
  state = jax.jit(tx.init, out_shardings=nlr.state_shardings(tx, params, p_sh))(params)
  assert all(x.dtype == jnp.bfloat16 for x in moment_leaves(state).values())


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("bad, error", [("int32", ValueError), ("complex64", ValueError),
                                        ("not_a_dtype", TypeError), (3, TypeError)])
def test_bad_mu_dtype_names_the_argument(name, bad, error):
  with pytest.raises(error, match="mu_dtype"):
    OPTIMIZERS[name](mu_dtype=bad)
