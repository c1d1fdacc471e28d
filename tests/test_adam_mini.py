"""``nlr.adam_mini`` / ``nlr.scale_by_adam_mini``: the optimizer (issue 12).

The blocks themselves are tested in ``test_adam_mini_blocks.py`` and the whole
run against the PyTorch reference in ``test_parity_adam_mini.py``; here: the
optimizer on NNX and linen transformers as they are, its update against a
NumPy restatement (fused-head blocks, which the parity model lacks), what it
reports, its state (size, dtypes), schedules, ``inject_hyperparams``, the
rates it exposes and its argument checks.
"""

from __future__ import annotations

import functools
import pathlib
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optax_neuronlr as nlr
from optax_neuronlr._src.rules import adam_mini as am
from tests.test_adam_mini_blocks import D, HEADS, HEAD_DIM, VOCAB
from tests.test_adam_mini_blocks import FusedHeadsAttention, LinenTransformer
from tests.test_adam_mini_blocks import NnxTransformer, WithUnrecognised

TOKENS = jax.random.randint(jax.random.key(1), (4, 7), 0, VOCAB)


def _flat(tree) -> dict:
  return {"/".join(am._path_keys(p)): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _nbytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _lm_loss(logits, tokens):
  return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()


# ---------------------------------------------------------------------------
# NNX and linen transformers, as they are.


def test_nnx_transformer_as_is():
  model = NnxTransformer(nnx.Rngs(0))
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # every leaf is recognised: nothing to report
    optimizer = nnx.Optimizer(model, nlr.adam_mini(3e-3, weight_decay=0.1), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, tokens):
    loss, grads = nnx.value_and_grad(lambda m: _lm_loss(m(tokens[:, :-1]), tokens[:, 1:]))(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer, TOKENS)) for _ in range(8)]
  assert losses[-1] < losses[0] - 0.1, losses

  # One second moment per block: the partition's units, leaf by leaf.
  params = nnx.state(model, nnx.Param)
  partition = nlr.adam_mini_partition(params, on_unrecognised="error").by_path()
  rates = _flat(nlr.learning_rates(optimizer.opt_state))
  assert sorted(rates) == sorted(partition)
  for path, leaf in partition.items():
    assert rates[path].size == leaf.num_units, path
  assert rates["blocks/0/attn/query/kernel"].shape == (HEADS,)  # per head
  assert rates["embed/embedding"].shape == (VOCAB,)              # per token

  # optimizer_layout shows the blocks: units per leaf, strategy adam_mini
  # (adam where one unit per element makes it Adam, e.g. biases).
  layout = {r.path: r for r in nlr.optimizer_layout(optimizer.opt_state, params).rows}
  for path, leaf in partition.items():
    expected = "adam" if layout[path].granularity == "element" else "adam_mini"
    assert layout[path].strategy == expected and layout[path].units == leaf.num_units, path
  assert layout["blocks/0/ln1/scale"].granularity == "tensor"
  assert layout["blocks/0/attn/query/bias"].granularity == "element"


def test_linen_transformer_as_is():
  module = LinenTransformer()
  params = module.init(jax.random.key(0), TOKENS[:, :-1])
  tx = nlr.adam_mini(3e-3, weight_decay=0.1)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    state = tx.init(params)

  @jax.jit
  def step(params, state):
    loss, grads = jax.value_and_grad(
        lambda p: _lm_loss(module.apply(p, TOKENS[:, :-1]), TOKENS[:, 1:]))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  losses = []
  for _ in range(8):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  assert losses[-1] < losses[0] - 0.1, losses
  rates = _flat(nlr.learning_rates(state))
  attn = "params/LinenBlock_0/MultiHeadDotProductAttention_0"
  assert rates[f"{attn}/query/kernel"].shape == (HEADS,)
  assert rates[f"{attn}/value/kernel"].shape == (HEADS, HEAD_DIM)
  assert rates["params/lm_head/kernel"].shape == (VOCAB,)
  assert rates["params/LayerNorm_0/scale"].shape == ()


# ---------------------------------------------------------------------------
# The update, against NumPy.


