"""The study's methods: one row per optimizer, built from a (possibly traced) peak rate.

:func:`builtin_methods` lists every built-in method in table order (AdamW first:
the Muon-family methods need its tuned rate); :func:`load_user_method` turns
``--method-from module:function`` into a method run through the same protocol.
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

from .protocol import learning_rate
from .settings import (ADAM_HD_HYPER_LR, BASELINE, DIRECTION_CAP, LEARNED, MUON, SEED000_RULES,
                       USER, WEIGHT_DECAY, RateSpec)
from .tasks import Problem


@dataclasses.dataclass(frozen=True)
class Rates:
  """What a method's ``build`` gets.

  ``peak``: the peak rate under test (a traced scalar inside the vmapped run);
  ``lr``: the learning rate, ``peak`` under the method's schedule (an optax
  schedule, or ``peak`` itself for ``constant``); ``adam_lr``: the scheduled
  AdamW's tuned peak rate on the task under the same schedule (the AdamW leaves
  of Muon-family methods); ``problem``: the task.
  """

  peak: Any
  lr: optax.ScalarOrSchedule
  adam_lr: optax.ScalarOrSchedule
  problem: Problem


@dataclasses.dataclass(frozen=True)
class Method:
  """A row of :func:`builtin_methods`, or a user method (:func:`load_user_method`).

  ``build(rates)`` returns the optimizer (:class:`Rates`); ``rates`` names its
  grid (a ``RATE_RANGES`` kind or a ``(lowest, highest)`` pair); ``requires``
  lists the ``nlr`` names it needs (a method whose names are missing is reported
  as unavailable, not run). ``key`` names it in the JSON and the tables: its
  name, with `` (constant)`` for the constant schedule.
  """

  name: str
  family: str
  build: Callable[[Rates], optax.GradientTransformation]
  rates: RateSpec
  settings: str
  schedule: str = "warmup_cosine"
  clamps: bool = False  # whether its rates have clamps worth reporting
  requires: tuple[str, ...] = ()

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

  def optimizer(self, peak: Any, adam_peak: Any,
                problem: Problem) -> optax.GradientTransformation:
    """The optimizer at ``peak`` (AdamW leaves at ``adam_peak``) under the method's schedule."""
    lr = learning_rate(peak, self.schedule, problem.steps)
    return self.build(Rates(peak, lr, learning_rate(adam_peak, self.schedule, problem.steps),
                            problem))


MUON_REQUIRES = ("scale_by_muon", "normuon_labels")  # nlr names of the "x muon" variants


def _decay_mask(params: Any) -> Any:
  """AdamW's decay mask, Adam-mini's (kernels and embeddings), looked up when used."""
  return nlr.adam_mini_weight_decay_mask(params)


def _adamw(lr: optax.ScalarOrSchedule) -> optax.GradientTransformation:
  """The study's AdamW: weight decay on kernels and embeddings."""
  return optax.adamw(lr, weight_decay=WEIGHT_DECAY, mask=_decay_mask)


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
    return optax.partition({"hidden": hidden, "adamw": _adamw(r.adam_lr)}, nlr.normuon_labels)

  bc = ", bias_correction=True" if ema else ""
  settings = {
      "ref": "reference defaults (min_lr=1e-6, max_lr=1)",
      "x adam": f"direction=scale_by_adam(){bc}, max_lr={DIRECTION_CAP:g}x peak",
      "x muon": (f"hidden matrices: direction=nlr.scale_by_muon(){bc}, "
                 f"max_lr={DIRECTION_CAP:g}x peak; the rest: AdamW at its tuned rate"),
  }[variant]
  kind = {"ref": "adam" if ema else "plain", "x adam": "low", "x muon": "muon_rule"}[variant]
  requires = (rule,) + (MUON_REQUIRES if variant == "x muon" else ())
  return Method(f"{rule}[{granularity}] {variant}", f"reference 000, {granularity}", build,
                kind, settings, schedule=schedule, clamps=True, requires=requires)


