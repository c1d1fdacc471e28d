"""Every public optimizer and transform of optax_neuronlr, with ready arguments.

The contract suite (``test_contract.py``), the fuzzer (``test_fuzz.py``) and the
resume test (``test_resume.py``) run over :data:`ENTRIES`. A transform added to
the library joins all of them with ONE :class:`Entry` line here::

    Entry("name", factory, dict(ready kwargs), <flags>),

``factory`` must take explicit, named keyword arguments (so that
``optax.inject_hyperparams(factory)`` can bind them); ``entry.make(**overrides)``
builds the transform from ``kwargs`` updated with ``overrides``. The flags say
what the contracts may expect of the entry:

* ``state_dtype``: the factory takes ``state_dtype``;
* ``needs_value``: ``update`` needs ``value=loss`` (``reduce_lr_on_plateau``);
* ``per_unit``: :func:`optax_neuronlr.learning_rates` reads per-unit rates
  from its state, clamped to the factory's ``min_lr`` / ``max_lr``;
* ``rate_arg``: the kwarg holding the base rate that the library validates
  (``>= 0``);
* ``granularities``: the values its ``granularity`` kwarg accepts (fuzzed);
* ``linear``: the update is linear in the gradient (no statistic of the
  gradient drives the rate): ``optax.MultiSteps`` in bfloat16 must then give
  the large-batch step up to bfloat16 rounding; for the others a different
  rounding of the accumulated mean moves the rates, so that case only runs;
* ``quadratic`` / ``rosenbrock``: ``(steps, overrides)``: the honest settings
  with which the entry reaches the minimum in float32;
* ``static_args``: arguments that ``optax.inject_hyperparams`` must keep
  static (callables that are not schedules);
* ``xfail``: ``{contract or "contract:case glob": reason}`` for contracts
  the entry is known to break because of a library bug (reported;
  ``xfail(strict=True)``, so that a fix shows up as an XPASS failure and the
  line is removed). Contract names: ``converges_quadratic``,
  ``converges_rosenbrock``, ``extra_args``, ``inject_hyperparams``,
  ``schedule``, ``map_params``, ``dtypes``, ``state_dtype`` and ``rates``
  (cases ``"<param dtype>-state_<state dtype>"``), ``sharding`` (cases
  ``"auto"``, ``"explicit"``), ``eval_shape_init``, ``multi_steps`` (cases
  ``"float32"``, ``"bfloat16"``), ``apply_if_finite``, ``masked``,
  ``partition``, ``donation``, ``count_overflow`` (test_contract.py);
  ``resume`` (test_resume.py); ``fuzz_valid``, ``rejects_out_of_range_axis``,
  ``rejects_non_int_axis``, ``rejects_unknown_granularity``,
  ``rejects_negative_rate``, ``rejects_min_above_max`` (test_fuzz.py);
* ``skip``: ``{contract or "contract:case glob": reason}`` for contracts
  whose assumption does not hold for the entry for a documented reason (not a
  bug); the case is skipped with that reason;
* ``fuzz_avoid``: known findings, each pinned by its own strict-xfail
  reproduction in ``test_fuzz.py``, that the fuzzer steers around for this
  entry so that it keeps looking for new ones: ``"float16_adam"`` (no float16
  leaves: optax's Adam in float16 gives NaN/inf for small gradients).

The module also holds a user's rule (:class:`InverseRMS`, written against the
public :class:`optax_neuronlr.Rule` API as a user would), the two float32
targets of the convergence contract and the deterministic gradient stream
shared by the contract and resume tests.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Callable, Mapping
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

import optax_neuronlr as nlr

LEAF_GRANULARITIES = ("element", "neuron", "tensor")
ALL_GRANULARITIES = ("global",) + LEAF_GRANULARITIES


def _lookup(table: Mapping[str, str], contract: str, case: str) -> Optional[str]:
  full = f"{contract}:{case}" if case else contract
  for key, reason in table.items():
    if key == contract or fnmatch.fnmatchcase(full, key):
      return reason
  return None


@dataclasses.dataclass(frozen=True)
class Entry:
  """One optimizer or transform under test (see the module docstring)."""

  name: str
  factory: Callable[..., optax.GradientTransformation]
  kwargs: Mapping[str, Any]
  state_dtype: bool = False
  needs_value: bool = False
  per_unit: bool = False
  granularities: tuple[str, ...] = ()
  rate_arg: str = "learning_rate"
  linear: bool = False
  quadratic: tuple[int, Mapping[str, Any]] = (2_000, {})
  rosenbrock: tuple[int, Mapping[str, Any]] = (20_000, {})
  static_args: tuple[str, ...] = ()
  fuzz_avoid: tuple[str, ...] = ()
  xfail: Mapping[str, str] = dataclasses.field(default_factory=dict)
  skip: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def xfail_reason(self, contract: str, case: str = "") -> Optional[str]:
    """The reason of a known failure of ``contract`` (on ``case``), or None.

    Keys of ``xfail`` are a contract name (every case) or a glob on
    ``"contract:case"``, e.g. ``"state_dtype:*-state_bfloat16"``.
    """
    return _lookup(self.xfail, contract, case)

  def skip_reason(self, contract: str, case: str = "") -> Optional[str]:
    """The documented reason why ``contract`` (on ``case``) does not apply, or None."""
    return _lookup(self.skip, contract, case)

  def make(self, **overrides: Any) -> optax.GradientTransformation:
    """The transform built from the ready kwargs updated with ``overrides``.

    Returned as the factory built it (not wrapped in
    ``optax.with_extra_args_support``: ignoring extra args is a contract).
    """
    return self.factory(**{**self.kwargs, **overrides})

  def extra(self, loss: Any) -> dict[str, Any]:
    """Keyword arguments every ``update`` call of this entry needs."""
    return {"value": loss} if self.needs_value else {}

  def __repr__(self) -> str:  # short pytest ids and messages
    return self.name


# ---------------------------------------------------------------------------
# Factories of the composite entries, with explicit named keyword arguments.


def _scale_by_then_sgd(scale_by: Callable[..., Any]) -> Callable[..., Any]:
  """``chain(scale_by_<rule>(multiplier, ...), optax.scale(-learning_rate))``.

  The rule's clamped per-unit rate is a multiplier in ``[min_lr, max_lr]`` of
  a global step ``learning_rate``; ``multiplier`` may be a schedule.
  """

  def factory(
      learning_rate: float,
      multiplier: optax.ScalarOrSchedule = 1.0,
      min_lr: float = 1e-6,
      max_lr: float = 1.0,
      granularity: str = "element",
      neuron_axes: Any = None,
      state_dtype: Any = None,
  ) -> optax.GradientTransformation:
    return optax.chain(
        scale_by(multiplier, min_lr=min_lr, max_lr=max_lr, granularity=granularity,
                 neuron_axes=neuron_axes, state_dtype=state_dtype),
        optax.scale(-learning_rate),
    )

  factory.__name__ = f"{scale_by.__name__}_then_sgd"
  return factory


def scale_by_hd_then_sgd(
    learning_rate: float,
    hyper_lr: float,
    multiplier: optax.ScalarOrSchedule = 1.0,
    min_lr: float = 0.0,
    max_lr: float = math.inf,
    granularity: Any = "global",
    neuron_axes: Any = None,
    state_dtype: Any = None,
) -> optax.GradientTransformation:
  """``chain(scale_by_hypergradient_lr(multiplier, hyper_lr, ...), optax.scale(-learning_rate))``.

  The transform itself, direction None: the learned rate is a multiplier of
  the global step ``learning_rate`` (as for :func:`_scale_by_then_sgd`).
  """
  return optax.chain(
      nlr.scale_by_hypergradient_lr(
          multiplier, hyper_lr, min_lr, max_lr, granularity=granularity,
          neuron_axes=neuron_axes, state_dtype=state_dtype, direction=None),
      optax.scale(-learning_rate),
  )


@dataclasses.dataclass(frozen=True)
class InverseRMS(nlr.Rule):
  """A user's rule, on the public engine only: a rate inversely proportional to
  an EMA of each unit's mean squared gradient (RMSProp's scaling, per unit)::

      ms_t = beta * ms_{t-1} + (1 - beta) * mean_unit(g_t ** 2)
      rate_t = learning_rate / (sqrt(ms_t) + eps)
  """

  unit_stats = ("ms",)
  hyperparams = ("beta", "eps")

  def observe(self, g, d, elements, hp):
    return (g * g,)

  def update(self, stats, observed, hp, prev_hp, count):
    b = hp["beta"]
    return {"ms": b * stats["ms"] + (1 - b) * observed[0]}

  def rate(self, stats, hp, count):
    return hp["learning_rate"] / (jnp.sqrt(stats["ms"]) + hp["eps"])


def inverse_rms_lr(
    learning_rate: optax.ScalarOrSchedule,
    beta: float = 0.9,
    eps: float = 1e-8,
    min_lr: float = 0.0,
    max_lr: float = 1.0,
    granularity: Any = "neuron",
    neuron_axes: Any = None,
    state_dtype: Any = None,
) -> optax.GradientTransformation:
  """A user's optimizer: ``nlr.scale_by_rule(InverseRMS(), ...)``, negated."""
  return optax.chain(
      nlr.scale_by_rule(
          InverseRMS(), learning_rate, {"beta": beta, "eps": eps}, min_lr=min_lr,
          max_lr=max_lr, granularity=granularity, neuron_axes=neuron_axes,
          state_dtype=state_dtype),
      optax.scale(-1.0),
  )


