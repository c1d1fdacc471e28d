"""The optimizer layout table."""

from __future__ import annotations

import jax.numpy as jnp
import optax

import optax_neuronlr as nlr

PARAMS = {"body": {"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}},
          "head": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)},
          "emb": jnp.ones((5, 3))}


def test_param_groups_layout():
  tx = nlr.param_groups(
      nlr.grad_history_lr,
      [{"params": "body/.*", "name": "backbone", "learning_rate": 1e-4},
       {"params": "head/.*", "name": "head", "learning_rate": 1e-3,
        "granularity": "tensor"}],
      rest="freeze", granularity="neuron")
  layout = nlr.optimizer_layout(tx.init(PARAMS), PARAMS)
  rows = {r.path: r for r in layout.rows}
  kernel = rows["body/Dense_0/kernel"]
  assert kernel[:6] == ("body/Dense_0/kernel", (3, 4), "backbone", "grad_history_lr",
                        "neuron", 4)
  assert abs(kernel.base_rate - 1e-4) < 1e-10
  assert rows["body/Dense_0/bias"].units == 4
  assert rows["head/kernel"][2:6] == ("head", "grad_history_lr", "tensor", 1)
  assert rows["emb"][2:4] == ("frozen", "stateless")
  text = str(layout)
  assert text.splitlines()[0].split() == ["path", "shape", "group", "strategy",
                                          "granularity", "units", "base", "rate"]
  assert len(text.splitlines()) == 2 + len(rows)


def test_mixed_transforms_layout():
  labels = {"body": {"Dense_0": {"kernel": "a", "bias": "a"}},
            "head": {"kernel": "b", "bias": "b"}, "emb": "c"}
  tx = optax.multi_transform(
      {"a": nlr.adam_hd(1e-3, 1e-7),
       "b": optax.inject_hyperparams(optax.adam)(learning_rate=3e-4),
       "c": nlr.sgd_hd(1e-2, 1e-3, granularity="neuron")}, labels)
  rows = {r.path: r for r in nlr.optimizer_layout(tx.init(PARAMS), PARAMS).rows}
  assert rows["body/Dense_0/kernel"][2:6] == ("a", "hypergradient_lr", "global", 1)
  assert rows["emb"][2:6] == ("c", "hypergradient_lr", "neuron", 3)
  assert rows["head/kernel"].strategy == "scale_by_adam"
  assert abs(rows["head/kernel"].base_rate - 3e-4) < 1e-9


def _rows(tx, params=PARAMS):
  return {r.path: r for r in nlr.optimizer_layout(tx.init(params), params).rows}


def test_muon_and_normuon_rows_show_both_recorded_rates():
  """Muon's hidden matrices show the Muon rate, the AdamW leaves theirs, also
  wrapped (inject_hyperparams, MultiSteps)."""
  cases = [
      (nlr.muon(0.02, adam_learning_rate=3e-3), "scale_by_muon"),
      (nlr.normuon(0.02, adam_learning_rate=3e-3), "normuon"),
      (optax.inject_hyperparams(nlr.muon)(learning_rate=0.02, adam_learning_rate=3e-3),
       "scale_by_muon"),
      (optax.MultiSteps(nlr.normuon(0.02, adam_learning_rate=3e-3), 2), "normuon"),
  ]
  for tx, hidden in cases:
    rows = _rows(tx)
    kernel = rows["body/Dense_0/kernel"]
    assert (kernel.group, kernel.strategy) == ("hidden", hidden)
    assert abs(kernel.base_rate - 0.02) < 1e-8, kernel
    for path in ("body/Dense_0/bias", "head/kernel", "head/bias"):
      assert rows[path].group == "adamw", rows[path]
      assert abs(rows[path].base_rate - 3e-3) < 1e-8, rows[path]
  text = str(nlr.optimizer_layout(cases[0][0].init(PARAMS), PARAMS))
  assert "0.003" in text and "0.02" in text


def test_recorded_schedule_shows_the_rate_of_the_last_step():
  schedule = optax.linear_schedule(0.02, 0.01, 10)
  tx = nlr.muon(schedule)
  params = {"body": {"Dense_0": {"kernel": jnp.ones((3, 4))}}}
  state = tx.init(params)
  for _ in range(4):
    _, state = tx.update(params, state, params)
  kernel = _rows_of(state, params)["body/Dense_0/kernel"]
  assert abs(kernel.base_rate - float(schedule(3))) < 1e-9, kernel


def _rows_of(state, params):
  return {r.path: r for r in nlr.optimizer_layout(state, params).rows}
