"""Hyperparameter checks: kinds, shapes, concrete NumPy/JAX scalars, flags, dtypes."""

from __future__ import annotations

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_neuronlr as nlr
from optax_neuronlr._src import validation

SCHEDULE = optax.constant_schedule(0.1)


# ---------------------------------------------------------------------------
# Through the public factories: the symptoms users meet.


@pytest.mark.parametrize("kwargs, name", [
    (dict(learning_rate="-1"), "learning_rate"),
    (dict(learning_rate="1e-3"), "learning_rate"),
    (dict(learning_rate=1e-3, beta="1.0"), "beta"),
    (dict(learning_rate=1e-3, min_lr="2", max_lr="1"), "min_lr"),
    (dict(learning_rate=None), "learning_rate"),
    (dict(learning_rate=1e-3 + 0j), "learning_rate"),
    (dict(learning_rate=1e-3, eps=None), "eps"),
    (dict(learning_rate=1e-3, beta=SCHEDULE), "beta"),
    (dict(learning_rate=1e-3, max_lr=True), "max_lr"),
    (dict(learning_rate=[1e-3]), "learning_rate"),
])
def test_factories_reject_wrong_kinds_naming_the_argument(kwargs, name):
  with pytest.raises(TypeError, match=name):
    nlr.grad_history_lr(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(learning_rate=np.float32(-1)), r"learning_rate must lie in \[0, inf\]"),
    (dict(learning_rate=jnp.array(-1.0)), r"learning_rate must lie in \[0, inf\]"),
    (dict(learning_rate=np.array(-1.0)), r"learning_rate must lie in \[0, inf\]"),
    (dict(learning_rate=1e-3, beta=jnp.array(1.0)), r"beta must lie in \[0, 1\)"),
    (dict(learning_rate=1e-3, min_lr=np.array(2.0), max_lr=1.0),
     "min_lr must not exceed max_lr"),
    (dict(learning_rate=1e-3, min_lr=jnp.array(2.0), max_lr=np.float64(1.0)),
     "min_lr must not exceed max_lr"),
    (dict(learning_rate=jnp.ones(3)), r"learning_rate must be a scalar.*shape \(3,\)"),
    (dict(learning_rate=1e-3, min_lr=np.zeros((2, 2))), r"min_lr .*shape \(2, 2\)"),
])
def test_factories_check_concrete_arrays_like_numbers(kwargs, message):
  with pytest.raises(ValueError, match=message):
    nlr.grad_history_lr(**kwargs)


def test_concrete_scalars_and_schedules_are_accepted():
  params = {"w": jnp.ones((2, 3))}
  for lr in (np.float32(0.1), jnp.array(0.1), np.array(0.1), np.int64(1), SCHEDULE):
    tx = nlr.grad_history_lr(lr, min_lr=np.float32(0.0), max_lr=jnp.array(math.inf))
    updates, _ = tx.update(params, tx.init(params), params)
    assert updates["w"].shape == (2, 3)


def test_injected_hyperparameters_still_work_under_jit():
  """Under jit the values are traced: only their (static) shape is checked."""
  params = {"w": jnp.ones((2, 3))}
  tx = optax.inject_hyperparams(nlr.grad_history_lr)(learning_rate=0.1, beta=0.5)
  state = jax.jit(tx.init)(params)
  updates, state = jax.jit(tx.update)(params, state, params)
  assert updates["w"].shape == (2, 3)
  state = nlr.set_hyperparams(state, learning_rate=0.2)
  jax.jit(tx.update)(params, state, params)


# ---------------------------------------------------------------------------
# The helpers themselves.


@pytest.mark.parametrize("value", [
    "0.1", b"0.1", None, 1j, np.complex64(1), jnp.array(1 + 1j), True, np.bool_(False),
    jnp.array(True), [0.1], (0.1,), {"lr": 0.1}, object(), SCHEDULE,
])
def test_check_range_type_errors(value):
  with pytest.raises(TypeError, match=r"^factor must be a number in \[0, 1\]"):
    validation.check_range("factor", value, low=0.0, high=1.0)


