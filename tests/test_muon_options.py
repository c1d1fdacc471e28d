"""``adam_nesterov`` and ``consistent_rms`` of ``nlr.muon`` / ``nlr.normuon``.

``consistent_rms=c`` replaces Muon's shape factor sqrt(max(1, fan_out/fan_in)) by
Moonlight's c * sqrt(max(fan_in, fan_out)) (Liu et al., 2025); ``adam_nesterov``
gives the AdamW leaves Nesterov momentum (NAdamW). Checked against
``optax.contrib.muon``, whose ``nesterov`` covers both parts, and against the
factor restated here.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_neuronlr as nlr

SHAPES = {"w": (6, 4), "v": (3, 8), "b": (4,)}


def params():
  keys = jax.random.split(jax.random.key(0), len(SHAPES))
  return {k: jax.random.normal(key, s) for key, (k, s) in zip(keys, SHAPES.items())}


def grads(step):
  keys = jax.random.split(jax.random.key(100 + step), len(SHAPES))
  return {k: jax.random.normal(key, s) for key, (k, s) in zip(keys, SHAPES.items())}


def hidden(tree):
  return {k: jnp.ndim(v) == 2 for k, v in tree.items()}


def run(tx, steps=4):
  p = params()
  state = tx.init(p)
  out = []
  for t in range(steps):
    u, state = tx.update(grads(t), state, p)
    p = optax.apply_updates(p, u)
    out.append(u)
  return out


def close(a, b, rtol=2e-5, atol=1e-7):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("consistent_rms", [None, 0.2])
def test_muon_equals_optax_contrib(consistent_rms):
  """Nesterov on both parts (optax's ``nesterov``), with and without consistent RMS.

  optax bias-corrects Muon's momentum (torch.optim.Muon and this package do not), so
  the hidden matrices agree on the first step (the same direction before Newton-Schulz,
  whose input is normalised), where the shape factor is what differs; the AdamW leaf
  (NAdamW on both sides) agrees on every step."""
  ours = run(nlr.muon(0.02, eps=1e-8, adam_eps=1e-8, hidden=hidden, adam_nesterov=True,
                      consistent_rms=consistent_rms))
  theirs = run(optax.contrib.muon(0.02, consistent_rms=consistent_rms))
  close(ours[0], theirs[0])
  close([u["b"] for u in ours], [u["b"] for u in theirs])


def test_consistent_rms_factor():
  """The hidden update is the plain one times c sqrt(max(n_in, n_out)) /
  sqrt(max(1, n_out / n_in)), for Muon and NorMuon alike; the AdamW leaves unchanged."""
  for make in (nlr.muon, nlr.normuon):
    plain = run(make(0.02, hidden=hidden), steps=3)
    scaled = run(make(0.02, hidden=hidden, consistent_rms=0.2), steps=1)
    for name, (n_in, n_out) in (("w", (6, 4)), ("v", (3, 8))):
      factor = 0.2 * math.sqrt(max(n_in, n_out)) / math.sqrt(max(1.0, n_out / n_in))
      np.testing.assert_allclose(np.asarray(scaled[0][name]),
                                 factor * np.asarray(plain[0][name]), rtol=2e-5)
    np.testing.assert_allclose(np.asarray(scaled[0]["b"]), np.asarray(plain[0]["b"]))


def test_adam_nesterov_is_nadamw_on_the_other_leaves():
  for make in (nlr.muon, nlr.normuon):
    ours = run(make(0.02, adam_learning_rate=1e-3, hidden=hidden, adam_nesterov=True))
    plain = run(make(0.02, adam_learning_rate=1e-3, hidden=hidden))
    b = [u["b"] for u in ours]
    nadam = optax.nadamw(1e-3, weight_decay=0.0)
    state = nadam.init(params()["b"])
    p = params()["b"]
    for t in range(len(b)):
      u, state = nadam.update(grads(t)["b"], state, p)
      p = p + u
      np.testing.assert_allclose(np.asarray(b[t]), np.asarray(u), rtol=1e-5, atol=1e-9)
    assert not np.allclose(np.asarray(plain[1]["b"]), np.asarray(ours[1]["b"]))
    close([u["w"] for u in ours], [u["w"] for u in plain])  # hidden leaves unchanged


@pytest.mark.parametrize("make", [nlr.muon, nlr.normuon])
def test_bad_options(make):
  for bad in (0.0, -0.2, math.nan):
    with pytest.raises(ValueError, match="consistent_rms"):
      make(0.02, consistent_rms=bad)
  with pytest.raises((TypeError, ValueError), match="adam_nesterov"):
    make(0.02, adam_nesterov="yes")
