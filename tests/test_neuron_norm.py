"""Per-neuron normalised SGD: ``nlr.scale_by_neuron_norm``, ``nlr.neuron_norm_sgd``
and SCALE, ``nlr.scale_sgd`` (Glentis et al., 2025; issue 12).

The math is checked against a NumPy loop over leaves (independent of the
engine's layouts); SCALE's groups by path and shape on NNX and linen
transformers; its head momentum and its AdamW on vectors against NumPy and
``optax.adamw``; its state size, dtypes, ``inject_hyperparams`` and argument
checks.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optax_neuronlr as nlr
from tests.test_adam_mini_blocks import D, HEADS, HEAD_DIM, MLP, VOCAB
from tests.test_adam_mini_blocks import LinenTransformer, NnxTransformer

TOKENS = jax.random.randint(jax.random.key(1), (4, 7), 0, VOCAB)


def _flat(tree) -> dict:
  return {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in p
                   if getattr(k, "name", None) != "value"): v
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _nbytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------
# scale_by_neuron_norm: the math, against NumPy.

SHAPES = {"kernel": (5, 3), "qkv": (4, 2, 3), "bias": (3,), "scalar": ()}
# Which axes of each leaf are reduced over (the fan-in); the others index neurons.
FAN_IN = {"kernel": (0,), "qkv": (0,), "bias": (), "scalar": ()}


def _numpy_neuron_norm(grads, lr, eps):
  out, rms = {}, {}
  for name, g in grads.items():
    g = np.asarray(g, np.float64)
    axes = FAN_IN[name]
    r = np.sqrt(np.mean(g * g, axis=axes, keepdims=True)) if axes else np.abs(g)
    out[name] = lr * g / np.maximum(r, eps)
    rms[name] = r
  return out, rms


def test_scale_by_neuron_norm_matches_numpy():
  rng = np.random.default_rng(0)
  lr, eps = 0.05, 1e-3
  tx = nlr.scale_by_neuron_norm(lr, eps,
                                neuron_axes={"kernel": -1, "qkv": (1, 2), "bias": -1,
                                             "scalar": -1}, granularity="neuron")
  with jax.enable_x64(True):
    params = {k: jnp.zeros(s, jnp.float64) for k, s in SHAPES.items()}
    state = tx.init(params)
    for step in range(3):
      grads = {k: rng.normal(size=s) * 10.0 ** rng.integers(-4, 2) for k, s in SHAPES.items()}
      grads["kernel"][:, 1] = 0.0  # an all-zero neuron: eps keeps it finite (and still)
      if step == 2:
        grads["kernel"][:, 2] *= 1e-6  # below eps: not blown up to lr
      want, rms = _numpy_neuron_norm(grads, lr, eps)
      updates, state = jax.jit(tx.update)(
          {k: jnp.asarray(v) for k, v in grads.items()}, state, params)
      for k in SHAPES:
        np.testing.assert_allclose(np.asarray(updates[k]), want[k], rtol=1e-12, atol=1e-300,
                                   err_msg=f"{k} at step {step}")
      rates = nlr.learning_rates(state)
      np.testing.assert_allclose(rates["kernel"], lr / np.maximum(rms["kernel"][0], eps))
      np.testing.assert_allclose(rates["qkv"], lr / np.maximum(rms["qkv"][0], eps))
  # A neuron whose RMS reaches eps moves by RMS lr; the zero one stays; the tiny one
  # (RMS below eps) moves by lr * RMS / eps.
  u = np.asarray(updates["kernel"])
  r = rms["kernel"][0]
  step_rms = np.sqrt((u * u).mean(axis=0))
  np.testing.assert_allclose(step_rms[r >= eps], lr, rtol=1e-12)
  np.testing.assert_allclose(step_rms[r < eps], lr * r[r < eps] / eps, rtol=1e-12)
  assert np.all(u[:, 1] == 0) and step_rms[2] < lr * 1e-2


def test_neuron_norm_sgd_with_momentum_direction():
  """neuron_norm_sgd(direction=ema) normalises the momentum, negated."""
  params = {"w": jnp.zeros((4, 3))}
  rng = np.random.default_rng(1)
  grads = [rng.normal(size=(4, 3)) for _ in range(3)]
  tx = nlr.neuron_norm_sgd(0.1, direction=optax.ema(0.9, debias=False))
  state = tx.init(params)
  m = np.zeros((4, 3))
  for g in grads:
    m = 0.9 * m + 0.1 * g
    updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
    want = -0.1 * m / np.sqrt((m * m).mean(axis=0, keepdims=True))
    np.testing.assert_allclose(updates["w"], want, rtol=1e-5)


# ---------------------------------------------------------------------------
# SCALE: groups by path and shape.


def _nnx_labels_expected(prefix: str) -> dict:
  out = {}
  for m in ("query", "key", "value"):
    out[f"{prefix}/attn/{m}/kernel"] = "hidden"
    out[f"{prefix}/attn/{m}/bias"] = "vector"  # (heads, head_dim): a bias
  out.update({f"{prefix}/attn/out/kernel": "hidden", f"{prefix}/attn/out/bias": "vector",
              f"{prefix}/fc1/kernel": "hidden", f"{prefix}/fc1/bias": "vector",
              f"{prefix}/fc2/kernel": "hidden", f"{prefix}/fc2/bias": "vector",
              f"{prefix}/ln1/scale": "vector", f"{prefix}/ln1/bias": "vector",
              f"{prefix}/ln2/scale": "vector"})
  return out


def test_scale_sgd_labels_nnx_and_linen():
  params = nnx.state(nnx.eval_shape(lambda: NnxTransformer(nnx.Rngs(0))), nnx.Param)
  want = {"embed/embedding": "hidden", "head/kernel": "head", "head/bias": "vector",
          "ln_f/scale": "vector", "ln_f/bias": "vector"}
  for i in range(2):
    want.update(_nnx_labels_expected(f"blocks/{i}"))
  assert _flat(nlr.scale_sgd_labels(params)) == want
  assert jax.tree.structure(nlr.scale_sgd_labels(params)) == jax.tree.structure(params)

  linen = jax.eval_shape(LinenTransformer().init, jax.random.key(0), TOKENS)
  labels = _flat(nlr.scale_sgd_labels(linen))
  assert labels["params/lm_head/kernel"] == "head"
  assert labels["params/Embed_0/embedding"] == "hidden"
  assert labels["params/LinenBlock_0/Dense_0/kernel"] == "hidden"
  assert labels["params/LinenBlock_0/RMSNorm_0/scale"] == "vector"
  # An unnamed head (linen's Dense_N): found by shape, (d, vocab) against (vocab, d).
  renamed = {"params": {("Dense_9" if k == "lm_head" else k): v
                        for k, v in linen["params"].items()}}
  assert _flat(nlr.scale_sgd_labels(renamed))["params/Dense_9/kernel"] == "head"
  # A selector, or none.
  labels = _flat(nlr.scale_sgd_labels(params, head=r"blocks/1/fc2"))
  assert labels["blocks/1/fc2/kernel"] == "head" and labels["head/kernel"] == "hidden"
  assert "head" not in _flat(nlr.scale_sgd_labels(params, head=False)).values()


def test_scale_sgd_units_and_rates_on_nnx():
  model = NnxTransformer(nnx.Rngs(0))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    optimizer = nnx.Optimizer(model, nlr.scale_sgd(1e-2, weight_decay=0.1), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, tokens):
    loss_fn = lambda m: optax.softmax_cross_entropy_with_integer_labels(
        m(tokens[:, :-1]), tokens[:, 1:]).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer, TOKENS)) for _ in range(8)]
  assert losses[-1] < losses[0] - 0.1, losses
  rates = _flat(nlr.learning_rates(optimizer.opt_state))
  assert rates["blocks/0/attn/query/kernel"].shape == (HEADS, HEAD_DIM)  # per output neuron
  assert rates["blocks/0/attn/out/kernel"].shape == (D,)
  assert rates["blocks/0/fc1/kernel"].shape == (MLP,)
  assert rates["embed/embedding"].shape == (D,)       # per feature, over the vocabulary
  assert rates["head/kernel"].shape == (VOCAB,)       # per token
  assert rates["blocks/0/ln1/scale"].shape == (D,)    # Adam: per element
  rows = {r.path: r for r in nlr.optimizer_layout(optimizer.opt_state,
                                                  nnx.state(model, nnx.Param)).rows}
  assert rows["head/kernel"].group == "head" and rows["head/kernel"].strategy == "neuron_norm"
  assert rows["blocks/0/fc1/kernel"].group == "hidden"
  assert rows["ln_f/scale"].group == "vector"


def test_scale_sgd_step_against_numpy_and_adamw():
  """hidden: g / rms; head: momentum (no debias) / rms; vectors: optax.adamw."""
  rng = np.random.default_rng(0)
  params = {"embed": {"embedding": rng.normal(size=(VOCAB, D))},
            "fc": {"kernel": rng.normal(size=(D, MLP)), "bias": rng.normal(size=(MLP,))},
            "lm_head": {"kernel": rng.normal(size=(D, VOCAB)), "bias": rng.normal(size=(VOCAB,))},
            "norm": {"scale": rng.normal(size=(D,))}}
  grads = [jax.tree.map(lambda x: rng.normal(size=x.shape), params) for _ in range(3)]
  lr, alr, wd, awd, mu = 0.1, 0.01, 0.05, 0.02, 0.8
  with jax.enable_x64(True):
    to_jax = lambda t: jax.tree.map(jnp.asarray, t)
    tx = nlr.scale_sgd(lr, mu, weight_decay=wd, adam_learning_rate=alr, adam_weight_decay=awd)
    adamw = optax.adamw(alr, weight_decay=awd)
    p, vec = to_jax(params), to_jax({"fc": {"bias": params["fc"]["bias"]},
                                     "lm_head": {"bias": params["lm_head"]["bias"]},
                                     "norm": {"scale": params["norm"]["scale"]}})
    state, adam_state = tx.init(p), adamw.init(vec)
    want = jax.tree.map(np.asarray, params)
    m = np.zeros((D, VOCAB))
    for g in grads:
      updates, state = jax.jit(tx.update)(to_jax(g), state, p)
      g_vec = {"fc": {"bias": g["fc"]["bias"]}, "lm_head": {"bias": g["lm_head"]["bias"]},
               "norm": {"scale": g["norm"]["scale"]}}
      adam_updates, adam_state = adamw.update(to_jax(g_vec), adam_state, vec)
      vec = optax.apply_updates(vec, adam_updates)
      p = optax.apply_updates(p, updates)
      # NumPy: the matrices.
      for key, axis in (("embed/embedding", 0), ("fc/kernel", 0)):
        a, b = key.split("/")
        x, gx = want[a][b], g[a][b]
        want[a][b] = x - lr * gx / np.sqrt((gx * gx).mean(axis=axis, keepdims=True)) - lr * wd * x
      m = mu * m + (1 - mu) * g["lm_head"]["kernel"]
      x = want["lm_head"]["kernel"]
      want["lm_head"]["kernel"] = x - lr * m / np.sqrt((m * m).mean(0, keepdims=True)) - lr * wd * x
      got = _flat(p)
      for key in ("embed/embedding", "fc/kernel", "lm_head/kernel"):
        a, b = key.split("/")
        np.testing.assert_allclose(got[key], want[a][b], rtol=1e-12, err_msg=key)
      for key, value in _flat(vec).items():
        np.testing.assert_allclose(got[key], value, rtol=1e-10, err_msg=key)


def test_scale_sgd_memory_of_hidden_matrices():
  """One number per output neuron: at most 0.05x AdamW's state on the same leaves."""
  params = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: NnxTransformer(nnx.Rngs(0))),
                                      nnx.Param))
  labels = nlr.scale_sgd_labels(params)
  hidden = jax.tree.map(lambda x, l: x if l == "hidden" else None, params, labels)
  state = jax.eval_shape(nlr.scale_sgd(1e-3, weight_decay=0.1).init, params)
  ours = _nbytes(state.inner_states["hidden"])
  adamw = _nbytes(jax.eval_shape(optax.adamw(1e-3, weight_decay=0.1).init, hidden))
  # The toy model's D=8 makes the per-neuron share large (1/D of adamw's 2 moments);
  # the memory benchmark's transformers give 1e-3x and less.
  assert ours <= 0.1 * adamw, ours / adamw
  n_neurons = sum(x.size // x.shape[0] for x in jax.tree.leaves(hidden))
  assert ours - 4 * n_neurons < 64  # plus a few scalars


def test_scale_sgd_warns_once_without_a_head():
  params = {"encoder": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}}
  tx = nlr.scale_sgd(1e-2)
  with pytest.warns(UserWarning, match="no output head") as record:
    state = tx.init(params)
  assert record[0].filename == __file__
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    tx.init(params)
    jax.jit(tx.update)(params, state, params)
    nlr.scale_sgd(1e-2, head=False).init(params)


