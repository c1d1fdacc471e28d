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
  with pytest.raises(ValueError, match="milestones must be epochs >= 0"):
    nlr.schedules.multi_step_lr(0.1, [-1, 3])
  with pytest.raises(ValueError, match=r"t_max must lie in \[1, inf\]"):
    nlr.schedules.cosine_annealing_lr(0.1, 0)


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
    got_applied, got_after = [], []
    for v in values:
      updates, state = update({"w": jnp.ones(2)}, state, value=v)
      got_applied.append(-float(updates["w"][0]))
      got_after.append(float(state.lr))
  rtol = 1e-12 if x64 else 1e-6
  np.testing.assert_allclose(got_applied, applied, rtol=rtol)
  np.testing.assert_allclose(got_after, after, rtol=rtol)
  assert len(set(after)) > 1, "the scripted sequence must trigger a reduction"


def test_plateau_with_adam_direction_and_errors():
  tx = optax.chain(optax.scale_by_adam(), nlr.reduce_lr_on_plateau(1e-3, patience=0))
  state = tx.init({"w": jnp.zeros(2)})
  _, state = tx.update({"w": jnp.ones(2)}, state, value=1.0)
  _, state = tx.update({"w": jnp.ones(2)}, state, value=2.0)
  assert float(state[1].lr) == pytest.approx(1e-4)
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
