"""The study's methods: one row per optimizer, built from a (possibly traced) peak rate.

:func:`builtin_methods` lists every built-in method in table order (NAdamW, the
target, first); :func:`load_user_method` turns ``--method-from module:function``
(``module:function=name``) into a method run through the same protocol. Adding an
optimizer is one :class:`Method` row (see the Nero and LAMB rows).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, Optional

import optax

import optax_neuronlr as nlr

from .protocol import learning_rate, schedule_shape
from .settings import (ADAM_HD_HYPER_LR, BASELINE, CONSISTENT_RMS, DIRECTION_CAP, LEARNED, MUON,
                       NERO_DEFAULT, RATIOS, RELATIVE, SEED000_RULES, USER, WEIGHT_DECAY,
                       RateSpec)
from .tasks import Problem


@dataclasses.dataclass(frozen=True)
class Rates:
  """What a method's ``build`` gets.

  ``peak``: the peak rate under test (a traced scalar inside the vmapped run);
  ``lr``: the learning rate, ``peak`` under the method's schedule (an optax
  schedule, or ``peak`` itself for ``constant``); ``ratio``: the method's second
  tuned number (traced; 1 unless the method tunes ``ratios``: the AdamW leaves'
  rate over the Muon rate); ``problem``: the task; ``steps``: its steps.
  """

  peak: Any
  lr: optax.ScalarOrSchedule
  ratio: Any
  problem: Problem
  schedule: str = "warmup_cosine"

  def scaled(self, factor: Any) -> optax.ScalarOrSchedule:
    """``factor x`` the learning rate, under the same schedule."""
    return learning_rate(self.peak * factor, self.schedule, self.problem.steps)


@dataclasses.dataclass(frozen=True)
class Method:
  """A row of :func:`builtin_methods`, or a user method (:func:`load_user_method`).

  ``build(rates)`` returns the optimizer (:class:`Rates`); ``rates`` names its
  grid (a ``RATE_RANGES`` kind or a ``(lowest, highest)`` pair); ``ratios``: a
  second number tuned jointly with the rate (every grid rate at every ratio);
  ``fixed``: an untuned rate (no grid: the method's own default, run from the
  seeds); ``requires`` lists the ``nlr`` names it needs (a method whose names are
  missing is reported as unavailable, not run). ``key`` names it in the JSON and
  the tables: its name, with `` (constant)`` for the constant schedule.
  """

  name: str
  family: str
  build: Callable[[Rates], optax.GradientTransformation]
  rates: RateSpec
  settings: str
  schedule: str = "warmup_cosine"
  clamps: bool = False  # whether its rates have clamps worth reporting
  requires: tuple[str, ...] = ()
  ratios: tuple[float, ...] = (1.0,)
  fixed: Optional[float] = None

  @property
  def key(self) -> str:
    """The method's name in the JSON and the tables."""
    return self.name if self.schedule == "warmup_cosine" else f"{self.name} ({self.schedule})"

  def missing(self) -> list[str]:
    """The names in ``requires`` that ``nlr`` lacks."""
    return [name for name in self.requires if not hasattr(nlr, name)]

  def available(self) -> bool:
    """Whether ``nlr`` has every name in ``requires``."""
    return not self.missing()

  def optimizer(self, peak: Any, ratio: Any,
                problem: Problem) -> optax.GradientTransformation:
    """The optimizer at ``peak`` (and ``ratio``) under the method's schedule."""
    lr = learning_rate(peak, self.schedule, problem.steps)
    return self.build(Rates(peak, lr, ratio, problem, self.schedule))


MUON_REQUIRES = ("scale_by_muon", "normuon_labels")  # nlr names of the "x muon" variants


def _decay_mask(params: Any) -> Any:
  """AdamW's decay mask, Adam-mini's (kernels and embeddings), looked up when used."""
  return nlr.adam_mini_weight_decay_mask(params)


def _adamw(lr: optax.ScalarOrSchedule, nesterov: bool = False
           ) -> optax.GradientTransformation:
  """The study's AdamW (NAdamW with ``nesterov``): weight decay on kernels and embeddings."""
  return optax.adamw(lr, weight_decay=WEIGHT_DECAY, mask=_decay_mask, nesterov=nesterov)