def test_check_range_values_shapes_and_returns():
  check = lambda v, **kw: validation.check_range("x", v, low=0.0, high=1.0, **kw)
  assert check(np.float32(0.5)) == 0.5
  assert check(jnp.array(1, jnp.int32)) == 1
  assert check(jnp.array(0.5, jnp.bfloat16)) == 0.5
  assert check(SCHEDULE, allow_schedule=True) is None
  assert check(None, allow_none=True) is None
  for bad in (np.float32(1.5), jnp.array(-0.5), np.array(math.nan), math.inf):
    with pytest.raises(ValueError, match="^x must"):
      check(bad)
  with pytest.raises(ValueError, match=r"x must be a scalar .*shape \(1,\)"):
    check(np.ones(1))


def test_traced_values_are_checked_by_shape_only():
  @jax.jit
  def f(x):
    validation.check_rate("learning_rate", x)
    return x

  assert float(f(-1.0)) == -1.0  # A traced value is not known here.
  with pytest.raises(ValueError, match=r"learning_rate must be a scalar.*shape \(3,\)"):
    f(jnp.ones(3))


def test_check_rate_schedule_option():
  assert validation.check_rate("learning_rate", SCHEDULE) is None
  with pytest.raises(TypeError, match="learning_rate.*schedules"):
    validation.check_rate("learning_rate", SCHEDULE, allow_schedule=False)


def test_check_int():
  assert validation.check_int("n", np.int64(3)) == 3
  assert validation.check_int("n", jnp.array(3)) == 3
  assert validation.check_int("n", 2.0) == 2
  assert isinstance(validation.check_int("n", np.int64(3)), int)
  for bad in (2.7, -1, math.inf, math.nan, np.float32(2.5)):
    with pytest.raises(ValueError, match=r"n must be an int >= 0"):
      validation.check_int("n", bad)
  for bad in ("3", None, True, 3j):
    with pytest.raises(TypeError, match=r"n must be an int >= 0"):
      validation.check_int("n", bad)
  with pytest.raises(ValueError, match=r"n must be an int >= 1"):
    validation.check_int("n", 0, low=1)


def test_check_flag():
  assert validation.check_flag("bias_correction", True) is True
  assert validation.check_flag("bias_correction", np.bool_(False)) is False
  for bad in ("False", "True", 0, 1, 1.0, None, np.array([True]), jnp.array(True)):
    with pytest.raises(TypeError, match="bias_correction must be True or False"):
      validation.check_flag("bias_correction", bad)


@pytest.mark.parametrize("dtype, want", [
    (None, None), (jnp.float32, jnp.float32), (np.float16, jnp.float16),
    ("bfloat16", jnp.bfloat16), (jnp.dtype("float64"), jnp.float64),
])
def test_check_dtype_accepts_floats(dtype, want):
  got = validation.check_dtype("state_dtype", dtype)
  assert got is None if want is None else got == jnp.dtype(want)


@pytest.mark.parametrize("dtype", [
    jnp.int32, np.uint8, bool, jnp.bool_, jnp.complex64, "int8", "float8_e4m3fn",
])
def test_check_dtype_rejects_other_dtypes(dtype):
  with pytest.raises(ValueError, match=(
      r"state_dtype must be one of float16, bfloat16, float32, float64")):
    validation.check_dtype("state_dtype", dtype)


@pytest.mark.parametrize("dtype", ["foo", 5, [1], lambda x: x, True, np.float32(1.0),
                                   jnp.array(1.0), np.ones(2)])
def test_check_dtype_rejects_non_dtypes(dtype):
  with pytest.raises(TypeError, match=r"state_dtype must be a dtype \(float16"):
    validation.check_dtype("state_dtype", dtype)


def test_check_choice_and_is_number():
  assert validation.check_choice("mode", "min", ("min", "max")) == "min"
  for bad in ("low", None, 1):
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
      validation.check_choice("mode", bad, ("min", "max"))
  for yes in (1, 0.5, np.float32(1), np.int8(1), jnp.array(1.0), np.array(2)):
    assert validation.is_number(yes), yes
  for no in (True, "1", None, 1j, np.ones(2), SCHEDULE):
    assert not validation.is_number(no), no


if __name__ == "__main__":
  pytest.main([__file__])