def _numpy_adam_mini(params, grads_seq, lr, b1, b2, eps, wd, blocks, decay):
  """Adam-mini per leaf in float64 NumPy: ``blocks[path]`` maps a gradient to
  its per-block mean of g**2 broadcast back to the leaf's shape."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: None for k in p}
  out = []
  for t, grads in enumerate(grads_seq, start=1):
    for k in p:
      g = np.asarray(grads[k], np.float64)
      m[k] = b1 * m[k] + (1 - b1) * g
      mean = blocks[k](g * g)
      v[k] = (1 - b2) * mean if v[k] is None else b2 * v[k] + (1 - b2) * mean
      h = np.sqrt(v[k]) / np.sqrt(1 - b2**t) + eps
      p[k] = p[k] - lr * wd * decay[k] * p[k] - lr / (1 - b1**t) * m[k] / h
    out.append({k: x.copy() for k, x in p.items()})
  return out


def test_update_matches_numpy_on_fused_heads():
  """Fused ``(d, heads*head_dim)`` query/key kernels: one block per head."""
  model = FusedHeadsAttention(nnx.Rngs(0))
  params = _flat(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  rng = np.random.default_rng(0)
  grads_seq = [{k: rng.normal(size=x.shape) * 10.0 ** rng.integers(-2, 1) for k, x in
                params.items()} for _ in range(4)]

  def per_head(x):  # (D, HEADS*HEAD_DIM): mean over the input and the head's columns
    means = x.reshape(D, HEADS, HEAD_DIM).mean(axis=(0, 2))
    return np.repeat(means, HEAD_DIM)[None, :] * np.ones_like(x)

  def per_neuron(x):
    return x.mean(axis=0, keepdims=True) * np.ones_like(x)

  blocks = {"query/kernel": per_head, "key/kernel": per_head, "value/kernel": per_neuron,
            "out/kernel": per_neuron}
  blocks.update({f"{m}/bias": (lambda x: x) for m in ("query", "key", "value", "out")})
  decay = {k: float(k.endswith("kernel")) for k in params}
  lr, b1, b2, eps, wd = 1e-2, 0.9, 0.99, 1e-8, 0.1
  want = _numpy_adam_mini(params, grads_seq, lr, b1, b2, eps, wd, blocks, decay)

  nest = lambda flat: {m: {n: flat[f"{m}/{n}"] for n in ("kernel", "bias")}
                       for m in ("query", "key", "value", "out")}
  with jax.enable_x64(True):
    tx = nlr.adam_mini(lr, b1, b2, eps, wd, num_heads=HEADS, on_unrecognised="error")
    p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), nest(params))
    state = tx.init(p)
    for k, grads in enumerate(grads_seq):
      g = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), nest(grads))
      updates, state = jax.jit(tx.update)(g, state, p)
      p = optax.apply_updates(p, updates)
      got = _flat(p)
      for name, value in want[k].items():
        np.testing.assert_allclose(np.asarray(got[name]), value, rtol=1e-12, atol=1e-14,
                                   err_msg=f"{name} at step {k + 1}")
    rates = _flat(nlr.learning_rates(state))
  assert rates["query/kernel"].shape == (HEADS,)
  assert rates["value/kernel"].shape == (HEADS * HEAD_DIM,)


def test_learning_rates_are_per_block_rates():
  """After one step, ``v = (1 - b2) mean(g**2)``: the rate is ``lr / (rms + eps)``."""
  params = {"query": {"kernel": jnp.ones((4, 2, 3))}, "fc": {"kernel": jnp.ones((3, 5))}}
  grads = jax.tree.map(lambda x: jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape) / 7,
                       params)
  lr, eps = 0.01, 1e-3
  tx = nlr.adam_mini(lr, eps=eps)
  state = tx.init(params)
  before = nlr.learning_rates(state)
  assert float(before["fc"]["kernel"][0]) == pytest.approx(lr)  # before any update
  _, state = tx.update(grads, state, params)
  rates = nlr.learning_rates(state)
  g = np.asarray(grads["query"]["kernel"])
  np.testing.assert_allclose(rates["query"]["kernel"],
                             lr / (np.sqrt((g * g).mean(axis=(0, 2))) + eps), rtol=1e-5)
  g = np.asarray(grads["fc"]["kernel"])
  np.testing.assert_allclose(rates["fc"]["kernel"],
                             lr / (np.sqrt((g * g).mean(axis=0)) + eps), rtol=1e-5)


# ---------------------------------------------------------------------------
# Unrecognised leaves, 1-D params, overriding blocks.


def test_unrecognised_leaves_are_reported_once_per_optimizer():
  model = WithUnrecognised(nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  tx = nlr.adam_mini(1e-3)
  with pytest.warns(UserWarning, match="adam_mini recognised no Adam-mini block for 3") as record:
    state = tx.init(params)
  assert len(record) == 1
  assert record[0].filename == __file__  # points at the user's init line
  for path in ("pos_embedding", "conv/kernel", "temperature"):
    assert f"'{path}'" in str(record[0].message)
  pure = nnx.to_pure_dict(params)
  grads = jax.tree.map(jnp.ones_like, pure)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # not again: neither at init nor on any trace
    state = tx.init(pure)
    jax.jit(tx.update)(grads, state, pure)
    jax.eval_shape(tx.init, pure)
  # Kept as full Adam, never one block; optimizer_layout shows it.
  layout = {r.path: r for r in nlr.optimizer_layout(state, pure).rows}
  assert layout["conv/kernel"].granularity == "element"
  assert layout["conv/kernel"].units == 3 * D * D
  assert layout["temperature"].units == 1

  # inject_hyperparams rebuilds the transform on every update: still one report, at init.
  tx = optax.inject_hyperparams(nlr.adam_mini)(learning_rate=1e-3)
  with pytest.warns(UserWarning, match="pos_embedding"):
    state = tx.init(pure)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    jax.jit(tx.update)(grads, state, pure)

  with pytest.raises(ValueError, match="conv/kernel"):
    nlr.adam_mini(1e-3, on_unrecognised="error").init(params)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    nlr.adam_mini(1e-3, on_unrecognised="ignore").init(params)
    overrides = {"pos_embedding": nlr.Neurons(0), "conv/kernel": "neuron",
                 "temperature": "tensor"}
    tx = nlr.adam_mini(1e-3, blocks=functools.partial(nlr.adam_mini_blocks,
                                                      overrides=overrides))
    state = tx.init(params)
  rates = _flat(nlr.learning_rates(state))
  assert rates["pos_embedding"].shape == (5,) and rates["conv/kernel"].shape == (D,)


def test_one_d_and_scalar_params():
  """The reference raises IndexError on 1-D tensors in its per-row branch;
  here 1-D and 0-d leaves of every kind just work."""
  params = {"norm": {"scale": jnp.ones(5), "bias": jnp.zeros(5)}, "mlp": {"bias": jnp.zeros(3)},
            "temperature": jnp.ones(()), "gate": jnp.ones(4)}
  tx = nlr.adam_mini(1e-2, weight_decay=0.1, on_unrecognised="ignore")
  state = tx.init(params)
  for _ in range(2):
    updates, state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), state, params)
    params = optax.apply_updates(params, updates)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))
  rates = nlr.learning_rates(state)
  assert rates["norm"]["scale"].shape == ()        # one per norm scale
  assert rates["norm"]["bias"].shape == (5,)       # per element
  assert rates["gate"].shape == (4,) and rates["temperature"].shape == ()


def test_explicit_blocks():
  params = {"w": jnp.ones((4, 6)), "b": jnp.ones(6)}
  for blocks, want in (("neuron", (6,)), (nlr.Blocks(-1, 3), (3,)), ("tensor", ()),
                       ({"w": nlr.Neurons(0), "b": "tensor"}, (4,))):
    state = nlr.adam_mini(1e-3, blocks=blocks).init(params)
    assert nlr.learning_rates(state)["w"].shape == want, blocks


# ---------------------------------------------------------------------------
# State: size and dtypes.


def _memory_benchmark():
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "adam_mini_memory.py"
  spec = importlib.util.spec_from_file_location("adam_mini_memory", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def test_state_is_at_most_0_55_of_adamw():
  """On the memory benchmark's transformer (abstract: no arrays allocated)."""
  bench = _memory_benchmark()
  params = bench.abstract_params(bench.Config(d_model=128, layers=2, heads=4, vocab=512))
  mini = _nbytes(jax.eval_shape(nlr.adam_mini(1e-3, weight_decay=0.1).init, params))
  adamw = _nbytes(jax.eval_shape(optax.adamw(1e-3, weight_decay=0.1).init, params))
  assert mini <= 0.55 * adamw, mini / adamw
  expected = _nbytes(params) + 4 * nlr.adam_mini_partition(params).num_units()
  assert mini - expected < 100  # plus a few scalars (counts, the applied scalars)