def muon_method(base: str, variant: str = "") -> Method:
  """``nlr.muon`` / ``nlr.normuon`` (``base``) with weight decay on both parts, the
  AdamW leaves at the Muon rate (the library's default), or a ``variant``:
  ``adam_ratio`` (their rate = ratio x the Muon rate, the ratio tuned from
  ``RATIOS`` jointly with the rate), ``adam_nesterov`` (NAdamW on them) or
  ``consistent_rms`` (Moonlight's scaling, one rate for both parts)."""
  extra = {"adam_nesterov": {"adam_nesterov": True},
           "consistent_rms": {"consistent_rms": CONSISTENT_RMS}}.get(variant, {})

  def build(r: Rates) -> optax.GradientTransformation:
    adam = {"adam_learning_rate": r.scaled(r.ratio)} if variant == "adam_ratio" else {}
    return getattr(nlr, base)(r.lr, weight_decay=WEIGHT_DECAY, adam_weight_decay=WEIGHT_DECAY,
                              **adam, **extra)

  settings = (f"nlr.{base} defaults, weight_decay={WEIGHT_DECAY:g} (both parts); AdamW "
              "leaves at the Muon rate (the default)")
  settings += {"adam_ratio": f"; AdamW leaves at ratio x the rate, ratio tuned from "
                             f"{', '.join(f'{x:g}' for x in RATIOS)}",
               "adam_nesterov": "; adam_nesterov=True (NAdamW leaves)",
               "consistent_rms": f"; consistent_rms={CONSISTENT_RMS:g}"}.get(variant, "")
  return Method(f"{base} {variant}".strip(), MUON, build,
                "adam" if variant == "consistent_rms" else "sgd", settings, requires=(base,),
                ratios=RATIOS if variant == "adam_ratio" else (1.0,))


def adam_hd(r: Rates) -> optax.GradientTransformation:
  """Adam-HD whose tuned number is its initial learned rate (the peak), the schedule
  multiplying the learned rate's steps (a warm-up from 0 would otherwise start the
  learned rate at 0 and every peak would give the same run)."""
  tx = nlr.adam_hd(r.peak, ADAM_HD_HYPER_LR)
  if r.schedule == "constant":
    return tx
  return optax.chain(tx, optax.scale_by_schedule(schedule_shape(r.problem.steps)))


def seed000_method(rule: str, granularity: str, variant: str,
                   schedule: str = "warmup_cosine") -> Method:
  """A reference-000 rule at one granularity, in one of ``VARIANTS``."""
  ema = rule != "grad_magnitude_lr"

  def build(r: Rates) -> optax.GradientTransformation:
    kwargs: dict[str, Any] = {"granularity": granularity}
    if variant == "ref":
      return getattr(nlr, rule)(r.lr, **kwargs)
    if ema:
      kwargs["bias_correction"] = True
    kwargs["max_lr"] = DIRECTION_CAP * r.peak
    if variant == "x adam":
      return getattr(nlr, rule)(r.lr, direction=optax.scale_by_adam(), **kwargs)
    hidden = getattr(nlr, rule)(r.lr, direction=nlr.scale_by_muon(), **kwargs)
    return optax.partition({"hidden": hidden, "adamw": _adamw(r.lr)}, nlr.normuon_labels)

  bc = ", bias_correction=True" if ema else ""
  settings = {
      "ref": "reference defaults (min_lr=1e-6, max_lr=1)",
      "x adam": f"direction=scale_by_adam(){bc}, max_lr={DIRECTION_CAP:g}x peak",
      "x muon": (f"hidden matrices: direction=nlr.scale_by_muon(){bc}, "
                 f"max_lr={DIRECTION_CAP:g}x peak; the rest: AdamW at the rate"),
  }[variant]
  kind = {"ref": "adam" if ema else "plain", "x adam": "low", "x muon": "muon_rule"}[variant]
  requires = (rule,) + (MUON_REQUIRES if variant == "x muon" else ())
  return Method(f"{rule}[{granularity}] {variant}", f"reference 000, {granularity}", build,
                kind, settings, schedule=schedule, clamps=True, requires=requires)


def relative_methods() -> list[Method]:
  """Nero (tuned, and untuned at its default rate), per-neuron / per-layer LAMB, per-neuron LARS."""
  return [
      Method("nero", RELATIVE, lambda r: nlr.nero(r.lr), "adam",
             "nlr.nero defaults (beta=0.999, constraints=True)", requires=("nero",)),
      Method("nero (default rate)", RELATIVE, lambda r: nlr.nero(r.lr), "adam",
             f"nlr.nero at its default rate {NERO_DEFAULT:g}, untuned", requires=("nero",),
             fixed=NERO_DEFAULT),
      *[Method(f"lamb[{g}]", RELATIVE,
               lambda r, g=g: nlr.lamb(r.lr, weight_decay=WEIGHT_DECAY, mask=_decay_mask,
                                       granularity=g),
               "adam", f"nlr.lamb(granularity={g!r}), weight_decay={WEIGHT_DECAY:g} (kernels "
                       "and embeddings)",
               requires=("lamb",)) for g in ("neuron", "tensor")],
      Method("lars[neuron]", RELATIVE,
             lambda r: nlr.lars(r.lr, weight_decay=WEIGHT_DECAY, weight_decay_mask=_decay_mask,
                                granularity="neuron"),
             "adam", f"nlr.lars(granularity='neuron'), weight_decay={WEIGHT_DECAY:g} (kernels "
                     "and embeddings), trust_coefficient=0.001, momentum=0.9",
             requires=("lars",)),
  ]


