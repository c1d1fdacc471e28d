"""Tests of nlr.scale_by_muon, nlr.muon, nlr.scale_by_normuon, nlr.normuon and
nlr.normuon_labels against an independent NumPy restatement of the references
(torch.optim.Muon and the NorMuon authors' ``normuon_update``)."""

import math
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from flax import nnx

import optax_neuronlr as nlr
from optax_neuronlr._src.rules import muon as muon_lib

NS = (3.4445, -4.7750, 2.0315)


# ---------------------------------------------------------------------------
# NumPy reference, on PyTorch (out, in) matrices.


def ns_np(g, steps=5, eps=1e-7):
  a, b, c = NS
  x = np.array(g, np.float64)
  tall = x.shape[0] > x.shape[1]
  if tall:
    x = x.T
  x = x / (np.linalg.norm(x) + eps)
  for _ in range(steps):
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T if tall else x


def muon_np(g, m, mu=0.95, nesterov=True):
  """One Muon step on a torch (out, in) matrix: (update incl. shape factor, m)."""
  m = mu * m + (1 - mu) * g
  d = (1 - mu) * g + mu * m if nesterov else m
  out, fan_in = g.shape
  return ns_np(d) * math.sqrt(max(1.0, out / fan_in)), m


def normuon_np(g, m, v, mu=0.95, beta2=0.95, eps=1e-10):
  """One NorMuon step (without lr): (update, m, v); v is (out, 1)."""
  m = mu * m + (1 - mu) * g
  d = (1 - mu) * g + mu * m
  o = ns_np(d)
  v = beta2 * v + (1 - beta2) * np.mean(o * o, axis=-1, keepdims=True)
  hat = o / (np.sqrt(v) + eps)
  u = hat * (np.linalg.norm(o) / (np.linalg.norm(hat) + eps))
  out, fan_in = g.shape
  return u * math.sqrt(max(1.0, out / fan_in)), m, v


def adamw_np(g, p, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0):
  m = b1 * m + (1 - b1) * g
  v = b2 * v + (1 - b2) * g * g
  step = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
  return p - lr * (step + wd * p), m, v


def as_torch(x, reduction, output):
  """A Flax leaf as the (out, in) torch matrix of its view."""
  x = np.asarray(x)
  fan_in = math.prod(x.shape[a] for a in reduction)
  return np.transpose(x, reduction + output).reshape(fan_in, -1).T


def from_torch(w, shape, reduction, output):
  moved = [shape[a] for a in reduction + output]
  inverse = np.argsort(reduction + output)
  return np.transpose(w.T.reshape(moved), inverse)


VIEWS = {"attn/query/kernel": ((0,), (1, 2)), "attn/out/kernel": ((0, 1), (2,)),
         "mlp/fc1/kernel": ((0,), (1,)), "mlp/fc2/kernel": ((0,), (1,))}


def make_params(seed=0, dtype=None):
  dtype = dtype or jnp.result_type(float)
  rng = np.random.default_rng(seed)
  shapes = {"embed": {"embedding": (11, 6)},
            "attn": {"query": {"kernel": (6, 2, 3)}, "out": {"kernel": (2, 3, 6)}},
            "mlp": {"fc1": {"kernel": (6, 12), "bias": (12,)}, "fc2": {"kernel": (12, 6)}},
            "norm": {"scale": (6,)}, "head": {"kernel": (6, 11)}}
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), dtype), shapes,
                      is_leaf=lambda s: isinstance(s, tuple))


def grads_at(k, params):
  rng = np.random.default_rng(100 + k)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)