def trace_hd(
    learning_rate: optax.ScalarOrSchedule,
    hyper_lr: float,
    decay: float = 0.9,
    granularity: str = "global",
    neuron_axes: Any = None,
    min_lr: float = 0.0,
    max_lr: float = 1.0,
    state_dtype: Any = None,
) -> optax.GradientTransformation:
  """``hypergradient_lr`` over heavy-ball momentum ``optax.trace(decay)``."""
  return nlr.hypergradient_lr(
      learning_rate, hyper_lr, direction=optax.trace(decay), granularity=granularity,
      neuron_axes=neuron_axes, min_lr=min_lr, max_lr=max_lr, state_dtype=state_dtype)


def nero_rule(
    learning_rate: optax.ScalarOrSchedule,
    beta: float = 0.999,
    min_lr: float = 0.0,
    max_lr: float = 1.0,
    granularity: Any = "neuron",
    neuron_axes: Any = None,
    state_dtype: Any = None,
) -> optax.GradientTransformation:
  """The :class:`nlr.Nero` rule on the engine at any leaf granularity, with
  clamps, then Nero's projection (what ``nlr.nero`` is at ``"neuron"``)."""
  return optax.chain(
      nlr.scale_by_rule(nlr.Nero(), learning_rate, {"beta": beta}, min_lr=min_lr,
                        max_lr=max_lr, granularity=granularity,
                        neuron_axes=neuron_axes, state_dtype=state_dtype),
      optax.scale(-1.0),
      nlr.project_neurons(neuron_axes=neuron_axes if granularity == "neuron" else None))


