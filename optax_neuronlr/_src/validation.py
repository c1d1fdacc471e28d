"""Construction-time checks of hyperparameters.

Every check names the argument and what it allows, and raises

* ``TypeError`` for a value of the wrong kind: a string (``"1e-3"``), ``None``,
  a bool where a number is needed (or a number where a bool is), a complex
  number, a list, or a schedule where only a number works;
* ``ValueError`` for a value of the right kind outside the allowed range, and
  for an array that is not a scalar (the message gives its shape).

A value is *concrete* when it is a Python or NumPy number, or a 0-d NumPy or
JAX array that is not traced; concrete values are checked like Python numbers.
A traced value (under ``jax.jit``, e.g. a hyperparameter of
``optax.inject_hyperparams`` inside a jitted ``init`` or ``update``) is checked
only for what is static, its shape and dtype; its value is left alone. A
schedule (a callable) is accepted only where the argument allows one.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, Literal, Optional, Union, overload

import jax
from jax import core as jax_core
import jax.numpy as jnp
import numpy as np

Number = Union[int, float]

# Float dtypes a per-unit statistic may be kept in (``state_dtype``).
STATE_DTYPES = tuple(
    jnp.dtype(d) for d in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)
)


def is_traced(value: Any) -> bool:
  """True for a JAX tracer (a value inside ``jit``, ``grad``, ``vmap``, ...)."""
  return isinstance(value, jax_core.Tracer)


def _describe(value: Any) -> str:
  """``repr(value)`` (shortened) and its type, for error messages."""
  text = repr(value)
  if len(text) > 60:
    text = text[:57] + "..."
  return f"{text} ({type(value).__name__})"


def _array_scalar(name: str, value: Any, what: str) -> Optional[Number]:
  """A NumPy scalar or a NumPy/JAX array as a Python number (None if traced)."""
  dtype = jnp.dtype(value.dtype)
  if dtype == jnp.dtype(bool):
    raise TypeError(f"{name} must be {what}, got a bool array {_describe(value)}.")
  if jnp.issubdtype(dtype, jnp.complexfloating):
    raise TypeError(f"{name} must be {what}, got the complex value {_describe(value)}.")
  if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
    raise TypeError(f"{name} must be {what}, got a value of dtype {dtype}.")
  shape = tuple(np.shape(value))
  if shape:
    raise ValueError(
        f"{name} must be a scalar ({what}), got an array of shape {shape}."
    )
  if is_traced(value):
    return None
  return np.asarray(value).item()


def concrete_number(
    name: str,
    value: Any,
    *,
    what: str = "a real number",
    allow_schedule: bool = False,
    allow_none: bool = False,
) -> Optional[Number]:
  """``value`` as a Python int or float, after checking its kind and shape.

  Args:
    name: the argument's name, used in messages.
    value: a Python or NumPy real number, a 0-d NumPy or JAX array (possibly
      traced), or, where allowed, a schedule or None.
    what: what the argument allows, for messages (``"a number in [0, 1)"``).
    allow_schedule: accept a callable (an optax schedule).
    allow_none: accept None.

  Returns:
    The value as a Python number, or None for a traced value, a schedule or an
    allowed None (values that cannot be checked here).

  Raises:
    TypeError: for strings, None, bools, complex numbers, non-numeric arrays,
      callables (unless allowed) and anything else that is not a number.
    ValueError: for an array that is not 0-d.
  """
  if value is None:
    if allow_none:
      return None
    raise TypeError(f"{name} must be {what}, got None.")
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be {what}, got the bool {value!r}.")
  if isinstance(value, (str, bytes)):
    raise TypeError(
        f"{name} must be {what}, got the string {value!r}: pass a number, "
        "not its text."
    )
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    return _array_scalar(name, value, what)
  if isinstance(value, numbers.Real):
    return value if isinstance(value, (int, float)) else float(value)
  if isinstance(value, numbers.Complex):
    raise TypeError(f"{name} must be {what}, got the complex number {value!r}.")
  if callable(value):
    if allow_schedule:
      return None
    raise TypeError(
        f"{name} must be {what}; schedules (callables) are not supported here, "
        f"got {_describe(value)}."
    )
  raise TypeError(f"{name} must be {what}, got {_describe(value)}.")


def is_number(value: Any) -> bool:
  """True for a concrete real number: a Python or NumPy number or an untraced
  0-d real array; False for bools, strings, callables, traced values and
  non-scalar arrays."""
  try:
    return concrete_number("value", value) is not None
  except (TypeError, ValueError):
    return False


HALF_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def check_precision(name: str, value: Any) -> None:
  """A float hyperparameter is not a half-precision (bfloat16/float16) array.

  ``optax.inject_hyperparams`` stores float hyperparameters in the params'
  dtype unless given ``hyperparam_dtype``, so with bfloat16 params Adam's
  ``b2 = 0.999`` arrives as 1.0 (a division by zero in the bias correction),
  ``b1 = 0.9`` as 0.898, and in float16 ``eps = 1e-8`` as 0. The value as
  given is lost by then; the package raises rather than run other math.

  Raises:
    TypeError: naming ``hyperparam_dtype=jnp.float32``.
  """
  if not (isinstance(value, (jax.Array, np.ndarray, np.generic)) or is_traced(value)):
    return
  dtype = jnp.dtype(value.dtype)
  if dtype not in HALF_DTYPES:
    return
  shown = "" if is_traced(value) or np.shape(value) else f" ({np.asarray(value).item():g})"
  raise TypeError(
      f"{name} arrived as a {dtype} array{shown}, rounded: optax.inject_hyperparams "
      "keeps float hyperparameters in the params' dtype unless told otherwise, and "
      "half precision changes them (b2=0.999 becomes 1.0 in bfloat16, a division "
      "by zero in the bias correction; eps=1e-8 becomes 0 in float16). Pass "
      "hyperparam_dtype=jnp.float32: optax.inject_hyperparams(factory, "
      "hyperparam_dtype=jnp.float32)(...) (nlr.param_groups does this itself), or "
      f"give {name} as a Python number or a float32 array.")


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
  return f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def check_range(
    name: str,
    value: Any,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    allow_inf: bool = False,
    allow_schedule: bool = False,
    allow_none: bool = False,
) -> Optional[Number]:
  """Checks that ``value`` is a real scalar in the given interval.

  Args:
    name: the argument's name, used in messages.
    value: the value (see `concrete_number` for what is accepted).
    low: lower bound.
    high: upper bound.
    low_open: exclude ``low`` itself.
    high_open: exclude ``high`` itself.
    allow_inf: accept ``+inf`` (e.g. ``max_lr=inf`` disables a clamp).
    allow_schedule: accept a schedule (a callable), left unchecked.
    allow_none: accept None, left unchecked.

  Returns:
    The value as a Python number, or None where it cannot be checked (traced,
    a schedule or an allowed None).

  Raises:
    TypeError: if ``value`` is not a number (see `concrete_number`), or
      a half-precision array (see `check_precision`).
    ValueError: if it is NaN, infinite (unless allowed), outside the interval,
      or an array that is not 0-d.
  """
  interval = _interval(low, high, low_open, high_open)
  what = f"a number in {interval}" + (" or a schedule" if allow_schedule else "")
  check_precision(name, value)
  number = concrete_number(
      name, value, what=what, allow_schedule=allow_schedule, allow_none=allow_none
  )
  if number is None:
    return None
  as_float = float(number)
  if math.isnan(as_float) or (math.isinf(as_float) and not allow_inf):
    raise ValueError(f"{name} must be a finite number in {interval}, got {as_float}.")
  too_low = as_float <= low if low_open else as_float < low
  too_high = as_float >= high if high_open else as_float > high
  if too_low or too_high:
    raise ValueError(f"{name} must lie in {interval}, got {as_float:g}.")
  return number


@overload
def check_int(name: str, value: Any, *, low: int = 0,
              allow_none: Literal[False] = False) -> int: ...
@overload
def check_int(name: str, value: Any, *, low: int = 0, allow_none: bool) -> Optional[int]: ...
def check_int(
    name: str, value: Any, *, low: int = 0, allow_none: bool = False
) -> Optional[int]:
  """Checks that ``value`` is an integer ``>= low``.

  Python and NumPy ints, 0-d integer arrays and integral floats (``2.0``) are
  accepted; ``2.7``, NaN and infinities are not (they are never truncated).

  Args:
    name: the argument's name, used in messages.
    value: the value.
    low: the smallest value allowed.
    allow_none: accept None.

  Returns:
    The value as a Python int, or None for a traced value or an allowed None.

  Raises:
    TypeError: if ``value`` is not a number.
    ValueError: if it is not integral, is below ``low``, or is an array that
      is not 0-d.
  """
  what = f"an int >= {low}"
  number = concrete_number(name, value, what=what, allow_none=allow_none)
  if number is None:
    return None
  if not math.isfinite(number) or int(number) != number or number < low:
    raise ValueError(f"{name} must be {what}, got {value!r}.")
  return int(number)


def check_rate(name: str, value: Any, *, allow_schedule: bool = True) -> Optional[Number]:
  """A learning rate: a finite number ``>= 0``, or (by default) a schedule."""
  return check_range(name, value, low=0.0, allow_schedule=allow_schedule)


def check_beta(name: str, value: Any, *, allow_none: bool = False) -> Optional[Number]:
  """An EMA decay in ``[0, 1)`` (``allow_none``: None, a traced value in a
  rule's ``check_hyperparams``, is left unchecked)."""
  return check_range(name, value, low=0.0, high=1.0, high_open=True,
                     allow_none=allow_none)


def check_clamps(min_lr: Any, max_lr: Any) -> None:
  """``0 <= min_lr <= max_lr``, ``max_lr`` may be ``inf``; both scalars."""
  lo = check_range("min_lr", min_lr, low=0.0)
  hi = check_range("max_lr", max_lr, low=0.0, allow_inf=True)
  if lo is not None and hi is not None and lo > hi:
    raise ValueError(
        f"min_lr must not exceed max_lr, got min_lr={lo:g} > max_lr={hi:g}."
    )


def check_flag(name: str, value: Any) -> bool:
  """A boolean option: only ``True`` / ``False`` (Python or NumPy bools).

  Strings (``"False"`` is truthy), numbers and arrays are rejected, so that a
  flag is never read the wrong way round.

  Returns:
    The value as a Python bool.

  Raises:
    TypeError: for anything but a bool.
  """
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  raise TypeError(f"{name} must be True or False (a bool), got {_describe(value)}.")


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
  """A string option that must be one of ``choices``.

  Raises:
    ValueError: naming the allowed values (also for non-strings and None).
  """
  choices = tuple(choices)
  if not isinstance(value, str) or value not in choices:
    allowed = " or ".join(repr(c) for c in choices)
    raise ValueError(f"{name} must be {allowed}, got {value!r}.")
  return value


def check_dtype(name: str, dtype: Any) -> Optional[jnp.dtype]:
  """A dtype for statistics (``state_dtype``): a float dtype or None.

  Allowed: float16, bfloat16, float32 and float64 (float64 becomes float32
  without ``jax_enable_x64``, as everywhere in JAX), given as a NumPy/JAX dtype,
  a scalar type (``jnp.float32``) or a name (``"bfloat16"``); None keeps the
  default.

  Returns:
    The ``jnp.dtype``, or None.

  Raises:
    TypeError: if ``dtype`` is not a dtype at all.
    ValueError: for integer, bool, complex and other dtypes.
  """
  if dtype is None:
    return None
  allowed = ", ".join(str(d) for d in STATE_DTYPES)
  # A value (np.float32(1), jnp.array(...)) has a dtype but is not one.
  is_value = isinstance(dtype, (bool, int, float, complex, np.generic, np.ndarray, jax.Array))
  if isinstance(dtype, jax.Array) or is_traced(dtype):
    raise TypeError(
        f"{name} must be a dtype ({allowed}) or None, got the array "
        f"{_describe(dtype)}: under optax.inject_hyperparams a dtype class such as "
        "jnp.bfloat16 is a callable and is called with the step count, as a "
        f"schedule. Pass its name, {name}='bfloat16', or list it in static_args: "
        f"optax.inject_hyperparams(factory, static_args=({name!r},)).")
  if is_value or callable(dtype) and not isinstance(dtype, type):
    raise TypeError(f"{name} must be a dtype ({allowed}) or None, got {_describe(dtype)}.")
  try:
    canonical = jnp.dtype(dtype)
  except TypeError as e:
    raise TypeError(
        f"{name} must be a dtype ({allowed}) or None, got {_describe(dtype)}."
    ) from e
  if canonical not in STATE_DTYPES:
    raise ValueError(f"{name} must be one of {allowed} (or None), got {canonical}.")
  return canonical


def _static_hint(name: str, example: str) -> str:
  return (f"Under optax.inject_hyperparams every number becomes an array and every "
          f"callable is called with the step count, as a schedule: list {name!r} in "
          f"static_args, e.g. optax.inject_hyperparams({example}, "
          f"static_args=({name!r},)).")


def check_static(name: str, value: Any, *, example: str = "nlr.adam_mini") -> None:
  """A static argument (a Python value, a tree of them, or a callable) holds
  no JAX array: one there is a number or a schedule's output that
  ``optax.inject_hyperparams`` made a hyperparameter.

  Raises:
    TypeError: naming the argument and ``static_args``.
  """
  for leaf in jax.tree.leaves(value):
    if isinstance(leaf, jax.Array) or is_traced(leaf):
      raise TypeError(
          f"{name} is static (Python values or a callable of the params), got the "
          f"array {_describe(leaf)}. {_static_hint(name, example)}")


def check_params_tree(who: str, params: Any) -> None:
  """``params`` of a function that reads a parameter tree is not a step count.

  ``optax.inject_hyperparams`` calls every callable argument with the step
  count; a function of the params (``nlr.adam_mini_blocks``, a mask) then
  reads a 0-d integer as the whole model and answers for it, silently.

  Raises:
    TypeError: naming ``static_args``.
  """
  if isinstance(params, (bool, np.bool_)):
    count = False
  elif isinstance(params, (int, np.integer)):
    count = True
  elif isinstance(params, (jax.Array, np.ndarray)) or is_traced(params):
    count = (np.shape(params) == ()
             and jnp.issubdtype(jnp.dtype(params.dtype), jnp.integer))
  else:
    count = False
  if count:
    raise TypeError(
        f"{who} reads a parameter tree, got {_describe(params)}, a step count: "
        "optax.inject_hyperparams called it as a schedule. List the argument that "
        "holds it (blocks, mask, hidden, granularity, ...) in static_args, e.g. "
        "optax.inject_hyperparams(nlr.adam_mini, static_args=('blocks',)).")


def check_mask(name: str, mask: Any, *, example: str = "nlr.adam_mini") -> None:
  """A weight-decay mask: None, a callable ``params -> tree of bools``, or a
  tree of Python/NumPy bools (not a bare bool, not strings or arrays).

  Raises:
    TypeError: naming the argument and what it allows.
  """
  check_static(name, mask, example=example)
  if mask is None or callable(mask):
    return
  allowed = (f"{name} must be None, a tree of bools shaped like the params, or a "
             "callable params -> such a tree")
  if isinstance(mask, (bool, np.bool_)):
    raise TypeError(
        f"{allowed}; got the bare bool {mask!r}. For no weight decay use "
        f"weight_decay=0.0. {_static_hint(name, example)}")
  for leaf in jax.tree.leaves(mask):
    if not isinstance(leaf, (bool, np.bool_)):
      raise TypeError(f"{allowed}; got {_describe(leaf)} as a leaf.")
