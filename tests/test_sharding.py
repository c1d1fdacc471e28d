"""Sharded training on an 8-device CPU mesh (in its own process) and
``state_shardings`` on any optax state."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import optax_neuronlr as nlr
from tests import mesh_helpers

SCRIPT = pathlib.Path(__file__).with_name("sharded_run.py")
MAX_UNITS = 32  # the widest layer's output units in sharded_run.SHAPES


@pytest.fixture(scope="module")
def all_results() -> list[dict]:
  out = mesh_helpers.run_script(SCRIPT, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def sharded_results(all_results) -> list[dict]:
  """The per-unit rules' cases (Muon's are checked on their own)."""
  return [r for r in all_results if r["family"] == "rule"]


@pytest.fixture(scope="module")
def muon_results(all_results) -> list[dict]:
  return [r for r in all_results if r["family"] == "muon"]


@pytest.fixture(scope="module")
def owner_results(all_results) -> dict[str, dict]:
  return {r["case"]: r for r in all_results if r["family"] == "owner"}


def test_newton_schulz_on_owners_equals_one_device_and_gathers_nothing(owner_results):
  """ns_mesh: whole matrices dealt over the 8 devices. Equal to one device to
  float32 rounding; no all-gather, and fewer collective bytes per device than
  the default layout on the same (automatic-sharding) mesh."""
  assert sorted(owner_results) == ["muon/heads+auto", "muon/heads+owner",
                                   "normuon/heads+owner"]
  for r in owner_results.values():
    assert r["total_change"] > 1e-3, r["case"]
    assert r["max_diff"] <= 1e-5 * r["total_change"] + 4 * 2.0**-23, r
  total = {n: sum(b for _, b in r["collective_bytes"]) for n, r in owner_results.items()}
  for name in ("muon/heads+owner", "normuon/heads+owner"):
    ops = {op for op, _ in owner_results[name]["collectives"]}
    assert "all-gather" not in ops, owner_results[name]
    assert total[name] < 0.5 * total["muon/heads+auto"], total


def test_every_case_ran(sharded_results, muon_results):
  assert len(sharded_results) == 24
  assert {r["layout"] for r in sharded_results} == {"neuron_axis", "fan_in_axis", "head_axis"}
  assert sorted(r["case"] for r in muon_results) == sorted(
      ["muon/matrix", "normuon/matrix"] * 2 + ["muon/heads", "normuon/heads"])


def test_muon_equal_to_single_device_and_gathers_each_hidden_matrix(muon_results):
  """Newton-Schulz needs each whole matrix: a sharded hidden matrix is gathered
  once per step (an all-gather of its size), and the result equals one device.
  NorMuon adds a scalar all-reduce (the norm-preserving rescale) and, when the
  fan-in is sharded, one all-reduce of per-neuron size."""
  hidden_matrix = 16 * 32  # sharded_run.SHAPES' dense/kernel; out/kernel is the head
  head_matrix = 16 * 8 * 4  # each (16, 8, 4) / (8, 4, 16) attention kernel
  for r in muon_results:
    assert r["total_change"] > 1e-3, r["case"]
    assert r["max_diff"] <= 1e-5 * r["total_change"] + 4 * 2.0**-23, r
    gathers = [size for op, size in r["collectives"] if op == "all-gather"]
    reduces = [size for op, size in r["collectives"] if op == "all-reduce"]
    if r["layout"] == "head_axis":
      assert gathers == [head_matrix] * 4, r
    else:
      assert gathers == [hidden_matrix], r
    if r["case"].startswith("muon/"):
      assert reduces == [], r
    else:
      assert reduces and all(size <= MAX_UNITS for size in reduces), r
  normuon = [r for r in muon_results if r["case"] == "normuon/heads"][0]
  assert normuon["stat_specs"]["state.v/query/kernel"] == ["x", "None"]


def test_equal_to_single_device(sharded_results):
  for r in sharded_results:
    assert r["total_change"] > 1e-3, r["case"]
    # Shards sum in another order: 1e-5 of the change plus a few float32 ulps.
    assert r["max_diff"] <= 1e-5 * r["total_change"] + 4 * 2.0**-23, r


def test_neuron_axis_sharding_needs_no_collective(sharded_results):
  for r in sharded_results:
    if r["layout"] != "neuron_axis":
      continue
    if "/neuron" in r["case"]:
      assert r["collectives"] == [], r
      assert r["stat_specs"]["dense/kernel"] == ["x"], r
    elif "/element" in r["case"]:
      assert r["collectives"] == [], r
      assert r["stat_specs"]["dense/kernel"] == ["None", "x"], r
    else:  # one rate per tensor or per model: a scalar all-reduce
      assert all(size == 1 for _, size in r["collectives"]), r


def test_fan_in_sharding_needs_only_per_unit_collectives(sharded_results):
  for r in sharded_results:
    if r["layout"] == "fan_in_axis":
      assert all(size <= MAX_UNITS for _, size in r["collectives"]), r
      if "/neuron" in r["case"]:
        assert r["collectives"], "the mean over a sharded fan-in needs an all-reduce"


def test_adam_mini_head_axis_sharding_needs_no_collective(sharded_results):
  """Adam-mini's per-head second moment shards with its heads: the compiled
  step has no all-reduce (no collective at all) when the head axis is sharded,
  for (d, heads, head_dim) kernels and for fused (d, heads*head_dim) ones."""
  heads = {r["case"]: r for r in sharded_results if r["layout"] == "head_axis"}
  assert sorted(heads) == ["adam_mini/fused_heads", "adam_mini/heads"]
  for r in heads.values():
    assert r["collectives"] == [], r
  specs = heads["adam_mini/heads"]["stat_specs"]
  for m in ("query", "key"):  # one v per head, sharded like the heads
    assert specs[f"state.v/{m}/kernel"] == ["x"], specs
  assert specs["state.v/value/kernel"] == ["x", "None"]  # per neuron (heads, head_dim)
  assert specs["state.v/out/kernel"] == ["x"]
  specs = heads["adam_mini/fused_heads"]["stat_specs"]
  for m in ("q_proj", "k_proj"):  # Blocks(1, heads): v of shape (heads,)
    assert specs[f"state.v/{m}/kernel"] == ["x"], specs


def test_state_shardings_structure_on_one_device():
  mesh = jax.make_mesh((1,), ("x",))
  params = {"w": jnp.ones((4, 6)), "b": jnp.ones(6), "none": None}
  p_sh = {"w": NamedSharding(mesh, P(None, "x")), "b": NamedSharding(mesh, P("x")),
          "none": None}
  tx = optax.chain(
      optax.clip_by_global_norm(1.0),
      nlr.sign_consistency_lr(1e-3, granularity="neuron", direction=optax.scale_by_adam()),
      optax.inject_hyperparams(nlr.adam_hd)(learning_rate=1e-3, hyper_lr=1e-7))
  sh = nlr.state_shardings(tx, params, p_sh)
  assert jax.tree.structure(sh) == jax.tree.structure(jax.eval_shape(tx.init, params))
  strategy = sh[1][0]
  assert strategy.grad_ema["w"].spec == P("x")
  assert strategy.direction_state.mu["w"].spec == P(None, "x")  # Adam's moment
  assert strategy.count.spec == P()
  hd = sh[2].inner_state[0]
  assert hd.prev_direction["w"].spec == P(None, "x")
  assert hd.lr["w"].spec == P()  # the global rate, one copy per leaf
  state = jax.jit(tx.init, out_shardings=sh)(params)
  assert state[1][0].grad_ema["w"].shape == (6,)


def test_state_shardings_copies_single_device_shardings():
  params = {"w": jnp.ones((4, 6))}
  single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  tx = nlr.grad_history_lr(1e-3, granularity="neuron")
  sh = nlr.state_shardings(tx, params, {"w": single})
  assert sh[0].grad_ema["w"] == single
  state = jax.jit(tx.init, out_shardings=sh)(params)
  assert state[0].grad_ema["w"].shape == (6,)
  sh = nlr.state_shardings(optax.adam(1e-3), params, {"w": single})
  assert sh[0].mu["w"] == single


def test_state_shardings_of_blocks_keep_the_blocked_axis():
  mesh = jax.make_mesh((1,), ("x",))
  params = {"q": jnp.ones((4, 8)), "v": jnp.ones((4, 8))}
  p_sh = {"q": NamedSharding(mesh, P(None, "x")), "v": NamedSharding(mesh, P("x", None))}
  tx = nlr.grad_history_lr(1e-3, granularity={"q": nlr.Blocks(1, 2), "v": "neuron"})
  sh = nlr.state_shardings(tx, params, p_sh)
  assert sh[0].grad_ema["q"].spec == P("x")
  assert sh[0].grad_ema["v"].spec == P(None)


def test_state_shardings_twice_for_the_same_transform():
  """jax.eval_shape caches traces: a second call must still see the layouts."""
  mesh = jax.make_mesh((1,), ("x",))
  params = {"w": jnp.ones((4, 6))}
  p_sh = {"w": NamedSharding(mesh, P("x", None))}
  tx = nlr.grad_history_lr(1e-3, granularity=nlr.Neurons((0,)))
  first = nlr.state_shardings(tx, params, p_sh)
  second = nlr.state_shardings(tx, params, p_sh)
  assert first[0].grad_ema["w"].spec == P("x")
  assert second[0].grad_ema["w"].spec == P("x")