def trust_ratio_sgd(
    learning_rate: optax.ScalarOrSchedule,
    trust_coefficient: float = 1.0,
    min_lr: float = 0.0,
    max_lr: float = 1.0,
    granularity: Any = "tensor",
    neuron_axes: Any = None,
    state_dtype: Any = None,
) -> optax.GradientTransformation:
  """``nlr.scale_by_trust_ratio`` (LARS without momentum) at any granularity."""
  return optax.chain(
      nlr.scale_by_trust_ratio(learning_rate, trust_coefficient, min_lr=min_lr,
                               max_lr=max_lr, granularity=granularity,
                               neuron_axes=neuron_axes, state_dtype=state_dtype),
      optax.scale(-1.0))


def _first_group(path: str, leaf: Any) -> bool:
  """Group ``a``: the first layer of each tree the suites use: ``w``
  (quadratic), ``x`` (Rosenbrock), ``l1`` and ``layers_0`` (test_flax's NNX
  and linen MLPs)."""
  del leaf
  return path.split("/")[0] in ("w", "x", "l1", "layers_0")


def groups_nlr(
    learning_rate: optax.ScalarOrSchedule,
    slow_learning_rate: float,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    granularity: str = "element",
    neuron_axes: Any = None,
    state_dtype: Any = None,
) -> optax.GradientTransformation:
  """Two param groups of ``grad_history_lr`` (bias-corrected), group ``b``
  taking every leaf that group ``a`` does not; ``allow_empty=True``, as the
  fuzzer's random trees need (``groups_sgd`` keeps the default)."""
  return nlr.param_groups(
      nlr.grad_history_lr,
      [{"params": _first_group, "name": "a", "learning_rate": slow_learning_rate},
       {"params": lambda path, leaf: False, "name": "b"}],
      rest="b", allow_empty=True, learning_rate=learning_rate, min_lr=min_lr, max_lr=max_lr,
      bias_correction=True, granularity=granularity, neuron_axes=neuron_axes,
      state_dtype=state_dtype)