# Every public factory x every numeric argument x each kind of bad value: a
# TypeError or ValueError at construction that names the argument; and the
# default value as a Python, NumPy or JAX scalar is accepted.
_FACTORIES = {
    "scale_by_grad_magnitude_lr": (nlr.scale_by_grad_magnitude_lr, {"learning_rate": 0.1}),
    "grad_magnitude_lr": (nlr.grad_magnitude_lr, {"learning_rate": 0.1}),
    "scale_by_grad_history_lr": (nlr.scale_by_grad_history_lr, {"learning_rate": 0.1}),
    "grad_history_lr": (nlr.grad_history_lr, {"learning_rate": 0.1}),
    "scale_by_sign_consistency_lr": (nlr.scale_by_sign_consistency_lr, {"learning_rate": 0.1}),
    "sign_consistency_lr": (nlr.sign_consistency_lr, {"learning_rate": 0.1}),
    "scale_by_hypergradient_lr": (nlr.scale_by_hypergradient_lr,
                                  {"learning_rate": 0.1, "hyper_lr": 0.1}),
    "hypergradient_lr": (nlr.hypergradient_lr, {"learning_rate": 0.1, "hyper_lr": 0.1}),
    "sgd_hd": (nlr.sgd_hd, {"learning_rate": 0.1, "hyper_lr": 0.1}),
    "adam_hd": (nlr.adam_hd, {"learning_rate": 0.1, "hyper_lr": 0.1}),
    "scale_by_reduce_lr_on_plateau": (nlr.scale_by_reduce_lr_on_plateau,
                                      {"learning_rate": 0.1}),
    "reduce_lr_on_plateau": (nlr.reduce_lr_on_plateau, {"learning_rate": 0.1}),
    "scale_by_adam_mini": (nlr.scale_by_adam_mini, {"learning_rate": 0.1}),
    "adam_mini": (nlr.adam_mini, {"learning_rate": 0.1}),
    "scale_by_neuron_norm": (nlr.scale_by_neuron_norm, {"learning_rate": 0.1}),
    "neuron_norm_sgd": (nlr.neuron_norm_sgd, {"learning_rate": 0.1}),
    "scale_sgd": (nlr.scale_sgd, {"learning_rate": 0.1}),
}
_NON_NUMERIC = ("granularity", "neuron_axes", "state_dtype", "mu_dtype", "direction", "mode",
                "threshold_mode", "bias_correction", "multiplicative", "blocks",
                "mask", "on_unrecognised", "head", "num_heads", "num_kv_heads", "axis_names")
_CASES = []
for _name, (_f, _base) in _FACTORIES.items():
  for _p in inspect.signature(_f).parameters.values():
    if _p.name not in _NON_NUMERIC:
      _CASES.append((_name, _p.name))
_BAD = {"string": "0.5", "none": None, "complex": 1 + 1j, "nan": math.nan,
        "np_nan": np.float32(np.nan), "jnp_nan": jnp.array(jnp.nan),
        "vector": jnp.ones(3), "list": [0.5]}


@pytest.mark.parametrize("bad", sorted(_BAD))
@pytest.mark.parametrize("factory,arg", _CASES)
def test_every_numeric_argument_rejects_bad_values(factory, arg, bad):
  f, base = _FACTORIES[factory]
  if bad == "none" and inspect.signature(f).parameters[arg].default is None:
    pytest.skip(f"{arg}=None is its documented default")
  with pytest.raises((TypeError, ValueError), match=arg):
    f(**{**base, arg: _BAD[bad]})


@pytest.mark.parametrize("factory,arg", _CASES)
def test_every_numeric_argument_takes_numpy_and_jax_scalars(factory, arg):
  f, base = _FACTORIES[factory]
  default = inspect.signature(f).parameters[arg].default
  value = base.get(arg, default)
  if value is inspect.Parameter.empty or value is None:
    pytest.skip(f"{arg} has no default to reuse")
  kind = np.int64 if isinstance(value, int) and not isinstance(value, bool) else np.float64
  for v in (value, kind(value), jnp.asarray(value)):
    f(**{**base, arg: v})


@pytest.mark.parametrize("factory,arg", _CASES)
def test_every_numeric_argument_rejects_negative_infinity(factory, arg):
  f, base = _FACTORIES[factory]
  with pytest.raises((TypeError, ValueError), match=arg):
    f(**{**base, arg: -math.inf})