def builtin_methods() -> list[Method]:
  """Every method of the study, in table order (``nadamw``, the target, first)."""
  rows = [
      Method("nadamw", BASELINE, lambda r: _adamw(r.lr, nesterov=True), "adam",
             f"optax.nadamw(weight_decay={WEIGHT_DECAY:g}, kernels and embeddings)",
             requires=("adam_mini_weight_decay_mask",)),
      Method("adamw", BASELINE, lambda r: _adamw(r.lr), "adam",
             f"optax.adamw(weight_decay={WEIGHT_DECAY:g}, kernels and embeddings)",
             requires=("adam_mini_weight_decay_mask",)),
      Method("adafactor", BASELINE, lambda r: optax.adafactor(r.lr), "sgd",
             "optax.adafactor defaults (relative steps)"),
      Method("sgd_momentum", BASELINE, lambda r: optax.sgd(r.lr, momentum=0.9), "sgd",
             "optax.sgd(momentum=0.9)"),
      *[muon_method(base, variant) for base in ("muon", "normuon")
        for variant in ("", "adam_ratio", "adam_nesterov", "consistent_rms")],
      Method("adam_mini", LEARNED,
             lambda r: nlr.adam_mini(r.lr, weight_decay=WEIGHT_DECAY, on_unrecognised="ignore"),
             "adam", f"blocks from paths, weight_decay={WEIGHT_DECAY:g}",
             requires=("adam_mini",)),
      Method("scale_sgd", LEARNED,
             lambda r: nlr.scale_sgd(r.lr, weight_decay=WEIGHT_DECAY, head=r.problem.head),
             "adam", f"SCALE: per-neuron normalised SGD, momentum on the head, AdamW on vectors, "
                     f"weight_decay={WEIGHT_DECAY:g}", requires=("scale_sgd",)),
      Method("adam_hd", LEARNED, adam_hd, "adam",
             f"global rate, hyper_lr={ADAM_HD_HYPER_LR:g}; the tuned number is the initial "
             "learned rate, the schedule multiplies the steps", clamps=True,
             requires=("adam_hd",)),
      *relative_methods(),
  ]
  for granularity in ("element", "neuron"):
    for rule in SEED000_RULES:
      rows.append(seed000_method(rule, granularity, "ref"))
      rows.append(seed000_method(rule, granularity, "ref", schedule="constant"))
      rows.append(seed000_method(rule, granularity, "x adam"))
      rows.append(seed000_method(rule, granularity, "x muon"))
  return rows


def parse_spec(spec: str) -> tuple[str, str, Optional[str]]:
  """``module:function[=name]`` (or ``path/file.py:function[=name]``) as its parts."""
  spec, eq, name = spec.partition("=")
  target, sep, func = spec.rpartition(":")
  if not sep or not target or not func or (eq and not name.strip()):
    raise ValueError(f"--method-from {spec + eq + name!r}: expected module:function, "
                     "file.py:function or either with =name")
  return target, func, name.strip() if eq else None


def import_target(target: str, spec: str) -> Any:
  """The module ``target`` names: a file path, or a module importable from the current
  directory."""
  if target.endswith(".py") or "/" in target or os.sep in target:
    path = pathlib.Path(target).expanduser().resolve()
    if not path.exists():
      raise FileNotFoundError(f"--method-from {spec!r}: {path} does not exist")
    name = f"_convergence_user_{path.stem}_{abs(hash(str(path)))}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module
  if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())
  return importlib.import_module(target)


def load_user_method(spec: str, grid: Optional[tuple[float, float]] = None,
                     taken: Sequence[str] = (), users: Sequence[str] = ()) -> Method:
  """The method of ``--method-from module:function`` (or ``path/file.py:function``;
  ``...=name`` names it).

  ``function(learning_rate)`` gets the scheduled learning rate (an optax
  schedule) and returns an ``optax.GradientTransformation``. The method is named
  ``name``, else after the function (`` (user)`` added if a built-in, one of
  ``taken``, has that name); a name already used by another ``--method-from``
  (``users``) is a ``ValueError``: its results would replace the other's."""
  target, func, name = parse_spec(spec)
  make_tx = getattr(import_target(target, spec), func, None)
  if not callable(make_tx):
    raise AttributeError(f"--method-from {spec!r}: {target} has no function {func!r}")
  if name is None:
    name = func if func not in taken else f"{func} (user)"
  if name in users or name in taken:
    raise ValueError(f"--method-from {spec!r}: the name {name!r} is taken; name the method "
                     "with module:function=name")
  rates: RateSpec = tuple(grid) if grid else "adam"
  return Method(name, USER, lambda r: make_tx(r.lr), rates,
                f"{spec}(learning_rate), warm-up-cosine schedule")