def groups_sgd(learning_rate: float, momentum: float = 0.9) -> optax.GradientTransformation:
  """Two param groups of ``optax.sgd``: group ``a`` at half the rate, no
  momentum (``allow_empty`` left at its default, False)."""
  return nlr.param_groups(
      optax.sgd,
      [{"params": _first_group, "name": "a", "lr": learning_rate / 2, "momentum": None},
       {"params": lambda path, leaf: False, "name": "b"}],
      rest="b", learning_rate=learning_rate, momentum=momentum)


def _halving_multipliers(params: Any) -> Any:
  return nlr.layerwise_multipliers(params, 0.5)


def adam_scale_by_leaf(
    learning_rate: optax.ScalarOrSchedule, multipliers: Any = _halving_multipliers
) -> optax.GradientTransformation:
  """``chain(optax.adam(learning_rate), nlr.scale_by_leaf(multipliers))``."""
  return optax.chain(optax.adam(learning_rate), nlr.scale_by_leaf(multipliers))


# ---------------------------------------------------------------------------
# The registry.

_ADAM = ("float16_adam",)  # optax.scale_by_adam in float16: eps=1e-8 underflows

# Known library bugs: none at present (strict xfails go here, with a reason).
_GROUPS_SUBTREE = (
    "the reference run on the sub-tree {'w'} alone leaves group 'b' (which "
    "takes the rest) without a leaf, which param_groups rejects by design "
    "(allow_empty=False); under optax.masked / optax.partition itself the "
    "masked-out leaf still counts for its group")
_GROUPS_SKIP = {"masked": _GROUPS_SUBTREE, "partition": _GROUPS_SUBTREE, "empty_params": (
    "param_groups raises for a group that claims no leaf (documented: "
    "allow_empty=False catches typos), and a tree without arrays leaves every "
    "group empty")}
_R = 30_000  # Rosenbrock steps (a fori_loop: ~10 ms of CPU)
_R_EMA = (_R, dict(learning_rate=1e-3, max_lr=1.0))  # the library's default max_lr
_R_SGD_LIKE = (_R, dict(learning_rate=1e-4, max_lr=1.5e-3))  # max_lr < 2/lambda_max
def _matrices_hidden(params):
  """Muon's leaves in the contract trees: every 2-D leaf (their names are not
  Flax's, so the model layout would find no hidden matrix)."""
  return jax.tree.map(lambda x: jnp.ndim(x) == 2, params)