def flat(tree):
  return {nlr._src.paths.path_str(p): np.asarray(x)  # pylint: disable=protected-access
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def run_reference(kind, params, steps, lr, wd, adam_lr):
  """nlr.muon / nlr.normuon's trajectory restated in NumPy."""
  p = flat(params)
  state = {}
  out = []
  for t in range(1, steps + 1):
    g = flat(grads_at(t, params))
    for name in p:
      if name in VIEWS:
        red, outax = VIEWS[name]
        w, gw = as_torch(p[name], red, outax), as_torch(g[name], red, outax)
        if kind == "muon":
          m = state.get(name, np.zeros_like(gw))
          u, m = muon_np(gw, m)
          state[name] = m
        else:
          m, v = state.get(name, (np.zeros_like(gw), np.zeros((gw.shape[0], 1))))
          u, m, v = normuon_np(gw, m, v)
          state[name] = (m, v)
        w = w * (1 - lr * wd) - lr * u
        p[name] = from_torch(w, p[name].shape, red, outax)
      else:
        m, v = state.get(name, (np.zeros_like(g[name]), np.zeros_like(g[name])))
        p[name], m, v = adamw_np(g[name], p[name], m, v, t, adam_lr)
        state[name] = (m, v)
    out.append(dict(p))
  return out


class AgainstNumPyTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("muon", "normuon")
  def test_matches_numpy(self, kind):
    lr, wd, adam_lr, steps = 0.05, 0.1, 0.01, 4
    with jax.enable_x64(True):
      params = make_params()
      make = nlr.muon if kind == "muon" else nlr.normuon
      tx = make(lr, weight_decay=wd, adam_learning_rate=adam_lr)
      state = tx.init(params)
      update = self.variant(tx.update)
      want = run_reference(kind, params, steps, lr, wd, adam_lr)
      for t in range(1, steps + 1):
        u, state = update(grads_at(t, params), state, params)
        params = optax.apply_updates(params, u)
        got = flat(params)
        for name, ref in want[t - 1].items():
          np.testing.assert_allclose(got[name], ref, rtol=0, atol=1e-12, err_msg=name)

  def test_labels(self):
    labels = nlr.normuon_labels(make_params())
    self.assertEqual(flat(labels), {
        "attn/out/kernel": "hidden", "attn/query/kernel": "hidden", "embed/embedding": "adamw",
        "head/kernel": "adamw", "mlp/fc1/bias": "adamw", "mlp/fc1/kernel": "hidden",
        "mlp/fc2/kernel": "hidden", "norm/scale": "adamw"})
    mask = jax.tree.map(lambda x: x.ndim == 2, make_params())
    self.assertEqual(flat(nlr.normuon_labels(make_params(), mask))["head/kernel"], "hidden")
    self.assertEqual(flat(nlr.normuon_labels(
        make_params(), lambda p: jax.tree.map(lambda x: False, p)))["mlp/fc1/kernel"], "adamw")


class MatrixViewTest(chex.TestCase):

  def test_batch_axes_and_blocks(self):
    with jax.enable_x64(True):
      rng = np.random.default_rng(3)
      stacked = jnp.asarray(rng.normal(size=(3, 4, 6)))
      gated = jnp.asarray(rng.normal(size=(5, 15)))
      params = {"s": stacked, "g": gated}
      views = {"s": nlr.MatrixView((1,), (2,)), "g": nlr.MatrixView((0,), (1,), (1, 3))}
      tx = nlr.scale_by_muon(matrices=views)
      u, _ = tx.update(params, tx.init(params))
      for i in range(3):
        want, _ = muon_np(np.asarray(stacked[i]).T, 0.0)
        np.testing.assert_allclose(u["s"][i], want.T, atol=1e-12)
      for b in range(3):
        want, _ = muon_np(np.asarray(gated[:, 5 * b:5 * b + 5]).T, 0.0)
        np.testing.assert_allclose(u["g"][:, 5 * b:5 * b + 5], want.T, atol=1e-12)

  def test_no_view_is_an_error(self):
    params = {"fc": {"kernel": jnp.ones((4, 5)), "bias": jnp.ones(5)}}
    with self.assertRaisesRegex(ValueError, "fc/bias"):
      nlr.scale_by_muon().init(params)
    with self.assertRaisesRegex(ValueError, "fc/bias"):
      nlr.scale_by_normuon(1.0).init(params)
    tx = optax.masked(nlr.scale_by_muon(), {"fc": {"kernel": True, "bias": False}})
    tx.update(params, tx.init(params))


class StateAndRatesTest(chex.TestCase):

  def test_state_bytes(self):
    params = make_params(dtype=jnp.float32)
    state = nlr.normuon(0.02).init(params)
    hidden = {n: x for n, x in flat(params).items() if n in VIEWS}
    others = {n: x for n, x in flat(params).items() if n not in VIEWS}
    neurons = {"attn/query/kernel": 6, "attn/out/kernel": 6, "mlp/fc1/kernel": 12,
               "mlp/fc2/kernel": 6}
    # Momentum per element, v and the matrix's gain per output neuron.
    want = 4 * (sum(x.size for x in hidden.values()) + 2 * sum(neurons.values())
                + 2 * sum(x.size for x in others.values()))
    arrays = [x for x in jax.tree.leaves(state) if x.ndim]
    self.assertEqual(sum(x.nbytes for x in arrays), want)
    inner = state.inner_states["hidden"].inner_state[0]
    self.assertEqual(type(inner).__name__, "ScaleByNorMuonState")
    self.assertEqual({n: x.shape for n, x in flat(inner.gain).items()},
                     {n: x.shape for n, x in flat(inner.v).items()})
    self.assertEqual(flat(inner.v)["attn/query/kernel"].shape, (2, 3))
    self.assertEqual(flat(inner.v)["attn/out/kernel"].shape, (6,))
    self.assertIsInstance(inner.direction_state, nlr.ScaleByMuonState)

  @chex.variants(with_jit=True, without_jit=True)
  def test_rates_times_direction_is_the_update(self):
    with jax.enable_x64(True):
      params = {n: x for n, x in make_params().items() if n in ("attn", "mlp")}
      del params["mlp"]["fc1"]["bias"]
      lr = 0.03
      tx = nlr.scale_by_normuon(learning_rate=lr)
      direction = muon_lib.muon_direction(scaled=False)
      state, dstate = tx.init(params), direction.init(params)
      update = self.variant(tx.update)
      for t in range(1, 4):
        g = grads_at(t, params)
        u, state = update(g, state)
        o, dstate = direction.update(g, dstate)
        rates = nlr.learning_rates(state)
        q = rates["attn"]["query"]["kernel"]
        self.assertEqual(q.shape, (2, 3))
        for name, (red, _) in VIEWS.items():
          r = flat(rates)[name]
          keep = [a for a in range(flat(o)[name].ndim) if a not in red]
          r = np.expand_dims(r, tuple(red)) if keep else r
          np.testing.assert_allclose(flat(u)[name], r * flat(o)[name], rtol=1e-13,
                                     atol=1e-15, err_msg=name)

  def test_nnx_optimizer(self):

    class Block(nnx.Module):

      def __init__(self, rngs):
        self.embed = nnx.Embed(13, 8, rngs=rngs)
        self.norm = nnx.LayerNorm(8, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=8, decode=False,
                                           rngs=rngs)
        self.fc1 = nnx.Linear(8, 16, rngs=rngs)
        self.fc2 = nnx.Linear(16, 8, rngs=rngs)
        self.head = nnx.Linear(8, 13, rngs=rngs)

      def __call__(self, tokens):
        x = self.embed(tokens)
        x = x + self.attn(self.norm(x))
        x = x + self.fc2(jax.nn.gelu(self.fc1(x)))
        return self.head(x)

    model = Block(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, nlr.normuon(0.02, weight_decay=0.01), wrt=nnx.Param)
    tokens = jnp.arange(12).reshape(2, 6) % 13

    @nnx.jit
    def step(model, optimizer):
      def loss_fn(model):
        logits = model(tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
      loss, grads = nnx.value_and_grad(loss_fn)(model)
      optimizer.update(model, grads)
      return loss

    losses = [float(step(model, optimizer)) for _ in range(5)]
    self.assertTrue(all(np.isfinite(losses)))
    self.assertLess(losses[-1], losses[0])
    rates = nlr.learning_rates(optimizer.opt_state)
    self.assertEqual(jnp.shape(rates["attn"]["query"]["kernel"]), (2, 4))
    self.assertEqual(jnp.shape(rates["fc1"]["kernel"]), (16,))


class HyperparamsAndDtypesTest(chex.TestCase):

  def test_inject_hyperparams(self):
    params = make_params(dtype=jnp.float32)
    g = grads_at(1, params)
    tx = optax.inject_hyperparams(nlr.normuon)(learning_rate=0.02, beta2=0.95)
    state = tx.init(params)
    u1, _ = jax.jit(tx.update)(g, state, params)
    state.hyperparams["learning_rate"] = jnp.asarray(0.01)
    u2, _ = jax.jit(tx.update)(g, state, params)
    np.testing.assert_allclose(flat(u2)["mlp/fc1/kernel"], flat(u1)["mlp/fc1/kernel"] / 2,
                               rtol=1e-5)
    # On the first step beta2 only scales v, which the norm-preserving rescale
    # undoes; from the second step on it weighs the history.
    _, state = jax.jit(tx.update)(g, state, params)
    g2 = grads_at(2, params)
    u3, _ = jax.jit(tx.update)(g2, state, params)
    state.hyperparams["beta2"] = jnp.asarray(0.5)
    u4, _ = jax.jit(tx.update)(g2, state, params)
    self.assertGreater(np.abs(flat(u4)["mlp/fc1/kernel"] - flat(u3)["mlp/fc1/kernel"]).max(),
                       1e-6)
    muon = optax.inject_hyperparams(nlr.muon)(learning_rate=0.02, momentum=0.9)
    u, _ = jax.jit(muon.update)(g, muon.init(params), params)
    self.assertTrue(np.all(np.isfinite(flat(u)["attn/query/kernel"])))

  def test_dtypes(self):
    params = make_params(dtype=jnp.float32)
    g = grads_at(1, params)
    tx = nlr.normuon(0.02, ns_dtype="bfloat16", mu_dtype="bfloat16")
    state = tx.init(params)
    u, state = jax.jit(tx.update)(g, state, params)
    ref, _ = jax.jit(nlr.normuon(0.02).update)(g, nlr.normuon(0.02).init(params), params)
    for name in VIEWS:
      self.assertEqual(flat(u)[name].dtype, jnp.float32)
      np.testing.assert_allclose(flat(u)[name], flat(ref)[name], atol=2e-2 * 0.02 * 10)
    mu = state.inner_states["hidden"].inner_state[0].direction_state.mu
    self.assertEqual(flat(mu)["mlp/fc1/kernel"].dtype, jnp.bfloat16)
    muon = nlr.scale_by_muon(mu_dtype=jnp.bfloat16, ns_dtype=jnp.bfloat16,
                             matrices=nlr.MatrixView((0,), (1,)))
    w = {"w": jnp.ones((4, 6), jnp.float32)}
    u, s = muon.update(w, muon.init(w))
    self.assertEqual(u["w"].dtype, jnp.float32)
    self.assertEqual(s.mu["w"].dtype, jnp.bfloat16)


class ErrorsTest(chex.TestCase):

  @parameterized.parameters(
      (dict(learning_rate=-1.0), "learning_rate"),
      (dict(learning_rate=0.1, beta2=1.5), "beta2"),
      (dict(learning_rate=0.1, ns_steps=0), "ns_steps"),
      (dict(learning_rate=0.1, momentum=1.0), "momentum"),
      (dict(learning_rate=0.1, weight_decay=-0.1), "weight_decay"),
      (dict(learning_rate=0.1, eps=0.0), "eps"),
      (dict(learning_rate=0.1, ns_dtype="int32"), "ns_dtype"),
      (dict(learning_rate=0.1, adam_learning_rate=-1.0), "adam_learning_rate"),
  )
  def test_bad_arguments(self, kwargs, name):
    with self.assertRaisesRegex((ValueError, TypeError), name):
      nlr.normuon(**kwargs)
    if "beta2" not in kwargs:
      with self.assertRaisesRegex((ValueError, TypeError), name):
        nlr.muon(**kwargs)

  def test_bad_hidden(self):
    params = make_params()
    with self.assertRaisesRegex(ValueError, "hidden"):
      nlr.normuon(0.1, hidden={"mlp": True}).init(params)
    with self.assertRaisesRegex(TypeError, "hidden"):
      nlr.normuon_labels(params, jax.tree.map(lambda x: "yes", params))
    with self.assertRaisesRegex(ValueError, "is not a matrix"):
      mask = jax.tree.map(lambda x: True, params)
      nlr.normuon(0.1, hidden=mask).init(params)


if __name__ == "__main__":
  pytest.main([__file__])


# ---------------------------------------------------------------------------
# Newton-Schulz in low precision.


def _muon_update(g, ns_dtype):
  tx = nlr.scale_by_muon(0.0, ns_dtype=ns_dtype, matrices=nlr.MatrixView((0,), (1,)))
  return tx.update(g, tx.init(g))[0]


@pytest.mark.parametrize("scale,shape", [(1.0, (256, 256)), (1e-4, (48, 32))])
def test_float16_newton_schulz_norm_in_float32(scale, shape):
  """A float16 Frobenius norm overflows for a 256 x 256 matrix of unit entries
  (a zero update) and underflows for gradients near 1e-4; summed in float32
  the float16 update is finite, non-zero and close to float32's."""
  rng = np.random.default_rng(0)
  g = scale * (np.ones(shape) if scale == 1.0 else rng.normal(size=shape))
  u16 = _muon_update(jnp.asarray(g, jnp.float32), "float16")
  u32 = _muon_update(jnp.asarray(g, jnp.float32), None)
  assert bool(jnp.all(jnp.isfinite(u16)))
  assert float(jnp.abs(u16).max()) > 0.1 * float(jnp.abs(u32).max())
  np.testing.assert_allclose(np.asarray(u16), np.asarray(u32), atol=5e-3)


def test_bfloat16_newton_schulz_as_torch():
  """bfloat16 iterations with the exact coefficients (one rounding per product):
  within 1.5x of torch.optim.Muon's own bfloat16 iteration's distance to the
  float32 result (rounded coefficients, 3.4445 -> 3.4375, are 3-4x further)."""
  torch = pytest.importorskip("torch")
  from torch.optim import _muon as torch_muon  # pylint: disable=g-import-not-at-top
  ours, theirs = [], []
  for seed, shape in enumerate(((96, 64), (64, 160))):
    g = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    ref = np.asarray(muon_lib.newton_schulz(jnp.asarray(g)[None])[0])
    low = muon_lib.newton_schulz(jnp.asarray(g, jnp.bfloat16)[None])[0]
    t = torch_muon._zeropower_via_newtonschulz(  # pylint: disable=protected-access
        torch.from_numpy(g.T.copy()), NS, 5, 1e-7).float().numpy().T
    ours.append(np.linalg.norm(np.asarray(low, np.float32) - ref))
    theirs.append(np.linalg.norm(t - ref))
  assert sum(ours) <= 1.5 * sum(theirs), (ours, theirs)


def test_low_precision_newton_schulz_on_owners():
  """The owners' layout runs the same iteration (float16: no zero update)."""
  mesh = jax.make_mesh((1,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
  g = jnp.ones((256, 256), jnp.float32)
  (o,) = muon_lib.orthogonalise_on_owners([g], [nlr.MatrixView((0,), (1,))], mesh,
                                          ns_dtype="float16")
  assert float(jnp.abs(o).max()) > 1e-3 and bool(jnp.all(jnp.isfinite(o)))


# ---------------------------------------------------------------------------
# Scanned stacks: one matrix (and one NorMuon rescale) per layer.

L, D, F = 3, 6, 10


def _unstacked(seed):
  rng = np.random.default_rng(seed)
  layer = lambda: {"mlp": {"up": {"kernel": rng.normal(size=(D, F))},
                           "down": {"kernel": rng.normal(size=(F, D)),
                                    "bias": rng.normal(size=(D,))}},
                   "attn": {"query": {"kernel": rng.normal(size=(D, 2, 3))}}}
  return {f"layers_{i}": jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), layer())
          for i in range(L)}


def _stack(tree):
  return {"layers": jax.tree.map(lambda *xs: jnp.stack(xs), *tree.values())}


STACK_NAMES = {"layers": {"mlp": {"up": {"kernel": ("layers", "embed", "mlp")},
                                  "down": {"kernel": ("layers", "mlp", "embed"),
                                           "bias": ("layers", "embed")}},
                          "attn": {"query": {"kernel": ("layers", "embed", "heads", "kv")}}}}


@pytest.mark.filterwarnings("ignore:nlr.*stack axis:UserWarning")
@pytest.mark.parametrize("with_names", [False, True])
@pytest.mark.parametrize("name", ["muon", "normuon"])
def test_stacked_layers_equal_their_unstacked_twin(name, with_names):
  """An (L, in, out) leaf of a scanned stack gives exactly the L per-layer
  results of the unscanned model: Newton-Schulz, NorMuon's second moment and
  its norm-preserving rescale per layer (the stack axis found by shape, or
  named by axis_names)."""
  factory = {"muon": nlr.muon, "normuon": nlr.normuon}[name]
  flat_p, flat_g = _unstacked(0), _unstacked(1)
  kwargs = {"axis_names": STACK_NAMES} if with_names else {}
  stacked_tx, flat_tx = factory(0.02, weight_decay=0.1, **kwargs), factory(0.02,
                                                                          weight_decay=0.1)
  sp, sg = _stack(flat_p), _stack(flat_g)
  s_state, f_state = stacked_tx.init(sp), flat_tx.init(flat_p)
  for _ in range(2):
    su, s_state = jax.jit(stacked_tx.update)(sg, s_state, sp)
    fu, f_state = jax.jit(flat_tx.update)(flat_g, f_state, flat_p)
  want = _stack(fu)
  for (path, got), ref in zip(jax.tree_util.tree_flatten_with_path(su)[0],
                              jax.tree.leaves(want)):
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-7, err_msg=str(path))


def test_normuon_rescale_is_per_matrix():
  """Two layers of very different scales: each keeps its own O's norm."""
  rng = np.random.default_rng(3)
  g = jnp.asarray(np.stack([rng.normal(size=(D, F)), 1e3 * rng.normal(size=(D, F))]),
                  jnp.float32)
  tx = nlr.scale_by_normuon(1.0, matrices=nlr.MatrixView((1,), (2,)))
  u, _ = tx.update(g, tx.init(g))
  for i in range(2):
    one = nlr.scale_by_normuon(1.0, matrices=nlr.MatrixView(0, 1))
    ui, _ = one.update(g[i], one.init(g[i]))
    np.testing.assert_allclose(u[i], ui, rtol=2e-5, atol=1e-7)
  # Blocks (the gates of a fused kernel): one rescale per block.
  gated = jnp.concatenate([g[0][:, :5], g[1][:, :5], 1e-2 * g[0][:, 5:]], axis=1)
  tx = nlr.scale_by_normuon(1.0, matrices=nlr.MatrixView(0, 1, blocks=(1, 3)))
  u, _ = tx.update(gated, tx.init(gated))
  for b in range(3):
    part = gated[:, 5 * b:5 * b + 5]
    one = nlr.scale_by_normuon(1.0, matrices=nlr.MatrixView(0, 1))
    ub, _ = one.update(part, one.init(part))
    np.testing.assert_allclose(u[:, 5 * b:5 * b + 5], ub, rtol=2e-5, atol=1e-7)


# ---------------------------------------------------------------------------
# One layout per optimizer, and one warning.


def _tied_like():
  """A head found only by its shape: the embedding's transpose."""
  return {"embed": {"embedding": jnp.ones((10, 4))},
          "fc": {"kernel": jnp.eye(4), "bias": jnp.zeros(4)},
          "proj": {"kernel": jnp.ones((4, 10))}}


@pytest.mark.parametrize("name", ["muon", "normuon"])
def test_layout_of_the_full_tree_inside_multi_transform(name):
  """Inside optax.multi_transform muon sees a part of the tree: the head found
  as the embedding's transpose would become a Muon matrix; layout= keeps the
  full tree's roles, and the part without it is announced."""
  factory = {"muon": nlr.muon, "normuon": nlr.normuon}[name]
  params = _tied_like()
  labels = {"embed": {"embedding": "emb"}, "fc": {"kernel": "m", "bias": "m"},
            "proj": {"kernel": "m"}}

  def muon_labels(layout):
    tx = optax.multi_transform({"emb": optax.adam(1e-3),
                                "m": factory(0.02, layout=layout)}, labels)
    state = tx.init(params)
    tx.update(params, state, params)
    first = state.inner_states["m"].inner_state.inner_states["hidden"].inner_state[0]
    mu = first.mu if name == "muon" else first.direction_state.mu
    return jax.tree.map(lambda x: not isinstance(x, optax.MaskedNode), mu,
                        is_leaf=lambda x: isinstance(x, optax.MaskedNode))

  with pytest.warns(UserWarning, match=r"part of the parameter tree.*layout=nlr.model_layout"):
    masked = muon_labels(None)
  assert masked["proj"]["kernel"]  # read from the part: a Muon matrix
  with pytest.warns(UserWarning, match="proj/kernel"):  # still a guess from shapes
    full = muon_labels(nlr.model_layout(params))
  assert not full["proj"]["kernel"] and full["fc"]["kernel"]


def test_adamw_decay_mask_is_read_from_the_plan():
  """AdamW's decay mask comes from the whole tree's layout (embeddings and the
  head decay, biases not), not from its masked part."""
  params = {"embed": {"embedding": jnp.ones((10, 4))},
            "fc": {"kernel": jnp.eye(4), "bias": jnp.ones(4)},
            "lm_head": {"kernel": jnp.ones((4, 10))}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  tx = nlr.muon(0.0, adam_learning_rate=0.1, adam_weight_decay=0.5)
  updates, _ = tx.update(zeros, tx.init(params), params)
  assert float(jnp.abs(updates["embed"]["embedding"]).max()) > 0
  assert float(jnp.abs(updates["lm_head"]["kernel"]).max()) > 0
  assert float(jnp.abs(updates["fc"]["bias"]).max()) == 0


@pytest.mark.parametrize("name", ["muon", "normuon"])
def test_one_warning_per_optimizer(name):
  """Trees without Flax names: 2-D leaves are Muon matrices, announced once
  (init), never per step or per trace; named Flax trees are silent."""
  factory = {"muon": nlr.muon, "normuon": nlr.normuon}[name]
  params = {"layer1": {"weight": jnp.ones((8, 4)), "bias": jnp.zeros(8)},
            "w": jnp.ones((4, 4))}
  tx = factory(0.02)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    state = tx.init(params)
    for dtype in (jnp.float32, jnp.float16):  # two traces
      p = jax.tree.map(lambda x, dtype=dtype: x.astype(dtype), params)
      jax.jit(tx.update)(p, state, p)
    tx.update(params, state, params)
  messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
  assert len(messages) == 1, messages
  assert "'layer1/weight'" in messages[0] and "'w'" in messages[0]
  assert "axis_names=" in messages[0] and "hidden=" in messages[0]
  assert "'layer1/bias'" not in messages[0]
  labels = nlr.normuon_labels(params)
  assert labels["layer1"]["weight"] == labels["w"] == "hidden"
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    factory(0.02).init(make_params())


def test_no_hidden_matrix_warns():
  params = {"scale": jnp.ones(4), "bias": jnp.zeros(4)}
  with pytest.warns(UserWarning, match="no leaf is a hidden matrix.*hidden="):
    nlr.muon(0.02).init(params)


def test_bare_bool_hidden_for_a_tree_is_still_refused():
  with pytest.raises(TypeError, match="bare bool"):
    nlr.muon(0.02, hidden=True).init(make_params())


def test_layout_argument_checks():
  with pytest.raises(TypeError, match="layout must be"):
    nlr.muon(0.02, layout={"a": 1})
  params = make_params()
  with pytest.raises(ValueError, match="layout= has no leaf"):
    nlr.muon(0.02, layout=nlr.model_layout({"x": jnp.ones((2, 2))})).init(params)


def test_stacked_newton_schulz_in_chunks_equals_whole(monkeypatch):
  """On the CPU a deep stack runs in chunks (cache-sized); the same numbers."""
  from optax_neuronlr._src import newton_schulz as ns_lib  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(0), (7, 8, 12))
  whole = ns_lib.newton_schulz(x)
  monkeypatch.setattr(ns_lib, "CPU_CHUNK_BYTES", 2 * 8 * 12 * 4)
  chunked = jax.jit(ns_lib.stacked_newton_schulz)(x)
  np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)  # float32 rounding