def test_bf16_first_moment_state_is_at_most_0_3_of_adamw_also_per_device():
  """mu_dtype="bfloat16": about 0.25x AdamW's state, in total and per device of
  the benchmark's abstract 8-device FSDP mesh."""
  bench = _memory_benchmark()
  params = bench.abstract_params(bench.Config(d_model=128, layers=2, heads=4, vocab=512))
  mini = nlr.adam_mini(1e-3, weight_decay=0.1, mu_dtype="bfloat16")
  adamw = optax.adamw(1e-3, weight_decay=0.1)
  assert _nbytes(jax.eval_shape(mini.init, params)) <= 0.3 * _nbytes(
      jax.eval_shape(adamw.init, params))
  assert bench.per_device_bytes(mini, params) <= 0.3 * bench.per_device_bytes(adamw, params)
  assert bench.per_device_bytes(adamw, params) <= _nbytes(
      jax.eval_shape(adamw.init, params)) / 6  # sharded, not replicated


@pytest.mark.parametrize("state_dtype, want", [(None, jnp.float32), (jnp.bfloat16, jnp.bfloat16)])
def test_bfloat16_params(state_dtype, want):
  params = {"fc": {"kernel": jnp.ones((8, 4), jnp.bfloat16), "bias": jnp.zeros(4, jnp.bfloat16)},
            "ln": {"scale": jnp.ones(8, jnp.bfloat16)}}
  tx = nlr.adam_mini(1e-2, weight_decay=0.1, state_dtype=state_dtype)
  state = tx.init(params)
  grads = jax.tree.map(lambda x: jnp.full(x.shape, 0.5, jnp.bfloat16), params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  rule_state = state[0]
  for x in jax.tree.leaves(rule_state.v) + jax.tree.leaves(rule_state.direction_state.ema):
    assert x.dtype == want
  for u in jax.tree.leaves(updates):
    assert u.dtype == jnp.bfloat16
  # A bf16 step of Adam-mini on a constant gradient: about -lr per element.
  np.testing.assert_allclose(np.asarray(updates["fc"]["bias"], np.float32), -1e-2, rtol=2e-2)


# ---------------------------------------------------------------------------
# Schedules and inject_hyperparams.


def test_schedule_drives_step_and_weight_decay():
  """With zero gradients only the decay moves the params: by ``lr_t * wd * p``."""
  schedule = optax.linear_schedule(1e-2, 1e-3, 4)
  params = {"fc": {"kernel": jnp.full((3, 2), 2.0)}}
  tx = nlr.adam_mini(schedule, weight_decay=0.5)
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  for t in range(4):
    updates, state = tx.update(zeros, state, params)
    np.testing.assert_allclose(updates["fc"]["kernel"], -schedule(t) * 0.5 * 2.0, rtol=1e-6)
  # The rates read back follow the schedule (count 4 -> schedule(3)).
  grads = {"fc": {"kernel": jnp.ones((3, 2))}}
  _, state = tx.update(grads, state, params)
  rate = nlr.learning_rates(state)["fc"]["kernel"]
  v_hat = (1 - 0.999) * 1.0 / (1 - 0.999**5)
  np.testing.assert_allclose(rate, schedule(4) / (np.sqrt(v_hat) + 1e-8), rtol=1e-5)


def test_inject_hyperparams_binds_every_hyperparameter():
  params = nnx.to_pure_dict(nnx.state(NnxTransformer(nnx.Rngs(0), layers=1), nnx.Param))
  grads = jax.tree.map(lambda x: 0.01 * jnp.ones_like(x), params)
  hp = dict(learning_rate=3e-3, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.1)
  injected = optax.inject_hyperparams(nlr.adam_mini)(**hp)
  plain = nlr.adam_mini(**hp)
  s1, s2 = injected.init(params), plain.init(params)
  assert sorted(s1.hyperparams) == sorted(hp)
  for _ in range(2):
    u1, s1 = jax.jit(injected.update)(grads, s1, params)
    u2, s2 = jax.jit(plain.update)(grads, s2, params)
  for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
  # Changing the injected rate changes the step.
  s1 = optax.tree_utils.tree_set(s1, learning_rate=jnp.asarray(0.0))
  u1, _ = jax.jit(injected.update)(grads, s1, params)
  assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(u1))
  # num_heads is an int option: static under inject_hyperparams.
  fused = nnx.to_pure_dict(nnx.state(FusedHeadsAttention(nnx.Rngs(0)), nnx.Param))
  tx = optax.inject_hyperparams(nlr.adam_mini, static_args=("num_heads",))(
      learning_rate=1e-3, num_heads=HEADS, on_unrecognised="error")
  state = tx.init(fused)
  assert nlr.learning_rates(state)["query"]["kernel"].shape == (HEADS,)


# ---------------------------------------------------------------------------
# Argument checks, at construction.


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(b1=1.0), ValueError, "b1 must lie in"),
    (dict(b2=-0.1), ValueError, "b2 must lie in"),
    (dict(eps=-1e-8), ValueError, "eps must lie in"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay must lie in"),
    (dict(learning_rate="1e-3"), TypeError, "learning_rate"),
    (dict(learning_rate=-1.0), ValueError, "learning_rate"),
    (dict(on_unrecognised="raise"), ValueError, "on_unrecognised"),
    (dict(num_heads=0), ValueError, "num_heads"),
    (dict(num_heads=4, num_kv_heads=3), ValueError, "multiple of num_kv_heads"),
    (dict(blocks="neuron", num_heads=4), ValueError, "num_heads and num_kv_heads are read only"),
    (dict(blocks="rows"), ValueError, "granularity"),
    (dict(state_dtype=jnp.int32), ValueError, "state_dtype"),
])
def test_argument_errors(kwargs, error, match):
  kwargs = {"learning_rate": 1e-3, **kwargs}
  with pytest.raises(error, match=match):
    nlr.adam_mini(**kwargs)