_NERO_SKIP = ("Nero keeps every matrix's neurons zero-mean and unit-norm: the "
              "quadratic's optimum 'w' is not on that set (nero_unconstrained "
              "runs the contract)")
_NERO_DONATION = (
    "the contract compares jit and eager updates to 1e-7 absolute; Nero's update "
    "is a difference of unit-norm neurons, P(w + u) - w, whose float32 rounding "
    "is ~1e-7 (the buffer reuse is checked in test_nero.py)")
_Q_MUON = (2_000, dict(learning_rate=optax.cosine_decay_schedule(0.1, 2_000),
                       weight_decay=0.0, adam_learning_rate=0.05))

ENTRIES: tuple[Entry, ...] = (
    # The three strategies of reference 000 (aliases), at every granularity.
    Entry("magnitude_element", nlr.grad_magnitude_lr, dict(learning_rate=0.05, max_lr=0.5), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=_R_SGD_LIKE),
    Entry("magnitude_neuron", nlr.grad_magnitude_lr, dict(learning_rate=0.05, max_lr=0.5, granularity="neuron"), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=_R_SGD_LIKE),
    Entry("magnitude_tensor", nlr.grad_magnitude_lr, dict(learning_rate=0.05, max_lr=0.5, granularity="tensor"), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=_R_SGD_LIKE),
    Entry("history_element", nlr.grad_history_lr, dict(learning_rate=0.05, max_lr=0.5), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=_R_EMA),
    Entry("history_neuron", nlr.grad_history_lr, dict(learning_rate=0.05, max_lr=0.5, granularity="neuron"), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=_R_EMA),
    Entry("history_tensor", nlr.grad_history_lr, dict(learning_rate=0.05, max_lr=0.5, granularity="tensor"), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=_R_EMA),
    Entry("sign_element", nlr.sign_consistency_lr, dict(learning_rate=0.05, max_lr=0.5), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=_R_EMA),
    Entry("sign_neuron", nlr.sign_consistency_lr, dict(learning_rate=0.05, max_lr=0.5, granularity="neuron"), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=_R_EMA),
    Entry("sign_tensor", nlr.sign_consistency_lr, dict(learning_rate=0.05, max_lr=0.5, granularity="tensor"), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=_R_EMA),
    Entry("sign_global", nlr.sign_consistency_lr, dict(learning_rate=0.05, max_lr=0.5, granularity="global"), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=_R_EMA),
    Entry("history_blocks", nlr.grad_history_lr, dict(learning_rate=0.05, max_lr=0.5, granularity=nlr.Blocks(-1, 2)), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=_R_EMA),
    # Options: an optax direction, bias correction.
    Entry("sign_neuron_adam", nlr.sign_consistency_lr, dict(learning_rate=0.05, max_lr=0.5, granularity="neuron", direction=optax.scale_by_adam()), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=(_R, dict(learning_rate=1e-3, max_lr=0.1)), fuzz_avoid=_ADAM),
    Entry("history_bias_correction", nlr.grad_history_lr, dict(learning_rate=0.05, max_lr=0.5, bias_correction=True), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=_R_EMA),
    Entry("sign_bias_correction", nlr.sign_consistency_lr, dict(learning_rate=0.05, max_lr=0.5, bias_correction=True, granularity="neuron"), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=_R_EMA),
    # The scale_by_* transforms, chained with optax.scale(-lr); rates are multipliers.
    Entry("scale_by_magnitude", _scale_by_then_sgd(nlr.scale_by_grad_magnitude_lr), dict(learning_rate=0.05, max_lr=5.0), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=(_R, dict(learning_rate=1e-3, max_lr=1.5)), rate_arg="multiplier"),
    Entry("scale_by_history", _scale_by_then_sgd(nlr.scale_by_grad_history_lr), dict(learning_rate=0.05, max_lr=5.0, multiplier=optax.linear_schedule(0.5, 1.0, 50)), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=(_R, dict(learning_rate=1e-3, max_lr=1.5)), rate_arg="multiplier"),
    Entry("scale_by_sign", _scale_by_then_sgd(nlr.scale_by_sign_consistency_lr), dict(learning_rate=0.05, max_lr=5.0, granularity="neuron"), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=(_R, dict(learning_rate=1e-3, max_lr=1.5)), rate_arg="multiplier"),
    # Hypergradient descent (SGD-HD needs max_lr below SGD's stability limit on Rosenbrock).
    Entry("sgd_hd_global", nlr.sgd_hd, dict(learning_rate=0.05, hyper_lr=1e-3, max_lr=0.5), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=(_R, dict(learning_rate=1e-3, hyper_lr=1e-4, max_lr=1.5e-3))),
    Entry("sgd_hd_neuron", nlr.sgd_hd, dict(learning_rate=0.05, hyper_lr=1e-3, max_lr=0.5, granularity="neuron"), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=(_R, dict(learning_rate=1e-3, hyper_lr=1e-4, max_lr=1.5e-3))),
    Entry("adam_hd_global", nlr.adam_hd, dict(learning_rate=0.05, hyper_lr=1e-4), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=(_R, dict(learning_rate=1e-3, hyper_lr=1e-7)), fuzz_avoid=_ADAM),
    Entry("adam_hd_neuron", nlr.adam_hd, dict(learning_rate=0.05, hyper_lr=1e-4, granularity="neuron"), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=(_R, dict(learning_rate=1e-3, hyper_lr=1e-7)), fuzz_avoid=_ADAM),
    Entry("scale_by_hd", scale_by_hd_then_sgd, dict(learning_rate=0.05, hyper_lr=1e-3, max_lr=10.0), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=(_R, dict(learning_rate=1e-3, hyper_lr=1e-4, max_lr=1.5)), rate_arg="multiplier"),
    Entry("trace_hd", trace_hd, dict(learning_rate=0.05, hyper_lr=1e-4, max_lr=0.5), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=(_R, dict(learning_rate=1e-4, hyper_lr=1e-5, max_lr=1e-3))),
    # A user's rule on the public engine (nlr.Rule + nlr.scale_by_rule).
    Entry("user_inverse_rms", inverse_rms_lr, dict(learning_rate=0.05, max_lr=0.5), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=_R_EMA),
    # Param groups, a layer-wise multiplier, the plateau rate.
    Entry("param_groups_nlr", groups_nlr, dict(learning_rate=0.05, slow_learning_rate=0.025, max_lr=0.5), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, rosenbrock=(_R, dict(learning_rate=1e-3, slow_learning_rate=5e-4, max_lr=1.0))),
    Entry("adam_mini", nlr.adam_mini, dict(learning_rate=0.05, weight_decay=0.01, on_unrecognised="ignore"), state_dtype=True, rosenbrock=(_R, dict(learning_rate=1e-3)), fuzz_avoid=_ADAM),
    Entry("adam_mini_neuron", nlr.adam_mini, dict(learning_rate=0.05, blocks="neuron"), state_dtype=True, rosenbrock=(_R, dict(learning_rate=1e-3)), fuzz_avoid=_ADAM),
    Entry("scale_sgd", nlr.scale_sgd, dict(learning_rate=0.05, head=False), state_dtype=True, rosenbrock=(_R, dict(learning_rate=1e-3))),
    # Muon's steps have a fixed spectral size: on the quadratic its rate must decay
    # (optax.contrib.muon does the same, to 1e-13, with this schedule).
    Entry("muon", nlr.muon, dict(learning_rate=0.05, weight_decay=0.01, adam_learning_rate=0.01, hidden=_matrices_hidden), static_args=("hidden",), quadratic=_Q_MUON, rosenbrock=(_R, dict(learning_rate=1e-3)), fuzz_avoid=_ADAM),
    Entry("normuon", nlr.normuon, dict(learning_rate=0.05, weight_decay=0.01, adam_learning_rate=0.01, hidden=_matrices_hidden), static_args=("hidden",), state_dtype=True, quadratic=_Q_MUON, rosenbrock=(_R, dict(learning_rate=1e-3)), fuzz_avoid=_ADAM),
    Entry("neuron_norm_sgd", nlr.neuron_norm_sgd, dict(learning_rate=0.05), state_dtype=True, granularities=ALL_GRANULARITIES, rosenbrock=(_R, dict(learning_rate=optax.exponential_decay(1e-2, 2000, 0.5)))),
    # Rules that see the weights: Nero (its constraint set holds no optimum of the
    # quadratic; Rosenbrock's vectors are unconstrained), per-neuron LARS and LAMB.
    Entry("nero", nlr.nero, dict(learning_rate=0.01), state_dtype=True, skip={"converges_quadratic": _NERO_SKIP, "donation": _NERO_DONATION}, rosenbrock=(_R, dict(learning_rate=optax.exponential_decay(1e-2, 5_000, 0.5)))),
    Entry("nero_unconstrained", nlr.nero, dict(learning_rate=0.01, constraints=False), state_dtype=True, quadratic=(2_000, dict(learning_rate=optax.exponential_decay(0.05, 500, 0.5))), rosenbrock=(_R, dict(learning_rate=optax.exponential_decay(1e-2, 5_000, 0.5)))),
    Entry("lars_neuron", nlr.lars, dict(learning_rate=0.05, weight_decay=1e-4, trust_coefficient=0.1), state_dtype=True, granularities=ALL_GRANULARITIES, quadratic=(2_000, dict(learning_rate=optax.cosine_decay_schedule(0.05, 2_000), weight_decay=0.0)), rosenbrock=(_R, dict(learning_rate=optax.cosine_decay_schedule(1e-3, _R), trust_coefficient=1.0, momentum=0.5, weight_decay=0.0))),
    Entry("lars_tensor", nlr.lars, dict(learning_rate=0.05, trust_coefficient=0.1, granularity="tensor"), state_dtype=True, granularities=ALL_GRANULARITIES, quadratic=(2_000, dict(learning_rate=optax.cosine_decay_schedule(0.05, 2_000))), rosenbrock=(_R, dict(learning_rate=optax.cosine_decay_schedule(1e-3, _R), trust_coefficient=1.0, momentum=0.5))),
    Entry("lamb_neuron", nlr.lamb, dict(learning_rate=0.05, weight_decay=1e-4), state_dtype=True, granularities=ALL_GRANULARITIES, quadratic=(2_000, dict(learning_rate=optax.cosine_decay_schedule(0.05, 2_000), weight_decay=0.0)), rosenbrock=(_R, dict(learning_rate=1e-3, weight_decay=0.0)), fuzz_avoid=_ADAM),
    Entry("lamb_tensor", nlr.lamb, dict(learning_rate=0.05, granularity="tensor"), state_dtype=True, granularities=ALL_GRANULARITIES, quadratic=(2_000, dict(learning_rate=optax.cosine_decay_schedule(0.05, 2_000))), rosenbrock=(_R, dict(learning_rate=1e-3)), fuzz_avoid=_ADAM),
    Entry("nero_rule", nero_rule, dict(learning_rate=0.01), state_dtype=True, per_unit=True, granularities=LEAF_GRANULARITIES, skip={"converges_quadratic": _NERO_SKIP, "donation": _NERO_DONATION}, rosenbrock=(_R, dict(learning_rate=optax.exponential_decay(1e-2, 5_000, 0.5)))),
    Entry("trust_ratio_sgd", trust_ratio_sgd, dict(learning_rate=0.05, granularity="neuron"), state_dtype=True, per_unit=True, granularities=ALL_GRANULARITIES, quadratic=(2_000, dict(learning_rate=optax.cosine_decay_schedule(0.05, 2_000), granularity="tensor")), rosenbrock=(_R, dict(learning_rate=optax.cosine_decay_schedule(2e-3, _R), granularity="tensor"))),
    Entry("param_groups_sgd", groups_sgd, dict(learning_rate=0.05), linear=True, rosenbrock=(_R, dict(learning_rate=1e-3)), skip=_GROUPS_SKIP),
    Entry("adam_scale_by_leaf", adam_scale_by_leaf, dict(learning_rate=0.05), static_args=("multipliers",), rosenbrock=(_R, dict(learning_rate=1e-3)), fuzz_avoid=_ADAM),
    Entry("reduce_lr_on_plateau", nlr.reduce_lr_on_plateau, dict(learning_rate=0.05, patience=5), needs_value=True, linear=True, rosenbrock=(_R, dict(learning_rate=1e-3))),
)