@pytest.mark.parametrize("name", ["muon", "normuon"])
def test_inside_optax_masked(name):
  """optax.masked hands muon a part of the tree: with the full tree's layout the
  head stays AdamW's; the masked-out leaves pass through unchanged."""
  factory = {"muon": nlr.muon, "normuon": nlr.normuon}[name]
  params = _tied_like()
  mask = {"embed": {"embedding": False}, "fc": {"kernel": True, "bias": True},
          "proj": {"kernel": True}}
  tx = optax.masked(factory(0.02, layout=nlr.model_layout(params)), mask)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    state = tx.init(params)
  updates, _ = jax.jit(tx.update)(params, state, params)
  np.testing.assert_array_equal(updates["embed"]["embedding"], params["embed"]["embedding"])
  labels = nlr.normuon_labels(params, layout=nlr.model_layout(params))
  assert labels["proj"]["kernel"] == "adamw" and labels["fc"]["kernel"] == "hidden"


@pytest.mark.parametrize("make", [nlr.muon, nlr.normuon])
def test_axis_names_checked_when_built(make):
  with pytest.raises(TypeError, match="axis_names"):
    make(0.02, axis_names="layers")
  with pytest.raises(ValueError, match="axis_roles"):
    make(0.02, axis_roles={"my_layers": "not-a-role"})
  with pytest.raises(TypeError, match="axis_names"):
    nlr.scale_by_muon(axis_names="layers")


