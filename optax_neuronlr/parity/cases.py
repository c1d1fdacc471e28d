"""The parity cases: each reference document's construct against our JAX call.

Model: ``Sequential(Linear(8, 6), ReLU(), Linear(6, 3))``; its layers are the
Flax keys ``"0"`` and ``"2"``; the "two parts" / "two variables" of documents
002-004 are these two layers. Hyperparameters are the documents' own, except:

* Adam's rates (003, 004) are a tenth of the documents' (0.01 for 0.1): optax
  computes Adam's bias correction ``1 - 0.999**t`` in float32 where torch uses
  Python floats, so each float32 optax step is ~6e-6 relative shorter than
  torch's; at rate 0.1 the parameters drift past the float32 tolerance within 5
  steps. Float64 is exact at any rate.
* 001 Example 3's ``clip_norm`` is 0.3, not 1.0, so that its clipping acts on
  some of this model's tensors (their gradient norms are 0.14-0.49).

``000_9458a9ec8aeb2db5.txt`` (dynamic neuron-specific rates, PyTorch):

* ``000-ex1``: Example 1, rate += ``alpha*|g|`` -> ``nlr.grad_magnitude_lr``.
  The text says small gradients raise the rate; the code (and the library)
  raise it by ``alpha*|g|``.
* ``000-ex2``: Example 2, ``lr / EMA|g|`` -> ``nlr.grad_history_lr``.
* ``000-ex3``: Example 3, times ``1 + |EMA sign(g)|`` -> ``nlr.sign_consistency_lr``.

``001_3fa4abcb782b6d4d.txt`` (per-parameter rates, PyTorch):

* ``001-ex1``: Example 1, a "per-parameter" rate that is one group rate ->
  ``optax.sgd``.
* ``001-ex2``: Example 2, ``lr * factor**k`` with ``k`` counting tensors, as
  the code does -> ``nlr.scale_by_leaf(nlr.layerwise_multipliers(..., layer_of=))``.
* ``001-ex2-layer``: Example 2's text, ``k`` = layer -> ``layerwise_multipliers``'s
  default.
* ``001-ex3``: Example 3's code: ``-lr * g / ||clip(g)||`` per tensor, no Adam
  (documented divergence from its text); reproduced with ``optax.stateless``.
* ``001-ex3-intent``: Example 3's text, clipping then Adam ->
  ``optax.chain(optax.clip_by_global_norm, optax.adam)``.
* ``001-learned``: the text's "learned learning rates", for which it gives no
  code: hypergradient descent (SGD-HD, Baydin et al. 2018) -> ``nlr.sgd_hd``.

``002_72ce2b67b8956b45.txt`` (learning-rate differential, PyTorch):

* ``002-sgd``: the sample model, ``SGD`` param groups with momentum and
  cross-entropy -> ``nlr.param_groups(optax.sgd, ..., momentum=0.9)``.
* ``002-adam``: ``Adam`` param groups -> ``nlr.param_groups(optax.adam, ...)``.

``003_1efd0d2b8b3f8735.txt`` (optimizer basics and schedulers, PyTorch), on
``Adam`` at rate 0.01:

* ``003-manual``: ``param_groups[i]['lr'] *= 0.9`` every 5 epochs, on two
  Adam groups ->
  ``nlr.set_hyperparams(state, learning_rate=lambda v: v * 0.9)``.
* ``003-lambda``, ``003-step``, ``003-multistep``, ``003-exponential``,
  ``003-cosine``: the schedulers -> ``optax.adam(nlr.schedules.<name>(...))``.
* ``003-plateau``: ``ReduceLROnPlateau`` on a validation loss (without the
  document's ``verbose=False``, which torch 2.13 rejects) ->
  ``optax.chain(optax.scale_by_adam(), nlr.reduce_lr_on_plateau(...))``.

``004_07f92684a478e55a.txt`` (per-variable rates, TensorFlow; see
`optax_neuronlr.parity.seed004`):

* ``004-ex1``: separate ``Adam`` optimizers (modelled by two ``torch.optim.Adam``)
  -> ``optax.multi_transform`` with ``nlr.path_labels``.
* ``004-ex2``: gradients scaled by ``lr1``/``lr2`` before one Adam (in optax)
  against the same Adam without any scaling: documented divergence, they agree.
* ``004-ex2-library``: the intended per-variable rates (two ``torch.optim.Adam``)
  -> ``optax.chain(optax.scale_by_adam(), nlr.scale_by_leaf(...), optax.scale(-1))``.

Where the documents' code departs from their text, or does not run on torch 2.13:

* 000 Ex 1: the text lowers the rate for large gradients; the code adds
  ``alpha*|g|`` (rates only grow). The library follows the code.
* 001 Ex 1: called a per-parameter rate, it is plain SGD.
* 001 Ex 2: the text indexes layers, the code indexes tensors.
* 001 Ex 3: an ``Adam`` subclass that never runs Adam; ``clip_grad_norm_`` clips
  ``p.grad`` but the step uses the saved, unclipped gradient divided by the
  clipped norm, so nothing is bounded. Its ``addcdiv_(value, t1, t2)`` overload
  is deprecated but still runs on torch 2.13 (with a warning).
* 003: ``import torch.optim.Adam`` fails (``Adam`` is a class, not a module);
  ``ReduceLROnPlateau(..., verbose=False)`` is a ``TypeError`` on torch 2.13
  (modelled without it); the scheduler loops call ``scheduler.step()`` without
  ``optimizer.step()`` (torch warns; modelled in the order the text gives);
  ``Net.forward`` never uses ``layer2``, whose param group therefore never
  trains (the model here uses both layers); "eps: minimum learning rate" is
  Adam's denominator term, not a rate.
* 004 Ex 2 and 3: scaling gradients before Adam does not set per-variable rates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
import torch

import optax_neuronlr as nlr
from optax_neuronlr.parity import seed004
from optax_neuronlr.parity import torch_reference as ref
from optax_neuronlr.parity.harness import Case, JaxSide, TorchSide

SEED_000 = "000_9458a9ec8aeb2db5.txt"
SEED_001 = "001_3fa4abcb782b6d4d.txt"
SEED_002 = "002_72ce2b67b8956b45.txt"
SEED_003 = "003_1efd0d2b8b3f8735.txt"
SEED_004 = "004_07f92684a478e55a.txt"

LAYERS = ("0", "2")  # the Flax keys of the model's two Linear layers


def torch_groups(model: torch.nn.Sequential, **per_layer: Any) -> list[dict]:
  """One param group per ``Linear`` layer, ``per_layer[key][i]`` for layer ``i``."""
  return [{"params": model[int(name)].parameters(),
           **{key: values[i] for key, values in per_layer.items()}}
          for i, name in enumerate(LAYERS)]


def jax_groups(optimizer: Callable[..., optax.GradientTransformation],
                learning_rates: tuple[float, ...], **defaults: Any):
  """``nlr.param_groups`` with one group per layer, as `torch_groups`."""
  return nlr.param_groups(
      optimizer,
      [{"params": rf"{name}/.*", "name": f"layer{name}", "learning_rate": lr}
       for name, lr in zip(LAYERS, learning_rates)],
      **defaults,
  )


# ---------------------------------------------------------------------------
# 000: the three neuron-specific rules.

_000 = [
    Case("000-ex1", f"{SEED_000} Ex 1", "nlr.grad_magnitude_lr(1e-3)", "exact",
         TorchSide(lambda m: ref.GradMagnitudeRate(m.parameters(), lr=1e-3)),
         JaxSide(lambda p: nlr.grad_magnitude_lr(1e-3)),
         note="follows the code, rate += alpha*|g|; the text says small |g| raises it"),
    Case("000-ex2", f"{SEED_000} Ex 2", "nlr.grad_history_lr(1e-3)", "exact",
         TorchSide(lambda m: ref.GradHistoryRate(m.parameters(), lr=1e-3)),
         JaxSide(lambda p: nlr.grad_history_lr(1e-3))),
    Case("000-ex3", f"{SEED_000} Ex 3", "nlr.sign_consistency_lr(1e-3)", "exact",
         TorchSide(lambda m: ref.SignConsistencyRate(m.parameters(), lr=1e-3)),
         JaxSide(lambda p: nlr.sign_consistency_lr(1e-3))),
]


# ---------------------------------------------------------------------------
# 001: per-parameter rates.

_TENSOR_INDEX = {"0/kernel": 0, "0/bias": 1, "2/kernel": 2, "2/bias": 3}
# The document's clip_norm=1.0 never clips this model's gradients (norms
# 0.14-0.49); 0.3 clips the second layer's tensors and not the first's, so both
# branches of what the code computes are exercised.
_CLIP_NORM = 0.3


def _torch_clip_factor(g: jax.Array, max_norm: float) -> jax.Array:
  """``torch.nn.utils.clip_grad_norm_``'s factor on one tensor:
  ``min(max_norm / (||g|| + 1e-6), 1)``."""
  return jnp.minimum(max_norm / (optax.tree.norm(g) + 1e-6), 1.0)


def divide_by_clipped_norm(max_norm: float) -> optax.GradientTransformation:
  """``g <- g / ||clip(g)||`` per tensor: what 001 Example 3's code computes
  before scaling by ``-lr`` (see `torch_reference.DivideByClippedNorm`)."""

  def per_tensor(updates, params):
    del params
    return jax.tree.map(
        lambda g: g / optax.tree.norm(g * _torch_clip_factor(g, max_norm)), updates)

  return optax.stateless(per_tensor)


_001 = [
    Case("001-ex1", f"{SEED_001} Ex 1", "optax.sgd(0.01)", "exact",
         TorchSide(lambda m: ref.UniformRateSGD(m.parameters(), lr=0.01)),
         JaxSide(lambda p: optax.sgd(0.01)),
         note="the code keeps no per-parameter rate: it is plain SGD"),
    Case("001-ex2", f"{SEED_001} Ex 2",
         "sgd(0.1) + scale_by_leaf(layerwise_multipliers(0.9, layer_of=tensor index))",
         "exact",
         TorchSide(lambda m: ref.FactorPowerSGD(m.parameters(), lr=0.1, factor=0.9)),
         JaxSide(lambda p: optax.chain(optax.sgd(0.1), nlr.scale_by_leaf(
             nlr.layerwise_multipliers(p, 0.9, layer_of=_TENSOR_INDEX.__getitem__)))),
         note="as the code, each tensor is a 'layer': bias of layer j gets 0.9**(2j+1)"),
    Case("001-ex2-layer", f"{SEED_001} Ex 2, text (one index per layer; modelled)",
         "sgd(0.1) + scale_by_leaf(layerwise_multipliers(0.9))", "exact",
         TorchSide(lambda m: ref.FactorPowerSGD(
             torch_groups(m), lr=0.1, factor=0.9, count="group")),
         JaxSide(lambda p: optax.chain(optax.sgd(0.1), nlr.scale_by_leaf(
             nlr.layerwise_multipliers(p, 0.9))))),
    Case("001-ex3", f"{SEED_001} Ex 3 (code)",
         "chain(stateless(g / ||clip(g)||), scale(-1e-3))", "divergence",
         TorchSide(lambda m: ref.DivideByClippedNorm(
             m.parameters(), lr=1e-3, clip_norm=_CLIP_NORM)),
         JaxSide(lambda p: optax.chain(divide_by_clipped_norm(_CLIP_NORM), optax.scale(-1e-3))),
         note=("no Adam, and the clipping bounds nothing: the code steps "
               "-lr*g/||clip(g)|| with the unclipped g, of length ~lr*max(1, ||g||/clip_norm); "
               "reproduced exactly")),
    Case("001-ex3-intent", f"{SEED_001} Ex 3, text (clip, then Adam; modelled)",
         "chain(clip_by_global_norm(0.3), adam(1e-3))", "exact",
         TorchSide(lambda m: ref.ClipThenAdam(m.parameters(), lr=1e-3, clip_norm=_CLIP_NORM)),
         JaxSide(lambda p: optax.chain(optax.clip_by_global_norm(_CLIP_NORM), optax.adam(1e-3))),
         note="torch adds 1e-6 to the norm it clips by, optax does not"),
    Case("001-learned", f"{SEED_001} text, learned rates (no code; SGD-HD of Baydin et al. 2018)",
         "nlr.sgd_hd(0.01, hyper_lr=0.01)", "exact",
         TorchSide(lambda m: ref.HypergradientSGD(m.parameters(), lr=0.01, hyper_lr=0.01)),
         JaxSide(lambda p: nlr.sgd_hd(0.01, hyper_lr=0.01))),
]


# ---------------------------------------------------------------------------
# 002: param groups.

_002 = [
    Case("002-sgd", f"{SEED_002} sample model (SGD groups, momentum, cross-entropy)",
         "nlr.param_groups(optax.sgd, ..., momentum=0.9)", "exact",
         TorchSide(lambda m: torch.optim.SGD(torch_groups(m, lr=(0.001, 0.01)),
                                             momentum=0.9)),
         JaxSide(lambda p: jax_groups(optax.sgd, (0.001, 0.01), momentum=0.9)),
         loss="cross_entropy"),
    Case("002-adam", f"{SEED_002} Adam groups", "nlr.param_groups(optax.adam, ...)", "exact",
         TorchSide(lambda m: torch.optim.Adam(torch_groups(m, lr=(1e-4, 1e-3)))),
         JaxSide(lambda p: jax_groups(optax.adam, (1e-4, 1e-3)))),
]


# ---------------------------------------------------------------------------
# 003: manual rate edits and the six schedulers, on Adam at a tenth of the
# document's rates (the float32 bias-correction note in the module docstring).

_LR = 0.01
_003_GROUP_LRS = (0.01, 0.02)


def _torch_decay_every_5(k: int, optimizer: Any) -> None:
  if k % 5 == 0:
    for group in optimizer.param_groups:
      group["lr"] *= 0.9


def _jax_decay_every_5(k: int, state: Any) -> Any:
  if k % 5 == 0:
    state = nlr.set_hyperparams(state, learning_rate=lambda v: v * 0.9)
  return state


def _scheduler_case(name: str, what: str, torch_scheduler: Callable[[Any], Any],
                    schedule: optax.Schedule, ours: str, note: str = "") -> Case:
  return Case(name, f"{SEED_003} {what}", f"optax.adam({ours})", "exact",
              TorchSide(lambda m: torch.optim.Adam(m.parameters(), lr=_LR),
                        scheduler=torch_scheduler),
              JaxSide(lambda p: optax.adam(schedule)), note=note)


_PLATEAU: dict[str, Any] = dict(mode="min", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                cooldown=0, min_lr=0.0, eps=1e-8)
_LRS = torch.optim.lr_scheduler

_003 = [
    Case("003-manual", f"{SEED_003} param_groups[i]['lr'] *= 0.9 every 5 epochs",
         "nlr.set_hyperparams(state, learning_rate=lambda v: v * 0.9)", "exact",
         TorchSide(lambda m: torch.optim.Adam(torch_groups(m, lr=_003_GROUP_LRS)),
                   edit=_torch_decay_every_5),
         JaxSide(lambda p: jax_groups(optax.adam, _003_GROUP_LRS), edit=_jax_decay_every_5)),
    _scheduler_case("003-lambda", "LambdaLR (lr_lambda = 0.95**epoch)",
                    lambda o: _LRS.LambdaLR(o, lambda epoch: 0.95**epoch),
                    nlr.schedules.lambda_lr(_LR, lambda epoch: 0.95**epoch),
                    f"lambda_lr({_LR}, lambda e: 0.95**e)"),
    _scheduler_case("003-step", "StepLR(step_size=5, gamma=0.5)",
                    lambda o: _LRS.StepLR(o, step_size=5, gamma=0.5),
                    nlr.schedules.step_lr(_LR, 5, 0.5), f"step_lr({_LR}, 5, 0.5)"),
    _scheduler_case("003-multistep", "MultiStepLR([20, 40, 60, 80], 0.5)",
                    lambda o: _LRS.MultiStepLR(o, milestones=[20, 40, 60, 80], gamma=0.5),
                    nlr.schedules.multi_step_lr(_LR, [20, 40, 60, 80], 0.5),
                    f"multi_step_lr({_LR}, [20, 40, 60, 80], 0.5)"),
    _scheduler_case("003-exponential", "ExponentialLR(gamma=0.9)",
                    lambda o: _LRS.ExponentialLR(o, gamma=0.9),
                    nlr.schedules.exponential_lr(_LR, 0.9), f"exponential_lr({_LR}, 0.9)"),
    _scheduler_case("003-cosine", "CosineAnnealingLR(T_max=25, eta_min=0)",
                    lambda o: _LRS.CosineAnnealingLR(o, T_max=25, eta_min=0),
                    nlr.schedules.cosine_annealing_lr(_LR, 25, 0.0),
                    f"cosine_annealing_lr({_LR}, 25)"),
    Case("003-plateau",
         f"{SEED_003} ReduceLROnPlateau (modelled: torch 2.13 rejects its verbose=False)",
         f"chain(scale_by_adam(), nlr.reduce_lr_on_plateau({_LR}, ...)), value=val_loss",
         "exact",
         TorchSide(lambda m: torch.optim.Adam(m.parameters(), lr=_LR),
                   scheduler=lambda o: _LRS.ReduceLROnPlateau(o, **_PLATEAU), monitor=True,
                   report=lambda o, s: {"last_lr": s.get_last_lr()[0]}),
         JaxSide(lambda p: optax.chain(optax.scale_by_adam(),
                                       nlr.reduce_lr_on_plateau(_LR, **_PLATEAU)),
                 monitor=True,
                 report=lambda state: {"last_lr": nlr.plateau_learning_rate(state)}),
         note=("monitors a validation loss, as the document's scheduler.step(val_loss); "
               "nlr.plateau_learning_rate is compared with get_last_lr() after every step")),
]


# ---------------------------------------------------------------------------
# 004: per-variable rates (TensorFlow), variables = the two layers.

# The document's lr1=0.01, lr2=0.1 divided by 10, for the float32 reason in the
# module docstring (seed004.toy_problem runs the document's own values).
_004_RATES = {"0": 0.001, "2": 0.01}


def _torch_separate_adams(model: torch.nn.Sequential) -> ref.SeparateOptimizers:
  return ref.SeparateOptimizers(*(
      torch.optim.Adam(model[int(name)].parameters(), lr=lr, eps=seed004.KERAS_EPSILON)
      for name, lr in _004_RATES.items()))


_004 = [
    Case("004-ex1", f"{SEED_004} Ex 1 (separate Adams; torch.optim.Adam for Keras)",
         "multi_transform({k: adam(lr_k)}, nlr.path_labels(...))", "exact",
         TorchSide(_torch_separate_adams),
         JaxSide(lambda p: seed004.per_variable_adam(_004_RATES))),
    Case("004-ex2", f"{SEED_004} Ex 2 (lr_k * g_k, then one Adam(); in optax)",
         "optax.adam(1e-3), gradients not scaled", "divergence",
         JaxSide(lambda p: seed004.scaled_gradients_adam(_004_RATES)),
         JaxSide(lambda p: optax.adam(seed004.KERAS_LEARNING_RATE, eps=seed004.KERAS_EPSILON)),
         note=("Adam cancels a constant gradient scale: lr1, lr2 are lost; the run "
               "matches unscaled Adam(1e-3) up to eps effects (checked to 1e-2)"),
         rtol=1e-2),
    Case("004-ex2-library", f"{SEED_004} Ex 2, intended rates (= Ex 1, torch.optim.Adam)",
         "chain(scale_by_adam(), nlr.scale_by_leaf(lr_k), scale(-1))", "exact",
         TorchSide(_torch_separate_adams),
         JaxSide(lambda p: seed004.adam_then_scale(_004_RATES))),
]


CASES: dict[str, Case] = {c.name: c for c in (*_000, *_001, *_002, *_003, *_004)}
"""Every parity case, by name, in table order."""