BY_NAME = {e.name: e for e in ENTRIES}
PER_UNIT = tuple(e for e in ENTRIES if e.per_unit)


# ---------------------------------------------------------------------------
# Targets (float32 by default) and a deterministic gradient stream.


@dataclasses.dataclass(frozen=True)
class Target:
  name: str
  init: Callable[[Any], Any]
  optimum: Callable[[Any], Any]
  loss: Callable[[Any], jax.Array]


def _quadratic_init(dtype=jnp.float32):
  return {"w": jnp.asarray([[-1.0, 10.0], [1.0, 3.0], [0.0, -2.0]], dtype),
          "b": jnp.asarray([4.0, -3.0], dtype)}


def _quadratic_optimum(dtype=jnp.float32):
  return {"w": jnp.asarray([[1.0, -1.0], [1.0, 2.0], [0.5, -1.0]], dtype),
          "b": jnp.asarray([-1.0, 1.0], dtype)}


def _quadratic_loss(params):
  opt = _quadratic_optimum(jax.tree.leaves(params)[0].dtype)
  return sum(jnp.sum(jnp.square(p - o)) for p, o in
             zip(jax.tree.leaves(params), jax.tree.leaves(opt)))


def _rosenbrock_init(dtype=jnp.float32):
  return {"x": jnp.asarray([0.0, -1.2], dtype), "y": jnp.asarray([0.0, 1.0], dtype)}


