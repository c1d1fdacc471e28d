"""Schedules and the plateau transform against torch.optim.lr_scheduler."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import optax_neuronlr as nlr

EPOCHS = 100
INIT = 0.1


def _torch_rates(make_scheduler, epochs: int = EPOCHS) -> list[float]:
  """PyTorch's rate after k = 0..epochs-1 calls of scheduler.step()."""
  p = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.SGD([p], lr=INIT)
  scheduler = make_scheduler(opt)
  rates = []
  for _ in range(epochs):
    rates.append(opt.param_groups[0]["lr"])
    opt.step()
    scheduler.step()
  return rates


SCHEDULERS = {
    "step_lr": (
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.5),
        lambda spe: nlr.schedules.step_lr(INIT, 7, 0.5, steps_per_epoch=spe)),
    "multi_step_lr": (
        lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [0, 10, 30, 30, 60], 0.5),
        lambda spe: nlr.schedules.multi_step_lr(INIT, [0, 10, 30, 30, 60], 0.5,
                                                steps_per_epoch=spe)),
    "exponential_lr": (
        lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.95),
        lambda spe: nlr.schedules.exponential_lr(INIT, 0.95, steps_per_epoch=spe)),
    "cosine_annealing_lr": (
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=25, eta_min=1e-3),
        lambda spe: nlr.schedules.cosine_annealing_lr(INIT, 25, 1e-3, steps_per_epoch=spe)),
    "cosine_annealing_lr_zero_floor": (
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10),
        lambda spe: nlr.schedules.cosine_annealing_lr(INIT, 10, steps_per_epoch=spe)),
    "lambda_lr": (
        lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 1.0 / (1 + e // 3)),
        lambda spe: nlr.schedules.lambda_lr(INIT, lambda e: 1.0 / (1 + e // 3),
                                            steps_per_epoch=spe)),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("steps_per_epoch", [1, 3])
def test_schedule_matches_torch(name, steps_per_epoch):
  make_torch, make_ours = SCHEDULERS[name]
  want = np.asarray(_torch_rates(make_torch))
  schedule = jax.jit(make_ours(steps_per_epoch))
  counts = np.arange(EPOCHS * steps_per_epoch)
  got = np.asarray([schedule(c) for c in counts])
  np.testing.assert_allclose(got, np.repeat(want, steps_per_epoch),
                             rtol=2e-6, atol=1e-9, err_msg=name)


def test_cosine_rises_after_t_max():
  schedule = nlr.schedules.cosine_annealing_lr(1.0, 10)
  assert float(schedule(10)) == pytest.approx(0.0, abs=1e-7)
  assert float(schedule(15)) == pytest.approx(0.5, abs=1e-6)
  assert float(schedule(20)) == pytest.approx(1.0, abs=1e-6)


def test_schedule_arguments():
  with pytest.raises(ValueError, match="steps_per_epoch must be an int >= 1"):
    nlr.schedules.step_lr(0.1, 5, steps_per_epoch=0)
  with pytest.raises(ValueError, match=r"gamma must lie in \(0, inf\]"):
    nlr.schedules.exponential_lr(0.1, 0.0)
  with pytest.raises(ValueError, match=r"milestones must be a list of epochs \(ints >= 0\)"):
    nlr.schedules.multi_step_lr(0.1, [-1, 3])
  with pytest.raises(ValueError, match=r"t_max must be an int >= 1"):
    nlr.schedules.cosine_annealing_lr(0.1, 0)


def test_numpy_ints_are_ints():
  """``steps_per_epoch=np.int64(2)`` (e.g. ``len(x) // batch`` on arrays) works,
  and gives the schedule of the same Python numbers."""
  s = nlr.schedules
  pairs = [
      (s.step_lr(0.1, np.int64(2), 0.5, steps_per_epoch=np.int64(2)),
       s.step_lr(0.1, 2, 0.5, steps_per_epoch=2)),
      (s.step_lr(np.float32(0.1), 2, np.float64(0.5), steps_per_epoch=np.int32(2)),
       s.step_lr(0.1, 2, 0.5, steps_per_epoch=2)),
      (s.multi_step_lr(0.1, np.array([2, 4]), 0.5, steps_per_epoch=np.int64(2)),
       s.multi_step_lr(0.1, [2, 4], 0.5, steps_per_epoch=2)),
      (s.exponential_lr(0.1, 0.5, steps_per_epoch=np.int64(2)),
       s.exponential_lr(0.1, 0.5, steps_per_epoch=2)),
      (s.cosine_annealing_lr(0.1, np.int64(4), steps_per_epoch=np.int64(2)),
       s.cosine_annealing_lr(0.1, 4, steps_per_epoch=2)),
      (s.lambda_lr(0.1, lambda e: 0.5 ** (e // 2), steps_per_epoch=np.int64(2)),
       s.lambda_lr(0.1, lambda e: 0.5 ** (e // 2), steps_per_epoch=2)),
  ]
  for got, want in pairs:
    values = [float(got(k)) for k in range(12)]
    np.testing.assert_allclose(values, [float(want(k)) for k in range(12)], rtol=1e-6)
    assert values[0] == values[1] and len(set(values)) > 1  # Two steps per epoch.


@pytest.mark.parametrize("make, exc, message", [
    # A string is not a list of its digits ("25" was [2, 5]).
    (lambda: nlr.schedules.multi_step_lr(0.1, "25"), TypeError,
     r"milestones must be a list of epochs .* got '25'"),
    # A single int is not "not iterable" deep inside.
    (lambda: nlr.schedules.multi_step_lr(0.1, 5), TypeError,
     r"milestones must be a list of epochs .*e\.g\. \[30, 80\], got 5"),
    (lambda: nlr.schedules.multi_step_lr(0.1, np.array(5)), TypeError, "milestones"),
    (lambda: nlr.schedules.multi_step_lr(0.1, {"a": 1}), TypeError, "milestones"),
    # A fractional epoch is not truncated ([2.7] was [2]).
    (lambda: nlr.schedules.multi_step_lr(0.1, [2.7]), ValueError,
     r"milestones must be a list of epochs .*got the epoch 2\.7"),
    (lambda: nlr.schedules.multi_step_lr(0.1, [None]), TypeError, "milestones"),
    (lambda: nlr.schedules.multi_step_lr(0.1, ["2"]), TypeError, "milestones"),
    # init_value is checked like every rate.
    (lambda: nlr.schedules.step_lr(-0.1, 5), ValueError, r"init_value must lie in \[0, inf\]"),
    (lambda: nlr.schedules.step_lr("0.1", 5), TypeError, "init_value"),
    (lambda: nlr.schedules.exponential_lr(None, 0.9), TypeError, "init_value"),
    (lambda: nlr.schedules.multi_step_lr(jnp.ones(2), [1]), ValueError,
     r"init_value .*shape \(2,\)"),
    (lambda: nlr.schedules.cosine_annealing_lr(math.nan, 5), ValueError, "init_value"),
    (lambda: nlr.schedules.lambda_lr(-1.0, lambda e: 1.0), ValueError, "init_value"),
    # lr_lambda must be a function, checked at construction.
    (lambda: nlr.schedules.lambda_lr(0.1, 0.5), TypeError, "lr_lambda must be a function"),
    (lambda: nlr.schedules.lambda_lr(0.1, [lambda e: 1.0]), TypeError, "lr_lambda"),
    # Integer arguments are never truncated; strings and bools are not numbers.
    (lambda: nlr.schedules.step_lr(0.1, 2.5), ValueError, r"step_size must be an int >= 1"),
    (lambda: nlr.schedules.cosine_annealing_lr(0.1, 2.5), ValueError, r"t_max must be an int"),
    (lambda: nlr.schedules.step_lr(0.1, 5, steps_per_epoch=2.5), ValueError, "steps_per_epoch"),
    (lambda: nlr.schedules.step_lr(0.1, 5, steps_per_epoch="2"), TypeError, "steps_per_epoch"),
    (lambda: nlr.schedules.step_lr(0.1, 5, steps_per_epoch=True), TypeError, "steps_per_epoch"),
    (lambda: nlr.schedules.step_lr(0.1, 5, gamma="0.5"), TypeError, "gamma"),
    (lambda: nlr.schedules.cosine_annealing_lr(0.1, 5, eta_min=-1e-3), ValueError, "eta_min"),
])
def test_schedule_arguments_are_checked_at_construction(make, exc, message):
  with pytest.raises(exc, match=message):
    make()


def test_milestones_accept_any_int_sequence():
  want = nlr.schedules.multi_step_lr(1.0, [2, 4], 0.5)
  for milestones in ((2, 4), range(2, 5, 2), np.array([2, 4]), [np.int64(2), 4.0],
                     jnp.array([2, 4]), []):
    schedule = nlr.schedules.multi_step_lr(1.0, milestones, 0.5)
    got = [float(schedule(k)) for k in range(6)]
    if len(milestones):
      assert got == [float(want(k)) for k in range(6)], milestones
    else:
      assert got == [1.0] * 6


# ---------------------------------------------------------------------------
# ReduceLROnPlateau.

LOSSES_MIN = [10.0, 9.0, 9.0, 9.5, 8.9995, 9.0, 9.0, 9.0, 8.0, 8.0, 8.0, 8.0, 8.0,
              7.0, 7.0, 7.0, 7.0, 7.0, 7.0, 7.0, 6.0, math.nan, 6.0, 6.0, 6.0, 6.0]
# Negative values in max mode: a relative threshold then lowers the bar.
VALUES_MAX = [-5.0, -4.0, -4.0002, -3.9999, -4.0, -4.0, -3.0, -3.0, -3.0, -3.0,
              -3.0, 2.0, 2.0001, 2.0, 2.0, 2.0, 2.0]

PLATEAU_CASES = [
    dict(mode="min"),
    dict(mode="min", patience=0),
    dict(mode="min", patience=2, threshold=0.05, threshold_mode="rel", cooldown=2),
    dict(mode="min", patience=1, threshold=0.5, threshold_mode="abs", min_lr=2e-4),
    dict(mode="min", patience=0, factor=0.5, eps=0.02),
    dict(mode="max", patience=1),
    dict(mode="max", patience=1, threshold=0.1, threshold_mode="rel", cooldown=1),
    dict(mode="max", patience=0, threshold=0.5, threshold_mode="abs", factor=0.3),
]


def _torch_plateau(values, kwargs):
  p = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.SGD([p], lr=INIT)
  scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
  applied, after = [], []
  for v in values:
    applied.append(opt.param_groups[0]["lr"])
    opt.step()
    scheduler.step(v)
    after.append(opt.param_groups[0]["lr"])
  return applied, after


@pytest.mark.parametrize("kwargs", PLATEAU_CASES, ids=str)
@pytest.mark.parametrize("x64", [False, True])
def test_plateau_matches_torch(kwargs, x64):
  values = LOSSES_MIN if kwargs["mode"] == "min" else VALUES_MAX
  kwargs = {"patience": 3, **kwargs}
  applied, after = _torch_plateau(values, kwargs)
  with jax.enable_x64(x64):
    tx = nlr.reduce_lr_on_plateau(INIT, **kwargs)
    state = tx.init({"w": jnp.zeros(2)})
    update = jax.jit(tx.update)
    got_applied, got_after, recorded = [], [], []
    for v in values:
      updates, state = update({"w": jnp.ones(2)}, state, value=v)
      got_applied.append(-float(updates["w"][0]))
      recorded.append(float(state[0].applied_lr))
      # The rate the next update applies: base * reductions, floored.
      got_after.append(max(INIT * float(state[0].scale),
                           min(kwargs.get("min_lr", 0.0), INIT)))
  rtol = 1e-12 if x64 else 1e-6
  np.testing.assert_allclose(got_applied, applied, rtol=rtol)
  np.testing.assert_allclose(recorded, applied, rtol=rtol)
  np.testing.assert_allclose(got_after, after, rtol=rtol)
  assert len(set(after)) > 1, "the scripted sequence must trigger a reduction"


def test_plateau_with_adam_direction_and_errors():
  tx = optax.chain(optax.scale_by_adam(), nlr.reduce_lr_on_plateau(1e-3, patience=0))
  state = tx.init({"w": jnp.zeros(2)})
  _, state = tx.update({"w": jnp.ones(2)}, state, value=1.0)
  _, state = tx.update({"w": jnp.ones(2)}, state, value=2.0)
  assert float(state[1][0].scale) == pytest.approx(0.1)
  updates, state = tx.update({"w": jnp.ones(2)}, state, value=3.0)
  assert float(state[1][0].applied_lr) == pytest.approx(1e-4)
  with pytest.raises(TypeError, match="needs the monitored value"):
    tx.update({"w": jnp.ones(2)}, state)
  for bad in (0.0, 1.0, 1.5, -0.1):
    with pytest.raises(ValueError, match=r"factor must lie in \(0, 1\)"):
      nlr.reduce_lr_on_plateau(0.1, factor=bad)
  with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
    nlr.reduce_lr_on_plateau(0.1, mode="low")
  with pytest.raises(ValueError, match="threshold_mode must be 'rel' or 'abs'"):
    nlr.reduce_lr_on_plateau(0.1, threshold_mode="relative")
  with pytest.raises(ValueError, match="patience must be an int >= 0"):
    nlr.reduce_lr_on_plateau(0.1, patience=-1)


def test_plateau_sign_convention():
  """``scale_by_`` returns ``+lr * u``; the alias chains ``optax.scale(-1)``."""
  params = {"w": jnp.zeros(3)}
  grads = {"w": jnp.asarray([1.0, -2.0, 3.0])}
  scale_by = nlr._src.plateau.scale_by_reduce_lr_on_plateau(0.1, patience=0)  # pylint: disable=protected-access
  alias = nlr.reduce_lr_on_plateau(0.1, patience=0)
  s1, s2 = scale_by.init(params), alias.init(params)
  assert isinstance(s1, nlr.ReduceLROnPlateauState)
  assert isinstance(s2[0], nlr.ReduceLROnPlateauState)
  for value in (1.0, 2.0, 0.5):
    u1, s1 = scale_by.update(grads, s1, value=value)
    u2, s2 = alias.update(grads, s2, value=value)
    np.testing.assert_array_equal(u2["w"], -u1["w"])
  np.testing.assert_allclose(u1["w"], 0.01 * grads["w"], rtol=1e-6)


def _plateau_update(tx, state, value):
  return jax.jit(tx.update)({"w": jnp.ones(2)}, state, value=value)


@pytest.mark.parametrize("value", [jnp.ones(3), np.ones((1,)), [1.0, 2.0]])
def test_plateau_rejects_a_vector_value(value):
  """A vector of losses must not become a vector of rates applied column-wise."""
  tx = nlr.reduce_lr_on_plateau(0.1)
  state = tx.init({"w": jnp.zeros(2)})
  with pytest.raises((ValueError, TypeError), match=r"value must be a scalar"):
    _plateau_update(tx, state, jnp.asarray(value))  # Traced: checked by shape.
  with pytest.raises((ValueError, TypeError), match=r"value"):
    tx.update({"w": jnp.ones(2)}, state, value=value)


@pytest.mark.parametrize("value", ["1.0", 1j, True])
def test_plateau_rejects_a_non_numeric_value(value):
  tx = nlr.reduce_lr_on_plateau(0.1)
  with pytest.raises(TypeError, match=r"value must be a scalar"):
    tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}), value=value)


@pytest.mark.parametrize("name", ["learning_rate", "factor", "threshold", "min_lr",
                                  "eps", "patience", "cooldown"])
@pytest.mark.parametrize("bad", [None, 0.5j, "1", optax.constant_schedule(0.5)],
                         ids=["none", "complex", "str", "schedule"])
def test_plateau_number_arguments_are_checked_at_construction(name, bad):
  kwargs = {"learning_rate": 0.1, name: bad}
  with pytest.raises(TypeError, match=f"^{name} must be"):
    nlr.reduce_lr_on_plateau(**kwargs)


def test_plateau_accepts_numpy_numbers_and_checks_concrete_arrays():
  tx = nlr.reduce_lr_on_plateau(np.float32(0.1), patience=np.int64(0),
                                cooldown=jnp.array(1), factor=np.float64(0.5))
  state = tx.init({"w": jnp.zeros(2)})
  _, state = tx.update({"w": jnp.ones(2)}, state, value=1.0)
  _, state = tx.update({"w": jnp.ones(2)}, state, value=2.0)
  assert float(state[0].scale) == 0.5
  with pytest.raises(ValueError, match="patience must be an int >= 0"):
    nlr.reduce_lr_on_plateau(0.1, patience=2.5)
  with pytest.raises(ValueError, match=r"factor must lie in \(0, 1\)"):
    nlr.reduce_lr_on_plateau(0.1, factor=jnp.array(1.0))
  with pytest.raises(ValueError, match=r"learning_rate must be a scalar.*\(2,\)"):
    nlr.reduce_lr_on_plateau(jnp.ones(2))
  with pytest.raises(ValueError, match="mode must be 'min' or 'max', got None"):
    nlr.reduce_lr_on_plateau(0.1, mode=None)


def test_plateau_set_learning_rate_takes_effect():
  """``nlr.set_hyperparams(state, learning_rate=...)`` changes the next update:
  the base rate times the reductions so far (it used to only seed init)."""
  tx = optax.inject_hyperparams(nlr.reduce_lr_on_plateau)(learning_rate=0.1, patience=0)
  state = tx.init({"w": jnp.zeros(2)})
  update = jax.jit(tx.update)
  g = {"w": jnp.ones(2)}
  _, state = update(g, state, value=1.0)
  _, state = update(g, state, value=2.0)  # A plateau: 0.1 -> 0.01.
  before, _ = update(g, state, value=0.5)
  state = nlr.set_hyperparams(state, learning_rate=lambda v: v * 0.9)
  after, state = update(g, state, value=0.5)
  np.testing.assert_allclose(after["w"], 0.9 * before["w"], rtol=1e-6)
  np.testing.assert_allclose(-after["w"], [0.009, 0.009], rtol=1e-6)
  assert float(nlr.get_hyperparams(state)["default"]["learning_rate"]) == pytest.approx(0.09)
  # Plain tree_set reaches the same field.
  state = optax.tree_utils.tree_set(state, learning_rate=jnp.asarray(0.2, jnp.float32))
  after, _ = update(g, state, value=0.4)
  np.testing.assert_allclose(-after["w"], [0.02, 0.02], rtol=1e-6)


def test_plateau_with_manual_edits_matches_torch():
  """Reference 003: a plateau scheduler and, every 5 epochs,
  ``for g in opt.param_groups: g['lr'] *= 0.9``."""
  kwargs = dict(patience=2, factor=0.5)
  p = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.SGD([p], lr=INIT)
  scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
  want = []
  for k, v in enumerate(LOSSES_MIN):
    if k % 5 == 0:
      for group in opt.param_groups:
        group["lr"] *= 0.9
    want.append(opt.param_groups[0]["lr"])
    opt.step()
    scheduler.step(v)
  with jax.enable_x64(True):
    tx = optax.inject_hyperparams(nlr.reduce_lr_on_plateau)(learning_rate=INIT, **kwargs)
    state = tx.init({"w": jnp.zeros(1)})
    update = jax.jit(tx.update)
    edit = jax.jit(lambda s: nlr.set_hyperparams(s, learning_rate=lambda v: v * 0.9))
    got = []
    for k, v in enumerate(LOSSES_MIN):
      if k % 5 == 0:
        state = edit(state)
      updates, state = update({"w": jnp.ones(1)}, state, value=v)
      got.append(-float(updates["w"][0]))
  np.testing.assert_allclose(got, want, rtol=1e-12)
  assert len(set(np.round(np.asarray(want) / INIT, 8))) > 4  # Edits and reductions.