@pytest.mark.parametrize("state_dtype, want", [(None, jnp.float32), (jnp.bfloat16, jnp.bfloat16)])
def test_scale_sgd_bfloat16(state_dtype, want):
  params = {"fc": {"kernel": jnp.ones((8, 4), jnp.bfloat16), "bias": jnp.zeros(4, jnp.bfloat16)},
            "lm_head": {"kernel": jnp.ones((4, 6), jnp.bfloat16)}}
  tx = nlr.scale_sgd(1e-2, state_dtype=state_dtype)
  state = tx.init(params)
  grads = jax.tree.map(lambda x: jnp.full(x.shape, 0.5, jnp.bfloat16), params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  for x in jax.tree.leaves(state):
    if jnp.issubdtype(x.dtype, jnp.floating) and x.ndim:
      assert x.dtype == want, x
  assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
  np.testing.assert_allclose(np.asarray(updates["fc"]["kernel"], np.float32), -1e-2, rtol=1e-2)


def test_scale_sgd_inject_hyperparams_and_schedule():
  params = {"fc": {"kernel": jnp.ones((5, 3)), "bias": jnp.ones(3)},
            "lm_head": {"kernel": jnp.ones((3, 7))}}
  grads = jax.tree.map(lambda x: jnp.linspace(-1, 1, x.size).reshape(x.shape), params)
  hp = dict(learning_rate=0.1, momentum=0.8, eps=1e-6, weight_decay=0.1,
            adam_learning_rate=0.01, b1=0.8, b2=0.9, adam_eps=1e-6, adam_weight_decay=0.01)
  injected = optax.inject_hyperparams(nlr.scale_sgd)(**hp)
  s1 = injected.init(params)
  assert sorted(s1.hyperparams) == sorted(hp)
  u1, _ = jax.jit(injected.update)(grads, s1, params)
  plain = nlr.scale_sgd(**hp)
  u2, _ = plain.update(grads, plain.init(params), params)
  for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
  # A schedule: the step of a normalised neuron has RMS schedule(t).
  schedule = optax.linear_schedule(0.1, 0.0, 4)
  tx = nlr.scale_sgd(schedule)
  state = tx.init(params)
  for t in range(3):
    u, state = tx.update(grads, state, params)
    k = np.asarray(u["fc"]["kernel"])
    np.testing.assert_allclose(np.sqrt((k * k).mean(axis=0)), schedule(t), rtol=1e-5)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(momentum=1.0), ValueError, "momentum must lie in"),
    (dict(eps=0.0), ValueError, "eps must lie in"),
    (dict(weight_decay=-1.0), ValueError, "weight_decay"),
    (dict(adam_weight_decay=-1.0), ValueError, "adam_weight_decay"),
    (dict(adam_eps=-1.0), ValueError, "adam_eps"),
    (dict(b2=1.5), ValueError, "b2"),
    (dict(adam_learning_rate="fast"), TypeError, "adam_learning_rate"),
    (dict(learning_rate=None), TypeError, "learning_rate"),
    (dict(head=3), TypeError, "head must be"),
    (dict(head="("), ValueError, "regular expression"),
    (dict(state_dtype="int8"), ValueError, "state_dtype"),
])
def test_scale_sgd_argument_errors(kwargs, error, match):
  kwargs = {"learning_rate": 1e-3, **kwargs}
  with pytest.raises(error, match=match):
    nlr.scale_sgd(**kwargs)


def test_scale_by_neuron_norm_argument_errors():
  with pytest.raises(ValueError, match="eps must lie in"):
    nlr.scale_by_neuron_norm(1.0, -1.0)
  with pytest.raises(ValueError, match="neuron_axes"):
    nlr.scale_by_neuron_norm(1.0, granularity="tensor", neuron_axes=0)
  with pytest.raises(TypeError, match="learning_rate"):
    nlr.neuron_norm_sgd("0.1")