@pytest.mark.filterwarnings("ignore:nlr.*:UserWarning")
@pytest.mark.parametrize("model", ["linen", "nnx"])
@pytest.mark.parametrize("name", ["muon", "normuon"])
def test_flax_scanned_models_equal_their_unscanned_twins(name, model):
  """linen nn.scan and nnx.vmap stacks, with and without their axis names: the
  per-layer updates of the same model unscanned, to float32 rounding."""
  from tests import scanned_models as sm  # pylint: disable=g-import-not-at-top
  factory = {"muon": nlr.muon, "normuon": nlr.normuon}[name]
  params, names = sm.linen(scan=True, tied=True) if model == "linen" else sm.nnx_model()
  twin, twin_names = sm.unstack(params), sm.unstack_names(names)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  grads = treedef.unflatten([jax.random.normal(k, x.shape, x.dtype)
                             for k, x in zip(keys, leaves)])
  for with_names in (False, True):
    tx = factory(0.02, weight_decay=0.1, axis_names=names if with_names else None)
    twin_tx = factory(0.02, weight_decay=0.1,
                      axis_names=twin_names if with_names else None)
    # Jitted, as models train (eager dispatch is 5x slower to run here).
    u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    v, _ = jax.jit(twin_tx.update)(sm.unstack(grads), twin_tx.init(twin), twin)
    for i in range(sm.L):
      layer = jax.tree.map(lambda x, i=i: x[i], u["blocks"])
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7),
                   layer, v[f"block_{i}"])
    labels = nlr.normuon_labels(params, axis_names=names if with_names else None)
    assert "hidden" in jax.tree.leaves(labels["blocks"])