def builtin_methods() -> list[Method]:
  """Every method of the study, in table order (``adamw`` first: the others need its rate)."""
  rows = [
      Method("adamw", BASELINE, lambda r: _adamw(r.lr), "adam",
             f"optax.adamw(weight_decay={WEIGHT_DECAY:g}, kernels and embeddings)",
             requires=("adam_mini_weight_decay_mask",)),
      Method("adafactor", BASELINE, lambda r: optax.adafactor(r.lr), "sgd",
             "optax.adafactor defaults (relative steps)"),
      Method("sgd_momentum", BASELINE, lambda r: optax.sgd(r.lr, momentum=0.9), "sgd",
             "optax.sgd(momentum=0.9)"),
      Method("muon", MUON,
             lambda r: nlr.muon(r.lr, weight_decay=WEIGHT_DECAY, adam_learning_rate=r.adam_lr,
                                adam_weight_decay=WEIGHT_DECAY),
             "sgd", f"nlr.muon defaults, weight_decay={WEIGHT_DECAY:g} (both parts); AdamW "
                    "leaves at AdamW's tuned rate", requires=("muon",)),
      Method("normuon", MUON,
             lambda r: nlr.normuon(r.lr, weight_decay=WEIGHT_DECAY,
                                   adam_learning_rate=r.adam_lr,
                                   adam_weight_decay=WEIGHT_DECAY),
             "sgd", f"nlr.normuon defaults, weight_decay={WEIGHT_DECAY:g} (both parts); AdamW "
                    "leaves at AdamW's tuned rate", requires=("normuon",)),
      Method("adam_mini", LEARNED,
             lambda r: nlr.adam_mini(r.lr, weight_decay=WEIGHT_DECAY, on_unrecognised="ignore"),
             "adam", f"blocks from paths, weight_decay={WEIGHT_DECAY:g}",
             requires=("adam_mini",)),
      Method("scale_sgd", LEARNED,
             lambda r: nlr.scale_sgd(r.lr, weight_decay=WEIGHT_DECAY, head=r.problem.head),
             "adam", f"SCALE: per-neuron normalised SGD, momentum on the head, AdamW on vectors, "
                     f"weight_decay={WEIGHT_DECAY:g}", requires=("scale_sgd",)),
      Method("adam_hd", LEARNED, lambda r: nlr.adam_hd(r.lr, ADAM_HD_HYPER_LR), "adam",
             f"global rate, hyper_lr={ADAM_HD_HYPER_LR:g}", clamps=True, requires=("adam_hd",)),
  ]
  for granularity in ("element", "neuron"):
    for rule in SEED000_RULES:
      rows.append(seed000_method(rule, granularity, "ref"))
      rows.append(seed000_method(rule, granularity, "ref", schedule="constant"))
      rows.append(seed000_method(rule, granularity, "x adam"))
      rows.append(seed000_method(rule, granularity, "x muon"))
  return rows


def load_user_method(spec: str, grid: Optional[tuple[float, float]] = None,
                     taken: Sequence[str] = ()) -> Method:
  """The method of ``--method-from module:function`` (or ``path/file.py:function``).

  ``function(learning_rate)`` gets the scheduled learning rate (an optax
  schedule) and returns an ``optax.GradientTransformation``; the method is named
  after it (`` (user)`` added if a built-in has that name)."""
  target, sep, func = spec.rpartition(":")
  if not sep or not target or not func:
    raise ValueError(f"--method-from {spec!r}: expected module:function or file.py:function")
  if target.endswith(".py") or "/" in target or os.sep in target:
    path = pathlib.Path(target).expanduser().resolve()
    if not path.exists():
      raise FileNotFoundError(f"--method-from {spec!r}: {path} does not exist")
    name = f"_convergence_user_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
  else:
    if os.getcwd() not in sys.path:
      sys.path.insert(0, os.getcwd())
    module = importlib.import_module(target)
  make_tx = getattr(module, func, None)
  if not callable(make_tx):
    raise AttributeError(f"--method-from {spec!r}: {target} has no function {func!r}")
  name = func if func not in taken else f"{func} (user)"
  rates: RateSpec = tuple(grid) if grid else "adam"
  return Method(name, USER, lambda r: make_tx(r.lr), rates,
                f"{spec}(learning_rate), warm-up-cosine schedule")