def _rosenbrock_optimum(dtype=jnp.float32):
  return {"x": jnp.ones(2, dtype), "y": jnp.ones(2, dtype)}


def _rosenbrock_loss(params):
  x, y = params["x"], params["y"]
  return jnp.sum(jnp.square(1 - x) + 100 * jnp.square(y - jnp.square(x)))


QUADRATIC = Target("quadratic", _quadratic_init, _quadratic_optimum, _quadratic_loss)
ROSENBROCK = Target("rosenbrock", _rosenbrock_init, _rosenbrock_optimum, _rosenbrock_loss)
TARGETS = {t.name: t for t in (QUADRATIC, ROSENBROCK)}


def noisy_grad(params: Any, k: jax.Array) -> tuple[jax.Array, Any]:
  """``(loss, gradient)`` of the quadratic plus a step-dependent wobble that
  flips sign, so that every rule's statistics keep moving. Pure in
  ``(params, k)``: the resume test recomputes it in a fresh process."""
  loss, g = jax.value_and_grad(_quadratic_loss)(params)
  k = jnp.asarray(k, jnp.float32)
  def wobble(x):
    phase = jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape)
    return (0.5 * jnp.sin(1.3 * k + phase) * jnp.cos(0.7 * k)).astype(x.dtype)
  return loss, jax.tree.map(lambda x: x + wobble(x), g)


def train_step(entry: Entry, tx: optax.GradientTransformation):
  """``(params, state, k) -> (params, state, updates)`` on :func:`noisy_grad`."""

  def step(params, state, k):
    loss, g = noisy_grad(params, k)
    updates, state = tx.update(g, state, params, **entry.extra(loss))
    return optax.apply_updates(params, updates), state, updates

  return step
